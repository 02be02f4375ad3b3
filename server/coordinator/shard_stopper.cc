#include "coordinator/shard_stopper.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"

namespace psd {

void ShardStopper::StopAll(const ListShardsResponse& shards, ShutdownResponse* response) const {
  const int n = shards.shards_size();
  std::vector<absl::Status> results(n);
  std::vector<std::thread> callers;
  callers.reserve(n);
  for (int i = 0; i < n; ++i) {
    callers.emplace_back([this, &shards, &results, i] {
      const ShardStatus& shard = shards.shards(i);
      auto stub = ShardControl::NewStub(grpc::CreateChannel(
          shard.address(),
          credentials_ != nullptr ? credentials_ : grpc::InsecureChannelCredentials()));
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
      StopShardRequest request;
      request.set_reason("cluster shutdown requested at the coordinator");
      StopShardResponse ignored;
      results[i] = FromGrpcStatus(stub->Stop(&ctx, request, &ignored));
    });
  }
  for (std::thread& t : callers) t.join();
  for (int i = 0; i < n; ++i) {
    const ShardStatus& shard = shards.shards(i);
    if (results[i].ok()) {
      response->add_stopped_shards(shard.shard_id());
    } else {
      response->add_unreached_shards(absl::StrCat("shard ", shard.shard_id(), " (",
                                                  shard.address(), "): ", results[i].ToString()));
    }
  }
}

}  // namespace psd
