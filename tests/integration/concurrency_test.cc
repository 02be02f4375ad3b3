// Many clients on one variable: every op is atomic on its variable, so
// concurrent updates neither get lost nor tear. No timing is asserted; loops
// are bounded by op counts.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using ConcurrencyTest = ShardTest;

constexpr int kThreads = 8;

// One client (one channel) per thread, like separate trainers.
std::vector<std::unique_ptr<client::ShardClient>> ConnectClients(const ShardProcess& process,
                                                                 int n) {
  std::vector<std::unique_ptr<client::ShardClient>> clients;
  for (int i = 0; i < n; ++i) {
    auto c = process.Connect();
    if (!c.ok()) {
      ADD_FAILURE() << c.status();
      return {};
    }
    clients.push_back(*std::move(c));
  }
  return clients;
}

TEST_F(ConcurrencyTest, ConcurrentAssignAddSumsExactly) {
  constexpr int kOpsPerThread = 1000;
  ASSERT_TRUE(IsOk(shard_->Create("sum", Tensor::Scalar<int64_t>(0))));
  auto clients = ConnectClients(*process_, kThreads);
  ASSERT_EQ(clients.size(), static_cast<size_t>(kThreads));
  std::atomic<int> failures{0};
  absl::Mutex mu;
  absl::Status first_error;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOpsPerThread; ++i) {
        absl::Status s = clients[t]->AssignAdd("sum", Tensor::Scalar<int64_t>(1));
        if (!s.ok()) {
          if (failures++ == 0) {
            absl::MutexLock lock(&mu);
            first_error = s;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0) << "first error: " << first_error;
  EXPECT_EQ(Read("sum"), Tensor::Scalar<int64_t>(kThreads * kOpsPerThread));
}

TEST_F(ConcurrencyTest, ConcurrentCountUpToHandsOutEachValueOnce) {
  constexpr int64_t kStart = 17, kLimit = 17 + 600;
  ASSERT_TRUE(IsOk(shard_->Create("counter", Tensor::Scalar<int64_t>(kStart))));
  auto clients = ConnectClients(*process_, kThreads);
  ASSERT_EQ(clients.size(), static_cast<size_t>(kThreads));
  std::vector<std::vector<int64_t>> got(kThreads);
  std::vector<absl::Status> last(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Bounded: no thread can get more than every value plus the final error.
      for (int64_t i = 0; i <= kLimit - kStart; ++i) {
        auto old = clients[t]->CountUpTo("counter", kLimit);
        if (!old.ok()) {
          last[t] = old.status();
          return;
        }
        got[t].push_back(*old);
      }
      last[t] = absl::InternalError("loop bound reached without OUT_OF_RANGE");
    });
  }
  for (auto& t : threads) t.join();

  std::vector<int64_t> all;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_TRUE(IsError(last[t], absl::StatusCode::kOutOfRange,
                        {"Reached limit of " + std::to_string(kLimit)}))
        << "thread " << t;
    // One client's values come back in increasing order.
    EXPECT_TRUE(std::is_sorted(got[t].begin(), got[t].end())) << "thread " << t;
    all.insert(all.end(), got[t].begin(), got[t].end());
  }
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), static_cast<size_t>(kLimit - kStart));
  for (int64_t i = 0; i < kLimit - kStart; ++i) {
    ASSERT_EQ(all[i], kStart + i) << "each old value exactly once";
  }
  EXPECT_TRUE(IsError(shard_->CountUpTo("counter", kLimit), absl::StatusCode::kOutOfRange,
                      {"Reached limit of " + std::to_string(kLimit)}));
  EXPECT_EQ(Read("counter"), Tensor::Scalar<int64_t>(kLimit));
}

TEST_F(ConcurrencyTest, ConcurrentScatterAddWithOverlappingIndicesSumsExactly) {
  constexpr int kOpsPerThread = 200;
  ASSERT_TRUE(IsOk(shard_->Create("table", Tensor(DT_INT32, TensorShape{4, 2}))));
  // Every op adds 1 to row 0 twice, to row 3 once.
  const Tensor indices = Vec<int64_t>({3}, {0, 3, 0});
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    // Half the threads share the fixture's client: one client is thread-safe.
    threads.emplace_back([&, t] {
      std::unique_ptr<client::ShardClient> own;
      client::ShardClient* c = shard_.get();
      if (t % 2 == 1) {
        auto connected = process_->Connect();
        if (!connected.ok()) {
          ++failures;
          return;
        }
        own = *std::move(connected);
        c = own.get();
      }
      for (int i = 0; i < kOpsPerThread; ++i) {
        if (!c->ScatterAdd("table", indices, Tensor::Scalar<int32_t>(1)).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  const int32_t n = kThreads * kOpsPerThread;
  EXPECT_EQ(Read("table"), Vec<int32_t>({4, 2}, {2 * n, 2 * n, 0, 0, 0, 0, n, n}));
}

TEST_F(ConcurrencyTest, ReadsNeverSeeAHalfAppliedAssign) {
  constexpr int kElements = 64 * 1024;  // large enough that a torn copy would show
  constexpr int kWrites = 100, kReadsPerReader = 100, kReaders = 3;
  ASSERT_TRUE(IsOk(shard_->Create("v", Tensor(DT_INT32, TensorShape{kElements}))));
  std::atomic<int> torn{0}, failures{0};
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    for (int k = 1; k <= kWrites; ++k) {
      Tensor value(DT_INT32, TensorShape{kElements});
      std::fill(value.data<int32_t>(), value.data<int32_t>() + kElements, k);
      if (!shard_->Assign("v", value).ok()) ++failures;
    }
  });
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&] {
      for (int i = 0; i < kReadsPerReader; ++i) {
        auto value = shard_->Read("v");
        if (!value.ok()) {
          ++failures;
          continue;
        }
        const int32_t* p = value->data<int32_t>();
        if (!std::all_of(p, p + kElements, [&](int32_t x) { return x == p[0]; })) ++torn;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(torn.load(), 0) << "a read saw elements of two different assigns";
}

}  // namespace
}  // namespace integration
}  // namespace psd
