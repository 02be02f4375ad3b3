// Replicated parts over real processes (docs/replication.md): a coordinator
// with `--replication 2` and three shards. A replicated part gets an in-sync
// backup on another shard; SIGKILLing the part's primary while trainers
// count loses no acknowledged update and applies none twice (the retries
// after the failover carry the same request ids, answered from the request
// window the backup replicated); count_up_to hands out each value once; the
// writes resume after the failover, and the replication factor comes back.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "http_get.h"
#include "psd/client.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/embedding_variable.h"
#include "psd/grpc_status.h"
#include "psd/optimizer.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "psd/wire.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Session;
using client::Variable;

constexpr int kShards = 3;
constexpr int64_t kWidth = 8;

// The lease period the cluster runs with: failover waits for it.
constexpr double kLeaseSeconds = 1.0;

class ReplicationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TestClusterOptions options;
    options.num_shards = kShards;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--liveness-timeout", "1",
                                "--lease-period", absl::StrCat(kLeaseSeconds),
                                "--replication", "2"};
    for (int k = 0; k < kShards; ++k) options.shard_args[k] = ShardArgs();
    PSD_ASSERT_OK_AND_ASSIGN(cluster_, TestCluster::Start(options));
    client::SessionOptions session_options;
    session_options.failover_wait = absl::Seconds(60);
    PSD_ASSERT_OK_AND_ASSIGN(session_,
                             Session::Open(cluster_->coordinator_address(), session_options));
  }
  void TearDown() override {
    session_.reset();
    cluster_.reset();
  }

  // Every shard's extra flags.
  virtual std::vector<std::string> ShardArgs() const { return {}; }

  // A counter of kWidth int64 zeros, replicated as the cluster says.
  Variable Counter(const std::string& name) {
    GetVariableOptions o;
    o.initial_value = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 0));
    o.initialize = true;
    auto v = session_->GetVariable(name, o);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : Variable();
  }

  // `name`, of `dtype` and `shape`, initialized to zeros ("" for strings).
  absl::StatusOr<Variable> Zeros(const std::string& name, DataType dtype, TensorShape shape) {
    GetVariableOptions o;
    o.dtype = dtype;
    o.shape = std::move(shape);
    o.initializer = client::init::Zeros();
    o.initialize = true;
    return session_->GetVariable(name, o);
  }

  // Waits until part 0 of `v` has `backups` in-sync backups, none on its
  // primary's shard nor on `not_on`; returns its handle then.
  absl::StatusOr<PartHandle> WaitInSync(Variable& v, int backups, int not_on = -1) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    PartHandle last;
    while (absl::Now() < deadline) {
      if (absl::Status s = v.Refresh(); !s.ok()) return s;
      last = v.handle().parts(0);
      const auto& in_sync = last.in_sync_shards();
      bool ok = in_sync.size() >= backups;
      for (int32_t shard : in_sync) ok = ok && shard != last.shard_id() && shard != not_on;
      if (ok && !last.lost()) return last;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return absl::DeadlineExceededError(absl::StrCat(
        v.name(), " has no ", backups, " in-sync backups after 60 s: ", last.DebugString()));
  }

  // Runs `writers` threads calling `write(thread)` for `seconds`; expects
  // no write to fail and returns how many were acknowledged.
  int64_t WriteFor(int writers, absl::Duration seconds,
                   const std::function<absl::Status(int)>& write) {
    std::atomic<bool> stop{false};
    std::atomic<int64_t> acked{0};
    std::atomic<int64_t> failed{0};
    std::mutex mu;
    std::string first_failure;
    std::vector<std::thread> threads;
    StopAndJoin stop_on_exit(&stop, &threads);
    for (int t = 0; t < writers; ++t) {
      threads.emplace_back([&, t] {
        while (!stop.load()) {
          absl::Status s = write(t);
          if (s.ok()) {
            acked.fetch_add(1);
            continue;
          }
          failed.fetch_add(1);
          std::lock_guard<std::mutex> lock(mu);
          if (first_failure.empty()) first_failure = s.ToString();
        }
      });
    }
    absl::SleepFor(seconds);
    stop.store(true);
    for (auto& t : threads) t.join();
    threads.clear();
    EXPECT_EQ(failed.load(), 0) << first_failure;
    EXPECT_GT(acked.load(), 0);
    return acked.load();
  }

  // Expects `v`'s part 0 still on `primary` with `backup` its one in-sync
  // backup, never reported behind (so never dropped and made again).
  void ExpectTheSameInSyncBackup(Variable& v, int primary, int backup) {
    PSD_ASSERT_OK_AND_ASSIGN(auto metrics,
                             testing_http::ScrapeFromPortFile(absl::StrCat(
                                 cluster_->state_dir(), "/shard-", primary, ".http-port")));
    EXPECT_EQ(metrics["psd_shard_replica_behind_calls_total"], 0)
        << "the primary reported its backup behind";
    ASSERT_TRUE(IsOk(v.Refresh()));
    const PartHandle after = v.handle().parts(0);
    EXPECT_EQ(after.shard_id(), primary);
    ASSERT_EQ(after.in_sync_shards_size(), 1);
    EXPECT_EQ(after.in_sync_shards(0), backup) << "the backup was dropped and made again";
  }

  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
};

TEST_F(ReplicationTest, AReplicatedPartGetsAnInSyncBackupOnAnotherShard) {
  Variable v = Counter("c");
  ASSERT_TRUE(v.valid());
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  ASSERT_EQ(part.backup_shards_size(), 1);
  EXPECT_NE(part.backup_shards(0), part.shard_id());

  // The backup's shard lists the copy as a follower; clients cannot use it.
  auto stub = Shard::NewStub(grpc::CreateChannel(cluster_->shard_address(part.backup_shards(0)),
                                                 grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  ListVariablesResponse listed;
  ASSERT_TRUE(IsOk(FromGrpcStatus(stub->ListVariables(&ctx, ListVariablesRequest(), &listed))));
  bool found = false;
  for (const VariableInfo& info : listed.variables()) {
    if (info.name() != "c") continue;
    found = true;
    EXPECT_NE(info.follows_move(), 0u);
    EXPECT_TRUE(info.replicated());
  }
  EXPECT_TRUE(found) << listed.DebugString();

  PSD_ASSERT_OK_AND_ASSIGN(ListShardsResponse shards, ListShards(cluster_->coordinator_address()));
  int64_t primaries = 0, backups = 0;
  for (const ShardStatus& s : shards.shards()) {
    primaries += s.primary_groups();
    backups += s.backup_groups();
    if (s.shard_id() == part.shard_id()) EXPECT_EQ(s.primary_groups(), 1);
    if (s.shard_id() == part.backup_shards(0)) EXPECT_EQ(s.backup_groups(), 1);
  }
  EXPECT_EQ(primaries, 1);
  EXPECT_EQ(backups, 1);
}

// Every replica of a part killed at once: the part is lost, and an op on
// it says so as soon as the coordinator knows, rather than waiting out
// failover_wait for a failover that cannot come (here 10 minutes: the op
// would hang past the test's timeout).
TEST_F(ReplicationTest, AnOpOnAPartWithNoReplicaLeftSaysItIsLostAtOnce) {
  Variable v = Counter("gone");
  ASSERT_TRUE(v.valid());
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  client::SessionOptions patient;
  patient.failover_wait = absl::Minutes(10);
  PSD_ASSERT_OK_AND_ASSIGN(auto session, Session::Open(cluster_->coordinator_address(), patient));
  PSD_ASSERT_OK_AND_ASSIGN(Variable mine, session->LookupVariable("gone"));
  ASSERT_TRUE(IsOk(mine.Read().status()));
  ASSERT_TRUE(IsOk(cluster_->KillShard(part.shard_id())));
  ASSERT_TRUE(IsOk(cluster_->KillShard(part.in_sync_shards(0))));
  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(part.shard_id())));
  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(part.in_sync_shards(0))));
  EXPECT_TRUE(IsError(mine.Read().status(), absl::StatusCode::kUnavailable,
                      {"part gone", "is lost", "restore it from a checkpoint"}));
}

// Adam's beta1_power and beta2_power are one-part variables declared
// beside the first variable; beside a partitioned replicated variable they
// belong to no part's group, and had no backup: a SIGKILL of their shard
// lost them (the step could not apply until a restore). They are
// replicated as groups of their own, and survive it.
TEST_F(ReplicationTest, AdamsBetaPowersBesideAPartitionedVariableAreReplicated) {
  GetVariableOptions o;
  o.dtype = DT_FLOAT;
  o.shape = TensorShape{8, 4};
  o.partitioner = client::partitioners::FixedSize(2);
  o.initializer = client::init::Zeros();
  o.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable w, session_->GetVariable("adam_w", o));
  ASSERT_EQ(w.handle().parts_size(), 2);
  client::Optimizer adam(*session_, client::opt::Adam{});
  const Tensor grad = *Tensor::FromVector<float>(TensorShape{8, 4}, std::vector<float>(32, 1));
  ASSERT_TRUE(IsOk(adam.ApplyGradients({{grad, w}})));
  std::vector<Variable> powers = adam.NonSlotVariables();
  ASSERT_EQ(powers.size(), 2u);
  // Every part in sync first (w's parts with their slots, and the powers):
  // the kill below must be the only loss.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (Variable* v : {&w, &powers[0], &powers[1]}) {
    for (bool synced = false; !synced;) {
      ASSERT_LT(absl::Now(), deadline) << v->name() << " has a part without an in-sync backup";
      ASSERT_TRUE(IsOk(v->Refresh()));
      synced = true;
      const VariableHandle handle = v->handle();
      for (const PartHandle& part : handle.parts()) {
        synced = synced && part.in_sync_shards_size() >= 1 && !part.lost();
      }
      if (!synced) absl::SleepFor(absl::Milliseconds(100));
    }
  }
  PSD_ASSERT_OK_AND_ASSIGN(Tensor beta1_before, powers[0].Read());
  ASSERT_TRUE(IsOk(powers[0].Refresh()));
  const int shard = powers[0].handle().parts(0).shard_id();
  ASSERT_TRUE(IsOk(cluster_->KillShard(shard)));
  // The next step finds the powers on their promoted backups.
  ASSERT_TRUE(IsOk(adam.ApplyGradients({{grad, w}})));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor beta1_after, powers[0].Read());
  EXPECT_FLOAT_EQ(beta1_after.data<float>()[0], beta1_before.data<float>()[0] * 0.9f);
  ASSERT_TRUE(IsOk(powers[0].Refresh()));
  EXPECT_NE(powers[0].handle().parts(0).shard_id(), shard);
  EXPECT_FALSE(powers[0].handle().parts(0).lost());
  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(shard)));
}

// A dense gradient above the client's stream threshold (1 MiB) travels as
// a streamed apply; this one (6 MiB) is also over the logged chunk size,
// so the backup stages it in chunks while the client sends, and applies
// it at the commit with the beta powers the primary read (they live in
// another group). Training a big variable with Adam thus keeps its
// in-sync backup (no drop and copy per step), and the backup has every
// acknowledged step when the primary dies.
TEST_F(ReplicationTest, StreamedAdamStepsKeepTheBackupAndSurviveThePrimarysSigkill) {
  constexpr int64_t kRows = 3072, kCols = 512;  // 6 MiB of float
  PSD_ASSERT_OK_AND_ASSIGN(Variable w, Zeros("streamed_adam", DT_FLOAT, TensorShape{kRows, kCols}));
  client::Optimizer adam(*session_, client::opt::Adam{});
  std::vector<float> g(kRows * kCols);
  for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(i % 97) / 97.f - 0.5f;
  const Tensor grad = *Tensor::FromVector<float>(TensorShape{kRows, kCols}, g);
  ASSERT_TRUE(IsOk(adam.ApplyGradients({{grad, w}})));  // makes the slots
  std::vector<Variable> powers = adam.NonSlotVariables();
  for (Variable* v : {&powers[0], &powers[1]}) ASSERT_TRUE(WaitInSync(*v, 1).ok());
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(w, 1));
  const int primary = part.shard_id();
  const int backup = part.in_sync_shards(0);
  const std::string metrics_file =
      absl::StrCat(cluster_->state_dir(), "/shard-", primary, ".http-port");
  PSD_ASSERT_OK_AND_ASSIGN(auto before, testing_http::ScrapeFromPortFile(metrics_file));

  for (int step = 0; step < 5; ++step) ASSERT_TRUE(IsOk(adam.ApplyGradients({{grad, w}})));
  PSD_ASSERT_OK_AND_ASSIGN(auto after, testing_http::ScrapeFromPortFile(metrics_file));
  EXPECT_EQ(after["psd_shard_replica_behind_calls_total"],
            before["psd_shard_replica_behind_calls_total"])
      << "a streamed apply dropped the backup";
  ASSERT_TRUE(IsOk(w.Refresh()));
  EXPECT_EQ(w.handle().parts(0).shard_id(), primary);
  ASSERT_EQ(w.handle().parts(0).in_sync_shards_size(), 1);
  EXPECT_EQ(w.handle().parts(0).in_sync_shards(0), backup);

  PSD_ASSERT_OK_AND_ASSIGN(Tensor trained, w.Read());
  ASSERT_TRUE(IsOk(cluster_->KillShard(primary)));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor promoted, w.Read());  // waits for the failover
  ASSERT_TRUE(IsOk(w.Refresh()));
  EXPECT_EQ(w.handle().parts(0).shard_id(), backup);
  EXPECT_TRUE(promoted.bytes() == trained.bytes()) << "the promoted backup lacks a step";
  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(primary)));
}

// Strings over the stream threshold and the logged chunk size (6 MiB of
// them) are forwarded in chunks of their encoding like any streamed
// assign: the backup stays in sync, and serves the value after the
// primary's SIGKILL.
TEST_F(ReplicationTest, ABigAssignOfStringsKeepsTheBackupAndSurvivesThePrimarysSigkill) {
  constexpr int64_t kStrings = 2048;
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, Zeros("vocabulary", DT_STRING, TensorShape{kStrings}));
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  const int primary = part.shard_id();
  const int backup = part.in_sync_shards(0);

  std::vector<std::string> strings(kStrings);
  for (int64_t i = 0; i < kStrings; ++i) {
    // 1 to 6 KiB each, every byte value, so chunks split strings anywhere.
    strings[i].resize(1024 * (1 + i % 6));
    for (size_t j = 0; j < strings[i].size(); ++j) {
      strings[i][j] = static_cast<char>((i * 31 + j) & 0xff);
    }
  }
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, Tensor::FromStrings(TensorShape{kStrings}, strings));
  ASSERT_TRUE(IsOk(v.Assign(value)));
  ASSERT_NO_FATAL_FAILURE(ExpectTheSameInSyncBackup(v, primary, backup));

  ASSERT_TRUE(IsOk(cluster_->KillShard(primary)));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor promoted, v.Read());  // waits for the failover
  ASSERT_TRUE(IsOk(v.Refresh()));
  EXPECT_EQ(v.handle().parts(0).shard_id(), backup);
  EXPECT_TRUE(promoted.strings() == strings) << "the promoted backup's strings differ";
  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(primary)));
}

// A table's delete_keys and evict are forwarded to its backup like its
// updates: the backup stays in sync (no drop and copy), and after the
// primary's SIGKILL the promoted backup holds every row as the primary
// had it, with its frequency and version.
TEST_F(ReplicationTest, ATablesDeletesAndEvictionsKeepItsBackupAndSurviveThePrimarysSigkill) {
  constexpr int64_t kDim = 4;
  client::EmbeddingVariableOptions o;
  o.embedding_dim = kDim;
  o.ev_option.set_steps_to_live(5);
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingVariable table,
                           session_->GetEmbeddingVariable("forwarded_table", o));
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->LookupVariable("forwarded_table"));
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  const int primary = part.shard_id();
  const int backup = part.in_sync_shards(0);
  const std::string metrics_file =
      absl::StrCat(cluster_->state_dir(), "/shard-", primary, ".http-port");
  PSD_ASSERT_OK_AND_ASSIGN(auto before, testing_http::ScrapeFromPortFile(metrics_file));

  auto keys = [](int64_t from, int64_t to) {
    std::vector<int64_t> k;
    for (int64_t i = from; i < to; ++i) k.push_back(i);
    return *Tensor::FromVector(TensorShape({to - from}), k);
  };
  auto ones = [](int64_t n) {
    return *Tensor::FromVector(TensorShape({n, kDim}), std::vector<float>(n * kDim, 1.f));
  };
  client::KeyedOpOptions step1, step9;
  step1.global_step = 1;
  step9.global_step = 9;
  ASSERT_TRUE(IsOk(table.ScatterAdd(keys(0, 100), ones(100), step1)));
  ASSERT_TRUE(IsOk(table.ScatterAdd(keys(0, 20), ones(20), step9)));
  PSD_ASSERT_OK_AND_ASSIGN(const int64_t deleted, table.DeleteKeys(keys(20, 30)));
  EXPECT_EQ(deleted, 10);
  PSD_ASSERT_OK_AND_ASSIGN(const int64_t evicted, table.Evict(10));  // last updated before 5
  EXPECT_EQ(evicted, 70);

  PSD_ASSERT_OK_AND_ASSIGN(auto after, testing_http::ScrapeFromPortFile(metrics_file));
  EXPECT_EQ(after["psd_shard_replica_behind_calls_total"],
            before["psd_shard_replica_behind_calls_total"])
      << "a table write dropped the backup";
  ASSERT_TRUE(IsOk(v.Refresh()));
  EXPECT_EQ(v.handle().parts(0).shard_id(), primary);
  ASSERT_EQ(v.handle().parts(0).in_sync_shards_size(), 1);
  EXPECT_EQ(v.handle().parts(0).in_sync_shards(0), backup);

  // Every row: key -> (value, frequency, version).
  using Rows = std::map<int64_t, std::tuple<std::vector<float>, int64_t, int64_t>>;
  auto rows_of = [&](const client::EmbeddingRowSet& set) {
    Rows out;
    for (int64_t i = 0; i < set.keys.num_elements(); ++i) {
      const float* row = set.values.data<float>() + i * kDim;
      out[set.keys.data<int64_t>()[i]] = {std::vector<float>(row, row + kDim),
                                          set.freqs.data<int64_t>()[i],
                                          set.versions.data<int64_t>()[i]};
    }
    return out;
  };
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingRowSet trained, table.Export());
  const Rows want = rows_of(trained);
  ASSERT_EQ(want.size(), 20u);  // keys 0..19
  ASSERT_TRUE(IsOk(cluster_->KillShard(primary)));
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingRowSet promoted, table.Export());  // fails over
  EXPECT_EQ(rows_of(promoted), want);
  ASSERT_TRUE(IsOk(v.Refresh()));
  EXPECT_EQ(v.handle().parts(0).shard_id(), backup);
  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(primary)));
}

// Writes that wait for their backups must not hold the threads that serve
// the backups' pulls: many unary writers at once (no data stream, each
// write its own call) keep the backup in sync, with no ReplicaBehind call,
// and every write succeeds. (When the writes waited on gRPC's threads, a
// few writers on a 2-core machine held all of them, the backup missed the
// backup timeout and was dropped and made again, over and over.)
TEST_F(ReplicationTest, ManyUnaryWritersKeepTheBackupInSync) {
  constexpr int kWriters = 32;
  client::SessionOptions unary_options;
  unary_options.failover_wait = absl::Seconds(60);
  unary_options.shard.data_stream = false;
  PSD_ASSERT_OK_AND_ASSIGN(auto unary,
                           Session::Open(cluster_->coordinator_address(), unary_options));
  GetVariableOptions o;
  o.initial_value = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 0));
  o.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, unary->GetVariable("unary_counter", o));
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  const int primary = part.shard_id();
  const int backup = part.in_sync_shards(0);
  const Tensor ones = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 1));
  const int64_t acked =
      WriteFor(kWriters, absl::Seconds(4), [&](int) { return v.AssignAdd(ones); });
  ASSERT_NO_FATAL_FAILURE(ExpectTheSameInSyncBackup(v, primary, backup));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  for (int64_t i = 0; i < kWidth; ++i) EXPECT_EQ(value.data<int64_t>()[i], acked);
}

// Shards whose primaries wait a minute for a backup before dropping it.
class PatientBackupTest : public ReplicationTest {
 protected:
  std::vector<std::string> ShardArgs() const override { return {"--backup-timeout", "60"}; }
};

// A data stream reads and runs its next message while the one before it
// waits for its backup, and answers them in order: the backup's shard is
// fenced (its replay waits for the fence), so the first message's write
// cannot be answered; the second message's write is applied on the primary
// meanwhile (another client reads both), and both are answered, in order,
// once the fence lifts, with the backup still the same in-sync backup.
TEST_F(PatientBackupTest, AStreamRunsItsNextMessageWhileTheOneBeforeWaitsForItsBackup) {
  Variable v = Counter("pipelined");
  ASSERT_TRUE(v.valid());
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  const int backup = part.in_sync_shards(0);

  client::ClientOptions pipelined;
  pipelined.data_stream_frames_in_flight = 2;
  PSD_ASSERT_OK_AND_ASSIGN(auto writer,
                           client::ShardClient::Connect(part.shard_address(), pipelined));

  auto backup_stub = Shard::NewStub(
      grpc::CreateChannel(cluster_->shard_address(backup), grpc::InsecureChannelCredentials()));
  constexpr uint64_t kFenceId = 77;
  {
    FenceRequest request;
    request.set_fence_id(kFenceId);
    request.set_lease_ms(60000);
    FenceResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(IsOk(FromGrpcStatus(backup_stub->Fence(&context, request, &response))));
  }
  auto lift = [&] {
    UnfenceRequest request;
    request.set_fence_id(kFenceId);
    request.set_discard(true);
    UnfenceResponse response;
    grpc::ClientContext context;
    return FromGrpcStatus(backup_stub->Unfence(&context, request, &response));
  };
  const Tensor ones = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 1));
  const Tensor twos = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 2));
  std::future<absl::Status> first = writer->AssignAddAsync(part.name(), ones);
  std::future<absl::Status> second = writer->AssignAddAsync(part.name(), twos);

  // Both applied on the primary while neither is answered.
  bool both_applied = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!both_applied && absl::Now() < deadline) {
    PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
    both_applied = value.data<int64_t>()[0] == 3;
    if (!both_applied) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(both_applied) << "the second message did not run while the first waited";
  EXPECT_EQ(first.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "answered without its backup";
  EXPECT_EQ(second.wait_for(std::chrono::seconds(0)), std::future_status::timeout);

  ASSERT_TRUE(IsOk(lift()));
  EXPECT_TRUE(IsOk(first.get()));
  EXPECT_TRUE(IsOk(second.get()));
  ASSERT_TRUE(IsOk(v.Refresh()));
  ASSERT_EQ(v.handle().parts(0).in_sync_shards_size(), 1);
  EXPECT_EQ(v.handle().parts(0).in_sync_shards(0), backup) << "the backup was dropped";
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  for (int64_t i = 0; i < kWidth; ++i) EXPECT_EQ(value.data<int64_t>()[i], 3);
}

// A data stream that ends (half-closed, or refused for a bad message)
// while a message before the end waits for its backup still answers that
// message first: its write was applied and is answered once the backup
// has it; only then does the stream end, with the end's status.
TEST_F(PatientBackupTest, AStreamEndsOnlyAfterAnsweringTheMessagesBeforeItsEnd) {
  Variable v = Counter("ending");
  ASSERT_TRUE(v.valid());
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  const int backup = part.in_sync_shards(0);
  auto primary = Shard::NewStub(
      grpc::CreateChannel(part.shard_address(), grpc::InsecureChannelCredentials()));
  auto backup_stub = Shard::NewStub(
      grpc::CreateChannel(cluster_->shard_address(backup), grpc::InsecureChannelCredentials()));
  auto fence = [&](bool up) {
    grpc::ClientContext context;
    if (up) {
      FenceRequest request;
      request.set_fence_id(78);
      request.set_lease_ms(60000);
      FenceResponse response;
      return FromGrpcStatus(backup_stub->Fence(&context, request, &response));
    }
    UnfenceRequest request;
    request.set_fence_id(78);
    request.set_discard(true);
    UnfenceResponse response;
    return FromGrpcStatus(backup_stub->Unfence(&context, request, &response));
  };
  const uint64_t client_id = 0x5eed0000 + static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
  BatchRequest add;
  AssignRequest* assign = add.add_ops()->mutable_assign();
  assign->set_name(part.name());
  assign->set_op(UPDATE_ADD);
  TensorToProto(Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 1)),
                assign->mutable_value());
  assign->mutable_request_id()->set_client_id(client_id);

  for (bool half_close : {true, false}) {
    SCOPED_TRACE(half_close ? "half-closed" : "a message over max_batch_ops");
    ASSERT_TRUE(IsOk(fence(true)));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    auto stream = primary->Batch(&context);
    assign->mutable_request_id()->set_seq(half_close ? 1 : 2);
    ASSERT_TRUE(stream->Write(add));
    if (half_close) {
      ASSERT_TRUE(stream->WritesDone());
    } else {
      BatchRequest too_many;
      for (int i = 0; i <= 65536; ++i) too_many.add_ops();
      ASSERT_TRUE(stream->Write(too_many));
    }
    // Applied on the primary while it waits for the fenced backup.
    const int64_t want = half_close ? 1 : 2;
    bool applied = false;
    for (const absl::Time deadline = absl::Now() + absl::Seconds(30);
         !applied && absl::Now() < deadline;) {
      PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
      applied = value.data<int64_t>()[0] == want;
      if (!applied) absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_TRUE(applied);
    ASSERT_TRUE(IsOk(fence(false)));
    BatchResponse reply;
    ASSERT_TRUE(stream->Read(&reply)) << "the message before the end was not answered";
    ASSERT_EQ(reply.results_size(), 1);
    EXPECT_EQ(reply.results(0).code(), 0) << reply.results(0).message();
    EXPECT_FALSE(stream->Read(&reply));
    const absl::Status ended = FromGrpcStatus(stream->Finish());
    if (half_close) {
      EXPECT_TRUE(IsOk(ended));
    } else {
      EXPECT_TRUE(IsError(ended, absl::StatusCode::kInvalidArgument, {"max_batch_ops"}));
    }
  }
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  EXPECT_EQ(value.data<int64_t>()[0], 2);
}

// Streamed assigns (values over the client's stream threshold) to a
// replicated part wait for their backups on the shard's answer pool, not
// on gRPC's threads: eight writers at once leave the threads that serve
// the backup's pulls free, so the backup keeps up and is never reported
// behind.
TEST_F(ReplicationTest, ManyStreamedWritersKeepTheBackupInSync) {
  constexpr int kWriters = 8;
  constexpr int64_t kElements = int64_t{1} << 19;  // 2 MiB of floats: streamed
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, Zeros("streamed", DT_FLOAT, TensorShape{kElements}));
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  const int primary = part.shard_id();
  const int backup = part.in_sync_shards(0);
  std::vector<Tensor> values;
  for (int t = 0; t < kWriters; ++t) {
    Tensor value(DT_FLOAT, TensorShape{kElements});
    std::fill(value.data<float>(), value.data<float>() + kElements, static_cast<float>(t + 1));
    values.push_back(std::move(value));
  }
  WriteFor(kWriters, absl::Seconds(4), [&](int t) { return v.Assign(values[t]); });
  ASSERT_NO_FATAL_FAILURE(ExpectTheSameInSyncBackup(v, primary, backup));
  // One writer's value, whole.
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  const float first = value.data<float>()[0];
  EXPECT_GE(first, 1.0f);
  EXPECT_LE(first, static_cast<float>(kWriters));
  EXPECT_EQ(std::count(value.data<float>(), value.data<float>() + kElements, first), kElements);
}

// The heart of the guarantee: trainers count while the primary is
// SIGKILLed, twice (the second time the primary is the backup promoted the
// first time, and its own backup the copy made after that failover).
TEST_F(ReplicationTest, KillingThePrimaryLosesNoAcknowledgedUpdateAndAppliesNoneTwice) {
  Variable v = Counter("counter");
  ASSERT_TRUE(v.valid());
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));

  constexpr int kTrainers = 3;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> acked{0};
  std::atomic<int64_t> failed{0};
  // Adds whose outcome is unknown: refused as too old on the promoted
  // backup (replication_chaos_test.cc, docs/replication.md "Not yet").
  std::atomic<int64_t> unknown{0};
  std::mutex mu;
  std::vector<int64_t> tickets;  // count_up_to's acknowledged answers
  std::string first_failure;
  std::atomic<int64_t> last_ack_micros{0};
  std::vector<std::thread> trainers;
  StopAndJoin stop_on_exit(&stop, &trainers);
  for (int t = 0; t < kTrainers; ++t) {
    trainers.emplace_back([&] {
      while (!stop.load()) {
        absl::Status s = v.AssignAdd(Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 1)));
        if (s.ok()) {
          acked.fetch_add(1);
          last_ack_micros.store(absl::ToUnixMicros(absl::Now()));
        } else if (absl::IsAborted(s) && absl::StrContains(s.message(), "request id too old")) {
          unknown.fetch_add(1);
        } else {
          failed.fetch_add(1);
          std::lock_guard<std::mutex> lock(mu);
          if (first_failure.empty()) first_failure = s.ToString();
        }
      }
    });
  }
  // Another draws tickets: count_up_to on a replicated scalar.
  GetVariableOptions scalar;
  scalar.initial_value = Tensor::Scalar<int64_t>(0);
  scalar.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable step, session_->GetVariable("step", scalar));
  ASSERT_TRUE(WaitInSync(step, 1).ok());
  trainers.emplace_back([&] {
    while (!stop.load()) {
      // Paced like a step counter (a few hundred a second): the process's
      // requests to one shard during a failover stay within the request
      // window, so a retry of a write the lost primary never replicated
      // is not refused as too old (docs/replication.md "Not yet").
      absl::SleepFor(absl::Milliseconds(5));
      absl::StatusOr<int64_t> got = step.CountUpTo(1 << 30);
      std::lock_guard<std::mutex> lock(mu);
      if (got.ok()) {
        tickets.push_back(*got);
      } else if (!(absl::IsAborted(got.status()) &&
                   absl::StrContains(got.status().message(), "request id too old"))) {
        failed.fetch_add(1);  // too old: a ticket of unknown outcome, never handed out twice
        if (first_failure.empty()) first_failure = got.status().ToString();
      }
    }
  });

  const auto wait_for_acks = [&](int64_t target) {
    const absl::Time deadline = absl::Now() + absl::Seconds(90);
    while (acked.load() < target && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    return acked.load() >= target;
  };
  ASSERT_TRUE(wait_for_acks(50));

  for (int round = 0; round < 2; ++round) {
    // Both variables have their in-sync backup again before each kill.
    ASSERT_TRUE(WaitInSync(step, 1).ok());
    PSD_ASSERT_OK_AND_ASSIGN(part, WaitInSync(v, 1));
    const int primary = part.shard_id();
    const int64_t before = acked.load();
    const absl::Time killed_at = absl::Now();
    ASSERT_TRUE(IsOk(cluster_->KillShard(primary)));
    ASSERT_TRUE(wait_for_acks(before + 100)) << "writes did not resume after shard " << primary
                                             << " was killed; first failure: " << first_failure;
    // Print-only: how long writes stalled (the target is 2x the lease).
    std::printf("round %d: primary shard %d killed; writes resumed %.2f s later (lease %.1f s)\n",
                round, primary,
                absl::ToDoubleSeconds(absl::FromUnixMicros(last_ack_micros.load()) - killed_at),
                kLeaseSeconds);
    PSD_ASSERT_OK_AND_ASSIGN(PartHandle promoted, WaitInSync(v, 1, primary));
    EXPECT_NE(promoted.shard_id(), primary);
    EXPECT_GT(promoted.epoch(), part.epoch());
    ASSERT_TRUE(IsOk(cluster_->StartKilledShard(primary)));
  }
  stop.store(true);
  for (auto& t : trainers) t.join();
  trainers.clear();

  EXPECT_EQ(failed.load(), 0) << first_failure;
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, v.Read());
  for (int64_t i = 0; i < kWidth; ++i) {
    EXPECT_GE(value.data<int64_t>()[i], acked.load()) << "element " << i << ": an update lost";
    EXPECT_LE(value.data<int64_t>()[i], acked.load() + unknown.load())
        << "element " << i << ": an update applied twice";
  }
  // Every acknowledged count_up_to returned a distinct value, and the
  // counter is at least the number acknowledged.
  std::set<int64_t> distinct(tickets.begin(), tickets.end());
  EXPECT_EQ(distinct.size(), tickets.size());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor steps, step.Read());
  EXPECT_GE(steps.data<int64_t>()[0], static_cast<int64_t>(tickets.size()));
}

// A streamed value of 16 MiB (logged for the backup in chunks while the
// client sends it), of random bits: once acknowledged, the backup holds it
// bit for bit, and serves it after the primary's SIGKILL. Before that, a
// stream the client cancels half-way changes nothing on either replica.
TEST_F(ReplicationTest, ABigStreamedAssignSurvivesThePrimarysSigkillBitForBit) {
  constexpr int64_t kRows = 16384, kCols = 256;  // 16 MiB of float
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, Zeros("big", DT_FLOAT, TensorShape{kRows, kCols}));
  PSD_ASSERT_OK_AND_ASSIGN(PartHandle part, WaitInSync(v, 1));
  ASSERT_EQ(v.handle().parts_size(), 1);

  // The cancelled stream: the header and 6 MiB (past one logged chunk),
  // straight to the primary, then the client gives up.
  {
    auto stub = Shard::NewStub(grpc::CreateChannel(cluster_->shard_address(part.shard_id()),
                                                   grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    AssignResponse response;
    std::unique_ptr<grpc::ClientWriter<AssignStreamRequest>> writer =
        stub->AssignStream(&ctx, &response);
    AssignStreamRequest first;
    AssignStreamHeader* header = first.mutable_header();
    header->set_name(part.name());
    header->set_op(UPDATE_ASSIGN);
    header->set_dtype(DT_FLOAT);
    header->mutable_shape()->add_dims(kRows);
    header->mutable_shape()->add_dims(kCols);
    header->set_total_bytes(kRows * kCols * 4);
    header->set_validate_shape(true);
    header->mutable_request_id()->set_client_id(0x5eed);
    header->mutable_request_id()->set_seq(1);
    ASSERT_TRUE(writer->Write(first));
    AssignStreamRequest chunk;
    chunk.set_content(std::string(size_t{1} << 20, '\x7f'));
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(writer->Write(chunk));
    absl::SleepFor(absl::Milliseconds(300));  // the backup pulls what was logged
    ctx.TryCancel();
    EXPECT_FALSE(writer->Finish().ok());
  }
  // Neither replica has any of it: the primary, then (after the primary's
  // SIGKILL) the promoted backup, which had staged a chunk of it.
  const auto all_zero = [&](const char* where) {
    absl::StatusOr<Tensor> read = v.Read();
    ASSERT_TRUE(read.ok()) << read.status();
    for (int64_t i = 0; i < read->num_elements(); ++i) {
      ASSERT_EQ(read->data<float>()[i], 0.0f) << where << ": element " << i;
    }
  };
  // Fails over (the client waits for it) and returns the new primary.
  const auto kill_primary = [&](int primary) -> absl::StatusOr<int> {
    PSD_RETURN_IF_ERROR(cluster_->KillShard(primary));
    absl::Status read = v.Read().status();  // waits for the failover
    PSD_RETURN_IF_ERROR(read);
    PSD_RETURN_IF_ERROR(v.Refresh());
    const int promoted = v.handle().parts(0).shard_id();
    if (promoted == primary) return absl::InternalError("read from the killed primary");
    PSD_RETURN_IF_ERROR(cluster_->StartKilledShard(primary));
    return promoted;
  };
  ASSERT_NO_FATAL_FAILURE(all_zero("the primary after a cancelled stream"));
  PSD_ASSERT_OK_AND_ASSIGN(const int promoted, kill_primary(part.shard_id()));
  ASSERT_NO_FATAL_FAILURE(all_zero("the promoted backup after a cancelled stream"));

  Tensor value(DT_FLOAT, TensorShape{kRows, kCols});
  uint32_t x = 0x9e3779b9u;
  for (int64_t i = 0; i < value.num_elements(); ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    std::memcpy(value.data<float>() + i, &x, 4);  // any bits, NaN payloads too
  }
  PSD_ASSERT_OK_AND_ASSIGN(part, WaitInSync(v, 1));  // a new backup, copied
  ASSERT_EQ(part.shard_id(), promoted);
  ASSERT_TRUE(IsOk(v.Assign(value)));
  // Acknowledged: its in-sync backup has it. The primary dies.
  PSD_ASSERT_OK_AND_ASSIGN(const int second, kill_primary(promoted));
  EXPECT_NE(second, promoted);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor read, v.Read());
  ASSERT_EQ(read.bytes().size(), value.bytes().size());
  EXPECT_TRUE(read.bytes() == value.bytes()) << "the promoted backup's value differs";
}

}  // namespace
}  // namespace integration
}  // namespace psd
