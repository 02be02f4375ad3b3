// VariableStore: live part moves (proto ShardMove; docs/moves.md). The
// source pins the group and logs its writes (PullMove, FreezeMove,
// EndMoveOut); the target fills incoming parts from the snapshot and
// replays the log through the ops' own code (BeginMoveIn, ApplyMovePull,
// EndMoveIn).
#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "psd/dtype.h"
#include "psd/status.h"
#include "psd/stream_codec.h"
#include "psd/wire.h"
#include "shard/store_internal.h"

namespace psd {

using store_internal::Quoted;

namespace {

// Caps of one shard's moves (docs/moves.md, "Limits").
constexpr size_t kMaxMoveGroup = 256;       // parts moved together
constexpr size_t kMaxMovesOut = 4;          // groups moving out at once
constexpr size_t kMaxMovesIn = 4;           // groups moving in at once
// Follows (docs/replication.md) are not moves: a shard is the primary of
// many groups, each with up to two backups, and a backup of many.
constexpr size_t kMaxFollowsOut = 4096;  // backups following this shard's groups
constexpr size_t kMaxFollowsIn = 4096;   // groups this shard is a backup of
constexpr size_t kMaxPromotedRemembered = 1024;
constexpr size_t kMaxRememberedMovesOut = 64;  // ended ones kept for late pulls
constexpr int64_t kMaxMoveLogBytes = int64_t{256} << 20;  // writes waiting to be pulled
constexpr int64_t kMaxPullBytes = int64_t{4} << 20;       // one pull's answer
constexpr int kMaxPullWaitMs = 1000;
// How recent a write must be for the shard to count as busy (BusyWithWrites).
constexpr int64_t kBusyWindowMicros = 100'000;
// A target this close behind its source (logged writes not applied yet) is
// caught up: MoveStatus stops waiting, and the coordinator freezes the
// source (its kCaughtUpWrites is the same number).
constexpr uint64_t kMoveCaughtUpWrites = 16;
// A source whose target stopped pulling gives the move up after this.
constexpr auto kMoveIdle = std::chrono::seconds(60);
// How long the shard's writes may be held while a move pins its group.
constexpr absl::Duration kPinFenceLease = absl::Seconds(2);

thread_local bool t_replaying_move = false;

std::string MoveName(uint64_t move_id) { return absl::StrCat("move ", absl::Hex(move_id)); }

bool Active(const MoveOut& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m.mu) {
  return m.state == MoveOut::State::kForwarding || m.state == MoveOut::State::kFrozen;
}

// A member that is an embedding table's part with rows to copy (a slot's
// rows come with its table's member: a slot member carries nothing).
bool IsTableRows(const MovedMember& m) { return m.has_table() && m.table().slot_of().empty(); }

// The bytes a row of table member `m` carries: its value and slot rows,
// key, frequency and version.
int64_t TableRowBytes(const MovedMember& m) {
  const int64_t elem = std::max<int64_t>(1, DataTypeSize(m.dtype()));
  return std::max<int64_t>(1, m.table().dim()) * elem * (1 + m.table().columns_size()) + 24;
}

// What a table member's snapshot holds in bytes (progress and metrics
// count these; its pull offsets count ids, pending counts, Bloom bytes).
int64_t TableSnapshotBytes(const MovedMember& m) {
  if (!IsTableRows(m)) return 0;
  return m.table().rows() * TableRowBytes(m) + m.table().pending() * 16 + m.table().bloom_bytes();
}

// Where the chunk of table member `m` that starts at `offset` ends: a fixed
// range of entry ids (rows of up to ~4 MiB with every column), of pending
// counts, or of Bloom counter bytes, never across two of them. The source
// answers that range and the target expects it, so the target can plan
// chunks ahead (PlanMovePulls).
int64_t TableChunkEnd(const MovedMember& m, int64_t offset) {
  const MovedTable& t = m.table();
  const int64_t ids = t.ids();
  const int64_t pending_end = ids + t.pending();
  const int64_t total = pending_end + t.bloom_bytes();
  if (offset < ids) {
    return std::min(ids, offset + std::max<int64_t>(1, kMaxPullBytes / TableRowBytes(m)));
  }
  if (offset < pending_end) return std::min(pending_end, offset + kMaxPullBytes / 16);
  return std::min(total, offset + kMaxPullBytes);
}

// The offset of the chunk after the one at `offset` of member `m`.
int64_t NextPullOffset(const MovedMember& m, int64_t offset) {
  if (IsTableRows(m)) return TableChunkEnd(m, offset);
  return offset + std::min(kMaxPullBytes, m.total_bytes() - offset);
}

// The chunk of a table's cut at `offset` (see TableChunkEnd).
absl::Status FillTableChunk(const MoveOut::TableCut& cut, const MovedMember& info, int64_t offset,
                            MovedTableChunk* chunk) {
  const MovedTable& t = info.table();
  const int64_t end = TableChunkEnd(info, offset);
  if (offset < t.ids()) {
    EmbeddingSnapshot::Batch batch;
    PSD_RETURN_IF_ERROR(cut.cut.rows->ReadIds(offset, end, cut.columns, &batch));
    chunk->mutable_keys()->Assign(batch.keys.begin(), batch.keys.end());
    chunk->set_values(std::move(batch.columns[0]));
    for (size_t c = 1; c < batch.columns.size(); ++c) {
      chunk->add_slot_values(std::move(batch.columns[c]));
    }
    chunk->mutable_freqs()->Assign(batch.freqs.begin(), batch.freqs.end());
    chunk->mutable_versions()->Assign(batch.versions.begin(), batch.versions.end());
  } else if (offset < t.ids() + t.pending()) {
    for (int64_t i = offset - t.ids(); i < end - t.ids(); ++i) {
      chunk->add_pending_keys(cut.cut.pending[static_cast<size_t>(i)].first);
      chunk->add_pending_counts(cut.cut.pending[static_cast<size_t>(i)].second);
    }
  } else {
    const int64_t at = offset - t.ids() - t.pending();
    chunk->set_bloom(cut.cut.bloom.substr(static_cast<size_t>(at), static_cast<size_t>(end - offset)));
  }
  return absl::OkStatus();
}

// The variables a logged write changes (a table's slots with it); empty
// for an entry that is no write (or sets both `op` and `table`).
std::vector<const std::string*> WrittenNames(const MoveWrite& w) {
  if (w.has_table()) {
    if (w.has_op()) return {};
    const TableWrite& table = w.table();
    switch (table.op_case()) {
      case TableWrite::kEvict: return {&table.evict().name()};
      case TableWrite::kDeleteKeys: return {&table.delete_keys().name()};
      case TableWrite::kImportRows: {
        std::vector<const std::string*> names = {&table.import_rows().name()};
        for (const std::string& slot : table.import_rows().slots()) names.push_back(&slot);
        return names;
      }
      default: return {};
    }
  }
  const BatchOp& op = w.op();
  switch (op.op_case()) {
    case BatchOp::kAssign: return {&op.assign().name()};
    case BatchOp::kScatter: return {&op.scatter().name()};
    case BatchOp::kCountUpTo: return {&op.count_up_to().name()};
    case BatchOp::kApplyDense: {
      std::vector<const std::string*> names = {&op.apply_dense().name()};
      for (const std::string& slot : op.apply_dense().slots()) names.push_back(&slot);
      return names;
    }
    case BatchOp::kApplySparse: {
      std::vector<const std::string*> names = {&op.apply_sparse().name()};
      for (const std::string& slot : op.apply_sparse().slots()) names.push_back(&slot);
      return names;
    }
    case BatchOp::kGather: return {&op.gather().name()};  // a table's counting lookup
    default: return {};
  }
}

}  // namespace

namespace store_internal {

bool ReplayingMove() { return t_replaying_move; }
MoveReplayScope::MoveReplayScope() : previous_(t_replaying_move) { t_replaying_move = true; }
MoveReplayScope::~MoveReplayScope() { t_replaying_move = previous_; }

// The request window scope of entries imported with a group (a part and
// the parts beside it), RequestWindow::Result::scope: the same for the
// group wherever it goes next.
uint64_t GroupScope(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  return RequestWindow::ScopeOf(absl::StrCat("group\n", absl::StrJoin(names, "\n")));
}

// The scopes of a group's own entries: its parts' writes, and those it
// brought from its earlier shards (see GroupScope).
absl::flat_hash_set<uint64_t> GroupScopes(const std::vector<std::string>& names) {
  absl::flat_hash_set<uint64_t> scopes;
  for (const std::string& name : names) scopes.insert(RequestWindow::ScopeOf(name));
  scopes.insert(GroupScope(names));
  return scopes;
}

std::vector<std::string> MemberNames(const MoveOut& move) {
  std::vector<std::string> names;
  for (const MoveOut::Member& m : move.members) names.push_back(m.info.name());
  return names;
}

std::vector<std::string> PartNames(const StartMoveInRequest& request) {
  std::vector<std::string> names;
  for (const CreateVariableRequest& p : request.parts()) names.push_back(p.name());
  return names;
}

}  // namespace store_internal

// ---------------------------------------------------------------------------
// Source side

std::vector<std::shared_ptr<MoveOut>> VariableStore::MovingOut(const std::string& name) const {
  absl::MutexLock lock(&moves_mu_);
  auto it = moving_out_.find(name);
  if (it == moving_out_.end()) return {};
  return it->second;
}

std::shared_ptr<WriteGate> VariableStore::MoveGateFor(const std::string& name) const {
  if (moving_out_count_.load(std::memory_order_acquire) == 0) return nullptr;
  // Only a move closes its gate (follows are never frozen).
  for (const std::shared_ptr<MoveOut>& move : MovingOut(name)) {
    if (!move->follow) return std::shared_ptr<WriteGate>(move, &move->gate);
  }
  return nullptr;
}

bool VariableStore::MovesLocked(const std::string& name) const {
  auto it = moving_out_.find(name);
  if (it == moving_out_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(),
                     [](const std::shared_ptr<MoveOut>& m) { return !m->follow; });
}

void VariableStore::ForgetMovingOut(MoveOut* move) {
  absl::MutexLock lock(&moves_mu_);
  if (!move->listed) return;  // forgotten already
  move->listed = false;
  for (const MoveOut::Member& m : move->members) {
    auto it = moving_out_.find(m.info.name());
    if (it == moving_out_.end()) continue;
    auto& group = it->second;
    group.erase(std::remove_if(group.begin(), group.end(),
                               [&](const std::shared_ptr<MoveOut>& g) { return g.get() == move; }),
                group.end());
    if (group.empty()) {
      moving_out_.erase(it);
      // LRU eviction again (off while the group had moves or follows).
      if (m.table != nullptr && m.table->column == 0) m.table->table->SetEvictionAllowed(true);
    }
  }
  moving_out_count_.fetch_sub(1, std::memory_order_acq_rel);
}

absl::StatusOr<bool> VariableStore::AdmitMovingWrite(MoveOut* move, const std::string& name,
                                                     absl::string_view unforwarded) {
  MoveOut::State state;
  int32_t new_shard;
  {
    absl::MutexLock lock(&move->mu);
    state = move->state;
    new_shard = move->new_shard;
  }
  switch (state) {
    case MoveOut::State::kEnded: return false;
    case MoveOut::State::kMoved:
      return absl::AbortedError(absl::StrCat("stale handle: part ", name, " moved to shard ",
                                             new_shard,
                                             "; refresh the variable from the coordinator"));
    case MoveOut::State::kFrozen:
      return absl::UnavailableError(absl::StrCat(
          Quoted(name), " is switching to another shard (", MoveName(move->id),
          "); retry once the move completes"));
    case MoveOut::State::kForwarding: break;
  }
  if (unforwarded.empty()) return true;
  FailMoveOut(move, absl::AbortedError(absl::StrCat(
                        MoveName(move->id), " of ", Quoted(name), " was given up: ", unforwarded,
                        " of it cannot be forwarded to the target; move it again")));
  return false;
}

absl::Status VariableStore::NoteUnforwardedWrite(const std::string& name, absl::string_view what) {
  if (moving_out_count_.load(std::memory_order_acquire) == 0) return absl::OkStatus();
  const std::vector<std::shared_ptr<MoveOut>> moves = MovingOut(name);
  if (moves.empty()) return absl::OkStatus();
  std::vector<BackupWait> waits;
  {
    store_internal::OrderLocks order(moves);
    // Moves first: one that refuses the write (frozen, moved) refuses it
    // before any follow was ended for it.
    for (const bool follows : {false, true}) {
      for (const std::shared_ptr<MoveOut>& move : moves) {
        if (move->follow != follows) continue;
        PSD_RETURN_IF_ERROR(AdmitMovingWrite(move.get(), name, what).status());
        if (move->follow) waits.push_back({move, ~uint64_t{0}});
      }
    }
  }
  // A backup cannot follow it: the write goes ahead once the backups that
  // are in sync are out of the in-sync set.
  return WaitForBackups(waits, name);
}

void VariableStore::ForgetEndedFollow(MoveOut* move) {
  {
    absl::MutexLock lock(&move->mu);
    if (move->state == MoveOut::State::kForwarding || move->in_sync) return;
  }
  ForgetMovingOut(move);
}

void VariableStore::FailMoveOut(MoveOut* move, const absl::Status& why) {
  bool in_sync;
  {
    absl::MutexLock lock(&move->mu);
    if (move->state != MoveOut::State::kForwarding) return;
    in_sync = move->in_sync;
    move->state = MoveOut::State::kEnded;
    move->failure = why;
    move->log.clear();
    move->log_bytes = 0;
    move->log_reservation.Reset();
    // Tables' cuts go now: while pinned, their writers copy rows and LRU
    // eviction waits.
    move->table_cuts.clear();
    move->changed.SignalAll();
  }
  if (move->follow) {
    NotifyLogNews(move->id);
    ReleaseAckWaiters(move);  // ended: answered once the coordinator heard
  }
  // An in-sync follow stays listed: the writes after it (Mutate's
  // AdmitMovingWrite finds it ended) wait until the coordinator took it out
  // of the in-sync set (ReportBehind), so none is answered as replicated
  // while the registry still counts a backup that lacks it.
  if (!in_sync) ForgetMovingOut(move);
  // The pins go with the move object; the store's map keeps it (ended)
  // until EndMoveOut or the next move prunes it.
}

grpc::Slice VariableStore::EncodeLogged(const WriteMeta& meta) {
  if (!meta.amend_logged) return EncodeLoggedRequest(meta.caller, meta.logged_path, *meta.request);
  MoveWrite write;
  SetLoggedRequest(meta.logged_path, *meta.request, &write);
  meta.amend_logged(write.mutable_op());
  write.set_caller(meta.caller);
  return EncodeLoggedWrite(write);
}

uint64_t VariableStore::LogMoveWrite(MoveOut* move, const WriteMeta& meta,
                                     std::optional<grpc::Slice>* body) {
  if (!body->has_value()) *body = EncodeLogged(meta);
  return LogMoveEntry(move, **body, /*abort=*/false, *meta.variable, /*fail_when_full=*/true);
}

uint64_t VariableStore::LogMoveEntry(MoveOut* move, const MoveWrite& write,
                                     const std::string& variable, bool fail_when_full) {
  return LogMoveEntry(move, EncodeLoggedWrite(write), write.has_chunk() && write.chunk().abort(),
                      variable, fail_when_full);
}

uint64_t VariableStore::LogMoveEntry(MoveOut* move, grpc::Slice body, bool abort,
                                     const std::string& variable, bool fail_when_full) {
  const int64_t bytes = LoggedCharge(body);
  absl::Status failure;
  {
    absl::MutexLock lock(&move->mu);
    if (move->state != MoveOut::State::kForwarding) return 0;
    // A backup's lag is bounded by the backup timeout, not by this.
    if (!move->follow && std::chrono::steady_clock::now() - move->last_pull > kMoveIdle) {
      failure = absl::AbortedError(absl::StrCat(
          MoveName(move->id), " was given up: its target pulled nothing for ",
          std::chrono::duration_cast<std::chrono::seconds>(kMoveIdle).count(), " s"));
    } else if (!abort && move->log_bytes + bytes > kMaxMoveLogBytes) {
      failure = absl::ResourceExhaustedError(absl::StrCat(
          MoveName(move->id), " was given up: writes waiting for its target passed ",
          kMaxMoveLogBytes, " bytes (the target does not keep up)"));
    } else if (absl::Status room = memory_.Reserve(bytes, variable); !room.ok() && !abort) {
      failure = absl::ResourceExhaustedError(
          absl::StrCat(MoveName(move->id), " was given up: no memory to log a write for its "
                                           "target: ",
                       room.message()));
    } else {
      // An abort that found no room goes unreserved (popping shrinks the
      // reservation by at most what it holds).
      if (room.ok()) move->log_reservation.Merge(MemoryReservation(&memory_, bytes));
      move->log_bytes += bytes;
      const uint64_t seq = move->next_seq++;
      move->log.push_back(LoggedWrite{seq, std::move(body), bytes});
      move->changed.SignalAll();
      if (move->follow) NotifyLogNews(move->id);
      return seq;
    }
  }
  if (fail_when_full) FailMoveOut(move, failure);
  return 0;
}

bool VariableStore::MoveLogMayTake(MoveOut* move, int64_t bytes) {
  absl::MutexLock lock(&move->mu);
  return move->state == MoveOut::State::kForwarding && move->log_bytes + bytes <= kMaxMoveLogBytes;
}

absl::StatusOr<std::shared_ptr<MoveOut>> VariableStore::BeginMoveOut(
    const PullMoveRequest& request) {
  const uint64_t id = request.move_id();
  if (request.names().empty() || static_cast<size_t>(request.names_size()) > kMaxMoveGroup) {
    return absl::InvalidArgumentError(absl::StrCat(MoveName(id), " names ", request.names_size(),
                                                   " parts; a move takes 1 to ", kMaxMoveGroup));
  }
  // In the request's order: the target checks the members against it.
  const std::vector<std::string> names(request.names().begin(), request.names().end());
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return absl::InvalidArgumentError(absl::StrCat(MoveName(id), " names a part twice"));
  }
  {
    absl::MutexLock lock(&moves_mu_);
    // Forget moves that ended a while ago (kept so a late pull gets their
    // answer rather than starting them again).
    for (auto it = moves_out_.begin(); it != moves_out_.end();) {
      MoveOut& m = *it->second;
      absl::MutexLock move_lock(&m.mu);
      const bool old = std::chrono::steady_clock::now() - m.started > 2 * kMoveIdle;
      if ((m.state == MoveOut::State::kEnded || m.state == MoveOut::State::kMoved) && old) {
        it = moves_out_.erase(it);
      } else {
        ++it;
      }
    }
    // Ended moves are remembered only up to a bound: a caller that starts
    // and ends moves in a loop cannot grow the map.
    for (auto it = moves_out_.begin();
         moves_out_.size() >= kMaxRememberedMovesOut && it != moves_out_.end();) {
      absl::MutexLock move_lock(&it->second->mu);
      const MoveOut::State st = it->second->state;
      if (st == MoveOut::State::kEnded || st == MoveOut::State::kMoved) {
        it = moves_out_.erase(it);
      } else {
        ++it;
      }
    }
    size_t active = 0;
    for (const auto& [other_id, m] : moves_out_) {
      absl::MutexLock move_lock(&m->mu);
      if (Active(*m) && m->follow == request.follow()) ++active;
    }
    if (active >= (request.follow() ? kMaxFollowsOut : kMaxMovesOut)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this shard already ", request.follow() ? "has backups following " : "moves ", active,
          " groups of parts out (the limit); ", MoveName(id), " must wait"));
    }
    // A group has at most one move; follows go beside it and each other.
    if (!request.follow()) {
      for (const std::string& name : names) {
        if (MovesLocked(name)) {
          return absl::FailedPreconditionError(
              absl::StrCat(Quoted(name), " is already moving (", MoveName(id), ")"));
        }
      }
    }
  }
  auto move = std::make_shared<MoveOut>();
  move->id = id;
  move->follow = request.follow();
  move->target_shard = request.target_shard_id();
  // Every part first looked up and checked without holding writes. By
  // member: a dense part in `vars`, a table's part or slot in `tables`.
  std::vector<std::shared_ptr<Variable>> vars;
  std::vector<std::shared_ptr<EmbeddingPart>> tables;
  auto in_group = [&](const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  for (const std::string& name : names) {
    if (std::shared_ptr<EmbeddingPart> part = FindEmbedding(name)) {
      // A slot is a column of its table's rows: they move together.
      if (part->column != 0 && !in_group(part->primary)) {
        return absl::InvalidArgumentError(absl::StrCat(
            Quoted(name), " is a slot of table ", Quoted(part->primary),
            "; move the table's part (its slots go with it)"));
      }
      if (part->column == 0) {
        for (const std::string& slot : part->table->slot_names()) {
          if (!in_group(slot)) {
            return absl::FailedPreconditionError(absl::StrCat(
                MoveName(id), " takes ", Quoted(name), " without its slot ", Quoted(slot),
                "; a table's slots move with it"));
          }
        }
      }
      vars.push_back(nullptr);
      tables.push_back(std::move(part));
      continue;
    }
    PSD_ASSIGN_OR_RETURN(std::shared_ptr<Variable> var, Find(name));
    vars.push_back(std::move(var));
    tables.push_back(nullptr);
  }
  // Writes held for an instant: every write admitted before is applied
  // (so in the snapshot), every later one sees the group moving (so logged).
  const uint64_t fence_id = id ^ 0x6d6f76656d6f7665ULL;  // distinct from checkpoint fences
  absl::Status fenced = gate_.Fence(fence_id, kPinFenceLease);
  if (!fenced.ok()) {
    return absl::AbortedError(absl::StrCat(MoveName(id), " could not hold writes to pin its "
                                                         "parts (",
                                           fenced.message(), "); retry"));
  }
  absl::Status pinned = [&]() -> absl::Status {
    {
      absl::ReaderMutexLock lock(&mu_);
      for (size_t i = 0; i < names.size(); ++i) {
        const bool there =
            vars[i] != nullptr
                ? variables_.count(names[i]) > 0 && variables_.at(names[i]) == vars[i]
                : tables_.count(names[i]) > 0 && tables_.at(names[i]) == tables[i];
        if (!there) return absl::NotFoundError(absl::StrCat(Quoted(names[i]), " was deleted"));
      }
    }
    for (size_t i = 0; i < names.size(); ++i) {
      if (tables[i] != nullptr) {
        // Described now, pinned once registered (below).
        const EmbeddingPart& part = *tables[i];
        MoveOut::Member m;
        m.table = tables[i];
        m.info.set_name(part.name);
        m.info.set_dtype(part.dtype);
        m.info.mutable_shape()->add_dims(part.dim);
        m.info.set_initialized(true);
        m.info.set_version(part.version.load(std::memory_order_relaxed));
        MovedTable* t = m.info.mutable_table();
        t->set_dim(part.dim);
        if (part.column != 0) {
          t->set_slot_of(part.primary);
        } else {
          for (size_t j = 0; j < names.size(); ++j) {
            if (tables[j] != nullptr && tables[j]->primary == part.name) t->add_columns(names[j]);
          }
        }
        move->members.push_back(std::move(m));
        continue;
      }
      const std::shared_ptr<Variable>& var = vars[i];
      absl::ReaderMutexLock lock(&var->mu);
      if (!var->initialized) {
        return absl::FailedPreconditionError(absl::StrCat(
            Quoted(var->name), " is not initialized: initialize it before moving it"));
      }
      MoveOut::Member m;
      m.var = var;
      m.info.set_name(var->name);
      m.info.set_dtype(var->dtype);
      ShapeToProto(var->shape, m.info.mutable_shape());
      m.info.set_initialized(true);
      m.info.set_version(var->version);
      if (var->dtype == DT_STRING) {
        m.encoded_strings = EncodeStrings(var->contents->strings);
        m.info.set_total_bytes(static_cast<int64_t>(m.encoded_strings.size()));
      } else {
        m.pin = var->Pin(device_, options_.cow_chunk_bytes);
        m.info.set_total_bytes(m.pin->byte_size());
      }
      move->members.push_back(std::move(m));
    }
    // Tables' lookups are not held by the write gate, and those that count
    // change the part: the group is registered before its tables are
    // pinned, so a lookup either sees the move (and is logged, in order,
    // under order_mu, which is held until the pins are taken) or ran before
    // the pin (its table's move epoch tells, see GatherEmbedding).
    absl::MutexLock order(&move->order_mu);
    {
      absl::MutexLock lock(&moves_mu_);
      for (const std::string& name : names) {
        if (!move->follow && MovesLocked(name)) {
          return absl::FailedPreconditionError(absl::StrCat(Quoted(name), " is already moving"));
        }
      }
      for (const std::string& name : names) {
        auto& group = moving_out_[name];
        group.push_back(move);
        std::sort(group.begin(), group.end(),
                  [](const std::shared_ptr<MoveOut>& a, const std::shared_ptr<MoveOut>& b) {
                    return a->id < b->id;
                  });
      }
      move->listed = true;
      // No memory-driven LRU eviction while a table's part has a move or a
      // follow: an eviction is not logged, so the target or backup would
      // keep rows the source dropped (replicas must stay identical). An op
      // short of memory fails instead (RESOURCE_EXHAUSTED), as on a part
      // moving in. Back on once the last of them ended (ForgetMovingOut).
      for (const MoveOut::Member& m : move->members) {
        if (m.table != nullptr && m.table->column == 0) m.table->table->SetEvictionAllowed(false);
      }
      moving_out_count_.fetch_add(1);  // seq_cst: see GatherEmbedding
    }
    std::vector<std::shared_ptr<const MoveOut::TableCut>> cuts(move->members.size());
    absl::Status cut_status;
    for (size_t i = 0; i < move->members.size() && cut_status.ok(); ++i) {
      MoveOut::Member& m = move->members[i];
      if (m.table == nullptr || m.table->column != 0) continue;
      auto cut = std::make_shared<MoveOut::TableCut>();
      cut->cut = m.table->table->PinForMove();
      cut->columns.push_back(0);
      for (const std::string& slot : m.info.table().columns()) {
        cut->columns.push_back(m.table->table->FindSlot(slot));
      }
      const int64_t copied = static_cast<int64_t>(cut->cut.pending.size()) * 16 +
                             static_cast<int64_t>(cut->cut.bloom.size());
      cut_status = memory_.Reserve(copied, m.info.name());
      if (!cut_status.ok()) break;
      cut->reservation = MemoryReservation(&memory_, copied);
      MovedTable* t = m.info.mutable_table();
      t->set_ids(cut->cut.ids);
      t->set_pending(static_cast<int64_t>(cut->cut.pending.size()));
      t->set_bloom_bytes(static_cast<int64_t>(cut->cut.bloom.size()));
      t->set_rows(cut->cut.rows->rows());
      m.info.set_total_bytes(t->ids() + t->pending() + t->bloom_bytes());
      cuts[i] = std::move(cut);
    }
    if (!cut_status.ok()) {
      FailMoveOut(move.get(), cut_status);
      return cut_status;
    }
    {
      absl::MutexLock lock(&move->mu);
      move->table_cuts = std::move(cuts);
      // Every write admitted before the fence has finished (its request id
      // is in the window); every later one is logged for the backup.
      if (move->follow) {
        // Only the group's: see RequestWindow::Result::scope.
        const absl::flat_hash_set<uint64_t> scopes =
            store_internal::GroupScopes(store_internal::MemberNames(*move));
        requests_.Export(&move->window, &scopes);
      }
    }
    absl::MutexLock lock(&moves_mu_);
    moves_out_[id] = move;
    return absl::OkStatus();
  }();
  gate_.Unfence(fence_id, nullptr).IgnoreError();
  PSD_RETURN_IF_ERROR(pinned);
  return move;
}

void VariableStore::AckLocked(MoveOut* move, uint64_t applied_seq, AckedAnswers* acked) {
  // What the target applied can go.
  while (!move->log.empty() && move->log.front().seq <= applied_seq) {
    const int64_t bytes = move->log.front().charged;
    move->log_bytes -= bytes;
    move->log_reservation.Shrink(std::min(bytes, move->log_reservation.bytes()));
    move->log.pop_front();
  }
  if (applied_seq > move->acked_seq) {
    move->acked_seq = std::min(applied_seq, move->next_seq - 1);
    move->changed.SignalAll();  // writes waiting for this backup
    auto& waiters = move->ack_waiters;
    auto kept = std::partition(waiters.begin(), waiters.end(),
                               [&](const auto& w) { return w.first > move->acked_seq; });
    for (auto it = kept; it != waiters.end(); ++it) acked->push_back(std::move(it->second));
    waiters.erase(kept, waiters.end());
  }
}

namespace {
// How often the deadline watcher drops answers resumed meanwhile.
constexpr absl::Duration kAckWatchTidy = absl::Milliseconds(100);
}  // namespace

void VariableStore::ResumeAcked(AckedAnswers* acked) {
  for (std::shared_ptr<AckWaiter>& waiter : *acked) {
    if (waiter->pending.fetch_sub(1, std::memory_order_acq_rel) == 1 && waiter->Claim()) {
      waiter->resume(/*replicated=*/true);
    }
  }
  acked->clear();
}

void VariableStore::AnswerWhenReplicated(const PendingAnswers& pending,
                                         std::function<void(bool replicated)> resume) {
  // The backups cannot acknowledge what they have not heard of.
  FlushThreadLogNews();
  auto waiter = std::make_shared<AckWaiter>();
  const absl::Time start = absl::Now();
  waiter->deadline = pending.created_ + options_.backup_timeout;
  // A wait is counted (psd_shard_backup_waited_writes_total) when the
  // answer waited for an acknowledgement; the slow path's WaitForBackups
  // counts its own.
  const int64_t writes = static_cast<int64_t>(pending.kept_.size());
  AckWaiter* const self = waiter.get();  // owns the closure
  waiter->resume = [this, self, start, writes, resume = std::move(resume)](bool replicated) {
    if (replicated && self->waited) {
      waited_writes_.fetch_add(writes, std::memory_order_relaxed);
      wait_micros_.fetch_add(absl::ToInt64Microseconds(absl::Now() - start),
                             std::memory_order_relaxed);
    }
    resume(replicated);
  };
  // The last write each follow must acknowledge.
  std::vector<std::pair<MoveOut*, uint64_t>> need;
  for (const PendingAnswers::Kept& k : pending.kept_) {
    for (const BackupWait& w : k.waits) {
      auto it = std::find_if(need.begin(), need.end(),
                             [&](const auto& n) { return n.first == w.follow.get(); });
      if (it == need.end()) {
        need.emplace_back(w.follow.get(), w.seq);
      } else {
        it->second = std::max(it->second, w.seq);
      }
    }
  }
  // One count per follow, and one held while registering (so no
  // acknowledgement meanwhile resumes it before all are registered).
  waiter->pending.store(static_cast<int>(need.size()) + 1, std::memory_order_release);
  int acknowledged = 0;
  bool slow = false;
  for (const auto& [follow, seq] : need) {
    absl::MutexLock lock(&follow->mu);
    if (!follow->in_sync || follow->acked_seq >= seq) {
      ++acknowledged;
      continue;
    }
    if (follow->state != MoveOut::State::kForwarding) {
      slow = true;  // ended while in sync: the coordinator must hear first
      break;
    }
    waiter->waited = true;  // before it can be resumed from the list
    follow->ack_waiters.emplace_back(seq, waiter);
  }
  if (slow) {
    if (waiter->Claim()) waiter->resume(/*replicated=*/false);
    return;
  }
  if (waiter->pending.fetch_sub(acknowledged + 1, std::memory_order_acq_rel) ==
      acknowledged + 1) {
    if (waiter->Claim()) waiter->resume(/*replicated=*/true);
    return;
  }
  absl::MutexLock lock(&ack_watch_mu_);
  // Woken only when it waits for nothing (no thread hand-off per write):
  // otherwise it wakes for the front's deadline, or to drop resumed ones.
  if (ack_watch_.empty()) ack_watch_changed_.Signal();
  ack_watch_.push_back(waiter);
  if (!ack_watcher_.joinable()) ack_watcher_ = std::thread(&VariableStore::WatchAckDeadlines, this);
}

void VariableStore::ReleaseAckWaiters(MoveOut* move) {
  std::vector<std::pair<uint64_t, std::shared_ptr<AckWaiter>>> waiters;
  {
    absl::MutexLock lock(&move->mu);
    waiters.swap(move->ack_waiters);
  }
  for (auto& [seq, waiter] : waiters) {
    if (waiter->Claim()) waiter->resume(/*replicated=*/false);
  }
}

// The lock is let go around the resumes (manual Unlock/Lock inside the
// scoped lock), which the analysis cannot follow.
void VariableStore::WatchAckDeadlines() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  absl::MutexLock lock(&ack_watch_mu_);
  while (!ack_watch_stopping_) {
    // Answers resumed already (or gone) leave the front.
    std::shared_ptr<AckWaiter> front;
    while (!ack_watch_.empty()) {
      front = ack_watch_.front().lock();
      if (front != nullptr && !front->claimed.load()) break;
      ack_watch_.pop_front();
      front.reset();
    }
    if (front == nullptr) {
      ack_watch_changed_.Wait(&ack_watch_mu_);  // until one is registered
      continue;
    }
    const absl::Time now = absl::Now();
    if (now < front->deadline) {
      // Looks again at the deadline, or sooner to drop the resumed ones
      // behind the front: the list holds about kAckWatchTidy of answers.
      const absl::Time due = std::min(front->deadline, now + kAckWatchTidy);
      front.reset();
      ack_watch_changed_.WaitWithDeadline(&ack_watch_mu_, due);
      continue;
    }
    ack_watch_.pop_front();
    ack_watch_mu_.Unlock();
    if (front->Claim()) front->resume(/*replicated=*/false);
    front.reset();
    ack_watch_mu_.Lock();
  }
}

std::shared_ptr<MoveOut> VariableStore::FindMoveOut(uint64_t move_id) const {
  absl::MutexLock lock(&moves_mu_);
  auto it = moves_out_.find(move_id);
  return it == moves_out_.end() ? nullptr : it->second;
}

absl::Status VariableStore::AckPullLocked(MoveOut* move, uint64_t applied_seq,
                                          AckedAnswers* acked) {
  move->last_pull = std::chrono::steady_clock::now();
  if (!move->failure.ok()) return move->failure;
  if (move->state == MoveOut::State::kEnded || move->state == MoveOut::State::kMoved) {
    return absl::FailedPreconditionError(absl::StrCat(MoveName(move->id), " has ended"));
  }
  AckLocked(move, applied_seq, acked);
  return absl::OkStatus();
}

absl::Status VariableStore::PullFollowLog(const PullMoveRequest& request,
                                          PullMoveResponse* response, bool ack_only,
                                          AckedAnswers* acked, std::vector<LoggedWrite>* writes) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  std::shared_ptr<MoveOut> move = FindMoveOut(request.move_id());
  if (move == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        MoveName(request.move_id()), " is not known here (the shard restarted, or the follow "
                                     "was given up)"));
  }
  if (!move->follow || !request.follow()) {
    return absl::InvalidArgumentError(
        absl::StrCat(MoveName(move->id), ": only a backup's follow is streamed"));
  }
  if (request.member() != static_cast<int>(move->members.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        MoveName(move->id), ": a follow's stream carries its log, not member ",
        request.member(), " of its snapshot (pulled by PullMove)"));
  }
  if (!ack_only) {
    PullMoveRequest now = request;
    now.set_wait_ms(0);
    return PullMoveAcking(now, response, nullptr, acked, writes);
  }
  absl::MutexLock lock(&move->mu);
  return AckPullLocked(move.get(), request.applied_seq(), acked);
}

absl::Status VariableStore::PullMove(const PullMoveRequest& request, PullMoveResponse* response,
                                     bool* would_wait) {
  AckedAnswers acked;
  absl::Status status = PullMoveAcking(request, response, would_wait, &acked);
  ResumeAcked(&acked);
  return status;
}

absl::Status VariableStore::PullMoveRaw(const PullMoveRequest& request, PullMoveResponse* fields,
                                        RawPullAnswer* raw, bool* would_wait) {
  AckedAnswers acked;
  absl::Status status =
      PullMoveAcking(request, fields, would_wait, &acked, &raw->writes, &raw->content);
  ResumeAcked(&acked);
  return status;
}

absl::Status VariableStore::PullMoveAcking(const PullMoveRequest& request,
                                           PullMoveResponse* response, bool* would_wait,
                                           AckedAnswers* acked, std::vector<LoggedWrite>* writes,
                                           std::vector<grpc::Slice>* content) {
  if (would_wait != nullptr) *would_wait = false;
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  std::shared_ptr<MoveOut> move = FindMoveOut(request.move_id());
  if (move == nullptr) {
    if (request.member() != 0 || request.offset() != 0 || request.applied_seq() != 0) {
      return absl::NotFoundError(absl::StrCat(
          MoveName(request.move_id()), " is not known here (the shard restarted, or the move "
                                       "was given up)"));
    }
    PSD_ASSIGN_OR_RETURN(move, BeginMoveOut(request));
  }
  const int64_t max_bytes =
      std::clamp<int64_t>(request.max_bytes() > 0 ? request.max_bytes() : kMaxPullBytes,
                          4096, kMaxPullBytes);
  const int members = static_cast<int>(move->members.size());
  if (request.member() < 0 || request.member() > members) {
    return absl::InvalidArgumentError(absl::StrCat("pull of ", MoveName(move->id), " asks for member ",
                                                   request.member(), " of ", members));
  }
  if (request.follow() != move->follow) {
    return absl::FailedPreconditionError(absl::StrCat(
        MoveName(move->id), move->follow ? " is a backup's follow" : " is a move",
        "; the pull says otherwise"));
  }
  {
    absl::MutexLock lock(&move->mu);
    PSD_RETURN_IF_ERROR(AckPullLocked(move.get(), request.applied_seq(), acked));
  }
  if (request.member() == 0 && request.offset() == 0) {
    for (const MoveOut::Member& m : move->members) *response->add_members() = m.info;
    if (move->follow) {
      // The request ids the group applied before the snapshot.
      absl::MutexLock lock(&move->mu);
      *response->mutable_window() = move->window;
    }
  }
  if (request.member() < members) {
    // Snapshot bytes, from the pins (consistent as of the move's start).
    const MoveOut::Member& m = move->members[request.member()];
    const int64_t total = m.info.total_bytes();
    if (request.offset() < 0 || request.offset() > total) {
      return absl::InvalidArgumentError(absl::StrCat("pull of ", MoveName(move->id), " asks for offset ",
                                                     request.offset(), " of ", Quoted(m.info.name()),
                                                     " (", total, " bytes)"));
    }
    const int64_t n = std::min(max_bytes, total - request.offset());
    response->set_member(request.member());
    response->set_offset(request.offset());
    response->set_source_busy(BusyWithWrites());
    {
      // How far the log has got, so the target (and the coordinator, which
      // freezes only a target close behind) knows what the copy left.
      absl::MutexLock lock(&move->mu);
      response->set_final_seq(move->next_seq - 1);
    }
    if (m.table != nullptr) {
      if (!IsTableRows(m.info)) return absl::OkStatus();  // a slot: its rows come with its table
      std::shared_ptr<const MoveOut::TableCut> cut;
      {
        absl::MutexLock lock(&move->mu);
        if (static_cast<size_t>(request.member()) < move->table_cuts.size()) {
          cut = move->table_cuts[request.member()];
        }
      }
      if (cut == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(MoveName(move->id), " has ended"));
      }
      return FillTableChunk(*cut, m.info, request.offset(), response->mutable_table());
    }
    std::shared_ptr<const ValuePin> pin;
    {
      absl::MutexLock lock(&move->mu);
      if (move->snapshot_released) {
        return absl::FailedPreconditionError(absl::StrCat(
            MoveName(move->id), ": its snapshot was pulled whole and let go"));
      }
      pin = m.pin;
    }
    const size_t offset = static_cast<size_t>(request.offset());
    if (content == nullptr) {
      std::string* into = response->mutable_content();
      if (pin == nullptr) {
        into->assign(m.encoded_strings, offset, static_cast<size_t>(n));
      } else {
        into->resize(static_cast<size_t>(n));
        PSD_RETURN_IF_ERROR(pin->Read(request.offset(), n, into->data()));
      }
      return absl::OkStatus();
    }
    if (n == 0) return absl::OkStatus();
    if (pin == nullptr) {
      content->emplace_back(m.encoded_strings.data() + offset, static_cast<size_t>(n));
      return absl::OkStatus();
    }
    // Lent, as a streamed read lends (BeginReadStream): only while the
    // memory limit leaves room for the copy a write to a lent chunk makes
    // of the variable, so lending never makes a write fail for memory.
    if (memory_.limit() <= 0 || memory_.limit() - memory_.used() >= pin->byte_size()) {
      PSD_ASSIGN_OR_RETURN(std::vector<LentBytes> lent, pin->Lend(request.offset(), n));
      if (!lent.empty()) {
        for (LentBytes& piece : lent) content->push_back(LentSlice(std::move(piece)));
        return absl::OkStatus();
      }
    }
    char* into = nullptr;
    grpc::Slice copy = move->chunk_buffers->NewSlice(static_cast<size_t>(n), &into);
    PSD_RETURN_IF_ERROR(pin->Read(request.offset(), n, into));
    content->push_back(std::move(copy));
    return absl::OkStatus();
  }
  if (move->follow) {
    // The backup has the whole snapshot (it asks for the log): the pins go,
    // so the primary no longer keeps the snapshot's values beside the
    // values it serves (a replaced value went back to no staging pool, and
    // every write to a pinned chunk copied it) for as long as it follows.
    absl::MutexLock lock(&move->mu);
    if (!move->snapshot_released) {
      move->snapshot_released = true;
      for (MoveOut::Member& m : move->members) m.pin.reset();
      move->chunk_buffers->Retire();
      move->table_cuts.clear();  // a live cut makes the table's writers copy rows
    }
  }
  // Logged writes after applied_seq, waiting a little for some to come.
  response->set_member(members);
  absl::ReleasableMutexLock lock(&move->mu);
  const absl::Duration wait = absl::Milliseconds(std::clamp(request.wait_ms(), 0, kMaxPullWaitMs));
  const absl::Time deadline = absl::Now() + wait;
  const uint64_t after = std::max(request.applied_seq(), request.after_seq());
  auto has_news = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(move->mu) {
    return move->state != MoveOut::State::kForwarding ||
           (!move->log.empty() && move->log.back().seq > after);
  };
  if (would_wait != nullptr && move->follow && wait > absl::ZeroDuration()) {
    // The caller parks the pull instead of holding its thread, and asks
    // again once a write is logged (SetLogNewsHandler) or `wait` passed.
    *would_wait = !has_news();
  } else if (wait > absl::ZeroDuration()) {
    // (Not even a timed wait without one: a wait of zero still sleeps
    // through the condition variable's slow path.)
    while (!has_news() && move->changed.WaitWithDeadline(&move->mu, deadline) == false) {
    }
  }
  if (!move->failure.ok()) return move->failure;
  // The writes' bytes are shared, not copied, under the lock; a unary
  // pull's answer parses them after it.
  std::vector<LoggedWrite> pulled;
  std::vector<LoggedWrite>* out = writes != nullptr ? writes : &pulled;
  const size_t first = out->size();
  int64_t bytes = 0;
  uint64_t last = after;
  for (const LoggedWrite& w : move->log) {
    if (w.seq <= after) continue;
    // Its entry's bytes in the answer: the body, the seq, the header.
    const int64_t b = static_cast<int64_t>(w.body.size()) + 16;
    if (out->size() > first && bytes + b > max_bytes) break;
    out->push_back(w);
    bytes += b;
    last = w.seq;
  }
  // How far the log goes now, so the target knows how far behind it is.
  response->set_final_seq(move->next_seq - 1);
  if (move->state == MoveOut::State::kFrozen && last == move->final_seq) {
    response->set_end(true);
    response->set_final_seq(move->final_seq);
    *response->mutable_window() = move->window;
  }
  lock.Release();
  for (const LoggedWrite& w : pulled) {
    PSD_RETURN_IF_ERROR(DecodeLoggedWrite(w, response->add_writes()));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> VariableStore::FreezeMove(uint64_t move_id, uint64_t incarnation) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(incarnation));
  std::shared_ptr<MoveOut> move;
  {
    absl::MutexLock lock(&moves_mu_);
    auto it = moves_out_.find(move_id);
    if (it == moves_out_.end()) {
      return absl::NotFoundError(absl::StrCat(MoveName(move_id), " is not known here"));
    }
    move = it->second;
  }
  if (move->follow) {
    return absl::FailedPreconditionError(absl::StrCat(
        MoveName(move_id), " is a backup's follow: it is never frozen (PromoteReplica the "
                           "backup, or EndMove it)"));
  }
  {
    absl::MutexLock lock(&move->mu);
    if (!move->failure.ok()) return move->failure;
    if (move->state == MoveOut::State::kFrozen) return move->final_seq;
    if (move->state != MoveOut::State::kForwarding) {
      return absl::FailedPreconditionError(absl::StrCat(MoveName(move_id), " has ended"));
    }
  }
  // Parks every later write to the group that comes through the service,
  // and waits for those admitted to finish.
  PSD_RETURN_IF_ERROR(move->gate.Fence(move_id, absl::InfiniteDuration()));
  // And those that came another way (they hold order_mu while they run).
  absl::MutexLock order(&move->order_mu);
  absl::Status gone;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const MoveOut::Member& m : move->members) {
      const std::string& name = m.info.name();
      const bool there = m.table != nullptr
                             ? tables_.count(name) > 0 && tables_.at(name) == m.table
                             : variables_.count(name) > 0 && variables_.at(name) == m.var;
      if (!there) {
        gone = absl::AbortedError(absl::StrCat(MoveName(move_id), " was given up: ",
                                               Quoted(m.info.name()), " was deleted"));
        break;
      }
    }
  }
  if (!gone.ok()) {
    FailMoveOut(move.get(), gone);
    move->gate.Unfence(move_id, nullptr).IgnoreError();
    return gone;
  }
  absl::MutexLock lock(&move->mu);
  if (!move->failure.ok()) {
    move->gate.Unfence(move_id, nullptr).IgnoreError();
    return move->failure;
  }
  move->state = MoveOut::State::kFrozen;
  move->final_seq = move->next_seq - 1;
  {
    const absl::flat_hash_set<uint64_t> scopes =
        store_internal::GroupScopes(store_internal::MemberNames(*move));
    requests_.Export(&move->window, &scopes);
  }
  move->changed.SignalAll();
  return move->final_seq;
}

absl::Status VariableStore::EndMoveOut(uint64_t move_id, bool committed, int32_t new_shard) {
  std::shared_ptr<MoveOut> move;
  {
    absl::MutexLock lock(&moves_mu_);
    auto it = moves_out_.find(move_id);
    if (it == moves_out_.end()) return absl::OkStatus();
    move = it->second;
  }
  {
    absl::MutexLock order(&move->order_mu);
    bool was_active;
    {
      absl::MutexLock lock(&move->mu);
      if (committed && move->follow) {
        return absl::FailedPreconditionError(absl::StrCat(
            MoveName(move_id), " is a backup's follow: it never commits (PromoteReplica the "
                               "backup instead)"));
      }
      // Dropped by the coordinator: writes no longer wait for it.
      move->in_sync = false;
      if (committed) {
        if (move->state == MoveOut::State::kMoved) return absl::OkStatus();
        if (move->state != MoveOut::State::kFrozen) {
          return absl::FailedPreconditionError(absl::StrCat(
              MoveName(move_id), " cannot commit here: its writes were not frozen"));
        }
      }
      was_active = move->state == MoveOut::State::kForwarding ||
                   move->state == MoveOut::State::kFrozen;
      move->state = committed ? MoveOut::State::kMoved : MoveOut::State::kEnded;
      move->new_shard = new_shard;
      if (move->failure.ok() && !committed) {
        move->failure = absl::AbortedError(absl::StrCat(MoveName(move_id), " was given up"));
      }
      move->log.clear();
      move->log_bytes = 0;
      move->log_reservation.Reset();
      move->table_cuts.clear();
      move->changed.SignalAll();
    }
    if (committed) {
      // The parts live on the target now: dropped here (their memory goes
      // with the last op still holding them), their names stale.
      absl::MutexLock lock(&mu_);
      for (const MoveOut::Member& m : move->members) {
        const std::string& name = m.info.name();
        if (m.table != nullptr) {
          auto t = tables_.find(name);
          if (t != tables_.end() && t->second == m.table) tables_.erase(t);
          // A counting lookup that found the part before it went must not
          // change it now (its effect would be lost): it answers stale.
          if (m.table->column == 0) m.table->table->Retire();
        } else {
          auto it = variables_.find(name);
          if (it != variables_.end() && it->second == m.var) variables_.erase(it);
        }
        if (moved_away_.emplace(name, new_shard).second) {
          moved_away_order_.push_back(name);
        } else {
          moved_away_[name] = new_shard;
        }
      }
      while (moved_away_order_.size() > kMaxMovedAway) {
        moved_away_.erase(moved_away_order_.front());
        moved_away_order_.pop_front();
      }
    }
    // Also an ended follow kept listed while in sync (FailMoveOut).
    (void)was_active;
    ForgetMovingOut(move.get());
    if (move->follow) {
      NotifyLogNews(move_id);  // its parked pull answers now
      ReleaseAckWaiters(move.get());  // out of the in-sync set: not waited for
    }
    if (committed) {
      // The group's backups followed this shard; they must follow its new
      // primary (the coordinator makes them again from there).
      for (const MoveOut::Member& m : move->members) {
        for (const std::shared_ptr<MoveOut>& follow : MovingOut(m.info.name())) {
          FailMoveOut(follow.get(), absl::AbortedError(absl::StrCat(
                                        MoveName(follow->id), " ended: its group moved to shard ",
                                        new_shard)));
        }
      }
    }
    {
      absl::MutexLock lock(&move->mu);
      move->snapshot_released = true;
      for (MoveOut::Member& m : move->members) m.pin.reset();
      move->chunk_buffers->Retire();
    }
    for (MoveOut::Member& m : move->members) m.encoded_strings.clear();
  }
  // Remembered (for late pulls) as a copy that holds none of the parts: a
  // moved part's memory (a table's rows) goes with the last op still
  // holding it, not when the remembered move is pruned.
  auto ended = std::make_shared<MoveOut>();
  ended->id = move->id;
  ended->started = move->started;
  for (const MoveOut::Member& m : move->members) {
    MoveOut::Member info;
    info.info = m.info;
    ended->members.push_back(std::move(info));
  }
  {
    absl::MutexLock lock(&move->mu);
    absl::MutexLock ended_lock(&ended->mu);
    ended->state = move->state;
    ended->follow = move->follow;
    ended->failure = move->failure;
    ended->new_shard = move->new_shard;
  }
  {
    absl::MutexLock lock(&moves_mu_);
    auto it = moves_out_.find(move_id);
    if (it != moves_out_.end() && it->second == move) it->second = std::move(ended);
  }
  // Held writes resume: committed, they find the parts gone (stale
  // handle); given up, they run here as before.
  move->gate.Unfence(move_id, nullptr).IgnoreError();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Target side

std::shared_ptr<MoveIn> VariableStore::FindMoveIn(uint64_t move_id) const {
  absl::MutexLock lock(&moves_mu_);
  auto it = moves_in_.find(move_id);
  return it == moves_in_.end() ? nullptr : it->second;
}

absl::Status VariableStore::BeginMoveIn(const StartMoveInRequest& request) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  const uint64_t id = request.move_id();
  if (request.parts().empty() || static_cast<size_t>(request.parts_size()) > kMaxMoveGroup) {
    return absl::InvalidArgumentError(absl::StrCat(MoveName(id), " names ", request.parts_size(),
                                                   " parts; a move takes 1 to ", kMaxMoveGroup));
  }
  {
    absl::MutexLock lock(&moves_mu_);
    if (moves_in_.count(id) > 0) return absl::OkStatus();  // a repeated start
    size_t active = 0;
    for (const auto& [other_id, m] : moves_in_) {
      if (m->request.follow() == request.follow()) ++active;
    }
    if (active >= (request.follow() ? kMaxFollowsIn : kMaxMovesIn)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this shard already ", request.follow() ? "follows " : "takes ", active,
          request.follow() ? " groups as a backup" : " moves in", " (the limit); ",
          MoveName(id), " must wait"));
    }
  }
  auto move = std::make_shared<MoveIn>();
  move->id = id;
  move->request = request;
  std::vector<std::string> created;
  const int n = request.parts_size();
  move->vars.resize(n);
  move->tables.resize(n);
  absl::Status status = [&]() -> absl::Status {
    // Slots after the tables they are columns of (a slot's create finds
    // its table, incoming, as a replay does).
    std::vector<int> order;
    for (int i = 0; i < n; ++i) {
      if (request.parts(i).embedding().slot_of().empty()) order.push_back(i);
    }
    for (int i = 0; i < n; ++i) {
      const std::string& slot_of = request.parts(i).embedding().slot_of();
      if (slot_of.empty()) continue;
      // Only a column of a table moving in with it (never of one served here).
      if (std::none_of(request.parts().begin(), request.parts().end(),
                       [&](const CreateVariableRequest& p) {
                         return p.name() == slot_of && p.has_embedding() &&
                                p.embedding().slot_of().empty();
                       })) {
        return absl::InvalidArgumentError(absl::StrCat(
            MoveName(id), " takes slot ", Quoted(request.parts(i).name()), " without its table ",
            Quoted(slot_of)));
      }
      order.push_back(i);
    }
    store_internal::MoveReplayScope replay;
    for (int i : order) {
      const CreateVariableRequest& part = request.parts(i);
      CreateVariableRequest create = part;
      create.clear_initial_value();
      create.set_initialize(false);
      create.clear_request_id();
      create.set_shard_incarnation(0);
      VariableInfo info;
      if (part.has_embedding()) {
        PSD_RETURN_IF_ERROR(ValidateVariableName(part.name()));
        PSD_RETURN_IF_ERROR(CreateEmbeddingOnce(create, &info, /*incoming=*/true));
        created.push_back(part.name());
        std::shared_ptr<EmbeddingPart> table = FindEmbedding(part.name());
        if (table == nullptr) {
          return absl::AbortedError(absl::StrCat(Quoted(part.name()), " was deleted"));
        }
        // Its replayed ops must change it as they changed the source's.
        if (table->column == 0) table->table->SetEvictionAllowed(false);
        if (request.follow()) table->follows.store(id, std::memory_order_release);
        move->tables[i] = std::move(table);
        continue;
      }
      PSD_RETURN_IF_ERROR(CreateOnce(create, &info));
      created.push_back(part.name());
      PSD_ASSIGN_OR_RETURN(std::shared_ptr<Variable> var, Find(part.name()));
      if (request.follow()) var->follows.store(id, std::memory_order_release);
      var->incoming.store(true, std::memory_order_release);
      move->vars[i] = std::move(var);
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    absl::MutexLock lock(&mu_);
    for (const std::string& name : created) {
      variables_.erase(name);
      tables_.erase(name);
    }
    return status;
  }
  absl::MutexLock lock(&moves_mu_);
  moves_in_[id] = move;
  return absl::OkStatus();
}

bool VariableStore::BusyWithWrites() const {
  const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  return now - last_write_micros_.load(std::memory_order_relaxed) < kBusyWindowMicros;
}

bool VariableStore::NextMovePull(uint64_t move_id, PullMoveRequest* request) const {
  std::vector<PullMoveRequest> next = PlanMovePulls(move_id, 1);
  if (next.empty()) return false;
  *request = std::move(next.front());
  return true;
}

std::vector<PullMoveRequest> VariableStore::PlanMovePulls(uint64_t move_id, int max,
                                                          bool* copying) const {
  std::vector<PullMoveRequest> plan;
  if (copying != nullptr) *copying = false;
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) return plan;
  absl::MutexLock lock(&move->mu);
  if (copying != nullptr) *copying = move->phase == MOVE_COPYING;
  if (move->ended || move->phase == MOVE_READY || move->phase == MOVE_FAILED) return plan;
  PullMoveRequest request;
  request.set_move_id(move_id);
  for (const CreateVariableRequest& part : move->request.parts()) {
    request.add_names(part.name());
  }
  request.set_member(move->member);
  request.set_offset(move->offset);
  request.set_applied_seq(move->applied_seq);
  request.set_max_bytes(kMaxPullBytes);
  // A backup long-polls: the pull returns as soon as a write is logged,
  // and the next one acknowledges it (writes wait for that).
  request.set_wait_ms(move->phase == MOVE_FORWARDING ? (move->request.follow() ? kMaxPullWaitMs : 200)
                                                     : 0);
  request.set_follow(move->request.follow());
  request.set_shard_incarnation(move->request.source_incarnation());
  plan.push_back(request);
  // Chunks ahead are known once the first answer said how big each member
  // is; logged writes are pulled one answer at a time (each pull says
  // which it applied).
  if (move->phase != MOVE_COPYING || move->members.empty()) return plan;
  const int members = static_cast<int>(move->members.size());
  int member = move->member;
  int64_t offset = move->offset;
  while (static_cast<int>(plan.size()) < max && member < members) {
    const int64_t total = move->members[member].total_bytes();
    offset = NextPullOffset(move->members[member], offset);
    if (offset >= total) {
      ++member;
      offset = 0;
    }
    if (member >= members) break;
    request.set_member(member);
    request.set_offset(offset);
    plan.push_back(request);
  }
  return plan;
}

absl::Status VariableStore::InstallTableChunk(MoveIn* move, const PullMoveResponse& response) {
  const MovedMember& info = move->members[move->member];
  const std::shared_ptr<EmbeddingPart>& part = move->tables[move->member];
  if (response.member() != move->member || response.offset() != move->offset) {
    return absl::DataLossError(absl::StrCat("the source sent ", Quoted(info.name()),
                                            " rows at member ", response.member(), " offset ",
                                            response.offset(), ", expected member ", move->member,
                                            " offset ", move->offset));
  }
  const MovedTableChunk& chunk = response.table();
  if (!response.content().empty()) {
    return absl::DataLossError(absl::StrCat("the source sent bytes for table part ",
                                            Quoted(info.name()), "; it sends rows"));
  }
  auto whole = [&] {
    part->version.store(info.version(), std::memory_order_relaxed);
    ++move->member;
    move->offset = 0;
  };
  if (!IsTableRows(info)) {
    if (chunk.ByteSizeLong() != 0) {
      return absl::DataLossError(absl::StrCat("the source sent rows for slot ", Quoted(info.name()),
                                              "; its rows come with its table"));
    }
    whole();
    return absl::OkStatus();
  }
  const MovedTable& t = info.table();
  const int64_t end = TableChunkEnd(info, move->offset);
  const int64_t n = chunk.keys_size();
  auto bad = [&](auto&&... what) {
    return absl::DataLossError(absl::StrCat("the source's chunk of ", Quoted(info.name()), " at ",
                                            move->offset, ": ", what...));
  };
  if (move->offset < t.ids()) {
    const size_t row_bytes = static_cast<size_t>(t.dim()) * DataTypeSize(info.dtype());
    if (n > end - move->offset || chunk.values().size() != static_cast<size_t>(n) * row_bytes ||
        chunk.slot_values_size() != t.columns_size() || chunk.freqs_size() != n ||
        chunk.versions_size() != n || chunk.pending_keys_size() != 0 ||
        chunk.pending_counts_size() != 0 || !chunk.bloom().empty()) {
      return bad(n, " keys for ids [", move->offset, ", ", end, ") with ", chunk.values().size(),
                 " value bytes, ", chunk.slot_values_size(), " slot columns (", t.columns_size(),
                 " moved), ", chunk.freqs_size(), " freqs, ", chunk.versions_size(), " versions");
    }
    std::vector<int> columns;
    std::vector<const void*> slot_values;
    for (int c = 0; c < t.columns_size(); ++c) {
      if (chunk.slot_values(c).size() != static_cast<size_t>(n) * row_bytes) {
        return bad("slot column ", c, " holds ", chunk.slot_values(c).size(), " bytes for ", n,
                   " keys");
      }
      const int column = part->table->FindSlot(t.columns(c));
      if (column < 0) return bad("no slot ", Quoted(t.columns(c)), " here");
      columns.push_back(column);
      slot_values.push_back(chunk.slot_values(c).data());
    }
    if (n > 0) {
      const std::vector<int64_t> keys(chunk.keys().begin(), chunk.keys().end());
      const std::vector<int64_t> freqs(chunk.freqs().begin(), chunk.freqs().end());
      const std::vector<int64_t> versions(chunk.versions().begin(), chunk.versions().end());
      PSD_RETURN_IF_ERROR(part->table->Import(keys, chunk.values().data(), columns, slot_values,
                                              freqs, versions));
    }
  } else if (move->offset < t.ids() + t.pending()) {
    if (chunk.pending_keys_size() != end - move->offset ||
        chunk.pending_counts_size() != chunk.pending_keys_size() || n != 0 ||
        !chunk.values().empty() || chunk.slot_values_size() != 0 || !chunk.bloom().empty()) {
      return bad(chunk.pending_keys_size(), " pending keys and ", chunk.pending_counts_size(),
                 " counts, expected ", end - move->offset);
    }
    const std::vector<int64_t> keys(chunk.pending_keys().begin(), chunk.pending_keys().end());
    const std::vector<int64_t> counts(chunk.pending_counts().begin(),
                                      chunk.pending_counts().end());
    PSD_RETURN_IF_ERROR(part->table->ImportPending(keys, counts));
  } else {
    if (static_cast<int64_t>(chunk.bloom().size()) != end - move->offset || n != 0 ||
        chunk.pending_keys_size() != 0 || !chunk.values().empty() ||
        chunk.slot_values_size() != 0) {
      return bad(chunk.bloom().size(), " Bloom counter bytes, expected ", end - move->offset);
    }
    PSD_RETURN_IF_ERROR(
        part->table->ImportBloom(move->offset - t.ids() - t.pending(), chunk.bloom()));
  }
  // In bytes, as TableSnapshotBytes counts them.
  move->copied_bytes += move->offset < t.ids()
                            ? n * TableRowBytes(info)
                            : (move->offset < t.ids() + t.pending() ? 16 : 1) * (end - move->offset);
  move->offset = end;
  if (move->offset >= info.total_bytes()) whole();
  return absl::OkStatus();
}

absl::Status VariableStore::CheckMovedTable(const MoveIn& move, int i,
                                            const MovedMember& m) const {
  const CreateVariableRequest& part = move.request.parts(i);
  const MovedTable& t = m.table();
  auto bad = [&](auto&&... what) {
    return absl::DataLossError(absl::StrCat("the source's table part ", Quoted(m.name()), " of ",
                                            MoveName(move.id), ": ", what...));
  };
  if (t.slot_of() != part.embedding().slot_of() || t.dim() != part.embedding().embedding_dim()) {
    return bad("a slot of ", Quoted(t.slot_of()), " with dim ", t.dim(), "; expected a slot of ",
               Quoted(part.embedding().slot_of()), " with dim ", part.embedding().embedding_dim());
  }
  // Entry ids are 32-bit; no part holds a PiB.
  constexpr int64_t kMaxUnits = int64_t{1} << 32;
  for (int64_t units : {t.ids(), t.pending(), t.bloom_bytes()}) {
    if (units < 0 || units > kMaxUnits) return bad("a cut of ", units, " ids, counts or bytes");
  }
  if (t.rows() < 0 || t.rows() > t.ids() ||
      t.rows() > (int64_t{1} << 50) / TableRowBytes(m)) {
    return bad(t.rows(), " rows in ", t.ids(), " ids");
  }
  if (!t.slot_of().empty()) {
    if (m.total_bytes() != 0 || t.columns_size() != 0 || t.ids() != 0 || t.pending() != 0 ||
        t.bloom_bytes() != 0) {
      return bad("a slot carries nothing of its own (its rows come with its table)");
    }
    return absl::OkStatus();
  }
  if (m.total_bytes() != t.ids() + t.pending() + t.bloom_bytes()) {
    return bad(m.total_bytes(), " units, not ", t.ids(), " + ", t.pending(), " + ",
               t.bloom_bytes());
  }
  // Each row carries exactly the slots that move with the table.
  std::vector<std::string> want, got(t.columns().begin(), t.columns().end());
  for (const CreateVariableRequest& p : move.request.parts()) {
    if (p.has_embedding() && p.embedding().slot_of() == part.name()) want.push_back(p.name());
  }
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  if (want != got) {
    return bad("rows carry slots [", absl::StrJoin(got, ", "), "]; the move takes [",
               absl::StrJoin(want, ", "), "]");
  }
  return absl::OkStatus();
}

absl::Status VariableStore::InstallMoveChunk(MoveIn* move, const PullMoveResponse& response,
                                             const ContentMessage* content) {
  if (move->tables[move->member] != nullptr) {
    if (content != nullptr && content->content_size() > 0) {
      return absl::DataLossError(absl::StrCat("the source sent bytes for table part ",
                                              Quoted(move->members[move->member].name()),
                                              "; it sends rows"));
    }
    return InstallTableChunk(move, response);
  }
  const MovedMember& info = move->members[move->member];
  const std::shared_ptr<Variable>& var = move->vars[move->member];
  if (response.member() != move->member || response.offset() != move->offset) {
    return absl::DataLossError(absl::StrCat("the source sent ", Quoted(info.name()), " bytes at member ",
                                            response.member(), " offset ", response.offset(),
                                            ", expected member ", move->member, " offset ",
                                            move->offset));
  }
  // The bytes in pieces: a received answer's slices, or the parsed field.
  absl::InlinedVector<absl::string_view, 4> pieces;
  if (content != nullptr) {
    pieces.assign(content->content().begin(), content->content().end());
  } else {
    pieces.push_back(response.content());
  }
  int64_t n = 0;
  for (absl::string_view piece : pieces) n += static_cast<int64_t>(piece.size());
  if (n > info.total_bytes() - move->offset) {
    return absl::DataLossError(absl::StrCat("the source sent more bytes of ", Quoted(info.name()),
                                            " than its ", info.total_bytes()));
  }
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromProto(info.shape(), absl::StrCat("moved ", Quoted(info.name()))));
  if (move->offset == 0) {
    if (info.dtype() == DT_STRING) {
      move->filling_strings.clear();
    } else {
      PSD_ASSIGN_OR_RETURN(move->filling,
                           store_internal::Allocate(device_, &memory_, info.dtype(), shape, info.name()));
      if (static_cast<int64_t>(move->filling.buffer->size()) != info.total_bytes()) {
        return absl::DataLossError(absl::StrCat("the source's ", Quoted(info.name()), " holds ",
                                                info.total_bytes(), " bytes; its shape ",
                                                shape.ToString(), " takes ",
                                                move->filling.buffer->size()));
      }
      move->filling.buffer->AdviseSmallPages(true);
    }
  }
  int64_t at = move->offset;
  for (absl::string_view piece : pieces) {
    if (info.dtype() == DT_STRING) {
      move->filling_strings.append(piece.data(), piece.size());
    } else if (!piece.empty()) {
      PSD_RETURN_IF_ERROR(device_->CopyFromHost(
          piece.data(), piece.size(), move->filling.buffer.get(), static_cast<size_t>(at)));
    }
    at += static_cast<int64_t>(piece.size());
  }
  move->offset += n;
  move->copied_bytes += n;
  if (move->offset < info.total_bytes()) return absl::OkStatus();
  // The member is whole: it becomes the incoming part's value.
  Variable::Contents contents;
  if (info.dtype() == DT_STRING) {
    MemoryReservation charged;
    PSD_ASSIGN_OR_RETURN(std::vector<std::string> strings,
                         store_internal::DecodeStringsCharged(&memory_, move->filling_strings,
                                                              shape.num_elements(), "moved value",
                                                              info.name(), &charged));
    contents.shape = shape;
    contents.strings = std::move(strings);
    contents.reservation = std::move(charged);
    move->filling_strings.clear();
  } else {
    move->filling.buffer->AdviseSmallPages(false);
    contents = std::move(move->filling);
    move->filling = Variable::Contents();
  }
  {
    absl::MutexLock lock(&var->mu);
    var->shape = shape;
    var->Swap(std::move(contents));
    var->DropInitialValue();
    var->initialized = info.initialized();
    var->version = info.version();
  }
  ++move->member;
  move->offset = 0;
  return absl::OkStatus();
}

absl::Status VariableStore::ApplyMovePull(uint64_t move_id, const PullMoveResponse& response,
                                          const ContentMessage* content) {
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) return absl::NotFoundError(absl::StrCat(MoveName(move_id), " has ended"));
  absl::MutexLock apply(&move->apply_mu);
  absl::Status status = [&]() -> absl::Status {
    std::vector<const MoveWrite*> writes;
    {
      absl::MutexLock lock(&move->mu);
      if (move->ended) return absl::AbortedError(absl::StrCat(MoveName(move_id), " has ended"));
      if (move->members.empty()) {
        if (response.members_size() != move->request.parts_size()) {
          return absl::DataLossError(absl::StrCat("the source answered ", MoveName(move_id),
                                                  " with ", response.members_size(),
                                                  " parts; it moves ",
                                                  move->request.parts_size()));
        }
        for (int i = 0; i < response.members_size(); ++i) {
          const MovedMember& m = response.members(i);
          const CreateVariableRequest& part = move->request.parts(i);
          // The source's word on each part must be the part declared here:
          // a value of another shape is never installed.
          const bool same_shape =
              std::equal(m.shape().dims().begin(), m.shape().dims().end(),
                         part.shape().dims().begin(), part.shape().dims().end());
          if (m.name() != part.name() || m.dtype() != part.dtype() || m.total_bytes() < 0 ||
              !same_shape || m.has_table() != part.has_embedding()) {
            return absl::DataLossError(absl::StrCat("the source's part ", i, " of ",
                                                    MoveName(move_id), " is ", Quoted(m.name()),
                                                    " (", DataTypeName(m.dtype()),
                                                    " ", "[", absl::StrJoin(m.shape().dims(), ","), "]", "); expected ",
                                                    Quoted(part.name()), " (",
                                                    DataTypeName(part.dtype()), " ",
                                                    "[", absl::StrJoin(part.shape().dims(), ","), "]", ")"));
          }
          if (m.has_table()) PSD_RETURN_IF_ERROR(CheckMovedTable(*move, i, m));
          move->total_bytes += m.has_table() ? TableSnapshotBytes(m) : m.total_bytes();
        }
        move->members.assign(response.members().begin(), response.members().end());
        // A backup learns the request ids its group applied before the
        // snapshot (those after come with the logged writes).
        if (move->request.follow()) {
          requests_.Import(response.window(),
                           store_internal::GroupScope(store_internal::PartNames(move->request)));
        }
      }
      const int members = static_cast<int>(move->members.size());
      if (move->member < members) {
        PSD_RETURN_IF_ERROR(InstallMoveChunk(move.get(), response, content));
        move->logged_seq = std::max(move->logged_seq, response.final_seq());
        if (move->member == members) move->phase = MOVE_FORWARDING;
        move->changed.SignalAll();
        return absl::OkStatus();
      }
      for (const MoveWrite& w : response.writes()) writes.push_back(&w);
    }
    // Logged writes, in order, through the ops' own code and the request
    // window (their ids become known here).
    for (const MoveWrite* logged : writes) {
      const MoveWrite& entry = *logged;
      {
        absl::MutexLock lock(&move->mu);
        if (move->ended) return absl::AbortedError(absl::StrCat(MoveName(move_id), " has ended"));
        if (entry.seq() <= move->applied_seq) continue;  // a pull answered twice
        if (entry.seq() != move->applied_seq + 1) {
          return absl::DataLossError(absl::StrCat(MoveName(move_id), ": logged write ", entry.seq(),
                                                  " came after ", move->applied_seq));
        }
      }
      if (entry.has_chunk() || entry.staged_id() != 0) {
        // A chunked streamed value: staged, or committed (as a whole).
        if (absl::Status staged = ApplyStagedEntry(move.get(), entry); !staged.ok()) {
          return absl::Status(
              absl::IsDataLoss(staged) ? staged.code() : absl::StatusCode::kInternal,
              absl::StrCat(MoveName(move_id), ": the target could not apply logged write ",
                           entry.seq(), " as the source did: ", staged.ToString()));
        }
        absl::MutexLock lock(&move->mu);
        move->applied_seq = entry.seq();
        move->logged_seq = std::max(move->logged_seq, entry.seq());
        continue;
      }
      const MoveWrite& w = entry;
      // Replayed as the source ran it: the request's shard incarnation is
      // the source's, which CheckIncarnation passes during a replay (no
      // copy of the op, which may hold a whole sparse update, to clear it).
      const BatchOp* op = &w.op();
      const TableWrite& table = w.table();
      const std::vector<const std::string*> written = WrittenNames(w);
      if (written.empty()) {
        return absl::DataLossError(
            absl::StrCat(MoveName(move_id), ": logged write ", w.seq(), " is not a write"));
      }
      // Only to the group's own parts: replayed, a write naming any other
      // variable would change one this shard serves (or another move's).
      for (const std::string* name : written) {
        if (std::none_of(move->request.parts().begin(), move->request.parts().end(),
                         [&](const CreateVariableRequest& p) { return p.name() == *name; })) {
          return absl::DataLossError(absl::StrCat(MoveName(move_id), ": logged write ", w.seq(),
                                                  " writes ", Quoted(*name),
                                                  ", which the move does not carry"));
        }
      }
      BatchOpResult result;
      absl::Status applied;
      {
        store_internal::MoveReplayScope replay;
        applied = w.has_table()                       ? RunTableWrite(table, w.caller())
                  : op->op_case() == BatchOp::kGather ? ReplayEmbeddingLookup(op->gather())
                                                      : RunBatchOp(*op, 0, &result, w.caller());
      }
      if (!applied.ok()) {
        return absl::InternalError(absl::StrCat(
            MoveName(move_id), ": the target could not apply logged write ", w.seq(),
            " as the source did: ", applied.ToString()));
      }
      absl::MutexLock lock(&move->mu);
      move->applied_seq = w.seq();
      move->logged_seq = std::max(move->logged_seq, w.seq());
    }
    absl::MutexLock lock(&move->mu);
    move->logged_seq = std::max(move->logged_seq, response.final_seq());
    if (response.end() && move->request.follow()) {
      return absl::DataLossError(absl::StrCat(MoveName(move_id), " is a follow; its source ended it"));
    }
    if (response.end()) {
      if (move->applied_seq != response.final_seq()) {
        return absl::DataLossError(absl::StrCat(MoveName(move_id), " ended at write ",
                                                response.final_seq(), " but ", move->applied_seq,
                                                " were applied"));
      }
      requests_.Import(response.window(),
                       store_internal::GroupScope(store_internal::PartNames(move->request)));
      move->phase = MOVE_READY;
    }
    move->changed.SignalAll();
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    move->staged.clear();  // never applied now: their memory goes
    FailMoveIn(move_id, status);
  }
  return status;
}

absl::Status VariableStore::ApplyStagedEntry(MoveIn* move, const MoveWrite& w) {
  // Only the group's own parts (as for any replayed write).
  auto carried = [&](const std::string& name) -> absl::Status {
    for (const CreateVariableRequest& p : move->request.parts()) {
      if (p.name() == name) return absl::OkStatus();
    }
    return absl::DataLossError(
        absl::StrCat("it writes ", Quoted(name), ", which the move does not carry"));
  };
  store_internal::MoveReplayScope replay;
  if (w.has_chunk()) {
    const StagedChunk& chunk = w.chunk();
    auto it = move->staged.find(chunk.staged_id());
    if (chunk.abort()) {
      if (it != move->staged.end()) move->staged.erase(it);
      return absl::OkStatus();
    }
    if (chunk.offset() == 0) {
      if (it != move->staged.end()) {
        return absl::DataLossError(
            absl::StrCat("staged write ", chunk.staged_id(), " began twice"));
      }
      const AssignStreamHeader& header = chunk.header();
      PSD_RETURN_IF_ERROR(carried(header.name()));
      PSD_ASSIGN_OR_RETURN(std::unique_ptr<AssignStreamSink> sink, BeginReplayedAssign(header));
      MoveIn::Staged staged;
      staged.sink = std::move(sink);
      staged.name = header.name();
      staged.total = header.total_bytes();
      staged.apply = header.has_apply();
      it = move->staged.emplace(chunk.staged_id(), std::move(staged)).first;
    } else if (it == move->staged.end() || it->second.received != chunk.offset()) {
      return absl::DataLossError(absl::StrCat(
          "a chunk at byte ", chunk.offset(), " of staged write ", chunk.staged_id(), " came after ",
          it == move->staged.end() ? int64_t{0} : it->second.received, " bytes of it"));
    }
    PSD_RETURN_IF_ERROR(it->second.sink->Append(chunk.content()));
    it->second.received += static_cast<int64_t>(chunk.content().size());
    return absl::OkStatus();
  }
  auto it = move->staged.find(w.staged_id());
  // An assign's chunks commit by its AssignRequest, an apply's by its
  // ApplyDenseRequest (without the gradient: the chunks are it).
  const bool apply = w.op().has_apply_dense();
  const std::string* committed = apply                 ? &w.op().apply_dense().name()
                                 : w.op().has_assign() ? &w.op().assign().name()
                                                       : nullptr;
  if (committed == nullptr || it == move->staged.end() || it->second.apply != apply ||
      it->second.received != it->second.total || *committed != it->second.name ||
      (apply && !w.op().apply_dense().gradient().content().empty())) {
    return absl::DataLossError(absl::StrCat("the commit of staged write ", w.staged_id(),
                                            " does not match its chunks"));
  }
  // An apply writes its slots too, named by the commit (as a logged
  // unary apply's are checked).
  for (const std::string* name : WrittenNames(w)) PSD_RETURN_IF_ERROR(carried(*name));
  MoveIn::Staged staged = std::move(it->second);
  move->staged.erase(it);
  return CommitReplayedAssign(staged.sink.get(), w);
}

void VariableStore::FailMoveIn(uint64_t move_id, const absl::Status& status) {
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) return;
  absl::MutexLock lock(&move->mu);
  if (move->phase == MOVE_FAILED || move->ended) return;
  move->phase = MOVE_FAILED;
  move->failure = status;
  move->filling = Variable::Contents();
  move->changed.SignalAll();
}

MoveStatusResponse VariableStore::MoveInStatus(uint64_t move_id, absl::Duration wait) const {
  MoveStatusResponse out;
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) {
    out.set_phase(MOVE_FAILED);
    out.set_code(static_cast<int>(absl::StatusCode::kNotFound));
    out.set_message(absl::StrCat(MoveName(move_id), " is not known on this shard (it restarted?)"));
    return out;
  }
  absl::MutexLock lock(&move->mu);
  const absl::Time deadline = absl::Now() + std::min(wait, absl::Seconds(10));
  // Waits for what the coordinator acts on: ready, failed, or forwarding
  // close behind the source (it then freezes the source).
  auto settled = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(move->mu) {
    return move->phase == MOVE_READY || move->phase == MOVE_FAILED ||
           (move->phase == MOVE_FORWARDING &&
            move->logged_seq <= move->applied_seq + kMoveCaughtUpWrites);
  };
  while (!settled() && !move->changed.WaitWithDeadline(&move->mu, deadline)) {
  }
  out.set_phase(move->phase);
  out.set_copied_bytes(move->copied_bytes);
  out.set_total_bytes(move->total_bytes);
  out.set_applied_seq(move->applied_seq);
  out.set_logged_seq(move->logged_seq);
  if (!move->failure.ok()) {
    out.set_code(static_cast<int>(move->failure.code()));
    out.set_message(std::string(move->failure.message()));
  } else if (!move->pull_failure.ok()) {
    // A follow still retrying: why its pulls fail.
    out.set_code(static_cast<int>(move->pull_failure.code()));
    out.set_message(std::string(move->pull_failure.message()));
  }
  return out;
}

absl::Status VariableStore::EndMoveIn(uint64_t move_id, bool committed) {
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) return absl::OkStatus();
  {
    absl::MutexLock lock(&move->mu);
    if (committed && move->request.follow()) {
      return absl::FailedPreconditionError(absl::StrCat(
          MoveName(move_id), " is a follow: it never commits (PromoteReplica makes the backup "
                             "serve)"));
    }
    if (committed && move->phase != MOVE_READY) {
      return absl::FailedPreconditionError(absl::StrCat(
          MoveName(move_id), " cannot commit here: the target has not applied all of it"));
    }
    move->ended = true;
    move->filling = Variable::Contents();
    move->changed.SignalAll();
  }
  if (committed) {
    for (const auto& var : move->vars) {
      if (var != nullptr) var->incoming.store(false, std::memory_order_release);
    }
    for (const auto& table : move->tables) {
      if (table == nullptr) continue;
      if (table->column == 0) table->table->SetEvictionAllowed(true);
      table->incoming.store(false, std::memory_order_release);
    }
  } else {
    absl::MutexLock lock(&mu_);
    for (const auto& var : move->vars) {
      if (var == nullptr) continue;
      auto it = variables_.find(var->name);
      if (it != variables_.end() && it->second == var) variables_.erase(it);
    }
    for (const auto& table : move->tables) {
      if (table == nullptr) continue;
      auto it = tables_.find(table->name);
      if (it != tables_.end() && it->second == table) tables_.erase(it);
    }
  }
  absl::MutexLock lock(&moves_mu_);
  moves_in_.erase(move_id);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Replicated parts (docs/replication.md)

absl::Status VariableStore::WaitForBackups(const std::vector<BackupWait>& logged,
                                           const std::string& variable, absl::Time deadline,
                                           absl::flat_hash_map<const MoveOut*, absl::Status>* failed) {
  // The backups cannot apply what they have not heard of.
  FlushThreadLogNews();
  const absl::Time start = absl::Now();
  if (deadline == absl::InfinitePast()) deadline = start + options_.backup_timeout;
  bool waited = false;
  absl::Status answer;
  for (const BackupWait& w : logged) {
    MoveOut* follow = w.follow.get();
    std::string reason;
    {
      absl::MutexLock lock(&follow->mu);
      if (failed != nullptr && follow->in_sync && follow->acked_seq < w.seq) {
        // The coordinator could not be told of this follow a moment ago:
        // not asked again for every write of the same answer.
        auto it = failed->find(follow);
        if (it != failed->end()) {
          answer = absl::UnavailableError(absl::StrCat(
              "write to ", Quoted(variable), " not yet on its backup on shard ",
              follow->target_shard, " (", MoveName(follow->id),
              ": behind, as found for an earlier write of the same answer; the coordinator "
              "could not be told: ", it->second.message(), "); retry"));
          break;
        }
      }
      while (follow->in_sync && follow->acked_seq < w.seq) {
        waited = true;
        if (follow->state != MoveOut::State::kForwarding) {
          reason = follow->failure.ok()
                       ? std::string("its follow ended")
                       : absl::StrCat("its follow ended: ", follow->failure.message());
          break;
        }
        if (absl::Now() >= deadline) {
          reason = absl::StrCat("it did not apply write ", w.seq, " within the backup timeout (",
                                absl::FormatDuration(options_.backup_timeout), "; it applied ",
                                follow->acked_seq, ")");
          break;
        }
        follow->changed.WaitWithDeadline(&follow->mu, deadline);
      }
    }
    if (reason.empty()) continue;
    absl::Status behind = ReportBehind(follow, reason);
    if (!behind.ok()) {
      answer = absl::UnavailableError(absl::StrCat(
          "write to ", Quoted(variable), " not yet on its backup on shard ", follow->target_shard,
          " (", MoveName(follow->id), ": ", reason, "; the coordinator could not be told: ",
          behind.message(), "); retry"));
      if (failed != nullptr) failed->emplace(follow, behind);
      break;
    }
  }
  if (waited) {
    waited_writes_.fetch_add(1, std::memory_order_relaxed);
    wait_micros_.fetch_add(absl::ToInt64Microseconds(absl::Now() - start),
                           std::memory_order_relaxed);
  }
  return answer;
}

namespace {
// The DeferredAnswers alive on this thread, innermost first.
thread_local VariableStore::DeferredAnswers* t_deferred = nullptr;
}  // namespace

VariableStore::DeferredAnswers::DeferredAnswers(VariableStore* store)
    : outer_(t_deferred), pending_(store) {
  t_deferred = this;
}

VariableStore::DeferredAnswers::~DeferredAnswers() {
  // The writes this scope logged go to the backups now, from this thread.
  if (!news_.empty()) pending_.store_->FlushThreadLogNews();
  t_deferred = outer_;
}

VariableStore::PendingAnswers VariableStore::DeferredAnswers::Detach() {
  PendingAnswers out(pending_.store_);
  out.kept_.swap(pending_.kept_);
  return out;
}

std::vector<std::pair<int, absl::Status>> VariableStore::DeferredAnswers::Finish() {
  return Detach().Finish();
}

VariableStore::PendingAnswers::~PendingAnswers() {
  // Kept waits are never dropped unanswered: a caller that did not call
  // Finish (it failed before answering) still must not let a later answer
  // overtake them.
  if (!kept_.empty()) Finish();
}

std::vector<std::pair<int, absl::Status>> VariableStore::PendingAnswers::Finish() {
  std::vector<Kept> kept;
  kept.swap(kept_);
  std::vector<std::pair<int, absl::Status>> changed;
  // In the order they ran: by the first wait, each follow usually has all
  // of them, so the later waits return at once. One backup timeout for
  // them all, and one ReplicaBehind call per follow that fails.
  const absl::Time deadline = created_ + store_->options_.backup_timeout;
  absl::flat_hash_map<const MoveOut*, absl::Status> failed;
  for (Kept& k : kept) {
    absl::Status waited = store_->WaitForBackups(k.waits, k.variable, deadline, &failed);
    if (k.ok && !waited.ok()) {
      changed.emplace_back(k.op, std::move(waited));
      continue;
    }
    // Deposed while it waited? (docs/replication.md "Leases")
    if (absl::Status lease =
            k.ok ? store_->LeaseHeldToAnswer(k.variable, k.lease_term) : absl::OkStatus();
        !lease.ok()) {
      changed.emplace_back(k.op, std::move(lease));
    }
  }
  return changed;
}

absl::Status VariableStore::AnswerLogged(std::vector<BackupWait>* waits,
                                         const std::string& variable, uint64_t lease_term,
                                         absl::Status status) {
  if (!waits->empty()) {
    if (DeferAnswer(waits, variable, status.ok(), lease_term)) return status;
    absl::Status waited = WaitForBackups(*waits, variable);
    if (status.ok() && !waited.ok()) return waited;
  }
  // Deposed while it waited? (docs/replication.md "Leases") A write that
  // failed changed nothing: its own answer stands.
  if (status.ok()) PSD_RETURN_IF_ERROR(LeaseHeldToAnswer(variable, lease_term));
  return status;
}

bool VariableStore::DeferAnswer(std::vector<BackupWait>* logged, const std::string& variable,
                                bool ok, uint64_t lease_term) {
  DeferredAnswers* deferred = t_deferred;
  if (deferred == nullptr || deferred->pending_.store_ != this ||
      store_internal::ReplayingMove()) {
    return false;
  }
  PendingAnswers::Kept& k = deferred->pending_.kept_.emplace_back();
  k.op = deferred->op_;
  k.ok = ok;
  k.variable = variable;
  k.lease_term = lease_term;
  k.waits = std::move(*logged);
  return true;
}

// The lock is let go around the call (manual Unlock/Lock inside the scoped
// lock), which the analysis cannot follow.
absl::Status VariableStore::ReportBehind(MoveOut* follow, const std::string& reason)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  ReplicaBehindFn handler;
  {
    absl::MutexLock lock(&behind_mu_);
    handler = replica_behind_;
  }
  absl::MutexLock lock(&follow->mu);
  if (!follow->in_sync) return absl::OkStatus();
  if (follow->behind_calling) {
    // Another write's call is under way: its outcome is this one's too.
    const uint64_t calls = follow->behind_calls;
    while (follow->behind_calling && follow->behind_calls == calls) {
      follow->changed.Wait(&follow->mu);
    }
    return follow->in_sync ? follow->behind_result : absl::OkStatus();
  }
  follow->behind_calling = true;
  absl::Status status;
  follow->mu.Unlock();
  replica_behind_calls_.fetch_add(1, std::memory_order_relaxed);
  status = handler ? handler(follow->id, reason)
                   : absl::UnavailableError("this shard has no link to the coordinator");
  follow->mu.Lock();
  follow->behind_calling = false;
  ++follow->behind_calls;
  follow->behind_result = status;
  if (status.ok()) follow->in_sync = false;  // the coordinator dropped it, durably
  follow->changed.SignalAll();
  const bool in_sync = follow->in_sync;
  follow->mu.Unlock();
  // Out of the in-sync set: an ended follow need not be listed any more,
  // and no answer waits for it.
  if (!in_sync) {
    ForgetEndedFollow(follow);
    ReleaseAckWaiters(follow);
  }
  follow->mu.Lock();
  return in_sync ? status : absl::OkStatus();
}

void VariableStore::SetReplicaBehindHandler(ReplicaBehindFn handler) {
  absl::MutexLock lock(&behind_mu_);
  replica_behind_ = std::move(handler);
}

absl::StatusOr<uint64_t> VariableStore::SyncReplica(uint64_t move_id, bool in_sync,
                                                    uint64_t incarnation) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(incarnation));
  std::shared_ptr<MoveOut> move;
  {
    absl::MutexLock lock(&moves_mu_);
    auto it = moves_out_.find(move_id);
    if (it != moves_out_.end()) move = it->second;
  }
  if (move == nullptr) {
    if (!in_sync) return 0;  // nothing waits for it
    return absl::NotFoundError(absl::StrCat(MoveName(move_id), " does not follow this shard"));
  }
  if (!move->follow) {
    return absl::FailedPreconditionError(
        absl::StrCat(MoveName(move_id), " is a move, not a backup's follow"));
  }
  // Under the order lock: every write logged after `logged_seq` is waited
  // for.
  absl::MutexLock order(&move->order_mu);
  uint64_t logged;
  {
    absl::MutexLock lock(&move->mu);
    if (in_sync && move->state != MoveOut::State::kForwarding) {
      return absl::FailedPreconditionError(absl::StrCat(MoveName(move_id), " has ended",
                                                        move->failure.ok() ? "" : ": ",
                                                        move->failure.message()));
    }
    move->in_sync = in_sync;
    move->changed.SignalAll();
    logged = move->next_seq - 1;
  }
  // An ended follow kept listed while in sync (FailMoveOut) goes now, and
  // no answer waits for it.
  if (!in_sync) {
    ForgetEndedFollow(move.get());
    ReleaseAckWaiters(move.get());
  }
  return logged;
}

bool VariableStore::IsFollow(uint64_t move_id) const {
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  return move != nullptr && move->request.follow();
}

void VariableStore::NoteFollowPullFailure(uint64_t move_id, const absl::Status& status) {
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) return;
  absl::MutexLock lock(&move->mu);
  move->pull_failure = status;
}

absl::StatusOr<uint64_t> VariableStore::PromoteReplica(uint64_t move_id, uint64_t /*epoch*/,
                                                       uint64_t incarnation) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(incarnation));
  std::shared_ptr<MoveIn> move;
  {
    absl::MutexLock lock(&moves_mu_);
    if (auto p = promoted_.find(move_id); p != promoted_.end()) return p->second;
    auto it = moves_in_.find(move_id);
    if (it == moves_in_.end()) {
      return absl::NotFoundError(absl::StrCat(MoveName(move_id), " is not followed here (the "
                                                                 "shard restarted, or the backup "
                                                                 "was dropped)"));
    }
    move = it->second;
  }
  if (!move->request.follow()) {
    return absl::FailedPreconditionError(
        absl::StrCat(MoveName(move_id), " is a move, not a backup's follow"));
  }
  // No replayed batch is half applied once this holds.
  absl::MutexLock apply(&move->apply_mu);
  uint64_t applied = 0;
  {
    absl::MutexLock lock(&move->mu);
    if (move->ended) {
      absl::MutexLock moves(&moves_mu_);
      if (auto p = promoted_.find(move_id); p != promoted_.end()) return p->second;
      return absl::FailedPreconditionError(absl::StrCat(MoveName(move_id), " has ended"));
    }
    if (move->phase == MOVE_FAILED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the backup of ", MoveName(move_id), " failed and cannot be promoted: ",
          move->failure.message()));
    }
    if (move->members.empty() || move->member < static_cast<int>(move->members.size())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the backup of ", MoveName(move_id), " cannot be promoted: its snapshot is not "
          "complete (", move->copied_bytes, " of ", move->total_bytes, " bytes copied)"));
    }
    move->ended = true;  // the puller stops
    applied = move->applied_seq;
    move->changed.SignalAll();
  }
  // A value the primary was still sending, never committed: the promoted
  // part never holds any of it (the client's retry sends it again).
  move->staged.clear();
  for (const auto& var : move->vars) {
    if (var == nullptr) continue;
    var->replicated.store(true, std::memory_order_release);
    var->follows.store(0, std::memory_order_release);
    var->incoming.store(false, std::memory_order_release);
  }
  for (const auto& table : move->tables) {
    if (table == nullptr) continue;
    if (table->column == 0) table->table->SetEvictionAllowed(true);
    table->replicated.store(true, std::memory_order_release);
    table->follows.store(0, std::memory_order_release);
    table->incoming.store(false, std::memory_order_release);
  }
  absl::MutexLock lock(&moves_mu_);
  moves_in_.erase(move_id);
  promoted_[move_id] = applied;
  while (promoted_.size() > kMaxPromotedRemembered) promoted_.erase(promoted_.begin());
  return applied;
}

void VariableStore::DropParts(const std::vector<std::string>& names) {
  if (names.empty()) return;
  std::vector<uint64_t> outs, ins;
  {
    absl::MutexLock lock(&moves_mu_);
    for (const std::string& name : names) {
      auto it = moving_out_.find(name);
      if (it == moving_out_.end()) continue;
      for (const auto& m : it->second) outs.push_back(m->id);
    }
    for (const auto& [id, m] : moves_in_) {
      for (const CreateVariableRequest& part : m->request.parts()) {
        if (std::find(names.begin(), names.end(), part.name()) != names.end()) {
          ins.push_back(id);
          break;
        }
      }
    }
  }
  std::sort(outs.begin(), outs.end());
  outs.erase(std::unique(outs.begin(), outs.end()), outs.end());
  for (uint64_t id : outs) EndMoveOut(id, /*committed=*/false, -1).IgnoreError();
  for (uint64_t id : ins) EndMoveIn(id, /*committed=*/false).IgnoreError();
  absl::MutexLock lock(&mu_);
  for (const std::string& name : names) {
    bool held = variables_.erase(name) > 0;
    auto t = tables_.find(name);
    if (t != tables_.end()) {
      held = true;
      // A lookup that found it before must not change it now.
      if (t->second->column == 0) t->second->table->Retire();
      tables_.erase(t);
    }
    // Its group failed over while this shard was cut off: a trainer still
    // holding the old handle (or retrying an op begun here) must hear
    // "stale handle" and ask the coordinator, as after a move, not "not
    // found", which it takes as final.
    if (held && moved_away_.emplace(name, store_internal::kNoShard).second) {
      moved_away_order_.push_back(name);
    } else if (held) {
      moved_away_[name] = store_internal::kNoShard;
    }
  }
  while (moved_away_order_.size() > kMaxMovedAway) {
    moved_away_.erase(moved_away_order_.front());
    moved_away_order_.pop_front();
  }
}

VariableStore::ReplicationStats VariableStore::replication_stats() const {
  ReplicationStats stats;
  {
    absl::MutexLock lock(&moves_mu_);
    for (const auto& [id, m] : moves_out_) {
      if (!m->follow) continue;
      absl::MutexLock move_lock(&m->mu);
      if (m->state != MoveOut::State::kForwarding) continue;
      ++stats.follows_out;
      stats.max_lag =
          std::max(stats.max_lag, static_cast<int64_t>(m->next_seq - 1 - m->acked_seq));
    }
    for (const auto& [id, m] : moves_in_) {
      if (m->request.follow()) ++stats.follows_in;
    }
  }
  stats.waited_writes = waited_writes_.load(std::memory_order_relaxed);
  stats.wait_seconds =
      static_cast<double>(wait_micros_.load(std::memory_order_relaxed)) / 1e6;
  stats.replica_behind_calls = replica_behind_calls_.load(std::memory_order_relaxed);
  return stats;
}

void VariableStore::SetLogNewsHandler(LogNewsHandler handler) {
  absl::MutexLock here(&news_here_mu_);  // waits for handlers running `here`
  absl::MutexLock lock(&news_mu_);
  news_handler_ = handler;
  news_here_handler_ = std::move(handler);
}

void VariableStore::NotifyLogNews(uint64_t move_id) {
  if (DeferredAnswers* deferred = t_deferred;
      deferred != nullptr && deferred->pending_.store_ == this) {
    if (std::find(deferred->news_.begin(), deferred->news_.end(), move_id) ==
        deferred->news_.end()) {
      deferred->news_.push_back(move_id);
    }
    return;
  }
  absl::MutexLock lock(&news_mu_);
  if (news_handler_) news_handler_(move_id, /*here=*/false);
}

void VariableStore::FlushThreadLogNews() {
  std::vector<uint64_t> news;
  for (DeferredAnswers* d = t_deferred; d != nullptr; d = d->outer_) {
    if (d->pending_.store_ != this) continue;
    news.insert(news.end(), d->news_.begin(), d->news_.end());
    d->news_.clear();
  }
  if (news.empty()) return;
  absl::ReaderMutexLock lock(&news_here_mu_);
  if (!news_here_handler_) return;
  for (uint64_t id : news) news_here_handler_(id, /*here=*/true);
}

}  // namespace psd
