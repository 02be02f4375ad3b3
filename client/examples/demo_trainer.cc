// psd_demo_trainer: connects to one shard, creates variables of several
// dtypes and runs every variable op against them, printing each step and its
// result. Deliberately bad requests show the errors the shard answers with.
// Exits 1 if any step turns out differently than expected, and deletes what
// it created so it can run again against the same shard.
//
//   psd_demo_trainer --shard 127.0.0.1:7000
//   psd_demo_trainer --shard 127.0.0.1:7000 --rate-ops 20000   # small-op rates
#include <cstdint>
#include <cstdio>
#include <future>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "psd/client.h"
#include "psd/float16.h"
#include "psd/initializers.h"
#include "psd/tensor.h"

namespace psd {
namespace client {
namespace {

constexpr char kPrefix[] = "psd_demo/";

std::string Name(const std::string& short_name) { return kPrefix + short_name; }

template <typename T>
Tensor Vec(TensorShape shape, const std::vector<T>& values) {
  return Tensor::FromVector(std::move(shape), values).value();
}

std::vector<half> Halves(const std::vector<float>& values) {
  std::vector<half> out;
  for (float v : values) out.emplace_back(v);
  return out;
}

// Runs the steps and counts the ones that went differently than expected.
class Demo {
 public:
  explicit Demo(ShardClient* shard) : shard_(shard) {}

  int failures() const { return failures_; }

  void Section(const std::string& title) { std::printf("\n== %s\n", title.c_str()); }

  // An op expected to succeed.
  bool Ok(const std::string& step, const absl::Status& status, const std::string& result = "") {
    if (!status.ok()) {
      Fail(step, absl::StrCat("unexpected error ", status.ToString()));
      return false;
    }
    std::printf("  %-52s -> ok%s%s\n", step.c_str(), result.empty() ? "" : ": ", result.c_str());
    return true;
  }
  template <typename T>
  bool Ok(const std::string& step, const absl::StatusOr<T>& result, const std::string& shown) {
    return Ok(step, result.status(), result.ok() ? shown : "");
  }

  // An op expected to fail with `code` and a message containing `text`.
  void Error(const std::string& step, const absl::Status& status, absl::StatusCode code,
             const std::string& text) {
    if (status.code() != code || status.message().find(text) == std::string::npos) {
      Fail(step, absl::StrCat("expected ", absl::StatusCodeToString(code), " containing \"", text,
                              "\", got ", status.ToString()));
      return;
    }
    std::printf("  %-52s -> error as expected: %s\n", step.c_str(), status.ToString().c_str());
  }

  // Reads `name` and compares it with `want`.
  void ExpectValue(const std::string& name, const Tensor& want) {
    auto got = shard_->Read(name);
    if (!got.ok()) {
      Fail("read " + name, got.status().ToString());
      return;
    }
    if (*got != want) {
      Fail("read " + name, absl::StrCat("got ", got->DebugString(), ", want ", want.DebugString()));
      return;
    }
    std::printf("  %-52s -> %s\n", ("read " + name).c_str(), got->DebugString().c_str());
  }

  void Fail(const std::string& step, const std::string& why) {
    ++failures_;
    std::printf("  %-52s -> UNEXPECTED: %s\n", step.c_str(), why.c_str());
  }

 private:
  ShardClient* const shard_;
  int failures_ = 0;
};

std::string Show(const Tensor& t) { return t.DebugString(12); }

void Run(ShardClient* shard, Demo* demo) {
  const std::string weights = Name("weights"), bias = Name("bias"), step = Name("global_step");
  const std::string flags = Name("flags"), vocab = Name("vocab"), half_v = Name("half");
  const std::string emb = Name("embedding"), lazy = Name("lazy"), counter = Name("counter");

  demo->Section("create variables");
  auto created = [&](const std::string& step, const absl::StatusOr<VariableInfo>& info) {
    demo->Ok(step, info,
             info.ok() ? absl::StrCat(DataTypeName(info->dtype), info->shape.ToString(),
                                      info->initialized ? "" : " (uninitialized)")
                       : "");
  };
  created("create " + weights + " truncated_normal",
          shard->Create(weights, DT_FLOAT, TensorShape{3, 4},
                        init::TruncatedNormal(0.0, 0.1, /*seed=*/42)));
  created("create " + bias + " zeros",
          shard->Create(bias, DT_FLOAT, TensorShape{4}, init::Zeros()));
  created("create " + step + " = 0", shard->Create(step, Tensor::Scalar<int64_t>(0)));
  created("create " + flags + " = [true, false, true]",
          shard->Create(flags, Vec<bool>({3}, {true, false, true})));
  created("create " + vocab + " = [the, quick, fox]",
          shard->Create(vocab, Tensor::FromStrings({3}, {"the", "quick", "fox"}).value()));
  created("create " + half_v + " ones",
          shard->Create(half_v, DT_HALF, TensorShape{4}, init::Ones()));
  created(
      "create " + emb + " random_uniform(-1, 1)",
      shard->Create(emb, DT_FLOAT, TensorShape{6, 3}, init::RandomUniform(-1.0, 1.0, /*seed=*/7)));
  CreateOptions deferred;
  deferred.initialize = false;
  created(
      "create " + lazy + " random_normal, deferred",
      shard->Create(lazy, DT_DOUBLE, TensorShape{2}, init::RandomNormal(0.0, 1.0, 3), deferred));
  created("create " + counter + " = 0", shard->Create(counter, Tensor::Scalar<int32_t>(0)));

  demo->Section("list");
  auto vars = shard->List(kPrefix);
  if (demo->Ok("list " + std::string(kPrefix), vars,
               vars.ok() ? absl::StrCat(vars->size(), " variables") : "")) {
    for (const auto& v : *vars) {
      std::printf("    %-24s %-8s %-8s initialized=%d version=%llu bytes=%lld\n", v.name.c_str(),
                  DataTypeName(v.dtype).c_str(), v.shape.ToString().c_str(), v.initialized,
                  static_cast<unsigned long long>(v.version), static_cast<long long>(v.bytes));
    }
    if (vars->size() != 9) demo->Fail("list", absl::StrCat("want 9 variables, got ", vars->size()));
  }

  demo->Section("read and gather");
  auto value = shard->Read(weights);
  demo->Ok("read " + weights, value, value.ok() ? Show(*value) : "");
  value = shard->Read(emb);
  demo->Ok("read " + emb, value, value.ok() ? Show(*value) : "");
  auto rows = shard->Gather(emb, Vec<int64_t>({3}, {4, 0, 4}));
  demo->Ok("gather " + emb + " rows [4,0,4]", rows, rows.ok() ? Show(*rows) : "");
  if (rows.ok() && value.ok()) {
    const float* all = value->data<float>();
    std::vector<float> want;
    for (int r : {4, 0, 4}) want.insert(want.end(), all + 3 * r, all + 3 * r + 3);
    if (*rows != Vec<float>({3, 3}, want)) demo->Fail("gather", "rows differ from the read value");
  }

  demo->Section("assign, assign_add, assign_sub");
  Tensor new_value;
  // The op runs before its result is shown: arguments of one call are
  // evaluated in no fixed order.
  absl::Status status = shard->Assign(bias, Vec<float>({4}, {0.5f, 1, 1.5f, 2}), {}, &new_value);
  demo->Ok("assign " + bias + " = [0.5, 1, 1.5, 2]", status, Show(new_value));
  status = shard->AssignAdd(bias, Vec<float>({4}, {1, 1, 1, 1}), {}, &new_value);
  demo->Ok("assign_add " + bias + " += [1, 1, 1, 1]", status, Show(new_value));
  demo->Ok("assign_sub " + bias + " -= [0.5, 0.5, 0.5, 0.5]",
           shard->AssignSub(bias, Vec<float>({4}, {0.5f, 0.5f, 0.5f, 0.5f})));
  demo->ExpectValue(bias, Vec<float>({4}, {1, 1.5f, 2, 2.5f}));
  for (int i = 0; i < 3; ++i) {
    demo->Ok("assign_add " + step + " += 1", shard->AssignAdd(step, Tensor::Scalar<int64_t>(1)));
  }
  demo->ExpectValue(step, Tensor::Scalar<int64_t>(3));
  demo->Ok("assign_add " + half_v + " += 0.25",
           shard->AssignAdd(half_v, Vec<half>({4}, Halves({0.25f, 0.25f, 0.25f, 0.25f}))));
  demo->ExpectValue(half_v, Vec<half>({4}, Halves({1.25f, 1.25f, 1.25f, 1.25f})));
  demo->Ok("assign " + flags + " = [false, true, true]",
           shard->Assign(flags, Vec<bool>({3}, {false, true, true})));
  demo->ExpectValue(flags, Vec<bool>({3}, {false, true, true}));
  demo->Ok("assign " + vocab + " = [\"a\", \"lazy\", \"dog\"]",
           shard->Assign(vocab, Tensor::FromStrings({3}, {"a", "lazy", "dog"}).value()));
  rows = shard->Gather(vocab, Vec<int32_t>({2}, {2, 0}));
  demo->Ok("gather " + vocab + " [2,0]", rows, rows.ok() ? Show(*rows) : "");

  demo->Section("assign with validate_shape");
  AssignOptions reshape;
  reshape.validate_shape = false;
  demo->Ok("assign " + bias + " = float32[2,3] (validate_shape=false)",
           shard->Assign(bias, Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6}), reshape));
  demo->ExpectValue(bias, Vec<float>({2, 3}, {1, 2, 3, 4, 5, 6}));
  demo->Error("assign " + bias + " = float32[3] (validate_shape=true)",
              shard->Assign(bias, Vec<float>({3}, {1, 2, 3})), absl::StatusCode::kInvalidArgument,
              "[3]");

  demo->Section("scatter ops on " + emb);
  Tensor table(DT_FLOAT, TensorShape{6, 3});
  demo->Ok("assign " + emb + " = zeros", shard->Assign(emb, table));
  demo->Ok(
      "scatter_update rows [1,1] = [[1,1,1],[2,2,2]] (last wins)",
      shard->ScatterUpdate(emb, Vec<int64_t>({2}, {1, 1}), Vec<float>({2, 3}, {1, 1, 1, 2, 2, 2})));
  demo->Ok(
      "scatter_add rows [0,0] += [[1,2,3],[1,2,3]] (accumulates)",
      shard->ScatterAdd(emb, Vec<int32_t>({2}, {0, 0}), Vec<float>({2, 3}, {1, 2, 3, 1, 2, 3})));
  status =
      shard->ScatterSub(emb, Vec<int64_t>({2, 1}, {5, 3}), Tensor::Scalar<float>(0.5f), &new_value);
  demo->Ok("scatter_sub rows [[5],[3]] -= 0.5 (scalar broadcast)", status, Show(new_value));
  demo->ExpectValue(emb, Vec<float>({6, 3}, {2, 4, 6, 2, 2, 2, 0, 0, 0, -0.5f, -0.5f, -0.5f, 0, 0,
                                             0, -0.5f, -0.5f, -0.5f}));

  demo->Section("count_up_to");
  for (int i = 0; i < 3; ++i) {
    auto old = shard->CountUpTo(counter, 3);
    demo->Ok("count_up_to " + counter + " limit 3", old,
             old.ok() ? absl::StrCat("was ", *old) : "");
    if (old.ok() && *old != i) demo->Fail("count_up_to", absl::StrCat("want ", i, ", got ", *old));
  }
  demo->Error("count_up_to " + counter + " limit 3 (at the limit)",
              shard->CountUpTo(counter, 3).status(), absl::StatusCode::kOutOfRange,
              "Reached limit of 3");
  demo->ExpectValue(counter, Tensor::Scalar<int32_t>(3));

  demo->Section("initialization");
  auto uninit = shard->ReportUninitialized();
  demo->Ok("report_uninitialized", uninit,
           uninit.ok() ? "[" + absl::StrJoin(*uninit, ", ") + "]" : "");
  if (uninit.ok() && *uninit != std::vector<std::string>{lazy}) {
    demo->Fail("report_uninitialized", "want exactly [" + lazy + "]");
  }
  demo->Error("read " + lazy, shard->Read(lazy).status(), absl::StatusCode::kFailedPrecondition,
              "Attempting to use uninitialized value " + lazy);
  demo->Ok("initialize [" + lazy + "]", shard->Initialize({lazy}));
  value = shard->Read(lazy);
  demo->Ok("read " + lazy, value, value.ok() ? Show(*value) : "");
  uninit = shard->ReportUninitialized({lazy, weights});
  demo->Ok("report_uninitialized [lazy, weights]", uninit,
           uninit.ok() ? "[" + absl::StrJoin(*uninit, ", ") + "]" : "");
  if (uninit.ok() && !uninit->empty()) demo->Fail("report_uninitialized", "want []");

  demo->Section("bad requests (each must fail and change nothing)");
  demo->Error("read " + Name("missing"), shard->Read(Name("missing")).status(),
              absl::StatusCode::kNotFound, "variable '" + Name("missing") + "' not found");
  demo->Error("assign int32 value to float32 " + weights,
              shard->Assign(weights, Vec<int32_t>({3, 4}, std::vector<int32_t>(12, 1))),
              absl::StatusCode::kInvalidArgument, "int32");
  demo->Error("gather " + emb + " rows [0,1,6]",
              shard->Gather(emb, Vec<int64_t>({3}, {0, 1, 6})).status(),
              absl::StatusCode::kInvalidArgument, "indices[2] = 6 is not in [0, 6)");
  demo->Error("assign_add on bool " + flags,
              shard->AssignAdd(flags, Vec<bool>({3}, {true, true, true})),
              absl::StatusCode::kInvalidArgument, "bool");
  demo->Error("create " + weights + " again",
              shard->Create(weights, Tensor::Scalar<float>(1)).status(),
              absl::StatusCode::kAlreadyExists, weights);
  demo->ExpectValue(flags, Vec<bool>({3}, {false, true, true}));

  demo->Section("async burst: 64 assign_add in flight, then 8 gathers");
  {
    std::vector<std::future<absl::Status>> adds;
    for (int i = 0; i < 64; ++i)
      adds.push_back(shard->AssignAddAsync(step, Tensor::Scalar<int64_t>(1)));
    int failed = 0;
    for (auto& f : adds) failed += f.get().ok() ? 0 : 1;
    demo->Ok("64 x assign_add_async " + step + " += 1",
             failed == 0 ? absl::OkStatus() : absl::InternalError(absl::StrCat(failed, " failed")));
    auto now = shard->Read(step);
    demo->Ok("read " + step, now, now.ok() ? Show(*now) : "");
    std::vector<std::future<absl::StatusOr<Tensor>>> rows;
    for (int64_t r = 0; r < 8; ++r)
      rows.push_back(shard->GatherAsync(emb, Vec<int64_t>({1}, {r % 6})));
    for (int64_t r = 0; r < 8; ++r) {
      auto row = rows[r].get();
      demo->Ok(absl::StrCat("gather_async ", emb, " row ", r % 6), row, row.ok() ? Show(*row) : "");
    }
  }

  demo->Section("batched stream: many small ops per message, one status each");
  {
    auto batch = shard->OpenBatch();
    if (demo->Ok("open batch", batch.status())) {
      std::vector<std::future<absl::Status>> adds;
      for (int i = 0; i < 1000; ++i)
        adds.push_back((*batch)->AssignAdd(step, Tensor::Scalar<int64_t>(1)));
      auto bad = (*batch)->ScatterAdd(emb, Vec<int64_t>({1}, {6}), Tensor::Scalar<float>(1.0f));
      auto read = (*batch)->Read(step);
      int failed = 0;
      for (auto& f : adds) failed += f.get().ok() ? 0 : 1;
      demo->Ok(
          "1000 x batched assign_add " + step + " += 1",
          failed == 0 ? absl::OkStatus() : absl::InternalError(absl::StrCat(failed, " failed")));
      demo->Error("batched scatter_add " + emb + " row 6 (alone fails)", bad.get(),
                  absl::StatusCode::kInvalidArgument, "6");
      auto value = read.get();
      demo->Ok("batched read " + step, value, value.ok() ? Show(*value) : "");
      demo->Ok("close batch", (*batch)->Close());
    }
  }
  demo->ExpectValue(step, Tensor::Scalar<int64_t>(3 + 64 + 1000));
}

// Small-op rates: `n` int64 scalar assign_adds each way (sync one at a time,
// async with 64 in flight, batched), printed as ops per second.
void MeasureRates(ShardClient* shard, Demo* demo, int n) {
  const std::string v = Name("rate");
  if (!demo->Ok("create " + v, shard->Create(v, Tensor::Scalar<int64_t>(0)).status())) return;
  const Tensor one = Tensor::Scalar<int64_t>(1);
  auto report = [&](const char* how, absl::Time start, int failed) {
    const double s = absl::ToDoubleSeconds(absl::Now() - start);
    std::printf("  %-52s -> %.0f ops/s (%d ops in %.2f s, %d failed)\n", how, n / s, n, s, failed);
    if (failed > 0) demo->Fail(how, absl::StrCat(failed, " ops failed"));
  };
  absl::Time start = absl::Now();
  int failed = 0;
  for (int i = 0; i < n; ++i) failed += shard->AssignAdd(v, one).ok() ? 0 : 1;
  report("sync assign_add, one at a time", start, failed);

  start = absl::Now();
  failed = 0;
  std::vector<std::future<absl::Status>> window;
  for (int i = 0; i < n; ++i) {
    if (window.size() == 64) {
      for (auto& f : window) failed += f.get().ok() ? 0 : 1;
      window.clear();
    }
    window.push_back(shard->AssignAddAsync(v, one));
  }
  for (auto& f : window) failed += f.get().ok() ? 0 : 1;
  report("async assign_add, 64 in flight", start, failed);

  start = absl::Now();
  failed = 0;
  auto batch = shard->OpenBatch();
  if (!demo->Ok("open batch", batch.status())) return;
  std::vector<std::future<absl::Status>> done;
  done.reserve(n);
  for (int i = 0; i < n; ++i) done.push_back((*batch)->AssignAdd(v, one));
  for (auto& f : done) failed += f.get().ok() ? 0 : 1;
  report("batched assign_add, 64 per message", start, failed);
  demo->Ok("close batch", (*batch)->Close());
  demo->ExpectValue(v, Tensor::Scalar<int64_t>(3 * int64_t{n}));
}

// Deletes every variable under kPrefix (this run's, or a crashed run's).
void Cleanup(ShardClient* shard, Demo* demo, bool quiet_if_none) {
  auto vars = shard->List(kPrefix);
  if (!vars.ok()) {
    demo->Fail("list " + std::string(kPrefix), vars.status().ToString());
    return;
  }
  if (vars->empty() && quiet_if_none) return;
  demo->Section(quiet_if_none ? "leftovers of an earlier run" : "delete");
  for (const auto& v : *vars) demo->Ok("delete " + v.name, shard->Delete(v.name));
}

int Main(int argc, char** argv) {
  CLI::App app{"Runs every psd variable op against one shard and prints what it did."};
  std::string address;
  double timeout_s = 30;
  app.add_option("--shard", address, "shard address HOST:PORT")->required();
  app.add_option("--timeout", timeout_s, "deadline of each RPC in seconds")->capture_default_str();
  int rate_ops = 0;
  app.add_option("--rate-ops", rate_ops,
                 "also measure small-op rates (sync, async, batched) with this many ops each");
  CLI11_PARSE(app, argc, argv);

  ClientOptions options;
  options.timeout = absl::Seconds(timeout_s);
  auto shard = ShardClient::Connect(address, options);
  if (!shard.ok()) {
    std::fprintf(stderr, "psd_demo_trainer: %s\n", shard.status().ToString().c_str());
    return 1;
  }
  const ShardInfo& info = (*shard)->info();
  std::printf(
      "connected to shard %d at %s: device %s, incarnation %016llx, %lld bytes in use "
      "(limit: %s), %lld variables\n",
      info.shard_id, address.c_str(), info.device.c_str(),
      static_cast<unsigned long long>(info.incarnation),
      static_cast<long long>(info.memory_used_bytes),
      info.memory_limit_bytes > 0 ? absl::StrCat(info.memory_limit_bytes, " bytes").c_str()
                                  : "none",
      static_cast<long long>(info.num_variables));

  Demo demo(shard->get());
  Cleanup(shard->get(), &demo, /*quiet_if_none=*/true);
  Run(shard->get(), &demo);
  if (rate_ops > 0) {
    demo.Section("small-op rates");
    MeasureRates(shard->get(), &demo, rate_ops);
  }
  Cleanup(shard->get(), &demo, /*quiet_if_none=*/false);
  auto left = (*shard)->List(kPrefix);
  if (!left.ok() || !left->empty()) demo.Fail("list after delete", "variables remain");

  if (demo.failures() > 0) {
    std::printf("\n%d step(s) went differently than expected\n", demo.failures());
    return 1;
  }
  std::printf("\nall steps went as expected\n");
  return 0;
}

}  // namespace
}  // namespace client
}  // namespace psd

int main(int argc, char** argv) { return psd::client::Main(argc, argv); }
