#include "shard/memory_accountant.h"

#include <unistd.h>

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace psd {

namespace {

// The machine's RAM: what a shard without a limit can hold at most.
int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(pages) * page_size;
}

// Rounds of reclaiming before a reservation gives up: each frees idle
// buffers, but other threads may refill the pool or take the room between.
constexpr int kReclaimRounds = 4;

}  // namespace

MemoryAccountant::MemoryAccountant(int64_t limit_bytes)
    : limit_(limit_bytes), physical_(PhysicalMemoryBytes()) {}

int64_t MemoryAccountant::used() const {
  // Two counters read one after the other: clamp what a race between them
  // could make negative.
  return std::max<int64_t>(0, held() - idle());
}

bool MemoryAccountant::TryReserve(int64_t bytes, int64_t* held) {
  int64_t seen = held_.load(std::memory_order_relaxed);
  do {
    if (limit_ > 0 && (bytes > limit_ || seen > limit_ - bytes)) {
      *held = seen;
      return false;
    }
  } while (!held_.compare_exchange_weak(seen, seen + bytes, std::memory_order_relaxed));
  *held = seen + bytes;
  return true;
}

absl::Status MemoryAccountant::Reserve(int64_t bytes, const std::string& variable) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("variable '", variable, "': negative allocation of ", bytes, " bytes"));
  }
  if (limit_ <= 0 && bytes > physical_) {
    // No limit configured, but no allocation past the machine's memory can
    // succeed: refuse it now rather than fail (or be killed) allocating.
    return absl::ResourceExhaustedError(absl::StrCat(
        "variable '", variable, "': allocating ", bytes, " bytes exceeds this machine's memory (",
        physical_, " bytes; the shard has no --memory-limit)"));
  }
  int64_t held = 0;
  if (TryReserve(bytes, &held)) return absl::OkStatus();
  // Idle pooled buffers give way to data: free them and try again.
  MemoryReclaimer* reclaimer = reclaimer_.load(std::memory_order_acquire);
  for (int round = 0; reclaimer != nullptr && bytes <= limit_ && round < kReclaimRounds; ++round) {
    if (idle() <= 0 || reclaimer->ReclaimIdle(held + bytes - limit_) <= 0) break;
    if (TryReserve(bytes, &held)) return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(absl::StrCat("variable '", variable, "': allocating ", bytes,
                                                   " bytes would exceed the shard's memory limit (",
                                                   held, " of ", limit_, " bytes in use)"));
}

}  // namespace psd
