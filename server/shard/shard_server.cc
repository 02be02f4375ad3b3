#include "shard/shard_server.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "device/device.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/random_id.h"
#include "psd/status.h"
#include "runtime/serving.h"
#include "runtime/serving_loop.h"
#include "shard/coordinator_link.h"
#include "shard/nccl_plane.h"
#include "shard/move_service.h"
#include "shard/peer_reader.h"
#include "shard/shard_control.h"
#include "shard/shard_lease.h"
#include "shard/shard_service.h"
#include "shard/variable_store.h"
#include "spdlog/spdlog.h"

namespace psd {

namespace {

// What the shard's own state shows at each scrape: variables, bytes and the
// byte budget, and whether writes are fenced now.
void AddShardMetrics(MetricsRegistry* metrics, const VariableStore& store) {
  metrics->CallbackGauge("psd_shard_variables", "Variables (and parts) held by this shard",
                         [&store] { return static_cast<double>(store.num_variables()); });
  metrics->CallbackGauge("psd_shard_memory_used_bytes",
                         "Bytes of variables (and staged writes) accounted against the limit; "
                         "idle pooled staging buffers are in psd_shard_staging_pool_idle_bytes",
                         [&store] { return static_cast<double>(store.memory().used()); });
  metrics->CallbackGauge("psd_shard_memory_limit_bytes", "The shard's memory limit (0: none)",
                         [&store] { return static_cast<double>(store.memory().limit()); });
  // The staging pool (shard/staging_pool.h): idle bytes count against the
  // limit but not in psd_shard_memory_used_bytes.
  const StagingPool& pool = store.staging_pool();
  metrics->CallbackCounter("psd_shard_staging_pool_hits_total",
                           "Staging buffers taken from the pool (no allocation, no zero fill)",
                           [&pool] { return static_cast<double>(pool.stats().hits); });
  metrics->CallbackCounter("psd_shard_staging_pool_misses_total",
                           "Staging buffers the pool had none of, allocated fresh",
                           [&pool] { return static_cast<double>(pool.stats().misses); });
  metrics->CallbackGauge("psd_shard_staging_pool_idle_bytes",
                         "Bytes of idle staging buffers the pool holds (inside the memory limit)",
                         [&pool] { return static_cast<double>(pool.stats().idle_bytes); });
  metrics->CallbackGauge("psd_shard_staging_pool_idle_buffers",
                         "Idle staging buffers the pool holds",
                         [&pool] { return static_cast<double>(pool.stats().idle_buffers); });
  metrics->CallbackCounter(
      "psd_shard_staging_pool_reclaimed_bytes_total",
      "Idle staging bytes freed because an allocation would have passed the memory limit",
      [&pool] { return static_cast<double>(pool.stats().reclaimed_bytes); });
  // Replicated parts (docs/replication.md).
  metrics->CallbackGauge("psd_shard_backups_following",
                         "Backups (on other shards) following groups this shard is the primary of",
                         [&store] { return static_cast<double>(store.replication_stats().follows_out); });
  metrics->CallbackGauge("psd_shard_backups_held",
                         "Groups of other shards this shard holds a backup of",
                         [&store] { return static_cast<double>(store.replication_stats().follows_in); });
  metrics->CallbackGauge(
      "psd_shard_backup_lag_writes",
      "The most writes logged for one backup of this shard's groups and not applied there yet",
      [&store] { return static_cast<double>(store.replication_stats().max_lag); });
  metrics->CallbackCounter(
      "psd_shard_backup_waited_writes_total",
      "Writes whose answer waited for in-sync backups to apply them",
      [&store] { return static_cast<double>(store.replication_stats().waited_writes); });
  metrics->CallbackCounter("psd_shard_backup_wait_seconds_total",
                           "Total time writes waited for in-sync backups",
                           [&store] { return store.replication_stats().wait_seconds; });
  metrics->CallbackCounter(
      "psd_shard_replica_behind_calls_total",
      "ReplicaBehind calls to the coordinator (a backup did not apply a write in time)",
      [&store] { return static_cast<double>(store.replication_stats().replica_behind_calls); });
  metrics->CallbackGauge("psd_shard_staging_pool_limit_bytes",
                         "Most idle staging bytes the pool keeps (--staging-pool-bytes)",
                         [&pool] { return static_cast<double>(pool.max_idle_bytes()); });
  // Embedding tables, one series per part held here (slots are columns of
  // their table's part and count with it).
  struct TableFigure {
    const char* name;
    const char* help;
    double (*value)(const VariableInfo&);
  };
  static const TableFigure kTableFigures[] = {
      {"psd_shard_embedding_rows", "Rows an embedding table's part holds",
       [](const VariableInfo& i) { return static_cast<double>(i.embedding().rows()); }},
      {"psd_shard_embedding_bytes",
       "Bytes an embedding table's part holds (rows, slot rows, keys, index, pending counts)",
       [](const VariableInfo& i) { return static_cast<double>(i.bytes()); }},
      {"psd_shard_embedding_pending_keys", "Keys counted by a counter filter, not admitted yet",
       [](const VariableInfo& i) { return static_cast<double>(i.embedding().pending_keys()); }},
      {"psd_shard_embedding_admitted", "Keys admitted into the part since it was created",
       [](const VariableInfo& i) { return static_cast<double>(i.embedding().admitted()); }},
      {"psd_shard_embedding_filtered_lookups",
       "Lookups of keys not admitted yet, answered with the default value",
       [](const VariableInfo& i) {
         return static_cast<double>(i.embedding().filtered_lookups());
       }},
      {"psd_shard_embedding_filtered_updates", "Updates of keys not admitted yet, dropped",
       [](const VariableInfo& i) {
         return static_cast<double>(i.embedding().filtered_updates());
       }},
      {"psd_shard_embedding_evicted", "Rows evicted (steps_to_live, L2 threshold, LRU)",
       [](const VariableInfo& i) { return static_cast<double>(i.embedding().evicted()); }},
  };
  for (const TableFigure& figure : kTableFigures) {
    metrics->CallbackGaugeFamily(figure.name, figure.help, {"table"}, [&store, &figure] {
      MetricsRegistry::Samples samples;
      for (const VariableInfo& info : store.ListEmbeddingParts()) {
        samples.push_back({{info.name()}, figure.value(info)});
      }
      return samples;
    });
  }
  metrics->CallbackGauge("psd_shard_fenced", "1 while a checkpoint fence holds writes",
                         [&store] { return store.gate().fenced() ? 1.0 : 0.0; });
  metrics->CallbackCounter("psd_shard_fence_lease_expiries_total",
                           "Fences lifted by their lease because the coordinator went quiet",
                           [&store] { return static_cast<double>(store.gate().lease_expiries()); });
  // From the gate itself, so a fence its lease lifted counts once too.
  metrics->CallbackCounter("psd_shard_fences_total", "Checkpoint fences raised and lifted",
                           [&store] { return static_cast<double>(store.gate().totals().fences); });
  metrics->CallbackCounter(
      "psd_shard_fence_held_writes_total", "Writes that waited for a checkpoint fence to lift",
      [&store] { return static_cast<double>(store.gate().totals().held_writes); });
  metrics->CallbackCounter(
      "psd_shard_fenced_seconds_total", "Time checkpoint fences held writes",
      [&store] { return absl::ToDoubleSeconds(store.gate().totals().fenced); });
}

// Fence pauses as the shard reports them to the coordinator: each Unfence
// answer says how long writes were held.
std::map<std::string, ResponseWatcher> FenceWatchers(MetricsRegistry* metrics) {
  Histogram* paused = metrics
                          ->HistogramFamily("psd_shard_fence_pause_seconds",
                                            "How long a checkpoint fence held writes", {},
                                            LatencyBuckets())
                          ->Get({});
  return {{"psd.Shard/Unfence",
           WatchResponse<UnfenceResponse>([paused](const UnfenceResponse& r) {
             paused->Observe(static_cast<double>(r.fenced_micros()) * 1e-6);
           })}};
}

}  // namespace

absl::Status RunShardServer(const ShardServerOptions& options) {
  const ShardConfig& config = options.shard;
  PSD_ASSIGN_OR_RETURN(auto device, NewDevice(config.device));
  const uint64_t incarnation = RandomNonzeroId();
  VariableStoreOptions store_options;
  store_options.memory_limit_bytes = config.memory_limit;
  store_options.staging_pool_bytes = config.staging_pool_bytes;
  store_options.incarnation = incarnation;
  // Leave room for the response's other fields under the message limit.
  store_options.max_unary_value_bytes = options.max_message_bytes - (64 << 10);
  store_options.max_batch_result_bytes = store_options.max_unary_value_bytes;
  store_options.default_chunk_bytes = options.stream_chunk_bytes;
  store_options.backup_timeout = absl::Seconds(options.backup_timeout_seconds);
  if (options.nccl_plane && device->name().rfind("gpu:", 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", config.id,
                                                   ": --nccl-plane needs a gpu:N device, not ",
                                                   device->name()));
  }
  VariableStore store(device.get(), store_options);
  // Channels this shard opens to other psd servers (the coordinator, and
  // shards it reads a source variable from) carry its node credentials.
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> node_credentials,
                       internal::MakeChannelCredentials(NodeChannelSecurity(options.security)));
  PeerReader peers(node_credentials, options.max_message_bytes);
  ShardService service(config.id, incarnation, &store);
  service.set_peer_reader(&peers);
  service.set_stream_idle_timeout(absl::Seconds(options.stream_idle_timeout_seconds));
  NcclPlaneOptions nccl_options;
  nccl_options.enabled = options.nccl_plane;
  nccl_options.shard_id = config.id;
  NcclPlane nccl(&store, nccl_options);
  service.set_nccl_plane(&nccl);

  // Signals are caught from here on, so a stop request that arrives while
  // the server starts still drains it instead of killing the process.
  ServingLoop loop(absl::StrCat("shard ", config.id), options.drain_timeout_seconds);

  MetricsRegistry metrics;
  AddShardMetrics(&metrics, store);
  // The coordinator's lease (docs/replication.md "Leases"), renewed by the
  // link's registrations and heartbeats.
  ShardLease lease;
  metrics.CallbackGauge("psd_shard_lease_remaining_seconds",
                        "How long this shard still holds the coordinator's lease (0: not held)",
                        [&lease] { return std::chrono::duration<double>(lease.Remaining()).count(); });
  metrics.CallbackGauge(
      "psd_shard_lease_expiry_monotonic_seconds",
      "When the lease ends on this host's CLOCK_MONOTONIC (0: never granted); for comparing "
      "with the coordinator's view on one host",
      [&lease] { return std::chrono::duration<double>(lease.ExpiresAt()).count(); });
  metrics.CallbackGauge(
      "psd_shard_last_leased_write_answer_monotonic_seconds",
      "When a write was last answered with the lease held (every write to a replicated part "
      "is), on this host's CLOCK_MONOTONIC (0: none since start)",
      [&store] { return std::chrono::duration<double>(store.last_leased_write_answer()).count(); });
  metrics.CallbackCounter("psd_shard_lease_grants_total",
                          "Leases granted by accepted registrations and heartbeats",
                          [&lease] { return static_cast<double>(lease.grants()); });

  // ShardControl.Stop (the coordinator's psctl shutdown).
  ShardControlService control([&loop](const std::string& reason) { loop.RequestStop(reason); });
  // Live part moves, to and from other shards.
  ShardMoveService moves(config.id, &store, &peers, options.move_rate_when_busy);

  ServingOptions serving = ServingOptionsFrom(config.listen, options);
  serving.response_watchers = FenceWatchers(&metrics);
  // The heartbeats report the same counters (CoordinatorLink).
  const RpcMetrics* served_metrics = nullptr;
  serving.on_rpc_metrics = [&service, &served_metrics](RpcMetrics* rpc_metrics) {
    service.set_op_metrics(rpc_metrics);
    served_metrics = rpc_metrics;
  };
  // A device that failed (a CUDA error) makes the shard unhealthy: its
  // variables can no longer be trusted, so it should be restarted and
  // restored from the latest checkpoint.
  serving.unhealthy_reason = [&device] {
    return device->healthy() ? std::string() : device->name() + ": " + device->health_detail();
  };
  PSD_ASSIGN_OR_RETURN(
      std::unique_ptr<ServingEndpoint> endpoint,
      ServingEndpoint::Start(serving, {&service, &control, &moves}, &metrics,
                             // Not ready while draining, or once the device failed (a CUDA
                             // error): its variables can no longer be trusted.
                             [&service, &device] {
                               return !service.draining() && device->healthy();
                             },
                             absl::StrCat("shard ", config.id)));
  const int port = endpoint->port();
  spdlog::info("shard {} listening on {} (port {}; /metrics at {}), device {}, "
               "memory limit {}, staging pool {} bytes, incarnation {:016x}",
               config.id, config.listen, port,
               endpoint->http_url().empty() ? "<off>" : endpoint->http_url() + "/metrics",
               device->name(),
               config.memory_limit > 0 ? std::to_string(config.memory_limit) + " bytes" : "none",
               config.staging_pool_bytes, incarnation);

  // The address others dial: the advertised one, with the real port when
  // the shard bound port 0.
  ShardConfig advertised = config;
  if (advertised.advertise.empty() || advertised.advertise == config.listen) {
    advertised.advertise = config.listen.substr(0, config.listen.rfind(':')) + ":" +
                           std::to_string(port);
  }
  std::unique_ptr<CoordinatorLink> link;
  if (!options.coordinator.empty()) {
    link = std::make_unique<CoordinatorLink>(loop.io(), options.coordinator, advertised, &store,
                                             node_credentials);
    // The coordinator refused the shard's id: the process ends with that error.
    link->SetRpcMetrics(served_metrics);
    link->SetLease(&lease);
    // Replicated parts serve only under the lease; a backup that falls
    // behind is reported through the link.
    store.SetLease(&lease);
    store.SetReplicaBehindHandler([link = link.get()](uint64_t move_id, const std::string& reason) {
      return link->ReplicaBehind(move_id, reason);
    });
    link->SetFatalHandler(
        [&loop](const absl::Status& why) { loop.Fail(why, "its registration was refused"); });
    link->Start();
  }

  DrainSteps steps;
  steps.on_stop = [&link](StopCause) {
    if (link != nullptr) link->Stop();
  };
  steps.start_drain = [&service, &nccl] {
    service.StartDrain();
    // NCCL streams live as long as their groups: end those, so their
    // trainers learn why at once.
    nccl.Shutdown();
  };
  steps.wait_for_idle = [&service](absl::Time deadline) { return service.WaitForIdle(deadline); };
  absl::Status ran = loop.Run(endpoint.get(), std::move(steps));
  // The link goes before the store: no write may reach it after this.
  store.SetReplicaBehindHandler(nullptr);
  store.SetLease(nullptr);
  return ran;
}

}  // namespace psd
