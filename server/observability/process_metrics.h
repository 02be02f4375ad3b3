// Process metrics every psd process exports: resident and virtual memory
// (from /proc/self/statm) and the start time, so a scrape shows a process's
// real memory use beside the byte budget a shard accounts for.
#ifndef PSD_SERVER_OBSERVABILITY_PROCESS_METRICS_H_
#define PSD_SERVER_OBSERVABILITY_PROCESS_METRICS_H_

#include <cstdint>

#include "observability/metrics.h"

namespace psd {

// Registers psd_process_resident_memory_bytes, psd_process_virtual_memory_bytes
// and psd_process_start_time_seconds in `registry`.
void AddProcessMetrics(MetricsRegistry* registry);

// Resident set size of this process in bytes; 0 where /proc is unreadable.
int64_t ResidentMemoryBytes();

}  // namespace psd

#endif  // PSD_SERVER_OBSERVABILITY_PROCESS_METRICS_H_
