// The update kernels: dense assign/add/sub, scatter (atomics for add/sub),
// gather and fill. Grid-stride loops over elements; instantiated per
// element type and op.
#include <cstdint>
#include <type_traits>

#include "device/cuda/device_elem.cuh"
#include "device/cuda/kernels.h"

namespace psd {
namespace gpu {
namespace internal {
namespace {

template <int kOp, typename T>
__global__ void DenseKernel(T* dst, const T* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = Combine<kOp>(dst[i], src[i]);
  }
}

template <int kOp, typename T>
__global__ void DenseScalarKernel(T* dst, T value, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = Combine<kOp>(dst[i], value);
  }
}

// *addr = op(*addr, v) atomically. 32- and 64-bit types use the hardware's
// atomic add (integers as unsigned, so they wrap); 8- and 16-bit types
// compare-and-swap the aligned 32-bit word that holds them (buffers are
// allocated in multiples of 512 bytes, so the word lies inside the block).
template <int kOp, typename T>
__device__ inline void AtomicCombine(T* addr, T v) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    atomicAdd(addr, kOp == static_cast<int>(UpdateKind::kAdd) ? v : -v);
  } else if constexpr (std::is_integral_v<T> && sizeof(T) == 4) {
    const unsigned int d = static_cast<unsigned int>(v);
    atomicAdd(reinterpret_cast<unsigned int*>(addr),
              kOp == static_cast<int>(UpdateKind::kAdd) ? d : 0u - d);
  } else if constexpr (std::is_integral_v<T> && sizeof(T) == 8) {
    const unsigned long long d = static_cast<unsigned long long>(v);
    atomicAdd(reinterpret_cast<unsigned long long*>(addr),
              kOp == static_cast<int>(UpdateKind::kAdd) ? d : 0ull - d);
  } else {
    static_assert(sizeof(T) <= 2, "small types only");
    const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    unsigned int* word = reinterpret_cast<unsigned int*>(a & ~uintptr_t{3});
    const unsigned int shift = static_cast<unsigned int>(a & 3) * 8;
    const unsigned int mask = (sizeof(T) == 1 ? 0xffu : 0xffffu) << shift;
    unsigned int old = *word, assumed;
    do {
      assumed = old;
      T current;
      const unsigned int part = (assumed & mask) >> shift;
      memcpy(&current, &part, sizeof(T));
      const T next = Combine<kOp>(current, v);
      unsigned int next_bits = 0;
      memcpy(&next_bits, &next, sizeof(T));
      old = atomicCAS(word, assumed, (assumed & ~mask) | (next_bits << shift));
    } while (old != assumed);
  }
}

template <int kOp, typename T>
__global__ void ScatterKernel(T* dst, int64_t row_elements, const int64_t* indices, int64_t count,
                              const T* updates, T value) {
  const int64_t total = count * row_elements;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = i / row_elements;
    const int64_t col = i - k * row_elements;
    T* out = dst + indices[k] * row_elements + col;
    const T v = updates != nullptr ? updates[i] : value;
    if constexpr (kOp == static_cast<int>(UpdateKind::kAssign)) {
      *out = Combine<kOp>(*out, v);
    } else {
      AtomicCombine<kOp>(out, v);
    }
  }
}

// Rows move in words of W bytes, the widest that divides the row size
// (buffers and staging areas are at least 16-byte aligned).
template <typename W>
__global__ void GatherKernel(const W* src, int64_t row_words, const int64_t* indices, int64_t count,
                             W* out) {
  const int64_t total = count * row_words;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = i / row_words;
    out[i] = src[indices[k] * row_words + (i - k * row_words)];
  }
}

template <typename W>
__global__ void FillKernel(W* dst, W value, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = value;
  }
}

}  // namespace

namespace {

// Calls fn(T{}, std::integral_constant<int, op>{}) for the element type and
// op; bool has no arithmetic.
template <typename Fn>
cudaError_t DispatchUpdate(ElemType type, UpdateKind op, Fn&& fn) {
  return DispatchElem(type, [&](auto t) {
    return DispatchOp(op, [&](auto k) -> cudaError_t {
      if constexpr (std::is_same_v<decltype(t), Bool> && decltype(k)::value != 0) {
        return cudaErrorInvalidValue;
      } else {
        return fn(t, k);
      }
    });
  });
}

template <typename T>
T FromBitsOf(uint64_t bits) {
  T value;
  memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace

cudaError_t LaunchDense(ElemType type, UpdateKind op, void* dst, const void* src, int64_t n,
                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return DispatchUpdate(type, op, [&](auto t, auto k) {
    using T = decltype(t);
    DenseKernel<decltype(k)::value><<<BlocksFor(n), kThreads, 0, stream>>>(
        static_cast<T*>(dst), static_cast<const T*>(src), n);
    return cudaGetLastError();
  });
}

cudaError_t LaunchDenseScalar(ElemType type, UpdateKind op, void* dst, uint64_t value_bits,
                              int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return DispatchUpdate(type, op, [&](auto t, auto k) {
    using T = decltype(t);
    DenseScalarKernel<decltype(k)::value>
        <<<BlocksFor(n), kThreads, 0, stream>>>(static_cast<T*>(dst), FromBitsOf<T>(value_bits), n);
    return cudaGetLastError();
  });
}

cudaError_t LaunchScatter(ElemType type, UpdateKind op, void* dst, int64_t row_elements,
                          const int64_t* indices, int64_t count, const void* updates,
                          uint64_t value_bits, cudaStream_t stream) {
  if (count <= 0 || row_elements <= 0) return cudaSuccess;
  return DispatchUpdate(type, op, [&](auto t, auto k) {
    using T = decltype(t);
    ScatterKernel<decltype(k)::value><<<BlocksFor(count * row_elements), kThreads, 0, stream>>>(
        static_cast<T*>(dst), row_elements, indices, count, static_cast<const T*>(updates),
        FromBitsOf<T>(value_bits));
    return cudaGetLastError();
  });
}

cudaError_t LaunchGather(const void* src, size_t row_bytes, const int64_t* indices, int64_t count,
                         void* out, cudaStream_t stream) {
  if (count <= 0 || row_bytes == 0) return cudaSuccess;
  auto launch = [&](auto w) {
    using W = decltype(w);
    const int64_t row_words = static_cast<int64_t>(row_bytes / sizeof(W));
    GatherKernel<<<BlocksFor(count * row_words), kThreads, 0, stream>>>(
        static_cast<const W*>(src), row_words, indices, count, static_cast<W*>(out));
    return cudaGetLastError();
  };
  if (row_bytes % 16 == 0) return launch(uint4{});
  if (row_bytes % 8 == 0) return launch(uint64_t{});
  if (row_bytes % 4 == 0) return launch(uint32_t{});
  if (row_bytes % 2 == 0) return launch(uint16_t{});
  return launch(uint8_t{});
}

cudaError_t LaunchFill(size_t elem_size, uint64_t pattern, void* dst, int64_t n,
                       cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  auto launch = [&](auto w) {
    using W = decltype(w);
    W value;
    memcpy(&value, &pattern, sizeof(W));
    FillKernel<<<BlocksFor(n), kThreads, 0, stream>>>(static_cast<W*>(dst), value, n);
    return cudaGetLastError();
  };
  switch (elem_size) {
    case 1:
      return launch(uint8_t{});
    case 2:
      return launch(uint16_t{});
    case 4:
      return launch(uint32_t{});
    case 8:
      return launch(uint64_t{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace internal
}  // namespace gpu
}  // namespace psd
