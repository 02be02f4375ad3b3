#include "psd/huge_pages.h"

#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <vector>

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

TEST(HugePagesTest, PrefaultMakesEveryPageResidentWithoutChangingAByte) {
  constexpr size_t kBytes = size_t{8} << 20;
  void* mapped = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  char* data = static_cast<char*>(mapped);
  data[5] = 'x';  // one page touched before
  auto resident = [&] {
    std::vector<unsigned char> pages(kBytes / 4096);
    EXPECT_EQ(mincore(data, kBytes, pages.data()), 0);
    size_t n = 0;
    for (unsigned char p : pages) n += p & 1;
    return n;
  };
  EXPECT_LT(resident(), kBytes / 4096);
  // Linux 5.14 has MADV_POPULATE_WRITE; an older kernel prefaults nothing.
  if (PrefaultForWrite(data + 3, kBytes - 3)) {
    EXPECT_EQ(resident(), kBytes / 4096);
  }
  EXPECT_EQ(data[5], 'x');
  for (size_t i = 4096; i < kBytes; i += 4093) ASSERT_EQ(data[i], 0) << i;
  EXPECT_FALSE(PrefaultForWrite(data, 4096));  // small: left alone
  EXPECT_FALSE(PrefaultForWrite(nullptr, kBytes));
  munmap(mapped, kBytes);
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
