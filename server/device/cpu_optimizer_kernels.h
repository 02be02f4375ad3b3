// The CPU device's optimizer kernels (Device::ApplyOptimizerDense/Sparse),
// kept in their own file beside cpu_device.cc. Internal to server/device,
// except CpuApplyOptimizerRows, which the embedding table (server/shard)
// shares so a row is updated by one copy of the formulas.
#ifndef PSD_SERVER_DEVICE_CPU_OPTIMIZER_KERNELS_H_
#define PSD_SERVER_DEVICE_CPU_OPTIMIZER_KERNELS_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "device/device.h"

namespace psd {
namespace internal {

// `var` and `slots` are CPU buffers (host memory). Same contracts as the
// Device methods; INTERNAL when a buffer is too small for what it is asked
// to hold, so a caller's bug cannot corrupt memory.
absl::Status CpuApplyOptimizerDense(const OptimizerParams& params, DataType dtype,
                                    DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                    const void* grad, int64_t n);
absl::Status CpuApplyOptimizerSparse(const OptimizerParams& params, DataType dtype,
                                     DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                     int64_t row_elements, absl::Span<const int64_t> indices,
                                     const void* values);

// Where the rows of one distinct index lie: sets `*var` to its row and
// `slots[0..num_slots)` to its slot rows (each `row_elements` elements of
// the dtype, aligned), or returns false to skip the index (its gradients are
// read but nothing is written). Called once per distinct index, in order of
// first arrival, before any row is updated.
using OptimizerRowLocator = absl::FunctionRef<bool(int64_t index, void** var, void** slots)>;

// The sparse apply on rows addressed through `locate` (CpuApplyOptimizerSparse
// is this with rows of a buffer): `values` holds indices.size() rows of
// `row_elements` elements of `dtype` (any alignment); gradients of duplicate
// indices are summed in arrival order in the compute type, then each
// distinct row and its slot rows are stepped once with TensorFlow's formulas.
// `params` already validated; INTERNAL for a wrong slot count.
absl::Status CpuApplyOptimizerRows(const OptimizerParams& params, DataType dtype, int num_slots,
                                   int64_t row_elements, absl::Span<const int64_t> indices,
                                   const void* values, OptimizerRowLocator locate);

}  // namespace internal
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_CPU_OPTIMIZER_KERNELS_H_
