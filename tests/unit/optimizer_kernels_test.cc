// The CPU device's optimizer kernels against a double-precision reference
// written here from the optimizers' published update rules, for every
// optimizer (Nesterov, centered RMSProp, FTRL with l1/l2/shrinkage included)
// and every floating dtype, dense and sparse.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "device/device.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/dtype.h"
#include "psd/float16.h"

namespace psd {
namespace {

using ::testing::HasSubstr;

// ---- The reference: one element's step in double. ----

struct RefState {
  double var;
  double slot[3];
};

double Sign(double x) { return x > 0 ? 1 : (x < 0 ? -1 : 0); }

void ReferenceStep(const OptimizerParams& p, double g, RefState* s) {
  double& var = s->var;
  switch (p.kind) {
    case OptimizerKind::kGradientDescent:
      var -= p.learning_rate * g;
      break;
    case OptimizerKind::kMomentum: {
      double& v = s->slot[0];
      v = p.momentum * v + g;
      // Nesterov: the step looks ahead along the new velocity.
      var -= p.use_nesterov ? p.learning_rate * (g + p.momentum * v) : p.learning_rate * v;
      break;
    }
    case OptimizerKind::kAdagrad: {
      double& a = s->slot[0];
      a += g * g;
      var -= p.learning_rate * g / std::sqrt(a);
      break;
    }
    case OptimizerKind::kAdam: {
      double& m = s->slot[0];
      double& v = s->slot[1];
      m = p.beta1 * m + (1 - p.beta1) * g;
      v = p.beta2 * v + (1 - p.beta2) * g * g;
      const double lr_t = p.learning_rate * std::sqrt(1 - p.beta2_power) / (1 - p.beta1_power);
      var -= lr_t * m / (std::sqrt(v) + p.epsilon);
      break;
    }
    case OptimizerKind::kRMSProp: {
      double& ms = s->slot[0];
      double& mom = s->slot[1];
      ms = p.decay * ms + (1 - p.decay) * g * g;
      mom = p.momentum * mom + p.learning_rate * g / std::sqrt(ms + p.epsilon);
      var -= mom;
      break;
    }
    case OptimizerKind::kCenteredRMSProp: {
      double& mg = s->slot[0];
      double& ms = s->slot[1];
      double& mom = s->slot[2];
      ms = p.decay * ms + (1 - p.decay) * g * g;
      mg = p.decay * mg + (1 - p.decay) * g;
      mom = p.momentum * mom + p.learning_rate * g / std::sqrt(ms - mg * mg + p.epsilon);
      var -= mom;
      break;
    }
    case OptimizerKind::kFtrl: {
      // McMahan et al. 2013 with TensorFlow's learning_rate_power and
      // l2_shrinkage (the shrinkage enters the linear term only).
      double& n = s->slot[0];
      double& z = s->slot[1];
      const double n_new = n + g * g;
      const double sigma = (std::pow(n_new, -p.lr_power) - std::pow(n, -p.lr_power)) /
                           p.learning_rate;
      z += g + 2 * p.l2_shrinkage * var - sigma * var;
      n = n_new;
      if (std::abs(z) <= p.l1) {
        var = 0;
      } else {
        var = (Sign(z) * p.l1 - z) / (std::pow(n_new, -p.lr_power) / p.learning_rate + 2 * p.l2);
      }
      break;
    }
  }
}

// ---- Values in and out of buffers of any floating dtype. ----

template <typename T>
T Make(double v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return T(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}
template <typename T>
double ToDouble(T v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return static_cast<float>(v);
  } else {
    return static_cast<double>(v);
  }
}

std::string Encode(DataType dtype, const std::vector<double>& values) {
  return DispatchFixedSize(
      dtype,
      [&](auto t) {
        using T = decltype(t);
        std::string bytes(values.size() * sizeof(T), '\0');
        for (size_t i = 0; i < values.size(); ++i) {
          const T v = Make<T>(values[i]);
          std::memcpy(&bytes[i * sizeof(T)], &v, sizeof(T));
        }
        return bytes;
      },
      [] { return std::string(); });
}

std::vector<double> Decode(DataType dtype, const void* data, size_t n) {
  return DispatchFixedSize(
      dtype,
      [&](auto t) {
        using T = decltype(t);
        std::vector<double> out(n);
        for (size_t i = 0; i < n; ++i) {
          T v;
          std::memcpy(&v, static_cast<const char*>(data) + i * sizeof(T), sizeof(T));
          out[i] = ToDouble(v);
        }
        return out;
      },
      [] { return std::vector<double>(); });
}

// The value `x` takes when stored in `dtype`.
double Round(DataType dtype, double x) {
  const std::string bytes = Encode(dtype, {x});
  return Decode(dtype, bytes.data(), 1)[0];
}

// Relative precision of the dtype's storage (one unit in the last place).
double Ulp(DataType dtype) {
  switch (dtype) {
    case DT_DOUBLE: return 0x1p-52;
    case DT_FLOAT: return 0x1p-23;
    case DT_HALF: return 0x1p-10;
    default: return 0x1p-7;  // bfloat16
  }
}

struct Case {
  std::string name;
  OptimizerParams params;
  // Initial slot values (TensorFlow's slot initializers: Adagrad 0.1,
  // RMSProp's ms ones, FTRL's accumulator 0.1, zeros otherwise).
  std::vector<double> slot_init;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> cases;
  OptimizerParams p;
  p.kind = OptimizerKind::kGradientDescent;
  p.learning_rate = 0.1;
  cases.push_back({"GradientDescent", p, {}});

  p = OptimizerParams();
  p.kind = OptimizerKind::kMomentum;
  p.learning_rate = 0.05;
  p.momentum = 0.9;
  cases.push_back({"Momentum", p, {0.0}});
  p.use_nesterov = true;
  cases.push_back({"MomentumNesterov", p, {0.0}});

  p = OptimizerParams();
  p.kind = OptimizerKind::kAdagrad;
  p.learning_rate = 0.2;
  cases.push_back({"Adagrad", p, {0.1}});

  p = OptimizerParams();
  p.kind = OptimizerKind::kAdam;
  p.learning_rate = 0.01;
  p.beta1 = 0.9;
  p.beta2 = 0.999;
  p.epsilon = 1e-3;
  p.beta1_power = 0.9 * 0.9;
  p.beta2_power = 0.999 * 0.999;
  cases.push_back({"Adam", p, {0.0, 0.0}});

  p = OptimizerParams();
  p.kind = OptimizerKind::kRMSProp;
  p.learning_rate = 0.01;
  p.decay = 0.9;
  p.momentum = 0.5;
  p.epsilon = 1e-4;
  cases.push_back({"RMSProp", p, {1.0, 0.0}});
  p.kind = OptimizerKind::kCenteredRMSProp;
  cases.push_back({"CenteredRMSProp", p, {0.0, 1.0, 0.0}});  // mg, ms, mom

  p = OptimizerParams();
  p.kind = OptimizerKind::kFtrl;
  p.learning_rate = 0.5;
  p.lr_power = -0.5;
  cases.push_back({"Ftrl", p, {0.1, 0.0}});
  p.l1 = 0.05;
  p.l2 = 0.2;
  cases.push_back({"FtrlL1L2", p, {0.1, 0.0}});
  p.l2_shrinkage = 0.3;
  cases.push_back({"FtrlV2Shrinkage", p, {0.1, 0.0}});
  p.lr_power = -0.3;
  cases.push_back({"FtrlPower", p, {0.1, 0.0}});
  return cases;
}

// Deterministic test data: values spread over [-0.75, 0.75] and a few
// orders of magnitude, none at a point where the update changes branch.
double VarInit(int64_t i) { return 0.5 * std::cos(0.37 * i) + 0.25; }
double Gradient(int step, int64_t i) { return 0.5 * std::sin(1.3 * i + step) + 0.1 * step; }

// Rounds a reference state to storage after a step, as the kernels store it.
void RoundState(DataType dtype, int num_slots, RefState* s) {
  s->var = Round(dtype, s->var);
  for (int k = 0; k < num_slots; ++k) s->slot[k] = Round(dtype, s->slot[k]);
}

class OptimizerKernelsTest : public ::testing::TestWithParam<std::tuple<Case, DataType>> {
 protected:
  OptimizerKernelsTest() : device_(NewCpuDevice()) {}

  std::unique_ptr<DeviceBuffer> Buffer(DataType dtype, const std::vector<double>& values) {
    const std::string bytes = Encode(dtype, values);
    auto buffer = device_->Allocate(bytes.size());
    EXPECT_TRUE(buffer.ok());
    EXPECT_TRUE(device_->CopyFromHost(bytes.data(), bytes.size(), buffer->get(), 0).ok());
    return std::move(buffer).value();
  }

  // |actual - expected| within a few units of the dtype's last place
  // (steps compound one rounding each), plus an absolute floor for values
  // near zero.
  static void ExpectNear(DataType dtype, double expected, double actual, const std::string& what) {
    const double tolerance = 8 * Ulp(dtype) * std::max(1.0, std::abs(expected)) +
                             (dtype == DT_DOUBLE ? 1e-14 : (dtype == DT_FLOAT ? 1e-6 : 0));
    EXPECT_NEAR(actual, expected, tolerance) << what;
  }

  std::unique_ptr<Device> device_;
};

TEST_P(OptimizerKernelsTest, DenseStepsMatchReference) {
  const auto& [c, dtype] = GetParam();
  const int num_slots = NumOptimizerSlots(c.params.kind);
  ASSERT_EQ(static_cast<int>(c.slot_init.size()), num_slots);
  const int64_t n = 2500;  // crosses the kernels' block boundaries
  std::vector<RefState> ref(n);
  std::vector<double> var(n);
  std::vector<std::vector<double>> slots(num_slots, std::vector<double>(n));
  for (int64_t i = 0; i < n; ++i) {
    ref[i].var = var[i] = VarInit(i);
    for (int k = 0; k < num_slots; ++k) ref[i].slot[k] = slots[k][i] = c.slot_init[k];
    RoundState(dtype, num_slots, &ref[i]);
  }
  auto var_buffer = Buffer(dtype, var);
  std::vector<std::unique_ptr<DeviceBuffer>> slot_buffers;
  std::vector<DeviceBuffer*> slot_ptrs;
  for (auto& s : slots) {
    slot_buffers.push_back(Buffer(dtype, s));
    slot_ptrs.push_back(slot_buffers.back().get());
  }
  for (int step = 0; step < 3; ++step) {
    std::vector<double> grad(n);
    for (int64_t i = 0; i < n; ++i) grad[i] = Gradient(step, i);
    // The wire's bytes may sit at any alignment: odd steps offset them by
    // one byte (the kernels' copying path), even ones leave them aligned.
    const int offset = step % 2;
    const std::string bytes = std::string(offset, ' ') + Encode(dtype, grad);
    ASSERT_TRUE(device_->ApplyOptimizerDense(c.params, dtype, var_buffer.get(), slot_ptrs,
                                             bytes.data() + offset, n)
                    .ok());
    for (int64_t i = 0; i < n; ++i) {
      ReferenceStep(c.params, Round(dtype, grad[i]), &ref[i]);
      RoundState(dtype, num_slots, &ref[i]);
    }
  }
  const auto got = Decode(dtype, var_buffer->data(), n);
  for (int64_t i = 0; i < n; ++i) {
    ExpectNear(dtype, ref[i].var, got[i], "var[" + std::to_string(i) + "]");
    if (HasFailure()) return;  // one element's report is enough
  }
  for (int k = 0; k < num_slots; ++k) {
    const auto slot = Decode(dtype, slot_buffers[k]->data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ExpectNear(dtype, ref[i].slot[k], slot[i],
                 "slot " + std::to_string(k) + "[" + std::to_string(i) + "]");
      if (HasFailure()) return;
    }
  }
}

// Duplicate indices are summed first, then each distinct row of the
// variable and its slots is updated once; other rows keep their values.
TEST_P(OptimizerKernelsTest, SparseSumsDuplicatesThenUpdatesEachRowOnce) {
  const auto& [c, dtype] = GetParam();
  const int num_slots = NumOptimizerSlots(c.params.kind);
  const int64_t rows = 7, cols = 1100;  // rows wider than a kernel block
  std::vector<double> var(rows * cols);
  std::vector<RefState> ref(rows * cols);
  std::vector<std::vector<double>> slots(num_slots, std::vector<double>(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) {
    ref[i].var = var[i] = VarInit(i);
    for (int k = 0; k < num_slots; ++k) ref[i].slot[k] = slots[k][i] = c.slot_init[k];
    RoundState(dtype, num_slots, &ref[i]);
  }
  const std::vector<RefState> before = ref;
  auto var_buffer = Buffer(dtype, var);
  std::vector<std::unique_ptr<DeviceBuffer>> slot_buffers;
  std::vector<DeviceBuffer*> slot_ptrs;
  for (auto& s : slots) {
    slot_buffers.push_back(Buffer(dtype, s));
    slot_ptrs.push_back(slot_buffers.back().get());
  }
  const std::vector<int64_t> indices = {5, 1, 5, 3, 1, 5};
  std::vector<double> values(indices.size() * cols);
  for (size_t k = 0; k < values.size(); ++k) values[k] = Gradient(1, static_cast<int64_t>(k));
  const std::string bytes = Encode(dtype, values);
  ASSERT_TRUE(device_->ApplyOptimizerSparse(c.params, dtype, var_buffer.get(), slot_ptrs, cols,
                                            indices, bytes.data())
                  .ok());
  // Reference: sum each row's gradients, then one step per distinct row.
  for (int64_t row : {1, 3, 5}) {
    for (int64_t j = 0; j < cols; ++j) {
      double g = 0;
      for (size_t k = 0; k < indices.size(); ++k) {
        if (indices[k] == row) g += Round(dtype, values[k * cols + j]);
      }
      RefState& s = ref[row * cols + j];
      ReferenceStep(c.params, g, &s);
      RoundState(dtype, num_slots, &s);
    }
  }
  const auto got = Decode(dtype, var_buffer->data(), rows * cols);
  std::vector<std::vector<double>> got_slots;
  for (auto& b : slot_buffers) got_slots.push_back(Decode(dtype, b->data(), rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) {
    const bool touched = i / cols == 1 || i / cols == 3 || i / cols == 5;
    if (touched) {
      ExpectNear(dtype, ref[i].var, got[i], "var[" + std::to_string(i) + "]");
    } else {
      EXPECT_EQ(got[i], before[i].var) << "untouched var[" << i << "]";
    }
    for (int k = 0; k < num_slots; ++k) {
      if (touched) {
        ExpectNear(dtype, ref[i].slot[k], got_slots[k][i], "slot element " + std::to_string(i));
      } else {
        EXPECT_EQ(got_slots[k][i], before[i].slot[k]) << "untouched slot element " << i;
      }
    }
    if (HasFailure()) return;
  }
}

// The sum of `values` (already representable in `dtype`) as the kernels
// form it: in the compute type (double for float64, float otherwise), the
// first value converted and each later one added, in order.
double SumInComputeType(DataType dtype, const std::vector<double>& values) {
  if (dtype == DT_DOUBLE) {
    double sum = values[0];
    for (size_t k = 1; k < values.size(); ++k) sum += values[k];
    return sum;
  }
  float sum = static_cast<float>(values[0]);
  for (size_t k = 1; k < values.size(); ++k) sum += static_cast<float>(values[k]);
  return sum;
}

// A sparse apply equals, bit for bit, a dense apply of each distinct row
// with that row's gradients summed in arrival order in the compute type:
// for rows that arrive once (read from the wire) and rows that arrive many
// times interleaved with others (summed first), for many more indices than
// the kernel's smallest dedup table, for batches without duplicates, for
// rows narrower than a vector tail and wider than a kernel block, and with
// the gradient aligned or not.
// Float16 and bfloat16 gradients are multiples of 1/8 small enough that
// their sums are exact in the dtype, so the dense apply can be given them.
TEST_P(OptimizerKernelsTest, SparseEqualsDenseStepOfSummedRowsBitForBit) {
  const auto& [c, dtype] = GetParam();
  const int num_slots = NumOptimizerSlots(c.params.kind);
  const size_t elem = DataTypeSize(dtype);
  const bool exact_sums_only = dtype == DT_HALF || dtype == DT_BFLOAT16;
  const std::vector<std::pair<int64_t, bool>> shapes = {
      {37, false}, {37, true}, {1100, false}, {1100, true}};  // (cols, all distinct)
  for (const auto& [cols, distinct] : shapes) {
    SCOPED_TRACE("cols " + std::to_string(cols) + (distinct ? ", all distinct" : ", duplicates"));
    const int64_t rows = 300;
    // With duplicates: rows 0-4 arrive ten times each, every fourth
    // position, and 150 others once each. Else 200 rows once each.
    std::vector<int64_t> indices;
    for (int64_t k = 0; k < 200; ++k) {
      indices.push_back(distinct ? (k * 37) % rows
                                 : (k % 4 == 0 ? (k / 4) % 5 : 5 + (k * 37) % 295));
    }
    std::vector<double> values(indices.size() * cols);
    for (size_t k = 0; k < values.size(); ++k) {
      values[k] = exact_sums_only ? static_cast<double>(static_cast<int64_t>(k * 7 % 17) - 8) / 8
                                  : Round(dtype, Gradient(2, static_cast<int64_t>(k)));
    }
    std::vector<double> var_init(rows * cols);
    for (int64_t i = 0; i < rows * cols; ++i) var_init[i] = VarInit(i);
    std::vector<std::vector<double>> slot_init(num_slots);
    for (int k = 0; k < num_slots; ++k) {
      slot_init[k].assign(rows * cols, c.slot_init[k]);
      // Vary the slots too, keeping each optimizer's accumulators positive.
      for (int64_t i = 0; i < rows * cols; ++i) slot_init[k][i] *= 1 + 0.25 * std::sin(0.1 * i);
    }

    // Expected: the dense kernel on a copy of each distinct row.
    std::string want_var = Encode(dtype, var_init);
    std::vector<std::string> want_slots;
    for (auto& s : slot_init) want_slots.push_back(Encode(dtype, s));
    std::vector<std::vector<size_t>> arrivals(rows);
    for (size_t k = 0; k < indices.size(); ++k) arrivals[indices[k]].push_back(k);
    for (int64_t row = 0; row < rows; ++row) {
      if (arrivals[row].empty()) continue;
      std::vector<double> sum(cols);
      for (int64_t j = 0; j < cols; ++j) {
        std::vector<double> parts;
        for (size_t k : arrivals[row]) parts.push_back(values[k * cols + j]);
        sum[j] = SumInComputeType(dtype, parts);
        ASSERT_EQ(Round(dtype, sum[j]), sum[j]) << "the test's sums must be exact in the dtype";
      }
      const size_t at = row * cols * elem, len = cols * elem;
      auto var_row = device_->Allocate(len);
      ASSERT_TRUE(var_row.ok());
      ASSERT_TRUE(device_->CopyFromHost(&want_var[at], len, var_row->get(), 0).ok());
      std::vector<std::unique_ptr<DeviceBuffer>> slot_rows;
      std::vector<DeviceBuffer*> slot_row_ptrs;
      for (int k = 0; k < num_slots; ++k) {
        auto b = device_->Allocate(len);
        ASSERT_TRUE(b.ok());
        ASSERT_TRUE(device_->CopyFromHost(&want_slots[k][at], len, b->get(), 0).ok());
        slot_rows.push_back(std::move(b).value());
        slot_row_ptrs.push_back(slot_rows.back().get());
      }
      const std::string grad = Encode(dtype, sum);
      ASSERT_TRUE(device_
                      ->ApplyOptimizerDense(c.params, dtype, var_row->get(), slot_row_ptrs,
                                            grad.data(), cols)
                      .ok());
      std::memcpy(&want_var[at], (*var_row)->data(), len);
      for (int k = 0; k < num_slots; ++k)
        std::memcpy(&want_slots[k][at], slot_rows[k]->data(), len);
    }

    for (const int offset : {0, 1}) {
      SCOPED_TRACE("gradient offset " + std::to_string(offset));
      auto var_buffer = Buffer(dtype, var_init);
      std::vector<std::unique_ptr<DeviceBuffer>> slot_buffers;
      std::vector<DeviceBuffer*> slot_ptrs;
      for (auto& s : slot_init) {
        slot_buffers.push_back(Buffer(dtype, s));
        slot_ptrs.push_back(slot_buffers.back().get());
      }
      const std::string bytes = std::string(offset, ' ') + Encode(dtype, values);
      ASSERT_TRUE(device_
                      ->ApplyOptimizerSparse(c.params, dtype, var_buffer.get(), slot_ptrs, cols,
                                             indices, bytes.data() + offset)
                      .ok());
      // cols is a structured binding: captured through an init-capture (C++17
      // lambdas cannot name one; gcc allows it, clang does not).
      auto first_difference = [&, cols = cols](const std::string& want,
                                               const DeviceBuffer& got) -> int64_t {
        for (int64_t i = 0; i < rows * cols; ++i) {
          if (std::memcmp(&want[i * elem], static_cast<const char*>(got.data()) + i * elem, elem) !=
              0) {
            return i;
          }
        }
        return -1;
      };
      EXPECT_EQ(first_difference(want_var, *var_buffer), -1) << "var element differs";
      for (int k = 0; k < num_slots; ++k) {
        EXPECT_EQ(first_difference(want_slots[k], *slot_buffers[k]), -1)
            << "slot " << k << " element differs";
      }
    }
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::tuple<Case, DataType>>& info) {
  return std::get<0>(info.param).name + "_" + DataTypeName(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(AllOptimizersAllDtypes, OptimizerKernelsTest,
                         ::testing::Combine(::testing::ValuesIn(Cases()),
                                            ::testing::Values(DT_FLOAT, DT_DOUBLE, DT_HALF,
                                                              DT_BFLOAT16)),
                         CaseName);

// Adam's first step from zero slots with epsilon = 0 moves every element by
// exactly learning_rate against the gradient's sign (the bias corrections
// cancel): var = 1 - 0.25 * sign(g).
TEST(OptimizerKernelsHandTest, AdamFirstStepMovesByLearningRate) {
  auto device = NewCpuDevice();
  OptimizerParams p;
  p.kind = OptimizerKind::kAdam;
  p.learning_rate = 0.25;
  p.beta1 = 0.9;
  p.beta2 = 0.999;
  p.epsilon = 0;
  p.beta1_power = 0.9;
  p.beta2_power = 0.999;
  auto var = *device->Allocate(4 * sizeof(float));
  auto m = *device->Allocate(4 * sizeof(float));
  auto v = *device->Allocate(4 * sizeof(float));
  const float ones[4] = {1, 1, 1, 1}, zeros[4] = {0, 0, 0, 0}, grad[4] = {3, -0.5, 1e-3, -40};
  ASSERT_TRUE(device->CopyFromHost(ones, sizeof ones, var.get(), 0).ok());
  ASSERT_TRUE(device->CopyFromHost(zeros, sizeof zeros, m.get(), 0).ok());
  ASSERT_TRUE(device->CopyFromHost(zeros, sizeof zeros, v.get(), 0).ok());
  DeviceBuffer* slots[] = {m.get(), v.get()};
  ASSERT_TRUE(device->ApplyOptimizerDense(p, DT_FLOAT, var.get(), slots, grad, 4).ok());
  const float* out = static_cast<const float*>(var->data());
  EXPECT_NEAR(out[0], 0.75, 1e-6);
  EXPECT_NEAR(out[1], 1.25, 1e-6);
  EXPECT_NEAR(out[2], 0.75, 1e-6);
  EXPECT_NEAR(out[3], 1.25, 1e-6);
}

// FTRL's l1 zeroes an element whose linear term stays within l1: with one
// step from var = 0, linear = g, so |g| <= l1 gives 0 and a larger |g|
// gives (sign(g) * l1 - g) / (sqrt(accum) / lr + 2 * l2).
TEST(OptimizerKernelsHandTest, FtrlL1ZeroesSmallLinearTerms) {
  auto device = NewCpuDevice();
  OptimizerParams p;
  p.kind = OptimizerKind::kFtrl;
  p.learning_rate = 1;
  p.lr_power = -0.5;
  p.l1 = 0.5;
  p.l2 = 0.25;
  auto var = *device->Allocate(2 * sizeof(double));
  auto accum = *device->Allocate(2 * sizeof(double));
  auto linear = *device->Allocate(2 * sizeof(double));
  const double zeros[2] = {0, 0}, grad[2] = {0.4, 3};
  ASSERT_TRUE(device->CopyFromHost(zeros, sizeof zeros, var.get(), 0).ok());
  ASSERT_TRUE(device->CopyFromHost(zeros, sizeof zeros, accum.get(), 0).ok());
  ASSERT_TRUE(device->CopyFromHost(zeros, sizeof zeros, linear.get(), 0).ok());
  DeviceBuffer* slots[] = {accum.get(), linear.get()};
  ASSERT_TRUE(device->ApplyOptimizerDense(p, DT_DOUBLE, var.get(), slots, grad, 2).ok());
  const double* out = static_cast<const double*>(var->data());
  EXPECT_EQ(out[0], 0.0);
  // accum = 9, linear = 3: (0.5 - 3) / (3 / 1 + 0.5) = -2.5 / 3.5.
  EXPECT_DOUBLE_EQ(out[1], -2.5 / 3.5);
}

TEST(OptimizerKernelsHandTest, WrongSlotCountIsInternal) {
  auto device = NewCpuDevice();
  OptimizerParams p;
  p.kind = OptimizerKind::kAdam;
  auto var = *device->Allocate(4 * sizeof(float));
  DeviceBuffer* slots[] = {var.get()};
  absl::Status s = device->ApplyOptimizerDense(p, DT_FLOAT, var.get(), slots, nullptr, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("slot"));
}

}  // namespace
}  // namespace psd
