// The client's merge of duplicate indices (client/src/sparse_merge.h):
// what it merges and what it leaves alone, and that a merged request gives
// the shard's CPU kernels the same result as the unmerged one (bit for bit
// where the contract promises it).
#include "sparse_merge.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "device/device.h"
#include "gtest/gtest.h"
#include "psd/dtype.h"
#include "psd/float16.h"

namespace psd {
namespace client {
namespace internal {
namespace {

template <typename T>
Tensor Vec(std::vector<T> v, std::vector<int64_t> dims = {}) {
  if (dims.empty()) dims = {static_cast<int64_t>(v.size())};
  return *Tensor::FromVector<T>(TensorShape(dims), v);
}

TEST(SparseMergeTest, UniqueIndicesAreNotMerged) {
  EXPECT_FALSE(MergeDuplicateRows(Vec<int64_t>({4, 2, 9, 0}), Vec<float>({1, 2, 3, 4}),
                                  MergeKind::kSum)
                   .has_value());
  EXPECT_FALSE(MergeDuplicateRows(Vec<int32_t>({4, 2, 9, 0}), Vec<float>({1, 2, 3, 4}),
                                  MergeKind::kLastWins)
                   .has_value());
}

TEST(SparseMergeTest, SumKeepsFirstOccurrenceOrder) {
  // Rows of 2: index 3 three times, 1 twice, 0 once.
  auto merged = MergeDuplicateRows(
      Vec<int64_t>({3, 1, 3, 0, 1, 3}),
      Vec<float>({1, 2, 10, 20, 100, 200, 7, 8, 1000, 2000, 5, 6}, {6, 2}), MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->indices, Vec<int64_t>({3, 1, 0}));
  EXPECT_EQ(merged->rows, Vec<float>({106, 208, 1010, 2020, 7, 8}, {3, 2}));
}

TEST(SparseMergeTest, Int32IndicesStayInt32) {
  auto merged =
      MergeDuplicateRows(Vec<int32_t>({5, 5}), Vec<double>({1.5, 2.25}), MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->indices, Vec<int32_t>({5}));
  EXPECT_EQ(merged->rows, Vec<double>({3.75}));
}

TEST(SparseMergeTest, SumAddsInArrivalOrder) {
  // (1e8 + 1) - 1e8 is 0 in float; 1e8 + (1 - 1e8) is 0 too, but
  // (1e8 - 1e8) + 1 is 1: the order is the positions' order.
  auto merged = MergeDuplicateRows(Vec<int64_t>({0, 0, 0}), Vec<float>({1e8f, 1.0f, -1e8f}),
                                   MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->rows.data<float>()[0], (1e8f + 1.0f) - 1e8f);
  merged = MergeDuplicateRows(Vec<int64_t>({0, 0, 0}), Vec<float>({1e8f, -1e8f, 1.0f}),
                              MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->rows.data<float>()[0], 1.0f);
}

TEST(SparseMergeTest, LastWinsTakesTheLastRowOfEachIndex) {
  auto merged =
      MergeDuplicateRows(Vec<int64_t>({2, 7, 2, 2, 7, 1}),
                         Vec<int32_t>({1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6}, {6, 2}),
                         MergeKind::kLastWins);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->indices, Vec<int64_t>({2, 7, 1}));
  EXPECT_EQ(merged->rows, Vec<int32_t>({4, 4, 5, 5, 6, 6}, {3, 2}));
}

TEST(SparseMergeTest, LastWinsMergesBools) {
  auto merged = MergeDuplicateRows(Vec<int64_t>({0, 0}), Vec<bool>({true, false}),
                                   MergeKind::kLastWins);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->rows, Vec<bool>({false}));
}

TEST(SparseMergeTest, IntegersWrapLikeTheShard) {
  auto merged =
      MergeDuplicateRows(Vec<int64_t>({1, 1}), Vec<int8_t>({127, 1}), MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->rows.data<int8_t>()[0], -128);
  merged = MergeDuplicateRows(Vec<int64_t>({1, 1}), Vec<uint8_t>({250, 10}), MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->rows.data<uint8_t>()[0], 4);
}

TEST(SparseMergeTest, SixteenBitFloatsSumInFloatAndRoundOnce) {
  // 1024 + 0.5 + 0.5: each add rounded to float16 stays 1024 (ties to
  // even); summed in float it is 1025, which float16 holds exactly.
  auto merged = MergeDuplicateRows(Vec<int64_t>({0, 0, 0}),
                                   Vec<half>({half(1024.0f), half(0.5f), half(0.5f)}),
                                   MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(static_cast<float>(merged->rows.data<half>()[0]), 1025.0f);
  // bfloat16 has 8 significant bits: 256 + 1 + 1 in float is 258.
  merged = MergeDuplicateRows(
      Vec<int64_t>({0, 3, 0, 0}),
      Vec<bfloat16>({bfloat16(256.0f), bfloat16(-3.0f), bfloat16(1.0f), bfloat16(1.0f)}),
      MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(static_cast<float>(merged->rows.data<bfloat16>()[0]), 258.0f);
  // A row that occurs once is copied bit for bit (a NaN keeps its payload).
  half nan;
  nan.bits = 0x7e01;
  merged = MergeDuplicateRows(Vec<int64_t>({0, 1, 0}), Vec<half>({half(1.0f), nan, half(2.0f)}),
                              MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->rows.data<half>()[1].bits, 0x7e01);
}

TEST(SparseMergeTest, IndicesOfAnyRankComeOutFlat) {
  // indices [2, 2], rows [2, 2, 3].
  auto merged = MergeDuplicateRows(
      Vec<int64_t>({0, 1, 1, 0}, {2, 2}),
      Vec<int64_t>({1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4}, {2, 2, 3}), MergeKind::kSum);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->indices, Vec<int64_t>({0, 1}));
  EXPECT_EQ(merged->rows, Vec<int64_t>({5, 5, 5, 5, 5, 5}, {2, 3}));
}

TEST(SparseMergeTest, InvalidInputIsLeftAlone) {
  const Tensor dups = Vec<int64_t>({1, 1});
  const Tensor rows = Vec<float>({1, 2, 3, 4}, {2, 2});
  // An index out of range, or negative.
  EXPECT_FALSE(MergeDuplicateRows(Vec<int64_t>({1, 1, 5}), Vec<float>({1, 2, 3}),
                                  MergeKind::kSum, /*limit=*/5)
                   .has_value());
  EXPECT_FALSE(
      MergeDuplicateRows(Vec<int64_t>({1, 1, -1}), Vec<float>({1, 2, 3}), MergeKind::kSum)
          .has_value());
  EXPECT_FALSE(MergeDuplicateRows(Vec<int32_t>({1, -7, 1}), Vec<float>({1, 2, 3}),
                                  MergeKind::kLastWins)
                   .has_value());
  // Rows that do not line up with the indices.
  EXPECT_FALSE(
      MergeDuplicateRows(dups, Vec<float>({1, 2, 3}), MergeKind::kSum).has_value());
  EXPECT_FALSE(MergeDuplicateRows(dups, Vec<float>({1, 2, 3, 4}, {1, 4}), MergeKind::kSum)
                   .has_value());
  // A scalar update (one value for every index) keeps its meaning only
  // unmerged.
  EXPECT_FALSE(MergeDuplicateRows(dups, Tensor::Scalar<float>(1), MergeKind::kSum).has_value());
  // Index and value dtypes the shard refuses.
  EXPECT_FALSE(MergeDuplicateRows(Vec<float>({1, 1}), rows, MergeKind::kSum).has_value());
  EXPECT_FALSE(
      MergeDuplicateRows(dups, Vec<bool>({true, true}), MergeKind::kSum).has_value());
  EXPECT_FALSE(MergeDuplicateRows(dups, *Tensor::FromStrings(TensorShape{2}, {"a", "b"}),
                                  MergeKind::kLastWins)
                   .has_value());
  // In range, well formed: merged.
  EXPECT_TRUE(MergeDuplicateRows(dups, rows, MergeKind::kSum, /*limit=*/2).has_value());
}

// ---- Against the shard's CPU kernels. ----

class SparseMergeKernelTest : public ::testing::Test {
 protected:
  std::unique_ptr<DeviceBuffer> Buffer(const Tensor& t) {
    auto buffer = device_->Allocate(t.bytes().size());
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_TRUE(device_->CopyFromHost(t.bytes().data(), t.bytes().size(), buffer->get(), 0).ok());
    return *std::move(buffer);
  }
  std::string Bytes(const DeviceBuffer& b) {
    std::string out(b.size(), '\0');
    EXPECT_TRUE(device_->CopyToHost(b, 0, b.size(), out.data()).ok());
    return out;
  }

  // The variable after a scatter of (indices, rows) by the CPU device.
  std::string Scatter(const Tensor& var, UpdateKind op, const Tensor& indices,
                      const Tensor& rows) {
    auto buffer = Buffer(var);
    const std::vector<int64_t> idx = indices.ToVector<int64_t>();
    EXPECT_TRUE(device_
                    ->ApplyScatter(var.dtype(), op, buffer.get(), var.shape().row_elements(), idx,
                                   rows.bytes().data(), false)
                    .ok());
    return Bytes(*buffer);
  }

  // The variable and its accumulator after a sparse Adagrad step.
  std::string Adagrad(const Tensor& var, const Tensor& indices, const Tensor& rows) {
    auto buffer = Buffer(var);
    Tensor accumulator(var.dtype(), var.shape());
    DispatchFixedSize(
        var.dtype(),
        [&](auto t) {
          using T = decltype(t);
          for (int64_t i = 0; i < accumulator.num_elements(); ++i) {
            accumulator.data<T>()[i] = T(0.1f);
          }
        },
        [] {});
    auto slot = Buffer(accumulator);
    OptimizerParams params;
    params.kind = OptimizerKind::kAdagrad;
    params.learning_rate = 0.05;
    DeviceBuffer* slots[] = {slot.get()};
    const std::vector<int64_t> idx = indices.ToVector<int64_t>();
    EXPECT_TRUE(device_
                    ->ApplyOptimizerSparse(params, var.dtype(), buffer.get(), slots,
                                           var.shape().row_elements(), idx, rows.bytes().data())
                    .ok());
    return Bytes(*buffer) + Bytes(*slot);
  }

  // n random indices in [0, rows) with many repeats, and random rows.
  template <typename T>
  void Random(int64_t n, int64_t rows, int64_t cols, bool integral, Tensor* indices,
              Tensor* values) {
    std::vector<int64_t> idx(n);
    std::uniform_int_distribution<int64_t> pick(0, rows - 1);
    for (auto& i : idx) i = pick(rng_);
    *indices = Vec<int64_t>(idx);
    *values = Tensor(DataTypeOf<T>::value, TensorShape{n, cols});
    std::uniform_real_distribution<float> real(-4, 4);
    for (int64_t i = 0; i < n * cols; ++i) {
      const float v = integral ? static_cast<float>(static_cast<int>(real(rng_) * 8)) : real(rng_);
      values->data<T>()[i] = static_cast<T>(v);
    }
  }

  std::unique_ptr<Device> device_ = NewCpuDevice();
  std::mt19937_64 rng_{7};
};

TEST_F(SparseMergeKernelTest, ScatterAddOfIntegersIsExact) {
  Tensor indices, rows;
  Random<int32_t>(300, 17, 5, true, &indices, &rows);
  const Tensor var = Vec<int32_t>(std::vector<int32_t>(17 * 5, 3), {17, 5});
  for (UpdateKind op : {UpdateKind::kAdd, UpdateKind::kSub}) {
    auto merged = MergeDuplicateRows(indices, rows, MergeKind::kSum, 17);
    ASSERT_TRUE(merged.has_value());
    EXPECT_LE(merged->indices.num_elements(), 17);
    EXPECT_EQ(Scatter(var, op, merged->indices, merged->rows), Scatter(var, op, indices, rows));
  }
}

TEST_F(SparseMergeKernelTest, ScatterAddOfExactFloatsIsExact) {
  // Small integers in float: every order of adds is exact.
  Tensor indices, rows;
  Random<float>(500, 23, 8, true, &indices, &rows);
  const Tensor var(DT_FLOAT, TensorShape{23, 8});
  auto merged = MergeDuplicateRows(indices, rows, MergeKind::kSum, 23);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(Scatter(var, UpdateKind::kAdd, merged->indices, merged->rows),
            Scatter(var, UpdateKind::kAdd, indices, rows));
}

TEST_F(SparseMergeKernelTest, ScatterUpdateKeepsTheShardsLastWins) {
  Tensor indices, rows;
  Random<double>(200, 11, 3, false, &indices, &rows);
  const Tensor var(DT_DOUBLE, TensorShape{11, 3});
  auto merged = MergeDuplicateRows(indices, rows, MergeKind::kLastWins, 11);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(Scatter(var, UpdateKind::kAssign, merged->indices, merged->rows),
            Scatter(var, UpdateKind::kAssign, indices, rows));
}

TEST_F(SparseMergeKernelTest, ApplySparseIsBitIdenticalForFloat32AndFloat64) {
  // Non-integer gradients: the merged sum must be formed in the shard's own
  // order for the step to match bit for bit.
  for (int trial = 0; trial < 4; ++trial) {
    Tensor indices, rows;
    Random<float>(400, 29, 16, false, &indices, &rows);
    Tensor var(DT_FLOAT, TensorShape{29, 16});
    for (int64_t i = 0; i < var.num_elements(); ++i) var.data<float>()[i] = 0.01f * i;
    auto merged = MergeDuplicateRows(indices, rows, MergeKind::kSum, 29);
    ASSERT_TRUE(merged.has_value());
    EXPECT_EQ(Adagrad(var, merged->indices, merged->rows), Adagrad(var, indices, rows));

    Random<double>(400, 29, 16, false, &indices, &rows);
    Tensor var64(DT_DOUBLE, TensorShape{29, 16});
    merged = MergeDuplicateRows(indices, rows, MergeKind::kSum, 29);
    ASSERT_TRUE(merged.has_value());
    EXPECT_EQ(Adagrad(var64, merged->indices, merged->rows), Adagrad(var64, indices, rows));
  }
}

TEST_F(SparseMergeKernelTest, ApplySparseOfExactHalvesIsExact) {
  // float16 sums that fit float16 exactly: the one extra rounding is exact.
  Tensor indices, rows;
  Random<half>(100, 13, 4, true, &indices, &rows);
  const Tensor var(DT_HALF, TensorShape{13, 4});
  auto merged = MergeDuplicateRows(indices, rows, MergeKind::kSum, 13);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(Adagrad(var, merged->indices, merged->rows), Adagrad(var, indices, rows));
}

}  // namespace
}  // namespace internal
}  // namespace client
}  // namespace psd
