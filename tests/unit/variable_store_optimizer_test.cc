// VariableStore's optimizer applies: slots and beta powers by name, atomic
// updates under concurrency, exactly-once retries, batch ops, and every
// validation path leaving the variable and its slots exactly as they were.
#include <cmath>
#include <cstring>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/wire.h"
#include "shard/variable_store.h"
#include "store_test_util.h"

namespace psd {
namespace {

using store_test::Vec;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

template <typename T>
TensorProto Scalar(T value) {
  TensorProto p;
  TensorToProto(Tensor::Scalar<T>(value), &p);
  return p;
}

template <typename T>
std::vector<T> Values(const Tensor& t) {
  return std::vector<T>(t.data<T>(), t.data<T>() + t.shape().num_elements());
}

OptimizerSpec Sgd(double lr) {
  OptimizerSpec spec;
  spec.mutable_gradient_descent()->set_learning_rate(lr);
  return spec;
}
OptimizerSpec AdagradSpec(double lr) {
  OptimizerSpec spec;
  spec.mutable_adagrad()->set_learning_rate(lr);
  return spec;
}
OptimizerSpec AdamByName(double lr) {
  OptimizerSpec spec;
  auto* adam = spec.mutable_adam();
  adam->set_learning_rate(lr);
  adam->set_beta1(0.9);
  adam->set_beta2(0.999);
  adam->set_epsilon(1e-8);
  adam->set_beta1_power_variable("beta1_power");
  adam->set_beta2_power_variable("beta2_power");
  return spec;
}

class VariableStoreOptimizerTest : public ::testing::Test {
 protected:
  static VariableStoreOptions Options() {
    VariableStoreOptions options;
    options.memory_limit_bytes = 1 << 20;
    options.incarnation = 77;
    options.request_window = 64;
    return options;
  }
  VariableStoreOptimizerTest() : device_(NewCpuDevice()), store_(device_.get(), Options()) {}

  void CreateFrom(const std::string& name, const TensorProto& value, bool initialize = true) {
    ASSERT_TRUE(store_test::CreateWithValue(&store_, name, value, initialize).ok()) << name;
  }

  Tensor ReadValue(const std::string& name) {
    ReadRequest req;
    req.set_name(name);
    ReadResponse resp;
    absl::Status s = store_.Read(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return *TensorFromProto(resp.value(), name);
  }

  uint64_t Version(const std::string& name) {
    for (const auto& info : store_.List(name)) {
      if (info.name() == name) return info.version();
    }
    ADD_FAILURE() << name << " not listed";
    return 0;
  }

  absl::Status Dense(const std::string& name, std::vector<std::string> slots,
                     const OptimizerSpec& spec, const TensorProto& grad,
                     ApplyDenseResponse* response = nullptr) {
    ApplyDenseRequest req;
    req.set_name(name);
    for (auto& s : slots) req.add_slots(s);
    *req.mutable_optimizer() = spec;
    *req.mutable_gradient() = grad;
    ApplyDenseResponse ignored;
    return store_.ApplyDense(req, response != nullptr ? response : &ignored);
  }

  absl::Status Sparse(const std::string& name, std::vector<std::string> slots,
                      const OptimizerSpec& spec, const TensorProto& indices,
                      const TensorProto& values) {
    ApplySparseRequest req;
    req.set_name(name);
    for (auto& s : slots) req.add_slots(s);
    *req.mutable_optimizer() = spec;
    *req.mutable_indices() = indices;
    *req.mutable_values() = values;
    ApplySparseResponse resp;
    return store_.ApplySparse(req, &resp);
  }

  // An Adam setup under TensorFlow's names: v [2,2], its slots, the powers.
  void CreateAdam() {
    CreateFrom("v", Vec<float>({2, 2}, {1, 1, 1, 1}));
    CreateFrom("v/Adam", Vec<float>({2, 2}, {0, 0, 0, 0}));
    CreateFrom("v/Adam_1", Vec<float>({2, 2}, {0, 0, 0, 0}));
    CreateFrom("beta1_power", Scalar<float>(0.9f));
    CreateFrom("beta2_power", Scalar<float>(0.999f));
  }

  std::unique_ptr<Device> device_;
  VariableStore store_;
};

TEST_F(VariableStoreOptimizerTest, AdamReadsBetaPowersByNameAndUpdatesSlots) {
  CreateAdam();
  ApplyDenseResponse resp;
  ASSERT_TRUE(Dense("v", {"v/Adam", "v/Adam_1"}, AdamByName(0.25),
                    Vec<float>({2, 2}, {2, -2, 0.5f, -8}), &resp)
                  .ok());
  // First step from zero slots: every element moves by the learning rate.
  auto v = Values<float>(ReadValue("v"));
  EXPECT_NEAR(v[0], 0.75, 1e-6);
  EXPECT_NEAR(v[1], 1.25, 1e-6);
  EXPECT_NEAR(v[2], 0.75, 1e-6);
  EXPECT_NEAR(v[3], 1.25, 1e-6);
  auto m = Values<float>(ReadValue("v/Adam"));
  EXPECT_NEAR(m[0], 0.2, 1e-6);  // (1 - beta1) * g
  auto second = Values<float>(ReadValue("v/Adam_1"));
  EXPECT_NEAR(second[3], 0.001 * 64, 1e-6);  // (1 - beta2) * g^2
  // Versions: the variable and its slots were updated; the powers only read.
  EXPECT_EQ(resp.version(), 1u);
  EXPECT_EQ(Version("v/Adam"), 1u);
  EXPECT_EQ(Version("v/Adam_1"), 1u);
  EXPECT_EQ(Version("beta1_power"), 0u);
  EXPECT_THAT(Values<float>(ReadValue("beta1_power")), ElementsAre(0.9f));
}

TEST_F(VariableStoreOptimizerTest, AdamBetaPowersByValueMatchByName) {
  CreateAdam();
  CreateFrom("w", Vec<float>({2, 2}, {1, 1, 1, 1}));
  CreateFrom("w/Adam", Vec<float>({2, 2}, {0, 0, 0, 0}));
  CreateFrom("w/Adam_1", Vec<float>({2, 2}, {0, 0, 0, 0}));
  OptimizerSpec by_value = AdamByName(0.1);
  by_value.mutable_adam()->set_beta1_power_value(0.9f);  // the float the variable holds
  by_value.mutable_adam()->set_beta2_power_value(0.999f);
  const TensorProto g = Vec<float>({2, 2}, {0.3f, -1, 2, 0.01f});
  for (int step = 0; step < 3; ++step) {
    ASSERT_TRUE(Dense("v", {"v/Adam", "v/Adam_1"}, AdamByName(0.1), g).ok());
    ASSERT_TRUE(Dense("w", {"w/Adam", "w/Adam_1"}, by_value, g).ok());
  }
  EXPECT_EQ(Values<float>(ReadValue("v")), Values<float>(ReadValue("w")));
}

TEST_F(VariableStoreOptimizerTest, SparseAdagradWithDuplicateIndicesSumsFirst) {
  CreateFrom("e", Vec<float>({4, 2}, {1, 1, 1, 1, 1, 1, 1, 1}));
  CreateFrom("e/Adagrad", Vec<float>({4, 2}, {0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f}));
  ASSERT_TRUE(Sparse("e", {"e/Adagrad"}, AdagradSpec(1), Vec<int64_t>({3}, {2, 0, 2}),
                     Vec<float>({3, 2}, {1, 2, 3, 0, 2, 1}))
                  .ok());
  // Row 2's gradient is (1, 2) + (2, 1) = (3, 3), applied once:
  // accum = 0.1 + 9, var = 1 - 3 / sqrt(9.1). Row 0: g = (3, 0).
  const float row2 = static_cast<float>(1 - 3 / std::sqrt(9.1));
  auto e = Values<float>(ReadValue("e"));
  EXPECT_NEAR(e[0], row2, 1e-6);
  EXPECT_EQ(e[1], 1.0f);  // g = 0: accum 0.1, no change
  EXPECT_EQ(e[2], 1.0f);  // row 1 untouched
  EXPECT_EQ(e[3], 1.0f);
  EXPECT_NEAR(e[4], row2, 1e-6);
  EXPECT_NEAR(e[5], row2, 1e-6);
  EXPECT_EQ(e[6], 1.0f);  // row 3 untouched
  auto accum = Values<float>(ReadValue("e/Adagrad"));
  EXPECT_NEAR(accum[4], 9.1, 1e-5);
  EXPECT_EQ(accum[2], 0.1f);
}

TEST_F(VariableStoreOptimizerTest, MomentumNesterovAndRmsPropThroughStore) {
  CreateFrom("m", Vec<double>({2}, {1, 2}));
  CreateFrom("m/Momentum", Vec<double>({2}, {0.5, 0}));
  OptimizerSpec spec;
  spec.mutable_momentum()->set_learning_rate(0.1);
  spec.mutable_momentum()->set_momentum(0.9);
  spec.mutable_momentum()->set_use_nesterov(true);
  ASSERT_TRUE(Dense("m", {"m/Momentum"}, spec, Vec<double>({2}, {1, -1})).ok());
  // accum = 0.9 * 0.5 + 1 = 1.45; var -= 0.1 * (1 + 0.9 * 1.45).
  EXPECT_THAT(Values<double>(ReadValue("m/Momentum")), ElementsAre(1.45, -1));
  auto m = Values<double>(ReadValue("m"));
  EXPECT_DOUBLE_EQ(m[0], 1 - 0.1 * (1 + 0.9 * 1.45));
  EXPECT_DOUBLE_EQ(m[1], 2 - 0.1 * (-1 + 0.9 * -1));

  // Centered RMSProp takes [mg, ms, mom].
  CreateFrom("r", Vec<double>({1}, {1}));
  CreateFrom("r/RMSProp", Vec<double>({1}, {1}));    // ms
  CreateFrom("r/RMSProp_1", Vec<double>({1}, {0}));  // mg
  CreateFrom("r/RMSProp_2", Vec<double>({1}, {0}));  // mom
  OptimizerSpec rms;
  rms.mutable_rmsprop()->set_learning_rate(0.01);
  rms.mutable_rmsprop()->set_decay(0.9);
  rms.mutable_rmsprop()->set_epsilon(1e-10);
  rms.mutable_rmsprop()->set_centered(true);
  ASSERT_TRUE(Dense("r", {"r/RMSProp_1", "r/RMSProp", "r/RMSProp_2"}, rms,
                    Vec<double>({1}, {2}))
                  .ok());
  // ms = 0.9 + 0.1 * 4 = 1.3; mg = 0.2; mom = 0.01 * 2 / sqrt(1.3 - 0.04 + eps).
  EXPECT_NEAR(Values<double>(ReadValue("r"))[0], 1 - 0.02 / std::sqrt(1.26 + 1e-10), 1e-15);
  EXPECT_NEAR(Values<double>(ReadValue("r/RMSProp_1"))[0], 0.2, 1e-15);
}

TEST_F(VariableStoreOptimizerTest, Float16AndBfloat16ComputeInFloat) {
  CreateFrom("h", Vec<half>({2}, {half(1.0f), half(2.0f)}));
  CreateFrom("b", Vec<bfloat16>({2}, {bfloat16(1.0f), bfloat16(2.0f)}));
  ASSERT_TRUE(Dense("h", {}, Sgd(0.5), Vec<half>({2}, {half(1.0f), half(-2.0f)})).ok());
  ASSERT_TRUE(Dense("b", {}, Sgd(0.5), Vec<bfloat16>({2}, {bfloat16(1.0f), bfloat16(-2.0f)})).ok());
  auto h = ReadValue("h");
  EXPECT_EQ(static_cast<float>(h.data<half>()[0]), 0.5f);
  EXPECT_EQ(static_cast<float>(h.data<half>()[1]), 3.0f);
  auto b = ReadValue("b");
  EXPECT_EQ(static_cast<float>(b.data<bfloat16>()[1]), 3.0f);
}

// Every bad request fails with its code before anything changes.
TEST_F(VariableStoreOptimizerTest, BadRequestsChangeNothing) {
  CreateAdam();
  CreateFrom("e", Vec<float>({6, 2}, std::vector<float>(12, 1)));
  CreateFrom("e/Adagrad", Vec<float>({6, 2}, std::vector<float>(12, 0.1f)));
  CreateFrom("e/Adagrad_bad", Vec<float>({6, 3}, std::vector<float>(18, 0.1f)));
  CreateFrom("e/Adagrad_f64", Vec<double>({6, 2}, std::vector<double>(12, 0.1)));
  CreateFrom("e/Adagrad_uninit", Vec<float>({6, 2}, std::vector<float>(12, 0.1f)),
             /*initialize=*/false);
  CreateFrom("n", Vec<int32_t>({2}, {1, 2}));
  CreateFrom("beta_vec", Vec<float>({2}, {0.5f, 0.5f}));
  CreateFrom("beta_one", Scalar<float>(1.0f));
  const TensorProto g = Vec<float>({2, 2}, {1, 1, 1, 1});
  const std::vector<std::string> adam_slots = {"v/Adam", "v/Adam_1"};
  const auto indices = Vec<int64_t>({3}, {0, 1, 6});
  const auto rows = Vec<float>({3, 2}, {1, 1, 1, 1, 1, 1});
  struct Bad {
    std::string what;
    absl::Status status;
    absl::StatusCode code;
    std::string message;
  };
  OptimizerSpec nan_lr = AdamByName(std::nan(""));
  OptimizerSpec beta1_one = AdamByName(0.1);
  beta1_one.mutable_adam()->set_beta1(1);
  OptimizerSpec power_vec = AdamByName(0.1);
  power_vec.mutable_adam()->set_beta1_power_variable("beta_vec");
  OptimizerSpec power_one = AdamByName(0.1);
  power_one.mutable_adam()->set_beta2_power_variable("beta_one");
  OptimizerSpec power_missing = AdamByName(0.1);
  power_missing.mutable_adam()->clear_beta2_power();
  // Aliases among the variables of one apply: each once, or the apply would
  // lock one variable twice (which aborted the shard).
  OptimizerSpec powers_alias = AdamByName(0.1);
  powers_alias.mutable_adam()->set_beta2_power_variable("beta1_power");
  OptimizerSpec powers_are_var = AdamByName(0.1);
  powers_are_var.mutable_adam()->set_beta1_power_variable("v");
  powers_are_var.mutable_adam()->set_beta2_power_variable("v");
  OptimizerSpec power_is_slot = AdamByName(0.1);
  power_is_slot.mutable_adam()->set_beta2_power_variable("v/Adam_1");
  OptimizerSpec ftrl;
  ftrl.mutable_ftrl()->set_learning_rate(0);
  ftrl.mutable_ftrl()->set_learning_rate_power(-0.5);
  std::vector<Bad> cases = {
      {"gradient shape", Dense("v", adam_slots, AdamByName(0.1), Vec<float>({4}, {1, 1, 1, 1})),
       absl::StatusCode::kInvalidArgument, "gradient has shape [4]"},
      {"gradient dtype", Dense("v", adam_slots, AdamByName(0.1),
                               Vec<double>({2, 2}, {1, 1, 1, 1})),
       absl::StatusCode::kInvalidArgument, "gradient is float64"},
      {"missing slot", Dense("v", {"v/Adam", "v/Nope"}, AdamByName(0.1), g),
       absl::StatusCode::kNotFound, "v/Nope"},
      {"slot count", Dense("v", {"v/Adam"}, AdamByName(0.1), g),
       absl::StatusCode::kInvalidArgument, "takes 2 slot variables, got 1"},
      {"slot twice", Dense("v", {"v/Adam", "v/Adam"}, AdamByName(0.1), g),
       absl::StatusCode::kInvalidArgument, "named twice"},
      {"variable as own slot", Dense("v", {"v", "v/Adam_1"}, AdamByName(0.1), g),
       absl::StatusCode::kInvalidArgument, "named twice"},
      {"nan learning rate", Dense("v", adam_slots, nan_lr, g), absl::StatusCode::kInvalidArgument,
       "learning_rate = nan is not finite"},
      {"beta1 = 1", Dense("v", adam_slots, beta1_one, g), absl::StatusCode::kInvalidArgument,
       "beta1 = 1 is not in [0, 1)"},
      {"beta power not scalar", Dense("v", adam_slots, power_vec, g),
       absl::StatusCode::kInvalidArgument, "must be a scalar"},
      {"beta power = 1", Dense("v", adam_slots, power_one, g), absl::StatusCode::kInvalidArgument,
       "beta2_power = 1 (from variable 'beta_one') is not in [0, 1)"},
      {"beta power unset", Dense("v", adam_slots, power_missing, g),
       absl::StatusCode::kInvalidArgument, "beta2_power is not set"},
      {"no optimizer", Dense("v", {}, OptimizerSpec(), g), absl::StatusCode::kInvalidArgument,
       "no optimizer set"},
      {"beta powers alias", Dense("v", adam_slots, powers_alias, g),
       absl::StatusCode::kInvalidArgument,
       "beta2_power names variable 'beta1_power', which beta1_power names too"},
      {"beta powers are the variable", Dense("v", adam_slots, powers_are_var, g),
       absl::StatusCode::kInvalidArgument, "beta1_power names variable 'v', which is the variable trained"},
      {"beta power is a slot", Dense("v", adam_slots, power_is_slot, g),
       absl::StatusCode::kInvalidArgument,
       "beta2_power names variable 'v/Adam_1', which is one of its slots"},
      {"sparse beta powers are the variable",
       Sparse("e", {"e/Adagrad", "e/Adagrad"}, powers_are_var, Vec<int64_t>({1}, {0}),
              Vec<float>({1, 2}, {1, 1})),
       absl::StatusCode::kInvalidArgument, "named twice"},
      {"ftrl lr", Dense("e", {"e/Adagrad", "e/Adagrad_f64"}, ftrl,
                        Vec<float>({6, 2}, std::vector<float>(12, 1))),
       absl::StatusCode::kInvalidArgument, "learning_rate = 0 is not finite and > 0"},
      {"integer variable", Dense("n", {}, Sgd(1), Vec<int32_t>({2}, {1, 1})),
       absl::StatusCode::kInvalidArgument, "optimizers need a floating dtype"},
      {"index out of range", Sparse("e", {"e/Adagrad"}, AdagradSpec(1), indices, rows),
       absl::StatusCode::kInvalidArgument, "indices[2] = 6 is not in [0, 6)"},
      {"values shape", Sparse("e", {"e/Adagrad"}, AdagradSpec(1), Vec<int64_t>({1}, {0}), rows),
       absl::StatusCode::kInvalidArgument, "need indices.shape + var.shape[1:] = [1,2]"},
      {"indices rank", Sparse("e", {"e/Adagrad"}, AdagradSpec(1),
                              Vec<int64_t>({1, 1}, {0}), Vec<float>({1, 1, 2}, {1, 1})),
       absl::StatusCode::kInvalidArgument, "must be a vector"},
      {"slot shape", Sparse("e", {"e/Adagrad_bad"}, AdagradSpec(1), Vec<int64_t>({1}, {0}),
                            Vec<float>({1, 2}, {1, 1})),
       absl::StatusCode::kInvalidArgument, "has shape [6,3]"},
      {"slot dtype", Sparse("e", {"e/Adagrad_f64"}, AdagradSpec(1), Vec<int64_t>({1}, {0}),
                            Vec<float>({1, 2}, {1, 1})),
       absl::StatusCode::kInvalidArgument, "is float64"},
      {"uninitialized slot", Sparse("e", {"e/Adagrad_uninit"}, AdagradSpec(1),
                                    Vec<int64_t>({1}, {0}), Vec<float>({1, 2}, {1, 1})),
       absl::StatusCode::kFailedPrecondition, "uninitialized value e/Adagrad_uninit"},
  };
  for (const Bad& bad : cases) {
    EXPECT_EQ(bad.status.code(), bad.code) << bad.what << ": " << bad.status;
    EXPECT_THAT(bad.status.message(), HasSubstr(bad.message)) << bad.what;
  }
  for (const char* name : {"v", "v/Adam", "v/Adam_1", "e", "e/Adagrad", "beta1_power"}) {
    EXPECT_EQ(Version(name), 0u) << name;
  }
  EXPECT_THAT(Values<float>(ReadValue("v")), ElementsAre(1, 1, 1, 1));
  EXPECT_THAT(Values<float>(ReadValue("v/Adam")), ElementsAre(0, 0, 0, 0));
  EXPECT_EQ(Values<float>(ReadValue("e")), std::vector<float>(12, 1));
  EXPECT_EQ(Values<float>(ReadValue("e/Adagrad")), std::vector<float>(12, 0.1f));
}

// 8 threads applying a constant gradient lose no update: the result is the
// serial one (every value exact in float).
TEST_F(VariableStoreOptimizerTest, ConcurrentAppliesLoseNoUpdate) {
  CreateFrom("c", Vec<float>({1000}, std::vector<float>(1000, 0)));
  CreateFrom("c/Momentum", Vec<float>({1000}, std::vector<float>(1000, 0)));
  const int kThreads = 8, kSteps = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      const TensorProto g = Vec<float>({1000}, std::vector<float>(1000, 1));
      for (int i = 0; i < kSteps; ++i) ASSERT_TRUE(Dense("c", {}, Sgd(0.5), g).ok());
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(Values<float>(ReadValue("c")),
            std::vector<float>(1000, -0.5f * kThreads * kSteps));
  EXPECT_EQ(Version("c"), static_cast<uint64_t>(kThreads * kSteps));
}

// Applies that lock the same variables in opposite roles cannot deadlock:
// locks are taken in name order.
TEST_F(VariableStoreOptimizerTest, CrossedSlotsDoNotDeadlock) {
  CreateFrom("x", Vec<float>({64}, std::vector<float>(64, 0)));
  CreateFrom("y", Vec<float>({64}, std::vector<float>(64, 0)));
  OptimizerSpec spec;
  spec.mutable_momentum()->set_learning_rate(0.5);
  spec.mutable_momentum()->set_momentum(0);
  const TensorProto g = Vec<float>({64}, std::vector<float>(64, 1));
  std::thread a([&] {
    for (int i = 0; i < 500; ++i) ASSERT_TRUE(Dense("x", {"y"}, spec, g).ok());
  });
  std::thread b([&] {
    for (int i = 0; i < 500; ++i) ASSERT_TRUE(Dense("y", {"x"}, spec, g).ok());
  });
  a.join();
  b.join();
  EXPECT_EQ(Version("x"), 1000u);
}

TEST_F(VariableStoreOptimizerTest, RetriedRequestIdAppliesOnce) {
  CreateFrom("s", Vec<float>({2}, {0, 0}));
  ApplyDenseRequest req;
  req.set_name("s");
  *req.mutable_optimizer() = Sgd(1);
  *req.mutable_gradient() = Vec<float>({2}, {1, 2});
  req.mutable_request_id()->set_client_id(42);
  req.mutable_request_id()->set_seq(1);
  ApplyDenseResponse first, second;
  ASSERT_TRUE(store_.ApplyDense(req, &first).ok());
  ASSERT_TRUE(store_.ApplyDense(req, &second).ok());
  EXPECT_EQ(first.version(), second.version());
  EXPECT_THAT(Values<float>(ReadValue("s")), ElementsAre(-1, -2));

  ApplySparseRequest sparse;
  sparse.set_name("s");
  *sparse.mutable_optimizer() = Sgd(1);
  *sparse.mutable_indices() = Vec<int32_t>({1}, {1});
  *sparse.mutable_values() = Vec<float>({1}, {1});
  *sparse.mutable_request_id() = req.request_id();
  sparse.mutable_request_id()->set_seq(2);
  ApplySparseResponse r1, r2;
  ASSERT_TRUE(store_.ApplySparse(sparse, &r1).ok());
  ASSERT_TRUE(store_.ApplySparse(sparse, &r2).ok());
  EXPECT_EQ(r1.version(), r2.version());
  EXPECT_THAT(Values<float>(ReadValue("s")), ElementsAre(-1, -3));
}

TEST_F(VariableStoreOptimizerTest, StaleIncarnationIsAborted) {
  CreateFrom("s", Vec<float>({1}, {0}));
  ApplyDenseRequest req;
  req.set_name("s");
  *req.mutable_optimizer() = Sgd(1);
  *req.mutable_gradient() = Vec<float>({1}, {1});
  req.set_shard_incarnation(78);
  ApplyDenseResponse resp;
  absl::Status s = store_.ApplyDense(req, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("stale handle"));
  EXPECT_THAT(Values<float>(ReadValue("s")), ElementsAre(0));
}

TEST_F(VariableStoreOptimizerTest, BatchCarriesDenseAndSparseApplies) {
  CreateFrom("a", Vec<float>({2}, {0, 0}));
  CreateFrom("t", Vec<float>({3, 1}, {0, 0, 0}));
  BatchOp dense, sparse, bad;
  dense.mutable_apply_dense()->set_name("a");
  *dense.mutable_apply_dense()->mutable_optimizer() = Sgd(1);
  *dense.mutable_apply_dense()->mutable_gradient() = Vec<float>({2}, {1, 2});
  sparse.mutable_apply_sparse()->set_name("t");
  *sparse.mutable_apply_sparse()->mutable_optimizer() = Sgd(2);
  *sparse.mutable_apply_sparse()->mutable_indices() = Vec<int64_t>({2}, {2, 2});
  *sparse.mutable_apply_sparse()->mutable_values() = Vec<float>({2, 1}, {1, 0.5f});
  bad.mutable_apply_dense()->set_name("missing");
  *bad.mutable_apply_dense()->mutable_optimizer() = Sgd(1);
  BatchOpResult r1, r2, r3;
  for (auto [op, result] : {std::pair{&dense, &r1}, {&bad, &r3}, {&sparse, &r2}}) {
    VariableStore::SetBatchOpStatus(store_.RunBatchOp(*op, 1 << 20, result), result);
  }
  EXPECT_EQ(r1.code(), 0) << r1.message();
  EXPECT_EQ(r1.apply_dense().version(), 1u);
  EXPECT_EQ(r2.code(), 0) << r2.message();
  EXPECT_EQ(r3.code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(Values<float>(ReadValue("a")), ElementsAre(-1, -2));
  EXPECT_THAT(Values<float>(ReadValue("t")), ElementsAre(0, 0, -3));
}

// A streamed read in progress keeps the value it started from: the apply
// copies on write.
TEST_F(VariableStoreOptimizerTest, ApplyCopiesOnWriteUnderAStreamedRead) {
  CreateFrom("s", Vec<float>({2}, {5, 6}));
  ReadStreamRequest req;
  req.set_name("s");
  auto source = store_.BeginReadStream(req);
  ASSERT_TRUE(source.ok());
  ASSERT_TRUE(Dense("s", {}, Sgd(1), Vec<float>({2}, {1, 1})).ok());
  TensorChunk chunk;
  ASSERT_TRUE((*source)->Next(&chunk).ok());
  float streamed[2];
  ASSERT_EQ(chunk.content().size(), sizeof streamed);
  std::memcpy(streamed, chunk.content().data(), sizeof streamed);
  EXPECT_THAT(streamed, ElementsAre(5, 6));
  EXPECT_THAT(Values<float>(ReadValue("s")), ElementsAre(4, 5));
}

}  // namespace
}  // namespace psd
