#include "checkpoint/checkpoint_state.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/tensor_bundle.h"
#include "google/protobuf/text_format.h"
#include "psd/status.h"

namespace psd::checkpoint {
namespace {

bool IsAbsolute(absl::string_view path) { return !path.empty() && path[0] == '/'; }

absl::StatusOr<std::string> ReadWholeFile(FileSystem* fs, const std::string& path) {
  PSD_ASSIGN_OR_RETURN(uint64_t size, fs->GetFileSize(path));
  PSD_ASSIGN_OR_RETURN(auto file, fs->NewRandomAccessFile(path));
  std::string out(size, '\0');
  absl::string_view got;
  PSD_RETURN_IF_ERROR(file->Read(0, size, out.data(), &got));
  if (got.data() != out.data()) out.assign(got.data(), got.size());
  out.resize(got.size());
  return out;
}

// Python's repr of a float: the shortest text that reads back the same.
std::string ShortestDouble(double v) {
  for (int precision = 1; precision <= 17; ++precision) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) {
      std::string s(buf);
      if (s.find_first_of(".eE") == std::string::npos && s.find_first_of("ni") == std::string::npos)
        s += ".0";
      return s;
    }
  }
  return absl::StrCat(v);
}

}  // namespace

std::string CheckpointStateToText(const tf::CheckpointState& state) {
  std::string out;
  auto str = [&](const char* field, const std::string& v) {
    absl::StrAppend(&out, field, ": \"", absl::CEscape(v), "\"\n");
  };
  if (!state.model_checkpoint_path().empty()) {
    str("model_checkpoint_path", state.model_checkpoint_path());
  }
  for (const auto& p : state.all_model_checkpoint_paths()) str("all_model_checkpoint_paths", p);
  for (double t : state.all_model_checkpoint_timestamps()) {
    absl::StrAppend(&out, "all_model_checkpoint_timestamps: ", ShortestDouble(t), "\n");
  }
  if (state.last_preserved_timestamp() != 0) {
    absl::StrAppend(&out, "last_preserved_timestamp: ",
                    ShortestDouble(state.last_preserved_timestamp()), "\n");
  }
  return out;
}

absl::StatusOr<tf::CheckpointState> ParseCheckpointState(absl::string_view text,
                                                         absl::string_view what) {
  tf::CheckpointState state;
  if (!google::protobuf::TextFormat::ParseFromString(std::string(text), &state)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a CheckpointState in protobuf text format"));
  }
  return state;
}

tf::CheckpointState GenerateCheckpointState(absl::string_view save_dir,
                                            absl::string_view model_path,
                                            std::vector<std::string> all_paths) {
  if (all_paths.empty() || all_paths.back() != model_path) {
    all_paths.emplace_back(model_path);
  }
  std::string model(model_path);
  if (!IsAbsolute(save_dir)) {
    const std::string dir_slash =
        absl::EndsWith(save_dir, "/") ? std::string(save_dir) : absl::StrCat(save_dir, "/");
    auto rel = [&](std::string* p) {
      if (!IsAbsolute(*p) && absl::StartsWith(*p, dir_slash)) *p = p->substr(dir_slash.size());
    };
    rel(&model);
    for (auto& p : all_paths) rel(&p);
  }
  tf::CheckpointState state;
  state.set_model_checkpoint_path(model);
  for (auto& p : all_paths) state.add_all_model_checkpoint_paths(std::move(p));
  return state;
}

absl::Status WriteCheckpointState(FileSystem* fs, const std::string& dir,
                                  const std::string& model_path,
                                  const std::vector<std::string>& all_paths,
                                  const std::string& latest_filename) {
  const std::string name = latest_filename.empty() ? kDefaultStateFilename : latest_filename;
  if (name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'latest_filename' should not contain path components: ", name));
  }
  const std::string path = JoinPath(dir, name);
  if (path == model_path) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Save path '", model_path, "' conflicts with path used for checkpoint state.  Please use "
        "a different save path."));
  }
  const tf::CheckpointState state = GenerateCheckpointState(dir, model_path, all_paths);
  return WriteFileAtomically(fs, path, CheckpointStateToText(state));
}

absl::StatusOr<tf::CheckpointState> GetCheckpointState(FileSystem* fs, const std::string& dir,
                                                       const std::string& latest_filename) {
  const std::string path =
      JoinPath(dir, latest_filename.empty() ? kDefaultStateFilename : latest_filename);
  absl::Status exists = fs->FileExists(path);
  if (!exists.ok()) return exists;
  PSD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(fs, path));
  PSD_ASSIGN_OR_RETURN(tf::CheckpointState state, ParseCheckpointState(text, path));
  if (state.model_checkpoint_path().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Invalid checkpoint state loaded from ", path));
  }
  auto join = [&](std::string* p) {
    if (!IsAbsolute(*p)) *p = JoinPath(dir, *p);
  };
  join(state.mutable_model_checkpoint_path());
  for (auto& p : *state.mutable_all_model_checkpoint_paths()) join(&p);
  return state;
}

absl::StatusOr<std::string> LatestCheckpoint(FileSystem* fs, const std::string& dir,
                                             const std::string& latest_filename) {
  PSD_ASSIGN_OR_RETURN(tf::CheckpointState state, GetCheckpointState(fs, dir, latest_filename));
  const std::string& p = state.model_checkpoint_path();
  if (fs->FileExists(IndexFilename(p)).ok() || fs->FileExists(p).ok()) return p;
  return absl::NotFoundError(absl::StrCat("Couldn't match files for checkpoint ", p));
}

std::vector<std::string> ListDataFiles(FileSystem* fs, const std::string& prefix) {
  std::vector<std::string> out;
  const std::string dir = DirName(prefix);
  const std::string base = BaseName(prefix) + ".data-";
  auto names = fs->ListDir(dir);
  if (!names.ok()) return out;
  for (const std::string& n : *names) {
    if (!absl::StartsWith(n, base)) continue;
    const std::string tail = n.substr(base.size());  // 00000-of-00002
    bool ok = tail.size() == 14 && tail.substr(5, 4) == "-of-";
    for (size_t i : {0, 1, 2, 3, 4, 9, 10, 11, 12, 13}) {
      ok = ok && std::isdigit(static_cast<unsigned char>(tail[i]));
    }
    if (ok) out.push_back(JoinPath(dir, n));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string MetaFilename(absl::string_view prefix) { return absl::StrCat(prefix, ".psd-meta"); }

std::string RetentionStateFilename(const std::string& dir, const std::string& latest_filename) {
  return JoinPath(dir, absl::StrCat(".", latest_filename.empty() ? kDefaultStateFilename
                                                                 : latest_filename,
                                    ".psd-retention"));
}

void DeleteCheckpointFiles(FileSystem* fs, const std::string& prefix) {
  (void)fs->DeleteFile(IndexFilename(prefix));
  for (const std::string& f : ListDataFiles(fs, prefix)) (void)fs->DeleteFile(f);
  (void)fs->DeleteFile(absl::StrCat(prefix, ".meta"));
  (void)fs->DeleteFile(MetaFilename(prefix));
  (void)fs->SyncDir(DirName(prefix));
}

SaverRetention::SaverRetention(const Policy& policy, double now)
    : policy_(policy), next_checkpoint_time_(now + policy.keep_checkpoint_every_n_hours * 3600) {}

SaverRetention SaverRetention::FromState(const Policy& policy, const SaverRetentionState& state) {
  SaverRetention r;
  r.policy_ = policy;
  for (const auto& e : state.last_checkpoints()) r.last_.emplace_back(e.path(), e.time());
  for (const auto& e : state.to_be_deleted()) r.to_delete_.emplace_back(e.path(), e.time());
  r.next_checkpoint_time_ = state.next_checkpoint_time();
  r.kept_forever_.assign(state.kept_forever().begin(), state.kept_forever().end());
  return r;
}

SaverRetentionState SaverRetention::ToState() const {
  SaverRetentionState s;
  for (const auto& [p, t] : last_) {
    auto* e = s.add_last_checkpoints();
    e->set_path(p);
    e->set_time(t);
  }
  for (const auto& [p, t] : to_delete_) {
    auto* e = s.add_to_be_deleted();
    e->set_path(p);
    e->set_time(t);
  }
  s.set_next_checkpoint_time(next_checkpoint_time_);
  for (const auto& p : kept_forever_) s.add_kept_forever(p);
  return s;
}

void SaverRetention::RecordCheckpoint(const std::string& path, double now) {
  if (policy_.max_to_keep <= 0) return;
  last_.erase(std::remove_if(last_.begin(), last_.end(),
                             [&](const auto& e) { return e.first == path; }),
              last_.end());
  last_.emplace_back(path, now);
  // A lowered max_to_keep is applied as TensorFlow would with a new saver:
  // one pop per save, so several saves catch up.
  if (static_cast<int>(last_.size()) > policy_.max_to_keep) {
    to_delete_.push_back(last_.front());
    last_.erase(last_.begin());
  }
}

std::optional<std::string> SaverRetention::NextDeletion() {
  if (to_delete_.empty()) return std::nullopt;
  auto [path, time] = to_delete_.front();
  to_delete_.pop_front();
  if (time > next_checkpoint_time_) {
    next_checkpoint_time_ += policy_.keep_checkpoint_every_n_hours * 3600;
    if (std::find(kept_forever_.begin(), kept_forever_.end(), path) == kept_forever_.end()) {
      kept_forever_.push_back(path);
    }
    return std::nullopt;
  }
  // A path deleted now is no longer kept forever (it was re-saved since).
  kept_forever_.erase(std::remove(kept_forever_.begin(), kept_forever_.end(), path),
                      kept_forever_.end());
  return path;
}

void SaverRetention::SetLastCheckpoints(const std::vector<std::string>& paths) {
  std::vector<std::pair<std::string, double>> list;
  for (const auto& p : paths) list.emplace_back(p, std::numeric_limits<double>::infinity());
  SetLastCheckpointsWithTime(list);
}

void SaverRetention::SetLastCheckpointsWithTime(
    const std::vector<std::pair<std::string, double>>& list) {
  last_ = list;
  for (const auto& [path, time] : list) {
    kept_forever_.erase(std::remove(kept_forever_.begin(), kept_forever_.end(), path),
                        kept_forever_.end());
  }
}

std::vector<std::string> SaverRetention::last_checkpoints() const {
  std::vector<std::string> out;
  for (const auto& e : last_) out.push_back(e.first);
  return out;
}

}  // namespace psd::checkpoint
