#include "shard/process_tuning.h"

#include <cstdlib>  // defines __GLIBC__ on glibc systems
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/synchronization/mutex.h"

namespace psd {

void TuneShardProcess() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

OpenFileLimit RaiseOpenFileLimit() {
  OpenFileLimit result;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    result.error = std::string("getrlimit: ") + std::strerror(errno);
    return result;
  }
  rlim_t target = limit.rlim_max;
  if (target == RLIM_INFINITY) {
    // The kernel refuses an unlimited soft limit for open files; its own
    // ceiling is fs.nr_open.
    unsigned long nr_open = 0;
    std::ifstream in("/proc/sys/fs/nr_open");
    target = (in >> nr_open && nr_open > 0) ? nr_open : (1ul << 20);
  }
  result.before = result.after = static_cast<unsigned long>(limit.rlim_cur);
  if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= target) return result;
  limit.rlim_cur = target;
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    result.error =
        std::string("setrlimit to ") + std::to_string(target) + ": " + std::strerror(errno);
    return result;
  }
  result.after = static_cast<unsigned long>(target);
  return result;
}

}  // namespace psd
