// RunParallel: the one fan-out helper of client and servers. Runs fn(0),
// ..., fn(n-1) at once (fn(0) on the calling thread, the others on
// threads kept for fan-outs: an idle one, or a new one when none is idle)
// and returns their statuses in index order. Meant for a handful to a few
// hundred calls that each wait on the network (one per shard or part). A
// call no thread has started by the time fn(0) returns runs on the calling
// thread instead (so does one whose thread the system refuses to start):
// a machine short of threads gets slower, not failed.
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
