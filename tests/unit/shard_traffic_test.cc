// A shard's heartbeat traffic report (ShardTraffic) against its own
// /metrics: the same counters, summed by kind of op, so the console's
// charts and a Prometheus scrape of the shard agree.
#include "shard/shard_traffic.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "coordinator/console_samples.h"
#include "gtest/gtest.h"
#include "observability/metrics.h"
#include "observability/rpc_metrics.h"

namespace psd {
namespace {

TEST(ShardTrafficTest, MethodsCountAsReadsWritesOrOther) {
  for (const char* m : {"psd.Shard/Read", "psd.Shard/Gather", "psd.Shard/ReadStream"}) {
    EXPECT_EQ(KindOfShardMethod(m), ShardOpKind::kRead) << m;
  }
  for (const char* m :
       {"psd.Shard/Assign", "psd.Shard/Scatter", "psd.Shard/CountUpTo", "psd.Shard/AssignStream",
        "psd.Shard/ApplyDense", "psd.Shard/ApplySparse"}) {
    EXPECT_EQ(KindOfShardMethod(m), ShardOpKind::kWrite) << m;
  }
  for (const char* m : {"psd.Shard/Batch", "psd.Shard/Fence", "psd.Shard/ListVariables",
                        "psd.ShardMove/PullMove", "grpc.health.v1.Health/Check", "other"}) {
    EXPECT_EQ(KindOfShardMethod(m), ShardOpKind::kOther) << m;
  }
}

TEST(ShardTrafficTest, AgreesWithTheMetricsText) {
  MetricsRegistry registry;
  RpcMetrics rpc(&registry);
  for (int i = 0; i < 7; ++i) rpc.RecordOp("psd.Shard/Read", 0, 0.0002);
  for (int i = 0; i < 5; ++i) rpc.RecordOp("psd.Shard/Gather", 0, 0.003);
  rpc.RecordOp("psd.Shard/Gather", 5 /* NOT_FOUND */, 0.00001);
  for (int i = 0; i < 4; ++i) rpc.RecordOp("psd.Shard/ApplySparse", 0, 0.02);
  rpc.RecordOp("psd.Shard/Assign", 9 /* FAILED_PRECONDITION */, 0.0004);
  rpc.RecordOp("psd.Shard/Fence", 0, 0.1);
  rpc.RecordOp("psd.Shard/Batch", 0, 100);
  WriteGate::FenceTotals fences;
  fences.fences = 3;
  fences.fenced = absl::Milliseconds(12);
  const ShardTraffic t = ReadShardTraffic(&rpc, fences);

  EXPECT_EQ(t.read_ops(), 13u);
  EXPECT_EQ(t.write_ops(), 5u);
  EXPECT_EQ(t.failed_ops(), 2u);
  EXPECT_EQ(t.other_calls(), 2u);
  EXPECT_EQ(t.fences(), 3u);
  EXPECT_DOUBLE_EQ(t.fenced_seconds(), 0.012);
  EXPECT_GE(t.uptime_seconds(), 0);
  ASSERT_EQ(t.read_latency_buckets_size(), static_cast<int>(LatencyBuckets().size()) + 1);
  ASSERT_EQ(t.write_latency_buckets_size(), t.read_latency_buckets_size());

  // The same figures from what /metrics serves.
  double reads = 0, writes = 0, received = -1, sent = -1;
  std::vector<double> read_buckets(LatencyBuckets().size() + 1, 0);
  const std::vector<double> bounds = LatencyBuckets();
  for (const MetricSeries& s : ParseMetricsText(registry.Render())) {
    const auto method = s.labels.find("method");
    const ShardOpKind kind =
        method == s.labels.end() ? ShardOpKind::kOther : KindOfShardMethod(method->second);
    if (s.name == "psd_rpc_total") {
      if (kind == ShardOpKind::kRead) reads += s.value;
      if (kind == ShardOpKind::kWrite) writes += s.value;
    } else if (s.name == "psd_rpc_duration_seconds_bucket" && kind == ShardOpKind::kRead) {
      const std::string& le = s.labels.at("le");
      size_t i = bounds.size();
      for (size_t b = 0; b < bounds.size(); ++b) {
        if (std::stod(le) == bounds[b]) i = b;
      }
      if (le == "+Inf") i = bounds.size();
      read_buckets[i] += s.value;
    } else if (s.name == "psd_rpc_received_bytes_total") {
      received = s.value;
    } else if (s.name == "psd_rpc_sent_bytes_total") {
      sent = s.value;
    }
  }
  EXPECT_EQ(reads, static_cast<double>(t.read_ops()));
  EXPECT_EQ(writes, static_cast<double>(t.write_ops()));
  EXPECT_EQ(received, static_cast<double>(t.received_bytes()));
  EXPECT_EQ(sent, static_cast<double>(t.sent_bytes()));
  for (size_t i = 0; i < read_buckets.size(); ++i) {
    EXPECT_EQ(read_buckets[i], static_cast<double>(t.read_latency_buckets(i))) << "bucket " << i;
  }
  // 7 reads under 250 us, the failed gather under 50 us, 5 gathers under 5 ms.
  EXPECT_EQ(t.read_latency_buckets(0), 1u);
  EXPECT_EQ(t.read_latency_buckets(2), 8u);
  EXPECT_EQ(t.read_latency_buckets(6), 13u);
}

// The heartbeat's report has a fixed shape: however many methods a shard
// served and however large its counters, it stays a few hundred bytes.
TEST(ShardTrafficTest, TheReportIsSmallWhateverTheCounters) {
  MetricsRegistry registry;
  RpcMetrics rpc(&registry);
  for (int m = 0; m < 300; ++m) rpc.RecordOp(absl::StrCat("psd.Shard/Made", m), 0, 0.001);
  rpc.RecordOp("psd.Shard/Read", 0, 0.001);
  ShardTraffic t = ReadShardTraffic(&rpc, WriteGate::FenceTotals());
  const size_t typical = t.ByteSizeLong();
  // Every counter at its largest.
  const uint64_t max = ~uint64_t{0};
  t.set_read_ops(max);
  t.set_write_ops(max);
  t.set_failed_ops(max);
  t.set_other_calls(max);
  t.set_received_bytes(max);
  t.set_sent_bytes(max);
  t.set_fences(max);
  t.set_fenced_seconds(1e18);
  t.set_uptime_seconds(1e9);
  for (int i = 0; i < t.read_latency_buckets_size(); ++i) t.set_read_latency_buckets(i, max);
  for (int i = 0; i < t.write_latency_buckets_size(); ++i) t.set_write_latency_buckets(i, max);
  std::printf("ShardTraffic: %zu bytes typical, %zu at most\n", typical, t.ByteSizeLong());
  EXPECT_LT(typical, 128u);
  EXPECT_LT(t.ByteSizeLong(), 600u);
}

TEST(ShardTrafficTest, WithoutRpcCountersOnlyTheFencesAreReported) {
  WriteGate::FenceTotals fences;
  fences.fences = 1;
  const ShardTraffic t = ReadShardTraffic(nullptr, fences);
  EXPECT_EQ(t.fences(), 1u);
  EXPECT_EQ(t.read_ops(), 0u);
  EXPECT_EQ(t.read_latency_buckets_size(), 0);
}

}  // namespace
}  // namespace psd
