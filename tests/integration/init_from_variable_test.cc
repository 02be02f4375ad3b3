// Variables initialized from another variable's initialized value
// (TensorFlow's `w = tf.Variable(v.initialized_value() * 2.0 + 1.0)`), over a
// real coordinator and two real shards on loopback: exact values with the
// source and target on different shards (the value moves shard to shard),
// ordering (a source outside the list is initialized first; chains),
// partitioned variables part by part, the declaration checks and their
// messages, the registry keeping the spec across a coordinator restart, a
// source lost with its shard, and the shard-to-shard read with TLS, client
// certificates and node tokens.
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster_process.h"
#include "shared_cluster_test.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Saver;
using client::Session;
using client::Variable;
namespace init = client::init;
namespace partitioners = client::partitioners;

#define CONCAT_INNER_(a, b) a##b
#define CONCAT_(a, b) CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL_(CONCAT_(r_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  ASSERT_TRUE(tmp.ok()) << tmp.status();           \
  lhs = std::move(tmp).value()

template <typename T>
Tensor Make(TensorShape shape, std::vector<T> values) {
  return *Tensor::FromVector<T>(std::move(shape), values);
}

GetVariableOptions With(TensorShape shape, InitializerSpec initializer,
                        DataType dtype = DT_FLOAT) {
  GetVariableOptions o;
  o.shape = std::move(shape);
  o.initializer = std::move(initializer);
  o.dtype = dtype;
  return o;
}

// Placement is by bytes (least loaded shard, lowest id on a tie). Levels
// the two shards' placed bytes with a uint8 ballast variable, then, for
// `next_on` 1, puts one more byte on shard 0: the next part declared goes to
// shard `next_on`.
void SteerNextPartTo(Session* session, int next_on) {
  ASSERT_OK_AND_ASSIGN(ListShardsResponse shards, session->ListShards());
  int64_t placed[2] = {0, 0};
  for (const ShardStatus& s : shards.shards()) {
    ASSERT_GE(s.shard_id(), 0);
    ASSERT_LT(s.shard_id(), 2);
    placed[s.shard_id()] = s.placed_bytes();
  }
  const int64_t gap = std::llabs(placed[0] - placed[1]);
  static int ballast = 0;
  auto add = [&](int64_t bytes) -> absl::Status {
    GetVariableOptions o;
    o.shape = TensorShape({bytes});
    o.dtype = DT_UINT8;
    o.initializer = init::Zeros();
    return session->GetVariable(absl::StrCat("ballast_", ballast++), o).status();
  };
  if (gap > 0) ASSERT_TRUE(IsOk(add(gap)));  // lands on the lighter shard
  if (next_on == 1) ASSERT_TRUE(IsOk(add(1)));  // a tie goes to shard 0
}

class InitFromVariableTest : public SharedClusterTest<InitFromVariableTest> {};

const std::vector<float> kV = {1, 2, 3, 4, 5, 6};

TEST_F(InitFromVariableTest, TargetOnAnotherShardGetsSourceTimesScalePlusOffset) {
  SteerNextPartTo(session_.get(), 0);
  ASSERT_OK_AND_ASSIGN(
      Variable v, session_->GetVariable("cross/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session_->GetVariable("cross/w", With({2, 3}, v.InitializedValue(2.0, 1.0))));
  // The two live on different shards, so the value really moved between them.
  ASSERT_EQ(v.parts()[0].shard_id, 0);
  ASSERT_EQ(w.parts()[0].shard_id, 1);
  ASSERT_TRUE(IsOk(session_->InitializeVariables({v, w})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{3, 5, 7, 9, 11, 13}));
  ASSERT_OK_AND_ASSIGN(Tensor source, v.Read());
  EXPECT_EQ(source.ToVector<float>(), kV);
  // The declaration carries the spec as given.
  EXPECT_EQ(w.handle().initializer().from_variable().source(), "cross/v");
}

TEST_F(InitFromVariableTest, IntegerTargetComputesExactlyInItsDtype) {
  const int64_t big = (int64_t{1} << 52) + 1;  // not exact as a double times 3 plus 1
  ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable(
                                       "ints/v", With({2}, init::Constant(Make<int64_t>({2}, {big, -7})),
                                                      DT_INT64)));
  ASSERT_OK_AND_ASSIGN(
      Variable w, session_->GetVariable("ints/w", With({2}, v.InitializedValue(3, 1), DT_INT64)));
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<int64_t>(), (std::vector<int64_t>{3 * big + 1, -20}));
}

TEST_F(InitFromVariableTest, InitializingTargetAloneInitializesItsSourceFirst) {
  ASSERT_OK_AND_ASSIGN(
      Variable v, session_->GetVariable("alone/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session_->GetVariable("alone/w", With({2, 3}, v.InitializedValue(0.5))));
  ASSERT_OK_AND_ASSIGN(bool v_ready, v.IsInitialized());
  ASSERT_FALSE(v_ready);
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(v_ready, v.IsInitialized());
  EXPECT_TRUE(v_ready);
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{0.5, 1, 1.5, 2, 2.5, 3}));
  ASSERT_OK_AND_ASSIGN(auto missing, session_->ReportUninitializedVariables({v, w}));
  EXPECT_TRUE(missing.empty());
}

TEST_F(InitFromVariableTest, VariableInitializeAndInitializeAtDeclarationOrderTheSourceToo) {
  ASSERT_OK_AND_ASSIGN(
      Variable v, session_->GetVariable("own/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session_->GetVariable("own/w", With({2, 3}, v.InitializedValue(1, -1))));
  ASSERT_TRUE(IsOk(w.Initialize()));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{0, 1, 2, 3, 4, 5}));

  // get_variable(..., initialize=true) of a derived variable.
  ASSERT_OK_AND_ASSIGN(
      Variable a, session_->GetVariable("own/a", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  GetVariableOptions o = With({2, 3}, a.InitializedValue(-1));
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable b, session_->GetVariable("own/b", o));
  ASSERT_OK_AND_ASSIGN(value, b.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{-1, -2, -3, -4, -5, -6}));
}

TEST_F(InitFromVariableTest, InitializedSourceGivesItsCurrentValue) {
  ASSERT_OK_AND_ASSIGN(
      Variable v, session_->GetVariable("current/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_TRUE(IsOk(v.Initialize()));
  ASSERT_TRUE(IsOk(v.Assign(Make<float>({2, 3}, {10, 20, 30, 40, 50, 60}))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session_->GetVariable("current/w", With({2, 3}, v.InitializedValue(1, 1))));
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{11, 21, 31, 41, 51, 61}));
  // force re-initializes the listed target only: the source keeps its value.
  ASSERT_TRUE(IsOk(v.AssignAdd(Make<float>({2, 3}, {1, 1, 1, 1, 1, 1}))));
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w}, /*force=*/true)));
  ASSERT_OK_AND_ASSIGN(value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{12, 22, 32, 42, 52, 62}));
}

TEST_F(InitFromVariableTest, ChainInitializesEverySourceInOrder) {
  ASSERT_OK_AND_ASSIGN(
      Variable u, session_->GetVariable("chain/u", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_OK_AND_ASSIGN(Variable v,
                       session_->GetVariable("chain/v", With({2, 3}, u.InitializedValue(1, 1))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session_->GetVariable("chain/w", With({2, 3}, v.InitializedValue(2, 0))));
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{4, 6, 8, 10, 12, 14}));
  ASSERT_OK_AND_ASSIGN(value, v.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{2, 3, 4, 5, 6, 7}));
  ASSERT_OK_AND_ASSIGN(auto missing, session_->ReportUninitializedVariables({u, v, w}));
  EXPECT_TRUE(missing.empty());
}

TEST_F(InitFromVariableTest, TfVariableFromInitializedValueCopiesPartitioning) {
  ASSERT_OK_AND_ASSIGN(
      Variable v, session_->GetVariable("tfvar/v", [] {
        GetVariableOptions o = With({4, 2}, init::Constant(Make<float>({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8})));
        o.partitioner = partitioners::FixedSize(2);
        return o;
      }()));
  ASSERT_OK_AND_ASSIGN(Variable w, session_->CreateVariableFrom(v, 2.0, 0.0));
  EXPECT_TRUE(w.partitioned());
  EXPECT_EQ(w.parts().size(), 2u);
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{2, 4, 6, 8, 10, 12, 14, 16}));
}

TEST_F(InitFromVariableTest, PartitionedTargetTakesEachPartFromTheSourcePart) {
  SteerNextPartTo(session_.get(), 0);
  GetVariableOptions vo =
      With({5, 2}, init::Constant(Make<float>({5, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9})));
  vo.partitioner = partitioners::FixedSize(2);
  ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("parts/v", vo));
  // One byte more on shard 0: w's first part goes to shard 1, its second
  // to shard 0, so each part crosses to the other shard.
  SteerNextPartTo(session_.get(), 1);
  GetVariableOptions wo = With({5, 2}, v.InitializedValue(-1, 0.5));
  wo.partitioner = partitioners::FixedSize(2);
  ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("parts/w", wo));
  ASSERT_EQ(v.parts().size(), 2u);
  ASSERT_EQ(w.parts().size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    EXPECT_NE(v.parts()[k].shard_id, w.parts()[k].shard_id) << "part " << k;
  }
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(),
            (std::vector<float>{0.5, -0.5, -1.5, -2.5, -3.5, -4.5, -5.5, -6.5, -7.5, -8.5}));
}

TEST_F(InitFromVariableTest, DeclarationsThatCannotHoldTheSourceAreRefused) {
  ASSERT_OK_AND_ASSIGN(Variable v,
                       session_->GetVariable("bad/v", With({2, 3}, init::Zeros())));
  GetVariableOptions pv = With({4, 2}, init::Zeros());
  pv.partitioner = partitioners::FixedSize(2);
  ASSERT_OK_AND_ASSIGN(Variable p, session_->GetVariable("bad/p", pv));

  EXPECT_TRUE(IsError(session_->GetVariable("bad/shape", With({3, 2}, v.InitializedValue())).status(),
                      absl::StatusCode::kInvalidArgument,
                      {"bad/shape", "bad/v", "[3, 2]", "[2, 3]", "the shapes differ"}));
  EXPECT_TRUE(IsError(
      session_->GetVariable("bad/dtype", With({2, 3}, v.InitializedValue(), DT_DOUBLE)).status(),
      absl::StatusCode::kInvalidArgument, {"bad/dtype", "bad/v", "float64", "float32",
                                           "the dtypes differ"}));
  EXPECT_TRUE(IsError(session_->GetVariable("bad/unparted", With({4, 2}, p.InitializedValue())).status(),
                      absl::StatusCode::kInvalidArgument,
                      {"bad/unparted", "bad/p", "partitionings differ", "1 part(s) against 2"}));
  GetVariableOptions three = With({4, 2}, p.InitializedValue());
  three.partitioner = partitioners::FixedSize(3);
  EXPECT_TRUE(IsError(session_->GetVariable("bad/three", three).status(),
                      absl::StatusCode::kInvalidArgument, {"bad/three", "bad/p", "3 part(s) against 2"}));
  EXPECT_TRUE(IsError(
      session_->GetVariable("bad/missing", With({2, 3}, init::FromVariable("bad/nope"))).status(),
      absl::StatusCode::kInvalidArgument, {"bad/missing", "bad/nope", "not a declared variable"}));
  EXPECT_TRUE(IsError(
      session_->GetVariable("bad/self", With({2, 3}, init::FromVariable("bad/self"))).status(),
      absl::StatusCode::kInvalidArgument, {"bad/self", "from itself"}));
  ASSERT_OK_AND_ASSIGN(Variable ints,
                       session_->GetVariable("bad/ints", With({2}, init::Zeros(), DT_INT32)));
  EXPECT_TRUE(IsError(
      session_->GetVariable("bad/half", With({2}, ints.InitializedValue(0.5), DT_INT32)).status(),
      absl::StatusCode::kInvalidArgument, {"bad/half", "bad/ints", "scale 0.5", "whole"}));
  ASSERT_OK_AND_ASSIGN(Variable s,
                       session_->GetVariable("bad/s", With({2}, init::Zeros(), DT_STRING)));
  EXPECT_TRUE(IsError(
      session_->GetVariable("bad/s2", With({2}, s.InitializedValue(2), DT_STRING)).status(),
      absl::StatusCode::kInvalidArgument, {"bad/s2", "bad/s", "copies its source only"}));
  // Nothing was declared by the refusals.
  EXPECT_FALSE(session_->LookupVariable("bad/shape").ok());

  // A cycle can only come back through a deleted source declared again.
  ASSERT_OK_AND_ASSIGN(Variable a, session_->GetVariable("cyc/a", With({2}, init::Ones())));
  ASSERT_OK_AND_ASSIGN(Variable b, session_->GetVariable("cyc/b", With({2}, a.InitializedValue())));
  ASSERT_OK_AND_ASSIGN(Variable c, session_->GetVariable("cyc/c", With({2}, b.InitializedValue())));
  ASSERT_TRUE(IsOk(session_->DeleteVariable("cyc/a")));
  auto again = session_->GetVariables({{"cyc/a", With({2}, init::FromVariable("cyc/c"))}});
  EXPECT_TRUE(IsError(again.status(), absl::StatusCode::kInvalidArgument,
                      {"cyc/a", "cycle", "cyc/a <- cyc/c <- cyc/b <- cyc/a"}));
  // With its source gone, initializing b says so.
  EXPECT_TRUE(IsError(session_->InitializeVariables({b}), absl::StatusCode::kFailedPrecondition,
                      {"cyc/b", "cyc/a", "no longer exists"}));
}

TEST_F(InitFromVariableTest, ShardRefusesDerivedVariableWithoutTheCoordinator) {
  ASSERT_OK_AND_ASSIGN(
      Variable v, session_->GetVariable("direct/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session_->GetVariable("direct/w", With({2, 3}, v.InitializedValue(2))));
  ASSERT_TRUE(IsOk(v.Initialize()));
  auto stub = Shard::NewStub(
      grpc::CreateChannel(w.parts()[0].shard_address, grpc::InsecureChannelCredentials()));
  InitializeVariablesRequest request;
  request.add_names("direct/w");
  InitializeVariablesResponse response;
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->InitializeVariables(&ctx, request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_NE(s.error_message().find("through the coordinator"), std::string::npos)
        << s.error_message();
  }
  // A source location naming a shard incarnation that is gone: the target
  // shard's read is refused as stale, and nothing changes.
  InitializeSource* source = request.add_sources();
  source->set_target("direct/w");
  source->set_part("direct/v");
  source->set_shard_id(v.parts()[0].shard_id);
  source->set_address(v.parts()[0].shard_address);
  source->set_incarnation(v.parts()[0].shard_incarnation ^ 1);
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->InitializeVariables(&ctx, request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_NE(s.error_message().find("direct/v"), std::string::npos) << s.error_message();
    EXPECT_NE(s.error_message().find("restarted"), std::string::npos) << s.error_message();
  }
  ASSERT_OK_AND_ASSIGN(bool ready, w.IsInitialized());
  EXPECT_FALSE(ready);
}

// Its own cluster: shards and the coordinator are restarted.
TEST(InitFromVariableRecoveryTest, SpecSurvivesCoordinatorRestartAndLostSourceIsUnavailable) {
  auto started = TestCluster::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<TestCluster> cluster = std::move(started).value();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> session,
                       Session::Open(cluster->coordinator_address()));
  SteerNextPartTo(session.get(), 0);
  ASSERT_OK_AND_ASSIGN(
      Variable v, session->GetVariable("rec/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session->GetVariable("rec/w", With({2, 3}, v.InitializedValue(2, 1))));
  SteerNextPartTo(session.get(), 1);
  ASSERT_OK_AND_ASSIGN(Variable x,
                       session->GetVariable("rec/x", With({2, 3}, v.InitializedValue(-1))));
  ASSERT_EQ(v.parts()[0].shard_id, 0);
  ASSERT_EQ(w.parts()[0].shard_id, 1);
  ASSERT_EQ(x.parts()[0].shard_id, 1);

  // The registry log keeps the spec: after a coordinator crash the handle
  // still says where w comes from, and initialization still works.
  ASSERT_TRUE(IsOk(cluster->RestartCoordinator()));
  ASSERT_TRUE(IsOk(cluster->WaitForShards(absl::Seconds(30))));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> after,
                       Session::Open(cluster->coordinator_address()));
  ASSERT_OK_AND_ASSIGN(Variable w2, after->LookupVariable("rec/w"));
  EXPECT_EQ(w2.handle().initializer().from_variable().source(), "rec/v");
  EXPECT_EQ(w2.handle().initializer().from_variable().scale(), 2.0);
  ASSERT_TRUE(IsOk(after->InitializeVariables({w2})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w2.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{3, 5, 7, 9, 11, 13}));

  // Shard 0 restarts empty: v's part is lost, and x, which needs it, fails
  // naming it and stays uninitialized.
  ASSERT_OK_AND_ASSIGN(uint64_t old_incarnation, cluster->ShardIncarnation(0));
  ASSERT_TRUE(IsOk(cluster->RestartShard(0)));
  ASSERT_TRUE(IsOk(cluster->WaitForShards(absl::Seconds(30), {old_incarnation, 0})));
  ASSERT_OK_AND_ASSIGN(Variable x2, after->LookupVariable("rec/x"));
  EXPECT_TRUE(IsError(after->InitializeVariables({x2}), absl::StatusCode::kUnavailable,
                      {"rec/x", "rec/v", "lost", "shard 0"}));
  ASSERT_OK_AND_ASSIGN(bool ready, x2.IsInitialized());
  EXPECT_FALSE(ready);
}

// get_variable(..., initialize=true) of a derived variable whose source is
// lost fails; the variable is declared by then, so the next get_variable
// only attaches to it, and must still run the initialization once the
// source is back.
TEST(InitFromVariableRecoveryTest, FailedInitializeAtDeclarationRunsAgainOnTheNextOne) {
  auto started = TestCluster::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<TestCluster> cluster = std::move(started).value();
  client::SessionOptions options;
  options.coordinator_retry_budget = absl::Seconds(1);  // the lost source fails fast
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> session,
                       Session::Open(cluster->coordinator_address(), options));
  SteerNextPartTo(session.get(), 0);
  ASSERT_OK_AND_ASSIGN(
      Variable v, session->GetVariable("again/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_EQ(v.parts()[0].shard_id, 0);
  ASSERT_OK_AND_ASSIGN(uint64_t old_incarnation, cluster->ShardIncarnation(0));
  ASSERT_TRUE(IsOk(cluster->RestartShard(0)));
  ASSERT_TRUE(IsOk(cluster->WaitForShards(absl::Seconds(30), {old_incarnation, 0})));

  GetVariableOptions o = With({2, 3}, init::FromVariable("again/v", 2, 1));
  o.initialize = true;
  EXPECT_TRUE(IsError(session->GetVariable("again/w", o).status(), absl::StatusCode::kUnavailable,
                      {"again/w", "again/v", "lost"}));
  // The source declared again (a restore would do the same); the next
  // get_variable attaches to w and initializes it.
  ASSERT_TRUE(IsOk(session->DeleteVariable("again/v")));
  ASSERT_OK_AND_ASSIGN(
      v, session->GetVariable("again/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  o.reuse = REUSE_TRUE;
  ASSERT_OK_AND_ASSIGN(Variable w, session->GetVariable("again/w", o));
  ASSERT_OK_AND_ASSIGN(bool ready, w.IsInitialized());
  ASSERT_TRUE(ready);
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{3, 5, 7, 9, 11, 13}));
  // Declared again once initialized, it keeps its value (no force).
  ASSERT_TRUE(IsOk(v.Assign(Make<float>({2, 3}, {0, 0, 0, 0, 0, 0}))));
  ASSERT_OK_AND_ASSIGN(w, session->GetVariable("again/w", o));
  ASSERT_OK_AND_ASSIGN(value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{3, 5, 7, 9, 11, 13}));
}

// A source deleted and declared again after its target has the later
// creation order; --restore-from declares sources first all the same. One
// declared again with another shape no longer fits its target: the target
// falls back to the default initializer (its value comes from the
// checkpoint) instead of failing the whole restore.
TEST(InitFromVariableRecoveryTest, RestoreFromDeclaresSourcesFirstAndFallsBackWhenOneNoLongerFits) {
  char dir_template[] = "/tmp/psd_init_from_restore.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  TestClusterOptions options;
  options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir};
  const std::vector<float> same = {6, 5, 4, 3, 2, 1};
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<TestCluster> cluster, TestCluster::Start(options));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> session,
                         Session::Open(cluster->coordinator_address()));
    auto declare = [&](const std::string& name, GetVariableOptions o) -> absl::Status {
      o.initialize = true;
      return session->GetVariable(name, o).status();
    };
    ASSERT_TRUE(IsOk(declare("re/sa", With({2, 3}, init::Constant(Make<float>({2, 3}, kV))))));
    ASSERT_TRUE(IsOk(declare("re/sb", With({2, 3}, init::Constant(Make<float>({2, 3}, kV))))));
    ASSERT_TRUE(IsOk(declare("re/ta", With({2, 3}, init::FromVariable("re/sa", 2, 1)))));
    ASSERT_TRUE(IsOk(declare("re/tb", With({2, 3}, init::FromVariable("re/sb", 2, 1)))));
    ASSERT_TRUE(IsOk(session->DeleteVariable("re/sa")));
    ASSERT_TRUE(IsOk(session->DeleteVariable("re/sb")));
    ASSERT_TRUE(IsOk(declare("re/sa", With({2, 3}, init::Constant(Make<float>({2, 3}, same))))));
    ASSERT_TRUE(IsOk(declare("re/sb", With({3, 2}, init::Constant(Make<float>({3, 2}, same))))));
    ASSERT_OK_AND_ASSIGN(auto saver, Saver::Create(cluster->coordinator_address()));
    ASSERT_TRUE(saver->Save(dir + "/model.ckpt", 1).ok());
  }

  const std::string config = dir + "/cluster.yaml";
  std::ofstream(config) << "shards:\n  - {id: 0}\n  - {id: 1}\n";
  options.coordinator_args.insert(options.coordinator_args.end(),
                                  {"--config", config, "--restore-from", dir});
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TestCluster> cluster, TestCluster::Start(options));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> session,
                       Session::Open(cluster->coordinator_address()));
  // The restore runs once the shards are up; wait for its last value.
  const std::vector<float> derived = {3, 5, 7, 9, 11, 13};
  std::string last;
  bool restored = false;
  for (int attempt = 0; attempt < 600 && !restored; ++attempt) {
    auto tb = session->LookupVariable("re/tb");
    absl::StatusOr<Tensor> value = tb.ok() ? tb->Read() : absl::StatusOr<Tensor>(tb.status());
    restored = value.ok() && value->ToVector<float>() == derived;
    if (!restored) {
      last = value.ok() ? "re/tb has another value" : value.status().ToString();
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  ASSERT_TRUE(restored) << "the restore never completed: " << last;
  ASSERT_OK_AND_ASSIGN(Variable ta, session->LookupVariable("re/ta"));
  ASSERT_OK_AND_ASSIGN(Variable tb, session->LookupVariable("re/tb"));
  ASSERT_OK_AND_ASSIGN(Variable sb, session->LookupVariable("re/sb"));
  ASSERT_OK_AND_ASSIGN(Tensor value, ta.Read());
  EXPECT_EQ(value.ToVector<float>(), derived);
  ASSERT_OK_AND_ASSIGN(value, sb.Read());
  EXPECT_EQ(value.ToVector<float>(), same);
  // ta still comes from sa; tb, whose source no longer fits, does not.
  EXPECT_EQ(ta.handle().initializer().from_variable().source(), "re/sa");
  EXPECT_FALSE(tb.handle().initializer().has_from_variable());
  EXPECT_TRUE(tb.handle().initializer().has_default_initializer());
  std::system(absl::StrCat("rm -rf ", dir).c_str());
}

// TLS with client certificates required, and bearer tokens: the target
// shard reads the source shard with its own certificate and node token (a
// trainer token could not be sent by a shard, and no trainer is involved).
TEST(InitFromVariableSecurityTest, ShardToShardReadUsesNodeCredentials) {
  char dir_template[] = "/tmp/psd_init_from_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string command = absl::StrCat(PSD_MAKE_TEST_CERTS, " ", dir, " >/dev/null");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  auto flags = [&](std::vector<std::string> args) {
    for (const std::string& flag :
         {"--tls-ca=" + dir + "/ca.pem", "--tls-cert=" + dir + "/server.pem",
          "--tls-key=" + dir + "/server.key", "--token-file=" + dir + "/tokens",
          std::string("--tls-client-auth")}) {
      args.push_back(flag);
    }
    return args;
  };
  const std::string coordinator_port_file = dir + "/coordinator.port";
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<ChildProcess> coordinator,
      ChildProcess::Start(flags({PSD_BINARY, "--log-level", "warn", "coordinator", "--listen",
                                 "127.0.0.1:0", "--heartbeat-interval", "0.2", "--port-file",
                                 coordinator_port_file}),
                          coordinator_port_file));
  const std::string coordinator_address = absl::StrCat("127.0.0.1:", coordinator->port());
  std::vector<std::unique_ptr<ChildProcess>> shards;
  for (int k = 0; k < 2; ++k) {
    const std::string port_file = absl::StrCat(dir, "/shard-", k, ".port");
    ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<ChildProcess> shard,
        ChildProcess::Start(flags({PSD_BINARY, "--log-level", "warn", "shard", "--id",
                                   std::to_string(k), "--listen", "127.0.0.1:0", "--port-file",
                                   port_file, "--coordinator", coordinator_address}),
                            port_file));
    shards.push_back(std::move(shard));
  }

  client::SessionOptions options;
  options.coordinator_retry_budget = absl::Seconds(20);
  options.shard.security.tls_ca = dir + "/ca.pem";
  options.shard.security.tls_cert = dir + "/client.pem";
  options.shard.security.tls_key = dir + "/client.key";
  // admin: a trainer that may also list the shards (to steer placement).
  options.shard.security.token_file = dir + "/admin.token";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> session,
                       Session::Open(coordinator_address, options));
  // Both shards registered before placing anything.
  for (int attempt = 0;; ++attempt) {
    ASSERT_OK_AND_ASSIGN(ListShardsResponse listed, session->ListShards());
    int live = 0;
    for (const ShardStatus& s : listed.shards()) live += s.live() ? 1 : 0;
    if (live == 2) break;
    ASSERT_LT(attempt, 300) << "shards did not register";
    absl::SleepFor(absl::Milliseconds(100));
  }
  SteerNextPartTo(session.get(), 0);
  ASSERT_OK_AND_ASSIGN(
      Variable v, session->GetVariable("tls/v", With({2, 3}, init::Constant(Make<float>({2, 3}, kV)))));
  ASSERT_OK_AND_ASSIGN(Variable w,
                       session->GetVariable("tls/w", With({2, 3}, v.InitializedValue(2, 1))));
  ASSERT_NE(v.parts()[0].shard_id, w.parts()[0].shard_id);
  ASSERT_TRUE(IsOk(session->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(Tensor value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{3, 5, 7, 9, 11, 13}));

  // Where the sources live is for the coordinator (node role) to say: a
  // trainer or admin giving sources straight to a shard is refused before
  // the shard dials anything (here an address nobody serves).
  InitializeVariablesRequest request;
  request.add_names("tls/w");
  request.set_force(true);
  InitializeSource* source = request.add_sources();
  source->set_target("tls/w");
  source->set_part("tls/v");
  source->set_shard_id(v.parts()[0].shard_id);
  source->set_address("127.0.0.1:1");
  source->set_incarnation(v.parts()[0].shard_incarnation);
  auto call_as = [&](const std::string& role, const InitializeVariablesRequest& req) {
    ChannelSecurity security;
    security.tls_ca = dir + "/ca.pem";
    security.tls_cert = dir + "/client.pem";
    security.tls_key = dir + "/client.key";
    security.token_file = dir + "/" + role + ".token";
    auto credentials = internal::MakeChannelCredentials(security);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    auto stub = Shard::NewStub(grpc::CreateChannel(w.parts()[0].shard_address, *credentials));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    InitializeVariablesResponse response;
    return stub->InitializeVariables(&ctx, req, &response);
  };
  for (const std::string role : {"trainer", "admin"}) {
    grpc::Status s = call_as(role, request);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << role << ": " << s.error_message();
    EXPECT_NE(s.error_message().find("coordinator only (node role)"), std::string::npos)
        << s.error_message();
    EXPECT_NE(s.error_message().find(role), std::string::npos) << s.error_message();
  }
  // Without sources a trainer still initializes its variables directly.
  InitializeVariablesRequest plain;
  plain.add_names("tls/w");
  grpc::Status plain_status = call_as("trainer", plain);
  EXPECT_TRUE(plain_status.ok()) << plain_status.error_message();
  // The node role passes the check (w is initialized and force is off, so
  // nothing is read).
  request.set_force(false);
  grpc::Status node_status = call_as("node", request);
  EXPECT_TRUE(node_status.ok()) << node_status.error_message();
  ASSERT_OK_AND_ASSIGN(value, w.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{3, 5, 7, 9, 11, 13}));

  shards.clear();
  coordinator.reset();
  std::system(absl::StrCat("rm -rf ", dir).c_str());
}

}  // namespace
}  // namespace integration
}  // namespace psd
