// MemoryAccountant: the shard's byte budget. Every buffer that holds variable
// data reserves its bytes here first, so a request that would take the shard
// past its configured limit fails with RESOURCE_EXHAUSTED before anything is
// allocated or changed.
//
// Thread-safe (lock-free counter).
#ifndef PSD_SERVER_SHARD_MEMORY_ACCOUNTANT_H_
#define PSD_SERVER_SHARD_MEMORY_ACCOUNTANT_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace psd {

class MemoryAccountant {
 public:
  // `limit_bytes` <= 0 means unlimited.
  // Without a limit, one reservation is still refused past the machine's
  // physical memory.
  explicit MemoryAccountant(int64_t limit_bytes);
  MemoryAccountant(const MemoryAccountant&) = delete;
  MemoryAccountant& operator=(const MemoryAccountant&) = delete;

  // Reserves `bytes` or returns RESOURCE_EXHAUSTED naming `variable`.
  absl::Status Reserve(int64_t bytes, const std::string& variable);
  void Release(int64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

  int64_t limit() const { return limit_; }
  int64_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  const int64_t limit_;
  const int64_t physical_;  // the machine's RAM in bytes
  std::atomic<int64_t> used_{0};
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
