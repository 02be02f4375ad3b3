#include "shard/host_allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace psd {

void TuneHostAllocatorForDataPath() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

}  // namespace psd
