#include <stdlib.h>
#include <sys/resource.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/bundle_writer.h"
#include "checkpoint/file_system.h"
#include "checkpoint/table_format.h"
#include "checkpoint/table_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/crc32c.h"

namespace psd::checkpoint {
namespace {

using ::testing::HasSubstr;

std::string MakeTempDir() {
  std::string tmpl = ::testing::TempDir() + "/psd_ckpt_XXXXXX";
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
}

Tensor Iota(DataType dtype, TensorShape shape) {
  Tensor t(dtype, shape);
  for (int64_t i = 0; i < t.num_elements(); ++i) {
    DispatchFixedSize(
        dtype,
        [&](auto v) {
          using T = decltype(v);
          if constexpr (std::is_same_v<T, bool>) {
            t.data<T>()[i] = (i % 3) == 0;
          } else if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
            t.data<T>()[i] = T(static_cast<float>(i) * 0.5f - 3.0f);
          } else {
            t.data<T>()[i] = static_cast<T>(i * 3 - 7);
          }
        },
        [] {});
  }
  return t;
}

Tensor Float2D(int rows, int cols) {
  std::vector<float> v;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) v.push_back(static_cast<float>(r * 10 + c));
  }
  return *Tensor::FromVector(TensorShape{rows, cols}, v);
}

class BundleTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  std::string Prefix(const std::string& name = "model.ckpt-1") { return dir_ + "/" + name; }
  std::string dir_;
};

TEST_F(BundleTest, RoundTripsEveryDtypeScalarsAndEmptyTensors) {
  const std::vector<DataType> dtypes = {DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8,    DT_INT16,
                                        DT_INT8,  DT_INT64,  DT_BOOL,  DT_BFLOAT16, DT_HALF};
  std::map<std::string, Tensor> expected;
  for (DataType dt : dtypes) {
    expected["t/" + DataTypeName(dt)] = Iota(dt, {3, 4});
    expected["scalar/" + DataTypeName(dt)] = Iota(dt, {});
    expected["empty/" + DataTypeName(dt)] = Tensor(dt, {0, 5});
  }
  expected["string"] =
      *Tensor::FromStrings({2, 2}, {"", "a", std::string(300, 'x'), std::string("\x00\xff", 2)});
  expected["string_scalar"] = Tensor::StringScalar("hello");
  expected["string_empty"] = Tensor(DT_STRING, {0});
  Tensor special(DT_FLOAT, {4});
  special.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  special.data<float>()[1] = -std::numeric_limits<float>::infinity();
  special.data<float>()[2] = -0.0f;
  special.data<float>()[3] = std::numeric_limits<float>::denorm_min();
  expected["special"] = special;

  auto writer = BundleWriter::Create(Prefix());
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (const auto& [name, t] : expected) ASSERT_TRUE((*writer)->Add(name, t).ok()) << name;
  ASSERT_TRUE((*writer)->Finish().ok());

  auto reader = BundleReader::Open(Prefix());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->header().num_shards(), 1);
  EXPECT_EQ((*reader)->ListTensors().size(), expected.size());
  for (const auto& [name, t] : expected) {
    auto got = (*reader)->ReadTensor(name);
    ASSERT_TRUE(got.ok()) << name << ": " << got.status();
    EXPECT_EQ(*got, t) << name << " " << got->DebugString() << " vs " << t.DebugString();
  }
  // Only the two published files, no temp files.
  auto names = FileSystem::Default()->ListDir(dir_);
  ASSERT_TRUE(names.ok());
  EXPECT_THAT(*names, ::testing::UnorderedElementsAre("model.ckpt-1.index",
                                                      "model.ckpt-1.data-00000-of-00001"));
}

TEST_F(BundleTest, DuplicateAndBadNamesAreRejected) {
  auto writer = *BundleWriter::Create(Prefix());
  ASSERT_TRUE(writer->Add("a", Tensor::Scalar(1.0f)).ok());
  absl::Status dup = writer->Add("a", Tensor::Scalar(2.0f));
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(dup.message()), HasSubstr("Adding duplicate key"));
  EXPECT_FALSE(writer->Add("", Tensor::Scalar(1.0f)).ok());
  EXPECT_FALSE(writer->Add(std::string("\0x", 2), Tensor::Scalar(1.0f)).ok());
  // Rejected calls wrote nothing and do not spoil the writer.
  ASSERT_TRUE(writer->Finish().ok());
  auto reader = *BundleReader::Open(Prefix());
  EXPECT_EQ(reader->ListTensors().size(), 1u);
}

TEST_F(BundleTest, StreamingInChunksEqualsAdd) {
  const Tensor big = Iota(DT_FLOAT, {1000, 33});
  {
    auto writer = *BundleWriter::Create(Prefix("streamed"));
    ASSERT_TRUE(writer->Add("first", Tensor::Scalar<int64_t>(7)).ok());
    ASSERT_TRUE(writer->BeginTensor("big", DT_FLOAT, big.shape()).ok());
    absl::string_view bytes = big.bytes();
    for (size_t pos = 0; pos < bytes.size(); pos += 4099) {
      ASSERT_TRUE(writer->AppendData(absl::string_view(bytes).substr(pos, 4099)).ok());
    }
    ASSERT_TRUE(writer->EndTensor().ok());
    ASSERT_TRUE(writer->Finish().ok());
  }
  {
    auto writer = *BundleWriter::Create(Prefix("whole"));
    ASSERT_TRUE(writer->Add("first", Tensor::Scalar<int64_t>(7)).ok());
    ASSERT_TRUE(writer->Add("big", big).ok());
    ASSERT_TRUE(writer->Finish().ok());
  }
  EXPECT_EQ(ReadFile(Prefix("streamed") + ".index"), ReadFile(Prefix("whole") + ".index"));
  EXPECT_EQ(ReadFile(Prefix("streamed") + ".data-00000-of-00001"),
            ReadFile(Prefix("whole") + ".data-00000-of-00001"));

  auto reader = *BundleReader::Open(Prefix("streamed"));
  std::string streamed;
  int chunks = 0;
  ASSERT_TRUE(reader
                  ->ReadEntryChunked("big", 10000,
                                     [&](absl::string_view chunk) {
                                       EXPECT_LE(chunk.size(), 10000u);
                                       streamed.append(chunk.data(), chunk.size());
                                       ++chunks;
                                       return absl::OkStatus();
                                     })
                  .ok());
  EXPECT_EQ(streamed, big.bytes());
  EXPECT_EQ(chunks, 14);
}

TEST_F(BundleTest, StreamingWithWrongByteCountFails) {
  auto writer = *BundleWriter::Create(Prefix());
  ASSERT_TRUE(writer->BeginTensor("v", DT_INT32, {4}).ok());
  ASSERT_TRUE(writer->AppendData(std::string(8, '\1')).ok());
  EXPECT_EQ(writer->AppendData(std::string(12, '\1')).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(writer->Finish().ok());
  EXPECT_FALSE(FileSystem::Default()->FileExists(Prefix() + ".index").ok());
  EXPECT_TRUE(FileSystem::Default()->ListDir(dir_)->empty());
}

TEST_F(BundleTest, SlicedEntryBytesMatchTensorFlow) {
  const Tensor v = Float2D(10, 3);
  auto writer = *BundleWriter::Create(Prefix());
  for (const char* spec : {"0,5:0,3", "5,5:0,3"}) {
    const TensorSlice slice = *TensorSlice::Parse(spec);
    auto reader_slice = slice.Resolved(v.shape());
    Tensor part(DT_FLOAT, slice.SliceShape(v.shape()));
    CopySliceRegion(v, TensorSlice::Full(2).Resolved(v.shape()), reader_slice, reader_slice, &part);
    ASSERT_TRUE(writer->AddSlice("v", v.shape(), slice, part).ok());
  }
  ASSERT_TRUE(writer->Finish().ok());
  auto reader = *BundleReader::Open(Prefix());
  // The full entry exactly as the spec's example (no shard/offset/size/crc).
  EXPECT_EQ(absl::BytesToHexString(reader->entries().at("v").SerializeAsString()),
            "0801120812020"
            "80a12020803"
            "3a080a0210050a021003"
            "3a0a0a04080510050a021003");
  EXPECT_EQ(reader->entries().size(), 3u);
  auto list = reader->ListTensors();
  ASSERT_EQ(list.size(), 1u);  // slice keys hidden
  EXPECT_EQ(list[0].name, "v");
  EXPECT_EQ(list[0].shape, (TensorShape{10, 3}));
  ASSERT_EQ(list[0].slices.size(), 2u);
  EXPECT_EQ(list[0].slices[1].ToString(), "5,5:0,3");
}

class SlicedVariableTest : public BundleTest {
 protected:
  void SetUp() override {
    BundleTest::SetUp();
    full_ = Float2D(10, 3);
    auto writer = *BundleWriter::Create(Prefix());
    for (const char* spec : {"5,5:0,3", "0,5:0,3"}) {  // any order
      const TensorSlice slice = *TensorSlice::Parse(spec);
      ASSERT_TRUE(writer->AddSlice("v", full_.shape(), slice, Part(slice)).ok());
    }
    ASSERT_TRUE(writer->Add("plain", full_).ok());
    ASSERT_TRUE(writer->Finish().ok());
    reader_ = *BundleReader::Open(Prefix());
  }
  Tensor Part(const TensorSlice& slice) {
    const TensorSlice r = slice.Resolved(full_.shape());
    Tensor part(DT_FLOAT, r.SliceShape(full_.shape()));
    CopySliceRegion(full_, TensorSlice::Full(2).Resolved(full_.shape()), r, r, &part);
    return part;
  }
  Tensor full_;
  std::unique_ptr<BundleReader> reader_;
};

TEST_F(SlicedVariableTest, ReadsWholeTensorFromSlices) {
  auto got = reader_->ReadTensor("v");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, full_);
}

TEST_F(SlicedVariableTest, RestoresIntoFiveRowParts) {
  for (int i = 0; i < 5; ++i) {
    const TensorSlice slice = *TensorSlice::Parse(absl::StrCat(i * 2, ",2:-"));
    for (const char* name : {"v", "plain"}) {
      auto got = reader_->ReadSlice(name, slice);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, Part(slice)) << name << " " << slice.ToString();
    }
  }
}

TEST_F(SlicedVariableTest, RestoresIntoColumnPartsAndOddSlices) {
  for (const char* spec : {"-:0,1", "-:1,1", "-:2,1", "3,4:1,2", "4,2:-", "9,1:2,1", "0,10:0,3"}) {
    const TensorSlice slice = *TensorSlice::Parse(spec);
    auto got = reader_->ReadSlice("v", slice);
    ASSERT_TRUE(got.ok()) << spec << got.status();
    EXPECT_EQ(*got, Part(slice)) << spec;
  }
  EXPECT_EQ(reader_->ReadSlice("v", *TensorSlice::Parse("0,11:-")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reader_->ReadSlice("missing", *TensorSlice::Parse("0,1:-")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(BundleTest, SliceCoveringWholeTensorIsPlainEntry) {
  const Tensor v = Float2D(10, 43);
  auto writer = *BundleWriter::Create(Prefix());
  ASSERT_TRUE(writer->AddSlice("v", v.shape(), *TensorSlice::Parse("0,10:0,43"), v).ok());
  ASSERT_TRUE(writer->Finish().ok());
  auto reader = *BundleReader::Open(Prefix());
  ASSERT_EQ(reader->entries().size(), 1u);
  EXPECT_EQ(reader->entries().at("v").slices_size(), 0);
  EXPECT_EQ(*reader->ReadTensor("v"), v);
}

TEST_F(BundleTest, OverlappingOrMisshapedSlicesAreRejected) {
  const Tensor v = Float2D(10, 3);
  auto writer = *BundleWriter::Create(Prefix());
  const TensorSlice first = *TensorSlice::Parse("0,5:-");
  Tensor part(DT_FLOAT, first.SliceShape(v.shape()));
  ASSERT_TRUE(writer->AddSlice("v", v.shape(), first, part).ok());
  EXPECT_EQ(writer->AddSlice("v", v.shape(), first, part).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(writer->AddSlice("v", v.shape(), *TensorSlice::Parse("4,5:-"), part).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(writer->AddSlice("v", v.shape(), *TensorSlice::Parse("5,4:-"), part).code(),
            absl::StatusCode::kInvalidArgument);  // wrong part shape
  EXPECT_EQ(
      writer->AddSlice("v", {10, 4}, *TensorSlice::Parse("5,5:-"), Tensor(DT_FLOAT, {5, 4})).code(),
      absl::StatusCode::kInvalidArgument);  // full shape disagrees
  EXPECT_EQ(writer->Add("v", v).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(writer->Finish().ok());
  // The second half is missing: reading the whole tensor says so.
  auto reader = *BundleReader::Open(Prefix());
  EXPECT_EQ(reader->ReadTensor("v").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(reader->ReadSlice("v", *TensorSlice::Parse("1,3:1,2")).ok());
}

TEST_F(BundleTest, ShardedSaveMergesIndexes) {
  // Three shards write in parallel; shard 1 holds a plain tensor and half of
  // "v", shard 2 the other half, shard 0 a string.
  const Tensor v = Float2D(6, 2);
  auto part = [&](const char* spec) {
    const TensorSlice s = TensorSlice::Parse(spec)->Resolved(v.shape());
    Tensor p(DT_FLOAT, s.SliceShape(v.shape()));
    CopySliceRegion(v, TensorSlice::Full(2).Resolved(v.shape()), s, s, &p);
    return p;
  };
  std::vector<BundleShardIndex> parts;
  for (int shard = 0; shard < 3; ++shard) {
    BundleWriter::Options options;
    options.shard_id = shard;
    options.num_shards = 3;
    auto writer = *BundleWriter::Create(Prefix(), options);
    if (shard == 0) {
      ASSERT_TRUE(writer->Add("s", Tensor::StringScalar("zero")).ok());
    }
    if (shard == 1) {
      ASSERT_TRUE(writer->Add("step", Tensor::Scalar<int64_t>(42)).ok());
      ASSERT_TRUE(
          writer->AddSlice("v", v.shape(), *TensorSlice::Parse("0,4:0,2"), part("0,4:0,2")).ok());
    }
    if (shard == 2) {
      ASSERT_TRUE(
          writer->AddSlice("v", v.shape(), *TensorSlice::Parse("4,2:0,2"), part("4,2:0,2")).ok());
    }
    EXPECT_FALSE(FileSystem::Default()->FileExists(DataFilename(Prefix(), shard, 3)).ok());
    auto index = writer->FinishData();
    ASSERT_TRUE(index.ok()) << index.status();
    EXPECT_TRUE(FileSystem::Default()->FileExists(DataFilename(Prefix(), shard, 3)).ok());
    parts.push_back(*std::move(index));
  }
  EXPECT_FALSE(FileSystem::Default()->FileExists(Prefix() + ".index").ok());
  ASSERT_TRUE(WriteMergedIndex(nullptr, Prefix(), 3, parts).ok());

  auto reader = BundleReader::Open(Prefix());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->header().num_shards(), 3);
  EXPECT_EQ((*reader)->entries().at("step").shard_id(), 1);
  EXPECT_EQ((*reader)->ReadTensor("step")->data<int64_t>()[0], 42);
  EXPECT_EQ((*reader)->ReadTensor("s")->strings()[0], "zero");
  EXPECT_EQ(*(*reader)->ReadTensor("v"), v);
  EXPECT_EQ((*reader)->GetTensorInfo("v")->slices.size(), 2u);
}

TEST_F(BundleTest, MergeRejectsDuplicatesAndOverlaps) {
  BundleShardIndex a, b;
  a.shard_id = 0;
  b.shard_id = 1;
  tf::BundleEntryProto plain;
  plain.set_dtype(DT_FLOAT);
  plain.mutable_shape();
  a.entries["x"] = plain;
  plain.set_shard_id(1);
  b.entries["x"] = plain;
  auto merged = MergeBundleIndexes(2, {a, b});
  EXPECT_EQ(merged.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(merged.status().message()), HasSubstr("Duplicate tensor keyed by x"));

  // Overlapping slices of one tensor from two shards.
  a.entries.clear();
  b.entries.clear();
  tf::BundleEntryProto full;
  full.set_dtype(DT_FLOAT);
  ShapeToBundleProto({10}, full.mutable_shape());
  TensorSlice::Parse("0,6")->ToProto(full.add_slices());
  a.entries["v"] = full;
  full.clear_slices();
  TensorSlice::Parse("5,5")->ToProto(full.add_slices());
  b.entries["v"] = full;
  EXPECT_EQ(MergeBundleIndexes(2, {a, b}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MergeBundleIndexes(1, {a, b}).status().code(), absl::StatusCode::kInvalidArgument);
}

class CorruptionTest : public BundleTest {
 protected:
  void SetUp() override {
    BundleTest::SetUp();
    auto writer = *BundleWriter::Create(Prefix());
    ASSERT_TRUE(writer->Add("a", Iota(DT_FLOAT, {4})).ok());
    ASSERT_TRUE(writer->Add("b", Iota(DT_INT64, {3})).ok());
    ASSERT_TRUE(writer->Add("s", *Tensor::FromStrings({2}, {"xy", "z"})).ok());
    ASSERT_TRUE(writer->Finish().ok());
    data_path_ = Prefix() + ".data-00000-of-00001";
    index_path_ = Prefix() + ".index";
  }
  std::string data_path_, index_path_;
};

TEST_F(CorruptionTest, CorruptDataByteIsDataLossNamingFileAndTensor) {
  std::string data = ReadFile(data_path_);
  data[17] ^= 1;  // inside "b" (a is bytes 0-15)
  WriteFile(data_path_, data);
  auto reader = *BundleReader::Open(Prefix());
  EXPECT_TRUE(reader->ReadTensor("a").ok());
  absl::Status s = reader->ReadTensor("b").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor b"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(data_path_));
  EXPECT_THAT(std::string(s.message()), HasSubstr("Checksum does not match"));
  s = reader->ReadEntryChunked("b", 5, [](absl::string_view) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptionTest, EveryCorruptStringByteIsDataLoss) {
  const std::string good = ReadFile(data_path_);
  for (size_t i = 40; i < good.size(); ++i) {  // "s" starts after a (16) and b (24)
    std::string data = good;
    data[i] ^= 0x20;
    WriteFile(data_path_, data);
    auto reader = *BundleReader::Open(Prefix());
    absl::Status s = reader->ReadTensor("s").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << i << " " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("s")) << i;
  }
}

TEST_F(CorruptionTest, TruncatedDataIsDataLoss) {
  std::string data = ReadFile(data_path_);
  WriteFile(data_path_, data.substr(0, 20));
  auto reader = *BundleReader::Open(Prefix());
  EXPECT_TRUE(reader->ReadTensor("a").ok());
  absl::Status s = reader->ReadTensor("b").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("truncated"));
}

TEST_F(CorruptionTest, TruncatedIndexIsDataLoss) {
  const std::string index = ReadFile(index_path_);
  for (size_t n : {size_t{0}, size_t{10}, index.size() / 2, index.size() - 1}) {
    WriteFile(index_path_, index.substr(0, n));
    auto reader = BundleReader::Open(Prefix());
    ASSERT_FALSE(reader.ok()) << n;
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << n << reader.status();
    EXPECT_THAT(std::string(reader.status().message()), HasSubstr(index_path_));
  }
}

TEST_F(CorruptionTest, WrongSizeInEntryIsInvalidSizeDataLoss) {
  // Rewrite the index with "a" claiming 12 bytes instead of 16.
  auto reader = *BundleReader::Open(Prefix());
  BundleEntries entries = reader->entries();
  entries["a"].set_size(12);
  ASSERT_TRUE(WriteBundleIndex(nullptr, Prefix(), 1, entries).ok());
  reader = *BundleReader::Open(Prefix());
  absl::Status s = reader->ReadTensor("a").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("Invalid size in bundle entry"));
}

TEST_F(CorruptionTest, MissingDataFileIsDataLoss) {
  ASSERT_TRUE(FileSystem::Default()->DeleteFile(data_path_).ok());
  auto reader = *BundleReader::Open(Prefix());
  EXPECT_EQ(reader->ReadTensor("a").status().code(), absl::StatusCode::kDataLoss);
}

// A damaged (or hostile) index cannot make the reader allocate more than
// the files hold: sizes are checked against the data file, and sums and
// products of sizes against overflow, before anything is allocated. Each
// of these threw std::bad_alloc or read out of bounds before.
TEST_F(CorruptionTest, HugeShardCountInHeaderIsNotAllocated) {
  auto reader = *BundleReader::Open(Prefix());
  ASSERT_TRUE(WriteBundleIndex(nullptr, Prefix(), std::numeric_limits<int32_t>::max(),
                               reader->entries())
                  .ok());
  struct rusage before, after;
  ASSERT_EQ(getrusage(RUSAGE_SELF, &before), 0);
  auto opened = BundleReader::Open(Prefix());
  ASSERT_TRUE(opened.ok()) << opened.status();
  ASSERT_EQ(getrusage(RUSAGE_SELF, &after), 0);
  // Peak memory did not grow by anything like 2^31 file slots (16 GiB).
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 256 << 10) << "KiB";
  // Its data file is named for 2147483647 shards, so it is missing.
  EXPECT_EQ((*opened)->ReadTensor("a").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptionTest, EntryBiggerThanItsDataFileIsDataLossBeforeAllocating) {
  auto reader = *BundleReader::Open(Prefix());
  BundleEntries entries = reader->entries();
  ShapeToBundleProto({int64_t{1} << 40}, entries["a"].mutable_shape());
  entries["a"].set_size(int64_t{4} << 40);
  ShapeToBundleProto({int64_t{1} << 40}, entries["s"].mutable_shape());
  entries["s"].set_size(int64_t{2} << 40);
  // 2^58 int64 elements: a size that fits int64 (2^61 bytes) but no file.
  ShapeToBundleProto({int64_t{1} << 58}, entries["b"].mutable_shape());
  entries["b"].set_size(int64_t{1} << 61);
  ASSERT_TRUE(WriteBundleIndex(nullptr, Prefix(), 1, entries).ok());
  reader = *BundleReader::Open(Prefix());
  for (const char* name : {"a", "s", "b"}) {
    absl::Status s = reader->ReadTensor(name).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << name << " " << s;
    s = reader->ReadEntryChunked(name, 1 << 20, [](absl::string_view) { return absl::OkStatus(); });
    EXPECT_FALSE(s.ok()) << name;
  }
  EXPECT_THAT(std::string(reader->ReadTensor("a").status().message()), HasSubstr("truncated"));
}

TEST_F(CorruptionTest, ByteCountThatOverflowsIsDataLoss) {
  auto reader = *BundleReader::Open(Prefix());
  BundleEntries entries = reader->entries();
  // 2^61 int64 elements: the byte count wraps around to 0.
  ShapeToBundleProto({int64_t{1} << 61}, entries["b"].mutable_shape());
  entries["b"].set_size(0);
  ASSERT_TRUE(WriteBundleIndex(nullptr, Prefix(), 1, entries).ok());
  reader = *BundleReader::Open(Prefix());
  absl::Status s = reader->ReadTensor("b").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("Invalid size in bundle entry"));
  s = reader->ReadEntryChunked("b", 1 << 20, [](absl::string_view) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST_F(CorruptionTest, HugeSlicedTensorWithOneSmallSliceIsNotFoundBeforeAllocating) {
  auto reader = *BundleReader::Open(Prefix());
  BundleEntries entries = reader->entries();
  // "big" claims 2^40 floats and stores one: slice 0,1 backed by a's bytes.
  tf::BundleEntryProto full;
  full.set_dtype(DT_FLOAT);
  ShapeToBundleProto({int64_t{1} << 40}, full.mutable_shape());
  const TensorSlice slice = *TensorSlice::Parse("0,1");
  slice.ToProto(full.add_slices());
  entries["big"] = full;
  tf::BundleEntryProto part = entries["a"];
  ShapeToBundleProto({1}, part.mutable_shape());
  part.set_size(4);
  entries[EncodeTensorNameSlice("big", slice)] = part;
  ASSERT_TRUE(WriteBundleIndex(nullptr, Prefix(), 1, entries).ok());
  reader = *BundleReader::Open(Prefix());
  EXPECT_EQ(reader->ReadTensor("big").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CorruptionTest, StringLengthsThatWrapAroundAreDataLoss) {
  // Two strings of lengths 2^64 - 1 and 2 "add up" to the 1 byte stored,
  // with every checksum right.
  const uint64_t lengths[2] = {~uint64_t{0}, 2};
  std::string data, fixed;
  for (uint64_t len : lengths) {
    table::PutVarint64(&data, len);
    if (len <= 0xffffffffu) {
      table::PutFixed32(&fixed, static_cast<uint32_t>(len));
    } else {
      table::PutFixed64(&fixed, len);
    }
  }
  const uint32_t length_crc = crc32c::Value(fixed);
  table::PutFixed32(&data, crc32c::Mask(length_crc));
  data += "x";
  const uint32_t crc = crc32c::Extend(length_crc, data.substr(data.size() - 5));
  WriteFile(data_path_, data);
  auto reader = *BundleReader::Open(Prefix());
  BundleEntries entries = reader->entries();
  tf::BundleEntryProto& s = entries["s"];
  s.set_offset(0);
  s.set_size(static_cast<int64_t>(data.size()));
  s.set_crc32c(crc32c::Mask(crc));
  ASSERT_TRUE(WriteBundleIndex(nullptr, Prefix(), 1, entries).ok());
  reader = *BundleReader::Open(Prefix());
  absl::Status status = reader->ReadTensor("s").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("Invalid size in bundle entry"));
}

TEST_F(BundleTest, VersionAndHeaderChecks) {
  tf::VersionDef v;
  v.set_producer(1);
  EXPECT_TRUE(CheckBundleVersion(v, "x").ok());
  v.set_min_consumer(2);
  EXPECT_EQ(CheckBundleVersion(v, "x").code(), absl::StatusCode::kInvalidArgument);
  v.set_min_consumer(0);
  v.add_bad_consumers(1);
  EXPECT_EQ(CheckBundleVersion(v, "x").code(), absl::StatusCode::kInvalidArgument);
  v.clear_bad_consumers();
  v.set_producer(-1);
  EXPECT_EQ(CheckBundleVersion(v, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(absl::BytesToHexString(MakeBundleHeader(1).SerializeAsString()), "08011a020801");
}

TEST_F(BundleTest, MissingCheckpointIsNotFound) {
  auto reader = BundleReader::Open(Prefix("nothing"));
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(BundleTest, V1CheckpointIsRefusedClearly) {
  WriteFile(Prefix("v1"), "anything");
  auto reader = BundleReader::Open(Prefix("v1"));
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(reader.status().message()),
              HasSubstr("V1 checkpoint format is not supported"));
}

TEST_F(BundleTest, DeleteTempFilesRemovesLeftovers) {
  WriteFile(TempFileName(Prefix() + ".index"), "x");
  WriteFile(TempFileName(Prefix() + ".data-00000-of-00001"), "x");
  WriteFile(Prefix() + ".index", "keep");
  auto deleted = DeleteTempFiles(FileSystem::Default(), dir_);
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 2);
  EXPECT_THAT(*FileSystem::Default()->ListDir(dir_), ::testing::ElementsAre("model.ckpt-1.index"));
}

}  // namespace
}  // namespace psd::checkpoint
