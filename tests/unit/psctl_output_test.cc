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

// `vars list` / `vars show` tell a table from a dense variable and give its
// dim and key dtype; the JSON keeps the existing members and adds "kind".
TEST(VariableKindTest, TablesShowTheirKindDimAndKeyDtype) {
  psd::VariableHandle dense;
  dense.set_partitioned(true);
  dense.add_parts();
  dense.add_parts();
  EXPECT_EQ(VariableKindText(dense), "dense");
  EXPECT_EQ(VariableKindJson(dense), ",\"kind\":\"dense\"");
  EXPECT_EQ(PartitioningColumn(dense), "2 parts on axis 0");

  psd::VariableHandle table = dense;
  table.mutable_embedding()->set_embedding_dim(16);
  table.mutable_embedding()->set_key_dtype(psd::DT_INT64);
  EXPECT_EQ(VariableKindText(table), "table (dim 16, key int64)");
  EXPECT_EQ(VariableKindJson(table),
            ",\"kind\":\"table\",\"embedding_dim\":16,\"key_dtype\":\"int64\",\"slot_of\":\"\"");
  EXPECT_EQ(PartitioningColumn(table), "2 parts by key hash");
  table.mutable_embedding()->set_slot_of("user/emb");
  table.mutable_embedding()->set_key_dtype(psd::DT_INT32);
  EXPECT_EQ(VariableKindText(table), "slot of user/emb (dim 16, key int32)");
  table.set_partitioned(false);
  EXPECT_EQ(PartitioningColumn(table), "-");
}

TEST(EmbeddingStatsTest, PartCountsOrDashesWhenTheShardGaveNone) {
  EXPECT_THAT(
      EmbeddingStatsHeader(),
      ::testing::ElementsAre("ROWS", "MEMORY", "ADMITTED", "FILTERED(LOOKUPS/UPDATES)", "EVICTED"));
  EXPECT_THAT(EmbeddingStatsColumns(nullptr), ::testing::ElementsAre("-", "-", "-", "-", "-"));
  psd::VariableInfo info;
  info.set_bytes(3 << 20);
  EXPECT_THAT(EmbeddingStatsColumns(&info), ::testing::ElementsAre("-", "-", "-", "-", "-"))
      << "a shard that does not report table counts";
  psd::EmbeddingStats* stats = info.mutable_embedding();
  stats->set_rows(1000);
  stats->set_pending_keys(7);
  stats->set_admitted(1200);
  stats->set_filtered_lookups(30);
  stats->set_filtered_updates(4);
  stats->set_evicted(200);
  stats->set_deleted(5);
  EXPECT_THAT(EmbeddingStatsColumns(&info),
              ::testing::ElementsAre("1000", "3.0 MiB", "1200", "30/4", "200"));
  EXPECT_EQ(EmbeddingStatsJson(info),
            "{\"rows\":1000,\"bytes\":3145728,\"pending_keys\":7,\"admitted\":1200,"
            "\"filtered_lookups\":30,\"filtered_updates\":4,\"evicted\":200,\"deleted\":5}");
}

}  // namespace
}  // namespace psctl
