// Which part of an embedding table a key belongs to: one function shared by
// the client (which splits keys across parts), the shard (which refuses a
// key of another part) and restores (which rehash keys into a new part
// count), so every side agrees without asking the others.
//
// The key is widened to int64 with its sign (an int32 key and the same int64
// key land in the same part), mixed with SplitMix64's finalizer so that
// sequential or strided ids spread evenly, and reduced modulo the part
// count. The formula is part of the checkpoint layout's meaning: changing it
// would scatter restored rows to the wrong parts.
#ifndef PSD_COMMON_PSD_EMBEDDING_KEYS_H_
#define PSD_COMMON_PSD_EMBEDDING_KEYS_H_

#include <cstdint>

namespace psd {

// SplitMix64's output function (Steele, Lea and Flood 2014): a bijection on
// 64-bit integers with good avalanche.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The part (in [0, num_parts)) that holds `key`; num_parts >= 1.
inline int PartOfKey(int64_t key, int num_parts) {
  return static_cast<int>(SplitMix64(static_cast<uint64_t>(key)) %
                          static_cast<uint64_t>(num_parts));
}

}  // namespace psd

#endif  // PSD_COMMON_PSD_EMBEDDING_KEYS_H_
