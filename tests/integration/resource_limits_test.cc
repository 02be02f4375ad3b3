// The bounded resources of a real `psd shard` process, attacked from outside
// on loopback: a flood of idle connections to its HTTP port (/metrics,
// /healthz, /readyz) with the process's descriptors limited by prlimit, and
// many open gRPC reflection streams (the one synchronous service). Each test
// checks what a user cares about: gRPC and /healthz keep answering, the
// process does not burn a core at the descriptor limit, its thread count
// stays bounded. Waits are bounded loops; the only time figure asserted is
// CPU seconds consumed, against a generous bound.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "../common/raw_connection.h"
#include "cluster_process.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/shard.grpc.pb.h"
#include "shard_process.h"

#ifndef PSD_BINARY
#error "PSD_BINARY must name the psd executable"
#endif

namespace psd {
namespace integration {
namespace {

// A `psd shard` whose open-file limit (soft and hard, so the shard cannot
// raise it) is `nofile`, with its gRPC and HTTP ports.
struct LimitedShard {
  std::string dir;
  std::unique_ptr<ChildProcess> process;
  int grpc_port = 0;
  int http_port = 0;

  ~LimitedShard() {
    process.reset();
    std::error_code ignored;
    if (!dir.empty()) std::filesystem::remove_all(dir, ignored);
  }
};

// `soft_nofile` (0: the same as `nofile`) starts the shard with a lower soft
// limit under the hard one.
absl::StatusOr<std::unique_ptr<LimitedShard>> StartLimitedShard(
    int nofile, const std::vector<std::string>& extra_args = {}, int soft_nofile = 0) {
  auto shard = std::make_unique<LimitedShard>();
  char tmpl[] = "/tmp/psd_resource_limits.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  shard->dir = tmpl;
  const std::string port_file = shard->dir + "/grpc.port";
  const std::string http_port_file = shard->dir + "/http.port";
  std::vector<std::string> args = {
      "/usr/bin/prlimit",  // util-linux
      absl::StrCat("--nofile=", soft_nofile > 0 ? soft_nofile : nofile, ":", nofile),
      PSD_BINARY,
      "shard",
      "--id",
      "0",
      "--listen",
      "127.0.0.1:0",
      "--port-file",
      port_file,
      "--http-port-file",
      http_port_file};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto process = ChildProcess::Start(args, port_file);
  if (!process.ok()) return process.status();
  shard->process = *std::move(process);
  shard->grpc_port = shard->process->port();
  // The HTTP port file is written after the gRPC one.
  std::string last;
  for (int i = 0; i < 500 && !ReadPortFile(http_port_file, &last, &shard->http_port); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (shard->http_port == 0) return absl::DeadlineExceededError("no HTTP port file");
  return shard;
}

// Idle connections: opened, never sent a byte.
using IdleConnection = testing_net::RawConnection;

std::vector<std::unique_ptr<IdleConnection>> Flood(int port, int count) {
  std::vector<std::unique_ptr<IdleConnection>> connections;
  for (int i = 0; i < count; ++i) {
    connections.push_back(std::make_unique<IdleConnection>(port));
    EXPECT_TRUE(connections.back()->connected()) << "connection " << i;
  }
  return connections;
}

// Which of `connections` the server has closed (end of stream or reset).
class ClosedConnections {
 public:
  explicit ClosedConnections(const std::vector<std::unique_ptr<IdleConnection>>* connections)
      : connections_(connections), seen_(connections->size(), false) {}

  // Waits up to `ms` for news and returns how many are closed so far.
  int Poll(int ms) {
    // Only the ones still open: a closed one stays readable.
    std::vector<pollfd> fds;
    std::vector<size_t> index;
    for (size_t i = 0; i < connections_->size(); ++i) {
      if (seen_[i]) continue;
      fds.push_back({(*connections_)[i]->fd(), POLLIN, 0});
      index.push_back(i);
    }
    ::poll(fds.data(), fds.size(), ms);
    for (size_t k = 0; k < fds.size(); ++k) {
      if ((fds[k].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      char byte;
      const ssize_t n = ::recv(fds[k].fd, &byte, 1, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        seen_[index[k]] = true;
        ++closed_;
      }
    }
    return closed_;
  }

 private:
  const std::vector<std::unique_ptr<IdleConnection>>* const connections_;
  std::vector<bool> seen_;
  int closed_ = 0;
};

// A GET of /healthz: the status, or 0 when the connection is closed without
// an answer or nothing comes within 30 s.
int HealthzStatus(int port) {
  IdleConnection c(port);
  if (!c.connected()) return 0;
  timeval timeout{30, 0};
  ::setsockopt(c.fd(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  const std::string request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  if (::send(c.fd(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return 0;
  }
  std::string answer;
  char buffer[1024];
  ssize_t n;
  while ((n = ::recv(c.fd(), buffer, sizeof(buffer), 0)) > 0) answer.append(buffer, n);
  int status = 0;
  if (answer.size() >= 12 && absl::SimpleAtoi(answer.substr(9, 3), &status)) return status;
  return 0;
}

bool EventuallyHealthy(int port) {
  for (int attempt = 0; attempt < 300; ++attempt) {
    if (HealthzStatus(port) == 200) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

// A new gRPC call on a new connection (a channel of its own, not sharing
// subchannels with earlier ones): OK once the shard accepts and answers.
grpc::Status NewGrpcCall(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                           grpc::InsecureChannelCredentials(), args);
  auto stub = Shard::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  GetShardInfoRequest request;
  request.set_protocol_version(SHARD_PROTOCOL_VERSION);
  GetShardInfoResponse response;
  return stub->GetShardInfo(&context, request, &response);
}

int CountOpenFiles(pid_t pid) {
  int count = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++count;
  }
  return count;
}

// utime + stime of `pid`, in seconds (/proc/PID/stat fields 14 and 15).
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces: split after its ')'.
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return -1;
  std::vector<std::string> fields = absl::StrSplit(text.substr(paren + 2), ' ');
  // fields[0] is field 3 (state): utime is field 14, stime 15.
  double utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtod(fields[11], &utime) ||
      !absl::SimpleAtod(fields[12], &stime)) {
    return -1;
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The soft limit on open files of `pid` (/proc/PID/limits), -1 if unknown.
int64_t SoftOpenFileLimit(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/limits"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::vector<std::string> words = absl::StrSplit(line.substr(14), ' ', absl::SkipEmpty());
    int64_t soft = -1;
    if (!words.empty() && absl::SimpleAtoi(words[0], &soft)) return soft;
  }
  return -1;
}

int CountThreads(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    int threads = 0;
    if (line.rfind("Threads:", 0) == 0 && absl::SimpleAtoi(line.substr(8), &threads)) {
      return threads;
    }
  }
  return -1;
}

// Far more idle HTTP connections than the shard has descriptors: the HTTP
// endpoint keeps only its cap (64) and closes the rest at once, so gRPC can
// still accept a new connection during the flood and after it, and /healthz
// answers again as soon as the flood ends. (Before the cap, the flood took
// every descriptor, gRPC's accept failed with EMFILE and its listener
// stopped for good.)
TEST(ResourceLimitsTest, AnHttpFloodLeavesGrpcAndHealthzServing) {
  constexpr int kFiles = 256;
  auto shard = StartLimitedShard(kFiles);
  ASSERT_TRUE(shard.ok()) << shard.status();
  const int http_port = (*shard)->http_port;
  const int grpc_port = (*shard)->grpc_port;
  ASSERT_TRUE(NewGrpcCall(grpc_port).ok());

  constexpr int kFlood = 400;
  constexpr int kCap = 64;  // kDefaultHttpMaxConnections
  auto flood = Flood(http_port, kFlood);
  // Bounded wait until the HTTP endpoint has dealt with the flood: it has
  // closed the connections past its cap, or (without a cap) taken every
  // descriptor the shard may have.
  const pid_t pid = (*shard)->process->pid();
  ClosedConnections closed(&flood);
  int num_closed = 0;
  for (int i = 0; i < 500 && num_closed < kFlood - kCap && CountOpenFiles(pid) < kFiles - 2; ++i) {
    num_closed = closed.Poll(20);
  }
  // A new gRPC connection is accepted and served during the flood.
  grpc::Status during = NewGrpcCall(grpc_port);
  EXPECT_TRUE(during.ok()) << during.error_code() << " " << during.error_message();
  // The connections past the cap were closed by the server, not left
  // waiting, and the shard's descriptors stayed well within its limit.
  EXPECT_GE(num_closed, kFlood - kCap);
  EXPECT_LE(CountOpenFiles(pid), kFiles - 50);

  flood.clear();
  EXPECT_TRUE(EventuallyHealthy(http_port));
  grpc::Status after = NewGrpcCall(grpc_port);
  EXPECT_TRUE(after.ok()) << after.error_code() << " " << after.error_message();
}

// With the descriptor limit below the connection cap, the flood does run
// the shard out of descriptors: the HTTP acceptor then backs off instead of
// retrying the failing accept in a loop (which burned a core), and it
// resumes, serving /healthz, once the connections close; gRPC, not touched
// while the process is out of descriptors, still accepts afterwards.
TEST(ResourceLimitsTest, TheAcceptLoopDoesNotSpinOutOfDescriptors) {
  // About 20 descriptors at start: the flood reaches the limit well before
  // the connection cap (64).
  constexpr int kFiles = 48;
  auto shard = StartLimitedShard(kFiles);
  ASSERT_TRUE(shard.ok()) << shard.status();
  const pid_t pid = (*shard)->process->pid();
  auto flood = Flood((*shard)->http_port, 200);
  // Bounded wait until the shard holds (nearly) every descriptor it may.
  for (int i = 0; i < 300 && CountOpenFiles(pid) < kFiles - 2; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GE(CountOpenFiles(pid), kFiles - 2);
  const double cpu_before = CpuSeconds(pid);
  absl::SleepFor(absl::Seconds(4));
  const double cpu_used = CpuSeconds(pid) - cpu_before;
  ASSERT_GE(cpu_before, 0);
  // A spinning acceptor uses up to 4 CPU seconds here (0.5 on a machine
  // loaded 4x); backing off, a few hundredths.
  EXPECT_LT(cpu_used, 0.25) << "CPU seconds used in 4 s at the descriptor limit";

  flood.clear();
  EXPECT_TRUE(EventuallyHealthy((*shard)->http_port));
  grpc::Status after = NewGrpcCall((*shard)->grpc_port);
  EXPECT_TRUE(after.ok()) << after.error_code() << " " << after.error_message();
}

// A shard started with a soft limit on open files below the hard one raises
// it to the hard limit.
TEST(ResourceLimitsTest, TheSoftOpenFileLimitIsRaisedToTheHardOne) {
  auto shard = StartLimitedShard(4096, {}, 64);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ(SoftOpenFileLimit((*shard)->process->pid()), 4096);
}

// gRPC reflection is a synchronous service: each open stream holds a
// thread. Past --max-rpc-threads (default 16) new streams fail at once with
// RESOURCE_EXHAUSTED instead of each taking a new thread, and psd's own
// (callback) calls are still served.
TEST(ResourceLimitsTest, ReflectionStreamsCannotTakeUnboundedThreads) {
  auto shard = StartLimitedShard(4096);
  ASSERT_TRUE(shard.ok()) << shard.status();
  const pid_t pid = (*shard)->process->pid();
  const int threads_before = CountThreads(pid);
  constexpr int kStreams = 48;
  constexpr int kMaxThreads = 16;  // kDefaultMaxRpcThreads

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*shard)->grpc_port),
                                     grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::GenericClientAsyncReaderWriter>> calls;
  std::vector<grpc::Status> statuses(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    calls.push_back(
        stub.PrepareCall(contexts.back().get(),
                         "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq));
    calls.back()->StartCall(reinterpret_cast<void*>(static_cast<intptr_t>(2 * i + 1)));
    calls.back()->Finish(&statuses[i], reinterpret_cast<void*>(static_cast<intptr_t>(2 * i + 2)));
  }
  // Bounded: each stream either holds a thread (no event) or is refused.
  int finished = 0;
  int exhausted = 0;
  int events = 0;
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);
  while (finished < kStreams - kMaxThreads + 1 && events < 3 * kStreams) {
    void* tag = nullptr;
    bool ok = false;
    if (cq.AsyncNext(&tag, &ok, deadline) != grpc::CompletionQueue::GOT_EVENT) break;
    ++events;
    const intptr_t id = reinterpret_cast<intptr_t>(tag);
    if (id % 2 == 0) {
      ++finished;
      if (statuses[id / 2 - 1].error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++exhausted;
    }
  }
  EXPECT_GE(exhausted, kStreams - kMaxThreads);
  EXPECT_LE(CountThreads(pid) - threads_before, kMaxThreads + 2);
  grpc::Status served = NewGrpcCall((*shard)->grpc_port);
  EXPECT_TRUE(served.ok()) << served.error_code() << " " << served.error_message();

  for (auto& context : contexts) context->TryCancel();
  // Drain every outstanding event (two per stream) before tearing down.
  const auto drain_deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);
  while (events < 2 * kStreams) {
    void* tag = nullptr;
    bool ok = false;
    if (cq.AsyncNext(&tag, &ok, drain_deadline) != grpc::CompletionQueue::GOT_EVENT) break;
    ++events;
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
}

}  // namespace
}  // namespace integration
}  // namespace psd
