// Plain types shared by the CUDA kernel library (server/device/cuda) and its
// callers: element types, optimizer coefficients, initializer fills, and
// GpuStatus, the library's error value. Updates are psd::UpdateKind
// (psd/update_kind.h, plain C++ like this header).
//
// The library needs only CUDA and the C++ standard library (no absl, gRPC or
// protobuf), so it builds on a GPU machine that has nothing else; the
// adapter in server/device/gpu_device.cc maps these types to psd's.
//
// Everything here is a value type: thread-compatible.
#ifndef PSD_SERVER_DEVICE_CUDA_GPU_TYPES_H_
#define PSD_SERVER_DEVICE_CUDA_GPU_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "psd/update_kind.h"

namespace psd {
namespace gpu {

// An error from the library. kOutOfMemory (device or pinned memory ran out)
// leaves the device usable; kDeviceError is a CUDA failure after which the
// device may hold partial results and should be taken out of service;
// kInvalidArgument is a caller's mistake caught before any work ran.
class GpuStatus {
 public:
  enum class Code { kOk, kInvalidArgument, kOutOfMemory, kDeviceError };

  GpuStatus() = default;
  GpuStatus(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static GpuStatus Ok() { return GpuStatus(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

#define PSD_GPU_RETURN_IF_ERROR(expr)          \
  do {                                         \
    ::psd::gpu::GpuStatus _psd_gpu_s = (expr); \
    if (!_psd_gpu_s.ok()) return _psd_gpu_s;   \
  } while (0)

// The element types a GPU buffer holds. kBool is one byte holding 0 or 1.
enum class ElemType : int {
  kFloat,
  kDouble,
  kHalf,
  kBFloat16,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUint8,
  kBool,
};

// Bytes per element.
inline size_t ElemSize(ElemType type) {
  switch (type) {
    case ElemType::kDouble:
    case ElemType::kInt64:
      return 8;
    case ElemType::kFloat:
    case ElemType::kInt32:
      return 4;
    case ElemType::kHalf:
    case ElemType::kBFloat16:
    case ElemType::kInt16:
      return 2;
    case ElemType::kInt8:
    case ElemType::kUint8:
    case ElemType::kBool:
      return 1;
  }
  return 0;
}

// "float32", "bfloat16", ...
inline const char* ElemName(ElemType type) {
  switch (type) {
    case ElemType::kFloat:
      return "float32";
    case ElemType::kDouble:
      return "float64";
    case ElemType::kHalf:
      return "float16";
    case ElemType::kBFloat16:
      return "bfloat16";
    case ElemType::kInt8:
      return "int8";
    case ElemType::kInt16:
      return "int16";
    case ElemType::kInt32:
      return "int32";
    case ElemType::kInt64:
      return "int64";
    case ElemType::kUint8:
      return "uint8";
    case ElemType::kBool:
      return "bool";
  }
  return "unknown";
}

// TensorFlow's training ops (psd::OptimizerKind is this type). Each kind
// updates the variable and a fixed number of slot buffers of the same size
// and dtype, in the order of the training op's arguments.
enum class Optimizer : int {
  kGradientDescent,  // no slots
  kMomentum,         // accum
  kAdagrad,          // accum
  kAdam,             // m, v
  kRMSProp,          // ms, mom
  kCenteredRMSProp,  // mg, ms, mom
  kFtrl,             // accum, linear
};
constexpr int kMaxOptimizerSlots = 3;
// Slot buffers `kind` updates.
inline int OptimizerSlots(Optimizer kind) {
  switch (kind) {
    case Optimizer::kGradientDescent:
      return 0;
    case Optimizer::kMomentum:
    case Optimizer::kAdagrad:
      return 1;
    case Optimizer::kAdam:
    case Optimizer::kRMSProp:
    case Optimizer::kFtrl:
      return 2;
    case Optimizer::kCenteredRMSProp:
      return 3;
  }
  return 0;
}

// One step's hyper-parameters in the compute type C (double for float64,
// float otherwise), including the derived constants, computed by the caller
// exactly as the CPU kernels compute them so both agree bit for bit.
template <typename C>
struct OptimizerCoefficients {
  C lr = 0, momentum = 0;
  bool use_nesterov = false;
  C one_minus_beta1 = 0, one_minus_beta2 = 0, epsilon = 0, adam_alpha = 0;
  C one_minus_decay = 0;
  C neg_lr_power = 0;
  bool lr_power_is_half = false;
  C l1 = 0, two_l2 = 0, two_l2_shrinkage = 0;
};

// Both compute types; the kernel uses the one of the variable's type.
struct OptimizerStep {
  Optimizer kind = Optimizer::kGradientDescent;
  OptimizerCoefficients<float> f;
  OptimizerCoefficients<double> d;
};

// The largest rank a device-side initializer handles; higher ranks are
// filled on the host by the caller.
constexpr int kMaxFillRank = 8;

// Where a slice lies in its full variable: element i of the slice (row-major
// in `slice_dims`) is element sum((offset[d] + coord[d]) * full_stride[d])
// of the full variable.
struct SliceGeometry {
  int rank = 0;
  int64_t slice_dims[kMaxFillRank] = {};
  int64_t offset[kMaxFillRank] = {};
  int64_t full_stride[kMaxFillRank] = {};
};

// A random initializer (see server/device/initializers.h for the values):
// element with global index g is drawn from
// Philox4x32({g lo, g hi, attempt, 0}, {seed lo, seed hi}).
struct RandomFill {
  enum class Kind { kUniformReal, kUniformInt, kNormal, kTruncatedNormal };
  Kind kind = Kind::kUniformReal;
  uint64_t seed = 0;
  double a = 0, b = 0;  // uniform: [a, b); normal: mean a, stddev b
  int64_t int_lo = 0;   // kUniformInt: lo + bits % span (span 0 is 2^64)
  uint64_t int_span = 0;
};

}  // namespace gpu
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_CUDA_GPU_TYPES_H_
