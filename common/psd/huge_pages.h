// Transparent huge pages for big host buffers (a variable's storage, a
// streamed value's staging buffer, a tensor read from a shard).
//
// A fresh buffer costs one page fault per 4 KiB page when it is first
// written: for a 1 GiB value that is 262144 faults, which cost more than
// moving the bytes over loopback. Asking the kernel for 2 MiB pages
// (madvise(MADV_HUGEPAGE), honoured when the system's THP mode is "always"
// or "madvise") cuts the faults 512-fold. Only whole 2 MiB pages inside the
// buffer are advised, so memory use does not grow.
//
// Thread-safety: thread-safe.
#ifndef PSD_COMMON_HUGE_PAGES_H_
#define PSD_COMMON_HUGE_PAGES_H_

#include <cstddef>

namespace psd {

// Buffers at least this big are worth advising.
inline constexpr size_t kHugePageAdviceBytes = size_t{4} << 20;

// Advises huge pages for the 2 MiB pages inside [data, data + bytes) if
// bytes >= kHugePageAdviceBytes. Call it before the buffer is first touched.
// Best effort: a kernel without THP leaves the buffer as it was.
void AdviseHugePages(void* data, size_t bytes);

// Takes that advice back for the same pages (MADV_NOHUGEPAGE): pages not yet
// touched are faulted in 4 KiB at a time. Best effort, as above.
void AdviseSmallPagesOnly(void* data, size_t bytes);

}  // namespace psd

#endif  // PSD_COMMON_HUGE_PAGES_H_
