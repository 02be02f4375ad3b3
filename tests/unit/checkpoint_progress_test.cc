// Progress of saves and restores: a shard's SaveShard in steps of max_bytes
// writes the same data file as in one call, and the coordinator's
// CheckpointProgress rpc reports a save and a restore by progress_id.
#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "coordinator/coordinator_service.h"
#include "device/device.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "../common/temp_dir.h"
#include "gtest/gtest.h"
#include "psd/wire.h"
#include "shard/shard_checkpoint.h"
#include "shard/shard_service.h"
#include "shard/variable_store.h"
#include "store_test_util.h"
#include "in_process_shard.h"

namespace psd {
namespace {

using store_test::Vec;

using ::testing::HasSubstr;

std::string MakeTempDir() { return testing_files::MakeTempDir("ckpt_progress"); }
using testing_files::ListDir;
using testing_files::RemoveDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ShardSaveStepsTest : public ::testing::Test {
 protected:
  ShardSaveStepsTest()
      : device_(NewCpuDevice()),
        store_(device_.get(), VariableStoreOptions()),
        checkpointer_(&store_),
        dir_(MakeTempDir()) {}
  ~ShardSaveStepsTest() override { RemoveDir(dir_); }

  void SetUp() override {
    std::vector<float> a(3000);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.5f;
    Create("a", Vec<float>({3000}, a));
    TensorProto s;
    TensorToProto(*Tensor::FromStrings(TensorShape({3}), {"x", "", "yz"}), &s);
    Create("s", s);
    Create("b", Vec<double>({10}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  }

  void Create(const std::string& name, const TensorProto& value) {
    ASSERT_TRUE(store_test::CreateWithValue(&store_, name, value).ok()) << name;
  }

  void Fence(uint64_t id) {
    FenceRequest req;
    req.set_fence_id(id);
    FenceResponse resp;
    ASSERT_TRUE(checkpointer_.Fence(req, &resp).ok());
    UnfenceRequest un;
    un.set_fence_id(id);
    UnfenceResponse un_resp;
    ASSERT_TRUE(checkpointer_.Unfence(un, &un_resp).ok());
  }

  SaveShardRequest SaveRequest(uint64_t fence, const std::string& name, int64_t max_bytes) {
    SaveShardRequest req;
    req.set_fence_id(fence);
    req.set_prefix(dir_ + "/" + name);
    req.set_shard_index(0);
    req.set_num_shards(1);
    req.set_chunk_bytes(1000);
    req.set_max_bytes(max_bytes);
    for (const char* part : {"a", "s", "b"}) {
      SavePart* p = req.add_parts();
      p->set_name(part);
      p->set_full_name(part);
    }
    return req;
  }

  std::unique_ptr<Device> device_;
  VariableStore store_;
  ShardCheckpointer checkpointer_;
  const std::string dir_;
};

TEST_F(ShardSaveStepsTest, StepsReportProgressAndWriteTheSameFileAsOneCall) {
  Fence(1);
  SaveShardRequest req = SaveRequest(1, "steps", 5000);
  SaveShardResponse resp;
  std::vector<int64_t> progress;
  for (int calls = 0;; ++calls) {
    ASSERT_LT(calls, 20);
    resp.Clear();
    absl::Status s = checkpointer_.SaveShard(req, &resp);
    ASSERT_TRUE(s.ok()) << s;
    // 12000 float bytes, 3 string characters, 80 double bytes.
    EXPECT_EQ(resp.total_bytes(), 12000 + 3 + 80);
    if (!resp.more()) break;
    EXPECT_TRUE(resp.entries().empty());
    progress.push_back(resp.data_bytes());
  }
  // 5000 bytes a call, in 1000-byte chunks: 5000, 10000, then the rest.
  EXPECT_THAT(progress, ::testing::ElementsAre(5000, 10000));
  EXPECT_EQ(resp.entries_size(), 3);

  Fence(2);
  SaveShardResponse once;
  ASSERT_TRUE(checkpointer_.SaveShard(SaveRequest(2, "once", 0), &once).ok());
  EXPECT_FALSE(once.more());
  EXPECT_EQ(once.data_bytes(), resp.data_bytes());
  EXPECT_EQ(ReadFile(resp.data_file()), ReadFile(once.data_file()));
  ASSERT_EQ(once.entries_size(), resp.entries_size());
  for (int i = 0; i < once.entries_size(); ++i) {
    EXPECT_EQ(once.entries(i).SerializeAsString(), resp.entries(i).SerializeAsString());
  }
}

TEST_F(ShardSaveStepsTest, ResumeWithOtherPartsFailsAndDropsTheSave) {
  Fence(1);
  SaveShardResponse resp;
  ASSERT_TRUE(checkpointer_.SaveShard(SaveRequest(1, "steps", 5000), &resp).ok());
  ASSERT_TRUE(resp.more());
  SaveShardRequest other = SaveRequest(1, "steps", 5000);
  other.mutable_parts()->RemoveLast();
  absl::Status s = checkpointer_.SaveShard(other, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("3 parts"));
  // The snapshot and the temp data file are gone.
  s = checkpointer_.SaveShard(SaveRequest(1, "steps", 5000), &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_TRUE(ListDir(dir_).empty()) << ::testing::PrintToString(ListDir(dir_));
}

// A coordinator and two shards over in-process gRPC.

class CheckpointProgressTest : public ::testing::Test {
 protected:
  CheckpointProgressTest() : dir_(MakeTempDir()) {}
  ~CheckpointProgressTest() override { RemoveDir(dir_); }

  void SetUp() override {
    registry_ = std::move(Registry::Open({})).value();
    CoordinatorServiceOptions options;
    options.checkpoint.dir = dir_;
    // Small steps: several SaveShard calls and restore batches per shard.
    options.checkpoint.progress_step_bytes = 4096;
    service_ = std::make_unique<CoordinatorService>(registry_.get(), options);
    server_ = ServeInProcess(service_.get(), &stub_);
    for (int i = 0; i < 2; ++i) {
      shards_.push_back(std::make_unique<InProcessShard>(i, 100 * (i + 1)));
      ASSERT_TRUE(shards_[i]->Register(stub_.get()).ok());
    }
    grpc::ClientContext ctx;
    OpenSessionRequest open;
    open.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    OpenSessionResponse session;
    ASSERT_TRUE(stub_->OpenSession(&ctx, open, &session).ok());
    // 64 KiB of floats in 4 parts over the two shards.
    VariableDeclaration d;
    d.set_name("emb");
    d.set_dtype(DT_FLOAT);
    d.mutable_shape()->add_dims(256);
    d.mutable_shape()->add_dims(64);
    d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(4);
    d.mutable_initializer()->mutable_random_uniform()->set_maxval(1);
    d.set_initialize(true);
    d.set_declared_at("test");
    grpc::ClientContext get_ctx;
    GetVariableRequest get;
    get.set_session_id(session.session_id());
    *get.mutable_declaration() = d;
    GetVariableResponse got;
    grpc::Status s = stub_->GetVariable(&get_ctx, get, &got);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  void TearDown() override { server_->Shutdown(); }

  CheckpointProgressResponse Progress(uint64_t id) {
    grpc::ClientContext ctx;
    CheckpointProgressRequest req;
    req.set_progress_id(id);
    CheckpointProgressResponse resp;
    EXPECT_TRUE(stub_->CheckpointProgress(&ctx, req, &resp).ok());
    return resp;
  }

  const std::string dir_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Coordinator::Stub> stub_;
  std::vector<std::unique_ptr<InProcessShard>> shards_;
};

TEST_F(CheckpointProgressTest, SaveAndRestoreAreReportedByProgressId) {
  EXPECT_FALSE(Progress(42).found());

  grpc::ClientContext save_ctx;
  SaveCheckpointRequest save;
  save.set_global_step(7);
  save.set_progress_id(42);
  SaveCheckpointResponse saved;
  grpc::Status s = stub_->Save(&save_ctx, save, &saved);
  ASSERT_TRUE(s.ok()) << s.error_message();
  CheckpointProgressResponse p = Progress(42);
  EXPECT_TRUE(p.found());
  EXPECT_TRUE(p.finished());
  EXPECT_EQ(p.operation(), "save");
  EXPECT_EQ(p.phase(), "done");
  EXPECT_EQ(p.prefix(), saved.prefix());
  EXPECT_EQ(p.total_bytes(), 256 * 64 * 4);
  EXPECT_EQ(p.done_bytes(), p.total_bytes());
  EXPECT_GE(p.seconds(), 0);

  grpc::ClientContext restore_ctx;
  RestoreCheckpointRequest restore;
  restore.set_progress_id(43);
  RestoreCheckpointResponse restored;
  s = stub_->Restore(&restore_ctx, restore, &restored);
  ASSERT_TRUE(s.ok()) << s.error_message();
  p = Progress(43);
  EXPECT_EQ(p.operation(), "restore");
  EXPECT_EQ(p.phase(), "done");
  EXPECT_EQ(p.prefix(), saved.prefix());
  EXPECT_EQ(p.total_bytes(), 256 * 64 * 4);
  EXPECT_EQ(p.done_bytes(), p.total_bytes());
  EXPECT_EQ(restored.bytes(), p.total_bytes());
  // The save's entry is still there; an untracked save (id 0) adds none.
  EXPECT_EQ(Progress(42).operation(), "save");
  EXPECT_FALSE(Progress(0).found());
}

TEST_F(CheckpointProgressTest, FailedSaveIsReportedWithItsError) {
  grpc::ClientContext ctx;
  SaveCheckpointRequest save;
  save.set_prefix(dir_ + "/no/such/dir/model.ckpt");
  save.set_progress_id(9);
  SaveCheckpointResponse saved;
  EXPECT_FALSE(stub_->Save(&ctx, save, &saved).ok());
  CheckpointProgressResponse p = Progress(9);
  EXPECT_TRUE(p.finished());
  EXPECT_EQ(p.phase(), "failed");
  EXPECT_THAT(p.error(), HasSubstr("doesn't exist"));
}

}  // namespace
}  // namespace psd
