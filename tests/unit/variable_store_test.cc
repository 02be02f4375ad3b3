// VariableStore in-process: every op's semantics and every validation path,
// checking that a failed request leaves the variable exactly as it was.
#include "shard/variable_store.h"

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "store_test_util.h"

namespace psd {
namespace {

using store_test::Vec;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TensorProto ToProto(const Tensor& t) {
  TensorProto p;
  TensorToProto(t, &p);
  return p;
}

class VariableStoreTest : public ::testing::Test {
 protected:
  static VariableStoreOptions Options() {
    VariableStoreOptions options;
    options.memory_limit_bytes = 1 << 20;
    options.incarnation = 77;
    options.max_unary_value_bytes = 4096;
    options.default_chunk_bytes = 100;
    options.request_window = 8;
    return options;
  }
  VariableStoreTest() : device_(NewCpuDevice()), store_(device_.get(), Options()) {}

  void CreateFrom(const std::string& name, const TensorProto& value) {
    ASSERT_TRUE(store_test::CreateWithValue(&store_, name, value).ok());
  }

  Tensor ReadValue(const std::string& name) {
    ReadRequest req;
    req.set_name(name);
    ReadResponse resp;
    absl::Status s = store_.Read(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return *TensorFromProto(resp.value(), name);
  }

  absl::Status Assign(const std::string& name, UpdateOp op, const TensorProto& value,
                      bool validate_shape = true) {
    return store_test::AssignValue(&store_, name, op, value, validate_shape);
  }

  absl::Status Scatter(const std::string& name, UpdateOp op, const TensorProto& indices,
                       const TensorProto& updates) {
    ScatterRequest req;
    req.set_name(name);
    req.set_op(op);
    *req.mutable_indices() = indices;
    *req.mutable_updates() = updates;
    ScatterResponse resp;
    return store_.Scatter(req, &resp);
  }

  absl::StatusOr<int64_t> CountUpTo(const std::string& name, int64_t limit) {
    CountUpToRequest req;
    req.set_name(name);
    req.set_limit(limit);
    CountUpToResponse resp;
    absl::Status s = store_.CountUpTo(req, &resp);
    if (!s.ok()) return s;
    return resp.old_value();
  }

  std::unique_ptr<Device> device_;
  VariableStore store_;
};

TEST_F(VariableStoreTest, AssignOpsReturnNewValueOnlyWhenAsked) {
  CreateFrom("v", Vec<float>({}, {0.0f}));
  AssignRequest req;
  req.set_name("v");
  req.set_op(UPDATE_ADD);
  *req.mutable_value() = Vec<float>({}, {1.0f});
  req.set_validate_shape(true);
  AssignResponse resp;
  ASSERT_TRUE(store_.Assign(req, &resp).ok());
  EXPECT_FALSE(resp.has_value());
  req.set_op(UPDATE_SUB);
  *req.mutable_value() = Vec<float>({}, {2.0f});
  req.set_return_value(true);
  ASSERT_TRUE(store_.Assign(req, &resp).ok());
  EXPECT_EQ(TensorFromProto(resp.value(), "v")->ToVector<float>(), std::vector<float>{-1.0f});
  req.set_op(UPDATE_ASSIGN);
  *req.mutable_value() = Vec<float>({}, {4.0f});
  ASSERT_TRUE(store_.Assign(req, &resp).ok());
  EXPECT_EQ(TensorFromProto(resp.value(), "v")->ToVector<float>(), std::vector<float>{4.0f});
}

TEST_F(VariableStoreTest, AssignWithoutValidateShapeReplacesShape) {
  CreateFrom("p", Vec<float>({1}, {1.0f}));
  ASSERT_TRUE(Assign("p", UPDATE_ASSIGN, ToProto(Tensor(DT_FLOAT, TensorShape{32, 32})), false).ok());
  EXPECT_EQ(ReadValue("p").shape(), (TensorShape{32, 32}));
  absl::Status s = Assign("p", UPDATE_ASSIGN, Vec<float>({2}, {1, 2}), /*validate_shape=*/true);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("[32,32]"));
  EXPECT_THAT(s.message(), HasSubstr("[2]"));
}

TEST_F(VariableStoreTest, ReadOfUninitializedVariableIsFailedPrecondition) {
  CreateVariableRequest req;
  req.set_name("lazy");
  req.set_dtype(DT_FLOAT);
  req.mutable_shape()->add_dims(2);
  VariableInfo info;
  ASSERT_TRUE(store_.Create(req, &info).ok());
  EXPECT_FALSE(info.initialized());
  ReadRequest read;
  read.set_name("lazy");
  ReadResponse resp;
  absl::Status s = store_.Read(read, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("Attempting to use uninitialized value lazy"));
  EXPECT_EQ(Assign("lazy", UPDATE_ADD, Vec<float>({2}, {1, 2})).code(),
            absl::StatusCode::kFailedPrecondition);

  ReportUninitializedResponse report;
  ASSERT_TRUE(store_.ReportUninitialized({}, &report).ok());
  EXPECT_THAT(report.names(), ElementsAre("lazy"));
  InitializeVariablesRequest init;
  init.add_names("lazy");
  ASSERT_TRUE(store_.Initialize(init).ok());
  report.Clear();
  ASSERT_TRUE(store_.ReportUninitialized({}, &report).ok());
  EXPECT_TRUE(report.names().empty());
}

TEST_F(VariableStoreTest, InitializeWithUnknownNameInitializesNothing) {
  CreateVariableRequest req;
  req.set_name("a");
  req.set_dtype(DT_INT32);
  VariableInfo info;
  ASSERT_TRUE(store_.Create(req, &info).ok());
  InitializeVariablesRequest init;
  init.add_names("a");
  init.add_names("missing");
  EXPECT_EQ(store_.Initialize(init).code(), absl::StatusCode::kNotFound);
  ReportUninitializedResponse report;
  ASSERT_TRUE(store_.ReportUninitialized({}, &report).ok());
  EXPECT_THAT(report.names(), ElementsAre("a"));
}

TEST_F(VariableStoreTest, ScatterAddAccumulatesDuplicatesAndUpdateLastWins) {
  CreateFrom("r", Vec<float>({3}, {0, 0, 0}));
  ASSERT_TRUE(Scatter("r", UPDATE_ADD, Vec<int32_t>({2}, {1, 1}), Vec<float>({2}, {2, 3})).ok());
  EXPECT_EQ(ReadValue("r").ToVector<float>(), (std::vector<float>{0, 5, 0}));
  ASSERT_TRUE(Scatter("r", UPDATE_ASSIGN, Vec<int64_t>({2}, {0, 0}), Vec<float>({2}, {7, 9})).ok());
  EXPECT_EQ(ReadValue("r").ToVector<float>(), (std::vector<float>{9, 5, 0}));
  ASSERT_TRUE(Scatter("r", UPDATE_SUB, Vec<int32_t>({1}, {2}), Vec<float>({}, {1})).ok());
  EXPECT_EQ(ReadValue("r").ToVector<float>(), (std::vector<float>{9, 5, -1}));
}

TEST_F(VariableStoreTest, ScatterWithRank2IndicesAndRows) {
  CreateFrom("t", Vec<int64_t>({3, 2}, {0, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(Scatter("t", UPDATE_ADD, Vec<int32_t>({2, 2}, {0, 2, 2, 0}),
                      Vec<int64_t>({2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8}))
                  .ok());
  EXPECT_EQ(ReadValue("t").ToVector<int64_t>(), (std::vector<int64_t>{8, 10, 0, 0, 8, 10}));
}

TEST_F(VariableStoreTest, BadIndexFailsWholeScatterWithTensorFlowWording) {
  CreateFrom("p", Vec<float>({6}, {1, 2, 3, 4, 5, 6}));
  absl::Status s =
      Scatter("p", UPDATE_ADD, Vec<int32_t>({3}, {2, 0, 6}), Vec<float>({3}, {-3, -4, -5}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("indices[2] = 6 is not in [0, 6)"));
  s = Scatter("p", UPDATE_ASSIGN, Vec<int32_t>({3}, {-1, 0, 5}), Vec<float>({3}, {-3, -4, -5}));
  EXPECT_THAT(s.message(), HasSubstr("indices[0] = -1 is not in [0, 6)"));
  EXPECT_EQ(ReadValue("p").ToVector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
}

TEST_F(VariableStoreTest, CountUpToReturnsOldValueThenOutOfRange) {
  CreateFrom("c", Vec<int32_t>({}, {0}));
  EXPECT_EQ(*CountUpTo("c", 3), 0);
  EXPECT_EQ(*CountUpTo("c", 3), 1);
  EXPECT_EQ(*CountUpTo("c", 3), 2);
  for (int i = 0; i < 2; ++i) {
    auto r = CountUpTo("c", 3);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
    EXPECT_THAT(r.status().message(), HasSubstr("Reached limit of 3"));
  }
  EXPECT_EQ(ReadValue("c").ToVector<int32_t>(), std::vector<int32_t>{3});
  CreateFrom("f", Vec<float>({}, {0}));
  EXPECT_EQ(CountUpTo("f", 3).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(VariableStoreTest, ArithmeticOnBoolAndStringNamesOpAndDtype) {
  CreateFrom("b", ToProto(*Tensor::FromVector<bool>(TensorShape{2}, {true, false})));
  absl::Status s = Assign("b", UPDATE_ADD, ToProto(*Tensor::FromVector<bool>(TensorShape{2}, {true, true})));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("assign_add is not supported for variable 'b' of dtype bool"));
  // scatter_update works on bool (TensorFlow's variables_test).
  ASSERT_TRUE(Scatter("b", UPDATE_ASSIGN, Vec<int32_t>({}, {1}), ToProto(Tensor::Scalar(true))).ok());
  ASSERT_TRUE(Scatter("b", UPDATE_ASSIGN, Vec<int64_t>({}, {0}), ToProto(Tensor::Scalar(false))).ok());
  EXPECT_EQ(ReadValue("b").ToVector<bool>(), (std::vector<bool>{false, true}));

  CreateFrom("s", ToProto(*Tensor::FromStrings(TensorShape{2}, {"a", "b"})));
  s = Scatter("s", UPDATE_SUB, Vec<int32_t>({1}, {0}), ToProto(*Tensor::FromStrings(TensorShape{1}, {"x"})));
  EXPECT_THAT(s.message(), HasSubstr("scatter_sub is not supported for variable 's' of dtype string"));
  ASSERT_TRUE(Scatter("s", UPDATE_ASSIGN, Vec<int32_t>({1}, {1}),
                      ToProto(*Tensor::FromStrings(TensorShape{1}, {"longer value"})))
                  .ok());
  EXPECT_EQ(ReadValue("s").strings(), (std::vector<std::string>{"a", "longer value"}));
}

TEST_F(VariableStoreTest, DtypeAndShapeMismatchNameBoth) {
  CreateFrom("v", Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  absl::Status s = Assign("v", UPDATE_ADD, Vec<int32_t>({2, 3}, {1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'v' is float32, value is int32"));
  s = Assign("v", UPDATE_ADD, Vec<float>({3}, {1, 1, 1}));
  EXPECT_THAT(s.message(), HasSubstr("'v' has shape [2,3], value has shape [3]"));
  EXPECT_EQ(ReadValue("v").ToVector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
}

TEST_F(VariableStoreTest, MemoryLimitIsResourceExhaustedAndChangesNothing) {
  CreateVariableRequest req;
  req.set_name("big");
  req.set_dtype(DT_FLOAT);
  req.mutable_shape()->add_dims(1 << 20);  // 4 MiB > 1 MiB limit
  req.mutable_initializer()->mutable_zeros();
  req.set_initialize(true);
  VariableInfo info;
  absl::Status s = store_.Create(req, &info);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("'big'"));
  EXPECT_THAT(s.message(), HasSubstr("memory limit"));
  EXPECT_EQ(store_.num_variables(), 0u);
  EXPECT_EQ(store_.memory().used(), 0);

  // A reshaping assign past the limit leaves the old value in place.
  CreateFrom("small", Vec<float>({2}, {1, 2}));
  s = Assign("small", UPDATE_ASSIGN, ToProto(Tensor(DT_FLOAT, TensorShape{1 << 19})), false);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReadValue("small").ToVector<float>(), (std::vector<float>{1, 2}));
  EXPECT_EQ(store_.memory().used(), 8);
}

TEST_F(VariableStoreTest, HeldInitialValueIsChargedUntilInitialized) {
  // Created uninitialized from a value: the shard holds the value until
  // the first initialization, and that takes memory.
  ASSERT_TRUE(store_test::CreateWithValue(&store_, "held", ToProto(Tensor(DT_FLOAT, TensorShape{1000})),
                                          /*initialize=*/false)
                  .ok());
  EXPECT_EQ(store_.memory().used(), 4000);
  const absl::Status s = store_test::CreateWithValue(
      &store_, "too_big", ToProto(Tensor(DT_FLOAT, TensorShape{1 << 18})), /*initialize=*/false);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(store_.num_variables(), 1u);
  // Initialized, the held copy is dropped: the variable alone is charged.
  InitializeVariablesRequest init;
  init.add_names("held");
  ASSERT_TRUE(store_.Initialize(init).ok());
  EXPECT_EQ(store_.memory().used(), 4000);
  DeleteVariableRequest del;
  del.set_name("held");
  ASSERT_TRUE(store_.Delete(del).ok());
  EXPECT_EQ(store_.memory().used(), 0);
}

TEST_F(VariableStoreTest, DeleteReleasesMemory) {
  CreateFrom("v", Vec<double>({4}, {1, 2, 3, 4}));
  EXPECT_EQ(store_.memory().used(), 32);
  DeleteVariableRequest del;
  del.set_name("v");
  ASSERT_TRUE(store_.Delete(del).ok());
  EXPECT_EQ(store_.memory().used(), 0);
  EXPECT_EQ(store_.Delete(del).code(), absl::StatusCode::kNotFound);
}

TEST_F(VariableStoreTest, CreateValidatesNameShapeAndExistence) {
  CreateVariableRequest req;
  req.set_name("_bad");
  req.set_dtype(DT_FLOAT);
  VariableInfo info;
  EXPECT_THAT(store_.Create(req, &info).message(), HasSubstr("invalid variable name '_bad'"));
  req.set_name("ok/name");
  req.mutable_shape()->add_dims(-3);
  EXPECT_THAT(store_.Create(req, &info).message(), HasSubstr("dimension 0 is -3"));
  req.mutable_shape()->set_dims(0, 2);
  req.set_dtype(static_cast<DataType>(8));
  EXPECT_EQ(store_.Create(req, &info).code(), absl::StatusCode::kInvalidArgument);
  req.set_dtype(DT_FLOAT);
  ASSERT_TRUE(store_.Create(req, &info).ok());
  EXPECT_EQ(store_.Create(req, &info).code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(VariableStoreTest, PartitionedSliceGetsSameValuesAsWholeVariable) {
  auto make = [&](const std::string& name, std::vector<int64_t> shape,
                  std::vector<int64_t> offset) {
    CreateVariableRequest req;
    req.set_name(name);
    req.set_dtype(DT_FLOAT);
    for (auto d : shape) req.mutable_shape()->add_dims(d);
    req.mutable_slice()->add_full_shape(10);
    req.mutable_slice()->add_full_shape(4);
    for (auto o : offset) req.mutable_slice()->add_offset(o);
    auto* init = req.mutable_initializer();
    init->mutable_random_normal()->set_stddev(1.0);
    init->set_seed(42);
    req.set_initialize(true);
    VariableInfo info;
    ASSERT_TRUE(store_.Create(req, &info).ok());
  };
  make("whole", {10, 4}, {0, 0});
  make("whole/part_1", {4, 4}, {6, 0});
  const auto whole = ReadValue("whole").ToVector<float>();
  const auto part = ReadValue("whole/part_1").ToVector<float>();
  EXPECT_EQ(part, std::vector<float>(whole.begin() + 24, whole.end()));
}

TEST_F(VariableStoreTest, ConcurrentAssignAddIsAtomic) {
  CreateFrom("sum", Vec<int64_t>({}, {0}));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) ASSERT_TRUE(Assign("sum", UPDATE_ADD, Vec<int64_t>({}, {1})).ok());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ReadValue("sum").ToVector<int64_t>(), std::vector<int64_t>{2000});
}

TEST_F(VariableStoreTest, StringVariablesDefaultToEmptyAndGather) {
  CreateVariableRequest req;
  req.set_name("words");
  req.set_dtype(DT_STRING);
  req.mutable_shape()->add_dims(3);
  req.set_initialize(true);
  VariableInfo info;
  ASSERT_TRUE(store_.Create(req, &info).ok());
  EXPECT_EQ(ReadValue("words").strings(), (std::vector<std::string>{"", "", ""}));
  ASSERT_TRUE(Assign("words", UPDATE_ASSIGN,
                     ToProto(*Tensor::FromStrings(TensorShape{3}, {"x", "yy", "zzz"})))
                  .ok());
  GatherRequest g;
  g.set_name("words");
  *g.mutable_indices() = Vec<int32_t>({2}, {2, 0});
  GatherResponse resp;
  ASSERT_TRUE(store_.Gather(g, &resp).ok());
  EXPECT_EQ(TensorFromProto(resp.value(), "g")->strings(), (std::vector<std::string>{"zzz", "x"}));
}

// Gather and one-message reads fill their result without zeroing it first
// (the row copy writes every byte): the bytes must come back exact for
// every element width, odd row sizes and repeated indices, and a failed
// gather must return no value at all.
TEST_F(VariableStoreTest, GatherAndReadReturnExactBytesOfEveryWidth) {
  for (DataType dtype : {DT_BOOL, DT_INT8, DT_UINT8, DT_INT16, DT_HALF, DT_BFLOAT16, DT_INT32,
                         DT_FLOAT, DT_INT64, DT_DOUBLE}) {
    SCOPED_TRACE(DataTypeName(dtype));
    const std::string name = absl::StrCat("v_", DataTypeName(dtype));
    // 7 rows of 3 elements; every byte distinct from its neighbours (bools
    // 0/1: a bool must hold one of them).
    Tensor value(dtype, TensorShape{7, 3});
    std::string* bytes = value.mutable_bytes();
    for (size_t i = 0; i < bytes->size(); ++i) {
      (*bytes)[i] =
          dtype == DT_BOOL ? static_cast<char>(i % 3 == 1) : static_cast<char>(0x5b + 37 * i);
    }
    CreateFrom(name, ToProto(value));
    EXPECT_EQ(ReadValue(name), value);

    const size_t row = bytes->size() / 7;
    GatherRequest g;
    g.set_name(name);
    *g.mutable_indices() = Vec<int64_t>({5}, {6, 0, 6, 3, 1});
    GatherResponse resp;
    ASSERT_TRUE(store_.Gather(g, &resp).ok());
    std::string want;
    for (int64_t idx : {6, 0, 6, 3, 1}) want += bytes->substr(idx * row, row);
    EXPECT_EQ(resp.value().content(), want);
    EXPECT_THAT(resp.value().shape().dims(), ElementsAre(5, 3));

    // Rank-2 indices, and an odd single row.
    *g.mutable_indices() = Vec<int32_t>({1, 1}, {4});
    resp.Clear();
    ASSERT_TRUE(store_.Gather(g, &resp).ok());
    EXPECT_EQ(resp.value().content(), bytes->substr(4 * row, row));
    EXPECT_THAT(resp.value().shape().dims(), ElementsAre(1, 1, 3));

    // A bad index fails the gather whole, with no value in the response.
    *g.mutable_indices() = Vec<int64_t>({2}, {1, 7});
    resp.Clear();
    EXPECT_EQ(store_.Gather(g, &resp).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_FALSE(resp.has_value() && !resp.value().content().empty());
  }
}

RequestId Id(uint64_t client, uint64_t seq) {
  RequestId id;
  id.set_client_id(client);
  id.set_seq(seq);
  return id;
}

TEST_F(VariableStoreTest, RetriedRequestIdIsAppliedOnce) {
  CreateFrom("sum", Vec<int64_t>({}, {0}));
  AssignRequest add;
  add.set_name("sum");
  add.set_op(UPDATE_ADD);
  *add.mutable_value() = Vec<int64_t>({}, {5});
  *add.mutable_request_id() = Id(1, 1);
  AssignResponse first, second;
  ASSERT_TRUE(store_.Assign(add, &first).ok());
  ASSERT_TRUE(store_.Assign(add, &second).ok());
  EXPECT_EQ(second.version(), first.version());
  EXPECT_EQ(ReadValue("sum").ToVector<int64_t>(), std::vector<int64_t>{5});

  CreateFrom("c", Vec<int32_t>({}, {0}));
  CountUpToRequest count;
  count.set_name("c");
  count.set_limit(10);
  *count.mutable_request_id() = Id(1, 2);
  CountUpToResponse a, b;
  ASSERT_TRUE(store_.CountUpTo(count, &a).ok());
  ASSERT_TRUE(store_.CountUpTo(count, &b).ok());
  EXPECT_EQ(a.old_value(), 0);
  EXPECT_EQ(b.old_value(), 0);
  EXPECT_EQ(ReadValue("c").ToVector<int32_t>(), std::vector<int32_t>{1});
}

TEST_F(VariableStoreTest, FailedRequestRetriedGetsSameError) {
  CreateFrom("c", Vec<int32_t>({}, {3}));
  CountUpToRequest count;
  count.set_name("c");
  count.set_limit(3);
  *count.mutable_request_id() = Id(9, 1);
  CountUpToResponse resp;
  EXPECT_EQ(store_.CountUpTo(count, &resp).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store_.CountUpTo(count, &resp).code(), absl::StatusCode::kOutOfRange);
}

TEST_F(VariableStoreTest, RequestIdOlderThanWindowIsAborted) {
  CreateFrom("sum", Vec<int64_t>({}, {0}));
  AssignRequest add;
  add.set_name("sum");
  add.set_op(UPDATE_ADD);
  *add.mutable_value() = Vec<int64_t>({}, {1});
  AssignResponse resp;
  for (uint64_t seq = 1; seq <= 20; ++seq) {
    *add.mutable_request_id() = Id(2, seq);
    ASSERT_TRUE(store_.Assign(add, &resp).ok());
  }
  *add.mutable_request_id() = Id(2, 11);  // the window is 8: 13..20 are remembered
  absl::Status s = store_.Assign(add, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("request id too old"));
  // 12, the newest request of "sum" forgotten, is answered from its result.
  *add.mutable_request_id() = Id(2, 12);
  EXPECT_TRUE(store_.Assign(add, &resp).ok());
  *add.mutable_request_id() = Id(2, 13);
  EXPECT_TRUE(store_.Assign(add, &resp).ok());  // a remembered duplicate
  EXPECT_EQ(ReadValue("sum").ToVector<int64_t>(), std::vector<int64_t>{20});
}

TEST_F(VariableStoreTest, StaleIncarnationIsAbortedBeforeAnything) {
  CreateFrom("v", Vec<float>({}, {1}));
  AssignRequest req;
  req.set_name("v");
  req.set_op(UPDATE_ADD);
  *req.mutable_value() = Vec<float>({}, {1});
  req.set_shard_incarnation(76);
  AssignResponse resp;
  absl::Status s = store_.Assign(req, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("stale handle"));
  req.set_shard_incarnation(77);
  EXPECT_TRUE(store_.Assign(req, &resp).ok());
  EXPECT_EQ(ReadValue("v").ToVector<float>(), std::vector<float>{2});
}

TEST_F(VariableStoreTest, BigUnaryReadAsksForStream) {
  CreateFrom("big", ToProto(Tensor(DT_FLOAT, TensorShape{2000})));  // 8000 > 4096 bytes
  ReadRequest req;
  req.set_name("big");
  ReadResponse resp;
  ASSERT_TRUE(store_.Read(req, &resp).ok());
  EXPECT_TRUE(resp.use_stream());
  EXPECT_EQ(resp.value_bytes(), 8000);
  EXPECT_FALSE(resp.has_value());
}

// Reassembles a streamed read.
std::string Drain(ReadStreamSource* source, TensorChunk* header) {
  source->FillHeader(header);
  std::string bytes;
  TensorChunk chunk;
  while (*source->Next(&chunk)) {
    EXPECT_EQ(chunk.offset(), static_cast<int64_t>(bytes.size()));
    bytes += chunk.content();
    chunk.Clear();
  }
  return bytes;
}

TEST_F(VariableStoreTest, StreamedReadSeesValueAtStartWhileWritersCopyOnWrite) {
  std::vector<float> values(1000);
  for (int i = 0; i < 1000; ++i) values[i] = static_cast<float>(i);
  CreateFrom("t", Vec<float>({1000}, values));
  const int64_t used = store_.memory().used();
  ReadStreamRequest req;
  req.set_name("t");
  auto source = store_.BeginReadStream(req);
  ASSERT_TRUE(source.ok()) << source.status();
  // A write while the stream is open copies the value (accounted) ...
  ASSERT_TRUE(Assign("t", UPDATE_ADD, ToProto(*Tensor::FromVector<float>(TensorShape{1000}, std::vector<float>(1000, 1)))).ok());
  EXPECT_EQ(store_.memory().used(), 2 * used);
  // ... and the stream still sends the value as it was.
  TensorChunk header;
  std::string bytes = Drain(source->get(), &header);
  EXPECT_EQ(header.total_bytes(), 4000);
  ASSERT_EQ(bytes.size(), 4000u);
  std::vector<float> streamed(1000);
  std::memcpy(streamed.data(), bytes.data(), bytes.size());
  EXPECT_EQ(streamed, values);
  source->reset();
  EXPECT_EQ(store_.memory().used(), used);
  EXPECT_EQ(ReadValue("t").ToVector<float>()[10], 11.0f);
}

AssignStreamHeader StreamHeader(const std::string& name, DataType dtype, std::vector<int64_t> dims,
                                int64_t total) {
  AssignStreamHeader h;
  h.set_name(name);
  h.set_op(UPDATE_ASSIGN);
  h.set_dtype(dtype);
  for (auto d : dims) h.mutable_shape()->add_dims(d);
  h.set_total_bytes(total);
  h.set_validate_shape(true);
  return h;
}

TEST_F(VariableStoreTest, StreamedAssignAppliesOnlyWhenComplete) {
  CreateFrom("v", Vec<int32_t>({4}, {1, 2, 3, 4}));
  const int64_t used = store_.memory().used();
  const std::vector<int32_t> next = {5, 6, 7, 8};
  {
    auto sink = store_.BeginAssignStream(StreamHeader("v", DT_INT32, {4}, 16));
    ASSERT_TRUE(sink.ok()) << sink.status();
    ASSERT_TRUE((*sink)->Append(absl::string_view(reinterpret_cast<const char*>(next.data()), 8)).ok());
    EXPECT_EQ(store_.memory().used(), 2 * used);  // staging is accounted
    AssignResponse resp;
    EXPECT_THAT((*sink)->Commit(&resp).message(), HasSubstr("ended after 8 of 16 bytes"));
    // Broken stream: dropped without commit.
  }
  EXPECT_EQ(store_.memory().used(), used);
  EXPECT_EQ(ReadValue("v").ToVector<int32_t>(), (std::vector<int32_t>{1, 2, 3, 4}));

  auto sink = store_.BeginAssignStream(StreamHeader("v", DT_INT32, {4}, 16));
  ASSERT_TRUE(sink.ok());
  const char* bytes = reinterpret_cast<const char*>(next.data());
  ASSERT_TRUE((*sink)->Append(absl::string_view(bytes, 5)).ok());
  ASSERT_TRUE((*sink)->Append(absl::string_view(bytes + 5, 11)).ok());
  AssignResponse resp;
  ASSERT_TRUE((*sink)->Commit(&resp).ok());
  EXPECT_EQ(ReadValue("v").ToVector<int32_t>(), next);
  sink->reset();
  EXPECT_EQ(store_.memory().used(), used);
}

// 256 KiB of float32: big enough for the staging pool to keep.
constexpr int64_t kPooledElements = 64 << 10;

std::string FloatBytes(float first, int64_t n = kPooledElements) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = first + static_cast<float>(i % 5);
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// Streams `bytes` into `name` in three pieces; with `cut`, stops after the
// first and drops the stream.
absl::Status StreamAssign(VariableStore* store, const std::string& name, UpdateOp op,
                          const std::string& bytes, bool cut = false) {
  AssignStreamHeader header =
      StreamHeader(name, DT_FLOAT, {kPooledElements}, static_cast<int64_t>(bytes.size()));
  header.set_op(op);
  PSD_ASSIGN_OR_RETURN(auto sink, store->BeginAssignStream(header));
  const size_t third = bytes.size() / 3;
  PSD_RETURN_IF_ERROR(sink->Append(absl::string_view(bytes).substr(0, third)));
  if (cut) return absl::CancelledError("cut");
  PSD_RETURN_IF_ERROR(sink->Append(absl::string_view(bytes).substr(third, third)));
  PSD_RETURN_IF_ERROR(sink->Append(absl::string_view(bytes).substr(2 * third)));
  AssignResponse response;
  return sink->Commit(&response);
}

std::string StreamedValue(VariableStore* store, const std::string& name) {
  ReadStreamRequest req;
  req.set_name(name);
  auto source = store->BeginReadStream(req);
  EXPECT_TRUE(source.ok()) << source.status();
  if (!source.ok()) return "";
  TensorChunk header;
  return Drain(source->get(), &header);
}

TEST_F(VariableStoreTest, RepeatedStreamedAssignsTakeTheirStagingFromThePool) {
  CreateFrom("p", ToProto(Tensor(DT_FLOAT, TensorShape{kPooledElements})));
  const int64_t used = store_.memory().used();
  ASSERT_EQ(used, kPooledElements * 4);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(StreamAssign(&store_, "p", UPDATE_ASSIGN, FloatBytes(static_cast<float>(i))).ok());
    // The value it replaced waits in the pool; only the value is in use.
    EXPECT_EQ(store_.memory().used(), used);
    EXPECT_EQ(store_.memory().held(), 2 * used);
  }
  EXPECT_EQ(StreamedValue(&store_, "p"), FloatBytes(9));
  const StagingPool::Stats stats = store_.staging_pool().stats();
  EXPECT_EQ(stats.misses, 1);  // the first assign's staging buffer only
  EXPECT_EQ(stats.hits, 9);
  EXPECT_EQ(stats.idle_buffers, 1);
}

TEST_F(VariableStoreTest, CutStreamedAssignReturnsItsBufferAndChangesNothing) {
  CreateFrom("p", ToProto(Tensor(DT_FLOAT, TensorShape{kPooledElements})));
  ASSERT_TRUE(StreamAssign(&store_, "p", UPDATE_ASSIGN, FloatBytes(1)).ok());
  const int64_t used = store_.memory().used();
  const StagingPool::Stats before = store_.staging_pool().stats();
  ASSERT_EQ(before.idle_buffers, 1);
  EXPECT_EQ(StreamAssign(&store_, "p", UPDATE_ASSIGN, FloatBytes(50), /*cut=*/true).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(StreamedValue(&store_, "p"), FloatBytes(1));
  StagingPool::Stats after = store_.staging_pool().stats();
  EXPECT_EQ(after.idle_buffers, 1);
  EXPECT_EQ(after.hits, before.hits + 1);
  EXPECT_EQ(store_.memory().used(), used);
  // The next stream gets the same buffer, half written by the cut one: every
  // byte it holds afterwards is the new value's.
  ASSERT_TRUE(StreamAssign(&store_, "p", UPDATE_ASSIGN, FloatBytes(2)).ok());
  EXPECT_EQ(StreamedValue(&store_, "p"), FloatBytes(2));
  EXPECT_EQ(store_.staging_pool().stats().misses, before.misses);
}

TEST_F(VariableStoreTest, StreamedAssignAddReusesItsStagingBuffer) {
  CreateFrom("p", ToProto(Tensor(DT_FLOAT, TensorShape{kPooledElements})));  // zeros
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(StreamAssign(&store_, "p", UPDATE_ADD, FloatBytes(1)).ok());
  }
  std::vector<float> expected(kPooledElements);
  for (int64_t i = 0; i < kPooledElements; ++i) expected[i] = 3 * (1 + static_cast<float>(i % 5));
  EXPECT_EQ(StreamedValue(&store_, "p"),
            std::string(reinterpret_cast<const char*>(expected.data()), expected.size() * 4));
  EXPECT_EQ(store_.staging_pool().stats().misses, 1);
  EXPECT_EQ(store_.staging_pool().stats().hits, 2);
  EXPECT_EQ(store_.memory().used(), kPooledElements * 4);
}

TEST_F(VariableStoreTest, RepeatedStreamedAppliesReuseTheirHostStaging) {
  // Twins: "s" gets streamed applies, "u" the same applies unary; 64 KiB
  // each (four of them, and the staging, fit the 1 MiB limit).
  constexpr int64_t kN = 16 << 10;
  for (const char* name : {"s", "u"}) {
    CreateFrom(name, ToProto(Tensor(DT_FLOAT, TensorShape{kN})));
    std::vector<float> ones(kN, 1.0f);
    CreateFrom(std::string(name) + "/Adagrad",
               ToProto(*Tensor::FromVector<float>(TensorShape{kN}, ones)));
  }
  const int64_t used = store_.memory().used();
  for (int step = 0; step < 4; ++step) {
    const std::string gradient = FloatBytes(static_cast<float>(step) - 1.5f, kN);
    AssignStreamHeader header = StreamHeader("s", DT_FLOAT, {kN},
                                             static_cast<int64_t>(gradient.size()));
    header.set_validate_shape(false);
    header.mutable_apply()->add_slots("s/Adagrad");
    header.mutable_apply()->mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.5);
    auto sink = store_.BeginAssignStream(header);
    ASSERT_TRUE(sink.ok()) << sink.status();
    ASSERT_TRUE((*sink)->Append(gradient).ok());
    AssignResponse streamed;
    ASSERT_TRUE((*sink)->Commit(&streamed).ok());
    sink->reset();

    ApplyDenseRequest unary;
    unary.set_name("u");
    unary.add_slots("u/Adagrad");
    unary.mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.5);
    unary.mutable_gradient()->set_dtype(DT_FLOAT);
    unary.mutable_gradient()->mutable_shape()->add_dims(kN);
    unary.mutable_gradient()->set_content(gradient);
    ApplyDenseResponse response;
    ASSERT_TRUE(store_.ApplyDense(unary, &response).ok());
    EXPECT_EQ(store_.memory().used(), used);
  }
  // A reused (not zeroed) staging buffer gives the unary apply's result.
  EXPECT_EQ(StreamedValue(&store_, "s"), StreamedValue(&store_, "u"));
  EXPECT_EQ(StreamedValue(&store_, "s/Adagrad"), StreamedValue(&store_, "u/Adagrad"));
  EXPECT_EQ(store_.staging_pool().stats().misses, 1);
  EXPECT_EQ(store_.staging_pool().stats().hits, 3);
}

TEST_F(VariableStoreTest, IdleStagingBuffersGiveWayToNewVariables) {
  CreateFrom("p", ToProto(Tensor(DT_FLOAT, TensorShape{kPooledElements})));
  ASSERT_TRUE(StreamAssign(&store_, "p", UPDATE_ASSIGN, FloatBytes(1)).ok());
  ASSERT_EQ(store_.memory().held(), 512 << 10);  // the value and an idle buffer
  // 640 KiB fit the 1 MiB limit only without the idle buffer.
  CreateFrom("q", ToProto(Tensor(DT_FLOAT, TensorShape{160 << 10})));
  EXPECT_EQ(store_.staging_pool().stats().idle_bytes, 0);
  EXPECT_EQ(store_.staging_pool().stats().reclaimed_bytes, 256 << 10);
  EXPECT_EQ(store_.memory().used(), (256 + 640) << 10);
  EXPECT_LE(store_.memory().held(), store_.memory().limit());
}

TEST_F(VariableStoreTest, SuppliedValueIsWrittenOnlyWhileUninitialized) {
  CreateVariableRequest create;
  create.set_name("s");
  create.set_dtype(DT_INT32);
  create.mutable_shape()->add_dims(4);
  InitializerSpec::SuppliedValue* supplied =
      create.mutable_initializer()->mutable_supplied_value();
  supplied->set_dtype(DT_INT32);
  supplied->mutable_shape()->add_dims(4);
  supplied->set_byte_size(16);
  VariableInfo info;
  // Its value never comes with the declaration.
  create.set_initialize(true);
  EXPECT_THAT(store_.Create(create, &info).message(), HasSubstr("not at creation"));
  create.set_initialize(false);
  ASSERT_TRUE(store_.Create(create, &info).ok());

  // The shard cannot run it, and says who can.
  InitializeVariablesRequest init;
  init.add_names("s");
  absl::Status s = store_.Initialize(init);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("'s' is initialized from a value its declaring client"));

  AssignRequest req;
  req.set_name("s");
  req.set_op(UPDATE_ASSIGN);
  req.set_validate_shape(true);
  req.set_if_uninitialized(true);
  *req.mutable_value() = Vec<int32_t>({4}, {1, 2, 3, 4});
  AssignResponse resp;
  ASSERT_TRUE(store_.Assign(req, &resp).ok());
  EXPECT_FALSE(resp.skipped());
  ASSERT_TRUE(Assign("s", UPDATE_ADD, Vec<int32_t>({4}, {10, 10, 10, 10})).ok());
  // Initialized: a second initialization leaves the trained value, unary
  // or streamed.
  *req.mutable_value() = Vec<int32_t>({4}, {0, 0, 0, 0});
  ASSERT_TRUE(store_.Assign(req, &resp).ok());
  EXPECT_TRUE(resp.skipped());
  AssignStreamHeader header = StreamHeader("s", DT_INT32, {4}, 16);
  header.set_if_uninitialized(true);
  auto sink = store_.BeginAssignStream(header);
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE((*sink)->Append(std::string(16, '\0')).ok());
  AssignResponse streamed;
  ASSERT_TRUE((*sink)->Commit(&streamed).ok());
  EXPECT_TRUE(streamed.skipped());
  EXPECT_EQ(ReadValue("s").ToVector<int32_t>(), (std::vector<int32_t>{11, 12, 13, 14}));
  // Still refused by the shard's own initializer, forced or not.
  init.set_force(true);
  EXPECT_EQ(store_.Initialize(init).code(), absl::StatusCode::kFailedPrecondition);
  // An initialization is a shape-keeping assign, nothing else.
  req.set_op(UPDATE_ADD);
  EXPECT_EQ(store_.Assign(req, &resp).code(), absl::StatusCode::kInvalidArgument);
  header.set_op(UPDATE_ADD);
  EXPECT_EQ(store_.BeginAssignStream(header).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadValue("s").ToVector<int32_t>(), (std::vector<int32_t>{11, 12, 13, 14}));

  // A description that does not fit the variable is refused.
  create.set_name("t");
  supplied->set_byte_size(15);
  EXPECT_THAT(store_.Create(create, &info).message(), HasSubstr("takes 16"));
}

TEST_F(VariableStoreTest, StreamedCreateOfStringsAndBadHeaders) {
  const std::string encoded = EncodeStrings({"ab", "", "xyz"});
  AssignStreamHeader h = StreamHeader("words", DT_STRING, {3}, encoded.size());
  CreateVariableRequest* decl = h.mutable_create();
  decl->set_name("words");
  decl->set_dtype(DT_STRING);
  decl->mutable_shape()->add_dims(3);
  auto sink = store_.BeginAssignStream(h);
  ASSERT_TRUE(sink.ok()) << sink.status();
  EXPECT_EQ(store_.num_variables(), 0u);
  ASSERT_TRUE((*sink)->Append(encoded).ok());
  AssignResponse resp;
  ASSERT_TRUE((*sink)->Commit(&resp).ok());
  EXPECT_EQ(ReadValue("words").strings(), (std::vector<std::string>{"ab", "", "xyz"}));

  EXPECT_THAT(store_.BeginAssignStream(StreamHeader("words", DT_STRING, {3}, 2)).status().message(),
              HasSubstr("cannot encode 3 strings"));
  EXPECT_EQ(store_.BeginAssignStream(StreamHeader("nope", DT_FLOAT, {2}, 8)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(store_.BeginAssignStream(StreamHeader("words", DT_FLOAT, {2}, 7)).status().message(),
              HasSubstr("needs 8"));
}

TEST_F(VariableStoreTest, BatchOpsFailIndividually) {
  CreateFrom("r", Vec<float>({3}, {0, 0, 0}));
  BatchRequest batch;
  auto* good = batch.add_ops()->mutable_scatter();
  good->set_name("r");
  good->set_op(UPDATE_ADD);
  *good->mutable_indices() = Vec<int32_t>({1}, {1});
  *good->mutable_updates() = Vec<float>({1}, {2});
  auto* bad = batch.add_ops()->mutable_scatter();
  *bad = *good;
  *bad->mutable_indices() = Vec<int32_t>({1}, {3});
  batch.add_ops()->mutable_read()->set_name("r");
  BatchResponse out;
  for (const auto& op : batch.ops()) {
    BatchOpResult* result = out.add_results();
    VariableStore::SetBatchOpStatus(store_.RunBatchOp(op, 1 << 20, result), result);
  }
  ASSERT_EQ(out.results_size(), 3);
  EXPECT_EQ(out.results(0).code(), 0);
  EXPECT_EQ(out.results(1).code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(out.results(1).message(), HasSubstr("indices[0] = 3 is not in [0, 3)"));
  EXPECT_EQ(out.results(2).code(), 0);
  EXPECT_EQ(TensorFromProto(out.results(2).read().value(), "r")->ToVector<float>(),
            (std::vector<float>{0, 2, 0}));
}

// A gather's result is bounded before it is allocated: repeated indices can
// ask for far more than the variable holds (here 2^40 rows of 4 floats).
TEST_F(VariableStoreTest, GatherLargerThanAReplyIsRefusedBeforeAllocating) {
  CreateFrom("g", Vec<float>({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}));
  GatherRequest req;
  req.set_name("g");
  // 300 rows x 16 bytes = 4800 bytes, over max_unary_value_bytes (4096).
  *req.mutable_indices() = Vec<int64_t>({300}, std::vector<int64_t>(300, 1));
  GatherResponse resp;
  absl::Status s = store_.Gather(req, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("needs 4800 bytes, over the largest unary reply"));
  EXPECT_TRUE(resp.value().content().empty());
  *req.mutable_indices() = Vec<int64_t>({256}, std::vector<int64_t>(256, 1));
  EXPECT_TRUE(store_.Gather(req, &resp).ok());

  CreateFrom("words", ToProto(*Tensor::FromStrings(TensorShape({2}), {"", std::string(100, 'x')})));
  req.set_name("words");
  *req.mutable_indices() = Vec<int64_t>({50}, std::vector<int64_t>(50, 1));
  GatherResponse words;
  s = store_.Gather(req, &words);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(words.value().content().empty());
}

// In a batch, reads and gathers share what is left of the reply's budget;
// an op past it fails alone, before allocating.
TEST_F(VariableStoreTest, BatchResultsShareOneBudget) {
  CreateFrom("b", Vec<float>({256}, std::vector<float>(256, 1)));  // 1 KiB
  BatchOp read;
  read.mutable_read()->set_name("b");
  BatchOpResult result;
  // A read over the budget asks for a stream, as a unary one does.
  EXPECT_TRUE(store_.RunBatchOp(read, 512, &result).ok());
  EXPECT_TRUE(result.read().use_stream());
  BatchOp gather;
  gather.mutable_gather()->set_name("b");
  *gather.mutable_gather()->mutable_indices() = Vec<int64_t>({200}, std::vector<int64_t>(200, 0));
  result.Clear();
  absl::Status s = store_.RunBatchOp(gather, 512, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("max_batch_result_bytes"));
  result.Clear();
  EXPECT_TRUE(store_.RunBatchOp(gather, 4096, &result).ok());
}

// Strings decode to objects many times their wire size: the memory is
// charged before decoding, so a small request cannot allocate past the
// limit (1 MiB here; 100k empty strings take ~4 MiB decoded).
TEST_F(VariableStoreTest, StringDecodingIsChargedBeforeAllocating) {
  const std::string empties(100000, '\0');  // 100k varint lengths of 0
  TensorProto value;
  value.set_dtype(DT_STRING);
  value.mutable_shape()->add_dims(100000);
  value.set_content(empties);
  CreateVariableRequest create;
  create.set_name("many");
  create.set_dtype(DT_STRING);
  create.mutable_shape()->add_dims(100000);
  *create.mutable_initial_value() = value;
  create.set_initialize(true);
  VariableInfo info;
  absl::Status s = store_.Create(create, &info);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(store_.memory().used(), 0);
  EXPECT_EQ(store_.num_variables(), 0u);
}

TEST(MemoryAccountantTest, NoLimitStillRefusesMoreThanTheMachineHas) {
  MemoryAccountant unlimited(0);
  absl::Status s = unlimited.Reserve(int64_t{1} << 62, "huge");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("exceeds this machine's memory"));
  EXPECT_EQ(unlimited.used(), 0);
  EXPECT_TRUE(unlimited.Reserve(1 << 20, "small").ok());
}

}  // namespace
}  // namespace psd
