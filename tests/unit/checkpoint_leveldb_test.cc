// An independent reader for our .index: Debian's libleveldb opens the table
// we wrote and must see the same keys and values. Debian builds leveldb
// without RTTI, so this file subclasses none of its types (files come from
// leveldb::Env::Default()).
#include <stdlib.h>

#include <memory>
#include <string>
#include <vector>

#include "checkpoint/bundle_reader.h"
#include "checkpoint/bundle_writer.h"
#include "gtest/gtest.h"
#include "leveldb/env.h"
#include "leveldb/iterator.h"
#include "leveldb/options.h"
#include "leveldb/table.h"

namespace psd::checkpoint {
namespace {

std::vector<std::pair<std::string, std::string>> ReadWithLevelDb(const std::string& path) {
  std::vector<std::pair<std::string, std::string>> out;
  leveldb::Env* env = leveldb::Env::Default();
  uint64_t size = 0;
  EXPECT_TRUE(env->GetFileSize(path, &size).ok());
  leveldb::RandomAccessFile* file = nullptr;
  leveldb::Status s = env->NewRandomAccessFile(path, &file);
  EXPECT_TRUE(s.ok()) << s.ToString();
  if (!s.ok()) return out;
  std::unique_ptr<leveldb::RandomAccessFile> file_owner(file);
  leveldb::Options options;
  options.paranoid_checks = true;
  leveldb::Table* table = nullptr;
  s = leveldb::Table::Open(options, file, size, &table);
  EXPECT_TRUE(s.ok()) << s.ToString();
  if (!s.ok()) return out;
  std::unique_ptr<leveldb::Table> table_owner(table);
  leveldb::ReadOptions read_options;
  read_options.verify_checksums = true;
  std::unique_ptr<leveldb::Iterator> it(table->NewIterator(read_options));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    out.emplace_back(it->key().ToString(), it->value().ToString());
  }
  EXPECT_TRUE(it->status().ok()) << it->status().ToString();
  return out;
}

TEST(LevelDbInteropTest, LevelDbReadsOurIndex) {
  std::string dir = ::testing::TempDir() + "/psd_ckpt_leveldb_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string prefix = dir + "/model.ckpt-7";

  auto writer = BundleWriter::Create(prefix);
  ASSERT_TRUE(writer.ok());
  // Enough entries, with long names, for several restart points.
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE((*writer)
                    ->Add("layer_" + std::to_string(i) + "/kernel/Adam_1", Tensor(DT_FLOAT, {3, 2}))
                    .ok());
  }
  ASSERT_TRUE((*writer)->Add("global_step", Tensor::Scalar<int64_t>(7)).ok());
  const TensorShape full{10, 3};
  ASSERT_TRUE((*writer)
                  ->AddSlice("emb", full, *TensorSlice::Parse("0,5:0,3"), Tensor(DT_FLOAT, {5, 3}))
                  .ok());
  ASSERT_TRUE((*writer)
                  ->AddSlice("emb", full, *TensorSlice::Parse("5,5:0,3"), Tensor(DT_FLOAT, {5, 3}))
                  .ok());
  ASSERT_TRUE((*writer)->Finish().ok());

  auto ours = BundleReader::Open(prefix);
  ASSERT_TRUE(ours.ok());
  const auto theirs = ReadWithLevelDb(prefix + ".index");
  ASSERT_EQ(theirs.size(), (*ours)->entries().size() + 1);  // + header
  EXPECT_EQ(theirs[0].first, "");
  tf::BundleHeaderProto header;
  ASSERT_TRUE(header.ParseFromString(theirs[0].second));
  EXPECT_EQ(header.num_shards(), 1);
  EXPECT_EQ(header.version().producer(), 1);
  size_t i = 1;
  for (const auto& [key, entry] : (*ours)->entries()) {
    ASSERT_LT(i, theirs.size());
    EXPECT_EQ(theirs[i].first, key);
    EXPECT_EQ(theirs[i].second, entry.SerializeAsString()) << key;
    ++i;
  }
  // Slice keys sort right after the header.
  EXPECT_EQ(theirs[1].first[0], '\0');
  EXPECT_EQ(theirs[2].first[0], '\0');
}

TEST(LevelDbInteropTest, LevelDbReadsTheTensorFlowFixtures) {
  // Sanity check of the independent reader itself, including a Snappy block.
  for (const char* name :
       {"serving_saved_model_half_plus_two_mkl", "serving_saved_model_half_plus_two_tf2_cpu"}) {
    const std::string prefix = std::string(PSD_TF_FIXTURES) + "/" + name + "/variables";
    const auto theirs = ReadWithLevelDb(prefix + ".index");
    auto ours = BundleReader::Open(prefix);
    ASSERT_TRUE(ours.ok());
    EXPECT_EQ(theirs.size(), (*ours)->entries().size() + 1) << name;
  }
}

}  // namespace
}  // namespace psd::checkpoint
