// A bounded chaos run of replicated parts (docs/replication.md): trainers
// count with exactly-once assign_adds, scatter_add random floats into a
// partitioned table and draw count_up_to tickets, all on replication-2
// variables, while a driver SIGKILLs random shards (restarting each once
// the cluster has restored every part's backup) and, at random steps,
// partitions a random part's primary for 0.5 to 3 s (lease 1 s, so some
// cuts fail over and some do not) through the fault proxy
// (tests/common/fault_proxy.h), either
//  - from the coordinator (its heartbeats held: its lease runs out and its
//    backups may be promoted, replication_partition_test.cc), or
//  - from its backups and trainers (everyone dials it through the proxy
//    its --advertise names), while a writer on its side of the partition
//    adds to a counter it serves: those writes wait for backups that
//    cannot follow, which leave the in-sync set after --backup-timeout 1 s,
// then heals and waits for the factor to come back as after a kill, and
// pauses a random part's primary (SIGSTOP) for 0.5 to 3 s before letting
// it go on (SIGCONT): a process that stalls past its lease, not one that
// dies, wakes with writes half answered, parts failed over behind its back
// and answers to old heartbeats in flight; and pauses the coordinator
// likewise (it wakes with every heartbeat late, and must not take live
// shards for dead ones).
// Afterwards: every acknowledged update is there and none twice, every
// ticket was handed out once, each part is served by its primary alone,
// and the replicas are identical bit for bit (each part's primary is
// killed once more with the trainers stopped, and its promoted backup
// reads exactly what the primary read).
//
// PSD_CHAOS_KILLS sets the number of kills (default 6, the CI form; the
// issue's long form is 50), PSD_CHAOS_PARTITIONS the number of partitions
// (default 2), PSD_CHAOS_PAUSES the number of pauses of shards and of the
// coordinator (default 2, one in four of them the coordinator's),
// PSD_CHAOS_SEED the driver's seed (default: a random one;
// printed first, so a failing run's schedule can be replayed).
#include <errno.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "fault_proxy.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "http_get.h"
#include "psd/client.h"
#include "psd/embedding_variable.h"
#include "psd/grpc_status.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "psd/status.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Session;
using client::Variable;
using ::psd::testing::FaultProxy;

constexpr int kShards = 3;
constexpr int kCounters = 3;
constexpr int64_t kWidth = 4;
constexpr int64_t kTableRows = 64;
constexpr int64_t kTableCols = 8;
// The embedding table: keys drawn from [0, kEmbKeys); rows not updated for
// kEmbStepsToLive steps go at each eviction.
constexpr int64_t kEmbKeys = 256;
constexpr int64_t kEmbStepsToLive = 40;

// The environment's `name` if it is a number of at least `min`, else
// `fallback`.
int EnvCount(const char* name, int fallback, int min) {
  const char* env = getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  const int n = atoi(env);
  return n >= min ? n : fallback;
}

uint32_t Seed() {
  const char* env = getenv("PSD_CHAOS_SEED");
  if (env != nullptr && *env != '\0') return static_cast<uint32_t>(strtoul(env, nullptr, 10));
  return std::random_device()();
}

class ReplicationChaosTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TestClusterOptions options;
    options.num_shards = kShards;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--liveness-timeout", "1",
                                "--lease-period", "1", "--replication", "2"};
    // Every shard reaches the coordinator through a proxy of its own, and
    // is reached by everyone else through another (its --advertise), so
    // that either link can be cut. Both are kept across kills: a restart
    // dials the same coordinator proxy and listens on the same port.
    coordinator_links_.resize(kShards);
    shard_links_.resize(kShards);
    options.shard_coordinator = [this](int k, const std::string& coordinator) {
      if (coordinator_links_[k] == nullptr) {
        ::psd::testing::FaultProxyOptions o;
        o.target = coordinator;
        auto proxy = FaultProxy::Start(o);
        if (!proxy.ok()) {
          ADD_FAILURE() << proxy.status();
          return coordinator;
        }
        coordinator_links_[k] = *std::move(proxy);
      }
      return coordinator_links_[k]->address();
    };
    for (int k = 0; k < kShards; ++k) {
      PSD_ASSERT_OK_AND_ASSIGN(const int port, FreeLoopbackPort());
      PSD_ASSERT_OK_AND_ASSIGN(shard_links_[k], FaultProxy::Start(port));
      options.shard_ports[k] = port;
      // A write waits 1 s (as long as a lease) for a backup that cannot
      // follow before the backup is dropped: cuts of 0.5 to 3 s drop it or
      // not.
      options.shard_args[k] = {"--backup-timeout", "1", "--advertise",
                               shard_links_[k]->address()};
    }
    PSD_ASSERT_OK_AND_ASSIGN(cluster_, TestCluster::Start(options));
    client::SessionOptions session_options;
    session_options.failover_wait = absl::Seconds(90);
    PSD_ASSERT_OK_AND_ASSIGN(session_,
                             Session::Open(cluster_->coordinator_address(), session_options));
  }
  void TearDown() override {
    HealAll();
    session_.reset();
    cluster_.reset();
    coordinator_links_.clear();
    shard_links_.clear();
  }

  void HealAll() {
    for (auto& link : coordinator_links_) {
      if (link != nullptr) link->Heal();
    }
    for (auto& link : shard_links_) {
      if (link != nullptr) link->Heal();
    }
  }

  // What shard k holds of part `name`: "" (nothing), "served" or "backup".
  absl::StatusOr<std::string> HeldOn(int k, const std::string& name) {
    auto stub = Shard::NewStub(
        grpc::CreateChannel(cluster_->shard_address(k), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ListVariablesResponse listed;
    PSD_RETURN_IF_ERROR(FromGrpcStatus(stub->ListVariables(&ctx, ListVariablesRequest(), &listed)));
    for (const VariableInfo& info : listed.variables()) {
      if (info.name() == name) return std::string(info.follows_move() != 0 ? "backup" : "served");
    }
    return std::string();
  }

  absl::StatusOr<double> ShardMetric(int k, const std::string& name) {
    PSD_ASSIGN_OR_RETURN(const int port, cluster_->shard_http_port(k));
    PSD_ASSIGN_OR_RETURN(testing_http::HttpReply reply,
                         testing_http::HttpGet("127.0.0.1", port, "/metrics"));
    PSD_ASSIGN_OR_RETURN(auto metrics, testing_http::ParseMetrics(reply.body));
    auto it = metrics.find(name);
    if (it == metrics.end()) return absl::NotFoundError(name + " not in /metrics");
    return it->second;
  }

  // Waits until every part of every variable has its in-sync backup and
  // every shard is live: the state in which any one shard may die.
  absl::Status WaitFullyReplicated(std::vector<Variable>& vars) {
    const absl::Time deadline = absl::Now() + absl::Seconds(120);
    for (;;) {
      bool full = true;
      for (Variable& v : vars) {
        if (absl::Status s = v.Refresh(); !s.ok()) return s;
        const VariableHandle handle = v.handle();
        for (const PartHandle& p : handle.parts()) {
          full = full && !p.lost() && p.in_sync_shards_size() >= 1;
        }
      }
      if (full && cluster_->WaitForShards(absl::Seconds(1)).ok()) return absl::OkStatus();
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError("the replication factor did not come back in 120 s");
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  // By shard: its link to the coordinator, and everyone's link to it.
  std::vector<std::unique_ptr<FaultProxy>> coordinator_links_;
  std::vector<std::unique_ptr<FaultProxy>> shard_links_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
};

TEST_F(ReplicationChaosTest, KillsAndPartitionsLoseNoAcknowledgedUpdateAndLeaveIdenticalReplicas) {
  std::vector<Variable> vars;
  std::vector<Variable> counters;
  for (int c = 0; c < kCounters; ++c) {
    GetVariableOptions o;
    o.initial_value = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 0));
    o.initialize = true;
    PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable(absl::StrCat("counter_", c), o));
    counters.push_back(v);
    vars.push_back(v);
  }
  GetVariableOptions scalar;
  scalar.initial_value = Tensor::Scalar<int64_t>(0);
  scalar.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable step, session_->GetVariable("step", scalar));
  vars.push_back(step);
  GetVariableOptions table_options;
  table_options.dtype = DT_FLOAT;
  table_options.shape = TensorShape{kTableRows, kTableCols};
  table_options.partitioner = client::partitioners::FixedSize(2);
  table_options.initializer = client::init::Zeros();
  table_options.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable table, session_->GetVariable("table", table_options));
  vars.push_back(table);
  // An embedding table whose deletes and evictions are forwarded like its
  // updates (compared whole, not read, at the end).
  client::EmbeddingVariableOptions emb_options;
  emb_options.embedding_dim = kTableCols;
  emb_options.partitioner = client::partitioners::FixedSize(2);
  emb_options.ev_option.set_steps_to_live(kEmbStepsToLive);
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingVariable emb,
                           session_->GetEmbeddingVariable("emb", emb_options));
  PSD_ASSERT_OK_AND_ASSIGN(Variable emb_var, session_->LookupVariable("emb"));
  vars.push_back(emb_var);
  ASSERT_TRUE(IsOk(WaitFullyReplicated(vars)));

  std::atomic<bool> stop{false};
  std::atomic<int64_t> acked[kCounters];
  for (auto& a : acked) a.store(0);
  std::atomic<int64_t> failures{0};
  // Per counter: adds whose outcome is unknown. A write in flight at its
  // primary's death that the backup never received, retried on the
  // promoted backup after the process sent that shard more than a request
  // window of other requests, is refused as too old (docs/replication.md
  // "Not yet"): it may or may not have been applied, never twice.
  std::atomic<int64_t> unknown[kCounters];
  for (auto& u : unknown) u.store(0);
  std::atomic<int64_t> table_adds{0};
  std::atomic<int64_t> table_unknown{0};
  std::atomic<int64_t> emb_writes{0};  // scatter_adds, deletes, evictions
  std::atomic<int64_t> tickets_unknown{0};
  std::mutex mu;
  std::string first_failure;
  std::vector<int64_t> tickets;
  const auto fail = [&](const absl::Status& s) {
    failures.fetch_add(1);
    std::lock_guard<std::mutex> lock(mu);
    if (first_failure.empty()) first_failure = s.ToString();
  };
  std::vector<std::thread> trainers;
  StopAndJoin stop_on_exit(&stop, &trainers);
  for (int t = 0; t < 2; ++t) {
    trainers.emplace_back([&, t] {
      std::mt19937 rng(17 + t);
      const Tensor ones = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 1));
      while (!stop.load()) {
        const int c = static_cast<int>(rng() % kCounters);
        absl::Status s = counters[c].AssignAdd(ones);
        if (s.ok()) {
          acked[c].fetch_add(1);
        } else if (absl::IsAborted(s) && absl::StrContains(s.message(), "request id too old")) {
          unknown[c].fetch_add(1);
        } else {
          fail(s);
        }
      }
    });
  }
  trainers.emplace_back([&] {
    // Random floats: sums whose rounding depends on the order of the adds,
    // so replicas agree bit for bit only if they apply them in one order.
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> value(-1, 1);
    while (!stop.load()) {
      std::vector<int64_t> idx(16);
      for (auto& i : idx) i = static_cast<int64_t>(rng() % kTableRows);
      std::vector<float> rows(idx.size() * kTableCols);
      for (auto& r : rows) r = value(rng);
      absl::Status s = table.ScatterAdd(
          Vec<int64_t>(TensorShape{static_cast<int64_t>(idx.size())}, idx),
          *Tensor::FromVector<float>(TensorShape{static_cast<int64_t>(idx.size()), kTableCols},
                                     rows));
      if (s.ok()) {
        table_adds.fetch_add(1);
      } else if (absl::IsAborted(s) && absl::StrContains(s.message(), "request id too old")) {
        table_unknown.fetch_add(1);  // an add of unknown outcome (see `unknown`)
      } else {
        fail(s);
      }
    }
  });
  trainers.emplace_back([&] {
    // The table's writes by key: scatter_adds of random floats at rising
    // global steps, and now and then a delete and an eviction. A write of
    // unknown outcome (see `unknown`) counts for nothing here: the check
    // is that the replicas agree.
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> value(-1, 1);
    const auto record = [&](const absl::Status& s) {
      if (s.ok()) {
        emb_writes.fetch_add(1);
      } else if (!(absl::IsAborted(s) && absl::StrContains(s.message(), "request id too old"))) {
        fail(s);
      }
    };
    for (int64_t step = 1; !stop.load(); ++step) {
      std::vector<int64_t> keys(8);
      for (auto& k : keys) k = static_cast<int64_t>(rng() % kEmbKeys);
      std::vector<float> rows(keys.size() * kTableCols);
      for (auto& r : rows) r = value(rng);
      client::KeyedOpOptions at;
      at.global_step = step;
      record(emb.ScatterAdd(
          Vec<int64_t>(TensorShape{static_cast<int64_t>(keys.size())}, keys),
          *Tensor::FromVector<float>(TensorShape{static_cast<int64_t>(keys.size()), kTableCols},
                                     rows),
          at));
      if (step % 16 == 0) {
        record(emb.DeleteKeys(Vec<int64_t>(TensorShape{2}, {static_cast<int64_t>(rng() % kEmbKeys),
                                                             static_cast<int64_t>(rng() % kEmbKeys)}))
                   .status());
      }
      if (step % 64 == 0) record(emb.Evict(step).status());
    }
  });
  trainers.emplace_back([&] {
    while (!stop.load()) {
      // Paced like a step counter: see replication_test.cc (the request
      // window during a failover, docs/replication.md "Not yet").
      absl::SleepFor(absl::Milliseconds(5));
      absl::StatusOr<int64_t> got = step.CountUpTo(int64_t{1} << 40);
      if (got.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        tickets.push_back(*got);
      } else if (absl::IsAborted(got.status()) &&
                 absl::StrContains(got.status().message(), "request id too old")) {
        tickets_unknown.fetch_add(1);  // a ticket drawn or not, never handed out twice
      } else {
        fail(got.status());
      }
    }
  });

  const int kills = EnvCount("PSD_CHAOS_KILLS", 6, 1);
  const int partitions = EnvCount("PSD_CHAOS_PARTITIONS", 2, 0);
  const int pauses = EnvCount("PSD_CHAOS_PAUSES", 2, 0);
  const uint32_t seed = Seed();
  std::printf(
      "replay: PSD_CHAOS_SEED=%u PSD_CHAOS_KILLS=%d PSD_CHAOS_PARTITIONS=%d "
      "PSD_CHAOS_PAUSES=%d\n",
      seed, kills, partitions, pauses);
  std::fflush(stdout);
  RecordProperty("seed", absl::StrCat(seed));
  std::mt19937 rng(seed);
  // The schedule: kills, partitions and pauses at random places.
  enum class Fault { kKill, kPartition, kPause };
  std::vector<Fault> schedule(kills, Fault::kKill);
  schedule.insert(schedule.end(), partitions, Fault::kPartition);
  schedule.insert(schedule.end(), pauses, Fault::kPause);
  std::shuffle(schedule.begin(), schedule.end(), rng);
  const auto counter_acks = [&] { return acked[0].load() + acked[1].load() + acked[2].load(); };
  // Writes go on after a fault (every part has a copy that is reachable,
  // or will have once the partition heals).
  const auto writes_go_on = [&](int64_t before) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (counter_acks() < before + 20 && absl::Now() < deadline && failures.load() == 0) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    return counter_acks() >= before + 20 || failures.load() != 0;
  };
  // Every part and where it is served, by variable name, from the handles.
  const auto parts_now = [&] {
    std::vector<std::pair<std::string, PartHandle>> parts;
    for (Variable& v : vars) {
      const VariableHandle handle = v.handle();
      for (const PartHandle& p : handle.parts()) parts.emplace_back(v.name(), p);
    }
    return parts;
  };
  // How many of `before`'s parts served by `victim` were promoted away.
  const auto failed_over_from = [&](const std::vector<std::pair<std::string, PartHandle>>& before,
                                    int victim) {
    int failed_over = 0;
    for (const auto& [name, now] : parts_now()) {
      for (const auto& [then_name, then] : before) {
        if (name == then_name && then.name() == now.name() && then.shard_id() == victim &&
            now.epoch() > then.epoch()) {
          ++failed_over;
        }
      }
    }
    return failed_over;
  };
  int coordinator_cuts = 0, coordinator_cuts_failed_over = 0;
  int backup_cuts = 0, backup_cuts_dropping_backups = 0;
  int pauses_failed_over = 0, coordinator_pauses = 0;
  const absl::Time run_start = absl::Now();
  for (size_t e = 0; e < schedule.size() && failures.load() == 0; ++e) {
    ASSERT_TRUE(IsOk(WaitFullyReplicated(vars))) << "before event " << e;
    absl::SleepFor(absl::Milliseconds(200 + rng() % 600));
    // The guarantee holds while a member of each part's in-sync set
    // survives: a backup that left the set meanwhile (too slow on a loaded
    // machine) must be back before the fault, or the fault would be a
    // second loss for its part.
    ASSERT_TRUE(IsOk(WaitFullyReplicated(vars))) << "before event " << e;
    if (schedule[e] == Fault::kKill) {
      const int victim = static_cast<int>(rng() % kShards);
      const int64_t before = counter_acks();
      std::printf("event %zu: kill shard %d\n", e, victim);
      std::fflush(stdout);
      ASSERT_TRUE(IsOk(cluster_->KillShard(victim)));
      // Writes go on (each part has a copy elsewhere) before the shard is back.
      EXPECT_TRUE(writes_go_on(before)) << "no writes after killing shard " << victim;
      ASSERT_TRUE(IsOk(cluster_->StartKilledShard(victim)));
      continue;
    }
    if (schedule[e] == Fault::kPause && rng() % 4 == 0) {
      const absl::Duration pause = absl::Milliseconds(500 + rng() % 2501);
      std::printf("event %zu: pause the coordinator for %s\n", e,
                  absl::FormatDuration(pause).c_str());
      std::fflush(stdout);
      const pid_t pid = cluster_->coordinator()->pid();
      ASSERT_EQ(::kill(pid, SIGSTOP), 0) << std::strerror(errno);
      absl::SleepFor(pause);
      ASSERT_EQ(::kill(pid, SIGCONT), 0) << std::strerror(errno);
      EXPECT_TRUE(writes_go_on(counter_acks())) << "no writes after the coordinator went on";
      ASSERT_FALSE(cluster_->coordinator()->Exited()) << "the coordinator exited after a pause";
      ASSERT_TRUE(IsOk(WaitFullyReplicated(vars))) << "after event " << e;
      ++coordinator_pauses;
      continue;
    }
    if (schedule[e] == Fault::kPause) {
      // A random part's primary (WaitFullyReplicated refreshed the handles).
      const auto primaries = parts_now();
      const int victim = primaries[rng() % primaries.size()].second.shard_id();
      const absl::Duration pause = absl::Milliseconds(500 + rng() % 2501);
      std::printf("event %zu: pause shard %d for %s\n", e, victim,
                  absl::FormatDuration(pause).c_str());
      std::fflush(stdout);
      const pid_t pid = cluster_->shard(victim)->pid();
      ASSERT_EQ(::kill(pid, SIGSTOP), 0) << std::strerror(errno);
      absl::SleepFor(pause);
      ASSERT_EQ(::kill(pid, SIGCONT), 0) << std::strerror(errno);
      EXPECT_TRUE(writes_go_on(counter_acks()))
          << "no writes after shard " << victim << " went on from a pause";
      ASSERT_FALSE(cluster_->shard(victim)->Exited())
          << "shard " << victim << " exited after a pause";
      ASSERT_TRUE(IsOk(WaitFullyReplicated(vars))) << "after event " << e;
      const int failed_over = failed_over_from(primaries, victim);
      std::printf("  went on: %d parts failed over\n", failed_over);
      if (failed_over > 0) ++pauses_failed_over;
      continue;
    }
    // A random part's primary (WaitFullyReplicated refreshed the handles);
    // cut off from its backups, a random counter's, so that a writer on
    // its side of the partition has a part of it to write to.
    const bool from_coordinator = rng() % 2 == 0;
    const auto primaries = parts_now();
    const int c = static_cast<int>(rng() % kCounters);
    const int victim = from_coordinator
                           ? primaries[rng() % primaries.size()].second.shard_id()
                           : counters[c].handle().parts(0).shard_id();
    const absl::Duration cut = absl::Milliseconds(500 + rng() % 2501);
    FaultProxy* link = (from_coordinator ? coordinator_links_ : shard_links_)[victim].get();
    PSD_ASSERT_OK_AND_ASSIGN(const double behind_before,
                             ShardMetric(victim, "psd_shard_replica_behind_calls_total"));
    std::printf("event %zu: cut shard %d from %s for %s\n", e, victim,
                from_coordinator ? "the coordinator" : "its backups and trainers",
                absl::FormatDuration(cut).c_str());
    std::fflush(stdout);
    std::unique_ptr<client::ShardClient> direct;
    if (!from_coordinator) {
      client::ClientOptions direct_options;
      direct_options.max_attempts = 1;
      PSD_ASSERT_OK_AND_ASSIGN(direct, client::ShardClient::Connect(
                                           cluster_->shard_address(victim), direct_options));
    }
    const absl::Time heal_at = absl::Now() + cut;
    link->SetBlackhole(true);
    int64_t direct_acked = 0, direct_unknown = 0;
    if (direct != nullptr) {
      // A writer on the primary's side (it dials the shard's own port, not
      // the proxy): its writes wait for backups that cannot follow, until
      // they leave the in-sync set. Paced like the step counter, so the
      // trainers' ops held by the partition are still inside the request
      // window when they arrive (replication_partition_test.cc).
      const Tensor ones = Vec<int64_t>(TensorShape{kWidth}, std::vector<int64_t>(kWidth, 1));
      while (absl::Now() < heal_at) {
        const absl::Status s = direct->AssignAdd(counters[c].handle().parts(0).name(), ones);
        if (s.ok()) {
          ++direct_acked;
        } else if (absl::IsUnavailable(s) &&
                   absl::StrContains(s.message(), "not yet on its backup")) {
          ++direct_unknown;  // documented: applied or not, the backup could not be dropped in time
        } else {
          fail(s);
        }
        absl::SleepFor(absl::Milliseconds(10));
      }
    } else {
      absl::SleepFor(cut);
    }
    link->SetBlackhole(false);
    acked[c].fetch_add(direct_acked);
    unknown[c].fetch_add(direct_unknown);
    EXPECT_TRUE(writes_go_on(counter_acks())) << "no writes after the partition of shard "
                                              << victim << " healed";
    ASSERT_FALSE(cluster_->shard(victim)->Exited()) << "shard " << victim
                                                   << " exited after a partition";
    ASSERT_TRUE(IsOk(WaitFullyReplicated(vars))) << "after event " << e;
    // What the cut did, for the figures: parts promoted away from the
    // victim, backups it asked the coordinator to drop.
    const int failed_over = failed_over_from(primaries, victim);
    PSD_ASSERT_OK_AND_ASSIGN(const double behind,
                             ShardMetric(victim, "psd_shard_replica_behind_calls_total"));
    std::printf("  healed: %d parts failed over, %.0f ReplicaBehind calls by shard %d, "
                "%lld writes from its side (%lld of unknown outcome)\n",
                failed_over, behind - behind_before, victim,
                static_cast<long long>(direct_acked + direct_unknown),
                static_cast<long long>(direct_unknown));
    if (from_coordinator) {
      ++coordinator_cuts;
      if (failed_over > 0) ++coordinator_cuts_failed_over;
    } else {
      ++backup_cuts;
      if (behind > behind_before) ++backup_cuts_dropping_backups;
    }
  }
  ASSERT_TRUE(IsOk(WaitFullyReplicated(vars)));
  stop.store(true);
  for (auto& t : trainers) t.join();
  trainers.clear();
  EXPECT_EQ(failures.load(), 0) << first_failure;

  for (int c = 0; c < kCounters; ++c) {
    PSD_ASSERT_OK_AND_ASSIGN(Tensor value, counters[c].Read());
    for (int64_t i = 0; i < kWidth; ++i) {
      // Every acknowledged add, none twice; an add of unknown outcome
      // at most once.
      EXPECT_GE(value.data<int64_t>()[i], acked[c].load()) << "counter " << c << "[" << i << "]";
      EXPECT_LE(value.data<int64_t>()[i], acked[c].load() + unknown[c].load())
          << "counter " << c << "[" << i << "]";
    }
  }
  {
    std::set<int64_t> distinct(tickets.begin(), tickets.end());
    EXPECT_EQ(distinct.size(), tickets.size()) << "a count_up_to value was handed out twice";
    PSD_ASSERT_OK_AND_ASSIGN(Tensor steps, step.Read());
    EXPECT_GE(steps.data<int64_t>()[0], static_cast<int64_t>(tickets.size()));
    EXPECT_LE(steps.data<int64_t>()[0],
              static_cast<int64_t>(tickets.size()) + tickets_unknown.load());
  }
  const absl::Duration run_time = absl::Now() - run_start;
  std::printf(
      "seed %u, %s: %d kills, %d partitions from the coordinator (%d failed over), "
      "%d from backups and trainers (%d dropped a backup), %d pauses (%d of the "
      "coordinator; %d failed over); %lld counter adds (%lld of unknown outcome), %lld table "
      "scatter_adds "
      "(%lld unknown), %lld embedding table writes, %zu tickets (%lld unknown)\n",
      seed, absl::FormatDuration(run_time).c_str(), kills, coordinator_cuts,
      coordinator_cuts_failed_over, backup_cuts, backup_cuts_dropping_backups, pauses,
      coordinator_pauses, pauses_failed_over, static_cast<long long>(counter_acks()),
      static_cast<long long>(unknown[0] + unknown[1] + unknown[2]),
      static_cast<long long>(table_adds.load()), static_cast<long long>(table_unknown.load()),
      static_cast<long long>(emb_writes.load()), tickets.size(),
      static_cast<long long>(tickets_unknown.load()));

  // One primary answering per part: a primary that was cut off and failed
  // over drops its copy once it is back (it may hold a backup there, never
  // a served copy). Bounded: it drops it after it registers again.
  for (Variable& v : vars) {
    ASSERT_TRUE(IsOk(v.Refresh()));
    const VariableHandle handle = v.handle();
    for (const PartHandle& p : handle.parts()) {
      for (int k = 0; k < kShards; ++k) {
        if (k == p.shard_id()) continue;
        std::string held = "served";
        for (int i = 0; i < 600 && held == "served"; ++i) {
          PSD_ASSERT_OK_AND_ASSIGN(held, HeldOn(k, p.name()));
          if (held == "served") absl::SleepFor(absl::Milliseconds(100));
        }
        EXPECT_NE(held, "served") << p.name() << " is served by shard " << k
                                  << " besides its primary, shard " << p.shard_id();
      }
    }
  }

  // Bit for bit: with nothing writing, read each variable, kill the
  // primary of its first part, and read the promoted backup's copy.
  for (Variable& v : vars) {
    if (v.name() == emb_var.name()) continue;  // below
    PSD_ASSERT_OK_AND_ASSIGN(Tensor before, v.Read());
    ASSERT_TRUE(IsOk(WaitFullyReplicated(vars)));
    ASSERT_TRUE(IsOk(v.Refresh()));
    const int primary = v.handle().parts(0).shard_id();
    ASSERT_TRUE(IsOk(cluster_->KillShard(primary)));
    PSD_ASSERT_OK_AND_ASSIGN(Tensor after, v.Read());
    ASSERT_EQ(before.bytes().size(), after.bytes().size());
    EXPECT_EQ(std::memcmp(before.bytes().data(), after.bytes().data(), before.bytes().size()), 0)
        << v.name() << ": the promoted backup's bytes differ from its primary's";
    ASSERT_TRUE(IsOk(cluster_->StartKilledShard(primary)));
  }
  // The table's rows (values, frequencies, versions), likewise.
  using Rows = std::map<int64_t, std::string>;
  const auto rows_of = [](const client::EmbeddingRowSet& set) {
    Rows out;
    const int64_t row_bytes = kTableCols * static_cast<int64_t>(sizeof(float));
    for (int64_t i = 0; i < set.keys.num_elements(); ++i) {
      std::string& row = out[set.keys.data<int64_t>()[i]];
      row.assign(set.values.bytes().data() + i * row_bytes, row_bytes);
      row.append(reinterpret_cast<const char*>(set.freqs.data<int64_t>() + i), 8);
      row.append(reinterpret_cast<const char*>(set.versions.data<int64_t>() + i), 8);
    }
    return out;
  };
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingRowSet emb_before, emb.Export());
  ASSERT_TRUE(IsOk(WaitFullyReplicated(vars)));
  ASSERT_TRUE(IsOk(emb_var.Refresh()));
  const int emb_primary = emb_var.handle().parts(0).shard_id();
  ASSERT_TRUE(IsOk(cluster_->KillShard(emb_primary)));
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingRowSet emb_after, emb.Export());
  EXPECT_TRUE(rows_of(emb_before) == rows_of(emb_after))
      << "the embedding table's promoted backup holds other rows than its primary ("
      << emb_before.keys.num_elements() << " rows before, " << emb_after.keys.num_elements()
      << " after)";
  ASSERT_TRUE(IsOk(cluster_->StartKilledShard(emb_primary)));
}

}  // namespace
}  // namespace integration
}  // namespace psd
