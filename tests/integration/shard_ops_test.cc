// Every variable op against a real shard, through the client: values,
// dtypes, initializers, scatter semantics, shapes and initialization state.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/float16.h"
#include "psd/initializers.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

namespace init = client::init;
using client::AssignOptions;
using client::CreateOptions;
using client::VariableInfo;

using ShardOpsTest = ShardTest;

TEST_F(ShardOpsTest, ConnectReportsShardInfo) {
  EXPECT_FALSE(shard_->info().device.empty());
  EXPECT_EQ(shard_->info().num_variables, 0);
  PSD_ASSERT_OK_AND_ASSIGN(auto again, shard_->GetInfo());
  EXPECT_EQ(again.incarnation, shard_->info().incarnation);
}

TEST_F(ShardOpsTest, CreateAndReadRoundTripEveryDtype) {
  std::vector<std::pair<std::string, Tensor>> values = {
      {"f32", Vec<float>({2, 2}, {1.5f, -2, 0, 3.25f})},
      {"f64", Vec<double>({3}, {1e100, -0.5, 3})},
      {"f16", Vec<half>({2}, {half(1.5f), half(-0.25f)})},
      {"bf16", Vec<bfloat16>({2}, {bfloat16(2.0f), bfloat16(-8.0f)})},
      {"i8", Vec<int8_t>({3}, {-128, 0, 127})},
      {"i16", Vec<int16_t>({2}, {-32768, 32767})},
      {"i32", Vec<int32_t>({2, 1}, {-7, 1 << 30})},
      {"i64", Vec<int64_t>({2}, {INT64_MIN, INT64_MAX})},
      {"u8", Vec<uint8_t>({2}, {0, 255})},
      {"bool", Vec<bool>({3}, {true, false, true})},
      {"str", Strings({3}, {"", "hello", std::string(300, 'x')})},
      {"scalar", Tensor::Scalar<float>(42)},
      {"empty", Vec<float>({0, 3}, {})},
  };
  for (const auto& [name, value] : values) {
    SCOPED_TRACE(name);
    PSD_ASSERT_OK_AND_ASSIGN(VariableInfo info, shard_->Create(name, value));
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.dtype, value.dtype());
    EXPECT_EQ(info.shape, value.shape());
    EXPECT_TRUE(info.initialized);
    PSD_ASSERT_OK_AND_ASSIGN(Tensor read, shard_->Read(name));
    EXPECT_EQ(read, value) << read.DebugString() << " vs " << value.DebugString();
  }
}

TEST_F(ShardOpsTest, ListIsSortedAndFiltersByPrefixAndDeleteRemoves) {
  for (const char* name : {"b/x", "a/y", "a/x", "c"}) {
    ASSERT_TRUE(IsOk(shard_->Create(name, Tensor::Scalar<int32_t>(1))));
  }
  PSD_ASSERT_OK_AND_ASSIGN(auto all, shard_->List());
  std::vector<std::string> names;
  for (const auto& v : all) names.push_back(v.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a/x", "a/y", "b/x", "c"}));
  PSD_ASSERT_OK_AND_ASSIGN(auto a, shard_->List("a/"));
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].name, "a/x");

  ASSERT_TRUE(IsOk(shard_->Delete("a/x")));
  EXPECT_TRUE(IsError(shard_->Read("a/x"), absl::StatusCode::kNotFound, {"a/x"}));
  EXPECT_TRUE(IsError(shard_->Delete("a/x"), absl::StatusCode::kNotFound, {"a/x"}));
  PSD_ASSERT_OK_AND_ASSIGN(auto left, shard_->List("a/"));
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].name, "a/y");
  // A deleted name can be created again.
  EXPECT_TRUE(IsOk(shard_->Create("a/x", Tensor::Scalar<float>(2))));
}

TEST_F(ShardOpsTest, MemoryIsAccountedAndReleased) {
  PSD_ASSERT_OK_AND_ASSIGN(auto before, shard_->GetInfo());
  PSD_ASSERT_OK_AND_ASSIGN(VariableInfo info,
                           shard_->Create("v", DT_FLOAT, TensorShape{256, 64}, init::Zeros()));
  EXPECT_GE(info.bytes, 256 * 64 * 4);
  PSD_ASSERT_OK_AND_ASSIGN(auto during, shard_->GetInfo());
  EXPECT_GE(during.memory_used_bytes, before.memory_used_bytes + 256 * 64 * 4);
  EXPECT_EQ(during.num_variables, before.num_variables + 1);
  ASSERT_TRUE(IsOk(shard_->Delete("v")));
  PSD_ASSERT_OK_AND_ASSIGN(auto after, shard_->GetInfo());
  EXPECT_EQ(after.memory_used_bytes, before.memory_used_bytes);
}

// No --memory-limit: a size no machine has must still be refused, not
// attempted (and not crash the shard).
TEST_F(ShardOpsTest, ImpossibleAllocationWithoutALimitIsResourceExhausted) {
  const auto code = absl::StatusCode::kResourceExhausted;
  EXPECT_TRUE(IsError(
      shard_->Create("huge", DT_FLOAT, TensorShape{int64_t{1} << 31, 1 << 29}, init::Zeros()), code,
      {"huge"}));
  EXPECT_TRUE(
      IsError(shard_->Create("huge", DT_STRING, TensorShape{int64_t{1} << 40}, init::Default()),
              code, {"huge"}));
  ASSERT_TRUE(IsOk(shard_->Create("v", Tensor::Scalar<double>(1))));
  CreateOptions deferred;
  deferred.initialize = false;
  auto created = shard_->Create("later", DT_DOUBLE, TensorShape{int64_t{1} << 31, 1 << 29},
                                init::Ones(), deferred);
  if (created.ok()) {
    EXPECT_TRUE(IsError(shard_->Initialize({"later"}), code, {"later"}));
  } else {
    EXPECT_TRUE(IsError(created, code, {"later"}));
  }
  EXPECT_EQ(Read("v"), Tensor::Scalar<double>(1));
}

TEST_F(ShardOpsTest, AssignAddAndSubComputeElementwise) {
  ASSERT_TRUE(IsOk(shard_->Create("f", Vec<float>({3}, {1, 2, 3}))));
  Tensor new_value;
  ASSERT_TRUE(IsOk(shard_->AssignAdd("f", Vec<float>({3}, {10, 20, 30}), {}, &new_value)));
  EXPECT_EQ(new_value, Vec<float>({3}, {11, 22, 33}));
  ASSERT_TRUE(IsOk(shard_->AssignSub("f", Vec<float>({3}, {1, 2, 3}), {}, &new_value)));
  EXPECT_EQ(new_value, Vec<float>({3}, {10, 20, 30}));
  ASSERT_TRUE(IsOk(shard_->Assign("f", Vec<float>({3}, {-1, -2, -3}), {}, &new_value)));
  EXPECT_EQ(new_value, Vec<float>({3}, {-1, -2, -3}));

  ASSERT_TRUE(IsOk(shard_->Create("h", Vec<half>({2}, {half(1.0f), half(2.0f)}))));
  ASSERT_TRUE(IsOk(shard_->AssignAdd("h", Vec<half>({2}, {half(0.5f), half(0.25f)}))));
  EXPECT_EQ(Read("h"), Vec<half>({2}, {half(1.5f), half(2.25f)}));

  ASSERT_TRUE(IsOk(shard_->Create("i", Tensor::Scalar<int64_t>(5))));
  ASSERT_TRUE(IsOk(shard_->AssignSub("i", Tensor::Scalar<int64_t>(8))));
  EXPECT_EQ(Read("i"), Tensor::Scalar<int64_t>(-3));
}

TEST_F(ShardOpsTest, SuccessfulMutationsBumpTheVersion) {
  PSD_ASSERT_OK_AND_ASSIGN(VariableInfo created, shard_->Create("v", Tensor::Scalar<float>(0)));
  ASSERT_TRUE(IsOk(shard_->AssignAdd("v", Tensor::Scalar<float>(1))));
  PSD_ASSERT_OK_AND_ASSIGN(VariableInfo after, shard_->Lookup("v"));
  EXPECT_GT(after.version, created.version);
}

TEST_F(ShardOpsTest, AssignWithoutValidateShapeChangesTheShape) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6}))));
  AssignOptions options;
  options.validate_shape = false;
  const Tensor value = Vec<float>({4}, {7, 8, 9, 10});
  ASSERT_TRUE(IsOk(shard_->Assign("v", value, options)));
  EXPECT_EQ(Read("v"), value);
  PSD_ASSERT_OK_AND_ASSIGN(VariableInfo info, shard_->Lookup("v"));
  EXPECT_EQ(info.shape, (TensorShape{4}));
  // The new shape is now the one validated against.
  ASSERT_TRUE(IsOk(shard_->AssignAdd("v", Vec<float>({4}, {1, 1, 1, 1}))));
  EXPECT_EQ(Read("v"), Vec<float>({4}, {8, 9, 10, 11}));
}

TEST_F(ShardOpsTest, AssignWithValidateShapeRejectsAnotherShape) {
  const Tensor value = Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  ASSERT_TRUE(IsOk(shard_->Create("v", value)));
  EXPECT_TRUE(IsError(shard_->Assign("v", Vec<float>({3, 2}, {1, 2, 3, 4, 5, 6})),
                      absl::StatusCode::kInvalidArgument, {"v", "[2,3]", "[3,2]"}));
  EXPECT_EQ(Read("v"), value);
}

TEST_F(ShardOpsTest, GatherReturnsRowsForIndicesOfAnyRank) {
  ASSERT_TRUE(
      IsOk(shard_->Create("t", Vec<int32_t>({5, 2}, {0, 1, 10, 11, 20, 21, 30, 31, 40, 41}))));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor rows, shard_->Gather("t", Vec<int64_t>({3}, {4, 0, 4})));
  EXPECT_EQ(rows, Vec<int32_t>({3, 2}, {40, 41, 0, 1, 40, 41}));
  PSD_ASSERT_OK_AND_ASSIGN(rows, shard_->Gather("t", Vec<int32_t>({2, 2}, {1, 2, 3, 3})));
  EXPECT_EQ(rows, Vec<int32_t>({2, 2, 2}, {10, 11, 20, 21, 30, 31, 30, 31}));
  PSD_ASSERT_OK_AND_ASSIGN(rows, shard_->Gather("t", Tensor::Scalar<int64_t>(2)));
  EXPECT_EQ(rows, Vec<int32_t>({2}, {20, 21}));
  PSD_ASSERT_OK_AND_ASSIGN(rows, shard_->Gather("t", Vec<int64_t>({0}, {})));
  EXPECT_EQ(rows, Vec<int32_t>({0, 2}, {}));

  ASSERT_TRUE(IsOk(shard_->Create("s", Strings({3}, {"a", "bb", "ccc"}))));
  PSD_ASSERT_OK_AND_ASSIGN(rows, shard_->Gather("s", Vec<int32_t>({2}, {2, 0})));
  EXPECT_EQ(rows, Strings({2}, {"ccc", "a"}));
}

TEST_F(ShardOpsTest, ScatterAddWithDuplicateIndicesAccumulates) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Vec<float>({3}, {0, 0, 0}))));
  Tensor new_value;
  ASSERT_TRUE(IsOk(
      shard_->ScatterAdd("v", Vec<int64_t>({2}, {1, 1}), Vec<float>({2}, {2, 3}), &new_value)));
  EXPECT_EQ(new_value, Vec<float>({3}, {0, 5, 0}));
  EXPECT_EQ(Read("v"), Vec<float>({3}, {0, 5, 0}));
}

TEST_F(ShardOpsTest, ScatterSubWithDuplicateIndicesAccumulates) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Vec<int64_t>({3}, {10, 10, 10}))));
  ASSERT_TRUE(
      IsOk(shard_->ScatterSub("v", Vec<int32_t>({3}, {2, 0, 2}), Vec<int64_t>({3}, {1, 2, 3}))));
  EXPECT_EQ(Read("v"), Vec<int64_t>({3}, {8, 10, 6}));
}

TEST_F(ShardOpsTest, ScatterUpdateWithDuplicateIndicesLastWins) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Vec<float>({3}, {0, 0, 0}))));
  ASSERT_TRUE(IsOk(shard_->ScatterUpdate("v", Vec<int64_t>({2}, {1, 1}), Vec<float>({2}, {2, 3}))));
  EXPECT_EQ(Read("v"), Vec<float>({3}, {0, 3, 0}));

  ASSERT_TRUE(IsOk(shard_->Create("s", Strings({2}, {"a", "b"}))));
  ASSERT_TRUE(IsOk(
      shard_->ScatterUpdate("s", Vec<int32_t>({3}, {1, 0, 1}), Strings({3}, {"x", "y", "z"}))));
  EXPECT_EQ(Read("s"), Strings({2}, {"y", "z"}));
}

TEST_F(ShardOpsTest, ScatterWithScalarUpdateBroadcasts) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Vec<float>({4, 2}, {0, 0, 1, 1, 2, 2, 3, 3}))));
  ASSERT_TRUE(
      IsOk(shard_->ScatterUpdate("v", Vec<int64_t>({2}, {0, 2}), Tensor::Scalar<float>(7))));
  EXPECT_EQ(Read("v"), Vec<float>({4, 2}, {7, 7, 1, 1, 7, 7, 3, 3}));
  ASSERT_TRUE(
      IsOk(shard_->ScatterAdd("v", Vec<int64_t>({3}, {3, 3, 1}), Tensor::Scalar<float>(1))));
  EXPECT_EQ(Read("v"), Vec<float>({4, 2}, {7, 7, 2, 2, 7, 7, 5, 5}));
}

TEST_F(ShardOpsTest, ScatterWithRank2Indices) {
  ASSERT_TRUE(IsOk(shard_->Create("v", DT_FLOAT, TensorShape{4, 2}, init::Zeros())));
  // updates.shape == indices.shape + var.shape[1:] == [2,2] + [2].
  ASSERT_TRUE(IsOk(shard_->ScatterAdd("v", Vec<int32_t>({2, 2}, {0, 1, 3, 0}),
                                      Vec<float>({2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8}))));
  EXPECT_EQ(Read("v"), Vec<float>({4, 2}, {8, 10, 3, 4, 0, 0, 5, 6}));
}

TEST_F(ShardOpsTest, ScatterOnScalarRowsOfAVector) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Vec<int32_t>({5}, {0, 0, 0, 0, 0}))));
  ASSERT_TRUE(
      IsOk(shard_->ScatterAdd("v", Tensor::Scalar<int64_t>(3), Tensor::Scalar<int32_t>(9))));
  EXPECT_EQ(Read("v"), Vec<int32_t>({5}, {0, 0, 0, 9, 0}));
}

TEST_F(ShardOpsTest, CountUpToReturnsTheOldValueAndStopsAtTheLimit) {
  for (DataType dtype : {DT_INT32, DT_INT64}) {
    const std::string name = DataTypeName(dtype);
    SCOPED_TRACE(name);
    Tensor start = dtype == DT_INT32 ? Tensor::Scalar<int32_t>(1) : Tensor::Scalar<int64_t>(1);
    ASSERT_TRUE(IsOk(shard_->Create(name, start)));
    for (int64_t want = 1; want < 3; ++want) {
      PSD_ASSERT_OK_AND_ASSIGN(int64_t old, shard_->CountUpTo(name, 3));
      EXPECT_EQ(old, want);
    }
    for (int i = 0; i < 2; ++i) {
      EXPECT_TRUE(IsError(shard_->CountUpTo(name, 3), absl::StatusCode::kOutOfRange,
                          {"Reached limit of 3"}));
    }
    EXPECT_EQ(Read(name),
              dtype == DT_INT32 ? Tensor::Scalar<int32_t>(3) : Tensor::Scalar<int64_t>(3));
  }
}

TEST_F(ShardOpsTest, DeferredInitializationAndReportUninitialized) {
  CreateOptions deferred;
  deferred.initialize = false;
  ASSERT_TRUE(IsOk(shard_->Create("b", DT_FLOAT, TensorShape{3}, init::Ones(), deferred)));
  ASSERT_TRUE(IsOk(shard_->Create("a", DT_INT64, TensorShape{2}, init::Zeros(), deferred)));
  ASSERT_TRUE(IsOk(shard_->Create("c", Tensor::Scalar<float>(1))));
  PSD_ASSERT_OK_AND_ASSIGN(auto uninit, shard_->ReportUninitialized());
  EXPECT_EQ(uninit, (std::vector<std::string>{"a", "b"}));
  PSD_ASSERT_OK_AND_ASSIGN(uninit, shard_->ReportUninitialized({"b", "c"}));
  EXPECT_EQ(uninit, (std::vector<std::string>{"b"}));
  EXPECT_FALSE(shard_->IsInitialized("b").value_or(true));
  EXPECT_TRUE(IsError(shard_->Read("b"), absl::StatusCode::kFailedPrecondition,
                      {"Attempting to use uninitialized value b"}));

  ASSERT_TRUE(IsOk(shard_->Initialize({"b"})));
  EXPECT_EQ(Read("b"), Vec<float>({3}, {1, 1, 1}));
  EXPECT_TRUE(shard_->IsInitialized("b").value_or(false));
  // Already initialized: left alone unless forced.
  ASSERT_TRUE(IsOk(shard_->Assign("b", Vec<float>({3}, {5, 5, 5}))));
  ASSERT_TRUE(IsOk(shard_->Initialize({"b"})));
  EXPECT_EQ(Read("b"), Vec<float>({3}, {5, 5, 5}));
  ASSERT_TRUE(IsOk(shard_->Initialize({"b"}, /*force=*/true)));
  EXPECT_EQ(Read("b"), Vec<float>({3}, {1, 1, 1}));

  // Assign gives an uninitialized variable its value (tf.assign does).
  ASSERT_TRUE(IsOk(shard_->Assign("a", Vec<int64_t>({2}, {4, 2}))));
  EXPECT_EQ(Read("a"), Vec<int64_t>({2}, {4, 2}));
  PSD_ASSERT_OK_AND_ASSIGN(uninit, shard_->ReportUninitialized());
  EXPECT_TRUE(uninit.empty());
}

TEST_F(ShardOpsTest, InitializeChecksAllNamesBeforeInitializingAny) {
  CreateOptions deferred;
  deferred.initialize = false;
  ASSERT_TRUE(IsOk(shard_->Create("a", DT_FLOAT, TensorShape{2}, init::Ones(), deferred)));
  EXPECT_TRUE(
      IsError(shard_->Initialize({"a", "missing"}), absl::StatusCode::kNotFound, {"missing"}));
  PSD_ASSERT_OK_AND_ASSIGN(auto uninit, shard_->ReportUninitialized());
  EXPECT_EQ(uninit, (std::vector<std::string>{"a"}));
}

TEST_F(ShardOpsTest, ConstantInitializerBroadcastsAScalarOrCopiesAFullValue) {
  ASSERT_TRUE(IsOk(shard_->Create("s", DT_INT32, TensorShape{2, 2},
                                  init::Constant(Tensor::Scalar<int32_t>(7)))));
  EXPECT_EQ(Read("s"), Vec<int32_t>({2, 2}, {7, 7, 7, 7}));
  const Tensor full = Vec<double>({3}, {0.5, 1.5, 2.5});
  ASSERT_TRUE(IsOk(shard_->Create("f", DT_DOUBLE, TensorShape{3}, init::Constant(full))));
  EXPECT_EQ(Read("f"), full);
}

TEST_F(ShardOpsTest, RandomInitializersAreDeterministicAndInRange) {
  const TensorShape shape{64, 16};
  ASSERT_TRUE(IsOk(shard_->Create("u1", DT_FLOAT, shape, init::RandomUniform(-2, 3, 11))));
  ASSERT_TRUE(IsOk(shard_->Create("u2", DT_FLOAT, shape, init::RandomUniform(-2, 3, 11))));
  ASSERT_TRUE(IsOk(shard_->Create("u3", DT_FLOAT, shape, init::RandomUniform(-2, 3, 12))));
  ASSERT_TRUE(IsOk(shard_->Create("t", DT_DOUBLE, shape, init::TruncatedNormal(1, 0.5, 5))));
  ASSERT_TRUE(IsOk(shard_->Create("n", DT_FLOAT, shape, init::RandomNormal(0, 1, 5))));
  ASSERT_TRUE(IsOk(shard_->Create("uus", DT_FLOAT, shape, init::UniformUnitScaling(2.0, 3))));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor u1, shard_->Read("u1"));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor u2, shard_->Read("u2"));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor u3, shard_->Read("u3"));
  EXPECT_EQ(u1, u2) << "same seed, same values";
  EXPECT_NE(u1, u3) << "another seed, other values";
  for (float v : u1.ToVector<float>()) {
    ASSERT_GE(v, -2.0f);
    ASSERT_LT(v, 3.0f);
  }
  PSD_ASSERT_OK_AND_ASSIGN(Tensor t, shard_->Read("t"));
  for (double v : t.ToVector<double>()) {
    ASSERT_GE(v, 1 - 2 * 0.5);
    ASSERT_LE(v, 1 + 2 * 0.5);
  }
  PSD_ASSERT_OK_AND_ASSIGN(Tensor n, shard_->Read("n"));
  double sum = 0;
  for (float v : n.ToVector<float>()) sum += v;
  EXPECT_LT(std::abs(sum / n.num_elements()), 0.2);  // 1024 draws: mean within ~6 sigma
  // input_size = 64 (all but the last dimension).
  const double bound = std::sqrt(3.0 / 64) * 2.0;
  PSD_ASSERT_OK_AND_ASSIGN(Tensor uus, shard_->Read("uus"));
  for (float v : uus.ToVector<float>()) ASSERT_LE(std::abs(v), bound + 1e-6);
}

TEST_F(ShardOpsTest, DefaultInitializerDependsOnDtype) {
  ASSERT_TRUE(IsOk(shard_->Create("f", DT_FLOAT, TensorShape{8, 4}, init::Default(1))));
  ASSERT_TRUE(IsOk(shard_->Create("i", DT_INT64, TensorShape{3}, init::Default())));
  ASSERT_TRUE(IsOk(shard_->Create("b", DT_BOOL, TensorShape{2}, init::Default())));
  ASSERT_TRUE(IsOk(shard_->Create("s", DT_STRING, TensorShape{2}, init::Default())));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor f, shard_->Read("f"));
  bool any_nonzero = false;
  for (float v : f.ToVector<float>()) {
    ASSERT_LE(std::abs(v), std::sqrt(3.0 / 8) + 1e-6);
    any_nonzero |= v != 0;
  }
  EXPECT_TRUE(any_nonzero);
  EXPECT_EQ(Read("i"), Vec<int64_t>({3}, {0, 0, 0}));
  EXPECT_EQ(Read("b"), Vec<bool>({2}, {false, false}));
  EXPECT_EQ(Read("s"), Strings({2}, {"", ""}));
}

TEST_F(ShardOpsTest, SliceOfAPartitionedVariableGetsItsSliceOfTheValues) {
  const TensorShape full{6, 4};
  const auto spec = init::TruncatedNormal(0, 1, /*seed=*/99);
  ASSERT_TRUE(IsOk(shard_->Create("whole", DT_FLOAT, full, spec)));
  CreateOptions part;
  part.full_shape = {6, 4};
  part.offset = {2, 0};
  ASSERT_TRUE(IsOk(shard_->Create("whole/part_1", DT_FLOAT, TensorShape{3, 4}, spec, part)));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor whole, shard_->Read("whole"));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor slice, shard_->Read("whole/part_1"));
  const auto w = whole.ToVector<float>();
  EXPECT_EQ(slice, Vec<float>({3, 4}, std::vector<float>(w.begin() + 8, w.begin() + 20)));
}

}  // namespace
}  // namespace integration
}  // namespace psd
