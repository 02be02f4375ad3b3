// Optimizer: TensorFlow's tf.compat.v1.train optimizers for a trainer,
// applied on the shards. ApplyGradients takes (gradient, variable) pairs for
// one step, creates the optimizer's slot variables on first use, and sends
// every update of the step to the shards holding the variables: one Batch
// message per shard (ShardApplier::ApplyGradients), all shards in parallel.
// There is no autodiff: gradients come from the trainer.
//
// Slot variables (slot_creator.py's rules, placed by the coordinator):
//  * named `v/Momentum`, `v/Adagrad`, `v/Adam` + `v/Adam_1`, `v/RMSProp` +
//    `v/RMSProp_1` (+ `v/RMSProp_2` centered), `v/Ftrl` + `v/Ftrl_1`
//    (OptimizerSlots in optimizer_ops.h), with the variable's dtype, shape
//    and partitioning; a partitioned `v` gets `v/Adam/part_K` on the shard of
//    `v/part_K` (the declaration's colocate_with);
//  * in the global collection ("variables") only: not trainable;
//  * initialized as TensorFlow does: zeros, Adagrad's accumulator and Ftrl's
//    `accum` with initial_accumulator_value, RMSProp's `rms` with ones;
//  * Adam's `beta1_power` / `beta2_power`: scalar variables of the first
//    variable's dtype initialized to beta1 / beta2, named by opt::Adam's
//    beta*_power_variable ("beta1_power": TensorFlow creates them under
//    init_scope, so at the root of the name hierarchy), on the shard of the
//    first variable by name (TensorFlow's min(var_list, key=name)).
// Slots are declared with AUTO_REUSE, so a second trainer (session) or a
// second Optimizer attaches to the existing slots instead of creating new
// ones (TensorFlow would name a second optimizer's slots `v/Adam_2`; here
// they are shared, as the variables are).
//
// Gradients of partitioned variables are split by part: a dense gradient
// is sliced along the partition axis; an IndexedSlices gradient has its
// indices checked against the full shape first (TensorFlow's wording:
// "Index 7 at offset 2 in indices is out of range"), then split by part
// range and re-based. Duplicate indices are summed (in the shard's order,
// so float32/float64 steps are those of the unmerged gradient) before the
// gradient is sent; see ShardApplier.
//
// Errors: each variable's update stands alone. A variable whose gradient is
// bad (dtype, shape, index) or whose shard refuses it fails with a status
// naming the variable; the other variables of the step still apply
// (TensorFlow would fail the whole step, but it has no cross-shard
// atomicity either). ApplyGradients returns the first failure in list
// order; `statuses` gets one status per pair. Parts of one partitioned
// variable are independent, as for scatter ops: one part may apply and
// another fail (the error names the part).
//
// Adam's step count: after the step's applies the optimizer advances
// beta1_power and beta2_power (TensorFlow's _finish) by reading each and
// assigning value * beta. Every apply of the step uses the values read at
// the start of the step (the same t for all parts and shards). The advance
// is a read followed by an assign, like TensorFlow's `beta1_power *
// beta1` followed by assign: two trainers finishing a step at the same
// moment may advance the powers once instead of twice. That only shifts
// Adam's bias correction slightly; variables and slots lose no update. The
// powers are advanced when at least one variable of the step applied.
//
// Thread-safety: thread-safe; concurrent ApplyGradients calls are allowed
// (each update is atomic on its shard). The Session must outlive the
// Optimizer.
//
//   Optimizer adam(*session, opt::Adam{.learning_rate = 0.01});
//   PSD_RETURN_IF_ERROR(adam.ApplyGradients({{grad_w, w},
//                                            {IndexedSlices{rows, ids}, emb}}));
#ifndef PSD_CLIENT_OPTIMIZER_H_
#define PSD_CLIENT_OPTIMIZER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "psd/optimizer_ops.h"
#include "psd/session.h"
#include "psd/tensor.h"
#include "psd/variable.h"

namespace psd {
namespace client {

// TensorFlow's IndexedSlices: rows `values` ([N] + dense_shape[1:]) at
// `indices` (int32 or int64, [N]) of a tensor of shape `dense_shape`
// (optional, as in TensorFlow; checked against the variable when set).
struct IndexedSlices {
  Tensor values;
  Tensor indices;
  std::optional<TensorShape> dense_shape;
};

// tf.sparse_mask(a, mask_indices): the slices of `a` whose index is not in
// `mask_indices` (int32 or int64, rank 1), in a's order.
absl::StatusOr<IndexedSlices> SparseMask(const IndexedSlices& a, const Tensor& mask_indices);

// A gradient: dense (the variable's full shape) or IndexedSlices.
using Gradient = std::variant<Tensor, IndexedSlices>;

// tf.compat.v1.train.Optimizer.get_slot_names() for `config`, in the order
// of OptimizerSlots: Momentum ["momentum"], Adagrad ["accumulator"], Adam
// ["m", "v"], RMSProp ["rms", "momentum"] (centered ["mg", "rms",
// "momentum"]), Ftrl ["accum", "linear"].
std::vector<std::string> SlotNames(const OptimizerConfig& config);

class Optimizer {
 public:
  Optimizer(Session& session, OptimizerConfig config);
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  ~Optimizer();

  const OptimizerConfig& config() const { return config_; }

  // apply_gradients: one optimizer step for each (gradient, variable). See
  // the file comment for slots, splitting, errors and Adam's powers.
  // `statuses`, when not null, receives one status per pair.
  absl::Status ApplyGradients(const std::vector<std::pair<Gradient, Variable>>& grads_and_vars,
                              std::vector<absl::Status>* statuses = nullptr);
  // The same with the step's options. An embedding table
  // (EmbeddingVariable::variable()) takes an IndexedSlices gradient whose
  // indices are keys; its slots are slot tables named as above, whose rows
  // are made beside the table's on first apply.
  struct ApplyOptions {
    // Recorded as the version of the table rows this step updates
    // (steps_to_live eviction); 0: not given.
    int64_t global_step = 0;
  };
  absl::Status ApplyGradients(const std::vector<std::pair<Gradient, Variable>>& grads_and_vars,
                              std::vector<absl::Status>* statuses, const ApplyOptions& options);

  // Creates (or attaches to) the slots of `variables` now, in one
  // coordinator call; ApplyGradients does it on first use.
  absl::Status CreateSlots(const std::vector<Variable>& variables);

  // get_slot(var, name) with SlotNames' names; NOT_FOUND before the slots
  // of `var` exist in this optimizer.
  absl::StatusOr<Variable> GetSlot(const Variable& var, const std::string& name) const;
  std::vector<std::string> GetSlotNames() const { return SlotNames(config_); }
  // Adam's beta1_power and beta2_power (empty for other optimizers, or
  // before the first step).
  std::vector<Variable> NonSlotVariables() const;

 private:
  struct Step;

  // Slots of `variables` that this optimizer has not resolved yet are
  // declared (colocated) and cached.
  absl::Status EnsureSlots(const std::vector<Variable>& variables);
  // Adam: the beta powers to use in this step (read from their variables
  // unless the config gives values).
  absl::StatusOr<OptimizerConfig> StepConfig();
  absl::Status FinishAdam();

  Session& session_;
  const OptimizerConfig config_;
  mutable absl::Mutex mu_;
  // Variable name -> its slots in OptimizerSlots order.
  std::map<std::string, std::vector<Variable>> slots_ ABSL_GUARDED_BY(mu_);
  std::vector<Variable> beta_powers_ ABSL_GUARDED_BY(mu_);  // Adam: {beta1, beta2}
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_OPTIMIZER_H_
