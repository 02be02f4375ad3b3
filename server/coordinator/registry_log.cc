#include "coordinator/registry_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "psd/crc32c.h"
#include "psd/status.h"

namespace psd {
namespace {

constexpr absl::string_view kLogMagic = "PSDRLOG1";
constexpr absl::string_view kSnapshotMagic = "PSDRSNP1";
constexpr size_t kFrameHeader = 8;

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

void PutFixed32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, bool* exists) {
  *exists = false;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::string();
    return Errno("cannot open", path);
  }
  *exists = true;
  std::string data;
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status s = Errno("cannot read", path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return data;
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("cannot write", path);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open directory", dir);
  absl::Status s = ::fsync(fd) == 0 ? absl::OkStatus() : Errno("cannot fsync directory", dir);
  ::close(fd);
  return s;
}

// Writes `data` to `path` crash-safely: temp file, fsync, rename, fsync of
// the directory.
absl::Status PublishFile(const std::string& dir, const std::string& path, absl::string_view data) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp);
  absl::Status s = WriteAll(fd, data, tmp);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", tmp);
  ::close(fd);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = Errno("cannot rename onto", path);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return SyncDir(dir);
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

absl::Status ReadSnapshot(const std::string& path, RegistrySnapshot* snapshot) {
  bool exists = false;
  PSD_ASSIGN_OR_RETURN(std::string data, ReadFile(path, &exists));
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
                                                               int64_t max_state_bytes) {
  if (dir.empty()) return absl::InvalidArgumentError("registry state directory is empty");
  // Parents too, like `mkdir -p`: a fresh host has no /var/lib/psd yet.
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create state directory ", dir, ": ", ec.message()));
  }
  *recovered = Recovered();
  PSD_RETURN_IF_ERROR(ReadSnapshot(SnapshotPath(dir), &recovered->snapshot));

  const std::string log_path = LogPath(dir);
  bool exists = false;
  PSD_ASSIGN_OR_RETURN(std::string data, ReadFile(log_path, &exists));
  // A log shorter than its magic was being created when the process died.
  if (data.size() < kLogMagic.size()) {
    PSD_RETURN_IF_ERROR(PublishFile(dir, log_path, kLogMagic));
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

  int fd = ::open(log_path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", log_path);
  if (offset < data.size()) {
    // Drop the torn tail so the next append starts on a frame boundary.
    if (::ftruncate(fd, static_cast<off_t>(offset)) != 0 || ::fsync(fd) != 0) {
      absl::Status s = Errno("cannot truncate the torn tail of", log_path);
      ::close(fd);
      return s;
    }
  }
  if (::lseek(fd, static_cast<off_t>(offset), SEEK_SET) < 0) {
    absl::Status s = Errno("cannot seek", log_path);
    ::close(fd);
    return s;
  }
  return std::unique_ptr<RegistryLog>(
      new RegistryLog(dir, fd, static_cast<int64_t>(offset), max_state_bytes));
}

RegistryLog::~RegistryLog() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status RegistryLog::Append(const RegistryRecord& record, bool sync) {
  if (!broken_.ok()) return broken_;
  const std::string path = LogPath(dir_);
  PSD_ASSIGN_OR_RETURN(const std::string payload,
                       SerializeChecked(record, absl::StrCat("registry log record ", record.seq()),
                                        max_state_bytes_));
  const std::string frame = internal::Frame(payload);
  absl::Status s = WriteAll(fd_, frame, path);
  if (s.ok() && sync && ::fdatasync(fd_) != 0) {
    // After a failed fsync the kernel may have dropped the dirty pages; what
    // is on disk is unknown, so stop appending (PostgreSQL's lesson).
    broken_ = Errno("cannot fsync", path);
    return broken_;
  }
  if (!s.ok()) {
    if (::ftruncate(fd_, static_cast<off_t>(log_bytes_)) != 0 ||
        ::lseek(fd_, static_cast<off_t>(log_bytes_), SEEK_SET) < 0) {
      broken_ = Errno("cannot undo a failed append to", path);
    }
    return s;
  }
  log_bytes_ += static_cast<int64_t>(frame.size());
  return absl::OkStatus();
}

absl::Status RegistryLog::Compact(const RegistrySnapshot& snapshot) {
  if (!broken_.ok()) return broken_;
  // Checked before anything is written: an unserializable snapshot must
  // not replace the published one, nor its failure empty the log.
  PSD_ASSIGN_OR_RETURN(const std::string payload,
                       SerializeChecked(snapshot, "registry snapshot", max_state_bytes_));
  std::string data(kSnapshotMagic);
  data += internal::Frame(payload);
  PSD_RETURN_IF_ERROR(PublishFile(dir_, SnapshotPath(dir_), data));
  // The snapshot is published; the old log's records are all <= its
  // last_seq, so a crash from here on replays nothing twice.
  const std::string path = LogPath(dir_);
  PSD_RETURN_IF_ERROR(PublishFile(dir_, path, kLogMagic));
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ::lseek(fd, 0, SEEK_END) < 0) {
    broken_ = Errno("cannot reopen", path);
    if (fd >= 0) ::close(fd);
    return broken_;
  }
  ::close(fd_);
  fd_ = fd;
  log_bytes_ = static_cast<int64_t>(kLogMagic.size());
  return absl::OkStatus();
}

}  // namespace psd
