// Prefetch hints for the CPU kernels that touch rows scattered over large
// buffers (scatter, gather, sparse optimizer applies, embedding tables). A random row of a big
// variable is a cache miss, often a TLB miss too, and a loop that waits for
// each row in turn keeps one miss in flight; asking for the rows some
// positions ahead keeps several. A prefetch is a hint: it neither faults
// nor changes memory, so any address may be asked for.
#ifndef PSD_SERVER_DEVICE_PREFETCH_H_
#define PSD_SERVER_DEVICE_PREFETCH_H_

#include <algorithm>
#include <cstddef>

namespace psd {
namespace device_internal {

// Asks for one cache line. Not __builtin_prefetch: GCC (12) deletes a loop
// whose only statements are prefetches as a loop without side effects, and
// with it every prefetch of a row.
inline void PrefetchLine(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));  // SSE: every x86-64
#else
  __builtin_prefetch(p);
#endif
}

// Asks for the start of a row of `row_bytes` (at most 1 KiB of it: the
// hardware's own prefetcher follows a longer row once it is read in order,
// and more would push a batch's earlier rows out of the cache before they
// are used).
inline void PrefetchRow(const void* row, size_t row_bytes) {
  const char* p = static_cast<const char*>(row);
  const size_t bytes = std::min<size_t>(row_bytes, 1024);
  for (size_t b = 0; b < bytes; b += 64) PrefetchLine(p + b);
}

}  // namespace device_internal
}  // namespace psd

#endif  // PSD_SERVER_DEVICE_PREFETCH_H_
