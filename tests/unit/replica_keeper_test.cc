// The coordinator's side of replicated parts (docs/replication.md) against
// fake shards: each serves the few Shard calls declarations make and the
// ShardMove calls the replica keeper makes, records them in order and
// answers as a shard that keeps up would. Checks what the coordinator asks
// of the shards and what its registry records, in which order: parts
// created replicated, a backup made (replica_added, follow, SyncReplica,
// in sync), a backup reported behind dropped and made again, a lost
// primary failed over only once its lease expired (PromoteReplica under
// the next epoch, the old process told to drop its parts), and the
// handles, listings and metrics that show it.
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/coordinator_service.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "in_process_shard.h"

namespace psd {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Plain (non-follow) moves whose source froze the group: their target
// reports them ready (the fakes of one test share it).
absl::Mutex g_moves_mu;
std::set<uint64_t>* g_frozen = new std::set<uint64_t>;

// A shard as the coordinator sees it: creates and lists parts (all
// initialized), and follows, syncs, promotes and ends moves by recording
// them. A follow reports itself forwarding and caught up at once.
class FakeShard {
 public:
  FakeShard(int id, uint64_t incarnation)
      : id_(id), incarnation_(incarnation), data_(this), move_(this) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&data_);
    b.RegisterService(&move_);
    server_ = b.BuildAndStart();
  }
  ~FakeShard() { server_->Shutdown(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int id() const { return id_; }
  uint64_t incarnation() const { return incarnation_; }

  std::vector<std::string> Calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  std::vector<CreateVariableRequest> Created() {
    absl::MutexLock lock(&mu_);
    return created_;
  }
  std::vector<std::string> Held() {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> out;
    for (const auto& c : created_) out.push_back(c.name());
    return out;
  }
  void FailFollows(bool fail) {
    absl::MutexLock lock(&mu_);
    fail_follows_ = fail;
  }
  // While held, a follow reports nothing applied (still catching up).
  void HoldCatchUp(bool hold) {
    absl::MutexLock lock(&mu_);
    hold_catch_up_ = hold;
  }
  // PromoteReplica answers DEADLINE_EXCEEDED while set (a call that timed out).
  void FailPromotes(bool fail) {
    absl::MutexLock lock(&mu_);
    fail_promotes_ = fail;
  }
  // Runs (once) at the next MoveStatus call for which `when` holds, before
  // it is answered.
  void OnMoveStatus(std::function<bool()> when, std::function<void()> hook) {
    absl::MutexLock lock(&mu_);
    status_when_ = std::move(when);
    status_hook_ = std::move(hook);
  }

 private:
  class Data final : public Shard::Service {
   public:
    explicit Data(FakeShard* s) : s_(s) {}
    grpc::Status CreateVariable(grpc::ServerContext*, const CreateVariableRequest* req,
                                CreateVariableResponse*) override {
      absl::MutexLock lock(&s_->mu_);
      s_->created_.push_back(*req);
      return grpc::Status::OK;
    }
    grpc::Status DeleteVariable(grpc::ServerContext*, const DeleteVariableRequest*,
                                DeleteVariableResponse*) override {
      return grpc::Status::OK;
    }
    grpc::Status GetShardInfo(grpc::ServerContext*, const GetShardInfoRequest*,
                              GetShardInfoResponse* resp) override {
      resp->set_shard_id(s_->id_);
      resp->set_incarnation(s_->incarnation_);
      return grpc::Status::OK;
    }
    grpc::Status ListVariables(grpc::ServerContext*, const ListVariablesRequest*,
                               ListVariablesResponse* resp) override {
      absl::MutexLock lock(&s_->mu_);
      for (const auto& c : s_->created_) {
        VariableInfo* info = resp->add_variables();
        info->set_name(c.name());
        info->set_initialized(true);
        info->set_replicated(c.replicated());
      }
      return grpc::Status::OK;
    }

   private:
    FakeShard* const s_;
  };
  class Move final : public ShardMove::Service {
   public:
    explicit Move(FakeShard* s) : s_(s) {}
    grpc::Status StartMoveIn(grpc::ServerContext*, const StartMoveInRequest* req,
                             StartMoveInResponse*) override {
      absl::MutexLock lock(&s_->mu_);
      std::vector<std::string> parts;
      s_->moves_in_.insert(req->move_id());
      for (const auto& p : req->parts()) {
        parts.push_back(p.name() + (p.replicated() ? "(r)" : ""));
        s_->created_.push_back(p);  // a follower holds the group (and serves it once promoted)
      }
      s_->calls_.push_back(absl::StrCat("StartMoveIn ", absl::Hex(req->move_id()), " follow=",
                                        req->follow(), " epoch=", req->epoch(), " from ",
                                        req->source_shard_id(), " ", absl::StrJoin(parts, ",")));
      return grpc::Status::OK;
    }
    grpc::Status MoveStatus(grpc::ServerContext*, const MoveStatusRequest* req,
                            MoveStatusResponse* resp) override {
      std::function<void()> hook;
      {
        absl::MutexLock lock(&s_->mu_);
        if (s_->status_hook_ && s_->status_when_()) hook = std::exchange(s_->status_hook_, nullptr);
      }
      if (hook) hook();
      {
        absl::MutexLock moves(&g_moves_mu);
        if (g_frozen->count(req->move_id()) > 0) {
          resp->set_phase(MOVE_READY);
          return grpc::Status::OK;
        }
      }
      absl::MutexLock lock(&s_->mu_);
      if (s_->moves_in_.count(req->move_id()) == 0) {
        resp->set_phase(MOVE_FAILED);  // as a shard answers a move it never heard of
        resp->set_code(static_cast<int>(absl::StatusCode::kNotFound));
        resp->set_message("not known on this shard (it restarted?)");
        return grpc::Status::OK;
      }
      if (s_->fail_follows_) {
        resp->set_phase(MOVE_FAILED);
        resp->set_code(static_cast<int>(absl::StatusCode::kUnavailable));
        resp->set_message("the source stopped answering");
        return grpc::Status::OK;
      }
      resp->set_phase(MOVE_FORWARDING);
      resp->set_logged_seq(7);
      resp->set_applied_seq(s_->hold_catch_up_ ? 0 : 7);
      return grpc::Status::OK;
    }
    grpc::Status FreezeMove(grpc::ServerContext*, const FreezeMoveRequest* req,
                            FreezeMoveResponse*) override {
      absl::ReleasableMutexLock moves(&g_moves_mu);
      g_frozen->insert(req->move_id());
      moves.Release();
      absl::MutexLock lock(&s_->mu_);
      s_->calls_.push_back(absl::StrCat("FreezeMove ", absl::Hex(req->move_id())));
      return grpc::Status::OK;
    }
    grpc::Status SyncReplica(grpc::ServerContext*, const SyncReplicaRequest* req,
                             SyncReplicaResponse* resp) override {
      absl::MutexLock lock(&s_->mu_);
      s_->calls_.push_back(
          absl::StrCat("SyncReplica ", absl::Hex(req->move_id()), " in_sync=", req->in_sync()));
      resp->set_logged_seq(7);
      return grpc::Status::OK;
    }
    grpc::Status PromoteReplica(grpc::ServerContext*, const PromoteReplicaRequest* req,
                                PromoteReplicaResponse* resp) override {
      absl::MutexLock lock(&s_->mu_);
      s_->calls_.push_back(absl::StrCat("PromoteReplica ", absl::Hex(req->move_id()),
                                        " epoch=", req->epoch(),
                                        s_->fail_promotes_ ? " (refused)" : ""));
      if (s_->fail_promotes_) return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "timed out");
      resp->set_applied_seq(7);
      return grpc::Status::OK;
    }
    grpc::Status EndMove(grpc::ServerContext*, const EndMoveRequest* req,
                         EndMoveResponse*) override {
      absl::MutexLock lock(&s_->mu_);
      s_->calls_.push_back(
          absl::StrCat("EndMove ", absl::Hex(req->move_id()), " committed=", req->committed()));
      return grpc::Status::OK;
    }

   private:
    FakeShard* const s_;
  };

  const int id_;
  const uint64_t incarnation_;
  int port_ = 0;
  absl::Mutex mu_;
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<CreateVariableRequest> created_ ABSL_GUARDED_BY(mu_);
  bool fail_follows_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_catch_up_ ABSL_GUARDED_BY(mu_) = false;
  bool fail_promotes_ ABSL_GUARDED_BY(mu_) = false;
  std::function<bool()> status_when_ ABSL_GUARDED_BY(mu_);
  std::function<void()> status_hook_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> moves_in_ ABSL_GUARDED_BY(mu_);
  Data data_;
  Move move_;
  std::unique_ptr<grpc::Server> server_;
};

std::string Hex(uint64_t v) { return absl::StrCat(absl::Hex(v)); }

class ReplicaKeeperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RegistryOptions ro;
    ro.replication = 2;
    registry_ = std::move(Registry::Open(ro)).value();
    CoordinatorServiceOptions options;
    options.replica_keeper_interval = keeper_interval_;  // zero: the test drives it
    options.heartbeat_interval = absl::Milliseconds(100);
    options.liveness_timeout = liveness_timeout_;
    options.lease_period = lease_period_;
    options.shard_rpc_timeout = absl::Seconds(10);
    service_ = std::make_unique<CoordinatorService>(registry_.get(), options);
    server_ = ServeInProcess(service_.get(), &stub_);
    for (int i = 0; i < num_shards_; ++i) {
      shards_.push_back(std::make_unique<FakeShard>(i, 100 + i));
      ASSERT_TRUE(Register(*shards_[i]).ok());
    }
    grpc::ClientContext ctx;
    OpenSessionRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    OpenSessionResponse resp;
    ASSERT_TRUE(stub_->OpenSession(&ctx, req, &resp).ok());
    session_ = resp.session_id();
  }
  void TearDown() override {
    server_->Shutdown();
    service_.reset();
  }

  grpc::Status Register(const FakeShard& s, RegisterShardResponse* out = nullptr,
                        std::vector<std::string> held = {}) {
    grpc::ClientContext ctx;
    RegisterShardRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    req.set_shard_id(s.id());
    req.set_address(s.address());
    req.set_incarnation(s.incarnation());
    req.set_device("cpu");
    for (const auto& h : held) req.add_variables(h);
    RegisterShardResponse resp;
    grpc::Status status = stub_->RegisterShard(&ctx, req, &resp);
    if (out != nullptr) *out = resp;
    return status;
  }
  HeartbeatResponse Heartbeat(const FakeShard& s) {
    grpc::ClientContext ctx;
    HeartbeatRequest req;
    req.set_shard_id(s.id());
    req.set_incarnation(s.incarnation());
    HeartbeatResponse resp;
    EXPECT_TRUE(stub_->Heartbeat(&ctx, req, &resp).ok());
    return resp;
  }
  absl::StatusOr<VariableHandle> Declare(const std::string& name, int32_t replication = 0) {
    VariableDeclaration d;
    d.set_name(name);
    d.set_dtype(DT_FLOAT);
    d.mutable_shape()->add_dims(4);
    d.set_replication(replication);
    d.mutable_initializer()->mutable_zeros();
    grpc::ClientContext ctx;
    GetVariableRequest req;
    req.set_session_id(session_);
    *req.mutable_declaration() = d;
    GetVariableResponse resp;
    grpc::Status s = stub_->GetVariable(&ctx, req, &resp);
    if (!s.ok())
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return resp.handle();
  }
  VariableHandle Lookup(const std::string& name) {
    grpc::ClientContext ctx;
    LookupVariableRequest req;
    req.set_name(name);
    LookupVariableResponse resp;
    EXPECT_TRUE(stub_->LookupVariable(&ctx, req, &resp).ok());
    return resp.handle();
  }
  // Runs keeper passes until `done` (bounded: a minute).
  template <typename Done>
  bool KeepUntil(Done done, const std::vector<FakeShard*>& beating = {}) {
    for (int i = 0; i < 6000; ++i) {
      for (FakeShard* s : beating) Heartbeat(*s);
      service_->KeepReplicas();
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }
  VariablePart PartOf(const std::string& name) { return registry_->Lookup(name)->parts(0); }
  grpc::Status ReplicaBehind(const FakeShard& s, uint64_t move_id) {
    grpc::ClientContext ctx;
    ReplicaBehindRequest req;
    req.set_shard_id(s.id());
    req.set_incarnation(s.incarnation());
    req.set_move_id(move_id);
    req.set_reason("no pull for 5 s");
    ReplicaBehindResponse resp;
    return stub_->ReplicaBehind(&ctx, req, &resp);
  }
  // A new coordinator on the same registry (no shard registered with it).
  void RestartCoordinator() {
    server_->Shutdown();
    CoordinatorServiceOptions options;
    options.replica_keeper_interval = absl::ZeroDuration();
    options.heartbeat_interval = absl::Milliseconds(100);
    options.liveness_timeout = liveness_timeout_;
    options.lease_period = lease_period_;
    options.shard_rpc_timeout = absl::Seconds(10);
    service_ = std::make_unique<CoordinatorService>(registry_.get(), options);
    server_ = ServeInProcess(service_.get(), &stub_);
  }
  bool InSync(const std::string& name) {
    const VariablePart p = PartOf(name);
    return p.backups_size() == 1 && p.backups(0).in_sync() && service_->replica_adds_running() == 0;
  }

  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Coordinator::Stub> stub_;
  std::vector<std::unique_ptr<FakeShard>> shards_;
  uint64_t session_ = 0;
  int num_shards_ = 2;
  absl::Duration keeper_interval_ = absl::ZeroDuration();
  absl::Duration liveness_timeout_ = absl::Seconds(2);
  absl::Duration lease_period_ = absl::Milliseconds(400);
};

// A shard counts as down sooner than its lease ends (liveness 300 ms,
// lease 1.5 s): the keeper sees the primary down while it may still serve.
class ReplicaKeeperLeaseTest : public ReplicaKeeperTest {
 protected:
  void SetUp() override {
    liveness_timeout_ = absl::Milliseconds(300);
    lease_period_ = absl::Milliseconds(1500);
    ReplicaKeeperTest::SetUp();
  }
};

TEST_F(ReplicaKeeperTest, PartsOfAReplicatedVariableAreCreatedReplicated) {
  ASSERT_TRUE(Declare("w").ok());
  ASSERT_TRUE(Declare("v", 1).ok());
  std::map<std::string, bool> replicated;
  for (const auto& s : shards_) {
    for (const auto& c : s->Created()) replicated[c.name()] = c.replicated();
  }
  EXPECT_TRUE(replicated.at("w"));
  EXPECT_FALSE(replicated.at("v"));
}

// The keeper makes a backup of an initialized primary: recorded first, then
// followed, then the primary waits for it, then it is in sync; handles and
// ListShards show it.
TEST_F(ReplicaKeeperTest, AnUnderReplicatedGroupGetsABackupInSync) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  const int32_t backup = 1 - primary;
  EXPECT_EQ(handle->parts(0).backup_shards_size(), 0);
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const VariablePart part = PartOf("w");
  EXPECT_EQ(part.backups(0).shard_id(), backup);
  const std::string move = Hex(part.backups(0).move_id());
  EXPECT_THAT(
      shards_[backup]->Calls(),
      ElementsAre(absl::StrCat("StartMoveIn ", move, " follow=1 epoch=0 from ", primary, " w(r)")));
  EXPECT_THAT(shards_[primary]->Calls(),
              ElementsAre(absl::StrCat("SyncReplica ", move, " in_sync=1")));
  const VariableHandle h = Lookup("w");
  EXPECT_THAT(h.parts(0).backup_shards(), ElementsAre(backup));
  EXPECT_THAT(h.parts(0).in_sync_shards(), ElementsAre(backup));
  EXPECT_EQ(h.parts(0).epoch(), 0u);
  const ListShardsResponse listed = service_->ShardStatuses();
  for (const ShardStatus& s : listed.shards()) {
    EXPECT_EQ(s.primary_groups(), s.shard_id() == primary ? 1 : 0);
    EXPECT_EQ(s.backup_groups(), s.shard_id() == backup ? 1 : 0);
  }
  EXPECT_EQ(service_->replica_stats().replicas_added, 1);
  EXPECT_EQ(service_->replica_stats().under_replicated_groups, 0);
  // A shard that held it and is asked to register again keeps it.
  RegisterShardResponse registered;
  ASSERT_TRUE(Register(*shards_[backup], &registered, {"w"}).ok());
  EXPECT_EQ(registered.drop_parts_size(), 0);
}

// A backup the primary reports behind leaves the in-sync set before the
// answer; the keeper ends it on both shards, drops it and makes another.
TEST_F(ReplicaKeeperTest, ABackupReportedBehindIsReplaced) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const uint64_t first = PartOf("w").backups(0).move_id();
  {
    grpc::ClientContext ctx;
    ReplicaBehindRequest req;
    req.set_shard_id(primary);
    req.set_incarnation(shards_[primary]->incarnation());
    req.set_move_id(first);
    req.set_reason("no pull for 5 s");
    ReplicaBehindResponse resp;
    ASSERT_TRUE(stub_->ReplicaBehind(&ctx, req, &resp).ok());
  }
  EXPECT_FALSE(PartOf("w").backups(0).in_sync()) << "recorded before the answer";
  {
    // Only the group's primary, as it is registered, is heard.
    grpc::ClientContext ctx;
    ReplicaBehindRequest req;
    req.set_shard_id(primary);
    req.set_incarnation(shards_[primary]->incarnation() + 1);
    req.set_move_id(first);
    ReplicaBehindResponse resp;
    EXPECT_EQ(stub_->ReplicaBehind(&ctx, req, &resp).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  ASSERT_TRUE(KeepUntil([&] { return InSync("w") && PartOf("w").backups(0).move_id() != first; }));
  // The primary of the group may report the dropped backup again: it has
  // nothing to wait for.
  EXPECT_TRUE(ReplicaBehind(*shards_[primary], first).ok());
  EXPECT_THAT(shards_[primary]->Calls(),
              Contains(absl::StrCat("EndMove ", Hex(first), " committed=0")));
  EXPECT_THAT(shards_[1 - primary]->Calls(),
              Contains(absl::StrCat("EndMove ", Hex(first), " committed=0")));
  EXPECT_EQ(service_->replica_stats().replicas_added, 2);
}

// A backup whose follow failed is dropped and made again.
TEST_F(ReplicaKeeperTest, AFailedFollowIsDroppedAndMadeAgain) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t backup = 1 - handle->parts(0).shard_id();
  shards_[backup]->FailFollows(true);
  ASSERT_TRUE(KeepUntil([&] {
    const std::vector<std::string> calls = shards_[backup]->Calls();
    return std::any_of(calls.begin(), calls.end(),
                       [](const std::string& c) { return absl::StartsWith(c, "EndMove"); });
  }));
  // The failed one is gone from the registry (never in sync).
  ASSERT_TRUE(KeepUntil([&] { return service_->replica_adds_running() == 0; }));
  shards_[backup]->FailFollows(false);
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
}

// A primary whose heartbeats stop is failed over to its in-sync backup
// only once its lease has certainly expired: the failover is recorded
// (new primary, next epoch), the backup promoted; the old process gets no
// lease from its heartbeats, and when it registers again it is told to
// drop the part, and then holds the new backup.
TEST_F(ReplicaKeeperTest, ALostPrimaryFailsOverToItsInSyncBackup) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  const int32_t backup = 1 - primary;
  FakeShard& old = *shards_[primary];
  FakeShard& next = *shards_[backup];
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const uint64_t move = PartOf("w").backups(0).move_id();

  // Only the backup heartbeats from now on.
  ASSERT_TRUE(KeepUntil([&] { return PartOf("w").shard_id() == backup; }, {&next}));
  EXPECT_FALSE(service_->LeaseMayBeHeld(primary)) << "promoted while the old lease may be held";
  const VariablePart part = PartOf("w");
  EXPECT_EQ(part.epoch(), 1u);
  EXPECT_EQ(part.backups_size(), 0);
  EXPECT_THAT(next.Calls(), Contains(absl::StrCat("PromoteReplica ", Hex(move), " epoch=1")));
  const VariableHandle h = Lookup("w");
  EXPECT_EQ(h.parts(0).shard_id(), backup);
  EXPECT_EQ(h.parts(0).epoch(), 1u);
  EXPECT_EQ(service_->replica_stats().failovers, 1);
  EXPECT_GT(service_->replica_stats().last_failover_seconds, 0);

  // The old process is fenced: no lease from a heartbeat.
  const HeartbeatResponse beat = Heartbeat(old);
  EXPECT_TRUE(beat.reregister());
  EXPECT_EQ(beat.lease_millis(), 0);
  RegisterShardResponse registered;
  ASSERT_TRUE(Register(old, &registered, {"w"}).ok());
  EXPECT_THAT(registered.drop_parts(), ElementsAre("w"));
  // Then the keeper makes it the new primary's backup, under epoch 1.
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, {&old, &next}));
  EXPECT_EQ(PartOf("w").backups(0).shard_id(), primary);
  EXPECT_THAT(old.Calls(),
              Contains(absl::StrCat("StartMoveIn ", Hex(PartOf("w").backups(0).move_id()),
                                    " follow=1 epoch=1 from ", backup, " w(r)")));
}

// Split brain is avoided by time: no failover while the lost primary's
// lease may still be held, even though its shard already counts as down.
TEST_F(ReplicaKeeperLeaseTest, NoFailoverWhileTheLostPrimarysLeaseMayBeHeld) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  FakeShard& next = *shards_[1 - primary];
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, {shards_[primary].get(), &next}));
  int passes_down_with_lease = 0;
  bool failed_over = false;
  for (int i = 0; i < 6000 && !failed_over; ++i) {
    Heartbeat(next);
    const bool down = service_->NumLiveShards() == 1;
    const bool lease = service_->LeaseMayBeHeld(primary);
    service_->KeepReplicas();
    failed_over = PartOf("w").shard_id() != primary;
    if (down && lease && !failed_over) ++passes_down_with_lease;
    if (failed_over) {
      // The lease only ends (no heartbeat renews it): expired now, it was
      // expired when the failover was decided, or the pass began with it
      // held and saw it end.
      EXPECT_FALSE(service_->LeaseMayBeHeld(primary));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(failed_over);
  EXPECT_GT(passes_down_with_lease, 0) << "the keeper never saw the primary down with its lease";
  EXPECT_EQ(PartOf("w").epoch(), 1u);
}

// A replicated group whose primary is lost with no in-sync backup is left
// to the lost-parts path (restore), not failed over.
TEST_F(ReplicaKeeperTest, NoInSyncBackupMeansNoFailover) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  FakeShard& other = *shards_[1 - primary];
  other.FailFollows(true);
  // Heartbeats of the backup's shard only: the primary goes down before a
  // backup is ever in sync.
  for (int i = 0; i < 400 && service_->LeaseMayBeHeld(primary); ++i) {
    Heartbeat(other);
    service_->KeepReplicas();
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(KeepUntil([&] { return service_->NumLiveShards() == 1; }, {&other}));
  for (int i = 0; i < 20; ++i) {
    Heartbeat(other);
    service_->KeepReplicas();
  }
  EXPECT_EQ(PartOf("w").shard_id(), primary);
  EXPECT_EQ(PartOf("w").epoch(), 0u);
  EXPECT_EQ(service_->replica_stats().failovers, 0);
  // Back as a new process without it: a lost part, handed to the restore.
  std::vector<std::string> restored;
  service_->SetLostPartsHandler([&](int32_t, std::vector<std::string> parts) {
    restored.insert(restored.end(), parts.begin(), parts.end());
  });
  shards_[primary] = std::make_unique<FakeShard>(primary, 777);
  ASSERT_TRUE(Register(*shards_[primary]).ok());
  EXPECT_THAT(restored, ElementsAre("w"));
}

// A primary back as a new process without its parts is failed over at
// once (that process holds nothing, whatever its lease), and its parts are
// not handed to the lost-parts restore.
TEST_F(ReplicaKeeperTest, APrimaryBackEmptyFailsOverInsteadOfBeingRestored) {
  std::vector<std::string> restored;
  service_->SetLostPartsHandler([&](int32_t, std::vector<std::string> parts) {
    restored.insert(restored.end(), parts.begin(), parts.end());
  });
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  ASSERT_TRUE(Declare("v", 1).ok());
  const int32_t primary = handle->parts(0).shard_id();
  const int32_t backup = 1 - primary;
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const bool v_there = registry_->Lookup("v")->parts(0).shard_id() == primary;
  shards_[primary] = std::make_unique<FakeShard>(primary, 999);  // the old one is gone
  RegisterShardResponse registered;
  ASSERT_TRUE(Register(*shards_[primary], &registered).ok());
  EXPECT_THAT(registered.lost_parts(), Contains("w"));
  ASSERT_TRUE(KeepUntil([&] { return PartOf("w").shard_id() == backup; },
                        {shards_[0].get(), shards_[1].get()}));
  EXPECT_EQ(PartOf("w").epoch(), 1u);
  EXPECT_FALSE(Lookup("w").parts(0).lost());
  EXPECT_THAT(restored, ::testing::Not(Contains("w")));
  if (v_there) {
    EXPECT_THAT(restored, Contains("v")) << "an unreplicated part is restored as before";
  }
}

// A coordinator that restarts does not know which process made each
// backup: it asks each backup's shard once, and one that no longer knows
// its follow (it restarted meanwhile) is dropped and made again.
TEST_F(ReplicaKeeperTest, AfterACoordinatorRestartABackupItsShardForgotIsMadeAgain) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t backup = 1 - handle->parts(0).shard_id();
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const uint64_t first = PartOf("w").backups(0).move_id();
  // The coordinator restarts (same registry); meanwhile the backup's shard
  // restarted too, without the follow.
  server_->Shutdown();
  CoordinatorServiceOptions options;
  options.replica_keeper_interval = absl::ZeroDuration();
  options.liveness_timeout = liveness_timeout_;
  options.lease_period = lease_period_;
  service_ = std::make_unique<CoordinatorService>(registry_.get(), options);
  server_ = ServeInProcess(service_.get(), &stub_);
  shards_[backup].reset();
  shards_[backup] = std::make_unique<FakeShard>(backup, 555);
  ASSERT_TRUE(Register(*shards_[1 - backup], nullptr, {"w"}).ok());
  ASSERT_TRUE(Register(*shards_[backup]).ok());
  ASSERT_TRUE(KeepUntil([&] { return InSync("w") && PartOf("w").backups(0).move_id() != first; },
                        {shards_[0].get(), shards_[1].get()}));
  EXPECT_THAT(shards_[backup]->Calls(), Contains(::testing::StartsWith("StartMoveIn")));
}

// Deleting a replicated variable ends its backups' follows (their shards
// drop the copies).
TEST_F(ReplicaKeeperTest, ADeletedVariablesBackupsAreEnded) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t backup = 1 - handle->parts(0).shard_id();
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const uint64_t move = PartOf("w").backups(0).move_id();
  grpc::ClientContext ctx;
  CoordinatorDeleteVariableRequest req;
  req.set_name("w");
  CoordinatorDeleteVariableResponse resp;
  ASSERT_TRUE(stub_->DeleteVariable(&ctx, req, &resp).ok());
  EXPECT_THAT(shards_[backup]->Calls(),
              Contains(absl::StrCat("EndMove ", Hex(move), " committed=0")));
}

// A primary that was failed over (it stalled past its lease) must not
// answer a write it could not replicate: its ReplicaBehind for the follow
// of the promoted backup is refused, while it is fenced and after it
// registered again.
TEST_F(ReplicaKeeperTest, ADeposedPrimarysReplicaBehindIsRefused) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  FakeShard& old = *shards_[primary];
  FakeShard& next = *shards_[1 - primary];
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const uint64_t move = PartOf("w").backups(0).move_id();
  ASSERT_TRUE(KeepUntil([&] { return PartOf("w").shard_id() == next.id(); }, {&next}));
  // Fenced (its heartbeats get no lease): refused.
  grpc::Status behind = ReplicaBehind(old, move);
  EXPECT_EQ(behind.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << behind.error_message();
  EXPECT_THAT(behind.error_message(), HasSubstr(absl::StrCat("shard ", primary)));
  EXPECT_THAT(behind.error_message(), HasSubstr(Hex(move)));
  // Registered again (told to drop w): still not the primary of w.
  RegisterShardResponse registered;
  ASSERT_TRUE(Register(old, &registered, {"w"}).ok());
  ASSERT_THAT(registered.drop_parts(), ElementsAre("w"));
  behind = ReplicaBehind(old, move);
  EXPECT_EQ(behind.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << behind.error_message();
  EXPECT_THAT(behind.error_message(), HasSubstr(Hex(move)));
  // The new primary's backup, reported by the old primary (its backup
  // shard now): refused too.
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, {&old, &next}));
  EXPECT_EQ(ReplicaBehind(old, PartOf("w").backups(0).move_id()).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(PartOf("w").backups(0).in_sync());
}

// A backup its primary reports behind while the keeper waits for it to
// catch up (after SyncReplica, before replica_in_sync) never joins the
// in-sync set: its primary no longer waits for it. The keeper drops it and
// makes another.
TEST_F(ReplicaKeeperTest, ABackupReportedBehindBeforeItJoinsNeverJoins) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  FakeShard& backup = *shards_[1 - primary];
  backup.HoldCatchUp(true);
  auto synced = [&] {
    for (const std::string& c : shards_[primary]->Calls()) {
      if (absl::StartsWith(c, "SyncReplica")) return true;
    }
    return false;
  };
  ASSERT_TRUE(KeepUntil(synced));
  ASSERT_EQ(PartOf("w").backups_size(), 1);
  const uint64_t first = PartOf("w").backups(0).move_id();
  EXPECT_FALSE(PartOf("w").backups(0).in_sync());
  ASSERT_TRUE(ReplicaBehind(*shards_[primary], first).ok());
  backup.HoldCatchUp(false);
  // The add running then ends; whatever it did, that backup is not in sync.
  ASSERT_TRUE(KeepUntil([&] {
    const VariablePart p = PartOf("w");
    EXPECT_FALSE(p.backups_size() == 1 && p.backups(0).move_id() == first && p.backups(0).in_sync())
        << "a backup its primary stopped waiting for joined the in-sync set";
    return InSync("w");
  }));
  EXPECT_NE(PartOf("w").backups(0).move_id(), first);
  EXPECT_THAT(backup.Calls(), Contains(absl::StrCat("EndMove ", Hex(first), " committed=0")));
}

// A failed-over group whose PromoteReplica failed is promoted at a later
// pass (the call is idempotent on the shard), and nothing else touches the
// group meanwhile (no backup made from a primary that does not serve).
TEST_F(ReplicaKeeperTest, AFailedPromotionIsRetried) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  FakeShard& old = *shards_[primary];
  FakeShard& next = *shards_[1 - primary];
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }));
  const uint64_t move = PartOf("w").backups(0).move_id();
  next.FailPromotes(true);
  ASSERT_TRUE(KeepUntil([&] { return PartOf("w").shard_id() == next.id(); }, {&next}));
  RegisterShardResponse registered;
  ASSERT_TRUE(Register(old, &registered, {"w"}).ok());
  auto promotes = [&](bool refused) {
    int n = 0;
    for (const std::string& c : next.Calls()) {
      n += c == absl::StrCat("PromoteReplica ", Hex(move), " epoch=1", refused ? " (refused)" : "");
    }
    return n;
  };
  ASSERT_TRUE(KeepUntil([&] { return promotes(true) >= 3; }, {&old, &next}));
  EXPECT_EQ(PartOf("w").backups_size(), 0) << "a backup was made of a primary not promoted yet";
  EXPECT_THAT(old.Calls(), ::testing::Not(Contains(::testing::StartsWith("StartMoveIn"))));
  next.FailPromotes(false);
  ASSERT_TRUE(KeepUntil([&] { return promotes(false) == 1; }, {&old, &next}));
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, {&old, &next}));
  EXPECT_EQ(promotes(false), 1) << "promoted again after it succeeded";
  EXPECT_EQ(PartOf("w").backups(0).shard_id(), primary);
}

// After a coordinator restart, a primary not registered yet whose group the
// keeper fails over is refused a registration (no lease) until the failover
// is recorded, and then told to drop the part: never two primaries.
TEST_F(ReplicaKeeperLeaseTest, APrimaryRegisteringDuringItsFailoverIsRefused) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  FakeShard& old = *shards_[primary];
  FakeShard& next = *shards_[1 - primary];
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, {&old, &next}));
  RestartCoordinator();
  ASSERT_TRUE(Register(next, nullptr, {"w"}).ok());
  // The old primary registers while the keeper is asking the backup's
  // follow (the failover is decided: the predecessor's lease is over).
  grpc::Status during = grpc::Status::OK;
  RegisterShardResponse during_resp;
  bool hooked = false;
  next.OnMoveStatus([&] { return !service_->LeaseMayBeHeld(primary); },
                    [&] {
                      during = Register(old, &during_resp, {"w"});
                      hooked = true;
                    });
  ASSERT_TRUE(KeepUntil([&] { return PartOf("w").shard_id() == next.id(); }, {&next}));
  ASSERT_TRUE(hooked);
  if (during.ok()) {
    EXPECT_THAT(during_resp.drop_parts(), Contains("w"))
        << "the old primary got a lease and kept w while w failed over";
  }
  EXPECT_EQ(during.error_code(), grpc::StatusCode::UNAVAILABLE) << during.error_message();
  RegisterShardResponse after;
  ASSERT_TRUE(Register(old, &after, {"w"}).ok());
  EXPECT_THAT(after.drop_parts(), ElementsAre("w"));
}

// The keeper's own thread does the same without being asked.
class ReplicaKeeperThreadTest : public ReplicaKeeperTest {
 protected:
  void SetUp() override {
    keeper_interval_ = absl::Milliseconds(20);
    ReplicaKeeperTest::SetUp();
  }
};

TEST_F(ReplicaKeeperThreadTest, TheKeeperThreadMakesBackups) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  bool in_sync = false;
  for (int i = 0; i < 6000 && !in_sync; ++i) {
    in_sync = InSync("w");
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(in_sync);
}

class ReplicaKeeperThreeShardsTest : public ReplicaKeeperTest {
 protected:
  void SetUp() override {
    num_shards_ = 3;
    ReplicaKeeperTest::SetUp();
  }
  std::vector<FakeShard*> All() {
    std::vector<FakeShard*> out;
    for (auto& s : shards_) out.push_back(s.get());
    return out;
  }
  // Index of `call` (a prefix) in `shard`'s calls; -1 if absent.
  static int IndexOf(FakeShard& shard, const std::string& call) {
    const std::vector<std::string> calls = shard.Calls();
    for (size_t i = 0; i < calls.size(); ++i) {
      if (absl::StartsWith(calls[i], call)) return static_cast<int>(i);
    }
    return -1;
  }
};

// A drain drops the backups on the drained shard; the keeper makes them
// again on a shard still in use.
TEST_F(ReplicaKeeperThreeShardsTest, ADrainedShardsBackupsAreMadeAgainElsewhere) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, All()));
  const ReplicaRecord first = PartOf("w").backups(0);
  {
    grpc::ClientContext ctx;
    DrainShardRequest req;
    req.set_shard_id(first.shard_id());
    DrainShardResponse resp;
    ASSERT_TRUE(stub_->DrainShard(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(PartOf("w").backups_size(), 0);
  EXPECT_GE(IndexOf(*shards_[first.shard_id()],
                    absl::StrCat("EndMove ", Hex(first.move_id()), " committed=0")),
            0);
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, All()));
  const int32_t now = PartOf("w").backups(0).shard_id();
  EXPECT_NE(now, first.shard_id());
  EXPECT_NE(now, primary);
}

// A move of a replicated primary drops its backups before it begins (they
// follow the source's log) and the keeper makes them again from the new
// primary.
TEST_F(ReplicaKeeperThreeShardsTest, AMovedPrimaryGetsItsBackupsAgain) {
  auto handle = Declare("w");
  ASSERT_TRUE(handle.ok()) << handle.status();
  const int32_t primary = handle->parts(0).shard_id();
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, All()));
  const ReplicaRecord first = PartOf("w").backups(0);
  int32_t target = 0;
  while (target == primary || target == first.shard_id()) ++target;
  {
    grpc::ClientContext ctx;
    MovePartRequest req;
    req.set_part("w");
    req.set_target_shard(target);
    MovePartResponse resp;
    grpc::Status moved = stub_->MovePart(&ctx, req, &resp);
    ASSERT_TRUE(moved.ok()) << moved.error_message();
  }
  EXPECT_EQ(PartOf("w").shard_id(), target);
  // The follow ended on the old primary before the move's freeze.
  const int ended = IndexOf(*shards_[primary], absl::StrCat("EndMove ", Hex(first.move_id())));
  const int frozen = IndexOf(*shards_[primary], "FreezeMove");
  ASSERT_GE(ended, 0);
  ASSERT_GE(frozen, 0);
  EXPECT_LT(ended, frozen);
  ASSERT_TRUE(KeepUntil([&] { return InSync("w"); }, All()));
  const ReplicaRecord again = PartOf("w").backups(0);
  EXPECT_NE(again.move_id(), first.move_id());
  EXPECT_GE(IndexOf(*shards_[again.shard_id()], absl::StrCat("StartMoveIn ", Hex(again.move_id()),
                                                             " follow=1 epoch=0 from ", target)),
            0);
}

}  // namespace
}  // namespace psd
