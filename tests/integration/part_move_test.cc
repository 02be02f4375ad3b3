// Live part moves against a real coordinator and two shards (docs/moves.md):
// a part moves with its value, its optimizer slots and its handle; trainers
// that keep writing while parts move back and forth lose no acknowledged
// update and apply none twice; a move that cannot happen leaves the part
// where it was. No timing is asserted: loops are bounded by op counts.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/optimizer.h"
#include "psd/session.h"
#include "shared_cluster_test.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Optimizer;
using client::Session;
using client::Variable;
namespace partitioners = client::partitioners;
namespace init = client::init;
namespace opt = client::opt;

class PartMoveTest : public SharedClusterTest<PartMoveTest> {
 protected:
  // psctl vars move, as the coordinator's RPC.
  absl::StatusOr<MovePartResponse> Move(const std::string& part, int32_t to) {
    auto stub = Coordinator::NewStub(
        grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials()));
    MovePartRequest req;
    req.set_part(part);
    req.set_target_shard(to);
    MovePartResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
    absl::Status s = FromGrpcStatus(stub->MovePart(&ctx, req, &resp));
    if (!s.ok()) return s;
    return resp;
  }
  // The shard part `index` of `name` is placed on, as the coordinator says.
  int32_t ShardOf(const std::string& name, int index) {
    auto stub = Coordinator::NewStub(
        grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials()));
    LookupVariableRequest req;
    req.set_name(name);
    LookupVariableResponse resp;
    grpc::ClientContext ctx;
    absl::Status s = FromGrpcStatus(stub->LookupVariable(&ctx, req, &resp));
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok() || index >= resp.handle().parts_size()) return -1;
    return resp.handle().parts(index).shard_id();
  }
};

Tensor Floats(TensorShape shape, float first) {
  std::vector<float> v(static_cast<size_t>(shape.num_elements()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = first + static_cast<float>(i);
  return *Tensor::FromVector<float>(std::move(shape), v);
}

TEST_F(PartMoveTest, APartMovesWithItsValueItsSlotsAndItsHandle) {
  GetVariableOptions o;
  o.dtype = DT_FLOAT;
  o.shape = TensorShape{40, 4};
  o.partitioner = partitioners::FixedSize(2);
  PSD_ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("moved/w", o));
  ASSERT_TRUE(IsOk(w.Assign(Floats({40, 4}, 0))));
  Optimizer momentum(*session_, opt::Momentum{});
  ASSERT_TRUE(IsOk(momentum.ApplyGradients({{Floats({40, 4}, 1), w}})));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor before, w.Read());

  const int32_t from = ShardOf("moved/w", 0);
  const int32_t to = 1 - from;
  PSD_ASSERT_OK_AND_ASSIGN(MovePartResponse moved, Move("moved/w/part_0", to));
  // The part and its Momentum slot's part went together.
  ASSERT_EQ(moved.parts_size(), 2);
  EXPECT_EQ(moved.parts(0), "moved/w/part_0");
  EXPECT_EQ(moved.parts(1), "moved/w/Momentum/part_0");
  EXPECT_EQ(moved.source_shard(), from);
  EXPECT_EQ(moved.target_shard(), to);
  EXPECT_EQ(ShardOf("moved/w", 0), to);

  // The old handle still works: the source answers "stale handle", the
  // client refreshes and finds the part on its new shard.
  PSD_ASSERT_OK_AND_ASSIGN(Tensor after, w.Read());
  EXPECT_EQ(after.DebugString(200), before.DebugString(200));
  // The slot moved too: the next apply finds it beside the part.
  ASSERT_TRUE(IsOk(momentum.ApplyGradients({{Floats({40, 4}, 1), w}})));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor stepped, w.Read());
  EXPECT_NE(stepped.DebugString(200), after.DebugString(200));
  // And back again.
  PSD_ASSERT_OK_AND_ASSIGN(MovePartResponse back, Move("moved/w/part_0", from));
  EXPECT_EQ(ShardOf("moved/w", 0), from);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor home, w.Read());
  EXPECT_EQ(home.DebugString(200), stepped.DebugString(200));
}

TEST_F(PartMoveTest, AMoveThatCannotHappenLeavesThePartWhereItWas) {
  GetVariableOptions o;
  o.initial_value = Floats({6}, 1);
  o.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("stays/v", o));
  const int32_t home = ShardOf("stays/v", 0);

  EXPECT_EQ(Move("stays/v", 7).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Move("stays/v", home).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Move("stays/nothing", 1 - home).status().code(), absl::StatusCode::kNotFound);
  // A slot moves with its variable, never alone.
  Optimizer momentum(*session_, opt::Momentum{});
  ASSERT_TRUE(IsOk(momentum.ApplyGradients({{Floats({6}, 0), v}})));
  absl::Status slot = Move("stays/v/Momentum", 1 - home).status();
  EXPECT_EQ(slot.code(), absl::StatusCode::kInvalidArgument) << slot;
  EXPECT_NE(slot.message().find("stays/v"), std::string::npos) << slot;
  // An uninitialized part has nothing to move yet.
  GetVariableOptions later;
  later.dtype = DT_FLOAT;
  later.shape = TensorShape{3};
  PSD_ASSERT_OK_AND_ASSIGN(Variable u, session_->GetVariable("stays/uninitialized", later));
  EXPECT_EQ(Move("stays/uninitialized", 1 - ShardOf("stays/uninitialized", 0)).status().code(),
            absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(ShardOf("stays/v", 0), home);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  EXPECT_EQ(value.shape(), TensorShape{6});
}

// Trainers keep counting while their parts move back and forth: every
// counter equals its trainer's acknowledged increments, and the sum of a
// partitioned variable equals the acknowledged scatter_adds.
TEST_F(PartMoveTest, NoAcknowledgedUpdateIsLostOrDoubledWhilePartsMove) {
  constexpr int kTrainers = 4;
  constexpr int kMoves = 24;
  constexpr int64_t kRows = 32;
  GetVariableOptions table;
  table.dtype = DT_FLOAT;
  table.shape = TensorShape{kRows, 2};
  table.partitioner = partitioners::FixedSize(2);
  table.initializer = init::Zeros();
  table.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable emb, session_->GetVariable("live/emb", table));
  std::vector<Variable> counters;
  for (int t = 0; t < kTrainers; ++t) {
    GetVariableOptions c;
    c.initial_value = Tensor::Scalar<int64_t>(0);
    c.initialize = true;
    PSD_ASSERT_OK_AND_ASSIGN(Variable counter,
                             session_->GetVariable(absl::StrCat("live/count_", t), c));
    counters.push_back(counter);
  }

  std::atomic<bool> stop{false};
  std::atomic<int64_t> scatters{0};
  std::vector<int64_t> counted(kTrainers, 0);
  absl::Mutex mu;
  std::vector<std::string> errors;
  std::vector<std::thread> trainers;
  for (int t = 0; t < kTrainers; ++t) {
    trainers.emplace_back([&, t] {
      auto session = Session::Open(cluster_->coordinator_address());
      if (!session.ok()) {
        absl::MutexLock lock(&mu);
        errors.push_back(session.status().ToString());
        return;
      }
      GetVariableOptions attach;
      attach.initial_value = Tensor::Scalar<int64_t>(0);
      auto counter = (*session)->GetVariable(absl::StrCat("live/count_", t), attach);
      auto e = (*session)->GetVariable("live/emb", table);
      if (!counter.ok() || !e.ok()) {
        absl::MutexLock lock(&mu);
        errors.push_back(counter.ok() ? e.status().ToString() : counter.status().ToString());
        return;
      }
      // Rows of both parts in each update.
      const Tensor rows = *Tensor::FromVector<int64_t>({2}, {t, kRows - 1 - t});
      const Tensor ones = *Tensor::FromVector<float>({2, 2}, {1, 1, 1, 1});
      for (int i = 0; i < 5000 && !stop.load(); ++i) {
        absl::Status s = counter->AssignAdd(Tensor::Scalar<int64_t>(1));
        if (s.ok()) {
          ++counted[t];
          s = e->ScatterAdd(rows, ones);
          if (s.ok()) scatters.fetch_add(1);
        }
        if (!s.ok()) {
          absl::MutexLock lock(&mu);
          errors.push_back(absl::StrCat("trainer ", t, ": ", s.ToString()));
          return;
        }
      }
    });
  }
  // Parts cycle between the shards while the trainers run.
  std::vector<std::string> parts = {"live/emb/part_0", "live/emb/part_1"};
  for (int t = 0; t < kTrainers; ++t) parts.push_back(absl::StrCat("live/count_", t));
  int moves = 0;
  for (int i = 0; i < kMoves; ++i) {
    const std::string& part = parts[i % parts.size()];
    const int index = part.rfind("/part_") != std::string::npos ? part.back() - '0' : 0;
    const std::string variable =
        index > 0 || part.rfind("/part_") != std::string::npos ? part.substr(0, part.rfind("/part_"))
                                                               : part;
    const int32_t from = ShardOf(variable, index);
    auto moved = Move(part, 1 - from);
    if (!moved.ok()) {
      ADD_FAILURE() << part << ": " << moved.status();
      break;
    }
    ++moves;
  }
  stop.store(true);
  for (auto& t : trainers) t.join();
  for (const std::string& e : errors) ADD_FAILURE() << e;
  EXPECT_EQ(moves, kMoves);

  for (int t = 0; t < kTrainers; ++t) {
    PSD_ASSERT_OK_AND_ASSIGN(Tensor value, counters[t].Read());
    EXPECT_EQ(value.data<int64_t>()[0], counted[t]) << "trainer " << t;
    EXPECT_GT(counted[t], 0);
  }
  PSD_ASSERT_OK_AND_ASSIGN(Tensor sum, emb.Read());
  double total = 0;
  for (float x : sum.ToVector<float>()) total += x;
  EXPECT_EQ(total, 4.0 * static_cast<double>(scatters.load()));
}

}  // namespace
}  // namespace integration
}  // namespace psd
