#include "retry_policy.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "request_ids.h"

namespace psd {
namespace client {
namespace internal {

namespace {

// Uniform in [0, 1); per thread so retries never contend on a generator.
double Random01() {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(gen);
}

}  // namespace

bool RetryPolicy::IsRetryable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded;
}

bool RetryPolicy::IsTooOld(const absl::Status& s) {
  return s.code() == absl::StatusCode::kAborted &&
         s.message().find("request id too old") != absl::string_view::npos;
}

RetryPolicy::Next RetryPolicy::OnFailure(const absl::Status& s, RequestId* id,
                                         RetryState* state) const {
  Next next;
  if (id != nullptr && state->first_of_id && IsTooOld(s) && !state->id_resent &&
      state->id_refreshes < kMaxIdRefreshes) {
    RenumberRequestId(id);  // the same client id: it is bound to these credentials
    ++state->id_refreshes;
    --state->attempts;  // not a retry: nothing was applied
    next.retry = true;
    next.delay = absl::ZeroDuration();
    return next;
  }
  state->first_of_id = false;
  if (IsRetryable(s) && state->attempts < max_attempts_) {
    absl::Duration backoff = initial_backoff_;
    for (int i = 1; i < state->attempts && backoff < max_backoff_; ++i) backoff *= 2;
    backoff = std::min(backoff, max_backoff_);
    const absl::Duration delay = backoff * (0.5 + 0.5 * Random01());
    if (absl::Now() + delay - state->first_start <= budget_) {
      next.retry = true;
      next.delay = delay;
      return next;
    }
  }
  next.status = state->attempts <= 1
                    ? s
                    : absl::Status(s.code(), absl::StrCat(s.message(), " (after ",
                                                          state->attempts, " attempts)"));
  return next;
}

}  // namespace internal
}  // namespace client
}  // namespace psd
