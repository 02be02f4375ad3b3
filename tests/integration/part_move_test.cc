// Live part moves against a real coordinator and two shards (docs/moves.md):
// a part moves with its value, its optimizer slots and its handle; trainers
// that keep writing while parts move back and forth lose no acknowledged
// update and apply none twice; a move that cannot happen leaves the part
// where it was; checkpoints saved while parts move hold one consistent cut
// each and restore to it. No timing is asserted: loops are bounded by op
// counts.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/bundle_reader.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "move_admin.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/optimizer.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/status.h"
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
  absl::StatusOr<MovePartResponse> Move(const std::string& part, int32_t to) {
    return MoveAdmin(cluster_->coordinator_address()).Move(part, to);
  }
  int32_t ShardOf(const std::string& name, int index) {
    return MoveAdmin(cluster_->coordinator_address()).PartOf(name, index).second;
  }
};

Tensor Floats(TensorShape shape, float first) {
  std::vector<float> v(static_cast<size_t>(shape.num_elements()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = first + static_cast<float>(i);
  return *Tensor::FromVector<float>(std::move(shape), v);
}

// A [40, 4] float variable in two parts, assigned 0, 1, 2, ..., with its
// Momentum slots made by one apply of `momentum`.
absl::StatusOr<Variable> TwoPartsWithMomentumSlots(Session* session, Optimizer* momentum,
                                                   const std::string& name) {
  GetVariableOptions o;
  o.dtype = DT_FLOAT;
  o.shape = TensorShape{40, 4};
  o.partitioner = partitioners::FixedSize(2);
  PSD_ASSIGN_OR_RETURN(Variable w, session->GetVariable(name, o));
  PSD_RETURN_IF_ERROR(w.Assign(Floats({40, 4}, 0)));
  PSD_RETURN_IF_ERROR(momentum->ApplyGradients({{Floats({40, 4}, 1), w}}));
  return w;
}

TEST_F(PartMoveTest, APartMovesWithItsValueItsSlotsAndItsHandle) {
  Optimizer momentum(*session_, opt::Momentum{});
  PSD_ASSERT_OK_AND_ASSIGN(Variable w,
                           TwoPartsWithMomentumSlots(session_.get(), &momentum, "moved/w"));
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

// MoveProgress (psctl's progress display) of a move and of a rebalance
// that carried a progress id: where each stands once it returned.
TEST_F(PartMoveTest, MoveProgressReportsTheMovesOfTheCallThatCarriedItsId) {
  Optimizer momentum(*session_, opt::Momentum{});
  PSD_ASSERT_OK_AND_ASSIGN(Variable w,
                           TwoPartsWithMomentumSlots(session_.get(), &momentum, "progress/w"));
  auto stub = Coordinator::NewStub(
      grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials()));
  auto progress = [&](uint64_t id) {
    MoveProgressRequest req;
    req.set_progress_id(id);
    MoveProgressResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(IsOk(FromGrpcStatus(stub->MoveProgress(&ctx, req, &resp))));
    return resp;
  };
  EXPECT_FALSE(progress(0x5eed).found());

  const int32_t from = ShardOf("progress/w", 0);
  MovePartRequest req;
  req.set_part("progress/w/part_0");
  req.set_target_shard(1 - from);
  req.set_progress_id(0x5eed);
  MovePartResponse moved;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(IsOk(FromGrpcStatus(stub->MovePart(&ctx, req, &moved))));
  }
  MoveProgressResponse p = progress(0x5eed);
  EXPECT_TRUE(p.found());
  EXPECT_TRUE(p.finished());
  EXPECT_EQ(p.moves_done(), 1);
  EXPECT_EQ(p.moves_planned(), 1);
  EXPECT_EQ(p.part(), "progress/w/part_0");
  EXPECT_EQ(p.source_shard(), from);
  EXPECT_EQ(p.target_shard(), 1 - from);
  EXPECT_EQ(p.phase(), "switching");
  // The part and its slot's part: 20 x 4 floats each.
  EXPECT_EQ(p.total_bytes(), 2 * 20 * 4 * 4);
  EXPECT_EQ(p.total_bytes(), moved.bytes());
  EXPECT_EQ(p.copied_bytes(), p.total_bytes());
  EXPECT_EQ(p.forwarded_writes(), moved.forwarded_writes());
  EXPECT_GT(p.seconds(), 0);

  // A rebalance: every planned move is counted.
  RebalanceRequest rebalance;
  rebalance.set_progress_id(0xba1);
  RebalanceResponse rebalanced;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(IsOk(FromGrpcStatus(stub->Rebalance(&ctx, rebalance, &rebalanced))));
  }
  p = progress(0xba1);
  EXPECT_TRUE(p.found());
  EXPECT_TRUE(p.finished());
  EXPECT_EQ(p.moves_planned(), rebalanced.plan_size());
  EXPECT_EQ(p.moves_done(), rebalanced.moves_size());
  // The move before is still where it stood.
  EXPECT_EQ(progress(0x5eed).moves_done(), 1);
}

// Checkpoints saved while parts move (single moves, a drain and undrain, a
// rebalance) each hold exactly one consistent cut: every part once, from
// its owner at the cut, and restore to exactly those values.
//
// Each trainer runs a fixed program, one op acknowledged before the next:
// per iteration a scatter_add of 1 to its own row in each of the four parts
// of `cut/x` (part 0 first), then a Momentum apply (learning rate 1,
// momentum 1) of a gradient of ones to its own two-part variable
// `cut/m_T`. After n applies a part of m_T holds -n(n+1)/2 and its slot n,
// exactly in float. A consistent cut holds a prefix of each trainer's
// program: its four rows are non-increasing in part order and differ by at
// most one, and its applies agree with them. A part saved twice, missing,
// or read from a shard that no longer owned it (its value stale by the
// writes made on its new owner) breaks one of these, or the bracket of the
// trainer's acknowledged ops before the save and begun ops after it.
class PartMoveCheckpointTest : public MovesWithCheckpointsTest {
 protected:
  absl::Status Move(const std::string& part, int32_t to) { return Admin().Move(part, to).status(); }
  absl::Status Drain(int32_t shard, bool undrain) { return Admin().Drain(shard, undrain); }
  absl::StatusOr<int> Rebalance() { return Admin().Rebalance(); }
  int32_t ShardOf(const std::string& name, int index) { return Admin().PartOf(name, index).second; }
};

TEST_F(PartMoveCheckpointTest, ACheckpointTakenDuringMovesRestoresToExactlyItsCut) {
  constexpr int kTrainers = 3;
  constexpr int kXParts = 4;
  constexpr int kIterations = 1500;  // -n(n+1)/2 stays exact in float
  constexpr int kRounds = 4;         // of single moves, a drain, an undrain and a rebalance
  const opt::Momentum counting{/*learning_rate=*/1.0, /*momentum=*/1.0, /*use_nesterov=*/false};
  GetVariableOptions xo;
  xo.dtype = DT_FLOAT;
  xo.shape = TensorShape{kXParts * kTrainers};
  xo.partitioner = partitioners::FixedSize(kXParts);
  xo.initializer = init::Zeros();
  xo.initialize = true;
  GetVariableOptions mo;
  mo.dtype = DT_FLOAT;
  mo.shape = TensorShape{2};
  mo.partitioner = partitioners::FixedSize(2);
  mo.initializer = init::Zeros();
  mo.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable x, session_->GetVariable("cut/x", xo));
  std::vector<Variable> ms;
  Optimizer creator(*session_, counting);
  for (int t = 0; t < kTrainers; ++t) {
    PSD_ASSERT_OK_AND_ASSIGN(Variable m, session_->GetVariable(absl::StrCat("cut/m_", t), mo));
    ms.push_back(m);
  }
  ASSERT_TRUE(IsOk(creator.CreateSlots(ms)));

  // Ops begun and acknowledged per trainer (5 per iteration).
  std::vector<std::atomic<int64_t>> begun(kTrainers), acked(kTrainers);
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::vector<std::string> errors;
  auto fail = [&](std::string e) {
    absl::MutexLock lock(&mu);
    errors.push_back(std::move(e));
  };
  std::vector<std::thread> trainers;
  for (int t = 0; t < kTrainers; ++t) {
    trainers.emplace_back([&, t] {
      auto session = Session::Open(cluster_->coordinator_address());
      if (!session.ok()) return fail(session.status().ToString());
      auto xt = (*session)->GetVariable("cut/x", xo);
      auto mt = (*session)->GetVariable(absl::StrCat("cut/m_", t), mo);
      if (!xt.ok() || !mt.ok()) {
        return fail(xt.ok() ? mt.status().ToString() : xt.status().ToString());
      }
      Optimizer momentum(**session, counting);
      const Tensor one = *Tensor::FromVector<float>({1}, {1});
      const Tensor ones = *Tensor::FromVector<float>({2}, {1, 1});
      for (int i = 0; i < kIterations && !stop.load(); ++i) {
        for (int j = 0; j <= kXParts; ++j) {
          begun[t].fetch_add(1);
          absl::Status s =
              j < kXParts
                  ? xt->ScatterAdd(*Tensor::FromVector<int64_t>({1}, {j * kTrainers + t}), one)
                  : momentum.ApplyGradients({{ones, *mt}});
          if (!s.ok()) return fail(absl::StrCat("trainer ", t, ": ", s.ToString()));
          acked[t].fetch_add(1);
        }
      }
    });
  }

  // Saves run back to back while the parts move.
  BackToBackSaves saves(cluster_->coordinator_address(), absl::StrCat(dir_, "/moving.ckpt"), 40,
                        &acked, &begun, fail);

  std::vector<std::pair<std::string, int>> parts;  // (variable, part index)
  for (int p = 0; p < kXParts; ++p) parts.push_back({"cut/x", p});
  for (int t = 0; t < kTrainers; ++t) parts.push_back({absl::StrCat("cut/m_", t), t % 2});
  int moves = 0;
  for (int round = 0; round < kRounds; ++round) {
    for (const auto& [variable, index] : parts) {
      const int32_t from = ShardOf(variable, index);
      absl::Status s = Move(absl::StrCat(variable, "/part_", index), 1 - from);
      EXPECT_TRUE(s.ok()) << variable << "/part_" << index << ": " << s;
      moves += s.ok();
    }
    const int32_t drained = round % 2;
    EXPECT_TRUE(IsOk(Drain(drained, false)));
    EXPECT_EQ(ShardOf("cut/x", 0), 1 - drained);
    EXPECT_TRUE(IsOk(Drain(drained, true)));
    auto rebalanced = Rebalance();
    EXPECT_TRUE(rebalanced.ok()) << rebalanced.status();
    if (rebalanced.ok()) {
      EXPECT_GT(*rebalanced, 0);
    }
  }
  const std::vector<BackToBackSaves::Cut> cuts = saves.Finish();
  stop.store(true);
  for (auto& t : trainers) t.join();
  for (const std::string& e : errors) ADD_FAILURE() << e;
  ASSERT_TRUE(errors.empty());
  EXPECT_EQ(moves, kRounds * static_cast<int>(parts.size()));
  ASSERT_GE(cuts.size(), 3u) << "saves overlap the moves";
  std::fprintf(stderr, "%zu checkpoints during %d single moves, %d drains and rebalances\n",
               cuts.size(), moves, kRounds);

  // The variables a checkpoint holds and into how many parts each.
  std::map<std::string, int> expected_parts = {{"cut/x", kXParts}};
  for (int t = 0; t < kTrainers; ++t) {
    expected_parts[absl::StrCat("cut/m_", t)] = 2;
    expected_parts[absl::StrCat("cut/m_", t, "/Momentum")] = 2;
  }
  PSD_ASSERT_OK_AND_ASSIGN(auto saver, client::Saver::Create(cluster_->coordinator_address()));
  for (const BackToBackSaves::Cut& cut : cuts) {
    SCOPED_TRACE(cut.prefix);
    // Every part exactly once in the index: one slice per part, disjoint.
    PSD_ASSERT_OK_AND_ASSIGN(auto reader, checkpoint::BundleReader::Open(cut.prefix));
    std::map<std::string, int> listed;
    for (const auto& info : reader->ListTensors()) {
      std::set<int64_t> starts;
      for (const auto& slice : info.slices) starts.insert(slice.start(0));
      EXPECT_EQ(starts.size(), info.slices.size()) << info.name << " holds a part twice";
      listed[info.name] = static_cast<int>(info.slices.size());
    }
    EXPECT_EQ(listed, expected_parts);
    PSD_ASSERT_OK_AND_ASSIGN(Tensor xs, reader->ReadTensor("cut/x"));
    std::map<std::string, Tensor> saved = {{"cut/x", xs}};
    for (int t = 0; t < kTrainers; ++t) {
      SCOPED_TRACE(absl::StrCat("trainer ", t));
      std::vector<int64_t> xv;
      for (int j = 0; j < kXParts; ++j) {
        xv.push_back(static_cast<int64_t>(xs.data<float>()[j * kTrainers + t]));
      }
      const std::string m = absl::StrCat("cut/m_", t);
      PSD_ASSERT_OK_AND_ASSIGN(Tensor mv, reader->ReadTensor(m));
      PSD_ASSERT_OK_AND_ASSIGN(Tensor sv, reader->ReadTensor(m + "/Momentum"));
      saved[m] = mv;
      saved[m + "/Momentum"] = sv;
      // A prefix of the program: rows non-increasing in part order, at
      // most one apart.
      const int64_t a = xv[0];
      for (int j = 1; j < kXParts; ++j) {
        EXPECT_LE(xv[j], xv[j - 1]) << "part " << j << " of cut/x is ahead of part " << j - 1;
      }
      EXPECT_GE(xv[kXParts - 1], a - 1) << "cut/x's parts are from different moments";
      int64_t applies_min = INT64_MAX, applies_max = 0;
      for (int p = 0; p < 2; ++p) {
        const int64_t n = static_cast<int64_t>(sv.data<float>()[p]);
        EXPECT_EQ(sv.data<float>()[p], static_cast<float>(n));
        // The part and its slot are from the same moment.
        EXPECT_EQ(mv.data<float>()[p], -static_cast<float>(n * (n + 1) / 2)) << m << " part " << p;
        // The apply after the rows' iteration is done or in flight; the one
        // before them is done.
        if (xv[kXParts - 1] == a) {
          EXPECT_TRUE(n == a || n == a - 1 || (a == 0 && n == 0)) << m << " part " << p << ": " << n
                                                                  << " applies, rows " << a;
        } else {
          EXPECT_EQ(n, a - 1) << m << " part " << p;
        }
        applies_min = std::min(applies_min, n);
        applies_max = std::max(applies_max, n);
      }
      int64_t rows = 0;
      for (int64_t v : xv) rows += v;
      EXPECT_GE(rows + applies_max, cut.acked_before[t]) << "an acknowledged write is missing";
      EXPECT_LE(rows + applies_min, cut.begun_after[t]) << "a write counted twice";
    }
    // Restored, the variables read exactly what the checkpoint holds.
    ASSERT_TRUE(IsOk(saver->Restore(cut.prefix)));
    PSD_ASSERT_OK_AND_ASSIGN(Tensor xr, x.Read());
    EXPECT_EQ(xr.DebugString(100), saved["cut/x"].DebugString(100));
    for (int t = 0; t < kTrainers; ++t) {
      const std::string m = absl::StrCat("cut/m_", t);
      PSD_ASSERT_OK_AND_ASSIGN(Tensor mr, ms[t].Read());
      EXPECT_EQ(mr.DebugString(100), saved[m].DebugString(100));
      PSD_ASSERT_OK_AND_ASSIGN(Variable slot, creator.GetSlot(ms[t], "momentum"));
      PSD_ASSERT_OK_AND_ASSIGN(Tensor sr, slot.Read());
      EXPECT_EQ(sr.DebugString(100), saved[m + "/Momentum"].DebugString(100));
    }
  }
}

}  // namespace
}  // namespace integration
}  // namespace psd
