// RecyclingMessageAllocator: once warm, a small op's request/response cycle
// allocates nothing; large messages and a full pool are freed, not kept.
#include "shard/message_pool.h"

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "psd/shard.pb.h"

// Counts every operator new of this test binary while counting is on.
namespace {
std::atomic<bool> counting{false};
std::atomic<int64_t> allocations{0};
}  // namespace

// The replacements pair malloc with free on purpose.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace psd {
namespace {

using AssignPool = RecyclingMessageAllocator<AssignRequest, AssignResponse>;

// What the wire carries for a scalar assign_add with a request id.
std::string SmallAssign(float delta, uint64_t seq) {
  AssignRequest request;
  request.set_name("layer_3/bias");
  request.set_op(UPDATE_ADD);
  request.mutable_value()->set_dtype(DT_FLOAT);
  request.mutable_value()->set_content(std::string(reinterpret_cast<const char*>(&delta), 4));
  request.mutable_request_id()->set_client_id(77);
  request.mutable_request_id()->set_seq(seq);
  request.set_shard_incarnation(12345);
  return request.SerializeAsString();
}

// One call as the shard serves it: parse, answer with the new value, release.
void ServeOne(AssignPool* pool, const std::string& wire, uint64_t version) {
  grpc::MessageHolder<AssignRequest, AssignResponse>* holder = pool->AllocateMessages();
  ASSERT_TRUE(holder->request()->ParseFromString(wire));
  AssignResponse* response = holder->response();
  response->set_version(version);
  response->mutable_value()->set_dtype(DT_FLOAT);
  *response->mutable_value()->mutable_content() = holder->request()->value().content();
  holder->Release();
}

TEST(MessagePoolTest, WarmSmallOpCyclesAllocateNothing) {
  AssignPool pool;
  std::vector<std::string> wires;
  for (int i = 0; i < 1000; ++i) wires.push_back(SmallAssign(static_cast<float>(i), i + 1));
  for (int i = 0; i < 3; ++i) ServeOne(&pool, wires[i], i);  // warm: the pair's fields exist
  EXPECT_EQ(pool.idle(), 1u);

  allocations = 0;
  counting = true;
  for (int i = 0; i < 1000; ++i) ServeOne(&pool, wires[i], i);
  counting = false;
  EXPECT_EQ(allocations.load(), 0) << "recycled messages allocated on a warm pool";
  EXPECT_EQ(pool.idle(), 1u);

  // The recycled messages are clean: nothing of the previous call leaks
  // into the next one.
  auto* holder = pool.AllocateMessages();
  EXPECT_EQ(holder->request()->ByteSizeLong(), 0u);
  EXPECT_EQ(holder->response()->ByteSizeLong(), 0u);
  EXPECT_FALSE(holder->request()->has_value());
  holder->Release();
}

TEST(MessagePoolTest, FreshMessagesAllocateWhichIsWhatThePoolSaves) {
  // The same cycle with new messages each time, to show the test's counter
  // sees what the pool avoids.
  const std::string wire = SmallAssign(1.5f, 1);
  allocations = 0;
  counting = true;
  for (int i = 0; i < 100; ++i) {
    auto request = std::make_unique<AssignRequest>();
    auto response = std::make_unique<AssignResponse>();
    ASSERT_TRUE(request->ParseFromString(wire));
    response->mutable_value()->set_content(request->value().content());
  }
  counting = false;
  EXPECT_GE(allocations.load(), 100 * 4);
}

TEST(MessagePoolTest, LargeValuesWorkAndAreNotRetained) {
  AssignPool pool;
  auto* holder = pool.AllocateMessages();
  const std::string big(1 << 20, 'x');
  AssignRequest request;
  request.mutable_value()->set_content(big);
  ASSERT_TRUE(holder->request()->ParseFromString(request.SerializeAsString()));
  EXPECT_EQ(holder->request()->value().content(), big);
  holder->Release();
  EXPECT_EQ(pool.idle(), 1u);
  // The next call starts from empty messages in the pair's own block: a
  // small op on it allocates nothing, so the megabyte was freed, not kept.
  holder = pool.AllocateMessages();
  EXPECT_EQ(holder->request()->ByteSizeLong(), 0u);
  holder->Release();
  const std::string wire = SmallAssign(1.0f, 1);
  ServeOne(&pool, wire, 1);
  allocations = 0;
  counting = true;
  ServeOne(&pool, wire, 2);
  counting = false;
  EXPECT_EQ(allocations.load(), 0);
}

TEST(MessagePoolTest, TheIdleListIsBounded) {
  AssignPool pool(/*max_idle=*/4);
  std::vector<grpc::MessageHolder<AssignRequest, AssignResponse>*> held;
  for (int i = 0; i < 10; ++i) held.push_back(pool.AllocateMessages());
  for (auto* h : held) h->Release();
  EXPECT_EQ(pool.idle(), 4u);
}

TEST(MessagePoolTest, ConcurrentCallsShareThePool) {
  AssignPool pool(/*max_idle=*/16);
  const std::string wire = SmallAssign(2.0f, 9);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) ServeOne(&pool, wire, i);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GE(pool.idle(), 1u);
  EXPECT_LE(pool.idle(), 4u);  // never more pairs than calls at once
}

}  // namespace
}  // namespace psd
