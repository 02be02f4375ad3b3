// Coordinated checkpoints against a real coordinator and two shards: save
// and restore round trips (dtypes, strings, partitioned variables, another
// partitioning), the a/b consistency of fenced saves under concurrent
// training, DATA_LOSS with nothing applied, missing names, restoring
// TensorFlow-written fixtures, and a shard killed mid-save. No timing
// assertions: everything waits for acknowledgements.
#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/checkpoint_state.h"
#include "checkpoint/file_system.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using checkpoint::BundleReader;
using client::GetVariableOptions;
using client::RestoreOptions;
using client::SaveDetails;
using client::Saver;
using client::Session;
using client::Variable;
namespace partitioners = client::partitioners;

GetVariableOptions Declared(DataType dtype, TensorShape shape) {
  GetVariableOptions o;
  o.dtype = dtype;
  o.shape = std::move(shape);
  return o;
}

template <typename T>
Tensor Vec(TensorShape shape, std::vector<T> v) {
  return *Tensor::FromVector<T>(std::move(shape), v);
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_ckpt_test_");
    ASSERT_FALSE(dir_.empty());
    TestClusterOptions options;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir_,
                                "--max-to-keep", "3"};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    PSD_ASSERT_OK_AND_ASSIGN(session_, Session::Open(cluster_->coordinator_address()));
    PSD_ASSERT_OK_AND_ASSIGN(saver_, Saver::Create(cluster_->coordinator_address()));
  }
  void TearDown() override {
    saver_.reset();
    session_.reset();
    cluster_.reset();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  // A variable with `value` as its initial value, initialized.
  Variable Make(const std::string& name, const Tensor& value) {
    GetVariableOptions o;
    o.initial_value = value;
    o.initialize = true;
    auto v = session_->GetVariable(name, o);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : Variable();
  }
  Tensor Read(const Variable& v) {
    auto t = v.Read();
    EXPECT_TRUE(t.ok()) << v.name() << ": " << t.status();
    return t.ok() ? *t : Tensor();
  }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Saver> saver_;
};

TEST_F(CheckpointTest, SaveRestoreRoundTripsEveryKindOfVariable) {
  Variable f = Make("f", Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  Variable d = Make("d", Vec<double>({2}, {0.25, -1e300}));
  Variable i = Make("i", Tensor::Scalar<int64_t>(42));
  Variable b = Make("b", Vec<bool>({3}, {true, false, true}));
  Variable s = Make("s", Strings({3}, {"", "hello", std::string("a\0b", 3)}));
  Variable e = Make("e", Vec<float>({0, 4}, {}));
  GetVariableOptions po = Declared(DT_FLOAT, {10, 3});
  po.partitioner = partitioners::FixedSize(2);
  PSD_ASSERT_OK_AND_ASSIGN(Variable p, session_->GetVariable("p", po));
  std::vector<float> pv(30);
  for (int k = 0; k < 30; ++k) pv[k] = static_cast<float>(k);
  const Tensor p0 = Vec<float>({10, 3}, pv);
  ASSERT_TRUE(IsOk(p.Assign(p0)));

  SaveDetails details;
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix,
                           saver_->Save(absl::StrCat(dir_, "/model.ckpt"), 7, &details));
  EXPECT_EQ(prefix, absl::StrCat(dir_, "/model.ckpt-7"));
  EXPECT_GT(details.bytes, 0);

  // What TensorFlow would read: one key per variable, p stored in slices.
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(prefix));
  EXPECT_EQ(reader->header().num_shards(), 2);
  PSD_ASSERT_OK_AND_ASSIGN(auto pinfo, reader->GetTensorInfo("p"));
  EXPECT_EQ(pinfo.slices.size(), 2u);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor pr, reader->ReadTensor("p"));
  EXPECT_EQ(pr, p0);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor sr, reader->ReadTensor("s"));
  EXPECT_EQ(sr, Strings({3}, {"", "hello", std::string("a\0b", 3)}));
  EXPECT_TRUE(checkpoint::FileSystem::Default()
                  ->FileExists(checkpoint::MetaFilename(prefix))
                  .ok());

  // Change everything, restore, and get the saved values back.
  const Tensor f0 = Read(f), d0 = Read(d), i0 = Read(i), b0 = Read(b), s0 = Read(s);
  ASSERT_TRUE(IsOk(f.Assign(Vec<float>({2, 3}, {0, 0, 0, 0, 0, 0}))));
  ASSERT_TRUE(IsOk(d.Assign(Vec<double>({2}, {9, 9}))));
  ASSERT_TRUE(IsOk(i.Assign(Tensor::Scalar<int64_t>(-1))));
  ASSERT_TRUE(IsOk(s.Assign(Strings({3}, {"x", "y", "z"}))));
  ASSERT_TRUE(IsOk(p.Assign(Vec<float>({10, 3}, std::vector<float>(30, -1)))));
  ASSERT_TRUE(IsOk(saver_->Restore(prefix)));
  EXPECT_EQ(Read(f), f0);
  EXPECT_EQ(Read(d), d0);
  EXPECT_EQ(Read(i), i0);
  EXPECT_EQ(Read(b), b0);
  EXPECT_EQ(Read(s), s0);
  EXPECT_EQ(Read(p), p0);
  EXPECT_EQ(Read(e).shape(), TensorShape({0, 4}));

  PSD_ASSERT_OK_AND_ASSIGN(auto latest, saver_->LatestCheckpoint());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(*latest, prefix);
  PSD_ASSERT_OK_AND_ASSIGN(auto state, saver_->GetCheckpointState());
  ASSERT_TRUE(state.has_value());
  EXPECT_EQ(state->model_checkpoint_path, prefix);
}

TEST_F(CheckpointTest, RestoresIntoAnotherPartitioningAndUnderAnotherName) {
  GetVariableOptions po = Declared(DT_FLOAT, {10, 3});
  po.partitioner = partitioners::FixedSize(2);
  PSD_ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("w", po));
  std::vector<float> wv(30);
  for (int k = 0; k < 30; ++k) wv[k] = 0.5f * k;
  const Tensor w0 = Vec<float>({10, 3}, wv);
  ASSERT_TRUE(IsOk(w.Assign(w0)));
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver_->Save(absl::StrCat(dir_, "/m")));

  // Three parts, and a plain variable, and a [30] reshape, all from w.
  GetVariableOptions p3 = Declared(DT_FLOAT, {10, 3});
  p3.partitioner = partitioners::FixedSize(3);
  PSD_ASSERT_OK_AND_ASSIGN(Variable w3, session_->GetVariable("w3", p3));
  PSD_ASSERT_OK_AND_ASSIGN(Variable plain, session_->GetVariable("plain", Declared(DT_FLOAT, {10, 3})));
  PSD_ASSERT_OK_AND_ASSIGN(Variable flat, session_->GetVariable("flat", Declared(DT_FLOAT, {30})));
  RestoreOptions ro;
  ro.name_map = {{"w", "w3"}};
  ASSERT_TRUE(IsOk(saver_->Restore(prefix, ro)));
  EXPECT_EQ(Read(w3), w0);
  ro.name_map = {{"w", "plain"}};
  ASSERT_TRUE(IsOk(saver_->Restore(prefix, ro)));
  EXPECT_EQ(Read(plain), w0);
  // A variable named twice is restored once, and from one checkpoint name
  // only: two sources for one variable are refused before anything changes.
  ro.variables = {"w", "w"};
  ro.name_map = {{"w", "w"}};
  client::RestoreDetails details;
  ASSERT_TRUE(IsOk(saver_->Restore(prefix, ro, &details)));
  EXPECT_EQ(details.restored.size(), 1u);
  ro.variables = {"plain"};
  ro.name_map = {{"w", "plain"}};
  const Tensor zeros = Vec<float>({10, 3}, std::vector<float>(30, 0));
  ASSERT_TRUE(IsOk(plain.Assign(zeros)));
  EXPECT_TRUE(IsError(saver_->Restore(prefix, ro), absl::StatusCode::kInvalidArgument,
                      {"variable 'plain' is named twice", "'plain'", "'w'"}));
  EXPECT_EQ(Read(plain), zeros);
  ro.variables.clear();
  // Another shape restores only with reshape (TensorFlow's Saver(reshape=True)).
  ro.name_map = {{"w", "flat"}};
  EXPECT_TRUE(IsError(saver_->Restore(prefix, ro), absl::StatusCode::kInvalidArgument,
                      {"has shape [10,3]", "flat", "[30]", "reshape=True"}));
  ro.reshape = true;
  ASSERT_TRUE(IsOk(saver_->Restore(prefix, ro)));
  EXPECT_EQ(Read(flat), Vec<float>({30}, wv));
  // Even with reshape, a partitioned variable needs a tensor of its shape,
  // and any variable as many elements.
  GetVariableOptions p2 = Declared(DT_FLOAT, {3, 10});
  p2.partitioner = partitioners::FixedSize(3);
  PSD_ASSERT_OK_AND_ASSIGN(Variable w3t, session_->GetVariable("w3t", p2));
  ro.name_map = {{"w", "w3t"}};
  EXPECT_TRUE(IsError(saver_->Restore(prefix, ro), absl::StatusCode::kInvalidArgument,
                      {"unpartitioned variables only"}));
  PSD_ASSERT_OK_AND_ASSIGN(Variable small, session_->GetVariable("small", Declared(DT_FLOAT, {29})));
  ro.name_map = {{"w", "small"}};
  EXPECT_TRUE(IsError(saver_->Restore(prefix, ro), absl::StatusCode::kInvalidArgument,
                      {"as many elements (30 vs 29)"}));
  ro.reshape = false;

  // A name the checkpoint does not have.
  ro.name_map = {{"nope", "plain"}};
  EXPECT_TRUE(IsError(saver_->Restore(prefix, ro), absl::StatusCode::kNotFound,
                      {"not found in checkpoint"}));
}

TEST_F(CheckpointTest, CorruptDataFileIsDataLossAndRestoresNothing) {
  Variable x = Make("x", Vec<float>({4}, {1, 2, 3, 4}));
  Variable y = Make("y", Vec<float>({4}, {5, 6, 7, 8}));
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver_->Save(absl::StrCat(dir_, "/c")));
  ASSERT_TRUE(IsOk(x.Assign(Vec<float>({4}, {0, 0, 0, 0}))));
  ASSERT_TRUE(IsOk(y.Assign(Vec<float>({4}, {0, 0, 0, 0}))));
  // Flip a byte in every data file: whichever shard reads first fails.
  for (const std::string& f : checkpoint::ListDataFiles(checkpoint::FileSystem::Default(), prefix)) {
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    char c;
    io.seekg(0);
    io.get(c);
    io.seekp(0);
    io.put(static_cast<char>(c ^ 0x5a));
  }
  absl::Status s = saver_->Restore(prefix);
  EXPECT_TRUE(IsError(s, absl::StatusCode::kDataLoss, {prefix})) << s;
  EXPECT_EQ(Read(x), Vec<float>({4}, {0, 0, 0, 0}));
  EXPECT_EQ(Read(y), Vec<float>({4}, {0, 0, 0, 0}));
}

// Two trainers each loop `a += 1` then `b += 1`, waiting for each
// acknowledgement, with a and b on different shards; saves run meanwhile.
// A per-shard (fuzzy) save would catch b ahead of a or a two ahead of b.
TEST_F(CheckpointTest, EverySaveIsAConsistentCutAcrossShards) {
  // Each trainer has its own pair: `a` on one shard, `b` on the other, and
  // loops a += 1 then b += 1, waiting for each acknowledgement. A consistent
  // cut holds b <= a <= b + 1 for every pair; a fuzzy per-shard save does not.
  constexpr int kTrainers = 2;
  std::vector<Variable> as, bs;
  int next = 0;
  for (int t = 0; t < kTrainers; ++t) {
    Variable a = Make(absl::StrCat("a", t), Tensor::Scalar<int64_t>(0));
    Variable b;
    for (int k = 0; k < 8 && !b.valid(); ++k) {
      Variable cand = Make(absl::StrCat("b", next++), Tensor::Scalar<int64_t>(0));
      if (cand.parts()[0].shard_id != a.parts()[0].shard_id) b = cand;
    }
    ASSERT_TRUE(b.valid()) << "no variable was placed on the other shard";
    as.push_back(a);
    bs.push_back(b);
  }

  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> trainers;
  for (int t = 0; t < kTrainers; ++t) {
    trainers.emplace_back([&, t] {
      const Tensor one = Tensor::Scalar<int64_t>(1);
      while (!stop.load()) {
        if (!as[t].AssignAdd(one).ok() || !bs[t].AssignAdd(one).ok()) {
          errors.fetch_add(1);
          return;
        }
      }
    });
  }
  std::vector<std::string> prefixes;
  for (int k = 0; k < 4; ++k) {
    // Let some updates land between saves (no timing assumption: any count
    // works, including zero).
    absl::SleepFor(absl::Milliseconds(50));
    auto p = saver_->Save(absl::StrCat(dir_, "/ab"), k);
    ASSERT_TRUE(p.ok()) << p.status();
    prefixes.push_back(*p);
  }
  stop.store(true);
  for (auto& t : trainers) t.join();
  EXPECT_EQ(errors.load(), 0);
  // max_to_keep 3: the first was deleted.
  EXPECT_FALSE(checkpoint::FileSystem::Default()
                   ->FileExists(checkpoint::IndexFilename(prefixes[0]))
                   .ok());
  for (size_t k = 1; k < prefixes.size(); ++k) {
    PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(prefixes[k]));
    for (int t = 0; t < kTrainers; ++t) {
      PSD_ASSERT_OK_AND_ASSIGN(Tensor av, reader->ReadTensor(as[t].name()));
      PSD_ASSERT_OK_AND_ASSIGN(Tensor bv, reader->ReadTensor(bs[t].name()));
      const int64_t an = av.data<int64_t>()[0], bn = bv.data<int64_t>()[0];
      EXPECT_LE(bn, an) << prefixes[k] << " trainer " << t;
      EXPECT_LE(an, bn + 1) << prefixes[k] << " trainer " << t;
    }
  }
  PSD_ASSERT_OK_AND_ASSIGN(std::vector<std::string> last, saver_->LastCheckpoints());
  EXPECT_EQ(last, std::vector<std::string>(prefixes.begin() + 1, prefixes.end()));
}

TEST_F(CheckpointTest, RestoresTensorFlowFixtureIntoDeclaredVariables) {
  const std::string src = absl::StrCat(PSD_TF_FIXTURES, "/serving_saved_model_half_plus_two_gpu");
  std::system(absl::StrCat("cp '", src, "/variables.index' '", src,
                           "/variables.data-00000-of-00001' '", dir_, "/'")
                  .c_str());
  PSD_ASSERT_OK_AND_ASSIGN(Variable a, session_->GetVariable("a", Declared(DT_FLOAT, {})));
  PSD_ASSERT_OK_AND_ASSIGN(Variable b, session_->GetVariable("b", Declared(DT_FLOAT, {})));
  RestoreOptions ro;
  ro.variables = {"a", "b"};
  ASSERT_TRUE(IsOk(saver_->Restore(absl::StrCat(dir_, "/variables"), ro)));
  EXPECT_EQ(Read(a), Tensor::Scalar<float>(0.5f));
  EXPECT_EQ(Read(b), Tensor::Scalar<float>(2.0f));
}

// A save asked while the coordinator is down (being restarted) waits for
// it, within SaverOptions::retry_budget, instead of failing at once; the
// restarted coordinator knows the variables and saves them.
TEST_F(CheckpointTest, SaveRidesOutACoordinatorRestart) {
  Make("v", Vec<float>({3}, {1, 2, 3}));
  ASSERT_TRUE(IsOk(cluster_->coordinator()->Kill()));
  absl::StatusOr<std::string> saved;
  std::thread save([&] { saved = saver_->Save(absl::StrCat(dir_, "/restart"), 1); });
  const absl::Status restarted = cluster_->RestartCoordinator();
  save.join();
  ASSERT_TRUE(IsOk(restarted));
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(*saved, absl::StrCat(dir_, "/restart-1"));
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(*saved));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor v, reader->ReadTensor("v"));
  EXPECT_EQ(v, Vec<float>({3}, {1, 2, 3}));
}

TEST_F(CheckpointTest, ShardKilledMidSaveLeavesEarlierCheckpointsAndLostPartsRestore) {
  Variable v = Make("v", Vec<float>({1 << 20}, std::vector<float>(1 << 20, 1.0f)));
  Variable u = Make("u", Vec<float>({1 << 20}, std::vector<float>(1 << 20, 2.0f)));
  PSD_ASSERT_OK_AND_ASSIGN(std::string first, saver_->Save(absl::StrCat(dir_, "/k"), 1));
  // Kill shard 0 while saves run; whichever step it dies at, every
  // checkpoint listed stays readable and the other shard's fence lifts.
  std::thread saver([&] {
    for (int k = 2; k < 6; ++k) (void)saver_->Save(absl::StrCat(dir_, "/k"), k);
  });
  ASSERT_TRUE(IsOk(cluster_->RestartShard(0)));
  saver.join();
  ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60))));
  // The other shard takes writes again (its fence, if any, lifted).
  Variable on_live = v.parts()[0].shard_id == 1 ? v : u;
  ASSERT_TRUE(IsOk(on_live.AssignAdd(Vec<float>({1 << 20}, std::vector<float>(1 << 20, 0.0f)))));
  PSD_ASSERT_OK_AND_ASSIGN(auto state, saver_->GetCheckpointState());
  ASSERT_TRUE(state.has_value());
  for (const auto& p : state->all_model_checkpoint_paths) {
    PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(p));
    EXPECT_TRUE(reader->ReadTensor("v").ok()) << p;
    EXPECT_TRUE(reader->ReadTensor("u").ok()) << p;
  }
  // The restarted shard lost its part; a restore brings it back.
  ASSERT_TRUE(IsOk(saver_->Restore(first)));
  ASSERT_TRUE(IsOk(v.Refresh()));
  ASSERT_TRUE(IsOk(u.Refresh()));
  EXPECT_EQ(Read(v), Vec<float>({1 << 20}, std::vector<float>(1 << 20, 1.0f)));
  EXPECT_EQ(Read(u), Vec<float>({1 << 20}, std::vector<float>(1 << 20, 2.0f)));
}

// Saving to the same prefix again is ordinary TensorFlow use; a re-save that
// fails (here: a variable not initialized) leaves the checkpoint already at
// that prefix whole, `latest` pointing at it, and no staged file behind.
TEST_F(CheckpointTest, FailedResaveToTheSamePrefixKeepsThePreviousCheckpoint) {
  GetVariableOptions o;
  o.initial_value = Vec<float>({1024}, std::vector<float>(1024, 1.0f));
  o.initialize = true;
  o.partitioner = partitioners::FixedSize(2);  // a part on each shard
  PSD_ASSERT_OK_AND_ASSIGN(Variable a, session_->GetVariable("a", o));
  const std::string p = absl::StrCat(dir_, "/model.ckpt");
  PSD_ASSERT_OK_AND_ASSIGN(std::string first, saver_->Save(p));
  ASSERT_EQ(first, p);
  ASSERT_TRUE(IsOk(a.Assign(Vec<float>({1024}, std::vector<float>(1024, 2.0f)))));
  PSD_ASSERT_OK_AND_ASSIGN(Variable late, session_->GetVariable("late", Declared(DT_FLOAT, {4})));
  auto failed = saver_->Save(p);
  EXPECT_TRUE(IsError(failed, absl::StatusCode::kFailedPrecondition, {"uninitialized"}))
      << failed.status();
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().find(".psd-staging-"), std::string::npos) << e.path();
  }
  PSD_ASSERT_OK_AND_ASSIGN(auto latest, saver_->LatestCheckpoint());
  EXPECT_EQ(latest, std::optional<std::string>(p));
  RestoreOptions ro;
  ro.variables = {"a"};
  ASSERT_TRUE(IsOk(saver_->Restore(p, ro)));
  EXPECT_EQ(Read(a), Vec<float>({1024}, std::vector<float>(1024, 1.0f)));
  // The index reads whole, without the uninitialized variable.
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(p));
  EXPECT_TRUE(reader->GetTensorInfo("a").ok());
  EXPECT_FALSE(reader->GetTensorInfo("late").ok());
  // A save under a regular file says so, after TensorFlow's words.
  std::ofstream(absl::StrCat(dir_, "/a_file")) << "x";
  EXPECT_TRUE(IsError(saver_->Save(absl::StrCat(dir_, "/a_file/model.ckpt")),
                      absl::StatusCode::kInvalidArgument,
                      {"Parent directory of", "doesn't exist, can't save.", "Not a directory"}));
}

// A fence nobody lifts (its coordinator died) holds writes, never rejects
// them, and lifts itself when its lease runs out.
TEST_F(CheckpointTest, AbandonedFenceHoldsWritesThenLiftsByLease) {
  Variable c = Make("c", Tensor::Scalar<int64_t>(0));
  const int shard = c.parts()[0].shard_id;
  auto stub = Shard::NewStub(
      grpc::CreateChannel(cluster_->shard_address(shard), grpc::InsecureChannelCredentials()));
  FenceRequest fence;
  fence.set_fence_id(12345);
  fence.set_lease_ms(300);
  FenceResponse fenced;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->Fence(&ctx, fence, &fenced).ok());
  EXPECT_GE(fenced.snapshot_variables(), 1);
  // Held until the lease ends, then applied.
  ASSERT_TRUE(IsOk(c.AssignAdd(Tensor::Scalar<int64_t>(1))));
  EXPECT_EQ(Read(c), Tensor::Scalar<int64_t>(1));
  // A late unfence is harmless; a later save works.
  UnfenceRequest unfence;
  unfence.set_fence_id(12345);
  unfence.set_discard(true);
  UnfenceResponse unfenced;
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub->Unfence(&ctx2, unfence, &unfenced).ok());
  EXPECT_TRUE(saver_->Save(absl::StrCat(dir_, "/after")).ok());
}

// Writes held by a fence wait without occupying the shard's RPC threads:
// with far more writes held than the server has threads, the coordinator's
// Unfence is still served at once (not when the lease runs out), and every
// held write is then applied exactly once.
TEST_F(CheckpointTest, HeldWritesLeaveTheShardFreeToServeUnfence) {
  Variable c = Make("held", Tensor::Scalar<int64_t>(0));
  const int shard = c.parts()[0].shard_id;
  auto stub = Shard::NewStub(
      grpc::CreateChannel(cluster_->shard_address(shard), grpc::InsecureChannelCredentials()));
  FenceRequest fence;
  fence.set_fence_id(777);
  fence.set_lease_ms(20000);  // beyond the Unfence deadline below: only Unfence can lift it
  FenceResponse fenced;
  grpc::ClientContext fence_ctx;
  ASSERT_TRUE(stub->Fence(&fence_ctx, fence, &fenced).ok());

  constexpr int kWriters = 96;
  std::vector<std::thread> writers;
  std::atomic<int> failed{0};
  for (int i = 0; i < kWriters; ++i) {
    writers.emplace_back([&] {
      if (!c.AssignAdd(Tensor::Scalar<int64_t>(1)).ok()) failed.fetch_add(1);
    });
  }
  // Give the writes time to arrive and be held (the assertions below hold
  // whether or not they all did).
  absl::SleepFor(absl::Seconds(1));
  // Reads are not held by a fence.
  EXPECT_EQ(Read(c), Tensor::Scalar<int64_t>(0));

  UnfenceRequest unfence;
  unfence.set_fence_id(777);
  unfence.set_discard(true);
  UnfenceResponse unfenced;
  grpc::ClientContext unfence_ctx;
  unfence_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status st = stub->Unfence(&unfence_ctx, unfence, &unfenced);
  for (auto& t : writers) t.join();  // by the lease at the latest
  ASSERT_TRUE(st.ok()) << "Unfence was not served while writes were held: "
                       << st.error_message();
  EXPECT_LT(unfenced.fenced_micros(), 15 * 1000 * 1000) << "the fence was lifted by its lease";
  EXPECT_LE(unfenced.held_writes(), kWriters);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(Read(c), Tensor::Scalar<int64_t>(kWriters));
}

}  // namespace
}  // namespace integration
}  // namespace psd
