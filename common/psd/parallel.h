// RunParallel: the one fan-out helper of client and servers. Runs fn(0),
// ..., fn(n-1) at once (fn(0) on the calling thread, the others on threads
// of their own) and returns their statuses in index order. Meant for a
// handful to a few hundred calls that each wait on the network (one per
// shard or part). A thread the system refuses to start does not throw: its
// call runs on the calling thread after fn(0) instead, so a machine short
// of threads gets slower, not failed.
//
// Thread-safety: fn is called concurrently with itself.
#ifndef PSD_COMMON_PARALLEL_H_
#define PSD_COMMON_PARALLEL_H_

#include <cstddef>
#include <functional>
#include <vector>

#include "absl/status/status.h"

namespace psd {

std::vector<absl::Status> RunParallel(size_t n, const std::function<absl::Status(size_t)>& fn);

}  // namespace psd

#endif  // PSD_COMMON_PARALLEL_H_
