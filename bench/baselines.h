// The baselines psd_bench measures beside each workload, each written here:
// a bare gRPC service of the same shapes, raw TCP over loopback, memcpy and
// y += x bandwidth, a plain C++ scatter-add loop, and a sequential file
// write with fsync. Only ratios measured in the same run mean anything on a
// noisy machine.
#ifndef PSD_BENCH_BASELINES_H_
#define PSD_BENCH_BASELINES_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace psd {
namespace bench {

// Forks a child serving the bare gRPC service on a free loopback port (no
// SO_REUSEPORT, the shard's message limit). Must be called before this
// process starts any thread (before any gRPC use). Returns the child's pid
// and sets `port`; the child exits on SIGTERM.
pid_t ForkBareServer(int max_message_bytes, int* port);

// GB/s of memcpy, and of y += x over float32, on `bytes`-sized buffers.
double MemcpyGBps(size_t bytes, int reps);
double AxpyGBps(size_t bytes, int reps);

// Rows/s of a plain loop adding `indices.size()` rows of `cols` floats into
// a `rows` x `cols` table (single thread), best of `reps`.
double ScatterAddRowsPerSecond(int64_t rows, int64_t cols, const std::vector<int64_t>& indices,
                               int reps);
// The same over several batches in turn, each with its own update rows
// (each rep runs all of them), so the loop meets the rows a server meets
// across a run of requests, not one batch's rows hot in cache. The tables
// here and below are laid out as a shard's variables (aligned, huge pages
// advised).
double ScatterAddRowsPerSecond(int64_t rows, int64_t cols,
                               const std::vector<std::vector<int64_t>>& batches, int reps);

// Rows/s of a plain sparse Adagrad loop (single thread) over a `rows` x
// `cols` float32 variable and its accumulator (starting at 0 and 0.1, as the
// bench's table), running `batches` in turn, each with its own gradient of
// 0.01 in every element: row by row, duplicates applied one after another in
// arrival order as TensorFlow's SparseApplyAdagrad kernel does,
// accum += g * g; var -= g * lr / sqrt(accum). Best of `reps` (each runs
// all batches).
double SparseAdagradRowsPerSecond(int64_t rows, int64_t cols,
                                  const std::vector<std::vector<int64_t>>& batches, float lr,
                                  int reps);

// GB/s (variable bytes per second) of a plain single-threaded Adam step
// over a float32 variable of `bytes` bytes: m, v and the gradient beside it,
// TensorFlow's update formulas. Best of `reps`.
double DenseAdamLoopGBps(size_t bytes, int reps);

// GB/s of sending `bytes` through a TCP socket on loopback (1 MiB writes).
double RawTcpGBps(size_t bytes);

// GB/s of writing `bytes` sequentially to a file in `dir` and fsyncing it.
double FsyncWriteGBps(const std::string& dir, size_t bytes);

// Zipf(s) indices in [0, n): rank k drawn with probability ~ 1/(k+1)^s,
// ranks scattered over the table by a fixed permutation.
std::vector<int64_t> ZipfIndices(int64_t n, double s, size_t count, uint64_t seed);

}  // namespace bench
}  // namespace psd

#endif  // PSD_BENCH_BASELINES_H_
