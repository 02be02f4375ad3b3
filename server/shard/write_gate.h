// WriteGate: how a shard holds writes while a checkpoint fence is up. Every
// mutating operation passes the gate; Fence() closes it and returns once no
// write is inside, so the state the caller then snapshots contains exactly
// the writes acknowledged before the fence. Writes arriving meanwhile are
// held, never rejected, until Unfence() or until the lease runs out with no
// word from the coordinator, when the fence lifts itself.
//
// There are two ways in:
//  - TryAdmit(resume), for RPC handlers. It never blocks: if the gate is
//    closed the write is parked and `resume` runs later on the gate's own
//    thread, once the gate opens. Handler threads are a small shared pool
//    that must stay free to serve the coordinator's Unfence (and reads)
//    while a fence is up; blocking them on held writes would keep the fence
//    up until its lease ran out.
//  - Pass, RAII, which blocks the calling thread while the gate is closed.
//    For callers on their own threads (restore, tests). A Pass taken on a
//    thread that already holds an Admission of the same gate does not wait:
//    the write is already counted inside, and the fence may be waiting for
//    it to leave.
//
// Thread-safety: thread-safe. Parked writes run one at a time, in arrival
// order, on the gate's thread; they must not block on the gate themselves.
#ifndef PSD_SERVER_SHARD_WRITE_GATE_H_
#define PSD_SERVER_SHARD_WRITE_GATE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace psd {

class WriteGate {
 public:
  WriteGate() = default;
  // Waits for parked writes to run (the fence's lease bounds the wait).
  ~WriteGate();
  WriteGate(const WriteGate&) = delete;
  WriteGate& operator=(const WriteGate&) = delete;

  // Blocking admission of one write on the calling thread.
  class Pass {
   public:
    explicit Pass(WriteGate* gate);
    ~Pass();
    Pass(const Pass&) = delete;
    Pass& operator=(const Pass&) = delete;

   private:
    WriteGate* const gate_;
    bool entered_ = false;
  };

  // A non-blocking admission; true if the write may run now. While it is
  // alive on this thread, Passes of the same gate go straight through.
  class Admission {
   public:
    Admission(Admission&& other) noexcept;
    ~Admission();
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;
    Admission& operator=(Admission&&) = delete;
    explicit operator bool() const { return gate_ != nullptr; }

   private:
    friend class WriteGate;
    explicit Admission(WriteGate* gate);
    WriteGate* gate_;
    WriteGate* previous_ = nullptr;  // the thread's admission before this one
  };

  // Admits the write now, or parks `resume` until the gate opens and returns
  // an empty Admission. `resume` should call TryAdmit again: a new fence may
  // be up by the time it runs. It is turned into a std::function only when
  // the write is parked, so an open gate costs no allocation.
  template <typename Resume>
  Admission TryAdmit(Resume&& resume) {
    absl::MutexLock lock(&mu_);
    if (OpenOrExpired()) {
      ++active_;
      return Admission(this);
    }
    Park(std::function<void()>(std::forward<Resume>(resume)));
    return Admission(nullptr);
  }

  struct FenceStats {
    int64_t held_writes = 0;
    absl::Duration fenced_for;
  };

  // Closes the gate for fence `id` until Unfence(id) or `lease` passes, and
  // waits for running writes to leave. A fence with the same id renews the
  // lease. Another fence up is waited for, within the lease (which counts
  // from the call); ABORTED if it is still up then, or if running writes do
  // not leave within the lease (the gate is reopened then).
  absl::Status Fence(uint64_t id, absl::Duration lease);
  // Reopens the gate. NOT_FOUND if fence `id` is not up (already lifted by
  // its lease, or never raised); the stats are those of the last fence.
  absl::Status Unfence(uint64_t id, FenceStats* stats);

  // Every fence since the process started, counted once when it lifts
  // (by Unfence, by its lease, or by a failed Fence).
  struct FenceTotals {
    int64_t fences = 0;
    int64_t held_writes = 0;
    absl::Duration fenced;
  };
  FenceTotals totals() const;

  bool fenced() const;
  // Fences lifted by their lease since the process started.
  int64_t lease_expiries() const;
  // Writes parked now, waiting for the gate to open.
  int64_t parked() const;

 private:
  void Enter();
  void Leave();
  // Lifts an expired fence. Returns true if the gate is open.
  bool OpenOrExpired() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Lift() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a held write for the gate's thread (starting it if needed).
  void Park(std::function<void()> resume) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The gate's thread: runs parked writes once the gate opens, and lifts an
  // expired fence when its lease ends even if no write arrives.
  void RunParked();

  mutable absl::Mutex mu_;
  bool fenced_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t fence_id_ ABSL_GUARDED_BY(mu_) = 0;
  // Monotonic (steady clock, SteadyNow() in write_gate.cc): a wall-clock
  // step must neither lift a fence early nor keep it up past its lease.
  absl::Duration lease_end_ ABSL_GUARDED_BY(mu_);
  absl::Duration fenced_at_ ABSL_GUARDED_BY(mu_);
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  FenceStats last_ ABSL_GUARDED_BY(mu_);
  int64_t lease_expiries_ ABSL_GUARDED_BY(mu_) = 0;
  FenceTotals totals_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> parked_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Started by the first park; joined by the destructor.
  std::thread runner_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_WRITE_GATE_H_
