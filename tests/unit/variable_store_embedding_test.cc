// VariableStore with embedding tables' parts (store_embedding.cc): created by
// CreateVariable with a spec, served by key through Gather / Scatter /
// ApplySparse (the requests the data stream carries), refused for dense ops,
// exactly-once like every write, and saved by the shard's checkpointer in
// DeepRec's layout as of the fence and restored into another part count.
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "device/device.h"
#include "gtest/gtest.h"
#include "checkpoint/tensor_bundle.h"
#include "psd/embedding_keys.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/shard_checkpoint.h"
#include "shard/variable_store.h"
#include "store_test_util.h"

namespace psd {
namespace {

using store_test::Vec;

TensorProto Keys(const std::vector<int64_t>& keys) {
  return Vec<int64_t>({static_cast<int64_t>(keys.size())}, keys);
}

CreateVariableRequest TablePart(const std::string& name, int64_t dim, int part, int parts,
                                const std::string& slot_of = "", float initial = 0) {
  CreateVariableRequest req;
  req.set_name(name);
  req.set_dtype(DT_FLOAT);
  req.mutable_shape()->add_dims(dim);
  TensorProto value;
  TensorToProto(Tensor::Scalar<float>(initial), &value);
  *req.mutable_initializer()->mutable_constant()->mutable_value() = value;
  req.mutable_embedding()->set_embedding_dim(dim);
  req.mutable_embedding()->set_key_dtype(DT_INT64);
  req.mutable_embedding()->set_slot_of(slot_of);
  req.set_embedding_part_index(part);
  req.set_embedding_num_parts(parts);
  return req;
}

std::vector<float> Floats(const TensorProto& p) {
  auto t = TensorFromProto(p, "result");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? t->ToVector<float>() : std::vector<float>();
}

class StoreEmbeddingTest : public ::testing::Test {
 protected:
  StoreEmbeddingTest() : device_(NewCpuDevice()) {}
  void SetUp() override {
    store_ = std::make_unique<VariableStore>(device_.get(), VariableStoreOptions());
  }

  absl::StatusOr<std::vector<float>> Gather(const std::string& name,
                                            const std::vector<int64_t>& keys) {
    GatherRequest req;
    req.set_name(name);
    *req.mutable_indices() = Keys(keys);
    GatherResponse resp;
    PSD_RETURN_IF_ERROR(store_->Gather(req, &resp));
    return Floats(resp.value());
  }
  absl::Status ScatterAdd(const std::string& name, const std::vector<int64_t>& keys,
                          float value, uint64_t seq = 0) {
    ScatterRequest req;
    req.set_name(name);
    req.set_op(UPDATE_ADD);
    *req.mutable_indices() = Keys(keys);
    TensorToProto(Tensor::Scalar<float>(value), req.mutable_updates());
    if (seq > 0) {
      req.mutable_request_id()->set_client_id(77);
      req.mutable_request_id()->set_seq(seq);
    }
    ScatterResponse resp;
    return store_->Scatter(req, &resp);
  }
  int64_t Rows(const std::string& name) {
    for (const VariableInfo& info : store_->List(name)) {
      if (info.name() == name) return info.shape().dims(0);
    }
    return -1;
  }

  std::unique_ptr<Device> device_;
  std::unique_ptr<VariableStore> store_;
};

TEST_F(StoreEmbeddingTest, APartServesItsKeysAndRefusesOthersAndDenseOps) {
  VariableInfo info;
  ASSERT_TRUE(store_->Create(TablePart("t/part_0", 2, 0, 2), &info).ok());
  EXPECT_TRUE(info.has_embedding());
  EXPECT_TRUE(info.initialized());
  // Keys of part 0 of 2, and one of part 1.
  std::vector<int64_t> mine, theirs;
  for (int64_t k = 0; mine.size() < 3 || theirs.empty(); ++k) {
    (PartOfKey(k, 2) == 0 ? mine : theirs).push_back(k);
  }
  ASSERT_TRUE(ScatterAdd("t/part_0", mine, 1.5f).ok());
  auto rows = Gather("t/part_0", {mine[0], mine[2]});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, (std::vector<float>{1.5f, 1.5f, 1.5f, 1.5f}));
  EXPECT_EQ(Rows("t/part_0"), 3);
  absl::Status foreign = ScatterAdd("t/part_0", {mine[0], theirs[0]}, 1);
  EXPECT_EQ(foreign.code(), absl::StatusCode::kInvalidArgument) << foreign;
  EXPECT_NE(foreign.message().find("t/part_0"), std::string::npos) << foreign;
  EXPECT_EQ(*Gather("t/part_0", {mine[0]}), (std::vector<float>{1.5f, 1.5f}))
      << "a refused op changes nothing";
  ReadRequest read;
  read.set_name("t/part_0");
  ReadResponse read_resp;
  absl::Status dense = store_->Read(read, &read_resp);
  EXPECT_EQ(dense.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dense.message().find("embedding table"), std::string::npos) << dense;
  // Tables are always initialized, and named like any variable.
  ReportUninitializedRequest report;
  report.add_names("t/part_0");
  ReportUninitializedResponse uninit;
  ASSERT_TRUE(store_->ReportUninitialized(report, &uninit).ok());
  EXPECT_EQ(uninit.names_size(), 0);
  EXPECT_EQ(store_->Create(TablePart("t/part_0", 2, 0, 2), &info).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(StoreEmbeddingTest, ARetriedScatterIsAppliedOnce) {
  VariableInfo info;
  ASSERT_TRUE(store_->Create(TablePart("once", 1, 0, 1), &info).ok());
  ASSERT_TRUE(ScatterAdd("once", {4}, 1, /*seq=*/9).ok());
  ASSERT_TRUE(ScatterAdd("once", {4}, 1, /*seq=*/9).ok());
  EXPECT_EQ(*Gather("once", {4}), (std::vector<float>{1}));
}

TEST_F(StoreEmbeddingTest, SlotsApplyWithTheirTableAndGoWithIt) {
  VariableInfo info;
  ASSERT_TRUE(store_->Create(TablePart("w", 2, 0, 1, "", 1.0f), &info).ok());
  ASSERT_TRUE(store_->Create(TablePart("w/Adagrad", 2, 0, 1, "w", 0.1f), &info).ok());
  // A slot of a missing table is refused by name.
  absl::Status orphan = store_->Create(TablePart("x/Adagrad", 2, 0, 1, "x"), &info);
  EXPECT_EQ(orphan.code(), absl::StatusCode::kNotFound) << orphan;
  ApplySparseRequest apply;
  apply.set_name("w");
  apply.add_slots("w/Adagrad");
  apply.mutable_optimizer()->mutable_adagrad()->set_learning_rate(1.0);
  *apply.mutable_indices() = Keys({8});
  *apply.mutable_values() = Vec<float>({1, 2}, {1, 1});
  apply.set_global_step(3);
  ApplySparseResponse resp;
  ASSERT_TRUE(store_->ApplySparse(apply, &resp).ok());
  auto accum = Gather("w/Adagrad", {8, 9});
  ASSERT_TRUE(accum.ok()) << accum.status();
  EXPECT_FLOAT_EQ((*accum)[0], 1.1f);
  EXPECT_FLOAT_EQ((*accum)[2], 0.1f) << "a slot row not applied reads as its initial row";
  EXPECT_EQ(Rows("w"), 1) << "reading a slot makes no row";
  // A table's slots go with it.
  DeleteVariableRequest del;
  del.set_name("w");
  ASSERT_TRUE(store_->Delete(del).ok());
  EXPECT_EQ(Gather("w/Adagrad", {8}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreEmbeddingTest, ASaveHoldsTheRowsAsOfTheFenceAndRestoresIntoAnotherPartCount) {
  VariableInfo info;
  ASSERT_TRUE(store_->Create(TablePart("e", 2, 0, 1), &info).ok());
  ASSERT_TRUE(store_->Create(TablePart("e/Adagrad", 2, 0, 1, "e", 0.1f), &info).ok());
  std::vector<int64_t> keys;
  for (int64_t k = -20; k < 20; ++k) keys.push_back(k * 1000003);
  ASSERT_TRUE(ScatterAdd("e", keys, 2).ok());

  char dir[] = "/tmp/psd_store_emb_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string prefix = absl::StrCat(dir, "/ckpt");
  ShardCheckpointer checkpointer(store_.get());
  FenceRequest fence;
  fence.set_fence_id(5);
  FenceResponse fenced;
  ASSERT_TRUE(checkpointer.Fence(fence, &fenced).ok());
  UnfenceRequest unfence;
  unfence.set_fence_id(5);
  UnfenceResponse unfenced;
  ASSERT_TRUE(checkpointer.Unfence(unfence, &unfenced).ok());
  // Written after the cut: not in the checkpoint.
  ASSERT_TRUE(ScatterAdd("e", {keys[0], 424242}, 5).ok());
  SaveShardRequest save;
  save.set_fence_id(5);
  save.set_prefix(prefix);
  save.set_num_shards(1);
  for (const char* name : {"e", "e/Adagrad"}) {
    SavePart* p = save.add_parts();
    p->set_name(name);
    p->set_full_name(name);
  }
  SaveShardResponse saved;
  ASSERT_TRUE(checkpointer.SaveShard(save, &saved).ok());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& e : saved.entries()) {
    std::vector<int64_t> dims;
    for (const auto& d : e.entry().shape().dim()) dims.push_back(d.size());
    shapes[e.key()] = dims;
  }
  // DeepRec's layout, holding the 40 rows of the cut (not the row made
  // after it); the slot holds the table's keys.
  EXPECT_EQ(shapes["e-keys"], (std::vector<int64_t>{40}));
  EXPECT_EQ(shapes["e-values"], (std::vector<int64_t>{40, 2}));
  EXPECT_EQ(shapes["e-freqs"], (std::vector<int64_t>{40}));
  EXPECT_EQ(shapes["e-versions"], (std::vector<int64_t>{40}));
  EXPECT_EQ(shapes["e/Adagrad-values"], (std::vector<int64_t>{40, 2}));
  EXPECT_EQ(shapes.size(), 8u);

  // Restored into a store whose table has three parts: each part takes the
  // saved rows whose keys hash to it, read in chunks of 7 bytes (rows of 8
  // bytes straddle them).
  checkpoint::BundleShardIndex index;
  for (const auto& e : saved.entries()) index.entries[e.key()] = e.entry();
  ASSERT_TRUE(checkpoint::WriteMergedIndex(nullptr, prefix, 1, {index}).ok());
  VariableStore restored(device_.get(), VariableStoreOptions());
  ShardCheckpointer::Options small_chunks;
  small_chunks.default_chunk_bytes = 7;
  ShardCheckpointer reader(&restored, small_chunks);
  PrepareRestoreRequest prepare;
  prepare.set_restore_id(9);
  prepare.set_prefix(prefix);
  for (int k = 0; k < 3; ++k) {
    RestorePart* p = prepare.add_parts();
    p->set_name(absl::StrCat("e/part_", k));
    p->set_checkpoint_name("e");
    p->set_dtype(DT_FLOAT);
    p->add_shape(2);
    p->mutable_initializer()->mutable_zeros();
    p->mutable_embedding()->set_embedding_dim(2);
    p->add_embedding_sources("e");
    p->set_embedding_part_index(k);
    p->set_embedding_num_parts(3);
  }
  PrepareRestoreResponse prepared;
  ASSERT_TRUE(reader.PrepareRestore(prepare, &prepared).ok());
  FinishRestoreRequest finish;
  finish.set_restore_id(9);
  finish.set_commit(true);
  FinishRestoreResponse finished;
  ASSERT_TRUE(reader.FinishRestore(finish, &finished).ok());
  int64_t rows = 0;
  for (const VariableInfo& info : restored.List("e/part_")) rows += info.shape().dims(0);
  EXPECT_EQ(rows, 40);
  for (int64_t key : keys) {
    GatherRequest req;
    req.set_name(absl::StrCat("e/part_", PartOfKey(key, 3)));
    *req.mutable_indices() = Keys({key});
    req.set_inference(true);
    GatherResponse resp;
    ASSERT_TRUE(restored.Gather(req, &resp).ok()) << key;
    EXPECT_EQ(Floats(resp.value()), (std::vector<float>{2, 2})) << key;
  }
  std::system(absl::StrCat("rm -rf '", dir, "'").c_str());
}

}  // namespace
}  // namespace psd
