// StagingPool: device buffers kept between ops for the shard's per-op
// staging (a streamed assign's or apply's value, a restore's parts) and for
// the values those staged buffers replace, so a steady stream of same-sized
// writes allocates nothing: no page faults, no kernel zero fill (a fresh
// 256 MiB buffer costs 65536 faults and as many zeroed pages, more than the
// copy into it).
//
// A buffer comes back with unspecified contents: every caller writes each
// byte before it is read (a staged value is committed only when all of its
// bytes arrived).
//
// Accounting: an idle buffer keeps its MemoryReservation, marked idle (see
// MemoryAccountant), so pooled bytes count against the shard's memory limit
// and the shard never holds more than the limit. The pool is the
// accountant's reclaimer: a reservation that does not fit frees idle
// buffers, oldest first, and is tried again. A device allocation that fails
// (a full GPU) frees that device's idle buffers and is tried once more.
//
// Bounds: at most `max_idle_bytes` (the shard's --staging-pool-bytes) and
// kMaxIdleBuffers buffers wait in the pool; the oldest go first. Buffers
// under kMinPooledBytes are not pooled (the heap serves them without
// faults).
//
// Thread-safety: thread-safe. The idle list is guarded by mu_, a leaf lock:
// nothing is allocated, freed or reserved while it is held. The pool must
// outlive nothing it hands out (buffers own themselves), but the devices it
// pools for and the accountant must outlive the pool.
#ifndef PSD_SERVER_SHARD_STAGING_POOL_H_
#define PSD_SERVER_SHARD_STAGING_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "device/device.h"
#include "shard/memory_accountant.h"

namespace psd {

class StagingPool final : public MemoryReclaimer {
 public:
  // Smaller buffers come from the heap's free lists, already faulted in.
  static constexpr int64_t kMinPooledBytes = int64_t{64} << 10;
  // Bounds the idle list (and the scan for a match) whatever the sizes.
  static constexpr size_t kMaxIdleBuffers = 64;

  struct Stats {
    int64_t hits = 0;        // Acquire served by an idle buffer
    int64_t misses = 0;      // Acquire of a poolable size that allocated
    int64_t idle_bytes = 0;  // held in the pool now
    int64_t idle_buffers = 0;
    int64_t reclaimed_bytes = 0;  // freed for a reservation that did not fit
  };

  // Registers itself as `memory`'s reclaimer (until destroyed).
  // `max_idle_bytes` <= 0 turns pooling off: buffers are allocated and
  // freed per op, as without a pool.
  StagingPool(MemoryAccountant* memory, int64_t max_idle_bytes);
  ~StagingPool() override;
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // A buffer of exactly `bytes` bytes on `device`, its bytes reserved in
  // `*reservation` (RESOURCE_EXHAUSTED naming `name` past the limit). Its
  // contents are unspecified.
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Acquire(Device* device, int64_t bytes,
                                                        const std::string& name,
                                                        MemoryReservation* reservation);

  // Takes back a buffer of `device` with its reservation (which must hold
  // exactly the buffer's bytes, from this pool's accountant; otherwise, or
  // when it is too small or too big to keep, it is freed now).
  void Recycle(Device* device, std::unique_ptr<DeviceBuffer> buffer, MemoryReservation reservation);

  // MemoryReclaimer: frees idle buffers, oldest first.
  int64_t ReclaimIdle(int64_t bytes) override;

  // Frees every idle buffer.
  void Clear();

  Stats stats() const;
  int64_t max_idle_bytes() const { return max_idle_bytes_; }

 private:
  struct Entry {
    Device* device = nullptr;
    MemoryReservation reservation;  // released after the buffer is freed
    std::unique_ptr<DeviceBuffer> buffer;
  };

  // Frees `entries` (outside mu_): their bytes stop being idle and are
  // released.
  void Free(std::vector<Entry> entries);
  // Moves idle buffers (oldest first, of `device` unless null) out until
  // `bytes` are gathered.
  std::vector<Entry> TakeOldest(Device* device, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  MemoryAccountant* const memory_;
  const int64_t max_idle_bytes_;
  mutable absl::Mutex mu_;
  std::vector<Entry> idle_ ABSL_GUARDED_BY(mu_);  // oldest first
  int64_t idle_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reclaimed_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_STAGING_POOL_H_
