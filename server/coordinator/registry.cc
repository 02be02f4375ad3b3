// Registry (registry.h): opening it (replaying its log), committing records
// (append, group sync, compaction), applying them to the in-memory state,
// and lookups, listing and deletion of variables. Declarations are in
// registry_declare.cc; sessions, scopes and unique names in
// registry_session.cc.
#include "coordinator/registry.h"

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/placement.h"
#include "coordinator/registry_internal.h"
#include "psd/dtype.h"
#include "psd/names.h"
#include "psd/wire.h"
#include "psd/status.h"
#include "spdlog/spdlog.h"

namespace psd {

int64_t PartBytes(const VariableDef& def, const VariablePart& part) {
  const DataType dtype = def.dtype();
  if (def.has_embedding()) return NominalTablePartBytes(dtype, def.embedding().embedding_dim());
  int64_t elements = 1;
  for (int64_t d : part.shape().dims()) elements *= d;
  return EstimatedBytes(dtype, elements);
}

namespace {

// What every variable a coordinator registered satisfies (its declaration
// was checked), checked again on what a restart reads: the state files'
// checksums catch torn and flipped bytes, not a file that someone else
// wrote, and the registry's arithmetic and maps rely on these bounds.
absl::Status CheckStoredVariable(const VariableDef& def, int64_t max_parts) {
  const std::string what = absl::StrCat("variable ", NameForMessage(def.name()));
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(what, ": ", why));
  };
  if (absl::Status name = ValidateVariableName(def.name()); !name.ok()) return bad(name.ToString());
  if (!DataType_IsValid(def.dtype()) || def.dtype() == DT_INVALID ||
      (DataTypeSize(def.dtype()) == 0 && def.dtype() != DT_STRING)) {
    return bad(absl::StrCat("unknown dtype ", static_cast<int>(def.dtype())));
  }
  auto shape = ShapeFromProto(def.shape(), what);
  if (!shape.ok()) return bad(shape.status().ToString());
  if (def.has_embedding()) {
    const int64_t dim = def.embedding().embedding_dim();
    if (dim <= 0 || dim > kMaxEmbeddingDim) return bad(absl::StrCat("embedding_dim ", dim));
  } else if (EstimatedBytes(def.dtype(), shape->num_elements()) > kMaxVariableBytes) {
    return bad(absl::StrCat("holds over ", kMaxVariableBytes, " bytes"));
  }
  if (def.replication() < 0 || def.replication() > kMaxReplication) {
    return bad(absl::StrCat("replication ", def.replication()));
  }
  if (def.parts().empty() || def.parts_size() > max_parts) {
    return bad(absl::StrCat(def.parts_size(), " parts"));
  }
  for (const VariablePart& part : def.parts()) {
    if (absl::Status name = ValidateVariableName(part.name()); !name.ok()) {
      return bad(absl::StrCat("part: ", name.ToString()));
    }
    if (part.shard_id() < 0) {
      return bad(absl::StrCat("part ", part.name(), " on shard ", part.shard_id()));
    }
    if (def.has_embedding()) continue;
    auto part_shape = ShapeFromProto(part.shape(), part.name());
    if (!part_shape.ok()) return bad(part_shape.status().ToString());
    if (part_shape->rank() != shape->rank() ||
        (part.offset_size() != 0 && part.offset_size() != shape->rank())) {
      return bad(absl::StrCat("part ", part.name(), " has rank ", part_shape->rank(), " and ",
                              part.offset_size(), " offsets, the variable rank ", shape->rank()));
    }
    for (int i = 0; i < shape->rank(); ++i) {
      const int64_t offset = part.offset_size() == 0 ? 0 : part.offset(i);
      if (offset < 0 || offset > shape->dim(i) || part_shape->dim(i) > shape->dim(i) - offset) {
        return bad(absl::StrCat("part ", part.name(), " does not fit in the variable along axis ",
                                i));
      }
    }
  }
  return absl::OkStatus();
}

// A session's counters (scope and name counts) as a restart reads them:
// each is at most one per call ever made, so far below 2^62; a larger one
// would overflow when the next name is drawn.
absl::Status CheckStoredSession(const SessionState& s) {
  constexpr int64_t kMaxCount = int64_t{1} << 62;
  auto check = [&](const google::protobuf::Map<std::string, int64_t>& counts,
                   const char* what) -> absl::Status {
    for (const auto& [name, count] : counts) {
      if (count < 0 || count > kMaxCount) {
        return absl::DataLossError(absl::StrCat("session ", s.id(), ": ", what, " count of ",
                                                NameForMessage(name), " is ", count));
      }
    }
    return absl::OkStatus();
  };
  PSD_RETURN_IF_ERROR(check(s.scope_counts(), "scope"));
  PSD_RETURN_IF_ERROR(check(s.names_in_use(), "name"));
  for (const ScopeCountsSnapshot& captured : s.captured()) {
    PSD_RETURN_IF_ERROR(check(captured.scope_counts(), "captured scope"));
  }
  return absl::OkStatus();
}

// A variable's replica sets as a restart recovers them (snapshot and log
// replayed): each part's backups on distinct shards other than its
// primary's, at most replication-1 of them, each kept by its own follow
// move. Shard ids need not be registered (shards register after a
// restart).
absl::Status CheckStoredReplicas(const VariableDef& def) {
  const int32_t r = ReplicationOf(def);
  for (const VariablePart& part : def.parts()) {
    auto bad = [&](const std::string& why) {
      return absl::DataLossError(absl::StrCat("variable ", NameForMessage(def.name()), " part ",
                                              NameForMessage(part.name()), ": ", why));
    };
    std::set<int32_t> shards;
    std::set<uint64_t> moves;
    for (const ReplicaRecord& b : part.backups()) {
      if (b.shard_id() < 0 || b.shard_id() == part.shard_id()) {
        return bad(absl::StrCat("a backup on shard ", b.shard_id(), " (the primary is on shard ",
                                part.shard_id(), ")"));
      }
      if (!shards.insert(b.shard_id()).second) {
        return bad(absl::StrCat("two backups on shard ", b.shard_id()));
      }
      if (b.move_id() == 0 || !moves.insert(b.move_id()).second) {
        return bad(absl::StrCat("backup move id ", absl::Hex(b.move_id()), " is zero or repeated"));
      }
    }
    if (part.backups_size() > r - 1) {
      return bad(absl::StrCat(part.backups_size(), " backups with replication ", r));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Registry>> Registry::Open(const RegistryOptions& options) {
  std::unique_ptr<Registry> registry(new Registry(options));
  if (options.state_dir.empty()) return registry;
  RegistryLog::Recovered recovered;
  PSD_ASSIGN_OR_RETURN(auto log, RegistryLog::Open(options.state_dir, &recovered,
                                                   options.max_state_bytes, options.file_system));
  for (const VariableDef& def : recovered.snapshot.variables()) {
    if (absl::Status s = CheckStoredVariable(def, options.max_parts_per_variable); !s.ok()) {
      return absl::DataLossError(absl::StrCat(options.state_dir, "/registry.snapshot: ",
                                              s.message()));
    }
  }
  for (const SessionState& session : recovered.snapshot.sessions()) {
    if (absl::Status s = CheckStoredSession(session); !s.ok()) {
      return absl::DataLossError(absl::StrCat(options.state_dir, "/registry.snapshot: ",
                                              s.message()));
    }
  }
  for (const RegistryRecord& record : recovered.records) {
    if (!record.has_declared()) continue;
    for (const VariableDef& def : record.declared().created()) {
      if (absl::Status s = CheckStoredVariable(def, options.max_parts_per_variable); !s.ok()) {
        return absl::DataLossError(absl::StrCat(options.state_dir, "/registry.log record ",
                                                record.seq(), ": ", s.message()));
      }
    }
  }
  absl::MutexLock lock(&registry->mu_);
  const RegistrySnapshot& snap = recovered.snapshot;
  registry->next_seq_ = snap.last_seq() + 1;
  registry->next_session_id_ = std::max<uint64_t>(1, snap.next_session_id());
  registry->next_creation_seq_ = std::max<uint64_t>(1, snap.next_creation_seq());
  for (const VariableDef& def : snap.variables()) registry->AddVariable(def);
  for (const SessionState& s : snap.sessions()) registry->sessions_[s.id()] = s;
  for (const PartMoveRecord& m : snap.moves()) registry->moves_[m.move_id()] = m;
  registry->drained_.insert(snap.drained_shards().begin(), snap.drained_shards().end());
  for (const RegistryRecord& record : recovered.records) {
    registry->Apply(record);
    registry->next_seq_ = record.seq() + 1;
  }
  for (const auto& [name, def] : registry->variables_) {
    if (absl::Status s = CheckStoredReplicas(def); !s.ok()) {
      return absl::DataLossError(absl::StrCat(options.state_dir, ": ", s.message()));
    }
  }
  registry->log_ = std::move(log);
  return registry;
}

absl::StatusOr<SessionState*> Registry::FindSession(uint64_t session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session ", session, " is not open"));
  }
  return &it->second;
}

absl::StatusOr<uint64_t> Registry::Commit(RegistryRecord* record, bool sync) {
  record->set_seq(next_seq_);
  if (log_ == nullptr) {
    ++next_seq_;
    Apply(*record);
    return uint64_t{0};
  }
  // Written now, synced by WaitDurable after mu_ is released (group
  // commit). A failed write changes nothing; after a failed sync the log
  // refuses this append (RegistryLog::MarkBroken).
  PSD_RETURN_IF_ERROR(log_->Append(*record, /*sync=*/false));
  const uint64_t seq = next_seq_++;
  Apply(*record);
  if (sync) {
    ack_seq_ = seq;
    auto pending = [&](const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      pending_names_[name] = seq;
      pending_order_.emplace_back(seq, name);
    };
    if (record->has_declared()) {
      for (const VariableDef& def : record->declared().created()) pending(def.name());
    } else if (record->has_deleted()) {
      pending(record->deleted());
    } else if (record->has_move_committed() || record->has_replica_added() ||
               record->has_replica_in_sync() || record->has_replica_dropped() ||
               record->has_failover()) {
      // Handles show the new placement only once it is durable.
      for (const std::string& name : moved_variables_) pending(name);
    }
  }
  if (sync && !compacting_ && log_->log_bytes() > compact_at_) {
    // Taken now, written by this caller once mu_ is released (Committed).
    compacting_ = true;
    log_->StartCompaction();
    compaction_due_ = MakeSnapshot();
  }
  return sync ? seq : uint64_t{0};
}

void Registry::MarkDurable(uint64_t seq) {
  absl::MutexLock lock(&sync_mu_);
  durable_seq_ = std::max(durable_seq_, seq);
}

uint64_t Registry::durable_seq() const {
  absl::MutexLock lock(&sync_mu_);
  return durable_seq_;
}

uint64_t Registry::PendingSeqOf(const std::string& name) const {
  const uint64_t durable = durable_seq();
  while (!pending_order_.empty() && pending_order_.front().first <= durable) {
    auto it = pending_names_.find(pending_order_.front().second);
    if (it != pending_names_.end() && it->second <= durable) pending_names_.erase(it);
    pending_order_.pop_front();
  }
  auto it = pending_names_.find(name);
  return it == pending_names_.end() ? 0 : it->second;
}

absl::Status Registry::WaitDurable(uint64_t seq) const {
  if (seq == 0) return absl::OkStatus();
  sync_mu_.Lock();
  while (durable_seq_ < seq) {
    if (!log_failure_.ok()) {
      absl::Status failed = log_failure_;
      sync_mu_.Unlock();
      return failed;
    }
    if (syncing_) {
      // Another caller's sync is in flight; it may cover `seq`, and if not,
      // the next one will (started by whoever gets here first after it).
      sync_mu_.Await(absl::Condition(+[](bool* syncing) { return !*syncing; }, &syncing_));
      continue;
    }
    syncing_ = true;
    sync_mu_.Unlock();
    // Everything appended so far: this sync covers it.
    uint64_t target = 0;
    std::shared_ptr<checkpoint::WritableFile> file;
    RegistryLog* log = nullptr;
    uint64_t dir_generation = 0;
    absl::Status s;
    {
      absl::MutexLock lock(&mu_);
      target = next_seq_ - 1;
      log = log_.get();
      file = log_->file_for_sync();
      if (file == nullptr) s = log_->broken();
      // A compaction just moved the log to a new file: its name must be
      // durable too before a record in it is.
      dir_generation = log_->dir_sync_generation();
    }
    if (s.ok()) s = file->Sync();
    if (s.ok() && dir_generation != 0) {
      s = log->SyncDir();
      if (s.ok()) {
        absl::MutexLock lock(&mu_);
        log_->DirSynced(dir_generation);
      }
    }
    if (!s.ok()) {
      s = absl::Status(s.code(), absl::StrCat("the registry log cannot be made durable (",
                                              s.message(), "); nothing after the last "
                                              "successful sync is acknowledged"));
      {
        absl::MutexLock lock(&mu_);
        log_->MarkBroken(s);
      }
      sync_mu_.Lock();
      syncing_ = false;
      const bool first = log_failure_.ok();
      if (first) log_failure_ = s;
      sync_mu_.Unlock();
      if (first) {
        if (options_.on_log_failure) {
          options_.on_log_failure(s);
        } else {
          // See "A failed sync is fatal" in registry.h.
          spdlog::critical("registry: {}; stopping, a restart recovers what the log holds",
                           s.ToString());
          spdlog::default_logger()->flush();
          std::abort();
        }
      }
      return s;
    }
    sync_mu_.Lock();
    syncing_ = false;
    durable_seq_ = std::max(durable_seq_, target);
  }
  sync_mu_.Unlock();
  return absl::OkStatus();
}

absl::Status Registry::RunCompaction(const RegistrySnapshot& snapshot) {
  // Rounds of catching up with the records appended meanwhile before the
  // last few are written under mu_ (a steady stream of appends could
  // otherwise keep the new log from ever being complete).
  constexpr int kRoundsOutsideTheLock = 8;
  RegistryLog* log;
  {
    absl::MutexLock lock(&mu_);
    log = log_.get();
  }
  RegistryLog::NextLog next;
  absl::Status s = log->PublishSnapshot(snapshot);
  if (s.ok()) {
    MarkDurable(snapshot.last_seq());  // the snapshot holds them, durably
    for (int round = 0; s.ok(); ++round) {
      std::string frames;
      {
        absl::MutexLock lock(&mu_);
        frames = log_->CarriedSince(&next);
      }
      s = log->WriteNext(&next, frames);
      if (!s.ok()) break;
      absl::MutexLock lock(&mu_);
      if (round + 1 >= kRoundsOutsideTheLock) {
        s = log_->WriteNext(&next, log_->CarriedSince(&next));
        if (!s.ok()) break;
      }
      absl::StatusOr<bool> switched = log_->SwitchToNext(&next);
      if (!switched.ok()) s = switched.status();
      if (!s.ok() || *switched) break;
    }
  }
  {
    absl::MutexLock lock(&mu_);
    log_->EndCompaction();
    compacting_ = false;
    compaction_status_ = s;
    // A failed one is tried again once the log has grown by another
    // compact_log_bytes (a state over the size limit would otherwise be
    // serialized on every append).
    compact_at_ = s.ok() ? options_.compact_log_bytes
                         : log_->log_bytes() + options_.compact_log_bytes;
  }
  log->DeleteNext(next);
  if (!s.ok()) {
    spdlog::error("registry: compaction failed, the log keeps growing: {}", s.ToString());
  }
  return s;
}

absl::StatusOr<const SessionReply*> Registry::FindReply(const SessionState& session,
                                                       uint64_t request_seq) {
  if (request_seq == 0) return nullptr;
  for (const SessionReply& r : session.replies()) {
    if (r.request_seq() == request_seq) return &r;
  }
  if (session.replies_size() >= kReplyWindow &&
      request_seq <= session.replies(0).request_seq()) {
    return absl::AbortedError(absl::StrCat(
        "session ", session.id(), ": request id too old (seq ", request_seq,
        "); the coordinator keeps the answers to the latest ", kReplyWindow, " requests"));
  }
  return nullptr;
}

void Registry::RememberReply(const SessionReply& reply, SessionState* session) {
  if (reply.request_seq() == 0) return;
  *session->add_replies() = reply;
  if (session->replies_size() > kReplyWindow) {
    session->mutable_replies()->DeleteSubrange(0, session->replies_size() - kReplyWindow);
  }
}

void Registry::AddVariable(const VariableDef& def) {
  variables_[def.name()] = def;
  for (const VariablePart& part : def.parts()) {
    part_owner_[part.name()] = def.name();
    ShardPlacement& p = placement_[part.shard_id()];
    p.parts += 1;
    p.bytes += PartBytes(def, part);
  }
  next_creation_seq_ = std::max(next_creation_seq_, def.creation_seq() + 1);
}

void Registry::Apply(const RegistryRecord& record) {
  switch (record.op_case()) {
    case RegistryRecord::kSessionOpened: {
      const auto& op = record.session_opened();
      SessionState& s = sessions_[op.session_id()];
      s.set_id(op.session_id());
      s.set_client(op.client());
      s.set_opened_unix_micros(op.opened_unix_micros());
      s.set_next_token(1);
      next_session_id_ = std::max(next_session_id_, op.session_id() + 1);
      break;
    }
    case RegistryRecord::kSessionClosed:
      sessions_.erase(record.session_closed());
      break;
    case RegistryRecord::kDeclared: {
      const auto& op = record.declared();
      for (const VariableDef& def : op.created()) AddVariable(def);
      auto it = sessions_.find(op.session_id());
      if (it == sessions_.end()) break;
      for (const auto& a : op.attached())
        (*it->second.mutable_declared())[a.name()] = a.declared_at();
      RememberReply(op.reply(), &it->second);
      break;
    }
    case RegistryRecord::kMoveStarted:
    case RegistryRecord::kMoveCommitted:
    case RegistryRecord::kMoveFinished:
    case RegistryRecord::kShardDrain:
      ApplyMove(record);
      break;
    case RegistryRecord::kReplicaAdded:
    case RegistryRecord::kReplicaInSync:
    case RegistryRecord::kReplicaDropped:
    case RegistryRecord::kFailover:
      ApplyReplica(record);
      break;
    case RegistryRecord::kDeleted: {
      auto it = variables_.find(record.deleted());
      if (it == variables_.end()) break;
      for (const VariablePart& part : it->second.parts()) {
        part_owner_.erase(part.name());
        ShardPlacement& p = placement_[part.shard_id()];
        p.parts -= 1;
        p.bytes -= PartBytes(it->second, part);
        if (p.parts == 0) placement_.erase(part.shard_id());
      }
      for (auto& [id, s] : sessions_) s.mutable_declared()->erase(record.deleted());
      variables_.erase(it);
      break;
    }
    case RegistryRecord::kScopeOpened: {
      const auto& op = record.scope_opened();
      auto it = sessions_.find(op.session_id());
      if (it == sessions_.end()) break;
      SessionState& s = it->second;
      RememberReply(op.reply(), &s);
      (*s.mutable_scope_counts())[op.path()] += 1;
      if (op.captured()) {
        ScopeCountsSnapshot* snap = s.add_captured();
        snap->set_token(s.next_token());
        *snap->mutable_scope_counts() = s.scope_counts();
        s.set_next_token(s.next_token() + 1);
      }
      break;
    }
    case RegistryRecord::kScopeClosed: {
      const auto& op = record.scope_closed();
      auto it = sessions_.find(op.session_id());
      if (it == sessions_.end()) break;
      SessionState& s = it->second;
      RememberReply(op.reply(), &s);
      if (op.token() != 0) {
        // Restore the counters saved at entry; scopes captured after it
        // (and not closed) are dropped with it, as a stack unwinds.
        for (int i = 0; i < s.captured_size(); ++i) {
          if (s.captured(i).token() != op.token()) continue;
          *s.mutable_scope_counts() = s.captured(i).scope_counts();
          s.mutable_captured()->DeleteSubrange(i, s.captured_size() - i);
          break;
        }
      } else {
        auto* counts = s.mutable_scope_counts();
        const std::string prefix = op.path() + "/";
        for (auto c = counts->begin(); c != counts->end();) {
          if (op.path().empty() || absl::StartsWith(c->first, prefix)) {
            c = counts->erase(c);
          } else {
            ++c;
          }
        }
      }
      break;
    }
    case RegistryRecord::kNameUsed: {
      const auto& op = record.name_used();
      auto it = sessions_.find(op.session_id());
      if (it == sessions_.end()) break;
      RememberReply(op.reply(), &it->second);
      // Graph.unique_name(name, mark_as_used=True).
      auto* in_use = it->second.mutable_names_in_use();
      const std::string base = absl::AsciiStrToLower(op.name());
      std::string key = base;
      int64_t i = 0;
      if (auto f = in_use->find(key); f != in_use->end()) i = f->second;
      (*in_use)[key] = i + 1;
      if (i > 0) {
        while (in_use->count(key) > 0) key = absl::StrCat(base, "_", i++);
        (*in_use)[key] = 1;
      }
      break;
    }
    case RegistryRecord::OP_NOT_SET:
      break;
  }
}

absl::StatusOr<VariableDef> Registry::Lookup(const std::string& name) const {
  uint64_t wait_for = 0;
  absl::StatusOr<VariableDef> found = [&]() -> absl::StatusOr<VariableDef> {
    absl::MutexLock lock(&mu_);
    // Only this name's last declaration or deletion: a lookup does not wait
    // for a flush of other names' records.
    wait_for = PendingSeqOf(name);
    auto it = variables_.find(name);
    if (it == variables_.end()) {
      return absl::NotFoundError(absl::StrCat("Variable ", name, " does not exist"));
    }
    return it->second;
  }();
  return Acknowledged(std::move(found), wait_for);
}

std::vector<VariableDef> Registry::List(const std::string& collection) const {
  uint64_t wait_for = 0;
  std::vector<VariableDef> out;
  {
  absl::MutexLock lock(&mu_);
  wait_for = ack_seq_;
  for (const auto& [name, def] : variables_) {
    if (collection.empty() || std::find(def.collections().begin(), def.collections().end(),
                                        collection) != def.collections().end()) {
      out.push_back(def);
    }
  }
  }
  std::sort(out.begin(), out.end(), [](const VariableDef& a, const VariableDef& b) {
    return a.creation_seq() < b.creation_seq();
  });
  // A listing that cannot be made durable is not given (the log failed:
  // see on_log_failure); the caller sees nothing rather than too much.
  if (!WaitDurable(wait_for).ok()) return {};
  return out;
}

absl::StatusOr<VariableDef> Registry::Delete(const std::string& name) {
  PSD_ASSIGN_OR_RETURN(std::vector<VariableDef> deleted, DeleteWithSlots(name));
  return std::move(deleted.back());
}

absl::StatusOr<std::vector<VariableDef>> Registry::DeleteWithSlots(const std::string& name) {
  uint64_t wait_for = 0;
  absl::StatusOr<std::vector<VariableDef>> deleted =
      [&]() -> absl::StatusOr<std::vector<VariableDef>> {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    auto it = variables_.find(name);
    if (it == variables_.end()) {
      return absl::NotFoundError(absl::StrCat("Variable ", name, " does not exist"));
    }
    std::vector<VariableDef> defs;
    if (it->second.has_embedding()) {
      for (const auto& [slot_name, def] : variables_) {
        if (def.has_embedding() && def.embedding().slot_of() == name) defs.push_back(def);
      }
    }
    defs.push_back(it->second);
    // Slots first: a crash between two records leaves a table without a
    // slot, never a slot without its table. Durability is a prefix of the
    // log, so waiting for the last record covers them all.
    for (const VariableDef& def : defs) {
      RegistryRecord record;
      record.set_deleted(def.name());
      PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    }
    return defs;
  }();
  return Committed(std::move(deleted), wait_for);
}

void Registry::NoteShardFreeBytes(std::map<int32_t, int64_t> free_bytes) {
  absl::MutexLock lock(&mu_);
  shard_free_bytes_ = std::move(free_bytes);
}

std::map<int32_t, ShardPlacement> Registry::Placement() const {
  absl::MutexLock lock(&mu_);
  return placement_;
}

std::vector<std::string> Registry::PartsOnShard(int32_t shard_id) const {
  uint64_t wait_for = 0;
  std::vector<std::string> out;
  {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    for (const auto& [name, def] : variables_) {
      for (const VariablePart& part : def.parts()) {
        if (part.shard_id() == shard_id) out.push_back(part.name());
      }
    }
  }
  // Parts of a declaration not durable yet are not reported (the caller
  // would mark them lost); the log failed if this does not succeed.
  if (!WaitDurable(wait_for).ok()) return {};
  return out;
}

size_t Registry::num_variables() const {
  absl::MutexLock lock(&mu_);
  return variables_.size();
}

RegistrySnapshot Registry::MakeSnapshot() const {
  RegistrySnapshot snap;
  snap.set_last_seq(next_seq_ - 1);
  snap.set_next_session_id(next_session_id_);
  snap.set_next_creation_seq(next_creation_seq_);
  for (const auto& [name, def] : variables_) *snap.add_variables() = def;
  for (const auto& [id, s] : sessions_) *snap.add_sessions() = s;
  for (const auto& [id, m] : moves_) *snap.add_moves() = m;
  for (int32_t id : drained_) snap.add_drained_shards(id);
  return snap;
}

absl::Status Registry::compaction_status() const {
  absl::MutexLock lock(&mu_);
  return compaction_status_;
}

absl::Status Registry::Compact() {
  RegistrySnapshot snapshot;
  {
    absl::MutexLock lock(&mu_);
    if (log_ == nullptr) return absl::OkStatus();
    if (compacting_) return absl::UnavailableError("a compaction of the registry is running");
    compacting_ = true;
    log_->StartCompaction();
    snapshot = MakeSnapshot();
  }
  return RunCompaction(snapshot);
}

}  // namespace psd
