#include "checkpoint/file_system.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "psd/random_id.h"
#include "psd/status.h"

namespace psd::checkpoint {
namespace {

absl::Status PosixError(absl::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Append(absl::string_view data) override {
    CrashPoint("fs.append");
    if (fd_ < 0) return absl::FailedPreconditionError("append to closed file " + path_);
    // write(2) may write less than asked (signals, pipes, near-full disks).
    while (!data.empty()) {
      const ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return PosixError("write", path_, errno);
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    CrashPoint("fs.sync");
    if (fd_ < 0) return absl::FailedPreconditionError("sync of closed file " + path_);
    if (::fdatasync(fd_) != 0) return PosixError("fdatasync", path_, errno);
    return absl::OkStatus();
  }

  absl::Status Truncate(uint64_t size) override {
    CrashPoint("fs.truncate");
    if (fd_ < 0) return absl::FailedPreconditionError("truncate of closed file " + path_);
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return PosixError("ftruncate", path_, errno);
    }
    return absl::OkStatus();
  }

  absl::Status Close() override {
    CrashPoint("fs.close");
    if (fd_ < 0) return absl::OkStatus();
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) return PosixError("close", path_, errno);
    return absl::OkStatus();
  }

 private:
  const std::string path_;
  int fd_;
};

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  absl::Status Read(uint64_t offset, size_t n, char* scratch,
                    absl::string_view* result) const override {
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::pread(fd_, scratch + got, n - got, static_cast<off_t>(offset + got));
      if (r < 0) {
        if (errno == EINTR) continue;
        return PosixError("read", path_, errno);
      }
      if (r == 0) break;  // end of file
      got += static_cast<size_t>(r);
    }
    *result = absl::string_view(scratch, got);
    return absl::OkStatus();
  }

  const std::string& path() const override { return path_; }

 private:
  const std::string path_;
  const int fd_;
};

class PosixFileSystem final : public FileSystem {
 public:
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    CrashPoint("fs.create");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return PosixError("open", path, errno);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(
      const std::string& path) override {
    CrashPoint("fs.create");
    // O_APPEND: every write lands at the end, also after a Truncate.
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return PosixError("open", path, errno);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }

  absl::Status CreateDir(const std::string& dir) override {
    if (dir.empty()) return absl::InvalidArgumentError("cannot create a directory with no name");
    struct stat st;
    if (::stat(dir.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) return absl::OkStatus();
      return absl::AlreadyExistsError(absl::StrCat("mkdir ", dir, ": not a directory"));
    }
    // Parents first, like `mkdir -p`: a fresh host has no /var/lib/psd yet.
    const std::string parent = DirName(dir);
    if (parent != dir && parent != "." && parent != "/") PSD_RETURN_IF_ERROR(CreateDir(parent));
    CrashPoint("fs.mkdir");
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return PosixError("mkdir", dir, errno);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PosixError("open", path, errno);
    return std::unique_ptr<RandomAccessFile>(new PosixRandomAccessFile(path, fd));
  }

  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    CrashPoint("fs.rename");
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return PosixError("rename to " + to + ":", from, errno);
    }
    return absl::OkStatus();
  }

  absl::Status DeleteFile(const std::string& path) override {
    CrashPoint("fs.delete");
    if (::unlink(path.c_str()) != 0) return PosixError("unlink", path, errno);
    return absl::OkStatus();
  }

  absl::Status SyncDir(const std::string& dir) override {
    CrashPoint("fs.syncdir");
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return PosixError("open directory", dir, errno);
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0) return PosixError("fsync directory", dir, err);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return PosixError("opendir", dir, errno);
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(d)) {
      const absl::string_view name = e->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(d);
    return names;
  }

  absl::Status FileExists(const std::string& path) override {
    if (::access(path.c_str(), F_OK) != 0) return PosixError("access", path, errno);
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> GetFileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return PosixError("stat", path, errno);
    return static_cast<uint64_t>(st.st_size);
  }
};

constexpr absl::string_view kTempMarker = ".tempstate";

}  // namespace

void CrashPoint(absl::string_view name) {
  // Read once: the hook costs one load when unset.
  static const int64_t target = [] {
    const char* v = std::getenv("PSD_CRASH_AT");
    int64_t n = 0;
    return v != nullptr && absl::SimpleAtoi(v, &n) ? n : int64_t{0};
  }();
  if (target <= 0) return;
  static const char* const arm_file = std::getenv("PSD_CRASH_ARM_FILE");
  static std::atomic<bool> armed{arm_file == nullptr};
  static std::atomic<int64_t> hits{0};
  if (!armed.load()) {
    if (::access(arm_file, F_OK) != 0) return;
    armed.store(true);
  }
  if (hits.fetch_add(1) + 1 != target) return;
  std::fprintf(stderr, "PSD_CRASH_AT=%lld: killed at crash point %.*s\n",
               static_cast<long long>(target), static_cast<int>(name.size()), name.data());
  std::fflush(stderr);
  std::raise(SIGKILL);
}

absl::Status WritableFile::Truncate(uint64_t) {
  return absl::UnimplementedError("this file system cannot truncate files");
}

absl::StatusOr<std::unique_ptr<WritableFile>> FileSystem::NewAppendableFile(const std::string&) {
  return absl::UnimplementedError("this file system cannot append to existing files");
}

absl::Status FileSystem::CreateDir(const std::string&) {
  return absl::UnimplementedError("this file system cannot create directories");
}

FileSystem* FileSystem::Default() {
  static FileSystem* const fs = new PosixFileSystem();
  return fs;
}

std::string DirName(absl::string_view path) {
  const size_t slash = path.rfind('/');
  if (slash == absl::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

std::string BaseName(absl::string_view path) {
  const size_t slash = path.rfind('/');
  return std::string(slash == absl::string_view::npos ? path : path.substr(slash + 1));
}

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (dir.empty()) return std::string(name);
  if (absl::EndsWith(dir, "/")) return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

std::string TempFileName(absl::string_view path) {
  return absl::StrFormat("%s%s%016x", path, kTempMarker, RandomNonzeroId());
}

bool IsTempFileName(absl::string_view name) {
  const size_t pos = name.rfind(kTempMarker);
  if (pos == absl::string_view::npos) return false;
  const absl::string_view suffix = name.substr(pos + kTempMarker.size());
  if (suffix.size() != 16) return false;
  for (char c : suffix) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

absl::Status WriteFileAtomically(FileSystem* fs, const std::string& path,
                                 absl::string_view contents) {
  const std::string temp = TempFileName(path);
  absl::Status s = [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs->NewWritableFile(temp));
    PSD_RETURN_IF_ERROR(file->Append(contents));
    PSD_RETURN_IF_ERROR(file->Sync());
    PSD_RETURN_IF_ERROR(file->Close());
    return fs->RenameFile(temp, path);
  }();
  if (!s.ok()) {
    fs->DeleteFile(temp).IgnoreError();
    return s;
  }
  return fs->SyncDir(DirName(path));
}

absl::StatusOr<int> DeleteTempFiles(FileSystem* fs, const std::string& dir) {
  PSD_ASSIGN_OR_RETURN(std::vector<std::string> names, fs->ListDir(dir));
  int deleted = 0;
  absl::Status first_error;
  for (const std::string& name : names) {
    if (!IsTempFileName(name)) continue;
    absl::Status s = fs->DeleteFile(JoinPath(dir, name));
    if (s.ok() || absl::IsNotFound(s)) {
      ++deleted;
    } else if (first_error.ok()) {
      first_error = s;
    }
  }
  PSD_RETURN_IF_ERROR(first_error);
  if (deleted > 0) PSD_RETURN_IF_ERROR(fs->SyncDir(dir));
  return deleted;
}

}  // namespace psd::checkpoint
