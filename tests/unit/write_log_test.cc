// WriteLog (server/shard/write_log.h): the ordered log a move's target and a
// replicated part's backups replay. What users rely on: every reader gets
// every write once, in order; nothing is dropped before every reader has it;
// a primary's wait returns only once its in-sync backups have the write; the
// log's memory is bounded and given back.
#include "shard/write_log.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

MoveWrite Write(int64_t value) {
  MoveWrite w;
  w.mutable_op()->mutable_count_up_to()->set_name("w");
  w.mutable_op()->mutable_count_up_to()->set_limit(value);
  return w;
}

int64_t ValueOf(const MoveWrite& w) { return w.op().count_up_to().limit(); }

TEST(WriteLogTest, EachReaderGetsEveryWriteOnceInOrderAcrossPulls) {
  WriteLog log("test", 1 << 20, nullptr);
  log.AddReader(1, 0, false);
  log.AddReader(2, 0, false);
  for (int i = 1; i <= 10; ++i) ASSERT_EQ(*log.Append(Write(i), "w"), static_cast<uint64_t>(i));
  for (uint64_t reader : {1, 2}) {
    uint64_t applied = 0;
    std::vector<int64_t> seen;
    while (applied < 10) {
      // Small pulls: a few writes each.
      auto pulled = log.Pull(reader, applied, 40, absl::ZeroDuration());
      ASSERT_TRUE(pulled.ok()) << pulled.status();
      ASSERT_FALSE(pulled->writes.empty());
      EXPECT_EQ(pulled->last_seq, 10u);
      for (const MoveWrite& w : pulled->writes) {
        EXPECT_EQ(w.seq(), applied + 1);
        applied = w.seq();
        seen.push_back(ValueOf(w));
      }
    }
    EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  }
}

TEST(WriteLogTest, AWriteIsKeptUntilEveryReaderAcknowledgedIt) {
  MemoryAccountant memory(0);
  WriteLog log("test", 1 << 20, &memory);
  log.AddReader(1, 0, false);
  log.AddReader(2, 0, false);
  ASSERT_TRUE(log.Append(Write(1), "w").ok());
  ASSERT_TRUE(log.Append(Write(2), "w").ok());
  const int64_t held = log.bytes();
  EXPECT_GT(held, 0);
  EXPECT_EQ(memory.used(), held);
  // Reader 1 has both; reader 2 has none: both kept.
  ASSERT_TRUE(log.Pull(1, 2, 1 << 20, absl::ZeroDuration()).ok());
  EXPECT_EQ(log.bytes(), held);
  auto again = log.Pull(2, 0, 1 << 20, absl::ZeroDuration());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->writes.size(), 2u);
  // Reader 2 acknowledges the first: it goes, the second stays.
  ASSERT_TRUE(log.Pull(2, 1, 1 << 20, absl::ZeroDuration()).ok());
  EXPECT_LT(log.bytes(), held);
  EXPECT_GT(log.bytes(), 0);
  EXPECT_EQ(log.acked_by_all(), 1u);
  // A reader that leaves no longer holds writes back.
  log.RemoveReader(2);
  EXPECT_EQ(log.bytes(), 0);
  EXPECT_EQ(memory.used(), 0);
  // With no reader at all, nothing is kept.
  log.RemoveReader(1);
  ASSERT_TRUE(log.Append(Write(3), "w").ok());
  EXPECT_EQ(log.bytes(), 0);
  EXPECT_EQ(memory.used(), 0);
}

TEST(WriteLogTest, APullWaitsForTheNextWrite) {
  WriteLog log("test", 1 << 20, nullptr);
  log.AddReader(1, 0, false);
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(log.Append(Write(7), "w").ok());
  });
  auto pulled = log.Pull(1, 0, 1 << 20, absl::Seconds(60));
  writer.join();
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  ASSERT_EQ(pulled->writes.size(), 1u);
  EXPECT_EQ(ValueOf(pulled->writes[0]), 7);
  // Nothing new: an empty answer once the wait ends.
  auto empty = log.Pull(1, 1, 1 << 20, absl::Milliseconds(10));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->writes.empty());
  EXPECT_EQ(empty->last_seq, 1u);
}

TEST(WriteLogTest, WaitReplicatedReturnsOnlyOnceEveryInSyncReaderHasTheWrite) {
  WriteLog log("test", 1 << 20, nullptr);
  log.AddReader(1, 0, true);
  log.AddReader(2, 0, true);
  log.AddReader(3, 0, false);  // catching up: not waited for
  const uint64_t seq = *log.Append(Write(1), "w");
  std::atomic<bool> done{false};
  absl::Status waited;
  std::thread primary([&] {
    waited = log.WaitReplicated(seq, absl::Now() + absl::Seconds(60));
    done = true;
  });
  ASSERT_TRUE(log.Pull(1, seq, 1 << 20, absl::ZeroDuration()).ok());
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_FALSE(done.load()) << "acknowledged before reader 2 had the write";
  ASSERT_TRUE(log.Pull(2, seq, 1 << 20, absl::ZeroDuration()).ok());
  primary.join();
  EXPECT_TRUE(waited.ok()) << waited;
}

TEST(WriteLogTest, WaitReplicatedNamesTheReaderBehindAndStopsWaitingForOneTakenOut) {
  WriteLog log("w/part_0's replicas", 1 << 20, nullptr);
  log.AddReader(4, 0, true);
  const uint64_t seq = *log.Append(Write(1), "w");
  absl::Status late = log.WaitReplicated(seq, absl::Now() + absl::Milliseconds(20));
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(late.message().find("reader(s) 4"), std::string::npos) << late;
  std::thread primary([&] { late = log.WaitReplicated(seq, absl::Now() + absl::Seconds(60)); });
  absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE(log.SetInSync(4, false).ok());
  primary.join();
  EXPECT_TRUE(late.ok()) << late;
  // No reader in sync: at once.
  EXPECT_TRUE(log.WaitReplicated(seq, absl::Now()).ok());
}

TEST(WriteLogTest, CapsRefuseAWriteAndLogNothing) {
  MemoryAccountant memory(0);
  const int64_t one = WriteLog::ChargedBytes(Write(1));
  WriteLog log("move 3", 2 * one, &memory);
  log.AddReader(1, 0, false);
  ASSERT_TRUE(log.Append(Write(1), "w").ok());
  ASSERT_TRUE(log.Append(Write(2), "w").ok());
  auto full = log.Append(Write(3), "w");
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("move 3"), std::string::npos) << full.status();
  EXPECT_EQ(log.last_seq(), 2u);
  EXPECT_EQ(memory.used(), 2 * one);
  // The shard's memory limit, too.
  MemoryAccountant small(one + one / 2);
  WriteLog tight("move 4", 1 << 20, &small);
  tight.AddReader(1, 0, false);
  ASSERT_TRUE(tight.Append(Write(1), "w").ok());
  auto no_room = tight.Append(Write(2), "w");
  EXPECT_EQ(no_room.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tight.last_seq(), 1u);
}

TEST(WriteLogTest, BadPullsAreRefusedAndCloseEndsEverything) {
  MemoryAccountant memory(0);
  WriteLog log("test", 1 << 20, &memory);
  log.AddReader(1, 0, false);
  log.AddReader(2, 0, false);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(log.Append(Write(i), "w").ok());
  EXPECT_EQ(log.Pull(9, 0, 1 << 20, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(log.Pull(1, 4, 1 << 20, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(log.Pull(1, 3, 1 << 20, absl::ZeroDuration()).ok());
  ASSERT_TRUE(log.Pull(2, 2, 1 << 20, absl::ZeroDuration()).ok());
  // Write 1 and 2 are gone; a reader going back before them missed them.
  EXPECT_EQ(log.Pull(1, 0, 1 << 20, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kOutOfRange);
  std::thread waiter([&] {
    auto pulled = log.Pull(1, 3, 1 << 20, absl::Seconds(60));
    EXPECT_EQ(pulled.status().code(), absl::StatusCode::kAborted);
  });
  absl::SleepFor(absl::Milliseconds(10));
  log.Close(absl::AbortedError("moved"));
  waiter.join();
  EXPECT_EQ(log.Append(Write(4), "w").status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(memory.used(), 0);
}

}  // namespace
}  // namespace psd
