// Device-side element types and arithmetic, internal to the CUDA kernels.
//
// float16 and bfloat16 are stored as their bit patterns and converted with
// the same bit-level rounding as psd/float16.h (round to nearest even, NaN
// kept quiet), not CUDA's intrinsics, so a value computed on the GPU has the
// bits the CPU kernels produce. bool is a byte holding 0 or 1.
#ifndef PSD_SERVER_DEVICE_CUDA_DEVICE_ELEM_CUH_
#define PSD_SERVER_DEVICE_CUDA_DEVICE_ELEM_CUH_

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "device/cuda/gpu_types.h"

namespace psd {
namespace gpu {
namespace internal {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
struct Bool {
  uint8_t byte;
};

template <typename T>
constexpr bool kIs16BitFloat = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

__device__ inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    bits = sign | __float_as_uint(static_cast<float>(mant) * 5.9604644775390625e-8f);
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  return __uint_as_float(bits);
}

__device__ inline uint16_t FloatToHalf(float f) {
  const uint32_t x = __float_as_uint(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs < 0x38800000u) {
    // Float addition rounds the subnormal's mantissa to nearest even.
    const float scaled = __fadd_rn(__uint_as_float(abs), 0.5f);
    return static_cast<uint16_t>(sign | (__float_as_uint(scaled) - 0x3f000000u));
  }
  const uint32_t odd = (abs >> 13) & 1u;
  return static_cast<uint16_t>(sign | ((abs + 0xc8000fffu + odd) >> 13));
}

__device__ inline float BFloat16ToFloat(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}

__device__ inline uint16_t FloatToBFloat16(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// The type a stored element computes in.
template <typename T>
struct Compute {
  using type = T;
};
template <>
struct Compute<Half> {
  using type = float;
};
template <>
struct Compute<BFloat16> {
  using type = float;
};
template <typename T>
using ComputeT = typename Compute<T>::type;

template <typename T>
__device__ inline ComputeT<T> Widen(T v) {
  if constexpr (std::is_same_v<T, Half>) {
    return HalfToFloat(v.bits);
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return BFloat16ToFloat(v.bits);
  } else {
    return v;
  }
}

template <typename T>
__device__ inline T Narrow(ComputeT<T> v) {
  if constexpr (std::is_same_v<T, Half>) {
    return Half{FloatToHalf(v)};
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return BFloat16{FloatToBFloat16(v)};
  } else {
    return static_cast<T>(v);
  }
}

// op(a, b) for UpdateKind `kOp`: integers wrap, 16-bit floats round once.
template <int kOp, typename T>
__device__ inline T Combine(T a, T b) {
  if constexpr (kOp == static_cast<int>(UpdateKind::kAssign)) {
    if constexpr (std::is_same_v<T, Bool>) {
      return Bool{static_cast<uint8_t>(b.byte != 0)};
    } else {
      return b;
    }
  } else if constexpr (kIs16BitFloat<T>) {
    const float x = Widen(a), y = Widen(b);
    return Narrow<T>(kOp == static_cast<int>(UpdateKind::kAdd) ? __fadd_rn(x, y) : __fsub_rn(x, y));
  } else if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    const U x = static_cast<U>(a), y = static_cast<U>(b);
    return static_cast<T>(
        static_cast<U>(kOp == static_cast<int>(UpdateKind::kAdd) ? x + y : x - y));
  } else {
    return kOp == static_cast<int>(UpdateKind::kAdd) ? a + b : a - b;
  }
}

// Calls fn(T{}) with the device type of `type`.
template <typename Fn>
inline cudaError_t DispatchElem(ElemType type, Fn&& fn) {
  switch (type) {
    case ElemType::kFloat:
      return fn(float{});
    case ElemType::kDouble:
      return fn(double{});
    case ElemType::kHalf:
      return fn(Half{});
    case ElemType::kBFloat16:
      return fn(BFloat16{});
    case ElemType::kInt8:
      return fn(int8_t{});
    case ElemType::kInt16:
      return fn(int16_t{});
    case ElemType::kInt32:
      return fn(int32_t{});
    case ElemType::kInt64:
      return fn(int64_t{});
    case ElemType::kUint8:
      return fn(uint8_t{});
    case ElemType::kBool:
      return fn(Bool{});
  }
  return cudaErrorInvalidValue;
}

// Calls fn(std::integral_constant<int, op>{}).
template <typename Fn>
inline cudaError_t DispatchOp(UpdateKind op, Fn&& fn) {
  switch (op) {
    case UpdateKind::kAssign:
      return fn(std::integral_constant<int, 0>{});
    case UpdateKind::kAdd:
      return fn(std::integral_constant<int, 1>{});
    case UpdateKind::kSub:
      return fn(std::integral_constant<int, 2>{});
  }
  return cudaErrorInvalidValue;
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items.
inline unsigned int BlocksFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}

}  // namespace internal
}  // namespace gpu
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_CUDA_DEVICE_ELEM_CUH_
