#include "observability/rpc_metrics.h"

#include <chrono>
#include <string>

#include "google/protobuf/message_lite.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "psd/stream_codec.h"
#include "spdlog/spdlog.h"

namespace psd {

namespace {

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

}  // namespace

using grpc::experimental::InterceptionHookPoints;

class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(RpcMetrics* metrics, std::string method,
                        grpc::ServerContextBase* context)
      : metrics_(metrics),
        method_(std::move(method)),
        context_(context),
        start_(std::chrono::steady_clock::now()),
        raw_(IsRawStreamMethod(method_)) {
    auto it = metrics_->watchers_.find(method_);
    if (it != metrics_->watchers_.end()) watcher_ = &it->second;
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      if (const void* message = methods->GetRecvMessage()) {
        // Raw methods receive grpc::ByteBuffers, the others protobufs.
        const size_t n =
            raw_ ? static_cast<const grpc::ByteBuffer*>(message)->Length()
                 : static_cast<const google::protobuf::MessageLite*>(message)->ByteSizeLong();
        metrics_->bytes_in_->Increment(static_cast<double>(n));
        bytes_in_ += n;
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      if (const grpc::ByteBuffer* buffer = methods->GetSerializedSendMessage()) {
        metrics_->bytes_out_->Increment(static_cast<double>(buffer->Length()));
        bytes_out_ += buffer->Length();
        if (watcher_ != nullptr) (*watcher_)(*buffer);
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      const char* code = CodeName(status.error_code());
      metrics_->calls_->Get({method_, code})->Increment();
      metrics_->latency_->Get({method_})->Observe(seconds);
      if (spdlog::should_log(spdlog::level::debug)) {
        // The access log. Never the request's metadata: it carries the token.
        spdlog::debug("rpc method={} peer={} code={} duration_ms={:.3f} bytes_in={} bytes_out={}",
                      method_, context_ != nullptr ? context_->peer() : "unknown", code,
                      seconds * 1e3, bytes_in_, bytes_out_);
      }
    }
    methods->Proceed();
  }

 private:
  RpcMetrics* const metrics_;
  const std::string method_;
  grpc::ServerContextBase* const context_;
  const std::chrono::steady_clock::time_point start_;
  const bool raw_;
  const ResponseWatcher* watcher_ = nullptr;
  // Hooks of one call run one at a time.
  uint64_t bytes_in_ = 0;
  uint64_t bytes_out_ = 0;
};

namespace {

class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    std::string method = info->method() != nullptr ? info->method() : "unknown";
    if (!method.empty() && method[0] == '/') method.erase(0, 1);
    return new RpcMetricsInterceptor(metrics_, std::move(method), info->server_context());
  }

 private:
  RpcMetrics* const metrics_;
};

}  // namespace

RpcMetrics::RpcMetrics(MetricsRegistry* registry, std::map<std::string, ResponseWatcher> watchers)
    : calls_(registry->CounterFamily("psd_rpc_total", "RPCs served, by method and status code",
                                     {"method", "code"})),
      latency_(registry->HistogramFamily("psd_rpc_duration_seconds",
                                         "RPC latency from receipt to status, by method",
                                         {"method"}, LatencyBuckets())),
      bytes_in_(registry->CounterFamily("psd_rpc_received_bytes_total",
                                        "Request message bytes received")
                    ->Get({})),
      bytes_out_(registry->CounterFamily("psd_rpc_sent_bytes_total", "Response message bytes sent")
                     ->Get({})),
      watchers_(std::move(watchers)) {}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::NewInterceptorFactory() {
  return std::make_unique<Factory>(this);
}

}  // namespace psd
