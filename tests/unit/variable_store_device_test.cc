// VariableStore on every device: one script of ops (create, initializers,
// assign ops unary and streamed, scatter, gather, count_up_to, a streamed
// read while a writer copies on write, optimizer updates) runs through a
// store on the CPU device and through a store on the device under test, and
// every value read back must be the same bytes. This exercises the store's
// calls into the device (copies in and out, device-to-device copies for
// copy-on-write, updates from a device staging buffer) on a GPU.
//
// The GPU case skips, saying why, without a GPU (or GPU support in the
// build); PSD_REQUIRE_GPU=1 makes it fail instead.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "psd/wire.h"
#include "shard/variable_store.h"
#include "store_test_util.h"

namespace psd {
namespace {

using store_test::Vec;

TensorProto ToProto(const Tensor& t) {
  TensorProto p;
  TensorToProto(t, &p);
  return p;
}

// Runs the script on `device`; returns every value it read, concatenated,
// and fails the test on any unexpected status.
std::string RunScript(Device* device) {
  VariableStoreOptions options;
  options.memory_limit_bytes = 256 << 20;
  options.max_unary_value_bytes = 1 << 20;
  options.default_chunk_bytes = 64 << 10;
  VariableStore store(device, options);
  std::string log;
  auto check = [](const absl::Status& s, const char* what) {
    EXPECT_TRUE(s.ok()) << what << ": " << s;
  };
  auto read = [&](const std::string& name) {
    ReadStreamRequest req;
    req.set_name(name);
    auto source = store.BeginReadStream(req);
    check(source.status(), "read stream");
    if (!source.ok()) return;
    TensorChunk header;
    (*source)->FillHeader(&header);
    TensorChunk chunk;
    while (*(*source)->Next(&chunk)) {
      log += chunk.content();
      chunk.Clear();
    }
  };
  auto create = [&](const std::string& name, DataType dtype, std::vector<int64_t> dims,
                    const InitializerSpec& init) {
    CreateVariableRequest req;
    req.set_name(name);
    req.set_dtype(dtype);
    for (int64_t d : dims) req.mutable_shape()->add_dims(d);
    *req.mutable_initializer() = init;
    req.set_initialize(true);
    VariableInfo info;
    check(store.Create(req, &info), name.c_str());
  };

  // Initializers, across several staging chunks.
  InitializerSpec uniform;
  uniform.set_seed(99);
  uniform.mutable_random_uniform()->set_minval(-1);
  uniform.mutable_random_uniform()->set_maxval(1);
  create("table", DT_FLOAT, {20000, 64}, uniform);  // 5 MB
  InitializerSpec ints;
  ints.set_seed(5);
  ints.mutable_random_uniform()->set_minval(-100);
  ints.mutable_random_uniform()->set_maxval(100);
  create("counts", DT_INT32, {1000, 3}, ints);
  InitializerSpec zeros;
  zeros.mutable_zeros();
  create("step", DT_INT64, {}, zeros);
  create("accum", DT_FLOAT, {20000, 64}, [] {
    InitializerSpec s;
    s.mutable_constant()->mutable_value()->CopyFrom(Vec<float>({}, {0.1f}));
    return s;
  }());
  read("table");
  read("counts");

  // Unary assign ops.
  std::vector<int32_t> delta(3000);
  for (size_t i = 0; i < delta.size(); ++i) delta[i] = static_cast<int32_t>(i % 7) - 3;
  for (UpdateOp op : {UPDATE_ADD, UPDATE_SUB, UPDATE_ADD}) {
    check(store_test::AssignValue(&store, "counts", op, Vec<int32_t>({1000, 3}, delta)), "assign");
  }
  read("counts");

  // A streamed assign_add: staged on the device, applied from there.
  std::vector<float> ones(20000 * 64, 0.5f);
  AssignStreamHeader header;
  header.set_name("table");
  header.set_op(UPDATE_ADD);
  header.set_dtype(DT_FLOAT);
  header.mutable_shape()->add_dims(20000);
  header.mutable_shape()->add_dims(64);
  header.set_total_bytes(ones.size() * sizeof(float));
  auto sink = store.BeginAssignStream(header);
  check(sink.status(), "assign stream");
  if (sink.ok()) {
    const char* bytes = reinterpret_cast<const char*>(ones.data());
    const size_t total = ones.size() * sizeof(float);
    for (size_t off = 0; off < total; off += 1 << 20) {
      check((*sink)->Append(absl::string_view(bytes + off, std::min<size_t>(1 << 20, total - off))),
            "append");
    }
    AssignResponse resp;
    check((*sink)->Commit(&resp), "commit");
    sink->reset();
  }
  read("table");

  // Scatter with duplicate indices (integers: exact on every device).
  std::vector<int64_t> indices;
  for (int k = 0; k < 5000; ++k) indices.push_back((k * 37) % 1000);
  std::vector<int32_t> rows(indices.size() * 3);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i % 11) - 5;
  for (UpdateOp op : {UPDATE_ADD, UPDATE_SUB, UPDATE_ASSIGN}) {
    ScatterRequest req;
    req.set_name("counts");
    req.set_op(op);
    *req.mutable_indices() = Vec<int64_t>({static_cast<int64_t>(indices.size())}, indices);
    *req.mutable_updates() = Vec<int32_t>({static_cast<int64_t>(indices.size()), 3}, rows);
    ScatterResponse resp;
    check(store.Scatter(req, &resp), "scatter");
  }
  read("counts");

  // Gather.
  GatherRequest gather;
  gather.set_name("table");
  *gather.mutable_indices() = Vec<int64_t>({6}, {19999, 0, 5, 5, 12345, 7});
  GatherResponse gathered;
  check(store.Gather(gather, &gathered), "gather");
  log += gathered.value().content();

  // count_up_to.
  for (int i = 0; i < 3; ++i) {
    CountUpToRequest req;
    req.set_name("step");
    req.set_limit(10);
    CountUpToResponse resp;
    check(store.CountUpTo(req, &resp), "count_up_to");
    log += std::to_string(resp.old_value()) + ",";
  }

  // A streamed read open while a writer copies on write (Device::Copy).
  {
    ReadStreamRequest req;
    req.set_name("counts");
    auto source = store.BeginReadStream(req);
    check(source.status(), "read stream");
    AssignRequest add;
    add.set_name("counts");
    add.set_op(UPDATE_ADD);
    *add.mutable_value() = Vec<int32_t>({1000, 3}, delta);
    AssignResponse resp;
    check(store.Assign(add, &resp), "assign during read");
    if (source.ok()) {
      TensorChunk header_chunk;
      (*source)->FillHeader(&header_chunk);
      TensorChunk chunk;
      while (*(*source)->Next(&chunk)) {
        log += chunk.content();
        chunk.Clear();
      }
    }
  }
  read("counts");

  // Optimizer updates, dense and sparse (Adagrad with its accumulator).
  std::vector<float> grad(20000 * 64);
  for (size_t i = 0; i < grad.size(); ++i) grad[i] = static_cast<float>(i % 13) * 0.125f - 0.75f;
  OptimizerSpec adagrad;
  adagrad.mutable_adagrad()->set_learning_rate(0.05);
  ApplyDenseRequest dense;
  dense.set_name("table");
  dense.add_slots("accum");
  *dense.mutable_optimizer() = adagrad;
  *dense.mutable_gradient() = Vec<float>({20000, 64}, grad);
  ApplyDenseResponse dense_resp;
  check(store.ApplyDense(dense, &dense_resp), "apply dense");
  ApplySparseRequest sparse;
  sparse.set_name("table");
  sparse.add_slots("accum");
  *sparse.mutable_optimizer() = adagrad;
  std::vector<int64_t> sparse_rows;
  for (int k = 0; k < 300; ++k) sparse_rows.push_back((k * 7919) % 20000);
  sparse_rows.push_back(sparse_rows.front());  // a duplicate
  *sparse.mutable_indices() = Vec<int64_t>({static_cast<int64_t>(sparse_rows.size())}, sparse_rows);
  *sparse.mutable_values() =
      Vec<float>({static_cast<int64_t>(sparse_rows.size()), 64},
                 std::vector<float>(grad.begin(), grad.begin() + sparse_rows.size() * 64));
  ApplySparseResponse sparse_resp;
  check(store.ApplySparse(sparse, &sparse_resp), "apply sparse");
  read("table");
  read("accum");
  EXPECT_TRUE(device->healthy()) << device->health_detail();
  return log;
}

class VariableStoreDeviceTest : public ::testing::TestWithParam<const char*> {};

TEST_P(VariableStoreDeviceTest, ScriptReadsTheSameBytesAsOnTheCpu) {
  absl::StatusOr<std::unique_ptr<Device>> device = NewDevice(GetParam());
  if (!device.ok()) {
    const char* require = std::getenv("PSD_REQUIRE_GPU");
    const bool required = require != nullptr && std::string(require) == "1";
    if (std::string(GetParam()).rfind("gpu", 0) == 0 && !required &&
        (device.status().code() == absl::StatusCode::kUnimplemented ||
         device.status().code() == absl::StatusCode::kUnavailable)) {
      GTEST_SKIP() << device.status().message();
    }
    FAIL() << device.status();
  }
  std::unique_ptr<Device> cpu = NewCpuDevice();
  const std::string want = RunScript(cpu.get());
  const std::string got = RunScript(device->get());
  ASSERT_EQ(got.size(), want.size());
  size_t first = 0;
  while (first < got.size() && got[first] == want[first]) ++first;
  EXPECT_EQ(first, got.size()) << "first differing byte at offset " << first;
}

INSTANTIATE_TEST_SUITE_P(Devices, VariableStoreDeviceTest, ::testing::Values("cpu:0", "gpu:0"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param).substr(0, 3);
                         });

}  // namespace
}  // namespace psd
