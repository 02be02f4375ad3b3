// GpuContext: one CUDA device as the shard's kernels use it, with only CUDA
// and the C++ standard library underneath.
//
// - Memory: a pooled allocator over cudaMalloc (never managed memory).
//   Freed blocks are kept by rounded size for reuse; when cudaMalloc runs out
//   the cache is returned to CUDA and the allocation retried once.
// - Transfers: every host<->device move goes through pinned staging buffers
//   in chunks (kChunkBytes), two per lane, so the host copy of one chunk
//   overlaps the DMA and kernel of the previous one.
// - Lanes: a lane is a CUDA stream with its staging buffers; each call takes
//   an idle lane (at most kMaxLanes exist; more callers wait), enqueues its
//   copies and kernels on it and waits for the stream, so calls on disjoint
//   buffers run concurrently and every call is complete when it returns.
//
// Every method returns GpuStatus: kOutOfMemory when device or pinned memory
// is exhausted (the device stays usable), kDeviceError for any other CUDA
// failure (the caller should stop using the device). Pointers named `dst`,
// `src`, `var` are device memory from Allocate; `host_*` are ordinary host
// memory, possibly unaligned. Callers check sizes and index ranges.
//
// Thread-safety: thread-safe. Callers serialize calls that write one buffer.
//
//   std::unique_ptr<GpuContext> gpu;
//   GpuStatus s = GpuContext::Open(0, &gpu);
//   void* p;
//   s = gpu->Allocate(4 * n, &p);
//   s = gpu->CopyIn(p, host_floats, 4 * n);
//   s = gpu->Dense(ElemType::kFloat, UpdateKind::kAdd, p, host_delta, n);
#ifndef PSD_SERVER_DEVICE_CUDA_GPU_CONTEXT_H_
#define PSD_SERVER_DEVICE_CUDA_GPU_CONTEXT_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "device/cuda/gpu_types.h"

namespace psd {
namespace gpu {

class GpuContext {
 public:
  static constexpr size_t kChunkBytes = size_t{4} << 20;
  static constexpr int kMaxLanes = 4;

  // The number of CUDA devices in `*count`; the error says why there are
  // none usable (no driver, driver too old, no device).
  static GpuStatus DeviceCount(int* count);

  // Opens device `ordinal`.
  static GpuStatus Open(int ordinal, std::unique_ptr<GpuContext>* out);

  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;

  int ordinal() const { return ordinal_; }
  // The card's name, e.g. "NVIDIA H100 80GB HBM3".
  const std::string& device_name() const { return device_name_; }
  size_t total_memory() const { return total_memory_; }

  // `bytes` of device memory (nullptr for 0 bytes). Block sizes are rounded
  // up to at least 512 bytes, so element-wise atomics may touch the whole
  // 32-bit word around any element.
  GpuStatus Allocate(size_t bytes, void** ptr);
  // Returns a block from Allocate of the same `bytes`; nothing may be
  // running on it.
  void Free(void* ptr, size_t bytes);

  GpuStatus CopyIn(void* dst, const void* host_src, size_t bytes);
  GpuStatus CopyOut(void* host_dst, const void* src, size_t bytes);
  GpuStatus CopyOnDevice(void* dst, const void* src, size_t bytes);

  // dst[i] = op(dst[i], src[i]) for i < n: host source, device source, or
  // one value for every element (its bytes in the low bytes of value_bits).
  GpuStatus Dense(ElemType type, UpdateKind op, void* dst, const void* host_src, int64_t n);
  GpuStatus DenseFromDevice(ElemType type, UpdateKind op, void* dst, const void* src, int64_t n);
  GpuStatus DenseScalar(ElemType type, UpdateKind op, void* dst, uint64_t value_bits, int64_t n);

  // Row indices[k] = op(row, host_updates row k) for k < count (or
  // op(row, value) with `scalar`, value in the low bytes of value_bits).
  // As on the CPU, duplicates accumulate for add/sub (atomics: float sums
  // may round in another order) and the last duplicate wins for assign.
  GpuStatus Scatter(ElemType type, UpdateKind op, void* dst, int64_t row_elements,
                    const int64_t* indices, size_t count, const void* host_updates, bool scalar,
                    uint64_t value_bits);

  // host_out row k = src row indices[k] (rows of row_bytes bytes).
  GpuStatus Gather(const void* src, size_t row_bytes, const int64_t* indices, size_t count,
                   void* host_out);

  // dst[i] = the low elem_size bytes of `pattern`, for i < n.
  GpuStatus Fill(size_t elem_size, uint64_t pattern, void* dst, int64_t n);
  GpuStatus FillRandom(ElemType type, const RandomFill& fill, const SliceGeometry& geometry,
                       void* dst, int64_t n);

  // One optimizer step on n elements of var and its OptimizerSlots(kind)
  // slots; host_grad is n elements of `type`.
  GpuStatus OptimizerDense(ElemType type, const OptimizerStep& step, void* var, void* const* slots,
                           const void* host_grad, int64_t n);
  // The sparse form: host_values holds `count` rows of row_elements; rows of
  // duplicate indices are summed first (in the compute type, in arrival
  // order, as on the CPU), then each distinct row is updated once.
  GpuStatus OptimizerSparse(ElemType type, const OptimizerStep& step, void* var, void* const* slots,
                            int64_t row_elements, const int64_t* indices, size_t count,
                            const void* host_values);

  // A CUDA stream with two staging slots. Defined in gpu_context.cc.
  struct Lane;

 private:
  explicit GpuContext(int ordinal);

  // Makes this context's device current on the calling thread.
  GpuStatus Enter() const;
  GpuStatus AcquireLane(Lane** lane);
  void ReleaseLane(Lane* lane);
  // Runs fn(lane) on an idle lane, then waits for its stream.
  template <typename Fn>
  GpuStatus WithLane(const char* what, Fn&& fn);
  // Frees every cached block.
  void TrimPool();

  const int ordinal_;
  std::string device_name_;
  size_t total_memory_ = 0;

  std::mutex pool_mu_;
  // Idle blocks by rounded size, and their total. Guarded by pool_mu_.
  std::unordered_map<size_t, std::vector<void*>> pool_;
  size_t pool_bytes_ = 0;
  size_t pool_limit_ = 0;  // set at Open: a quarter of device memory

  std::mutex lanes_mu_;
  std::condition_variable lane_idle_;
  std::vector<std::unique_ptr<Lane>> lanes_;  // guarded by lanes_mu_
  std::vector<Lane*> idle_lanes_;             // guarded by lanes_mu_
};

}  // namespace gpu
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_CUDA_GPU_CONTEXT_H_
