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

}  // namespace
}  // namespace psd
