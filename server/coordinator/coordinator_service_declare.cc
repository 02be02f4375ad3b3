// CoordinatorService (coordinator_service.h): declaring variables. A
// declaration is checked and placed by the registry, its new parts are
// created on their shards, and only then is it registered (undone if it
// cannot be); declarations of one name are serialized (NameLocks).
// Variables initialized from another are initialized in order, sources
// first; a checkpoint's variables are declared again from its meta.
#include "coordinator/coordinator_service.h"

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "grpcpp/grpcpp.h"
#include "device/initializer_spec.h"
#include "psd/crc32c.h"
#include "psd/grpc_status.h"
#include "psd/parallel.h"
#include "psd/status.h"

namespace psd {

absl::Status CoordinatorService::DeletePart(int32_t shard_id, const std::string& part) {
  std::string address;
  {
    absl::MutexLock lock(&mu_);
    auto it = shards_.find(shard_id);
    if (it == shards_.end()) {
      return absl::UnavailableError(absl::StrCat("shard ", shard_id, " is not registered"));
    }
    address = it->second.address;
  }
  DeleteVariableRequest req;
  req.set_name(part);
  DeleteVariableResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.shard_rpc_timeout));
  absl::Status s = FromGrpcStatus(StubFor(address)->DeleteVariable(&ctx, req, &resp));
  if (absl::IsNotFound(s)) return absl::OkStatus();
  return s;
}

absl::Status CoordinatorService::CreateNewParts(const std::vector<NewVariable>& variables) {
  // Every part attempted, so a failure can delete them again: a part whose
  // creation failed with a timeout may exist all the same.
  std::vector<std::pair<int32_t, std::string>> attempted;
  absl::Status failed;
  for (const NewVariable& v : variables) {
    const VariableDef& def = *v.def;
    for (const VariablePart& part : def.parts()) {
      std::string address;
      {
        absl::MutexLock lock(&mu_);
        auto it = shards_.find(part.shard_id());
        if (it != shards_.end()) address = it->second.address;
      }
      if (address.empty()) {
        failed =
            absl::UnavailableError(absl::StrCat("shard ", part.shard_id(), " is not registered"));
      } else {
        CreateVariableRequest req;
        req.set_name(part.name());
        req.set_dtype(def.dtype());
        *req.mutable_shape() = part.shape();
        *req.mutable_initializer() = def.initializer();
        req.set_replicated(ReplicationOf(def) > 1);
        if (def.has_embedding()) {
          // A table's part: shape [embedding_dim], no slice (keys go to
          // parts by hash), initialized from creation. A slot's slot_of
          // names the primary's part on this shard, the one beside it.
          EmbeddingSpec* spec = req.mutable_embedding();
          *spec = def.embedding();
          // Its place among the table's parts: the shard refuses keys of
          // other parts (psd/embedding_keys.h).
          for (int k = 0; k < def.parts_size(); ++k) {
            if (&def.parts(k) == &part) req.set_embedding_part_index(k);
          }
          req.set_embedding_num_parts(def.parts_size());
          if (!spec->slot_of().empty()) {
            absl::StatusOr<std::string> primary_part = PrimaryPartOf(def, part, variables);
            if (primary_part.ok()) {
              spec->set_slot_of(*std::move(primary_part));
            } else {
              failed = primary_part.status();
            }
          }
        } else {
          // A variable initialized from another waits for its source: the
          // ordered initialization runs it once every part exists. One
          // with a supplied value waits for its client to write it.
          req.set_initialize(v.initialize && ShardRunsInitializer(def.initializer()));
          if (def.partitioned()) {
            *req.mutable_slice()->mutable_full_shape() = def.shape().dims();
            *req.mutable_slice()->mutable_offset() = part.offset();
          }
        }
        auto create = [&] {
          CreateVariableResponse resp;
          grpc::ClientContext ctx;
          ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.shard_rpc_timeout));
          return FromGrpcStatus(StubFor(address)->CreateVariable(&ctx, req, &resp));
        };
        if (failed.ok()) {
          attempted.emplace_back(part.shard_id(), part.name());
          failed = create();
        }
        if (failed.code() == absl::StatusCode::kAlreadyExists) {
          // The registry has no variable of this name, so what the shard
          // holds is a leftover: a deleted variable's part its shard missed
          // the deletion of, or one of a declaration that failed. A new
          // variable never adopts its value; it is replaced.
          spdlog::warn(
              "variable {}: shard {} ({}) still holds a part {} of an earlier "
              "variable of that name; replacing it",
              def.name(), part.shard_id(), address, part.name());
          failed = DeletePart(part.shard_id(), part.name());
          if (failed.ok()) failed = create();
        }
      }
      if (!failed.ok()) {
        failed = absl::Status(
            failed.code(),
            absl::StrCat("variable ", def.name(), " was not declared: creating its part ",
                         part.name(), " on shard ", part.shard_id(),
                         address.empty() ? std::string() : absl::StrCat(" (", address, ")"),
                         " failed: ", failed.message(),
                         "; nothing was registered and no part of the declaration was kept"));
        break;
      }
    }
    if (!failed.ok()) break;
  }
  if (failed.ok()) return absl::OkStatus();
  UndoParts(attempted);
  return failed;
}

absl::StatusOr<std::string> CoordinatorService::PrimaryPartOf(
    const VariableDef& slot, const VariablePart& part,
    const std::vector<NewVariable>& batch) const {
  const std::string& primary_name = slot.embedding().slot_of();
  // The primary is declared in the same batch or registered already.
  absl::StatusOr<VariableDef> primary = absl::NotFoundError("");
  for (const NewVariable& v : batch) {
    if (v.def->name() == primary_name) primary = *v.def;
  }
  if (!primary.ok()) primary = registry_->Lookup(primary_name);
  if (!primary.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("slot table ", slot.name(), ": its primary ", primary_name,
                     " no longer exists: ", primary.status().message()));
  }
  for (int k = 0; k < slot.parts_size(); ++k) {
    if (slot.parts(k).name() != part.name()) continue;
    if (k >= primary->parts_size() || primary->parts(k).shard_id() != part.shard_id()) break;
    return primary->parts(k).name();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("slot table ", slot.name(), ": its primary ", primary_name,
                   " was declared again with other parts while it was declared"));
}

void CoordinatorService::UndoParts(const std::vector<std::pair<int32_t, std::string>>& parts) {
  for (const auto& [shard_id, part] : parts) {
    absl::Status s = DeletePart(shard_id, part);
    if (!s.ok()) {
      // Left behind; a later variable of this name replaces it.
      spdlog::warn("could not delete part {} on shard {} of a failed declaration: {}", part,
                   shard_id, s.ToString());
    }
  }
}

void CoordinatorService::NameLocks::Acquire(const std::set<std::string>& keys) {
  struct Wanted {
    const std::set<std::string>* keys;
    const std::set<std::string>* held;
  };
  absl::MutexLock lock(&mu_);
  Wanted wanted{&keys, &held_};
  mu_.Await(absl::Condition(
      +[](Wanted* w) {
        for (const std::string& key : *w->keys) {
          if (w->held->count(key) > 0) return false;
        }
        return true;
      },
      &wanted));
  held_.insert(keys.begin(), keys.end());
}

void CoordinatorService::NameLocks::Release(const std::set<std::string>& keys) {
  absl::MutexLock lock(&mu_);
  for (const std::string& key : keys) held_.erase(key);
}

std::string CoordinatorService::NameKey(const std::string& name) {
  absl::string_view key = name;
  while (true) {
    const size_t slash = key.rfind('/');
    if (slash == absl::string_view::npos) break;
    absl::string_view last = key.substr(slash + 1);
    if (!absl::ConsumePrefix(&last, "part_") || last.empty() ||
        !std::all_of(last.begin(), last.end(), [](char c) { return absl::ascii_isdigit(c); })) {
      break;
    }
    key = key.substr(0, slash);
  }
  return std::string(key);
}

std::set<std::string> CoordinatorService::DeclarationKeys(
    absl::Span<const VariableDeclaration> decls) {
  std::set<std::string> keys;
  for (const VariableDeclaration& d : decls) {
    keys.insert(NameKey(d.name()));
    if (!d.colocate_with().empty()) keys.insert(NameKey(d.colocate_with()));
    if (!d.embedding().slot_of().empty()) keys.insert(NameKey(d.embedding().slot_of()));
    if (d.initializer().has_from_variable()) {
      keys.insert(NameKey(d.initializer().from_variable().source()));
    }
  }
  return keys;
}

absl::StatusOr<std::vector<DeclareResult>> CoordinatorService::DeclareAndCreate(
    uint64_t session, absl::Span<const VariableDeclaration> decls, uint64_t request_seq,
    absl::Time deadline) {
  // Declaring and creating parts is serialized per name (declaring_), so a
  // declaration that attaches finds the parts created. The ordered initialization after it
  // is not: it may wait on several shards in turn, and every get_variable
  // of the cluster would wait behind it. Running it outside is safe: it
  // reads the registry as it is then (a variable deleted meanwhile is
  // NOT_FOUND), and the shards initialize a variable once (force off), so
  // two declarations initializing it at once leave one value. A
  // declaration attaching without initializing waits for one in flight
  // (initializing_), so it still gets the handle once the value is there.
  std::vector<std::string> ordered;
  std::vector<std::shared_ptr<InitializationInFlight>> started;
  std::vector<std::pair<std::string, std::shared_ptr<InitializationInFlight>>> awaited;
  std::vector<DeclareResult> results;
  // Parts just declared beside a replicated part (an optimizer's slots).
  std::set<std::string> beside_replicated;
  {
    HeldNames declaring(&declaring_, DeclarationKeys(decls));
    // Checked and placed, not registered: the registry records the batch
    // only once every new part exists on its shard, so a declaration that
    // fails (a spec a shard refuses, a shard out of memory or unreachable)
    // leaves no variable, no part and nothing for a checkpoint to miss.
    // What the shards last reported, for placing tables by room (noted
    // outside mu_: the registry's lock is never taken under it).
    std::map<int32_t, int64_t> free_bytes;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, shard] : shards_) {
        if (shard.memory_limit > 0) {
          free_bytes[id] = std::max<int64_t>(0, shard.memory_limit - shard.memory_used);
        }
      }
    }
    registry_->NoteShardFreeBytes(std::move(free_bytes));
    PSD_ASSIGN_OR_RETURN(PreparedDeclaration prepared,
                         registry_->PrepareDeclare(session, decls, PlacementShards(), request_seq));
    if (!prepared.replayed) {
      std::vector<NewVariable> created;
      for (size_t i = 0; i < prepared.results.size(); ++i) {
        if (prepared.results[i].created) {
          created.push_back({&prepared.results[i].def, decls[i].initialize()});
        }
      }
      PSD_RETURN_IF_ERROR(CreateNewParts(created));
      absl::Status committed = registry_->CommitDeclare(prepared);
      if (!committed.ok()) {
        std::vector<std::pair<int32_t, std::string>> parts;
        for (const NewVariable& v : created) {
          for (const VariablePart& part : v.def->parts()) {
            parts.emplace_back(part.shard_id(), part.name());
          }
        }
        UndoParts(parts);
        return committed;
      }
      for (const NewVariable& v : created) {
        if (v.def->colocate_with().empty() || ReplicationOf(*v.def) < 2) continue;
        for (const VariablePart& part : v.def->parts()) beside_replicated.insert(part.name());
      }
    }
    results = std::move(prepared.results);
    for (size_t i = 0; i < results.size() && i < static_cast<size_t>(decls.size()); ++i) {
      if (!results[i].def.initializer().has_from_variable()) continue;
      // A variable initialized from another is created uninitialized and
      // filled by the ordered initialization. That step runs on every
      // declaration asking to initialize, not only the one that created
      // it: a first attempt that failed (a lost source) left it
      // uninitialized, and the retry only attaches. It is idempotent
      // (force off), so an initialized variable keeps its value.
      const std::string& name = results[i].def.name();
      absl::MutexLock lock(&mu_);
      auto flight = initializing_.find(name);
      if (decls[i].initialize()) {
        ordered.push_back(name);
        if (flight == initializing_.end()) {
          started.push_back(std::make_shared<InitializationInFlight>());
          initializing_[name] = started.back();
        }
      } else if (flight != initializing_.end()) {
        awaited.emplace_back(name, flight->second);
      }
    }
  }
  if (!beside_replicated.empty()) {
    // The group's backups (and a copy under way) follow only the parts it
    // had: they are dropped, and the keeper copies the group again with
    // the new parts. Kept, the new parts had no backup, the keeper counted
    // the group as replicated, and a failover of it found no in-sync
    // backup of them and was refused.
    PauseReplicas(beside_replicated, "a part was declared beside its primary");
  }
  absl::Status initialized;
  if (!ordered.empty()) initialized = InitializeOrdered(ordered, /*force=*/false, deadline).status();
  if (!started.empty()) {
    absl::MutexLock lock(&mu_);
    for (auto it = initializing_.begin(); it != initializing_.end();) {
      if (std::find(started.begin(), started.end(), it->second) == started.end()) {
        ++it;
        continue;
      }
      it->second->done.Notify();
      it = initializing_.erase(it);
    }
  }
  PSD_RETURN_IF_ERROR(initialized);
  for (const auto& [name, flight] : awaited) {
    if (!flight->done.WaitForNotificationWithDeadline(deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "variable ", name, " is being initialized from another variable by another "
          "declaration, which did not finish before the deadline"));
    }
  }
  return results;
}

absl::StatusOr<std::vector<std::string>> CoordinatorService::InitializeOrdered(
    const std::vector<std::string>& names, bool force, absl::Time deadline) {
  // The variables involved: the listed ones, then the sources they need.
  std::map<std::string, VariableDef> defs;
  std::set<std::string> listed(names.begin(), names.end());
  std::vector<std::pair<std::string, std::string>> pending;  // (name, the variable needing it)
  for (const std::string& name : names) pending.emplace_back(name, "");
  while (!pending.empty()) {
    const auto [name, needed_by] = pending.back();
    pending.pop_back();
    if (defs.count(name) > 0) continue;
    absl::StatusOr<VariableDef> def = registry_->Lookup(name);
    if (!def.ok() && !needed_by.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "variable ", needed_by, " is initialized from ", name, ", which no longer exists: ",
          def.status().message()));
    }
    if (!def.ok()) return def.status();
    if (def->initializer().has_from_variable()) {
      pending.emplace_back(def->initializer().from_variable().source(), name);
    }
    defs.emplace(name, *std::move(def));
  }
  // Depth in the chain of sources; each variable has at most one source and
  // declarations admit no cycles, so a chain is at most as long as `defs`.
  std::map<std::string, size_t> depth;
  size_t max_depth = 0;
  for (const auto& [name, def] : defs) {
    size_t d = 0;
    for (const VariableDef* v = &def; v->initializer().has_from_variable(); ++d) {
      auto it = defs.find(v->initializer().from_variable().source());
      if (it == defs.end() || d > defs.size()) {
        return absl::InternalError(absl::StrCat("variable ", name,
                                                ": its chain of initializer sources is broken"));
      }
      v = &it->second;
    }
    depth[name] = d;
    max_depth = std::max(max_depth, d);
  }

  // Where every part lives, checked before any shard is called.
  struct Location {
    int32_t shard_id = 0;
    std::string address;
    uint64_t incarnation = 0;
  };
  std::map<std::string, Location> where;  // part name -> its shard
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, def] : defs) {
      for (const VariablePart& part : def.parts()) {
        auto it = shards_.find(part.shard_id());
        std::string problem;  // why the part cannot take part, or empty
        if (it == shards_.end()) {
          problem = absl::StrCat("is unavailable: shard ", part.shard_id(), " is not registered");
        } else if (it->second.lost_parts.count(part.name()) > 0) {
          problem = absl::StrCat("is lost: shard ", part.shard_id(), " (", it->second.address,
                                 ") restarted without it; restore it");
        }
        if (problem.empty()) {
          where[part.name()] = {part.shard_id(), it->second.address, it->second.incarnation};
          continue;
        }
        std::string status = absl::StrCat("part ", part.name(), " of variable ", name, " ", problem);
        // Name the initialization that needs it when it is only a source.
        for (const auto& [target, tdef] : defs) {
          if (listed.count(name) == 0 && tdef.initializer().has_from_variable() &&
              tdef.initializer().from_variable().source() == name) {
            status = absl::StrCat("cannot initialize ", target, " from ", name, ": ", status);
            break;
          }
        }
        return absl::UnavailableError(status);
      }
    }
  }

  std::vector<std::string> order;
  for (size_t d = 0; d <= max_depth; ++d) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "initializing ", absl::StrJoin(names, ", "), ": the caller's deadline passed before step ",
          d + 1, " of ", max_depth + 1, "; initialized so far: [",
          absl::StrJoin(order, ", "), "]"));
    }
    const absl::Time step_deadline = std::min(absl::Now() + options_.shard_rpc_timeout, deadline);
    // One request per (shard, force) in this step.
    std::map<std::pair<int32_t, bool>, InitializeVariablesRequest> requests;
    std::vector<std::string> step;
    for (const auto& [name, def] : defs) {
      if (depth[name] != d) continue;
      step.push_back(name);
      const bool forced = force && listed.count(name) > 0;
      const VariableDef* source = nullptr;
      if (def.initializer().has_from_variable()) {
        source = &defs.at(def.initializer().from_variable().source());
      }
      for (int k = 0; k < def.parts_size(); ++k) {
        const VariablePart& part = def.parts(k);
        const Location& at = where.at(part.name());
        InitializeVariablesRequest& req = requests[{at.shard_id, forced}];
        req.add_names(part.name());
        req.set_force(forced);
        req.set_shard_incarnation(at.incarnation);
        if (source == nullptr) continue;
        // Declarations guarantee equal part counts; a source re-declared
        // since (deleted and declared again) may not keep them.
        if (k >= source->parts_size()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "cannot initialize ", name, " from ", source->name(), ": ", source->name(),
              " has ", source->parts_size(), " part(s), ", name, " has ", def.parts_size()));
        }
        const VariablePart& from = source->parts(k);
        const Location& src = where.at(from.name());
        InitializeSource* s = req.add_sources();
        s->set_target(part.name());
        s->set_part(from.name());
        s->set_shard_id(src.shard_id);
        s->set_address(src.address);
        s->set_incarnation(src.incarnation);
      }
    }
    std::vector<std::pair<const std::pair<int32_t, bool>, InitializeVariablesRequest>*> calls;
    for (auto& entry : requests) calls.push_back(&entry);
    const std::vector<absl::Status> statuses = RunParallel(calls.size(), [&](size_t i) {
      const int32_t shard_id = calls[i]->first.first;
      const InitializeVariablesRequest& req = calls[i]->second;
      const std::string& address = where.at(req.names(0)).address;
      InitializeVariablesResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(step_deadline));
      absl::Status s = FromGrpcStatus(StubFor(address)->InitializeVariables(&ctx, req, &resp));
      if (s.ok()) return s;
      return absl::Status(s.code(), absl::StrCat("initializing ", absl::StrJoin(req.names(), ", "),
                                                 " on shard ", shard_id, " (", address,
                                                 "): ", s.message()));
    });
    for (const absl::Status& s : statuses) PSD_RETURN_IF_ERROR(s);
    order.insert(order.end(), step.begin(), step.end());
  }
  return order;
}

absl::Status CoordinatorService::DeclareFromMeta(const CheckpointMeta& meta) {
  std::vector<VariableDef> defs(meta.variables().begin(), meta.variables().end());
  std::stable_sort(defs.begin(), defs.end(), [](const VariableDef& a, const VariableDef& b) {
    return a.creation_seq() < b.creation_seq();
  });
  std::map<std::string, const VariableDef*> saved;
  for (const VariableDef& def : defs) saved[def.name()] = &def;
  // The variables that keep their FromVariable initializer: the checkpoint
  // holds the source, and the variable fits the source as saved. A source
  // deleted before the save, or deleted and declared again differently,
  // cannot be declared against; the checkpoint holds the value, so fall
  // back to TensorFlow's default for a later re-initialization rather than
  // refuse the whole restore.
  std::map<std::string, std::string> source_of;  // variable -> its source
  for (const VariableDef& def : defs) {
    if (!def.initializer().has_from_variable()) continue;
    const std::string& source = def.initializer().from_variable().source();
    auto it = saved.find(source);
    const absl::Status fits =
        it == saved.end() ? absl::NotFoundError("the checkpoint does not hold it")
                          : Registry::CheckFromVariableFits(def, *it->second);
    if (fits.ok()) {
      source_of[def.name()] = source;
    } else {
      spdlog::warn("variable {} was initialized from {}, which it cannot be declared against "
                   "({}); it is declared with the default initializer",
                   def.name(), source, std::string(fits.message()));
    }
  }
  // Sources before the variables initialized from them (a source declared
  // again after its target has the later creation_seq), so each is checked
  // against a declared source. Declarations admit no cycle; a chain longer
  // than the checkpoint would be one, and also falls back.
  std::map<std::string, size_t> depth;
  for (const VariableDef& def : defs) {
    size_t d = 0;
    for (auto it = source_of.find(def.name()); it != source_of.end() && d <= defs.size();
         it = source_of.find(it->second)) {
      ++d;
    }
    if (d > defs.size()) {
      spdlog::warn("variable {}: its chain of initializer sources in the checkpoint is a cycle; "
                   "it is declared with the default initializer",
                   def.name());
      source_of.erase(def.name());
      d = 0;
    }
    depth[def.name()] = d;
  }
  // Depths again: a cycle broken above shortens the chains through it.
  for (const VariableDef& def : defs) {
    size_t d = 0;
    for (auto it = source_of.find(def.name()); it != source_of.end();
         it = source_of.find(it->second)) {
      ++d;
    }
    depth[def.name()] = d;
  }
  std::stable_sort(defs.begin(), defs.end(), [&](const VariableDef& a, const VariableDef& b) {
    return depth.at(a.name()) < depth.at(b.name());
  });
  std::vector<VariableDeclaration> decls;
  decls.reserve(defs.size());
  for (const VariableDef& def : defs) {
    VariableDeclaration d;
    d.set_name(def.name());
    d.set_dtype(def.dtype());
    *d.mutable_shape() = def.shape();
    *d.mutable_initializer() = def.initializer();
    if (def.initializer().has_from_variable() && source_of.count(def.name()) == 0) {
      d.mutable_initializer()->mutable_default_initializer();
    }
    if (def.initializer().has_constant() &&
        static_cast<int64_t>(def.initializer().constant().value().content().size()) >
            kMaxInlineConstantBytes) {
      // Saved when initial values travelled inside declarations: the
      // checkpoint holds the value, so only its description is declared.
      const TensorProto& value = def.initializer().constant().value();
      InitializerSpec::SuppliedValue* supplied =
          d.mutable_initializer()->mutable_supplied_value();
      supplied->set_dtype(value.dtype());
      *supplied->mutable_shape() = value.shape();
      supplied->set_byte_size(static_cast<int64_t>(value.content().size()));
      supplied->set_crc32c(crc32c::Value(value.content()));
    }
    if (def.has_embedding()) {
      // A table: its spec as saved, fixed_size(N) for N parts by hash.
      *d.mutable_embedding() = def.embedding();
      if (def.partitioned()) {
        d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(def.parts_size());
      }
    } else if (def.partitioned()) {
      auto* parts = d.mutable_partitioner()->mutable_explicit_partitions();
      *parts->mutable_partitions() = def.partitions();
    }
    d.set_reuse(REUSE_AUTO);
    d.set_trainable(def.trainable());
    for (const std::string& c : def.collections()) {
      // Added again on declaration (a table joins "embedding_variables").
      if (c != "trainable_variables" && !(def.has_embedding() && c == "embedding_variables")) {
        d.add_collections(c);
      }
    }
    d.set_declared_at(def.declared_at().empty() ? "restored from a checkpoint"
                                                : def.declared_at());
    d.set_colocate_with(def.colocate_with());
    decls.push_back(std::move(d));
  }
  PSD_ASSIGN_OR_RETURN(uint64_t session, registry_->OpenSession("psd coordinator --restore-from"));
  auto results = DeclareAndCreate(session, decls);
  (void)registry_->CloseSession(session);
  return results.status();
}

}  // namespace psd
