#include "shard/coordinator_link.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "boost/asio/post.hpp"
#include "grpcpp/grpcpp.h"
#include "shard/shard_traffic.h"
#include "spdlog/spdlog.h"
#include "runtime/peer_channel.h"

namespace psd {

namespace {
constexpr auto kCallDeadline = std::chrono::seconds(2);
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);
}  // namespace

CoordinatorLink::CoordinatorLink(boost::asio::io_context* io,
                                 const std::string& coordinator_address, const ShardConfig& shard,
                                 VariableStore* store,
                                 std::shared_ptr<grpc::ChannelCredentials> credentials)
    : io_(io),
      coordinator_address_(coordinator_address),
      shard_(shard),
      store_(store),
      stub_(Coordinator::NewStub(grpc::CreateCustomChannel(
          coordinator_address,
          credentials != nullptr ? credentials : grpc::InsecureChannelCredentials(),
          PeerChannelArguments(0)))),
      timer_(*io) {}

void CoordinatorLink::Start() {
  boost::asio::post(*io_, [this] { Register(); });
}

void CoordinatorLink::Stop() {
  stopped_.store(true);
  boost::asio::post(*io_, [this] { timer_.cancel(); });
}

void CoordinatorLink::Schedule(std::chrono::milliseconds delay, void (CoordinatorLink::*step)()) {
  if (stopped_.load()) return;
  timer_.expires_after(delay);
  timer_.async_wait([this, step](const boost::system::error_code& ec) {
    if (!ec && !stopped_.load()) (this->*step)();
  });
}

void CoordinatorLink::Register() {
  RegisterShardRequest request;
  request.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
  request.set_shard_id(shard_.id);
  request.set_address(shard_.advertise);
  request.set_incarnation(store_->incarnation());
  request.set_device(store_->device().name());
  request.set_host(shard_.host);
  request.set_memory_limit_bytes(store_->memory().limit());
  request.set_memory_used_bytes(store_->memory().used());
  for (const auto& info : store_->List("", /*include_incoming=*/true)) {
    request.add_variables(info.name());
  }
  RegisterShardResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  const ShardLease::Clock::time_point asked_at = ShardLease::Clock::now();
  const grpc::Status status = stub_->RegisterShard(&ctx, request, &response);
  if (status.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
    // Another live process holds this id: retrying would only take turns
    // with it. Stop, and let the process end with the coordinator's reason.
    spdlog::error("shard {}: the coordinator {} refused the registration: {}", shard_.id,
                  coordinator_address_, status.error_message());
    stopped_.store(true);
    if (on_fatal_) {
      on_fatal_(absl::AlreadyExistsError(absl::StrCat("coordinator ", coordinator_address_,
                                                      " refused shard ", shard_.id, ": ",
                                                      status.error_message())));
    }
    return;
  }
  if (!status.ok()) {
    if (registered_ || backoff_ >= kMaxBackoff) {
      spdlog::warn("shard {}: cannot register with coordinator {}: {}", shard_.id,
                   coordinator_address_, status.error_message());
    }
    registered_ = false;
    Schedule(backoff_, &CoordinatorLink::Register);
    backoff_ = std::min(backoff_ * 2, std::chrono::duration_cast<std::chrono::milliseconds>(kMaxBackoff));
    return;
  }
  registered_ = true;
  backoff_ = std::chrono::milliseconds(100);
  if (response.drop_parts_size() > 0) {
    // Their group failed over (or this shard was dropped as their backup)
    // while it was cut off: they must not serve under the new lease.
    spdlog::warn("shard {}: dropping {} parts that live elsewhere now", shard_.id,
                 response.drop_parts_size());
    store_->DropParts(
        std::vector<std::string>(response.drop_parts().begin(), response.drop_parts().end()));
  }
  if (lease_ != nullptr) lease_->Grant(asked_at, std::chrono::milliseconds(response.lease_millis()));
  if (response.heartbeat_interval_ms() > 0) {
    heartbeat_interval_ = std::chrono::milliseconds(response.heartbeat_interval_ms());
  }
  spdlog::info("shard {}: registered with coordinator {} ({} lost parts)", shard_.id,
               coordinator_address_, response.lost_parts_size());
  for (const auto& part : response.lost_parts()) {
    spdlog::warn("shard {}: part {} is lost until restored from a checkpoint", shard_.id, part);
  }
  Schedule(heartbeat_interval_, &CoordinatorLink::Heartbeat);
}

absl::Status CoordinatorLink::ReplicaBehind(uint64_t move_id, const std::string& reason) {
  ReplicaBehindRequest request;
  request.set_shard_id(shard_.id);
  request.set_incarnation(store_->incarnation());
  request.set_move_id(move_id);
  request.set_reason(reason);
  ReplicaBehindResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  const grpc::Status status = stub_->ReplicaBehind(&ctx, request, &response);
  if (!status.ok()) {
    spdlog::warn("shard {}: ReplicaBehind for move {:x} to {} failed: {}", shard_.id, move_id,
                 coordinator_address_, status.error_message());
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("ReplicaBehind to coordinator ", coordinator_address_, ": ",
                                     status.error_message()));
  }
  spdlog::info("shard {}: backup of move {:x} left the in-sync set: {}", shard_.id, move_id,
               reason);
  return absl::OkStatus();
}

void CoordinatorLink::Heartbeat() {
  HeartbeatRequest request;
  request.set_shard_id(shard_.id);
  request.set_incarnation(store_->incarnation());
  request.set_memory_used_bytes(store_->memory().used());
  request.set_num_variables(static_cast<int64_t>(store_->num_variables()));
  *request.mutable_traffic() = ReadShardTraffic(rpc_metrics_, store_->gate().totals());
  HeartbeatResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  const ShardLease::Clock::time_point asked_at = ShardLease::Clock::now();
  const grpc::Status status = stub_->Heartbeat(&ctx, request, &response);
  if (!status.ok() || response.reregister()) {
    if (!status.ok()) {
      spdlog::warn("shard {}: heartbeat to {} failed: {}", shard_.id, coordinator_address_,
                   status.error_message());
    }
    Schedule(status.ok() ? std::chrono::milliseconds(0) : backoff_, &CoordinatorLink::Register);
    return;
  }
  if (lease_ != nullptr) lease_->Grant(asked_at, std::chrono::milliseconds(response.lease_millis()));
  Schedule(heartbeat_interval_, &CoordinatorLink::Heartbeat);
}

}  // namespace psd
