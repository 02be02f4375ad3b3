// Philox4x32-10, the counter-based random generator of Salmon, Moraes, Dror
// and Shaw ("Parallel Random Numbers: As Easy as 1, 2, 3", SC'11), with the
// constants of Random123 and TensorFlow, and the conversions from its output
// words to uniform floats.
//
// A counter-based generator is a pure function of (counter, key): any element
// of a stream can be computed without computing the ones before it. The
// initializers use that to give each element of a variable a value that
// depends only on the seed and the element's global index, so every part of a
// partitioned variable, and a GPU implementation, computes the same values.
//
// Everything here is a pure function: thread-safe. The same code compiles
// for the host and, under nvcc (with --expt-relaxed-constexpr, for
// std::array), for CUDA devices, so both draw identical words.
//
//   PhiloxBlock r = Philox4x32(PhiloxBlock{index_lo, index_hi, 0, 0},
//                              PhiloxKey{seed_lo, seed_hi});
//   float u = UniformFloat(r[0]);  // in [0, 1)
#ifndef PSD_SERVER_DEVICE_PHILOX_H_
#define PSD_SERVER_DEVICE_PHILOX_H_

#include <array>
#include <cstdint>

// Host and device under nvcc; plain host functions otherwise.
#if defined(__CUDACC__)
#define PSD_HOST_DEVICE __host__ __device__
#else
#define PSD_HOST_DEVICE
#endif

namespace psd {

// Four 32-bit words: a counter going in, random output coming out.
using PhiloxBlock = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

namespace philox_internal {

constexpr uint32_t kM0 = 0xD2511F53u;  // round multipliers
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;  // Weyl key increments (golden ratio, sqrt(3) - 1)
constexpr uint32_t kW1 = 0xBB67AE85u;

PSD_HOST_DEVICE inline PhiloxBlock Round(const PhiloxBlock& c, const PhiloxKey& k) {
  const uint64_t p0 = static_cast<uint64_t>(kM0) * c[0];
  const uint64_t p1 = static_cast<uint64_t>(kM1) * c[2];
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  return PhiloxBlock{hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
}

}  // namespace philox_internal

// Ten rounds, the key bumped by the Weyl increments between rounds. Matches
// Random123's philox4x32_10 known-answer vectors.
PSD_HOST_DEVICE inline PhiloxBlock Philox4x32(PhiloxBlock counter, PhiloxKey key) {
  counter = philox_internal::Round(counter, key);
  for (int round = 1; round < 10; ++round) {
    key[0] += philox_internal::kW0;
    key[1] += philox_internal::kW1;
    counter = philox_internal::Round(counter, key);
  }
  return counter;
}

// A float in [0, 1) on a grid of 2^-24 from the top 24 bits of `x`: every
// value is exact in float, so no rounding can reach 1.
PSD_HOST_DEVICE inline float UniformFloat(uint32_t x) {
  return static_cast<float>(x >> 8) * 0x1p-24f;
}

// A double in [0, 1) on a grid of 2^-53 from 53 bits of `hi`:`lo`.
PSD_HOST_DEVICE inline double UniformDouble(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 32) | lo;
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

}  // namespace psd

#endif  // PSD_SERVER_DEVICE_PHILOX_H_
