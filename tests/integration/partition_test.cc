// Network faults between real psd processes, injected by the fault proxy
// (tests/common/fault_proxy.h) on the path under test, not by killing
// processes:
//  - a trainer's connection to a shard cut in the middle of a big assign or
//    a scatter_add batch, at many byte offsets: the client's default retries
//    ride it out, and every op is applied once and whole;
//  - a shard partitioned from the coordinator (its heartbeats held, TCP up):
//    the coordinator reports it down after the liveness timeout, trainers
//    keep using its parts meanwhile, and once the partition heals the shard
//    is live again, same process, parts intact;
//  - a slow link (200 ms each way) under default deadlines: ops succeed; a
//    link that carries nothing (blackhole): calls fail with
//    DEADLINE_EXCEEDED or UNAVAILABLE within the client's deadlines instead
//    of hanging, and succeed again once it heals.
// Waits are bounded; the only timing asserted is a generous upper bound on
// how long a failing call may take.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "fault_proxy.h"
#include "grpcpp/grpcpp.h"
#include "http_get.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using ::psd::client::ClientOptions;
using ::psd::client::ShardClient;
using ::psd::testing::FaultProxy;
using Direction = ::psd::testing::FaultProxy::Direction;

Tensor Int64s(TensorShape shape, int64_t value) {
  Tensor t(DT_INT64, shape);
  std::fill(t.data<int64_t>(), t.data<int64_t>() + t.num_elements(), value);
  return t;
}

// Every element of `t` equals its first: the value of one whole assign.
bool Uniform(const Tensor& t) {
  const int64_t* v = t.data<int64_t>();
  return std::all_of(v, v + t.num_elements(), [&](int64_t x) { return x == v[0]; });
}

// ---------------------------------------------------------------------------
// (a) A trainer's connection to a shard cut mid-stream.

class CutMidStreamTest : public ShardTest, public ::testing::WithParamInterface<bool> {};

// 512 Ki int64s: 4 MiB, above the 1 MiB stream threshold (a streamed assign).
constexpr int64_t kBigElements = int64_t{1} << 19;
constexpr int64_t kRows = 4096;
constexpr int64_t kCols = 32;
constexpr int64_t kScatterIndices = 6000;  // 1.5 MiB of updates a batch
constexpr int kAddsPerRound = 40;

TEST_P(CutMidStreamTest, EveryOpAppliedOnceAndWholeAcrossCuts) {
  const bool data_stream = GetParam();
  ASSERT_TRUE(IsOk(shard_->Create("big", Int64s(TensorShape{kBigElements}, 0))));
  ASSERT_TRUE(IsOk(shard_->Create("table", Int64s(TensorShape{kRows, kCols}, 0))));
  ASSERT_TRUE(IsOk(shard_->Create("counter", Tensor::Scalar<int64_t>(0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  ClientOptions options;
  options.data_stream = data_stream;
  // A streamed assign's attempt that was cut can stay running in the shard
  // until its deadline (see AStreamedAssignRetriedAtOnceAfterACutCompletes):
  // a short stream deadline and a long retry budget keep such a round to
  // seconds instead of the default 10 minutes.
  options.stream_timeout = absl::Seconds(5);
  options.max_attempts = 100;
  options.max_backoff = absl::Milliseconds(500);
  options.retry_budget = absl::Seconds(120);
  PSD_ASSERT_OK_AND_ASSIGN(auto trainer, ShardClient::Connect(proxy->address(), options));

  // Rows hit by a scatter_add batch, with repeats.
  std::mt19937 gen(7);
  Tensor indices(DT_INT64, TensorShape{kScatterIndices});
  std::vector<int64_t> hits(kRows, 0);
  for (int64_t i = 0; i < kScatterIndices; ++i) {
    const int64_t row = static_cast<int64_t>(gen() % kRows);
    indices.data<int64_t>()[i] = row;
    ++hits[row];
  }
  const Tensor updates = Int64s(TensorShape{kScatterIndices, kCols}, 1);

  // A reader beside the trainer (not through the proxy): every value it
  // sees of "big" is one whole assign, never part of one.
  std::atomic<bool> stop{false};
  std::atomic<int> torn{0};
  std::atomic<int> reads{0};
  std::thread reader([&] {
    for (int i = 0; i < 100000 && !stop.load(); ++i) {
      auto value = shard_->Read("big");
      if (!value.ok()) continue;
      reads.fetch_add(1);
      if (!Uniform(*value)) torn.fetch_add(1);
    }
  });

  // Each round sends about 5.6 MiB towards the shard and reads 4 MiB back,
  // and is cut once. Towards the shard: in the first bytes, inside the
  // streamed assign's chunks, between it and the batch, inside the batch
  // (the shard never gets the whole op). Back: among the acknowledgements
  // (the shard applied the op but its answer is lost, so the retry must be
  // recognised), inside the read.
  struct Cut {
    Direction direction;
    int64_t bytes;
  };
  const std::vector<Cut> cuts = {
      {Direction::kUp, 100},           {Direction::kUp, 16 << 10},
      {Direction::kUp, (1 << 20) + 333}, {Direction::kUp, (3 << 20) + 7},
      {Direction::kUp, (4 << 20) + 1},   {Direction::kUp, (4 << 20) + (700 << 10)},
      {Direction::kUp, (5 << 20) + 5},   {Direction::kDown, 1},
      {Direction::kDown, 40},            {Direction::kDown, 120},
      {Direction::kDown, 300},           {Direction::kDown, 1000},
      {Direction::kDown, 3000},          {Direction::kDown, 2 << 20}};
  int64_t acknowledged_adds = 0;
  int rounds = 0;
  for (const Cut& cut : cuts) {
    SCOPED_TRACE(absl::StrCat("cut ", cut.direction == Direction::kUp ? "up" : "down", " after ",
                              cut.bytes, " bytes"));
    const int64_t cuts_before = proxy->cuts();
    proxy->CutAfterBytes(cut.direction, cut.bytes);
    ++rounds;
    std::vector<std::future<absl::Status>> adds;
    for (int i = 0; i < kAddsPerRound / 2; ++i) {
      adds.push_back(trainer->AssignAddAsync("counter", Tensor::Scalar<int64_t>(1)));
    }
    EXPECT_TRUE(IsOk(trainer->Assign("big", Int64s(TensorShape{kBigElements}, rounds))));
    EXPECT_TRUE(IsOk(trainer->ScatterAdd("table", indices, updates)));
    for (int i = 0; i < kAddsPerRound / 2; ++i) {
      adds.push_back(trainer->AssignAddAsync("counter", Tensor::Scalar<int64_t>(1)));
    }
    for (auto& f : adds) {
      const absl::Status s = f.get();
      EXPECT_TRUE(IsOk(s));
      if (s.ok()) ++acknowledged_adds;
    }
    auto big = trainer->Read("big");
    EXPECT_TRUE(IsOk(big));
    if (big.ok()) EXPECT_EQ(*big, Int64s(TensorShape{kBigElements}, rounds));
    // More than `bytes` went each way this round: the cut happened.
    EXPECT_EQ(proxy->cuts(), cuts_before + 1) << "the cut did not fall inside the round";
    proxy->CutAfterBytes(cut.direction, 0);
  }
  stop.store(true);
  reader.join();

  EXPECT_EQ(torn.load(), 0) << "a reader saw a half-applied assign";
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(Read("counter"), Tensor::Scalar<int64_t>(acknowledged_adds))
      << "the counter differs from the adds acknowledged";
  EXPECT_EQ(acknowledged_adds, int64_t{kAddsPerRound} * rounds);
  EXPECT_EQ(Read("big"), Int64s(TensorShape{kBigElements}, rounds));
  Tensor expected(DT_INT64, TensorShape{kRows, kCols});
  for (int64_t r = 0; r < kRows; ++r) {
    std::fill(expected.data<int64_t>() + r * kCols, expected.data<int64_t>() + (r + 1) * kCols,
              hits[r] * rounds);
  }
  EXPECT_EQ(Read("table"), expected) << "a scatter_add batch was applied twice, or in part";
}

// A streamed assign cut part-way and retried at once, many times: the
// retry's header may reach the shard before the shard has seen the first
// attempt die, so the retry is a duplicate of a running request. Every
// round completes, exactly once, and the shard keeps answering.
// In about one cut in 200 the cut attempt stays running in the shard until
// its own deadline (gRPC does not end it when its connection is reset
// mid-message). Its retries used to wait for it inside the shard, each
// holding one of the shard's few gRPC callback threads; a few such retries
// (each attempt's deadline passing in turn) held them all and the shard
// stopped answering anyone. Now a retry of a running streamed assign is
// told UNAVAILABLE at once and comes back after its backoff.
TEST_F(CutMidStreamTest, AStreamedAssignRetriedAtOnceAfterACutCompletes) {
  ASSERT_TRUE(IsOk(shard_->Create("big", Int64s(TensorShape{kBigElements}, 0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  ClientOptions options;
  options.initial_backoff = absl::Milliseconds(1);
  options.max_backoff = absl::Milliseconds(200);
  options.max_attempts = 1000;
  options.retry_budget = absl::Seconds(120);
  // The cut attempt may live on in the shard until its deadline: a short
  // one bounds how long its retries wait.
  options.stream_timeout = absl::Seconds(5);
  PSD_ASSERT_OK_AND_ASSIGN(auto trainer, ShardClient::Connect(proxy->address(), options));
  std::mt19937 gen(11);
  constexpr int kRounds = 200;
  for (int round = 1; round <= kRounds; ++round) {
    // Somewhere inside the 4 MiB of content.
    const int64_t cut = (16 << 10) + static_cast<int64_t>(gen() % ((4 << 20) - (32 << 10)));
    SCOPED_TRACE(absl::StrCat("round ", round, ", cut after ", cut, " bytes"));
    const int64_t cuts_before = proxy->cuts();
    proxy->CutAfterBytes(Direction::kUp, cut);
    const absl::Status s = trainer->Assign("big", Int64s(TensorShape{kBigElements}, round));
    ASSERT_TRUE(IsOk(s));
    ASSERT_EQ(proxy->cuts(), cuts_before + 1);
    // The shard serves everyone else meanwhile and after.
    ASSERT_TRUE(IsOk(shard_->GetInfo()));
  }
  EXPECT_EQ(Read("big"), Int64s(TensorShape{kBigElements}, kRounds));
}

INSTANTIATE_TEST_SUITE_P(StreamAndUnary, CutMidStreamTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "DataStream" : "UnaryCalls";
                         });

// ---------------------------------------------------------------------------
// (c) A slow link, then one that carries nothing.

class SlowLinkTest : public ShardTest {};

TEST_F(SlowLinkTest, OpsSucceedUnderDefaultDeadlinesWith200msEachWay) {
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  proxy->SetDelay(absl::Milliseconds(200));
  for (bool data_stream : {true, false}) {
    SCOPED_TRACE(data_stream ? "data stream" : "unary calls");
    ClientOptions options;  // the defaults
    options.data_stream = data_stream;
    PSD_ASSERT_OK_AND_ASSIGN(auto trainer, ShardClient::Connect(proxy->address(), options));
    const std::string suffix = data_stream ? "_s" : "_u";
    ASSERT_TRUE(IsOk(trainer->Create("n" + suffix, Tensor::Scalar<int64_t>(0))));
    ASSERT_TRUE(IsOk(trainer->Create("big" + suffix, Int64s(TensorShape{kBigElements}, 0))));
    std::vector<std::future<absl::Status>> adds;
    for (int i = 0; i < 50; ++i) {
      adds.push_back(trainer->AssignAddAsync("n" + suffix, Tensor::Scalar<int64_t>(1)));
    }
    ASSERT_TRUE(IsOk(trainer->AssignAdd("n" + suffix, Tensor::Scalar<int64_t>(1))));
    for (auto& f : adds) EXPECT_TRUE(IsOk(f.get()));
    ASSERT_TRUE(IsOk(trainer->Assign("big" + suffix, Int64s(TensorShape{kBigElements}, 3))));
    Tensor indices = Int64s(TensorShape{100}, 5);
    ASSERT_TRUE(IsOk(trainer->ScatterAdd("big" + suffix, indices, Int64s(TensorShape{100}, 1))));
    PSD_ASSERT_OK_AND_ASSIGN(Tensor n, trainer->Read("n" + suffix));
    EXPECT_EQ(n, Tensor::Scalar<int64_t>(51));
    PSD_ASSERT_OK_AND_ASSIGN(Tensor big, trainer->Read("big" + suffix));
    ASSERT_EQ(big.num_elements(), kBigElements);
    EXPECT_EQ(big.data<int64_t>()[5], 103);
    EXPECT_EQ(big.data<int64_t>()[6], 3);
  }
  EXPECT_EQ(proxy->cuts(), 0);
}

// A generous bound on a call that must fail: every attempt's deadline and
// the retry budget, plus a minute of slack for a loaded machine.
absl::Duration FailureBound(const ClientOptions& o) {
  return std::max(o.timeout, o.stream_timeout) * o.max_attempts + o.retry_budget +
         absl::Minutes(1);
}

::testing::AssertionResult FailedInTime(const absl::Status& status, absl::Duration took,
                                        absl::Duration bound) {
  if (status.code() != absl::StatusCode::kDeadlineExceeded &&
      status.code() != absl::StatusCode::kUnavailable) {
    return ::testing::AssertionFailure()
           << "expected DEADLINE_EXCEEDED or UNAVAILABLE, got " << status;
  }
  if (took > bound) {
    return ::testing::AssertionFailure() << "failed only after " << took << " (bound " << bound
                                         << "): " << status;
  }
  return ::testing::AssertionSuccess() << status << " after " << took;
}

TEST_F(SlowLinkTest, ABlackholedLinkFailsCallsWithinTheDeadlineThenRecovers) {
  ASSERT_TRUE(IsOk(shard_->Create("x", Tensor::Scalar<int64_t>(0))));
  ASSERT_TRUE(IsOk(shard_->Create("big", Int64s(TensorShape{kBigElements}, 0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  ClientOptions options;
  options.timeout = absl::Seconds(2);
  options.stream_timeout = absl::Seconds(3);
  options.max_attempts = 2;
  options.retry_budget = absl::Seconds(5);
  ClientOptions unary_options = options;
  unary_options.data_stream = false;
  PSD_ASSERT_OK_AND_ASSIGN(auto trainer, ShardClient::Connect(proxy->address(), options));
  PSD_ASSERT_OK_AND_ASSIGN(auto unary, ShardClient::Connect(proxy->address(), unary_options));
  // Both have live connections before the partition.
  ASSERT_TRUE(IsOk(trainer->AssignAdd("x", Tensor::Scalar<int64_t>(1))));
  ASSERT_TRUE(IsOk(unary->AssignAdd("x", Tensor::Scalar<int64_t>(1))));

  proxy->SetBlackhole(true);
  const absl::Duration bound = FailureBound(options);
  auto timed = [](auto fn) {
    return std::async(std::launch::async, [fn] {
      const absl::Time start = absl::Now();
      const absl::Status s = fn();
      return std::make_pair(s, absl::Now() - start);
    });
  };
  const Tensor big_value = Int64s(TensorShape{kBigElements}, 9);
  auto add = timed([&] { return trainer->AssignAdd("x", Tensor::Scalar<int64_t>(1)); });
  auto read = timed([&] { return trainer->Read("x").status(); });
  auto big_assign = timed([&] { return trainer->Assign("big", big_value); });
  auto big_read = timed([&] { return trainer->Read("big").status(); });
  auto unary_add = timed([&] { return unary->AssignAdd("x", Tensor::Scalar<int64_t>(1)); });
  auto unary_big = timed([&] { return unary->Assign("big", big_value); });
  for (auto* f : {&add, &read, &big_assign, &big_read, &unary_add, &unary_big}) {
    const auto [status, took] = f->get();
    EXPECT_TRUE(FailedInTime(status, took, bound));
  }
  // The connections were held open throughout, not cut.
  EXPECT_EQ(proxy->cuts(), 0);

  // Healed: the same clients work again.
  proxy->SetBlackhole(false);
  ASSERT_TRUE(IsOk(trainer->AssignAdd("x", Tensor::Scalar<int64_t>(1))));
  ASSERT_TRUE(IsOk(unary->AssignAdd("x", Tensor::Scalar<int64_t>(1))));
  ASSERT_TRUE(IsOk(trainer->Assign("big", Int64s(TensorShape{kBigElements}, 4))));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor big, unary->Read("big"));
  EXPECT_EQ(big, Int64s(TensorShape{kBigElements}, 4));
  // Failed ops may or may not have been applied (their replies were lost);
  // the acknowledged ones are all there.
  PSD_ASSERT_OK_AND_ASSIGN(Tensor x, trainer->Read("x"));
  EXPECT_GE(x.data<int64_t>()[0], 4);
  EXPECT_LE(x.data<int64_t>()[0], 6);
}

// A trainer that vanishes in the middle of a streamed assign, its socket
// never closed (a partition, a power cut): the shard pings the silent
// connection (--keepalive-interval), closes it when nothing answers, and
// the half-staged value stops holding the shard's memory. Without the
// pings the stream would hold it until the call's own deadline (here 10
// minutes; forever for a caller that sets none).
//
// Both tests here: a shard with room for "big" and one staged value of it,
// not two, so a second assign fits only once the stuck one's staging is
// dropped.
class StuckStreamTest : public ShardTest {
 protected:
  virtual std::vector<std::string> flags() const = 0;
  ShardProcessOptions options() const override {
    ShardProcessOptions o;
    o.memory_limit_bytes = kBigElements * 8 * 5 / 2;
    o.extra_args = flags();
    return o;
  }
  // Assigns `value` to "big" directly, retrying RESOURCE_EXHAUSTED (the
  // stuck stream's staging) once a second, up to two minutes.
  absl::Status AssignOnceRoomFrees(int64_t value) {
    absl::Status direct;
    for (int attempt = 0; attempt < 120; ++attempt) {
      direct = shard_->Assign("big", Int64s(TensorShape{kBigElements}, value));
      if (!absl::IsResourceExhausted(direct)) return direct;
      absl::SleepFor(absl::Seconds(1));
    }
    return direct;
  }
};

class VanishedPeerTest : public StuckStreamTest {
 protected:
  std::vector<std::string> flags() const override { return {"--keepalive-interval", "1"}; }
};

TEST_F(VanishedPeerTest, AStalledStreamOfAVanishedTrainerIsClosedAndFreesItsMemory) {
  ASSERT_TRUE(IsOk(shard_->Create("big", Int64s(TensorShape{kBigElements}, 0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(process_->port()));
  ClientOptions options;
  options.data_stream = false;
  options.max_attempts = 1;
  options.stream_timeout = absl::Minutes(10);
  PSD_ASSERT_OK_AND_ASSIGN(auto trainer, ShardClient::Connect(proxy->address(), options));
  ASSERT_TRUE(IsOk(trainer->GetInfo()));
  // Slowed, so the partition falls inside the value.
  proxy->SetDelay(Direction::kUp, absl::Milliseconds(20));
  const int64_t up_before = proxy->stats().bytes_up;
  auto stalled = std::async(std::launch::async, [&] {
    return trainer->Assign("big", Int64s(TensorShape{kBigElements}, 7));
  });
  for (int i = 0; i < 20000 && proxy->stats().bytes_up - up_before < (64 << 10); ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  proxy->SetBlackhole(true);
  ASSERT_LT(proxy->stats().bytes_up - up_before, kBigElements * 8) << "the value got through";
  // The staged half holds the room a second assign needs until the shard
  // gives up on the silent connection.
  const absl::Status direct = AssignOnceRoomFrees(5);
  // Healed: the vanished trainer's call ends at once (its connection was
  // closed by the shard), and changed nothing.
  proxy->SetBlackhole(false);
  EXPECT_TRUE(IsOk(direct)) << "the stalled stream still holds its staging memory";
  EXPECT_FALSE(stalled.get().ok());
  EXPECT_EQ(Read("big"), Int64s(TensorShape{kBigElements}, 5));
}

// A caller that stays connected (it answers pings) but stops sending in the
// middle of a streamed assign: the shard ends the stream once it has waited
// --stream-idle-timeout for the next message, and the staged half is
// dropped, nothing applied.
class SilentCallerTest : public StuckStreamTest {
 protected:
  std::vector<std::string> flags() const override { return {"--stream-idle-timeout", "1"}; }
};

TEST_F(SilentCallerTest, AStreamedAssignWhoseCallerStopsSendingIsEndedAndFreesItsMemory) {
  ASSERT_TRUE(IsOk(shard_->Create("big", Int64s(TensorShape{kBigElements}, 0))));
  auto stub = Shard::NewStub(
      grpc::CreateChannel(process_->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  AssignResponse response;
  std::unique_ptr<grpc::ClientWriter<AssignStreamRequest>> writer =
      stub->AssignStream(&ctx, &response);
  AssignStreamRequest first;
  AssignStreamHeader* header = first.mutable_header();
  header->set_name("big");
  header->set_op(UPDATE_ASSIGN);
  header->set_dtype(DT_INT64);
  header->mutable_shape()->add_dims(kBigElements);
  header->set_total_bytes(kBigElements * 8);
  first.set_content(std::string(64 << 10, '\x07'));
  ASSERT_TRUE(writer->Write(first));
  // Then nothing: the staged value holds the room a second assign needs
  // until the shard ends the silent stream.
  const absl::Status direct = AssignOnceRoomFrees(5);
  EXPECT_TRUE(IsOk(direct)) << "the silent stream still holds its staging memory";
  writer->WritesDone();
  const grpc::Status ended = writer->Finish();
  EXPECT_FALSE(ended.ok());
  EXPECT_EQ(Read("big"), Int64s(TensorShape{kBigElements}, 5));
}

// ---------------------------------------------------------------------------
// (b) A shard partitioned from the coordinator.

// Shard `id` as the coordinator lists it, once `pred` holds (bounded wait).
template <typename Pred>
absl::StatusOr<ShardStatus> WaitForShard(const std::string& coordinator, int id, Pred pred,
                                         absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "never listed";
  while (absl::Now() < deadline) {
    auto response = ListShards(coordinator);
    if (response.ok()) {
      for (const ShardStatus& s : response->shards()) {
        if (s.shard_id() != id) continue;
        if (pred(s)) return s;
        last = s.ShortDebugString();
      }
    } else {
      last = response.status().ToString();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("shard ", id, ": ", last));
}

TEST(CoordinatorPartitionTest, AShardCutOffFromTheCoordinatorIsDownThenLiveWithItsParts) {
  TestClusterOptions cluster_options;
  cluster_options.num_shards = 1;
  cluster_options.coordinator_args = {"--heartbeat-interval", "0.2", "--liveness-timeout", "2"};
  PSD_ASSERT_OK_AND_ASSIGN(auto cluster, TestCluster::Start(cluster_options));
  const std::string coordinator = cluster->coordinator_address();

  // Shard 1 reaches the coordinator only through the proxy.
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(cluster->coordinator()->port()));
  const std::string port_file = cluster->state_dir() + "/shard-1.port";
  PSD_ASSERT_OK_AND_ASSIGN(
      auto shard1,
      ChildProcess::Start({PSD_BINARY, "--log-level", "warn", "shard", "--id", "1", "--listen",
                           "127.0.0.1:0", "--port-file", port_file, "--coordinator",
                           proxy->address()},
                          port_file));
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus joined,
                           WaitForShard(coordinator, 1, [](const ShardStatus& s) { return s.live(); }));

  // A variable with a part on each shard.
  PSD_ASSERT_OK_AND_ASSIGN(auto session, client::Session::Open(coordinator));
  constexpr int64_t kRowsW = 64, kColsW = 16;
  Tensor initial(DT_INT64, TensorShape{kRowsW, kColsW});
  for (int64_t i = 0; i < kRowsW * kColsW; ++i) initial.data<int64_t>()[i] = i;
  client::GetVariableOptions w_options;
  w_options.initial_value = initial;
  w_options.partitioner = client::partitioners::FixedSize(2);
  w_options.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(client::Variable w, session->GetVariable("w", w_options));
  int on_shard1 = 0;
  for (const auto& part : w.parts()) on_shard1 += part.shard_id == 1 ? 1 : 0;
  ASSERT_EQ(on_shard1, 1) << "the test needs a part of w on shard 1";
  ASSERT_TRUE(IsOk(w.AssignAdd(Int64s(TensorShape{kRowsW, kColsW}, 1))));
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus before,
                           WaitForShard(coordinator, 1, [](const ShardStatus& s) {
                             return s.live() && s.placed_parts() > 0;
                           }));

  // The partition: heartbeats are held, the TCP connection stays up.
  proxy->SetBlackhole(true);
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus down,
                           WaitForShard(coordinator, 1, [](const ShardStatus& s) { return !s.live(); }));
  EXPECT_GE(down.millis_since_heartbeat(), 2000);
  EXPECT_EQ(down.incarnation(), joined.incarnation());
  // What an operator sees: psctl status lists it down (and asking does not
  // make it live).
  const std::string out = cluster->state_dir() + "/psctl.out";
  ASSERT_EQ(std::system(absl::StrCat(PSCTL_BINARY, " --coordinator ", coordinator,
                                     " --json status >", out)
                            .c_str()),
            0);
  std::ifstream in(out);
  const std::string status_json((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  EXPECT_NE(status_json.find(absl::StrCat("\"address\":\"", down.address(), "\",\"live\":false")),
            std::string::npos)
      << status_json;
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus still_down,
                           WaitForShard(coordinator, 1, [](const ShardStatus& s) { return !s.live(); }));
  EXPECT_GE(still_down.millis_since_heartbeat(), down.millis_since_heartbeat());
  // The coordinator is not on the data path: the trainer keeps training
  // on shard 1's part meanwhile.
  EXPECT_TRUE(IsOk(w.AssignAdd(Int64s(TensorShape{kRowsW, kColsW}, 1))));
  EXPECT_EQ(proxy->cuts(), 0);

  // Healed: the same process is live again, holding its part.
  proxy->SetBlackhole(false);
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus healed,
                           WaitForShard(coordinator, 1, [](const ShardStatus& s) { return s.live(); }));
  EXPECT_EQ(healed.incarnation(), joined.incarnation());
  EXPECT_EQ(healed.lost_parts(), 0);
  EXPECT_EQ(healed.placed_parts(), before.placed_parts());
  EXPECT_FALSE(shard1->Exited());

  // Every acknowledged update is there, read by this trainer and by a new one.
  Tensor expected = initial;
  for (int64_t i = 0; i < kRowsW * kColsW; ++i) expected.data<int64_t>()[i] += 2;
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value, expected);
  PSD_ASSERT_OK_AND_ASSIGN(auto other, client::Session::Open(coordinator));
  client::GetVariableOptions reuse;
  reuse.shape = TensorShape{kRowsW, kColsW};
  reuse.dtype = DT_INT64;
  reuse.partitioner = client::partitioners::FixedSize(2);
  reuse.reuse = REUSE_AUTO;
  PSD_ASSERT_OK_AND_ASSIGN(client::Variable w2, other->GetVariable("w", reuse));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value2, w2.Read());
  EXPECT_EQ(value2, expected);
  for (const auto& part : w2.parts()) EXPECT_FALSE(part.lost) << part.name;
}

// docs/replication.md "Leases": a shard cut off from the coordinator stops
// holding its lease before the coordinator stops counting it as held, by
// the two processes' own monotonic clocks (one host: the same clock); and
// the lease comes back when the partition heals.
TEST(CoordinatorPartitionTest, AShardCutOffLosesItsLeaseBeforeTheCoordinatorCountsItExpired) {
  constexpr int64_t kLeaseMillis = 1000;
  TestClusterOptions cluster_options;
  cluster_options.num_shards = 0;
  cluster_options.coordinator_args = {"--heartbeat-interval", "0.2", "--liveness-timeout", "2",
                                      "--lease-period", "1"};
  PSD_ASSERT_OK_AND_ASSIGN(auto cluster, TestCluster::Start(cluster_options));
  const std::string coordinator = cluster->coordinator_address();
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(cluster->coordinator()->port()));
  const std::string port_file = cluster->state_dir() + "/shard-0.port";
  const std::string http_port_file = cluster->state_dir() + "/shard-0.http";
  PSD_ASSERT_OK_AND_ASSIGN(
      auto shard,
      ChildProcess::Start({PSD_BINARY, "--log-level", "warn", "shard", "--id", "0", "--listen",
                           "127.0.0.1:0", "--port-file", port_file, "--http-port-file",
                           http_port_file, "--coordinator", proxy->address()},
                          port_file));
  const auto shard_metric = [&](const std::string& name) -> absl::StatusOr<double> {
    PSD_ASSIGN_OR_RETURN(auto metrics, testing_http::ScrapeFromPortFile(http_port_file));
    auto it = metrics.find(name);
    if (it == metrics.end()) return absl::NotFoundError(name + " not in the shard's /metrics");
    return it->second;
  };
  // Held on both sides once the shard heartbeats.
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus held, WaitForShard(coordinator, 0, [](const ShardStatus& s) {
                             return s.live() && s.lease_remaining_millis() > 0;
                           }));
  // Renewed by heartbeats (not just granted by the registration).
  absl::StatusOr<double> grants = absl::UnknownError("not read");
  for (int i = 0; i < 300; ++i) {
    grants = shard_metric("psd_shard_lease_grants_total");
    if (grants.ok() && *grants >= 4) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(grants.ok()) << grants.status();
  ASSERT_GE(*grants, 4) << "heartbeats did not renew the lease";
  absl::StatusOr<double> remaining = shard_metric("psd_shard_lease_remaining_seconds");
  ASSERT_TRUE(remaining.ok()) << remaining.status();
  EXPECT_GT(*remaining, 0);
  EXPECT_LE(*remaining, kLeaseMillis / 1e3);

  // The partition: nothing reaches the coordinator, TCP stays up.
  proxy->SetBlackhole(true);
  absl::StatusOr<double> expiry = absl::UnknownError("not read");
  for (int i = 0; i < 600; ++i) {
    remaining = shard_metric("psd_shard_lease_remaining_seconds");
    if (remaining.ok() && *remaining == 0) {
      expiry = shard_metric("psd_shard_lease_expiry_monotonic_seconds");
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(remaining.ok()) << remaining.status();
  ASSERT_EQ(*remaining, 0) << "the shard kept its lease through the partition";
  ASSERT_TRUE(expiry.ok()) << expiry.status();
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus expired, WaitForShard(coordinator, 0, [](const ShardStatus& s) {
                             return s.lease_remaining_millis() == 0;
                           }));
  // The coordinator's last grant was at or after the shard's clock reading
  // that lease counts from, so the shard's lease ended no later than the
  // grant plus the period (and the coordinator waits a margin beyond that).
  const double granted = static_cast<double>(expired.lease_granted_monotonic_micros()) / 1e6;
  EXPECT_GT(granted, 0);
  EXPECT_LE(*expiry, granted + kLeaseMillis / 1e3)
      << "shard lease ends at " << *expiry << " s, coordinator granted it at " << granted << " s";
  // No lease was granted during the partition: the shard's last one is the
  // coordinator's last grant.
  EXPECT_GE(*expiry, granted + kLeaseMillis / 1e3 - 3.0);

  // Healed: heartbeats renew it.
  proxy->SetBlackhole(false);
  PSD_ASSERT_OK_AND_ASSIGN(ShardStatus renewed, WaitForShard(coordinator, 0, [](const ShardStatus& s) {
                             return s.live() && s.lease_remaining_millis() > 0;
                           }));
  EXPECT_GT(renewed.lease_granted_monotonic_micros(), expired.lease_granted_monotonic_micros());
  for (int i = 0; i < 300; ++i) {
    remaining = shard_metric("psd_shard_lease_remaining_seconds");
    if (remaining.ok() && *remaining > 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(remaining.ok()) << remaining.status();
  EXPECT_GT(*remaining, 0) << "the lease did not come back after the partition healed";
  EXPECT_EQ(renewed.incarnation(), held.incarnation());
  EXPECT_FALSE(shard->Exited());
}

}  // namespace
}  // namespace integration
}  // namespace psd
