#include "shard/write_gate.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace psd {

namespace {
// The gate whose Admission the current thread holds, if any.
thread_local WriteGate* t_admitted = nullptr;

// The steady clock as a duration since its epoch: leases are measured with
// it, never with wall time.
absl::Duration SteadyNow() {
  return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}
}  // namespace

WriteGate::Pass::Pass(WriteGate* gate) : gate_(gate) {
  if (t_admitted != gate_) {
    gate_->Enter();
    entered_ = true;
  }
}

WriteGate::Pass::~Pass() {
  if (entered_) gate_->Leave();
}

WriteGate::Admission::Admission(WriteGate* gate) : gate_(gate) {
  if (gate_ != nullptr) {
    previous_ = t_admitted;
    t_admitted = gate_;
  }
}

WriteGate::Admission::Admission(Admission&& other) noexcept
    : gate_(other.gate_), previous_(other.previous_) {
  other.gate_ = nullptr;
}

WriteGate::Admission::~Admission() {
  if (gate_ != nullptr) {
    t_admitted = previous_;
    gate_->Leave();
  }
}

WriteGate::~WriteGate() {
  std::thread runner;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    runner = std::move(runner_);
  }
  if (runner.joinable()) runner.join();
}

void WriteGate::Lift() {
  fenced_ = false;
  last_ = {held_, SteadyNow() - fenced_at_};
  totals_.fences += 1;
  totals_.held_writes += last_.held_writes;
  totals_.fenced += last_.fenced_for;
}

bool WriteGate::OpenOrExpired() {
  if (!fenced_) return true;
  if (SteadyNow() < lease_end_) return false;
  // No word from the coordinator within the lease: lift the fence.
  Lift();
  ++lease_expiries_;
  return true;
}

void WriteGate::Enter() {
  absl::MutexLock lock(&mu_);
  if (!OpenOrExpired()) {
    ++held_;
    while (!OpenOrExpired()) {
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](bool* fenced) { return !*fenced; }, &fenced_),
                           lease_end_ - SteadyNow());
    }
  }
  ++active_;
}

void WriteGate::Leave() {
  absl::MutexLock lock(&mu_);
  --active_;
}

void WriteGate::Park(std::function<void()> resume) {
  ++held_;
  parked_.push_back(std::move(resume));
  if (!runner_.joinable()) runner_ = std::thread([this] { RunParked(); });
}

void WriteGate::RunParked() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    if (!parked_.empty() && OpenOrExpired()) {
      std::deque<std::function<void()>> ready;
      ready.swap(parked_);
      mu_.Unlock();
      for (auto& resume : ready) resume();
      mu_.Lock();
      continue;
    }
    if (parked_.empty()) {
      if (stopping_) return;
      mu_.Await(absl::Condition(
          +[](WriteGate* gate) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return gate->stopping_ || !gate->parked_.empty();
          },
          this));
    } else {
      // Parked writes behind a fence: wake when it is lifted or its lease ends.
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](bool* fenced) { return !*fenced; }, &fenced_),
                           lease_end_ - SteadyNow());
    }
  }
}

absl::Status WriteGate::Fence(uint64_t id, absl::Duration lease) {
  absl::MutexLock lock(&mu_);
  // Another fence up lifts within its lease: a part's move or backup copy
  // pinning its snapshot (an instant once writes drain), or a save whose
  // coordinator gave up on it. Waited for, up to this fence's own lease:
  // refused at once, a save under training failed whenever the replica
  // keeper was making a backup at that moment.
  // The lease counts from the request: time spent waiting is not added to
  // the time writes are held.
  const absl::Duration wait_end = SteadyNow() + lease;
  while (!OpenOrExpired() && fence_id_ != id) {
    const absl::Duration now = SteadyNow();
    if (now >= wait_end) {
      return absl::AbortedError(absl::StrCat("fence ", id, " refused: fence ", fence_id_,
                                             " is still up after ", absl::FormatDuration(lease),
                                             " (a save, or a move pinning its parts)"));
    }
    mu_.AwaitWithTimeout(absl::Condition(+[](bool* fenced) { return !*fenced; }, &fenced_),
                         std::min(wait_end, lease_end_) - now);
  }
  const bool renew = fenced_;
  fenced_ = true;
  fence_id_ = id;
  lease_end_ = wait_end;
  if (!renew) {
    fenced_at_ = SteadyNow();
    held_ = 0;
  }
  // Re-measured on the steady clock after every wake: however the mutex
  // measures its timeout, the lease ends by SteadyNow().
  bool drained = false;
  for (;;) {
    const absl::Duration left = lease_end_ - SteadyNow();
    if (left <= absl::ZeroDuration()) break;
    if (mu_.AwaitWithTimeout(absl::Condition(
                                 +[](int* active) { return *active == 0; }, &active_),
                             left)) {
      drained = true;
      break;
    }
  }
  if (!drained && active_ == 0) drained = true;
  if (!drained) {
    Lift();
    return absl::AbortedError(absl::StrCat(
        "fence timeout: writes still running after the fence lease of ",
        absl::FormatDuration(lease)));
  }
  return absl::OkStatus();
}

absl::Status WriteGate::Unfence(uint64_t id, FenceStats* stats) {
  absl::MutexLock lock(&mu_);
  const bool up = !OpenOrExpired() && fence_id_ == id;
  if (up) Lift();
  if (stats != nullptr) *stats = last_;
  if (!up) {
    return absl::NotFoundError(
        absl::StrCat("fence ", id, " is not up (its lease ran out, or it was never raised)"));
  }
  return absl::OkStatus();
}

bool WriteGate::fenced() const {
  absl::MutexLock lock(&mu_);
  return fenced_ && SteadyNow() < lease_end_;
}

WriteGate::FenceTotals WriteGate::totals() const {
  absl::MutexLock lock(&mu_);
  return totals_;
}

int64_t WriteGate::lease_expiries() const {
  absl::MutexLock lock(&mu_);
  return lease_expiries_;
}

int64_t WriteGate::parked() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(parked_.size());
}

}  // namespace psd
