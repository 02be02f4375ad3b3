// The registry's durability under a failing disk, through the
// fault-injecting file system (as the checkpoint writer's tests do): failed
// and short writes, failed syncs, and crashes (every later operation fails
// and the data no sync covered is dropped) at each step of an append and of
// a compaction. After each, a reopen recovers every acknowledged
// declaration, deletion and session, never an empty or older state, and
// nothing that was not acknowledged except the one mutation in flight.
//
// Group commit: a sync runs outside the registry's lock, so a lookup is
// answered while one is blocked; concurrent committers share a sync; a
// failed sync fails every waiter it would have covered.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "checkpoint/fault_injection_file_system.h"
#include "coordinator/registry.h"
#include "coordinator/registry_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

using checkpoint::FaultInjectionFileSystem;
using checkpoint::FileSystem;
using checkpoint::FsOp;
using ::testing::HasSubstr;

// Bounds every wait for another thread (a hang fails instead of blocking
// the suite); no test relies on it for an ordering.
constexpr absl::Duration kPatience = absl::Seconds(60);

VariableDeclaration Decl(const std::string& name, int64_t rows) {
  VariableDeclaration d;
  d.set_name(name);
  d.set_dtype(DT_FLOAT);
  d.mutable_shape()->add_dims(rows);
  d.mutable_shape()->add_dims(4);
  d.set_declared_at("train.py:" + std::to_string(rows));
  return d;
}

class RegistryLogFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/registry_log_fault_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  RegistryOptions Options(FileSystem* fs, int64_t compact_bytes = 64 << 20) {
    RegistryOptions options;
    options.state_dir = dir_;
    options.compact_log_bytes = compact_bytes;
    options.file_system = fs;
    options.on_log_failure = [this](const absl::Status& s) {
      absl::MutexLock lock(&mu_);
      log_failures_.push_back(s);
    };
    return options;
  }
  std::unique_ptr<Registry> Open(FileSystem* fs, int64_t compact_bytes = 64 << 20) {
    auto r = Registry::Open(Options(fs, compact_bytes));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  // Reopens with the real file system, as a restarted coordinator would.
  std::unique_ptr<Registry> Reopen() { return Open(FileSystem::Default()); }
  int log_failures() {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(log_failures_.size());
  }
  std::string log_path() const { return RegistryLog::LogPath(dir_); }

  std::string dir_;
  std::vector<int32_t> shards_ = {0, 1};
  absl::Mutex mu_;
  std::vector<absl::Status> log_failures_ ABSL_GUARDED_BY(mu_);
};

TEST_F(RegistryLogFaultTest, AFailedOrShortWriteChangesNothingAndTheLogStaysUsable) {
  for (const bool short_write : {false, true}) {
    SCOPED_TRACE(short_write ? "short write" : "failed write");
    std::filesystem::remove_all(dir_);
    FaultInjectionFileSystem fs(FileSystem::Default());
    uint64_t session;
    {
      auto registry = Open(&fs);
      session = *registry->OpenSession("t");
      ASSERT_TRUE(registry->GetVariable(session, Decl("a", 1), shards_).ok());
      if (short_write) {
        fs.ShortWriteOnAppend(1);
      } else {
        fs.FailOperation(FsOp::kAppend, 1);
      }
      auto failed = registry->GetVariable(session, Decl("b", 2), shards_);
      EXPECT_FALSE(failed.ok());
      EXPECT_EQ(fs.faults_fired(), 1);
      // Not applied: the state is as before the call.
      EXPECT_EQ(registry->Lookup("b").status().code(), absl::StatusCode::kNotFound);
      EXPECT_EQ(registry->num_variables(), 1u);
      // The half-written frame was cut off; the log goes on.
      ASSERT_TRUE(registry->GetVariable(session, Decl("c", 3), shards_).ok());
      ASSERT_TRUE(registry->Delete("a").ok());
    }
    EXPECT_EQ(log_failures(), 0);
    auto registry = Reopen();
    ASSERT_NE(registry, nullptr);
    EXPECT_TRUE(registry->HasSession(session));
    EXPECT_EQ(registry->Lookup("a").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(registry->Lookup("b").status().code(), absl::StatusCode::kNotFound);
    EXPECT_TRUE(registry->Lookup("c").ok());
  }
}

TEST_F(RegistryLogFaultTest, AnAppendThatCannotBeUndoneRefusesEveryLaterAppend) {
  FaultInjectionFileSystem fs(FileSystem::Default());
  uint64_t session;
  {
    auto registry = Open(&fs);
    session = *registry->OpenSession("t");
    ASSERT_TRUE(registry->GetVariable(session, Decl("a", 1), shards_).ok());
    fs.ShortWriteOnAppend(1);
    fs.FailOperation(FsOp::kTruncate, 1);
    EXPECT_FALSE(registry->GetVariable(session, Decl("b", 2), shards_).ok());
    // The file's tail is unknown: nothing more is appended after it.
    auto refused = registry->GetVariable(session, Decl("c", 3), shards_);
    EXPECT_FALSE(refused.ok());
    EXPECT_THAT(refused.status().message(), HasSubstr("cannot undo a failed append"));
    EXPECT_FALSE(registry->OpenSession("u").ok());
    EXPECT_FALSE(registry->Delete("a").ok());
    EXPECT_TRUE(registry->Lookup("a").ok());
  }
  // A restart drops the torn half-record and appends again.
  auto registry = Reopen();
  ASSERT_NE(registry, nullptr);
  EXPECT_TRUE(registry->Lookup("a").ok());
  EXPECT_FALSE(registry->Lookup("b").ok());
  EXPECT_FALSE(registry->Lookup("c").ok());
  EXPECT_TRUE(registry->GetVariable(session, Decl("d", 4), shards_).ok());
}

// A failed fdatasync cannot be retried (the kernel may have dropped the
// pages and will report the next one clean): the waiter fails, nothing not
// durable is answered, later mutations are refused, on_log_failure fires
// (by default it aborts), and a restart recovers what was acknowledged.
TEST_F(RegistryLogFaultTest, AFailedSyncFailsItsWaiterAndAnswersNothingNotDurable) {
  FaultInjectionFileSystem fs(FileSystem::Default());
  uint64_t session;
  {
    auto registry = Open(&fs);
    session = *registry->OpenSession("t");
    ASSERT_TRUE(registry->GetVariable(session, Decl("a", 1), shards_).ok());
    fs.FailOperation(FsOp::kSync, 1);
    auto failed = registry->GetVariable(session, Decl("b", 2), shards_);
    ASSERT_FALSE(failed.ok());
    EXPECT_THAT(failed.status().message(), HasSubstr("cannot be made durable"));
    EXPECT_EQ(log_failures(), 1);
    // b is in memory but was never durable: not shown to anyone.
    EXPECT_FALSE(registry->Lookup("b").ok());
    EXPECT_EQ(registry->Lookup("b").status().code(), failed.status().code());
    EXPECT_TRUE(registry->List("").empty());
    // What was durable before is still answered.
    EXPECT_TRUE(registry->Lookup("a").ok());
    EXPECT_FALSE(registry->GetVariable(session, Decl("c", 3), shards_).ok());
    EXPECT_FALSE(registry->OpenSession("u").ok());
    EXPECT_EQ(log_failures(), 1);  // once
  }
  ASSERT_TRUE(fs.DropUnsyncedData().ok());
  auto registry = Reopen();
  ASSERT_NE(registry, nullptr);
  EXPECT_TRUE(registry->Lookup("a").ok());
  EXPECT_FALSE(registry->Lookup("b").ok());
  EXPECT_FALSE(registry->Lookup("c").ok());
  EXPECT_EQ(registry->num_sessions(), 1u);
}

// A crash at every mutating step of the workload's appends and of the
// compactions among them (compact_log_bytes is small): every later
// operation fails, the data no sync covered is dropped, and the reopened
// registry holds exactly the acknowledged state, give or take the one
// mutation that was in flight.
TEST_F(RegistryLogFaultTest, ACrashAtAnyStepOfAppendOrCompactionKeepsEveryAcknowledgedChange) {
  int points = 0;
  int compactions_hit = 0;
  for (int n = 1; n <= 400; ++n) {
    SCOPED_TRACE("crash at mutation " + std::to_string(n));
    std::filesystem::remove_all(dir_);
    FaultInjectionFileSystem fs(FileSystem::Default());
    std::map<std::string, bool> acked;  // name -> exists, as acknowledged
    std::string in_flight;
    uint64_t session = 0;
    bool crashed = false;
    {
      auto registry = Open(&fs, /*compact_bytes=*/700);
      ASSERT_NE(registry, nullptr);
      session = *registry->OpenSession("t");
      ASSERT_TRUE(registry->GetVariable(session, Decl("base", 1), shards_).ok());
      acked["base"] = true;
      fs.Reset();
      fs.CrashAtNthMutation(n);
      for (int i = 0; i < 12 && !crashed; ++i) {
        const std::string name = "v" + std::to_string(i);
        in_flight = name;
        if (registry->GetVariable(session, Decl(name, i + 2), shards_).ok()) {
          acked[name] = true;
        } else {
          crashed = true;
          break;
        }
        if (i % 4 == 3) {
          const std::string gone = "v" + std::to_string(i - 2);
          in_flight = gone;
          if (registry->Delete(gone).ok()) {
            acked[gone] = false;
          } else {
            crashed = true;
          }
        }
      }
      if (!crashed) {
        EXPECT_EQ(fs.faults_fired(), 0);
      }
    }  // dropped without any shutdown step, like a killed process
    if (!crashed) break;  // past the last step of the workload
    ++points;
    ASSERT_TRUE(fs.DropUnsyncedData().ok());
    auto reopened = Registry::Open(Options(FileSystem::Default()));
    ASSERT_TRUE(reopened.ok()) << reopened.status();  // never DATA_LOSS
    auto& registry = *reopened;
    EXPECT_TRUE(registry->HasSession(session));
    for (const auto& [name, exists] : acked) {
      if (name == in_flight) continue;  // either way
      EXPECT_EQ(registry->Lookup(name).ok(), exists) << name;
    }
    for (const VariableDef& def : registry->List("")) {
      EXPECT_TRUE(acked.count(def.name()) > 0 || def.name() == in_flight) << def.name();
    }
    if (std::filesystem::exists(RegistryLog::SnapshotPath(dir_))) ++compactions_hit;
    // And it goes on from there.
    EXPECT_TRUE(registry->GetVariable(session, Decl("after", 99), shards_).ok());
  }
  EXPECT_GT(points, 20);
  EXPECT_GT(compactions_hit, 0);
  std::cout << "crash points covered: " << points << "\n";
}

// One failed operation at every mutating step of the same kind of
// workload (and the process goes on): a failed write is undone and the log
// goes on; a failed sync, or a compaction step after which the log's tail
// is unknown, refuses the rest. Then a restart, also after a power loss
// (unsynced data dropped), holds every acknowledged change and nothing
// else but the failed operations' own (which may or may not have landed).
TEST_F(RegistryLogFaultTest, OneFailedStepAnywhereLosesNothingAcknowledged) {
  int points = 0;
  for (const bool power_loss : {false, true}) {
    for (int n = 1; n <= 400; ++n) {
      SCOPED_TRACE(absl::StrCat("failure at mutation ", n, power_loss ? ", power loss" : ""));
      std::filesystem::remove_all(dir_);
      FaultInjectionFileSystem fs(FileSystem::Default());
      std::map<std::string, bool> acked;  // name -> exists, as acknowledged
      std::set<std::string> unsure;       // their mutation failed
      uint64_t session = 0;
      bool fired = false;
      {
        auto registry = Open(&fs, /*compact_bytes=*/700);
        ASSERT_NE(registry, nullptr);
        session = *registry->OpenSession("t");
        fs.Reset();
        fs.FailNthMutation(n);
        for (int i = 0; i < 12; ++i) {
          const std::string name = "v" + std::to_string(i);
          if (registry->GetVariable(session, Decl(name, i + 2), shards_).ok()) {
            acked[name] = true;
          } else {
            unsure.insert(name);
          }
          if (i % 4 == 3) {
            const std::string gone = "v" + std::to_string(i - 2);
            if (acked.count(gone) == 0) continue;
            if (registry->Delete(gone).ok()) {
              acked[gone] = false;
            } else {
              unsure.insert(gone);
            }
          }
        }
        fired = fs.faults_fired() > 0;
      }
      if (!fired) break;
      ++points;
      if (power_loss) {
        ASSERT_TRUE(fs.DropUnsyncedData().ok());
      }
      auto reopened = Registry::Open(Options(FileSystem::Default()));
      ASSERT_TRUE(reopened.ok()) << reopened.status();
      auto& registry = *reopened;
      EXPECT_TRUE(registry->HasSession(session));
      for (const auto& [name, exists] : acked) {
        if (unsure.count(name) > 0) continue;
        EXPECT_EQ(registry->Lookup(name).ok(), exists) << name;
      }
      for (const VariableDef& def : registry->List("")) {
        EXPECT_TRUE(acked.count(def.name()) > 0 || unsure.count(def.name()) > 0) << def.name();
      }
    }
  }
  EXPECT_GT(points, 40);
  std::cout << "failure points covered: " << points << "\n";
}

// Holds the syncs of one file (or of files whose names start with
// `prefix`) while armed: a test can keep one in flight.
class SyncGate {
 public:
  void Install(FaultInjectionFileSystem* fs, const std::string& path_or_prefix,
               bool prefix = false) {
    fs->SetHook([this, path_or_prefix, prefix](FsOp op, const std::string& path) {
      if (op != FsOp::kSync) return;
      if (prefix ? !absl::StartsWith(path, path_or_prefix) : path != path_or_prefix) return;
      absl::MutexLock lock(&mu_);
      ++syncs_;
      if (!armed_) return;
      armed_ = false;  // only the first one waits
      entered_.Notify();
      mu_.AwaitWithTimeout(absl::Condition(&released_), kPatience);
    });
  }
  void Arm() {
    absl::MutexLock lock(&mu_);
    armed_ = true;
  }
  bool WaitEntered() { return entered_.WaitForNotificationWithTimeout(kPatience); }
  bool entered() const { return entered_.HasBeenNotified(); }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }
  int syncs() {
    absl::MutexLock lock(&mu_);
    return syncs_;
  }

 private:
  absl::Mutex mu_;
  bool armed_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  int syncs_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Notification entered_;
};

// Polls `done` (bounded by kPatience).
template <typename F>
bool Eventually(F done) {
  const absl::Time deadline = absl::Now() + kPatience;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

TEST_F(RegistryLogFaultTest, ALookupIsAnsweredWhileASyncIsBlocked) {
  FaultInjectionFileSystem fs(FileSystem::Default());
  SyncGate gate;
  gate.Install(&fs, log_path());
  auto registry = Open(&fs);
  const uint64_t session = *registry->OpenSession("t");
  ASSERT_TRUE(registry->GetVariable(session, Decl("existing", 1), shards_).ok());

  gate.Arm();
  absl::Status slow_status;
  std::thread slow([&] {
    slow_status = registry->GetVariable(session, Decl("slow", 2), shards_).status();
  });
  ASSERT_TRUE(gate.WaitEntered());
  // The declaration's record is appended and its sync is held. A lookup
  // of another name (and a scope, which needs no sync) is answered now:
  // before, the sync held the registry's lock and these waited behind it.
  absl::Notification answered;
  absl::StatusOr<VariableDef> looked_up;
  std::thread reader([&] {
    looked_up = registry->Lookup("existing");
    (void)registry->OpenScope(session, "", "layer", "", false, false);
    answered.Notify();
  });
  const bool in_time = answered.WaitForNotificationWithTimeout(kPatience);
  gate.Release();
  slow.join();
  reader.join();
  EXPECT_TRUE(in_time) << "a lookup waited for another declaration's sync";
  ASSERT_TRUE(looked_up.ok()) << looked_up.status();
  EXPECT_EQ(looked_up->name(), "existing");
  EXPECT_TRUE(slow_status.ok()) << slow_status;
  EXPECT_TRUE(registry->Lookup("slow").ok());
}

TEST_F(RegistryLogFaultTest, ConcurrentDeclarationsShareOneSync) {
  FaultInjectionFileSystem fs(FileSystem::Default());
  SyncGate gate;
  gate.Install(&fs, log_path());
  auto registry = Open(&fs);
  const uint64_t session = *registry->OpenSession("t");
  const int before = gate.syncs();
  gate.Arm();
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(4);
  threads.emplace_back(
      [&] { results[0] = registry->GetVariable(session, Decl("w0", 1), shards_).status(); });
  ASSERT_TRUE(gate.WaitEntered());
  for (int i = 1; i < 4; ++i) {
    threads.emplace_back([&, i] {
      results[i] =
          registry->GetVariable(session, Decl("w" + std::to_string(i), 1), shards_).status();
    });
  }
  // All three appended (and applied) while the first sync is held.
  EXPECT_TRUE(Eventually([&] { return registry->num_variables() == 4; }));
  gate.Release();
  for (auto& t : threads) t.join();
  for (const auto& s : results) EXPECT_TRUE(s.ok()) << s;
  // The held sync, then one for the other three, not one each.
  EXPECT_EQ(gate.syncs() - before, 2);
}

TEST_F(RegistryLogFaultTest, AFailedSyncFailsEveryWaiterItCovered) {
  FaultInjectionFileSystem fs(FileSystem::Default());
  SyncGate gate;
  gate.Install(&fs, log_path());
  uint64_t session;
  {
    auto registry = Open(&fs);
    session = *registry->OpenSession("t");
    ASSERT_TRUE(registry->GetVariable(session, Decl("kept", 1), shards_).ok());
    gate.Arm();
    fs.FailOperation(FsOp::kSync, 1);  // the held one fails when released
    std::vector<std::thread> threads;
    std::vector<absl::Status> results(3);
    threads.emplace_back(
        [&] { results[0] = registry->GetVariable(session, Decl("f0", 1), shards_).status(); });
    ASSERT_TRUE(gate.WaitEntered());
    // Both appended (and applied) behind the held sync, one after the other.
    threads.emplace_back(
        [&] { results[1] = registry->GetVariable(session, Decl("f1", 1), shards_).status(); });
    EXPECT_TRUE(Eventually([&] { return registry->num_variables() == 3; }));  // kept, f0, f1
    threads.emplace_back([&] { results[2] = registry->Delete("kept").status(); });
    EXPECT_TRUE(Eventually([&] { return registry->num_variables() == 2; }));  // f0, f1
    gate.Release();
    for (auto& t : threads) t.join();
    for (const auto& s : results) {
      EXPECT_FALSE(s.ok());
      EXPECT_THAT(s.message(), HasSubstr("cannot be made durable"));
    }
    EXPECT_EQ(log_failures(), 1);
    EXPECT_FALSE(registry->Lookup("f0").ok());
    EXPECT_FALSE(registry->Lookup("kept").ok());  // its deletion is not durable either
  }
  ASSERT_TRUE(fs.DropUnsyncedData().ok());
  auto registry = Reopen();
  ASSERT_NE(registry, nullptr);
  EXPECT_TRUE(registry->Lookup("kept").ok());
  EXPECT_FALSE(registry->Lookup("f0").ok());
  EXPECT_FALSE(registry->Lookup("f1").ok());
}

// A compaction writes and syncs its snapshot and the new log outside the
// registry's lock: while its snapshot sync is held, lookups are answered
// and other declarations are made durable (in the old log) and
// acknowledged; the new log then carries them over, so a power loss right
// after keeps them all.
TEST_F(RegistryLogFaultTest, ACompactionRunsOutsideTheLockAndKeepsWhatCameInMeanwhile) {
  FaultInjectionFileSystem fs(FileSystem::Default());
  SyncGate gate;
  gate.Install(&fs, RegistryLog::SnapshotPath(dir_), /*prefix=*/true);
  gate.Arm();
  uint64_t session;
  std::set<std::string> acked;
  {
    auto registry = Open(&fs, /*compact_bytes=*/700);
    session = *registry->OpenSession("t");
    absl::Mutex acked_mu;
    // Declares until one of its declarations starts a compaction, which
    // holds it in the snapshot's sync.
    std::thread compactor([&] {
      for (int i = 0; i < 200 && !gate.entered(); ++i) {
        const std::string name = "v" + std::to_string(i);
        if (registry->GetVariable(session, Decl(name, i + 1), shards_).ok()) {
          absl::MutexLock lock(&acked_mu);
          acked.insert(name);
        }
      }
    });
    const bool held = gate.WaitEntered();
    EXPECT_TRUE(held);
    absl::Notification done;
    std::thread during([&] {
      EXPECT_TRUE(registry->Lookup("v0").ok());
      for (const std::string name : {"during0", "during1", "during2"}) {
        if (registry->GetVariable(session, Decl(name, 5), shards_).ok()) {
          absl::MutexLock lock(&acked_mu);
          acked.insert(name);
        }
      }
      done.Notify();
    });
    const bool in_time = done.WaitForNotificationWithTimeout(kPatience);
    gate.Release();
    compactor.join();
    during.join();
    EXPECT_TRUE(in_time) << "calls waited for a compaction's snapshot sync";
    EXPECT_EQ(acked.count("during2"), 1u);
    EXPECT_TRUE(registry->compaction_status().ok()) << registry->compaction_status();
    ASSERT_TRUE(registry->GetVariable(session, Decl("after", 6), shards_).ok());
    acked.insert("after");
  }
  EXPECT_TRUE(std::filesystem::exists(RegistryLog::SnapshotPath(dir_)));
  ASSERT_TRUE(fs.DropUnsyncedData().ok());
  auto registry = Reopen();
  ASSERT_NE(registry, nullptr);
  for (const std::string& name : acked) EXPECT_TRUE(registry->Lookup(name).ok()) << name;
  EXPECT_EQ(registry->num_variables(), acked.size());
  EXPECT_EQ(log_failures(), 0);
}

}  // namespace
}  // namespace psd
