// NcclGroup: a trainer's side of a GPU shard's NCCL data plane
// (docs/gpu.md, "NCCL data plane"). Dense variables move between the
// shard's GPU and the trainers' GPUs with NCCL collectives instead of gRPC:
//
//  - Broadcast(var, buf): the shard's value of `var` lands in `buf` on every
//    trainer's GPU, in one collective;
//  - ReduceAdd(var, buf): the sum of every trainer's `buf` is added to `var`
//    on the shard, in one collective, as one atomic assign_add.
//
// Joining goes through the shard's authenticated gRPC call (Shard.Nccl, role
// trainer: ClientOptions' TLS and token apply), which hands out the NCCL
// unique id, this trainer's rank and the group's size; the shard is rank 0.
// The NCCL traffic itself has no TLS or tokens: use it on trusted networks
// only. Every other op stays on ShardClient (gRPC); both can be used side by
// side on the same variables.
//
// Every trainer of a group joins with the same group name, variables and
// num_trainers, then issues the same collectives in the same order (as with
// any NCCL program); Join returns once all have joined. A request that
// disagrees with the others' or with the variable fails for every trainer
// with INVALID_ARGUMENT and the group goes on; an NCCL failure or a trainer
// leaving (destroying its NcclGroup) ends the group for everyone, and later
// calls fail with the reason. The shard must run with --nccl-plane on a gpu
// device: a CPU shard or one without the flag answers FAILED_PRECONDITION
// naming its device.
//
// Buffers are device memory on the trainer's GPU (NcclGroupOptions::device),
// holding exactly the variable's bytes (its dtype and shape as at the join).
//
// Thread-safety: thread-compatible; calls on one NcclGroup must not overlap.
//
//   psd::client::NcclGroupOptions options;
//   options.group = "dense";
//   options.variables = {"w", "b"};
//   options.num_trainers = 4;
//   options.device = local_rank;
//   PSD_ASSIGN_OR_RETURN(auto group, psd::client::NcclGroup::Join("shard0:7000", options));
//   PSD_RETURN_IF_ERROR(group->Broadcast("w", w_dev, w_bytes).status());
//   ...
//   PSD_RETURN_IF_ERROR(group->ReduceAdd("w", grad_dev, w_bytes).status());
#ifndef PSD_CLIENT_NCCL_GROUP_H_
#define PSD_CLIENT_NCCL_GROUP_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "psd/channel_security.h"
#include "psd/tensor.h"
#include "psd/types.pb.h"

namespace psd {
namespace client {

struct NcclGroupOptions {
  // The group's name: the same on every trainer of the group.
  std::string group;
  // Dense variables on the shard that the group moves.
  std::vector<std::string> variables;
  // Trainers in the group (the shard is one more rank).
  int num_trainers = 1;
  // This trainer's CUDA device.
  int device = 0;
  // How long Join waits for every trainer to join.
  absl::Duration join_timeout = absl::Seconds(120);
  // How long one collective waits for every rank to take part.
  absl::Duration collective_timeout = absl::Seconds(300);
  // TLS and bearer token of the join stream (role trainer).
  ChannelSecurity security;
  // The shard incarnation the caller's handle names (0: no check); a
  // restarted shard answers ABORTED "stale handle".
  uint64_t shard_incarnation = 0;
};

// A variable of the group as the shard held it at the join.
struct NcclVariableInfo {
  std::string name;
  DataType dtype = DT_INVALID;
  TensorShape shape;
  size_t bytes = 0;
};

class NcclGroup {
 public:
  // Joins (or creates) the group on the shard at `address` ("host:port") and
  // builds this trainer's communicator; returns once every trainer joined.
  static absl::StatusOr<std::unique_ptr<NcclGroup>> Join(const std::string& address,
                                                         const NcclGroupOptions& options);
  // Leaves the group (which ends it for every member) and frees the
  // communicator.
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  int rank() const;  // 1..num_trainers
  int size() const;  // num_trainers + 1
  const std::string& shard_device() const;  // "gpu:0"
  const std::vector<NcclVariableInfo>& variables() const;

  // Receives the shard's value of `variable` into `device_buffer` (`bytes`
  // must be the variable's size). Returns the version of the value sent.
  absl::StatusOr<uint64_t> Broadcast(const std::string& variable, void* device_buffer,
                                     size_t bytes);
  // Adds the sum of every trainer's `device_buffer` (the variable's dtype
  // and size) to `variable` on the shard. Returns its version after the add.
  absl::StatusOr<uint64_t> ReduceAdd(const std::string& variable, const void* device_buffer,
                                     size_t bytes);

  class Impl;

 private:
  explicit NcclGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_NCCL_GROUP_H_
