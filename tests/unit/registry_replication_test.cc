// Registry: replicated variables (docs/replication.md). The replication
// factor resolved at declaration (the cluster's, a declared one, a slot's
// primary's; refused outside 1..3, past the live shards, and while the
// cluster does not offer replication), and the replica records: backups
// added, in sync, dropped, failovers; their checks, their durability and
// what a restart accepts.
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "coordinator/registry.h"
#include "coordinator/registry_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

VariableDeclaration Decl(const std::string& name, int32_t replication = 0, int parts = 1) {
  VariableDeclaration d;
  d.set_name(name);
  d.set_dtype(DT_FLOAT);
  d.mutable_shape()->add_dims(8);
  d.mutable_shape()->add_dims(4);
  d.set_replication(replication);
  if (parts > 1) d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(parts);
  d.set_declared_at("model.py:1");
  return d;
}

VariableDeclaration Slot(const std::string& name, const std::string& primary, int parts = 1,
                         int32_t replication = 0) {
  VariableDeclaration d = Decl(name, replication, parts);
  d.set_colocate_with(primary);
  return d;
}

ReplicaRecord Backup(int32_t shard, uint64_t move_id) {
  ReplicaRecord b;
  b.set_shard_id(shard);
  b.set_move_id(move_id);
  return b;
}

class RegistryReplicationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/registry_replication_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    Reopen(2);
  }
  void TearDown() override {
    registry_.reset();
    std::filesystem::remove_all(dir_);
  }
  RegistryOptions Options(int32_t replication) const {
    RegistryOptions options;
    options.state_dir = dir_;
    options.replication = replication;
    return options;
  }
  void Reopen(int32_t replication) {
    registry_.reset();
    auto r = Registry::Open(Options(replication));
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(r).value();
    session_ = *registry_->OpenSession("test");
  }
  absl::StatusOr<DeclareResult> Get(const VariableDeclaration& d, uint64_t session = 0) {
    return registry_->GetVariable(session ? session : session_, d, shards_);
  }
  const VariablePart& Part(const std::string& variable, int k = 0) {
    def_ = *registry_->Lookup(variable);
    return def_.parts(k);
  }

  std::string dir_;
  std::unique_ptr<Registry> registry_;
  uint64_t session_ = 0;
  std::vector<int32_t> shards_ = {0, 1, 2};
  VariableDef def_;
};

// A declaration that names no factor gets the cluster's; one that names
// its own keeps it; a slot takes its primary's, whatever the cluster says.
TEST_F(RegistryReplicationTest, TheFactorIsResolvedAtDeclaration) {
  auto w = Get(Decl("w"));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->def.replication(), 2);
  auto x = Get(Decl("x", 3));
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_EQ(x->def.replication(), 3);
  auto one = Get(Decl("one", 1));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->def.replication(), 1);
  auto slot = Get(Slot("x/Adam", "x"));
  ASSERT_TRUE(slot.ok()) << slot.status();
  EXPECT_EQ(slot->def.replication(), 3);
  // A slot naming another factor than its primary's is refused.
  auto odd = Get(Slot("x/Momentum", "x", 1, 2));
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(odd.status().message(), HasSubstr("x/Momentum declares replication 2"));
  EXPECT_THAT(odd.status().message(), HasSubstr("replication is 3"));
  // Kept across a restart.
  Reopen(1);
  EXPECT_EQ(registry_->Lookup("x")->replication(), 3);
  EXPECT_EQ(registry_->Lookup("w")->replication(), 2);
  EXPECT_EQ(registry_->Lookup("x/Adam")->replication(), 3);
}

TEST_F(RegistryReplicationTest, AFactorOutside1To3OrPastTheShardsIsRefusedNamingIt) {
  auto four = Get(Decl("four", 4));
  EXPECT_EQ(four.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(four.status().message(), HasSubstr("variable four: replication 4 is outside 1..3"));
  auto negative = Get(Decl("negative", -1));
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(negative.status().message(), HasSubstr("replication -1"));
  shards_ = {0, 1};
  auto three = Get(Decl("three", 3));
  EXPECT_EQ(three.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(three.status().message(), HasSubstr("three asks for replication 3"));
  EXPECT_THAT(three.status().message(), HasSubstr("only 2 live, undrained shards"));
  EXPECT_FALSE(registry_->Lookup("three").ok());
  EXPECT_TRUE(Get(Decl("two", 2)).ok());
}

// An attach or reuse naming another factor is a conflict, as another shape
// would be; naming none (0) or the same attaches.
TEST_F(RegistryReplicationTest, AnAttachWithAnotherFactorConflicts) {
  ASSERT_TRUE(Get(Decl("w", 3)).ok());
  const uint64_t other = *registry_->OpenSession("other");
  auto conflict = Get(Decl("w", 2), other);
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(conflict.status().message(),
              HasSubstr("Conflicting declarations of variable w: session"));
  EXPECT_THAT(conflict.status().message(), HasSubstr("declares replication 2"));
  EXPECT_THAT(conflict.status().message(), HasSubstr("declared it with replication 3"));
  EXPECT_TRUE(Get(Decl("w", 0), other).ok());
  VariableDeclaration reuse = Decl("w", 1);
  reuse.set_reuse(REUSE_TRUE);
  auto reused = Get(reuse);
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reused.status().message(),
              HasSubstr("specified replication 1 and found replication 3"));
  reuse.set_replication(3);
  EXPECT_TRUE(Get(reuse).ok());
}

// The cluster's factor is what a declaration without one gets; 1 (declared
// or the cluster's) is a plain variable.
TEST(RegistryReplicationDefaultTest, TheClustersFactorIsTheDefault) {
  RegistryOptions options;
  options.replication = 2;
  auto registry = std::move(Registry::Open(options)).value();
  const uint64_t session = *registry->OpenSession("test");
  const std::vector<int32_t> shards = {0, 1, 2};
  auto replicated = registry->GetVariable(session, Decl("w"), shards);
  ASSERT_TRUE(replicated.ok()) << replicated.status();
  EXPECT_EQ(replicated->def.replication(), 2);
  auto plain = registry->GetVariable(session, Decl("v", 1), shards);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->def.replication(), 1);
}

// Backups are recorded for every part of a group, join the in-sync set,
// are dropped, and a failover moves the group to its in-sync backup under
// the next epoch; all of it survives a restart (log and snapshot).
TEST_F(RegistryReplicationTest, ReplicaRecordsChangeEveryPartOfTheGroupDurably) {
  ASSERT_TRUE(Get(Decl("w", 3, 2)).ok());
  ASSERT_TRUE(Get(Slot("w/Adam", "w", 2)).ok());
  std::vector<ReplicaGroup> groups = registry_->ReplicaGroups();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_THAT(groups[0].parts, ElementsAre("w/part_0", "w/Adam/part_0"));
  EXPECT_EQ(groups[0].replication, 3);
  const int32_t primary = groups[0].primary;
  const int32_t b1 = (primary + 1) % 3;
  const int32_t b2 = (primary + 2) % 3;
  const std::vector<std::string> group = groups[0].parts;

  ASSERT_TRUE(registry_->AddReplica(group, Backup(b1, 11)).ok());
  ASSERT_TRUE(registry_->AddReplica(group, Backup(b2, 12)).ok());
  // A third backup, one on the primary, one on a shard holding one, a
  // reused move id: refused, nothing recorded.
  EXPECT_EQ(registry_->AddReplica(group, Backup(7, 13)).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(registry_->DropReplica(12).ok());
  EXPECT_THAT(registry_->AddReplica(group, Backup(primary, 13)).message(),
              HasSubstr("is the primary of w/part_0"));
  EXPECT_THAT(registry_->AddReplica(group, Backup(b1, 13)).message(),
              HasSubstr("holds a backup of w/part_0 already"));
  EXPECT_THAT(registry_->AddReplica(group, Backup(b2, 11)).message(),
              HasSubstr("keeps a backup of w/part_0 already"));
  ASSERT_TRUE(registry_->SetReplicaInSync(11, true).ok());
  EXPECT_EQ(registry_->SetReplicaInSync(99, true).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(registry_->AddReplica(group, Backup(b2, 12)).ok());
  for (const std::string& name : {"w", "w/Adam"}) {
    const VariablePart& p = Part(name, 0);
    ASSERT_EQ(p.backups_size(), 2) << name;
    EXPECT_EQ(p.backups(0).shard_id(), b1);
    EXPECT_TRUE(p.backups(0).in_sync());
    EXPECT_EQ(p.backups(1).shard_id(), b2);
    EXPECT_FALSE(p.backups(1).in_sync());
    EXPECT_EQ(Part(name, 1).backups_size(), 0) << "another group";
  }
  EXPECT_THAT(registry_->BackupPartsOnShard(b1), UnorderedElementsAre("w/Adam/part_0", "w/part_0"));

  // Kept across a restart from the log, and from a snapshot.
  Reopen(1);
  EXPECT_EQ(Part("w/Adam", 0).backups_size(), 2);
  ASSERT_TRUE(registry_->Compact().ok());
  Reopen(1);
  EXPECT_TRUE(Part("w", 0).backups(0).in_sync());

  // Only an in-sync backup is promoted, and only to the next epoch.
  EXPECT_THAT(registry_->FailOver(group, b2, 12, 1).message(), HasSubstr("no in-sync backup"));
  EXPECT_THAT(registry_->FailOver(group, b1, 11, 2).message(), HasSubstr("its epoch is 0"));
  ASSERT_TRUE(registry_->FailOver(group, b1, 11, 1).ok());
  for (const std::string& name : {"w", "w/Adam"}) {
    const VariablePart& p = Part(name, 0);
    EXPECT_EQ(p.shard_id(), b1) << name;
    EXPECT_EQ(p.epoch(), 1u);
    EXPECT_EQ(p.backups_size(), 0) << "the other backups are dropped";
  }
  EXPECT_EQ(registry_->Placement()[b1].parts, 2 + (Part("w", 1).shard_id() == b1 ? 2 : 0));
  Reopen(1);
  EXPECT_EQ(Part("w/Adam", 0).shard_id(), b1);
  EXPECT_EQ(Part("w/Adam", 0).epoch(), 1u);
  groups = registry_->ReplicaGroups();
  EXPECT_EQ(groups[0].primary, b1);
  EXPECT_EQ(groups[0].epoch, 1u);
}

// A backup reported behind (ReplicaBehind) is heard only from its group's
// primary: it leaves the in-sync set durably, or, not in it yet, can never
// join; a move the registry no longer has is judged by the group it
// belonged to, so a primary deposed by a failover is refused (it must not
// answer a write without the promoted backup).
TEST_F(RegistryReplicationTest, ABackupReportedBehindIsJudgedByItsGroupsPrimary) {
  ASSERT_TRUE(Get(Decl("w", 3)).ok());
  ASSERT_TRUE(Get(Decl("v", 2)).ok());
  const std::vector<std::string> group = {"w"};
  const int32_t primary = Part("w").shard_id();
  const int32_t b1 = (primary + 1) % 3;
  const int32_t b2 = (primary + 2) % 3;
  ASSERT_TRUE(registry_->AddReplica(group, Backup(b1, 11)).ok());
  ASSERT_TRUE(registry_->AddReplica(group, Backup(b2, 12)).ok());
  ASSERT_TRUE(registry_->SetReplicaInSync(11, true).ok());

  // Not the primary: refused, naming the shard and the move.
  absl::Status refused = registry_->ReportReplicaBehind(b2, 11);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr(absl::StrCat("shard ", b2, " is not the primary of w")));
  EXPECT_THAT(refused.message(), HasSubstr("whose backup b "));  // move 0xb
  EXPECT_TRUE(Part("w").backups(0).in_sync());
  // The primary: out of the in-sync set, durably.
  ASSERT_TRUE(registry_->ReportReplicaBehind(primary, 11).ok());
  Reopen(1);
  EXPECT_FALSE(Part("w").backups(0).in_sync());
  // Not in sync yet when reported: it never joins.
  ASSERT_TRUE(registry_->ReportReplicaBehind(primary, 12).ok());
  EXPECT_THAT(registry_->SetReplicaInSync(12, true).message(), HasSubstr("reported behind"));
  EXPECT_FALSE(Part("w").backups(1).in_sync());

  // Dropped: its primary has nothing to wait for.
  ASSERT_TRUE(registry_->DropReplica(11).ok());
  EXPECT_TRUE(registry_->ReportReplicaBehind(primary, 11).ok());
  // A new in-sync backup, then a failover to it: the deposed primary is
  // refused for every backup the group had.
  ASSERT_TRUE(registry_->DropReplica(12).ok());
  ASSERT_TRUE(registry_->AddReplica(group, Backup(b1, 13)).ok());
  ASSERT_TRUE(registry_->SetReplicaInSync(13, true).ok());
  ASSERT_TRUE(registry_->FailOver(group, b1, 13, 1).ok());
  for (uint64_t move : {11, 12, 13}) {
    absl::Status s = registry_->ReportReplicaBehind(primary, move);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << move;
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("shard ", primary,
                                                    " is no longer the primary of w")));
  }
  // A move never heard of: OK only from a primary of some replicated part.
  const int32_t v_primary = Part("v").shard_id();
  EXPECT_TRUE(registry_->ReportReplicaBehind(b1, 99).ok());
  for (int32_t shard : {0, 1, 2}) {
    if (shard == b1 || shard == v_primary) continue;
    EXPECT_EQ(registry_->ReportReplicaBehind(shard, 99).code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

// A part in an unfinished move gets no backup (the move would leave it
// following the old owner), and a part with backups is not moved.
TEST_F(RegistryReplicationTest, AMovingPartGetsNoBackup) {
  ASSERT_TRUE(Get(Decl("w", 2)).ok());
  const int32_t primary = Part("w").shard_id();
  PartMoveRecord move;
  move.set_move_id(5);
  move.add_parts("w");
  move.set_source_shard(primary);
  move.set_target_shard((primary + 1) % 3);
  ASSERT_TRUE(registry_->BeginMove(move).ok());
  EXPECT_THAT(registry_->AddReplica({"w"}, Backup((primary + 2) % 3, 6)).message(),
              HasSubstr("is moving"));
  ASSERT_TRUE(registry_->FinishMove(5).ok());
  EXPECT_TRUE(registry_->AddReplica({"w"}, Backup((primary + 2) % 3, 6)).ok());
  // Nor is a part with backups moved: they follow the source's log.
  move.set_move_id(7);
  EXPECT_THAT(registry_->BeginMove(move).message(), HasSubstr("has 1 backups: drop them"));
  ASSERT_TRUE(registry_->DropReplica(6).ok());
  EXPECT_TRUE(registry_->BeginMove(move).ok());
}

// What a restart recovers is checked: two backups on one shard, a backup
// on the primary's shard, more backups than the factor allows are
// DATA_LOSS naming the part; shards not registered yet are fine.
TEST_F(RegistryReplicationTest, ARestartRefusesImpossibleReplicaSetsNamingThePart) {
  ASSERT_TRUE(Get(Decl("w", 2)).ok());
  ASSERT_TRUE(Get(Decl("v", 1)).ok());
  const int32_t primary = Part("w").shard_id();
  ASSERT_TRUE(registry_->AddReplica({"w"}, Backup(40, 21)).ok());  // no such shard yet
  Reopen(1);
  EXPECT_EQ(Part("w").backups(0).shard_id(), 40);
  registry_.reset();

  struct Case {
    const char* what;
    RegistryRecord record;
    const char* message;
  };
  std::vector<Case> cases;
  {
    RegistryRecord r;
    r.mutable_replica_added()->add_parts("w");
    *r.mutable_replica_added()->mutable_backup() = Backup(primary, 22);
    cases.push_back({"on the primary", r, "part w: a backup on shard"});
  }
  {
    RegistryRecord r;
    r.mutable_replica_added()->add_parts("w");
    *r.mutable_replica_added()->mutable_backup() = Backup(41, 23);
    cases.push_back({"past the factor", r, "part w: 2 backups with replication 2"});
  }
  {
    RegistryRecord r;
    r.mutable_replica_added()->add_parts("v");
    *r.mutable_replica_added()->mutable_backup() = Backup(41, 24);
    cases.push_back({"of an unreplicated variable", r, "part v: 1 backups with replication 1"});
  }
  const std::string log = RegistryLog::LogPath(dir_);
  const std::string kept = dir_ + "/kept.log";
  std::filesystem::copy_file(log, kept);
  for (Case& c : cases) {
    std::filesystem::copy_file(kept, log, std::filesystem::copy_options::overwrite_existing);
    {
      RegistryLog::Recovered recovered;
      auto opened = RegistryLog::Open(dir_, &recovered);
      ASSERT_TRUE(opened.ok()) << opened.status();
      c.record.set_seq(recovered.records.empty() ? recovered.snapshot.last_seq() + 1
                                                 : recovered.records.back().seq() + 1);
      ASSERT_TRUE((*opened)->Append(c.record, /*sync=*/true).ok());
    }
    auto reopened = Registry::Open(Options(1));
    EXPECT_EQ(reopened.status().code(), absl::StatusCode::kDataLoss) << c.what;
    EXPECT_THAT(reopened.status().message(), HasSubstr(c.message)) << c.what;
  }
  std::filesystem::copy_file(kept, log, std::filesystem::copy_options::overwrite_existing);
  EXPECT_TRUE(Registry::Open(Options(1)).ok());
}

}  // namespace
}  // namespace psd
