// The C++ Optimizer against a real coordinator and two real shards on
// loopback: slot variables under TensorFlow's names, in the global
// collection, not trainable, initialized as TensorFlow does and colocated
// with their primaries part by part; Adam on a partitioned variable equal to
// Adam on an unpartitioned one and to a reference loop; sparse Adagrad on a
// partitioned embedding with duplicate indices across parts; two trainers
// applying to one variable without losing updates; bad gradients failing
// alone with an error naming the variable.
//
// One cluster serves the suite; each test uses its own names (and its own
// Adam beta-power names, since those live at the root).
#include "psd/optimizer.h"

#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster_process.h"
#include "shared_cluster_test.h"
#include "gtest/gtest.h"
#include "psd/session.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Gradient;
using client::IndexedSlices;
using client::Optimizer;
using client::Session;
using client::Variable;
namespace init = client::init;
namespace opt = client::opt;
namespace partitioners = client::partitioners;

::testing::AssertionResult IsOk(const absl::Status& s) {
  if (s.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << s;
}
::testing::AssertionResult IsError(const absl::Status& s, absl::StatusCode code,
                                   const std::vector<std::string>& parts = {}) {
  if (s.code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << absl::StatusCodeToString(code) << ", got " << s;
  }
  for (const auto& p : parts) {
    if (s.message().find(p) == absl::string_view::npos) {
      return ::testing::AssertionFailure() << s << " does not contain \"" << p << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

#define CONCAT_INNER_(a, b) a##b
#define CONCAT_(a, b) CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL_(CONCAT_(r_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  ASSERT_TRUE(tmp.ok()) << tmp.status();           \
  lhs = std::move(tmp).value()

Tensor Floats(TensorShape shape, std::vector<float> values) {
  return *Tensor::FromVector<float>(std::move(shape), values);
}
Tensor Int64s(std::vector<int64_t> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return *Tensor::FromVector<int64_t>(TensorShape{n}, v);
}

GetVariableOptions Declared(TensorShape shape, int64_t parts = 0, int64_t seed = 1) {
  GetVariableOptions o;
  o.shape = std::move(shape);
  o.initializer = init::RandomUniform(-1.0, 1.0, seed);
  if (parts > 0) o.partitioner = partitioners::FixedSize(parts);
  o.initialize = true;
  return o;
}

opt::Adam AdamNamed(const std::string& prefix) {
  opt::Adam adam;
  adam.learning_rate = 0.05;
  adam.beta1_power_variable = prefix + "/beta1_power";
  adam.beta2_power_variable = prefix + "/beta2_power";
  return adam;
}

bool Contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

class OptimizerTest : public SharedClusterTest<OptimizerTest> {
 protected:
  std::vector<std::string> Names(const std::string& collection) {
    std::vector<std::string> out;
    auto list = session_->ListVariables(collection);
    EXPECT_TRUE(list.ok()) << list.status();
    if (list.ok()) {
      for (const Variable& v : *list) out.push_back(v.name());
    }
    return out;
  }
};

TEST_F(OptimizerTest, SlotsHaveTensorFlowNamesAreGlobalNotTrainableAndColocated) {
  ASSERT_OK_AND_ASSIGN(Variable emb, session_->GetVariable("slots/emb", Declared({10, 4}, 2)));
  ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("slots/w", Declared({3})));
  ASSERT_EQ(emb.parts().size(), 2u);
  // Byte balancing spreads the two parts over both shards.
  EXPECT_NE(emb.parts()[0].shard_id, emb.parts()[1].shard_id);

  Optimizer adam(*session_, opt::Adam{});  // default beta power names
  ASSERT_TRUE(IsOk(adam.ApplyGradients(
      {{Tensor(DT_FLOAT, TensorShape{10, 4}), emb}, {Tensor(DT_FLOAT, TensorShape{3}), w}})));

  const std::vector<std::string> global = Names(client::kGlobalVariables);
  const std::vector<std::string> trainable = Names(client::kTrainableVariables);
  for (const char* name : {"slots/emb/Adam", "slots/emb/Adam_1", "slots/w/Adam", "slots/w/Adam_1",
                           "beta1_power", "beta2_power"}) {
    EXPECT_TRUE(Contains(global, name)) << name;
    EXPECT_FALSE(Contains(trainable, name)) << name;
  }
  EXPECT_TRUE(Contains(trainable, "slots/emb"));

  ASSERT_OK_AND_ASSIGN(Variable m, adam.GetSlot(emb, "m"));
  ASSERT_OK_AND_ASSIGN(Variable v, adam.GetSlot(emb, "v"));
  EXPECT_EQ(m.name(), "slots/emb/Adam");
  EXPECT_EQ(v.name(), "slots/emb/Adam_1");
  EXPECT_FALSE(m.trainable());
  EXPECT_EQ(m.collections(), std::vector<std::string>{client::kGlobalVariables});
  for (const Variable& slot : {m, v}) {
    ASSERT_TRUE(slot.partitioned());
    EXPECT_EQ(slot.shape(), (TensorShape{10, 4}));
    EXPECT_EQ(slot.partitions(), emb.partitions());
    ASSERT_EQ(slot.parts().size(), 2u);
    for (int k = 0; k < 2; ++k) {
      EXPECT_EQ(slot.parts()[k].name, absl::StrCat(slot.name(), "/part_", k));
      EXPECT_EQ(slot.parts()[k].shard_id, emb.parts()[k].shard_id) << slot.parts()[k].name;
      EXPECT_EQ(slot.parts()[k].offset, emb.parts()[k].offset);
      EXPECT_EQ(slot.parts()[k].shape, emb.parts()[k].shape);
    }
  }
  ASSERT_OK_AND_ASSIGN(Variable wm, adam.GetSlot(w, "m"));
  EXPECT_EQ(wm.parts()[0].shard_id, w.parts()[0].shard_id);

  // beta powers: scalars beside the first variable by name, advanced once.
  std::vector<Variable> powers = adam.NonSlotVariables();
  ASSERT_EQ(powers.size(), 2u);
  EXPECT_EQ(powers[0].name(), "beta1_power");
  EXPECT_EQ(powers[1].name(), "beta2_power");
  for (const Variable& p : powers) {
    EXPECT_EQ(p.shape(), TensorShape{});
    EXPECT_FALSE(p.trainable());
    EXPECT_EQ(p.parts()[0].shard_id, emb.parts()[0].shard_id);
  }
  ASSERT_OK_AND_ASSIGN(Tensor b1, powers[0].Read());
  EXPECT_FLOAT_EQ(b1.data<float>()[0], 0.9f * 0.9f);

  // Slot initial values, per optimizer.
  struct Case {
    client::OptimizerConfig config;
    std::vector<std::string> names;
    std::vector<float> initial;
  };
  const std::vector<Case> cases = {
      {opt::Momentum{}, {"Momentum"}, {0}},
      {opt::Adagrad{}, {"Adagrad"}, {0.1f}},
      {opt::RMSProp{}, {"RMSProp", "RMSProp_1"}, {1, 0}},
      {opt::Ftrl{}, {"Ftrl", "Ftrl_1"}, {0.1f, 0}},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string name = absl::StrCat("slots/init", i++);
    ASSERT_OK_AND_ASSIGN(Variable var, session_->GetVariable(name, Declared({4, 2}, 2)));
    Optimizer o(*session_, c.config);
    ASSERT_TRUE(IsOk(o.CreateSlots({var})));
    const std::vector<std::string> slot_names = o.GetSlotNames();
    ASSERT_EQ(slot_names.size(), c.names.size());
    for (size_t j = 0; j < c.names.size(); ++j) {
      ASSERT_OK_AND_ASSIGN(Variable slot, o.GetSlot(var, slot_names[j]));
      EXPECT_EQ(slot.name(), name + "/" + c.names[j]);
      ASSERT_OK_AND_ASSIGN(Tensor value, slot.Read());
      for (float x : value.ToVector<float>()) EXPECT_FLOAT_EQ(x, c.initial[j]) << slot.name();
    }
  }
}

TEST_F(OptimizerTest, SecondTrainerAttachesToExistingSlots) {
  ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("attach/v", Declared({6, 2}, 2)));
  Optimizer first(*session_, opt::Momentum{});
  ASSERT_TRUE(IsOk(first.ApplyGradients({{Tensor(DT_FLOAT, TensorShape{6, 2}), v}})));
  ASSERT_OK_AND_ASSIGN(Variable mine, first.GetSlot(v, "momentum"));
  ASSERT_TRUE(IsOk(mine.Assign(Floats({6, 2}, std::vector<float>(12, 7.0f)))));

  std::unique_ptr<Session> other = NewSession();
  ASSERT_NE(other, nullptr);
  ASSERT_OK_AND_ASSIGN(Variable v2, other->GetVariable("attach/v", Declared({6, 2}, 2)));
  Optimizer second(*other, opt::Momentum{});
  ASSERT_TRUE(IsOk(second.CreateSlots({v2})));
  ASSERT_OK_AND_ASSIGN(Variable theirs, second.GetSlot(v2, "momentum"));
  EXPECT_EQ(theirs.name(), "attach/v/Momentum");
  // Attached, not re-created or re-initialized.
  ASSERT_OK_AND_ASSIGN(Tensor value, theirs.Read());
  EXPECT_EQ(value, Floats({6, 2}, std::vector<float>(12, 7.0f)));
  int count = 0;
  for (const std::string& n : Names("")) count += n == "attach/v/Momentum";
  EXPECT_EQ(count, 1);
}

// Adam's update in double, as the shard computes it (TensorFlow's ApplyAdam).
struct AdamReference {
  std::vector<double> var, m, v;
  double beta1_power, beta2_power;
  void Step(const opt::Adam& a, const std::vector<float>& g) {
    const double alpha = a.learning_rate * std::sqrt(1 - beta2_power) / (1 - beta1_power);
    for (size_t i = 0; i < var.size(); ++i) {
      m[i] += (g[i] - m[i]) * (1 - a.beta1);
      v[i] += (double(g[i]) * g[i] - v[i]) * (1 - a.beta2);
      var[i] -= alpha * m[i] / (std::sqrt(v[i]) + a.epsilon);
    }
    beta1_power *= a.beta1;
    beta2_power *= a.beta2;
  }
};

TEST_F(OptimizerTest, AdamOnPartitionedVariableMatchesUnpartitionedAndReference) {
  const TensorShape shape{6, 3};
  ASSERT_OK_AND_ASSIGN(Variable parted,
                       session_->GetVariable("adam/parted", Declared(shape, 3, 5)));
  ASSERT_OK_AND_ASSIGN(Variable whole, session_->GetVariable("adam/whole", Declared(shape, 0, 5)));
  ASSERT_EQ(parted.parts().size(), 3u);
  ASSERT_OK_AND_ASSIGN(Tensor initial, whole.Read());
  ASSERT_OK_AND_ASSIGN(Tensor initial_parted, parted.Read());
  ASSERT_EQ(initial, initial_parted);  // same seed: same values

  const opt::Adam pa = AdamNamed("adam/p"), wa = AdamNamed("adam/w");
  Optimizer p_opt(*session_, pa), w_opt(*session_, wa);
  AdamReference ref{{}, std::vector<double>(18), std::vector<double>(18), pa.beta1, pa.beta2};
  for (float x : initial.ToVector<float>()) ref.var.push_back(x);

  for (int step = 0; step < 5; ++step) {
    std::vector<float> g(18);
    for (int i = 0; i < 18; ++i) g[i] = std::sin(0.7f * i + step) * (1 + step);
    const Tensor grad = Floats(shape, g);
    ASSERT_TRUE(IsOk(p_opt.ApplyGradients({{grad, parted}})));
    ASSERT_TRUE(IsOk(w_opt.ApplyGradients({{grad, whole}})));
    ref.Step(pa, g);
  }
  ASSERT_OK_AND_ASSIGN(Tensor p_value, parted.Read());
  ASSERT_OK_AND_ASSIGN(Tensor w_value, whole.Read());
  EXPECT_EQ(p_value, w_value);
  for (const char* slot : {"m", "v"}) {
    ASSERT_OK_AND_ASSIGN(Variable ps, p_opt.GetSlot(parted, slot));
    ASSERT_OK_AND_ASSIGN(Variable ws, w_opt.GetSlot(whole, slot));
    ASSERT_OK_AND_ASSIGN(Tensor a, ps.Read());
    ASSERT_OK_AND_ASSIGN(Tensor b, ws.Read());
    EXPECT_EQ(a, b) << slot;
    const std::vector<double>& want = std::string(slot) == "m" ? ref.m : ref.v;
    for (int i = 0; i < 18; ++i) EXPECT_NEAR(a.data<float>()[i], want[i], 1e-5) << slot << i;
  }
  for (int i = 0; i < 18; ++i) {
    EXPECT_NEAR(p_value.data<float>()[i], ref.var[i], 1e-5) << i;
    // Adam really moved it.
    EXPECT_NE(p_value.data<float>()[i], initial.data<float>()[i]) << i;
  }
  std::vector<Variable> powers = p_opt.NonSlotVariables();
  ASSERT_EQ(powers.size(), 2u);
  ASSERT_OK_AND_ASSIGN(Tensor b1, powers[0].Read());
  ASSERT_OK_AND_ASSIGN(Tensor b2, powers[1].Read());
  EXPECT_NEAR(b1.data<float>()[0], std::pow(0.9, 6), 1e-6);
  EXPECT_NEAR(b2.data<float>()[0], std::pow(0.999, 6), 1e-6);
}

TEST_F(OptimizerTest, SparseAdagradOnPartitionedEmbeddingSumsDuplicatesAcrossParts) {
  ASSERT_OK_AND_ASSIGN(Variable emb, session_->GetVariable("adagrad/emb", Declared({8, 2}, 2, 9)));
  ASSERT_EQ(emb.parts().size(), 2u);  // rows 0-3 and 4-7
  ASSERT_OK_AND_ASSIGN(Tensor initial, emb.Read());
  opt::Adagrad config;
  config.learning_rate = 0.5;
  Optimizer adagrad(*session_, config);

  std::vector<double> var(initial.data<float>(), initial.data<float>() + 16);
  std::vector<double> accum(16, 0.1);
  const std::vector<std::vector<int64_t>> steps = {{1, 5, 1, 7, 5, 0}, {7, 7, 2}};
  for (size_t s = 0; s < steps.size(); ++s) {
    const std::vector<int64_t>& ids = steps[s];
    std::vector<float> rows;
    for (size_t j = 0; j < ids.size(); ++j) {
      rows.push_back(0.25f * (j + 1));
      rows.push_back(-0.5f * (j + s + 1));
    }
    IndexedSlices grad{Floats({static_cast<int64_t>(ids.size()), 2}, rows), Int64s(ids),
                       TensorShape{8, 2}};
    ASSERT_TRUE(IsOk(adagrad.ApplyGradients({{grad, emb}})));
    // Reference: duplicates summed, then each touched row updated once.
    std::map<int64_t, std::vector<double>> summed;
    for (size_t j = 0; j < ids.size(); ++j) {
      auto& row = summed[ids[j]];
      row.resize(2);
      row[0] += rows[2 * j];
      row[1] += rows[2 * j + 1];
    }
    for (const auto& [id, g] : summed) {
      for (int c = 0; c < 2; ++c) {
        const size_t e = static_cast<size_t>(id * 2 + c);
        accum[e] += g[c] * g[c];
        var[e] -= config.learning_rate * g[c] / std::sqrt(accum[e]);
      }
    }
  }
  ASSERT_OK_AND_ASSIGN(Tensor value, emb.Read());
  ASSERT_OK_AND_ASSIGN(Variable acc_slot, adagrad.GetSlot(emb, "accumulator"));
  ASSERT_OK_AND_ASSIGN(Tensor acc, acc_slot.Read());
  for (int e = 0; e < 16; ++e) {
    EXPECT_NEAR(value.data<float>()[e], var[e], 1e-5) << e;
    EXPECT_NEAR(acc.data<float>()[e], accum[e], 1e-5) << e;
  }
  // Untouched rows (3, 4, 6) are exactly as they were.
  for (int row : {3, 4, 6}) {
    for (int c = 0; c < 2; ++c) {
      EXPECT_EQ(value.data<float>()[row * 2 + c], initial.data<float>()[row * 2 + c]);
      EXPECT_FLOAT_EQ(acc.data<float>()[row * 2 + c], 0.1f);
    }
  }
}

TEST_F(OptimizerTest, TwoTrainersApplyingToOneVariableLoseNoUpdate) {
  GetVariableOptions o;
  o.shape = TensorShape{8};
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("sgd/v", o));
  constexpr int kSteps = 60;
  std::vector<std::thread> trainers;
  std::vector<absl::Status> results(2);
  for (int t = 0; t < 2; ++t) {
    trainers.emplace_back([&, t] {
      std::unique_ptr<Session> session = NewSession();
      if (session == nullptr) return;
      auto var = session->GetVariable("sgd/v", o);
      if (!var.ok()) {
        results[t] = var.status();
        return;
      }
      opt::GradientDescent sgd;
      sgd.learning_rate = 0.5;
      Optimizer optimizer(*session, sgd);
      const Tensor grad = Floats({8}, std::vector<float>(8, 1.0f));
      for (int i = 0; i < kSteps && results[t].ok(); ++i) {
        results[t] = optimizer.ApplyGradients({{grad, *var}});
      }
    });
  }
  for (auto& t : trainers) t.join();
  for (const auto& r : results) EXPECT_TRUE(IsOk(r));
  ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  EXPECT_EQ(value, Floats({8}, std::vector<float>(8, -0.5f * 2 * kSteps)));
}

// Optimizers made one after another (say, one per step) apply through the
// session's pooled shard clients and the process's request id, so they do
// not use up the shard's table of 1024 exactly-once clients (each used to
// connect appliers with client ids of their own, kept 10 idle minutes).
TEST_F(OptimizerTest, SequentialOptimizersDoNotExhaustTheShardsClientTable) {
  GetVariableOptions o;
  o.shape = TensorShape{2};
  o.initializer = init::Zeros();
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("many_opts/v", o));
  constexpr int kOptimizers = 1200;  // more than the shard's 1024 client slots
  const Tensor grad = Floats({2}, {1, 1});
  for (int i = 0; i < kOptimizers; ++i) {
    Optimizer optimizer(*session_, opt::GradientDescent{1.0});
    ASSERT_TRUE(IsOk(optimizer.ApplyGradients({{grad, v}}))) << "optimizer " << i;
  }
  ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  EXPECT_EQ(value, Floats({2}, {-static_cast<float>(kOptimizers), -static_cast<float>(kOptimizers)}));
}

TEST_F(OptimizerTest, BadGradientFailsAloneNamingTheVariable) {
  ASSERT_OK_AND_ASSIGN(Variable a, session_->GetVariable("bad/a", Declared({4, 2}, 2)));
  ASSERT_OK_AND_ASSIGN(Variable b, session_->GetVariable("bad/b", Declared({3})));
  ASSERT_OK_AND_ASSIGN(Tensor a0, a.Read());
  ASSERT_OK_AND_ASSIGN(Tensor b0, b.Read());
  opt::GradientDescent sgd;
  sgd.learning_rate = 1.0;
  Optimizer optimizer(*session_, sgd);

  std::vector<absl::Status> statuses;
  absl::Status s = optimizer.ApplyGradients(
      {{Floats({3, 2}, std::vector<float>(6, 1)), a}, {Floats({3}, {1, 2, 3}), b}}, &statuses);
  EXPECT_TRUE(IsError(s, absl::StatusCode::kInvalidArgument,
                      {"variable 'bad/a'", "var and grad do not have the same shape[4,2] [3,2]"}));
  ASSERT_EQ(statuses.size(), 2u);
  EXPECT_FALSE(statuses[0].ok());
  EXPECT_TRUE(IsOk(statuses[1]));
  ASSERT_OK_AND_ASSIGN(Tensor a1, a.Read());
  ASSERT_OK_AND_ASSIGN(Tensor b1, b.Read());
  EXPECT_EQ(a1, a0);
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(b1.data<float>()[i], b0.data<float>()[i] - (i + 1));

  // A bad index fails in the full variable's terms before any part applies.
  IndexedSlices bad_index{Floats({2, 2}, {1, 1, 1, 1}), Int64s({1, 9})};
  EXPECT_TRUE(IsError(optimizer.ApplyGradients({{bad_index, a}}),
                      absl::StatusCode::kInvalidArgument,
                      {"variable 'bad/a'", "Index 9 at offset 1 in indices is out of range"}));
  // Wrong dtype, and sparse rows of the wrong width.
  EXPECT_TRUE(IsError(optimizer.ApplyGradients({{Tensor(DT_DOUBLE, TensorShape{3}), b}}),
                      absl::StatusCode::kInvalidArgument, {"variable 'bad/b'", "dtype"}));
  IndexedSlices wide{Floats({1, 3}, {1, 1, 1}), Int64s({0})};
  EXPECT_TRUE(IsError(optimizer.ApplyGradients({{wide, a}}), absl::StatusCode::kInvalidArgument,
                      {"variable 'bad/a'", "var and grad must match in dimension 1"}));
  ASSERT_OK_AND_ASSIGN(a1, a.Read());
  EXPECT_EQ(a1, a0);
}

TEST_F(OptimizerTest, SparseMaskDropsMaskedIndices) {
  IndexedSlices a{Floats({4, 1}, {10, 11, 12, 13}), Int64s({0, 3, 5, 3}), TensorShape{6, 1}};
  ASSERT_OK_AND_ASSIGN(IndexedSlices masked, client::SparseMask(a, Int64s({3})));
  EXPECT_EQ(masked.indices, Int64s({0, 5}));
  EXPECT_EQ(masked.values, Floats({2, 1}, {10, 12}));
  ASSERT_TRUE(masked.dense_shape.has_value());
  EXPECT_EQ(*masked.dense_shape, (TensorShape{6, 1}));
}

}  // namespace
}  // namespace integration
}  // namespace psd
