// Random seeds of initializers, as TensorFlow's tf.set_random_seed rules
// them: a variable's values are keyed by one 64-bit seed (Philox, see
// server/device/initializers.h), which comes from
//  - the initializer's own (op) seed when only it is set;
//  - MixSeeds(graph seed, op seed) when the session has a graph seed
//    (Session::SetRandomSeed); an initializer without a seed then takes the
//    session's declaration count as its op seed, so a program run twice
//    gets the same values, as TensorFlow derives it from the op's id;
//  - neither: the coordinator draws one when it creates the variable and
//    records it, so every trainer, restart and restore agree.
// Seed 0 means "not set" on the wire.
//
// Thread-safety: stateless functions.
#ifndef PSD_COMMON_PSD_SEEDS_H_
#define PSD_COMMON_PSD_SEEDS_H_

#include <cstdint>

#include "psd/types.pb.h"

namespace psd {

// True for the initializers whose values come from the seeded random
// stream (the default one included: unit scaling for floating dtypes).
inline bool DrawsRandomValues(const InitializerSpec& spec) {
  return spec.has_random_uniform() || spec.has_random_normal() || spec.has_truncated_normal() ||
         spec.has_uniform_unit_scaling() || spec.has_default_initializer();
}

// The seed of (graph seed, op seed): a fixed mix of both (SplitMix64's
// finalizer over each in turn), positive and nonzero, so distinct pairs
// give unrelated streams.
inline int64_t MixSeeds(int64_t graph_seed, int64_t op_seed) {
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  const uint64_t mixed =
      mix(mix(static_cast<uint64_t>(graph_seed) + 0x9e3779b97f4a7c15ULL) ^
          static_cast<uint64_t>(op_seed)) >>
      1;
  return mixed != 0 ? static_cast<int64_t>(mixed) : 1;
}

}  // namespace psd

#endif  // PSD_COMMON_PSD_SEEDS_H_
