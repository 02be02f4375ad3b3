#include "shard/shard_traffic.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace psd {

namespace {

uint64_t Count(double v) { return v > 0 ? static_cast<uint64_t>(std::llround(v)) : 0; }

}  // namespace

ShardOpKind KindOfShardMethod(absl::string_view method) {
  if (method == "psd.Shard/Read" || method == "psd.Shard/Gather" ||
      method == "psd.Shard/ReadStream") {
    return ShardOpKind::kRead;
  }
  if (method == "psd.Shard/Assign" || method == "psd.Shard/Scatter" ||
      method == "psd.Shard/CountUpTo" || method == "psd.Shard/AssignStream" ||
      method == "psd.Shard/ApplyDense" || method == "psd.Shard/ApplySparse") {
    return ShardOpKind::kWrite;
  }
  return ShardOpKind::kOther;
}

ShardTraffic ReadShardTraffic(const RpcMetrics* rpc, const WriteGate::FenceTotals& fences) {
  ShardTraffic t;
  t.set_fences(static_cast<uint64_t>(std::max<int64_t>(fences.fences, 0)));
  t.set_fenced_seconds(absl::ToDoubleSeconds(fences.fenced));
  if (rpc == nullptr) return t;
  t.set_uptime_seconds(rpc->seconds_counting());
  const std::vector<RpcMetrics::Totals> totals = rpc->TotalsByGroup(
      3, [](const std::string& method) { return static_cast<int>(KindOfShardMethod(method)); });
  const RpcMetrics::Totals& reads = totals[static_cast<int>(ShardOpKind::kRead)];
  const RpcMetrics::Totals& writes = totals[static_cast<int>(ShardOpKind::kWrite)];
  const RpcMetrics::Totals& other = totals[static_cast<int>(ShardOpKind::kOther)];
  t.set_read_ops(Count(reads.calls));
  t.set_write_ops(Count(writes.calls));
  t.set_failed_ops(Count(reads.failed + writes.failed));
  t.set_other_calls(Count(other.calls));
  t.set_received_bytes(Count(rpc->received_bytes()));
  t.set_sent_bytes(Count(rpc->sent_bytes()));
  for (uint64_t c : reads.latency_buckets) t.add_read_latency_buckets(c);
  for (uint64_t c : writes.latency_buckets) t.add_write_latency_buckets(c);
  return t;
}

}  // namespace psd
