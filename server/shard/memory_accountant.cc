#include "shard/memory_accountant.h"

#include "absl/strings/str_cat.h"

namespace psd {

absl::Status MemoryAccountant::Reserve(int64_t bytes, const std::string& variable) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("variable '", variable, "': negative allocation of ", bytes, " bytes"));
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
