// ShardCheckpointer: a shard's part in coordinated checkpoints. Fence pins a
// copy-on-write snapshot of every variable while the shard holds writes;
// SaveShard streams that snapshot into the shard's data file of the
// checkpoint (PREFIX.data-K-of-N, in chunks, no whole-tensor copies for
// fixed-size dtypes) and hands its index entries to the coordinator;
// PrepareRestore reads this shard's parts straight from a bundle into
// staging, FinishRestore applies or drops them. The coordinator orders the
// steps across shards (coordinator/checkpoint_manager.h).
//
// A SaveShard with max_bytes answers after about that many bytes and keeps
// its writer with the snapshot; the next call goes on from there, so the
// coordinator sees each shard's progress.
//
// Snapshots no SaveShard claims (a coordinator that died mid-save) are
// dropped at the next Fence once untouched for `snapshot_ttl`.
//
// Thread-safety: thread-safe. SaveShard and PrepareRestore do file I/O on
// the calling thread and hold no store lock while doing it.
#ifndef PSD_SERVER_SHARD_SHARD_CHECKPOINT_H_
#define PSD_SERVER_SHARD_SHARD_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/bundle_writer.h"
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
  // Where a save that answered with `more` goes on.
  struct SaveCursor {
    std::unique_ptr<checkpoint::BundleWriter> writer;
    std::string prefix;
    int parts = 0;         // the request's number of parts
    int next_part = 0;     // the part being written
    int64_t offset = 0;    // its bytes appended so far (fixed-size dtypes)
    int64_t total_bytes = 0;
  };
  struct Snapshot {
    absl::Time touched_at;  // taken, or last resumed by SaveShard
    std::vector<VariableStore::PinnedValue> values;
    std::unique_ptr<SaveCursor> save;  // null until a SaveShard began
  };

  // Starts writing `snap` for `request`: checks every part, opens the
  // writer.
  absl::Status BeginSave(const SaveShardRequest& request, Snapshot* snap);
  // Writes an embedding table's part (or slot) `v` as DeepRec stores one:
  // NAME-values [rows, dim], NAME-keys, NAME-freqs and NAME-versions [rows].
  absl::Status SaveTablePart(const std::string& name, const VariableStore::PinnedValue& v,
                             checkpoint::BundleWriter* writer);
  // Stages the rows of saved table part `source` whose keys belong to
  // restore part `part`; returns the bytes of values read.
  absl::StatusOr<int64_t> StageTableSource(const checkpoint::BundleReader& reader,
                                           uint64_t restore_id, const RestorePart& part,
                                           const std::string& source);

  VariableStore* const store_;
  const Options options_;
  checkpoint::FileSystem* const fs_;
  absl::Mutex mu_;
  std::map<uint64_t, Snapshot> snapshots_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_CHECKPOINT_H_
