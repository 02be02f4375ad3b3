// psd_bench: runs every landed data-path workload against a real shard and,
// in the same run, the baseline that bounds it, then prints a table of
// median/min/max and each workload's ratio to its baseline (and writes JSON).
//
//   psd_bench                 # full run (1 GiB transfers, 1M x 64 table)
//   psd_bench --quick         # seconds-long smoke run, same workloads, small
//   psd_bench --shard HOST:PORT   # against a running shard instead
//   psd_bench --only checkpoints  # save/restore GB/s and fence pauses (own cluster)
//   psd_bench --only sparse_merge # bytes and rows/s of scatter_add with duplicates merged
//   psd_bench --only embedding    # tables by key beside a dense variable; fence pause of a
//                                 # 10M-row table's save (own cluster)
//   psd_bench --only dense --sizes 1073741824 --reps 3   # one size, e.g. under perf
//   psd_bench --shard H:P --shard-pid PID --only small,sparse --index-dist distinct --json F
//                             # the C++ side of bench/psclient_bench.py
//
// The run ends with a targets table: each ratio named by issue 18's targets
// that this bench can measure, its goal and pass/fail.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <future>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "baselines.h"
#include "bench.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "http_get.h"  // tests/common: the shards' /metrics
#include "psd/client.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/embedding_variable.h"
#include "psd/optimizer.h"
#include "psd/optimizer_ops.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/wire.h"
#include "shard/variable_store.h"
#include "cluster_process.h"
#include "shard_process.h"
#include "sparse_merge.h"  // client/src: the merge Variable::ScatterAdd uses

namespace psd {
namespace bench {
namespace {

using Clock = std::chrono::steady_clock;
using client::ShardClient;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Stats {
  double median = 0, min = 0, max = 0;
};
Stats Same(double v) { return {v, v, v}; }  // one measurement
Stats Summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.median = v[v.size() / 2];
  s.min = v.front();
  s.max = v.back();
  return s;
}
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// CPU seconds used so far by the shard (when this process started it, or
// was told its pid) and by this process (the client).
//
// The shard's come from /proc/PID/stat (utime + stime: all its threads,
// exited ones included, in clock ticks of 1/CLK_TCK s, so 10 ms on Linux:
// the workloads that report CPU run long enough to make that a few percent
// at most); this process's from getrusage(RUSAGE_SELF) (all threads, in
// microseconds). Neither counts the bare gRPC server (a child of its own).

// The CPU time of process `pid`, all its threads: from its CPU-time clock
// (nanoseconds), else from /proc/PID/stat (10 ms ticks, too coarse for CPU
// per row in short runs).
double ProcessCpuSeconds(pid_t pid) {
  clockid_t clock;
  timespec ts{};
  if (clock_getcpuclockid(pid, &clock) == 0 && clock_gettime(clock, &ts) == 0) {
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces, in parentheses):
  // state is field 3, utime field 14, stime field 15.
  const size_t close = content.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(content.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// Accumulates the CPU seconds of shard and client over the timed sections
// of one workload (Start/Stop around each), and the units of work done in
// them (ops, rows), so the row can say CPU per unit.
class CpuMeter {
 public:
  explicit CpuMeter(pid_t shard_pid) : CpuMeter(std::vector<pid_t>{shard_pid}) {}
  // Several shards (a cluster's): their CPU seconds summed.
  explicit CpuMeter(const std::vector<pid_t>& shard_pids) {
    for (pid_t pid : shard_pids) {
      if (pid > 0) shard_pids_.push_back(pid);
    }
  }
  void Start() {
    shard_start_ = ShardSeconds();
    client_start_ = SelfCpuSeconds();
  }
  void Stop(double units) {
    if (!shard_pids_.empty() && shard_start_ >= 0) shard_ += ShardSeconds() - shard_start_;
    client_ += SelfCpuSeconds() - client_start_;
    units_ += units;
  }
  // Microseconds per unit; shard < 0 when it is not known.
  double shard_us() const {
    return !shard_pids_.empty() && units_ > 0 ? shard_ / units_ * 1e6 : -1;
  }
  double client_us() const { return units_ > 0 ? client_ / units_ * 1e6 : 0; }

 private:
  double ShardSeconds() const {
    if (shard_pids_.empty()) return -1;
    double total = 0;
    for (pid_t pid : shard_pids_) {
      const double s = ProcessCpuSeconds(pid);
      if (s < 0) return -1;
      total += s;
    }
    return total;
  }

  std::vector<pid_t> shard_pids_;
  double shard_start_ = 0, client_start_ = 0;
  double shard_ = 0, client_ = 0, units_ = 0;
};

struct Row {
  std::string workload;
  std::string unit;
  Stats value;
  std::string baseline;
  double baseline_value = 0;
  std::string extra;  // latency percentiles, second ratio
  // CPU microseconds per `cpu_unit` (op, row) of the shard and of this
  // process; cpu_unit empty: not measured. shard < 0: not known.
  std::string cpu_unit = "";
  double cpu_shard_us = -1, cpu_client_us = 0;

  Row& Cpu(const CpuMeter& meter, std::string per) {
    cpu_unit = std::move(per);
    cpu_shard_us = meter.shard_us();
    cpu_client_us = meter.client_us();
    return *this;
  }
};

// One ratio of the issue's targets: `value` against `target`, where
// at_least says which side passes.
// Four trainers scatter_adding Zipf(1.1) batches of 1024 rows x 64 floats
// into a [65536, 64] table of two parts (one per shard), until Stop(): the
// load under which checkpoints and part moves are measured.
struct ScatterLoad {
  client::Variable table;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> updates{0}, failures{0};
  std::vector<std::thread> trainers;

  absl::Status Start(client::Session& session, const std::string& name, uint64_t seed) {
    client::GetVariableOptions t;
    t.dtype = DT_FLOAT;
    t.shape = TensorShape{1 << 16, 64};
    t.partitioner = client::partitioners::FixedSize(2);
    t.initializer = client::init::Zeros();
    t.initialize = true;
    auto made = session.GetVariable(name, t);
    if (!made.ok()) return made.status();
    table = *made;
    for (int k = 0; k < 4; ++k) {
      trainers.emplace_back([this, seed, k] {
        const std::vector<int64_t> idx = ZipfIndices(1 << 16, 1.1, 1024, seed + k);
        const Tensor indices = *Tensor::FromVector<int64_t>(TensorShape{1024}, idx);
        Tensor values(DT_FLOAT, TensorShape{1024, 64});
        for (int64_t i = 0; i < values.num_elements(); ++i) values.data<float>()[i] = 1;
        while (!stop.load()) {
          (table.ScatterAdd(indices, values).ok() ? updates : failures).fetch_add(1);
        }
      });
    }
    return absl::OkStatus();
  }
  void Stop() {
    stop.store(true);
    for (auto& th : trainers) th.join();
    trainers.clear();
  }
  ~ScatterLoad() { Stop(); }
};

struct Target {
  std::string name;
  double value = 0;
  bool at_least = true;
  double target = 0;
  std::string detail;
  bool pass() const { return at_least ? value >= target : value <= target; }
};

class Report {
 public:
  void Add(Row row) {
    const double ratio = row.baseline_value > 0 ? row.value.median / row.baseline_value : 0;
    std::string extra = row.extra;
    if (!row.cpu_unit.empty()) {
      const std::string cpu =
          row.cpu_shard_us >= 0
              ? absl::StrFormat("cpu/%s shard %.3g + client %.3g = %.3g us", row.cpu_unit,
                                row.cpu_shard_us, row.cpu_client_us,
                                row.cpu_shard_us + row.cpu_client_us)
              : absl::StrFormat("cpu/%s client %.3g us (shard unknown)", row.cpu_unit,
                                row.cpu_client_us);
      extra = extra.empty() ? cpu : absl::StrCat(cpu, "; ", extra);
    }
    std::printf("%-50s %10.3g %10.3g %10.3g %-8s | %-26s %10.3g  x%.2f  %s\n",
                row.workload.c_str(), row.value.median, row.value.min, row.value.max,
                row.unit.c_str(), row.baseline.c_str(), row.baseline_value, ratio,
                extra.c_str());
    std::fflush(stdout);
    rows_.push_back(std::move(row));
  }
  void Header() {
    std::printf("%-50s %10s %10s %10s %-8s | %-26s %10s  %s\n", "workload", "median", "min",
                "max", "unit", "baseline", "value", "ratio");
  }
  bool WriteJson(const std::string& path) const {
    std::ofstream out(path);
    out << "[\n";
    for (size_t i = 0; i < rows_.size(); ++i) {
      const Row& r = rows_[i];
      out << absl::StrFormat(
          "  {\"workload\": \"%s\", \"unit\": \"%s\", \"median\": %g, \"min\": %g, \"max\": %g, "
          "\"baseline\": \"%s\", \"baseline_value\": %g, \"ratio\": %g, \"extra\": \"%s\", "
          "\"cpu_unit\": \"%s\", \"cpu_shard_us\": %g, \"cpu_client_us\": %g}%s\n",
          r.workload, r.unit, r.value.median, r.value.min, r.value.max, r.baseline,
          r.baseline_value, r.baseline_value > 0 ? r.value.median / r.baseline_value : 0, r.extra,
          r.cpu_unit, r.cpu_shard_us, r.cpu_client_us,
          i + 1 < rows_.size() || !targets_.empty() ? "," : "");
    }
    // The targets follow the rows, marked by "target": true.
    for (size_t i = 0; i < targets_.size(); ++i) {
      const Target& t = targets_[i];
      out << absl::StrFormat(
          "  {\"target\": true, \"name\": \"%s\", \"value\": %g, \"at_least\": %s, "
          "\"goal\": %g, \"pass\": %s, \"detail\": \"%s\"}%s\n",
          t.name, t.value, t.at_least ? "true" : "false", t.target, t.pass() ? "true" : "false",
          t.detail, i + 1 < targets_.size() ? "," : "");
    }
    out << "]\n";
    return static_cast<bool>(out);
  }

  void AddTarget(Target t) { targets_.push_back(std::move(t)); }
  // The targets table: each ratio the issue names, its goal and pass/fail.
  void PrintTargets() const {
    if (targets_.empty()) return;
    std::printf("\ntargets (ratios of this run)\n");
    std::printf("%-62s %9s %10s  %-4s  %s\n", "target", "value", "goal", "", "detail");
    int passed = 0;
    for (const Target& t : targets_) {
      passed += t.pass() ? 1 : 0;
      std::printf("%-62s %9.3g %3s %6.3g  %-4s  %s\n", t.name.c_str(), t.value,
                  t.at_least ? ">=" : "<=", t.target, t.pass() ? "pass" : "FAIL", t.detail.c_str());
    }
    std::printf("%d of %zu targets met\n", passed, targets_.size());
    std::fflush(stdout);
  }

 private:
  std::vector<Row> rows_;
  std::vector<Target> targets_;
};

struct Config {
  bool quick = false;
  int reps = 5;
  double op_seconds = 2.0;  // per concurrency level of the small-op workloads
  std::vector<int64_t> dense_sizes;
  int64_t table_rows = 1 << 20;
  int64_t table_cols = 64;
  int64_t scatter_batch = 4096;
  int64_t adam_bytes = 64 << 20;
  int64_t memory_bytes = int64_t{4} << 30;
  std::string fsync_dir = "/tmp";
  // Workload groups to run (dense, small, sparse, optimizers, memory,
  // checkpoints, embedding, migration, replication); empty runs all. The baselines always run.
  std::vector<std::string> only;
  // Dense sizes to run instead of the defaults (bytes), e.g. to profile one.
  std::vector<int64_t> sizes;
  // Index batches of the sparse workloads: "zipf" (Zipf(1.1)) or "distinct".
  std::string index_dist = "zipf";
  // The data stream's messages awaiting replies (ClientOptions), to tune it.
  int frames_in_flight = client::ClientOptions().data_stream_frames_in_flight;
};

std::string HumanBytes(int64_t b) {
  if (b >= (int64_t{1} << 30)) return absl::StrCat(b >> 30, " GiB");
  if (b >= (1 << 20)) return absl::StrCat(b >> 20, " MiB");
  if (b >= (1 << 10)) return absl::StrCat(b >> 10, " KiB");
  return absl::StrCat(b, " B");
}

// Runs `op` from `threads` threads for `seconds`; returns ops/s and the
// per-op latencies (seconds).
template <typename Op>
std::pair<double, std::vector<double>> RunConcurrent(int threads, double seconds, Op op) {
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> latencies(threads);
  std::vector<std::thread> pool;
  std::atomic<int> failures{0};
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      while (!stop.load(std::memory_order_relaxed)) {
        const auto s = Clock::now();
        if (!op(t)) failures.fetch_add(1);
        latencies[t].push_back(Since(s));
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : pool) th.join();
  const double elapsed = Since(start);
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  if (failures.load() > 0) std::fprintf(stderr, "warning: %d ops failed\n", failures.load());
  return {all.size() / elapsed, all};
}

class Bench {
 public:
  Bench(Config config, std::string shard_address, int bare_port, pid_t shard_pid)
      : config_(std::move(config)), shard_address_(std::move(shard_address)), shard_pid_(shard_pid) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    bare_ = Bare::NewStub(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", bare_port),
                                                    grpc::InsecureChannelCredentials(), args));
  }

  int Run() {
    client::ClientOptions streamed;
    streamed.data_stream_frames_in_flight = config_.frames_in_flight;
    auto shard = ShardClient::Connect(shard_address_, streamed);
    if (!shard.ok()) {
      std::fprintf(stderr, "cannot connect to %s: %s\n", shard_address_.c_str(),
                   shard.status().ToString().c_str());
      return 1;
    }
    shard_ = std::move(shard).value();
    // The same client without its data stream: every op a unary call (the
    // protocol of older clients), measured beside the stream.
    client::ClientOptions unary;
    unary.data_stream = false;
    auto unary_client = ShardClient::Connect(shard_address_, unary);
    if (!unary_client.ok()) {
      std::fprintf(stderr, "cannot connect to %s: %s\n", shard_address_.c_str(),
                   unary_client.status().ToString().c_str());
      return 1;
    }
    shard_unary_ = std::move(unary_client).value();
    std::printf("cpu/op, cpu/row: CPU microseconds per op or row, of the shard (%s) and of this "
                "process, the client (getrusage RUSAGE_SELF, all threads)\n",
                shard_pid_ > 0 ? "its process CPU-time clock, clock_getcpuclockid, ns" : "unknown: external");
    report_.Header();
    Baselines();
    if (Selected("dense")) Dense();
    if (Selected("small")) SmallOps();
    if (Selected("sparse")) Sparse();
    if (Selected("sparse_merge")) SparseMerge();
    if (Selected("optimizers")) Optimizers();
    if (Selected("memory")) Memory();
    if (Selected("checkpoints")) Checkpoints();
    if (Selected("embedding")) Embedding();
    if (Selected("migration")) Migration();
    if (Selected("replication")) Replication();
    report_.PrintTargets();
    std::printf("not measured here: psclient / C++ client (bench/psclient_bench.py); GPU shards "
                "(--shard-device gpu:N on a GPU machine)\n");
    return failed_ ? 1 : 0;
  }

  const Report& report() const { return report_; }

 private:
  bool Selected(const std::string& group) const {
    return config_.only.empty() ||
           std::find(config_.only.begin(), config_.only.end(), group) != config_.only.end();
  }

  void Check(const absl::Status& s, const std::string& what) {
    if (!s.ok()) {
      std::fprintf(stderr, "%s failed: %s\n", what.c_str(), s.ToString().c_str());
      failed_ = true;
    }
  }

  void Baselines() {
    const size_t bytes = config_.quick ? (64 << 20) : (size_t{256} << 20);
    memcpy_ = MemcpyGBps(bytes, 3);
    axpy_ = AxpyGBps(bytes, 3);
    tcp_ = RawTcpGBps(config_.quick ? (size_t{256} << 20) : (size_t{2} << 30));
    fsync_ = FsyncWriteGBps(config_.fsync_dir, config_.quick ? (64 << 20) : (size_t{1} << 30));
    report_.Add({"baseline: memcpy", "GB/s", {memcpy_, memcpy_, memcpy_}, "-", 0, ""});
    report_.Add({"baseline: y += x (float32)", "GB/s", {axpy_, axpy_, axpy_}, "-", 0, ""});
    report_.Add({"baseline: raw TCP loopback", "GB/s", {tcp_, tcp_, tcp_}, "-", 0, ""});
    report_.Add({"baseline: sequential write + fsync", "GB/s", {fsync_, fsync_, fsync_}, "-", 0,
                 ""});
  }

  // Bare gRPC upload of `bytes`: unary up to the client's stream threshold,
  // 1 MiB-chunk stream above it (the shapes psd uses for the same size);
  // each rep makes `per_rep` uploads in turn, as the workload beside it.
  double BareUploadGBps(int64_t bytes, bool streamed, int per_rep = 1) {
    std::vector<double> rates;
    std::string payload(std::min<int64_t>(bytes, streamed ? (1 << 20) : bytes), 'x');
    for (int r = -1; r < config_.reps; ++r) {  // round -1 warms up
      grpc::ClientContext ctx;
      UploadResponse resp;
      const auto start = Clock::now();
      if (!streamed && per_rep > 1) {
        UploadRequest req;
        req.set_content(payload);
        for (int k = 0; k < per_rep; ++k) {
          grpc::ClientContext each;
          bare_->Upload(&each, req, &resp);
        }
      } else if (streamed) {
        auto writer = bare_->UploadStream(&ctx, &resp);
        UploadRequest chunk;
        for (int64_t sent = 0; sent < bytes; sent += payload.size()) {
          chunk.set_content(payload.data(), std::min<int64_t>(payload.size(), bytes - sent));
          writer->Write(chunk);
        }
        writer->WritesDone();
        writer->Finish();
      } else {
        UploadRequest req;
        req.set_content(payload);
        bare_->Upload(&ctx, req, &resp);
      }
      if (r >= 0) rates.push_back(static_cast<double>(per_rep) * bytes / Since(start) / 1e9);
    }
    return Summarize(rates).median;
  }

  double BareDownloadGBps(int64_t bytes) {
    std::vector<double> rates;
    for (int r = 0; r < config_.reps; ++r) {
      grpc::ClientContext ctx;
      UploadResponse req;
      req.set_bytes(bytes);
      const auto start = Clock::now();
      auto reader = bare_->Download(&ctx, req);
      UploadRequest chunk;
      while (reader->Read(&chunk)) {
      }
      reader->Finish();
      rates.push_back(bytes / Since(start) / 1e9);
    }
    return Summarize(rates).median;
  }

  // Adds the targets of one dense write workload (assign or assign_add of
  // a size from 4 MiB up): against the bare gRPC stream and raw TCP, and its
  // slowest rep against its median.
  void DenseWriteTargets(const std::string& what, const Stats& s, double bare_stream,
                         double tcp) {
    report_.AddTarget({absl::StrCat(what, " / bare gRPC stream"), s.median / bare_stream, true,
                       1.3, ""});
    report_.AddTarget({absl::StrCat(what, " / raw TCP"), s.median / tcp, true, 0.5, ""});
    report_.AddTarget({absl::StrCat(what, ": slowest rep / median"), s.min / s.median, true, 0.7,
                       absl::StrFormat("min %.3g median %.3g GB/s", s.min, s.median)});
  }

  // Raw TCP loopback measured again beside a workload: on a shared machine
  // the load, and with it this bound, changes during a run, so ratios to
  // raw TCP use the figure taken next to the workload (the first row's
  // baseline is the one at the start).
  double RawTcpNow() const {
    return RawTcpGBps(config_.quick ? (size_t{128} << 20) : (size_t{1} << 30));
  }

  void Dense() {
    for (int64_t bytes : config_.dense_sizes) {
      const std::string name = absl::StrCat("bench/dense_", bytes);
      Tensor value(DT_FLOAT, TensorShape{bytes / 4});
      shard_->Delete(name).IgnoreError();
      Check(shard_->Create(name, value).status(), "create " + name);
      const bool streamed = bytes > (1 << 20);  // the client's default threshold
      std::vector<double> assign_rates, add_rates, read_rates;
      CpuMeter assign_cpu(shard_pid_), add_cpu(shard_pid_), read_cpu(shard_pid_);
      // Reads go into one reused tensor, as a trainer that pulls a variable
      // every step does (ShardClient::ReadInto).
      Tensor read_into;
      // One unmeasured round warms connections, allocators and page caches.
      Check(shard_->Assign(name, value), "assign " + name);
      Check(shard_->AssignAdd(name, value), "assign_add " + name);
      Check(shard_->ReadInto(name, &read_into), "read " + name);
      // Values under 4 MiB repeat within a rep, so that a rep lasts long
      // enough to time; from 4 MiB up a rep is one op (the targets judge
      // single ops' spread).
      const int per_rep =
          bytes >= (4 << 20)
              ? 1
              : static_cast<int>(std::clamp<int64_t>((int64_t{64} << 20) / bytes, 1, 256));
      for (int r = 0; r < config_.reps; ++r) {
        auto start = Clock::now();
        assign_cpu.Start();
        for (int k = 0; k < per_rep; ++k) Check(shard_->Assign(name, value), "assign " + name);
        assign_cpu.Stop(per_rep);
        assign_rates.push_back(per_rep * bytes / Since(start) / 1e9);
        start = Clock::now();
        add_cpu.Start();
        for (int k = 0; k < per_rep; ++k) {
          Check(shard_->AssignAdd(name, value), "assign_add " + name);
        }
        add_cpu.Stop(per_rep);
        add_rates.push_back(per_rep * bytes / Since(start) / 1e9);
        start = Clock::now();
        read_cpu.Start();
        for (int k = 0; k < per_rep; ++k) {
          Check(shard_->ReadInto(name, &read_into), "read " + name);
        }
        read_cpu.Stop(per_rep);
        read_rates.push_back(per_rep * bytes / Since(start) / 1e9);
      }
      // CPU ticks are 10 ms: untimed extra ops bring each kind's measured
      // work to at least 256 MiB (or 1024 more ops).
      const int64_t extra = std::clamp<int64_t>(
          ((int64_t{256} << 20) - config_.reps * per_rep * bytes) / bytes, 0, 1024);
      if (!config_.quick) {
        assign_cpu.Start();
        for (int64_t k = 0; k < extra; ++k) Check(shard_->Assign(name, value), "assign " + name);
        assign_cpu.Stop(extra);
        add_cpu.Start();
        for (int64_t k = 0; k < extra; ++k) Check(shard_->AssignAdd(name, value), "add " + name);
        add_cpu.Stop(extra);
        read_cpu.Start();
        for (int64_t k = 0; k < extra; ++k) Check(shard_->ReadInto(name, &read_into), "read");
        read_cpu.Stop(extra);
      }
      Check(shard_->Delete(name), "delete " + name);
      const double up = BareUploadGBps(bytes, streamed, per_rep);
      const double tcp = RawTcpNow();
      const double down = streamed ? BareDownloadGBps(bytes) : up;
      const Stats a = Summarize(assign_rates), ad = Summarize(add_rates),
                  rd = Summarize(read_rates);
      const std::string bare = streamed ? "bare gRPC stream 1 MiB" : "bare gRPC unary upload";
      report_.Add(Row{absl::StrCat("assign ", HumanBytes(bytes)), "GB/s", a, bare, up,
                      absl::StrFormat("raw TCP x%.2f", a.median / tcp)}
                      .Cpu(assign_cpu, "op"));
      report_.Add(Row{absl::StrCat("assign_add ", HumanBytes(bytes)), "GB/s", ad, bare, up,
                      absl::StrFormat("raw TCP x%.2f", ad.median / tcp)}
                      .Cpu(add_cpu, "op"));
      report_.Add(Row{absl::StrCat("read ", HumanBytes(bytes)), "GB/s", rd, bare, down,
                      absl::StrFormat("raw TCP x%.2f (raw TCP %.3g GB/s beside it)",
                                      rd.median / tcp, tcp)}
                      .Cpu(read_cpu, "op"));
      if (bytes >= (4 << 20)) {
        DenseWriteTargets(absl::StrCat("assign ", HumanBytes(bytes)), a, up, tcp);
        DenseWriteTargets(absl::StrCat("assign_add ", HumanBytes(bytes)), ad, up, tcp);
        report_.AddTarget({absl::StrCat("read ", HumanBytes(bytes), " / raw TCP"),
                           rd.median / tcp, true, 0.6, ""});
      }
    }
  }

  // Runs `issue` (which returns a future) from one thread with `window`
  // calls outstanding for `seconds`; returns ops/s and the ops done.
  template <typename Issue>
  std::pair<double, int64_t> RunAsync(int window, double seconds, Issue issue) {
    std::deque<decltype(issue())> pending;
    int64_t done = 0, failures = 0;
    const auto start = Clock::now();
    while (Since(start) < seconds) {
      pending.push_back(issue());
      if (pending.size() >= static_cast<size_t>(window)) {
        failures += pending.front().get().ok() ? 0 : 1;
        pending.pop_front();
        ++done;
      }
    }
    for (auto& f : pending) {
      failures += f.get().ok() ? 0 : 1;
      ++done;
    }
    const double elapsed = Since(start);
    if (failures > 0) std::fprintf(stderr, "warning: %ld async ops failed\n", long(failures));
    return {done / elapsed, done};
  }

  // Ops per message of a client's data stream over a span (how much
  // concurrent ops coalesced); 0 when nothing went on the stream.
  static double OpsPerMessage(const client::DataStreamStats& before,
                              const client::DataStreamStats& after) {
    const int64_t messages = after.messages_sent - before.messages_sent;
    return messages > 0 ? static_cast<double>(after.ops_sent - before.ops_sent) / messages : 0;
  }

  void SmallOps() {
    shard_->Delete("bench/counter").IgnoreError();
    shard_->Delete("bench/step").IgnoreError();
    Check(shard_->Create("bench/counter", Tensor::Scalar<int64_t>(0)).status(), "create counter");
    Check(shard_->Create("bench/step", Tensor::Scalar<int64_t>(0)).status(), "create step");
    const Tensor one = Tensor::Scalar<int64_t>(1);
    double bare_64 = 0;
    const double minimum[] = {1.0, 2.0, 4.0};  // the issue's targets at 1, 8, 64
    int level = 0;
    for (int inflight : {1, 8, 64}) {
      std::vector<double> bare, count_rates;
      // [stream, unary] x [sync threads, async window]
      std::vector<double> rates[2][2];
      std::vector<double> latencies[2];
      std::vector<CpuMeter> cpu(4, CpuMeter(shard_pid_));
      double coalesced[2] = {0, 0};
      std::vector<double> count_lat;
      for (int r = 0; r < std::max(1, config_.reps / 2); ++r) {
        bare.push_back(RunConcurrent(inflight, config_.op_seconds, [&](int) {
                         grpc::ClientContext ctx;
                         AddRequest req;
                         req.set_name("bench/counter");
                         req.set_delta(1);
                         AddResponse resp;
                         return bare_->Add(&ctx, req, &resp).ok();
                       }).first);
        for (int path = 0; path < 2; ++path) {
          ShardClient* client = path == 0 ? shard_.get() : shard_unary_.get();
          auto stats = client->data_stream_stats();
          cpu[path * 2].Start();
          auto [rate, lat] = RunConcurrent(inflight, config_.op_seconds, [&](int) {
            return client->AssignAdd("bench/counter", one).ok();
          });
          cpu[path * 2].Stop(static_cast<double>(lat.size()));
          rates[path][0].push_back(rate);
          latencies[path].insert(latencies[path].end(), lat.begin(), lat.end());
          if (path == 0) coalesced[0] = OpsPerMessage(stats, client->data_stream_stats());
          stats = client->data_stream_stats();
          cpu[path * 2 + 1].Start();
          const auto [async_rate, async_done] = RunAsync(inflight, config_.op_seconds, [&] {
            return client->AssignAddAsync("bench/counter", one);
          });
          cpu[path * 2 + 1].Stop(static_cast<double>(async_done));
          rates[path][1].push_back(async_rate);
          if (path == 0) coalesced[1] = OpsPerMessage(stats, client->data_stream_stats());
        }
        auto [count_rate, cl] = RunConcurrent(inflight, config_.op_seconds, [&](int) {
          return shard_->CountUpTo("bench/step", int64_t{1} << 62).ok();
        });
        count_rates.push_back(count_rate);
        count_lat.insert(count_lat.end(), cl.begin(), cl.end());
      }
      const double bare_rate = Summarize(bare).median;
      if (inflight == 64) bare_64 = bare_rate;
      auto percentiles = [](const std::vector<double>& lat) {
        return absl::StrFormat("p50 %.0fus p99 %.0fus", Percentile(lat, 0.5) * 1e6,
                               Percentile(lat, 0.99) * 1e6);
      };
      const char* kPath[] = {"", ", unary"};
      for (int path = 0; path < 2; ++path) {
        const Stats sync = Summarize(rates[path][0]), async = Summarize(rates[path][1]);
        std::string sync_extra = percentiles(latencies[path]);
        std::string async_extra;
        if (path == 0) {
          sync_extra += absl::StrFormat("; %.1f ops/msg", coalesced[0]);
          async_extra = absl::StrFormat("%.1f ops/msg", coalesced[1]);
        }
        report_.Add(Row{absl::StrCat("assign_add scalar, ", inflight, " in flight", kPath[path]),
                        "ops/s", sync, "bare gRPC unary", bare_rate, sync_extra}
                        .Cpu(cpu[path * 2], "op"));
        report_.Add(Row{absl::StrCat("assign_add scalar, async ", inflight, kPath[path]),
                        "ops/s", async, "bare gRPC unary", bare_rate, async_extra}
                        .Cpu(cpu[path * 2 + 1], "op"));
        if (path == 0) {
          const Stats unary_sync = Summarize(rates[1][0]), unary_async = Summarize(rates[1][1]);
          report_.AddTarget({absl::StrCat("assign_add scalar, ", inflight,
                                          " threads (sync) / bare gRPC unary"),
                             sync.median / bare_rate, true, minimum[level],
                             absl::StrFormat("unary path x%.2f", unary_sync.median / bare_rate)});
          report_.AddTarget({absl::StrCat("assign_add scalar, async ", inflight,
                                          " outstanding / bare gRPC unary"),
                             async.median / bare_rate, true, minimum[level],
                             absl::StrFormat("unary path x%.2f", unary_async.median / bare_rate)});
        }
      }
      report_.Add({absl::StrCat("count_up_to, ", inflight, " in flight"), "ops/s",
                   Summarize(count_rates), "bare gRPC unary", bare_rate, percentiles(count_lat)});
      ++level;
    }
    BatchedOps(one, bare_64);
    shard_->Delete("bench/counter").IgnoreError();
    shard_->Delete("bench/step").IgnoreError();
  }

  // assign_add of a scalar through one BatchStream, 64 ops per message with
  // its default window of messages in flight, against the bare unary rate
  // at 64 in flight.
  void BatchedOps(const Tensor& one, double bare_64) {
    client::BatchOptions options;
    options.ops_per_message = 64;
    std::vector<double> rates;
    for (int r = -1; r < std::max(1, config_.reps / 2); ++r) {  // round -1 warms up
      auto batch = shard_->OpenBatch(options);
      Check(batch.status(), "open batch");
      if (!batch.ok()) return;
      std::deque<std::future<absl::Status>> pending;
      const size_t window = static_cast<size_t>(options.ops_per_message) *
                            static_cast<size_t>(options.max_messages_in_flight) * 2;
      int64_t done = 0;
      bool failed = false;
      const auto start = Clock::now();
      const double seconds = r < 0 ? config_.op_seconds / 4 : config_.op_seconds;
      while (Since(start) < seconds) {
        pending.push_back((*batch)->AssignAdd("bench/counter", one));
        if (pending.size() >= window) {
          failed |= !pending.front().get().ok();
          pending.pop_front();
          ++done;
        }
      }
      for (auto& f : pending) {
        failed |= !f.get().ok();
        ++done;
      }
      const double elapsed = Since(start);
      Check((*batch)->Close(), "close batch");
      if (failed) Check(absl::InternalError("a batched assign_add failed"), "batched assign_add");
      if (r >= 0) rates.push_back(done / elapsed);
    }
    report_.Add({absl::StrCat("assign_add scalar, batched ", options.ops_per_message, "/msg"),
                 "ops/s", Summarize(rates), "bare gRPC unary, 64 in flight", bare_64, ""});
  }

  // The index batches of the sparse workloads: Zipf(1.1) over the table
  // (hot rows repeat), or distinct rows (no duplicates, so a client that
  // merges duplicates sends them all: the Python benchmark's comparison).
  std::vector<std::vector<int64_t>> IndexBatches(int64_t rows, int batches, uint64_t seed) const {
    std::vector<std::vector<int64_t>> out;
    const int64_t n = config_.scatter_batch;
    for (int b = 0; b < batches; ++b) {
      if (config_.index_dist == "distinct") {
        // n consecutive ranks of a full-period multiplicative walk: distinct
        // rows spread over the table.
        std::vector<int64_t> set(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          const uint64_t rank = static_cast<uint64_t>((b * n + i) % rows);
          set[static_cast<size_t>(i)] = static_cast<int64_t>(
              (rank * 0x9E3779B97F4A7C15ull + seed) % static_cast<uint64_t>(rows));
        }
        std::sort(set.begin(), set.end());
        set.erase(std::unique(set.begin(), set.end()), set.end());
        for (int64_t next = 0; static_cast<int64_t>(set.size()) < n; ++next) {
          if (!std::binary_search(set.begin(), set.end(), next)) {
            set.insert(std::lower_bound(set.begin(), set.end(), next), next);
          }
        }
        // Not sorted on the wire: a trainer's ids come in batch order.
        std::shuffle(set.begin(), set.end(), std::mt19937_64(seed + b));
        out.push_back(std::move(set));
      } else {
        out.push_back(ZipfIndices(rows, 1.1, static_cast<size_t>(n), seed + b));
      }
    }
    return out;
  }

  // Runs op(b) for b in [0, count) from `threads` threads (each takes the
  // next b), so `threads` calls are in flight; returns seconds.
  template <typename Op>
  static double RunBatches(int threads, int count, Op op) {
    std::atomic<int> next{0};
    const auto start = Clock::now();
    auto work = [&] {
      for (int b = next.fetch_add(1); b < count; b = next.fetch_add(1)) op(b);
    };
    if (threads == 1) {
      work();
    } else {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back(work);
      for (auto& th : pool) th.join();
    }
    return Since(start);
  }

  void Sparse() {
    const int64_t rows = config_.table_rows, cols = config_.table_cols;
    const std::string name = "bench/table";
    shard_->Delete(name).IgnoreError();
    Check(shard_->Create(name, DT_FLOAT, TensorShape{rows, cols}, client::init::Zeros()).status(),
          "create table");
    // 16 batches (quick: 4) per rep; each rep runs them `passes` times so a
    // rep lasts long enough to time and to read CPU ticks from.
    const int batches = config_.quick ? 4 : 16;
    const int passes = config_.quick ? 1 : 4;
    const std::vector<std::vector<int64_t>> index_sets = IndexBatches(rows, batches, 1000);
    std::vector<Tensor> indices;
    for (auto& set : index_sets) {
      indices.push_back(*Tensor::FromVector<int64_t>(TensorShape{config_.scatter_batch}, set));
    }
    Tensor updates(DT_FLOAT, TensorShape{config_.scatter_batch, cols});
    const double loop = ScatterAddRowsPerSecond(rows, cols, index_sets, 3);
    const double row_bytes = cols * 4.0 + 8.0;
    const double network = RawTcpNow() * 1e9 / row_bytes;
    const std::string shape = absl::StrCat(config_.scatter_batch, "x", cols,
                                           config_.index_dist == "distinct" ? " distinct" : "");
    const int64_t per_rep = static_cast<int64_t>(batches) * passes * config_.scatter_batch;
    for (int inflight : {1, 4}) {
      for (int path = 0; path < 2; ++path) {
        ShardClient* client = path == 0 ? shard_.get() : shard_unary_.get();
        std::vector<double> scatter_rates, gather_rates;
        CpuMeter scatter_cpu(shard_pid_), gather_cpu(shard_pid_);
        for (int r = -1; r < config_.reps; ++r) {  // round -1 warms up
          scatter_cpu.Start();
          double seconds = RunBatches(inflight, batches * passes, [&](int b) {
            Check(client->ScatterAdd(name, indices[b % batches], updates), "scatter_add");
          });
          if (r >= 0) {
            scatter_cpu.Stop(static_cast<double>(per_rep));
            scatter_rates.push_back(per_rep / seconds);
          }
          gather_cpu.Start();
          seconds = RunBatches(inflight, batches * passes, [&](int b) {
            Check(client->Gather(name, indices[b % batches]).status(), "gather");
          });
          if (r >= 0) {
            gather_cpu.Stop(static_cast<double>(per_rep));
            gather_rates.push_back(per_rep / seconds);
          }
        }
        const Stats s = Summarize(scatter_rates), g = Summarize(gather_rates);
        const std::string how =
            absl::StrCat(", ", inflight, " in flight", path == 0 ? "" : ", unary");
        report_.Add(Row{absl::StrCat("scatter_add ", shape, how), "rows/s", s,
                        "raw TCP rows/s", network,
                        absl::StrFormat("%.2f GB/s; table %dx%d; loop %.3g rows/s x%.2f",
                                        s.median * row_bytes / 1e9, rows, cols, loop,
                                        s.median / loop)}
                        .Cpu(scatter_cpu, "row"));
        report_.Add(Row{absl::StrCat("gather ", shape, how), "rows/s", g, "raw TCP rows/s",
                        network,
                        absl::StrFormat("%.2f GB/s; table %dx%d", g.median * row_bytes / 1e9,
                                        rows, cols)}
                        .Cpu(gather_cpu, "row"));
        if (path == 1) continue;
        const double goal = inflight == 4 ? 0.6 : 0.35;
        for (const auto& [what, stats, meter] :
             {std::tuple<const char*, const Stats&, const CpuMeter&>{"scatter_add", s,
                                                                     scatter_cpu},
              std::tuple<const char*, const Stats&, const CpuMeter&>{"gather", g, gather_cpu}}) {
          const std::string target_shape =
              absl::StrCat(what, " ", config_.scatter_batch, "x", cols, ", ", inflight);
          report_.AddTarget({absl::StrCat(target_shape, " in flight / raw TCP rows/s"),
                             stats.median / network, true, goal, ""});
          if (meter.shard_us() >= 0) {
            report_.AddTarget({absl::StrCat(target_shape, " in flight: CPU-us/row shard+client"),
                               meter.shard_us() + meter.client_us(), false, 0.15,
                               absl::StrFormat("shard %.3g client %.3g", meter.shard_us(),
                                               meter.client_us())});
          }
        }
      }
    }
    Check(shard_->Delete(name), "delete table");
  }

  // scatter_add of Zipf(1.1) batches with their duplicate indices merged
  // before sending (as Variable::ScatterAdd and sparse applies do:
  // client/src/sparse_merge.h) beside the same batches sent as they are:
  // request bytes (indices + rows) and caller rows/s, the merge included.
  void SparseMerge() {
    const int64_t rows = config_.table_rows, cols = config_.table_cols;
    const int64_t n = config_.scatter_batch;
    const std::string name = "bench/merge_table";
    shard_->Delete(name).IgnoreError();
    Check(shard_->Create(name, DT_FLOAT, TensorShape{rows, cols}, client::init::Zeros()).status(),
          "create table");
    const int batches = config_.quick ? 4 : 16;
    std::vector<Tensor> indices;
    for (int b = 0; b < batches; ++b) {
      indices.push_back(*Tensor::FromVector<int64_t>(
          TensorShape{n}, ZipfIndices(rows, 1.1, static_cast<size_t>(n), 2000 + b)));
    }
    Tensor updates(DT_FLOAT, TensorShape{n, cols});
    for (int64_t i = 0; i < updates.num_elements(); ++i) updates.data<float>()[i] = 0.25f;
    double bytes_before = 0, bytes_after = 0;
    for (const Tensor& idx : indices) {
      bytes_before += idx.bytes().size() + updates.bytes().size();
      auto merged = client::internal::MergeDuplicateRows(idx, updates,
                                                         client::internal::MergeKind::kSum, rows);
      bytes_after += merged.has_value()
                         ? merged->indices.bytes().size() + merged->rows.bytes().size()
                         : idx.bytes().size() + updates.bytes().size();
    }
    std::vector<double> plain_rates, merged_rates;
    for (int r = 0; r < config_.reps; ++r) {
      auto start = Clock::now();
      for (const Tensor& idx : indices) Check(shard_->ScatterAdd(name, idx, updates), "scatter_add");
      plain_rates.push_back(batches * n / Since(start));
      start = Clock::now();
      for (const Tensor& idx : indices) {
        auto merged = client::internal::MergeDuplicateRows(
            idx, updates, client::internal::MergeKind::kSum, rows);
        Check(merged.has_value() ? shard_->ScatterAdd(name, merged->indices, merged->rows)
                                 : shard_->ScatterAdd(name, idx, updates),
              "merged scatter_add");
      }
      merged_rates.push_back(batches * n / Since(start));
    }
    Check(shard_->Delete(name), "delete table");
    const Stats plain = Summarize(plain_rates);
    report_.Add({absl::StrCat("scatter_add merged, Zipf(1.1) ", rows, "x", cols, ", batch ", n),
                 "rows/s", Summarize(merged_rates), "scatter_add unmerged rows/s", plain.median,
                 absl::StrFormat("request %.0f KiB -> %.0f KiB per batch (x%.2f bytes)",
                                 bytes_before / batches / 1024, bytes_after / batches / 1024,
                                 bytes_after / bytes_before)});
  }

  // Server-side optimizers: dense Adam on adam_bytes and sparse Adagrad on
  // Zipf batches of the table, each through the RPC (gradient on the wire)
  // and through the store in this process (validation, locks, kernel), next
  // to a plain loop doing the same arithmetic.
  void Optimizers() {
    auto applier = client::ShardApplier::Connect(shard_address_);
    Check(applier.status(), "connect applier");
    if (!applier.ok()) return;
    auto device = NewCpuDevice();
    VariableStore store(device.get(), VariableStoreOptions());
    auto create_local = [&](const std::string& name, TensorShape shape, double value) {
      CreateVariableRequest req;
      req.set_name(name);
      req.set_dtype(DT_FLOAT);
      ShapeToProto(shape, req.mutable_shape());
      TensorToProto(Tensor::Scalar<float>(static_cast<float>(value)),
                    req.mutable_initializer()->mutable_constant()->mutable_value());
      req.set_initialize(true);
      VariableInfo info;
      Check(store.Create(req, &info), "create local " + name);
    };
    auto create_remote = [&](const std::string& name, TensorShape shape, double value) {
      Check(shard_->Create(name, DT_FLOAT, shape,
                           client::init::Constant(Tensor::Scalar<float>(static_cast<float>(value))))
                .status(),
            "create " + name);
    };

    // Dense Adam, beta powers by value.
    const int64_t bytes = config_.quick ? (8 << 20) : config_.adam_bytes;
    const int64_t n = bytes / 4;
    client::opt::Adam adam;
    adam.beta1_power = 0.9;
    adam.beta2_power = 0.999;
    const std::string var = "bench/adam";
    Tensor grad(DT_FLOAT, TensorShape{n});
    for (int64_t i = 0; i < n; ++i) grad.data<float>()[i] = static_cast<float>(i % 7) * 0.1f - 0.3f;
    for (const std::string& v : {var, var + "/Adam", var + "/Adam_1"}) {
      shard_->Delete(v).IgnoreError();
      create_remote(v, TensorShape{n}, v == var ? 1 : 0);
      create_local(v, TensorShape{n}, v == var ? 1 : 0);
    }
    std::vector<double> rpc_rates, local_rates;
    ApplyDenseRequest local;
    local.set_name(var);
    local.add_slots(var + "/Adam");
    local.add_slots(var + "/Adam_1");
    auto* spec = local.mutable_optimizer()->mutable_adam();
    spec->set_learning_rate(adam.learning_rate);
    spec->set_beta1(adam.beta1);
    spec->set_beta2(adam.beta2);
    spec->set_epsilon(adam.epsilon);
    spec->set_beta1_power_value(0.9);
    spec->set_beta2_power_value(0.999);
    TensorToProto(grad, local.mutable_gradient());
    for (int r = -1; r < config_.reps; ++r) {  // round -1 warms up
      auto start = Clock::now();
      Check((*applier)->ApplyDense(var, adam, grad).status(), "apply_dense Adam");
      if (r >= 0) rpc_rates.push_back(bytes / Since(start) / 1e9);
      ApplyDenseResponse resp;
      start = Clock::now();
      Check(store.ApplyDense(local, &resp), "local apply_dense Adam");
      if (r >= 0) local_rates.push_back(bytes / Since(start) / 1e9);
    }
    for (const std::string& v : {var, var + "/Adam", var + "/Adam_1"}) {
      shard_->Delete(v).IgnoreError();
    }
    const double adam_loop = DenseAdamLoopGBps(bytes, 3);
    const double bare_stream = BareUploadGBps(bytes, bytes > (1 << 20));
    const Stats rpc = Summarize(rpc_rates), in_process = Summarize(local_rates);
    report_.AddTarget({absl::StrCat("apply_dense Adam ", HumanBytes(bytes),
                                    " (RPC) / min(bare gRPC stream, Adam loop)"),
                       rpc.median / std::min(bare_stream, adam_loop), true, 0.9,
                       absl::StrFormat("bare stream %.3g GB/s, loop %.3g GB/s", bare_stream,
                                       adam_loop)});
    report_.Add({absl::StrCat("apply_dense Adam ", HumanBytes(bytes), " (RPC)"), "GB/s", rpc,
                 "plain Adam loop", adam_loop,
                 absl::StrFormat("%.1f ms/step; raw TCP x%.2f", bytes / rpc.median / 1e6,
                                 rpc.median / tcp_)});
    report_.Add({absl::StrCat("apply_dense Adam ", HumanBytes(bytes), " (store, in-process)"),
                 "GB/s", in_process, "plain Adam loop", adam_loop,
                 absl::StrFormat("%.1f ms/step", bytes / in_process.median / 1e6)});

    // Sparse Adagrad on Zipf batches of the table.
    const int64_t rows = config_.table_rows, cols = config_.table_cols;
    const std::string table = "bench/adagrad_table";
    for (const std::string& v : {table, table + "/Adagrad"}) {
      shard_->Delete(v).IgnoreError();
      create_remote(v, TensorShape{rows, cols}, v == table ? 0 : 0.1);
      create_local(v, TensorShape{rows, cols}, v == table ? 0 : 0.1);
    }
    const int batches = config_.quick ? 4 : 16;
    std::vector<std::vector<int64_t>> index_sets;
    std::vector<client::SparseGradient> grads;
    std::vector<ApplySparseRequest> local_requests;
    Tensor values(DT_FLOAT, TensorShape{config_.scatter_batch, cols});
    for (int64_t i = 0; i < values.num_elements(); ++i) values.data<float>()[i] = 0.01f;
    for (int b = 0; b < batches; ++b) {
      index_sets.push_back(ZipfIndices(rows, 1.1, config_.scatter_batch, 1000 + b));
      grads.push_back({*Tensor::FromVector<int64_t>(TensorShape{config_.scatter_batch},
                                                    index_sets.back()),
                       values});
      ApplySparseRequest req;
      req.set_name(table);
      req.add_slots(table + "/Adagrad");
      req.mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.01);
      TensorToProto(grads.back().indices, req.mutable_indices());
      TensorToProto(values, req.mutable_values());
      local_requests.push_back(std::move(req));
    }
    client::opt::Adagrad adagrad;
    // The same ops without the data stream (each apply a unary call).
    client::ClientOptions unary_options;
    unary_options.data_stream = false;
    auto unary_applier = client::ShardApplier::Connect(shard_address_, unary_options);
    Check(unary_applier.status(), "connect unary applier");
    if (!unary_applier.ok()) return;
    // Both loops run the same batches as the store, in turn: the sparse
    // Adagrad loop is the bound (the same arithmetic, duplicates applied one
    // by one); the scatter-add loop, beside it, moves the same rows with one
    // add per element.
    // A rep of either loop lasts milliseconds: best of 5 finds a quiet one.
    const double adagrad_loop = SparseAdagradRowsPerSecond(
        rows, cols, index_sets, static_cast<float>(adagrad.learning_rate), 5);
    const double scatter_loop = ScatterAddRowsPerSecond(rows, cols, index_sets, 5);
    const std::string shape = absl::StrCat(rows, "x", cols, ", batch ", config_.scatter_batch);
    auto beside = [&](const Stats& s) {
      return absl::StrFormat("scatter-add loop %.3g rows/s x%.2f", scatter_loop,
                             s.median / scatter_loop);
    };
    // Each rep runs the batches `passes` times, long enough for CPU ticks.
    const int passes = config_.quick ? 1 : 4;
    const double per_rep = static_cast<double>(batches) * passes * config_.scatter_batch;
    for (int inflight : {1, 4}) {
      for (int path = 0; path < 2; ++path) {
        client::ShardApplier* a = path == 0 ? applier->get() : unary_applier->get();
        std::vector<double> sparse_rpc;
        CpuMeter cpu(shard_pid_);
        for (int r = 0; r < config_.reps; ++r) {
          cpu.Start();
          const double seconds = RunBatches(inflight, batches * passes, [&](int b) {
            Check(a->ApplySparse(table, adagrad, grads[b % batches]).status(), "adagrad");
          });
          cpu.Stop(per_rep);
          sparse_rpc.push_back(per_rep / seconds);
        }
        const Stats sr = Summarize(sparse_rpc);
        report_.Add(Row{absl::StrCat("apply_sparse Adagrad ", config_.scatter_batch, "x", cols,
                                     ", ", inflight, " in flight", path == 0 ? "" : ", unary"),
                        "rows/s", sr, "plain sparse Adagrad loop", adagrad_loop,
                        absl::StrCat("RPC; table ", shape, "; ", beside(sr))}
                        .Cpu(cpu, "row"));
        if (path == 0) {
          report_.AddTarget({absl::StrCat("apply_sparse Adagrad, ", inflight,
                                          " in flight (RPC) / plain sparse Adagrad loop"),
                             sr.median / adagrad_loop, true, 0.6, ""});
        }
      }
    }
    std::vector<double> sparse_local;
    for (int r = 0; r < config_.reps; ++r) {
      const auto start = Clock::now();
      for (auto& req : local_requests) {
        ApplySparseResponse resp;
        Check(store.ApplySparse(req, &resp), "local adagrad");
      }
      sparse_local.push_back(batches * config_.scatter_batch / Since(start));
    }
    for (const std::string& v : {table, table + "/Adagrad"}) shard_->Delete(v).IgnoreError();
    const Stats sl = Summarize(sparse_local);
    report_.Add({absl::StrCat("apply_sparse Adagrad ", config_.scatter_batch, "x", cols,
                              " (store, in-process)"),
                 "rows/s", sl, "plain sparse Adagrad loop", adagrad_loop,
                 absl::StrCat("table ", shape, "; ", beside(sl))});
  }

  static int64_t ResidentBytes(pid_t pid) {
    std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
    }
    return 0;
  }

  void Memory() {
    if (shard_pid_ <= 0) return;  // an external shard: its RSS is not ours to read
    const int64_t total = config_.memory_bytes;
    const int64_t per_var = std::min<int64_t>(total, int64_t{256} << 20);
    const int64_t before = ResidentBytes(shard_pid_);
    std::vector<std::string> names;
    for (int64_t loaded = 0; loaded < total; loaded += per_var) {
      names.push_back(absl::StrCat("bench/mem_", names.size()));
      Check(shard_->Create(names.back(), DT_FLOAT, TensorShape{per_var / 4}, client::init::Ones())
                .status(),
            "create " + names.back());
    }
    const int64_t after = ResidentBytes(shard_pid_);
    for (auto& n : names) shard_->Delete(n).IgnoreError();
    const double ratio = static_cast<double>(after - before) / total;
    report_.Add({absl::StrCat("shard RSS growth per variable byte, ", HumanBytes(total)), "ratio",
                 {ratio, ratio, ratio}, "target 1.1 + 64 MB",
                 1.1 + (64.0 * (1 << 20)) / total,
                 absl::StrFormat("RSS %s -> %s", HumanBytes(before), HumanBytes(after))});
  }

  // Coordinated save and restore across a coordinator and two shards of its
  // own: throughput against the fsync'd sequential write, then the fence
  // pause of saves taken while trainers scatter_add into a table.
  void Checkpoints() {
    char tmpl[] = "/tmp/psd_bench_ckpt_XXXXXX";
    const std::string dir = mkdtemp(tmpl) == nullptr ? std::string() : std::string(tmpl);
    if (dir.empty()) return Check(absl::InternalError("mkdtemp failed"), "checkpoints");
    integration::TestClusterOptions options;
    options.num_shards = 2;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir,
                                "--max-to-keep", "2"};
    auto cluster = integration::TestCluster::Start(options);
    if (!cluster.ok()) return Check(cluster.status(), "checkpoints: start a cluster");
    auto session = client::Session::Open((*cluster)->coordinator_address());
    auto saver = client::Saver::Create((*cluster)->coordinator_address());
    if (!session.ok() || !saver.ok()) {
      Check(session.ok() ? saver.status() : session.status(), "checkpoints: connect");
      std::system(absl::StrCat("rm -rf '", dir, "'").c_str());
      return;
    }
    // Variables of 64 MiB, each cut in two parts (one per shard).
    const int64_t total = config_.quick ? (int64_t{64} << 20) : (int64_t{1} << 30);
    const int64_t per_var = int64_t{64} << 20;
    for (int64_t made = 0; made < total; made += per_var) {
      client::GetVariableOptions o;
      o.dtype = DT_FLOAT;
      o.shape = TensorShape{per_var / 4 / 256, 256};
      o.partitioner = client::partitioners::FixedSize(2);
      o.initializer = client::init::Ones();
      o.initialize = true;
      Check((*session)->GetVariable(absl::StrCat("bench/ckpt_", made / per_var), o).status(),
            "checkpoints: create");
    }
    std::vector<double> save_rates, restore_rates;
    const int reps = config_.quick ? 2 : std::max(3, config_.reps);
    std::string prefix;
    for (int r = 0; r < reps; ++r) {
      client::SaveDetails details;
      auto saved = (*saver)->Save(dir + "/model.ckpt", r, &details);
      if (!saved.ok()) return Check(saved.status(), "checkpoints: save");
      prefix = *saved;
      save_rates.push_back(details.bytes / details.seconds / 1e9);
      const auto start = Clock::now();
      absl::Status restored = (*saver)->Restore(prefix);
      if (!restored.ok()) return Check(restored, "checkpoints: restore");
      restore_rates.push_back(details.bytes / Since(start) / 1e9);
    }
    const Stats sv = Summarize(save_rates), rs = Summarize(restore_rates);
    report_.Add({absl::StrCat("checkpoint save ", HumanBytes(total), ", 2 shards"), "GB/s", sv,
                 "sequential write + fsync", fsync_,
                 absl::StrFormat("fsync x%.2f", sv.median / fsync_)});
    report_.Add({absl::StrCat("checkpoint restore ", HumanBytes(total), ", 2 shards"), "GB/s", rs,
                 "sequential write + fsync", fsync_,
                 absl::StrFormat("fsync x%.2f (reads hit the page cache)", rs.median / fsync_)});

    // Fence pause under load: trainers scatter_add into a table on both
    // shards while saves run.
    ScatterLoad load;
    absl::Status loaded = load.Start(**session, "bench/ckpt_table", 77);
    if (!loaded.ok()) return Check(loaded, "checkpoints: table");
    const std::atomic<int64_t>& updates = load.updates;
    std::vector<double> pauses_ms, copied;
    const int saves = config_.quick ? 3 : 10;
    const auto load_start = Clock::now();
    for (int r = 0; r < saves; ++r) {
      client::SaveDetails details;
      auto saved = (*saver)->Save(dir + "/loaded.ckpt", r, &details);
      if (!saved.ok()) {
        Check(saved.status(), "checkpoints: save under load");
        break;
      }
      pauses_ms.push_back(absl::ToDoubleMilliseconds(details.fence_pause));
      copied.push_back(static_cast<double>(details.copied_bytes));
    }
    const double load_seconds = Since(load_start);
    load.Stop();
    if (!pauses_ms.empty()) {
      const Stats ps = Summarize(pauses_ms);
      report_.Add({absl::StrCat("checkpoint fence pause under scatter_add load (", saves,
                                " saves)"),
                   "ms", ps, "-", 0,
                   absl::StrFormat("p50 %.2f ms, p99 %.2f ms; %.0f scatter_adds/s of 1024 rows; "
                                   "copy-on-write p50 %s a save of %s",
                                   Percentile(pauses_ms, 0.5), Percentile(pauses_ms, 0.99),
                                   updates.load() / load_seconds,
                                   HumanBytes(static_cast<int64_t>(Percentile(copied, 0.5))),
                                   HumanBytes(total + (int64_t{1} << 24)))});
    }
    session->reset();
    saver->reset();
    cluster->reset();
    std::system(absl::StrCat("rm -rf '", dir, "'").c_str());
  }

  // Live part moves (docs/moves.md) on a coordinator and two shards of its
  // own while four trainers scatter_add Zipf batches into a partitioned
  // table: the rate of moving 1 GiB of 64 MiB variables between idle shards
  // against the bare gRPC stream, the trainers' rate while the same 1 GiB
  // moves back against before (and the moves' rate then: the snapshot copy
  // yields the CPU to the trainers), and the pause of each switch when the
  // moved parts are the table's own, under that load.
  void Migration() {
    integration::TestClusterOptions options;
    options.num_shards = 2;
    auto cluster = integration::TestCluster::Start(options);
    if (!cluster.ok()) return Check(cluster.status(), "migration: start a cluster");
    auto session = client::Session::Open((*cluster)->coordinator_address());
    if (!session.ok()) return Check(session.status(), "migration: connect");
    auto coordinator = Coordinator::NewStub(grpc::CreateChannel(
        (*cluster)->coordinator_address(), grpc::InsecureChannelCredentials()));
    auto move = [&](const std::string& part, int32_t to) -> absl::StatusOr<MovePartResponse> {
      MovePartRequest req;
      req.set_part(part);
      req.set_target_shard(to);
      MovePartResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
      absl::Status st = FromGrpcStatus(coordinator->MovePart(&ctx, req, &resp));
      if (!st.ok()) return st;
      return resp;
    };
    const int64_t total = config_.quick ? (int64_t{128} << 20) : (int64_t{1} << 30);
    const int64_t per_var = int64_t{64} << 20;
    std::vector<std::pair<std::string, int32_t>> vars;  // name, shard
    for (int64_t made = 0; made < total; made += per_var) {
      client::GetVariableOptions o;
      o.dtype = DT_FLOAT;
      o.shape = TensorShape{per_var / 4 / 256, 256};
      o.initializer = client::init::Ones();
      o.initialize = true;
      const std::string name = absl::StrCat("bench/mig_", made / per_var);
      auto v = (*session)->GetVariable(name, o);
      if (!v.ok()) return Check(v.status(), "migration: create");
      vars.emplace_back(name, v->handle().parts(0).shard_id());
    }
    // Without load first: every variable to the other shard, one at a time
    // (the mover's own rate; under load it yields the CPU to trainers).
    std::vector<double> idle_gbps;
    int64_t idle_bytes = 0;
    const auto idle_start = Clock::now();
    for (auto& [name, shard] : vars) {
      const auto start = Clock::now();
      auto moved = move(name, 1 - shard);
      if (!moved.ok()) return Check(moved.status(), "migration: move without load");
      idle_gbps.push_back(moved->bytes() / Since(start) / 1e9);
      idle_bytes += moved->bytes();
      shard = 1 - shard;
    }
    const double idle_gbps_all = idle_bytes / Since(idle_start) / 1e9;
    const double bare = BareUploadGBps(per_var, true);
    report_.Add({absl::StrCat("move ", HumanBytes(idle_bytes), " of 64 MiB parts, no load"), "GB/s",
                 Summarize(idle_gbps), "bare gRPC stream 1 MiB", bare,
                 absl::StrFormat("%zu moves at %.3f GB/s overall", vars.size(), idle_gbps_all)});
    report_.AddTarget({"part moves / bare gRPC stream", idle_gbps_all / bare, true, 0.5, ""});
    ScatterLoad load;
    absl::Status loaded = load.Start(**session, "bench/mig_table", 91);
    if (!loaded.ok()) return Check(loaded, "migration: table");
    const std::atomic<int64_t>& updates = load.updates;
    const std::atomic<int64_t>& failures = load.failures;
    const client::Variable* table = &load.table;
    auto rate_over = [&](double seconds) {
      const int64_t before = updates.load();
      const auto start = Clock::now();
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
      return (updates.load() - before) / Since(start);
    };
    const double idle_rate = rate_over(config_.quick ? 1.0 : 3.0);
    // 1 GiB of 64 MiB variables, each to the other shard, one at a time.
    const int64_t updates_before_moves = updates.load();
    const auto moves_start = Clock::now();
    int64_t moved_bytes = 0;
    std::vector<double> big_pauses_ms;
    for (auto& [name, shard] : vars) {
      auto r = move(name, 1 - shard);
      if (!r.ok()) {
        Check(r.status(), "migration: move");
        break;
      }
      shard = 1 - shard;
      moved_bytes += r->bytes();
      big_pauses_ms.push_back(r->fence_seconds() * 1e3);
    }
    const double move_seconds = Since(moves_start);
    const double moving_rate = (updates.load() - updates_before_moves) / move_seconds;
    // The table's own parts, back and forth under the scatter_adds.
    std::vector<double> pauses_ms;
    int32_t shard_of[2] = {table->handle().parts(0).shard_id(), table->handle().parts(1).shard_id()};
    const int table_moves = config_.quick ? 6 : 20;
    for (int m = 0; m < table_moves; ++m) {
      const int k = m % 2;
      auto r = move(absl::StrCat("bench/mig_table/part_", k), 1 - shard_of[k]);
      if (!r.ok()) {
        Check(r.status(), "migration: move a loaded part");
        break;
      }
      shard_of[k] = 1 - shard_of[k];
      pauses_ms.push_back(r->fence_seconds() * 1e3);
    }
    load.Stop();
    const double gbps = moved_bytes / move_seconds / 1e9;
    report_.Add({absl::StrCat("move ", HumanBytes(moved_bytes), " of 64 MiB parts under load"),
                 "GB/s", {gbps, gbps, gbps}, "bare gRPC stream 1 MiB", bare,
                 absl::StrFormat("%zu moves in %.2f s; switch pause p50 %.2f ms, max %.2f ms",
                                 vars.size(), move_seconds, Percentile(big_pauses_ms, 0.5),
                                 Percentile(big_pauses_ms, 1.0))});
    report_.Add({"training during moves: scatter_add 1024x64, 4 trainers", "ops/s",
                 {moving_rate, moving_rate, moving_rate}, "before the moves", idle_rate,
                 absl::StrFormat("x%.2f of %.0f ops/s before; %lld failed ops", moving_rate / idle_rate,
                                 idle_rate, static_cast<long long>(failures.load()))});
    report_.AddTarget({"training during moves / before", moving_rate / idle_rate, true, 0.7, ""});
    if (!pauses_ms.empty()) {
      const Stats ps = Summarize(pauses_ms);
      report_.Add({absl::StrCat("switch pause of a loaded part (", pauses_ms.size(), " moves)"),
                   "ms", ps, "-", 0,
                   absl::StrFormat("p50 %.2f ms, p99 %.2f ms, while 4 trainers scatter_add into it",
                                   Percentile(pauses_ms, 0.5), Percentile(pauses_ms, 0.99))});
      report_.AddTarget({"move switch pause p99 under scatter_add load (ms)",
                         Percentile(pauses_ms, 0.99), false, 50, ""});
    }
    session->reset();
    cluster->reset();
  }

  // Replicated parts (docs/replication.md) on a coordinator and three
  // shards of their own: each workload on a variable declared with
  // replication 1 and on one declared with replication 2 (one in-sync
  // backup) in the same cluster, through the ordinary client API; then a
  // failover: the primary of a replicated counter SIGKILLed while a
  // trainer counts, and how long its writes stalled.
  void Replication() {
    integration::TestClusterOptions options;
    options.num_shards = 3;
    constexpr double kLeaseSeconds = 3.0;  // the coordinator's default lease
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--liveness-timeout", "1",
                                "--lease-period", absl::StrCat(kLeaseSeconds)};
    auto cluster = integration::TestCluster::Start(options);
    if (!cluster.ok()) return Check(cluster.status(), "replication: start a cluster");
    client::SessionOptions session_options;
    session_options.failover_wait = absl::Seconds(60);
    auto session = client::Session::Open((*cluster)->coordinator_address(), session_options);
    if (!session.ok()) return Check(session.status(), "replication: connect");
    // A variable of `replication`, its backups in sync before it is used.
    auto declare = [&](const std::string& name, int replication, DataType dtype,
                       TensorShape shape) -> absl::StatusOr<client::Variable> {
      client::GetVariableOptions o;
      o.dtype = dtype;
      o.shape = std::move(shape);
      o.initializer = client::init::Zeros();
      o.initialize = true;
      o.replication = replication;
      auto v = (*session)->GetVariable(name, o);
      if (!v.ok()) return v.status();
      const absl::Time deadline = absl::Now() + absl::Seconds(120);
      for (;;) {
        if (absl::Status s = v->Refresh(); !s.ok()) return s;
        bool synced = true;
        const VariableHandle handle = v->handle();
        for (const PartHandle& p : handle.parts()) {
          synced = synced && p.in_sync_shards_size() >= replication - 1;
        }
        if (synced) return *v;
        if (absl::Now() > deadline) {
          return absl::DeadlineExceededError(
              absl::StrCat(name, ": no in-sync backups after 120 s"));
        }
        absl::SleepFor(absl::Milliseconds(50));
      }
    };
    const Tensor one = Tensor::Scalar<int64_t>(1);

    // Each workload alternates its reps between the two variables (r=1,
    // then r=2, per rep), and the ratios are of the medians: this VM's speed
    // swings by 2x over minutes, which all-r=1-then-all-r=2 runs took for a
    // price of replication.

    // Small ops: assign_add of a scalar from 1, 8 and 64 threads.
    std::map<int, client::Variable> small;
    for (int r : {1, 2}) {
      auto v = declare(absl::StrCat("bench/rep_small_r", r), r, DT_INT64, TensorShape{});
      if (!v.ok()) return Check(v.status(), "replication: declare");
      small.emplace(r, *v);
    }
    for (int threads : {1, 8, 64}) {
      std::map<int, std::vector<double>> rates, p50s;
      for (int rep = 0; rep < config_.reps; ++rep) {
        for (int r : {1, 2}) {
          client::Variable& v = small.at(r);
          auto [rate, lat] = RunConcurrent(threads, config_.op_seconds,
                                           [&](int) { return v.AssignAdd(one).ok(); });
          rates[r].push_back(rate);
          p50s[r].push_back(Percentile(lat, 0.5));
        }
      }
      const double rate1 = Summarize(rates[1]).median, rate2 = Summarize(rates[2]).median;
      const double p50_1 = Summarize(p50s[1]).median, p50_2 = Summarize(p50s[2]).median;
      report_.Add({absl::StrCat("assign_add scalar, replication 2, ", threads, " threads"), "ops/s",
                   Summarize(rates[2]), "replication 1", rate1,
                   absl::StrFormat("p50 %.0fus (replication 1: %.0fus, x%.2f)", p50_2 * 1e6,
                                   p50_1 * 1e6, p50_1 > 0 ? p50_2 / p50_1 : 0)});
      if (threads > 1) {
        report_.AddTarget({absl::StrCat("small ops r=2 / r=1, ", threads, " in flight"),
                           rate1 > 0 ? rate2 / rate1 : 0, true, 0.5, ""});
      } else {
        report_.AddTarget({"small op p50 latency r=2 / r=1", p50_1 > 0 ? p50_2 / p50_1 : 0,
                           false, 2.5, ""});
      }
    }

    // Dense assign of 64 MiB.
    const int64_t dense_bytes = config_.quick ? (int64_t{16} << 20) : (int64_t{64} << 20);
    const TensorShape dense_shape{dense_bytes / 4 / 256, 256};
    std::map<int, client::Variable> dense;
    for (int r : {1, 2}) {
      auto v = declare(absl::StrCat("bench/rep_dense_r", r), r, DT_FLOAT, dense_shape);
      if (!v.ok()) return Check(v.status(), "replication: declare");
      dense.emplace(r, *v);
    }
    {
      Tensor value(DT_FLOAT, dense_shape);
      for (int64_t i = 0; i < value.num_elements(); ++i) value.data<float>()[i] = 0.5f;
      std::map<int, std::vector<double>> gbps;
      for (int rep = 0; rep < config_.reps; ++rep) {
        for (int r : {1, 2}) {
          const auto start = Clock::now();
          Check(dense.at(r).Assign(value), "replication: assign");
          gbps[r].push_back(dense_bytes / Since(start) / 1e9);
        }
      }
      const double gbps1 = Summarize(gbps[1]).median;
      report_.Add({absl::StrCat("assign ", HumanBytes(dense_bytes), ", replication 2"), "GB/s",
                   Summarize(gbps[2]), "replication 1", gbps1, ""});
      report_.AddTarget({"dense assign r=2 / r=1",
                         gbps1 > 0 ? Summarize(gbps[2]).median / gbps1 : 0, true, 0.45, ""});
    }

    // A dense Adam step of the same size (a streamed apply: its gradient
    // reaches the backup in chunks while it is sent), after the slots and
    // their backups are made. Reported, not a target of its own.
    {
      client::Optimizer adam(**session, client::opt::Adam{});
      Tensor gradient(DT_FLOAT, dense_shape);
      for (int64_t i = 0; i < gradient.num_elements(); ++i) {
        gradient.data<float>()[i] = static_cast<float>(i % 97) / 97.f - 0.5f;
      }
      std::map<int, std::vector<double>> gbps;
      for (int r : {1, 2}) {
        Check(adam.ApplyGradients({{gradient, dense.at(r)}}), "replication: first Adam step");
      }
      // The slots' backups are copied before the first timed step.
      for (int r : {1, 2}) {
        for (const char* slot : {"m", "v"}) {
          auto s = adam.GetSlot(dense.at(r), slot);
          if (!s.ok()) return Check(s.status(), "replication: Adam slot");
          for (absl::Time deadline = absl::Now() + absl::Seconds(120); absl::Now() < deadline;
               absl::SleepFor(absl::Milliseconds(50))) {
            if (!s->Refresh().ok()) break;
            if (s->handle().parts(0).in_sync_shards_size() >= r - 1) break;
          }
        }
      }
      for (int rep = 0; rep < config_.reps; ++rep) {
        for (int r : {1, 2}) {
          const auto start = Clock::now();
          Check(adam.ApplyGradients({{gradient, dense.at(r)}}), "replication: Adam step");
          gbps[r].push_back(dense_bytes / Since(start) / 1e9);
        }
      }
      const double gbps1 = Summarize(gbps[1]).median;
      report_.Add({absl::StrCat("apply_dense Adam ", HumanBytes(dense_bytes), ", replication 2"),
                   "GB/s", Summarize(gbps[2]), "replication 1", gbps1,
                   absl::StrFormat("x%.2f of replication 1 (gradient bytes per second)",
                                   gbps1 > 0 ? Summarize(gbps[2]).median / gbps1 : 0)});
    }

    // scatter_add of 4096 Zipf(1.1) rows x 64 floats, 4 threads.
    const int64_t table_rows = int64_t{1} << 18;
    std::map<int, client::Variable> sparse;
    for (int r : {1, 2}) {
      auto v = declare(absl::StrCat("bench/rep_sparse_r", r), r, DT_FLOAT,
                       TensorShape{table_rows, 64});
      if (!v.ok()) return Check(v.status(), "replication: declare");
      sparse.emplace(r, *v);
    }
    {
      std::vector<Tensor> indices;
      for (int t = 0; t < 4; ++t) {
        indices.push_back(*Tensor::FromVector<int64_t>(
            TensorShape{config_.scatter_batch},
            ZipfIndices(table_rows, 1.1, config_.scatter_batch, 77 + t)));
      }
      Tensor values(DT_FLOAT, TensorShape{config_.scatter_batch, 64});
      for (int64_t i = 0; i < values.num_elements(); ++i) values.data<float>()[i] = 1;
      std::map<int, std::vector<double>> rows_per_s, p50s;
      for (int rep = 0; rep < config_.reps; ++rep) {
        for (int r : {1, 2}) {
          client::Variable& v = sparse.at(r);
          auto [rate, lat] = RunConcurrent(4, config_.op_seconds, [&](int t) {
            return v.ScatterAdd(indices[t], values).ok();
          });
          rows_per_s[r].push_back(rate * static_cast<double>(config_.scatter_batch));
          p50s[r].push_back(Percentile(lat, 0.5));
        }
      }
      const double rows1 = Summarize(rows_per_s[1]).median;
      report_.Add({absl::StrCat("scatter_add ", config_.scatter_batch, "x64, 4 threads, "
                                "replication 2"),
                   "rows/s", Summarize(rows_per_s[2]), "replication 1", rows1,
                   absl::StrFormat("p50 %.2f ms", Summarize(p50s[2]).median * 1e3)});
      report_.AddTarget({"scatter_add r=2 / r=1",
                         rows1 > 0 ? Summarize(rows_per_s[2]).median / rows1 : 0, true, 0.45, ""});
    }

    // Failover: the primary of a replicated counter SIGKILLed while a
    // trainer counts; the time from the kill to the first write answered
    // after it.
    auto counter = declare("bench/rep_failover", 2, DT_INT64, TensorShape{});
    if (!counter.ok()) return Check(counter.status(), "replication: declare");
    std::atomic<bool> stop{false};
    std::atomic<int64_t> acked{0};
    std::atomic<int64_t> last_ack_ns{0};
    std::thread trainer([&] {
      while (!stop.load()) {
        if (counter->AssignAdd(one).ok()) {
          acked.fetch_add(1);
          last_ack_ns.store(Clock::now().time_since_epoch().count());
        }
      }
    });
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const int primary = counter->handle().parts(0).shard_id();
    const int64_t before = acked.load();
    const auto killed_at = Clock::now();
    Check((*cluster)->KillShard(primary), "replication: kill the primary");
    while (acked.load() <= before + 1 && Since(killed_at) < 60) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // The first answer after the kill (the writes in flight at the kill
    // are answered by the new primary, from its request window or anew).
    const double stalled =
        acked.load() > before + 1
            ? std::chrono::duration<double>(Clock::time_point(Clock::duration(last_ack_ns.load())) -
                                            killed_at)
                  .count()
            : 60;
    stop.store(true);
    trainer.join();
    report_.Add({"failover: writes resume after the primary's SIGKILL", "s", Same(stalled),
                 "lease period", kLeaseSeconds,
                 absl::StrFormat("shard %d killed; %lld writes answered before", primary,
                                 static_cast<long long>(before))});
    report_.AddTarget({"failover stall / lease period", stalled / kLeaseSeconds, false, 2.0, ""});
    session->reset();
    cluster->reset();
  }

  // Embedding tables (issue 19) on a coordinator and two shards of its own
  // (tables are declared through the coordinator): by-key gather,
  // scatter_add and Adagrad apply_sparse of Zipf(1.1) batches on a table
  // of dim 64 filled with ~1M rows, beside the same batches on a dense
  // variable of the same shape and parts; the bytes per row the shards
  // account; then the fence pause of saves of a 10M-row table while a
  // trainer scatter_adds into it.
  void Embedding() {
    char tmpl[] = "/tmp/psd_bench_emb_XXXXXX";
    const std::string dir = mkdtemp(tmpl) == nullptr ? std::string() : std::string(tmpl);
    if (dir.empty()) return Check(absl::InternalError("mkdtemp failed"), "embedding");
    integration::TestClusterOptions options;
    options.num_shards = 2;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir,
                                "--max-to-keep", "1"};
    auto cluster = integration::TestCluster::Start(options);
    if (!cluster.ok()) {
      std::system(absl::StrCat("rm -rf '", dir, "'").c_str());
      return Check(cluster.status(), "embedding: start a cluster");
    }
    auto session = client::Session::Open((*cluster)->coordinator_address());
    if (!session.ok()) {
      Check(session.status(), "embedding: connect");
    } else {
      EmbeddingByKey(**cluster, **session);
      EmbeddingFencePause(**cluster, **session, dir);
    }
    if (session.ok()) session->reset();
    cluster->reset();
    std::system(absl::StrCat("rm -rf '", dir, "'").c_str());
  }

  static std::vector<pid_t> ShardPids(integration::TestCluster& cluster, int shards) {
    std::vector<pid_t> pids;
    for (int k = 0; k < shards; ++k) pids.push_back(cluster.shard(k)->pid());
    return pids;
  }

  // Ids spread over the int64 range (a multiplicative hash of 0..N-1), as
  // hashed feature ids are.
  static int64_t SpreadKey(int64_t id) {
    return static_cast<int64_t>(static_cast<uint64_t>(id) * 2654435761ull);
  }

  // Rows and bytes the shards account for the parts of `table` (its slot
  // rows count with them; /metrics psd_shard_embedding_bytes gives the
  // same figure per part).
  std::pair<int64_t, int64_t> TableFootprint(integration::TestCluster& cluster, int shards,
                                             const client::EmbeddingVariable& table) {
    int64_t bytes = 0;
    for (int k = 0; k < shards; ++k) {
      auto shard = ShardClient::Connect(cluster.shard_address(k));
      if (!shard.ok()) {
        Check(shard.status(), "embedding: connect to a shard");
        continue;
      }
      auto infos = (*shard)->List(table.name());
      if (!infos.ok()) {
        Check(infos.status(), "embedding: list");
        continue;
      }
      for (const client::VariableInfo& info : *infos) {
        if (info.name == table.name() || info.name.rfind(table.name() + "/part_", 0) == 0) {
          bytes += info.bytes;
        }
      }
    }
    auto rows = table.Size();
    Check(rows.status(), "embedding: size");
    return {rows.ok() ? *rows : 0, bytes};
  }

  // Imports rows 0..rows-1 (keys SpreadKey(id)) in batches of `batch`, all
  // values `value` (and each slot's `slot_value`); returns rows/s.
  double FillTable(const client::EmbeddingVariable& table, int64_t rows, int64_t dim,
                   int64_t batch, const std::vector<client::EmbeddingVariable>& slots = {},
                   float slot_value = 0) {
    const auto start = Clock::now();
    for (int64_t first = 0; first < rows; first += batch) {
      const int64_t m = std::min(batch, rows - first);
      std::vector<int64_t> keys(static_cast<size_t>(m));
      for (int64_t i = 0; i < m; ++i) keys[static_cast<size_t>(i)] = SpreadKey(first + i);
      client::EmbeddingRowSet set;
      set.keys = *Tensor::FromVector<int64_t>(TensorShape{m}, keys);
      set.values = Tensor(DT_FLOAT, TensorShape{m, dim});
      std::fill_n(set.values.data<float>(), m * dim, 0.01f);
      set.freqs = Tensor(DT_INT64, TensorShape{0});  // none: the import's defaults
      set.versions = Tensor(DT_INT64, TensorShape{0});
      for (size_t s = 0; s < slots.size(); ++s) {
        Tensor slot(DT_FLOAT, TensorShape{m, dim});
        std::fill_n(slot.data<float>(), m * dim, slot_value);
        set.slot_values.push_back(std::move(slot));
      }
      absl::Status s = table.Import(set, slots);
      if (!s.ok()) {
        Check(s, "embedding: import");
        return 0;
      }
    }
    return rows / Since(start);
  }

  void EmbeddingByKey(integration::TestCluster& cluster, client::Session& session) {
    const int shards = 2;
    const std::vector<pid_t> pids = ShardPids(cluster, shards);
    const int64_t rows = config_.quick ? 10000 : (int64_t{1} << 20);
    const int64_t dim = 64, n = config_.scatter_batch;
    const std::string name = "bench/emb", dense_name = "bench/emb_dense";
    client::EmbeddingVariableOptions o;
    o.embedding_dim = dim;
    o.dtype = DT_FLOAT;
    o.initializer = client::init::Zeros();
    o.partitioner = client::partitioners::FixedSize(2);
    auto table = session.GetEmbeddingVariable(name, o);
    if (!table.ok()) return Check(table.status(), "embedding: declare " + name);
    client::GetVariableOptions d;
    d.dtype = DT_FLOAT;
    d.shape = TensorShape{rows, dim};
    d.partitioner = client::partitioners::FixedSize(2);
    d.initializer = client::init::Zeros();
    d.initialize = true;
    auto dense = session.GetVariable(dense_name, d);
    if (!dense.ok()) return Check(dense.status(), "embedding: declare " + dense_name);

    int64_t rss_before = 0;
    for (pid_t pid : pids) rss_before += ResidentBytes(pid);
    const double import_rate = FillTable(*table, rows, dim, int64_t{1} << 16);
    int64_t rss_after = 0;
    for (pid_t pid : pids) rss_after += ResidentBytes(pid);
    const auto [held_rows, held_bytes] = TableFootprint(cluster, shards, *table);
    if (held_rows != rows) {
      Check(absl::InternalError(absl::StrCat("the table holds ", held_rows, " rows, ", rows,
                                             " were imported")),
            "embedding: fill");
    }

    // Zipf(1.1) batches over the filled ids: the table's keys, and the
    // dense variable's row indices (the same rows, the same duplicates).
    const int batches = config_.quick ? 4 : 16;
    const int passes = config_.quick ? 1 : 4;
    std::vector<Tensor> keys, indices;
    for (int b = 0; b < batches; ++b) {
      std::vector<int64_t> ids = ZipfIndices(rows, 1.1, static_cast<size_t>(n), 3000 + b);
      indices.push_back(*Tensor::FromVector<int64_t>(TensorShape{n}, ids));
      for (int64_t& id : ids) id = SpreadKey(id);
      keys.push_back(*Tensor::FromVector<int64_t>(TensorShape{n}, ids));
    }
    Tensor updates(DT_FLOAT, TensorShape{n, dim});
    std::fill_n(updates.data<float>(), n * dim, 0.001f);
    const double row_bytes = 8.0 + 4.0 * dim;
    const double network = RawTcpNow() * 1e9 / row_bytes;
    const int64_t per_rep = static_cast<int64_t>(batches) * passes * n;

    // One workload: `op(b)` over the batches from `inflight` threads, reps
    // after one warm-up round; rows/s and CPU per row.
    auto measure = [&](int inflight, const std::function<absl::Status(int)>& op,
                       const std::string& what, CpuMeter* cpu) {
      std::vector<double> rates;
      for (int r = -1; r < config_.reps; ++r) {
        if (r >= 0) cpu->Start();
        const double seconds = RunBatches(inflight, batches * passes, [&](int b) {
          Check(op(b % batches), what);
        });
        if (r >= 0) {
          cpu->Stop(static_cast<double>(per_rep));
          rates.push_back(per_rep / seconds);
        }
      }
      return Summarize(rates);
    };
    const std::string shape = absl::StrCat(n, "x", dim, " Zipf");
    const std::string table_text =
        absl::StrCat("table ", rows, " rows, 2 parts on 2 shards");
    for (int inflight : {1, 4}) {
      const std::string how = absl::StrCat(", ", inflight, " in flight");
      CpuMeter dense_gather_cpu(pids), dense_scatter_cpu(pids), gather_cpu(pids),
          scatter_cpu(pids);
      const Stats dg = measure(
          inflight, [&](int b) { return dense->Gather(indices[b]).status(); }, "dense gather",
          &dense_gather_cpu);
      const Stats ds = measure(
          inflight, [&](int b) { return dense->ScatterAdd(indices[b], updates); },
          "dense scatter_add", &dense_scatter_cpu);
      const Stats g = measure(
          inflight, [&](int b) { return table->Gather(keys[b]).status(); }, "embedding gather",
          &gather_cpu);
      const Stats s = measure(
          inflight, [&](int b) { return table->ScatterAdd(keys[b], updates); },
          "embedding scatter_add", &scatter_cpu);
      report_.Add(Row{absl::StrCat("dense variable gather ", shape, how), "rows/s", dg,
                      "raw TCP rows/s", network, absl::StrCat(rows, "x", dim, ", 2 parts")}
                      .Cpu(dense_gather_cpu, "row"));
      report_.Add(Row{absl::StrCat("dense variable scatter_add ", shape, how), "rows/s", ds,
                      "raw TCP rows/s", network, absl::StrCat(rows, "x", dim, ", 2 parts")}
                      .Cpu(dense_scatter_cpu, "row"));
      report_.Add(Row{absl::StrCat("embedding gather ", shape, how), "rows/s", g,
                      "dense variable gather", dg.median,
                      absl::StrFormat("raw TCP rows/s x%.2f; %s", g.median / network, table_text)}
                      .Cpu(gather_cpu, "row"));
      report_.Add(Row{absl::StrCat("embedding scatter_add ", shape, how), "rows/s", s,
                      "dense variable scatter_add", ds.median,
                      absl::StrFormat("raw TCP rows/s x%.2f; %s", s.median / network, table_text)}
                      .Cpu(scatter_cpu, "row"));
      report_.AddTarget({absl::StrCat("embedding gather ", n, "x", dim, ", ", inflight,
                                      " in flight / dense variable gather"),
                         g.median / dg.median, true, 0.8, ""});
      report_.AddTarget({absl::StrCat("embedding scatter_add ", n, "x", dim, ", ", inflight,
                                      " in flight / dense variable scatter_add"),
                         s.median / ds.median, true, 0.8, ""});
    }

    // Memory: the bytes the shards account per row, against the raw keys
    // and values (8 + 4 x dim), and the shards' RSS growth over the fill.
    report_.Add({absl::StrCat("embedding bytes/row accounted, ", rows, " rows x ", dim),
                 "B/row", Same(static_cast<double>(held_bytes) / std::max<int64_t>(1, held_rows)),
                 "8 key + 4 x dim values", row_bytes,
                 absl::StrFormat("shards' RSS growth over the import %.1f B/row; import %.3g "
                                 "rows/s in 64K-row batches",
                                 static_cast<double>(rss_after - rss_before) / rows, import_rate)});
    report_.AddTarget({absl::StrCat("embedding bytes/row accounted / (8 + 4 x ", dim, "), ", rows,
                                    " rows"),
                       static_cast<double>(held_bytes) / std::max<int64_t>(1, held_rows) /
                           row_bytes,
                       false, 1.3, ""});

    // Adagrad through client::Optimizer: the table's accumulator is a slot
    // table; every row gets its slot row first (imported), so the applies
    // meet a table with its slots, as a trained one is.
    client::Optimizer optimizer(session, client::opt::Adagrad{});
    Check(optimizer.CreateSlots({table->variable(), *dense}), "embedding: create slots");
    auto slot_var = optimizer.GetSlot(table->variable(), "accumulator");
    if (!slot_var.ok()) return Check(slot_var.status(), "embedding: the accumulator slot");
    auto slot = client::EmbeddingVariable::Of(*slot_var);
    if (!slot.ok()) return Check(slot.status(), "embedding: the accumulator slot table");
    FillTable(*table, rows, dim, int64_t{1} << 15, {*slot}, 0.1f);
    const auto [slot_rows, slot_bytes] = TableFootprint(cluster, shards, *table);
    for (int inflight : {1, 4}) {
      const std::string how = absl::StrCat(", ", inflight, " in flight");
      CpuMeter dense_cpu(pids), table_cpu(pids);
      const Stats da = measure(
          inflight,
          [&](int b) {
            return optimizer.ApplyGradients(
                {{client::IndexedSlices{updates, indices[b], std::nullopt}, *dense}});
          },
          "dense apply_sparse", &dense_cpu);
      const Stats ta = measure(
          inflight,
          [&](int b) {
            return optimizer.ApplyGradients(
                {{client::IndexedSlices{updates, keys[b], std::nullopt}, table->variable()}});
          },
          "embedding apply_sparse", &table_cpu);
      report_.Add(Row{absl::StrCat("dense variable apply_sparse Adagrad ", shape, how), "rows/s",
                      da, "raw TCP rows/s", network, "client::Optimizer"}
                      .Cpu(dense_cpu, "row"));
      report_.Add(Row{absl::StrCat("embedding apply_sparse Adagrad ", shape, how), "rows/s", ta,
                      "dense variable apply_sparse", da.median,
                      absl::StrCat("client::Optimizer, accumulator slot table; ", table_text)}
                      .Cpu(table_cpu, "row"));
    }
    report_.Add({absl::StrCat("embedding bytes/row accounted with Adagrad slot, ", slot_rows,
                              " rows"),
                 "B/row", Same(static_cast<double>(slot_bytes) / std::max<int64_t>(1, slot_rows)),
                 "8 key + 2 x 4 x dim", row_bytes + 4.0 * dim, ""});
    for (const std::string& v : {slot_var->name(), name, dense_name + "/Adagrad", dense_name}) {
      session.DeleteVariable(v).IgnoreError();
    }
  }

  // The shards' psd_shard_fence_pause_seconds histograms (count, sum and
  // cumulative buckets, over both shards).
  struct FenceHistogram {
    double count = 0, sum = 0;
    std::map<double, double> buckets;  // le -> cumulative count
  };
  FenceHistogram ScrapeFencePauses(integration::TestCluster& cluster, int shards) {
    FenceHistogram h;
    const std::string name = "psd_shard_fence_pause_seconds";
    for (int k = 0; k < shards; ++k) {
      auto port = cluster.shard_http_port(k);
      if (!port.ok()) return h;
      auto reply = testing_http::HttpGet("127.0.0.1", *port, "/metrics");
      if (!reply.ok()) return h;
      auto metrics = testing_http::ParseMetrics(reply->body);
      if (!metrics.ok()) return h;
      for (const auto& [key, value] : *metrics) {
        if (key == name + "_count") h.count += value;
        if (key == name + "_sum") h.sum += value;
        const std::string bucket = name + "_bucket{le=\"";
        if (key.rfind(bucket, 0) == 0) {
          const std::string le = key.substr(bucket.size(), key.size() - bucket.size() - 2);
          double bound = 0;
          if (le == "+Inf") {
            bound = HUGE_VAL;
          } else if (!absl::SimpleAtod(le, &bound)) {
            continue;
          }
          h.buckets[bound] += value;
        }
      }
    }
    return h;
  }

  void EmbeddingFencePause(integration::TestCluster& cluster, client::Session& session,
                           const std::string& dir) {
    const int shards = 2;
    const int64_t rows = config_.quick ? 10000 : 10'000'000;
    const int64_t dim = 8;
    const std::string name = "bench/emb_ckpt";
    client::EmbeddingVariableOptions o;
    o.embedding_dim = dim;
    o.dtype = DT_FLOAT;
    o.initializer = client::init::Zeros();
    o.partitioner = client::partitioners::FixedSize(2);
    auto table = session.GetEmbeddingVariable(name, o);
    if (!table.ok()) return Check(table.status(), "embedding: declare " + name);
    const double import_rate = FillTable(*table, rows, dim, int64_t{1} << 16);
    const auto [held_rows, held_bytes] = TableFootprint(cluster, shards, *table);
    client::SaverOptions so;
    so.variables = {name};
    auto saver = client::Saver::Create(cluster.coordinator_address(), so);
    if (!saver.ok()) return Check(saver.status(), "embedding: saver");

    // One trainer scatter_adds Zipf(1.1) batches of 1024 keys throughout.
    std::atomic<bool> stop{false};
    std::atomic<int64_t> updates{0}, failures{0};
    std::thread trainer([&] {
      std::vector<int64_t> ids = ZipfIndices(rows, 1.1, 1024, 4000);
      for (int64_t& id : ids) id = SpreadKey(id);
      const Tensor keys = *Tensor::FromVector<int64_t>(TensorShape{1024}, ids);
      Tensor values(DT_FLOAT, TensorShape{1024, dim});
      std::fill_n(values.data<float>(), 1024 * dim, 1.0f);
      while (!stop.load()) {
        if (table->ScatterAdd(keys, values).ok()) {
          updates.fetch_add(1);
        } else {
          failures.fetch_add(1);
        }
      }
    });
    const FenceHistogram before = ScrapeFencePauses(cluster, shards);
    std::vector<double> pauses_ms, save_seconds;
    int64_t bytes = 0;
    const int saves = config_.quick ? 2 : 5;
    const auto load_start = Clock::now();
    for (int r = 0; r < saves; ++r) {
      client::SaveDetails details;
      auto saved = (*saver)->Save(dir + "/emb.ckpt", r, &details);
      if (!saved.ok()) {
        Check(saved.status(), "embedding: save under load");
        break;
      }
      pauses_ms.push_back(absl::ToDoubleMilliseconds(details.fence_pause));
      save_seconds.push_back(details.seconds);
      bytes = details.bytes;
    }
    const double load_seconds = Since(load_start);
    stop.store(true);
    trainer.join();
    const FenceHistogram after = ScrapeFencePauses(cluster, shards);
    if (failures.load() > 0) {
      Check(absl::InternalError(absl::StrCat(failures.load(), " scatter_adds failed")),
            "embedding: trainer during saves");
    }
    session.DeleteVariable(name).IgnoreError();
    if (pauses_ms.empty()) return;
    // The shards' own account: mean pause and the smallest bucket bound
    // holding every pause of these saves.
    std::string shard_text = "shard histogram unavailable";
    const double count = after.count - before.count;
    if (count > 0) {
      double bound = HUGE_VAL;
      for (const auto& [le, cumulative] : after.buckets) {
        const auto it = before.buckets.find(le);
        if (cumulative - (it == before.buckets.end() ? 0 : it->second) >= count) {
          bound = le;
          break;
        }
      }
      shard_text = absl::StrFormat(
          "shards' psd_shard_fence_pause_seconds: %.0f fences, mean %.2f ms, all <= %g ms",
          count, (after.sum - before.sum) / count * 1e3, bound * 1e3);
    }
    const Stats ps = Summarize(pauses_ms), ss = Summarize(save_seconds);
    const double max_ms = ps.max;
    report_.Add({absl::StrCat("embedding save fence pause, ", rows, "x", dim,
                              " table under scatter_add (", pauses_ms.size(), " saves)"),
                 "ms", ps, "-", 0,
                 absl::StrFormat("%s; %.0f scatter_adds/s of 1024 keys (a table's copied rows "
                                 "are not in SaveDetails::copied_bytes)",
                                 shard_text, updates.load() / load_seconds)});
    report_.Add({absl::StrCat("embedding save of ", rows, "x", dim, " table, 2 parts"), "s", ss,
                 "sequential write + fsync", fsync_ > 0 ? bytes / fsync_ / 1e9 : 0,
                 absl::StrFormat("%s a save (%.3g GB/s); %.1f B/row accounted; import %.3g rows/s",
                                 HumanBytes(bytes), bytes / ss.median / 1e9,
                                 static_cast<double>(held_bytes) / std::max<int64_t>(1, held_rows),
                                 import_rate)});
    report_.AddTarget({absl::StrCat("embedding: fence pause of a ", rows / 1000000 > 0
                                                                         ? absl::StrCat(rows / 1000000, "M")
                                                                         : absl::StrCat(rows / 1000, "K"),
                                    "-row table save < 50 ms"),
                       max_ms, false, 50,
                       absl::StrFormat("slowest of %d saves; median %.2f ms", pauses_ms.size(),
                                       ps.median)});
  }

  const Config config_;
  const std::string shard_address_;
  const pid_t shard_pid_;
  std::unique_ptr<Bare::Stub> bare_;
  std::unique_ptr<ShardClient> shard_;
  std::unique_ptr<ShardClient> shard_unary_;  // data_stream = false
  Report report_;
  bool failed_ = false;
  double memcpy_ = 0, axpy_ = 0, tcp_ = 0, fsync_ = 0;
};

}  // namespace
}  // namespace bench
}  // namespace psd

int main(int argc, char** argv) {
  using namespace psd::bench;
  CLI::App app{"psd_bench: psd's data path beside its baselines, in one run"};
  Config config;
  std::string shard_address, json_path, shard_device;
  app.add_flag("--quick", config.quick, "Seconds-long smoke run with small sizes");
  app.add_option("--shard", shard_address, "Use a running shard instead of starting one");
  app.add_option("--shard-device", shard_device,
                 "Device of the shard it starts (cpu, gpu:N); the checkpoint cluster stays on cpu");
  app.add_option("--json", json_path, "Also write the table as JSON here");
  app.add_option("--reps", config.reps, "Repetitions per workload")->check(CLI::PositiveNumber);
  app.add_option("--fsync-dir", config.fsync_dir, "Directory for the fsync baseline");
  app.add_option("--only", config.only,
                 "Run only these workload groups: dense, small, sparse, sparse_merge, optimizers, "
                 "memory, checkpoints, embedding, migration, replication")
      ->delimiter(',')
      ->check(CLI::IsMember({"dense", "small", "sparse", "sparse_merge", "optimizers", "memory",
                             "checkpoints", "embedding", "migration", "replication"}));
  app.add_option("--sizes", config.sizes,
                 "Dense workload sizes in bytes instead of the defaults (e.g. 4194304,1073741824)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{4}, int64_t{1} << 34));
  app.add_option("--index-dist", config.index_dist,
                 "Index batches of the sparse workloads: zipf (Zipf(1.1), default) or distinct")
      ->check(CLI::IsMember({"zipf", "distinct"}));
  app.add_option("--table-rows", config.table_rows, "Rows of the sparse workloads' tables")
      ->check(CLI::PositiveNumber);
  app.add_option("--op-seconds", config.op_seconds,
                 "Seconds per rep of each small-op workload")
      ->check(CLI::PositiveNumber);
  pid_t external_shard_pid = 0;
  app.add_option("--frames-in-flight", config.frames_in_flight,
                 "The data stream's messages awaiting replies (ClientOptions)")
      ->check(CLI::PositiveNumber);
  app.add_option("--shard-pid", external_shard_pid,
                 "With --shard: the shard's pid on this machine, to read its CPU time");
  CLI11_PARSE(app, argc, argv);
  if (config.quick) {
    config.reps = std::min(config.reps, 2);
    if (app.count("--op-seconds") == 0) config.op_seconds = 0.3;
    config.dense_sizes = {4 << 10, 256 << 10, 8 << 20};
    if (app.count("--table-rows") == 0) config.table_rows = 1 << 16;
    config.memory_bytes = 64 << 20;
  } else {
    config.dense_sizes = {4 << 10,         256 << 10,          4 << 20,
                          64 << 20,        int64_t{256} << 20, int64_t{1} << 30};
  }
  if (!config.sizes.empty()) config.dense_sizes = config.sizes;

  // The bare server forks before this process starts any thread.
  int bare_port = 0;
  const pid_t bare_pid = ForkBareServer(512 << 20, &bare_port);
  if (bare_pid <= 0 || bare_port == 0) {
    std::fprintf(stderr, "cannot start the bare gRPC baseline server\n");
    return 1;
  }

  std::unique_ptr<psd::integration::ShardProcess> shard;
  pid_t shard_pid = 0;
  if (shard_address.empty()) {
    psd::integration::ShardProcessOptions options;
    if (!shard_device.empty()) options.extra_args = {"--device", shard_device};
    auto started = psd::integration::ShardProcess::Start(options);
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start a shard: %s\n", started.status().ToString().c_str());
      kill(bare_pid, SIGTERM);
      waitpid(bare_pid, nullptr, 0);
      return 1;
    }
    shard = std::move(started).value();
    shard_address = shard->address();
    shard_pid = shard->pid();
  } else {
    shard_pid = external_shard_pid;
  }
  std::printf("psd_bench: shard %s%s%s, %s run, %d reps\n", shard_address.c_str(),
              shard_device.empty() ? "" : " on ", shard_device.c_str(), config.quick ? "quick" : "full", config.reps);
  int rc;
  {
    Bench bench(config, shard_address, bare_port, shard_pid);
    rc = bench.Run();
    if (!json_path.empty() && !bench.report().WriteJson(json_path)) rc = 1;
  }
  shard.reset();
  kill(bare_pid, SIGTERM);
  waitpid(bare_pid, nullptr, 0);
  return rc;
}
