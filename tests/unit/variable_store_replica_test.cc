// Replicated parts between stores in one process (docs/replication.md),
// driven through the stores' own calls (what ShardMoveService and the
// coordinator do over gRPC): a follow makes an unserved backup that learns
// the group's request window and writes; a group has several follows and a
// move at once, each logging every write in one order; writes wait for
// in-sync backups (and a backup that does not keep up is reported once for
// all the writes waiting); a backup replays its primary's writes bit for
// bit; replicated parts serve only under the lease; drop_parts drops.
#include <atomic>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "psd/stream_codec.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/variable_store.h"
#include "store_test_util.h"

namespace psd {
namespace {

VariableStoreOptions Options(uint64_t incarnation, absl::Duration backup_timeout) {
  VariableStoreOptions options;
  options.incarnation = incarnation;
  options.request_window = 64;
  options.backup_timeout = backup_timeout;
  return options;
}

TensorProto Floats(std::vector<float> v) {
  TensorProto p;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{static_cast<int64_t>(v.size())}, v), &p);
  return p;
}

// A streamed write of "w" (float [4], 16 bytes) with request id
// (client_id, seq).
AssignStreamHeader StreamHeaderOfW(UpdateOp op, uint64_t client_id, uint64_t seq) {
  AssignStreamHeader header;
  header.set_name("w");
  header.set_op(op);
  header.set_dtype(DT_FLOAT);
  header.mutable_shape()->add_dims(4);
  header.set_total_bytes(16);
  header.mutable_request_id()->set_client_id(client_id);
  header.mutable_request_id()->set_seq(seq);
  return header;
}

absl::StatusOr<TensorProto> ReadProto(VariableStore* store, const std::string& name) {
  ReadRequest req;
  req.set_name(name);
  ReadResponse resp;
  PSD_RETURN_IF_ERROR(store->Read(req, &resp));
  return resp.value();
}

std::vector<float> Read(VariableStore* store, const std::string& name) {
  absl::StatusOr<TensorProto> value = ReadProto(store, name);
  EXPECT_TRUE(value.ok()) << value.status();
  if (!value.ok()) return {};
  return TensorFromProto(*value, name)->ToVector<float>();
}

absl::Status AddOnes(VariableStore* store, uint64_t seq) {
  AssignRequest req;
  req.set_name("w");
  req.set_op(UPDATE_ADD);
  *req.mutable_value() = Floats({1, 1, 1, 1});
  req.mutable_request_id()->set_client_id(9);
  req.mutable_request_id()->set_seq(seq);
  AssignResponse resp;
  return store->Assign(req, &resp);
}

// The group of "w" (float [4]), as the coordinator creates it on a backup
// (`follow`) or a move's target.
StartMoveInRequest MoveIn(uint64_t move_id, bool follow) {
  StartMoveInRequest in;
  in.set_move_id(move_id);
  in.set_source_incarnation(1);
  in.set_follow(follow);
  CreateVariableRequest* part = in.add_parts();
  part->set_name("w");
  part->set_dtype(DT_FLOAT);
  part->mutable_shape()->add_dims(4);
  part->set_replicated(true);
  return in;
}

// A follow (move `id`) of a group of `parts` (name, dims) of `dtype`, as
// the coordinator creates it on a backup.
StartMoveInRequest FollowGroup(
    uint64_t id, const std::vector<std::pair<std::string, std::vector<int64_t>>>& parts,
    DataType dtype) {
  StartMoveInRequest in;
  in.set_move_id(id);
  in.set_source_incarnation(1);
  in.set_follow(true);
  for (const auto& [name, dims] : parts) {
    CreateVariableRequest* part = in.add_parts();
    part->set_name(name);
    part->set_dtype(dtype);
    for (int64_t d : dims) part->mutable_shape()->add_dims(d);
    part->set_replicated(true);
  }
  return in;
}

// The Adam apply of the tests: slots "w/Adam" and "w/Adam_1", beta powers
// read from the variables "beta1_power" and "beta2_power".
ApplyDenseRequest AdamApplyOfW() {
  ApplyDenseRequest apply;
  apply.add_slots("w/Adam");
  apply.add_slots("w/Adam_1");
  OptimizerSpec::Adam* adam = apply.mutable_optimizer()->mutable_adam();
  adam->set_learning_rate(0.01);
  adam->set_beta1(0.9);
  adam->set_beta2(0.999);
  adam->set_epsilon(1e-8);
  adam->set_beta1_power_variable("beta1_power");
  adam->set_beta2_power_variable("beta2_power");
  return apply;
}

// "w" (float [4], zeros) on `primary`, and `backup` following it (move 7)
// with the snapshot applied, in the in-sync set.
void StartInSyncBackup(VariableStore* primary, VariableStore* backup) {
  ASSERT_TRUE(store_test::CreateWithValue(primary, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup->BeginMoveIn(MoveIn(7, true)).ok());
  PullMoveRequest req;
  ASSERT_TRUE(backup->NextMovePull(7, &req));
  PullMoveResponse resp;
  ASSERT_TRUE(primary->PullMove(req, &resp).ok());
  ASSERT_TRUE(backup->ApplyMovePull(7, resp).ok());
  ASSERT_TRUE(primary->SyncReplica(7, true, 1).ok());
}

// One pull of `target` from `source`, applied; false when none is due (or
// it failed: a failure is expected by the test that checks it).
bool PullOnce(VariableStore* source, VariableStore* target, uint64_t move_id, int wait_ms = 0) {
  PullMoveRequest req;
  if (!target->NextMovePull(move_id, &req)) return false;
  req.set_wait_ms(wait_ms);  // 0: the tests pull only what is there
  PullMoveResponse resp;
  absl::Status pulled = source->PullMove(req, &resp);
  if (!pulled.ok()) return false;
  absl::Status applied = target->ApplyMovePull(move_id, resp);
  EXPECT_TRUE(applied.ok()) << applied;
  return applied.ok();
}

// Commits `sink` on another thread (it waits for the in-sync backup)
// while `target` pulls from `source`; returns the commit's answer.
absl::Status CommitWhilePulling(AssignStreamSink* sink, VariableStore* source,
                                VariableStore* target, uint64_t move_id) {
  std::atomic<bool> answered{false};
  absl::Status status;
  std::thread writer([&] {
    AssignResponse response;
    status = sink->Commit(&response);
    answered.store(true);
  });
  for (int i = 0; i < 600 && !answered.load(); ++i) {
    PullOnce(source, target, move_id, /*wait_ms=*/100);
  }
  writer.join();
  return status;
}

class StoreReplicaTest : public ::testing::Test {
 protected:
  StoreReplicaTest()
      : device_(NewCpuDevice()),
        primary_(device_.get(), Options(1, absl::Seconds(600))),
        backup_(device_.get(), Options(2, absl::Seconds(600))),
        backup2_(device_.get(), Options(3, absl::Seconds(600))) {}

  // Pulls until `target` applied everything logged for it (and the primary
  // heard so, with one more pull).
  static void CatchUp(VariableStore* source, VariableStore* target, uint64_t move_id) {
    for (int i = 0; i < 1000; ++i) {
      ASSERT_TRUE(PullOnce(source, target, move_id));
      const MoveStatusResponse st = target->MoveInStatus(move_id, absl::ZeroDuration());
      if (st.phase() == MOVE_FORWARDING && st.applied_seq() == st.logged_seq()) {
        ASSERT_TRUE(PullOnce(source, target, move_id));  // acknowledges it
        return;
      }
    }
    FAIL() << "move " << move_id << " did not catch up";
  }

  // A replicated float32[4] on the primary.
  void CreateReplicated(const std::string& name, const std::vector<float>& value) {
    CreateVariableRequest create;
    create.set_name(name);
    create.set_dtype(DT_FLOAT);
    create.mutable_shape()->add_dims(4);
    *create.mutable_initial_value() = Floats(value);
    create.set_initialize(true);
    create.set_replicated(true);
    VariableInfo info;
    ASSERT_TRUE(primary_.Create(create, &info).ok());
  }

  std::unique_ptr<Device> device_;
  VariableStore primary_;
  VariableStore backup_;
  VariableStore backup2_;
};

TEST_F(StoreReplicaTest, ABackupIsNotServedKnowsTheWindowAndServesOncePromoted) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 1, 2, 3})).ok());
  ASSERT_TRUE(AddOnes(&primary_, 1).ok());  // before the backup: in its window only
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, /*follow=*/true)).ok());
  // Listed as a backup, not served, not saved.
  const std::vector<VariableInfo> listed = backup_.List("");
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].follows_move(), 7u);
  EXPECT_TRUE(listed[0].replicated());
  absl::Status read = ReadProto(&backup_, "w").status();
  EXPECT_TRUE(absl::IsUnavailable(read)) << read;
  EXPECT_NE(read.message().find("'w' is a backup"), absl::string_view::npos) << read;
  // Promoting before the snapshot arrived is refused.
  absl::StatusOr<uint64_t> early = backup_.PromoteReplica(7, 2, 2);
  EXPECT_TRUE(absl::IsFailedPrecondition(early.status())) << early.status();

  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));  // the snapshot (and the window)
  ASSERT_TRUE(AddOnes(&primary_, 2).ok());         // logged for the backup
  ASSERT_TRUE(AddOnes(&primary_, 3).ok());
  CatchUp(&primary_, &backup_, 7);
  // A follow is never frozen, and keeps following.
  absl::StatusOr<uint64_t> frozen = primary_.FreezeMove(7, 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(frozen.status())) << frozen.status();
  std::vector<VariableStore::PinnedValue> saved;
  ASSERT_TRUE(backup_.Fence(11, absl::Seconds(10), &saved).ok());
  EXPECT_TRUE(saved.empty());  // a backup's copy is never in a checkpoint
  ASSERT_TRUE(backup_.Unfence(11, nullptr).ok());
  EXPECT_EQ(backup_.replication_stats().follows_in, 1);
  EXPECT_EQ(primary_.replication_stats().follows_out, 1);

  absl::StatusOr<uint64_t> promoted = backup_.PromoteReplica(7, 2, 2);
  ASSERT_TRUE(promoted.ok()) << promoted.status();
  EXPECT_EQ(*promoted, 2u);
  absl::StatusOr<uint64_t> again = backup_.PromoteReplica(7, 2, 2);  // idempotent
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 2u);
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{3, 4, 5, 6}));
  EXPECT_EQ(backup_.List("")[0].follows_move(), 0u);
  EXPECT_TRUE(backup_.List("")[0].replicated());
  // Retries of writes the primary applied, before the backup was made and
  // since, are answered from the window, not applied again.
  EXPECT_TRUE(AddOnes(&backup_, 1).ok());
  EXPECT_TRUE(AddOnes(&backup_, 3).ok());
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{3, 4, 5, 6}));
  EXPECT_TRUE(AddOnes(&backup_, 4).ok());
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{4, 5, 6, 7}));
}

TEST_F(StoreReplicaTest, EndingAFollowDropsTheBackupAndStopsLogging) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  absl::Status commit = backup_.EndMoveIn(7, /*committed=*/true);
  EXPECT_TRUE(absl::IsFailedPrecondition(commit)) << commit;
  ASSERT_TRUE(backup_.EndMoveIn(7, /*committed=*/false).ok());
  ASSERT_TRUE(primary_.EndMoveOut(7, /*committed=*/false, -1).ok());
  EXPECT_TRUE(backup_.List("").empty());
  EXPECT_EQ(primary_.replication_stats().follows_out, 0);
  EXPECT_EQ(backup_.replication_stats().follows_in, 0);
  ASSERT_TRUE(AddOnes(&primary_, 1).ok());
}

// A forced initialization is forwarded as an assign of the value the
// primary made (here a random draw), so the backup keeps following and
// holds it bit for bit (it used to be dropped and copied again). Parts
// are followed only once initialized, so a forced one is what reaches a
// follow.
TEST_F(StoreReplicaTest, AForcedInitializationReachesTheBackupWithTheValueMade) {
  CreateVariableRequest drawn;
  drawn.set_name("w");
  drawn.set_dtype(DT_FLOAT);
  drawn.mutable_shape()->add_dims(4);
  drawn.mutable_initializer()->mutable_random_normal()->set_stddev(2);
  drawn.mutable_initializer()->set_seed(5);
  drawn.set_initialize(true);
  VariableInfo info;
  ASSERT_TRUE(primary_.Create(drawn, &info).ok());
  const std::vector<float> initial = Read(&primary_, "w");
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(AddOnes(&primary_, 1).ok());
  InitializeVariablesRequest init;
  init.add_names("w");
  init.set_force(true);
  init.mutable_request_id()->set_client_id(4);
  init.mutable_request_id()->set_seq(1);
  ASSERT_TRUE(primary_.Initialize(init).ok());
  EXPECT_EQ(primary_.replication_stats().follows_out, 1) << "the initialization ended the follow";
  EXPECT_EQ(Read(&primary_, "w"), initial);
  CatchUp(&primary_, &backup_, 7);
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), ReadProto(&primary_, "w")->content());
  EXPECT_EQ(Read(&backup_, "w"), initial);
}

TEST_F(StoreReplicaTest, TwoBackupsAndAMoveEachGetEveryWriteInOneOrder) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  VariableStore target(device_.get(), Options(4, absl::Seconds(600)));
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(backup2_.BeginMoveIn(MoveIn(8, true)).ok());
  ASSERT_TRUE(target.BeginMoveIn(MoveIn(9, false)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(AddOnes(&primary_, 1).ok());  // in backup 1's log, backup 2's snapshot
  ASSERT_TRUE(PullOnce(&primary_, &backup2_, 8));
  ASSERT_TRUE(PullOnce(&primary_, &target, 9));  // the move begins beside the follows
  // Writes from several threads at once: each log has them in one order.
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([this, t] {
      for (int i = 0; i < 25; ++i) {
        AssignRequest req;
        req.set_name("w");
        req.set_op(i % 2 == 0 ? UPDATE_ADD : UPDATE_SUB);
        *req.mutable_value() = Floats({0.1f * (t + 1), 0.3f, 1e-3f * i, 7.0f});
        AssignResponse resp;
        ASSERT_TRUE(primary_.Assign(req, &resp).ok());
      }
    });
  }
  for (auto& w : writers) w.join();
  CatchUp(&primary_, &backup_, 7);
  CatchUp(&primary_, &backup2_, 8);
  while (target.MoveInStatus(9, absl::ZeroDuration()).applied_seq() <
         target.MoveInStatus(9, absl::ZeroDuration()).logged_seq()) {
    ASSERT_TRUE(PullOnce(&primary_, &target, 9));
  }
  ASSERT_TRUE(primary_.FreezeMove(9, 1).ok());
  while (PullOnce(&primary_, &target, 9)) {
  }
  ASSERT_EQ(target.MoveInStatus(9, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target.EndMoveIn(9, true).ok());
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  ASSERT_TRUE(backup2_.PromoteReplica(8, 2, 3).ok());
  const std::string want = ReadProto(&primary_, "w")->content();
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), want);
  EXPECT_EQ(ReadProto(&backup2_, "w")->content(), want);
  EXPECT_EQ(ReadProto(&target, "w")->content(), want);
  // The move's commit ends the follows of the old primary.
  ASSERT_TRUE(primary_.EndMoveOut(9, true, 4).ok());
  EXPECT_EQ(primary_.replication_stats().follows_out, 0);
}

TEST_F(StoreReplicaTest, WritesWaitForAnInSyncBackupAndARetryWaitsToo) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(AddOnes(&primary_, 1).ok());  // not in sync yet: answered at once
  absl::StatusOr<uint64_t> logged = primary_.SyncReplica(7, true, 1);
  ASSERT_TRUE(logged.ok()) << logged.status();
  EXPECT_EQ(*logged, 1u);
  std::atomic<bool> answered{false};
  absl::Status status;
  std::thread writer([&] {
    status = AddOnes(&primary_, 2);
    answered.store(true);
  });
  // The backup gets the write; until its next pull acknowledges it, the
  // write is not answered.
  for (int i = 0; i < 600 && backup_.MoveInStatus(7, absl::ZeroDuration()).applied_seq() < 2;
       ++i) {
    ASSERT_TRUE(PullOnce(&primary_, &backup_, 7, /*wait_ms=*/1000));  // until it is logged
  }
  ASSERT_EQ(backup_.MoveInStatus(7, absl::ZeroDuration()).applied_seq(), 2u);
  EXPECT_FALSE(answered.load());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));  // acknowledges write 2
  writer.join();
  EXPECT_TRUE(status.ok()) << status;
  // Counted only if the writer reached its wait before the acknowledgement
  // (on a loaded machine it may get there after): at most this one.
  EXPECT_LE(primary_.replication_stats().waited_writes, 1);

  // A retry of it is answered from the window once the backup has every
  // write logged so far.
  answered.store(false);
  std::thread retry([&] {
    status = AddOnes(&primary_, 2);
    answered.store(true);
  });
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));  // nothing new: acknowledges 2 again
  retry.join();
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(Read(&primary_, "w"), (std::vector<float>{2, 2, 2, 2}));

  // Out of the in-sync set: nobody waits.
  ASSERT_TRUE(primary_.SyncReplica(7, false, 1).ok());
  ASSERT_TRUE(AddOnes(&primary_, 3).ok());
}

// The writes of one batch message (run under DeferredAnswers, as the
// shard's batch stream runs them) are applied and logged one after another
// without waiting; the backup takes them in one pull, and none is answered
// before the acknowledgement of that pull: one round trip for the message,
// not one per write.
TEST_F(StoreReplicaTest, TheWritesOfOneBatchMessageReachTheBackupInOnePullAndWaitOnce) {
  constexpr int kWrites = 8;
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(primary_.SyncReplica(7, true, 1).ok());
  std::atomic<int> ran{0};
  std::atomic<bool> finished{false};
  std::vector<std::pair<int, absl::Status>> changed;
  std::thread message([&] {
    VariableStore::DeferredAnswers deferred(&primary_);
    for (int i = 0; i < kWrites; ++i) {
      deferred.set_op(i);
      EXPECT_TRUE(AddOnes(&primary_, 10 + i).ok());
      ran.fetch_add(1);
    }
    changed = deferred.Finish();
    finished.store(true);
  });
  for (int i = 0; i < 1000 && ran.load() < kWrites; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(ran.load(), kWrites) << "a write of the message waited for the backup by itself";
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EXPECT_EQ(backup_.MoveInStatus(7, absl::ZeroDuration()).applied_seq(),
            static_cast<uint64_t>(kWrites));
  EXPECT_FALSE(finished.load()) << "answered before the backup acknowledged the writes";
  // Acknowledged with the next pull (more only if the writes came apart).
  for (int i = 0; i < 100 && !finished.load(); ++i) {
    ASSERT_TRUE(PullOnce(&primary_, &backup_, 7, /*wait_ms=*/10));
  }
  message.join();
  EXPECT_TRUE(changed.empty());
  EXPECT_EQ(Read(&primary_, "w"), (std::vector<float>{8, 8, 8, 8}));
}

TEST(StoreReplicaTimeoutTest, ABackupBehindIsReportedOnceAndAFailedReportAnswersUnavailable) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStore primary(device.get(), Options(1, absl::Milliseconds(50)));
  VariableStore backup(device.get(), Options(2, absl::Milliseconds(50)));
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary, &backup));

  // The coordinator cannot be reached: the write stays applied, is answered
  // UNAVAILABLE naming the variable, and its retry waits again.
  std::atomic<int> calls{0};
  std::atomic<bool> reachable{false};
  primary.SetReplicaBehindHandler([&](uint64_t move_id, const std::string& reason) {
    EXPECT_EQ(move_id, 7u);
    EXPECT_FALSE(reason.empty());
    ++calls;
    return reachable.load() ? absl::OkStatus() : absl::UnavailableError("no coordinator");
  });
  absl::Status first = AddOnes(&primary, 1);
  EXPECT_TRUE(absl::IsUnavailable(first)) << first;
  EXPECT_NE(first.message().find("write to variable 'w' not yet on its backup"),
            absl::string_view::npos)
      << first;
  EXPECT_EQ(calls.load(), 1);

  // Reachable again: concurrent writes share one call, then none wait.
  reachable.store(true);
  std::vector<std::thread> writers;
  std::vector<absl::Status> results(4);
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] { results[t] = AddOnes(&primary, t == 0 ? 1 : 10 + t); });
  }
  for (auto& w : writers) w.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(primary.replication_stats().replica_behind_calls, 2);
  // The retried write (request 1) was applied once.
  EXPECT_EQ(Read(&primary, "w"), (std::vector<float>{4, 4, 4, 4}));
  ASSERT_TRUE(AddOnes(&primary, 20).ok());
  EXPECT_EQ(calls.load(), 2);
}

// An in-sync follow that ends on the primary (here: a write it cannot
// follow, while the coordinator cannot be reached) stays in the way of the
// group's later writes until the coordinator took the backup out of the
// in-sync set: none of them is answered OK while the registry still counts
// a backup that lacks it.
TEST(StoreReplicaTimeoutTest, AnEndedInSyncFollowHoldsLaterWritesUntilTheCoordinatorHeard) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStore primary(device.get(), Options(1, absl::Milliseconds(50)));
  VariableStore backup(device.get(), Options(2, absl::Milliseconds(50)));
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary, &backup));
  std::atomic<int> calls{0};
  std::atomic<bool> reachable{false};
  primary.SetReplicaBehindHandler([&](uint64_t, const std::string&) {
    ++calls;
    return reachable.load() ? absl::OkStatus() : absl::UnavailableError("no coordinator");
  });
  // A restore is not forwarded: it ends the follow, and the coordinator
  // cannot be told.
  RestorePart part;
  part.set_name("w");
  part.set_checkpoint_name("w");
  part.set_dtype(DT_FLOAT);
  part.add_shape(4);
  ASSERT_TRUE(
      primary.StageRestore(1, part, *Tensor::FromVector<float>(TensorShape{4}, {5, 5, 5, 5}))
          .ok());
  int64_t applied = 0;
  absl::Status initialized = primary.FinishRestore(1, /*commit=*/true, &applied);
  EXPECT_TRUE(absl::IsUnavailable(initialized)) << initialized;
  EXPECT_EQ(calls.load(), 1);
  // A later write is not answered as replicated either (it stays applied).
  absl::Status later = AddOnes(&primary, 1);
  EXPECT_TRUE(absl::IsUnavailable(later)) << later;
  EXPECT_NE(later.message().find("not yet on its backup"), absl::string_view::npos) << later;
  EXPECT_EQ(calls.load(), 2);
  // Once the coordinator heard, its retry is answered (applied once) and
  // the ended follow is gone.
  reachable.store(true);
  EXPECT_TRUE(AddOnes(&primary, 1).ok());
  EXPECT_EQ(calls.load(), 3);
  EXPECT_EQ(primary.replication_stats().follows_out, 0);
  EXPECT_TRUE(AddOnes(&primary, 2).ok());
  EXPECT_EQ(calls.load(), 3);
}

// A write that fails (an evict of a variable that is not a table: it
// could not be forwarded, but it changes nothing) does not end the follow.
TEST_F(StoreReplicaTest, AFailedUnforwardableWriteLeavesTheFollowInPlace) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EvictEmbeddingRequest evict;
  evict.set_name("w");
  evict.set_global_step(1);
  EvictEmbeddingResponse evicted;
  EXPECT_FALSE(primary_.EvictEmbedding(evict, &evicted).ok());
  EXPECT_EQ(primary_.replication_stats().follows_out, 1);
  ASSERT_TRUE(AddOnes(&primary_, 1).ok());
  CatchUp(&primary_, &backup_, 7);
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{1, 1, 1, 1}));
}

TEST_F(StoreReplicaTest, ABackupReplaysItsPrimarysWritesBitForBit) {
  // A dense float variable with Adam slots, a float matrix for scatter_add,
  // and an int64 counter.
  TensorProto power1, power2;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.9f}), &power1);
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.999f}), &power2);
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0.1f, -0.7f, 3.3f, 1e-4f})).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w/Adam", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w/Adam_1", Floats({0, 0, 0, 0})).ok());
  const TensorProto m = store_test::Vec<float>({3, 2}, {0.3f, 1.1f, -2.f, 5.f, 7.f, 0.01f});
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "m", m).ok());
  ASSERT_TRUE(
      store_test::CreateWithValue(&primary_, "step", store_test::Vec<int64_t>({}, {0})).ok());
  // Scalars read by name: the backup gets the values the primary read.
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "beta1_power", power1).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "beta2_power", power2).ok());

  ASSERT_TRUE(
      backup_
          .BeginMoveIn(FollowGroup(7, {{"w", {4}}, {"w/Adam", {4}}, {"w/Adam_1", {4}}}, DT_FLOAT))
          .ok());
  ASSERT_TRUE(backup_.BeginMoveIn(FollowGroup(8, {{"m", {3, 2}}}, DT_FLOAT)).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(FollowGroup(9, {{"step", {}}}, DT_INT64)).ok());
  for (uint64_t id : {7, 8, 9}) ASSERT_TRUE(PullOnce(&primary_, &backup_, id));

  for (int step = 0; step < 20; ++step) {
    AssignRequest add;
    add.set_name("w");
    add.set_op(UPDATE_ADD);
    *add.mutable_value() = Floats({0.1f * step, 1.f / 3, -1e-7f, 2.5e3f});
    AssignResponse add_resp;
    ASSERT_TRUE(primary_.Assign(add, &add_resp).ok());

    ScatterRequest scatter;
    scatter.set_name("m");
    scatter.set_op(UPDATE_ADD);
    *scatter.mutable_indices() = store_test::Vec<int64_t>({2}, {step % 3, (step + 2) % 3});
    *scatter.mutable_updates() =
        store_test::Vec<float>({2, 2}, {1.f / 7, 0.3f * step, -1e-3f, 3.14159f});
    ScatterResponse scatter_resp;
    ASSERT_TRUE(primary_.Scatter(scatter, &scatter_resp).ok());

    ApplyDenseRequest apply = AdamApplyOfW();
    apply.set_name("w");
    const std::vector<float> gradient = {0.3f, -1.f / 3, 2, 0.01f * step};
    if (step % 2 == 0) {
      *apply.mutable_gradient() = Floats(gradient);
      ApplyDenseResponse apply_resp;
      ASSERT_TRUE(primary_.ApplyDense(apply, &apply_resp).ok());
    } else {
      // A streamed apply (what clients send for gradients above their
      // stream threshold) is forwarded too, with the powers it read.
      AssignStreamHeader header = StreamHeaderOfW(UPDATE_ASSIGN, 6, step);
      apply.clear_name();
      *header.mutable_apply() = apply;
      auto sink = primary_.BeginAssignStream(header);
      ASSERT_TRUE(sink.ok()) << sink.status();
      ASSERT_TRUE((*sink)->Append(absl::string_view(
                                      reinterpret_cast<const char*>(gradient.data()), 16))
                      .ok());
      AssignResponse streamed_resp;
      absl::Status committed = (*sink)->Commit(&streamed_resp);
      ASSERT_TRUE(committed.ok()) << committed;
    }
    // The powers move on between steps, as an optimizer's do.
    TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.9f * (step + 1) / 40}), &power1);
    ASSERT_TRUE(store_test::AssignValue(&primary_, "beta1_power", UPDATE_ASSIGN, power1).ok());

    CountUpToRequest count;
    count.set_name("step");
    count.set_limit(1000);
    CountUpToResponse count_resp;
    ASSERT_TRUE(primary_.CountUpTo(count, &count_resp).ok());
  }
  for (uint64_t id : {7, 8, 9}) CatchUp(&primary_, &backup_, id);
  EXPECT_EQ(primary_.replication_stats().follows_out, 3);  // none ended
  for (uint64_t id : {7, 8, 9}) ASSERT_TRUE(backup_.PromoteReplica(id, 2, 2).ok());
  for (const char* name : {"w", "w/Adam", "w/Adam_1", "m", "step"}) {
    absl::StatusOr<TensorProto> want = ReadProto(&primary_, name);
    absl::StatusOr<TensorProto> got = ReadProto(&backup_, name);
    ASSERT_TRUE(want.ok() && got.ok()) << name;
    EXPECT_EQ(got->content(), want->content()) << name;  // the same bytes
  }
  EXPECT_EQ(TensorFromProto(*ReadProto(&backup_, "step"), "step")->ToVector<int64_t>(),
            std::vector<int64_t>{20});
  // The retry of the last streamed apply is answered from the promoted
  // backup's window, not applied again.
  const std::string before = ReadProto(&backup_, "w")->content();
  AssignStreamHeader retry = StreamHeaderOfW(UPDATE_ASSIGN, 6, 19);
  retry.mutable_apply()->add_slots("w/Adam");
  retry.mutable_apply()->add_slots("w/Adam_1");
  OptimizerSpec::Adam* retry_adam = retry.mutable_apply()->mutable_optimizer()->mutable_adam();
  retry_adam->set_learning_rate(0.01);
  retry_adam->set_beta1(0.9);
  retry_adam->set_beta2(0.999);
  retry_adam->set_epsilon(1e-8);
  retry_adam->set_beta1_power_value(0.5);  // the backup has no power variables
  retry_adam->set_beta2_power_value(0.5);
  auto sink = backup_.BeginAssignStream(retry);
  ASSERT_TRUE(sink.ok()) << sink.status();
  const std::vector<float> big = {100, 100, 100, 100};
  ASSERT_TRUE((*sink)->Append(absl::string_view(reinterpret_cast<const char*>(big.data()), 16))
                  .ok());
  AssignResponse retried;
  ASSERT_TRUE((*sink)->Commit(&retried).ok());
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), before);
}

// One process's client id is shared by every variable (and shard) it
// writes, so a backup's window may be far ahead of its primary's for that
// client: the backup's own clients wrote to it, or another group's window
// it imported at a snapshot raised it. A write the primary applied is
// replayed all the same, never refused as "too old" (which ended the
// follow and lost acknowledged writes on promotion).
TEST_F(StoreReplicaTest, AReplayedWriteIsNeverTooOldForTheBackupsWindow) {
  auto add = [](VariableStore* store, const std::string& name, uint64_t seq) {
    AssignRequest req;
    req.set_name(name);
    req.set_op(UPDATE_ADD);
    *req.mutable_value() = Floats({1, 1, 1, 1});
    req.mutable_request_id()->set_client_id(9);
    req.mutable_request_id()->set_seq(seq);
    AssignResponse resp;
    return store->Assign(req, &resp);
  };
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  // The backup serves "v" itself; client 9 wrote it up to seq 100 (the
  // window holds 64).
  ASSERT_TRUE(store_test::CreateWithValue(&backup_, "v", Floats({0, 0, 0, 0})).ok());
  for (uint64_t seq = 1; seq <= 100; ++seq) ASSERT_TRUE(add(&backup_, "v", seq).ok());
  // backup2_ is the primary of "x", which client 9 wrote up to seq 300
  // (250 went to "w").
  ASSERT_TRUE(store_test::CreateWithValue(&backup2_, "x", Floats({0, 0, 0, 0})).ok());
  for (uint64_t seq = 201; seq <= 300; ++seq) {
    if (seq != 250) {
      ASSERT_TRUE(add(&backup2_, "x", seq).ok());
    }
  }

  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, /*follow=*/true)).ok());
  StartMoveInRequest x = MoveIn(8, /*follow=*/true);
  x.mutable_parts(0)->set_name("x");
  x.set_source_incarnation(3);
  ASSERT_TRUE(backup_.BeginMoveIn(x).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(PullOnce(&backup2_, &backup_, 8));  // imports x's window: seq 300
  // Client 9's writes to "w" (seqs drawn long ago by another thread).
  ASSERT_TRUE(add(&primary_, "w", 1).ok());
  ASSERT_TRUE(add(&primary_, "w", 2).ok());
  ASSERT_TRUE(add(&primary_, "w", 250).ok());  // inside the imported window
  CatchUp(&primary_, &backup_, 7);
  CatchUp(&backup2_, &backup_, 8);
  EXPECT_EQ(backup_.MoveInStatus(7, absl::ZeroDuration()).phase(), MOVE_FORWARDING);

  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{3, 3, 3, 3}));
  // Their retries (after a failover) are answered, not applied again: the
  // one the ring could hold from it, the older ones from beside it.
  EXPECT_TRUE(add(&backup_, "w", 250).ok());
  EXPECT_TRUE(add(&backup_, "w", 1).ok());
  EXPECT_TRUE(add(&backup_, "w", 2).ok());
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{3, 3, 3, 3}));
}

TEST_F(StoreReplicaTest, AStreamedAssignReachesTheBackupWithItsValueAndItsRequestId) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  auto stream = [&](UpdateOp op, uint64_t seq, std::vector<float> v) -> absl::Status {
    AssignStreamHeader header = StreamHeaderOfW(op, 5, seq);
    header.set_validate_shape(true);
    PSD_ASSIGN_OR_RETURN(auto sink, primary_.BeginAssignStream(header));
    const char* bytes = reinterpret_cast<const char*>(v.data());
    PSD_RETURN_IF_ERROR(sink->Append(absl::string_view(bytes, 8)));
    PSD_RETURN_IF_ERROR(sink->Append(absl::string_view(bytes + 8, 8)));
    AssignResponse response;
    return sink->Commit(&response);
  };
  ASSERT_TRUE(stream(UPDATE_ASSIGN, 1, {1.5f, 2, 3, 4}).ok());
  ASSERT_TRUE(stream(UPDATE_ADD, 2, {0.25f, 0.25f, 0.25f, 0.25f}).ok());
  CatchUp(&primary_, &backup_, 7);
  EXPECT_EQ(primary_.replication_stats().follows_out, 1);  // still following
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), ReadProto(&primary_, "w")->content());
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{1.75f, 2.25f, 3.25f, 4.25f}));
  // The retry of the streamed add is answered from the window there.
  AssignRequest retry;
  retry.set_name("w");
  retry.set_op(UPDATE_ADD);
  *retry.mutable_value() = Floats({9, 9, 9, 9});
  retry.mutable_request_id()->set_client_id(5);
  retry.mutable_request_id()->set_seq(2);
  AssignResponse response;
  ASSERT_TRUE(backup_.Assign(retry, &response).ok());
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{1.75f, 2.25f, 3.25f, 4.25f}));
}

// A pull answered raw (as ShardMoveService sends it: the snapshot's bytes
// lent from the pin or copied once, the logged writes as logged) parses as
// the very answer PullMove gives, for a snapshot chunk and for a pull of
// the log, with the value lent (memory to spare) and copied (none to
// spare); the target applies it and ends up with the source's value.
TEST(StoreRawPullTest, ARawPullParsesAsThePullAndMovesThePart) {
  for (const int64_t memory_limit : {int64_t{0}, int64_t{20}}) {
    SCOPED_TRACE(memory_limit == 0 ? "lent" : "copied");
    std::unique_ptr<Device> device = NewCpuDevice();
    VariableStoreOptions source_options = Options(1, absl::Seconds(600));
    source_options.memory_limit_bytes = memory_limit;
    VariableStore source(device.get(), source_options);
    VariableStore target(device.get(), Options(2, absl::Seconds(600)));
    ASSERT_TRUE(store_test::CreateWithValue(&source, "w", Floats({1.5f, -2, 3e-7f, 4e9f})).ok());
    ASSERT_TRUE(target.BeginMoveIn(MoveIn(7, /*follow=*/false)).ok());
    auto pull_both_ways = [&]() -> absl::StatusOr<PullMoveResponse> {
      PullMoveRequest req;
      if (!target.NextMovePull(7, &req)) return absl::NotFoundError("no pull due");
      PullMoveResponse fields;
      VariableStore::RawPullAnswer raw;
      PSD_RETURN_IF_ERROR(source.PullMoveRaw(req, &fields, &raw));
      PullMoveResponse parsed;
      if (!DecodeMessage(EncodePullAnswer(fields, raw.writes, std::move(raw.content)), &parsed)) {
        return absl::DataLossError("the raw answer does not parse");
      }
      PullMoveResponse pulled;  // the same pull again, answered whole
      PSD_RETURN_IF_ERROR(source.PullMove(req, &pulled));
      EXPECT_EQ(parsed.SerializeAsString(), pulled.SerializeAsString());
      return parsed;
    };
    absl::StatusOr<PullMoveResponse> snapshot = pull_both_ways();
    ASSERT_TRUE(snapshot.ok()) << snapshot.status();
    EXPECT_EQ(snapshot->content().size(), 16u);
    ASSERT_TRUE(target.ApplyMovePull(7, *snapshot).ok());
    // A write after the snapshot goes by the log (where the memory limit
    // leaves room for the write's copy of the pinned value and its entry).
    std::vector<float> want = {1.5f, -2, 3e-7f, 4e9f};
    if (memory_limit == 0) {
      ASSERT_TRUE(AddOnes(&source, 1).ok());
      for (float& x : want) x += 1;
      absl::StatusOr<PullMoveResponse> log = pull_both_ways();
      ASSERT_TRUE(log.ok()) << log.status();
      ASSERT_EQ(log->writes_size(), 1);
      ASSERT_TRUE(target.ApplyMovePull(7, *log).ok());
    }
    ASSERT_TRUE(source.FreezeMove(7, 0).ok());
    absl::StatusOr<PullMoveResponse> end = pull_both_ways();
    ASSERT_TRUE(end.ok()) << end.status();
    EXPECT_TRUE(end->end());
    ASSERT_TRUE(target.ApplyMovePull(7, *end).ok());
    ASSERT_TRUE(target.EndMoveIn(7, /*committed=*/true).ok());
    EXPECT_EQ(Read(&target, "w"), want);
  }
}

// A message's writes share one backup timeout, and a follow the
// coordinator could not be told about is reported once per answer, not
// once per write (a stalled backup must not hold an answer for a timeout
// and a coordinator call per write).
TEST(StoreReplicaTimeoutTest, AMessagesWritesShareOneBackupTimeoutAndOneReport) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStore primary(device.get(), Options(1, absl::Milliseconds(50)));
  VariableStore backup(device.get(), Options(2, absl::Milliseconds(50)));
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary, &backup));
  std::atomic<int> calls{0};
  primary.SetReplicaBehindHandler([&](uint64_t, const std::string&) {
    ++calls;
    return absl::UnavailableError("no coordinator");
  });
  constexpr int kWrites = 8;
  VariableStore::DeferredAnswers deferred(&primary);
  for (int i = 0; i < kWrites; ++i) {
    deferred.set_op(i);
    ASSERT_TRUE(AddOnes(&primary, 100 + i).ok());  // applied; answered at Finish
  }
  const std::vector<std::pair<int, absl::Status>> changed = deferred.Finish();
  ASSERT_EQ(changed.size(), static_cast<size_t>(kWrites));
  for (int i = 0; i < kWrites; ++i) {
    EXPECT_EQ(changed[i].first, i);
    EXPECT_TRUE(absl::IsUnavailable(changed[i].second)) << changed[i].second;
    EXPECT_NE(changed[i].second.message().find("not yet on its backup"), absl::string_view::npos);
  }
  EXPECT_EQ(calls.load(), 1);
}

// A streamed value that no pull of the log can carry would never reach the
// backup: it is not logged, the backup's follow ends, and the write is
// answered only once the in-sync backup left the in-sync set (the
// coordinator then makes a new one by copy). Here the coordinator is
// reachable once, then the write is done. Only a chunk size set above the
// message limit makes such a value (the next test has the default case).
TEST(StoreReplicaBigValueTest, AValueTooBigForOnePullEndsTheFollowInsteadOfBeingLogged) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStoreOptions options = Options(1, absl::Seconds(600));
  options.max_unary_value_bytes = 8;  // a 16-byte value is too big to log whole
  options.logged_chunk_bytes = 32;    // and is not chunked
  VariableStore primary(device.get(), options);
  VariableStore backup(device.get(), Options(2, absl::Seconds(600)));
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary, &backup));
  std::vector<std::string> reasons;
  bool reachable = false;
  primary.SetReplicaBehindHandler([&](uint64_t move_id, const std::string& reason) {
    EXPECT_EQ(move_id, 7u);
    reasons.push_back(reason);
    return reachable ? absl::OkStatus() : absl::UnavailableError("no coordinator");
  });

  const AssignStreamHeader header = StreamHeaderOfW(UPDATE_ASSIGN, 5, 1);
  const std::vector<float> value = {1, 2, 3, 4};
  auto commit = [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(auto sink, primary.BeginAssignStream(header));
    PSD_RETURN_IF_ERROR(
        sink->Append(absl::string_view(reinterpret_cast<const char*>(value.data()), 16)));
    AssignResponse response;
    return sink->Commit(&response);
  };
  // The coordinator cannot be told the backup goes: nothing is applied,
  // and the answer is not kept for the request id (its retry runs).
  absl::Status first = commit();
  EXPECT_TRUE(absl::IsUnavailable(first)) << first;
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("16 bytes"), std::string::npos) << reasons[0];
  reachable = true;
  absl::Status retried = commit();
  EXPECT_TRUE(retried.ok()) << retried;
  ASSERT_EQ(reasons.size(), 2u) << "answered while the backup lacking it was in sync";
  // Nothing of it was logged; the primary ended the follow.
  PullMoveRequest req;
  ASSERT_TRUE(backup.NextMovePull(7, &req));
  PullMoveResponse after;
  absl::Status pulled = primary.PullMove(req, &after);
  EXPECT_FALSE(pulled.ok());
  EXPECT_EQ(after.writes_size(), 0);
  EXPECT_EQ(primary.replication_stats().follows_out, 0);
}

// A value over the message limit, but chunked (chunks under the limit), is
// logged chunk by chunk: the follow goes on and the backup holds it.
TEST(StoreReplicaBigValueTest, AValueOverTheMessageLimitReachesTheBackupInChunks) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStoreOptions options = Options(1, absl::Seconds(600));
  options.max_unary_value_bytes = 8;
  options.logged_chunk_bytes = 8;
  VariableStore primary(device.get(), options);
  VariableStore backup(device.get(), Options(2, absl::Seconds(600)));
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary, &backup));
  primary.SetReplicaBehindHandler([&](uint64_t, const std::string& reason) {
    ADD_FAILURE() << "the follow was ended: " << reason;
    return absl::OkStatus();
  });
  const std::vector<float> value = {1, -2, 3e-7f, 4};
  auto sink = primary.BeginAssignStream(StreamHeaderOfW(UPDATE_ASSIGN, 5, 1));
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE(
      (*sink)->Append(absl::string_view(reinterpret_cast<const char*>(value.data()), 16)).ok());
  // The chunks and the commit, pulled while the commit waits for them.
  const absl::Status committed = CommitWhilePulling(sink->get(), &primary, &backup, 7);
  ASSERT_TRUE(committed.ok()) << committed;
  EXPECT_EQ(primary.replication_stats().follows_out, 1);
  ASSERT_TRUE(backup.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(Read(&backup, "w"), value);
}

TEST_F(StoreReplicaTest, AReplicatedPartServesOnlyUnderTheLease) {
  ASSERT_NO_FATAL_FAILURE(CreateReplicated("r", {1, 2, 3, 4}));
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "plain", Floats({1, 1, 1, 1})).ok());
  ShardLease lease;  // never granted
  primary_.SetLease(&lease);
  absl::Status read = ReadProto(&primary_, "r").status();
  EXPECT_TRUE(absl::IsUnavailable(read)) << read;
  EXPECT_NE(read.message().find("lease expired"), absl::string_view::npos) << read;
  EXPECT_NE(read.message().find("'r'"), absl::string_view::npos) << read;
  absl::Status write = store_test::AssignValue(&primary_, "r", UPDATE_ADD, Floats({1, 1, 1, 1}));
  EXPECT_TRUE(absl::IsUnavailable(write)) << write;
  EXPECT_TRUE(ReadProto(&primary_, "plain").ok());  // not replicated: served
  lease.Grant(ShardLease::Clock::now(), std::chrono::milliseconds(600000));
  EXPECT_TRUE(store_test::AssignValue(&primary_, "r", UPDATE_ADD, Floats({1, 1, 1, 1})).ok());
  EXPECT_EQ(Read(&primary_, "r"), (std::vector<float>{2, 3, 4, 5}));
  primary_.SetLease(nullptr);
}

// A primary whose lease lapsed while its write waited for the backup may
// have been failed over meanwhile: the write is not answered OK (it stays
// applied; its retry is answered from the window, applied once).
TEST_F(StoreReplicaTest, AWriteIsNotAnsweredOnceTheLeaseLapsedWhileItWaited) {
  ASSERT_NO_FATAL_FAILURE(CreateReplicated("w", {0, 0, 0, 0}));
  ShardLease held;
  held.Grant(ShardLease::Clock::now(), std::chrono::milliseconds(600000));
  ShardLease lapsed;  // never granted: as one that expired
  primary_.SetLease(&held);
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(primary_.SyncReplica(7, true, 1).ok());
  absl::Status status;
  std::thread writer([&] { status = AddOnes(&primary_, 1); });
  for (int i = 0; i < 600 && backup_.MoveInStatus(7, absl::ZeroDuration()).applied_seq() < 1;
       ++i) {
    ASSERT_TRUE(PullOnce(&primary_, &backup_, 7, /*wait_ms=*/1000));
  }
  ASSERT_EQ(backup_.MoveInStatus(7, absl::ZeroDuration()).applied_seq(), 1u);
  primary_.SetLease(&lapsed);  // the lease ends while the write waits
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));  // acknowledges it
  writer.join();
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  EXPECT_NE(status.message().find("lease expired"), absl::string_view::npos) << status;
  // The lease is back: the retry is answered from the window.
  primary_.SetLease(&held);
  std::thread retry([&] { status = AddOnes(&primary_, 1); });
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  retry.join();
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(Read(&primary_, "w"), (std::vector<float>{1, 1, 1, 1}));
  primary_.SetLease(nullptr);
}

// A primary paused past its lease (SIGSTOP, a stalled VM) while its write
// waited for the backup may have had the part failed over without that
// write; on waking it registers again, dropping the part (which ends the
// follow the write waited for) and getting a new lease. The write must not
// be answered OK under that new lease: it is on no replica that serves.
TEST_F(StoreReplicaTest, AWriteIsNotAnsweredUnderALeaseGrantedAfterItsOwnLapsed) {
  ASSERT_NO_FATAL_FAILURE(CreateReplicated("w", {0, 0, 0, 0}));
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(primary_.SyncReplica(7, true, 1).ok());
  ShardLease lease;
  lease.Grant(ShardLease::Clock::now(), std::chrono::milliseconds(2000));
  primary_.SetLease(&lease);
  absl::Status status;
  std::thread writer([&] { status = AddOnes(&primary_, 1); });
  // Applied and logged; the backup never acknowledges it.
  while (primary_.replication_stats().max_lag < 1) absl::SleepFor(absl::Milliseconds(5));
  while (lease.Held()) absl::SleepFor(absl::Milliseconds(20));
  lease.Grant(ShardLease::Clock::now(), std::chrono::milliseconds(600000));  // a new term
  primary_.DropParts({"w"});  // failed over meanwhile: the follow ends
  writer.join();
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  EXPECT_NE(status.message().find("lease expired"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("'w'"), absl::string_view::npos) << status;
  primary_.SetLease(nullptr);
}

// A write that failed changed nothing: its own answer stands whatever the
// lease did meanwhile (an unknown variable is NOT_FOUND, not "lease
// expired", on a shard cut off from its coordinator).
TEST_F(StoreReplicaTest, AFailedWriteKeepsItsOwnAnswerWithoutALease) {
  ShardLease lapsed;  // never granted
  primary_.SetLease(&lapsed);
  const absl::Status status =
      store_test::AssignValue(&primary_, "nowhere", UPDATE_ADD, Floats({1, 1, 1, 1}));
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  primary_.SetLease(nullptr);
}

TEST_F(StoreReplicaTest, DroppedPartsEndTheirFollows) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "other", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  primary_.DropParts({"w"});
  backup_.DropParts({"w"});
  // An op with an old handle is told to refresh it (the group lives on
  // elsewhere now), not that the part does not exist.
  const absl::Status dropped = ReadProto(&primary_, "w").status();
  EXPECT_TRUE(absl::IsAborted(dropped) && absl::StrContains(dropped.message(), "stale handle"))
      << dropped;
  EXPECT_TRUE(ReadProto(&primary_, "other").ok());
  EXPECT_EQ(primary_.replication_stats().follows_out, 0);
  EXPECT_EQ(backup_.replication_stats().follows_in, 0);
  EXPECT_TRUE(backup_.List("").empty());
}

// A backup asks for the writes after those it is applying (after_seq)
// before it acknowledged them: it gets only the later ones, and the
// primary counts as acknowledged only what applied_seq says.
TEST_F(StoreReplicaTest, APullAheadGetsTheLaterWritesAndAcknowledgesOnlyTheApplied) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));  // the snapshot
  for (uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(AddOnes(&primary_, seq).ok());
  PullMoveRequest req;
  ASSERT_TRUE(backup_.NextMovePull(7, &req));
  req.set_wait_ms(0);
  PullMoveResponse first;
  ASSERT_TRUE(primary_.PullMove(req, &first).ok());
  ASSERT_EQ(first.writes_size(), 3);
  req.set_after_seq(2);  // writes 1 and 2 are being applied
  PullMoveResponse ahead;
  ASSERT_TRUE(primary_.PullMove(req, &ahead).ok());
  ASSERT_EQ(ahead.writes_size(), 1);
  EXPECT_EQ(ahead.writes(0).seq(), 3u);
  EXPECT_EQ(primary_.replication_stats().max_lag, 3);  // none acknowledged
  // Applied in order, the writes the backup has are the primary's.
  ASSERT_TRUE(backup_.ApplyMovePull(7, first).ok());
  ASSERT_TRUE(backup_.ApplyMovePull(7, ahead).ok());  // 3 again: skipped
  EXPECT_EQ(backup_.MoveInStatus(7, absl::ZeroDuration()).applied_seq(), 3u);
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EXPECT_EQ(primary_.replication_stats().max_lag, 0);
}

// A follow's stream (ShardMoveService::FollowMove) pulls only its log,
// never a move's or the snapshot's, and its acknowledgements alone answer
// nothing but let the writes they cover go.
TEST_F(StoreReplicaTest, AFollowsStreamCarriesOnlyItsLogAndAcknowledgementsAnswerNothing) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, /*follow=*/true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));  // the snapshot
  ASSERT_TRUE(backup2_.BeginMoveIn(MoveIn(8, /*follow=*/false)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup2_, 8));  // a move's snapshot
  for (uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(AddOnes(&primary_, seq).ok());

  PullMoveRequest log;
  ASSERT_TRUE(backup_.NextMovePull(7, &log));
  PullMoveResponse resp;
  VariableStore::AckedAnswers acked;  // none: nothing waits here
  // The snapshot's chunks are PullMove's.
  PullMoveRequest snapshot = log;
  snapshot.set_member(0);
  absl::Status refused = primary_.PullFollowLog(snapshot, &resp, /*ack_only=*/false, &acked);
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "member 0")) << refused;
  // A move is not a follow.
  PullMoveRequest move;
  ASSERT_TRUE(backup2_.NextMovePull(8, &move));
  refused = primary_.PullFollowLog(move, &resp, /*ack_only=*/false, &acked);
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  // An unknown follow.
  PullMoveRequest unknown = log;
  unknown.set_move_id(99);
  EXPECT_TRUE(absl::IsNotFound(primary_.PullFollowLog(unknown, &resp, /*ack_only=*/false, &acked)));
  EXPECT_EQ(resp.writes_size(), 0);

  // An acknowledgement of nothing yet answers nothing.
  ASSERT_TRUE(primary_.PullFollowLog(log, &resp, /*ack_only=*/true, &acked).ok());
  EXPECT_EQ(resp.writes_size(), 0);
  EXPECT_EQ(primary_.replication_stats().max_lag, 3);
  // The pull answers the three writes, after_seq on: the stream's next.
  ASSERT_TRUE(primary_.PullFollowLog(log, &resp, /*ack_only=*/false, &acked).ok());
  ASSERT_EQ(resp.writes_size(), 3);
  log.set_after_seq(3);
  PullMoveResponse none;
  ASSERT_TRUE(primary_.PullFollowLog(log, &none, /*ack_only=*/false, &acked).ok());
  EXPECT_EQ(none.writes_size(), 0);
  ASSERT_TRUE(backup_.ApplyMovePull(7, resp).ok());
  EXPECT_EQ(backup_.MoveInStatus(7, absl::ZeroDuration()).applied_seq(), 3u);
  // Acknowledged, they leave the lag.
  log.set_applied_seq(3);
  ASSERT_TRUE(primary_.PullFollowLog(log, &none, /*ack_only=*/true, &acked).ok());
  EXPECT_EQ(primary_.replication_stats().max_lag, 0);
  EXPECT_TRUE(acked.empty());
}

// A write to a group with two backups is encoded once: both follows' logs
// hold the same bytes, and the stream's answer made of them (as FollowMove
// sends it, from the log's buffers) brings each backup to the primary's
// value.
TEST_F(StoreReplicaTest, TwoFollowsShareOneLoggedCopyOfEachWriteAndApplyItFromTheStreamsAnswer) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "w", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(MoveIn(7, /*follow=*/true)).ok());
  ASSERT_TRUE(backup2_.BeginMoveIn(MoveIn(8, /*follow=*/true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));  // the snapshots
  ASSERT_TRUE(PullOnce(&primary_, &backup2_, 8));
  for (uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(AddOnes(&primary_, seq).ok());
  std::vector<LoggedWrite> logged[2];
  PullMoveResponse fields[2];
  VariableStore::AckedAnswers acked;
  int i = 0;
  for (uint64_t move_id : {7, 8}) {
    PullMoveRequest log;
    ASSERT_TRUE((move_id == 7 ? backup_ : backup2_).NextMovePull(move_id, &log));
    ASSERT_TRUE(
        primary_.PullFollowLog(log, &fields[i], /*ack_only=*/false, &acked, &logged[i]).ok());
    EXPECT_EQ(fields[i].writes_size(), 0);  // the writes come as logged
    ASSERT_EQ(logged[i].size(), 3u);
    ++i;
  }
  for (size_t w = 0; w < 3; ++w) {
    EXPECT_EQ(logged[0][w].seq, logged[1][w].seq);
    EXPECT_EQ(logged[0][w].body.begin(), logged[1][w].body.begin()) << "write " << w;
  }
  i = 0;
  for (VariableStore* backup : {&backup_, &backup2_}) {
    PullMoveResponse answer;
    ASSERT_TRUE(DecodeMessage(EncodePullAnswer(fields[i], logged[i]), &answer));
    ASSERT_TRUE(backup->ApplyMovePull(i == 0 ? 7 : 8, answer).ok());
    ++i;
  }
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  ASSERT_TRUE(backup2_.PromoteReplica(8, 2, 3).ok());
  EXPECT_EQ(Read(&backup_, "w"), std::vector<float>({3, 3, 3, 3}));
  EXPECT_EQ(Read(&backup2_, "w"), std::vector<float>({3, 3, 3, 3}));
}

// Writes whose caller keeps the answer (a data-stream message) are
// answered by the acknowledgement that completes them, on the thread that
// records it, and on the slow path when their backup leaves the in-sync
// set or does not acknowledge within the backup timeout.
TEST_F(StoreReplicaTest, AnAnswerIsResumedByTheAcknowledgementThatCompletesIt) {
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary_, &backup_));
  std::optional<VariableStore::PendingAnswers> pending;
  {
    VariableStore::DeferredAnswers deferred(&primary_);
    ASSERT_TRUE(AddOnes(&primary_, 1).ok());
    ASSERT_TRUE(AddOnes(&primary_, 2).ok());
    pending.emplace(deferred.Detach());
  }
  std::atomic<int> resumed{-1};
  primary_.AnswerWhenReplicated(*pending, [&](bool replicated) { resumed = replicated; });
  EXPECT_EQ(resumed.load(), -1);  // the backup has neither write yet
  PullMoveRequest log;
  ASSERT_TRUE(backup_.NextMovePull(7, &log));
  PullMoveResponse writes;
  VariableStore::AckedAnswers acked;
  ASSERT_TRUE(primary_.PullFollowLog(log, &writes, /*ack_only=*/false, &acked).ok());
  ASSERT_EQ(writes.writes_size(), 2);
  ASSERT_TRUE(backup_.ApplyMovePull(7, writes).ok());
  // Acknowledging the first alone completes nothing.
  log.set_applied_seq(1);
  ASSERT_TRUE(primary_.PullFollowLog(log, &writes, /*ack_only=*/true, &acked).ok());
  EXPECT_TRUE(acked.empty());
  log.set_applied_seq(2);
  ASSERT_TRUE(primary_.PullFollowLog(log, &writes, /*ack_only=*/true, &acked).ok());
  ASSERT_EQ(acked.size(), 1u);
  EXPECT_EQ(resumed.load(), -1);  // by the caller, once it holds no lock
  VariableStore::ResumeAcked(&acked);
  EXPECT_EQ(resumed.load(), 1);
  EXPECT_EQ(primary_.replication_stats().waited_writes, 2);  // both waited
  EXPECT_TRUE(pending->Finish().empty());  // no wait: both are on the backup

  // A write whose backup leaves the in-sync set goes to the slow path.
  {
    VariableStore::DeferredAnswers deferred(&primary_);
    ASSERT_TRUE(AddOnes(&primary_, 3).ok());
    pending.emplace(deferred.Detach());
  }
  resumed = -1;
  primary_.AnswerWhenReplicated(*pending, [&](bool replicated) { resumed = replicated; });
  EXPECT_EQ(resumed.load(), -1);
  ASSERT_TRUE(primary_.SyncReplica(7, false, 1).ok());
  EXPECT_EQ(resumed.load(), 0);
  EXPECT_TRUE(pending->Finish().empty());  // answered without it
  // Once out of the in-sync set, nothing waits for it.
  {
    VariableStore::DeferredAnswers deferred(&primary_);
    ASSERT_TRUE(AddOnes(&primary_, 4).ok());
    pending.emplace(deferred.Detach());
  }
  resumed = -1;
  primary_.AnswerWhenReplicated(*pending, [&](bool replicated) { resumed = replicated; });
  EXPECT_EQ(resumed.load(), 1);
  pending->Finish();
  EXPECT_EQ(primary_.replication_stats().waited_writes, 2);  // this one did not wait
}

TEST(StoreReplicaTimeoutTest, AnAnswerNotAcknowledgedInTheBackupTimeoutTakesTheSlowPath) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStore primary(device.get(), Options(1, absl::Seconds(1)));
  VariableStore backup(device.get(), Options(2, absl::Seconds(1)));
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary, &backup));
  std::optional<VariableStore::PendingAnswers> pending;
  {
    VariableStore::DeferredAnswers deferred(&primary);
    ASSERT_TRUE(AddOnes(&primary, 1).ok());
    pending.emplace(deferred.Detach());
  }
  absl::Notification resumed;
  std::atomic<bool> replicated{true};
  const absl::Time start = absl::Now();
  primary.AnswerWhenReplicated(*pending, [&](bool r) {
    replicated = r;
    resumed.Notify();
  });
  ASSERT_TRUE(resumed.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_FALSE(replicated.load());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(900));
  // The slow path reports the backup behind, without waiting out a second
  // timeout; with no coordinator link the write's answer is UNAVAILABLE.
  const absl::Time slow = absl::Now();
  std::vector<std::pair<int, absl::Status>> changed = pending->Finish();
  EXPECT_LT(absl::Now() - slow, absl::Milliseconds(900));  // not 1 s more
  ASSERT_EQ(changed.size(), 1u);
  EXPECT_TRUE(absl::IsUnavailable(changed[0].second)) << changed[0].second;
}

// Streamed values bigger than the logged chunk size (4 bytes here: "w" is
// 16) are logged in chunks, a follow's as the bytes arrive, then committed
// by one small entry (proto StagedChunk).
class StoreChunkedReplicaTest : public StoreReplicaTest {
 protected:
  StoreChunkedReplicaTest()
      : primary_(device_.get(), ChunkedOptions(1)),
        backup_(device_.get(), ChunkedOptions(2)),
        backup2_(device_.get(), ChunkedOptions(3)) {}

  static VariableStoreOptions ChunkedOptions(uint64_t incarnation) {
    VariableStoreOptions options = Options(incarnation, absl::Seconds(600));
    options.logged_chunk_bytes = 4;
    return options;
  }

  absl::StatusOr<std::unique_ptr<AssignStreamSink>> BeginStream(uint64_t seq) {
    AssignStreamHeader header = StreamHeaderOfW(UPDATE_ASSIGN, 5, seq);
    header.set_validate_shape(true);
    return primary_.BeginAssignStream(header);
  }

  // Commits `sink` on another thread (it waits for the in-sync backup)
  // while `backup` pulls; returns the commit's answer.
  absl::Status CommitWhilePulling(AssignStreamSink* sink, VariableStore* backup,
                                  uint64_t move_id) {
    return psd::CommitWhilePulling(sink, &primary_, backup, move_id);
  }

  uint64_t Applied(VariableStore* backup, uint64_t move_id) {
    return backup->MoveInStatus(move_id, absl::ZeroDuration()).applied_seq();
  }

  VariableStore primary_;
  VariableStore backup_;
  VariableStore backup2_;
};

const std::vector<float> kStreamed = {1.5f, -2.25f, 3e-7f, 4e9f};

absl::string_view Bytes(const std::vector<float>& v, size_t from, size_t n) {
  return absl::string_view(reinterpret_cast<const char*>(v.data()) + from, n);
}

// The backup stages the chunks while the client still sends, holds the
// value bit for bit once it commits, and answers the write's retry from
// its window after a promotion (the primary's SIGKILL).
TEST_F(StoreChunkedReplicaTest, ABigStreamedAssignReachesTheBackupWhileItIsSentAndBitForBit) {
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary_, &backup_));
  absl::StatusOr<std::unique_ptr<AssignStreamSink>> sink = BeginStream(1);
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE((*sink)->Append(Bytes(kStreamed, 0, 8)).ok());
  // Two chunks are in the log before the commit, and the backup took them.
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EXPECT_EQ(Applied(&backup_, 7), 2u);
  ASSERT_TRUE((*sink)->Append(Bytes(kStreamed, 8, 8)).ok());
  ASSERT_TRUE(CommitWhilePulling(sink->get(), &backup_, 7).ok());
  EXPECT_EQ(Applied(&backup_, 7), 5u);  // four chunks and the commit
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), ReadProto(&primary_, "w")->content());
  EXPECT_EQ(Read(&backup_, "w"), kStreamed);
  // The client's retry (with another value: it must not be applied).
  AssignRequest retry;
  retry.set_name("w");
  *retry.mutable_value() = Floats({9, 9, 9, 9});
  retry.mutable_request_id()->set_client_id(5);
  retry.mutable_request_id()->set_seq(1);
  AssignResponse response;
  ASSERT_TRUE(backup_.Assign(retry, &response).ok());
  EXPECT_EQ(Read(&backup_, "w"), kStreamed);
}

// A client that cancels mid-way: the chunks the backup staged go, the
// write changes nothing on either replica, and its id stays unrecorded (a
// retry runs it).
TEST_F(StoreChunkedReplicaTest, AStreamCancelledMidWayChangesNothingOnPrimaryOrBackup) {
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary_, &backup_));
  {
    absl::StatusOr<std::unique_ptr<AssignStreamSink>> sink = BeginStream(1);
    ASSERT_TRUE(sink.ok()) << sink.status();
    ASSERT_TRUE((*sink)->Append(Bytes(kStreamed, 0, 12)).ok());
    ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
    EXPECT_EQ(Applied(&backup_, 7), 3u);
  }  // the stream broke
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EXPECT_EQ(Applied(&backup_, 7), 4u);  // the abort
  EXPECT_EQ(Read(&primary_, "w"), (std::vector<float>{0, 0, 0, 0}));
  // The retry runs, on the primary and on its backup.
  absl::StatusOr<std::unique_ptr<AssignStreamSink>> retry = BeginStream(1);
  ASSERT_TRUE(retry.ok()) << retry.status();
  ASSERT_TRUE((*retry)->Append(Bytes(kStreamed, 0, 16)).ok());
  ASSERT_TRUE(CommitWhilePulling(retry->get(), &backup_, 7).ok());
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(Read(&primary_, "w"), kStreamed);
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), ReadProto(&primary_, "w")->content());
}

// The primary dies while the client sends: the promoted backup holds the
// value as before the write, none of the chunks it staged.
TEST_F(StoreChunkedReplicaTest, APromotedBackupDropsAValueThatNeverCommitted) {
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary_, &backup_));
  absl::StatusOr<std::unique_ptr<AssignStreamSink>> sink = BeginStream(2);
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE((*sink)->Append(Bytes(kStreamed, 0, 12)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EXPECT_EQ(Applied(&backup_, 7), 3u);  // three chunks staged
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());  // the primary is gone
  EXPECT_EQ(Read(&backup_, "w"), (std::vector<float>{0, 0, 0, 0}));
  // The write was never answered; its retry on the promoted backup runs.
  AssignRequest retry;
  retry.set_name("w");
  *retry.mutable_value() = Floats(kStreamed);
  retry.mutable_request_id()->set_client_id(5);
  retry.mutable_request_id()->set_seq(2);
  AssignResponse response;
  ASSERT_TRUE(backup_.Assign(retry, &response).ok());
  EXPECT_EQ(Read(&backup_, "w"), kStreamed);
}

// A backup whose copy begins while a chunked value is being sent (its
// snapshot without it) gets all of its chunks with the commit, and ends
// up identical to the primary and to the backup that staged them ahead.
TEST_F(StoreChunkedReplicaTest, ABackupThatFollowsFromASnapshotDuringAChunkedWriteIsIdentical) {
  ASSERT_NO_FATAL_FAILURE(StartInSyncBackup(&primary_, &backup_));
  absl::StatusOr<std::unique_ptr<AssignStreamSink>> sink = BeginStream(1);
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE((*sink)->Append(Bytes(kStreamed, 0, 8)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(backup2_.BeginMoveIn(MoveIn(8, true)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup2_, 8));  // its snapshot: zeros
  ASSERT_TRUE((*sink)->Append(Bytes(kStreamed, 8, 8)).ok());
  ASSERT_TRUE(CommitWhilePulling(sink->get(), &backup_, 7).ok());
  CatchUp(&primary_, &backup2_, 8);
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  ASSERT_TRUE(backup2_.PromoteReplica(8, 2, 3).ok());
  EXPECT_EQ(Read(&primary_, "w"), kStreamed);
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), ReadProto(&primary_, "w")->content());
  EXPECT_EQ(ReadProto(&backup2_, "w")->content(), ReadProto(&primary_, "w")->content());
}

// A streamed Adam apply bigger than the chunk size reaches the backup as
// its gradient arrives, and commits there with the beta powers the primary
// read (the backup holds no power variables): variable and slots end up
// bit for bit, and the apply's retry is answered from the promoted
// backup's window, not applied again.
TEST_F(StoreChunkedReplicaTest, ABigStreamedApplyReachesTheBackupWhileItIsSentAndBitForBit) {
  for (const char* name : {"w", "w/Adam", "w/Adam_1"}) {
    ASSERT_TRUE(store_test::CreateWithValue(&primary_, name, Floats({0.5f, -1, 2, 1e-3f})).ok());
  }
  ASSERT_TRUE(
      store_test::CreateWithValue(&primary_, "beta1_power", store_test::Vec<float>({}, {0.81f}))
          .ok());
  ASSERT_TRUE(
      store_test::CreateWithValue(&primary_, "beta2_power", store_test::Vec<float>({}, {0.998f}))
          .ok());
  ASSERT_TRUE(
      backup_
          .BeginMoveIn(FollowGroup(7, {{"w", {4}}, {"w/Adam", {4}}, {"w/Adam_1", {4}}}, DT_FLOAT))
          .ok());
  CatchUp(&primary_, &backup_, 7);
  ASSERT_TRUE(primary_.SyncReplica(7, true, 1).ok());  // the commit waits for it
  AssignStreamHeader header = StreamHeaderOfW(UPDATE_ASSIGN, 5, 1);
  *header.mutable_apply() = AdamApplyOfW();
  const std::vector<float> gradient = {0.3f, -1.f / 3, 2, 7e-5f};
  absl::StatusOr<std::unique_ptr<AssignStreamSink>> sink = primary_.BeginAssignStream(header);
  ASSERT_TRUE(sink.ok()) << sink.status();
  const uint64_t before = Applied(&backup_, 7);
  ASSERT_TRUE((*sink)->Append(Bytes(gradient, 0, 8)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EXPECT_EQ(Applied(&backup_, 7), before + 2) << "the gradient's chunks were not logged ahead";
  ASSERT_TRUE((*sink)->Append(Bytes(gradient, 8, 8)).ok());
  ASSERT_TRUE(CommitWhilePulling(sink->get(), &backup_, 7).ok());
  EXPECT_EQ(Applied(&backup_, 7), before + 5);  // four chunks and the commit
  EXPECT_EQ(primary_.replication_stats().follows_out, 1);
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  for (const char* name : {"w", "w/Adam", "w/Adam_1"}) {
    EXPECT_EQ(ReadProto(&backup_, name)->content(), ReadProto(&primary_, name)->content()) << name;
  }
  EXPECT_NE(Read(&primary_, "w"), (std::vector<float>{0.5f, -1, 2, 1e-3f}));
  const std::string applied = ReadProto(&backup_, "w")->content();
  AssignStreamHeader retry = header;
  OptimizerSpec::Adam* adam = retry.mutable_apply()->mutable_optimizer()->mutable_adam();
  adam->set_beta1_power_value(0.5);  // the backup has no power variables
  adam->set_beta2_power_value(0.5);
  auto again = backup_.BeginAssignStream(retry);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE((*again)->Append(Bytes(gradient, 0, 16)).ok());
  AssignResponse response;
  ASSERT_TRUE((*again)->Commit(&response).ok());
  EXPECT_EQ(ReadProto(&backup_, "w")->content(), applied);
}

// The same apply to a group that moves (a move's target gets the chunks
// at the commit, then the commit entry): the moved variable and slots are
// the source's bit for bit.
TEST_F(StoreChunkedReplicaTest, ABigStreamedApplyDuringAMoveReachesTheTargetBitForBit) {
  for (const char* name : {"w", "w/Adam", "w/Adam_1"}) {
    ASSERT_TRUE(store_test::CreateWithValue(&primary_, name, Floats({0.5f, -1, 2, 1e-3f})).ok());
  }
  for (const char* name : {"beta1_power", "beta2_power"}) {
    ASSERT_TRUE(
        store_test::CreateWithValue(&primary_, name, store_test::Vec<float>({}, {0.9f})).ok());
  }
  StartMoveInRequest in =
      FollowGroup(9, {{"w", {4}}, {"w/Adam", {4}}, {"w/Adam_1", {4}}}, DT_FLOAT);
  in.set_follow(false);
  ASSERT_TRUE(backup_.BeginMoveIn(in).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 9));  // the snapshot
  AssignStreamHeader header = StreamHeaderOfW(UPDATE_ASSIGN, 5, 1);
  *header.mutable_apply() = AdamApplyOfW();
  const std::vector<float> gradient = {0.3f, -1.f / 3, 2, 7e-5f};
  auto sink = primary_.BeginAssignStream(header);
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE((*sink)->Append(Bytes(gradient, 0, 16)).ok());
  AssignResponse response;
  ASSERT_TRUE((*sink)->Commit(&response).ok());
  sink->reset();
  ASSERT_TRUE(primary_.FreezeMove(9, 0).ok());
  for (int i = 0; i < 100 && backup_.MoveInStatus(9, absl::ZeroDuration()).phase() != MOVE_READY;
       ++i) {
    ASSERT_TRUE(PullOnce(&primary_, &backup_, 9));
  }
  ASSERT_EQ(backup_.MoveInStatus(9, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(backup_.EndMoveIn(9, /*committed=*/true).ok());
  for (const char* name : {"w", "w/Adam", "w/Adam_1"}) {
    EXPECT_EQ(ReadProto(&backup_, name)->content(), ReadProto(&primary_, name)->content()) << name;
  }
  EXPECT_NE(Read(&backup_, "w"), (std::vector<float>{0.5f, -1, 2, 1e-3f}));
}

// Strings: "s" (string [3]), sent as its wire encoding.
TensorProto StringsProto(const std::vector<std::string>& values) {
  TensorProto p;
  p.set_dtype(DT_STRING);
  p.mutable_shape()->add_dims(static_cast<int64_t>(values.size()));
  p.set_content(EncodeStrings(values));
  return p;
}

// "s" (string [3]), initialized by a constant initializer: `constant` in
// every element.
absl::Status CreateStringsOfConstant(VariableStore* store, const std::string& constant) {
  CreateVariableRequest create;
  create.set_name("s");
  create.set_dtype(DT_STRING);
  create.mutable_shape()->add_dims(3);
  TensorProto* value = create.mutable_initializer()->mutable_constant()->mutable_value();
  value->set_dtype(DT_STRING);
  value->set_content(EncodeStrings({constant}));
  create.set_initialize(true);
  VariableInfo info;
  return store->Create(create, &info);
}

std::vector<std::string> ReadStrings(VariableStore* store) {
  absl::StatusOr<TensorProto> value = ReadProto(store, "s");
  EXPECT_TRUE(value.ok()) << value.status();
  if (!value.ok()) return {};
  absl::StatusOr<std::vector<std::string>> strings = DecodeStrings(value->content(), 3, "s");
  EXPECT_TRUE(strings.ok()) << strings.status();
  return strings.ok() ? *strings : std::vector<std::string>{};
}

// A streamed assign of strings goes to the backup like any other: in
// chunks of its encoding (cut anywhere, even inside a string) as they
// arrive, then committed; the follow goes on.
TEST_F(StoreChunkedReplicaTest, AStreamedAssignOfStringsReachesTheBackupInChunks) {
  ASSERT_TRUE(store_test::CreateWithValue(&primary_, "s", StringsProto({"a", "b", "c"})).ok());
  ASSERT_TRUE(backup_.BeginMoveIn(FollowGroup(7, {{"s", {3}}}, DT_STRING)).ok());
  CatchUp(&primary_, &backup_, 7);
  ASSERT_TRUE(primary_.SyncReplica(7, true, 1).ok());  // the commit waits for it
  const std::vector<std::string> value = {"vocabulary", "", std::string("z\0\xff", 3)};
  const std::string encoded = EncodeStrings(value);
  AssignStreamHeader header;
  header.set_name("s");
  header.set_op(UPDATE_ASSIGN);
  header.set_dtype(DT_STRING);
  header.mutable_shape()->add_dims(3);
  header.set_total_bytes(static_cast<int64_t>(encoded.size()));
  header.mutable_request_id()->set_client_id(5);
  header.mutable_request_id()->set_seq(1);
  auto sink = primary_.BeginAssignStream(header);
  ASSERT_TRUE(sink.ok()) << sink.status();
  const uint64_t before = Applied(&backup_, 7);
  ASSERT_TRUE((*sink)->Append(absl::string_view(encoded).substr(0, 6)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  EXPECT_GT(Applied(&backup_, 7), before) << "no chunk was logged ahead";
  ASSERT_TRUE((*sink)->Append(absl::string_view(encoded).substr(6)).ok());
  ASSERT_TRUE(CommitWhilePulling(sink->get(), &backup_, 7).ok());
  EXPECT_EQ(primary_.replication_stats().follows_out, 1) << "the assign ended the follow";
  EXPECT_EQ(ReadStrings(&primary_), value);
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(ReadStrings(&backup_), value);
}

// A forced initialization of strings is forwarded with the values made
// (here a constant broadcast to every element).
TEST_F(StoreReplicaTest, AForcedInitializationOfStringsReachesTheBackup) {
  ASSERT_TRUE(CreateStringsOfConstant(&primary_, "<unk>").ok());
  ASSERT_TRUE(backup_.BeginMoveIn(FollowGroup(7, {{"s", {3}}}, DT_STRING)).ok());
  ASSERT_TRUE(PullOnce(&primary_, &backup_, 7));
  ASSERT_TRUE(
      store_test::AssignValue(&primary_, "s", UPDATE_ASSIGN, StringsProto({"x", "y", "z"})).ok());
  InitializeVariablesRequest init;
  init.add_names("s");
  init.set_force(true);
  ASSERT_TRUE(primary_.Initialize(init).ok());
  EXPECT_EQ(primary_.replication_stats().follows_out, 1) << "the initialization ended the follow";
  CatchUp(&primary_, &backup_, 7);
  ASSERT_TRUE(backup_.PromoteReplica(7, 2, 2).ok());
  EXPECT_EQ(ReadStrings(&backup_), (std::vector<std::string>{"<unk>", "<unk>", "<unk>"}));
}

// Strings whose encoding no pull carries end the follow instead, and the
// initialization is answered once the backup is out of the in-sync set.
TEST(StoreReplicaBigValueTest, AnInitializationOfStringsTooBigToLogEndsTheFollow) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStoreOptions options = Options(1, absl::Seconds(600));
  options.max_unary_value_bytes = 8;
  VariableStore primary(device.get(), options);
  VariableStore backup(device.get(), Options(2, absl::Seconds(600)));
  ASSERT_TRUE(CreateStringsOfConstant(&primary, "long enough").ok());
  ASSERT_TRUE(backup.BeginMoveIn(FollowGroup(7, {{"s", {3}}}, DT_STRING)).ok());
  PullMoveRequest req;
  ASSERT_TRUE(backup.NextMovePull(7, &req));
  PullMoveResponse resp;
  ASSERT_TRUE(primary.PullMove(req, &resp).ok());
  ASSERT_TRUE(backup.ApplyMovePull(7, resp).ok());
  ASSERT_TRUE(primary.SyncReplica(7, true, 1).ok());
  std::vector<std::string> reasons;
  primary.SetReplicaBehindHandler([&](uint64_t, const std::string& reason) {
    reasons.push_back(reason);
    return absl::OkStatus();
  });
  InitializeVariablesRequest init;
  init.add_names("s");
  init.set_force(true);
  ASSERT_TRUE(primary.Initialize(init).ok());
  ASSERT_EQ(reasons.size(), 1u) << "answered while the backup lacking it was in sync";
  EXPECT_NE(reasons[0].find("strings of"), std::string::npos) << reasons[0];
  EXPECT_EQ(primary.replication_stats().follows_out, 0);
}

// A follow's log with no room for a chunk (its backup lags) takes it once
// the backup has drained the log, at a later chunk: here the memory limit
// leaves room for one chunk entry and a commit entry, never two chunks, so
// only chunks logged as the backup keeps up let the commit go through with
// the follow in place (before, a log that once had no room took every
// chunk left at the commit, and the follow ended).
TEST(StoreLaggingBackupTest, ChunksALogHadNoRoomForGoOnceTheBackupDrainedIt) {
  constexpr int64_t kChunk = 64, kElements = 64;  // 256 bytes: 4 chunks
  // What the primary holds when the stream begins, measured without a
  // limit; the run then has room for about 260 bytes of log on top.
  int64_t used_at_begin = 0;
  for (const bool limited : {false, true}) {
    SCOPED_TRACE(limited ? "limited" : "measuring");
    std::unique_ptr<Device> device = NewCpuDevice();
    VariableStoreOptions options = Options(1, absl::Seconds(600));
    options.logged_chunk_bytes = kChunk;
    options.staging_pool_bytes = 0;
    if (limited) options.memory_limit_bytes = used_at_begin + 260;
    VariableStore primary(device.get(), options);
    VariableStore backup(device.get(), Options(2, absl::Seconds(600)));
    ASSERT_TRUE(
        store_test::CreateWithValue(
            &primary, "big", store_test::Vec<float>({kElements}, std::vector<float>(kElements)))
            .ok());
    ASSERT_TRUE(backup.BeginMoveIn(FollowGroup(7, {{"big", {kElements}}}, DT_FLOAT)).ok());
    auto pull = [&] { return PullOnce(&primary, &backup, 7); };
    ASSERT_TRUE(pull());
    ASSERT_TRUE(primary.SyncReplica(7, true, 1).ok());
    std::vector<std::string> reasons;
    primary.SetReplicaBehindHandler([&](uint64_t, const std::string& reason) {
      reasons.push_back(reason);
      return absl::OkStatus();
    });
    AssignStreamHeader header;
    header.set_name("big");
    header.set_op(UPDATE_ASSIGN);
    header.set_dtype(DT_FLOAT);
    header.mutable_shape()->add_dims(kElements);
    header.set_total_bytes(kElements * 4);
    header.mutable_request_id()->set_client_id(5);
    header.mutable_request_id()->set_seq(1);
    auto sink = primary.BeginAssignStream(header);
    ASSERT_TRUE(sink.ok()) << sink.status();
    if (!limited) used_at_begin = primary.memory().used();
    std::vector<float> value(kElements);
    for (int64_t i = 0; i < kElements; ++i) value[i] = 0.5f * static_cast<float>(i);
    const char* bytes = reinterpret_cast<const char*>(value.data());
    // Two chunks at once: the second finds no room. Then a chunk after
    // each drain of the log (a pull, and one more that acknowledges it).
    ASSERT_TRUE((*sink)->Append(absl::string_view(bytes, 2 * kChunk)).ok());
    for (int64_t at = 2 * kChunk; at < kElements * 4; at += kChunk) {
      ASSERT_TRUE(pull());
      ASSERT_TRUE(pull());
      ASSERT_TRUE((*sink)->Append(absl::string_view(bytes + at, kChunk)).ok());
    }
    ASSERT_TRUE(pull());
    ASSERT_TRUE(pull());
    const absl::Status committed = CommitWhilePulling(sink->get(), &primary, &backup, 7);
    ASSERT_TRUE(committed.ok()) << committed;
    EXPECT_TRUE(reasons.empty()) << "the follow was ended: " << reasons.front();
    EXPECT_EQ(primary.replication_stats().follows_out, 1);
    if (!reasons.empty()) continue;
    ASSERT_TRUE(backup.PromoteReplica(7, 2, 2).ok());
    EXPECT_EQ(Read(&backup, "big"), value);
  }
}

}  // namespace
}  // namespace psd
