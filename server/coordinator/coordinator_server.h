// Runs one `psd coordinator` process: recovers the registry from the state
// directory, serves the Coordinator service (plus gRPC health checking and
// reflection) until SIGINT or SIGTERM, then drains: new calls are refused
// with UNAVAILABLE, running ones get the drain timeout, and the server shuts
// down. Every acknowledged registry change is already on disk, so a SIGKILL
// loses nothing acknowledged either.
#ifndef PSD_SERVER_COORDINATOR_COORDINATOR_SERVER_H_
#define PSD_SERVER_COORDINATOR_COORDINATOR_SERVER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "runtime/auth.h"
#include "runtime/cluster_config.h"
#include "runtime/serving.h"

namespace psd {

struct CoordinatorServerOptions {
  // listen, advertise, state_dir. An empty state_dir keeps the registry in
  // memory only (a warning is logged): tests and throwaway clusters.
  CoordinatorConfig coordinator;
  // Largest gRPC message accepted or sent (also for calls to shards).
  int max_message_bytes = 64 << 20;
  // After binding, the real port is written here (for `listen` port 0).
  std::string port_file;
  // Loopback HOST:PORT of /metrics, /healthz and /readyz (port 0: any);
  // empty turns the HTTP endpoint off.
  std::string http_listen = "127.0.0.1:0";
  std::string http_port_file;
  // HTTP connections, gRPC threads and streams (runtime/serving.h).
  ServingLimits limits;
  // How long in-flight calls may take to finish after a stop signal.
  double drain_timeout_seconds = 10;
  // Interval shards are told to heartbeat at.
  double heartbeat_interval_seconds = 1;
  // A shard not heard from for this long is not live: it gets no new parts
  // and shows as down in ListShards.
  double shard_liveness_timeout_seconds = 5;
  // The lease a heartbeat grants its shard (docs/replication.md "Leases");
  // at least twice the heartbeat interval.
  double lease_period_seconds = 3;
  // Shards holding each part, for declarations that do not name their own
  // (docs/replication.md): coordinator.replication, --replication.
  int replication = 1;
  // A client session not heard from for this long is closed (its trainer
  // died without closing it); clients ping well within it. 0: never.
  double session_ttl_seconds = 900;
  // Deadline of the coordinator's calls to shards (creating parts).
  double shard_rpc_timeout_seconds = 30;
  // Checkpoint directory, retention policy, periodic and final saves,
  // restore of lost parts (coordinator/checkpoint_scheduler.h).
  CheckpointConfig checkpoint;
  // The registry log is compacted into a snapshot past this size.
  int64_t compact_log_bytes = 64 << 20;
  // `psd coordinator --restore-from DIR|PREFIX`: once `expected_shards`
  // (at least one, and at least `replication`) are live, declare and
  // restore every variable of that checkpoint. Empty: none.
  std::string restore_from;
  int expected_shards = 0;
  // TLS, tokens and bind policy; the node token is also sent to shards.
  ServerSecurity security;
};

// Blocks until the server has drained after a signal. Returns an error if it
// could not start (corrupt state directory, port in use, ...).
absl::Status RunCoordinatorServer(const CoordinatorServerOptions& options);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_COORDINATOR_SERVER_H_
