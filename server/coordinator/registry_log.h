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
// Thread-compatible: the Registry calls it under its own mutex.
#ifndef PSD_SERVER_COORDINATOR_REGISTRY_LOG_H_
#define PSD_SERVER_COORDINATOR_REGISTRY_LOG_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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
  // refused (RESOURCE_EXHAUSTED) and nothing is written.
  static absl::StatusOr<std::unique_ptr<RegistryLog>> Open(
      const std::string& dir, Recovered* recovered, int64_t max_state_bytes = kMaxStateBytes);
  ~RegistryLog();
  RegistryLog(const RegistryLog&) = delete;
  RegistryLog& operator=(const RegistryLog&) = delete;

  // Appends one record; with `sync` it is on stable storage when this
  // returns OK. A failed append leaves the log as it was (or, if even that
  // cannot be ensured, refuses every later append).
  absl::Status Append(const RegistryRecord& record, bool sync);

  // Publishes `snapshot` and starts an empty log. A snapshot that cannot be
  // serialized (over max_state_bytes) is RESOURCE_EXHAUSTED and leaves the
  // published snapshot and the log as they were.
  absl::Status Compact(const RegistrySnapshot& snapshot);

  // Bytes in the current log file (compaction trigger).
  int64_t log_bytes() const { return log_bytes_; }
  const std::string& dir() const { return dir_; }

  static std::string LogPath(const std::string& dir);
  static std::string SnapshotPath(const std::string& dir);

 private:
  RegistryLog(std::string dir, int fd, int64_t log_bytes, int64_t max_state_bytes)
      : dir_(std::move(dir)), fd_(fd), log_bytes_(log_bytes), max_state_bytes_(max_state_bytes) {}

  const std::string dir_;
  int fd_;
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
