#include "psd/internal/coordinator_client.h"

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "psd/grpc_status.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/status.h"
#include "retry_policy.h"

namespace psd {
namespace client {
namespace internal {

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Create(
    const std::string& address, const CoordinatorClientOptions& options) {
  PSD_RETURN_IF_ERROR(psd::internal::CheckDialTarget(address, "coordinator"));
  auto credentials = psd::internal::MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  // Reconnect quickly after a coordinator restart (gRPC's default backoff
  // grows to two minutes).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  auto stub = Coordinator::NewStub(grpc::CreateCustomChannel(address, *credentials, args));
  return std::unique_ptr<CoordinatorClient>(
      new CoordinatorClient(address, options, std::move(stub)));
}

absl::Status CoordinatorClient::Run(
    const CallOptions& call,
    const std::function<grpc::Status(grpc::ClientContext*)>& attempt) const {
  ClientOptions rule;
  rule.max_attempts = std::numeric_limits<int>::max();  // the budget bounds them
  rule.initial_backoff = options_.initial_backoff;
  rule.max_backoff = options_.max_backoff;
  rule.retry_budget = call.retry_budget;
  absl::Status s = RetryPolicy(rule).Run([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + call.timeout));
    ctx.set_wait_for_ready(call.wait_for_ready);
    return FromGrpcStatus(attempt(&ctx));
  });
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("coordinator ", address_, ": ", s.message()));
}

}  // namespace internal
}  // namespace client
}  // namespace psd
