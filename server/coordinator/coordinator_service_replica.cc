// CoordinatorService (coordinator_service.h): the replica keeper of
// replicated groups (docs/replication.md). The coordinator orders every
// step and records each in its registry (fsync) before acting on it; the
// data goes shard to shard (a backup is a follow: proto ShardMove's
// StartMoveIn with `follow`).
//
// What each step records, in order:
//  - a new backup: replica_added (not in sync) -> StartMoveIn(follow) on its
//    shard -> [it copies and forwards, close behind] -> SyncReplica(in_sync)
//    on the primary -> [the backup applied the primary's logged_seq] ->
//    replica_in_sync(true). Any failure: EndMove(false) on both, then
//    replica_dropped.
//  - a backup out of use (its shard down or restarted, its follow failed,
//    behind): replica_in_sync(false) if it was in, EndMove(false) on both,
//    replica_dropped. The keeper then makes another.
//  - a failover (the primary's shard down with its lease certainly
//    expired, or back as a new process without the parts): failover (new
//    primary, epoch + 1, the other backups dropped) -> PromoteReplica on
//    the new primary -> EndMove(false) to the other backups.
#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "boost/asio/post.hpp"
#include "coordinator/coordinator_service.h"
#include "coordinator/move_calls.h"
#include "coordinator/placement.h"
#include "psd/grpc_status.h"
#include "psd/random_id.h"
#include "psd/status.h"
#include "spdlog/spdlog.h"

namespace psd {

using move_calls::CallMove;
using move_calls::MovedPartCreate;

namespace {

// A backup is told to count in the in-sync set once it is this close
// behind its primary (logged writes not yet applied), as a move freezes
// its source (coordinator_service_move.cc).
constexpr uint64_t kBackupCaughtUpWrites = 16;
// How long a backup's copy may take before it is given up.
constexpr absl::Duration kMaxBackupCopyTime = absl::Hours(1);
// How long the keeper waits for a backup to apply what its primary had
// logged when it began waiting for it.
constexpr absl::Duration kMaxBackupSyncTime = absl::Seconds(60);
// How long one MoveStatus call may wait for news.
constexpr int kStatusWaitMs = 200;
// After a failed backup, the group's next one waits this long, doubled at
// each failure in a row up to the cap (a shard that keeps refusing is not
// asked again every pass).
constexpr absl::Duration kFirstRetryPause = absl::Seconds(1);
constexpr absl::Duration kMaxRetryPause = absl::Seconds(30);

std::string BackupName(const ReplicaGroup& g, uint64_t move_id, int32_t shard) {
  return absl::StrCat("backup ", absl::Hex(move_id), " of ", g.parts[0], " (", g.parts.size(),
                      " parts) on shard ", shard);
}

}  // namespace

CoordinatorService::ReplicaPause::~ReplicaPause() {
  {
    absl::MutexLock lock(&service_->mu_);
    for (const std::string& g : groups_) {
      auto it = service_->replica_busy_.find(g);
      if (it != service_->replica_busy_.end() && --it->second <= 0) {
        service_->replica_busy_.erase(it);
      }
    }
  }
  service_->WakeKeeper();
}

void CoordinatorService::WakeKeeper() {
  absl::MutexLock lock(&keeper_mu_);
  keeper_wake_ = true;
}

void CoordinatorService::KeeperLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&keeper_mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(keeper_mu_) {
        return keeper_stop_ || keeper_wake_;
      };
      keeper_mu_.AwaitWithTimeout(absl::Condition(&woken), options_.replica_keeper_interval);
      if (keeper_stop_) return;
      keeper_wake_ = false;
    }
    if (draining()) continue;
    KeepReplicas();
  }
}

CoordinatorService::ReplicaStats CoordinatorService::replica_stats() const {
  absl::MutexLock lock(&mu_);
  return replica_stats_;
}

int CoordinatorService::replica_adds_running() const {
  absl::MutexLock lock(&mu_);
  return replica_adds_;
}

void CoordinatorService::KeepReplicas() {
  const std::vector<ReplicaGroup> groups = registry_->ReplicaGroups();
  if (groups.empty()) {
    absl::MutexLock lock(&mu_);
    replica_stats_.under_replicated_groups = 0;
    return;
  }
  // 0. Failovers whose promotion failed: retried before anything else
  //    touches their groups (they are left alone until it succeeds).
  RetryPromotions(groups);
  std::set<std::string> moving;
  for (const PartMoveRecord& m : registry_->PendingMoves()) {
    moving.insert(m.parts().begin(), m.parts().end());
  }
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, p] : promoting_) moving.insert(name);
  }
  const std::vector<int32_t> live_list = LiveShards();
  const std::set<int32_t> live(live_list.begin(), live_list.end());
  struct ShardView {
    uint64_t incarnation = 0;
    std::set<std::string> lost;
  };
  std::map<int32_t, ShardView> shards;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : shards_) shards[id] = {e.incarnation, e.lost_parts};
  }
  // A shard not registered since this coordinator started counts as down
  // only once it had the liveness timeout to register (shards register
  // again at their next heartbeat after a coordinator restart).
  const bool registration_due = std::chrono::steady_clock::now() >
                                started_ + absl::ToChronoNanoseconds(options_.liveness_timeout);
  auto lost_primary = [&](const ReplicaGroup& g) {
    auto it = shards.find(g.primary);
    if (it == shards.end()) return registration_due;
    return live.count(g.primary) == 0 || it->second.lost.count(g.parts[0]) > 0;
  };

  // 1. Failovers: a group whose primary is lost. Those with no in-sync
  //    backup are lost parts as with replication 1 (restored from a
  //    checkpoint when the shard comes back).
  std::set<int32_t> still_failing;
  for (const ReplicaGroup& g : groups) {
    if (!lost_primary(g) || moving.count(g.parts[0]) > 0) continue;
    bool promotable = false;
    for (const ReplicaRecord& b : g.backups)
      promotable = promotable || (b.in_sync() && live.count(b.shard_id()) > 0);
    if (!promotable) continue;
    const bool down = live.count(g.primary) == 0;
    bool lease_held = false;
    {
      absl::MutexLock lock(&mu_);
      primary_lost_at_.emplace(g.parts[0], absl::Now());
      auto it = shards_.find(g.primary);
      if (down && it != shards_.end()) {
        // Its heartbeats renew no lease from now on: it must register
        // again (refused until the failover is over), and hears then which
        // parts to drop. Fenced and checked under mu_, as a registration
        // checks the fence before it grants a lease.
        fenced_.insert({g.primary, it->second.incarnation});
        failing_over_.insert(g.primary);
        // A primary down (not restarted) may still serve until its lease
        // has certainly expired; one back as a new process holds nothing.
        lease_held = std::chrono::steady_clock::now() < LeaseEnd(it->second);
      } else if (it == shards_.end()) {
        // Not registered since this coordinator started: its predecessor
        // may have granted a lease.
        failing_over_.insert(g.primary);
        lease_held = std::chrono::steady_clock::now() <
                     started_ + absl::ToChronoNanoseconds(options_.lease_period * 1.01 +
                                                          absl::Milliseconds(100));
      }
    }
    if (lease_held) {
      still_failing.insert(g.primary);
      continue;
    }
    absl::Status failed_over = FailOverGroup(g);
    if (!failed_over.ok()) {
      spdlog::warn("replicas: failover of {} off shard {}: {}", g.parts[0], g.primary,
                   failed_over.ToString());
      still_failing.insert(g.primary);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    for (auto it = failing_over_.begin(); it != failing_over_.end();) {
      it = still_failing.count(*it) > 0 ? std::next(it) : failing_over_.erase(it);
    }
  }

  // 2. Backups out of use, and 3. groups short of backups.
  const std::vector<ReplicaGroup> now = registry_->ReplicaGroups();
  int64_t under = 0;
  for (const ReplicaGroup& g : now) {
    if (static_cast<int>(g.backups.size()) < g.replication - 1 ||
        std::any_of(g.backups.begin(), g.backups.end(),
                    [](const ReplicaRecord& b) { return !b.in_sync(); })) {
      ++under;
    }
    if (lost_primary(g) || moving.count(g.parts[0]) > 0) continue;
    {
      absl::MutexLock lock(&mu_);
      primary_lost_at_.erase(g.parts[0]);  // back (or restored) without a failover
      // A group failed over (perhaps in this pass) whose new primary does
      // not serve yet gets no backup: it would follow a backup.
      if (replica_busy_.count(g.parts[0]) > 0 || promoting_.count(g.parts[0]) > 0) continue;
    }
    int kept = 0;
    for (const ReplicaRecord& b : g.backups) {
      std::string why;
      auto shard = shards.find(b.shard_id());
      uint64_t made_on = 0;
      {
        absl::MutexLock lock(&mu_);
        auto it = backup_incarnation_.find(b.move_id());
        if (it != backup_incarnation_.end()) made_on = it->second;
      }
      if (!b.in_sync()) {
        why = "it is not in the in-sync set (behind, or its copy was interrupted)";
      } else if (live.count(b.shard_id()) == 0 || shard == shards.end()) {
        why = "its shard is down";
      } else if (made_on != 0 && shard->second.incarnation != made_on) {
        why = "its shard restarted";
      } else if (made_on == 0) {
        // Made before this coordinator started: asked once whether its
        // shard still follows (a shard that restarted meanwhile does not).
        why = CheckFollow(b, shard->second.incarnation);
      }
      if (why.empty()) {
        ++kept;
        continue;
      }
      DropBackup(g, b, why).IgnoreError();
    }
    if (kept >= g.replication - 1) continue;
    {
      absl::MutexLock lock(&mu_);
      if (replica_busy_.count(g.parts[0]) > 0 || promoting_.count(g.parts[0]) > 0) continue;
      auto retry = replica_retry_.find(g.parts[0]);
      if (retry != replica_retry_.end() && absl::Now() < retry->second.first) continue;
      replica_busy_[g.parts[0]] += 1;
      ++replica_adds_;
    }
    boost::asio::post(workers_, [this, g] {
      AddBackup(g);
      {
        absl::MutexLock lock(&mu_);
        auto it = replica_busy_.find(g.parts[0]);
        if (it != replica_busy_.end() && --it->second <= 0) replica_busy_.erase(it);
        --replica_adds_;
      }
      WakeKeeper();
    });
  }
  absl::MutexLock lock(&mu_);
  replica_stats_.under_replicated_groups = under;
}

absl::Status CoordinatorService::EndFollow(uint64_t move_id, const std::vector<int32_t>& shards) {
  absl::Status first;
  for (int32_t shard : shards) {
    // Only live shards are called: one that is down (perhaps cut off, where
    // a call would wait for its deadline and hold up the keeper's
    // failovers) hears it as drop_parts when it registers again.
    absl::StatusOr<ShardAddress> at = LiveShardAddress(shard);
    if (!at.ok()) {
      if (first.ok()) first = at.status();
      continue;
    }
    EndMoveRequest req;
    req.set_move_id(move_id);
    req.set_committed(false);
    EndMoveResponse resp;
    absl::Status s = CallMove(ShardMove::NewStub(ChannelFor(at->address)).get(),
                              &ShardMove::Stub::EndMove, req, &resp, options_.shard_rpc_timeout);
    if (!s.ok() && first.ok()) {
      first = absl::Status(s.code(), absl::StrCat("shard ", shard, ": ", s.message()));
    }
  }
  return first;
}

std::string CoordinatorService::CheckFollow(const ReplicaRecord& backup, uint64_t incarnation) {
  std::string address;
  {
    absl::MutexLock lock(&mu_);
    auto it = shards_.find(backup.shard_id());
    if (it == shards_.end()) return "its shard is not registered";
    address = it->second.address;
  }
  MoveStatusRequest req;
  req.set_move_id(backup.move_id());
  req.set_wait_ms(0);
  MoveStatusResponse status;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  const absl::Status asked =
      FromGrpcStatus(ShardMove::NewStub(ChannelFor(address))->MoveStatus(&ctx, req, &status));
  if (absl::IsNotFound(asked)) return "its shard does not know its follow (restarted)";
  if (!asked.ok()) return "";  // asked again at the next pass
  if (status.phase() == MOVE_FAILED) return absl::StrCat("its follow failed: ", status.message());
  absl::MutexLock lock(&mu_);
  backup_incarnation_[backup.move_id()] = incarnation;
  return "";
}

absl::Status CoordinatorService::DropBackup(const ReplicaGroup& group, const ReplicaRecord& backup,
                                            const std::string& why) {
  const std::string what = BackupName(group, backup.move_id(), backup.shard_id());
  spdlog::info("replicas: dropping {}: {}", what, why);
  // Out of the in-sync set first: once the primary stops waiting for it,
  // it must no longer be promotable.
  if (backup.in_sync()) PSD_RETURN_IF_ERROR(registry_->SetReplicaInSync(backup.move_id(), false));
  absl::Status ended = EndFollow(backup.move_id(), {backup.shard_id(), group.primary});
  if (!ended.ok()) {
    // A shard that is down drops the parts when it registers (drop_parts).
    spdlog::info("replicas: {}: not every shard heard the end ({})", what, ended.ToString());
  }
  {
    absl::MutexLock lock(&mu_);
    backup_incarnation_.erase(backup.move_id());
  }
  return registry_->DropReplica(backup.move_id());
}

void CoordinatorService::AddBackup(const ReplicaGroup& group) {
  const int32_t primary = group.primary;
  absl::StatusOr<ShardAddress> source = LiveShardAddress(primary);
  if (!source.ok()) return;
  // Only an initialized primary has something to copy (a part waiting for
  // its client's value, or for its ordered initialization, has not).
  {
    ListVariablesResponse listed;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.shard_rpc_timeout));
    absl::Status got = FromGrpcStatus(
        StubFor(source->address)->ListVariables(&ctx, ListVariablesRequest(), &listed));
    if (!got.ok()) return;
    bool initialized = false;
    for (const VariableInfo& info : listed.variables()) {
      if (info.name() == group.parts[0]) initialized = info.initialized();
    }
    if (!initialized) return;
  }
  // Where: a live, undrained shard of the primary's device kind, neither
  // the primary nor a backup already, on a host holding no replica while
  // there is one (PlaceBackups), the least loaded.
  const std::set<int32_t> drained = registry_->DrainedShards();
  const auto placement = registry_->Placement();
  const std::vector<int32_t> live = LiveShards();
  std::set<int32_t> taken = {primary};
  for (const ReplicaRecord& b : group.backups) taken.insert(b.shard_id());
  ShardLoad load;
  std::map<int32_t, std::string> hosts;
  {
    absl::MutexLock lock(&mu_);
    const std::string device = shards_.count(primary) > 0 ? shards_.at(primary).device : "";
    std::set<std::string> replica_hosts;
    for (int32_t id : taken) {
      auto it = shards_.find(id);
      if (it != shards_.end() && !it->second.host.empty()) replica_hosts.insert(it->second.host);
    }
    const std::string primary_host = shards_.count(primary) > 0 ? shards_.at(primary).host : "";
    for (int32_t id : live) {
      auto it = shards_.find(id);
      if (it == shards_.end() || taken.count(id) > 0 || drained.count(id) > 0 ||
          it->second.device != device) {
        continue;
      }
      auto p = placement.find(id);
      load[id] = p == placement.end() ? 0 : p->second.bytes;
      // A host holding a backup already counts as the primary's: used.
      hosts[id] =
          replica_hosts.count(it->second.host) > 0 ? std::string("#primary") : it->second.host;
    }
    hosts[primary] = "#primary";
  }
  absl::StatusOr<std::vector<int32_t>> chosen = PlaceBackups(primary, 0, 1, hosts, &load);
  if (!chosen.ok() || chosen->empty()) {
    spdlog::debug("replicas: no shard for a backup of {}: {}", group.parts[0],
                  chosen.status().ToString());
    return;
  }
  const int32_t target_shard = (*chosen)[0];
  absl::StatusOr<ShardAddress> target = LiveShardAddress(target_shard);
  if (!target.ok()) return;

  // The group's parts as the backup creates them.
  std::vector<CreateVariableRequest> parts;
  for (const std::string& name : group.parts) {
    absl::StatusOr<VariableDef> def = registry_->VariableOfPart(name);
    if (!def.ok()) return;
    int k = 0;
    while (k < def->parts_size() && def->parts(k).name() != name) ++k;
    if (k == def->parts_size()) return;
    parts.push_back(MovedPartCreate(*def, k, group.parts[0]));
  }

  ReplicaRecord backup;
  backup.set_shard_id(target_shard);
  backup.set_move_id(RandomNonzeroId());
  const std::string what = BackupName(group, backup.move_id(), target_shard);
  // 1. Recorded before any shard hears of it: a coordinator that restarts
  //    finds it (not in sync) and drops it.
  if (absl::Status added = registry_->AddReplica(group.parts, backup); !added.ok()) {
    spdlog::info("replicas: {} not begun: {}", what, added.ToString());
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    backup_incarnation_[backup.move_id()] = target->incarnation;
  }
  const absl::Time start = absl::Now();
  auto give_up = [&](const absl::Status& why) {
    absl::Duration pause;
    {
      absl::MutexLock lock(&mu_);
      auto& [at, last] = replica_retry_[group.parts[0]];
      pause = last == absl::ZeroDuration() ? kFirstRetryPause : std::min(2 * last, kMaxRetryPause);
      last = pause;
      at = absl::Now() + pause;
    }
    spdlog::warn("replicas: {} failed (the next try in {}): {}", what, absl::FormatDuration(pause),
                 why.ToString());
    ReplicaGroup now = group;
    DropBackup(now, backup, why.ToString()).IgnoreError();
  };
  auto source_stub = ShardMove::NewStub(ChannelFor(source->address));
  auto target_stub = ShardMove::NewStub(ChannelFor(target->address));
  // 2. The backup creates the parts and follows the primary.
  {
    StartMoveInRequest req;
    req.set_move_id(backup.move_id());
    req.set_source_address(source->address);
    req.set_source_incarnation(source->incarnation);
    req.set_source_shard_id(primary);
    req.set_shard_incarnation(target->incarnation);
    req.set_follow(true);
    req.set_epoch(group.epoch);
    for (const CreateVariableRequest& c : parts) *req.add_parts() = c;
    StartMoveInResponse resp;
    absl::Status started = CallMove(target_stub.get(), &ShardMove::Stub::StartMoveIn, req, &resp,
                                    options_.shard_rpc_timeout);
    if (!started.ok()) return give_up(started);
  }
  MoveStatusResponse status;
  // Polls the backup until `done`, a failure, either shard down or
  // restarted, or `limit` since `since`.
  auto await_backup = [&](absl::Time since, absl::Duration limit, absl::string_view step,
                          auto done) -> absl::Status {
    for (;;) {
      MoveStatusRequest req;
      req.set_move_id(backup.move_id());
      req.set_wait_ms(kStatusWaitMs);
      PSD_RETURN_IF_ERROR(CallMove(target_stub.get(), &ShardMove::Stub::MoveStatus, req, &status,
                                   options_.shard_rpc_timeout));
      if (status.phase() == MOVE_FAILED) {
        return absl::Status(static_cast<absl::StatusCode>(status.code()), status.message());
      }
      if (done()) return absl::OkStatus();
      for (const auto& [id, was] : {std::pair{primary, source->incarnation},
                                    std::pair{target_shard, target->incarnation}}) {
        absl::StatusOr<ShardAddress> now = LiveShardAddress(id);
        if (!now.ok()) return now.status();
        if (now->incarnation != was) {
          return absl::AbortedError(absl::StrCat("shard ", id, " restarted"));
        }
      }
      if (absl::Now() - since > limit) {
        return absl::DeadlineExceededError(
            absl::StrCat(step, " took longer than ", absl::FormatDuration(limit)));
      }
      if (draining()) return absl::UnavailableError("the coordinator is stopping");
      // Polls that return at once (a shard that does not wait) are spaced.
      absl::SleepFor(absl::Milliseconds(10));
    }
  };
  // 3. Until it has the snapshot and is close behind the primary.
  absl::Status copied = await_backup(start, kMaxBackupCopyTime, "the copy", [&] {
    return status.phase() == MOVE_FORWARDING &&
           status.logged_seq() <= status.applied_seq() + kBackupCaughtUpWrites;
  });
  if (!copied.ok()) return give_up(copied);
  // 4. The primary waits for it from now on; once it applied what the
  //    primary had logged then, it holds every acknowledged write.
  uint64_t logged_seq = 0;
  {
    SyncReplicaRequest req;
    req.set_move_id(backup.move_id());
    req.set_in_sync(true);
    req.set_shard_incarnation(source->incarnation);
    SyncReplicaResponse resp;
    absl::Status synced = CallMove(source_stub.get(), &ShardMove::Stub::SyncReplica, req, &resp,
                                   options_.shard_rpc_timeout);
    if (!synced.ok()) return give_up(synced);
    logged_seq = resp.logged_seq();
  }
  const absl::Time sync_start = absl::Now();
  absl::Status caught_up = await_backup(sync_start, kMaxBackupSyncTime, "the catching up",
                                        [&] { return status.applied_seq() >= logged_seq; });
  if (!caught_up.ok()) return give_up(caught_up);
  // 5. Promotable from now on.
  if (absl::Status in_sync = registry_->SetReplicaInSync(backup.move_id(), true); !in_sync.ok()) {
    return give_up(in_sync);
  }
  {
    absl::MutexLock lock(&mu_);
    replica_stats_.replicas_added += 1;
    replica_retry_.erase(group.parts[0]);
  }
  spdlog::info("replicas: {} in sync after {:.3f} s ({} bytes copied, {} writes applied)", what,
               absl::ToDoubleSeconds(absl::Now() - start), status.total_bytes(),
               status.applied_seq());
}

absl::Status CoordinatorService::FailOverGroup(const ReplicaGroup& group) {
  // Any in-sync backup holds every write the primary acknowledged (the
  // primary answered each only once every in-sync backup had applied it),
  // so the first one on a live shard whose follow answers and has not
  // failed is promoted. Their applied_seq values are not compared: each
  // follow numbers its own log, so they say nothing about each other.
  struct Candidate {
    ReplicaRecord backup;
    ShardAddress address;
  };
  std::optional<Candidate> best;
  for (const ReplicaRecord& b : group.backups) {
    if (!b.in_sync()) continue;
    absl::StatusOr<ShardAddress> at = LiveShardAddress(b.shard_id());
    if (!at.ok()) continue;
    {
      absl::MutexLock lock(&mu_);
      auto it = backup_incarnation_.find(b.move_id());
      if (it != backup_incarnation_.end() && it->second != at->incarnation) continue;
    }
    MoveStatusRequest req;
    req.set_move_id(b.move_id());
    req.set_wait_ms(0);
    MoveStatusResponse status;
    absl::Status asked =
        CallMove(ShardMove::NewStub(ChannelFor(at->address)).get(), &ShardMove::Stub::MoveStatus,
                 req, &status, options_.shard_rpc_timeout);
    if (!asked.ok() || status.phase() == MOVE_FAILED) continue;
    best = Candidate{b, *at};
    break;
  }
  if (!best.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no in-sync backup of ", group.parts[0], " answers on a live shard"));
  }
  const uint64_t epoch = group.epoch + 1;
  // Durable before the backup serves: a coordinator that restarts knows
  // the new primary, and no later decision can pick another for this epoch.
  PSD_RETURN_IF_ERROR(
      registry_->FailOver(group.parts, best->backup.shard_id(), best->backup.move_id(), epoch));
  {
    absl::MutexLock lock(&mu_);
    failover_generation_ += 1;
  }
  {
    // Until the backup serves the group, nothing else changes it (the
    // keeper retries the promotion first: RetryPromotions).
    absl::MutexLock lock(&mu_);
    promoting_[group.parts[0]] = {best->backup.shard_id(), best->backup.move_id(), epoch,
                                  best->address.incarnation};
    replica_stats_.last_failover_monotonic_seconds = std::chrono::duration<double>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  if (absl::Status promoted = Promote(group.parts[0]); !promoted.ok()) {
    spdlog::warn(
        "replicas: {} failed over to shard {} (epoch {}), but its promotion failed (retried): {}",
        group.parts[0], best->backup.shard_id(), epoch, promoted.ToString());
  }
  // The other backups followed the old primary: over.
  for (const ReplicaRecord& b : group.backups) {
    if (b.move_id() == best->backup.move_id()) continue;
    EndFollow(b.move_id(), {b.shard_id()}).IgnoreError();
  }
  absl::MutexLock lock(&mu_);
  for (const ReplicaRecord& b : group.backups) backup_incarnation_.erase(b.move_id());
  for (const std::string& p : group.parts) {
    for (auto& [id, e] : shards_) {
      if (id != best->backup.shard_id()) e.lost_parts.erase(p);
    }
  }
  replica_stats_.failovers += 1;
  auto lost_at = primary_lost_at_.find(group.parts[0]);
  if (lost_at != primary_lost_at_.end()) {
    replica_stats_.last_failover_seconds = absl::ToDoubleSeconds(absl::Now() - lost_at->second);
    primary_lost_at_.erase(lost_at);
  }
  spdlog::info("replicas: {} ({} parts) failed over from shard {} to shard {} (epoch {})",
               group.parts[0], group.parts.size(), group.primary, best->backup.shard_id(), epoch);
  return absl::OkStatus();
}

absl::Status CoordinatorService::Promote(const std::string& group) {
  PendingPromotion p;
  {
    absl::MutexLock lock(&mu_);
    auto it = promoting_.find(group);
    if (it == promoting_.end()) return absl::OkStatus();
    p = it->second;
  }
  absl::StatusOr<ShardAddress> at = LiveShardAddress(p.shard);
  if (!at.ok()) return at.status();
  PromoteReplicaRequest req;
  req.set_move_id(p.move_id);
  req.set_epoch(p.epoch);
  req.set_shard_incarnation(p.incarnation);
  PromoteReplicaResponse resp;
  absl::Status promoted = CallMove(ShardMove::NewStub(ChannelFor(at->address)).get(),
                                   &ShardMove::Stub::PromoteReplica, req, &resp,
                                   options_.shard_rpc_timeout);
  if (promoted.ok()) {
    absl::MutexLock lock(&mu_);
    auto it = promoting_.find(group);
    if (it != promoting_.end() && it->second.move_id == p.move_id) promoting_.erase(it);
  }
  return promoted;
}

void CoordinatorService::RetryPromotions(const std::vector<ReplicaGroup>& groups) {
  std::map<std::string, PendingPromotion> pending;
  {
    absl::MutexLock lock(&mu_);
    pending = promoting_;
  }
  for (const auto& [name, p] : pending) {
    const ReplicaGroup* g = nullptr;
    for (const ReplicaGroup& each : groups) {
      if (each.parts[0] == name) g = &each;
    }
    uint64_t incarnation = 0;
    {
      absl::MutexLock lock(&mu_);
      auto shard = shards_.find(p.shard);
      if (shard != shards_.end()) incarnation = shard->second.incarnation;
    }
    // Over when the registry moved on (deleted, another primary or epoch)
    // or the process holding the follow is gone: a new process of that
    // shard registers without the parts, which are then lost parts.
    if (g == nullptr || g->primary != p.shard || g->epoch != p.epoch ||
        (incarnation != 0 && incarnation != p.incarnation)) {
      spdlog::info("replicas: the promotion of {} on shard {} (epoch {}) is no longer due", name,
                   p.shard, p.epoch);
      absl::MutexLock lock(&mu_);
      auto it = promoting_.find(name);
      if (it != promoting_.end() && it->second.move_id == p.move_id) promoting_.erase(it);
      continue;
    }
    absl::Status promoted = Promote(name);
    if (promoted.ok()) {
      spdlog::info("replicas: {} promoted on shard {} (epoch {}) at a retry", name, p.shard,
                   p.epoch);
    } else {
      spdlog::warn("replicas: the promotion of {} on shard {} (epoch {}) failed again: {}", name,
                   p.shard, p.epoch, promoted.ToString());
    }
  }
}

std::unique_ptr<CoordinatorService::ReplicaPause> CoordinatorService::PauseReplicas(
    const std::set<std::string>& parts, const std::string& why) {
  std::vector<ReplicaGroup> groups;
  for (const ReplicaGroup& g : registry_->ReplicaGroups()) {
    bool mine = parts.empty();
    for (const std::string& p : g.parts) mine = mine || parts.count(p) > 0;
    if (mine) groups.push_back(g);
  }
  std::vector<std::string> names;
  {
    absl::MutexLock lock(&mu_);
    for (const ReplicaGroup& g : groups) {
      replica_busy_[g.parts[0]] += 1;
      names.push_back(g.parts[0]);
    }
  }
  auto pause = std::make_unique<ReplicaPause>(this, names);
  // An add running on a group finishes (or gives up) first: the pause
  // holds it busy, and the add's own hold ends with it.
  for (int i = 0; i < 6000; ++i) {
    bool adding = false;
    {
      absl::MutexLock lock(&mu_);
      for (const std::string& n : names) adding = adding || replica_busy_[n] > 1;
    }
    if (!adding) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  for (const ReplicaGroup& g : registry_->ReplicaGroups()) {
    if (std::find(names.begin(), names.end(), g.parts[0]) == names.end()) continue;
    for (const ReplicaRecord& b : g.backups) DropBackup(g, b, why).IgnoreError();
  }
  return pause;
}

std::vector<std::string> CoordinatorService::PartsToDrop(int32_t shard_id,
                                                         const std::set<std::string>& held) {
  std::set<std::string> mine;
  for (const std::string& p : registry_->PartsOnShard(shard_id)) mine.insert(p);
  for (const std::string& p : registry_->BackupPartsOnShard(shard_id)) mine.insert(p);
  std::set<std::string> moving;
  for (const PartMoveRecord& m : registry_->PendingMoves()) {
    moving.insert(m.parts().begin(), m.parts().end());
  }
  std::vector<std::string> out;
  for (const std::string& name : held) {
    if (mine.count(name) > 0 || moving.count(name) > 0) continue;
    absl::StatusOr<VariableDef> def = registry_->VariableOfPart(name);
    if (def.ok() && ReplicationOf(*def) > 1) out.push_back(name);
  }
  return out;
}

}  // namespace psd
