// MoveProgressBoard: what Coordinator.MoveProgress answers (psctl's
// progress display of `vars move`, `shard drain` and `rebalance`): per
// progress_id, the operation's moves done of those planned and the running
// move's part, phase, snapshot bytes copied and writes forwarded, as the
// coordinator last heard them from the target. An entry stays a minute
// after its operation ends; at most kMaxEntries are kept (the oldest ended
// one goes first; with none ended, a new operation is not tracked).
//
// The RPC handler of an operation opens a Scope with the caller's
// progress_id on the thread that runs it; the move code reports through
// the static calls, which go to the calling thread's scope and do nothing
// without one. So the move path (shared by MovePart, drains, rebalances
// and the resolution of pending moves) takes no extra parameter.
//
// Thread-safety: thread-safe.
#ifndef PSD_SERVER_COORDINATOR_MOVE_PROGRESS_H_
#define PSD_SERVER_COORDINATOR_MOVE_PROGRESS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "psd/coordinator.pb.h"
#include "psd/shard.pb.h"

namespace psd {

class MoveProgressBoard {
 public:
  static constexpr int kMaxEntries = 64;
  static constexpr absl::Duration kKeepEnded = absl::Minutes(1);

  // Reports of this thread go to `id`'s entry until the scope closes (it
  // then marks the operation finished). id 0 or a null board: none.
  class Scope {
   public:
    Scope(MoveProgressBoard* board, uint64_t id);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    MoveProgressBoard* const board_;  // null: this scope tracks nothing
    const uint64_t id_;
    MoveProgressBoard* const previous_board_;
    const uint64_t previous_id_;
  };

  // The calling thread's operation plans `moves` moves.
  static void Planned(int moves);
  // Its next move starts.
  static void MoveStarted(const std::string& part, int32_t source_shard, int32_t target_shard);
  // It reached `phase` ("copying": the target started pulling).
  static void Phase(const std::string& phase);
  // What the target said of it (MoveStatus); `switching`: the source froze.
  static void MoveStatus(const MoveStatusResponse& status, bool switching);
  // It ended, moved or not.
  static void MoveEnded();

  // found == false for an unknown id (or one that ended over a minute ago).
  MoveProgressResponse Get(uint64_t id) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    MoveProgressResponse progress;
    absl::Time started;
    std::optional<absl::Time> ended;
  };
  // Runs `update` on the calling thread's entry, if it has one.
  template <typename F>
  static void Update(F update);
  void Begin(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  void End(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  void DropExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_MOVE_PROGRESS_H_
