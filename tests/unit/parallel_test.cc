// RunParallel (psd/parallel.h): every call runs once, the statuses come in
// index order, the calls run at once (each may wait for the others), and
// fan-outs from many threads, nested in each other, all finish.
#include "psd/parallel.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

TEST(RunParallelTest, EveryCallRunsOnceAndItsStatusComesAtItsIndex) {
  constexpr size_t kCalls = 50;
  std::vector<std::atomic<int>> runs(kCalls);
  for (int round = 0; round < 20; ++round) {
    const std::vector<absl::Status> out = RunParallel(kCalls, [&](size_t i) {
      runs[i].fetch_add(1);
      return i % 3 == 0 ? absl::OkStatus() : absl::InternalError(absl::StrCat("call ", i));
    });
    ASSERT_EQ(out.size(), kCalls);
    for (size_t i = 0; i < kCalls; ++i) {
      if (i % 3 == 0) {
        EXPECT_TRUE(out[i].ok()) << i;
      } else {
        EXPECT_EQ(out[i].message(), absl::StrCat("call ", i));
      }
    }
  }
  for (size_t i = 0; i < kCalls; ++i) EXPECT_EQ(runs[i].load(), 20) << "call " << i;
}

// Each call waits until all of them have started: that finishes only if
// they run at once (one per shard or part, each waiting on the network).
TEST(RunParallelTest, TheCallsRunAtOnce) {
  constexpr size_t kCalls = 8;
  for (int round = 0; round < 10; ++round) {
    absl::Mutex mu;
    size_t started = 0;
    const std::vector<absl::Status> out = RunParallel(kCalls, [&](size_t) {
      absl::MutexLock lock(&mu);
      ++started;
      // Bounded: a call that waits in vain fails the test, not hangs it.
      if (!mu.AwaitWithTimeout(absl::Condition(
                                   +[](size_t* n) { return *n == kCalls; }, &started),
                               absl::Seconds(30))) {
        return absl::DeadlineExceededError("the other calls did not start");
      }
      return absl::OkStatus();
    });
    for (const absl::Status& s : out) EXPECT_TRUE(s.ok()) << s;
  }
}

TEST(RunParallelTest, NestedFanOutsFromManyThreadsAllFinish) {
  std::atomic<int> leaves{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int k = 0; k < 50; ++k) {
        const std::vector<absl::Status> out = RunParallel(4, [&](size_t) {
          const std::vector<absl::Status> inner = RunParallel(3, [&](size_t) {
            leaves.fetch_add(1);
            return absl::OkStatus();
          });
          for (const absl::Status& s : inner) {
            if (!s.ok()) return s;
          }
          return absl::OkStatus();
        });
        for (const absl::Status& s : out) EXPECT_TRUE(s.ok()) << s;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(leaves.load(), 8 * 50 * 4 * 3);
}

// A child forked after fan-outs ran (a Python trainer's multiprocessing)
// has none of the parent's threads: its fan-outs still run, at once.
TEST(RunParallelTest, AForkedChildFansOutAtOnce) {
  ASSERT_TRUE(RunParallel(4, [](size_t) { return absl::OkStatus(); })[3].ok());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::Mutex mu;
    size_t started = 0;
    const std::vector<absl::Status> out = RunParallel(4, [&](size_t) {
      absl::MutexLock lock(&mu);
      ++started;
      return mu.AwaitWithTimeout(
                 absl::Condition(+[](size_t* n) { return *n == 4; }, &started),
                 absl::Seconds(30))
                 ? absl::OkStatus()
                 : absl::DeadlineExceededError("not at once");
    });
    bool ok = true;
    for (const absl::Status& s : out) ok = ok && s.ok();
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace psd
