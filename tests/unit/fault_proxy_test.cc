// The fault-injecting proxy (tests/common/fault_proxy.h) against a loopback
// echo server: bytes intact both ways, each fault doing what it says (delay,
// blackhole, refuse, cuts), the control lines, and loopback-only targets.
// Waits are bounded; no timing is asserted beyond lower bounds a delay
// guarantees.
#include "fault_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace psd {
namespace testing {
namespace {

using Direction = FaultProxy::Direction;

// A blocking echo server on loopback: a thread per connection sends back
// what it reads and counts it; records how each connection ended.
class EchoServer {
 public:
  EchoServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listen_fd_, 64) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "echo server cannot listen: " << std::strerror(errno);
      return;
    }
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~EchoServer() {
    stop_.store(true);
    if (accept_thread_.joinable()) accept_thread_.join();
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
    ::close(listen_fd_);
  }

  int port() const { return port_; }
  int64_t received() const { return received_.load(); }
  int accepted() const { return accepted_.load(); }
  // Connections that ended (EOF or an error), and those that ended by a
  // reset or error rather than an orderly end.
  int ended() const { return ended_.load(); }

  // Waits (bounded) until `n` connections have ended.
  bool WaitEnded(int n) const {
    for (int i = 0; i < 1000 && ended() < n; ++i) absl::SleepFor(absl::Milliseconds(10));
    return ended() >= n;
  }

 private:
  void AcceptLoop() {
    while (!stop_.load()) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      accepted_.fetch_add(1);
      absl::MutexLock lock(&mu_);
      threads_.emplace_back([this, fd] { Echo(fd); });
    }
  }

  void Echo(int fd) {
    std::vector<char> buffer(256 << 10);
    while (!stop_.load()) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n <= 0) break;
      received_.fetch_add(n);
      size_t off = 0;
      while (off < static_cast<size_t>(n)) {
        const ssize_t w = ::send(fd, buffer.data() + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) break;
        off += static_cast<size_t>(w);
      }
      if (off < static_cast<size_t>(n)) break;
    }
    ::close(fd);
    ended_.fetch_add(1);
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> received_{0};
  std::atomic<int> accepted_{0};
  std::atomic<int> ended_{0};
  std::thread accept_thread_;
  absl::Mutex mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool SendAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
bool SendAll(int fd, const std::string& s) { return SendAll(fd, s.data(), s.size()); }

// Reads until `n` bytes, the end of the stream, an error, or `timeout`
// without a byte; returns what it read.
std::string ReadUpTo(int fd, size_t n, absl::Duration timeout = absl::Seconds(30),
                     int* error = nullptr) {
  std::string out;
  std::vector<char> buffer(256 << 10);
  while (out.size() < n) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <= 0) break;
    const ssize_t r = ::read(fd, buffer.data(), std::min(buffer.size(), n - out.size()));
    if (r <= 0) {
      if (error != nullptr) *error = r < 0 ? errno : 0;
      break;
    }
    out.append(buffer.data(), static_cast<size_t>(r));
  }
  return out;
}

// Whether the stream has ended (EOF or reset) within `timeout`.
bool Ended(int fd, absl::Duration timeout = absl::Seconds(30)) {
  char c;
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <= 0) return false;
  return ::read(fd, &c, 1) <= 0;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen());
  return s;
}

class FaultProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(echo_.port(), 0);
    auto proxy = FaultProxy::Start(echo_.port());
    ASSERT_TRUE(proxy.ok()) << proxy.status();
    proxy_ = *std::move(proxy);
  }

  EchoServer echo_;
  std::unique_ptr<FaultProxy> proxy_;
};

TEST_F(FaultProxyTest, ForwardsALargePayloadIntactBothWays) {
  constexpr size_t kBytes = 24 << 20;
  const std::string payload = RandomBytes(kBytes, 1);
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  // Written and read at once: the echo streams back while it is sent.
  std::thread writer([&] { EXPECT_TRUE(SendAll(fd, payload)); });
  const std::string back = ReadUpTo(fd, kBytes);
  writer.join();
  EXPECT_EQ(back.size(), kBytes);
  EXPECT_TRUE(back == payload) << "the echo differs from what was sent";
  const FaultProxyStats stats = proxy_->stats();
  EXPECT_EQ(stats.bytes_up, static_cast<int64_t>(kBytes));
  EXPECT_EQ(stats.bytes_down, static_cast<int64_t>(kBytes));
  EXPECT_EQ(stats.accepted, 1);
  EXPECT_EQ(stats.open, 1);
  // An orderly end is passed on, both ways.
  ::shutdown(fd, SHUT_WR);
  EXPECT_TRUE(Ended(fd));
  ::close(fd);
  EXPECT_TRUE(echo_.WaitEnded(1));
  for (int i = 0; i < 1000 && proxy_->stats().open > 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(proxy_->stats().open, 0);
  EXPECT_EQ(proxy_->stats().cuts, 0);
}

TEST_F(FaultProxyTest, ManyConnectionsAtOnce) {
  constexpr int kConnections = 16;
  std::vector<std::thread> threads;
  std::atomic<int> intact{0};
  for (int i = 0; i < kConnections; ++i) {
    threads.emplace_back([&, i] {
      const std::string payload = RandomBytes(300 << 10, 100 + i);
      const int fd = Connect(proxy_->port());
      if (fd < 0) return;
      std::thread writer([&] { SendAll(fd, payload); });
      if (ReadUpTo(fd, payload.size()) == payload) intact.fetch_add(1);
      writer.join();
      ::close(fd);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(intact.load(), kConnections);
  EXPECT_EQ(proxy_->connections(), kConnections);
}

TEST_F(FaultProxyTest, DelayHoldsEveryChunkAndKeepsTheOrder) {
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "warm"));
  ASSERT_EQ(ReadUpTo(fd, 4), "warm");

  proxy_->SetDelay(Direction::kUp, absl::Milliseconds(300));
  const absl::Time start = absl::Now();
  ASSERT_TRUE(SendAll(fd, "slow"));
  // Lifted while the first chunk waits: the next cannot overtake it.
  absl::SleepFor(absl::Milliseconds(20));
  proxy_->SetDelay(Direction::kUp, absl::ZeroDuration());
  ASSERT_TRUE(SendAll(fd, "fast"));
  EXPECT_EQ(ReadUpTo(fd, 8), "slowfast");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));

  // Both directions add up.
  proxy_->SetDelay(absl::Milliseconds(150));
  const absl::Time again = absl::Now();
  ASSERT_TRUE(SendAll(fd, "both"));
  EXPECT_EQ(ReadUpTo(fd, 4), "both");
  EXPECT_GE(absl::Now() - again, absl::Milliseconds(300));
  ::close(fd);
}

TEST_F(FaultProxyTest, CutAllResetsBothSides) {
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "x"));
  ASSERT_EQ(ReadUpTo(fd, 1), "x");
  proxy_->CutAll();
  EXPECT_EQ(proxy_->stats().open, 0);  // closed when CutAll returns
  int error = 0;
  EXPECT_EQ(ReadUpTo(fd, 1, absl::Seconds(30), &error), "");
  EXPECT_EQ(error, ECONNRESET) << std::strerror(error);
  EXPECT_TRUE(echo_.WaitEnded(1)) << "the target's side stayed open";
  EXPECT_EQ(proxy_->cuts(), 1);
  ::close(fd);
  // New connections are forwarded as before.
  const int fd2 = Connect(proxy_->port());
  ASSERT_GE(fd2, 0);
  ASSERT_TRUE(SendAll(fd2, "y"));
  EXPECT_EQ(ReadUpTo(fd2, 1), "y");
  ::close(fd2);
}

TEST_F(FaultProxyTest, BlackholeHoldsTheBytesAndKeepsTheConnection) {
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "a"));
  ASSERT_EQ(ReadUpTo(fd, 1), "a");

  proxy_->SetBlackhole(true);
  const int64_t received = echo_.received();
  ASSERT_TRUE(SendAll(fd, "held"));
  // Nothing arrives, and nothing ends.
  EXPECT_EQ(ReadUpTo(fd, 4, absl::Milliseconds(500)), "");
  EXPECT_EQ(echo_.received(), received);
  EXPECT_EQ(echo_.ended(), 0);
  EXPECT_EQ(proxy_->stats().open, 1);
  // A new connection during the partition is accepted but carries nothing.
  const int fd2 = Connect(proxy_->port());
  ASSERT_GE(fd2, 0);
  ASSERT_TRUE(SendAll(fd2, "new"));
  EXPECT_EQ(ReadUpTo(fd2, 3, absl::Milliseconds(200)), "");

  // Healed: everything held arrives, in order, on the same connections.
  proxy_->SetBlackhole(false);
  EXPECT_EQ(ReadUpTo(fd, 4), "held");
  EXPECT_EQ(ReadUpTo(fd2, 3), "new");
  EXPECT_EQ(proxy_->cuts(), 0);
  ::close(fd);
  ::close(fd2);
}

TEST_F(FaultProxyTest, OneWayBlackhole) {
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  proxy_->SetBlackhole(Direction::kDown, true);
  ASSERT_TRUE(SendAll(fd, "ping"));
  // The target gets it; its answer is held.
  for (int i = 0; i < 1000 && echo_.received() < 4; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(echo_.received(), 4);
  EXPECT_EQ(ReadUpTo(fd, 4, absl::Milliseconds(300)), "");
  proxy_->Heal();
  EXPECT_EQ(ReadUpTo(fd, 4), "ping");
  ::close(fd);
}

TEST_F(FaultProxyTest, HeldBytesAreBoundedPerConnection) {
  // A small cap: a blackholed connection stops reading once it holds that
  // much, so the sender's writes stall instead of the proxy's memory growing.
  FaultProxyOptions options;
  options.target = absl::StrCat("127.0.0.1:", echo_.port());
  options.max_buffered_bytes = 4096;
  auto small = FaultProxy::Start(options);
  ASSERT_TRUE(small.ok()) << small.status();
  (*small)->SetBlackhole(true);
  const int fd = Connect((*small)->port());
  ASSERT_GE(fd, 0);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  const std::string chunk(64 << 10, 'z');
  int64_t sent = 0;
  // Bounded: at most 256 MiB offered; stops once writes have stalled for a
  // while (the proxy had every chance to read more).
  int stalls = 0;
  for (int i = 0; i < 4096 && stalls < 5; ++i) {
    const ssize_t w = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (w > 0) {
      sent += w;
      stalls = 0;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      ++stalls;
      absl::SleepFor(absl::Milliseconds(50));
    } else {
      break;
    }
  }
  // The kernel's socket buffers take some; the proxy takes 4 KiB.
  EXPECT_LT(sent, int64_t{64} << 20) << "the proxy took everything offered";
  EXPECT_EQ(echo_.received(), 0);
  ::close(fd);
}

TEST_F(FaultProxyTest, RefuseResetsNewConnections) {
  proxy_->SetRefuse(true);
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);  // the kernel accepts; the proxy resets it at once
  EXPECT_TRUE(Ended(fd));
  ::close(fd);
  EXPECT_EQ(proxy_->stats().refused, 1);
  EXPECT_EQ(echo_.accepted(), 0);
  proxy_->SetRefuse(false);
  const int fd2 = Connect(proxy_->port());
  ASSERT_GE(fd2, 0);
  ASSERT_TRUE(SendAll(fd2, "ok"));
  EXPECT_EQ(ReadUpTo(fd2, 2), "ok");
  ::close(fd2);
}

TEST_F(FaultProxyTest, DropAfterBytesCutsEachConnectionThere) {
  proxy_->SetDropAfterBytes(Direction::kUp, 1000);
  for (int round = 0; round < 2; ++round) {
    const int64_t before = echo_.received();
    const int fd = Connect(proxy_->port());
    ASSERT_GE(fd, 0);
    const std::string payload = RandomBytes(5000, round);
    SendAll(fd, payload);  // may fail once the cut is seen
    // The target got exactly the first 1000 bytes, then the end.
    EXPECT_TRUE(echo_.WaitEnded(round + 1));
    EXPECT_EQ(echo_.received() - before, 1000);
    std::string back = ReadUpTo(fd, 5000);
    EXPECT_LE(back.size(), 1000u);
    EXPECT_EQ(back, payload.substr(0, back.size()));
    ::close(fd);
  }
  EXPECT_EQ(proxy_->cuts(), 2);
  // Off: whole payloads again.
  proxy_->SetDropAfterBytes(Direction::kUp, 0);
  const int fd = Connect(proxy_->port());
  const std::string payload = RandomBytes(5000, 7);
  ASSERT_TRUE(SendAll(fd, payload));
  EXPECT_EQ(ReadUpTo(fd, 5000), payload);
  ::close(fd);
}

TEST_F(FaultProxyTest, DropAfterBytesAppliesToOpenConnectionsFromTheCall) {
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  const std::string first = RandomBytes(3000, 1);
  ASSERT_TRUE(SendAll(fd, first));
  ASSERT_EQ(ReadUpTo(fd, 3000), first);
  // Counted from here: 3000 bytes already through do not count.
  proxy_->SetDropAfterBytes(Direction::kDown, 100);
  ASSERT_TRUE(SendAll(fd, RandomBytes(500, 2)));
  EXPECT_EQ(ReadUpTo(fd, 500).size(), 100u);
  EXPECT_TRUE(echo_.WaitEnded(1));
  EXPECT_EQ(proxy_->cuts(), 1);
  ::close(fd);
}

TEST_F(FaultProxyTest, CutAfterBytesIsOneShot) {
  proxy_->CutAfterBytes(Direction::kUp, 2500);
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  // 2000 bytes pass; the cut falls 500 bytes into the next 2000.
  const std::string a = RandomBytes(2000, 3);
  ASSERT_TRUE(SendAll(fd, a));
  ASSERT_EQ(ReadUpTo(fd, 2000), a);
  SendAll(fd, RandomBytes(2000, 4));
  EXPECT_TRUE(echo_.WaitEnded(1));
  EXPECT_EQ(echo_.received(), 2500);
  ::close(fd);
  // Disarmed: the next connection is whole.
  const int fd2 = Connect(proxy_->port());
  const std::string b = RandomBytes(10000, 5);
  ASSERT_TRUE(SendAll(fd2, b));
  EXPECT_EQ(ReadUpTo(fd2, 10000), b);
  EXPECT_EQ(proxy_->cuts(), 1);
  ::close(fd2);
}

TEST_F(FaultProxyTest, DestroyedWithOpenAndHeldConnections) {
  const int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "a"));
  ASSERT_EQ(ReadUpTo(fd, 1), "a");
  proxy_->SetDelay(absl::Seconds(3600));
  ASSERT_TRUE(SendAll(fd, "never"));
  const int fd2 = Connect(proxy_->port());
  proxy_.reset();  // must not wait for the delay
  EXPECT_TRUE(Ended(fd));
  EXPECT_TRUE(Ended(fd2));
  ::close(fd);
  ::close(fd2);
}

TEST_F(FaultProxyTest, ATargetThatIsDownResetsTheConnection) {
  EchoServer* gone = new EchoServer();
  const int port = gone->port();
  delete gone;
  auto proxy = FaultProxy::Start(port);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  const int fd = Connect((*proxy)->port());
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(Ended(fd));
  ::close(fd);
  // The refusal is counted before the accepted side is closed: wait for both.
  for (int i = 0; i < 1000 && ((*proxy)->stats().refused == 0 || (*proxy)->stats().open != 0);
       ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ((*proxy)->stats().refused, 1);
  EXPECT_EQ((*proxy)->stats().open, 0);
}

TEST(FaultProxyTargetTest, OnlyLoopbackTargets) {
  for (const char* target : {"8.8.8.8:53", "10.1.2.3:80", "192.168.0.1:1", "0.0.0.0:80"}) {
    FaultProxyOptions options;
    options.target = target;
    auto proxy = FaultProxy::Start(options);
    EXPECT_EQ(proxy.status().code(), absl::StatusCode::kInvalidArgument) << target;
  }
  for (const char* target : {"nonsense", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999"}) {
    FaultProxyOptions options;
    options.target = target;
    EXPECT_EQ(FaultProxy::Start(options).status().code(), absl::StatusCode::kInvalidArgument)
        << target;
  }
  for (const char* target : {"127.0.0.1:9", "localhost:9", "127.1.2.3:9"}) {
    FaultProxyOptions options;
    options.target = target;
    EXPECT_TRUE(FaultProxy::Start(options).ok()) << target;
  }
}

TEST_F(FaultProxyTest, ControlLines) {
  EXPECT_EQ(*proxy_->Command("delay 50ms"), "ok");
  EXPECT_EQ(*proxy_->Command("delay up 0"), "ok");
  EXPECT_EQ(*proxy_->Command("blackhole down on"), "ok");
  EXPECT_EQ(*proxy_->Command("  BLACKHOLE off\r"), "ok");
  EXPECT_EQ(*proxy_->Command("drop-after up 4096"), "ok");
  EXPECT_EQ(*proxy_->Command("cut-after 10"), "ok");
  EXPECT_EQ(*proxy_->Command("refuse on"), "ok");
  EXPECT_EQ(*proxy_->Command("cut"), "ok");
  EXPECT_EQ(*proxy_->Command("heal"), "ok");
  auto stats = proxy_->Command("stats");
  ASSERT_TRUE(stats.ok());
  EXPECT_NE(stats->find("accepted=0"), std::string::npos) << *stats;
  EXPECT_NE(stats->find("bytes_up=0"), std::string::npos) << *stats;
  for (const char* bad : {"", "delay", "delay fast", "delay -5ms", "blackhole maybe",
                          "blackhole sideways on", "drop-after -1", "drop-after lots",
                          "refuse up on", "cut now", "explode"}) {
    EXPECT_EQ(proxy_->Command(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // heal lifted the refusal: connections go through.
  const int fd = Connect(proxy_->port());
  ASSERT_TRUE(SendAll(fd, "z"));
  EXPECT_EQ(ReadUpTo(fd, 1), "z");
  ::close(fd);
}

}  // namespace
}  // namespace testing
}  // namespace psd
