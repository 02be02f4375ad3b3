// Server-side optimizers from the C++ client: TensorFlow's optimizers
// (tf.compat.v1.train.*Optimizer) with their hyper-parameters, the slot
// variables each needs under TensorFlow's names, and ShardApplier, which
// sends gradients to one shard where the shard applies them (the ApplyDense
// and ApplySparse RPCs, or many of them in one Batch message).
//
// Slots are plain variables on the variable's shard. This header names them
// (`v/Adam`, `v/Adam_1`, ...) and gives their initial values; creating them
// is the caller's (later: the coordinator's) job, e.g. with
// ShardClient::Create(slot.name, dtype, shape, init::Constant(scalar)) where
// `scalar` holds slot.initial_value in the variable's dtype.
//
// An applier sends through a ShardClient (client.h): its channel, its
// request ids (the process's, so any number of appliers take one of the
// shard's exactly-once client slots), its retry policy. Every apply carries
// a request id and is retried with the same id on UNAVAILABLE or
// DEADLINE_EXCEEDED, so it is applied at most once; a shard that restarted
// answers ABORTED "stale handle". A dense gradient bigger than
// ClientOptions::stream_threshold_bytes travels as a stream of chunk_bytes
// chunks (the shard stages it, then applies it like a unary ApplyDense), so
// only sparse gradients and smaller dense ones are limited to
// ClientOptions::max_message_bytes.
//
// Thread-safety: a ShardApplier is thread-safe; concurrent applies to one
// variable are each atomic on the shard.
//
//   PSD_ASSIGN_OR_RETURN(auto shard, psd::client::ShardApplier::Connect("127.0.0.1:7000"));
//   psd::client::opt::Adam adam;  // learning_rate 0.001, beta powers "beta1_power"/"beta2_power"
//   PSD_RETURN_IF_ERROR(shard->ApplyDense("w", adam, grad_w).status());
//   PSD_RETURN_IF_ERROR(shard->ApplyGradients(adam, {{"w", grad_w}, {"emb", emb_grad}}));
#ifndef PSD_CLIENT_OPTIMIZER_OPS_H_
#define PSD_CLIENT_OPTIMIZER_OPS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "psd/client.h"
#include "psd/tensor.h"

namespace psd {
namespace client {
namespace opt {

// Defaults are tf.compat.v1.train's (learning rates, which TensorFlow
// requires, default to common values).
struct GradientDescent {
  double learning_rate = 0.01;
};
struct Momentum {
  double learning_rate = 0.01;
  double momentum = 0.9;
  bool use_nesterov = false;
};
struct Adagrad {
  double learning_rate = 0.01;
  double initial_accumulator_value = 0.1;  // the slot's initial value
};
// beta1^t and beta2^t come from scalar variables on the variable's shard
// (TensorFlow's `beta1_power` / `beta2_power`; the trainer advances them once
// per step) unless given as values.
struct Adam {
  double learning_rate = 0.001;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  std::string beta1_power_variable = "beta1_power";
  std::string beta2_power_variable = "beta2_power";
  std::optional<double> beta1_power;  // overrides the variable when set
  std::optional<double> beta2_power;
};
struct RMSProp {
  double learning_rate = 0.001;
  double decay = 0.9;
  double momentum = 0.0;
  double epsilon = 1e-10;
  bool centered = false;
};
struct Ftrl {
  double learning_rate = 0.001;
  double learning_rate_power = -0.5;
  double initial_accumulator_value = 0.1;
  double l1_regularization_strength = 0.0;
  double l2_regularization_strength = 0.0;
  double l2_shrinkage_regularization_strength = 0.0;
};

}  // namespace opt

using OptimizerConfig =
    std::variant<opt::GradientDescent, opt::Momentum, opt::Adagrad, opt::Adam, opt::RMSProp,
                 opt::Ftrl>;

// One slot variable of `var`: its name as TensorFlow makes it and the value
// TensorFlow initializes it to.
struct SlotVariable {
  std::string name;
  double initial_value = 0;
};

// The slot variables `optimizer` keeps for `var`, in the order the apply
// ops take them: Momentum [v/Momentum]; Adagrad [v/Adagrad]; Adam [v/Adam,
// v/Adam_1]; RMSProp [v/RMSProp (ones), v/RMSProp_1], centered [v/RMSProp_1
// (mg), v/RMSProp (ones), v/RMSProp_2]; Ftrl [v/Ftrl, v/Ftrl_1].
std::vector<SlotVariable> OptimizerSlots(const OptimizerConfig& optimizer, const std::string& var);

// A sparse gradient (TensorFlow's IndexedSlices without dense_shape):
// `indices` int32 or int64 of shape [N], `values` of shape [N] + var.shape[1:].
// ShardApplier sends the rows of repeated indices summed, each index once,
// as the shard would sum them: the same step for float32/float64; float16
// and bfloat16 sums are rounded to their type once (client/src/sparse_merge.h).
// A gradient the shard refuses is refused with the error of the gradient as
// given.
struct SparseGradient {
  Tensor indices;
  Tensor values;
};

// One variable's gradient for ApplyGradients: dense or sparse.
struct GradientAndVariable {
  GradientAndVariable(std::string variable, Tensor dense)
      : variable(std::move(variable)), gradient(std::move(dense)) {}
  GradientAndVariable(std::string variable, SparseGradient sparse)
      : variable(std::move(variable)), gradient(std::move(sparse)) {}
  std::string variable;
  std::variant<Tensor, SparseGradient> gradient;
  // Slot names; empty means TensorFlow's (OptimizerSlots).
  std::vector<std::string> slots;
};

class ShardApplier {
 public:
  // Connects a ShardClient of its own (ShardClient::Connect: protocol
  // check, incarnation).
  static absl::StatusOr<std::unique_ptr<ShardApplier>> Connect(const std::string& address,
                                                               const ClientOptions& options = {});
  // Applies through `shard` (sharing its channel; its incarnation is the
  // applier's). Cheap: nothing is sent.
  explicit ShardApplier(std::shared_ptr<ShardClient> shard);
  ShardApplier(const ShardApplier&) = delete;
  ShardApplier& operator=(const ShardApplier&) = delete;
  ~ShardApplier();

  const std::string& address() const;
  uint64_t incarnation() const;

  // One optimizer step on `var` and its slots (`slots` empty: TensorFlow's
  // names). Returns the variable's version after the update.
  absl::StatusOr<uint64_t> ApplyDense(const std::string& var, const OptimizerConfig& optimizer,
                                      const Tensor& gradient,
                                      const std::vector<std::string>& slots = {});
  absl::StatusOr<uint64_t> ApplySparse(const std::string& var, const OptimizerConfig& optimizer,
                                       const SparseGradient& gradient,
                                       const std::vector<std::string>& slots = {});

  // TensorFlow's apply_gradients for the variables of one shard: every
  // gradient in one Batch message (dense ones past stream_threshold_bytes
  // streamed on their own between batches), applied in order, each
  // atomically. Each
  // op's status goes to `statuses` (when not null); returns the first error,
  // naming its variable, or OK.
  //
  // `request_ids` (optional, one per op): an op whose id is set is sent
  // with it (a retry of an op sent before, e.g. on the shard that took its
  // part over after a failover, where the replicated request window
  // answers it if it was applied); the ids of the others are drawn and
  // written back, so the caller can send them again.
  absl::Status ApplyGradients(const OptimizerConfig& optimizer,
                              const std::vector<GradientAndVariable>& grads_and_vars,
                              std::vector<absl::Status>* statuses = nullptr,
                              std::vector<RequestId>* request_ids = nullptr);

 private:
  class Impl;
  explicit ShardApplier(std::unique_ptr<Impl> impl);
  const std::unique_ptr<Impl> impl_;
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_OPTIMIZER_OPS_H_
