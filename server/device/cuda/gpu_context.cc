#include "device/cuda/gpu_context.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "device/cuda/kernels.h"
#include "psd/float16.h"

namespace psd {
namespace gpu {

namespace {

// Host and device staging areas keep this alignment for the row data that
// follows an index block (the gather kernel moves 16-byte words).
constexpr size_t kStageAlign = 16;

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Pool block sizes: powers of two from 512 bytes to 1 MiB, then multiples
// of 2 MiB, so freed blocks are reused by similar requests.
size_t RoundBlock(size_t bytes) {
  if (bytes <= 512) return 512;
  if (bytes < (size_t{1} << 20)) {
    size_t r = 512;
    while (r < bytes) r <<= 1;
    return r;
  }
  return AlignUp(bytes, size_t{2} << 20);
}

std::string DeviceLabel(int ordinal) { return "gpu:" + std::to_string(ordinal); }

GpuStatus FromCuda(cudaError_t e, int ordinal, const char* what) {
  if (e == cudaSuccess) return GpuStatus::Ok();
  const std::string detail = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it so later calls see success
    return GpuStatus(GpuStatus::Code::kOutOfMemory,
                     DeviceLabel(ordinal) + ": " + what + " out of memory (" + detail + ")");
  }
  return GpuStatus(GpuStatus::Code::kDeviceError,
                   DeviceLabel(ordinal) + ": " + what + " failed: " + detail);
}

}  // namespace

#define PSD_CUDA_CALL(expr, what)                                       \
  do {                                                                  \
    cudaError_t _psd_e = (expr);                                        \
    if (_psd_e != cudaSuccess) return FromCuda(_psd_e, ordinal_, what); \
  } while (0)

struct GpuContext::Lane {
  struct Slot {
    void* host = nullptr;  // pinned
    void* dev = nullptr;   // device scratch of the same capacity
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
    bool busy = false;  // work enqueued since the last wait
    // A download's destination: once `done`, `out_bytes` bytes at
    // host + out_from go to `out`.
    void* out = nullptr;
    size_t out_from = 0;
    size_t out_bytes = 0;
  };
  cudaStream_t stream = nullptr;
  Slot slot[2];
};

namespace {

// Waits for the slot's last work and delivers its download, if any.
cudaError_t WaitSlot(GpuContext::Lane::Slot& s) {
  if (!s.busy) return cudaSuccess;
  const cudaError_t e = cudaEventSynchronize(s.done);
  s.busy = false;
  if (e == cudaSuccess && s.out != nullptr) {
    std::memcpy(s.out, static_cast<const char*>(s.host) + s.out_from, s.out_bytes);
  }
  s.out = nullptr;
  return e;
}

cudaError_t EnsureCapacity(GpuContext::Lane::Slot& s, size_t bytes) {
  if (s.capacity >= bytes) return cudaSuccess;
  const size_t want = AlignUp(std::max(bytes, GpuContext::kChunkBytes), kStageAlign);
  if (s.host != nullptr) cudaFreeHost(s.host);
  if (s.dev != nullptr) cudaFree(s.dev);
  s.host = s.dev = nullptr;
  s.capacity = 0;
  cudaError_t e = cudaMallocHost(&s.host, want);
  if (e != cudaSuccess) return e;
  e = cudaMalloc(&s.dev, want);
  if (e != cudaSuccess) return e;
  s.capacity = want;
  return cudaSuccess;
}

// Runs `chunks` steps on the lane, alternating its two slots: for chunk c,
// waits for the slot's previous use, makes it hold `capacity` bytes, then
// calls pack(c, slot) (host side: fill the pinned buffer, or name a download
// destination) and enqueue(c, slot) (copies and kernels on the stream).
// The host work of chunk c overlaps the device work of chunk c - 1.
template <typename Pack, typename Enqueue>
cudaError_t Pipeline(GpuContext::Lane& lane, size_t chunks, size_t capacity, Pack&& pack,
                     Enqueue&& enqueue) {
  for (size_t c = 0; c < chunks; ++c) {
    GpuContext::Lane::Slot& s = lane.slot[c % 2];
    cudaError_t e = WaitSlot(s);
    if (e == cudaSuccess) e = EnsureCapacity(s, capacity);
    if (e != cudaSuccess) return e;
    pack(c, s);
    e = enqueue(c, s);
    if (e == cudaSuccess) e = cudaEventRecord(s.done, lane.stream);
    if (e != cudaSuccess) return e;
    s.busy = true;
  }
  return cudaSuccess;
}

// The compute type of a floating element: double for float64, else float.
template <typename C>
C LoadCompute(ElemType type, const unsigned char* p) {
  switch (type) {
    case ElemType::kHalf: {
      uint16_t bits;
      std::memcpy(&bits, p, 2);
      return static_cast<C>(half::ToFloat(bits));
    }
    case ElemType::kBFloat16: {
      bfloat16 v;
      std::memcpy(&v.bits, p, 2);
      return static_cast<C>(static_cast<float>(v));
    }
    case ElemType::kDouble: {
      double v;
      std::memcpy(&v, p, 8);
      return static_cast<C>(v);
    }
    default: {
      float v;
      std::memcpy(&v, p, 4);
      return static_cast<C>(v);
    }
  }
}

}  // namespace

GpuStatus GpuContext::DeviceCount(int* count) {
  *count = 0;
  const cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *count = 0;
    return GpuStatus(GpuStatus::Code::kDeviceError, std::string("cudaGetDeviceCount returned ") +
                                                        cudaGetErrorName(e) + " (" +
                                                        cudaGetErrorString(e) + ")");
  }
  return GpuStatus::Ok();
}

GpuStatus GpuContext::Open(int ordinal, std::unique_ptr<GpuContext>* out) {
  int count = 0;
  PSD_GPU_RETURN_IF_ERROR(DeviceCount(&count));
  if (ordinal < 0 || ordinal >= count) {
    return GpuStatus(GpuStatus::Code::kInvalidArgument,
                     DeviceLabel(ordinal) + ": no such device (" + std::to_string(count) +
                         " CUDA device(s) present)");
  }
  std::unique_ptr<GpuContext> ctx(new GpuContext(ordinal));
  cudaError_t e = cudaSetDevice(ordinal);
  if (e != cudaSuccess) return FromCuda(e, ordinal, "cudaSetDevice");
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, ordinal);
  if (e != cudaSuccess) return FromCuda(e, ordinal, "cudaGetDeviceProperties");
  ctx->device_name_ = prop.name;
  ctx->total_memory_ = prop.totalGlobalMem;
  ctx->pool_limit_ = prop.totalGlobalMem / 4;
  e = cudaFree(nullptr);  // creates the primary context now, not on the first op
  if (e != cudaSuccess) return FromCuda(e, ordinal, "context creation");
  *out = std::move(ctx);
  return GpuStatus::Ok();
}

GpuContext::GpuContext(int ordinal) : ordinal_(ordinal) {}

GpuContext::~GpuContext() {
  if (cudaSetDevice(ordinal_) != cudaSuccess) return;  // the device is gone: leak
  for (auto& lane : lanes_) {
    cudaStreamSynchronize(lane->stream);
    for (Lane::Slot& s : lane->slot) {
      if (s.done != nullptr) cudaEventDestroy(s.done);
      if (s.host != nullptr) cudaFreeHost(s.host);
      if (s.dev != nullptr) cudaFree(s.dev);
    }
    cudaStreamDestroy(lane->stream);
  }
  TrimPool();
}

GpuStatus GpuContext::Enter() const {
  PSD_CUDA_CALL(cudaSetDevice(ordinal_), "cudaSetDevice");
  return GpuStatus::Ok();
}

GpuStatus GpuContext::Allocate(size_t bytes, void** ptr) {
  *ptr = nullptr;
  if (bytes == 0) return GpuStatus::Ok();
  if (bytes > (size_t{1} << 60)) {  // no card has this; also keeps RoundBlock from wrapping
    return GpuStatus(GpuStatus::Code::kOutOfMemory, DeviceLabel(ordinal_) + ": cannot allocate " +
                                                        std::to_string(bytes) + " bytes");
  }
  const size_t block = RoundBlock(bytes);
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    auto it = pool_.find(block);
    if (it != pool_.end() && !it->second.empty()) {
      *ptr = it->second.back();
      it->second.pop_back();
      pool_bytes_ -= block;
      return GpuStatus::Ok();
    }
  }
  PSD_GPU_RETURN_IF_ERROR(Enter());
  cudaError_t e = cudaMalloc(ptr, block);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    TrimPool();
    e = cudaMalloc(ptr, block);
  }
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    *ptr = nullptr;
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    return GpuStatus(GpuStatus::Code::kOutOfMemory,
                     DeviceLabel(ordinal_) + ": out of device memory allocating " +
                         std::to_string(bytes) + " bytes (" + std::to_string(free_bytes) + " of " +
                         std::to_string(total) + " bytes free)");
  }
  if (e != cudaSuccess) *ptr = nullptr;
  return FromCuda(e, ordinal_, "cudaMalloc");
}

void GpuContext::Free(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  const size_t block = RoundBlock(bytes);
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (pool_bytes_ + block <= pool_limit_) {
      pool_[block].push_back(ptr);
      pool_bytes_ += block;
      return;
    }
  }
  if (Enter().ok()) cudaFree(ptr);
}

void GpuContext::TrimPool() {
  std::unordered_map<size_t, std::vector<void*>> blocks;
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    blocks.swap(pool_);
    pool_bytes_ = 0;
  }
  for (auto& [size, list] : blocks) {
    for (void* p : list) cudaFree(p);
  }
}

GpuStatus GpuContext::AcquireLane(Lane** lane) {
  std::unique_lock<std::mutex> lock(lanes_mu_);
  while (idle_lanes_.empty() && lanes_.size() >= static_cast<size_t>(kMaxLanes)) {
    lane_idle_.wait(lock);
  }
  if (!idle_lanes_.empty()) {
    *lane = idle_lanes_.back();
    idle_lanes_.pop_back();
    return GpuStatus::Ok();
  }
  auto fresh = std::make_unique<Lane>();
  PSD_CUDA_CALL(cudaStreamCreateWithFlags(&fresh->stream, cudaStreamNonBlocking),
                "cudaStreamCreate");
  for (Lane::Slot& s : fresh->slot) {
    const cudaError_t e = cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
      for (Lane::Slot& t : fresh->slot) {
        if (t.done != nullptr) cudaEventDestroy(t.done);
      }
      cudaStreamDestroy(fresh->stream);
      return FromCuda(e, ordinal_, "cudaEventCreate");
    }
  }
  *lane = fresh.get();
  lanes_.push_back(std::move(fresh));
  return GpuStatus::Ok();
}

void GpuContext::ReleaseLane(Lane* lane) {
  {
    std::lock_guard<std::mutex> lock(lanes_mu_);
    idle_lanes_.push_back(lane);
  }
  lane_idle_.notify_one();
}

template <typename Fn>
GpuStatus GpuContext::WithLane(const char* what, Fn&& fn) {
  PSD_GPU_RETURN_IF_ERROR(Enter());
  Lane* lane = nullptr;
  PSD_GPU_RETURN_IF_ERROR(AcquireLane(&lane));
  cudaError_t e = fn(*lane);
  // Always drain, so nothing of this call is in flight when it returns.
  for (Lane::Slot& s : lane->slot) {
    const cudaError_t w = WaitSlot(s);
    if (e == cudaSuccess) e = w;
  }
  const cudaError_t sync = cudaStreamSynchronize(lane->stream);
  if (e == cudaSuccess) e = sync;
  ReleaseLane(lane);
  return FromCuda(e, ordinal_, what);
}

GpuStatus GpuContext::CopyIn(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return GpuStatus::Ok();
  const auto* from = static_cast<const char*>(host_src);
  auto* to = static_cast<char*>(dst);
  const size_t chunks = (bytes + kChunkBytes - 1) / kChunkBytes;
  return WithLane("copy to device", [&](Lane& lane) {
    auto size = [&](size_t c) { return std::min(kChunkBytes, bytes - c * kChunkBytes); };
    return Pipeline(
        lane, chunks, kChunkBytes,
        [&](size_t c, Lane::Slot& s) { std::memcpy(s.host, from + c * kChunkBytes, size(c)); },
        [&](size_t c, Lane::Slot& s) {
          return cudaMemcpyAsync(to + c * kChunkBytes, s.host, size(c), cudaMemcpyHostToDevice,
                                 lane.stream);
        });
  });
}

GpuStatus GpuContext::CopyOut(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return GpuStatus::Ok();
  auto* to = static_cast<char*>(host_dst);
  const auto* from = static_cast<const char*>(src);
  const size_t chunks = (bytes + kChunkBytes - 1) / kChunkBytes;
  return WithLane("copy from device", [&](Lane& lane) {
    auto size = [&](size_t c) { return std::min(kChunkBytes, bytes - c * kChunkBytes); };
    return Pipeline(
        lane, chunks, kChunkBytes,
        [&](size_t c, Lane::Slot& s) {
          s.out = to + c * kChunkBytes;
          s.out_from = 0;
          s.out_bytes = size(c);
        },
        [&](size_t c, Lane::Slot& s) {
          return cudaMemcpyAsync(s.host, from + c * kChunkBytes, size(c), cudaMemcpyDeviceToHost,
                                 lane.stream);
        });
  });
}

GpuStatus GpuContext::CopyOnDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return GpuStatus::Ok();
  return WithLane("copy on device", [&](Lane& lane) {
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, lane.stream);
  });
}

GpuStatus GpuContext::Dense(ElemType type, UpdateKind op, void* dst, const void* host_src,
                            int64_t n) {
  if (n <= 0) return GpuStatus::Ok();
  const size_t es = ElemSize(type);
  // A plain assign is a copy, except for bool, whose bytes are normalized.
  if (op == UpdateKind::kAssign && type != ElemType::kBool) {
    return CopyIn(dst, host_src, static_cast<size_t>(n) * es);
  }
  const auto* from = static_cast<const char*>(host_src);
  auto* to = static_cast<char*>(dst);
  const int64_t per = static_cast<int64_t>(kChunkBytes / es);
  const size_t chunks = static_cast<size_t>((n + per - 1) / per);
  return WithLane("dense update", [&](Lane& lane) {
    auto count = [&](size_t c) {
      return std::min<int64_t>(per, n - static_cast<int64_t>(c) * per);
    };
    return Pipeline(
        lane, chunks, kChunkBytes,
        [&](size_t c, Lane::Slot& s) {
          std::memcpy(s.host, from + c * per * es, static_cast<size_t>(count(c)) * es);
        },
        [&](size_t c, Lane::Slot& s) {
          const size_t bytes = static_cast<size_t>(count(c)) * es;
          cudaError_t e =
              cudaMemcpyAsync(s.dev, s.host, bytes, cudaMemcpyHostToDevice, lane.stream);
          if (e != cudaSuccess) return e;
          return internal::LaunchDense(type, op, to + c * per * es, s.dev, count(c), lane.stream);
        });
  });
}

GpuStatus GpuContext::DenseFromDevice(ElemType type, UpdateKind op, void* dst, const void* src,
                                      int64_t n) {
  if (n <= 0) return GpuStatus::Ok();
  return WithLane("dense update", [&](Lane& lane) {
    return internal::LaunchDense(type, op, dst, src, n, lane.stream);
  });
}

GpuStatus GpuContext::DenseScalar(ElemType type, UpdateKind op, void* dst, uint64_t value_bits,
                                  int64_t n) {
  if (n <= 0) return GpuStatus::Ok();
  return WithLane("dense update", [&](Lane& lane) {
    return internal::LaunchDenseScalar(type, op, dst, value_bits, n, lane.stream);
  });
}

GpuStatus GpuContext::Scatter(ElemType type, UpdateKind op, void* dst, int64_t row_elements,
                              const int64_t* indices, size_t count, const void* host_updates,
                              bool scalar, uint64_t value_bits) {
  if (count == 0 || row_elements <= 0) return GpuStatus::Ok();
  const size_t row_bytes = static_cast<size_t>(row_elements) * ElemSize(type);
  // The request positions applied, in order. An assign keeps only the last
  // position of each index, so the kernel writes distinct rows and the last
  // duplicate wins as on the CPU; add/sub apply every position.
  thread_local std::vector<size_t> positions;
  positions.clear();
  bool identity = true;
  if (op == UpdateKind::kAssign && count > 1) {
    thread_local std::vector<std::pair<int64_t, size_t>> order;
    order.resize(count);
    for (size_t k = 0; k < count; ++k) order[k] = {indices[k], k};
    std::sort(order.begin(), order.end());
    for (size_t j = 0; j < count; ++j) {
      if (j + 1 == count || order[j + 1].first != order[j].first) {
        positions.push_back(order[j].second);
      }
    }
    identity = positions.size() == count;
    if (identity) {
      for (size_t k = 0; k < count; ++k) positions[k] = k;
    }
  } else {
    positions.resize(count);
    for (size_t k = 0; k < count; ++k) positions[k] = k;
  }
  const size_t staged_row = scalar ? 0 : row_bytes;
  const size_t per = std::max<size_t>(1, kChunkBytes / (sizeof(int64_t) + staged_row));
  const size_t chunks = (positions.size() + per - 1) / per;
  const size_t capacity = AlignUp(per * sizeof(int64_t), kStageAlign) + per * staged_row;
  const auto* updates = static_cast<const char*>(host_updates);
  return WithLane("scatter", [&](Lane& lane) {
    auto rows = [&](size_t c) { return std::min(per, positions.size() - c * per); };
    auto rows_at = [&](size_t c) { return AlignUp(rows(c) * sizeof(int64_t), kStageAlign); };
    return Pipeline(
        lane, chunks, capacity,
        [&](size_t c, Lane::Slot& s) {
          auto* idx = static_cast<int64_t*>(s.host);
          char* data = static_cast<char*>(s.host) + rows_at(c);
          const size_t first = c * per, m = rows(c);
          for (size_t j = 0; j < m; ++j) idx[j] = indices[positions[first + j]];
          if (scalar) return;
          if (identity) {
            std::memcpy(data, updates + first * row_bytes, m * row_bytes);
          } else {
            for (size_t j = 0; j < m; ++j) {
              std::memcpy(data + j * row_bytes, updates + positions[first + j] * row_bytes,
                          row_bytes);
            }
          }
        },
        [&](size_t c, Lane::Slot& s) {
          const size_t m = rows(c);
          cudaError_t e = cudaMemcpyAsync(s.dev, s.host, rows_at(c) + m * staged_row,
                                          cudaMemcpyHostToDevice, lane.stream);
          if (e != cudaSuccess) return e;
          const void* dev_rows = scalar ? nullptr : static_cast<char*>(s.dev) + rows_at(c);
          return internal::LaunchScatter(
              type, op, dst, row_elements, static_cast<const int64_t*>(s.dev),
              static_cast<int64_t>(m), dev_rows, value_bits, lane.stream);
        });
  });
}

GpuStatus GpuContext::Gather(const void* src, size_t row_bytes, const int64_t* indices,
                             size_t count, void* host_out) {
  if (count == 0 || row_bytes == 0) return GpuStatus::Ok();
  const size_t per = std::max<size_t>(1, kChunkBytes / (sizeof(int64_t) + row_bytes));
  const size_t chunks = (count + per - 1) / per;
  const size_t capacity = AlignUp(per * sizeof(int64_t), kStageAlign) + per * row_bytes;
  auto* out = static_cast<char*>(host_out);
  return WithLane("gather", [&](Lane& lane) {
    auto rows = [&](size_t c) { return std::min(per, count - c * per); };
    auto rows_at = [&](size_t c) { return AlignUp(rows(c) * sizeof(int64_t), kStageAlign); };
    return Pipeline(
        lane, chunks, capacity,
        [&](size_t c, Lane::Slot& s) {
          std::memcpy(s.host, indices + c * per, rows(c) * sizeof(int64_t));
          s.out = out + c * per * row_bytes;
          s.out_from = rows_at(c);
          s.out_bytes = rows(c) * row_bytes;
        },
        [&](size_t c, Lane::Slot& s) {
          const size_t m = rows(c);
          char* dev_rows = static_cast<char*>(s.dev) + rows_at(c);
          cudaError_t e = cudaMemcpyAsync(s.dev, s.host, m * sizeof(int64_t),
                                          cudaMemcpyHostToDevice, lane.stream);
          if (e != cudaSuccess) return e;
          e = internal::LaunchGather(src, row_bytes, static_cast<const int64_t*>(s.dev),
                                     static_cast<int64_t>(m), dev_rows, lane.stream);
          if (e != cudaSuccess) return e;
          return cudaMemcpyAsync(static_cast<char*>(s.host) + rows_at(c), dev_rows, m * row_bytes,
                                 cudaMemcpyDeviceToHost, lane.stream);
        });
  });
}

GpuStatus GpuContext::Fill(size_t elem_size, uint64_t pattern, void* dst, int64_t n) {
  if (n <= 0) return GpuStatus::Ok();
  return WithLane("fill", [&](Lane& lane) {
    return internal::LaunchFill(elem_size, pattern, dst, n, lane.stream);
  });
}

GpuStatus GpuContext::FillRandom(ElemType type, const RandomFill& fill,
                                 const SliceGeometry& geometry, void* dst, int64_t n) {
  if (n <= 0) return GpuStatus::Ok();
  return WithLane("random initializer", [&](Lane& lane) {
    return internal::LaunchRandomFill(type, fill, geometry, dst, n, lane.stream);
  });
}

GpuStatus GpuContext::OptimizerDense(ElemType type, const OptimizerStep& step, void* var,
                                     void* const* slots, const void* host_grad, int64_t n) {
  if (n <= 0) return GpuStatus::Ok();
  const size_t es = ElemSize(type);
  const int num_slots = OptimizerSlots(step.kind);
  const int64_t per = static_cast<int64_t>(kChunkBytes / es);
  const size_t chunks = static_cast<size_t>((n + per - 1) / per);
  const auto* grad = static_cast<const char*>(host_grad);
  return WithLane("optimizer update", [&](Lane& lane) {
    auto count = [&](size_t c) {
      return std::min<int64_t>(per, n - static_cast<int64_t>(c) * per);
    };
    return Pipeline(
        lane, chunks, kChunkBytes,
        [&](size_t c, Lane::Slot& s) {
          std::memcpy(s.host, grad + c * per * es, static_cast<size_t>(count(c)) * es);
        },
        [&](size_t c, Lane::Slot& s) {
          const size_t offset = c * per * es;
          cudaError_t e = cudaMemcpyAsync(s.dev, s.host, static_cast<size_t>(count(c)) * es,
                                          cudaMemcpyHostToDevice, lane.stream);
          if (e != cudaSuccess) return e;
          void* chunk_slots[kMaxOptimizerSlots] = {nullptr, nullptr, nullptr};
          for (int k = 0; k < num_slots; ++k)
            chunk_slots[k] = static_cast<char*>(slots[k]) + offset;
          return internal::LaunchOptimizer(type, step, static_cast<char*>(var) + offset,
                                           chunk_slots, s.dev, nullptr, 0, count(c), lane.stream);
        });
  });
}

namespace {

// Groups duplicate indices (arrival order within a group) and sums their
// rows in the compute type C, as the CPU's sparse kernels do.
template <typename C>
void SumDuplicateRows(ElemType type, int64_t row_elements, const int64_t* indices, size_t count,
                      const unsigned char* values, std::vector<int64_t>* unique,
                      std::vector<C>* sums) {
  std::vector<std::pair<int64_t, size_t>> order(count);
  for (size_t k = 0; k < count; ++k) order[k] = {indices[k], k};
  std::sort(order.begin(), order.end());
  unique->clear();
  for (const auto& entry : order) {
    if (unique->empty() || unique->back() != entry.first) unique->push_back(entry.first);
  }
  const size_t es = ElemSize(type);
  const size_t row = static_cast<size_t>(row_elements);
  sums->resize(unique->size() * row);
  size_t u = 0;
  for (size_t j = 0; j < order.size(); ++j) {
    const bool first = j == 0 || order[j - 1].first != order[j].first;
    if (first && j > 0) ++u;
    C* sum = sums->data() + u * row;
    const unsigned char* in = values + order[j].second * row * es;
    for (size_t i = 0; i < row; ++i) {
      const C g = LoadCompute<C>(type, in + i * es);
      sum[i] = first ? g : sum[i] + g;
    }
  }
}

}  // namespace

GpuStatus GpuContext::OptimizerSparse(ElemType type, const OptimizerStep& step, void* var,
                                      void* const* slots, int64_t row_elements,
                                      const int64_t* indices, size_t count,
                                      const void* host_values) {
  if (count == 0 || row_elements <= 0) return GpuStatus::Ok();
  auto run = [&](auto zero) {
    using C = decltype(zero);
    std::vector<int64_t> unique;
    std::vector<C> sums;
    SumDuplicateRows<C>(type, row_elements, indices, count,
                        static_cast<const unsigned char*>(host_values), &unique, &sums);
    const size_t row_bytes = static_cast<size_t>(row_elements) * sizeof(C);
    const size_t per = std::max<size_t>(1, kChunkBytes / (sizeof(int64_t) + row_bytes));
    const size_t chunks = (unique.size() + per - 1) / per;
    const size_t capacity = AlignUp(per * sizeof(int64_t), kStageAlign) + per * row_bytes;
    return WithLane("sparse optimizer update", [&](Lane& lane) {
      auto rows = [&](size_t c) { return std::min(per, unique.size() - c * per); };
      auto rows_at = [&](size_t c) { return AlignUp(rows(c) * sizeof(int64_t), kStageAlign); };
      return Pipeline(
          lane, chunks, capacity,
          [&](size_t c, Lane::Slot& s) {
            std::memcpy(s.host, unique.data() + c * per, rows(c) * sizeof(int64_t));
            std::memcpy(static_cast<char*>(s.host) + rows_at(c),
                        sums.data() + c * per * static_cast<size_t>(row_elements),
                        rows(c) * row_bytes);
          },
          [&](size_t c, Lane::Slot& s) {
            const size_t m = rows(c);
            cudaError_t e = cudaMemcpyAsync(s.dev, s.host, rows_at(c) + m * row_bytes,
                                            cudaMemcpyHostToDevice, lane.stream);
            if (e != cudaSuccess) return e;
            return internal::LaunchOptimizer(type, step, var, slots,
                                             static_cast<char*>(s.dev) + rows_at(c),
                                             static_cast<const int64_t*>(s.dev), row_elements,
                                             static_cast<int64_t>(m) * row_elements, lane.stream);
          });
    });
  };
  if (type == ElemType::kDouble) return run(double{});
  return run(float{});
}

}  // namespace gpu
}  // namespace psd
