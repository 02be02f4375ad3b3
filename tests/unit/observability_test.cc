// Metrics rendering in Prometheus' text format and the HTTP(S) endpoint
// that serves it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "../common/http_get.h"
#include "../common/raw_connection.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "observability/http_server.h"
#include "observability/metrics.h"
#include "observability/rpc_metrics.h"
#include "psd/shard.grpc.pb.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace psd {
namespace {

using ::testing::HasSubstr;
namespace http = boost::beast::http;
using testing_net::RawConnection;

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

// /healthz on a new connection until it answers 200 (bounded: 200 tries).
bool EventuallyHealthy(int port) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    auto reply = testing_http::HttpGet("127.0.0.1", port, "/healthz");
    if (reply.ok() && reply->status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// More idle connections than the cap: the ones past it are closed at once
// (they neither hang nor take a descriptor), the ones within it keep their
// slots, and once they close a new client is served again.
TEST(HttpServerTest, ConnectionsPastTheCapAreClosedAtOnce) {
  MetricsRegistry registry;
  HttpServerOptions options;
  options.max_connections = 4;
  options.read_timeout_seconds = 120;  // the idle ones within the cap stay
  auto server = HttpServer::Start(options, &registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  constexpr int kConnections = 10;
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < kConnections; ++i) {
    idle.push_back(std::make_unique<RawConnection>(port));
    ASSERT_TRUE(idle.back()->connected());
  }
  // The server closes the excess: each becomes readable (end of stream).
  std::vector<bool> closed(kConnections, false);
  int num_closed = 0;
  for (int round = 0; round < 60 && num_closed < kConnections - 4; ++round) {
    std::vector<pollfd> fds;  // all, with the closed ones ignored (fd -1)
    for (int i = 0; i < kConnections; ++i) {
      fds.push_back({closed[i] ? -1 : idle[i]->fd(), POLLIN, 0});
    }
    ::poll(fds.data(), fds.size(), 500);
    for (int i = 0; i < kConnections; ++i) {
      if (!closed[i] && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        std::string answer;
        EXPECT_TRUE(idle[i]->ReadToEnd(&answer));
        EXPECT_EQ(answer, "");  // closed without a response
        closed[i] = true;
        ++num_closed;
      }
    }
  }
  EXPECT_EQ(num_closed, kConnections - 4);
  // While the four hold every slot, a new client is turned away, not kept.
  auto refused = testing_http::HttpGet("127.0.0.1", port, "/healthz");
  EXPECT_FALSE(refused.ok());
  idle.clear();
  EXPECT_TRUE(EventuallyHealthy(port));
}

// A client that sends a header byte at a time is answered 408 and closed at
// the read deadline; its slot is then free for others.
TEST(HttpServerTest, ASlowlorisClientIsDroppedAtTheReadDeadline) {
  MetricsRegistry registry;
  HttpServerOptions options;
  options.max_connections = 1;
  options.read_timeout_seconds = 1;
  auto server = HttpServer::Start(options, &registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  RawConnection slow(port);
  ASSERT_TRUE(slow.connected());
  const std::string request = "GET /healthz HTTP/1.1\r\nX-Slow: " + std::string(10000, 'a');
  bool dropped = false;
  // One byte per 50 ms for at most 30 s: a bound, not a timing assertion.
  for (size_t i = 0; i < 600 && !dropped; ++i) {
    if (!slow.Send(request.substr(i % request.size(), 1))) break;
    dropped = slow.Readable(50);
  }
  ASSERT_TRUE(dropped) << "the server kept a slow client past 30 s";
  std::string answer;
  EXPECT_TRUE(slow.ReadToEnd(&answer));
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 408 "));
  EXPECT_TRUE(EventuallyHealthy(port));
}

// Whatever bytes a client sends, it gets an HTTP status (or, if it only
// connects and closes, nothing), and the server goes on serving.
TEST(HttpServerTest, AnswersAnyBytesWithAStatus) {
  MetricsRegistry registry;
  HttpServerOptions options;
  options.read_timeout_seconds = 2;
  auto server = HttpServer::Start(options, &registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  struct Case {
    std::string name;
    std::string bytes;
    bool half_close;  // the client shuts down its side after sending
    std::string status_line;
  };
  const std::vector<Case> cases = {
      {"garbage", "hello there\r\n\r\n", false, "HTTP/1.1 400 "},
      {"binary", std::string(200, '\0'), true, "HTTP/1.1 400 "},
      {"tls hello on plain http", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", true,
       "HTTP/1.1 400 "},
      {"HTTP/0.9, then close", "GET /healthz\r\n", true, "HTTP/1.1 400 "},
      {"HTTP/0.9, no close", "GET /healthz\r\n", false, "HTTP/1.1 400 "},
      {"incomplete, then wait", "GET /healthz HTTP/1.1\r\nHost: x\r\n", false, "HTTP/1.1 408 "},
      {"huge header", "GET /healthz HTTP/1.1\r\nX-Big: " + std::string(100000, 'x') + "\r\n\r\n",
       false, "HTTP/1.1 431 "},
      {"huge target", "GET /" + std::string(100000, 'x') + " HTTP/1.1\r\n\r\n", false,
       "HTTP/1.1 431 "},
      {"huge body", "POST /healthz HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n", false,
       "HTTP/1.1 413 "},
      {"bad content length", "GET /healthz HTTP/1.1\r\nContent-Length: -5\r\n\r\n", false,
       "HTTP/1.1 400 "},
      {"POST", "POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", false, "HTTP/1.1 405 "},
      {"pipelined", "GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n", false,
       "HTTP/1.1 200 "},
      {"HTTP/1.0", "GET /readyz HTTP/1.0\r\n\r\n", false, "HTTP/1.0 200 "},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    RawConnection connection(port);
    ASSERT_TRUE(connection.connected());
    ASSERT_TRUE(connection.Send(c.bytes));
    if (c.half_close) connection.ShutdownWrite();
    std::string answer;
    EXPECT_TRUE(connection.ReadToEnd(&answer));
    EXPECT_THAT(answer, ::testing::StartsWith(c.status_line));
  }
  // Abrupt ends: a connection closed mid-request, one reset.
  {
    RawConnection connection(port);
    ASSERT_TRUE(connection.Send("GET /heal"));
  }
  {
    RawConnection connection(port);
    ASSERT_TRUE(connection.Send("GET /healthz HTTP/1.1\r\n"));
    linger reset{1, 0};
    ::setsockopt(connection.fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  }
  EXPECT_TRUE(EventuallyHealthy(port));
}

// A /readyz callback that throws answers 500; the endpoint keeps serving.
TEST(HttpServerTest, AThrowingHandlerAnswers500) {
  MetricsRegistry registry;
  auto server = HttpServer::Start("127.0.0.1:0", &registry,
                                  []() -> bool { throw std::runtime_error("boom"); });
  ASSERT_TRUE(server.ok()) << server.status();
  auto reply = testing_http::HttpGet("127.0.0.1", (*server)->port(), "/readyz");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 500);
  EXPECT_TRUE(EventuallyHealthy((*server)->port()));
}

// A process's own routes (the coordinator's console): served for GET and
// HEAD (headers alone, GET's length), 405 with Allow for anything else,
// 404 where the handler has nothing.
TEST(HttpServerTest, AHandlerServesMoreRoutesForGetAndHeadOnly) {
  MetricsRegistry registry;
  HttpServerOptions options;
  // Written on the server's thread.
  std::mutex mu;
  std::vector<HttpRequest> requests;
  const auto seen = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return requests;
  };
  options.handler = [&](const HttpRequest& request) -> std::optional<HttpResponse> {
    {
      std::lock_guard<std::mutex> lock(mu);
      requests.push_back(request);
    }
    if (request.target.rfind("/page", 0) != 0) return std::nullopt;
    HttpResponse response;
    response.content_type = "text/html; charset=utf-8";
    response.body = "<p>hello</p>";
    response.headers.emplace_back("X-Extra", "yes");
    return response;
  };
  auto server = HttpServer::Start(options, &registry, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  const auto ask = [port](const std::string& bytes) {
    RawConnection connection(port);
    EXPECT_TRUE(connection.connected());
    EXPECT_TRUE(connection.Send(bytes));
    std::string answer;
    EXPECT_TRUE(connection.ReadToEnd(&answer));
    return answer;
  };
  const std::string get = ask("GET /page?token=t HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n");
  EXPECT_THAT(get, ::testing::StartsWith("HTTP/1.1 200 "));
  EXPECT_THAT(get, ::testing::HasSubstr("X-Extra: yes"));
  EXPECT_THAT(get, ::testing::HasSubstr("Content-Type: text/html; charset=utf-8"));
  EXPECT_THAT(get, ::testing::EndsWith("\r\n\r\n<p>hello</p>"));
  ASSERT_FALSE(seen().empty());
  EXPECT_EQ(seen().back().method, "GET");
  EXPECT_EQ(seen().back().target, "/page?token=t");
  EXPECT_EQ(seen().back().authorization, "Bearer abc");
  const std::string head = ask("HEAD /page HTTP/1.1\r\n\r\n");
  EXPECT_THAT(head, ::testing::StartsWith("HTTP/1.1 200 "));
  EXPECT_THAT(head, ::testing::HasSubstr("Content-Length: 12"));
  EXPECT_THAT(head, ::testing::EndsWith("\r\n\r\n"));
  EXPECT_EQ(seen().back().method, "HEAD");
  const size_t asked = seen().size();
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH"}) {
    SCOPED_TRACE(method);
    const std::string refused =
        ask(absl::StrCat(method, " /page HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
    EXPECT_THAT(refused, ::testing::StartsWith("HTTP/1.1 405 "));
    EXPECT_THAT(refused, ::testing::HasSubstr("Allow: GET, HEAD"));
  }
  EXPECT_EQ(seen().size(), asked);  // refused before the handler
  EXPECT_THAT(ask("GET /other HTTP/1.1\r\n\r\n"), ::testing::StartsWith("HTTP/1.1 404 "));
  // The built-in routes stay the server's own.
  EXPECT_THAT(ask("GET /healthz HTTP/1.1\r\n\r\n"), ::testing::EndsWith("ok\n"));
}

TEST(HttpServerTest, RefusesAZeroConnectionCap) {
  MetricsRegistry registry;
  HttpServerOptions options;
  options.max_connections = 0;
  EXPECT_FALSE(HttpServer::Start(options, &registry, nullptr).ok());
}

// A stand-in service: ShardControl.Stop answers OK and does nothing.
class NoopControl final : public ShardControl::CallbackService {
  grpc::ServerUnaryReactor* Stop(grpc::CallbackServerContext* ctx, const StopShardRequest*,
                                 StopShardResponse*) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

// A real gRPC server with the interceptor: counts by method and code, bytes,
// and at debug level one access-log line per call with method, peer, code,
// duration and bytes (never the token).
TEST(RpcMetricsTest, CountsCallsAndWritesTheAccessLogAtDebug) {
  MetricsRegistry registry;
  RpcMetrics rpc_metrics(&registry);
  NoopControl service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(rpc_metrics.NewInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(factories));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto stub = ShardControl::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  const auto call = [&] {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer secret-token-value");
    StopShardRequest request;
    request.set_reason("seven bytes");
    StopShardResponse response;
    return stub->Stop(&ctx, request, &response);
  };

  std::ostringstream log;
  auto logger = std::make_shared<spdlog::logger>(
      "access", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  logger->set_level(spdlog::level::info);
  const grpc::Status quiet = call();
  logger->set_level(spdlog::level::debug);
  const grpc::Status logged = call();
  spdlog::set_default_logger(previous);
  server->Shutdown();
  ASSERT_TRUE(quiet.ok()) << quiet.error_message();
  ASSERT_TRUE(logged.ok()) << logged.error_message();

  // One line, for the call made at debug level only.
  const std::string line = log.str();
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  EXPECT_THAT(line, HasSubstr("rpc method=psd.ShardControl/Stop peer=ipv4:127.0.0.1:"));
  EXPECT_THAT(line, HasSubstr(" code=OK duration_ms="));
  EXPECT_THAT(line, HasSubstr(" bytes_in=13 bytes_out=0"));  // the reason field, framed
  EXPECT_THAT(line, ::testing::Not(HasSubstr("secret-token-value")));
  auto parsed = testing_http::ParseMetrics(registry.Render());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)["psd_rpc_total{method=\"psd.ShardControl/Stop\",code=\"OK\"}"], 2);
  EXPECT_EQ((*parsed)["psd_rpc_duration_seconds_count{method=\"psd.ShardControl/Stop\"}"], 2);
  EXPECT_EQ((*parsed)["psd_rpc_received_bytes_total"], 26);
}

}  // namespace
}  // namespace psd
