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
#include "device/philox.h"
#include "psd/dtype.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {
namespace {

const char* KindName(InitializerSpec::KindCase kind) {
  switch (kind) {
    case InitializerSpec::kZeros:
      return "zeros";
    case InitializerSpec::kOnes:
      return "ones";
    case InitializerSpec::kConstant:
      return "constant";
    case InitializerSpec::kRandomUniform:
      return "random_uniform";
    case InitializerSpec::kRandomNormal:
      return "random_normal";
    case InitializerSpec::kTruncatedNormal:
      return "truncated_normal";
    case InitializerSpec::kUniformUnitScaling:
      return "uniform_unit_scaling";
    case InitializerSpec::kDefaultInitializer:
      return "default_initializer";
    case InitializerSpec::kFromVariable:
      return "from_variable";
    case InitializerSpec::KIND_NOT_SET:
      break;
  }
  return "unset";
}

// The largest finite value of a floating dtype: parameters beyond it would
// turn into infinities when the values are computed in that dtype.
double MaxFinite(DataType dtype) {
  switch (dtype) {
    case DT_HALF:
      return 65504.0;
    case DT_BFLOAT16:
      return 3.38953138925153547590470800371487866880e38;
    case DT_FLOAT:
      return FLT_MAX;
    default:
      return DBL_MAX;
  }
}

// Parameter checks; `where` is "variable 'v': <kind>".
absl::Status CheckParam(const std::string& where, const char* name, double value, DataType dtype) {
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " ", name, " must be finite, got ", value));
  }
  if (std::fabs(value) > MaxFinite(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " ", name, " ", value, " is out of range for ", DataTypeName(dtype)));
  }
  return absl::OkStatus();
}

absl::Status NeedFloating(const std::string& where, DataType dtype) {
  if (IsFloating(dtype)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(where, " initializer needs a floating dtype, got ", DataTypeName(dtype)));
}

// Bounds of an integer random_uniform, as the first value and the count of
// values (0 standing for 2^64).
struct IntegerRange {
  int64_t lo;
  uint64_t span;
};

// minval/maxval must be integral and inside the dtype; maxval is exclusive,
// so it may be one past the largest value.
absl::StatusOr<IntegerRange> IntegerUniformRange(const std::string& where, double minval,
                                                 double maxval, DataType dtype) {
  const double limit = dtype == DT_INT32 ? 0x1p31 : 0x1p63;  // exact powers of two
  for (double v : {minval, maxval}) {
    if (!std::isfinite(v) || std::trunc(v) != v) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " bounds must be integers for ", DataTypeName(dtype), ", got ", v));
    }
  }
  if (minval < -limit || maxval > limit) {
    return absl::InvalidArgumentError(absl::StrCat(where, " bounds [", minval, ", ", maxval,
                                                   ") are out of range for ", DataTypeName(dtype)));
  }
  // minval < maxval was checked, so maxval - 1 is representable in int64 and
  // the unsigned difference counts the values minus one without overflow.
  const int64_t lo = static_cast<int64_t>(minval);
  const int64_t last =
      maxval == 0x1p63 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(maxval) - 1;
  return IntegerRange{lo, static_cast<uint64_t>(last) - static_cast<uint64_t>(lo) + 1};
}

absl::Status ValidateConstant(const std::string& where, const TensorProto& value, DataType dtype,
                              const TensorShape& full_shape) {
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ValidateTensorProto(value, where + " value"));
  if (value.dtype() != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(where, " value has dtype ",
                                                   DataTypeName(value.dtype()), ", variable is ",
                                                   DataTypeName(dtype)));
  }
  if (shape.rank() != 0 && shape != full_shape) {
    return absl::InvalidArgumentError(absl::StrCat(where, " value has shape ", shape.ToString(),
                                                   ", needs a scalar or the variable's shape ",
                                                   full_shape.ToString()));
  }
  return absl::OkStatus();
}

absl::Status ValidateUnitScaling(const std::string& where,
                                 const InitializerSpec::UniformUnitScaling& spec, DataType dtype,
                                 const TensorShape& full_shape) {
  PSD_RETURN_IF_ERROR(NeedFloating(where, dtype));
  PSD_RETURN_IF_ERROR(CheckParam(where, "factor", spec.factor(), dtype));
  PSD_RETURN_IF_ERROR(
      TensorShape::Make(absl::MakeConstSpan(spec.full_shape().data(), spec.full_shape_size()),
                        where + " full_shape")
          .status());
  const double limit =
      spec.full_shape().empty()
          ? UnitScalingLimit(spec.factor(), full_shape.dims())
          : UnitScalingLimit(spec.factor(),
                             absl::MakeConstSpan(spec.full_shape().data(), spec.full_shape_size()));
  return CheckParam(where, "limit", limit, dtype);
}

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
using init_math::Normal;
using init_math::ScaleUniform;
using init_math::Unit;

template <typename T>
void FillUniformReal(const Region& region, const PhiloxKey& key, double minval, double maxval,
                     T* dst) {
  using C = ComputeType<T>;
  const C lo = static_cast<C>(minval), hi = static_cast<C>(maxval);
  FillRandom(region, dst,
             [&](uint64_t g) { return T(ScaleUniform(lo, hi, Unit<C>(Draw(key, g, 0)))); });
}

template <typename T>
void FillUniformInteger(const Region& region, const PhiloxKey& key, int64_t lo, uint64_t span,
                        T* dst) {
  FillRandom(region, dst, [&](uint64_t g) {
    return static_cast<T>(init_math::UniformInteger(Draw(key, g, 0), lo, span));
  });
}

template <typename T>
void FillNormal(const Region& region, const PhiloxKey& key, double mean, double stddev,
                bool truncated, T* dst) {
  using C = ComputeType<T>;
  const C m = static_cast<C>(mean), s = static_cast<C>(stddev);
  if (!truncated) {
    FillRandom(region, dst, [&](uint64_t g) { return T(m + s * Normal<C>(Draw(key, g, 0))); });
    return;
  }
  FillRandom(region, dst,
             [&](uint64_t g) { return T(init_math::TruncatedNormal<C>(key, g, m, s)); });
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
      PSD_ASSIGN_OR_RETURN(IntegerRange range,
                           IntegerUniformRange("random_uniform", p.minval(), p.maxval(), dtype));
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
        if (plan.kind == Kind::kUniformReal) {
          FillUniformReal(region, key, plan.a, plan.b, dst);
        } else {
          FillNormal(region, key, plan.a, plan.b, plan.kind == Kind::kTruncatedNormal, dst);
        }
      }
      return;
  }
}

}  // namespace

double UnitScalingLimit(double factor, absl::Span<const int64_t> scale_shape) {
  double input_size = 1;
  for (size_t d = 0; d + 1 < scale_shape.size(); ++d)
    input_size *= static_cast<double>(scale_shape[d]);
  if (input_size < 1) input_size = 1;
  return std::sqrt(3.0 / input_size) * factor;
}

absl::Status ValidateInitializer(const InitializerSpec& spec, DataType dtype,
                                 const TensorShape& full_shape, const std::string& variable) {
  const std::string where = absl::StrCat("variable '", variable, "': ", KindName(spec.kind_case()));
  if (DataTypeSize(dtype) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("variable '", variable, "': dtype ",
                                                   DataTypeName(dtype),
                                                   " cannot be initialized on a device"));
  }
  switch (spec.kind_case()) {
    case InitializerSpec::kZeros:
    case InitializerSpec::kOnes:
    case InitializerSpec::kDefaultInitializer:
      return absl::OkStatus();
    case InitializerSpec::kConstant:
      return ValidateConstant(where, spec.constant().value(), dtype, full_shape);
    case InitializerSpec::kRandomUniform: {
      const auto& p = spec.random_uniform();
      if (!IsFloating(dtype) && dtype != DT_INT32 && dtype != DT_INT64) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, " initializer needs a floating dtype, int32 or int64, got ",
                         DataTypeName(dtype)));
      }
      if (!(p.minval() < p.maxval())) {  // also catches NaN
        return absl::InvalidArgumentError(absl::StrCat(where, " needs minval < maxval, got minval ",
                                                       p.minval(), " and maxval ", p.maxval()));
      }
      if (!IsFloating(dtype)) {
        return IntegerUniformRange(where, p.minval(), p.maxval(), dtype).status();
      }
      PSD_RETURN_IF_ERROR(CheckParam(where, "minval", p.minval(), dtype));
      PSD_RETURN_IF_ERROR(CheckParam(where, "maxval", p.maxval(), dtype));
      const double width = dtype == DT_DOUBLE ? p.maxval() - p.minval()
                                              : static_cast<double>(static_cast<float>(p.maxval()) -
                                                                    static_cast<float>(p.minval()));
      if (!std::isfinite(width)) {
        return absl::InvalidArgumentError(absl::StrCat(where, " range [", p.minval(), ", ",
                                                       p.maxval(), ") is too wide for ",
                                                       DataTypeName(dtype)));
      }
      return absl::OkStatus();
    }
    case InitializerSpec::kRandomNormal:
    case InitializerSpec::kTruncatedNormal: {
      const bool truncated = spec.kind_case() == InitializerSpec::kTruncatedNormal;
      const double mean = truncated ? spec.truncated_normal().mean() : spec.random_normal().mean();
      const double stddev =
          truncated ? spec.truncated_normal().stddev() : spec.random_normal().stddev();
      PSD_RETURN_IF_ERROR(NeedFloating(where, dtype));
      PSD_RETURN_IF_ERROR(CheckParam(where, "mean", mean, dtype));
      PSD_RETURN_IF_ERROR(CheckParam(where, "stddev", stddev, dtype));
      if (stddev < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, " stddev must be >= 0, got ", stddev));
      }
      return absl::OkStatus();
    }
    case InitializerSpec::kUniformUnitScaling:
      return ValidateUnitScaling(where, spec.uniform_unit_scaling(), dtype, full_shape);
    case InitializerSpec::kFromVariable:
      // Filled by the shard from the source variable's value (the store's
      // initialization path), never by a device initializer.
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": is initialized from variable '", spec.from_variable().source(),
          "' by its shard, not by a device initializer"));
    case InitializerSpec::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("variable '", variable, "': initializer has no kind set"));
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
