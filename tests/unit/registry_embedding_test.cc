// Registry: embedding tables (VariableDeclaration.embedding, DeepRec's
// get_embedding_variable). Each declaration rule's refusal (naming the
// table and the value, registering nothing), the resolved defaults, reuse
// and attach with their conflicts, dense/table name conflicts, slot tables
// beside their primary part by part, deletion of a primary with its slots,
// placement's nominal part size, and a restart that keeps the tables.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>

#include "coordinator/placement.h"
#include "coordinator/registry.h"
#include "coordinator/registry_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/names.h"

namespace psd {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

VariableDeclaration Table(const std::string& name, int64_t dim, int64_t parts = 0,
                          Reuse reuse = REUSE_FALSE) {
  VariableDeclaration d;
  d.set_name(name);
  d.mutable_embedding()->set_embedding_dim(dim);
  if (parts > 0) d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(parts);
  d.set_reuse(reuse);
  d.set_declared_at("model.py:" + std::to_string(dim));
  return d;
}

VariableDeclaration Slot(const std::string& name, const std::string& primary) {
  VariableDeclaration d;
  d.set_name(name);
  d.mutable_embedding()->set_slot_of(primary);
  d.set_trainable(false);
  d.mutable_initializer()->mutable_constant()->mutable_value()->set_dtype(DT_FLOAT);
  d.mutable_initializer()->mutable_constant()->mutable_value()->set_content(
      std::string("\xcd\xcc\xcc\x3d", 4));  // 0.1f, Adagrad's initial accumulator
  d.set_declared_at("optimizer.py:1");
  return d;
}

VariableDeclaration Dense(const std::string& name, std::vector<int64_t> dims) {
  VariableDeclaration d;
  d.set_name(name);
  d.set_dtype(DT_FLOAT);
  for (int64_t x : dims) d.mutable_shape()->add_dims(x);
  d.set_declared_at("dense.py:1");
  return d;
}

std::vector<std::string> PartNames(const VariableDef& def) {
  std::vector<std::string> out;
  for (const auto& p : def.parts()) out.push_back(p.name());
  return out;
}

class RegistryEmbeddingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = std::move(Registry::Open({})).value();
    session_ = *registry_->OpenSession("test");
  }
  absl::StatusOr<DeclareResult> Get(const VariableDeclaration& d, uint64_t session = 0) {
    return registry_->GetVariable(session ? session : session_, d, shards_);
  }
  // `d` is refused INVALID_ARGUMENT (or `code`) with every one of `want` in
  // its message, and nothing is registered.
  void ExpectRefused(const VariableDeclaration& d, std::vector<std::string> want,
                     absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    const size_t before = registry_->num_variables();
    auto r = Get(d);
    ASSERT_FALSE(r.ok()) << d.ShortDebugString();
    EXPECT_EQ(r.status().code(), code) << r.status();
    for (const std::string& w : want) EXPECT_THAT(r.status().message(), HasSubstr(w));
    EXPECT_EQ(registry_->num_variables(), before);
    EXPECT_EQ(registry_->Lookup(d.name()).status().code(), absl::StatusCode::kNotFound);
  }

  std::unique_ptr<Registry> registry_;
  uint64_t session_ = 0;
  std::vector<int32_t> shards_ = {0, 1, 2};
};

TEST_F(RegistryEmbeddingTest, ATableIsDeclaredWithItsResolvedDefaults) {
  auto r = Get(Table("user/emb", 8));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->created);
  const VariableDef& def = r->def;
  ASSERT_TRUE(def.has_embedding());
  EXPECT_EQ(def.embedding().embedding_dim(), 8);
  EXPECT_EQ(def.embedding().key_dtype(), DT_INT64);  // DT_INVALID means int64, stored resolved
  EXPECT_EQ(def.dtype(), DT_FLOAT);
  EXPECT_THAT(def.shape().dims(), ElementsAre(8));
  EXPECT_FALSE(def.partitioned());
  EXPECT_THAT(PartNames(def), ElementsAre("user/emb"));
  EXPECT_THAT(def.parts(0).shape().dims(), ElementsAre(8));
  // DeepRec's default initializer: truncated_normal_initializer(), mean 0
  // stddev 1, with a seed drawn and recorded.
  ASSERT_TRUE(def.initializer().has_truncated_normal());
  EXPECT_EQ(def.initializer().truncated_normal().mean(), 0.0);
  EXPECT_EQ(def.initializer().truncated_normal().stddev(), 1.0);
  EXPECT_NE(def.initializer().seed(), 0);
  EXPECT_TRUE(def.trainable());
  EXPECT_THAT(def.collections(),
              ElementsAre("variables", "trainable_variables", "embedding_variables"));
  EXPECT_EQ(registry_->List("embedding_variables").size(), 1u);
  EXPECT_EQ(registry_->Lookup("user/emb")->SerializeAsString(), def.SerializeAsString());
}

TEST_F(RegistryEmbeddingTest, AcceptedValuesAreStoredResolved) {
  VariableDeclaration d = Table("t", 4);
  d.set_dtype(DT_DOUBLE);
  d.mutable_shape()->add_dims(4);
  d.mutable_embedding()->set_key_dtype(DT_INT32);
  auto* bloom = d.mutable_embedding()->mutable_bloom_filter();
  bloom->set_filter_freq(3);
  bloom->set_max_element_size(1000);
  bloom->set_false_positive_probability(0.01);
  d.mutable_embedding()->set_steps_to_live(100);
  d.mutable_embedding()->set_l2_weight_threshold(0.5);
  d.mutable_embedding()->set_part_memory_limit_bytes(1 << 20);
  d.mutable_initializer()->mutable_default_initializer();
  d.mutable_initializer()->set_seed(42);
  d.set_trainable(false);
  d.add_collections("my_tables");
  auto r = Get(d);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->def.dtype(), DT_DOUBLE);
  EXPECT_EQ(r->def.embedding().key_dtype(), DT_INT32);
  EXPECT_EQ(r->def.embedding().bloom_filter().counter_bits(), 8);  // 0 resolved to 8
  EXPECT_EQ(r->def.embedding().steps_to_live(), 100);
  ASSERT_TRUE(r->def.initializer().has_truncated_normal());
  EXPECT_EQ(r->def.initializer().seed(), 42);  // a declared seed is kept
  EXPECT_THAT(r->def.collections(), ElementsAre("my_tables", "embedding_variables"));

  VariableDeclaration c = Table("c", 2);
  c.mutable_initializer()->mutable_constant()->mutable_value()->set_dtype(DT_FLOAT);
  c.mutable_initializer()->mutable_constant()->mutable_value()->set_content(
      std::string("\0\0\x80\x3f", 4));  // a scalar 1.0f
  ASSERT_TRUE(Get(c).ok());
  for (auto kind : {+[](InitializerSpec* i) { i->mutable_zeros(); },
                    +[](InitializerSpec* i) { i->mutable_ones(); },
                    +[](InitializerSpec* i) { i->mutable_random_uniform()->set_maxval(1); },
                    +[](InitializerSpec* i) { i->mutable_random_normal()->set_stddev(1); }}) {
    VariableDeclaration k = Table("k" + std::to_string(registry_->num_variables()), 2);
    kind(k.mutable_initializer());
    EXPECT_TRUE(Get(k).ok()) << k.initializer().ShortDebugString();
  }
}

TEST_F(RegistryEmbeddingTest, EveryInvalidValueIsRefusedNamingTheTableAndTheValue) {
  struct Case {
    std::string what;
    std::function<void(VariableDeclaration*)> change;
    std::vector<std::string> want;
  };
  const std::vector<Case> cases = {
      {"dim 0",
       [](VariableDeclaration* d) { d->mutable_embedding()->set_embedding_dim(0); },
       {"embedding_dim must be in [1, 1048576], got 0"}},
      {"dim < 0",
       [](VariableDeclaration* d) { d->mutable_embedding()->set_embedding_dim(-3); },
       {"got -3"}},
      {"dim past the cap (a part's nominal size would overflow)",
       [](VariableDeclaration* d) {
         d->mutable_embedding()->set_embedding_dim(int64_t{1} << 60);
       },
       {"embedding_dim must be in [1, 1048576], got 1152921504606846976"}},
      {"shape of another dim",
       [](VariableDeclaration* d) { d->mutable_shape()->add_dims(4); },
       {"shape [4]", "[embedding_dim] = [8]"}},
      {"rank-2 shape",
       [](VariableDeclaration* d) {
         d->mutable_shape()->add_dims(100);
         d->mutable_shape()->add_dims(8);
       },
       {"shape [100, 8]"}},
      {"float keys",
       [](VariableDeclaration* d) { d->mutable_embedding()->set_key_dtype(DT_FLOAT); },
       {"key_dtype must be int64 or int32, got float32"}},
      {"string keys",
       [](VariableDeclaration* d) { d->mutable_embedding()->set_key_dtype(DT_STRING); },
       {"got string"}},
      {"integer values",
       [](VariableDeclaration* d) { d->set_dtype(DT_INT32); },
       {"dtype int32 is not a floating dtype"}},
      {"counter filter 0",
       [](VariableDeclaration* d) {
         d->mutable_embedding()->mutable_counter_filter()->set_filter_freq(0);
       },
       {"counter_filter.filter_freq must be >= 1, got 0"}},
      {"bloom freq 0",
       [](VariableDeclaration* d) {
         auto* b = d->mutable_embedding()->mutable_bloom_filter();
         b->set_max_element_size(10);
         b->set_false_positive_probability(0.1);
       },
       {"bloom_filter.filter_freq must be >= 1, got 0"}},
      {"bloom size 0",
       [](VariableDeclaration* d) {
         auto* b = d->mutable_embedding()->mutable_bloom_filter();
         b->set_filter_freq(2);
         b->set_false_positive_probability(0.1);
       },
       {"bloom_filter.max_element_size must be >= 1, got 0"}},
      {"bloom fpp 0",
       [](VariableDeclaration* d) {
         auto* b = d->mutable_embedding()->mutable_bloom_filter();
         b->set_filter_freq(2);
         b->set_max_element_size(10);
       },
       {"false_positive_probability must be in (0, 1), got 0"}},
      {"bloom fpp 1",
       [](VariableDeclaration* d) {
         auto* b = d->mutable_embedding()->mutable_bloom_filter();
         b->set_filter_freq(2);
         b->set_max_element_size(10);
         b->set_false_positive_probability(1.0);
       },
       {"false_positive_probability must be in (0, 1), got 1"}},
      {"bloom counter bits 12",
       [](VariableDeclaration* d) {
         auto* b = d->mutable_embedding()->mutable_bloom_filter();
         b->set_filter_freq(2);
         b->set_max_element_size(10);
         b->set_false_positive_probability(0.1);
         b->set_counter_bits(12);
       },
       {"counter_bits must be 8, 16 or 32 (0: 8), got 12"}},
      {"steps_to_live < 0",
       [](VariableDeclaration* d) { d->mutable_embedding()->set_steps_to_live(-1); },
       {"steps_to_live must be >= 0, got -1"}},
      {"l2 < 0",
       [](VariableDeclaration* d) { d->mutable_embedding()->set_l2_weight_threshold(-0.5); },
       {"l2_weight_threshold must be >= 0 and finite, got -0.5"}},
      {"l2 inf",
       [](VariableDeclaration* d) {
         d->mutable_embedding()->set_l2_weight_threshold(std::numeric_limits<double>::infinity());
       },
       {"l2_weight_threshold must be >= 0 and finite, got inf"}},
      {"l2 nan",
       [](VariableDeclaration* d) {
         d->mutable_embedding()->set_l2_weight_threshold(std::nan(""));
       },
       {"l2_weight_threshold must be >= 0 and finite, got nan"}},
      {"memory limit < 0",
       [](VariableDeclaration* d) { d->mutable_embedding()->set_part_memory_limit_bytes(-1); },
       {"part_memory_limit_bytes must be >= 0, got -1"}},
      {"min_max partitioner",
       [](VariableDeclaration* d) {
         d->mutable_partitioner()->mutable_min_max()->set_max_partitions(4);
       },
       {"partitioner min_max_variable_partitioner is not supported"}},
      {"variable_axis_size partitioner",
       [](VariableDeclaration* d) {
         d->mutable_partitioner()->mutable_variable_axis_size()->set_max_shard_bytes(1 << 20);
       },
       {"variable_axis_size_partitioner"}},
      {"explicit partitions",
       [](VariableDeclaration* d) {
         d->mutable_partitioner()->mutable_explicit_partitions()->add_partitions(2);
       },
       {"explicit partitions"}},
      {"fixed_size on axis 1",
       [](VariableDeclaration* d) {
         d->mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
         d->mutable_partitioner()->mutable_fixed_size()->set_axis(1);
       },
       {"fixed_size_partitioner axis 1 is not supported"}},
      {"fixed_size of 0",
       [](VariableDeclaration* d) {
         d->mutable_partitioner()->mutable_fixed_size()->set_num_shards(0);
       },
       {"num_shards must be >= 1, got 0"}},
      {"too many parts",
       [](VariableDeclaration* d) {
         d->mutable_partitioner()->mutable_fixed_size()->set_num_shards(kMaxPartsPerVariable + 1);
       },
       {std::to_string(kMaxPartsPerVariable + 1)}},
      {"UniformUnitScaling",
       [](VariableDeclaration* d) {
         d->mutable_initializer()->mutable_uniform_unit_scaling()->set_factor(1);
       },
       {"initializer UniformUnitScaling is not supported"}},
      {"FromVariable",
       [](VariableDeclaration* d) {
         d->mutable_initializer()->mutable_from_variable()->set_source("other");
       },
       {"initializer FromVariable is not supported"}},
      {"SuppliedValue",
       [](VariableDeclaration* d) {
         d->mutable_initializer()->mutable_supplied_value()->set_dtype(DT_FLOAT);
       },
       {"initializer SuppliedValue"}},
      {"non-scalar Constant",
       [](VariableDeclaration* d) {
         TensorProto* v = d->mutable_initializer()->mutable_constant()->mutable_value();
         v->set_dtype(DT_FLOAT);
         v->mutable_shape()->add_dims(8);
         v->set_content(std::string(32, '\0'));
       },
       {"initializer a non-scalar Constant is not supported"}},
      {"uniform with maxval <= minval",
       [](VariableDeclaration* d) {
         d->mutable_initializer()->mutable_random_uniform()->set_minval(1);
       },
       {"t"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    VariableDeclaration d = Table("t", 8);
    c.change(&d);
    std::vector<std::string> want = c.want;
    want.push_back("t");
    ExpectRefused(d, want);
  }
  EXPECT_TRUE(registry_->List("").empty());
  EXPECT_TRUE(registry_->Placement().empty());
}

TEST_F(RegistryEmbeddingTest, FixedSizePartitionerGivesNPartsOnDistinctShards) {
  auto r = Get(Table("t", 16, 3));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->def.partitioned());
  EXPECT_EQ(r->def.partition_axis(), 0);
  EXPECT_THAT(r->def.partitions(), ElementsAre(3));
  EXPECT_THAT(PartNames(r->def), ElementsAre("t/part_0", "t/part_1", "t/part_2"));
  std::set<int32_t> shards;
  for (const auto& p : r->def.parts()) {
    shards.insert(p.shard_id());
    EXPECT_THAT(p.shape().dims(), ElementsAre(16));
    EXPECT_TRUE(p.offset().empty());
  }
  EXPECT_EQ(shards.size(), 3u);
  // Each part counts its nominal size, not its [16] shape.
  for (const auto& [id, placed] : registry_->Placement()) {
    EXPECT_EQ(placed.bytes, NominalTablePartBytes(DT_FLOAT, 16)) << "shard " << id;
  }
  // One part (fixed_size(1)) is a partitioned table of one part, as for a
  // dense variable.
  auto one = Get(Table("one", 4, 1));
  ASSERT_TRUE(one.ok());
  EXPECT_THAT(PartNames(one->def), ElementsAre("one/part_0"));
}

TEST_F(RegistryEmbeddingTest, TablesAreBalancedAgainstDenseBytes) {
  // A 64 MB dense variable on shard 0; the table's parts avoid it.
  ASSERT_TRUE(Get(Dense("big", {16 << 20})).ok());
  auto r = Get(Table("t", 64, 2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->def.parts(0).shard_id(), registry_->Lookup("big")->parts(0).shard_id());
  EXPECT_NE(r->def.parts(1).shard_id(), registry_->Lookup("big")->parts(0).shard_id());
}

TEST_F(RegistryEmbeddingTest, ShardsWithLessFreeMemoryGetFewerParts) {
  shards_ = {0, 1};
  // Shard 1 has a quarter of shard 0's room.
  registry_->NoteShardFreeBytes({{0, int64_t{4} << 30}, {1, int64_t{1} << 30}});
  auto r = Get(Table("t", 64, 5));
  ASSERT_TRUE(r.ok()) << r.status();
  std::map<int32_t, int> parts;
  for (const auto& p : r->def.parts()) ++parts[p.shard_id()];
  EXPECT_EQ(parts[0], 4);
  EXPECT_EQ(parts[1], 1);
  // A shard without a limit has as much room as the roomiest limited one;
  // a full shard gets a part only once the others hold far more.
  shards_ = {0, 1, 2};
  registry_->NoteShardFreeBytes({{0, int64_t{1} << 30}, {1, 0}});
  auto u = Get(Table("u", 64, 4));
  ASSERT_TRUE(u.ok()) << u.status();
  for (const auto& p : u->def.parts()) EXPECT_NE(p.shard_id(), 1) << p.name();
  // Dense variables keep plain byte balancing.
  auto d = Get(Dense("d", {4}));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->def.parts(0).shard_id(), 1);
}

TEST_F(RegistryEmbeddingTest, ReuseFollowsTensorFlow) {
  ASSERT_TRUE(Get(Table("t", 8, 2)).ok());
  const VariableDef first = *registry_->Lookup("t");
  // AUTO_REUSE returns it, with or without the partitioner.
  auto again = Get(Table("t", 8, 2, REUSE_AUTO));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->def.SerializeAsString(), first.SerializeAsString());
  EXPECT_TRUE(Get(Table("t", 8, 0, REUSE_TRUE)).ok());
  // A second create in the session: TensorFlow's message.
  auto twice = Get(Table("t", 8, 2));
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(twice.status().message(),
              HasSubstr("Partitioned variable with name t already exists. Did you mean to set "
                        "reuse=True in VarScope? Originally defined at:\n\nmodel.py:8"));
  ASSERT_TRUE(Get(Table("u", 8)).ok());
  EXPECT_THAT(Get(Table("u", 8)).status().message(),
              HasSubstr("Variable u already exists, disallowed."));
  // reuse=True of a missing name.
  auto missing = Get(Table("nope", 8, 0, REUSE_TRUE));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("Variable nope does not exist"));
  // Reuse with another dim, key dtype, dtype, part count or policy.
  auto other_dim = Get(Table("t", 4, 0, REUSE_TRUE));
  EXPECT_EQ(other_dim.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(other_dim.status().message(), AllOf(HasSubstr("Trying to reuse embedding table t"),
                                                  HasSubstr("dim 4"), HasSubstr("dim 8")));
  VariableDeclaration key32 = Table("t", 8, 0, REUSE_AUTO);
  key32.mutable_embedding()->set_key_dtype(DT_INT32);
  EXPECT_THAT(Get(key32).status().message(), HasSubstr("key int32"));
  VariableDeclaration f64 = Table("t", 8, 0, REUSE_AUTO);
  f64.set_dtype(DT_DOUBLE);
  EXPECT_EQ(Get(f64).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Get(Table("t", 8, 3, REUSE_AUTO)).status().code(), absl::StatusCode::kInvalidArgument);
  VariableDeclaration filtered = Table("t", 8, 2, REUSE_AUTO);
  filtered.mutable_embedding()->mutable_counter_filter()->set_filter_freq(3);
  auto f = Get(filtered);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(), HasSubstr("filter_freq: 3"));
  EXPECT_EQ(registry_->num_variables(), 2u);
}

TEST_F(RegistryEmbeddingTest, AnotherSessionAttachesOnlyToTheSameTable) {
  VariableDeclaration d = Table("t", 8, 2);
  d.mutable_embedding()->mutable_counter_filter()->set_filter_freq(2);
  ASSERT_TRUE(Get(d).ok());
  const uint64_t other = *registry_->OpenSession("other");
  // Conflicts name both declarations and change nothing.
  VariableDeclaration no_filter = Table("t", 8, 2);
  no_filter.set_declared_at("trainer1.py:7");
  auto conflict = Get(no_filter, other);
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(conflict.status().message(),
              AllOf(HasSubstr("Conflicting declarations of embedding table t"),
                    HasSubstr("session " + std::to_string(other)), HasSubstr("trainer1.py:7"),
                    HasSubstr("session " + std::to_string(session_)), HasSubstr("model.py:8"),
                    HasSubstr("filter_freq: 2")));
  for (VariableDeclaration bad : {Table("t", 4, 2), Table("t", 8, 3), Table("t", 8)}) {
    *bad.mutable_embedding()->mutable_counter_filter() = d.embedding().counter_filter();
    EXPECT_EQ(Get(bad, other).status().code(), absl::StatusCode::kInvalidArgument)
        << bad.ShortDebugString();
  }
  VariableDeclaration key32 = d;
  key32.mutable_embedding()->set_key_dtype(DT_INT32);
  EXPECT_EQ(Get(key32, other).status().code(), absl::StatusCode::kInvalidArgument);
  // reuse=True of a name only another session declared: TensorFlow's miss.
  VariableDeclaration reuse = d;
  reuse.set_reuse(REUSE_TRUE);
  EXPECT_EQ(Get(reuse, other).status().code(), absl::StatusCode::kNotFound);
  // The same declaration attaches, after which the session holds the name.
  auto attached = Get(d, other);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_FALSE(attached->created);
  EXPECT_EQ(attached->def.SerializeAsString(), registry_->Lookup("t")->SerializeAsString());
  EXPECT_EQ(Get(d, other).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry_->num_variables(), 1u);
}

TEST_F(RegistryEmbeddingTest, ADenseVariableAndATableCannotShareAName) {
  ASSERT_TRUE(Get(Dense("d", {10, 8})).ok());
  VariableDeclaration table = Table("d", 8);
  table.set_reuse(REUSE_AUTO);
  auto r = Get(table);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), AllOf(HasSubstr("declares an embedding table"),
                                          HasSubstr("as a dense variable float32 shape [10, 8]")));
  ASSERT_TRUE(Get(Table("t", 8)).ok());
  VariableDeclaration dense = Dense("t", {8});
  dense.set_reuse(REUSE_AUTO);
  auto r2 = Get(dense);
  EXPECT_EQ(r2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r2.status().message(),
              AllOf(HasSubstr("declares a dense variable"), HasSubstr("as an embedding table")));
  // From another session too.
  const uint64_t other = *registry_->OpenSession("other");
  EXPECT_THAT(Get(Dense("t", {8}), other).status().message(),
              HasSubstr("declares a dense variable"));
  EXPECT_EQ(registry_->num_variables(), 2u);
  // A dense variable cannot be initialized from a table.
  VariableDeclaration from = Dense("copy", {8});
  from.mutable_initializer()->mutable_from_variable()->set_source("t");
  ExpectRefused(from, {"copy", "t", "embedding table"});
}

TEST_F(RegistryEmbeddingTest, ASlotSitsBesideItsPrimaryPartByPart) {
  shards_ = {0, 1, 2, 3, 4};
  // Load the low shards so byte balancing alone would not put the slot's
  // parts where the primary's are.
  ASSERT_TRUE(Get(Table("t", 8, 3)).ok());
  ASSERT_TRUE(Get(Dense("filler", {1 << 24})).ok());
  const VariableDef primary = *registry_->Lookup("t");
  auto r = Get(Slot("t/Adagrad", "t"));
  ASSERT_TRUE(r.ok()) << r.status();
  const VariableDef& slot = r->def;
  EXPECT_THAT(PartNames(slot),
              ElementsAre("t/Adagrad/part_0", "t/Adagrad/part_1", "t/Adagrad/part_2"));
  for (int k = 0; k < 3; ++k) EXPECT_EQ(slot.parts(k).shard_id(), primary.parts(k).shard_id());
  // The primary's dim, dtype, key dtype and policies; its own initializer.
  EXPECT_EQ(slot.embedding().slot_of(), "t");
  EmbeddingSpec expected = primary.embedding();
  expected.set_slot_of("t");
  EXPECT_EQ(slot.embedding().SerializeAsString(), expected.SerializeAsString());
  EXPECT_EQ(slot.dtype(), primary.dtype());
  EXPECT_THAT(slot.shape().dims(), ElementsAre(8));
  EXPECT_TRUE(slot.partitioned());
  EXPECT_TRUE(slot.initializer().has_constant());
  EXPECT_FALSE(slot.trainable());
  EXPECT_THAT(slot.collections(), ElementsAre("variables", "embedding_variables"));
  // Reuse of the slot as declared returns it.
  VariableDeclaration again = Slot("t/Adagrad", "t");
  again.set_reuse(REUSE_AUTO);
  EXPECT_FALSE(Get(again)->created);
  // An unpartitioned primary: one slot part named like the slot.
  ASSERT_TRUE(Get(Table("u", 4)).ok());
  auto us = Get(Slot("u/Adagrad", "u"));
  ASSERT_TRUE(us.ok()) << us.status();
  EXPECT_THAT(PartNames(us->def), ElementsAre("u/Adagrad"));
  EXPECT_EQ(us->def.parts(0).shard_id(), registry_->Lookup("u")->parts(0).shard_id());
}

TEST_F(RegistryEmbeddingTest, ASlotAndItsPrimaryInOneBatch) {
  std::vector<VariableDeclaration> batch = {Table("t", 8, 2), Slot("t/Ftrl", "t")};
  auto r = registry_->Declare(session_, batch, shards_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[1].def.parts(1).shard_id(), (*r)[0].def.parts(1).shard_id());
}

TEST_F(RegistryEmbeddingTest, ASlotThatCannotFollowItsPrimaryIsRefused) {
  ExpectRefused(Slot("missing/Adagrad", "missing"),
                {"missing/Adagrad", "missing", "does not exist"}, absl::StatusCode::kNotFound);
  ASSERT_TRUE(Get(Dense("d", {4, 8})).ok());
  ExpectRefused(Slot("d/Adagrad", "d"),
                {"d/Adagrad", "d", "dense variable", "not an embedding table"});
  ASSERT_TRUE(Get(Table("t", 8, 2)).ok());
  ASSERT_TRUE(Get(Slot("t/Adagrad", "t")).ok());
  ExpectRefused(Slot("t/Adagrad/Adagrad", "t/Adagrad"), {"is itself a slot table"});
  VariableDeclaration dim = Slot("t/a", "t");
  dim.mutable_embedding()->set_embedding_dim(4);
  ExpectRefused(dim, {"t/a", "embedding_dim 4", "primary's 8"});
  VariableDeclaration key = Slot("t/a", "t");
  key.mutable_embedding()->set_key_dtype(DT_INT32);
  ExpectRefused(key, {"key_dtype int32", "int64"});
  VariableDeclaration dtype = Slot("t/a", "t");
  dtype.set_dtype(DT_DOUBLE);
  ExpectRefused(dtype, {"dtype float64", "float32"});
  VariableDeclaration parts = Slot("t/a", "t");
  parts.mutable_partitioner()->mutable_fixed_size()->set_num_shards(3);
  ExpectRefused(parts, {"partitioning 3 parts", "2 parts"});
  VariableDeclaration policy = Slot("t/a", "t");
  policy.mutable_embedding()->set_steps_to_live(9);
  ExpectRefused(policy, {"policies", "steps_to_live: 9"});
  // Reusing the slot as a slot of another variable, missing or dense.
  VariableDeclaration moved = Slot("t/Adagrad", "elsewhere");
  moved.set_reuse(REUSE_AUTO);
  EXPECT_THAT(Get(moved).status().message(),
              AllOf(HasSubstr("t/Adagrad"), HasSubstr("elsewhere, which does not exist")));
  moved.mutable_embedding()->set_slot_of("d");
  EXPECT_THAT(Get(moved).status().message(),
              AllOf(HasSubstr("slot of d, which is a dense variable"),
                    HasSubstr("not an embedding table")));
  EXPECT_EQ(registry_->num_variables(), 3u);
  // Values that agree with the primary are accepted.
  VariableDeclaration same = Slot("t/b", "t");
  same.mutable_embedding()->set_embedding_dim(8);
  same.mutable_embedding()->set_key_dtype(DT_INT64);
  same.set_dtype(DT_FLOAT);
  same.mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
  EXPECT_TRUE(Get(same).ok());
}

TEST_F(RegistryEmbeddingTest, DeletingATableDeletesItsSlots) {
  ASSERT_TRUE(Get(Table("t", 8, 2)).ok());
  ASSERT_TRUE(Get(Slot("t/Adagrad", "t")).ok());
  ASSERT_TRUE(Get(Slot("t/Momentum", "t")).ok());
  ASSERT_TRUE(Get(Table("other", 8)).ok());
  ASSERT_TRUE(Get(Slot("other/Adagrad", "other")).ok());
  // A slot alone goes alone.
  auto alone = registry_->DeleteWithSlots("t/Momentum");
  ASSERT_TRUE(alone.ok());
  ASSERT_EQ(alone->size(), 1u);
  auto deleted = registry_->DeleteWithSlots("t");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  ASSERT_EQ(deleted->size(), 2u);
  EXPECT_EQ((*deleted)[0].name(), "t/Adagrad");  // slots first
  EXPECT_EQ((*deleted)[1].name(), "t");
  EXPECT_EQ(registry_->Lookup("t/Adagrad").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(registry_->Lookup("other/Adagrad").ok());
  EXPECT_EQ(registry_->num_variables(), 2u);
  // Delete (one variable's answer) deletes the slots too.
  ASSERT_TRUE(registry_->Delete("other").ok());
  EXPECT_EQ(registry_->num_variables(), 0u);
  EXPECT_TRUE(registry_->Placement().empty());
  // The names are free again.
  EXPECT_TRUE(Get(Table("t", 4)).ok());
}

class RegistryEmbeddingRestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/registry_embedding_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::unique_ptr<Registry> Open() {
    RegistryOptions options;
    options.state_dir = dir_;
    auto r = Registry::Open(options);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  std::string dir_;
  std::vector<int32_t> shards_ = {0, 1};
};

TEST_F(RegistryEmbeddingRestartTest, ARestartKeepsTablesFromTheLogAndFromASnapshot) {
  for (bool compact : {false, true}) {
    SCOPED_TRACE(compact ? "snapshot" : "log");
    std::filesystem::remove_all(dir_);
    uint64_t session;
    std::string table, slot;
    std::map<int32_t, ShardPlacement> placement;
    {
      auto registry = Open();
      session = *registry->OpenSession("trainer");
      VariableDeclaration d = Table("t", 8, 2);
      d.mutable_embedding()->mutable_counter_filter()->set_filter_freq(3);
      d.mutable_embedding()->set_steps_to_live(1000);
      auto r = registry->GetVariable(session, d, shards_);
      ASSERT_TRUE(r.ok()) << r.status();
      table = r->def.SerializeAsString();
      auto s = registry->GetVariable(session, Slot("t/Adagrad", "t"), shards_);
      ASSERT_TRUE(s.ok()) << s.status();
      slot = s->def.SerializeAsString();
      ASSERT_TRUE(registry->GetVariable(session, Table("gone", 4), shards_).ok());
      ASSERT_TRUE(registry->GetVariable(session, Slot("gone/Adagrad", "gone"), shards_).ok());
      ASSERT_TRUE(registry->Delete("gone").ok());
      placement = registry->Placement();
      if (compact) ASSERT_TRUE(registry->Compact().ok());
    }  // dropped without any shutdown step, like a killed process
    auto registry = Open();
    ASSERT_NE(registry, nullptr);
    EXPECT_EQ(registry->num_variables(), 2u);
    EXPECT_EQ(registry->Lookup("t")->SerializeAsString(), table);
    EXPECT_EQ(registry->Lookup("t/Adagrad")->SerializeAsString(), slot);
    EXPECT_EQ(registry->Lookup("gone/Adagrad").status().code(), absl::StatusCode::kNotFound);
    for (const auto& [id, p] : placement) {
      EXPECT_EQ(registry->Placement()[id].bytes, p.bytes) << "shard " << id;
      EXPECT_EQ(registry->Placement()[id].parts, p.parts) << "shard " << id;
    }
    // The session still holds the name; another attaches to the same table.
    VariableDeclaration d = Table("t", 8, 2);
    d.mutable_embedding()->mutable_counter_filter()->set_filter_freq(3);
    d.mutable_embedding()->set_steps_to_live(1000);
    EXPECT_EQ(registry->GetVariable(session, d, shards_).status().code(),
              absl::StatusCode::kAlreadyExists);
    const uint64_t other = *registry->OpenSession("other");
    auto attached = registry->GetVariable(other, d, shards_);
    ASSERT_TRUE(attached.ok()) << attached.status();
    EXPECT_EQ(attached->def.SerializeAsString(), table);
  }
}

}  // namespace
}  // namespace psd
