// ShardStopper: how the coordinator stops its shards for `psctl shutdown`:
// ShardControl.Stop to every registered shard at once, each bounded by a
// deadline, with the node credentials the coordinator dials shards with.
//
// Thread-safety: thread-compatible; StopAll from one thread at a time.
#ifndef PSD_SERVER_COORDINATOR_SHARD_STOPPER_H_
#define PSD_SERVER_COORDINATOR_SHARD_STOPPER_H_

#include <memory>

#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "psd/coordinator.pb.h"

namespace psd {

class ShardStopper {
 public:
  ShardStopper(std::shared_ptr<grpc::ChannelCredentials> credentials, absl::Duration timeout)
      : credentials_(std::move(credentials)), timeout_(timeout) {}

  // Tells every shard of `shards` to stop; fills stopped_shards and
  // unreached_shards of `response`. Does not wait for the shards to exit.
  void StopAll(const ListShardsResponse& shards, ShutdownResponse* response) const;

 private:
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;  // null: plaintext
  const absl::Duration timeout_;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_SHARD_STOPPER_H_
