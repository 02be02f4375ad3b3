#include <stdlib.h>

#include <map>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "checkpoint/file_system.h"
#include "checkpoint/table_builder.h"
#include "checkpoint/table_reader.h"
#include "gtest/gtest.h"
#include "psd/status.h"

namespace psd::checkpoint::table {
namespace {

// A WritableFile into a string, for byte-level checks.
class StringFile final : public WritableFile {
 public:
  absl::Status Append(absl::string_view data) override {
    contents.append(data.data(), data.size());
    return absl::OkStatus();
  }
  absl::Status Sync() override { return absl::OkStatus(); }
  absl::Status Close() override { return absl::OkStatus(); }
  std::string contents;
};

class StringSource final : public RandomAccessFile {
 public:
  explicit StringSource(std::string contents) : contents_(std::move(contents)) {}
  absl::Status Read(uint64_t offset, size_t n, char* scratch,
                    absl::string_view* result) const override {
    if (offset >= contents_.size()) {
      *result = absl::string_view();
    } else {
      *result = absl::string_view(contents_).substr(offset, n);
    }
    return absl::OkStatus();
  }
  const std::string& path() const override { return path_; }

 private:
  std::string contents_;
  std::string path_ = "memory.index";
};

std::string Build(const std::map<std::string, std::string>& kv, TableOptions options = {}) {
  StringFile file;
  TableBuilder builder(options, &file);
  for (const auto& [k, v] : kv) EXPECT_TRUE(builder.Add(k, v).ok());
  EXPECT_TRUE(builder.Finish().ok());
  EXPECT_EQ(builder.file_size(), file.contents.size());
  return file.contents;
}

absl::StatusOr<std::map<std::string, std::string>> ReadAll(const std::string& bytes) {
  StringSource source(bytes);
  PSD_ASSIGN_OR_RETURN(auto table, Table::Open(&source, bytes.size()));
  std::map<std::string, std::string> out;
  PSD_RETURN_IF_ERROR(table->ForEach([&](absl::string_view k, absl::string_view v) {
    out.emplace(std::string(k), std::string(v));
    return absl::OkStatus();
  }));
  return out;
}

TEST(TableTest, SmallTableLayoutMatchesTensorFlow) {
  // The header and one entry, like serving_saved_model_counter's index.
  std::string bytes = Build({{"", "x"}, {"counter", "y"}});
  // Ends with the magic number, low word first.
  EXPECT_EQ(absl::BytesToHexString(bytes.substr(bytes.size() - 8)), "57fb808b247547db");
  // The empty metaindex block (one restart at offset 0) sits before the index block.
  EXPECT_NE(bytes.find(std::string("\x00\x00\x00\x00\x01\x00\x00\x00", 8)), std::string::npos);
  // Last key "counter" gives the index key "d".
  auto read = ReadAll(bytes);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size(), 2u);
  EXPECT_EQ(read->at("counter"), "y");
}

TEST(TableTest, ManyBlocksWithRestartsRoundTrip) {
  std::map<std::string, std::string> kv;
  for (int i = 0; i < 5000; ++i) {
    kv[absl::StrFormat("tensor/%06d/kernel", i)] = std::string(100 + i % 50, static_cast<char>(i));
  }
  kv[""] = "header";
  kv[std::string("\x00v\x00\x01", 4)] = "slice";
  TableOptions options;
  options.block_size = 4096;  // many data blocks
  const std::string bytes = Build(kv, options);
  auto read = ReadAll(bytes);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, kv);
}

TEST(TableTest, SnappyBlocksRoundTrip) {
  std::map<std::string, std::string> kv;
  for (int i = 0; i < 3000; ++i) kv[absl::StrFormat("k%05d", i)] = std::string(64, 'a' + i % 3);
  TableOptions options;
  options.block_size = 8192;
  options.compression = kSnappyCompression;
  const std::string compressed = Build(kv, options);
  EXPECT_LT(compressed.size(), Build(kv).size() / 2);
  auto read = ReadAll(compressed);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, kv);
}

TEST(TableTest, KeysMustIncrease) {
  StringFile file;
  TableBuilder builder(TableOptions(), &file);
  ASSERT_TRUE(builder.Add("b", "1").ok());
  EXPECT_EQ(builder.Add("b", "2").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(builder.Add("a", "2").code(), absl::StatusCode::kInvalidArgument);
}

TEST(TableTest, SeparatorsFollowLevelDb) {
  std::string s = "abcd";
  internal::FindShortestSeparator(&s, "abzz");
  EXPECT_EQ(s, "abd");
  s = "abc";
  internal::FindShortestSeparator(&s, "abcdef");  // prefix: unchanged
  EXPECT_EQ(s, "abc");
  s = "abc";
  internal::FindShortestSeparator(&s, "abd");  // c+1 == d: unchanged
  EXPECT_EQ(s, "abc");
  s = "w";
  internal::FindShortSuccessor(&s);
  EXPECT_EQ(s, "x");
  s = "_CHECKPOINTABLE_OBJECT_GRAPH";
  internal::FindShortSuccessor(&s);
  EXPECT_EQ(s, "`");
  s = "\xff\xff";
  internal::FindShortSuccessor(&s);
  EXPECT_EQ(s, "\xff\xff");
}

TEST(TableTest, EveryCorruptByteIsDataLossNotACrash) {
  const std::string good = Build({{"", "header"}, {"a", "1"}, {"b", std::string(40, 'z')}});
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x40;
    auto read = ReadAll(bad);
    // Footer padding bytes are not covered by any check; everything else is.
    if (read.ok()) {
      EXPECT_GE(i, good.size() - 48) << i;
      continue;
    }
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << i << read.status();
    EXPECT_NE(read.status().message().find("memory.index"), absl::string_view::npos);
  }
}

TEST(TableTest, TruncatedTableIsDataLoss) {
  const std::string good = Build({{"", "header"}, {"a", "1"}});
  for (size_t n = 0; n < good.size(); n += 7) {
    auto read = ReadAll(good.substr(0, n));
    ASSERT_FALSE(read.ok()) << n;
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << n;
  }
}

}  // namespace
}  // namespace psd::checkpoint::table
