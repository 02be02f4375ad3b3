#include "observability/rpc_metrics.h"

#include <algorithm>
#include <chrono>
#include <new>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/descriptor.h"
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

// Memory for interceptors. gRPC news one interceptor per call and deletes
// it when the call ends; recycling the blocks keeps a small op's call free of
// heap allocations on psd's side. At most kMaxIdle blocks are kept.
class InterceptorBlocks {
 public:
  static void* Take(size_t size) {
    InterceptorBlocks& self = Get();
    {
      absl::MutexLock lock(&self.mu_);
      if (!self.idle_.empty()) {
        void* block = self.idle_.back();
        self.idle_.pop_back();
        return block;
      }
    }
    return ::operator new(size);
  }
  static void Give(void* block) {
    InterceptorBlocks& self = Get();
    {
      absl::MutexLock lock(&self.mu_);
      if (self.idle_.size() < kMaxIdle) {
        self.idle_.push_back(block);
        return;
      }
    }
    ::operator delete(block);
  }

 private:
  static constexpr size_t kMaxIdle = 1024;
  static InterceptorBlocks& Get() {
    // Never destroyed: calls may still end while the process exits.
    static InterceptorBlocks* blocks = new InterceptorBlocks();
    return *blocks;
  }
  InterceptorBlocks() {
    absl::MutexLock lock(&mu_);
    idle_.reserve(kMaxIdle);
  }
  absl::Mutex mu_;
  std::vector<void*> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

using grpc::experimental::InterceptionHookPoints;

class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  // `method` without its leading '/'.
  RpcMetricsInterceptor(RpcMetrics* metrics, absl::string_view method,
                        grpc::ServerContextBase* context)
      : metrics_(metrics),
        series_(metrics->SeriesFor(method)),
        context_(context),
        start_(std::chrono::steady_clock::now()) {}

  // Every block has this (final) class's size.
  static void* operator new(size_t size) { return InterceptorBlocks::Take(size); }
  static void operator delete(void* block) { InterceptorBlocks::Give(block); }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      const void* message = methods->GetRecvMessage();
      if (message != nullptr && series_->received != RpcMetrics::MethodSeries::Received::kUnknown) {
        const size_t n =
            series_->received == RpcMetrics::MethodSeries::Received::kByteBuffer
                ? static_cast<const grpc::ByteBuffer*>(message)->Length()
                : static_cast<const google::protobuf::MessageLite*>(message)->ByteSizeLong();
        metrics_->bytes_in_->Increment(static_cast<double>(n));
        bytes_in_ += n;
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      if (const grpc::ByteBuffer* buffer = methods->GetSerializedSendMessage()) {
        metrics_->bytes_out_->Increment(static_cast<double>(buffer->Length()));
        bytes_out_ += buffer->Length();
        if (series_->watcher != nullptr) (*series_->watcher)(*buffer);
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->CallsFor(series_, status.error_code())->Increment();
      if (series_->latency != nullptr) series_->latency->Observe(seconds);
      if (spdlog::should_log(spdlog::level::debug)) {
        // The access log. Never the request's metadata: it carries the token.
        spdlog::debug("rpc method={} peer={} code={} duration_ms={:.3f} bytes_in={} bytes_out={}",
                      series_->method, context_ != nullptr ? context_->peer() : "unknown",
                      CodeName(status.error_code()), seconds * 1e3, bytes_in_, bytes_out_);
      }
    }
    methods->Proceed();
  }

 private:
  RpcMetrics* const metrics_;
  RpcMetrics::MethodSeries* const series_;
  grpc::ServerContextBase* const context_;
  const std::chrono::steady_clock::time_point start_;
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
    absl::string_view method = info->method() != nullptr ? info->method() : "unknown";
    if (absl::StartsWith(method, "/")) method.remove_prefix(1);
    return new RpcMetricsInterceptor(metrics_, method, info->server_context());
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

// How `method` ("package.Service/Method") receives its messages: psd's
// raw stream methods as grpc::ByteBuffers, psd's other methods as the
// protobuf messages of their generated services; any other method (gRPC's
// health and reflection services, an unknown path) is not interpreted.
RpcMetrics::MethodSeries::Received RpcMetrics::ReceivedKind(absl::string_view method) {
  using Received = RpcMetrics::MethodSeries::Received;
  if (!absl::StartsWith(method, "psd.")) return Received::kUnknown;
  if (IsRawStreamMethod(method)) return Received::kByteBuffer;
  std::string dotted(method);
  std::replace(dotted.begin(), dotted.end(), '/', '.');
  if (google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(dotted) == nullptr) {
    return Received::kUnknown;
  }
  return Received::kProto;
}

RpcMetrics::MethodSeries* RpcMetrics::SeriesFor(absl::string_view method) {
  {
    absl::ReaderMutexLock lock(&methods_mu_);
    auto it = methods_.find(method);
    if (it != methods_.end()) return it->second.get();
  }
  absl::MutexLock lock(&methods_mu_);
  // Method names come from callers, unknown ones included: past a bound
  // they share one series, so made-up paths cannot grow the metrics.
  if (methods_.size() >= kMaxMethodSeries && methods_.find(method) == methods_.end()) {
    method = kOtherMethods;
  }
  auto& slot = methods_[std::string(method)];
  if (slot == nullptr) {
    slot = std::make_unique<MethodSeries>();
    slot->method = std::string(method);
    slot->received = ReceivedKind(method);
    auto watcher = watchers_.find(slot->method);
    if (watcher != watchers_.end()) slot->watcher = &watcher->second;
    // A client keeps its Batch stream (the data stream) open for its whole
    // life; the ops in it are timed one by one (RecordOp).
    if (slot->method != "psd.Shard/Batch") slot->latency = latency_->Get({slot->method});
  }
  return slot.get();
}

void RpcMetrics::RecordOp(absl::string_view method, int code, double seconds) {
  MethodSeries* series = SeriesFor(method);
  CallsFor(series, code)->Increment();
  if (series->latency != nullptr) series->latency->Observe(seconds);
}

Counter* RpcMetrics::CallsFor(MethodSeries* series, int code) {
  if (code < 0 || code >= static_cast<int>(series->calls.size())) {
    return calls_->Get({series->method, CodeName(static_cast<grpc::StatusCode>(code))});
  }
  std::atomic<Counter*>& slot = series->calls[code];
  Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    // Racing first calls get the same series from the family.
    counter = calls_->Get({series->method, CodeName(static_cast<grpc::StatusCode>(code))});
    slot.store(counter, std::memory_order_release);
  }
  return counter;
}

std::vector<RpcMetrics::Totals> RpcMetrics::TotalsByGroup(
    size_t groups, const std::function<int(const std::string& method)>& group_of) const {
  std::vector<Totals> out(groups);
  // Every group reports every bucket, zeros until a call lands in it.
  for (Totals& t : out) t.latency_buckets.assign(LatencyBuckets().size() + 1, 0);
  const auto group = [&](const std::string& method) -> Totals* {
    const int g = group_of(method);
    return g >= 0 && static_cast<size_t>(g) < groups ? &out[g] : nullptr;
  };
  calls_->ForEach([&](const std::vector<std::string>& labels, const Counter& counter) {
    // Labels: method, code.
    Totals* t = labels.size() == 2 ? group(labels[0]) : nullptr;
    if (t == nullptr) return;
    t->calls += counter.value();
    if (labels[1] != "OK") t->failed += counter.value();
  });
  std::vector<uint64_t> cumulative;
  latency_->ForEach([&](const std::vector<std::string>& labels, const Histogram& histogram) {
    Totals* t = labels.size() == 1 ? group(labels[0]) : nullptr;
    if (t == nullptr) return;
    double sum;
    uint64_t count;
    histogram.Read(&cumulative, &sum, &count);
    if (t->latency_buckets.size() < cumulative.size()) t->latency_buckets.resize(cumulative.size());
    for (size_t i = 0; i < cumulative.size(); ++i) t->latency_buckets[i] += cumulative[i];
  });
  return out;
}

double RpcMetrics::seconds_counting() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::NewInterceptorFactory() {
  return std::make_unique<Factory>(this);
}

}  // namespace psd
