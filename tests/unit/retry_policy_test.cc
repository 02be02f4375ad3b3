// The client's one retry policy (client/src/retry_policy.h) and its
// request ids (client/src/request_ids.h): which failures are retried and
// how often, the "request id too old" refresh, and batch ids that are
// reused rather than drawn anew for every batch.
#include "retry_policy.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "request_ids.h"

namespace psd {
namespace client {
namespace internal {
namespace {

using ::testing::HasSubstr;

ClientOptions FastOptions(int max_attempts) {
  ClientOptions options;
  options.max_attempts = max_attempts;
  options.initial_backoff = absl::Microseconds(10);
  options.max_backoff = absl::Microseconds(100);
  options.retry_budget = absl::Hours(1);
  return options;
}

TEST(RetryPolicyTest, RetriesUnavailableUpToMaxAttemptsAndSaysHowMany) {
  RetryPolicy policy(FastOptions(3));
  int calls = 0;
  absl::Status s = policy.Run([&] {
    ++calls;
    return absl::UnavailableError("shard down");
  });
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("after 3 attempts"));
}

TEST(RetryPolicyTest, OtherErrorsAreReturnedAtOnceAndUnchanged) {
  RetryPolicy policy(FastOptions(5));
  int calls = 0;
  absl::Status s = policy.Run([&] {
    ++calls;
    return absl::NotFoundError("variable 'x' not found");
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(s, absl::NotFoundError("variable 'x' not found"));
}

TEST(RetryPolicyTest, NoRetryStartsAfterTheBudget) {
  ClientOptions options = FastOptions(100);
  options.retry_budget = absl::ZeroDuration();
  RetryPolicy policy(options);
  int calls = 0;
  absl::Status s = policy.Run([&] {
    ++calls;
    return absl::DeadlineExceededError("slow");
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
}

// A first attempt refused as too old was never applied: it is sent again
// under a fresh id of the process, and that is not counted as a retry.
TEST(RetryPolicyTest, FirstRefusalAsTooOldIsReissuedUnderAFreshId) {
  RetryPolicy policy(FastOptions(1));  // no retries at all
  RequestId id;
  SetNewRequestId(&id);
  std::vector<RequestId> sent;
  absl::Status s = policy.Run(
      [&] {
        sent.push_back(id);
        if (sent.size() == 1) return absl::AbortedError("request id too old: seq 1 of client 2");
        return absl::OkStatus();
      },
      &id);
  EXPECT_TRUE(s.ok()) << s;
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[1].client_id(), ProcessClientId());
  EXPECT_GT(sent[1].seq(), sent[0].seq());
}

// Once an id was sent and failed otherwise, it may have been applied: a
// later "too old" is the op's unknown outcome, returned as is.
TEST(RetryPolicyTest, TooOldOnARetryIsReturned) {
  RetryPolicy policy(FastOptions(5));
  RequestId id;
  SetNewRequestId(&id);
  const RequestId first = id;
  int calls = 0;
  absl::Status s = policy.Run(
      [&] {
        ++calls;
        if (calls == 1) return absl::UnavailableError("connection reset");
        return absl::AbortedError("request id too old");
      },
      &id);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(id.seq(), first.seq()) << "a retry keeps its id";
}

TEST(RetryPolicyTest, ReadsAreNotGivenIds) {
  RetryPolicy policy(FastOptions(5));
  int calls = 0;
  absl::Status s = policy.Run([&] {
    ++calls;
    return absl::AbortedError("request id too old");
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
}

// Batches one after another reuse one id and continue its numbering, so a
// process never takes more of a shard's client slots than it has batches
// open at once; batches open together get ids of their own.
TEST(BatchIdLeaseTest, SequentialBatchesReuseAnIdConcurrentOnesDoNot) {
  RequestId a1, a2, b1, c1;
  {
    BatchIdLease a;
    a.Next(&a1);
    a.Next(&a2);
    BatchIdLease c;  // open at the same time as a
    c.Next(&c1);
    EXPECT_NE(c1.client_id(), a1.client_id());
  }
  EXPECT_EQ(a2.seq(), a1.seq() + 1);
  BatchIdLease b;
  b.Next(&b1);
  EXPECT_TRUE(b1.client_id() == a1.client_id() || b1.client_id() == c1.client_id());
  const uint64_t previous = b1.client_id() == a1.client_id() ? a2.seq() : c1.seq();
  EXPECT_GT(b1.seq(), previous) << "a reused id continues its numbering";
  EXPECT_NE(b1.client_id(), ProcessClientId());
}

// The attempts of one operation on one part send the ids its first attempt
// drew, in call order, so a retry on a promoted backup is recognised by the
// request window the backup replicated; calls outside a carry, and calls
// the first attempt did not make, draw fresh ids.
TEST(RequestIdCarryTest, LaterAttemptsSendTheFirstAttemptsIdsInOrder) {
  RequestIdCarry carry;
  RequestId first_a, first_b;
  {
    RequestIdCarry::Attempt attempt(&carry);
    SetNewRequestId(&first_a);
    SetNewRequestId(&first_b);
  }
  RequestId outside;
  SetNewRequestId(&outside);
  EXPECT_NE(outside.seq(), first_a.seq());
  EXPECT_NE(outside.seq(), first_b.seq());

  RequestId again_a, again_b, extra;
  {
    RequestIdCarry::Attempt attempt(&carry);
    SetNewRequestId(&again_a);
    SetNewRequestId(&again_b);
    SetNewRequestId(&extra);
  }
  EXPECT_EQ(again_a.client_id(), first_a.client_id());
  EXPECT_EQ(again_a.seq(), first_a.seq());
  EXPECT_EQ(again_b.seq(), first_b.seq());
  EXPECT_NE(extra.seq(), first_a.seq());
  EXPECT_NE(extra.seq(), first_b.seq());

  // The third call's id is kept too.
  RequestId third;
  {
    RequestIdCarry::Attempt attempt(&carry);
    RequestId skip;
    SetNewRequestId(&skip);
    SetNewRequestId(&skip);
    SetNewRequestId(&third);
  }
  EXPECT_EQ(third.seq(), extra.seq());
}

// A resent id the shard calls too old is final: the attempt that first
// sent it may have been applied, and a new number would apply it again. An
// id drawn fresh is renumbered as before, and the carry keeps the new one.
TEST(RequestIdCarryTest, AResentIdCalledTooOldIsNotRenumbered) {
  RetryPolicy policy(FastOptions(1));
  RequestIdCarry carry;
  RequestId applied_under;
  {
    RequestIdCarry::Attempt attempt(&carry);
    RequestId id;
    SetNewRequestId(&id);
    std::vector<RequestId> sent;
    absl::Status s = policy.Run(
        [&] {
          sent.push_back(id);
          if (sent.size() == 1) return absl::AbortedError("request id too old: seq 1 of client 2");
          return absl::UnavailableError("the shard died after applying it");
        },
        &id);
    ASSERT_EQ(sent.size(), 2u) << "a fresh id refused as too old is renumbered";
    applied_under = sent[1];
  }
  {
    RequestIdCarry::Attempt attempt(&carry);
    RequestId id;
    SetNewRequestId(&id);
    EXPECT_EQ(id.seq(), applied_under.seq()) << "the carry resends the renumbered id";
    int calls = 0;
    absl::Status s = policy.Run(
        [&] {
          ++calls;
          return absl::AbortedError("request id too old: seq 1 of client 2");
        },
        &id);
    EXPECT_EQ(calls, 1) << "a resent id is never renumbered";
    EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
    EXPECT_EQ(id.seq(), applied_under.seq());
  }
}

// Ids drawn under other credentials are not taken from a carry made under
// the process's plain id (a shard binds an id to the token that used it).
TEST(RequestIdCarryTest, OtherCredentialsDrawTheirOwnIds) {
  RequestIdCarry carry;
  RequestId plain, keyed;
  {
    RequestIdCarry::Attempt attempt(&carry);
    SetNewRequestId(&plain);
  }
  {
    RequestIdCarry::Attempt attempt(&carry);
    SetNewRequestId(&keyed, /*credentials_key=*/12345);
  }
  EXPECT_EQ(keyed.client_id(), ProcessClientId(12345));
  EXPECT_NE(keyed.client_id(), plain.client_id());
}

}  // namespace
}  // namespace internal
}  // namespace client
}  // namespace psd
