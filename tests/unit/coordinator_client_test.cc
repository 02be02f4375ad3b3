// The coordinator client's retries against an in-process coordinator that
// fails on purpose: what is retried (UNAVAILABLE, within the budget), what
// is not (every other error; any error without a budget), how errors name
// the coordinator, and the Saver riding out a coordinator that is shutting
// down. The backoff itself is retry_policy_test's. No timed assertions: the
// fake counts attempts.
#include "psd/internal/coordinator_client.h"

#include <atomic>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/saver.h"

namespace psd {
namespace client {
namespace internal {
namespace {

// Answers ListShards and Save with `failure` for the first `failures`
// calls, then OK.
class FailingCoordinator final : public Coordinator::Service {
 public:
  grpc::Status ListShards(grpc::ServerContext*, const ListShardsRequest*,
                          ListShardsResponse* resp) override {
    if (attempts_.fetch_add(1) < failures_) return failure_;
    resp->set_num_variables(7);
    return grpc::Status::OK;
  }
  grpc::Status Save(grpc::ServerContext*, const SaveCheckpointRequest* req,
                    SaveCheckpointResponse* resp) override {
    if (attempts_.fetch_add(1) < failures_) return failure_;
    resp->set_prefix(absl::StrCat(req->prefix(), "-", req->global_step()));
    return grpc::Status::OK;
  }

  void FailWith(grpc::Status failure, int failures) {
    failure_ = std::move(failure);
    failures_ = failures;
  }
  int attempts() const { return attempts_.load(); }

 private:
  grpc::Status failure_;
  int failures_ = 0;
  std::atomic<int> attempts_{0};
};

class CoordinatorClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  std::unique_ptr<CoordinatorClient> Client(absl::Duration budget) {
    CoordinatorClientOptions options;
    options.call.timeout = absl::Seconds(30);
    options.call.retry_budget = budget;
    auto client = CoordinatorClient::Create(address_, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  absl::Status ListShards(CoordinatorClient& client, ListShardsResponse* resp) {
    return client.Call(&Coordinator::Stub::ListShards, ListShardsRequest(), resp);
  }

  FailingCoordinator fake_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(CoordinatorClientTest, UnavailableIsRetriedWithinTheBudget) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator is shutting down"), 3);
  auto client = Client(absl::Minutes(5));
  ASSERT_NE(client, nullptr);
  ListShardsResponse resp;
  ASSERT_TRUE(ListShards(*client, &resp).ok());
  EXPECT_EQ(resp.num_variables(), 7);
  EXPECT_EQ(fake_.attempts(), 4);
}

TEST_F(CoordinatorClientTest, WithoutABudgetOneAttemptFailsNamingTheCoordinator) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator is shutting down"), 1);
  auto client = Client(absl::ZeroDuration());
  ASSERT_NE(client, nullptr);
  ListShardsResponse resp;
  absl::Status s = ListShards(*client, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), absl::StrCat("coordinator ", address_, ": coordinator is shutting down"));
  EXPECT_EQ(fake_.attempts(), 1);
}

TEST_F(CoordinatorClientTest, OtherErrorsAreNotRetried) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "not yet"), 1);
  auto client = Client(absl::Minutes(5));
  ASSERT_NE(client, nullptr);
  ListShardsResponse resp;
  absl::Status s = ListShards(*client, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "not yet")) << s;
  EXPECT_EQ(fake_.attempts(), 1);
}

TEST_F(CoordinatorClientTest, GivesUpWhenTheBudgetIsSpent) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), 1 << 30);
  auto client = Client(absl::Milliseconds(300));
  ASSERT_NE(client, nullptr);
  ListShardsResponse resp;
  absl::Status s = ListShards(*client, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("coordinator ", address_, ": down")))
      << s;
  // 300 ms of pauses of at least 25 ms each.
  EXPECT_LE(fake_.attempts(), 13);
}

// The Saver's calls go through the same policy: a save the coordinator
// refuses while it shuts down (a restart) is made once it is back.
using SaverRetryTest = CoordinatorClientTest;

TEST_F(SaverRetryTest, SaveIsRetriedWhileTheCoordinatorIsUnavailable) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator is shutting down"), 2);
  auto saver = Saver::Create(address_);
  ASSERT_TRUE(saver.ok()) << saver.status();
  auto prefix = (*saver)->Save("/ckpt/model.ckpt", 5);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(*prefix, "/ckpt/model.ckpt-5");
  EXPECT_EQ(fake_.attempts(), 3);
}

TEST_F(SaverRetryTest, WithoutABudgetTheSaverFailsAtOnce) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator is shutting down"), 2);
  SaverOptions options;
  options.retry_budget = absl::ZeroDuration();
  auto saver = Saver::Create(address_, options);
  ASSERT_TRUE(saver.ok()) << saver.status();
  auto prefix = (*saver)->Save("/ckpt/model.ckpt", 5);
  EXPECT_EQ(prefix.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(fake_.attempts(), 1);
}

}  // namespace
}  // namespace internal
}  // namespace client
}  // namespace psd
