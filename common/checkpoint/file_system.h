// The one small file-I/O interface every checkpoint file access (and the
// coordinator's registry log) goes through, so tests can make disks fail on
// purpose (see fault_injection_file_system.h) and that code never calls
// POSIX directly.
//
// Thread-safety: FileSystem implementations are thread-safe. A WritableFile
// is thread-compatible (one writer at a time), except that Sync() may run on
// one thread while another appends (as fdatasync and write(2) may): it then
// makes durable at least what was appended before it started.
// RandomAccessFile::Read is thread-safe (positional reads).
#ifndef PSD_COMMON_CHECKPOINT_FILE_SYSTEM_H_
#define PSD_COMMON_CHECKPOINT_FILE_SYSTEM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace psd::checkpoint {

// A file being written sequentially. Destroying it without Close() closes it
// (errors ignored).
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data` or returns an error (a short write is an error).
  virtual absl::Status Append(absl::string_view data) = 0;
  // Makes everything appended so far durable (fsync).
  virtual absl::Status Sync() = 0;
  virtual absl::Status Close() = 0;
  // Cuts the file to its first `size` bytes; later appends continue at the
  // new end. Not durable until the next Sync(). UNIMPLEMENTED by default.
  virtual absl::Status Truncate(uint64_t size);
};

// A file read at arbitrary offsets.
class RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;
  // Reads up to `n` bytes at `offset` into `scratch` and points `*result` at
  // them. Fewer than `n` bytes only at end of file; OK with an empty result
  // at or past the end.
  virtual absl::Status Read(uint64_t offset, size_t n, char* scratch,
                            absl::string_view* result) const = 0;
  // The path it was opened with, for error messages.
  virtual const std::string& path() const = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // The process-wide POSIX file system (never null, never destroyed).
  static FileSystem* Default();

  // Creates or truncates `path`.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path) = 0;
  // Opens `path` for appending after its current contents, creating it if
  // it does not exist (an append-only log). UNIMPLEMENTED by default.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(
      const std::string& path);
  // Creates `dir` and its missing parents (mkdir -p); OK if it exists.
  // UNIMPLEMENTED by default.
  virtual absl::Status CreateDir(const std::string& dir);
  // NOT_FOUND if `path` does not exist.
  virtual absl::StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) = 0;
  // Atomically replaces `to` (rename(2)).
  virtual absl::Status RenameFile(const std::string& from, const std::string& to) = 0;
  virtual absl::Status DeleteFile(const std::string& path) = 0;
  // fsync of a directory, which makes renames and deletions in it durable.
  virtual absl::Status SyncDir(const std::string& dir) = 0;
  // Names (not paths) of the entries of `dir`, without "." and "..".
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  // OK if `path` exists, NOT_FOUND if not, another error if unknown.
  virtual absl::Status FileExists(const std::string& path) = 0;
  virtual absl::StatusOr<uint64_t> GetFileSize(const std::string& path) = 0;
};

// "dir/name" -> "dir"; "name" -> "."; "/name" -> "/".
std::string DirName(absl::string_view path);
// "dir/name" -> "name".
std::string BaseName(absl::string_view path);
std::string JoinPath(absl::string_view dir, absl::string_view name);

// Writes `contents` to `path` crash-safely: a temp file beside it, fsync,
// rename over `path`, fsync of the directory. On failure the temp file is
// removed and `path` is untouched.
absl::Status WriteFileAtomically(FileSystem* fs, const std::string& path,
                                 absl::string_view contents);

// "<path>.tempstate<16 hex digits>", random per call: the temp name that
// publication renames from (TensorFlow's convention).
std::string TempFileName(absl::string_view path);
// True for names TempFileName produces.
bool IsTempFileName(absl::string_view name);
// Deletes every temp file in `dir` left by an interrupted save. Returns the
// number deleted.
absl::StatusOr<int> DeleteTempFiles(FileSystem* fs, const std::string& dir);

// Crash-point hook for the crash tests of saves (tests/integration/
// checkpoint_crash_test.cc); a no-op unless the environment variable
// PSD_CRASH_AT=N is set. Every mutating operation of the POSIX file system
// (create, append, sync, close, rename, delete, directory sync) and every
// named point of a save calls it; the Nth call raises SIGKILL, so a test can
// kill a process at each step of a save in turn. With PSD_CRASH_ARM_FILE set,
// calls are counted only once that file exists (the test's setup runs
// uncounted). Not a configuration anyone should set in production.
void CrashPoint(absl::string_view name);

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_FILE_SYSTEM_H_
