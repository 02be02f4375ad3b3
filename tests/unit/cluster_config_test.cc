#include "runtime/cluster_config.h"

#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

using ::testing::HasSubstr;

TEST(ClusterConfigTest, ParsesEverySection) {
  auto config = ParseClusterConfig(R"(
coordinator: {listen: "127.0.0.1:7070", state_dir: /var/lib/psd}
shards:
  - {id: 0, listen: "127.0.0.1:7071", memory_limit: 4GiB}
  - {id: 1, listen: "127.0.0.1:7072", advertise: "host1:7072", device: cpu}
checkpoint: {dir: /ckpt, max_to_keep: 3, interval: 10m, keep_checkpoint_every_n_hours: 2}
security: {tls_ca: ca.pem}
)",
                                   "cluster.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->shards.size(), 2u);
  EXPECT_EQ(config->FindShard(0)->memory_limit, int64_t{4} << 30);
  EXPECT_EQ(config->FindShard(1)->advertise, "host1:7072");
  EXPECT_EQ(config->checkpoint.interval_seconds, 600);
  EXPECT_EQ(config->checkpoint.max_to_keep, 3);
  EXPECT_EQ(config->coordinator.state_dir, "/var/lib/psd");
  EXPECT_EQ(config->FindShard(7), nullptr);
}

TEST(ClusterConfigTest, StagingPoolBytesIsAShardKey) {
  auto config = ParseClusterConfig(
      "shards:\n  - {id: 0, staging_pool_bytes: 256MiB}\n  - {id: 1}\n  - {id: 2, "
      "staging_pool_bytes: 0}\n",
      "c.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->FindShard(0)->staging_pool_bytes, int64_t{256} << 20);
  EXPECT_EQ(config->FindShard(1)->staging_pool_bytes, int64_t{1} << 30);  // the default
  EXPECT_EQ(config->FindShard(2)->staging_pool_bytes, 0);
  EXPECT_THAT(
      ParseClusterConfig("shards: [{staging_pool_bytes: lots}]", "c").status().message(),
      HasSubstr("staging_pool_bytes"));
}

TEST(ClusterConfigTest, UnknownKeyIsAnErrorNamingIt) {
  auto config = ParseClusterConfig("shards:\n  - {id: 0, memory_limt: 1GiB}\n", "c.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("c.yaml: shards[0]: unknown key 'memory_limt'"));
  EXPECT_FALSE(ParseClusterConfig("shard: []\n", "c.yaml").ok());
}

TEST(ClusterConfigTest, RepeatedShardIdAndBadValuesAreErrors) {
  EXPECT_THAT(ParseClusterConfig("shards: [{id: 1}, {id: 1}]", "c").status().message(),
              HasSubstr("repeated"));
  EXPECT_THAT(ParseClusterConfig("shards: [{memory_limit: lots}]", "c").status().message(),
              HasSubstr("memory_limit"));
  EXPECT_THAT(ParseClusterConfig("shards: [{id: zero}]", "c").status().message(),
              HasSubstr("shards[0].id"));
}

TEST(ClusterConfigTest, PeriodicShutdownAndRestoreLostCheckpointKeys) {
  auto config = ParseClusterConfig(R"(
checkpoint:
  dir: /ckpt
  interval: 30s
  every_n_steps: 100
  global_step: global_step
  save_on_shutdown: true
  restore_lost: true
)",
                                   "c.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->checkpoint.interval_seconds, 30);
  EXPECT_EQ(config->checkpoint.every_n_steps, 100);
  EXPECT_EQ(config->checkpoint.global_step, "global_step");
  EXPECT_TRUE(config->checkpoint.save_on_shutdown);
  EXPECT_TRUE(config->checkpoint.restore_lost);

  auto defaults = ParseClusterConfig("checkpoint: {dir: /ckpt}\n", "c.yaml");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_FALSE(defaults->checkpoint.save_on_shutdown);
  EXPECT_FALSE(defaults->checkpoint.restore_lost);

  EXPECT_THAT(ParseClusterConfig("checkpoint: {every_n_steps: 10}\n", "c").status().message(),
              HasSubstr("global_step"));
  EXPECT_THAT(ParseClusterConfig("checkpoint: {save_on_shutdown: maybe}\n", "c").status().message(),
              HasSubstr("checkpoint.save_on_shutdown"));
  EXPECT_THAT(ParseClusterConfig("checkpoint: {restore_lots: true}\n", "c").status().message(),
              HasSubstr("unknown key 'restore_lots'"));
}

TEST(ClusterConfigTest, ByteSizesAndDurations) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096);
  EXPECT_EQ(*ParseByteSize("512MiB"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("1.5 GB"), 1500000000);
  EXPECT_EQ(*ParseByteSize("2k"), 2000);
  EXPECT_FALSE(ParseByteSize("12 parsecs").ok());
  EXPECT_FALSE(ParseByteSize("-1").ok());
  EXPECT_FALSE(ParseByteSize("99999999TiB").ok());
  EXPECT_EQ(*ParseDuration("90s"), 90);
  EXPECT_EQ(*ParseDuration("2h"), 7200);
  EXPECT_EQ(*ParseDuration("0.5"), 0.5);
  EXPECT_FALSE(ParseDuration("soon").ok());
}

// Each bad value fails with the file, the key and the value in the message.
TEST(ClusterConfigTest, BadValuesNameTheirKey) {
  const std::pair<const char*, const char*> cases[] = {
      {"coordinator: {listen: 7070}\n", "c: coordinator.listen: '7070' is not HOST:PORT"},
      {"coordinator: {advertise: \"ps0:http\"}\n", "c: coordinator.advertise: 'ps0:http'"},
      {"coordinator: {http_listen: \"127.0.0.1:70000\"}\n", "c: coordinator.http_listen"},
      {"shards: [{listen: \"::1:7071\"}]\n", "c: shards[0].listen: '::1:7071': an IPv6 host"},
      {"shards: [{device: tpu}]\n", "c: shards[0].device: unknown device 'tpu'"},
      {"shards: [{device: \"gpu:x\"}]\n", "c: shards[0].device: unknown device 'gpu:x'"},
      {"shards: [{http_listen: nowhere}]\n", "c: shards[0].http_listen: 'nowhere'"},
      {"shards: [{host: \"rack 1\"}]\n", "c: shards[0].host: host 'rack 1' has ' '"},
      {"checkpoint: {max_to_keep: -1}\n", "c: checkpoint.max_to_keep: must be >= 0"},
      {"checkpoint: {keep_checkpoint_every_n_hours: 0}\n",
       "c: checkpoint.keep_checkpoint_every_n_hours: must be > 0"},
      {"checkpoint: {interval: soon}\n", "c: checkpoint.interval: invalid duration 'soon'"},
      {"checkpoint: {interval: 0.0001s}\n",
       "c: checkpoint.interval: '0.0001s' is under the shortest time between periodic "
       "checkpoints, 1s (0 turns them off)"},
      {"security: {tls_cert: s.pem}\n",
       "c: security.tls_key: missing; tls_cert and tls_key go together"},
      {"security: {tls_client_auth: sometimes}\n", "c: security.tls_client_auth: cannot read"},
      {"security: {tls_key: [a, b]}\n", "c: security.tls_key: cannot read"},
  };
  for (const auto& [yaml, message] : cases) {
    auto config = ParseClusterConfig(yaml, "c");
    ASSERT_FALSE(config.ok()) << yaml;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << yaml;
    EXPECT_THAT(config.status().message(), HasSubstr(message)) << yaml;
  }
}

TEST(ClusterConfigTest, NewKeysAndAcceptedForms) {
  auto config = ParseClusterConfig(R"(
coordinator: {listen: "[::1]:7070", http_listen: "0.0.0.0:9090"}
shards:
  - {id: 0, device: "gpu:1", http_listen: "", host: node-a.rack-3}
  - {id: 1, device: "cpu:0", listen: "localhost:0"}
security: {tls_cert: s.pem, tls_key: s.key, tls_client_auth: true}
)",
                                   "c");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->coordinator.http_listen, "0.0.0.0:9090");
  EXPECT_EQ(config->FindShard(0)->device, "gpu:1");
  EXPECT_EQ(config->FindShard(0)->host, "node-a.rack-3");
  EXPECT_EQ(config->FindShard(1)->host, "");  // a failure domain of its own
  EXPECT_EQ(config->FindShard(0)->http_listen, "");  // off
  EXPECT_EQ(config->FindShard(1)->http_listen, "127.0.0.1:0");  // the default
  EXPECT_TRUE(config->security.tls_client_auth);
}

TEST(ClusterConfigTest, HttpMaxConnectionsPerProcess) {
  auto config = ParseClusterConfig(
      "coordinator: {http_max_connections: 8}\nshards: [{id: 0, http_max_connections: 16}, {id: "
      "1}]\n",
      "c.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->coordinator.http_max_connections, 8);
  EXPECT_EQ(config->FindShard(0)->http_max_connections, 16);
  EXPECT_EQ(config->FindShard(1)->http_max_connections, kDefaultHttpMaxConnections);
  EXPECT_THAT(
      ParseClusterConfig("shards: [{http_max_connections: 0}]", "c.yaml").status().message(),
      HasSubstr("c.yaml: shards[0].http_max_connections: must be >= 1"));
  EXPECT_THAT(
      ParseClusterConfig("coordinator: {http_max_connections: many}", "c.yaml").status().message(),
      HasSubstr("coordinator.http_max_connections"));
}

// The cluster's replication factor (docs/replication.md): 1 unless set,
// 1 to 3.
TEST(ClusterConfigTest, ReplicationIsOneToThree) {
  auto config = ParseClusterConfig("coordinator: {replication: 3}\n", "c.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->coordinator.replication, 3);
  EXPECT_EQ(ParseClusterConfig("coordinator: {}\n", "c.yaml")->coordinator.replication, 1);
  for (const char* bad : {"0", "4", "-1"}) {
    EXPECT_THAT(ParseClusterConfig(absl::StrCat("coordinator: {replication: ", bad, "}\n"),
                                   "c.yaml")
                    .status()
                    .message(),
                HasSubstr(absl::StrCat("c.yaml: coordinator.replication: must be 1, 2 or 3 (shards "
                                       "holding each part), not ",
                                       bad)));
  }
}

TEST(ClusterConfigTest, MissingFileIsNotFoundNamingIt) {
  auto config = LoadClusterConfig("/nonexistent/psd-cluster.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("/nonexistent/psd-cluster.yaml"));
}

// Every example in configs/ loads with the real loader.
TEST(ClusterConfigTest, EveryExampleInConfigsParses) {
  std::set<std::string> seen;
  for (const auto& entry : std::filesystem::directory_iterator(PSD_CONFIGS_DIR)) {
    if (entry.path().extension() != ".yaml") continue;
    auto config = LoadClusterConfig(entry.path().string());
    EXPECT_TRUE(config.ok()) << config.status();
    if (!config.ok()) continue;
    EXPECT_FALSE(config->shards.empty()) << entry.path();
    seen.insert(entry.path().filename().string());
    const std::string name = entry.path().filename().string();
    if (name == "local-tls.yaml") {
      EXPECT_FALSE(config->security.tls_cert.empty());
      EXPECT_FALSE(config->security.token_file.empty());
    }
    if (name == "multi-host.yaml") {
      EXPECT_NE(config->coordinator.advertise, config->coordinator.listen);
      for (const ShardConfig& s : config->shards) EXPECT_NE(s.advertise, s.listen);
      EXPECT_FALSE(config->checkpoint.dir.empty());
    }
    if (name == "gpu-shard.yaml") EXPECT_EQ(config->FindShard(0)->device, "gpu:0");
    if (name == "replicated.yaml") {
      EXPECT_EQ(config->coordinator.replication, 2);
      EXPECT_GE(config->shards.size(), 3u);  // a factor with a spare shard to re-replicate on
    }
  }
  for (const char* expected : {"local.yaml", "local-tls.yaml", "multi-host.yaml", "gpu-shard.yaml",
                               "replicated.yaml"}) {
    EXPECT_EQ(seen.count(expected), 1u) << expected;
  }
}

}  // namespace
}  // namespace psd

namespace psd {
namespace {

TEST(ClusterConfigTest, CheckpointRootsAsAListOrACommaSeparatedString) {
  auto list = ParseClusterConfig("checkpoint: {dir: /c, roots: [/a, '/b,/d']}\n", "c.yaml");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->checkpoint.roots, (std::vector<std::string>{"/a", "/b", "/d"}));
  auto one = ParseClusterConfig("checkpoint: {roots: ' /a , ,/b'}\n", "c.yaml");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->checkpoint.roots, (std::vector<std::string>{"/a", "/b"}));
  EXPECT_EQ(SplitCheckpointRoots(""), std::vector<std::string>{});
}

}  // namespace
}  // namespace psd
