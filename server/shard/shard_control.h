// ShardControlService: the ShardControl gRPC service of a `psd shard`
// process (proto/psd/shard.proto), apart from the data service so process
// control stays with the process (shard_server.cc). Stop answers first, then
// hands the stop to the process's main loop, which drains exactly as on
// SIGTERM.
//
// Thread-safety: thread-safe; `on_stop` is called at most once, from an RPC
// thread, and must not block.
#ifndef PSD_SERVER_SHARD_SHARD_CONTROL_H_
#define PSD_SERVER_SHARD_SHARD_CONTROL_H_

#include <atomic>
#include <functional>
#include <string>

#include "psd/shard.grpc.pb.h"

namespace psd {

class ShardControlService final : public ShardControl::CallbackService {
 public:
  // `on_stop` gets the reason the caller gave (with its peer).
  explicit ShardControlService(std::function<void(const std::string& reason)> on_stop)
      : on_stop_(std::move(on_stop)) {}

  grpc::ServerUnaryReactor* Stop(grpc::CallbackServerContext* ctx, const StopShardRequest* request,
                                 StopShardResponse* response) override;

 private:
  const std::function<void(const std::string&)> on_stop_;
  std::atomic<bool> stopping_{false};
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_CONTROL_H_
