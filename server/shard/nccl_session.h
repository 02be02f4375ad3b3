// The server side of one Shard.Nccl stream: a trainer's membership of an
// NCCL group (see shard/nccl_plane.h). The first message joins; each later
// one asks for a collective. Replies are queued and written one at a time,
// from gRPC's threads or the group's thread alike; the stream ends when the
// trainer closes it, or the plane ends its group.
#ifndef PSD_SERVER_SHARD_NCCL_SESSION_H_
#define PSD_SERVER_SHARD_NCCL_SESSION_H_

#include "absl/status/status.h"
#include "grpcpp/support/server_callback.h"
#include "psd/shard.pb.h"
#include "shard/nccl_plane.h"

namespace psd {

// A reactor for one stream. With a non-OK `refuse` (or a null `plane`) the
// stream is finished at once with that status; otherwise the plane's own
// availability is checked first.
grpc::ServerBidiReactor<NcclRequest, NcclReply>* NewNcclSession(NcclPlane* plane,
                                                                absl::Status refuse);

}  // namespace psd

#endif  // PSD_SERVER_SHARD_NCCL_SESSION_H_
