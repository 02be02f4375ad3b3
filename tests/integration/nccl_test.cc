// The NCCL data plane through real `psd shard` processes.
//
// Everywhere: a CPU shard refuses the Shard.Nccl stream with
// FAILED_PRECONDITION naming its device (through NcclGroup and the raw
// stub), and `--nccl-plane` on a CPU device stops the shard at start.
// Where a GPU is present (else they skip, saying why): a gpu:0 shard without
// the flag refuses naming the flag, and one with it answers a trainer's join
// over gRPC with the unique id, rank 1 and size 2. NCCL refuses two ranks on
// one GPU, so no collective between the shard and a trainer runs here.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "device/device.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/grpc_status.h"
#include "psd/nccl_group.h"
#include "psd/shard.grpc.pb.h"
#include "shard_process.h"

namespace psd {
namespace integration {
namespace {

using ::testing::HasSubstr;

NcclRequest JoinRequest(const std::string& group, const std::string& variable, int trainers) {
  NcclRequest request;
  request.mutable_join()->set_group(group);
  request.mutable_join()->add_variables(variable);
  request.mutable_join()->set_num_trainers(trainers);
  return request;
}

// Opens a Shard.Nccl stream to `address`, sends `request` and returns the
// first reply, or the stream's status if it ended instead.
absl::StatusOr<NcclReply> JoinOverStub(const std::string& address, const NcclRequest& request) {
  auto stub = Shard::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->Nccl(&context);
  NcclReply reply;
  if (stream->Write(request) && stream->Read(&reply)) {
    stream->WritesDone();
    context.TryCancel();
    stream->Finish();
    return reply;
  }
  absl::Status status = FromGrpcStatus(stream->Finish());
  if (status.ok()) status = absl::InternalError("the stream ended without a reply");
  return status;
}

void CreateFloat(const ShardProcess& shard, const std::string& name) {
  auto client = shard.Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  auto value = Tensor::FromVector<float>(TensorShape{4}, {1, 2, 3, 4});
  ASSERT_TRUE(value.ok());
  ASSERT_TRUE((*client)->Create(name, *value).ok());
}

TEST(NcclShardTest, CpuShardRefusesJoin) {
  auto shard = ShardProcess::Start();
  ASSERT_TRUE(shard.ok()) << shard.status();
  CreateFloat(**shard, "w");

  absl::StatusOr<NcclReply> reply = JoinOverStub((*shard)->address(), JoinRequest("g", "w", 1));
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kFailedPrecondition) << reply.status();
  EXPECT_THAT(reply.status().message(), HasSubstr("keeps its variables on cpu:0"));

  client::NcclGroupOptions options;
  options.group = "g";
  options.variables = {"w"};
  auto group = client::NcclGroup::Join((*shard)->address(), options);
  ASSERT_FALSE(group.ok());
#if defined(PSD_WITH_NCCL)
  EXPECT_EQ(group.status().code(), absl::StatusCode::kFailedPrecondition) << group.status();
  EXPECT_THAT(group.status().message(), HasSubstr("cpu:0"));
#else
  // This client cannot take part, so it does not join.
  EXPECT_EQ(group.status().code(), absl::StatusCode::kUnimplemented) << group.status();
#endif

  // The shard still serves gRPC as before.
  auto client = (*shard)->Connect();
  ASSERT_TRUE(client.ok());
  auto w = (*client)->Read("w");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->ToVector<float>(), (std::vector<float>{1, 2, 3, 4}));
}

TEST(NcclShardTest, FlagNeedsAGpuDevice) {
  const std::string command = absl::StrCat(
      PSD_BINARY, " shard --id 0 --listen 127.0.0.1:0 --http-listen '' --nccl-plane 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_NE(WEXITSTATUS(status), 0) << output;
  EXPECT_THAT(output, HasSubstr("--nccl-plane needs a gpu:N device, not cpu:0"));
}

// gpu:0 shards: skipped, with the reason, where this machine or build has
// no GPU (PSD_REQUIRE_GPU=1 makes them fail instead).
class NcclGpuShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto device = NewDevice("gpu:0");
    if (!device.ok()) {
      const char* require = std::getenv("PSD_REQUIRE_GPU");
      if (require != nullptr && std::string(require) == "1") FAIL() << device.status();
      GTEST_SKIP() << device.status().message();
    }
  }
};

TEST_F(NcclGpuShardTest, PlaneOffByDefault) {
  ShardProcessOptions options;
  options.extra_args = {"--device", "gpu:0"};
  auto shard = ShardProcess::Start(options);
  ASSERT_TRUE(shard.ok()) << shard.status();
  CreateFloat(**shard, "w");
  absl::StatusOr<NcclReply> reply = JoinOverStub((*shard)->address(), JoinRequest("g", "w", 1));
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kFailedPrecondition) << reply.status();
  EXPECT_THAT(reply.status().message(), HasSubstr("the NCCL data plane is off on shard 0 (gpu:0)"));
}

TEST_F(NcclGpuShardTest, JoinAnswersOverGrpc) {
  ShardProcessOptions options;
  options.extra_args = {"--device", "gpu:0", "--nccl-plane"};
  auto shard = ShardProcess::Start(options);
  ASSERT_TRUE(shard.ok()) << shard.status();
  CreateFloat(**shard, "w");
  absl::StatusOr<NcclReply> reply = JoinOverStub((*shard)->address(), JoinRequest("g", "w", 1));
#if defined(PSD_WITH_NCCL)
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->has_joined());
  EXPECT_EQ(reply->joined().rank(), 1);
  EXPECT_EQ(reply->joined().size(), 2);
  EXPECT_EQ(reply->joined().device(), "gpu:0");
  EXPECT_EQ(reply->joined().unique_id().size(), 128u);
#else
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnimplemented) << reply.status();
#endif
  // A stream that does not start with a join is refused.
  NcclRequest collective;
  collective.mutable_collective()->set_op(NCCL_BROADCAST);
  reply = JoinOverStub((*shard)->address(), collective);
  ASSERT_FALSE(reply.ok());
}

}  // namespace
}  // namespace integration
}  // namespace psd
