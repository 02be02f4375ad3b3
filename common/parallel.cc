#include "psd/parallel.h"

#include <pthread.h>

#include <atomic>
#include <deque>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace psd {
namespace {

// How long a fan-out thread waits for the next call before it exits.
constexpr absl::Duration kIdleThreadLife = absl::Seconds(10);

// The threads that run RunParallel's calls. A call is taken by an idle
// thread, or by a new one when none is idle, so every call starts at once,
// as with a thread of its own, without paying for a thread's start and
// end per call (on this workload's machines, about 0.3 ms each: an op on
// a 3-part variable cost 1.3 ms of client CPU, against 0.23 ms for one
// part). Idle threads exit after kIdleThreadLife, so a burst (a save
// across hundreds of shards) does not keep its threads.
class FanOutThreads {
 public:
  static FanOutThreads& Get() {
    // Never destroyed: its threads may outlive the process's static objects.
    static const bool once = [] {
      instance_.store(new FanOutThreads(), std::memory_order_release);
      // A forked child has none of the parent's threads (and perhaps a
      // lock some thread held): it starts afresh, leaving the old one.
      pthread_atfork(nullptr, nullptr,
                     [] { instance_.store(new FanOutThreads(), std::memory_order_release); });
      return true;
    }();
    (void)once;
    return *instance_.load(std::memory_order_acquire);
  }

  // Runs `task` on an idle thread or a new one; when the system refuses a
  // thread, not at all (RunParallel's caller runs the call then).
  void Post(std::function<void()> task) {
    {
      absl::MutexLock lock(&mu_);
      if (idle_ > queue_.size()) {  // an idle thread takes it
        queue_.push_back(std::move(task));
        wake_.Signal();
        return;
      }
    }
    try {
      std::thread([this, task = std::move(task)]() mutable {
        task();
        task = nullptr;
        Serve();
      }).detach();
    } catch (const std::system_error&) {
    }
  }

 private:
  FanOutThreads() = default;

  void Serve() {
    absl::MutexLock lock(&mu_);
    for (;;) {
      ++idle_;
      const absl::Time deadline = absl::Now() + kIdleThreadLife;
      while (queue_.empty()) {
        if (wake_.WaitWithDeadline(&mu_, deadline) && queue_.empty()) {
          --idle_;
          return;
        }
      }
      --idle_;
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      mu_.Unlock();
      task();
      task = nullptr;  // its captures go before the lock is taken again
      mu_.Lock();
    }
  }

  static std::atomic<FanOutThreads*> instance_;

  absl::Mutex mu_;
  absl::CondVar wake_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;  // threads waiting in Serve
};

std::atomic<FanOutThreads*> FanOutThreads::instance_{nullptr};

}  // namespace

std::vector<absl::Status> RunParallel(size_t n, const std::function<absl::Status(size_t)>& fn) {
  std::vector<absl::Status> out(n);
  if (n == 0) return out;
  if (n == 1) {
    out[0] = fn(0);
    return out;
  }
  // Each call runs once, on whichever thread claims it first: a fan-out
  // thread, or this one once fn(0) is done (so a call no thread took, or
  // that a busy machine has not started yet, never waits for one). The
  // calls claimed by fan-out threads are waited for before returning, so
  // they may use `out` and `fn`; the rest of this state is shared, as a
  // thread may look at a call's claim after this function returned.
  struct Calls {
    explicit Calls(size_t n) : claimed(new std::atomic<bool>[n]()), remaining(n - 1) {}
    std::unique_ptr<std::atomic<bool>[]> claimed;
    absl::Mutex mu;
    size_t remaining ABSL_GUARDED_BY(mu);  // calls 1..n-1 not finished
  };
  auto calls = std::make_shared<Calls>(n);
  auto run = [calls, &out, &fn](size_t i) {
    if (calls->claimed[i].exchange(true)) return;
    out[i] = fn(i);
    absl::MutexLock lock(&calls->mu);
    --calls->remaining;
  };
  for (size_t i = 1; i < n; ++i) FanOutThreads::Get().Post([run, i] { run(i); });
  out[0] = fn(0);
  for (size_t i = 1; i < n; ++i) run(i);
  absl::MutexLock lock(&calls->mu);
  calls->mu.Await(absl::Condition(
      +[](size_t* remaining) { return *remaining == 0; }, &calls->remaining));
  return out;
}

}  // namespace psd
