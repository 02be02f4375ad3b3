// The client's data stream (ClientOptions::data_stream) against a real
// shard: ops issued together coalesce into few messages and keep their
// order and their own statuses; a stream broken mid-message (through a
// fault-injecting proxy) applies nothing twice and nothing half; a broken
// idle stream is reopened; a shard that stops answering fails the ops with
// DEADLINE_EXCEEDED instead of hanging. No timing is asserted.
#include <algorithm>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../common/fault_proxy.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using ::psd::client::ClientOptions;
using ::psd::client::ShardClient;
using ::psd::testing::FaultProxy;

// Retries enough to ride out many broken connections.
ClientOptions Patient() {
  ClientOptions options;
  options.max_attempts = 1000;
  options.initial_backoff = absl::Milliseconds(5);
  options.max_backoff = absl::Milliseconds(50);
  options.retry_budget = absl::Seconds(120);
  return options;
}

Tensor Int64s(int64_t n, int64_t value) {
  Tensor t(DT_INT64, TensorShape{n});
  std::fill(t.data<int64_t>(), t.data<int64_t>() + n, value);
  return t;
}

// Holds the shard's writes (a checkpoint fence) until Lift, so ops sent
// meanwhile wait in the shard and the client's window fills.
class WriteHold {
 public:
  explicit WriteHold(const std::string& address)
      : stub_(Shard::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {
    FenceRequest request;
    request.set_fence_id(kFenceId);
    request.set_lease_ms(60000);
    FenceResponse response;
    grpc::ClientContext context;
    status_ = FromGrpcStatus(stub_->Fence(&context, request, &response));
  }
  ~WriteHold() { Lift(); }

  const absl::Status& status() const { return status_; }

  void Lift() {
    if (lifted_ || !status_.ok()) return;
    lifted_ = true;
    UnfenceRequest request;
    request.set_fence_id(kFenceId);
    request.set_discard(true);
    UnfenceResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(IsOk(FromGrpcStatus(stub_->Unfence(&context, request, &response))));
  }

 private:
  static constexpr uint64_t kFenceId = 4242;
  std::unique_ptr<Shard::Stub> stub_;
  absl::Status status_;
  bool lifted_ = false;
};

// The data stream's own suite (the rest of the integration tests also run
// over the unary calls, without it: see CMakeLists.txt).
class DataStreamTest : public ShardTest {};

TEST_F(DataStreamTest, ConcurrentOpsCoalesceAndKeepTheirOrderAndStatuses) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Tensor::Scalar<int64_t>(-1))));
  ASSERT_TRUE(IsOk(shard_->Create("sum", Tensor::Scalar<int64_t>(0))));
  const client::DataStreamStats before = shard_->data_stream_stats();

  constexpr int kOps = 200;
  std::vector<std::future<absl::Status>> assigns;
  std::vector<std::future<absl::Status>> adds;
  std::future<absl::Status> missing;
  {
    WriteHold hold(process_->address());
    ASSERT_TRUE(IsOk(hold.status()));
    for (int i = 0; i < kOps; ++i) {
      assigns.push_back(shard_->AssignAsync("v", Tensor::Scalar<int64_t>(i)));
      adds.push_back(shard_->AssignAddAsync("sum", Tensor::Scalar<int64_t>(1)));
      if (i == kOps / 2) missing = shard_->AssignAsync("no_such", Tensor::Scalar<int64_t>(7));
    }
    hold.Lift();
  }
  for (auto& f : assigns) EXPECT_TRUE(IsOk(f.get()));
  for (auto& f : adds) EXPECT_TRUE(IsOk(f.get()));
  // One bad op fails alone, with its own status naming the variable.
  EXPECT_TRUE(IsError(missing.get(), absl::StatusCode::kNotFound, {"no_such"}));

  const client::DataStreamStats after = shard_->data_stream_stats();
  // The shard ran the assigns in the order they were issued: the last wins.
  EXPECT_EQ(Read("v"), Tensor::Scalar<int64_t>(kOps - 1));
  EXPECT_EQ(Read("sum"), Tensor::Scalar<int64_t>(kOps));

  const int64_t ops = after.ops_sent - before.ops_sent;
  const int64_t messages = after.messages_sent - before.messages_sent;
  EXPECT_EQ(ops, 2 * kOps + 1);
  // One message (the window) went out and was held with the shard's
  // writes; everything else waited and went out together, at most 256 ops
  // a message.
  EXPECT_LE(messages, 1 + (2 * kOps + 1 + 255) / 256) << messages << " messages for " << ops;
  EXPECT_EQ(after.streams_opened, 1) << "one write stream for the client's whole life";
}

TEST_F(DataStreamTest, UnaryOpsWhenTheDataStreamIsOff) {
  ClientOptions unary;
  unary.data_stream = false;
  PSD_ASSERT_OK_AND_ASSIGN(auto client, process_->Connect(unary));
  ASSERT_TRUE(IsOk(client->Create("x", Tensor::Scalar<int64_t>(1))));
  ASSERT_TRUE(IsOk(client->AssignAdd("x", Tensor::Scalar<int64_t>(2))));
  ASSERT_TRUE(IsOk(client->AssignAddAsync("x", Tensor::Scalar<int64_t>(3)).get()));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor x, client->Read("x"));
  EXPECT_EQ(x, Tensor::Scalar<int64_t>(6));
  EXPECT_EQ(client->data_stream_stats().ops_sent, 0);
}

TEST_F(DataStreamTest, BadDataStreamOptionsAreRefusedByName) {
  ClientOptions bad;
  bad.data_stream_ops_per_frame = 100000;
  EXPECT_TRUE(IsError(process_->Connect(bad), absl::StatusCode::kInvalidArgument,
                      {"data_stream_ops_per_frame", "100000"}));
  bad = ClientOptions();
  bad.data_stream_frames_in_flight = 0;
  EXPECT_TRUE(IsError(process_->Connect(bad), absl::StatusCode::kInvalidArgument,
                      {"data_stream_frames_in_flight"}));
}

// Every connection is cut after 300 KB from the client: in the middle of
// the second message of big ops. Each op is applied exactly once
// and whole: every element of the vector counts every add.
TEST_F(DataStreamTest, StreamBrokenMidMessageAppliesNothingTwiceOrHalf) {
  constexpr int64_t kElements = 20000;  // 160 KB: sent from the caller's memory
  constexpr int kThreads = 4;
  constexpr int kAddsPerThread = 25;
  ASSERT_TRUE(IsOk(shard_->Create("vec", Int64s(kElements, 0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  proxy->CutUpstreamAfter(300 << 10);
  // One op a message: every connection carries one whole message and is
  // cut in the middle of the next (a message bigger than the cut would
  // never get through).
  ClientOptions options = Patient();
  options.data_stream_frame_bytes = 64 << 10;
  PSD_ASSERT_OK_AND_ASSIGN(auto client, ShardClient::Connect(proxy->address(), options));

  const Tensor one = Int64s(kElements, 1);
  std::vector<std::thread> threads;
  std::vector<absl::Status> failures(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kAddsPerThread; ++i) {
        // Sync and async ops share the stream.
        absl::Status s = (i % 2 == 0) ? client->AssignAdd("vec", one)
                                      : client->AssignAddAsync("vec", one).get();
        if (!s.ok() && failures[t].ok()) failures[t] = s;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& f : failures) EXPECT_TRUE(IsOk(f));
  EXPECT_GT(proxy->cuts(), 0) << "the proxy cut no connection: the test tested nothing";
  EXPECT_GT(client->data_stream_stats().streams_opened, 1);

  PSD_ASSERT_OK_AND_ASSIGN(Tensor vec, shard_->Read("vec"));
  EXPECT_EQ(vec, Int64s(kElements, kThreads * kAddsPerThread));
}

TEST_F(DataStreamTest, ABrokenIdleStreamIsReopenedByTheNextOp) {
  ASSERT_TRUE(IsOk(shard_->Create("x", Tensor::Scalar<int64_t>(0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  PSD_ASSERT_OK_AND_ASSIGN(auto client, ShardClient::Connect(proxy->address(), Patient()));
  ASSERT_TRUE(IsOk(client->AssignAdd("x", Tensor::Scalar<int64_t>(1))));
  for (int round = 0; round < 3; ++round) {
    proxy->CutAll();
    ASSERT_TRUE(IsOk(client->AssignAdd("x", Tensor::Scalar<int64_t>(1))));
    PSD_ASSERT_OK_AND_ASSIGN(Tensor x, client->Read("x"));
    EXPECT_EQ(x, Tensor::Scalar<int64_t>(round + 2));
  }
  EXPECT_GE(client->data_stream_stats().streams_opened, 2);
}

TEST_F(DataStreamTest, AShardThatStopsAnsweringFailsOpsWithDeadlineExceeded) {
  ASSERT_TRUE(IsOk(shard_->Create("x", Tensor::Scalar<int64_t>(0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  ClientOptions impatient;
  impatient.timeout = absl::Seconds(2);
  impatient.max_attempts = 2;
  PSD_ASSERT_OK_AND_ASSIGN(auto client, ShardClient::Connect(proxy->address(), impatient));
  ASSERT_TRUE(IsOk(client->AssignAdd("x", Tensor::Scalar<int64_t>(1))));
  proxy->SetBlackhole(true);
  auto sync_add = std::async(std::launch::async,
                             [&] { return client->AssignAdd("x", Tensor::Scalar<int64_t>(1)); });
  auto async_read = client->ReadAsync("x");
  const absl::Status sync_status = sync_add.get();
  EXPECT_TRUE(sync_status.code() == absl::StatusCode::kDeadlineExceeded ||
              sync_status.code() == absl::StatusCode::kUnavailable)
      << sync_status;
  const absl::Status read_status = async_read.get().status();
  EXPECT_TRUE(read_status.code() == absl::StatusCode::kDeadlineExceeded ||
              read_status.code() == absl::StatusCode::kUnavailable)
      << read_status;
  proxy->SetBlackhole(false);
  // The client recovers once the shard answers again.
  PSD_ASSERT_OK_AND_ASSIGN(Tensor x, client->Read("x"));
  EXPECT_GE(x.data<int64_t>()[0], 1);
}

TEST_F(DataStreamTest, DestroyingAClientFinishesTheOpsOnItsStream) {
  ASSERT_TRUE(IsOk(shard_->Create("sum", Tensor::Scalar<int64_t>(0))));
  constexpr int kOps = 300;
  {
    PSD_ASSERT_OK_AND_ASSIGN(auto client, process_->Connect());
    for (int i = 0; i < kOps; ++i) {
      // The futures are dropped: the ops must still be applied.
      (void)client->AssignAddAsync("sum", Tensor::Scalar<int64_t>(1));
    }
  }
  EXPECT_EQ(Read("sum"), Tensor::Scalar<int64_t>(kOps));
}

}  // namespace
}  // namespace integration
}  // namespace psd
