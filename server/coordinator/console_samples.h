// The console's chart data: what the coordinator's own /metrics say at one
// moment (MetricsDigest, read from the very text /metrics serves, so the
// charts and a Prometheus scrape agree), and the rates and percentiles
// between two such moments (ConsoleSample), which the console keeps in a
// SampleRing.
//
// The coordinator is not on the data path: its call rates, bytes and
// latencies are its own RPCs (declarations, lookups, sessions, saves;
// shards' heartbeats are left out of the rates and percentiles, they would
// drown the rest). Fence pauses are the checkpoint saves' (the coordinator
// fences every shard). Per-shard memory is what the shards last reported
// (the figures `psctl status` and /metrics show).
//
// Thread-safety: plain values and functions without state.
#ifndef PSD_SERVER_COORDINATOR_CONSOLE_SAMPLES_H_
#define PSD_SERVER_COORDINATOR_CONSOLE_SAMPLES_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace psd {

// One series of the Prometheus text format.
struct MetricSeries {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// The series of `text` (the Prometheus text format, version 0.0.4);
// comments, blank lines and lines it cannot read are skipped.
std::vector<MetricSeries> ParseMetricsText(absl::string_view text);

// The coordinator's counters at one moment.
struct MetricsDigest {
  double calls = 0;   // RPCs that ended, heartbeats left out
  double errors = 0;  // of them, with a status other than OK
  double received_bytes = 0;
  double sent_bytes = 0;
  // RPC latency buckets summed over methods (heartbeats left out): upper
  // bound -> cumulative count (+Inf as infinity).
  std::map<double, double> latency_buckets;
  double fence_pause_sum = 0;  // seconds, over every save
  double fence_pause_count = 0;
  // Per shard id, as last reported.
  std::map<int32_t, double> shard_memory_used;
};

MetricsDigest DigestMetrics(const std::vector<MetricSeries>& series);

// The console's figures for the interval between two digests.
struct ConsoleSample {
  double unix_seconds = 0;  // the end of the interval
  double calls_per_second = 0;
  double errors_per_second = 0;
  double received_bytes_per_second = 0;
  double sent_bytes_per_second = 0;
  // Latency percentiles in seconds; negative: no call in the interval.
  double p50 = -1, p90 = -1, p99 = -1;
  // The mean fence pause of the saves that ended in the interval, seconds;
  // negative: none ended.
  double fence_pause = -1;
  // Per shard id (at most kConsoleMaxChartShards of them).
  std::vector<std::pair<int32_t, double>> shard_memory_used;
};

// Shards with a line in the memory chart (the first ones by id).
inline constexpr int kConsoleMaxChartShards = 8;

// The sample for the interval from `before` (at `t0`) to `now` (at `t1`,
// both seconds since the epoch). Counters that went down (a process that
// restarted would, not this one) count from zero.
ConsoleSample SampleBetween(const MetricsDigest& before, double t0, const MetricsDigest& now,
                            double t1);

// The `q` quantile (0..1) of the observations between two cumulative
// bucket maps, interpolated linearly inside a bucket as Prometheus'
// histogram_quantile does; negative when there is none.
double BucketQuantile(const std::map<double, double>& before, const std::map<double, double>& now,
                      double q);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CONSOLE_SAMPLES_H_
