// CoordinatorService and embedding tables, over in-process gRPC with
// recording shards (they accept any part and remember each request): a
// table's parts are created as table parts (the resolved spec, shape
// [embedding_dim], the resolved initializer with its seed, no slice), a
// slot's parts name the primary's part beside them, handles carry the
// spec, deleting a table deletes its slots' parts first, and a
// checkpoint's .psd-meta declares the tables again unchanged.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator/coordinator_service.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/shard.grpc.pb.h"
#include "psd/serialize.h"

namespace psd {
namespace {

using ::testing::ElementsAre;

// Serves `coordinator` on 127.0.0.1:0 and points `*stub` at it.
std::unique_ptr<grpc::Server> ServeCoordinator(grpc::Service* coordinator,
                                               std::unique_ptr<Coordinator::Stub>* stub) {
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(coordinator);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  *stub = Coordinator::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  return server;
}

// A shard that accepts every part and records what it was asked.
class RecordingShard final : public Shard::Service {
 public:
  RecordingShard() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(this);
    server_ = b.BuildAndStart();
  }
  ~RecordingShard() override { server_->Shutdown(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  grpc::Status CreateVariable(grpc::ServerContext*, const CreateVariableRequest* request,
                              CreateVariableResponse*) override {
    absl::MutexLock lock(&mu_);
    created_[request->name()] = *request;
    return grpc::Status::OK;
  }
  grpc::Status DeleteVariable(grpc::ServerContext*, const DeleteVariableRequest* request,
                              DeleteVariableResponse*) override {
    absl::MutexLock lock(&mu_);
    deleted_.push_back(request->name());
    created_.erase(request->name());
    return grpc::Status::OK;
  }
  std::map<std::string, CreateVariableRequest> created() {
    absl::MutexLock lock(&mu_);
    return created_;
  }
  std::vector<std::string> deleted() {
    absl::MutexLock lock(&mu_);
    return deleted_;
  }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  std::map<std::string, CreateVariableRequest> created_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> deleted_ ABSL_GUARDED_BY(mu_);
};

VariableDeclaration Table(const std::string& name, int64_t dim, int64_t parts) {
  VariableDeclaration d;
  d.set_name(name);
  d.mutable_embedding()->set_embedding_dim(dim);
  d.mutable_embedding()->mutable_counter_filter()->set_filter_freq(2);
  if (parts > 0) d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(parts);
  d.set_declared_at("model.py:3");
  return d;
}

VariableDeclaration Slot(const std::string& name, const std::string& primary) {
  VariableDeclaration d;
  d.set_name(name);
  d.mutable_embedding()->set_slot_of(primary);
  d.set_trainable(false);
  d.mutable_initializer()->mutable_zeros();
  return d;
}

class CoordinatorEmbeddingTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }
  void TearDown() override { server_->Shutdown(); }

  // A coordinator (a fresh one on each call) over the same three shards.
  void Start() {
    if (server_ != nullptr) server_->Shutdown();
    registry_ = std::move(Registry::Open({})).value();
    CoordinatorServiceOptions options;
    options.liveness_timeout = absl::Hours(1);  // no heartbeats in these tests
    service_ = std::make_unique<CoordinatorService>(registry_.get(), options);
    server_ = ServeCoordinator(service_.get(), &stub_);
    for (int i = 0; i < 3; ++i) {
      grpc::ClientContext ctx;
      RegisterShardRequest req;
      req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
      req.set_shard_id(i);
      req.set_address(shards_[i].address());
      req.set_incarnation(10 + i);
      req.set_device("cpu");
      RegisterShardResponse resp;
      ASSERT_TRUE(stub_->RegisterShard(&ctx, req, &resp).ok());
    }
    grpc::ClientContext ctx;
    OpenSessionRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    OpenSessionResponse resp;
    ASSERT_TRUE(stub_->OpenSession(&ctx, req, &resp).ok());
    session_ = resp.session_id();
  }
  absl::StatusOr<VariableHandle> Get(const VariableDeclaration& d) {
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
  // The request that created `part`, from the shard the handle names.
  CreateVariableRequest CreatedOn(const PartHandle& part) {
    auto created = shards_[part.shard_id()].created();
    auto it = created.find(part.name());
    EXPECT_NE(it, created.end()) << part.name() << " not on shard " << part.shard_id();
    return it == created.end() ? CreateVariableRequest() : it->second;
  }

  RecordingShard shards_[3];
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Coordinator::Stub> stub_;
  uint64_t session_ = 0;
};

TEST_F(CoordinatorEmbeddingTest, ATablesPartsAreCreatedAsTablePartsAndItsSlotsBesideThem) {
  auto t = Get(Table("t", 8, 3));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(t->has_embedding());
  EXPECT_EQ(t->embedding().embedding_dim(), 8);
  EXPECT_EQ(t->embedding().key_dtype(), DT_INT64);
  EXPECT_EQ(t->embedding().counter_filter().filter_freq(), 2);
  ASSERT_EQ(t->parts_size(), 3);
  for (const PartHandle& part : t->parts()) {
    const CreateVariableRequest req = CreatedOn(part);
    EXPECT_EQ(req.embedding().SerializeAsString(), t->embedding().SerializeAsString());
    EXPECT_THAT(req.shape().dims(), ElementsAre(8));
    EXPECT_EQ(req.dtype(), DT_FLOAT);
    ASSERT_TRUE(req.initializer().has_truncated_normal());
    EXPECT_EQ(req.initializer().seed(), t->initializer().seed());
    EXPECT_NE(req.initializer().seed(), 0);
    EXPECT_FALSE(req.has_slice());
    EXPECT_FALSE(req.initialize());
  }
  auto slot = Get(Slot("t/Adagrad", "t"));
  ASSERT_TRUE(slot.ok()) << slot.status();
  EXPECT_EQ(slot->embedding().slot_of(), "t");
  for (int k = 0; k < 3; ++k) {
    const PartHandle& part = slot->parts(k);
    EXPECT_EQ(part.name(), "t/Adagrad/part_" + std::to_string(k));
    EXPECT_EQ(part.shard_id(), t->parts(k).shard_id());
    const CreateVariableRequest req = CreatedOn(part);
    // On the shard the slot names the primary's part beside it.
    EXPECT_EQ(req.embedding().slot_of(), "t/part_" + std::to_string(k));
    EXPECT_EQ(req.embedding().embedding_dim(), 8);
    EXPECT_TRUE(req.initializer().has_zeros());
  }
  // An unpartitioned primary: the slot names it as is.
  auto u = Get(Table("u", 4, 0));
  ASSERT_TRUE(u.ok()) << u.status();
  auto us = Get(Slot("u/Adagrad", "u"));
  ASSERT_TRUE(us.ok()) << us.status();
  EXPECT_EQ(CreatedOn(us->parts(0)).embedding().slot_of(), "u");
  // Lookups carry the spec too.
  grpc::ClientContext ctx;
  LookupVariableRequest req;
  req.set_name("t/Adagrad");
  LookupVariableResponse resp;
  ASSERT_TRUE(stub_->LookupVariable(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.handle().embedding().SerializeAsString(), slot->embedding().SerializeAsString());
}

TEST_F(CoordinatorEmbeddingTest, ASlotDeclaredWithItsPrimaryInOneBatchNamesItsPart) {
  grpc::ClientContext ctx;
  DeclareVariablesRequest req;
  req.set_session_id(session_);
  *req.add_declarations() = Table("t", 8, 2);
  *req.add_declarations() = Slot("t/Adagrad", "t");
  DeclareVariablesResponse resp;
  grpc::Status s = stub_->DeclareVariables(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.handles_size(), 2);
  EXPECT_EQ(CreatedOn(resp.handles(1).parts(1)).embedding().slot_of(), "t/part_1");
}

TEST_F(CoordinatorEmbeddingTest, DeletingATableDeletesItsSlotsPartsFirst) {
  ASSERT_TRUE(Get(Table("t", 8, 2)).ok());
  ASSERT_TRUE(Get(Slot("t/Adagrad", "t")).ok());
  grpc::ClientContext ctx;
  CoordinatorDeleteVariableRequest req;
  req.set_name("t");
  CoordinatorDeleteVariableResponse resp;
  ASSERT_TRUE(stub_->DeleteVariable(&ctx, req, &resp).ok());
  EXPECT_EQ(registry_->num_variables(), 0u);
  for (RecordingShard& shard : shards_) {
    EXPECT_TRUE(shard.created().empty());
    const std::vector<std::string> deleted = shard.deleted();
    // On each shard the slot's part goes before the primary's.
    for (size_t i = 0; i < deleted.size(); ++i) {
      if (deleted[i].rfind("t/part_", 0) == 0) {
        for (size_t j = i + 1; j < deleted.size(); ++j) {
          EXPECT_NE(deleted[j].rfind("t/Adagrad/", 0), 0u) << deleted[j];
        }
      }
    }
  }
}

TEST_F(CoordinatorEmbeddingTest, ACheckpointsMetaDeclaresItsTablesAgainUnchanged) {
  VariableDeclaration d = Table("t", 8, 3);
  d.mutable_embedding()->set_steps_to_live(500);
  d.add_collections("features");
  ASSERT_TRUE(Get(d).ok());
  ASSERT_TRUE(Get(Slot("t/Adagrad", "t")).ok());
  // The .psd-meta as a save writes it and a restore reads it.
  CheckpointMeta meta;
  for (const VariableDef& def : registry_->List("")) *meta.add_variables() = def;
  auto bytes = SerializeChecked(meta, "test meta");
  ASSERT_TRUE(bytes.ok());
  CheckpointMeta read;
  ASSERT_TRUE(read.ParseFromString(*bytes));
  const VariableDef saved_table = *registry_->Lookup("t");
  const VariableDef saved_slot = *registry_->Lookup("t/Adagrad");
  for (RecordingShard& shard : shards_) {
    for (const auto& [name, req] : shard.created()) {
      DeleteVariableRequest del;
      del.set_name(name);
      DeleteVariableResponse ignored;
      grpc::ServerContext sctx;
      shard.DeleteVariable(&sctx, &del, &ignored);
    }
  }

  Start();  // another coordinator, with an empty registry
  ASSERT_TRUE(service_->DeclareFromMeta(read).ok());
  for (const VariableDef* saved : {&saved_table, &saved_slot}) {
    auto def = registry_->Lookup(saved->name());
    ASSERT_TRUE(def.ok()) << def.status();
    EXPECT_EQ(def->embedding().SerializeAsString(), saved->embedding().SerializeAsString());
    EXPECT_EQ(def->initializer().SerializeAsString(), saved->initializer().SerializeAsString());
    EXPECT_EQ(def->dtype(), saved->dtype());
    EXPECT_EQ(def->partitioned(), saved->partitioned());
    EXPECT_EQ(def->parts_size(), saved->parts_size());
    EXPECT_EQ(def->trainable(), saved->trainable());
    EXPECT_EQ(std::vector<std::string>(def->collections().begin(), def->collections().end()),
              std::vector<std::string>(saved->collections().begin(), saved->collections().end()));
  }
  const VariableDef slot = *registry_->Lookup("t/Adagrad");
  const VariableDef table = *registry_->Lookup("t");
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(slot.parts(k).shard_id(), table.parts(k).shard_id());
    auto created = shards_[slot.parts(k).shard_id()].created();
    ASSERT_EQ(created.count(slot.parts(k).name()), 1u);
    EXPECT_EQ(created[slot.parts(k).name()].embedding().slot_of(), table.parts(k).name());
    EXPECT_EQ(created[table.parts(k).name()].embedding().steps_to_live(), 500);
  }
}

}  // namespace
}  // namespace psd
