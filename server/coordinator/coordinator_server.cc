#include "coordinator/coordinator_server.h"

#include <algorithm>
#include <filesystem>
#include <future>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "coordinator/checkpoint_scheduler.h"
#include "coordinator/console.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/registry.h"
#include "coordinator/shard_stopper.h"
#include "grpcpp/grpcpp.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/status.h"
#include "runtime/serving.h"
#include "runtime/serving_loop.h"
#include "spdlog/spdlog.h"

namespace psd {

namespace {

// The final save of psctl shutdown --final-checkpoint: into the configured
// directory, named by the global step when one is configured (as the final
// save on SIGTERM). Returns the checkpoint's prefix.
absl::StatusOr<std::string> FinalCheckpoint(CheckpointManager* manager,
                                            const CheckpointConfig& ckpt) {
  if (ckpt.dir.empty()) {
    return absl::FailedPreconditionError(
        "no checkpoint directory is configured (checkpoint.dir / --checkpoint-dir)");
  }
  SaveCheckpointRequest request;
  if (!ckpt.global_step.empty()) {
    // Not created yet: the save is still worth having, unnumbered.
    auto step = manager->ReadIntScalar(ckpt.global_step);
    if (step.ok()) request.set_global_step(*step);
  }
  PSD_ASSIGN_OR_RETURN(SaveCheckpointResponse saved, manager->Save(request));
  return saved.prefix();
}

}  // namespace

absl::Status RunCoordinatorServer(const CoordinatorServerOptions& options) {
  const CoordinatorConfig& config = options.coordinator;
  if (!(options.lease_period_seconds >= 2 * options.heartbeat_interval_seconds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "coordinator: --lease-period ", options.lease_period_seconds,
        " s must be at least twice --heartbeat-interval (", options.heartbeat_interval_seconds,
        " s), so that one late heartbeat does not let a shard's lease lapse"));
  }
  if (options.replication < 1 || options.replication > kMaxReplication) {
    return absl::InvalidArgumentError(absl::StrCat("coordinator: --replication ",
                                                   options.replication, " must be 1 to ",
                                                   kMaxReplication));
  }
  RegistryOptions registry_options;
  registry_options.state_dir = config.state_dir;
  registry_options.replication = options.replication;
  registry_options.compact_log_bytes = options.compact_log_bytes;
  if (config.state_dir.empty()) {
    spdlog::warn("coordinator: no state_dir; the registry is not persisted");
  }
  PSD_ASSIGN_OR_RETURN(auto registry, Registry::Open(registry_options));
  spdlog::info("coordinator: registry recovered ({} variables, {} sessions) from {}",
               registry->num_variables(), registry->num_sessions(),
               config.state_dir.empty() ? "<memory>" : config.state_dir);

  MetricsRegistry metrics;
  CheckpointMetrics checkpoint_metrics(&metrics);
  MoveMetrics move_metrics(&metrics);
  CoordinatorServiceOptions service_options;
  service_options.heartbeat_interval = absl::Seconds(options.heartbeat_interval_seconds);
  service_options.liveness_timeout = absl::Seconds(options.shard_liveness_timeout_seconds);
  service_options.lease_period = absl::Seconds(options.lease_period_seconds);
  service_options.session_ttl = absl::Seconds(options.session_ttl_seconds);
  service_options.shard_rpc_timeout = absl::Seconds(options.shard_rpc_timeout_seconds);
  service_options.max_message_bytes = options.max_message_bytes;
  service_options.checkpoint.dir = options.checkpoint.dir;
  service_options.checkpoint.roots = options.checkpoint.roots;
  if (!options.restore_from.empty()) {
    // The operator's --restore-from is read wherever it is.
    service_options.checkpoint.read_roots.push_back(
        std::filesystem::is_directory(options.restore_from)
            ? options.restore_from
            : checkpoint::DirName(options.restore_from));
  }
  service_options.checkpoint.policy.max_to_keep = options.checkpoint.max_to_keep;
  service_options.checkpoint.policy.keep_checkpoint_every_n_hours =
      options.checkpoint.keep_checkpoint_every_n_hours;
  service_options.checkpoint.rpc_timeout = service_options.shard_rpc_timeout;
  service_options.on_move = [&move_metrics](const auto& result) { move_metrics.OnMove(result); };
  service_options.checkpoint.on_save = [&checkpoint_metrics](const auto& result) {
    checkpoint_metrics.OnSave(result);
  };
  service_options.checkpoint.on_restore = [&checkpoint_metrics](const auto& result) {
    checkpoint_metrics.OnRestore(result);
  };
  if (!config.state_dir.empty() && !options.checkpoint.dir.empty()) {
    service_options.checkpoint.policy_file = config.state_dir + "/checkpoint_policy.pb";
  }
  const CheckpointConfig& ckpt = options.checkpoint;
  if (ckpt.dir.empty() &&
      (ckpt.interval_seconds > 0 || ckpt.every_n_steps > 0 || ckpt.save_on_shutdown)) {
    return absl::InvalidArgumentError(
        "periodic saves and save_on_shutdown need a checkpoint directory (--checkpoint-dir)");
  }
  if (ckpt.every_n_steps > 0 && ckpt.global_step.empty()) {
    return absl::InvalidArgumentError("--every-n-steps needs --global-step (a variable name)");
  }
  auto shard_credentials = internal::MakeChannelCredentials(NodeChannelSecurity(options.security));
  if (!shard_credentials.ok()) return shard_credentials.status();
  service_options.shard_credentials = *shard_credentials;
  if (!options.checkpoint.dir.empty()) {
    // Periodic and final saves go there: a missing directory should fail
    // now, not at the first save hours later.
    std::error_code ec;
    std::filesystem::create_directories(options.checkpoint.dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint.dir: cannot create ", options.checkpoint.dir, ": ", ec.message()));
    }
  }
  CoordinatorService service(registry.get(), service_options);
  AddClusterMetrics(&metrics, &service);
  if (!options.checkpoint.dir.empty()) {
    const int removed = service.checkpoints()->CleanUpTempFiles();
    spdlog::info("coordinator: checkpoints in {} (max_to_keep {}, keep every {} h); {} leftover "
                 "temp files removed",
                 options.checkpoint.dir, options.checkpoint.max_to_keep,
                 options.checkpoint.keep_checkpoint_every_n_hours, removed);
  }

  // Before serving, so no shard registers unseen by the lost-parts handler.
  CheckpointSchedulerOptions schedule;
  schedule.interval_seconds = ckpt.interval_seconds;
  // Alerts compare the last good checkpoint's age with the interval.
  metrics.CallbackGauge("psd_checkpoint_interval_seconds",
                        "The periodic checkpoint interval (checkpoint.interval; 0: none)",
                        [interval = ckpt.interval_seconds] { return interval; });
  schedule.every_n_steps = ckpt.every_n_steps;
  schedule.global_step = ckpt.global_step;
  schedule.restore_lost = ckpt.restore_lost;
  schedule.restore_from = options.restore_from;
  // At least the cluster's replication factor: the restore declares every
  // variable with it, which needs that many live shards; started on the
  // first shard to register (no cluster file says how many to expect), a
  // replicated cluster's --restore-from failed FAILED_PRECONDITION and
  // restored nothing.
  schedule.expected_shards = std::max(options.expected_shards, options.replication);
  CheckpointScheduler scheduler(&service, schedule);
  service.SetLostPartsHandler([&scheduler](int32_t shard, std::vector<std::string> parts) {
    scheduler.OnLostParts(shard, std::move(parts));
  });
  scheduler.Start();

  // Signals are caught from here on, so a stop request during start-up
  // still drains instead of killing the process.
  ServingLoop loop("coordinator", options.drain_timeout_seconds);

  // The web console on the HTTP endpoint (coordinator/console.h).
  ConsoleOptions console_options;
  console_options.coordinator = config.advertise.empty() ? config.listen : config.advertise;
  console_options.token_file = options.security.token_file;
  console_options.shard_credentials = *shard_credentials;
  console_options.max_message_bytes = options.max_message_bytes;
  console_options.checkpoint_dir = ckpt.dir;
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<Console> console,
                       Console::Create(registry.get(), &service, &metrics, console_options));
  console->Start();

  ServingOptions serving = ServingOptionsFrom(config.listen, options);
  serving.http_handler = [&console](const HttpRequest& request) {
    return console->Handle(request);
  };
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ServingEndpoint> endpoint,
                       ServingEndpoint::Start(serving, {&service}, &metrics,
                                              [&service] { return !service.draining(); },
                                              "coordinator"));
  const int port = endpoint->port();
  {
    const std::string& shown = config.advertise.empty() ? config.listen : config.advertise;
    if (absl::EndsWith(shown, ":0")) {
      console->SetCoordinatorAddress(absl::StrCat(shown.substr(0, shown.size() - 1), port));
    }
  }
  spdlog::info("coordinator listening on {} (port {}; console and /metrics at {}), state dir {}",
               config.listen, port,
               endpoint->http_url().empty() ? "<off>" : endpoint->http_url() + "/",
               config.state_dir.empty() ? "<none>" : config.state_dir);

  // The stop: after a signal, or after psctl shutdown (which has saved and
  // told the shards already).
  DrainSteps steps;
  steps.on_stop = [&](StopCause cause) {
    scheduler.Stop();
    if (cause == StopCause::kSignal && ckpt.save_on_shutdown) {
      // Before the drain, so the shards' heartbeats still keep them live.
      absl::Status saved = scheduler.FinalSave();
      if (!saved.ok()) spdlog::error("coordinator: final save failed: {}", saved.ToString());
    }
  };
  steps.start_drain = [&service] { service.StartDrain(); };
  steps.wait_for_idle = [&service](absl::Time deadline) { return service.WaitForIdle(deadline); };
  steps.after_shutdown = [&] {
    scheduler.Stop();
    service.SetLostPartsHandler(nullptr);
    service.SetShutdownHandler(nullptr);
  };

  // psctl shutdown. The handler blocks its RPC thread while the loop's
  // thread saves and stops the shards, so a shutdown never races a signal's
  // stop.
  ShardStopper stopper(*shard_credentials,
                       absl::Seconds(std::min(10.0, options.shard_rpc_timeout_seconds)));
  service.SetShutdownHandler([&](const ShutdownRequest& request, ShutdownResponse* response) {
    std::promise<absl::Status> done;
    std::future<absl::Status> result = done.get_future();
    loop.Post([&] {
      if (loop.stopping()) {
        done.set_value(absl::FailedPreconditionError("the coordinator is already stopping"));
        return;
      }
      // Asked for: a failed save cancels the stop. Configured
      // (save_on_shutdown): as on SIGTERM, a failure is logged and the stop
      // goes on. An empty registry has nothing to save.
      if ((request.final_checkpoint() || ckpt.save_on_shutdown) &&
          service.ShardStatuses().num_variables() > 0) {
        auto saved = FinalCheckpoint(service.checkpoints(), ckpt);
        if (saved.ok()) {
          response->set_checkpoint(*saved);
        } else if (request.final_checkpoint()) {
          done.set_value(absl::Status(
              saved.status().code(),
              absl::StrCat("shutdown cancelled, nothing stopped: final checkpoint failed: ",
                           saved.status().message())));
          return;
        } else {
          spdlog::error("coordinator: final save failed: {}", saved.status().ToString());
        }
      }
      stopper.StopAll(service.ShardStatuses(), response);
      spdlog::info("coordinator: shutdown requested; final checkpoint {}; shards stopped: {}; "
                   "not reached: {}",
                   response->checkpoint().empty() ? "none" : response->checkpoint(),
                   absl::StrJoin(response->stopped_shards(), ", "),
                   absl::StrJoin(response->unreached_shards(), "; "));
      done.set_value(absl::OkStatus());
      // Queued behind this job; its drain waits for this RPC to finish.
      loop.RequestStop("shutdown requested");
    });
    return result.get();
  });

  return loop.Run(endpoint.get(), std::move(steps));
}

}  // namespace psd
