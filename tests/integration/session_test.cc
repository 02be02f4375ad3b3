// The C++ session API against a real coordinator and two real shards on
// loopback: TensorFlow's naming and reuse rules (spec §4, our own values),
// per-session counters, attaching across sessions, partitioned variables and
// their split-index ops, initialization across sessions, make_template,
// concurrent declarations from several processes, and recovery from a
// coordinator or shard crash.
//
// One cluster serves the suite (each test uses its own names); the crash
// tests start their own.
#include <sys/wait.h>

#include <atomic>
#include <map>
#include <memory>
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

using client::CapturedScope;
using client::GetVariableOptions;
using client::ScopeOptions;
using client::Session;
namespace regularizers = client::regularizers;
using client::TemplateOptions;
using client::Variable;
using client::VariableScope;
namespace init = client::init;
namespace partitioners = client::partitioners;

::testing::AssertionResult IsOk(const absl::Status& s) {
  if (s.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << s;
}
template <typename T>
::testing::AssertionResult IsOk(const absl::StatusOr<T>& r) {
  return IsOk(r.status());
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
template <typename T>
::testing::AssertionResult IsError(const absl::StatusOr<T>& r, absl::StatusCode code,
                                   const std::vector<std::string>& parts = {}) {
  return IsError(r.status(), code, parts);
}

#define CONCAT_INNER_(a, b) a##b
#define CONCAT_(a, b) CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL_(CONCAT_(r_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  ASSERT_TRUE(tmp.ok()) << tmp.status();           \
  lhs = std::move(tmp).value()

GetVariableOptions Shape(TensorShape shape) {
  GetVariableOptions o;
  o.shape = std::move(shape);
  return o;
}

template <typename T>
Tensor Make(TensorShape shape, std::vector<T> values) {
  return *Tensor::FromVector<T>(std::move(shape), values);
}

Tensor Int64s(std::vector<int64_t> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Make<int64_t>(TensorShape{n}, std::move(v));
}

ScopeOptions Reusing(Reuse r = REUSE_TRUE) {
  ScopeOptions o;
  o.reuse = r;
  return o;
}

class SessionTest : public SharedClusterTest<SessionTest> {};

TEST_F(SessionTest, ScopesPrefixNamesAndReuseChecksFollowTensorFlow) {
  Session* s = session_.get();
  Variable v;
  {
    ASSERT_OK_AND_ASSIGN(VariableScope root, VariableScope::Enter(s, "naming"));
    ASSERT_OK_AND_ASSIGN(VariableScope tower, VariableScope::Enter(s, "towerA"));
    ASSERT_OK_AND_ASSIGN(v, s->GetVariable("v", Shape({3})));
    EXPECT_EQ(v.tensor_name(), "naming/towerA/v:0");
    {
      ASSERT_OK_AND_ASSIGN(VariableScope bar, VariableScope::Enter(s, "bar"));
      ASSERT_OK_AND_ASSIGN(Variable nested, s->GetVariable("v", Shape({1})));
      EXPECT_EQ(nested.name(), "naming/towerA/bar/v");
    }
  }
  ASSERT_OK_AND_ASSIGN(VariableScope root, VariableScope::Enter(s, "naming"));
  {
    ASSERT_OK_AND_ASSIGN(VariableScope again, VariableScope::Enter(s, "towerA", Reusing()));
    ASSERT_OK_AND_ASSIGN(Variable same, s->GetVariable("v", Shape({3})));
    EXPECT_EQ(same.name(), v.name());
    EXPECT_EQ(same.parts()[0].shard_address, v.parts()[0].shard_address);
    // Another shape or dtype on reuse names both.
    EXPECT_TRUE(IsError(s->GetVariable("v", Shape({4})), absl::StatusCode::kInvalidArgument,
                        {"shape", "[4]", "[3]"}));
    GetVariableOptions as_int = Shape({3});
    as_int.dtype = DT_INT32;
    EXPECT_TRUE(IsError(s->GetVariable("v", as_int), absl::StatusCode::kInvalidArgument,
                        {"dtype", "int32", "float32"}));
    // Reuse of a missing name.
    EXPECT_TRUE(IsError(s->GetVariable("u", Shape({1})), absl::StatusCode::kNotFound,
                        {"naming/towerA/u does not exist"}));
    // Reuse is inherited by sub-scopes ...
    {
      ASSERT_OK_AND_ASSIGN(VariableScope baz, VariableScope::Enter(s, "baz"));
      EXPECT_EQ(s->current_scope().reuse, REUSE_TRUE);
      EXPECT_TRUE(IsError(s->GetVariable("v", Shape({3})), absl::StatusCode::kNotFound));
    }
    // ... and never undone.
    {
      ASSERT_OK_AND_ASSIGN(VariableScope off,
                           VariableScope::Enter(s, "inner", Reusing(REUSE_FALSE)));
      EXPECT_EQ(s->current_scope().reuse, REUSE_TRUE);
    }
  }
  {
    // Re-entering without reuse and creating again is refused.
    ASSERT_OK_AND_ASSIGN(VariableScope again, VariableScope::Enter(s, "towerA"));
    EXPECT_TRUE(IsError(s->GetVariable("v", Shape({3})), absl::StatusCode::kAlreadyExists,
                        {"Variable naming/towerA/v already exists, disallowed",
                         "Originally defined at", "session_test.cc"}));
    // An explicit reuse on the call.
    GetVariableOptions reuse = Shape({3});
    reuse.reuse = REUSE_TRUE;
    EXPECT_TRUE(IsOk(s->GetVariable("v", reuse)));
    // AUTO_REUSE creates once, then returns it.
    GetVariableOptions automatic = Shape({2});
    automatic.reuse = REUSE_AUTO;
    ASSERT_OK_AND_ASSIGN(Variable a1, s->GetVariable("auto", automatic));
    ASSERT_OK_AND_ASSIGN(Variable a2, s->GetVariable("auto", automatic));
    EXPECT_EQ(a1.name(), a2.name());
  }
  // Invalid scope names are refused as TensorFlow does.
  root.Exit().IgnoreError();
  EXPECT_TRUE(IsError(VariableScope::Enter(s, "_").status(), absl::StatusCode::kInvalidArgument,
                      {"'_' is not a valid scope name"}));
  EXPECT_EQ(s->current_scope().name, "");
}

TEST_F(SessionTest, CapturedScopeReenteredAnywhereNamesUnderItsOwnPath) {
  Session* s = session_.get();
  CapturedScope outer;
  {
    ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Enter(s, "outer"));
    outer = scope.captured();
  }
  {
    ASSERT_OK_AND_ASSIGN(VariableScope other, VariableScope::Enter(s, "elsewhere"));
    ASSERT_OK_AND_ASSIGN(VariableScope again, VariableScope::Reenter(s, outer));
    ASSERT_OK_AND_ASSIGN(Variable w, s->GetVariable("w", Shape({2})));
    EXPECT_EQ(w.name(), "outer/w");
    {
      ASSERT_OK_AND_ASSIGN(VariableScope nested, VariableScope::Reenter(s, outer));
      ASSERT_OK_AND_ASSIGN(Variable x, s->GetVariable("x", Shape({2})));
      EXPECT_EQ(x.name(), "outer/x");
    }
  }
  // reuse_variables() inside a scope turns reuse on for the rest of it.
  {
    ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Reenter(s, outer));
    scope.reuse_variables();
    ASSERT_OK_AND_ASSIGN(Variable w, s->GetVariable("w", Shape({2})));
    EXPECT_EQ(w.name(), "outer/w");
  }
  // Scope defaults: initializer and dtype apply inside.
  {
    ScopeOptions defaults;
    defaults.initializer = init::Ones();
    defaults.dtype = DT_DOUBLE;
    ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Enter(s, "defaults", defaults));
    GetVariableOptions o = Shape({2});
    o.initialize = true;
    ASSERT_OK_AND_ASSIGN(Variable d, s->GetVariable("d", o));
    EXPECT_EQ(d.dtype(), DT_DOUBLE);
    ASSERT_OK_AND_ASSIGN(Tensor value, d.Read());
    EXPECT_EQ(value, Make<double>(TensorShape{2}, {1.0, 1.0}));
  }
}

TEST_F(SessionTest, UnseededRandomVariablesStartDifferentAndReinitializeTheSame) {
  // TensorFlow gives each unseeded initializer its own op seed: two layers
  // declared alike must not start with equal weights.
  GetVariableOptions o = Shape({64, 8});
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable a, session_->GetVariable("unseeded/a", o));
  ASSERT_OK_AND_ASSIGN(Variable b, session_->GetVariable("unseeded/b", o));
  o.initializer = init::RandomNormal();
  ASSERT_OK_AND_ASSIGN(Variable c, session_->GetVariable("unseeded/c", o));
  ASSERT_OK_AND_ASSIGN(Variable d, session_->GetVariable("unseeded/d", o));
  ASSERT_OK_AND_ASSIGN(Tensor va, a.Read());
  ASSERT_OK_AND_ASSIGN(Tensor vb, b.Read());
  ASSERT_OK_AND_ASSIGN(Tensor vc, c.Read());
  ASSERT_OK_AND_ASSIGN(Tensor vd, d.Read());
  EXPECT_NE(va.bytes(), vb.bytes());
  EXPECT_NE(vc.bytes(), vd.bytes());
  // The seed drawn is recorded: re-running the initializer reproduces the
  // values, as re-running a TensorFlow initializer op does.
  EXPECT_NE(a.handle().initializer().seed(), 0);
  ASSERT_TRUE(IsOk(a.AssignAdd(
      *Tensor::FromVector<float>(TensorShape{64, 8}, std::vector<float>(512, 1.0f)))));
  ASSERT_TRUE(IsOk(a.Initialize(/*force=*/true)));
  ASSERT_OK_AND_ASSIGN(Tensor again, a.Read());
  EXPECT_EQ(again.bytes(), va.bytes());
  // An explicit seed is kept as given.
  o.initializer = init::RandomNormal(0.0, 1.0, /*seed=*/7);
  ASSERT_OK_AND_ASSIGN(Variable e, session_->GetVariable("unseeded/e", o));
  EXPECT_EQ(e.handle().initializer().seed(), 7);
}

TEST_F(SessionTest, GraphSeedMakesDeclarationsReproducible) {
  // tf.set_random_seed: two sessions (two runs of one program) with the
  // same graph seed that declare alike get the same values; the order of
  // declarations gives unseeded initializers their op seeds.
  auto run = [&](Session* s, const std::string& prefix, int64_t graph_seed) {
    s->SetRandomSeed(graph_seed);
    EXPECT_EQ(s->random_seed(), graph_seed);
    GetVariableOptions o = Shape({32});
    o.initialize = true;
    std::vector<std::string> values;
    for (const char* name : {"a", "b"}) {
      auto v = s->GetVariable(prefix + "/" + name, o);
      EXPECT_TRUE(v.ok()) << v.status();
      auto value = v->Read();
      EXPECT_TRUE(value.ok()) << value.status();
      values.push_back(std::string(value->bytes()));
    }
    o.initializer = init::RandomUniform(0.0, 1.0, /*seed=*/5);
    auto c = s->GetVariable(prefix + "/c", o);
    EXPECT_TRUE(c.ok()) << c.status();
    values.push_back(std::string(c->Read()->bytes()));
    return values;
  };
  auto first = NewSession();
  auto second = NewSession();
  auto third = NewSession();
  const std::vector<std::string> one = run(first.get(), "graph_seed_1", 42);
  const std::vector<std::string> two = run(second.get(), "graph_seed_2", 42);
  const std::vector<std::string> other = run(third.get(), "graph_seed_3", 43);
  EXPECT_EQ(one, two);
  EXPECT_NE(one[0], one[1]);
  EXPECT_NE(one[0], other[0]);
  EXPECT_NE(one[2], other[2]);  // the op seed combines with the graph seed
}

TEST_F(SessionTest, RegularizationLossIsTensorFlowsOnCurrentValues) {
  // get_variable(regularizer=) and a scope's default: the loss, evaluated
  // on the values now, is tf.contrib.layers' l1 and l2 (0.1 * sum(w^2) / 2
  // + 0.5 * sum(|b|)); a reused variable's loss is not added twice.
  auto s = NewSession();
  GetVariableOptions w_options = Shape({2, 2});
  w_options.initializer = init::Zeros();
  w_options.initialize = true;
  w_options.regularizer = regularizers::L2(0.1);
  ASSERT_OK_AND_ASSIGN(Variable w, s->GetVariable("reg_loss/w", w_options));
  ScopeOptions scoped;
  scoped.regularizer = regularizers::L1(0.5);
  {
    ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Enter(s.get(), "reg_loss_scope", scoped));
    GetVariableOptions b_options = Shape({2});
    b_options.initializer = init::Zeros();
    b_options.initialize = true;
    ASSERT_OK_AND_ASSIGN(Variable b, s->GetVariable("b", b_options));
    ASSERT_TRUE(IsOk(b.Assign(*Tensor::FromVector<float>(TensorShape{2}, {-1.5f, 2.0f}))));
    scope.reuse_variables();
    ASSERT_OK_AND_ASSIGN(Variable again, s->GetVariable("b", Shape({2})));
  }
  ASSERT_TRUE(IsOk(w.Assign(*Tensor::FromVector<float>(TensorShape{2, 2}, {1, -2, 3, 0}))));
  ASSERT_OK_AND_ASSIGN(double loss, s->RegularizationLoss());
  EXPECT_DOUBLE_EQ(loss, 0.1 * 14 / 2 + 0.5 * 3.5);
  EXPECT_EQ(s->RegularizedVariables().size(), 2u);
  // A scale of 0 gives no loss, as TensorFlow's.
  EXPECT_FALSE(regularizers::L2(0.0)(*Tensor::FromVector<float>(TensorShape{1}, {3.0f})).has_value());
}

TEST_F(SessionTest, DefaultNamesAreCountedPerSession) {
  auto other = NewSession();
  ASSERT_NE(other, nullptr);
  ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Enter(session_.get(), "counters"));
  ASSERT_OK_AND_ASSIGN(Variable a, session_->CreateVariable(Tensor::Scalar<float>(0.0f)));
  ASSERT_OK_AND_ASSIGN(Variable b, session_->CreateVariable(Tensor::Scalar<float>(1.5f)));
  EXPECT_EQ(a.tensor_name(), "counters/Variable:0");
  EXPECT_EQ(b.tensor_name(), "counters/Variable_1:0");
  client::VariableOptions named;
  named.name = "rnd";
  ASSERT_OK_AND_ASSIGN(Variable rnd, session_->CreateVariable(Tensor::Scalar<float>(2.0f), named));
  EXPECT_EQ(rnd.name(), "counters/rnd");

  // Default-named scopes: layer, layer_1, ...
  for (const char* want : {"counters/layer/w", "counters/layer_1/w", "counters/layer_2/w"}) {
    ASSERT_OK_AND_ASSIGN(VariableScope layer, VariableScope::EnterDefault(session_.get(), "layer"));
    ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("w", Shape({1})));
    EXPECT_EQ(w.name(), want);
  }
  EXPECT_TRUE(IsError(VariableScope::EnterDefault(session_.get(), "layer", Reusing()).status(),
                      absl::StatusCode::kInvalidArgument));

  // Another session counts from zero (and so shares the same variables).
  ASSERT_OK_AND_ASSIGN(VariableScope scope2, VariableScope::Enter(other.get(), "counters"));
  ASSERT_OK_AND_ASSIGN(Variable a2, other->CreateVariable(Tensor::Scalar<float>(0.0f)));
  EXPECT_EQ(a2.name(), "counters/Variable");
  ASSERT_OK_AND_ASSIGN(VariableScope layer2, VariableScope::EnterDefault(other.get(), "layer"));
  EXPECT_EQ(layer2.name(), "counters/layer");
}

TEST_F(SessionTest, SessionsAttachToSharedVariablesAndConflictsNameBoth) {
  auto other = NewSession();
  ASSERT_NE(other, nullptr);
  GetVariableOptions o = Shape({2, 3});
  o.initializer = init::Zeros();
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable mine, session_->GetVariable("shared/w", o));
  ASSERT_OK_AND_ASSIGN(Variable theirs, other->GetVariable("shared/w", o));
  ASSERT_TRUE(IsOk(mine.AssignAdd(Make<float>(TensorShape{2, 3}, {1, 2, 3, 4, 5, 6}))));
  ASSERT_OK_AND_ASSIGN(Tensor seen, theirs.Read());
  EXPECT_EQ(seen, Make<float>(TensorShape{2, 3}, {1, 2, 3, 4, 5, 6}));

  auto third = NewSession();
  ASSERT_NE(third, nullptr);
  GetVariableOptions wrong = Shape({3, 3});
  EXPECT_TRUE(IsError(third->GetVariable("shared/w", wrong), absl::StatusCode::kInvalidArgument,
                      {"Conflicting declarations of variable shared/w", "[3, 3]", "[2, 3]",
                       absl::StrCat("session ", session_->id())}));
}

// A part its shard cannot create fails the get_variable with the shard's
// reason, and nothing is registered: the name stays free (a checkpoint
// would otherwise miss a part that never existed).
TEST_F(SessionTest, GetVariableWhosePartCannotBeCreatedRegistersNothing) {
  client::SessionOptions options;
  options.coordinator_retry_budget = absl::Seconds(1);
  auto s = Session::Open(cluster_->coordinator_address(), options);
  ASSERT_TRUE(s.ok()) << s.status();
  GetVariableOptions o = Shape({int64_t{1} << 20, int64_t{1} << 20});  // 4 TiB
  o.initializer = init::Zeros();
  o.initialize = true;
  EXPECT_TRUE(IsError((*s)->GetVariable("too_big", o), absl::StatusCode::kResourceExhausted,
                      {"variable too_big was not declared: creating its part too_big", "memory",
                       "nothing was registered"}));
  EXPECT_TRUE(IsError((*s)->LookupVariable("too_big"), absl::StatusCode::kNotFound, {"too_big"}));
}

// tf.variable_op_scope: a given name is used as is; otherwise the default
// name is made unique per session.
TEST_F(SessionTest, VariableOpScopeUsesTheNameOrAUniqueDefault) {
  {
    ASSERT_OK_AND_ASSIGN(VariableScope op, VariableScope::EnterOp(session_.get(), "", "MyOp"));
    EXPECT_EQ(op.name(), "MyOp");
  }
  {
    ASSERT_OK_AND_ASSIGN(VariableScope op, VariableScope::EnterOp(session_.get(), "", "MyOp"));
    EXPECT_EQ(op.name(), "MyOp_1");
    ASSERT_OK_AND_ASSIGN(Variable c, session_->GetVariable("c", Shape({1})));
    EXPECT_EQ(c.name(), "MyOp_1/c");
  }
  {
    ASSERT_OK_AND_ASSIGN(VariableScope op,
                         VariableScope::EnterOp(session_.get(), "given", "MyOp"));
    EXPECT_EQ(op.name(), "given");
  }
  EXPECT_TRUE(IsError(VariableScope::EnterOp(session_.get(), "", ""),
                      absl::StatusCode::kInvalidArgument, {"cannot both be empty"}));
}

// caching_device: reads come from a copy kept in the client until it is
// refreshed or written through.
TEST_F(SessionTest, CachingDeviceServesReadsFromTheClientUntilRefreshed) {
  ScopeOptions cache;
  cache.caching_device = "/job:worker/cpu:0";
  GetVariableOptions o = Shape({3, 2});
  o.initializer = init::Ones();
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(VariableScope scope,
                       VariableScope::Enter(session_.get(), "cached", cache));
  ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("v", o));
  ASSERT_TRUE(v.cached());
  ASSERT_TRUE(IsOk(scope.Exit()));
  const Tensor ones = Make<float>(TensorShape{3, 2}, {1, 1, 1, 1, 1, 1});
  ASSERT_OK_AND_ASSIGN(Tensor first, v.Read());
  EXPECT_EQ(first, ones);

  // Another trainer changes it; the cached copy does not see that yet.
  auto other = NewSession();
  ASSERT_NE(other, nullptr);
  ASSERT_OK_AND_ASSIGN(Variable theirs, other->GetVariable("cached/v", Shape({3, 2})));
  EXPECT_FALSE(theirs.cached());
  const Tensor changed = Make<float>(TensorShape{3, 2}, {1, 2, 3, 4, 5, 6});
  ASSERT_TRUE(IsOk(theirs.Assign(changed)));
  ASSERT_OK_AND_ASSIGN(Tensor stale, v.Read());
  EXPECT_EQ(stale, ones);
  ASSERT_OK_AND_ASSIGN(Tensor rows, v.Gather(Make<int64_t>(TensorShape{2}, {2, 0})));
  EXPECT_EQ(rows, Make<float>(TensorShape{2, 2}, {1, 1, 1, 1}));
  // Indices are still checked in full-variable terms.
  EXPECT_TRUE(IsError(v.Gather(Make<int64_t>(TensorShape{1}, {3})),
                      absl::StatusCode::kInvalidArgument, {"indices[0] = 3 is not in [0, 3)"}));

  ASSERT_TRUE(IsOk(v.RefreshCache()));
  ASSERT_OK_AND_ASSIGN(Tensor fresh, v.Read());
  EXPECT_EQ(fresh, changed);
  ASSERT_OK_AND_ASSIGN(rows, v.Gather(Make<int64_t>(TensorShape{2}, {2, 0})));
  EXPECT_EQ(rows, Make<float>(TensorShape{2, 2}, {5, 6, 1, 2}));

  // A write through the cached variable is seen by its next read.
  ASSERT_TRUE(IsOk(v.AssignAdd(ones)));
  ASSERT_OK_AND_ASSIGN(Tensor after, v.Read());
  EXPECT_EQ(after, Make<float>(TensorShape{3, 2}, {2, 3, 4, 5, 6, 7}));

  // An explicit empty caching device turns the scope's off.
  ASSERT_OK_AND_ASSIGN(VariableScope again,
                       VariableScope::Enter(session_.get(), "cached2", cache));
  GetVariableOptions uncached = Shape({1});
  uncached.caching_device = "";
  ASSERT_OK_AND_ASSIGN(Variable u, session_->GetVariable("u", uncached));
  EXPECT_FALSE(u.cached());
}

// Variable::ReadInto reuses the destination while the value fits it, for
// plain, partitioned and cached variables; a refreshed cache is rewritten in
// place.
TEST_F(SessionTest, ReadIntoReusesTheDestination) {
  ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Enter(session_.get(), "into"));
  GetVariableOptions o = Shape({300, 4});
  o.initializer = init::RandomUniform(-1.0, 1.0, /*seed=*/5);
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable plain, session_->GetVariable("plain", o));
  o.partitioner = partitioners::FixedSize(2);
  ASSERT_OK_AND_ASSIGN(Variable parted, session_->GetVariable("parted", o));
  o.partitioner.reset();
  o.caching_device = "/job:worker/cpu:0";
  ASSERT_OK_AND_ASSIGN(Variable cached, session_->GetVariable("cached", o));
  ASSERT_TRUE(IsOk(scope.Exit()));

  for (Variable* v : {&plain, &parted, &cached}) {
    SCOPED_TRACE(v->name());
    Tensor into;
    ASSERT_TRUE(IsOk(v->ReadInto(&into)));
    ASSERT_OK_AND_ASSIGN(Tensor want, v->Read());
    EXPECT_EQ(into, want);
    const char* buffer = into.bytes().data();
    // A write through the variable, then a read into the same tensor.
    Tensor ones(DT_FLOAT, TensorShape{300, 4});
    std::fill(ones.data<float>(), ones.data<float>() + 1200, 1.0f);
    ASSERT_TRUE(IsOk(v->Assign(ones)));
    ASSERT_TRUE(IsOk(v->ReadInto(&into)));
    EXPECT_EQ(into, ones);
    EXPECT_EQ(into.bytes().data(), buffer) << "a fitting destination was reallocated";
  }

  // A cache refreshed in place sees another trainer's write.
  auto other = NewSession();
  ASSERT_NE(other, nullptr);
  ASSERT_OK_AND_ASSIGN(Variable theirs, other->GetVariable("into/cached", Shape({300, 4})));
  Tensor twos(DT_FLOAT, TensorShape{300, 4});
  std::fill(twos.data<float>(), twos.data<float>() + 1200, 2.0f);
  ASSERT_TRUE(IsOk(theirs.Assign(twos)));
  Tensor stale;
  ASSERT_TRUE(IsOk(cached.ReadInto(&stale)));
  EXPECT_NE(stale, twos);
  ASSERT_TRUE(IsOk(cached.RefreshCache()));
  ASSERT_TRUE(IsOk(cached.ReadInto(&stale)));
  EXPECT_EQ(stale, twos);

  // The suite shares one cluster, whose placement balances bytes: leave it
  // as it was.
  for (const char* name : {"into/plain", "into/parted", "into/cached"}) {
    EXPECT_TRUE(IsOk(session_->DeleteVariable(name))) << name;
  }
}

// tf.create_partitioned_variables: default names per session, parts under
// the variable's name, reuse by name, and slicing checked first.
TEST_F(SessionTest, CreatePartitionedVariablesNamesLikeTensorFlow) {
  auto s = NewSession();
  ASSERT_NE(s, nullptr);
  ASSERT_OK_AND_ASSIGN(Variable a,
                       s->CreatePartitionedVariables(TensorShape{3, 1, 1}, {2, 1, 1}, init::Zeros()));
  EXPECT_EQ(a.name(), "PartitionedVariable");
  ASSERT_EQ(a.parts().size(), 2u);
  EXPECT_EQ(a.parts()[0].name, "PartitionedVariable/part_0");
  EXPECT_EQ(a.parts()[1].name, "PartitionedVariable/part_1");
  EXPECT_EQ(a.parts()[0].shape, TensorShape({2, 1, 1}));
  EXPECT_EQ(a.parts()[1].shape, TensorShape({1, 1, 1}));
  ASSERT_OK_AND_ASSIGN(Variable b,
                       s->CreatePartitionedVariables(TensorShape{4}, {2}, init::Zeros()));
  EXPECT_EQ(b.name(), "PartitionedVariable_1");
  {
    ASSERT_OK_AND_ASSIGN(VariableScope hi, VariableScope::Enter(s.get(), "hi"));
    ASSERT_OK_AND_ASSIGN(Variable c,
                         s->CreatePartitionedVariables(TensorShape{4}, {2}, init::Zeros()));
    EXPECT_EQ(c.name(), "hi/PartitionedVariable");
  }
  // A name is used as given; reuse returns the same variable.
  client::PartitionedVariablesOptions named;
  named.name = "emb";
  ASSERT_OK_AND_ASSIGN(Variable e,
                       s->CreatePartitionedVariables(TensorShape{6, 2}, {3, 1}, init::Zeros(), named));
  EXPECT_EQ(e.parts().size(), 3u);
  named.reuse = REUSE_TRUE;
  ASSERT_OK_AND_ASSIGN(Variable again,
                       s->CreatePartitionedVariables(TensorShape{6, 2}, {3, 1}, init::Zeros(), named));
  EXPECT_EQ(again.name(), "emb");
  EXPECT_EQ(again.handle().SerializeAsString(), e.handle().SerializeAsString());
  // Bad slicing fails before anything is declared.
  EXPECT_TRUE(IsError(s->CreatePartitionedVariables(TensorShape{4, 4}, {2, 2}, init::Zeros()),
                      absl::StatusCode::kInvalidArgument, {"one axis only", "[2, 2]"}));
  EXPECT_TRUE(IsError(s->CreatePartitionedVariables(TensorShape{4, 4}, {2}, init::Zeros()),
                      absl::StatusCode::kInvalidArgument, {"slicing has 1 entries", "rank 2"}));
  ASSERT_OK_AND_ASSIGN(Variable d,
                       s->CreatePartitionedVariables(TensorShape{4}, {2}, init::Zeros()));
  EXPECT_EQ(d.name(), "PartitionedVariable_2");
}

TEST_F(SessionTest, PartitionersGiveTensorFlowPartCountsAndShapes) {
  ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Enter(session_.get(), "parts"));
  GetVariableOptions five = Shape({10, 10});
  five.partitioner = partitioners::FixedSize(5);
  ASSERT_OK_AND_ASSIGN(Variable a, session_->GetVariable("a", five));
  EXPECT_TRUE(a.partitioned());
  EXPECT_EQ(a.partitions(), (std::vector<int64_t>{5, 1}));
  ASSERT_EQ(a.parts().size(), 5u);
  EXPECT_EQ(a.parts()[4].name, "parts/a/part_4");

  GetVariableOptions three = Shape({43, 2});
  three.partitioner = partitioners::FixedSize(3);
  // Each part goes to the live shard with the fewest bytes placed so far
  // (what earlier tests left included), the lowest id on a tie.
  ASSERT_OK_AND_ASSIGN(ListShardsResponse listed, session_->ListShards());
  std::map<int32_t, int64_t> load;
  for (const auto& shard : listed.shards()) {
    if (shard.live()) load[shard.shard_id()] = shard.placed_bytes();
  }
  std::vector<int32_t> expected_shards;
  for (int64_t bytes : {15 * 2 * 4, 14 * 2 * 4, 14 * 2 * 4}) {
    auto least = load.begin();
    for (auto it = load.begin(); it != load.end(); ++it) {
      if (it->second < least->second) least = it;
    }
    least->second += bytes;
    expected_shards.push_back(least->first);
  }
  ASSERT_OK_AND_ASSIGN(Variable b, session_->GetVariable("b", three));
  std::vector<int64_t> rows, offsets;
  std::vector<int32_t> shards;
  for (const auto& p : b.parts()) {
    rows.push_back(p.shape.dim(0));
    offsets.push_back(p.offset[0]);
    shards.push_back(p.shard_id);
  }
  EXPECT_EQ(rows, (std::vector<int64_t>{15, 14, 14}));
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 15, 29}));
  EXPECT_EQ(shards, expected_shards) << "parts go to the least loaded shards";

  GetVariableOptions axis1 = Shape({2, 2, 2});
  axis1.partitioner = partitioners::FixedSize(2, /*axis=*/1);
  ASSERT_OK_AND_ASSIGN(Variable c, session_->GetVariable("c", axis1));
  EXPECT_EQ(c.partitions(), (std::vector<int64_t>{1, 2, 1}));
  EXPECT_EQ(c.parts()[0].shape, (TensorShape{2, 1, 2}));

  // min_max: [2048] float with a 2 KiB minimum slice -> 4 parts.
  GetVariableOptions minmax = Shape({2048});
  minmax.partitioner = partitioners::MinMax(100, 0, 2 << 10);
  ASSERT_OK_AND_ASSIGN(Variable d, session_->GetVariable("d", minmax));
  EXPECT_EQ(d.parts().size(), 4u);

  // A scalar ignores the partitioner.
  GetVariableOptions scalar = Shape({});
  scalar.partitioner = partitioners::FixedSize(2);
  ASSERT_OK_AND_ASSIGN(Variable e, session_->GetVariable("e", scalar));
  EXPECT_FALSE(e.partitioned());

  // Reuse with another partitioning is refused; without one returns it.
  scope.reuse_variables();
  GetVariableOptions into2 = Shape({43, 2});
  into2.partitioner = partitioners::FixedSize(2);
  EXPECT_TRUE(IsError(session_->GetVariable("b", into2), absl::StatusCode::kInvalidArgument,
                      {"Trying to reuse partitioned variable parts/b", "[2, 1]", "[3, 1]"}));
  ASSERT_OK_AND_ASSIGN(Variable again, session_->GetVariable("b", Shape({43, 2})));
  EXPECT_EQ(again.parts().size(), 3u);
}

TEST_F(SessionTest, SplitIndexOpsOnPartsEqualOpsOnOneVariable) {
  ASSERT_OK_AND_ASSIGN(VariableScope scope, VariableScope::Enter(session_.get(), "split"));
  GetVariableOptions o = Shape({10, 3});
  o.initializer = init::RandomUniform(-1.0, 1.0, /*seed=*/17);
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable plain, session_->GetVariable("plain", o));
  o.partitioner = partitioners::FixedSize(3);
  ASSERT_OK_AND_ASSIGN(Variable parted, session_->GetVariable("parted", o));
  ASSERT_EQ(parted.parts().size(), 3u);  // rows 0-3, 4-6, 7-9

  auto same = [&](const char* step) {
    auto a = plain.Read();
    auto b = parted.Read();
    ASSERT_TRUE(a.ok() && b.ok()) << step;
    EXPECT_EQ(*a, *b) << step << ": " << a->DebugString(30) << " vs " << b->DebugString(30);
  };
  same("initial values");

  // Gather across parts, indices of rank 2, order kept.
  Tensor ids = Make<int64_t>(TensorShape{2, 3}, {9, 0, 5, 4, 4, 7});
  ASSERT_OK_AND_ASSIGN(Tensor g1, plain.Gather(ids));
  ASSERT_OK_AND_ASSIGN(Tensor g2, parted.Gather(ids));
  EXPECT_EQ(g1, g2);
  EXPECT_EQ(g2.shape(), (TensorShape{2, 3, 3}));

  // scatter_add with duplicates within and across parts.
  Tensor dup = Make<int32_t>(TensorShape{5}, {0, 9, 0, 5, 9});
  std::vector<float> u;
  for (int i = 0; i < 15; ++i) u.push_back(0.25f * static_cast<float>(i + 1));
  Tensor updates = Make<float>(TensorShape{5, 3}, u);
  ASSERT_TRUE(IsOk(plain.ScatterAdd(dup, updates)));
  ASSERT_TRUE(IsOk(parted.ScatterAdd(dup, updates)));
  same("scatter_add");
  ASSERT_TRUE(IsOk(plain.ScatterSub(dup, updates)));
  ASSERT_TRUE(IsOk(parted.ScatterSub(dup, updates)));
  same("scatter_sub");
  Tensor uniq = Int64s({8, 1, 4});
  Tensor rows = Make<float>(TensorShape{3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  ASSERT_TRUE(IsOk(plain.ScatterUpdate(uniq, rows)));
  ASSERT_TRUE(IsOk(parted.ScatterUpdate(uniq, rows)));
  same("scatter_update");
  ASSERT_TRUE(IsOk(plain.ScatterAdd(uniq, Tensor::Scalar<float>(0.5f))));
  ASSERT_TRUE(IsOk(parted.ScatterAdd(uniq, Tensor::Scalar<float>(0.5f))));
  same("scatter_add of a scalar");

  // Whole-variable updates split by part.
  std::vector<float> full;
  for (int i = 0; i < 30; ++i) full.push_back(static_cast<float>(i));
  Tensor delta = Make<float>(TensorShape{10, 3}, full);
  Tensor after_plain, after_parted;
  ASSERT_TRUE(IsOk(plain.AssignAdd(delta, &after_plain)));
  ASSERT_TRUE(IsOk(parted.AssignAdd(delta, &after_parted)));
  EXPECT_EQ(after_plain, after_parted);
  same("assign_add");
  ASSERT_TRUE(IsOk(plain.Assign(delta)));
  ASSERT_TRUE(IsOk(parted.Assign(delta)));
  same("assign");
  ASSERT_OK_AND_ASSIGN(Tensor value, parted.Read());
  EXPECT_EQ(value, delta);
}

TEST_F(SessionTest, BadIndexFailsInFullVariableTermsAndAppliesNothing) {
  GetVariableOptions o = Shape({6});
  o.initial_value = Make<float>(TensorShape{6}, {1, 2, 3, 4, 5, 6});
  o.shape.reset();
  o.partitioner = partitioners::FixedSize(2);
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("badindex/params", o));
  ASSERT_EQ(v.parts().size(), 2u);
  Tensor updates = Make<float>(TensorShape{3}, {-3, -4, -5});
  EXPECT_TRUE(IsError(v.ScatterAdd(Int64s({2, 0, 6}), updates), absl::StatusCode::kInvalidArgument,
                      {"indices[2] = 6 is not in [0, 6)"}));
  EXPECT_TRUE(IsError(v.ScatterUpdate(Int64s({-1, 0, 5}), updates),
                      absl::StatusCode::kInvalidArgument, {"indices[0] = -1 is not in [0, 6)"}));
  EXPECT_TRUE(IsError(v.Gather(Int64s({5, 6})), absl::StatusCode::kInvalidArgument,
                      {"indices[1] = 6 is not in [0, 6)"}));
  ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  EXPECT_EQ(value, Make<float>(TensorShape{6}, {1, 2, 3, 4, 5, 6}));
  ASSERT_TRUE(IsOk(v.ScatterAdd(Int64s({2, 0, 5}), updates)));
  ASSERT_OK_AND_ASSIGN(value, v.Read());
  EXPECT_EQ(value, Make<float>(TensorShape{6}, {-3, 2, 0, 4, 5, 1}));
}

TEST_F(SessionTest, CollectionsListVariablesInCreationOrder) {
  GetVariableOptions o = Shape({1});
  ASSERT_OK_AND_ASSIGN(Variable a, session_->GetVariable("coll/a", o));
  o.trainable = false;
  o.collections = {"variables", "my_stats"};
  ASSERT_OK_AND_ASSIGN(Variable b, session_->GetVariable("coll/b", o));
  GetVariableOptions local = Shape({1});
  local.collections = {"local_variables"};
  local.trainable = false;
  ASSERT_OK_AND_ASSIGN(Variable c, session_->GetVariable("coll/c", local));

  auto names = [&](const std::string& collection) {
    std::vector<std::string> out;
    auto list = session_->ListVariables(collection);
    EXPECT_TRUE(list.ok()) << list.status();
    if (list.ok()) {
      for (const Variable& v : *list) {
        if (v.name().rfind("coll/", 0) == 0) out.push_back(v.name());
      }
    }
    return out;
  };
  EXPECT_EQ(names("variables"), (std::vector<std::string>{"coll/a", "coll/b"}));
  EXPECT_EQ(names("trainable_variables"), (std::vector<std::string>{"coll/a"}));
  EXPECT_EQ(names("my_stats"), (std::vector<std::string>{"coll/b"}));
  EXPECT_EQ(names("local_variables"), (std::vector<std::string>{"coll/c"}));
}

TEST_F(SessionTest, ChiefInitializesAndAnotherSessionWaits) {
  auto worker = NewSession();
  ASSERT_NE(worker, nullptr);
  GetVariableOptions o = Shape({4, 2});
  o.initializer = init::Ones();
  o.partitioner = partitioners::FixedSize(2);
  ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("init/w", o));
  GetVariableOptions b = Shape({2});
  ASSERT_OK_AND_ASSIGN(Variable bias, session_->GetVariable("init/b", b));
  ASSERT_OK_AND_ASSIGN(Variable w2, worker->GetVariable("init/w", o));
  ASSERT_OK_AND_ASSIGN(Variable b2, worker->GetVariable("init/b", b));

  ASSERT_OK_AND_ASSIGN(auto missing, worker->ReportUninitializedVariables({w2, b2}));
  EXPECT_EQ(missing, (std::vector<std::string>{"init/w", "init/b"}));
  EXPECT_TRUE(IsError(w2.Read(), absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(IsError(worker->WaitForInitialized({b2}, absl::Milliseconds(200)),
                      absl::StatusCode::kDeadlineExceeded, {"init/b"}));

  std::atomic<bool> done{false};
  absl::Status waited;
  std::thread waiter([&] {
    waited = worker->WaitForInitialized({w2, b2}, absl::Seconds(120));
    done = true;
  });
  ASSERT_TRUE(IsOk(session_->InitializeVariables({w})));
  ASSERT_OK_AND_ASSIGN(missing, session_->ReportUninitializedVariables({w, bias}));
  EXPECT_EQ(missing, (std::vector<std::string>{"init/b"}));
  ASSERT_TRUE(IsOk(session_->InitializeVariables({bias})));
  waiter.join();
  EXPECT_TRUE(IsOk(waited));
  ASSERT_OK_AND_ASSIGN(Tensor value, w2.Read());
  EXPECT_EQ(value, Make<float>(TensorShape{4, 2}, {1, 1, 1, 1, 1, 1, 1, 1}));
  ASSERT_OK_AND_ASSIGN(bool init, b2.IsInitialized());
  EXPECT_TRUE(init);
}

TEST_F(SessionTest, MakeTemplateCreatesOnFirstCallAndReusesAfter) {
  Session* s = session_.get();
  int calls = 0;
  auto dense = client::MakeTemplate(s, "dense", [&]() -> absl::StatusOr<std::string> {
    ++calls;
    GetVariableOptions o = Shape({2, 2});
    o.initializer = init::Zeros();
    o.initialize = calls == 1;
    auto w = s->GetVariable("w", o);
    if (!w.ok()) return w.status();
    return w->name();
  });
  ASSERT_OK_AND_ASSIGN(std::string first, dense());
  ASSERT_OK_AND_ASSIGN(std::string second, dense());
  EXPECT_EQ(first, "dense/w");
  EXPECT_EQ(second, "dense/w");
  ASSERT_TRUE(dense.variable_scope().has_value());
  EXPECT_EQ(dense.variable_scope()->name, "dense");
  // A second template of the same name gets its own scope.
  auto other = client::MakeTemplate(s, "dense", [&]() -> absl::StatusOr<std::string> {
    auto w = s->GetVariable("w", Shape({2, 2}));
    if (!w.ok()) return w.status();
    return w->name();
  });
  ASSERT_OK_AND_ASSIGN(std::string third, other());
  EXPECT_EQ(third, "dense_1/w");
}

TEST_F(SessionTest, TemplateOptionsFollowTensorFlow) {
  Session* s = session_.get();
  auto make_w = [s]() -> absl::StatusOr<std::string> {
    auto w = s->GetVariable("w", Shape({2}));
    if (!w.ok()) return w.status();
    return w->name();
  };
  // tf: "name cannot be None".
  EXPECT_TRUE(IsError(client::MakeTemplate(s, "", make_w, {}).status(),
                      absl::StatusCode::kInvalidArgument, {"name cannot be None"}));
  // create_scope_now: the scope exists (named where the template was made)
  // before any call; the first call creates in it, later calls reuse.
  std::optional<VariableScope> outer(*VariableScope::Enter(s, "tmpl_opts"));
  TemplateOptions now;
  now.create_scope_now = true;
  ASSERT_OK_AND_ASSIGN(auto early, client::MakeTemplate(s, "early", make_w, now));
  ASSERT_TRUE(outer->Exit().ok());
  outer.reset();
  ASSERT_TRUE(early.variable_scope().has_value());
  EXPECT_EQ(early.variable_scope()->name, "tmpl_opts/early");
  ASSERT_OK_AND_ASSIGN(std::string first, early());
  ASSERT_OK_AND_ASSIGN(std::string second, early());
  EXPECT_EQ(first, "tmpl_opts/early/w");
  EXPECT_EQ(second, first);
  // unique_name: that exact scope.
  TemplateOptions exact;
  exact.unique_name = "tmpl_exact";
  ASSERT_OK_AND_ASSIGN(auto named, client::MakeTemplate(s, "ignored", make_w, exact));
  ASSERT_OK_AND_ASSIGN(std::string in_exact, named());
  EXPECT_EQ(in_exact, "tmpl_exact/w");
  // A trainable variable created by a later call is an error; the first
  // call may create them.
  auto creates = client::MakeTemplate(s, "tmpl_creates", [s]() -> absl::Status {
    auto v = s->CreateVariable(*Tensor::FromVector<float>(TensorShape{1}, {1.0f}));
    return v.status();
  });
  ASSERT_TRUE(IsOk(creates()));
  EXPECT_TRUE(IsError(creates(), absl::StatusCode::kInvalidArgument,
                      {"Trainable variable created when calling a template after the first"}));
  // A failed first call leaves the template uncreated: the next call is a
  // first call, not a reusing one.
  int calls = 0;
  TemplateOptions flaky_now;
  flaky_now.create_scope_now = true;
  ASSERT_OK_AND_ASSIGN(auto flaky,
                       client::MakeTemplate(s, "tmpl_flaky", [&]() -> absl::StatusOr<std::string> {
                         if (++calls == 1) return absl::UnavailableError("first call fails");
                         return make_w();
                       }, flaky_now));
  EXPECT_FALSE(flaky().ok());
  ASSERT_OK_AND_ASSIGN(std::string created, flaky());
  EXPECT_EQ(created, "tmpl_flaky/w");
}

TEST_F(SessionTest, ConcurrentDeclarationsFromProcessesYieldOneVariable) {
  constexpr int kProcesses = 4;
  std::vector<std::unique_ptr<ChildProcess>> children;
  for (int i = 0; i < kProcesses; ++i) {
    auto child = ChildProcess::Start({DECLARE_HELPER, "--coordinator",
                                      cluster_->coordinator_address(), "--name", "race/emb",
                                      "--rows", "8", "--parts", "2"});
    ASSERT_TRUE(child.ok()) << child.status();
    children.push_back(*std::move(child));
  }
  for (auto& child : children) {
    auto status = child->Wait(absl::Seconds(120));
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
  }
  ASSERT_OK_AND_ASSIGN(auto all, session_->ListVariables(""));
  int found = 0;
  for (const Variable& v : all) found += v.name() == "race/emb" ? 1 : 0;
  EXPECT_EQ(found, 1);
  ASSERT_OK_AND_ASSIGN(Variable emb, session_->LookupVariable("race/emb"));
  ASSERT_OK_AND_ASSIGN(Tensor rows, emb.Gather(Int64s({0, 7, 3})));
  std::vector<float> want = {4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0};
  EXPECT_EQ(rows, Make<float>(TensorShape{3, 4}, want));
}

// --- Crash recovery: each test has its own cluster. ---

TEST(SessionRecoveryTest, CoordinatorRestartKeepsRegistryAndTrainersCarryOn) {
  ASSERT_OK_AND_ASSIGN(auto cluster, TestCluster::Start());
  ASSERT_OK_AND_ASSIGN(auto session, Session::Open(cluster->coordinator_address()));
  GetVariableOptions o = Shape({6, 2});
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable emb, session->GetVariable("model/emb", o));
  ASSERT_OK_AND_ASSIGN(Variable step,
                       session->CreateVariable(Tensor::Scalar<int64_t>(0), {"step", {}, {}, true}));

  ASSERT_TRUE(IsOk(cluster->RestartCoordinator()));
  // Data ops never touch the coordinator.
  ASSERT_TRUE(IsOk(emb.ScatterAdd(Int64s({0, 5}), Tensor::Scalar<float>(1.0f))));
  ASSERT_OK_AND_ASSIGN(int64_t old, step.CountUpTo(100));
  EXPECT_EQ(old, 0);
  ASSERT_TRUE(IsOk(cluster->WaitForShards(absl::Seconds(60))));

  // The session survived: its names and counters are still there.
  EXPECT_TRUE(IsError(session->GetVariable("model/emb", o), absl::StatusCode::kAlreadyExists));
  GetVariableOptions reuse = o;
  reuse.reuse = REUSE_TRUE;
  ASSERT_OK_AND_ASSIGN(Variable again, session->GetVariable("model/emb", reuse));
  EXPECT_EQ(again.parts().size(), 2u);
  ASSERT_OK_AND_ASSIGN(Variable step2, session->CreateVariable(Tensor::Scalar<int64_t>(0)));
  EXPECT_EQ(step2.name(), "Variable");
  ASSERT_OK_AND_ASSIGN(Tensor rows, again.Gather(Int64s({0, 5, 1})));
  EXPECT_EQ(rows, Make<float>(TensorShape{3, 2}, {1, 1, 1, 1, 0, 0}));
  ASSERT_OK_AND_ASSIGN(auto all, session->ListVariables(""));
  EXPECT_EQ(all.size(), 3u);

  // A new trainer attaches after the restart.
  ASSERT_OK_AND_ASSIGN(auto late, Session::Open(cluster->coordinator_address()));
  ASSERT_OK_AND_ASSIGN(Variable theirs, late->GetVariable("model/emb", o));
  ASSERT_OK_AND_ASSIGN(Tensor value, theirs.Read());
  EXPECT_EQ(value, Make<float>(TensorShape{6, 2}, {1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}));
}

// A trainer that dies without closing its session does not leave it open
// forever: after the coordinator's session TTL without a call it is closed.
// A live session stays open however long it talks only to shards, because
// the client pings in the background.
TEST(SessionRecoveryTest, IdleSessionsExpireAndLiveOnesAreKeptAlive) {
  TestClusterOptions options;
  options.num_shards = 1;
  options.coordinator_args = {"--heartbeat-interval", "0.1", "--session-ttl", "0.5"};
  ASSERT_OK_AND_ASSIGN(auto cluster, TestCluster::Start(options));
  ASSERT_OK_AND_ASSIGN(auto live, Session::Open(cluster->coordinator_address()));
  client::SessionOptions no_pings;
  no_pings.keep_alive = false;
  ASSERT_OK_AND_ASSIGN(auto dead, Session::Open(cluster->coordinator_address(), no_pings));
  ASSERT_OK_AND_ASSIGN(Variable v, live->GetVariable("kept", Shape({2})));
  ASSERT_TRUE(IsOk(dead->GetVariable("in_dead_session", Shape({2})).status()));

  absl::SleepFor(absl::Seconds(3));  // six TTLs

  // The silent session is gone, and says why.
  EXPECT_TRUE(IsError(dead->GetVariable("another", Shape({2})), absl::StatusCode::kNotFound,
                      {absl::StrCat("session ", dead->id(), " expired")}));
  // Its variables stay (variables outlive sessions).
  ASSERT_OK_AND_ASSIGN(auto fresh, Session::Open(cluster->coordinator_address()));
  GetVariableOptions attach = Shape({2});
  EXPECT_TRUE(IsOk(fresh->GetVariable("in_dead_session", attach).status()));
  // The pinged one still has its names: re-declaring "kept" without reuse is
  // TensorFlow's "already exists" within the same session.
  EXPECT_TRUE(IsError(live->GetVariable("kept", Shape({2})), absl::StatusCode::kAlreadyExists,
                      {"Variable kept already exists"}));
}

TEST(SessionRecoveryTest, ShardRestartMarksItsPartsLost) {
  ASSERT_OK_AND_ASSIGN(auto cluster, TestCluster::Start());
  ASSERT_OK_AND_ASSIGN(auto session, Session::Open(cluster->coordinator_address()));
  GetVariableOptions o = Shape({8, 2});
  o.initializer = init::Ones();
  o.partitioner = partitioners::FixedSize(2);
  o.initialize = true;
  ASSERT_OK_AND_ASSIGN(Variable emb, session->GetVariable("emb", o));
  ASSERT_EQ(emb.parts().size(), 2u);
  const auto parts = emb.parts();
  ASSERT_NE(parts[0].shard_id, parts[1].shard_id);
  const int victim = parts[1].shard_id;
  const std::string lost_part = parts[1].name;
  const int64_t survivor_row = parts[0].offset[0];

  std::vector<uint64_t> old(2);
  for (int k = 0; k < 2; ++k) {
    ASSERT_OK_AND_ASSIGN(old[k], cluster->ShardIncarnation(k));
  }
  ASSERT_TRUE(IsOk(cluster->RestartShard(victim)));
  std::vector<uint64_t> wait_new(2, 0);
  wait_new[victim] = old[victim];
  ASSERT_TRUE(IsOk(cluster->WaitForShards(absl::Seconds(60), wait_new)));

  // The old handle is stale; after one refresh the part shows lost.
  absl::Status read = emb.Read().status();
  EXPECT_TRUE(IsError(read, absl::StatusCode::kUnavailable, {lost_part, "lost"})) << read;
  bool marked = false;
  for (const auto& p : emb.parts()) marked = marked || (p.name == lost_part && p.lost);
  EXPECT_TRUE(marked);
  EXPECT_TRUE(IsError(emb.ScatterAdd(Int64s({7}), Tensor::Scalar<float>(1.0f)),
                      absl::StatusCode::kUnavailable, {lost_part}));
  // Rows of the surviving part still work.
  ASSERT_OK_AND_ASSIGN(Tensor row, emb.Gather(Int64s({survivor_row})));
  EXPECT_EQ(row, Make<float>(TensorShape{1, 2}, {1, 1}));
  // A fresh handle from another session says the same.
  ASSERT_OK_AND_ASSIGN(auto other, Session::Open(cluster->coordinator_address()));
  ASSERT_OK_AND_ASSIGN(Variable fresh, other->LookupVariable("emb"));
  EXPECT_TRUE(IsError(fresh.Read().status(), absl::StatusCode::kUnavailable, {lost_part}));
}

}  // namespace
}  // namespace integration
}  // namespace psd
