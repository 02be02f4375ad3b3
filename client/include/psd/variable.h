// Variable: a trainer's handle on one coordinator-declared variable, plain
// or partitioned, presented as one tensor. The handle (dtype, full shape,
// and each part's name, range, shard and shard incarnation) comes from the
// coordinator once; data ops go straight to the shards (docs/design.md,
// "Processes": the coordinator is never on the data path).
//
// Partitioned variables (parts `v/part_K`, contiguous ranges of one axis):
//  * Read concatenates the parts along the partition axis; Assign,
//    AssignAdd and AssignSub split the value by part range.
//  * Gather and Scatter* split the indices by part range (TensorFlow's "div"
//    strategy; the variable must be partitioned along axis 0). Every index
//    is checked against the FULL shape before anything is sent, so a bad
//    index fails the whole op with the full variable's numbers ("indices[2]
//    = 6 is not in [0, 6)") and no part is changed. The parts then run in
//    parallel and results are put back in the indices' order. There is no
//    atomicity across parts (TensorFlow has none either): each part's piece
//    is atomic and retried with its own request id.
//
// Stale handles: a shard that restarted answers ABORTED "stale handle". The
// variable then asks the coordinator for a fresh handle once and retries;
// a part the restarted shard no longer holds is `lost` and its ops fail with
// UNAVAILABLE naming the part, until it is restored.
//
// Thread-safety: a Variable is a cheap, copyable reference (copies share
// one handle). Any number of threads may run ops on it concurrently; the
// Session it came from must outlive it.
//
//   PSD_ASSIGN_OR_RETURN(Variable emb, session->GetVariable("emb", {.shape = TensorShape{1000, 64},
//                                                           .partitioner = partitioners::FixedSize(2)}));
//   PSD_ASSIGN_OR_RETURN(Tensor rows, emb.Gather(ids));
//   PSD_RETURN_IF_ERROR(emb.ScatterSub(ids, grads));
#ifndef PSD_CLIENT_VARIABLE_H_
#define PSD_CLIENT_VARIABLE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "psd/client.h"
#include "psd/coordinator.pb.h"
#include "psd/initializers.h"
#include "psd/tensor.h"

namespace psd {
namespace client {

class Session;

namespace internal {
struct VariableState;
}  // namespace internal

// One part as the handle describes it.
struct PartInfo {
  std::string name;  // the name on the shard: "v" or "v/part_K"
  TensorShape shape;
  std::vector<int64_t> offset;  // in the full variable
  int32_t shard_id = 0;
  std::string shard_address;
  uint64_t shard_incarnation = 0;
  bool lost = false;
};

class Variable {
 public:
  Variable() = default;  // invalid until assigned from Session

  bool valid() const { return state_ != nullptr; }
  // The full name without ":0" ("foo/bar/v").
  const std::string& name() const;
  // TensorFlow's tensor name, "foo/bar/v:0".
  std::string tensor_name() const { return name() + ":0"; }
  DataType dtype() const;
  TensorShape shape() const;
  bool partitioned() const;
  int partition_axis() const;
  // One count per dimension (TensorFlow's partitions list); empty when
  // unpartitioned.
  std::vector<int64_t> partitions() const;
  std::vector<PartInfo> parts() const;
  bool trainable() const;
  std::vector<std::string> collections() const;
  // The coordinator's handle as last fetched.
  VariableHandle handle() const;

  // Asks the coordinator for the current handle (done automatically on a
  // stale handle).
  absl::Status Refresh();

  absl::StatusOr<Tensor> Read() const;
  // Read into *out, reusing its buffer when it already has the value's dtype
  // and byte size: an unpartitioned variable's value goes straight from the
  // shard into it, so a trainer reading it every step allocates nothing; a
  // partitioned one's parts are read into temporaries and concatenated into
  // it. On error *out holds a valid tensor with unspecified contents.
  absl::Status ReadInto(Tensor* out) const;
  // Rows along axis 0; int32 or int64 indices of any rank; result shape
  // indices.shape + shape[1:].
  absl::StatusOr<Tensor> Gather(const Tensor& indices) const;

  // The read cache (TensorFlow's caching_device). A variable declared with a
  // caching device (GetVariableOptions / ScopeOptions) serves Read and Gather
  // from a copy of its value kept in this client: fetched on first use, kept
  // until RefreshCache() or a write through this Variable (or a copy of it).
  // Other trainers' writes and optimizer applies show after the next refresh,
  // as TensorFlow's cached copy was refreshed once per step.
  bool cached() const;
  // Drops the cached value and fetches it again. Without a caching device,
  // does nothing.
  absl::Status RefreshCache() const;

  // When `new_value` is not null it receives the value after the update
  // (for a partitioned variable, the parts' values after their updates).
  absl::Status Assign(const Tensor& value, Tensor* new_value = nullptr) const;
  // tf.assign(validate_shape=False) when `options.validate_shape` is false:
  // the value may have another shape and replaces the variable's (an
  // unpartitioned variable only). shape() stays the declared shape, as
  // TensorFlow's static shape did; Read() returns the new one.
  absl::Status Assign(const Tensor& value, const AssignOptions& options,
                      Tensor* new_value = nullptr) const;
  absl::Status AssignAdd(const Tensor& value, Tensor* new_value = nullptr) const;
  absl::Status AssignSub(const Tensor& value, Tensor* new_value = nullptr) const;

  // updates.shape == indices.shape + shape[1:], or a scalar broadcast.
  // Duplicate indices accumulate for add/sub (also across parts); for
  // update the last one wins. Rows of repeated indices are merged before
  // sending (summed for add/sub, the last kept for update), so each row
  // crosses the network once; integer results are those of applying every
  // row in turn, float sums may round differently in the last bits
  // (client/src/sparse_merge.h).
  absl::Status ScatterUpdate(const Tensor& indices, const Tensor& updates) const;
  absl::Status ScatterAdd(const Tensor& indices, const Tensor& updates) const;
  absl::Status ScatterSub(const Tensor& indices, const Tensor& updates) const;

  // Unpartitioned int32/int64 scalars only.
  absl::StatusOr<int64_t> CountUpTo(int64_t limit) const;

  // Runs the stored initializer on every part (TensorFlow's
  // `v.initializer`); an initialized part is left alone unless `force`.
  // A variable initialized from another is initialized through the
  // coordinator, its source first (see Session::InitializeVariables).
  absl::Status Initialize(bool force = false) const;
  // TensorFlow's `v.initialized_value() * scale + offset`, as the
  // initializer of another variable of the same dtype, shape and
  // partitioning (init::FromVariable):
  //   Variable w = *session->GetVariable("w", {.initializer = v.InitializedValue(2.0, 1.0)});
  InitializerSpec InitializedValue(double scale = 1.0, double offset = 0.0) const;
  // True when every part is initialized.
  absl::StatusOr<bool> IsInitialized() const;

 private:
  friend struct internal::VariableState;
  explicit Variable(std::shared_ptr<internal::VariableState> state) : state_(std::move(state)) {}

  std::shared_ptr<internal::VariableState> state_;
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_VARIABLE_H_
