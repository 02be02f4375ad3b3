#include "baselines.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>
#include <random>
#include <thread>

#include "bench.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "psd/huge_pages.h"

namespace psd {
namespace bench {

namespace {

// A float table laid out as the shard lays out a variable's buffer (64-byte
// aligned, huge pages advised before the first write), so that a loop over
// it meets the same TLB costs as the store and its ratio compares code, not
// page sizes.
class Table {
 public:
  Table(size_t n, float value)
      : data_(static_cast<float*>(::operator new(n * sizeof(float), std::align_val_t{64}))) {
    AdviseHugePages(data_, n * sizeof(float));
    std::fill(data_, data_ + n, value);
  }
  ~Table() { ::operator delete(data_, std::align_val_t{64}); }
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  float* data() { return data_; }
  float& operator[](size_t i) { return data_[i]; }

 private:
  float* const data_;
};

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class BareService final : public Bare::CallbackService {
  grpc::ServerUnaryReactor* Add(grpc::CallbackServerContext* ctx, const AddRequest* request,
                                AddResponse* response) override {
    response->set_value(request->delta());
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* Upload(grpc::CallbackServerContext* ctx, const UploadRequest* request,
                                   UploadResponse* response) override {
    response->set_bytes(static_cast<int64_t>(request->content().size()));
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerReadReactor<UploadRequest>* UploadStream(grpc::CallbackServerContext* ctx,
                                                       UploadResponse* response) override {
    class Reader : public grpc::ServerReadReactor<UploadRequest> {
     public:
      explicit Reader(UploadResponse* response) : response_(response) { StartRead(&message_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          response_->set_bytes(total_);
          Finish(grpc::Status::OK);
          return;
        }
        total_ += static_cast<int64_t>(message_.content().size());
        StartRead(&message_);
      }
      void OnDone() override { delete this; }

     private:
      UploadResponse* response_;
      UploadRequest message_;
      int64_t total_ = 0;
    };
    return new Reader(response);
  }
  grpc::ServerWriteReactor<UploadRequest>* Download(grpc::CallbackServerContext* ctx,
                                                    const UploadResponse* request) override {
    class Writer : public grpc::ServerWriteReactor<UploadRequest> {
     public:
      explicit Writer(int64_t total) : left_(total) {
        chunk_.mutable_content()->assign(1 << 20, 'x');
        Next();
      }
      void OnWriteDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::CANCELLED);
          return;
        }
        Next();
      }
      void OnDone() override { delete this; }

     private:
      void Next() {
        if (left_ <= 0) {
          Finish(grpc::Status::OK);
          return;
        }
        const int64_t n = std::min<int64_t>(left_, 1 << 20);
        chunk_.mutable_content()->resize(n);
        left_ -= n;
        StartWrite(&chunk_);
      }
      int64_t left_;
      UploadRequest chunk_;
    };
    return new Writer(request->bytes());
  }
};

}  // namespace

pid_t ForkBareServer(int max_message_bytes, int* port) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid != 0) {
    close(fds[1]);
    if (read(fds[0], port, sizeof(*port)) != sizeof(*port)) *port = 0;
    close(fds[0]);
    return pid;
  }
  close(fds[0]);
  BareService service;
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &bound);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (write(fds[1], &bound, sizeof(bound)) != sizeof(bound)) _exit(1);
  close(fds[1]);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sig = 0;
  sigwait(&set, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  _exit(0);
}

double MemcpyGBps(size_t bytes, int reps) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto start = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    best = std::max(best, bytes / Seconds(start) / 1e9);
  }
  return best;
}

double AxpyGBps(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> x(n, 1.0f), y(n, 2.0f);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto start = std::chrono::steady_clock::now();
    float* __restrict yp = y.data();
    const float* __restrict xp = x.data();
    for (size_t i = 0; i < n; ++i) yp[i] += xp[i];
    // Bytes touched: read x, read and write y.
    best = std::max(best, 3.0 * bytes / Seconds(start) / 1e9);
  }
  if (y[n / 2] < 0) std::abort();  // keeps the loop
  return best;
}

double DenseAdamLoopGBps(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> var(n, 1.0f), m(n, 0.0f), v(n, 0.0f), grad(n);
  for (size_t i = 0; i < n; ++i) grad[i] = static_cast<float>(i % 7) * 0.1f - 0.3f;
  const float one_minus_beta1 = 0.1f, one_minus_beta2 = 0.001f, epsilon = 1e-8f;
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const float alpha = 0.001f * std::sqrt(1 - std::pow(0.999f, r + 1.0f)) /
                        (1 - std::pow(0.9f, r + 1.0f));
    auto start = std::chrono::steady_clock::now();
    float* __restrict w = var.data();
    float* __restrict mp = m.data();
    float* __restrict vp = v.data();
    const float* __restrict g = grad.data();
    for (size_t i = 0; i < n; ++i) {
      mp[i] += (g[i] - mp[i]) * one_minus_beta1;
      vp[i] += (g[i] * g[i] - vp[i]) * one_minus_beta2;
      w[i] -= mp[i] * alpha / (std::sqrt(vp[i]) + epsilon);
    }
    best = std::max(best, bytes / Seconds(start) / 1e9);
  }
  if (var[n / 2] > 2) std::abort();  // keeps the loop
  return best;
}

double ScatterAddRowsPerSecond(int64_t rows, int64_t cols, const std::vector<int64_t>& indices,
                               int reps) {
  return ScatterAddRowsPerSecond(rows, cols, std::vector<std::vector<int64_t>>{indices}, reps);
}

namespace {

// One buffer of `value`s per batch, a row of `cols` per index: each request
// brings its own update rows.
std::vector<std::vector<float>> RowsPerBatch(const std::vector<std::vector<int64_t>>& batches,
                                             int64_t cols, float value) {
  std::vector<std::vector<float>> rows;
  for (const auto& b : batches) rows.emplace_back(b.size() * cols, value);
  return rows;
}

// The best rate over `reps` passes of `apply(batch, k, index)` over every
// index of every batch, in rows per second.
template <typename Apply>
double BestRowsPerSecond(const std::vector<std::vector<int64_t>>& batches, int reps,
                         Apply&& apply) {
  size_t total = 0;
  for (const auto& b : batches) total += b.size();
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto start = std::chrono::steady_clock::now();
    for (size_t b = 0; b < batches.size(); ++b) {
      for (size_t k = 0; k < batches[b].size(); ++k) apply(b, k, batches[b][k]);
    }
    best = std::max(best, total / Seconds(start));
  }
  return best;
}

}  // namespace

double ScatterAddRowsPerSecond(int64_t rows, int64_t cols,
                               const std::vector<std::vector<int64_t>>& batches, int reps) {
  Table table(static_cast<size_t>(rows * cols), 0.0f);
  const std::vector<std::vector<float>> updates = RowsPerBatch(batches, cols, 0.5f);
  const double best = BestRowsPerSecond(batches, reps, [&](size_t b, size_t k, int64_t index) {
    float* __restrict row = table.data() + index * cols;
    const float* __restrict u = updates[b].data() + k * cols;
    for (int64_t j = 0; j < cols; ++j) row[j] += u[j];
  });
  if (table[batches[0][0] * cols] < 0) std::abort();  // keeps the loop
  return best;
}

double SparseAdagradRowsPerSecond(int64_t rows, int64_t cols,
                                  const std::vector<std::vector<int64_t>>& batches, float lr,
                                  int reps) {
  Table var(static_cast<size_t>(rows * cols), 0.0f);
  Table accum(static_cast<size_t>(rows * cols), 0.1f);
  const std::vector<std::vector<float>> grads = RowsPerBatch(batches, cols, 0.01f);
  const double best = BestRowsPerSecond(batches, reps, [&](size_t b, size_t k, int64_t index) {
    float* __restrict w = var.data() + index * cols;
    float* __restrict a = accum.data() + index * cols;
    const float* __restrict g = grads[b].data() + k * cols;
    for (int64_t j = 0; j < cols; ++j) {
      a[j] += g[j] * g[j];
      w[j] -= g[j] * lr / std::sqrt(a[j]);
    }
  });
  if (var[batches[0][0] * cols] > 1) std::abort();  // keeps the loop
  return best;
}

double RawTcpGBps(size_t bytes) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(listener);
    return 0;
  }
  std::thread receiver([listener, bytes] {
    int s = accept(listener, nullptr, nullptr);
    std::vector<char> buf(1 << 20);
    size_t got = 0;
    while (got < bytes) {
      ssize_t n = read(s, buf.data(), buf.size());
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    close(s);
  });
  int s = socket(AF_INET, SOCK_STREAM, 0);
  double gbps = 0;
  if (connect(s, reinterpret_cast<sockaddr*>(&addr), len) == 0) {
    std::vector<char> buf(1 << 20, 'x');
    auto start = std::chrono::steady_clock::now();
    size_t sent = 0;
    while (sent < bytes) {
      ssize_t n = write(s, buf.data(), std::min(buf.size(), bytes - sent));
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    shutdown(s, SHUT_WR);
    receiver.join();
    gbps = sent / Seconds(start) / 1e9;
  } else {
    receiver.detach();
  }
  close(s);
  close(listener);
  return gbps;
}

double FsyncWriteGBps(const std::string& dir, size_t bytes) {
  const std::string path = dir + "/psd_bench_fsync.tmp";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return 0;
  std::vector<char> buf(4 << 20, 'x');
  auto start = std::chrono::steady_clock::now();
  size_t written = 0;
  while (written < bytes) {
    ssize_t n = write(fd, buf.data(), std::min(buf.size(), bytes - written));
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  fsync(fd);
  const double gbps = written / Seconds(start) / 1e9;
  close(fd);
  unlink(path.c_str());
  return gbps;
}

std::vector<int64_t> ZipfIndices(int64_t n, double s, size_t count, uint64_t seed) {
  // Inverse-CDF sampling over a truncated harmonic series: the CDF is
  // approximated by the integral of x^-s, accurate enough for a workload mix.
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const double a = 1.0 - s;
  const double max = (std::pow(static_cast<double>(n) + 1.0, a) - 1.0) / a;
  std::vector<int64_t> out(count);
  for (auto& idx : out) {
    const double x = std::pow(uniform(rng) * max * a + 1.0, 1.0 / a) - 1.0;
    const int64_t rank = std::min<int64_t>(n - 1, static_cast<int64_t>(x));
    // Spread hot ranks over the table (a multiplicative hash mod n).
    idx = static_cast<int64_t>((static_cast<uint64_t>(rank) * 0x9E3779B97F4A7C15ull) % n);
  }
  return out;
}

}  // namespace bench
}  // namespace psd
