// The cluster file: one YAML document that describes a psd cluster
// (`coordinator:`, `shards:`, `checkpoint:`, `security:`). Every process reads
// the same file and picks its own section; every key is also a command-line
// flag of the same name (with '-' for '_'), and flags win. Unknown keys and
// bad values (an address that is not HOST:PORT, an unknown device, a
// negative count) are errors naming the key, so a typo fails at start
// instead of being silently ignored. configs/README.md documents every key.
#ifndef PSD_SERVER_RUNTIME_CLUSTER_CONFIG_H_
#define PSD_SERVER_RUNTIME_CLUSTER_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "observability/http_server.h"

namespace psd {

struct ShardConfig {
  int id = 0;
  std::string listen = "127.0.0.1:7071";  // loopback unless configured
  std::string advertise;                  // what others dial; defaults to listen
  std::string device = "cpu";             // cpu, or gpu:N
  // The machine (or other failure domain) the shard runs on: replicas of a
  // part go to shards of distinct hosts where the hosts allow it. Empty: a
  // failure domain of its own. At most 255 bytes of [A-Za-z0-9._:-].
  std::string host;
  int64_t memory_limit = 0;  // bytes; 0 = unlimited
  // Idle staging buffers the shard keeps between ops, inside memory_limit
  // (VariableStoreOptions::staging_pool_bytes); 0 = none kept.
  int64_t staging_pool_bytes = int64_t{1} << 30;
  // /metrics, /healthz, /readyz; loopback unless TLS is on; "" = off.
  std::string http_listen = "127.0.0.1:0";
  // Connections the HTTP endpoint serves at once (>= 1).
  int http_max_connections = kDefaultHttpMaxConnections;
};

struct CoordinatorConfig {
  std::string listen = "127.0.0.1:7070";
  std::string advertise;
  std::string state_dir;
  std::string http_listen = "127.0.0.1:0";  // as ShardConfig::http_listen
  int http_max_connections = kDefaultHttpMaxConnections;  // as ShardConfig's
  // Shards holding each part (docs/replication.md): 1 (no backups) to 3;
  // a declaration may name its own.
  int replication = 1;
};

struct CheckpointConfig {
  std::string dir;
  int max_to_keep = 5;
  double keep_checkpoint_every_n_hours = 10000.0;
  double interval_seconds = 0;  // 0 = no periodic checkpoints
  int64_t every_n_steps = 0;  // 0 = none; needs global_step
  std::string global_step;    // an int64 (or int32) scalar variable's name
  bool save_on_shutdown = false;  // a final save on SIGTERM / SIGINT
  // Parts of a shard that came back empty are restored from the latest
  // checkpoint.
  bool restore_lost = false;
  // Directories besides `dir` that saves (and restores, listings) may use;
  // a path outside `dir` and these is PERMISSION_DENIED.
  std::vector<std::string> roots;
};

// "a,b,,c" -> {"a", "b", "c"} (checkpoint.roots, --checkpoint-roots).
std::vector<std::string> SplitCheckpointRoots(const std::string& list);

struct SecurityConfig {
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string token_file;
  bool tls_client_auth = false;  // mutual TLS: clients need a certificate from tls_ca
};

struct ClusterConfig {
  CoordinatorConfig coordinator;
  std::vector<ShardConfig> shards;
  CheckpointConfig checkpoint;
  SecurityConfig security;

  // The entry of shard `id`, or nullptr.
  const ShardConfig* FindShard(int id) const;
};

// Parses and validates a cluster file's text; `source` names it in errors.
absl::StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml, const std::string& source);
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);

// "4GiB", "512MiB", "1.5GB", "4096" -> bytes. Binary (KiB, MiB, GiB, TiB)
// and decimal (K/KB, M/MB, G/GB, T/TB) suffixes, case-insensitive.
absl::StatusOr<int64_t> ParseByteSize(const std::string& text);

// "30s", "5m", "2h", "1.5" (seconds) -> seconds.
absl::StatusOr<double> ParseDuration(const std::string& text);
// The time between periodic checkpoints (checkpoint.interval,
// --checkpoint-interval): a duration of 0 (none) or at least
// kMinCheckpointIntervalSeconds, so a save that keeps failing is tried
// (and logged) at most once a second.
inline constexpr double kMinCheckpointIntervalSeconds = 1;
absl::StatusOr<double> ParseCheckpointInterval(const std::string& text);

// OK if `address` is HOST:PORT with a port in [0, 65535] ("[::1]:7070" for
// IPv6); the message says what is wrong with it.
// OK for a shard's `host` (ShardConfig::host), else INVALID_ARGUMENT
// saying why.
absl::Status CheckHostName(const std::string& host);
absl::Status CheckAddress(const std::string& address);

// OK if `device` names a device psd knows: "cpu", "cpu:0", "gpu" or "gpu:N"
// (whether this build and host have that GPU is checked at start).
absl::Status CheckDevice(const std::string& device);

}  // namespace psd

#endif  // PSD_SERVER_RUNTIME_CLUSTER_CONFIG_H_
