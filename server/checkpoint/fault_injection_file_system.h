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
// Each armed fault fires once. Thread-safe.
#ifndef PSD_SERVER_CHECKPOINT_FAULT_INJECTION_FILE_SYSTEM_H_
#define PSD_SERVER_CHECKPOINT_FAULT_INJECTION_FILE_SYSTEM_H_

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
  // Disarms every fault and zeroes the counters.
  void Reset();
  // Mutating operations seen since construction or Reset().
  int mutation_count() const;
  // Faults that fired since construction or Reset().
  int faults_fired() const;

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
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

 private:
  static bool IsMutation(FsOp op);

  FileSystem* const base_;
  mutable absl::Mutex mu_;
  // Per kind: operations still to pass before the armed fault fires.
  std::map<FsOp, int> fail_countdown_ ABSL_GUARDED_BY(mu_);
  int mutation_countdown_ ABSL_GUARDED_BY(mu_) = 0;
  int short_write_countdown_ ABSL_GUARDED_BY(mu_) = 0;
  int mutations_ ABSL_GUARDED_BY(mu_) = 0;
  int fired_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace psd::checkpoint

#endif  // PSD_SERVER_CHECKPOINT_FAULT_INJECTION_FILE_SYSTEM_H_
