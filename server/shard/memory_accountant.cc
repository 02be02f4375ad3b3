#include "shard/memory_accountant.h"

#include <unistd.h>

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

}  // namespace

MemoryAccountant::MemoryAccountant(int64_t limit_bytes)
    : limit_(limit_bytes), physical_(PhysicalMemoryBytes()) {}

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
  int64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (limit_ > 0 && (bytes > limit_ || used > limit_ - bytes)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "variable '", variable, "': allocating ", bytes,
          " bytes would exceed the shard's memory limit (", used, " of ", limit_,
          " bytes in use)"));
    }
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return absl::OkStatus();
}

}  // namespace psd
