// psctl's progress bar and byte formatting (client/psctl/output.h), and
// `ckpt inspect`'s listing of embedding tables (client/psctl/ckpt_inspect.h).
#include "output.h"

#include <stdlib.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "checkpoint/bundle_writer.h"
#include "ckpt_inspect.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

TEST(FormatBytesTest, BinaryUnits) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 30), "3.0 GiB");
}

TEST(FormatProgressTest, BarBytesRateAndEta) {
  // A quarter of 4 GiB in 2 s: 512 MiB/s, 6 s to go.
  const std::string line =
      FormatProgress("saving writing", int64_t{1} << 30, int64_t{4} << 30, 2.0, 100);
  EXPECT_THAT(line, StartsWith("saving writing ["));
  EXPECT_THAT(line, HasSubstr("]  25%  1.0 GiB / 4.0 GiB  512.0 MiB/s  ETA 6 s"));
  const size_t open = line.find('['), close = line.find(']');
  const std::string bar = line.substr(open + 1, close - open - 1);
  EXPECT_EQ(bar.find('.'), bar.size() / 4);  // a quarter filled
  EXPECT_LE(line.size(), 100u);
}

TEST(FormatProgressTest, UnknownTotalShowsBytesAndElapsedTime) {
  const std::string line = FormatProgress("saving fencing", 0, 0, 0.4, 80);
  EXPECT_EQ(line, "saving fencing  0 B  1 s");
  EXPECT_THAT(FormatProgress("restoring reading", 2048, 0, 2, 80),
              HasSubstr("2.0 KiB  1.0 KiB/s  2 s"));
}

TEST(FormatProgressTest, NarrowTerminalDropsTheBarAndFitsTheWidth) {
  const std::string line = FormatProgress("saving", 10, 100, 1, 40);
  EXPECT_THAT(line, Not(HasSubstr("[")));
  EXPECT_LE(line.size(), 40u);
  EXPECT_THAT(line, StartsWith("saving  10%"));
}

psd::MoveProgressResponse Moving() {
  psd::MoveProgressResponse p;
  p.set_found(true);
  p.set_moves_done(1);
  p.set_moves_planned(5);
  p.set_part("w/part_3");
  p.set_source_shard(0);
  p.set_target_shard(1);
  p.set_phase("copying");
  p.set_copied_bytes(int64_t{1} << 20);
  p.set_total_bytes(int64_t{4} << 20);
  p.set_forwarded_writes(12);
  p.set_seconds(2);
  return p;
}

TEST(FormatMoveProgressTest, BarOfTheRunningMoveWithItsPlaceAndWrites) {
  const std::string line = FormatMoveProgress(Moving(), 120);
  EXPECT_THAT(line, StartsWith("moving w/part_3 0->1 (2/5) copying, 12 writes ["));
  EXPECT_THAT(line, HasSubstr("]  25%  1.0 MiB / 4.0 MiB"));
  EXPECT_LE(line.size(), 120u);
  // A single move: no place in a plan, no writes yet.
  psd::MoveProgressResponse one = Moving();
  one.set_moves_done(0);
  one.set_moves_planned(1);
  one.set_forwarded_writes(0);
  EXPECT_THAT(FormatMoveProgress(one, 120), StartsWith("moving w/part_3 0->1 copying ["));
}

TEST(FormatMoveProgressTest, PlainLineForAPipe) {
  EXPECT_EQ(MoveProgressLine(Moving()),
            "moving w/part_3 from shard 0 to shard 1 (move 2 of 5): copying, 1.0 MiB of 4.0 MiB, "
            "12 writes forwarded");
  psd::MoveProgressResponse starting = Moving();
  starting.set_phase("");
  starting.set_total_bytes(0);
  starting.set_forwarded_writes(1);
  EXPECT_EQ(MoveProgressLine(starting),
            "moving w/part_3 from shard 0 to shard 1 (move 2 of 5): starting, 1 write forwarded");
}

TEST(FormatProgressTest, DoneBeyondTotalShowsFull) {
  // String tensors add length prefixes to the data file: done may pass
  // the total the shards announced.
  const std::string line = FormatProgress("saving", 120, 100, 1, 100);
  EXPECT_THAT(line, HasSubstr("100%"));
  EXPECT_THAT(line, HasSubstr("ETA 0 s"));
}

TEST(FormatProgressTest, LongTimesInMinutesAndHours) {
  EXPECT_THAT(FormatProgress("saving", 1, 1000, 1, 100), HasSubstr("ETA 16:39"));
  EXPECT_THAT(FormatProgress("saving", 1, 100000, 1, 100), HasSubstr("ETA 27:46:39"));
}

// `vars list` / `vars show` tell a table from a dense variable and give its
// dim and key dtype; the JSON keeps the existing members and adds "kind".
TEST(VariableKindTest, TablesShowTheirKindDimAndKeyDtype) {
  psd::VariableHandle dense;
  dense.set_partitioned(true);
  dense.add_parts();
  dense.add_parts();
  EXPECT_EQ(VariableKindText(dense), "dense");
  EXPECT_EQ(VariableKindJson(dense), ",\"kind\":\"dense\"");
  EXPECT_EQ(PartitioningColumn(dense), "2 parts on axis 0");

  psd::VariableHandle table = dense;
  table.mutable_embedding()->set_embedding_dim(16);
  table.mutable_embedding()->set_key_dtype(psd::DT_INT64);
  EXPECT_EQ(VariableKindText(table), "table (dim 16, key int64)");
  EXPECT_EQ(VariableKindJson(table),
            ",\"kind\":\"table\",\"embedding_dim\":16,\"key_dtype\":\"int64\",\"slot_of\":\"\"");
  EXPECT_EQ(PartitioningColumn(table), "2 parts by key hash");
  table.mutable_embedding()->set_slot_of("user/emb");
  table.mutable_embedding()->set_key_dtype(psd::DT_INT32);
  EXPECT_EQ(VariableKindText(table), "slot of user/emb (dim 16, key int32)");
  table.set_partitioned(false);
  EXPECT_EQ(PartitioningColumn(table), "-");
}

TEST(EmbeddingStatsTest, PartCountsOrDashesWhenTheShardGaveNone) {
  EXPECT_THAT(
      EmbeddingStatsHeader(),
      ::testing::ElementsAre("ROWS", "MEMORY", "ADMITTED", "FILTERED(LOOKUPS/UPDATES)", "EVICTED"));
  EXPECT_THAT(EmbeddingStatsColumns(nullptr), ::testing::ElementsAre("-", "-", "-", "-", "-"));
  psd::VariableInfo info;
  info.set_bytes(3 << 20);
  EXPECT_THAT(EmbeddingStatsColumns(&info), ::testing::ElementsAre("-", "-", "-", "-", "-"))
      << "a shard that does not report table counts";
  psd::EmbeddingStats* stats = info.mutable_embedding();
  stats->set_rows(1000);
  stats->set_pending_keys(7);
  stats->set_admitted(1200);
  stats->set_filtered_lookups(30);
  stats->set_filtered_updates(4);
  stats->set_evicted(200);
  stats->set_deleted(5);
  EXPECT_THAT(EmbeddingStatsColumns(&info),
              ::testing::ElementsAre("1000", "3.0 MiB", "1200", "30/4", "200"));
  EXPECT_EQ(EmbeddingStatsJson(info),
            "{\"rows\":1000,\"bytes\":3145728,\"pending_keys\":7,\"admitted\":1200,"
            "\"filtered_lookups\":30,\"filtered_updates\":4,\"evicted\":200,\"deleted\":5}");
}

// A checkpoint in DeepRec's table layout, as shards write it: table
// "user/emb" in two parts (user/emb/part_K-keys, -values, -freqs,
// -versions), table "item" in one (item-keys, ...), a dense tensor, and a
// lone "orphan-keys" that is not a table.
class CkptInspectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/psctl_inspect_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    prefix_ = dir_ + "/model.ckpt-7";
    auto writer = psd::checkpoint::BundleWriter::Create(prefix_);
    ASSERT_TRUE(writer.ok()) << writer.status();
    auto add = [&](const std::string& name, absl::StatusOr<psd::Tensor> t) {
      ASSERT_TRUE(t.ok()) << t.status();
      ASSERT_TRUE((*writer)->Add(name, *t).ok()) << name;
    };
    using psd::Tensor;
    using psd::TensorShape;
    add("global_step", Tensor::Scalar<int64_t>(7));
    add("user/emb/part_0-keys", Tensor::FromVector<int64_t>(TensorShape{2}, {5, -3}));
    add("user/emb/part_0-values",
        Tensor::FromVector<float>(TensorShape{2, 3}, {0.5f, 1, 2, 3, 4, 5}));
    add("user/emb/part_0-freqs", Tensor::FromVector<int64_t>(TensorShape{2}, {2, 1}));
    add("user/emb/part_0-versions", Tensor::FromVector<int64_t>(TensorShape{2}, {7, 6}));
    add("user/emb/part_1-keys",
        Tensor::FromVector<int64_t>(TensorShape{1}, {int64_t{1} << 40}));
    add("user/emb/part_1-values", Tensor::FromVector<float>(TensorShape{1, 3}, {-1, 0, 1}));
    add("user/emb/part_1-freqs", Tensor::FromVector<int64_t>(TensorShape{1}, {4}));
    add("user/emb/part_1-versions", Tensor::FromVector<int64_t>(TensorShape{1}, {7}));
    add("item-keys", Tensor::FromVector<int32_t>(TensorShape{1}, {9}));
    add("item-values", Tensor::FromVector<float>(TensorShape{1, 2}, {0.25f, 0.75f}));
    add("item-freqs", Tensor::FromVector<int64_t>(TensorShape{1}, {1}));
    add("item-versions", Tensor::FromVector<int64_t>(TensorShape{1}, {3}));
    add("orphan-keys", Tensor::FromVector<int64_t>(TensorShape{1}, {1}));
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string Inspect(InspectOptions o, bool json = false) {
    o.prefix = prefix_;
    auto out = InspectCheckpoint(o, json);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : "";
  }
  // The whitespace-separated words of the line of `text` whose first word
  // is `first` (empty when there is none).
  static std::vector<std::string> Words(const std::string& text, const std::string& first) {
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (!words.empty() && words[0] == first) return words;
    }
    return {};
  }

  std::string dir_, prefix_;
};

TEST_F(CkptInspectTest, ATableIsOneEntryWithItsPartsRowsDimAndDtypes) {
  const std::string out = Inspect({});
  EXPECT_THAT(out, HasSubstr(": 2 tensors, 2 embedding tables (12 tensors), 1 data file\n"));
  EXPECT_THAT(Words(out, "TABLE"),
              ::testing::ElementsAre("TABLE", "DTYPE", "KEY", "DTYPE", "DIM", "PARTS", "ROWS"));
  EXPECT_THAT(Words(out, "user/emb"),
              ::testing::ElementsAre("user/emb", "float32", "int64", "3", "2", "3"));
  EXPECT_THAT(Words(out, "item"), ::testing::ElementsAre("item", "float32", "int32", "2", "1", "1"));
  // The tensors that are not tables are listed as before; a table's are not.
  EXPECT_THAT(Words(out, "global_step"), ::testing::ElementsAre("global_step", "int64", "[]"));
  EXPECT_THAT(Words(out, "orphan-keys"), ::testing::ElementsAre("orphan-keys", "int64", "[1]"));
  EXPECT_THAT(out, Not(HasSubstr("user/emb/part_0-")));
  EXPECT_THAT(out, Not(HasSubstr("KEY  FREQ"))) << "no sample rows unless asked";
}

TEST_F(CkptInspectTest, SampleRowsCrossPartsWithKeyFreqVersionAndFirstValues) {
  InspectOptions o;
  o.rows = 3;
  o.max_values = 2;
  o.tensor = "user/emb";
  const std::string out = Inspect(o);
  EXPECT_THAT(out, HasSubstr(": 0 tensors, 1 embedding table (8 tensors), 1 data file\n"));
  EXPECT_THAT(Words(out, "item"), ::testing::IsEmpty()) << "--tensor names one table";
  EXPECT_THAT(Words(out, "KEY"), ::testing::ElementsAre("KEY", "FREQ", "VERSION", "VALUES"));
  EXPECT_THAT(Words(out, "5"),
              ::testing::ElementsAre("5", "2", "7", "{0.5,", "1,", "...", "(1", "more)}"));
  EXPECT_THAT(Words(out, "-3"),
              ::testing::ElementsAre("-3", "1", "6", "{3,", "4,", "...", "(1", "more)}"));
  EXPECT_THAT(Words(out, "1099511627776"),
              ::testing::ElementsAre("1099511627776", "4", "7", "{-1,", "0,", "...", "(1",
                                     "more)}"))
      << "the third row comes from part 1";
}

TEST_F(CkptInspectTest, JsonListsTablesBesideTensors) {
  InspectOptions o;
  o.rows = 1;
  o.tensor = "item";
  EXPECT_EQ(Inspect(o, /*json=*/true),
            "{\"prefix\":\"" + prefix_ +
                "\",\"num_shards\":1,\"version\":{\"producer\":1,\"min_consumer\":0},"
                "\"tensors\":[],\"tables\":[{\"name\":\"item\",\"dtype\":\"float32\","
                "\"key_dtype\":\"int32\",\"embedding_dim\":2,\"rows\":1,"
                "\"parts\":[{\"name\":\"item\",\"rows\":1}],"
                "\"samples\":[{\"key\":9,\"freq\":1,\"version\":3,\"values\":[0.25,0.75],"
                "\"values_truncated\":false}]}]}\n");
  // A table's own tensor can still be named.
  o.tensor = "user/emb/part_1-keys";
  o.rows = 0;
  o.values = true;
  const std::string raw = Inspect(o, /*json=*/true);
  EXPECT_THAT(raw, HasSubstr("\"tensors\":[{\"name\":\"user/emb/part_1-keys\""));
  EXPECT_THAT(raw, HasSubstr("\"values\":[1099511627776]"));
  EXPECT_THAT(raw, HasSubstr("\"tables\":[]"));
}

}  // namespace
}  // namespace psctl
