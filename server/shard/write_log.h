// WriteLog: the ordered log of the writes applied to one group of parts (a
// part and its slots) on the shard that serves it, read by the shards that
// keep a copy of the group by replaying it: a live move's target
// (docs/moves.md) and a replicated part's backups (docs/replication.md).
//
// Each write gets the next sequence number as it is appended (the caller
// appends in the order the writes were applied). Readers pull: a pull
// reports how far the reader has applied (which acknowledges everything up
// to there) and gets the writes after it, waiting a little for some to come,
// so one round trip carries every write appended meanwhile. A write is kept
// until every reader has acknowledged it.
//
// Readers that are *in sync* are the ones a primary must not acknowledge a
// write without: WaitReplicated(seq) returns once each of them has
// acknowledged seq. A reader still catching up (a backup being made, a
// move's target) is not waited for.
//
// Caps: the bytes held (writes appended, not yet acknowledged by every
// reader) are charged to the shard's memory accountant and bounded by
// `max_bytes`; an append past either fails RESOURCE_EXHAUSTED and logs
// nothing (the caller ends the move, or drops the lagging backup).
//
// Thread-safety: thread-safe. Lock order: callers may hold their own locks
// (the group's order lock, a variable's lock) while calling Append; the
// log's lock is taken last and never held while waiting for anything but
// its own condition.
#ifndef PSD_SERVER_SHARD_WRITE_LOG_H_
#define PSD_SERVER_SHARD_WRITE_LOG_H_

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "psd/shard.pb.h"
#include "shard/memory_accountant.h"

namespace psd {

class WriteLog {
 public:
  // `memory` (may be null: uncharged) must outlive the log; `name` names
  // the group in errors ("move 12", "w/part_0's replicas").
  WriteLog(std::string name, int64_t max_bytes, MemoryAccountant* memory);
  WriteLog(const WriteLog&) = delete;
  WriteLog& operator=(const WriteLog&) = delete;

  // The bytes a logged write is charged (its op plus bookkeeping).
  static int64_t ChargedBytes(const MoveWrite& write);

  // Appends `write` (its seq is set here) and returns its seq. `variable`
  // names the variable written, for a memory error. Fails, logging
  // nothing, once closed (with the close status) or when the write does
  // not fit (RESOURCE_EXHAUSTED naming the cap or the memory limit).
  absl::StatusOr<uint64_t> Append(MoveWrite write, const std::string& variable);

  // A reader that has applied everything up to `applied` (the log's last
  // seq when it starts from a snapshot taken now). Re-adding a reader
  // resets it.
  void AddReader(uint64_t reader, uint64_t applied, bool in_sync);
  // Whether WaitReplicated waits for `reader` (NOT_FOUND if unknown).
  absl::Status SetInSync(uint64_t reader, bool in_sync);
  // Forgets `reader`: its unacknowledged writes may go, nobody waits for it.
  void RemoveReader(uint64_t reader);

  struct Pulled {
    std::vector<MoveWrite> writes;  // in seq order, all > the pull's `applied`
    uint64_t last_seq = 0;          // the log's last seq when the pull returned
  };
  // `reader` has applied every write up to `applied`; the writes after it,
  // at most `max_bytes` of them (always at least one if any), waiting up to
  // `wait` for one to be appended. NOT_FOUND for an unknown reader,
  // INVALID_ARGUMENT for an `applied` beyond the last seq, OUT_OF_RANGE for
  // one below a write already dropped (the reader missed it), the close
  // status once closed.
  absl::StatusOr<Pulled> Pull(uint64_t reader, uint64_t applied, int64_t max_bytes,
                              absl::Duration wait);

  // Returns OK once every in-sync reader has acknowledged `seq` (at once if
  // none is in sync); DEADLINE_EXCEEDED naming the readers behind when
  // `deadline` passes first; the close status once closed.
  absl::Status WaitReplicated(uint64_t seq, absl::Time deadline);

  // Fails every later call with `why` and wakes every waiter; the writes
  // held are dropped (their memory given back).
  void Close(const absl::Status& why);

  uint64_t last_seq() const;
  int64_t bytes() const;
  // The smallest seq every reader has acknowledged (last_seq if none).
  uint64_t acked_by_all() const;
  // `reader`'s acknowledged seq (NOT_FOUND if unknown).
  absl::StatusOr<uint64_t> acked(uint64_t reader) const;

 private:
  struct Reader {
    uint64_t acked = 0;
    bool in_sync = false;
  };
  // Drops the writes every reader acknowledged.
  void TrimLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t AckedByAllLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string name_;
  const int64_t max_bytes_;
  MemoryAccountant* const memory_;

  mutable absl::Mutex mu_;
  absl::CondVar appended_;  // a write was appended, or the log closed
  absl::CondVar acked_;     // a reader acknowledged, left, or left the sync set
  absl::Status closed_ ABSL_GUARDED_BY(mu_);
  std::deque<MoveWrite> writes_ ABSL_GUARDED_BY(mu_);  // seqs first_seq_ .. next_seq_-1
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  MemoryReservation reservation_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Reader> readers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_WRITE_LOG_H_
