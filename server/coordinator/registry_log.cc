#include "coordinator/registry_log.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "psd/crc32c.h"
#include "psd/status.h"

namespace psd {
namespace {

using checkpoint::FileSystem;
using checkpoint::WritableFile;

constexpr absl::string_view kLogMagic = "PSDRLOG1";
constexpr absl::string_view kSnapshotMagic = "PSDRSNP1";
constexpr size_t kFrameHeader = 8;

void PutFixed32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

absl::StatusOr<std::string> ReadFile(FileSystem* fs, const std::string& path, bool* exists) {
  *exists = false;
  auto file = fs->NewRandomAccessFile(path);
  if (absl::IsNotFound(file.status())) return std::string();
  if (!file.ok()) return file.status();
  *exists = true;
  std::string data;
  std::string scratch(1 << 16, '\0');
  while (true) {
    absl::string_view got;
    PSD_RETURN_IF_ERROR((*file)->Read(data.size(), scratch.size(), scratch.data(), &got));
    if (got.empty()) break;
    data.append(got.data(), got.size());
  }
  return data;
}

// Temp files an interrupted publication left: ours (checkpoint::TempFileName)
// and the fixed names earlier versions used.
bool IsLeftoverTemp(absl::string_view name) {
  return absl::StartsWith(name, "registry.") &&
         (checkpoint::IsTempFileName(name) || absl::EndsWith(name, ".tmp"));
}

struct Frame {
  absl::string_view payload;
  size_t end = 0;
};

enum class FrameResult { kOk, kEnd, kTorn, kCorrupt };

// Reads the frame at `offset`. kCorrupt is only returned when a good frame
// follows the bad one; otherwise the bad frames are a torn tail.
FrameResult NextFrame(absl::string_view data, size_t offset, Frame* frame) {
  if (offset == data.size()) return FrameResult::kEnd;
  if (data.size() - offset < kFrameHeader) return FrameResult::kTorn;
  const uint32_t length = GetFixed32(data.data() + offset);
  const uint32_t crc = GetFixed32(data.data() + offset + 4);
  if (data.size() - offset - kFrameHeader < length) return FrameResult::kTorn;
  frame->payload = data.substr(offset + kFrameHeader, length);
  frame->end = offset + kFrameHeader + length;
  if (crc32c::Mask(crc32c::Value(frame->payload)) != crc) {
    // Bad frames at the end of the file are what a crash during unsynced
    // appends leaves; a bad frame followed by a good one was acknowledged
    // once and then damaged.
    size_t next = frame->end;
    while (true) {
      Frame later;
      FrameResult r = NextFrame(data, next, &later);
      if (r == FrameResult::kOk) return FrameResult::kCorrupt;
      if (r != FrameResult::kCorrupt) return FrameResult::kTorn;
      next = later.end;
    }
  }
  return FrameResult::kOk;
}

absl::Status ReadSnapshot(FileSystem* fs, const std::string& path, RegistrySnapshot* snapshot) {
  bool exists = false;
  PSD_ASSIGN_OR_RETURN(std::string data, ReadFile(fs, path, &exists));
  if (!exists) return absl::OkStatus();
  Frame frame;
  if (data.size() < kSnapshotMagic.size() ||
      absl::string_view(data).substr(0, kSnapshotMagic.size()) != kSnapshotMagic ||
      NextFrame(data, kSnapshotMagic.size(), &frame) != FrameResult::kOk ||
      frame.end != data.size() ||
      !snapshot->ParseFromArray(frame.payload.data(), static_cast<int>(frame.payload.size()))) {
    return absl::DataLossError(absl::StrCat("registry snapshot ", path, " is corrupt"));
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

std::string Frame(absl::string_view payload) {
  std::string out;
  out.reserve(kFrameHeader + payload.size());
  PutFixed32(&out, static_cast<uint32_t>(payload.size()));
  PutFixed32(&out, crc32c::Mask(crc32c::Value(payload)));
  out.append(payload.data(), payload.size());
  return out;
}

}  // namespace internal

std::string RegistryLog::LogPath(const std::string& dir) { return dir + "/registry.log"; }
std::string RegistryLog::SnapshotPath(const std::string& dir) { return dir + "/registry.snapshot"; }

absl::StatusOr<std::unique_ptr<RegistryLog>> RegistryLog::Open(const std::string& dir,
                                                               Recovered* recovered,
                                                               int64_t max_state_bytes,
                                                               FileSystem* fs) {
  if (dir.empty()) return absl::InvalidArgumentError("registry state directory is empty");
  if (fs == nullptr) fs = FileSystem::Default();
  PSD_RETURN_IF_ERROR(fs->CreateDir(dir));
  PSD_ASSIGN_OR_RETURN(std::vector<std::string> names, fs->ListDir(dir));
  for (const std::string& name : names) {
    if (!IsLeftoverTemp(name)) continue;
    absl::Status s = fs->DeleteFile(checkpoint::JoinPath(dir, name));
    if (!s.ok() && !absl::IsNotFound(s)) return s;
  }
  *recovered = Recovered();
  PSD_RETURN_IF_ERROR(ReadSnapshot(fs, SnapshotPath(dir), &recovered->snapshot));

  const std::string log_path = LogPath(dir);
  bool exists = false;
  PSD_ASSIGN_OR_RETURN(std::string data, ReadFile(fs, log_path, &exists));
  // A log shorter than its magic was being created when the process died.
  if (data.size() < kLogMagic.size()) {
    PSD_RETURN_IF_ERROR(checkpoint::WriteFileAtomically(fs, log_path, kLogMagic));
    data = std::string(kLogMagic);
  } else if (absl::string_view(data).substr(0, kLogMagic.size()) != kLogMagic) {
    return absl::DataLossError(
        absl::StrCat("registry log ", log_path, " does not start with ", kLogMagic));
  }

  size_t offset = kLogMagic.size();
  uint64_t last_seq = recovered->snapshot.last_seq();
  while (true) {
    Frame frame;
    FrameResult r = NextFrame(data, offset, &frame);
    if (r == FrameResult::kEnd || r == FrameResult::kTorn) break;
    const size_t at = offset;
    RegistryRecord record;
    if (r == FrameResult::kCorrupt ||
        !record.ParseFromArray(frame.payload.data(), static_cast<int>(frame.payload.size()))) {
      return absl::DataLossError(
          absl::StrCat("registry log ", log_path, " has a corrupt record at offset ", at));
    }
    offset = frame.end;
    if (record.seq() <= recovered->snapshot.last_seq()) continue;  // compacted already
    if (record.seq() <= last_seq) {
      return absl::DataLossError(absl::StrCat("registry log ", log_path, " record at offset ", at,
                                              " repeats sequence number ", record.seq()));
    }
    last_seq = record.seq();
    recovered->records.push_back(std::move(record));
  }

  PSD_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs->NewAppendableFile(log_path));
  if (offset < data.size()) {
    // Drop the torn tail so the next append starts on a frame boundary.
    absl::Status s = file->Truncate(offset);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("cannot truncate the torn tail of ", log_path,
                                                 ": ", s.message()));
    }
  }
  // What was read may be records a killed process wrote but never synced
  // (nobody was told of them); they are served from now on, so they must
  // survive a machine crash first.
  PSD_RETURN_IF_ERROR(file->Sync());
  return std::unique_ptr<RegistryLog>(new RegistryLog(dir, fs, std::move(file),
                                                      static_cast<int64_t>(offset),
                                                      max_state_bytes));
}

RegistryLog::~RegistryLog() = default;

std::shared_ptr<WritableFile> RegistryLog::file_for_sync() const {
  return broken_.ok() ? file_ : nullptr;
}

void RegistryLog::MarkBroken(const absl::Status& status) {
  if (broken_.ok()) broken_ = status.ok() ? absl::InternalError("registry log broken") : status;
}

absl::Status RegistryLog::Append(const RegistryRecord& record, bool sync) {
  if (!broken_.ok()) return broken_;
  PSD_ASSIGN_OR_RETURN(const std::string payload,
                       SerializeChecked(record, absl::StrCat("registry log record ", record.seq()),
                                        max_state_bytes_));
  const std::string frame = internal::Frame(payload);
  absl::Status s = file_->Append(frame);
  if (!s.ok()) {
    // Part of the frame may be in the file (a short write): cut it off, so
    // the next record starts on a frame boundary.
    absl::Status undone = file_->Truncate(static_cast<uint64_t>(log_bytes_));
    if (!undone.ok()) {
      MarkBroken(absl::Status(undone.code(),
                              absl::StrCat("cannot undo a failed append to ", LogPath(dir_), ": ",
                                           undone.message(), " (after: ", s.message(), ")")));
    }
    return s;
  }
  log_bytes_ += static_cast<int64_t>(frame.size());
  if (carrying_) carried_.push_back(frame);
  if (sync) return Sync();
  return absl::OkStatus();
}

absl::Status RegistryLog::Sync() {
  if (!broken_.ok()) return broken_;
  absl::Status s = file_->Sync();
  // After a failed fsync the kernel may have dropped the dirty pages; what
  // is on disk is unknown, so stop appending (PostgreSQL's lesson).
  if (!s.ok()) MarkBroken(s);
  return s;
}

absl::Status RegistryLog::Compact(const RegistrySnapshot& snapshot) {
  if (!broken_.ok()) return broken_;
  // Checked before anything is written: an unserializable snapshot must
  // not replace the published one, nor its failure empty the log.
  PSD_ASSIGN_OR_RETURN(const std::string payload,
                       SerializeChecked(snapshot, "registry snapshot", max_state_bytes_));
  std::string data(kSnapshotMagic);
  data += internal::Frame(payload);
  // On failure the old snapshot or the new one is published, and the log
  // holds every record either way: nothing to undo.
  PSD_RETURN_IF_ERROR(checkpoint::WriteFileAtomically(fs_, SnapshotPath(dir_), data));
  // The snapshot is published; the old log's records are all <= its
  // last_seq, so a crash from here on replays nothing twice.
  return ResetLog();
}

void RegistryLog::StartCompaction() {
  carrying_ = true;
  carried_.clear();
}

absl::Status RegistryLog::PublishSnapshot(const RegistrySnapshot& snapshot) const {
  PSD_ASSIGN_OR_RETURN(const std::string payload,
                       SerializeChecked(snapshot, "registry snapshot", max_state_bytes_));
  std::string data(kSnapshotMagic);
  data += internal::Frame(payload);
  return checkpoint::WriteFileAtomically(fs_, SnapshotPath(dir_), data);
}

std::string RegistryLog::CarriedSince(NextLog* next) const {
  std::string frames;
  for (size_t i = next->carried; i < carried_.size(); ++i) frames += carried_[i];
  next->carried = carried_.size();
  return frames;
}

absl::Status RegistryLog::WriteNext(NextLog* next, absl::string_view frames) const {
  if (next->file == nullptr) {
    next->temp = checkpoint::TempFileName(LogPath(dir_));
    PSD_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs_->NewAppendableFile(next->temp));
    next->file = std::move(file);
    PSD_RETURN_IF_ERROR(next->file->Append(kLogMagic));
    next->bytes = static_cast<int64_t>(kLogMagic.size());
  }
  PSD_RETURN_IF_ERROR(next->file->Append(frames));
  next->bytes += static_cast<int64_t>(frames.size());
  // Synced before it can take the log's name: the records acknowledged
  // from the old log must be durable in the new one first.
  return next->file->Sync();
}

absl::StatusOr<bool> RegistryLog::SwitchToNext(NextLog* next) {
  if (!broken_.ok()) return broken_;
  if (next->carried < carried_.size()) return false;  // more came in: write them first
  PSD_RETURN_IF_ERROR(fs_->RenameFile(next->temp, LogPath(dir_)));
  file_ = next->file;
  log_bytes_ = next->bytes;
  next->switched = true;
  ++generation_;
  dir_sync_pending_ = true;
  return true;
}

void RegistryLog::EndCompaction() {
  carrying_ = false;
  carried_.clear();
}

void RegistryLog::DeleteNext(const NextLog& next) const {
  if (next.switched || next.temp.empty()) return;
  fs_->DeleteFile(next.temp).IgnoreError();
}

void RegistryLog::DirSynced(uint64_t generation) {
  if (generation == generation_) dir_sync_pending_ = false;
}

absl::Status RegistryLog::ResetLog() {
  const std::string path = LogPath(dir_);
  const std::string temp = checkpoint::TempFileName(path);
  absl::Status s = [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs_->NewWritableFile(temp));
    PSD_RETURN_IF_ERROR(file->Append(kLogMagic));
    PSD_RETURN_IF_ERROR(file->Sync());
    PSD_RETURN_IF_ERROR(file->Close());
    return fs_->RenameFile(temp, path);
  }();
  if (!s.ok()) {
    // The old log is still in place and open: appending goes on there.
    fs_->DeleteFile(temp).IgnoreError();
    return s;
  }
  // The name now holds the empty log; the open file is the old one, which
  // nothing reads any more. Appending must move to the new one, and the
  // rename must be durable before a record is acknowledged from it.
  auto file = fs_->NewAppendableFile(path);
  if (!file.ok()) {
    MarkBroken(absl::Status(file.status().code(),
                            absl::StrCat("cannot reopen the registry log after compaction: ",
                                         file.status().message())));
    return broken_;
  }
  file_ = std::shared_ptr<WritableFile>(std::move(file).value());
  log_bytes_ = static_cast<int64_t>(kLogMagic.size());
  s = fs_->SyncDir(dir_);
  if (!s.ok()) MarkBroken(s);
  return s;
}

}  // namespace psd
