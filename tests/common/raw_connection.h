// RawConnection: a plain POSIX TCP connection to a loopback port, for tests
// that talk to a server byte by byte (garbage, half requests, idle and
// flooding clients). Reads and writes give up after 30 s, so no test hangs
// on a server that never answers.
//
// Thread-safety: thread-compatible.
#ifndef PSD_TESTS_COMMON_RAW_CONNECTION_H_
#define PSD_TESTS_COMMON_RAW_CONNECTION_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

namespace psd {
namespace testing_net {

class RawConnection {
 public:
  explicit RawConnection(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ =
        fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    timeval timeout{30, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  bool Send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  void ShutdownWrite() { ::shutdown(fd_, SHUT_WR); }
  // True once the server has sent something or closed (within `ms`).
  bool Readable(int ms) {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, ms) > 0;
  }
  // Everything the server sends until it closes; false if it went 30 s
  // without sending or closing.
  bool ReadToEnd(std::string* out) {
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n > 0) {
        out->append(buffer, static_cast<size_t>(n));
      } else if (n == 0) {
        return true;
      } else if (errno != EINTR) {
        return errno != EAGAIN && errno != EWOULDBLOCK;  // a reset also ends it
      }
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

}  // namespace testing_net
}  // namespace psd

#endif  // PSD_TESTS_COMMON_RAW_CONNECTION_H_
