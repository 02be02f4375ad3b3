#include "shard/shard_control.h"

#include "absl/strings/str_cat.h"

namespace psd {

grpc::ServerUnaryReactor* ShardControlService::Stop(grpc::CallbackServerContext* ctx,
                                                    const StopShardRequest* request,
                                                    StopShardResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // A repeated stop (a retry, or a second admin) is answered the same way:
  // the shard is stopping either way.
  reactor->Finish(grpc::Status::OK);
  if (!stopping_.exchange(true)) {
    on_stop_(absl::StrCat(request->reason().empty() ? "stop requested" : request->reason(),
                          " (from ", ctx->peer(), ")"));
  }
  return reactor;
}

}  // namespace psd
