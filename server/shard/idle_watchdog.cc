#include "shard/idle_watchdog.h"

#include <algorithm>
#include <vector>

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
  auto it = watched_.find(token);
  if (it == watched_.end()) return;
  // The context may go once this returns: wait for a cancellation of it
  // that is under way, unless it is this very thread's (gRPC can run the
  // stream's reactions inline inside TryCancel, and the call stays alive
  // until TryCancel returns).
  while (it != watched_.end() && it->second.cancelling &&
         it->second.canceller != std::this_thread::get_id()) {
    cancelled_one_.Wait(&mu_);
    it = watched_.find(token);
  }
  if (it != watched_.end()) watched_.erase(it);
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
    std::vector<std::pair<uint64_t, grpc::CallbackServerContext*>> expired;
    for (auto& [token, w] : watched_) {
      if (w.cancelled || now - w.since < limit_) continue;
      w.cancelled = true;
      w.cancelling = true;  // Forget waits: the context stays valid
      w.canceller = std::this_thread::get_id();
      expired.emplace_back(token, w.ctx);
    }
    if (expired.empty()) continue;
    // Cancelled without mu_: the stream's reactions may run inline and
    // call Forget.
    mu_.Unlock();
    for (const auto& [token, ctx] : expired) ctx->TryCancel();
    mu_.Lock();
    for (const auto& [token, ctx] : expired) {
      auto it = watched_.find(token);
      if (it != watched_.end()) it->second.cancelling = false;
    }
    cancelled_ += static_cast<int64_t>(expired.size());
    cancelled_one_.SignalAll();
    spdlog::warn("{} streamed assign(s) or apply(s) got nothing from their callers for {}; "
                 "ended, nothing applied (--stream-idle-timeout)",
                 expired.size(), absl::FormatDuration(limit_));
  }
}

}  // namespace psd
