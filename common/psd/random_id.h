// Random 64-bit identifiers: client ids of exactly-once request windows,
// shard incarnations, checkpoint fence and restore ids, initializer seeds
// the coordinator draws, temporary file names. Never 0, which the wire
// reserves for "none". Seeded from the operating system's entropy once per
// thread, so ids of two processes (or two restarts) collide only by chance
// (2^-64).
//
// Thread-safety: thread-safe.
#ifndef PSD_COMMON_RANDOM_ID_H_
#define PSD_COMMON_RANDOM_ID_H_

#include <cstdint>

namespace psd {

uint64_t RandomNonzeroId();

}  // namespace psd

#endif  // PSD_COMMON_RANDOM_ID_H_
