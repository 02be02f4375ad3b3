// Crash points of a save: the coordinator, and separately a shard, is killed
// with SIGKILL at every checkpoint file operation and named point of a save
// in turn (PSD_CRASH_AT=N, counted once the test's arm file exists;
// checkpoint/file_system.h), for a save to a new prefix and a re-save to an
// existing one. After each kill the victim is started again and:
//   - every checkpoint the state file lists restores, all of its variables
//     holding the values of one save (the earlier one at that prefix, or the
//     killed save's if its publication had committed);
//   - `latest` is readable and is the state file's model_checkpoint_path;
//   - no staging file, publish journal or temp file is left;
//   - (coordinator kills) the values the trainer wrote, acknowledged, before
//     the save are still on the live shards, which take writes again.
// The count of kill points covered is printed per scenario.
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/file_system.h"
#include "checkpoint/publish.h"
#include "cluster_process.h"
#include "gtest/gtest.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Saver;
using client::Session;
using client::Variable;

constexpr int kElements = 4096;

class CheckpointCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/psd_ckpt_crash_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ckpt_ = dir_ + "/ckpt";
    arm_ = dir_ + "/arm";
    std::filesystem::create_directories(ckpt_);
    // Inherited by every process the test starts; PSD_CRASH_AT only by the
    // victim, while it is set.
    setenv("PSD_CRASH_ARM_FILE", arm_.c_str(), 1);
    unsetenv("PSD_CRASH_AT");
    TestClusterOptions options;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", ckpt_,
                                "--max-to-keep",        "3"};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    ASSERT_NO_FATAL_FAILURE(Connect());
  }
  void TearDown() override {
    saver_.reset();
    session_.reset();
    cluster_.reset();
    unsetenv("PSD_CRASH_ARM_FILE");
    unsetenv("PSD_CRASH_AT");
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // (Re)connects and (re)looks up the variables (created on first use).
  void Connect() {
    saver_.reset();
    session_.reset();
    PSD_ASSERT_OK_AND_ASSIGN(session_, Session::Open(cluster_->coordinator_address()));
    // One attempt: a save whose coordinator crashed on purpose fails at once
    // (the test restarts the coordinator only after that).
    client::SaverOptions one_attempt;
    one_attempt.retry_budget = absl::ZeroDuration();
    PSD_ASSERT_OK_AND_ASSIGN(saver_, Saver::Create(cluster_->coordinator_address(), one_attempt));
    GetVariableOptions w;
    w.initial_value =
        *Tensor::FromVector<float>(TensorShape({kElements}), std::vector<float>(kElements, 0.0f));
    w.initialize = true;
    w.reuse = REUSE_AUTO;
    w.partitioner = client::partitioners::FixedSize(2);
    PSD_ASSERT_OK_AND_ASSIGN(w_, session_->GetVariable("w", w));
    GetVariableOptions s;
    s.initial_value = Tensor::Scalar<int64_t>(0);
    s.initialize = true;
    s.reuse = REUSE_AUTO;
    PSD_ASSERT_OK_AND_ASSIGN(step_, session_->GetVariable("step", s));
  }

  // Handles made before a restore of lost parts name the lost parts.
  void Refresh() {
    EXPECT_TRUE(IsOk(w_.Refresh()));
    EXPECT_TRUE(IsOk(step_.Refresh()));
  }

  void Set(int64_t value) {
    ASSERT_TRUE(IsOk(w_.Assign(*Tensor::FromVector<float>(
        TensorShape({kElements}), std::vector<float>(kElements, static_cast<float>(value))))));
    ASSERT_TRUE(IsOk(step_.Assign(Tensor::Scalar<int64_t>(value))));
  }

  // The value every element of w and step holds; -1 if they disagree.
  int64_t Value() {
    auto w = w_.Read();
    auto s = step_.Read();
    EXPECT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE(s.ok()) << s.status();
    if (!w.ok() || !s.ok()) return -1;
    const int64_t v = s->data<int64_t>()[0];
    for (int64_t i = 0; i < kElements; ++i) {
      if (w->data<float>()[i] != static_cast<float>(v)) return -1;
    }
    return v;
  }

  void ExpectNoLeftovers(const std::string& when) {
    for (const auto& e : std::filesystem::directory_iterator(ckpt_)) {
      const std::string name = e.path().filename().string();
      EXPECT_FALSE(checkpoint::IsStagingFileName(name)) << name << " " << when;
      EXPECT_FALSE(checkpoint::IsJournalFileName(name)) << name << " " << when;
      EXPECT_FALSE(checkpoint::IsTempFileName(name)) << name << " " << when;
    }
  }

  // Starts the victim again (it may be dead already), armed for its `n`th
  // crash point (0: not armed), and waits until the cluster serves.
  void Restart(bool coordinator, int n) {
    if (n > 0) {
      setenv("PSD_CRASH_AT", std::to_string(n).c_str(), 1);
    } else {
      unsetenv("PSD_CRASH_AT");
    }
    std::vector<uint64_t> old;
    if (coordinator) {
      ASSERT_TRUE(IsOk(cluster_->RestartCoordinator()));
    } else {
      auto inc = cluster_->ShardIncarnation(0);
      old = {inc.ok() ? *inc : 0};
      ASSERT_TRUE(IsOk(cluster_->RestartShard(0)));
    }
    unsetenv("PSD_CRASH_AT");
    ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60), old)));
    ASSERT_NO_FATAL_FAILURE(Connect());
  }

  // Kills the victim at each of its crash points in turn during a save;
  // returns the number of points covered.
  int Run(bool kill_coordinator, bool same_prefix) {
    const std::string base = ckpt_ + "/model.ckpt";
    auto prefix_of = [&](int64_t v) { return same_prefix ? base : absl::StrCat(base, "-", v); };
    auto save = [&](int64_t v) { return same_prefix ? saver_->Save(base) : saver_->Save(base, v); };
    // What each checkpoint may hold: the value last seen in it, and the
    // values of the saves to it attempted since.
    std::map<std::string, std::set<int64_t>> allowed;
    int64_t value = 1;
    Set(value);
    auto first = save(value);
    EXPECT_TRUE(first.ok()) << first.status();
    if (!first.ok()) return 0;
    allowed[*first] = {value};
    int points = 0;
    for (int n = 1; n <= 300; ++n) {
      // The victim, armed for point n (a shard comes back empty: its parts
      // come back from the latest checkpoint).
      Restart(kill_coordinator, n);
      if (::testing::Test::HasFatalFailure()) return points;
      if (!kill_coordinator) {
        EXPECT_TRUE(IsOk(saver_->Restore("latest")));
        Refresh();
      }
      ++value;
      Set(value);
      allowed[prefix_of(value)].insert(value);
      std::ofstream(arm_) << "armed";
      auto saved = save(value);
      std::filesystem::remove(arm_);
      if (saved.ok()) break;  // past the save's last crash point: all covered
      ++points;
      const std::string when =
          absl::StrCat(kill_coordinator ? "coordinator" : "shard 0", " killed at crash point ", n,
                       " of a save to ", prefix_of(value), ": ", saved.status().ToString());
      // Back up, not armed.
      Restart(kill_coordinator, 0);
      if (::testing::Test::HasFatalFailure()) return points;
      if (kill_coordinator) {
        // The acknowledged writes are on the live shards, which take writes.
        EXPECT_EQ(Value(), value) << when;
        Set(value);
        EXPECT_EQ(Value(), value) << when;
      }
      auto state = saver_->GetCheckpointState();
      EXPECT_TRUE(state.ok() && state->has_value()) << when;
      auto latest = saver_->LatestCheckpoint();
      EXPECT_TRUE(latest.ok() && latest->has_value()) << when;
      if (!state.ok() || !state->has_value() || !latest.ok() || !latest->has_value()) {
        return points;
      }
      EXPECT_EQ(**latest, (*state)->model_checkpoint_path) << when;
      for (const std::string& p : (*state)->all_model_checkpoint_paths) {
        absl::Status r = saver_->Restore(p);
        EXPECT_TRUE(r.ok()) << p << ": " << r << "; " << when;
        if (!r.ok()) continue;
        Refresh();
        const int64_t got = Value();
        EXPECT_EQ(allowed[p].count(got), 1u)
            << p << " restores " << got << ", not the value of a save to it; " << when;
        allowed[p] = {got};
      }
      ExpectNoLeftovers(when);
      if (::testing::Test::HasFailure()) return points;
    }
    return points;
  }

  std::string dir_;
  std::string ckpt_;
  std::string arm_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Saver> saver_;
  Variable w_;
  Variable step_;
};

TEST_F(CheckpointCrashTest, CoordinatorKilledAtEveryPointOfAResaveToTheSamePrefix) {
  const int points = Run(/*kill_coordinator=*/true, /*same_prefix=*/true);
  std::cout << "kill points covered (coordinator, existing prefix): " << points << "\n";
  // Fence, SaveShard, staged meta and index, journal, renames, retention
  // and state file: dozens of file operations.
  EXPECT_GE(points, 30);
}

TEST_F(CheckpointCrashTest, CoordinatorKilledAtEveryPointOfASaveToANewPrefix) {
  const int points = Run(/*kill_coordinator=*/true, /*same_prefix=*/false);
  std::cout << "kill points covered (coordinator, new prefix): " << points << "\n";
  EXPECT_GE(points, 30);
}

TEST_F(CheckpointCrashTest, ShardKilledAtEveryPointOfAResaveToTheSamePrefix) {
  const int points = Run(/*kill_coordinator=*/false, /*same_prefix=*/true);
  std::cout << "kill points covered (shard, existing prefix): " << points << "\n";
  // Its data file: create, appends, fsync, close, rename, directory fsync.
  EXPECT_GE(points, 5);
}

TEST_F(CheckpointCrashTest, ShardKilledAtEveryPointOfASaveToANewPrefix) {
  const int points = Run(/*kill_coordinator=*/false, /*same_prefix=*/false);
  std::cout << "kill points covered (shard, new prefix): " << points << "\n";
  EXPECT_GE(points, 5);
}

}  // namespace
}  // namespace integration
}  // namespace psd
