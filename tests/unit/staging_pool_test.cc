// StagingPool: staging buffers are reused between ops instead of allocated
// (and zero-filled by the kernel) per op; idle ones stay inside the memory
// limit, give way when an allocation needs the room, and never take the
// shard past its limit.
#include "shard/staging_pool.h"

#include <atomic>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "device/device.h"
#include "gtest/gtest.h"
#include "shard/memory_accountant.h"

namespace psd {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

// The CPU device, counting allocations; with a capacity, an allocation that
// would take its live bytes past it fails RESOURCE_EXHAUSTED (a full GPU).
class CountingDevice final : public Device {
 public:
  explicit CountingDevice(int64_t capacity = 0) : inner_(NewCpuDevice()), capacity_(capacity) {}

  int allocations() const { return allocations_.load(); }
  int64_t live_bytes() const { return live_->load(); }

  std::string name() const override { return "cpu:0"; }
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override {
    if (capacity_ > 0 && live_->load() + static_cast<int64_t>(bytes) > capacity_) {
      return absl::ResourceExhaustedError("out of device memory");
    }
    auto inner = inner_->Allocate(bytes);
    if (!inner.ok()) return inner.status();
    allocations_.fetch_add(1);
    return std::unique_ptr<DeviceBuffer>(new Tracked(std::move(inner).value(), live_));
  }
  absl::Status CopyFromHost(const void* src, size_t bytes, DeviceBuffer* dst,
                            size_t offset) override {
    return inner_->CopyFromHost(src, bytes, Inner(dst), offset);
  }
  absl::Status CopyToHost(const DeviceBuffer& src, size_t offset, size_t bytes,
                          void* dst) override {
    return inner_->CopyToHost(Inner(src), offset, bytes, dst);
  }
  absl::Status Copy(const DeviceBuffer& src, DeviceBuffer* dst) override {
    return inner_->Copy(Inner(src), Inner(dst));
  }
  absl::Status CopyRange(const DeviceBuffer& src, size_t src_offset, DeviceBuffer* dst,
                         size_t dst_offset, size_t bytes) override {
    return inner_->CopyRange(Inner(src), src_offset, Inner(dst), dst_offset, bytes);
  }
  absl::Status ApplyDense(DataType, UpdateKind, DeviceBuffer*, const void*, int64_t,
                          bool) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status ApplyDenseFromBuffer(DataType, UpdateKind, DeviceBuffer*, const DeviceBuffer&,
                                    int64_t) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status ApplyScatter(DataType, UpdateKind, DeviceBuffer*, int64_t, absl::Span<const int64_t>,
                            const void*, bool) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status Gather(DataType, const DeviceBuffer&, int64_t, absl::Span<const int64_t>,
                      void*) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status ApplyOptimizerDense(const OptimizerParams&, DataType, DeviceBuffer*,
                                   absl::Span<DeviceBuffer* const>, const void*, int64_t) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status ApplyOptimizerSparse(const OptimizerParams&, DataType, DeviceBuffer*,
                                    absl::Span<DeviceBuffer* const>, int64_t,
                                    absl::Span<const int64_t>, const void*) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status Initialize(const InitializerSpec&, DataType, const TensorShape&, const TensorShape&,
                          absl::Span<const int64_t>, DeviceBuffer*) override {
    return absl::UnimplementedError("not in this test");
  }

 private:
  class Tracked final : public DeviceBuffer {
   public:
    Tracked(std::unique_ptr<DeviceBuffer> inner, std::shared_ptr<std::atomic<int64_t>> live)
        : inner_(std::move(inner)), live_(std::move(live)) {
      live_->fetch_add(static_cast<int64_t>(inner_->size()));
    }
    ~Tracked() override { live_->fetch_sub(static_cast<int64_t>(inner_->size())); }
    void* data() override { return inner_->data(); }
    const void* data() const override { return inner_->data(); }
    size_t size() const override { return inner_->size(); }
    DeviceBuffer* inner() const { return inner_.get(); }

   private:
    std::unique_ptr<DeviceBuffer> inner_;
    std::shared_ptr<std::atomic<int64_t>> live_;
  };
  static DeviceBuffer* Inner(DeviceBuffer* b) { return static_cast<Tracked*>(b)->inner(); }
  static const DeviceBuffer& Inner(const DeviceBuffer& b) {
    return *static_cast<const Tracked&>(b).inner();
  }

  std::unique_ptr<Device> inner_;
  const int64_t capacity_;
  std::atomic<int> allocations_{0};
  std::shared_ptr<std::atomic<int64_t>> live_ = std::make_shared<std::atomic<int64_t>>(0);
};

TEST(StagingPoolTest, RepeatedStagingOfOneSizeAllocatesOnce) {
  MemoryAccountant memory(0);
  CountingDevice device;
  StagingPool pool(&memory, 64 * kMiB);
  void* first = nullptr;
  for (int op = 0; op < 10; ++op) {
    MemoryReservation reservation;
    auto buffer = pool.Acquire(&device, 4 * kMiB, "v", &reservation);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    ASSERT_EQ((*buffer)->size(), size_t{4} << 20);
    if (op == 0) first = (*buffer)->data();
    EXPECT_EQ((*buffer)->data(), first) << "op " << op;  // the same pages each time
    // In use: charged and reported as used.
    EXPECT_EQ(reservation.bytes(), 4 * kMiB);
    EXPECT_EQ(memory.used(), 4 * kMiB);
    std::memset((*buffer)->data(), op, (*buffer)->size());
    pool.Recycle(&device, std::move(buffer).value(), std::move(reservation));
    // Idle: still held against the limit, not reported as used.
    EXPECT_EQ(memory.used(), 0);
    EXPECT_EQ(memory.held(), 4 * kMiB);
  }
  EXPECT_EQ(device.allocations(), 1);
  const StagingPool::Stats stats = pool.stats();
  EXPECT_EQ(stats.hits, 9);
  EXPECT_EQ(stats.misses, 1);
  EXPECT_EQ(stats.idle_bytes, 4 * kMiB);
  EXPECT_EQ(stats.idle_buffers, 1);
  pool.Clear();
  EXPECT_EQ(memory.held(), 0);
  EXPECT_EQ(device.live_bytes(), 0);
}

TEST(StagingPoolTest, OnlyTheSameDeviceAndSizeIsReused) {
  MemoryAccountant memory(0);
  CountingDevice a, b;
  StagingPool pool(&memory, 64 * kMiB);
  MemoryReservation r;
  auto buffer = pool.Acquire(&a, kMiB, "v", &r);
  ASSERT_TRUE(buffer.ok());
  pool.Recycle(&a, std::move(buffer).value(), std::move(r));
  ASSERT_TRUE(pool.Acquire(&b, kMiB, "v", &r).ok());  // another device
  r.Reset();
  ASSERT_TRUE(pool.Acquire(&a, 2 * kMiB, "v", &r).ok());  // another size
  r.Reset();
  EXPECT_EQ(a.allocations() + b.allocations(), 3);
  EXPECT_EQ(pool.stats().hits, 0);
  EXPECT_EQ(pool.stats().idle_buffers, 1);
}

TEST(StagingPoolTest, KeepsAtMostItsCapOldestFreedFirst) {
  MemoryAccountant memory(0);
  CountingDevice device;
  StagingPool pool(&memory, 2 * kMiB);
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  std::vector<MemoryReservation> reservations(4);
  for (int64_t size : {kMiB, kMiB + 4096, kMiB + 8192}) {
    auto buffer = pool.Acquire(&device, size, "v", &reservations[buffers.size()]);
    ASSERT_TRUE(buffer.ok());
    buffers.push_back(std::move(buffer).value());
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    pool.Recycle(&device, std::move(buffers[i]), std::move(reservations[i]));
  }
  // Two fit under 2 MiB... not three: the oldest (1 MiB) went first.
  StagingPool::Stats stats = pool.stats();
  EXPECT_EQ(stats.idle_buffers, 1);
  EXPECT_EQ(stats.idle_bytes, kMiB + 8192);
  EXPECT_EQ(memory.held(), kMiB + 8192);
  EXPECT_EQ(device.live_bytes(), kMiB + 8192);

  // Bigger than the cap, or too small to be worth keeping: freed at once.
  for (int64_t size : {3 * kMiB, StagingPool::kMinPooledBytes - 1}) {
    auto buffer = pool.Acquire(&device, size, "v", &reservations[3]);
    ASSERT_TRUE(buffer.ok());
    pool.Recycle(&device, std::move(buffer).value(), std::move(reservations[3]));
  }
  EXPECT_EQ(pool.stats().idle_bytes, kMiB + 8192);
  EXPECT_EQ(memory.held(), kMiB + 8192);
}

TEST(StagingPoolTest, ZeroCapKeepsNothing) {
  MemoryAccountant memory(0);
  CountingDevice device;
  StagingPool pool(&memory, 0);
  for (int op = 0; op < 3; ++op) {
    MemoryReservation r;
    auto buffer = pool.Acquire(&device, kMiB, "v", &r);
    ASSERT_TRUE(buffer.ok());
    pool.Recycle(&device, std::move(buffer).value(), std::move(r));
    EXPECT_EQ(memory.held(), 0);
  }
  EXPECT_EQ(device.allocations(), 3);
  EXPECT_EQ(pool.stats().hits + pool.stats().misses, 0);
}

TEST(StagingPoolTest, ForeignReservationIsNotKept) {
  MemoryAccountant memory(0), other(0);
  CountingDevice device;
  StagingPool pool(&memory, 16 * kMiB);
  auto buffer = device.Allocate(kMiB);
  ASSERT_TRUE(buffer.ok());
  ASSERT_TRUE(other.Reserve(kMiB, "v").ok());
  pool.Recycle(&device, std::move(buffer).value(), MemoryReservation(&other, kMiB));
  EXPECT_EQ(pool.stats().idle_buffers, 0);
  EXPECT_EQ(other.held(), 0);
  // A reservation that does not match the buffer's size either.
  buffer = device.Allocate(kMiB);
  ASSERT_TRUE(memory.Reserve(kMiB + 1, "v").ok());
  pool.Recycle(&device, std::move(buffer).value(), MemoryReservation(&memory, kMiB + 1));
  EXPECT_EQ(pool.stats().idle_buffers, 0);
  EXPECT_EQ(memory.held(), 0);
  EXPECT_EQ(device.live_bytes(), 0);
}

TEST(StagingPoolTest, IdleBuffersGiveWayUnderMemoryPressure) {
  MemoryAccountant memory(8 * kMiB);
  CountingDevice device;
  StagingPool pool(&memory, 8 * kMiB);
  MemoryReservation r;
  for (int64_t size : {3 * kMiB, 4 * kMiB}) {
    auto buffer = pool.Acquire(&device, size, "v", &r);
    ASSERT_TRUE(buffer.ok());
    pool.Recycle(&device, std::move(buffer).value(), std::move(r));
  }
  ASSERT_EQ(memory.held(), 7 * kMiB);
  ASSERT_EQ(memory.used(), 0);
  // 4 MiB of data fit once 3 MiB of idle buffers go: the oldest, alone.
  ASSERT_TRUE(memory.Reserve(4 * kMiB, "data").ok());
  EXPECT_EQ(pool.stats().reclaimed_bytes, 3 * kMiB);
  EXPECT_EQ(pool.stats().idle_bytes, 4 * kMiB);
  EXPECT_EQ(memory.held(), 8 * kMiB);
  EXPECT_EQ(device.live_bytes(), 4 * kMiB);
  // A staging buffer of another size takes the room of the last idle one.
  auto buffer = pool.Acquire(&device, 2 * kMiB, "v", &r);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  EXPECT_EQ(pool.stats().idle_bytes, 0);
  EXPECT_EQ(memory.held(), 6 * kMiB);
  // With nothing idle left, the limit holds as before.
  const absl::Status refused = memory.Reserve(3 * kMiB, "data");
  EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
  EXPECT_EQ(memory.held(), 6 * kMiB);
  buffer->reset();
  r.Reset();
  memory.Release(4 * kMiB);
  EXPECT_EQ(memory.held(), 0);
}

TEST(StagingPoolTest, FullDeviceFreesItsIdleBuffersAndRetries) {
  MemoryAccountant memory(0);
  CountingDevice gpu(/*capacity=*/3 * kMiB);
  StagingPool pool(&memory, 64 * kMiB);
  MemoryReservation r;
  auto buffer = pool.Acquire(&gpu, 2 * kMiB, "v", &r);
  ASSERT_TRUE(buffer.ok());
  pool.Recycle(&gpu, std::move(buffer).value(), std::move(r));
  // 2 MiB idle + 2 MiB + 4 KiB do not fit the device's 3 MiB.
  buffer = pool.Acquire(&gpu, 2 * kMiB + 4096, "v", &r);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  EXPECT_EQ(pool.stats().idle_buffers, 0);
  EXPECT_EQ(pool.stats().reclaimed_bytes, 2 * kMiB);
  EXPECT_EQ(memory.held(), 2 * kMiB + 4096);
  EXPECT_EQ(gpu.live_bytes(), 2 * kMiB + 4096);
}

TEST(StagingPoolTest, HeldBytesNeverPassTheLimitUnderConcurrency) {
  constexpr int64_t kLimit = 16 * kMiB;
  MemoryAccountant memory(kLimit);
  CountingDevice device;
  StagingPool pool(&memory, kLimit);
  std::atomic<bool> done{false};
  std::atomic<int64_t> worst{0};
  std::thread watcher([&] {
    while (!done.load()) {
      const int64_t held = memory.held();
      int64_t seen = worst.load();
      while (held > seen && !worst.compare_exchange_weak(seen, held)) {
      }
    }
  });
  std::vector<std::thread> workers;
  std::atomic<int> refused{0};
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int op = 0; op < 300; ++op) {
        const int64_t size = (1 + static_cast<int64_t>(rng() % 5)) * kMiB;
        if (rng() % 3 == 0) {
          // Plain data: must find room even when the pool is full of idle
          // buffers.
          if (memory.Reserve(size, "data").ok()) {
            memory.Release(size);
          } else {
            refused.fetch_add(1);
          }
          continue;
        }
        MemoryReservation r;
        auto buffer = pool.Acquire(&device, size, "v", &r);
        if (!buffer.ok()) {
          refused.fetch_add(1);
          continue;
        }
        static_cast<char*>((*buffer)->data())[0] = 1;
        pool.Recycle(&device, std::move(buffer).value(), std::move(r));
      }
    });
  }
  for (auto& w : workers) w.join();
  done.store(true);
  watcher.join();
  EXPECT_LE(worst.load(), kLimit);
  EXPECT_LE(memory.held(), kLimit);
  EXPECT_EQ(memory.used(), 0);
  EXPECT_EQ(memory.held(), pool.stats().idle_bytes);
  EXPECT_EQ(device.live_bytes(), pool.stats().idle_bytes);
  // 4 threads of at most 5 MiB each fit 16 MiB only by reclaiming; some may
  // still be refused while others hold the room, but not most.
  EXPECT_LT(refused.load(), 600);
  pool.Clear();
  EXPECT_EQ(memory.held(), 0);
  EXPECT_EQ(memory.idle(), 0);
}

}  // namespace
}  // namespace psd
