// HttpServer: the plain-HTTP endpoint every psd process serves beside gRPC:
// `/metrics` (Prometheus text format), `/healthz` (the process is up) and
// `/readyz` (it serves requests: not starting, not draining).
//
// It binds to loopback only: without TLS, metrics are not exposed beyond the
// host. Scrapes are rare and small, so one thread serves connections one at
// a time with Boost.Beast over a blocking Asio socket.
//
// Thread-safety: Start/Stop from one thread; the handlers run on the
// server's own thread and only read thread-safe state.
#ifndef PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_
#define PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "observability/metrics.h"

namespace psd {

class HttpServer {
 public:
  // `listen` is "127.0.0.1:PORT" (port 0 picks one); a non-loopback
  // address is refused. `ready` answers /readyz.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen,
                                                           const MetricsRegistry* metrics,
                                                           std::function<bool()> ready);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

 private:
  struct State;
  HttpServer(std::unique_ptr<State> state, int port);
  void Serve();

  std::unique_ptr<State> state_;
  const int port_;
  std::thread thread_;
};

}  // namespace psd

#endif  // PSD_SERVER_OBSERVABILITY_HTTP_SERVER_H_
