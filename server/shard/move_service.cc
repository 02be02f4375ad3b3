#include "shard/move_service.h"

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "psd/edge.h"
#include "psd/grpc_status.h"
#include "psd/status.h"

namespace psd {

namespace {

// One pull's deadline, and how long a puller keeps retrying a source that
// does not answer before it fails the move (the coordinator then gives it
// up and the part stays where it was).
constexpr auto kPullDeadline = std::chrono::seconds(30);
constexpr absl::Duration kPullRetryBudget = absl::Seconds(30);
// The longest a MoveStatus call waits for the move to become ready.
constexpr int kMaxStatusWaitMs = 5000;

// A transport failure or a refusal that passes (the source could not hold
// its writes for an instant because a checkpoint fence was up).
bool Retryable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) ||
         (absl::IsAborted(s) && absl::StrContains(s.message(), "; retry"));
}

template <typename Op>
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, absl::string_view who, Op&& op) {
  absl::Status status = RunAtEdge(who, op);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

ShardMoveService::~ShardMoveService() {
  stopping_.store(true);
  std::map<uint64_t, std::thread> pullers;
  {
    absl::MutexLock lock(&mu_);
    pullers.swap(pullers_);
  }
  for (auto& [id, thread] : pullers) {
    if (thread.joinable()) thread.join();
  }
}

grpc::ServerUnaryReactor* ShardMoveService::PullMove(grpc::CallbackServerContext* ctx,
                                                     const PullMoveRequest* request,
                                                     PullMoveResponse* response) {
  return Answer(ctx, "shard move service", [&] { return store_->PullMove(*request, response); });
}

grpc::ServerUnaryReactor* ShardMoveService::StartMoveIn(grpc::CallbackServerContext* ctx,
                                                        const StartMoveInRequest* request,
                                                        StartMoveInResponse* /*response*/) {
  return Answer(ctx, "shard move service", [&]() -> absl::Status {
    PSD_RETURN_IF_ERROR(store_->BeginMoveIn(*request));
    absl::MutexLock lock(&mu_);
    if (stopping_.load()) return absl::UnavailableError("the shard is stopping");
    // Finished pullers of earlier moves are joined here.
    for (auto it = pullers_.begin(); it != pullers_.end();) {
      PullMoveRequest next;
      if (it->first != request->move_id() && !store_->NextMovePull(it->first, &next)) {
        if (it->second.joinable()) it->second.join();
        it = pullers_.erase(it);
      } else {
        ++it;
      }
    }
    if (pullers_.count(request->move_id()) > 0) return absl::OkStatus();  // a repeated start
    pullers_.emplace(request->move_id(),
                     std::thread(&ShardMoveService::Pull, this, request->move_id(),
                                 request->source_address()));
    return absl::OkStatus();
  });
}

void ShardMoveService::Pull(uint64_t move_id, std::string source_address) {
  std::unique_ptr<ShardMove::Stub> stub = ShardMove::NewStub(peers_->ChannelFor(source_address));
  PullMoveRequest request;
  absl::Time failing_since = absl::InfiniteFuture();
  absl::Duration backoff = absl::Milliseconds(20);
  while (!stopping_.load() && store_->NextMovePull(move_id, &request)) {
    PullMoveResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kPullDeadline);
    absl::Status status = FromGrpcStatus(stub->PullMove(&ctx, request, &response));
    if (!status.ok()) {
      const absl::Time now = absl::Now();
      if (failing_since == absl::InfiniteFuture()) failing_since = now;
      if (Retryable(status) && now - failing_since < kPullRetryBudget) {
        absl::SleepFor(backoff);
        backoff = std::min(backoff * 2, absl::Seconds(1));
        continue;
      }
      store_->FailMoveIn(move_id, absl::Status(status.code(),
                                               absl::StrCat("pulling from the source shard at ",
                                                            source_address, ": ",
                                                            status.message())));
      return;
    }
    failing_since = absl::InfiniteFuture();
    backoff = absl::Milliseconds(20);
    // A failure is recorded by the store (MoveStatus reports it).
    if (!store_->ApplyMovePull(move_id, response).ok()) return;
  }
}

grpc::ServerUnaryReactor* ShardMoveService::MoveStatus(grpc::CallbackServerContext* ctx,
                                                       const MoveStatusRequest* request,
                                                       MoveStatusResponse* response) {
  return Answer(ctx, "shard move service", [&] {
    *response = store_->MoveInStatus(
        request->move_id(), absl::Milliseconds(std::clamp(request->wait_ms(), 0, kMaxStatusWaitMs)));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardMoveService::FreezeMove(grpc::CallbackServerContext* ctx,
                                                       const FreezeMoveRequest* request,
                                                       FreezeMoveResponse* response) {
  return Answer(ctx, "shard move service", [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(uint64_t final_seq,
                         store_->FreezeMove(request->move_id(), request->shard_incarnation()));
    response->set_final_seq(final_seq);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardMoveService::EndMove(grpc::CallbackServerContext* ctx,
                                                    const EndMoveRequest* request,
                                                    EndMoveResponse* /*response*/) {
  return Answer(ctx, "shard move service", [&]() -> absl::Status {
    // A shard is one side of a move, but answering for both is harmless:
    // the other side does not know the id.
    PSD_RETURN_IF_ERROR(
        store_->EndMoveOut(request->move_id(), request->committed(), request->new_shard_id()));
    return store_->EndMoveIn(request->move_id(), request->committed());
  });
}

}  // namespace psd
