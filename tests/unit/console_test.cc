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
  EXPECT_EQ(Count(main, "<svg"), 5);
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
