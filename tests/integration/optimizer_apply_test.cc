// Server-side optimizers through a real shard: slots created under
// TensorFlow's names, dense and sparse applies via ShardApplier, one batch
// for a step's gradients, concurrent trainers losing no update, bad inputs
// changing nothing, and a restarted shard refusing a stale applier.
#include <cmath>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/optimizer_ops.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GradientAndVariable;
using client::ShardApplier;
using client::SparseGradient;

class OptimizerApplyTest : public ShardTest {
 protected:
  void SetUp() override {
    ShardTest::SetUp();
    if (HasFatalFailure()) return;
    auto applier = ShardApplier::Connect(process_->address());
    ASSERT_TRUE(applier.ok()) << applier.status();
    applier_ = *std::move(applier);
  }

  // Creates `var`'s slots for `optimizer` as TensorFlow would.
  void CreateSlots(const client::OptimizerConfig& optimizer, const std::string& var,
                   const TensorShape& shape) {
    for (const auto& slot : client::OptimizerSlots(optimizer, var)) {
      ASSERT_TRUE(IsOk(shard_->Create(
          slot.name, DT_FLOAT, shape,
          client::init::Constant(Tensor::Scalar<float>(static_cast<float>(slot.initial_value))))))
          << slot.name;
    }
  }

  std::unique_ptr<ShardApplier> applier_;
};

TEST_F(OptimizerApplyTest, DenseAdamMatchesReferenceOverSteps) {
  const int64_t n = 1000;
  client::opt::Adam adam;
  adam.learning_rate = 0.01;
  std::vector<float> w0(n);
  for (int64_t i = 0; i < n; ++i) w0[i] = std::cos(0.1 * i);
  ASSERT_TRUE(IsOk(shard_->Create("w", Vec<float>({n}, w0))));
  CreateSlots(adam, "w", TensorShape{n});
  ASSERT_TRUE(IsOk(shard_->Create("beta1_power", Tensor::Scalar<float>(0.9f))));
  ASSERT_TRUE(IsOk(shard_->Create("beta2_power", Tensor::Scalar<float>(0.999f))));

  std::vector<double> w(w0.begin(), w0.end()), m(n, 0), v(n, 0);
  float b1p = 0.9f, b2p = 0.999f;
  for (int step = 0; step < 3; ++step) {
    std::vector<float> g(n);
    for (int64_t i = 0; i < n; ++i) g[i] = std::sin(0.3 * i + step);
    PSD_ASSERT_OK_AND_ASSIGN(uint64_t version, applier_->ApplyDense("w", adam, Vec<float>({n}, g)));
    EXPECT_GE(version, static_cast<uint64_t>(step + 1));
    const double lr_t = 0.01 * std::sqrt(1 - double{b2p}) / (1 - double{b1p});
    for (int64_t i = 0; i < n; ++i) {
      m[i] = 0.9 * m[i] + 0.1 * g[i];
      v[i] = 0.999 * v[i] + 0.001 * double{g[i]} * g[i];
      w[i] -= lr_t * m[i] / (std::sqrt(v[i]) + 1e-8);
    }
    // The trainer advances the powers once per step (Adam's _finish).
    b1p *= 0.9f;
    b2p *= 0.999f;
    ASSERT_TRUE(IsOk(shard_->Assign("beta1_power", Tensor::Scalar<float>(b1p))));
    ASSERT_TRUE(IsOk(shard_->Assign("beta2_power", Tensor::Scalar<float>(b2p))));
  }
  const Tensor got = Read("w");
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_NEAR(got.data<float>()[i], w[i], 1e-5) << i;
  }
  PSD_ASSERT_OK_AND_ASSIGN(auto slots, shard_->List("w/"));
  ASSERT_EQ(slots.size(), 2u);
  EXPECT_EQ(slots[0].name, "w/Adam");
  EXPECT_EQ(slots[1].name, "w/Adam_1");
  EXPECT_EQ(slots[1].shape, TensorShape({n}));
}

TEST_F(OptimizerApplyTest, SparseAdagradSumsDuplicateRows) {
  client::opt::Adagrad adagrad;
  adagrad.learning_rate = 1;
  ASSERT_TRUE(IsOk(shard_->Create("emb", DT_FLOAT, TensorShape{100, 8},
                                  client::init::Ones())));
  CreateSlots(adagrad, "emb", TensorShape{100, 8});
  SparseGradient g{Vec<int64_t>({3}, {7, 42, 7}), Vec<float>({3, 8}, std::vector<float>(24, 1))};
  ASSERT_TRUE(IsOk(applier_->ApplySparse("emb", adagrad, g)));
  const Tensor emb = Read("emb");
  // Row 7: g = 2, accum = 0.1 + 4, var = 1 - 2 / sqrt(4.1). Row 42: g = 1.
  EXPECT_NEAR(emb.data<float>()[7 * 8], 1 - 2 / std::sqrt(4.1), 1e-6);
  EXPECT_NEAR(emb.data<float>()[42 * 8 + 3], 1 - 1 / std::sqrt(1.1), 1e-6);
  EXPECT_EQ(emb.data<float>()[8 * 8], 1.0f);
  EXPECT_NEAR(Read("emb/Adagrad").data<float>()[7 * 8 + 5], 4.1, 1e-6);
}

TEST_F(OptimizerApplyTest, ApplyGradientsSendsOneBatchAndFailsOpsAlone) {
  client::opt::Momentum momentum;
  momentum.learning_rate = 0.5;
  momentum.momentum = 0.5;
  ASSERT_TRUE(IsOk(shard_->Create("a", Vec<float>({2}, {1, 1}))));
  ASSERT_TRUE(IsOk(shard_->Create("b", Vec<float>({3, 2}, {0, 0, 0, 0, 0, 0}))));
  CreateSlots(momentum, "a", TensorShape{2});
  CreateSlots(momentum, "b", TensorShape{3, 2});
  std::vector<GradientAndVariable> step;
  step.emplace_back("a", Vec<float>({2}, {2, -2}));
  step.emplace_back("b", SparseGradient{Vec<int32_t>({1}, {9}), Vec<float>({1, 2}, {1, 1})});
  step.emplace_back("b", SparseGradient{Vec<int32_t>({1}, {2}), Vec<float>({1, 2}, {4, 4})});
  std::vector<absl::Status> statuses;
  absl::Status s = applier_->ApplyGradients(momentum, step, &statuses);
  EXPECT_TRUE(IsError(s, absl::StatusCode::kInvalidArgument,
                      {"apply to 'b'", "indices[0] = 9 is not in [0, 3)"}));
  ASSERT_EQ(statuses.size(), 3u);
  EXPECT_TRUE(statuses[0].ok());
  EXPECT_FALSE(statuses[1].ok());
  EXPECT_TRUE(statuses[2].ok());
  EXPECT_EQ(Read("a"), Vec<float>({2}, {0, 2}));  // accum = g; a -= 0.5 * g
  EXPECT_EQ(Read("b"), Vec<float>({3, 2}, {0, 0, 0, 0, -2, -2}));
  EXPECT_EQ(Read("b/Momentum"), Vec<float>({3, 2}, {0, 0, 0, 0, 4, 4}));
}

// The ids ApplyGradients sends are handed back; sending the same step again
// with them (what a trainer does on the shard that took a part over after a
// failover) is answered from the shard's request window, not applied
// twice, for batched and streamed gradients alike. Ops sent without ids
// are applied again.
TEST_F(OptimizerApplyTest, ResendingAStepWithItsRequestIdsAppliesItOnce) {
  client::opt::GradientDescent sgd;
  sgd.learning_rate = 1.0;
  constexpr int64_t kBig = (int64_t{2} << 20) / 4;  // past the stream threshold
  ASSERT_TRUE(IsOk(shard_->Create("small", Vec<float>({2}, {0, 0}))));
  ASSERT_TRUE(IsOk(shard_->Create("big", DT_FLOAT, TensorShape{kBig},
                                  client::init::Constant(Tensor::Scalar<float>(0)))));
  std::vector<GradientAndVariable> step;
  step.emplace_back("small", Vec<float>({2}, {1, 2}));
  step.emplace_back("big", Vec<float>({kBig}, std::vector<float>(kBig, 1)));
  std::vector<RequestId> ids;
  ASSERT_TRUE(IsOk(applier_->ApplyGradients(sgd, step, nullptr, &ids)));
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_NE(ids[0].client_id(), 0u);
  EXPECT_NE(ids[1].client_id(), 0u);
  std::vector<RequestId> again = ids;
  std::vector<absl::Status> statuses;
  ASSERT_TRUE(IsOk(applier_->ApplyGradients(sgd, step, &statuses, &again)));
  EXPECT_EQ(again[0].seq(), ids[0].seq());
  EXPECT_EQ(again[1].seq(), ids[1].seq());
  EXPECT_EQ(Read("small"), Vec<float>({2}, {-1, -2})) << "applied twice";
  EXPECT_EQ(Read("big").data<float>()[kBig - 1], -1) << "applied twice";
  // Without ids: a new step.
  ASSERT_TRUE(IsOk(applier_->ApplyGradients(sgd, step)));
  EXPECT_EQ(Read("small"), Vec<float>({2}, {-2, -4}));
  EXPECT_EQ(Read("big").data<float>()[0], -2);
}

// Four trainers, each with its own connection, apply a constant gradient
// with plain SGD: the variable ends exactly where the serial run would.
TEST_F(OptimizerApplyTest, ConcurrentTrainersLoseNoUpdate) {
  constexpr int kTrainers = 4, kSteps = 250;
  ASSERT_TRUE(IsOk(shard_->Create("p", Vec<float>({16}, std::vector<float>(16, 0)))));
  std::vector<std::unique_ptr<ShardApplier>> trainers;
  for (int t = 0; t < kTrainers; ++t) {
    PSD_ASSERT_OK_AND_ASSIGN(auto a, ShardApplier::Connect(process_->address()));
    trainers.push_back(std::move(a));
  }
  std::vector<std::thread> threads;
  const Tensor g = Vec<float>({16}, std::vector<float>(16, 1));
  for (int t = 0; t < kTrainers; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kSteps; ++i) {
        EXPECT_TRUE(IsOk(trainers[t]->ApplyDense("p", client::opt::GradientDescent{0.25}, g)));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(Read("p"), Vec<float>({16}, std::vector<float>(16, -0.25f * kTrainers * kSteps)));
}

// A shard remembers exactly-once windows for at most 1024 clients, each
// kept for 10 idle minutes. Appliers made one after another (a trainer
// that reconnects per step, or makes an Optimizer per model) share the
// process's client id, so they never use the table up.
TEST_F(OptimizerApplyTest, SequentialAppliersDoNotExhaustTheShardsClientTable) {
  constexpr int kAppliers = 1200;  // more than the shard's 1024 client slots
  ASSERT_TRUE(IsOk(shard_->Create("p", Vec<float>({1}, {0}))));
  const Tensor g = Vec<float>({1}, {1});
  for (int i = 0; i < kAppliers; ++i) {
    PSD_ASSERT_OK_AND_ASSIGN(auto applier, ShardApplier::Connect(process_->address()));
    ASSERT_TRUE(IsOk(applier->ApplyDense("p", client::opt::GradientDescent{1}, g)))
        << "applier " << i;
  }
  EXPECT_EQ(Read("p"), Vec<float>({1}, {-static_cast<float>(kAppliers)}));
}

TEST_F(OptimizerApplyTest, BadInputsFailWithTheirCodesAndChangeNothing) {
  client::opt::Adagrad adagrad;
  ASSERT_TRUE(IsOk(shard_->Create("e", Vec<float>({6, 1}, {1, 2, 3, 4, 5, 6}))));
  CreateSlots(adagrad, "e", TensorShape{6, 1});
  EXPECT_TRUE(IsError(applier_->ApplySparse(
                          "e", adagrad,
                          SparseGradient{Vec<int64_t>({3}, {0, 1, 6}),
                                         Vec<float>({3, 1}, {1, 1, 1})}),
                      absl::StatusCode::kInvalidArgument, {"indices[2] = 6 is not in [0, 6)"}));
  EXPECT_TRUE(IsError(applier_->ApplyDense("e", adagrad, Vec<float>({6}, {1, 1, 1, 1, 1, 1})),
                      absl::StatusCode::kInvalidArgument, {"gradient has shape [6]"}));
  EXPECT_TRUE(IsError(applier_->ApplyDense("e", adagrad,
                                           Vec<double>({6, 1}, {1, 1, 1, 1, 1, 1})),
                      absl::StatusCode::kInvalidArgument, {"gradient is float64"}));
  EXPECT_TRUE(IsError(applier_->ApplyDense("nope", adagrad, Vec<float>({1}, {1})),
                      absl::StatusCode::kNotFound, {"nope"}));
  EXPECT_TRUE(IsError(applier_->ApplyDense("e", client::opt::Adam{}, Vec<float>({6, 1},
                                                                                 {1, 1, 1, 1, 1, 1})),
                      absl::StatusCode::kNotFound, {"e/Adam"}));
  EXPECT_EQ(Read("e"), Vec<float>({6, 1}, {1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(Read("e/Adagrad"), Vec<float>({6, 1}, std::vector<float>(6, 0.1f)));
  PSD_ASSERT_OK_AND_ASSIGN(auto info, shard_->Lookup("e"));
  EXPECT_EQ(info.version, 0u);
}

TEST_F(OptimizerApplyTest, RestartedShardRefusesStaleApplier) {
  ASSERT_TRUE(IsOk(shard_->Create("s", Vec<float>({1}, {0}))));
  ASSERT_TRUE(IsOk(RestartShard(&process_)));
  // The new shard is empty, but the incarnation check comes first.
  EXPECT_TRUE(IsError(applier_->ApplyDense("s", client::opt::GradientDescent{1},
                                           Vec<float>({1}, {1})),
                      absl::StatusCode::kAborted, {"stale handle"}));
  PSD_ASSERT_OK_AND_ASSIGN(shard_, process_->Connect());
}

}  // namespace
}  // namespace integration
}  // namespace psd
