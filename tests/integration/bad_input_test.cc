// Bad input never crashes the shard and never changes state: every bad
// request gets the status of the error table in docs/design.md and a message naming the
// variable and the value at fault. Requests the client library cannot build
// (content bytes that disagree with the shape, malformed string encodings,
// negative dimensions, unknown dtypes) go through the raw gRPC stub.
//
// Every test here sends only requests that must fail; TearDown reads every
// fixture variable back and checks value and version are unchanged.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/grpc_status.h"
#include "psd/initializers.h"
#include "psd/shard.grpc.pb.h"
#include "psd/wire.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

namespace init = client::init;
using client::AssignOptions;
using client::CreateOptions;

constexpr int64_t kMemoryLimit = 1 << 20;

class BadInputTest : public ShardTest {
 protected:
  ShardProcessOptions options() const override {
    ShardProcessOptions options;
    options.memory_limit_bytes = kMemoryLimit;
    return options;
  }

  void SetUp() override {
    ShardTest::SetUp();
    if (HasFatalFailure()) return;
    const std::vector<std::pair<std::string, Tensor>> vars = {
        {"weights", Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6})},
        {"table", Vec<float>({6, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})},
        {"flags", Vec<bool>({3}, {true, false, true})},
        {"names", Strings({2}, {"a", "bc"})},
        {"step", Tensor::Scalar<int64_t>(5)},
        {"ratio", Tensor::Scalar<float>(0.5f)},
    };
    for (const auto& [name, value] : vars) {
      PSD_ASSERT_OK_AND_ASSIGN(auto info, shard_->Create(name, value));
      before_[name] = Snapshot{value, info.version};
    }
    PSD_ASSERT_OK_AND_ASSIGN(info_before_, shard_->GetInfo());
    stub_ = Shard::NewStub(
        grpc::CreateChannel(process_->address(), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    ShardTest::TearDown();
    if (shard_ == nullptr) return;
    for (const auto& [name, snapshot] : before_) {
      SCOPED_TRACE("variable " + name);
      EXPECT_EQ(Read(name), snapshot.value);
      auto info = shard_->Lookup(name);
      ASSERT_TRUE(IsOk(info));
      EXPECT_EQ(info->version, snapshot.version) << "a failed request bumped the version";
      EXPECT_TRUE(info->initialized);
    }
    auto info = shard_->GetInfo();
    ASSERT_TRUE(IsOk(info));
    EXPECT_EQ(info->num_variables, info_before_.num_variables) << "a failed create left a variable";
    EXPECT_EQ(info->memory_used_bytes, info_before_.memory_used_bytes)
        << "a failed request leaked accounted memory";
  }

  // Sends `request` through the raw stub with a deadline.
  template <typename Req, typename Resp>
  absl::Status Raw(grpc::Status (Shard::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                   const Req& request, Resp* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return FromGrpcStatus((stub_.get()->*method)(&context, request, response));
  }
  absl::Status RawAssign(const std::string& name, const TensorProto& value,
                         bool validate_shape = true, UpdateOp op = UPDATE_ASSIGN) {
    AssignRequest request;
    request.set_name(name);
    request.set_op(op);
    *request.mutable_value() = value;
    request.set_validate_shape(validate_shape);
    AssignResponse response;
    return Raw(&Shard::Stub::Assign, request, &response);
  }
  absl::Status RawCreate(const std::string& name, DataType dtype, const std::vector<int64_t>& dims,
                         const TensorProto* initial_value) {
    CreateVariableRequest request;
    request.set_name(name);
    request.set_dtype(dtype);
    request.mutable_shape()->mutable_dims()->Assign(dims.begin(), dims.end());
    if (initial_value != nullptr) {
      *request.mutable_initial_value() = *initial_value;
    } else {
      request.mutable_initializer()->mutable_zeros();
    }
    request.set_initialize(true);
    CreateVariableResponse response;
    return Raw(&Shard::Stub::CreateVariable, request, &response);
  }

  static TensorProto Proto(DataType dtype, const std::vector<int64_t>& dims, std::string content) {
    TensorProto proto;
    proto.set_dtype(dtype);
    proto.mutable_shape()->mutable_dims()->Assign(dims.begin(), dims.end());
    proto.set_content(std::move(content));
    return proto;
  }
  static TensorProto Proto(const Tensor& t) {
    TensorProto proto;
    TensorToProto(t, &proto);
    return proto;
  }

  struct Snapshot {
    Tensor value;
    uint64_t version = 0;
  };
  std::map<std::string, Snapshot> before_;
  client::ShardInfo info_before_;
  std::unique_ptr<Shard::Stub> stub_;
};

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

TEST_F(BadInputTest, UnknownVariableIsNotFound) {
  const std::vector<std::string> want = {"variable 'missing' not found"};
  const auto code = absl::StatusCode::kNotFound;
  EXPECT_TRUE(IsError(shard_->Read("missing"), code, want));
  EXPECT_TRUE(IsError(shard_->Gather("missing", Vec<int64_t>({1}, {0})), code, want));
  EXPECT_TRUE(IsError(shard_->Assign("missing", Tensor::Scalar<float>(1)), code, want));
  EXPECT_TRUE(IsError(shard_->AssignAdd("missing", Tensor::Scalar<float>(1)), code, want));
  EXPECT_TRUE(IsError(shard_->AssignSub("missing", Tensor::Scalar<float>(1)), code, want));
  EXPECT_TRUE(
      IsError(shard_->ScatterUpdate("missing", Vec<int64_t>({1}, {0}), Tensor::Scalar<float>(1)),
              code, want));
  EXPECT_TRUE(IsError(
      shard_->ScatterAdd("missing", Vec<int64_t>({1}, {0}), Tensor::Scalar<float>(1)), code, want));
  EXPECT_TRUE(IsError(shard_->CountUpTo("missing", 10), code, want));
  EXPECT_TRUE(IsError(shard_->Delete("missing"), code, want));
  EXPECT_TRUE(IsError(shard_->Initialize({"weights", "missing"}), code, want));
}

TEST_F(BadInputTest, WrongDtypeIsInvalidArgumentNamingBothDtypes) {
  const std::vector<std::string> want = {"weights", "float32", "int32"};
  const Tensor ints = Vec<int32_t>({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_TRUE(IsError(shard_->Assign("weights", ints), kInvalid, want));
  EXPECT_TRUE(IsError(shard_->AssignAdd("weights", ints), kInvalid, want));
  EXPECT_TRUE(IsError(shard_->AssignSub("weights", ints), kInvalid, want));
  AssignOptions reshape;
  reshape.validate_shape = false;
  EXPECT_TRUE(IsError(shard_->Assign("weights", ints, reshape), kInvalid, want));
  EXPECT_TRUE(
      IsError(shard_->ScatterUpdate("table", Vec<int64_t>({1}, {0}), Vec<int32_t>({1, 2}, {1, 2})),
              kInvalid, {"table", "float32", "int32"}));
  EXPECT_TRUE(
      IsError(shard_->ScatterAdd("table", Vec<int64_t>({1}, {0}), Tensor::Scalar<double>(1)),
              kInvalid, {"table", "float32", "float64"}));
  EXPECT_TRUE(IsError(shard_->Assign("names", Vec<float>({2}, {1, 2})), kInvalid,
                      {"names", "string", "float32"}));
}

TEST_F(BadInputTest, WrongShapeIsInvalidArgumentNamingBothShapes) {
  const std::vector<std::string> want = {"weights", "[2,3]", "[3]"};
  EXPECT_TRUE(IsError(shard_->Assign("weights", Vec<float>({3}, {1, 2, 3})), kInvalid, want));
  EXPECT_TRUE(IsError(shard_->AssignAdd("weights", Vec<float>({3}, {1, 2, 3})), kInvalid, want));
  EXPECT_TRUE(IsError(shard_->AssignSub("weights", Vec<float>({3}, {1, 2, 3})), kInvalid, want));
  EXPECT_TRUE(IsError(shard_->Assign("weights", Tensor::Scalar<float>(1)), kInvalid,
                      {"weights", "[2,3]", "[]"}));
  // updates.shape must be indices.shape + var.shape[1:] = [2,2].
  EXPECT_TRUE(IsError(shard_->ScatterUpdate("table", Vec<int64_t>({2}, {0, 1}),
                                            Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6})),
                      kInvalid, {"table", "[2,3]"}));
  EXPECT_TRUE(
      IsError(shard_->ScatterAdd("table", Vec<int64_t>({2}, {0, 1}), Vec<float>({2}, {1, 2})),
              kInvalid, {"table"}));
  // A scalar has no axis 0 to scatter along or gather from.
  EXPECT_TRUE(
      IsError(shard_->ScatterAdd("step", Vec<int64_t>({1}, {0}), Tensor::Scalar<int64_t>(1)),
              kInvalid, {"step"}));
  EXPECT_TRUE(IsError(shard_->Gather("step", Vec<int64_t>({1}, {0})), kInvalid, {"step"}));
}

TEST_F(BadInputTest, BadIndexIsInvalidArgumentAndNothingIsApplied) {
  const std::vector<std::string> want = {"table", "indices[2] = 6 is not in [0, 6)"};
  EXPECT_TRUE(IsError(shard_->Gather("table", Vec<int64_t>({3}, {0, 1, 6})), kInvalid, want));
  EXPECT_TRUE(IsError(shard_->Gather("table", Vec<int32_t>({3}, {0, 1, 6})), kInvalid, want));
  // Rows 0 and 1 are valid; the bad third index must stop the whole op.
  const Tensor updates = Vec<float>({3, 2}, {1, 1, 1, 1, 1, 1});
  EXPECT_TRUE(IsError(shard_->ScatterUpdate("table", Vec<int64_t>({3}, {0, 1, 6}), updates),
                      kInvalid, want));
  EXPECT_TRUE(
      IsError(shard_->ScatterAdd("table", Vec<int64_t>({3}, {0, 1, 6}), updates), kInvalid, want));
  EXPECT_TRUE(
      IsError(shard_->ScatterSub("table", Vec<int64_t>({3}, {0, 1, 6}), updates), kInvalid, want));
  EXPECT_TRUE(
      IsError(shard_->ScatterAdd("table", Vec<int64_t>({3}, {0, 1, 6}), Tensor::Scalar<float>(1)),
              kInvalid, want));
  EXPECT_TRUE(IsError(shard_->Gather("table", Vec<int64_t>({2}, {-1, 0})), kInvalid,
                      {"table", "indices[0] = -1 is not in [0, 6)"}));
  EXPECT_TRUE(IsError(shard_->ScatterAdd("table", Vec<int32_t>({2, 2}, {0, 1, 2, 1 << 30}),
                                         Tensor::Scalar<float>(1)),
                      kInvalid, {"table", "= 1073741824 is not in [0, 6)"}));
  EXPECT_TRUE(IsError(shard_->Gather("table", Vec<float>({1}, {0})), kInvalid, {"table"}));
}

TEST_F(BadInputTest, ContentLengthThatDisagreesWithTheShapeIsInvalidArgument) {
  // float32[2,3] needs 24 bytes.
  EXPECT_TRUE(IsError(RawAssign("weights", Proto(DT_FLOAT, {2, 3}, std::string(20, '\0'))),
                      kInvalid, {"weights"}));
  EXPECT_TRUE(IsError(RawAssign("weights", Proto(DT_FLOAT, {2, 3}, std::string(28, '\0'))),
                      kInvalid, {"weights"}));
  // Control: the same request with the right length works (adding zeros is
  // still a mutation, so the expected version moves).
  ASSERT_TRUE(
      IsOk(RawAssign("weights", Proto(DT_FLOAT, {2, 3}, std::string(24, '\0')), true, UPDATE_ADD)));
  PSD_ASSERT_OK_AND_ASSIGN(auto after_control, shard_->Lookup("weights"));
  before_["weights"].version = after_control.version;

  const TensorProto short_value = Proto(DT_INT32, {2}, std::string(7, '\0'));
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_INT32, {2}, &short_value), kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(shard_->Read("fresh"), absl::StatusCode::kNotFound));

  ScatterRequest scatter;
  scatter.set_name("table");
  scatter.set_op(UPDATE_ADD);
  *scatter.mutable_indices() = Proto(Vec<int64_t>({2}, {0, 1}));
  *scatter.mutable_updates() = Proto(DT_FLOAT, {2, 2}, std::string(15, '\0'));
  ScatterResponse scatter_response;
  EXPECT_TRUE(IsError(Raw(&Shard::Stub::Scatter, scatter, &scatter_response), kInvalid, {"table"}));
  *scatter.mutable_updates() = Proto(Vec<float>({2, 2}, {1, 1, 1, 1}));
  *scatter.mutable_indices() = Proto(DT_INT64, {2}, std::string(12, '\0'));
  EXPECT_TRUE(IsError(Raw(&Shard::Stub::Scatter, scatter, &scatter_response), kInvalid, {"table"}));

  GatherRequest gather;
  gather.set_name("table");
  *gather.mutable_indices() = Proto(DT_INT32, {3}, std::string(11, '\0'));
  GatherResponse gather_response;
  EXPECT_TRUE(IsError(Raw(&Shard::Stub::Gather, gather, &gather_response), kInvalid, {"table"}));
}

TEST_F(BadInputTest, MalformedStringEncodingIsInvalidArgument) {
  // Two elements: the first length runs past the end.
  EXPECT_TRUE(IsError(RawAssign("names", Proto(DT_STRING, {2},
                                               "\x05"
                                               "\x01"
                                               "ab")),
                      kInvalid, {"names"}));
  // A varint that never ends.
  EXPECT_TRUE(IsError(RawAssign("names", Proto(DT_STRING, {2}, std::string(12, '\xff'))), kInvalid,
                      {"names"}));
  // Lengths add up to less than the content: trailing garbage.
  EXPECT_TRUE(IsError(RawAssign("names", Proto(DT_STRING, {2},
                                               "\x01\x01"
                                               "abX")),
                      kInvalid, {"names"}));
  // Fewer length bytes than elements.
  EXPECT_TRUE(IsError(RawAssign("names", Proto(DT_STRING, {2}, "\x00")), kInvalid, {"names"}));
  // A length near 2^64.
  EXPECT_TRUE(IsError(
      RawAssign("names", Proto(DT_STRING, {2}, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00")),
      kInvalid, {"names"}));
  const TensorProto bad = Proto(DT_STRING, {1},
                                "\x09"
                                "abc");
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_STRING, {1}, &bad), kInvalid, {"fresh"}));
}

TEST_F(BadInputTest, NegativeOrAbsurdDimensionsAreInvalidArgument) {
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_FLOAT, {-1}, nullptr), kInvalid, {"fresh", "-1"}));
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_FLOAT, {3, -2}, nullptr), kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_FLOAT, {int64_t{1} << 40, int64_t{1} << 40}, nullptr),
                      kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_FLOAT, {INT64_MAX, INT64_MAX, 2}, nullptr), kInvalid,
                      {"fresh"}));
  EXPECT_TRUE(IsError(RawAssign("weights", Proto(DT_FLOAT, {-3}, ""), /*validate_shape=*/false),
                      kInvalid, {"weights"}));
  EXPECT_TRUE(
      IsError(RawAssign("weights",
                        Proto(DT_FLOAT, {int64_t{1} << 32, int64_t{1} << 32, int64_t{1} << 32}, ""),
                        /*validate_shape=*/false),
              kInvalid, {"weights"}));
  GatherRequest gather;
  gather.set_name("table");
  *gather.mutable_indices() = Proto(DT_INT64, {-1}, "");
  GatherResponse gather_response;
  EXPECT_TRUE(IsError(Raw(&Shard::Stub::Gather, gather, &gather_response), kInvalid, {"table"}));
}

TEST_F(BadInputTest, UnknownDtypeOrOpIsInvalidArgument) {
  const TensorProto complex = Proto(static_cast<DataType>(8), {1}, std::string(8, '\0'));
  EXPECT_TRUE(
      IsError(RawCreate("fresh", static_cast<DataType>(8), {1}, &complex), kInvalid, {"fresh"}));
  EXPECT_TRUE(
      IsError(RawCreate("fresh", static_cast<DataType>(99), {1}, nullptr), kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_INVALID, {1}, nullptr), kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(RawAssign("weights", Proto(static_cast<DataType>(99), {2, 3}, "")), kInvalid,
                      {"weights"}));
  EXPECT_TRUE(IsError(RawAssign("weights", Proto(Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6})), true,
                                static_cast<UpdateOp>(7)),
                      kInvalid, {"weights"}));
  // The dtype or shape of the request disagrees with its initial value.
  const TensorProto ints = Proto(Vec<int32_t>({2}, {1, 2}));
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_FLOAT, {2}, &ints), kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(RawCreate("fresh", DT_INT32, {3}, &ints), kInvalid, {"fresh"}));
}

TEST_F(BadInputTest, UninitializedUseIsFailedPrecondition) {
  CreateOptions deferred;
  deferred.initialize = false;
  ASSERT_TRUE(IsOk(shard_->Create("later", DT_INT64, TensorShape{4}, init::Zeros(), deferred)));
  ASSERT_TRUE(
      IsOk(shard_->Create("later_count", DT_INT64, TensorShape{}, init::Zeros(), deferred)));
  const auto code = absl::StatusCode::kFailedPrecondition;
  const std::vector<std::string> want = {"Attempting to use uninitialized value later"};
  EXPECT_TRUE(IsError(shard_->Read("later"), code, want));
  EXPECT_TRUE(IsError(shard_->Gather("later", Vec<int64_t>({1}, {0})), code, want));
  EXPECT_TRUE(IsError(shard_->AssignAdd("later", Vec<int64_t>({4}, {1, 1, 1, 1})), code, want));
  EXPECT_TRUE(IsError(
      shard_->ScatterAdd("later", Vec<int64_t>({1}, {0}), Tensor::Scalar<int64_t>(1)), code, want));
  EXPECT_TRUE(IsError(shard_->CountUpTo("later_count", 3), code,
                      {"Attempting to use uninitialized value later_count"}));
  PSD_ASSERT_OK_AND_ASSIGN(auto uninit, shard_->ReportUninitialized());
  EXPECT_EQ(uninit, (std::vector<std::string>{"later", "later_count"}));
  ASSERT_TRUE(IsOk(shard_->Delete("later")));
  ASSERT_TRUE(IsOk(shard_->Delete("later_count")));
}

TEST_F(BadInputTest, ArithmeticOnBoolOrStringIsInvalidArgumentNamingOpAndDtype) {
  EXPECT_TRUE(IsErrorIgnoringCase(shard_->AssignAdd("flags", Vec<bool>({3}, {true, true, true})),
                                  kInvalid, {"flags", "bool", "add"}));
  EXPECT_TRUE(IsErrorIgnoringCase(shard_->AssignSub("flags", Vec<bool>({3}, {true, true, true})),
                                  kInvalid, {"flags", "bool", "sub"}));
  EXPECT_TRUE(IsErrorIgnoringCase(shard_->AssignAdd("names", Strings({2}, {"x", "y"})), kInvalid,
                                  {"names", "string", "add"}));
  EXPECT_TRUE(IsErrorIgnoringCase(
      shard_->ScatterAdd("flags", Vec<int64_t>({1}, {0}), Tensor::Scalar<bool>(true)), kInvalid,
      {"flags", "bool", "add"}));
  EXPECT_TRUE(
      IsErrorIgnoringCase(shard_->ScatterSub("names", Vec<int64_t>({1}, {0}), Strings({1}, {"x"})),
                          kInvalid, {"names", "string", "sub"}));
}

TEST_F(BadInputTest, CountUpToOnANonIntegerOrNonScalarIsInvalidArgument) {
  EXPECT_TRUE(IsError(shard_->CountUpTo("ratio", 10), kInvalid, {"ratio", "float32"}));
  EXPECT_TRUE(IsError(shard_->CountUpTo("flags", 10), kInvalid, {"flags", "bool"}));
  EXPECT_TRUE(IsError(shard_->CountUpTo("names", 10), kInvalid, {"names"}));
  EXPECT_TRUE(IsError(shard_->CountUpTo("table", 10), kInvalid, {"table"}));
}

TEST_F(BadInputTest, AllocationPastTheMemoryLimitIsResourceExhausted) {
  const auto code = absl::StatusCode::kResourceExhausted;
  // 2 MiB against a 1 MiB limit.
  EXPECT_TRUE(IsError(shard_->Create("big", DT_FLOAT, TensorShape{512, 1024}, init::Zeros()), code,
                      {"big", "memory limit"}));
  EXPECT_TRUE(IsError(shard_->Create("big", Tensor(DT_FLOAT, TensorShape{512, 1024})), code,
                      {"big", "memory limit"}));
  AssignOptions reshape;
  reshape.validate_shape = false;
  EXPECT_TRUE(IsError(shard_->Assign("weights", Tensor(DT_FLOAT, TensorShape{512, 1024}), reshape),
                      code, {"weights", "memory limit"}));
  // A valid shape whose bytes no machine has: must be refused, not attempted.
  EXPECT_TRUE(IsError(
      shard_->Create("huge", DT_FLOAT, TensorShape{int64_t{1} << 31, 1 << 29}, init::Zeros()), code,
      {"huge", "memory limit"}));
  EXPECT_TRUE(
      IsError(shard_->Create("huge", DT_STRING, TensorShape{int64_t{1} << 40}, init::Default()),
              code, {"huge", "memory limit"}));
  EXPECT_TRUE(IsError(shard_->Read("big"), absl::StatusCode::kNotFound));
  // Strings count their characters: two 600 KiB strings do not fit either.
  const std::string long_string(600 << 10, 'x');
  EXPECT_TRUE(IsError(shard_->Assign("names", Strings({2}, {long_string, long_string})), code,
                      {"names", "memory limit"}));
  EXPECT_TRUE(IsError(shard_->ScatterUpdate("names", Vec<int64_t>({2}, {0, 1}),
                                            Strings({2}, {long_string, long_string})),
                      code, {"names", "memory limit"}));
  EXPECT_TRUE(IsError(shard_->Create("big", Strings({2}, {long_string, long_string})), code,
                      {"big", "memory limit"}));

  // Deferred: either refused at create or at initialization, never half-made.
  CreateOptions deferred;
  deferred.initialize = false;
  auto created =
      shard_->Create("later", DT_DOUBLE, TensorShape{1024, 1024}, init::Ones(), deferred);
  if (created.ok()) {
    EXPECT_TRUE(IsError(shard_->Initialize({"later"}), code, {"later", "memory limit"}));
    EXPECT_TRUE(IsError(shard_->Read("later"), absl::StatusCode::kFailedPrecondition));
    ASSERT_TRUE(IsOk(shard_->Delete("later")));
  } else {
    EXPECT_TRUE(IsError(created, code, {"later", "memory limit"}));
  }

  // What fits still fits.
  PSD_ASSERT_OK_AND_ASSIGN(auto info, shard_->GetInfo());
  EXPECT_EQ(info.memory_limit_bytes, kMemoryLimit);
  EXPECT_LE(info.memory_used_bytes, kMemoryLimit);
  ASSERT_TRUE(IsOk(shard_->Create("fits", DT_FLOAT, TensorShape{16, 1024}, init::Ones())));
  ASSERT_TRUE(IsOk(shard_->Delete("fits")));
}

TEST_F(BadInputTest, CreatingAnExistingNameIsAlreadyExists) {
  EXPECT_TRUE(IsError(shard_->Create("weights", Vec<float>({2, 3}, {0, 0, 0, 0, 0, 0})),
                      absl::StatusCode::kAlreadyExists, {"weights"}));
  EXPECT_TRUE(IsError(shard_->Create("weights", DT_INT32, TensorShape{7}, init::Zeros()),
                      absl::StatusCode::kAlreadyExists, {"weights"}));
}

TEST_F(BadInputTest, InvalidInitializerIsInvalidArgument) {
  EXPECT_TRUE(IsError(shard_->Create("fresh", DT_FLOAT, TensorShape{3}, init::RandomUniform(1, 1)),
                      kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(shard_->Create("fresh", DT_FLOAT, TensorShape{3}, init::RandomNormal(0, -1)),
                      kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(shard_->Create("fresh", DT_BOOL, TensorShape{3}, init::RandomNormal()),
                      kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(
      shard_->Create("fresh", DT_FLOAT, TensorShape{3}, init::Constant(Vec<float>({2}, {1, 2}))),
      kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(
      shard_->Create("fresh", DT_FLOAT, TensorShape{3}, init::Constant(Tensor::Scalar<int32_t>(1))),
      kInvalid, {"fresh"}));
  EXPECT_TRUE(IsError(shard_->Create("fresh", DT_FLOAT, TensorShape{3}, InitializerSpec()),
                      kInvalid, {"fresh"}));
}

TEST_F(BadInputTest, ProtocolVersionMismatchIsFailedPrecondition) {
  GetShardInfoRequest request;
  request.set_protocol_version(999);
  GetShardInfoResponse response;
  EXPECT_TRUE(IsError(Raw(&Shard::Stub::GetShardInfo, request, &response),
                      absl::StatusCode::kFailedPrecondition, {"999"}));
}

// Not bad input, but only the raw stub can see it: a mutation echoes the new
// value only when asked.
TEST_F(BadInputTest, MutationsReturnTheValueOnlyWhenAsked) {
  AssignRequest request;
  request.set_name("weights");
  request.set_op(UPDATE_ADD);
  *request.mutable_value() = Proto(Vec<float>({2, 3}, {0, 0, 0, 0, 0, 0}));
  AssignResponse response;
  ASSERT_TRUE(IsOk(Raw(&Shard::Stub::Assign, request, &response)));
  EXPECT_FALSE(response.has_value());
  request.set_return_value(true);
  ASSERT_TRUE(IsOk(Raw(&Shard::Stub::Assign, request, &response)));
  EXPECT_EQ(response.value().content(), Proto(before_["weights"].value).content());
  // Adding zeros is still a mutation.
  before_["weights"].version = response.version();
}

}  // namespace
}  // namespace integration
}  // namespace psd
