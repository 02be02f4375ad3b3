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

// A part that moves takes the ids its writes used: the new shard answers a
// retry from the moved window and never runs it again; its own newer ids
// keep their slots; moved ids the merge pushed out of the window are kept
// beside it and answered; the shard's own older ones are refused as too
// old, not run.
TEST(RequestWindowTest, AnImportedWindowAnswersRetriesOfMovedWrites) {
  RequestWindow source(8, 4);
  RunNew(&source, Id(1, 6), 60);
  RunNew(&source, Id(1, 13), 130);
  RequestWindowState moved;
  source.Export(&moved);

  RequestWindow target(8, 4);
  RunNew(&target, Id(1, 3), 30);    // the client's earlier write to a part already here
  RunNew(&target, Id(1, 14), 140);  // newer than the moved seq 6, in its slot (14 % 8 == 6)
  target.Import(moved);
  auto retry = target.Begin(Id(1, 13));
  ASSERT_TRUE(retry.ok()) << retry.status();
  ASSERT_TRUE(retry->has_value()) << "a moved write ran again";
  EXPECT_EQ((*retry)->version, 130u);
  auto own = target.Begin(Id(1, 14));
  ASSERT_TRUE(own.ok() && own->has_value());
  EXPECT_EQ((*own)->version, 140u);
  // Seq 6 lost its slot to 14 and is a window behind: kept beside the
  // ring, so its retry is answered (never run again).
  auto pushed_out = target.Begin(Id(1, 6));
  ASSERT_TRUE(pushed_out.ok()) << pushed_out.status();
  ASSERT_TRUE(pushed_out->has_value()) << "a moved write ran again";
  EXPECT_EQ((*pushed_out)->version, 60u);
  // The target's own earlier write, still held, is answered from the
  // window (its result), however far the merged window moved on; an id the
  // window no longer holds is refused as too old.
  auto earlier = target.Begin(Id(1, 3));
  ASSERT_TRUE(earlier.ok() && earlier->has_value()) << earlier.status();
  EXPECT_EQ((*earlier)->version, 30u);
  auto unknown = target.Begin(Id(1, 2));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kAborted);
}

// Request ids are shard-wide but a move or backup carries one group: the
// window it takes holds only that group's entries (its parts' writes, and
// those the group brought with it before), so a write to another group is
// never answered as done on a shard whose copy of that group lacks it.
TEST(RequestWindowTest, AGroupsExportHoldsOnlyItsOwnEntries) {
  RequestWindow source(8, 4);
  const uint64_t mine = RequestWindow::ScopeOf("w"), other = RequestWindow::ScopeOf("v");
  auto run = [&](RequestWindow* window, const RequestId& id, uint64_t scope) {
    ASSERT_TRUE(window->Begin(id).ok());
    RequestWindow::Result result;
    result.scope = scope;
    result.version = id.seq();
    window->Finish(id, result);
  };
  run(&source, Id(1, 5), mine);
  run(&source, Id(1, 6), other);
  const absl::flat_hash_set<uint64_t> scopes = {mine};
  RequestWindowState moved;
  source.Export(&moved, &scopes);
  ASSERT_EQ(moved.clients_size(), 1);
  ASSERT_EQ(moved.clients(0).entries_size(), 1);
  EXPECT_EQ(moved.clients(0).entries(0).seq(), 5u);

  // Imported under the group's scope, the entry goes on with the group.
  RequestWindow target(8, 4);
  const uint64_t group = RequestWindow::ScopeOf("group of w");
  target.Import(moved, group);
  auto retry_mine = target.Begin(Id(1, 5));
  ASSERT_TRUE(retry_mine.ok() && retry_mine->has_value()) << "a moved write ran again";
  auto retry_other = target.Begin(Id(1, 6));
  ASSERT_TRUE(retry_other.ok()) << retry_other.status();
  EXPECT_FALSE(retry_other->has_value()) << "another group's write was answered as done";
  const absl::flat_hash_set<uint64_t> again = {group};
  RequestWindowState onward;
  target.Export(&onward, &again);
  ASSERT_EQ(onward.clients_size(), 1);
  ASSERT_EQ(onward.clients(0).entries_size(), 1);
  EXPECT_EQ(onward.clients(0).entries(0).seq(), 5u);
}

TEST(RequestWindowTest, AnImportedClientKeepsItsOwner) {
  RequestWindow source(8, 4);
  ASSERT_TRUE(source.Begin(Id(1, 1), /*caller=*/7).ok());
  source.Finish(Id(1, 1), {});
  RequestWindowState moved;
  source.Export(&moved);
  RequestWindow target(8, 4);
  target.Import(moved);
  EXPECT_EQ(target.Begin(Id(1, 1), /*caller=*/8).status().code(),
            absl::StatusCode::kPermissionDenied);
  auto owner = target.Begin(Id(1, 1), /*caller=*/7);
  ASSERT_TRUE(owner.ok());
  EXPECT_TRUE(owner->has_value());
}

// Many short-lived clients (trainer processes that each ran a few steps)
// fit: a client's window is sized by its use, not a whole ring each.
TEST(RequestWindowTest, ManyShortLivedClientsFitInTheMemoryOfAFewBusyOnes) {
  RequestWindow window;  // the shard's defaults
  for (uint64_t client = 1; client <= 5000; ++client) {
    for (uint64_t seq = 1; seq <= 3; ++seq) {
      auto begun = window.Begin(Id(client, seq));
      ASSERT_TRUE(begun.ok()) << "client " << client << ": " << begun.status();
      ASSERT_FALSE(begun->has_value());
      RequestWindow::Result result;
      result.version = client * 10 + seq;
      window.Finish(Id(client, seq), result);
    }
  }
  // Every one of them is still answered from its window.
  for (uint64_t client : {1, 2500, 5000}) {
    auto retry = window.Begin(Id(client, 2));
    ASSERT_TRUE(retry.ok());
    ASSERT_TRUE(retry->has_value());
    EXPECT_EQ((*retry)->version, client * 10 + 2);
  }
}

// A busy client's window grows to the whole window and keeps every request
// in it, in any order of arrival; one past the window is too old.
TEST(RequestWindowTest, AGrowingWindowKeepsEveryRequestInsideIt) {
  RequestWindow window(64, 4);
  // Out of order: odd seqs first, then even, so slots collide as it grows.
  for (uint64_t seq = 1; seq <= 64; seq += 2) RunNew(&window, Id(1, seq), seq);
  for (uint64_t seq = 2; seq <= 64; seq += 2) RunNew(&window, Id(1, seq), seq);
  for (uint64_t seq = 1; seq <= 64; ++seq) {
    auto retry = window.Begin(Id(1, seq));
    ASSERT_TRUE(retry.ok()) << seq << ": " << retry.status();
    ASSERT_TRUE(retry->has_value()) << seq << " would run again";
    EXPECT_EQ((*retry)->version, seq);
  }
  RunNew(&window, Id(1, 65), 65);
  EXPECT_EQ(window.Begin(Id(1, 1)).status().code(), absl::StatusCode::kAborted);
  auto kept = window.Begin(Id(1, 2));
  ASSERT_TRUE(kept.ok());
  ASSERT_TRUE(kept->has_value());
}

// Runs a new request of `scope` to completion.
void RunScoped(RequestWindow* window, const RequestId& id, uint64_t scope, uint64_t version) {
  auto begun = window->Begin(id, kAnonymousCaller, true, false, scope);
  ASSERT_TRUE(begun.ok()) << begun.status();
  ASSERT_FALSE(begun->has_value()) << "not new";
  RequestWindow::Result result;
  result.version = version;
  result.scope = scope;
  window->Finish(id, result);
}

// A client's ids are process-wide: while a write of one variable waits for
// its retry (a failover), the client's requests to other variables of the
// shard move its newest id far past the window. The retry is still run if
// the window never forgot a request of its variable at or after it, and
// answered from the window ever after.
TEST(RequestWindowTest, ARetryFarBehindTheClientsOtherVariablesRunsOnce) {
  RequestWindow window(8, 4);
  const uint64_t w = RequestWindow::ScopeOf("w"), v = RequestWindow::ScopeOf("v");
  for (uint64_t seq = 100; seq < 200; ++seq) RunScoped(&window, Id(1, seq), v, seq);
  auto retried = window.Begin(Id(1, 10), kAnonymousCaller, true, false, w);
  ASSERT_TRUE(retried.ok()) << retried.status();
  ASSERT_FALSE(retried->has_value());
  RequestWindow::Result result;
  result.version = 7;
  result.scope = w;
  window.Finish(Id(1, 10), result);
  auto again = window.Begin(Id(1, 10), kAnonymousCaller, true, false, w);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(again->has_value()) << "run twice";
  EXPECT_EQ((*again)->version, 7u);
  // Without a scope the plain rule holds: a window behind is too old.
  EXPECT_EQ(window.Begin(Id(1, 11)).status().code(), absl::StatusCode::kAborted);
}

// A request of a variable whose entry the window forgot (a later request
// of the same variable pushed it out) is refused as too old, never run
// again; so is one at or below an imported window's bottom, whatever its
// variable (the other shard's forgotten requests are not known by scope).
TEST(RequestWindowTest, AForgottenRequestOfTheSameVariableIsTooOld) {
  RequestWindow window(8, 4);
  const uint64_t w = RequestWindow::ScopeOf("w"), v = RequestWindow::ScopeOf("v");
  RunScoped(&window, Id(1, 1), w, 1);
  for (uint64_t seq = 2; seq < 40; ++seq) RunScoped(&window, Id(1, seq), seq == 20 ? w : v, seq);
  auto forgotten = window.Begin(Id(1, 1), kAnonymousCaller, true, false, w);
  EXPECT_EQ(forgotten.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(forgotten.status().message(), HasSubstr("request id too old"));
  // Seq 20 of w was forgotten too, so 15 (never seen) may have run: too old.
  EXPECT_EQ(window.Begin(Id(1, 15), kAnonymousCaller, true, false, w).status().code(),
            absl::StatusCode::kAborted);
  // Of v, every seq up to 31 was forgotten.
  EXPECT_EQ(window.Begin(Id(1, 25), kAnonymousCaller, true, false, v).status().code(),
            absl::StatusCode::kAborted);

  RequestWindow source(8, 4);
  RunScoped(&source, Id(2, 500), w, 500);
  RequestWindowState state;
  source.Export(&state);
  RequestWindow target(8, 4);
  target.Import(state, RequestWindow::ScopeOf("group"));
  EXPECT_EQ(target.Begin(Id(2, 300), kAnonymousCaller, true, false, v).status().code(),
            absl::StatusCode::kAborted);
  auto imported = target.Begin(Id(2, 500), kAnonymousCaller, true, false, w);
  ASSERT_TRUE(imported.ok() && imported->has_value()) << "an imported write ran again";
  auto above_bottom = target.Begin(Id(2, 495), kAnonymousCaller, true, false, v);
  ASSERT_TRUE(above_bottom.ok()) << above_bottom.status();
  EXPECT_FALSE(above_bottom->has_value());
}

// A thread's write that reached the shard (its backup had it, promoted
// since) is retried after the process's other threads sent the shard more
// than a window of requests: the ring forgot it, but it is the newest
// forgotten request of its variable, so its retry gets its result, as a
// count_up_to's value, instead of "request id too old". A forgotten
// request that failed is not kept: its retry is too old.
TEST(RequestWindowTest, TheRetryOfTheNewestForgottenRequestOfAVariableGetsItsResult) {
  RequestWindow window(8, 4);
  const uint64_t w = RequestWindow::ScopeOf("w"), v = RequestWindow::ScopeOf("v");
  const uint64_t f = RequestWindow::ScopeOf("f");
  auto begun = window.Begin(Id(1, 1), kAnonymousCaller, true, false, w);
  ASSERT_TRUE(begun.ok() && !begun->has_value());
  RequestWindow::Result ticket;
  ticket.version = 5;
  ticket.old_value = 41;
  ticket.scope = w;
  window.Finish(Id(1, 1), ticket);
  begun = window.Begin(Id(1, 2), kAnonymousCaller, true, false, f);
  ASSERT_TRUE(begun.ok() && !begun->has_value());
  RequestWindow::Result failed;
  failed.status = absl::OutOfRangeError("Reached limit of 41");
  failed.scope = f;
  window.Finish(Id(1, 2), failed);
  for (uint64_t seq = 3; seq < 40; ++seq) RunScoped(&window, Id(1, seq), v, seq);
  for (int retry = 0; retry < 2; ++retry) {
    auto answered = window.Begin(Id(1, 1), kAnonymousCaller, true, false, w);
    ASSERT_TRUE(answered.ok()) << answered.status();
    ASSERT_TRUE(answered->has_value()) << "run twice";
    EXPECT_TRUE((*answered)->status.ok());
    EXPECT_EQ((*answered)->version, 5u);
    EXPECT_EQ((*answered)->old_value, 41);
  }
  EXPECT_EQ(window.Begin(Id(1, 2), kAnonymousCaller, true, false, f).status().code(),
            absl::StatusCode::kAborted);
  // Of another variable, the same seq is no answer.
  EXPECT_EQ(window.Begin(Id(1, 1), kAnonymousCaller, true, false, v).status().code(),
            absl::StatusCode::kAborted);
}

// All windows together are bounded: past max_entries a new client waits
// (RESOURCE_EXHAUSTED) while the others are active, and a busy client
// whose window cannot grow has its request refused with nothing recorded.
TEST(RequestWindowTest, AllWindowsTogetherStayUnderMaxEntries) {
  RequestWindow window(64, /*max_clients=*/100, /*min_idle=*/absl::Minutes(10),
                       /*max_entries=*/16);
  for (uint64_t client = 1; client <= 4; ++client) RunNew(&window, Id(client, 1), client);
  auto refused = window.Begin(Id(5, 1));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("max_entries"));
  // Client 1 has 4 slots; a fifth request inside its window needs more.
  for (uint64_t seq = 2; seq <= 4; ++seq) RunNew(&window, Id(1, seq), seq);
  auto full = window.Begin(Id(1, 5));
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  // Nothing was recorded: its earlier requests still answer, seq 5 is new
  // once there is room.
  for (uint64_t seq = 1; seq <= 4; ++seq) {
    auto retry = window.Begin(Id(1, seq));
    ASSERT_TRUE(retry.ok());
    ASSERT_TRUE(retry->has_value());
  }
}

}  // namespace
}  // namespace psd
