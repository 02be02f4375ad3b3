#include "psd/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/float16.h"
#include "psd/uninitialized.h"
#include "psd/wire.h"

namespace psd {
namespace {

using ::testing::HasSubstr;

TEST(TensorShapeTest, RejectsNegativeDimensionNamingIt) {
  auto shape = TensorShape::Make({3, -2}, "shape of variable 'v'");
  ASSERT_FALSE(shape.ok());
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("variable 'v': dimension 1 is -2"));
}

TEST(TensorShapeTest, RejectsAbsurdElementCount) {
  auto shape = TensorShape::Make({int64_t{1} << 40, int64_t{1} << 40}, "v");
  ASSERT_FALSE(shape.ok());
  EXPECT_THAT(shape.status().message(), HasSubstr("too many elements"));
  EXPECT_TRUE(TensorShape::Make({0, int64_t{1} << 62}, "v").ok());
}

// A zero dimension makes the element count 0, but the other dimensions'
// product is still computed (row_elements(), a gather's result rows, the
// multiplication order of num_elements()): it must fit as well. Such shapes
// overflowed int64 (undefined behavior) before.
TEST(TensorShapeTest, RejectsAbsurdDimensionsBesideAZero) {
  for (const std::vector<int64_t>& dims :
       {std::vector<int64_t>{0, int64_t{1} << 62, 1 << 30},
        std::vector<int64_t>{int64_t{1} << 40, int64_t{1} << 40, 0}}) {
    auto shape = TensorShape::Make(dims, "v");
    ASSERT_FALSE(shape.ok()) << TensorShape(dims).ToString();
    EXPECT_THAT(shape.status().message(), HasSubstr("too many elements"));
  }
  auto ok = TensorShape::Make({0, int64_t{1} << 31, int64_t{1} << 31}, "v");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->num_elements(), 0);
  EXPECT_EQ(ok->row_elements(), int64_t{1} << 62);
}

TEST(TensorTest, WireRoundTripKeepsEveryDtype) {
  for (DataType dt : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16, DT_INT8, DT_INT16, DT_INT32,
                      DT_INT64, DT_UINT8, DT_BOOL}) {
    Tensor t(dt, TensorShape{2, 3});
    for (size_t i = 0; i < t.bytes().size(); ++i) (*t.mutable_bytes())[i] = static_cast<char>(i % 2);
    TensorProto proto;
    TensorToProto(t, &proto);
    auto back = TensorFromProto(proto, "t");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, t) << DataTypeName(dt);
  }
}

TEST(TensorTest, StringsEncodeAsVarintLengthsThenBytes) {
  auto t = Tensor::FromStrings(TensorShape{3}, {"a", std::string(200, 'x'), ""});
  ASSERT_TRUE(t.ok());
  TensorProto proto;
  TensorToProto(*t, &proto);
  // 1 byte for length 1, 2 bytes for 200 (varint), 1 byte for 0.
  ASSERT_EQ(proto.content().size(), 4u + 201u);
  EXPECT_EQ(proto.content()[0], 1);
  EXPECT_EQ(static_cast<uint8_t>(proto.content()[1]), 0xc8);
  EXPECT_EQ(static_cast<uint8_t>(proto.content()[2]), 0x01);
  auto back = TensorFromProto(proto, "t");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, *t);
}

TEST(TensorTest, MalformedStringContentIsInvalidArgument) {
  TensorProto proto;
  proto.set_dtype(DT_STRING);
  proto.mutable_shape()->add_dims(2);
  proto.set_content(std::string("\x05" "ab", 3));  // claims 5 bytes, has 2
  auto t = TensorFromProto(proto, "value for variable 's'");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("variable 's': malformed string tensor"));
}

TEST(TensorTest, ContentLengthMustMatchShape) {
  TensorProto proto;
  proto.set_dtype(DT_FLOAT);
  proto.mutable_shape()->add_dims(3);
  proto.set_content(std::string(11, '\0'));
  auto t = TensorFromProto(proto, "value for variable 'v'");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("content has 11 bytes, but float32[3] needs 3 x 4"));
}

TEST(TensorTest, UnknownDtypeIsNamed) {
  TensorProto proto;
  proto.set_dtype(static_cast<DataType>(8));  // complex64: not stored by psd
  auto t = TensorFromProto(proto, "value");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("unsupported dtype dtype(8)"));
}

TEST(TensorTest, LazyDescriptionIsBuiltOnlyForAFailure) {
  TensorProto proto;
  TensorToProto(Tensor::Scalar<float>(2.0f), &proto);
  int built = 0;
  auto describe = [&] {
    ++built;
    return std::string("value for variable 'v'");
  };
  EXPECT_TRUE(ValidateTensorProto(proto, describe).ok());
  EXPECT_EQ(built, 0);
  proto.mutable_content()->push_back('x');
  auto bad = ValidateTensorProto(proto, describe);
  EXPECT_EQ(built, 1);
  EXPECT_EQ(bad.status(), ValidateTensorProto(proto, "value for variable 'v'").status());
  EXPECT_THAT(bad.status().message(), HasSubstr("value for variable 'v': content has 5 bytes"));
}

TEST(TensorTest, FromBytesAdoptsExactlyTheElementBytes) {
  std::string bytes(12, '\0');
  const float values[3] = {1.5f, -2.0f, 3.25f};
  std::memcpy(bytes.data(), values, sizeof(values));
  auto t = Tensor::FromBytes(DT_FLOAT, TensorShape{3}, bytes);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->ToVector<float>(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  auto wrong = Tensor::FromBytes(DT_FLOAT, TensorShape{4}, bytes);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong.status().message(), HasSubstr("float32[4] needs 16 bytes, got 12"));
  EXPECT_FALSE(Tensor::FromBytes(DT_STRING, TensorShape{}, "").ok());
}

// A tensor that borrows a caller's buffer (a numpy array's) reads it in
// place and never writes it: copies own their bytes, and so does the tensor
// once its elements are asked for to be written.
TEST(TensorTest, ABorrowingTensorReadsTheCallersBytesAndNeverWritesThem) {
  float caller[3] = {1.5f, -2.0f, 3.25f};
  const absl::string_view bytes(reinterpret_cast<const char*>(caller), sizeof(caller));
  auto view = Tensor::Borrowing(DT_FLOAT, TensorShape{3}, bytes);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE(view->borrows());
  EXPECT_EQ(view->bytes().data(), bytes.data());
  EXPECT_EQ(view->ToVector<float>(), (std::vector<float>{1.5f, -2.0f, 3.25f}));

  Tensor copy = *view;
  EXPECT_FALSE(copy.borrows());
  EXPECT_NE(copy.bytes().data(), bytes.data());
  EXPECT_EQ(copy, *view);
  Tensor assigned(DT_INT32, TensorShape{7});
  assigned = *view;
  EXPECT_FALSE(assigned.borrows());
  EXPECT_EQ(assigned, *view);

  Tensor moved = std::move(*view);
  EXPECT_TRUE(moved.borrows());
  EXPECT_EQ(moved.bytes().data(), bytes.data());
  Tensor written = moved;  // the copy, written through data()
  moved.data<float>()[0] = 9.0f;
  EXPECT_FALSE(moved.borrows());
  EXPECT_EQ(caller[0], 1.5f);
  EXPECT_EQ(moved.data<float>()[0], 9.0f);
  EXPECT_EQ(written.data<float>()[0], 1.5f);

  auto second = Tensor::Borrowing(DT_FLOAT, TensorShape{3}, bytes);
  ASSERT_TRUE(second.ok());
  second->mutable_bytes()->at(0) = 0x7f;
  EXPECT_EQ(caller[0], 1.5f);
  // A read's destination: the borrowed buffer is not reused.
  auto third = Tensor::Borrowing(DT_FLOAT, TensorShape{3}, bytes);
  ASSERT_TRUE(third.ok());
  third->ResetForOverwrite(DT_FLOAT, TensorShape{3});
  EXPECT_FALSE(third->borrows());
  third->data<float>()[1] = 4.0f;
  EXPECT_EQ(caller[1], -2.0f);

  auto wrong = Tensor::Borrowing(DT_FLOAT, TensorShape{4}, bytes);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong.status().message(), HasSubstr("float32[4] needs 16 bytes, got 12"));
  EXPECT_FALSE(Tensor::Borrowing(DT_STRING, TensorShape{}, "").ok());
  auto empty = Tensor::Borrowing(DT_FLOAT, TensorShape{0}, absl::string_view());
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->num_elements(), 0);
}

TEST(TensorTest, ResetForOverwriteKeepsAFittingBufferAndReplacesOthers) {
  Tensor t(DT_FLOAT, TensorShape{6});
  t.data<float>()[5] = 7.0f;
  const char* buffer = t.bytes().data();
  t.ResetForOverwrite(DT_FLOAT, TensorShape{2, 3});
  EXPECT_EQ(t.bytes().data(), buffer);
  EXPECT_EQ(t.shape(), (TensorShape{2, 3}));
  EXPECT_EQ(t.data<float>()[5], 7.0f);  // old bytes stay until overwritten
  // Another dtype of the same byte size is a new, zeroed tensor.
  t.ResetForOverwrite(DT_INT32, TensorShape{6});
  EXPECT_EQ(t.dtype(), DT_INT32);
  EXPECT_EQ(t.data<int32_t>()[5], 0);
  // Another size too.
  t.ResetForOverwrite(DT_INT32, TensorShape{2});
  EXPECT_EQ(t.bytes().size(), 8u);
  t.ResetForOverwrite(DT_STRING, TensorShape{3});
  EXPECT_EQ(t.strings(), std::vector<std::string>(3));
  EXPECT_TRUE(t.bytes().empty());
}

// DecodeStrings is total: a negative element count is an error, not a
// std::length_error thrown out of vector::reserve.
TEST(ResizeUninitializedTest, GrowsWithoutWritingTheNewBytes) {
  EXPECT_TRUE(ResizeUninitializedSkipsFill()) << "this standard library zero-fills";
  std::string s(100, 'x');
  s.resize(10);  // keeps the buffer, and its bytes past the new end
  const char* buffer = s.data();
  ResizeUninitialized(&s, 100);
  ASSERT_EQ(s.size(), 100u);
  EXPECT_EQ(s.data(), buffer) << "grew within its capacity: no new buffer";
  // Bytes 0..9 kept; byte 10 is the old terminator; the rest were never
  // written (no zero fill), so they still hold the old 'x's.
  EXPECT_EQ(s, std::string(10, 'x') + '\0' + std::string(89, 'x'));
  EXPECT_EQ(s.c_str()[100], '\0');
  ResizeUninitialized(&s, 4);  // shrinking is resize()
  EXPECT_EQ(s, "xxxx");
  std::string empty;
  ResizeUninitialized(&empty, 1 << 20);
  EXPECT_EQ(empty.size(), size_t{1} << 20);
  EXPECT_EQ(empty.capacity(), size_t{1} << 20);
}

TEST(TensorTest, ForOverwriteAllocatesTheElementBytesOfEveryDtype) {
  for (DataType dtype :
       {DT_BOOL, DT_INT8, DT_INT16, DT_HALF, DT_INT32, DT_FLOAT, DT_INT64, DT_DOUBLE}) {
    Tensor t = Tensor::ForOverwrite(dtype, TensorShape{3, 5, 7});
    EXPECT_EQ(t.dtype(), dtype);
    EXPECT_EQ(t.shape(), (TensorShape{3, 5, 7}));
    EXPECT_EQ(t.bytes().size(), 105 * DataTypeSize(dtype));
  }
  EXPECT_EQ(Tensor::ForOverwrite(DT_FLOAT, TensorShape{0, 4}).bytes().size(), 0u);
  // Strings are never left uninitialized: "" as a new tensor's.
  EXPECT_EQ(Tensor::ForOverwrite(DT_STRING, TensorShape{2}), Tensor(DT_STRING, TensorShape{2}));
}

TEST(TensorTest, DecodeStringsRefusesNegativeCount) {
  auto decoded = DecodeStrings(std::string("\x01" "a", 2), -1, "value");
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
}

// A bool tensor's bytes come from outside (a request, a checkpoint file):
// any non-zero byte prints as true, without loading it as a bool (undefined
// behavior that the sanitizer build reports).
TEST(TensorTest, DebugStringOfBoolBytesOtherThanZeroOrOne) {
  auto t = Tensor::FromBytes(DT_BOOL, TensorShape{3}, std::string("\x00\x01\x81", 3));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->DebugString(), "bool[3] {false, true, true}");
}

TEST(Float16Test, HalfRoundTripsRepresentableValuesAndRoundsToNearestEven) {
  for (float f : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f}) {
    EXPECT_EQ(static_cast<float>(half(f)), f);
  }
  EXPECT_EQ(half(1.0f).bits, 0x3c00);
  EXPECT_EQ(half(65520.0f).bits, 0x7c00);  // rounds up to infinity
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to even (1).
  EXPECT_EQ(half(1.0f + 0.00048828125f).bits, 0x3c00);
  EXPECT_TRUE(std::isnan(static_cast<float>(half(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(Float16Test, BFloat16KeepsTopBitsRounded) {
  EXPECT_EQ(bfloat16(1.0f).bits, 0x3f80);
  EXPECT_EQ(static_cast<float>(bfloat16(3.0f)), 3.0f);
  EXPECT_EQ(static_cast<float>(bfloat16(1.00390625f)), 1.0f);  // tie to even
  EXPECT_TRUE(std::isnan(static_cast<float>(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
}

}  // namespace
}  // namespace psd
