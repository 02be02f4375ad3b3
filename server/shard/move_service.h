// ShardMoveService: the ShardMove gRPC service of a `psd shard` (live part
// moves; proto/psd/shard.proto, docs/moves.md). It serves the source's side
// (PullMove, FreezeMove) and the target's (StartMoveIn, MoveStatus) on top
// of the store's move state, and runs each incoming move's puller: a thread
// that pulls the group from its source with this shard's node credentials
// and applies what it gets, until the move is ready, fails or ends; a
// backup's follow (StartMoveInRequest.follow) copies the snapshot the same
// way, then applies the writes its primary pushes on a FollowMove stream
// (served here too, on the primary's side) until it is promoted or ended,
// retrying a failing primary without giving up.
//
// Thread-safety: thread-safe. Puller threads are tracked under mu_, joined
// by StartMoveIn once they returned and by the destructor (which asks them
// to stop first); a puller stops waiting for a late answer once its move
// ended or the shard stops.
#ifndef PSD_SERVER_SHARD_MOVE_SERVICE_H_
#define PSD_SERVER_SHARD_MOVE_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "psd/shard.grpc.pb.h"
#include "runtime/call_pool.h"
#include "shard/peer_reader.h"
#include "shard/variable_store.h"

namespace psd {

// psd shard --move-rate-when-busy: a move's snapshot copy is background
// work; while trainers are writing it is paced to this many bytes a second
// so training keeps most of the machine (docs/moves.md, "Copy speed").
inline constexpr int64_t kDefaultMoveRateWhenBusy = int64_t{192} << 20;

// PullMove and FollowMove are served raw (grpc::ByteBuffer messages):
// their answers send a snapshot's bytes from the pinned value and each
// logged write's bytes from the log itself (logged_write.h), as protobuf's
// encoding of PullMoveResponse, so callers parse them with the generated
// stub. The raw forms replace the protobuf ones in the chain
// (ShardMove::CallbackService with both raw; a method added to ShardMove
// goes here too).
using ShardMoveServiceBase = ShardMove::WithRawCallbackMethod_PullMove<
    ShardMove::WithRawCallbackMethod_FollowMove<ShardMove::WithCallbackMethod_StartMoveIn<
        ShardMove::WithCallbackMethod_MoveStatus<ShardMove::WithCallbackMethod_FreezeMove<
            ShardMove::WithCallbackMethod_EndMove<ShardMove::WithCallbackMethod_SyncReplica<
                ShardMove::WithCallbackMethod_PromoteReplica<ShardMove::Service>>>>>>>>;

class ShardMoveService final : public ShardMoveServiceBase {
 public:
  // `store` and `peers` must outlive the service.
  // While trainers write to the source or to this shard, a snapshot copy
  // moves at most `rate_when_busy` bytes a second (<= 0: no limit).
  ShardMoveService(int32_t shard_id, VariableStore* store, PeerReader* peers,
                   int64_t rate_when_busy = kDefaultMoveRateWhenBusy);
  ~ShardMoveService() override;
  ShardMoveService(const ShardMoveService&) = delete;
  ShardMoveService& operator=(const ShardMoveService&) = delete;

  grpc::ServerUnaryReactor* PullMove(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* FollowMove(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* StartMoveIn(grpc::CallbackServerContext* ctx,
                                        const StartMoveInRequest* request,
                                        StartMoveInResponse* response) override;
  grpc::ServerUnaryReactor* MoveStatus(grpc::CallbackServerContext* ctx,
                                       const MoveStatusRequest* request,
                                       MoveStatusResponse* response) override;
  grpc::ServerUnaryReactor* FreezeMove(grpc::CallbackServerContext* ctx,
                                       const FreezeMoveRequest* request,
                                       FreezeMoveResponse* response) override;
  grpc::ServerUnaryReactor* EndMove(grpc::CallbackServerContext* ctx,
                                    const EndMoveRequest* request,
                                    EndMoveResponse* response) override;
  // Replicated parts (docs/replication.md): on a primary, start or stop
  // waiting for a backup before answering writes; on a backup, serve the
  // group as its primary.
  grpc::ServerUnaryReactor* SyncReplica(grpc::CallbackServerContext* ctx,
                                        const SyncReplicaRequest* request,
                                        SyncReplicaResponse* response) override;
  grpc::ServerUnaryReactor* PromoteReplica(grpc::CallbackServerContext* ctx,
                                           const PromoteReplicaRequest* request,
                                           PromoteReplicaResponse* response) override;

 private:
  // The puller of move `move_id`: pulls until there is nothing left.
  void Pull(uint64_t move_id, std::string source_address);
  // Pulls and applies until nothing is left, or with `snapshot_only` until
  // the snapshot is copied (PullMove called raw: see PullCall).
  void PullLoop(uint64_t move_id, const std::string& source_address, bool snapshot_only);
  // A follow's log, once its snapshot is copied: applies what the primary
  // pushes on a FollowMove stream (reopened after a failure) until the
  // follow ends or the shard stops. False if the primary does not serve
  // the stream (the unary pulls take over).
  bool FollowLoop(uint64_t move_id, const std::string& source_address, ShardMove::Stub* stub);

  // A backup's FollowMove stream, on the primary (move_service.cc).
  class FollowReactor;
  // The waker pushes the news of a follow's log to its streams.
  // RESOURCE_EXHAUSTED once the follow has kMaxStreamsPerFollow streams.
  absl::Status AddFollower(uint64_t move_id, FollowReactor* follower);
  static constexpr size_t kMaxStreamsPerFollow = 4;
  void RemoveFollower(uint64_t move_id, FollowReactor* follower);
  void PushFollowers(const std::set<uint64_t>& move_ids);

  // A backup's long poll that found nothing logged is parked here, not
  // held on a gRPC thread (a write waiting for that backup holds one, and
  // the pull that acknowledges it needs another); the waker answers it
  // once the store logs a write for the follow, or its wait passed.
  struct ParkedPull {
    PullMoveRequest request;
    grpc::ByteBuffer* response;
    grpc::ServerUnaryReactor* reactor;
    absl::Time deadline;
    uint64_t news = 0;  // news_[move id] when it was asked
  };
  void Wake();
  // One pull, run by the store and encoded into `response` (the bytes of a
  // PullMoveResponse; VariableStore::PullMoveRaw).
  absl::Status AnswerPull(const PullMoveRequest& request, grpc::ByteBuffer* response,
                          bool* would_wait);
  // Runs `op` (a call that may wait) on slow_calls_ rather than on this
  // gRPC thread, which the shard's pulls need (see CallPool), and finishes
  // the call with its status there. `op` captures by value.
  template <typename Op>
  grpc::ServerUnaryReactor* AnswerSlow(grpc::CallbackServerContext* ctx, Op op);

  const int32_t shard_id_;
  VariableStore* const store_;
  PeerReader* const peers_;
  const int64_t rate_when_busy_;
  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  std::map<uint64_t, std::thread> pullers_ ABSL_GUARDED_BY(mu_);
  // Moves whose puller has returned (its thread joins at once).
  std::set<uint64_t> returned_ ABSL_GUARDED_BY(mu_);
  absl::Mutex parked_mu_;
  absl::CondVar parked_changed_;
  std::vector<ParkedPull> parked_ ABSL_GUARDED_BY(parked_mu_);
  // Per follow, how many times the store said a write was logged for it (or
  // it ended): a parked pull whose count moved has news.
  std::map<uint64_t, uint64_t> news_ ABSL_GUARDED_BY(parked_mu_);
  bool news_pending_ ABSL_GUARDED_BY(parked_mu_) = false;
  // Follows with news since the waker last looked, while any has a stream.
  std::set<uint64_t> follow_news_ ABSL_GUARDED_BY(parked_mu_);
  std::atomic<int> follower_count_{0};
  // The FollowMove streams open here, by follow. Lock order: followers_mu_,
  // then a stream's own lock, then the store's; the log-news handler (which
  // runs under the store's locks) takes only parked_mu_.
  absl::Mutex followers_mu_;
  std::multimap<uint64_t, FollowReactor*> followers_ ABSL_GUARDED_BY(followers_mu_);
  bool waker_stopping_ ABSL_GUARDED_BY(parked_mu_) = false;
  std::thread waker_;
  // MoveStatus and FreezeMove calls at once; more wait their turn. Last:
  // joined first.
  CallPool slow_calls_{4};
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_MOVE_SERVICE_H_
