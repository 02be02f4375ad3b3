// Validation of an InitializerSpec against the variable it initializes: the
// one check the shard runs when it creates a variable and the coordinator
// runs before it registers a declaration, so a spec the shard would refuse
// (random_uniform with minval >= maxval, a constant of the wrong shape) is
// refused before anything exists. Depends on nothing but psd_common, so
// the coordinator links it without the devices.
//
// Thread-safety: pure functions of their arguments; thread-safe.
#ifndef PSD_SERVER_DEVICE_INITIALIZER_SPEC_H_
#define PSD_SERVER_DEVICE_INITIALIZER_SPEC_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "psd/seeds.h"
#include "psd/tensor.h"
#include "psd/wire.h"
#include "psd/types.pb.h"

namespace psd {

// INVALID_ARGUMENT unless `spec` can initialize a fixed-size variable of
// `dtype` and `full_shape` (random initializers need a floating dtype, or an
// integer one for random_uniform; a constant's value must be a scalar or
// have full_shape and the variable's dtype; stddev >= 0; minval < maxval).
// `variable` names the variable in messages.
absl::Status ValidateInitializer(const InitializerSpec& spec, DataType dtype,
                                 const TensorShape& full_shape, const std::string& variable);

// A string variable's initializer: zeros, the default, or a string constant
// that is a scalar or has `full_shape`.
absl::Status ValidateStringInitializer(const InitializerSpec& spec, const TensorShape& full_shape,
                                       const std::string& variable);

// A supplied value's description fits the variable: its dtype and shape,
// and a byte size the dtype and shape allow.
absl::Status ValidateSuppliedValue(const InitializerSpec::SuppliedValue& supplied, DataType dtype,
                                   const TensorShape& full_shape, const std::string& variable);

// The check of a new variable's initializer, shard and coordinator alike:
// a FromVariable spec needs its source's name (the coordinator checks the
// source itself, see Registry::CheckFromVariableFits); a SuppliedValue
// ValidateSuppliedValue; a constant at most kMaxInlineConstantBytes; a
// string variable ValidateStringInitializer; every other dtype
// ValidateInitializer.
absl::Status ValidateInitializerForCreate(const InitializerSpec& spec, DataType dtype,
                                          const TensorShape& full_shape,
                                          const std::string& variable);

// DrawsRandomValues, the initializers keyed by a seed, is in psd/seeds.h.

// True when a shard can run `spec` by itself (InitializeVariables, or at
// creation): not for FromVariable (it needs its source's value, ordered by
// the coordinator) nor SuppliedValue (its client writes it).
inline bool ShardRunsInitializer(const InitializerSpec& spec) {
  return !spec.has_from_variable() && !spec.has_supplied_value();
}

// The bound of uniform_unit_scaling, TensorFlow's rule:
// sqrt(3 / input_size) * factor, where input_size is the product of all but
// the last dimension of `scale_shape` (at least 1).
double UnitScalingLimit(double factor, absl::Span<const int64_t> scale_shape);

namespace internal {
// Bounds of an integer random_uniform, as the first value and the count of
// values (0 standing for 2^64).
struct IntegerRange {
  int64_t lo;
  uint64_t span;
};
// minval/maxval must be integral and inside `dtype` (int32 or int64), with
// minval < maxval; maxval is exclusive, so it may be one past the largest
// value. `where` starts the messages.
absl::StatusOr<IntegerRange> IntegerUniformRange(const std::string& where, double minval,
                                                 double maxval, DataType dtype);
}  // namespace internal

}  // namespace psd

#endif  // PSD_SERVER_DEVICE_INITIALIZER_SPEC_H_
