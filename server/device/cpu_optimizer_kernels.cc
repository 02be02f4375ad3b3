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
//
// A sparse apply (CpuApplyOptimizerRows: a variable's rows by index, or an
// embedding table's rows by key) finds the distinct rows with a hash pass
// (no sort), asks the caller where each distinct row lies, sums
// the gradients of rows that arrived more than once in one sequential pass
// over the gradient, then steps each distinct row once: rows that arrived
// once straight from the wire, the others from their sums. Every element
// sees the same operations in the same order as in the dense step.
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
#include "device/prefetch.h"
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

using device_internal::PrefetchRow;

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

// The distinct rows of a sparse gradient, in order of first arrival, with
// how often each arrived and which distinct row each position updates.
//
// Built with one pass over the indices through an open-addressing hash
// table, not a sort: the update needs duplicates summed in arrival order,
// not the rows in index order, and most indices of a recommendation batch
// occur once.
class RowGroups {
 public:
  void Build(absl::Span<const int64_t> indices) {
    const size_t n = indices.size();
    size_t capacity = 16;
    while (capacity < 2 * n) capacity *= 2;  // load factor <= 1/2
    shift_ = 64 - __builtin_ctzll(capacity);
    table_.assign(capacity, -1);
    unique_.clear();
    first_.clear();
    count_.clear();
    of_.resize(n);
    const size_t mask = capacity - 1;
    for (size_t k = 0; k < n; ++k) {
      const int64_t index = indices[k];
      size_t slot = Hash(index);
      while (true) {
        int64_t u = table_[slot];
        if (u < 0) {  // first arrival
          u = static_cast<int64_t>(unique_.size());
          table_[slot] = u;
          unique_.push_back(index);
          first_.push_back(static_cast<int64_t>(k));
          count_.push_back(1);
          of_[k] = u;
          break;
        }
        if (unique_[u] == index) {
          ++count_[u];
          of_[k] = u;
          break;
        }
        slot = (slot + 1) & mask;
      }
    }
  }

  size_t size() const { return unique_.size(); }
  int64_t index(size_t u) const { return unique_[u]; }
  int64_t first(size_t u) const { return first_[u]; }  // position of its first arrival
  int64_t count(size_t u) const { return count_[u]; }
  int64_t of(size_t k) const { return of_[k]; }  // distinct row of position k

 private:
  size_t Hash(int64_t index) const {
    return static_cast<size_t>((static_cast<uint64_t>(index) * 0x9E3779B97F4A7C15ull) >> shift_);
  }

  int shift_ = 0;
  std::vector<int64_t> table_;   // distinct-row number per slot, -1 empty
  std::vector<int64_t> unique_;  // distinct indices, in order of first arrival
  std::vector<int64_t> first_;   // per distinct row
  std::vector<int64_t> count_;   // per distinct row
  std::vector<int64_t> of_;      // per position
};

// A thread's scratch for sparse updates: grows to the largest request the
// thread has served and is kept for the next (a fresh allocation per call
// costs more in page faults than the update itself).
template <typename C>
struct SparseScratch {
  RowGroups groups;
  std::vector<int64_t> sum_of;  // per distinct row: its row in `sums`, or -1
  std::vector<C> sums;          // summed gradients of rows that arrived more than once
  std::vector<void*> rows;      // per distinct row: var row, then its slot rows (kMaxSlots)
};
template <typename C>
SparseScratch<C>& ThreadScratch() {
  thread_local SparseScratch<C> scratch;
  return scratch;
}

template <typename T>
[[maybe_unused]] void Slots(absl::Span<DeviceBuffer* const> slots, T* out[kMaxSlots]) {
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
  char* const var_data = static_cast<char*>(var->data());
  char* slot_data[kMaxSlots] = {nullptr, nullptr, nullptr};
  for (size_t k = 0; k < slots.size(); ++k) slot_data[k] = static_cast<char*>(slots[k]->data());
  const int num_slots = static_cast<int>(slots.size());
  const int64_t row_bytes = row_elements * static_cast<int64_t>(elem_size);
  return CpuApplyOptimizerRows(params, dtype, num_slots, row_elements, indices, values,
                               [&](int64_t index, void** var_row, void** slot_rows) {
                                 const int64_t base = index * row_bytes;
                                 *var_row = var_data + base;
                                 for (int k = 0; k < num_slots; ++k) {
                                   slot_rows[k] = slot_data[k] + base;
                                 }
                                 return true;
                               });
}

absl::Status CpuApplyOptimizerRows(const OptimizerParams& params, DataType dtype, int num_slots,
                                   int64_t row_elements, absl::Span<const int64_t> indices,
                                   const void* values, OptimizerRowLocator locate) {
  if (row_elements < 0 || num_slots != NumOptimizerSlots(params.kind) || num_slots > kMaxSlots) {
    return absl::InternalError(absl::StrCat(OptimizerName(params.kind), " takes ",
                                            NumOptimizerSlots(params.kind), " slots, got ",
                                            num_slots));
  }
  if (indices.empty() || row_elements == 0) return absl::OkStatus();
  return DispatchFixedSize(
      dtype,
      [&](auto t) -> absl::Status {
        using T = decltype(t);
        if constexpr (std::is_floating_point_v<T> || kIsFloat16<T>) {
          using C = ComputeType<T>;
          SparseScratch<C>& scratch = ThreadScratch<C>();
          const RowGroups& groups = scratch.groups;
          scratch.groups.Build(indices);
          const size_t distinct = groups.size();
          // The rows of each distinct index, as the caller locates them
          // (null: skipped), before anything changes.
          const size_t stride = static_cast<size_t>(kMaxSlots) + 1;
          auto& rows = scratch.rows;
          rows.assign(distinct * stride, nullptr);
          for (size_t u = 0; u < distinct; ++u) {
            void** r = rows.data() + u * stride;
            if (!locate(groups.index(u), &r[0], &r[1])) r[0] = nullptr;
          }
          // Sum the gradients of rows that arrived more than once, in the
          // compute type and in arrival order (the first converted, each
          // later one added), as TensorFlow sums duplicate indices before a
          // sparse apply. One pass in position order reads the gradient
          // sequentially; rows that arrived once are read where they lie.
          auto& sum_of = scratch.sum_of;
          sum_of.assign(distinct, -1);
          int64_t summed = 0;
          for (size_t u = 0; u < distinct; ++u) {
            if (groups.count(u) > 1 && rows[u * stride] != nullptr) sum_of[u] = summed++;
          }
          const size_t sum_elements = static_cast<size_t>(summed * row_elements);
          if (scratch.sums.size() < sum_elements) scratch.sums.resize(sum_elements);
          C* const sums = scratch.sums.data();
          const auto* in = static_cast<const unsigned char*>(values);
          const size_t row_bytes = static_cast<size_t>(row_elements) * sizeof(T);
          if (summed > 0) {
            alignas(64) C buffer[kBlock];
            for (size_t k = 0; k < indices.size(); ++k) {
              // The gradient spans many small pages, where the hardware's
              // stream prefetch stops; this pass also warms the rows read
              // straight from the wire below.
              constexpr size_t kWireAhead = 8;
              if (k + kWireAhead < indices.size()) {
                PrefetchRow(in + (k + kWireAhead) * row_bytes, row_bytes);
              }
              const int64_t u = groups.of(k);
              if (sum_of[u] < 0) continue;
              C* sum = sums + sum_of[u] * row_elements;
              const WireGradient<T> row{in + k * row_bytes};
              const C* direct = row.Direct();
              for (int64_t off = 0; off < row_elements; off += kBlock) {
                const int64_t m = std::min(kBlock, row_elements - off);
                const C* g = direct != nullptr ? direct + off : row.Block(off, m, buffer);
                if (groups.first(u) == static_cast<int64_t>(k)) {
                  std::copy(g, g + m, sum + off);
                } else {
                  for (int64_t i = 0; i < m; ++i) sum[off + i] += g[i];
                }
              }
            }
          }
          const Coefficients<C> h = CoefficientsFor<C>(params);
          // One call per row through a pointer: the rows are memory-bound, and
          // inlining the step into this loop measured no faster.
          const StepFn<C> step = StepFor<C>(params.kind);
          // Rows lie scattered over large buffers, so each is a cache
          // miss: ask for rows kAhead distinct rows before updating them.
          constexpr size_t kAhead = 16;
          auto prefetch = [&](size_t u) {
            void* const* r = rows.data() + u * stride;
            if (r[0] == nullptr) return;
            PrefetchRow(r[0], row_elements * sizeof(T));
            for (int k = 0; k < num_slots; ++k) PrefetchRow(r[1 + k], row_elements * sizeof(T));
            if (summed == 0) PrefetchRow(in + groups.first(u) * row_bytes, row_bytes);
          };
          for (size_t u = 0; u < std::min(kAhead, distinct); ++u) prefetch(u);
          for (size_t u = 0; u < distinct; ++u) {
            if (u + kAhead < distinct) prefetch(u + kAhead);
            void* const* r = rows.data() + u * stride;
            if (r[0] == nullptr) continue;
            T* row_slots[kMaxSlots] = {nullptr, nullptr, nullptr};
            for (int k = 0; k < num_slots; ++k) row_slots[k] = static_cast<T*>(r[1 + k]);
            T* const var_row = static_cast<T*>(r[0]);
            if (sum_of[u] < 0) {
              RunStep<T>(step, h, var_row, row_slots, num_slots,
                         WireGradient<T>{in + groups.first(u) * row_bytes}, row_elements);
            } else {
              RunStep<T>(step, h, var_row, row_slots, num_slots,
                         ComputedGradient<T>{sums + sum_of[u] * row_elements}, row_elements);
            }
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
