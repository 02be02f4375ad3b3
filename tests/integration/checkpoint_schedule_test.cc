// Checkpoints the coordinator takes and restores on its own, against a real
// coordinator and two shards: periodic saves by interval (with retention)
// and by global step, the final save on SIGTERM, a policy set at run time
// surviving a restart, `--restore-from` bringing a fresh cluster up, and the
// automatic restore of the parts a SIGKILLed shard lost. No timing
// assertions: everything polls with generous deadlines.
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/checkpoint_state.h"
#include "checkpoint/file_system.h"
#include "cluster_process.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using checkpoint::BundleReader;
using checkpoint::FileSystem;
using client::GetVariableOptions;
using client::Saver;
using client::Session;
using client::Variable;
using ::testing::HasSubstr;
namespace partitioners = client::partitioners;

constexpr absl::Duration kDeadline = absl::Seconds(60);

template <typename T>
Tensor Vec(TensorShape shape, std::vector<T> v) {
  return *Tensor::FromVector<T>(std::move(shape), v);
}

// Polls `done` until it holds or the deadline passes.
bool Eventually(const std::function<bool()>& done, absl::Duration timeout = kDeadline) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return done();
}

std::string Latest(const std::string& dir) {
  auto latest = checkpoint::LatestCheckpoint(FileSystem::Default(), dir, "");
  return latest.ok() ? *latest : std::string();
}

bool HasIndex(const std::string& prefix) {
  return FileSystem::Default()->FileExists(checkpoint::IndexFilename(prefix)).ok();
}

class CheckpointScheduleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_ckpt_sched_");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    session_.reset();
    cluster_.reset();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }
  void StartCluster(std::vector<std::string> extra) {
    TestClusterOptions options;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir_};
    options.coordinator_args.insert(options.coordinator_args.end(), extra.begin(), extra.end());
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    auto session = Session::Open(cluster_->coordinator_address());
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *std::move(session);
  }
  Variable Make(const std::string& name, const Tensor& value) {
    GetVariableOptions o;
    o.initial_value = value;
    o.initialize = true;
    auto v = session_->GetVariable(name, o);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : Variable();
  }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
};

TEST_F(CheckpointScheduleTest, IntervalSavesProduceCheckpointsAndRetentionApplies) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({"--checkpoint-interval", "1", "--max-to-keep", "2"}));
  Make("v", Vec<float>({4}, {1, 2, 3, 4}));
  const std::string fourth = absl::StrCat(dir_, "/model.ckpt-4");
  ASSERT_TRUE(Eventually([&] { return HasIndex(fourth) && Latest(dir_) >= fourth; }))
      << "latest: " << Latest(dir_);
  // max_to_keep 2: the first ones are gone, the state file lists two.
  ASSERT_TRUE(Eventually([&] { return !HasIndex(absl::StrCat(dir_, "/model.ckpt-1")); }));
  auto state = checkpoint::GetCheckpointState(FileSystem::Default(), dir_, "");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->all_model_checkpoint_paths_size(), 2);
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(Latest(dir_)));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor v, reader->ReadTensor("v"));
  EXPECT_EQ(v, Vec<float>({4}, {1, 2, 3, 4}));
}

TEST_F(CheckpointScheduleTest, SavesWhenTheGlobalStepCrossesAMultipleOfN) {
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({"--every-n-steps", "5", "--global-step", "global_step"}));
  Variable step = Make("global_step", Tensor::Scalar<int64_t>(0));
  Make("w", Vec<float>({2}, {0.5, 2}));
  ASSERT_TRUE(step.Assign(Tensor::Scalar<int64_t>(7)).ok());
  const std::string at7 = absl::StrCat(dir_, "/model.ckpt-7");
  ASSERT_TRUE(Eventually([&] { return Latest(dir_) == at7; })) << Latest(dir_);
  // 9 crosses no multiple of 5 since 7; 12 crosses 10.
  ASSERT_TRUE(step.Assign(Tensor::Scalar<int64_t>(9)).ok());
  absl::SleepFor(absl::Seconds(1.5));
  ASSERT_TRUE(step.Assign(Tensor::Scalar<int64_t>(12)).ok());
  const std::string at12 = absl::StrCat(dir_, "/model.ckpt-12");
  ASSERT_TRUE(Eventually([&] { return Latest(dir_) == at12; })) << Latest(dir_);
  EXPECT_FALSE(HasIndex(absl::StrCat(dir_, "/model.ckpt-9")));
  EXPECT_FALSE(HasIndex(absl::StrCat(dir_, "/model.ckpt-0")));
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(at12));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor s, reader->ReadTensor("global_step"));
  EXPECT_EQ(s, Tensor::Scalar<int64_t>(12));
}

TEST_F(CheckpointScheduleTest, FinalSaveOnSigterm) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({"--save-on-shutdown"}));
  Variable v = Make("v", Vec<float>({3}, {1, 2, 3}));
  ASSERT_TRUE(v.Assign(Vec<float>({3}, {7, 8, 9})).ok());
  EXPECT_EQ(Latest(dir_), "");
  ASSERT_EQ(kill(cluster_->coordinator()->pid(), SIGTERM), 0);
  auto status = cluster_->coordinator()->Wait(kDeadline);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
  const std::string latest = Latest(dir_);
  ASSERT_FALSE(latest.empty());
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(latest));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor t, reader->ReadTensor("v"));
  EXPECT_EQ(t, Vec<float>({3}, {7, 8, 9}));
}

TEST_F(CheckpointScheduleTest, PolicySetAtRunTimeSurvivesACoordinatorRestart) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({"--max-to-keep", "3"}));
  auto call = [&](const CheckpointPolicyRequest& req, CheckpointPolicyResponse* resp) {
    auto stub = Coordinator::NewStub(
        grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub->Policy(&ctx, req, resp);
  };
  auto policy = [&](std::optional<int> set) -> CheckpointPolicy {
    CheckpointPolicyRequest req;
    if (set) req.mutable_set()->set_max_to_keep(*set);
    CheckpointPolicyResponse resp;
    grpc::Status s = call(req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.policy();
  };
  EXPECT_EQ(policy(std::nullopt).max_to_keep(), 3);
  EXPECT_EQ(policy(7).max_to_keep(), 7);
  // Values no policy can have are refused, naming them; nothing changes.
  for (const auto& [max_to_keep, hours, named] :
       {std::tuple<int, double, const char*>{-1, 2, "max_to_keep must be >= 0"},
        {5, 0, "keep_checkpoint_every_n_hours must be a positive number"},
        {5, std::nan(""), "keep_checkpoint_every_n_hours must be a positive number"},
        {5, -std::numeric_limits<double>::infinity(), "got -inf"}}) {
    CheckpointPolicyRequest req;
    req.mutable_set()->set_max_to_keep(max_to_keep);
    req.mutable_set()->set_keep_checkpoint_every_n_hours(hours);
    CheckpointPolicyResponse resp;
    const grpc::Status s = call(req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << named;
    EXPECT_THAT(s.error_message(), HasSubstr(named));
  }
  EXPECT_EQ(policy(std::nullopt).max_to_keep(), 7);
  ASSERT_TRUE(cluster_->RestartCoordinator().ok());
  EXPECT_EQ(policy(std::nullopt).max_to_keep(), 7);
}

TEST_F(CheckpointScheduleTest, RestoreFromBringsAFreshClusterUp) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  GetVariableOptions po;
  po.dtype = DT_FLOAT;
  po.shape = TensorShape({10, 3});
  po.partitioner = partitioners::FixedSize(2);
  PSD_ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("scope/w", po));
  std::vector<float> wv(30);
  for (int k = 0; k < 30; ++k) wv[k] = 0.5f * k;
  const Tensor w0 = Vec<float>({10, 3}, wv);
  ASSERT_TRUE(w.Assign(w0).ok());
  GetVariableOptions co;
  co.initial_value = Tensor::Scalar<int64_t>(41);
  co.initialize = true;
  co.trainable = false;
  co.collections = {"variables", "my_collection"};
  PSD_ASSERT_OK_AND_ASSIGN(Variable c, session_->GetVariable("count", co));
  PSD_ASSERT_OK_AND_ASSIGN(auto saver, Saver::Create(cluster_->coordinator_address()));
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver->Save(dir_ + "/model.ckpt", 3));
  saver.reset();
  session_.reset();
  cluster_.reset();

  // A new cluster: new state directory, empty shards. The cluster file
  // names both shards, so the coordinator waits for them before placing.
  const std::string config = dir_ + "/cluster.yaml";
  {
    std::ofstream out(config);
    out << "shards:\n  - {id: 0}\n  - {id: 1}\n";
  }
  ASSERT_NO_FATAL_FAILURE(StartCluster({"--config", config, "--restore-from", dir_}));
  Variable w2, c2;
  std::string last;
  ASSERT_TRUE(Eventually([&] {
    auto a = session_->LookupVariable("scope/w");
    auto b = session_->LookupVariable("count");
    if (!a.ok() || !b.ok()) {
      last = (a.ok() ? b.status() : a.status()).ToString();
      return false;
    }
    auto av = a->Read();
    auto bv = b->Read();
    if (!av.ok() || !bv.ok()) {
      last = (av.ok() ? bv.status() : av.status()).ToString();
      return false;
    }
    if (!(*av == w0) || !(*bv == Tensor::Scalar<int64_t>(41))) {
      last = "values differ";
      return false;
    }
    w2 = *a;
    c2 = *b;
    return true;
  })) << "the restored variables never showed up with their values: " << last;
  EXPECT_EQ(w2.partitions(), (std::vector<int64_t>{2, 1}));
  ASSERT_EQ(w2.parts().size(), 2u);
  EXPECT_NE(w2.parts()[0].shard_id, w2.parts()[1].shard_id);
  EXPECT_TRUE(w2.trainable());
  EXPECT_FALSE(c2.trainable());
  const auto cols = c2.collections();
  EXPECT_NE(std::find(cols.begin(), cols.end(), "my_collection"), cols.end());
  PSD_ASSERT_OK_AND_ASSIGN(auto in_collection, session_->ListVariables("my_collection"));
  ASSERT_EQ(in_collection.size(), 1u);
  EXPECT_EQ(in_collection[0].name(), "count");
}

TEST_F(CheckpointScheduleTest, LostPartsOfARestartedShardAreRestoredAutomatically) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({"--restore-lost"}));
  GetVariableOptions po;
  po.dtype = DT_FLOAT;
  po.shape = TensorShape({4, 2});
  po.partitioner = partitioners::FixedSize(2);
  PSD_ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("w", po));
  const Tensor saved = Vec<float>({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  ASSERT_TRUE(w.Assign(saved).ok());
  PSD_ASSERT_OK_AND_ASSIGN(auto saver, Saver::Create(cluster_->coordinator_address()));
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver->Save(dir_ + "/model.ckpt", 1));
  // Training goes on after the save.
  const Tensor later = Vec<float>({4, 2}, {10, 20, 30, 40, 50, 60, 70, 80});
  ASSERT_TRUE(w.Assign(later).ok());
  const auto parts = w.parts();
  ASSERT_EQ(parts.size(), 2u);
  const int killed = parts[0].shard_id;
  ASSERT_TRUE(parts[1].shard_id != killed) << "both parts on one shard";

  ASSERT_TRUE(cluster_->RestartShard(killed).ok());
  // The killed shard's part comes back from the checkpoint; the other part
  // keeps its newer value.
  const Tensor expected = Vec<float>({4, 2}, {1, 2, 3, 4, 50, 60, 70, 80});
  Tensor got;
  ASSERT_TRUE(Eventually([&] {
    (void)w.Refresh();
    auto t = w.Read();
    if (!t.ok()) return false;
    got = *t;
    return got == expected;
  })) << "last read: " << got.shape().ToString();
}

}  // namespace
}  // namespace integration
}  // namespace psd
