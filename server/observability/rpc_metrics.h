// RpcMetrics: per-method RPC counts (by status code), latency histograms and
// bytes in and out for every gRPC service of a server, gathered by a server
// interceptor so services need no instrumentation of their own.
//
// Thread-safety: thread-safe; the families live in the registry.
#ifndef PSD_SERVER_OBSERVABILITY_RPC_METRICS_H_
#define PSD_SERVER_OBSERVABILITY_RPC_METRICS_H_

#include <memory>

#include "grpcpp/support/server_interceptor.h"
#include "observability/metrics.h"

namespace psd {

class RpcMetrics {
 public:
  explicit RpcMetrics(MetricsRegistry* registry);

  // Pass to ServerBuilder::experimental().SetInterceptorCreators().
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

 private:
  friend class RpcMetricsInterceptor;
  Family<Counter>* const calls_;
  Family<Histogram>* const latency_;
  Counter* const bytes_in_;
  Counter* const bytes_out_;
};

}  // namespace psd

#endif  // PSD_SERVER_OBSERVABILITY_RPC_METRICS_H_
