#include "device/initializers.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "device/device.h"
#include "device/initializer_math.h"
#include "device/initializer_spec.h"
#include "device/philox.h"
#include "psd/dtype.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {
namespace {

// ---------------------------------------------------------------------------
// Filling.

// The type the random values are computed in: float for the 16-bit floats,
// as TensorFlow's CPU kernels do.
template <typename T>
using ComputeType = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
constexpr bool kIsFloating =
    std::is_floating_point_v<T> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

template <typename T>
T FromDouble(double v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return T(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// Where the slice lies in the full variable. Checked by CheckGeometry.
struct Region {
  const TensorShape& full;
  const TensorShape& slice;
  absl::Span<const int64_t> offset;
};

absl::Status CheckGeometry(const Region& region, size_t elem_size, size_t dst_bytes) {
  const int rank = region.full.rank();
  if (region.slice.rank() != rank || static_cast<int>(region.offset.size()) != rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slice ", region.slice.ToString(), " at an offset of rank ", region.offset.size(),
        " does not match variable shape ", region.full.ToString()));
  }
  for (int d = 0; d < rank; ++d) {
    const int64_t off = region.offset[d];
    if (region.full.dim(d) < 0 || region.slice.dim(d) < 0 || off < 0 || off > region.full.dim(d) ||
        region.slice.dim(d) > region.full.dim(d) - off) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slice ", region.slice.ToString(), " at offset [", absl::StrJoin(region.offset, ","),
          "] exceeds variable shape ", region.full.ToString(), " on axis ", d));
    }
  }
  const uint64_t n = static_cast<uint64_t>(region.slice.num_elements());
  if (n > dst_bytes / elem_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("slice of ", n, " elements does not fit a ", dst_bytes, "-byte buffer"));
  }
  return absl::OkStatus();
}

// Calls fn(local_start, global_start, length) for each run of the slice that
// is contiguous both in the slice and in the full variable (row-major),
// in slice order. Trailing axes the slice covers entirely merge into one run,
// so an unpartitioned variable or a slice along axis 0 is a single run.
template <typename Fn>
void ForEachRun(const Region& region, Fn&& fn) {
  const TensorShape& full = region.full;
  const TensorShape& slice = region.slice;
  if (slice.num_elements() == 0) return;
  const int rank = full.rank();
  if (rank == 0) {
    fn(int64_t{0}, int64_t{0}, int64_t{1});
    return;
  }
  // Axes after `k` are whole (so their offsets are 0): a run is the slice's
  // extent along axis k times all of them.
  int k = rank - 1;
  while (k > 0 && slice.dim(k) == full.dim(k)) --k;
  std::vector<int64_t> stride(rank);
  stride[rank - 1] = 1;
  for (int d = rank - 2; d >= 0; --d) stride[d] = stride[d + 1] * full.dim(d + 1);
  int64_t run = 1;
  for (int d = k; d < rank; ++d) run *= slice.dim(d);
  int64_t outer = 1;
  for (int d = 0; d < k; ++d) outer *= slice.dim(d);

  int64_t global = 0;
  for (int d = 0; d <= k; ++d) global += region.offset[d] * stride[d];
  std::vector<int64_t> index(k, 0);  // odometer over axes [0, k)
  int64_t local = 0;
  for (int64_t r = 0; r < outer; ++r) {
    fn(local, global, run);
    local += run;
    for (int d = k - 1; d >= 0; --d) {
      global += stride[d];
      if (++index[d] < slice.dim(d)) break;
      global -= index[d] * stride[d];
      index[d] = 0;
    }
  }
}

// dst[i] = sample(g) for the global index g of each slice element.
template <typename T, typename Sample>
void FillRandom(const Region& region, T* dst, const Sample& sample) {
  ForEachRun(region, [&](int64_t local, int64_t global, int64_t len) {
    T* out = dst + local;
    for (int64_t j = 0; j < len; ++j) out[j] = sample(static_cast<uint64_t>(global + j));
  });
}

using init_math::Draw;
using init_math::RealDistribution;

template <typename T>
void FillUniformInteger(const Region& region, const PhiloxKey& key, int64_t lo, uint64_t span,
                        T* dst) {
  FillRandom(region, dst, [&](uint64_t g) {
    return static_cast<T>(init_math::UniformInteger(Draw(key, g, 0), lo, span));
  });
}

// Uniform in [a, b), or normal/truncated normal with mean a and stddev b, in
// the compute type; one sample function with the keyed rows (FillKeyedRow).
template <typename T>
void FillReal(const Region& region, const PhiloxKey& key, RealDistribution d, double a, double b,
              T* dst) {
  using C = ComputeType<T>;
  const C ca = static_cast<C>(a), cb = static_cast<C>(b);
  FillRandom(region, dst,
             [&](uint64_t g) { return T(init_math::SampleReal<C>(d, key, g, ca, cb, 0)); });
}

RealDistribution DistributionOf(InitializerPlan::Kind kind) {
  switch (kind) {
    case InitializerPlan::Kind::kNormal:
      return RealDistribution::kNormal;
    case InitializerPlan::Kind::kTruncatedNormal:
      return RealDistribution::kTruncatedNormal;
    default:
      return RealDistribution::kUniform;
  }
}

template <typename T>
void FillConstant(const Region& region, const TensorProto& value, T* dst) {
  const char* src = value.content().data();
  auto* out = reinterpret_cast<unsigned char*>(dst);
  ForEachRun(region, [&](int64_t local, int64_t global, int64_t len) {
    std::memcpy(out + local * sizeof(T), src + global * sizeof(T), len * sizeof(T));
  });
  if constexpr (std::is_same_v<T, bool>) {
    const int64_t n = region.slice.num_elements();
    for (int64_t i = 0; i < n; ++i) out[i] = out[i] != 0;
  }
}

// One element of T as its bytes, zero-extended to 64 bits.
template <typename T>
uint64_t PatternOf(T v) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
absl::StatusOr<InitializerPlan> PlanTyped(const InitializerSpec& spec, DataType dtype,
                                          const Region& region) {
  InitializerPlan plan;
  plan.seed = static_cast<uint64_t>(spec.seed());
  auto uniform = [&](double lo, double hi) {
    plan.kind = InitializerPlan::Kind::kUniformReal;
    plan.a = lo;
    plan.b = hi;
    return plan;
  };
  switch (spec.kind_case()) {
    case InitializerSpec::kZeros:
      return plan;  // a pattern of zero bytes
    case InitializerSpec::kOnes:
      plan.pattern = PatternOf(FromDouble<T>(1.0));
      return plan;
    case InitializerSpec::kConstant: {
      const TensorProto& value = spec.constant().value();
      if (value.shape().dims_size() != 0) {
        plan.kind = InitializerPlan::Kind::kConstantTensor;
        return plan;
      }
      T v;
      if constexpr (std::is_same_v<T, bool>) {
        v = value.content()[0] != 0;  // any nonzero byte is true
      } else {
        std::memcpy(&v, value.content().data(), sizeof(T));
      }
      plan.pattern = PatternOf(v);
      return plan;
    }
    case InitializerSpec::kRandomUniform: {
      const auto& p = spec.random_uniform();
      if (IsFloating(dtype)) return uniform(p.minval(), p.maxval());
      PSD_ASSIGN_OR_RETURN(
          internal::IntegerRange range,
          internal::IntegerUniformRange("random_uniform", p.minval(), p.maxval(), dtype));
      plan.kind = InitializerPlan::Kind::kUniformInt;
      plan.int_lo = range.lo;
      plan.int_span = range.span;
      return plan;
    }
    case InitializerSpec::kRandomNormal:
      plan.kind = InitializerPlan::Kind::kNormal;
      plan.a = spec.random_normal().mean();
      plan.b = spec.random_normal().stddev();
      return plan;
    case InitializerSpec::kTruncatedNormal:
      plan.kind = InitializerPlan::Kind::kTruncatedNormal;
      plan.a = spec.truncated_normal().mean();
      plan.b = spec.truncated_normal().stddev();
      return plan;
    case InitializerSpec::kUniformUnitScaling: {
      const auto& p = spec.uniform_unit_scaling();
      const double limit =
          p.full_shape().empty()
              ? UnitScalingLimit(p.factor(), region.full.dims())
              : UnitScalingLimit(p.factor(),
                                 absl::MakeConstSpan(p.full_shape().data(), p.full_shape_size()));
      return uniform(-limit, limit);
    }
    case InitializerSpec::kDefaultInitializer:
      if (IsFloating(dtype)) {
        const double limit = UnitScalingLimit(1.0, region.full.dims());
        return uniform(-limit, limit);
      }
      return plan;  // zeros
    case InitializerSpec::kFromVariable:  // refused by ValidateInitializer
    case InitializerSpec::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("initializer has no kind set");
}

template <typename T>
void FillTyped(const InitializerSpec& spec, const InitializerPlan& plan, const Region& region,
               T* dst) {
  const PhiloxKey key = init_math::KeyOf(plan.seed);
  const int64_t n = region.slice.num_elements();
  using Kind = InitializerPlan::Kind;
  switch (plan.kind) {
    case Kind::kPattern: {
      T v;
      std::memcpy(static_cast<void*>(&v), &plan.pattern, sizeof(T));
      std::fill(dst, dst + n, v);
      return;
    }
    case Kind::kConstantTensor:
      FillConstant(region, spec.constant().value(), dst);
      return;
    case Kind::kUniformInt:
      if constexpr (std::is_integral_v<T>) {
        FillUniformInteger(region, key, plan.int_lo, plan.int_span, dst);
      }
      return;
    case Kind::kUniformReal:
    case Kind::kNormal:
    case Kind::kTruncatedNormal:
      // Planned for floating dtypes only (ValidateInitializer).
      if constexpr (kIsFloating<T>) {
        FillReal(region, key, DistributionOf(plan.kind), plan.a, plan.b, dst);
      }
      return;
  }
}

template <typename T>
void FillKeyedTyped(const InitializerPlan& plan, int64_t key, int64_t dim, T* dst) {
  using Kind = InitializerPlan::Kind;
  if (plan.kind == Kind::kPattern) {
    T v;
    std::memcpy(static_cast<void*>(&v), &plan.pattern, sizeof(T));
    std::fill(dst, dst + dim, v);
    return;
  }
  if constexpr (kIsFloating<T>) {
    using C = ComputeType<T>;
    const PhiloxKey seed = init_math::KeyOf(plan.seed);
    const RealDistribution d = DistributionOf(plan.kind);
    const C a = static_cast<C>(plan.a), b = static_cast<C>(plan.b);
    const uint64_t g = static_cast<uint64_t>(key);
    for (int64_t i = 0; i < dim; ++i) {
      dst[i] = T(init_math::SampleReal<C>(d, seed, g, a, b, static_cast<uint32_t>(i + 1)));
    }
  }
}

}  // namespace

absl::StatusOr<InitializerPlan> PlanKeyedInitializer(const InitializerSpec& spec, DataType dtype,
                                                     int64_t dim, const std::string& table) {
  if (!IsFloating(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("embedding table '", table, "': dtype ",
                                                   DataTypeName(dtype), " is not floating"));
  }
  if (dim <= 0 || dim > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedding table '", table, "': dim ", dim, " is not in [1, 2^31]"));
  }
  switch (spec.kind_case()) {
    case InitializerSpec::kZeros:
    case InitializerSpec::kOnes:
    case InitializerSpec::kRandomUniform:
    case InitializerSpec::kRandomNormal:
    case InitializerSpec::kTruncatedNormal:
      break;
    case InitializerSpec::kConstant:
      if (spec.constant().value().shape().dims_size() == 0) break;
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table '", table, "': initializer: a constant must be a scalar"));
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "embedding table '", table,
          "': initializer: only zeros, ones, a scalar constant, random_uniform, random_normal "
          "and truncated_normal can be drawn per key"));
  }
  const TensorShape row({dim});
  const std::vector<int64_t> offset(1, 0);
  return PlanInitializer(spec, dtype, row, row, offset,
                         static_cast<size_t>(dim) * DataTypeSize(dtype));
}

void FillKeyedRow(const InitializerPlan& plan, DataType dtype, int64_t key, int64_t dim,
                  void* dst) {
  DispatchFixedSize(
      dtype,
      [&](auto t) {
        using T = decltype(t);
        FillKeyedTyped<T>(plan, key, dim, static_cast<T*>(dst));
        return 0;
      },
      [] { return 0; });
}

absl::StatusOr<InitializerPlan> PlanInitializer(const InitializerSpec& spec, DataType dtype,
                                                const TensorShape& full_shape,
                                                const TensorShape& slice_shape,
                                                absl::Span<const int64_t> slice_offset,
                                                size_t dst_bytes) {
  // Both checks are O(rank); repeating them here keeps a caller's mistake
  // from becoming an out-of-bounds write.
  PSD_RETURN_IF_ERROR(ValidateInitializer(spec, dtype, full_shape, "(initialize)"));
  const Region region{full_shape, slice_shape, slice_offset};
  PSD_RETURN_IF_ERROR(CheckGeometry(region, DataTypeSize(dtype), dst_bytes));
  return DispatchFixedSize(
      dtype, [&](auto t) { return PlanTyped<decltype(t)>(spec, dtype, region); },
      [&]() -> absl::StatusOr<InitializerPlan> {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot initialize dtype ", DataTypeName(dtype)));
      });
}

absl::Status FillInitializer(const InitializerSpec& spec, DataType dtype,
                             const TensorShape& full_shape, const TensorShape& slice_shape,
                             absl::Span<const int64_t> slice_offset, void* dst, size_t dst_bytes) {
  PSD_ASSIGN_OR_RETURN(InitializerPlan plan, PlanInitializer(spec, dtype, full_shape, slice_shape,
                                                             slice_offset, dst_bytes));
  const Region region{full_shape, slice_shape, slice_offset};
  return DispatchFixedSize(
      dtype,
      [&](auto t) {
        using T = decltype(t);
        FillTyped<T>(spec, plan, region, static_cast<T*>(dst));
        return absl::OkStatus();
      },
      [&] {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot initialize dtype ", DataTypeName(dtype)));
      });
}

}  // namespace psd
