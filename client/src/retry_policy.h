// RetryPolicy: the one retry rule of every call this library makes to a
// shard (unary data ops and applies, their async forms, streamed reads and
// assigns, streamed applies, applied batches).
//
// A call that fails with UNAVAILABLE or DEADLINE_EXCEEDED is tried again,
// at most ClientOptions::max_attempts attempts in all; the n-th retry waits
// a random time in [b/2, b] with b = min(initial_backoff * 2^(n-1),
// max_backoff) (jitter, so clients that failed together do not come back
// together), and no retry starts later than retry_budget after the first
// attempt began. A mutating request keeps its request id across retries,
// so the shard applies it at most once.
//
// "Request id too old": the shard refuses ids that fell out of its window
// of recent ids, before anything runs. A first attempt of an id refused
// that way was never applied, so it is re-issued under a fresh id (not
// counted as a retry; at most kMaxIdRefreshes times). That happens when
// other threads of this process sent over a window's worth of requests to
// the shard between this request taking its id and arriving. A retry
// refused that way has an unknown outcome and is returned as is.
//
// Thread-safety: RetryPolicy is immutable and thread-safe; a RetryState
// belongs to one call.
#ifndef PSD_CLIENT_SRC_RETRY_POLICY_H_
#define PSD_CLIENT_SRC_RETRY_POLICY_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "psd/client.h"
#include "psd/types.pb.h"
#include "request_ids.h"

namespace psd {
namespace client {
namespace internal {

// Where one call stands in its retries.
struct RetryState {
  absl::Time first_start = absl::Now();
  int attempts = 0;         // attempts that count against max_attempts
  bool first_of_id = true;  // the current id has not been refused yet
  // The op's id was sent before by an earlier attempt at the same op
  // (request_ids.h): "too old" is then its final answer. Made on the
  // thread that drew the id, right after it did.
  bool id_resent = LastRequestIdWasResent();
  int id_refreshes = 0;
};

class RetryPolicy {
 public:
  static constexpr int kMaxIdRefreshes = 8;

  explicit RetryPolicy(const ClientOptions& options)
      : max_attempts_(options.max_attempts),
        initial_backoff_(options.initial_backoff),
        max_backoff_(options.max_backoff),
        budget_(options.retry_budget) {}

  static bool IsRetryable(const absl::Status& s);
  static bool IsTooOld(const absl::Status& s);

  // What to do after an attempt (counted in state->attempts) failed with
  // `s`. `id` is the request's id (null for reads): renewed in place when
  // the failure is a first refusal as too old.
  struct Next {
    bool retry = false;
    absl::Duration delay;  // before the next attempt, when retry
    absl::Status status;   // the call's result, when !retry
  };
  Next OnFailure(const absl::Status& s, RequestId* id, RetryState* state) const;

  // Runs `attempt` (returning absl::Status) until it succeeds, fails for
  // good, or the policy gives up; sleeps on the calling thread between
  // attempts.
  template <typename Fn>
  absl::Status Run(Fn&& attempt, RequestId* id = nullptr) const {
    RetryState state;
    for (;;) {
      ++state.attempts;
      absl::Status s = attempt();
      if (s.ok()) return s;
      Next next = OnFailure(s, id, &state);
      if (!next.retry) return next.status;
      if (next.delay > absl::ZeroDuration()) absl::SleepFor(next.delay);
    }
  }

 private:
  const int max_attempts_;
  const absl::Duration initial_backoff_;
  const absl::Duration max_backoff_;
  const absl::Duration budget_;
};

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_RETRY_POLICY_H_
