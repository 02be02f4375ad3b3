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

}  // namespace
}  // namespace psd
