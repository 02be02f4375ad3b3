// The `checkpoint` state file of a checkpoint directory and the TF1 Saver's
// retention rules (specs/tf-checkpoint-format.md §2): the state file is the
// protobuf text format of CheckpointState, written crash-safely (temp file,
// fsync, rename, directory fsync); SaverRetention is the Saver's
// `_last_checkpoints` / `_checkpoints_to_be_deleted` / `_next_checkpoint_time`
// bookkeeping, exactly as tf.compat.v1.train.Saver runs it, in a form that
// can be persisted and resumed after a restart.
//
//   SaverRetention retention(policy, now);          // or FromState(...)
//   retention.RecordCheckpoint(prefix, now);         // step 1
//   WriteCheckpointState(fs, dir, prefix, retention.last_checkpoints(), "checkpoint");
//   if (auto q = retention.NextDeletion()) DeleteCheckpointFiles(fs, *q);  // step 3
//
// Free functions are thread-safe; SaverRetention is thread-compatible.
#ifndef PSD_COMMON_CHECKPOINT_CHECKPOINT_STATE_H_
#define PSD_COMMON_CHECKPOINT_CHECKPOINT_STATE_H_

#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "checkpoint/file_system.h"
#include "psd/coordinator.pb.h"
#include "psd/tensor_bundle.pb.h"

namespace psd::checkpoint {

inline constexpr char kDefaultStateFilename[] = "checkpoint";

// The text Python's text_format.MessageToString writes: one field per line,
// strings C-escaped in double quotes, doubles in shortest form.
std::string CheckpointStateToText(const tf::CheckpointState& state);
// INVALID_ARGUMENT on a parse error; `what` names the file.
absl::StatusOr<tf::CheckpointState> ParseCheckpointState(absl::string_view text,
                                                         absl::string_view what);

// generate_checkpoint_state_proto: `model_path` is appended to `all_paths`
// unless it is already last; with a relative `save_dir`, paths under it are
// made relative to it.
tf::CheckpointState GenerateCheckpointState(absl::string_view save_dir,
                                            absl::string_view model_path,
                                            std::vector<std::string> all_paths);

// Writes <dir>/<latest_filename> crash-safely. INVALID_ARGUMENT if
// `latest_filename` has a directory part or the state file would be
// `model_path` itself.
absl::Status WriteCheckpointState(FileSystem* fs, const std::string& dir,
                                  const std::string& model_path,
                                  const std::vector<std::string>& all_paths,
                                  const std::string& latest_filename);

// get_checkpoint_state: NOT_FOUND if there is no state file, INVALID_ARGUMENT
// if it does not parse or names no model path. Relative paths come back
// joined onto `dir` (unnormalized, like TensorFlow).
absl::StatusOr<tf::CheckpointState> GetCheckpointState(FileSystem* fs, const std::string& dir,
                                                       const std::string& latest_filename);

// latest_checkpoint: the state file's model path if PREFIX.index (or a V1
// file PREFIX) exists; NOT_FOUND otherwise.
absl::StatusOr<std::string> LatestCheckpoint(FileSystem* fs, const std::string& dir,
                                             const std::string& latest_filename);

// The data files of `prefix` present on disk (PREFIX.data-?????-of-?????).
std::vector<std::string> ListDataFiles(FileSystem* fs, const std::string& prefix);
// Deletes PREFIX.index, its data files, PREFIX.meta and PREFIX.psd-meta,
// ignoring errors (as the Saver does), then fsyncs the directory.
void DeleteCheckpointFiles(FileSystem* fs, const std::string& prefix);
// "PREFIX.psd-meta".
std::string MetaFilename(absl::string_view prefix);
// Where SaverRetention's state for (dir, latest_filename) is persisted.
std::string RetentionStateFilename(const std::string& dir, const std::string& latest_filename);

class SaverRetention {
 public:
  struct Policy {
    // 0 (or negative): keep every checkpoint; the list stays empty.
    int max_to_keep = 5;
    double keep_checkpoint_every_n_hours = 10000.0;
  };

  // A Saver built at `now` (seconds since the epoch) with no history.
  SaverRetention(const Policy& policy, double now);
  // Resumes persisted state under `policy`.
  static SaverRetention FromState(const Policy& policy, const SaverRetentionState& state);
  SaverRetentionState ToState() const;

  const Policy& policy() const { return policy_; }
  void set_policy(const Policy& policy) { policy_ = policy; }

  // _RecordLastCheckpoint: a re-saved path moves to the end; past
  // max_to_keep the oldest goes to the to-be-deleted queue.
  void RecordCheckpoint(const std::string& path, double now);
  // _MaybeDeleteOldCheckpoints: pops at most one queued checkpoint and
  // returns it if its files are to be deleted (nullopt if the queue was empty
  // or keep_checkpoint_every_n_hours keeps it forever).
  std::optional<std::string> NextDeletion();
  // set_last_checkpoints: the paths get timestamp +inf (never deleted).
  void SetLastCheckpoints(const std::vector<std::string>& paths);
  // set_last_checkpoints_with_time: the list, oldest first, becomes the one
  // later saves pop from; a path in it is managed again, not kept for good.
  void SetLastCheckpointsWithTime(const std::vector<std::pair<std::string, double>>& list);

  std::vector<std::string> last_checkpoints() const;
  const std::vector<std::pair<std::string, double>>& last_checkpoints_with_time() const {
    return last_;
  }
  const std::vector<std::string>& kept_forever() const { return kept_forever_; }
  double next_checkpoint_time() const { return next_checkpoint_time_; }

 private:
  SaverRetention() = default;

  Policy policy_;
  std::vector<std::pair<std::string, double>> last_;       // oldest first
  std::deque<std::pair<std::string, double>> to_delete_;  // FIFO
  double next_checkpoint_time_ = 0;
  std::vector<std::string> kept_forever_;
};

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_CHECKPOINT_STATE_H_
