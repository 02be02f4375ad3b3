// Builders of InitializerSpec, the wire message that tells a shard how to
// compute a variable's initial value (ShardClient::Create). They mirror
// TensorFlow's initializers; the shard validates the spec against the
// variable's dtype and shape (INVALID_ARGUMENT naming the variable).
//
// Random initializers draw from Philox4x32-10 keyed by (seed, global element
// index): two variables with the same seed and shape get the same values, and
// a part of a partitioned variable gets exactly its slice of them.
//
//   shard->Create("w", DT_FLOAT, TensorShape{256, 64}, init::RandomNormal(0, 0.05, /*seed=*/7));
//
// Thread-safety: pure functions.
#ifndef PSD_CLIENT_INITIALIZERS_H_
#define PSD_CLIENT_INITIALIZERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "psd/tensor.h"
#include "psd/types.pb.h"

namespace psd {
namespace client {
namespace init {

InitializerSpec Zeros();
InitializerSpec Ones();
// A scalar (broadcast to every element) or a tensor of the variable's full
// shape, of the variable's dtype.
InitializerSpec Constant(const Tensor& value);
// Uniform in [minval, maxval); floating or integer variables.
InitializerSpec RandomUniform(double minval = 0.0, double maxval = 1.0, int64_t seed = 0);
InitializerSpec RandomNormal(double mean = 0.0, double stddev = 1.0, int64_t seed = 0);
// Normal values more than two standard deviations from the mean are redrawn.
InitializerSpec TruncatedNormal(double mean = 0.0, double stddev = 1.0, int64_t seed = 0);
// Uniform in +-sqrt(3 / input_size) * factor, input_size being the product of
// all but the last dimension of `full_shape` (the variable's shape when
// empty).
InitializerSpec UniformUnitScaling(double factor = 1.0, int64_t seed = 0,
                                   const std::vector<int64_t>& full_shape = {});
// tf.get_variable's default: UniformUnitScaling(1.0) for floating dtypes,
// zeros for integers and bool, "" for strings.
InitializerSpec Default(int64_t seed = 0);
// TensorFlow's `source.initialized_value() * scale + offset`, `source` being
// a declared variable's full name with the same dtype, shape and
// partitioning (checked when the variable is declared). Initialization
// initializes the source first if it is not initialized yet; an
// initialized source gives its current value. The value moves from the
// source's shard to the target's, never through the client. Integer
// variables need a whole scale and offset; bool and string ones copy only.
// Variable::InitializedValue builds it from a Variable.
InitializerSpec FromVariable(const std::string& source, double scale = 1.0, double offset = 0.0);

}  // namespace init
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_INITIALIZERS_H_
