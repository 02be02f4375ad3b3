// WriteGate: how a shard holds writes while a checkpoint fence is up. Every
// mutating operation passes the gate (Enter/Leave, via WriteGate::Pass);
// Fence() closes it and returns once no write is inside, so the state the
// caller then snapshots contains exactly the writes acknowledged before the
// fence. Writes arriving meanwhile wait in Enter() — they are held, never
// rejected — until Unfence() or until the lease runs out with no word from
// the coordinator, when the fence lifts itself.
//
// Held writes block the thread that runs them (an RPC handler thread); the
// lease bounds how long. The coordinator keeps the fence up only while it
// takes snapshots, which pin values by reference and copy nothing.
//
// Thread-safety: thread-safe.
#ifndef PSD_SERVER_SHARD_WRITE_GATE_H_
#define PSD_SERVER_SHARD_WRITE_GATE_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace psd {

class WriteGate {
 public:
  // RAII admission of one write.
  class Pass {
   public:
    explicit Pass(WriteGate* gate) : gate_(gate) { gate_->Enter(); }
    ~Pass() { gate_->Leave(); }
    Pass(const Pass&) = delete;
    Pass& operator=(const Pass&) = delete;

   private:
    WriteGate* const gate_;
  };

  struct FenceStats {
    int64_t held_writes = 0;
    absl::Duration fenced_for;
  };

  // Closes the gate for fence `id` until Unfence(id) or `lease` passes, and
  // waits for running writes to leave. A fence with the same id renews the
  // lease. ABORTED if another live fence is up, or if running writes do not
  // leave within the lease (the gate is reopened then).
  absl::Status Fence(uint64_t id, absl::Duration lease);
  // Reopens the gate. NOT_FOUND if fence `id` is not up (already lifted by
  // its lease, or never raised); the stats are those of the last fence.
  absl::Status Unfence(uint64_t id, FenceStats* stats);

  bool fenced() const;
  // Fences lifted by their lease since the process started.
  int64_t lease_expiries() const;

 private:
  void Enter();
  void Leave();
  // Lifts an expired fence. Returns true if the gate is open.
  bool OpenOrExpired() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  bool fenced_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t fence_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time lease_end_ ABSL_GUARDED_BY(mu_);
  absl::Time fenced_at_ ABSL_GUARDED_BY(mu_);
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  FenceStats last_ ABSL_GUARDED_BY(mu_);
  int64_t lease_expiries_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_WRITE_GATE_H_
