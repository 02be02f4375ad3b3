// Crash points of a live part move: the coordinator is killed (SIGKILL) at
// each step of a move in turn (PSD_CRASH_AT=N, counted once the test's arm
// file exists: every write and sync of its registry log and each named step
// of the move), then restarted. Afterwards the part has exactly one owner,
// the one the registry names, it holds every acknowledged write, and it
// takes new ones: a move either completes after the restart or leaves the
// part whole on its source.
#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Session;
using client::Variable;

class PartMoveCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/psd_move_crash_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    arm_ = dir_ + "/arm";
    setenv("PSD_CRASH_ARM_FILE", arm_.c_str(), 1);
    unsetenv("PSD_CRASH_AT");
    ckpt_ = dir_ + "/ckpt";
    std::filesystem::create_directories(ckpt_);
    TestClusterOptions options;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--liveness-timeout", "1",
                                "--checkpoint-dir", ckpt_};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    ASSERT_NO_FATAL_FAILURE(Connect());
  }
  void TearDown() override {
    session_.reset();
    cluster_.reset();
    unsetenv("PSD_CRASH_ARM_FILE");
    unsetenv("PSD_CRASH_AT");
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  void Connect() {
    session_.reset();
    PSD_ASSERT_OK_AND_ASSIGN(session_, Session::Open(cluster_->coordinator_address()));
    GetVariableOptions c;
    c.initial_value = Tensor::Scalar<int64_t>(0);
    c.initialize = true;
    c.reuse = REUSE_AUTO;
    PSD_ASSERT_OK_AND_ASSIGN(counter_, session_->GetVariable("counter", c));
  }

  std::unique_ptr<Coordinator::Stub> CoordinatorStub() {
    return Coordinator::NewStub(
        grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials()));
  }
  // Whether the registry marks `counter` lost (its shard restarted without it).
  bool Lost() {
    LookupVariableRequest req;
    req.set_name("counter");
    LookupVariableResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return CoordinatorStub()->LookupVariable(&ctx, req, &resp).ok() &&
           resp.handle().parts(0).lost();
  }
  // The shard the registry places `counter` on (-1 if it cannot say).
  int32_t Placed() {
    LookupVariableRequest req;
    req.set_name("counter");
    LookupVariableResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!CoordinatorStub()->LookupVariable(&ctx, req, &resp).ok()) return -1;
    return resp.handle().parts(0).shard_id();
  }
  // Whether shard k serves `counter` (lists it as its own).
  bool Holds(int k) {
    auto stub = Shard::NewStub(
        grpc::CreateChannel(cluster_->shard_address(k), grpc::InsecureChannelCredentials()));
    ListVariablesRequest req;
    req.set_prefix("counter");
    ListVariablesResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!stub->ListVariables(&ctx, req, &resp).ok()) return false;
    for (const auto& v : resp.variables()) {
      if (v.name() == "counter") return true;
    }
    return false;
  }
  absl::Status Move(int32_t to) {
    MovePartRequest req;
    req.set_part("counter");
    req.set_target_shard(to);
    MovePartResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return FromGrpcStatus(CoordinatorStub()->MovePart(&ctx, req, &resp));
  }
  void RestartCoordinator(int n) {
    if (n > 0) {
      setenv("PSD_CRASH_AT", std::to_string(n).c_str(), 1);
    } else {
      unsetenv("PSD_CRASH_AT");
    }
    ASSERT_TRUE(IsOk(cluster_->RestartCoordinator()));
    unsetenv("PSD_CRASH_AT");
    ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60))));
    ASSERT_NO_FATAL_FAILURE(Connect());
  }

  std::string dir_;
  std::string ckpt_;
  std::string arm_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
  Variable counter_;
};

TEST_F(PartMoveCrashTest, ACoordinatorKilledAtAnyStepOfAMoveLeavesOneOwnerWithEveryWrite) {
  int64_t acked = 0;
  int points = 0;
  for (int n = 1; n <= 60; ++n) {
    RestartCoordinator(n);
    if (HasFatalFailure()) return;
    ASSERT_TRUE(IsOk(counter_.AssignAdd(Tensor::Scalar<int64_t>(1))));
    ++acked;
    int32_t from = Placed();
    ASSERT_GE(from, 0);
    std::ofstream(arm_) << "armed";
    absl::Status moved = Move(1 - from);
    if (absl::IsAborted(moved)) {
      // An earlier move the last crash left unfinished completed first.
      from = Placed();
      moved = Move(1 - from);
    }
    std::filesystem::remove(arm_);
    if (moved.ok()) break;  // past the move's last crash point: all covered
    ++points;
    std::fprintf(stderr, "crash point %d: %s\n", n, moved.ToString().c_str());
    const std::string when = absl::StrCat("coordinator killed at crash point ", n,
                                          " of a move from shard ", from, ": ", moved.ToString());
    RestartCoordinator(0);
    if (HasFatalFailure()) return;
    // The restarted coordinator finishes the move one way or the other; the
    // part is then served by exactly the shard the registry names.
    int32_t owner = -1;
    bool settled = false;
    for (int attempt = 0; attempt < 300 && !settled; ++attempt) {
      owner = Placed();
      settled = owner >= 0 && Holds(owner) && !Holds(1 - owner);
      if (!settled) absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(settled) << when << "; shard 0 holds it: " << Holds(0)
                         << ", shard 1: " << Holds(1) << ", placed on " << owner;
    auto value = counter_.Read();
    ASSERT_TRUE(value.ok()) << when << ": " << value.status();
    EXPECT_EQ(value->data<int64_t>()[0], acked) << when;
    ASSERT_TRUE(IsOk(counter_.AssignAdd(Tensor::Scalar<int64_t>(1)))) << when;
    ++acked;
  }
  EXPECT_GE(points, 5) << "the move has at least its five named steps";
  auto value = counter_.Read();
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->data<int64_t>()[0], acked);
}


// A shard killed (SIGKILL) at a random moment of a move, the source or the
// target in turn, while a trainer counts: afterwards the part has one owner.
// If that owner survived, the part holds every acknowledged increment and at
// most the ones whose outcome the trainer never learned; if it was the
// killed shard, the part is lost (as for any shard that restarts) and comes
// back from the checkpoint taken before the move.
TEST_F(PartMoveCrashTest, AShardKilledDuringAMoveLeavesThePartWithOneOwner) {
  PSD_ASSERT_OK_AND_ASSIGN(auto saver, client::Saver::Create(cluster_->coordinator_address()));
  // The trainer gives an op up after a few seconds (an op to a killed shard
  // would otherwise retry until its budget ends, holding the test).
  client::SessionOptions quick;
  quick.shard.retry_budget = absl::Seconds(2);
  PSD_ASSERT_OK_AND_ASSIGN(auto trainer, Session::Open(cluster_->coordinator_address(), quick));
  GetVariableOptions attach;
  attach.initial_value = Tensor::Scalar<int64_t>(0);
  attach.reuse = REUSE_AUTO;
  PSD_ASSERT_OK_AND_ASSIGN(Variable counted, trainer->GetVariable("counter", attach));
  std::mt19937 rng(20261206);
  // Bounded in time: as many kills as fit (at least 10, up to 30).
  const absl::Time give_up = absl::Now() + absl::Seconds(100);
  int kills = 0, lost = 0, intact = 0;
  for (int i = 0; i < 30 && absl::Now() < give_up; ++i) {
    ASSERT_TRUE(IsOk(counter_.Refresh()));
    auto before = counter_.Read();
    ASSERT_TRUE(before.ok()) << before.status();
    const int64_t saved_value = before->data<int64_t>()[0];
    PSD_ASSERT_OK_AND_ASSIGN(std::string prefix,
                             saver->Save(absl::StrCat(ckpt_, "/model.ckpt"), i));
    const int32_t from = Placed();
    ASSERT_GE(from, 0);
    const int victim = i % 2 == 0 ? from : 1 - from;
    std::atomic<bool> stop{false};
    int64_t acked = 0, unknown = 0;
    std::thread writer([&] {
      while (!stop.load()) {
        (counted.AssignAdd(Tensor::Scalar<int64_t>(1)).ok() ? acked : unknown) += 1;
      }
    });
    ASSERT_TRUE(IsOk(counted.Refresh()));
    std::thread mover([&] { (void)Move(1 - from); });
    absl::SleepFor(absl::Microseconds(std::uniform_int_distribution<int>(0, 20000)(rng)));
    ASSERT_TRUE(IsOk(cluster_->shard(victim)->Kill()));
    ++kills;
    mover.join();
    stop.store(true);
    writer.join();
    auto old = cluster_->ShardIncarnation(victim);
    std::vector<uint64_t> not_old(2, 0);
    not_old[victim] = old.ok() ? *old : 0;
    ASSERT_TRUE(IsOk(cluster_->RestartShard(victim)));
    ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60), not_old)));
    const std::string when = absl::StrCat("kill ", i, " of shard ", victim, " during a move from ",
                                          from, " (", acked, " acknowledged, ", unknown,
                                          " unknown)");
    // One owner, or none while lost; never two.
    int32_t owner = -1;
    bool settled = false;
    for (int attempt = 0; attempt < 300 && !settled; ++attempt) {
      owner = Placed();
      settled = owner >= 0 && !Holds(1 - owner) && (Holds(owner) || Lost());
      if (!settled) absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(settled) << when << "; shard 0 holds it: " << Holds(0) << ", shard 1: " << Holds(1);
    if (Lost()) {
      ++lost;
      EXPECT_EQ(owner, victim) << when;
      ASSERT_TRUE(IsOk(saver->Restore(prefix))) << when;
      ASSERT_TRUE(IsOk(counter_.Refresh()));
      auto restored = counter_.Read();
      ASSERT_TRUE(restored.ok()) << when << ": " << restored.status();
      EXPECT_EQ(restored->data<int64_t>()[0], saved_value) << when;
      continue;
    }
    ++intact;
    ASSERT_TRUE(IsOk(counter_.Refresh()));
    auto value = counter_.Read();
    ASSERT_TRUE(value.ok()) << when << ": " << value.status();
    const int64_t v = value->data<int64_t>()[0] - saved_value;
    EXPECT_GE(v, acked) << when;
    EXPECT_LE(v, acked + unknown) << when;
  }
  std::fprintf(stderr, "%d kills: %d parts lost with their shard, %d intact\n", kills, lost, intact);
  EXPECT_GE(kills, 10);
}

}  // namespace
}  // namespace integration
}  // namespace psd
