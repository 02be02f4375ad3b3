// Graceful shutdown: at SIGTERM (or SIGINT) the shard stops accepting,
// finishes the RPCs in flight and exits 0. Seen from clients under load,
// every RPC ends OK or UNAVAILABLE, and once a client has seen UNAVAILABLE it
// never sees OK again (nothing is accepted after the drain starts).
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

constexpr int kThreads = 6;
// Ops each thread completes before the signal, so it lands under load.
constexpr int kWarmupOps = 50;
// After its first UNAVAILABLE a thread tries this many more ops.
constexpr int kOpsAfterUnavailable = 20;
// Safety bound on any loop; never reached when the shard behaves.
constexpr int kMaxOps = 1000000;

struct ThreadLog {
  std::atomic<int> ok{0};
  std::atomic<bool> done{false};
  int ok_after_unavailable = 0;
  int unavailable = 0;
  std::vector<absl::Status> unexpected;  // neither OK nor UNAVAILABLE
};

class ShutdownTest : public ShardTest, public ::testing::WithParamInterface<int> {};

TEST_P(ShutdownTest, SignalUnderLoadDrainsAndExitsZero) {
  const int signal = GetParam();
  ASSERT_TRUE(IsOk(shard_->Create("sum", Tensor::Scalar<int64_t>(0))));
  ASSERT_TRUE(IsOk(shard_->Create("table", Tensor(DT_FLOAT, TensorShape{128, 16}))));

  std::vector<std::unique_ptr<client::ShardClient>> clients;
  for (int t = 0; t < kThreads; ++t) {
    auto c = process_->Connect();
    ASSERT_TRUE(IsOk(c));
    clients.push_back(*std::move(c));
  }
  std::vector<ThreadLog> logs(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ThreadLog& log = logs[t];
      client::ShardClient& c = *clients[t];
      int after = 0;
      for (int i = 0; i < kMaxOps && after < kOpsAfterUnavailable; ++i) {
        absl::Status s;
        switch (i % 3) {
          case 0:
            s = c.AssignAdd("sum", Tensor::Scalar<int64_t>(1));
            break;
          case 1:
            s = c.Read("table").status();
            break;
          default:
            s = c.ScatterAdd("table", Vec<int32_t>({2}, {t, 127 - t}), Tensor::Scalar<float>(1));
        }
        if (log.unavailable > 0) ++after;
        if (s.ok()) {
          if (log.unavailable > 0) ++log.ok_after_unavailable;
          ++log.ok;
        } else if (s.code() == absl::StatusCode::kUnavailable) {
          ++log.unavailable;
        } else {
          log.unexpected.push_back(s);
          if (log.unexpected.size() > 10) break;
        }
      }
      log.done = true;
    });
  }
  // Bounded wait for every thread to be running ops against the shard.
  const absl::Time warmup_deadline = absl::Now() + absl::Seconds(120);
  auto warmed_up = [&] {
    for (const auto& log : logs) {
      if (log.ok.load() < kWarmupOps && !log.done) return false;
    }
    return true;
  };
  while (!warmed_up() && absl::Now() < warmup_deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_TRUE(warmed_up()) << "clients did not get going";

  // No ASSERT until the threads are joined: they must not outlive the test.
  EXPECT_TRUE(IsOk(process_->Signal(signal)));
  auto wait_status = process_->Wait(absl::Seconds(60));
  if (!wait_status.ok()) {
    // Stop it so the threads see UNAVAILABLE and finish.
    EXPECT_TRUE(IsOk(process_->Signal(SIGKILL)));
    EXPECT_TRUE(IsOk(process_->Wait(absl::Seconds(60))));
  }
  for (auto& t : threads) t.join();
  skip_alive_check_ = true;

  ASSERT_TRUE(IsOk(wait_status)) << "the shard did not exit after signal " << signal;
  EXPECT_TRUE(WIFEXITED(*wait_status) && WEXITSTATUS(*wait_status) == 0)
      << "psd shard ended with " << DescribeWaitStatus(*wait_status);
  for (int t = 0; t < kThreads; ++t) {
    SCOPED_TRACE("thread " + std::to_string(t));
    const ThreadLog& log = logs[t];
    for (const auto& s : log.unexpected) ADD_FAILURE() << "neither OK nor UNAVAILABLE: " << s;
    EXPECT_GT(log.unavailable, 0) << "the shard went away without a thread noticing";
    EXPECT_EQ(log.ok_after_unavailable, 0) << "an op succeeded after an UNAVAILABLE";
  }
}

TEST_P(ShutdownTest, SignalWhenIdleExitsZero) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Tensor::Scalar<int64_t>(0))));
  ASSERT_TRUE(IsOk(process_->Signal(GetParam())));
  auto wait_status = process_->Wait(absl::Seconds(60));
  skip_alive_check_ = true;
  ASSERT_TRUE(IsOk(wait_status));
  EXPECT_TRUE(WIFEXITED(*wait_status) && WEXITSTATUS(*wait_status) == 0)
      << "psd shard ended with " << DescribeWaitStatus(*wait_status);
  EXPECT_TRUE(IsError(shard_->Read("v"), absl::StatusCode::kUnavailable));
  // Connect waits for a shard to come up, but only until its deadline.
  client::ClientOptions options;
  options.timeout = absl::Seconds(1);
  EXPECT_TRUE(IsError(process_->Connect(options), absl::StatusCode::kDeadlineExceeded,
                      {process_->address()}));
}

INSTANTIATE_TEST_SUITE_P(Signals, ShutdownTest, ::testing::Values(SIGTERM, SIGINT),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(info.param == SIGTERM ? "SIGTERM" : "SIGINT");
                         });

}  // namespace
}  // namespace integration
}  // namespace psd
