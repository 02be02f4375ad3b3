// What the coordinator's live moves (coordinator_service_move.cc) and its
// replica keeper (coordinator_service_replica.cc) share: the call of a
// ShardMove RPC, tried again while a restarted shard reconnects, and the
// CreateVariableRequest that makes a part of a moved or followed group.
//
// Thread-safety: free functions; thread-safe.
#ifndef PSD_SERVER_COORDINATOR_MOVE_CALLS_H_
#define PSD_SERVER_COORDINATOR_MOVE_CALLS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "psd/coordinator.pb.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"

namespace psd {
namespace move_calls {

// A shard that has just restarted (and registered again) may not be
// connected to yet: the channel is between reconnection attempts
// (PeerChannelArguments: at most 1 s apart). An UNAVAILABLE answer is
// tried again for this long; every ShardMove call may be repeated.
inline constexpr absl::Duration kReconnectGrace = absl::Seconds(3);

template <typename Req, typename Resp>
absl::Status CallMove(ShardMove::Stub* stub,
                      grpc::Status (ShardMove::Stub::*method)(grpc::ClientContext*, const Req&,
                                                              Resp*),
                      const Req& req, Resp* resp, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + kReconnectGrace;
  for (;;) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    absl::Status status = FromGrpcStatus((stub->*method)(&ctx, req, resp));
    if (!absl::IsUnavailable(status) || absl::Now() >= give_up) return status;
    absl::SleepFor(absl::Milliseconds(200));
  }
}

// The CreateVariableRequest that makes part `k` of `def` on a shard
// (uninitialized, or an empty table: a move fills it). A table's part is
// made as its declaration made it (coordinator_service_declare.cc); a
// slot's slot_of names `primary_part`, the table part it moves with.
CreateVariableRequest MovedPartCreate(const VariableDef& def, int k,
                                      const std::string& primary_part = "");

}  // namespace move_calls
}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_MOVE_CALLS_H_
