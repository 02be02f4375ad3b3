#include "coordinator/move_progress.h"

#include <utility>

#include "absl/time/clock.h"

namespace psd {
namespace {

// The operation the calling thread reports to (MoveProgressBoard::Scope).
thread_local MoveProgressBoard* t_board = nullptr;
thread_local uint64_t t_id = 0;

const char* PhaseName(MovePhase phase, bool switching) {
  if (switching) return "switching";
  switch (phase) {
    case MOVE_COPYING:
      return "copying";
    case MOVE_FORWARDING:
      return "forwarding";
    case MOVE_READY:
      return "switching";
    default:
      return "starting";
  }
}

}  // namespace

MoveProgressBoard::Scope::Scope(MoveProgressBoard* board, uint64_t id)
    : board_(id != 0 ? board : nullptr), id_(id), previous_board_(t_board), previous_id_(t_id) {
  if (board_ == nullptr) return;
  board_->Begin(id_);
  t_board = board_;
  t_id = id_;
}

MoveProgressBoard::Scope::~Scope() {
  if (board_ == nullptr) return;
  board_->End(id_);
  t_board = previous_board_;
  t_id = previous_id_;
}

template <typename F>
void MoveProgressBoard::Update(F update) {
  if (t_board == nullptr || t_id == 0) return;
  absl::MutexLock lock(&t_board->mu_);
  auto it = t_board->entries_.find(t_id);
  if (it != t_board->entries_.end()) update(it->second.progress);
}

void MoveProgressBoard::Planned(int moves) {
  Update([&](MoveProgressResponse& p) { p.set_moves_planned(moves); });
}

void MoveProgressBoard::MoveStarted(const std::string& part, int32_t source_shard,
                                    int32_t target_shard) {
  Update([&](MoveProgressResponse& p) {
    p.set_part(part);
    p.set_source_shard(source_shard);
    p.set_target_shard(target_shard);
    p.set_phase("starting");
    p.set_copied_bytes(0);
    p.set_total_bytes(0);
    p.set_forwarded_writes(0);
  });
}

void MoveProgressBoard::Phase(const std::string& phase) {
  Update([&](MoveProgressResponse& p) { p.set_phase(phase); });
}

void MoveProgressBoard::MoveStatus(const MoveStatusResponse& status, bool switching) {
  Update([&](MoveProgressResponse& p) {
    p.set_phase(PhaseName(status.phase(), switching));
    p.set_copied_bytes(status.copied_bytes());
    p.set_total_bytes(status.total_bytes());
    p.set_forwarded_writes(status.applied_seq());
  });
}

void MoveProgressBoard::MoveEnded() {
  Update([&](MoveProgressResponse& p) {
    p.set_moves_done(p.moves_done() + 1);
    // A move MovePart runs alone was planned as one.
    if (p.moves_planned() < p.moves_done()) p.set_moves_planned(p.moves_done());
  });
}

void MoveProgressBoard::Begin(uint64_t id) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  DropExpired(now);
  if (entries_.count(id) == 0 && static_cast<int>(entries_.size()) >= kMaxEntries) {
    // Room from the operation that ended first, if any did.
    auto oldest = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second.ended &&
          (oldest == entries_.end() || *it->second.ended < *oldest->second.ended)) {
        oldest = it;
      }
    }
    if (oldest == entries_.end()) return;
    entries_.erase(oldest);
  }
  Entry& e = entries_[id];
  e = Entry();
  e.progress.set_found(true);
  e.started = now;
}

void MoveProgressBoard::End(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  it->second.ended = absl::Now();
  it->second.progress.set_finished(true);
}

void MoveProgressBoard::DropExpired(absl::Time now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.ended && now - *it->second.ended > kKeepEnded) {
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
}

MoveProgressResponse MoveProgressBoard::Get(uint64_t id) const {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || (it->second.ended && now - *it->second.ended > kKeepEnded)) {
    return MoveProgressResponse();
  }
  MoveProgressResponse out = it->second.progress;
  out.set_seconds(absl::ToDoubleSeconds(it->second.ended.value_or(now) - it->second.started));
  return out;
}

}  // namespace psd
