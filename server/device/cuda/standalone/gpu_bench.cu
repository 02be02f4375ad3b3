// GPU benchmark of the CUDA kernel library, beside the card's own limits
// measured in the same run:
//   - device memory bandwidth (cudaMemcpy device to device, read + write),
//   - PCIe bandwidth (pinned cudaMemcpy, each direction);
//   - scatter_add and gather rows/s on a rows x cols float32 table
//     (default 10M x 128) with Zipf-skewed indices, end to end through the
//     library (indices and rows staged from host memory, as a shard serves
//     them) as a ratio to PCIe bandwidth, and with everything already on the
//     device (kernel only) as a ratio to memory bandwidth;
//   - dense assign (host to device) and read (device to host) GB/s as a
//     ratio to PCIe bandwidth.
//
//   gpu_bench [--rows N] [--cols N] [--batch N] [--iters N] [--zipf S] [--dense-mib N]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device/cuda/gpu_context.h"
#include "device/cuda/kernels.h"

namespace psd {
namespace gpu {
namespace {

struct Options {
  int64_t rows = 10'000'000;
  int64_t cols = 128;
  int64_t batch = 65'536;
  int iters = 20;
  double zipf = 1.0;
  int64_t dense_mib = 1024;
};

#define CHECK_CUDA(expr)                                                                          \
  do {                                                                                            \
    cudaError_t _e = (expr);                                                                      \
    if (_e != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(_e)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

#define CHECK_GPU(expr)                                                                         \
  do {                                                                                          \
    const GpuStatus _s = (expr);                                                                \
    if (!_s.ok()) {                                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, _s.message().c_str()); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Times `reps` runs of fn() enqueued on `stream`, in seconds per run.
template <typename Fn>
double TimeOnStream(cudaStream_t stream, int reps, Fn&& fn) {
  fn();  // warm up
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  CHECK_CUDA(cudaEventRecord(start, stream));
  for (int i = 0; i < reps; ++i) fn();
  CHECK_CUDA(cudaEventRecord(stop, stream));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / 1e3 / reps;
}

// Zipf-like skew: rank r (0-based) drawn with probability ~ 1/(r+1)^s by
// inverting the continuous power law on [1, n + 1), then spread over the
// table by a multiplication that is a bijection mod n, so hot rows are not
// neighbours.
std::vector<int64_t> ZipfIndices(size_t count, int64_t n, double s, uint64_t seed) {
  std::vector<int64_t> out(count);
  uint64_t x = seed;
  const double top = static_cast<double>(n) + 1;
  for (auto& index : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const double u = static_cast<double>(x >> 11) * 0x1p-53;
    double v;
    if (std::fabs(s - 1.0) < 1e-9) {
      v = std::exp(u * std::log(top));
    } else {
      v = std::pow((std::pow(top, 1 - s) - 1) * u + 1, 1 / (1 - s));
    }
    int64_t rank = static_cast<int64_t>(v) - 1;
    if (rank < 0) rank = 0;
    if (rank >= n) rank = n - 1;
    const unsigned __int128 spread = static_cast<unsigned __int128>(rank) * 2654435761u;
    index = static_cast<int64_t>(spread % static_cast<unsigned __int128>(n));
  }
  return out;
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--rows")
      o.rows = std::atoll(value);
    else if (flag == "--cols")
      o.cols = std::atoll(value);
    else if (flag == "--batch")
      o.batch = std::atoll(value);
    else if (flag == "--iters")
      o.iters = std::atoi(value);
    else if (flag == "--zipf")
      o.zipf = std::atof(value);
    else if (flag == "--dense-mib")
      o.dense_mib = std::atoll(value);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  int count = 0;
  const GpuStatus probe = GpuContext::DeviceCount(&count);
  if (!probe.ok() || count == 0) {
    std::printf("no CUDA device: %s\n",
                probe.ok() ? "cudaGetDeviceCount returned 0" : probe.message().c_str());
    return 2;
  }
  std::unique_ptr<GpuContext> gpu;
  CHECK_GPU(GpuContext::Open(0, &gpu));
  std::printf("card: %s (%zu MiB)\n", gpu->device_name().c_str(), gpu->total_memory() >> 20);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // The card's limits.
  const size_t bw_bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  CHECK_GPU(gpu->Allocate(bw_bytes, &a));
  CHECK_GPU(gpu->Allocate(bw_bytes, &b));
  const double d2d = TimeOnStream(stream, 10, [&] {
    CHECK_CUDA(cudaMemcpyAsync(b, a, bw_bytes, cudaMemcpyDeviceToDevice, stream));
  });
  const double mem_bw = 2.0 * bw_bytes / d2d;  // read + write
  const size_t pcie_bytes = size_t{256} << 20;
  void* pinned = nullptr;
  CHECK_CUDA(cudaMallocHost(&pinned, pcie_bytes));
  std::memset(pinned, 1, pcie_bytes);
  const double h2d =
      pcie_bytes / TimeOnStream(stream, 10, [&] {
        CHECK_CUDA(cudaMemcpyAsync(a, pinned, pcie_bytes, cudaMemcpyHostToDevice, stream));
      });
  const double d2h =
      pcie_bytes / TimeOnStream(stream, 10, [&] {
        CHECK_CUDA(cudaMemcpyAsync(pinned, a, pcie_bytes, cudaMemcpyDeviceToHost, stream));
      });
  cudaFreeHost(pinned);
  gpu->Free(a, bw_bytes);
  gpu->Free(b, bw_bytes);
  std::printf("device memory bandwidth (d2d copy, read+write): %.1f GB/s\n", mem_bw / 1e9);
  std::printf("PCIe pinned host->device: %.1f GB/s, device->host: %.1f GB/s\n", h2d / 1e9,
              d2h / 1e9);

  // The table and Zipf-skewed batches.
  const size_t row_bytes = static_cast<size_t>(o.cols) * sizeof(float);
  const size_t table_bytes = static_cast<size_t>(o.rows) * row_bytes;
  void* table = nullptr;
  CHECK_GPU(gpu->Allocate(table_bytes, &table));
  CHECK_GPU(gpu->Fill(4, 0, table, o.rows * o.cols));
  std::vector<std::vector<int64_t>> batches;
  for (int i = 0; i < o.iters; ++i) {
    batches.push_back(ZipfIndices(o.batch, o.rows, o.zipf, 0x9E3779B97F4A7C15ull + i));
  }
  {
    // How skewed: the share of the hottest 1% of distinct rows touched.
    std::vector<int64_t> all;
    for (const auto& batch : batches) all.insert(all.end(), batch.begin(), batch.end());
    std::sort(all.begin(), all.end());
    std::vector<int64_t> counts;
    for (size_t i = 0; i < all.size();) {
      size_t j = i;
      while (j < all.size() && all[j] == all[i]) ++j;
      counts.push_back(static_cast<int64_t>(j - i));
      i = j;
    }
    std::sort(counts.rbegin(), counts.rend());
    int64_t top = 0;
    for (size_t i = 0; i < std::max<size_t>(1, counts.size() / 100); ++i) top += counts[i];
    std::printf(
        "table %lld x %lld float32 (%.2f GB); %d batches of %lld Zipf(s=%.2f) indices: "
        "%zu distinct rows, hottest 1%% take %.1f%% of the updates\n",
        static_cast<long long>(o.rows), static_cast<long long>(o.cols), table_bytes / 1e9, o.iters,
        static_cast<long long>(o.batch), o.zipf, counts.size(), 100.0 * top / all.size());
  }
  std::vector<float> updates(static_cast<size_t>(o.batch * o.cols));
  for (size_t i = 0; i < updates.size(); ++i) updates[i] = static_cast<float>(i % 97) * 0.01f;
  std::vector<float> out(updates.size());

  // End to end through the library, as a shard serves requests.
  CHECK_GPU(gpu->Scatter(ElemType::kFloat, UpdateKind::kAdd, table, o.cols, batches[0].data(),
                         batches[0].size(), updates.data(), false, 0));  // warm up
  auto start = std::chrono::steady_clock::now();
  for (const auto& batch : batches) {
    CHECK_GPU(gpu->Scatter(ElemType::kFloat, UpdateKind::kAdd, table, o.cols, batch.data(),
                           batch.size(), updates.data(), false, 0));
  }
  const double scatter_s = Seconds(start) / o.iters;
  start = std::chrono::steady_clock::now();
  for (const auto& batch : batches) {
    CHECK_GPU(gpu->Gather(table, row_bytes, batch.data(), batch.size(), out.data()));
  }
  const double gather_s = Seconds(start) / o.iters;
  const double wire_bytes = static_cast<double>(o.batch) * (row_bytes + sizeof(int64_t));
  std::printf("scatter_add end to end: %.3g rows/s, %.1f GB/s over PCIe = %.2f of host->device\n",
              o.batch / scatter_s, wire_bytes / scatter_s / 1e9, wire_bytes / scatter_s / h2d);
  std::printf("gather end to end:      %.3g rows/s, %.1f GB/s over PCIe = %.2f of device->host\n",
              o.batch / gather_s, wire_bytes / gather_s / 1e9, wire_bytes / gather_s / d2h);

  // Kernels alone, indices and rows already on the device.
  void *dev_idx = nullptr, *dev_rows = nullptr;
  CHECK_GPU(gpu->Allocate(o.batch * sizeof(int64_t), &dev_idx));
  CHECK_GPU(gpu->Allocate(updates.size() * sizeof(float), &dev_rows));
  CHECK_GPU(gpu->CopyIn(dev_idx, batches[0].data(), o.batch * sizeof(int64_t)));
  CHECK_GPU(gpu->CopyIn(dev_rows, updates.data(), updates.size() * sizeof(float)));
  const double k_scatter = TimeOnStream(stream, o.iters, [&] {
    CHECK_CUDA(internal::LaunchScatter(ElemType::kFloat, UpdateKind::kAdd, table, o.cols,
                                       static_cast<const int64_t*>(dev_idx), o.batch, dev_rows, 0,
                                       stream));
  });
  const double k_gather = TimeOnStream(stream, o.iters, [&] {
    CHECK_CUDA(internal::LaunchGather(table, row_bytes, static_cast<const int64_t*>(dev_idx),
                                      o.batch, dev_rows, stream));
  });
  // Bytes the kernels move: scatter reads the update and reads and writes
  // the row; gather reads the row and writes it out.
  const double scatter_bytes = 3.0 * o.batch * row_bytes, gather_bytes = 2.0 * o.batch * row_bytes;
  std::printf("scatter_add kernel:     %.3g rows/s, %.1f GB/s = %.2f of memory bandwidth\n",
              o.batch / k_scatter, scatter_bytes / k_scatter / 1e9,
              scatter_bytes / k_scatter / mem_bw);
  std::printf("gather kernel:          %.3g rows/s, %.1f GB/s = %.2f of memory bandwidth\n",
              o.batch / k_gather, gather_bytes / k_gather / 1e9, gather_bytes / k_gather / mem_bw);
  gpu->Free(dev_idx, o.batch * sizeof(int64_t));
  gpu->Free(dev_rows, updates.size() * sizeof(float));

  // Dense assign and read of a large slice of the table, from and to
  // ordinary (pageable) host memory.
  const size_t dense_bytes = std::min(table_bytes, static_cast<size_t>(o.dense_mib) << 20);
  std::vector<float> host(dense_bytes / sizeof(float), 0.5f);
  CHECK_GPU(gpu->Dense(ElemType::kFloat, UpdateKind::kAssign, table, host.data(),
                       static_cast<int64_t>(host.size())));  // warm up
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) {
    CHECK_GPU(gpu->Dense(ElemType::kFloat, UpdateKind::kAssign, table, host.data(),
                         static_cast<int64_t>(host.size())));
  }
  const double assign_bw = 3.0 * dense_bytes / Seconds(start);
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) CHECK_GPU(gpu->CopyOut(host.data(), table, dense_bytes));
  const double read_bw = 3.0 * dense_bytes / Seconds(start);
  std::printf("dense assign (%zu MiB): %.1f GB/s = %.2f of host->device\n", dense_bytes >> 20,
              assign_bw / 1e9, assign_bw / h2d);
  std::printf("dense read   (%zu MiB): %.1f GB/s = %.2f of device->host\n", dense_bytes >> 20,
              read_bw / 1e9, read_bw / d2h);
  gpu->Free(table, table_bytes);
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace gpu
}  // namespace psd

int main(int argc, char** argv) { return psd::gpu::Main(argc, argv); }
