#include "psd/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>

namespace psd {

namespace {

// madvise over the whole 2 MiB pages inside [data, data + bytes), for
// buffers worth advising. Failure (no THP support) leaves the pages as the
// system's default makes them.
void AdviseWholeHugePages(void* data, size_t bytes, int advice) {
  if (data == nullptr || bytes < kHugePageAdviceBytes) return;
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end <= begin) return;
  madvise(reinterpret_cast<void*>(begin), end - begin, advice);
}

}  // namespace

void AdviseHugePages(void* data, size_t bytes) {
#ifdef MADV_HUGEPAGE
  AdviseWholeHugePages(data, bytes, MADV_HUGEPAGE);
#endif
}

void AdviseSmallPagesOnly(void* data, size_t bytes) {
#ifdef MADV_NOHUGEPAGE
  AdviseWholeHugePages(data, bytes, MADV_NOHUGEPAGE);
#endif
}

}  // namespace psd
