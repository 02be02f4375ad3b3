// Device: where a shard keeps variable bytes and runs the kernels on them.
//
// Storage and kernels sit behind this one interface so a GPU backend can
// implement it beside the CPU one. Kernels are written once per op and
// instantiated per dtype. Callers (the VariableStore) validate every request
// before calling in: dtypes are supported by the op, shapes agree, indices
// are in range. Kernels therefore only compute; they return a Status only for
// device failures.
//
// DT_STRING variables never reach a Device: strings live in host memory in
// the VariableStore.
//
// Thread-safety: a Device is thread-safe; kernels on disjoint buffers may run
// concurrently. Callers serialize access to one buffer.
#ifndef PSD_SERVER_DEVICE_DEVICE_H_
#define PSD_SERVER_DEVICE_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "device/cuda/gpu_types.h"
#include "device/initializer_spec.h"
#include "psd/dtype.h"
#include "psd/tensor.h"
#include "psd/types.pb.h"
#include "psd/update_kind.h"

namespace psd {

// Device memory holding one variable's elements. Freed on destruction.
// data() is the device's address: host memory only on the CPU device, so
// callers move bytes with Device::CopyFromHost/CopyToHost, never through it.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() = 0;
  virtual const void* data() const = 0;
  virtual size_t size() const = 0;

  // Page size advice for host memory, which is faulted in as it is first
  // written. A buffer filled a chunk at a time as the chunks arrive (a part
  // moving in) asks for small pages until it is full, then for huge pages
  // again (the kernel's khugepaged merges them later, off the op path):
  // where fresh huge pages come slowly (a virtual machine whose freed
  // memory is handed back to its host; measured in docs/moves.md) faulting
  // them in is what bounded a move, not the copy. Device memory ignores it.
  virtual void AdviseSmallPages(bool /*small*/) {}
};

// The optimizers a device applies (TensorFlow's training ops): one enum with
// the CUDA library, which cannot include this header.
using OptimizerKind = gpu::Optimizer;

// Slot buffers `kind` updates.
int NumOptimizerSlots(OptimizerKind kind);
// "GradientDescent", "Momentum", ...: TensorFlow's optimizer names.
const char* OptimizerName(OptimizerKind kind);

// One update's hyper-parameters, already validated (finite, in range).
// Kernels compute in the variable's dtype, float32 for float16/bfloat16.
struct OptimizerParams {
  OptimizerKind kind = OptimizerKind::kGradientDescent;
  double learning_rate = 0;
  double momentum = 0;                                    // Momentum, RMSProp
  bool use_nesterov = false;                              // Momentum
  double beta1 = 0, beta2 = 0, epsilon = 0;               // Adam (epsilon also RMSProp)
  double beta1_power = 0, beta2_power = 0;                // Adam: beta1^t, beta2^t
  double decay = 0;                                       // RMSProp (rho)
  double lr_power = 0, l1 = 0, l2 = 0, l2_shrinkage = 0;  // Ftrl
};

class Device {
 public:
  virtual ~Device() = default;

  // "cpu:0", "gpu:1".
  virtual std::string name() const = 0;

  // Uninitialized storage of `bytes` bytes (0 is valid). Memory limits are
  // enforced by the caller; this fails only when the device itself cannot
  // allocate (RESOURCE_EXHAUSTED).
  virtual absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) = 0;

  // Host <-> device copies of `bytes` bytes at `offset` into the buffer.
  virtual absl::Status CopyFromHost(const void* src, size_t bytes, DeviceBuffer* dst,
                                    size_t offset) = 0;
  virtual absl::Status CopyToHost(const DeviceBuffer& src, size_t offset, size_t bytes,
                                  void* dst) = 0;
  // Copies all of `src` into `dst` (same size), both on this device.
  virtual absl::Status Copy(const DeviceBuffer& src, DeviceBuffer* dst) = 0;
  // Copies `bytes` bytes of `src` at `src_offset` into `dst` at
  // `dst_offset`, both buffers on this device and distinct; both ranges must
  // lie inside their buffers. Copy-on-write copies single chunks with it.
  virtual absl::Status CopyRange(const DeviceBuffer& src, size_t src_offset, DeviceBuffer* dst,
                                 size_t dst_offset, size_t bytes) = 0;

  // Whether a buffer's data() is host memory that may be read in place
  // (the CPU device): a streamed read then sends pinned bytes straight
  // from it (ValuePin::Lend) instead of copying them out first.
  virtual bool host_memory() const { return false; }

  // Whether the device can still be trusted. A device failure (a CUDA error)
  // fails its request and makes the device unhealthy for good: later ops fail
  // with UNAVAILABLE and the shard's /healthz reports it. health_detail()
  // says why (empty while healthy). The CPU device is always healthy.
  virtual bool healthy() const { return true; }
  virtual std::string health_detail() const { return std::string(); }

  // dst[i] = op(dst[i], src[i]) for i in [0, n); with `src_is_scalar`,
  // src[0] is used for every i. `src` is host memory of `dtype` elements.
  // kAdd/kSub need a numeric dtype; kAssign works for every fixed-size dtype.
  virtual absl::Status ApplyDense(DataType dtype, UpdateKind op, DeviceBuffer* dst, const void* src,
                                  int64_t n, bool src_is_scalar) = 0;

  // ApplyDense with a source buffer of this device (n elements of `dtype`),
  // e.g. a streamed update's staging buffer.
  virtual absl::Status ApplyDenseFromBuffer(DataType dtype, UpdateKind op, DeviceBuffer* dst,
                                            const DeviceBuffer& src, int64_t n) = 0;

  // For each k in [0, indices.size()): row indices[k] of `dst` (rows of
  // `row_elements` elements) = op(row, updates row k). With
  // `updates_is_scalar` every element of every addressed row uses updates[0].
  // Rows are applied in order, so duplicate indices accumulate for kAdd/kSub
  // and the last one wins for kAssign. Indices are already range-checked.
  virtual absl::Status ApplyScatter(DataType dtype, UpdateKind op, DeviceBuffer* dst,
                                    int64_t row_elements, absl::Span<const int64_t> indices,
                                    const void* updates, bool updates_is_scalar) = 0;

  // out row k = src row indices[k]. `out` is host memory with room for
  // indices.size() * row_elements elements. Indices are already range-checked.
  virtual absl::Status Gather(DataType dtype, const DeviceBuffer& src, int64_t row_elements,
                              absl::Span<const int64_t> indices, void* out) = 0;

  // Applies one optimizer step (see OptimizerParams) to the `n` elements of
  // `var` and of each of its NumOptimizerSlots(params.kind) `slots`, all of
  // floating `dtype`; `grad` is host memory of n `dtype` elements. The
  // buffers are distinct.
  virtual absl::Status ApplyOptimizerDense(const OptimizerParams& params, DataType dtype,
                                           DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                           const void* grad, int64_t n) = 0;

  // The sparse form (TensorFlow's SparseApply*): `values` holds
  // indices.size() rows of `row_elements` elements (host memory). Rows of
  // duplicate indices are summed first, then every distinct row of `var`
  // and of its slots is updated once. Indices are already range-checked.
  virtual absl::Status ApplyOptimizerSparse(const OptimizerParams& params, DataType dtype,
                                            DeviceBuffer* var,
                                            absl::Span<DeviceBuffer* const> slots,
                                            int64_t row_elements, absl::Span<const int64_t> indices,
                                            const void* values) = 0;

  // Fills `dst` (a variable of `slice_shape` placed at `slice_offset` inside
  // a variable of `full_shape`; offset all zeros and equal shapes for an
  // unpartitioned variable) with the initializer's values. Element i of the
  // slice gets the value that the element at the same coordinates of the full
  // variable gets. The spec has been checked by ValidateInitializer.
  virtual absl::Status Initialize(const InitializerSpec& spec, DataType dtype,
                                  const TensorShape& full_shape, const TensorShape& slice_shape,
                                  absl::Span<const int64_t> slice_offset, DeviceBuffer* dst) = 0;
};

// The CPU device: buffers in host memory, kernels as plain loops.
std::unique_ptr<Device> NewCpuDevice();

// CUDA device `ordinal`: UNIMPLEMENTED in a build without CUDA, UNAVAILABLE
// (with CUDA's reason) where the device cannot be opened.
absl::StatusOr<std::unique_ptr<Device>> NewGpuDevice(int ordinal);

// The device named by a shard's `device` setting: "cpu" (or "cpu:0"), or
// "gpu:N" for CUDA device N (UNIMPLEMENTED in a build without CUDA;
// UNAVAILABLE, saying why, where no such device can be opened).
absl::StatusOr<std::unique_ptr<Device>> NewDevice(const std::string& spec);

// ValidateInitializer, the check of a spec, is in device/initializer_spec.h.

}  // namespace psd

#endif  // PSD_SERVER_DEVICE_DEVICE_H_
