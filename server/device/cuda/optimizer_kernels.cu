// TensorFlow's training ops on the device, one thread per element, with the
// CPU kernels' formulas term for term (server/device/cpu_optimizer_kernels.cc)
// so that, built without contraction (--fmad=false) and with IEEE division
// and square root, they agree bit for bit. FTRL with a learning-rate power
// other than -0.5 goes through pow, which may differ in the last bit.
#include <cstdint>
#include <type_traits>

#include "device/cuda/device_elem.cuh"
#include "device/cuda/kernels.h"

namespace psd {
namespace gpu {
namespace internal {
namespace {

template <typename C>
__device__ inline C Sqrt(C x) {
  if constexpr (std::is_same_v<C, double>) {
    return ::sqrt(x);
  } else {
    return ::sqrtf(x);
  }
}

template <typename C>
__device__ inline C Pow(C x, C y) {
  if constexpr (std::is_same_v<C, double>) {
    return ::pow(x, y);
  } else {
    return ::powf(x, y);
  }
}

template <typename C>
__device__ inline C Abs(C x) {
  return x < C(0) ? -x : x;
}

// One element's step; s[] are the slots in the op's argument order.
template <int kKind, typename C>
__device__ inline void Step(const OptimizerCoefficients<C>& h, C& var, C* s, C g) {
  constexpr auto kind = static_cast<Optimizer>(kKind);
  if constexpr (kind == Optimizer::kGradientDescent) {
    var -= h.lr * g;
  } else if constexpr (kind == Optimizer::kMomentum) {
    s[0] = s[0] * h.momentum + g;
    if (h.use_nesterov) {
      var -= g * h.lr + s[0] * h.momentum * h.lr;
    } else {
      var -= s[0] * h.lr;
    }
  } else if constexpr (kind == Optimizer::kAdagrad) {
    s[0] += g * g;
    var -= g * h.lr / Sqrt(s[0]);
  } else if constexpr (kind == Optimizer::kAdam) {
    s[0] += (g - s[0]) * h.one_minus_beta1;
    s[1] += (g * g - s[1]) * h.one_minus_beta2;
    var -= (s[0] * h.adam_alpha) / (Sqrt(s[1]) + h.epsilon);
  } else if constexpr (kind == Optimizer::kRMSProp) {
    s[0] += (g * g - s[0]) * h.one_minus_decay;
    s[1] = s[1] * h.momentum + (g * h.lr) / Sqrt(s[0] + h.epsilon);
    var -= s[1];
  } else if constexpr (kind == Optimizer::kCenteredRMSProp) {
    s[1] += (g * g - s[1]) * h.one_minus_decay;
    s[0] += (g - s[0]) * h.one_minus_decay;
    const C denom = (s[1] - s[0] * s[0]) + h.epsilon;
    s[2] = s[2] * h.momentum + (g * h.lr) / Sqrt(denom);
    var -= s[2];
  } else {  // Ftrl(V2)
    const C new_accum = s[0] + g * g;
    C powered, old_powered;
    if (h.lr_power_is_half) {
      powered = Sqrt(new_accum);
      old_powered = Sqrt(s[0]);
    } else {
      powered = Pow(new_accum, h.neg_lr_power);
      old_powered = Pow(s[0], h.neg_lr_power);
    }
    s[1] += (g + h.two_l2_shrinkage * var) - (powered - old_powered) / h.lr * var;
    const C linear = s[1];
    const C x = (linear > C(0) ? h.l1 : (linear < C(0) ? -h.l1 : C(0))) - linear;
    const C y = powered / h.lr + h.two_l2;
    var = Abs(linear) > h.l1 ? x / y : C(0);
    s[0] = new_accum;
  }
}

struct Slots {
  void* p[kMaxOptimizerSlots];
};

// G is T for a dense gradient (converted like the CPU's blocks) and the
// compute type for summed sparse rows.
template <int kKind, typename T, typename G>
__global__ void OptimizerKernel(OptimizerCoefficients<ComputeT<T>> h, T* var, Slots slots,
                                const G* grad, const int64_t* rows, int64_t row_elements,
                                int64_t n) {
  using C = ComputeT<T>;
  constexpr int kSlots = kKind == 0 ? 0 : (kKind <= 2 ? 1 : (kKind == 5 ? 3 : 2));
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t at = i;
    if (rows != nullptr) {
      const int64_t r = i / row_elements;
      at = rows[r] * row_elements + (i - r * row_elements);
    }
    C v = Widen(var[at]);
    C s[kMaxOptimizerSlots > 0 ? kMaxOptimizerSlots : 1];
    for (int k = 0; k < kSlots; ++k) s[k] = Widen(static_cast<T*>(slots.p[k])[at]);
    C g;
    if constexpr (std::is_same_v<G, T>) {
      g = Widen(grad[i]);
    } else {
      g = grad[i];
    }
    Step<kKind>(h, v, s, g);
    var[at] = Narrow<T>(v);
    for (int k = 0; k < kSlots; ++k) static_cast<T*>(slots.p[k])[at] = Narrow<T>(s[k]);
  }
}

template <typename T, typename G>
cudaError_t LaunchTyped(const OptimizerStep& step, T* var, const Slots& slots, const G* grad,
                        const int64_t* rows, int64_t row_elements, int64_t n, cudaStream_t stream) {
  const auto& h = [&]() -> const OptimizerCoefficients<ComputeT<T>>& {
    if constexpr (std::is_same_v<ComputeT<T>, double>) {
      return step.d;
    } else {
      return step.f;
    }
  }();
  auto launch = [&](auto kind) {
    OptimizerKernel<decltype(kind)::value, T, G>
        <<<BlocksFor(n), kThreads, 0, stream>>>(h, var, slots, grad, rows, row_elements, n);
    return cudaGetLastError();
  };
  switch (step.kind) {
    case Optimizer::kGradientDescent:
      return launch(std::integral_constant<int, 0>{});
    case Optimizer::kMomentum:
      return launch(std::integral_constant<int, 1>{});
    case Optimizer::kAdagrad:
      return launch(std::integral_constant<int, 2>{});
    case Optimizer::kAdam:
      return launch(std::integral_constant<int, 3>{});
    case Optimizer::kRMSProp:
      return launch(std::integral_constant<int, 4>{});
    case Optimizer::kCenteredRMSProp:
      return launch(std::integral_constant<int, 5>{});
    case Optimizer::kFtrl:
      return launch(std::integral_constant<int, 6>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t LaunchOptimizer(ElemType type, const OptimizerStep& step, void* var, void* const* slots,
                            const void* grad, const int64_t* rows, int64_t row_elements, int64_t n,
                            cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  Slots s{};
  for (int k = 0; k < OptimizerSlots(step.kind); ++k) s.p[k] = slots[k];
  auto launch = [&](auto t) {
    using T = decltype(t);
    using C = ComputeT<T>;
    if (rows == nullptr) {
      return LaunchTyped<T, T>(step, static_cast<T*>(var), s, static_cast<const T*>(grad), rows,
                               row_elements, n, stream);
    }
    return LaunchTyped<T, C>(step, static_cast<T*>(var), s, static_cast<const C*>(grad), rows,
                             row_elements, n, stream);
  };
  switch (type) {
    case ElemType::kFloat:
      return launch(float{});
    case ElemType::kDouble:
      return launch(double{});
    case ElemType::kHalf:
      return launch(Half{});
    case ElemType::kBFloat16:
      return launch(BFloat16{});
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace internal
}  // namespace gpu
}  // namespace psd
