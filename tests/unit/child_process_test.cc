// ChildProcess (common/testing/child_process.h): a child started by a test
// keeps none of the test's descriptors, so a connection the test closes
// ends for its peer even while children started after it live.
#include "child_process.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>

#include "gtest/gtest.h"

namespace psd {
namespace integration {
namespace {

TEST(ChildProcessTest, AChildDoesNotHoldTheTestsSocketsOpen) {
  // Without SOCK_CLOEXEC, as Boost.Asio (the fault proxy) opens sockets.
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto child = ChildProcess::Start({"/bin/sleep", "60"}, "", absl::Seconds(30), absl::Seconds(1));
  ASSERT_TRUE(child.ok()) << child.status();
  close(fds[1]);
  // The peer sees the end at once, not when the child exits.
  pollfd p{fds[0], POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, /*timeout_ms=*/20000), 1) << "the child holds the closed end open";
  char byte;
  EXPECT_EQ(read(fds[0], &byte, 1), 0);
  close(fds[0]);
  EXPECT_FALSE((*child)->Exited());
}

}  // namespace
}  // namespace integration
}  // namespace psd
