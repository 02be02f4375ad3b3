#include "psd/initializers.h"

#include "psd/wire.h"

namespace psd {
namespace client {
namespace init {

InitializerSpec Zeros() {
  InitializerSpec spec;
  spec.mutable_zeros();
  return spec;
}

InitializerSpec Ones() {
  InitializerSpec spec;
  spec.mutable_ones();
  return spec;
}

InitializerSpec Constant(const Tensor& value) {
  InitializerSpec spec;
  TensorToProto(value, spec.mutable_constant()->mutable_value());
  return spec;
}

InitializerSpec RandomUniform(double minval, double maxval, int64_t seed) {
  InitializerSpec spec;
  spec.mutable_random_uniform()->set_minval(minval);
  spec.mutable_random_uniform()->set_maxval(maxval);
  spec.set_seed(seed);
  return spec;
}

InitializerSpec RandomNormal(double mean, double stddev, int64_t seed) {
  InitializerSpec spec;
  spec.mutable_random_normal()->set_mean(mean);
  spec.mutable_random_normal()->set_stddev(stddev);
  spec.set_seed(seed);
  return spec;
}

InitializerSpec TruncatedNormal(double mean, double stddev, int64_t seed) {
  InitializerSpec spec;
  spec.mutable_truncated_normal()->set_mean(mean);
  spec.mutable_truncated_normal()->set_stddev(stddev);
  spec.set_seed(seed);
  return spec;
}

InitializerSpec UniformUnitScaling(double factor, int64_t seed,
                                   const std::vector<int64_t>& full_shape) {
  InitializerSpec spec;
  auto* u = spec.mutable_uniform_unit_scaling();
  u->set_factor(factor);
  u->mutable_full_shape()->Assign(full_shape.begin(), full_shape.end());
  spec.set_seed(seed);
  return spec;
}

InitializerSpec Default(int64_t seed) {
  InitializerSpec spec;
  spec.mutable_default_initializer();
  spec.set_seed(seed);
  return spec;
}

InitializerSpec FromVariable(const std::string& source, double scale, double offset) {
  InitializerSpec spec;
  auto* from = spec.mutable_from_variable();
  from->set_source(source);
  // Unset means 1: say nothing for the common case.
  if (scale != 1.0) from->set_scale(scale);
  from->set_offset(offset);
  return spec;
}

}  // namespace init
}  // namespace client
}  // namespace psd
