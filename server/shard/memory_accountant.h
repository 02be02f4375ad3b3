// MemoryAccountant: the shard's byte budget. Every buffer that holds variable
// data reserves its bytes here first, so a request that would take the shard
// past its configured limit fails with RESOURCE_EXHAUSTED before anything is
// allocated or changed.
//
// Idle bytes: buffers a pool keeps between ops (StagingPool) stay reserved,
// so what the shard holds never passes the limit, but they are marked idle:
// used() leaves them out, and a reservation that would not fit first asks
// the reclaimer (the pool) to free idle buffers, then tries again.
//
// Thread-safe (lock-free counters). The reclaimer is set before the first
// Reserve and must outlive every call to it (cleared with nullptr).
#ifndef PSD_SERVER_SHARD_MEMORY_ACCOUNTANT_H_
#define PSD_SERVER_SHARD_MEMORY_ACCOUNTANT_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace psd {

// Frees idle buffers when a reservation would pass the limit.
class MemoryReclaimer {
 public:
  virtual ~MemoryReclaimer() = default;
  // Frees idle buffers (their reservations released) until at least
  // `bytes` were freed or none is left; returns the bytes freed. Called
  // without any of the accountant's state locked; must not Reserve.
  virtual int64_t ReclaimIdle(int64_t bytes) = 0;
};

class MemoryAccountant {
 public:
  // `limit_bytes` <= 0 means unlimited.
  // Without a limit, one reservation is still refused past the machine's
  // physical memory.
  explicit MemoryAccountant(int64_t limit_bytes);
  MemoryAccountant(const MemoryAccountant&) = delete;
  MemoryAccountant& operator=(const MemoryAccountant&) = delete;

  // Reserves `bytes` or returns RESOURCE_EXHAUSTED naming `variable`. When
  // the bytes do not fit, idle buffers are reclaimed first.
  absl::Status Reserve(int64_t bytes, const std::string& variable);
  void Release(int64_t bytes) { held_.fetch_sub(bytes, std::memory_order_relaxed); }

  // Marks `delta` reserved bytes idle (negative: busy again). The pool
  // calls it as buffers enter and leave it.
  void AddIdle(int64_t delta) { idle_.fetch_add(delta, std::memory_order_relaxed); }
  void set_reclaimer(MemoryReclaimer* reclaimer) {
    reclaimer_.store(reclaimer, std::memory_order_release);
  }

  int64_t limit() const { return limit_; }
  // Bytes in use: reserved and not idle (what a shard reports as used).
  int64_t used() const;
  // Every reserved byte, idle ones included: never more than the limit.
  int64_t held() const { return held_.load(std::memory_order_relaxed); }
  int64_t idle() const { return idle_.load(std::memory_order_relaxed); }

 private:
  // Takes `bytes` if they fit under the limit; `*held` is the count seen.
  bool TryReserve(int64_t bytes, int64_t* held);

  const int64_t limit_;
  const int64_t physical_;  // the machine's RAM in bytes
  std::atomic<int64_t> held_{0};
  std::atomic<int64_t> idle_{0};
  std::atomic<MemoryReclaimer*> reclaimer_{nullptr};
};

// Bytes reserved for the lifetime of this object (RAII); Commit() hands them
// over to a longer-lived owner.
class MemoryReservation {
 public:
  MemoryReservation() = default;
  MemoryReservation(MemoryAccountant* accountant, int64_t bytes)
      : accountant_(accountant), bytes_(bytes) {}
  MemoryReservation(MemoryReservation&& other) noexcept { *this = std::move(other); }
  MemoryReservation& operator=(MemoryReservation&& other) noexcept {
    Reset();
    accountant_ = other.accountant_;
    bytes_ = other.bytes_;
    other.bytes_ = 0;
    return *this;
  }
  ~MemoryReservation() { Reset(); }

  int64_t bytes() const { return bytes_; }
  MemoryAccountant* accountant() const { return accountant_; }
  // Takes over `other`'s bytes (both must come from the same accountant).
  void Merge(MemoryReservation&& other) {
    if (accountant_ == nullptr) accountant_ = other.accountant_;
    bytes_ += other.bytes_;
    other.bytes_ = 0;
  }
  // Gives `bytes` of this reservation back to the accountant.
  void Shrink(int64_t bytes) {
    if (accountant_ != nullptr && bytes != 0) accountant_->Release(bytes);
    bytes_ -= bytes;
  }
  void Reset() {
    if (accountant_ != nullptr && bytes_ != 0) accountant_->Release(bytes_);
    bytes_ = 0;
  }

 private:
  MemoryAccountant* accountant_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_MEMORY_ACCOUNTANT_H_
