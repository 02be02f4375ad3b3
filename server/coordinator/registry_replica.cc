// Registry (registry.h): the records of replicated groups
// (docs/replication.md): backups added, in-sync changes, backups dropped,
// failovers.
#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/registry_internal.h"
#include "psd/status.h"

namespace psd {

namespace {

std::string MoveIdName(uint64_t move_id) { return absl::StrCat(absl::Hex(move_id)); }

bool HasBackup(const VariablePart& part, uint64_t move_id) {
  for (const ReplicaRecord& b : part.backups()) {
    if (b.move_id() == move_id) return true;
  }
  return false;
}

}  // namespace

std::pair<VariableDef*, VariablePart*> Registry::FindPart(const std::string& name) {
  auto owner = part_owner_.find(name);
  if (owner == part_owner_.end()) return {nullptr, nullptr};
  auto def = variables_.find(owner->second);
  if (def == variables_.end()) return {nullptr, nullptr};
  for (VariablePart& p : *def->second.mutable_parts()) {
    if (p.name() == name) return {&def->second, &p};
  }
  return {nullptr, nullptr};
}

absl::Status Registry::AddReplica(const std::vector<std::string>& parts,
                                  const ReplicaRecord& backup) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    if (parts.empty()) return absl::FailedPreconditionError("a backup of no parts");
    if (backup.move_id() == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("a backup of ", parts[0], " needs a nonzero move id"));
    }
    for (const auto& [name, def] : variables_) {
      for (const VariablePart& p : def.parts()) {
        if (HasBackup(p, backup.move_id())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "move ", MoveIdName(backup.move_id()), " keeps a backup of ", p.name(), " already"));
        }
      }
    }
    std::set<std::string> moving;
    for (const auto& [id, m] : moves_) moving.insert(m.parts().begin(), m.parts().end());
    const VariablePart* first = nullptr;
    for (const std::string& name : parts) {
      auto [def, part] = FindPart(name);
      if (part == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat("no variable has a part named ", name));
      }
      const int32_t r = ReplicationOf(*def);
      if (r < 2) {
        return absl::FailedPreconditionError(absl::StrCat(
            "part ", name, " of ", def->name(), " is not replicated (replication ", r, ")"));
      }
      if (first == nullptr) first = part;
      if (part->shard_id() != first->shard_id() || part->epoch() != first->epoch()) {
        return absl::FailedPreconditionError(
            absl::StrCat("parts ", first->name(), " and ", name, " are not one group (primaries ",
                         first->shard_id(), " and ", part->shard_id(), ", epochs ", first->epoch(),
                         " and ", part->epoch(), ")"));
      }
      if (backup.shard_id() == part->shard_id()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "shard ", backup.shard_id(), " is the primary of ", name, ", not a backup"));
      }
      for (const ReplicaRecord& b : part->backups()) {
        if (b.shard_id() == backup.shard_id()) {
          return absl::FailedPreconditionError(
              absl::StrCat("shard ", backup.shard_id(), " holds a backup of ", name, " already"));
        }
      }
      if (part->backups_size() >= r - 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            name, " has ", part->backups_size(), " backups already (replication ", r, ")"));
      }
      if (moving.count(name) > 0) {
        return absl::FailedPreconditionError(absl::StrCat("part ", name, " is moving"));
      }
    }
    RegistryRecord record;
    auto* op = record.mutable_replica_added();
    for (const std::string& name : parts) op->add_parts(name);
    *op->mutable_backup() = backup;
    op->mutable_backup()->set_in_sync(false);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

absl::Status Registry::SetReplicaInSync(uint64_t move_id, bool in_sync) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    bool found = false;
    bool same = true;
    for (const auto& [name, def] : variables_) {
      for (const VariablePart& p : def.parts()) {
        for (const ReplicaRecord& b : p.backups()) {
          if (b.move_id() != move_id) continue;
          found = true;
          same = same && b.in_sync() == in_sync;
        }
      }
    }
    if (!found) {
      return absl::NotFoundError(absl::StrCat("no backup is kept by move ", MoveIdName(move_id)));
    }
    if (in_sync && behind_.count(move_id) > 0) {
      // Its primary stopped waiting for it: in the in-sync set it would be
      // promotable without the writes acknowledged since.
      return absl::FailedPreconditionError(absl::StrCat(
          "backup ", MoveIdName(move_id), " was reported behind by its primary; it cannot join "
          "the in-sync set"));
    }
    if (same) return absl::OkStatus();
    RegistryRecord record;
    record.mutable_replica_in_sync()->set_move_id(move_id);
    record.mutable_replica_in_sync()->set_in_sync(in_sync);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

absl::Status Registry::ReportReplicaBehind(int32_t shard_id, uint64_t move_id) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    const VariablePart* holder = nullptr;
    bool in_sync = false;
    for (const auto& [name, def] : variables_) {
      for (const VariablePart& p : def.parts()) {
        for (const ReplicaRecord& b : p.backups()) {
          if (b.move_id() != move_id) continue;
          if (holder == nullptr) holder = &p;
          in_sync = in_sync || b.in_sync();
        }
      }
    }
    if (holder == nullptr) {
      auto retired = retired_backups_.find(move_id);
      if (retired != retired_backups_.end()) {
        auto [def, part] = FindPart(retired->second);
        if (part != nullptr && part->shard_id() == shard_id) return absl::OkStatus();
        return absl::FailedPreconditionError(absl::StrCat(
            "shard ", shard_id, " is no longer the primary of ", retired->second,
            " (backup ", MoveIdName(move_id), " is over): it must not answer writes to it"));
      }
      // Not remembered (before this coordinator started, or long ago): a
      // current primary of some replicated group has nothing to wait for.
      for (const auto& [name, def] : variables_) {
        if (ReplicationOf(def) < 2) continue;
        for (const VariablePart& p : def.parts()) {
          if (p.shard_id() == shard_id) return absl::OkStatus();
        }
      }
      return absl::FailedPreconditionError(
          absl::StrCat("shard ", shard_id, " is the primary of no replicated part (backup ",
                       MoveIdName(move_id), " is unknown): it must not answer writes to one"));
    }
    if (holder->shard_id() != shard_id) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard ", shard_id, " is not the primary of ", holder->name(), " (shard ",
          holder->shard_id(), " is, epoch ", holder->epoch(), "), whose backup ",
          MoveIdName(move_id), " it reports behind: it must not answer writes to it"));
    }
    behind_.insert(move_id);
    if (!in_sync) return absl::OkStatus();
    RegistryRecord record;
    record.mutable_replica_in_sync()->set_move_id(move_id);
    record.mutable_replica_in_sync()->set_in_sync(false);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

absl::Status Registry::DropReplica(uint64_t move_id) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    bool found = false;
    for (const auto& [name, def] : variables_) {
      for (const VariablePart& p : def.parts()) found = found || HasBackup(p, move_id);
    }
    if (!found) return absl::OkStatus();
    RegistryRecord record;
    record.set_replica_dropped(move_id);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

absl::Status Registry::FailOver(const std::vector<std::string>& parts, int32_t new_primary,
                                uint64_t move_id, uint64_t epoch) {
  uint64_t wait_for = 0;
  absl::Status status = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    if (parts.empty()) return absl::FailedPreconditionError("a failover of no parts");
    for (const std::string& name : parts) {
      auto [def, part] = FindPart(name);
      if (part == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat("no variable has a part named ", name));
      }
      bool in_sync_there = false;
      for (const ReplicaRecord& b : part->backups()) {
        in_sync_there =
            in_sync_there || (b.move_id() == move_id && b.shard_id() == new_primary && b.in_sync());
      }
      if (!in_sync_there) {
        return absl::FailedPreconditionError(absl::StrCat("shard ", new_primary,
                                                          " holds no in-sync backup of ", name,
                                                          " by move ", MoveIdName(move_id)));
      }
      if (epoch != part->epoch() + 1) {
        return absl::FailedPreconditionError(absl::StrCat("a failover of ", name, " to epoch ",
                                                          epoch, ": its epoch is ", part->epoch()));
      }
    }
    RegistryRecord record;
    auto* op = record.mutable_failover();
    for (const std::string& name : parts) op->add_parts(name);
    op->set_new_primary(new_primary);
    op->set_move_id(move_id);
    op->set_epoch(epoch);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(status), wait_for);
}

std::vector<ReplicaGroup> Registry::ReplicaGroups() const {
  uint64_t wait_for = 0;
  std::vector<ReplicaGroup> out;
  {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    std::vector<const VariableDef*> defs;
    for (const auto& [name, def] : variables_) defs.push_back(&def);
    std::sort(defs.begin(), defs.end(), [](const VariableDef* a, const VariableDef* b) {
      return a->creation_seq() < b->creation_seq();
    });
    std::set<std::string> claimed;  // parts in a group so far
    // The group led by `part` of `def`, without the parts beside it yet.
    auto group_of = [](const VariableDef& def, const VariablePart& part) {
      ReplicaGroup g;
      g.parts.push_back(part.name());
      g.primary = part.shard_id();
      g.epoch = part.epoch();
      g.replication = ReplicationOf(def);
      g.backups.assign(part.backups().begin(), part.backups().end());
      return g;
    };
    for (const VariableDef* def : defs) {
      if (ReplicationOf(*def) < 2 || !def->colocate_with().empty()) continue;
      for (int k = 0; k < def->parts_size(); ++k) {
        const VariablePart& part = def->parts(k);
        ReplicaGroup g = group_of(*def, part);
        // The parts beside it, as a move takes them
        // (CoordinatorService::MoveGroupOnce).
        for (const VariableDef* other : defs) {
          if (other->colocate_with() != def->name()) continue;
          int beside = -1;
          if (other->parts_size() == def->parts_size()) {
            beside = k;
          } else if (other->parts_size() == 1 && def->parts_size() == 1) {
            beside = 0;
          }
          if (beside >= 0 && other->parts(beside).shard_id() == part.shard_id()) {
            g.parts.push_back(other->parts(beside).name());
          }
        }
        claimed.insert(g.parts.begin(), g.parts.end());
        out.push_back(std::move(g));
      }
    }
    // A part declared beside a variable but in no group of it (a one-part
    // variable beside a partitioned one, as Adam's beta powers beside the
    // first variable; or one left on its shard when the part it sat
    // beside moved) is a group of its own: it is replicated all the same.
    for (const VariableDef* def : defs) {
      if (ReplicationOf(*def) < 2 || def->colocate_with().empty()) continue;
      for (const VariablePart& part : def->parts()) {
        if (claimed.count(part.name()) == 0) out.push_back(group_of(*def, part));
      }
    }
  }
  if (!WaitDurable(wait_for).ok()) return {};
  return out;
}

std::vector<std::string> Registry::BackupPartsOnShard(int32_t shard_id) const {
  uint64_t wait_for = 0;
  std::vector<std::string> out;
  {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    for (const auto& [name, def] : variables_) {
      for (const VariablePart& p : def.parts()) {
        for (const ReplicaRecord& b : p.backups()) {
          if (b.shard_id() == shard_id) out.push_back(p.name());
        }
      }
    }
  }
  if (!WaitDurable(wait_for).ok()) return {};
  return out;
}

void Registry::ApplyReplica(const RegistryRecord& record) {
  moved_variables_.clear();
  auto touched = [&](const VariableDef& def) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (std::find(moved_variables_.begin(), moved_variables_.end(), def.name()) ==
        moved_variables_.end()) {
      moved_variables_.push_back(def.name());
    }
  };
  // Every part holding backup `move_id`.
  auto for_backup = [&](uint64_t move_id, auto fn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [name, def] : variables_) {
      for (VariablePart& p : *def.mutable_parts()) {
        if (!HasBackup(p, move_id)) continue;
        fn(&p);
        touched(def);
      }
    }
  };
  auto retire = [&](uint64_t move_id, const std::string& part) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    behind_.erase(move_id);
    if (!retired_backups_.emplace(move_id, part).second) return;
    retired_order_.push_back(move_id);
    while (retired_order_.size() > kMaxRetiredBackups) {
      retired_backups_.erase(retired_order_.front());
      retired_order_.pop_front();
    }
  };
  switch (record.op_case()) {
    case RegistryRecord::kReplicaAdded: {
      const auto& op = record.replica_added();
      for (const std::string& name : op.parts()) {
        auto [def, part] = FindPart(name);
        if (part == nullptr || HasBackup(*part, op.backup().move_id())) continue;
        *part->add_backups() = op.backup();
        touched(*def);
      }
      break;
    }
    case RegistryRecord::kReplicaInSync: {
      const auto& op = record.replica_in_sync();
      for_backup(op.move_id(), [&](VariablePart* p) {
        for (ReplicaRecord& b : *p->mutable_backups()) {
          if (b.move_id() == op.move_id()) b.set_in_sync(op.in_sync());
        }
      });
      break;
    }
    case RegistryRecord::kReplicaDropped: {
      const uint64_t move_id = record.replica_dropped();
      for_backup(move_id, [&](VariablePart* p) {
        retire(move_id, p->name());
        auto* backups = p->mutable_backups();
        backups->erase(
            std::remove_if(backups->begin(), backups->end(),
                           [&](const ReplicaRecord& b) { return b.move_id() == move_id; }),
            backups->end());
      });
      break;
    }
    case RegistryRecord::kFailover: {
      const auto& op = record.failover();
      for (const std::string& name : op.parts()) {
        auto [def, part] = FindPart(name);
        if (part == nullptr) continue;
        if (part->shard_id() != op.new_primary()) {
          const int64_t bytes = PartBytes(*def, *part);
          ShardPlacement& from = placement_[part->shard_id()];
          from.parts -= 1;
          from.bytes -= bytes;
          if (from.parts == 0) placement_.erase(part->shard_id());
          ShardPlacement& to = placement_[op.new_primary()];
          to.parts += 1;
          to.bytes += bytes;
          part->set_shard_id(op.new_primary());
        }
        part->set_epoch(op.epoch());
        // The promoted backup is the primary now; the others followed the
        // old primary's log and are made again from the new one.
        for (const ReplicaRecord& b : part->backups()) retire(b.move_id(), part->name());
        part->clear_backups();
        touched(*def);
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace psd
