// The CPU Device: buffers in 64-byte aligned host memory, kernels as plain
// loops that the compiler vectorizes (the library is built with -O3).
//
// Callers validate requests (device.h), but a kernel still checks that what
// it touches lies inside its buffers, so a caller's bug is an INTERNAL error
// rather than memory corruption; the checks are O(1) per call or per row.
// Host pointers (`src`, `updates`) come from the wire and may be unaligned:
// elements are loaded with memcpy, which compiles to plain loads.
//
// The CpuDevice holds no state: thread-safe.
#include <algorithm>
#include <cstring>
#include <new>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "device/cpu_optimizer_kernels.h"
#include "device/device.h"
#include "device/device_checks.h"
#include "device/initializers.h"
#include "device/prefetch.h"
#include "psd/dtype.h"
#include "psd/float16.h"
#include "psd/huge_pages.h"

namespace psd {
namespace {

using internal::CheckCopyRange;
using internal::CheckRows;
using internal::UnsupportedDtype;

// A cache line, and enough for any vector width the kernels may use.
constexpr size_t kAlignment = 64;

class CpuBuffer final : public DeviceBuffer {
 public:
  // nullptr when the memory is not available.
  static std::unique_ptr<CpuBuffer> Create(size_t bytes) {
    // A zero-byte request still returns a unique non-null pointer, so data()
    // is always a valid (if empty) range.
    void* data = ::operator new (bytes, std::align_val_t{kAlignment}, std::nothrow);
    if (data == nullptr) return nullptr;
    AdviseHugePages(data, bytes);  // before the first write faults its pages in
    return std::unique_ptr<CpuBuffer>(new CpuBuffer(data, bytes));
  }

  ~CpuBuffer() override { ::operator delete (data_, std::align_val_t{kAlignment}); }

  CpuBuffer(const CpuBuffer&) = delete;
  CpuBuffer& operator=(const CpuBuffer&) = delete;

  void* data() override { return data_; }
  const void* data() const override { return data_; }
  size_t size() const override { return size_; }

  void AdviseSmallPages(bool small) override {
    if (small) {
      AdviseSmallPagesOnly(data_, size_);
    } else {
      AdviseHugePages(data_, size_);
    }
  }

 private:
  CpuBuffer(void* data, size_t size) : data_(data), size_(size) {}

  void* const data_;
  const size_t size_;
};

template <typename T>
constexpr bool kIsFloat16 = std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

// One element from possibly unaligned host memory. A bool is read as its
// byte, since a byte other than 0 or 1 is not a valid bool object.
template <typename T>
inline T LoadElement(const unsigned char* p) {
  if constexpr (std::is_same_v<T, bool>) {
    return *p != 0;
  } else {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }
}

// The update ops. Integers wrap like TensorFlow's (two's complement),
// computed in unsigned arithmetic where wrapping is defined; the 16-bit floats
// compute in float and round back to nearest even.
struct AssignOp {};

struct AddOp {
  template <typename T>
  static T Apply(T a, T b) {
    if constexpr (kIsFloat16<T>) {
      return T(static_cast<float>(a) + static_cast<float>(b));
    } else if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
    } else {
      return a + b;
    }
  }
};

struct SubOp {
  template <typename T>
  static T Apply(T a, T b) {
    if constexpr (kIsFloat16<T>) {
      return T(static_cast<float>(a) - static_cast<float>(b));
    } else if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(static_cast<U>(static_cast<U>(a) - static_cast<U>(b)));
    } else {
      return a - b;
    }
  }
};

// dst[i] = op(dst[i], src[i]) for n elements of host memory at `src`.
template <typename Op, typename T>
void ApplyElements(T* dst, const unsigned char* src, int64_t n) {
  if constexpr (std::is_same_v<Op, AssignOp>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = LoadElement<T>(src + i * sizeof(T));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = Op::Apply(dst[i], LoadElement<T>(src + i * sizeof(T)));
  }
}

// dst[i] = op(dst[i], value) for n elements.
template <typename Op, typename T>
void ApplyScalar(T* dst, T value, int64_t n) {
  if constexpr (std::is_same_v<Op, AssignOp>) {
    std::fill(dst, dst + n, value);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = Op::Apply(dst[i], value);
  }
}

// Rows addressed by index (scatter, gather) are prefetched this many rows
// ahead (device/prefetch.h). On 4096 distinct random rows of 64 floats in a
// 256 MiB variable (this project's 2-core VM, huge pages), a standalone loop
// of scatter_add's shape took 2.4-2.7x less time and one of gather's about
// 2x; 4 and 16 rows ahead were within 10% of 8. In the shard the gain is
// smaller (the loop stays near 40% of a big scatter_add's CPU).
constexpr size_t kPrefetchRowsAhead = 8;

// Asks for the row kPrefetchRowsAhead positions after `k` in `indices`, if
// there is one, each row `row_bytes` long from `base`.
inline void PrefetchRowAhead(const void* base, absl::Span<const int64_t> indices, size_t k,
                             size_t row_bytes) {
  if (k + kPrefetchRowsAhead >= indices.size()) return;
  device_internal::PrefetchRow(static_cast<const char*>(base) +
                                   static_cast<size_t>(indices[k + kPrefetchRowsAhead]) * row_bytes,
                               row_bytes);
}

// Calls fn(Op{}) with the op type of `op`, or fails if T has no arithmetic.
template <typename T, typename Fn>
absl::Status WithUpdateKind(UpdateKind op, Fn&& fn) {
  switch (op) {
    case UpdateKind::kAssign:
      fn(AssignOp{});
      return absl::OkStatus();
    case UpdateKind::kAdd:
    case UpdateKind::kSub:
      if constexpr (std::is_same_v<T, bool>) {
        return internal::CheckArithmetic(DT_BOOL, op);
      } else {
        if (op == UpdateKind::kAdd) {
          fn(AddOp{});
        } else {
          fn(SubOp{});
        }
        return absl::OkStatus();
      }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown update kind ", static_cast<int>(op)));
}

class CpuDevice final : public Device {
 public:
  std::string name() const override { return "cpu:0"; }
  bool host_memory() const override { return true; }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override {
    std::unique_ptr<CpuBuffer> buffer = CpuBuffer::Create(bytes);
    if (buffer == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu: cannot allocate ", bytes, " bytes of host memory"));
    }
    return std::unique_ptr<DeviceBuffer>(std::move(buffer));
  }

  absl::Status CopyFromHost(const void* src, size_t bytes, DeviceBuffer* dst,
                            size_t offset) override {
    absl::Status s = CheckCopyRange("copy to device", offset, bytes, dst->size());
    if (!s.ok()) return s;
    if (bytes > 0) std::memcpy(static_cast<char*>(dst->data()) + offset, src, bytes);
    return absl::OkStatus();
  }

  absl::Status CopyToHost(const DeviceBuffer& src, size_t offset, size_t bytes,
                          void* dst) override {
    absl::Status s = CheckCopyRange("copy from device", offset, bytes, src.size());
    if (!s.ok()) return s;
    if (bytes > 0) std::memcpy(dst, static_cast<const char*>(src.data()) + offset, bytes);
    return absl::OkStatus();
  }

  absl::Status Copy(const DeviceBuffer& src, DeviceBuffer* dst) override {
    if (src.size() != dst->size()) {
      return absl::InternalError(
          absl::StrCat("copy of ", src.size(), " bytes into a buffer of ", dst->size()));
    }
    if (src.size() > 0) std::memcpy(dst->data(), src.data(), src.size());
    return absl::OkStatus();
  }

  absl::Status CopyRange(const DeviceBuffer& src, size_t src_offset, DeviceBuffer* dst,
                         size_t dst_offset, size_t bytes) override {
    absl::Status s = CheckCopyRange("copy from buffer", src_offset, bytes, src.size());
    if (s.ok()) s = CheckCopyRange("copy into buffer", dst_offset, bytes, dst->size());
    if (!s.ok()) return s;
    if (bytes > 0) {
      std::memcpy(static_cast<char*>(dst->data()) + dst_offset,
                  static_cast<const char*>(src.data()) + src_offset, bytes);
    }
    return absl::OkStatus();
  }

  absl::Status ApplyDense(DataType dtype, UpdateKind op, DeviceBuffer* dst, const void* src,
                          int64_t n, bool src_is_scalar) override {
    return DispatchFixedSize(
        dtype,
        [&](auto t) -> absl::Status {
          using T = decltype(t);
          absl::Status s = internal::CheckDenseCount(n, sizeof(T), dst->size());
          if (!s.ok()) return s;
          T* out = static_cast<T*>(dst->data());
          const auto* in = static_cast<const unsigned char*>(src);
          return WithUpdateKind<T>(op, [&](auto tag) {
            using Op = decltype(tag);
            if (n == 0) return;  // `src` may be empty
            if (src_is_scalar) {
              ApplyScalar<Op>(out, LoadElement<T>(in), n);
            } else {
              ApplyElements<Op>(out, in, n);
            }
          });
        },
        [&] { return UnsupportedDtype(dtype); });
  }

  absl::Status ApplyDenseFromBuffer(DataType dtype, UpdateKind op, DeviceBuffer* dst,
                                    const DeviceBuffer& src, int64_t n) override {
    const size_t elem_size = DataTypeSize(dtype);
    if (elem_size == 0) return UnsupportedDtype(dtype);
    absl::Status s = internal::CheckDenseCount(n, elem_size, src.size());
    if (!s.ok()) return s;
    // Host memory is device memory here.
    return ApplyDense(dtype, op, dst, src.data(), n, /*src_is_scalar=*/false);
  }

  absl::Status ApplyScatter(DataType dtype, UpdateKind op, DeviceBuffer* dst, int64_t row_elements,
                            absl::Span<const int64_t> indices, const void* updates,
                            bool updates_is_scalar) override {
    return DispatchFixedSize(
        dtype,
        [&](auto t) -> absl::Status {
          using T = decltype(t);
          absl::Status s = CheckRows(indices, row_elements, sizeof(T), dst->size());
          if (!s.ok()) return s;
          T* out = static_cast<T*>(dst->data());
          const auto* in = static_cast<const unsigned char*>(updates);
          const size_t row_bytes = static_cast<size_t>(row_elements) * sizeof(T);
          return WithUpdateKind<T>(op, [&](auto tag) {
            using Op = decltype(tag);
            if (indices.empty() || row_elements == 0) return;  // `updates` may be empty
            // In order: duplicates accumulate (add/sub) or the last wins.
            if (updates_is_scalar) {
              const T value = LoadElement<T>(in);
              for (size_t k = 0; k < indices.size(); ++k) {
                PrefetchRowAhead(out, indices, k, row_bytes);
                ApplyScalar<Op>(out + indices[k] * row_elements, value, row_elements);
              }
            } else {
              for (size_t k = 0; k < indices.size(); ++k) {
                PrefetchRowAhead(out, indices, k, row_bytes);
                ApplyElements<Op>(out + indices[k] * row_elements, in + k * row_bytes,
                                  row_elements);
              }
            }
          });
        },
        [&] { return UnsupportedDtype(dtype); });
  }

  absl::Status ApplyOptimizerDense(const OptimizerParams& params, DataType dtype, DeviceBuffer* var,
                                   absl::Span<DeviceBuffer* const> slots, const void* grad,
                                   int64_t n) override {
    return internal::CpuApplyOptimizerDense(params, dtype, var, slots, grad, n);
  }

  absl::Status ApplyOptimizerSparse(const OptimizerParams& params, DataType dtype,
                                    DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                    int64_t row_elements, absl::Span<const int64_t> indices,
                                    const void* values) override {
    return internal::CpuApplyOptimizerSparse(params, dtype, var, slots, row_elements, indices,
                                             values);
  }

  absl::Status Gather(DataType dtype, const DeviceBuffer& src, int64_t row_elements,
                      absl::Span<const int64_t> indices, void* out) override {
    // A row copy needs only the element size, not the type.
    const size_t elem_size = DataTypeSize(dtype);
    if (elem_size == 0) return UnsupportedDtype(dtype);
    absl::Status s = CheckRows(indices, row_elements, elem_size, src.size());
    if (!s.ok()) return s;
    const size_t row_bytes = static_cast<size_t>(row_elements) * elem_size;
    if (row_bytes == 0) return absl::OkStatus();
    const auto* from = static_cast<const char*>(src.data());
    auto* to = static_cast<char*>(out);
    for (size_t k = 0; k < indices.size(); ++k) {
      PrefetchRowAhead(from, indices, k, row_bytes);
      std::memcpy(to + k * row_bytes, from + static_cast<size_t>(indices[k]) * row_bytes,
                  row_bytes);
    }
    return absl::OkStatus();
  }

  absl::Status Initialize(const InitializerSpec& spec, DataType dtype,
                          const TensorShape& full_shape, const TensorShape& slice_shape,
                          absl::Span<const int64_t> slice_offset, DeviceBuffer* dst) override {
    // Host memory is device memory here, so fill in place.
    return FillInitializer(spec, dtype, full_shape, slice_shape, slice_offset, dst->data(),
                           dst->size());
  }
};

}  // namespace

std::unique_ptr<Device> NewCpuDevice() { return std::make_unique<CpuDevice>(); }

}  // namespace psd
