#include "checkpoint/publish.h"

#include <cctype>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "checkpoint/checkpoint_state.h"
#include "checkpoint/tensor_bundle.h"
#include "psd/status.h"

namespace psd::checkpoint {
namespace {

constexpr absl::string_view kStagingMarker = ".psd-staging-";
constexpr absl::string_view kJournalSuffix = ".psd-publish";
constexpr absl::string_view kJournalHeader = "psd-publish-journal 1";
constexpr absl::string_view kJournalEnd = "end";

bool IsHex16(absl::string_view s) {
  if (s.size() != 16) return false;
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// The journal of a journal's temp file ("X.psd-publish.tempstate...").
bool IsJournalTempName(absl::string_view name) {
  if (!IsTempFileName(name)) return false;
  const size_t pos = name.rfind(".tempstate");
  return IsJournalFileName(name.substr(0, pos));
}

}  // namespace

std::string StagingPrefix(absl::string_view prefix, uint64_t save_id) {
  return absl::StrFormat("%s%s%016x", prefix, kStagingMarker, save_id);
}

bool IsStagingFileName(absl::string_view name) {
  for (size_t pos = name.find(kStagingMarker); pos != absl::string_view::npos;
       pos = name.find(kStagingMarker, pos + 1)) {
    const absl::string_view rest = name.substr(pos + kStagingMarker.size());
    if (rest.size() >= 16 && IsHex16(rest.substr(0, 16)) &&
        (rest.size() == 16 || rest[16] == '.')) {
      return true;
    }
  }
  return false;
}

std::string JournalFilename(absl::string_view prefix) {
  return absl::StrCat(prefix, kJournalSuffix);
}

bool IsJournalFileName(absl::string_view name) {
  return name.size() > kJournalSuffix.size() && absl::EndsWith(name, kJournalSuffix);
}

std::string EncodeJournal(const PublishPlan& plan) {
  std::string out = absl::StrCat(kJournalHeader, "\n");
  for (const auto& [from, to] : plan.renames) {
    absl::StrAppend(&out, "rename \"", absl::CEscape(from), "\" \"", absl::CEscape(to), "\"\n");
  }
  for (const auto& d : plan.deletes) absl::StrAppend(&out, "delete \"", absl::CEscape(d), "\"\n");
  absl::StrAppend(&out, kJournalEnd, "\n");
  return out;
}

absl::StatusOr<PublishPlan> ParseJournal(absl::string_view text, const std::string& dir) {
  PublishPlan plan;
  plan.dir = dir;
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("publish journal in ", dir, ": ", why));
  };
  if (lines.size() < 3 || lines[0] != kJournalHeader) return bad("unknown header");
  if (!lines.back().empty() || lines[lines.size() - 2] != kJournalEnd) return bad("incomplete");
  // One quoted, C-escaped base name.
  auto name = [&](absl::string_view* rest, std::string* out) -> bool {
    if (rest->size() < 2 || (*rest)[0] != '"') return false;
    size_t close = 1;
    while (close < rest->size() && (*rest)[close] != '"') close += (*rest)[close] == '\\' ? 2 : 1;
    if (close >= rest->size()) return false;
    if (!absl::CUnescape(rest->substr(1, close - 1), out)) return false;
    if (out->empty() || out->find('/') != std::string::npos || *out == "." || *out == "..") {
      return false;
    }
    rest->remove_prefix(close + 1);
    return true;
  };
  for (size_t i = 1; i + 2 < lines.size(); ++i) {
    absl::string_view line = lines[i];
    if (absl::ConsumePrefix(&line, "rename ")) {
      std::string from, to;
      if (!name(&line, &from) || !absl::ConsumePrefix(&line, " ") || !name(&line, &to) ||
          !line.empty()) {
        return bad(absl::StrCat("bad line ", i + 1));
      }
      plan.renames.emplace_back(std::move(from), std::move(to));
    } else if (absl::ConsumePrefix(&line, "delete ")) {
      std::string d;
      if (!name(&line, &d) || !line.empty()) return bad(absl::StrCat("bad line ", i + 1));
      plan.deletes.push_back(std::move(d));
    } else {
      return bad(absl::StrCat("bad line ", i + 1));
    }
  }
  return plan;
}

absl::StatusOr<PublishPlan> MakePublishPlan(FileSystem* fs, const std::string& prefix,
                                            const std::string& staging, int num_shards) {
  if (DirName(prefix) != DirName(staging)) {
    return absl::InvalidArgumentError(absl::StrCat("staging ", staging, " is not beside ", prefix));
  }
  PublishPlan plan;
  plan.dir = DirName(prefix);
  std::set<std::string> new_data;
  for (int k = 0; k < num_shards; ++k) {
    const std::string to = BaseName(DataFilename(prefix, k, num_shards));
    plan.renames.emplace_back(BaseName(DataFilename(staging, k, num_shards)), to);
    new_data.insert(to);
  }
  plan.renames.emplace_back(BaseName(MetaFilename(staging)), BaseName(MetaFilename(prefix)));
  plan.renames.emplace_back(BaseName(IndexFilename(staging)), BaseName(IndexFilename(prefix)));
  for (const std::string& old : ListDataFiles(fs, prefix)) {
    if (new_data.count(BaseName(old)) == 0) plan.deletes.push_back(BaseName(old));
  }
  return plan;
}

namespace {

// Renames and deletions of a committed plan; idempotent, so recovery can run
// it again after a kill at any step.
absl::Status ApplyPlan(FileSystem* fs, const PublishPlan& plan) {
  for (const auto& [from_name, to_name] : plan.renames) {
    const std::string from = JoinPath(plan.dir, from_name);
    const std::string to = JoinPath(plan.dir, to_name);
    absl::Status exists = fs->FileExists(from);
    if (absl::IsNotFound(exists)) {
      // Renamed before a crash, if its target is there.
      absl::Status target = fs->FileExists(to);
      if (target.ok()) continue;
      return absl::DataLossError(
          absl::StrCat("publish of ", to, ": neither ", from, " nor its target exists"));
    }
    PSD_RETURN_IF_ERROR(exists);
    CrashPoint("publish.rename");
    PSD_RETURN_IF_ERROR(fs->RenameFile(from, to));
  }
  for (const std::string& name : plan.deletes) {
    absl::Status s = fs->DeleteFile(JoinPath(plan.dir, name));
    if (!s.ok() && !absl::IsNotFound(s)) return s;
  }
  return fs->SyncDir(plan.dir);
}

absl::Status FinishJournal(FileSystem* fs, const std::string& journal, const std::string& dir) {
  absl::Status s = fs->DeleteFile(journal);
  if (!s.ok() && !absl::IsNotFound(s)) return s;
  return fs->SyncDir(dir);
}

}  // namespace

absl::Status PublishStaged(FileSystem* fs, const std::string& prefix, const std::string& staging,
                           int num_shards, bool* committed) {
  *committed = false;
  PSD_ASSIGN_OR_RETURN(PublishPlan plan, MakePublishPlan(fs, prefix, staging, num_shards));
  const std::string journal = JournalFilename(prefix);
  absl::Status s = WriteFileAtomically(fs, journal, EncodeJournal(plan));
  // A journal that reached its name (only its directory fsync failed)
  // commits all the same: recovery would roll it forward.
  *committed = s.ok() || fs->FileExists(journal).ok();
  if (!*committed) return s;
  CrashPoint("publish.after_journal");
  if (s.ok()) s = ApplyPlan(fs, plan);
  if (s.ok()) s = FinishJournal(fs, journal, plan.dir);
  return s;
}

int DeleteStagedFiles(FileSystem* fs, const std::string& staging) {
  const std::string dir = DirName(staging);
  const std::string base = BaseName(staging) + ".";
  auto names = fs->ListDir(dir);
  if (!names.ok()) return 0;
  int deleted = 0;
  for (const std::string& n : *names) {
    if (absl::StartsWith(n, base) && fs->DeleteFile(JoinPath(dir, n)).ok()) ++deleted;
  }
  if (deleted > 0) (void)fs->SyncDir(dir);
  return deleted;
}

RecoveryStats RecoverCheckpointDir(FileSystem* fs, const std::string& dir) {
  RecoveryStats stats;
  auto names = fs->ListDir(dir);
  if (!names.ok()) return stats;
  // Staging files a journal that could not be applied still needs.
  std::set<std::string> keep;
  bool changed = false;
  for (const std::string& n : *names) {
    if (!IsJournalFileName(n)) continue;
    const std::string journal = JoinPath(dir, n);
    absl::Status s = [&]() -> absl::Status {
      PSD_ASSIGN_OR_RETURN(uint64_t size, fs->GetFileSize(journal));
      PSD_ASSIGN_OR_RETURN(auto file, fs->NewRandomAccessFile(journal));
      std::string data(size, '\0');
      absl::string_view got;
      PSD_RETURN_IF_ERROR(file->Read(0, size, data.data(), &got));
      PSD_ASSIGN_OR_RETURN(PublishPlan plan, ParseJournal(got, dir));
      for (const auto& r : plan.renames) keep.insert(r.first);
      PSD_RETURN_IF_ERROR(ApplyPlan(fs, plan));
      for (const auto& r : plan.renames) keep.erase(r.first);
      return FinishJournal(fs, journal, dir);
    }();
    if (s.ok()) {
      ++stats.journals_applied;
    } else {
      ++stats.journals_failed;
      stats.errors.push_back(absl::StrCat(journal, ": ", s.message()));
    }
  }
  // Listed again: the journals moved files.
  names = fs->ListDir(dir);
  if (!names.ok()) return stats;
  for (const std::string& n : *names) {
    if (!(IsStagingFileName(n) || IsJournalTempName(n)) || keep.count(n) > 0) continue;
    if (fs->DeleteFile(JoinPath(dir, n)).ok()) {
      ++stats.staging_deleted;
      changed = true;
    }
  }
  if (changed) (void)fs->SyncDir(dir);
  return stats;
}

}  // namespace psd::checkpoint
