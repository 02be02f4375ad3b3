// CheckpointManager: the coordinator's side of checkpoints (DESIGN.md,
// "Checkpoints"). It orders the shards through a consistent save and an
// all-or-nothing restore, and owns what lives beside the data: the merged
// .index, PREFIX.psd-meta (the registry at save time), the `checkpoint`
// state file and the TF1 Saver's retention state per (directory, state-file
// name), persisted beside the state file and resumed after a restart.
//
// A save:
//   1. Fence every shard holding parts (each holds new writes, waits for
//      running ones, pins a copy-on-write snapshot); if any fence fails, or
//      the fence lease ran out before the last shard answered, unfence with
//      discard and fail ABORTED.
//   2. Unfence every shard: training goes on.
//   3. SaveShard on every shard in parallel: PREFIX.data-K-of-N.
//   4. Write PREFIX.psd-meta, then merge and publish PREFIX.index (temp +
//      fsync + rename + directory fsync). The index is the commit point: a
//      process killed earlier leaves no index, so nothing lists the
//      checkpoint.
//   5. Retention (TF1 Saver, exact), the state file, then deletion of at
//      most one dropped checkpoint. The policy is the coordinator's unless
//      the request carries the Saver's own max_to_keep /
//      keep_checkpoint_every_n_hours.
// A request's var_list (variables, name_map) limits the save to those
// variables, under their checkpoint names; only the shards holding them are
// fenced, and PREFIX.psd-meta lists just them (under the checkpoint names).
// Because every shard's snapshot is taken while every shard holds writes,
// a trainer that acknowledges `a += 1` before sending `b += 1` always finds
// b <= a <= b + 1 in a checkpoint.
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
// Thread-safety: thread-safe. Saves and restores are serialized (one at a
// time); shard RPCs run in parallel on short-lived threads, with no lock
// but that one held. Progress() takes only the progress board's lock.
#ifndef PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_H_
#define PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
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
  // (then every request names its path).
  std::string dir;
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

  // Removes temp files an interrupted save left in the configured
  // directory. Returns how many.
  int CleanUpTempFiles();

  absl::StatusOr<SaveCheckpointResponse> Save(const SaveCheckpointRequest& request);
  absl::StatusOr<RestoreCheckpointResponse> Restore(const RestoreCheckpointRequest& request);
  // NOT_FOUND when there is none.
  absl::StatusOr<std::string> Latest(const std::string& dir, const std::string& latest_filename);
  absl::StatusOr<GetCheckpointStateResponse> GetState(const std::string& dir,
                                                      const std::string& latest_filename);
  absl::StatusOr<ListCheckpointsResponse> List(const std::string& dir,
                                               const std::string& latest_filename);
  CheckpointPolicy Policy(const CheckpointPolicy* set);
  // The CheckpointProgress RPC.
  CheckpointProgressResponse Progress(uint64_t progress_id) const {
    return progress_.Get(progress_id);
  }

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
  double Now() const;
  // The Saver state for (dir, name), loaded from disk on first use (a new
  // one counts keep_checkpoint_every_n_hours from `built_at`). A save passes
  // its effective policy: a Saver's own keep_checkpoint_every_n_hours that
  // differs from the state's restarts the keep clock at `built_at`, as a new
  // TensorFlow Saver would. Null `save_policy` (listing): left as it is.
  checkpoint::SaverRetention* RetentionFor(const std::string& dir, const std::string& name,
                                           const checkpoint::SaverRetention::Policy* save_policy,
                                           bool saver_policy, double built_at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  checkpoint::SaverRetention::Policy CurrentPolicy() const;
  absl::Status PersistRetention(const std::string& dir, const std::string& name,
                                const checkpoint::SaverRetention& r);
  absl::StatusOr<std::string> ResolveRestorePrefix(const RestoreCheckpointRequest& request);
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

  // One save or restore at a time.
  absl::Mutex op_mu_;
  std::map<std::pair<std::string, std::string>, checkpoint::SaverRetention> retention_
      ABSL_GUARDED_BY(op_mu_);
  mutable absl::Mutex policy_mu_;
  checkpoint::SaverRetention::Policy policy_ ABSL_GUARDED_BY(policy_mu_);
  CheckpointProgressBoard progress_;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_H_
