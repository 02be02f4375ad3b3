// Replicated parts end to end (docs/replication.md): a real coordinator
// makes a replicated part's backup on another shard, puts it in the
// in-sync set, and after the primary's SIGKILL promotes it; a trainer that
// counted with exactly-once assign_adds before and after the kill finds
// every acknowledged add, none twice. Skipped while the coordinator
// refuses replication above 1 (kReplicationOffered).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/session.h"
#include "psd/status.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Session;
using client::Variable;

// Part 0 of `name` as the coordinator's registry has it now.
absl::StatusOr<PartHandle> PartOf(const std::string& coordinator, const std::string& name) {
  auto stub = Coordinator::NewStub(
      grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()));
  LookupVariableRequest req;
  req.set_name(name);
  LookupVariableResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  PSD_RETURN_IF_ERROR(FromGrpcStatus(stub->LookupVariable(&ctx, req, &resp)));
  if (resp.handle().parts_size() == 0) return absl::NotFoundError("no parts");
  return resp.handle().parts(0);
}

TEST(ReplicationFailoverTest, EveryAcknowledgedAddSurvivesThePrimarysSigkill) {
  TestClusterOptions options;
  options.num_shards = 3;
  options.coordinator_args = {"--heartbeat-interval", "0.2", "--lease-period", "1",
                              "--liveness-timeout", "1"};
  PSD_ASSERT_OK_AND_ASSIGN(auto cluster, TestCluster::Start(options));
  PSD_ASSERT_OK_AND_ASSIGN(auto session, Session::Open(cluster->coordinator_address()));
  GetVariableOptions o;
  o.dtype = DT_FLOAT;
  o.shape = TensorShape{4};
  o.replication = 2;
  absl::StatusOr<Variable> declared = session->GetVariable("count", o);
  if (absl::IsUnimplemented(declared.status())) {
    GTEST_SKIP() << "the coordinator does not offer replication yet: " << declared.status();
  }
  ASSERT_TRUE(IsOk(declared));
  Variable count = *declared;
  ASSERT_TRUE(IsOk(count.Assign(*Tensor::FromVector<float>(TensorShape{4}, {0, 0, 0, 0}))));
  // Until the registry has the backup in sync (bounded: 600 polls, 100 ms).
  PartHandle part;
  for (int i = 0; i < 600; ++i) {
    PSD_ASSERT_OK_AND_ASSIGN(part, PartOf(cluster->coordinator_address(), "count"));
    if (part.in_sync_shards_size() > 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_GT(part.in_sync_shards_size(), 0) << part.DebugString();
  const int primary = part.shard_id();
  // A handle that knows the part's backups (the first predates them).
  o.reuse = REUSE_TRUE;
  PSD_ASSERT_OK_AND_ASSIGN(count, session->GetVariable("count", o));
  const Tensor one = *Tensor::FromVector<float>(TensorShape{4}, {1, 1, 1, 1});
  int acked = 0;
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(IsOk(count.AssignAdd(one)));
    ++acked;
  }
  ASSERT_TRUE(IsOk(cluster->KillShard(primary)));
  const absl::Time killed = absl::Now();
  // The session waits for the failover and retries there.
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(IsOk(count.AssignAdd(one)));
    if (i == 0) {
      std::printf("writes resumed %.2f s after the primary's SIGKILL (lease period 1 s)\n",
                  absl::ToDoubleSeconds(absl::Now() - killed));
    }
    ++acked;
  }
  PSD_ASSERT_OK_AND_ASSIGN(part, PartOf(cluster->coordinator_address(), "count"));
  EXPECT_NE(part.shard_id(), primary);
  EXPECT_GT(part.epoch(), 0u);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, count.Read());
  EXPECT_EQ(value.ToVector<float>(), std::vector<float>(4, static_cast<float>(acked)));
}

}  // namespace
}  // namespace integration
}  // namespace psd
