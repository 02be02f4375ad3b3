// CoordinatorService over in-process gRPC: a coordinator and two real shard
// services on 127.0.0.1:0. Declarations create their parts on the shards,
// handles carry shard addresses and incarnations, and a shard that comes
// back empty has its parts marked lost.
#include "coordinator/coordinator_service.h"

#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "device/device.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/crc32c.h"
#include "psd/names.h"
#include "shard/shard_service.h"
#include "shard/variable_store.h"
#include "in_process_shard.h"

namespace psd {
namespace {

using ::testing::ElementsAre;
using ::testing::UnorderedElementsAre;


class CoordinatorServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = std::move(Registry::Open({})).value();
    service_ = std::make_unique<CoordinatorService>(registry_.get(), CoordinatorServiceOptions{});
    server_ = ServeInProcess(service_.get(), &stub_);
    shards_.push_back(std::make_unique<InProcessShard>(0, 100));
    // Shard 1 has room for small variables only (a shard refusing a part).
    shards_.push_back(std::make_unique<InProcessShard>(1, 200, 64 << 10));
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(Register(i, 100 * (i + 1), {}).ok());
  }
  void TearDown() override { server_->Shutdown(); }

  grpc::Status Register(int id, uint64_t incarnation, std::vector<std::string> names,
                        RegisterShardResponse* resp_out = nullptr, std::string address = "") {
    grpc::ClientContext ctx;
    RegisterShardRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    req.set_shard_id(id);
    req.set_address(address.empty() ? shards_[id]->address : address);
    req.set_incarnation(incarnation);
    req.set_device("cpu");
    for (auto& n : names) req.add_variables(n);
    RegisterShardResponse resp;
    grpc::Status s = stub_->RegisterShard(&ctx, req, &resp);
    if (resp_out) *resp_out = resp;
    return s;
  }
  uint64_t Open() {
    grpc::ClientContext ctx;
    OpenSessionRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    OpenSessionResponse resp;
    EXPECT_TRUE(stub_->OpenSession(&ctx, req, &resp).ok());
    return resp.session_id();
  }
  grpc::Status Get(uint64_t session, const VariableDeclaration& d, GetVariableResponse* resp) {
    grpc::ClientContext ctx;
    GetVariableRequest req;
    req.set_session_id(session);
    *req.mutable_declaration() = d;
    return stub_->GetVariable(&ctx, req, resp);
  }

  ListShardsResponse Shards() {
    grpc::ClientContext ctx;
    ListShardsResponse resp;
    EXPECT_TRUE(stub_->ListShards(&ctx, ListShardsRequest(), &resp).ok());
    return resp;
  }
  size_t NumParts() { return shards_[0]->Names().size() + shards_[1]->Names().size(); }

  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Coordinator::Stub> stub_;
  std::vector<std::unique_ptr<InProcessShard>> shards_;
};

VariableDeclaration Emb() {
  VariableDeclaration d;
  d.set_name("model/emb");
  d.set_dtype(DT_FLOAT);
  d.mutable_shape()->add_dims(10);
  d.mutable_shape()->add_dims(4);
  d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(4);
  d.set_declared_at("test");
  return d;
}

TEST_F(CoordinatorServiceTest, ProtocolMismatchFailsClearly) {
  grpc::ClientContext ctx;
  OpenSessionRequest req;
  req.set_protocol_version(99);
  OpenSessionResponse resp;
  grpc::Status s = stub_->OpenSession(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(CoordinatorServiceTest, GetVariableCreatesPartsOnTheirShards) {
  const uint64_t session = Open();
  GetVariableResponse resp;
  ASSERT_TRUE(Get(session, Emb(), &resp).ok());
  EXPECT_TRUE(resp.created());
  const VariableHandle& h = resp.handle();
  ASSERT_EQ(h.parts_size(), 4);
  EXPECT_THAT(h.partitions(), ElementsAre(4, 1));
  for (const auto& p : h.parts()) {
    EXPECT_EQ(p.shard_address(), shards_[p.shard_id()]->address);
    EXPECT_EQ(p.shard_incarnation(), 100u * (p.shard_id() + 1));
    EXPECT_FALSE(p.lost());
  }
  EXPECT_THAT(shards_[0]->Names(), UnorderedElementsAre("model/emb/part_0", "model/emb/part_2"));
  EXPECT_THAT(shards_[1]->Names(), UnorderedElementsAre("model/emb/part_1", "model/emb/part_3"));

  // A second session attaches; nothing new is created.
  GetVariableResponse again;
  ASSERT_TRUE(Get(Open(), Emb(), &again).ok());
  EXPECT_FALSE(again.created());
  // Reuse errors map to TensorFlow's classes.
  EXPECT_EQ(Get(session, Emb(), &again).error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(CoordinatorServiceTest, ShardBackEmptyHasItsPartsMarkedLost) {
  GetVariableResponse resp;
  ASSERT_TRUE(Get(Open(), Emb(), &resp).ok());
  // Shard 1 restarts: a new process (incarnation 201), empty, on a new port.
  shards_[1].reset();
  shards_[1] = std::make_unique<InProcessShard>(1, 201);
  RegisterShardResponse reg;
  ASSERT_TRUE(Register(1, 201, {}, &reg).ok());
  EXPECT_THAT(reg.lost_parts(), UnorderedElementsAre("model/emb/part_1", "model/emb/part_3"));
  grpc::ClientContext ctx;
  LookupVariableRequest req;
  req.set_name("model/emb");
  LookupVariableResponse look;
  ASSERT_TRUE(stub_->LookupVariable(&ctx, req, &look).ok());
  for (const auto& p : look.handle().parts()) {
    EXPECT_EQ(p.lost(), p.shard_id() == 1) << p.name();
    if (p.shard_id() == 1) {
      EXPECT_EQ(p.shard_incarnation(), 201u);
    }
  }
  // A heartbeat from the old incarnation is told to register again.
  grpc::ClientContext hctx;
  HeartbeatRequest hb;
  hb.set_shard_id(1);
  hb.set_incarnation(200);
  HeartbeatResponse hresp;
  ASSERT_TRUE(stub_->Heartbeat(&hctx, hb, &hresp).ok());
  EXPECT_TRUE(hresp.reregister());
}

TEST_F(CoordinatorServiceTest, BatchScopesListAndShards) {
  const uint64_t session = Open();
  grpc::ClientContext sctx;
  OpenScopeRequest sreq;
  sreq.set_session_id(session);
  sreq.set_default_name("layer");
  OpenScopeResponse sresp;
  ASSERT_TRUE(stub_->OpenScope(&sctx, sreq, &sresp).ok());
  EXPECT_EQ(sresp.path(), "layer");

  DeclareVariablesRequest batch;
  batch.set_session_id(session);
  for (const char* name : {"layer/w", "layer/b"}) {
    VariableDeclaration* d = batch.add_declarations();
    d->set_name(name);
    d->mutable_shape()->add_dims(3);
    d->set_initialize(true);
  }
  grpc::ClientContext bctx;
  DeclareVariablesResponse bresp;
  ASSERT_TRUE(stub_->DeclareVariables(&bctx, batch, &bresp).ok());
  ASSERT_EQ(bresp.handles_size(), 2);
  EXPECT_EQ(bresp.handles(0).dtype(), DT_FLOAT);

  grpc::ClientContext lctx;
  CoordinatorListVariablesRequest lreq;
  lreq.set_collection("trainable_variables");
  CoordinatorListVariablesResponse lresp;
  ASSERT_TRUE(stub_->ListVariables(&lctx, lreq, &lresp).ok());
  ASSERT_EQ(lresp.variables_size(), 2);
  EXPECT_EQ(lresp.variables(0).name(), "layer/w");

  grpc::ClientContext shctx;
  ListShardsResponse shards;
  ASSERT_TRUE(stub_->ListShards(&shctx, ListShardsRequest(), &shards).ok());
  ASSERT_EQ(shards.shards_size(), 2);
  EXPECT_TRUE(shards.shards(0).live());
  EXPECT_EQ(shards.num_variables(), 2);
  EXPECT_EQ(shards.shards(0).placed_parts() + shards.shards(1).placed_parts(), 2);

  grpc::ClientContext dctx;
  CoordinatorDeleteVariableRequest dreq;
  dreq.set_name("layer/w");
  CoordinatorDeleteVariableResponse dresp;
  ASSERT_TRUE(stub_->DeleteVariable(&dctx, dreq, &dresp).ok());
  EXPECT_EQ(shards_[0]->Names().size() + shards_[1]->Names().size(), 1u);
}

// The bug: random_uniform(1, 0) was registered, every part refused by its
// shard, and every later save failed NOT_FOUND. Now the coordinator runs
// the shards' own check first: nothing is registered and no part created.
TEST_F(CoordinatorServiceTest, InitializerTheShardsWouldRefuseIsNeverRegistered) {
  const uint64_t session = Open();
  VariableDeclaration d = Emb();
  d.mutable_initializer()->mutable_random_uniform()->set_minval(1);
  d.mutable_initializer()->mutable_random_uniform()->set_maxval(0);
  d.set_initialize(true);
  GetVariableResponse resp;
  grpc::Status s = Get(session, d, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("minval < maxval"));
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("model/emb"));
  EXPECT_EQ(registry_->num_variables(), 0u);
  EXPECT_EQ(NumParts(), 0u);
  // The name is free: a valid declaration creates it.
  d.mutable_initializer()->mutable_random_uniform()->set_maxval(2);
  ASSERT_TRUE(Get(session, d, &resp).ok());
  EXPECT_TRUE(resp.created());
  EXPECT_EQ(NumParts(), 4u);
}

TEST_F(CoordinatorServiceTest, NamesAndPartCountsOverTheLimitsAreRefusedNamingThem) {
  const uint64_t session = Open();
  GetVariableResponse resp;
  VariableDeclaration d;
  d.mutable_shape()->add_dims(2);
  d.set_name(std::string(kMaxNameBytes + 1, 'a'));
  grpc::Status s = Get(session, d, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("limit of 1024 bytes"));
  // The variable's name fits, its part names ("/part_K") do not.
  d.set_name(std::string(kMaxNameBytes - 2, 'a'));
  d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
  s = Get(session, d, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("/part_0"));
  // A character the shards refuse.
  d.set_name("a>b");
  d.clear_partitioner();
  EXPECT_EQ(Get(session, d, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // More parts than a variable may have.
  d.set_name("many");
  d.mutable_shape()->set_dims(0, kMaxPartsPerVariable + 1);
  d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(kMaxPartsPerVariable + 1);
  s = Get(session, d, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("'many' would have 1025 parts, over the "
                                                      "limit of 1024 parts per variable"));
  EXPECT_EQ(registry_->num_variables(), 0u);
  EXPECT_EQ(NumParts(), 0u);
}

// A part its shard refuses (shard 1 is out of memory) fails the whole
// declaration: the parts already created on shard 0 are deleted again and
// nothing is registered.
TEST_F(CoordinatorServiceTest, APartTheShardRefusesLeavesNoVariableAndNoParts) {
  const uint64_t session = Open();
  VariableDeclaration d;
  d.set_name("big");
  d.mutable_shape()->add_dims(4);
  d.mutable_shape()->add_dims(32 << 10);  // 4 parts of 128 KiB
  d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(4);
  d.mutable_initializer()->mutable_zeros();
  d.set_initialize(true);
  GetVariableResponse resp;
  grpc::Status s = Get(session, d, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("big/part_1"));
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("nothing was registered"));
  EXPECT_EQ(registry_->num_variables(), 0u);
  EXPECT_EQ(NumParts(), 0u);
  grpc::ClientContext ctx;
  LookupVariableRequest look;
  look.set_name("big");
  LookupVariableResponse found;
  EXPECT_EQ(stub_->LookupVariable(&ctx, look, &found).error_code(), grpc::StatusCode::NOT_FOUND);
}

// A shard still holding a part of a deleted variable (it missed the
// deletion) does not hand it to a new variable of the same name.
TEST_F(CoordinatorServiceTest, ANewVariableNeverAdoptsALeftoverPart) {
  for (auto& shard : shards_) {
    grpc::ClientContext ctx;
    CreateVariableRequest req;
    req.set_name("reborn");
    req.set_dtype(DT_FLOAT);
    req.mutable_shape()->add_dims(2);
    req.mutable_initializer()->mutable_ones();
    req.set_initialize(true);
    CreateVariableResponse resp;
    ASSERT_TRUE(shard->stub->CreateVariable(&ctx, req, &resp).ok());
  }
  VariableDeclaration d;
  d.set_name("reborn");
  d.mutable_shape()->add_dims(5);
  d.mutable_initializer()->mutable_zeros();
  d.set_initialize(true);
  GetVariableResponse resp;
  ASSERT_TRUE(Get(Open(), d, &resp).ok());
  ASSERT_EQ(resp.handle().parts_size(), 1);
  const int on = resp.handle().parts(0).shard_id();
  std::vector<VariableInfo> infos = shards_[on]->Infos();
  ASSERT_EQ(infos.size(), 1u);
  EXPECT_THAT(infos[0].shape().dims(), ElementsAre(5));  // the new one, not the leftover [2]
}

// Two processes cannot hold one shard id: a registration claiming the id of
// a live shard whose address still answers as it is refused, naming the
// holder, and the holder keeps the id.
TEST_F(CoordinatorServiceTest, ALiveShardsIdCannotBeTaken) {
  GetVariableResponse resp;
  ASSERT_TRUE(Get(Open(), Emb(), &resp).ok());
  InProcessShard impostor(0, 999);
  grpc::Status s = Register(0, 999, {}, nullptr, impostor.address);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(s.error_message(),
              ::testing::HasSubstr(absl::StrCat("is held by a live shard at ", shards_[0]->address,
                                                " (incarnation 64")));  // 100 in hex
  ListShardsResponse shards = Shards();
  ASSERT_EQ(shards.shards_size(), 2);
  EXPECT_EQ(shards.shards(0).address(), shards_[0]->address);
  EXPECT_EQ(shards.shards(0).incarnation(), 100u);
  EXPECT_EQ(shards.shards(0).lost_parts(), 0);
  // The holder's own re-registration (same incarnation) is still welcome.
  EXPECT_TRUE(Register(0, 100, shards_[0]->Names()).ok());
}

// A shard that restarted (its old process gone, the heartbeats not lapsed
// yet) gets its id back, on a new address or on its old one.
TEST_F(CoordinatorServiceTest, ARestartedShardGetsItsIdBack) {
  shards_[0].reset();
  shards_[0] = std::make_unique<InProcessShard>(0, 101);
  EXPECT_TRUE(Register(0, 101, {}).ok());
  // Registered again at the address the new process serves: its own.
  EXPECT_EQ(Shards().shards(0).incarnation(), 101u);
}

// A shard whose CreateVariable of a part named "slow..." is held until the
// test releases it (a slow or stuck shard); every other part is created at
// once. Only what declarations call is served.
class GatedShard final : public Shard::Service {
 public:
  GatedShard() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(this);
    server_ = b.BuildAndStart();
  }
  ~GatedShard() override {
    Release();
    server_->Shutdown();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  grpc::Status CreateVariable(grpc::ServerContext*, const CreateVariableRequest* request,
                              CreateVariableResponse*) override {
    absl::MutexLock lock(&mu_);
    if (absl::StartsWith(request->name(), "slow")) {
      ++held_;
      mu_.AwaitWithTimeout(absl::Condition(&released_), absl::Seconds(240));
    }
    return created_.insert(request->name()).second
               ? grpc::Status::OK
               : grpc::Status(grpc::StatusCode::ALREADY_EXISTS, request->name());
  }
  grpc::Status DeleteVariable(grpc::ServerContext*, const DeleteVariableRequest* request,
                              DeleteVariableResponse*) override {
    absl::MutexLock lock(&mu_);
    created_.erase(request->name());
    return grpc::Status::OK;
  }

  // Bounded wait until a creation is held.
  bool WaitHeld() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](int* held) { return *held > 0; }, &held_),
                                absl::Seconds(60));
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }
  int held() {
    absl::MutexLock lock(&mu_);
    return held_;
  }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  int held_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::string> created_ ABSL_GUARDED_BY(mu_);
};

// One slow shard call holds up only the declarations that need what it is
// creating: a declaration of another name completes meanwhile (before, one
// lock was held across every declaration's part creation), and a session
// attaching to the slow variable gets it only once it exists.
// Checkpoints written while initial values travelled inside declarations
// hold them as constant initializers in .psd-meta. Restoring one declares
// a value over the inline limit by its description, so the restore is not
// refused and the value (which the checkpoint holds) never comes back into
// the registry.
TEST_F(CoordinatorServiceTest, ACheckpointsBigConstantIsDeclaredByItsDescription) {
  CheckpointMeta meta;
  VariableDef* def = meta.add_variables();
  def->set_name("old/big");
  def->set_dtype(DT_FLOAT);
  def->mutable_shape()->add_dims(30000);
  TensorProto* value = def->mutable_initializer()->mutable_constant()->mutable_value();
  value->set_dtype(DT_FLOAT);
  value->mutable_shape()->add_dims(30000);
  value->set_content(std::string(120000, '\x01'));
  VariablePart* part = def->add_parts();
  part->set_name("old/big");
  *part->mutable_shape() = def->shape();
  part->add_offset(0);
  ASSERT_TRUE(service_->DeclareFromMeta(meta).ok());
  auto declared = registry_->Lookup("old/big");
  ASSERT_TRUE(declared.ok()) << declared.status();
  ASSERT_TRUE(declared->initializer().has_supplied_value());
  EXPECT_EQ(declared->initializer().supplied_value().byte_size(), 120000);
  EXPECT_EQ(declared->initializer().supplied_value().crc32c(),
            crc32c::Value(std::string(120000, '\x01')));
  EXPECT_LT(declared->ByteSizeLong(), 1000u);
}

// A coordinator in process with one registered GatedShard, and the calls
// the declaration-lock tests make through it.
class CoordinatorDeclarationLocksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = std::move(Registry::Open({})).value();
    CoordinatorServiceOptions options;
    options.liveness_timeout = absl::Hours(1);  // no heartbeats in these tests
    // A held creation outlasts the tests' patience rather than failing.
    options.shard_rpc_timeout = absl::Seconds(300);
    service_ = std::make_unique<CoordinatorService>(registry_.get(), options);
    server_ = ServeInProcess(service_.get(), &stub_);
    grpc::ClientContext ctx;
    RegisterShardRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    req.set_shard_id(0);
    req.set_address(shard_.address());
    req.set_incarnation(7);
    req.set_device("cpu");
    RegisterShardResponse resp;
    ASSERT_TRUE(stub_->RegisterShard(&ctx, req, &resp).ok());
  }
  void TearDown() override {
    shard_.Release();
    server_->Shutdown();
  }

  uint64_t Open() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    OpenSessionRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    OpenSessionResponse resp;
    EXPECT_TRUE(stub_->OpenSession(&ctx, req, &resp).ok());
    return resp.session_id();
  }
  // A float[3] named `name`; the shard holds its creation when the name
  // starts with "slow".
  grpc::Status Declare(uint64_t session, const std::string& name,
                       GetVariableResponse* resp = nullptr) {
    GetVariableResponse ignored;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    GetVariableRequest req;
    req.set_session_id(session);
    VariableDeclaration* d = req.mutable_declaration();
    d->set_name(name);
    d->set_dtype(DT_FLOAT);
    d->mutable_shape()->add_dims(3);
    return stub_->GetVariable(&ctx, req, resp != nullptr ? resp : &ignored);
  }

  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  GatedShard shard_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Coordinator::Stub> stub_;
};

TEST_F(CoordinatorDeclarationLocksTest, AnUnrelatedDeclarationIsNotHeldUpByASlowShard) {
  const uint64_t first = Open();
  const uint64_t second = Open();

  grpc::Status slow_status;
  GetVariableResponse slow_resp;
  std::thread slow([&] { slow_status = Declare(first, "slow", &slow_resp); });
  ASSERT_TRUE(shard_.WaitHeld());
  absl::Notification fast_done;
  grpc::Status fast_status;
  std::thread fast([&] {
    GetVariableResponse resp;
    fast_status = Declare(second, "fast", &resp);
    fast_done.Notify();
  });
  const bool in_time = fast_done.WaitForNotificationWithTimeout(absl::Seconds(60));
  const int held_meanwhile = shard_.held();
  // A second session declaring the slow variable meanwhile attaches to it
  // once created: it waits for the creation rather than racing it. (Started
  // only now: gRPC runs the coordinator's handlers on its callback threads,
  // two on a two-core machine, and a handler waiting here holds one.)
  grpc::Status attach_status;
  GetVariableResponse attach_resp;
  std::thread attach([&] { attach_status = Declare(second, "slow", &attach_resp); });
  shard_.Release();
  slow.join();
  attach.join();
  fast.join();
  EXPECT_TRUE(in_time) << "a declaration of another name waited for the slow shard";
  EXPECT_TRUE(fast_status.ok()) << fast_status.error_message();
  EXPECT_EQ(held_meanwhile, 1);  // the slow creation was still held then
  ASSERT_TRUE(slow_status.ok()) << slow_status.error_message();
  EXPECT_TRUE(slow_resp.created());
  // The attaching session waited for the creation rather than racing it.
  ASSERT_TRUE(attach_status.ok()) << attach_status.error_message();
  EXPECT_FALSE(attach_resp.created());
  EXPECT_EQ(shard_.held(), 1);  // "slow" was created once
}

// gRPC runs callback handlers on a few threads of its own (two on a
// two-core machine): declarations blocked on a slow shard must not hold
// them, or heartbeats, lookups and unrelated declarations stop too.
TEST_F(CoordinatorDeclarationLocksTest, CallsAreNotStarvedByDeclarationsWaitingOnASlowShard) {
  const uint64_t session = Open();
  // More blocked declarations than gRPC has callback threads here.
  constexpr int kSlow = 6;
  std::vector<std::thread> slow;
  std::vector<grpc::Status> slow_status(kSlow);
  for (int i = 0; i < kSlow; ++i) {
    slow.emplace_back([&, i] { slow_status[i] = Declare(session, absl::StrCat("slow", i)); });
  }
  // Bounded: every slow creation reaches the shard.
  for (int tries = 0; shard_.held() < kSlow && tries < 600; ++tries) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  // Not an ASSERT: the threads below must be released and joined.
  EXPECT_EQ(shard_.held(), kSlow) << "declarations queued behind blocked ones";

  absl::Notification done;
  grpc::Status heartbeat_status;
  grpc::Status fast_status;
  uint64_t other = 0;
  std::thread fast([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    HeartbeatRequest hb;
    hb.set_shard_id(0);
    hb.set_incarnation(7);
    HeartbeatResponse hb_resp;
    heartbeat_status = stub_->Heartbeat(&ctx, hb, &hb_resp);
    other = Open();
    fast_status = Declare(other, "fast");
    done.Notify();
  });
  const bool in_time = done.WaitForNotificationWithTimeout(absl::Seconds(60));
  shard_.Release();
  fast.join();
  for (std::thread& t : slow) t.join();
  EXPECT_TRUE(in_time) << "calls waited for declarations blocked on a slow shard";
  EXPECT_TRUE(heartbeat_status.ok()) << heartbeat_status.error_message();
  EXPECT_NE(other, 0u);
  EXPECT_TRUE(fast_status.ok()) << fast_status.error_message();
  for (const grpc::Status& s : slow_status) EXPECT_TRUE(s.ok()) << s.error_message();
}

}  // namespace
}  // namespace psd
