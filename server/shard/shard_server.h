// Runs one `psd shard` process: builds the device and variable store, serves
// the Shard and ShardControl services (plus gRPC health checking and
// reflection) until SIGINT, SIGTERM or ShardControl.Stop (the coordinator's
// `psctl shutdown`), then drains: stops accepting calls, lets in-flight calls
// finish (bounded by the drain timeout), and returns.
#ifndef PSD_SERVER_SHARD_SHARD_SERVER_H_
#define PSD_SERVER_SHARD_SHARD_SERVER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "runtime/auth.h"
#include "runtime/cluster_config.h"
#include "runtime/serving.h"
#include "shard/move_service.h"

namespace psd {

struct ShardServerOptions {
  ShardConfig shard;
  // Largest gRPC message accepted or sent.
  int max_message_bytes = 512 << 20;
  // Chunk size of streamed reads when the client asks for none.
  int stream_chunk_bytes = 1 << 20;
  // The coordinator to register with and heartbeat to (HOST:PORT); empty
  // runs the shard on its own.
  std::string coordinator;
  // After binding, the real port is written here (for `listen` port 0).
  std::string port_file;
  // Loopback HOST:PORT of /metrics, /healthz and /readyz (port 0: any);
  // empty turns the HTTP endpoint off.
  std::string http_listen = "127.0.0.1:0";
  // After binding, the HTTP port is written here.
  std::string http_port_file;
  // How long in-flight calls may take to finish after a stop signal.
  double drain_timeout_seconds = 10;
  // TLS, tokens and bind policy; the node token is also sent to the coordinator.
  ServerSecurity security;
  // The NCCL data plane for trainers on GPUs (--nccl-plane; gpu devices
  // only). Its NCCL traffic has no TLS or tokens: trusted networks only.
  bool nccl_plane = false;
  // HTTP connections, gRPC threads and streams (runtime/serving.h).
  ServingLimits limits;
  // How long a streamed assign or apply may wait for its caller's next
  // message before it is ended (IdleStreamWatchdog).
  double stream_idle_timeout_seconds = 60;
  // A move's snapshot copy while trainers write (ShardMoveService); <= 0:
  // no limit.
  int64_t move_rate_when_busy = kDefaultMoveRateWhenBusy;
  // How long a write to a replicated part waits for an in-sync backup
  // before the shard asks the coordinator to drop that backup from the
  // in-sync set (--backup-timeout; docs/replication.md).
  double backup_timeout_seconds = 2;
};

// Blocks until the server has drained after a signal. Returns an error if it
// could not start (bad device, port in use, ...).
absl::Status RunShardServer(const ShardServerOptions& options);

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_SERVER_H_
