// Checkpoints of replicated clusters over real processes (docs/replication.md
// "Checkpoints and restore"): a coordinator with `--replication 2`, three
// shards and a checkpoint directory. A save taken while trainers write
// holds each part once, as one consistent cut; a restore reaches every
// replica: once the keeper has made the backups again, SIGKILLing each
// primary in turn promotes a backup that reads the restored values bit for
// bit, and writes go on. A checkpoint moves between factors (2 -> 1 -> 2,
// the second by `--restore-from`), each cluster keeping its own factor. A
// restore right after a failover, and one while backups are being copied,
// leave every replica with the restored values.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "checkpoint/bundle_reader.h"
#include "cluster_process.h"
#include "gtest/gtest.h"
#include "psd/embedding_variable.h"
#include "psd/optimizer.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using checkpoint::BundleReader;
using client::EmbeddingVariable;
using client::EmbeddingVariableOptions;
using client::GetVariableOptions;
using client::Optimizer;
using client::Saver;
using client::Session;
using client::Variable;

constexpr int kShards = 3;
constexpr int64_t kRows = 8, kCols = 4;  // w: [8, 4] in two parts
constexpr int64_t kDim = 4;              // emb's rows
constexpr int kKeys = 8;                 // emb's keys: 1..8

Tensor Keys() {
  std::vector<int64_t> keys(kKeys);
  for (int k = 0; k < kKeys; ++k) keys[k] = k + 1;
  return Vec<int64_t>(TensorShape{kKeys}, keys);
}

// The parts of `v` as its handle has them now (a copy: the handle is one).
std::vector<PartHandle> Parts(const Variable& v) {
  const VariableHandle handle = v.handle();
  return {handle.parts().begin(), handle.parts().end()};
}

// A small model as a trainer declares it: a partitioned dense `w` trained
// by Adagrad (its accumulator a slot beside each part), a scalar `step`,
// and an embedding table `emb` of two parts. With `wait_before_slots`
// (a function that waits until the variables have their backups), the
// slots come after w has its backups, as they do when a trainer's first
// ApplyGradients makes them.
struct Model {
  Variable w, step, accum;
  EmbeddingVariable emb;
  std::unique_ptr<Optimizer> adagrad;
  // Optional (DeclareBig): a part large enough that copying it to a backup
  // takes a while.
  Variable big;
  // Optional: a second optimizer, whose slots come late.
  std::unique_ptr<Optimizer> momentum;

  std::vector<Variable> all() const {
    std::vector<Variable> out = {w, accum, step, emb.variable()};
    if (big.valid()) out.push_back(big);
    return out;
  }
};

constexpr int64_t kBigElements = 4 << 20;  // 16 MiB of float

absl::Status DeclareBig(Session& session, Model* m) {
  GetVariableOptions big;
  big.initial_value = Vec<float>(TensorShape{kBigElements}, std::vector<float>(kBigElements, 1.0f));
  big.initialize = true;
  PSD_ASSIGN_OR_RETURN(m->big, session.GetVariable("big", big));
  return absl::OkStatus();
}

absl::StatusOr<Model> DeclareModel(
    Session& session,
    const std::function<absl::Status(std::vector<Variable>)>& wait_before_slots = nullptr) {
  Model m;
  GetVariableOptions w;
  w.initial_value = Vec<float>(TensorShape{kRows, kCols}, std::vector<float>(kRows * kCols, 0.5f));
  w.partitioner = client::partitioners::FixedSize(2);
  w.initialize = true;
  PSD_ASSIGN_OR_RETURN(m.w, session.GetVariable("w", w));
  GetVariableOptions step;
  step.initial_value = Tensor::Scalar<int64_t>(0);
  step.initialize = true;
  PSD_ASSIGN_OR_RETURN(m.step, session.GetVariable("step", step));
  EmbeddingVariableOptions emb;
  emb.embedding_dim = kDim;
  emb.initializer = client::init::Zeros();
  emb.partitioner = client::partitioners::FixedSize(2);
  PSD_ASSIGN_OR_RETURN(m.emb, session.GetEmbeddingVariable("emb", emb));
  if (wait_before_slots) PSD_RETURN_IF_ERROR(wait_before_slots({m.w, m.step, m.emb.variable()}));
  // An accumulator of 1 counts the applies exactly (1 + n in float).
  client::opt::Adagrad adagrad;
  adagrad.learning_rate = 0.1;
  adagrad.initial_accumulator_value = 1.0;
  m.adagrad = std::make_unique<Optimizer>(session, adagrad);
  PSD_RETURN_IF_ERROR(m.adagrad->CreateSlots({m.w}));
  PSD_ASSIGN_OR_RETURN(m.accum, m.adagrad->GetSlot(m.w, "accumulator"));
  return m;
}

// One training step: Adagrad on w, +1 on emb's rows, then step += 1, each
// acknowledged before the next is sent.
absl::Status TrainStep(const Model& m) {
  PSD_RETURN_IF_ERROR(m.adagrad->ApplyGradients(
      {{Vec<float>(TensorShape{kRows, kCols}, std::vector<float>(kRows * kCols, 1.0f)), m.w}}));
  PSD_RETURN_IF_ERROR(
      m.emb.ScatterAdd(Keys(), Vec<float>(TensorShape{kKeys, kDim},
                                          std::vector<float>(kKeys * kDim, 1.0f))));
  return m.step.AssignAdd(Tensor::Scalar<int64_t>(1));
}

// The model's values, as read from the cluster or from a checkpoint; emb's
// rows in key order 1..8.
struct Values {
  Tensor w, accum, step, emb, big;
  bool operator==(const Values& o) const {
    return w == o.w && accum == o.accum && step == o.step && emb == o.emb && big == o.big;
  }
  std::string DebugString() const {
    return absl::StrCat("step ", step.dtype() == DT_INT64 ? step.data<int64_t>()[0] : -1,
                        ", w[0] ", w.dtype() == DT_FLOAT ? w.data<float>()[0] : -1.0f,
                        ", accum[0] ", accum.dtype() == DT_FLOAT ? accum.data<float>()[0] : -1.0f,
                        ", emb[0] ", emb.dtype() == DT_FLOAT ? emb.data<float>()[0] : -1.0f);
  }
};

absl::StatusOr<Values> ReadModel(const Model& m) {
  Values v;
  PSD_ASSIGN_OR_RETURN(v.w, m.w.Read());
  PSD_ASSIGN_OR_RETURN(v.accum, m.accum.Read());
  PSD_ASSIGN_OR_RETURN(v.step, m.step.Read());
  client::KeyedOpOptions look;
  look.inference = true;  // makes no row, counts nothing
  PSD_ASSIGN_OR_RETURN(v.emb, m.emb.Gather(Keys(), look));
  if (m.big.valid()) {
    PSD_ASSIGN_OR_RETURN(v.big, m.big.Read());
  }
  return v;
}

// What a checkpoint holds for the model, checking on the way that it holds
// each part once: w and its slot as two slices each, emb as its two parts'
// rows with each key once.
absl::StatusOr<Values> ReadCheckpoint(const std::string& prefix, const Model& m) {
  PSD_ASSIGN_OR_RETURN(auto reader, BundleReader::Open(prefix));
  std::set<std::string> names;
  for (const auto& info : reader->ListTensors()) names.insert(info.name);
  std::set<std::string> expected = {
      m.w.name(),          m.accum.name(),         m.step.name(),          "emb/part_0-keys",
      "emb/part_0-values", "emb/part_0-freqs",     "emb/part_0-versions",  "emb/part_1-keys",
      "emb/part_1-values", "emb/part_1-freqs",     "emb/part_1-versions"};
  if (m.big.valid()) expected.insert(m.big.name());
  if (names != expected) {
    std::string got;
    for (const std::string& n : names) absl::StrAppend(&got, n, " ");
    return absl::InternalError(absl::StrCat(prefix, " holds ", got));
  }
  for (const std::string& sliced : {m.w.name(), m.accum.name()}) {
    PSD_ASSIGN_OR_RETURN(auto info, reader->GetTensorInfo(sliced));
    if (info.slices.size() != 2) {
      return absl::InternalError(
          absl::StrCat(prefix, ": ", sliced, " is saved in ", info.slices.size(), " slices, not 2"));
    }
  }
  Values v;
  PSD_ASSIGN_OR_RETURN(v.w, reader->ReadTensor(m.w.name()));
  PSD_ASSIGN_OR_RETURN(v.accum, reader->ReadTensor(m.accum.name()));
  PSD_ASSIGN_OR_RETURN(v.step, reader->ReadTensor(m.step.name()));
  if (m.big.valid()) {
    PSD_ASSIGN_OR_RETURN(v.big, reader->ReadTensor(m.big.name()));
  }
  std::map<int64_t, std::vector<float>> rows;
  for (int p = 0; p < 2; ++p) {
    PSD_ASSIGN_OR_RETURN(Tensor keys, reader->ReadTensor(absl::StrCat("emb/part_", p, "-keys")));
    PSD_ASSIGN_OR_RETURN(Tensor values,
                         reader->ReadTensor(absl::StrCat("emb/part_", p, "-values")));
    for (int64_t i = 0; i < keys.shape().num_elements(); ++i) {
      const int64_t key = keys.data<int64_t>()[i];
      if (!rows.emplace(key, std::vector<float>(values.data<float>() + i * kDim,
                                                values.data<float>() + (i + 1) * kDim))
               .second) {
        return absl::InternalError(absl::StrCat(prefix, ": emb's key ", key, " is saved twice"));
      }
    }
  }
  if (rows.size() != static_cast<size_t>(kKeys)) {
    return absl::InternalError(absl::StrCat(prefix, ": emb has ", rows.size(), " rows"));
  }
  std::vector<float> emb;
  for (const auto& [key, row] : rows) emb.insert(emb.end(), row.begin(), row.end());
  v.emb = Vec<float>(TensorShape{kKeys, kDim}, emb);
  return v;
}

class ReplicationCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_repl_ckpt_test_");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    Stop();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  // A cluster of kShards with `replication` and the checkpoint directory,
  // and a session and a saver on it; `extra` coordinator flags.
  absl::Status Start(int replication, const std::vector<std::string>& extra = {}) {
    TestClusterOptions options;
    options.num_shards = kShards;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--liveness-timeout", "1",
                                "--lease-period",       "1",   "--replication",
                                absl::StrCat(replication), "--checkpoint-dir", dir_};
    options.coordinator_args.insert(options.coordinator_args.end(), extra.begin(), extra.end());
    PSD_ASSIGN_OR_RETURN(cluster_, TestCluster::Start(options));
    client::SessionOptions session_options;
    session_options.failover_wait = absl::Seconds(60);
    PSD_ASSIGN_OR_RETURN(session_, Session::Open(cluster_->coordinator_address(), session_options));
    PSD_ASSIGN_OR_RETURN(saver_, Saver::Create(cluster_->coordinator_address()));
    return absl::OkStatus();
  }
  void Stop() {
    model_.reset();  // its optimizer refers to the session
    saver_.reset();
    session_.reset();
    cluster_.reset();
  }

  // Waits until every part of `vars` has an in-sync backup and every shard
  // is live: the state in which any one shard may die.
  absl::Status WaitFullyReplicated(std::vector<Variable> vars) {
    const absl::Time deadline = absl::Now() + absl::Seconds(90);
    std::string last;
    for (;;) {
      bool full = true;
      for (Variable& v : vars) {
        PSD_RETURN_IF_ERROR(v.Refresh());
        for (const PartHandle& p : Parts(v)) {
          if (p.lost() || p.in_sync_shards_size() < 1) {
            full = false;
            last = p.DebugString();
          }
        }
      }
      if (full && cluster_->WaitForShards(absl::Seconds(1)).ok()) return absl::OkStatus();
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("the replication factor did not come back in 90 s: ", last));
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  // The shards that are the primary of some part of the model now.
  absl::StatusOr<std::set<int>> Primaries() {
    std::set<int> out;
    for (Variable v : model_->all()) {
      PSD_RETURN_IF_ERROR(v.Refresh());
      for (const PartHandle& p : Parts(v)) out.insert(p.shard_id());
    }
    return out;
  }

  // SIGKILLs every shard holding a primary, one at a time, each once the
  // factor is back: every part's primary of now is killed at some point,
  // and its promoted backup (the copy the keeper made after the restore, or
  // one made from it) must read `expected` exactly.
  void KillEachPrimaryAndCheck(const Values& expected) {
    PSD_ASSERT_OK_AND_ASSIGN(std::set<int> primaries, Primaries());
    for (int shard : primaries) {
      ASSERT_TRUE(IsOk(WaitFullyReplicated(model_->all())));
      PSD_ASSERT_OK_AND_ASSIGN(std::set<int> now, Primaries());
      if (now.count(shard) == 0) continue;  // its parts failed over at an earlier kill
      std::map<std::string, uint64_t> epochs;
      for (Variable v : model_->all()) {
        for (const PartHandle& p : Parts(v)) {
          if (p.shard_id() == shard) epochs[p.name()] = p.epoch();
        }
      }
      ASSERT_TRUE(IsOk(cluster_->KillShard(shard)));
      // Reads wait for the failover (SessionOptions::failover_wait).
      PSD_ASSERT_OK_AND_ASSIGN(Values after, ReadModel(*model_));
      EXPECT_EQ(after, expected) << "after shard " << shard << " was killed: "
                                 << after.DebugString() << " vs " << expected.DebugString();
      for (Variable v : model_->all()) {
        ASSERT_TRUE(IsOk(v.Refresh()));
        for (const PartHandle& p : Parts(v)) {
          auto it = epochs.find(p.name());
          if (it == epochs.end()) continue;
          EXPECT_NE(p.shard_id(), shard) << p.DebugString();
          EXPECT_GT(p.epoch(), it->second) << p.DebugString();
        }
      }
      std::printf("shard %d killed: %zu parts failed over, each reads the restored values\n",
                  shard, epochs.size());
      ASSERT_TRUE(IsOk(cluster_->StartKilledShard(shard)));
    }
  }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Saver> saver_;
  std::unique_ptr<Model> model_;
};

// `wait_before_slots` as DeclareModel's (nullptr: none).
#define PSD_DECLARE_MODEL(wait_before_slots)                           \
  do {                                                                 \
    auto declared = DeclareModel(*session_, wait_before_slots);        \
    ASSERT_TRUE(declared.ok()) << declared.status();                   \
    model_ = std::make_unique<Model>(std::move(declared).value());     \
  } while (0)

// Each part counts the steps applied to it: n = accumulator - 1 (w's
// parts), emb's row value (each part of emb). A consistent cut with `step`
// at s, two trainers each sending a step's writes one after the other, has
// every n in [s, s + 2]; parts that count the same hold the same w.
void ExpectConsistentCut(const Values& v, const std::string& prefix) {
  const int64_t s = v.step.data<int64_t>()[0];
  std::map<int64_t, float> w_of_count;
  for (int part = 0; part < 2; ++part) {
    const int64_t first = part * (kRows / 2) * kCols;
    const float accum = v.accum.data<float>()[first];
    const float w = v.w.data<float>()[first];
    for (int64_t i = first; i < first + (kRows / 2) * kCols; ++i) {
      ASSERT_EQ(v.accum.data<float>()[i], accum) << prefix << " element " << i;
      ASSERT_EQ(v.w.data<float>()[i], w) << prefix << " element " << i;
    }
    const int64_t n = static_cast<int64_t>(accum) - 1;
    EXPECT_EQ(static_cast<float>(n + 1), accum) << prefix;
    EXPECT_GE(n, s) << prefix << ": w's part " << part << " misses an applied step";
    EXPECT_LE(n, s + 2) << prefix << ": w's part " << part << " is ahead of the step";
    auto [it, fresh] = w_of_count.emplace(n, w);
    if (!fresh) EXPECT_EQ(it->second, w) << prefix << ": parts with " << n << " steps differ";
  }
  for (int64_t i = 0; i < kKeys * kDim; ++i) {
    const float m = v.emb.data<float>()[i];
    EXPECT_GE(m, static_cast<float>(s)) << prefix << " emb element " << i;
    EXPECT_LE(m, static_cast<float>(s + 2)) << prefix << " emb element " << i;
  }
}

TEST_F(ReplicationCheckpointTest, SaveUnderTrainingHoldsEachPartOnceAndRestoreReachesEveryReplica) {
  ASSERT_TRUE(IsOk(Start(2)));
  // The slots come once w has its backups: they join its group, whose
  // backups are then made again with them.
  PSD_DECLARE_MODEL([this](std::vector<Variable> vars) { return WaitFullyReplicated(vars); });
  ASSERT_TRUE(IsOk(TrainStep(*model_)));
  ASSERT_TRUE(IsOk(WaitFullyReplicated(model_->all())));

  std::atomic<bool> stop{false};
  std::atomic<int64_t> steps{0};
  std::mutex mu;
  std::string failure;
  std::vector<std::thread> trainers;
  StopAndJoin stop_on_exit(&stop, &trainers);
  for (int t = 0; t < 2; ++t) {
    trainers.emplace_back([&] {
      while (!stop.load()) {
        absl::Status s = TrainStep(*model_);
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (failure.empty()) failure = s.ToString();
          return;
        }
        steps.fetch_add(1);
      }
    });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (steps.load() < 10 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  std::vector<std::string> prefixes;
  for (int k = 0; k < 3; ++k) {
    absl::SleepFor(absl::Milliseconds(50));
    PSD_ASSERT_OK_AND_ASSIGN(std::string p, saver_->Save(absl::StrCat(dir_, "/model.ckpt"), k));
    prefixes.push_back(p);
  }
  stop.store(true);
  for (auto& t : trainers) t.join();
  trainers.clear();
  ASSERT_TRUE(failure.empty()) << failure;
  ASSERT_GE(steps.load(), 10);

  Values saved;
  for (const std::string& p : prefixes) {
    PSD_ASSERT_OK_AND_ASSIGN(saved, ReadCheckpoint(p, *model_));
    ExpectConsistentCut(saved, p);
  }
  const std::string prefix = prefixes.back();

  // Other values, then the restore: reads give the checkpoint's.
  for (int k = 0; k < 2; ++k) ASSERT_TRUE(IsOk(TrainStep(*model_)));
  ASSERT_TRUE(IsOk(model_->w.Assign(
      Vec<float>(TensorShape{kRows, kCols}, std::vector<float>(kRows * kCols, -3.0f)))));
  PSD_ASSERT_OK_AND_ASSIGN(Values changed, ReadModel(*model_));
  ASSERT_FALSE(changed == saved);
  ASSERT_TRUE(IsOk(saver_->Restore(prefix)));
  PSD_ASSERT_OK_AND_ASSIGN(Values restored, ReadModel(*model_));
  EXPECT_EQ(restored, saved) << restored.DebugString() << " vs " << saved.DebugString();

  // Every replica holds them: each primary's death promotes a backup that
  // reads them bit for bit.
  KillEachPrimaryAndCheck(saved);
  if (HasFatalFailure()) return;

  // Writes go on from the restored values.
  ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60))));
  ASSERT_TRUE(IsOk(TrainStep(*model_)));
  PSD_ASSERT_OK_AND_ASSIGN(Values next, ReadModel(*model_));
  EXPECT_EQ(next.step.data<int64_t>()[0], saved.step.data<int64_t>()[0] + 1);
  EXPECT_EQ(next.accum.data<float>()[0], saved.accum.data<float>()[0] + 1.0f);
}

// A checkpoint of a factor-2 cluster restored into a new factor-1 cluster
// (the trainer declaring its variables, then Saver::Restore), and one of
// that cluster restored into a new factor-2 cluster by `psd coordinator
// --restore-from`: the values come through, each cluster keeps its own
// factor, and the factor-2 one gets its backups and survives a primary's
// death with the restored values.
TEST_F(ReplicationCheckpointTest, RestoresIntoReplicationOneAndBack) {
  ASSERT_TRUE(IsOk(Start(2)));
  PSD_DECLARE_MODEL(nullptr);
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(IsOk(TrainStep(*model_)));
  PSD_ASSERT_OK_AND_ASSIGN(std::string from_two, saver_->Save(absl::StrCat(dir_, "/r2"), 3));
  PSD_ASSERT_OK_AND_ASSIGN(Values two, ReadCheckpoint(from_two, *model_));
  PSD_ASSERT_OK_AND_ASSIGN(Values live, ReadModel(*model_));
  EXPECT_EQ(two, live);
  Stop();

  // Factor 1: the trainer declares as before, then restores.
  ASSERT_TRUE(IsOk(Start(1)));
  PSD_DECLARE_MODEL(nullptr);
  ASSERT_TRUE(IsOk(saver_->Restore(from_two)));
  PSD_ASSERT_OK_AND_ASSIGN(Values in_one, ReadModel(*model_));
  EXPECT_EQ(in_one, two) << in_one.DebugString() << " vs " << two.DebugString();
  for (Variable v : model_->all()) {
    ASSERT_TRUE(IsOk(v.Refresh()));
    for (const PartHandle& p : Parts(v)) {
      EXPECT_FALSE(p.replicated()) << p.DebugString();
      EXPECT_EQ(p.backup_shards_size(), 0) << p.DebugString();
    }
  }
  // Trained on, and saved at factor 1.
  for (int k = 0; k < 2; ++k) ASSERT_TRUE(IsOk(TrainStep(*model_)));
  PSD_ASSERT_OK_AND_ASSIGN(std::string from_one, saver_->Save(absl::StrCat(dir_, "/r1"), 5));
  PSD_ASSERT_OK_AND_ASSIGN(Values one, ReadCheckpoint(from_one, *model_));
  EXPECT_EQ(one.step.data<int64_t>()[0], 5);
  PSD_ASSERT_OK_AND_ASSIGN(ListShardsResponse shards, ListShards(cluster_->coordinator_address()));
  for (const ShardStatus& s : shards.shards()) EXPECT_EQ(s.backup_groups(), 0) << s.DebugString();
  Stop();

  // Factor 2 again, restored at start; the trainer then declares as it
  // would (attaching to the restored variables, not initializing them).
  ASSERT_TRUE(IsOk(Start(2, {"--restore-from", from_one})));
  {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    // All of it: the trainer's declarations below must find the
    // variables initialized (a restore applies on the shards in parallel).
    const std::vector<std::pair<std::string, Tensor>> want = {
        {"step", one.step}, {"w", one.w}, {"w/Adagrad", one.accum}};
    for (;;) {
      std::string missing;
      for (const auto& [name, value] : want) {
        absl::StatusOr<Variable> v = session_->LookupVariable(name);
        absl::StatusOr<Tensor> got = v.ok() ? v->Read() : absl::StatusOr<Tensor>(v.status());
        if (!got.ok() || *got != value) {
          missing = absl::StrCat(name, ": ", got.ok() ? "other values" : got.status().ToString());
        }
      }
      if (missing.empty()) break;
      ASSERT_LT(absl::Now(), deadline)
          << "--restore-from " << from_one << " did not restore " << missing;
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  PSD_DECLARE_MODEL(nullptr);
  PSD_ASSERT_OK_AND_ASSIGN(Values in_two, ReadModel(*model_));
  EXPECT_EQ(in_two, one) << in_two.DebugString() << " vs " << one.DebugString();
  ASSERT_TRUE(IsOk(WaitFullyReplicated(model_->all())));
  for (Variable v : model_->all()) {
    for (const PartHandle& p : Parts(v)) EXPECT_TRUE(p.replicated()) << p.DebugString();
  }
  // The primary of w's first part dies: its backup reads the restored values.
  const int primary = model_->w.handle().parts(0).shard_id();
  ASSERT_TRUE(IsOk(cluster_->KillShard(primary)));
  PSD_ASSERT_OK_AND_ASSIGN(Values after, ReadModel(*model_));
  EXPECT_EQ(after, one) << after.DebugString() << " vs " << one.DebugString();
  ASSERT_TRUE(IsOk(TrainStep(*model_)));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor step, model_->step.Read());
  EXPECT_EQ(step.data<int64_t>()[0], 6);
}

// A restore right after a failover (the part's epoch raised, its new
// backup not made yet), and one while the keeper is copying backups (the
// first restore dropped every group's, and `big` takes a while to copy):
// every replica ends with the restored values.
TEST_F(ReplicationCheckpointTest, RestoreAfterAFailoverAndDuringABackupCopyReachesEveryReplica) {
  ASSERT_TRUE(IsOk(Start(2)));
  PSD_DECLARE_MODEL(nullptr);
  ASSERT_TRUE(IsOk(DeclareBig(*session_, model_.get())));
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(IsOk(TrainStep(*model_)));
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver_->Save(absl::StrCat(dir_, "/m"), 3));
  PSD_ASSERT_OK_AND_ASSIGN(Values saved, ReadCheckpoint(prefix, *model_));
  const Tensor twos = Vec<float>(TensorShape{kBigElements}, std::vector<float>(kBigElements, 2.0f));
  for (int k = 0; k < 2; ++k) ASSERT_TRUE(IsOk(TrainStep(*model_)));
  ASSERT_TRUE(IsOk(model_->big.Assign(twos)));
  ASSERT_TRUE(IsOk(WaitFullyReplicated(model_->all())));

  // w's first part fails over; the restore comes as soon as it has.
  const PartHandle before = model_->w.handle().parts(0);
  ASSERT_TRUE(IsOk(cluster_->KillShard(before.shard_id())));
  {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (;;) {
      ASSERT_TRUE(IsOk(model_->w.Refresh()));
      const PartHandle now = model_->w.handle().parts(0);
      if (now.shard_id() != before.shard_id() && now.epoch() > before.epoch()) break;
      ASSERT_LT(absl::Now(), deadline) << "no failover: " << now.DebugString();
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  ASSERT_TRUE(IsOk(saver_->Restore(prefix)));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor step, model_->step.Read());
  EXPECT_EQ(step, saved.step);

  // The restore dropped every group's backups; the keeper copies them
  // again (on the two live shards). While one (big's, the slow one) is
  // under way the values change, and the next restore comes.
  bool copying = false;
  {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!copying && absl::Now() < deadline) {
      ASSERT_TRUE(IsOk(model_->big.Refresh()));
      for (const PartHandle& p : Parts(model_->big)) {
        copying = copying || p.backup_shards_size() > p.in_sync_shards_size();
      }
    }
  }
  ASSERT_TRUE(IsOk(TrainStep(*model_)));
  ASSERT_TRUE(IsOk(model_->big.Assign(twos)));
  std::printf("second restore %s a backup copy seen under way\n", copying ? "after" : "without");
  ASSERT_TRUE(IsOk(saver_->Restore(prefix)));
  PSD_ASSERT_OK_AND_ASSIGN(Values restored, ReadModel(*model_));
  EXPECT_EQ(restored, saved) << restored.DebugString() << " vs " << saved.DebugString();
  ASSERT_TRUE(IsOk(model_->w.Refresh()));
  EXPECT_GT(model_->w.handle().parts(0).epoch(), before.epoch());

  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(before.shard_id())));
  // Slots declared after the failover join w's group at its epoch and get
  // their backups with it.
  model_->momentum = std::make_unique<Optimizer>(*session_, client::opt::Momentum());
  ASSERT_TRUE(IsOk(model_->momentum->CreateSlots({model_->w})));
  PSD_ASSERT_OK_AND_ASSIGN(Variable late_slot, model_->momentum->GetSlot(model_->w, "momentum"));
  ASSERT_TRUE(IsOk(WaitFullyReplicated({model_->w, late_slot})));

  KillEachPrimaryAndCheck(saved);
  if (HasFatalFailure()) return;
  ASSERT_TRUE(IsOk(TrainStep(*model_)));
  PSD_ASSERT_OK_AND_ASSIGN(step, model_->step.Read());
  EXPECT_EQ(step.data<int64_t>()[0], 4);
}

}  // namespace
}  // namespace integration
}  // namespace psd
