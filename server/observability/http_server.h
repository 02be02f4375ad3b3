// HttpServer: the HTTP endpoint every psd process serves beside gRPC:
// `/metrics` (Prometheus text format), `/healthz` (the process is up) and
// `/readyz` (it serves requests: not starting, not draining).
//
// Two modes. Without TLS it binds to loopback only, so metrics are never
// exposed in clear text beyond the host. With a certificate and key (the
// process's gRPC server certificate) it serves HTTPS and may bind any
// address, which is what probes and scrapers on other hosts need. Client
// certificates are not asked for: kubelet probes cannot present one, and
// nothing served here changes state.
//
// One thread runs an Asio io_context with Boost.Beast; every connection has
// a deadline (handshake, request and response together), so a client that
// connects and stalls cannot hold the endpoint.
//
// Thread-safety: Start and the destructor from one thread; the handlers run
// on the server's own thread and only read thread-safe state (the metrics
// registry and the `ready` callback must be safe to call from it).
#ifndef PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_
#define PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "observability/metrics.h"

namespace psd {

struct HttpServerOptions {
  // HOST:PORT (port 0 picks one). Without TLS, a loopback address only.
  std::string listen = "127.0.0.1:0";
  // PEM files; both set: HTTPS.
  std::string tls_cert;
  std::string tls_key;
  // Longest a connection may take from accept to the end of the response.
  double connection_timeout_seconds = 10;
  // Why the process is unhealthy, answered by /healthz as 503; empty (or no
  // function): healthy. Called on the server's thread: must be thread-safe.
  std::function<std::string()> unhealthy_reason;

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
