// ShardService: the gRPC edge of a shard. Each RPC hands its request to the
// VariableStore, which validates and applies it, and converts the resulting
// absl::Status to a grpc::Status. No logic beyond that lives here.
//
// Draining: after StartDrain() every new call is answered UNAVAILABLE
// ("shutting down") before it touches the store, and WaitForIdle() returns
// once the calls already running have finished. The server's Shutdown() then
// only has to close connections.
//
// Checkpoint fences: a write that arrives while a fence is up is parked in
// the store's WriteGate and finished later from the gate's thread, so the
// handler threads stay free for the coordinator's Unfence. A fence pause is
// then as long as the coordinator needs, not as long as its lease.
//
// Initialization from another variable: an InitializeVariables request that
// names source parts (the coordinator's) reads them on a thread of its own,
// from this store or from the source's shard (PeerReader, node
// credentials), then runs as any other write.
//
// Thread-safety: thread-safe; the store does all synchronization. Handlers
// run to completion without blocking on other RPCs and hold no lock across a
// reactor callback.
#ifndef PSD_SERVER_SHARD_SHARD_SERVICE_H_
#define PSD_SERVER_SHARD_SHARD_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include "psd/shard.grpc.pb.h"
#include "absl/base/call_once.h"
#include "runtime/call_pool.h"
#include "shard/idle_watchdog.h"
#include "shard/message_pool.h"
#include "shard/peer_reader.h"
#include "shard/shard_checkpoint.h"
#include "shard/variable_store.h"

namespace psd {

template <typename Message>
class SourceStreamReactor;
class ReadStreamReactor;
class AssignStreamReactor;
class BatchReactor;
class RpcMetrics;
class NcclPlane;

// ReadStream and AssignStream are served raw (grpc::ByteBuffer messages,
// psd/stream_codec.h) so chunk contents go between gRPC's buffers and the
// store without protobuf's copies; the wire format is unchanged. So is
// Batch (the clients' data streams), whose replies send big read and gather
// results from the result's own buffer.
// (Shard::CallbackService with Batch raw: a bidi method's raw and protobuf
// forms have the same parameters, so the protobuf one must not be in the
// chain. A method added to shard.proto goes here too.)
using ShardServiceBase = Shard::WithRawCallbackMethod_ReadStream<Shard::WithRawCallbackMethod_AssignStream<
    Shard::WithCallbackMethod_GetShardInfo<Shard::WithCallbackMethod_CreateVariable<
    Shard::WithCallbackMethod_DeleteVariable<Shard::WithCallbackMethod_ListVariables<
    Shard::WithCallbackMethod_InitializeVariables<Shard::WithCallbackMethod_ReportUninitialized<
    Shard::WithCallbackMethod_Read<Shard::WithCallbackMethod_Gather<Shard::WithCallbackMethod_Assign<
    Shard::WithCallbackMethod_Scatter<Shard::WithCallbackMethod_CountUpTo<
    Shard::WithCallbackMethod_ReadStream<Shard::WithCallbackMethod_AssignStream<
    Shard::WithRawCallbackMethod_Batch<Shard::WithCallbackMethod_ApplyDense<
    Shard::WithCallbackMethod_ApplySparse<Shard::WithCallbackMethod_Fence<
    Shard::WithCallbackMethod_Unfence<Shard::WithCallbackMethod_SaveShard<
    Shard::WithCallbackMethod_PrepareRestore<Shard::WithCallbackMethod_FinishRestore<
    Shard::WithCallbackMethod_ExportEmbedding<Shard::WithCallbackMethod_ImportEmbedding<
    Shard::WithCallbackMethod_DeleteEmbeddingKeys<Shard::WithCallbackMethod_EvictEmbedding<
    Shard::WithCallbackMethod_Nccl<Shard::Service>>>>>>>>>>>>>>>>>>>>>>>>>>>>;

class ShardService final : public ShardServiceBase {
 public:
  ShardService(int32_t shard_id, uint64_t incarnation, VariableStore* store);
  ~ShardService() override;

  grpc::ServerUnaryReactor* GetShardInfo(grpc::CallbackServerContext* ctx,
                                         const GetShardInfoRequest* request,
                                         GetShardInfoResponse* response) override;
  grpc::ServerUnaryReactor* CreateVariable(grpc::CallbackServerContext* ctx,
                                           const CreateVariableRequest* request,
                                           CreateVariableResponse* response) override;
  grpc::ServerUnaryReactor* DeleteVariable(grpc::CallbackServerContext* ctx,
                                           const DeleteVariableRequest* request,
                                           DeleteVariableResponse* response) override;
  grpc::ServerUnaryReactor* ListVariables(grpc::CallbackServerContext* ctx,
                                          const ListVariablesRequest* request,
                                          ListVariablesResponse* response) override;
  grpc::ServerUnaryReactor* InitializeVariables(grpc::CallbackServerContext* ctx,
                                                const InitializeVariablesRequest* request,
                                                InitializeVariablesResponse* response) override;
  grpc::ServerUnaryReactor* ReportUninitialized(grpc::CallbackServerContext* ctx,
                                                const ReportUninitializedRequest* request,
                                                ReportUninitializedResponse* response) override;
  grpc::ServerUnaryReactor* Read(grpc::CallbackServerContext* ctx, const ReadRequest* request,
                                 ReadResponse* response) override;
  grpc::ServerUnaryReactor* Gather(grpc::CallbackServerContext* ctx, const GatherRequest* request,
                                   GatherResponse* response) override;
  grpc::ServerUnaryReactor* Assign(grpc::CallbackServerContext* ctx, const AssignRequest* request,
                                   AssignResponse* response) override;
  grpc::ServerUnaryReactor* Scatter(grpc::CallbackServerContext* ctx,
                                    const ScatterRequest* request,
                                    ScatterResponse* response) override;
  grpc::ServerUnaryReactor* CountUpTo(grpc::CallbackServerContext* ctx,
                                      const CountUpToRequest* request,
                                      CountUpToResponse* response) override;
  grpc::ServerUnaryReactor* ApplyDense(grpc::CallbackServerContext* ctx,
                                       const ApplyDenseRequest* request,
                                       ApplyDenseResponse* response) override;
  grpc::ServerUnaryReactor* ApplySparse(grpc::CallbackServerContext* ctx,
                                        const ApplySparseRequest* request,
                                        ApplySparseResponse* response) override;
  // Checkpoints (the coordinator's calls; see shard_checkpoint.h).
  grpc::ServerUnaryReactor* Fence(grpc::CallbackServerContext* ctx, const FenceRequest* request,
                                  FenceResponse* response) override;
  grpc::ServerUnaryReactor* Unfence(grpc::CallbackServerContext* ctx,
                                    const UnfenceRequest* request,
                                    UnfenceResponse* response) override;
  grpc::ServerUnaryReactor* SaveShard(grpc::CallbackServerContext* ctx,
                                      const SaveShardRequest* request,
                                      SaveShardResponse* response) override;
  grpc::ServerUnaryReactor* PrepareRestore(grpc::CallbackServerContext* ctx,
                                           const PrepareRestoreRequest* request,
                                           PrepareRestoreResponse* response) override;
  grpc::ServerUnaryReactor* FinishRestore(grpc::CallbackServerContext* ctx,
                                          const FinishRestoreRequest* request,
                                          FinishRestoreResponse* response) override;
  // Raw: the request is a ReadStreamRequest, each message a TensorChunk.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReadStream(grpc::CallbackServerContext* ctx,
                                                         const grpc::ByteBuffer* request) override;
  // Raw: each message an AssignStreamRequest, the response an AssignResponse.
  grpc::ServerReadReactor<grpc::ByteBuffer>* AssignStream(grpc::CallbackServerContext* ctx,
                                                          grpc::ByteBuffer* response) override;
  // Raw: each message a BatchRequest, each reply a BatchResponse.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Batch(
      grpc::CallbackServerContext* ctx) override;
  // Embedding tables' own ops (the store's; see shard.proto).
  grpc::ServerWriteReactor<EmbeddingRows>* ExportEmbedding(
      grpc::CallbackServerContext* ctx, const ExportEmbeddingRequest* request) override;
  grpc::ServerUnaryReactor* ImportEmbedding(grpc::CallbackServerContext* ctx,
                                            const ImportEmbeddingRequest* request,
                                            ImportEmbeddingResponse* response) override;
  grpc::ServerUnaryReactor* DeleteEmbeddingKeys(grpc::CallbackServerContext* ctx,
                                                const DeleteEmbeddingKeysRequest* request,
                                                DeleteEmbeddingKeysResponse* response) override;
  grpc::ServerUnaryReactor* EvictEmbedding(grpc::CallbackServerContext* ctx,
                                           const EvictEmbeddingRequest* request,
                                           EvictEmbeddingResponse* response) override;
  // The NCCL data plane's stream (shard/nccl_plane.h). A long-lived stream
  // is not counted in flight: the plane ends its groups when the shard stops.
  grpc::ServerBidiReactor<NcclRequest, NcclReply>* Nccl(grpc::CallbackServerContext* ctx) override;
  // The plane Nccl streams use (it must outlive the server); without one
  // they are answered UNIMPLEMENTED. Set before serving.
  void set_nccl_plane(NcclPlane* plane) { nccl_plane_ = plane; }
  // How this shard reads other shards' parts (initializing a variable from
  // another's value); without one, plaintext channels. Set before serving.
  void set_peer_reader(PeerReader* peers) { peers_ = peers; }
  // How long a streamed assign or apply may wait for its caller's next
  // message (IdleStreamWatchdog). Before serving.
  void set_stream_idle_timeout(absl::Duration limit) {
    idle_streams_ = std::make_unique<IdleStreamWatchdog>(limit);
  }
  // Where the ops of Batch messages are counted and timed, each as a call
  // of its own method (RpcMetrics::RecordOp); none: not counted. Set
  // before serving.
  void set_op_metrics(RpcMetrics* metrics) { op_metrics_ = metrics; }

  // Refuses new calls and messages from here on, and ends the batch
  // streams that wait for their next message.
  void StartDrain();
  bool draining() const { return draining_.load(); }
  // True if no call was running by `deadline`.
  bool WaitForIdle(absl::Time deadline) const;

 private:
  template <typename Message>
  friend class SourceStreamReactor;
  friend class ReadStreamReactor;
  friend class ExportEmbeddingReactor;
  friend class AssignStreamReactor;
  friend class BatchReactor;

  // Admits a call (or one message of a batch stream): counts it in flight
  // and returns UNAVAILABLE when draining. Every admitted call is released
  // with Release() exactly once.
  absl::Status Admit();
  void Release() { in_flight_.fetch_sub(1); }
  // Admit for a unary call; when refused, finishes it with the status and
  // returns false.
  bool AdmitOrFinish(grpc::ServerUnaryReactor* reactor);

  // Runs `op` unless draining, and finishes the call with its status.
  template <typename Op>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* ctx, Op&& op);
  // Serve for a call that may wait (a fence for the writes in flight or
  // another fence, a checkpoint's files): `op` runs on slow_calls_, not on
  // this gRPC thread (see CallPool), and finishes the call from there. `op`
  // outlives the handler, so it captures the request and response pointers
  // by value.
  template <typename Op>
  grpc::ServerUnaryReactor* ServeSlow(grpc::CallbackServerContext* ctx, Op op);
  // Serve for a write: a checkpoint fence parks it (WriteGate::TryAdmit)
  // rather than block this handler thread, and it runs when the fence lifts.
  // `op` outlives the handler, so it captures the request and response
  // pointers by value. Nothing is allocated unless the write is parked.
  template <typename Op>
  // `variable`, when given, is the variable the write changes: a write to
  // a part that is moving is admitted by that move's gate too.
  grpc::ServerUnaryReactor* ServeWrite(grpc::CallbackServerContext* ctx, Op op,
                                       const std::string* variable = nullptr);
  template <typename Op>
  void RunWrite(grpc::ServerUnaryReactor* reactor, Op op, const std::string* variable = nullptr);
  // A table's counting lookup of a part moving out: admitted by the move's
  // gate only (it changes the part, so it waits out the switch with the
  // part's writes instead of being refused; a checkpoint fence does not
  // hold lookups).
  void RunMovingLookup(grpc::ServerUnaryReactor* reactor, const GatherRequest* request,
                       GatherResponse* response);
  // `op`'s status, or the status of what it threw (psd/edge.h): every
  // handler and reactor callback runs the store through this.
  template <typename Op>
  absl::Status RunGuarded(Op&& op);

  // The longest a shard reads sources for one InitializeVariables call,
  // whatever the caller's deadline (none at all included).
  static constexpr absl::Duration kMaxSourceReadTime = absl::Minutes(10);
  // The longest lease a Fence may ask for (the coordinator asks for 2 s).
  static constexpr absl::Duration kMaxFenceLease = absl::Seconds(60);

  // The source values InitializeVariables needs (InitializeSource): read
  // from this shard's store when the source is here, otherwise from the
  // source's shard. Errors name the target and the source part.
  // Each value's bytes are reserved in `held` (the memory limit) from the
  // moment it is read until the caller drops `held`.
  absl::Status FetchSources(const InitializeVariablesRequest& request,
                            std::chrono::system_clock::time_point deadline,
                            VariableStore::SourceValues* values,
                            std::vector<MemoryReservation>* held);

  // Recycled request/response pairs of the per-op unary methods (see
  // message_pool.h), so a small op allocates no messages.
  RecyclingMessageAllocator<ReadRequest, ReadResponse> read_messages_;
  RecyclingMessageAllocator<GatherRequest, GatherResponse> gather_messages_;
  RecyclingMessageAllocator<AssignRequest, AssignResponse> assign_messages_;
  RecyclingMessageAllocator<ScatterRequest, ScatterResponse> scatter_messages_;
  RecyclingMessageAllocator<CountUpToRequest, CountUpToResponse> count_up_to_messages_;
  RecyclingMessageAllocator<ApplyDenseRequest, ApplyDenseResponse> apply_dense_messages_;
  RecyclingMessageAllocator<ApplySparseRequest, ApplySparseResponse> apply_sparse_messages_;

  const int32_t shard_id_;
  const std::string who_;  // "shard N", for messages
  const uint64_t incarnation_;
  VariableStore* const store_;
  ShardCheckpointer checkpointer_;
  std::atomic<bool> draining_{false};
  // Open Batch streams (clients' data streams), for the drain.
  void AddBatchStream(BatchReactor* stream);
  void RemoveBatchStream(BatchReactor* stream);
  absl::Mutex batch_streams_mu_;
  absl::flat_hash_set<BatchReactor*> batch_streams_ ABSL_GUARDED_BY(batch_streams_mu_);
  // Calls between admission and finish. Incremented before draining_ is
  // checked, so WaitForIdle never misses a call that was admitted.
  std::atomic<int> in_flight_{0};
  NcclPlane* nccl_plane_ = nullptr;  // set before serving, then read-only
  PeerReader* peers_ = nullptr;      // set before serving, then read-only
  // Set before serving, then read-only (the watchdog is thread-safe).
  std::unique_ptr<IdleStreamWatchdog> idle_streams_ =
      std::make_unique<IdleStreamWatchdog>(kDefaultStreamIdleTimeout);
  RpcMetrics* op_metrics_ = nullptr;  // set before serving, then read-only
  std::unique_ptr<PeerReader> default_peers_;  // plaintext, made on first use
  absl::once_flag default_peers_once_;
  // Runs `answer` on a thread of the answer pool: writes to replicated
  // parts wait there for their backups (VariableStore::PendingAnswers)
  // instead of on gRPC's threads, which the backups' pulls and the
  // coordinator's calls need; on a small machine gRPC has few, and writes
  // waiting on all of them would hold up the very acknowledgements they
  // wait for until the backup timeout.
  void AnswerLater(std::function<void()> answer);
  // Runs `answer` (which finishes `pending`) once the backups have
  // `pending`'s writes: on the thread that hears their last
  // acknowledgement, with no hand-off, or on the answer pool when that may
  // wait (a backup behind or ended; VariableStore::AnswerWhenReplicated).
  void AnswerWhenReplicated(const VariableStore::PendingAnswers& pending,
                            std::function<void()> answer);
  // The answer pool's threads: each holds at most one message's or call's
  // wait for backups (bounded by the backup timeout); more wait their turn.
  static constexpr int kAnswerThreads = 16;
  // Fences, saves and restores at once (a save fences and writes once per
  // shard; more wait their turn).
  static constexpr int kSlowCallThreads = 4;
  // Last: joined first, while everything their calls use is still there.
  CallPool answer_pool_{kAnswerThreads};
  CallPool slow_calls_{kSlowCallThreads};
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_SERVICE_H_
