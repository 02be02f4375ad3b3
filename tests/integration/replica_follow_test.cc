// A backup between two real `psd shard` processes, driven through their
// ShardMove RPCs as the coordinator drives them (docs/replication.md): the
// backup's puller copies the primary's group and long-polls its writes;
// once in sync, every write the primary acknowledges is on the backup; the
// promoted backup holds the primary's bytes and answers retries from the
// window; a primary whose in-sync backup is gone, and that cannot tell a
// coordinator, answers its writes UNAVAILABLE (they stay applied). The
// shards run without a coordinator, so there is no lease to wait for.
#include <csignal>
#include <atomic>
#include <cstdio>
#include <map>
#include <unistd.h>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../common/http_get.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/grpc_status.h"
#include "psd/status.h"
#include "psd/shard.grpc.pb.h"
#include "psd/wire.h"
#include "shard_process.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

template <typename Call>
absl::Status Rpc(Call&& call) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return FromGrpcStatus(call(&ctx));
}

TensorProto Floats(std::vector<float> v) {
  TensorProto p;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{static_cast<int64_t>(v.size())}, v), &p);
  return p;
}

CreateVariableRequest Part(const std::string& name) {
  CreateVariableRequest create;
  create.set_name(name);
  create.set_dtype(DT_FLOAT);
  create.mutable_shape()->add_dims(4);
  create.set_replicated(true);
  return create;
}

std::string HttpPortFile(int shard) {
  static std::atomic<int> next{0};
  return absl::StrCat(::testing::TempDir(), "/replica_follow_", getpid(), "_", next.fetch_add(1),
                      "_", shard, ".http");
}

class ReplicaFollowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ShardProcessOptions options;
    options.id = 0;
    options.extra_args = {"--backup-timeout", "5", "--http-port-file", http_ports_[0]};
    PSD_ASSERT_OK_AND_ASSIGN(primary_, ShardProcess::Start(options));
    options.id = 1;
    options.extra_args = {"--backup-timeout", "5", "--http-port-file", http_ports_[1]};
    PSD_ASSERT_OK_AND_ASSIGN(backup_, ShardProcess::Start(options));
    primary_data_ = Shard::NewStub(ChannelTo(primary_->address()));
    backup_data_ = Shard::NewStub(ChannelTo(backup_->address()));
    primary_move_ = ShardMove::NewStub(ChannelTo(primary_->address()));
    backup_move_ = ShardMove::NewStub(ChannelTo(backup_->address()));
  }

  absl::Status CreateOnPrimary(const std::string& name) {
    CreateVariableRequest create = Part(name);
    *create.mutable_initial_value() = Floats({0.5f, -1, 2, 1e-3f});
    create.set_initialize(true);
    CreateVariableResponse created;
    return Rpc([&](grpc::ClientContext* ctx) {
      return primary_data_->CreateVariable(ctx, create, &created);
    });
  }
  // The backup of `name` as follow `move_id`, caught up and in sync.
  void Follow(const std::string& name, uint64_t move_id) {
    StartMoveInRequest start;
    start.set_move_id(move_id);
    start.set_source_address(primary_->address());
    start.set_follow(true);
    start.set_epoch(1);
    *start.add_parts() = Part(name);
    StartMoveInResponse started;
    ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
      return backup_move_->StartMoveIn(ctx, start, &started);
    })));
    ASSERT_TRUE(IsOk(WaitCaughtUp(move_id, 0)));
    SyncReplicaRequest sync;
    sync.set_move_id(move_id);
    sync.set_in_sync(true);
    SyncReplicaResponse synced;
    ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
      return primary_move_->SyncReplica(ctx, sync, &synced);
    })));
    ASSERT_TRUE(IsOk(WaitCaughtUp(move_id, synced.logged_seq())));
  }
  // Until the backup is forwarding and applied at least `seq` and all it
  // heard of (bounded: 120 polls of up to 1 s).
  absl::Status WaitCaughtUp(uint64_t move_id, uint64_t seq) {
    for (int i = 0; i < 120; ++i) {
      MoveStatusRequest request;
      request.set_move_id(move_id);
      request.set_wait_ms(1000);
      MoveStatusResponse status;
      PSD_RETURN_IF_ERROR(Rpc([&](grpc::ClientContext* ctx) {
        return backup_move_->MoveStatus(ctx, request, &status);
      }));
      if (status.phase() == MOVE_FAILED) return absl::InternalError(status.message());
      if (status.phase() == MOVE_FORWARDING && status.applied_seq() >= seq &&
          status.applied_seq() == status.logged_seq()) {
        return absl::OkStatus();
      }
    }
    return absl::DeadlineExceededError("the backup did not catch up");
  }
  absl::Status AddOnPrimary(const std::string& name, uint64_t seq, uint64_t client_id = 77) {
    AssignRequest add;
    add.set_name(name);
    add.set_op(UPDATE_ADD);
    *add.mutable_value() = Floats({1.f / 3, 0.1f * seq, -2.5f, 1e-5f});
    add.mutable_request_id()->set_client_id(client_id);
    add.mutable_request_id()->set_seq(seq);
    AssignResponse response;
    return Rpc(
        [&](grpc::ClientContext* ctx) { return primary_data_->Assign(ctx, add, &response); });
  }
  // Promotes the backup of follow `move_id` (epoch 2); its applied_seq.
  absl::StatusOr<uint64_t> Promote(uint64_t move_id) {
    PromoteReplicaRequest promote;
    promote.set_move_id(move_id);
    promote.set_epoch(2);
    PromoteReplicaResponse promoted;
    PSD_RETURN_IF_ERROR(Rpc([&](grpc::ClientContext* ctx) {
      return backup_move_->PromoteReplica(ctx, promote, &promoted);
    }));
    return promoted.applied_seq();
  }
  absl::StatusOr<TensorProto> ReadFrom(Shard::Stub* stub, const std::string& name) {
    ReadRequest read;
    read.set_name(name);
    ReadResponse response;
    PSD_RETURN_IF_ERROR(
        Rpc([&](grpc::ClientContext* ctx) { return stub->Read(ctx, read, &response); }));
    return response.value();
  }

  void TearDown() override {
    for (const std::string& file : http_ports_) std::remove(file.c_str());
  }
  // Shard k's /metrics (0: the primary).
  std::map<std::string, double> Scrape(int k) {
    auto metrics = testing_http::ScrapeFromPortFile(http_ports_[k]);
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return metrics.ok() ? *metrics : std::map<std::string, double>{};
  }

  const std::string http_ports_[2] = {HttpPortFile(0), HttpPortFile(1)};
  std::unique_ptr<ShardProcess> primary_;
  std::unique_ptr<ShardProcess> backup_;
  std::unique_ptr<Shard::Stub> primary_data_, backup_data_;
  std::unique_ptr<ShardMove::Stub> primary_move_, backup_move_;
};

TEST_F(ReplicaFollowTest, AnInSyncBackupHoldsEveryAcknowledgedWriteAndServesOncePromoted) {
  ASSERT_TRUE(IsOk(CreateOnPrimary("w")));
  ASSERT_TRUE(IsOk(AddOnPrimary("w", 1)));  // before the backup
  Follow("w", 0x77);
  // Unserved while it follows, listed as a backup.
  EXPECT_TRUE(IsError(ReadFrom(backup_data_.get(), "w").status(), absl::StatusCode::kUnavailable,
                      {"'w' is a backup"}));
  ListVariablesRequest list;
  ListVariablesResponse listed;
  ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
    return backup_data_->ListVariables(ctx, list, &listed);
  })));
  ASSERT_EQ(listed.variables_size(), 1);
  EXPECT_EQ(listed.variables(0).follows_move(), 0x77u);
  // A follow is never frozen.
  FreezeMoveRequest freeze;
  freeze.set_move_id(0x77);
  FreezeMoveResponse frozen;
  EXPECT_TRUE(IsError(Rpc([&](grpc::ClientContext* ctx) {
                        return primary_move_->FreezeMove(ctx, freeze, &frozen);
                      }),
                      absl::StatusCode::kFailedPrecondition));

  // Every write acknowledged from now on is on the backup when answered:
  // promoted right after the last answer, the backup holds them all.
  for (uint64_t seq = 2; seq <= 40; ++seq) ASSERT_TRUE(IsOk(AddOnPrimary("w", seq)));
  std::map<std::string, double> metrics = Scrape(0);
  EXPECT_EQ(metrics["psd_shard_backups_following"], 1);
  // Those the backup had not acknowledged yet when they were ready to be
  // answered (one that it had already is answered at once: on a busy
  // machine the backup may acknowledge every write before its answer is
  // ready, so none is required here; StoreReplicaTest counts them).
  EXPECT_LE(metrics["psd_shard_backup_waited_writes_total"], 39);
  EXPECT_EQ(metrics["psd_shard_backup_waited_writes_total"] > 0,
            metrics["psd_shard_backup_wait_seconds_total"] > 0);
  EXPECT_EQ(Scrape(1)["psd_shard_backups_held"], 1);
  PSD_ASSERT_OK_AND_ASSIGN(uint64_t applied, Promote(0x77));
  EXPECT_EQ(applied, 39u);
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto want, ReadFrom(primary_data_.get(), "w"));
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto got, ReadFrom(backup_data_.get(), "w"));
  EXPECT_EQ(got.content(), want.content());  // bit for bit
  // Retries of writes the primary applied (before the backup was made, and
  // since) are answered from the window on the promoted backup.
  for (uint64_t seq : {1, 40}) {
    AssignRequest add;
    add.set_name("w");
    add.set_op(UPDATE_ADD);
    *add.mutable_value() = Floats({1000, 1000, 1000, 1000});
    add.mutable_request_id()->set_client_id(77);
    add.mutable_request_id()->set_seq(seq);
    AssignResponse response;
    ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
      return backup_data_->Assign(ctx, add, &response);
    })));
  }
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto after, ReadFrom(backup_data_.get(), "w"));
  EXPECT_EQ(after.content(), want.content());
}

TEST_F(ReplicaFollowTest, APrimaryThatLostItsInSyncBackupAndHasNoCoordinatorAnswersUnavailable) {
  ASSERT_TRUE(IsOk(CreateOnPrimary("v")));
  Follow("v", 0x78);
  ASSERT_TRUE(IsOk(AddOnPrimary("v", 1)));
  ASSERT_TRUE(IsOk(backup_->Kill()));
  // Not on the backup within --backup-timeout (5 s here, so that a loaded
  // machine never misses it while the backup lives), and no coordinator to
  // drop it from the in-sync set: the write is applied, not acknowledged.
  EXPECT_TRUE(IsError(AddOnPrimary("v", 2), absl::StatusCode::kUnavailable,
                      {"write to variable 'v' not yet on its backup on shard 1", "retry"}));
  // Its retry waits again, and is not applied twice.
  EXPECT_TRUE(IsError(AddOnPrimary("v", 2), absl::StatusCode::kUnavailable, {"backup"}));
  EXPECT_EQ(Scrape(0)["psd_shard_replica_behind_calls_total"], 2);
  // Dropped from the in-sync set (the coordinator's SyncReplica): answered.
  SyncReplicaRequest sync;
  sync.set_move_id(0x78);
  sync.set_in_sync(false);
  SyncReplicaResponse synced;
  ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
    return primary_move_->SyncReplica(ctx, sync, &synced);
  })));
  ASSERT_TRUE(IsOk(AddOnPrimary("v", 2)));
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto value, ReadFrom(primary_data_.get(), "v"));
  const std::vector<float> got = TensorFromProto(value, "v")->ToVector<float>();
  EXPECT_FLOAT_EQ(got[2], 2 - 2 * 2.5f);  // two adds, the retried one once
}

TEST_F(ReplicaFollowTest, ABackupWhosePrimaryDiedKeepsRetryingAndIsPromotedWithEveryAckedWrite) {
  ASSERT_TRUE(IsOk(CreateOnPrimary("u")));
  Follow("u", 0x7a);
  for (uint64_t seq = 1; seq <= 20; ++seq) ASSERT_TRUE(IsOk(AddOnPrimary("u", seq)));
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto acknowledged, ReadFrom(primary_data_.get(), "u"));
  ASSERT_TRUE(IsOk(primary_->Kill()));
  // The follow does not give up: it reports why its pulls fail and stays
  // forwarding (bounded: 60 polls of up to 1 s).
  MoveStatusResponse status;
  for (int i = 0; i < 60 && status.code() == 0; ++i) {
    MoveStatusRequest request;
    request.set_move_id(0x7a);
    request.set_wait_ms(1000);
    ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
      return backup_move_->MoveStatus(ctx, request, &status);
    })));
  }
  EXPECT_NE(status.code(), 0);
  EXPECT_NE(status.message().find("pulling from the primary's shard"), std::string::npos)
      << status.message();
  EXPECT_EQ(status.phase(), MOVE_FORWARDING);
  // Promoted, it serves every write the primary acknowledged, bit for bit.
  PSD_ASSERT_OK_AND_ASSIGN(uint64_t applied, Promote(0x7a));
  EXPECT_EQ(applied, 20u);
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto got, ReadFrom(backup_data_.get(), "u"));
  EXPECT_EQ(got.content(), acknowledged.content());
}

// A follow its primary ended (given up there, e.g. its log passed its
// bound, or ended by the coordinator on the primary only) fails on the
// backup too, so the coordinator's keeper sees MOVE_FAILED and replaces it
// instead of counting a backup that no longer follows.
TEST_F(ReplicaFollowTest, ABackupWhoseFollowItsPrimaryEndedFails) {
  ASSERT_TRUE(IsOk(CreateOnPrimary("e")));
  Follow("e", 0x7b);
  ASSERT_TRUE(IsOk(AddOnPrimary("e", 1)));
  EndMoveRequest end;
  end.set_move_id(0x7b);
  EndMoveResponse ended;
  ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
    return primary_move_->EndMove(ctx, end, &ended);
  })));
  // Bounded: 300 polls, 0.1 s apart (a poll may answer at once while the
  // backup notes its failing pulls).
  MoveStatusResponse status;
  for (int i = 0; i < 300 && status.phase() != MOVE_FAILED; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(100));
    MoveStatusRequest request;
    request.set_move_id(0x7b);
    request.set_wait_ms(1000);
    ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
      return backup_move_->MoveStatus(ctx, request, &status);
    })));
  }
  EXPECT_EQ(status.phase(), MOVE_FAILED);
  EXPECT_NE(status.message().find("ended this follow"), std::string::npos) << status.message();
}

// A follow stream (FollowMove) opened by another caller: one for a follow
// the primary does not have, or asking for the snapshot, is refused with
// the reason and ends; one that only repeats an old acknowledgement and
// closes ends OK. The real backup's stream goes on: writes are still
// answered once it has them.
TEST_F(ReplicaFollowTest, AFollowStreamFromAnotherCallerIsRefusedOrEndsAndChangesNothing) {
  ASSERT_TRUE(IsOk(CreateOnPrimary("f")));
  Follow("f", 0x7c);
  ASSERT_TRUE(IsOk(AddOnPrimary("f", 1)));
  auto stream_once = [&](const PullMoveRequest& first) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto stream = primary_move_->FollowMove(&ctx);
    stream->Write(first);
    stream->WritesDone();
    PullMoveResponse answer;
    while (stream->Read(&answer)) {
    }
    return FromGrpcStatus(stream->Finish());
  };
  PullMoveRequest log;
  log.set_move_id(0x7c);
  log.add_names("f");
  log.set_member(1);  // past the group's one member: the log
  log.set_follow(true);
  PullMoveRequest unknown = log;
  unknown.set_move_id(0xdead);
  EXPECT_TRUE(IsError(stream_once(unknown), absl::StatusCode::kNotFound, {"not known here"}));
  PullMoveRequest snapshot = log;
  snapshot.set_member(0);
  EXPECT_TRUE(IsError(stream_once(snapshot), absl::StatusCode::kInvalidArgument, {"member 0"}));
  PullMoveRequest not_follow = log;
  not_follow.set_follow(false);
  EXPECT_TRUE(IsError(stream_once(not_follow), absl::StatusCode::kInvalidArgument,
                      {"only a backup's follow is streamed"}));
  EXPECT_TRUE(IsOk(stream_once(log)));  // acknowledges nothing new
  {
    // Bytes that are no PullMoveRequest (the stream is served raw).
    grpc::GenericStub raw(ChannelTo(primary_->address()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    grpc::Slice garbage(std::string("\x0a\xff\xff\xff\xff\x0f"));
    grpc::ByteBuffer send(&garbage, 1);
    grpc::ByteBuffer receive;
    absl::Notification done;
    grpc::Status status;
    raw.UnaryCall(&ctx, "/psd.ShardMove/FollowMove", grpc::StubOptions(), &send, &receive,
                  [&](grpc::Status s) {
                    status = std::move(s);
                    done.Notify();
                  });
    done.WaitForNotification();
    EXPECT_TRUE(IsError(FromGrpcStatus(status), absl::StatusCode::kInvalidArgument,
                        {"does not parse"}));
  }
  // Streams held open for the follow reach the cap with the real backup's;
  // the next is refused naming it. Held streams opened while an earlier
  // one's end is not yet noticed by the shard are refused for it, and each
  // is counted only once the shard read its first request, so the count
  // may be short of the cap for a while: every stream that is let in
  // shows that, and one more is held before trying again (bounded: 100
  // tries; streams past the cap are refused and end).
  std::vector<std::unique_ptr<grpc::ClientContext>> held_ctx;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<PullMoveRequest, PullMoveResponse>>> held;
  auto hold_one = [&] {
    held_ctx.push_back(std::make_unique<grpc::ClientContext>());
    held.push_back(primary_move_->FollowMove(held_ctx.back().get()));
    return held.back()->Write(log);
  };
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(hold_one());
  absl::Status refused;
  for (int i = 0; i < 100 && !absl::IsResourceExhausted(refused); ++i) {
    refused = stream_once(log);
    if (absl::IsResourceExhausted(refused)) break;
    absl::SleepFor(absl::Milliseconds(20));
    if (refused.ok()) hold_one();  // below the cap: a write on a refused stream may fail
  }
  EXPECT_TRUE(IsError(refused, absl::StatusCode::kResourceExhausted,
                      {"4 follow streams open here"}));
  for (size_t i = 0; i < held.size(); ++i) {
    held_ctx[i]->TryCancel();
    held[i]->Finish().ok();
  }
  for (uint64_t seq = 2; seq <= 10; ++seq) ASSERT_TRUE(IsOk(AddOnPrimary("f", seq)));
  PSD_ASSERT_OK_AND_ASSIGN(uint64_t applied, Promote(0x7c));
  EXPECT_EQ(applied, 10u);
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto want, ReadFrom(primary_data_.get(), "f"));
  PSD_ASSERT_OK_AND_ASSIGN(TensorProto got, ReadFrom(backup_data_.get(), "f"));
  EXPECT_EQ(got.content(), want.content());
}

// Prints the price of one in-sync backup for sequential small writes (one
// caller, so each write pays a whole round trip to the backup). Disabled:
// it only prints; run with --gtest_also_run_disabled_tests.
TEST_F(ReplicaFollowTest, DISABLED_SequentialWriteLatencyWithAnInSyncBackup) {
  for (const char* name : {"plain", "backed", "plain2", "backed2"}) {
    ASSERT_TRUE(IsOk(CreateOnPrimary(name)));
  }
  Follow("backed", 0x79);
  Follow("backed2", 0x7b);
  constexpr int kWrites = 2000;
  uint64_t seq = 0;
  auto run = [&](const std::string& name) {
    const absl::Time start = absl::Now();
    for (int i = 0; i < kWrites; ++i) EXPECT_TRUE(IsOk(AddOnPrimary(name, ++seq)));
    return absl::ToDoubleMicroseconds(absl::Now() - start) / kWrites;
  };
  run("plain");  // warm up
  const double plain = run("plain");
  const double backed = run("backed");
  // Every one of them waited for the backup (the primary counts them).
  MoveStatusRequest status_request;
  status_request.set_move_id(0x79);
  MoveStatusResponse status;
  ASSERT_TRUE(IsOk(Rpc([&](grpc::ClientContext* ctx) {
    return backup_move_->MoveStatus(ctx, status_request, &status);
  })));
  EXPECT_EQ(status.applied_seq(), static_cast<uint64_t>(kWrites));
  std::printf("sequential assign_add, float[4], %d writes: %.1f us each without a backup, "
              "%.1f us with one in-sync backup (%.2fx)\n",
              kWrites, plain, backed, backed / plain);
  // 8 callers at once (each its own client id): the writes share the
  // backup's pulls.
  constexpr int kCallers = 8;
  auto rate = [&](const std::string& name) {
    const absl::Time start = absl::Now();
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c) {
      callers.emplace_back([&, c] {
        for (int i = 1; i <= kWrites / kCallers; ++i) {
          EXPECT_TRUE(IsOk(AddOnPrimary(name, static_cast<uint64_t>(i), 1000 + c)));
        }
      });
    }
    for (auto& t : callers) t.join();
    return kWrites / absl::ToDoubleSeconds(absl::Now() - start);
  };
  const double plain_rate = rate("plain2");
  const double backed_rate = rate("backed2");
  std::printf("8 callers: %.0f writes/s without a backup, %.0f with one in-sync backup (%.2fx)\n",
              plain_rate, backed_rate, backed_rate / plain_rate);
}

}  // namespace
}  // namespace integration
}  // namespace psd
