// Registry: the coordinator's authority over variable names. It holds every
// variable's declaration (dtype, shape, partitioning, initializer,
// trainable, collections, placement of each part, where and by which
// session it was first declared) and the client sessions, and implements
// TensorFlow's naming rules with a session playing the graph:
//
//  * Within a session, get_variable's reuse checks: creating a name the
//    session already declared without reuse is ALREADY_EXISTS ("Variable
//    foo/v already exists, disallowed. ... Originally defined at: ..."),
//    reuse of a name the session never declared is NOT_FOUND, reuse with
//    another shape, dtype or partitioning is INVALID_ARGUMENT, AUTO_REUSE
//    creates once and returns it afterwards.
//  * Across sessions, declaring a name another session created attaches to
//    it when dtype, shape and partitioning agree, and is INVALID_ARGUMENT
//    naming both declarations otherwise. The attaching session then holds
//    the name like one it created.
//  * Per-session counters for default-named scopes (`layer`, `layer_1`:
//    TensorFlow's _VariableScopeStore counts, keyed by full scope path) and
//    for default variable names (`Variable`, `Variable_1`: Graph.unique_name).
//    The scope stack itself lives in the client, which reports scope entry
//    and exit (OpenScope / CloseScope).
//  * Colocation: a declaration may name a primary variable to sit beside
//    (an optimizer's slots, `v/Adam/part_K` on the shard of `v/part_K`);
//    placement then follows the primary's parts instead of byte balancing.
//  * Initialization from another variable (InitializerSpec.FromVariable):
//    the source must be declared already (or earlier in the batch), be
//    another variable of the same dtype, shape and part shapes, and not
//    lead back to the new name (no cycles).
//
// With a state directory every mutation is logged (RegistryLog) before it is
// applied: declarations, deletions and session open/close are acknowledged
// only once their record is on stable storage (a batch declaration is one
// record); scope and unique-name counter updates are written without
// waiting for a sync, which survives a coordinator crash but not a machine
// crash (they only matter while their session lives).
//
// Group commit. A mutation appends its record (write(2), no sync) and
// applies it under the registry's mutex, then releases the mutex and waits
// for durability: one caller at a time syncs the log (fdatasync, outside
// the mutex), covering every record appended before the sync started, and
// the others wait for that sync instead of issuing their own. So a disk
// flush never holds up a caller that needs no flush, and N concurrent
// declarations cost about two syncs, not N.
//
// What a caller may see. Under the mutex the in-memory state may be ahead
// of the disk by the records whose sync is in flight. No answer reveals such
// a record before it is durable: a call returns only once every record its
// answer may reflect is durable (its own record, and for a declaration,
// deletion, session call, List, HasSession or PartsOnShard every earlier
// durable-on-acknowledgement record, as durability is a prefix of the log;
// a Lookup waits only for the last record that created or deleted that
// name, so a lookup of another name never waits for a flush). Errors wait
// the same way (an ALREADY_EXISTS may reflect an unsynced declaration). The
// exceptions are counters and statistics: the scope and unique-name calls
// (not synced, above) and Placement, num_variables, num_sessions and
// SessionIds, which may count records not yet durable. Hence: an
// acknowledged declaration, deletion or session open/close survives a
// crash, and nothing acknowledged or shown to any caller is lost.
//
// A failed append (a write error, a short write) is cut off again and
// changes nothing: the caller gets the error, the state is as before. A
// failed sync is fatal: after a failed fdatasync the kernel may have marked
// the unwritten pages clean, so the file's contents are unknown and a retry
// could report success for data that is gone (PostgreSQL's "fsyncgate",
// after which it PANICs rather than retry). The in-memory state then holds
// records the disk may not, and undoing them is not possible (other
// records were applied after them). So every waiter whose record is not
// durable fails with the sync's error, the log refuses every later append,
// nothing not durable is ever answered, and `on_log_failure` is called;
// by default it logs and aborts the process, whose restart recovers exactly
// what the log holds, which is everything acknowledged.
//
// Usage:
//   PSD_ASSIGN_OR_RETURN(auto registry, Registry::Open({.state_dir = dir}));
//   PSD_ASSIGN_OR_RETURN(uint64_t session, registry->OpenSession("trainer 0"));
//   PSD_ASSIGN_OR_RETURN(auto scope, registry->OpenScope(session, "", "foo", "", false, false));
//   VariableDeclaration d;  // name scope->path + "/v", shape, reuse, ...
//   PSD_ASSIGN_OR_RETURN(DeclareResult r, registry->GetVariable(session, d, live_shards));
//
// Thread-safety: thread-safe. One mutex (mu_) serializes the checks, log
// appends and in-memory updates of every operation, so concurrent
// declarations of one name from many sessions yield exactly one variable;
// the log syncs run outside it (sync_mu_ only elects the caller that
// syncs), and so do compaction's writes and syncs: the caller whose record
// crossed compact_log_bytes publishes the snapshot and writes the new log
// (carrying over the records appended meanwhile) after releasing mu_, and
// holds it only for the rename of the new log over the old one (a metadata
// update, no flush); only under a stream of appends that outruns eight
// rounds of catching up are the last records written and synced under it.
#ifndef PSD_SERVER_COORDINATOR_REGISTRY_H_
#define PSD_SERVER_COORDINATOR_REGISTRY_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "checkpoint/file_system.h"
#include "coordinator/placement.h"
#include "coordinator/registry_log.h"
#include "coordinator/replication.h"
#include "psd/coordinator.pb.h"
#include "psd/names.h"

namespace psd {

// TensorFlow's GraphKeys.
inline constexpr char kGlobalVariables[] = "variables";
inline constexpr char kTrainableVariables[] = "trainable_variables";
inline constexpr char kLocalVariables[] = "local_variables";
inline constexpr char kMovingAverageVariables[] = "moving_average_variables";
// How many dropped or failed-over backups the registry remembers the group
// of (Registry::ReportReplicaBehind).
inline constexpr size_t kMaxRetiredBackups = 16384;

struct RegistryOptions {
  // Empty: nothing is persisted (tests, tools).
  std::string state_dir;
  // Compact the log into a snapshot once it is larger than this.
  int64_t compact_log_bytes = 64 << 20;
  // The most parts a new variable may have (INVALID_ARGUMENT past it).
  int64_t max_parts_per_variable = kMaxPartsPerVariable;
  // The largest serialized snapshot or log record: a mutation whose record,
  // or a compaction whose snapshot, would be larger fails with
  // RESOURCE_EXHAUSTED and changes nothing (protobuf cannot serialize 2 GiB).
  int64_t max_state_bytes = RegistryLog::kMaxStateBytes;
  // Sessions open at once: each holds its scopes, counters and replies for
  // retries. OpenSession past it is RESOURCE_EXHAUSTED (idle sessions expire
  // after the coordinator's session TTL and make room).
  int64_t max_sessions = 4096;
  // The cluster's replication factor (docs/replication.md): what a
  // declaration with replication 0 gets. 1..kMaxReplication.
  int32_t replication = 1;
  // The file system the state directory is accessed through (tests inject
  // faults with it); null: the real one. Must outlive the registry.
  checkpoint::FileSystem* file_system = nullptr;
  // Called once when a sync of the log fails (see "A failed sync is fatal"
  // above), from the thread that saw it, without the registry's locks.
  // Null: log the error and abort the process.
  std::function<void(const absl::Status&)> on_log_failure;
};

// A variable's replication factor: 1 for one registered before factors
// existed (replication 0).
inline int32_t ReplicationOf(const VariableDef& def) {
  return def.replication() > 0 ? def.replication() : 1;
}

struct DeclareResult {
  VariableDef def;
  // This declaration created the variable (its parts must now be created on
  // their shards); otherwise it was reused or attached.
  bool created = false;
};

// A declaration batch checked and placed but not registered yet
// (Registry::PrepareDeclare); CommitDeclare registers it.
struct PreparedDeclaration {
  std::vector<DeclareResult> results;
  // A retry of a request applied before: `results` is its answer and there
  // is nothing to commit (nor parts to create).
  bool replayed = false;
  uint64_t session = 0;
  uint64_t request_seq = 0;
  // The record CommitDeclare logs; unset when the batch only reuses
  // variables the session declared already.
  std::optional<RegistryRecord> record;
  // The existing variables the batch attached to or depends on (sources,
  // colocation primaries), by name, with their creation_seq when prepared
  // (0: absent); CommitDeclare checks that they are unchanged.
  std::map<std::string, uint64_t> observed;
};

// A replicated group (docs/replication.md): a part of a variable with
// replication above 1 and the parts colocated beside it on its shard (its
// slots), which move, are backed up and fail over together. Every part of
// a group has the same primary, epoch and backups.
struct ReplicaGroup {
  std::vector<std::string> parts;  // the primary variable's part first
  int32_t primary = 0;             // its shard
  uint64_t epoch = 0;
  int32_t replication = 1;
  std::vector<ReplicaRecord> backups;
};

struct ScopeEntry {
  std::string path;    // the scope's full name
  uint64_t token = 0;  // non-zero for a captured scope: give it to CloseScope
};

// Bytes and parts placed on one shard.
struct ShardPlacement {
  int64_t parts = 0;
  int64_t bytes = 0;
};

class Registry {
 public:
  // Recovers the state from `options.state_dir` (if set).
  static absl::StatusOr<std::unique_ptr<Registry>> Open(const RegistryOptions& options);
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Sessions. Ids are never reused.
  absl::StatusOr<uint64_t> OpenSession(const std::string& client);
  // Drops the session's names and counters; variables stay.
  absl::Status CloseSession(uint64_t session);
  bool HasSession(uint64_t session) const;

  // Exactly-once retries: the calls that change a session's state take the
  // request's `request_seq` (0: untagged). A retry of a request that was
  // applied gets the first answer again, rebuilt from what the registry
  // recorded with it (so also after a coordinator restart); a seq older
  // than the latest kReplyWindow recorded ones is ABORTED "too old".
  static constexpr int kReplyWindow = 256;

  // get_variable. New variables are placed on `live_shards` (UNAVAILABLE if
  // there is none).
  absl::StatusOr<DeclareResult> GetVariable(uint64_t session, const VariableDeclaration& decl,
                                            absl::Span<const int32_t> live_shards,
                                            uint64_t request_seq = 0);
  // Many get_variable calls applied atomically, in order: all or none. A
  // later declaration sees the effect of earlier ones.
  absl::StatusOr<std::vector<DeclareResult>> Declare(uint64_t session,
                                                     absl::Span<const VariableDeclaration> decls,
                                                     absl::Span<const int32_t> live_shards,
                                                     uint64_t request_seq = 0);

  // Declare in two steps, so the caller can create the new variables'
  // parts on their shards in between and register nothing if that fails:
  // PrepareDeclare checks and places the batch (every name, shape, dtype,
  // partitioning and initializer, as the shards will check them) without
  // changing anything; CommitDeclare logs and applies it. CommitDeclare is
  // ABORTED if what the batch was checked against changed in between (one
  // of its new names, or a part name of them, was declared; a variable it
  // attached to, initializes from or is colocated with was deleted or
  // declared again) and NOT_FOUND if the session closed; the caller then
  // undoes what it created. Declarations of other names may commit in
  // between (their placement then did not count the batch's bytes).
  absl::StatusOr<PreparedDeclaration> PrepareDeclare(uint64_t session,
                                                     absl::Span<const VariableDeclaration> decls,
                                                     absl::Span<const int32_t> live_shards,
                                                     uint64_t request_seq = 0);
  absl::Status CommitDeclare(const PreparedDeclaration& prepared);

  absl::StatusOr<VariableDef> Lookup(const std::string& name) const;
  // Variables in `collection` ("" = all) in creation order.
  std::vector<VariableDef> List(const std::string& collection) const;
  // Removes the variable (and the name from every session); returns it so
  // the caller can delete its parts on the shards. Deleting an embedding
  // table deletes its slot tables too (see DeleteWithSlots).
  absl::StatusOr<VariableDef> Delete(const std::string& name);
  // Delete, returning every variable removed: an embedding table's slot
  // tables (EmbeddingSpec.slot_of naming it) first, then the table. A slot
  // keeps its rows in its primary's parts and has no keys of its own, so it
  // cannot outlive the primary (DeepRec's slot EmbeddingVariables share the
  // primary's storage the same way); one record per variable, all logged
  // under one hold of the lock, so no declaration sees a slot without its
  // primary.
  absl::StatusOr<std::vector<VariableDef>> DeleteWithSlots(const std::string& name);

  // variable_scope entry. Exactly one of `name` and `default_name` is set.
  //  * name: the scope `parent_path/name`; a captured VariableScope object
  //    is re-entered with `captured` and its full path as `name`.
  //  * default_name: a unique name under `parent_path` (`layer`,
  //    `layer_1`, ...); `reuse` must be false.
  // Invalid scope names are INVALID_ARGUMENT ("'_' is not a valid scope
  // name").
  absl::StatusOr<ScopeEntry> OpenScope(uint64_t session, const std::string& parent_path,
                                       const std::string& name, const std::string& default_name,
                                       bool reuse, bool captured, uint64_t request_seq = 0);
  // Scope exit: a named scope resets the counters of its sub-scopes; a
  // captured one (token != 0) restores the counters saved when it opened.
  absl::Status CloseScope(uint64_t session, const std::string& path, uint64_t token,
                          uint64_t request_seq = 0);
  // Graph.unique_name for default variable names: "Variable", then
  // "Variable_1", ...; `name` carries the client's name-scope prefix.
  absl::StatusOr<std::string> UniqueName(uint64_t session, const std::string& name,
                                         bool mark_as_used, uint64_t request_seq = 0);

  // The free memory (limit minus used) of the shards that have a memory
  // limit, as they last reported it: embedding tables' parts are placed by
  // room (PlacePartsByRoom) among the live shards. Replaces what was noted
  // before; shards absent have no limit.
  void NoteShardFreeBytes(std::map<int32_t, int64_t> free_bytes);

  // Placed parts and bytes per shard id.
  std::map<int32_t, ShardPlacement> Placement() const;
  // Names of the parts placed on `shard_id`.
  std::vector<std::string> PartsOnShard(int32_t shard_id) const;
  size_t num_variables() const;
  size_t num_sessions() const;
  std::vector<uint64_t> SessionIds() const;  // in increasing order

  // Live part moves (docs/moves.md), each step durable when it returns.
  // BeginMove records a move of `move.parts` (part names) from
  // move.source_shard to move.target_shard: FAILED_PRECONDITION unless
  // every part exists, is placed on the source, and is in no other
  // unfinished move. CommitMove switches the parts' placement to the
  // target (handles show it from then on); FinishMove forgets the move.
  // A coordinator that restarts finds unfinished moves in PendingMoves.
  absl::Status BeginMove(const PartMoveRecord& move);
  absl::Status CommitMove(uint64_t move_id);
  absl::Status FinishMove(uint64_t move_id);
  std::vector<PartMoveRecord> PendingMoves() const;
  // Replicated groups (docs/replication.md), each step durable when it
  // returns; handles show it only once it is.
  //
  // AddReplica records `backup` (its shard and follow move id, not in sync)
  // for every part of `parts`, one group: FAILED_PRECONDITION unless every
  // part exists, they share a primary and epoch, their variables have
  // replication above 1 and fewer than replication-1 backups, the backup's
  // shard is neither the primary's nor another backup's, no part is in an
  // unfinished move, and the move id is nonzero and new.
  absl::Status AddReplica(const std::vector<std::string>& parts, const ReplicaRecord& backup);
  // The backup `move_id` joins (true) or leaves the group's in-sync set.
  // NOT_FOUND if no part has it; joining is FAILED_PRECONDITION once its
  // primary reported it behind (ReportReplicaBehind): that primary no
  // longer waits for it.
  absl::Status SetReplicaInSync(uint64_t move_id, bool in_sync);
  // Primary `shard_id` reports backup `move_id` behind (the ReplicaBehind
  // call): OK means it may answer writes without that backup. Only the
  // group's current primary is heard (FAILED_PRECONDITION naming the shard
  // and the move otherwise: a deposed primary must not answer a write it
  // could not replicate). The backup leaves the in-sync set (durable
  // before OK), and one not in it yet can never join it (SetReplicaInSync
  // refuses; the keeper drops it and makes another). A move no part has
  // is OK only while `shard_id` is still the primary of the group it
  // belonged to (remembered for the last kMaxRetiredBackups backups
  // dropped or failed over), or, for one not remembered, of some
  // replicated group.
  absl::Status ReportReplicaBehind(int32_t shard_id, uint64_t move_id);
  // Forgets the backup `move_id` on every part (OK if none has it).
  absl::Status DropReplica(uint64_t move_id);
  // The in-sync backup `move_id`, on `new_primary`, serves `parts` from now
  // on under `epoch` (the group's epoch + 1); the other backups are
  // dropped. FAILED_PRECONDITION unless every part of the group has that
  // backup in sync on that shard and the epoch is the next one.
  absl::Status FailOver(const std::vector<std::string>& parts, int32_t new_primary,
                        uint64_t move_id, uint64_t epoch);
  // Every replicated group, in creation order of their variables.
  std::vector<ReplicaGroup> ReplicaGroups() const;
  // The parts `shard_id` holds a backup of.
  std::vector<std::string> BackupPartsOnShard(int32_t shard_id) const;

  // Drained shards (psctl shard drain): nothing new is placed on them.
  // Durable when SetDrained returns.
  absl::Status SetDrained(int32_t shard_id, bool drained);
  std::set<int32_t> DrainedShards() const;
  // The variable a part name (or an unpartitioned variable's name) belongs
  // to, or NOT_FOUND.
  absl::StatusOr<VariableDef> VariableOfPart(const std::string& part) const;

  // Writes a snapshot and starts an empty log now (normally automatic).
  absl::Status Compact();
  // The result of the last automatic compaction (OK before the first): a
  // state over max_state_bytes cannot be compacted, and its log grows.
  absl::Status compaction_status() const;

  // INVALID_ARGUMENT (naming both variables) unless `def`, initialized from
  // `source` (its FromVariable initializer), can hold the source's value:
  // the same dtype, shape and part shapes, and a scale and offset its dtype
  // supports. The part of the declaration check that needs no registry
  // (a restore also checks a checkpoint's variables with it).
  static absl::Status CheckFromVariableFits(const VariableDef& def, const VariableDef& source);

 private:
  struct Txn;

  explicit Registry(const RegistryOptions& options)
      : options_(options), compact_at_(options.compact_log_bytes) {}

  absl::StatusOr<SessionState*> FindSession(uint64_t session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<PreparedDeclaration> PrepareDeclareLocked(
      uint64_t session, absl::Span<const VariableDeclaration> decls,
      absl::Span<const int32_t> live_shards, uint64_t request_seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The recorded answer to `request_seq` of `session` if it is a retry of an
  // applied request, nullptr for a new one, ABORTED if it is too old to tell.
  static absl::StatusOr<const SessionReply*> FindReply(const SessionState& session,
                                                       uint64_t request_seq);
  // Keeps `reply` (if tagged) for the session's retries, within the window.
  static void RememberReply(const SessionReply& reply, SessionState* session);
  absl::StatusOr<DeclareResult> DeclareOne(const SessionState& session,
                                           const VariableDeclaration& decl, Txn* txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<VariableDef> ResolveNew(uint64_t session, const VariableDeclaration& decl,
                                         Txn* txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Embedding tables (registry_declare_table.cc). DeclareTable is DeclareOne
  // for a declaration of a table or of an existing table's name;
  // ResolveNewTable is ResolveNew for a table.
  absl::StatusOr<DeclareResult> DeclareTable(const SessionState& session,
                                             const VariableDeclaration& decl,
                                             const VariableDef* existing, bool in_session, Txn* txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<VariableDef> ResolveNewTable(uint64_t session, const VariableDeclaration& decl,
                                              Txn* txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The replication factor of a new variable (docs/replication.md): the
  // declared one, else the cluster's; one beside a primary (colocate_with,
  // embedding.slot_of: `primary_name`) takes the primary's. INVALID_ARGUMENT
  // for a declared factor that differs from its primary's;
  // FAILED_PRECONDITION past the live, undrained shards (txn.load).
  absl::StatusOr<int32_t> ResolveReplication(const VariableDeclaration& decl,
                                             const std::string& primary_name, const Txn& txn) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The variable `name` as declared before `txn` or earlier in it; null if
  // there is none.
  const VariableDef* FindDeclared(const std::string& name, const Txn& txn) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // INVALID_ARGUMENT (naming both variables) unless `def`'s FromVariable
  // initializer names a declared variable other than itself, of the same
  // dtype, shape and part shapes, with no cycle, and a scale and offset
  // its dtype supports.
  absl::Status ValidateFromVariable(const VariableDef& def, const Txn& txn) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The shard of each part of `name` declared with colocate_with
  // `primary_name` (see VariableDeclaration.colocate_with); adds the parts'
  // bytes to the transaction's load.
  absl::StatusOr<std::vector<int32_t>> ColocatedShards(const std::string& name,
                                                       const std::string& primary_name,
                                                       const std::vector<int64_t>& part_bytes,
                                                       Txn* txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives each part of `def` (declared beside `primary_name`) the epoch of
  // the primary's part it sits beside: a part joins that part's replica
  // group, whose records (replica_added, failover) need one epoch across
  // the group.
  void TakeGroupEpochs(VariableDef* def, const std::string& primary_name, const Txn& txn) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Logs `record` (assigning its seq) and applies it. With `sync` the
  // record must be durable before it is acknowledged: returns its seq, to
  // give to WaitDurable once mu_ is released; else returns 0. Once the log
  // is over compact_log_bytes it takes the snapshot for a compaction, which
  // the caller runs after releasing mu_ (Committed).
  absl::StatusOr<uint64_t> Commit(RegistryRecord* record, bool sync)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Acknowledged() for a mutation: first runs a compaction Commit made due.
  template <typename T>
  T Committed(T answer, uint64_t wait_for) ABSL_LOCKS_EXCLUDED(mu_, sync_mu_);
  // Publishes `snapshot` and moves the log to a new file holding only the
  // records after it, with every write and sync outside mu_ (see
  // RegistryLog::StartCompaction); StartCompaction was called under mu_
  // when `snapshot` was taken. A failure leaves the old log in use.
  absl::Status RunCompaction(const RegistrySnapshot& snapshot) ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until the record `seq` (and so every earlier one) is durable,
  // syncing the log itself unless another caller's sync will cover it.
  // OK at once for 0 or without a state directory; the sync's error if it
  // fails (see on_log_failure).
  absl::Status WaitDurable(uint64_t seq) const ABSL_LOCKS_EXCLUDED(mu_, sync_mu_);
  // `answer`, once `wait_for` is durable; WaitDurable's error if it fails.
  template <typename T>
  T Acknowledged(T answer, uint64_t wait_for) const ABSL_LOCKS_EXCLUDED(mu_, sync_mu_);
  // Every record up to `seq` is durable (a sync or a snapshot covered it).
  void MarkDurable(uint64_t seq) ABSL_LOCKS_EXCLUDED(sync_mu_);
  uint64_t durable_seq() const ABSL_LOCKS_EXCLUDED(sync_mu_);
  // The last declaration or deletion not known durable of `name`; 0 if none.
  uint64_t PendingSeqOf(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fills prepared->observed (see PreparedDeclaration).
  void NoteObserved(PreparedDeclaration* prepared) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ABORTED unless what `prepared` was checked against still holds.
  absl::Status CheckStillHolds(const PreparedDeclaration& prepared) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> CommitDeclareLocked(const PreparedDeclaration& prepared)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Apply(const RegistryRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Apply of the move records (registry_move.cc); a committed move also
  // sets moved_variables_ (the variables whose placement it changed).
  void ApplyMove(const RegistryRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Apply of the replica records (registry_replica.cc); sets
  // moved_variables_ to the variables whose parts it changed.
  void ApplyReplica(const RegistryRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The part named `name` (a part name, or an unpartitioned variable's
  // name) and its variable; nulls if there is none.
  std::pair<VariableDef*, VariablePart*> FindPart(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddVariable(const VariableDef& def) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  RegistrySnapshot MakeSnapshot() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RegistryOptions options_;
  mutable absl::Mutex mu_;
  std::unique_ptr<RegistryLog> log_ ABSL_GUARDED_BY(mu_);  // null without state_dir
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_session_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_creation_seq_ ABSL_GUARDED_BY(mu_) = 1;
  // A compaction is running (one at a time); one whose snapshot is taken
  // and that the next mutation's caller runs.
  bool compacting_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<RegistrySnapshot> compaction_due_ ABSL_GUARDED_BY(mu_);
  // The log size that triggers the next automatic compaction, and how the
  // last one went.
  int64_t compact_at_ ABSL_GUARDED_BY(mu_);
  absl::Status compaction_status_ ABSL_GUARDED_BY(mu_);
  // The seq of the last record acknowledged only once durable
  // (declarations, deletions, session open/close): what answers that may
  // reflect any of them wait for.
  uint64_t ack_seq_ ABSL_GUARDED_BY(mu_) = 0;
  // Names declared or deleted by records not known durable yet -> the last
  // such record's seq, and the same in log order for pruning; what a Lookup
  // waits for.
  // Mutable: lookups prune what became durable.
  mutable std::map<std::string, uint64_t> pending_names_ ABSL_GUARDED_BY(mu_);
  mutable std::deque<std::pair<uint64_t, std::string>> pending_order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, VariableDef> variables_ ABSL_GUARDED_BY(mu_);
  // Every name a shard knows (part names; an unpartitioned variable's own
  // name) -> the variable it belongs to. Keeps "v/part_0" from naming two
  // things.
  std::map<std::string, std::string> part_owner_ ABSL_GUARDED_BY(mu_);
  std::map<int32_t, ShardPlacement> placement_ ABSL_GUARDED_BY(mu_);
  std::map<int32_t, int64_t> shard_free_bytes_ ABSL_GUARDED_BY(mu_);  // NoteShardFreeBytes
  std::map<uint64_t, SessionState> sessions_ ABSL_GUARDED_BY(mu_);
  // Unfinished part moves by id.
  std::map<uint64_t, PartMoveRecord> moves_ ABSL_GUARDED_BY(mu_);
  // The variables the last applied move_committed record moved parts of.
  std::vector<std::string> moved_variables_ ABSL_GUARDED_BY(mu_);
  std::set<int32_t> drained_ ABSL_GUARDED_BY(mu_);
  // Backups their primary reported behind (ReportReplicaBehind): they never
  // join the in-sync set. In memory: a restarted coordinator drops every
  // backup not in sync.
  std::set<uint64_t> behind_ ABSL_GUARDED_BY(mu_);
  // Backups no part has any longer (dropped, or their group failed over)
  // -> a part of the group they belonged to, the last kMaxRetiredBackups
  // in order (what ReportReplicaBehind judges an unknown move by).
  std::map<uint64_t, std::string> retired_backups_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> retired_order_ ABSL_GUARDED_BY(mu_);

  // Group commit (see WaitDurable). Taken after mu_ or alone; never held
  // across a sync.
  mutable absl::Mutex sync_mu_ ABSL_ACQUIRED_AFTER(mu_);
  // Every record with seq <= durable_seq_ is on stable storage.
  // (Mutable: a read waits for, and may itself run, the sync.)
  mutable uint64_t durable_seq_ ABSL_GUARDED_BY(sync_mu_) = 0;
  // A caller is syncing the log now; the others wait for it.
  mutable bool syncing_ ABSL_GUARDED_BY(sync_mu_) = false;
  // Set by a failed sync: every later wait for a record not durable fails.
  mutable absl::Status log_failure_ ABSL_GUARDED_BY(sync_mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_REGISTRY_H_
