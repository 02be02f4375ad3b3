// CheckpointManager (checkpoint_manager.h): the progress board, the roots
// and recovery of checkpoint directories, the retention states, reads
// (meta, a scalar variable), the listings (latest, state, list) and the
// policy. A save is in checkpoint_manager_save.cc, a restore in
// checkpoint_manager_restore.cc.
#include "coordinator/checkpoint_manager.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "checkpoint/publish.h"
#include "checkpoint/tensor_bundle.h"
#include "coordinator/checkpoint_manager_internal.h"
#include "grpcpp/grpcpp.h"
#include "psd/dtype.h"
#include "psd/grpc_status.h"
#include "psd/serialize.h"
#include "psd/status.h"
#include "spdlog/spdlog.h"

namespace psd {

using checkpoint::JoinPath;
using checkpoint::SaverRetention;
using checkpoint_manager_internal::RetentionPath;

namespace {

// "model.ckpt-123" -> 123.
std::optional<int64_t> StepOf(const std::string& prefix) {
  const size_t dash = prefix.rfind('-');
  if (dash == std::string::npos || prefix.find('/', dash) != std::string::npos) return std::nullopt;
  int64_t step;
  if (!absl::SimpleAtoi(prefix.substr(dash + 1), &step)) return std::nullopt;
  return step;
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

std::vector<CheckpointProgressResponse> CheckpointProgressBoard::Running() const {
  std::vector<CheckpointProgressResponse> out;
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (const auto& [id, e] : entries_) {
    if (e.state.finished()) continue;
    out.push_back(e.state);
    out.back().set_seconds(absl::ToDoubleSeconds(now - e.started));
  }
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

absl::StatusOr<std::string> CheckpointManager::ListedDir(const std::string& dir,
                                                         const std::string& latest_filename,
                                                         const std::string& what) const {
  const std::string d = DirOrDefault(dir);
  if (d.empty()) return absl::InvalidArgumentError("no checkpoint directory given or configured");
  PSD_RETURN_IF_ERROR(CheckLatestFilename(latest_filename, what));
  PSD_RETURN_IF_ERROR(CheckUnderRoots(d, /*write=*/false, what));
  return d;
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

absl::StatusOr<std::string> CheckpointManager::Latest(const std::string& dir,
                                                      const std::string& latest_filename) {
  PSD_ASSIGN_OR_RETURN(const std::string d, ListedDir(dir, latest_filename, "latest checkpoint"));
  return checkpoint::LatestCheckpoint(fs_, d, latest_filename);
}

absl::Status CheckpointManager::UpdateState(const UpdateCheckpointStateRequest& request) {
  const std::string d = DirOrDefault(request.dir());
  if (d.empty()) return absl::InvalidArgumentError("no checkpoint directory given or configured");
  PSD_RETURN_IF_ERROR(CheckLatestFilename(request.latest_filename(), "update_checkpoint_state"));
  PSD_RETURN_IF_ERROR(CheckUnderRoots(d, /*write=*/true, "update_checkpoint_state"));
  if (request.model_checkpoint_path().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("update_checkpoint_state in ", d, ": model_checkpoint_path is empty"));
  }
  // Only checkpoints that exist under the roots: `latest` of a directory
  // (the cluster's included, which restores of lost parts read) never
  // points at a missing or foreign checkpoint.
  std::vector<std::string> named(request.all_model_checkpoint_paths().begin(),
                                 request.all_model_checkpoint_paths().end());
  named.push_back(request.model_checkpoint_path());
  for (const std::string& p : named) {
    const std::string prefix = absl::StartsWith(p, "/") ? p : checkpoint::JoinPath(d, p);
    PSD_RETURN_IF_ERROR(CheckUnderRoots(checkpoint::DirName(prefix), /*write=*/false,
                                        absl::StrCat("update_checkpoint_state: ", p)));
    if (!fs_->FileExists(checkpoint::IndexFilename(prefix)).ok()) {
      return absl::NotFoundError(absl::StrCat("update_checkpoint_state in ", d,
                                              ": no checkpoint at ", p, " (", prefix,
                                              ".index does not exist); nothing was changed"));
    }
  }
  // Saves and restores write the state file too: one writer at a time.
  absl::MutexLock op(&op_mu_);
  return checkpoint::WriteCheckpointState(
      fs_, d, request.model_checkpoint_path(),
      std::vector<std::string>(request.all_model_checkpoint_paths().begin(),
                               request.all_model_checkpoint_paths().end()),
      request.latest_filename());
}

absl::Status CheckpointManager::SetLastCheckpoints(const SetLastCheckpointsRequest& request) {
  const std::string what = "set_last_checkpoints";
  PSD_RETURN_IF_ERROR(CheckLatestFilename(request.latest_filename(), what));
  const std::string name = request.latest_filename().empty() ? checkpoint::kDefaultStateFilename
                                                             : request.latest_filename();
  // Directory -> its new list, oldest first.
  std::map<std::string, std::vector<std::pair<std::string, double>>> lists;
  for (const std::string& dir : request.dirs()) {
    const std::string d = DirOrDefault(dir);
    if (d.empty()) {
      return absl::InvalidArgumentError(
          "set_last_checkpoints: no checkpoint directory given or configured");
    }
    // The list decides what later saves delete: the writable roots only.
    PSD_RETURN_IF_ERROR(CheckUnderRoots(d, /*write=*/true, what));
    lists[d];
  }
  for (const CheckpointWithTime& c : request.checkpoints()) {
    const std::string& p = c.path();
    if (!absl::StartsWith(p, "/") || p.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "set_last_checkpoints: '", p,
          "' is not an absolute checkpoint prefix (paths are on the coordinator's side); "
          "nothing was changed"));
    }
    if (std::isnan(c.time())) {
      return absl::InvalidArgumentError(
          absl::StrCat("set_last_checkpoints: the time of ", p, " is NaN; nothing was changed"));
    }
    PSD_RETURN_IF_ERROR(
        CheckUnderRoots(checkpoint::DirName(p), /*write=*/true, absl::StrCat(what, ": ", p)));
  }
  // Saves update the lists too, and delete what leaves them: one at a time,
  // and the checkpoints are looked for under the same lock.
  absl::MutexLock op(&op_mu_);
  for (const CheckpointWithTime& c : request.checkpoints()) {
    if (!fs_->FileExists(checkpoint::IndexFilename(c.path())).ok()) {
      return absl::NotFoundError(absl::StrCat("set_last_checkpoints: no checkpoint at ", c.path(),
                                              " (", checkpoint::IndexFilename(c.path()),
                                              " does not exist); nothing was changed"));
    }
    lists[checkpoint::DirName(c.path())].emplace_back(c.path(), c.time());
  }
  // Each new state is built apart and persisted before it replaces the
  // one in memory, so a failure leaves that directory as it was.
  for (const auto& [d, list] : lists) {
    SaverRetention updated(CurrentPolicy(), Now());
    {
      absl::MutexLock state(&state_mu_);
      updated = *RetentionFor(d, name, request.own_policy(), nullptr, false, Now());
    }
    updated.SetLastCheckpointsWithTime(list);
    const std::string path = RetentionPath(d, name, request.own_policy());
    PSD_ASSIGN_OR_RETURN(const std::string bytes, SerializeChecked(updated.ToState(), path));
    if (absl::Status s = checkpoint::WriteFileAtomically(fs_, path, bytes); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("set_last_checkpoints in ", d,
                                                 ": persisting the retention state failed "
                                                 "(directories before it in order were set): ",
                                                 s.message()));
    }
    absl::MutexLock state(&state_mu_);
    retention_.insert_or_assign(std::make_tuple(d, name, request.own_policy()), std::move(updated));
  }
  return absl::OkStatus();
}

absl::StatusOr<GetCheckpointStateResponse> CheckpointManager::GetState(
    const std::string& dir, const std::string& latest_filename) {
  PSD_ASSIGN_OR_RETURN(const std::string d, ListedDir(dir, latest_filename, "checkpoint state"));
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
  PSD_ASSIGN_OR_RETURN(const std::string d, ListedDir(dir, latest_filename, "list of checkpoints"));
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

absl::Status CheckpointManager::CheckRetention(std::optional<int64_t> max_to_keep,
                                               std::optional<double> hours,
                                               absl::string_view what) {
  if (max_to_keep.has_value() && *max_to_keep < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": max_to_keep must be >= 0 (0 keeps every checkpoint), got ", *max_to_keep));
  }
  if (hours.has_value() && (!(*hours > 0) || !std::isfinite(*hours))) {
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     ": keep_checkpoint_every_n_hours must be a positive number of hours, "
                     "got ",
                     *hours));
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckpointPolicy> CheckpointManager::Policy(const CheckpointPolicy* set) {
  if (set != nullptr) {
    PSD_RETURN_IF_ERROR(CheckRetention(
        set->has_max_to_keep() ? std::optional<int64_t>(set->max_to_keep()) : std::nullopt,
        set->has_keep_checkpoint_every_n_hours()
            ? std::optional<double>(set->keep_checkpoint_every_n_hours())
            : std::nullopt,
        "checkpoint policy"));
  }
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
