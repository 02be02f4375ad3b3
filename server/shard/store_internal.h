// What VariableStore's source files (variable_store.cc and store_*.cc)
// share beyond the Variable class (store_variable.h): the one way into a
// mutation (Mutate: incarnation, write gate, exactly-once), the gradients an optimizer apply takes, staged restores
// and a few message helpers.
//
// Internal to the store: nothing outside those files includes it.
#ifndef PSD_SERVER_SHARD_STORE_INTERNAL_H_
#define PSD_SERVER_SHARD_STORE_INTERNAL_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "psd/shard.pb.h"
#include "psd/status.h"
#include "psd/tensor.h"
#include "psd/update_kind_wire.h"
#include "shard/embedding_table.h"
#include "shard/part_move.h"
#include "shard/request_window.h"
#include "shard/store_variable.h"
#include "shard/variable_store.h"

namespace psd {
namespace store_internal {

// In VariableStore::moved_away_ for a part dropped after its group failed
// over (DropParts): where it lives now is the coordinator's to say.
constexpr int32_t kNoShard = -1;

// True on a thread replaying a move's logged writes on its target
// (MoveReplayScope): only it may touch parts still moving in.
bool ReplayingMove();
class MoveReplayScope {
 public:
  MoveReplayScope();
  ~MoveReplayScope();
  MoveReplayScope(const MoveReplayScope&) = delete;
  MoveReplayScope& operator=(const MoveReplayScope&) = delete;

 private:
  bool previous_;
};

// Checks every index against [0, dim0) with TensorFlow's wording.
absl::Status CheckIndices(const std::vector<int64_t>& indices, int64_t limit,
                          const std::string& variable);

// The small result a retried request gets back, per response type.
struct NoResult {};
inline void SaveResult(const NoResult&, RequestWindow::Result*) {}
inline void RestoreResult(const RequestWindow::Result&, NoResult*) {}
inline void SaveResult(const VariableInfo&, RequestWindow::Result*) {}
inline void RestoreResult(const RequestWindow::Result&, VariableInfo*) {}
inline void SaveResult(const AssignResponse& r, RequestWindow::Result* out) {
  out->version = r.version();
}
inline void RestoreResult(const RequestWindow::Result& in, AssignResponse* r) {
  r->set_version(in.version);
}
inline void SaveResult(const ScatterResponse& r, RequestWindow::Result* out) {
  out->version = r.version();
}
inline void RestoreResult(const RequestWindow::Result& in, ScatterResponse* r) {
  r->set_version(in.version);
}
inline void SaveResult(const ApplyDenseResponse& r, RequestWindow::Result* out) {
  out->version = r.version();
}
inline void RestoreResult(const RequestWindow::Result& in, ApplyDenseResponse* r) {
  r->set_version(in.version);
}
inline void SaveResult(const ApplySparseResponse& r, RequestWindow::Result* out) {
  out->version = r.version();
}
inline void RestoreResult(const RequestWindow::Result& in, ApplySparseResponse* r) {
  r->set_version(in.version);
}
inline void SaveResult(const CountUpToResponse& r, RequestWindow::Result* out) {
  out->old_value = r.old_value();
}
inline void RestoreResult(const RequestWindow::Result& in, CountUpToResponse* r) {
  r->set_old_value(in.old_value);
}

// Kernel parameters of an optimizer spec, every hyper-parameter checked;
// Adam's beta powers given by name come back in `beta_power_variables`
// (empty strings when given as values).
absl::Status ParseOptimizer(const OptimizerSpec& spec, bool sparse, const std::string& variable,
                            OptimizerParams* params, std::string beta_power_variables[2]);
// TensorFlow's training-op name, for messages: "ApplyAdam", "SparseApplyFtrl".
std::string ApplyOpName(OptimizerKind kind, bool sparse);
// A floating scalar variable's value as a double.
absl::StatusOr<double> ReadScalar(Device* device, const Variable& var)
    ABSL_SHARED_LOCKS_REQUIRED(var.mu);

inline void SaveResult(const ImportEmbeddingResponse& r, RequestWindow::Result* out) {
  out->old_value = r.rows();
}
inline void RestoreResult(const RequestWindow::Result& in, ImportEmbeddingResponse* r) {
  r->set_rows(in.old_value);
}
inline void SaveResult(const DeleteEmbeddingKeysResponse& r, RequestWindow::Result* out) {
  out->old_value = r.deleted();
}
inline void RestoreResult(const RequestWindow::Result& in, DeleteEmbeddingKeysResponse* r) {
  r->set_deleted(in.old_value);
}
inline void SaveResult(const EvictEmbeddingResponse& r, RequestWindow::Result* out) {
  out->old_value = r.evicted();
}
inline void RestoreResult(const RequestWindow::Result& in, EvictEmbeddingResponse* r) {
  r->set_evicted(in.old_value);
}

}  // namespace store_internal

// An embedding table's part, or a slot table's part, as the store holds it.
// The table object is shared by the part and its slots' parts (a slot is a
// column of the part's table). Immutable but for the table, which guards
// itself, and `version`.
struct EmbeddingPart {
  std::string name;
  DataType dtype = DT_INVALID;
  DataType key_dtype = DT_INT64;
  int64_t dim = 0;
  EmbeddingSpec spec;
  InitializerSpec initializer;
  std::shared_ptr<EmbeddingTable> table;
  int column = 0;       // 0: the table's values; > 0: this slot's column
  std::string primary;  // a slot's table part (empty for the table itself)
  // Bumped by every successful mutation of the part (VariableInfo.version).
  mutable std::atomic<uint64_t> version{0};
  // Moving in (a move's target, before it commits): not served, listed or
  // saved; a move's replay sees it (see Variable::incoming).
  std::atomic<bool> incoming{false};
  // As Variable's: a backup's copy (its follow move id), a replicated part.
  std::atomic<uint64_t> follows{0};
  std::atomic<bool> replicated{false};
};

// How a move replays each forwardable request on the part's new shard:
// the logged entry's op (a BatchOp), or for a table's writes by key that
// have none, its TableWrite; the request is the field named here (outer
// field first) of its MoveWrite.
// (An array: an initializer_list returned would outlive its elements.)
inline constexpr std::array<int, 2> LoggedPath(const AssignRequest*) {
  return {MoveWrite::kOpFieldNumber, BatchOp::kAssignFieldNumber};
}
inline constexpr std::array<int, 2> LoggedPath(const ScatterRequest*) {
  return {MoveWrite::kOpFieldNumber, BatchOp::kScatterFieldNumber};
}
inline constexpr std::array<int, 2> LoggedPath(const CountUpToRequest*) {
  return {MoveWrite::kOpFieldNumber, BatchOp::kCountUpToFieldNumber};
}
inline constexpr std::array<int, 2> LoggedPath(const ApplyDenseRequest*) {
  return {MoveWrite::kOpFieldNumber, BatchOp::kApplyDenseFieldNumber};
}
inline constexpr std::array<int, 2> LoggedPath(const ApplySparseRequest*) {
  return {MoveWrite::kOpFieldNumber, BatchOp::kApplySparseFieldNumber};
}
// A table's counting lookup (it admits keys, makes rows, counts uses).
inline constexpr std::array<int, 2> LoggedPath(const GatherRequest*) {
  return {MoveWrite::kOpFieldNumber, BatchOp::kGatherFieldNumber};
}
inline constexpr std::array<int, 2> LoggedPath(const EvictEmbeddingRequest*) {
  return {MoveWrite::kTableFieldNumber, TableWrite::kEvictFieldNumber};
}
inline constexpr std::array<int, 2> LoggedPath(const DeleteEmbeddingKeysRequest*) {
  return {MoveWrite::kTableFieldNumber, TableWrite::kDeleteKeysFieldNumber};
}
inline constexpr std::array<int, 2> LoggedPath(const ImportEmbeddingRequest*) {
  return {MoveWrite::kTableFieldNumber, TableWrite::kImportRowsFieldNumber};
}

template <typename Request>
void VariableStore::WriteMeta::LogAs(const Request& r) {
  request = &r;
  logged_path = LoggedPath(&r);
}

template <typename Request>
VariableStore::WriteMeta VariableStore::Forwarded(CallerKey caller, const Request& request) {
  WriteMeta meta{caller, request.shard_incarnation(), request.request_id()};
  meta.variable = &request.name();
  meta.LogAs(request);
  return meta;
}

template <typename Response, typename Op>
absl::Status VariableStore::RunOnce(const WriteMeta& meta, Response* response, Op&& op) {
  const RequestId& id = meta.request_id;
  if (id.client_id() == 0) return op();
  // A replayed write (a backup, a move's target) is never refused as too
  // old: its source applied it (RequestWindow::Begin).
  PSD_ASSIGN_OR_RETURN(std::optional<RequestWindow::Result> cached,
                       requests_.Begin(id, meta.caller, /*wait_for_running=*/true,
                                       /*replay=*/store_internal::ReplayingMove(),
                                       meta.variable != nullptr
                                           ? RequestWindow::ScopeOf(*meta.variable)
                                           : 0));
  if (cached.has_value()) {
    store_internal::RestoreResult(*cached, response);
    return cached->status;
  }
  RequestWindow::Result result;
  if (meta.variable != nullptr) result.scope = RequestWindow::ScopeOf(*meta.variable);
  result.status = op();
  // "Not here" answers ran nothing (the part is moving in, or moved away):
  // the id is not recorded, so a retry runs it where the part is, and the
  // window a move brings later (Import) is not shadowed by this answer.
  if (absl::IsUnavailable(result.status) ||
      (absl::IsAborted(result.status) &&
       absl::StrContains(result.status.message(), "stale handle"))) {
    requests_.Abandon(id);
    return result.status;
  }
  store_internal::SaveResult(*response, &result);
  absl::Status status = result.status;
  requests_.Finish(id, std::move(result));
  return status;
}

namespace store_internal {

// Holds the order locks of a group's moves and follows (MovingOut's, in id
// order, the one order every writer takes them in).
class OrderLocks {
 public:
  explicit OrderLocks(const std::vector<std::shared_ptr<MoveOut>>& moves)
      ABSL_NO_THREAD_SAFETY_ANALYSIS : moves_(moves) {
    for (const auto& m : moves_) m->order_mu.Lock();
  }
  ~OrderLocks() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (auto it = moves_.rbegin(); it != moves_.rend(); ++it) (*it)->order_mu.Unlock();
  }
  OrderLocks(const OrderLocks&) = delete;
  OrderLocks& operator=(const OrderLocks&) = delete;

 private:
  const std::vector<std::shared_ptr<MoveOut>>& moves_;
};

// The last write logged for `move` so far.
inline uint64_t LoggedSeq(MoveOut* move) {
  absl::MutexLock lock(&move->mu);
  return move->next_seq - 1;
}

}  // namespace store_internal

template <typename Response, typename Op>
absl::Status VariableStore::Mutate(const WriteMeta& meta, Response* response, Op&& op) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(meta.incarnation));
  // Before the op looks its variable up (and checks the lease there).
  const uint64_t lease_term = LeaseTerm();
  NoteWrite();
  std::optional<WriteGate::Pass> pass;
  if (meta.gated) pass.emplace(&gate_);
  std::vector<std::shared_ptr<MoveOut>> moves;
  if (meta.variable != nullptr && moving_out_count_.load(std::memory_order_acquire) > 0) {
    moves = MovingOut(*meta.variable);
  }
  if (moves.empty()) {
    absl::Status status = RunOnce(meta, response, std::forward<Op>(op));
    // A write that failed changed nothing: its own answer stands.
    if (meta.variable != nullptr && status.ok()) {
      PSD_RETURN_IF_ERROR(LeaseHeldToAnswer(*meta.variable, lease_term));
    }
    return status;
  }
  // A write to a group that moves out or has backups: applied and logged
  // under the order locks of all of them, so each target replays the
  // writes in the order they ran.
  std::vector<BackupWait> waits;
  absl::Status status;
  {
    store_internal::OrderLocks order(moves);
    std::vector<std::shared_ptr<MoveOut>> logging;
    // Follows a write that cannot be forwarded ends, once it went ahead.
    std::vector<std::shared_ptr<MoveOut>> unfollowable;
    const bool forwardable = meta.request != nullptr;
    // Moves first: one that refuses the write (frozen, moved) refuses it
    // before any follow was ended for it.
    std::vector<std::shared_ptr<MoveOut>> ordered;
    for (const auto& move : moves) if (!move->follow) ordered.push_back(move);
    for (const auto& move : moves) if (move->follow) ordered.push_back(move);
    for (const std::shared_ptr<MoveOut>& move : ordered) {
      const bool end_later = move->follow && !forwardable;
      PSD_ASSIGN_OR_RETURN(const bool log,
                           AdmitMovingWrite(move.get(), *meta.variable,
                                            forwardable || end_later ? "" : "this write"));
      if (log && end_later) {
        unfollowable.push_back(move);
      } else if (log) {
        logging.push_back(move);
      } else if (move->follow) {
        // Ended (by this write, or earlier while in sync): the write goes
        // ahead without it, once it is out of the in-sync set.
        waits.push_back({move, ~uint64_t{0}});
      }
    }
    bool ran = false;
    status = RunOnce(meta, response, [&] {
      ran = true;
      return op();
    });
    if (ran && status.ok()) {
      // It went ahead: the follows that cannot have it end now (under the
      // order locks, so no later write is logged for them), and it is
      // answered once each is out of the in-sync set.
      for (const std::shared_ptr<MoveOut>& move : unfollowable) {
        AdmitMovingWrite(move.get(), *meta.variable, "this write").IgnoreError();
        waits.push_back({move, ~uint64_t{0}});
      }
    } else {
      // A failed write changed nothing; one answered from the window ran
      // before (and ended them then if they were there): they follow on.
      for (const std::shared_ptr<MoveOut>& move : unfollowable) {
        if (!ran) waits.push_back({move, store_internal::LoggedSeq(move.get())});
      }
    }
    std::optional<grpc::Slice> logged;  // encoded once for all the logs
    for (const std::shared_ptr<MoveOut>& move : logging) {
      if (ran && !status.ok()) break;  // a failed write: nothing to log
      if (ran) {
        const uint64_t seq = LogMoveWrite(move.get(), meta, &logged);
        if (move->follow) waits.push_back({move, seq == 0 ? ~uint64_t{0} : seq});
      } else if (move->follow) {
        // Answered from the window: that write (or a later one) is logged
        // by now, so the backups must have everything logged so far.
        waits.push_back({move, store_internal::LoggedSeq(move.get())});
      }
    }
  }
  pass.reset();  // a fence need not wait for the backups
  // A batch message waits once for all its writes (DeferredAnswers); a
  // failed write too waits for an ended follow to leave the in-sync set.
  return AnswerLogged(&waits, *meta.variable, lease_term, std::move(status));
}

struct VariableStore::SparseGradient {
  std::vector<int64_t> indices;
  TensorShape values_shape;
  const TensorProto* values = nullptr;
};

// A dense gradient: a unary request's TensorProto (checked in ApplyOnce),
// or a streamed one staged in host memory, whose dtype, shape and size the
// stream's header gave and BeginAssignStream checked.
struct VariableStore::DenseGradient {
  const TensorProto* proto = nullptr;  // when unary
  DataType dtype = DT_INVALID;         // when streamed
  TensorShape shape;
  const void* data = nullptr;  // null in a check-only run
};

// The parts of one restore, checked and copied, waiting for FinishRestore.
struct VariableStore::StagedRestore {
  struct Part {
    RestorePart spec;
    TensorShape shape;
    Variable::Contents contents;
  };
  // An embedding table's part (or slot): its rows, gathered from the
  // checkpoint's saved parts, keys of this part only.
  struct TablePart {
    RestorePart spec;
    std::vector<int64_t> keys;
    std::string values;  // keys.size() * dim elements
    std::vector<int64_t> freqs;
    std::vector<int64_t> versions;
    MemoryReservation reservation;
  };
  absl::Time staged_at;
  std::vector<Part> parts;
  std::vector<TablePart> tables;
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_STORE_INTERNAL_H_
