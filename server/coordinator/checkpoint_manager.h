// CheckpointManager: the coordinator's side of checkpoints (docs/design.md,
// "Checkpoints"). It orders the shards through a consistent save and an
// all-or-nothing restore, and owns what lives beside the data: the merged
// .index, PREFIX.psd-meta (the registry at save time), the `checkpoint`
// state file and the TF1 Saver's retention state per (directory, state-file
// name), persisted beside the state file and resumed after a restart.
//
// A save (docs/architecture.md, "Checkpoints"; checkpoint/publish.h):
//   0. Recover the prefix's directory (roll a complete publish journal
//      forward, delete orphan staging files of killed saves).
//   1. Fence every shard holding parts (each holds new writes, waits for
//      running ones, pins a copy-on-write snapshot); if any fence fails, or
//      the fence lease ran out before the last shard answered, unfence with
//      discard and fail ABORTED.
//   2. Unfence every shard: training goes on.
//   3. SaveShard on every shard in parallel, under a staging prefix unique
//      to the save: STAGING.data-K-of-N (STAGING = PREFIX.psd-staging-<id>).
//   4. STAGING.psd-meta and the merged STAGING.index (fsynced), then the
//      publish journal PREFIX.psd-publish (the commit point), the renames
//      STAGING.* -> PREFIX.* (index last) and the journal's deletion. No
//      file of a checkpoint published at PREFIX is modified or deleted
//      before the journal exists; a failure before it deletes the staging
//      files and leaves PREFIX as it was, a kill leaves orphans that the
//      next recovery deletes.
//   5. Retention (TF1 Saver, exact), the state file, then deletion of at
//      most one dropped checkpoint.
// A request's var_list (variables, name_map) limits the save to those
// variables, under their checkpoint names; only the shards holding them are
// fenced, and PREFIX.psd-meta lists just them (under the checkpoint names).
// Because every shard's snapshot is taken while every shard holds writes,
// a trainer that acknowledges `a += 1` before sending `b += 1` always finds
// b <= a <= b + 1 in a checkpoint.
//
// Where: every path a request names (prefix, directory) must resolve
// (realpath of its existing part: "..", symlinks) under one of the
// checkpoint roots (the configured directory and `roots`; `read_roots` for
// restores and listings only), and a latest_filename is a plain file name;
// otherwise PERMISSION_DENIED naming the roots.
//
// Retention: two independent Saver states per (directory, state file): the
// cluster's (periodic saves, psctl, Savers without their own policy), under
// the coordinator's policy, and the trainer Savers' (requests carrying
// max_to_keep / keep_checkpoint_every_n_hours), under theirs. Each deletes
// only checkpoints it recorded itself (and only files psd wrote: a
// PREFIX.psd-meta beside them, in that directory, not held by the other
// state); the state file lists both, oldest first.
//
// A restore reads the index once here to check names, then every shard
// reads its parts' slices from the bundle itself (PrepareRestore, staged),
// and only when every shard staged its parts do they apply them
// (FinishRestore). A corrupt file fails the prepare with DATA_LOSS naming the
// file and tensor, and nothing is applied.
//
// Progress: a save or restore whose request carries a progress_id is
// reported by Progress() while it runs (and a minute after). A save asks
// each shard for about save_call_bytes at a time (SaveShard's max_bytes),
// a restore stages each shard's parts in batches of about as many bytes,
// so the bytes done move as the shards work.
//
// Thread-safety: thread-safe. Saves and restores are serialized by op_mu_
// (one at a time; held across their shard RPCs and file I/O, which only
// another save or restore waits for; TrySave does not wait). Readers
// (List, Latest, GetState, Progress, Policy) never take op_mu_: the
// retention map has its own short lock (state_mu_, never held across an RPC),
// the progress board and the policy theirs.
#ifndef PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_H_
#define PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "checkpoint/checkpoint_state.h"
#include "checkpoint/file_system.h"
#include "coordinator/registry.h"
#include "psd/coordinator.pb.h"
#include "psd/shard.grpc.pb.h"

namespace psd {

struct CheckpointManagerOptions {
  // Where saves go by default and where "latest" is looked up; may be empty
  // (then every request names its path). A checkpoint root.
  std::string dir;
  // More directories saves may write under (checkpoint.roots,
  // --checkpoint-roots), and directories restores and listings may read
  // under (e.g. --restore-from's). With no dir and no roots, every save,
  // restore and listing is PERMISSION_DENIED.
  std::vector<std::string> roots;
  std::vector<std::string> read_roots;
  checkpoint::SaverRetention::Policy policy;
  absl::Duration fence_lease = absl::Seconds(2);
  // Deadline of one shard's SaveShard / PrepareRestore.
  absl::Duration io_timeout = absl::Hours(1);
  absl::Duration rpc_timeout = absl::Seconds(30);
  // Null: FileSystem::Default().
  checkpoint::FileSystem* fs = nullptr;
  // Seconds since the epoch; replaceable for tests.
  std::function<double()> now;
  // Where a policy set at run time (Policy RPC) is persisted, so it
  // survives a restart (it then wins over `policy`); empty: not persisted.
  std::string policy_file;
  // Told of every save and restore once it ended, ok or not (metrics);
  // called on the caller's thread, must not block. Empty: nobody.
  std::function<void(const absl::StatusOr<SaveCheckpointResponse>&)> on_save;
  std::function<void(const absl::StatusOr<RestoreCheckpointResponse>&)> on_restore;
  // Bytes per SaveShard call and per PrepareRestore batch: each answer
  // moves the progress; 0: one call per shard.
  int64_t progress_step_bytes = 64 << 20;
};

// The progress of saves and restores by progress_id (0: not tracked).
// Finished ones are forgotten a minute after they end.
//
// Thread-safety: thread-safe.
class CheckpointProgressBoard {
 public:
  void Start(uint64_t id, const std::string& operation, const std::string& phase);
  void SetPhase(uint64_t id, const std::string& phase);
  void SetPrefix(uint64_t id, const std::string& prefix);
  void AddTotal(uint64_t id, int64_t bytes);
  void AddDone(uint64_t id, int64_t bytes);
  void Finish(uint64_t id, const absl::Status& status);
  CheckpointProgressResponse Get(uint64_t id) const;
  // The tracked operations still running (the console shows them).
  std::vector<CheckpointProgressResponse> Running() const;

 private:
  struct Entry {
    CheckpointProgressResponse state;
    absl::Time started;
    absl::Time ended = absl::InfiniteFuture();
  };
  // Runs `fn` on the entry of a tracked id.
  template <typename Fn>
  void Update(uint64_t id, Fn fn);

  mutable absl::Mutex mu_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

class CheckpointManager {
 public:
  // What a part move's owner switch holds exclusively: saves (placement
  // read to fences up) and restores (throughout) hold it shared.
  absl::Mutex* placement_mu() ABSL_LOCK_RETURNED(placement_mu_) { return &placement_mu_; }
  // How the manager reaches shards; implemented by CoordinatorService.
  struct ShardAccess {
    // The stub of a registered shard, or UNAVAILABLE.
    std::function<absl::StatusOr<std::shared_ptr<Shard::Stub>>(int32_t shard_id)> stub;
    // Parts restored: no longer lost.
    std::function<void(const std::vector<std::pair<int32_t, std::string>>& parts)> restored;
  };

  CheckpointManager(Registry* registry, ShardAccess access, CheckpointManagerOptions options);
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // Recovers the configured directory after a restart: rolls complete
  // publish journals forward, removes staging files and temp files that
  // interrupted saves left. Returns how many files were removed.
  int CleanUpTempFiles();
  // The resolved roots (writable ones first), for messages.
  std::string RootsForMessage() const;

  absl::StatusOr<SaveCheckpointResponse> Save(const SaveCheckpointRequest& request);
  absl::StatusOr<RestoreCheckpointResponse> Restore(const RestoreCheckpointRequest& request);
  // NOT_FOUND when there is none.
  absl::StatusOr<std::string> Latest(const std::string& dir, const std::string& latest_filename);
  absl::StatusOr<GetCheckpointStateResponse> GetState(const std::string& dir,
                                                      const std::string& latest_filename);
  absl::StatusOr<ListCheckpointsResponse> List(const std::string& dir,
                                               const std::string& latest_filename);
  // The UpdateCheckpointState RPC: PERMISSION_DENIED outside the roots,
  // INVALID_ARGUMENT for an empty model path; waits for a running save.
  absl::Status UpdateState(const UpdateCheckpointStateRequest& request);
  // The SetLastCheckpoints RPC (Saver.set_last_checkpoints): replaces the
  // retention list of each directory named (one track: the request's
  // own_policy). INVALID_ARGUMENT for a relative path or a NaN time,
  // PERMISSION_DENIED outside the writable roots, NOT_FOUND for a missing
  // checkpoint, each naming the path and changing nothing; waits for a
  // running save.
  absl::Status SetLastCheckpoints(const SetLastCheckpointsRequest& request);
  // The Policy RPC: the retention policy, after applying `set` (null: read
  // only). INVALID_ARGUMENT naming the value for a negative max_to_keep or
  // a keep_checkpoint_every_n_hours that is not a positive number, nothing
  // changed.
  absl::StatusOr<CheckpointPolicy> Policy(const CheckpointPolicy* set);
  // INVALID_ARGUMENT "`what`: ..." unless `max_to_keep` (when given) is >= 0
  // and `hours` (when given) a positive, finite number: the one rule of
  // Policy and of a save's own retention.
  static absl::Status CheckRetention(std::optional<int64_t> max_to_keep,
                                     std::optional<double> hours, absl::string_view what);
  // The CheckpointProgress RPC.
  CheckpointProgressResponse Progress(uint64_t progress_id) const {
    return progress_.Get(progress_id);
  }
  // Saves and restores with a progress_id that are running now.
  std::vector<CheckpointProgressResponse> Running() const { return progress_.Running(); }

  // Like Save, but ABORTED at once when a save or restore is running
  // (periodic saves skip a tick instead of queueing behind one).
  absl::StatusOr<SaveCheckpointResponse> TrySave(const SaveCheckpointRequest& request);
  // Restores only `parts` of shard `shard_id` (parts lost by a shard that
  // came back empty) from the latest checkpoint of the configured
  // directory; the other parts of their variables are left alone.
  // NOT_FOUND when there is no checkpoint.
  absl::StatusOr<RestoreCheckpointResponse> RestoreParts(int32_t shard_id,
                                                         const std::vector<std::string>& parts);
  // A checkpoint directory (its latest checkpoint) or a prefix -> the
  // prefix; errors as Restore's.
  absl::StatusOr<std::string> ResolvePrefix(const std::string& dir_or_prefix);
  // PREFIX.psd-meta.
  absl::StatusOr<CheckpointMeta> ReadMeta(const std::string& prefix);
  // The value of an integer scalar variable (the global step), read from
  // its shard.
  absl::StatusOr<int64_t> ReadIntScalar(const std::string& name);
  const std::string& dir() const { return options_.dir; }

 private:
  std::string DirOrDefault(const std::string& dir) const;
  // The directory Latest, GetState and List read (`dir`, else the
  // configured one) once it and `latest_filename` pass the checks below;
  // `what` names the caller in their errors.
  absl::StatusOr<std::string> ListedDir(const std::string& dir, const std::string& latest_filename,
                                        const std::string& what) const;
  // OK if `path` (a directory) resolves under a root (writable ones for
  // `write`); else PERMISSION_DENIED "`what`: ... outside the roots".
  absl::Status CheckUnderRoots(const std::string& path, bool write, const std::string& what) const;
  // PERMISSION_DENIED unless `name` is a plain file name (or empty).
  absl::Status CheckLatestFilename(const std::string& name, const std::string& what) const;
  // Recovery of `dir` before a save or restore uses it.
  void RecoverDir(const std::string& dir) ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  double Now() const;
  // The Saver state for (dir, name), loaded from disk on first use (a new
  // one counts keep_checkpoint_every_n_hours from `built_at`). A save passes
  // its effective policy: a Saver's own keep_checkpoint_every_n_hours that
  // differs from the state's restarts the keep clock at `built_at`, as a new
  // TensorFlow Saver would. Null `save_policy` (listing): left as it is.
  // `saver_track`: the trainer Savers' state (requests carrying a policy),
  // else the cluster's.
  checkpoint::SaverRetention* RetentionFor(const std::string& dir, const std::string& name,
                                           bool saver_track,
                                           const checkpoint::SaverRetention::Policy* save_policy,
                                           bool saver_policy, double built_at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_mu_);
  checkpoint::SaverRetention::Policy CurrentPolicy() const;
  // The stubs of `shards`, in their order; a shard without one fails the
  // whole as "`what`: shard ID: ...".
  absl::StatusOr<std::vector<std::shared_ptr<Shard::Stub>>> StubsFor(
      const std::vector<int32_t>& shards, const std::string& what) const;
  absl::StatusOr<std::string> ResolveRestorePrefix(const RestoreCheckpointRequest& request);
  // Save and TrySave: SaveLocked with its progress entry and on_save.
  absl::StatusOr<SaveCheckpointResponse> SaveTracked(const SaveCheckpointRequest& request,
                                                     bool try_only);
  absl::StatusOr<SaveCheckpointResponse> SaveLocked(const SaveCheckpointRequest& request,
                                                    bool try_only);
  // `only_parts` null: every part of the targets; else just those on
  // `only_shard` named in it.
  absl::StatusOr<RestoreCheckpointResponse> RestoreLocked(const RestoreCheckpointRequest& request,
                                                          const std::set<std::string>* only_parts,
                                                          int32_t only_shard);

  Registry* const registry_;
  const ShardAccess access_;
  CheckpointManagerOptions options_;
  checkpoint::FileSystem* const fs_;

  // Roots, resolved at construction (realpath of the existing part).
  std::vector<std::string> write_roots_;
  std::vector<std::string> read_roots_;

  // One save or restore at a time; readers never take it.
  absl::Mutex op_mu_;
  // Held shared by a save from reading the placement until every shard is
  // fenced and pinned, and by a restore throughout; a part move's owner
  // switch holds it exclusively (placement_mu()), so a save's cut holds
  // each part once and a restore writes where the parts are.
  absl::Mutex placement_mu_ ABSL_ACQUIRED_AFTER(op_mu_);
  // The retention states; taken for short, in-memory work only (plus the
  // first load of a state from disk).
  mutable absl::Mutex state_mu_ ABSL_ACQUIRED_AFTER(op_mu_);
  // (directory, state file, saver track) -> state.
  std::map<std::tuple<std::string, std::string, bool>, checkpoint::SaverRetention> retention_
      ABSL_GUARDED_BY(state_mu_);
  mutable absl::Mutex policy_mu_;
  checkpoint::SaverRetention::Policy policy_ ABSL_GUARDED_BY(policy_mu_);
  CheckpointProgressBoard progress_;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_H_
