// EmbeddingTable: one part of an embedding table in host memory.
#include "shard/embedding_table.h"

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "device/cpu_optimizer_kernels.h"
#include "device/device.h"
#include "device/initializer_math.h"
#include "device/philox.h"
#include "gmock/gmock.h"
#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"
#include "psd/embedding_keys.h"
#include "psd/float16.h"
#include "shard/memory_accountant.h"

namespace psd {
namespace {

using ::testing::HasSubstr;

InitializerSpec Uniform(double lo, double hi, int64_t seed) {
  InitializerSpec s;
  s.mutable_random_uniform()->set_minval(lo);
  s.mutable_random_uniform()->set_maxval(hi);
  s.set_seed(seed);
  return s;
}
InitializerSpec Normal(double mean, double stddev, int64_t seed, bool truncated) {
  InitializerSpec s;
  if (truncated) {
    s.mutable_truncated_normal()->set_mean(mean);
    s.mutable_truncated_normal()->set_stddev(stddev);
  } else {
    s.mutable_random_normal()->set_mean(mean);
    s.mutable_random_normal()->set_stddev(stddev);
  }
  s.set_seed(seed);
  return s;
}
InitializerSpec Zeros() {
  InitializerSpec s;
  s.mutable_zeros();
  return s;
}
InitializerSpec Ones() {
  InitializerSpec s;
  s.mutable_ones();
  return s;
}

EmbeddingTableOptions Options(const std::string& name, DataType dtype, int64_t dim,
                              InitializerSpec init, EmbeddingSpec spec = EmbeddingSpec(),
                              int num_parts = 1, int part = 0) {
  EmbeddingTableOptions o;
  o.name = name;
  o.dtype = dtype;
  o.dim = dim;
  o.key_dtype = DT_INT64;
  o.num_parts = num_parts;
  o.part_index = part;
  o.initializer = std::move(init);
  o.spec = std::move(spec);
  return o;
}

std::unique_ptr<EmbeddingTable> MakeTable(const EmbeddingTableOptions& o,
                                          MemoryAccountant* memory = nullptr) {
  auto t = EmbeddingTable::Create(o, memory);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::vector<float> LookupF(EmbeddingTable* t, std::vector<int64_t> keys, int column = 0,
                           bool inference = false, EmbeddingUpdateResult* r = nullptr) {
  std::vector<float> out(keys.size() * t->options().dim);
  EmbeddingLookupOptions o;
  o.inference = inference;
  absl::Status s = t->Lookup(keys, column, o, out.data(), r);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

struct Row {
  std::vector<std::string> columns;
  int64_t freq = 0, version = 0;
  bool operator==(const Row& o) const {
    return columns == o.columns && freq == o.freq && version == o.version;
  }
};
using Rows = std::map<int64_t, Row>;

Rows Export(EmbeddingSnapshot* snap, std::vector<int> columns, int64_t batch = 7) {
  Rows rows;
  EmbeddingSnapshot::Batch b;
  for (int guard = 0; guard < 1000000; ++guard) {
    absl::Status s = snap->Next(batch, columns, &b);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok() || b.keys.empty()) break;
    for (size_t i = 0; i < b.keys.size(); ++i) {
      Row r;
      for (const std::string& c : b.columns) {
        const size_t row_bytes = c.size() / b.keys.size();
        r.columns.push_back(c.substr(i * row_bytes, row_bytes));
      }
      r.freq = b.freqs[i];
      r.version = b.versions[i];
      EXPECT_TRUE(rows.emplace(b.keys[i], r).second) << "key " << b.keys[i] << " twice";
    }
  }
  return rows;
}
Rows ExportAll(EmbeddingTable* t, std::vector<int> columns = {0}) {
  auto snap = t->Pin();
  Rows rows = Export(snap.get(), columns);
  EXPECT_EQ(static_cast<int64_t>(rows.size()), snap->rows());
  return rows;
}

// A key of part `part` of `num_parts`, at least `from`.
int64_t KeyOfPart(int part, int num_parts, int64_t from = 0) {
  for (int64_t k = from;; ++k) {
    if (PartOfKey(k, num_parts) == part) return k;
  }
}

// ---------------------------------------------------------------------------

TEST(EmbeddingTableTest, InitialRowsAreAFunctionOfSeedAndKey) {
  const std::vector<InitializerSpec> inits = {Uniform(-0.5, 0.5, 11), Normal(0.1, 2.0, 12, false),
                                              Normal(0.0, 1.0, 13, true), Zeros(), Ones()};
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16}) {
    for (const InitializerSpec& init : inits) {
      const int64_t dim = 9;
      auto one = MakeTable(Options("t", dtype, dim, init));
      const std::vector<int64_t> keys = {0, 1, -5, int64_t{1} << 40, 123456789012345};
      const size_t row = dim * DataTypeSize(dtype);
      std::string a(keys.size() * row, '\0');
      ASSERT_TRUE(one->Lookup(keys, 0, {}, a.data(), nullptr).ok());
      for (size_t k = 0; k < keys.size(); ++k) {
        // The part of a 3-part table that holds the key draws the same row.
        const int part = PartOfKey(keys[k], 3);
        auto other = MakeTable(Options("u", dtype, dim, init, EmbeddingSpec(), 3, part));
        std::string b(row, '\0');
        ASSERT_TRUE(other->Lookup({keys[k]}, 0, {}, b.data(), nullptr).ok());
        EXPECT_EQ(a.substr(k * row, row), b) << DataTypeName(dtype) << " key " << keys[k];
      }
      // Different keys get different random rows.
      if (init.has_random_uniform() || init.has_random_normal()) {
        EXPECT_NE(a.substr(0, row), a.substr(row, row));
      }
    }
  }
}

TEST(EmbeddingTableTest, InitialRowMatchesPhiloxCounterOfKeyAndElement) {
  const int64_t dim = 5, key = -77;
  auto t = MakeTable(Options("t", DT_FLOAT, dim, Uniform(-2, 3, 42)));
  std::vector<float> row = LookupF(t.get(), {key});
  for (int64_t i = 0; i < dim; ++i) {
    const PhiloxBlock r = Philox4x32(
        PhiloxBlock{static_cast<uint32_t>(key), static_cast<uint32_t>(uint64_t(key) >> 32), 0,
                    static_cast<uint32_t>(i + 1)},
        PhiloxKey{42, 0});
    EXPECT_EQ(row[i], -2.0f + 5.0f * UniformFloat(r[0])) << i;
  }
  // Truncated normal stays within two standard deviations.
  auto tn = MakeTable(Options("tn", DT_FLOAT, 64, Normal(1.0, 0.5, 7, true)));
  std::vector<int64_t> keys(200);
  for (int i = 0; i < 200; ++i) keys[i] = i * 7919;
  for (float v : LookupF(tn.get(), keys)) {
    EXPECT_GE(v, 1.0f - 1.0f - 1e-6f);
    EXPECT_LE(v, 1.0f + 1.0f + 1e-6f);
  }
}

TEST(EmbeddingTableTest, RefusesUnsupportedOptions) {
  InitializerSpec bad_init;
  bad_init.mutable_uniform_unit_scaling()->set_factor(1.0);
  EXPECT_THAT(
      EmbeddingTable::Create(Options("t", DT_FLOAT, 4, bad_init), nullptr).status().message(),
      HasSubstr("'t'"));
  EXPECT_FALSE(EmbeddingTable::Create(Options("t", DT_INT32, 4, Zeros()), nullptr).ok());
  EXPECT_FALSE(EmbeddingTable::Create(Options("t", DT_FLOAT, 0, Zeros()), nullptr).ok());
  EXPECT_FALSE(
      EmbeddingTable::Create(Options("t", DT_FLOAT, 4, Zeros(), EmbeddingSpec(), 2, 2), nullptr)
          .ok());
  EmbeddingSpec spec;
  spec.mutable_bloom_filter()->set_filter_freq(2);
  spec.mutable_bloom_filter()->set_max_element_size(100);
  spec.mutable_bloom_filter()->set_false_positive_probability(0.01);
  spec.mutable_bloom_filter()->set_counter_bits(12);
  EXPECT_THAT(
      EmbeddingTable::Create(Options("t", DT_FLOAT, 4, Zeros(), spec), nullptr).status().message(),
      HasSubstr("counter_bits"));
  // 8-bit counters saturate at 255: a higher filter_freq would never admit.
  spec.mutable_bloom_filter()->set_counter_bits(0);
  spec.mutable_bloom_filter()->set_filter_freq(256);
  EXPECT_FALSE(EmbeddingTable::Create(Options("t", DT_FLOAT, 4, Zeros(), spec), nullptr).ok());
  spec.mutable_bloom_filter()->set_filter_freq(255);
  auto t = MakeTable(Options("t", DT_FLOAT, 1, Ones(), spec));
  std::vector<int64_t> keys(254, 3);
  std::vector<float> out(keys.size());
  ASSERT_TRUE(t->Lookup(keys, 0, {}, out.data(), nullptr).ok());
  EXPECT_EQ(t->rows(), 0);
  ASSERT_TRUE(t->Lookup({3, 3}, 0, {}, out.data(), nullptr).ok());  // 256th use, counter at 255
  EXPECT_EQ(t->rows(), 1);
}

TEST(EmbeddingTableTest, RefusesKeysOfAnotherPartChangingNothing) {
  MemoryAccountant memory(0);
  auto t = MakeTable(Options("emb/part_1", DT_FLOAT, 4, Uniform(0, 1, 3), EmbeddingSpec(), 4, 1),
                     &memory);
  ASSERT_TRUE(t->AddSlot("accum", Ones()).ok());
  const int64_t mine = KeyOfPart(1, 4), foreign = KeyOfPart(2, 4);
  LookupF(t.get(), {mine});
  const Rows before = ExportAll(t.get(), {0, 1});
  const int64_t bytes = t->bytes(), held = memory.held();
  const int64_t fresh = KeyOfPart(1, 4, mine + 1);
  std::vector<int64_t> keys = {fresh, mine, foreign};
  std::vector<float> rows(keys.size() * 4, 1.0f);
  std::vector<float> out(rows.size());
  auto expect_refused = [&](absl::Status s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("emb/part_1"));
    EXPECT_THAT(s.message(), HasSubstr(std::to_string(foreign)));
  };
  expect_refused(t->Lookup(keys, 0, {}, out.data(), nullptr));
  expect_refused(t->Scatter(UpdateKind::kAdd, keys, rows.data(), false, 5, nullptr));
  OptimizerParams p;
  p.kind = OptimizerKind::kAdagrad;
  p.learning_rate = 0.1;
  std::vector<int> slots = {1};
  expect_refused(t->ApplyOptimizer(p, slots, keys, rows.data(), 5, nullptr));
  expect_refused(t->Import(keys, rows.data(), {}, {}, {}, {}));
  expect_refused(t->DeleteKeys(keys).status());
  EXPECT_EQ(ExportAll(t.get(), {0, 1}), before);
  EXPECT_EQ(t->bytes(), bytes);
  EXPECT_EQ(memory.held(), held);
  EXPECT_EQ(t->rows(), 1);
}

EmbeddingSpec CounterSpec(int64_t freq, double default_value) {
  EmbeddingSpec spec;
  spec.mutable_counter_filter()->set_filter_freq(freq);
  spec.set_default_value_no_permission(default_value);
  return spec;
}

TEST(EmbeddingTableTest, CounterFilterAdmitsAfterFilterFreqUses) {
  MemoryAccountant memory(0);
  auto t = MakeTable(Options("t", DT_FLOAT, 3, Uniform(0, 1, 5), CounterSpec(3, -1.5)), &memory);
  auto reference = MakeTable(Options("r", DT_FLOAT, 3, Uniform(0, 1, 5)));
  EmbeddingUpdateResult r;
  // First use: a lookup answers the default value and counts.
  EXPECT_THAT(LookupF(t.get(), {9}, 0, false, &r), ::testing::Each(-1.5f));
  EXPECT_EQ(r.filtered, 1);
  EXPECT_EQ(t->rows(), 0);
  EXPECT_EQ(t->Stats().pending_keys(), 1);
  EXPECT_GT(memory.held(), 0);  // the pending count is charged
  // Inference neither counts nor admits.
  EXPECT_THAT(LookupF(t.get(), {9}, 0, true), ::testing::Each(-1.5f));
  // Second use: an update, dropped and counted.
  std::vector<float> rows = {10, 20, 30};
  ASSERT_TRUE(t->Scatter(UpdateKind::kAdd, {9}, rows.data(), false, 4, &r).ok());
  EXPECT_EQ(r.filtered, 1);
  EXPECT_EQ(r.applied, 0);
  EXPECT_EQ(t->rows(), 0);
  // Third use admits: the row is the initializer's.
  EXPECT_EQ(LookupF(t.get(), {9}, 0, false, &r), LookupF(reference.get(), {9}));
  EXPECT_EQ(r.created, 1);
  EXPECT_EQ(t->rows(), 1);
  const EmbeddingStats s = t->Stats();
  EXPECT_EQ(s.pending_keys(), 0);
  EXPECT_EQ(s.admitted(), 1);
  EXPECT_EQ(s.filtered_lookups(), 1);
  EXPECT_EQ(s.filtered_updates(), 1);
  EXPECT_EQ(ExportAll(t.get()).at(9).freq, 3);
  EXPECT_EQ(memory.held(), t->bytes());
  // A duplicate key in one op counts each time.
  ASSERT_TRUE(
      t->Scatter(UpdateKind::kAdd, {4, 4, 4}, std::vector<float>(9, 1).data(), false, 0, &r).ok());
  EXPECT_EQ(r.created, 1);
  EXPECT_EQ(t->rows(), 2);
}

TEST(EmbeddingTableTest, BloomFilterAdmitsAndChargesItsCountersAtCreation) {
  MemoryAccountant memory(0);
  EmbeddingSpec spec;
  spec.mutable_bloom_filter()->set_filter_freq(2);
  spec.mutable_bloom_filter()->set_max_element_size(1000);
  spec.mutable_bloom_filter()->set_false_positive_probability(0.01);
  spec.mutable_bloom_filter()->set_counter_bits(16);
  spec.set_default_value_no_permission(7);
  auto t = MakeTable(Options("t", DT_FLOAT, 2, Ones(), spec), &memory);
  // ~9.6 bits per key at 1%: 9586 counters of 2 bytes.
  EXPECT_GT(t->bytes(), 9000 * 2);
  EXPECT_EQ(memory.held(), t->bytes());
  EmbeddingUpdateResult r;
  std::vector<float> g = {1, 1};
  ASSERT_TRUE(t->Scatter(UpdateKind::kAdd, {5}, g.data(), false, 0, &r).ok());
  EXPECT_EQ(r.filtered, 1);
  EXPECT_EQ(LookupF(t.get(), {5}), std::vector<float>({1, 1}));  // admitted: the initial row
  EXPECT_EQ(t->Stats().filtered_updates(), 1);
  EXPECT_EQ(t->Stats().admitted(), 1);
  // Not admitted yet: the default value.
  EXPECT_EQ(LookupF(t.get(), {6}), std::vector<float>({7, 7}));
  EXPECT_EQ(t->rows(), 1);
  t.reset();
  EXPECT_EQ(memory.held(), 0);
}

TEST(EmbeddingTableTest, ScatterByKeyWithDuplicatesAndScalars) {
  auto t = MakeTable(Options("t", DT_FLOAT, 2, Ones()));
  std::vector<float> rows = {1, 2, 10, 20, 100, 200};
  EmbeddingUpdateResult r;
  ASSERT_TRUE(t->Scatter(UpdateKind::kAdd, {5, 7, 5}, rows.data(), false, 3, &r).ok());
  EXPECT_EQ(r.created, 2);
  EXPECT_EQ(r.applied, 2);
  EXPECT_EQ(LookupF(t.get(), {5, 7}), std::vector<float>({102, 203, 11, 21}));
  ASSERT_TRUE(t->Scatter(UpdateKind::kAssign, {5, 7, 5}, rows.data(), false, 4, &r).ok());
  EXPECT_EQ(LookupF(t.get(), {5, 7}), std::vector<float>({100, 200, 10, 20}));  // last wins
  const float half_value = 0.5f;
  ASSERT_TRUE(t->Scatter(UpdateKind::kSub, {5, 5, 9}, &half_value, true, 6, &r).ok());
  EXPECT_EQ(LookupF(t.get(), {5, 9}), std::vector<float>({99, 199, 0.5f, 0.5f}));
  const Rows all = ExportAll(t.get());
  EXPECT_EQ(all.at(5).version, 6);
  EXPECT_EQ(all.at(7).version, 4);
  // bfloat16 rounds in float as the dense scatter does.
  auto b = MakeTable(Options("b", DT_BFLOAT16, 1, Ones()));
  const bfloat16 add(1.0f / 256);
  ASSERT_TRUE(b->Scatter(UpdateKind::kAdd, {1, 1}, &add, true, 0, nullptr).ok());
  bfloat16 out;
  ASSERT_TRUE(b->Lookup({1}, 0, {}, &out, nullptr).ok());
  EXPECT_EQ(static_cast<float>(out), 1.0f);  // 1 + 2^-8 rounds back to 1, twice
}

// Sets up a dense buffer and a table holding the same rows and slots, and
// checks that one sparse apply leaves them bit for bit equal.
template <typename T>
void CheckOptimizerMatchesDense(const OptimizerParams& params, DataType dtype) {
  const int64_t dim = 37, rows = 50;
  const int slots = NumOptimizerSlots(params.kind);
  std::unique_ptr<Device> cpu = NewCpuDevice();
  std::mt19937 rng(17);
  std::uniform_real_distribution<double> value(-1, 1), positive(0.1, 1);
  auto buffer = [&](bool pos) {
    auto b = cpu->Allocate(rows * dim * sizeof(T)).value();
    T* p = static_cast<T*>(b->data());
    for (int64_t i = 0; i < rows * dim; ++i)
      p[i] = static_cast<T>(pos ? positive(rng) : value(rng));
    return b;
  };
  auto var = buffer(false);
  std::vector<std::unique_ptr<DeviceBuffer>> slot_buffers;
  for (int k = 0; k < slots; ++k) slot_buffers.push_back(buffer(true));
  auto t = MakeTable(Options("t", dtype, dim, Zeros()));
  std::vector<int> columns;
  std::vector<const void*> slot_values;
  for (int k = 0; k < slots; ++k) {
    columns.push_back(t->AddSlot("s" + std::to_string(k), Zeros()).value());
    slot_values.push_back(slot_buffers[k]->data());
  }
  std::vector<int64_t> all_keys(rows);
  for (int64_t i = 0; i < rows; ++i) all_keys[i] = i * 1000 + 3;  // key of row i
  ASSERT_TRUE(t->Import(all_keys, var->data(), columns, slot_values, {}, {}).ok());
  // Gradients with duplicates; some rows untouched.
  std::vector<int64_t> indices = {3, 7, 3, 11, 0, 7, 3, 42, 49};
  std::vector<T> grads(indices.size() * dim);
  for (T& g : grads) g = static_cast<T>(value(rng));
  std::vector<int64_t> keys;
  for (int64_t i : indices) keys.push_back(i * 1000 + 3);
  std::vector<DeviceBuffer*> slot_ptrs;
  for (auto& b : slot_buffers) slot_ptrs.push_back(b.get());
  ASSERT_TRUE(internal::CpuApplyOptimizerSparse(params, dtype, var.get(), slot_ptrs, dim, indices,
                                                grads.data())
                  .ok());
  EmbeddingUpdateResult r;
  ASSERT_TRUE(t->ApplyOptimizer(params, columns, keys, grads.data(), 9, &r).ok());
  EXPECT_EQ(r.applied, 6);
  EXPECT_EQ(r.created, 0);
  std::vector<int> export_columns = {0};
  for (int c : columns) export_columns.push_back(c);
  const Rows got = ExportAll(t.get(), export_columns);
  ASSERT_EQ(static_cast<int64_t>(got.size()), rows);
  const size_t row_bytes = dim * sizeof(T);
  for (int64_t i = 0; i < rows; ++i) {
    const Row& row = got.at(i * 1000 + 3);
    EXPECT_EQ(row.columns[0],
              std::string(static_cast<const char*>(var->data()) + i * row_bytes, row_bytes))
        << OptimizerName(params.kind) << " row " << i;
    for (int k = 0; k < slots; ++k) {
      EXPECT_EQ(
          row.columns[1 + k],
          std::string(static_cast<const char*>(slot_buffers[k]->data()) + i * row_bytes, row_bytes))
          << OptimizerName(params.kind) << " slot " << k << " row " << i;
    }
    const bool touched = std::count(indices.begin(), indices.end(), i) > 0;
    EXPECT_EQ(row.version, touched ? 9 : 0);
  }
}

std::vector<OptimizerParams> AllOptimizers() {
  std::vector<OptimizerParams> all;
  OptimizerParams p;
  p.learning_rate = 0.05;
  p.kind = OptimizerKind::kGradientDescent;
  all.push_back(p);
  p.kind = OptimizerKind::kMomentum;
  p.momentum = 0.9;
  all.push_back(p);
  p.use_nesterov = true;
  all.push_back(p);
  p = OptimizerParams();
  p.learning_rate = 0.05;
  p.kind = OptimizerKind::kAdagrad;
  all.push_back(p);
  p.kind = OptimizerKind::kAdam;
  p.beta1 = 0.9;
  p.beta2 = 0.999;
  p.epsilon = 1e-7;
  p.beta1_power = 0.9 * 0.9;
  p.beta2_power = 0.999 * 0.999;
  all.push_back(p);
  p = OptimizerParams();
  p.learning_rate = 0.05;
  p.kind = OptimizerKind::kRMSProp;
  p.decay = 0.9;
  p.momentum = 0.5;
  p.epsilon = 1e-6;
  all.push_back(p);
  p.kind = OptimizerKind::kCenteredRMSProp;
  all.push_back(p);
  p = OptimizerParams();
  p.kind = OptimizerKind::kFtrl;
  p.learning_rate = 0.1;
  p.lr_power = -0.5;
  p.l1 = 0.01;
  p.l2 = 0.02;
  all.push_back(p);
  p.l2_shrinkage = 0.03;
  all.push_back(p);
  p.lr_power = -0.7;
  all.push_back(p);
  return all;
}

TEST(EmbeddingTableTest, OptimizersMatchTheDenseSparseKernelBitForBit) {
  for (const OptimizerParams& p : AllOptimizers()) {
    SCOPED_TRACE(OptimizerName(p.kind));
    CheckOptimizerMatchesDense<float>(p, DT_FLOAT);
    CheckOptimizerMatchesDense<double>(p, DT_DOUBLE);
  }
}

TEST(EmbeddingTableTest, ApplyMakesMissingRowsAndSlotRowsFromInitializers) {
  auto t = MakeTable(Options("t", DT_FLOAT, 2, Ones()));
  InitializerSpec accum_init;
  accum_init.mutable_constant()->mutable_value()->set_dtype(DT_FLOAT);
  const float c = 0.25f;
  accum_init.mutable_constant()->mutable_value()->set_content(&c, sizeof c);
  const int accum = t->AddSlot("Adagrad", accum_init).value();
  EXPECT_EQ(t->FindSlot("Adagrad"), accum);
  EXPECT_EQ(LookupF(t.get(), {3}, accum), std::vector<float>({0.25f, 0.25f}));
  OptimizerParams p;
  p.kind = OptimizerKind::kAdagrad;
  p.learning_rate = 1.0;
  std::vector<float> g = {1, 2};
  EmbeddingUpdateResult r;
  ASSERT_TRUE(t->ApplyOptimizer(p, {accum}, {3}, g.data(), 1, &r).ok());
  EXPECT_EQ(r.created, 1);
  // accum = 0.25 + g^2; var = 1 - g / sqrt(accum).
  EXPECT_EQ(LookupF(t.get(), {3}, accum), std::vector<float>({1.25f, 4.25f}));
  EXPECT_EQ(LookupF(t.get(), {3}),
            std::vector<float>({1 - 1 / std::sqrt(1.25f), 1 - 2 / std::sqrt(4.25f)}));
  // Hyper-parameters are checked before anything changes.
  p.learning_rate = std::nan("");
  EXPECT_EQ(t->ApplyOptimizer(p, {accum}, {77}, g.data(), 1, &r).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->rows(), 1);
  p.learning_rate = 0.1;
  EXPECT_EQ(t->ApplyOptimizer(p, {}, {77}, g.data(), 1, &r).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->rows(), 1);
}

TEST(EmbeddingTableTest, MemoryLimitRefusesNewRowsChangingNothing) {
  EmbeddingSpec spec;
  spec.set_part_memory_limit_bytes(4000);
  MemoryAccountant memory(0);
  auto t = MakeTable(Options("capped", DT_FLOAT, 16, Uniform(0, 1, 1), spec), &memory);
  int64_t key = 0;
  absl::Status s;
  std::vector<float> out(16);
  for (; key < 1000; ++key) {
    s = t->Lookup({key}, 0, {}, out.data(), nullptr);
    if (!s.ok()) break;
  }
  ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("capped"));
  EXPECT_THAT(s.message(), HasSubstr("4000"));
  const Rows before = ExportAll(t.get());
  const int64_t bytes = t->bytes();
  EXPECT_LE(bytes, 4000);
  // A batch mixing existing keys and one new key changes nothing either.
  std::vector<float> rows(3 * 16, 1.0f);
  EXPECT_EQ(t->Scatter(UpdateKind::kAdd, {0, 1, 5000}, rows.data(), false, 9, nullptr).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ExportAll(t.get()), before);
  EXPECT_EQ(t->bytes(), bytes);
  EXPECT_EQ(memory.held(), bytes);
  // Existing keys still update.
  EXPECT_TRUE(t->Scatter(UpdateKind::kAdd, {0, 1}, rows.data(), false, 9, nullptr).ok());

  // The shard's limit does the same.
  MemoryAccountant small(3000);
  auto u = MakeTable(Options("shard_capped", DT_FLOAT, 16, Zeros()), &small);
  for (key = 0; key < 1000; ++key) {
    s = u->Lookup({key}, 0, {}, out.data(), nullptr);
    if (!s.ok()) break;
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("shard_capped"));
  EXPECT_EQ(u->rows(), key);
}

TEST(EmbeddingTableTest, LruEvictionAtTheLimitKeepsRecentRows) {
  EmbeddingSpec spec;
  spec.set_evict_lru_on_memory_limit(true);
  spec.set_part_memory_limit_bytes(1);  // set below, from one row's size
  {
    auto probe = MakeTable(Options("p", DT_FLOAT, 8, Zeros()));
    LookupF(probe.get(), {1});
    spec.set_part_memory_limit_bytes(probe->bytes() * 200);
  }
  auto t = MakeTable(Options("lru", DT_FLOAT, 8, Zeros(), spec));
  for (int64_t k = 0; k < 200; ++k) LookupF(t.get(), {k});
  EXPECT_EQ(t->rows(), 200);
  // Touch ten old rows, then make 20 new ones.
  std::vector<int64_t> recent;
  for (int64_t k = 0; k < 10; ++k) recent.push_back(k * 3);
  LookupF(t.get(), recent);
  EmbeddingUpdateResult r;
  int64_t evicted = 0;
  for (int64_t k = 1000; k < 1020; ++k) {
    LookupF(t.get(), {k}, 0, false, &r);
    evicted += r.evicted;
  }
  EXPECT_EQ(evicted, 20);
  EXPECT_EQ(t->rows(), 200);
  EXPECT_EQ(t->Stats().evicted(), 20);
  const Rows rows = ExportAll(t.get());
  for (int64_t k : recent) EXPECT_TRUE(rows.count(k)) << "recent key " << k << " evicted";
  for (int64_t k = 1000; k < 1020; ++k) EXPECT_TRUE(rows.count(k));
  // An op needing more rows than can be evicted fails whole.
  std::vector<int64_t> many;
  for (int64_t k = 5000; k < 5300; ++k) many.push_back(k);
  std::vector<float> out(many.size() * 8);
  EXPECT_EQ(t->Lookup(many, 0, {}, out.data(), nullptr).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ExportAll(t.get()), rows);
}

TEST(EmbeddingTableTest, EvictsByStepsToLiveAndL2Norm) {
  EmbeddingSpec spec;
  spec.set_steps_to_live(10);
  auto t = MakeTable(Options("t", DT_FLOAT, 2, Ones(), spec));
  std::vector<float> g = {0, 0};
  for (int64_t k = 1; k <= 30; ++k) {
    ASSERT_TRUE(
        t->Scatter(UpdateKind::kAdd, {k}, g.data(), false, /*global_step=*/k, nullptr).ok());
  }
  // At step 30, rows last updated before step 20 are stale.
  EXPECT_EQ(t->Evict(30).value(), 19);
  const Rows rows = ExportAll(t.get());
  EXPECT_EQ(rows.size(), 11u);
  for (const auto& [key, row] : rows) EXPECT_GE(row.version, 20) << key;
  EXPECT_EQ(t->Evict(0).value(), 0);  // no step given: TTL off
  EXPECT_EQ(t->Stats().evicted(), 19);

  EmbeddingSpec l2;
  l2.set_l2_weight_threshold(1.0);
  auto u = MakeTable(Options("u", DT_FLOAT, 2, Zeros(), l2));
  std::vector<float> values = {0.6f, 0.7f, 0.6f, 0.8f, 3, 0};  // norms 0.92, 1.0, 3
  ASSERT_TRUE(u->Import({1, 2, 3}, values.data(), {}, {}, {}, {}).ok());
  EXPECT_EQ(u->Evict(0).value(), 1);
  const Rows left = ExportAll(u.get());
  EXPECT_EQ(left.size(), 2u);
  EXPECT_FALSE(left.count(1));
}

TEST(EmbeddingTableTest, DeleteRemovesRowsAndSlotRows) {
  MemoryAccountant memory(0);
  auto t = MakeTable(Options("t", DT_FLOAT, 2, Uniform(0, 1, 8)), &memory);
  const int accum = t->AddSlot("a", Ones()).value();
  const std::vector<float> initial = LookupF(t.get(), {1});
  OptimizerParams p;
  p.kind = OptimizerKind::kAdagrad;
  p.learning_rate = 0.5;
  std::vector<float> g = {1, 1, 1, 1};
  ASSERT_TRUE(t->ApplyOptimizer(p, {accum}, {1, 2}, g.data(), 1, nullptr).ok());
  const int64_t with_two = t->bytes();
  EXPECT_EQ(t->DeleteKeys({1, 99, 1}).value(), 1);
  EXPECT_EQ(t->rows(), 1);
  EXPECT_LT(t->bytes(), with_two);
  EXPECT_EQ(memory.held(), t->bytes());
  EXPECT_EQ(t->Stats().deleted(), 1);
  // The key comes back with its initial rows.
  EXPECT_EQ(LookupF(t.get(), {1}, accum), std::vector<float>({1, 1}));
  EXPECT_EQ(LookupF(t.get(), {1}), initial);
}

TEST(EmbeddingTableTest, ImportExportRoundTripWithSlotsFreqsAndVersions) {
  auto t = MakeTable(Options("t", DT_DOUBLE, 3, Uniform(0, 1, 2)));
  const int m = t->AddSlot("m", Zeros()).value();
  const int v = t->AddSlot("v", Zeros()).value();
  OptimizerParams p;
  p.kind = OptimizerKind::kAdam;
  p.learning_rate = 0.01;
  p.beta1 = 0.9;
  p.beta2 = 0.99;
  p.beta1_power = 0.9;
  p.beta2_power = 0.99;
  p.epsilon = 1e-8;
  std::vector<int64_t> keys;
  for (int64_t k = 0; k < 100; ++k) keys.push_back(k * k - 50);
  std::vector<double> g(keys.size() * 3, 0.5);
  ASSERT_TRUE(t->ApplyOptimizer(p, {m, v}, keys, g.data(), 7, nullptr).ok());
  std::vector<double> out(9);
  ASSERT_TRUE(t->Lookup({1000, 1001, 1002}, 0, {}, out.data(), nullptr).ok());  // no slot rows
  ASSERT_TRUE(t->Lookup({1000}, 0, {}, out.data(), nullptr).ok());
  const Rows exported = ExportAll(t.get(), {0, m, v});
  ASSERT_EQ(exported.size(), 103u);
  EXPECT_EQ(exported.at(1000).freq, 2);
  EXPECT_EQ(exported.at(-50).version, 7);

  auto u = MakeTable(Options("u", DT_DOUBLE, 3, Uniform(0, 1, 99)));
  const int um = u->AddSlot("m", Zeros()).value();
  const int uv = u->AddSlot("v", Ones()).value();  // differs: imported rows must win
  std::vector<int64_t> ks, freqs, versions;
  std::string values, ms, vs;
  for (const auto& [key, row] : exported) {
    ks.push_back(key);
    freqs.push_back(row.freq);
    versions.push_back(row.version);
    values += row.columns[0];
    ms += row.columns[1];
    vs += row.columns[2];
  }
  std::vector<const void*> slot_values = {ms.data(), vs.data()};
  ASSERT_TRUE(u->Import(ks, values.data(), {um, uv}, slot_values, freqs, versions).ok());
  EXPECT_EQ(ExportAll(u.get(), {0, um, uv}), exported);
  // Duplicate keys are refused whole.
  EXPECT_EQ(u->Import({1, 1}, values.data(), {}, {}, {}, {}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EmbeddingTableTest, SnapshotIsTheCutAtPinUnderConcurrentWriters) {
  MemoryAccountant memory(0);
  auto t = MakeTable(Options("t", DT_FLOAT, 4, Uniform(-1, 1, 6)), &memory);
  const int accum = t->AddSlot("accum", Ones()).value();
  std::vector<int64_t> keys;
  for (int64_t k = 0; k < 2000; ++k) keys.push_back(k);
  LookupF(t.get(), keys);
  std::atomic<bool> stop{false}, paused{false};
  std::atomic<int> writers_paused{0};
  auto writer = [&](int id) {
    std::mt19937_64 rng(id);
    OptimizerParams p;
    p.kind = OptimizerKind::kAdagrad;
    p.learning_rate = 0.01;
    std::vector<float> rows(16 * 4, 0.25f), out(16 * 4);
    int64_t step = 1;
    while (!stop.load()) {
      if (paused.load()) {
        writers_paused.fetch_add(1);
        while (paused.load() && !stop.load()) std::this_thread::yield();
        writers_paused.fetch_sub(1);
        continue;
      }
      std::vector<int64_t> ks(16);
      for (auto& k : ks) k = static_cast<int64_t>(rng() % 3000);  // some new keys
      switch (rng() % 5) {
        case 0:
          EXPECT_TRUE(t->Scatter(UpdateKind::kAdd, ks, rows.data(), false, ++step, nullptr).ok());
          break;
        case 1:
          EXPECT_TRUE(t->ApplyOptimizer(p, {accum}, ks, rows.data(), ++step, nullptr).ok());
          break;
        case 2:
          EXPECT_TRUE(t->DeleteKeys(absl::MakeSpan(ks).subspan(0, 2)).ok());
          break;
        case 3:
          EXPECT_TRUE(t->Lookup(ks, 0, {}, out.data(), nullptr).ok());
          break;
        default:
          EXPECT_TRUE(t->Import(absl::MakeSpan(ks).subspan(0, 1), rows.data(), {accum},
                                std::vector<const void*>{rows.data()}, {}, {})
                          .ok());
          break;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) threads.emplace_back(writer, i);
  for (int round = 0; round < 5; ++round) {
    // With writers held, pin twice: `reference` is read at once, `snap`
    // while the writers go on.
    paused.store(true);
    while (writers_paused.load() < 3) std::this_thread::yield();
    auto snap = t->Pin();
    auto reference_snap = t->Pin();
    const Rows reference = Export(reference_snap.get(), {0, accum}, 1 << 20);
    reference_snap.reset();
    paused.store(false);
    const Rows got = Export(snap.get(), {0, accum}, 5);
    EXPECT_EQ(static_cast<int64_t>(got.size()), snap->rows());
    EXPECT_EQ(got.size(), reference.size());
    EXPECT_TRUE(got == reference) << "round " << round;
  }
  stop.store(true);
  for (auto& th : threads) th.join();
  // Pre-images are released with their snapshots.
  EXPECT_EQ(memory.held(), t->bytes());
  const int64_t bytes_now = t->bytes();
  auto idle = t->Pin();
  idle.reset();
  EXPECT_EQ(t->bytes(), bytes_now);
}

TEST(EmbeddingTableTest, SnapshotKeepsChangedDeletedAndEvictedRows) {
  MemoryAccountant memory(0);
  EmbeddingSpec spec;
  spec.set_steps_to_live(1);
  auto t = MakeTable(Options("t", DT_FLOAT, 2, Ones(), spec), &memory);
  const int s = t->AddSlot("s", Zeros()).value();
  std::vector<float> one = {1, 1};
  ASSERT_TRUE(
      t->Scatter(UpdateKind::kAdd, {1, 2, 3}, std::vector<float>(6, 1).data(), false, 5, nullptr)
          .ok());
  const Rows before = ExportAll(t.get(), {0, s});
  const int64_t bytes = t->bytes();
  auto snap = t->Pin();
  OptimizerParams p;
  p.kind = OptimizerKind::kMomentum;
  p.learning_rate = 1;
  p.momentum = 0.5;
  ASSERT_TRUE(t->ApplyOptimizer(p, {s}, {1}, one.data(), 9, nullptr).ok());  // slot row made
  ASSERT_TRUE(t->DeleteKeys({2}).ok());
  ASSERT_EQ(t->Evict(100).value(), 2);  // 1 (step 9) and 3 (step 5)
  LookupF(t.get(), {4});                // made after the pin: not in the cut
  EXPECT_GT(t->bytes(), bytes);         // pre-images are charged
  EXPECT_EQ(Export(snap.get(), {0, s}), before);
  snap.reset();
  EXPECT_EQ(t->rows(), 1);
  EXPECT_EQ(memory.held(), t->bytes());
}

// Rows/s and CPU time per row for the by-key ops, single thread (run with
// --gtest_also_run_disabled_tests --gtest_filter='*DISABLED_Throughput*').
// Resident bytes per row are measured from /proc/self/statm.
int64_t ResidentBytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return static_cast<int64_t>(resident) * 4096;
}

TEST(EmbeddingTableTest, DISABLED_Throughput) {
  const int64_t dim = 64, table_rows = 1 << 20, batch = 4096;
  const int64_t rss0 = ResidentBytes();
  auto t = MakeTable(Options("bench", DT_FLOAT, dim, Normal(0, 0.05, 1, true)));
  const int accum = t->AddSlot("accum", Ones()).value();
  std::vector<int64_t> keys(table_rows);
  std::mt19937_64 rng(1);
  for (auto& k : keys) k = static_cast<int64_t>(rng() % 1000000000);
  std::vector<float> buf(batch * dim, 0.01f);
  for (int64_t off = 0; off < table_rows; off += batch) {
    ASSERT_TRUE(
        t->Lookup(absl::MakeSpan(keys).subspan(off, batch), 0, {}, buf.data(), nullptr).ok());
  }
  std::printf("table: %lld rows, %.1f bytes/row charged, %.1f resident (keys+values %lld)\n",
              static_cast<long long>(t->rows()), double(t->bytes()) / t->rows(),
              double(ResidentBytes() - rss0 - int64_t(keys.size()) * 8) / t->rows(),
              static_cast<long long>(8 + 4 * dim));
  OptimizerParams p;
  p.kind = OptimizerKind::kAdagrad;
  p.learning_rate = 0.01;
  auto measure = [&](const char* what, auto&& op) {
    const int iters = 200;
    std::vector<std::vector<int64_t>> batches(iters, std::vector<int64_t>(batch));
    for (auto& b : batches) {
      for (auto& k : b) k = keys[rng() % keys.size()];
    }
    timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    const auto w0 = std::chrono::steady_clock::now();
    for (auto& b : batches) op(b);
    const auto w1 = std::chrono::steady_clock::now();
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    const double wall = std::chrono::duration<double>(w1 - w0).count();
    const double cpu = (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9;
    const double n = double(iters) * batch;
    std::printf("%-30s %10.0f rows/s  %.3f cpu-us/row\n", what, n / wall, cpu / n * 1e6);
  };
  measure("lookup", [&](const std::vector<int64_t>& b) {
    ASSERT_TRUE(t->Lookup(b, 0, {}, buf.data(), nullptr).ok());
  });
  measure("scatter_add", [&](const std::vector<int64_t>& b) {
    ASSERT_TRUE(t->Scatter(UpdateKind::kAdd, b, buf.data(), false, 1, nullptr).ok());
  });
  {
    // The plain hash-map loop the issue compares with: one flat_hash_map of
    // 64-float rows, the same keys and batches, no admission, versions,
    // snapshots or memory accounting.
    absl::flat_hash_map<int64_t, std::array<float, 64>> plain;
    plain.reserve(keys.size());
    for (int64_t k : keys) plain[k].fill(0.01f);
    measure("plain hash map scatter_add", [&](const std::vector<int64_t>& b) {
      for (size_t k = 0; k < b.size(); ++k) {
        std::array<float, 64>& row = plain.find(b[k])->second;
        const float* u = buf.data() + k * dim;
        for (int64_t j = 0; j < dim; ++j) row[j] += u[j];
      }
    });
  }
  auto adagrad = [&](const std::vector<int64_t>& b) {
    ASSERT_TRUE(t->ApplyOptimizer(p, {accum}, b, buf.data(), 1, nullptr).ok());
  };
  measure("adagrad (most slot rows made)", adagrad);
  for (int64_t off = 0; off < table_rows; off += batch) {
    adagrad(std::vector<int64_t>(keys.begin() + off, keys.begin() + off + batch));
  }
  measure("adagrad (slot rows exist)", adagrad);
  // Pin takes no per-row work: its time does not grow with the rows.
  const auto p0 = std::chrono::steady_clock::now();
  auto snap = t->Pin();
  const auto p1 = std::chrono::steady_clock::now();
  std::printf("pin          %.1f us for %lld rows\n",
              std::chrono::duration<double, std::micro>(p1 - p0).count(),
              static_cast<long long>(snap->rows()));
}

// A move's cut (PinForMove) holds the pending counts and a lookup that
// counts after it is refused when it expected the epoch before it; the
// pending counts put into another table charge each key once.
TEST(EmbeddingTableTest, AMoveCutHoldsPendingCountsAndStopsLookupsOfTheEpochBefore) {
  MemoryAccountant memory(0);
  EmbeddingSpec spec;
  spec.mutable_counter_filter()->set_filter_freq(3);
  auto t = MakeTable(Options("t", DT_FLOAT, 2, Ones(), spec), &memory);
  LookupF(t.get(), {5, 5, 6});
  const uint64_t epoch = t->move_epoch();
  EmbeddingMoveCut cut = t->PinForMove();
  EXPECT_EQ(t->move_epoch(), epoch + 1);
  EXPECT_EQ(cut.pending, (std::vector<std::pair<int64_t, int64_t>>{{5, 2}, {6, 1}}));
  std::vector<float> out(2);
  EmbeddingLookupOptions before;
  before.expect_move_epoch = static_cast<int64_t>(epoch);
  EmbeddingUpdateResult r;
  absl::Status s = t->Lookup({5}, 0, before, out.data(), &r);
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_TRUE(r.move_epoch_changed);
  EXPECT_EQ(t->Stats().pending_keys(), 2) << "the refused lookup counted nothing";
  // Moved away: lookups of the epoch they read stop too.
  before.expect_move_epoch = static_cast<int64_t>(t->move_epoch());
  ASSERT_TRUE(t->Lookup({5}, 0, before, out.data(), &r).ok());
  t->Retire();
  r = EmbeddingUpdateResult();
  EXPECT_TRUE(absl::IsAborted(t->Lookup({5}, 0, before, out.data(), &r)));
  EXPECT_TRUE(r.move_epoch_changed);

  MemoryAccountant other_memory(0);
  auto u = MakeTable(Options("u", DT_FLOAT, 2, Ones(), spec), &other_memory);
  LookupF(u.get(), {6});  // pending already
  const int64_t held = other_memory.held();
  std::vector<int64_t> keys, counts;
  for (const auto& [k, c] : cut.pending) {
    keys.push_back(k);
    counts.push_back(c);
  }
  ASSERT_TRUE(u->ImportPending(keys, counts).ok());
  EXPECT_EQ(other_memory.held() - held, 24) << "key 6 was pending already: only key 5 is new";
  EXPECT_EQ(LookupF(u.get(), {5}), (std::vector<float>{1, 1})) << "admitted at its third use";
  EXPECT_EQ(LookupF(u.get(), {6}), (std::vector<float>{0, 0})) << "its second use";
  EXPECT_TRUE(absl::IsInvalidArgument(u->ImportPending({7}, {3})));  // not below filter_freq
}

}  // namespace
}  // namespace psd
