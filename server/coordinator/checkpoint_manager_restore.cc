// CheckpointManager (checkpoint_manager.h): a restore, all or nothing. The
// checkpoint is resolved (a prefix, a directory, "latest") and its index
// checked against the variables before any shard reads data; every shard
// stages its parts, then all apply them or none do. Also the restore of a
// shard's lost parts.
#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/tensor_bundle.h"
#include "coordinator/checkpoint_manager.h"
#include "coordinator/checkpoint_manager_internal.h"
#include "psd/dtype.h"
#include "psd/parallel.h"
#include "psd/random_id.h"
#include "psd/status.h"

namespace psd {

using checkpoint::BundleReader;
using checkpoint_manager_internal::Call;
using checkpoint_manager_internal::FirstError;

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

namespace {

// The saved parts of embedding table `ckpt_name` in a checkpoint: NAME (one
// part) or NAME/part_K, each stored as SOURCE-keys, -values, -freqs and
// -versions (DeepRec's layout), in any number: restore rehashes their keys
// into the table's parts now. Checks dtypes and shapes against `def`.
absl::StatusOr<std::vector<std::string>> TableSources(const checkpoint::BundleReader& reader,
                                                      const std::string& ckpt_name,
                                                      const VariableDef& def,
                                                      const std::string& prefix) {
  std::vector<std::string> sources;
  const std::string part_prefix = absl::StrCat(ckpt_name, "/part_");
  for (const auto& info : reader.ListTensors()) {
    if (!absl::EndsWith(info.name, "-keys")) continue;
    const std::string source = info.name.substr(0, info.name.size() - 5);
    if (source == ckpt_name) {
      sources.push_back(source);
    } else if (absl::StartsWith(source, part_prefix)) {
      const std::string k = source.substr(part_prefix.size());
      if (!k.empty() && std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        sources.push_back(source);
      }
    }
  }
  if (sources.empty()) {
    return absl::NotFoundError(absl::StrCat("Key ", ckpt_name, "-keys (or ", ckpt_name,
                                            "/part_K-keys) not found in checkpoint ", prefix,
                                            ": no saved embedding table of that name"));
  }
  const int64_t dim = def.embedding().embedding_dim();
  for (const std::string& s : sources) {
    for (const char* suffix : {"-values", "-freqs", "-versions"}) {
      auto info = reader.GetTensorInfo(absl::StrCat(s, suffix));
      if (!info.ok()) {
        return absl::DataLossError(absl::StrCat("restore of embedding table ", def.name(), ": ",
                                                s, suffix, " is missing from checkpoint ", prefix,
                                                " beside ", s, "-keys"));
      }
    }
    auto values = *reader.GetTensorInfo(absl::StrCat(s, "-values"));
    if (values.dtype != def.dtype() || values.shape.rank() != 2 || values.shape.dim(1) != dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "restore: tensor ", s, "-values in checkpoint ", prefix, " is ",
          checkpoint::BundleDataTypeName(values.dtype), " of shape ", values.shape.ToString(),
          "; embedding table ", def.name(), " holds ", checkpoint::BundleDataTypeName(def.dtype()),
          " rows of ", dim));
    }
  }
  return sources;
}

}  // namespace

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

absl::StatusOr<RestoreCheckpointResponse> CheckpointManager::RestoreLocked(
    const RestoreCheckpointRequest& request, const std::set<std::string>* only_parts,
    int32_t only_shard) {
  const absl::Time start = absl::Now();
  absl::MutexLock op(&op_mu_);
  // Parts stay where they are while they are restored.
  absl::ReaderMutexLock placement(&placement_mu_);
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
  {
    // A variable named twice is restored once: from one checkpoint name.
    std::map<std::string, std::string> from;
    std::vector<std::pair<std::string, std::string>> once;
    for (auto& [var_name, ckpt_name] : targets) {
      auto [it, added] = from.emplace(var_name, ckpt_name);
      if (added) {
        once.emplace_back(std::move(var_name), std::move(ckpt_name));
      } else if (it->second != ckpt_name) {
        return absl::InvalidArgumentError(absl::StrCat(
            "restore: variable '", var_name, "' is named twice, to be restored from '", it->second,
            "' and from '", ckpt_name, "' of the checkpoint; nothing was restored"));
      }
    }
    targets.swap(once);
  }

  // Each part with the bytes it stages (its elements; strings count 0 here).
  std::map<int32_t, std::vector<std::pair<RestorePart, int64_t>>> by_shard;
  std::vector<std::pair<int32_t, std::string>> restored_parts;
  RestoreCheckpointResponse response;
  for (const auto& [var_name, ckpt_name] : targets) {
    PSD_ASSIGN_OR_RETURN(VariableDef def, registry_->Lookup(var_name));
    if (def.has_embedding()) {
      PSD_ASSIGN_OR_RETURN(std::vector<std::string> sources,
                           TableSources(*reader, ckpt_name, def, prefix));
      const std::string slot_of_table = def.embedding().slot_of();
      const VariableDef* primary = nullptr;
      VariableDef primary_def;
      if (!slot_of_table.empty()) {
        PSD_ASSIGN_OR_RETURN(primary_def, registry_->Lookup(slot_of_table));
        primary = &primary_def;
      }
      for (int k = 0; k < def.parts_size(); ++k) {
        const VariablePart& part = def.parts(k);
        if (only_parts != nullptr &&
            (part.shard_id() != only_shard || only_parts->count(part.name()) == 0)) {
          continue;
        }
        RestorePart p;
        p.set_name(part.name());
        p.set_checkpoint_name(ckpt_name);
        p.set_dtype(def.dtype());
        *p.mutable_shape() = part.shape().dims();
        *p.mutable_initializer() = def.initializer();
        *p.mutable_embedding() = def.embedding();
        if (primary != nullptr && k < primary->parts_size()) {
          p.mutable_embedding()->set_slot_of(primary->parts(k).name());
        }
        for (const std::string& s : sources) p.add_embedding_sources(s);
        p.set_embedding_part_index(k);
        p.set_embedding_num_parts(def.parts_size());
        // What it stages is not known before the shard reads the keys:
        // count the sources' bytes over the parts.
        int64_t bytes = 0;
        for (const std::string& s : sources) {
          auto values = reader->GetTensorInfo(absl::StrCat(s, "-values"));
          if (values.ok()) {
            bytes += values->shape.num_elements() * static_cast<int64_t>(DataTypeSize(def.dtype()));
          }
        }
        bytes /= std::max(1, def.parts_size());
        progress_.AddTotal(progress_id, bytes);
        by_shard[part.shard_id()].emplace_back(std::move(p), bytes);
        restored_parts.emplace_back(part.shard_id(), part.name());
      }
      response.add_restored(var_name);
      continue;
    }
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
    if (info->shape != full) {
      const std::string differs =
          absl::StrCat("restore: tensor ", ckpt_name, " in checkpoint ", prefix, " has shape ",
                       info->shape.ToString(), ", variable ", var_name, " has shape ",
                       full.ToString());
      if (!request.reshape()) {
        return absl::InvalidArgumentError(absl::StrCat(
            differs, " (Saver(reshape=True) restores a tensor of as many elements in the "
                     "variable's shape)"));
      }
      if (def.partitioned()) {
        return absl::InvalidArgumentError(absl::StrCat(
            differs, ": reshape restores unpartitioned variables only; a partitioned variable "
                     "needs a tensor of its own shape"));
      }
      if (info->shape.num_elements() != full.num_elements()) {
        return absl::InvalidArgumentError(absl::StrCat(
            differs, ": reshape needs as many elements (", info->shape.num_elements(), " vs ",
            full.num_elements(), ")"));
      }
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

}  // namespace psd
