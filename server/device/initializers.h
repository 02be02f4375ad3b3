// The initializers' fill logic behind Device::Initialize: from an
// InitializerSpec, the values of one slice of a (possibly partitioned)
// variable. ValidateInitializer, the check of a spec, is declared in
// initializer_spec.h (shared with the coordinator).
//
// Random initializers give the element with global (full-variable,
// row-major) index g a value computed from
//   Philox4x32({g lo32, g hi32, attempt, 0}, {seed lo32, seed hi32})
// alone, so a slice holds exactly the same slice of the whole variable,
// whatever the partitioning, and a GPU implementation can reproduce the
// values. attempt is 0 except for truncated_normal's redraws. From the four
// output words r[0..3]:
//   uniform float (float32, float16, bfloat16): UniformFloat(r[0]);
//   uniform float64:                           UniformDouble(r[0], r[1]);
//   normal: Box-Muller, sqrt(-2 ln(1 - u1)) * cos(2 pi u2), with u1, u2 the
//     uniforms from r[0], r[1] (float) or r[0..1], r[2..3] (float64);
//   integer uniform in [lo, hi): lo + (r[0]:r[1] as 64 bits) mod (hi - lo).
// float16 and bfloat16 compute in float and round to nearest even.
//
// Thread-safety: pure functions of their arguments; thread-safe.
#ifndef PSD_SERVER_DEVICE_INITIALIZERS_H_
#define PSD_SERVER_DEVICE_INITIALIZERS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "device/initializer_spec.h"
#include "psd/tensor.h"
#include "psd/types.pb.h"

namespace psd {

// How to fill a slice, decided once from a validated spec so the CPU fill and
// a GPU kernel fill the same values.
struct InitializerPlan {
  enum class Kind {
    kPattern,          // every element is the `pattern` bytes (zeros, ones, scalar constant)
    kConstantTensor,   // copied from the spec's constant tensor
    kUniformReal,      // uniform in [a, b), computed in float (double for float64)
    kUniformInt,       // init_math::UniformInteger(int_lo, int_span)
    kNormal,           // mean a, stddev b
    kTruncatedNormal,  // mean a, stddev b, within two stddevs
  };
  Kind kind = Kind::kPattern;
  uint64_t pattern = 0;  // one element's bytes, zero-extended
  uint64_t seed = 0;
  double a = 0, b = 0;
  int64_t int_lo = 0;
  uint64_t int_span = 0;  // 0 stands for 2^64
};

// Validates like FillInitializer and returns the plan for the slice.
absl::StatusOr<InitializerPlan> PlanInitializer(const InitializerSpec& spec, DataType dtype,
                                                const TensorShape& full_shape,
                                                const TensorShape& slice_shape,
                                                absl::Span<const int64_t> slice_offset,
                                                size_t dst_bytes);

// Writes the values of the `slice_shape` slice at `slice_offset` of a
// `full_shape` variable of `dtype` into `dst`: host memory of `dst_bytes`
// bytes (at least slice elements x element size), aligned for `dtype`.
// Validates the spec (ValidateInitializer) and the slice geometry first, so
// bad arguments give INVALID_ARGUMENT, never undefined behaviour.
absl::Status FillInitializer(const InitializerSpec& spec, DataType dtype,
                             const TensorShape& full_shape, const TensorShape& slice_shape,
                             absl::Span<const int64_t> slice_offset, void* dst, size_t dst_bytes);

// An embedding table's rows (EmbeddingSpec): the plan of a per-key
// initializer for rows of `dim` elements of floating `dtype`; only zeros,
// ones, a scalar constant, random_uniform, random_normal and
// truncated_normal (INVALID_ARGUMENT naming `table` otherwise).
absl::StatusOr<InitializerPlan> PlanKeyedInitializer(const InitializerSpec& spec, DataType dtype,
                                                     int64_t dim, const std::string& table);

// Writes the initial row of `key` (`dim` elements of `dtype`, aligned) with a
// plan from PlanKeyedInitializer: element i is the dense initializer's
// sample for counter (key lo, key hi, attempt, i + 1) under the seed
// (truncated_normal redraws bump attempt), computed in float (double for
// float64) and rounded to the dtype as the dense fill does.
void FillKeyedRow(const InitializerPlan& plan, DataType dtype, int64_t key, int64_t dim, void* dst);

}  // namespace psd

#endif  // PSD_SERVER_DEVICE_INITIALIZERS_H_
