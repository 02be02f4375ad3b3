// Security over real processes: a coordinator and a shard serving TLS with
// bearer tokens (certificates and tokens from scripts/make-test-certs.sh),
// the auth matrix (no token, trainer, admin, node) x (data op, admin op,
// node op), plaintext against TLS, node-token registration, and the bind
// policy.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

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
#include "psd/tokens.h"

namespace psd {
namespace {

using integration::ChildProcess;

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/psd_security_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = new std::string(dir_template);
    const std::string command = absl::StrCat(PSD_MAKE_TEST_CERTS, " ", *dir_, " >/dev/null");
    ASSERT_EQ(std::system(command.c_str()), 0) << command;

    const std::string coordinator_port_file = *dir_ + "/coordinator.port";
    auto coordinator = ChildProcess::Start(
        Flags({PSD_BINARY, "--log-level", "warn", "coordinator", "--listen", "127.0.0.1:0",
               "--heartbeat-interval", "0.2", "--port-file", coordinator_port_file}),
        coordinator_port_file);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = coordinator->release();
    const std::string shard_port_file = *dir_ + "/shard-0.port";
    auto shard = ChildProcess::Start(
        Flags({PSD_BINARY, "--log-level", "warn", "shard", "--id", "0", "--listen", "127.0.0.1:0",
               "--port-file", shard_port_file, "--coordinator", CoordinatorAddress()}),
        shard_port_file);
    ASSERT_TRUE(shard.ok()) << shard.status();
    shard_ = shard->release();
  }

  static void TearDownTestSuite() {
    delete shard_;
    delete coordinator_;
    std::system(absl::StrCat("rm -rf ", *dir_).c_str());
    delete dir_;
  }

  // `args` plus the TLS and token flags of the suite's cluster.
  static std::vector<std::string> Flags(std::vector<std::string> args,
                                        const std::string& tokens = "tokens") {
    for (const std::string& flag :
         {"--tls-ca=" + *dir_ + "/ca.pem", "--tls-cert=" + *dir_ + "/server.pem",
          "--tls-key=" + *dir_ + "/server.key", "--token-file=" + *dir_ + "/" + tokens}) {
      args.push_back(flag);
    }
    return args;
  }

  static std::string CoordinatorAddress() {
    return absl::StrCat("127.0.0.1:", coordinator_->port());
  }
  static std::string ShardAddress() { return absl::StrCat("127.0.0.1:", shard_->port()); }

  // A TLS channel sending `role`'s token ("" sends none).
  static std::shared_ptr<grpc::Channel> Channel(const std::string& address,
                                                const std::string& role) {
    ChannelSecurity security;
    security.tls_ca = *dir_ + "/ca.pem";
    if (!role.empty()) security.token_file = *dir_ + "/" + role + ".token";
    auto credentials = internal::MakeChannelCredentials(security);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return grpc::CreateChannel(address, *credentials);
  }

  static std::unique_ptr<grpc::ClientContext> Context() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ctx;
  }

  static grpc::Status ShardRead(const std::string& role) {
    auto stub = Shard::NewStub(Channel(ShardAddress(), role));
    ReadRequest request;
    ReadResponse response;
    return stub->Read(Context().get(), request, &response);
  }
  static grpc::Status ShardGather(const std::string& role) {
    auto stub = Shard::NewStub(Channel(ShardAddress(), role));
    GatherRequest request;
    GatherResponse response;
    return stub->Gather(Context().get(), request, &response);
  }
  static grpc::Status CoordinatorDelete(const std::string& role) {
    auto stub = Coordinator::NewStub(Channel(CoordinatorAddress(), role));
    CoordinatorDeleteVariableRequest request;
    CoordinatorDeleteVariableResponse response;
    return stub->DeleteVariable(Context().get(), request, &response);
  }
  static grpc::Status CoordinatorHeartbeat(const std::string& role) {
    auto stub = Coordinator::NewStub(Channel(CoordinatorAddress(), role));
    HeartbeatRequest request;
    HeartbeatResponse response;
    return stub->Heartbeat(Context().get(), request, &response);
  }
  static grpc::Status ListShards(const std::string& role, ListShardsResponse* response) {
    auto stub = Coordinator::NewStub(Channel(CoordinatorAddress(), role));
    ListShardsRequest request;
    return stub->ListShards(Context().get(), request, response);
  }

  static std::string* dir_;
  static ChildProcess* coordinator_;
  static ChildProcess* shard_;
};

std::string* SecurityTest::dir_ = nullptr;
ChildProcess* SecurityTest::coordinator_ = nullptr;
ChildProcess* SecurityTest::shard_ = nullptr;

// Past authorization: whatever the rpc itself answers to an empty request.
bool Authorized(const grpc::Status& status) {
  return status.error_code() != grpc::StatusCode::UNAUTHENTICATED &&
         status.error_code() != grpc::StatusCode::PERMISSION_DENIED;
}

// (no token, trainer, admin, node) x (data op Shard.Gather, admin op
// Coordinator.DeleteVariable, node op Coordinator.Heartbeat).
TEST_F(SecurityTest, AuthMatrixGivesExpectedCodes) {
  using grpc::StatusCode;
  // No token: UNAUTHENTICATED everywhere.
  EXPECT_EQ(ShardGather("").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CoordinatorDelete("").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CoordinatorHeartbeat("").error_code(), StatusCode::UNAUTHENTICATED);
  // trainer: data ops only.
  EXPECT_TRUE(Authorized(ShardGather("trainer"))) << ShardGather("trainer").error_message();
  EXPECT_EQ(CoordinatorDelete("trainer").error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CoordinatorHeartbeat("trainer").error_code(), StatusCode::PERMISSION_DENIED);
  // admin: admin ops and trainer ops.
  EXPECT_TRUE(Authorized(ShardGather("admin")));
  EXPECT_TRUE(Authorized(CoordinatorDelete("admin"))) << CoordinatorDelete("admin").error_message();
  EXPECT_EQ(CoordinatorHeartbeat("admin").error_code(), StatusCode::PERMISSION_DENIED);
  // node: node ops only.
  EXPECT_EQ(ShardGather("node").error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CoordinatorDelete("node").error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Authorized(CoordinatorHeartbeat("node")))
      << CoordinatorHeartbeat("node").error_message();
  // ...and the shard rpcs the coordinator calls for clients ((psd.also_role)).
  EXPECT_TRUE(Authorized(ShardRead("node"))) << ShardRead("node").error_message();
}

TEST_F(SecurityTest, PermissionDeniedNamesMethodAndRoleNotToken) {
  const grpc::Status status = CoordinatorDelete("trainer");
  ASSERT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "/psd.Coordinator/DeleteVariable"))
      << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "admin")) << status.error_message();
  auto token = LoadClientToken(*dir_ + "/trainer.token", "");
  ASSERT_TRUE(token.ok());
  EXPECT_FALSE(absl::StrContains(status.error_message(), *token));
}

TEST_F(SecurityTest, UnknownTokenIsUnauthenticated) {
  const std::string path = *dir_ + "/bogus.token";
  std::ofstream(path) << "not-a-real-token\n";
  ChannelSecurity security;
  security.tls_ca = *dir_ + "/ca.pem";
  security.token_file = path;
  auto credentials = internal::MakeChannelCredentials(security);
  ASSERT_TRUE(credentials.ok());
  auto stub = Shard::NewStub(grpc::CreateChannel(ShardAddress(), *credentials));
  ReadRequest request;
  ReadResponse response;
  EXPECT_EQ(stub->Read(Context().get(), request, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(SecurityTest, PlaintextClientAgainstTlsServerIsUnavailable) {
  auto stub =
      Shard::NewStub(grpc::CreateChannel(ShardAddress(), grpc::InsecureChannelCredentials()));
  ReadRequest request;
  ReadResponse response;
  const grpc::Status status = stub->Read(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(status.error_message().empty());
}

TEST_F(SecurityTest, ShardWithNodeTokenRegistersAndOneWithoutCannot) {
  // The suite's shard (node token) registers.
  bool registered = false;
  for (int i = 0; i < 100 && !registered; ++i) {
    ListShardsResponse shards;
    grpc::Status status = ListShards("admin", &shards);
    ASSERT_TRUE(status.ok()) << status.error_message();
    registered = shards.shards_size() == 1;
    if (!registered) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(registered);

  // A shard whose token file holds another node token is refused.
  const std::string other_tokens = *dir_ + "/other-tokens";
  std::ofstream(other_tokens) << "node some-other-node-token\n";
  const std::string port_file = *dir_ + "/shard-1.port";
  auto intruder = ChildProcess::Start(
      Flags({PSD_BINARY, "--log-level", "error", "shard", "--id", "1", "--listen", "127.0.0.1:0",
             "--port-file", port_file, "--coordinator", CoordinatorAddress()},
            "other-tokens"),
      port_file);
  ASSERT_TRUE(intruder.ok()) << intruder.status();
  absl::SleepFor(absl::Seconds(2));
  ListShardsResponse shards;
  ASSERT_TRUE(ListShards("admin", &shards).ok());
  ASSERT_EQ(shards.shards_size(), 1);
  EXPECT_EQ(shards.shards(0).shard_id(), 0);
}

TEST_F(SecurityTest, TrainerSessionCreatesAndReadsThroughTlsCluster) {
  // The coordinator creates the variable's parts on the shard with its node
  // token; the trainer then reads it from the shard directly.
  client::SessionOptions options;
  options.coordinator_retry_budget = absl::Seconds(10);
  options.shard.security.tls_ca = *dir_ + "/ca.pem";
  options.shard.security.token_file = *dir_ + "/trainer.token";
  auto session = client::Session::Open(CoordinatorAddress(), options);
  ASSERT_TRUE(session.ok()) << session.status();
  client::GetVariableOptions shape;
  shape.shape = TensorShape({3});
  auto variable = (*session)->GetVariable("secure_v", shape);
  ASSERT_TRUE(variable.ok()) << variable.status();
  ASSERT_TRUE(variable->Initialize().ok());
  auto value = variable->Read();
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->num_elements(), 3);

  // A node token opens no session.
  options.shard.security.token_file = *dir_ + "/node.token";
  auto refused = client::Session::Open(CoordinatorAddress(), options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
}

// Exactly-once request ids are bound to the token that first used them: a
// caller with another valid token (here admin, which may call trainer rpcs)
// cannot get a trainer's cached result, nor run writes under its client id
// (taking seqs the trainer will send, whose writes would then be skipped).
TEST_F(SecurityTest, RequestIdsAreBoundToTheTokenThatFirstUsedThem) {
  auto trainer = Shard::NewStub(Channel(ShardAddress(), "trainer"));
  auto admin = Shard::NewStub(Channel(ShardAddress(), "admin"));
  CreateVariableRequest create;
  create.set_name("bound_ids_v");
  create.set_dtype(DT_FLOAT);
  create.mutable_shape()->add_dims(1);
  CreateVariableResponse created;
  ASSERT_TRUE(trainer->CreateVariable(Context().get(), create, &created).ok());

  auto assign = [](float value, uint64_t seq) {
    AssignRequest request;
    request.set_name("bound_ids_v");
    request.set_op(UPDATE_ASSIGN);
    request.mutable_value()->set_dtype(DT_FLOAT);
    request.mutable_value()->mutable_shape()->add_dims(1);
    request.mutable_value()->set_content(std::string(reinterpret_cast<const char*>(&value), 4));
    request.mutable_request_id()->set_client_id(0x5eed5eed);
    request.mutable_request_id()->set_seq(seq);
    return request;
  };
  AssignResponse response;
  ASSERT_TRUE(trainer->Assign(Context().get(), assign(1.0f, 1), &response).ok());

  // The admin token's holder replays the trainer's id, and squats its next.
  grpc::Status replay = admin->Assign(Context().get(), assign(7.0f, 1), &response);
  EXPECT_EQ(replay.error_code(), grpc::StatusCode::PERMISSION_DENIED) << replay.error_message();
  EXPECT_TRUE(absl::StrContains(replay.error_message(), "belongs to another caller"))
      << replay.error_message();
  grpc::Status squat = admin->Assign(Context().get(), assign(7.0f, 2), &response);
  EXPECT_EQ(squat.error_code(), grpc::StatusCode::PERMISSION_DENIED) << squat.error_message();
  // The same through a Batch stream.
  {
    auto ctx = Context();
    auto stream = admin->Batch(ctx.get());
    BatchRequest batch;
    *batch.add_ops()->mutable_assign() = assign(7.0f, 2);
    ASSERT_TRUE(stream->Write(batch));
    BatchResponse results;
    ASSERT_TRUE(stream->Read(&results));
    ASSERT_EQ(results.results_size(), 1);
    EXPECT_EQ(results.results(0).code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED))
        << results.results(0).message();
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }

  // The trainer's seq 2 is its own, new write; the value is the trainer's.
  ASSERT_TRUE(trainer->Assign(Context().get(), assign(2.0f, 2), &response).ok());
  ReadRequest read;
  read.set_name("bound_ids_v");
  ReadResponse value;
  ASSERT_TRUE(trainer->Read(Context().get(), read, &value).ok());
  float got = 0;
  ASSERT_EQ(value.value().content().size(), sizeof(got));
  std::memcpy(&got, value.value().content().data(), sizeof(got));
  EXPECT_EQ(got, 2.0f);
}

// One process whose clients hold different tokens (a trainer and an admin
// tool in one program): each token's requests carry client ids of their
// own, so the shard's binding of ids to tokens refuses none of them.
TEST_F(SecurityTest, ClientsWithDifferentTokensInOneProcessEachWrite) {
  auto client_with = [](const std::string& role) {
    client::ClientOptions options;
    options.security.tls_ca = *dir_ + "/ca.pem";
    options.security.token_file = *dir_ + "/" + role + ".token";
    return client::ShardClient::Connect(ShardAddress(), options);
  };
  auto trainer = client_with("trainer");
  auto admin = client_with("admin");
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  ASSERT_TRUE(admin.ok()) << admin.status();
  ASSERT_TRUE((*trainer)->Create("two_tokens_v", *Tensor::FromVector<float>(TensorShape{1}, {0.0f})).ok());
  const Tensor one = *Tensor::FromVector<float>(TensorShape{1}, {1.0f});
  for (int round = 0; round < 3; ++round) {
    for (auto* c : {trainer->get(), admin->get()}) {
      absl::Status s = c->AssignAdd("two_tokens_v", one);
      EXPECT_TRUE(s.ok()) << s;
      auto batch = c->OpenBatch();
      ASSERT_TRUE(batch.ok()) << batch.status();
      absl::Status batched = (*batch)->AssignAdd("two_tokens_v", one).get();
      EXPECT_TRUE(batched.ok()) << batched;
    }
  }
  auto value = (*trainer)->Read("two_tokens_v");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->data<float>()[0], 12.0f);
}

// Runs `psd` with `args` and returns its exit code (-1 if still running).
int ExitCode(std::vector<std::string> args) {
  auto process = ChildProcess::Start(std::move(args));
  if (!process.ok()) return -1;
  auto status = (*process)->Wait(absl::Seconds(20));
  if (!status.ok() || !WIFEXITED(*status)) return -1;
  return WEXITSTATUS(*status);
}

TEST_F(SecurityTest, NonLoopbackBindWithoutTlsIsRefused) {
  EXPECT_NE(ExitCode({PSD_BINARY, "shard", "--id", "0", "--listen", "0.0.0.0:0"}), 0);
  EXPECT_NE(ExitCode({PSD_BINARY, "coordinator", "--listen", "0.0.0.0:0"}), 0);
  // With --insecure it starts (and warns).
  const std::string port_file = *dir_ + "/insecure.port";
  auto process =
      ChildProcess::Start({PSD_BINARY, "--log-level", "error", "shard", "--id", "0", "--listen",
                           "0.0.0.0:0", "--insecure", "--port-file", port_file},
                          port_file);
  EXPECT_TRUE(process.ok()) << process.status();
}

TEST_F(SecurityTest, TokenFileWithoutTlsIsRefused) {
  EXPECT_NE(ExitCode({PSD_BINARY, "shard", "--id", "0", "--listen", "127.0.0.1:0",
                      "--token-file=" + *dir_ + "/tokens"}),
            0);
}

}  // namespace
}  // namespace psd
