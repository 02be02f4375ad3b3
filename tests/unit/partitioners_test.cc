// Partitioners and placement: TensorFlow's part counts, validation errors and
// remainder-first splits (spec §4 items 35-43), with our own values where the
// spec's are not essential, and byte-balanced placement.
#include "coordinator/partitioners.h"

#include "coordinator/placement.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<int64_t> Dims(const std::vector<PartSlice>& parts, int axis) {
  std::vector<int64_t> out;
  for (const auto& p : parts) out.push_back(p.shape.dim(axis));
  return out;
}

TEST(FixedSizePartitionerTest, CapsAtTheDimension) {
  EXPECT_THAT(*FixedSizePartitions(TensorShape{12, 7}, 4, 0), ElementsAre(4, 1));
  EXPECT_THAT(*FixedSizePartitions(TensorShape{12, 7}, 3, 1), ElementsAre(1, 3));
  EXPECT_THAT(*FixedSizePartitions(TensorShape{30}, 6, 0), ElementsAre(6));
  // More shards than rows: one row per part.
  EXPECT_THAT(*FixedSizePartitions(TensorShape{3, 2}, 8, 0), ElementsAre(3, 1));
}

TEST(FixedSizePartitionerTest, RejectsBadAxisAndCount) {
  EXPECT_THAT(FixedSizePartitions(TensorShape{4}, 2, 1).status().message(),
              HasSubstr("Cannot partition variable along axis 1"));
  EXPECT_EQ(FixedSizePartitions(TensorShape{4}, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class VariableAxisSizeTest : public ::testing::Test {
 protected:
  // float32 (2,4,8,64): bytes per slice along axis 0..3 = 8192, 4096, 2048, 256.
  std::vector<int64_t> Parts(int axis, int64_t max_bytes, std::optional<int64_t> max_shards = {},
                             DataType dtype = DT_FLOAT, int64_t bytes_per_string = 16) {
    VariableAxisSizeOptions o;
    o.axis = axis;
    o.max_shard_bytes = max_bytes;
    o.max_shards = max_shards;
    o.bytes_per_string_element = bytes_per_string;
    auto p = VariableAxisSizePartitions(TensorShape{2, 4, 8, 64}, dtype, o);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : std::vector<int64_t>{};
  }
};

TEST_F(VariableAxisSizeTest, OneSliceFitsAllWhenShardIsBigEnough) {
  EXPECT_THAT(Parts(0, 1 << 20), ElementsAre(1, 1, 1, 1));
  EXPECT_THAT(Parts(1, 16384), ElementsAre(1, 1, 1, 1));  // exactly fits
}

TEST_F(VariableAxisSizeTest, SplitsToKeepPartsUnderTheLimit) {
  EXPECT_THAT(Parts(2, 8192), ElementsAre(1, 1, 2, 1));
  EXPECT_THAT(Parts(3, 256), ElementsAre(1, 1, 1, 64));
}

TEST_F(VariableAxisSizeTest, AtLeastOneSlicePerPartAndMaxShardsCaps) {
  EXPECT_THAT(Parts(3, 100), ElementsAre(1, 1, 1, 64));
  EXPECT_THAT(Parts(3, 100, 65), ElementsAre(1, 1, 1, 64));
  EXPECT_THAT(Parts(3, 100, 3), ElementsAre(1, 1, 1, 3));
}

TEST_F(VariableAxisSizeTest, StringsUseBytesPerStringElement) {
  // 2*4*8 = 64 strings per slice of axis 3 at 4 bytes = 256 bytes; 2048
  // bytes hold 8 slices: 64 / 8 = 8 parts.
  EXPECT_THAT(Parts(3, 2048, {}, DT_STRING, 4), ElementsAre(1, 1, 1, 8));
}

TEST_F(VariableAxisSizeTest, RejectsNonPositiveInputs) {
  VariableAxisSizeOptions o;
  o.max_shard_bytes = 0;
  EXPECT_EQ(VariableAxisSizePartitions(TensorShape{4}, DT_FLOAT, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.max_shard_bytes = 10;
  o.bytes_per_string_element = 0;
  EXPECT_EQ(VariableAxisSizePartitions(TensorShape{4}, DT_STRING, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.bytes_per_string_element = 16;
  o.max_shards = 0;
  EXPECT_EQ(VariableAxisSizePartitions(TensorShape{4}, DT_FLOAT, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

int64_t MinMaxParts(TensorShape shape, int64_t min_slice, int64_t max_partitions = 1000,
                    int axis = 0, DataType dtype = DT_FLOAT) {
  MinMaxOptions o;
  o.max_partitions = max_partitions;
  o.min_slice_size = min_slice;
  o.axis = axis;
  auto p = MinMaxVariablePartitions(shape, dtype, o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? (*p)[axis] : -1;
}

TEST(MinMaxPartitionerTest, PartCountsFollowTotalBytes) {
  EXPECT_EQ(MinMaxParts(TensorShape{1024}, 1 << 10), 4);          // 4 KiB / 1 KiB
  EXPECT_EQ(MinMaxParts(TensorShape{1024, 512}, 128 << 10), 16);  // 2 MiB / 128 KiB
  EXPECT_EQ(MinMaxParts(TensorShape{1024, 512}, 128 << 10, 8), 8);
  EXPECT_EQ(MinMaxParts(TensorShape{1024, 512}, 128 << 10, 1), 1);
  EXPECT_EQ(MinMaxParts(TensorShape{1024, 512}, 64 << 10), 32);
  EXPECT_EQ(MinMaxParts(TensorShape{1024, 512}, 3 << 20), 1);  // rounds up to 1
  EXPECT_EQ(MinMaxParts(TensorShape{1000}, 1 << 10), 4);       // ceil(3.9)
}

TEST(MinMaxPartitionerTest, CappedByTheDimensionAndOtherAxes) {
  EXPECT_EQ(MinMaxParts(TensorShape{8, 256, 1024}, 256 << 10), 8);
  MinMaxOptions o;
  o.max_partitions = 100;
  o.axis = 1;
  o.min_slice_size = 256 << 10;
  // 32*1024*2*4 bytes = 256 KiB * 1... use 3 x 256 KiB along axis 1.
  EXPECT_THAT(*MinMaxVariablePartitions(TensorShape{32, 1024, 1, 6}, DT_FLOAT, o),
              ElementsAre(1, 3, 1, 1));
  o.axis = 3;
  EXPECT_THAT(*MinMaxVariablePartitions(TensorShape{32, 1024, 1, 6}, DT_FLOAT, o),
              ElementsAre(1, 1, 1, 3));
  o.axis = 4;
  EXPECT_EQ(MinMaxVariablePartitions(TensorShape{32, 1024, 1, 6}, DT_FLOAT, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PartitionSpecTest, SpecDefaultsMatchTensorFlow) {
  PartitionerSpec spec;
  spec.mutable_min_max()->set_max_partitions(100);  // min_slice_size 256 KiB
  EXPECT_THAT(*ComputePartitions(spec, TensorShape{2048, 256}, DT_FLOAT), ElementsAre(8, 1));
  spec.mutable_min_max()->clear_max_partitions();  // default 1
  EXPECT_THAT(*ComputePartitions(spec, TensorShape{2048, 256}, DT_FLOAT), ElementsAre(1, 1));
  spec.mutable_variable_axis_size()->set_max_shard_bytes(4 * 16 * 10);  // 16-byte strings
  EXPECT_THAT(*ComputePartitions(spec, TensorShape{40, 4}, DT_STRING), ElementsAre(4, 1));
}

TEST(SplitPartsTest, RemainderGoesToTheFirstParts) {
  const TensorShape shape{41, 3};
  EXPECT_THAT(Dims(SplitParts(shape, {0, 1}), 0), ElementsAre(41));
  EXPECT_THAT(Dims(SplitParts(shape, {0, 2}), 0), ElementsAre(21, 20));
  EXPECT_THAT(Dims(SplitParts(shape, {0, 3}), 0), ElementsAre(14, 14, 13));
  EXPECT_THAT(Dims(SplitParts(shape, {0, 4}), 0), ElementsAre(11, 10, 10, 10));
  EXPECT_THAT(Dims(SplitParts(shape, {0, 6}), 0), ElementsAre(7, 7, 7, 7, 7, 6));
  auto parts = SplitParts(shape, {0, 3});
  EXPECT_THAT(parts[1].offset, ElementsAre(14, 0));
  EXPECT_THAT(parts[2].offset, ElementsAre(28, 0));
  EXPECT_EQ(parts[2].shape, (TensorShape{13, 3}));
}

TEST(SplitPartsTest, OtherAxesKeepTheirSize) {
  auto parts = SplitParts(TensorShape{3, 3, 3}, {1, 2});
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].shape, (TensorShape{3, 2, 3}));
  EXPECT_EQ(parts[1].shape, (TensorShape{3, 1, 3}));
  EXPECT_THAT(parts[1].offset, ElementsAre(0, 2, 0));
}

TEST(SplitPartsTest, SaveSliceSpecs) {
  auto parts = SplitParts(TensorShape{7, 6}, *ValidatePartitions(TensorShape{7, 6}, {3, 1}));
  EXPECT_EQ(SaveSliceSpec(TensorShape{7, 6}, parts[0].offset, parts[0].shape), "7 6 0,3:0,6");
  EXPECT_EQ(SaveSliceSpec(TensorShape{7, 6}, parts[2].offset, parts[2].shape), "7 6 5,2:0,6");
  auto cols = SplitParts(TensorShape{3, 8}, *ValidatePartitions(TensorShape{3, 8}, {1, 2}));
  EXPECT_EQ(SaveSliceSpec(TensorShape{3, 8}, cols[1].offset, cols[1].shape), "3 8 0,3:4,4");
  auto whole = SplitParts(TensorShape{5, 9}, *ValidatePartitions(TensorShape{5, 9}, {1, 1}));
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_EQ(SaveSliceSpec(TensorShape{5, 9}, whole[0].offset, whole[0].shape), "5 9 0,5:0,9");
  EXPECT_EQ(PartName("emb/w", 3), "emb/w/part_3");
}

TEST(ValidatePartitionsTest, RejectsWhatTensorFlowRejects) {
  auto code = [](TensorShape s, std::vector<int64_t> p) {
    return ValidatePartitions(s, p).status();
  };
  EXPECT_THAT(code({12}, {1, 1}).message(), HasSubstr("does not match the Variable's rank"));
  EXPECT_THAT(code({12, 40}, {1}).message(), HasSubstr("does not match the Variable's rank"));
  EXPECT_THAT(code({12, 40}, {1, 2, 3}).message(), HasSubstr("rank"));
  EXPECT_THAT(code({12, 40}, {13, 1}).message(), HasSubstr("Cannot create 13 slices for size 12"));
  EXPECT_THAT(code({12, 40}, {1, 41}).message(), HasSubstr("Cannot create 41 slices"));
  EXPECT_THAT(code({12, 40}, {2, 2}).message(), HasSubstr("Can only slice a variable along one"));
  EXPECT_THAT(code({12, 40}, {0, 1}).message(), HasSubstr("zero partitions"));
  EXPECT_THAT(code({}, {}).message(), HasSubstr("rank at least 1"));
  auto ok = ValidatePartitions(TensorShape{12, 40}, {1, 5});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->axis, 1);
  EXPECT_EQ(ok->num_parts, 5);
}

TEST(PlacementTest, SpreadsPartsOverTheLeastLoadedShards) {
  ShardLoad load{{0, 0}, {1, 0}, {2, 0}};
  auto shards = PlaceParts({100, 100, 100, 100, 100, 100}, &load);
  ASSERT_TRUE(shards.ok());
  EXPECT_THAT(*shards, ElementsAre(0, 1, 2, 0, 1, 2));
  EXPECT_EQ(load[0], 200);
  // Existing load steers new parts away.
  ShardLoad busy{{0, 1000}, {1, 0}, {2, 50}};
  EXPECT_THAT(*PlaceParts({40, 40, 40}, &busy), ElementsAre(1, 1, 2));
}

TEST(PlacementTest, NoLiveShardIsUnavailable) {
  ShardLoad none;
  EXPECT_EQ(PlaceParts({1}, &none).status().code(), absl::StatusCode::kUnavailable);
}

// docs/replication.md "Replica sets": a part's replicas never share a shard,
// and share a host only when the hosts run out.
TEST(PlacementTest, BackupsGoToOtherHostsWhileThereAreSome) {
  // Shards 0 and 1 on host a, 2 and 3 on host b, 4 on c; 1 is the emptiest.
  const std::map<int32_t, std::string> hosts = {{0, "a"}, {1, "a"}, {2, "b"}, {3, "b"}, {4, "c"}};
  ShardLoad load = {{0, 50}, {1, 0}, {2, 30}, {3, 20}, {4, 40}};
  auto two = PlaceBackups(0, 10, 2, hosts, &load);
  ASSERT_TRUE(two.ok()) << two.status();
  // Not 1 (the primary's host), though it is the emptiest: 3 (b), then 4 (c).
  EXPECT_THAT(*two, ElementsAre(3, 4));
  EXPECT_EQ(load[3], 30);
  EXPECT_EQ(load[4], 50);
  // Four backups on three hosts: one host twice, never a shard twice.
  ShardLoad again = {{0, 0}, {1, 0}, {2, 0}, {3, 0}, {4, 0}};
  auto four = PlaceBackups(0, 10, 4, hosts, &again);
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_THAT(*four, ElementsAre(2, 4, 1, 3));
}

TEST(PlacementTest, ShardsWithoutAHostAreEachTheirOwn) {
  ShardLoad load = {{0, 0}, {1, 5}, {2, 1}};
  auto backups = PlaceBackups(1, 7, 2, {}, &load);
  ASSERT_TRUE(backups.ok()) << backups.status();
  EXPECT_THAT(*backups, ElementsAre(0, 2));
}

TEST(PlacementTest, TooFewShardsForTheReplicasIsUnavailable) {
  ShardLoad load = {{0, 0}, {1, 0}};
  auto backups = PlaceBackups(0, 1, 2, {}, &load);
  EXPECT_EQ(backups.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(backups.status().message(), HasSubstr("3 replicas need 3 live shards; 2 are available"));
  EXPECT_EQ(load[1], 0);  // nothing counted
}

}  // namespace
}  // namespace psd
