// One shard process serving an embedding table's parts over gRPC (no
// coordinator): the ops by key on the data stream and over unary calls
// alike, the export stream, refusals by name, and the per-part figures on
// /metrics.
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "../common/http_get.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/embedding_keys.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"
#include "psd/wire.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::ClientOptions;
using client::EmbeddingRowSet;
using client::KeyedOpOptions;
using client::ShardClient;

std::string HttpPortFile() {
  static std::atomic<int> next{0};
  return absl::StrCat(::testing::TempDir(), "/embedding_shard_", getpid(), "_",
                      next.fetch_add(1), ".http");
}

Tensor Keys(const std::vector<int64_t>& keys) {
  return *Tensor::FromVector(TensorShape({static_cast<int64_t>(keys.size())}), keys);
}

class EmbeddingShardTest : public ShardTest {
 protected:
  ShardProcessOptions options() const override {
    ShardProcessOptions o;
    o.extra_args = {"--http-port-file", http_port_file_};
    return o;
  }
  void SetUp() override {
    ShardTest::SetUp();
    if (HasFatalFailure()) return;
    raw_ = Shard::NewStub(
        grpc::CreateChannel(process_->address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    ShardTest::TearDown();
    std::remove(http_port_file_.c_str());
  }

  // Creates part `part` of `parts` of a float table of `dim`, with a
  // counter filter of `filter_freq` (0: none).
  absl::Status CreatePart(const std::string& name, int64_t dim, int part, int parts,
                          int64_t filter_freq = 0, const std::string& slot_of = "") {
    CreateVariableRequest req;
    req.set_name(name);
    req.set_dtype(DT_FLOAT);
    req.mutable_shape()->add_dims(dim);
    req.mutable_initializer()->mutable_ones();
    req.mutable_embedding()->set_embedding_dim(dim);
    if (filter_freq > 0) req.mutable_embedding()->mutable_counter_filter()->set_filter_freq(filter_freq);
    req.mutable_embedding()->set_slot_of(slot_of);
    req.set_embedding_part_index(part);
    req.set_embedding_num_parts(parts);
    grpc::ClientContext ctx;
    CreateVariableResponse resp;
    return FromGrpcStatus(raw_->CreateVariable(&ctx, req, &resp));
  }

  std::map<std::string, double> Scrape() {
    auto metrics = testing_http::ScrapeFromPortFile(http_port_file_);
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return metrics.ok() ? *metrics : std::map<std::string, double>{};
  }

  const std::string http_port_file_ = HttpPortFile();
  std::unique_ptr<Shard::Stub> raw_;
};

TEST_F(EmbeddingShardTest, OpsByKeyOnTheStreamAndOverUnaryCallsAgree) {
  ASSERT_TRUE(IsOk(CreatePart("t", 3, 0, 1)));
  ClientOptions unary_options;
  unary_options.data_stream = false;
  auto unary = ShardClient::Connect(process_->address(), unary_options);
  ASSERT_TRUE(unary.ok()) << unary.status();
  ASSERT_TRUE(IsOk(shard_->ScatterByKey(UpdateKind::kAdd, "t", Keys({1, 2}),
                                        Tensor::Scalar<float>(1), {.global_step = 5})));
  ASSERT_TRUE(IsOk((*unary)->ScatterByKey(UpdateKind::kAdd, "t", Keys({2}),
                                          Tensor::Scalar<float>(1))));
  auto a = shard_->GatherByKey("t", Keys({1, 2, 3}));
  auto b = (*unary)->GatherByKey("t", Keys({1, 2, 3}));
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->data<float>()[0], 2.0f);
  EXPECT_EQ(a->data<float>()[3], 3.0f);
  EXPECT_EQ(a->data<float>()[6], 1.0f) << "key 3's row is made from the initializer";
  auto exported = shard_->ExportEmbedding("t", {}, /*max_rows=*/1);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->keys.num_elements(), 3) << "three messages of one row each";
  std::map<int64_t, int64_t> version;
  for (int i = 0; i < 3; ++i) {
    version[exported->keys.data<int64_t>()[i]] = exported->versions.data<int64_t>()[i];
  }
  EXPECT_EQ(version[1], 5);
  // Dense ops on the part and table ops on a dense variable are refused.
  EXPECT_TRUE(IsError(shard_->Read("t"), absl::StatusCode::kInvalidArgument, {"'t'", "embedding"}));
  ASSERT_TRUE(IsOk(shard_->Create("dense", Tensor::Scalar<float>(1))));
  EXPECT_TRUE(IsError(shard_->ExportEmbedding("dense"), absl::StatusCode::kInvalidArgument,
                      {"dense", "not an embedding table"}));
  const Tensor int32_keys = *Tensor::FromVector(TensorShape({1}), std::vector<int32_t>{1});
  EXPECT_TRUE(IsError(shard_->GatherByKey("t", int32_keys), absl::StatusCode::kInvalidArgument,
                      {"'t'", "int32"}));
}

TEST_F(EmbeddingShardTest, KeysOfAnotherPartAreRefusedWithNothingChanged) {
  ASSERT_TRUE(IsOk(CreatePart("p/part_1", 2, 1, 3)));
  int64_t mine = 0, theirs = 0;
  while (PartOfKey(mine, 3) != 1) ++mine;
  while (PartOfKey(theirs, 3) == 1) ++theirs;
  EXPECT_TRUE(IsError(shard_->ScatterByKey(UpdateKind::kAdd, "p/part_1", Keys({mine, theirs}),
                                           Tensor::Scalar<float>(1)),
                      absl::StatusCode::kInvalidArgument, {"p/part_1", absl::StrCat(theirs)}));
  auto rows = shard_->Lookup("p/part_1");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->shape.dim(0), 0);
}

TEST_F(EmbeddingShardTest, MetricsShowEachPartsRowsAndFilteredKeys) {
  ASSERT_TRUE(IsOk(CreatePart("m", 4, 0, 1, /*filter_freq=*/2)));
  ASSERT_TRUE(shard_->GatherByKey("m", Keys({1, 2, 3})).ok());  // counted, not admitted
  ASSERT_TRUE(shard_->GatherByKey("m", Keys({1})).ok());        // 1 admitted
  auto metrics = Scrape();
  EXPECT_EQ(metrics["psd_shard_embedding_rows{table=\"m\"}"], 1);
  EXPECT_EQ(metrics["psd_shard_embedding_pending_keys{table=\"m\"}"], 2);
  EXPECT_EQ(metrics["psd_shard_embedding_filtered_lookups{table=\"m\"}"], 3);
  EXPECT_GT(metrics["psd_shard_embedding_bytes{table=\"m\"}"], 0);
  EXPECT_EQ(metrics["psd_rpc_total{method=\"psd.Shard/Gather\",code=\"OK\"}"], 2)
      << "each lookup counted as the call it stands for";
}

}  // namespace
}  // namespace integration
}  // namespace psd
