// VariableStore: the variables one shard owns, keyed by full name, and every
// operation on them. It is the one place that validates a data-plane request:
// the gRPC service only converts statuses at the edge.
//
// Guarantees: every operation is atomic on its variable, and one that fails
// changes nothing (all validation, allocation and memory accounting happens
// before the variable is touched). An acknowledged update is in memory and
// visible to every later read.
//
// Retries: mutating requests that carry a RequestId run at most once (see
// RequestWindow); requests made against another shard incarnation are
// refused with ABORTED "stale handle" before anything else.
//
// Thread-safety: thread-safe. The name map is guarded by `mu_`; each
// variable's state by its own reader/writer lock (reads and gathers share it,
// mutations exclude). No lock is held while another variable's lock is taken,
// except in InitializeVariables and the optimizer applies, which take
// variable locks in name order.
// Streams hold no lock between messages: a streamed read pins the value it
// started from (a ValuePin: writers copy the chunks they change into it
// first), a streamed assign stages into its own buffer and takes the lock
// only to commit. Checkpoint snapshots pin values the same way.
#ifndef PSD_SERVER_SHARD_VARIABLE_STORE_H_
#define PSD_SERVER_SHARD_VARIABLE_STORE_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "device/device.h"
#include "psd/shard.pb.h"
#include "shard/logged_write.h"
#include "shard/memory_accountant.h"
#include "shard/request_window.h"
#include "shard/shard_lease.h"
#include "shard/staging_pool.h"
#include "shard/value_pin.h"
#include "shard/write_gate.h"
#include "psd/names.h"
#include "psd/tensor.h"

namespace psd {

class ContentMessage;  // psd/stream_codec.h

class Variable;
struct EmbeddingPart;  // store_internal.h
class EmbeddingSnapshot;
class EmbeddingExportSource;
class ReadStreamSource;
class AssignStreamSink;
class StagedAssignSink;
struct MoveOut;  // shard/part_move.h
struct AckWaiter;  // shard/part_move.h
struct MoveIn;

struct VariableStoreOptions {
  // Byte budget for variable data (staging and copy-on-write included);
  // <= 0 means unlimited.
  int64_t memory_limit_bytes = 0;
  // This process's incarnation; requests naming another one are stale.
  uint64_t incarnation = 0;
  // The largest value a unary Read answers with; bigger ones are read with
  // ReadStream. Keep it under the server's message limit.
  int64_t max_unary_value_bytes = (512 << 20) - (64 << 10);
  // Chunk size of a streamed read when the client asks for none.
  int default_chunk_bytes = 1 << 20;
  // Request ids remembered per client for exactly-once retries.
  int request_window = 1024;
  // Ops in one Batch message; a message with more is refused whole
  // (INVALID_ARGUMENT) before any runs.
  int max_batch_ops = 65536;
  // Bytes of read and gather results one Batch reply may carry; an op whose
  // result would pass it fails RESOURCE_EXHAUSTED before allocating (the
  // others still run).
  int64_t max_batch_result_bytes = (512 << 20) - (64 << 10);
  // Copy-on-write chunk size: a write to a pinned value copies the chunks
  // of about this many bytes that it touches (see ValuePin).
  int64_t cow_chunk_bytes = 1 << 20;
  // Idle staging buffers kept between ops (StagingPool): streamed assigns
  // and applies, restores, and the values they replace. Counted against
  // memory_limit_bytes and freed first when it is reached; <= 0: none kept.
  int64_t staging_pool_bytes = kDefaultStagingPoolBytes;
  static constexpr int64_t kDefaultStagingPoolBytes = int64_t{1} << 30;
  // How long a write to a replicated group waits for an in-sync backup to
  // apply it before the primary asks the coordinator to drop the backup
  // from the in-sync set (psd shard --backup-timeout).
  absl::Duration backup_timeout = absl::Seconds(2);
  // A streamed assign's value bigger than this is logged for moves and
  // backups in chunks of this size (proto StagedChunk), a backup's while
  // the client still sends: every entry then fits one pull of the log,
  // and no copy on the way is bigger (each buffer over glibc's mmap
  // threshold costs a page fault per 4 KiB, see process_tuning.h). At most
  // one pull's bytes (4 MiB) less room for the entry's header.
  int64_t logged_chunk_bytes = (int64_t{4} << 20) - (int64_t{64} << 10);
};

class VariableStore {
 public:
  // `device` must outlive the store.
  VariableStore(Device* device, const VariableStoreOptions& options);
  ~VariableStore();
  VariableStore(const VariableStore&) = delete;
  VariableStore& operator=(const VariableStore&) = delete;

  // Mutating operations take the caller (RequestWindow's CallerKey: what
  // the call's credentials say; kAnonymousCaller where no tokens are
  // checked), to whom their request ids are bound.
  absl::Status Create(const CreateVariableRequest& request, VariableInfo* info,
                      CallerKey caller = kAnonymousCaller);
  absl::Status Delete(const DeleteVariableRequest& request, CallerKey caller = kAnonymousCaller);
  // Parts moving in (not this shard's yet) are listed only with
  // `include_incoming`: a registration reports them, so a coordinator that
  // committed their move while this shard re-registered finds them here.
  std::vector<VariableInfo> List(const std::string& prefix, bool include_incoming = false) const;
  absl::Status Initialize(const InitializeVariablesRequest& request,
                          CallerKey caller = kAnonymousCaller);
  // Initialization that may include variables initialized from another
  // (InitializerSpec.FromVariable): `sources` holds, by target name, the
  // source part's value as the caller (ShardService) fetched it. The value
  // is checked against the target (dtype, shape), transformed (scale,
  // offset) and installed with the initialized flag, all under the same
  // all-or-nothing rule as every other initializer. A target that needs
  // initializing and has no source value is FAILED_PRECONDITION.
  using SourceValues = std::map<std::string, TensorProto>;
  absl::Status Initialize(const InitializeVariablesRequest& request, SourceValues* sources,
                          CallerKey caller = kAnonymousCaller);
  // Whether `name` is initialized from another variable and would be
  // initialized now (not initialized yet, or `force`): its source value is
  // needed. NOT_FOUND for an unknown name.
  absl::StatusOr<bool> NeedsSourceValue(const std::string& name, bool force) const;
  // The most content bytes a source value for `name` can hold: its source
  // has its dtype and part shape (checked at declaration), so a fixed-size
  // dtype's exact size; strings vary in length, so what the shard could
  // still hold (no bound without a memory limit). NOT_FOUND for an unknown
  // name.
  absl::StatusOr<int64_t> SourceValueMaxBytes(const std::string& name) const;
  // Accounts `bytes` of a source value held for `name` until it is
  // installed (the host copy exists beside the installed value for a
  // while). RESOURCE_EXHAUSTED naming `name` and the bytes past the limit.
  absl::StatusOr<MemoryReservation> ReserveSourceValue(const std::string& name, int64_t bytes);
  // A consistent snapshot of `name`'s value (what ReadStream sends), in one
  // host buffer. FAILED_PRECONDITION when uninitialized.
  absl::StatusOr<TensorProto> ReadSnapshot(const std::string& name) const;
  absl::Status ReportUninitialized(const ReportUninitializedRequest& request,
                                   ReportUninitializedResponse* response) const;

  // A value over max_unary_value_bytes (or the request's max_value_bytes)
  // is answered with use_stream instead.
  absl::Status Read(const ReadRequest& request, ReadResponse* response) const;
  // A result over max_unary_value_bytes is RESOURCE_EXHAUSTED, before
  // anything is allocated.
  absl::Status Gather(const GatherRequest& request, GatherResponse* response);
  absl::Status Assign(const AssignRequest& request, AssignResponse* response,
                      CallerKey caller = kAnonymousCaller);
  absl::Status Scatter(const ScatterRequest& request, ScatterResponse* response,
                       CallerKey caller = kAnonymousCaller);
  absl::Status CountUpTo(const CountUpToRequest& request, CountUpToResponse* response,
                         CallerKey caller = kAnonymousCaller);

  // Optimizer updates (TensorFlow's Apply* and SparseApply* training ops):
  // the variable and its slot variables (and Adam's beta powers, when named)
  // are all checked, then locked together in name order and updated as one
  // atomic step; see ApplyDenseRequest / ApplySparseRequest in shard.proto.
  absl::Status ApplyDense(const ApplyDenseRequest& request, ApplyDenseResponse* response,
                          CallerKey caller = kAnonymousCaller);
  absl::Status ApplySparse(const ApplySparseRequest& request, ApplySparseResponse* response,
                           CallerKey caller = kAnonymousCaller);

  // Streams. Begin* validate the request; the returned object carries the
  // stream's state between messages and holds no lock. A header with
  // `apply` set begins a streamed dense optimizer apply: the gradient is
  // staged in host memory (accounted) and Commit runs ApplyDense's update
  // with it.
  absl::StatusOr<std::unique_ptr<ReadStreamSource>> BeginReadStream(
      const ReadStreamRequest& request) const;
  absl::StatusOr<std::unique_ptr<AssignStreamSink>> BeginAssignStream(
      const AssignStreamHeader& header, CallerKey caller = kAnonymousCaller);

  // --- Embedding tables (EmbeddingSpec; shard/embedding_table.h) ---
  // A table's part is created by Create with `embedding` set and named like
  // any variable; Gather, Scatter and ApplySparse serve it by key, List and
  // Delete treat it as a variable. Every other data op on it is
  // INVALID_ARGUMENT naming it.

  // The info of every table part held (not slots), by name: what /metrics
  // shows per part, without touching dense variables.
  std::vector<VariableInfo> ListEmbeddingParts() const;

  // A stream of a part's rows as they were when it began.
  absl::StatusOr<std::unique_ptr<EmbeddingExportSource>> BeginEmbeddingExport(
      const ExportEmbeddingRequest& request) const;
  absl::Status ImportEmbedding(const ImportEmbeddingRequest& request,
                               ImportEmbeddingResponse* response,
                               CallerKey caller = kAnonymousCaller);
  absl::Status DeleteEmbeddingKeys(const DeleteEmbeddingKeysRequest& request,
                                   DeleteEmbeddingKeysResponse* response,
                                   CallerKey caller = kAnonymousCaller);
  absl::Status EvictEmbedding(const EvictEmbeddingRequest& request,
                              EvictEmbeddingResponse* response,
                              CallerKey caller = kAnonymousCaller);

  // Runs one op of a batch, its result in `result`; a read or gather whose
  // result would take more than `max_result_bytes` fails RESOURCE_EXHAUSTED
  // before allocating. The caller records the status with SetBatchOpStatus.
  absl::Status RunBatchOp(const BatchOp& op, int64_t max_result_bytes, BatchOpResult* result,
                          CallerKey caller = kAnonymousCaller);
  static void SetBatchOpStatus(const absl::Status& status, BatchOpResult* result);

  // While one is alive on a thread, the writes that thread runs on this
  // store are answered later: each is applied and logged as usual, but its
  // wait for the in-sync backups (and the lease check before its answer)
  // is kept until Finish. A batch message's writes to replicated parts then
  // reach the backups in one pull, and the message waits one round trip in
  // all instead of one per write. The caller must not answer any write it
  // ran before Finish says which of them failed.
  //
  // Thread-compatible; one per thread at a time, on the stack.
  class DeferredAnswers;
  class PendingAnswers;
  // Calls `resume(true)` once every in-sync backup acknowledged `pending`'s
  // writes, on the thread that records the last acknowledgement (no
  // hand-off), or at once if they all did; `pending.Finish()` then returns
  // without waiting. Calls `resume(false)` instead, exactly once, when that
  // may need more: a backup ended or dropped from the in-sync set, or not
  // acknowledged within the backup timeout; the caller then runs
  // `Finish()` where it may wait (it reports the backup to the
  // coordinator). `resume` must not wait.
  void AnswerWhenReplicated(const PendingAnswers& pending,
                            std::function<void(bool replicated)> resume);

  // --- Checkpoints (see shard/shard_checkpoint.h) ---

  // A variable's value pinned for a checkpoint. While the pin is held,
  // writers copy the chunks they change into it first (copy-on-write in
  // chunks, accounted), so it reads as the value was at the fence.
  struct PinnedValue {
    std::string name;
    DataType dtype = DT_INVALID;
    TensorShape shape;
    bool initialized = false;
    std::shared_ptr<const ValuePin> pin;  // null exactly for a table's part
    // An embedding table's part (or a slot's): its rows as of the fence,
    // read once by the save (`shape` is [rows, dim]).
    std::shared_ptr<EmbeddingSnapshot> table_rows;
    int table_column = 0;
    DataType key_dtype = DT_INVALID;
  };
  // Holds new writes (WriteGate::Fence), then pins every variable's value.
  absl::Status Fence(uint64_t fence_id, absl::Duration lease, std::vector<PinnedValue>* snapshot);
  absl::Status Unfence(uint64_t fence_id, WriteGate::FenceStats* stats);
  // Bytes held for the snapshot beyond the live values: chunks copied on
  // write since the pin, plus whole pinned values whose variables were
  // replaced or deleted since.
  int64_t DivergedBytes(const std::vector<PinnedValue>& snapshot) const;
  Device* mutable_device() { return device_; }
  const WriteGate& gate() const { return gate_; }
  // RPC handlers admit writes here without blocking (WriteGate::TryAdmit).
  WriteGate* mutable_gate() { return &gate_; }

  // Restore, in two phases across shards: StageRestore checks and copies a
  // value into accounted staging (nothing changes), FinishRestore applies
  // every staged part of `restore_id` under its variable's lock (creating
  // parts the shard does not hold, e.g. lost ones), or drops them.
  absl::Status StageRestore(uint64_t restore_id, const RestorePart& part, Tensor value);
  // StageRestore of a fixed-size value that arrives in pieces, without a
  // whole copy on the host: `fill` gets a sink that appends bytes to the
  // staged buffer. The part is staged only if `fill` succeeds and delivered
  // exactly the part's bytes (a checksum failure at the end drops it).
  using RestoreSink = std::function<absl::Status(absl::string_view bytes)>;
  absl::Status StageRestoreStreamed(uint64_t restore_id, const RestorePart& part,
                                    const std::function<absl::Status(const RestoreSink&)>& fill);
  absl::Status FinishRestore(uint64_t restore_id, bool commit, int64_t* applied);
  // StageRestore of an embedding table's part (RestorePart.embedding):
  // adds the rows of one saved part (its keys, values, freqs and versions
  // tensors) whose keys belong to `part`, charged to memory. Called once
  // for each of part.embedding_sources.
  absl::Status StageEmbeddingRestore(uint64_t restore_id, const RestorePart& part,
                                     const Tensor& keys, const Tensor& values, const Tensor& freqs,
                                     const Tensor& versions);
  // Drops staged restores older than `age` (a coordinator that never came back).
  void DropStaleRestores(absl::Duration age);

  // --- Live part moves (proto ShardMove; docs/moves.md) ---
  // Source side. The first PullMove of a move begins it: the shard's
  // writes are held for an instant (the write gate) while every part of
  // the group is pinned, and from then on the group's writes are logged
  // in the order they are applied. Pulls answer the snapshot's chunks,
  // then the logged writes, then the end once frozen.
  // With `would_wait` (a backup's long poll that found nothing logged): it
  // does not wait but says so, and the caller parks the pull until the
  // log-news handler names the follow or the pull's wait passed.
  absl::Status PullMove(const PullMoveRequest& request, PullMoveResponse* response,
                        bool* would_wait = nullptr);
  // PullMove for an answer sent raw (ShardMoveService::PullMove): `fields`
  // gets the answer's fields but its snapshot bytes and logged writes,
  // which go to `raw` as they are held (the bytes lent from the pin where
  // that is host memory, else copied once; the writes as logged), for the
  // service to send without copying them into a message first.
  struct RawPullAnswer {
    std::vector<grpc::Slice> content;  // PullMoveResponse.content, in order
    std::vector<LoggedWrite> writes;   // PullMoveResponse.writes
  };
  absl::Status PullMoveRaw(const PullMoveRequest& request, PullMoveResponse* fields,
                           RawPullAnswer* raw, bool* would_wait = nullptr);
  // A follow's log pull on its stream (ShardMoveService::FollowMove):
  // INVALID_ARGUMENT unless `request` is a follow's pull of the log (the
  // snapshot is pulled by PullMove); never waits. With `ack_only` it only
  // records how far the backup applied (writes waiting for it may be
  // answered) and answers nothing; otherwise as PullMove, the writes after
  // max(applied_seq, after_seq), into `writes` as logged (the stream
  // sends their bytes as they are; `response` gets none).
  //
  // The answers the acknowledgement completes (AnswerWhenReplicated) are
  // added to `acked`: the caller resumes them (ResumeAcked) once it holds
  // no lock.
  using AckedAnswers = std::vector<std::shared_ptr<AckWaiter>>;
  absl::Status PullFollowLog(const PullMoveRequest& request, PullMoveResponse* response,
                             bool ack_only, AckedAnswers* acked,
                             std::vector<LoggedWrite>* writes = nullptr);
  static void ResumeAcked(AckedAnswers* acked);
  // Called when a write is logged for a follow, or the follow ends. With
  // `here` false it runs with the store's locks held: it must only take its
  // own lock and return. A writer that keeps its answers (DeferredAnswers)
  // holds the news of the writes it logs and gives them when its scope ends
  // (or before it waits for backups), with `here` true and no store lock
  // held: the handler may then send the writes to the backups on the
  // writer's own thread (no hand-off to another thread, which on a busy
  // machine waits for a core).
  using LogNewsHandler = std::function<void(uint64_t move_id, bool here)>;
  void SetLogNewsHandler(LogNewsHandler handler);
  // Holds the group's writes (the service parks them, never rejects them)
  // and closes its log; returns the last logged write's seq. Repeatable.
  absl::StatusOr<uint64_t> FreezeMove(uint64_t move_id, uint64_t incarnation);
  // committed: the group lives on `new_shard` now; it is dropped here and
  // its names are answered ABORTED "stale handle" from now on. Otherwise
  // the move is given up and the group stays, serving as before. Held
  // writes resume either way. An unknown id is OK (a repeated EndMove).
  absl::Status EndMoveOut(uint64_t move_id, bool committed, int32_t new_shard);
  // The part gate of `name`'s group while it moves out, else null: the
  // service admits writes to the group through it before the write gate.
  std::shared_ptr<WriteGate> MoveGateFor(const std::string& name) const;
  // Whether `request` is a lookup that changes a table's part (counts,
  // admits): while the part moves out it waits out the switch at the
  // move's gate, as writes do.
  bool CountingTableLookup(const GatherRequest& request) const;

  // Target side. BeginMoveIn creates the group's parts as incoming (client
  // ops on them are UNAVAILABLE until the move commits).
  absl::Status BeginMoveIn(const StartMoveInRequest& request);
  // The next pull for move `move_id`; false when nothing is left to pull
  // (ready, failed or ended).
  bool NextMovePull(uint64_t move_id, PullMoveRequest* request) const;
  // The next pull, as NextMovePull, then while the snapshot is being copied
  // the pulls of up to `max - 1` chunks after it, in the order they are
  // needed (a puller keeps them in flight together, so the source reads
  // and sends one chunk while this shard installs another). Empty when
  // nothing is left to pull. `copying` (if given) is set to whether the
  // snapshot is still being copied.
  std::vector<PullMoveRequest> PlanMovePulls(uint64_t move_id, int max,
                                             bool* copying = nullptr) const;
  // Whether a write was applied here in the last 100 ms (trainers are at
  // work): a move's snapshot copy then yields (ShardMoveService).
  bool BusyWithWrites() const;
  // Applies one pull's answer: snapshot bytes into the incoming parts,
  // logged writes through the ops' own code under their request ids and
  // callers, and the end's request window. An error fails the move-in.
  // With `content`, the snapshot bytes are its content (the answer as
  // received, parsed apart from its other fields into `response`: they are
  // copied once, into the part) instead of response.content().
  absl::Status ApplyMovePull(uint64_t move_id, const PullMoveResponse& response,
                             const ContentMessage* content = nullptr);
  void FailMoveIn(uint64_t move_id, const absl::Status& status);
  MoveStatusResponse MoveInStatus(uint64_t move_id, absl::Duration wait) const;
  // committed: the incoming parts serve clients; otherwise they are
  // dropped. An unknown id is OK.
  absl::Status EndMoveIn(uint64_t move_id, bool committed);

  // --- Replicated parts (docs/replication.md) ---
  // A backup is a move-in with StartMoveInRequest.follow: its parts are
  // listed (VariableInfo.follows_move) but not served nor saved, and its
  // puller never stops by itself. On the primary its follow is a MoveOut
  // that is never frozen.
  //
  // Primary: start (in_sync) or stop waiting for follow `move_id` before
  // answering writes to its group; returns the last write logged for it
  // when the wait began (SyncReplicaResponse.logged_seq).
  absl::StatusOr<uint64_t> SyncReplica(uint64_t move_id, bool in_sync, uint64_t incarnation);
  // Backup: stops following and serves the group as its primary from what
  // was applied; returns the seq applied. Idempotent; FAILED_PRECONDITION
  // before the snapshot is whole.
  absl::StatusOr<uint64_t> PromoteReplica(uint64_t move_id, uint64_t epoch, uint64_t incarnation);
  // Whether move-in `move_id` is a follow (a backup).
  bool IsFollow(uint64_t move_id) const;
  // A follow's pull failed (or, OK, succeeded again): MoveStatus reports it
  // while the puller keeps retrying.
  void NoteFollowPullFailure(uint64_t move_id, const absl::Status& status);
  // Replicated parts serve only while `lease` (which must outlive the
  // store) is held; without one (tests) they always serve.
  void SetLease(const ShardLease* lease) { lease_.store(lease, std::memory_order_release); }
  // The clock reading (this host's steady_clock, CLOCK_MONOTONIC on Linux)
  // at which a write was last let through LeaseHeldToAnswer with the lease
  // held; zero if none since start. Every write to a replicated part is
  // answered only so, so none is answered later than the lease's end.
  // /metrics shows it, for comparing with the coordinator's promotion of a
  // backup on one host (docs/replication.md "Leases").
  std::chrono::nanoseconds last_leased_write_answer() const {
    return std::chrono::nanoseconds(last_leased_answer_ns_.load(std::memory_order_relaxed));
  }
  // Asks the coordinator to drop follow `move_id` from its group's in-sync
  // set (ReplicaBehind); OK once it did. Unset: UNAVAILABLE.
  using ReplicaBehindFn =
      std::function<absl::Status(uint64_t move_id, const std::string& reason)>;
  void SetReplicaBehindHandler(ReplicaBehindFn handler);
  // Drops the parts named (RegisterShardResponse.drop_parts: they live
  // elsewhere now), ending any move or follow of them first. Unknown names
  // are skipped.
  void DropParts(const std::vector<std::string>& names);
  struct ReplicationStats {
    int64_t follows_out = 0;   // backups following groups of this shard
    int64_t follows_in = 0;    // groups this shard holds a backup of
    int64_t max_lag = 0;       // the most writes a follow has not acknowledged
    int64_t waited_writes = 0;        // writes answered after waiting for backups
    double wait_seconds = 0;          // the total time they waited
    int64_t replica_behind_calls = 0;
  };
  ReplicationStats replication_stats() const;

  const MemoryAccountant& memory() const { return memory_; }
  const StagingPool& staging_pool() const { return pool_; }
  const VariableStoreOptions& options() const { return options_; }
  size_t num_variables() const;
  const Device& device() const { return *device_; }
  uint64_t incarnation() const { return options_.incarnation; }

 private:
  // Read and Gather with their result limit given: the unary methods pass
  // max_unary_value_bytes, a batch what is left of its reply's budget.
  absl::Status ReadUpTo(const ReadRequest& request, int64_t max_value_bytes,
                        ReadResponse* response) const;
  absl::Status GatherUpTo(const GatherRequest& request, int64_t max_result_bytes,
                          absl::string_view limit_name, GatherResponse* response);
  friend class StagedAssignSink;

  // A dense variable; a table's name is INVALID_ARGUMENT (the op has no
  // meaning for it), an unknown one NOT_FOUND.
  absl::StatusOr<std::shared_ptr<Variable>> Find(const std::string& name) const;
  // Why part `name` here is not served: moving in, or a backup's copy
  // (`follows`: its follow move id).
  absl::Status NotServed(const std::string& name, uint64_t follows) const;
  // Whether a part (replicated or not) is refused for want of the lease;
  // never while replaying a move's or a follow's writes.
  bool LeaseLapsed(bool replicated) const;
  absl::Status LeaseExpired(const std::string& name) const;
  // The lease's term (ShardLease::term; 0 without a lease), read by a write
  // before it looks its variable up, for LeaseHeldToAnswer.
  uint64_t LeaseTerm() const;
  // Checked again just before a write to `name` is answered (after the
  // wait for its backups): unless the lease has been held without a break
  // since `term` (read before the write applied), a replicated part may
  // have been failed over meanwhile, its backup promoted without the write
  // (a shard paused past its lease that registered again, dropping the
  // part, holds a lease again, in a new term), so the answer is
  // UNAVAILABLE "... lease expired ...; retry" instead. The write stays
  // applied here; its retry (same request id) is answered from the window
  // here once the lease is back, or applied by the promoted backup if it
  // never had it. OK for parts that are not replicated, and with no lease
  // (a shard without a coordinator); a part no longer here counts as
  // replicated.
  absl::Status LeaseHeldToAnswer(const std::string& name, uint64_t term) const;
  // A table's part (or slot), or null when `name` is not one.
  std::shared_ptr<EmbeddingPart> FindEmbedding(const std::string& name) const;
  // A table's part named for `op`: NOT_FOUND, or INVALID_ARGUMENT for a
  // dense variable or a slot.
  absl::StatusOr<std::shared_ptr<EmbeddingPart>> TableFor(const std::string& name,
                                                          absl::string_view op) const;
  // `incoming`: the part of a move's target, not served until it commits.
  absl::Status CreateEmbeddingOnce(const CreateVariableRequest& request, VariableInfo* info,
                                   bool incoming = false);
  absl::Status DeleteEmbeddingOnce(const std::string& name);
  // Not const: a counting lookup of a part moving out is logged.
  absl::Status GatherEmbedding(const EmbeddingPart& part, const GatherRequest& request,
                               int64_t max_result_bytes, absl::string_view limit_name,
                               GatherResponse* response);
  absl::Status ScatterEmbedding(const EmbeddingPart& part, const ScatterRequest& request,
                                ScatterResponse* response);
  // The beta powers an Adam apply read from the variables its request
  // names (unset where the request gave a value).
  struct PowersRead {
    std::optional<double> value[2];
    // Writes them into `spec` as values (WriteMeta::amend_logged).
    void ReplaceNames(OptimizerSpec* spec) const;
  };
  absl::Status ApplyEmbedding(const EmbeddingPart& part, const ApplySparseRequest& request,
                              ApplySparseResponse* response, PowersRead* powers_read = nullptr);
  void FillEmbeddingInfo(const EmbeddingPart& part, VariableInfo* info) const;
  // The table half of FinishRestore: builds every staged table's new
  // contents (nothing changes if one fails), then `install` swaps them in.
  struct StagedRestore;
  using TableInstall = std::function<void()>;
  absl::StatusOr<TableInstall> PrepareTableRestore(StagedRestore* restore, int64_t* applied);
  // OK for 0 (any), this shard's incarnation, and within a replay
  // (store_internal::MoveReplayScope); otherwise ABORTED "stale handle".
  absl::Status CheckIncarnation(uint64_t requested) const;
  // What Mutate needs to know of a mutating request.
  struct WriteMeta {
    CallerKey caller = kAnonymousCaller;
    uint64_t incarnation = 0;  // the request's shard_incarnation (0: any)
    const RequestId& request_id;
    bool gated = true;  // held by a fence (creates and deletes are not)
    // The variable written, which finds the group it moves with, and for
    // the ops a move forwards, the request whose logged entry replays it
    // on the part's new shard, at `logged_path` of its MoveWrite (null: a
    // move of the group fails).
    const std::string* variable = nullptr;
    const google::protobuf::Message* request = nullptr;
    std::array<int, 2> logged_path{};
    // Turns the logged copy into what was applied, once `op` ran (null:
    // the request as it came): an Adam apply's beta powers read from
    // variables are logged by value, since the part's new shard may hold
    // no variable of that name, or one with another value.
    std::function<void(BatchOp*)> amend_logged = nullptr;
    // Sets request and logged_path to log `r` (which must outlive this)
    // where LoggedPath puts it (store_internal.h).
    template <typename Request>
    void LogAs(const Request& r);
  };
  template <typename Request>
  static WriteMeta Forwarded(CallerKey caller, const Request& request);
  // Mutate's exactly-once part: `op` once per request id.
  template <typename Response, typename Op>
  absl::Status RunOnce(const WriteMeta& meta, Response* response, Op&& op);
  // The group moving out that `name` belongs to, if any.
  // The group's moves and follows, by id (the order their order locks are
  // taken in); empty when none.
  std::vector<std::shared_ptr<MoveOut>> MovingOut(const std::string& name) const;
  // Waits until each follow of `logged` (in the in-sync set) acknowledged
  // its seq, calling ReplicaBehind for one that does not within the backup
  // timeout (or failed). UNAVAILABLE naming `variable` when that call fails.
  struct BackupWait {
    std::shared_ptr<MoveOut> follow;
    uint64_t seq = 0;
  };
  // `deadline` (default: the backup timeout from now) and `failed` let a
  // caller answering many writes at once (PendingAnswers) give them one
  // backup timeout in all, and ask the coordinator about a follow once:
  // a follow whose ReplicaBehind call failed (recorded in *failed) fails
  // the later writes waiting for it at once.
  absl::Status WaitForBackups(const std::vector<BackupWait>& logged, const std::string& variable,
                              absl::Time deadline = absl::InfinitePast(),
                              absl::flat_hash_map<const MoveOut*, absl::Status>* failed = nullptr);
  // Hands a write's waits to the thread's DeferredAnswers for this store,
  // if one is alive (true: it answers them); else false, nothing taken.
  bool DeferAnswer(std::vector<BackupWait>* logged, const std::string& variable, bool ok,
                   uint64_t lease_term);
  // The answer of a write to `variable` that ran with `status` and was
  // logged for `waits` (a follow there that ended counts too: it is out of
  // the in-sync set before anything is answered). Handed to the thread's
  // DeferredAnswers when one is alive (it answers `status` later);
  // otherwise waited for here, then checked against the lease. A write
  // that ran OK answers the wait's failure, if any. `lease_term`: read
  // before the write applied.
  absl::Status AnswerLogged(std::vector<BackupWait>* waits, const std::string& variable,
                            uint64_t lease_term, absl::Status status);
  // Whether `name`'s group has a move (not a follow) out.
  bool MovesLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(moves_mu_);
  // Takes `move` out of moving_out_ (it ended); once only.
  void ForgetMovingOut(MoveOut* move);
  // ForgetMovingOut for a follow that ended and is out of the in-sync set
  // (FailMoveOut keeps an in-sync one listed until then).
  void ForgetEndedFollow(MoveOut* move);
  // One ReplicaBehind call for `follow`, shared by the writes that wait on
  // it (a later one joins the call under way); OK once the follow is out
  // of the in-sync set.
  absl::Status ReportBehind(MoveOut* follow, const std::string& reason);
  // A write to a moving group that is not forwarded (a restore, an
  // initialization, a streamed assign, a delete): while the group
  // forwards, the move fails (the write goes ahead); once frozen, the
  // write is UNAVAILABLE (the move is about to switch owners).
  absl::Status NoteUnforwardedWrite(const std::string& name, absl::string_view what);
  // Whether a write to `name` of `move`'s group (order_mu held) is logged:
  // true while the group forwards and the write can be (`unforwarded`
  // empty); false when the move ended, or when it fails now because of
  // this write (`unforwarded` says what it is); UNAVAILABLE once frozen,
  // ABORTED "stale handle" once moved.
  absl::StatusOr<bool> AdmitMovingWrite(MoveOut* move, const std::string& name,
                                        absl::string_view unforwarded);
  // The logged entry of a forwarded write (`meta`'s request as run).
  static grpc::Slice EncodeLogged(const WriteMeta& meta);
  // Logs a forwarded write of `move`'s group (order_mu held): its entry
  // *body, encoded here when unset, so a write going to several logs (its
  // group's backups, a move) is encoded once and shared by them.
  // Returns its seq (0: not logged, the move ended).
  uint64_t LogMoveWrite(MoveOut* move, const WriteMeta& meta, std::optional<grpc::Slice>* body);
  // Logs `write` (its seq set by the log) against the log's bounds. Past
  // them: with `fail_when_full` the move fails (as for any write that went
  // ahead), else nothing is logged and the move goes on (a streamed
  // value's chunk logged ahead of its commit: the commit logs it again).
  // An abort chunk is logged whatever the bounds: it is a few bytes, and
  // without it the target would keep the staged bytes. 0: not logged.
  uint64_t LogMoveEntry(MoveOut* move, const MoveWrite& write, const std::string& variable,
                        bool fail_when_full);
  // The same for a write already encoded (logged_write.h); `abort` says it
  // is an abort chunk.
  uint64_t LogMoveEntry(MoveOut* move, grpc::Slice body, bool abort, const std::string& variable,
                        bool fail_when_full);
  // False when `move`'s log certainly has no room for an entry of `bytes`
  // bytes or more (its cap), or the move no longer logs: a chunk logged
  // ahead then need not be encoded at all. True is no promise.
  bool MoveLogMayTake(MoveOut* move, int64_t bytes);
  // A target's side of StagedChunk entries (store_streams.cc): the
  // assign or apply a chunked logged value is staged in, the sink of a
  // streamed one, registered at its commit with the commit entry's request
  // id (its op's) and then committed as its primary's was.
  absl::StatusOr<std::unique_ptr<AssignStreamSink>> BeginReplayedAssign(
      const AssignStreamHeader& header);
  absl::Status CommitReplayedAssign(AssignStreamSink* sink, const MoveWrite& commit);
  // Applies one StagedChunk entry or commit entry of `move` (apply_mu held).
  absl::Status ApplyStagedEntry(MoveIn* move, const MoveWrite& write);
  // Gives a move up on the source (order_mu held or not needed): the log
  // and pins are dropped, the group serves as before, pulls get `why`.
  void FailMoveOut(MoveOut* move, const absl::Status& why);
  absl::StatusOr<std::shared_ptr<MoveOut>> BeginMoveOut(const PullMoveRequest& request);
  // The target of `move` applied every write up to `applied_seq`: they
  // leave its log, and writes waiting for it are woken.
  // The answers it completes are added to `acked`.
  // Caller holds move->mu (not annotated: MoveOut is incomplete here).
  void AckLocked(MoveOut* move, uint64_t applied_seq, AckedAnswers* acked);
  // A pull's acknowledgement: the move's failure, or FAILED_PRECONDITION
  // once it ended; otherwise AckLocked.
  // Caller holds move->mu.
  absl::Status AckPullLocked(MoveOut* move, uint64_t applied_seq, AckedAnswers* acked);
  std::shared_ptr<MoveOut> FindMoveOut(uint64_t move_id) const;
  // PullMove, adding the answers its acknowledgement completes to `acked`;
  // with `writes`, the logged writes go there as logged instead of into
  // `response`, and with `content` the snapshot bytes (PullMoveRaw).
  absl::Status PullMoveAcking(const PullMoveRequest& request, PullMoveResponse* response,
                              bool* would_wait, AckedAnswers* acked,
                              std::vector<LoggedWrite>* writes = nullptr,
                              std::vector<grpc::Slice>* content = nullptr);
  // The follow's state changed (ended, left the in-sync set): its waiting
  // answers go to the slow path, which judges them as WaitForBackups does.
  void ReleaseAckWaiters(MoveOut* move);
  // Resumes answers whose backups did not acknowledge within the backup
  // timeout on the slow path (AnswerWhenReplicated).
  void WatchAckDeadlines();
  absl::Mutex ack_watch_mu_;
  absl::CondVar ack_watch_changed_;
  // In deadline order (each is registration time + the backup timeout).
  std::deque<std::weak_ptr<AckWaiter>> ack_watch_ ABSL_GUARDED_BY(ack_watch_mu_);
  bool ack_watch_stopping_ ABSL_GUARDED_BY(ack_watch_mu_) = false;
  std::thread ack_watcher_ ABSL_GUARDED_BY(ack_watch_mu_);  // started by the first watch
  std::shared_ptr<MoveIn> FindMoveIn(uint64_t move_id) const;
  // Snapshot bytes of one pull into the incoming part (move->mu held):
  // `content`'s if given, else response.content().
  absl::Status InstallMoveChunk(MoveIn* move, const PullMoveResponse& response,
                                const ContentMessage* content);
  // The same for a table's part or slot: rows, pending counts or Bloom
  // counters of one chunk (proto MovedTable).
  absl::Status InstallTableChunk(MoveIn* move, const PullMoveResponse& response);
  // The source's word on table member `i`, checked against the part the
  // target created: the same slot_of and dim, a consistent cut, rows
  // carrying exactly the group's slots of it.
  absl::Status CheckMovedTable(const MoveIn& move, int i, const MovedMember& m) const;
  // Replays a table's logged counting lookup on the part moving in.
  absl::Status ReplayEmbeddingLookup(const GatherRequest& request);
  // A logged table write by key (MoveWrite.table), run as its source ran it.
  absl::Status RunTableWrite(const TableWrite& write, CallerKey caller);
  // The one way into a mutating operation, so every one is checked alike:
  // the incarnation check (ABORTED "stale handle" before anything else),
  // the write gate (a Pass: it goes straight through on a handler thread
  // the service already admitted with WriteGate::TryAdmit), then `op` once
  // per request id, bound to its caller: a duplicate gets the first run's
  // status and small result (see RequestWindow).
  template <typename Response, typename Op>
  absl::Status Mutate(const WriteMeta& meta, Response* response, Op&& op);
  absl::Status CreateOnce(const CreateVariableRequest& request, VariableInfo* info);
  absl::Status AssignOnce(const AssignRequest& request, AssignResponse* response);
  absl::Status ScatterOnce(const ScatterRequest& request, ScatterResponse* response);
  absl::Status CountUpToOnce(const CountUpToRequest& request, CountUpToResponse* response);
  // The body of ApplyDense (sparse == nullptr), of a streamed dense apply
  // and of ApplySparse. With `check_only` it runs every check (taking the
  // locks) and returns before anything changes: a streamed apply runs it
  // before staging its gradient, so a bad request fails before its bytes
  // travel, with the unary apply's message.
  struct DenseGradient;
  struct SparseGradient;
  absl::Status ApplyOnce(const std::string& name,
                         const google::protobuf::RepeatedPtrField<std::string>& slots,
                         const OptimizerSpec& spec, const DenseGradient* dense,
                         const SparseGradient* sparse, uint64_t* version,
                         bool check_only = false, PowersRead* powers_read = nullptr);

  Device* const device_;
  // Host memory for values staged on the host (a streamed apply's
  // gradient, a streamed string value): device_ on a CPU shard, else a CPU
  // device of our own.
  std::unique_ptr<Device> own_host_device_;
  Device* const host_device_;
  const VariableStoreOptions options_;
  MemoryAccountant memory_;
  // After memory_, whose reclaimer it is while it lives.
  StagingPool pool_;
  RequestWindow requests_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Variable>> variables_ ABSL_GUARDED_BY(mu_);
  // Embedding tables' parts and their slots; a name is in at most one of
  // variables_ and tables_.
  std::map<std::string, std::shared_ptr<EmbeddingPart>> tables_ ABSL_GUARDED_BY(mu_);
  // Every mutation passes it; a checkpoint fence closes it.
  WriteGate gate_;
  mutable absl::Mutex restore_mu_;
  std::map<uint64_t, std::unique_ptr<StagedRestore>> restores_ ABSL_GUARDED_BY(restore_mu_);
  // Live part moves (store_move.cc).
  mutable absl::Mutex moves_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::map<uint64_t, std::shared_ptr<MoveOut>> moves_out_ ABSL_GUARDED_BY(moves_mu_);
  // By part: the group's move (at most one) and follows, by id.
  std::map<std::string, std::vector<std::shared_ptr<MoveOut>>> moving_out_
      ABSL_GUARDED_BY(moves_mu_);
  // Follows promoted here -> the seq applied (PromoteReplica is
  // idempotent); the oldest forgotten past 1024.
  std::map<uint64_t, uint64_t> promoted_ ABSL_GUARDED_BY(moves_mu_);
  std::atomic<const ShardLease*> lease_{nullptr};
  // Written by LeaseHeldToAnswer (const) on every write's path: one relaxed
  // store, so concurrent writers may leave a slightly older reading last.
  mutable std::atomic<int64_t> last_leased_answer_ns_{0};
  mutable absl::Mutex behind_mu_;
  ReplicaBehindFn replica_behind_ ABSL_GUARDED_BY(behind_mu_);
  void NotifyLogNews(uint64_t move_id);
  // Gives the news this thread's DeferredAnswers hold (see LogNewsHandler).
  void FlushThreadLogNews();
  absl::Mutex news_mu_ ABSL_ACQUIRED_AFTER(moves_mu_);
  LogNewsHandler news_handler_ ABSL_GUARDED_BY(news_mu_);
  // Held shared while a handler runs with `here` (outside news_mu_, which
  // the store's locks come before), exclusively to change the handler.
  absl::Mutex news_here_mu_;
  LogNewsHandler news_here_handler_ ABSL_GUARDED_BY(news_here_mu_);
  std::atomic<int64_t> waited_writes_{0};
  std::atomic<int64_t> wait_micros_{0};
  std::atomic<int64_t> replica_behind_calls_{0};
  std::map<uint64_t, std::shared_ptr<MoveIn>> moves_in_ ABSL_GUARDED_BY(moves_mu_);
  // Groups moving out now: Mutate looks a write's group up only when not 0.
  std::atomic<int> moving_out_count_{0};
  // Names a streamed value logged in chunks (StagedChunk.staged_id).
  std::atomic<uint64_t> next_staged_id_{1};
  // steady_clock microseconds of a recent write Mutate ran (BusyWithWrites),
  // kept to 10 ms: writers on every core read it, and store only when it
  // is older than that, so the line is not written on each write.
  std::atomic<int64_t> last_write_micros_{0};
  void NoteWrite() {
    const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now().time_since_epoch())
                            .count();
    if (now - last_write_micros_.load(std::memory_order_relaxed) > 10'000) {
      last_write_micros_.store(now, std::memory_order_relaxed);
    }
  }
  // Parts that moved away -> their new shard, so an old handle is answered
  // "stale handle" (not "not found"); the oldest are forgotten past
  // kMaxMovedAway.
  static constexpr size_t kMaxMovedAway = 1 << 16;
  std::map<std::string, int32_t> moved_away_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> moved_away_order_ ABSL_GUARDED_BY(mu_);

  // The staged parts of `restore_id`, created when it has none yet.
  StagedRestore* StagedFor(uint64_t restore_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(restore_mu_);
};

// The writes a DeferredAnswers kept, detached from its thread (to be
// waited for on another, e.g. so a gRPC thread is not held while a backup
// acknowledges: the backup's pulls need those threads). Movable.
class VariableStore::PendingAnswers {
 public:
  PendingAnswers(PendingAnswers&&) = default;
  // Assigning over kept waits would drop them.
  PendingAnswers& operator=(PendingAnswers&&) = delete;
  ~PendingAnswers();

  // Waits for every kept write's backups, in the order they ran, and
  // checks the lease for each; returns (index, status) for each write
  // whose answer must become that status instead of its own.
  std::vector<std::pair<int, absl::Status>> Finish();

 private:
  friend class VariableStore;
  struct Kept {
    int op = 0;
    bool ok = false;  // the write's own status was OK
    std::string variable;
    uint64_t lease_term = 0;  // read before it applied (LeaseHeldToAnswer)
    std::vector<BackupWait> waits;
  };
  explicit PendingAnswers(VariableStore* store) : store_(store), created_(absl::Now()) {}
  VariableStore* store_;
  // When the writes ran: their one backup timeout counts from here, on
  // the fast path and the slow one alike.
  absl::Time created_;
  std::vector<Kept> kept_;
};

class VariableStore::DeferredAnswers {
 public:
  explicit DeferredAnswers(VariableStore* store);
  // Finishes what was kept and not detached.
  ~DeferredAnswers();
  DeferredAnswers(const DeferredAnswers&) = delete;
  DeferredAnswers& operator=(const DeferredAnswers&) = delete;

  // The index the writes run from now on are reported under.
  void set_op(int index) { op_ = index; }
  // Whether no write waits (every answer can go now).
  bool empty() const { return pending_.kept_.empty(); }
  // What was kept so far, to be finished elsewhere; none is kept here after.
  PendingAnswers Detach();
  // Detach().Finish().
  std::vector<std::pair<int, absl::Status>> Finish();

 private:
  friend class VariableStore;
  DeferredAnswers* const outer_;  // the thread's previous one (restored)
  int op_ = 0;
  PendingAnswers pending_;
  // Follows with writes logged by this scope's ops, not yet announced.
  std::vector<uint64_t> news_;
};

// A streamed read's source: the value as it was when the stream began.
class ReadStreamSource {
 public:
  virtual ~ReadStreamSource() = default;
  // The first chunk's header fields.
  virtual void FillHeader(TensorChunk* chunk) const = 0;
  // Content bytes of the next chunk, or -1 when every chunk was sent (an
  // empty value still sends one, empty, chunk).
  virtual int64_t NextSize() const = 0;
  // Copies the next chunk's NextSize() content bytes to `dst` (host memory,
  // e.g. a gRPC send slice) and returns their offset in the value.
  virtual absl::StatusOr<int64_t> ReadNext(char* dst) = 0;
  // The next chunk's content without a copy, when the source can lend it:
  // its pieces (in order, each valid while its hold lives; see
  // ValuePin::Lend) into *pieces and its offset into *offset, and true.
  // False, with nothing taken, where it cannot: ReadNext then.
  virtual absl::StatusOr<bool> LendNext(std::vector<LentBytes>* /*pieces*/, int64_t* /*offset*/) {
    return false;
  }
  // Fills `chunk`'s offset and content with the next chunk; false when all
  // were sent.
  absl::StatusOr<bool> Next(TensorChunk* chunk);
};

// An embedding export's source: the rows of a part's snapshot, in batches.
class EmbeddingExportSource {
 public:
  virtual ~EmbeddingExportSource() = default;
  // The next message's rows, or false when every row was sent (the first
  // message is always sent, empty for an empty part).
  virtual absl::StatusOr<bool> Next(EmbeddingRows* rows) = 0;
};

// A streamed assign's sink: staged bytes, applied at Commit.
class AssignStreamSink {
 public:
  virtual ~AssignStreamSink() = default;  // abandons an uncommitted stream
  virtual absl::Status Append(absl::string_view bytes) = 0;
  // Applies the staged value atomically; fails unless exactly total_bytes
  // arrived.
  virtual absl::Status Commit(AssignResponse* response) = 0;
};

// ValidateVariableName, the check of a name (shared with the coordinator),
// is in psd/names.h.

}  // namespace psd

#endif  // PSD_SERVER_SHARD_VARIABLE_STORE_H_
