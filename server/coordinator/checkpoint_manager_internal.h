// What the files implementing CheckpointManager share: checkpoint_manager.cc
// (the progress board, roots, retention states, listings, the policy),
// checkpoint_manager_save.cc (a save) and checkpoint_manager_restore.cc (a
// restore). Include it from those files only.
#ifndef PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_INTERNAL_H_
#define PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_INTERNAL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "checkpoint/checkpoint_state.h"
#include "grpcpp/grpcpp.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"

namespace psd {
namespace checkpoint_manager_internal {

// One shard RPC with `deadline`, waiting for the channel to be ready.
template <typename Req, typename Resp>
absl::Status Call(Shard::Stub* stub,
                  grpc::Status (Shard::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                  const Req& req, Resp* resp, absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  // A shard that just restarted on its address is live (the stub lookup
  // checks); ride out the channel's reconnect backoff instead of failing.
  ctx.set_wait_for_ready(true);
  return FromGrpcStatus((stub->*method)(&ctx, req, resp));
}

// The first failure of a call made to each of `shards` (statuses[i] from
// shards[i]), as "`what`: shard ID: ..."; OK if none failed.
inline absl::Status FirstError(const std::vector<absl::Status>& statuses,
                               const std::vector<int32_t>& shards, absl::string_view what) {
  for (size_t i = 0; i < statuses.size(); ++i) {
    if (!statuses[i].ok()) {
      return absl::Status(statuses[i].code(), absl::StrCat(what, ": shard ", shards[i], ": ",
                                                           statuses[i].message()));
    }
  }
  return absl::OkStatus();
}

// Where a track's state is persisted: the cluster's keeps the name it
// always had; the trainer Savers' has its own.
inline std::string RetentionPath(const std::string& dir, const std::string& name,
                                 bool saver_track) {
  return checkpoint::RetentionStateFilename(dir, saver_track ? absl::StrCat(name, ".saver") : name);
}

}  // namespace checkpoint_manager_internal
}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CHECKPOINT_MANAGER_INTERNAL_H_
