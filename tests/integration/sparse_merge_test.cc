// Duplicate indices merged by the client before sending, seen from outside:
// a coordinator and two shards on loopback, each shard's request bytes read
// from its /metrics (psd_rpc_received_bytes_total). scatter_add /
// scatter_sub / scatter_update and a sparse optimizer step with repeated
// indices leave the values an unmerged request leaves (integer-valued rows,
// so every order of float adds is exact), while the shards receive each row
// once; invalid input still fails with the error of the caller's own
// request.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../common/http_get.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/optimizer.h"
#include "psd/optimizer_ops.h"
#include "psd/session.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Variable;

constexpr int64_t kRows = 1000;
constexpr int64_t kCols = 64;
constexpr int kShards = 2;

class SparseMergeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/psd_sparse_merge_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = new std::string(dir_template);
    auto coordinator = ChildProcess::Start(
        {PSD_BINARY, "--log-level", "warn", "coordinator", "--listen", "127.0.0.1:0",
         "--heartbeat-interval", "0.2", "--state-dir", *dir_ + "/state", "--port-file",
         *dir_ + "/coordinator.port"},
        *dir_ + "/coordinator.port");
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = coordinator->release();
    for (int k = 0; k < kShards; ++k) {
      const std::string port_file = absl::StrCat(*dir_, "/shard-", k, ".port");
      auto shard = ChildProcess::Start(
          {PSD_BINARY, "--log-level", "warn", "shard", "--id", std::to_string(k), "--listen",
           "127.0.0.1:0", "--port-file", port_file, "--http-port-file",
           absl::StrCat(*dir_, "/shard-", k, ".http"), "--coordinator", CoordinatorAddress()},
          port_file);
      ASSERT_TRUE(shard.ok()) << shard.status();
      shards_[k] = shard->release();
    }
    // Both shards live before the first placement.
    auto stub = Coordinator::NewStub(
        grpc::CreateChannel(CoordinatorAddress(), grpc::InsecureChannelCredentials()));
    for (int i = 0; i < 300; ++i) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      ListShardsResponse response;
      int live = 0;
      if (stub->ListShards(&context, ListShardsRequest(), &response).ok()) {
        for (const ShardStatus& s : response.shards()) live += s.live() ? 1 : 0;
      }
      if (live == kShards) return;
      absl::SleepFor(absl::Milliseconds(100));
    }
    FAIL() << "shards not live";
  }

  static void TearDownTestSuite() {
    for (auto*& shard : shards_) {
      delete shard;
      shard = nullptr;
    }
    delete coordinator_;
    coordinator_ = nullptr;
    if (dir_ != nullptr) {
      std::error_code ignored;
      std::filesystem::remove_all(*dir_, ignored);
      delete dir_;
      dir_ = nullptr;
    }
  }

  void SetUp() override {
    ASSERT_NE(coordinator_, nullptr);
    auto session = client::Session::Open(CoordinatorAddress());
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *std::move(session);
  }

  static std::string CoordinatorAddress() {
    return absl::StrCat("127.0.0.1:", coordinator_->port());
  }

  // Request bytes the shards have received, from their /metrics.
  static double ReceivedBytes() {
    double sum = 0;
    for (int k = 0; k < kShards; ++k) {
      std::ifstream in(absl::StrCat(*dir_, "/shard-", k, ".http"));
      int port = 0;
      in >> port;
      auto reply = testing_http::HttpGet("127.0.0.1", port, "/metrics");
      EXPECT_TRUE(reply.ok()) << reply.status();
      if (!reply.ok()) return 0;
      auto metrics = testing_http::ParseMetrics(reply->body);
      EXPECT_TRUE(metrics.ok()) << metrics.status();
      if (!metrics.ok()) return 0;
      for (const auto& [series, value] : *metrics) {
        if (absl::StartsWith(series, "psd_rpc_received_bytes_total")) sum += value;
      }
    }
    return sum;
  }

  // A [kRows, kCols] float variable of zeros, over both shards or on one.
  Variable Zeros(const std::string& name, bool partitioned) {
    GetVariableOptions o;
    o.shape = TensorShape{kRows, kCols};
    o.initializer = client::init::Zeros();
    if (partitioned) o.partitioner = client::partitioners::FixedSize(kShards);
    o.initialize = true;
    auto v = session_->GetVariable(name, o);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : Variable();
  }

  // n indices drawn from `distinct` rows spread over the table, and n rows
  // of small integers.
  void Batch(int64_t n, int64_t distinct, Tensor* indices, Tensor* rows) {
    std::mt19937_64 rng(n * 31 + distinct);
    std::uniform_int_distribution<int64_t> pick(0, distinct - 1);
    std::uniform_int_distribution<int> small(-50, 50);
    std::vector<int64_t> idx(n);
    for (auto& i : idx) i = pick(rng) * (kRows / distinct);
    *indices = *Tensor::FromVector<int64_t>(TensorShape{n}, idx);
    *rows = Tensor(DT_FLOAT, TensorShape{n, kCols});
    for (int64_t i = 0; i < n * kCols; ++i) rows->data<float>()[i] = small(rng);
  }

  // The value of zeros after applying every row in order (what the shard
  // does with the unmerged request): `sign` +1 add, -1 sub, 0 update.
  static std::vector<float> Expected(const Tensor& indices, const Tensor& rows, int sign) {
    std::vector<float> value(kRows * kCols, 0.0f);
    for (int64_t k = 0; k < indices.num_elements(); ++k) {
      const int64_t at = indices.data<int64_t>()[k] * kCols;
      for (int64_t j = 0; j < kCols; ++j) {
        const float u = rows.data<float>()[k * kCols + j];
        value[at + j] = sign == 0 ? u : value[at + j] + sign * u;
      }
    }
    return value;
  }

  static std::vector<float> Value(const Variable& v) {
    auto t = v.Read();
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->ToVector<float>() : std::vector<float>();
  }

  static inline std::string* dir_ = nullptr;
  static inline ChildProcess* coordinator_ = nullptr;
  static inline ChildProcess* shards_[kShards] = {};
  std::unique_ptr<client::Session> session_;
};

// 2048 rows over 32 distinct indices: 512 KiB of rows unmerged, 8 KiB
// merged. The shards must receive well under the unmerged rows' bytes.
constexpr int64_t kBatch = 2048;
constexpr int64_t kDistinct = 32;
constexpr double kUnmergedRowBytes = kBatch * kCols * sizeof(float);

TEST_F(SparseMergeTest, ScatterAddWithDuplicatesSendsEachRowOnce) {
  for (bool partitioned : {false, true}) {
    SCOPED_TRACE(partitioned ? "partitioned" : "unpartitioned");
    Variable v = Zeros(partitioned ? "merge/add_parts" : "merge/add", partitioned);
    ASSERT_TRUE(v.valid());
    Tensor indices, rows;
    Batch(kBatch, kDistinct, &indices, &rows);
    const double before = ReceivedBytes();
    ASSERT_TRUE(v.ScatterAdd(indices, rows).ok());
    const double sent = ReceivedBytes() - before;
    EXPECT_EQ(Value(v), Expected(indices, rows, +1));
    EXPECT_LT(sent, kUnmergedRowBytes / 4) << "bytes received by the shards: " << sent;
  }
}

TEST_F(SparseMergeTest, ScatterSubWithDuplicatesSendsEachRowOnce) {
  Variable v = Zeros("merge/sub", true);
  ASSERT_TRUE(v.valid());
  Tensor indices, rows;
  Batch(kBatch, kDistinct, &indices, &rows);
  const double before = ReceivedBytes();
  ASSERT_TRUE(v.ScatterSub(indices, rows).ok());
  const double sent = ReceivedBytes() - before;
  EXPECT_EQ(Value(v), Expected(indices, rows, -1));
  EXPECT_LT(sent, kUnmergedRowBytes / 4) << "bytes received by the shards: " << sent;
}

TEST_F(SparseMergeTest, ScatterUpdateWithDuplicatesKeepsTheLastRow) {
  for (bool partitioned : {false, true}) {
    SCOPED_TRACE(partitioned ? "partitioned" : "unpartitioned");
    Variable v = Zeros(partitioned ? "merge/update_parts" : "merge/update", partitioned);
    ASSERT_TRUE(v.valid());
    Tensor indices, rows;
    Batch(kBatch, kDistinct, &indices, &rows);
    const double before = ReceivedBytes();
    ASSERT_TRUE(v.ScatterUpdate(indices, rows).ok());
    const double sent = ReceivedBytes() - before;
    EXPECT_EQ(Value(v), Expected(indices, rows, 0));
    EXPECT_LT(sent, kUnmergedRowBytes / 4) << "bytes received by the shards: " << sent;
  }
}

TEST_F(SparseMergeTest, SparseOptimizerStepWithDuplicatesSendsEachRowOnce) {
  for (bool partitioned : {false, true}) {
    SCOPED_TRACE(partitioned ? "partitioned" : "unpartitioned");
    Variable v = Zeros(partitioned ? "merge/sgd_parts" : "merge/sgd", partitioned);
    ASSERT_TRUE(v.valid());
    client::opt::GradientDescent sgd;
    sgd.learning_rate = 1.0;
    client::Optimizer optimizer(*session_, sgd);
    Tensor indices, rows;
    Batch(kBatch, kDistinct, &indices, &rows);
    const double before = ReceivedBytes();
    ASSERT_TRUE(optimizer.ApplyGradients({{client::IndexedSlices{rows, indices, std::nullopt}, v}}).ok());
    const double sent = ReceivedBytes() - before;
    // var -= 1.0 * (sum of the rows of each index).
    EXPECT_EQ(Value(v), Expected(indices, rows, -1));
    EXPECT_LT(sent, kUnmergedRowBytes / 4) << "bytes received by the shards: " << sent;
  }
}

TEST_F(SparseMergeTest, UniqueIndicesAreSentAsTheyAre) {
  Variable v = Zeros("merge/unique", false);
  ASSERT_TRUE(v.valid());
  Tensor indices, rows;
  Batch(kDistinct, kDistinct, &indices, &rows);
  std::vector<int64_t> idx(kDistinct);
  for (int64_t i = 0; i < kDistinct; ++i) idx[i] = (kDistinct - 1 - i) * 3;
  indices = *Tensor::FromVector<int64_t>(TensorShape{kDistinct}, idx);
  ASSERT_TRUE(v.ScatterAdd(indices, rows).ok());
  EXPECT_EQ(Value(v), Expected(indices, rows, +1));
}

TEST_F(SparseMergeTest, BadIndexAmongDuplicatesKeepsItsPosition) {
  // Position 3 is out of range after three repeats of row 1: the error
  // names position 3, as for the unmerged request.
  const Tensor indices = *Tensor::FromVector<int64_t>(TensorShape{4}, {1, 1, 1, kRows + 5});
  const Tensor rows(DT_FLOAT, TensorShape{4, kCols});
  for (bool partitioned : {false, true}) {
    SCOPED_TRACE(partitioned ? "partitioned" : "unpartitioned");
    Variable v = Zeros(partitioned ? "merge/bad_parts" : "merge/bad", partitioned);
    ASSERT_TRUE(v.valid());
    absl::Status s = v.ScatterAdd(indices, rows);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("indices[3] = ", kRows + 5)))
        << s;
    client::opt::GradientDescent sgd;
    client::Optimizer optimizer(*session_, sgd);
    s = optimizer.ApplyGradients({{client::IndexedSlices{rows, indices, std::nullopt}, v}});
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "at offset 3")) << s;
    EXPECT_EQ(Value(v), std::vector<float>(kRows * kCols, 0.0f));
  }
}

TEST_F(SparseMergeTest, ShardApplierReportsTheCallersBadIndex) {
  // A ShardApplier knows no shapes: its merged gradient reaches the shard,
  // which refuses it; the error must still name position 3 of the
  // caller's gradient, alone and in a batch.
  Variable v = Zeros("merge/applier", false);
  ASSERT_TRUE(v.valid());
  const client::PartInfo part = v.parts()[0];
  auto applier = client::ShardApplier::Connect(part.shard_address);
  ASSERT_TRUE(applier.ok()) << applier.status();
  client::SparseGradient gradient{
      *Tensor::FromVector<int64_t>(TensorShape{4}, {1, 1, 1, kRows + 5}),
      Tensor(DT_FLOAT, TensorShape{4, kCols})};
  const client::opt::GradientDescent sgd;
  const std::string want = absl::StrCat("indices[3] = ", kRows + 5);
  absl::Status s = (*applier)->ApplySparse(part.name, sgd, gradient).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), want)) << s;
  std::vector<absl::Status> statuses;
  s = (*applier)->ApplyGradients(sgd, {{part.name, gradient}}, &statuses);
  ASSERT_EQ(statuses.size(), 1u);
  EXPECT_TRUE(absl::IsInvalidArgument(statuses[0])) << statuses[0];
  EXPECT_TRUE(absl::StrContains(statuses[0].message(), want)) << statuses[0];
  EXPECT_EQ(Value(v), std::vector<float>(kRows * kCols, 0.0f));
}

TEST_F(SparseMergeTest, ShapeChangedOnTheShardStillGivesTheCallersError) {
  // The handle still says [kRows, kCols]; the shard's variable is [10, kCols]
  // after an assign with validate_shape=false. The merged request is
  // refused, and the caller gets the shard's verdict on its own request.
  Variable v = Zeros("merge/reshaped", false);
  ASSERT_TRUE(v.valid());
  client::AssignOptions options;
  options.validate_shape = false;
  ASSERT_TRUE(v.Assign(Tensor(DT_FLOAT, TensorShape{10, kCols}), options).ok());
  const Tensor indices = *Tensor::FromVector<int64_t>(TensorShape{4}, {2, 2, 2, 50});
  const Tensor rows(DT_FLOAT, TensorShape{4, kCols});
  absl::Status s = v.ScatterAdd(indices, rows);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "indices[3] = 50 is not in [0, 10)")) << s;
  client::opt::GradientDescent sgd;
  client::Optimizer optimizer(*session_, sgd);
  s = optimizer.ApplyGradients({{client::IndexedSlices{rows, indices, std::nullopt}, v}});
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "indices[3] = 50 is not in [0, 10)")) << s;
}

}  // namespace
}  // namespace integration
}  // namespace psd
