#include "runtime/cluster_config.h"

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

}  // namespace
}  // namespace psd
