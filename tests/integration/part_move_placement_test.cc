// Where and how fast drain, rebalance and moves put parts (docs/moves.md):
// never on a shard without the memory for them, whatever its load; on a
// shard back from an outage at once; paced while trainers write. A cluster
// of three shards, the third with a small memory limit.
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Session;
using client::Variable;

class PartPlacementTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TestClusterOptions options;
    options.num_shards = 3;
    options.shard_args[0] = {"--move-rate-when-busy", "4MiB"};
    options.shard_args[1] = {"--move-rate-when-busy", "4MiB"};
    options.shard_args[2] = {"--memory-limit", "1MiB", "--move-rate-when-busy", "4MiB"};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    auto session = Session::Open(cluster_->coordinator_address());
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *std::move(session);
    stub_ = Coordinator::NewStub(
        grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials()));
  }

  template <typename Req, typename Resp>
  absl::Status Call(grpc::Status (Coordinator::Stub::*method)(grpc::ClientContext*, const Req&,
                                                              Resp*),
                    const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
    return FromGrpcStatus((stub_.get()->*method)(&ctx, req, resp));
  }
  absl::Status Move(const std::string& part, int32_t to) {
    MovePartRequest req;
    req.set_part(part);
    req.set_target_shard(to);
    MovePartResponse resp;
    return Call(&Coordinator::Stub::MovePart, req, &resp);
  }
  int32_t ShardOf(const std::string& name) {
    LookupVariableRequest req;
    req.set_name(name);
    LookupVariableResponse resp;
    absl::Status s = Call(&Coordinator::Stub::LookupVariable, req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return s.ok() ? resp.handle().parts(0).shard_id() : -1;
  }
  // A variable of `floats` elements counting up from `first`, on `shard`.
  Variable Make(const std::string& name, int64_t floats, float first, int32_t shard) {
    std::vector<float> v(static_cast<size_t>(floats));
    for (size_t i = 0; i < v.size(); ++i) v[i] = first + static_cast<float>(i);
    GetVariableOptions o;
    o.initial_value = *Tensor::FromVector<float>(TensorShape{floats}, v);
    o.initialize = true;
    auto made = session_->GetVariable(name, o);
    EXPECT_TRUE(made.ok()) << made.status();
    if (ShardOf(name) != shard) {
      absl::Status moved = Move(name, shard);
      EXPECT_TRUE(moved.ok()) << moved;
    }
    EXPECT_EQ(ShardOf(name), shard);
    return *made;
  }

  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Coordinator::Stub> stub_;
};

// The least loaded shard is the small one: a drain passes it over for the
// part it cannot hold, and the part lands whole on the shard that can.
TEST_F(PartPlacementTest, ADrainPutsNoPartOnAShardWithoutRoomForIt) {
  Variable big = Make("room/big", 512 * 1024, 0, 0);  // 2 MiB
  Make("room/small", 256, 7, 1);                       // shard 1 is busier than shard 2
  DrainShardRequest drain;
  drain.set_shard_id(0);
  DrainShardResponse drained;
  absl::Status s = Call(&Coordinator::Stub::DrainShard, drain, &drained);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(drained.moves_size(), 1);
  EXPECT_EQ(drained.moves(0).target_shard(), 1);
  EXPECT_EQ(ShardOf("room/big"), 1);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, big.Read());
  const std::vector<float> got = value.ToVector<float>();
  ASSERT_EQ(got.size(), 512u * 1024u);
  for (size_t i = 0; i < got.size(); i += 4099) ASSERT_EQ(got[i], static_cast<float>(i));

  // With nowhere to go, the part stays and the drain says why.
  drain.set_shard_id(1);
  s = Call(&Coordinator::Stub::DrainShard, drain, &drained);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("room/big"), std::string::npos) << s;
  EXPECT_NE(s.message().find("memory free"), std::string::npos) << s;
  EXPECT_EQ(ShardOf("room/big"), 1);
}

// A rebalance plan moves to a shard only what fits under its limit.
TEST_F(PartPlacementTest, ARebalancePlanFitsEachShardsLimit) {
  Make("plan/a", 300 * 1024, 0, 0);  // 1.2 MiB each, all on shard 0
  Make("plan/b", 300 * 1024, 0, 0);
  Make("plan/c", 300 * 1024, 0, 0);
  Make("plan/d", 300 * 1024, 0, 0);
  RebalanceRequest req;
  req.set_dry_run(true);
  RebalanceResponse plan;
  absl::Status s = Call(&Coordinator::Stub::Rebalance, req, &plan);
  ASSERT_TRUE(s.ok()) << s;
  int to_one = 0;
  for (const PlannedMove& p : plan.plan()) {
    EXPECT_NE(p.to_shard(), 2) << p.part() << " planned onto the 1 MiB shard";
    to_one += p.to_shard() == 1;
  }
  EXPECT_GE(to_one, 1);
}

// A shard that was down for a while and has just registered again takes a
// part at once: the coordinator's channel to it is not left backing off
// (gRPC's own backoff grows to two minutes).
TEST_F(PartPlacementTest, AShardBackFromAnOutageTakesAMoveAtOnce) {
  Variable v = Make("back/v", 1024, 3, 0);
  // The coordinator keeps talking to shard 1 (a move there and back), then
  // shard 1 is down long enough for reconnection attempts to back off.
  ASSERT_TRUE(Move("back/v", 1).ok());
  ASSERT_TRUE(Move("back/v", 0).ok());
  PSD_ASSERT_OK_AND_ASSIGN(uint64_t before, cluster_->ShardIncarnation(1));
  ASSERT_TRUE(cluster_->shard(1)->Kill().ok());
  // A move meanwhile fails (the target is down) and tries the channel.
  EXPECT_FALSE(Move("back/v", 1).ok());
  absl::SleepFor(absl::Seconds(8));
  ASSERT_TRUE(cluster_->RestartShard(1).ok());
  ASSERT_TRUE(cluster_->WaitForShards(absl::Seconds(60), {0, before}).ok());
  absl::Status moved = Move("back/v", 1);
  EXPECT_TRUE(moved.ok()) << moved;
  EXPECT_EQ(ShardOf("back/v"), 1);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  EXPECT_EQ(value.ToVector<float>()[1023], 3.0f + 1023);
}

// While a trainer writes, a move's snapshot copy yields: it takes at least
// what --move-rate-when-busy (4 MiB/s here) allows for its bytes.
TEST_F(PartPlacementTest, AMoveWhileTrainersWriteIsPacedToTheBusyRate) {
  Variable big = Make("pace/big", 4 << 20, 0, 0);  // 16 MiB
  Variable counter = Make("pace/counter", 1, 0, 0);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> adds{0};
  std::thread trainer([&] {
    while (!stop.load()) {
      if (counter.AssignAdd(*Tensor::FromVector<float>(TensorShape{1}, {1.0f})).ok()) {
        adds.fetch_add(1);
      }
    }
  });
  while (adds.load() < 10) absl::SleepFor(absl::Milliseconds(5));
  MovePartRequest req;
  req.set_part("pace/big");
  req.set_target_shard(1);
  MovePartResponse moved;
  absl::Status s = Call(&Coordinator::Stub::MovePart, req, &moved);
  stop.store(true);
  trainer.join();
  ASSERT_TRUE(s.ok()) << s;
  // The first 4 MiB chunk goes unpaced; the other 12 MiB take >= 3 s.
  EXPECT_GE(moved.seconds(), 2.5) << "a 16 MiB copy under writes was not paced";
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, big.Read());
  EXPECT_EQ(value.ToVector<float>()[(4 << 20) - 1], static_cast<float>((4 << 20) - 1));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor count, counter.Read());
  EXPECT_EQ(count.ToVector<float>()[0], static_cast<float>(adds.load()));
}

}  // namespace
}  // namespace integration
}  // namespace psd
