#include "coordinator/coordinator_metrics.h"

#include <chrono>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace psd {

namespace {

// Checkpoint durations: 10 ms to an hour.
std::vector<double> CheckpointBuckets() {
  return {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
}

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

CheckpointMetrics::CheckpointMetrics(MetricsRegistry* registry)
    : saves_(registry->CounterFamily("psd_checkpoint_saves_total",
                                     "Checkpoint saves that ended, by result (OK or the status code)",
                                     {"result"})),
      save_seconds_(registry
                        ->HistogramFamily("psd_checkpoint_save_duration_seconds",
                                          "Duration of successful saves", {}, CheckpointBuckets())
                        ->Get({})),
      fence_seconds_(registry
                         ->HistogramFamily("psd_checkpoint_fence_pause_seconds",
                                           "How long a save's fence held writes on the shards", {},
                                           LatencyBuckets())
                         ->Get({})),
      last_save_bytes_(registry
                           ->GaugeFamily("psd_checkpoint_last_save_bytes",
                                         "Size of the last successful checkpoint (data and index)")
                           ->Get({})),
      last_success_(registry
                        ->GaugeFamily("psd_checkpoint_last_success_timestamp_seconds",
                                      "When the last save succeeded, seconds since the epoch "
                                      "(0: none since start)")
                        ->Get({})),
      restores_(registry->CounterFamily("psd_checkpoint_restores_total",
                                        "Restores that ended, by result (OK or the status code)",
                                        {"result"})),
      restore_seconds_(registry
                           ->HistogramFamily("psd_checkpoint_restore_duration_seconds",
                                             "Duration of successful restores", {},
                                             CheckpointBuckets())
                           ->Get({})),
      last_restore_bytes_(registry
                              ->GaugeFamily("psd_checkpoint_last_restore_bytes",
                                            "Bytes read by the last successful restore")
                              ->Get({})) {}

void CheckpointMetrics::OnSave(const absl::StatusOr<SaveCheckpointResponse>& result) {
  saves_->Get({absl::StatusCodeToString(result.status().code())})->Increment();
  if (!result.ok()) return;
  save_seconds_->Observe(result->seconds());
  fence_seconds_->Observe(static_cast<double>(result->fence_micros()) * 1e-6);
  last_save_bytes_->Set(static_cast<double>(result->bytes()));
  last_success_->Set(UnixSeconds());
}

void CheckpointMetrics::OnRestore(const absl::StatusOr<RestoreCheckpointResponse>& result) {
  restores_->Get({absl::StatusCodeToString(result.status().code())})->Increment();
  if (!result.ok()) return;
  restore_seconds_->Observe(result->seconds());
  last_restore_bytes_->Set(static_cast<double>(result->bytes()));
}

MoveMetrics::MoveMetrics(MetricsRegistry* registry)
    : moves_(registry->CounterFamily("psd_part_moves_total",
                                     "Live part moves that ended, by result (OK or the status code)",
                                     {"result"})),
      bytes_(registry->CounterFamily("psd_part_move_bytes_total",
                                     "Bytes of the parts moved (snapshots copied shard to shard)",
                                     {})
                 ->Get({})),
      forwarded_writes_(registry
                            ->CounterFamily("psd_part_move_forwarded_writes_total",
                                            "Writes applied on a source during a move and "
                                            "forwarded to its target",
                                            {})
                            ->Get({})),
      seconds_(registry
                   ->HistogramFamily("psd_part_move_duration_seconds",
                                     "Duration of successful moves", {}, CheckpointBuckets())
                   ->Get({})),
      writes_held_seconds_(registry
                               ->HistogramFamily("psd_part_move_fence_pause_seconds",
                                                 "How long a move's owner switch held the writes "
                                                 "to its parts",
                                                 {}, LatencyBuckets())
                               ->Get({})) {}

void MoveMetrics::OnMove(const absl::StatusOr<MovePartResponse>& result) {
  moves_->Get({absl::StatusCodeToString(result.status().code())})->Increment();
  if (!result.ok()) return;
  bytes_->Increment(static_cast<double>(result->bytes()));
  forwarded_writes_->Increment(static_cast<double>(result->forwarded_writes()));
  seconds_->Observe(result->seconds());
  writes_held_seconds_->Observe(result->fence_seconds());
}

void AddClusterMetrics(MetricsRegistry* registry, const CoordinatorService* service) {
  using Samples = MetricsRegistry::Samples;
  registry->CallbackGauge("psd_coordinator_variables", "Variables in the registry",
                          [service] {
                            return static_cast<double>(service->ShardStatuses().num_variables());
                          });
  registry->CallbackGauge("psd_coordinator_sessions", "Open client sessions", [service] {
    return static_cast<double>(service->ShardStatuses().num_sessions());
  });
  registry->CallbackGaugeFamily(
      "psd_coordinator_shards", "Registered shards by state: live, or down (no heartbeat)",
      {"state"}, [service] {
        double live = 0, down = 0;
        const ListShardsResponse statuses = service->ShardStatuses();
        for (const ShardStatus& s : statuses.shards()) (s.live() ? live : down) += 1;
        return Samples{{{"live"}, live}, {{"down"}, down}};
      });
  // Replicated parts (docs/replication.md).
  registry->CallbackCounter(
      "psd_coordinator_failovers_total",
      "Replicated groups whose primary was lost and an in-sync backup promoted", [service] {
        return static_cast<double>(service->replica_stats().failovers);
      });
  registry->CallbackCounter("psd_coordinator_replicas_added_total",
                            "Backups made and brought into their group's in-sync set", [service] {
                              return static_cast<double>(service->replica_stats().replicas_added);
                            });
  registry->CallbackGauge(
      "psd_coordinator_under_replicated_groups",
      "Replicated groups with fewer in-sync backups than their replication factor asks, as the "
      "replica keeper last counted them",
      [service] { return static_cast<double>(service->replica_stats().under_replicated_groups); });
  registry->CallbackGauge(
      "psd_coordinator_last_failover_seconds",
      "From noticing a primary lost to its backup's promotion, for the last failover (0: none)",
      [service] { return service->replica_stats().last_failover_seconds; });
  registry->CallbackGauge(
      "psd_coordinator_last_failover_monotonic_seconds",
      "When the last failover's backup was asked to serve (PromoteReplica), on this host's "
      "CLOCK_MONOTONIC (0: none); for comparing with a shard's lease end on one host",
      [service] { return service->replica_stats().last_failover_monotonic_seconds; });
  // One family per ShardStatus field, one series per shard.
  const auto per_shard = [registry, service](const std::string& name, const std::string& help,
                                             std::function<double(const ShardStatus&)> field) {
    registry->CallbackGaugeFamily(name, help, {"shard"}, [service, field] {
      Samples samples;
      const ListShardsResponse statuses = service->ShardStatuses();
      for (const ShardStatus& s : statuses.shards()) {
        samples.push_back({{std::to_string(s.shard_id())}, field(s)});
      }
      return samples;
    });
  };
  per_shard("psd_coordinator_shard_up", "1 if the shard is live (heartbeating), else 0",
            [](const ShardStatus& s) { return s.live() ? 1.0 : 0.0; });
  per_shard("psd_coordinator_shard_variables", "Variables the shard reported at its last heartbeat",
            [](const ShardStatus& s) { return static_cast<double>(s.num_variables()); });
  per_shard("psd_coordinator_shard_placed_parts", "Parts the registry placed on the shard",
            [](const ShardStatus& s) { return static_cast<double>(s.placed_parts()); });
  per_shard("psd_coordinator_shard_placed_bytes", "Bytes of the parts placed on the shard",
            [](const ShardStatus& s) { return static_cast<double>(s.placed_bytes()); });
  per_shard("psd_coordinator_shard_memory_used_bytes",
            "Memory the shard reported in use at its last heartbeat",
            [](const ShardStatus& s) { return static_cast<double>(s.memory_used_bytes()); });
  per_shard("psd_coordinator_shard_memory_limit_bytes", "The shard's memory limit (0: none)",
            [](const ShardStatus& s) { return static_cast<double>(s.memory_limit_bytes()); });
  per_shard("psd_coordinator_shard_lost_parts",
            "Parts the shard lost (it came back empty) and that are not restored yet",
            [](const ShardStatus& s) { return static_cast<double>(s.lost_parts()); });
  per_shard("psd_coordinator_shard_lease_remaining_seconds",
            "How long the shard may still hold the lease its last heartbeat was granted (0: "
            "certainly expired)",
            [](const ShardStatus& s) { return static_cast<double>(s.lease_remaining_millis()) / 1e3; });
  per_shard("psd_coordinator_shard_seconds_since_heartbeat",
            "Seconds since the shard's last registration or heartbeat",
            [](const ShardStatus& s) { return static_cast<double>(s.millis_since_heartbeat()) / 1e3; });
}

}  // namespace psd
