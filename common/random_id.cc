#include "psd/random_id.h"

#include <random>

namespace psd {

uint64_t RandomNonzeroId() {
  // A generator per thread: no lock on the hot path of request ids, and
  // each seeded from std::random_device (the kernel's entropy).
  thread_local std::mt19937_64 gen{(static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                   std::random_device{}()};
  uint64_t id = 0;
  while (id == 0) id = gen();
  return id;
}

}  // namespace psd
