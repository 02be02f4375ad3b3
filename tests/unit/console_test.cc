// The coordinator console's parts in-process: the sample ring, the chart
// samples read from /metrics text (rates, latency percentiles, fence
// pauses), the rendering (escaping of names taken from the cluster, caps,
// charts) and the routes' authorization with a token file.
#include "coordinator/console.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/console_page.h"
#include "coordinator/console_samples.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/registry.h"
#include "coordinator/sample_ring.h"
#include "gtest/gtest.h"
#include "observability/metrics.h"

namespace psd {
namespace {

int Count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

TEST(SampleRingTest, KeepsTheLastCapacitySamplesOldestFirst) {
  SampleRing<int> ring(3);
  EXPECT_TRUE(ring.Snapshot().empty());
  ring.Push(1);
  ring.Push(2);
  EXPECT_EQ(ring.Snapshot(), (std::vector<int>{1, 2}));
  for (int i = 3; i <= 7; ++i) ring.Push(i);
  EXPECT_EQ(ring.Snapshot(), (std::vector<int>{5, 6, 7}));
  EXPECT_EQ(ring.size(), 3u);
  EXPECT_EQ(ring.pushed(), 7u);
  EXPECT_EQ(ring.capacity(), 3u);
}

TEST(SampleRingTest, MemoryIsBoundedByTheCapacityHoweverManyArePushed) {
  SampleRing<std::vector<char>> ring(kConsoleSampleCapacity);
  for (int i = 0; i < 10 * kConsoleSampleCapacity; ++i) ring.Push(std::vector<char>(16, 'x'));
  EXPECT_EQ(ring.Snapshot().size(), static_cast<size_t>(kConsoleSampleCapacity));
  // 15 minutes of samples at the console's interval.
  EXPECT_EQ(kConsoleSampleCapacity * kConsoleSampleIntervalSeconds, 900);
}

TEST(SampleRingTest, ConcurrentPushAndSnapshotSeeWholeSamples) {
  SampleRing<std::pair<int, int>> ring(8);
  std::thread writer([&] {
    for (int i = 0; i < 20000; ++i) ring.Push({i, -i});
  });
  for (int i = 0; i < 2000; ++i) {
    for (const auto& [a, b] : ring.Snapshot()) ASSERT_EQ(a, -b);
  }
  writer.join();
  EXPECT_EQ(ring.Snapshot().back().first, 19999);
}

TEST(ConsoleSamplesTest, ParsesLabelsEscapesAndInfinity) {
  const auto series = ParseMetricsText(
      "# HELP x help\n# TYPE x counter\n"
      "psd_rpc_total{method=\"psd.Coordinator/Save\",code=\"OK\"} 3\n"
      "weird{a=\"q\\\"uote\\\\\",b=\"x\"} 1.5\n"
      "h_bucket{le=\"+Inf\"} 7\n"
      "plain 42\n"
      "garbage line without value\n");
  ASSERT_EQ(series.size(), 4u);
  EXPECT_EQ(series[0].name, "psd_rpc_total");
  EXPECT_EQ(series[0].labels.at("method"), "psd.Coordinator/Save");
  EXPECT_EQ(series[0].value, 3);
  EXPECT_EQ(series[1].labels.at("a"), "q\"uote\\");
  EXPECT_EQ(series[1].labels.at("b"), "x");
  EXPECT_EQ(series[2].labels.at("le"), "+Inf");
  EXPECT_EQ(series[3].name, "plain");
  EXPECT_EQ(series[3].value, 42);
}

// A coordinator's /metrics text with `calls` declarations (latencies
// spread over buckets), `heartbeats` heartbeats, and fences.
std::string MetricsText(int calls, int errors, int heartbeats, double fence_sum, int fences,
                        double memory) {
  return absl::StrCat(
      "psd_rpc_total{method=\"psd.Coordinator/DeclareVariables\",code=\"OK\"} ", calls - errors,
      "\n", "psd_rpc_total{method=\"psd.Coordinator/DeclareVariables\",code=\"INVALID_ARGUMENT\"} ",
      errors, "\n", "psd_rpc_total{method=\"psd.Coordinator/Heartbeat\",code=\"OK\"} ", heartbeats,
      "\n", "psd_rpc_received_bytes_total ", calls * 100, "\n", "psd_rpc_sent_bytes_total ",
      calls * 1000, "\n",
      // Half the calls under 1 ms, all under 10 ms.
      "psd_rpc_duration_seconds_bucket{method=\"psd.Coordinator/DeclareVariables\",le=\"0.001\"} ",
      calls / 2, "\n",
      "psd_rpc_duration_seconds_bucket{method=\"psd.Coordinator/DeclareVariables\",le=\"0.01\"} ",
      calls, "\n",
      "psd_rpc_duration_seconds_bucket{method=\"psd.Coordinator/DeclareVariables\",le=\"+Inf\"} ",
      calls, "\n",
      // Heartbeats all slow: they must not move the percentiles.
      "psd_rpc_duration_seconds_bucket{method=\"psd.Coordinator/Heartbeat\",le=\"0.001\"} 0\n",
      "psd_rpc_duration_seconds_bucket{method=\"psd.Coordinator/Heartbeat\",le=\"0.01\"} 0\n",
      "psd_rpc_duration_seconds_bucket{method=\"psd.Coordinator/Heartbeat\",le=\"+Inf\"} ",
      heartbeats, "\n", "psd_checkpoint_fence_pause_seconds_sum ", fence_sum, "\n",
      "psd_checkpoint_fence_pause_seconds_count ", fences, "\n",
      "psd_coordinator_shard_memory_used_bytes{shard=\"0\"} ", memory, "\n",
      "psd_coordinator_shard_memory_used_bytes{shard=\"1\"} ", 2 * memory, "\n");
}

TEST(ConsoleSamplesTest, RatesPercentilesAndFencePausesBetweenTwoScrapes) {
  const MetricsDigest before = DigestMetrics(ParseMetricsText(MetricsText(10, 0, 50, 0.5, 1, 1e6)));
  const MetricsDigest after =
      DigestMetrics(ParseMetricsText(MetricsText(60, 10, 500, 0.5 + 0.004 + 0.006, 3, 3e6)));
  const ConsoleSample s = SampleBetween(before, 1000, after, 1005);
  EXPECT_EQ(s.unix_seconds, 1005);
  // 50 calls in 5 s, heartbeats left out.
  EXPECT_DOUBLE_EQ(s.calls_per_second, 10);
  EXPECT_DOUBLE_EQ(s.errors_per_second, 2);
  EXPECT_DOUBLE_EQ(s.received_bytes_per_second, 1000);
  EXPECT_DOUBLE_EQ(s.sent_bytes_per_second, 10000);
  // 25 of the 50 new calls under 1 ms: the median is 1 ms; p90 lies in
  // (1 ms, 10 ms], interpolated.
  EXPECT_NEAR(s.p50, 0.001, 1e-9);
  EXPECT_NEAR(s.p90, 0.001 + 0.009 * (45.0 - 25) / 25, 1e-9);
  EXPECT_LE(s.p99, 0.01);
  // Two fences ended: 4 ms and 6 ms, mean 5 ms.
  EXPECT_NEAR(s.fence_pause, 0.005, 1e-12);
  ASSERT_EQ(s.shard_memory_used.size(), 2u);
  EXPECT_EQ(s.shard_memory_used[1], (std::pair<int32_t, double>{1, 6e6}));
}

TEST(ConsoleSamplesTest, AnIdleIntervalHasNoPercentilesNorFencePause) {
  const MetricsDigest d = DigestMetrics(ParseMetricsText(MetricsText(10, 0, 50, 0.5, 1, 1e6)));
  const ConsoleSample s = SampleBetween(d, 1000, d, 1005);
  EXPECT_EQ(s.calls_per_second, 0);
  EXPECT_LT(s.p50, 0);
  EXPECT_LT(s.p99, 0);
  EXPECT_LT(s.fence_pause, 0);
}

TEST(ConsoleSamplesTest, QuantileInTheInfBucketIsTheHighestFiniteBound) {
  const std::map<double, double> before;
  const std::map<double, double> now = {{0.1, 0}, {1, 1}, {INFINITY, 10}};
  EXPECT_DOUBLE_EQ(BucketQuantile(before, now, 0.99), 1);
  EXPECT_LT(BucketQuantile(before, {}, 0.5), 0);
}

// A shard's counters as heard at `heard` (started `uptime` s before):
// `reads` reads, half under 1 ms, the rest under 10 ms; `writes` writes,
// all under 250 us; `fences` fences that held writes 2 ms each.
ShardCounters Counters(uint64_t incarnation, double heard, double uptime, double reads,
                       double writes, double fences = 0) {
  ShardCounters c;
  c.incarnation = incarnation;
  c.heard_unix_seconds = heard;
  c.started_unix_seconds = heard - uptime;
  c.read_ops = reads;
  c.write_ops = writes;
  c.received_bytes = 100 * (reads + writes);
  c.sent_bytes = 1000 * reads;
  c.fences = fences;
  c.fenced_seconds = 0.002 * fences;
  // LatencyBuckets(): 50us 100us 250us 500us 1ms 2.5ms 5ms 10ms ... 10s, +Inf.
  const std::vector<double> bounds = LatencyBuckets();
  for (double bound : bounds) {
    c.read_latency.push_back(bound < 0.001 - 1e-12 ? 0 : bound < 0.01 - 1e-12 ? reads / 2 : reads);
    c.write_latency.push_back(bound < 0.00025 - 1e-12 ? 0 : writes);
  }
  c.read_latency.push_back(reads);
  c.write_latency.push_back(writes);
  return c;
}

TEST(ShardTrafficSamplesTest, OneIncarnationGrowsByTheDifference) {
  const ShardCounters a = Counters(7, 1000, 100, 100, 10, 1);
  const ShardCounters b = Counters(7, 1005, 105, 300, 40, 3);
  const ShardCounters g = ShardGrowth(&a, b, 0);
  EXPECT_EQ(g.read_ops, 200);
  EXPECT_EQ(g.write_ops, 30);
  EXPECT_EQ(g.received_bytes, 100 * 230);
  EXPECT_EQ(g.fences, 2);
  EXPECT_NEAR(g.fenced_seconds, 0.004, 1e-12);
  ASSERT_EQ(g.read_latency.size(), LatencyBuckets().size() + 1);
  EXPECT_EQ(g.read_latency.back(), 200);
  // No new heartbeat since the last look (it lags): no growth, not a dip
  // below zero.
  const ShardCounters same = ShardGrowth(&b, b, 0);
  EXPECT_EQ(same.read_ops, 0);
  EXPECT_EQ(same.write_ops, 0);
  EXPECT_EQ(same.read_latency.back(), 0);
}

TEST(ShardTrafficSamplesTest, ARestartedShardCountsFromZeroNeverNegative) {
  // Heard at 1000 with 1e6 reads; restarted at 1002, heard at 1005 with 30.
  const ShardCounters old = Counters(7, 1000, 5000, 1e6, 1e5);
  const ShardCounters fresh = Counters(8, 1005, 3, 30, 20);
  const ShardCounters g = ShardGrowth(&old, fresh, 0);
  EXPECT_EQ(g.read_ops, 30);
  EXPECT_EQ(g.write_ops, 20);
  EXPECT_EQ(g.read_latency.back(), 30);
  for (double v : g.read_latency) EXPECT_GE(v, 0);
  // A counter that went down within one incarnation (it cannot) adds
  // nothing rather than a negative rate.
  ShardCounters lower = old;
  lower.read_ops = 10;
  lower.read_latency.assign(lower.read_latency.size(), 10);
  const ShardCounters none = ShardGrowth(&old, lower, 0);
  EXPECT_EQ(none.read_ops, 0);
  for (double v : none.read_latency) EXPECT_GE(v, 0);
}

TEST(ShardTrafficSamplesTest, CountersOlderThanTheConsoleAreABaselineNotASpike) {
  // A coordinator (and its console) that started at 1000 meets a shard that
  // has counted for an hour: no growth at first sight.
  const ShardCounters old = Counters(7, 1001, 3600, 5e7, 1e7);
  const ShardCounters g = ShardGrowth(nullptr, old, 1000);
  EXPECT_EQ(g.read_ops, 0);
  EXPECT_EQ(g.write_ops, 0);
  EXPECT_EQ(g.received_bytes, 0);
  for (double v : g.read_latency) EXPECT_EQ(v, 0);
  // A shard that started after the console: everything it counted is new.
  const ShardCounters young = Counters(9, 1010, 4, 50, 5);
  EXPECT_EQ(ShardGrowth(nullptr, young, 1000).read_ops, 50);
}

TEST(ShardTrafficSamplesTest, SamplerSumsShardsMergesPercentilesAndSurvivesARestart) {
  ShardTrafficSampler sampler(1000);
  ConsoleSample first;
  first.unix_seconds = 1000;
  // Both shards started before the console: a baseline.
  sampler.Add({{0, Counters(1, 999.5, 50, 1000, 100)}, {1, Counters(2, 999.8, 50, 2000, 0)}}, 0,
              &first);
  EXPECT_EQ(first.shard_reads, 0);
  EXPECT_EQ(first.shards_reporting, 2);

  ConsoleSample s;
  s.unix_seconds = 1005;
  // Shard 0: 100 more reads; shard 1: 300 more reads and 40 writes, 2 fences.
  sampler.Add({{0, Counters(1, 1004.5, 55, 1100, 100)}, {1, Counters(2, 1002, 52, 2300, 40, 2)}}, 5,
              &s);
  EXPECT_EQ(s.shards_reporting, 2);
  EXPECT_EQ(s.shard_reads, 400);
  EXPECT_EQ(s.shard_writes, 40);
  EXPECT_DOUBLE_EQ(s.shard_reads_per_second, 80);
  EXPECT_DOUBLE_EQ(s.shard_writes_per_second, 8);
  EXPECT_DOUBLE_EQ(s.shard_received_bytes_per_second, 100.0 * 440 / 5);
  // The histograms merged: 200 of 400 reads under 1 ms, all under 10 ms.
  EXPECT_NEAR(s.read_p50, 0.001, 1e-9);
  EXPECT_GT(s.read_p99, 0.005);
  EXPECT_LE(s.read_p99, 0.01);
  EXPECT_GT(s.write_p50, 0.0001);
  EXPECT_LE(s.write_p99, 0.00025);
  EXPECT_NEAR(s.shard_fence_pause, 0.002, 1e-12);
  ASSERT_EQ(s.shard_ops.size(), 2u);
  EXPECT_EQ(s.shard_ops[0].id, 0);
  EXPECT_EQ(s.shard_ops[0].reads, 100);
  EXPECT_DOUBLE_EQ(s.shard_ops[1].reads_per_second, 60);
  EXPECT_DOUBLE_EQ(s.shard_ops[1].writes_per_second, 8);
  // Shard 1's counters are 3 s old at the sample's end.
  EXPECT_DOUBLE_EQ(s.shard_ops[1].age_seconds, 3);

  // Shard 1 restarts (new incarnation, counted 20 reads since) and shard
  // 0's heartbeat is late (its counters unchanged): no negative rate, no
  // spike; shard 0 catches up at the next look.
  ConsoleSample restart;
  restart.unix_seconds = 1010;
  sampler.Add({{0, Counters(1, 1004.5, 55, 1100, 100)}, {1, Counters(3, 1009, 4, 20, 0)}}, 5,
              &restart);
  EXPECT_EQ(restart.shard_reads, 20);
  EXPECT_EQ(restart.shard_ops[0].reads, 0);
  EXPECT_DOUBLE_EQ(restart.shard_ops[0].age_seconds, 5.5);
  EXPECT_EQ(restart.shard_ops[1].reads, 20);
  EXPECT_GE(restart.shard_writes, 0);
  EXPECT_LT(restart.write_p50, 0);  // no write in the interval

  // Then a missed sample (the sampler stalled 15 s): the rate spreads over
  // the whole interval, and the counts still add up.
  ConsoleSample late;
  late.unix_seconds = 1025;
  sampler.Add({{0, Counters(1, 1024, 75, 1400, 100)}, {1, Counters(3, 1024, 19, 170, 0)}}, 15,
              &late);
  EXPECT_EQ(late.shard_reads, 300 + 150);
  EXPECT_DOUBLE_EQ(late.shard_reads_per_second, 30);
  // Over the three intervals the cluster's counts are every read counted
  // since the baseline: 1400-1000 on shard 0, 2300-2000 and 170 on shard 1.
  EXPECT_EQ(s.shard_reads + restart.shard_reads + late.shard_reads, 400 + 300 + 170);

  // A shard that leaves the registry is forgotten; one with histograms of
  // another shape still counts its ops, without percentiles.
  ShardCounters odd = Counters(4, 1029, 1, 10, 0);
  odd.read_latency = {1, 2, 3};
  ConsoleSample after;
  after.unix_seconds = 1030;
  sampler.Add({{2, odd}}, 5, &after);
  EXPECT_EQ(after.shards_reporting, 1);
  EXPECT_EQ(after.shard_reads, 10);
  EXPECT_LT(after.read_p50, 0);
}

TEST(ShardTrafficSamplesTest, CountersComeFromTheShardStatuses) {
  ListShardsResponse statuses;
  ShardStatus* reported = statuses.add_shards();
  reported->set_shard_id(3);
  reported->set_incarnation(42);
  reported->set_millis_since_traffic(1500);
  reported->mutable_traffic()->set_uptime_seconds(60);
  reported->mutable_traffic()->set_read_ops(11);
  reported->mutable_traffic()->set_write_ops(7);
  reported->mutable_traffic()->add_read_latency_buckets(11);
  ShardStatus* silent = statuses.add_shards();  // registered, no heartbeat with counters yet
  silent->set_shard_id(4);
  const auto counters = ShardCountersOf(statuses, 1000);
  ASSERT_EQ(counters.size(), 1u);
  EXPECT_EQ(counters[0].first, 3);
  EXPECT_EQ(counters[0].second.incarnation, 42u);
  EXPECT_DOUBLE_EQ(counters[0].second.heard_unix_seconds, 998.5);
  EXPECT_DOUBLE_EQ(counters[0].second.started_unix_seconds, 938.5);
  EXPECT_EQ(counters[0].second.read_ops, 11);
  EXPECT_EQ(counters[0].second.write_ops, 7);
  EXPECT_EQ(counters[0].second.read_latency, std::vector<double>{11});
}

TEST(ConsolePageTest, EscapesHtmlAndJson) {
  EXPECT_EQ(HtmlEscape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(JsonString("a\"b\\c\n</script>"), "\"a\\\"b\\\\c\\n\\u003c/script\\u003e\"");
  EXPECT_EQ(JsonString(std::string("\x01", 1)), "\"\\u0001\"");
}

TEST(ConsolePageTest, FormatsBytes) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(3.5 * (1 << 30)), "3.50 GiB");
}

ConsoleView HostileView() {
  ConsoleView view;
  view.now_unix_seconds = 1.8e9;
  view.coordinator = "127.0.0.1:7070<img src=x onerror=alert(1)>";
  view.num_variables = 2;
  ConsoleShard shard;
  shard.id = 0;
  shard.address = "127.0.0.1:7071";
  shard.live = true;
  shard.device = "cpu:0<marquee>";
  shard.memory_used = 900;
  shard.memory_limit = 1000;
  shard.placed_parts = 2;
  shard.placed_bytes = 800;
  view.shards.push_back(shard);
  ConsoleVariable v;
  v.name = "evil/<script>alert('x')</script>";
  v.dtype = "float32";
  v.shape = "[10,4]";
  v.kind = "dense";
  v.partitions = 1;
  v.parts.push_back({v.name, 0, "initialized"});
  v.initialized = "yes";
  view.variables.push_back(v);
  ConsoleCheckpoint c;
  c.prefix = "/ck/model.ckpt-7\"><script>alert(2)</script>";
  c.step = 7;
  c.saved_unix_micros = static_cast<int64_t>(1.8e15) - 60'000'000;
  c.bytes = 4096;
  c.retention = "latest, retained";
  view.checkpoints.push_back(c);
  view.checkpoint_dir = "/ck";
  view.checkpoint_error = "<script>alert(3)</script>";
  return view;
}

TEST(ConsolePageTest, NamesWithScriptTagsAreRenderedInert) {
  const ConsoleView view = HostileView();
  const std::string page = RenderConsolePage(view, "n0nce");
  // The page's own script, with its nonce, is the only one.
  EXPECT_EQ(Count(page, "<script"), 1) << page;
  EXPECT_NE(page.find("<script nonce=\"n0nce\">"), std::string::npos);
  EXPECT_EQ(page.find("<img"), std::string::npos);
  EXPECT_EQ(page.find("<marquee>"), std::string::npos);
  EXPECT_NE(page.find("cpu:0&lt;marquee&gt;"), std::string::npos);
  EXPECT_NE(page.find("evil/&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(page.find("&lt;script&gt;alert(3)&lt;/script&gt;"), std::string::npos);
  const std::string main = RenderConsoleMain(view);
  EXPECT_EQ(Count(main, "<script"), 0);
  const std::string json = RenderConsoleJson(view);
  EXPECT_EQ(json.find('<'), std::string::npos);
  EXPECT_NE(json.find("evil/\\u003cscript\\u003ealert('x')\\u003c/script\\u003e"),
            std::string::npos);
}

TEST(ConsolePageTest, ShowsShardsVariablesAndCheckpoints) {
  const ConsoleView view = HostileView();
  const std::string main = RenderConsoleMain(view);
  EXPECT_NE(main.find("127.0.0.1:7071"), std::string::npos);
  EXPECT_NE(main.find("badge ok\">live"), std::string::npos);
  // 90% of the limit: a full-ish bar in the alarming colour.
  EXPECT_NE(main.find("class=\"bar bad\"><i style=\"width:90.0%\">"), std::string::npos);
  EXPECT_NE(main.find("initialized"), std::string::npos);
  EXPECT_NE(main.find("latest, retained"), std::string::npos);
  EXPECT_NE(main.find("60 s ago"), std::string::npos);
  EXPECT_NE(main.find("step 7"), std::string::npos);
}

TEST(ConsolePageTest, ShowsDrainedShardsAndRunningMoves) {
  ConsoleView view = HostileView();
  view.shards[0].drained = true;
  view.moves.push_back({"ab12", "w/<b>/part_0, w/Adam/part_0", 0, 1, false, 2.5});
  const std::string main = RenderConsoleMain(view);
  EXPECT_NE(main.find("badge info\">drained"), std::string::npos);
  EXPECT_NE(main.find("move running"), std::string::npos);
  EXPECT_NE(main.find("w/&lt;b&gt;/part_0, w/Adam/part_0 shard 0 → 1"), std::string::npos) << main;
  EXPECT_EQ(main.find("w/<b>"), std::string::npos);
  const std::string json = RenderConsoleJson(view);
  EXPECT_NE(json.find("\"drained\":true"), std::string::npos);
  EXPECT_NE(json.find("\"moves\":[{\"id\":\"ab12\""), std::string::npos) << json;
}

TEST(ConsolePageTest, CappedListsSayHowManyMore) {
  ConsoleView view = HostileView();
  view.variables_omitted = 1234;
  view.checkpoints_omitted = 5;
  view.variables[0].parts_omitted = 9;
  const std::string main = RenderConsoleMain(view);
  EXPECT_NE(main.find("and 1234 more variables"), std::string::npos);
  EXPECT_NE(main.find("and 5 older checkpoints"), std::string::npos);
  EXPECT_NE(main.find("and 9 more"), std::string::npos);
  const std::string json = RenderConsoleJson(view);
  EXPECT_NE(json.find("\"variables_omitted\":1234"), std::string::npos);
}

TEST(ConsolePageTest, ChartsHaveAxesLinesAndLegends) {
  ConsoleView view = HostileView();
  for (int i = 0; i < 30; ++i) {
    ConsoleSample s;
    s.unix_seconds = view.now_unix_seconds - 150 + 5 * i;
    s.calls_per_second = i;
    s.p50 = 0.001;
    s.p90 = 0.002;
    s.p99 = 0.004;
    s.fence_pause = i == 10 ? 0.003 : -1;
    s.shard_memory_used = {{0, 1e6 * i}};
    view.samples.push_back(s);
  }
  const std::string main = RenderConsoleMain(view);
  EXPECT_EQ(Count(main, "<svg"), 9);
  EXPECT_GE(Count(main, "<polyline"), 4);
  EXPECT_GE(Count(main, "<circle"), 1);  // the one fence pause
  EXPECT_NE(main.find(">now</text>"), std::string::npos);
  EXPECT_NE(main.find(">-15 min</text>"), std::string::npos);
  EXPECT_NE(main.find("shard 0"), std::string::npos);
  // Byte axes step in KiB, MiB, ...: 29 MB of memory tops out at 30 MiB.
  EXPECT_NE(main.find(">30.0 MiB</text>"), std::string::npos);
  EXPECT_NE(main.find("p99"), std::string::npos);
  const std::string json = RenderConsoleJson(view);
  EXPECT_NE(json.find("\"fence_pause_seconds\":null"), std::string::npos);
  EXPECT_NE(json.find("\"fence_pause_seconds\":0.003"), std::string::npos);
}

TEST(ConsolePageTest, ShardChartsAndJsonCarryTheShardsOps) {
  ConsoleView view = HostileView();
  for (int i = 0; i < 10; ++i) {
    ConsoleSample s;
    s.unix_seconds = view.now_unix_seconds - 50 + 5 * i;
    s.shards_reporting = 2;
    s.shard_reads = 500;
    s.shard_writes = 50;
    s.shard_reads_per_second = 100;
    s.shard_writes_per_second = 10;
    s.read_p50 = 0.0002;
    s.read_p99 = 0.003;
    s.write_p50 = -1;  // no write: a gap, not a zero
    s.write_p99 = -1;
    s.shard_ops = {{0, 300, 30, 60, 6, 0.2}, {1, 200, 20, 40, 4, i == 9 ? 12.0 : 0.5}};
    view.samples.push_back(s);
  }
  const std::string main = RenderConsoleMain(view);
  for (const std::string title : {"Shard ops (all shards)", "Shard op latency percentiles",
                                  "Shard bytes in / out", "Ops per shard (reads + writes)"}) {
    EXPECT_NE(main.find(absl::StrCat("aria-label=\"", title, "\" data-max=")), std::string::npos)
        << title;
  }
  EXPECT_NE(main.find("aria-label=\"Shard ops (all shards)\" data-max=\"100\""), std::string::npos);
  // A line per shard; the lagging one says how old its counters are.
  EXPECT_NE(main.find("shard 0 <b>66/s</b>"), std::string::npos) << main;
  EXPECT_NE(main.find("shard 1 (counters 12 s old) <b>44/s</b>"), std::string::npos);
  EXPECT_NE(main.find("read p99 <b>3 ms</b>"), std::string::npos);
  // The shard's own counters since it started, with their age; none yet:
  // null, never a made-up 0.
  EXPECT_NE(RenderConsoleJson(view).find("\"read_ops\":null,\"write_ops\":null"),
            std::string::npos);
  view.shards[0].read_ops = 330;
  view.shards[0].write_ops = 33;
  view.shards[0].failed_ops = 0;
  view.shards[0].millis_since_traffic = 150;
  const std::string json = RenderConsoleJson(view);
  EXPECT_NE(json.find("\"read_ops\":330,\"write_ops\":33,\"failed_ops\":0,"
                      "\"millis_since_traffic\":150}"),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("\"shard_reads\":500,\"shard_writes\":50"), std::string::npos) << json;
  EXPECT_NE(json.find("\"shard_reads_per_second\":100"), std::string::npos);
  EXPECT_NE(json.find("\"shard_read_p99_seconds\":0.003"), std::string::npos);
  EXPECT_NE(json.find("\"shard_write_p50_seconds\":null"), std::string::npos);
  EXPECT_NE(json.find("\"shard_ops\":{\"0\":{\"reads\":300,\"writes\":30,"
                      "\"reads_per_second\":60,\"writes_per_second\":6,\"age_seconds\":0.200}"),
            std::string::npos);
}

// Everything at its cap (shards, variables with long names and every part
// listed, checkpoints, a full ring of samples for the most chart shards):
// the answers stay bounded.
TEST(ConsolePageTest, AFullViewStaysBounded) {
  ConsoleView view;
  view.now_unix_seconds = 1.8e9;
  for (int k = 0; k < kConsoleMaxShards; ++k) {
    ConsoleShard s;
    s.id = k;
    s.address = absl::StrCat("shard-", k, ".example.internal:7071");
    s.device = "cuda:0";
    s.memory_limit = int64_t{80} << 30;
    s.memory_used = int64_t{40} << 30;
    view.shards.push_back(s);
  }
  view.shards_omitted = 1000;
  for (int i = 0; i < kConsoleMaxVariables; ++i) {
    ConsoleVariable v;
    v.name = absl::StrCat(std::string(200, 'n'), i);
    v.dtype = "float32";
    v.shape = "[1000000,128]";
    v.kind = "dense";
    v.partitions = 64;
    for (int p = 0; p < kConsoleMaxPartsPerVariable; ++p) {
      v.parts.push_back({absl::StrCat(v.name, "/part_", p), p, "initialized"});
    }
    v.parts_omitted = 64 - kConsoleMaxPartsPerVariable;
    v.initialized = "yes";
    view.variables.push_back(v);
  }
  for (int i = 0; i < kConsoleMaxCheckpoints; ++i) {
    view.checkpoints.push_back(
        {absl::StrCat("/checkpoints/", std::string(100, 'c'), "/model.ckpt-", i), i,
         static_cast<int64_t>(1.7e15), int64_t{1} << 40, "retained"});
  }
  for (int i = 0; i < kConsoleSampleCapacity; ++i) {
    ConsoleSample s;
    s.unix_seconds = view.now_unix_seconds - 900 + 5 * i;
    s.calls_per_second = 1000 + i;
    s.p50 = 0.001;
    s.p90 = 0.01;
    s.p99 = 0.1;
    s.fence_pause = 0.005;
    for (int k = 0; k < kConsoleMaxChartShards; ++k) s.shard_memory_used.emplace_back(k, 1e9 * k);
    s.shards_reporting = 1000;
    s.shard_reads_per_second = 1e6;
    s.read_p50 = s.write_p50 = 0.0001;
    s.read_p99 = s.write_p99 = 0.01;
    for (int k = 0; k < kConsoleMaxChartShards; ++k) {
      s.shard_ops.push_back({k, 1e6, 1e6, 2e5, 2e5, 1.5});
    }
    view.samples.push_back(s);
  }
  const std::string page = RenderConsolePage(view, "n");
  const std::string json = RenderConsoleJson(view);
  std::printf("full view: page %zu bytes, json %zu bytes\n", page.size(), json.size());
  EXPECT_LT(page.size(), size_t{2} << 20);
  EXPECT_LT(json.size(), size_t{2} << 20);
}

TEST(ConsolePageTest, AnEmptyChartSaysSo) {
  const std::string chart = RenderChart("x", "/s", {}, 1000, 900);
  EXPECT_NE(chart.find("no data yet"), std::string::npos);
}

// The routes on a registry and service without shards.
class ConsoleRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/psd_console_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    std::ofstream(dir_ + "/tokens")
        << "trainer trainer-secret\nadmin admin-secret\nnode node-secret\n";
    auto registry = Registry::Open({});
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *std::move(registry);
    service_ = std::make_unique<CoordinatorService>(registry_.get(), CoordinatorServiceOptions());
  }
  void TearDown() override {
    service_.reset();
    std::remove((dir_ + "/tokens").c_str());
    rmdir(dir_.c_str());
  }

  std::unique_ptr<Console> Make(bool tokens) {
    ConsoleOptions options;
    options.coordinator = "127.0.0.1:1";
    if (tokens) options.token_file = dir_ + "/tokens";
    auto console = Console::Create(registry_.get(), service_.get(), &metrics_, options);
    EXPECT_TRUE(console.ok()) << console.status();
    return console.ok() ? *std::move(console) : nullptr;
  }

  static HttpRequest Get(const std::string& target, const std::string& authorization = "") {
    return HttpRequest{"GET", target, authorization};
  }

  std::string dir_;
  MetricsRegistry metrics_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
};

TEST_F(ConsoleRoutesTest, ServesItsRoutesAndNothingElse) {
  auto console = Make(false);
  ASSERT_NE(console, nullptr);
  auto page = console->Handle(Get("/"));
  ASSERT_TRUE(page.has_value());
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(page->content_type, "text/html; charset=utf-8");
  EXPECT_NE(page->body.find("psd <span>console</span>"), std::string::npos);
  bool csp = false;
  for (const auto& [name, value] : page->headers) {
    if (name == "Content-Security-Policy") {
      csp = true;
      EXPECT_NE(value.find("script-src 'nonce-"), std::string::npos);
    }
  }
  EXPECT_TRUE(csp);
  auto json = console->Handle(Get("/console.json"));
  ASSERT_TRUE(json.has_value());
  EXPECT_EQ(json->content_type, "application/json");
  EXPECT_NE(json->body.find("\"shards\":[]"), std::string::npos);
  auto main = console->Handle(Get("/console/main?x=1"));
  ASSERT_TRUE(main.has_value());
  EXPECT_EQ(main->body.find("<html"), std::string::npos);
  EXPECT_FALSE(console->Handle(Get("/secrets")).has_value());
}

TEST_F(ConsoleRoutesTest, WithTokensOnlyTheAdminTokenSeesData) {
  auto console = Make(true);
  ASSERT_NE(console, nullptr);
  for (const std::string target : {"/", "/console.json", "/console/main"}) {
    SCOPED_TRACE(target);
    auto none = console->Handle(Get(target));
    ASSERT_TRUE(none.has_value());
    EXPECT_EQ(none->status, 401);
    EXPECT_EQ(none->body.find("\"shards\""), std::string::npos);
    EXPECT_NE(none->body.find("admin token"), std::string::npos);
    EXPECT_EQ(console->Handle(Get(target, "Bearer wrong"))->status, 401);
    auto trainer = console->Handle(Get(target, "Bearer trainer-secret"));
    EXPECT_EQ(trainer->status, 403);
    EXPECT_NE(trainer->body.find("the token has trainer"), std::string::npos);
    EXPECT_EQ(console->Handle(Get(target, "Bearer node-secret"))->status, 403);
    EXPECT_EQ(console->Handle(Get(target, "Bearer admin-secret"))->status, 200);
    // The page's own address may carry it (URL-encoded).
    EXPECT_EQ(console->Handle(Get(target + "?token=admin%2Dsecret"))->status, 200);
    EXPECT_EQ(console->Handle(Get(target + "?a=b&token=trainer-secret"))->status, 403);
  }
}

TEST_F(ConsoleRoutesTest, SamplesComeFromTheMetricsText) {
  Counter* declared = metrics_.CounterFamily("psd_rpc_total", "calls", {"method", "code"})
                          ->Get({"psd.Coordinator/DeclareVariables", "OK"});
  auto console = Make(false);
  ASSERT_NE(console, nullptr);
  console->SampleNow();
  EXPECT_TRUE(console->View().samples.empty());  // one digest: no interval yet
  declared->Increment(5);
  console->SampleNow();
  const auto samples = console->View().samples;
  ASSERT_EQ(samples.size(), 1u);
  EXPECT_GT(samples[0].calls_per_second, 0);
}

}  // namespace
}  // namespace psd
