// psctl's progress bar and byte formatting (client/psctl/output.h).
#include "output.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

TEST(FormatBytesTest, BinaryUnits) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 30), "3.0 GiB");
}

TEST(FormatProgressTest, BarBytesRateAndEta) {
  // A quarter of 4 GiB in 2 s: 512 MiB/s, 6 s to go.
  const std::string line =
      FormatProgress("saving writing", int64_t{1} << 30, int64_t{4} << 30, 2.0, 100);
  EXPECT_THAT(line, StartsWith("saving writing ["));
  EXPECT_THAT(line, HasSubstr("]  25%  1.0 GiB / 4.0 GiB  512.0 MiB/s  ETA 6 s"));
  const size_t open = line.find('['), close = line.find(']');
  const std::string bar = line.substr(open + 1, close - open - 1);
  EXPECT_EQ(bar.find('.'), bar.size() / 4);  // a quarter filled
  EXPECT_LE(line.size(), 100u);
}

TEST(FormatProgressTest, UnknownTotalShowsBytesAndElapsedTime) {
  const std::string line = FormatProgress("saving fencing", 0, 0, 0.4, 80);
  EXPECT_EQ(line, "saving fencing  0 B  1 s");
  EXPECT_THAT(FormatProgress("restoring reading", 2048, 0, 2, 80),
              HasSubstr("2.0 KiB  1.0 KiB/s  2 s"));
}

TEST(FormatProgressTest, NarrowTerminalDropsTheBarAndFitsTheWidth) {
  const std::string line = FormatProgress("saving", 10, 100, 1, 40);
  EXPECT_THAT(line, Not(HasSubstr("[")));
  EXPECT_LE(line.size(), 40u);
  EXPECT_THAT(line, StartsWith("saving  10%"));
}

TEST(FormatProgressTest, DoneBeyondTotalShowsFull) {
  // String tensors add length prefixes to the data file: done may pass
  // the total the shards announced.
  const std::string line = FormatProgress("saving", 120, 100, 1, 100);
  EXPECT_THAT(line, HasSubstr("100%"));
  EXPECT_THAT(line, HasSubstr("ETA 0 s"));
}

TEST(FormatProgressTest, LongTimesInMinutesAndHours) {
  EXPECT_THAT(FormatProgress("saving", 1, 1000, 1, 100), HasSubstr("ETA 16:39"));
  EXPECT_THAT(FormatProgress("saving", 1, 100000, 1, 100), HasSubstr("ETA 27:46:39"));
}

}  // namespace
}  // namespace psctl
