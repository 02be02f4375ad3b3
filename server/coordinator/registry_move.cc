// Registry (registry.h): the records of live part moves (docs/moves.md).
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/registry_internal.h"
#include "psd/status.h"

namespace psd {

absl::StatusOr<VariableDef> Registry::VariableOfPart(const std::string& part) const {
  absl::MutexLock lock(&mu_);
  auto owner = part_owner_.find(part);
  if (owner == part_owner_.end()) {
    return absl::NotFoundError(absl::StrCat("no variable has a part named ", part));
  }
  auto it = variables_.find(owner->second);
  if (it == variables_.end()) {
    return absl::NotFoundError(absl::StrCat("no variable has a part named ", part));
  }
  return it->second;
}

absl::Status Registry::BeginMove(const PartMoveRecord& move) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    if (moves_.count(move.move_id()) > 0) {
      return absl::AlreadyExistsError(absl::StrCat("move ", absl::Hex(move.move_id()),
                                                   " was begun already"));
    }
    std::set<std::string> moving;
    for (const auto& [id, m] : moves_) moving.insert(m.parts().begin(), m.parts().end());
    for (const std::string& part : move.parts()) {
      auto owner = part_owner_.find(part);
      const VariableDef* def = nullptr;
      if (owner != part_owner_.end()) {
        auto it = variables_.find(owner->second);
        if (it != variables_.end()) def = &it->second;
      }
      if (def == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat("no variable has a part named ", part));
      }
      for (const VariablePart& p : def->parts()) {
        if (p.name() == part && p.shard_id() != move.source_shard()) {
          return absl::FailedPreconditionError(absl::StrCat("part ", part, " is on shard ",
                                                            p.shard_id(), ", not shard ",
                                                            move.source_shard()));
        }
      }
      if (moving.count(part) > 0) {
        return absl::FailedPreconditionError(absl::StrCat("part ", part, " is moving already"));
      }
      for (const VariablePart& p : def->parts()) {
        if (p.name() == part && p.backups_size() > 0) {
          // They follow the source's log, which the move ends.
          return absl::FailedPreconditionError(absl::StrCat(
              "part ", part, " has ", p.backups_size(), " backups: drop them before moving it"));
        }
      }
    }
    RegistryRecord record;
    *record.mutable_move_started() = move;
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

absl::Status Registry::CommitMove(uint64_t move_id) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    auto it = moves_.find(move_id);
    if (it == moves_.end()) {
      return absl::NotFoundError(absl::StrCat("move ", absl::Hex(move_id), " is not recorded"));
    }
    if (it->second.committed()) return absl::OkStatus();
    RegistryRecord record;
    record.set_move_committed(move_id);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

absl::Status Registry::FinishMove(uint64_t move_id) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    if (moves_.count(move_id) == 0) return absl::OkStatus();
    RegistryRecord record;
    record.set_move_finished(move_id);
    // Not waited for: lost in a crash, the move is found pending and ended
    // on its shards again (EndMove repeats harmlessly), then finished.
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/false));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

std::vector<PartMoveRecord> Registry::PendingMoves() const {
  uint64_t wait_for = 0;
  std::vector<PartMoveRecord> out;
  {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    for (const auto& [id, m] : moves_) out.push_back(m);
  }
  if (!WaitDurable(wait_for).ok()) return {};
  return out;
}

absl::Status Registry::SetDrained(int32_t shard_id, bool drained) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    if ((drained_.count(shard_id) > 0) == drained) return absl::OkStatus();
    RegistryRecord record;
    record.mutable_shard_drain()->set_shard_id(shard_id);
    record.mutable_shard_drain()->set_drained(drained);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

std::set<int32_t> Registry::DrainedShards() const {
  absl::MutexLock lock(&mu_);
  return drained_;
}

void Registry::ApplyMove(const RegistryRecord& record) {
  switch (record.op_case()) {
    case RegistryRecord::kMoveStarted:
      moves_[record.move_started().move_id()] = record.move_started();
      break;
    case RegistryRecord::kMoveCommitted: {
      moved_variables_.clear();
      auto it = moves_.find(record.move_committed());
      if (it == moves_.end()) break;
      PartMoveRecord& move = it->second;
      move.set_committed(true);
      for (const std::string& part : move.parts()) {
        auto owner = part_owner_.find(part);
        if (owner == part_owner_.end()) continue;
        auto def = variables_.find(owner->second);
        if (def == variables_.end()) continue;
        for (VariablePart& p : *def->second.mutable_parts()) {
          if (p.name() != part) continue;
          // Backups follow the source's log, which the move ends (the
          // coordinator drops them before it begins one; a state written
          // otherwise must not keep a backup on the new owner's shard).
          p.clear_backups();
          if (p.shard_id() == move.target_shard()) continue;
          const int64_t bytes = PartBytes(def->second, p);
          ShardPlacement& from = placement_[p.shard_id()];
          from.parts -= 1;
          from.bytes -= bytes;
          if (from.parts == 0) placement_.erase(p.shard_id());
          ShardPlacement& to = placement_[move.target_shard()];
          to.parts += 1;
          to.bytes += bytes;
          p.set_shard_id(move.target_shard());
        }
        if (std::find(moved_variables_.begin(), moved_variables_.end(), def->first) ==
            moved_variables_.end()) {
          moved_variables_.push_back(def->first);
        }
      }
      break;
    }
    case RegistryRecord::kMoveFinished:
      moves_.erase(record.move_finished());
      break;
    case RegistryRecord::kShardDrain:
      if (record.shard_drain().drained()) {
        drained_.insert(record.shard_drain().shard_id());
      } else {
        drained_.erase(record.shard_drain().shard_id());
      }
      break;
    default: break;
  }
}

}  // namespace psd
