#include "checkpoint/fault_injection_file_system.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "psd/status.h"

namespace psd::checkpoint {
namespace {

const char* OpName(FsOp op) {
  switch (op) {
    case FsOp::kNewWritableFile:
      return "create";
    case FsOp::kAppend:
      return "append";
    case FsOp::kSync:
      return "fsync";
    case FsOp::kClose:
      return "close";
    case FsOp::kNewRandomAccessFile:
      return "open";
    case FsOp::kRead:
      return "read";
    case FsOp::kRename:
      return "rename";
    case FsOp::kDelete:
      return "delete";
    case FsOp::kSyncDir:
      return "fsync directory";
    case FsOp::kListDir:
      return "list directory";
    case FsOp::kFileExists:
      return "exists";
    case FsOp::kGetFileSize:
      return "stat";
    case FsOp::kNewAppendableFile:
      return "open for append";
    case FsOp::kTruncate:
      return "truncate";
    case FsOp::kCreateDir:
      return "mkdir";
  }
  return "?";
}

absl::Status Injected(FsOp op, const std::string& path) {
  return absl::InternalError(absl::StrCat("injected fault: ", OpName(op), " ", path));
}

class FaultWritableFile final : public WritableFile {
 public:
  FaultWritableFile(FaultInjectionFileSystem* fs, std::string path,
                    std::unique_ptr<WritableFile> base)
      : fs_(fs), path_(std::move(path)), base_(std::move(base)) {}

  absl::Status Append(absl::string_view data) override {
    switch (fs_->Check(FsOp::kAppend, path_)) {
      case FaultInjectionFileSystem::Outcome::kPass: {
        absl::Status s = base_->Append(data);
        if (s.ok()) fs_->Appended(path_, data.size());
        return s;
      }
      case FaultInjectionFileSystem::Outcome::kFail:
        return Injected(FsOp::kAppend, path_);
      case FaultInjectionFileSystem::Outcome::kShortWrite:
        if (base_->Append(data.substr(0, data.size() / 2)).ok()) {
          fs_->Appended(path_, data.size() / 2);
        }
        return absl::ResourceExhaustedError("injected short write: " + path_);
    }
    return absl::OkStatus();
  }
  absl::Status Sync() override {
    if (fs_->Check(FsOp::kSync, path_) != FaultInjectionFileSystem::Outcome::kPass) {
      return Injected(FsOp::kSync, path_);
    }
    absl::Status s = base_->Sync();
    if (s.ok()) fs_->Synced(path_);
    return s;
  }
  absl::Status Truncate(uint64_t size) override {
    if (fs_->Check(FsOp::kTruncate, path_) != FaultInjectionFileSystem::Outcome::kPass) {
      return Injected(FsOp::kTruncate, path_);
    }
    absl::Status s = base_->Truncate(size);
    if (s.ok()) fs_->Truncated(path_, size);
    return s;
  }
  absl::Status Close() override {
    if (fs_->Check(FsOp::kClose, path_) != FaultInjectionFileSystem::Outcome::kPass) {
      base_->Close().IgnoreError();  // the descriptor is gone either way, as with close(2)
      return Injected(FsOp::kClose, path_);
    }
    return base_->Close();
  }

 private:
  FaultInjectionFileSystem* const fs_;
  const std::string path_;
  const std::unique_ptr<WritableFile> base_;
};

class FaultRandomAccessFile final : public RandomAccessFile {
 public:
  FaultRandomAccessFile(FaultInjectionFileSystem* fs, std::unique_ptr<RandomAccessFile> base)
      : fs_(fs), base_(std::move(base)) {}
  absl::Status Read(uint64_t offset, size_t n, char* scratch,
                    absl::string_view* result) const override {
    if (fs_->Check(FsOp::kRead, path()) != FaultInjectionFileSystem::Outcome::kPass) {
      return Injected(FsOp::kRead, path());
    }
    return base_->Read(offset, n, scratch, result);
  }
  const std::string& path() const override { return base_->path(); }

 private:
  FaultInjectionFileSystem* const fs_;
  const std::unique_ptr<RandomAccessFile> base_;
};

}  // namespace

FaultInjectionFileSystem::FaultInjectionFileSystem(FileSystem* base) : base_(base) {}

void FaultInjectionFileSystem::FailOperation(FsOp op, int nth) {
  absl::MutexLock lock(&mu_);
  fail_countdown_[op] = nth;
}

void FaultInjectionFileSystem::FailNthMutation(int nth) {
  absl::MutexLock lock(&mu_);
  mutation_countdown_ = nth;
}

void FaultInjectionFileSystem::ShortWriteOnAppend(int nth) {
  absl::MutexLock lock(&mu_);
  short_write_countdown_ = nth;
}

void FaultInjectionFileSystem::CrashAtNthMutation(int nth) {
  absl::MutexLock lock(&mu_);
  crash_countdown_ = nth;
}

void FaultInjectionFileSystem::SetHook(std::function<void(FsOp, const std::string&)> hook) {
  hook_ = std::move(hook);
}

void FaultInjectionFileSystem::Reset() {
  absl::MutexLock lock(&mu_);
  fail_countdown_.clear();
  mutation_countdown_ = 0;
  short_write_countdown_ = 0;
  mutations_ = 0;
  fired_ = 0;
  crash_countdown_ = 0;
  crashed_ = false;
  counts_.clear();
}

int FaultInjectionFileSystem::count(FsOp op) const {
  absl::MutexLock lock(&mu_);
  auto it = counts_.find(op);
  return it == counts_.end() ? 0 : it->second;
}

std::string FaultInjectionFileSystem::CurrentPath(std::string path) const {
  for (auto it = renamed_.find(path); it != renamed_.end(); it = renamed_.find(path)) {
    path = it->second;
  }
  return path;
}

void FaultInjectionFileSystem::Appended(const std::string& path, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  files_[CurrentPath(path)].size += bytes;
}

void FaultInjectionFileSystem::Synced(const std::string& path) {
  absl::MutexLock lock(&mu_);
  FileSizes& f = files_[CurrentPath(path)];
  f.synced = f.size;
}

void FaultInjectionFileSystem::Truncated(const std::string& path, uint64_t size) {
  absl::MutexLock lock(&mu_);
  FileSizes& f = files_[CurrentPath(path)];
  f.size = size;
  // What lay past `size` may or may not come back after a crash; assume the
  // worse for the reader, which must cope with a torn tail either way.
  f.synced = std::min(f.synced, size);
}

absl::Status FaultInjectionFileSystem::DropUnsyncedData() {
  std::map<std::string, FileSizes> files;
  {
    absl::MutexLock lock(&mu_);
    files = files_;
  }
  for (const auto& [path, sizes] : files) {
    absl::StatusOr<uint64_t> size = base_->GetFileSize(path);
    if (absl::IsNotFound(size.status())) continue;
    if (!size.ok()) return size.status();
    if (*size <= sizes.synced) continue;
    auto file = base_->NewAppendableFile(path);
    if (!file.ok()) return file.status();
    absl::Status s = (*file)->Truncate(sizes.synced);
    if (s.ok()) s = (*file)->Close();
    if (!s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  for (auto& [path, sizes] : files_) sizes.size = sizes.synced;
  return absl::OkStatus();
}

int FaultInjectionFileSystem::mutation_count() const {
  absl::MutexLock lock(&mu_);
  return mutations_;
}

int FaultInjectionFileSystem::faults_fired() const {
  absl::MutexLock lock(&mu_);
  return fired_;
}

bool FaultInjectionFileSystem::IsMutation(FsOp op) {
  switch (op) {
    case FsOp::kNewWritableFile:
    case FsOp::kAppend:
    case FsOp::kSync:
    case FsOp::kClose:
    case FsOp::kRename:
    case FsOp::kDelete:
    case FsOp::kSyncDir:
    case FsOp::kNewAppendableFile:
    case FsOp::kTruncate:
    case FsOp::kCreateDir:
      return true;
    default:
      return false;
  }
}

FaultInjectionFileSystem::Outcome FaultInjectionFileSystem::Check(FsOp op,
                                                                  const std::string& path) {
  if (hook_) hook_(op, path);
  absl::MutexLock lock(&mu_);
  // A countdown at 0 is disarmed; reaching 0 from 1 fires it.
  auto fires = [](int* countdown) { return *countdown > 0 && --*countdown == 0; };
  Outcome outcome = Outcome::kPass;
  ++counts_[op];
  if (IsMutation(op)) {
    ++mutations_;
    if (fires(&mutation_countdown_)) outcome = Outcome::kFail;
    if (fires(&crash_countdown_)) crashed_ = true;
  }
  if (crashed_) {
    ++fired_;
    return Outcome::kFail;
  }
  auto it = fail_countdown_.find(op);
  if (it != fail_countdown_.end() && fires(&it->second)) outcome = Outcome::kFail;
  if (op == FsOp::kAppend && fires(&short_write_countdown_) && outcome == Outcome::kPass) {
    outcome = Outcome::kShortWrite;
  }
  if (outcome != Outcome::kPass) ++fired_;
  return outcome;
}

absl::StatusOr<std::unique_ptr<WritableFile>> FaultInjectionFileSystem::NewWritableFile(
    const std::string& path) {
  if (Check(FsOp::kNewWritableFile, path) != Outcome::kPass) {
    return Injected(FsOp::kNewWritableFile, path);
  }
  auto base = base_->NewWritableFile(path);
  if (!base.ok()) return base.status();
  {
    absl::MutexLock lock(&mu_);
    files_[path] = FileSizes();
    renamed_.erase(path);
  }
  return std::unique_ptr<WritableFile>(new FaultWritableFile(this, path, *std::move(base)));
}

absl::StatusOr<std::unique_ptr<WritableFile>> FaultInjectionFileSystem::NewAppendableFile(
    const std::string& path) {
  if (Check(FsOp::kNewAppendableFile, path) != Outcome::kPass) {
    return Injected(FsOp::kNewAppendableFile, path);
  }
  auto base = base_->NewAppendableFile(path);
  if (!base.ok()) return base.status();
  // What the file held before is taken as durable.
  absl::StatusOr<uint64_t> size = base_->GetFileSize(path);
  if (!size.ok()) return size.status();
  {
    absl::MutexLock lock(&mu_);
    files_[path] = FileSizes{*size, *size};
    renamed_.erase(path);
  }
  return std::unique_ptr<WritableFile>(new FaultWritableFile(this, path, *std::move(base)));
}

absl::Status FaultInjectionFileSystem::CreateDir(const std::string& dir) {
  if (Check(FsOp::kCreateDir, dir) != Outcome::kPass) return Injected(FsOp::kCreateDir, dir);
  return base_->CreateDir(dir);
}

absl::StatusOr<std::unique_ptr<RandomAccessFile>> FaultInjectionFileSystem::NewRandomAccessFile(
    const std::string& path) {
  if (Check(FsOp::kNewRandomAccessFile, path) != Outcome::kPass) {
    return Injected(FsOp::kNewRandomAccessFile, path);
  }
  auto base = base_->NewRandomAccessFile(path);
  if (!base.ok()) return base.status();
  return std::unique_ptr<RandomAccessFile>(new FaultRandomAccessFile(this, *std::move(base)));
}

absl::Status FaultInjectionFileSystem::RenameFile(const std::string& from, const std::string& to) {
  if (Check(FsOp::kRename, from) != Outcome::kPass) return Injected(FsOp::kRename, from);
  PSD_RETURN_IF_ERROR(base_->RenameFile(from, to));
  absl::MutexLock lock(&mu_);
  auto it = files_.find(from);
  if (it == files_.end()) {
    files_.erase(to);
  } else {
    files_[to] = it->second;
    files_.erase(it);
  }
  // A file still open under its old name now writes to `to`.
  renamed_.erase(to);
  if (from != to) renamed_[from] = to;
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::DeleteFile(const std::string& path) {
  if (Check(FsOp::kDelete, path) != Outcome::kPass) return Injected(FsOp::kDelete, path);
  PSD_RETURN_IF_ERROR(base_->DeleteFile(path));
  absl::MutexLock lock(&mu_);
  files_.erase(path);
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::SyncDir(const std::string& dir) {
  if (Check(FsOp::kSyncDir, dir) != Outcome::kPass) return Injected(FsOp::kSyncDir, dir);
  return base_->SyncDir(dir);
}

absl::StatusOr<std::vector<std::string>> FaultInjectionFileSystem::ListDir(const std::string& dir) {
  if (Check(FsOp::kListDir, dir) != Outcome::kPass) return Injected(FsOp::kListDir, dir);
  return base_->ListDir(dir);
}

absl::Status FaultInjectionFileSystem::FileExists(const std::string& path) {
  if (Check(FsOp::kFileExists, path) != Outcome::kPass) return Injected(FsOp::kFileExists, path);
  return base_->FileExists(path);
}

absl::StatusOr<uint64_t> FaultInjectionFileSystem::GetFileSize(const std::string& path) {
  if (Check(FsOp::kGetFileSize, path) != Outcome::kPass) {
    return Injected(FsOp::kGetFileSize, path);
  }
  return base_->GetFileSize(path);
}

}  // namespace psd::checkpoint
