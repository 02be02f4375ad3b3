// RetryTimer: the thread on which ShardClient's async ops wait out their
// retry backoff. Internal to client/src.
#ifndef PSD_CLIENT_SRC_RETRY_TIMER_H_
#define PSD_CLIENT_SRC_RETRY_TIMER_H_

#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace psd {
namespace client {
namespace internal {

// Runs callbacks at given times on one thread of its own: the retries of
// async ops wait here rather than on a gRPC callback thread.
//
// Thread-safety: thread-safe.
class RetryTimer {
 public:
  RetryTimer() : thread_([this] { Loop(); }) {}
  RetryTimer(const RetryTimer&) = delete;
  RetryTimer& operator=(const RetryTimer&) = delete;
  // Runs what is still queued at once, then stops.
  ~RetryTimer() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      cv_.Signal();
    }
    thread_.join();
  }

  void Schedule(absl::Time when, std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    queue_.emplace(when, std::move(fn));
    cv_.Signal();
  }

 private:
  void Loop() {
    absl::MutexLock lock(&mu_);
    for (;;) {
      if (queue_.empty()) {
        if (stop_) return;
        cv_.Wait(&mu_);
        continue;
      }
      auto first = queue_.begin();
      if (!stop_ && absl::Now() < first->first) {
        cv_.WaitWithDeadline(&mu_, first->first);
        continue;
      }
      std::function<void()> fn = std::move(first->second);
      queue_.erase(first);
      mu_.Unlock();
      fn();
      mu_.Lock();
    }
  }

  absl::Mutex mu_;
  absl::CondVar cv_;
  std::multimap<absl::Time, std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_RETRY_TIMER_H_
