// Philox4x32-10 and the initializers: fixed values for a fixed seed, the
// distributions, slices of partitioned variables, and spec validation.
#include "device/initializers.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "device/device.h"
#include "device/philox.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/dtype.h"
#include "psd/tensor.h"
#include "psd/wire.h"

namespace psd {
namespace {

using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

template <typename T>
double ToDouble(T v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return static_cast<float>(v);
  } else {
    return static_cast<double>(v);
  }
}

// The slice of a `full` variable at `offset`, as a tensor of `dtype`.
Tensor Fill(const InitializerSpec& spec, DataType dtype, const TensorShape& full,
            const TensorShape& slice, const std::vector<int64_t>& offset) {
  Tensor t(dtype, slice);
  absl::Status s = FillInitializer(spec, dtype, full, slice, offset, t.mutable_bytes()->data(),
                                   t.bytes().size());
  EXPECT_TRUE(s.ok()) << s;
  return t;
}

Tensor FillWhole(const InitializerSpec& spec, DataType dtype, const TensorShape& shape) {
  return Fill(spec, dtype, shape, shape, std::vector<int64_t>(shape.rank(), 0));
}

// Element values as doubles, whatever the dtype.
std::vector<double> Values(const Tensor& t) {
  std::vector<double> out;
  DispatchFixedSize(
      t.dtype(),
      [&](auto z) {
        using T = decltype(z);
        for (int64_t i = 0; i < t.num_elements(); ++i) {
          T v;
          std::memcpy(&v, t.bytes().data() + i * sizeof(T), sizeof(T));
          out.push_back(ToDouble(v));
        }
      },
      [] {});
  return out;
}

// The bytes of the `slice` at `offset` of a whole tensor, computed one
// element at a time from its coordinates: the reference for ForEachRun.
std::string SliceBytes(const Tensor& whole, const TensorShape& slice,
                       const std::vector<int64_t>& offset) {
  const size_t elem = DataTypeSize(whole.dtype());
  const int rank = slice.rank();
  std::string out;
  std::vector<int64_t> coord(rank, 0);
  for (int64_t i = 0; i < slice.num_elements(); ++i) {
    int64_t rest = i, global = 0, stride = 1;
    for (int d = rank - 1; d >= 0; --d) {
      coord[d] = rest % slice.dim(d);
      rest /= slice.dim(d);
      global += (coord[d] + offset[d]) * stride;
      stride *= whole.shape().dim(d);
    }
    out.append(whole.bytes().data() + global * elem, elem);
  }
  return out;
}

struct Moments {
  double mean, stddev, min, max;
};

Moments ComputeMoments(const std::vector<double>& v) {
  double sum = 0, sq = 0;
  for (double x : v) sum += x;
  const double mean = sum / v.size();
  for (double x : v) sq += (x - mean) * (x - mean);
  return {mean, std::sqrt(sq / v.size()), *std::min_element(v.begin(), v.end()),
          *std::max_element(v.begin(), v.end())};
}

InitializerSpec Uniform(double minval, double maxval, int64_t seed = 1) {
  InitializerSpec spec;
  spec.set_seed(seed);
  spec.mutable_random_uniform()->set_minval(minval);
  spec.mutable_random_uniform()->set_maxval(maxval);
  return spec;
}

InitializerSpec Normal(double mean, double stddev, int64_t seed = 1) {
  InitializerSpec spec;
  spec.set_seed(seed);
  spec.mutable_random_normal()->set_mean(mean);
  spec.mutable_random_normal()->set_stddev(stddev);
  return spec;
}

InitializerSpec TruncatedNormal(double mean, double stddev, int64_t seed = 1) {
  InitializerSpec spec;
  spec.set_seed(seed);
  spec.mutable_truncated_normal()->set_mean(mean);
  spec.mutable_truncated_normal()->set_stddev(stddev);
  return spec;
}

InitializerSpec UnitScaling(double factor, std::vector<int64_t> full_shape = {}, int64_t seed = 1) {
  InitializerSpec spec;
  spec.set_seed(seed);
  spec.mutable_uniform_unit_scaling()->set_factor(factor);
  for (int64_t d : full_shape) spec.mutable_uniform_unit_scaling()->add_full_shape(d);
  return spec;
}

InitializerSpec Constant(const Tensor& value) {
  InitializerSpec spec;
  TensorToProto(value, spec.mutable_constant()->mutable_value());
  return spec;
}

constexpr DataType kAllDtypes[] = {DT_FLOAT, DT_DOUBLE, DT_HALF,  DT_BFLOAT16, DT_INT8,
                                   DT_INT16, DT_INT32,  DT_INT64, DT_UINT8,    DT_BOOL};

// ---------------------------------------------------------------------------
// Philox.

// Random123's published known-answer vectors for philox4x32_10.
TEST(PhiloxTest, MatchesRandom123KnownAnswers) {
  EXPECT_EQ(Philox4x32({0, 0, 0, 0}, {0, 0}),
            (PhiloxBlock{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(Philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (PhiloxBlock{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(Philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (PhiloxBlock{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(PhiloxTest, UniformConversionsStayBelowOne) {
  EXPECT_EQ(UniformFloat(0), 0.0f);
  EXPECT_EQ(UniformFloat(0xffffffff), 1.0f - 0x1p-24f);
  EXPECT_EQ(UniformFloat(0x80000000), 0.5f);
  EXPECT_EQ(UniformDouble(0, 0), 0.0);
  EXPECT_EQ(UniformDouble(0xffffffff, 0xffffffff), 1.0 - 0x1p-53);
  EXPECT_EQ(UniformDouble(0x80000000, 0), 0.5);
}

// ---------------------------------------------------------------------------
// Fixed values.

// Element g of seed s is Philox({g, 0, 0, 0}, {s lo, s hi}); for seed 0 and
// element 0 that is the first known-answer vector.
TEST(InitializerValuesTest, ElementZeroOfSeedZeroIsTheKnownAnswerVector) {
  const Tensor t = FillWhole(Uniform(-1, 3, /*seed=*/0), DT_FLOAT, TensorShape{2});
  EXPECT_EQ(t.data<float>()[0], -1.0f + 4.0f * (0x6627e8 * 0x1p-24f));
  const Tensor d = FillWhole(Uniform(0, 1, /*seed=*/0), DT_DOUBLE, TensorShape{1});
  EXPECT_EQ(d.data<double>()[0], static_cast<double>(0x6627e8d5e169c58dull >> 11) * 0x1p-53);
}

// Pinned so that any change to the generator or the conversions shows up.
TEST(InitializerValuesTest, FixedSeedGivesFixedValues) {
  // Uniforms need no libm: exact.
  EXPECT_THAT(FillWhole(Uniform(-1, 1, 42), DT_FLOAT, TensorShape{4}).ToVector<float>(),
              ElementsAre(0x1.ceafp-3f, 0x1.f36c84p-1f, 0x1.4db008p-1f, 0x1.d6382p-2f));
  EXPECT_THAT(FillWhole(Uniform(-1, 1, 42), DT_DOUBLE, TensorShape{3}).ToVector<double>(),
              ElementsAre(0x1.ceaf05377f548p-3, 0x1.f36c849d4ee9ap-1, 0x1.4db00896a21d6p-1));
  EXPECT_THAT(FillWhole(Uniform(-5, 5, 42), DT_INT64, TensorShape{6}).ToVector<int64_t>(),
              ElementsAre(4, -2, 2, -4, 2, 1));
  EXPECT_THAT(FillWhole(Uniform(-5, 5, 42), DT_INT32, TensorShape{6}).ToVector<int32_t>(),
              ElementsAre(4, -2, 2, -4, 2, 1));
  // Box-Muller goes through libm's log and cos: pinned to a tolerance.
  using ::testing::DoubleNear;
  using ::testing::FloatNear;
  EXPECT_THAT(FillWhole(Normal(0, 1, 42), DT_FLOAT, TensorShape{4}).ToVector<float>(),
              ElementsAre(FloatNear(-1.35109222f, 1e-6), FloatNear(-1.38085485f, 1e-6),
                          FloatNear(-1.01850069f, 1e-6), FloatNear(-0.773442626f, 1e-6)));
  EXPECT_THAT(
      FillWhole(Normal(0, 1, 42), DT_DOUBLE, TensorShape{3}).ToVector<double>(),
      ElementsAre(DoubleNear(1.234541820550271, 1e-12), DoubleNear(-2.9550533475152116, 1e-12),
                  DoubleNear(-1.4934674670939774, 1e-12)));
  // Elements 48 and 50 are beyond 2 stddev on the first draw and redrawn.
  const std::vector<float> normal =
      FillWhole(Normal(0, 1, 42), DT_FLOAT, TensorShape{64}).ToVector<float>();
  const std::vector<float> truncated =
      FillWhole(TruncatedNormal(0, 1, 42), DT_FLOAT, TensorShape{64}).ToVector<float>();
  EXPECT_NEAR(normal[48], -2.2570703f, 1e-6);
  EXPECT_NEAR(truncated[48], -0.601412535f, 1e-6);
  EXPECT_NEAR(normal[50], -2.06680679f, 1e-6);
  EXPECT_NEAR(truncated[50], -1.48367798f, 1e-6);
  EXPECT_EQ(truncated[49], normal[49]);
}

TEST(InitializerValuesTest, NegativeSeedUsesAllSixtyFourBits) {
  const Tensor a = FillWhole(Uniform(0, 1, -1), DT_FLOAT, TensorShape{1});
  EXPECT_EQ(a.data<float>()[0],
            UniformFloat(Philox4x32({0, 0, 0, 0}, {0xffffffff, 0xffffffff})[0]));
}

TEST(InitializerValuesTest, SameSeedSameValuesDifferentSeedDifferentValues) {
  const TensorShape shape{16, 8};
  for (const InitializerSpec& spec :
       {Normal(0, 1, 5), TruncatedNormal(0, 1, 5), Uniform(0, 1, 5), UnitScaling(1.0, {}, 5)}) {
    const Tensor a = FillWhole(spec, DT_FLOAT, shape);
    EXPECT_EQ(a, FillWhole(spec, DT_FLOAT, shape));
    InitializerSpec other = spec;
    other.set_seed(6);
    const std::vector<float> va = a.ToVector<float>();
    const std::vector<float> vb = FillWhole(other, DT_FLOAT, shape).ToVector<float>();
    int same = 0;
    for (size_t i = 0; i < va.size(); ++i) same += va[i] == vb[i];
    EXPECT_LE(same, 2) << spec.DebugString();
    // Neither are the elements of one variable copies of each other.
    EXPECT_GT(std::set<float>(va.begin(), va.end()).size(), va.size() - 3);
  }
}

// ---------------------------------------------------------------------------
// Distributions.

TEST(InitializerDistributionTest, TruncatedNormalStaysWithinTwoStddev) {
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE}) {
    const std::vector<double> v =
        Values(FillWhole(TruncatedNormal(3, 2, 9), dtype, TensorShape{100000}));
    const Moments m = ComputeMoments(v);
    EXPECT_GE(m.min, 3 - 4.0);
    EXPECT_LE(m.max, 3 + 4.0);
    // It does reach close to the bounds.
    EXPECT_LT(m.min, 3 - 3.95);
    EXPECT_GT(m.max, 3 + 3.95);
    EXPECT_NEAR(m.mean, 3.0, 0.02) << DataTypeName(dtype);
    // A normal truncated at +-2 sigma keeps 0.8796 of its stddev.
    EXPECT_NEAR(m.stddev, 2 * 0.8796, 0.02) << DataTypeName(dtype);
  }
}

TEST(InitializerDistributionTest, TruncatedNormalInHalfAndBFloat16) {
  for (DataType dtype : {DT_HALF, DT_BFLOAT16}) {
    const Moments m =
        ComputeMoments(Values(FillWhole(TruncatedNormal(0, 1, 9), dtype, TensorShape{100000})));
    EXPECT_GE(m.min, -2.0);
    EXPECT_LE(m.max, 2.0);
    EXPECT_NEAR(m.mean, 0.0, 0.01) << DataTypeName(dtype);
    EXPECT_NEAR(m.stddev, 0.8796, 0.01) << DataTypeName(dtype);
  }
}

TEST(InitializerDistributionTest, RandomNormalHasItsMeanAndStddev) {
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16}) {
    const Moments m =
        ComputeMoments(Values(FillWhole(Normal(-1, 0.5, 3), dtype, TensorShape{100000})));
    EXPECT_NEAR(m.mean, -1.0, 0.01) << DataTypeName(dtype);
    EXPECT_NEAR(m.stddev, 0.5, 0.01) << DataTypeName(dtype);
    // Unbounded: some values lie beyond 4 stddev (about 6 in 100k).
    EXPECT_LT(m.min, -1.0 - 4 * 0.5);
  }
}

TEST(InitializerDistributionTest, StddevZeroGivesTheMean) {
  EXPECT_THAT(FillWhole(Normal(2.5, 0, 3), DT_FLOAT, TensorShape{5}).ToVector<float>(), Each(2.5f));
  EXPECT_THAT(FillWhole(TruncatedNormal(-1, 0, 3), DT_DOUBLE, TensorShape{5}).ToVector<double>(),
              Each(-1.0));
}

TEST(InitializerDistributionTest, RandomUniformFloatsStayInRange) {
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE}) {
    const Moments m =
        ComputeMoments(Values(FillWhole(Uniform(-2, 6, 4), dtype, TensorShape{100000})));
    EXPECT_GE(m.min, -2.0);
    EXPECT_LT(m.max, 6.0);
    EXPECT_LT(m.min, -1.99);
    EXPECT_GT(m.max, 5.99);
    EXPECT_NEAR(m.mean, 2.0, 0.05) << DataTypeName(dtype);
    EXPECT_NEAR(m.stddev, 8 / std::sqrt(12.0), 0.02) << DataTypeName(dtype);
  }
  // 16-bit floats: rounding to the dtype can land on maxval itself.
  for (DataType dtype : {DT_HALF, DT_BFLOAT16}) {
    const Moments m =
        ComputeMoments(Values(FillWhole(Uniform(-2, 6, 4), dtype, TensorShape{100000})));
    EXPECT_GE(m.min, -2.0);
    EXPECT_LE(m.max, 6.0);
    EXPECT_NEAR(m.mean, 2.0, 0.05) << DataTypeName(dtype);
  }
}

// lo + (hi - lo) * u can round up to hi in float even though u < 1; the fill
// steps back below it.
TEST(InitializerDistributionTest, RandomUniformNeverReturnsMaxvalThroughRounding) {
  // With [1, 2) every u >= 1 - 2^-24 would round to 2.0f.
  const std::vector<float> v =
      FillWhole(Uniform(1, 2, 11), DT_FLOAT, TensorShape{200000}).ToVector<float>();
  EXPECT_LT(*std::max_element(v.begin(), v.end()), 2.0f);
}

TEST(InitializerDistributionTest, RandomUniformIntegersCoverTheHalfOpenRange) {
  for (DataType dtype : {DT_INT32, DT_INT64}) {
    const std::vector<double> v = Values(FillWhole(Uniform(-3, 4, 8), dtype, TensorShape{10000}));
    const std::set<double> seen(v.begin(), v.end());
    EXPECT_THAT(seen, ElementsAre(-3, -2, -1, 0, 1, 2, 3)) << DataTypeName(dtype);
  }
}

TEST(InitializerDistributionTest, RandomUniformIntegersAcceptTheWholeDtypeRange) {
  const std::vector<int32_t> i32 =
      FillWhole(Uniform(-0x1p31, 0x1p31, 8), DT_INT32, TensorShape{1000}).ToVector<int32_t>();
  EXPECT_LT(*std::min_element(i32.begin(), i32.end()), -(1 << 30));
  EXPECT_GT(*std::max_element(i32.begin(), i32.end()), 1 << 30);
  const std::vector<int64_t> i64 =
      FillWhole(Uniform(-0x1p63, 0x1p63, 8), DT_INT64, TensorShape{1000}).ToVector<int64_t>();
  EXPECT_LT(*std::min_element(i64.begin(), i64.end()), -(int64_t{1} << 62));
  EXPECT_GT(*std::max_element(i64.begin(), i64.end()), int64_t{1} << 62);
  // A one-value range.
  EXPECT_THAT(FillWhole(Uniform(7, 8, 8), DT_INT64, TensorShape{4}).ToVector<int64_t>(), Each(7));
}

TEST(InitializerDistributionTest, UnitScalingLimitFollowsTensorFlow) {
  EXPECT_DOUBLE_EQ(UnitScalingLimit(1.0, {}), std::sqrt(3.0));
  EXPECT_DOUBLE_EQ(UnitScalingLimit(2.0, {10}), 2 * std::sqrt(3.0));
  EXPECT_DOUBLE_EQ(UnitScalingLimit(1.0, {300, 20}), 0.1);
  EXPECT_DOUBLE_EQ(UnitScalingLimit(1.5, {4, 25, 7}), 1.5 * std::sqrt(0.03));
  EXPECT_DOUBLE_EQ(UnitScalingLimit(1.0, {0, 5}), std::sqrt(3.0));  // input_size at least 1
}

TEST(InitializerDistributionTest, UnitScalingUsesTheSpecsFullShape) {
  // One part, [50, 1000], of a [100, 1000] variable: the limit comes from
  // the spec's full_shape, not from the part's shape.
  const double limit = 2 * std::sqrt(3.0 / 100);
  const Moments m = ComputeMoments(
      Values(FillWhole(UnitScaling(2.0, {100, 1000}), DT_FLOAT, TensorShape{50, 1000})));
  EXPECT_GE(m.min, -limit);
  EXPECT_LT(m.max, limit);
  EXPECT_LT(m.min, -0.999 * limit);
  EXPECT_GT(m.max, 0.999 * limit);
}

TEST(InitializerDistributionTest, UnitScalingWithoutFullShapeUsesTheVariableShape) {
  const double limit = 0.1;  // sqrt(3 / 300)
  const Moments m =
      ComputeMoments(Values(FillWhole(UnitScaling(1.0), DT_DOUBLE, TensorShape{300, 20})));
  EXPECT_GE(m.min, -limit);
  EXPECT_LT(m.max, limit);
  EXPECT_LT(m.min, -0.99 * limit);
  EXPECT_GT(m.max, 0.99 * limit);
  // The full shape of a partitioned variable, not the slice's.
  const Tensor part =
      Fill(UnitScaling(1.0), DT_DOUBLE, TensorShape{300, 20}, TensorShape{3, 20}, {100, 0});
  for (double v : Values(part)) EXPECT_LE(std::fabs(v), limit);
}

TEST(InitializerDistributionTest, UnitScalingFactorIsUsedAsGiven) {
  EXPECT_THAT(Values(FillWhole(UnitScaling(0.0), DT_FLOAT, TensorShape{3, 4})), Each(0.0));
  // A negative factor mirrors the interval: still within |limit|.
  for (double v : Values(FillWhole(UnitScaling(-1.0), DT_FLOAT, TensorShape{3, 4}))) {
    EXPECT_LE(std::fabs(v), 1.0);
  }
}

TEST(InitializerDistributionTest, DefaultInitializerPerDtype) {
  const TensorShape shape{30, 40};
  const double limit = std::sqrt(3.0 / 30);
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16}) {
    InitializerSpec spec;
    spec.set_seed(3);
    spec.mutable_default_initializer();
    const Moments m = ComputeMoments(Values(FillWhole(spec, dtype, shape)));
    // Rounding to a 16-bit float can step just past the limit (one half ulp).
    const double slack = dtype == DT_BFLOAT16 ? 0x1p-8 : dtype == DT_HALF ? 0x1p-11 : 0;
    EXPECT_GE(m.min, -limit * (1 + slack)) << DataTypeName(dtype);
    EXPECT_LE(m.max, limit * (1 + slack)) << DataTypeName(dtype);
    EXPECT_GT(m.max - m.min, 1.9 * limit) << DataTypeName(dtype);
  }
  // Exactly uniform_unit_scaling(1.0) with the variable's full shape.
  InitializerSpec spec;
  spec.set_seed(3);
  spec.mutable_default_initializer();
  EXPECT_EQ(FillWhole(spec, DT_FLOAT, shape), FillWhole(UnitScaling(1.0, {}, 3), DT_FLOAT, shape));
  for (DataType dtype : {DT_INT8, DT_INT16, DT_INT32, DT_INT64, DT_UINT8, DT_BOOL}) {
    EXPECT_THAT(Values(FillWhole(spec, dtype, shape)), Each(0.0)) << DataTypeName(dtype);
  }
}

// ---------------------------------------------------------------------------
// Deterministic initializers.

TEST(InitializerConstantTest, ZerosAndOnesForEveryDtype) {
  InitializerSpec zeros, ones;
  zeros.mutable_zeros();
  ones.mutable_ones();
  for (DataType dtype : kAllDtypes) {
    EXPECT_THAT(Values(FillWhole(zeros, dtype, TensorShape{2, 3})), Each(0.0))
        << DataTypeName(dtype);
    EXPECT_THAT(Values(FillWhole(ones, dtype, TensorShape{2, 3})), Each(1.0))
        << DataTypeName(dtype);
  }
}

TEST(InitializerConstantTest, ScalarIsBroadcast) {
  EXPECT_THAT(FillWhole(Constant(Tensor::Scalar<float>(2.5f)), DT_FLOAT, TensorShape{2, 2})
                  .ToVector<float>(),
              Each(2.5f));
  EXPECT_THAT(
      Values(FillWhole(Constant(Tensor::Scalar<half>(half(-0.75f))), DT_HALF, TensorShape{3})),
      Each(-0.75));
  EXPECT_THAT(FillWhole(Constant(Tensor::Scalar<int64_t>(-9)), DT_INT64, TensorShape{3})
                  .ToVector<int64_t>(),
              Each(-9));
  // Any nonzero byte is true, and is stored as 1.
  Tensor truthy(DT_BOOL, TensorShape{});
  (*truthy.mutable_bytes())[0] = 7;
  const Tensor b = FillWhole(Constant(truthy), DT_BOOL, TensorShape{3});
  EXPECT_EQ(b.bytes(), std::string(3, '\1'));
}

TEST(InitializerConstantTest, FullValueGivesEachSliceItsElements) {
  std::vector<int32_t> values(24);
  for (int i = 0; i < 24; ++i) values[i] = i;
  const Tensor value = *Tensor::FromVector(TensorShape{4, 6}, values);
  const InitializerSpec spec = Constant(value);
  EXPECT_EQ(FillWhole(spec, DT_INT32, TensorShape{4, 6}), value);
  EXPECT_THAT(
      Fill(spec, DT_INT32, TensorShape{4, 6}, TensorShape{2, 6}, {1, 0}).ToVector<int32_t>(),
      ElementsAre(6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17));
  EXPECT_THAT(
      Fill(spec, DT_INT32, TensorShape{4, 6}, TensorShape{4, 2}, {0, 3}).ToVector<int32_t>(),
      ElementsAre(3, 4, 9, 10, 15, 16, 21, 22));
}

// ---------------------------------------------------------------------------
// Partitioned variables: every slice holds the same slice of the whole.

struct SliceCase {
  TensorShape full;
  TensorShape slice;
  std::vector<int64_t> offset;
};

class InitializerSliceTest : public ::testing::TestWithParam<SliceCase> {};

TEST_P(InitializerSliceTest, SliceEqualsTheSameSliceOfTheWhole) {
  const SliceCase& c = GetParam();
  Tensor constant_value(DT_FLOAT, c.full);
  for (int64_t i = 0; i < c.full.num_elements(); ++i) constant_value.data<float>()[i] = i;
  const std::vector<std::pair<InitializerSpec, DataType>> specs = {
      {Uniform(-1, 1, 77), DT_FLOAT},       {Uniform(-1, 1, 77), DT_DOUBLE},
      {Uniform(-50, 50, 77), DT_INT32},     {Uniform(-50, 50, 77), DT_INT64},
      {Normal(0, 1, 77), DT_FLOAT},         {Normal(0, 1, 77), DT_BFLOAT16},
      {TruncatedNormal(0, 1, 77), DT_HALF}, {TruncatedNormal(0, 1, 77), DT_DOUBLE},
      {UnitScaling(1.0, {}, 77), DT_FLOAT}, {Constant(constant_value), DT_FLOAT},
  };
  for (const auto& [spec, dtype] : specs) {
    const Tensor whole = FillWhole(spec, dtype, c.full);
    const Tensor part = Fill(spec, dtype, c.full, c.slice, c.offset);
    EXPECT_EQ(part.bytes(), SliceBytes(whole, c.slice, c.offset))
        << spec.ShortDebugString() << " " << DataTypeName(dtype);
  }
}

const SliceCase kSliceCases[] = {
    {{6, 5}, {3, 5}, {2, 0}},           // along axis 0
    {{6, 5}, {6, 3}, {0, 1}},           // along axis 1
    {{6, 5}, {2, 2}, {3, 2}},           // along both
    {{6, 5}, {6, 1}, {0, 4}},           // the last column
    {{6, 5}, {6, 5}, {0, 0}},           // all of it
    {{6, 5}, {0, 5}, {6, 0}},           // empty, at the end
    {{3, 4, 5}, {3, 2, 5}, {0, 1, 0}},  // along the middle axis
    {{3, 4, 5}, {2, 3, 2}, {1, 1, 3}},  // along all three
    {{10}, {4}, {6}},                   // rank 1
    {{}, {}, {}},                       // a scalar
};
INSTANTIATE_TEST_SUITE_P(Slices, InitializerSliceTest, ::testing::ValuesIn(kSliceCases));

TEST(InitializerSliceGeometryTest, BadSlicesAreRejected) {
  InitializerSpec spec;
  spec.mutable_ones();
  std::vector<float> dst(16);
  const size_t bytes = dst.size() * sizeof(float);
  auto fill = [&](TensorShape full, TensorShape slice, std::vector<int64_t> offset) {
    return FillInitializer(spec, DT_FLOAT, full, slice, offset, dst.data(), bytes);
  };
  EXPECT_EQ(fill({4, 4}, {2, 4}, {3, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fill({4, 4}, {2, 4}, {-1, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fill({4, 4}, {2, 4}, {0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fill({4, 4}, {8}, {0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fill({5, 4}, {5, 4}, {0, 0}).code(), absl::StatusCode::kInvalidArgument);  // 20 > 16
  EXPECT_THAT(fill({4, 4}, {2, 4}, {3, 0}).message(),
              HasSubstr("slice [2,4] at offset [3,0] exceeds variable shape [4,4] on axis 0"));
  EXPECT_TRUE(fill({4, 4}, {2, 4}, {2, 0}).ok());
}

// ---------------------------------------------------------------------------
// Validation.

absl::Status Validate(const InitializerSpec& spec, DataType dtype,
                      const TensorShape& shape = TensorShape{3, 4}) {
  return ValidateInitializer(spec, dtype, shape, "v");
}

MATCHER_P(IsInvalidArgument, message, "") {
  if (arg.code() != absl::StatusCode::kInvalidArgument) {
    *result_listener << "status is " << arg;
    return false;
  }
  return ::testing::ExplainMatchResult(HasSubstr(message), std::string(arg.message()),
                                       result_listener);
}

TEST(ValidateInitializerTest, AcceptsEveryKindOnASuitableDtype) {
  InitializerSpec zeros, ones, def;
  zeros.mutable_zeros();
  ones.mutable_ones();
  def.mutable_default_initializer();
  for (DataType dtype : kAllDtypes) {
    EXPECT_TRUE(Validate(zeros, dtype).ok());
    EXPECT_TRUE(Validate(ones, dtype).ok());
    EXPECT_TRUE(Validate(def, dtype).ok());
  }
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16}) {
    EXPECT_TRUE(Validate(Uniform(-1, 1), dtype).ok());
    EXPECT_TRUE(Validate(Normal(0, 1), dtype).ok());
    EXPECT_TRUE(Validate(TruncatedNormal(0, 1), dtype).ok());
    EXPECT_TRUE(Validate(UnitScaling(1.0), dtype).ok());
  }
  EXPECT_TRUE(Validate(Uniform(0, 10), DT_INT32).ok());
  EXPECT_TRUE(Validate(Uniform(-0x1p63, 0x1p63), DT_INT64).ok());
  EXPECT_TRUE(Validate(Constant(Tensor::Scalar<int8_t>(3)), DT_INT8).ok());
  EXPECT_TRUE(Validate(Constant(Tensor(DT_FLOAT, TensorShape{3, 4})), DT_FLOAT).ok());
}

TEST(ValidateInitializerTest, RandomInitializersNeedAFloatingDtype) {
  EXPECT_THAT(Validate(Normal(0, 1), DT_INT32),
              IsInvalidArgument("variable 'v': random_normal initializer needs a floating dtype, "
                                "got int32"));
  EXPECT_THAT(Validate(TruncatedNormal(0, 1), DT_BOOL),
              IsInvalidArgument("variable 'v': truncated_normal initializer needs a floating "
                                "dtype, got bool"));
  EXPECT_THAT(Validate(UnitScaling(1.0), DT_INT64),
              IsInvalidArgument("variable 'v': uniform_unit_scaling initializer needs a floating "
                                "dtype, got int64"));
  EXPECT_THAT(Validate(Uniform(0, 10), DT_UINT8),
              IsInvalidArgument("variable 'v': random_uniform initializer needs a floating dtype, "
                                "int32 or int64, got uint8"));
}

TEST(ValidateInitializerTest, RejectsBadParametersNamingThem) {
  EXPECT_THAT(Validate(TruncatedNormal(0, -1), DT_FLOAT),
              IsInvalidArgument("variable 'v': truncated_normal stddev must be >= 0, got -1"));
  EXPECT_THAT(Validate(Normal(std::nan(""), 1), DT_FLOAT),
              IsInvalidArgument("variable 'v': random_normal mean must be finite, got nan"));
  EXPECT_THAT(Validate(Normal(0, std::numeric_limits<double>::infinity()), DT_DOUBLE),
              IsInvalidArgument("random_normal stddev must be finite, got inf"));
  EXPECT_THAT(Validate(Uniform(2, 1), DT_FLOAT),
              IsInvalidArgument("variable 'v': random_uniform needs minval < maxval, got minval 2 "
                                "and maxval 1"));
  EXPECT_THAT(Validate(Uniform(1, 1), DT_INT32), IsInvalidArgument("needs minval < maxval"));
  EXPECT_THAT(Validate(Uniform(std::nan(""), 1), DT_FLOAT),
              IsInvalidArgument("needs minval < maxval"));
  EXPECT_THAT(Validate(Uniform(0, 1e5), DT_HALF),
              IsInvalidArgument("random_uniform maxval 100000 is out of range for float16"));
  EXPECT_THAT(Validate(Uniform(-3e38, 3e38), DT_FLOAT),
              IsInvalidArgument("random_uniform range [-3e+38, 3e+38) is too wide for float32"));
  EXPECT_THAT(Validate(Uniform(0, 0.5), DT_INT32),
              IsInvalidArgument("random_uniform bounds must be integers for int32, got 0.5"));
  EXPECT_THAT(Validate(Uniform(0, 0x1p31 + 1), DT_INT32),
              IsInvalidArgument("out of range for int32"));
  EXPECT_TRUE(Validate(Uniform(-0x1p31, 0x1p31), DT_INT32).ok());
  EXPECT_THAT(
      Validate(UnitScaling(std::numeric_limits<double>::infinity()), DT_FLOAT),
      IsInvalidArgument("variable 'v': uniform_unit_scaling factor must be finite, got inf"));
  EXPECT_THAT(Validate(UnitScaling(1.0, {4, -2}), DT_FLOAT),
              IsInvalidArgument("uniform_unit_scaling full_shape: dimension 1 is -2"));
}

TEST(ValidateInitializerTest, ConstantMustMatchDtypeAndShape) {
  EXPECT_THAT(
      Validate(Constant(Tensor::Scalar<float>(1)), DT_INT32),
      IsInvalidArgument("variable 'v': constant value has dtype float32, variable is int32"));
  EXPECT_THAT(Validate(Constant(Tensor(DT_FLOAT, TensorShape{4})), DT_FLOAT),
              IsInvalidArgument(
                  "constant value has shape [4], needs a scalar or the variable's shape [3,4]"));
  // The shape-one vector is not a scalar.
  EXPECT_THAT(Validate(Constant(Tensor(DT_FLOAT, TensorShape{1})), DT_FLOAT),
              IsInvalidArgument("needs a scalar"));
  InitializerSpec truncated = Constant(Tensor(DT_FLOAT, TensorShape{3, 4}));
  truncated.mutable_constant()->mutable_value()->mutable_content()->resize(5);
  EXPECT_THAT(Validate(truncated, DT_FLOAT),
              IsInvalidArgument("variable 'v': constant value: content has 5 bytes"));
  InitializerSpec missing;
  missing.mutable_constant();  // no value: a DT_INVALID tensor
  EXPECT_THAT(Validate(missing, DT_FLOAT), IsInvalidArgument("unsupported dtype"));
}

TEST(ValidateInitializerTest, RejectsASpecWithoutKind) {
  InitializerSpec spec;
  spec.set_seed(3);
  EXPECT_THAT(Validate(spec, DT_FLOAT),
              IsInvalidArgument("variable 'v': initializer has no kind set"));
}

TEST(ValidateInitializerTest, RejectsDtypesThatDoNotLiveOnADevice) {
  InitializerSpec spec;
  spec.mutable_zeros();
  EXPECT_THAT(Validate(spec, DT_STRING), IsInvalidArgument("dtype string"));
  EXPECT_THAT(Validate(spec, DT_INVALID), IsInvalidArgument("variable 'v'"));
}

TEST(ValidateInitializerTest, FillRevalidatesTheSpec) {
  std::vector<int32_t> dst(4);
  EXPECT_EQ(FillInitializer(Normal(0, 1), DT_INT32, TensorShape{4}, TensorShape{4}, {0}, dst.data(),
                            dst.size() * sizeof(int32_t))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace psd
