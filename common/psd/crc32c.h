// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of
// LevelDB tables and of TensorFlow's tensor bundles, and the masking both
// apply before storing a CRC. Uses the SSE4.2 crc32 instruction when the CPU
// has it, slicing-by-8 tables otherwise. Thread-safe.
#ifndef PSD_COMMON_CRC32C_H_
#define PSD_COMMON_CRC32C_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace psd::crc32c {

// The CRC of `init_crc`'s data followed by data[0, n). Extend(0, ...) is the
// CRC of data alone, so a CRC can be computed in chunks:
//   uint32_t c = 0; for (chunk : chunks) c = Extend(c, chunk.data(), chunk.size());
uint32_t Extend(uint32_t init_crc, const char* data, size_t n);
inline uint32_t Extend(uint32_t init_crc, absl::string_view data) {
  return Extend(init_crc, data.data(), data.size());
}
inline uint32_t Value(const char* data, size_t n) { return Extend(0, data, n); }
inline uint32_t Value(absl::string_view data) { return Extend(0, data); }

// Stored CRCs are masked: a CRC computed over data that itself contains
// CRCs is weak, and masking makes a stored CRC look unlike one.
constexpr uint32_t kMaskDelta = 0xa282ead8u;
inline uint32_t Mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kMaskDelta; }
inline uint32_t Unmask(uint32_t masked) {
  const uint32_t rot = masked - kMaskDelta;
  return (rot >> 17) | (rot << 15);
}

// For tests: the portable implementation, whatever the CPU.
uint32_t ExtendPortable(uint32_t init_crc, const char* data, size_t n);
// True when Extend uses the SSE4.2 instruction.
bool UsesHardware();

}  // namespace psd::crc32c

#endif  // PSD_COMMON_CRC32C_H_
