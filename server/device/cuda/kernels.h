// Kernel launchers of the CUDA library, internal to server/device/cuda. Each
// enqueues one kernel on `stream` and returns the launch error (never waits).
// Pointers are device memory unless named `host_*`; arguments have been
// checked by GpuContext's callers (sizes, index ranges), so the kernels only
// compute.
#ifndef PSD_SERVER_DEVICE_CUDA_KERNELS_H_
#define PSD_SERVER_DEVICE_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "device/cuda/gpu_types.h"

namespace psd {
namespace gpu {
namespace internal {

// dst[i] = op(dst[i], src[i]) for i < n.
cudaError_t LaunchDense(ElemType type, UpdateKind op, void* dst, const void* src, int64_t n,
                        cudaStream_t stream);
// dst[i] = op(dst[i], v) for i < n, v the element whose bytes are the low
// bytes of `value_bits`.
cudaError_t LaunchDenseScalar(ElemType type, UpdateKind op, void* dst, uint64_t value_bits,
                              int64_t n, cudaStream_t stream);

// Row indices[k] of dst (rows of `row_elements`) = op(row, updates row k),
// for k < count; with `updates` null, every element uses `value_bits`.
// kAssign needs distinct indices (the caller keeps the last of duplicates);
// kAdd/kSub use atomics, so duplicates accumulate in an unspecified order.
cudaError_t LaunchScatter(ElemType type, UpdateKind op, void* dst, int64_t row_elements,
                          const int64_t* indices, int64_t count, const void* updates,
                          uint64_t value_bits, cudaStream_t stream);

// out row k = src row indices[k], for k < count; rows of `row_bytes` bytes.
cudaError_t LaunchGather(const void* src, size_t row_bytes, const int64_t* indices, int64_t count,
                         void* out, cudaStream_t stream);

// dst[i] = pattern (the low `elem_size` bytes of `pattern`) for i < n.
cudaError_t LaunchFill(size_t elem_size, uint64_t pattern, void* dst, int64_t n,
                       cudaStream_t stream);

// The random initializer `fill` over the n elements of a slice.
cudaError_t LaunchRandomFill(ElemType type, const RandomFill& fill, const SliceGeometry& geometry,
                             void* dst, int64_t n, cudaStream_t stream);

// One optimizer step over n elements. Dense (`rows` null): element i of var
// and slots, gradient element i of `grad` in the variable's type. Sparse:
// element i is column i % row_elements of row rows[i / row_elements], and
// `grad` holds the compute type (float, double for float64).
cudaError_t LaunchOptimizer(ElemType type, const OptimizerStep& step, void* var, void* const* slots,
                            const void* grad, const int64_t* rows, int64_t row_elements, int64_t n,
                            cudaStream_t stream);

}  // namespace internal
}  // namespace gpu
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_CUDA_KERNELS_H_
