#include "shard/shard_service.h"

#include <new>

#include "absl/strings/str_cat.h"
#include "psd/grpc_status.h"

namespace psd {

template <typename Op>
grpc::ServerUnaryReactor* ShardService::Serve(grpc::CallbackServerContext* ctx, Op&& op) {
  in_flight_.fetch_add(1);
  absl::Status status;
  if (draining_.load()) {
    status = absl::UnavailableError(absl::StrCat("shard ", shard_id_, " is shutting down"));
  } else {
    // The store reports errors as statuses; the one exception that can still
    // escape it is a failed host allocation (a std::vector or response
    // buffer), which must not cross the RPC boundary.
    try {
      status = op();
    } catch (const std::bad_alloc&) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("shard ", shard_id_, ": out of host memory serving the request"));
    }
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  in_flight_.fetch_sub(1);
  return reactor;
}

bool ShardService::WaitForIdle(absl::Time deadline) const {
  while (in_flight_.load() > 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

grpc::ServerUnaryReactor* ShardService::GetShardInfo(grpc::CallbackServerContext* ctx,
                                                     const GetShardInfoRequest* request,
                                                     GetShardInfoResponse* response) {
  return Serve(ctx, [&] {
    if (request->protocol_version() != SHARD_PROTOCOL_VERSION) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard protocol version mismatch: client speaks ", request->protocol_version(),
          ", shard speaks ", static_cast<int>(SHARD_PROTOCOL_VERSION)));
    }
    response->set_protocol_version(SHARD_PROTOCOL_VERSION);
    response->set_shard_id(shard_id_);
    response->set_incarnation(incarnation_);
    response->set_device(store_->device().name());
    response->set_memory_limit_bytes(store_->memory().limit());
    response->set_memory_used_bytes(store_->memory().used());
    response->set_num_variables(static_cast<int64_t>(store_->num_variables()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardService::CreateVariable(grpc::CallbackServerContext* ctx,
                                                       const CreateVariableRequest* request,
                                                       CreateVariableResponse* response) {
  return Serve(ctx, [&] { return store_->Create(*request, response->mutable_info()); });
}

grpc::ServerUnaryReactor* ShardService::DeleteVariable(grpc::CallbackServerContext* ctx,
                                                       const DeleteVariableRequest* request,
                                                       DeleteVariableResponse* response) {
  return Serve(ctx, [&] { return store_->Delete(request->name()); });
}

grpc::ServerUnaryReactor* ShardService::ListVariables(grpc::CallbackServerContext* ctx,
                                                      const ListVariablesRequest* request,
                                                      ListVariablesResponse* response) {
  return Serve(ctx, [&] {
    for (auto& info : store_->List(request->prefix())) *response->add_variables() = std::move(info);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardService::InitializeVariables(
    grpc::CallbackServerContext* ctx, const InitializeVariablesRequest* request,
    InitializeVariablesResponse* response) {
  return Serve(ctx, [&] { return store_->Initialize(*request); });
}

grpc::ServerUnaryReactor* ShardService::ReportUninitialized(
    grpc::CallbackServerContext* ctx, const ReportUninitializedRequest* request,
    ReportUninitializedResponse* response) {
  return Serve(ctx, [&] { return store_->ReportUninitialized(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::Read(grpc::CallbackServerContext* ctx,
                                             const ReadRequest* request, ReadResponse* response) {
  return Serve(ctx, [&] { return store_->Read(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::Gather(grpc::CallbackServerContext* ctx,
                                               const GatherRequest* request,
                                               GatherResponse* response) {
  return Serve(ctx, [&] { return store_->Gather(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::Assign(grpc::CallbackServerContext* ctx,
                                               const AssignRequest* request,
                                               AssignResponse* response) {
  return Serve(ctx, [&] { return store_->Assign(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::Scatter(grpc::CallbackServerContext* ctx,
                                                const ScatterRequest* request,
                                                ScatterResponse* response) {
  return Serve(ctx, [&] { return store_->Scatter(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::CountUpTo(grpc::CallbackServerContext* ctx,
                                                  const CountUpToRequest* request,
                                                  CountUpToResponse* response) {
  return Serve(ctx, [&] { return store_->CountUpTo(*request, response); });
}

}  // namespace psd
