// Metrics rendering in Prometheus' text format and the loopback HTTP
// endpoint that serves it.
#include <atomic>

#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "observability/http_server.h"
#include "observability/metrics.h"

namespace psd {
namespace {

using ::testing::HasSubstr;
namespace http = boost::beast::http;

TEST(MetricsTest, RendersCountersGaugesAndHistogramsWithLabels) {
  MetricsRegistry registry;
  registry.CounterFamily("psd_rpc_total", "RPCs", {"method", "code"})
      ->Get({"psd.Shard/Read", "OK"})
      ->Increment(3);
  registry.GaugeFamily("psd_things", "Things")->Get({})->Set(7);
  registry.CallbackGauge("psd_live", "Computed at scrape", [] { return 2.5; });
  Histogram* h = registry.HistogramFamily("psd_latency_seconds", "Latency", {"method"}, {0.1, 1})
                     ->Get({"a\"b"});
  h->Observe(0.05);
  h->Observe(0.5);
  h->Observe(5);
  const std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE psd_rpc_total counter\n"));
  EXPECT_THAT(text, HasSubstr("psd_rpc_total{method=\"psd.Shard/Read\",code=\"OK\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("psd_things 7\n"));
  EXPECT_THAT(text, HasSubstr("psd_live 2.5\n"));
  // Cumulative buckets, label values escaped.
  EXPECT_THAT(text, HasSubstr("psd_latency_seconds_bucket{method=\"a\\\"b\",le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("psd_latency_seconds_bucket{method=\"a\\\"b\",le=\"1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("psd_latency_seconds_bucket{method=\"a\\\"b\",le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("psd_latency_seconds_count{method=\"a\\\"b\"} 3\n"));
}

// GET `target` from 127.0.0.1:`port`; returns status and body.
std::pair<int, std::string> Get(int port, const std::string& target) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
  http::request<http::string_body> request(http::verb::get, target, 11);
  request.set(http::field::host, "127.0.0.1");
  http::write(socket, request);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(socket, buffer, response);
  return {static_cast<int>(response.result_int()), response.body()};
}

TEST(HttpServerTest, ServesMetricsHealthAndReadiness) {
  MetricsRegistry registry;
  registry.GaugeFamily("psd_up", "Up")->Get({})->Set(1);
  std::atomic<bool> ready{true};
  auto server = HttpServer::Start("127.0.0.1:0", &registry, [&] { return ready.load(); });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  auto [code, body] = Get(port, "/metrics");
  EXPECT_EQ(code, 200);
  EXPECT_THAT(body, HasSubstr("psd_up 1\n"));
  EXPECT_EQ(Get(port, "/healthz").first, 200);
  EXPECT_EQ(Get(port, "/readyz").first, 200);
  ready = false;
  EXPECT_EQ(Get(port, "/readyz").first, 503);
  EXPECT_EQ(Get(port, "/nope").first, 404);
}

TEST(HttpServerTest, RefusesNonLoopbackBind) {
  MetricsRegistry registry;
  auto server = HttpServer::Start("0.0.0.0:0", &registry, nullptr);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.status().message(), HasSubstr("loopback"));
  EXPECT_FALSE(HttpServer::Start("127.0.0.1:99999", &registry, nullptr).ok());
}

}  // namespace
}  // namespace psd
