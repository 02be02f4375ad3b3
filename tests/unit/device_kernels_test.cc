// Every Device's buffers and kernels, for every fixed-size dtype: each case
// runs on the CPU device and on the GPU device (gpu:0). GPU cases skip, saying
// why, where this build has no GPU support or no CUDA device is present; with
// PSD_REQUIRE_GPU=1 in the environment they fail instead. Values are small
// integers, exact in every dtype, so GPU results must equal the CPU's bit for
// bit; the cross-device checks at the end compare the two devices directly.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "device/device.h"
#include "device/device_checks.h"
#include "device/initializers.h"
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

// The devices every case runs on.
struct OnCpu {
  static constexpr const char* kName = "cpu:0";
  static constexpr const char* kLabel = "cpu";
};
struct OnGpu {
  static constexpr const char* kName = "gpu:0";
  static constexpr const char* kLabel = "gpu";
};

// Opens `name`. A GPU that this build or machine lacks is a skip (with the
// reason) unless PSD_REQUIRE_GPU=1; anything else is a failure.
std::unique_ptr<Device> OpenDevice(const std::string& name, std::string* skip) {
  absl::StatusOr<std::unique_ptr<Device>> device = NewDevice(name);
  if (device.ok()) return std::move(device).value();
  const char* require = std::getenv("PSD_REQUIRE_GPU");
  const bool required = require != nullptr && std::string(require) == "1";
  if (name.rfind("gpu", 0) == 0 && !required &&
      (device.status().code() == absl::StatusCode::kUnimplemented ||
       device.status().code() == absl::StatusCode::kUnavailable)) {
    *skip = std::string(device.status().message());
    return nullptr;
  }
  ADD_FAILURE() << name << ": " << device.status();
  return nullptr;
}

// Fixture shared by the typed and the dtype-specific tests. Tests call
// Open() from SetUp and skip when it returns false.
class DeviceTestBase {
 protected:
  bool Open(const std::string& name) {
    device_ = OpenDevice(name, &skip_reason_);
    return device_ != nullptr;
  }

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

  std::unique_ptr<Device> device_;
  std::string skip_reason_;
};

#define PSD_OPEN_OR_SKIP(name)                                 \
  do {                                                         \
    if (!Open(name)) {                                         \
      if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_; \
      return;                                                  \
    }                                                          \
  } while (0)

// A typed case: element type and device.
template <typename T, typename D>
struct Case {
  using Elem = T;
  using Dev = D;
};

template <typename P>
class DeviceKernelsTest : public DeviceTestBase, public ::testing::Test {
 protected:
  using T = typename P::Elem;
  using Elem = T;
  static constexpr DataType kDtype = DataTypeOf<T>::value;

  void SetUp() override { PSD_OPEN_OR_SKIP(P::Dev::kName); }

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

class CaseNames {
 public:
  template <typename P>
  static std::string GetName(int) {
    return std::string(DataTypeName(DataTypeOf<typename P::Elem>::value)) + "_" + P::Dev::kLabel;
  }
};

template <typename D>
using FixedSizeCases =
    ::testing::Types<Case<float, D>, Case<double, D>, Case<half, D>, Case<bfloat16, D>,
                     Case<int8_t, D>, Case<int16_t, D>, Case<int32_t, D>, Case<int64_t, D>,
                     Case<uint8_t, D>, Case<bool, D>>;
template <typename... A, typename... B>
::testing::Types<A..., B...> Concat(::testing::Types<A...>, ::testing::Types<B...>);
using AllFixedSizeCases = decltype(Concat(FixedSizeCases<OnCpu>(), FixedSizeCases<OnGpu>()));
TYPED_TEST_SUITE(DeviceKernelsTest, AllFixedSizeCases, CaseNames);

// add/sub: every dtype but bool (see DeviceTest.BoolArithmeticIsRejected).
template <typename P>
class ArithmeticKernelsTest : public DeviceKernelsTest<P> {};
template <typename D>
using NumericCases = ::testing::Types<Case<float, D>, Case<double, D>, Case<half, D>,
                                      Case<bfloat16, D>, Case<int8_t, D>, Case<int16_t, D>,
                                      Case<int32_t, D>, Case<int64_t, D>, Case<uint8_t, D>>;
using AllNumericCases = decltype(Concat(NumericCases<OnCpu>(), NumericCases<OnGpu>()));
TYPED_TEST_SUITE(ArithmeticKernelsTest, AllNumericCases, CaseNames);

// A [4, 3] variable holding 0..11 (0/1 for bool).
const std::vector<double> kMatrix = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};

TYPED_TEST(DeviceKernelsTest, CopyRoundTripsAllBytes) {
  using E = typename TestFixture::Elem;
  auto buffer = this->template BufferWith<E>(kMatrix);
  EXPECT_EQ(buffer->size(), kMatrix.size() * sizeof(E));
  EXPECT_EQ(this->template Contents<E>(*buffer), AsType<E>(kMatrix));
}

TYPED_TEST(DeviceKernelsTest, DenseAssignCopiesEveryElement) {
  using E = typename TestFixture::Elem;
  EXPECT_EQ(this->Dense(UpdateKind::kAssign, {1, 2, 3, 4}, {7, 0, 5, 9}, false),
            AsType<E>({7, 0, 5, 9}));
}

TYPED_TEST(DeviceKernelsTest, DenseAssignBroadcastsScalar) {
  using E = typename TestFixture::Elem;
  EXPECT_EQ(this->Dense(UpdateKind::kAssign, {1, 0, 3, 4}, {5}, true), AsType<E>({5, 5, 5, 5}));
}

TYPED_TEST(DeviceKernelsTest, DenseAssignOfLongUnalignedSource) {
  using E = typename TestFixture::Elem;
  constexpr int kN = 1003;  // the vectorized loop body and its remainder
  std::vector<double> src(kN);
  for (int i = 0; i < kN; ++i) src[i] = (i * 7) % 50;
  auto buffer = this->template BufferWith<E>(std::vector<double>(kN, 1));
  const std::string bytes = " " + HostBytes<E>(src);  // misaligned by one byte
  ASSERT_TRUE(this->device_
                  ->ApplyDense(TestFixture::kDtype, UpdateKind::kAssign, buffer.get(),
                               bytes.data() + 1, kN, false)
                  .ok());
  EXPECT_EQ(this->template Contents<E>(*buffer), AsType<E>(src));
}

TYPED_TEST(DeviceKernelsTest, ScatterUpdateLastDuplicateWins) {
  using E = typename TestFixture::Elem;
  // Rows 2, 0, 2 of a [4, 3] variable.
  EXPECT_EQ(
      this->Scatter(UpdateKind::kAssign, kMatrix, 3, {2, 0, 2}, {1, 1, 1, 0, 0, 0, 9, 0, 7}, false),
      AsType<E>({0, 0, 0, 3, 4, 5, 9, 0, 7, 9, 10, 11}));
}

TYPED_TEST(DeviceKernelsTest, ScatterScalarUpdateSetsEveryAddressedElement) {
  using E = typename TestFixture::Elem;
  EXPECT_EQ(this->Scatter(UpdateKind::kAssign, kMatrix, 3, {1, 3}, {7}, true),
            AsType<E>({0, 1, 2, 7, 7, 7, 6, 7, 8, 7, 7, 7}));
}

TYPED_TEST(DeviceKernelsTest, ScatterUpdateOnRankOneVariable) {
  using E = typename TestFixture::Elem;
  EXPECT_EQ(this->Scatter(UpdateKind::kAssign, {1, 1, 1, 1}, 1, {3, 0}, {0, 5}, false),
            AsType<E>({5, 1, 1, 0}));
}

TYPED_TEST(DeviceKernelsTest, ScatterWithNoIndicesChangesNothing) {
  using E = typename TestFixture::Elem;
  EXPECT_EQ(this->Scatter(UpdateKind::kAssign, kMatrix, 3, {}, {}, false), AsType<E>(kMatrix));
}

TYPED_TEST(DeviceKernelsTest, GatherCopiesRowsInIndexOrder) {
  using E = typename TestFixture::Elem;
  auto buffer = this->template BufferWith<E>(kMatrix);
  const std::vector<int64_t> indices = {3, 0, 3};
  std::string out(indices.size() * 3 * sizeof(E), '\0');
  ASSERT_TRUE(this->device_->Gather(TestFixture::kDtype, *buffer, 3, indices, out.data()).ok());
  EXPECT_EQ(FromHostBytes<E>(out), AsType<E>({9, 10, 11, 0, 1, 2, 9, 10, 11}));
}

// More indices than the CPU kernels prefetch rows ahead (8), with repeats,
// and rows of 1 and 70 elements: each row is copied in index order.
TYPED_TEST(DeviceKernelsTest, GatherOfManyRowsCopiesEachInIndexOrder) {
  using E = typename TestFixture::Elem;
  constexpr int64_t kRows = 12;
  for (const int64_t row : {int64_t{1}, int64_t{70}}) {
    std::vector<double> initial(kRows * row);
    for (size_t i = 0; i < initial.size(); ++i) {
      initial[i] = std::is_same_v<E, bool> ? static_cast<double>((i * 7 / 3) % 2)
                                           : static_cast<double>(i % 100);
    }
    std::vector<int64_t> indices;
    for (int64_t k = 0; k < 40; ++k) indices.push_back((k * 7 + k / 5) % kRows);
    std::vector<double> want;
    for (int64_t index : indices) {
      want.insert(want.end(), initial.begin() + index * row, initial.begin() + (index + 1) * row);
    }
    auto buffer = this->template BufferWith<E>(initial);
    std::string out(indices.size() * row * sizeof(E), '\0');
    ASSERT_TRUE(this->device_->Gather(TestFixture::kDtype, *buffer, row, indices, out.data()).ok());
    EXPECT_EQ(FromHostBytes<E>(out), AsType<E>(want)) << "rows of " << row;
  }
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
  using E = typename TestFixture::Elem;
  constexpr int kN = 1003;
  std::vector<double> initial(kN), src(kN);
  std::vector<double> expected(kN);
  for (int i = 0; i < kN; ++i) {
    initial[i] = i % 50;
    src[i] = (i * 7) % 50;
    expected[i] = initial[i] + src[i];  // at most 98: exact in every dtype
  }
  auto buffer = this->template BufferWith<E>(initial);
  const std::string bytes = " " + HostBytes<E>(src);
  ASSERT_TRUE(this->device_
                  ->ApplyDense(TestFixture::kDtype, UpdateKind::kAdd, buffer.get(),
                               bytes.data() + 1, kN, false)
                  .ok());
  EXPECT_EQ(this->template Contents<E>(*buffer), expected);
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

// More indices than the CPU kernels prefetch rows ahead (8), with repeats,
// and rows of 1 and 70 elements: every update lands, in order, as a plain
// loop over the indices makes it.
TYPED_TEST(ArithmeticKernelsTest, ScatterAddOfManyRowsMatchesAnInOrderLoop) {
  constexpr int64_t kRows = 12;
  for (const int64_t row : {int64_t{1}, int64_t{70}}) {
    std::vector<int64_t> indices;
    for (int64_t k = 0; k < 40; ++k) indices.push_back((k * 7 + k / 5) % kRows);
    std::vector<double> initial(kRows * row), updates(indices.size() * row);
    for (size_t i = 0; i < initial.size(); ++i) initial[i] = static_cast<double>(i % 9);
    for (size_t i = 0; i < updates.size(); ++i) updates[i] = static_cast<double>(i % 3 + 1);
    std::vector<double> want = initial;
    for (size_t k = 0; k < indices.size(); ++k) {
      for (int64_t e = 0; e < row; ++e) want[indices[k] * row + e] += updates[k * row + e];
    }
    EXPECT_EQ(this->Scatter(UpdateKind::kAdd, initial, row, indices, updates, false), want)
        << "rows of " << row;
    std::vector<double> scalar_want = initial;
    for (int64_t index : indices) {
      for (int64_t e = 0; e < row; ++e) scalar_want[index * row + e] += 2;
    }
    EXPECT_EQ(this->Scatter(UpdateKind::kAdd, initial, row, indices, {2}, true), scalar_want)
        << "rows of " << row;
  }
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

// Runs on every device.
class DeviceTest : public DeviceTestBase, public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { PSD_OPEN_OR_SKIP(GetParam()); }
};

INSTANTIATE_TEST_SUITE_P(Devices, DeviceTest, ::testing::Values(OnCpu::kName, OnGpu::kName),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param).substr(0, 3);
                         });

// What only the CPU device promises.
class CpuDeviceTest : public DeviceTestBase, public ::testing::Test {
 protected:
  void SetUp() override { PSD_OPEN_OR_SKIP(OnCpu::kName); }
};

TEST_F(CpuDeviceTest, IsNamedCpu0) { EXPECT_EQ(device_->name(), "cpu:0"); }

TEST_P(DeviceTest, BoolArithmeticIsRejected) {
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

TEST_P(DeviceTest, ImpossibleAllocationIsResourceExhausted) {
  auto buffer = device_->Allocate(std::numeric_limits<size_t>::max() / 2);
  EXPECT_EQ(buffer.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_P(DeviceTest, CopiesOutsideTheBufferAreRejected) {
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

TEST_P(DeviceTest, CopiesUpToTheEndAreAccepted) {
  auto buffer = BufferWith<int32_t>({1, 2, 3, 4});
  const int32_t v[2] = {8, 9};
  EXPECT_TRUE(device_->CopyFromHost(v, sizeof v, buffer.get(), 8).ok());
  EXPECT_TRUE(device_->CopyFromHost(nullptr, 0, buffer.get(), 16).ok());
  int32_t back[1] = {};
  EXPECT_TRUE(device_->CopyToHost(*buffer, 12, 4, back).ok());
  EXPECT_EQ(back[0], 9);
  EXPECT_THAT(Contents<int32_t>(*buffer), ElementsAre(1, 2, 8, 9));
}

TEST_P(DeviceTest, KernelsPastTheBufferAreInternalErrorsAndChangeNothing) {
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

TEST_P(DeviceTest, StringDtypeIsNotADeviceDtype) {
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

TEST_P(DeviceTest, IntegerAddAndSubWrapAround) {
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
TEST_P(DeviceTest, HalfArithmeticRoundsToNearestEven) {
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
TEST_P(DeviceTest, BFloat16ArithmeticRoundsToNearestEven) {
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

TEST_P(DeviceTest, BoolAssignStoresOnlyZeroOrOne) {
  auto b = BufferWith<bool>({0, 0, 0});
  const unsigned char src[3] = {0, 2, 255};
  ASSERT_TRUE(device_->ApplyDense(DT_BOOL, UpdateKind::kAssign, b.get(), src, 3, false).ok());
  std::string bytes(3, '\x7f');
  ASSERT_TRUE(device_->CopyToHost(*b, 0, 3, bytes.data()).ok());
  EXPECT_EQ(bytes, std::string("\0\1\1", 3));
}

TEST_P(DeviceTest, InitializeFillsTheSliceOfTheWholeVariable) {
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

TEST_P(DeviceTest, InitializeRejectsASliceLargerThanTheBuffer) {
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

TEST_P(DeviceTest, DenseUpdateFromADeviceBuffer) {
  auto dst = BufferWith<int32_t>({1, 2, 3, 4});
  auto src = BufferWith<int32_t>({10, 20, 30, 40});
  ASSERT_TRUE(device_->ApplyDenseFromBuffer(DT_INT32, UpdateKind::kAdd, dst.get(), *src, 4).ok());
  EXPECT_THAT(Contents<int32_t>(*dst), ElementsAre(11, 22, 33, 44));
  ASSERT_TRUE(device_->ApplyDenseFromBuffer(DT_INT32, UpdateKind::kSub, dst.get(), *src, 2).ok());
  EXPECT_THAT(Contents<int32_t>(*dst), ElementsAre(1, 2, 33, 44));
  EXPECT_EQ(device_->ApplyDenseFromBuffer(DT_INT32, UpdateKind::kAdd, dst.get(), *src, 5).code(),
            absl::StatusCode::kInternal);
  EXPECT_TRUE(device_->healthy());
}

// ---------------------------------------------------------------------------
// Cross-device agreement: the same op on this device and on the CPU device,
// on data big enough to cross the GPU's 4 MiB staging chunks, compared byte
// for byte (or within a stated tolerance where the order of float additions
// or a transcendental function's last bit may differ).

// Deterministic pseudo-random values in [-1, 1).
std::vector<double> Noise(size_t n, uint64_t seed) {
  std::vector<double> out(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (double& v : out) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<double>(x >> 11) * 0x1p-52 - 1.0;
  }
  return out;
}

template <typename T>
std::string Bytes(const std::vector<double>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    T v;
    if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
      v = T(static_cast<float>(values[i]));
    } else {
      v = static_cast<T>(values[i]);
    }
    std::memcpy(&bytes[i * sizeof(T)], &v, sizeof(T));
  }
  return bytes;
}

class CrossDeviceTest : public DeviceTestBase, public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { PSD_OPEN_OR_SKIP(GetParam()); }

  // A buffer on `device` holding `bytes`.
  static std::unique_ptr<DeviceBuffer> Upload(Device* device, const std::string& bytes) {
    auto buffer = device->Allocate(bytes.size());
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_TRUE(device->CopyFromHost(bytes.data(), bytes.size(), buffer->get(), 0).ok());
    return std::move(buffer).value();
  }
  static std::string Download(Device* device, const DeviceBuffer& buffer) {
    std::string bytes(buffer.size(), '\0');
    EXPECT_TRUE(device->CopyToHost(buffer, 0, bytes.size(), bytes.data()).ok());
    return bytes;
  }

  // Runs fn(device) on this device and on the CPU; returns both results.
  template <typename Fn>
  std::pair<std::string, std::string> Both(Fn&& fn) {
    return {fn(device_.get()), fn(cpu_.get())};
  }

  std::unique_ptr<Device> cpu_ = NewCpuDevice();
};

INSTANTIATE_TEST_SUITE_P(Devices, CrossDeviceTest, ::testing::Values(OnCpu::kName, OnGpu::kName),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param).substr(0, 3);
                         });

// Elements of `a` and `b` (as T) that differ by more than `tolerance`
// relative to max(1, |b|); the count of bitwise differences in `*differ`.
template <typename T>
int64_t FarApart(const std::string& a, const std::string& b, double tolerance, int64_t* differ) {
  const std::vector<double> x = FromHostBytes<T>(a), y = FromHostBytes<T>(b);
  int64_t far = 0;
  *differ = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::memcmp(&a[i * sizeof(T)], &b[i * sizeof(T)], sizeof(T)) != 0) ++*differ;
    if (!(std::fabs(x[i] - y[i]) <= tolerance * std::max(1.0, std::fabs(y[i])))) ++far;
  }
  return far;
}

// Where two buffers of `dtype` made of consecutive arrays of `n` elements
// (a variable, then its slots) first differ, for a failure message.
std::string FirstDifference(DataType dtype, const std::string& got, const std::string& want,
                            int64_t n) {
  auto describe = [&](auto tag) -> std::string {
    using T = decltype(tag);
    const std::vector<double> x = FromHostBytes<T>(got), y = FromHostBytes<T>(want);
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (std::memcmp(&got[i * sizeof(T)], &want[i * sizeof(T)], sizeof(T)) == 0) continue;
      return absl::StrFormat("first difference: array %d element %d: got %.17g, want %.17g",
                             static_cast<int64_t>(i) / n, static_cast<int64_t>(i) % n, x[i], y[i]);
    }
    return absl::StrCat("sizes ", got.size(), " and ", want.size());
  };
  switch (dtype) {
    case DT_FLOAT:
      return describe(float());
    case DT_DOUBLE:
      return describe(double());
    case DT_HALF:
      return describe(half());
    default:
      return describe(bfloat16());
  }
}

// Floating `got` within 1e-5 relative of `want` (float32/float64), or one
// rounding step of the 16-bit types (1e-2).
void ExpectClose(DataType dtype, const std::string& got, const std::string& want) {
  const double tolerance = dtype == DT_FLOAT || dtype == DT_DOUBLE ? 1e-5 : 1e-2;
  int64_t differ = 0, far = 0;
  switch (dtype) {
    case DT_FLOAT:
      far = FarApart<float>(got, want, tolerance, &differ);
      break;
    case DT_DOUBLE:
      far = FarApart<double>(got, want, tolerance, &differ);
      break;
    case DT_HALF:
      far = FarApart<half>(got, want, tolerance, &differ);
      break;
    default:
      far = FarApart<bfloat16>(got, want, tolerance, &differ);
      break;
  }
  EXPECT_EQ(far, 0) << differ << " elements differ in some bit";
}

TEST_P(CrossDeviceTest, LargeDenseUpdatesAgree) {
  constexpr int64_t kN = 3'000'001;  // 12 MB of float: three staging chunks and a remainder
  const std::string initial = Bytes<float>(Noise(kN, 1));
  const std::string delta = " " + Bytes<float>(Noise(kN, 2));  // unaligned source
  for (UpdateKind op : {UpdateKind::kAssign, UpdateKind::kAdd, UpdateKind::kSub}) {
    auto [got, want] = Both([&](Device* d) {
      auto buffer = Upload(d, initial);
      EXPECT_TRUE(d->ApplyDense(DT_FLOAT, op, buffer.get(), delta.data() + 1, kN, false).ok());
      return Download(d, *buffer);
    });
    EXPECT_TRUE(got == want) << AssignOpName(op);
  }
  const float scalar = 0.25f;
  auto [got, want] = Both([&](Device* d) {
    auto buffer = Upload(d, initial);
    EXPECT_TRUE(d->ApplyDense(DT_FLOAT, UpdateKind::kAdd, buffer.get(), &scalar, kN, true).ok());
    return Download(d, *buffer);
  });
  EXPECT_TRUE(got == want);
}

TEST_P(CrossDeviceTest, LargeGatherAndScatterAgree) {
  constexpr int64_t kRows = 50'000, kCols = 33;  // odd row size: no wide words
  const std::string table = Bytes<int32_t>([&] {
    std::vector<double> v(kRows * kCols);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i % 100003);
    return v;
  }());
  std::vector<int64_t> indices(120'000);  // duplicates on purpose
  const std::vector<double> noise = Noise(indices.size(), 3);
  for (size_t k = 0; k < indices.size(); ++k) {
    indices[k] = static_cast<int64_t>((noise[k] + 1) / 2 * kRows) % kRows;
  }
  const std::string updates = Bytes<int32_t>([&] {
    std::vector<double> v(indices.size() * kCols);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i % 1000) - 500;
    return v;
  }());
  {
    auto [got, want] = Both([&](Device* d) {
      auto buffer = Upload(d, table);
      std::string out(indices.size() * kCols * sizeof(int32_t), '\0');
      EXPECT_TRUE(d->Gather(DT_INT32, *buffer, kCols, indices, out.data()).ok());
      return out;
    });
    EXPECT_TRUE(got == want);
  }
  // Integer sums are exact in any order; the assign keeps the last duplicate.
  for (UpdateKind op : {UpdateKind::kAssign, UpdateKind::kAdd, UpdateKind::kSub}) {
    auto [got, want] = Both([&](Device* d) {
      auto buffer = Upload(d, table);
      EXPECT_TRUE(
          d->ApplyScatter(DT_INT32, op, buffer.get(), kCols, indices, updates.data(), false).ok());
      return Download(d, *buffer);
    });
    EXPECT_TRUE(got == want) << AssignOpName(op);
  }
}

// Float scatter_add with duplicate indices: the GPU adds with atomics in an
// unspecified order, so sums may round differently. Each element must lie
// within the rounding bound of summing its n terms in any order,
// (n - 1) * 2^-24 * sum |term| from the exact sum, so two devices differ by at
// most twice that. (A fixed relative tolerance is wrong here: rows take
// about a hundred terms, and such sums legitimately differ by more than
// 1e-5.)
TEST_P(CrossDeviceTest, FloatScatterAddWithDuplicatesAgreesWithinRoundingBound) {
  constexpr int64_t kRows = 1000, kCols = 16;
  const std::vector<double> initial = Noise(kRows * kCols, 4);
  const std::string table = Bytes<float>(initial);
  std::vector<int64_t> indices(20'000);
  for (size_t k = 0; k < indices.size(); ++k) indices[k] = static_cast<int64_t>(k * k % kRows);
  const std::vector<double> update_values = Noise(indices.size() * kCols, 5);
  const std::string updates = Bytes<float>(update_values);
  auto [got, want] = Both([&](Device* d) {
    auto buffer = Upload(d, table);
    EXPECT_TRUE(d->ApplyScatter(DT_FLOAT, UpdateKind::kAdd, buffer.get(), kCols, indices,
                                updates.data(), false)
                    .ok());
    return Download(d, *buffer);
  });
  // Per element: its number of terms and the sum of their magnitudes, from
  // the float32 values both devices added.
  const std::vector<double> table_f = FromHostBytes<float>(table);
  const std::vector<double> updates_f = FromHostBytes<float>(updates);
  std::vector<double> terms(kRows * kCols, 1.0), magnitude(kRows * kCols);
  for (int64_t e = 0; e < kRows * kCols; ++e) magnitude[e] = std::fabs(table_f[e]);
  for (size_t k = 0; k < indices.size(); ++k) {
    for (int64_t c = 0; c < kCols; ++c) {
      terms[indices[k] * kCols + c] += 1;
      magnitude[indices[k] * kCols + c] += std::fabs(updates_f[k * kCols + c]);
    }
  }
  const std::vector<double> x = FromHostBytes<float>(got), y = FromHostBytes<float>(want);
  ASSERT_EQ(x.size(), y.size());
  int64_t outside = 0, differ = 0;
  for (size_t e = 0; e < x.size(); ++e) {
    if (x[e] != y[e]) ++differ;
    const double bound = 2 * (terms[e] - 1) * 0x1p-24 * magnitude[e];
    if (!(std::fabs(x[e] - y[e]) <= bound)) ++outside;
  }
  EXPECT_EQ(outside, 0) << differ << " of " << x.size() << " elements differ";
}

// Initializers: bit for bit, except normal draws, which go through log, cos
// and sqrt (within 1e-5 relative for float32/float64; one rounding step of
// the 16-bit types: 1e-2).
TEST_P(CrossDeviceTest, InitializersAgree) {
  const TensorShape full{7, 33, 5};
  const TensorShape slice{3, 20, 5};
  const std::vector<int64_t> offset{2, 4, 0};
  std::vector<std::pair<std::string, InitializerSpec>> specs;
  auto add = [&](const std::string& name, auto set) {
    InitializerSpec spec;
    spec.set_seed(0x1234567890abcdefll);
    set(&spec);
    specs.push_back({name, spec});
  };
  add("zeros", [](InitializerSpec* s) { s->mutable_zeros(); });
  add("ones", [](InitializerSpec* s) { s->mutable_ones(); });
  add("uniform", [](InitializerSpec* s) {
    s->mutable_random_uniform()->set_minval(-3);
    s->mutable_random_uniform()->set_maxval(5);
  });
  add("normal", [](InitializerSpec* s) {
    s->mutable_random_normal()->set_mean(1);
    s->mutable_random_normal()->set_stddev(2);
  });
  add("truncated_normal", [](InitializerSpec* s) {
    s->mutable_truncated_normal()->set_mean(-1);
    s->mutable_truncated_normal()->set_stddev(0.5);
  });
  add("unit_scaling",
      [](InitializerSpec* s) { s->mutable_uniform_unit_scaling()->set_factor(1.5); });
  add("default", [](InitializerSpec* s) { s->mutable_default_initializer(); });
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16, DT_INT32, DT_INT64}) {
    for (const auto& [name, spec] : specs) {
      const bool floating = IsFloating(dtype);
      if (!floating && name != "uniform" && name != "zeros" && name != "ones" &&
          name != "default") {
        continue;
      }
      SCOPED_TRACE(name + " " + DataTypeName(dtype));
      const size_t bytes = slice.num_elements() * DataTypeSize(dtype);
      // A structured binding is captured through an init-capture (C++17
      // lambdas cannot name one; gcc allows it, clang does not).
      auto [got, want] = Both([&, &spec = spec](Device* d) {
        auto buffer = d->Allocate(bytes);
        EXPECT_TRUE(buffer.ok());
        absl::Status s = d->Initialize(spec, dtype, full, slice, offset, buffer->get());
        EXPECT_TRUE(s.ok()) << s;
        return Download(d, **buffer);
      });
      if (name != "normal" && name != "truncated_normal") {
        EXPECT_TRUE(got == want);
        continue;
      }
      ExpectClose(dtype, got, want);
    }
  }
  // A constant tensor (filled on the host, then copied).
  InitializerSpec constant;
  TensorProto* value = constant.mutable_constant()->mutable_value();
  value->set_dtype(DT_INT32);
  for (int64_t d : full.dims()) value->mutable_shape()->add_dims(d);
  std::vector<double> v(full.num_elements());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
  value->set_content(Bytes<int32_t>(v));
  auto [got, want] = Both([&](Device* d) {
    auto buffer = d->Allocate(slice.num_elements() * 4);
    EXPECT_TRUE(buffer.ok());
    EXPECT_TRUE(d->Initialize(constant, DT_INT32, full, slice, offset, buffer->get()).ok());
    return Download(d, **buffer);
  });
  EXPECT_TRUE(got == want);
}

// Optimizers, dense and sparse (duplicate indices summed first), every
// floating dtype: bit for bit, except FTRL with a learning-rate power other
// than -0.5, which calls pow (1e-5 relative; 1e-2 for the 16-bit types).
TEST_P(CrossDeviceTest, OptimizersAgree) {
  constexpr int64_t kRows = 64, kCols = 33;
  constexpr int64_t kN = kRows * kCols;
  std::vector<OptimizerParams> all;
  for (OptimizerKind kind : {OptimizerKind::kGradientDescent, OptimizerKind::kMomentum,
                             OptimizerKind::kAdagrad, OptimizerKind::kAdam, OptimizerKind::kRMSProp,
                             OptimizerKind::kCenteredRMSProp, OptimizerKind::kFtrl}) {
    OptimizerParams p;
    p.kind = kind;
    p.learning_rate = 0.1;
    p.momentum = 0.9;
    p.beta1 = 0.9;
    p.beta2 = 0.999;
    p.epsilon = 1e-7;
    p.beta1_power = 0.9;
    p.beta2_power = 0.999;
    p.decay = 0.9;
    p.lr_power = -0.5;
    p.l1 = 0.01;
    p.l2 = 0.02;
    p.l2_shrinkage = 0.01;
    all.push_back(p);
  }
  all.push_back(all[1]);
  all.back().use_nesterov = true;
  all.push_back(all[6]);
  all.back().lr_power = -0.3;  // FTRL through pow
  std::vector<int64_t> indices(40);
  for (size_t k = 0; k < indices.size(); ++k) indices[k] = static_cast<int64_t>(k * 7 % kRows);
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16}) {
    for (const OptimizerParams& p : all) {
      for (bool sparse : {false, true}) {
        SCOPED_TRACE(absl::StrCat(OptimizerName(p.kind), p.use_nesterov ? " nesterov" : "",
                                  " lr_power ", p.lr_power, " ", DataTypeName(dtype),
                                  sparse ? " sparse" : " dense"));
        auto bytes_of = [&](const std::vector<double>& v) {
          switch (dtype) {
            case DT_FLOAT:
              return Bytes<float>(v);
            case DT_DOUBLE:
              return Bytes<double>(v);
            case DT_HALF:
              return Bytes<half>(v);
            default:
              return Bytes<bfloat16>(v);
          }
        };
        const std::string var0 = bytes_of(Noise(kN, 6));
        std::vector<double> accum(kN);
        for (double& a : accum) a = 0.1;  // Adagrad/FTRL accumulators start positive
        const int slots = NumOptimizerSlots(p.kind);
        const std::string grad = bytes_of(Noise(sparse ? indices.size() * kCols : kN, 7));
        auto [got, want] = Both([&](Device* d) {
          auto var = Upload(d, var0);
          std::vector<std::unique_ptr<DeviceBuffer>> owned;
          std::vector<DeviceBuffer*> slot_ptrs;
          for (int k = 0; k < slots; ++k) {
            owned.push_back(Upload(d, bytes_of(k == 0 ? accum : Noise(kN, 8 + k))));
            slot_ptrs.push_back(owned.back().get());
          }
          // CenteredRMSProp's ms (slot 1) must stay above mg^2: start it
          // high. Adam's v (slot 1) is a mean of squares: start it
          // non-negative. Otherwise sqrt yields NaNs, whose bits differ
          // between x86 and CUDA.
          if (p.kind == OptimizerKind::kCenteredRMSProp) {
            owned[1] = Upload(d, bytes_of(std::vector<double>(kN, 4.0)));
            slot_ptrs[1] = owned[1].get();
          }
          if (p.kind == OptimizerKind::kAdam) {
            std::vector<double> v = Noise(kN, 9);
            for (double& x : v) x = std::fabs(x);
            owned[1] = Upload(d, bytes_of(v));
            slot_ptrs[1] = owned[1].get();
          }
          for (int step = 0; step < 3; ++step) {
            absl::Status s =
                sparse ? d->ApplyOptimizerSparse(p, dtype, var.get(), slot_ptrs, kCols, indices,
                                                 grad.data())
                       : d->ApplyOptimizerDense(p, dtype, var.get(), slot_ptrs, grad.data(), kN);
            EXPECT_TRUE(s.ok()) << s;
          }
          std::string out = Download(d, *var);
          for (DeviceBuffer* slot : slot_ptrs) out += Download(d, *slot);
          return out;
        });
        if (!(p.kind == OptimizerKind::kFtrl && p.lr_power != -0.5)) {
          EXPECT_TRUE(got == want) << FirstDifference(dtype, got, want, kN);
          continue;
        }
        ExpectClose(dtype, got, want);
      }
    }
  }
}

}  // namespace
}  // namespace psd
