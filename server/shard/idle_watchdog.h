// IdleStreamWatchdog: ends server streams whose caller stops sending.
//
// A caller that keeps its connection alive (so keepalive pings are answered)
// but stops in the middle of a streamed assign or apply holds what the
// stream staged so far (up to the whole value's memory) and a running
// request id, until the call's deadline, or for ever when it set none. A
// stream waiting for its caller's next message longer than the limit is
// cancelled here, and its reactor ends as for any cancelled call (nothing
// staged is applied). Only time spent waiting on the caller counts: a
// stream held by a fence is not watched meanwhile.
//
// Thread-safety: thread-safe. A watched context must stay valid until
// Forget(token) returns (reactors call it from OnDone before the context
// goes away, or when they stop reading). TryCancel is called without the
// watchdog's lock (gRPC may run the stream's reactions inline in it), and
// Forget waits for a TryCancel of its context running on another thread.
#ifndef PSD_SERVER_SHARD_IDLE_WATCHDOG_H_
#define PSD_SERVER_SHARD_IDLE_WATCHDOG_H_

#include <cstdint>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace psd {

// How long a streamed assign or apply may wait for its caller's next
// message (psd shard --stream-idle-timeout).
inline constexpr absl::Duration kDefaultStreamIdleTimeout = absl::Seconds(60);

class IdleStreamWatchdog {
 public:
  explicit IdleStreamWatchdog(absl::Duration limit);
  ~IdleStreamWatchdog();  // stops its thread
  IdleStreamWatchdog(const IdleStreamWatchdog&) = delete;
  IdleStreamWatchdog& operator=(const IdleStreamWatchdog&) = delete;

  absl::Duration limit() const { return limit_; }

  // Starts (or restarts) the clock of a stream now waiting for its caller;
  // `token` 0 registers a new one and returns its token.
  uint64_t Waiting(grpc::CallbackServerContext* ctx, uint64_t token) ABSL_LOCKS_EXCLUDED(mu_);
  // Stops watching (idempotent; 0 is ignored).
  void Forget(uint64_t token) ABSL_LOCKS_EXCLUDED(mu_);

  // Streams cancelled for idling, since start (a metric).
  int64_t cancelled() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Watched {
    grpc::CallbackServerContext* ctx;
    absl::Time since;
    bool cancelled = false;
    // TryCancel on ctx is running (on thread `canceller`): Forget waits.
    bool cancelling = false;
    std::thread::id canceller;
  };
  void Run();

  const absl::Duration limit_;
  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  absl::CondVar cancelled_one_;  // a round of TryCancel calls ended
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Watched> watched_ ABSL_GUARDED_BY(mu_);
  int64_t cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // last: started once the rest is built
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_IDLE_WATCHDOG_H_
