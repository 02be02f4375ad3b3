// ShardCheckpointer: a shard's part in coordinated checkpoints. Fence pins a
// copy-on-write snapshot of every variable while the shard holds writes;
// SaveShard streams that snapshot into the shard's data file of the
// checkpoint (PREFIX.data-K-of-N, in chunks, no whole-tensor copies for
// fixed-size dtypes) and hands its index entries to the coordinator;
// PrepareRestore reads this shard's parts straight from a bundle into
// staging, FinishRestore applies or drops them. The coordinator orders the
// steps across shards (coordinator/checkpoint_manager.h).
//
// Snapshots no SaveShard claims (a coordinator that died mid-save) are
// dropped at the next Fence once older than `snapshot_ttl`.
//
// Thread-safety: thread-safe. SaveShard and PrepareRestore do file I/O on
// the calling thread and hold no store lock while doing it.
#ifndef PSD_SERVER_SHARD_SHARD_CHECKPOINT_H_
#define PSD_SERVER_SHARD_SHARD_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "checkpoint/file_system.h"
#include "psd/shard.pb.h"
#include "shard/variable_store.h"

namespace psd {

class ShardCheckpointer {
 public:
  struct Options {
    // Null: FileSystem::Default().
    checkpoint::FileSystem* fs = nullptr;
    absl::Duration default_lease = absl::Seconds(2);
    absl::Duration snapshot_ttl = absl::Minutes(10);
    int64_t default_chunk_bytes = 4 << 20;
  };

  ShardCheckpointer(VariableStore* store, const Options& options);
  explicit ShardCheckpointer(VariableStore* store) : ShardCheckpointer(store, Options()) {}
  ShardCheckpointer(const ShardCheckpointer&) = delete;
  ShardCheckpointer& operator=(const ShardCheckpointer&) = delete;

  absl::Status Fence(const FenceRequest& request, FenceResponse* response);
  absl::Status Unfence(const UnfenceRequest& request, UnfenceResponse* response);
  absl::Status SaveShard(const SaveShardRequest& request, SaveShardResponse* response);
  absl::Status PrepareRestore(const PrepareRestoreRequest& request,
                              PrepareRestoreResponse* response);
  absl::Status FinishRestore(const FinishRestoreRequest& request, FinishRestoreResponse* response);

 private:
  struct Snapshot {
    absl::Time taken_at;
    std::vector<VariableStore::PinnedValue> values;
  };

  VariableStore* const store_;
  const Options options_;
  checkpoint::FileSystem* const fs_;
  absl::Mutex mu_;
  std::map<uint64_t, Snapshot> snapshots_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_CHECKPOINT_H_
