// The checks every Device implementation makes before touching memory, so
// the CPU and GPU devices fail the same way with the same messages. Callers
// (the VariableStore) validate requests first; these O(1)-per-call or
// per-row checks turn a caller's bug into an error instead of memory
// corruption. Internal to server/device.
//
// Pure functions: thread-safe.
#ifndef PSD_SERVER_DEVICE_DEVICE_CHECKS_H_
#define PSD_SERVER_DEVICE_DEVICE_CHECKS_H_

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "device/cuda/gpu_types.h"
#include "device/device.h"

namespace psd {
namespace internal {

// INVALID_ARGUMENT: `dtype` has no device representation (DT_STRING).
absl::Status UnsupportedDtype(DataType dtype);

// INVALID_ARGUMENT unless [offset, offset + bytes) lies in `size` bytes.
absl::Status CheckCopyRange(const char* what, size_t offset, size_t bytes, size_t size);

// INTERNAL unless 0 <= n <= elements of `elem_size` the buffer holds.
absl::Status CheckDenseCount(int64_t n, size_t elem_size, size_t buffer_bytes);

// INVALID_ARGUMENT for add/sub on bool.
absl::Status CheckArithmetic(DataType dtype, UpdateKind op);

// INTERNAL unless every index addresses a whole row inside a buffer of
// `buffer_bytes`. Checked before any row is touched.
absl::Status CheckRows(absl::Span<const int64_t> indices, int64_t row_elements, size_t elem_size,
                       size_t buffer_bytes);

// INTERNAL unless `dtype` is floating, `slots` has the optimizer's count of
// distinct buffers of var's size, and var holds `elements` elements.
absl::Status CheckOptimizerBuffers(const OptimizerParams& params, DataType dtype, size_t elem_size,
                                   const DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                   uint64_t elements);

// INTERNAL: the optimizer kernels need a floating dtype.
absl::Status OptimizerDtypeUnsupported(DataType dtype);

// The hyper-parameters in the compute type C with the derived constants the
// steps use, computed one way for every device (TensorFlow casts its scalars
// to the variable's type too).
template <typename C>
gpu::OptimizerCoefficients<C> CoefficientsFor(const OptimizerParams& p) {
  gpu::OptimizerCoefficients<C> h;
  h.lr = static_cast<C>(p.learning_rate);
  h.momentum = static_cast<C>(p.momentum);
  h.use_nesterov = p.use_nesterov;
  h.one_minus_beta1 = C(1) - static_cast<C>(p.beta1);
  h.one_minus_beta2 = C(1) - static_cast<C>(p.beta2);
  h.epsilon = static_cast<C>(p.epsilon);
  // ApplyAdam: alpha = lr * sqrt(1 - beta2_power) / (1 - beta1_power).
  h.adam_alpha = static_cast<C>(p.learning_rate) * std::sqrt(C(1) - static_cast<C>(p.beta2_power)) /
                 (C(1) - static_cast<C>(p.beta1_power));
  h.one_minus_decay = C(1) - static_cast<C>(p.decay);
  h.neg_lr_power = -static_cast<C>(p.lr_power);
  h.lr_power_is_half = static_cast<C>(p.lr_power) == C(-0.5);
  h.l1 = static_cast<C>(p.l1);
  h.two_l2 = C(2) * static_cast<C>(p.l2);
  h.two_l2_shrinkage = C(2) * static_cast<C>(p.l2_shrinkage);
  return h;
}

}  // namespace internal
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_DEVICE_CHECKS_H_
