// The coordinator's metrics beyond RPCs: the cluster as it sees it (live
// and down shards, per shard variables, placed bytes, memory use and limit,
// lost parts) computed at each scrape, and checkpoints (save and restore
// counts by result, durations, sizes, fence pauses, last success time) fed
// by the checkpoint manager's completion hooks.
//
// Thread-safety: thread-safe. The hooks may run on any thread.
#ifndef PSD_SERVER_COORDINATOR_COORDINATOR_METRICS_H_
#define PSD_SERVER_COORDINATOR_COORDINATOR_METRICS_H_

#include "absl/status/statusor.h"
#include "coordinator/coordinator_service.h"
#include "observability/metrics.h"
#include "psd/coordinator.pb.h"

namespace psd {

class CheckpointMetrics {
 public:
  explicit CheckpointMetrics(MetricsRegistry* registry);

  // For CheckpointManagerOptions::on_save / on_restore.
  void OnSave(const absl::StatusOr<SaveCheckpointResponse>& result);
  void OnRestore(const absl::StatusOr<RestoreCheckpointResponse>& result);

 private:
  Family<Counter>* const saves_;
  Histogram* const save_seconds_;
  Histogram* const fence_seconds_;
  Gauge* const last_save_bytes_;
  Gauge* const last_success_;
  Family<Counter>* const restores_;
  Histogram* const restore_seconds_;
  Gauge* const last_restore_bytes_;
};

// Live part moves: counts by result, bytes, forwarded writes, and how long
// each move's switch held the group's writes.
class MoveMetrics {
 public:
  explicit MoveMetrics(MetricsRegistry* registry);
  // For CoordinatorServiceOptions::on_move.
  void OnMove(const absl::StatusOr<MovePartResponse>& result);

 private:
  Family<Counter>* const moves_;
  Counter* const bytes_;
  Counter* const forwarded_writes_;
  Histogram* const seconds_;
  Histogram* const writes_held_seconds_;
};

// Registers the scrape-time gauges of the cluster view; `service` must
// outlive `registry`'s scrapes.
void AddClusterMetrics(MetricsRegistry* registry, const CoordinatorService* service);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_COORDINATOR_METRICS_H_
