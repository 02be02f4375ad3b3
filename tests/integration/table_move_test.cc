// Live moves of embedding tables' parts against a real coordinator and two
// shards (docs/moves.md, "Embedding tables"): a part moves with its rows,
// its slot rows, each key's frequency and version and its pending admission
// counts, and back; trainers that scatter_add and gather by key while the
// parts move back and forth, and while a shard is drained, lose no
// acknowledged update and count none twice. No timing is asserted: loops
// are bounded by op counts.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "move_admin.h"
#include "checkpoint/bundle_reader.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/embedding_keys.h"
#include "psd/saver.h"
#include "psd/shard.pb.h"
#include "psd/embedding_variable.h"
#include "psd/grpc_status.h"
#include "psd/session.h"
#include "psd/status.h"
#include "shared_cluster_test.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::EmbeddingVariable;
using client::EmbeddingVariableOptions;
using client::KeyedOpOptions;
using client::Session;
namespace init = client::init;
namespace partitioners = client::partitioners;

Tensor Keys(const std::vector<int64_t>& keys) {
  return *Tensor::FromVector(TensorShape({static_cast<int64_t>(keys.size())}), keys);
}
Tensor Rows(int64_t n, int64_t dim, float value) {
  return *Tensor::FromVector(TensorShape({n, dim}),
                             std::vector<float>(static_cast<size_t>(n * dim), value));
}

// Every row of a table: key -> (value, slot rows, freq, version).
using RowMap =
    std::map<int64_t, std::tuple<std::vector<float>, std::vector<float>, int64_t, int64_t>>;

absl::StatusOr<RowMap> ExportAll(const EmbeddingVariable& table,
                                 const std::vector<EmbeddingVariable>& slots) {
  PSD_ASSIGN_OR_RETURN(client::EmbeddingRowSet rows, table.Export(slots));
  RowMap out;
  const int64_t dim = table.embedding_dim();
  const std::vector<int64_t> keys = rows.keys.ToVector<int64_t>();
  const std::vector<float> values = rows.values.ToVector<float>();
  const std::vector<int64_t> freqs = rows.freqs.ToVector<int64_t>();
  const std::vector<int64_t> versions = rows.versions.ToVector<int64_t>();
  for (size_t i = 0; i < keys.size(); ++i) {
    std::vector<float> slot_rows;
    for (const Tensor& s : rows.slot_values) {
      const std::vector<float> v = s.ToVector<float>();
      slot_rows.insert(slot_rows.end(), v.begin() + i * dim, v.begin() + (i + 1) * dim);
    }
    out[keys[i]] = {std::vector<float>(values.begin() + i * dim, values.begin() + (i + 1) * dim),
                    std::move(slot_rows), freqs[i], versions[i]};
  }
  return out;
}

class TableMoveTest : public SharedClusterTest<TableMoveTest> {
 protected:
  MoveAdmin Admin() const { return MoveAdmin(cluster_->coordinator_address()); }
  absl::StatusOr<MovePartResponse> Move(const std::string& part, int32_t to) {
    return Admin().Move(part, to);
  }
  absl::Status Drain(int32_t shard, bool undrain) { return Admin().Drain(shard, undrain); }
  // Part `index` of `name` as the coordinator places it: its name and shard.
  std::pair<std::string, int32_t> PartOf(const std::string& name, int index) {
    return Admin().PartOf(name, index);
  }
  EmbeddingVariable Table(const std::string& name, const EmbeddingVariableOptions& options) {
    auto t = session_->GetEmbeddingVariable(name, options);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : EmbeddingVariable();
  }
};

// A trained table with an Adagrad slot table moves and moves back: every
// row, slot row, frequency and version is as it was, the old handle finds
// the part, and the next apply finds the slot beside it.
TEST_F(TableMoveTest, ATablePartMovesWithItsRowsSlotRowsAndHandleAndBack) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 4;
  o.initializer = init::RandomNormal(0, 1, /*seed=*/17);
  o.partitioner = partitioners::FixedSize(2);
  EmbeddingVariable table = Table("tm/emb", o);
  EmbeddingVariableOptions so = o;
  so.initializer = init::Constant(Tensor::Scalar<float>(0.1f));
  so.slot_of = "tm/emb";
  so.trainable = false;
  EmbeddingVariable slot = Table("tm/emb/Adagrad", so);
  ASSERT_TRUE(table.valid() && slot.valid());
  OptimizerSpec adagrad;
  adagrad.mutable_adagrad()->set_learning_rate(0.1);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 300; ++i) ids.push_back(i * 7 + 3);
  for (int64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(IsOk(table.ApplySparse(adagrad, {slot}, Keys(ids),
                                       Rows(static_cast<int64_t>(ids.size()), 4, 0.5f),
                                       KeyedOpOptions{.global_step = step})));
  }
  ASSERT_TRUE(table.Gather(Keys({3, 10, 10, 5000})).ok());  // counted; 5000 made
  PSD_ASSERT_OK_AND_ASSIGN(RowMap before, ExportAll(table, {slot}));
  ASSERT_EQ(before.size(), 301u);

  const auto [part, from] = PartOf("tm/emb", 0);
  ASSERT_EQ(part, "tm/emb/part_0");
  const int32_t to = 1 - from;
  PSD_ASSERT_OK_AND_ASSIGN(MovePartResponse moved, Move(part, to));
  ASSERT_EQ(moved.parts_size(), 2);
  EXPECT_EQ(moved.parts(0), "tm/emb/part_0");
  EXPECT_EQ(moved.parts(1), "tm/emb/Adagrad/part_0");
  EXPECT_EQ(PartOf("tm/emb", 0).second, to);
  EXPECT_EQ(PartOf("tm/emb/Adagrad", 0).second, to);

  // The old handles refresh themselves.
  PSD_ASSERT_OK_AND_ASSIGN(RowMap after, ExportAll(table, {slot}));
  EXPECT_TRUE(after == before);
  // The next apply finds the slot beside its table: both change.
  ASSERT_TRUE(IsOk(table.ApplySparse(adagrad, {slot}, Keys(ids),
                                     Rows(static_cast<int64_t>(ids.size()), 4, 0.5f),
                                     KeyedOpOptions{.global_step = 4})));
  PSD_ASSERT_OK_AND_ASSIGN(RowMap stepped, ExportAll(table, {slot}));
  for (int64_t k : ids) {
    EXPECT_NE(std::get<0>(stepped[k]), std::get<0>(before[k])) << k;
    EXPECT_NE(std::get<1>(stepped[k]), std::get<1>(before[k])) << k;
    EXPECT_EQ(std::get<3>(stepped[k]), 4) << k;
  }
  // And back.
  ASSERT_TRUE(Move(part, from).ok());
  EXPECT_EQ(PartOf("tm/emb", 0).second, from);
  PSD_ASSERT_OK_AND_ASSIGN(RowMap home, ExportAll(table, {slot}));
  EXPECT_TRUE(home == stepped);
}

// A counter filter's pending counts move: a key one lookup short of
// admission before the move is admitted by its next lookup after it.
TEST_F(TableMoveTest, ACounterFilterTableKeepsItsPendingCountsAcrossAMove) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Constant(Tensor::Scalar<float>(1));
  o.ev_option.mutable_counter_filter()->set_filter_freq(3);
  EmbeddingVariable table = Table("tm/filtered", o);
  ASSERT_TRUE(table.valid());
  ASSERT_TRUE(table.Gather(Keys({7})).ok());
  ASSERT_TRUE(table.Gather(Keys({7})).ok());  // one short
  ASSERT_TRUE(table.Gather(Keys({8})).ok());  // two short
  const auto [part, from] = PartOf("tm/filtered", 0);
  ASSERT_TRUE(Move(part, 1 - from).ok());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor rows, table.Gather(Keys({7, 8})));
  // Key 7 admitted now (its initial row); key 8 still answers the default.
  EXPECT_EQ(rows.ToVector<float>(), (std::vector<float>{1, 1, 0, 0}));
  PSD_ASSERT_OK_AND_ASSIGN(int64_t size, table.Size());
  EXPECT_EQ(size, 1);
}

// Trainers scatter_add (and gather) rows of their own keys in a two-part
// table while the parts move back and forth and a shard is drained and
// undrained: every row ends at its trainer's count of acknowledged adds,
// each gather saw exactly the adds acknowledged before it, and each key's
// frequency counts every acknowledged op once.
TEST_F(TableMoveTest, NoAcknowledgedUpdateIsLostOrDoubledWhileTablePartsMove) {
  constexpr int kTrainers = 3;
  constexpr int kMoves = 12;
  constexpr int64_t kKeysEach = 8;
  EmbeddingVariableOptions o;
  o.embedding_dim = 2;
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  EmbeddingVariable table = Table("tm/live", o);
  ASSERT_TRUE(table.valid());

  std::atomic<bool> stop{false};
  std::vector<std::atomic<int64_t>> adds(kTrainers), gathers(kTrainers);
  std::atomic<int> errors_seen{0};
  // Waits (bounded) until the trainers acknowledged `n` more adds in all,
  // so each move runs under their load.
  auto progress = [&](int64_t n) {
    auto total = [&] {
      int64_t sum = 0;
      for (const auto& a : adds) sum += a.load();
      return sum;
    };
    const int64_t until = total() + n;
    for (int i = 0; i < 20000 && total() < until && errors_seen.load() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  absl::Mutex mu;
  std::vector<std::string> errors;
  auto keys_of = [](int t) {
    std::vector<int64_t> keys;
    for (int64_t j = 0; j < kKeysEach; ++j) keys.push_back(t * 1000 + j);  // both parts
    return keys;
  };
  std::vector<std::thread> trainers;
  for (int t = 0; t < kTrainers; ++t) {
    trainers.emplace_back([&, t] {
      auto fail = [&](const std::string& what) {
        absl::MutexLock lock(&mu);
        errors.push_back(absl::StrCat("trainer ", t, ": ", what));
        errors_seen.fetch_add(1);
      };
      auto session = Session::Open(cluster_->coordinator_address());
      if (!session.ok()) return fail(session.status().ToString());
      auto mine = (*session)->GetEmbeddingVariable("tm/live", o);
      if (!mine.ok()) return fail(mine.status().ToString());
      const Tensor keys = Keys(keys_of(t));
      const Tensor ones = Rows(kKeysEach, 2, 1.0f);
      for (int i = 0; i < 20000 && !stop.load(); ++i) {
        absl::Status s = mine->ScatterAdd(keys, ones);
        if (!s.ok()) return fail(s.ToString());
        adds[t].fetch_add(1);
        if (i % 4 != 0) continue;
        absl::StatusOr<Tensor> rows = mine->Gather(keys);
        if (!rows.ok()) return fail(rows.status().ToString());
        gathers[t].fetch_add(1);
        for (float x : rows->ToVector<float>()) {
          if (x != static_cast<float>(adds[t].load())) {
            return fail(
                absl::StrCat("gathered ", x, " after ", adds[t].load(), " acknowledged adds"));
          }
        }
      }
    });
  }
  int moves = 0;
  for (int i = 0; i < kMoves; ++i) {
    progress(30);
    const auto [part, from] = PartOf("tm/live", i % 2);
    auto moved = Move(part, 1 - from);
    if (!moved.ok()) {
      ADD_FAILURE() << part << ": " << moved.status();
      break;
    }
    ++moves;
  }
  // Everything off the shard that holds part 0, then back into use.
  progress(30);
  const int32_t drained = PartOf("tm/live", 0).second;
  absl::Status drain = Drain(drained, /*undrain=*/false);
  EXPECT_TRUE(drain.ok()) << drain;
  EXPECT_NE(PartOf("tm/live", 0).second, drained);
  EXPECT_NE(PartOf("tm/live", 1).second, drained);
  EXPECT_TRUE(Drain(drained, /*undrain=*/true).ok());
  progress(30);
  EXPECT_TRUE(Move(PartOf("tm/live", 0).first, drained).ok());
  ++moves;
  progress(30);
  stop.store(true);
  for (auto& t : trainers) t.join();
  for (const std::string& e : errors) ADD_FAILURE() << e;
  EXPECT_GE(moves, kMoves);

  PSD_ASSERT_OK_AND_ASSIGN(RowMap rows, ExportAll(table, {}));
  EXPECT_EQ(rows.size(), static_cast<size_t>(kTrainers * kKeysEach));
  for (int t = 0; t < kTrainers; ++t) {
    EXPECT_GT(adds[t].load(), 0);
    for (int64_t k : keys_of(t)) {
      const auto& [value, slots, freq, version] = rows[k];
      const float want = static_cast<float>(adds[t].load());
      EXPECT_EQ(value, (std::vector<float>{want, want})) << "key " << k;
      EXPECT_EQ(freq, adds[t].load() + gathers[t].load()) << "key " << k;
    }
  }
}

// Checkpoints saved back to back while a table's parts move hold each part
// once, at one consistent cut: each trainer's rows (its ops alternate
// between a key of each part) are a prefix of its program, bracketed by
// the ops acknowledged before the save and begun by its end; restored,
// the table holds exactly that.
class TableMoveCheckpointTest : public MovesWithCheckpointsTest {
 protected:
  std::pair<std::string, int32_t> PartOf(const std::string& name, int index) {
    return Admin().PartOf(name, index);
  }
  absl::Status Move(const std::string& part, int32_t to) { return Admin().Move(part, to).status(); }
};

TEST_F(TableMoveCheckpointTest, ACheckpointTakenDuringTableMovesRestoresToExactlyItsCut) {
  constexpr int kTrainers = 2;
  constexpr int kMoves = 10;
  EmbeddingVariableOptions o;
  o.embedding_dim = 1;
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(2);
  PSD_ASSERT_OK_AND_ASSIGN(EmbeddingVariable table, session_->GetEmbeddingVariable("ck/emb", o));
  // Per trainer a key of part 0 and one of part 1.
  std::vector<std::pair<int64_t, int64_t>> keys;
  for (int t = 0; t < kTrainers; ++t) {
    std::pair<int64_t, int64_t> k{-1, -1};
    for (int64_t key = 100 * t; k.first < 0 || k.second < 0; ++key) {
      (PartOfKey(key, 2) == 0 ? k.first : k.second) = key;
    }
    keys.push_back(k);
  }
  std::vector<std::atomic<int64_t>> begun(kTrainers), acked(kTrainers);
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::vector<std::string> errors;
  auto fail = [&](std::string e) {
    absl::MutexLock lock(&mu);
    errors.push_back(std::move(e));
  };
  std::vector<std::thread> trainers;
  for (int t = 0; t < kTrainers; ++t) {
    trainers.emplace_back([&, t] {
      auto session = Session::Open(cluster_->coordinator_address());
      if (!session.ok()) return fail(session.status().ToString());
      auto mine = (*session)->GetEmbeddingVariable("ck/emb", o);
      if (!mine.ok()) return fail(mine.status().ToString());
      for (int i = 0; i < 20000 && !stop.load(); ++i) {
        begun[t].fetch_add(1);
        const int64_t key = i % 2 == 0 ? keys[t].first : keys[t].second;
        absl::Status s = mine->ScatterAdd(Keys({key}), Rows(1, 1, 1.0f));
        if (!s.ok()) return fail(absl::StrCat("trainer ", t, ": ", s.ToString()));
        acked[t].fetch_add(1);
      }
    });
  }
  BackToBackSaves saves(cluster_->coordinator_address(), absl::StrCat(dir_, "/moving.ckpt"), 40,
                        &acked, &begun, fail);
  int moves = 0;
  for (int i = 0; i < kMoves; ++i) {
    const auto [part, from] = PartOf("ck/emb", i % 2);
    absl::Status s = Move(part, 1 - from);
    EXPECT_TRUE(s.ok()) << part << ": " << s;
    moves += s.ok();
  }
  const std::vector<BackToBackSaves::Cut> cuts = saves.Finish();
  stop.store(true);
  for (auto& t : trainers) t.join();
  for (const std::string& e : errors) ADD_FAILURE() << e;
  ASSERT_TRUE(errors.empty());
  EXPECT_EQ(moves, kMoves);
  ASSERT_GE(cuts.size(), 2u) << "saves overlap the moves";

  PSD_ASSERT_OK_AND_ASSIGN(auto saver, client::Saver::Create(cluster_->coordinator_address()));
  for (const BackToBackSaves::Cut& cut : cuts) {
    SCOPED_TRACE(cut.prefix);
    // Each part exactly once.
    PSD_ASSERT_OK_AND_ASSIGN(auto reader, checkpoint::BundleReader::Open(cut.prefix));
    int parts = 0;
    for (const auto& info : reader->ListTensors()) {
      if (info.name.size() > 5 && info.name.substr(info.name.size() - 5) == "-keys") ++parts;
    }
    EXPECT_EQ(parts, 2);
    ASSERT_TRUE(IsOk(saver->Restore(cut.prefix)));
    PSD_ASSERT_OK_AND_ASSIGN(RowMap rows, ExportAll(table, {}));
    for (int t = 0; t < kTrainers; ++t) {
      SCOPED_TRACE(absl::StrCat("trainer ", t));
      auto value = [&](int64_t key) -> int64_t {
        auto it = rows.find(key);
        return it == rows.end() ? 0 : static_cast<int64_t>(std::get<0>(it->second)[0]);
      };
      const int64_t a = value(keys[t].first), b = value(keys[t].second);
      // A prefix of the trainer's ops: the part-0 key's add comes first.
      EXPECT_TRUE(a == b || a == b + 1) << a << " and " << b;
      EXPECT_GE(a + b, cut.acked_before[t]) << "an acknowledged write is missing";
      EXPECT_LE(a + b, cut.begun_after[t]) << "a write counted twice";
    }
  }
}

}  // namespace
}  // namespace integration
}  // namespace psd

namespace psd {
namespace integration {
namespace {

// Not a check (disabled): prints how long moving a table part takes, ROWS
// rows (default 1M) of dim 16 with an Adagrad slot, 4 moves back and forth:
//   ROWS=1000000 psd_table_move_test --gtest_also_run_disabled_tests \
//     --gtest_filter=TableMoveTiming.*
class TableMoveTiming : public SharedClusterTest<TableMoveTiming> {};
TEST_F(TableMoveTiming, DISABLED_PrintsTheTimeToMoveATablePart) {
  EmbeddingVariableOptions o;
  o.embedding_dim = 16;
  o.initializer = init::RandomNormal(0, 1, 3);
  PSD_ASSERT_OK_AND_ASSIGN(EmbeddingVariable table, session_->GetEmbeddingVariable("m/emb", o));
  EmbeddingVariableOptions so = o;
  so.initializer = init::Constant(Tensor::Scalar<float>(0.1f));
  so.slot_of = "m/emb";
  so.trainable = false;
  PSD_ASSERT_OK_AND_ASSIGN(EmbeddingVariable slot,
                           session_->GetEmbeddingVariable("m/emb/Adagrad", so));
  OptimizerSpec adagrad;
  adagrad.mutable_adagrad()->set_learning_rate(0.1);
  const int64_t kRows = std::atoll(std::getenv("ROWS") ? std::getenv("ROWS") : "1000000");
  for (int64_t k = 0; k < kRows; k += 20000) {
    std::vector<int64_t> ids;
    for (int64_t j = k; j < k + 20000; ++j) ids.push_back(j);
    ASSERT_TRUE(IsOk(table.ApplySparse(adagrad, {slot}, Keys(ids), Rows(20000, 16, 0.5f))));
  }
  auto stub = Coordinator::NewStub(
      grpc::CreateChannel(cluster_->coordinator_address(), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 4; ++i) {
    LookupVariableRequest lr;
    lr.set_name("m/emb");
    LookupVariableResponse lresp;
    grpc::ClientContext lctx;
    ASSERT_TRUE(stub->LookupVariable(&lctx, lr, &lresp).ok());
    MovePartRequest req;
    req.set_part(lresp.handle().parts(0).name());
    req.set_target_shard(1 - lresp.handle().parts(0).shard_id());
    MovePartResponse resp;
    grpc::ClientContext ctx;
    const absl::Time start = absl::Now();
    ASSERT_TRUE(stub->MovePart(&ctx, req, &resp).ok());
    std::fprintf(stderr, "moved %lld rows (+Adagrad) in %s: %lld bytes, writes held %.2f ms\n",
                 static_cast<long long>(kRows), absl::FormatDuration(absl::Now() - start).c_str(),
                 static_cast<long long>(resp.bytes()), resp.fence_seconds() * 1e3);
  }
}
}  // namespace
}  // namespace integration
}  // namespace psd
