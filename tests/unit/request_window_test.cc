// RequestWindow: exactly-once retries, and the bound on remembered clients
// that a caller inventing client ids cannot use to evict a live client.
#include "shard/request_window.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

using ::testing::HasSubstr;

RequestId Id(uint64_t client, uint64_t seq) {
  RequestId id;
  id.set_client_id(client);
  id.set_seq(seq);
  return id;
}

// Runs a new request to completion with `version` as its result.
void RunNew(RequestWindow* window, const RequestId& id, uint64_t version) {
  auto begun = window->Begin(id);
  ASSERT_TRUE(begun.ok()) << begun.status();
  ASSERT_FALSE(begun->has_value()) << "not new";
  RequestWindow::Result result;
  result.version = version;
  window->Finish(id, result);
}

TEST(RequestWindowTest, RetryGetsTheFirstResult) {
  RequestWindow window(8, 4);
  RunNew(&window, Id(1, 1), 41);
  auto retry = window.Begin(Id(1, 1));
  ASSERT_TRUE(retry.ok());
  ASSERT_TRUE(retry->has_value());
  EXPECT_EQ((*retry)->version, 41u);
}

TEST(RequestWindowTest, NewClientsCannotEvictLiveOnes) {
  RequestWindow window(8, /*max_clients=*/2, /*min_idle=*/absl::Minutes(10));
  RunNew(&window, Id(1, 1), 10);
  RunNew(&window, Id(2, 1), 20);
  // A flood of made-up client ids is refused, not let in at the expense of
  // client 1 and 2.
  for (uint64_t fake = 100; fake < 110; ++fake) {
    auto begun = window.Begin(Id(fake, 1));
    EXPECT_EQ(begun.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(begun.status().message(), HasSubstr("max_clients"));
  }
  // Client 1's retry is still recognised: applied once.
  auto retry = window.Begin(Id(1, 1));
  ASSERT_TRUE(retry.ok());
  ASSERT_TRUE(retry->has_value());
  EXPECT_EQ((*retry)->version, 10u);
}

TEST(RequestWindowTest, IdleClientsMakeRoom) {
  RequestWindow window(8, /*max_clients=*/2, /*min_idle=*/absl::ZeroDuration());
  RunNew(&window, Id(1, 1), 10);
  RunNew(&window, Id(2, 1), 20);
  RunNew(&window, Id(3, 1), 30);  // client 1, the least recently seen, goes
  auto retry = window.Begin(Id(2, 1));
  ASSERT_TRUE(retry.ok());
  ASSERT_TRUE(retry->has_value());
  EXPECT_EQ((*retry)->version, 20u);
}

TEST(RequestWindowTest, AClientIdBelongsToTheCallerThatFirstUsedIt) {
  RequestWindow window(8, 4);
  constexpr CallerKey kOwner = 0x1111;
  constexpr CallerKey kOther = 0x2222;
  ASSERT_TRUE(window.Begin(Id(7, 1), kOwner).ok());
  RequestWindow::Result result;
  result.version = 5;
  window.Finish(Id(7, 1), result);

  // Another token's holder can neither read the cached result (a retry of
  // the owner's request) nor run new requests under the owner's id, which
  // would take seqs the owner will send and get its writes skipped.
  auto replay = window.Begin(Id(7, 1), kOther);
  EXPECT_EQ(replay.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(replay.status().message(), HasSubstr("belongs to another caller"));
  auto squat = window.Begin(Id(7, 2), kOther);
  EXPECT_EQ(squat.status().code(), absl::StatusCode::kPermissionDenied);
  // The anonymous caller is another caller too.
  EXPECT_EQ(window.Begin(Id(7, 3)).status().code(), absl::StatusCode::kPermissionDenied);

  // Nothing was recorded for them: the owner's seq 2 is new, its retry of
  // seq 1 still gets the first result.
  auto own = window.Begin(Id(7, 2), kOwner);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_FALSE(own->has_value());
  window.Finish(Id(7, 2), RequestWindow::Result{});
  auto retry = window.Begin(Id(7, 1), kOwner);
  ASSERT_TRUE(retry.ok()) << retry.status();
  ASSERT_TRUE(retry->has_value());
  EXPECT_EQ((*retry)->version, 5u);
}

}  // namespace
}  // namespace psd
