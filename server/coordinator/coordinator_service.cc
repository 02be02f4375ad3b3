// CoordinatorService (coordinator_service.h): the RPC handlers and how they
// are served, shard membership (registration, heartbeats, liveness), session
// expiry and handles. Declaring variables (creating their parts, ordered
// initialization, re-declaring a checkpoint's) is in
// coordinator_service_declare.cc.
#include "coordinator/coordinator_service.h"

#include <algorithm>
#include <new>
#include <thread>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "grpcpp/grpcpp.h"
#include "boost/asio/post.hpp"
#include "psd/edge.h"
#include "psd/grpc_status.h"
#include "psd/parallel.h"
#include "psd/status.h"
#include "runtime/peer_channel.h"

namespace psd {

CoordinatorService::CoordinatorService(Registry* registry, const CoordinatorServiceOptions& options)
    : registry_(registry),
      options_(options),
      workers_(static_cast<size_t>(std::max(1, options.blocking_workers))) {
  CheckpointManager::ShardAccess access;
  access.stub = [this](int32_t shard_id) -> absl::StatusOr<std::shared_ptr<Shard::Stub>> {
    std::string address;
    {
      absl::MutexLock lock(&mu_);
      auto it = shards_.find(shard_id);
      if (it == shards_.end()) {
        return absl::UnavailableError(absl::StrCat("shard ", shard_id, " is not registered"));
      }
      if (absl::Now() - it->second.last_seen > options_.liveness_timeout) {
        return absl::UnavailableError(absl::StrCat("shard ", shard_id, " is down (no heartbeat for ",
                                                   absl::FormatDuration(absl::Now() - it->second.last_seen),
                                                   ")"));
      }
      address = it->second.address;
    }
    return StubFor(address);
  };
  access.restored = [this](const std::vector<std::pair<int32_t, std::string>>& parts) {
    absl::MutexLock lock(&mu_);
    for (const auto& [shard_id, part] : parts) {
      auto it = shards_.find(shard_id);
      if (it != shards_.end()) it->second.lost_parts.erase(part);
    }
  };
  checkpoints_ = std::make_unique<CheckpointManager>(registry, std::move(access), options.checkpoint);
  if (options_.replica_keeper_interval > absl::ZeroDuration()) {
    keeper_ = std::thread([this] { KeeperLoop(); });
  }
}

template <typename Op>
grpc::ServerUnaryReactor* CoordinatorService::Serve(grpc::CallbackServerContext* ctx, Op&& op) {
  in_flight_.fetch_add(1);
  absl::Status status;
  if (draining_.load()) {
    status = absl::UnavailableError("coordinator is shutting down");
  } else {
    status = RunAtEdge("coordinator", op);
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  in_flight_.fetch_sub(1);
  return reactor;
}

template <typename Op>
grpc::ServerUnaryReactor* CoordinatorService::ServeBlocking(grpc::CallbackServerContext* ctx,
                                                            Op op) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (draining_.load()) {
    reactor->Finish(ToGrpcStatus(absl::UnavailableError("coordinator is shutting down")));
    return reactor;
  }
  if (blocking_calls_.fetch_add(1) >= options_.max_queued_blocking_calls) {
    blocking_calls_.fetch_sub(1);
    reactor->Finish(ToGrpcStatus(absl::ResourceExhaustedError(absl::StrCat(
        "coordinator: ", options_.max_queued_blocking_calls,
        " calls that reach shards are waiting already (max_queued_blocking_calls); retry later"))));
    return reactor;
  }
  in_flight_.fetch_add(1);
  boost::asio::post(workers_, [this, reactor, op = std::move(op)]() mutable {
    const absl::Status status = RunAtEdge("coordinator", op);
    blocking_calls_.fetch_sub(1);
    in_flight_.fetch_sub(1);
    // Last: once finished, the server may go away.
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

CoordinatorService::~CoordinatorService() {
  // A backup being made on a worker gives up (it polls draining()).
  StartDrain();
  if (keeper_.joinable()) {
    {
      absl::MutexLock lock(&keeper_mu_);
      keeper_stop_ = true;
    }
    keeper_.join();
  }
  workers_.join();
}

bool CoordinatorService::WaitForIdle(absl::Time deadline) const {
  while (in_flight_.load() > 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

std::vector<int32_t> CoordinatorService::LiveShards() const {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  std::vector<int32_t> live;
  for (const auto& [id, s] : shards_) {
    if (now - s.last_seen <= options_.liveness_timeout) live.push_back(id);
  }
  return live;
}

void CoordinatorService::FillHandle(const VariableDef& def, VariableHandle* h) const {
  h->set_name(def.name());
  h->set_dtype(def.dtype());
  *h->mutable_shape() = def.shape();
  h->set_partitioned(def.partitioned());
  h->set_partition_axis(def.partition_axis());
  *h->mutable_partitions() = def.partitions();
  h->set_trainable(def.trainable());
  *h->mutable_collections() = def.collections();
  *h->mutable_initializer() = def.initializer();
  h->set_declared_by_session(def.declared_by_session());
  h->set_declared_at(def.declared_at());
  if (def.has_embedding()) *h->mutable_embedding() = def.embedding();
  absl::MutexLock lock(&mu_);
  for (const VariablePart& part : def.parts()) {
    PartHandle* p = h->add_parts();
    p->set_name(part.name());
    *p->mutable_shape() = part.shape();
    *p->mutable_offset() = part.offset();
    p->set_shard_id(part.shard_id());
    if (ReplicationOf(def) > 1) {
      p->set_replicated(true);
      p->set_epoch(part.epoch());
      for (const ReplicaRecord& b : part.backups()) {
        p->add_backup_shards(b.shard_id());
        if (b.in_sync()) p->add_in_sync_shards(b.shard_id());
      }
    }
    auto it = shards_.find(part.shard_id());
    if (it != shards_.end()) {
      p->set_shard_address(it->second.address);
      p->set_shard_incarnation(it->second.incarnation);
      p->set_lost(it->second.lost_parts.count(part.name()) > 0);
    }
  }
}

std::shared_ptr<grpc::Channel> CoordinatorService::ChannelFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& channel = channels_[address];
  if (channel == nullptr) {
    channel = grpc::CreateCustomChannel(address,
                                        options_.shard_credentials != nullptr
                                            ? options_.shard_credentials
                                            : grpc::InsecureChannelCredentials(),
                                        PeerChannelArguments(options_.max_message_bytes));
  }
  return channel;
}

std::shared_ptr<Shard::Stub> CoordinatorService::StubFor(const std::string& address) {
  std::shared_ptr<grpc::Channel> channel = ChannelFor(address);
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[address];
  if (stub == nullptr) stub = Shard::NewStub(channel);
  return stub;
}

void CoordinatorService::SetLostPartsHandler(
    std::function<void(int32_t, std::vector<std::string>)> handler) {
  absl::MutexLock lock(&mu_);
  on_lost_parts_ = std::move(handler);
}

grpc::ServerUnaryReactor* CoordinatorService::OpenSession(grpc::CallbackServerContext* ctx,
                                                          const OpenSessionRequest* request,
                                                          OpenSessionResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    if (request->protocol_version() != COORDINATOR_PROTOCOL_VERSION) {
      return absl::FailedPreconditionError(absl::StrCat(
          "coordinator protocol version mismatch: client speaks ", request->protocol_version(),
          ", coordinator speaks ", static_cast<int>(COORDINATOR_PROTOCOL_VERSION)));
    }
    ExpireIdleSessions();
    PSD_ASSIGN_OR_RETURN(uint64_t id, registry_->OpenSession(request->client()));
    {
      absl::MutexLock lock(&sessions_mu_);
      session_seen_[id] = absl::Now();
    }
    response->set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    response->set_session_id(id);
    response->set_session_ttl_ms(absl::ToInt64Milliseconds(options_.session_ttl));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::CloseSession(grpc::CallbackServerContext* ctx,
                                                           const CloseSessionRequest* request,
                                                           CloseSessionResponse* response) {
  return Serve(ctx, [&] {
    {
      absl::MutexLock lock(&sessions_mu_);
      session_seen_.erase(request->session_id());
    }
    return registry_->CloseSession(request->session_id());
  });
}

grpc::ServerUnaryReactor* CoordinatorService::KeepSessionAlive(
    grpc::CallbackServerContext* ctx, const KeepSessionAliveRequest* request,
    KeepSessionAliveResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_RETURN_IF_ERROR(TouchSession(request->session_id()));
    if (!registry_->HasSession(request->session_id())) {
      return absl::NotFoundError(absl::StrCat("session ", request->session_id(), " is not open"));
    }
    response->set_session_ttl_ms(absl::ToInt64Milliseconds(options_.session_ttl));
    return absl::OkStatus();
  });
}

absl::Status CoordinatorService::TouchSession(uint64_t session) {
  ExpireIdleSessions();
  absl::MutexLock lock(&sessions_mu_);
  if (expired_sessions_.count(session) > 0) {
    return absl::NotFoundError(absl::StrCat(
        "session ", session, " expired: the coordinator heard nothing from it for ",
        absl::FormatDuration(options_.session_ttl), " (its names and scope counters are gone; ",
        "variables stay); open a new session"));
  }
  session_seen_[session] = absl::Now();
  return absl::OkStatus();
}

void CoordinatorService::ExpireIdleSessions() {
  if (options_.session_ttl <= absl::ZeroDuration()) return;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&sessions_mu_);
  if (now < next_expiry_sweep_) return;
  next_expiry_sweep_ = now + std::max(options_.session_ttl / 8, absl::Milliseconds(100));
  const std::vector<uint64_t> open = registry_->SessionIds();
  // Calls naming sessions that are not open (closed, or never were) leave
  // entries behind: drop them, so the map stays as big as the registry's.
  for (auto it = session_seen_.begin(); it != session_seen_.end();) {
    it = std::binary_search(open.begin(), open.end(), it->first) ? std::next(it)
                                                                 : session_seen_.erase(it);
  }
  for (uint64_t id : open) {
    auto [it, recovered] = session_seen_.try_emplace(id, now);
    if (recovered || now - it->second <= options_.session_ttl) continue;
    session_seen_.erase(it);
    absl::Status closed = registry_->CloseSession(id);
    if (!closed.ok()) {
      spdlog::warn("session {} is idle past its TTL but could not be closed: {}", id,
                   closed.ToString());
      continue;
    }
    spdlog::info("session {} expired: no call for {}", id,
                 absl::FormatDuration(options_.session_ttl));
    expired_sessions_.insert(id);
    // Remember the newest expiries only; ids are never reused.
    if (expired_sessions_.size() > 4096) expired_sessions_.erase(expired_sessions_.begin());
  }
}

absl::Status CoordinatorService::CheckShardIdFree(const RegisterShardRequest& request) {
  const int32_t id = request.shard_id();
  // A few rounds: the holder may change while it is probed (another
  // registration of the id); each round looks again.
  for (int round = 0; round < 3; ++round) {
    std::string holder_address;
    uint64_t holder_incarnation = 0;
    {
      absl::MutexLock lock(&mu_);
      auto it = shards_.find(id);
      if (it == shards_.end() || it->second.incarnation == request.incarnation()) {
        return absl::OkStatus();
      }
      holder_address = it->second.address;
      holder_incarnation = it->second.incarnation;
    }
    // A shard restarted (its heartbeats may not have lapsed yet) is told
    // apart from a second process claiming the id by asking the holder's
    // address who serves there: the holder itself (its incarnation) is
    // alive, and the newcomer is refused; nobody, or another process (a
    // restart on the same address, since a port has one listener), means
    // the holder is gone. With no clear answer, the holder's heartbeats
    // decide.
    GetShardInfoRequest probe;
    probe.set_protocol_version(SHARD_PROTOCOL_VERSION);
    GetShardInfoResponse info;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.holder_probe_timeout));
    const absl::Status answered =
        FromGrpcStatus(StubFor(holder_address)->GetShardInfo(&ctx, probe, &info));
    absl::MutexLock lock(&mu_);
    auto it = shards_.find(id);
    if (it == shards_.end() || it->second.incarnation != holder_incarnation) continue;
    const std::string newcomer =
        absl::StrCat(request.address(), ", incarnation ", absl::Hex(request.incarnation()));
    const std::string holder = absl::StrCat(
        holder_address, " (incarnation ", absl::Hex(holder_incarnation), ", last heartbeat ",
        absl::FormatDuration(
            absl::Trunc(absl::Now() - it->second.last_seen, absl::Milliseconds(1))),
        " ago)");
    if (answered.ok() && info.incarnation() == holder_incarnation) {
      return absl::AlreadyExistsError(
          absl::StrCat("shard id ", id, " is held by a live shard at ", holder, "; this shard (",
                       newcomer, ") cannot take it: give every shard its own --id"));
    }
    if (answered.ok() || answered.code() == absl::StatusCode::kUnavailable) {
      spdlog::info(
          "shard {}: taken over by {}: the previous holder {} is gone ({})", id, newcomer, holder,
          answered.ok()
              ? absl::StrCat("its address is served by incarnation ", absl::Hex(info.incarnation()))
              : std::string(answered.message()));
      return absl::OkStatus();
    }
    // No clear answer (a timeout, a refusal): the holder may be alive. Its
    // heartbeats lapsed: gone (or cut off long enough to count as gone).
    if (absl::Now() - it->second.last_seen > options_.liveness_timeout) {
      spdlog::info("shard {}: taken over by {}: the previous holder {} stopped heartbeating", id,
                   newcomer, holder);
      return absl::OkStatus();
    }
    // Retryable: the newcomer gets the id once the holder's heartbeats lapse.
    return absl::UnavailableError(absl::StrCat("shard id ", id, " is held by ", holder,
                                               ", which could not be confirmed gone (",
                                               answered.message(), "); this shard (", newcomer,
                                               ") gets the id once the holder's heartbeats lapse"));
  }
  return absl::UnavailableError(
      absl::StrCat("shard id ", id, ": its holder changed during the registration; retry"));
}

grpc::ServerUnaryReactor* CoordinatorService::RegisterShard(grpc::CallbackServerContext* ctx,
                                                            const RegisterShardRequest* request,
                                                            RegisterShardResponse* response) {
  return ServeBlocking(ctx, [this, request, response]() -> absl::Status {
    if (request->protocol_version() != COORDINATOR_PROTOCOL_VERSION) {
      return absl::FailedPreconditionError(absl::StrCat(
          "coordinator protocol version mismatch: shard speaks ", request->protocol_version(),
          ", coordinator speaks ", static_cast<int>(COORDINATOR_PROTOCOL_VERSION)));
    }
    if (request->address().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", request->shard_id(), " registered without an address"));
    }
    if (request->host().size() > 255) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", request->shard_id(),
                                                     " registered with a host name of ",
                                                     request->host().size(), " bytes (at most 255)"));
    }
    PSD_RETURN_IF_ERROR(CheckShardIdFree(*request));
    uint64_t failovers_seen = 0;
    {
      absl::MutexLock lock(&mu_);
      failovers_seen = failover_generation_;
    }
    const std::vector<std::string> placed = registry_->PartsOnShard(request->shard_id());
    const std::set<std::string> held(request->variables().begin(), request->variables().end());
    for (const std::string& part : PartsToDrop(request->shard_id(), held)) {
      response->add_drop_parts(part);
    }
    // Replicated groups with an in-sync backup fail over (the keeper)
    // instead of being restored from a checkpoint.
    std::set<std::string> failing_over;
    const std::vector<int32_t> live_list = LiveShards();
    const std::set<int32_t> live(live_list.begin(), live_list.end());
    for (const ReplicaGroup& g : registry_->ReplicaGroups()) {
      if (g.primary != request->shard_id()) continue;
      for (const ReplicaRecord& b : g.backups) {
        if (b.in_sync() && live.count(b.shard_id()) > 0) {
          failing_over.insert(g.parts.begin(), g.parts.end());
        }
      }
    }
    absl::ReleasableMutexLock lock(&mu_);
    const std::pair<int32_t, uint64_t> process = {request->shard_id(), request->incarnation()};
    if (failing_over_.count(request->shard_id()) > 0 || failover_generation_ != failovers_seen) {
      // A failover of this shard's groups is under way (or one was just
      // recorded after drop_parts was read): it takes a lease only with the
      // full list of parts to drop. Fenced or not: a shard not registered
      // since this coordinator started is not fenced (there is no process
      // to fence), and must not keep serving parts placed elsewhere
      // meanwhile. Checked under mu_, as the keeper marks the failover
      // before it checks the lease and fails over.
      return absl::UnavailableError(absl::StrCat(
          "shard ", request->shard_id(),
          " lost its replicated groups' primaries and their failover is not done yet; retry"));
    }
    fenced_.erase(process);
    ShardEntry& e = shards_[request->shard_id()];
    const bool same_process = e.incarnation == request->incarnation();
    e.id = request->shard_id();
    e.address = request->address();
    e.incarnation = request->incarnation();
    e.device = request->device();
    e.host = request->host();
    e.memory_limit = request->memory_limit_bytes();
    e.memory_used = request->memory_used_bytes();
    e.num_variables = static_cast<int64_t>(held.size());
    e.last_seen = absl::Now();
    if (!same_process) {
      e.lost_parts.clear();
      // The previous process's counters: this one counts from zero.
      e.traffic.reset();
    }
    for (const std::string& part : placed) {
      // Every registered part was created (a declaration is registered only
      // once its parts exist), so one the shard does not hold is lost.
      if (held.count(part) == 0) e.lost_parts.insert(part);
      if (held.count(part) > 0) e.lost_parts.erase(part);
    }
    for (const std::string& part : e.lost_parts) response->add_lost_parts(part);
    response->set_lease_millis(GrantLease(&e));
    response->set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    response->set_heartbeat_interval_ms(absl::ToInt64Milliseconds(options_.heartbeat_interval));
    std::vector<std::string> lost;
    for (const std::string& part : e.lost_parts) {
      if (failing_over.count(part) == 0) lost.push_back(part);
    }
    const bool wake_keeper = !same_process && lost.size() < e.lost_parts.size();
    if (!same_process && !lost.empty() && on_lost_parts_) {
      auto handler = on_lost_parts_;
      const int32_t id = e.id;
      lock.Release();
      handler(id, std::move(lost));
    } else {
      lock.Release();
    }
    if (wake_keeper) WakeKeeper();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                        const HeartbeatRequest* request,
                                                        HeartbeatResponse* response) {
  return Serve(ctx, [&] {
    ExpireIdleSessions();
    ResolvePendingMoves();
    absl::MutexLock lock(&mu_);
    auto it = shards_.find(request->shard_id());
    if (it == shards_.end() || it->second.incarnation != request->incarnation() ||
        fenced_.count({request->shard_id(), request->incarnation()}) > 0) {
      // A fenced process lost its replicated primaries: no lease again
      // until it registers and hears which parts to drop.
      response->set_reregister(true);
      return absl::OkStatus();
    }
    if (absl::Now() - it->second.last_seen > options_.liveness_timeout) {
      // Counted down meanwhile (cut off, yet back before its own calls
      // timed out): the keeper may have dropped backups it holds without
      // telling it (EndFollow calls only live shards). It registers again
      // and hears them in drop_parts, instead of keeping a dead copy.
      response->set_reregister(true);
      return absl::OkStatus();
    }
    it->second.last_seen = absl::Now();
    response->set_lease_millis(GrantLease(&it->second));
    it->second.memory_used = request->memory_used_bytes();
    it->second.num_variables = request->num_variables();
    if (request->has_traffic()) {
      it->second.traffic = request->traffic();
      it->second.traffic_at = it->second.last_seen;
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::ReplicaBehind(grpc::CallbackServerContext* ctx,
                                                            const ReplicaBehindRequest* request,
                                                            ReplicaBehindResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    {
      absl::MutexLock lock(&mu_);
      auto it = shards_.find(request->shard_id());
      if (it == shards_.end() || it->second.incarnation != request->incarnation()) {
        return absl::FailedPreconditionError(
            absl::StrCat("shard ", request->shard_id(), " incarnation ", request->incarnation(),
                         " is not registered (register again)"));
      }
      if (fenced_.count({request->shard_id(), request->incarnation()}) > 0) {
        // Its lease ran out and its primaries are being (or were) failed
        // over: a write it could not replicate must not be answered.
        return absl::FailedPreconditionError(absl::StrCat(
            "shard ", request->shard_id(), " lost its replicated primaries to a failover (backup ",
            absl::Hex(request->move_id()), " reported behind): register again"));
      }
    }
    spdlog::info("replicas: shard {} reports backup {:x} behind: {}", request->shard_id(),
                 request->move_id(), request->reason());
    // Durable before the answer, and only for the group's current primary:
    // the primary acknowledges writes without the backup only once it can
    // no longer be promoted (a backup not in sync yet never joins), and a
    // deposed primary is refused (Registry::ReportReplicaBehind).
    absl::Status reported = registry_->ReportReplicaBehind(request->shard_id(), request->move_id());
    WakeKeeper();
    return reported;
  });
}

grpc::ServerUnaryReactor* CoordinatorService::GetVariable(grpc::CallbackServerContext* ctx,
                                                          const GetVariableRequest* request,
                                                          GetVariableResponse* response) {
  return ServeBlocking(ctx, [this, ctx, request, response]() -> absl::Status {
    PSD_RETURN_IF_ERROR(TouchSession(request->session_id()));
    PSD_ASSIGN_OR_RETURN(
        auto results,
        DeclareAndCreate(request->session_id(), absl::MakeConstSpan(&request->declaration(), 1),
                         request->request_seq(), absl::FromChrono(ctx->deadline())));
    FillHandle(results[0].def, response->mutable_handle());
    response->set_created(results[0].created);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::DeclareVariables(
    grpc::CallbackServerContext* ctx, const DeclareVariablesRequest* request,
    DeclareVariablesResponse* response) {
  return ServeBlocking(ctx, [this, ctx, request, response]() -> absl::Status {
    PSD_RETURN_IF_ERROR(TouchSession(request->session_id()));
    std::vector<VariableDeclaration> decls(request->declarations().begin(),
                                           request->declarations().end());
    PSD_ASSIGN_OR_RETURN(auto results,
                         DeclareAndCreate(request->session_id(), decls, request->request_seq(),
                                          absl::FromChrono(ctx->deadline())));
    for (const DeclareResult& r : results) {
      FillHandle(r.def, response->add_handles());
      response->add_created(r.created);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::ListVariables(
    grpc::CallbackServerContext* ctx, const CoordinatorListVariablesRequest* request,
    CoordinatorListVariablesResponse* response) {
  return Serve(ctx, [&] {
    for (const VariableDef& def : registry_->List(request->collection())) {
      FillHandle(def, response->add_variables());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::LookupVariable(grpc::CallbackServerContext* ctx,
                                                             const LookupVariableRequest* request,
                                                             LookupVariableResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(VariableDef def, registry_->Lookup(request->name()));
    FillHandle(def, response->mutable_handle());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::MovePart(grpc::CallbackServerContext* ctx,
                                                       const MovePartRequest* request,
                                                       MovePartResponse* response) {
  // The move itself: coordinator_service_move.cc.
  return ServeBlocking(ctx, [this, request, response]() -> absl::Status {
    MoveProgressBoard::Scope progress(&move_progress_, request->progress_id());
    MoveProgressBoard::Planned(1);
    PSD_ASSIGN_OR_RETURN(*response, MoveGroup(request->part(), request->target_shard()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::DrainShard(grpc::CallbackServerContext* ctx,
                                                         const DrainShardRequest* request,
                                                         DrainShardResponse* response) {
  return ServeBlocking(ctx, [this, request, response]() -> absl::Status {
    MoveProgressBoard::Scope progress(&move_progress_, request->progress_id());
    PSD_ASSIGN_OR_RETURN(*response, Drain(*request));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Rebalance(grpc::CallbackServerContext* ctx,
                                                        const RebalanceRequest* request,
                                                        RebalanceResponse* response) {
  return ServeBlocking(ctx, [this, request, response]() -> absl::Status {
    MoveProgressBoard::Scope progress(&move_progress_, request->progress_id());
    PSD_ASSIGN_OR_RETURN(*response, RebalanceParts(request->dry_run()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::MoveProgress(grpc::CallbackServerContext* ctx,
                                                           const MoveProgressRequest* request,
                                                           MoveProgressResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    *response = move_progress_.Get(request->progress_id());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::DeleteVariable(
    grpc::CallbackServerContext* ctx, const CoordinatorDeleteVariableRequest* request,
    CoordinatorDeleteVariableResponse* response) {
  return ServeBlocking(ctx, [this, request]() -> absl::Status {
    // Held through the parts' deletion too: a declaration of the same name
    // may neither be registered between its check and this deletion (it
    // would be ABORTED after creating its parts) nor create its parts
    // before the old ones are deleted (which would then delete the new).
    HeldNames declaring(&declaring_, {NameKey(request->name())});
    // An embedding table goes with its slot tables (Registry::DeleteWithSlots),
    // whose parts are deleted first, as the shard keeps a slot's rows in
    // its primary's part.
    PSD_ASSIGN_OR_RETURN(std::vector<VariableDef> defs,
                         registry_->DeleteWithSlots(request->name()));
    // The names are gone from the registry; parts left on unreachable shards
    // are orphans the shard drops on its next restart, and a later variable
    // of the same name replaces rather than adopts them.
    std::vector<VariablePart> parts;
    for (const VariableDef& def : defs)
      parts.insert(parts.end(), def.parts().begin(), def.parts().end());
    for (const VariablePart& part : parts) {
      std::string address;
      {
        absl::MutexLock lock(&mu_);
        auto it = shards_.find(part.shard_id());
        if (it == shards_.end()) continue;
        it->second.lost_parts.erase(part.name());
        address = it->second.address;
      }
      DeleteVariableRequest req;
      req.set_name(part.name());
      DeleteVariableResponse resp;
      grpc::ClientContext cctx;
      cctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.shard_rpc_timeout));
      (void)StubFor(address)->DeleteVariable(&cctx, req, &resp);
    }
    // Backups of the deleted parts: their follows end (the backup's shard
    // drops its copy), and a slot left behind forgets them too.
    std::map<uint64_t, PartMoveRecord> follows;
    for (const VariablePart& part : parts) {
      for (const ReplicaRecord& b : part.backups()) {
        PartMoveRecord& move = follows[b.move_id()];
        move.set_move_id(b.move_id());
        move.set_source_shard(part.shard_id());
        move.set_target_shard(b.shard_id());
      }
    }
    for (const auto& [move_id, move] : follows) {
      EndFollow(move_id, {move.target_shard(), move.source_shard()}).IgnoreError();
      registry_->DropReplica(move_id).IgnoreError();
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::InitializeVariables(
    grpc::CallbackServerContext* ctx, const CoordinatorInitializeRequest* request,
    CoordinatorInitializeResponse* response) {
  return ServeBlocking(ctx, [this, ctx, request, response]() -> absl::Status {
    if (request->session_id() != 0) PSD_RETURN_IF_ERROR(TouchSession(request->session_id()));
    PSD_ASSIGN_OR_RETURN(
        std::vector<std::string> order,
        InitializeOrdered(std::vector<std::string>(request->names().begin(),
                                                   request->names().end()),
                          request->force(), absl::FromChrono(ctx->deadline())));
    for (std::string& name : order) response->add_initialized(std::move(name));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::OpenScope(grpc::CallbackServerContext* ctx,
                                                        const OpenScopeRequest* request,
                                                        OpenScopeResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_RETURN_IF_ERROR(TouchSession(request->session_id()));
    PSD_ASSIGN_OR_RETURN(
        ScopeEntry e,
        registry_->OpenScope(request->session_id(), request->parent_path(), request->name(),
                             request->default_name(), request->reuse(), request->captured(),
                             request->request_seq()));
    response->set_path(e.path);
    response->set_token(e.token);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::CloseScope(grpc::CallbackServerContext* ctx,
                                                         const CloseScopeRequest* request,
                                                         CloseScopeResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_RETURN_IF_ERROR(TouchSession(request->session_id()));
    return registry_->CloseScope(request->session_id(), request->path(), request->token(),
                                 request->request_seq());
  });
}

grpc::ServerUnaryReactor* CoordinatorService::UniqueVariableName(
    grpc::CallbackServerContext* ctx, const UniqueVariableNameRequest* request,
    UniqueVariableNameResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_RETURN_IF_ERROR(TouchSession(request->session_id()));
    PSD_ASSIGN_OR_RETURN(
        std::string name,
        registry_->UniqueName(request->session_id(), request->name(), request->mark_as_used(),
                              request->request_seq()));
    response->set_name(name);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::ListShards(grpc::CallbackServerContext* ctx,
                                                         const ListShardsRequest* request,
                                                         ListShardsResponse* response) {
  return ServeBlocking(ctx, [this, response]() -> absl::Status {
    RefreshShardFigures();
    *response = ShardStatuses();
    return absl::OkStatus();
  });
}

void CoordinatorService::RefreshShardFigures() {
  // The heartbeat's figures may predate the last declarations (a shard
  // just given parts reads as holding none): ask the live shards now, so
  // what psctl status shows is current. A shard that does not answer in
  // time keeps its heartbeat's figures (their age is shown).
  struct Ask {
    int32_t id;
    std::string address;
    uint64_t incarnation;
  };
  std::vector<Ask> asks;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (const auto& [id, e] : shards_) {
      if (now - e.last_seen <= options_.liveness_timeout) asks.push_back({id, e.address, e.incarnation});
    }
  }
  std::vector<GetShardInfoResponse> answers(asks.size());
  std::vector<absl::Status> got = RunParallel(asks.size(), [&](size_t i) {
    GetShardInfoRequest req;
    req.set_protocol_version(SHARD_PROTOCOL_VERSION);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    return FromGrpcStatus(StubFor(asks[i].address)->GetShardInfo(&ctx, req, &answers[i]));
  });
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < asks.size(); ++i) {
    if (!got[i].ok()) continue;
    auto it = shards_.find(asks[i].id);
    // Another incarnation: the shard restarted; it re-registers itself.
    if (it == shards_.end() || it->second.incarnation != asks[i].incarnation ||
        answers[i].incarnation() != asks[i].incarnation) {
      continue;
    }
    it->second.memory_used = answers[i].memory_used_bytes();
    it->second.num_variables = answers[i].num_variables();
    // Figures only, not liveness: a shard is live while its own heartbeats
    // arrive. Counting this answer as one would keep a shard that cannot
    // reach the coordinator listed live for as long as someone polls
    // ListShards (psctl status) more often than the liveness timeout.
  }
}

namespace {
// Added to a lease's end on the coordinator's side: monotonic clocks of two
// hosts may run at rates a little apart (NTP slews within 500 ppm).
absl::Duration LeaseMargin(absl::Duration lease_period) {
  return absl::Milliseconds(100) + lease_period / 100;
}
}  // namespace

int64_t CoordinatorService::GrantLease(ShardEntry* e) {
  // Read after the call arrived: later than the shard's own reading, taken
  // before it sent the call, so the shard's lease ends first.
  e->lease_granted = std::chrono::steady_clock::now();
  return absl::ToInt64Milliseconds(options_.lease_period);
}

std::chrono::steady_clock::time_point CoordinatorService::LeaseEnd(const ShardEntry& e) const {
  return std::max(e.lease_granted, started_) +
         absl::ToChronoNanoseconds(options_.lease_period + LeaseMargin(options_.lease_period));
}

bool CoordinatorService::LeaseMayBeHeld(int32_t shard_id) const {
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard_id);
  // Never registered here: a coordinator before a restart may have granted
  // one all the same.
  if (it == shards_.end()) {
    return std::chrono::steady_clock::now() <
           started_ + absl::ToChronoNanoseconds(options_.lease_period +
                                                LeaseMargin(options_.lease_period));
  }
  return std::chrono::steady_clock::now() < LeaseEnd(it->second);
}

ListShardsResponse CoordinatorService::ShardStatuses() const {
  const std::set<int32_t> drained = registry_->DrainedShards();
  ListShardsResponse response;
  const auto placement = registry_->Placement();
  // Replicated groups each shard is the primary of, and holds a backup of.
  std::map<int32_t, int64_t> primary_groups;
  std::map<int32_t, int64_t> backup_groups;
  for (const ReplicaGroup& g : registry_->ReplicaGroups()) {
    primary_groups[g.primary] += 1;
    for (const ReplicaRecord& b : g.backups) backup_groups[b.shard_id()] += 1;
  }
  response.set_num_variables(static_cast<int64_t>(registry_->num_variables()));
  response.set_num_sessions(static_cast<int64_t>(registry_->num_sessions()));
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (const auto& [id, e] : shards_) {
    ShardStatus* s = response.add_shards();
    s->set_shard_id(id);
    s->set_address(e.address);
    s->set_incarnation(e.incarnation);
    s->set_device(e.device);
    s->set_host(e.host);
    s->set_live(now - e.last_seen <= options_.liveness_timeout);
    s->set_memory_limit_bytes(e.memory_limit);
    s->set_memory_used_bytes(e.memory_used);
    s->set_num_variables(e.num_variables);
    if (auto p = placement.find(id); p != placement.end()) {
      s->set_placed_parts(p->second.parts);
      s->set_placed_bytes(p->second.bytes);
    }
    s->set_lost_parts(static_cast<int64_t>(e.lost_parts.size()));
    if (auto g = primary_groups.find(id); g != primary_groups.end()) s->set_primary_groups(g->second);
    if (auto g = backup_groups.find(id); g != backup_groups.end()) s->set_backup_groups(g->second);
    s->set_drained(drained.count(e.id) > 0);
    s->set_millis_since_heartbeat(absl::ToInt64Milliseconds(now - e.last_seen));
    const auto lease_left = LeaseEnd(e) - std::chrono::steady_clock::now();
    s->set_lease_remaining_millis(std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(lease_left).count()));
    s->set_lease_granted_monotonic_micros(
        std::chrono::duration_cast<std::chrono::microseconds>(e.lease_granted.time_since_epoch())
            .count());
    if (e.traffic.has_value()) {
      *s->mutable_traffic() = *e.traffic;
      s->set_millis_since_traffic(absl::ToInt64Milliseconds(now - e.traffic_at));
    }
  }
  return response;
}

void CoordinatorService::SetShutdownHandler(ShutdownHandler handler) {
  absl::MutexLock lock(&mu_);
  on_shutdown_ = std::move(handler);
}

grpc::ServerUnaryReactor* CoordinatorService::Shutdown(grpc::CallbackServerContext* ctx,
                                                       const ShutdownRequest* request,
                                                       ShutdownResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    ShutdownHandler handler;
    {
      absl::MutexLock lock(&mu_);
      handler = on_shutdown_;
    }
    if (!handler) return absl::UnimplementedError("shutdown: this coordinator cannot stop itself");
    return handler(*request, response);
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Save(grpc::CallbackServerContext* ctx,
                                                   const SaveCheckpointRequest* request,
                                                   SaveCheckpointResponse* response) {
  return ServeBlocking(ctx, [this, request, response]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(*response, checkpoints_->Save(*request));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Restore(grpc::CallbackServerContext* ctx,
                                                      const RestoreCheckpointRequest* request,
                                                      RestoreCheckpointResponse* response) {
  return ServeBlocking(ctx, [this, request, response]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(*response, RestoreCheckpoint(*request));
    return absl::OkStatus();
  });
}

absl::StatusOr<RestoreCheckpointResponse> CoordinatorService::RestoreCheckpoint(
    const RestoreCheckpointRequest& request) {
  // A restore writes the primaries only: their backups are dropped first
  // and made again from the restored values once it is over.
  // (The groups of the variables it names, or all of them.)
  std::set<std::string> parts;
  std::vector<std::string> names(request.variables().begin(), request.variables().end());
  for (const auto& [ckpt_name, name] : request.name_map()) names.push_back(name);
  for (const std::string& name : names) {
    absl::StatusOr<VariableDef> def = registry_->Lookup(name);
    if (!def.ok()) continue;
    for (const VariablePart& p : def->parts()) parts.insert(p.name());
  }
  if (!names.empty() && parts.empty()) parts.insert("");  // none of them is replicated
  std::unique_ptr<ReplicaPause> paused = PauseReplicas(parts, "a restore rewrites its primary");
  return checkpoints_->Restore(request);
}

grpc::ServerUnaryReactor* CoordinatorService::LatestCheckpoint(
    grpc::CallbackServerContext* ctx, const LatestCheckpointRequest* request,
    LatestCheckpointResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    auto latest = checkpoints_->Latest(request->dir(), request->latest_filename());
    if (absl::IsNotFound(latest.status())) return absl::OkStatus();  // None
    if (!latest.ok()) return latest.status();
    response->set_prefix(*latest);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::GetCheckpointState(
    grpc::CallbackServerContext* ctx, const GetCheckpointStateRequest* request,
    GetCheckpointStateResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(*response,
                         checkpoints_->GetState(request->dir(), request->latest_filename()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::UpdateCheckpointState(
    grpc::CallbackServerContext* ctx, const UpdateCheckpointStateRequest* request,
    UpdateCheckpointStateResponse* response) {
  // Waits for a running save: a worker of the blocking pool, not gRPC's.
  return ServeBlocking(ctx, [this, request]() { return checkpoints_->UpdateState(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::SetLastCheckpoints(
    grpc::CallbackServerContext* ctx, const SetLastCheckpointsRequest* request,
    SetLastCheckpointsResponse* response) {
  // Waits for a running save: a worker of the blocking pool, not gRPC's.
  return ServeBlocking(ctx,
                       [this, request]() { return checkpoints_->SetLastCheckpoints(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::ListCheckpoints(
    grpc::CallbackServerContext* ctx, const ListCheckpointsRequest* request,
    ListCheckpointsResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(*response, checkpoints_->List(request->dir(), request->latest_filename()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Policy(grpc::CallbackServerContext* ctx,
                                                     const CheckpointPolicyRequest* request,
                                                     CheckpointPolicyResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(*response->mutable_policy(),
                         checkpoints_->Policy(request->has_set() ? &request->set() : nullptr));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::CheckpointProgress(
    grpc::CallbackServerContext* ctx, const CheckpointProgressRequest* request,
    CheckpointProgressResponse* response) {
  return Serve(ctx, [&]() -> absl::Status {
    *response = checkpoints_->Progress(request->progress_id());
    return absl::OkStatus();
  });
}

}  // namespace psd
