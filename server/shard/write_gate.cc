#include "shard/write_gate.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace psd {

bool WriteGate::OpenOrExpired() {
  if (!fenced_) return true;
  if (absl::Now() < lease_end_) return false;
  // No word from the coordinator within the lease: lift the fence.
  fenced_ = false;
  ++lease_expiries_;
  last_ = {held_, absl::Now() - fenced_at_};
  return true;
}

void WriteGate::Enter() {
  absl::MutexLock lock(&mu_);
  if (!OpenOrExpired()) {
    ++held_;
    while (!OpenOrExpired()) {
      const absl::Time deadline = lease_end_;
      mu_.AwaitWithDeadline(absl::Condition(
                                +[](bool* fenced) { return !*fenced; }, &fenced_),
                            deadline);
    }
  }
  ++active_;
}

void WriteGate::Leave() {
  absl::MutexLock lock(&mu_);
  --active_;
}

absl::Status WriteGate::Fence(uint64_t id, absl::Duration lease) {
  absl::MutexLock lock(&mu_);
  if (!OpenOrExpired() && fence_id_ != id) {
    return absl::AbortedError(absl::StrCat("fence ", id, " refused: fence ", fence_id_,
                                           " is up (a save is in progress)"));
  }
  const bool renew = fenced_;
  fenced_ = true;
  fence_id_ = id;
  lease_end_ = absl::Now() + lease;
  if (!renew) {
    fenced_at_ = absl::Now();
    held_ = 0;
  }
  if (!mu_.AwaitWithDeadline(
          absl::Condition(+[](int* active) { return *active == 0; }, &active_), lease_end_)) {
    fenced_ = false;
    last_ = {held_, absl::Now() - fenced_at_};
    return absl::AbortedError(absl::StrCat(
        "fence timeout: writes still running after the fence lease of ",
        absl::FormatDuration(lease)));
  }
  return absl::OkStatus();
}

absl::Status WriteGate::Unfence(uint64_t id, FenceStats* stats) {
  absl::MutexLock lock(&mu_);
  const bool up = !OpenOrExpired() && fence_id_ == id;
  if (up) {
    fenced_ = false;
    last_ = {held_, absl::Now() - fenced_at_};
  }
  if (stats != nullptr) *stats = last_;
  if (!up) {
    return absl::NotFoundError(
        absl::StrCat("fence ", id, " is not up (its lease ran out, or it was never raised)"));
  }
  return absl::OkStatus();
}

bool WriteGate::fenced() const {
  absl::MutexLock lock(&mu_);
  return fenced_ && absl::Now() < lease_end_;
}

int64_t WriteGate::lease_expiries() const {
  absl::MutexLock lock(&mu_);
  return lease_expiries_;
}

}  // namespace psd
