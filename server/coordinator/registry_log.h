// RegistryLog: the registry's durable state in the coordinator's state
// directory, as a snapshot plus an append-only log of mutations.
//
//   registry.snapshot  "PSDRSNP1", then one framed RegistrySnapshot
//   registry.log       "PSDRLOG1", then framed RegistryRecords
//
// A frame is fixed32 length, fixed32 masked CRC-32C of the payload (the
// LevelDB/TensorFlow mask), then the payload, all little-endian. On open, a
// torn tail (a short header, a short payload, or frames with bad checksums
// and no good frame after them) is what a crash in the middle of an append
// leaves: it was never acknowledged, so it is dropped and the file is
// truncated before it. A bad frame followed by a good one is corruption:
// DATA_LOSS naming the file and offset.
//
// Every snapshot and record is serialized with a check of its result and
// size (SerializeChecked): one that protobuf cannot serialize fails the
// write, never publishes an empty snapshot or truncates the log.
//
// Compaction publishes a new snapshot (temp file + fsync + rename + fsync of
// the directory) and then starts an empty log the same way. Records carry
// increasing sequence numbers and the snapshot stores the last one it
// includes, so a crash between the two steps replays nothing twice.
//
// Every file access goes through a checkpoint::FileSystem (the real one by
// default), so tests can fail writes and syncs and drop unsynced data at
// each step (tests/unit/registry_log_fault_test.cc).
//
// Failures: a failed or short append is cut off again (truncated to the
// last whole record) and the log stays usable; if even that fails, or a
// sync fails (after a failed fdatasync the kernel may have dropped the
// dirty pages, so what is on disk is unknown: PostgreSQL's lesson), the log
// is broken and refuses every later append and compaction with that error.
// A reopen recovers the records that reached the disk whole.
//
// Thread-compatible: the Registry calls it under its own mutex. Used
// without that mutex: the file returned by file_for_sync(), SyncDir(), and
// the steps of a compaction marked [unlocked] below.
#ifndef PSD_SERVER_COORDINATOR_REGISTRY_LOG_H_
#define PSD_SERVER_COORDINATOR_REGISTRY_LOG_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "checkpoint/file_system.h"
#include "psd/coordinator.pb.h"
#include "psd/serialize.h"

namespace psd {

class RegistryLog {
 public:
  // The largest snapshot or record written (protobuf's limit).
  static constexpr int64_t kMaxStateBytes = kMaxSerializedBytes;

  struct Recovered {
    RegistrySnapshot snapshot;
    // Records after the snapshot (seq > snapshot.last_seq), in order.
    std::vector<RegistryRecord> records;
  };

  // Creates `dir` if needed, reads the snapshot and the log into
  // `recovered`, truncates a torn tail, and opens the log for appending.
  // Snapshots and records larger than `max_state_bytes` serialized are
  // refused (RESOURCE_EXHAUSTED) and nothing is written. `fs` (null: the
  // real file system) must outlive the log.
  static absl::StatusOr<std::unique_ptr<RegistryLog>> Open(
      const std::string& dir, Recovered* recovered, int64_t max_state_bytes = kMaxStateBytes,
      checkpoint::FileSystem* fs = nullptr);
  ~RegistryLog();
  RegistryLog(const RegistryLog&) = delete;
  RegistryLog& operator=(const RegistryLog&) = delete;

  // Appends one record; with `sync` it is on stable storage when this
  // returns OK. Without, it is written (it survives the process, not the
  // machine) and a later Sync(), or a sync of file_for_sync(), makes it
  // durable. A failed append leaves the log as it was (or, if even that
  // cannot be ensured, refuses every later append).
  absl::Status Append(const RegistryRecord& record, bool sync);

  // Makes every record appended so far durable. A failure breaks the log.
  absl::Status Sync();

  // The open log file, for a sync that runs without the caller's lock
  // (the Registry's group commit): its Sync() makes durable every record
  // appended before it started. After a Compact() it is the old file, whose
  // records the published snapshot holds durably already; after a failed
  // sync of it the caller must call MarkBroken(). Null once broken.
  std::shared_ptr<checkpoint::WritableFile> file_for_sync() const;
  // Refuses every later append and compaction with `status`.
  void MarkBroken(const absl::Status& status);
  // OK unless the log is broken.
  const absl::Status& broken() const { return broken_; }

  // Publishes `snapshot` and starts an empty log. A snapshot that cannot be
  // serialized (over max_state_bytes) is RESOURCE_EXHAUSTED and leaves the
  // published snapshot and the log as they were. On OK every record up to
  // snapshot.last_seq() is durable (in the snapshot).
  absl::Status Compact(const RegistrySnapshot& snapshot);

  // The same compaction with its writes and syncs outside the caller's
  // lock, in steps ([locked]: under the caller's lock; [unlocked]: without
  // it, one compaction at a time):
  //   StartCompaction()              [locked] snapshot taken now; from here
  //                                  every appended record is also kept for
  //                                  the next log
  //   PublishSnapshot(snapshot)      [unlocked] on OK, every record up to its
  //                                  last_seq is durable
  //   loop: CarriedSince(&next)      [locked] the records kept since
  //         WriteNext(&next, bytes)  [unlocked] written to the next log, synced
  //         SwitchToNext(&next)      [locked] true once nothing new came in:
  //                                  renamed over the log (a rename, no
  //                                  flush), appends go on there
  //   EndCompaction(&next)           [locked] stop keeping records (always;
  //                                  after a failure the old log goes on)
  //   DeleteNext(next)               [unlocked] removes an unused next log
  // After a switch the directory must be synced before a record appended
  // to the new log is acknowledged: see dir_sync_generation().
  struct NextLog {
    std::string temp;
    std::shared_ptr<checkpoint::WritableFile> file;
    size_t carried = 0;  // kept records written to it
    int64_t bytes = 0;
    bool switched = false;
  };
  void StartCompaction();
  absl::Status PublishSnapshot(const RegistrySnapshot& snapshot) const;
  std::string CarriedSince(NextLog* next) const;
  absl::Status WriteNext(NextLog* next, absl::string_view frames) const;
  absl::StatusOr<bool> SwitchToNext(NextLog* next);
  void EndCompaction();
  void DeleteNext(const NextLog& next) const;

  // Non-zero while the log file's name (a switch's rename) is not durable:
  // a sync of file_for_sync() must then also SyncDir(), and report it with
  // DirSynced(generation). [locked]
  uint64_t dir_sync_generation() const { return dir_sync_pending_ ? generation_ : 0; }
  void DirSynced(uint64_t generation);
  // fsync of the state directory. [unlocked]
  absl::Status SyncDir() const { return fs_->SyncDir(dir_); }

  // Bytes in the current log file (compaction trigger).
  int64_t log_bytes() const { return log_bytes_; }
  const std::string& dir() const { return dir_; }

  static std::string LogPath(const std::string& dir);
  static std::string SnapshotPath(const std::string& dir);

 private:
  RegistryLog(std::string dir, checkpoint::FileSystem* fs,
              std::shared_ptr<checkpoint::WritableFile> file, int64_t log_bytes,
              int64_t max_state_bytes)
      : dir_(std::move(dir)),
        fs_(fs),
        file_(std::move(file)),
        log_bytes_(log_bytes),
        max_state_bytes_(max_state_bytes) {}

  // Publishes an empty log in place of the current one and switches to it.
  absl::Status ResetLog();

  const std::string dir_;
  checkpoint::FileSystem* const fs_;
  // Shared with a sync in flight (file_for_sync); closed when the last
  // holder lets go.
  std::shared_ptr<checkpoint::WritableFile> file_;
  // Records appended while a compaction runs (StartCompaction), framed.
  bool carrying_ = false;
  std::vector<std::string> carried_;
  // Bumped by each switch to a new log; dir_sync_pending_ until the
  // directory was synced after it.
  uint64_t generation_ = 1;
  bool dir_sync_pending_ = false;
  int64_t log_bytes_;
  const int64_t max_state_bytes_;
  // Set when a failed append could not be undone; the file's tail is then
  // unknown and nothing more may be appended.
  absl::Status broken_;
};

namespace internal {
// Frame bytes: fixed32 length, fixed32 masked crc, payload.
std::string Frame(absl::string_view payload);
}  // namespace internal

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_REGISTRY_LOG_H_
