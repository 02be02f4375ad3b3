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

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/store_internal.h"

namespace psd {

using store_internal::Quoted;

namespace {

// Caps of one shard's moves (docs/moves.md, "Limits").
constexpr size_t kMaxMoveGroup = 256;       // parts moved together
constexpr size_t kMaxMovesOut = 4;          // groups moving out at once
constexpr size_t kMaxMovesIn = 4;           // groups moving in at once
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

// What a logged write is charged, the same when it is logged and when it
// goes (its op's size; the seq set in between does not count).
int64_t LoggedBytes(const MoveWrite& write) {
  return static_cast<int64_t>(write.op().ByteSizeLong()) + 64;
}

}  // namespace

namespace store_internal {

bool ReplayingMove() { return t_replaying_move; }
MoveReplayScope::MoveReplayScope() : previous_(t_replaying_move) { t_replaying_move = true; }
MoveReplayScope::~MoveReplayScope() { t_replaying_move = previous_; }

}  // namespace store_internal

// ---------------------------------------------------------------------------
// Source side

std::shared_ptr<MoveOut> VariableStore::MovingOut(const std::string& name) const {
  absl::MutexLock lock(&moves_mu_);
  auto it = moving_out_.find(name);
  return it == moving_out_.end() ? nullptr : it->second;
}

std::shared_ptr<WriteGate> VariableStore::MoveGateFor(const std::string& name) const {
  if (moving_out_count_.load(std::memory_order_acquire) == 0) return nullptr;
  std::shared_ptr<MoveOut> move = MovingOut(name);
  if (move == nullptr) return nullptr;
  return std::shared_ptr<WriteGate>(move, &move->gate);
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
  std::shared_ptr<MoveOut> move = MovingOut(name);
  if (move == nullptr) return absl::OkStatus();
  absl::MutexLock order(&move->order_mu);
  return AdmitMovingWrite(move.get(), name, what).status();
}

void VariableStore::FailMoveOut(MoveOut* move, const absl::Status& why) {
  {
    absl::MutexLock lock(&move->mu);
    if (move->state != MoveOut::State::kForwarding) return;
    move->state = MoveOut::State::kEnded;
    move->failure = why;
    move->log.clear();
    move->log_bytes = 0;
    move->log_reservation.Reset();
    move->changed.SignalAll();
  }
  {
    absl::MutexLock lock(&moves_mu_);
    for (const MoveOut::Member& m : move->members) {
      auto it = moving_out_.find(m.info.name());
      if (it != moving_out_.end() && it->second.get() == move) {
        moving_out_.erase(it);
      }
    }
    moving_out_count_.fetch_sub(1, std::memory_order_acq_rel);
  }
  // The pins go with the move object; the store's map keeps it (ended)
  // until EndMoveOut or the next move prunes it.
}

void VariableStore::LogMoveWrite(MoveOut* move, const WriteMeta& meta) {
  MoveWrite write;
  meta.to_batch_op(meta.request, write.mutable_op());
  if (meta.amend_logged) meta.amend_logged(write.mutable_op());
  write.set_caller(meta.caller);
  const int64_t bytes = LoggedBytes(write);
  absl::Status failure;
  {
    absl::MutexLock lock(&move->mu);
    if (move->state != MoveOut::State::kForwarding) return;
    if (std::chrono::steady_clock::now() - move->last_pull > kMoveIdle) {
      failure = absl::AbortedError(absl::StrCat(
          MoveName(move->id), " was given up: its target pulled nothing for ",
          std::chrono::duration_cast<std::chrono::seconds>(kMoveIdle).count(), " s"));
    } else if (move->log_bytes + bytes > kMaxMoveLogBytes) {
      failure = absl::ResourceExhaustedError(absl::StrCat(
          MoveName(move->id), " was given up: writes waiting for its target passed ",
          kMaxMoveLogBytes, " bytes (the target does not keep up)"));
    } else if (absl::Status room = memory_.Reserve(bytes, *meta.variable); !room.ok()) {
      failure = absl::ResourceExhaustedError(
          absl::StrCat(MoveName(move->id), " was given up: no memory to log a write for its "
                                           "target: ",
                       room.message()));
    } else {
      move->log_reservation.Merge(MemoryReservation(&memory_, bytes));
      move->log_bytes += bytes;
      write.set_seq(move->next_seq++);
      move->log.push_back(std::move(write));
      move->changed.SignalAll();
      return;
    }
  }
  FailMoveOut(move, failure);
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
      if (m->state == MoveOut::State::kForwarding || m->state == MoveOut::State::kFrozen) {
        ++active;
      }
    }
    if (active >= kMaxMovesOut) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this shard already moves ", active, " groups of parts out (the limit); ",
          MoveName(id), " must wait"));
    }
    for (const std::string& name : names) {
      if (moving_out_.count(name) > 0) {
        return absl::FailedPreconditionError(
            absl::StrCat(Quoted(name), " is already moving (", MoveName(id), ")"));
      }
    }
  }
  auto move = std::make_shared<MoveOut>();
  move->id = id;
  // Every part first looked up and checked without holding writes.
  std::vector<std::shared_ptr<Variable>> vars;
  for (const std::string& name : names) {
    if (FindEmbedding(name) != nullptr) {
      return absl::UnimplementedError(absl::StrCat(
          "moving embedding table parts is not supported yet (", Quoted(name), ")"));
    }
    PSD_ASSIGN_OR_RETURN(std::shared_ptr<Variable> var, Find(name));
    vars.push_back(std::move(var));
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
      for (const auto& var : vars) {
        auto it = variables_.find(var->name);
        if (it == variables_.end() || it->second != var) {
          return absl::NotFoundError(absl::StrCat(Quoted(var->name), " was deleted"));
        }
      }
    }
    for (const auto& var : vars) {
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
    absl::MutexLock lock(&moves_mu_);
    for (const std::string& name : names) {
      if (moving_out_.count(name) > 0) {
        return absl::FailedPreconditionError(absl::StrCat(Quoted(name), " is already moving"));
      }
    }
    for (const std::string& name : names) moving_out_[name] = move;
    moves_out_[id] = move;
    moving_out_count_.fetch_add(1, std::memory_order_acq_rel);
    return absl::OkStatus();
  }();
  gate_.Unfence(fence_id, nullptr).IgnoreError();
  PSD_RETURN_IF_ERROR(pinned);
  return move;
}

absl::Status VariableStore::PullMove(const PullMoveRequest& request, PullMoveResponse* response) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  std::shared_ptr<MoveOut> move;
  {
    absl::MutexLock lock(&moves_mu_);
    auto it = moves_out_.find(request.move_id());
    if (it != moves_out_.end()) move = it->second;
  }
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
  {
    absl::MutexLock lock(&move->mu);
    move->last_pull = std::chrono::steady_clock::now();
    if (!move->failure.ok()) return move->failure;
    if (move->state == MoveOut::State::kEnded || move->state == MoveOut::State::kMoved) {
      return absl::FailedPreconditionError(absl::StrCat(MoveName(move->id), " has ended"));
    }
    // What the target applied can go.
    while (!move->log.empty() && move->log.front().seq() <= request.applied_seq()) {
      const int64_t bytes = LoggedBytes(move->log.front());
      move->log_bytes -= bytes;
      move->log_reservation.Shrink(std::min(bytes, move->log_reservation.bytes()));
      move->log.pop_front();
    }
    move->acked_seq = std::max(move->acked_seq, request.applied_seq());
  }
  if (request.member() == 0 && request.offset() == 0) {
    for (const MoveOut::Member& m : move->members) *response->add_members() = m.info;
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
    std::string* content = response->mutable_content();
    if (m.pin == nullptr) {
      content->assign(m.encoded_strings, static_cast<size_t>(request.offset()), static_cast<size_t>(n));
    } else {
      content->resize(static_cast<size_t>(n));
      PSD_RETURN_IF_ERROR(m.pin->Read(request.offset(), n, content->data()));
    }
    return absl::OkStatus();
  }
  // Logged writes after applied_seq, waiting a little for some to come.
  response->set_member(members);
  absl::MutexLock lock(&move->mu);
  const absl::Duration wait = absl::Milliseconds(std::clamp(request.wait_ms(), 0, kMaxPullWaitMs));
  const absl::Time deadline = absl::Now() + wait;
  auto has_news = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(move->mu) {
    return move->state != MoveOut::State::kForwarding ||
           (!move->log.empty() && move->log.back().seq() > request.applied_seq());
  };
  while (!has_news() && move->changed.WaitWithDeadline(&move->mu, deadline) == false) {
  }
  if (!move->failure.ok()) return move->failure;
  int64_t bytes = 0;
  uint64_t last = request.applied_seq();
  for (const MoveWrite& w : move->log) {
    if (w.seq() <= request.applied_seq()) continue;
    const int64_t b = static_cast<int64_t>(w.ByteSizeLong());
    if (response->writes_size() > 0 && bytes + b > max_bytes) break;
    *response->add_writes() = w;
    bytes += b;
    last = w.seq();
  }
  // How far the log goes now, so the target knows how far behind it is.
  response->set_final_seq(move->next_seq - 1);
  if (move->state == MoveOut::State::kFrozen && last == move->final_seq) {
    response->set_end(true);
    response->set_final_seq(move->final_seq);
    *response->mutable_window() = move->window;
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
      auto it = variables_.find(m.info.name());
      if (it == variables_.end() || it->second != m.var) {
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
  requests_.Export(&move->window);
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
      move->changed.SignalAll();
    }
    if (committed) {
      // The parts live on the target now: dropped here (their memory goes
      // with the last op still holding them), their names stale.
      absl::MutexLock lock(&mu_);
      for (const MoveOut::Member& m : move->members) {
        const std::string& name = m.info.name();
        auto it = variables_.find(name);
        if (it != variables_.end() && it->second == m.var) variables_.erase(it);
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
    if (was_active) {
      absl::MutexLock lock(&moves_mu_);
      for (const MoveOut::Member& m : move->members) {
        auto it = moving_out_.find(m.info.name());
        if (it != moving_out_.end() && it->second == move) moving_out_.erase(it);
      }
      moving_out_count_.fetch_sub(1, std::memory_order_acq_rel);
    }
    for (MoveOut::Member& m : move->members) {
      m.pin.reset();
      m.encoded_strings.clear();
    }
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
    if (moves_in_.size() >= kMaxMovesIn) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this shard already takes ", moves_in_.size(), " moves in (the limit); ",
          MoveName(id), " must wait"));
    }
  }
  auto move = std::make_shared<MoveIn>();
  move->id = id;
  move->request = request;
  std::vector<std::string> created;
  absl::Status status = [&]() -> absl::Status {
    for (const CreateVariableRequest& part : request.parts()) {
      if (part.has_embedding()) {
        return absl::UnimplementedError(absl::StrCat(
            "moving embedding table parts is not supported yet (", Quoted(part.name()), ")"));
      }
      CreateVariableRequest create = part;
      create.clear_initial_value();
      create.set_initialize(false);
      create.clear_request_id();
      create.set_shard_incarnation(0);
      VariableInfo info;
      PSD_RETURN_IF_ERROR(CreateOnce(create, &info));
      created.push_back(part.name());
      PSD_ASSIGN_OR_RETURN(std::shared_ptr<Variable> var, Find(part.name()));
      var->incoming.store(true, std::memory_order_release);
      move->vars.push_back(std::move(var));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    absl::MutexLock lock(&mu_);
    for (const std::string& name : created) variables_.erase(name);
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
  request.set_wait_ms(move->phase == MOVE_FORWARDING ? 200 : 0);
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
    offset += std::min(kMaxPullBytes, total - offset);
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

absl::Status VariableStore::InstallMoveChunk(MoveIn* move, const PullMoveResponse& response) {
  const MovedMember& info = move->members[move->member];
  const std::shared_ptr<Variable>& var = move->vars[move->member];
  if (response.member() != move->member || response.offset() != move->offset) {
    return absl::DataLossError(absl::StrCat("the source sent ", Quoted(info.name()), " bytes at member ",
                                            response.member(), " offset ", response.offset(),
                                            ", expected member ", move->member, " offset ",
                                            move->offset));
  }
  const int64_t n = static_cast<int64_t>(response.content().size());
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
  if (info.dtype() == DT_STRING) {
    move->filling_strings.append(response.content());
  } else if (n > 0) {
    PSD_RETURN_IF_ERROR(device_->CopyFromHost(response.content().data(), static_cast<size_t>(n),
                                              move->filling.buffer.get(),
                                              static_cast<size_t>(move->offset)));
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

absl::Status VariableStore::ApplyMovePull(uint64_t move_id, const PullMoveResponse& response) {
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) return absl::NotFoundError(absl::StrCat(MoveName(move_id), " has ended"));
  absl::Status status = [&]() -> absl::Status {
    std::vector<MoveWrite> writes;
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
              !same_shape) {
            return absl::DataLossError(absl::StrCat("the source's part ", i, " of ",
                                                    MoveName(move_id), " is ", Quoted(m.name()),
                                                    " (", DataTypeName(m.dtype()),
                                                    " ", "[", absl::StrJoin(m.shape().dims(), ","), "]", "); expected ",
                                                    Quoted(part.name()), " (",
                                                    DataTypeName(part.dtype()), " ",
                                                    "[", absl::StrJoin(part.shape().dims(), ","), "]", ")"));
          }
          move->total_bytes += m.total_bytes();
        }
        move->members.assign(response.members().begin(), response.members().end());
      }
      const int members = static_cast<int>(move->members.size());
      if (move->member < members) {
        PSD_RETURN_IF_ERROR(InstallMoveChunk(move.get(), response));
        move->logged_seq = std::max(move->logged_seq, response.final_seq());
        if (move->member == members) move->phase = MOVE_FORWARDING;
        move->changed.SignalAll();
        return absl::OkStatus();
      }
      writes.assign(response.writes().begin(), response.writes().end());
    }
    // Logged writes, in order, through the ops' own code and the request
    // window (their ids become known here).
    for (MoveWrite& w : writes) {
      {
        absl::MutexLock lock(&move->mu);
        if (w.seq() <= move->applied_seq) continue;  // a pull answered twice
        if (w.seq() != move->applied_seq + 1) {
          return absl::DataLossError(absl::StrCat(MoveName(move_id), ": logged write ", w.seq(),
                                                  " came after ", move->applied_seq));
        }
      }
      BatchOp* op = w.mutable_op();
      // The write was made against the source's incarnation.
      std::vector<const std::string*> written;
      switch (op->op_case()) {
        case BatchOp::kAssign:
          op->mutable_assign()->set_shard_incarnation(0);
          written = {&op->assign().name()};
          break;
        case BatchOp::kScatter:
          op->mutable_scatter()->set_shard_incarnation(0);
          written = {&op->scatter().name()};
          break;
        case BatchOp::kCountUpTo:
          op->mutable_count_up_to()->set_shard_incarnation(0);
          written = {&op->count_up_to().name()};
          break;
        case BatchOp::kApplyDense:
          op->mutable_apply_dense()->set_shard_incarnation(0);
          written = {&op->apply_dense().name()};
          for (const std::string& slot : op->apply_dense().slots()) written.push_back(&slot);
          break;
        case BatchOp::kApplySparse:
          op->mutable_apply_sparse()->set_shard_incarnation(0);
          written = {&op->apply_sparse().name()};
          for (const std::string& slot : op->apply_sparse().slots()) written.push_back(&slot);
          break;
        default:
          return absl::DataLossError(absl::StrCat(MoveName(move_id), ": logged write ", w.seq(),
                                                  " is not a write"));
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
        applied = RunBatchOp(*op, 0, &result, w.caller());
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
    if (response.end()) {
      if (move->applied_seq != response.final_seq()) {
        return absl::DataLossError(absl::StrCat(MoveName(move_id), " ended at write ",
                                                response.final_seq(), " but ", move->applied_seq,
                                                " were applied"));
      }
      requests_.Import(response.window());
      move->phase = MOVE_READY;
    }
    move->changed.SignalAll();
    return absl::OkStatus();
  }();
  if (!status.ok()) FailMoveIn(move_id, status);
  return status;
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
  }
  return out;
}

absl::Status VariableStore::EndMoveIn(uint64_t move_id, bool committed) {
  std::shared_ptr<MoveIn> move = FindMoveIn(move_id);
  if (move == nullptr) return absl::OkStatus();
  {
    absl::MutexLock lock(&move->mu);
    if (committed && move->phase != MOVE_READY) {
      return absl::FailedPreconditionError(absl::StrCat(
          MoveName(move_id), " cannot commit here: the target has not applied all of it"));
    }
    move->ended = true;
    move->filling = Variable::Contents();
    move->changed.SignalAll();
  }
  if (committed) {
    for (const auto& var : move->vars) var->incoming.store(false, std::memory_order_release);
  } else {
    absl::MutexLock lock(&mu_);
    for (const auto& var : move->vars) {
      auto it = variables_.find(var->name);
      if (it != variables_.end() && it->second == var) variables_.erase(it);
    }
  }
  absl::MutexLock lock(&moves_mu_);
  moves_in_.erase(move_id);
  return absl::OkStatus();
}

}  // namespace psd
