#include "psd/internal/coordinator_client.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "psd/grpc_status.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/random_id.h"

namespace psd {
namespace client {
namespace internal {

bool RetryPolicy::Retryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded;
}

absl::Duration RetryPolicy::Backoff(int retry) const {
  absl::Duration backoff = initial_backoff;
  for (int i = 1; i < retry && backoff < max_backoff; ++i) backoff *= 2;
  backoff = std::min(backoff, max_backoff);
  // 53 random bits: a uniform fraction in [0, 1).
  const double fraction = static_cast<double>(RandomNonzeroId() >> 11) * 0x1p-53;
  return backoff * (0.5 + 0.5 * fraction);
}

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Create(
    const std::string& address, const CoordinatorClientOptions& options) {
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
  const absl::Time give_up = absl::Now() + call.retry_budget;
  for (int retry = 1;; ++retry) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + call.timeout));
    ctx.set_wait_for_ready(call.wait_for_ready);
    absl::Status s = FromGrpcStatus(attempt(&ctx));
    if (s.ok()) return s;
    const absl::Duration pause = options_.retry.Backoff(retry);
    if (!RetryPolicy::Retryable(s) || absl::Now() + pause > give_up) {
      return absl::Status(s.code(), absl::StrCat("coordinator ", address_, ": ", s.message()));
    }
    absl::SleepFor(pause);
  }
}

}  // namespace internal
}  // namespace client
}  // namespace psd
