// Embedding tables (Session::GetEmbeddingVariable, EmbeddingVariable)
// against a real coordinator and two shards: rows made on first use the
// same on every part count, ops by key with repeated keys, admission,
// optimizer applies with slot tables, delete and eviction, export/import,
// and bad requests refused by name with nothing changed.
#include "psd/embedding_variable.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "checkpoint/bundle_reader.h"
#include "gtest/gtest.h"
#include "psd/embedding_keys.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/shard.pb.h"
#include "shared_cluster_test.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::EmbeddingVariable;
using client::EmbeddingVariableOptions;
using client::KeyedOpOptions;

namespace init = client::init;
namespace partitioners = client::partitioners;

Tensor Keys(const std::vector<int64_t>& keys) {
  return *Tensor::FromVector(TensorShape({static_cast<int64_t>(keys.size())}), keys);
}
Tensor Rows(int64_t n, int64_t dim, const std::vector<float>& values) {
  return *Tensor::FromVector(TensorShape({n, dim}), values);
}
std::vector<float> Row(const Tensor& rows, int64_t i) {
  const int64_t dim = rows.shape().dims().back();
  return std::vector<float>(rows.data<float>() + i * dim, rows.data<float>() + (i + 1) * dim);
}

class EmbeddingTest : public SharedClusterTest<EmbeddingTest> {
 protected:
  EmbeddingVariable Table(const std::string& name, EmbeddingVariableOptions options) {
    auto t = session_->GetEmbeddingVariable(name, options);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : EmbeddingVariable();
  }
};

TEST_F(EmbeddingTest, RowsAreMadeOnFirstUseTheSameWhateverThePartitioning) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 8;
  o.initializer = init::RandomNormal(0, 1, /*seed=*/42);
  o.partitioner = partitioners::FixedSize(3);
  EmbeddingVariable three = Table("rows_three_parts", o);
  o.partitioner.reset();
  EmbeddingVariable one = Table("rows_one_part", o);
  ASSERT_TRUE(three.valid() && one.valid());
  EXPECT_EQ(three.num_parts(), 3);
  EXPECT_EQ(one.num_parts(), 1);

  const Tensor keys = Keys({5, -3, 5, int64_t{1} << 40, 0});
  auto a = three.Gather(keys);
  auto b = one.Gather(keys);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->shape(), TensorShape({5, 8}));
  EXPECT_EQ(*a, *b) << "the initial row of a key depends on the seed and the key only";
  EXPECT_EQ(Row(*a, 0), Row(*a, 2)) << "a repeated key gets its one row";
  EXPECT_NE(Row(*a, 0), Row(*a, 1));
  auto size = three.Size();
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(*size, 4) << "one row per distinct key looked up";
  // Looked up again, the rows are those stored.
  auto again = three.Gather(keys);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *a);
  // An inference lookup makes no row.
  auto peek = three.Gather(Keys({777}), KeyedOpOptions{.inference = true});
  ASSERT_TRUE(peek.ok()) << peek.status();
  EXPECT_EQ(*three.Size(), 4);
  // A key deleted and used again gets the same initial row: it depends on
  // nothing the table has seen.
  ASSERT_TRUE(IsOk(three.ScatterAdd(Keys({-3}), Tensor::Scalar<float>(5))));
  ASSERT_TRUE(three.DeleteKeys(Keys({-3})).ok());
  auto remade = three.Gather(Keys({-3}));
  ASSERT_TRUE(remade.ok());
  EXPECT_EQ(Row(*remade, 0), Row(*a, 1));
}

TEST_F(EmbeddingTest, AdmissionCountsAreExactUnderConcurrentTrainers) {
  // Four trainers (sessions) look up the same 20 keys 10 times each: 40
  // counted lookups per key. A table admitting at the 40th use admits them
  // all; one admitting at the 41st none.
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Ones();
  o.partitioner = partitioners::FixedSize(2);
  o.ev_option.mutable_counter_filter()->set_filter_freq(40);
  ASSERT_TRUE(Table("admit_at_40", o).valid());
  o.ev_option.mutable_counter_filter()->set_filter_freq(41);
  ASSERT_TRUE(Table("admit_at_41", o).valid());
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 20; ++i) ids.push_back(i * 7777 + 3);
  std::vector<std::thread> trainers;
  std::vector<absl::Status> failures(4);
  for (int t = 0; t < 4; ++t) {
    trainers.emplace_back([&, t] {
      auto session = client::Session::Open(cluster_->coordinator_address());
      if (!session.ok()) {
        failures[t] = session.status();
        return;
      }
      for (const char* name : {"admit_at_40", "admit_at_41"}) {
        EmbeddingVariableOptions attach = o;
        attach.ev_option.mutable_counter_filter()->set_filter_freq(
            std::string(name) == "admit_at_40" ? 40 : 41);
        auto table = (*session)->GetEmbeddingVariable(name, attach);
        if (!table.ok()) {
          failures[t] = table.status();
          return;
        }
        for (int i = 0; i < 10; ++i) {
          absl::Status s = table->Gather(Keys(ids)).status();
          if (!s.ok()) failures[t] = s;
        }
      }
    });
  }
  for (auto& t : trainers) t.join();
  for (const absl::Status& s : failures) ASSERT_TRUE(IsOk(s));
  o.ev_option.mutable_counter_filter()->set_filter_freq(40);
  o.reuse = REUSE_TRUE;  // declared by this session already
  auto at40 = session_->GetEmbeddingVariable("admit_at_40", o);
  ASSERT_TRUE(at40.ok());
  o.ev_option.mutable_counter_filter()->set_filter_freq(41);
  auto at41 = session_->GetEmbeddingVariable("admit_at_41", o);
  ASSERT_TRUE(at41.ok());
  EXPECT_EQ(*at40->Size(), 20);
  EXPECT_EQ(*at41->Size(), 0);
  auto rows = at41->Gather(Keys(ids));  // the 41st use: admitted now
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(*at41->Size(), 20);
}

TEST_F(EmbeddingTest, ScattersByKeyAccumulateRepeatsAndUpdateKeepsTheLast) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  EmbeddingVariable t = Table("scatter_table", o);
  ASSERT_TRUE(t.valid());
  ASSERT_TRUE(IsOk(t.ScatterAdd(Keys({7, 7, 9}), Rows(3, 2, {1, 1, 2, 2, 3, 3}))));
  ASSERT_TRUE(IsOk(t.ScatterSub(Keys({9}), Rows(1, 2, {1, 0}))));
  auto rows = t.Gather(Keys({7, 9}));
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(Row(*rows, 0), (std::vector<float>{3, 3}));
  EXPECT_EQ(Row(*rows, 1), (std::vector<float>{2, 3}));
  ASSERT_TRUE(IsOk(t.ScatterUpdate(Keys({7, 7}), Rows(2, 2, {4, 4, 5, 6}))));
  rows = t.Gather(Keys({7}));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(Row(*rows, 0), (std::vector<float>{5, 6}));
  // A scalar is broadcast.
  ASSERT_TRUE(IsOk(t.ScatterAdd(Keys({9}), Tensor::Scalar<float>(1))));
  rows = t.Gather(Keys({9}));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(Row(*rows, 0), (std::vector<float>{3, 4}));
}

TEST_F(EmbeddingTest, ACounterFilterAdmitsAKeyAtItsNthUse) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 3;
  o.initializer = init::Ones();
  o.ev_option.mutable_counter_filter()->set_filter_freq(3);
  o.ev_option.set_default_value_no_permission(0.5);
  EmbeddingVariable t = Table("admission_table", o);
  ASSERT_TRUE(t.valid());
  const std::vector<float> pending = {0.5, 0.5, 0.5};
  for (int i = 0; i < 2; ++i) {
    auto rows = t.Gather(Keys({11}));
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(Row(*rows, 0), pending) << "lookup " << i + 1 << " of a key not admitted";
  }
  EXPECT_EQ(*t.Size(), 0);
  auto rows = t.Gather(Keys({11}));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(Row(*rows, 0), (std::vector<float>{1, 1, 1})) << "admitted at the third use";
  EXPECT_EQ(*t.Size(), 1);
  // An update of a key not admitted is counted and dropped.
  ASSERT_TRUE(IsOk(t.ScatterAdd(Keys({12}), Rows(1, 3, {9, 9, 9}))));
  rows = t.Gather(Keys({12}));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(Row(*rows, 0), pending);
}

TEST_F(EmbeddingTest, AdagradAppliesToRowsAndTheirSlotRows) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Constant(Tensor::Scalar<float>(1));
  o.partitioner = partitioners::FixedSize(2);
  EmbeddingVariable t = Table("adagrad_table", o);
  ASSERT_TRUE(t.valid());
  EmbeddingVariableOptions s = o;
  s.initializer = init::Constant(Tensor::Scalar<float>(0.1f));
  s.slot_of = t.name();
  s.trainable = false;
  EmbeddingVariable accum = Table("adagrad_table/Adagrad", s);
  ASSERT_TRUE(accum.valid());
  OptimizerSpec spec;
  spec.mutable_adagrad()->set_learning_rate(0.5);
  // Key 3 twice: its gradients are summed first (2, 2).
  ASSERT_TRUE(IsOk(t.ApplySparse(spec, {accum}, Keys({3, 4, 3}),
                                 Rows(3, 2, {1, 1, 1, 2, 1, 1}),
                                 KeyedOpOptions{.global_step = 7})));
  auto rows = t.Gather(Keys({3, 4}));
  ASSERT_TRUE(rows.ok()) << rows.status();
  auto expect = [](float g) {
    const float acc = 0.1f + g * g;
    return 1.0f - 0.5f * g / std::sqrt(acc);
  };
  EXPECT_FLOAT_EQ(Row(*rows, 0)[0], expect(2));
  EXPECT_FLOAT_EQ(Row(*rows, 1)[0], expect(1));
  EXPECT_FLOAT_EQ(Row(*rows, 1)[1], expect(2));
  auto acc = accum.Gather(Keys({3, 4, 5}));
  ASSERT_TRUE(acc.ok()) << acc.status();
  EXPECT_FLOAT_EQ(Row(*acc, 0)[0], 0.1f + 4);
  EXPECT_FLOAT_EQ(Row(*acc, 1)[1], 0.1f + 4);
  EXPECT_FLOAT_EQ(Row(*acc, 2)[0], 0.1f) << "a slot row never applied reads as its initial row";
  // The versions record the step.
  auto exported = t.Export({accum});
  ASSERT_TRUE(exported.ok()) << exported.status();
  ASSERT_EQ(exported->keys.num_elements(), 2);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(exported->versions.data<int64_t>()[i], 7);
  ASSERT_EQ(exported->slot_values.size(), 1u);
}

TEST_F(EmbeddingTest, DeleteAndEvictionRemoveRows) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  o.ev_option.set_steps_to_live(5);
  EmbeddingVariable t = Table("evict_table", o);
  ASSERT_TRUE(t.valid());
  ASSERT_TRUE(IsOk(t.ScatterAdd(Keys({1, 2}), Tensor::Scalar<float>(1), {.global_step = 1})));
  ASSERT_TRUE(IsOk(t.ScatterAdd(Keys({3, 4}), Tensor::Scalar<float>(1), {.global_step = 10})));
  EXPECT_EQ(*t.Size(), 4);
  auto evicted = t.Evict(12);
  ASSERT_TRUE(evicted.ok()) << evicted.status();
  EXPECT_EQ(*evicted, 2) << "rows last updated at step 1 are older than 5 steps at step 12";
  EXPECT_EQ(*t.Size(), 2);
  auto deleted = t.DeleteKeys(Keys({3, 99}));
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 1);
  EXPECT_EQ(*t.Size(), 1);
  auto rows = t.Gather(Keys({4, 3}));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(Row(*rows, 0), (std::vector<float>{1, 1}));
  EXPECT_EQ(Row(*rows, 1), (std::vector<float>{0, 0})) << "a deleted key starts over";
}

TEST_F(EmbeddingTest, ExportThenImportCarriesRowsFrequenciesAndVersions) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 4;
  o.initializer = init::RandomUniform(-1, 1, /*seed=*/5);
  o.partitioner = partitioners::FixedSize(2);
  EmbeddingVariable from = Table("export_from", o);
  o.partitioner = partitioners::FixedSize(3);
  o.initializer = init::Zeros();
  EmbeddingVariable to = Table("import_to", o);
  ASSERT_TRUE(from.valid() && to.valid());
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 100; ++i) ids.push_back(i * 7919 - 300);
  ASSERT_TRUE(IsOk(from.ScatterAdd(Keys(ids), Tensor::Scalar<float>(2), {.global_step = 3})));
  auto exported = from.Export();
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->keys.num_elements(), 100);
  ASSERT_TRUE(IsOk(to.Import(*exported)));
  EXPECT_EQ(*to.Size(), 100);
  auto a = from.Gather(Keys(ids));
  auto b = to.Gather(Keys(ids));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b) << "the rows moved into three parts by key hash";
  auto again = to.Export();
  ASSERT_TRUE(again.ok());
  for (int64_t i = 0; i < again->versions.num_elements(); ++i) {
    EXPECT_EQ(again->versions.data<int64_t>()[i], 3);
  }
}

TEST_F(EmbeddingTest, BadRequestsAreRefusedByNameAndChangeNothing) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Zeros();
  EmbeddingVariable t = Table("bad_input_table", o);
  ASSERT_TRUE(t.valid());
  ASSERT_TRUE(IsOk(t.ScatterAdd(Keys({1}), Tensor::Scalar<float>(1))));
  Tensor int32_keys = *Tensor::FromVector(TensorShape({1}), std::vector<int32_t>{1});
  EXPECT_TRUE(IsError(t.Gather(int32_keys).status(), absl::StatusCode::kInvalidArgument,
                      {"bad_input_table", "int32"}));
  EXPECT_TRUE(IsError(t.ScatterAdd(Keys({1, 2}), Rows(1, 2, {5, 5})),
                      absl::StatusCode::kInvalidArgument, {"bad_input_table", "[2,2]"}));
  EXPECT_EQ(*t.Size(), 1);
  // A dense op on the table's part, straight to its shard.
  auto shard = client::ShardClient::Connect(t.parts()[0].shard_address);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_TRUE(IsError((*shard)->Read(t.parts()[0].name).status(),
                      absl::StatusCode::kInvalidArgument, {"bad_input_table", "embedding table"}));
  EXPECT_TRUE(IsError((*shard)->AssignAdd(t.parts()[0].name, Tensor::Scalar<float>(1)),
                      absl::StatusCode::kInvalidArgument, {"embedding table"}));
  auto rows = t.Gather(Keys({1}));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(Row(*rows, 0), (std::vector<float>{1, 1}));
}

TEST_F(EmbeddingTest, APartAtItsMemoryCapRefusesNewRowsByName) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 64;
  o.initializer = init::Zeros();
  o.ev_option.set_part_memory_limit_bytes(64 << 10);
  EmbeddingVariable t = Table("capped_table", o);
  ASSERT_TRUE(t.valid());
  std::vector<int64_t> ids(4096);
  for (int64_t i = 0; i < 4096; ++i) ids[i] = i;
  auto rows = t.Gather(Keys(ids));
  EXPECT_TRUE(IsError(rows.status(), absl::StatusCode::kResourceExhausted, {"capped_table"}));
  EXPECT_EQ(*t.Size(), 0) << "a refused op makes no row";
  rows = t.Gather(Keys({1, 2, 3}));
  EXPECT_TRUE(rows.ok()) << rows.status();
}

TEST_F(EmbeddingTest, AnotherTrainerAttachesAndAConflictingDeclarationIsRefused) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 4;
  o.initializer = init::Ones();
  o.partitioner = partitioners::FixedSize(2);
  EmbeddingVariable t = Table("shared_table", o);
  ASSERT_TRUE(t.valid());
  ASSERT_TRUE(IsOk(t.ScatterAdd(Keys({42}), Tensor::Scalar<float>(1))));
  auto other = NewSession();
  ASSERT_NE(other, nullptr);
  auto attached = other->GetEmbeddingVariable("shared_table", o);
  ASSERT_TRUE(attached.ok()) << attached.status();
  auto rows = attached->Gather(Keys({42}));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(Row(*rows, 0), (std::vector<float>{2, 2, 2, 2}));
  // In the session that holds the name a second create is TensorFlow's
  // ALREADY_EXISTS; from a third trainer another dim is a conflict.
  o.embedding_dim = 8;
  EXPECT_TRUE(IsError(other->GetEmbeddingVariable("shared_table", o).status(),
                      absl::StatusCode::kAlreadyExists, {"shared_table"}));
  auto third = NewSession();
  ASSERT_NE(third, nullptr);
  EXPECT_TRUE(IsError(third->GetEmbeddingVariable("shared_table", o).status(),
                      absl::StatusCode::kInvalidArgument, {"shared_table", "dim 8", "dim 4"}));
  // A dense variable of that name is a conflict too.
  client::GetVariableOptions dense;
  dense.shape = TensorShape({4});
  EXPECT_FALSE(other->GetVariable("shared_table", dense).ok());
}

// Checkpoints with tables: DeepRec's layout in TensorFlow's format, one cut
// with the dense variables, restored exactly (rows made after the save
// gone) and into another part count.
class EmbeddingCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_emb_ckpt_");
    ASSERT_FALSE(dir_.empty());
    TestClusterOptions options;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir_};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    auto session = client::Session::Open(cluster_->coordinator_address());
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *std::move(session);
    auto saver = client::Saver::Create(cluster_->coordinator_address());
    ASSERT_TRUE(saver.ok()) << saver.status();
    saver_ = *std::move(saver);
  }
  void TearDown() override {
    saver_.reset();
    session_.reset();
    cluster_.reset();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<client::Session> session_;
  std::unique_ptr<client::Saver> saver_;
};

TEST_F(EmbeddingCheckpointTest, SaveWritesDeepRecTensorsAndRestoreBringsBackExactlyTheCut) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 4;
  o.initializer = init::RandomNormal(0, 1, /*seed=*/9);
  o.partitioner = partitioners::FixedSize(2);
  auto table = session_->GetEmbeddingVariable("ctr/user", o);
  ASSERT_TRUE(table.ok()) << table.status();
  EmbeddingVariableOptions so = o;
  so.initializer = init::Constant(Tensor::Scalar<float>(0.1f));
  so.slot_of = "ctr/user";
  so.trainable = false;
  auto slot = session_->GetEmbeddingVariable("ctr/user/Adagrad", so);
  ASSERT_TRUE(slot.ok()) << slot.status();
  OptimizerSpec adagrad;
  adagrad.mutable_adagrad()->set_learning_rate(0.1);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 50; ++i) ids.push_back(i * 31 + 1);
  std::vector<float> grads(ids.size() * 4, 0.5f);
  ASSERT_TRUE(IsOk(table->ApplySparse(adagrad, {*slot}, Keys(ids),
                                      Rows(static_cast<int64_t>(ids.size()), 4, grads),
                                      {.global_step = 4})));
  auto saved_rows = table->Gather(Keys(ids));
  auto saved_slots = slot->Gather(Keys(ids));
  ASSERT_TRUE(saved_rows.ok() && saved_slots.ok());

  auto prefix = saver_->Save(absl::StrCat(dir_, "/model.ckpt"), 4);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  auto reader = checkpoint::BundleReader::Open(*prefix);
  ASSERT_TRUE(reader.ok()) << reader.status();
  int64_t saved = 0;
  for (int k = 0; k < 2; ++k) {
    const std::string part = absl::StrCat("ctr/user/part_", k);
    for (const char* suffix : {"-keys", "-values", "-freqs", "-versions"}) {
      EXPECT_TRUE((*reader)->Contains(part + suffix)) << part << suffix;
    }
    auto keys = (*reader)->GetTensorInfo(part + "-keys");
    ASSERT_TRUE(keys.ok());
    saved += keys->shape.num_elements();
    EXPECT_TRUE((*reader)->Contains(absl::StrCat("ctr/user/Adagrad/part_", k, "-values")));
  }
  EXPECT_EQ(saved, 50);

  // Training goes on: rows change, new keys come.
  ASSERT_TRUE(IsOk(table->ScatterAdd(Keys(ids), Tensor::Scalar<float>(1))));
  ASSERT_TRUE(table->Gather(Keys({100000, 100001})).ok());
  EXPECT_EQ(*table->Size(), 52);

  ASSERT_TRUE(IsOk(saver_->Restore(*prefix)));
  EXPECT_EQ(*table->Size(), 50) << "rows made after the save are gone";
  auto rows = table->Gather(Keys(ids));
  auto slots = slot->Gather(Keys(ids));
  ASSERT_TRUE(rows.ok() && slots.ok()) << rows.status() << slots.status();
  EXPECT_EQ(*rows, *saved_rows);
  EXPECT_EQ(*slots, *saved_slots);

  // Into a table of three parts under another name: keys rehash.
  o.partitioner = partitioners::FixedSize(3);
  auto other = session_->GetEmbeddingVariable("ctr/user_v2", o);
  ASSERT_TRUE(other.ok()) << other.status();
  client::RestoreOptions ro;
  ro.name_map = {{"ctr/user", "ctr/user_v2"}};
  ASSERT_TRUE(IsOk(saver_->Restore(*prefix, ro)));
  EXPECT_EQ(*other->Size(), 50);
  auto moved = other->Gather(Keys(ids));
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, *saved_rows);
  // A key new to both gets the same initial row in three parts as in two.
  auto fresh_two = table->Gather(Keys({987654321}));
  auto fresh_three = other->Gather(Keys({987654321}));
  ASSERT_TRUE(fresh_two.ok() && fresh_three.ok());
  EXPECT_EQ(*fresh_two, *fresh_three);
  // The restored table's export is the saved one's, row for row.
  auto exported = other->Export();
  ASSERT_TRUE(exported.ok()) << exported.status();
  std::map<int64_t, std::vector<float>> by_key;
  for (int64_t i = 0; i < exported->keys.num_elements(); ++i) {
    by_key[exported->keys.data<int64_t>()[i]] = Row(exported->values, i);
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (by_key.count(ids[i]) == 0) continue;  // counted below
    EXPECT_EQ(by_key[ids[i]], Row(*saved_rows, static_cast<int64_t>(i))) << ids[i];
  }
  EXPECT_EQ(by_key.size(), 51u) << "the 50 restored rows and the fresh key's";
}

TEST_F(EmbeddingCheckpointTest, ACheckpointTakenUnderLoadIsAConsistentCut) {
  // A trainer adds 1 to every one of 64 keys per op while saves run: each
  // part applies each op whole, so in a consistent cut every row of a part
  // holds the same count.
  EmbeddingVariableOptions o;
  o.embedding_dim = 4;
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  auto table = session_->GetEmbeddingVariable("load/table", o);
  ASSERT_TRUE(table.ok()) << table.status();
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 64; ++i) ids.push_back(i * 104729 - 5000);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> ops{0};
  absl::Status trainer_status;
  std::thread trainer([&] {
    while (!stop.load()) {
      absl::Status s = table->ScatterAdd(Keys(ids), Tensor::Scalar<float>(1));
      if (!s.ok()) {
        trainer_status = s;
        return;
      }
      ops.fetch_add(1);
    }
  });
  std::vector<std::string> prefixes;
  for (int i = 0; i < 3; ++i) {
    while (ops.load() < 5 * (i + 1) && trainer_status.ok()) absl::SleepFor(absl::Milliseconds(5));
    auto prefix = saver_->Save(absl::StrCat(dir_, "/load.ckpt"), i);
    ASSERT_TRUE(prefix.ok()) << prefix.status();
    prefixes.push_back(*prefix);
  }
  stop = true;
  trainer.join();
  ASSERT_TRUE(IsOk(trainer_status));
  auto copy = session_->GetEmbeddingVariable("load/copy", o);
  ASSERT_TRUE(copy.ok()) << copy.status();
  for (const std::string& prefix : prefixes) {
    client::RestoreOptions ro;
    ro.name_map = {{"load/table", "load/copy"}};
    ASSERT_TRUE(IsOk(saver_->Restore(prefix, ro)));
    auto rows = copy->Gather(Keys(ids));
    ASSERT_TRUE(rows.ok()) << rows.status();
    std::map<int, float> part_value;
    for (size_t i = 0; i < ids.size(); ++i) {
      const int part = PartOfKey(ids[i], 2);
      for (int j = 0; j < 4; ++j) {
        const float v = rows->data<float>()[i * 4 + j];
        auto [it, fresh] = part_value.emplace(part, v);
        EXPECT_EQ(it->second, v) << prefix << ": key " << ids[i] << " of part " << part;
      }
    }
    EXPECT_GE(part_value[0], 1) << prefix;
  }
}

TEST_F(EmbeddingCheckpointTest, ASaveRunsTheEvictionPoliciesFirst) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  o.ev_option.set_steps_to_live(5);
  auto table = session_->GetEmbeddingVariable("ttl/table", o);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_TRUE(IsOk(table->ScatterAdd(Keys({1, 2, 3}), Tensor::Scalar<float>(1), {.global_step = 1})));
  ASSERT_TRUE(IsOk(table->ScatterAdd(Keys({4, 5}), Tensor::Scalar<float>(1), {.global_step = 10})));
  auto prefix = saver_->Save(absl::StrCat(dir_, "/ttl.ckpt"), 12);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(*table->Size(), 2) << "rows idle for more than 5 steps at step 12 were evicted";
  auto reader = checkpoint::BundleReader::Open(*prefix);
  ASSERT_TRUE(reader.ok()) << reader.status();
  int64_t saved = 0;
  for (int k = 0; k < 2; ++k) {
    auto keys = (*reader)->GetTensorInfo(absl::StrCat("ttl/table/part_", k, "-keys"));
    ASSERT_TRUE(keys.ok()) << keys.status();
    saved += keys->shape.num_elements();
  }
  EXPECT_EQ(saved, 2);
}

}  // namespace
}  // namespace integration
}  // namespace psd
