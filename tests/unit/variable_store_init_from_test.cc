// VariableStore's side of variables initialized from another variable
// (InitializerSpec.FromVariable): the snapshot a source gives, the transform
// in each dtype's own arithmetic, and the checks that leave the target
// exactly as it was when the source value does not fit.
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/float16.h"
#include "psd/wire.h"
#include "shard/variable_store.h"
#include "store_test_util.h"

namespace psd {
namespace {

using store_test::Vec;

using ::testing::HasSubstr;

InitializerSpec From(const std::string& source, double scale, double offset) {
  InitializerSpec spec;
  spec.mutable_from_variable()->set_source(source);
  spec.mutable_from_variable()->set_scale(scale);
  spec.mutable_from_variable()->set_offset(offset);
  return spec;
}

InitializerSpec Zeros() {
  InitializerSpec spec;
  spec.mutable_zeros();
  return spec;
}

class VariableStoreInitFromTest : public ::testing::Test {
 protected:
  static VariableStoreOptions Options() {
    VariableStoreOptions options;
    options.memory_limit_bytes = 1 << 20;
    options.incarnation = 5;
    options.default_chunk_bytes = 3;  // several chunks per snapshot
    return options;
  }
  VariableStoreInitFromTest() : device_(NewCpuDevice()), store_(device_.get(), Options()) {}

  absl::Status Create(const std::string& name, DataType dtype, std::vector<int64_t> dims,
                      const InitializerSpec& spec) {
    CreateVariableRequest req;
    req.set_name(name);
    req.set_dtype(dtype);
    for (int64_t d : dims) req.mutable_shape()->add_dims(d);
    *req.mutable_initializer() = spec;
    VariableInfo info;
    return store_.Create(req, &info);
  }
  void CreateValue(const std::string& name, const TensorProto& value) {
    ASSERT_TRUE(store_test::CreateWithValue(&store_, name, value).ok());
  }
  // Initializes `target` from `source`'s snapshot, as ShardService does.
  absl::Status InitializeFrom(const std::string& target, const std::string& source) {
    InitializeVariablesRequest req;
    req.add_names(target);
    VariableStore::SourceValues values;
    auto value = store_.ReadSnapshot(source);
    if (!value.ok()) return value.status();
    values[target] = *std::move(value);
    return store_.Initialize(req, &values);
  }
  Tensor Read(const std::string& name) {
    ReadRequest req;
    req.set_name(name);
    ReadResponse resp;
    absl::Status s = store_.Read(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return *TensorFromProto(resp.value(), name);
  }
  bool Initialized(const std::string& name) {
    ReportUninitializedRequest req;
    req.add_names(name);
    ReportUninitializedResponse resp;
    EXPECT_TRUE(store_.ReportUninitialized(req, &resp).ok());
    return resp.names_size() == 0;
  }

  std::unique_ptr<Device> device_;
  VariableStore store_;
};

TEST_F(VariableStoreInitFromTest, FloatScaleAndOffsetInTheTargetsPrecision) {
  CreateValue("v", Vec<float>({5}, {1, 2, 3, 4, 5}));
  ASSERT_TRUE(Create("w", DT_FLOAT, {5}, From("v", 0.5, -1)).ok());
  ASSERT_TRUE(InitializeFrom("w", "v").ok());
  EXPECT_EQ(Read("w").ToVector<float>(), (std::vector<float>{-0.5, 0, 0.5, 1, 1.5}));
}

TEST_F(VariableStoreInitFromTest, HalfAndBfloat16ComputeInFloatAndRound) {
  CreateValue("h", Vec<half>({2}, {half(1.5f), half(-3.0f)}));
  ASSERT_TRUE(Create("h2", DT_HALF, {2}, From("h", 3, 0.25)).ok());
  ASSERT_TRUE(InitializeFrom("h2", "h").ok());
  std::vector<half> h = Read("h2").ToVector<half>();
  EXPECT_EQ(static_cast<float>(h[0]), 4.75f);
  EXPECT_EQ(static_cast<float>(h[1]), -8.75f);

  CreateValue("b", Vec<bfloat16>({1}, {bfloat16(2.0f)}));
  ASSERT_TRUE(Create("b2", DT_BFLOAT16, {1}, From("b", 1.5, 0)).ok());
  ASSERT_TRUE(InitializeFrom("b2", "b").ok());
  EXPECT_EQ(static_cast<float>(Read("b2").ToVector<bfloat16>()[0]), 3.0f);
}

TEST_F(VariableStoreInitFromTest, IntegersWrapAsTheirDtype) {
  CreateValue("u", Vec<uint8_t>({2}, {200, 3}));
  ASSERT_TRUE(Create("u2", DT_UINT8, {2}, From("u", 2, 1)).ok());
  ASSERT_TRUE(InitializeFrom("u2", "u").ok());
  EXPECT_EQ(Read("u2").ToVector<uint8_t>(), (std::vector<uint8_t>{145, 7}));
}

TEST_F(VariableStoreInitFromTest, StringsCopyAcrossSeveralChunks) {
  TensorProto value;
  TensorToProto(*Tensor::FromStrings(TensorShape({3}), {"alpha", "", "a longer string"}), &value);
  CreateValue("s", value);
  ASSERT_TRUE(Create("s2", DT_STRING, {3}, From("s", 1, 0)).ok());
  ASSERT_TRUE(InitializeFrom("s2", "s").ok());
  TensorProto copied;
  TensorToProto(Read("s2"), &copied);
  EXPECT_EQ(copied.content(), value.content());
}

TEST_F(VariableStoreInitFromTest, MisfitSourceValueChangesNothing) {
  CreateValue("v", Vec<float>({3}, {1, 2, 3}));
  CreateValue("d", Vec<double>({2}, {1, 2}));
  ASSERT_TRUE(Create("w", DT_FLOAT, {2}, From("v", 1, 0)).ok());
  ASSERT_TRUE(Create("plain", DT_FLOAT, {2}, Zeros()).ok());

  // Shape: w is [2], the value [3]. The whole request fails, plain included.
  InitializeVariablesRequest req;
  req.add_names("w");
  req.add_names("plain");
  VariableStore::SourceValues values;
  values["w"] = *store_.ReadSnapshot("v");
  absl::Status s = store_.Initialize(req, &values);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("'w'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("[3]"));
  EXPECT_FALSE(Initialized("w"));
  EXPECT_FALSE(Initialized("plain"));

  // Dtype.
  s = InitializeFrom("w", "d");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("float64"));
  EXPECT_FALSE(Initialized("w"));

  // No source value: only the coordinator knows where the source lives.
  InitializeVariablesRequest alone;
  alone.add_names("w");
  s = store_.Initialize(alone);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("coordinator"));
  EXPECT_FALSE(Initialized("w"));
}

TEST_F(VariableStoreInitFromTest, SourceMustBeInitializedAndTargetCreatedUninitialized) {
  ASSERT_TRUE(Create("v", DT_FLOAT, {2}, Zeros()).ok());
  EXPECT_EQ(store_.ReadSnapshot("v").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_.ReadSnapshot("nope").status().code(), absl::StatusCode::kNotFound);

  CreateVariableRequest eager;
  eager.set_name("w");
  eager.set_dtype(DT_FLOAT);
  eager.mutable_shape()->add_dims(2);
  *eager.mutable_initializer() = From("v", 1, 0);
  eager.set_initialize(true);
  VariableInfo info;
  absl::Status s = store_.Create(eager, &info);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_FALSE(store_.NeedsSourceValue("w", false).ok());  // not created

  ASSERT_TRUE(Create("w", DT_FLOAT, {2}, From("v", 1, 0)).ok());
  EXPECT_TRUE(*store_.NeedsSourceValue("w", false));
  EXPECT_FALSE(*store_.NeedsSourceValue("v", false));  // not derived
}

TEST_F(VariableStoreInitFromTest, SourceValueBoundIsThePartsSizeOrWhatTheShardCanStillHold) {
  ASSERT_TRUE(Create("v", DT_FLOAT, {2, 3}, Zeros()).ok());
  ASSERT_TRUE(Create("w", DT_FLOAT, {2, 3}, From("v", 1, 0)).ok());
  ASSERT_TRUE(Create("s", DT_STRING, {2}, Zeros()).ok());
  ASSERT_TRUE(Create("s2", DT_STRING, {2}, From("s", 1, 0)).ok());
  EXPECT_EQ(*store_.SourceValueMaxBytes("w"), 24);
  // Strings vary in length: bounded by the memory limit's room.
  const int64_t room = store_.memory().limit() - store_.memory().used();
  EXPECT_EQ(*store_.SourceValueMaxBytes("s2"), room);
  EXPECT_TRUE(absl::IsNotFound(store_.SourceValueMaxBytes("nope").status()));
}

TEST_F(VariableStoreInitFromTest, HeldSourceValueCountsAgainstTheMemoryLimit) {
  const int64_t before = store_.memory().used();
  {
    auto held = store_.ReserveSourceValue("w", 1000);
    ASSERT_TRUE(held.ok()) << held.status();
    EXPECT_EQ(store_.memory().used(), before + 1000);
    auto too_much = store_.ReserveSourceValue("w", store_.memory().limit());
    EXPECT_TRUE(absl::IsResourceExhausted(too_much.status())) << too_much.status();
    EXPECT_TRUE(absl::StrContains(too_much.status().message(), "'w'")) << too_much.status();
    EXPECT_TRUE(absl::StrContains(too_much.status().message(),
                                  absl::StrCat(store_.memory().limit(), " bytes")))
        << too_much.status();
  }
  EXPECT_EQ(store_.memory().used(), before);
}

}  // namespace
}  // namespace psd
