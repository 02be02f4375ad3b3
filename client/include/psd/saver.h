// Saver: the C++ client's tf.compat.v1.train.Saver. Checkpoints are taken
// and restored by the coordinator (paths are on the server side): a save
// fences every shard so the checkpoint is one consistent cut, writes
// TensorFlow's V2 bundle (PREFIX.index + PREFIX.data-K-of-N) plus
// PREFIX.psd-meta, updates the `checkpoint` state file and applies the
// Saver's retention rules (max_to_keep, keep_checkpoint_every_n_hours): the
// Saver's own when SaverOptions sets them, else the coordinator's policy.
// The coordinator keeps the retention state per (directory, state-file
// name), so Savers saving into one directory share it, and it survives a
// restart of the trainer or the coordinator.
//
//   psd::client::SaverOptions options;
//   options.max_to_keep = 3;
//   options.variables = {"model/w", "model/b"};   // var_list; empty: every variable
//   PSD_ASSIGN_OR_RETURN(auto saver,
//                        psd::client::Saver::Create(session->coordinator_address(), options));
//   PSD_ASSIGN_OR_RETURN(std::string path, saver->Save("/ckpt/model.ckpt", step));
//   ...
//   PSD_RETURN_IF_ERROR(saver->Restore(*saver->LatestCheckpoint("/ckpt")));
//
// Calls that find the coordinator down or restarting are retried within
// SaverOptions::retry_budget; errors name the coordinator ("coordinator
// HOST:PORT: ...").
//
// Thread-safety: thread-safe; calls may run concurrently (the coordinator
// runs one save or restore at a time).
#ifndef PSD_CLIENT_INCLUDE_PSD_SAVER_H_
#define PSD_CLIENT_INCLUDE_PSD_SAVER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "psd/channel_security.h"
#include "psd/coordinator.pb.h"

namespace psd {
namespace client {

struct SaverOptions {
  // The state file's name ("checkpoint" when empty).
  std::string latest_filename;
  // Deadline of a save or restore call.
  absl::Duration timeout = absl::Hours(1);
  // Calls that fail UNAVAILABLE (the coordinator is down or restarting, or
  // a shard it needs has not registered yet) are retried for this long,
  // with backoff; zero: one attempt. A save repeated this way writes the
  // same checkpoint again.
  absl::Duration retry_budget = absl::Seconds(30);
  // Nonzero: every save and restore of this Saver carries it, so the
  // coordinator's CheckpointProgress(progress_id) reports the one running
  // (psctl's progress bar). Pick it at random.
  uint64_t progress_id = 0;
  // TLS and bearer token of the coordinator channel; default: plaintext.
  ChannelSecurity security;
  // tf.train.Saver's retention; unset: the coordinator's policy (psd
  // coordinator --max-to-keep / --keep-checkpoint-every-n-hours, psctl ckpt
  // policy). max_to_keep 0 keeps every checkpoint. keep_checkpoint_every_n_hours
  // counts from when the Saver was created.
  std::optional<int> max_to_keep;
  std::optional<double> keep_checkpoint_every_n_hours;
  // var_list, by full name: what Save writes and what Restore brings back
  // (unless RestoreOptions names variables). Empty, and no name_map: every
  // variable of the cluster.
  std::vector<std::string> variables;
  // var_list's dict form: checkpoint name -> variable name.
  std::map<std::string, std::string> name_map;
};

// What a save did besides returning its prefix.
struct SaveDetails {
  std::string prefix;
  int64_t bytes = 0;
  absl::Duration fence_pause;  // how long writes were held
  int64_t copied_bytes = 0;    // copy-on-write during the save
  double seconds = 0;
  std::vector<std::string> deleted;  // checkpoints retention removed
};

struct RestoreOptions {
  // Variables to restore (full names); empty and no name_map: the Saver's
  // var_list (SaverOptions), else all.
  std::vector<std::string> variables;
  // Saver's dict form: checkpoint name -> variable name.
  std::map<std::string, std::string> name_map;
  // TensorFlow's Saver(reshape=True): a tensor of another shape but as many
  // elements restores into an unpartitioned variable's shape. Without it a
  // shape difference is INVALID_ARGUMENT.
  bool reshape = false;
};

// What a restore did.
struct RestoreDetails {
  std::string prefix;                 // the checkpoint restored
  std::vector<std::string> restored;  // variable names
  int64_t bytes = 0;
  double seconds = 0;
};

struct CheckpointStateInfo {
  std::string model_checkpoint_path;
  std::vector<std::string> all_model_checkpoint_paths;
};

class Saver {
 public:
  static absl::StatusOr<std::unique_ptr<Saver>> Create(const std::string& coordinator_address,
                                                       const SaverOptions& options = {});
  ~Saver();
  Saver(const Saver&) = delete;
  Saver& operator=(const Saver&) = delete;

  // Saver.save: returns exactly the checkpoint's prefix (PREFIX-STEP with a
  // step). An empty prefix saves under the coordinator's checkpoint
  // directory as "model.ckpt". Writes the var_list only, when one is set;
  // a name in it that is not a variable is NOT_FOUND and nothing is saved.
  absl::StatusOr<std::string> Save(const std::string& prefix,
                                   std::optional<int64_t> global_step = std::nullopt,
                                   SaveDetails* details = nullptr);
  // Saver.restore: PREFIX, a directory (its latest), or "" / "latest". A
  // variable missing from the checkpoint is NOT_FOUND "... not found in
  // checkpoint"; a damaged file is DATA_LOSS and nothing is restored.
  absl::Status Restore(const std::string& prefix, const RestoreOptions& options = {},
                       RestoreDetails* details = nullptr);

  // Saver.last_checkpoints: the checkpoints retention still manages in the
  // directory of this saver's last save ("" : the coordinator's), oldest
  // first.
  absl::StatusOr<std::vector<std::string>> LastCheckpoints();
  // The checkpoints the coordinator lists in `dir` ("": its checkpoint
  // directory), oldest first: those retention manages and those it keeps
  // for good (keep_checkpoint_every_n_hours).
  absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& dir = "");
  // tf.train.update_checkpoint_state: writes `dir`'s state file ("" : the
  // coordinator's directory; this Saver's latest_filename) naming
  // `model_checkpoint_path` as the latest.
  absl::Status UpdateCheckpointState(const std::string& dir,
                                     const std::string& model_checkpoint_path,
                                     const std::vector<std::string>& all_model_checkpoint_paths);
  // Saver.set_last_checkpoints_with_time: `checkpoints` (prefix, seconds
  // since the epoch; oldest first) become the list retention works on, so
  // later saves pop and delete from it as TensorFlow's Saver does. Retention
  // is per directory (shared by the Savers saving there, this one's track:
  // its own policy's or the cluster's): each checkpoint goes to its
  // directory's list, and the lists of the directory of this Saver's last
  // save and of `also_dirs` ("": the coordinator's) are replaced too, empty
  // when no checkpoint given is in them. Every path must be an absolute,
  // existing checkpoint under the coordinator's writable roots:
  // INVALID_ARGUMENT, PERMISSION_DENIED or NOT_FOUND naming it otherwise,
  // and nothing changes. LastCheckpoints then lists the directory of the
  // last checkpoint given.
  absl::Status SetLastCheckpointsWithTime(
      const std::vector<std::pair<std::string, double>>& checkpoints,
      const std::vector<std::string>& also_dirs = {});
  // Saver.set_last_checkpoints: as above with time +inf, which TensorFlow
  // uses so that they are never deleted (kept for good when they leave the
  // list while keep_checkpoint_every_n_hours is set).
  absl::Status SetLastCheckpoints(const std::vector<std::string>& paths,
                                  const std::vector<std::string>& also_dirs = {});
  // What this Saver was made with (psd/meta_graph.h's SaverDef records it).
  const SaverOptions& options() const;
  // tf.train.latest_checkpoint: nullopt when there is none.
  absl::StatusOr<std::optional<std::string>> LatestCheckpoint(const std::string& dir = "");
  // tf.train.get_checkpoint_state: nullopt without a state file.
  absl::StatusOr<std::optional<CheckpointStateInfo>> GetCheckpointState(
      const std::string& dir = "");

 private:
  class Impl;
  explicit Saver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_INCLUDE_PSD_SAVER_H_
