// CoordinatorLink: a shard's membership in its cluster. Registers the shard
// with the coordinator (address, incarnation, device, memory, the variables
// it holds) and heartbeats at the interval the coordinator asks for, each
// heartbeat with the shard's traffic counters (shard_traffic.h); when
// the coordinator does not know this incarnation (it restarted, or declared
// the shard dead) the shard registers again. Unreachable coordinators are
// retried with backoff: the shard keeps serving its data meanwhile, since
// the coordinator is never on the data path. A registration refused with
// ALREADY_EXISTS (another live process holds this shard id) is final: the
// link stops and reports it to the fatal handler, which ends the process.
// Each accepted registration and heartbeat renews the shard's lease
// (shard_lease.h), counted from the clock read before the call was sent;
// the parts a registration's answer names in drop_parts (they live
// elsewhere now) are dropped before that lease is taken.
//
// Runs on the process's Boost.Asio context (timers only; each call has a
// short deadline so a stop signal is never held up for long).
//
// Thread-safety: all work happens on the io_context's thread; Stop() may be
// called from any thread.
#ifndef PSD_SERVER_SHARD_COORDINATOR_LINK_H_
#define PSD_SERVER_SHARD_COORDINATOR_LINK_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/steady_timer.hpp"
#include "grpcpp/security/credentials.h"
#include "observability/rpc_metrics.h"
#include "psd/coordinator.grpc.pb.h"
#include "runtime/cluster_config.h"
#include "shard/shard_lease.h"
#include "shard/variable_store.h"

namespace psd {

class CoordinatorLink {
 public:
  // `credentials` secure the channel to the coordinator (null: plaintext).
  CoordinatorLink(boost::asio::io_context* io, const std::string& coordinator_address,
                  const ShardConfig& shard, VariableStore* store,
                  std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);
  CoordinatorLink(const CoordinatorLink&) = delete;
  CoordinatorLink& operator=(const CoordinatorLink&) = delete;

  // Called on the io thread when the coordinator refuses this shard for
  // good (its id is held by another live shard). Set before Start().
  void SetFatalHandler(std::function<void(const absl::Status&)> handler) {
    on_fatal_ = std::move(handler);
  }
  // The server's RPC counters, reported with each heartbeat (ShardTraffic);
  // must outlive the link. Set before Start(); none: only the fence totals
  // are reported.
  void SetRpcMetrics(const RpcMetrics* rpc_metrics) { rpc_metrics_ = rpc_metrics; }
  // Where the leases granted with registrations and heartbeats go; must
  // outlive the link. Set before Start(); none: leases are not kept.
  void SetLease(ShardLease* lease) { lease_ = lease; }

  void Start();
  void Stop();

  // Tells the coordinator that backup `move_id` of one of this shard's
  // groups is behind (docs/replication.md "In-sync changes"); OK once the
  // coordinator dropped it from the in-sync set. Blocking; any thread.
  absl::Status ReplicaBehind(uint64_t move_id, const std::string& reason);

 private:
  void Register();
  void Heartbeat();
  void Schedule(std::chrono::milliseconds delay, void (CoordinatorLink::*step)());

  boost::asio::io_context* const io_;
  const std::string coordinator_address_;
  const ShardConfig shard_;
  VariableStore* const store_;  // DropParts at registration
  const RpcMetrics* rpc_metrics_ = nullptr;
  ShardLease* lease_ = nullptr;
  std::unique_ptr<Coordinator::Stub> stub_;
  std::function<void(const absl::Status&)> on_fatal_;
  boost::asio::steady_timer timer_;
  std::atomic<bool> stopped_{false};
  // Owned by the io thread.
  std::chrono::milliseconds heartbeat_interval_{1000};
  std::chrono::milliseconds backoff_{100};
  bool registered_ = false;
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_COORDINATOR_LINK_H_
