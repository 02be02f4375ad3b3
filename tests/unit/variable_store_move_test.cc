// A part move between two stores in one process, driven through the stores'
// own move calls (what ShardMoveService and the coordinator do over gRPC):
// writes applied on the source during the copy arrive on the target in
// order, a retried write the source applied is answered from the moved
// window, the source answers "stale handle" afterwards; and a source whose
// word does not match the declared part (its shape, or a logged write to
// another variable) installs nothing. Embedding tables' parts move with
// their slot rows, pending admission counts and logged lookups; a source
// that sends a key of another part or a chunk of a part the move does not
// carry installs nothing.
#include <map>
#include <thread>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "psd/embedding_keys.h"
#include "psd/status.h"
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

  // The same for any target (a backup, another move's), without waiting
  // for writes not logged yet.
  bool PullInto(VariableStore* target, uint64_t move_id) {
    PullMoveRequest req;
    if (!target->NextMovePull(move_id, &req)) return false;
    req.set_wait_ms(0);
    PullMoveResponse resp;
    absl::Status pulled = source_.PullMove(req, &resp);
    EXPECT_TRUE(pulled.ok()) << pulled;
    if (!pulled.ok()) return false;
    absl::Status applied = target->ApplyMovePull(move_id, resp);
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

// --- Embedding tables' parts ---

// A table part "emb" (part 0 of `num_parts`, dim 2, rows start at 1, a
// counter filter admitting a key at its 3rd use) and its Adagrad slot.
std::vector<CreateVariableRequest> TableParts(int num_parts) {
  CreateVariableRequest table;
  table.set_name("emb");
  table.set_dtype(DT_FLOAT);
  table.mutable_shape()->add_dims(2);
  table.mutable_initializer()->mutable_ones();
  table.mutable_embedding()->set_embedding_dim(2);
  table.mutable_embedding()->mutable_counter_filter()->set_filter_freq(3);
  table.set_embedding_num_parts(num_parts);
  CreateVariableRequest slot = table;
  slot.set_name("emb/Adagrad");
  TensorToProto(Tensor::Scalar<float>(0.5f),
                slot.mutable_initializer()->mutable_constant()->mutable_value());
  slot.mutable_embedding()->set_slot_of("emb");
  return {table, slot};
}

TensorProto Keys(std::vector<int64_t> keys) {
  TensorProto p;
  TensorToProto(*Tensor::FromVector<int64_t>(TensorShape{static_cast<int64_t>(keys.size())}, keys),
                &p);
  return p;
}

absl::StatusOr<std::vector<float>> Lookup(VariableStore* store, std::vector<int64_t> keys,
                                          const std::string& name = "emb") {
  GatherRequest req;
  req.set_name(name);
  *req.mutable_indices() = Keys(keys);
  GatherResponse resp;
  PSD_RETURN_IF_ERROR(store->Gather(req, &resp));
  PSD_ASSIGN_OR_RETURN(Tensor t, TensorFromProto(resp.value(), name));
  return t.ToVector<float>();
}

absl::Status AddToRows(VariableStore* store, std::vector<int64_t> keys, uint64_t seq,
                       uint64_t client_id = 11) {
  ScatterRequest req;
  req.set_name("emb");
  req.set_op(UPDATE_ADD);
  *req.mutable_indices() = Keys(keys);
  TensorProto rows;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{static_cast<int64_t>(keys.size()), 2},
                                           std::vector<float>(keys.size() * 2, 1.0f)),
                &rows);
  *req.mutable_updates() = rows;
  req.set_global_step(static_cast<int64_t>(seq));
  req.mutable_request_id()->set_client_id(client_id);
  req.mutable_request_id()->set_seq(seq);
  ScatterResponse resp;
  return store->Scatter(req, &resp);
}

absl::Status Adagrad(VariableStore* store, std::vector<int64_t> keys, uint64_t seq) {
  ApplySparseRequest req;
  req.set_name("emb");
  req.add_slots("emb/Adagrad");
  req.mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.25);
  *req.mutable_indices() = Keys(keys);
  TensorProto grads;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{static_cast<int64_t>(keys.size()), 2},
                                           std::vector<float>(keys.size() * 2, 0.5f)),
                &grads);
  *req.mutable_values() = grads;
  req.set_global_step(static_cast<int64_t>(seq));
  req.mutable_request_id()->set_client_id(11);
  req.mutable_request_id()->set_seq(seq);
  ApplySparseResponse resp;
  return store->ApplySparse(req, &resp);
}

// Every row of "emb": key -> (value, slot row, freq, version).
using Rows = std::map<int64_t, std::tuple<std::vector<float>, std::vector<float>, int64_t, int64_t>>;
Rows Export(VariableStore* store) {
  ExportEmbeddingRequest req;
  req.set_name("emb");
  req.add_slots("emb/Adagrad");
  Rows out;
  auto source = store->BeginEmbeddingExport(req);
  EXPECT_TRUE(source.ok()) << source.status();
  if (!source.ok()) return out;
  EmbeddingRows rows;
  while (true) {
    rows.Clear();
    auto more = (*source)->Next(&rows);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    auto keys = TensorFromProto(rows.keys(), "keys")->ToVector<int64_t>();
    auto values = TensorFromProto(rows.values(), "values")->ToVector<float>();
    auto slots = TensorFromProto(rows.slot_values(0), "slots")->ToVector<float>();
    auto freqs = TensorFromProto(rows.freqs(), "freqs")->ToVector<int64_t>();
    auto versions = TensorFromProto(rows.versions(), "versions")->ToVector<int64_t>();
    for (size_t i = 0; i < keys.size(); ++i) {
      out[keys[i]] = {{values[2 * i], values[2 * i + 1]}, {slots[2 * i], slots[2 * i + 1]},
                      freqs[i], versions[i]};
    }
  }
  return out;
}

StartMoveInRequest TableMoveIn(uint64_t move_id, int num_parts) {
  StartMoveInRequest in;
  in.set_move_id(move_id);
  in.set_source_incarnation(1);
  for (const CreateVariableRequest& part : TableParts(num_parts)) *in.add_parts() = part;
  return in;
}

// Rows (trained, with slot rows), pending counts and the lookups and
// writes logged during the copy arrive whole: the target's rows equal the
// source's at the freeze, a key one use short of admission is admitted by
// its next lookup there, and retried writes are answered from the window.
TEST_F(StoreMoveTest, ATablePartMovesWithItsSlotRowsPendingCountsAndLoggedLookups) {
  VariableInfo info;
  for (const CreateVariableRequest& part : TableParts(1)) {
    ASSERT_TRUE(source_.Create(part, &info).ok());
  }
  // Keys 1..40 admitted (three uses) and trained; key 100 used twice.
  std::vector<int64_t> keys;
  for (int64_t k = 1; k <= 40; ++k) keys.push_back(k);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Lookup(&source_, keys).ok());
  ASSERT_TRUE(Adagrad(&source_, keys, 1).ok());
  ASSERT_TRUE(Lookup(&source_, {100, 100}).ok());

  ASSERT_TRUE(target_.BeginMoveIn(TableMoveIn(8, 1)).ok());
  ASSERT_TRUE(PullOnce(8));  // pins; the table's rows
  // During the copy: a write, a retried one, lookups that count (key 200's
  // first use, key 5's freq) and one that admits key 300 at its third use.
  ASSERT_TRUE(AddToRows(&source_, {5, 6}, 2).ok());
  ASSERT_TRUE(AddToRows(&source_, {5, 6}, 2).ok());
  ASSERT_TRUE(Lookup(&source_, {200, 5, 300, 300, 300}).ok());
  ASSERT_TRUE(Adagrad(&source_, {300, 7}, 3).ok());
  while (target_.MoveInStatus(8, absl::ZeroDuration()).phase() == MOVE_COPYING) {
    ASSERT_TRUE(PullOnce(8));
  }
  ASSERT_TRUE(PullOnce(8));  // the logged ones
  auto frozen = source_.FreezeMove(8, 1);
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_EQ(*frozen, 3u);  // a write, a lookup, an apply (the retry was not run)
  const Rows at_freeze = Export(&source_);
  EXPECT_EQ(at_freeze.size(), 41u);
  while (PullOnce(8)) {
  }
  ASSERT_EQ(target_.MoveInStatus(8, absl::ZeroDuration()).phase(), MOVE_READY);
  // Not served before the switch.
  EXPECT_TRUE(absl::IsUnavailable(Lookup(&target_, {1}).status()));
  EXPECT_TRUE(target_.List("").empty());
  ASSERT_TRUE(target_.EndMoveIn(8, /*committed=*/true).ok());
  ASSERT_TRUE(source_.EndMoveOut(8, /*committed=*/true, 1).ok());
  // The source dropped the part: its rows' memory is back.
  EXPECT_EQ(source_.memory().used(), 0);

  EXPECT_EQ(Export(&target_), at_freeze);
  // Key 100 was one use short: its next lookup admits it (its initial row,
  // not the default value 0); key 200 needs two more.
  auto admitted = Lookup(&target_, {100, 200});
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  EXPECT_EQ(*admitted, (std::vector<float>{1, 1, 0, 0}));
  // The window moved: a retry of the source's write is not applied again.
  ASSERT_TRUE(AddToRows(&target_, {5, 6}, 2).ok());
  EXPECT_EQ(std::get<0>(Export(&target_)[5]), std::get<0>(at_freeze.at(5)));
  // The slot is found beside the table.
  ASSERT_TRUE(Adagrad(&target_, {5}, 4).ok());
  EXPECT_NE(std::get<1>(Export(&target_)[5]), std::get<1>(at_freeze.at(5)));
  absl::Status stale = Lookup(&source_, {1}).status();
  EXPECT_TRUE(absl::IsAborted(stale)) << stale;
  EXPECT_NE(stale.message().find("stale handle"), absl::string_view::npos) << stale;
}

// Values of every row of table part `name` (key -> row), as exported.
std::map<int64_t, std::vector<float>> TableValues(VariableStore* store, const std::string& name) {
  ExportEmbeddingRequest req;
  req.set_name(name);
  std::map<int64_t, std::vector<float>> out;
  auto source = store->BeginEmbeddingExport(req);
  EXPECT_TRUE(source.ok()) << source.status();
  if (!source.ok()) return out;
  EmbeddingRows rows;
  while (true) {
    rows.Clear();
    auto more = (*source)->Next(&rows);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    auto keys = TensorFromProto(rows.keys(), "keys")->ToVector<int64_t>();
    auto values = TensorFromProto(rows.values(), "values")->ToVector<float>();
    for (size_t i = 0; i < keys.size(); ++i) out[keys[i]] = {values[2 * i], values[2 * i + 1]};
  }
  return out;
}

// As for dense parts: a table trained with Adam whose beta powers are read
// by name on the source is replayed on the target with the values read
// there, not the target's variables of the same names.
TEST_F(StoreMoveTest, ATableAdamApplyReadingBetaPowersByNameMovesWithTheValuesItRead) {
  VariableStore reference(device_.get(), Options(3));
  std::vector<CreateVariableRequest> parts = TableParts(1);
  parts[0].mutable_embedding()->clear_counter_filter();
  parts[1].set_name("emb/Adam");
  CreateVariableRequest second = parts[1];
  second.set_name("emb/Adam_1");
  parts.push_back(second);
  TensorProto power1, power2, other;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.9f}), &power1);
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.999f}), &power2);
  TensorToProto(*Tensor::FromVector<float>(TensorShape{}, {0.5f}), &other);
  VariableInfo info;
  for (VariableStore* store : {&source_, &reference}) {
    for (const CreateVariableRequest& part : parts) ASSERT_TRUE(store->Create(part, &info).ok());
    ASSERT_TRUE(store_test::CreateWithValue(store, "beta1_power", power1).ok());
    ASSERT_TRUE(store_test::CreateWithValue(store, "beta2_power", power2).ok());
  }
  ASSERT_TRUE(store_test::CreateWithValue(&target_, "beta1_power", other).ok());
  ASSERT_TRUE(store_test::CreateWithValue(&target_, "beta2_power", other).ok());
  const auto adam = [](VariableStore* store, uint64_t seq) {
    ApplySparseRequest req;
    req.set_name("emb");
    req.add_slots("emb/Adam");
    req.add_slots("emb/Adam_1");
    OptimizerSpec::Adam* a = req.mutable_optimizer()->mutable_adam();
    a->set_learning_rate(0.1);
    a->set_beta1(0.9);
    a->set_beta2(0.999);
    a->set_epsilon(1e-8);
    a->set_beta1_power_variable("beta1_power");
    a->set_beta2_power_variable("beta2_power");
    *req.mutable_indices() = Keys({1, 2, 3});
    TensorToProto(*Tensor::FromVector<float>(TensorShape{3, 2}, {0.3f, -1, 2, 0.01f, 0.5f, 7}),
                  req.mutable_values());
    req.set_global_step(static_cast<int64_t>(seq));
    req.mutable_request_id()->set_client_id(12);
    req.mutable_request_id()->set_seq(seq);
    ApplySparseResponse resp;
    return store->ApplySparse(req, &resp);
  };
  ASSERT_TRUE(adam(&source_, 1).ok());
  ASSERT_TRUE(adam(&reference, 1).ok());
  StartMoveInRequest in;
  in.set_move_id(10);
  in.set_source_incarnation(1);
  for (const CreateVariableRequest& part : parts) *in.add_parts() = part;
  ASSERT_TRUE(target_.BeginMoveIn(in).ok());
  ASSERT_TRUE(PullOnce(10));  // pins; the rows
  for (uint64_t seq = 2; seq <= 4; ++seq) {  // logged
    ASSERT_TRUE(adam(&source_, seq).ok());
    ASSERT_TRUE(adam(&reference, seq).ok());
  }
  while (target_.MoveInStatus(10, absl::ZeroDuration()).phase() == MOVE_COPYING) {
    ASSERT_TRUE(PullOnce(10));
  }
  ASSERT_TRUE(PullOnce(10));
  ASSERT_TRUE(source_.FreezeMove(10, 1).ok());
  while (PullOnce(10)) {
  }
  ASSERT_EQ(target_.MoveInStatus(10, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target_.EndMoveIn(10, /*committed=*/true).ok());
  ASSERT_TRUE(source_.EndMoveOut(10, /*committed=*/true, 1).ok());
  EXPECT_EQ(TableValues(&target_, "emb"), TableValues(&reference, "emb"));
  EXPECT_EQ(TableValues(&target_, "emb").size(), 3u);
}

// A logged write naming a key of another part of the table (a source that
// lies) is refused: the target fails the move and serves nothing.
TEST_F(StoreMoveTest, ALoggedWriteToAKeyOfAnotherPartIsRefused) {
  VariableInfo info;
  std::vector<CreateVariableRequest> parts = TableParts(2);
  for (const CreateVariableRequest& part : parts) ASSERT_TRUE(source_.Create(part, &info).ok());
  ASSERT_TRUE(target_.BeginMoveIn(TableMoveIn(9, 2)).ok());
  while (target_.MoveInStatus(9, absl::ZeroDuration()).phase() == MOVE_COPYING) {
    ASSERT_TRUE(PullOnce(9));
  }
  int64_t other_key = 0;
  while (PartOfKey(other_key, 2) == 0) ++other_key;
  PullMoveResponse stray;
  stray.set_member(2);
  MoveWrite* w = stray.add_writes();
  w->set_seq(1);
  ScatterRequest* add = w->mutable_op()->mutable_scatter();
  add->set_name("emb");
  add->set_op(UPDATE_ADD);
  *add->mutable_indices() = Keys({other_key});
  TensorToProto(*Tensor::FromVector<float>(TensorShape{1, 2}, {1, 1}), add->mutable_updates());
  stray.set_final_seq(1);
  absl::Status applied = target_.ApplyMovePull(9, stray);
  EXPECT_FALSE(applied.ok());
  EXPECT_NE(applied.message().find("belongs to part"), absl::string_view::npos) << applied;
  EXPECT_EQ(target_.MoveInStatus(9, absl::ZeroDuration()).phase(), MOVE_FAILED);
  ASSERT_TRUE(target_.EndMoveIn(9, /*committed=*/false).ok());
  EXPECT_TRUE(target_.List("", /*include_incoming=*/true).empty());
  EXPECT_EQ(target_.num_variables(), 0u);
}

// Chunks the move did not ask for install nothing: rows for a member the
// group does not have, a slot that claims rows of its own, rows of a key
// of another part.
TEST_F(StoreMoveTest, ATableChunkForAPartNotInTheGroupIsRefused) {
  VariableInfo info;
  for (const CreateVariableRequest& part : TableParts(2)) {
    ASSERT_TRUE(source_.Create(part, &info).ok());
  }
  int64_t mine = 0;
  while (PartOfKey(mine, 2) != 0) ++mine;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Lookup(&source_, {mine}).ok());
  auto first = [&](uint64_t id) {
    PullMoveRequest req;
    EXPECT_TRUE(target_.NextMovePull(id, &req));
    PullMoveResponse resp;
    EXPECT_TRUE(source_.PullMove(req, &resp).ok());
    return resp;
  };
  // A chunk of member 5 (the group has two).
  ASSERT_TRUE(target_.BeginMoveIn(TableMoveIn(10, 2)).ok());
  PullMoveResponse resp = first(10);
  resp.set_member(5);
  EXPECT_TRUE(absl::IsDataLoss(target_.ApplyMovePull(10, resp)));
  ASSERT_TRUE(target_.EndMoveIn(10, false).ok());
  ASSERT_TRUE(source_.EndMoveOut(10, false, -1).ok());
  // The slot's member claiming to be a table of its own.
  ASSERT_TRUE(target_.BeginMoveIn(TableMoveIn(11, 2)).ok());
  resp = first(11);
  resp.mutable_members(1)->mutable_table()->clear_slot_of();
  EXPECT_TRUE(absl::IsDataLoss(target_.ApplyMovePull(11, resp)));
  ASSERT_TRUE(target_.EndMoveIn(11, false).ok());
  ASSERT_TRUE(source_.EndMoveOut(11, false, -1).ok());
  // A row of a key of part 1.
  ASSERT_TRUE(target_.BeginMoveIn(TableMoveIn(12, 2)).ok());
  resp = first(12);
  ASSERT_EQ(resp.table().keys_size(), 1);
  int64_t theirs = 0;
  while (PartOfKey(theirs, 2) == 0) ++theirs;
  resp.mutable_table()->set_keys(0, theirs);
  EXPECT_FALSE(target_.ApplyMovePull(12, resp).ok());
  EXPECT_EQ(target_.MoveInStatus(12, absl::ZeroDuration()).phase(), MOVE_FAILED);
  ASSERT_TRUE(target_.EndMoveIn(12, false).ok());
  ASSERT_TRUE(source_.EndMoveOut(12, false, -1).ok());
  EXPECT_EQ(target_.num_variables(), 0u);
  EXPECT_EQ(target_.memory().used(), 0);
  // The source serves on, its rows whole.
  auto row = Lookup(&source_, {mine});
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(*row, (std::vector<float>{1, 1}));
}

// A table part of several chunks (fixed ranges of its rows' entry ids,
// chunks planned ahead as a puller keeps them in flight) arrives whole.
TEST_F(StoreMoveTest, ATableOfSeveralChunksArrivesWholeThroughPipelinedPulls) {
  constexpr int64_t kDim = 1024;  // a row with its slot: ~8 KiB, ~510 rows a chunk
  constexpr int64_t kKeys = 1200;
  std::vector<CreateVariableRequest> parts = TableParts(1);
  for (CreateVariableRequest& part : parts) {
    part.mutable_shape()->set_dims(0, kDim);
    part.mutable_embedding()->set_embedding_dim(kDim);
    part.mutable_embedding()->clear_counter_filter();
  }
  VariableInfo info;
  for (const CreateVariableRequest& part : parts) ASSERT_TRUE(source_.Create(part, &info).ok());
  for (int64_t k = 0; k < kKeys; k += 100) {
    std::vector<int64_t> keys;
    for (int64_t j = k; j < k + 100; ++j) keys.push_back(j * 3);
    ScatterRequest req;
    req.set_name("emb");
    req.set_op(UPDATE_ADD);
    *req.mutable_indices() = Keys(keys);
    TensorToProto(*Tensor::FromVector<float>(
                      TensorShape{100, kDim}, std::vector<float>(100 * kDim, static_cast<float>(k))),
                  req.mutable_updates());
    ScatterResponse resp;
    ASSERT_TRUE(source_.Scatter(req, &resp).ok());
  }
  StartMoveInRequest in;
  in.set_move_id(13);
  in.set_source_incarnation(1);
  for (const CreateVariableRequest& part : parts) *in.add_parts() = part;
  ASSERT_TRUE(target_.BeginMoveIn(in).ok());
  std::vector<std::pair<int, int64_t>> asked;
  bool copying = true;
  for (int round = 0; round < 20 && copying; ++round) {
    std::vector<PullMoveRequest> plan = target_.PlanMovePulls(13, 3, &copying);
    ASSERT_FALSE(plan.empty());
    if (!copying) break;
    std::vector<PullMoveResponse> answers(plan.size());
    for (size_t i = 0; i < plan.size(); ++i) {
      ASSERT_TRUE(source_.PullMove(plan[i], &answers[i]).ok());
      EXPECT_LE(answers[i].ByteSizeLong(), size_t{5} << 20);
    }
    asked.emplace_back(plan[0].member(), plan[0].offset());
    ASSERT_TRUE(target_.ApplyMovePull(13, answers[0]).ok());
  }
  // Rows in three chunks (ids [0, 510), [510, 1020), [1020, 1200)), then
  // the slot's empty one.
  const std::vector<std::pair<int, int64_t>> expected = {{0, 0}, {0, 510}, {0, 1020}, {1, 0}};
  EXPECT_EQ(asked, expected);
  ASSERT_TRUE(source_.FreezeMove(13, 1).ok());
  while (PullOnce(13)) {
  }
  ASSERT_EQ(target_.MoveInStatus(13, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target_.EndMoveIn(13, /*committed=*/true).ok());
  std::vector<int64_t> keys;
  for (int64_t j = 0; j < kKeys; ++j) keys.push_back(j * 3);
  auto moved = Lookup(&target_, keys);
  ASSERT_TRUE(moved.ok()) << moved.status();
  ASSERT_EQ(static_cast<int64_t>(moved->size()), kKeys * kDim);
  for (int64_t j = 0; j < kKeys; ++j) {
    // Ones, plus what its batch of 100 added.
    ASSERT_EQ((*moved)[j * kDim], 1.0f + static_cast<float>(j / 100 * 100)) << "key " << j * 3;
    ASSERT_EQ((*moved)[j * kDim + kDim - 1], 1.0f + static_cast<float>(j / 100 * 100));
  }
}

// A Bloom filter's counters move: a key one use short of admission before
// the move is admitted by its next use after it.
TEST_F(StoreMoveTest, ATablePartMovesWithItsBloomFilterCounters) {
  std::vector<CreateVariableRequest> parts = TableParts(1);
  parts.resize(1);  // no slot
  EmbeddingSpec* spec = parts[0].mutable_embedding();
  spec->clear_counter_filter();
  spec->mutable_bloom_filter()->set_filter_freq(3);
  spec->mutable_bloom_filter()->set_max_element_size(1000);
  spec->mutable_bloom_filter()->set_false_positive_probability(0.01);
  spec->mutable_bloom_filter()->set_counter_bits(8);
  VariableInfo info;
  ASSERT_TRUE(source_.Create(parts[0], &info).ok());
  ASSERT_TRUE(Lookup(&source_, {42, 42}).ok());  // one use short
  StartMoveInRequest in;
  in.set_move_id(14);
  in.set_source_incarnation(1);
  *in.add_parts() = parts[0];
  ASSERT_TRUE(target_.BeginMoveIn(in).ok());
  while (target_.MoveInStatus(14, absl::ZeroDuration()).phase() == MOVE_COPYING) {
    ASSERT_TRUE(PullOnce(14));
  }
  ASSERT_TRUE(source_.FreezeMove(14, 1).ok());
  while (PullOnce(14)) {
  }
  ASSERT_TRUE(target_.EndMoveIn(14, /*committed=*/true).ok());
  ASSERT_TRUE(source_.EndMoveOut(14, /*committed=*/true, 1).ok());
  auto row = Lookup(&target_, {42, 43});
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(*row, (std::vector<float>{1, 1, 0, 0}));
}

// A target without the memory for the rows refuses them naming the part;
// the move fails, the target gives back what it charged, and the part
// serves on its source, whole.
TEST_F(StoreMoveTest, ATargetWithoutMemoryForTheRowsLeavesTheTableOnItsSource) {
  VariableInfo info;
  for (const CreateVariableRequest& part : TableParts(1)) {
    ASSERT_TRUE(source_.Create(part, &info).ok());
  }
  std::vector<int64_t> keys;
  for (int64_t k = 0; k < 2000; ++k) keys.push_back(k);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Lookup(&source_, keys).ok());
  ASSERT_TRUE(Adagrad(&source_, keys, 1).ok());
  const Rows before = Export(&source_);
  VariableStoreOptions small = Options(3);
  small.memory_limit_bytes = 32 << 10;
  VariableStore tight(device_.get(), small);
  ASSERT_TRUE(tight.BeginMoveIn(TableMoveIn(15, 1)).ok());
  PullMoveRequest req;
  ASSERT_TRUE(tight.NextMovePull(15, &req));
  PullMoveResponse resp;
  ASSERT_TRUE(source_.PullMove(req, &resp).ok());
  absl::Status applied = tight.ApplyMovePull(15, resp);
  EXPECT_TRUE(absl::IsResourceExhausted(applied)) << applied;
  EXPECT_NE(applied.message().find("emb"), absl::string_view::npos) << applied;
  EXPECT_EQ(tight.MoveInStatus(15, absl::ZeroDuration()).phase(), MOVE_FAILED);
  ASSERT_TRUE(tight.EndMoveIn(15, /*committed=*/false).ok());
  EXPECT_EQ(tight.memory().used(), 0);
  EXPECT_EQ(tight.num_variables(), 0u);
  ASSERT_TRUE(source_.EndMoveOut(15, /*committed=*/false, -1).ok());
  EXPECT_EQ(Export(&source_), before);
  EXPECT_TRUE(Adagrad(&source_, {1}, 2).ok());
}

// A table's part with a backup evicts no rows for memory (LRU) while it
// has it: an eviction is not logged, so the backup would keep rows its
// primary dropped. Lookups short of memory fail instead, and the promoted
// backup holds exactly the primary's rows.
TEST_F(StoreMoveTest, ATableWithABackupEvictsNothingForMemory) {
  VariableStoreOptions tight = Options(5);
  tight.memory_limit_bytes = 64 << 10;
  VariableStore primary(device_.get(), tight);
  VariableStore backup(device_.get(), Options(3));
  std::vector<CreateVariableRequest> parts = TableParts(1);
  StartMoveInRequest follow;
  follow.set_move_id(7);
  follow.set_source_incarnation(5);
  follow.set_follow(true);
  VariableInfo info;
  for (CreateVariableRequest& part : parts) {
    part.mutable_embedding()->clear_counter_filter();
    part.mutable_embedding()->set_evict_lru_on_memory_limit(true);
    ASSERT_TRUE(primary.Create(part, &info).ok());
    *follow.add_parts() = part;
  }
  ASSERT_TRUE(backup.BeginMoveIn(follow).ok());
  auto pull = [&] {
    PullMoveRequest req;
    if (!backup.NextMovePull(7, &req)) return false;
    req.set_wait_ms(0);
    PullMoveResponse resp;
    absl::Status pulled = primary.PullMove(req, &resp);
    EXPECT_TRUE(pulled.ok()) << pulled;
    absl::Status applied = pulled.ok() ? backup.ApplyMovePull(7, resp) : pulled;
    EXPECT_TRUE(applied.ok()) << applied;
    return applied.ok();
  };
  // The copy first (while it is pinned, nothing is evicted anyway).
  for (int i = 0; i < 100 && backup.MoveInStatus(7, absl::ZeroDuration()).phase() !=
                                 MOVE_FORWARDING;
       ++i) {
    ASSERT_TRUE(pull());
  }
  ASSERT_EQ(backup.MoveInStatus(7, absl::ZeroDuration()).phase(), MOVE_FORWARDING);
  ASSERT_TRUE(pull());  // the primary hears the copy is done
  // New keys until the primary is out of memory (it would evict without
  // the backup).
  absl::Status looked = absl::OkStatus();
  for (int64_t batch = 0; batch < 1000 && looked.ok(); ++batch) {
    std::vector<int64_t> keys;
    for (int64_t k = 0; k < 100; ++k) keys.push_back(batch * 100 + k);
    looked = Lookup(&primary, keys).status();
    if (batch % 10 == 0) ASSERT_TRUE(pull());
  }
  EXPECT_TRUE(absl::IsResourceExhausted(looked)) << looked;
  for (int i = 0; i < 1000; ++i) {
    const MoveStatusResponse st = backup.MoveInStatus(7, absl::ZeroDuration());
    if (st.phase() == MOVE_FORWARDING && st.applied_seq() == st.logged_seq() && i > 0) break;
    ASSERT_TRUE(pull());
  }
  ASSERT_TRUE(backup.PromoteReplica(7, 2, 3).ok());
  const Rows want = Export(&primary);
  EXPECT_EQ(Export(&backup), want);
  // The follow ended: rows are evicted for memory again.
  ASSERT_TRUE(primary.EndMoveOut(7, /*committed=*/false, -1).ok());
  EXPECT_TRUE(Lookup(&primary, {1000000, 1000001}).ok());
}

// A table's part with two backups (follows) and a move at once (docs/
// replication.md): every write and every counting lookup, from several
// threads, is logged into each of the three logs in one order, so the
// backups and the move's target end with the source's rows, slot rows,
// frequencies and versions.
TEST_F(StoreMoveTest, ATableWithTwoBackupsAndAMoveLogsEveryLookupAndWriteIntoEach) {
  VariableStore backup1(device_.get(), Options(3));
  VariableStore backup2(device_.get(), Options(4));
  VariableInfo info;
  for (const CreateVariableRequest& part : TableParts(1)) {
    ASSERT_TRUE(source_.Create(part, &info).ok());
  }
  std::vector<int64_t> keys;
  for (int64_t k = 1; k <= 20; ++k) keys.push_back(k);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Lookup(&source_, keys).ok());
  auto catch_up = [&](VariableStore* target, uint64_t id) {
    for (int i = 0; i < 1000; ++i) {
      const MoveStatusResponse st = target->MoveInStatus(id, absl::ZeroDuration());
      if (st.phase() != MOVE_COPYING && st.applied_seq() == st.logged_seq() && i > 0) return;
      ASSERT_TRUE(PullInto(target, id));
    }
    FAIL() << "move " << id << " did not catch up";
  };
  StartMoveInRequest follow1 = TableMoveIn(7, 1), follow2 = TableMoveIn(8, 1);
  follow1.set_follow(true);
  follow2.set_follow(true);
  ASSERT_TRUE(backup1.BeginMoveIn(follow1).ok());
  ASSERT_TRUE(backup2.BeginMoveIn(follow2).ok());
  ASSERT_TRUE(target_.BeginMoveIn(TableMoveIn(9, 1)).ok());
  ASSERT_TRUE(PullInto(&backup1, 7));
  ASSERT_TRUE(AddToRows(&source_, {1, 2}, 1).ok());
  ASSERT_TRUE(Lookup(&source_, {500, 1}).ok());
  ASSERT_TRUE(PullInto(&target_, 9));
  ASSERT_TRUE(Adagrad(&source_, {3}, 2).ok());
  ASSERT_TRUE(PullInto(&backup2, 8));
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const int64_t key = 1 + (i * 7 + t) % 20;
        EXPECT_TRUE(Lookup(&source_, {key, 600 + t, 700 + i}).ok());  // counts, admits
        absl::Status added = AddToRows(&source_, {key}, 1 + i, 20 + t);
        EXPECT_TRUE(added.ok()) << added;
      }
    });
  }
  for (auto& w : workers) w.join();
  catch_up(&backup1, 7);
  catch_up(&backup2, 8);
  catch_up(&target_, 9);
  ASSERT_TRUE(source_.FreezeMove(9, 1).ok());
  const Rows at_freeze = Export(&source_);
  while (PullInto(&target_, 9)) {
  }
  ASSERT_EQ(target_.MoveInStatus(9, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target_.EndMoveIn(9, /*committed=*/true).ok());
  ASSERT_TRUE(backup1.PromoteReplica(7, 2, 3).ok());
  ASSERT_TRUE(backup2.PromoteReplica(8, 2, 4).ok());
  EXPECT_EQ(Export(&target_), at_freeze);
  EXPECT_EQ(Export(&backup1), at_freeze);
  EXPECT_EQ(Export(&backup2), at_freeze);
  ASSERT_TRUE(source_.EndMoveOut(9, /*committed=*/true, 1).ok());
}

// A table's writes by key (delete_keys, import, evict) are forwarded like
// its lookups and updates: logged in the one order, replayed by a backup
// that follows and by a move's target, which end with the source's rows
// (values, slot rows, counts, versions). Before, each ended the follow
// (its backup dropped and copied again) and gave the move up.
TEST_F(StoreMoveTest, ATablesDeletesImportsAndEvictionsReachItsBackupAndItsMove) {
  VariableStore backup(device_.get(), Options(3));
  VariableInfo info;
  std::vector<CreateVariableRequest> parts = TableParts(1);
  for (CreateVariableRequest& part : parts) {
    part.mutable_embedding()->clear_counter_filter();
    part.mutable_embedding()->set_steps_to_live(5);
  }
  for (const CreateVariableRequest& part : parts) ASSERT_TRUE(source_.Create(part, &info).ok());
  // Keys 1..10 updated at step 1, keys 1..3 again at step 9.
  std::vector<int64_t> keys;
  for (int64_t k = 1; k <= 10; ++k) keys.push_back(k);
  ASSERT_TRUE(AddToRows(&source_, keys, 1).ok());

  StartMoveInRequest follow;
  follow.set_move_id(7);
  follow.set_source_incarnation(1);
  follow.set_follow(true);
  StartMoveInRequest move = follow;
  move.set_move_id(9);
  move.set_follow(false);
  for (const CreateVariableRequest& part : parts) {
    *follow.add_parts() = part;
    *move.add_parts() = part;
  }
  ASSERT_TRUE(backup.BeginMoveIn(follow).ok());
  ASSERT_TRUE(target_.BeginMoveIn(move).ok());
  ASSERT_TRUE(PullInto(&backup, 7));  // pinned: what follows is logged
  ASSERT_TRUE(PullInto(&target_, 9));
  ASSERT_TRUE(AddToRows(&source_, {1, 2, 3}, 9).ok());

  DeleteEmbeddingKeysRequest del;
  del.set_name("emb");
  *del.mutable_keys() = Keys({4, 5, 77});  // 77 has no row
  del.mutable_request_id()->set_client_id(11);
  del.mutable_request_id()->set_seq(20);
  DeleteEmbeddingKeysResponse deleted;
  ASSERT_TRUE(source_.DeleteEmbeddingKeys(del, &deleted).ok());
  EXPECT_EQ(deleted.deleted(), 2);

  ImportEmbeddingRequest import;
  import.set_name("emb");
  import.add_slots("emb/Adagrad");
  *import.mutable_rows()->mutable_keys() = Keys({6, 500});
  TensorToProto(*Tensor::FromVector<float>(TensorShape{2, 2}, {-1, -2, 3.5f, 4.25f}),
                import.mutable_rows()->mutable_values());
  TensorToProto(*Tensor::FromVector<float>(TensorShape{2, 2}, {0.75f, 0.75f, 2, 2}),
                import.mutable_rows()->add_slot_values());
  TensorToProto(*Tensor::FromVector<int64_t>(TensorShape{2}, {8, 9}),
                import.mutable_rows()->mutable_freqs());
  TensorToProto(*Tensor::FromVector<int64_t>(TensorShape{2}, {12, 12}),
                import.mutable_rows()->mutable_versions());
  import.mutable_request_id()->set_client_id(11);
  import.mutable_request_id()->set_seq(21);
  ImportEmbeddingResponse imported;
  ASSERT_TRUE(source_.ImportEmbedding(import, &imported).ok());

  EvictEmbeddingRequest evict;  // rows last updated before step 5 go
  evict.set_name("emb");
  evict.set_global_step(10);
  evict.mutable_request_id()->set_client_id(11);
  evict.mutable_request_id()->set_seq(22);
  EvictEmbeddingResponse evicted;
  ASSERT_TRUE(source_.EvictEmbedding(evict, &evicted).ok());
  EXPECT_EQ(evicted.evicted(), 4);  // 7..10, last updated at step 1
  const Rows want = Export(&source_);
  EXPECT_EQ(want.size(), 5u);  // 1, 2, 3 (step 9), 6 and 500 (imported at step 12)
  EXPECT_EQ(source_.replication_stats().follows_out, 1) << "a table write ended the follow";

  for (int i = 0; i < 100 && PullInto(&backup, 7); ++i) {
    if (backup.MoveInStatus(7, absl::ZeroDuration()).applied_seq() ==
        backup.MoveInStatus(7, absl::ZeroDuration()).logged_seq()) {
      break;
    }
  }
  while (target_.MoveInStatus(9, absl::ZeroDuration()).phase() == MOVE_COPYING) {
    ASSERT_TRUE(PullInto(&target_, 9));
  }
  ASSERT_TRUE(PullInto(&target_, 9));
  ASSERT_TRUE(source_.FreezeMove(9, 1).ok());
  while (PullInto(&target_, 9)) {
  }
  ASSERT_EQ(target_.MoveInStatus(9, absl::ZeroDuration()).phase(), MOVE_READY);
  ASSERT_TRUE(target_.EndMoveIn(9, /*committed=*/true).ok());
  ASSERT_TRUE(backup.PromoteReplica(7, 2, 3).ok());
  EXPECT_EQ(Export(&target_), want);
  EXPECT_EQ(Export(&backup), want);
  // The promoted backup's window has the writes: a retried import (here
  // with other rows under the same request id) is not run again.
  ImportEmbeddingRequest retry = import;
  TensorToProto(*Tensor::FromVector<float>(TensorShape{2, 2}, {9, 9, 9, 9}),
                retry.mutable_rows()->mutable_values());
  ASSERT_TRUE(backup.ImportEmbedding(retry, &imported).ok());
  EXPECT_EQ(Export(&backup), want);
  ASSERT_TRUE(source_.EndMoveOut(9, /*committed=*/true, 1).ok());
}

}  // namespace
}  // namespace psd
