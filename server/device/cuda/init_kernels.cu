// The random initializers on the device: each thread finds its element's
// global index in the full variable and draws its value with the same
// init_math functions the CPU fill uses (server/device/initializer_math.h).
#include <cstdint>
#include <type_traits>

#include "device/cuda/device_elem.cuh"
#include "device/cuda/kernels.h"
#include "device/initializer_math.h"

namespace psd {
namespace gpu {
namespace internal {
namespace {

// Global (full-variable, row-major) index of slice element i.
__device__ inline uint64_t GlobalIndex(const SliceGeometry& geo, int64_t i) {
  int64_t global = 0;
  for (int d = geo.rank - 1; d >= 0; --d) {
    const int64_t dim = geo.slice_dims[d];
    const int64_t q = i / dim;
    global += (geo.offset[d] + (i - q * dim)) * geo.full_stride[d];
    i = q;
  }
  return static_cast<uint64_t>(global);
}

template <typename T>
__global__ void RandomKernel(RandomFill fill, SliceGeometry geo, T* dst, int64_t n) {
  const PhiloxKey key = init_math::KeyOf(fill.seed);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t g = GlobalIndex(geo, i);
    if constexpr (std::is_integral_v<T>) {
      dst[i] = static_cast<T>(
          init_math::UniformInteger(init_math::Draw(key, g, 0), fill.int_lo, fill.int_span));
    } else {
      using C = ComputeT<T>;
      const C a = static_cast<C>(fill.a), b = static_cast<C>(fill.b);
      C v;
      switch (fill.kind) {
        case RandomFill::Kind::kNormal:
          v = a + b * init_math::Normal<C>(init_math::Draw(key, g, 0));
          break;
        case RandomFill::Kind::kTruncatedNormal:
          v = init_math::TruncatedNormal<C>(key, g, a, b);
          break;
        default:
          v = init_math::ScaleUniform(a, b, init_math::Unit<C>(init_math::Draw(key, g, 0)));
          break;
      }
      dst[i] = Narrow<T>(v);
    }
  }
}

}  // namespace

cudaError_t LaunchRandomFill(ElemType type, const RandomFill& fill, const SliceGeometry& geometry,
                             void* dst, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  auto launch = [&](auto t) {
    using T = decltype(t);
    RandomKernel<<<BlocksFor(n), kThreads, 0, stream>>>(fill, geometry, static_cast<T*>(dst), n);
    return cudaGetLastError();
  };
  const bool integer = fill.kind == RandomFill::Kind::kUniformInt;
  switch (type) {
    case ElemType::kFloat:
      return integer ? cudaErrorInvalidValue : launch(float{});
    case ElemType::kDouble:
      return integer ? cudaErrorInvalidValue : launch(double{});
    case ElemType::kHalf:
      return integer ? cudaErrorInvalidValue : launch(Half{});
    case ElemType::kBFloat16:
      return integer ? cudaErrorInvalidValue : launch(BFloat16{});
    case ElemType::kInt32:
      return integer ? launch(int32_t{}) : cudaErrorInvalidValue;
    case ElemType::kInt64:
      return integer ? launch(int64_t{}) : cudaErrorInvalidValue;
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace internal
}  // namespace gpu
}  // namespace psd
