#include "device/initializer_spec.h"

#include <cfloat>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "psd/dtype.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {
namespace internal {

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

}  // namespace internal

namespace {

using internal::IntegerRange;
using internal::IntegerUniformRange;

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
    case InitializerSpec::kSuppliedValue:
      return "supplied_value";
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
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": is initialized from variable '", spec.from_variable().source(),
                       "' by its shard, not by a device initializer"));
    case InitializerSpec::kSuppliedValue:
      // Written by the client that holds the value, never by a device.
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": is written by the client that supplies the value, not by a "
                              "device initializer"));
    case InitializerSpec::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("variable '", variable, "': initializer has no kind set"));
}

absl::Status ValidateStringInitializer(const InitializerSpec& spec, const TensorShape& full_shape,
                                       const std::string& variable) {
  const std::string quoted = absl::StrCat("variable '", variable, "'");
  if (spec.has_zeros() || spec.has_default_initializer()) return absl::OkStatus();
  if (spec.has_constant()) {
    const std::string what = absl::StrCat("constant initializer of ", quoted);
    if (spec.constant().value().dtype() != DT_STRING) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": value is ",
                                                     DataTypeName(spec.constant().value().dtype()),
                                                     ", variable is string"));
    }
    PSD_ASSIGN_OR_RETURN(TensorShape shape, ValidateTensorProto(spec.constant().value(), what));
    if (shape.num_elements() != 1 && shape != full_shape) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": value shape ", shape.ToString(),
                                                     " is neither a scalar nor the variable's ",
                                                     full_shape.ToString()));
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(quoted,
                   ": string variables take only zeros, constant or the default "
                   "initializer"));
}

absl::Status ValidateSuppliedValue(const InitializerSpec::SuppliedValue& supplied, DataType dtype,
                                   const TensorShape& full_shape, const std::string& variable) {
  const std::string what = absl::StrCat("variable '", variable, "': supplied value");
  if (supplied.dtype() != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", DataTypeName(supplied.dtype()),
                                                   ", variable is ", DataTypeName(dtype)));
  }
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromProto(supplied.shape(), what + " shape"));
  if (shape != full_shape) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has shape ", shape.ToString(),
                                                   ", variable has shape ",
                                                   full_shape.ToString()));
  }
  const int64_t n = shape.num_elements();
  if (dtype == DT_STRING) {
    // A varint length (at least one byte) per string, and the bytes.
    if (supplied.byte_size() < n) {
      return absl::InvalidArgumentError(absl::StrCat(what, " of ", supplied.byte_size(),
                                                     " bytes cannot encode ", n, " strings"));
    }
    return absl::OkStatus();
  }
  if (DataTypeSize(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": dtype ", DataTypeName(dtype), " cannot hold a value"));
  }
  const int64_t element = static_cast<int64_t>(DataTypeSize(dtype));
  if (n > std::numeric_limits<int64_t>::max() / element) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", DataTypeName(dtype),
                                                   shape.ToString(), " is too large"));
  }
  const int64_t bytes = n * element;
  if (supplied.byte_size() != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", supplied.byte_size(),
                                                   " bytes, but ", DataTypeName(dtype),
                                                   shape.ToString(), " takes ", bytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateInitializerForCreate(const InitializerSpec& spec, DataType dtype,
                                          const TensorShape& full_shape,
                                          const std::string& variable) {
  if (spec.has_supplied_value()) {
    return ValidateSuppliedValue(spec.supplied_value(), dtype, full_shape, variable);
  }
  if (spec.has_constant() &&
      static_cast<int64_t>(spec.constant().value().content().size()) > kMaxInlineConstantBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "variable '", variable, "': constant initializer value of ",
        spec.constant().value().content().size(), " bytes is over the ",
        kMaxInlineConstantBytes,
        " bytes a declaration carries (every part and handle would hold it); supply it as "
        "the initial value, which the client writes straight to the shards"));
  }
  if (spec.has_from_variable()) {
    if (spec.from_variable().source().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("variable '", variable,
                       "': a variable initialized from another needs the source's "
                       "name"));
    }
    return absl::OkStatus();
  }
  if (dtype == DT_STRING) return ValidateStringInitializer(spec, full_shape, variable);
  return ValidateInitializer(spec, dtype, full_shape, variable);
}

}  // namespace psd
