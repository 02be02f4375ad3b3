// An in-memory checkpoint::FileSystem for the fuzz targets and their seed
// generator: the fuzz input becomes files without touching the disk. Files
// behave as POSIX ones do where the readers and writers under test rely on
// it: an open file follows its contents through a rename (the registry log
// keeps appending to the file it renamed into place), and appends and
// truncation work on existing files. Thread-compatible (each fuzz
// iteration makes its own).
#ifndef PSD_TESTS_FUZZ_MEMORY_FILE_SYSTEM_H_
#define PSD_TESTS_FUZZ_MEMORY_FILE_SYSTEM_H_

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/file_system.h"

namespace psd::fuzz {

class MemoryFileSystem final : public checkpoint::FileSystem {
 public:
  // The contents of `path`, created empty if it does not exist.
  std::string& File(const std::string& path) {
    std::shared_ptr<std::string>& node = files_[path];
    if (node == nullptr) node = std::make_shared<std::string>();
    return *node;
  }
  // The contents of `path`, or null.
  const std::string* Find(const std::string& path) const {
    auto it = files_.find(path);
    return it == files_.end() ? nullptr : it->second.get();
  }

  absl::StatusOr<std::unique_ptr<checkpoint::WritableFile>> NewWritableFile(
      const std::string& path) override {
    auto node = std::make_shared<std::string>();
    files_[path] = node;
    return std::unique_ptr<checkpoint::WritableFile>(new Writer(std::move(node)));
  }
  absl::StatusOr<std::unique_ptr<checkpoint::WritableFile>> NewAppendableFile(
      const std::string& path) override {
    File(path);
    return std::unique_ptr<checkpoint::WritableFile>(new Writer(files_[path]));
  }
  // Directories are implied by the files' paths.
  absl::Status CreateDir(const std::string&) override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<checkpoint::RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override {
    auto it = files_.find(path);
    if (it == files_.end()) return absl::NotFoundError(path + " not found");
    return std::unique_ptr<checkpoint::RandomAccessFile>(new Reader(path, it->second));
  }
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    auto it = files_.find(from);
    if (it == files_.end()) return absl::NotFoundError(from + " not found");
    std::shared_ptr<std::string> node = it->second;
    files_.erase(it);
    files_[to] = std::move(node);
    return absl::OkStatus();
  }
  absl::Status DeleteFile(const std::string& path) override {
    return files_.erase(path) > 0 ? absl::OkStatus() : absl::NotFoundError(path);
  }
  absl::Status SyncDir(const std::string&) override { return absl::OkStatus(); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    std::vector<std::string> names;
    for (const auto& [path, contents] : files_) {
      if (checkpoint::DirName(path) == dir) names.push_back(checkpoint::BaseName(path));
    }
    return names;
  }
  absl::Status FileExists(const std::string& path) override {
    return files_.count(path) > 0 ? absl::OkStatus() : absl::NotFoundError(path);
  }
  absl::StatusOr<uint64_t> GetFileSize(const std::string& path) override {
    auto it = files_.find(path);
    if (it == files_.end()) return absl::NotFoundError(path + " not found");
    return it->second->size();
  }

 private:
  class Writer final : public checkpoint::WritableFile {
   public:
    explicit Writer(std::shared_ptr<std::string> out) : out_(std::move(out)) {}
    absl::Status Append(absl::string_view data) override {
      out_->append(data.data(), data.size());
      return absl::OkStatus();
    }
    absl::Status Truncate(uint64_t size) override {
      if (size < out_->size()) out_->resize(size);
      return absl::OkStatus();
    }
    absl::Status Sync() override { return absl::OkStatus(); }
    absl::Status Close() override { return absl::OkStatus(); }

   private:
    std::shared_ptr<std::string> out_;
  };
  class Reader final : public checkpoint::RandomAccessFile {
   public:
    Reader(std::string path, std::shared_ptr<const std::string> contents)
        : path_(std::move(path)), contents_(std::move(contents)) {}
    absl::Status Read(uint64_t offset, size_t n, char* scratch,
                      absl::string_view* result) const override {
      if (offset >= contents_->size()) {
        *result = absl::string_view();
        return absl::OkStatus();
      }
      const size_t got = std::min<uint64_t>(n, contents_->size() - offset);
      std::memcpy(scratch, contents_->data() + offset, got);
      *result = absl::string_view(scratch, got);
      return absl::OkStatus();
    }
    const std::string& path() const override { return path_; }

   private:
    const std::string path_;
    const std::shared_ptr<const std::string> contents_;
  };

  std::map<std::string, std::shared_ptr<std::string>> files_;
};

}  // namespace psd::fuzz

#endif  // PSD_TESTS_FUZZ_MEMORY_FILE_SYSTEM_H_
