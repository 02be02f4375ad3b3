// FaultProxy: a TCP proxy on loopback that breaks connections on demand,
// for tests of what a client does when the network fails under it: every
// connection cut at once, each connection cut after its client has sent a
// given number of bytes (mid-message), or forwarding stopped while the
// connections stay open (a shard that no longer answers).
//
// One thread accepts; each connection has a thread that forwards both ways.
// Thread-safety: thread-safe.
#ifndef PSD_TESTS_COMMON_FAULT_PROXY_H_
#define PSD_TESTS_COMMON_FAULT_PROXY_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace psd {
namespace testing {

class FaultProxy {
 public:
  // Listens on a free loopback port and forwards to 127.0.0.1:target_port.
  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(int target_port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return absl::InternalError(absl::StrCat("socket: errno ", errno));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(fd, 64) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      const int error = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("proxy listen: errno ", error));
    }
    return std::unique_ptr<FaultProxy>(new FaultProxy(fd, ntohs(addr.sin_port), target_port));
  }

  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  ~FaultProxy() {
    stop_.store(true);
    accept_thread_.join();
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
    ::close(listen_fd_);
  }

  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  // Closes every open connection now (new ones are accepted as usual).
  void CutAll() { generation_.fetch_add(1); }

  // Cuts each connection once its client has sent `bytes` bytes through it
  // (0: never). Applies to connections accepted from now on.
  void CutUpstreamAfter(int64_t bytes) { cut_after_.store(bytes); }

  // While on, nothing is forwarded either way (the bytes wait in the
  // kernel's buffers); connections stay open.
  void SetBlackhole(bool on) { blackhole_.store(on); }

  // Connections accepted so far, and cut by a fault.
  int64_t connections() const { return connections_.load(); }
  int64_t cuts() const { return cuts_.load(); }

 private:
  FaultProxy(int listen_fd, int port, int target_port)
      : listen_fd_(listen_fd), port_(port), target_port_(target_port) {
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  void AcceptLoop() {
    while (!stop_.load()) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      const int upstream = ConnectTarget();
      if (upstream < 0) {
        ::close(client);
        continue;
      }
      connections_.fetch_add(1);
      absl::MutexLock lock(&mu_);
      threads_.emplace_back([this, client, upstream] { Forward(client, upstream); });
    }
  }

  int ConnectTarget() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(target_port_));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd);
      return -1;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
  }

  // Forwards between the two sockets until either closes or a fault cuts
  // the connection.
  void Forward(int client, int upstream) {
    const int64_t generation = generation_.load();
    const int64_t cut_after = cut_after_.load();
    int64_t sent_up = 0;
    char buffer[64 << 10];
    bool open = true;
    while (open && !stop_.load()) {
      if (generation_.load() != generation) {
        cuts_.fetch_add(1);
        break;
      }
      if (blackhole_.load()) {
        ::usleep(5000);
        continue;
      }
      pollfd fds[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
      if (::poll(fds, 2, 20) <= 0) continue;
      for (int i = 0; i < 2 && open; ++i) {
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const int from = i == 0 ? client : upstream;
        const int to = i == 0 ? upstream : client;
        size_t want = sizeof(buffer);
        if (i == 0 && cut_after > 0) want = std::min<int64_t>(want, cut_after - sent_up);
        const ssize_t n = ::read(from, buffer, want);
        if (n <= 0) {
          open = false;
          break;
        }
        if (!WriteAll(to, buffer, static_cast<size_t>(n))) open = false;
        if (i == 0) {
          sent_up += n;
          if (cut_after > 0 && sent_up >= cut_after) {
            // The rest of what the client is sending never arrives.
            cuts_.fetch_add(1);
            open = false;
          }
        }
      }
    }
    ::shutdown(client, SHUT_RDWR);
    ::shutdown(upstream, SHUT_RDWR);
    ::close(client);
    ::close(upstream);
  }

  static bool WriteAll(int fd, const char* data, size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
      if (w <= 0) {
        if (w < 0 && errno == EINTR) continue;
        return false;
      }
      data += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  const int listen_fd_;
  const int port_;
  const int target_port_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> blackhole_{false};
  std::atomic<int64_t> generation_{0};
  std::atomic<int64_t> cut_after_{0};
  std::atomic<int64_t> connections_{0};
  std::atomic<int64_t> cuts_{0};
  std::thread accept_thread_;
  absl::Mutex mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace testing
}  // namespace psd

#endif  // PSD_TESTS_COMMON_FAULT_PROXY_H_
