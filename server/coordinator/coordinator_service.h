// CoordinatorService: the gRPC edge of the coordinator. Names, scopes and
// placement are the Registry's; this class adds shard membership
// (registration, heartbeats, liveness, lost parts), turns registry entries
// into handles (each part with its shard's address and incarnation), and
// creates a new variable's parts on their shards (Shard.CreateVariable with
// the part's SliceInfo). It orders the initialization of variables
// initialized from another (sources first, telling each target shard where
// its source part lives); the values then move shard to shard. It is never
// on the data path.
//
// Liveness is computed when asked: a shard whose last registration or
// heartbeat is older than `liveness_timeout` is not live and gets no new
// parts. A shard that registers with a new incarnation without some of the
// parts placed on it has those parts marked lost (handles show `lost`).
// One process holds a shard id: a registration claiming the id of a live
// shard with another incarnation is refused ALREADY_EXISTS unless the
// holder is found gone (its address does not answer as it), so two shards
// started with one id cannot take turns at it (see CheckShardIdFree).
//
// A declaration is registered only after every new part exists on its
// shard; one that fails leaves no variable and no part (see
// DeclareAndCreate).
//
// Draining works as in ShardService: after StartDrain() new calls get
// UNAVAILABLE and WaitForIdle() waits for running ones.
//
// Thread-safety: thread-safe. The registry has its own lock; membership is
// guarded by mu_, never held across an RPC to a shard. Part creation and
// ordered initialization call the shards synchronously from the handler
// thread (bounded by `shard_rpc_timeout` per call); no lock is held across
// them, only the declaration's own names (declaring_), which only
// declarations and deletions of those names wait for.
#ifndef PSD_SERVER_COORDINATOR_COORDINATOR_SERVICE_H_
#define PSD_SERVER_COORDINATOR_COORDINATOR_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "boost/asio/thread_pool.hpp"
#include "coordinator/checkpoint_manager.h"
#include "coordinator/move_progress.h"
#include "coordinator/registry.h"
#include "grpcpp/security/credentials.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/shard.grpc.pb.h"

namespace psd {

struct CoordinatorServiceOptions {
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration liveness_timeout = absl::Seconds(5);
  // The lease each accepted registration or heartbeat grants its shard
  // (docs/replication.md "Leases"). At least twice heartbeat_interval, so
  // one slow heartbeat does not let it lapse.
  absl::Duration lease_period = absl::Seconds(3);
  absl::Duration shard_rpc_timeout = absl::Seconds(30);
  // How long a registration that claims the id of a shard still live waits
  // for that shard's address to answer (see RegisterShard).
  absl::Duration holder_probe_timeout = absl::Seconds(1);
  int max_message_bytes = 64 << 20;
  // A session with no call for this long is closed (a trainer that died
  // without closing it). Clients keep theirs alive with KeepSessionAlive.
  // Zero: sessions never expire.
  absl::Duration session_ttl = absl::Minutes(15);
  // Checkpoint directory, retention policy, fence lease.
  CheckpointManagerOptions checkpoint;
  // Secure the channels to shards (TLS and the node token); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> shard_credentials;
  // Called when a live part move ends (from the thread that ran it).
  std::function<void(const absl::StatusOr<MovePartResponse>&)> on_move;
  // Handlers that call shards (declarations, deletions, initialization,
  // saves, restores, shard registration) run on this many worker threads,
  // not on gRPC's few callback threads, so calls blocked on a slow shard
  // never hold up heartbeats, lookups or sessions.
  int blocking_workers = 16;
  // Such calls waiting for a worker at once; past it they fail at once with
  // RESOURCE_EXHAUSTED naming the limit.
  int max_queued_blocking_calls = 1024;
  // How often the replica keeper looks at the replicated groups
  // (KeepReplicas; it also runs at once when a shard is found down or a
  // backup behind). Zero: no keeper thread (tests call KeepReplicas).
  absl::Duration replica_keeper_interval = absl::Milliseconds(500);
};

class CoordinatorService final : public Coordinator::CallbackService {
 public:
  CoordinatorService(Registry* registry, const CoordinatorServiceOptions& options);
  // Waits for the calls running on the workers.
  ~CoordinatorService() override;

  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx,
                                        const OpenSessionRequest* request,
                                        OpenSessionResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx,
                                         const CloseSessionRequest* request,
                                         CloseSessionResponse* response) override;
  grpc::ServerUnaryReactor* KeepSessionAlive(grpc::CallbackServerContext* ctx,
                                             const KeepSessionAliveRequest* request,
                                             KeepSessionAliveResponse* response) override;
  grpc::ServerUnaryReactor* RegisterShard(grpc::CallbackServerContext* ctx,
                                          const RegisterShardRequest* request,
                                          RegisterShardResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const HeartbeatRequest* request,
                                      HeartbeatResponse* response) override;
  // A primary's backup fell behind (docs/replication.md "In-sync
  // changes"): it leaves the group's in-sync set durably before the
  // answer; the keeper then replaces it.
  grpc::ServerUnaryReactor* ReplicaBehind(grpc::CallbackServerContext* ctx,
                                          const ReplicaBehindRequest* request,
                                          ReplicaBehindResponse* response) override;
  grpc::ServerUnaryReactor* GetVariable(grpc::CallbackServerContext* ctx,
                                        const GetVariableRequest* request,
                                        GetVariableResponse* response) override;
  grpc::ServerUnaryReactor* DeclareVariables(grpc::CallbackServerContext* ctx,
                                             const DeclareVariablesRequest* request,
                                             DeclareVariablesResponse* response) override;
  grpc::ServerUnaryReactor* ListVariables(grpc::CallbackServerContext* ctx,
                                          const CoordinatorListVariablesRequest* request,
                                          CoordinatorListVariablesResponse* response) override;
  grpc::ServerUnaryReactor* LookupVariable(grpc::CallbackServerContext* ctx,
                                           const LookupVariableRequest* request,
                                           LookupVariableResponse* response) override;
  grpc::ServerUnaryReactor* DeleteVariable(grpc::CallbackServerContext* ctx,
                                           const CoordinatorDeleteVariableRequest* request,
                                           CoordinatorDeleteVariableResponse* response) override;
  // Initialization in dependency order for variables initialized from
  // others (see CoordinatorInitializeRequest).
  grpc::ServerUnaryReactor* InitializeVariables(grpc::CallbackServerContext* ctx,
                                                const CoordinatorInitializeRequest* request,
                                                CoordinatorInitializeResponse* response) override;
  grpc::ServerUnaryReactor* OpenScope(grpc::CallbackServerContext* ctx,
                                      const OpenScopeRequest* request,
                                      OpenScopeResponse* response) override;
  grpc::ServerUnaryReactor* CloseScope(grpc::CallbackServerContext* ctx,
                                       const CloseScopeRequest* request,
                                       CloseScopeResponse* response) override;
  grpc::ServerUnaryReactor* UniqueVariableName(grpc::CallbackServerContext* ctx,
                                               const UniqueVariableNameRequest* request,
                                               UniqueVariableNameResponse* response) override;
  // psctl vars move (docs/moves.md).
  grpc::ServerUnaryReactor* MovePart(grpc::CallbackServerContext* ctx,
                                     const MovePartRequest* request,
                                     MovePartResponse* response) override;
  grpc::ServerUnaryReactor* DrainShard(grpc::CallbackServerContext* ctx,
                                       const DrainShardRequest* request,
                                       DrainShardResponse* response) override;
  grpc::ServerUnaryReactor* Rebalance(grpc::CallbackServerContext* ctx,
                                      const RebalanceRequest* request,
                                      RebalanceResponse* response) override;
  grpc::ServerUnaryReactor* MoveProgress(grpc::CallbackServerContext* ctx,
                                         const MoveProgressRequest* request,
                                         MoveProgressResponse* response) override;
  grpc::ServerUnaryReactor* ListShards(grpc::CallbackServerContext* ctx,
                                       const ListShardsRequest* request,
                                       ListShardsResponse* response) override;
  // Checkpoints: see checkpoint_manager.h.
  grpc::ServerUnaryReactor* Save(grpc::CallbackServerContext* ctx,
                                 const SaveCheckpointRequest* request,
                                 SaveCheckpointResponse* response) override;
  grpc::ServerUnaryReactor* Restore(grpc::CallbackServerContext* ctx,
                                    const RestoreCheckpointRequest* request,
                                    RestoreCheckpointResponse* response) override;
  grpc::ServerUnaryReactor* LatestCheckpoint(grpc::CallbackServerContext* ctx,
                                             const LatestCheckpointRequest* request,
                                             LatestCheckpointResponse* response) override;
  grpc::ServerUnaryReactor* GetCheckpointState(grpc::CallbackServerContext* ctx,
                                               const GetCheckpointStateRequest* request,
                                               GetCheckpointStateResponse* response) override;
  grpc::ServerUnaryReactor* UpdateCheckpointState(grpc::CallbackServerContext* ctx,
                                                  const UpdateCheckpointStateRequest* request,
                                                  UpdateCheckpointStateResponse* response) override;
  grpc::ServerUnaryReactor* SetLastCheckpoints(grpc::CallbackServerContext* ctx,
                                               const SetLastCheckpointsRequest* request,
                                               SetLastCheckpointsResponse* response) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* ctx,
                                            const ListCheckpointsRequest* request,
                                            ListCheckpointsResponse* response) override;
  grpc::ServerUnaryReactor* Policy(grpc::CallbackServerContext* ctx,
                                   const CheckpointPolicyRequest* request,
                                   CheckpointPolicyResponse* response) override;
  grpc::ServerUnaryReactor* CheckpointProgress(grpc::CallbackServerContext* ctx,
                                               const CheckpointProgressRequest* request,
                                               CheckpointProgressResponse* response) override;

  // psctl shutdown: handled by the process (coordinator/coordinator_server.cc),
  // which owns the final save and the stop; UNIMPLEMENTED until it sets
  // a handler.
  grpc::ServerUnaryReactor* Shutdown(grpc::CallbackServerContext* ctx,
                                     const ShutdownRequest* request,
                                     ShutdownResponse* response) override;
  using ShutdownHandler =
      std::function<absl::Status(const ShutdownRequest& request, ShutdownResponse* response)>;
  // Set before serving; called on the RPC's thread and may block.
  void SetShutdownHandler(ShutdownHandler handler) ABSL_LOCKS_EXCLUDED(mu_);

  // What ListShards answers: every registered shard as the coordinator sees
  // it now (liveness, placement, lost parts), for the RPC and for metrics.
  ListShardsResponse ShardStatuses() const ABSL_LOCKS_EXCLUDED(mu_);
  // Whether `shard_id` may still hold a lease this coordinator, or the
  // one before its restart, granted: false only once it has certainly
  // expired on the shard (its own clock counts from before it asked, ours
  // from after we granted, plus a margin for the clocks' rates). A backup
  // may take over a primary's parts only once this is false.
  bool LeaseMayBeHeld(int32_t shard_id) const ABSL_LOCKS_EXCLUDED(mu_);

  CheckpointManager* checkpoints() { return checkpoints_.get(); }

  // The replica keeper (docs/replication.md; coordinator_service_replica.cc).
  // One pass: fails over every replicated group whose primary shard is lost
  // (once its lease has certainly expired) to its most advanced in-sync
  // backup; drops backups that left the in-sync set, whose shard is down or
  // restarted, or whose follow failed; and starts a new backup (on a
  // worker) for every group short of replication-1 backups whose primary
  // is live and initialized. The keeper thread calls it every
  // replica_keeper_interval; tests call it directly. Blocks on the shards
  // (bounded by shard_rpc_timeout per call) only for failovers and drops.
  void KeepReplicas() ABSL_LOCKS_EXCLUDED(mu_);
  // What /metrics shows of replication.
  struct ReplicaStats {
    int64_t failovers = 0;
    int64_t replicas_added = 0;
    int64_t under_replicated_groups = 0;
    // From noticing a primary lost to its backup's promotion, the last one.
    double last_failover_seconds = 0;
    // When the last failover's new primary was first asked to serve
    // (PromoteReplica), on this host's steady_clock (CLOCK_MONOTONIC):
    // comparable with a shard's lease end on one host (0: none).
    double last_failover_monotonic_seconds = 0;
  };
  ReplicaStats replica_stats() const ABSL_LOCKS_EXCLUDED(mu_);
  // Backups being made now (their adds run on the workers).
  int replica_adds_running() const ABSL_LOCKS_EXCLUDED(mu_);

  // Shards live now.
  int NumLiveShards() const { return static_cast<int>(LiveShards().size()); }
  // Declares (REUSE_AUTO) every variable of a checkpoint's meta with its
  // dtype, shape, partitioning, collections and initializer, in creation
  // order, and creates the parts on the live shards (`psd coordinator
  // --restore-from`). Placement follows the live shards, not the saved ids.
  absl::Status DeclareFromMeta(const CheckpointMeta& meta);
  // A restore (the Restore RPC's, and `--restore-from`'s after
  // DeclareFromMeta): the backups of the groups it writes are dropped
  // first and the keeper leaves those groups alone until it is over, then
  // makes their backups again by copying the restored primaries. A restore
  // is not forwarded to backups, so a backup made while it runs could copy
  // the value it replaces and still count as in sync.
  absl::StatusOr<RestoreCheckpointResponse> RestoreCheckpoint(
      const RestoreCheckpointRequest& request) ABSL_LOCKS_EXCLUDED(mu_);
  // Called (outside any lock, on the RegisterShard handler thread) when a
  // shard registers as a new process without parts placed on it; must not
  // block. Unset: lost parts stay lost until restored by hand.
  void SetLostPartsHandler(
      std::function<void(int32_t shard_id, std::vector<std::string> parts)> handler)
      ABSL_LOCKS_EXCLUDED(mu_);

  void StartDrain() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // True if no call was running by `deadline`.
  bool WaitForIdle(absl::Time deadline) const;

 private:
  // Asks every live shard for its memory use and variable count now
  // (ListShards: the figures psctl status shows are current, not a
  // heartbeat old).
  void RefreshShardFigures() ABSL_LOCKS_EXCLUDED(mu_);

  struct ShardEntry {
    int32_t id = 0;
    std::string address;
    uint64_t incarnation = 0;
    std::string device;
    std::string host;  // its failure domain (empty: its own)
    int64_t memory_limit = 0;
    int64_t memory_used = 0;
    int64_t num_variables = 0;
    absl::Time last_seen;
    std::set<std::string> lost_parts;
    // This incarnation's traffic counters, from its last heartbeat that
    // carried them (none yet: unset), and when it arrived.
    std::optional<ShardTraffic> traffic;
    absl::Time traffic_at;
    // When this coordinator last granted the shard a lease (monotonic).
    std::chrono::steady_clock::time_point lease_granted{};
  };
  // Until when `e`'s lease may be held (see LeaseMayBeHeld).
  std::chrono::steady_clock::time_point LeaseEnd(const ShardEntry& e) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Grants `e` a lease now; the lease's length for the shard's answer.
  int64_t GrantLease(ShardEntry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Runs `op` on the calling gRPC thread: for handlers that touch only
  // the coordinator's own state (and at most wait for a registry sync).
  template <typename Op>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* ctx, Op&& op);
  // Runs `op` on a worker (options.blocking_workers): for handlers that
  // call shards. `op` is kept until it runs, so it must capture by value
  // (the handler's request, response and context pointers stay valid until
  // the reactor finishes).
  template <typename Op>
  grpc::ServerUnaryReactor* ServeBlocking(grpc::CallbackServerContext* ctx, Op op);

  std::vector<int32_t> LiveShards() const ABSL_LOCKS_EXCLUDED(mu_);
  // Where new parts may go: the live shards that are not drained.
  std::vector<int32_t> PlacementShards() const ABSL_LOCKS_EXCLUDED(mu_);
  // OK if `request` may hold its shard id: nobody holds it, or the same
  // process does, or the holder is gone (its address answers as another
  // incarnation or refuses connections; with no clear answer, its
  // heartbeats lapsed). ALREADY_EXISTS naming the holder's address and
  // incarnation when the holder answers as itself; UNAVAILABLE (retry)
  // when it cannot be confirmed gone. Calls the holder's address
  // (holder_probe_timeout) without holding mu_.
  absl::Status CheckShardIdFree(const RegisterShardRequest& request) ABSL_LOCKS_EXCLUDED(mu_);
  void FillHandle(const VariableDef& def, VariableHandle* handle) const ABSL_LOCKS_EXCLUDED(mu_);
  struct NewVariable {
    const VariableDef* def;
    bool initialize;
  };
  // Creates every part of the new `variables` on its shard, all or nothing:
  // on the first failure every part attempted is deleted again and the
  // shard's error comes back naming the variable, the part and the shard.
  // A part the shard already holds is a leftover of an earlier variable of
  // the name (the registry has none): it is deleted and created fresh.
  absl::Status CreateNewParts(const std::vector<NewVariable>& variables) ABSL_LOCKS_EXCLUDED(mu_);
  // Deletes `part` on `shard_id` (OK if it is not there).
  absl::Status DeletePart(int32_t shard_id, const std::string& part) ABSL_LOCKS_EXCLUDED(mu_);
  // The name of the primary's part beside `part` of slot table `slot`
  // (CreateVariableRequest.embedding.slot_of): "v/part_K" for the slot's
  // part K, "v" for an unpartitioned primary. The primary is found in
  // `batch` or the registry; FAILED_PRECONDITION if it is gone or no
  // longer matches.
  absl::StatusOr<std::string> PrimaryPartOf(const VariableDef& slot, const VariablePart& part,
                                            const std::vector<NewVariable>& batch) const;
  // Best-effort DeletePart of each (shard, part); failures are logged.
  void UndoParts(const std::vector<std::pair<int32_t, std::string>>& parts)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Checks and places a declaration batch, creates the new variables' parts
  // and only then registers it (Registry::PrepareDeclare/CommitDeclare):
  // a failure anywhere registers nothing and deletes the parts created. A
  // retried request (same request_seq) whose first attempt was registered
  // gets its answer again. `deadline` (the caller's) bounds the ordered
  // initialization of derived variables declared with initialize (see
  // InitializeOrdered).
  absl::StatusOr<std::vector<DeclareResult>> DeclareAndCreate(
      uint64_t session, absl::Span<const VariableDeclaration> decls, uint64_t request_seq = 0,
      absl::Time deadline = absl::InfiniteFuture());
  // Initializes `names` and (transitively) the sources they are initialized
  // from, sources first; each step runs one Shard.InitializeVariables per
  // shard in parallel, each target part told where its source part lives.
  // Every part involved is checked (registered, not lost) before any shard
  // is called. Returns the variables in the order they were initialized.
  // `force` applies to `names` only. Blocks on the shards, each step
  // bounded by shard_rpc_timeout and by `deadline`, the caller's: a shard
  // applies nothing once its call's deadline passed, so a caller that gave
  // up is not followed by a step that still completes; no step starts past
  // it (DEADLINE_EXCEEDED naming what was initialized).
  absl::StatusOr<std::vector<std::string>> InitializeOrdered(
      const std::vector<std::string>& names, bool force,
      absl::Time deadline = absl::InfiniteFuture()) ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<grpc::Channel> ChannelFor(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<Shard::Stub> StubFor(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);

  // Live part moves (coordinator_service_move.cc; docs/moves.md).
  // The shard's address and incarnation if it is registered and live.
  struct ShardAddress {
    std::string address;
    uint64_t incarnation = 0;
  };
  absl::StatusOr<ShardAddress> LiveShardAddress(int32_t shard_id) const ABSL_LOCKS_EXCLUDED(mu_);
  // Moves `part` and the parts colocated with it to `target_shard`.
  // Reports the result to options.on_move.
  absl::StatusOr<MovePartResponse> MoveGroup(const std::string& part, int32_t target_shard)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<MovePartResponse> MoveGroupOnce(const std::string& part, int32_t target_shard)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Tells both shards of `move` how it ended (EndMove): OK once both know
  // (or no longer hold it: restarted), after which the move is finished.
  absl::Status EndMoveOnShards(const PartMoveRecord& move) ABSL_LOCKS_EXCLUDED(mu_);
  // Finishes the moves the registry holds unfinished and no call of this
  // process is running (after a coordinator restart, or a shard that was
  // unreachable when its move ended): committed ones on to the target,
  // the others back to the source. Runs at most every few seconds, from
  // heartbeats; never blocks the caller (it runs on a worker).
  void ResolvePendingMoves() ABSL_LOCKS_EXCLUDED(mu_);
  // psctl shard drain and psctl rebalance (see DrainShardRequest,
  // RebalanceRequest): plans and runs MoveGroup one group at a time.
  absl::StatusOr<DrainShardResponse> Drain(const DrainShardRequest& request)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<RebalanceResponse> RebalanceParts(bool dry_run) ABSL_LOCKS_EXCLUDED(mu_);
  // The groups a move takes (a primary dense part and the parts beside it)
  // by shard: each group's first part's name and its bytes.
  struct MovableGroup {
    std::string part;
    int64_t bytes = 0;
  };
  std::map<int32_t, std::vector<MovableGroup>> MovableGroups();
  // The bytes each table part of `defs` holds, as its shard reports them
  // (parts whose shard does not answer in a second are left out).
  std::map<std::string, int64_t> TablePartBytes(const std::vector<VariableDef>& defs);
  // Memory free under each shard's limit, for planning moves; a shard with
  // no limit has room for anything.
  struct ShardRoom {
    std::map<int32_t, int64_t> free;  // shards with a limit only
    bool Fits(int32_t shard, int64_t bytes) const {
      auto it = free.find(shard);
      return it == free.end() || it->second >= bytes;
    }
    void Take(int32_t shard, int64_t bytes) {
      if (auto it = free.find(shard); it != free.end()) it->second -= bytes;
    }
    void Give(int32_t shard, int64_t bytes) {
      if (auto it = free.find(shard); it != free.end()) it->second += bytes;
    }
  };
  // As the shards say now (asks them first).
  ShardRoom FreeMemory(const std::vector<int32_t>& shards) ABSL_LOCKS_EXCLUDED(mu_);
  // Replicated groups (coordinator_service_replica.cc).
  // Makes one backup of `group` (replica_added, follow, sync, in sync),
  // or gives it up (dropped); runs on a worker, with the group busy.
  void AddBackup(const ReplicaGroup& group) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes backup `backup` of `group` out of use: out of the in-sync set
  // first (durable, if it was in), then EndMove(committed=false) on both
  // shards (best effort: a shard that is down hears it at registration,
  // as drop_parts), then replica_dropped.
  absl::Status DropBackup(const ReplicaGroup& group, const ReplicaRecord& backup,
                          const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  // EndMove(committed = false) of follow `move_id` on those of `shards`
  // that are live; the first failure (or a shard not live).
  absl::Status EndFollow(uint64_t move_id, const std::vector<int32_t>& shards)
      ABSL_LOCKS_EXCLUDED(mu_);
  // For a backup made before this coordinator started: why it is out of
  // use (its shard does not know its follow, or the follow failed), or ""
  // (then `incarnation` is noted as the one that holds it).
  std::string CheckFollow(const ReplicaRecord& backup, uint64_t incarnation)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Promotes the most advanced in-sync backup on a live shard of `group`,
  // whose primary is lost: failover recorded, PromoteReplica, the other
  // backups told. FAILED_PRECONDITION when no backup can be promoted.
  absl::Status FailOverGroup(const ReplicaGroup& group) ABSL_LOCKS_EXCLUDED(mu_);
  // PromoteReplica for the failed-over group `group` (its first part) as
  // promoting_ records it; OK (and forgotten) once the shard answered OK
  // (it is idempotent there) or when none is pending.
  absl::Status Promote(const std::string& group) ABSL_LOCKS_EXCLUDED(mu_);
  // Retries the pending promotions, forgetting those no longer due (the
  // registry moved on, or the shard is a new process).
  void RetryPromotions(const std::vector<ReplicaGroup>& groups) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops every backup of the replicated groups among `parts` (all of
  // them when empty) and keeps the keeper off them until the returned
  // object is destroyed: a move or a restore of a primary then re-adds
  // them from the new copy.
  class ReplicaPause {
   public:
    ReplicaPause(CoordinatorService* service, std::vector<std::string> groups)
        : service_(service), groups_(std::move(groups)) {}
    ~ReplicaPause();
    ReplicaPause(const ReplicaPause&) = delete;
    ReplicaPause& operator=(const ReplicaPause&) = delete;

   private:
    CoordinatorService* const service_;
    const std::vector<std::string> groups_;
  };
  std::unique_ptr<ReplicaPause> PauseReplicas(const std::set<std::string>& parts,
                                              const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  void KeeperLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Runs the keeper's next pass now rather than at its interval.
  void WakeKeeper() ABSL_LOCKS_EXCLUDED(keeper_mu_);
  // Parts `shard_id` reports holding that the registry places elsewhere
  // now (replicated parts only): RegisterShardResponse.drop_parts.
  std::vector<std::string> PartsToDrop(int32_t shard_id, const std::set<std::string>& held)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Marks `session` as just used. NOT_FOUND naming the TTL if it expired.
  absl::Status TouchSession(uint64_t session) ABSL_LOCKS_EXCLUDED(sessions_mu_);
  // Closes sessions idle for longer than the TTL; runs at most every
  // TTL/8, from session calls and from shard heartbeats (which keep coming
  // when no trainer calls).
  void ExpireIdleSessions() ABSL_LOCKS_EXCLUDED(sessions_mu_);

  Registry* const registry_;
  const CoordinatorServiceOptions options_;
  // Moves, drains and rebalances that carry a progress_id (MoveProgress).
  MoveProgressBoard move_progress_;
  std::atomic<bool> draining_{false};
  std::atomic<int> in_flight_{0};
  // Calls given to `workers_` and not finished yet.
  std::atomic<int> blocking_calls_{0};
  boost::asio::thread_pool workers_;

  // Serializes declarations and deletions of the same names (see
  // NameKey), and only those: each holds its names from the check through
  // the creation of its parts on the shards to its registration, so a
  // session that attaches to a variable another session is creating gets
  // its handle only once the parts exist and the registration is durable,
  // and a declaration never races a deletion of its name, of a variable it
  // is initialized from or colocated with (neither its registration nor
  // its parts). A declaration of other names goes on meanwhile: one slow
  // shard holds up only the declarations that need what it is creating.
  class NameLocks {
   public:
    // Blocks until none of `keys` is held, then holds them all (all at
    // once: two batches never wait for each other in a cycle).
    void Acquire(const std::set<std::string>& keys) ABSL_LOCKS_EXCLUDED(mu_);
    void Release(const std::set<std::string>& keys) ABSL_LOCKS_EXCLUDED(mu_);

   private:
    absl::Mutex mu_;
    std::set<std::string> held_ ABSL_GUARDED_BY(mu_);
  };
  // Holds `keys` of `locks` for its lifetime.
  class HeldNames {
   public:
    HeldNames(NameLocks* locks, std::set<std::string> keys)
        : locks_(locks), keys_(std::move(keys)) {
      locks_->Acquire(keys_);
    }
    ~HeldNames() { locks_->Release(keys_); }
    HeldNames(const HeldNames&) = delete;
    HeldNames& operator=(const HeldNames&) = delete;

   private:
    NameLocks* const locks_;
    const std::set<std::string> keys_;
  };
  // The key a name is serialized under: the name without trailing
  // "/part_K" components, so a partitioned variable `v` (whose parts are
  // `v/part_K` on the shards) and a variable named `v/part_0` share one.
  static std::string NameKey(const std::string& name);
  // The keys a declaration batch holds: each declared name, and the
  // variables each is initialized from or colocated with.
  static std::set<std::string> DeclarationKeys(absl::Span<const VariableDeclaration> decls);
  NameLocks declaring_;
  // The ordered initializations that declarations started and that run
  // after their names are released, by variable: a declaration attaching to
  // such a variable without initializing it waits for it outside the name
  // locks, as it waits for the creation of the parts inside.
  struct InitializationInFlight {
    absl::Notification done;
  };
  std::map<std::string, std::shared_ptr<InitializationInFlight>> initializing_
      ABSL_GUARDED_BY(mu_);
  // When this process started (monotonic): a lease the coordinator before
  // a restart granted may last until lease_period after it.
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  mutable absl::Mutex mu_;
  std::map<int32_t, ShardEntry> shards_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Shard::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
  // Moves a call of this process is running, and when pending moves were
  // last resolved.
  std::set<uint64_t> moves_running_ ABSL_GUARDED_BY(mu_);
  absl::Time next_move_resolve_ ABSL_GUARDED_BY(mu_);
  bool resolving_moves_ ABSL_GUARDED_BY(mu_) = false;
  // The replica keeper's state. Groups by their first part's name.
  // Groups a keeper task (an add) or a pause (a move, a restore) works on:
  // the keeper leaves them alone.
  std::map<std::string, int> replica_busy_ ABSL_GUARDED_BY(mu_);
  // Shard incarnations that lost a replicated group's primary: their
  // heartbeats get no lease again (they must register anew), and their
  // registration waits until no failover off them is pending.
  std::set<std::pair<int32_t, uint64_t>> fenced_ ABSL_GUARDED_BY(mu_);
  std::set<int32_t> failing_over_ ABSL_GUARDED_BY(mu_);
  // Bumped by every recorded failover: a registration that read its
  // drop_parts before one is refused (retried).
  uint64_t failover_generation_ ABSL_GUARDED_BY(mu_) = 0;
  // When each lost primary was noticed (first part -> time), for the
  // failover time.
  std::map<std::string, absl::Time> primary_lost_at_ ABSL_GUARDED_BY(mu_);
  // The incarnation each backup's shard had when it was made (move id ->
  // incarnation); a backup whose shard restarted is gone.
  std::map<uint64_t, uint64_t> backup_incarnation_ ABSL_GUARDED_BY(mu_);
  // Failed-over groups whose new primary has not answered PromoteReplica
  // OK yet (first part -> where, which follow, the epoch, the process):
  // retried at every keeper pass, which leaves the group alone meanwhile.
  struct PendingPromotion {
    int32_t shard = 0;
    uint64_t move_id = 0;
    uint64_t epoch = 0;
    uint64_t incarnation = 0;
  };
  std::map<std::string, PendingPromotion> promoting_ ABSL_GUARDED_BY(mu_);
  // A group whose last backup failed is tried again only after a pause
  // (first part -> when, and the pause, doubled at each failure).
  std::map<std::string, std::pair<absl::Time, absl::Duration>> replica_retry_
      ABSL_GUARDED_BY(mu_);
  ReplicaStats replica_stats_ ABSL_GUARDED_BY(mu_);
  int replica_adds_ ABSL_GUARDED_BY(mu_) = 0;
  // The keeper thread: woken by keeper_wake_ or every interval.
  absl::Mutex keeper_mu_;
  bool keeper_stop_ ABSL_GUARDED_BY(keeper_mu_) = false;
  bool keeper_wake_ ABSL_GUARDED_BY(keeper_mu_) = false;
  std::thread keeper_;
  std::unique_ptr<CheckpointManager> checkpoints_;
  std::function<void(int32_t, std::vector<std::string>)> on_lost_parts_ ABSL_GUARDED_BY(mu_);
  ShutdownHandler on_shutdown_ ABSL_GUARDED_BY(mu_);

  // Session liveness, in memory only: after a restart every recovered
  // session starts a fresh TTL. Taken before the registry's lock.
  absl::Mutex sessions_mu_;
  std::map<uint64_t, absl::Time> session_seen_ ABSL_GUARDED_BY(sessions_mu_);
  // Recently expired sessions, so their next call says why (bounded).
  std::set<uint64_t> expired_sessions_ ABSL_GUARDED_BY(sessions_mu_);
  absl::Time next_expiry_sweep_ ABSL_GUARDED_BY(sessions_mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_COORDINATOR_SERVICE_H_
