#include "runtime/serving.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "checkpoint/file_system.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "observability/process_metrics.h"

namespace psd {

absl::Status WritePortFile(const std::string& path, int port) {
  absl::Status s = checkpoint::WriteFileAtomically(checkpoint::FileSystem::Default(), path,
                                                   absl::StrCat(port, "\n"));
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("cannot write port file ", path, ": ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServingEndpoint>> ServingEndpoint::Start(
    const ServingOptions& options, const std::vector<grpc::Service*>& services,
    MetricsRegistry* metrics, std::function<bool()> ready, const std::string& who) {
  const ServingLimits& limits = options.limits;
  if (limits.max_rpc_threads < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": --max-rpc-threads must be >= 2, not ", limits.max_rpc_threads));
  }
  if (limits.max_concurrent_streams < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": --max-concurrent-streams must be >= 1, not ", limits.max_concurrent_streams));
  }
  std::unique_ptr<ServingEndpoint> endpoint(new ServingEndpoint());
  endpoint->rpc_metrics_ = std::make_unique<RpcMetrics>(metrics, options.response_watchers);
  if (options.on_rpc_metrics) options.on_rpc_metrics(endpoint->rpc_metrics_.get());
  AddProcessMetrics(metrics);
  auto credentials = MakeServerCredentials(options.security, options.listen, who);
  if (!credentials.ok()) return credentials.status();

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, &endpoint->port_);
  // gRPC enables SO_REUSEPORT by default: a stale server on the same port
  // would then silently take part of the traffic. Fail the bind instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Bound what a client may have in flight towards us on one stream: with
  // BDP probing the window grows to tens of MiB, all of it buffered in the
  // server while a streamed assign is being staged.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  // Bound the streams one connection may open (gRPC's default is
  // unlimited): each holds a reactor and its buffers in this process.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams);
  // Dead peers are found by pinging (kDefaultKeepaliveSeconds): gRPC's
  // default waits two hours, and stops pinging a connection that sends
  // nothing after two pings.
  const int keepalive_ms = limits.keepalive_seconds * 1000;
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, std::min(keepalive_ms, 10000));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Clients ping too (ClientOptions::keepalive, at least every 5 s) while
  // their calls are open: accepted down to every 4 s on a connection this
  // server sends nothing on. Faster pings still count as gRPC's strikes
  // (GOAWAY after two).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 4000);
  // The synchronous handlers (reflection) get one completion queue with one
  // or two polling threads, and all their threads together are capped by
  // the quota; without it each open reflection stream holds a new thread.
  // (One queue: by default there is one per core, each reserving a thread
  // from the quota at start, and gRPC aborts if the quota cannot cover them.)
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, 1);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 2);
  grpc::ResourceQuota quota(who + " rpc threads");
  quota.SetMaxThreads(limits.max_rpc_threads);
  builder.SetResourceQuota(quota);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(endpoint->rpc_metrics_->NewInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  for (grpc::Service* service : services) builder.RegisterService(service);
  endpoint->server_ = builder.BuildAndStart();
  if (endpoint->server_ == nullptr || endpoint->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(who, ": cannot listen on ", options.listen,
                                               " (address in use or invalid?)"));
  }
  auto fail = [&](absl::Status status) {
    endpoint->server_->Shutdown();
    return status;
  };
  if (!options.http_listen.empty()) {
    HttpServerOptions http_options;
    http_options.listen = options.http_listen;
    http_options.tls_cert = options.security.tls_cert;
    http_options.tls_key = options.security.tls_key;
    http_options.unhealthy_reason = options.unhealthy_reason;
    http_options.handler = options.http_handler;
    http_options.max_connections = limits.http_max_connections;
    auto http = HttpServer::Start(http_options, metrics, std::move(ready));
    if (!http.ok()) {
      return fail(absl::Status(http.status().code(), absl::StrCat(who, ": ", http.status().message())));
    }
    endpoint->http_ = std::move(http).value();
    endpoint->http_url_ =
        absl::StrCat(http_options.tls() ? "https://" : "http://",
                     options.http_listen.substr(0, options.http_listen.rfind(':')), ":",
                     endpoint->http_->port());
    if (!options.http_port_file.empty()) {
      absl::Status s = WritePortFile(options.http_port_file, endpoint->http_->port());
      if (!s.ok()) return fail(s);
    }
  }
  // Last: launchers and tests take the port file for "serving", so every
  // endpoint is up once it exists (/metrics was not, for a moment, when it
  // came first).
  if (!options.port_file.empty()) {
    absl::Status s = WritePortFile(options.port_file, endpoint->port_);
    if (!s.ok()) return fail(s);
  }
  return endpoint;
}

ServingEndpoint::~ServingEndpoint() {
  http_.reset();
  if (server_ != nullptr) server_->Shutdown();
}

}  // namespace psd
