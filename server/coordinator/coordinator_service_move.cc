// CoordinatorService (coordinator_service.h): live part moves
// (docs/moves.md). The coordinator orders each step and records it in the
// registry; the data goes shard to shard (proto ShardMove).
#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "boost/asio/post.hpp"
#include "checkpoint/file_system.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/move_calls.h"
#include "coordinator/placement.h"
#include "psd/grpc_status.h"
#include "psd/parallel.h"
#include "psd/random_id.h"
#include "psd/status.h"
#include "spdlog/spdlog.h"

namespace psd {

namespace {

// A move whose target has copied the snapshot freezes the source once the
// target is this close behind it (logged writes not yet applied), so the
// owner switch applies few writes while the group's writes are held. The
// shard's MoveStatus waits for the same (store_move.cc).
constexpr uint64_t kCaughtUpWrites = 16;
// How long the copy may take before the move is given up, and how long
// the switch (freeze to commit) may hold the group's writes.
constexpr absl::Duration kMaxCopyTime = absl::Hours(1);
constexpr absl::Duration kMaxSwitchTime = absl::Seconds(20);
// How often pending moves are looked at (from heartbeats).
constexpr absl::Duration kResolveInterval = absl::Seconds(2);

std::string MoveName(uint64_t move_id) { return absl::StrCat("move ", absl::Hex(move_id)); }

}  // namespace

namespace move_calls {

// The CreateVariableRequest that makes part `k` of `def` on a shard
// (uninitialized, or an empty table: a move fills it). A table's part is
// made as its declaration made it (coordinator_service_declare.cc); a
// slot's slot_of names `primary_part`, the table part it moves with.
CreateVariableRequest MovedPartCreate(const VariableDef& def, int k,
                                      const std::string& primary_part) {
  const VariablePart& part = def.parts(k);
  CreateVariableRequest req;
  req.set_name(part.name());
  req.set_dtype(def.dtype());
  *req.mutable_shape() = part.shape();
  *req.mutable_initializer() = def.initializer();
  req.set_replicated(ReplicationOf(def) > 1);
  if (def.has_embedding()) {
    *req.mutable_embedding() = def.embedding();
    req.set_embedding_part_index(k);
    req.set_embedding_num_parts(def.parts_size());
    if (!def.embedding().slot_of().empty()) req.mutable_embedding()->set_slot_of(primary_part);
    return req;
  }
  if (def.partitioned()) {
    *req.mutable_slice()->mutable_full_shape() = def.shape().dims();
    *req.mutable_slice()->mutable_offset() = part.offset();
  }
  return req;
}

}  // namespace move_calls

using move_calls::CallMove;
using move_calls::MovedPartCreate;

absl::StatusOr<CoordinatorService::ShardAddress> CoordinatorService::LiveShardAddress(
    int32_t shard_id) const {
  const std::vector<int32_t> live = LiveShards();
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard_id);
  if (it == shards_.end()) {
    return absl::NotFoundError(absl::StrCat("shard ", shard_id, " is not registered"));
  }
  if (std::find(live.begin(), live.end(), shard_id) == live.end()) {
    return absl::UnavailableError(absl::StrCat("shard ", shard_id, " is not live"));
  }
  return ShardAddress{it->second.address, it->second.incarnation};
}

absl::StatusOr<MovePartResponse> CoordinatorService::MoveGroup(const std::string& part_name,
                                                               int32_t target_shard) {
  absl::StatusOr<MovePartResponse> result = MoveGroupOnce(part_name, target_shard);
  MoveProgressBoard::MoveEnded();
  if (options_.on_move) options_.on_move(result);
  return result;
}

absl::StatusOr<MovePartResponse> CoordinatorService::MoveGroupOnce(const std::string& part_name,
                                                                   int32_t target_shard) {
  const absl::Time start = absl::Now();
  PSD_ASSIGN_OR_RETURN(VariableDef def, registry_->VariableOfPart(part_name));
  // Declarations and deletions of the variable and of what sits beside it
  // wait for the move (a slot declared meanwhile would be placed beside the
  // part on the source and left behind).
  std::set<std::string> keys = {NameKey(def.name())};
  for (const VariableDef& other : registry_->List("")) {
    if (other.colocate_with() == def.name()) keys.insert(NameKey(other.name()));
  }
  HeldNames held(&declaring_, keys);
  PSD_ASSIGN_OR_RETURN(def, registry_->VariableOfPart(part_name));
  if (!def.colocate_with().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        part_name, " sits beside variable ", def.colocate_with(),
        " (colocate_with): move the part of ", def.colocate_with(), " instead; it takes ",
        part_name, " along"));
  }
  int k = 0;
  while (k < def.parts_size() && def.parts(k).name() != part_name) ++k;
  const int32_t source_shard = def.parts(k).shard_id();
  if (source_shard == target_shard) {
    return absl::InvalidArgumentError(
        absl::StrCat(part_name, " is on shard ", target_shard, " already"));
  }
  // The group: the part, then the parts beside it (an optimizer's slots).
  std::vector<CreateVariableRequest> group = {MovedPartCreate(def, k)};
  PartMoveRecord move;
  move.set_move_id(RandomNonzeroId());
  move.add_parts(part_name);
  move.set_source_shard(source_shard);
  move.set_target_shard(target_shard);
  move.set_started_unix_micros(absl::ToUnixMicros(start));
  for (const VariableDef& other : registry_->List("")) {
    if (other.colocate_with() != def.name()) continue;
    const VariablePart* beside = nullptr;
    int beside_k = -1;
    if (other.parts_size() == def.parts_size()) {
      beside_k = k;
    } else if (other.parts_size() == 1 && def.parts_size() == 1) {
      beside_k = 0;
    }
    if (beside_k >= 0) beside = &other.parts(beside_k);
    if (beside == nullptr || beside->shard_id() != source_shard) continue;
    // A slot table's part is a column of the table part's rows: it names
    // that part (the one moving).
    group.push_back(MovedPartCreate(other, beside_k, part_name));
    move.add_parts(beside->name());
  }
  PSD_ASSIGN_OR_RETURN(const ShardAddress source, LiveShardAddress(source_shard));
  PSD_ASSIGN_OR_RETURN(const ShardAddress target, LiveShardAddress(target_shard));
  // A replicated group's backups follow the source's log, which the move
  // ends: they are dropped first (the registry refuses to move parts
  // with backups) and made again from the target once the move is over.
  std::unique_ptr<ReplicaPause> paused;
  if (ReplicationOf(def) > 1) {
    paused = PauseReplicas(std::set<std::string>(move.parts().begin(), move.parts().end()),
                           absl::StrCat("its primary moves to shard ", target_shard));
  }
  const std::string what = absl::StrCat(MoveName(move.move_id()), " of ", part_name, " (",
                                        move.parts_size(), " parts) from shard ", source_shard,
                                        " to shard ", target_shard);
  MoveProgressBoard::MoveStarted(part_name, source_shard, target_shard);
  auto source_stub = ShardMove::NewStub(ChannelFor(source.address));
  auto target_stub = ShardMove::NewStub(ChannelFor(target.address));

  // An earlier move of these parts that a coordinator crash left
  // unfinished is finished first (as ResolvePendingMoves would).
  for (const PartMoveRecord& earlier : registry_->PendingMoves()) {
    bool overlaps = false;
    for (const std::string& p : earlier.parts()) {
      for (const std::string& q : move.parts()) overlaps = overlaps || p == q;
    }
    if (!overlaps) continue;
    {
      absl::MutexLock lock(&mu_);
      if (moves_running_.count(earlier.move_id()) > 0) {
        return absl::FailedPreconditionError(
            absl::StrCat(part_name, " is moving already (", MoveName(earlier.move_id()), ")"));
      }
    }
    absl::Status ended = EndMoveOnShards(earlier);
    if (!ended.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "an earlier ", MoveName(earlier.move_id()), " of ", part_name,
          " is not finished and its shards cannot be told yet: ", ended.message()));
    }
    PSD_RETURN_IF_ERROR(registry_->FinishMove(earlier.move_id()));
    if (earlier.committed()) {
      // It completed: the part is elsewhere now; this move starts over.
      return absl::AbortedError(absl::StrCat("an earlier ", MoveName(earlier.move_id()), " of ",
                                             part_name, " completed just now (to shard ",
                                             earlier.target_shard(), "); look again"));
    }
  }
  // Running before it is recorded, so ResolvePendingMoves leaves it alone.
  {
    absl::MutexLock lock(&mu_);
    moves_running_.insert(move.move_id());
  }
  absl::Cleanup not_running = [&] {
    absl::MutexLock lock(&mu_);
    moves_running_.erase(move.move_id());
  };
  PSD_RETURN_IF_ERROR(registry_->BeginMove(move));
  checkpoint::CrashPoint("move.begun");
  // Any failure before the switch: both shards are told, the part stays.
  auto give_up = [&](const absl::Status& why) {
    const absl::Status ended = EndMoveOnShards(move);
    if (ended.ok()) {
      registry_->FinishMove(move.move_id()).IgnoreError();
    } else {
      spdlog::warn("{}: given up, but not every shard heard it yet ({}); retried later", what,
                   ended.ToString());
    }
    spdlog::warn("{} failed: {}", what, why.ToString());
    return absl::Status(why.code(), absl::StrCat(what, " failed: ", why.message(),
                                                 "; the part stays on shard ", source_shard));
  };

  // 1. The target creates the parts and pulls them from the source.
  {
    StartMoveInRequest req;
    req.set_move_id(move.move_id());
    req.set_source_address(source.address);
    req.set_source_incarnation(source.incarnation);
    req.set_source_shard_id(source_shard);
    req.set_shard_incarnation(target.incarnation);
    for (const CreateVariableRequest& c : group) *req.add_parts() = c;
    StartMoveInResponse resp;
    absl::Status started = CallMove(target_stub.get(), &ShardMove::Stub::StartMoveIn, req, &resp,
                                    options_.shard_rpc_timeout);
    if (!started.ok()) return give_up(started);
  }
  checkpoint::CrashPoint("move.started_in");
  MoveProgressBoard::Phase("copying");
  // Polls the target until `done` says so (OK), it fails, or `limit` has
  // passed since `since` (the error is given up with).
  MoveStatusResponse status;
  bool switching = false;  // the source froze the group: psctl shows the switch
  auto await_target = [&](absl::Time since, absl::Duration limit, absl::string_view what,
                          auto done) -> absl::Status {
    for (;;) {
      MoveStatusRequest req;
      req.set_move_id(move.move_id());
      req.set_wait_ms(1000);
      PSD_RETURN_IF_ERROR(CallMove(target_stub.get(), &ShardMove::Stub::MoveStatus, req, &status,
                                   options_.shard_rpc_timeout));
      MoveProgressBoard::MoveStatus(status, switching);
      if (status.phase() == MOVE_FAILED) {
        return absl::Status(static_cast<absl::StatusCode>(status.code()), status.message());
      }
      if (done()) return absl::OkStatus();
      // A shard that went down or restarted ends the move at once (its
      // puller would otherwise retry a dead source for a while).
      for (const auto& [id, was] : {std::pair{source_shard, source.incarnation},
                                    std::pair{target_shard, target.incarnation}}) {
        absl::StatusOr<ShardAddress> now = LiveShardAddress(id);
        if (!now.ok()) return now.status();
        if (now->incarnation != was) {
          return absl::AbortedError(absl::StrCat("shard ", id, " restarted during the move"));
        }
      }
      if (absl::Now() - since > limit) {
        return absl::DeadlineExceededError(
            absl::StrCat(what, " took longer than ", absl::FormatDuration(limit)));
      }
      if (draining()) return absl::UnavailableError("the coordinator is stopping");
    }
  };
  // 2. Until the target has the snapshot and is close behind the source.
  absl::Status copied = await_target(start, kMaxCopyTime, "the copy", [&] {
    return status.phase() == MOVE_FORWARDING &&
           status.logged_seq() <= status.applied_seq() + kCaughtUpWrites;
  });
  if (!copied.ok()) return give_up(copied);
  // 3. The switch: no save reads the placement meanwhile.
  absl::MutexLock placement(checkpoints_->placement_mu());
  const absl::Time switch_start = absl::Now();
  {
    FreezeMoveRequest req;
    req.set_move_id(move.move_id());
    req.set_shard_incarnation(source.incarnation);
    FreezeMoveResponse resp;
    absl::Status frozen = CallMove(source_stub.get(), &ShardMove::Stub::FreezeMove, req, &resp,
                                   options_.shard_rpc_timeout);
    if (!frozen.ok()) return give_up(frozen);
  }
  checkpoint::CrashPoint("move.frozen");
  switching = true;
  absl::Status caught_up = await_target(switch_start, kMaxSwitchTime, "the target's catching up",
                                        [&] { return status.phase() == MOVE_READY; });
  if (!caught_up.ok()) return give_up(caught_up);
  // 4. Durably on the target from here: the move completes whatever fails.
  absl::Status committed = registry_->CommitMove(move.move_id());
  if (!committed.ok()) return give_up(committed);
  move.set_committed(true);
  checkpoint::CrashPoint("move.committed");
  absl::Status ended = EndMoveOnShards(move);
  checkpoint::CrashPoint("move.ended");
  const absl::Duration fenced = absl::Now() - switch_start;
  if (ended.ok()) {
    registry_->FinishMove(move.move_id()).IgnoreError();
  } else {
    // The registry already says where the parts are; a shard that did not
    // hear it is told again (ResolvePendingMoves).
    spdlog::warn("{}: committed; a shard has not heard it yet ({}), retried later", what,
                 ended.ToString());
  }
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& p : move.parts()) {
      // A lost part is found on its new shard (or not) by its new shard's
      // registration, not the old one's. A mark on the target itself is
      // kept: only a registration after the switch can have set it (the
      // target died with the part while this move was telling it so).
      for (auto& [id, e] : shards_) {
        if (id != target_shard) e.lost_parts.erase(p);
      }
    }
  }
  MovePartResponse out;
  *out.mutable_parts() = move.parts();
  out.set_source_shard(source_shard);
  out.set_target_shard(target_shard);
  out.set_bytes(status.total_bytes());
  out.set_forwarded_writes(status.applied_seq());
  out.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  out.set_fence_seconds(absl::ToDoubleSeconds(fenced));
  spdlog::info("{}: {} bytes and {} forwarded writes in {:.3f} s; writes held {:.1f} ms", what,
               out.bytes(), out.forwarded_writes(), out.seconds(), out.fence_seconds() * 1e3);
  return out;
}

absl::Status CoordinatorService::EndMoveOnShards(const PartMoveRecord& move) {
  absl::Status first;
  for (const int32_t shard : {move.target_shard(), move.source_shard()}) {
    std::string address;
    {
      absl::MutexLock lock(&mu_);
      auto it = shards_.find(shard);
      if (it != shards_.end()) address = it->second.address;
    }
    if (address.empty()) {
      if (first.ok()) first = absl::UnavailableError(absl::StrCat("shard ", shard, " is not registered"));
      continue;
    }
    EndMoveRequest req;
    req.set_move_id(move.move_id());
    req.set_committed(move.committed());
    req.set_new_shard_id(move.target_shard());
    EndMoveResponse resp;
    absl::Status s = CallMove(ShardMove::NewStub(ChannelFor(address)).get(),
                              &ShardMove::Stub::EndMove, req, &resp, options_.shard_rpc_timeout);
    if (!s.ok() && first.ok()) first = absl::Status(s.code(), absl::StrCat("shard ", shard, ": ", s.message()));
  }
  return first;
}

void CoordinatorService::ResolvePendingMoves() {
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (resolving_moves_ || now < next_move_resolve_) return;
    resolving_moves_ = true;
    next_move_resolve_ = now + kResolveInterval;
  }
  boost::asio::post(workers_, [this] {
    for (const PartMoveRecord& move : registry_->PendingMoves()) {
      {
        absl::MutexLock lock(&mu_);
        if (moves_running_.count(move.move_id()) > 0) continue;
      }
      // A committed move goes on to the target (the registry says the parts
      // are there); any other goes back to the source, which kept them.
      absl::Status ended = EndMoveOnShards(move);
      if (ended.ok()) {
        spdlog::info("{} of {} found unfinished: {}", MoveName(move.move_id()), move.parts(0),
                     move.committed() ? "completed on its target" : "given up, back on its source");
        registry_->FinishMove(move.move_id()).IgnoreError();
      }
    }
    absl::MutexLock lock(&mu_);
    resolving_moves_ = false;
  });
}

std::vector<int32_t> CoordinatorService::PlacementShards() const {
  const std::set<int32_t> drained = registry_->DrainedShards();
  std::vector<int32_t> out;
  for (int32_t id : LiveShards()) {
    if (drained.count(id) == 0) out.push_back(id);
  }
  return out;
}

CoordinatorService::ShardRoom CoordinatorService::FreeMemory(const std::vector<int32_t>& shards) {
  RefreshShardFigures();
  ShardRoom room;
  absl::MutexLock lock(&mu_);
  for (int32_t id : shards) {
    auto it = shards_.find(id);
    if (it != shards_.end() && it->second.memory_limit > 0) {
      room.free[id] = std::max<int64_t>(0, it->second.memory_limit - it->second.memory_used);
    }
  }
  return room;
}

std::map<std::string, int64_t> CoordinatorService::TablePartBytes(
    const std::vector<VariableDef>& defs) {
  std::set<int32_t> holders;
  for (const VariableDef& def : defs) {
    if (!def.has_embedding() || !def.colocate_with().empty()) continue;
    for (const VariablePart& p : def.parts()) holders.insert(p.shard_id());
  }
  std::vector<std::string> addresses;
  {
    absl::MutexLock lock(&mu_);
    for (int32_t id : holders) {
      auto it = shards_.find(id);
      if (it != shards_.end()) addresses.push_back(it->second.address);
    }
  }
  std::vector<ListVariablesResponse> answers(addresses.size());
  const std::vector<absl::Status> got = RunParallel(addresses.size(), [&](size_t i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    return FromGrpcStatus(
        StubFor(addresses[i])->ListVariables(&ctx, ListVariablesRequest(), &answers[i]));
  });
  std::map<std::string, int64_t> out;
  for (size_t i = 0; i < answers.size(); ++i) {
    if (!got[i].ok()) continue;
    for (const VariableInfo& info : answers[i].variables()) {
      if (info.has_embedding()) out[info.name()] = info.bytes();
    }
  }
  return out;
}

std::map<int32_t, std::vector<CoordinatorService::MovableGroup>>
CoordinatorService::MovableGroups() {
  const std::vector<VariableDef> defs = registry_->List("");
  // A table part's size is what its shard reports (rows come and go); its
  // declaration's nominal size if the shard does not answer.
  std::map<std::string, int64_t> table_bytes = TablePartBytes(defs);
  auto part_bytes = [&](const VariableDef& def, const VariablePart& part) -> int64_t {
    if (def.has_embedding()) {
      auto it = table_bytes.find(part.name());
      if (it != table_bytes.end()) return it->second;
      return NominalTablePartBytes(def.dtype(), def.embedding().embedding_dim());
    }
    int64_t elements = 1;
    for (int64_t d : part.shape().dims()) elements *= d;
    return EstimatedBytes(def.dtype(), elements);
  };
  std::map<int32_t, std::vector<MovableGroup>> out;
  for (const VariableDef& def : defs) {
    if (!def.colocate_with().empty()) continue;
    for (int k = 0; k < def.parts_size(); ++k) {
      const VariablePart& part = def.parts(k);
      MovableGroup g{part.name(), part_bytes(def, part)};
      for (const VariableDef& other : defs) {
        if (other.colocate_with() != def.name()) continue;
        if (other.parts_size() == def.parts_size() &&
            other.parts(k).shard_id() == part.shard_id()) {
          g.bytes += part_bytes(other, other.parts(k));
        }
      }
      out[part.shard_id()].push_back(std::move(g));
    }
  }
  return out;
}

absl::StatusOr<DrainShardResponse> CoordinatorService::Drain(const DrainShardRequest& request) {
  const int32_t shard = request.shard_id();
  {
    absl::MutexLock lock(&mu_);
    if (shards_.count(shard) == 0) {
      return absl::NotFoundError(absl::StrCat("shard ", shard, " is not registered"));
    }
  }
  DrainShardResponse out;
  if (request.undrain()) {
    PSD_RETURN_IF_ERROR(registry_->SetDrained(shard, false));
    return out;
  }
  // Marked first: nothing new lands on it while it empties.
  PSD_RETURN_IF_ERROR(registry_->SetDrained(shard, true));
  // Backups on it are dropped; the keeper makes them again on undrained
  // shards.
  for (const ReplicaGroup& g : registry_->ReplicaGroups()) {
    for (const ReplicaRecord& b : g.backups) {
      if (b.shard_id() != shard) continue;
      DropBackup(g, b, absl::StrCat("shard ", shard, " is drained")).IgnoreError();
    }
  }
  std::vector<std::string> left;
  std::map<int32_t, std::vector<MovableGroup>> groups = MovableGroups();
  const std::vector<int32_t> targets = PlacementShards();
  if (targets.empty() && !groups[shard].empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard ", shard, " cannot be drained: no other live, undrained shard takes its parts"));
  }
  std::map<int32_t, int64_t> load;
  for (int32_t t : targets) {
    for (const MovableGroup& g : groups[t]) load[t] += g.bytes;
  }
  ShardRoom room = FreeMemory(targets);
  // Largest groups first, each to the least loaded shard with room for it.
  std::vector<MovableGroup> mine = groups[shard];
  std::sort(mine.begin(), mine.end(),
            [](const MovableGroup& a, const MovableGroup& b) { return a.bytes > b.bytes; });
  MoveProgressBoard::Planned(static_cast<int>(mine.size()));
  for (const MovableGroup& g : mine) {
    int32_t to = -1;
    for (int32_t t : targets) {
      if (room.Fits(t, g.bytes) && (to < 0 || load[t] < load[to])) to = t;
    }
    if (to < 0) {
      left.push_back(absl::StrCat(g.part, " (", g.bytes, " bytes: no live, undrained shard has ",
                                  "that much memory free under its limit)"));
      MoveProgressBoard::MoveEnded();  // planned, and over
      continue;
    }
    absl::StatusOr<MovePartResponse> moved = MoveGroup(g.part, to);
    if (!moved.ok()) {
      left.push_back(absl::StrCat(g.part, " (", moved.status().message(), ")"));
      continue;
    }
    load[to] += g.bytes;
    room.Take(to, g.bytes);
    *out.add_moves() = *std::move(moved);
  }
  if (!left.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard ", shard, " is marked drained (nothing new goes there) but still holds ",
        left.size(), " part(s) after ", out.moves_size(), " move(s): ", absl::StrJoin(left, "; ")));
  }
  if (request.stop()) {
    std::string address;
    {
      absl::MutexLock lock(&mu_);
      auto it = shards_.find(shard);
      if (it != shards_.end()) address = it->second.address;
    }
    StopShardRequest stop;
    stop.set_reason(absl::StrCat("drained (psctl shard drain ", shard, " --stop)"));
    StopShardResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.shard_rpc_timeout));
    PSD_RETURN_IF_ERROR(
        FromGrpcStatus(ShardControl::NewStub(ChannelFor(address))->Stop(&ctx, stop, &resp)));
    out.set_stopped(true);
  }
  return out;
}

absl::StatusOr<RebalanceResponse> CoordinatorService::RebalanceParts(bool dry_run) {
  const std::vector<int32_t> shards = PlacementShards();
  if (shards.size() < 2) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rebalance needs two live, undrained shards; there are ", shards.size()));
  }
  std::map<int32_t, std::vector<MovableGroup>> groups = MovableGroups();
  std::map<int32_t, int64_t> load;
  for (int32_t t : shards) {
    load[t] = 0;
    for (const MovableGroup& g : groups[t]) load[t] += g.bytes;
  }
  ShardRoom room = FreeMemory(shards);
  // Greedy: from the fullest shard to the emptiest one with room, the
  // largest group that narrows their gap by moving at most half of it;
  // each move strictly narrows a gap, so the plan ends (and moves few,
  // large groups).
  RebalanceResponse out;
  for (int step = 0; step < 10000; ++step) {
    int32_t full = shards.front();
    for (int32_t t : shards) {
      if (load[t] > load[full]) full = t;
    }
    std::vector<int32_t> emptiest = shards;
    std::stable_sort(emptiest.begin(), emptiest.end(),
                     [&](int32_t a, int32_t b) { return load[a] < load[b]; });
    std::vector<MovableGroup>& from = groups[full];
    auto best = from.end();
    int32_t empty = -1;
    for (int32_t candidate : emptiest) {
      const int64_t gap = load[full] - load[candidate];
      for (auto it = from.begin(); it != from.end(); ++it) {
        if (it->bytes > 0 && it->bytes <= gap / 2 && room.Fits(candidate, it->bytes) &&
            (best == from.end() || it->bytes > best->bytes)) {
          best = it;
        }
      }
      if (best != from.end()) {
        empty = candidate;
        break;
      }
    }
    if (best == from.end()) break;
    room.Take(empty, best->bytes);
    room.Give(full, best->bytes);
    PlannedMove* p = out.add_plan();
    p->set_part(best->part);
    p->set_from_shard(full);
    p->set_to_shard(empty);
    p->set_bytes(best->bytes);
    load[full] -= best->bytes;
    load[empty] += best->bytes;
    groups[empty].push_back(*best);
    from.erase(best);
  }
  if (dry_run) return out;
  MoveProgressBoard::Planned(out.plan_size());
  for (const PlannedMove& p : out.plan()) {
    absl::StatusOr<MovePartResponse> moved = MoveGroup(p.part(), p.to_shard());
    if (!moved.ok()) {
      return absl::Status(moved.status().code(),
                          absl::StrCat("rebalance stopped after ", out.moves_size(), " of ",
                                       out.plan_size(), " moves: ", moved.status().message()));
    }
    *out.add_moves() = *std::move(moved);
  }
  return out;
}

}  // namespace psd
