// A part move between two stores in one process, driven through the stores'
// own move calls (what ShardMoveService and the coordinator do over gRPC):
// writes applied on the source during the copy arrive on the target in
// order, a retried write the source applied is answered from the moved
// window, the source answers "stale handle" afterwards; and a source whose
// word does not match the declared part (its shape, or a logged write to
// another variable) installs nothing.
#include "gtest/gtest.h"
#include "psd/wire.h"
#include "shard/variable_store.h"
#include "store_test_util.h"

namespace psd {
namespace {

VariableStoreOptions Options(uint64_t incarnation) {
  VariableStoreOptions options;
  options.incarnation = incarnation;
  options.request_window = 64;
  return options;
}

TensorProto Floats(std::vector<float> v) {
  TensorProto p;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{static_cast<int64_t>(v.size())}, v), &p);
  return p;
}

std::vector<float> Read(VariableStore* store, const std::string& name) {
  ReadRequest req;
  req.set_name(name);
  ReadResponse resp;
  absl::Status s = store->Read(req, &resp);
  EXPECT_TRUE(s.ok()) << s;
  if (!s.ok()) return {};
  return TensorFromProto(resp.value(), name)->ToVector<float>();
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

StartMoveInRequest MoveIn(uint64_t move_id) {
  StartMoveInRequest in;
  in.set_move_id(move_id);
  in.set_source_incarnation(1);
  CreateVariableRequest* part = in.add_parts();
  part->set_name("w");
  part->set_dtype(DT_FLOAT);
  part->mutable_shape()->add_dims(4);
  return in;
}

class StoreMoveTest : public ::testing::Test {
 protected:
  StoreMoveTest()
      : device_(NewCpuDevice()), source_(device_.get(), Options(1)), target_(device_.get(), Options(2)) {}

  // One pull from the source applied on the target; false when none is due.
  bool PullOnce(uint64_t move_id) {
    PullMoveRequest req;
    if (!target_.NextMovePull(move_id, &req)) return false;
    PullMoveResponse resp;
    absl::Status pulled = source_.PullMove(req, &resp);
    EXPECT_TRUE(pulled.ok()) << pulled;
    if (!pulled.ok()) return false;
    absl::Status applied = target_.ApplyMovePull(move_id, resp);
    EXPECT_TRUE(applied.ok()) << applied;
    return applied.ok();
  }

  std::unique_ptr<Device> device_;
  VariableStore source_;
  VariableStore target_;
};

TEST_F(StoreMoveTest, WritesDuringTheCopyAndTheWindowMoveWithThePart) {
  ASSERT_TRUE(store_test::CreateWithValue(&source_, "w", Floats({0, 1, 2, 3})).ok());
  ASSERT_TRUE(AddOnes(&source_, 1).ok());  // before the move
  ASSERT_TRUE(target_.BeginMoveIn(MoveIn(5)).ok());
  ASSERT_TRUE(PullOnce(5));                // pins and copies the snapshot
  ASSERT_TRUE(AddOnes(&source_, 2).ok());  // after the snapshot: logged
  ASSERT_TRUE(AddOnes(&source_, 3).ok());
  ASSERT_TRUE(PullOnce(5));                // the logged writes
  auto frozen = source_.FreezeMove(5, 1);
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_EQ(*frozen, 2u);
  while (PullOnce(5)) {
  }
  EXPECT_EQ(target_.MoveInStatus(5, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target_.EndMoveIn(5, /*committed=*/true).ok());
  ASSERT_TRUE(source_.EndMoveOut(5, /*committed=*/true, 1).ok());

  EXPECT_EQ(Read(&target_, "w"), (std::vector<float>{3, 4, 5, 6}));
  // Retries of writes the source applied, before and during the move, are
  // answered on the target without running again.
  EXPECT_TRUE(AddOnes(&target_, 1).ok());
  EXPECT_TRUE(AddOnes(&target_, 3).ok());
  EXPECT_EQ(Read(&target_, "w"), (std::vector<float>{3, 4, 5, 6}));
  EXPECT_TRUE(AddOnes(&target_, 4).ok());
  EXPECT_EQ(Read(&target_, "w"), (std::vector<float>{4, 5, 6, 7}));
  absl::Status stale = AddOnes(&source_, 4);
  EXPECT_TRUE(absl::IsAborted(stale)) << stale;
  EXPECT_NE(stale.message().find("stale handle"), absl::string_view::npos) << stale;
}

TEST_F(StoreMoveTest, ASourceThatSendsAnotherShapeInstallsNothing) {
  ASSERT_TRUE(target_.BeginMoveIn(MoveIn(6)).ok());
  PullMoveResponse lying;
  MovedMember* m = lying.add_members();
  m->set_name("w");
  m->set_dtype(DT_FLOAT);
  m->mutable_shape()->add_dims(1 << 20);
  m->set_total_bytes(4 << 20);
  m->set_initialized(true);
  absl::Status applied = target_.ApplyMovePull(6, lying);
  EXPECT_TRUE(absl::IsDataLoss(applied)) << applied;
  EXPECT_EQ(target_.MoveInStatus(6, absl::ZeroDuration()).phase(), MOVE_FAILED);
  EXPECT_EQ(target_.memory().used(), 0);
  ASSERT_TRUE(target_.EndMoveIn(6, /*committed=*/false).ok());
  EXPECT_TRUE(target_.List("").empty());
}

// The pulls a target keeps in flight together (ShardMoveService) are the
// snapshot's chunks in order: across members of several sizes, one of them
// empty, every byte is asked for once, and the group arrives whole.
TEST_F(StoreMoveTest, PipelinedPullsAskForEachChunkOnceInOrder) {
  // 9 MiB (three chunks), empty, 4 MiB + 4 bytes (two chunks).
  const std::vector<int64_t> sizes = {9 << 18, 0, (1 << 20) + 1};
  StartMoveInRequest in;
  in.set_move_id(7);
  in.set_source_incarnation(1);
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string name = "big" + std::to_string(i);
    std::vector<float> v(static_cast<size_t>(sizes[i]));
    for (size_t j = 0; j < v.size(); ++j) v[j] = static_cast<float>(j % 1000) + i;
    ASSERT_TRUE(store_test::CreateWithValue(&source_, name, Floats(v)).ok());
    CreateVariableRequest* part = in.add_parts();
    part->set_name(name);
    part->set_dtype(DT_FLOAT);
    part->mutable_shape()->add_dims(sizes[i]);
  }
  ASSERT_TRUE(target_.BeginMoveIn(in).ok());
  // Before the first answer only one pull is known (it begins the move).
  EXPECT_EQ(target_.PlanMovePulls(7, 3).size(), 1u);
  std::vector<std::pair<int, int64_t>> asked;
  bool copying = true;
  for (int round = 0; round < 20 && copying; ++round) {
    std::vector<PullMoveRequest> plan = target_.PlanMovePulls(7, 3, &copying);
    ASSERT_FALSE(plan.empty());
    if (!copying) break;
    if (round > 0) EXPECT_LE(plan.size(), 3u);
    // Every planned pull answered first, then applied in order (as the
    // puller does); only the first is new each round.
    std::vector<PullMoveResponse> answers(plan.size());
    for (size_t i = 0; i < plan.size(); ++i) {
      ASSERT_TRUE(source_.PullMove(plan[i], &answers[i]).ok());
    }
    asked.emplace_back(plan[0].member(), plan[0].offset());
    ASSERT_TRUE(target_.ApplyMovePull(7, answers[0]).ok());
    if (plan.size() > 1) {
      std::vector<PullMoveRequest> next = target_.PlanMovePulls(7, 3, &copying);
      if (copying) {
        EXPECT_EQ(next[0].member(), plan[1].member());
        EXPECT_EQ(next[0].offset(), plan[1].offset());
      }
    }
  }
  const std::vector<std::pair<int, int64_t>> expected = {
      {0, 0}, {0, 4 << 20}, {0, 8 << 20}, {1, 0}, {2, 0}, {2, 4 << 20}};
  EXPECT_EQ(asked, expected);
  ASSERT_TRUE(source_.FreezeMove(7, 1).ok());
  while (PullOnce(7)) {
  }
  ASSERT_EQ(target_.MoveInStatus(7, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target_.EndMoveIn(7, /*committed=*/true).ok());
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::vector<float> got = Read(&target_, "big" + std::to_string(i));
    ASSERT_EQ(static_cast<int64_t>(got.size()), sizes[i]);
    for (size_t j = 0; j < got.size(); ++j) {
      ASSERT_EQ(got[j], static_cast<float>(j % 1000) + i) << "big" << i << "[" << j << "]";
    }
  }
}

// A logged write naming a variable the move does not carry (a source that
// lies, or sends another move's log) is refused: replayed, it would change
// a variable the target serves. Found by move_pull_fuzz.
TEST_F(StoreMoveTest, ALoggedWriteToAnotherVariableIsRefused) {
  ASSERT_TRUE(store_test::CreateWithValue(&source_, "w", Floats({0, 1, 2, 3})).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&target_, "other", Floats({5, 5, 5, 5})).ok());
  ASSERT_TRUE(target_.BeginMoveIn(MoveIn(7)).ok());
  ASSERT_TRUE(PullOnce(7));  // the snapshot
  PullMoveResponse stray;
  MoveWrite* w = stray.add_writes();
  w->set_seq(1);
  AssignRequest* add = w->mutable_op()->mutable_assign();
  add->set_name("other");
  add->set_op(UPDATE_ADD);
  *add->mutable_value() = Floats({1, 1, 1, 1});
  stray.set_final_seq(1);
  absl::Status applied = target_.ApplyMovePull(7, stray);
  EXPECT_TRUE(absl::IsDataLoss(applied)) << applied;
  EXPECT_NE(applied.message().find("does not carry"), absl::string_view::npos) << applied;
  EXPECT_EQ(target_.MoveInStatus(7, absl::ZeroDuration()).phase(), MOVE_FAILED);
  EXPECT_EQ(Read(&target_, "other"), (std::vector<float>{5, 5, 5, 5}));
  ASSERT_TRUE(target_.EndMoveIn(7, /*committed=*/false).ok());
}

// An Adam apply that reads its beta powers from variables on the source
// (as trainers do for parts beside beta1_power) is replayed on the target
// with the values it read: the target holds no such variable, or, as here,
// one of the same name with another value.
TEST_F(StoreMoveTest, AnAdamApplyReadingBetaPowersByNameMovesWithTheValuesItRead) {
  ASSERT_TRUE(store_test::CreateWithValue(&source_, "w", Floats({1, 1, 1, 1})).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&source_, "w/Adam", Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&source_, "w/Adam_1", Floats({0, 0, 0, 0})).ok());
  TensorProto power1, power2, other1;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.9f}), &power1);
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.999f}), &power2);
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.5f}), &other1);
  ASSERT_TRUE(store_test::CreateWithValue(&source_, "beta1_power", power1).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&source_, "beta2_power", power2).ok());
  // Another optimizer's powers of the same names on the target.
  ASSERT_TRUE(store_test::CreateWithValue(&target_, "beta1_power", other1).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&target_, "beta2_power", other1).ok());

  StartMoveInRequest in = MoveIn(9);
  for (const char* slot : {"w/Adam", "w/Adam_1"}) {
    CreateVariableRequest* part = in.add_parts();
    *part = in.parts(0);
    part->set_name(slot);
  }
  ASSERT_TRUE(target_.BeginMoveIn(in).ok());
  ASSERT_TRUE(PullOnce(9));  // the snapshot
  ApplyDenseRequest apply;
  apply.set_name("w");
  apply.add_slots("w/Adam");
  apply.add_slots("w/Adam_1");
  OptimizerSpec::Adam* adam = apply.mutable_optimizer()->mutable_adam();
  adam->set_learning_rate(0.1);
  adam->set_beta1(0.9);
  adam->set_beta2(0.999);
  adam->set_epsilon(1e-8);
  adam->set_beta1_power_variable("beta1_power");
  adam->set_beta2_power_variable("beta2_power");
  *apply.mutable_gradient() = Floats({0.3f, -1, 2, 0.01f});
  for (int step = 0; step < 3; ++step) {
    apply.mutable_request_id()->set_client_id(11);
    apply.mutable_request_id()->set_seq(step + 1);
    ApplyDenseResponse response;
    ASSERT_TRUE(source_.ApplyDense(apply, &response).ok());
  }
  const std::vector<float> applied = Read(&source_, "w");
  const std::vector<float> m = Read(&source_, "w/Adam");
  ASSERT_TRUE(PullOnce(9));  // the logged applies
  ASSERT_TRUE(source_.FreezeMove(9, 1).ok());
  while (PullOnce(9)) {
  }
  ASSERT_EQ(target_.MoveInStatus(9, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target_.EndMoveIn(9, /*committed=*/true).ok());
  ASSERT_TRUE(source_.EndMoveOut(9, /*committed=*/true, 1).ok());
  EXPECT_EQ(Read(&target_, "w"), applied);
  EXPECT_EQ(Read(&target_, "w/Adam"), m);
}

}  // namespace
}  // namespace psd
