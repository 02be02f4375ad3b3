// Helpers shared by the integration tests: a fixture that starts one real
// shard per test and connects a client to it, status assertions, and tensor
// builders.
#ifndef PSD_TESTS_INTEGRATION_TEST_UTIL_H_
#define PSD_TESTS_INTEGRATION_TEST_UTIL_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/tensor.h"
#include "shard_process.h"

namespace psd {
namespace integration {

// A new directory under /tmp, "/tmp/<prefix>XXXXXX"; "" if it cannot be made.
inline std::string MakeTempDir(const std::string& prefix) {
  std::string path = "/tmp/" + prefix + "XXXXXX";
  return mkdtemp(path.data()) == nullptr ? std::string() : path;
}

// A loopback port free now (bound, read, closed): for a shard that must
// listen behind a proxy started before it.
inline absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: errno ", errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const int error = errno;
  close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("bind/getsockname: errno ", error));
  return static_cast<int>(ntohs(addr.sin_port));
}

inline ::testing::AssertionResult IsOk(const absl::Status& status) {
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status;
}
template <typename T>
::testing::AssertionResult IsOk(const absl::StatusOr<T>& result) {
  return IsOk(result.status());
}

// `status` has `code` and its message contains every one of `parts`.
inline ::testing::AssertionResult IsError(const absl::Status& status, absl::StatusCode code,
                                          const std::vector<std::string>& parts = {}) {
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << absl::StatusCodeToString(code) << ", got " << status;
  }
  for (const auto& part : parts) {
    if (status.message().find(part) == absl::string_view::npos) {
      return ::testing::AssertionFailure()
             << "message of " << status << " does not contain \"" << part << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}
template <typename T>
::testing::AssertionResult IsError(const absl::StatusOr<T>& result, absl::StatusCode code,
                                   const std::vector<std::string>& parts = {}) {
  return IsError(result.status(), code, parts);
}

// Like IsError, but `parts` are matched ignoring case (for op names, which
// may be spelled "assign_add" or "AssignAdd").
inline ::testing::AssertionResult IsErrorIgnoringCase(const absl::Status& status,
                                                      absl::StatusCode code,
                                                      const std::vector<std::string>& parts) {
  auto result = IsError(status, code);
  if (!result) return result;
  const std::string message = absl::AsciiStrToLower(status.message());
  for (const auto& part : parts) {
    if (message.find(absl::AsciiStrToLower(part)) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "message of " << status << " does not contain \"" << part << "\" (any case)";
    }
  }
  return ::testing::AssertionSuccess();
}

#define PSD_IT_CONCAT_INNER_(a, b) a##b
#define PSD_IT_CONCAT_(a, b) PSD_IT_CONCAT_INNER_(a, b)
// `PSD_ASSERT_OK_AND_ASSIGN(auto x, F());` in a test body.
#define PSD_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  PSD_ASSERT_OK_AND_ASSIGN_IMPL_(PSD_IT_CONCAT_(psd_result_, __LINE__), lhs, expr)
#define PSD_ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  ASSERT_TRUE(tmp.ok()) << tmp.status();               \
  lhs = std::move(tmp).value()

// A tensor from values; the shape must fit (test code: fails loudly).
template <typename T>
Tensor Vec(TensorShape shape, const std::vector<T>& values) {
  auto t = Tensor::FromVector(std::move(shape), values);
  if (!t.ok()) {
    ADD_FAILURE() << t.status();
    return Tensor();
  }
  return *std::move(t);
}
inline Tensor Strings(TensorShape shape, const std::vector<std::string>& values) {
  auto t = Tensor::FromStrings(std::move(shape), values);
  if (!t.ok()) {
    ADD_FAILURE() << t.status();
    return Tensor();
  }
  return *std::move(t);
}

// Starts a shard per test (options() says how) and connects `shard_` to it.
// TearDown checks the shard still answers, so every test also shows that
// what it did did not crash the daemon.
class ShardTest : public ::testing::Test {
 protected:
  virtual ShardProcessOptions options() const { return {}; }

  void SetUp() override {
    auto process = ShardProcess::Start(options());
    ASSERT_TRUE(process.ok()) << process.status();
    process_ = *std::move(process);
    auto client = process_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    shard_ = *std::move(client);
  }

  void TearDown() override {
    if (shard_ != nullptr && !skip_alive_check_) {
      EXPECT_TRUE(IsOk(shard_->GetInfo())) << "the shard stopped answering";
    }
  }

  // The variable's value; a failed read is a test failure (and an empty
  // tensor, which compares unequal to anything expected).
  Tensor Read(const std::string& name) {
    auto value = shard_->Read(name);
    if (!value.ok()) {
      ADD_FAILURE() << "read " << name << ": " << value.status();
      return Tensor();
    }
    return *std::move(value);
  }

  std::unique_ptr<ShardProcess> process_;
  std::unique_ptr<client::ShardClient> shard_;
  bool skip_alive_check_ = false;  // for tests that stop the shard
};

// Sets `stop` and joins `threads` when it goes out of scope, however the
// test ends (a failed ASSERT returns early; a joinable std::thread left
// behind would terminate the process).
class StopAndJoin {
 public:
  StopAndJoin(std::atomic<bool>* stop, std::vector<std::thread>* threads)
      : stop_(stop), threads_(threads) {}
  StopAndJoin(const StopAndJoin&) = delete;
  StopAndJoin& operator=(const StopAndJoin&) = delete;
  ~StopAndJoin() {
    stop_->store(true);
    for (std::thread& t : *threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::atomic<bool>* const stop_;
  std::vector<std::thread>* const threads_;
};

}  // namespace integration
}  // namespace psd

#endif  // PSD_TESTS_INTEGRATION_TEST_UTIL_H_
