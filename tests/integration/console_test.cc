// The coordinator's console over real processes: a coordinator and two
// shards with variables declared (one left uninitialized) and a checkpoint
// saved; `/` and `/console.json` over plain HTTP list the shards, each
// variable with its parts' placement and state, and the checkpoint, with
// the same figures `psctl status` takes (ListShards). Then a TLS cluster
// with bearer tokens: no token 401, trainer 403, admin 200, never data
// without the admin token. No timed assertions: waits are bounded polls.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "../common/http_get.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "psd/coordinator.grpc.pb.h"
#include "psd/initializers.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Saver;
using client::Session;
using testing_http::HttpGet;
using testing_http::HttpReply;
using Json = nlohmann::json;
namespace partitioners = client::partitioners;
namespace init = client::init;

int ReadPort(const std::string& path) {
  std::ifstream in(path);
  int port = 0;
  in >> port;
  return port;
}

class ConsoleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_console_test_");
    ASSERT_FALSE(dir_.empty());
    TestClusterOptions options;
    options.coordinator_args = {"--heartbeat-interval", "0.2",
                                "--checkpoint-dir",     dir_ + "/ckpt",
                                "--http-port-file",     dir_ + "/coordinator.http"};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    http_port_ = ReadPort(dir_ + "/coordinator.http");
    ASSERT_GT(http_port_, 0);
  }
  void TearDown() override {
    cluster_.reset();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  absl::StatusOr<HttpReply> Get(const std::string& target) {
    return HttpGet("127.0.0.1", http_port_, target);
  }

  // /console.json once every part's state is known (the sampler looks at
  // the shards every few seconds); bounded.
  Json JsonWithPartStates() {
    Json json;
    for (int attempt = 0; attempt < 300; ++attempt) {
      auto reply = Get("/console.json");
      EXPECT_TRUE(reply.ok()) << reply.status();
      if (!reply.ok()) return json;
      json = Json::parse(reply->body);
      bool known = !json["variables"].empty();
      for (const Json& v : json["variables"]) known = known && v["initialized"] != "unknown";
      if (known) return json;
      absl::SleepFor(absl::Milliseconds(100));
    }
    ADD_FAILURE() << "part states never known: " << json.dump();
    return json;
  }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  int http_port_ = 0;
};

TEST_F(ConsoleTest, ListsShardsVariablesAndTheCheckpoint) {
  PSD_ASSERT_OK_AND_ASSIGN(auto session, Session::Open(cluster_->coordinator_address()));
  GetVariableOptions w;
  w.shape = TensorShape{10, 4};
  w.partitioner = partitioners::FixedSize(2);
  w.initializer = init::Zeros();
  w.initialize = true;
  ASSERT_TRUE(IsOk(session->GetVariable("model/dense/w", w)));
  PSD_ASSERT_OK_AND_ASSIGN(auto saver, Saver::Create(cluster_->coordinator_address()));
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver->Save("", 42));
  // Declared after the save (a save needs every variable initialized).
  GetVariableOptions later;
  later.shape = TensorShape{3};
  later.initializer = init::Zeros();
  ASSERT_TRUE(IsOk(session->GetVariable("model/later", later)));

  const Json json = JsonWithPartStates();
  // Shards: the figures ListShards (psctl status) gives.
  auto channel =
      grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials());
  ListShardsResponse listed;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Coordinator::NewStub(channel)->ListShards(&ctx, ListShardsRequest(), &listed).ok());
  ASSERT_EQ(json["shards"].size(), 2u) << json.dump();
  int64_t parts = 0;
  for (int k = 0; k < 2; ++k) {
    const Json& s = json["shards"][k];
    EXPECT_EQ(s["id"], k);
    EXPECT_EQ(s["address"], cluster_->shard_address(k));
    EXPECT_EQ(s["live"], true);
    EXPECT_EQ(s["device"], listed.shards(k).device());
    EXPECT_EQ(s["placed_parts"], listed.shards(k).placed_parts());
    EXPECT_EQ(s["placed_bytes"], listed.shards(k).placed_bytes());
    parts += s["placed_parts"].get<int64_t>();
  }
  // Placed parts come from the registry: exact, never a stale zero.
  EXPECT_EQ(parts, 3);
  EXPECT_EQ(json["variables_total"], 2);
  // Variables, in creation order, each part placed and its state known.
  ASSERT_EQ(json["variables"].size(), 2u);
  const Json& dense = json["variables"][0];
  EXPECT_EQ(dense["name"], "model/dense/w");
  EXPECT_EQ(dense["kind"], "dense");
  EXPECT_EQ(dense["dtype"], "float32");
  EXPECT_EQ(dense["shape"], "[10,4]");
  EXPECT_EQ(dense["partitions"], 2);
  EXPECT_EQ(dense["initialized"], "yes");
  ASSERT_EQ(dense["parts"].size(), 2u);
  EXPECT_EQ(dense["parts"][0]["name"], "model/dense/w/part_0");
  EXPECT_EQ(dense["parts"][0]["state"], "initialized");
  const Json& uninitialized = json["variables"][1];
  EXPECT_EQ(uninitialized["name"], "model/later");
  EXPECT_EQ(uninitialized["initialized"], "no");
  // The checkpoint, newest first.
  ASSERT_EQ(json["checkpoints"]["list"].size(), 1u) << json.dump();
  const Json& ckpt = json["checkpoints"]["list"][0];
  EXPECT_EQ(ckpt["prefix"], prefix);
  EXPECT_EQ(ckpt["step"], 42);
  EXPECT_GT(ckpt["bytes"].get<int64_t>(), 0);
  EXPECT_EQ(ckpt["retention"], "latest, retained");

  // The page shows the same.
  PSD_ASSERT_OK_AND_ASSIGN(HttpReply page, Get("/"));
  EXPECT_EQ(page.status, 200);
  for (const std::string& text :
       {cluster_->shard_address(0), cluster_->shard_address(1), std::string("model/dense/w"),
        std::string("model/later"), std::string("uninitialized"), prefix,
        std::string("Last 15 minutes"), std::string("<svg")}) {
    EXPECT_NE(page.body.find(text), std::string::npos) << text;
  }
  PSD_ASSERT_OK_AND_ASSIGN(HttpReply main, Get("/console/main"));
  EXPECT_EQ(main.status, 200);
  EXPECT_NE(main.body.find("model/dense/w"), std::string::npos);
  // /metrics is still served beside it.
  PSD_ASSERT_OK_AND_ASSIGN(HttpReply metrics, Get("/metrics"));
  EXPECT_NE(metrics.body.find("psd_coordinator_shard_placed_parts"), std::string::npos);
}

TEST_F(ConsoleTest, ChartSamplesAccumulate) {
  // The sampler takes one every 5 s; wait (bounded) for two.
  Json json;
  for (int attempt = 0; attempt < 300; ++attempt) {
    auto reply = Get("/console.json");
    ASSERT_TRUE(reply.ok()) << reply.status();
    json = Json::parse(reply->body);
    if (json["samples"].size() >= 2) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_GE(json["samples"].size(), 2u) << json.dump();
  const Json& last = json["samples"].back();
  EXPECT_GE(last["calls_per_second"].get<double>(), 0);
  // The shards report memory; both have a line.
  EXPECT_EQ(last["shard_memory_used"].size(), 2u);
  EXPECT_LT(json["samples"][0]["time"].get<double>(), last["time"].get<double>());
}

// The shards' own op counters reach the console's charts: after some
// reads and writes of a variable with a part on each shard, /console.json's
// samples count at least the ops sent to each shard (a bounded wait for the
// heartbeats and the sampler), never more than the shard's own /metrics
// counted, and carry latency percentiles of those ops.
TEST_F(ConsoleTest, ShardOpRatesCountTheOpsSent) {
  PSD_ASSERT_OK_AND_ASSIGN(auto session, Session::Open(cluster_->coordinator_address()));
  GetVariableOptions options;
  options.shape = TensorShape{10, 4};
  options.partitioner = partitioners::FixedSize(2);
  options.initializer = init::Zeros();
  options.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(auto w, session->GetVariable("traffic/w", options));
  ASSERT_EQ(w.parts().size(), 2u);
  ASSERT_NE(w.parts()[0].shard_id, w.parts()[1].shard_id);
  // Each read or write of w is at least one op on each shard (one per part).
  constexpr int kReads = 40, kWrites = 15;
  const Tensor ones = *Tensor::FromVector<float>(TensorShape{10, 4}, std::vector<float>(40, 1.0f));
  for (int i = 0; i < kReads; ++i) ASSERT_TRUE(w.Read().ok());
  for (int i = 0; i < kWrites; ++i) ASSERT_TRUE(IsOk(w.AssignAdd(ones)));

  // Sums over the window, per shard.
  const auto window = [](const Json& json, const std::string& shard, const char* kind) {
    double sum = 0;
    for (const Json& sample : json["samples"]) {
      if (sample.contains("shard_ops") && sample["shard_ops"].contains(shard)) {
        sum += sample["shard_ops"][shard][kind].get<double>();
      }
    }
    return sum;
  };
  Json json;
  bool counted = false;
  for (int attempt = 0; attempt < 600 && !counted; ++attempt) {
    auto reply = Get("/console.json");
    ASSERT_TRUE(reply.ok()) << reply.status();
    json = Json::parse(reply->body);
    counted = true;
    for (const std::string shard : {"0", "1"}) {
      counted = counted && window(json, shard, "reads") >= kReads &&
                window(json, shard, "writes") >= kWrites;
    }
    if (!counted) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(counted) << "the console never counted the ops sent: " << json.dump();

  double cluster_reads = 0;
  bool latency = false;
  for (const Json& sample : json["samples"]) {
    // Rates are never negative; an interval with reads has their percentiles.
    EXPECT_GE(sample["shard_reads_per_second"].get<double>(), 0);
    EXPECT_GE(sample["shard_writes_per_second"].get<double>(), 0);
    cluster_reads += sample["shard_reads"].get<double>();
    if (sample["shard_reads"].get<double>() > 0 && !sample["shard_read_p50_seconds"].is_null()) {
      latency = true;
      EXPECT_GT(sample["shard_read_p99_seconds"].get<double>(), 0);
      EXPECT_LE(sample["shard_read_p50_seconds"].get<double>(),
                sample["shard_read_p99_seconds"].get<double>());
    }
  }
  EXPECT_TRUE(latency) << json.dump();
  EXPECT_GE(cluster_reads, 2 * kReads);

  // Never more than the shard's own /metrics counted (scraped after, so
  // they can only have grown).
  for (int k = 0; k < 2; ++k) {
    PSD_ASSERT_OK_AND_ASSIGN(int port, cluster_->shard_http_port(k));
    PSD_ASSERT_OK_AND_ASSIGN(HttpReply metrics, HttpGet("127.0.0.1", port, "/metrics"));
    ASSERT_EQ(metrics.status, 200);
    double reads = 0, writes = 0;
    for (absl::string_view line : absl::StrSplit(metrics.body, '\n')) {
      if (!absl::StartsWith(line, "psd_rpc_total{")) continue;
      const double value = std::stod(std::string(line.substr(line.rfind(' ') + 1)));
      for (const char* m : {"Read\"", "Gather\"", "ReadStream\""}) {
        if (absl::StrContains(line, absl::StrCat("method=\"psd.Shard/", m))) reads += value;
      }
      for (const char* m : {"Assign\"", "Scatter\"", "CountUpTo\"", "AssignStream\"",
                            "ApplyDense\"", "ApplySparse\""}) {
        if (absl::StrContains(line, absl::StrCat("method=\"psd.Shard/", m))) writes += value;
      }
    }
    const std::string shard = std::to_string(k);
    // The shard's counters as its last heartbeat carried them (what psctl
    // status lists): at least what the window counted, at most /metrics.
    const Json& listed = json["shards"][k];
    EXPECT_GE(listed["read_ops"].get<double>(), window(json, shard, "reads"));
    EXPECT_LE(listed["read_ops"].get<double>(), reads);
    EXPECT_GE(listed["millis_since_traffic"].get<int64_t>(), 0);
    std::printf("shard %d: the console counted %.0f reads, %.0f writes; its /metrics %.0f, %.0f\n",
                k, window(json, shard, "reads"), window(json, shard, "writes"), reads, writes);
    EXPECT_LE(window(json, shard, "reads"), reads) << "shard " << k;
    EXPECT_LE(window(json, shard, "writes"), writes) << "shard " << k;
  }
}

// A TLS coordinator and shard with tokens (scripts/make-test-certs.sh).
class ConsoleTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_console_tls_");
    ASSERT_FALSE(dir_.empty());
    const std::string certs = absl::StrCat(PSD_MAKE_TEST_CERTS, " ", dir_, " >/dev/null");
    ASSERT_EQ(std::system(certs.c_str()), 0) << certs;
    auto coordinator = ChildProcess::Start(
        Flags({PSD_BINARY, "--log-level", "warn", "coordinator", "--listen", "127.0.0.1:0",
               "--heartbeat-interval", "0.2", "--port-file", dir_ + "/coordinator.port",
               "--http-listen", "127.0.0.1:0", "--http-port-file", dir_ + "/coordinator.http"}),
        dir_ + "/coordinator.port");
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    auto shard = ChildProcess::Start(
        Flags({PSD_BINARY, "--log-level", "warn", "shard", "--id", "0", "--listen", "127.0.0.1:0",
               "--port-file", dir_ + "/shard.port", "--coordinator",
               absl::StrCat("127.0.0.1:", coordinator_->port())}),
        dir_ + "/shard.port");
    ASSERT_TRUE(shard.ok()) << shard.status();
    shard_ = *std::move(shard);
    http_port_ = ReadPort(dir_ + "/coordinator.http");
    ASSERT_GT(http_port_, 0);
  }
  void TearDown() override {
    shard_.reset();
    coordinator_.reset();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  std::vector<std::string> Flags(std::vector<std::string> args) {
    for (const std::string& flag :
         {"--tls-ca=" + dir_ + "/ca.pem", "--tls-cert=" + dir_ + "/server.pem",
          "--tls-key=" + dir_ + "/server.key", "--token-file=" + dir_ + "/tokens"}) {
      args.push_back(flag);
    }
    return args;
  }

  std::string coordinator_address() const {
    return absl::StrCat("127.0.0.1:", coordinator_->port());
  }

  std::string Token(const std::string& role) {
    std::ifstream in(dir_ + "/" + role + ".token");
    std::string token;
    in >> token;
    return token;
  }

  absl::StatusOr<HttpReply> Get(const std::string& target, const std::string& authorization = "") {
    return HttpGet("localhost", http_port_, target, dir_ + "/ca.pem", authorization);
  }

  std::string dir_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::unique_ptr<ChildProcess> shard_;
  int http_port_ = 0;
};

TEST_F(ConsoleTlsTest, OnlyTheAdminTokenSeesTheConsole) {
  const std::string admin = Token("admin");
  const std::string trainer = Token("trainer");
  ASSERT_FALSE(admin.empty());
  ASSERT_FALSE(trainer.empty());
  for (const std::string target : {"/", "/console.json", "/console/main"}) {
    SCOPED_TRACE(target);
    PSD_ASSERT_OK_AND_ASSIGN(HttpReply none, Get(target));
    EXPECT_EQ(none.status, 401);
    EXPECT_NE(none.body.find("admin token"), std::string::npos);
    EXPECT_EQ(none.body.find("127.0.0.1:" + std::to_string(shard_->port())), std::string::npos);
    PSD_ASSERT_OK_AND_ASSIGN(HttpReply as_trainer, Get(target, "Bearer " + trainer));
    EXPECT_EQ(as_trainer.status, 403);
    EXPECT_EQ(as_trainer.body.find("\"shards\""), std::string::npos);
    PSD_ASSERT_OK_AND_ASSIGN(HttpReply in_query, Get(target + "?token=" + trainer));
    EXPECT_EQ(in_query.status, 403);
  }
  // The admin token, as a header or in the page's address; the shard shows
  // once it registered (bounded wait).
  const std::string shard = "127.0.0.1:" + std::to_string(shard_->port());
  HttpReply page;
  for (int attempt = 0; attempt < 300; ++attempt) {
    PSD_ASSERT_OK_AND_ASSIGN(page, Get("/?token=" + admin));
    ASSERT_EQ(page.status, 200);
    if (page.body.find(shard) != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(page.body.find(shard), std::string::npos) << page.body;
  PSD_ASSERT_OK_AND_ASSIGN(HttpReply json, Get("/console.json", "Bearer " + admin));
  EXPECT_EQ(json.status, 200);
  EXPECT_EQ(Json::parse(json.body)["shards"][0]["address"], shard);

  // A variable's state comes from its shard, asked with the coordinator's
  // node token: known on a token cluster too (bounded wait).
  client::SessionOptions options;
  options.coordinator_retry_budget = absl::Seconds(10);
  options.shard.security.tls_ca = dir_ + "/ca.pem";
  options.shard.security.token_file = dir_ + "/trainer.token";
  PSD_ASSERT_OK_AND_ASSIGN(auto session, Session::Open(coordinator_address(), options));
  GetVariableOptions v;
  v.shape = TensorShape{3};
  v.initializer = init::Zeros();
  v.initialize = true;
  ASSERT_TRUE(IsOk(session->GetVariable("secure/v", v)));
  Json view;
  for (int attempt = 0; attempt < 300; ++attempt) {
    PSD_ASSERT_OK_AND_ASSIGN(HttpReply reply, Get("/console.json", "Bearer " + admin));
    view = Json::parse(reply.body);
    if (!view["variables"].empty() && view["variables"][0]["initialized"] != "unknown") break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(view["variables"].size(), 1u) << view.dump();
  EXPECT_EQ(view["variables"][0]["name"], "secure/v");
  EXPECT_EQ(view["variables"][0]["initialized"], "yes") << view.dump();
  // /metrics stays as it was (no token asked).
  PSD_ASSERT_OK_AND_ASSIGN(HttpReply metrics, Get("/metrics"));
  EXPECT_EQ(metrics.status, 200);
}

}  // namespace
}  // namespace integration
}  // namespace psd
