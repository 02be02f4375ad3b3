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
// A lease held now was not necessarily held all along: a shard paused
// (SIGSTOP, a stalled VM) past its lease may have had its primaries failed
// over, and then registered again and been granted a new lease. Each time
// a grant finds the lease expired a new *term* begins. A write acknowledged
// only while the lease is held in the term its shard read before applying
// it was applied and answered under one unbroken lease, during which no
// backup can have been promoted in its shard's place.
//
// Thread-safety: thread-safe (atomics); Grant is called by the
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
  // A grant that finds the lease expired (or never granted) begins a new
  // term, before the lease it extends can be seen held.
  void Grant(Clock::time_point asked_at, std::chrono::milliseconds duration) {
    if (duration <= std::chrono::milliseconds::zero()) return;
    const int64_t until = Ticks(asked_at + duration);
    const int64_t now = Ticks(Clock::now());
    int64_t held = until_.load(std::memory_order_acquire);
    bool new_term = false;
    while (held < until) {
      if (now >= held && !new_term) {
        term_.fetch_add(1, std::memory_order_acq_rel);
        new_term = true;
      }
      if (until_.compare_exchange_weak(held, until, std::memory_order_release,
                                       std::memory_order_acquire)) {
        break;
      }
    }
    grants_.fetch_add(1, std::memory_order_relaxed);
  }

  bool Held(Clock::time_point now = Clock::now()) const { return Ticks(now) < until_ns(); }
  // The current term: read it before a write applies, and answer the write
  // only if HeldInTerm(that term) then.
  uint64_t term() const { return term_.load(std::memory_order_acquire); }
  // Held now, and without a break since `term` began.
  bool HeldInTerm(uint64_t term, Clock::time_point now = Clock::now()) const {
    // until_ first: a grant begins its term before it publishes its end.
    const bool held = Held(now);
    return held && term_.load(std::memory_order_acquire) == term;
  }
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
  std::atomic<uint64_t> term_{0};
  std::atomic<int64_t> grants_{0};
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_LEASE_H_
