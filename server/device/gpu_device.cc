// The GPU Device: the Device interface over the CUDA kernel library
// (device/cuda/gpu_context.h). Variables live in the card's memory; request
// bytes move through the library's pinned staging buffers, and every op runs
// as kernels on the device.
//
// Validation is the CPU device's (device_checks.h), made before any CUDA
// call, so bad requests fail alike on both. Errors from the library map to
// statuses: out of device or pinned memory is RESOURCE_EXHAUSTED; any other
// CUDA failure is logged, fails its request with INTERNAL and takes the
// device out of service (healthy() false, later ops UNAVAILABLE), since the
// device may hold partial results after it.
//
// Thread-safety: thread-safe (the context is; failure_ is guarded by mu_).
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "device/cuda/gpu_context.h"
#include "device/device.h"
#include "device/device_checks.h"
#include "device/initializers.h"
#include "psd/dtype.h"
#include "psd/status.h"
#include "spdlog/spdlog.h"

namespace psd {
namespace {

using gpu::ElemType;
using gpu::GpuContext;
using gpu::GpuStatus;

class GpuBuffer final : public DeviceBuffer {
 public:
  GpuBuffer(GpuContext* context, void* data, size_t size)
      : context_(context), data_(data), size_(size) {}
  ~GpuBuffer() override { context_->Free(data_, size_); }

  GpuBuffer(const GpuBuffer&) = delete;
  GpuBuffer& operator=(const GpuBuffer&) = delete;

  void* data() override { return data_; }
  const void* data() const override { return data_; }
  size_t size() const override { return size_; }

 private:
  GpuContext* const context_;
  void* const data_;  // device memory; null for 0 bytes
  const size_t size_;
};

bool ToElemType(DataType dtype, ElemType* out) {
  switch (dtype) {
    case DT_FLOAT:
      *out = ElemType::kFloat;
      return true;
    case DT_DOUBLE:
      *out = ElemType::kDouble;
      return true;
    case DT_HALF:
      *out = ElemType::kHalf;
      return true;
    case DT_BFLOAT16:
      *out = ElemType::kBFloat16;
      return true;
    case DT_INT8:
      *out = ElemType::kInt8;
      return true;
    case DT_INT16:
      *out = ElemType::kInt16;
      return true;
    case DT_INT32:
      *out = ElemType::kInt32;
      return true;
    case DT_INT64:
      *out = ElemType::kInt64;
      return true;
    case DT_UINT8:
      *out = ElemType::kUint8;
      return true;
    case DT_BOOL:
      *out = ElemType::kBool;
      return true;
    default:
      return false;
  }
}

// One element from possibly unaligned host memory as the low bytes of a
// word; a bool is normalized to 0 or 1 as the CPU device reads it.
uint64_t ScalarBits(DataType dtype, const void* src) {
  uint64_t bits = 0;
  std::memcpy(&bits, src, DataTypeSize(dtype));
  if (dtype == DT_BOOL) bits = (bits & 0xff) != 0;
  return bits;
}

gpu::OptimizerStep StepFor(const OptimizerParams& params) {
  gpu::OptimizerStep step;
  step.kind = params.kind;
  step.f = internal::CoefficientsFor<float>(params);
  step.d = internal::CoefficientsFor<double>(params);
  return step;
}

class GpuDevice final : public Device {
 public:
  explicit GpuDevice(std::unique_ptr<GpuContext> context)
      : context_(std::move(context)), name_(absl::StrCat("gpu:", context_->ordinal())) {}

  std::string name() const override { return name_; }

  bool healthy() const override { return healthy_.load(std::memory_order_acquire); }

  std::string health_detail() const override {
    absl::MutexLock lock(&mu_);
    return failure_;
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override {
    PSD_RETURN_IF_ERROR(Usable());
    void* data = nullptr;
    PSD_RETURN_IF_ERROR(Check(context_->Allocate(bytes, &data)));
    return std::unique_ptr<DeviceBuffer>(new GpuBuffer(context_.get(), data, bytes));
  }

  absl::Status CopyFromHost(const void* src, size_t bytes, DeviceBuffer* dst,
                            size_t offset) override {
    PSD_RETURN_IF_ERROR(internal::CheckCopyRange("copy to device", offset, bytes, dst->size()));
    PSD_RETURN_IF_ERROR(Usable());
    return Check(context_->CopyIn(At(dst, offset), src, bytes));
  }

  absl::Status CopyToHost(const DeviceBuffer& src, size_t offset, size_t bytes,
                          void* dst) override {
    PSD_RETURN_IF_ERROR(internal::CheckCopyRange("copy from device", offset, bytes, src.size()));
    PSD_RETURN_IF_ERROR(Usable());
    return Check(context_->CopyOut(dst, At(src, offset), bytes));
  }

  absl::Status Copy(const DeviceBuffer& src, DeviceBuffer* dst) override {
    if (src.size() != dst->size()) {
      return absl::InternalError(
          absl::StrCat("copy of ", src.size(), " bytes into a buffer of ", dst->size()));
    }
    PSD_RETURN_IF_ERROR(Usable());
    return Check(context_->CopyOnDevice(dst->data(), src.data(), src.size()));
  }

  absl::Status CopyRange(const DeviceBuffer& src, size_t src_offset, DeviceBuffer* dst,
                         size_t dst_offset, size_t bytes) override {
    PSD_RETURN_IF_ERROR(
        internal::CheckCopyRange("copy from buffer", src_offset, bytes, src.size()));
    PSD_RETURN_IF_ERROR(
        internal::CheckCopyRange("copy into buffer", dst_offset, bytes, dst->size()));
    PSD_RETURN_IF_ERROR(Usable());
    return Check(context_->CopyOnDevice(At(dst, dst_offset), At(src, src_offset), bytes));
  }

  absl::Status ApplyDense(DataType dtype, UpdateKind op, DeviceBuffer* dst, const void* src,
                          int64_t n, bool src_is_scalar) override {
    ElemType type;
    if (!ToElemType(dtype, &type)) return internal::UnsupportedDtype(dtype);
    PSD_RETURN_IF_ERROR(internal::CheckDenseCount(n, DataTypeSize(dtype), dst->size()));
    PSD_RETURN_IF_ERROR(internal::CheckArithmetic(dtype, op));
    if (n == 0) return absl::OkStatus();  // `src` may be empty
    PSD_RETURN_IF_ERROR(Usable());
    // One element (a scalar variable's assign_add, the commonest small op)
    // travels as a kernel argument: no staging copy and no host-to-device
    // transfer before the kernel.
    if (src_is_scalar || n == 1) {
      return Check(
          context_->DenseScalar(type, op, dst->data(), ScalarBits(dtype, src), n));
    }
    return Check(context_->Dense(type, op, dst->data(), src, n));
  }

  absl::Status ApplyDenseFromBuffer(DataType dtype, UpdateKind op, DeviceBuffer* dst,
                                    const DeviceBuffer& src, int64_t n) override {
    ElemType type;
    if (!ToElemType(dtype, &type)) return internal::UnsupportedDtype(dtype);
    PSD_RETURN_IF_ERROR(internal::CheckDenseCount(n, DataTypeSize(dtype), src.size()));
    PSD_RETURN_IF_ERROR(internal::CheckDenseCount(n, DataTypeSize(dtype), dst->size()));
    PSD_RETURN_IF_ERROR(internal::CheckArithmetic(dtype, op));
    if (n == 0) return absl::OkStatus();
    PSD_RETURN_IF_ERROR(Usable());
    return Check(context_->DenseFromDevice(type, op, dst->data(), src.data(), n));
  }

  absl::Status ApplyScatter(DataType dtype, UpdateKind op, DeviceBuffer* dst, int64_t row_elements,
                            absl::Span<const int64_t> indices, const void* updates,
                            bool updates_is_scalar) override {
    ElemType type;
    if (!ToElemType(dtype, &type)) return internal::UnsupportedDtype(dtype);
    PSD_RETURN_IF_ERROR(
        internal::CheckRows(indices, row_elements, DataTypeSize(dtype), dst->size()));
    PSD_RETURN_IF_ERROR(internal::CheckArithmetic(dtype, op));
    if (indices.empty() || row_elements == 0) return absl::OkStatus();  // `updates` may be empty
    PSD_RETURN_IF_ERROR(Usable());
    return Check(context_->Scatter(type, op, dst->data(), row_elements, indices.data(),
                                   indices.size(), updates, updates_is_scalar,
                                   updates_is_scalar ? ScalarBits(dtype, updates) : 0));
  }

  absl::Status Gather(DataType dtype, const DeviceBuffer& src, int64_t row_elements,
                      absl::Span<const int64_t> indices, void* out) override {
    const size_t elem_size = DataTypeSize(dtype);
    if (elem_size == 0) return internal::UnsupportedDtype(dtype);
    PSD_RETURN_IF_ERROR(internal::CheckRows(indices, row_elements, elem_size, src.size()));
    const size_t row_bytes = static_cast<size_t>(row_elements) * elem_size;
    if (row_bytes == 0 || indices.empty()) return absl::OkStatus();
    PSD_RETURN_IF_ERROR(Usable());
    return Check(context_->Gather(src.data(), row_bytes, indices.data(), indices.size(), out));
  }

  absl::Status ApplyOptimizerDense(const OptimizerParams& params, DataType dtype, DeviceBuffer* var,
                                   absl::Span<DeviceBuffer* const> slots, const void* grad,
                                   int64_t n) override {
    const size_t elem_size = DataTypeSize(dtype);
    if (n < 0 || elem_size == 0) return internal::OptimizerDtypeUnsupported(dtype);
    PSD_RETURN_IF_ERROR(internal::CheckOptimizerBuffers(params, dtype, elem_size, var, slots,
                                                        static_cast<uint64_t>(n)));
    if (n == 0) return absl::OkStatus();  // `grad` may be empty
    ElemType type;
    if (!ToElemType(dtype, &type)) return internal::OptimizerDtypeUnsupported(dtype);
    PSD_RETURN_IF_ERROR(Usable());
    std::vector<void*> slot_data = SlotData(slots);
    return Check(
        context_->OptimizerDense(type, StepFor(params), var->data(), slot_data.data(), grad, n));
  }

  absl::Status ApplyOptimizerSparse(const OptimizerParams& params, DataType dtype,
                                    DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                    int64_t row_elements, absl::Span<const int64_t> indices,
                                    const void* values) override {
    const size_t elem_size = DataTypeSize(dtype);
    if (row_elements < 0 || elem_size == 0) return internal::OptimizerDtypeUnsupported(dtype);
    PSD_RETURN_IF_ERROR(internal::CheckOptimizerBuffers(params, dtype, elem_size, var, slots, 0));
    if (indices.empty() || row_elements == 0) return absl::OkStatus();
    PSD_RETURN_IF_ERROR(internal::CheckRows(indices, row_elements, elem_size, var->size()));
    ElemType type;
    if (!ToElemType(dtype, &type)) return internal::OptimizerDtypeUnsupported(dtype);
    PSD_RETURN_IF_ERROR(Usable());
    std::vector<void*> slot_data = SlotData(slots);
    return Check(context_->OptimizerSparse(type, StepFor(params), var->data(), slot_data.data(),
                                           row_elements, indices.data(), indices.size(), values));
  }

  absl::Status Initialize(const InitializerSpec& spec, DataType dtype,
                          const TensorShape& full_shape, const TensorShape& slice_shape,
                          absl::Span<const int64_t> slice_offset, DeviceBuffer* dst) override {
    PSD_ASSIGN_OR_RETURN(InitializerPlan plan, PlanInitializer(spec, dtype, full_shape, slice_shape,
                                                               slice_offset, dst->size()));
    const int64_t n = slice_shape.num_elements();
    const size_t elem_size = DataTypeSize(dtype);
    PSD_RETURN_IF_ERROR(Usable());
    using Kind = InitializerPlan::Kind;
    if (plan.kind == Kind::kPattern) {
      return Check(context_->Fill(elem_size, plan.pattern, dst->data(), n));
    }
    ElemType type;
    if (plan.kind == Kind::kConstantTensor || full_shape.rank() > gpu::kMaxFillRank ||
        !ToElemType(dtype, &type)) {
      // A constant tensor's values are in the request, on the host already;
      // ranks the kernel does not handle are filled there too.
      std::vector<uint64_t> host((static_cast<size_t>(n) * elem_size + 7) / 8);
      PSD_RETURN_IF_ERROR(FillInitializer(spec, dtype, full_shape, slice_shape, slice_offset,
                                          host.data(), host.size() * 8));
      return Check(context_->CopyIn(dst->data(), host.data(), static_cast<size_t>(n) * elem_size));
    }
    gpu::SliceGeometry geometry;
    geometry.rank = full_shape.rank();
    int64_t stride = 1;
    for (int d = geometry.rank - 1; d >= 0; --d) {
      geometry.slice_dims[d] = slice_shape.dim(d);
      geometry.offset[d] = slice_offset[d];
      geometry.full_stride[d] = stride;
      stride *= full_shape.dim(d);
    }
    gpu::RandomFill fill;
    switch (plan.kind) {
      case Kind::kUniformInt:
        fill.kind = gpu::RandomFill::Kind::kUniformInt;
        break;
      case Kind::kNormal:
        fill.kind = gpu::RandomFill::Kind::kNormal;
        break;
      case Kind::kTruncatedNormal:
        fill.kind = gpu::RandomFill::Kind::kTruncatedNormal;
        break;
      default:
        fill.kind = gpu::RandomFill::Kind::kUniformReal;
        break;
    }
    fill.seed = plan.seed;
    fill.a = plan.a;
    fill.b = plan.b;
    fill.int_lo = plan.int_lo;
    fill.int_span = plan.int_span;
    return Check(context_->FillRandom(type, fill, geometry, dst->data(), n));
  }

 private:
  static void* At(DeviceBuffer* buffer, size_t offset) {
    return static_cast<char*>(buffer->data()) + offset;
  }
  static const void* At(const DeviceBuffer& buffer, size_t offset) {
    return static_cast<const char*>(buffer.data()) + offset;
  }

  static std::vector<void*> SlotData(absl::Span<DeviceBuffer* const> slots) {
    std::vector<void*> out;
    for (DeviceBuffer* slot : slots) out.push_back(slot->data());
    return out;
  }

  // UNAVAILABLE once a device error took the device out of service.
  absl::Status Usable() const {
    if (healthy()) return absl::OkStatus();
    return absl::UnavailableError(
        absl::StrCat(name_, " is out of service after a device error: ", health_detail()));
  }

  absl::Status Check(const GpuStatus& s) {
    switch (s.code()) {
      case GpuStatus::Code::kOk:
        return absl::OkStatus();
      case GpuStatus::Code::kOutOfMemory:
        return absl::ResourceExhaustedError(s.message());
      case GpuStatus::Code::kInvalidArgument:
        return absl::InternalError(s.message());
      case GpuStatus::Code::kDeviceError:
        break;
    }
    {
      absl::MutexLock lock(&mu_);
      if (failure_.empty()) failure_ = s.message();
    }
    healthy_.store(false, std::memory_order_release);
    spdlog::error("{}: {}; the device is out of service", name_, s.message());
    return absl::InternalError(absl::StrCat(s.message(), "; the device is out of service"));
  }

  const std::unique_ptr<GpuContext> context_;
  const std::string name_;
  std::atomic<bool> healthy_{true};
  mutable absl::Mutex mu_;
  std::string failure_ ABSL_GUARDED_BY(mu_);  // the first device error
};

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> NewGpuDevice(int ordinal) {
  std::unique_ptr<GpuContext> context;
  const GpuStatus s = GpuContext::Open(ordinal, &context);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("gpu:", ordinal, ": no CUDA device: ", s.message()));
  }
  spdlog::info("gpu:{} is {} ({} MiB)", ordinal, context->device_name(),
               context->total_memory() >> 20);
  return std::unique_ptr<Device>(new GpuDevice(std::move(context)));
}

}  // namespace psd
