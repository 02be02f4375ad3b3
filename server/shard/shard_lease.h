// ShardLease: the shard's view of the lease the coordinator grants it with
// each accepted registration and heartbeat (docs/replication.md "Leases").
// A primary of a replicated part serves writes only while its shard holds
// the lease, so a shard cut off from the coordinator stops acknowledging
// before the coordinator may promote a backup in its place.
//
// Safety rests on which clock reading starts the lease: the shard's own
// monotonic clock read *before* it sent the call that was granted (Grant's
// `asked_at`). The coordinator accepted the call later in real time and
// counts from then, so the shard's lease always ends first, however long
// the call and its answer took.
//
// Thread-safety: thread-safe (one atomic); Grant is called by the
// coordinator link's thread, the rest by any thread.
#ifndef PSD_SERVER_SHARD_SHARD_LEASE_H_
#define PSD_SERVER_SHARD_SHARD_LEASE_H_

#include <atomic>
#include <chrono>
#include <cstdint>

namespace psd {

class ShardLease {
 public:
  using Clock = std::chrono::steady_clock;

  // A lease of `duration` from `asked_at` (the clock read before the call
  // that granted it was sent). Never shortens a lease already held: an
  // answer to an older call may arrive after a newer one's.
  void Grant(Clock::time_point asked_at, std::chrono::milliseconds duration) {
    if (duration <= std::chrono::milliseconds::zero()) return;
    const int64_t until = Ticks(asked_at + duration);
    int64_t held = until_.load(std::memory_order_relaxed);
    while (held < until &&
           !until_.compare_exchange_weak(held, until, std::memory_order_release,
                                         std::memory_order_relaxed)) {
    }
    grants_.fetch_add(1, std::memory_order_relaxed);
  }

  bool Held(Clock::time_point now = Clock::now()) const { return Ticks(now) < until_ns(); }
  // Zero once expired (or never granted).
  std::chrono::nanoseconds Remaining(Clock::time_point now = Clock::now()) const {
    const int64_t left = until_ns() - Ticks(now);
    return std::chrono::nanoseconds(left > 0 ? left : 0);
  }
  // When the lease ends on this host's monotonic clock (steady_clock is
  // CLOCK_MONOTONIC on Linux); zero if never granted.
  std::chrono::nanoseconds ExpiresAt() const { return std::chrono::nanoseconds(until_ns()); }
  int64_t grants() const { return grants_.load(std::memory_order_relaxed); }

 private:
  static int64_t Ticks(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }
  int64_t until_ns() const { return until_.load(std::memory_order_acquire); }

  std::atomic<int64_t> until_{0};
  std::atomic<int64_t> grants_{0};
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_LEASE_H_
