// Child processes for the integration tests and psd_bench: ChildProcess runs
// any program in its own process group (SIGKILLed if the test dies) and
// waits for the port it writes to --port-file; TestCluster starts a real
// `psd coordinator` with a state directory plus N `psd shard` processes that
// register with it, all on free loopback ports, and can crash and restart
// any of them on the same port. Destructors stop (SIGTERM, then SIGKILL) and
// reap everything, so a failing test leaks no process.
//
// Thread-safety: thread-compatible. Start and restart processes from the
// test's main thread (the child's death signal follows the starting thread).
#ifndef PSD_COMMON_TESTING_CLUSTER_PROCESS_H_
#define PSD_COMMON_TESTING_CLUSTER_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "child_process.h"
#include "psd/coordinator.pb.h"

namespace psd {
namespace integration {


// The coordinator at `address`'s ListShards (insecure channel, 10 s).
absl::StatusOr<ListShardsResponse> ListShards(const std::string& address);

struct TestClusterOptions {
  int num_shards = 2;
  // Extra flags of `psd coordinator`.
  std::vector<std::string> coordinator_args = {"--heartbeat-interval", "0.2"};
  // Extra flags of `psd shard` K (absent: none).
  std::map<int, std::vector<std::string>> shard_args;
  // Shard K's --coordinator, given the coordinator's address (unset: that
  // address): e.g. a fault proxy in front of the coordinator, so one
  // shard's heartbeats can be cut off. Called at every start of a shard.
  std::function<std::string(int k, const std::string& coordinator)> shard_coordinator;
  // Shard K's listen port (absent: a free one), e.g. the target of a fault
  // proxy that the shard names in its --advertise (in shard_args).
  std::map<int, int> shard_ports;
};

class TestCluster {
 public:
  static absl::StatusOr<std::unique_ptr<TestCluster>> Start(const TestClusterOptions& options = {});
  ~TestCluster();

  std::string coordinator_address() const;
  std::string shard_address(int k) const;
  // Shard k's HTTP port (/metrics, /healthz), from the --http-port-file
  // every shard here is started with.
  absl::StatusOr<int> shard_http_port(int k) const;
  const std::string& state_dir() const { return dir_; }
  // The coordinator process (to signal it or wait for it).
  ChildProcess* coordinator() { return coordinator_.get(); }
  // Shard k's process.
  ChildProcess* shard(int k) { return shards_[k].get(); }

  // SIGKILL the coordinator and start it again on its port with the same
  // state directory.
  absl::Status RestartCoordinator();
  // SIGKILL shard k and start it again on its port (empty: a new
  // incarnation).
  absl::Status RestartShard(int k);
  // SIGKILL shard k and leave it down; StartKilledShard starts it again on
  // its port (a new incarnation).
  absl::Status KillShard(int k);
  absl::Status StartKilledShard(int k);
  // Waits until the coordinator lists every shard live, each with an
  // incarnation other than the ones in `not_incarnations` (by shard id).
  absl::Status WaitForShards(absl::Duration timeout,
                             const std::vector<uint64_t>& not_incarnations = {});
  // The incarnation the coordinator lists for shard k (0 if unknown).
  absl::StatusOr<uint64_t> ShardIncarnation(int k);

 private:
  TestCluster() = default;
  absl::Status StartCoordinator(int port);
  absl::Status StartShard(int k, int port);

  TestClusterOptions options_;
  std::string dir_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> shards_;
  std::map<int, int> killed_ports_;  // shards KillShard left down -> their ports
};

}  // namespace integration
}  // namespace psd

#endif  // PSD_COMMON_TESTING_CLUSTER_PROCESS_H_
