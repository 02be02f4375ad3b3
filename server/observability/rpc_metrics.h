// RpcMetrics: per-method RPC counts (by status code), latency histograms and
// bytes in and out for every gRPC service of a server, gathered by a server
// interceptor so services need no instrumentation of their own. The same
// interceptor writes the access log: at debug level, one line per RPC with
// its method, peer, status code, duration and bytes each way, as key=value
// pairs. Response watchers let a process derive metrics from what one
// method answers (a shard's Unfence reports how long writes were held)
// without touching the service.
//
// Thread-safety: thread-safe; the families live in the registry, the
// watchers are fixed at construction.
#ifndef PSD_SERVER_OBSERVABILITY_RPC_METRICS_H_
#define PSD_SERVER_OBSERVABILITY_RPC_METRICS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/server_interceptor.h"
#include "observability/metrics.h"

namespace psd {

// Called with each response message of one method, serialized; runs on the
// RPC's thread, so it must be cheap.
using ResponseWatcher = std::function<void(const grpc::ByteBuffer& response)>;

// A watcher that parses the response as `Response` first.
template <typename Response>
ResponseWatcher WatchResponse(std::function<void(const Response&)> fn) {
  return [fn = std::move(fn)](const grpc::ByteBuffer& buffer) {
    grpc::ByteBuffer copy(buffer);  // parsing consumes the buffer; the copy shares its slices
    grpc::ProtoBufferReader reader(&copy);
    Response response;
    if (response.ParseFromZeroCopyStream(&reader)) fn(response);
  };
}

class RpcMetrics {
 public:
  // `watchers` by method ("psd.Shard/Unfence", without the leading '/').
  explicit RpcMetrics(MetricsRegistry* registry,
                      std::map<std::string, ResponseWatcher> watchers = {});

  // Pass to ServerBuilder::experimental().SetInterceptorCreators().
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

  // Counts an op that ran inside a stream (one op of a Batch message) as a
  // call of `method` ("psd.Shard/Assign") with status `code` that took
  // `seconds`, so an op is counted and timed alike however it came. The
  // stream itself is counted when it ends, but its latency (its lifetime)
  // is not observed.
  void RecordOp(absl::string_view method, int code, double seconds);

  // The served calls of a group of methods, summed from the series /metrics
  // renders (psd_rpc_total, psd_rpc_duration_seconds), so a digest of them
  // agrees with a scrape.
  struct Totals {
    double calls = 0;
    double failed = 0;  // ended with a status other than OK
    // Cumulative counts at each bound of LatencyBuckets(), then +Inf,
    // summed over the group's methods that have a latency histogram (all
    // zeros when none has).
    std::vector<uint64_t> latency_buckets;
  };
  // One Totals per group, `groups` of them; `group_of(method)` says which
  // group a method ("psd.Shard/Read") counts in, a negative or too large
  // one: none. Takes each family's lock once; for a periodic report (a
  // heartbeat), not the data path.
  std::vector<Totals> TotalsByGroup(
      size_t groups, const std::function<int(const std::string& method)>& group_of) const;
  // psd_rpc_received_bytes_total and psd_rpc_sent_bytes_total.
  double received_bytes() const { return bytes_in_->value(); }
  double sent_bytes() const { return bytes_out_->value(); }
  // Seconds since these counters started (construction: the server's start).
  double seconds_counting() const;

 private:
  friend class RpcMetricsInterceptor;

  // One method's series, looked up once per method instead of by label
  // values on every call (a small op's RPC is a few microseconds).
  struct MethodSeries {
    std::string method;
    // What a received message is, which decides how its size is taken.
    // Only psd's own methods are known: gRPC's services (health checking,
    // reflection) and anything else pass messages of types psd cannot
    // name, so their received bytes are not counted.
    enum class Received { kUnknown, kProto, kByteBuffer };
    Received received = Received::kUnknown;
    const ResponseWatcher* watcher = nullptr;
    // Null for a long-lived stream, whose lifetime is no latency.
    Histogram* latency = nullptr;
    // By status code (0..16), created on first use.
    std::array<std::atomic<Counter*>, 17> calls{};
  };
  // `method` without its leading '/'. Never null; lives as long as this.
  MethodSeries* SeriesFor(absl::string_view method);
  static MethodSeries::Received ReceivedKind(absl::string_view method);
  Counter* CallsFor(MethodSeries* series, int code);

  // Distinct method series kept; later methods are counted as kOtherMethods.
  static constexpr size_t kMaxMethodSeries = 256;
  static constexpr absl::string_view kOtherMethods = "other";

  Family<Counter>* const calls_;
  Family<Histogram>* const latency_;
  Counter* const bytes_in_;
  Counter* const bytes_out_;
  const std::map<std::string, ResponseWatcher> watchers_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  absl::Mutex methods_mu_;
  std::map<std::string, std::unique_ptr<MethodSeries>, std::less<>> methods_
      ABSL_GUARDED_BY(methods_mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_OBSERVABILITY_RPC_METRICS_H_
