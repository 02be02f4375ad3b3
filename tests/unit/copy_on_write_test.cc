// Chunked copy-on-write of pinned values (shard/value_pin.h): every write
// path of the VariableStore leaves a checkpoint snapshot exactly as it was at
// the fence, copies only the chunks it touches, and accounts them.
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <random>
#include <thread>
#include <type_traits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/wire.h"
#include "shard/value_pin.h"
#include "shard/variable_store.h"
#include "store_test_util.h"

namespace psd {
namespace {

using store_test::Vec;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TensorProto Strings(std::vector<int64_t> dims, const std::vector<std::string>& values) {
  TensorProto p;
  TensorToProto(*Tensor::FromStrings(TensorShape(std::move(dims)), values), &p);
  return p;
}

std::vector<float> Iota(int64_t n, float start = 0) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i);
  return v;
}

TEST(TouchedChunksTest, AllTouchesEveryChunkAndRowsTheirSpans) {
  EXPECT_THAT(TouchedChunks(WriteExtent::All(), 10, 4), ElementsAre(0, 1, 2));
  EXPECT_TRUE(TouchedChunks(WriteExtent::All(), 0, 4).empty());
  // Rows of 3 elements in chunks of 4: row 1 is elements 3-5 (chunks 0-1),
  // row 5 is 15-17 (chunks 3-4); duplicates and order do not matter.
  const std::vector<int64_t> rows = {5, 1, 5};
  EXPECT_THAT(TouchedChunks(WriteExtent::Rows(rows, 3), 18, 4), ElementsAre(0, 1, 3, 4));
  // Rows larger than a chunk touch every chunk they span.
  const std::vector<int64_t> big = {1};
  EXPECT_THAT(TouchedChunks(WriteExtent::Rows(big, 10), 30, 4), ElementsAre(2, 3, 4));
}

TEST(ChunkElementsTest, ChunkBytesOverElementSize) {
  EXPECT_EQ(ChunkElements(DT_FLOAT, 1 << 20), 1 << 18);
  EXPECT_EQ(ChunkElements(DT_DOUBLE, 4), 1);  // at least one element
  EXPECT_EQ(ChunkElements(DT_STRING, 64), 64 / static_cast<int64_t>(sizeof(std::string)));
}

TEST(ValuePinTest, ReadsCopiedChunksFromCopiesAndTheRestLive) {
  auto device = NewCpuDevice();
  MemoryAccountant memory(0);
  auto buffer = std::shared_ptr<DeviceBuffer>(device->Allocate(10 * sizeof(int32_t)).value());
  std::vector<int32_t> values = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_TRUE(device->CopyFromHost(values.data(), 40, buffer.get(), 0).ok());
  // Chunks of 4 elements (16 bytes): 0-3, 4-7, 8-9.
  ValuePin pin(device.get(), DT_INT32, 10, 16, buffer, buffer.get(), nullptr);
  const std::vector<int64_t> middle = {1};
  ASSERT_TRUE(pin.CopyChunks(middle, &memory, "v").ok());
  EXPECT_EQ(pin.copied_bytes(), 16);
  EXPECT_EQ(memory.used(), 16);
  const std::vector<int32_t> changed = {40, 50, 60, 70};
  ASSERT_TRUE(device->CopyFromHost(changed.data(), 16, buffer.get(), 16).ok());
  // A read across all three chunks at an unaligned offset.
  std::vector<int32_t> out(8);
  ASSERT_TRUE(pin.Read(4, 32, out.data()).ok());
  EXPECT_THAT(out, ElementsAre(1, 2, 3, 4, 5, 6, 7, 8));
  // Copying a chunk twice keeps the first copy.
  ASSERT_TRUE(pin.CopyChunks(middle, &memory, "v").ok());
  ASSERT_TRUE(pin.Read(16, 4, out.data()).ok());
  EXPECT_EQ(out[0], 4);
  EXPECT_EQ(pin.copied_chunks(), 1);
  EXPECT_FALSE(pin.Read(36, 8, out.data()).ok());  // past the end
}

std::vector<int32_t> Int32s(absl::string_view bytes) {
  std::vector<int32_t> out(bytes.size() / sizeof(int32_t));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(int32_t));
  return out;
}

// 1 for true, 0 for false, -1 for an error.
int Flag(const absl::StatusOr<bool>& result) {
  if (!result.ok()) return -1;
  return *result ? 1 : 0;
}

std::string Joined(const std::vector<LentBytes>& pieces) {
  std::string out;
  for (const LentBytes& piece : pieces) out.append(piece.bytes.data(), piece.bytes.size());
  return out;
}

TEST(ValuePinTest, LentLiveChunksAreNeverCopiedIntoAndCopiesLendThemselves) {
  auto device = NewCpuDevice();
  MemoryAccountant memory(0);
  auto buffer = std::shared_ptr<DeviceBuffer>(device->Allocate(10 * sizeof(int32_t)).value());
  std::vector<int32_t> values = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_TRUE(device->CopyFromHost(values.data(), 40, buffer.get(), 0).ok());
  // Chunks of 4 elements (16 bytes): 0-3, 4-7, 8-9.
  auto pin =
      std::make_shared<ValuePin>(device.get(), DT_INT32, 10, 16, buffer, buffer.get(), nullptr);
  // Chunk 2 is copied before anything is lent: it is lent from its copy.
  const std::vector<int64_t> last = {2};
  ASSERT_EQ(Flag(pin->CopyChunks(last, &memory, "v")), 1);
  const std::vector<int32_t> changed = {80, 90};
  ASSERT_TRUE(device->CopyFromHost(changed.data(), 8, buffer.get(), 32).ok());

  // Bytes 4..40: the live chunks 0 and 1 (no copy: the buffer itself), then
  // chunk 2's copy.
  auto lent = pin->Lend(4, 36);
  ASSERT_TRUE(lent.ok()) << lent.status();
  ASSERT_EQ(lent->size(), 3u);
  EXPECT_EQ((*lent)[0].bytes.data(), static_cast<const char*>(buffer->data()) + 4);
  EXPECT_EQ((*lent)[1].bytes.data(), static_cast<const char*>(buffer->data()) + 16);
  EXPECT_THAT(Int32s(Joined(*lent)), ElementsAre(1, 2, 3, 4, 5, 6, 7, 8, 9));
  EXPECT_EQ(pin->lent_chunks(), 2);
  EXPECT_EQ(pin->copied_chunks(), 1);

  // A writer cannot copy (and then change) a lent live chunk: refused
  // whole, nothing copied.
  const std::vector<int64_t> first_two = {0, 1};
  EXPECT_EQ(Flag(pin->CopyChunks(first_two, &memory, "v")), 0);
  EXPECT_EQ(pin->copied_chunks(), 1);
  // Released (gRPC let go of the slices): copied as before.
  lent->clear();
  EXPECT_EQ(pin->lent_chunks(), 0);
  EXPECT_EQ(Flag(pin->CopyChunks(first_two, &memory, "v")), 1);
  EXPECT_EQ(pin->copied_chunks(), 3);
  // Everything lent now comes from copies: nothing of the live value is held.
  auto again = pin->Lend(0, 40);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(pin->lent_chunks(), 0);
  EXPECT_THAT(Int32s(Joined(*again)), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9));
  EXPECT_FALSE(pin->Lend(36, 8).ok());  // past the end

  // A pin that no shared_ptr owns lends nothing (its holds could not keep it).
  ValuePin unshared(device.get(), DT_INT32, 10, 16, buffer, buffer.get(), nullptr);
  auto none = unshared.Lend(0, 40);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

class CopyOnWriteTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kFence = 7;

  static VariableStoreOptions Options(int64_t chunk_bytes, int64_t limit) {
    VariableStoreOptions options;
    options.memory_limit_bytes = limit;
    options.cow_chunk_bytes = chunk_bytes;
    options.default_chunk_bytes = 24;
    return options;
  }
  // Chunks of 16 bytes: 4 floats, 2 doubles.
  explicit CopyOnWriteTest(int64_t chunk_bytes = 16, int64_t limit = 1 << 20)
      : device_(NewCpuDevice()), store_(device_.get(), Options(chunk_bytes, limit)) {}

  void CreateFrom(const std::string& name, const TensorProto& value) {
    ASSERT_TRUE(store_test::CreateWithValue(&store_, name, value).ok()) << name;
  }

  // Takes a checkpoint snapshot of every variable and lifts the fence, as
  // the coordinator does before the shards stream their data files.
  void Snapshot() {
    ASSERT_TRUE(store_.Fence(kFence, absl::Seconds(30), &snapshot_).ok());
    WriteGate::FenceStats stats;
    ASSERT_TRUE(store_.Unfence(kFence, &stats).ok());
  }

  const VariableStore::PinnedValue& Pinned(const std::string& name) {
    for (const auto& v : snapshot_) {
      if (v.name == name) return v;
    }
    ADD_FAILURE() << name << " not in the snapshot";
    return snapshot_.front();
  }

  template <typename T>
  std::vector<T> PinnedValues(const std::string& name) {
    const auto& v = Pinned(name);
    std::vector<T> out(v.pin->byte_size() / sizeof(T));
    absl::Status s = v.pin->Read(0, v.pin->byte_size(), out.data());
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  template <typename T>
  std::vector<T> LiveValues(const std::string& name) {
    ReadRequest req;
    req.set_name(name);
    ReadResponse resp;
    absl::Status s = store_.Read(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    auto t = TensorFromProto(resp.value(), name);
    EXPECT_TRUE(t.ok()) << t.status();
    if constexpr (std::is_same_v<T, std::string>) {
      return t->strings();
    } else {
      return t->ToVector<T>();
    }
  }

  absl::Status Assign(const std::string& name, UpdateOp op, const TensorProto& value,
                      bool validate_shape = true) {
    return store_test::AssignValue(&store_, name, op, value, validate_shape);
  }

  absl::Status Scatter(const std::string& name, UpdateOp op, std::vector<int64_t> indices,
                       const TensorProto& updates) {
    ScatterRequest req;
    req.set_name(name);
    req.set_op(op);
    const int64_t n = static_cast<int64_t>(indices.size());
    *req.mutable_indices() = Vec<int64_t>({n}, std::move(indices));
    *req.mutable_updates() = updates;
    ScatterResponse resp;
    return store_.Scatter(req, &resp);
  }

  std::unique_ptr<Device> device_;
  VariableStore store_;
  std::vector<VariableStore::PinnedValue> snapshot_;
};

TEST_F(CopyOnWriteTest, DenseAssignAddAndSubLeaveTheSnapshot) {
  CreateFrom("v", Vec<float>({10}, Iota(10)));
  Snapshot();
  ASSERT_TRUE(Assign("v", UPDATE_ADD, Vec<float>({10}, std::vector<float>(10, 100))).ok());
  ASSERT_TRUE(Assign("v", UPDATE_SUB, Vec<float>({10}, std::vector<float>(10, 1))).ok());
  // An assign of the same shape writes in place too.
  ASSERT_TRUE(Assign("v", UPDATE_ASSIGN, Vec<float>({10}, Iota(10, 50))).ok());
  EXPECT_EQ(PinnedValues<float>("v"), Iota(10));
  EXPECT_EQ(LiveValues<float>("v"), Iota(10, 50));
  // Every chunk was copied once: 3 chunks, 40 bytes.
  EXPECT_EQ(Pinned("v").pin->copied_chunks(), 3);
  EXPECT_EQ(store_.DivergedBytes(snapshot_), 40);
}

TEST_F(CopyOnWriteTest, ScatterCopiesOnlyTheChunksOfItsRows) {
  // 8 rows of 2 floats: 2 rows per 16-byte chunk.
  CreateFrom("e", Vec<float>({8, 2}, Iota(16)));
  Snapshot();
  const int64_t used = store_.memory().used();
  ASSERT_TRUE(Scatter("e", UPDATE_ADD, {5, 0, 5}, Vec<float>({3, 2}, {1, 1, 2, 2, 3, 3})).ok());
  EXPECT_EQ(PinnedValues<float>("e"), Iota(16));
  auto live = LiveValues<float>("e");
  EXPECT_EQ(live[0], 2.0f);
  EXPECT_EQ(live[10], 14.0f);  // row 5 got 1 + 3
  EXPECT_EQ(Pinned("e").pin->copied_chunks(), 2);  // chunks 0 and 2
  EXPECT_EQ(store_.memory().used() - used, 32);
  EXPECT_EQ(store_.DivergedBytes(snapshot_), 32);
  // Dropping the snapshot gives the copies back.
  snapshot_.clear();
  EXPECT_EQ(store_.memory().used(), used);
}

TEST_F(CopyOnWriteTest, StringScatterLeavesTheSnapshot) {
  std::vector<std::string> words;
  for (int i = 0; i < 9; ++i) words.push_back("word" + std::to_string(i));
  CreateFrom("w", Strings({9}, words));
  Snapshot();
  ASSERT_TRUE(Scatter("w", UPDATE_ASSIGN, {8, 1}, Strings({2}, {"a much longer string", ""})).ok());
  EXPECT_EQ(Pinned("w").pin->Strings(), words);
  auto live = LiveValues<std::string>("w");
  EXPECT_EQ(live[8], "a much longer string");
  EXPECT_EQ(live[1], "");
  EXPECT_EQ(live[2], "word2");
  // Two chunks, each its string objects plus characters.
  EXPECT_EQ(Pinned("w").pin->copied_chunks(), 2);
  EXPECT_GT(store_.DivergedBytes(snapshot_), 0);
}

TEST_F(CopyOnWriteTest, OptimizerAppliesLeaveVariableAndSlotsInTheSnapshot) {
  CreateFrom("e", Vec<float>({8, 2}, Iota(16, 1)));
  CreateFrom("e/Adagrad", Vec<float>({8, 2}, std::vector<float>(16, 0.1f)));
  CreateFrom("d", Vec<double>({3}, {1, 2, 3}));
  Snapshot();
  ApplySparseRequest sparse;
  sparse.set_name("e");
  sparse.add_slots("e/Adagrad");
  sparse.mutable_optimizer()->mutable_adagrad()->set_learning_rate(1);
  *sparse.mutable_indices() = Vec<int64_t>({1}, {7});
  *sparse.mutable_values() = Vec<float>({1, 2}, {3, 4});
  ApplySparseResponse sparse_resp;
  ASSERT_TRUE(store_.ApplySparse(sparse, &sparse_resp).ok());
  ApplyDenseRequest dense;
  dense.set_name("d");
  dense.mutable_optimizer()->mutable_gradient_descent()->set_learning_rate(1);
  *dense.mutable_gradient() = Vec<double>({3}, {1, 1, 1});
  ApplyDenseResponse dense_resp;
  ASSERT_TRUE(store_.ApplyDense(dense, &dense_resp).ok());

  EXPECT_EQ(PinnedValues<float>("e"), Iota(16, 1));
  EXPECT_EQ(PinnedValues<float>("e/Adagrad"), std::vector<float>(16, 0.1f));
  EXPECT_THAT(PinnedValues<double>("d"), ElementsAre(1, 2, 3));
  EXPECT_NE(LiveValues<float>("e")[15], 16.0f);
  EXPECT_NE(LiveValues<float>("e/Adagrad")[15], 0.1f);
  EXPECT_THAT(LiveValues<double>("d"), ElementsAre(0, 1, 2));
  // Row 7 is in the last chunk of the variable and of its slot.
  EXPECT_EQ(Pinned("e").pin->copied_chunks(), 1);
  EXPECT_EQ(Pinned("e/Adagrad").pin->copied_chunks(), 1);
}

TEST_F(CopyOnWriteTest, CountUpToLeavesTheSnapshot) {
  CreateFrom("step", Vec<int64_t>({}, {41}));
  Snapshot();
  CountUpToRequest req;
  req.set_name("step");
  req.set_limit(100);
  CountUpToResponse resp;
  ASSERT_TRUE(store_.CountUpTo(req, &resp).ok());
  EXPECT_THAT(PinnedValues<int64_t>("step"), ElementsAre(41));
  EXPECT_THAT(LiveValues<int64_t>("step"), ElementsAre(42));
}

TEST_F(CopyOnWriteTest, StreamedAssignAddCommitLeavesTheSnapshot) {
  CreateFrom("v", Vec<float>({6}, Iota(6)));
  Snapshot();
  AssignStreamHeader h;
  h.set_name("v");
  h.set_op(UPDATE_ADD);
  h.set_dtype(DT_FLOAT);
  h.mutable_shape()->add_dims(6);
  h.set_total_bytes(24);
  h.set_validate_shape(true);
  auto sink = store_.BeginAssignStream(h);
  ASSERT_TRUE(sink.ok()) << sink.status();
  const std::vector<float> delta(6, 10);
  ASSERT_TRUE((*sink)->Append(absl::string_view(reinterpret_cast<const char*>(delta.data()), 24))
                  .ok());
  AssignResponse resp;
  ASSERT_TRUE((*sink)->Commit(&resp).ok());
  EXPECT_EQ(PinnedValues<float>("v"), Iota(6));
  EXPECT_EQ(LiveValues<float>("v"), Iota(6, 10));
}

TEST_F(CopyOnWriteTest, ReplacedRestoredAndDeletedValuesStayPinnedWhole) {
  CreateFrom("a", Vec<float>({4}, Iota(4)));
  CreateFrom("b", Vec<float>({4}, Iota(4, 10)));
  CreateFrom("c", Vec<float>({4}, Iota(4, 20)));
  Snapshot();
  // A new element count means new storage: the old one stays with the pin.
  ASSERT_TRUE(Assign("a", UPDATE_ASSIGN, Vec<float>({2}, {7, 8}), /*validate_shape=*/false).ok());
  RestorePart part;
  part.set_name("b");
  part.set_checkpoint_name("b");
  part.set_dtype(DT_FLOAT);
  part.add_shape(4);
  ASSERT_TRUE(store_.StageRestore(1, part, *Tensor::FromVector<float>(TensorShape({4}),
                                                                      {5, 5, 5, 5}))
                  .ok());
  int64_t applied = 0;
  ASSERT_TRUE(store_.FinishRestore(1, /*commit=*/true, &applied).ok());
  DeleteVariableRequest del;
  del.set_name("c");
  ASSERT_TRUE(store_.Delete(del).ok());

  EXPECT_EQ(PinnedValues<float>("a"), Iota(4));
  EXPECT_EQ(PinnedValues<float>("b"), Iota(4, 10));
  EXPECT_EQ(PinnedValues<float>("c"), Iota(4, 20));
  EXPECT_THAT(LiveValues<float>("b"), ElementsAre(5, 5, 5, 5));
  EXPECT_EQ(store_.DivergedBytes(snapshot_), 3 * 16);
}

TEST_F(CopyOnWriteTest, StreamedReadSeesTheValueItStartedFrom) {
  CreateFrom("v", Vec<float>({12}, Iota(12)));
  ReadStreamRequest req;
  req.set_name("v");
  auto source = store_.BeginReadStream(req);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(Scatter("v", UPDATE_ASSIGN, {11}, Vec<float>({1}, {-1})).ok());
  std::string bytes;
  TensorChunk chunk;
  while (true) {
    auto more = (*source)->Next(&chunk);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    bytes += chunk.content();
  }
  ASSERT_EQ(bytes.size(), 48u);
  std::vector<float> got(12);
  std::memcpy(got.data(), bytes.data(), 48);
  EXPECT_EQ(got, Iota(12));
  EXPECT_EQ(LiveValues<float>("v")[11], -1.0f);
}

// A streamed read sends the pinned bytes themselves (no copy); a write that
// would change bytes still lent moves the variable to new storage, so the
// bytes being sent never change, and a write elsewhere copies only its
// chunks as before.
TEST_F(CopyOnWriteTest, LentBytesOfAStreamedReadNeverChange) {
  // 12 floats: copy-on-write chunks of 16 bytes (0-3, 4-7, 8-11), read
  // chunks of 24 bytes (elements 0-5, 6-11).
  CreateFrom("v", Vec<float>({12}, Iota(12)));
  ReadStreamRequest req;
  req.set_name("v");
  auto source = store_.BeginReadStream(req);
  ASSERT_TRUE(source.ok()) << source.status();
  std::vector<LentBytes> first;
  int64_t offset = -1;
  auto lent = (*source)->LendNext(&first, &offset);
  ASSERT_TRUE(lent.ok()) << lent.status();
  ASSERT_TRUE(*lent);
  EXPECT_EQ(offset, 0);
  ASSERT_EQ(first.size(), 2u);  // elements 0-3 and 4-5
  const int64_t used_before = store_.memory().used();

  // Element 9 (chunk 2, not lent): copied into the pin, written in place.
  ASSERT_TRUE(Scatter("v", UPDATE_ASSIGN, {9}, Vec<float>({1}, {-9})).ok());
  EXPECT_EQ(store_.memory().used(), used_before + 16);
  // Element 1 (chunk 0, lent): the variable moves to new storage.
  ASSERT_TRUE(Scatter("v", UPDATE_ASSIGN, {1}, Vec<float>({1}, {-1})).ok());
  EXPECT_EQ(store_.memory().used(), used_before + 16 + 48);
  // A dense write to the new storage copies nothing more.
  ASSERT_TRUE(Assign("v", UPDATE_ADD, Vec<float>({12}, std::vector<float>(12, 100))).ok());

  std::vector<float> got(12);
  const std::string sent_first = Joined(first);
  ASSERT_EQ(sent_first.size(), 24u);
  std::memcpy(got.data(), sent_first.data(), 24);
  std::vector<LentBytes> second;
  ASSERT_EQ(Flag((*source)->LendNext(&second, &offset)), 1);
  EXPECT_EQ(offset, 24);
  const std::string sent_second = Joined(second);
  ASSERT_EQ(sent_second.size(), 24u);
  std::memcpy(got.data() + 6, sent_second.data(), 24);
  EXPECT_EQ(got, Iota(12)) << "a write changed bytes of the streamed read";
  EXPECT_EQ(Flag((*source)->LendNext(&second, &offset)), -1);  // all sent

  std::vector<float> want = Iota(12, 100);
  want[1] = 99;
  want[9] = 91;
  EXPECT_EQ(LiveValues<float>("v"), want);
  // The old storage and the pin's copy go when the read and its slices do.
  first.clear();
  second.clear();
  source->reset();
  EXPECT_EQ(store_.memory().used(), used_before);
}

TEST_F(CopyOnWriteTest, RandomWritesNeverReachTheSnapshot) {
  CreateFrom("e", Vec<float>({64, 3}, Iota(192)));
  CreateFrom("e/Adagrad", Vec<float>({64, 3}, std::vector<float>(192, 1)));
  Snapshot();
  std::mt19937 rng(11);
  std::uniform_int_distribution<int64_t> row(0, 63);
  for (int step = 0; step < 200; ++step) {
    std::vector<int64_t> rows = {row(rng), row(rng)};
    if (step % 2 == 0) {
      ASSERT_TRUE(Scatter("e", UPDATE_ADD, rows, Vec<float>({2, 3}, {1, 1, 1, 1, 1, 1})).ok());
    } else {
      ApplySparseRequest sparse;
      sparse.set_name("e");
      sparse.add_slots("e/Adagrad");
      sparse.mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.5);
      *sparse.mutable_indices() = Vec<int64_t>({2}, rows);
      *sparse.mutable_values() = Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6});
      ApplySparseResponse resp;
      ASSERT_TRUE(store_.ApplySparse(sparse, &resp).ok());
    }
    if (step == 100) {
      // A second snapshot mid-way sees the values of that moment.
      std::vector<VariableStore::PinnedValue> second;
      ASSERT_TRUE(store_.Fence(kFence + 1, absl::Seconds(30), &second).ok());
      WriteGate::FenceStats stats;
      ASSERT_TRUE(store_.Unfence(kFence + 1, &stats).ok());
      const std::vector<float> now = LiveValues<float>("e");
      ASSERT_TRUE(Scatter("e", UPDATE_ASSIGN, {0, 63}, Vec<float>({2, 3}, {0, 0, 0, 0, 0, 0}))
                      .ok());
      std::vector<float> pinned(192);
      for (const auto& v : second) {
        if (v.name == "e") ASSERT_TRUE(v.pin->Read(0, 192 * 4, pinned.data()).ok());
      }
      EXPECT_EQ(pinned, now);
    }
  }
  EXPECT_EQ(PinnedValues<float>("e"), Iota(192));
  EXPECT_EQ(PinnedValues<float>("e/Adagrad"), std::vector<float>(192, 1));
}

TEST_F(CopyOnWriteTest, SnapshotReadsRacingWritesSeeOnlyPinnedBytes) {
  CreateFrom("e", Vec<float>({256, 2}, Iota(512)));
  Snapshot();
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    std::mt19937 rng(3);
    std::uniform_int_distribution<int64_t> row(0, 255);
    while (!stop.load()) {
      ASSERT_TRUE(
          Scatter("e", UPDATE_ADD, {row(rng), row(rng)}, Vec<float>({2, 2}, {1, 1, 1, 1})).ok());
    }
  });
  // Unaligned reads across chunk boundaries while chunks are being copied.
  const auto& pin = *Pinned("e").pin;
  std::vector<float> got(512);
  for (int round = 0; round < 300; ++round) {
    const int64_t first = round % 7;
    ASSERT_TRUE(pin.Read(first * 4, (512 - first) * 4, got.data()).ok());
    for (int64_t i = 0; i < 512 - first; ++i) {
      ASSERT_EQ(got[i], static_cast<float>(first + i)) << "round " << round << " element " << i;
    }
  }
  stop.store(true);
  writer.join();
}

class CopyOnWriteLimitTest : public CopyOnWriteTest {
 protected:
  // Room for the variable (64 bytes) and one 16-byte chunk copy.
  CopyOnWriteLimitTest() : CopyOnWriteTest(16, 64 + 16) {}
};

TEST_F(CopyOnWriteLimitTest, CopiesOverTheMemoryLimitFailTheWriteAndChangeNothing) {
  CreateFrom("v", Vec<float>({16}, Iota(16)));
  Snapshot();
  ASSERT_TRUE(Scatter("v", UPDATE_ASSIGN, {0}, Vec<float>({1}, {-1})).ok());
  absl::Status s = Assign("v", UPDATE_ADD, Vec<float>({16}, std::vector<float>(16, 1)));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("'v'"));
  std::vector<float> want = Iota(16);
  want[0] = -1;
  EXPECT_EQ(LiveValues<float>("v"), want);
  EXPECT_EQ(PinnedValues<float>("v"), Iota(16));
  // Without the snapshot the same write needs no copy.
  snapshot_.clear();
  EXPECT_TRUE(Assign("v", UPDATE_ADD, Vec<float>({16}, std::vector<float>(16, 1))).ok());
}

// Without room to move the variable (which a write to a lent chunk does), a
// streamed read copies its chunks as before, and a write during it needs
// only the chunks it touches.
TEST_F(CopyOnWriteLimitTest, AReadWithoutRoomToMoveTheValueCopiesInsteadOfLending) {
  CreateFrom("v", Vec<float>({16}, Iota(16)));
  ReadStreamRequest req;
  req.set_name("v");
  req.set_chunk_bytes(32);
  auto source = store_.BeginReadStream(req);
  ASSERT_TRUE(source.ok()) << source.status();
  std::vector<LentBytes> pieces;
  int64_t offset = -1;
  ASSERT_EQ(Flag((*source)->LendNext(&pieces, &offset)), 0);
  EXPECT_TRUE(pieces.empty());
  std::string sent(32, '\0');
  auto at = (*source)->ReadNext(sent.data());
  ASSERT_TRUE(at.ok()) << at.status();
  EXPECT_EQ(*at, 0);
  ASSERT_TRUE(Scatter("v", UPDATE_ASSIGN, {1}, Vec<float>({1}, {-1})).ok());
  std::vector<float> first(8);
  std::memcpy(first.data(), sent.data(), 32);
  EXPECT_EQ(first, Iota(8));
  std::string rest(32, '\0');
  ASSERT_TRUE((*source)->ReadNext(rest.data()).ok());
  std::vector<float> second(8);
  std::memcpy(second.data(), rest.data(), 32);
  EXPECT_EQ(second, Iota(8, 8));
}

class CopyOnWriteBigTest : public CopyOnWriteTest {
 protected:
  // The shard's default chunk size.
  CopyOnWriteBigTest() : CopyOnWriteTest(VariableStoreOptions().cow_chunk_bytes, 64 << 20) {}
};

TEST_F(CopyOnWriteBigTest, ThreeRowScatterIntoABigPinnedVariableCopiesAboutOneChunk) {
  // 16 MiB: 16384 rows of 256 floats (1 KiB a row, 1024 rows a chunk).
  CreateVariableRequest req;
  req.set_name("emb");
  req.set_dtype(DT_FLOAT);
  req.mutable_shape()->add_dims(16384);
  req.mutable_shape()->add_dims(256);
  req.mutable_initializer()->mutable_zeros();
  req.set_initialize(true);
  VariableInfo info;
  ASSERT_TRUE(store_.Create(req, &info).ok());
  Snapshot();
  const int64_t chunk = VariableStoreOptions().cow_chunk_bytes;
  ASSERT_TRUE(Scatter("emb", UPDATE_ADD, {3, 4, 5},
                      Vec<float>({3, 256}, std::vector<float>(3 * 256, 1)))
                  .ok());
  EXPECT_EQ(store_.DivergedBytes(snapshot_), chunk);
  // Rows far apart: one chunk each.
  ASSERT_TRUE(Scatter("emb", UPDATE_ADD, {2000, 9000, 16383},
                      Vec<float>({3, 256}, std::vector<float>(3 * 256, 1)))
                  .ok());
  EXPECT_EQ(store_.DivergedBytes(snapshot_), 4 * chunk);
  std::vector<float> row(256);
  ASSERT_TRUE(Pinned("emb").pin->Read(16383 * 1024, 1024, row.data()).ok());
  EXPECT_EQ(row, std::vector<float>(256, 0));
}

// The same on every device: Device::CopyRange and a pinned snapshot under
// scatters, sparse applies and dense updates (the GPU case skips without a
// GPU unless PSD_REQUIRE_GPU=1).
class CopyOnWriteDeviceTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Device>> device = NewDevice(GetParam());
    if (!device.ok()) {
      const char* require = std::getenv("PSD_REQUIRE_GPU");
      const bool required = require != nullptr && std::string(require) == "1";
      if (std::string(GetParam()).rfind("gpu", 0) == 0 && !required &&
          (device.status().code() == absl::StatusCode::kUnimplemented ||
           device.status().code() == absl::StatusCode::kUnavailable)) {
        GTEST_SKIP() << device.status().message();
      }
      FAIL() << device.status();
    }
    device_ = *std::move(device);
  }
  std::unique_ptr<Device> device_;
};

TEST_P(CopyOnWriteDeviceTest, CopyRangeCopiesBetweenOffsetsAndChecksBounds) {
  auto src = device_->Allocate(16).value();
  auto dst = device_->Allocate(8).value();
  const std::vector<uint8_t> bytes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const std::vector<uint8_t> zeros(8, 0);
  ASSERT_TRUE(device_->CopyFromHost(bytes.data(), 16, src.get(), 0).ok());
  ASSERT_TRUE(device_->CopyFromHost(zeros.data(), 8, dst.get(), 0).ok());
  ASSERT_TRUE(device_->CopyRange(*src, 5, dst.get(), 2, 4).ok());
  std::vector<uint8_t> out(8);
  ASSERT_TRUE(device_->CopyToHost(*dst, 0, 8, out.data()).ok());
  EXPECT_THAT(out, ElementsAre(0, 0, 5, 6, 7, 8, 0, 0));
  EXPECT_FALSE(device_->CopyRange(*src, 14, dst.get(), 0, 4).ok());
  EXPECT_FALSE(device_->CopyRange(*src, 0, dst.get(), 6, 4).ok());
}

TEST_P(CopyOnWriteDeviceTest, WritesNeverReachThePinnedSnapshot) {
  VariableStoreOptions options;
  options.cow_chunk_bytes = 64;  // 16 floats: rows of 4 span a quarter chunk
  VariableStore store(device_.get(), options);
  std::vector<float> initial(512);
  for (size_t i = 0; i < initial.size(); ++i) initial[i] = static_cast<float>(i);
  for (const char* name : {"e", "e/Momentum"}) {
    CreateVariableRequest req;
    req.set_name(name);
    req.set_dtype(DT_FLOAT);
    *req.mutable_shape() = Vec<float>({128, 4}, initial).shape();
    *req.mutable_initial_value() = Vec<float>({128, 4}, initial);
    req.set_initialize(true);
    VariableInfo info;
    ASSERT_TRUE(store.Create(req, &info).ok());
  }
  std::vector<VariableStore::PinnedValue> snapshot;
  ASSERT_TRUE(store.Fence(1, absl::Seconds(30), &snapshot).ok());
  WriteGate::FenceStats stats;
  ASSERT_TRUE(store.Unfence(1, &stats).ok());
  std::mt19937 rng(5);
  std::uniform_int_distribution<int64_t> row(0, 127);
  for (int step = 0; step < 60; ++step) {
    const std::vector<int64_t> rows = {row(rng), row(rng), row(rng)};
    ScatterRequest scatter;
    scatter.set_name("e");
    scatter.set_op(UPDATE_ADD);
    *scatter.mutable_indices() = Vec<int64_t>({3}, rows);
    *scatter.mutable_updates() = Vec<float>({3, 4}, std::vector<float>(12, 1));
    ScatterResponse scatter_resp;
    ASSERT_TRUE(store.Scatter(scatter, &scatter_resp).ok());
    ApplySparseRequest sparse;
    sparse.set_name("e");
    sparse.add_slots("e/Momentum");
    sparse.mutable_optimizer()->mutable_momentum()->set_learning_rate(0.1);
    sparse.mutable_optimizer()->mutable_momentum()->set_momentum(0.9);
    *sparse.mutable_indices() = Vec<int64_t>({3}, rows);
    *sparse.mutable_values() = Vec<float>({3, 4}, std::vector<float>(12, 2));
    ApplySparseResponse sparse_resp;
    ASSERT_TRUE(store.ApplySparse(sparse, &sparse_resp).ok());
  }
  // Most chunks are copied by now; a dense add copies the rest.
  AssignRequest add;
  add.set_name("e");
  add.set_op(UPDATE_ADD);
  *add.mutable_value() = Vec<float>({128, 4}, std::vector<float>(512, 3));
  add.set_validate_shape(true);
  AssignResponse add_resp;
  ASSERT_TRUE(store.Assign(add, &add_resp).ok());
  for (const auto& v : snapshot) {
    std::vector<float> pinned(512);
    ASSERT_TRUE(v.pin->Read(0, 2048, pinned.data()).ok());
    EXPECT_EQ(pinned, initial) << v.name;
  }
  EXPECT_EQ(store.DivergedBytes(snapshot), 2 * 2048);
}

INSTANTIATE_TEST_SUITE_P(Devices, CopyOnWriteDeviceTest, ::testing::Values("cpu:0", "gpu:0"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param).substr(0, 3);
                         });

}  // namespace
}  // namespace psd
