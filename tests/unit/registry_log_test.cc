// Registry durability: the state directory's log and snapshot survive a
// restart; a torn tail (a crash in the middle of an append) is dropped; a
// corrupt record in the middle is DATA_LOSS naming the file and offset;
// compaction, including a crash between its two steps, replays nothing twice.
#include "coordinator/registry_log.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "coordinator/registry.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

VariableDeclaration Decl(const std::string& name, int64_t rows, int64_t parts = 0) {
  VariableDeclaration d;
  d.set_name(name);
  d.set_dtype(DT_FLOAT);
  d.mutable_shape()->add_dims(rows);
  d.mutable_shape()->add_dims(4);
  d.set_declared_at("train.cc:" + std::to_string(rows));
  if (parts > 0) d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(parts);
  return d;
}

class RegistryLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/registry_log_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<Registry> Open(int64_t compact_bytes = 64 << 20) {
    RegistryOptions options;
    options.state_dir = dir_;
    options.compact_log_bytes = compact_bytes;
    auto r = Registry::Open(options);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  std::string log_path() const { return RegistryLog::LogPath(dir_); }

  std::string dir_;
  std::vector<int32_t> shards_ = {0, 1};
};

TEST_F(RegistryLogTest, RestartServesTheSameRegistry) {
  uint64_t session;
  std::string emb;
  {
    auto registry = Open();
    session = *registry->OpenSession("trainer");
    auto scope = registry->OpenScope(session, "", "", "layer", false, false);
    ASSERT_TRUE(scope.ok());
    auto r = registry->GetVariable(session, Decl("layer/emb", 10, 3), shards_);
    ASSERT_TRUE(r.ok()) << r.status();
    emb = r->def.SerializeAsString();
    ASSERT_TRUE(registry->GetVariable(session, Decl("layer/bias", 1), shards_).ok());
    ASSERT_TRUE(registry->UniqueName(session, "Variable", true).ok());
    ASSERT_TRUE(registry->GetVariable(session, Decl("gone", 2), shards_).ok());
    ASSERT_TRUE(registry->Delete("gone").ok());
  }  // dropped without any shutdown step, like a killed process
  auto registry = Open();
  ASSERT_NE(registry, nullptr);
  EXPECT_EQ(registry->num_variables(), 2u);
  EXPECT_EQ(registry->Lookup("layer/emb")->SerializeAsString(), emb);
  EXPECT_EQ(registry->Lookup("gone").status().code(), absl::StatusCode::kNotFound);
  // The session and its counters carry on.
  ASSERT_TRUE(registry->HasSession(session));
  EXPECT_EQ(registry->OpenScope(session, "", "", "layer", false, false)->path, "layer_1");
  EXPECT_EQ(*registry->UniqueName(session, "Variable", true), "Variable_1");
  EXPECT_EQ(registry->GetVariable(session, Decl("layer/bias", 1), shards_).status().code(),
            absl::StatusCode::kAlreadyExists);
  // New sessions get new ids.
  EXPECT_GT(*registry->OpenSession("next"), session);
  EXPECT_EQ(registry->Placement()[0].parts + registry->Placement()[1].parts, 4);
}

// A coordinator killed after applying a request but before answering it:
// the client's retry against the restarted coordinator gets the answer.
TEST_F(RegistryLogTest, RetryAfterRestartGetsTheFirstAnswer) {
  uint64_t session;
  std::string w;
  {
    auto registry = Open();
    session = *registry->OpenSession("trainer");
    auto r = registry->GetVariable(session, Decl("w", 6, 2), shards_, /*request_seq=*/3);
    ASSERT_TRUE(r.ok()) << r.status();
    w = r->def.SerializeAsString();
    ASSERT_EQ(registry->OpenScope(session, "", "", "blk", false, false, 4)->path, "blk");
  }
  auto registry = Open();
  ASSERT_NE(registry, nullptr);
  auto retry = registry->GetVariable(session, Decl("w", 6, 2), shards_, 3);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->def.SerializeAsString(), w);
  EXPECT_EQ(registry->OpenScope(session, "", "", "blk", false, false, 4)->path, "blk");
  // Compaction keeps the answers too.
  ASSERT_TRUE(registry->Compact().ok());
  registry.reset();
  registry = Open();
  EXPECT_EQ(registry->OpenScope(session, "", "", "blk", false, false, 4)->path, "blk");
  EXPECT_EQ(registry->OpenScope(session, "", "", "blk", false, false, 5)->path, "blk_1");
}

TEST_F(RegistryLogTest, TornTailIsDroppedAndTruncated) {
  uint64_t session;
  {
    auto registry = Open();
    session = *registry->OpenSession("t");
    ASSERT_TRUE(registry->GetVariable(session, Decl("kept", 3), shards_).ok());
  }
  const std::string intact = ReadAll(log_path());
  {
    auto registry = Open();
    ASSERT_TRUE(registry->GetVariable(session, Decl("torn", 3), shards_).ok());
  }
  // Cut the last record short, as a crash during its write would.
  const std::string full = ReadAll(log_path());
  ASSERT_GT(full.size(), intact.size() + 10);
  WriteAll(log_path(), full.substr(0, full.size() - 5));
  {
    auto registry = Open();
    ASSERT_NE(registry, nullptr);
    EXPECT_TRUE(registry->Lookup("kept").ok());
    EXPECT_EQ(registry->Lookup("torn").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(ReadAll(log_path()), intact);  // truncated at the frame boundary
    ASSERT_TRUE(registry->GetVariable(session, Decl("after", 3), shards_).ok());
  }
  // A last frame with a bad checksum is torn too; so is a short header.
  std::string bad = ReadAll(log_path());
  bad.back() ^= 0x5a;
  WriteAll(log_path(), bad + "\x07\x00");
  auto registry = Open();
  ASSERT_NE(registry, nullptr);
  EXPECT_TRUE(registry->Lookup("kept").ok());
  EXPECT_FALSE(registry->Lookup("after").ok());
}

TEST_F(RegistryLogTest, CorruptMiddleRecordIsDataLoss) {
  {
    auto registry = Open();
    uint64_t session = *registry->OpenSession("t");
    ASSERT_TRUE(registry->GetVariable(session, Decl("a", 3), shards_).ok());
    ASSERT_TRUE(registry->GetVariable(session, Decl("b", 3), shards_).ok());
  }
  std::string data = ReadAll(log_path());
  // The first record starts after the 8-byte magic; flip a payload byte.
  data[8 + 8 + 2] ^= 0x01;
  WriteAll(log_path(), data);
  RegistryOptions options;
  options.state_dir = dir_;
  auto r = Registry::Open(options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr(log_path()));
  EXPECT_THAT(r.status().message(), HasSubstr("offset 8"));
}

// A record with good checksums that no coordinator writes (here a part of
// impossible shape on a negative shard id, as another program or an edit
// could leave): DATA_LOSS naming the record and the variable, not a
// registry built on it.
TEST_F(RegistryLogTest, AWellFramedImpossibleRecordIsDataLoss) {
  uint64_t seq = 0;
  {
    auto registry = Open();
    uint64_t session = *registry->OpenSession("t");
    ASSERT_TRUE(registry->GetVariable(session, Decl("a", 3, 2), shards_).ok());
  }
  {
    RegistryLog::Recovered recovered;
    auto log = RegistryLog::Open(dir_, &recovered);
    ASSERT_TRUE(log.ok()) << log.status();
    RegistryRecord record;
    for (const RegistryRecord& r : recovered.records) {
      if (r.has_declared()) record = r;
      seq = std::max(seq, r.seq());
    }
    ASSERT_TRUE(record.has_declared());
    record.set_seq(++seq);
    VariableDef* def = record.mutable_declared()->mutable_created(0);
    def->set_name("b");
    for (VariablePart& part : *def->mutable_parts()) {
      part.set_name(absl::StrCat("b/", part.name().substr(2)));
      part.mutable_shape()->set_dims(0, int64_t{1} << 40);
      part.set_shard_id(-7);
    }
    ASSERT_TRUE((*log)->Append(record, /*sync=*/true).ok());
  }
  RegistryOptions options;
  options.state_dir = dir_;
  auto r = Registry::Open(options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("registry.log record ", seq)));
  EXPECT_THAT(r.status().message(), HasSubstr("variable b: "));
}

TEST_F(RegistryLogTest, ForeignFileIsDataLoss) {
  std::filesystem::create_directories(dir_);
  WriteAll(log_path(), "not a registry log at all");
  RegistryOptions options;
  options.state_dir = dir_;
  EXPECT_EQ(Registry::Open(options).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(RegistryLogTest, CompactionKeepsTheStateAndShrinksTheLog) {
  uint64_t session;
  {
    auto registry = Open(/*compact_bytes=*/2048);
    session = *registry->OpenSession("t");
    for (int i = 0; i < 60; ++i) {
      ASSERT_TRUE(
          registry->GetVariable(session, Decl("v" + std::to_string(i), i + 1), shards_).ok());
    }
  }
  EXPECT_TRUE(std::filesystem::exists(RegistryLog::SnapshotPath(dir_)));
  EXPECT_LT(std::filesystem::file_size(log_path()), 4096u);
  auto registry = Open(2048);
  EXPECT_EQ(registry->num_variables(), 60u);
  EXPECT_EQ(registry->GetVariable(session, Decl("v7", 8), shards_).status().code(),
            absl::StatusCode::kAlreadyExists);
  auto list = registry->List("");
  ASSERT_EQ(list.size(), 60u);
  EXPECT_EQ(list.front().name(), "v0");
  EXPECT_EQ(list.back().name(), "v59");
}

TEST_F(RegistryLogTest, CrashBetweenSnapshotAndLogResetReplaysNothingTwice) {
  uint64_t session;
  std::string old_log;
  {
    auto registry = Open();
    session = *registry->OpenSession("t");
    ASSERT_TRUE(registry->OpenScope(session, "", "", "blk", false, false).ok());
    ASSERT_TRUE(registry->GetVariable(session, Decl("x", 2), shards_).ok());
    old_log = ReadAll(log_path());
    ASSERT_TRUE(registry->Compact().ok());
  }
  // The snapshot was published but the old log survived the crash.
  WriteAll(log_path(), old_log);
  auto registry = Open();
  ASSERT_NE(registry, nullptr);
  EXPECT_EQ(registry->num_variables(), 1u);
  // The scope counter was applied once, not twice: "blk_1" next, then the
  // registry keeps appending after the old records.
  EXPECT_EQ(registry->OpenScope(session, "", "", "blk", false, false)->path, "blk_1");
  ASSERT_TRUE(registry->GetVariable(session, Decl("y", 2), shards_).ok());
  registry.reset();
  registry = Open();
  EXPECT_EQ(registry->num_variables(), 2u);
  EXPECT_EQ(registry->OpenScope(session, "", "", "blk", false, false)->path, "blk_2");
}

// The registry's state is serialized with its size checked: a record over
// the limit fails its mutation (nothing applied, nothing written), and a
// snapshot over it is not published (the old snapshot and the whole log
// stay), where unchecked serialization would publish an empty state and
// truncate the log. Here with a small limit in place of protobuf's 2 GiB.
TEST_F(RegistryLogTest, StateOverTheSizeLimitFailsLoudlyAndLosesNothing) {
  RegistryOptions options;
  options.state_dir = dir_;
  options.compact_log_bytes = 1;  // compact after every append
  options.max_state_bytes = 2048;
  uint64_t session;
  int declared = 0;
  {
    auto registry = std::move(Registry::Open(options)).value();
    session = *registry->OpenSession("t");
    // Each record fits; together they outgrow the snapshot limit.
    for (; declared < 40; ++declared) {
      ASSERT_TRUE(
          registry->GetVariable(session, Decl("v" + std::to_string(declared), 2), shards_).ok());
    }
    EXPECT_EQ(registry->compaction_status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(registry->Compact().code(), absl::StatusCode::kResourceExhausted);
    // One record over the limit: refused, and not applied.
    VariableDeclaration big = Decl("big", 2);
    big.set_declared_at(std::string(4096, 'x'));
    auto r = registry->GetVariable(session, big, shards_);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(r.status().message(), HasSubstr("over the limit of 2048 bytes"));
    EXPECT_FALSE(registry->Lookup("big").ok());
  }
  // Everything acknowledged is still there after a restart.
  options.max_state_bytes = RegistryLog::kMaxStateBytes;
  auto registry = std::move(Registry::Open(options)).value();
  EXPECT_EQ(registry->num_variables(), static_cast<size_t>(declared));
  EXPECT_TRUE(registry->HasSession(session));
  EXPECT_FALSE(registry->Lookup("big").ok());
  // Under the default limit it compacts again, keeping everything.
  ASSERT_TRUE(registry->Compact().ok());
  registry.reset();
  registry = std::move(Registry::Open(options)).value();
  EXPECT_EQ(registry->num_variables(), static_cast<size_t>(declared));
}

TEST_F(RegistryLogTest, SnapshotOverTheLimitIsNotPublished) {
  RegistryLog::Recovered recovered;
  auto log = RegistryLog::Open(dir_, &recovered, /*max_state_bytes=*/64);
  ASSERT_TRUE(log.ok()) << log.status();
  RegistrySnapshot small;
  small.set_last_seq(1);
  ASSERT_TRUE((*log)->Compact(small).ok());
  const std::string published = ReadAll(RegistryLog::SnapshotPath(dir_));
  RegistrySnapshot big;
  big.set_last_seq(2);
  big.add_variables()->set_name(std::string(100, 'v'));
  absl::Status s = (*log)->Compact(big);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("registry snapshot"));
  EXPECT_EQ(ReadAll(RegistryLog::SnapshotPath(dir_)), published);
  RegistryRecord record;
  record.set_seq(3);
  record.set_deleted(std::string(100, 'v'));
  EXPECT_EQ((*log)->Append(record, /*sync=*/true).code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace psd
