// Metrics rendering in Prometheus' text format and the HTTP(S) endpoint
// that serves it.
#include <atomic>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "observability/http_server.h"
#include "observability/metrics.h"
#include "../common/http_get.h"

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

TEST(HttpServerTest, HealthzAnswersUnhealthyWithTheReason) {
  MetricsRegistry registry;
  std::atomic<bool> failed{false};
  HttpServerOptions options;
  options.unhealthy_reason = [&] {
    return failed ? std::string("gpu:0: cudaErrorIllegalAddress") : std::string();
  };
  auto server = HttpServer::Start(options, &registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  EXPECT_EQ(Get(port, "/healthz").first, 200);
  failed = true;
  auto [code, body] = Get(port, "/healthz");
  EXPECT_EQ(code, 503);
  EXPECT_EQ(body, "unhealthy: gpu:0: cudaErrorIllegalAddress\n");
}

TEST(HttpServerTest, RefusesNonLoopbackBind) {
  MetricsRegistry registry;
  auto server = HttpServer::Start("0.0.0.0:0", &registry, nullptr);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.status().message(), HasSubstr("loopback"));
  EXPECT_FALSE(HttpServer::Start("127.0.0.1:99999", &registry, nullptr).ok());
}

TEST(MetricsTest, CallbackFamiliesAndFullPrecision) {
  MetricsRegistry registry;
  registry.CallbackGaugeFamily("psd_shard_up", "Per shard", {"shard"}, [] {
    return MetricsRegistry::Samples{{{"0"}, 1}, {{"1"}, 0}};
  });
  registry.CallbackCounter("psd_expiries_total", "Grows", [] { return 4.0; });
  registry.GaugeFamily("psd_bytes", "Big")->Get({})->Set(4294967297.0);
  registry.GaugeFamily("psd_when", "Timestamp")->Get({})->Set(1795649939.25);
  const std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE psd_shard_up gauge\npsd_shard_up{shard=\"0\"} 1\n"
                              "psd_shard_up{shard=\"1\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE psd_expiries_total counter\npsd_expiries_total 4\n"));
  // Every digit of byte counts and timestamps survives.
  EXPECT_THAT(text, HasSubstr("psd_bytes 4294967297\n"));
  EXPECT_THAT(text, HasSubstr("psd_when 1795649939.25\n"));
  auto parsed = testing_http::ParseMetrics(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)["psd_shard_up{shard=\"0\"}"], 1);
}

// Test certificates from scripts/make-test-certs.sh, made on first use and
// removed after the last test.
std::string* cert_dir = nullptr;

class CertDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (cert_dir == nullptr) return;
    std::error_code ignored;
    std::filesystem::remove_all(*cert_dir, ignored);
  }
};
::testing::Environment* const cert_dir_cleanup =
    ::testing::AddGlobalTestEnvironment(new CertDirCleanup);

const std::string& CertDir() {
  if (cert_dir == nullptr) {
    char tmpl[] = "/tmp/psd_observability_test.XXXXXX";
    cert_dir = new std::string(mkdtemp(tmpl));
    const std::string command = absl::StrCat(PSD_MAKE_TEST_CERTS, " ", *cert_dir, " >/dev/null");
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
  }
  return *cert_dir;
}

HttpServerOptions TlsOptions(const std::string& listen) {
  HttpServerOptions options;
  options.listen = listen;
  options.tls_cert = CertDir() + "/server.pem";
  options.tls_key = CertDir() + "/server.key";
  return options;
}

TEST(HttpServerTest, ServesHttpsWithTheServerCertificate) {
  MetricsRegistry registry;
  registry.GaugeFamily("psd_up", "Up")->Get({})->Set(1);
  auto server = HttpServer::Start(TlsOptions("127.0.0.1:0"), &registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE((*server)->tls());
  const int port = (*server)->port();
  auto reply = testing_http::HttpGet("127.0.0.1", port, "/metrics", CertDir() + "/ca.pem");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
  EXPECT_THAT(reply->body, HasSubstr("psd_up 1\n"));
  auto health = testing_http::HttpGet("localhost", port, "/healthz", CertDir() + "/ca.pem");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
  // Plain HTTP gets no answer from the HTTPS endpoint.
  auto plain = testing_http::HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_TRUE(!plain.ok() || plain->status != 200);
  // A client that trusts another CA refuses the server.
  auto wrong_ca = testing_http::HttpGet("127.0.0.1", port, "/metrics", CertDir() + "/client.pem");
  EXPECT_FALSE(wrong_ca.ok());
}

TEST(HttpServerTest, HttpsMayBindBeyondLoopbackAndNeedsItsKey) {
  MetricsRegistry registry;
  auto any = HttpServer::Start(TlsOptions("0.0.0.0:0"), &registry, nullptr);
  ASSERT_TRUE(any.ok()) << any.status();
  HttpServerOptions no_key = TlsOptions("127.0.0.1:0");
  no_key.tls_key = CertDir() + "/missing.key";
  auto server = HttpServer::Start(no_key, &registry, nullptr);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.status().message(), HasSubstr("missing.key"));
}

TEST(HttpServerTest, AStalledClientDoesNotHoldTheEndpoint) {
  MetricsRegistry registry;
  auto server = HttpServer::Start(TlsOptions("127.0.0.1:0"), &registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  // Connects and never sends a byte (no TLS hello, no request).
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket idle(io);
  idle.connect({boost::asio::ip::make_address("127.0.0.1"),
                static_cast<unsigned short>((*server)->port())});
  auto reply =
      testing_http::HttpGet("127.0.0.1", (*server)->port(), "/readyz", CertDir() + "/ca.pem");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
}

}  // namespace
}  // namespace psd
