#include <string>

#include "psd/crc32c.h"
#include "gtest/gtest.h"

namespace psd::crc32c {
namespace {

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Value("123456789"), 0xE3069283u);
  EXPECT_EQ(Value(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Value(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(static_cast<char>(i));
    descending.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(Value(ascending), 0x46DD794Eu);
  EXPECT_EQ(Value(descending), 0x113FDB5Cu);
  EXPECT_EQ(Value(""), 0u);
}

TEST(Crc32cTest, FloatValuesFromFixtures) {
  // float 0.5 and 0.0 little-endian, with the CRCs the TF fixtures store.
  EXPECT_EQ(Value(std::string("\x00\x00\x00\x3f", 4)), 0x26973e52u);
  EXPECT_EQ(Value(std::string(4, '\0')), 0x48674bc7u);
  EXPECT_EQ(Mask(0x26973e52u), 0x1f273806u);
  EXPECT_EQ(Mask(0x48674bc7u), 0x3a117ba6u);
}

TEST(Crc32cTest, ExtendInChunksEqualsWhole) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data.push_back(static_cast<char>(i * 7 + 3));
  const uint32_t whole = Value(data);
  for (size_t split : {0, 1, 7, 8, 9, 63, 500, 999, 1000}) {
    uint32_t c = Extend(0, data.data(), split);
    c = Extend(c, data.data() + split, data.size() - split);
    EXPECT_EQ(c, whole) << split;
  }
}

TEST(Crc32cTest, PortableMatchesDispatchedForEveryLengthAndAlignment) {
  std::string data;
  for (int i = 0; i < 300; ++i) data.push_back(static_cast<char>(i * 131 + 17));
  for (size_t start = 0; start < 9; ++start) {
    for (size_t n = 0; n + start <= data.size(); n += 13) {
      EXPECT_EQ(ExtendPortable(0x12345678u, data.data() + start, n),
                Extend(0x12345678u, data.data() + start, n));
    }
  }
}

TEST(Crc32cTest, MaskRoundTripsAndDiffers) {
  for (uint32_t c : {0u, 1u, 0xE3069283u, 0xffffffffu}) {
    EXPECT_NE(Mask(c), c);
    EXPECT_NE(Mask(Mask(c)), Mask(c));
    EXPECT_EQ(Unmask(Mask(c)), c);
  }
  EXPECT_EQ(Mask(0), 0xa282ead8u);
}

}  // namespace
}  // namespace psd::crc32c
