// ShardLease (server/shard/shard_lease.h): what a shard believes about the
// coordinator's lease decides whether a primary may acknowledge writes, so
// its arithmetic must never extend a lease past what was granted.
#include "shard/shard_lease.h"

#include <chrono>

#include "gtest/gtest.h"

namespace psd {
namespace {

using std::chrono::milliseconds;
using Clock = ShardLease::Clock;

TEST(ShardLeaseTest, NotHeldUntilGranted) {
  ShardLease lease;
  EXPECT_FALSE(lease.Held());
  EXPECT_EQ(lease.Remaining(), std::chrono::nanoseconds(0));
  EXPECT_EQ(lease.ExpiresAt(), std::chrono::nanoseconds(0));
  EXPECT_EQ(lease.grants(), 0);
}

TEST(ShardLeaseTest, CountsFromWhenTheCallWasAskedNotWhenItWasAnswered) {
  ShardLease lease;
  const Clock::time_point asked = Clock::now();
  lease.Grant(asked, milliseconds(3000));
  // The answer came 1 s after the shard asked: 2 s are left, not 3.
  EXPECT_TRUE(lease.Held(asked + milliseconds(2999)));
  EXPECT_FALSE(lease.Held(asked + milliseconds(3000)));
  EXPECT_EQ(lease.Remaining(asked + milliseconds(1000)), milliseconds(2000));
  EXPECT_EQ(lease.Remaining(asked + milliseconds(5000)), std::chrono::nanoseconds(0));
  EXPECT_EQ(lease.ExpiresAt(), (asked + milliseconds(3000)).time_since_epoch());
}

TEST(ShardLeaseTest, ALateAnswerToAnOlderCallNeverShortensTheLease) {
  ShardLease lease;
  const Clock::time_point first = Clock::now();
  lease.Grant(first + milliseconds(500), milliseconds(3000));  // the newer call's answer
  lease.Grant(first, milliseconds(3000));                      // the older one's, late
  EXPECT_TRUE(lease.Held(first + milliseconds(3200)));
  EXPECT_EQ(lease.grants(), 2);
}

TEST(ShardLeaseTest, AZeroGrantIsNoLease) {
  ShardLease lease;
  lease.Grant(Clock::now(), milliseconds(0));
  EXPECT_FALSE(lease.Held());
  EXPECT_EQ(lease.grants(), 0);
}

TEST(ShardLeaseTest, RenewalsWhileHeldKeepTheTerm) {
  ShardLease lease;
  lease.Grant(Clock::now(), milliseconds(600000));
  const uint64_t term = lease.term();
  EXPECT_TRUE(lease.HeldInTerm(term));
  for (int i = 0; i < 3; ++i) lease.Grant(Clock::now(), milliseconds(600000));
  EXPECT_EQ(lease.term(), term);
  EXPECT_TRUE(lease.HeldInTerm(term));
}

// A shard paused past its lease (SIGSTOP) may have lost its primaries to a
// failover, then registered again: the lease it holds now is not the one
// a write applied before the pause was applied under.
TEST(ShardLeaseTest, AGrantAfterTheLeaseExpiredBeginsANewTerm) {
  ShardLease lease;
  const Clock::time_point long_ago = Clock::now() - milliseconds(60000);
  lease.Grant(long_ago, milliseconds(1000));  // expired 59 s ago
  const uint64_t before_pause = lease.term();
  EXPECT_FALSE(lease.HeldInTerm(before_pause));
  lease.Grant(Clock::now(), milliseconds(600000));
  EXPECT_TRUE(lease.Held());
  EXPECT_NE(lease.term(), before_pause);
  EXPECT_FALSE(lease.HeldInTerm(before_pause));
  EXPECT_TRUE(lease.HeldInTerm(lease.term()));
}

// An answer to a call asked while the lease was held, arriving only once it
// had expired, still ends the term: the shard was without a lease between.
TEST(ShardLeaseTest, AnAnswerThatArrivesAfterTheLeaseExpiredBeginsANewTerm) {
  ShardLease lease;
  const Clock::time_point asked = Clock::now() - milliseconds(2000);
  lease.Grant(asked, milliseconds(1000));  // held until 1 s ago
  const uint64_t term = lease.term();
  lease.Grant(asked + milliseconds(500), milliseconds(600000));  // asked while held
  EXPECT_TRUE(lease.Held());
  EXPECT_FALSE(lease.HeldInTerm(term));
}

TEST(ShardLeaseTest, ALateAnswerThatExtendsNothingBeginsNoTerm) {
  ShardLease lease;
  lease.Grant(Clock::now(), milliseconds(600000));
  const uint64_t term = lease.term();
  lease.Grant(Clock::now() - milliseconds(60000), milliseconds(1000));
  EXPECT_TRUE(lease.HeldInTerm(term));
}

}  // namespace
}  // namespace psd
