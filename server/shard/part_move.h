// A live part move's state on each side (proto ShardMove; docs/moves.md):
// MoveOut on the source shard, MoveIn on the target. VariableStore keeps
// them (store_move.cc); the gRPC service (move_service.cc) drives them.
//
// Internal to the store and its service: nothing else includes it.
//
// A *follow* (StartMoveInRequest.follow; docs/replication.md) is a move that
// never switches: its target is a backup of the group, pulling the group's
// writes for as long as it follows. A group has at most one move but may
// have several follows at once; every write to it is logged, in one order,
// into each of their logs (writes take the order locks of all of them, in
// id order).
//
// Thread-safety: each object's members are guarded as marked. Lock order:
// MoveOut::order_mu (several: in id order), then a variable's mu, then
// MoveOut::mu.
#ifndef PSD_SERVER_SHARD_PART_MOVE_H_
#define PSD_SERVER_SHARD_PART_MOVE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "psd/shard.pb.h"
#include "psd/stream_codec.h"
#include "shard/embedding_table.h"
#include "shard/logged_write.h"
#include "shard/memory_accountant.h"
#include "shard/store_variable.h"
#include "shard/value_pin.h"
#include "shard/variable_store.h"
#include "shard/write_gate.h"

namespace psd {

struct EmbeddingPart;

// A writer's answer that waits for in-sync backups to acknowledge its
// writes (VariableStore::AnswerWhenReplicated): resumed once, either by
// the thread that records the last acknowledgement (replicated), or on
// the slow path (a backup behind or ended, the backup timeout).
struct AckWaiter {
  std::atomic<int> pending{0};  // follows yet to acknowledge, +1 while registering
  std::atomic<bool> claimed{false};
  // Registered with a follow (it waited for an acknowledgement); set
  // before any follow can resume it.
  bool waited = false;
  absl::Time deadline;
  std::function<void(bool replicated)> resume;
  // True for the one caller that may resume it.
  bool Claim() { return !claimed.exchange(true, std::memory_order_acq_rel); }
};

// The source's side of one move: the group's snapshot (pinned at the
// move's first pull) and the log of the writes applied to the group since.
struct MoveOut {
  enum class State {
    kForwarding,  // serving the group and logging its writes
    kFrozen,      // writes to the group held; the log is closed
    kMoved,       // the group lives on the target now
    kEnded,       // given up (or moved) and forgotten by the store's maps
  };
  // An embedding table part's cut (its slots' rows come with it).
  struct TableCut {
    EmbeddingMoveCut cut;
    std::vector<int> columns;  // 0, then the slot columns of MovedTable.columns
    MemoryReservation reservation;  // the copied pending counts and Bloom counters
  };
  struct Member {
    std::shared_ptr<Variable> var;         // a dense part
    std::shared_ptr<EmbeddingPart> table;  // or a table's part or slot
    MovedMember info;
    std::shared_ptr<const ValuePin> pin;  // fixed-size dtypes
    std::string encoded_strings;          // DT_STRING: the value, as on the wire
  };

  uint64_t id = 0;
  // A backup's follow (never frozen nor switched; no idle cutoff: the
  // backup timeout applies instead). Immutable once registered.
  bool follow = false;
  int32_t target_shard = -1;  // the backup's shard (PullMoveRequest), for messages
  // In the store's moving_out_ (guarded by the store's moves_mu_). A follow
  // that ends while in sync stays listed until it is out of the in-sync set
  // (ReplicaBehind succeeded, SyncReplica(false), EndMoveOut), so every
  // later write to its group waits for that first.
  bool listed = false;
  // Immutable once registered, but for the pins: let go (under mu) once a
  // follow's backup pulled the whole snapshot, or the move ended.
  std::vector<Member> members;
  bool snapshot_released ABSL_GUARDED_BY(mu) = false;
  // Send buffers for snapshot chunks PullMove copies (when the memory limit
  // leaves no room to lend the pinned value's bytes): reused across pulls,
  // so a copy writes into pages already faulted in; retired with the
  // snapshot (a follow lives on without it). Thread-safe.
  const std::shared_ptr<ChunkBufferPool> chunk_buffers = ChunkBufferPool::Create();
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  // The group's part fence: FreezeMove closes it for good (until EndMove),
  // so writes arriving through the service are parked, not rejected.
  WriteGate gate;

  // Writes to the group run one at a time under it, so the log's order is
  // the order they were applied in.
  absl::Mutex order_mu ABSL_ACQUIRED_BEFORE(mu);

  mutable absl::Mutex mu;
  absl::CondVar changed;  // a write was logged, or the state changed
  State state ABSL_GUARDED_BY(mu) = State::kForwarding;
  // Why the move can no longer complete (a write that cannot be forwarded,
  // a full log, a target that stopped pulling); the next pull reports it.
  absl::Status failure ABSL_GUARDED_BY(mu);
  std::deque<LoggedWrite> log ABSL_GUARDED_BY(mu);  // seq > acked_seq
  uint64_t next_seq ABSL_GUARDED_BY(mu) = 1;
  uint64_t acked_seq ABSL_GUARDED_BY(mu) = 0;
  int64_t log_bytes ABSL_GUARDED_BY(mu) = 0;
  MemoryReservation log_reservation ABSL_GUARDED_BY(mu);
  uint64_t final_seq ABSL_GUARDED_BY(mu) = 0;  // kFrozen: the last logged write
  // kFrozen: the shard's window then; a follow's: the window at its
  // snapshot (answered to its first pull).
  RequestWindowState window ABSL_GUARDED_BY(mu);
  // A follow in the primary's in-sync set (SyncReplica): writes to the
  // group are answered only once the backup acknowledged them (acked_seq).
  bool in_sync ABSL_GUARDED_BY(mu) = false;
  // A ReplicaBehind call for this follow is under way (one for all the
  // writes waiting); its outcome for those that waited on it.
  bool behind_calling ABSL_GUARDED_BY(mu) = false;
  uint64_t behind_calls ABSL_GUARDED_BY(mu) = 0;
  absl::Status behind_result ABSL_GUARDED_BY(mu);
  std::chrono::steady_clock::time_point last_pull ABSL_GUARDED_BY(mu) =
      std::chrono::steady_clock::now();
  int32_t new_shard ABSL_GUARDED_BY(mu) = -1;  // kMoved: where the group went
  // By member index: the cut of each table part (not slots); dropped when
  // the move ends or fails, and a follow's once its backup has the whole
  // snapshot (a live cut makes the table's writers copy rows).
  std::vector<std::shared_ptr<const TableCut>> table_cuts ABSL_GUARDED_BY(mu);
  // A follow's answers waiting for acknowledged_seq to reach each seq.
  std::vector<std::pair<uint64_t, std::shared_ptr<AckWaiter>>> ack_waiters ABSL_GUARDED_BY(mu);

  bool Has(const std::string& name) const {
    for (const Member& m : members) {
      if (m.info.name() == name) return true;
    }
    return false;
  }
};

// The target's side of one move: the group's incoming parts and how far
// the pull got.
struct MoveIn {
  uint64_t id = 0;
  StartMoveInRequest request;
  // The incoming parts, in request order: a dense part in `vars`, a
  // table's part or slot in `tables` (the other null).
  std::vector<std::shared_ptr<Variable>> vars;
  std::vector<std::shared_ptr<EmbeddingPart>> tables;

  mutable absl::Mutex mu;
  absl::CondVar changed;
  MovePhase phase ABSL_GUARDED_BY(mu) = MOVE_COPYING;
  absl::Status failure ABSL_GUARDED_BY(mu);
  bool ended ABSL_GUARDED_BY(mu) = false;  // EndMove came: the puller stops
  // Where the pull stands (PullMoveRequest's member, offset, applied_seq).
  std::vector<MovedMember> members ABSL_GUARDED_BY(mu);
  int32_t member ABSL_GUARDED_BY(mu) = 0;
  int64_t offset ABSL_GUARDED_BY(mu) = 0;
  uint64_t applied_seq ABSL_GUARDED_BY(mu) = 0;
  uint64_t logged_seq ABSL_GUARDED_BY(mu) = 0;
  int64_t copied_bytes ABSL_GUARDED_BY(mu) = 0;
  int64_t total_bytes ABSL_GUARDED_BY(mu) = 0;
  // The member being filled: its new value, swapped in when complete.
  Variable::Contents filling ABSL_GUARDED_BY(mu);
  std::string filling_strings ABSL_GUARDED_BY(mu);
  // A follow (request.follow): the last pull failure, reported by
  // MoveStatus while the puller keeps retrying (OK once a pull succeeds).
  absl::Status pull_failure ABSL_GUARDED_BY(mu);
  // Held while a pull's answer is applied, so a promotion never lands in
  // the middle of a replayed batch.
  absl::Mutex apply_mu ABSL_ACQUIRED_BEFORE(mu);
  // Streamed values logged in chunks, staged until their commit entry (by
  // StagedChunk.staged_id); the value of one that never commits is dropped
  // with its abort, the move's end or a promotion. Bounded by the
  // source's log and this shard's memory limit.
  struct Staged {
    std::unique_ptr<AssignStreamSink> sink;
    std::string name;
    int64_t received = 0;
    int64_t total = 0;
    bool apply = false;  // a streamed apply's gradient, not an assign's value
  };
  std::map<uint64_t, Staged> staged ABSL_GUARDED_BY(apply_mu);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_PART_MOVE_H_
