// NcclPlane: a GPU shard's NCCL data plane (docs/gpu.md, "NCCL data plane").
// Trainers on GPUs join a group through the Shard.Nccl stream; the shard is
// rank 0 of the group's communicator and takes part from its own GPU:
//
//  - broadcast(var): the shard's value (a consistent snapshot, as a streamed
//    read sees it) goes to every trainer's device buffer in one collective;
//  - reduce_add(var): the trainers' device buffers are summed onto the
//    shard's GPU in one collective and the sum is added to the variable as
//    one assign_add: under the variable's lock, admitted by the checkpoint
//    write gate (held, not rejected, while a fence is up), so it is atomic
//    with respect to the shard's other ops on the variable.
//
// Collective k of a group runs once every trainer has asked for its k-th
// collective and all asked for the same thing; until then the others wait.
// The shard answers `ready` (launch your NCCL call) or an error (nothing
// runs), then `done`. A request that disagrees with the others' or with the
// variable fails that collective for every trainer and the group goes on;
// a failure of NCCL itself, a trainer leaving (its stream ends) or a
// collective some rank never joins (collective_timeout) ends the group for
// every member, whose streams then finish with the reason.
//
// The value travels through the store's public read and assign paths, so
// on the shard it is staged through host memory once per collective (a
// device-to-device path would need the store to lend its device buffers);
// the collective itself runs GPU to GPU.
//
// The plane is off unless the shard was started with --nccl-plane, needs a
// gpu:N device, and carries no TLS or tokens: trusted networks only.
//
// Thread-safety: thread-safe. Each group runs its communicator and its
// collectives on a thread of its own; peers are called without any plane
// lock held.
#ifndef PSD_SERVER_SHARD_NCCL_PLANE_H_
#define PSD_SERVER_SHARD_NCCL_PLANE_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "psd/shard.pb.h"
#include "shard/variable_store.h"

namespace psd {

class NcclComm;
class NcclCommFactory;

struct NcclPlaneOptions {
  // --nccl-plane: off by default.
  bool enabled = false;
  int32_t shard_id = 0;
  // Every trainer must have joined and built its communicator within this.
  absl::Duration join_timeout = absl::Seconds(120);
  // Once `ready` went out, every rank must have taken part within this.
  absl::Duration collective_timeout = absl::Seconds(300);
  // Where communicators come from; null: NCCL (DefaultNcclCommFactory).
  NcclCommFactory* comms = nullptr;
};

// Where the plane sends a trainer's replies: its stream.
class NcclPeer {
 public:
  virtual ~NcclPeer() = default;
  // Queues one reply; ignored once the stream finished.
  virtual void Send(NcclReply reply) = 0;
  // Finishes the stream with `status` after the replies queued before it.
  virtual void Close(absl::Status status) = 0;
};

class NcclPlane {
 public:
  class Group;
  // A trainer's membership of a group, from its join to its stream's end.
  class Member;

  // `store` must outlive the plane.
  NcclPlane(VariableStore* store, const NcclPlaneOptions& options);
  ~NcclPlane();  // Shutdown()
  NcclPlane(const NcclPlane&) = delete;
  NcclPlane& operator=(const NcclPlane&) = delete;

  // OK when joins can be served. FAILED_PRECONDITION naming the device on a
  // shard whose device is not a GPU, or when the plane is off;
  // UNIMPLEMENTED in a build without NCCL; UNAVAILABLE once the device failed.
  absl::Status Available() const;

  // Checks `join` and adds the trainer behind `peer` to its group (created
  // by the first join), filling `joined` with the unique id and its rank.
  absl::StatusOr<std::shared_ptr<Member>> Join(const NcclJoin& join,
                                               std::shared_ptr<NcclPeer> peer,
                                               NcclJoined* joined);
  // Queues the member's next collective. Answers come through its peer.
  absl::Status Collective(Member* member, const NcclCollective& request);
  // The member's stream ended: its group ends for everyone with `why`.
  void Leave(Member* member, absl::Status why);

  // Ends every group (UNAVAILABLE "shutting down") and waits for their
  // threads. Later joins fail.
  void Shutdown();

 private:
  void Fail(const std::shared_ptr<Group>& group, absl::Status status);
  // The group's thread: builds the shard's communicator, then runs the
  // collectives in order until the group ends.
  void RunGroup(const std::shared_ptr<Group>& group);
  // Runs collective `seq`; false once the group ended.
  bool RunCollective(const std::shared_ptr<Group>& group, NcclComm* comm, uint64_t seq,
                     const std::vector<NcclCollective>& requests);
  // The shard's side of a collective, checked against the variable: the
  // value to broadcast (and its version), or zeros to reduce into.
  absl::Status StageBroadcast(const NcclCollective& request,
                              std::unique_ptr<DeviceBuffer>* staged, uint64_t* version);
  absl::Status StageReduce(const NcclCollective& request, std::unique_ptr<DeviceBuffer>* staged);
  // Adds the reduced sum to the variable (assign_add through the write gate).
  absl::Status ApplySum(const NcclCollective& request, const DeviceBuffer& sum,
                        uint64_t* version);
  // Joins the threads of groups that have ended.
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  VariableStore* const store_;
  const NcclPlaneOptions options_;
  NcclCommFactory* const comms_;
  mutable absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, std::shared_ptr<Group>> groups_ ABSL_GUARDED_BY(mu_);
  // Ended groups whose threads have not been joined yet.
  std::vector<std::shared_ptr<Group>> ended_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_NCCL_PLANE_H_
