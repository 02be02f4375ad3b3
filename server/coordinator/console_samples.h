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

  // From the shards' own counters (ShardTraffic, with their heartbeats):
  // the data ops the cluster served in the interval. See
  // ShardTrafficSampler.
  int shards_reporting = 0;  // shards whose counters were heard
  // Ops in the interval (counts, so they add up over the window), and as
  // rates.
  double shard_reads = 0, shard_writes = 0, shard_failed = 0;
  double shard_reads_per_second = 0, shard_writes_per_second = 0, shard_failed_per_second = 0;
  double shard_received_bytes_per_second = 0, shard_sent_bytes_per_second = 0;
  // Op latency percentiles over every shard's ops (their histograms
  // merged), seconds; negative: no op of that kind in the interval.
  double read_p50 = -1, read_p99 = -1, write_p50 = -1, write_p99 = -1;
  // The mean time the fences the shards lifted in the interval held
  // writes, seconds; negative: none lifted.
  double shard_fence_pause = -1;
  struct ShardOps {
    int32_t id = 0;
    double reads = 0, writes = 0;  // in the interval
    double reads_per_second = 0, writes_per_second = 0;
    // How old the shard's counters were at the interval's end (a lagging
    // heartbeat shows here, not as a made-up zero).
    double age_seconds = 0;
  };
  // Per shard id (at most kConsoleMaxChartShards of them, the first ones).
  std::vector<ShardOps> shard_ops;
};

// Shards with a line in the memory chart (the first ones by id).
inline constexpr int kConsoleMaxChartShards = 8;

// The sample for the interval from `before` (at `t0`) to `now` (at `t1`,
// both seconds since the epoch). Counters that went down (a process that
// restarted would, not this one) count from zero.
ConsoleSample SampleBetween(const MetricsDigest& before, double t0, const MetricsDigest& now,
                            double t1);

// A shard's traffic counters (ShardTraffic) as the coordinator heard them.
struct ShardCounters {
  uint64_t incarnation = 0;
  double heard_unix_seconds = 0;    // when the heartbeat that carried them arrived
  double started_unix_seconds = 0;  // when they started counting (heard less uptime)
  double read_ops = 0, write_ops = 0, failed_ops = 0;
  double received_bytes = 0, sent_bytes = 0;
  double fences = 0, fenced_seconds = 0;
  // Cumulative counts at each bound of LatencyBuckets(), then +Inf; any
  // other length is taken as not reported.
  std::vector<double> read_latency, write_latency;
};

// What a shard's counters grew by between the previous look (`before`;
// null: there was none) and `now`, as counters of the same shape
// (incarnation and times are `now`'s). One incarnation: the difference.
// Another incarnation, or none seen before: the counters began at zero,
// so they all are growth if they started after the previous look at that
// shard (the old incarnation's last report; with none, `console_started`):
// a restarted shard's traffic is new. Counters that started before (a
// coordinator that restarted meets a shard that has counted for hours)
// are a baseline only: no growth, never a spike. Never negative.
ShardCounters ShardGrowth(const ShardCounters* before, const ShardCounters& now,
                          double console_started);

// Turns the shards' counters, looked at once per sample, into the shard
// figures of each ConsoleSample: the growth since the previous look,
// summed over the cluster, per second of the sample's interval, and
// percentiles of the merged histograms. Keeps each shard's last counters
// (one entry per registered shard).
//
// Thread-safety: not thread-safe; the console's sampler owns it.
class ShardTrafficSampler {
 public:
  // `started_unix_seconds`: when the console began looking.
  explicit ShardTrafficSampler(double started_unix_seconds) : started_(started_unix_seconds) {}

  // `shards`: (id, counters) of the registered shards whose counters were
  // heard, by id. Fills the shard fields of `sample`, whose interval is
  // `seconds` long (<= 0: counts only, no rates); forgets shards no longer
  // listed.
  void Add(const std::vector<std::pair<int32_t, ShardCounters>>& shards, double seconds,
           ConsoleSample* sample);

 private:
  const double started_;
  std::map<int32_t, ShardCounters> last_;
};

// The `q` quantile (0..1) of the observations between two cumulative
// bucket maps, interpolated linearly inside a bucket as Prometheus'
// histogram_quantile does; negative when there is none.
double BucketQuantile(const std::map<double, double>& before, const std::map<double, double>& now,
                      double q);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CONSOLE_SAMPLES_H_
