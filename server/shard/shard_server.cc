#include "shard/shard_server.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/signal_set.hpp"
#include "device/device.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/random_id.h"
#include "psd/status.h"
#include "runtime/serving.h"
#include "shard/coordinator_link.h"
#include "shard/nccl_plane.h"
#include "shard/peer_reader.h"
#include "shard/shard_control.h"
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
                         "Bytes of variables (and staged writes) accounted against the limit",
                         [&store] { return static_cast<double>(store.memory().used()); });
  metrics->CallbackGauge("psd_shard_memory_limit_bytes", "The shard's memory limit (0: none)",
                         [&store] { return static_cast<double>(store.memory().limit()); });
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
  store_options.incarnation = incarnation;
  // Leave room for the response's other fields under the message limit.
  store_options.max_unary_value_bytes = options.max_message_bytes - (64 << 10);
  store_options.max_batch_result_bytes = store_options.max_unary_value_bytes;
  store_options.default_chunk_bytes = options.stream_chunk_bytes;
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
  NcclPlaneOptions nccl_options;
  nccl_options.enabled = options.nccl_plane;
  nccl_options.shard_id = config.id;
  NcclPlane nccl(&store, nccl_options);
  service.set_nccl_plane(&nccl);

  // Signals are caught from here on, so a stop request that arrives while
  // the server starts still drains it instead of killing the process.
  boost::asio::io_context io;
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);

  MetricsRegistry metrics;
  AddShardMetrics(&metrics, store);

  // Set once the stop begins (signal or ShardControl.Stop); then runs on
  // the io thread. Declared before the control service that calls it.
  std::function<void(const std::string&)> stop;
  ShardControlService control([&io, &stop](const std::string& reason) {
    boost::asio::post(io, [&stop, reason] { stop(reason); });
  });

  ServingOptions serving;
  serving.listen = config.listen;
  serving.max_message_bytes = options.max_message_bytes;
  serving.port_file = options.port_file;
  serving.http_listen = options.http_listen;
  serving.http_port_file = options.http_port_file;
  serving.security = options.security;
  serving.limits = options.limits;
  serving.response_watchers = FenceWatchers(&metrics);
  // A device that failed (a CUDA error) makes the shard unhealthy: its
  // variables can no longer be trusted, so it should be restarted and
  // restored from the latest checkpoint.
  serving.unhealthy_reason = [&device] {
    return device->healthy() ? std::string() : device->name() + ": " + device->health_detail();
  };
  PSD_ASSIGN_OR_RETURN(
      std::unique_ptr<ServingEndpoint> endpoint,
      ServingEndpoint::Start(serving, {&service, &control}, &metrics,
                             // Not ready while draining, or once the device failed (a CUDA
                             // error): its variables can no longer be trusted.
                             [&service, &device] {
                               return !service.draining() && device->healthy();
                             },
                             absl::StrCat("shard ", config.id)));
  grpc::Server* server = endpoint->server();
  const int port = endpoint->port();
  spdlog::info("shard {} listening on {} (port {}; /metrics at {}), device {}, "
               "memory limit {}, incarnation {:016x}",
               config.id, config.listen, port,
               endpoint->http_url().empty() ? "<off>" : endpoint->http_url() + "/metrics",
               device->name(),
               config.memory_limit > 0 ? std::to_string(config.memory_limit) + " bytes" : "none",
               incarnation);

  // The address others dial: the advertised one, with the real port when
  // the shard bound port 0.
  ShardConfig advertised = config;
  if (advertised.advertise.empty() || advertised.advertise == config.listen) {
    advertised.advertise = config.listen.substr(0, config.listen.rfind(':')) + ":" +
                           std::to_string(port);
  }
  std::unique_ptr<CoordinatorLink> link;
  // Why the shard must end with an error (set on the io thread, read after
  // it joined): the coordinator refused its id.
  absl::Status fatal;
  if (!options.coordinator.empty()) {
    link = std::make_unique<CoordinatorLink>(&io, options.coordinator, advertised, &store,
                                             node_credentials);
    link->SetFatalHandler([&fatal, &stop](const absl::Status& why) {
      fatal = why;
      stop("its registration was refused");
    });
    link->Start();
  }

  bool stopping = false;  // touched on the io thread only
  stop = [&](const std::string& why) {
    if (stopping) return;
    stopping = true;
    if (link != nullptr) link->Stop();
    spdlog::info("shard {}: {}, draining (up to {} s)", config.id, why,
                 options.drain_timeout_seconds);
    server->GetHealthCheckService()->SetServingStatus(false);
    // New calls are refused with UNAVAILABLE from here on; the ones already
    // running get the drain timeout to finish. Shutdown then closes the
    // listener and connections, cancelling whatever still runs.
    service.StartDrain();
    // NCCL streams live as long as their groups: end those, so their
    // trainers learn why at once.
    nccl.Shutdown();
    const absl::Time deadline =
        absl::Now() + absl::Seconds(options.drain_timeout_seconds);
    if (!service.WaitForIdle(deadline)) {
      spdlog::warn("shard {}: calls still running after {} s; cancelling them", config.id,
                   options.drain_timeout_seconds);
    }
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  };
  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (!ec) stop(absl::StrCat("signal ", signo, " received"));
  });
  std::thread io_thread([&io] { io.run(); });
  server->Wait();
  io.stop();
  io_thread.join();
  if (!fatal.ok()) return fatal;
  spdlog::info("shard {}: drained, exiting", config.id);
  return absl::OkStatus();
}

}  // namespace psd
