#include "coordinator/checkpoint_manager.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/publish.h"
#include "checkpoint/tensor_bundle.h"
#include "grpcpp/grpcpp.h"
#include "psd/dtype.h"
#include "psd/grpc_status.h"
#include "psd/parallel.h"
#include "psd/random_id.h"
#include "psd/serialize.h"
#include "psd/status.h"
#include "spdlog/spdlog.h"

namespace psd {

using checkpoint::BundleReader;
using checkpoint::BundleShardIndex;
using checkpoint::JoinPath;
using checkpoint::SaverRetention;

namespace {


template <typename Req, typename Resp>
absl::Status Call(Shard::Stub* stub,
                  grpc::Status (Shard::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                  const Req& req, Resp* resp, absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  // A shard that just restarted on its address is live (the stub lookup
  // checks); ride out the channel's reconnect backoff instead of failing.
  ctx.set_wait_for_ready(true);
  return FromGrpcStatus((stub->*method)(&ctx, req, resp));
}

absl::Status FirstError(const std::vector<absl::Status>& statuses,
                        const std::vector<int32_t>& shards, absl::string_view what) {
  for (size_t i = 0; i < statuses.size(); ++i) {
    if (!statuses[i].ok()) {
      return absl::Status(statuses[i].code(), absl::StrCat(what, ": shard ", shards[i], ": ",
                                                           statuses[i].message()));
    }
  }
  return absl::OkStatus();
}

// "model.ckpt-123" -> 123.
std::optional<int64_t> StepOf(const std::string& prefix) {
  const size_t dash = prefix.rfind('-');
  if (dash == std::string::npos || prefix.find('/', dash) != std::string::npos) return std::nullopt;
  int64_t step;
  if (!absl::SimpleAtoi(prefix.substr(dash + 1), &step)) return std::nullopt;
  return step;
}

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

// The absolute path `path` names: the realpath of its longest existing
// part ("..", symlinks resolved), the rest normalized lexically.
std::string ResolvePath(const std::string& path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) return std::filesystem::path(path).lexically_normal().string();
  std::filesystem::path resolved = std::filesystem::weakly_canonical(abs, ec);
  if (ec) resolved = abs.lexically_normal();
  std::string out = resolved.string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (absl::StartsWith(path, root) && path[root.size()] == '/');
}

// Releases op_mu_ taken with Lock() or TryLock().
struct OpUnlock {
  absl::Mutex* mu;
  ~OpUnlock() { mu->Unlock(); }
};

absl::StatusOr<std::string> ReadWholeFile(checkpoint::FileSystem* fs, const std::string& path) {
  PSD_ASSIGN_OR_RETURN(uint64_t size, fs->GetFileSize(path));
  PSD_ASSIGN_OR_RETURN(auto file, fs->NewRandomAccessFile(path));
  std::string data(size, '\0');
  absl::string_view got;
  PSD_RETURN_IF_ERROR(file->Read(0, size, data.data(), &got));
  return std::string(got);
}

}  // namespace

template <typename Fn>
void CheckpointProgressBoard::Update(uint64_t id, Fn fn) {
  if (id == 0) return;
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it != entries_.end()) fn(&it->second);
}

void CheckpointProgressBoard::Start(uint64_t id, const std::string& operation,
                                    const std::string& phase) {
  if (id == 0) return;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    it = now - it->second.ended > absl::Minutes(1) ? entries_.erase(it) : std::next(it);
  }
  Entry& e = entries_[id];
  e = Entry();
  e.started = now;
  e.state.set_found(true);
  e.state.set_operation(operation);
  e.state.set_phase(phase);
}

void CheckpointProgressBoard::SetPhase(uint64_t id, const std::string& phase) {
  Update(id, [&](Entry* e) { e->state.set_phase(phase); });
}

void CheckpointProgressBoard::SetPrefix(uint64_t id, const std::string& prefix) {
  Update(id, [&](Entry* e) { e->state.set_prefix(prefix); });
}

void CheckpointProgressBoard::AddTotal(uint64_t id, int64_t bytes) {
  Update(id, [&](Entry* e) { e->state.set_total_bytes(e->state.total_bytes() + bytes); });
}

void CheckpointProgressBoard::AddDone(uint64_t id, int64_t bytes) {
  Update(id, [&](Entry* e) { e->state.set_done_bytes(e->state.done_bytes() + bytes); });
}

void CheckpointProgressBoard::Finish(uint64_t id, const absl::Status& status) {
  Update(id, [&](Entry* e) {
    e->ended = absl::Now();
    e->state.set_finished(true);
    e->state.set_seconds(absl::ToDoubleSeconds(e->ended - e->started));
    e->state.set_phase(status.ok() ? "done" : "failed");
    if (!status.ok()) e->state.set_error(std::string(status.message()));
  });
}

CheckpointProgressResponse CheckpointProgressBoard::Get(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (id == 0 || it == entries_.end() || absl::Now() - it->second.ended > absl::Minutes(1)) {
    return CheckpointProgressResponse();
  }
  CheckpointProgressResponse out = it->second.state;
  if (!out.finished()) out.set_seconds(absl::ToDoubleSeconds(absl::Now() - it->second.started));
  return out;
}

CheckpointManager::CheckpointManager(Registry* registry, ShardAccess access,
                                     CheckpointManagerOptions options)
    : registry_(registry),
      access_(std::move(access)),
      options_(std::move(options)),
      fs_(options_.fs != nullptr ? options_.fs : checkpoint::FileSystem::Default()),
      policy_(options_.policy) {
  std::vector<std::string> writable = options_.roots;
  if (!options_.dir.empty()) writable.insert(writable.begin(), options_.dir);
  for (const std::string& r : writable) {
    if (r.empty()) continue;
    const std::string resolved = ResolvePath(r);
    if (std::find(write_roots_.begin(), write_roots_.end(), resolved) == write_roots_.end()) {
      write_roots_.push_back(resolved);
    }
  }
  read_roots_ = write_roots_;
  for (const std::string& r : options_.read_roots) {
    if (r.empty()) continue;
    const std::string resolved = ResolvePath(r);
    if (std::find(read_roots_.begin(), read_roots_.end(), resolved) == read_roots_.end()) {
      read_roots_.push_back(resolved);
    }
  }
  if (options_.policy_file.empty()) return;
  auto data = ReadWholeFile(fs_, options_.policy_file);
  CheckpointPolicy saved;
  if (data.ok() && saved.ParseFromString(*data)) {
    if (saved.has_max_to_keep()) policy_.max_to_keep = saved.max_to_keep();
    if (saved.has_keep_checkpoint_every_n_hours()) {
      policy_.keep_checkpoint_every_n_hours = saved.keep_checkpoint_every_n_hours();
    }
    spdlog::info("checkpoints: policy set at run time recovered from {}: max_to_keep {}, keep "
                 "every {} h",
                 options_.policy_file, policy_.max_to_keep, policy_.keep_checkpoint_every_n_hours);
  }
}

double CheckpointManager::Now() const {
  if (options_.now) return options_.now();
  return static_cast<double>(absl::ToUnixMicros(absl::Now())) / 1e6;
}

std::string CheckpointManager::DirOrDefault(const std::string& dir) const {
  return dir.empty() ? options_.dir : dir;
}

int CheckpointManager::CleanUpTempFiles() {
  if (options_.dir.empty()) return 0;
  absl::MutexLock op(&op_mu_);
  const checkpoint::RecoveryStats stats = checkpoint::RecoverCheckpointDir(fs_, options_.dir);
  for (const std::string& e : stats.errors) spdlog::error("checkpoints: recovery: {}", e);
  if (stats.journals_applied > 0) {
    spdlog::info("checkpoints: {} interrupted publication(s) in {} completed",
                 stats.journals_applied, options_.dir);
  }
  auto n = checkpoint::DeleteTempFiles(fs_, options_.dir);
  return stats.staging_deleted + (n.ok() ? *n : 0);
}

void CheckpointManager::RecoverDir(const std::string& dir) {
  const checkpoint::RecoveryStats stats = checkpoint::RecoverCheckpointDir(fs_, dir);
  for (const std::string& e : stats.errors) spdlog::error("checkpoints: recovery: {}", e);
  if (stats.journals_applied > 0 || stats.staging_deleted > 0) {
    spdlog::info(
        "checkpoints: recovered {}: {} interrupted publication(s) completed, {} "
        "orphan staging file(s) removed",
        dir, stats.journals_applied, stats.staging_deleted);
  }
}

std::string CheckpointManager::RootsForMessage() const {
  if (read_roots_.empty()) return "none configured (--checkpoint-dir, --checkpoint-roots)";
  std::vector<std::string> parts;
  for (const std::string& r : read_roots_) {
    const bool writable =
        std::find(write_roots_.begin(), write_roots_.end(), r) != write_roots_.end();
    parts.push_back(writable ? r : absl::StrCat(r, " (read only)"));
  }
  return absl::StrJoin(parts, ", ");
}

absl::Status CheckpointManager::CheckUnderRoots(const std::string& path, bool write,
                                                const std::string& what) const {
  const std::string resolved = ResolvePath(path);
  for (const std::string& root : write ? write_roots_ : read_roots_) {
    if (IsUnder(resolved, root)) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      what, ": ", path, " (", resolved, ") is outside the checkpoint roots: ", RootsForMessage(),
      "; more roots: checkpoint.roots / --checkpoint-roots"));
}

absl::Status CheckpointManager::CheckLatestFilename(const std::string& name,
                                                    const std::string& what) const {
  if (name.find('/') != std::string::npos || name == "." || name == ".." ||
      name.find('\0') != std::string::npos) {
    return absl::PermissionDeniedError(
        absl::StrCat(what, ": latest_filename '", name,
                     "' must be a plain file name in the checkpoint directory (checkpoint roots: ",
                     RootsForMessage(), ")"));
  }
  return absl::OkStatus();
}

SaverRetention::Policy CheckpointManager::CurrentPolicy() const {
  absl::MutexLock lock(&policy_mu_);
  return policy_;
}

absl::StatusOr<std::vector<std::shared_ptr<Shard::Stub>>> CheckpointManager::StubsFor(
    const std::vector<int32_t>& shards, const std::string& what) const {
  std::vector<std::shared_ptr<Shard::Stub>> stubs;
  for (int32_t id : shards) {
    auto stub = access_.stub(id);
    if (!stub.ok()) {
      return absl::Status(stub.status().code(),
                          absl::StrCat(what, ": shard ", id, ": ", stub.status().message()));
    }
    stubs.push_back(*std::move(stub));
  }
  return stubs;
}

namespace {

// Where a track's state is persisted: the cluster's keeps the name it
// always had; the trainer Savers' has its own.
std::string RetentionPath(const std::string& dir, const std::string& name, bool saver_track) {
  return checkpoint::RetentionStateFilename(dir, saver_track ? absl::StrCat(name, ".saver") : name);
}

}  // namespace

SaverRetention* CheckpointManager::RetentionFor(const std::string& dir, const std::string& name,
                                                bool saver_track,
                                                const SaverRetention::Policy* save_policy,
                                                bool saver_policy, double built_at) {
  auto key = std::make_tuple(dir, name, saver_track);
  auto it = retention_.find(key);
  if (it == retention_.end()) {
    const SaverRetention::Policy policy =
        save_policy != nullptr ? *save_policy : CurrentPolicy();
    SaverRetention r(policy, built_at);
    auto data = ReadWholeFile(fs_, RetentionPath(dir, name, saver_track));
    SaverRetentionState state;
    if (data.ok() && state.ParseFromString(*data)) r = SaverRetention::FromState(policy, state);
    return &retention_.emplace(key, std::move(r)).first->second;
  }
  if (save_policy == nullptr) return &it->second;
  if (saver_policy && save_policy->keep_checkpoint_every_n_hours !=
                          it->second.policy().keep_checkpoint_every_n_hours) {
    SaverRetentionState state = it->second.ToState();
    state.set_next_checkpoint_time(built_at + save_policy->keep_checkpoint_every_n_hours * 3600);
    it->second = SaverRetention::FromState(*save_policy, state);
  }
  it->second.set_policy(*save_policy);
  return &it->second;
}

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
  if (request.has_max_to_keep()) {
    if (request.max_to_keep() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("save of ", prefix, ": max_to_keep must be >= 0 (0 keeps every "
                       "checkpoint), got ", request.max_to_keep()));
    }
    policy.max_to_keep = request.max_to_keep();
  }
  if (request.has_keep_checkpoint_every_n_hours()) {
    const double hours = request.keep_checkpoint_every_n_hours();
    if (!(hours > 0) || !std::isfinite(hours)) {
      return absl::InvalidArgumentError(
          absl::StrCat("save of ", prefix, ": keep_checkpoint_every_n_hours must be a positive "
                       "number of hours, got ", hours));
    }
    policy.keep_checkpoint_every_n_hours = hours;
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
  if (!fs_->ListDir(dir).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Parent directory of ", prefix, " doesn't exist, can't save."));
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
  PSD_ASSIGN_OR_RETURN(const std::vector<VariableDef> defs,
                       SavedVariables(*registry_, request, prefix));
  std::map<int32_t, std::vector<SavePart>> by_shard;
  for (const VariableDef& def : defs) {
    for (const VariablePart& part : def.parts()) {
      SavePart p;
      p.set_name(part.name());
      p.set_full_name(def.name());
      if (def.partitioned()) {
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

absl::StatusOr<std::string> CheckpointManager::ResolveRestorePrefix(
    const RestoreCheckpointRequest& request) {
  const std::string& p = request.prefix();
  PSD_RETURN_IF_ERROR(CheckLatestFilename(request.latest_filename(), "restore"));
  if (!p.empty() && p != "latest") {
    // A directory names itself; a prefix, its directory.
    const std::string where = fs_->ListDir(p).ok() ? p : checkpoint::DirName(p);
    PSD_RETURN_IF_ERROR(CheckUnderRoots(where, /*write=*/false, absl::StrCat("restore of ", p)));
  }
  if (p.empty() || p == "latest") {
    if (options_.dir.empty()) {
      return absl::InvalidArgumentError(
          "restore: no checkpoint named and no checkpoint directory configured");
    }
    auto latest = checkpoint::LatestCheckpoint(fs_, options_.dir, request.latest_filename());
    if (!latest.ok()) {
      return absl::NotFoundError(
          absl::StrCat("restore: no checkpoint in ", options_.dir, ": ", latest.status().message()));
    }
    return *latest;
  }
  if (fs_->FileExists(checkpoint::IndexFilename(p)).ok()) return p;
  if (fs_->ListDir(p).ok()) {
    auto latest = checkpoint::LatestCheckpoint(fs_, p, request.latest_filename());
    if (!latest.ok()) {
      return absl::NotFoundError(
          absl::StrCat("restore: no checkpoint in ", p, ": ", latest.status().message()));
    }
    return *latest;
  }
  if (fs_->FileExists(p).ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(p, ": V1 checkpoint format is not supported"));
  }
  return absl::NotFoundError(absl::StrCat("restore: checkpoint ", p, " not found (no ",
                                          checkpoint::IndexFilename(p), ")"));
}

absl::StatusOr<RestoreCheckpointResponse> CheckpointManager::Restore(
    const RestoreCheckpointRequest& request) {
  progress_.Start(request.progress_id(), "restore", "reading");
  auto result = RestoreLocked(request, nullptr, -1);
  progress_.Finish(request.progress_id(), result.status());
  if (options_.on_restore) options_.on_restore(result);
  return result;
}

absl::StatusOr<RestoreCheckpointResponse> CheckpointManager::RestoreParts(
    int32_t shard_id, const std::vector<std::string>& parts) {
  const std::set<std::string> only(parts.begin(), parts.end());
  RestoreCheckpointRequest request;
  request.set_prefix("latest");
  for (const VariableDef& def : registry_->List("")) {
    for (const VariablePart& part : def.parts()) {
      if (part.shard_id() == shard_id && only.count(part.name()) > 0) {
        request.add_variables(def.name());
        break;
      }
    }
  }
  if (request.variables().empty()) {
    return absl::NotFoundError(absl::StrCat("restore of lost parts of shard ", shard_id,
                                            ": no registered variable has them"));
  }
  auto result = RestoreLocked(request, &only, shard_id);
  if (options_.on_restore) options_.on_restore(result);
  return result;
}

absl::StatusOr<std::string> CheckpointManager::ResolvePrefix(const std::string& dir_or_prefix) {
  RestoreCheckpointRequest request;
  request.set_prefix(dir_or_prefix);
  return ResolveRestorePrefix(request);
}

absl::StatusOr<CheckpointMeta> CheckpointManager::ReadMeta(const std::string& prefix) {
  const std::string path = checkpoint::MetaFilename(prefix);
  auto data = ReadWholeFile(fs_, path);
  if (!data.ok()) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", data.status().message()));
  }
  CheckpointMeta meta;
  if (!meta.ParseFromString(*data)) return absl::DataLossError(absl::StrCat(path, ": corrupt"));
  return meta;
}

absl::StatusOr<int64_t> CheckpointManager::ReadIntScalar(const std::string& name) {
  PSD_ASSIGN_OR_RETURN(VariableDef def, registry_->Lookup(name));
  if (def.parts_size() != 1 || def.shape().dims_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("variable ", name, " is not a scalar"));
  }
  if (def.dtype() != DT_INT64 && def.dtype() != DT_INT32) {
    return absl::InvalidArgumentError(absl::StrCat("variable ", name, " is not int64 or int32"));
  }
  PSD_ASSIGN_OR_RETURN(auto stub, access_.stub(def.parts(0).shard_id()));
  ReadRequest req;
  req.set_name(def.parts(0).name());
  ReadResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  PSD_RETURN_IF_ERROR(FromGrpcStatus(stub->Read(&ctx, req, &resp)));
  const std::string& content = resp.value().content();
  if (def.dtype() == DT_INT64 && content.size() == sizeof(int64_t)) {
    int64_t v;
    std::memcpy(&v, content.data(), sizeof(v));
    return v;
  }
  if (def.dtype() == DT_INT32 && content.size() == sizeof(int32_t)) {
    int32_t v;
    std::memcpy(&v, content.data(), sizeof(v));
    return v;
  }
  return absl::InternalError(absl::StrCat("variable ", name, ": unexpected value of ",
                                          content.size(), " bytes"));
}

absl::StatusOr<RestoreCheckpointResponse> CheckpointManager::RestoreLocked(
    const RestoreCheckpointRequest& request, const std::set<std::string>* only_parts,
    int32_t only_shard) {
  const absl::Time start = absl::Now();
  absl::MutexLock op(&op_mu_);
  {
    // A publication a kill interrupted completes first.
    const std::string& p = request.prefix();
    if (p.empty() || p == "latest") {
      if (!options_.dir.empty()) RecoverDir(options_.dir);
    } else {
      const std::string where = fs_->ListDir(p).ok() ? p : checkpoint::DirName(p);
      if (CheckUnderRoots(where, /*write=*/true, "").ok()) RecoverDir(where);
    }
  }
  PSD_ASSIGN_OR_RETURN(const std::string prefix, ResolveRestorePrefix(request));
  const uint64_t progress_id = request.progress_id();
  progress_.SetPrefix(progress_id, prefix);
  // The index only: names, dtypes and shapes are checked here, before any
  // shard reads data.
  PSD_ASSIGN_OR_RETURN(auto reader, BundleReader::Open(prefix, fs_));

  // (variable, checkpoint name)
  std::vector<std::pair<std::string, std::string>> targets;
  if (request.variables().empty() && request.name_map().empty()) {
    for (const VariableDef& def : registry_->List("")) targets.emplace_back(def.name(), def.name());
  } else {
    for (const auto& v : request.variables()) targets.emplace_back(v, v);
    std::map<std::string, std::string> sorted(request.name_map().begin(),
                                              request.name_map().end());
    for (const auto& [old_name, new_name] : sorted) targets.emplace_back(new_name, old_name);
  }
  if (targets.empty()) return absl::InvalidArgumentError("restore: no variables to restore");

  // Each part with the bytes it stages (its elements; strings count 0 here).
  std::map<int32_t, std::vector<std::pair<RestorePart, int64_t>>> by_shard;
  std::vector<std::pair<int32_t, std::string>> restored_parts;
  RestoreCheckpointResponse response;
  for (const auto& [var_name, ckpt_name] : targets) {
    PSD_ASSIGN_OR_RETURN(VariableDef def, registry_->Lookup(var_name));
    auto info = reader->GetTensorInfo(ckpt_name);
    if (!info.ok()) {
      return absl::NotFoundError(
          absl::StrCat("Key ", ckpt_name, " not found in checkpoint ", prefix));
    }
    if (info->dtype != def.dtype()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "restore: tensor ", ckpt_name, " in checkpoint ", prefix, " is ",
          checkpoint::BundleDataTypeName(info->dtype), ", variable ", var_name, " is ",
          checkpoint::BundleDataTypeName(def.dtype())));
    }
    const TensorShape full(std::vector<int64_t>(def.shape().dims().begin(),
                                                def.shape().dims().end()));
    if (def.partitioned() ? info->shape != full
                          : info->shape.num_elements() != full.num_elements()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "restore: tensor ", ckpt_name, " in checkpoint ", prefix, " has shape ",
          info->shape.ToString(), ", variable ", var_name, " has shape ", full.ToString()));
    }
    for (const VariablePart& part : def.parts()) {
      if (only_parts != nullptr &&
          (part.shard_id() != only_shard || only_parts->count(part.name()) == 0)) {
        continue;
      }
      RestorePart p;
      p.set_name(part.name());
      p.set_checkpoint_name(ckpt_name);
      p.set_dtype(def.dtype());
      p.set_sliced(def.partitioned());
      *p.mutable_full_shape() = def.shape().dims();
      *p.mutable_offset() = part.offset();
      *p.mutable_shape() = part.shape().dims();
      *p.mutable_initializer() = def.initializer();
      int64_t elements = 1;
      for (int64_t d : part.shape().dims()) elements *= d;
      const int64_t bytes = elements * static_cast<int64_t>(DataTypeSize(def.dtype()));
      progress_.AddTotal(progress_id, bytes);
      by_shard[part.shard_id()].emplace_back(std::move(p), bytes);
      restored_parts.emplace_back(part.shard_id(), part.name());
    }
    response.add_restored(var_name);
  }

  std::vector<int32_t> shards;
  for (const auto& [id, parts] : by_shard) shards.push_back(id);
  PSD_ASSIGN_OR_RETURN(const std::vector<std::shared_ptr<Shard::Stub>> stubs,
                       StubsFor(shards, absl::StrCat("restore of ", prefix)));
  const size_t n = shards.size();
  const uint64_t restore_id = RandomNonzeroId();
  auto finish_all = [&](bool commit) {
    return RunParallel(n, [&](size_t i) {
      FinishRestoreRequest req;
      req.set_restore_id(restore_id);
      req.set_commit(commit);
      FinishRestoreResponse resp;
      return Call(stubs[i].get(), &Shard::Stub::FinishRestore, req, &resp,
                  absl::Now() + options_.rpc_timeout);
    });
  };
  // Every shard stages its parts in batches of about progress_step_bytes,
  // so the progress moves; all batches share the restore id.
  std::vector<int64_t> staged(n, 0);
  auto st = RunParallel(n, [&](size_t i) -> absl::Status {
    const auto& parts = by_shard.at(shards[i]);
    for (size_t next = 0; next < parts.size();) {
      PrepareRestoreRequest req;
      req.set_restore_id(restore_id);
      req.set_prefix(prefix);
      int64_t batch = 0;
      while (next < parts.size() &&
             (req.parts_size() == 0 || options_.progress_step_bytes <= 0 ||
              batch + parts[next].second <= options_.progress_step_bytes)) {
        *req.add_parts() = parts[next].first;
        batch += parts[next].second;
        ++next;
      }
      PrepareRestoreResponse resp;
      PSD_RETURN_IF_ERROR(Call(stubs[i].get(), &Shard::Stub::PrepareRestore, req, &resp,
                               absl::Now() + options_.io_timeout));
      staged[i] += resp.staged_bytes();
      progress_.AddDone(progress_id, batch);
    }
    return absl::OkStatus();
  });
  // A DATA_LOSS or NOT_FOUND names the file and tensor; report it before
  // errors it may have caused elsewhere.
  absl::Status s;
  for (size_t i = 0; i < n && s.ok(); ++i) {
    if (st[i].code() == absl::StatusCode::kDataLoss) {
      s = absl::DataLossError(absl::StrCat("restore of ", prefix, ": shard ", shards[i], ": ",
                                           st[i].message()));
    }
  }
  if (s.ok()) s = FirstError(st, shards, absl::StrCat("restore of ", prefix));
  if (!s.ok()) {
    finish_all(/*commit=*/false);
    return s;
  }
  progress_.SetPhase(progress_id, "applying");
  PSD_RETURN_IF_ERROR(FirstError(finish_all(/*commit=*/true), shards,
                                 absl::StrCat("restore of ", prefix, ": applying")));
  if (access_.restored) access_.restored(restored_parts);
  int64_t bytes = 0;
  for (int64_t b : staged) bytes += b;
  response.set_prefix(prefix);
  response.set_bytes(bytes);
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return response;
}

absl::StatusOr<std::string> CheckpointManager::Latest(const std::string& dir,
                                                      const std::string& latest_filename) {
  const std::string d = DirOrDefault(dir);
  if (d.empty()) return absl::InvalidArgumentError("no checkpoint directory given or configured");
  PSD_RETURN_IF_ERROR(CheckLatestFilename(latest_filename, "latest checkpoint"));
  PSD_RETURN_IF_ERROR(CheckUnderRoots(d, /*write=*/false, "latest checkpoint"));
  return checkpoint::LatestCheckpoint(fs_, d, latest_filename);
}

absl::StatusOr<GetCheckpointStateResponse> CheckpointManager::GetState(
    const std::string& dir, const std::string& latest_filename) {
  const std::string d = DirOrDefault(dir);
  if (d.empty()) return absl::InvalidArgumentError("no checkpoint directory given or configured");
  PSD_RETURN_IF_ERROR(CheckLatestFilename(latest_filename, "checkpoint state"));
  PSD_RETURN_IF_ERROR(CheckUnderRoots(d, /*write=*/false, "checkpoint state"));
  GetCheckpointStateResponse response;
  auto state = checkpoint::GetCheckpointState(fs_, d, latest_filename);
  if (absl::IsNotFound(state.status())) return response;
  if (!state.ok()) return state.status();
  response.set_found(true);
  response.set_model_checkpoint_path(state->model_checkpoint_path());
  for (const auto& p : state->all_model_checkpoint_paths()) {
    response.add_all_model_checkpoint_paths(p);
  }
  return response;
}

absl::StatusOr<ListCheckpointsResponse> CheckpointManager::List(
    const std::string& dir, const std::string& latest_filename) {
  const std::string d = DirOrDefault(dir);
  if (d.empty()) return absl::InvalidArgumentError("no checkpoint directory given or configured");
  PSD_RETURN_IF_ERROR(CheckLatestFilename(latest_filename, "list of checkpoints"));
  PSD_RETURN_IF_ERROR(CheckUnderRoots(d, /*write=*/false, "list of checkpoints"));
  const std::string name =
      latest_filename.empty() ? checkpoint::kDefaultStateFilename : latest_filename;
  PSD_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_->ListDir(d));
  std::set<std::string> managed;
  std::set<std::string> kept;
  {
    // The retention states only (a running save holds op_mu_, not this).
    absl::MutexLock state(&state_mu_);
    for (bool saver_track : {false, true}) {
      SaverRetention* r = RetentionFor(d, name, saver_track, nullptr, false, Now());
      for (const auto& p : r->last_checkpoints()) managed.insert(p);
      for (const auto& p : r->kept_forever()) kept.insert(p);
    }
  }
  auto latest = checkpoint::LatestCheckpoint(fs_, d, name);
  ListCheckpointsResponse response;
  response.set_dir(d);
  std::vector<CheckpointInfo> infos;
  for (const std::string& n : names) {
    if (!absl::EndsWith(n, ".index") || checkpoint::IsTempFileName(n) ||
        checkpoint::IsStagingFileName(n)) {
      continue;
    }
    const std::string prefix = JoinPath(d, n.substr(0, n.size() - 6));
    CheckpointInfo info;
    info.set_prefix(prefix);
    int64_t bytes = 0;
    if (auto s = fs_->GetFileSize(checkpoint::IndexFilename(prefix)); s.ok()) bytes += *s;
    for (const auto& f : checkpoint::ListDataFiles(fs_, prefix)) {
      if (auto s = fs_->GetFileSize(f); s.ok()) bytes += *s;
    }
    info.set_bytes(bytes);
    CheckpointMeta meta;
    if (auto data = ReadWholeFile(fs_, checkpoint::MetaFilename(prefix)); data.ok()) {
      meta.ParseFromString(*data);
    }
    if (meta.has_global_step()) {
      info.set_global_step(meta.global_step());
    } else if (auto step = StepOf(prefix)) {
      info.set_global_step(*step);
    }
    info.set_saved_unix_micros(meta.saved_unix_micros());
    info.set_managed(managed.count(prefix) > 0);
    info.set_kept_forever(kept.count(prefix) > 0);
    info.set_latest(latest.ok() && *latest == prefix);
    infos.push_back(std::move(info));
  }
  std::sort(infos.begin(), infos.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    if (a.saved_unix_micros() != b.saved_unix_micros()) {
      return a.saved_unix_micros() < b.saved_unix_micros();
    }
    return a.prefix() < b.prefix();
  });
  for (auto& i : infos) *response.add_checkpoints() = std::move(i);
  return response;
}

CheckpointPolicy CheckpointManager::Policy(const CheckpointPolicy* set) {
  absl::MutexLock lock(&policy_mu_);
  if (set != nullptr) {
    if (set->has_max_to_keep()) policy_.max_to_keep = set->max_to_keep();
    if (set->has_keep_checkpoint_every_n_hours()) {
      policy_.keep_checkpoint_every_n_hours = set->keep_checkpoint_every_n_hours();
    }
  }
  if (set != nullptr && !options_.policy_file.empty()) {
    CheckpointPolicy persisted;
    persisted.set_max_to_keep(policy_.max_to_keep);
    persisted.set_keep_checkpoint_every_n_hours(policy_.keep_checkpoint_every_n_hours);
    absl::Status s = checkpoint::WriteFileAtomically(fs_, options_.policy_file,
                                                     persisted.SerializeAsString());
    if (!s.ok()) spdlog::warn("checkpoints: policy not persisted: {}", s.ToString());
  }
  CheckpointPolicy out;
  out.set_dir(options_.dir);
  out.set_max_to_keep(policy_.max_to_keep);
  out.set_keep_checkpoint_every_n_hours(policy_.keep_checkpoint_every_n_hours);
  return out;
}

}  // namespace psd
