#include "observability/process_metrics.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

namespace psd {

namespace {

// Pages from /proc/self/statm: {virtual size, resident}; zeros when unreadable.
std::pair<int64_t, int64_t> StatmPages() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return {0, 0};
  long long size = 0, resident = 0;
  if (std::fscanf(f, "%lld %lld", &size, &resident) != 2) size = resident = 0;
  std::fclose(f);
  return {size, resident};
}

}  // namespace

int64_t ResidentMemoryBytes() { return StatmPages().second * sysconf(_SC_PAGESIZE); }

void AddProcessMetrics(MetricsRegistry* registry) {
  const double start = std::chrono::duration<double>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  registry->CallbackGauge("psd_process_resident_memory_bytes", "Resident memory of this process",
                          [] { return static_cast<double>(ResidentMemoryBytes()); });
  registry->CallbackGauge("psd_process_virtual_memory_bytes", "Virtual memory of this process",
                          [] {
                            return static_cast<double>(StatmPages().first *
                                                       sysconf(_SC_PAGESIZE));
                          });
  registry->CallbackGauge("psd_process_start_time_seconds",
                          "Start of this process, seconds since the epoch",
                          [start] { return start; });
}

}  // namespace psd
