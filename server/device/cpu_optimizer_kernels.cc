// TensorFlow's training ops on the CPU: ApplyGradientDescent, ApplyMomentum,
// ApplyAdagrad, ApplyAdam, ApplyRMSProp, ApplyCenteredRMSProp and
// ApplyFtrl(V2), dense and sparse, with TensorFlow's formulas term for term.
//
// Each optimizer is one element-wise step over contiguous arrays of the
// compute type C (double for float64, float otherwise). For float32/float64
// the step runs on the buffers in place, reading an aligned gradient where
// it lies; otherwise buffers are walked in blocks of kBlock elements: an
// unaligned gradient block is copied into a local array, and for
// float16/bfloat16 the variable and slot blocks are widened into local float
// arrays, updated and rounded back.
// The loops are plain and branch-free where TensorFlow's are, so -O3
// vectorizes them (FTRL's general learning_rate_power needs pow per element).
#include "device/cpu_optimizer_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "device/device_checks.h"
#include "psd/dtype.h"
#include "psd/float16.h"

namespace psd {

int NumOptimizerSlots(OptimizerKind kind) { return gpu::OptimizerSlots(kind); }

const char* OptimizerName(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kGradientDescent:
      return "GradientDescent";
    case OptimizerKind::kMomentum:
      return "Momentum";
    case OptimizerKind::kAdagrad:
      return "Adagrad";
    case OptimizerKind::kAdam:
      return "Adam";
    case OptimizerKind::kRMSProp:
      return "RMSProp";
    case OptimizerKind::kCenteredRMSProp:
      return "CenteredRMSProp";
    case OptimizerKind::kFtrl:
      return "Ftrl";
  }
  return "unknown optimizer";
}

namespace internal {
namespace {

constexpr int kMaxSlots = 3;
constexpr int64_t kBlock = 1024;

template <typename C>
using Coefficients = gpu::OptimizerCoefficients<C>;

// The steps: s[] are the slot arrays in the op's argument order.
template <typename C>
void GradientDescentStep(const Coefficients<C>& h, C* __restrict var, C* const*,
                         const C* __restrict g, int64_t m) {
  const C lr = h.lr;
  for (int64_t i = 0; i < m; ++i) var[i] -= lr * g[i];
}

template <typename C>
void MomentumStep(const Coefficients<C>& h, C* __restrict var, C* const* s, const C* __restrict g,
                  int64_t m) {
  C* __restrict accum = s[0];
  const C lr = h.lr, mu = h.momentum;
  if (h.use_nesterov) {
    for (int64_t i = 0; i < m; ++i) {
      accum[i] = accum[i] * mu + g[i];
      var[i] -= g[i] * lr + accum[i] * mu * lr;
    }
  } else {
    for (int64_t i = 0; i < m; ++i) {
      accum[i] = accum[i] * mu + g[i];
      var[i] -= accum[i] * lr;
    }
  }
}

template <typename C>
void AdagradStep(const Coefficients<C>& h, C* __restrict var, C* const* s, const C* __restrict g,
                 int64_t m) {
  C* __restrict accum = s[0];
  const C lr = h.lr;
  for (int64_t i = 0; i < m; ++i) {
    accum[i] += g[i] * g[i];
    var[i] -= g[i] * lr / std::sqrt(accum[i]);
  }
}

template <typename C>
void AdamStep(const Coefficients<C>& h, C* __restrict var, C* const* s, const C* __restrict g,
              int64_t m) {
  C* __restrict mv = s[0];
  C* __restrict vv = s[1];
  const C b1 = h.one_minus_beta1, b2 = h.one_minus_beta2, alpha = h.adam_alpha, eps = h.epsilon;
  for (int64_t i = 0; i < m; ++i) {
    mv[i] += (g[i] - mv[i]) * b1;
    vv[i] += (g[i] * g[i] - vv[i]) * b2;
    var[i] -= (mv[i] * alpha) / (std::sqrt(vv[i]) + eps);
  }
}

template <typename C>
void RMSPropStep(const Coefficients<C>& h, C* __restrict var, C* const* s, const C* __restrict g,
                 int64_t m) {
  C* __restrict ms = s[0];
  C* __restrict mom = s[1];
  const C rho = h.one_minus_decay, mu = h.momentum, lr = h.lr, eps = h.epsilon;
  for (int64_t i = 0; i < m; ++i) {
    ms[i] += (g[i] * g[i] - ms[i]) * rho;
    mom[i] = mom[i] * mu + (g[i] * lr) / std::sqrt(ms[i] + eps);
    var[i] -= mom[i];
  }
}

template <typename C>
void CenteredRMSPropStep(const Coefficients<C>& h, C* __restrict var, C* const* s,
                         const C* __restrict g, int64_t m) {
  C* __restrict mg = s[0];
  C* __restrict ms = s[1];
  C* __restrict mom = s[2];
  const C rho = h.one_minus_decay, mu = h.momentum, lr = h.lr, eps = h.epsilon;
  for (int64_t i = 0; i < m; ++i) {
    ms[i] += (g[i] * g[i] - ms[i]) * rho;
    mg[i] += (g[i] - mg[i]) * rho;
    const C denom = (ms[i] - mg[i] * mg[i]) + eps;
    mom[i] = mom[i] * mu + (g[i] * lr) / std::sqrt(denom);
    var[i] -= mom[i];
  }
}

// ApplyFtrlV2 (ApplyFtrl when l2_shrinkage is 0): the shrinkage enters the
// linear term only; the accumulator sums the plain gradient's squares.
template <typename C>
void FtrlStep(const Coefficients<C>& h, C* __restrict var, C* const* s, const C* __restrict g,
              int64_t m) {
  C* __restrict accum = s[0];
  C* __restrict linear = s[1];
  const C lr = h.lr, l1 = h.l1, two_l2 = h.two_l2, shrink = h.two_l2_shrinkage;
  if (h.lr_power_is_half) {
    for (int64_t i = 0; i < m; ++i) {
      const C new_accum = accum[i] + g[i] * g[i];
      const C root = std::sqrt(new_accum);
      linear[i] += (g[i] + shrink * var[i]) - (root - std::sqrt(accum[i])) / lr * var[i];
      const C x = (linear[i] > C(0) ? l1 : (linear[i] < C(0) ? -l1 : C(0))) - linear[i];
      const C y = root / lr + two_l2;
      var[i] = std::abs(linear[i]) > l1 ? x / y : C(0);
      accum[i] = new_accum;
    }
  } else {
    const C p = h.neg_lr_power;
    for (int64_t i = 0; i < m; ++i) {
      const C new_accum = accum[i] + g[i] * g[i];
      const C powered = std::pow(new_accum, p);
      linear[i] += (g[i] + shrink * var[i]) - (powered - std::pow(accum[i], p)) / lr * var[i];
      const C x = (linear[i] > C(0) ? l1 : (linear[i] < C(0) ? -l1 : C(0))) - linear[i];
      const C y = powered / lr + two_l2;
      var[i] = std::abs(linear[i]) > l1 ? x / y : C(0);
      accum[i] = new_accum;
    }
  }
}

template <typename C>
using StepFn = void (*)(const Coefficients<C>&, C* __restrict, C* const*, const C* __restrict,
                        int64_t);

template <typename C>
StepFn<C> StepFor(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kGradientDescent:
      return &GradientDescentStep<C>;
    case OptimizerKind::kMomentum:
      return &MomentumStep<C>;
    case OptimizerKind::kAdagrad:
      return &AdagradStep<C>;
    case OptimizerKind::kAdam:
      return &AdamStep<C>;
    case OptimizerKind::kRMSProp:
      return &RMSPropStep<C>;
    case OptimizerKind::kCenteredRMSProp:
      return &CenteredRMSPropStep<C>;
    case OptimizerKind::kFtrl:
      return &FtrlStep<C>;
  }
  return nullptr;
}

template <typename T>
constexpr bool kIsFloat16 = std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

// The compute type of a storage type.
template <typename T>
using ComputeType = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Where a block of gradient comes from: n elements of T on the wire
// (unaligned), or already-summed rows in the compute type.
template <typename T>
struct WireGradient {
  const unsigned char* bytes;
  // The whole gradient in place when it needs no conversion and is aligned
  // (it usually is: protobuf's byte strings are heap allocations); else null.
  const ComputeType<T>* Direct() const {
    if constexpr (kIsFloat16<T>) {
      return nullptr;
    } else {
      if (reinterpret_cast<uintptr_t>(bytes) % alignof(T) != 0) return nullptr;
      return reinterpret_cast<const T*>(bytes);
    }
  }
  // Returns the block [offset, offset + m) as C, using `buffer`.
  const ComputeType<T>* Block(int64_t offset, int64_t m, ComputeType<T>* buffer) const {
    const unsigned char* p = bytes + offset * static_cast<int64_t>(sizeof(T));
    if constexpr (kIsFloat16<T>) {
      for (int64_t i = 0; i < m; ++i) {
        T v;
        std::memcpy(&v, p + i * sizeof(T), sizeof(T));
        buffer[i] = static_cast<float>(v);
      }
    } else {
      std::memcpy(buffer, p, static_cast<size_t>(m) * sizeof(T));
    }
    return buffer;
  }
};

template <typename T>
struct ComputedGradient {
  const ComputeType<T>* values;
  const ComputeType<T>* Direct() const { return values; }
  const ComputeType<T>* Block(int64_t offset, int64_t, ComputeType<T>*) const {
    return values + offset;
  }
};

// Runs `step` over n elements of var and its `num_slots` slots, block by
// block.
template <typename T, typename Gradient>
void RunStep(StepFn<ComputeType<T>> step, const Coefficients<ComputeType<T>>& h, T* var,
             T* const* slots, int num_slots, const Gradient& grad, int64_t n) {
  using C = ComputeType<T>;
  alignas(64) C gbuf[kBlock];
  if constexpr (kIsFloat16<T>) {
    alignas(64) C vbuf[kBlock];
    alignas(64) C sbuf[kMaxSlots][kBlock];
    C* sp[kMaxSlots] = {sbuf[0], sbuf[1], sbuf[2]};
    for (int64_t off = 0; off < n; off += kBlock) {
      const int64_t m = std::min(kBlock, n - off);
      for (int64_t i = 0; i < m; ++i) vbuf[i] = static_cast<float>(var[off + i]);
      for (int k = 0; k < num_slots; ++k) {
        for (int64_t i = 0; i < m; ++i) sbuf[k][i] = static_cast<float>(slots[k][off + i]);
      }
      step(h, vbuf, sp, grad.Block(off, m, gbuf), m);
      for (int64_t i = 0; i < m; ++i) var[off + i] = T(vbuf[i]);
      for (int k = 0; k < num_slots; ++k) {
        for (int64_t i = 0; i < m; ++i) slots[k][off + i] = T(sbuf[k][i]);
      }
    }
  } else {
    if (const C* direct = grad.Direct(); direct != nullptr) {
      step(h, var, slots, direct, n);  // one pass, no copies
      return;
    }
    for (int64_t off = 0; off < n; off += kBlock) {
      const int64_t m = std::min(kBlock, n - off);
      C* sp[kMaxSlots] = {nullptr, nullptr, nullptr};
      for (int k = 0; k < num_slots; ++k) sp[k] = slots[k] + off;
      step(h, var + off, sp, grad.Block(off, m, gbuf), m);
    }
  }
}

// A thread's scratch for sparse updates: grows to the largest request the
// thread has served and is kept for the next.
template <typename C>
struct SparseScratch {
  std::vector<std::pair<int64_t, int64_t>> order;  // (index, position)
  std::vector<int64_t> unique;
  std::vector<C> sums;
};
template <typename C>
SparseScratch<C>& ThreadScratch() {
  thread_local SparseScratch<C> scratch;
  return scratch;
}

// Asks for the start of a row that will be updated soon: sparse updates
// touch rows scattered over large buffers, so each row is a cache miss.
template <typename T>
inline void PrefetchRow(T* row, int64_t row_elements) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = std::min<int64_t>(row_elements * sizeof(T), 1024);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, /*rw=*/1);
}

template <typename T>
void Slots(absl::Span<DeviceBuffer* const> slots, T* out[kMaxSlots]) {
  for (size_t k = 0; k < slots.size(); ++k) out[k] = static_cast<T*>(slots[k]->data());
}

absl::Status Unsupported(DataType dtype) { return OptimizerDtypeUnsupported(dtype); }

}  // namespace

absl::Status CpuApplyOptimizerDense(const OptimizerParams& params, DataType dtype,
                                    DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                    const void* grad, int64_t n) {
  const size_t elem_size = DataTypeSize(dtype);
  if (n < 0 || elem_size == 0) return Unsupported(dtype);
  absl::Status s =
      CheckOptimizerBuffers(params, dtype, elem_size, var, slots, static_cast<uint64_t>(n));
  if (!s.ok()) return s;
  if (n == 0) return absl::OkStatus();  // `grad` may be empty
  return DispatchFixedSize(
      dtype,
      [&](auto t) -> absl::Status {
        using T = decltype(t);
        if constexpr (std::is_floating_point_v<T> || kIsFloat16<T>) {
          using C = ComputeType<T>;
          T* slot_data[kMaxSlots] = {nullptr, nullptr, nullptr};
          Slots(slots, slot_data);
          RunStep<T>(StepFor<C>(params.kind), CoefficientsFor<C>(params),
                     static_cast<T*>(var->data()), slot_data, static_cast<int>(slots.size()),
                     WireGradient<T>{static_cast<const unsigned char*>(grad)}, n);
          return absl::OkStatus();
        } else {
          return Unsupported(dtype);
        }
      },
      [&] { return Unsupported(dtype); });
}

absl::Status CpuApplyOptimizerSparse(const OptimizerParams& params, DataType dtype,
                                     DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                     int64_t row_elements, absl::Span<const int64_t> indices,
                                     const void* values) {
  const size_t elem_size = DataTypeSize(dtype);
  if (row_elements < 0 || elem_size == 0) return Unsupported(dtype);
  absl::Status s = CheckOptimizerBuffers(params, dtype, elem_size, var, slots, 0);
  if (!s.ok()) return s;
  if (indices.empty() || row_elements == 0) return absl::OkStatus();
  s = CheckRows(indices, row_elements, elem_size, var->size());
  if (!s.ok()) return s;
  return DispatchFixedSize(
      dtype,
      [&](auto t) -> absl::Status {
        using T = decltype(t);
        if constexpr (std::is_floating_point_v<T> || kIsFloat16<T>) {
          using C = ComputeType<T>;
          // Group duplicate indices, in arrival order within a group (so each
          // row's sum adds in the order the rows arrived), and sum their rows
          // in the compute type. The scratch is this thread's, reused across
          // calls: a fresh megabyte per call costs more in page faults than
          // the update itself.
          SparseScratch<C>& scratch = ThreadScratch<C>();
          auto& order = scratch.order;
          order.resize(indices.size());
          for (size_t k = 0; k < indices.size(); ++k) {
            order[k] = {indices[k], static_cast<int64_t>(k)};
          }
          std::sort(order.begin(), order.end());
          auto& unique = scratch.unique;
          unique.clear();
          for (const auto& [index, k] : order) {
            if (unique.empty() || unique.back() != index) unique.push_back(index);
          }
          const size_t sum_elements = unique.size() * static_cast<size_t>(row_elements);
          if (scratch.sums.size() < sum_elements) scratch.sums.resize(sum_elements);
          C* const sums = scratch.sums.data();
          const auto* in = static_cast<const unsigned char*>(values);
          const size_t row_bytes = static_cast<size_t>(row_elements) * sizeof(T);
          WireGradient<T> wire{nullptr};
          alignas(64) C buffer[kBlock];
          size_t u = 0;
          for (size_t j = 0; j < order.size(); ++j) {
            const int64_t k = order[j].second;
            const bool first = j == 0 || order[j - 1].first != order[j].first;
            if (first && j > 0) ++u;
            C* sum = sums + u * row_elements;
            wire.bytes = in + static_cast<size_t>(k) * row_bytes;
            for (int64_t off = 0; off < row_elements; off += kBlock) {
              const int64_t m = std::min(kBlock, row_elements - off);
              const C* g = wire.Block(off, m, buffer);
              if (first) {
                std::copy(g, g + m, sum + off);
              } else {
                for (int64_t i = 0; i < m; ++i) sum[off + i] += g[i];
              }
            }
          }
          const StepFn<C> step = StepFor<C>(params.kind);
          const Coefficients<C> h = CoefficientsFor<C>(params);
          T* const var_data = static_cast<T*>(var->data());
          T* slot_data[kMaxSlots] = {nullptr, nullptr, nullptr};
          Slots(slots, slot_data);
          const int num_slots = static_cast<int>(slots.size());
          constexpr size_t kAhead = 16;  // rows prefetched ahead of the update
          auto prefetch = [&](size_t r) {
            const int64_t base = unique[r] * row_elements;
            PrefetchRow(var_data + base, row_elements);
            for (int k = 0; k < num_slots; ++k) PrefetchRow(slot_data[k] + base, row_elements);
          };
          for (size_t r = 0; r < std::min(kAhead, unique.size()); ++r) prefetch(r);
          for (size_t r = 0; r < unique.size(); ++r) {
            if (r + kAhead < unique.size()) prefetch(r + kAhead);
            const int64_t base = unique[r] * row_elements;
            T* row_slots[kMaxSlots] = {nullptr, nullptr, nullptr};
            for (int k = 0; k < num_slots; ++k) row_slots[k] = slot_data[k] + base;
            RunStep<T>(step, h, var_data + base, row_slots, num_slots,
                       ComputedGradient<T>{sums + r * row_elements}, row_elements);
          }
          return absl::OkStatus();
        } else {
          return Unsupported(dtype);
        }
      },
      [&] { return Unsupported(dtype); });
}

}  // namespace internal
}  // namespace psd
