#include "shard/idle_watchdog.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace psd {

IdleStreamWatchdog::IdleStreamWatchdog(absl::Duration limit)
    : limit_(std::max(limit, absl::Milliseconds(10))), thread_([this] { Run(); }) {}

IdleStreamWatchdog::~IdleStreamWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_.Signal();
  }
  thread_.join();
}

uint64_t IdleStreamWatchdog::Waiting(grpc::CallbackServerContext* ctx, uint64_t token) {
  absl::MutexLock lock(&mu_);
  if (token == 0) token = next_token_++;
  Watched& w = watched_[token];
  w.ctx = ctx;
  w.since = absl::Now();
  return token;
}

void IdleStreamWatchdog::Forget(uint64_t token) {
  if (token == 0) return;
  absl::MutexLock lock(&mu_);
  watched_.erase(token);
}

int64_t IdleStreamWatchdog::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void IdleStreamWatchdog::Run() {
  // Checked a few times per limit, so a stream ends at most a quarter of
  // the limit late.
  const absl::Duration period = std::min(limit_ / 4, absl::Seconds(1));
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    wake_.WaitWithTimeout(&mu_, period);
    const absl::Time now = absl::Now();
    for (auto& [token, w] : watched_) {
      if (w.cancelled || now - w.since < limit_) continue;
      // Under mu_: Forget (from the reactor's OnDone) waits for this, so
      // the context is still valid.
      w.ctx->TryCancel();
      w.cancelled = true;
      ++cancelled_;
      spdlog::warn("a streamed assign or apply got nothing from its caller for {}; ended, "
                   "nothing applied (--stream-idle-timeout)",
                   absl::FormatDuration(limit_));
    }
  }
}

}  // namespace psd
