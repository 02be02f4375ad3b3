#include "cluster_process.h"
#include "shard_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"

#ifndef PSD_BINARY
#error "PSD_BINARY must name the psd executable"
#endif

namespace psd {
namespace integration {

absl::StatusOr<std::unique_ptr<TestCluster>> TestCluster::Start(const TestClusterOptions& options) {
  std::unique_ptr<TestCluster> cluster(new TestCluster());
  cluster->options_ = options;
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/psd_cluster_XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) return ErrnoError("mkdtemp", errno);
  cluster->dir_ = dir;
  if (auto s = cluster->StartCoordinator(0); !s.ok()) return s;
  cluster->shards_.resize(options.num_shards);
  for (int k = 0; k < options.num_shards; ++k) {
    auto pinned = options.shard_ports.find(k);
    if (auto s = cluster->StartShard(k, pinned == options.shard_ports.end() ? 0 : pinned->second);
        !s.ok()) {
      return s;
    }
  }
  if (auto s = cluster->WaitForShards(absl::Seconds(60)); !s.ok()) return s;
  return cluster;
}

TestCluster::~TestCluster() {
  shards_.clear();
  coordinator_.reset();
  std::error_code ignored;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
}

std::string TestCluster::coordinator_address() const {
  return absl::StrCat("127.0.0.1:", coordinator_->port());
}

std::string TestCluster::shard_address(int k) const {
  if (shards_[k] == nullptr) return absl::StrCat("127.0.0.1:", killed_ports_.at(k));
  return absl::StrCat("127.0.0.1:", shards_[k]->port());
}

absl::StatusOr<int> TestCluster::shard_http_port(int k) const {
  const std::string path = absl::StrCat(dir_, "/shard-", k, ".http-port");
  // The shard writes it just after its gRPC port file: wait a little.
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::ifstream in(path);
    int port = 0;
    if (in >> port && port > 0) return port;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::NotFoundError(absl::StrCat("no HTTP port in ", path));
}

namespace {

// The children's log level: warn, or PSD_TEST_LOG_LEVEL (e.g. info, to see
// a failing run's coordinator decisions on the test's stderr).
std::string ChildLogLevel() {
  const char* level = std::getenv("PSD_TEST_LOG_LEVEL");
  return level != nullptr && *level != '\0' ? level : "warn";
}

}  // namespace

absl::Status TestCluster::StartCoordinator(int port) {
  const std::string port_file = dir_ + "/coordinator.port";
  std::remove(port_file.c_str());
  std::vector<std::string> args = {PSD_BINARY, "--log-level", ChildLogLevel(), "coordinator",
                                   "--listen", absl::StrCat("127.0.0.1:", port),
                                   "--state-dir", dir_ + "/state", "--port-file", port_file};
  args.insert(args.end(), options_.coordinator_args.begin(), options_.coordinator_args.end());
  absl::Status last;
  // A restart on a fixed port may race the old socket's teardown: retry.
  for (int attempt = 0; attempt < 50; ++attempt) {
    auto started = ChildProcess::Start(args, port_file);
    if (started.ok()) {
      coordinator_ = *std::move(started);
      return absl::OkStatus();
    }
    last = started.status();
    if (port == 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return last;
}

absl::Status TestCluster::StartShard(int k, int port) {
  const std::string port_file = absl::StrCat(dir_, "/shard-", k, ".port");
  std::remove(port_file.c_str());
  std::vector<std::string> args = {PSD_BINARY, "--log-level", ChildLogLevel(), "shard",
                                   "--id", std::to_string(k),
                                   "--listen", absl::StrCat("127.0.0.1:", port),
                                   "--port-file", port_file,
                                   "--http-port-file", absl::StrCat(dir_, "/shard-", k, ".http-port"),
                                   "--coordinator",
                                   options_.shard_coordinator
                                       ? options_.shard_coordinator(k, coordinator_address())
                                       : coordinator_address()};
  if (auto extra = options_.shard_args.find(k); extra != options_.shard_args.end()) {
    args.insert(args.end(), extra->second.begin(), extra->second.end());
  }
  absl::Status last;
  for (int attempt = 0; attempt < 50; ++attempt) {
    auto started = ChildProcess::Start(args, port_file);
    if (started.ok()) {
      shards_[k] = *std::move(started);
      return absl::OkStatus();
    }
    last = started.status();
    if (port == 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return last;
}

absl::Status TestCluster::RestartCoordinator() {
  const int port = coordinator_->port();
  if (auto s = coordinator_->Kill(); !s.ok()) return s;
  coordinator_.reset();
  return StartCoordinator(port);
}

absl::Status TestCluster::RestartShard(int k) {
  if (shards_[k] == nullptr) return StartKilledShard(k);
  const int port = shards_[k]->port();
  if (auto s = shards_[k]->Kill(); !s.ok()) return s;
  shards_[k].reset();
  return StartShard(k, port);
}

absl::Status TestCluster::KillShard(int k) {
  if (shards_[k] == nullptr) return absl::FailedPreconditionError(absl::StrCat("shard ", k, " is down"));
  const int port = shards_[k]->port();
  if (auto s = shards_[k]->Kill(); !s.ok()) return s;
  shards_[k].reset();
  killed_ports_[k] = port;
  return absl::OkStatus();
}

absl::Status TestCluster::StartKilledShard(int k) {
  auto it = killed_ports_.find(k);
  if (it == killed_ports_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("shard ", k, " was not killed"));
  }
  const int port = it->second;
  killed_ports_.erase(it);
  return StartShard(k, port);
}

absl::StatusOr<ListShardsResponse> ListShards(const std::string& address) {
  auto stub = Coordinator::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  ListShardsResponse resp;
  absl::Status s = FromGrpcStatus(stub->ListShards(&ctx, ListShardsRequest(), &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::Status TestCluster::WaitForShards(absl::Duration timeout,
                                        const std::vector<uint64_t>& not_incarnations) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    auto resp = ListShards(coordinator_address());
    if (resp.ok()) {
      int ready = 0;
      for (const ShardStatus& s : resp->shards()) {
        const bool old = s.shard_id() < static_cast<int>(not_incarnations.size()) &&
                         not_incarnations[s.shard_id()] == s.incarnation();
        if (s.live() && !old && s.shard_id() < options_.num_shards) ++ready;
      }
      if (ready == options_.num_shards) return absl::OkStatus();
      last = resp->DebugString();
    } else {
      last = resp.status().ToString();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("shards not all live: ", last));
}

absl::StatusOr<uint64_t> TestCluster::ShardIncarnation(int k) {
  auto resp = ListShards(coordinator_address());
  if (!resp.ok()) return resp.status();
  for (const ShardStatus& s : resp->shards()) {
    if (s.shard_id() == k) return s.incarnation();
  }
  return uint64_t{0};
}

}  // namespace integration
}  // namespace psd
