// Serving: what every psd server process sets up around its gRPC services,
// in one place: the gRPC server with psd's settings (SO_REUSEPORT off so a
// second server on a port fails loudly, configured message limits, gRPC
// health checking and reflection, per-RPC metrics and the access log), the
// port file for launchers and tests, and the HTTP endpoint for /metrics,
// /healthz and /readyz: HTTPS with the server's own certificate when TLS is
// configured, otherwise plain HTTP on loopback only.
//
// Threads. psd's own services and gRPC's health service use gRPC's callback
// API: their reactions run on gRPC's internal threads, fixed in number from
// the core count and never one per call (gRPC 1.51 on Linux: the callback
// queue's "nexting" threads, half the cores clamped to [2, 16], and iomgr's
// executor, at most two per core; `cat /proc/PID/task/*/comm` shows them).
// Only gRPC's reflection service is synchronous: each of its calls (a
// bidirectional stream a client keeps open as long as it likes) holds a
// thread of the synchronous thread manager, which creates a thread per
// waiting call unless a ResourceQuota caps it. `max_rpc_threads` is that
// cap; a synchronous call arriving when every thread is taken fails at once
// with RESOURCE_EXHAUSTED.
#ifndef PSD_SERVER_RUNTIME_SERVING_H_
#define PSD_SERVER_RUNTIME_SERVING_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "observability/http_server.h"
#include "observability/metrics.h"
#include "observability/rpc_metrics.h"
#include "runtime/auth.h"

namespace psd {

// The serving endpoint's named limits (configs/README.md, "Limits").
// Threads of the synchronous handlers (gRPC reflection; see above).
inline constexpr int kDefaultMaxRpcThreads = 16;
// Concurrent gRPC calls (HTTP/2 streams) one connection may have open; a
// client's calls beyond it wait in its channel until one finishes.
inline constexpr int kDefaultMaxConcurrentStreams = 1024;
// A connection with calls open and nothing received for this long is
// pinged; one that does not answer within min(this, 10 s) is closed and its
// calls end (a peer that vanished without closing its socket: a power cut,
// a partition, a reset the transport did not see), so no call waits on it
// until its deadline, or forever without one.
inline constexpr int kDefaultKeepaliveSeconds = 20;

struct ServingLimits {
  int http_max_connections = kDefaultHttpMaxConnections;      // HttpServerOptions::max_connections
  int max_rpc_threads = kDefaultMaxRpcThreads;                // >= 2
  int max_concurrent_streams = kDefaultMaxConcurrentStreams;  // >= 1
  int keepalive_seconds = kDefaultKeepaliveSeconds;            // >= 1
};

struct ServingOptions {
  std::string listen;  // HOST:PORT; port 0 picks a free one
  int max_message_bytes = 512 << 20;
  std::string port_file;  // the gRPC port, written once every endpoint is up
  // HOST:PORT of /metrics, /healthz, /readyz; empty: none. Loopback only
  // unless `security` has a certificate (then HTTPS, any address).
  std::string http_listen;
  std::string http_port_file;  // the HTTP port is written here after binding
  ServerSecurity security;     // TLS and tokens (runtime/auth.h); default: plaintext, no tokens
  // Metrics derived from one method's responses (rpc_metrics.h), by method.
  std::map<std::string, ResponseWatcher> response_watchers;
  // Called with the server's RPC metrics before it starts serving, for a
  // service that records ops run inside streams (RpcMetrics::RecordOp).
  std::function<void(RpcMetrics*)> on_rpc_metrics;
  // Answers /healthz (HttpServerOptions::unhealthy_reason); null: healthy.
  std::function<std::string()> unhealthy_reason;
  // More HTTP routes (HttpServerOptions::handler); null: none.
  HttpHandler http_handler;
  ServingLimits limits;
};

// The ServingOptions every server process fills alike from its own options
// (ShardServerOptions, CoordinatorServerOptions: the fields of the same
// names); the process adds what is its own (watchers, health).
template <typename ProcessOptions>
ServingOptions ServingOptionsFrom(const std::string& listen, const ProcessOptions& options) {
  ServingOptions serving;
  serving.listen = listen;
  serving.max_message_bytes = options.max_message_bytes;
  serving.port_file = options.port_file;
  serving.http_listen = options.http_listen;
  serving.http_port_file = options.http_port_file;
  serving.security = options.security;
  serving.limits = options.limits;
  return serving;
}

class ServingEndpoint {
 public:
  // Starts serving `services` (which must outlive the endpoint). `ready`
  // answers /readyz; `who` names the process in messages ("shard 3").
  static absl::StatusOr<std::unique_ptr<ServingEndpoint>> Start(
      const ServingOptions& options, const std::vector<grpc::Service*>& services,
      MetricsRegistry* metrics, std::function<bool()> ready, const std::string& who);
  ~ServingEndpoint();

  grpc::Server* server() { return server_.get(); }
  int port() const { return port_; }
  int http_port() const { return http_ != nullptr ? http_->port() : 0; }
  // "http://127.0.0.1:PORT" or "https://HOST:PORT"; "" without the endpoint.
  std::string http_url() const { return http_url_; }

 private:
  ServingEndpoint() = default;

  std::unique_ptr<RpcMetrics> rpc_metrics_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HttpServer> http_;
  std::string http_url_;
  int port_ = 0;
};

// Writes `port` and a newline to `path` with checkpoint::WriteFileAtomically
// (a temp file beside it, fsync, rename, directory fsync): launchers and
// tests poll for `path`, and never see it empty or with a partial number.
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace psd

#endif  // PSD_SERVER_RUNTIME_SERVING_H_
