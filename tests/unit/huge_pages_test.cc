#include "psd/huge_pages.h"

#include <cstring>
#include <memory>

#include "gtest/gtest.h"
#include "psd/tensor.h"

namespace psd {
namespace {

TEST(HugePagesTest, AdvisedBufferKeepsEveryByteWritten) {
  // Unaligned start and end: only whole 2 MiB pages inside are advised.
  constexpr size_t kBytes = (size_t{9} << 20) + 12345;
  std::unique_ptr<char[]> buffer(new char[kBytes + 7]);
  char* data = buffer.get() + 7;
  AdviseHugePages(data, kBytes);
  for (size_t i = 0; i < kBytes; ++i) data[i] = static_cast<char>(i * 7);
  for (size_t i = 0; i < kBytes; i += 4093) ASSERT_EQ(data[i], static_cast<char>(i * 7)) << i;
}

TEST(HugePagesTest, SmallAndNullBuffersAreLeftAlone) {
  char small[64];
  AdviseHugePages(small, sizeof(small));
  AdviseHugePages(nullptr, size_t{64} << 20);
  std::memset(small, 1, sizeof(small));
  EXPECT_EQ(small[63], 1);
}

TEST(HugePagesTest, BigTensorsStartZeroed) {
  Tensor t(DT_FLOAT, TensorShape{int64_t{3} << 20});  // 12 MiB
  ASSERT_EQ(t.bytes().size(), size_t{12} << 20);
  for (size_t i = 0; i < t.bytes().size(); i += 4096) ASSERT_EQ(t.bytes()[i], 0) << i;
  EXPECT_EQ(t.bytes().back(), 0);
}

}  // namespace
}  // namespace psd
