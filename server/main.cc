// `psd`: the psd server binary. Subcommands:
//   psd shard [--config FILE --id K] [flags]   serve one shard's variables
//   psd coordinator [--config FILE] [flags]     serve names and placement
#include <malloc.h>

#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "runtime/cluster_config.h"
#include "runtime/coordinator_server.h"
#include "runtime/shard_server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

int Fail(const std::string& message) {
  spdlog::error("{}", message);
  return 1;
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
  shard->add_option("--config", config_path, "Cluster file (YAML); flags override its values");
  shard->add_option("--id", shard_id, "This shard's id in the cluster file")->check(CLI::NonNegativeNumber);
  shard->add_option("--listen", options.shard.listen, "HOST:PORT to serve on (port 0: any free port)");
  shard->add_option("--advertise", options.shard.advertise, "HOST:PORT others dial (default: --listen)");
  shard->add_option("--device", options.shard.device, "Where variables live: cpu");
  shard->add_option("--memory-limit", memory_limit, "Byte budget for variables, e.g. 4GiB (0: none)");
  shard->add_option("--max-message-bytes", options.max_message_bytes, "Largest gRPC message")
      ->check(CLI::Range(4096, 2147483647));
  shard->add_option("--stream-chunk-bytes", options.stream_chunk_bytes,
                    "Chunk size of streamed reads when the client asks for none")
      ->check(CLI::Range(4096, 64 << 20));
  shard->add_option("--port-file", options.port_file, "After binding, write the real port here");
  shard->add_option("--http-listen", options.http_listen,
                    "Loopback HOST:PORT for /metrics, /healthz, /readyz (empty: off)");
  shard->add_option("--http-port-file", options.http_port_file,
                    "After binding, write the HTTP port here");
  shard->add_option("--drain-timeout", options.drain_timeout_seconds,
                    "Seconds in-flight calls may take after SIGTERM/SIGINT")
      ->check(CLI::NonNegativeNumber);

  shard->add_option("--coordinator", options.coordinator,
                    "Coordinator HOST:PORT to register with (default: the cluster file's)");

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
                          "Loopback HOST:PORT for /metrics, /healthz, /readyz (empty: off)");
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

  CLI11_PARSE(app, argc, argv);

  spdlog::set_default_logger(spdlog::stderr_color_mt("psd"));
  spdlog::set_level(spdlog::level::from_str(log_level));

  if (shard->parsed()) {
    // glibc raises its mmap threshold after large blocks are freed, after
    // which the 1 MiB buffers of streamed tensors come from per-thread arenas
    // that keep the memory. A fixed threshold keeps such buffers mmapped and
    // returned at once, so a streamed assign peaks at two copies of the
    // variable, not two copies plus arena garbage.
    mallopt(M_MMAP_THRESHOLD, 256 << 10);
    // Start from the cluster file's entry for this shard; explicit flags win.
    psd::ShardConfig from_file;
    from_file.id = shard_id;
    if (!config_path.empty()) {
      auto config = psd::LoadClusterConfig(config_path);
      if (!config.ok()) return Fail(std::string(config.status().message()));
      const psd::ShardConfig* entry = config->FindShard(shard_id);
      if (entry == nullptr) {
        return Fail(config_path + ": no shard with id " + std::to_string(shard_id));
      }
      from_file = *entry;
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
    cfg.id = from_file.id;
    cfg.memory_limit = from_file.memory_limit;
    if (!memory_limit.empty()) {
      auto bytes = psd::ParseByteSize(memory_limit);
      if (!bytes.ok()) return Fail("--memory-limit: " + std::string(bytes.status().message()));
      cfg.memory_limit = *bytes;
    }
    if (cfg.advertise.empty()) cfg.advertise = cfg.listen;
    absl::Status status = psd::RunShardServer(options);
    if (!status.ok()) return Fail(status.ToString());
    return 0;
  }
  if (coordinator->parsed()) {
    if (!coord_config_path.empty()) {
      auto config = psd::LoadClusterConfig(coord_config_path);
      if (!config.ok()) return Fail(std::string(config.status().message()));
      const psd::CoordinatorConfig& file = config->coordinator;
      if (coordinator->count("--listen") == 0) coord.coordinator.listen = file.listen;
      if (coordinator->count("--advertise") == 0) coord.coordinator.advertise = file.advertise;
      if (coordinator->count("--state-dir") == 0) coord.coordinator.state_dir = file.state_dir;
      const psd::CheckpointConfig& ckpt = config->checkpoint;
      if (coordinator->count("--checkpoint-dir") == 0) coord.checkpoint.dir = ckpt.dir;
      if (coordinator->count("--max-to-keep") == 0) coord.checkpoint.max_to_keep = ckpt.max_to_keep;
      if (coordinator->count("--keep-checkpoint-every-n-hours") == 0) {
        coord.checkpoint.keep_checkpoint_every_n_hours = ckpt.keep_checkpoint_every_n_hours;
      }
    }
    absl::Status status = psd::RunCoordinatorServer(coord);
    if (!status.ok()) return Fail(status.ToString());
    return 0;
  }
  return 0;
}
