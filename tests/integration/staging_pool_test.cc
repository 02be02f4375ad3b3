// The shard's staging pool through a real shard: streamed assigns of one
// size, repeated, take their staging buffer from the pool instead of fresh
// (zero-filled) memory, so the shard's memory stays flat, as its /metrics
// show; a stream cut mid-assign leaves the variable as it was and its buffer
// back in the pool.
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "../common/http_get.h"
#include "psd/client.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"
#include "psd/wire.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

constexpr int64_t kElements = int64_t{1} << 20;  // 4 MiB of float32: streamed
constexpr int64_t kBytes = kElements * 4;

Tensor Filled(float v) {
  Tensor t(DT_FLOAT, TensorShape{kElements});
  for (int64_t i = 0; i < kElements; ++i) t.data<float>()[i] = v + static_cast<float>(i % 7);
  return t;
}

std::string HttpPortFile() {
  static std::atomic<int> next{0};
  return absl::StrCat(::testing::TempDir(), "/staging_pool_", getpid(), "_", next.fetch_add(1),
                      ".http");
}

class StagingPoolTest : public ShardTest {
 protected:
  ShardProcessOptions options() const override {
    ShardProcessOptions o;
    o.memory_limit_bytes = 64 << 20;
    o.extra_args = {"--http-port-file", http_port_file_, "--staging-pool-bytes", "32MiB"};
    return o;
  }

  void SetUp() override {
    ShardTest::SetUp();
    if (HasFatalFailure()) return;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    raw_ = Shard::NewStub(
        grpc::CreateCustomChannel(process_->address(), grpc::InsecureChannelCredentials(), args));
  }

  void TearDown() override {
    ShardTest::TearDown();
    std::remove(http_port_file_.c_str());
  }

  // The shard's /metrics, parsed (a missing series reads as 0).
  std::map<std::string, double> Scrape() {
    auto metrics = testing_http::ScrapeFromPortFile(http_port_file_);
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return metrics.ok() ? *metrics : std::map<std::string, double>{};
  }

  // A streamed assign of `value` sent by hand, cancelled after a third of
  // its bytes.
  absl::Status CutAssign(const std::string& var, const Tensor& value) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    AssignResponse response;
    auto writer = raw_->AssignStream(&context, &response);
    AssignStreamRequest message;
    AssignStreamHeader* header = message.mutable_header();
    header->set_name(var);
    header->set_op(UPDATE_ASSIGN);
    header->set_dtype(value.dtype());
    ShapeToProto(value.shape(), header->mutable_shape());
    header->set_total_bytes(static_cast<int64_t>(value.bytes().size()));
    header->set_validate_shape(true);
    writer->Write(message);
    message.clear_header();
    absl::string_view bytes = value.bytes();
    const size_t send = bytes.size() / 3;
    for (size_t off = 0; off < send; off += 256 << 10) {
      message.set_content(std::string(bytes.substr(off, std::min<size_t>(256 << 10, send - off))));
      if (!writer->Write(message)) break;
    }
    context.TryCancel();
    return FromGrpcStatus(writer->Finish());
  }

  // AssignStream calls the shard finished, whatever their status.
  static double StreamCalls(const std::map<std::string, double>& metrics) {
    double calls = 0;
    for (const auto& [series, value] : metrics) {
      if (series.rfind("psd_rpc_total{", 0) == 0 &&
          series.find("psd.Shard/AssignStream") != std::string::npos) {
        calls += value;
      }
    }
    return calls;
  }

  const std::string http_port_file_ = HttpPortFile();
  std::unique_ptr<Shard::Stub> raw_;
};

TEST_F(StagingPoolTest, RepeatedStreamedAssignsReuseOneBufferAndDoNotGrowMemory) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Filled(0))));
  // One assign warms the pool: its staging buffer becomes the value, the
  // value it replaced waits in the pool for the next assign.
  ASSERT_TRUE(IsOk(shard_->Assign("v", Filled(1))));
  auto before = Scrape();
  ASSERT_EQ(before["psd_shard_staging_pool_idle_bytes"], kBytes);

  constexpr int kAssigns = 20;
  for (int i = 0; i < kAssigns; ++i) {
    ASSERT_TRUE(IsOk(shard_->Assign("v", Filled(static_cast<float>(10 + i))))) << i;
  }
  auto after = Scrape();
  EXPECT_EQ(Read("v"), Filled(10 + kAssigns - 1));
  // Every assign took its buffer from the pool: nothing was allocated.
  EXPECT_EQ(after["psd_shard_staging_pool_hits_total"] -
                before["psd_shard_staging_pool_hits_total"],
            kAssigns);
  EXPECT_EQ(after["psd_shard_staging_pool_misses_total"],
            before["psd_shard_staging_pool_misses_total"]);
  // The shard holds what it held before: the value and one idle buffer.
  EXPECT_EQ(after["psd_shard_memory_used_bytes"], before["psd_shard_memory_used_bytes"]);
  EXPECT_EQ(after["psd_shard_memory_used_bytes"], kBytes);
  EXPECT_EQ(after["psd_shard_staging_pool_idle_bytes"], kBytes);
  EXPECT_EQ(after["psd_shard_staging_pool_idle_buffers"], 1);
}

TEST_F(StagingPoolTest, CutStreamedAssignChangesNothingAndReturnsItsBuffer) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Filled(0))));
  ASSERT_TRUE(IsOk(shard_->Assign("v", Filled(1))));
  PSD_ASSERT_OK_AND_ASSIGN(auto var_before, shard_->Lookup("v"));
  auto before = Scrape();
  ASSERT_EQ(before["psd_shard_staging_pool_idle_buffers"], 1);

  EXPECT_FALSE(CutAssign("v", Filled(99)).ok());
  // The shard notices the cancel on its own schedule: wait (bounded) for
  // the staging buffer to come back.
  std::map<std::string, double> now;
  for (int i = 0; i < 400; ++i) {
    now = Scrape();
    if (StreamCalls(now) > StreamCalls(before) &&
        now["psd_shard_staging_pool_idle_buffers"] == 1) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_GT(StreamCalls(now), StreamCalls(before)) << "the shard never ended the cut stream";
  // The buffer the cut stream staged into is back, idle; nothing else held.
  EXPECT_EQ(now["psd_shard_staging_pool_idle_buffers"], 1);
  EXPECT_EQ(now["psd_shard_staging_pool_idle_bytes"], kBytes);
  EXPECT_EQ(now["psd_shard_memory_used_bytes"], before["psd_shard_memory_used_bytes"]);
  EXPECT_EQ(now["psd_shard_staging_pool_misses_total"],
            before["psd_shard_staging_pool_misses_total"]);
  // The variable is as it was.
  EXPECT_EQ(Read("v"), Filled(1));
  PSD_ASSERT_OK_AND_ASSIGN(auto var_after, shard_->Lookup("v"));
  EXPECT_EQ(var_after.version, var_before.version);

  // The next assign reuses it (no allocation) and writes every byte: none of
  // the cut stream's bytes show through.
  ASSERT_TRUE(IsOk(shard_->Assign("v", Filled(2))));
  EXPECT_EQ(Read("v"), Filled(2));
  auto after = Scrape();
  EXPECT_EQ(after["psd_shard_staging_pool_misses_total"],
            before["psd_shard_staging_pool_misses_total"]);
}

TEST_F(StagingPoolTest, IdleBuffersGiveWayToNewVariablesAtTheLimit) {
  // 4 MiB value + 4 MiB idle; then 58 MiB of new variables fit the 64 MiB
  // limit only if the idle buffer goes.
  ASSERT_TRUE(IsOk(shard_->Create("v", Filled(0))));
  ASSERT_TRUE(IsOk(shard_->Assign("v", Filled(1))));
  ASSERT_EQ(Scrape()["psd_shard_staging_pool_idle_bytes"], kBytes);
  ASSERT_TRUE(IsOk(shard_->Create("big", DT_FLOAT, TensorShape{(int64_t{58} << 20) / 4},
                                  client::init::Zeros())));
  auto after = Scrape();
  EXPECT_EQ(after["psd_shard_staging_pool_idle_bytes"], 0);
  EXPECT_EQ(after["psd_shard_staging_pool_reclaimed_bytes_total"], kBytes);
  EXPECT_EQ(after["psd_shard_memory_used_bytes"], kBytes + (int64_t{58} << 20));
  EXPECT_EQ(Read("v"), Filled(1));
}

}  // namespace
}  // namespace integration
}  // namespace psd
