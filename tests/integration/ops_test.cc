// Operations over real processes: a TLS cluster with bearer tokens (a
// coordinator and two shards, certificates from scripts/make-test-certs.sh)
// whose /metrics are scraped over HTTPS with the test CA and parsed, with
// counters moving with traffic and the cluster, checkpoint and fence series
// present; then `psctl shutdown` stopping the whole cluster, refused to a
// trainer, optionally after a final checkpoint.
#include <sys/wait.h>

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../common/http_get.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"

namespace psd {
namespace {

using integration::ChildProcess;
using testing_http::HttpGet;
using testing_http::ParseMetrics;

// One TLS cluster per test: coordinator, two shards, each with its gRPC and
// HTTPS port files in a temporary directory.
class OpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/psd_ops_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    const std::string command = absl::StrCat(PSD_MAKE_TEST_CERTS, " ", dir_, " >/dev/null");
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
    std::filesystem::create_directories(dir_ + "/ckpt");

    auto coordinator = ChildProcess::Start(
        Flags({PSD_BINARY, "--log-level", "warn", "coordinator", "--listen", "127.0.0.1:0",
               "--heartbeat-interval", "0.2", "--state-dir", dir_ + "/state", "--checkpoint-dir",
               dir_ + "/ckpt", "--port-file", dir_ + "/coordinator.port", "--http-port-file",
               dir_ + "/coordinator.http"}),
        dir_ + "/coordinator.port");
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    for (int k = 0; k < 2; ++k) {
      const std::string port_file = absl::StrCat(dir_, "/shard-", k, ".port");
      auto shard = ChildProcess::Start(
          Flags({PSD_BINARY, "--log-level", "warn", "shard", "--id", std::to_string(k), "--listen",
                 "127.0.0.1:0", "--port-file", port_file, "--http-port-file",
                 absl::StrCat(dir_, "/shard-", k, ".http"), "--coordinator", CoordinatorAddress()}),
          port_file);
      ASSERT_TRUE(shard.ok()) << shard.status();
      shards_.push_back(*std::move(shard));
    }
    WaitForLiveShards();
  }

  void TearDown() override {
    shards_.clear();
    coordinator_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // `args` plus the cluster's TLS and token flags.
  std::vector<std::string> Flags(std::vector<std::string> args) const {
    for (const std::string& flag :
         {"--tls-ca=" + dir_ + "/ca.pem", "--tls-cert=" + dir_ + "/server.pem",
          "--tls-key=" + dir_ + "/server.key", "--token-file=" + dir_ + "/tokens"}) {
      args.push_back(flag);
    }
    return args;
  }

  std::string CoordinatorAddress() const {
    return absl::StrCat("127.0.0.1:", coordinator_->port());
  }

  int HttpPort(const std::string& name) const {
    std::ifstream in(dir_ + "/" + name + ".http");
    int port = 0;
    in >> port;
    return port;
  }

  // /metrics of `name` ("coordinator", "shard-0"), over HTTPS, parsed.
  std::map<std::string, double> Scrape(const std::string& name) const {
    auto reply = HttpGet("127.0.0.1", HttpPort(name), "/metrics", dir_ + "/ca.pem");
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (!reply.ok()) return {};
    EXPECT_EQ(reply->status, 200);
    auto metrics = ParseMetrics(reply->body);
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return metrics.ok() ? *metrics : std::map<std::string, double>{};
  }

  std::unique_ptr<Coordinator::Stub> CoordinatorStub(const std::string& role) const {
    ChannelSecurity security;
    security.tls_ca = dir_ + "/ca.pem";
    security.token_file = dir_ + "/" + role + ".token";
    auto credentials = internal::MakeChannelCredentials(security);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return Coordinator::NewStub(grpc::CreateChannel(CoordinatorAddress(), *credentials));
  }

  static std::unique_ptr<grpc::ClientContext> Context() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return ctx;
  }

  void WaitForLiveShards() {
    auto stub = CoordinatorStub("admin");
    std::string last;
    for (int i = 0; i < 300; ++i) {
      ListShardsResponse response;
      grpc::Status status = stub->ListShards(Context().get(), ListShardsRequest(), &response);
      int live = 0;
      for (const ShardStatus& s : response.shards()) live += s.live() ? 1 : 0;
      if (status.ok() && live == 2) return;
      last = status.ok() ? response.DebugString() : status.error_message();
      absl::SleepFor(absl::Milliseconds(100));
    }
    FAIL() << "shards not live: " << last;
  }

  // A trainer session that creates `name` ([8] floats, partitioned over both
  // shards) and adds to it `steps` times.
  void Train(const std::string& name, int steps) {
    client::SessionOptions options;
    options.coordinator_retry_budget = absl::Seconds(10);
    options.shard.security.tls_ca = dir_ + "/ca.pem";
    options.shard.security.token_file = dir_ + "/trainer.token";
    auto session = client::Session::Open(CoordinatorAddress(), options);
    ASSERT_TRUE(session.ok()) << session.status();
    client::GetVariableOptions declaration;
    declaration.shape = TensorShape({8});
    declaration.partitioner = client::partitioners::FixedSize(2);
    declaration.initialize = true;
    auto variable = (*session)->GetVariable(name, declaration);
    ASSERT_TRUE(variable.ok()) << variable.status();
    auto ones = Tensor::FromVector<float>(TensorShape({8}), std::vector<float>(8, 1.0f));
    ASSERT_TRUE(ones.ok()) << ones.status();
    for (int i = 0; i < steps; ++i) {
      absl::Status s = variable->AssignAdd(*ones);
      ASSERT_TRUE(s.ok()) << s;
    }
  }

  // Waits for `process` to exit; returns its exit code (-1: still running
  // or killed by a signal).
  static int ExitCode(ChildProcess* process, absl::Duration timeout) {
    auto status = process->Wait(timeout);
    if (!status.ok() || !WIFEXITED(*status)) return -1;
    return WEXITSTATUS(*status);
  }

  std::string dir_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> shards_;
};

// The sum of every series of `name` whose labels contain `label` ("" any).
double Sum(const std::map<std::string, double>& metrics, const std::string& name,
           const std::string& label = "") {
  double sum = 0;
  for (const auto& [series, value] : metrics) {
    const bool same_name = series == name || absl::StartsWith(series, name + "{");
    if (same_name && absl::StrContains(series, label)) sum += value;
  }
  return sum;
}

TEST_F(OpsTest, MetricsOverHttpsMoveWithTraffic) {
  const auto shard_before = Scrape("shard-0");
  const auto coordinator_before = Scrape("coordinator");
  // Present from the start.
  for (const char* series : {"psd_shard_variables", "psd_shard_memory_used_bytes",
                             "psd_shard_memory_limit_bytes", "psd_shard_fenced",
                             "psd_shard_fence_lease_expiries_total",
                             "psd_shard_fence_pause_seconds_count",
                             "psd_process_resident_memory_bytes"}) {
    EXPECT_EQ(shard_before.count(series), 1u) << series;
  }
  EXPECT_EQ(coordinator_before.at("psd_coordinator_shards{state=\"live\"}"), 2);
  EXPECT_EQ(coordinator_before.at("psd_coordinator_shards{state=\"down\"}"), 0);
  EXPECT_EQ(coordinator_before.at("psd_coordinator_shard_up{shard=\"1\"}"), 1);
  EXPECT_EQ(coordinator_before.at("psd_checkpoint_last_success_timestamp_seconds"), 0);
  EXPECT_GT(coordinator_before.at("psd_process_resident_memory_bytes"), 0);

  Train("ops/w", 20);
  auto stub = CoordinatorStub("trainer");
  SaveCheckpointRequest save;
  save.set_prefix(dir_ + "/ckpt/model.ckpt");
  SaveCheckpointResponse saved;
  grpc::Status status = stub->Save(Context().get(), save, &saved);
  ASSERT_TRUE(status.ok()) << status.error_message();

  const auto shard_after = Scrape("shard-0");
  const auto coordinator_after = Scrape("coordinator");
  // RPC counters and bytes moved with the trainer's ops.
  const std::string add_ok = "method=\"psd.Shard/Assign\",code=\"OK\"";
  EXPECT_GE(Sum(shard_after, "psd_rpc_total", add_ok) - Sum(shard_before, "psd_rpc_total", add_ok),
            20);
  EXPECT_GT(Sum(shard_after, "psd_rpc_received_bytes_total"),
            Sum(shard_before, "psd_rpc_received_bytes_total"));
  EXPECT_GE(Sum(shard_after, "psd_rpc_duration_seconds_count", "psd.Shard/Assign"), 20);
  EXPECT_EQ(shard_after.at("psd_shard_variables"), 1);
  EXPECT_GT(shard_after.at("psd_shard_memory_used_bytes"), 0);
  // The save fenced the shard once.
  EXPECT_EQ(shard_after.at("psd_shard_fence_pause_seconds_count"), 1);
  EXPECT_EQ(shard_after.at("psd_shard_fences_total"), 1);
  EXPECT_EQ(shard_after.at("psd_shard_fenced"), 0);
  // The coordinator's view: the variable placed on both shards, one save.
  EXPECT_GE(Sum(coordinator_after, "psd_rpc_total", "method=\"psd.Coordinator/OpenSession\",code=\"OK\""), 1);
  EXPECT_EQ(coordinator_after.at("psd_coordinator_variables"), 1);
  EXPECT_GT(coordinator_after.at("psd_coordinator_shard_placed_bytes{shard=\"0\"}"), 0);
  EXPECT_GT(coordinator_after.at("psd_coordinator_shard_placed_bytes{shard=\"1\"}"), 0);
  EXPECT_EQ(coordinator_after.at("psd_checkpoint_saves_total{result=\"OK\"}"), 1);
  EXPECT_EQ(coordinator_after.at("psd_checkpoint_save_duration_seconds_count"), 1);
  EXPECT_EQ(coordinator_after.at("psd_checkpoint_fence_pause_seconds_count"), 1);
  EXPECT_EQ(coordinator_after.at("psd_checkpoint_last_save_bytes"), saved.bytes());
  EXPECT_GT(coordinator_after.at("psd_checkpoint_last_success_timestamp_seconds"), 1.7e9);

  // A shard that dies shows as down once its heartbeats stop.
  ASSERT_TRUE(shards_[1]->Kill().ok());
  bool down = false;
  for (int i = 0; i < 200 && !down; ++i) {
    down = Scrape("coordinator")["psd_coordinator_shard_up{shard=\"1\"}"] == 0;
    if (!down) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(down);
  EXPECT_EQ(Scrape("coordinator")["psd_coordinator_shards{state=\"down\"}"], 1);

  // Health endpoints answer over the same HTTPS port.
  auto ready = HttpGet("127.0.0.1", HttpPort("shard-0"), "/readyz", dir_ + "/ca.pem");
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(ready->status, 200);
}

TEST_F(OpsTest, ShutdownIsForAdminsAndStopsEveryProcessAfterAFinalCheckpoint) {
  Train("ops/v", 3);
  // A trainer may not stop the cluster; nothing stops.
  ShutdownRequest request;
  request.set_final_checkpoint(true);
  ShutdownResponse response;
  grpc::Status status = CoordinatorStub("trainer")->Shutdown(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(ExitCode(coordinator_.get(), absl::ZeroDuration()), -1);

  status = CoordinatorStub("admin")->Shutdown(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.stopped_shards_size(), 2);
  EXPECT_EQ(response.unreached_shards_size(), 0);
  ASSERT_FALSE(response.checkpoint().empty());
  EXPECT_TRUE(std::filesystem::exists(response.checkpoint() + ".index")) << response.checkpoint();
  // Every process drains and exits cleanly.
  for (auto& shard : shards_) EXPECT_EQ(ExitCode(shard.get(), absl::Seconds(60)), 0);
  EXPECT_EQ(ExitCode(coordinator_.get(), absl::Seconds(60)), 0);
}

// psctl over the TLS cluster: errors are one line and a non-zero exit;
// `psctl shutdown` (admin) stops everything.
TEST_F(OpsTest, PsctlShutdownStopsTheClusterAndErrorsAreOneLine) {
  const std::string psctl = absl::StrCat(PSCTL_BINARY, " --coordinator ", CoordinatorAddress(),
                                         " --tls-ca ", dir_, "/ca.pem --token-file ", dir_);
  const auto run = [&](const std::string& command, std::string* err) {
    const std::string err_file = dir_ + "/psctl.err";
    const int rc = std::system((command + " >/dev/null 2>" + err_file).c_str());
    std::ifstream in(err_file);
    err->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  };
  std::string err;
  EXPECT_EQ(run(psctl + "/trainer.token shutdown", &err), 1);
  EXPECT_TRUE(absl::StartsWith(err, "psctl: PERMISSION_DENIED")) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(run(psctl + "/admin.token shutdown --no-such-flag", &err), 0);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;

  EXPECT_EQ(run(psctl + "/admin.token shutdown", &err), 0) << err;
  for (auto& shard : shards_) EXPECT_EQ(ExitCode(shard.get(), absl::Seconds(60)), 0);
  EXPECT_EQ(ExitCode(coordinator_.get(), absl::Seconds(60)), 0);
  // Nobody answers any more: a one-line UNAVAILABLE.
  EXPECT_EQ(run(psctl + "/admin.token status", &err), 1);
  EXPECT_TRUE(absl::StartsWith(err, "psctl: UNAVAILABLE")) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
}

}  // namespace
}  // namespace psd
