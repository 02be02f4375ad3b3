// Helpers of the unit tests that drive a VariableStore directly: tensors as
// protos, and the create and assign requests most tests make.
#ifndef PSD_TESTS_UNIT_STORE_TEST_UTIL_H_
#define PSD_TESTS_UNIT_STORE_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "psd/tensor.h"
#include "psd/wire.h"
#include "shard/variable_store.h"

namespace psd {
namespace store_test {

// A tensor of `dims` holding `values`, as the wire carries it.
template <typename T>
TensorProto Vec(std::vector<int64_t> dims, const std::vector<T>& values) {
  TensorProto p;
  TensorToProto(*Tensor::FromVector<T>(TensorShape(std::move(dims)), values), &p);
  return p;
}

// Creates `name` with `value` as its initial value (dtype and shape from it).
inline absl::Status CreateWithValue(VariableStore* store, const std::string& name,
                                    const TensorProto& value, bool initialize = true) {
  CreateVariableRequest req;
  req.set_name(name);
  req.set_dtype(value.dtype());
  *req.mutable_shape() = value.shape();
  *req.mutable_initial_value() = value;
  req.set_initialize(initialize);
  VariableInfo info;
  return store->Create(req, &info);
}

// assign / assign_add / assign_sub of `value` to `name`.
inline absl::Status AssignValue(VariableStore* store, const std::string& name, UpdateOp op,
                                const TensorProto& value, bool validate_shape = true) {
  AssignRequest req;
  req.set_name(name);
  req.set_op(op);
  *req.mutable_value() = value;
  req.set_validate_shape(validate_shape);
  AssignResponse resp;
  return store->Assign(req, &resp);
}

}  // namespace store_test
}  // namespace psd

#endif  // PSD_TESTS_UNIT_STORE_TEST_UTIL_H_
