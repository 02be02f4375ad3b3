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
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
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
    auto started = TestCluster::Start();
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

}  // namespace
}  // namespace integration
}  // namespace psd
