// The CPU device's buffers and kernels, for every fixed-size dtype.
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "device/device.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/dtype.h"
#include "psd/float16.h"

namespace psd {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Test values go in and come out as doubles; every value used is exact in
// every dtype (including int8 and bfloat16's 8-bit significand).
template <typename T>
T Make(double v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return T(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    return v != 0;
  } else {
    return static_cast<T>(v);
  }
}

template <typename T>
double ToDouble(T v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return static_cast<float>(v);
  } else {
    return static_cast<double>(v);
  }
}

// Host bytes of `values` as T.
template <typename T>
std::string HostBytes(const std::vector<double>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    const T v = Make<T>(values[i]);
    std::memcpy(&bytes[i * sizeof(T)], &v, sizeof(T));
  }
  return bytes;
}

template <typename T>
std::vector<double> FromHostBytes(const std::string& bytes) {
  std::vector<double> out(bytes.size() / sizeof(T));
  for (size_t i = 0; i < out.size(); ++i) {
    T v;
    std::memcpy(&v, &bytes[i * sizeof(T)], sizeof(T));
    out[i] = ToDouble(v);
  }
  return out;
}

// What `values` read back as after a round trip through T.
template <typename T>
std::vector<double> AsType(const std::vector<double>& values) {
  std::vector<double> out;
  for (double v : values) out.push_back(ToDouble(Make<T>(v)));
  return out;
}

// Fixture shared by the typed and the dtype-specific tests.
class DeviceTestBase {
 protected:
  template <typename T>
  std::unique_ptr<DeviceBuffer> BufferWith(const std::vector<double>& values) {
    auto buffer = device_->Allocate(values.size() * sizeof(T));
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    const std::string bytes = HostBytes<T>(values);
    EXPECT_TRUE(device_->CopyFromHost(bytes.data(), bytes.size(), buffer->get(), 0).ok());
    return std::move(buffer).value();
  }

  template <typename T>
  std::vector<double> Contents(const DeviceBuffer& buffer) {
    std::string bytes(buffer.size(), '\0');
    EXPECT_TRUE(device_->CopyToHost(buffer, 0, bytes.size(), bytes.data()).ok());
    return FromHostBytes<T>(bytes);
  }

  std::unique_ptr<Device> device_ = NewCpuDevice();
};

template <typename T>
class DeviceKernelsTest : public DeviceTestBase, public ::testing::Test {
 protected:
  static constexpr DataType kDtype = DataTypeOf<T>::value;

  // ApplyDense on a buffer holding `initial`; returns the contents after.
  std::vector<double> Dense(UpdateKind op, const std::vector<double>& initial,
                            const std::vector<double>& src, bool scalar) {
    auto buffer = BufferWith<T>(initial);
    const std::string bytes = HostBytes<T>(src);
    EXPECT_TRUE(device_
                    ->ApplyDense(kDtype, op, buffer.get(), bytes.data(),
                                 static_cast<int64_t>(initial.size()), scalar)
                    .ok());
    return Contents<T>(*buffer);
  }

  std::vector<double> Scatter(UpdateKind op, const std::vector<double>& initial,
                              int64_t row_elements, const std::vector<int64_t>& indices,
                              const std::vector<double>& updates, bool scalar) {
    auto buffer = BufferWith<T>(initial);
    const std::string bytes = HostBytes<T>(updates);
    absl::Status s = device_->ApplyScatter(kDtype, op, buffer.get(), row_elements, indices,
                                           bytes.data(), scalar);
    EXPECT_TRUE(s.ok()) << s;
    return Contents<T>(*buffer);
  }
};

class DtypeNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return DataTypeName(DataTypeOf<T>::value);
  }
};

using FixedSizeTypes = ::testing::Types<float, double, half, bfloat16, int8_t, int16_t, int32_t,
                                        int64_t, uint8_t, bool>;
TYPED_TEST_SUITE(DeviceKernelsTest, FixedSizeTypes, DtypeNames);

// add/sub: every dtype but bool (see CpuDeviceTest.BoolArithmeticIsRejected).
template <typename T>
class ArithmeticKernelsTest : public DeviceKernelsTest<T> {};
using NumericTypes =
    ::testing::Types<float, double, half, bfloat16, int8_t, int16_t, int32_t, int64_t, uint8_t>;
TYPED_TEST_SUITE(ArithmeticKernelsTest, NumericTypes, DtypeNames);

// A [4, 3] variable holding 0..11 (0/1 for bool).
const std::vector<double> kMatrix = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};

TYPED_TEST(DeviceKernelsTest, CopyRoundTripsAllBytes) {
  auto buffer = this->template BufferWith<TypeParam>(kMatrix);
  EXPECT_EQ(buffer->size(), kMatrix.size() * sizeof(TypeParam));
  EXPECT_EQ(this->template Contents<TypeParam>(*buffer), AsType<TypeParam>(kMatrix));
}

TYPED_TEST(DeviceKernelsTest, DenseAssignCopiesEveryElement) {
  EXPECT_EQ(this->Dense(UpdateKind::kAssign, {1, 2, 3, 4}, {7, 0, 5, 9}, false),
            AsType<TypeParam>({7, 0, 5, 9}));
}

TYPED_TEST(DeviceKernelsTest, DenseAssignBroadcastsScalar) {
  EXPECT_EQ(this->Dense(UpdateKind::kAssign, {1, 0, 3, 4}, {5}, true),
            AsType<TypeParam>({5, 5, 5, 5}));
}

TYPED_TEST(DeviceKernelsTest, DenseAssignOfLongUnalignedSource) {
  constexpr int kN = 1003;  // the vectorized loop body and its remainder
  std::vector<double> src(kN);
  for (int i = 0; i < kN; ++i) src[i] = (i * 7) % 50;
  auto buffer = this->template BufferWith<TypeParam>(std::vector<double>(kN, 1));
  const std::string bytes = " " + HostBytes<TypeParam>(src);  // misaligned by one byte
  ASSERT_TRUE(this->device_
                  ->ApplyDense(TestFixture::kDtype, UpdateKind::kAssign, buffer.get(),
                               bytes.data() + 1, kN, false)
                  .ok());
  EXPECT_EQ(this->template Contents<TypeParam>(*buffer), AsType<TypeParam>(src));
}

TYPED_TEST(DeviceKernelsTest, ScatterUpdateLastDuplicateWins) {
  // Rows 2, 0, 2 of a [4, 3] variable.
  EXPECT_EQ(
      this->Scatter(UpdateKind::kAssign, kMatrix, 3, {2, 0, 2}, {1, 1, 1, 0, 0, 0, 9, 0, 7}, false),
      AsType<TypeParam>({0, 0, 0, 3, 4, 5, 9, 0, 7, 9, 10, 11}));
}

TYPED_TEST(DeviceKernelsTest, ScatterScalarUpdateSetsEveryAddressedElement) {
  EXPECT_EQ(this->Scatter(UpdateKind::kAssign, kMatrix, 3, {1, 3}, {7}, true),
            AsType<TypeParam>({0, 1, 2, 7, 7, 7, 6, 7, 8, 7, 7, 7}));
}

TYPED_TEST(DeviceKernelsTest, ScatterUpdateOnRankOneVariable) {
  EXPECT_EQ(this->Scatter(UpdateKind::kAssign, {1, 1, 1, 1}, 1, {3, 0}, {0, 5}, false),
            AsType<TypeParam>({5, 1, 1, 0}));
}

TYPED_TEST(DeviceKernelsTest, ScatterWithNoIndicesChangesNothing) {
  EXPECT_EQ(this->Scatter(UpdateKind::kAssign, kMatrix, 3, {}, {}, false),
            AsType<TypeParam>(kMatrix));
}

TYPED_TEST(DeviceKernelsTest, GatherCopiesRowsInIndexOrder) {
  auto buffer = this->template BufferWith<TypeParam>(kMatrix);
  const std::vector<int64_t> indices = {3, 0, 3};
  std::string out(indices.size() * 3 * sizeof(TypeParam), '\0');
  ASSERT_TRUE(this->device_->Gather(TestFixture::kDtype, *buffer, 3, indices, out.data()).ok());
  EXPECT_EQ(FromHostBytes<TypeParam>(out), AsType<TypeParam>({9, 10, 11, 0, 1, 2, 9, 10, 11}));
}

TYPED_TEST(DeviceKernelsTest, ZeroElementUpdatesAreNoOps) {
  auto buffer = this->device_->Allocate(0);
  ASSERT_TRUE(buffer.ok());
  EXPECT_TRUE(
      this->device_
          ->ApplyDense(TestFixture::kDtype, UpdateKind::kAssign, buffer->get(), nullptr, 0, false)
          .ok());
  EXPECT_TRUE(
      this->device_->Gather(TestFixture::kDtype, **buffer, 0, std::vector<int64_t>{0, 5}, nullptr)
          .ok());
}

TYPED_TEST(ArithmeticKernelsTest, DenseAddAndSub) {
  EXPECT_THAT(this->Dense(UpdateKind::kAdd, {1, 2, 3, 4}, {4, 3, 2, 1}, false),
              ElementsAre(5, 5, 5, 5));
  EXPECT_THAT(this->Dense(UpdateKind::kSub, {10, 20, 30, 40}, {1, 2, 3, 4}, false),
              ElementsAre(9, 18, 27, 36));
}

TYPED_TEST(ArithmeticKernelsTest, DenseAddAndSubBroadcastScalar) {
  EXPECT_THAT(this->Dense(UpdateKind::kAdd, {1, 2, 3, 4}, {5}, true), ElementsAre(6, 7, 8, 9));
  EXPECT_THAT(this->Dense(UpdateKind::kSub, {10, 20, 30, 40}, {5}, true),
              ElementsAre(5, 15, 25, 35));
}

TYPED_TEST(ArithmeticKernelsTest, DenseAddOfLongUnalignedSource) {
  constexpr int kN = 1003;
  std::vector<double> initial(kN), src(kN);
  std::vector<double> expected(kN);
  for (int i = 0; i < kN; ++i) {
    initial[i] = i % 50;
    src[i] = (i * 7) % 50;
    expected[i] = initial[i] + src[i];  // at most 98: exact in every dtype
  }
  auto buffer = this->template BufferWith<TypeParam>(initial);
  const std::string bytes = " " + HostBytes<TypeParam>(src);
  ASSERT_TRUE(this->device_
                  ->ApplyDense(TestFixture::kDtype, UpdateKind::kAdd, buffer.get(),
                               bytes.data() + 1, kN, false)
                  .ok());
  EXPECT_EQ(this->template Contents<TypeParam>(*buffer), expected);
}

TYPED_TEST(ArithmeticKernelsTest, ScatterAddAndSubAccumulateDuplicates) {
  const std::vector<double> updates = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_THAT(this->Scatter(UpdateKind::kAdd, kMatrix, 3, {2, 0, 2}, updates, false),
              ElementsAre(4, 6, 8, 3, 4, 5, 14, 17, 20, 9, 10, 11));
  std::vector<double> big;
  for (double v : kMatrix) big.push_back(v + 20);
  EXPECT_THAT(this->Scatter(UpdateKind::kSub, big, 3, {2, 0, 2}, updates, false),
              ElementsAre(16, 16, 16, 23, 24, 25, 18, 17, 16, 29, 30, 31));
}

TYPED_TEST(ArithmeticKernelsTest, ScatterScalarAddAccumulatesDuplicates) {
  EXPECT_THAT(this->Scatter(UpdateKind::kAdd, kMatrix, 3, {1, 3, 1}, {2}, true),
              ElementsAre(0, 1, 2, 7, 8, 9, 6, 7, 8, 11, 12, 13));
  EXPECT_THAT(this->Scatter(UpdateKind::kSub, kMatrix, 3, {3}, {2}, true),
              ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 7, 8, 9));
}

TYPED_TEST(ArithmeticKernelsTest, ScatterAddOnRankOneVariable) {
  EXPECT_THAT(this->Scatter(UpdateKind::kAdd, {1, 1, 1, 1}, 1, {3, 3, 0}, {2, 3, 4}, false),
              ElementsAre(5, 1, 1, 6));
}

// ---------------------------------------------------------------------------
// Dtype-specific behaviour.

class CpuDeviceTest : public DeviceTestBase, public ::testing::Test {};

TEST_F(CpuDeviceTest, IsNamedCpu0) { EXPECT_EQ(device_->name(), "cpu:0"); }

TEST_F(CpuDeviceTest, BoolArithmeticIsRejected) {
  auto buffer = BufferWith<bool>({1, 0, 1});
  const std::string src = HostBytes<bool>({1, 1, 1});
  for (UpdateKind op : {UpdateKind::kAdd, UpdateKind::kSub}) {
    absl::Status dense = device_->ApplyDense(DT_BOOL, op, buffer.get(), src.data(), 3, false);
    EXPECT_EQ(dense.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(dense.message(), HasSubstr("needs a numeric dtype, got bool"));
    absl::Status scatter = device_->ApplyScatter(DT_BOOL, op, buffer.get(), 1,
                                                 std::vector<int64_t>{0}, src.data(), true);
    EXPECT_EQ(scatter.code(), absl::StatusCode::kInvalidArgument);
    // Also with nothing to do: the op itself is the error.
    EXPECT_EQ(device_->ApplyDense(DT_BOOL, op, buffer.get(), nullptr, 0, false).code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_THAT(Contents<bool>(*buffer), ElementsAre(1, 0, 1));
}

TEST_F(CpuDeviceTest, BuffersAreCacheLineAligned) {
  for (size_t bytes : {0, 1, 3, 64, 1000, 1 << 20}) {
    auto buffer = device_->Allocate(bytes);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_EQ((*buffer)->size(), bytes);
    ASSERT_NE((*buffer)->data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>((*buffer)->data()) % 64, 0u) << bytes;
  }
}

TEST_F(CpuDeviceTest, ImpossibleAllocationIsResourceExhausted) {
  auto buffer = device_->Allocate(std::numeric_limits<size_t>::max() / 2);
  EXPECT_EQ(buffer.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(CpuDeviceTest, CopiesOutsideTheBufferAreRejected) {
  auto buffer = BufferWith<int32_t>({1, 2, 3, 4});  // 16 bytes
  char host[32] = {};
  constexpr size_t kHuge = std::numeric_limits<size_t>::max();
  for (auto [offset, bytes] : std::vector<std::pair<size_t, size_t>>{
           {0, 17}, {8, 9}, {17, 0}, {kHuge, 2}, {2, kHuge}, {kHuge, kHuge}}) {
    absl::Status in = device_->CopyFromHost(host, bytes, buffer.get(), offset);
    EXPECT_EQ(in.code(), absl::StatusCode::kInvalidArgument) << offset << "+" << bytes;
    absl::Status out = device_->CopyToHost(*buffer, offset, bytes, host);
    EXPECT_EQ(out.code(), absl::StatusCode::kInvalidArgument) << offset << "+" << bytes;
  }
  EXPECT_THAT(device_->CopyFromHost(host, 17, buffer.get(), 0).message(),
              HasSubstr("17 bytes at offset 0 exceeds a buffer of 16 bytes"));
  EXPECT_THAT(Contents<int32_t>(*buffer), ElementsAre(1, 2, 3, 4));
}

TEST_F(CpuDeviceTest, CopiesUpToTheEndAreAccepted) {
  auto buffer = BufferWith<int32_t>({1, 2, 3, 4});
  const int32_t v[2] = {8, 9};
  EXPECT_TRUE(device_->CopyFromHost(v, sizeof v, buffer.get(), 8).ok());
  EXPECT_TRUE(device_->CopyFromHost(nullptr, 0, buffer.get(), 16).ok());
  int32_t back[1] = {};
  EXPECT_TRUE(device_->CopyToHost(*buffer, 12, 4, back).ok());
  EXPECT_EQ(back[0], 9);
  EXPECT_THAT(Contents<int32_t>(*buffer), ElementsAre(1, 2, 8, 9));
}

TEST_F(CpuDeviceTest, KernelsPastTheBufferAreInternalErrorsAndChangeNothing) {
  auto buffer = BufferWith<float>({1, 2, 3, 4, 5, 6});  // [3, 2]
  const std::vector<float> src(8, 1.0f);
  EXPECT_EQ(
      device_->ApplyDense(DT_FLOAT, UpdateKind::kAdd, buffer.get(), src.data(), 7, false).code(),
      absl::StatusCode::kInternal);
  EXPECT_EQ(
      device_->ApplyDense(DT_FLOAT, UpdateKind::kAdd, buffer.get(), src.data(), -1, false).code(),
      absl::StatusCode::kInternal);
  // Row 0 is valid, row 3 is not: nothing is applied.
  absl::Status s = device_->ApplyScatter(DT_FLOAT, UpdateKind::kAdd, buffer.get(), 2,
                                         std::vector<int64_t>{0, 3}, src.data(), false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("row index 3 outside a buffer of 3 rows"));
  EXPECT_EQ(device_
                ->ApplyScatter(DT_FLOAT, UpdateKind::kAssign, buffer.get(), 2,
                               std::vector<int64_t>{-1}, src.data(), false)
                .code(),
            absl::StatusCode::kInternal);
  std::vector<float> out(4);
  EXPECT_EQ(device_->Gather(DT_FLOAT, *buffer, 2, std::vector<int64_t>{1, 3}, out.data()).code(),
            absl::StatusCode::kInternal);
  EXPECT_THAT(Contents<float>(*buffer), ElementsAre(1, 2, 3, 4, 5, 6));
}

TEST_F(CpuDeviceTest, StringDtypeIsNotADeviceDtype) {
  auto buffer = device_->Allocate(16);
  ASSERT_TRUE(buffer.ok());
  const char src[16] = {};
  EXPECT_EQ(
      device_->ApplyDense(DT_STRING, UpdateKind::kAssign, buffer->get(), src, 1, false).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(device_
                ->ApplyScatter(DT_STRING, UpdateKind::kAssign, buffer->get(), 1,
                               std::vector<int64_t>{0}, src, false)
                .code(),
            absl::StatusCode::kInvalidArgument);
  char out[16];
  EXPECT_EQ(device_->Gather(DT_STRING, **buffer, 1, std::vector<int64_t>{0}, out).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuDeviceTest, IntegerAddAndSubWrapAround) {
  {
    auto b = BufferWith<int32_t>({2147483647, -2147483648.0});
    const int32_t one[1] = {1};
    ASSERT_TRUE(device_->ApplyDense(DT_INT32, UpdateKind::kAdd, b.get(), one, 1, true).ok());
    EXPECT_THAT(Contents<int32_t>(*b), ElementsAre(-2147483648.0, -2147483648.0));
    ASSERT_TRUE(device_->ApplyDense(DT_INT32, UpdateKind::kSub, b.get(), one, 2, true).ok());
    EXPECT_THAT(Contents<int32_t>(*b), ElementsAre(2147483647, 2147483647));
  }
  {
    auto b = BufferWith<int8_t>({127, -128});
    const int8_t src[2] = {1, 1};
    ASSERT_TRUE(device_->ApplyDense(DT_INT8, UpdateKind::kAdd, b.get(), src, 2, false).ok());
    EXPECT_THAT(Contents<int8_t>(*b), ElementsAre(-128, -127));
    ASSERT_TRUE(device_->ApplyDense(DT_INT8, UpdateKind::kSub, b.get(), src, 1, true).ok());
    EXPECT_THAT(Contents<int8_t>(*b), ElementsAre(127, -127));
  }
  {
    auto b = BufferWith<uint8_t>({0, 255});
    const uint8_t one[1] = {1};
    ASSERT_TRUE(device_->ApplyDense(DT_UINT8, UpdateKind::kSub, b.get(), one, 1, true).ok());
    EXPECT_THAT(Contents<uint8_t>(*b), ElementsAre(255, 255));
    ASSERT_TRUE(device_->ApplyDense(DT_UINT8, UpdateKind::kAdd, b.get(), one, 2, true).ok());
    EXPECT_THAT(Contents<uint8_t>(*b), ElementsAre(0, 0));
  }
  {
    auto b = device_->Allocate(2 * sizeof(int64_t));
    ASSERT_TRUE(b.ok());
    const int64_t values[2] = {std::numeric_limits<int64_t>::min(),
                               std::numeric_limits<int64_t>::max()};
    ASSERT_TRUE(device_->CopyFromHost(values, sizeof values, b->get(), 0).ok());
    const int64_t one[1] = {1};
    // Scatter too: same arithmetic.
    ASSERT_TRUE(device_
                    ->ApplyScatter(DT_INT64, UpdateKind::kSub, b->get(), 1, std::vector<int64_t>{0},
                                   one, true)
                    .ok());
    ASSERT_TRUE(device_
                    ->ApplyScatter(DT_INT64, UpdateKind::kAdd, b->get(), 1, std::vector<int64_t>{1},
                                   one, true)
                    .ok());
    int64_t back[2];
    ASSERT_TRUE(device_->CopyToHost(**b, 0, sizeof back, back).ok());
    EXPECT_EQ(back[0], std::numeric_limits<int64_t>::max());
    EXPECT_EQ(back[1], std::numeric_limits<int64_t>::min());
  }
  {
    auto b = BufferWith<int16_t>({32767});
    const int16_t one[1] = {1};
    ASSERT_TRUE(device_->ApplyDense(DT_INT16, UpdateKind::kAdd, b.get(), one, 1, true).ok());
    EXPECT_THAT(Contents<int16_t>(*b), ElementsAre(-32768));
  }
}

// float16 has 11 significant bits: at 2048 the spacing is 2, so 2049 and
// 2051 are ties that round to the even significand (2048, 2052); 2047.5 lies
// between 2047 and 2048 and rounds to 2048.
TEST_F(CpuDeviceTest, HalfArithmeticRoundsToNearestEven) {
  auto b = BufferWith<half>({2048, 2048, 2048, 65504});
  const std::string src = HostBytes<half>({1, 3, -0.5, 65504});
  ASSERT_TRUE(device_->ApplyDense(DT_HALF, UpdateKind::kAdd, b.get(), src.data(), 4, false).ok());
  EXPECT_THAT(Contents<half>(*b),
              ElementsAre(2048, 2052, 2048, std::numeric_limits<double>::infinity()));
  auto c = BufferWith<half>({1.0, 1.0 / 1024});
  const std::string tiny = HostBytes<half>({1.0 / 4096});
  ASSERT_TRUE(device_->ApplyDense(DT_HALF, UpdateKind::kSub, c.get(), tiny.data(), 2, true).ok());
  // Below 1 the spacing is 2^-11, so 1 - 2^-12 is a tie that rounds back to
  // 1; 2^-10 - 2^-12 is exact.
  EXPECT_THAT(Contents<half>(*c), ElementsAre(1.0, 0.75 / 1024));
}

// bfloat16 has 8 significant bits: at 256 the spacing is 2.
TEST_F(CpuDeviceTest, BFloat16ArithmeticRoundsToNearestEven) {
  auto b = BufferWith<bfloat16>({256, 256, 1});
  const std::string src = HostBytes<bfloat16>({1, 3, 1.0 / 256});
  ASSERT_TRUE(
      device_->ApplyDense(DT_BFLOAT16, UpdateKind::kAdd, b.get(), src.data(), 3, false).ok());
  // 1 + 2^-8: a tie between 1 and 1 + 2^-7, to even.
  EXPECT_THAT(Contents<bfloat16>(*b), ElementsAre(256, 260, 1));
  ASSERT_TRUE(device_
                  ->ApplyScatter(DT_BFLOAT16, UpdateKind::kSub, b.get(), 1,
                                 std::vector<int64_t>{1, 1}, src.data(), false)
                  .ok());
  EXPECT_THAT(Contents<bfloat16>(*b), ElementsAre(256, 256, 1));
}

TEST_F(CpuDeviceTest, BoolAssignStoresOnlyZeroOrOne) {
  auto b = BufferWith<bool>({0, 0, 0});
  const unsigned char src[3] = {0, 2, 255};
  ASSERT_TRUE(device_->ApplyDense(DT_BOOL, UpdateKind::kAssign, b.get(), src, 3, false).ok());
  std::string bytes(3, '\x7f');
  ASSERT_TRUE(device_->CopyToHost(*b, 0, 3, bytes.data()).ok());
  EXPECT_EQ(bytes, std::string("\0\1\1", 3));
}

TEST_F(CpuDeviceTest, InitializeFillsTheSliceOfTheWholeVariable) {
  InitializerSpec spec;
  spec.set_seed(7);
  spec.mutable_random_normal()->set_stddev(1.0);
  auto whole = device_->Allocate(4 * 3 * sizeof(float));
  auto part = device_->Allocate(2 * 3 * sizeof(float));
  ASSERT_TRUE(whole.ok() && part.ok());
  ASSERT_TRUE(device_
                  ->Initialize(spec, DT_FLOAT, TensorShape{4, 3}, TensorShape{4, 3},
                               std::vector<int64_t>{0, 0}, whole->get())
                  .ok());
  ASSERT_TRUE(device_
                  ->Initialize(spec, DT_FLOAT, TensorShape{4, 3}, TensorShape{2, 3},
                               std::vector<int64_t>{2, 0}, part->get())
                  .ok());
  const std::vector<double> all = Contents<float>(**whole);
  EXPECT_THAT(Contents<float>(**part), ElementsAreArray(all.begin() + 6, all.end()));
}

TEST_F(CpuDeviceTest, InitializeRejectsASliceLargerThanTheBuffer) {
  InitializerSpec spec;
  spec.mutable_ones();
  auto small = device_->Allocate(2 * sizeof(float));
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(device_
                ->Initialize(spec, DT_FLOAT, TensorShape{4}, TensorShape{4},
                             std::vector<int64_t>{0}, small->get())
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(device_
                ->Initialize(spec, DT_FLOAT, TensorShape{4}, TensorShape{2},
                             std::vector<int64_t>{3}, small->get())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace psd
