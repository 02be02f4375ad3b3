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

bool PrefaultForWrite(void* data, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
  if (data == nullptr || bytes < kHugePageAdviceBytes) return false;
  // madvise needs a page-aligned start; the page holding `data` is the
  // buffer's own (or its allocator's header), already writable.
  constexpr uintptr_t kPage = 4096;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) & ~(kPage - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + bytes;
  return madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0;
#else
  (void)data;
  (void)bytes;
  return false;
#endif
}

void AdviseSmallPagesOnly(void* data, size_t bytes) {
#ifdef MADV_NOHUGEPAGE
  AdviseWholeHugePages(data, bytes, MADV_NOHUGEPAGE);
#endif
}

}  // namespace psd
