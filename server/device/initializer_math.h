// The per-element arithmetic of the random initializers, shared by the CPU
// fill (initializers.cc) and the CUDA kernels (cuda/init_kernels.cu) so both
// compute each value with the same operations in the same order. See
// initializers.h for the definition of the values.
//
// Uniform and integer values agree bit for bit between host and device
// (IEEE add/multiply, no contraction: the CUDA library is built with
// --fmad=false). Normal values go through log, sqrt and cos, whose last bit
// may differ between glibc and CUDA's math library.
//
// Pure functions: thread-safe.
#ifndef PSD_SERVER_DEVICE_INITIALIZER_MATH_H_
#define PSD_SERVER_DEVICE_INITIALIZER_MATH_H_

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "device/philox.h"

namespace psd {
namespace init_math {

// Truncated normal redraws with probability ~4.6% each; this many misses in a
// row never happens with a working generator, but keeps the loop bounded.
constexpr uint32_t kMaxTruncatedAttempts = 1000;

// The draw for counter (g lo, g hi, attempt, word3). A dense variable's
// element g uses word3 = 0; an embedding table's row of key k uses g = k and
// word3 = element + 1, so the two never share a counter under one seed.
PSD_HOST_DEVICE inline PhiloxBlock Draw(const PhiloxKey& key, uint64_t g, uint32_t attempt,
                                        uint32_t word3 = 0) {
  return Philox4x32(
      PhiloxBlock{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), attempt, word3}, key);
}

PSD_HOST_DEVICE inline PhiloxKey KeyOf(uint64_t seed) {
  return PhiloxKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

// The math functions under one name on host and device.
#if defined(__CUDA_ARCH__)
__device__ inline float Log(float x) { return ::logf(x); }
__device__ inline double Log(double x) { return ::log(x); }
__device__ inline float Cos(float x) { return ::cosf(x); }
__device__ inline double Cos(double x) { return ::cos(x); }
__device__ inline float Sqrt(float x) { return ::sqrtf(x); }
__device__ inline double Sqrt(double x) { return ::sqrt(x); }
__device__ inline float Abs(float x) { return ::fabsf(x); }
__device__ inline double Abs(double x) { return ::fabs(x); }
__device__ inline float NextAfter(float x, float y) { return ::nextafterf(x, y); }
__device__ inline double NextAfter(double x, double y) { return ::nextafter(x, y); }
#else
template <typename C>
inline C Log(C x) {
  return std::log(x);
}
template <typename C>
inline C Cos(C x) {
  return std::cos(x);
}
template <typename C>
inline C Sqrt(C x) {
  return std::sqrt(x);
}
template <typename C>
inline C Abs(C x) {
  return std::fabs(x);
}
template <typename C>
inline C NextAfter(C x, C y) {
  return std::nextafter(x, y);
}
#endif

// A uniform in [0, 1) of the compute type C (float or double).
template <typename C>
PSD_HOST_DEVICE inline C Unit(const PhiloxBlock& r) {
  if constexpr (std::is_same_v<C, double>) {
    return UniformDouble(r[0], r[1]);
  } else {
    return UniformFloat(r[0]);
  }
}

// Box-Muller. Taking 1 - u keeps the logarithm's argument in (0, 1].
template <typename C>
PSD_HOST_DEVICE inline C Normal(const PhiloxBlock& r) {
  constexpr C kTwoPi = static_cast<C>(6.283185307179586476925286766559);
  C u1, u2;
  if constexpr (std::is_same_v<C, double>) {
    u1 = 1.0 - UniformDouble(r[0], r[1]);
    u2 = UniformDouble(r[2], r[3]);
  } else {
    u1 = 1.0f - UniformFloat(r[0]);
    u2 = UniformFloat(r[1]);
  }
  return Sqrt(C{-2} * Log(u1)) * Cos(kTwoPi * u2);
}

// lo + (hi - lo) * u for u in [0, 1). The product can still round up to hi;
// step back below it so the interval stays half-open. A reversed interval
// (negative uniform_unit_scaling factor) is used as given.
template <typename C>
PSD_HOST_DEVICE inline C ScaleUniform(C lo, C hi, C u) {
  C v = lo + (hi - lo) * u;
  if (lo < hi && v >= hi) v = NextAfter(hi, lo);
  return v;
}

// An integer uniform: lo + (r[0]:r[1] as 64 bits) mod span, span 0 standing
// for 2^64. Modulo bias is at most span / 2^64: under 2^-32 for int32 bounds.
PSD_HOST_DEVICE inline int64_t UniformInteger(const PhiloxBlock& r, int64_t lo, uint64_t span) {
  const uint64_t bits = (static_cast<uint64_t>(r[0]) << 32) | r[1];
  const uint64_t offset = span == 0 ? bits : bits % span;
  return static_cast<int64_t>(static_cast<uint64_t>(lo) + offset);
}

// mean + stddev * z, z the first normal draw for (g, word3) within [-2, 2]
// (redraws bump the attempt word); `mean` after kMaxTruncatedAttempts misses.
template <typename C>
PSD_HOST_DEVICE inline C TruncatedNormal(const PhiloxKey& key, uint64_t g, C mean, C stddev,
                                         uint32_t word3 = 0) {
  for (uint32_t attempt = 0; attempt < kMaxTruncatedAttempts; ++attempt) {
    const C z = Normal<C>(Draw(key, g, attempt, word3));
    if (Abs(z) <= C{2}) return mean + stddev * z;
  }
  return mean;
}

// The real-valued random initializers, one sample each: the dense fill
// (word3 = 0, g the element's global index) and an embedding table's row
// (g the key, word3 the element + 1) call this one function.
enum class RealDistribution { kUniform, kNormal, kTruncatedNormal };

// Uniform in [a, b), normal or truncated normal with mean a and stddev b.
template <typename C>
PSD_HOST_DEVICE inline C SampleReal(RealDistribution d, const PhiloxKey& key, uint64_t g, C a, C b,
                                    uint32_t word3) {
  switch (d) {
    case RealDistribution::kUniform:
      return ScaleUniform(a, b, Unit<C>(Draw(key, g, 0, word3)));
    case RealDistribution::kNormal:
      return a + b * Normal<C>(Draw(key, g, 0, word3));
    case RealDistribution::kTruncatedNormal:
      return TruncatedNormal<C>(key, g, a, b, word3);
  }
  return a;
}

}  // namespace init_math
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_INITIALIZER_MATH_H_
