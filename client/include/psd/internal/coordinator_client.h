// CoordinatorClient: the one way the client library (Session, Saver) and
// psctl call the coordinator. It owns the channel (TLS and bearer token from
// ChannelSecurity, the message limit, quick reconnects after a coordinator
// restart), the stub, the deadline of each attempt and one retry policy.
// Internal: it carries gRPC, which the public headers in psd/ keep out.
//
//   CoordinatorClientOptions options;
//   options.security = security;
//   options.call.retry_budget = absl::Seconds(30);
//   PSD_ASSIGN_OR_RETURN(auto coordinator, CoordinatorClient::Create(address, options));
//   ListShardsResponse resp;
//   PSD_RETURN_IF_ERROR(coordinator->Call(&Coordinator::Stub::ListShards,
//                                         ListShardsRequest(), &resp));
//
// Retries follow the library's one retry rule (client/src/retry_policy.h):
// UNAVAILABLE (the coordinator is down, restarting or shutting down, or a
// shard it needs is not there yet) and DEADLINE_EXCEEDED are retried while
// the call's retry budget lasts, with exponential backoff and jitter;
// nothing else is retried. A budget of zero is one attempt. A retried
// request may have been applied already: requests that change state must
// say which attempt is a repeat (Session's request_seq) or be harmless to
// repeat (a save to the same prefix, a restore).
//
// Errors keep their code and name the coordinator:
// "coordinator HOST:PORT: <message>", and " (after N attempts)" when the
// call was retried.
//
// Thread-safety: thread-safe; calls may run concurrently.
#ifndef PSD_CLIENT_INCLUDE_PSD_INTERNAL_COORDINATOR_CLIENT_H_
#define PSD_CLIENT_INCLUDE_PSD_INTERNAL_COORDINATOR_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "psd/channel_security.h"
#include "psd/coordinator.grpc.pb.h"

namespace psd {
namespace client {
namespace internal {

// How one call runs.
struct CallOptions {
  // Deadline of one attempt.
  absl::Duration timeout = absl::Seconds(30);
  // Retryable failures are retried for this long after the first attempt
  // began; zero: one attempt.
  absl::Duration retry_budget = absl::ZeroDuration();
  // An attempt waits (within `timeout`) for the coordinator to accept a
  // connection instead of failing UNAVAILABLE at once.
  bool wait_for_ready = false;
};

struct CoordinatorClientOptions {
  ChannelSecurity security;
  // Largest message sent or received (a large registry's listing).
  int max_message_bytes = 64 << 20;
  // What Call does without CallOptions of its own.
  CallOptions call;
  // The pause before the n-th retry is a random time in [b/2, b] with
  // b = min(initial_backoff * 2^(n-1), max_backoff).
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
};

class CoordinatorClient {
 public:
  template <typename Req, typename Resp>
  using Method = grpc::Status (Coordinator::Stub::*)(grpc::ClientContext*, const Req&, Resp*);

  // Builds the channel; fails only when `options.security` names files
  // that cannot be used (nothing is connected yet).
  static absl::StatusOr<std::unique_ptr<CoordinatorClient>> Create(
      const std::string& address, const CoordinatorClientOptions& options);

  CoordinatorClient(const CoordinatorClient&) = delete;
  CoordinatorClient& operator=(const CoordinatorClient&) = delete;

  // One RPC under the policy above, with the client's CallOptions or `call`.
  template <typename Req, typename Resp>
  absl::Status Call(Method<Req, Resp> method, const Req& request, Resp* response) const {
    return Call(method, request, response, options_.call);
  }
  template <typename Req, typename Resp>
  absl::Status Call(Method<Req, Resp> method, const Req& request, Resp* response,
                    const CallOptions& call) const {
    return Run(call, [&](grpc::ClientContext* ctx) {
      return (stub_.get()->*method)(ctx, request, response);
    });
  }

  const std::string& address() const { return address_; }
  const CoordinatorClientOptions& options() const { return options_; }

 private:
  CoordinatorClient(std::string address, CoordinatorClientOptions options,
                    std::unique_ptr<Coordinator::Stub> stub)
      : address_(std::move(address)), options_(std::move(options)), stub_(std::move(stub)) {}

  // The retry loop: `attempt` issues the RPC on a context whose deadline
  // and wait-for-ready are set.
  absl::Status Run(const CallOptions& call,
                   const std::function<grpc::Status(grpc::ClientContext*)>& attempt) const;

  const std::string address_;
  const CoordinatorClientOptions options_;
  const std::unique_ptr<Coordinator::Stub> stub_;
};

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_INCLUDE_PSD_INTERNAL_COORDINATOR_CLIENT_H_
