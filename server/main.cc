// `psd`: the psd server binary. Subcommands:
//   psd shard [--config FILE --id K] [flags]   serve one shard's variables
//   psd coordinator [--config FILE] [flags]     serve names and placement
#include <malloc.h>

#include <cstdio>
#include <string>
#include <utility>

#include "CLI/CLI.hpp"
#include "coordinator/coordinator_server.h"
#include "runtime/cluster_config.h"
#include "shard/process_tuning.h"
#include "shard/shard_server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

// --http-max-connections, --max-rpc-threads, --max-concurrent-streams and
// --keepalive-interval on a server subcommand (runtime/serving.h;
// configs/README.md, "Limits").
void AddLimitFlags(CLI::App* app, psd::ServingLimits* limits) {
  app->add_option("--http-max-connections", limits->http_max_connections,
                  "Connections the HTTP endpoint serves at once; more are closed on accept "
                  "(key http_max_connections)")
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--max-rpc-threads", limits->max_rpc_threads,
                  "Threads for synchronous gRPC handlers (reflection); calls past them get "
                  "RESOURCE_EXHAUSTED")
      ->check(CLI::Range(2, 1 << 16));
  app->add_option("--max-concurrent-streams", limits->max_concurrent_streams,
                  "gRPC calls one connection may have open at once; more wait in the client")
      ->check(CLI::Range(1, 1 << 30));
  app->add_option("--keepalive-interval", limits->keepalive_seconds,
                  "Seconds of silence on a connection with calls open before it is pinged; "
                  "one that does not answer within min(this, 10) s is closed, ending its calls")
      ->check(CLI::Range(1, 86400));
}

int Fail(const std::string& message) {
  spdlog::error("{}", message);
  return 1;
}

// --tls-ca, --tls-cert, --tls-key, --tls-client-auth, --token-file and
// --insecure on a server subcommand.
void AddSecurityFlags(CLI::App* app, psd::ServerSecurity* security) {
  app->add_option("--tls-ca", security->tls_ca,
                  "PEM CA that signs psd certificates (verifies peers; mutual TLS)");
  app->add_option("--tls-cert", security->tls_cert, "PEM server certificate: TLS on");
  app->add_option("--tls-key", security->tls_key, "PEM private key of --tls-cert");
  app->add_flag("--tls-client-auth", security->tls_client_auth,
                "Require client certificates signed by --tls-ca (mutual TLS)");
  app->add_option("--token-file", security->token_file,
                  "File of accepted bearer tokens, \"<role> <token>\" per line (needs TLS)");
  app->add_flag("--insecure", security->insecure,
                "Allow a non-loopback --listen without TLS (trusted networks only)");
}

// The cluster file's `security:` section under the flags (flags win).
void MergeSecurity(CLI::App* app, const psd::SecurityConfig& file,
                   psd::ServerSecurity* security) {
  if (app->count("--tls-ca") == 0) security->tls_ca = file.tls_ca;
  if (app->count("--tls-cert") == 0) security->tls_cert = file.tls_cert;
  if (app->count("--tls-key") == 0) security->tls_key = file.tls_key;
  if (app->count("--token-file") == 0) security->token_file = file.token_file;
  if (app->count("--tls-client-auth") == 0) security->tls_client_auth = file.tls_client_auth;
}

// The checks the cluster file's values get, for the same settings given as
// flags: "" when fine, else the message naming the flag.
std::string CheckFlagValues(const std::string& listen, const std::string& advertise,
                            const std::string& http_listen) {
  const std::pair<const char*, const std::string*> addresses[] = {
      {"--listen", &listen}, {"--advertise", &advertise}, {"--http-listen", &http_listen}};
  for (const auto& [flag, value] : addresses) {
    if (value->empty() && std::string(flag) != "--listen") continue;
    absl::Status s = psd::CheckAddress(*value);
    if (!s.ok()) return std::string(flag) + ": " + std::string(s.message());
  }
  return "";
}

// TLS servers also dial other psd servers and must verify them.
std::string CheckSecurity(const psd::ServerSecurity& security) {
  if (security.tls() && security.tls_ca.empty()) {
    return "--tls-cert needs --tls-ca (to verify the other psd processes)";
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"psd: a sharded parameter server for TensorFlow-style variables"};
  app.require_subcommand(1);
  // Lets options of the top-level app (--log-level) follow the subcommand.
  app.fallthrough();
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));

  CLI::App* shard = app.add_subcommand("shard", "Serve one shard's variables");
  std::string config_path;
  int shard_id = 0;
  psd::ShardServerOptions options;
  std::string memory_limit;
  std::string staging_pool_bytes;
  std::string move_rate_when_busy;
  shard->add_option("--config", config_path, "Cluster file (YAML); flags override its values");
  shard->add_option("--id", shard_id,
                    "This shard's id (required unless --config lists exactly one shard); two "
                    "processes cannot hold one id")
      ->check(CLI::NonNegativeNumber);
  shard->add_option("--listen", options.shard.listen, "HOST:PORT to serve on (port 0: any free port)");
  shard->add_option("--advertise", options.shard.advertise, "HOST:PORT others dial (default: --listen)");
  shard->add_option("--device", options.shard.device, "Where variables live: cpu or gpu:N");
  shard->add_option("--host", options.shard.host,
                    "The machine (failure domain) this shard runs on, e.g. the node's name: "
                    "replicas of a part go to shards of distinct hosts (default: its own)");
  shard->add_option("--memory-limit", memory_limit, "Byte budget for variables, e.g. 4GiB (0: none)");
  shard->add_option("--staging-pool-bytes", staging_pool_bytes,
                    "Idle staging buffers kept between streamed writes, inside --memory-limit "
                    "(default 1GiB; 0: none kept)");
  shard->add_option("--max-message-bytes", options.max_message_bytes, "Largest gRPC message")
      ->check(CLI::Range(4096, 2147483647));
  shard->add_option("--stream-chunk-bytes", options.stream_chunk_bytes,
                    "Chunk size of streamed reads when the client asks for none")
      ->check(CLI::Range(4096, 64 << 20));
  shard->add_option("--move-rate-when-busy", move_rate_when_busy,
                    "Bytes a second a part moving in is copied at while trainers write to "
                    "either shard, e.g. 192MiB (the default; 0: no limit)");
  shard->add_option("--backup-timeout", options.backup_timeout_seconds,
                    "Seconds a write to a replicated part waits for an in-sync backup to apply "
                    "it before the shard asks the coordinator to drop that backup from the "
                    "in-sync set (default 2)")
      ->check(CLI::Range(0.01, 3600.0));
  shard->add_option("--stream-idle-timeout", options.stream_idle_timeout_seconds,
                    "Seconds a streamed assign or apply may wait for its caller's next message "
                    "before it is ended, nothing applied")
      ->check(CLI::Range(0.01, 86400.0));
  shard->add_option("--port-file", options.port_file, "After binding, write the real port here");
  shard->add_option("--http-listen", options.http_listen,
                    "HOST:PORT for /metrics, /healthz, /readyz: HTTPS with --tls-cert, else "
                    "loopback only (default 127.0.0.1:0; empty: off)");
  shard->add_option("--http-port-file", options.http_port_file,
                    "After binding, write the HTTP port here");
  shard->add_option("--drain-timeout", options.drain_timeout_seconds,
                    "Seconds in-flight calls may take after SIGTERM/SIGINT")
      ->check(CLI::NonNegativeNumber);
  shard->add_flag("--nccl-plane", options.nccl_plane,
                  "Serve the NCCL data plane to trainers on GPUs (gpu devices only; its NCCL "
                  "traffic has no TLS or tokens: trusted networks only)");

  shard->add_option("--coordinator", options.coordinator,
                    "Coordinator HOST:PORT to register with (default: the cluster file's)");

  AddSecurityFlags(shard, &options.security);
  AddLimitFlags(shard, &options.limits);

  CLI::App* coordinator = app.add_subcommand("coordinator", "Serve names and placement");
  psd::CoordinatorServerOptions coord;
  std::string coord_config_path;
  coordinator->add_option("--config", coord_config_path, "Cluster file (YAML); flags override it");
  coordinator->add_option("--listen", coord.coordinator.listen, "HOST:PORT to serve on");
  coordinator->add_option("--advertise", coord.coordinator.advertise, "HOST:PORT others dial");
  coordinator->add_option("--state-dir", coord.coordinator.state_dir,
                          "Where the registry is persisted (empty: memory only)");
  coordinator->add_option("--port-file", coord.port_file, "After binding, write the real port here");
  coordinator->add_option("--http-listen", coord.http_listen,
                          "HOST:PORT for /metrics, /healthz, /readyz: HTTPS with --tls-cert, else "
                          "loopback only (default 127.0.0.1:0; empty: off)");
  coordinator->add_option("--http-port-file", coord.http_port_file,
                          "After binding, write the HTTP port here");
  coordinator->add_option("--drain-timeout", coord.drain_timeout_seconds,
                          "Seconds in-flight calls may take after SIGTERM/SIGINT")
      ->check(CLI::NonNegativeNumber);
  coordinator->add_option("--heartbeat-interval", coord.heartbeat_interval_seconds,
                          "Seconds between shard heartbeats")
      ->check(CLI::PositiveNumber);
  coordinator->add_option("--liveness-timeout", coord.shard_liveness_timeout_seconds,
                          "Seconds without a heartbeat before a shard counts as down")
      ->check(CLI::PositiveNumber);
  coordinator->add_option("--lease-period", coord.lease_period_seconds,
                          "Seconds of lease each heartbeat grants its shard (at least twice "
                          "--heartbeat-interval; docs/replication.md)")
      ->check(CLI::PositiveNumber);
  coordinator->add_option("--replication", coord.replication,
                          "Shards holding each part, for declarations that name none: 1 (no "
                          "backups, the default) to 3 (docs/replication.md)")
      ->check(CLI::Range(1, 3));
  coordinator->add_option("--session-ttl", coord.session_ttl_seconds,
                          "Seconds without a call before a client session expires (0: never); "
                          "clients ping in the background")
      ->check(CLI::NonNegativeNumber);
  coordinator->add_option("--max-message-bytes", coord.max_message_bytes, "Largest gRPC message")
      ->check(CLI::Range(4096, 2147483647));
  coordinator->add_option("--checkpoint-dir", coord.checkpoint.dir,
                          "Default checkpoint directory (saves, latest, restore)");
  coordinator->add_option("--max-to-keep", coord.checkpoint.max_to_keep,
                          "Checkpoints kept (TF1 Saver max_to_keep; 0 keeps all)")
      ->check(CLI::NonNegativeNumber);
  coordinator->add_option("--keep-checkpoint-every-n-hours",
                          coord.checkpoint.keep_checkpoint_every_n_hours,
                          "Keep one checkpoint forever per this many hours")
      ->check(CLI::PositiveNumber);
  std::string checkpoint_interval;
  coordinator->add_option("--checkpoint-interval", checkpoint_interval,
                          "Save every this long, e.g. 10m (checkpoint.interval; 0: off)");
  coordinator->add_option("--every-n-steps", coord.checkpoint.every_n_steps,
                          "Save whenever --global-step crosses a multiple of this (0: off)")
      ->check(CLI::NonNegativeNumber);
  coordinator->add_option("--global-step", coord.checkpoint.global_step,
                          "Integer scalar variable whose value names saves (model.ckpt-STEP)");
  coordinator->add_flag("--save-on-shutdown", coord.checkpoint.save_on_shutdown,
                        "A final save on SIGTERM / SIGINT");
  coordinator->add_flag("--restore-lost", coord.checkpoint.restore_lost,
                        "Restore a shard's lost parts from the latest checkpoint");
  std::string checkpoint_roots;
  coordinator->add_option("--checkpoint-roots", checkpoint_roots,
                          "More directories saves may go under, comma-separated "
                          "(checkpoint.roots; --checkpoint-dir always is one)");
  coordinator->add_option("--restore-from", coord.restore_from,
                          "Checkpoint DIR or PREFIX: declare and restore its variables at start");

  AddSecurityFlags(coordinator, &coord.security);
  AddLimitFlags(coordinator, &coord.limits);

  CLI11_PARSE(app, argc, argv);

  spdlog::set_default_logger(spdlog::stderr_color_mt("psd"));
  spdlog::set_level(spdlog::level::from_str(log_level));

  // Both servers: every connection costs a descriptor (process_tuning.h).
  const psd::OpenFileLimit files = psd::RaiseOpenFileLimit();
  if (!files.error.empty()) {
    spdlog::warn("open files: limit {}; cannot raise it: {}", files.before, files.error);
  } else if (files.after != files.before) {
    spdlog::info("open files: limit raised from {} to {} (the hard limit)", files.before,
                 files.after);
  } else {
    spdlog::info("open files: limit {} (the hard limit)", files.after);
  }

  if (shard->parsed()) {
    // glibc raises its mmap threshold after large blocks are freed, after
    // which the 1 MiB buffers of streamed tensors come from per-thread arenas
    // that keep the memory. A fixed threshold keeps such buffers mmapped and
    // returned at once, so a streamed assign peaks at two copies of the
    // variable, not two copies plus arena garbage.
    mallopt(M_MMAP_THRESHOLD, 256 << 10);
    if (shard->count("--id") == 0 && config_path.empty()) {
      return Fail("psd shard needs --id K (or --config FILE naming its id): every shard of a "
                  "cluster has its own id");
    }
    // Start from the cluster file's entry for this shard; explicit flags win.
    psd::ShardConfig from_file;
    from_file.id = shard_id;
    if (!config_path.empty()) {
      auto config = psd::LoadClusterConfig(config_path);
      if (!config.ok()) return Fail(std::string(config.status().message()));
      // Without --id the file must name the shard: two shards defaulting to
      // one id would fight over it.
      if (shard->count("--id") == 0) {
        if (config->shards.size() != 1) {
          return Fail(config_path + " lists " + std::to_string(config->shards.size()) +
                      " shards: give this one's --id");
        }
        shard_id = config->shards[0].id;
      }
      const psd::ShardConfig* entry = config->FindShard(shard_id);
      if (entry == nullptr) {
        return Fail(config_path + ": no shard with id " + std::to_string(shard_id));
      }
      from_file = *entry;
      MergeSecurity(shard, config->security, &options.security);
    }
    if (shard->count("--coordinator") == 0 && !config_path.empty()) {
      auto config = psd::LoadClusterConfig(config_path);
      if (config.ok()) {
        options.coordinator = config->coordinator.advertise.empty()
                                  ? config->coordinator.listen
                                  : config->coordinator.advertise;
      }
    }
    psd::ShardConfig& cfg = options.shard;
    if (shard->count("--listen") == 0) cfg.listen = from_file.listen;
    if (shard->count("--advertise") == 0) cfg.advertise = from_file.advertise;
    if (shard->count("--device") == 0) cfg.device = from_file.device;
    if (shard->count("--host") == 0) cfg.host = from_file.host;
    if (absl::Status host = psd::CheckHostName(cfg.host); !host.ok()) {
      return Fail("--host: " + std::string(host.message()));
    }
    if (shard->count("--http-listen") == 0) options.http_listen = from_file.http_listen;
    if (shard->count("--http-max-connections") == 0) {
      options.limits.http_max_connections = from_file.http_max_connections;
    }
    cfg.id = from_file.id;
    cfg.memory_limit = from_file.memory_limit;
    if (!memory_limit.empty()) {
      auto bytes = psd::ParseByteSize(memory_limit);
      if (!bytes.ok()) return Fail("--memory-limit: " + std::string(bytes.status().message()));
      cfg.memory_limit = *bytes;
    }
    cfg.staging_pool_bytes = from_file.staging_pool_bytes;
    if (!staging_pool_bytes.empty()) {
      auto bytes = psd::ParseByteSize(staging_pool_bytes);
      if (!bytes.ok()) {
        return Fail("--staging-pool-bytes: " + std::string(bytes.status().message()));
      }
      cfg.staging_pool_bytes = *bytes;
    }
    if (!move_rate_when_busy.empty()) {
      auto bytes = psd::ParseByteSize(move_rate_when_busy);
      if (!bytes.ok()) {
        return Fail("--move-rate-when-busy: " + std::string(bytes.status().message()));
      }
      options.move_rate_when_busy = *bytes;
    }
    if (cfg.advertise.empty()) cfg.advertise = cfg.listen;
    if (std::string error = CheckFlagValues(cfg.listen, cfg.advertise, options.http_listen);
        !error.empty()) {
      return Fail(error);
    }
    if (absl::Status s = psd::CheckDevice(cfg.device); !s.ok()) {
      return Fail("--device: " + std::string(s.message()));
    }
    if (std::string error = CheckSecurity(options.security); !error.empty()) return Fail(error);
    psd::TuneShardProcess();
    absl::Status status = psd::RunShardServer(options);
    if (!status.ok()) return Fail(status.ToString());
    return 0;
  }
  if (coordinator->parsed()) {
    if (!coord_config_path.empty()) {
      auto config = psd::LoadClusterConfig(coord_config_path);
      if (!config.ok()) return Fail(std::string(config.status().message()));
      const psd::CoordinatorConfig& file = config->coordinator;
      MergeSecurity(coordinator, config->security, &coord.security);
      if (coordinator->count("--listen") == 0) coord.coordinator.listen = file.listen;
      if (coordinator->count("--advertise") == 0) coord.coordinator.advertise = file.advertise;
      if (coordinator->count("--state-dir") == 0) coord.coordinator.state_dir = file.state_dir;
      if (coordinator->count("--http-listen") == 0) coord.http_listen = file.http_listen;
      if (coordinator->count("--http-max-connections") == 0) {
        coord.limits.http_max_connections = file.http_max_connections;
      }
      if (coordinator->count("--replication") == 0) coord.replication = file.replication;
      const psd::CheckpointConfig& ckpt = config->checkpoint;
      if (coordinator->count("--checkpoint-dir") == 0) coord.checkpoint.dir = ckpt.dir;
      if (coordinator->count("--max-to-keep") == 0) coord.checkpoint.max_to_keep = ckpt.max_to_keep;
      if (coordinator->count("--keep-checkpoint-every-n-hours") == 0) {
        coord.checkpoint.keep_checkpoint_every_n_hours = ckpt.keep_checkpoint_every_n_hours;
      }
      if (coordinator->count("--checkpoint-interval") == 0) {
        coord.checkpoint.interval_seconds = ckpt.interval_seconds;
      }
      if (coordinator->count("--every-n-steps") == 0) {
        coord.checkpoint.every_n_steps = ckpt.every_n_steps;
      }
      if (coordinator->count("--global-step") == 0) coord.checkpoint.global_step = ckpt.global_step;
      if (coordinator->count("--save-on-shutdown") == 0) {
        coord.checkpoint.save_on_shutdown = ckpt.save_on_shutdown;
      }
      if (coordinator->count("--restore-lost") == 0) {
        coord.checkpoint.restore_lost = ckpt.restore_lost;
      }
      if (coordinator->count("--checkpoint-roots") == 0) coord.checkpoint.roots = ckpt.roots;
      coord.expected_shards = static_cast<int>(config->shards.size());
    }
    if (std::string error = CheckFlagValues(coord.coordinator.listen, coord.coordinator.advertise,
                                            coord.http_listen);
        !error.empty()) {
      return Fail(error);
    }
    if (std::string error = CheckSecurity(coord.security); !error.empty()) return Fail(error);
    if (!checkpoint_interval.empty()) {
      auto seconds = psd::ParseCheckpointInterval(checkpoint_interval);
      if (!seconds.ok()) return Fail("--checkpoint-interval: " + std::string(seconds.status().message()));
      coord.checkpoint.interval_seconds = *seconds;
    }
    if (coordinator->count("--checkpoint-roots") > 0) {
      coord.checkpoint.roots = psd::SplitCheckpointRoots(checkpoint_roots);
    }
    absl::Status status = psd::RunCoordinatorServer(coord);
    if (!status.ok()) return Fail(status.ToString());
    return 0;
  }
  return 0;
}
