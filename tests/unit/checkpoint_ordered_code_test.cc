#include <string>

#include "absl/strings/escaping.h"
#include "checkpoint/ordered_code.h"
#include "checkpoint/tensor_slice.h"
#include "gtest/gtest.h"

namespace psd::checkpoint {
namespace {

std::string Hex(const std::string& s) { return absl::BytesToHexString(s); }

std::string Signed(int64_t v) {
  std::string out;
  ordered_code::WriteSignedNumIncreasing(&out, v);
  return Hex(out);
}

TEST(OrderedCodeTest, SignedNumIncreasingSpecVectors) {
  EXPECT_EQ(Signed(0), "80");
  EXPECT_EQ(Signed(3), "83");
  EXPECT_EQ(Signed(5), "85");
  EXPECT_EQ(Signed(-1), "7f");
  EXPECT_EQ(Signed(-64), "40");
  EXPECT_EQ(Signed(64), "c040");
  EXPECT_EQ(Signed(100), "c064");
  EXPECT_EQ(Signed(8191), "dfff");
  EXPECT_EQ(Signed(8192), "e02000");
  EXPECT_EQ(Signed(-65), "3fbf");
  EXPECT_EQ(Signed(-2048), "3800");
  EXPECT_EQ(Signed(0x424242), "f0424242");
}

TEST(OrderedCodeTest, SignedNumIncreasingRoundTripsAndSorts) {
  std::vector<int64_t> values = {INT64_MIN,
                                 INT64_MIN + 1,
                                 -(1ll << 62),
                                 -(1ll << 55) - 1,
                                 -(1ll << 48),
                                 -8193,
                                 -8192,
                                 -65,
                                 -64,
                                 -1,
                                 0,
                                 1,
                                 63,
                                 64,
                                 8191,
                                 8192,
                                 1ll << 48,
                                 (1ll << 55),
                                 (1ll << 62) + 5,
                                 INT64_MAX - 1,
                                 INT64_MAX};
  std::string previous;
  for (size_t i = 0; i < values.size(); ++i) {
    std::string enc;
    ordered_code::WriteSignedNumIncreasing(&enc, values[i]);
    absl::string_view in = enc;
    int64_t back = 0;
    ASSERT_TRUE(ordered_code::ReadSignedNumIncreasing(&in, &back)) << values[i];
    EXPECT_EQ(back, values[i]);
    EXPECT_TRUE(in.empty());
    if (i > 0) {
      EXPECT_LT(previous, enc) << values[i];
    }
    previous = enc;
  }
}

TEST(OrderedCodeTest, NumIncreasingAndString) {
  std::string out;
  ordered_code::WriteNumIncreasing(&out, 0);
  ordered_code::WriteNumIncreasing(&out, 2);
  ordered_code::WriteNumIncreasing(&out, 300);
  EXPECT_EQ(Hex(out),
            "000102"
            "02012c");
  absl::string_view in = out;
  uint64_t v;
  ASSERT_TRUE(ordered_code::ReadNumIncreasing(&in, &v));
  EXPECT_EQ(v, 0u);
  ASSERT_TRUE(ordered_code::ReadNumIncreasing(&in, &v));
  EXPECT_EQ(v, 2u);
  ASSERT_TRUE(ordered_code::ReadNumIncreasing(&in, &v));
  EXPECT_EQ(v, 300u);

  std::string s;
  ordered_code::WriteString(&s, std::string("a\x00"
                                            "b\xff",
                                            4));
  EXPECT_EQ(Hex(s), "6100ff62ff000001");
  absl::string_view sin = s;
  std::string back;
  ASSERT_TRUE(ordered_code::ReadString(&sin, &back));
  EXPECT_EQ(back, std::string("a\x00"
                              "b\xff",
                              4));
  EXPECT_TRUE(sin.empty());
  absl::string_view cut = absl::string_view(s).substr(0, 5);
  EXPECT_FALSE(ordered_code::ReadString(&cut, &back));
}

TEST(SliceKeyTest, SpecExamples) {
  EXPECT_EQ(Hex(EncodeTensorNameSlice("v", *TensorSlice::Parse("0,5:0,3"))),
            "0076000101028085"
            "8083");
  EXPECT_EQ(Hex(EncodeTensorNameSlice("v", *TensorSlice::Parse("5,5:0,3"))),
            "0076000101028585"
            "8083");
  EXPECT_EQ(Hex(EncodeTensorNameSlice("root/v0", *TensorSlice::Parse("0,2:0,10"))),
            "00726f6f742f7630000101028082808a");
  EXPECT_EQ(Hex(EncodeTensorNameSlice("w", *TensorSlice::Parse("-:100,28"))),
            "0077000101028"
            "07fc0649c");
}

TEST(SliceKeyTest, DecodeRoundTrips) {
  for (const char* spec : {"0,5:0,3", "-:100,28", "7,1", "", "-:-:3,4"}) {
    const TensorSlice slice = *TensorSlice::Parse(spec);
    std::string name;
    TensorSlice back;
    ASSERT_TRUE(DecodeTensorNameSlice(EncodeTensorNameSlice("a/b\x01", slice), &name, &back).ok());
    EXPECT_EQ(name, "a/b\x01");
    EXPECT_EQ(back, slice) << spec;
    EXPECT_EQ(back.ToString(), spec);
  }
  std::string name;
  TensorSlice slice;
  EXPECT_FALSE(DecodeTensorNameSlice("plain_name", &name, &slice).ok());
  std::string key = EncodeTensorNameSlice("v", *TensorSlice::Parse("0,5"));
  EXPECT_FALSE(DecodeTensorNameSlice(key + "x", &name, &slice).ok());
  EXPECT_FALSE(DecodeTensorNameSlice(key.substr(0, key.size() - 1), &name, &slice).ok());
}

TEST(TensorSliceTest, ProtoBytesMatchTensorFlow) {
  // The slices[] of the spec's example entry for v[10,3] split along axis 0.
  tf::TensorSliceProto proto;
  TensorSlice::Parse("0,5:0,3")->ToProto(&proto);
  EXPECT_EQ(Hex(proto.SerializeAsString()), "0a0210050a021003");
  TensorSlice::Parse("5,5:0,3")->ToProto(&proto);
  EXPECT_EQ(Hex(proto.SerializeAsString()), "0a04080510050a021003");
  TensorSlice::Parse("-:0,0")->ToProto(&proto);
  EXPECT_EQ(Hex(proto.SerializeAsString()), "0a000a021000");
  EXPECT_EQ(*TensorSlice::FromProto(proto), *TensorSlice::Parse("-:0,0"));
}

TEST(TensorSliceTest, ParseRejectsGarbage) {
  for (const char* bad : {"1", "a,b", "1,2,3", "-1,2", "0,-2", "0,1:"}) {
    EXPECT_FALSE(TensorSlice::Parse(bad).ok()) << bad;
  }
}

TEST(TensorSliceTest, FitsShapeAndIntersect) {
  const TensorShape shape{10, 3};
  const TensorSlice a = *TensorSlice::Parse("0,5:-");
  EXPECT_TRUE(a.CheckFits(shape).ok());
  EXPECT_FALSE(TensorSlice::Parse("8,5:-")->CheckFits(shape).ok());
  EXPECT_FALSE(TensorSlice::Parse("0,5")->CheckFits(shape).ok());
  EXPECT_EQ(a.SliceShape(shape), (TensorShape{5, 3}));
  EXPECT_TRUE(TensorSlice::Parse("0,10:0,3")->CoversAll(shape));
  EXPECT_FALSE(a.CoversAll(shape));
  TensorSlice overlap;
  ASSERT_TRUE(TensorSlice::Intersect(a.Resolved(shape),
                                     TensorSlice::Parse("4,6:1,1")->Resolved(shape), &overlap));
  EXPECT_EQ(overlap.ToString(), "4,1:1,1");
  EXPECT_FALSE(TensorSlice::Intersect(a.Resolved(shape),
                                      TensorSlice::Parse("5,5:-")->Resolved(shape), &overlap));
}

}  // namespace
}  // namespace psd::checkpoint
