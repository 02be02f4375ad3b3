// CheckpointManager (checkpoint_manager.h): a save. Every shard is fenced
// and snapshots at once, then writes its data file under a staging prefix;
// the meta and the merged index are staged and published, then the
// retention state, the state file and the deletion of the checkpoint that
// leaves the retention (the steps in checkpoint_manager.h).
#include "absl/cleanup/cleanup.h"
#include "coordinator/checkpoint_manager.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "checkpoint/publish.h"
#include "checkpoint/tensor_bundle.h"
#include "coordinator/checkpoint_manager_internal.h"
#include "psd/parallel.h"
#include "psd/random_id.h"
#include "psd/serialize.h"
#include "psd/status.h"
#include "spdlog/spdlog.h"

namespace psd {

using checkpoint::BundleShardIndex;
using checkpoint::JoinPath;
using checkpoint::SaverRetention;
using checkpoint_manager_internal::Call;
using checkpoint_manager_internal::FirstError;
using checkpoint_manager_internal::RetentionPath;

namespace {

// The variables a save writes, each under its checkpoint name (in
// VariableDef::name): the request's var_list, or every registered variable.
absl::StatusOr<std::vector<VariableDef>> SavedVariables(const Registry& registry,
                                                        const SaveCheckpointRequest& request,
                                                        const std::string& prefix) {
  if (request.variables().empty() && request.name_map().empty()) {
    std::vector<VariableDef> all = registry.List("");
    if (all.empty()) return absl::InvalidArgumentError("save: no variables to save");
    return all;
  }
  std::vector<std::pair<std::string, std::string>> targets;  // (checkpoint name, variable)
  for (const std::string& v : request.variables()) targets.emplace_back(v, v);
  const std::map<std::string, std::string> sorted(request.name_map().begin(),
                                                  request.name_map().end());
  for (const auto& [ckpt_name, var_name] : sorted) targets.emplace_back(ckpt_name, var_name);
  std::set<std::string> seen;
  std::vector<VariableDef> out;
  for (const auto& [ckpt_name, var_name] : targets) {
    if (ckpt_name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "save of ", prefix, ": var_list gives variable '", var_name, "' an empty name"));
    }
    if (!seen.insert(ckpt_name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "save of ", prefix, ": var_list names '", ckpt_name, "' twice"));
    }
    absl::StatusOr<VariableDef> def = registry.Lookup(var_name);
    if (!def.ok()) {
      return absl::Status(def.status().code(), absl::StrCat("save of ", prefix, ": var_list: ",
                                                            def.status().message()));
    }
    def->set_name(ckpt_name);
    out.push_back(*std::move(def));
  }
  return out;
}

// Releases op_mu_ taken with Lock() or TryLock().
struct OpUnlock {
  absl::Mutex* mu;
  ~OpUnlock() { mu->Unlock(); }
};

}  // namespace

absl::StatusOr<SaveCheckpointResponse> CheckpointManager::Save(
    const SaveCheckpointRequest& request) {
  return SaveTracked(request, /*try_only=*/false);
}

absl::StatusOr<SaveCheckpointResponse> CheckpointManager::TrySave(
    const SaveCheckpointRequest& request) {
  return SaveTracked(request, /*try_only=*/true);
}

absl::StatusOr<SaveCheckpointResponse> CheckpointManager::SaveTracked(
    const SaveCheckpointRequest& request, bool try_only) {
  progress_.Start(request.progress_id(), "save", "fencing");
  auto result = SaveLocked(request, try_only);
  progress_.Finish(request.progress_id(), result.status());
  if (options_.on_save) options_.on_save(result);
  return result;
}

absl::StatusOr<SaveCheckpointResponse> CheckpointManager::SaveLocked(
    const SaveCheckpointRequest& request, bool try_only) {
  const absl::Time start = absl::Now();
  std::string base = request.prefix();
  if (base.empty()) {
    if (options_.dir.empty()) {
      return absl::InvalidArgumentError(
          "save: no prefix given and no checkpoint directory configured");
    }
    base = JoinPath(options_.dir, "model.ckpt");
  }
  const std::string latest_filename =
      request.latest_filename().empty() ? checkpoint::kDefaultStateFilename
                                        : request.latest_filename();
  if (!request.has_global_step() && checkpoint::BaseName(base) == latest_filename) {
    return absl::InvalidArgumentError(
        absl::StrCat("'latest_filename' collides with 'save_path': '", latest_filename,
                     "' and '", base, "'"));
  }
  const std::string prefix =
      request.has_global_step() ? absl::StrCat(base, "-", request.global_step()) : base;
  const std::string dir = checkpoint::DirName(prefix);
  const uint64_t progress_id = request.progress_id();
  progress_.SetPrefix(progress_id, prefix);
  // The Saver's own retention over the coordinator's policy.
  SaverRetention::Policy policy = CurrentPolicy();
  PSD_RETURN_IF_ERROR(CheckRetention(
      request.has_max_to_keep() ? std::optional<int64_t>(request.max_to_keep()) : std::nullopt,
      request.has_keep_checkpoint_every_n_hours()
          ? std::optional<double>(request.keep_checkpoint_every_n_hours())
          : std::nullopt,
      absl::StrCat("save of ", prefix)));
  if (request.has_max_to_keep()) policy.max_to_keep = request.max_to_keep();
  if (request.has_keep_checkpoint_every_n_hours()) {
    policy.keep_checkpoint_every_n_hours = request.keep_checkpoint_every_n_hours();
  }
  const double age = request.saver_age_seconds();
  if (!(age >= 0) || !std::isfinite(age)) {
    return absl::InvalidArgumentError(
        absl::StrCat("save of ", prefix, ": saver_age_seconds must be >= 0, got ", age));
  }
  const bool saver_policy =
      request.has_max_to_keep() || request.has_keep_checkpoint_every_n_hours();
  PSD_RETURN_IF_ERROR(CheckLatestFilename(latest_filename, absl::StrCat("save of ", prefix)));
  PSD_RETURN_IF_ERROR(CheckUnderRoots(dir, /*write=*/true, absl::StrCat("save of ", prefix)));
  if (absl::Status listed = fs_->ListDir(dir).status(); !listed.ok()) {
    // TensorFlow's words, then why (a regular file where the directory
    // should be, no permission, ...).
    return absl::InvalidArgumentError(absl::StrCat(
        "Parent directory of ", prefix, " doesn't exist, can't save. (", listed.message(), ")"));
  }

  if (try_only) {
    if (!op_mu_.TryLock()) {
      return absl::AbortedError(
          absl::StrCat("save of ", prefix, ": another save or restore is running"));
    }
  } else {
    op_mu_.Lock();
  }
  OpUnlock unlock{&op_mu_};
  // A publication a kill interrupted completes (or its orphans go) before
  // this save looks at what PREFIX holds.
  RecoverDir(dir);
  // No part changes shards between reading the placement and the fence.
  placement_mu_.ReaderLock();
  absl::Cleanup placement_unlock = [this] { placement_mu_.ReaderUnlock(); };
  PSD_ASSIGN_OR_RETURN(const std::vector<VariableDef> defs,
                       SavedVariables(*registry_, request, prefix));
  std::map<int32_t, std::vector<SavePart>> by_shard;
  for (const VariableDef& def : defs) {
    for (const VariablePart& part : def.parts()) {
      SavePart p;
      p.set_name(part.name());
      p.set_full_name(def.name());
      if (def.has_embedding()) {
        // Tables are stored part by part, as DeepRec stores them
        // ("v/part_K-keys", ...; "v-keys" for one part).
        p.set_full_name(part.name());
      } else if (def.partitioned()) {
        p.set_sliced(true);
        *p.mutable_full_shape() = def.shape().dims();
        *p.mutable_offset() = part.offset();
      }
      by_shard[part.shard_id()].push_back(std::move(p));
    }
  }
  std::vector<int32_t> shards;
  for (const auto& [id, parts] : by_shard) shards.push_back(id);
  PSD_ASSIGN_OR_RETURN(const std::vector<std::shared_ptr<Shard::Stub>> stubs,
                       StubsFor(shards, absl::StrCat("save of ", prefix)));
  const size_t n = shards.size();

  // Embedding tables' eviction policies run at each save (as DeepRec's do),
  // before the fence: the checkpoint holds what they keep, and the fence
  // pause does not grow with their scans. A part that cannot evict now is
  // saved whole (logged).
  {
    std::vector<std::pair<size_t, EvictEmbeddingRequest>> evictions;
    for (const VariableDef& def : defs) {
      if (!def.has_embedding() || !def.embedding().slot_of().empty()) continue;
      if (def.embedding().steps_to_live() <= 0 && def.embedding().l2_weight_threshold() <= 0) {
        continue;
      }
      for (const VariablePart& part : def.parts()) {
        const size_t i = static_cast<size_t>(
            std::find(shards.begin(), shards.end(), part.shard_id()) - shards.begin());
        if (i >= n) continue;
        EvictEmbeddingRequest req;
        req.set_name(part.name());
        req.set_global_step(request.has_global_step() ? std::max<int64_t>(0, request.global_step())
                                                      : 0);
        evictions.emplace_back(i, std::move(req));
      }
    }
    std::vector<absl::Status> evicted = RunParallel(evictions.size(), [&](size_t e) {
      EvictEmbeddingResponse resp;
      return Call(stubs[evictions[e].first].get(), &Shard::Stub::EvictEmbedding,
                  evictions[e].second, &resp, absl::Now() + options_.rpc_timeout);
    });
    for (size_t e = 0; e < evicted.size(); ++e) {
      if (!evicted[e].ok()) {
        spdlog::warn("save of {}: eviction in {} failed, saving it whole: {}", prefix,
                     evictions[e].second.name(), evicted[e].ToString());
      }
    }
  }

  // 1-2: fence all, snapshot all (inside Fence), then unfence all.
  const uint64_t fence_id = RandomNonzeroId();
  // Everything this save writes goes under its own staging prefix until the
  // publish journal commits it (checkpoint/publish.h).
  const std::string staging = checkpoint::StagingPrefix(prefix, fence_id);
  const absl::Time fence_start = absl::Now();
  // The lease is judged on the steady clock, as the shards judge it.
  const auto fence_start_steady = std::chrono::steady_clock::now();
  auto fenced_for = [&] {
    return absl::FromChrono(std::chrono::steady_clock::now() - fence_start_steady);
  };
  auto unfence_all = [&](bool discard, std::vector<UnfenceResponse>* out) {
    std::vector<UnfenceResponse> resps(n);
    auto st = RunParallel(n, [&](size_t i) {
      UnfenceRequest req;
      req.set_fence_id(fence_id);
      req.set_discard(discard);
      return Call(stubs[i].get(), &Shard::Stub::Unfence, req, &resps[i],
                  absl::Now() + options_.rpc_timeout);
    });
    if (out != nullptr) *out = std::move(resps);
    return st;
  };
  {
    auto st = RunParallel(n, [&](size_t i) {
      FenceRequest req;
      req.set_fence_id(fence_id);
      req.set_lease_ms(absl::ToInt64Milliseconds(options_.fence_lease));
      FenceResponse resp;
      return Call(stubs[i].get(), &Shard::Stub::Fence, req, &resp,
                  fence_start + options_.fence_lease);
    });
    absl::Status s = FirstError(st, shards, absl::StrCat("save of ", prefix, ": fence"));
    if (s.ok() && fenced_for() >= options_.fence_lease) {
      s = absl::AbortedError(absl::StrCat("save of ", prefix,
                                          ": fence timeout: the shards were not all fenced "
                                          "within the lease of ",
                                          absl::FormatDuration(options_.fence_lease)));
    }
    if (!s.ok()) {
      unfence_all(/*discard=*/true, nullptr);
      return s;
    }
  }
  checkpoint::CrashPoint("save.after_fence");
  std::vector<UnfenceResponse> unfenced;
  unfence_all(/*discard=*/false, &unfenced);
  // Every part is pinned where it was: moves may switch owners again.
  std::move(placement_unlock).Invoke();
  checkpoint::CrashPoint("save.after_unfence");
  const absl::Duration fence_pause = fenced_for();

  // 3: every shard writes its data file, in parallel, answering every
  // progress_step_bytes so the progress moves.
  progress_.SetPhase(progress_id, "writing");
  std::vector<SaveShardResponse> saved(n);
  {
    auto st = RunParallel(n, [&](size_t i) -> absl::Status {
      SaveShardRequest req;
      req.set_fence_id(fence_id);
      req.set_prefix(staging);
      req.set_shard_index(static_cast<int32_t>(i));
      req.set_num_shards(static_cast<int32_t>(n));
      req.set_max_bytes(options_.progress_step_bytes);
      for (const auto& p : by_shard.at(shards[i])) *req.add_parts() = p;
      int64_t reported = 0;
      for (bool first = true;; first = false) {
        SaveShardResponse resp;
        PSD_RETURN_IF_ERROR(Call(stubs[i].get(), &Shard::Stub::SaveShard, req, &resp,
                                 absl::Now() + options_.io_timeout));
        if (first) progress_.AddTotal(progress_id, resp.total_bytes());
        progress_.AddDone(progress_id, resp.data_bytes() - reported);
        reported = resp.data_bytes();
        if (!resp.more()) {
          saved[i] = std::move(resp);
          checkpoint::CrashPoint("save.after_save_shard");
          return absl::OkStatus();
        }
      }
    });
    absl::Status s = FirstError(st, shards, absl::StrCat("save of ", prefix));
    if (!s.ok()) {
      // Only staged files go: PREFIX's checkpoint, if any, is untouched.
      checkpoint::DeleteStagedFiles(fs_, staging);
      return s;
    }
  }

  // 4: meta, then the index (the commit point).
  progress_.SetPhase(progress_id, "publishing");
  int64_t data_bytes = 0;
  int64_t copied = 0;
  std::vector<BundleShardIndex> parts(n);
  for (size_t i = 0; i < n; ++i) {
    parts[i].shard_id = static_cast<int>(i);
    for (const auto& e : saved[i].entries()) parts[i].entries[e.key()] = e.entry();
    data_bytes += saved[i].data_bytes();
    copied += saved[i].copied_bytes();
  }
  CheckpointMeta meta;
  for (const VariableDef& def : defs) *meta.add_variables() = def;
  if (request.has_global_step()) meta.set_global_step(request.global_step());
  meta.set_saved_unix_micros(absl::ToUnixMicros(absl::Now()));
  meta.set_num_shards(static_cast<int32_t>(n));
  meta.set_data_bytes(data_bytes);
  auto fail = [&](absl::Status s) {
    checkpoint::DeleteStagedFiles(fs_, staging);
    return s;
  };
  absl::StatusOr<std::string> meta_bytes =
      SerializeChecked(meta, absl::StrCat("save of ", prefix, ": ", checkpoint::MetaFilename(prefix)));
  if (!meta_bytes.ok()) return fail(meta_bytes.status());
  absl::Status s =
      checkpoint::WriteFileAtomically(fs_, checkpoint::MetaFilename(staging), *meta_bytes);
  if (!s.ok()) return fail(s);
  s = checkpoint::WriteMergedIndex(fs_, staging, static_cast<int>(n), parts);
  if (!s.ok()) return fail(s);
  checkpoint::CrashPoint("save.staged");
  bool committed = false;
  s = checkpoint::PublishStaged(fs_, prefix, staging, static_cast<int>(n), &committed);
  if (!s.ok()) {
    if (!committed) return fail(s);
    // The journal is written: the new checkpoint wins, and the next save,
    // restore or start of this directory finishes what is left.
    return absl::Status(s.code(), absl::StrCat("save of ", prefix,
                                               ": publication interrupted after its commit "
                                               "(it completes at the next use of ",
                                               dir, "): ", s.message()));
  }
  checkpoint::CrashPoint("save.published");

  // 5: retention, state file, then deletion (TF1 Saver order). A Saver's
  // own policy has its own state; the cluster's periodic checkpoints keep
  // the coordinator's.
  std::optional<std::string> drop;
  std::vector<std::string> listed;
  SaverRetentionState persisted;
  bool held = false;
  SaveCheckpointResponse response;
  {
    absl::MutexLock state(&state_mu_);
    SaverRetention* retention =
        RetentionFor(dir, latest_filename, saver_policy, saver_policy ? &policy : nullptr,
                     saver_policy, Now() - age);
    if (!saver_policy) retention->set_policy(CurrentPolicy());
    SaverRetention* other =
        RetentionFor(dir, latest_filename, !saver_policy, nullptr, false, Now());
    retention->RecordCheckpoint(prefix, Now());
    drop = retention->NextDeletion();
    persisted = retention->ToState();
    // Both states' checkpoints, oldest first.
    std::vector<std::pair<double, std::string>> all;
    for (const auto& [p, t] : retention->last_checkpoints_with_time()) all.emplace_back(t, p);
    for (const auto& [p, t] : other->last_checkpoints_with_time()) {
      if (p != prefix) all.emplace_back(t, p);
    }
    std::stable_sort(all.begin(), all.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::set<std::string> seen;
    seen.insert(prefix);
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (seen.insert(it->second).second) listed.insert(listed.begin(), it->second);
    }
    listed.push_back(prefix);
    if (drop.has_value()) {
      const auto& o = other->last_checkpoints_with_time();
      held = std::any_of(o.begin(), o.end(), [&](const auto& e) { return e.first == *drop; });
    }
  }
  // From here on the checkpoint is published: a failure says so.
  auto published_but = [&](const absl::Status& s, absl::string_view what) {
    return absl::Status(s.code(), absl::StrCat("save of ", prefix,
                                               ": the checkpoint was published, "
                                               "but ",
                                               what, " failed: ", s.message()));
  };
  // Saves are serialized (op_mu_): nobody changes the state meanwhile.
  absl::StatusOr<std::string> retention_bytes =
      SerializeChecked(persisted, RetentionPath(dir, latest_filename, saver_policy));
  if (!retention_bytes.ok()) return published_but(retention_bytes.status(), "the retention state");
  if (absl::Status s = checkpoint::WriteFileAtomically(
          fs_, RetentionPath(dir, latest_filename, saver_policy), *retention_bytes);
      !s.ok()) {
    return published_but(s, "persisting the retention state");
  }
  // Never delete what this state did not write: a checkpoint the other
  // state still lists, one outside this directory, one psd did not save.
  if (drop.has_value() && (held || *drop == prefix || checkpoint::DirName(*drop) != dir ||
                           !fs_->FileExists(checkpoint::MetaFilename(*drop)).ok())) {
    spdlog::info(
        "checkpoints: {} leaves the retention of {} but is kept (not this Saver's to "
        "delete)",
        *drop, dir);
    drop.reset();
  }
  checkpoint::CrashPoint("save.before_state_file");
  if (absl::Status s = checkpoint::WriteCheckpointState(fs_, dir, prefix, listed, latest_filename);
      !s.ok()) {
    return published_but(s, "writing the state file");
  }
  if (drop.has_value()) {
    checkpoint::DeleteCheckpointFiles(fs_, *drop);
    response.add_deleted(*drop);
  }
  auto index_size = fs_->GetFileSize(checkpoint::IndexFilename(prefix));
  response.set_prefix(prefix);
  response.set_bytes(data_bytes + (index_size.ok() ? static_cast<int64_t>(*index_size) : 0));
  int64_t fenced_micros = absl::ToInt64Microseconds(fence_pause);
  response.set_fence_micros(fenced_micros);
  response.set_copied_bytes(copied);
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return response;
}

}  // namespace psd
