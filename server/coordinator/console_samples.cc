#include "coordinator/console_samples.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "observability/metrics.h"

namespace psd {

namespace {

// Reads `name{k="v",...}` from the front of `line`; false if it is not that.
bool ParseSeriesName(absl::string_view* line, MetricSeries* out) {
  size_t i = 0;
  while (i < line->size() && (*line)[i] != '{' && (*line)[i] != ' ') ++i;
  if (i == 0) return false;
  out->name = std::string(line->substr(0, i));
  if (i < line->size() && (*line)[i] == '{') {
    ++i;
    while (i < line->size() && (*line)[i] != '}') {
      const size_t eq = line->find('=', i);
      if (eq == absl::string_view::npos || eq + 1 >= line->size() || (*line)[eq + 1] != '"') {
        return false;
      }
      std::string key(line->substr(i, eq - i));
      std::string value;
      size_t j = eq + 2;
      for (; j < line->size() && (*line)[j] != '"'; ++j) {
        char c = (*line)[j];
        if (c == '\\' && j + 1 < line->size()) {
          c = (*line)[++j];
          if (c == 'n') c = '\n';
        }
        value.push_back(c);
      }
      if (j >= line->size()) return false;
      out->labels[std::move(key)] = std::move(value);
      i = j + 1;
      if (i < line->size() && (*line)[i] == ',') ++i;
    }
    if (i >= line->size()) return false;
    ++i;  // '}'
  }
  line->remove_prefix(i);
  return true;
}

bool ParseValue(absl::string_view text, double* value) {
  if (text == "+Inf") {
    *value = std::numeric_limits<double>::infinity();
    return true;
  }
  if (text == "-Inf") {
    *value = -std::numeric_limits<double>::infinity();
    return true;
  }
  return absl::SimpleAtod(text, value);
}

bool IsHeartbeat(const MetricSeries& s) {
  auto it = s.labels.find("method");
  return it != s.labels.end() && it->second == "psd.Coordinator/Heartbeat";
}

// What a counter grew by; one that went down restarted from zero.
double Delta(double before, double now) { return now >= before ? now - before : now; }

}  // namespace

std::vector<MetricSeries> ParseMetricsText(absl::string_view text) {
  std::vector<MetricSeries> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line.front() == '#') continue;
    MetricSeries series;
    if (!ParseSeriesName(&line, &series)) continue;
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    // A timestamp may follow the value.
    const size_t space = line.find(' ');
    if (!ParseValue(line.substr(0, space), &series.value)) continue;
    out.push_back(std::move(series));
  }
  return out;
}

MetricsDigest DigestMetrics(const std::vector<MetricSeries>& series) {
  MetricsDigest d;
  for (const MetricSeries& s : series) {
    if (s.name == "psd_rpc_total") {
      if (IsHeartbeat(s)) continue;
      d.calls += s.value;
      auto code = s.labels.find("code");
      if (code != s.labels.end() && code->second != "OK") d.errors += s.value;
    } else if (s.name == "psd_rpc_received_bytes_total") {
      d.received_bytes += s.value;
    } else if (s.name == "psd_rpc_sent_bytes_total") {
      d.sent_bytes += s.value;
    } else if (s.name == "psd_rpc_duration_seconds_bucket") {
      if (IsHeartbeat(s)) continue;
      auto le = s.labels.find("le");
      double bound;
      if (le == s.labels.end() || !ParseValue(le->second, &bound)) continue;
      d.latency_buckets[bound] += s.value;
    } else if (s.name == "psd_checkpoint_fence_pause_seconds_sum") {
      d.fence_pause_sum += s.value;
    } else if (s.name == "psd_checkpoint_fence_pause_seconds_count") {
      d.fence_pause_count += s.value;
    } else if (s.name == "psd_coordinator_shard_memory_used_bytes") {
      auto shard = s.labels.find("shard");
      int32_t id;
      if (shard != s.labels.end() && absl::SimpleAtoi(shard->second, &id)) {
        d.shard_memory_used[id] = s.value;
      }
    }
  }
  return d;
}

double BucketQuantile(const std::map<double, double>& before, const std::map<double, double>& now,
                      double q) {
  // The interval's cumulative counts per bound.
  std::vector<std::pair<double, double>> buckets;
  buckets.reserve(now.size());
  for (const auto& [bound, count] : now) {
    auto it = before.find(bound);
    buckets.emplace_back(bound, Delta(it == before.end() ? 0 : it->second, count));
  }
  if (buckets.empty()) return -1;
  const double total = buckets.back().second;
  if (!(total > 0)) return -1;
  const double rank = std::clamp(q, 0.0, 1.0) * total;
  double lower_bound = 0, lower_count = 0;
  for (const auto& [bound, count] : buckets) {
    if (count >= rank && count > lower_count) {
      // In the +Inf bucket: the highest finite bound is all one can say.
      if (std::isinf(bound)) return lower_bound;
      return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count);
    }
    lower_bound = std::isinf(bound) ? lower_bound : bound;
    lower_count = count;
  }
  return lower_bound;
}

namespace {

// Cumulative bucket counts at LatencyBuckets()'s bounds (+Inf last) as a
// bound -> count map; empty if `counts` has another length.
std::map<double, double> BucketMap(const std::vector<double>& counts) {
  static const std::vector<double>* const bounds = [] {
    auto* b = new std::vector<double>(LatencyBuckets());
    b->push_back(std::numeric_limits<double>::infinity());
    return b;
  }();
  std::map<double, double> out;
  if (counts.size() != bounds->size()) return out;
  for (size_t i = 0; i < counts.size(); ++i) out[(*bounds)[i]] = counts[i];
  return out;
}

// `now` less `before`, bucket by bucket; a histogram of another length
// than the other is not reported (empty).
std::vector<double> BucketDelta(const std::vector<double>& before, const std::vector<double>& now) {
  if (before.size() != now.size()) return {};
  std::vector<double> out(now.size());
  for (size_t i = 0; i < now.size(); ++i) out[i] = std::max(0.0, now[i] - before[i]);
  return out;
}

void AddBuckets(const std::vector<double>& add, std::vector<double>* sum) {
  if (add.empty()) return;
  if (sum->empty()) sum->assign(add.size(), 0);
  if (sum->size() != add.size()) return;
  for (size_t i = 0; i < add.size(); ++i) (*sum)[i] += add[i];
}

}  // namespace

ShardCounters ShardGrowth(const ShardCounters* before, const ShardCounters& now,
                          double console_started) {
  if (before != nullptr && before->incarnation == now.incarnation) {
    ShardCounters g = now;
    // One process's counters only grow; were one lower (it cannot be), it
    // would add nothing rather than go negative.
    const auto grew = [](double b, double n) { return std::max(0.0, n - b); };
    g.read_ops = grew(before->read_ops, now.read_ops);
    g.write_ops = grew(before->write_ops, now.write_ops);
    g.failed_ops = grew(before->failed_ops, now.failed_ops);
    g.received_bytes = grew(before->received_bytes, now.received_bytes);
    g.sent_bytes = grew(before->sent_bytes, now.sent_bytes);
    g.fences = grew(before->fences, now.fences);
    g.fenced_seconds = grew(before->fenced_seconds, now.fenced_seconds);
    // A first report without histograms, then one with: from zero.
    g.read_latency = before->read_latency.empty()
                         ? now.read_latency
                         : BucketDelta(before->read_latency, now.read_latency);
    g.write_latency = before->write_latency.empty()
                          ? now.write_latency
                          : BucketDelta(before->write_latency, now.write_latency);
    return g;
  }
  const double since = before != nullptr ? before->heard_unix_seconds : console_started;
  if (now.started_unix_seconds >= since) return now;  // all of it is new
  ShardCounters none;
  none.incarnation = now.incarnation;
  none.heard_unix_seconds = now.heard_unix_seconds;
  none.started_unix_seconds = now.started_unix_seconds;
  return none;
}

void ShardTrafficSampler::Add(const std::vector<std::pair<int32_t, ShardCounters>>& shards,
                              double seconds, ConsoleSample* sample) {
  std::map<int32_t, ShardCounters> seen;
  std::vector<double> read_buckets, write_buckets;
  double fences = 0, fenced = 0, received = 0, sent = 0;
  const auto per_second = [seconds](double v) { return seconds > 0 ? v / seconds : 0.0; };
  for (const auto& [id, now] : shards) {
    auto last = last_.find(id);
    const ShardCounters g =
        ShardGrowth(last == last_.end() ? nullptr : &last->second, now, started_);
    seen[id] = now;
    ++sample->shards_reporting;
    sample->shard_reads += g.read_ops;
    sample->shard_writes += g.write_ops;
    sample->shard_failed += g.failed_ops;
    received += g.received_bytes;
    sent += g.sent_bytes;
    fences += g.fences;
    fenced += g.fenced_seconds;
    AddBuckets(g.read_latency, &read_buckets);
    AddBuckets(g.write_latency, &write_buckets);
    if (static_cast<int>(sample->shard_ops.size()) < kConsoleMaxChartShards) {
      ConsoleSample::ShardOps& ops = sample->shard_ops.emplace_back();
      ops.id = id;
      ops.reads = g.read_ops;
      ops.writes = g.write_ops;
      ops.reads_per_second = per_second(g.read_ops);
      ops.writes_per_second = per_second(g.write_ops);
      ops.age_seconds = std::max(0.0, sample->unix_seconds - now.heard_unix_seconds);
    }
  }
  last_ = std::move(seen);
  sample->shard_reads_per_second = per_second(sample->shard_reads);
  sample->shard_writes_per_second = per_second(sample->shard_writes);
  sample->shard_failed_per_second = per_second(sample->shard_failed);
  sample->shard_received_bytes_per_second = per_second(received);
  sample->shard_sent_bytes_per_second = per_second(sent);
  const std::map<double, double> reads = BucketMap(read_buckets);
  const std::map<double, double> writes = BucketMap(write_buckets);
  sample->read_p50 = BucketQuantile({}, reads, 0.5);
  sample->read_p99 = BucketQuantile({}, reads, 0.99);
  sample->write_p50 = BucketQuantile({}, writes, 0.5);
  sample->write_p99 = BucketQuantile({}, writes, 0.99);
  if (fences > 0) sample->shard_fence_pause = fenced / fences;
}

ConsoleSample SampleBetween(const MetricsDigest& before, double t0, const MetricsDigest& now,
                            double t1) {
  ConsoleSample s;
  s.unix_seconds = t1;
  const double seconds = t1 - t0;
  if (seconds > 0) {
    s.calls_per_second = Delta(before.calls, now.calls) / seconds;
    s.errors_per_second = Delta(before.errors, now.errors) / seconds;
    s.received_bytes_per_second = Delta(before.received_bytes, now.received_bytes) / seconds;
    s.sent_bytes_per_second = Delta(before.sent_bytes, now.sent_bytes) / seconds;
  }
  s.p50 = BucketQuantile(before.latency_buckets, now.latency_buckets, 0.5);
  s.p90 = BucketQuantile(before.latency_buckets, now.latency_buckets, 0.9);
  s.p99 = BucketQuantile(before.latency_buckets, now.latency_buckets, 0.99);
  const double fences = Delta(before.fence_pause_count, now.fence_pause_count);
  if (fences > 0) s.fence_pause = Delta(before.fence_pause_sum, now.fence_pause_sum) / fences;
  for (const auto& [id, used] : now.shard_memory_used) {
    if (static_cast<int>(s.shard_memory_used.size()) >= kConsoleMaxChartShards) break;
    s.shard_memory_used.emplace_back(id, used);
  }
  return s;
}

}  // namespace psd
