// Registry: TensorFlow's naming, reuse and scope rules per session (spec §4
// items 1, 12-30, 39-42 as our own cases), attach across sessions and its
// conflict error, collections, batch atomicity, concurrency and placement.
#include "coordinator/registry.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/names.h"
#include "psd/wire.h"

namespace psd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

VariableDeclaration Decl(const std::string& name, std::vector<int64_t> dims,
                         Reuse reuse = REUSE_FALSE, DataType dtype = DT_FLOAT) {
  VariableDeclaration d;
  d.set_name(name);
  d.set_dtype(dtype);
  d.mutable_shape();  // set, even for a scalar
  for (int64_t x : dims) d.mutable_shape()->add_dims(x);
  d.set_reuse(reuse);
  d.set_declared_at("model.py:" + std::to_string(dims.size() + 10));
  return d;
}

VariableDeclaration NoShape(const std::string& name, Reuse reuse) {
  VariableDeclaration d;
  d.set_name(name);
  d.set_reuse(reuse);
  return d;
}

VariableDeclaration Partitioned(VariableDeclaration d, int64_t parts) {
  d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(parts);
  return d;
}

std::vector<std::string> PartNames(const VariableDef& def) {
  std::vector<std::string> out;
  for (const auto& p : def.parts()) out.push_back(p.name());
  return out;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = std::move(Registry::Open({})).value();
    session_ = *registry_->OpenSession("test");
  }

  absl::StatusOr<DeclareResult> Get(const VariableDeclaration& d, uint64_t session = 0) {
    return registry_->GetVariable(session ? session : session_, d, shards_);
  }
  std::string Scope(const std::string& parent, const std::string& name,
                    const std::string& default_name = "", uint64_t session = 0) {
    auto e = registry_->OpenScope(session ? session : session_, parent, name, default_name, false,
                                  false);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? e->path : "";
  }
  void Close(const std::string& path, uint64_t token = 0) {
    ASSERT_TRUE(registry_->CloseScope(session_, path, token).ok());
  }

  std::unique_ptr<Registry> registry_;
  uint64_t session_ = 0;
  std::vector<int32_t> shards_ = {0, 1, 2};
};

// A retried request (same request_seq: its answer was lost) is answered as
// the first time instead of being applied again.
TEST_F(RegistryTest, RetriedRequestsAreAppliedOnce) {
  const VariableDeclaration d = Decl("w", {4});
  auto first = registry_->GetVariable(session_, d, shards_, /*request_seq=*/7);
  ASSERT_TRUE(first.ok()) << first.status();
  auto retry = registry_->GetVariable(session_, d, shards_, 7);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_TRUE(retry->created);  // the caller still finishes the parts
  EXPECT_EQ(retry->def.SerializeAsString(), first->def.SerializeAsString());
  // A new request for the same name is TensorFlow's reuse error.
  EXPECT_EQ(registry_->GetVariable(session_, d, shards_, 8).status().code(),
            absl::StatusCode::kAlreadyExists);

  auto scope = registry_->OpenScope(session_, "", "", "layer", false, false, 9);
  auto scope_retry = registry_->OpenScope(session_, "", "", "layer", false, false, 9);
  EXPECT_EQ(scope->path, "layer");
  EXPECT_EQ(scope_retry->path, "layer");
  EXPECT_EQ(registry_->OpenScope(session_, "", "", "layer", false, false, 10)->path, "layer_1");

  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true, 11), "Variable");
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true, 11), "Variable");
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true, 12), "Variable_1");
  // Untagged requests are applied every time.
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true), "Variable_2");
}

TEST_F(RegistryTest, RetryOlderThanTheWindowIsAborted) {
  uint64_t seq = 1;
  for (; seq <= Registry::kReplyWindow + 1; ++seq) {
    ASSERT_TRUE(registry_->UniqueName(session_, "Variable", true, seq).ok());
  }
  auto old = registry_->UniqueName(session_, "Variable", true, 1);
  EXPECT_EQ(old.status().code(), absl::StatusCode::kAborted);
  EXPECT_NE(old.status().message().find("request id too old"), std::string::npos)
      << old.status();
  // The newest are still answered from the window.
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true, seq - 1),
            absl::StrCat("Variable_", seq - 2));
}

TEST_F(RegistryTest, DefaultVariableNamesAreUniquePerSession) {
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true), "Variable");
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true), "Variable_1");
  EXPECT_EQ(*registry_->UniqueName(session_, "variable", true), "variable_2");  // case-blind
  EXPECT_EQ(*registry_->UniqueName(session_, "weights", true), "weights");
  // Peeking does not consume a name.
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", false), "Variable_3");
  EXPECT_EQ(*registry_->UniqueName(session_, "Variable", true), "Variable_3");
  // Another session (graph) counts on its own.
  uint64_t other = *registry_->OpenSession("other");
  EXPECT_EQ(*registry_->UniqueName(other, "Variable", true), "Variable");
  EXPECT_EQ(*registry_->UniqueName(other, "tower/Variable", true), "tower/Variable");
}

TEST_F(RegistryTest, ExplicitNameAndShape) {
  auto r = Get(Decl("rnd", {3, 2}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->created);
  EXPECT_EQ(r->def.name(), "rnd");
  EXPECT_THAT(r->def.shape().dims(), ElementsAre(3, 2));
  EXPECT_FALSE(r->def.partitioned());
  EXPECT_THAT(PartNames(r->def), ElementsAre("rnd"));
  EXPECT_TRUE(r->def.initializer().has_default_initializer());
}

TEST_F(RegistryTest, AutoReuseCreatesOnceThenReturnsIt) {
  auto a = Get(Decl("counter", {2}, REUSE_AUTO));
  auto b = Get(Decl("counter", {2}, REUSE_AUTO));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(a->created);
  EXPECT_FALSE(b->created);
  EXPECT_EQ(a->def.creation_seq(), b->def.creation_seq());
  EXPECT_EQ(registry_->num_variables(), 1u);
}

TEST_F(RegistryTest, ReuseFalseAndTrueFollowTensorFlow) {
  ASSERT_TRUE(Get(Decl("x", {4})).ok());
  ASSERT_TRUE(Get(Decl("y", {4}, REUSE_FALSE)).ok());

  auto again = Get(Decl("x", {4}, REUSE_FALSE));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(),
              HasSubstr("Variable x already exists, disallowed. Did you mean to set reuse=True in "
                        "VarScope? Originally defined at:\n\nmodel.py:11"));

  auto reused = Get(Decl("x", {4}, REUSE_TRUE));
  ASSERT_TRUE(reused.ok());
  EXPECT_FALSE(reused->created);

  auto missing = Get(Decl("z", {4}, REUSE_TRUE));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("Variable z does not exist, or was not created with tf.get_variable(). "
                        "Did you mean to set reuse=None in VarScope?"));
}

TEST_F(RegistryTest, ScopedNamesAndReentry) {
  const std::string tower = Scope(Scope("", "net"), "tower0");
  EXPECT_EQ(tower, "net/tower0");
  ASSERT_TRUE(Get(Decl(tower + "/w", {2})).ok());
  // Re-entering with reuse finds it; without reuse it is a second create.
  EXPECT_TRUE(Get(NoShape("net/tower0/w", REUSE_TRUE)).ok());
  EXPECT_EQ(Get(Decl("net/tower0/w", {2})).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Scope(Scope(Scope("", "net"), "a"), "b"), "net/a/b");
  // Reuse inherited into a sub-scope where nothing exists.
  EXPECT_EQ(Get(NoShape("net/tower0/sub/w", REUSE_TRUE)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, ReuseWithOtherShapeOrDtypeNamesBoth) {
  ASSERT_TRUE(Get(Decl("s/v", {3})).ok());
  auto shape = Get(Decl("s/v", {5}, REUSE_TRUE));
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("shape [5] and found shape [3]"));
  auto dtype = Get(Decl("s/v", {3}, REUSE_TRUE, DT_INT64));
  EXPECT_EQ(dtype.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dtype.status().message(), HasSubstr("dtype int64 and found dtype float32"));
  // Unspecified shape and dtype match anything on reuse.
  EXPECT_TRUE(Get(NoShape("s/v", REUSE_TRUE)).ok());
}

TEST_F(RegistryTest, DefaultNamedScopesCountLikeTensorFlow) {
  EXPECT_EQ(Scope("", "", "block"), "block");
  Close("block");
  EXPECT_EQ(Scope("", "", "block"), "block_1");
  Close("block_1");
  // Interleaved with a prefix-substring name, which has its own counter.
  EXPECT_EQ(Scope("", "", "blk"), "blk");
  Close("blk");
  EXPECT_EQ(Scope("", "", "block"), "block_2");
  const std::string outer = Scope("", "", "enc");
  EXPECT_EQ(outer, "enc");
  EXPECT_EQ(Scope(outer, "", "dense"), "enc/dense");
  Close("enc/dense");
  Close("enc");
  // A new default-named outer scope: its sub-scope counters start fresh.
  const std::string outer2 = Scope("", "", "enc");
  EXPECT_EQ(outer2, "enc_1");
  EXPECT_EQ(Scope(outer2, "", "dense"), "enc_1/dense");
}

TEST_F(RegistryTest, CountersInsideAScopeSurviveReenteringItsCapturedSelf) {
  const std::string top = Scope("", "top");
  EXPECT_EQ(Scope(top, "", "conv"), "top/conv");
  Close("top/conv");
  EXPECT_EQ(Scope(top, "", "conv"), "top/conv_1");
  Close("top/conv_1");
  auto captured = registry_->OpenScope(session_, "", "top", "", false, /*captured=*/true);
  ASSERT_TRUE(captured.ok());
  EXPECT_EQ(captured->path, "top");
  EXPECT_NE(captured->token, 0u);
  Close("top", captured->token);
  EXPECT_EQ(Scope(top, "", "conv"), "top/conv_2");
}

TEST_F(RegistryTest, CapturedScopeRestoresCountersOnExit) {
  auto c = registry_->OpenScope(session_, "elsewhere", "outer", "", false, true);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->path, "outer");  // its own path wherever it is re-entered
  EXPECT_EQ(Scope("outer", "", "l"), "outer/l");
  Close("outer/l");
  Close("outer", c->token);
  EXPECT_EQ(Scope("outer", "", "l"), "outer/l");
  // The root scope re-entered: variables are named at the top level.
  auto root = registry_->OpenScope(session_, "x", "", "", false, true);
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->path, "");
}

TEST_F(RegistryTest, NamedScopeEnteredTwiceKeepsItsVariableNames) {
  EXPECT_EQ(Scope("", "tower"), "tower");
  ASSERT_TRUE(Get(Decl("tower/w", {1})).ok());
  Close("tower");
  EXPECT_EQ(Scope("", "tower"), "tower");
  EXPECT_EQ(Get(Decl("tower/w", {1})).status().code(), absl::StatusCode::kAlreadyExists);
  // A default-named "tower" now avoids the used name.
  EXPECT_EQ(Scope("", "", "tower"), "tower_1");
}

TEST_F(RegistryTest, DefaultNamedScopeCannotReuse) {
  auto r = registry_->OpenScope(session_, "", "", "layer", /*reuse=*/true, false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, ScopeNamesAreValidated) {
  auto bad = registry_->OpenScope(session_, "", "_", "", false, false);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "'_' is not a valid scope name");
  EXPECT_FALSE(registry_->OpenScope(session_, "", "_hidden", "", false, false).ok());
  EXPECT_FALSE(registry_->OpenScope(session_, "", "a b", "", false, false).ok());
  // Nested, a leading underscore is fine.
  EXPECT_TRUE(registry_->OpenScope(session_, "model", "_hidden", "", false, false).ok());
  EXPECT_TRUE(registry_->OpenScope(session_, "", "v1.2-x", "", false, false).ok());
  EXPECT_EQ(Get(Decl("_w", {1})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Get(Decl("a//w", {1})).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, SuppliedValueGivesShapeAndDtypeAndOnlyItsDescriptionIsKept) {
  VariableDeclaration d;
  d.set_name("c");
  InitializerSpec::SuppliedValue* supplied = d.mutable_initializer()->mutable_supplied_value();
  supplied->set_dtype(DT_INT32);
  supplied->mutable_shape()->add_dims(1000);
  supplied->set_byte_size(4000);
  supplied->set_crc32c(0x1234abcd);
  auto r = Get(d);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->def.dtype(), DT_INT32);
  ASSERT_EQ(r->def.shape().dims_size(), 1);
  EXPECT_EQ(r->def.shape().dims(0), 1000);
  ASSERT_TRUE(r->def.initializer().has_supplied_value());
  EXPECT_EQ(r->def.initializer().supplied_value().crc32c(), 0x1234abcdu);
  // The registry holds a description, not the 4000 bytes.
  EXPECT_LT(r->def.ByteSizeLong(), 200u);

  d.set_name("c2");
  d.mutable_shape()->add_dims(1);
  EXPECT_THAT(Get(d).status().message(), HasSubstr("does not match the initial value's shape"));
  d.mutable_shape()->set_dims(0, 1000);
  d.set_dtype(DT_FLOAT);
  EXPECT_THAT(Get(d).status().message(), HasSubstr("don't match"));
  d.set_dtype(DT_INT32);
  // A byte size the dtype and shape do not allow is refused before
  // anything is registered.
  supplied->set_byte_size(3999);
  EXPECT_THAT(Get(d).status().message(), HasSubstr("takes 4000"));
  // No shape at all cannot create.
  EXPECT_THAT(Get(NoShape("c3", REUSE_FALSE)).status().message(), HasSubstr("fully defined"));
}

TEST_F(RegistryTest, LargeConstantInitializerIsRefusedNamingTheLimit) {
  VariableDeclaration d = Decl("big", {20000});
  TensorProto* value = d.mutable_initializer()->mutable_constant()->mutable_value();
  value->set_dtype(DT_FLOAT);
  value->mutable_shape()->add_dims(20000);
  value->set_content(std::string(80000, '\0'));
  const absl::Status s = Get(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("80000 bytes is over the 65536"));
  EXPECT_FALSE(registry_->Lookup("big").ok());
}

// A declaration whose size no cluster could hold is refused before any
// arithmetic on it (placement sums sizes over every variable).
TEST_F(RegistryTest, AVariableLargerThanTheCapIsRefusedNamingItsSize) {
  const absl::Status s = Get(Decl("huge", {int64_t{1} << 31, int64_t{1} << 31}, REUSE_FALSE,
                                  DT_DOUBLE))
                             .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("cannot create huge: "));
  EXPECT_THAT(s.message(), HasSubstr("[2147483648, 2147483648] of float64 would hold over 2^63"));
  EXPECT_THAT(s.message(), HasSubstr("1125899906842624 bytes (1 PiB)"));
  EXPECT_FALSE(registry_->Lookup("huge").ok());
  // Just under it: placed like any other.
  EXPECT_TRUE(Get(Decl("large", {int64_t{1} << 24, int64_t{1} << 24}, REUSE_FALSE, DT_FLOAT)).ok());
  EXPECT_FALSE(Get(Decl("over", {int64_t{1} << 24, (int64_t{1} << 24) + 1}, REUSE_FALSE,
                        DT_FLOAT))
                   .ok());
}

TEST_F(RegistryTest, SecondCreateInTheSameSessionFails) {
  ASSERT_TRUE(Get(Decl("scope/v", {1})).ok());
  std::thread t([&] {
    EXPECT_EQ(Get(Decl("scope/v", {1})).status().code(), absl::StatusCode::kAlreadyExists);
  });
  t.join();
}

TEST_F(RegistryTest, PartitionedVariablesNameTheirParts) {
  auto r = Get(Partitioned(Decl("emb/table", {5, 1, 1}), 2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->def.partitioned());
  EXPECT_THAT(r->def.partitions(), ElementsAre(2, 1, 1));
  EXPECT_THAT(PartNames(r->def), ElementsAre("emb/table/part_0", "emb/table/part_1"));
  EXPECT_THAT(r->def.parts(0).shape().dims(), ElementsAre(3, 1, 1));
  EXPECT_THAT(r->def.parts(1).shape().dims(), ElementsAre(2, 1, 1));
  EXPECT_THAT(r->def.parts(1).offset(), ElementsAre(3, 0, 0));
  // The parts land on different shards.
  EXPECT_NE(r->def.parts(0).shard_id(), r->def.parts(1).shard_id());
  // A part's name cannot be declared as a variable of its own.
  EXPECT_EQ(Get(Decl("emb/table/part_1", {1})).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, PartitionsAlongTheRequestedAxis) {
  VariableDeclaration d = Decl("cube", {2, 4, 2});
  d.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(1);
  d.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(2);
  d.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(1);
  auto r = Get(d);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->def.partition_axis(), 1);
  EXPECT_THAT(r->def.parts(0).shape().dims(), ElementsAre(2, 2, 2));
}

TEST_F(RegistryTest, ReusePartitionedWithOtherPartitionsFails) {
  ASSERT_TRUE(Get(Partitioned(Decl("p/w", {9, 2}), 3)).ok());
  for (int64_t n : {2, 1}) {
    auto r = Get(Partitioned(Decl("p/w", {9, 2}, REUSE_TRUE), n));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(),
                HasSubstr("Trying to reuse partitioned variable p/w, but specified partitions [" +
                          std::to_string(n) + ", 1] and found partitions [3, 1]"));
  }
  // Same partitioner, or none at all, returns the partitioned variable.
  auto same = Get(Partitioned(Decl("p/w", {9, 2}, REUSE_TRUE), 3));
  ASSERT_TRUE(same.ok());
  auto none = Get(Decl("p/w", {9, 2}, REUSE_TRUE));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->def.parts_size(), 3);
  EXPECT_EQ(Get(Partitioned(Decl("p/w", {9, 2}), 3)).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(RegistryTest, ScalarIgnoresThePartitioner) {
  auto r = Get(Partitioned(Decl("p/scalar", {}), 4));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->def.partitioned());
  EXPECT_THAT(PartNames(r->def), ElementsAre("p/scalar"));
}

TEST_F(RegistryTest, BadPartitionsAreRejected) {
  VariableDeclaration d = Decl("bad", {10, 43});
  d.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(11);
  d.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(1);
  EXPECT_THAT(Get(d).status().message(), HasSubstr("Cannot create 11 slices for size 10"));
  EXPECT_EQ(registry_->num_variables(), 0u);
}

TEST_F(RegistryTest, OtherSessionAttachesToTheSameVariable) {
  uint64_t other = *registry_->OpenSession("trainer 1");
  auto a = Get(Partitioned(Decl("shared/emb", {100, 8}), 4));
  auto b = Get(Partitioned(Decl("shared/emb", {100, 8}), 4), other);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status();
  EXPECT_TRUE(a->created);
  EXPECT_FALSE(b->created);
  EXPECT_EQ(a->def.SerializeAsString(), b->def.SerializeAsString());
  // The attaching session now holds the name: its rules apply to it.
  EXPECT_TRUE(Get(NoShape("shared/emb", REUSE_TRUE), other).ok());
  EXPECT_EQ(Get(Partitioned(Decl("shared/emb", {100, 8}), 4), other).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(RegistryTest, ConflictingDeclarationFromAnotherSessionNamesBoth) {
  uint64_t other = *registry_->OpenSession("trainer 1");
  ASSERT_TRUE(Get(Decl("shared/b", {16})).ok());
  VariableDeclaration conflict = Decl("shared/b", {32});
  conflict.set_declared_at("other.py:7");
  auto r = Get(conflict, other);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("shape [32] at other.py:7"));
  EXPECT_THAT(r.status().message(), HasSubstr("float32 shape [16] at model.py:11"));
  EXPECT_EQ(Get(Decl("shared/b", {16}, REUSE_FALSE, DT_DOUBLE), other).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Get(Partitioned(Decl("shared/b", {16}), 2), other).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Reuse of a name this session never declared is a miss, as in a graph.
  EXPECT_EQ(Get(Decl("shared/b", {16}, REUSE_TRUE), other).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, CollectionsDefaultAndListInCreationOrder) {
  ASSERT_TRUE(Get(Decl("z_first", {1})).ok());
  VariableDeclaration local = Decl("a_local", {1});
  local.set_trainable(false);
  local.add_collections(kLocalVariables);
  ASSERT_TRUE(Get(local).ok());
  VariableDeclaration avg = Decl("m_avg", {1});
  avg.set_trainable(false);
  avg.add_collections(kGlobalVariables);
  avg.add_collections(kMovingAverageVariables);
  avg.add_collections("my_stuff");
  ASSERT_TRUE(Get(avg).ok());
  auto names = [&](const std::string& c) {
    std::vector<std::string> out;
    for (const auto& d : registry_->List(c)) out.push_back(d.name());
    return out;
  };
  EXPECT_THAT(names(kGlobalVariables), ElementsAre("z_first", "m_avg"));
  EXPECT_THAT(names(kTrainableVariables), ElementsAre("z_first"));
  EXPECT_THAT(names(kLocalVariables), ElementsAre("a_local"));
  EXPECT_THAT(names(kMovingAverageVariables), ElementsAre("m_avg"));
  EXPECT_THAT(names("my_stuff"), ElementsAre("m_avg"));
  EXPECT_THAT(names(""), ElementsAre("z_first", "a_local", "m_avg"));
}

TEST_F(RegistryTest, BatchIsAllOrNothing) {
  std::vector<VariableDeclaration> batch = {Decl("b/1", {1}), Decl("b/2", {2}),
                                            Decl("b/1", {1})};  // duplicate: fails
  auto r = registry_->Declare(session_, batch, shards_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry_->num_variables(), 0u);
  EXPECT_EQ(Get(Decl("b/2", {2}, REUSE_TRUE)).status().code(), absl::StatusCode::kNotFound);
  batch.back() = Decl("b/1", {1}, REUSE_TRUE);  // later entries see earlier ones
  auto ok = registry_->Declare(session_, batch, shards_);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE((*ok)[0].created);
  EXPECT_FALSE((*ok)[2].created);
  EXPECT_EQ(registry_->num_variables(), 2u);
}

TEST_F(RegistryTest, DeleteForgetsTheNameEverywhere) {
  ASSERT_TRUE(Get(Decl("gone", {4})).ok());
  auto def = registry_->Delete("gone");
  ASSERT_TRUE(def.ok());
  EXPECT_THAT(PartNames(*def), ElementsAre("gone"));
  EXPECT_EQ(registry_->Lookup("gone").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Delete("gone").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Get(Decl("gone", {4})).ok());  // may be created again
  EXPECT_TRUE(registry_->Placement().size() == 1u);
}

TEST_F(RegistryTest, ClosedSessionIsNotFound) {
  ASSERT_TRUE(registry_->CloseSession(session_).ok());
  EXPECT_EQ(Get(Decl("v", {1})).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->CloseSession(session_).code(), absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, NoLiveShardIsUnavailable) {
  shards_.clear();
  EXPECT_EQ(Get(Decl("v", {1})).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(RegistryTest, BigEmbeddingSpreadsOverShards) {
  ASSERT_TRUE(Get(Decl("small", {10})).ok());  // 40 bytes on shard 0
  auto r = Get(Partitioned(Decl("emb", {6000, 16}), 6));
  ASSERT_TRUE(r.ok());
  auto placement = registry_->Placement();
  ASSERT_EQ(placement.size(), 3u);
  EXPECT_EQ(placement[0].parts, 3);  // "small" + 2 parts
  EXPECT_EQ(placement[1].parts, 2);
  EXPECT_EQ(placement[2].parts, 2);
  EXPECT_EQ(placement[1].bytes, 2 * 1000 * 16 * 4);
  EXPECT_EQ(registry_->PartsOnShard(1).size(), 2u);
}

TEST_F(RegistryTest, ConcurrentDeclarationsYieldOneVariableEach) {
  constexpr int kThreads = 8, kNames = 40;
  std::vector<uint64_t> sessions;
  for (int t = 0; t < kThreads; ++t) sessions.push_back(*registry_->OpenSession("t"));
  std::vector<std::vector<std::string>> seen(kThreads);
  std::atomic<int> created{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kNames; ++i) {
        auto r = Get(Partitioned(Decl("c/v" + std::to_string(i), {12, 3}), 3), sessions[t]);
        ASSERT_TRUE(r.ok()) << r.status();
        if (r->created) ++created;
        seen[t].push_back(r->def.SerializeAsString());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(created.load(), kNames);
  EXPECT_EQ(registry_->num_variables(), static_cast<size_t>(kNames));
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]);
}

TEST_F(RegistryTest, ColocatedVariablesFollowTheirPrimaryPartByPart) {
  // Three parts over three shards by byte balancing.
  auto emb = Get(Partitioned(Decl("co/emb", {9, 4}), 3));
  ASSERT_TRUE(emb.ok()) << emb.status();
  std::vector<int32_t> primary;
  for (const auto& p : emb->def.parts()) primary.push_back(p.shard_id());
  // Unbalance the shards: byte balancing alone would now place differently.
  ASSERT_TRUE(Get(Decl("co/big", {1000})).ok());

  VariableDeclaration slot = Decl("co/emb/Adam", {9, 4}, REUSE_AUTO);
  slot.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(3);
  slot.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(1);
  slot.set_colocate_with("co/emb");
  VariableDeclaration power = Decl("co/beta1_power", {}, REUSE_AUTO);
  power.set_colocate_with("co/emb");
  auto both = registry_->Declare(session_, {slot, power}, shards_);
  ASSERT_TRUE(both.ok()) << both.status();
  const VariableDef& s = (*both)[0].def;
  EXPECT_THAT(PartNames(s), ElementsAre("co/emb/Adam/part_0", "co/emb/Adam/part_1",
                                        "co/emb/Adam/part_2"));
  for (int k = 0; k < 3; ++k) EXPECT_EQ(s.parts(k).shard_id(), primary[k]) << k;
  EXPECT_EQ(s.colocate_with(), "co/emb");
  EXPECT_EQ((*both)[1].def.parts(0).shard_id(), primary[0]);

  // A primary declared earlier in the same batch works too.
  VariableDeclaration w = Decl("co/w", {2});
  VariableDeclaration w_slot = Decl("co/w/Momentum", {2});
  w_slot.set_colocate_with("co/w");
  auto batch = registry_->Declare(session_, {w, w_slot}, shards_);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ((*batch)[1].def.parts(0).shard_id(), (*batch)[0].def.parts(0).shard_id());

  VariableDeclaration missing = Decl("co/x/Adam", {2});
  missing.set_colocate_with("co/x");
  EXPECT_THAT(Get(missing).status().message(), HasSubstr("cannot colocate co/x/Adam with co/x"));
  VariableDeclaration two = Partitioned(Decl("co/two", {9, 4}), 2);
  two.set_colocate_with("co/emb");
  auto r = Get(two);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("part counts must match"));
}

// The shards' own initializer check runs before anything is registered:
// what a shard would refuse at creation is refused here, naming the
// variable and the parameter.
TEST_F(RegistryTest, InitializersTheShardsWouldRefuseAreRefused) {
  VariableDeclaration d = Decl("u", {4});
  d.mutable_initializer()->mutable_random_uniform()->set_minval(1);
  d.mutable_initializer()->mutable_random_uniform()->set_maxval(0);
  auto r = Get(d);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr("variable 'u': random_uniform needs minval < maxval"));
  d.mutable_initializer()->mutable_random_normal()->set_stddev(-1);
  EXPECT_THAT(Get(d).status().message(), HasSubstr("stddev must be >= 0"));
  // A constant of another shape than the variable's.
  d.mutable_initializer()->mutable_constant()->mutable_value()->set_dtype(DT_FLOAT);
  d.mutable_initializer()->mutable_constant()->mutable_value()->mutable_shape()->add_dims(3);
  d.mutable_initializer()->mutable_constant()->mutable_value()->set_content(std::string(12, '\0'));
  EXPECT_EQ(Get(d).status().code(), absl::StatusCode::kInvalidArgument);
  // A string variable takes no random initializer.
  VariableDeclaration str = Decl("s", {2}, REUSE_FALSE, DT_STRING);
  str.mutable_initializer()->mutable_random_uniform()->set_maxval(1);
  EXPECT_THAT(Get(str).status().message(), HasSubstr("string variables take only"));
  // A batch holding one such declaration registers none of it.
  std::vector<VariableDeclaration> batch = {Decl("fine", {2}), d};
  EXPECT_FALSE(registry_->Declare(session_, batch, shards_).ok());
  EXPECT_EQ(registry_->num_variables(), 0u);
  EXPECT_TRUE(Get(Decl("u", {4})).ok());
}

// One name rule for the coordinator and the shards (psd/names.h): what a
// shard would refuse, the registry refuses first.
TEST_F(RegistryTest, NamesTheShardsWouldRefuseAreRefused) {
  EXPECT_THAT(Get(Decl("a>b", {1})).status().message(), HasSubstr("'>'"));
  EXPECT_EQ(Get(Decl("a\\b", {1})).status().code(), absl::StatusCode::kInvalidArgument);
  auto too_long = Get(Decl(std::string(kMaxNameBytes + 1, 'x'), {1}));
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_long.status().message(), HasSubstr("1025 bytes, over the limit of 1024 bytes"));
  EXPECT_TRUE(Get(Decl(std::string(kMaxNameBytes, 'x'), {1})).ok());
  // The parts' names are what the shards hold.
  auto parts = Get(Partitioned(Decl(std::string(kMaxNameBytes - 3, 'p'), {4}), 2));
  EXPECT_EQ(parts.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parts.status().message(), HasSubstr("/part_0"));
  // Scopes: the same characters, and paths within the limit.
  EXPECT_EQ(registry_->OpenScope(session_, "", "a>b", "", false, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto deep =
      registry_->OpenScope(session_, std::string(kMaxNameBytes, 's'), "t", "", false, false);
  EXPECT_EQ(deep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(deep.status().message(), HasSubstr("scope path"));
  EXPECT_EQ(registry_->num_variables(), 1u);
}

TEST_F(RegistryTest, PartsPerVariableAreCapped) {
  RegistryOptions options;
  options.max_parts_per_variable = 4;
  auto registry = std::move(Registry::Open(options)).value();
  const uint64_t session = *registry->OpenSession("t");
  EXPECT_TRUE(registry->GetVariable(session, Partitioned(Decl("four", {8}), 4), shards_).ok());
  auto five = registry->GetVariable(session, Partitioned(Decl("five", {8}), 5), shards_);
  EXPECT_EQ(five.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(five.status().message(),
              HasSubstr("'five' would have 5 parts, over the limit of 4 parts per variable"));
}

// PrepareDeclare checks and places without registering; CommitDeclare
// registers, unless what the batch was checked against changed in between.
TEST_F(RegistryTest, PreparedDeclarationsRegisterOnlyWhenCommitted) {
  const VariableDeclaration w = Decl("w", {4});
  auto prepared = registry_->PrepareDeclare(session_, absl::MakeConstSpan(&w, 1), shards_, 3);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  ASSERT_EQ(prepared->results.size(), 1u);
  EXPECT_TRUE(prepared->results[0].created);
  EXPECT_EQ(registry_->num_variables(), 0u);
  EXPECT_EQ(registry_->Placement().size(), 0u);
  ASSERT_TRUE(registry_->CommitDeclare(*prepared).ok());
  EXPECT_EQ(registry_->num_variables(), 1u);
  // A retry of the committed request is answered again, with nothing to do.
  auto again = registry_->PrepareDeclare(session_, absl::MakeConstSpan(&w, 1), shards_, 3);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->replayed);

  // x is placed beside w; w is deleted before x commits: ABORTED. y,
  // prepared at the same time and unrelated, commits all the same.
  VariableDeclaration x = Decl("x", {4});
  x.set_colocate_with("w");
  auto stale = registry_->PrepareDeclare(session_, absl::MakeConstSpan(&x, 1), shards_);
  ASSERT_TRUE(stale.ok()) << stale.status();
  const VariableDeclaration y = Decl("y", {4});
  auto unrelated = registry_->PrepareDeclare(session_, absl::MakeConstSpan(&y, 1), shards_);
  ASSERT_TRUE(unrelated.ok());
  ASSERT_TRUE(registry_->Delete("w").ok());
  absl::Status aborted = registry_->CommitDeclare(*stale);
  EXPECT_EQ(aborted.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(aborted.message(), HasSubstr("variable w was declared or deleted"));
  EXPECT_FALSE(registry_->Lookup("x").ok());
  ASSERT_TRUE(registry_->CommitDeclare(*unrelated).ok());
  EXPECT_TRUE(registry_->Lookup("y").ok());

  // Two batches creating one name: the second to commit is ABORTED, and
  // their creation numbers differ (they were taken when prepared).
  const VariableDeclaration z = Decl("z", {4});
  auto first = registry_->PrepareDeclare(session_, absl::MakeConstSpan(&z, 1), shards_);
  auto second = registry_->PrepareDeclare(*registry_->OpenSession("other"),
                                         absl::MakeConstSpan(&z, 1), shards_);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_NE(first->results[0].def.creation_seq(), second->results[0].def.creation_seq());
  ASSERT_TRUE(registry_->CommitDeclare(*second).ok());
  EXPECT_EQ(registry_->CommitDeclare(*first).code(), absl::StatusCode::kAborted);
}

// Sessions are bounded: past max_sessions OpenSession is refused, and a
// closed session makes room.
TEST(RegistrySessionsTest, OpenSessionsAreCapped) {
  RegistryOptions options;
  options.max_sessions = 3;
  auto registry = std::move(Registry::Open(options)).value();
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(*registry->OpenSession("trainer"));
  auto refused = registry->OpenSession("one too many");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("max_sessions"));
  ASSERT_TRUE(registry->CloseSession(ids[0]).ok());
  EXPECT_TRUE(registry->OpenSession("after a close").ok());
}

}  // namespace
}  // namespace psd
