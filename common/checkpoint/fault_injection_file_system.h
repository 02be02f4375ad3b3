// A FileSystem wrapper that makes chosen operations fail, for tests of crash
// safety: a short write (part of the bytes reach the file, then an error, as
// on a full disk), an fsync failure, or a failure at the Nth operation of any
// kind, which models a crash between two steps of a save. Everything else is
// passed through to the wrapped file system.
//
//   FaultInjectionFileSystem fs(FileSystem::Default());
//   fs.FailOperation(FsOp::kRename, 2);  // the 2nd rename from now fails
//   EXPECT_FALSE(WriteSomething(&fs).ok());
//
// A crash: CrashAtNthMutation(n) makes the nth mutation and every operation
// after it fail (the process is gone), and DropUnsyncedData() then puts every
// file written through this object back to what its last Sync() made
// durable, as a power loss would (bytes appended or truncated since are
// dropped). Renames and deletions count as durable when made: a crash
// between a rename and the directory's fsync is not modelled.
//
// Each armed fault fires once. Thread-safe.
#ifndef PSD_COMMON_CHECKPOINT_FAULT_INJECTION_FILE_SYSTEM_H_
#define PSD_COMMON_CHECKPOINT_FAULT_INJECTION_FILE_SYSTEM_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/file_system.h"

namespace psd::checkpoint {

enum class FsOp {
  kNewWritableFile,
  kAppend,
  kSync,
  kClose,
  kNewRandomAccessFile,
  kRead,
  kRename,
  kDelete,
  kSyncDir,
  kListDir,
  kFileExists,
  kGetFileSize,
  kNewAppendableFile,
  kTruncate,
  kCreateDir,
};

class FaultInjectionFileSystem final : public FileSystem {
 public:
  // `base` must outlive this object.
  explicit FaultInjectionFileSystem(FileSystem* base);

  // The `nth` (1-based, counted from this call) operation of kind `op` fails
  // with an injected error.
  void FailOperation(FsOp op, int nth = 1);
  // The `nth` operation of any kind that modifies files (create, append,
  // sync, close, rename, delete, directory sync) fails.
  void FailNthMutation(int nth);
  // The `nth` Append writes only the first half of its bytes, then fails.
  void ShortWriteOnAppend(int nth = 1);
  // The `nth` mutation (counted from this call) and every operation after
  // it fail: a crash at that step. Reset() revives the file system.
  void CrashAtNthMutation(int nth);
  // Truncates every file written through this object to the size its last
  // Sync() made durable (see the header comment). Call after a crash,
  // before Reset() and reopening.
  absl::Status DropUnsyncedData();
  // Called (outside this object's lock) before every operation, with its
  // kind and path; a test may block in it to hold an operation at that
  // point. Set before use; null: none.
  void SetHook(std::function<void(FsOp, const std::string&)> hook);
  // Operations of kind `op` seen since construction or Reset().
  int count(FsOp op) const;
  // Disarms every fault and zeroes the counters.
  void Reset();
  // Mutating operations seen since construction or Reset().
  int mutation_count() const;
  // Faults that fired since construction or Reset().
  int faults_fired() const;

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  absl::StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(
      const std::string& path) override;
  absl::Status CreateDir(const std::string& dir) override;
  absl::StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override;
  absl::Status RenameFile(const std::string& from, const std::string& to) override;
  absl::Status DeleteFile(const std::string& path) override;
  absl::Status SyncDir(const std::string& dir) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override;
  absl::Status FileExists(const std::string& path) override;
  absl::StatusOr<uint64_t> GetFileSize(const std::string& path) override;

  // What a file returns for an operation: OK, an injected error, or (for
  // Append only) a short write. Used by the wrapped files.
  enum class Outcome { kPass, kFail, kShortWrite };
  Outcome Check(FsOp op, const std::string& path);
  // Bookkeeping of sizes for DropUnsyncedData(), by the wrapped files.
  void Appended(const std::string& path, uint64_t bytes);
  void Synced(const std::string& path);
  void Truncated(const std::string& path, uint64_t size);

 private:
  static bool IsMutation(FsOp op);
  std::string CurrentPath(std::string path) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  struct FileSizes {
    uint64_t size = 0;    // what the file holds now
    uint64_t synced = 0;  // what a crash leaves of it
  };

  FileSystem* const base_;
  mutable absl::Mutex mu_;
  // Per kind: operations still to pass before the armed fault fires.
  std::map<FsOp, int> fail_countdown_ ABSL_GUARDED_BY(mu_);
  int mutation_countdown_ ABSL_GUARDED_BY(mu_) = 0;
  int short_write_countdown_ ABSL_GUARDED_BY(mu_) = 0;
  int mutations_ ABSL_GUARDED_BY(mu_) = 0;
  int fired_ ABSL_GUARDED_BY(mu_) = 0;
  int crash_countdown_ ABSL_GUARDED_BY(mu_) = 0;
  bool crashed_ ABSL_GUARDED_BY(mu_) = false;
  std::map<FsOp, int> counts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, FileSizes> files_ ABSL_GUARDED_BY(mu_);
  // Renamed paths, old -> new, for files still open under the old one.
  std::map<std::string, std::string> renamed_ ABSL_GUARDED_BY(mu_);
  std::function<void(FsOp, const std::string&)> hook_;
};

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_FAULT_INJECTION_FILE_SYSTEM_H_
