// HttpServer: the HTTP endpoint every psd process serves beside gRPC:
// `/metrics` (Prometheus text format), `/healthz` (the process is up) and
// `/readyz` (it serves requests: not starting, not draining), plus whatever
// a process adds with a handler (the coordinator's console). Only GET and
// HEAD are served (anything else is 405): nothing here changes state.
//
// Two modes. Without TLS it binds to loopback only, so metrics are never
// exposed in clear text beyond the host. With a certificate and key (the
// process's gRPC server certificate) it serves HTTPS and may bind any
// address, which is what probes and scrapers on other hosts need. Client
// certificates are not asked for: kubelet probes cannot present one, and
// nothing served here changes state.
//
// One thread runs an Asio io_context with Boost.Beast. The endpoint is
// bounded so that no client can take the process's file descriptors or CPU
// with it:
// - at most `max_connections` connections are open at once; one accepted
//   past the cap is closed at once (the client sees the connection close
//   without a response), so the slots held by others are not starved and
//   no descriptor is kept for it;
// - every connection serves one request and closes; reading it ([TLS
//   handshake,] request line, headers and body) has one deadline from accept
//   (`read_timeout_seconds`, which also bounds an idle connection and a
//   client that sends a byte at a time), writing the answer another
//   (`write_timeout_seconds`);
// - the request's header and body sizes are bounded (431 and 413 past them),
//   and any bytes that are not a request get a 400; a handler that throws
//   answers 500;
// - when accept fails for lack of descriptors or memory (EMFILE, ENFILE,
//   ENOBUFS, ENOMEM) the acceptor waits `kAcceptRetryDelay` before trying
//   again instead of spinning on the pending connection, and logs once per
//   burst.
//
// Thread-safety: Start and the destructor from one thread; the handlers run
// on the server's own thread and only read thread-safe state (the metrics
// registry and the `ready` callback must be safe to call from it).
#ifndef PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_
#define PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "observability/metrics.h"

namespace psd {

// The HTTP endpoint's named limits (configs/README.md, "Limits").
// Connections served at once; more are closed on accept. Flag
// --http-max-connections, key http_max_connections.
inline constexpr int kDefaultHttpMaxConnections = 64;
// From accept to the end of the request (TLS handshake included).
inline constexpr double kDefaultHttpReadTimeoutSeconds = 5;
// For writing the response (and the TLS close).
inline constexpr double kDefaultHttpWriteTimeoutSeconds = 10;
// The request line and headers together, and the body (GET has none).
inline constexpr int kHttpMaxHeaderBytes = 8 << 10;
inline constexpr int kHttpMaxBodyBytes = 4 << 10;
// How long the acceptor waits after running out of descriptors.
inline constexpr std::chrono::milliseconds kAcceptRetryDelay{100};

// A request as a handler (HttpServerOptions::handler) sees it.
struct HttpRequest {
  std::string method;         // "GET" or "HEAD"
  std::string target;         // path and query: "/console.json?token=..."
  std::string authorization;  // the Authorization header; empty when absent
};

// A handler's answer. For HEAD the server sends the headers alone.
struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // more headers
};

// Answers the targets the server does not serve itself (every one but
// /metrics, /healthz and /readyz); nullopt: 404. Runs on the server's
// thread: it must be thread-safe and should be quick (it holds up the
// endpoint's other requests while it runs).
using HttpHandler = std::function<std::optional<HttpResponse>(const HttpRequest&)>;

struct HttpServerOptions {
  // HOST:PORT (port 0 picks one). Without TLS, a loopback address only.
  std::string listen = "127.0.0.1:0";
  // PEM files; both set: HTTPS.
  std::string tls_cert;
  std::string tls_key;
  // Connections open at once (>= 1).
  int max_connections = kDefaultHttpMaxConnections;
  double read_timeout_seconds = kDefaultHttpReadTimeoutSeconds;
  double write_timeout_seconds = kDefaultHttpWriteTimeoutSeconds;
  // Why the process is unhealthy, answered by /healthz as 503; empty (or no
  // function): healthy. Called on the server's thread: must be thread-safe.
  std::function<std::string()> unhealthy_reason;
  // More routes; null: none.
  HttpHandler handler;

  bool tls() const { return !tls_cert.empty(); }
};

class HttpServer {
 public:
  // `ready` answers /readyz (null: always ready).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           const MetricsRegistry* metrics,
                                                           std::function<bool()> ready);
  // Plain HTTP on loopback `listen`.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen,
                                                           const MetricsRegistry* metrics,
                                                           std::function<bool()> ready);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  bool tls() const { return tls_; }

  struct State;  // the io_context, acceptor and handlers' shared state (internal)

 private:
  HttpServer(std::unique_ptr<State> state, int port, bool tls);

  std::unique_ptr<State> state_;
  const int port_;
  const bool tls_;
  std::thread thread_;
};

}  // namespace psd

#endif  // PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_
