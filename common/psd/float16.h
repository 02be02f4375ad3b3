// IEEE binary16 (`half`) and bfloat16 storage types. Both are stored as their
// 16-bit patterns and compute through float, as TensorFlow's CPU kernels do:
// the arithmetic ops widen to float, compute, and round back to nearest even.
#ifndef PSD_COMMON_FLOAT16_H_
#define PSD_COMMON_FLOAT16_H_

#include <cstdint>
#include <cstring>

namespace psd {

namespace internal {
inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace internal

struct half {
  uint16_t bits = 0;

  half() = default;
  explicit half(float f) : bits(FromFloat(f)) {}
  explicit operator float() const { return ToFloat(bits); }

  static uint16_t FromFloat(float f) {
    const uint32_t x = internal::FloatBits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) {  // inf or NaN; keep NaN quiet
      return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    }
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow
    if (abs < 0x38800000u) {  // result is subnormal or zero
      // Scale into the subnormal range in float arithmetic, which rounds to
      // nearest even for us: 0.5 adds 2^-1 so the mantissa lands in bits.
      const float scaled = internal::BitsFloat(abs) + 0.5f;
      return static_cast<uint16_t>(sign | (internal::FloatBits(scaled) - 0x3f000000u));
    }
    // Normal: rebias exponent (127 -> 15) and round the 13 dropped bits to
    // nearest even.
    const uint32_t odd = (abs >> 13) & 1u;
    const uint32_t rounded = abs + 0xc8000fffu + odd;  // -(112 << 23) + 0xfff
    return static_cast<uint16_t>(sign | (rounded >> 13));
  }

  static float ToFloat(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24
      const float magnitude = static_cast<float>(mant) * 5.9604644775390625e-8f;
      return internal::BitsFloat(sign | internal::FloatBits(magnitude));
    }
    if (exp == 0x1f) return internal::BitsFloat(sign | 0x7f800000u | (mant << 13));
    return internal::BitsFloat(sign | ((exp + 112u) << 23) | (mant << 13));
  }
};

struct bfloat16 {
  uint16_t bits = 0;

  bfloat16() = default;
  explicit bfloat16(float f) : bits(FromFloat(f)) {}
  explicit operator float() const { return internal::BitsFloat(static_cast<uint32_t>(bits) << 16); }

  // The top 16 bits of the float, rounded to nearest even (NaN stays NaN).
  static uint16_t FromFloat(float f) {
    const uint32_t x = internal::FloatBits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>((x + rounding) >> 16);
  }
};

static_assert(sizeof(half) == 2 && sizeof(bfloat16) == 2, "16-bit storage types");

}  // namespace psd

#endif  // PSD_COMMON_FLOAT16_H_
