// The CPU device's optimizer kernels (Device::ApplyOptimizerDense/Sparse),
// kept in their own file beside cpu_device.cc. Internal to server/device.
#ifndef PSD_SERVER_DEVICE_CPU_OPTIMIZER_KERNELS_H_
#define PSD_SERVER_DEVICE_CPU_OPTIMIZER_KERNELS_H_

#include <cstdint>

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

}  // namespace internal
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_CPU_OPTIMIZER_KERNELS_H_
