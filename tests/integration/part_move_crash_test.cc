// Crash points of a live part move: the coordinator is killed (SIGKILL) at
// each step of a move in turn (PSD_CRASH_AT=N, counted once the test's arm
// file exists: every write and sync of its registry log and each named step
// of the move), then restarted. Afterwards the part has exactly one owner,
// the one the registry names, it holds every acknowledged write, and it
// takes new ones: a move either completes after the restart or leaves the
// part whole on its source.
// Then the source, the target or the coordinator is killed at a random
// moment of a move while four trainers count and scatter_add.
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/embedding_keys.h"
#include "psd/embedding_variable.h"
#include "psd/grpc_status.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::KeyedOpOptions;
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
  absl::Status Move(int32_t to, const std::string& part = "counter") {
    MovePartRequest req;
    req.set_part(part);
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

// The source, the target or the coordinator killed (SIGKILL) at a random
// moment of a move, in turn, while four trainers count (assign_add of 1 to
// a counter of their own) and scatter_add ones to rows of their own in
// both parts of a partitioned table; each iteration moves another part.
// Afterwards every part has exactly one owner (or none while lost, when
// its owner was the killed shard), and every part that survived holds each
// trainer's acknowledged updates, plus at most the ones whose outcome the
// trainer never learned (cut off by the kill): none lost, none doubled. A
// killed coordinator loses nothing: the restarted one finishes or undoes
// the move. Lost parts come back from the checkpoint taken before the
// iteration, with exactly its values. Bounded in time: as many kills as
// fit in 100 s (at least 10, up to 45; about 35 s here).
TEST_F(PartMoveCrashTest, AShardOrTheCoordinatorKilledDuringAMoveLosesNoAcknowledgedUpdate) {
  constexpr int kTrainers = 4;
  constexpr int64_t kRows = 8;  // two parts of four rows; trainer t owns rows t and 7 - t
  constexpr int kKills = 45;  // 15 of each kind
  GetVariableOptions table;
  table.dtype = DT_FLOAT;
  table.shape = TensorShape{kRows, 2};
  table.partitioner = client::partitioners::FixedSize(2);
  table.initializer = client::init::Zeros();
  table.initialize = true;
  table.reuse = REUSE_AUTO;
  GetVariableOptions count;
  count.initial_value = Tensor::Scalar<int64_t>(0);
  count.initialize = true;
  count.reuse = REUSE_AUTO;
  // (variable, part index, part name): the parts the trainers use.
  struct Part {
    std::string variable;
    int index;
    std::string name;
  };
  std::vector<Part> parts = {{"emb", 0, "emb/part_0"}, {"emb", 1, "emb/part_1"}};
  for (int t = 0; t < kTrainers; ++t) {
    const std::string c = absl::StrCat("count_", t);
    parts.push_back({c, 0, c});
  }
  auto lookup = [&](const Part& p) -> absl::StatusOr<PartHandle> {
    LookupVariableRequest req;
    req.set_name(p.variable);
    LookupVariableResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    PSD_RETURN_IF_ERROR(FromGrpcStatus(CoordinatorStub()->LookupVariable(&ctx, req, &resp)));
    if (p.index >= resp.handle().parts_size()) return absl::NotFoundError(p.name);
    return resp.handle().parts(p.index);
  };
  auto holds = [&](int k, const std::string& name) {
    auto stub = Shard::NewStub(
        grpc::CreateChannel(cluster_->shard_address(k), grpc::InsecureChannelCredentials()));
    ListVariablesRequest req;
    req.set_prefix(name);
    ListVariablesResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!stub->ListVariables(&ctx, req, &resp).ok()) return false;
    for (const auto& v : resp.variables()) {
      if (v.name() == name) return true;
    }
    return false;
  };
  // The values each trainer's rows and counter hold, read through `session`
  // (a lost part's values are not read).
  struct Values {
    std::vector<int64_t> counts = std::vector<int64_t>(kTrainers, 0);
    std::vector<float> rows[2] = {std::vector<float>(kTrainers * 2),
                                  std::vector<float>(kTrainers * 2)};
  };
  auto read = [&](Session* session, const std::set<std::string>& lost) -> absl::StatusOr<Values> {
    Values out;
    PSD_ASSIGN_OR_RETURN(Variable emb, session->GetVariable("emb", table));
    for (int p = 0; p < 2; ++p) {
      if (lost.count(absl::StrCat("emb/part_", p))) continue;
      std::vector<int64_t> rows;
      for (int t = 0; t < kTrainers; ++t) rows.push_back(p == 0 ? t : kRows - 1 - t);
      PSD_ASSIGN_OR_RETURN(Tensor g, emb.Gather(*Tensor::FromVector<int64_t>({kTrainers}, rows)));
      out.rows[p] = g.ToVector<float>();
    }
    for (int t = 0; t < kTrainers; ++t) {
      const std::string c = absl::StrCat("count_", t);
      if (lost.count(c)) continue;
      PSD_ASSIGN_OR_RETURN(Variable v, session->GetVariable(c, count));
      PSD_ASSIGN_OR_RETURN(Tensor value, v.Read());
      out.counts[t] = value.data<int64_t>()[0];
    }
    return out;
  };
  {
    PSD_ASSERT_OK_AND_ASSIGN(Variable emb, session_->GetVariable("emb", table));
    for (int t = 0; t < kTrainers; ++t) {
      PSD_ASSERT_OK_AND_ASSIGN(Variable c, session_->GetVariable(absl::StrCat("count_", t), count));
    }
  }
  PSD_ASSERT_OK_AND_ASSIGN(auto saver, client::Saver::Create(cluster_->coordinator_address()));
  // A trainer gives an op up after a few seconds (an op to a killed shard
  // would otherwise retry until its budget ends, holding the test).
  client::SessionOptions quick;
  quick.shard.retry_budget = absl::Seconds(2);
  std::mt19937 rng(20261206);
  // How long a move takes here, so the kills fall inside moves: a few moves
  // back and forth, timed (not asserted: it only spreads the kill points).
  std::vector<absl::Duration> took;
  for (int k = 0; k < 5; ++k) {
    PSD_ASSERT_OK_AND_ASSIGN(const PartHandle at, lookup(parts[k % 2]));
    const absl::Time start = absl::Now();
    ASSERT_TRUE(IsOk(Move(1 - at.shard_id(), parts[k % 2].name)));
    took.push_back(absl::Now() - start);
  }
  std::sort(took.begin(), took.end());
  const absl::Duration move_time = took[took.size() / 2];  // the median
  const int max_delay_us = static_cast<int>(
      std::min<int64_t>(absl::ToInt64Microseconds(move_time) * 3 / 2, 200000));
  const absl::Time give_up = absl::Now() + absl::Seconds(100);
  int kills = 0, lost_kills = 0, coordinator_kills = 0, inside = 0, moved_again = 0;
  for (int i = 0; i < kKills && absl::Now() < give_up; ++i) {
    PSD_ASSERT_OK_AND_ASSIGN(const Values base, read(session_.get(), {}));
    PSD_ASSERT_OK_AND_ASSIGN(std::string prefix,
                             saver->Save(absl::StrCat(ckpt_, "/model.ckpt"), i));
    const Part& moved = parts[i % parts.size()];
    PSD_ASSERT_OK_AND_ASSIGN(const PartHandle placed, lookup(moved));
    const int32_t from = placed.shard_id();
    const int kind = i % 3;  // 0: the source, 1: the target, 2: the coordinator
    const int victim = kind == 0 ? from : 1 - from;
    const std::string what_victim =
        kind == 2 ? "the coordinator"
                  : absl::StrCat(kind == 0 ? "the source" : "the target", " (shard ", victim, ")");
    // Trainers, each with its own session.
    std::vector<std::unique_ptr<Session>> sessions;
    for (int t = 0; t < kTrainers; ++t) {
      PSD_ASSERT_OK_AND_ASSIGN(auto s, Session::Open(cluster_->coordinator_address(), quick));
      sessions.push_back(std::move(s));
    }
    std::atomic<bool> stop{false};
    std::vector<int64_t> counted(kTrainers, 0), counted_unknown(kTrainers, 0);
    std::vector<int64_t> scattered(kTrainers, 0), scattered_unknown(kTrainers, 0);
    std::vector<std::thread> trainers;
    for (int t = 0; t < kTrainers; ++t) {
      trainers.emplace_back([&, t] {
        auto c = sessions[t]->GetVariable(absl::StrCat("count_", t), count);
        auto e = sessions[t]->GetVariable("emb", table);
        if (!c.ok() || !e.ok()) return;  // nothing written: nothing to count
        const Tensor rows = *Tensor::FromVector<int64_t>({2}, {t, kRows - 1 - t});
        const Tensor ones = *Tensor::FromVector<float>({2, 2}, {1, 1, 1, 1});
        while (!stop.load()) {
          const bool c_ok = c->AssignAdd(Tensor::Scalar<int64_t>(1)).ok();
          (c_ok ? counted[t] : counted_unknown[t]) += 1;
          const bool e_ok = e->ScatterAdd(rows, ones).ok();
          (e_ok ? scattered[t] : scattered_unknown[t]) += 1;
          // An op that failed (a lost part fails at once) is not spun on.
          if (!c_ok || !e_ok) absl::SleepFor(absl::Milliseconds(20));
        }
      });
    }
    std::vector<uint64_t> not_old(2, 0);
    if (kind != 2) {
      auto old = cluster_->ShardIncarnation(victim);
      not_old[victim] = old.ok() ? *old : 0;
    }
    std::atomic<bool> move_ended{false};
    std::thread mover([&] {
      (void)Move(1 - from, moved.name);
      move_ended.store(true);
    });
    absl::SleepFor(absl::Microseconds(std::uniform_int_distribution<int>(0, max_delay_us)(rng)));
    inside += !move_ended.load();
    // Killed and started again at once: the trainers' ops to it then fail
    // fast (or find it back) instead of retrying for their budget.
    ASSERT_TRUE(IsOk(kind == 2 ? cluster_->RestartCoordinator() : cluster_->RestartShard(victim)));
    ++kills;
    coordinator_kills += kind == 2;
    mover.join();
    ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60), not_old)));
    if (kind == 2) {
      ASSERT_NO_FATAL_FAILURE(Connect());
    }
    const std::string when = absl::StrCat("kill ", i, " of ", what_victim, " during a move of ",
                                          moved.name, " from shard ", from);
    // The trainers still writing, the part moves once more, uninterrupted
    // (unless it was lost): a cluster that came through the kill moves
    // parts whole again.
    PSD_ASSERT_OK_AND_ASSIGN(PartHandle after, lookup(moved));
    if (!after.lost()) {
      absl::Status again = Move(1 - after.shard_id(), moved.name);
      // ABORTED: the move the kill cut off was finished first (completed
      // after a coordinator restart), look again; UNAVAILABLE: the
      // coordinator's channel to a restarted shard is still reconnecting.
      for (int attempt = 0;
           attempt < 300 && (absl::IsAborted(again) || absl::IsUnavailable(again)); ++attempt) {
        absl::SleepFor(absl::Milliseconds(100));
        PSD_ASSERT_OK_AND_ASSIGN(after, lookup(moved));
        again = Move(1 - after.shard_id(), moved.name);
      }
      EXPECT_TRUE(again.ok()) << when << ": the next move: " << again;
      moved_again += again.ok();
    }
    stop.store(true);
    for (auto& t : trainers) t.join();
    sessions.clear();
    // Every part: one owner, or none while lost; never two.
    std::set<std::string> lost;
    for (const Part& p : parts) {
      bool settled = false;
      absl::StatusOr<PartHandle> at = absl::UnknownError("not looked up");
      for (int attempt = 0; attempt < 300 && !settled; ++attempt) {
        at = lookup(p);
        settled = at.ok() && !holds(1 - at->shard_id(), p.name) &&
                  (holds(at->shard_id(), p.name) || at->lost());
        if (!settled) absl::SleepFor(absl::Milliseconds(100));
      }
      ASSERT_TRUE(settled) << when << ": " << p.name << " on shard 0: " << holds(0, p.name)
                           << ", on shard 1: " << holds(1, p.name) << ", placed: "
                           << (at.ok() ? at->DebugString() : at.status().ToString());
      if (at->lost()) {
        lost.insert(p.name);
        EXPECT_NE(kind, 2) << when << ": " << p.name << " lost";
        EXPECT_EQ(at->shard_id(), victim) << when << ": " << p.name << " lost";
      }
    }
    // What survived holds every acknowledged update, and none twice.
    auto now = read(session_.get(), lost);
    ASSERT_TRUE(now.ok()) << when << ": " << now.status();
    for (int t = 0; t < kTrainers; ++t) {
      const std::string trainer = absl::StrCat(when, ": trainer ", t);
      if (!lost.count(absl::StrCat("count_", t))) {
        const int64_t v = now->counts[t] - base.counts[t];
        EXPECT_GE(v, counted[t]) << trainer << " lost an acknowledged assign_add";
        EXPECT_LE(v, counted[t] + counted_unknown[t]) << trainer << " counter applied twice";
      }
      for (int p = 0; p < 2; ++p) {
        if (lost.count(absl::StrCat("emb/part_", p))) continue;
        for (int col = 0; col < 2; ++col) {
          const float v = now->rows[p][t * 2 + col] - base.rows[p][t * 2 + col];
          EXPECT_GE(v, scattered[t]) << trainer << " emb/part_" << p << " lost a scatter_add";
          EXPECT_LE(v, scattered[t] + scattered_unknown[t])
              << trainer << " emb/part_" << p << " applied a scatter_add twice";
        }
      }
    }
    if (lost.empty()) continue;
    // Lost with their shard: back from the checkpoint, as it was.
    ++lost_kills;
    ASSERT_TRUE(IsOk(saver->Restore(prefix))) << when;
    auto restored = read(session_.get(), {});
    ASSERT_TRUE(restored.ok()) << when << ": " << restored.status();
    EXPECT_EQ(restored->counts, base.counts) << when;
    EXPECT_EQ(restored->rows[0], base.rows[0]) << when;
    EXPECT_EQ(restored->rows[1], base.rows[1]) << when;
  }
  std::fprintf(stderr,
               "%d kills (%d of the coordinator), %d before the move had answered (a move takes "
               "%s here); %d of them lost parts with their shard; %d moves after a kill\n",
               kills, coordinator_kills, inside, absl::FormatDuration(move_time).c_str(),
               lost_kills, moved_again);
  EXPECT_GE(kills, 10);
}

// An embedding table's parts moving while the source or the target shard
// is killed (SIGKILL) at a random moment: afterwards each part has one
// owner (or none while lost with its killed shard), its rows are intact
// there (rows written once before, and each trainer's scatter_adds: every
// acknowledged one, at most those the kill hid), and it moves again; a
// lost part comes back from the checkpoint taken before, exactly. Bounded
// in time: as many kills as fit in 60 s, up to 8.
TEST_F(PartMoveCrashTest, AShardKilledDuringATableMoveLeavesOneOwnerWithItsRows) {
  constexpr int kTrainers = 2;
  constexpr int kKills = 8;
  constexpr int64_t kStill = 40;  // rows written once, before the kills
  client::EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = client::init::Zeros();
  o.partitioner = client::partitioners::FixedSize(2);
  o.reuse = REUSE_AUTO;
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingVariable emb,
                           session_->GetEmbeddingVariable("tbl", o));
  auto keys_tensor = [](const std::vector<int64_t>& keys) {
    return *Tensor::FromVector<int64_t>({static_cast<int64_t>(keys.size())}, keys);
  };
  // Each trainer's key in each part; the still rows are keys 1000...
  std::vector<std::vector<int64_t>> mine(kTrainers, std::vector<int64_t>(2, -1));
  for (int t = 0; t < kTrainers; ++t) {
    for (int64_t k = 10 * t; mine[t][0] < 0 || mine[t][1] < 0; ++k) {
      mine[t][PartOfKey(k, 2)] = k;
    }
  }
  std::vector<int64_t> still;
  std::vector<float> still_rows;
  for (int64_t k = 0; k < kStill; ++k) {
    still.push_back(1000 + k);
    still_rows.push_back(static_cast<float>(k));
    still_rows.push_back(static_cast<float>(-k));
  }
  ASSERT_TRUE(IsOk(emb.ScatterUpdate(keys_tensor(still),
                                     *Tensor::FromVector<float>({kStill, 2}, still_rows))));
  auto lookup = [&](int index) -> absl::StatusOr<PartHandle> {
    LookupVariableRequest req;
    req.set_name("tbl");
    LookupVariableResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    PSD_RETURN_IF_ERROR(FromGrpcStatus(CoordinatorStub()->LookupVariable(&ctx, req, &resp)));
    if (index >= resp.handle().parts_size()) return absl::NotFoundError("tbl");
    return resp.handle().parts(index);
  };
  auto holds = [&](int k, const std::string& name) {
    auto stub = Shard::NewStub(
        grpc::CreateChannel(cluster_->shard_address(k), grpc::InsecureChannelCredentials()));
    ListVariablesRequest req;
    req.set_prefix(name);
    ListVariablesResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!stub->ListVariables(&ctx, req, &resp).ok()) return false;
    for (const auto& v : resp.variables()) {
      if (v.name() == name) return true;
    }
    return false;
  };
  // Part p's rows: each trainer's key, then the still rows of part p.
  auto read = [&](Session* session, int p) -> absl::StatusOr<std::vector<float>> {
    PSD_ASSIGN_OR_RETURN(client::EmbeddingVariable table, session->GetEmbeddingVariable("tbl", o));
    std::vector<int64_t> keys;
    for (int t = 0; t < kTrainers; ++t) keys.push_back(mine[t][p]);
    for (int64_t k : still) {
      if (PartOfKey(k, 2) == p) keys.push_back(k);
    }
    KeyedOpOptions inference;
    inference.inference = true;
    PSD_ASSIGN_OR_RETURN(Tensor rows, table.Gather(keys_tensor(keys), inference));
    return rows.ToVector<float>();
  };
  PSD_ASSERT_OK_AND_ASSIGN(auto saver, client::Saver::Create(cluster_->coordinator_address()));
  client::SessionOptions quick;
  quick.shard.retry_budget = absl::Seconds(2);
  std::mt19937 rng(20261207);
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  int kills = 0, lost_kills = 0, moved_again = 0, inside = 0;
  for (int i = 0; i < kKills && absl::Now() < give_up; ++i) {
    std::vector<float> base[2];
    for (int p = 0; p < 2; ++p) {
      PSD_ASSERT_OK_AND_ASSIGN(base[p], read(session_.get(), p));
    }
    PSD_ASSERT_OK_AND_ASSIGN(std::string prefix,
                             saver->Save(absl::StrCat(ckpt_, "/table.ckpt"), i));
    const int index = i % 2;
    const std::string name = absl::StrCat("tbl/part_", index);
    PSD_ASSERT_OK_AND_ASSIGN(const PartHandle placed, lookup(index));
    const int32_t from = placed.shard_id();
    const bool source = (i / 2) % 2 == 0;
    const int victim = source ? from : 1 - from;
    const std::string when = absl::StrCat("kill ", i, " of the ", source ? "source" : "target",
                                          " (shard ", victim, ") during a move of ", name);
    std::vector<std::unique_ptr<Session>> sessions;
    for (int t = 0; t < kTrainers; ++t) {
      PSD_ASSERT_OK_AND_ASSIGN(auto s, Session::Open(cluster_->coordinator_address(), quick));
      sessions.push_back(std::move(s));
    }
    std::atomic<bool> stop{false};
    std::vector<int64_t> acked(kTrainers, 0), unknown(kTrainers, 0);
    std::vector<std::thread> trainers;
    for (int t = 0; t < kTrainers; ++t) {
      trainers.emplace_back([&, t] {
        auto e = sessions[t]->GetEmbeddingVariable("tbl", o);
        if (!e.ok()) return;
        const Tensor keys = keys_tensor(mine[t]);
        const Tensor ones = *Tensor::FromVector<float>({2, 2}, {1, 1, 1, 1});
        while (!stop.load()) {
          const bool ok = e->ScatterAdd(keys, ones).ok();
          (ok ? acked[t] : unknown[t]) += 1;
          if (!ok) absl::SleepFor(absl::Milliseconds(20));
        }
      });
    }
    std::vector<uint64_t> not_old(2, 0);
    auto old = cluster_->ShardIncarnation(victim);
    not_old[victim] = old.ok() ? *old : 0;
    std::atomic<bool> move_ended{false};
    std::thread mover([&] {
      (void)Move(1 - from, name);
      move_ended.store(true);
    });
    absl::SleepFor(absl::Microseconds(std::uniform_int_distribution<int>(0, 20000)(rng)));
    inside += !move_ended.load();
    ASSERT_TRUE(IsOk(cluster_->RestartShard(victim)));
    ++kills;
    mover.join();
    ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60), not_old)));
    PSD_ASSERT_OK_AND_ASSIGN(PartHandle after, lookup(index));
    if (!after.lost()) {
      absl::Status again = Move(1 - after.shard_id(), name);
      for (int attempt = 0;
           attempt < 300 && (absl::IsAborted(again) || absl::IsUnavailable(again)); ++attempt) {
        absl::SleepFor(absl::Milliseconds(100));
        PSD_ASSERT_OK_AND_ASSIGN(after, lookup(index));
        again = Move(1 - after.shard_id(), name);
      }
      EXPECT_TRUE(again.ok()) << when << ": the next move: " << again;
      moved_again += again.ok();
    }
    stop.store(true);
    for (auto& t : trainers) t.join();
    sessions.clear();
    // Each part: one owner, or none while lost; never two.
    std::set<int> lost;
    for (int p = 0; p < 2; ++p) {
      const std::string part = absl::StrCat("tbl/part_", p);
      bool settled = false;
      absl::StatusOr<PartHandle> at = absl::UnknownError("not looked up");
      for (int attempt = 0; attempt < 300 && !settled; ++attempt) {
        at = lookup(p);
        settled = at.ok() && !holds(1 - at->shard_id(), part) &&
                  (holds(at->shard_id(), part) || at->lost());
        if (!settled) absl::SleepFor(absl::Milliseconds(100));
      }
      ASSERT_TRUE(settled) << when << ": " << part << " on shard 0: " << holds(0, part)
                           << ", on shard 1: " << holds(1, part) << ", placed: "
                           << (at.ok() ? at->DebugString() : at.status().ToString());
      if (at->lost()) {
        lost.insert(p);
        EXPECT_EQ(at->shard_id(), victim) << when << ": " << part << " lost";
        continue;
      }
      // Its rows intact on the owner.
      auto now = read(session_.get(), p);
      ASSERT_TRUE(now.ok()) << when << ": " << now.status();
      ASSERT_EQ(now->size(), base[p].size());
      for (int t = 0; t < kTrainers; ++t) {
        for (int col = 0; col < 2; ++col) {
          const float v = (*now)[t * 2 + col] - base[p][t * 2 + col];
          EXPECT_GE(v, acked[t]) << when << ": trainer " << t << " lost a scatter_add in " << part;
          EXPECT_LE(v, acked[t] + unknown[t])
              << when << ": trainer " << t << " scatter_add applied twice in " << part;
        }
      }
      EXPECT_EQ(std::vector<float>(now->begin() + kTrainers * 2, now->end()),
                std::vector<float>(base[p].begin() + kTrainers * 2, base[p].end()))
          << when << ": " << part << "'s other rows changed";
    }
    // The fixture's counter may have gone with the killed shard too.
    if (lost.empty() && !Lost()) continue;
    lost_kills += !lost.empty();
    ASSERT_TRUE(IsOk(saver->Restore(prefix))) << when;
    for (int p = 0; p < 2; ++p) {
      auto restored = read(session_.get(), p);
      ASSERT_TRUE(restored.ok()) << when << ": " << restored.status();
      EXPECT_EQ(*restored, base[p]) << when;
    }
  }
  std::fprintf(stderr, "%d kills during table moves (%d before the move had answered); %d lost "
               "parts with their shard; %d moves after a kill\n",
               kills, inside, lost_kills, moved_again);
  EXPECT_GE(kills, 4);
}

}  // namespace
}  // namespace integration
}  // namespace psd
