// Process-wide settings a shard makes for its data path, once at start,
// before other threads run. Each is measured on the hot path of a benchmark
// (bench/psd_bench.cc, `perf record -e cpu-clock -g`).
//
// - glibc's allocator. Streamed and multi-megabyte transfers allocate and
//   free buffers of 1-4 MiB many times a second (gRPC's receive buffers,
//   unary values). With glibc's defaults each free hands those pages back to
//   the kernel (the heap is trimmed past 2x a dynamic mmap threshold), so the
//   next buffer page-faults them in again, one fault per 4 KiB; on a 2-core
//   machine that cost more CPU than moving the bytes. A fixed mmap threshold
//   keeps buffers up to 32 MiB in the heap, and a trim threshold of 64 MiB
//   keeps that much free heap mapped for reuse. Anything bigger (variables,
//   staging buffers) still gets mappings of its own, returned when freed.
// - abseil's mutex deadlock detection. Debian's abseil is built with it on:
//   every lock acquisition then also takes one process-wide lock to update a
//   lock-order graph, a few percent of a small op's CPU and a point of
//   contention between the RPC threads. The unit tests, which run the same
//   store code in-process, keep it on.
//
// RaiseOpenFileLimit is for every psd server process (coordinator and
// shard), called once at start: see below.
#ifndef PSD_SERVER_SHARD_PROCESS_TUNING_H_
#define PSD_SERVER_SHARD_PROCESS_TUNING_H_

#include <string>

namespace psd {

void TuneShardProcess();

// Raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit (to
// fs.nr_open when the hard limit is unlimited). Every
// connection, gRPC or HTTP, takes a descriptor, and the usual soft default
// of 1024 is soon reached by a busy server or a hostile client; when a
// process runs out, gRPC's listener fails its accept and stops listening
// for good. The caller logs the figures.
struct OpenFileLimit {
  unsigned long before = 0;  // the soft limit found
  unsigned long after = 0;   // the soft limit in force now
  std::string error;         // why it could not be read or raised; empty: fine
};
OpenFileLimit RaiseOpenFileLimit();

}  // namespace psd

#endif  // PSD_SERVER_SHARD_PROCESS_TUNING_H_
