#include "psd/optimizer_ops.h"

#include <optional>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "psd/shard.pb.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "data_stream.h"
#include "overloaded.h"
#include "sparse_merge.h"

namespace psd {
namespace client {

namespace {

using internal::Overloaded;

OptimizerSpec ToSpec(const OptimizerConfig& config) {
  OptimizerSpec spec;
  std::visit(Overloaded{
                 [&](const opt::GradientDescent& o) {
                   spec.mutable_gradient_descent()->set_learning_rate(o.learning_rate);
                 },
                 [&](const opt::Momentum& o) {
                   auto* m = spec.mutable_momentum();
                   m->set_learning_rate(o.learning_rate);
                   m->set_momentum(o.momentum);
                   m->set_use_nesterov(o.use_nesterov);
                 },
                 [&](const opt::Adagrad& o) {
                   spec.mutable_adagrad()->set_learning_rate(o.learning_rate);
                 },
                 [&](const opt::Adam& o) {
                   auto* a = spec.mutable_adam();
                   a->set_learning_rate(o.learning_rate);
                   a->set_beta1(o.beta1);
                   a->set_beta2(o.beta2);
                   a->set_epsilon(o.epsilon);
                   if (o.beta1_power.has_value()) {
                     a->set_beta1_power_value(*o.beta1_power);
                   } else {
                     a->set_beta1_power_variable(o.beta1_power_variable);
                   }
                   if (o.beta2_power.has_value()) {
                     a->set_beta2_power_value(*o.beta2_power);
                   } else {
                     a->set_beta2_power_variable(o.beta2_power_variable);
                   }
                 },
                 [&](const opt::RMSProp& o) {
                   auto* r = spec.mutable_rmsprop();
                   r->set_learning_rate(o.learning_rate);
                   r->set_decay(o.decay);
                   r->set_momentum(o.momentum);
                   r->set_epsilon(o.epsilon);
                   r->set_centered(o.centered);
                 },
                 [&](const opt::Ftrl& o) {
                   auto* f = spec.mutable_ftrl();
                   f->set_learning_rate(o.learning_rate);
                   f->set_learning_rate_power(o.learning_rate_power);
                   f->set_l1(o.l1_regularization_strength);
                   f->set_l2(o.l2_regularization_strength);
                   f->set_l2_shrinkage(o.l2_shrinkage_regularization_strength);
                 },
             },
             config);
  return spec;
}

}  // namespace

namespace internal {
OptimizerSpec OptimizerSpecOf(const OptimizerConfig& config) { return ToSpec(config); }
}  // namespace internal

std::vector<SlotVariable> OptimizerSlots(const OptimizerConfig& optimizer,
                                         const std::string& var) {
  return std::visit(
      Overloaded{
          [&](const opt::GradientDescent&) { return std::vector<SlotVariable>{}; },
          [&](const opt::Momentum&) {
            return std::vector<SlotVariable>{{var + "/Momentum", 0.0}};
          },
          [&](const opt::Adagrad& o) {
            return std::vector<SlotVariable>{{var + "/Adagrad", o.initial_accumulator_value}};
          },
          [&](const opt::Adam&) {
            return std::vector<SlotVariable>{{var + "/Adam", 0.0}, {var + "/Adam_1", 0.0}};
          },
          [&](const opt::RMSProp& o) {
            // TensorFlow creates rms ("RMSProp"), then mg when centered, then
            // momentum, numbering names in creation order; the ops take
            // (mg,) ms, mom.
            if (o.centered) {
              return std::vector<SlotVariable>{
                  {var + "/RMSProp_1", 0.0}, {var + "/RMSProp", 1.0}, {var + "/RMSProp_2", 0.0}};
            }
            return std::vector<SlotVariable>{{var + "/RMSProp", 1.0}, {var + "/RMSProp_1", 0.0}};
          },
          [&](const opt::Ftrl& o) {
            return std::vector<SlotVariable>{{var + "/Ftrl", o.initial_accumulator_value},
                                             {var + "/Ftrl_1", 0.0}};
          },
      },
      optimizer);
}

// The applier's requests, built here and sent through its ShardClient
// (which gives them request ids, the incarnation and retries).
class ShardApplier::Impl {
 public:
  explicit Impl(std::shared_ptr<ShardClient> shard) : shard_(std::move(shard)) {}

  void FillDense(const std::string& var, const OptimizerSpec& spec, const OptimizerConfig& config,
                 const Tensor& gradient, const std::vector<std::string>& slots,
                 ApplyDenseRequest* req) {
    req->set_name(var);
    FillSlots(var, config, slots, req->mutable_slots());
    *req->mutable_optimizer() = spec;
    TensorToProto(gradient, req->mutable_gradient());
  }

  void FillSparse(const std::string& var, const OptimizerSpec& spec,
                  const OptimizerConfig& config, const Tensor& indices, const Tensor& values,
                  const std::vector<std::string>& slots, ApplySparseRequest* req) {
    req->set_name(var);
    FillSlots(var, config, slots, req->mutable_slots());
    *req->mutable_optimizer() = spec;
    TensorToProto(indices, req->mutable_indices());
    TensorToProto(values, req->mutable_values());
  }
  // The same for a merged gradient, which the request takes over: its rows
  // move into the request instead of being copied (a sparse apply of 4096
  // rows of 64 floats saves a 1 MiB copy per call).
  void FillSparse(const std::string& var, const OptimizerSpec& spec,
                  const OptimizerConfig& config, internal::MergedRows&& merged,
                  const std::vector<std::string>& slots, ApplySparseRequest* req) {
    req->set_name(var);
    FillSlots(var, config, slots, req->mutable_slots());
    *req->mutable_optimizer() = spec;
    TensorToProto(std::move(merged.indices), req->mutable_indices());
    TensorToProto(std::move(merged.rows), req->mutable_values());
  }

  // The gradient with the rows of repeated indices summed, as the shard
  // sums them before a sparse apply (sparse_merge.h); nullopt when no index
  // repeats or the gradient is not one the merge takes. Indices other than
  // a vector are left to the shard, which refuses them.
  static std::optional<internal::MergedRows> Merge(const SparseGradient& gradient) {
    if (gradient.indices.shape().rank() != 1) return std::nullopt;
    return internal::MergeDuplicateRows(gradient.indices, gradient.values,
                                        internal::MergeKind::kSum);
  }

  absl::StatusOr<uint64_t> SendSparse(const std::string& var, const OptimizerSpec& spec,
                                      const OptimizerConfig& config, const Tensor& indices,
                                      const Tensor& values,
                                      const std::vector<std::string>& slots) {
    ApplySparseRequest req;
    FillSparse(var, spec, config, indices, values, slots, &req);
    return SendSparseRequest(&req);
  }
  absl::StatusOr<uint64_t> SendSparse(const std::string& var, const OptimizerSpec& spec,
                                      const OptimizerConfig& config, internal::MergedRows&& merged,
                                      const std::vector<std::string>& slots) {
    ApplySparseRequest req;
    FillSparse(var, spec, config, std::move(merged), slots, &req);
    return SendSparseRequest(&req);
  }
  absl::StatusOr<uint64_t> SendSparseRequest(ApplySparseRequest* req) {
    ApplySparseResponse resp;
    PSD_RETURN_IF_ERROR(shard_->SendApplySparse(req, &resp));
    return resp.version();
  }

  // Whether a dense gradient travels as a stream (AssignStreamHeader.apply):
  // in chunks, without copies, not bounded by the message limit.
  bool Streams(const Tensor& gradient) const {
    const ClientOptions& options = shard_->options();
    return gradient.dtype() != DT_STRING && options.stream_threshold_bytes > 0 &&
           static_cast<int64_t>(gradient.bytes().size()) > options.stream_threshold_bytes;
  }

  // A dense apply whose gradient is streamed; the same request id on every
  // attempt, as for the unary ApplyDense.
  absl::StatusOr<uint64_t> ApplyDenseStreamed(const std::string& var, const OptimizerSpec& spec,
                                              const OptimizerConfig& config,
                                              const Tensor& gradient,
                                              const std::vector<std::string>& slots,
                                              RequestId* id = nullptr) {
    AssignStreamHeader header;
    if (id != nullptr) *header.mutable_request_id() = *id;  // unset: drawn by the send
    header.set_name(var);
    header.set_op(UPDATE_ASSIGN);
    header.set_dtype(gradient.dtype());
    ShapeToProto(gradient.shape(), header.mutable_shape());
    header.set_total_bytes(static_cast<int64_t>(gradient.bytes().size()));
    FillSlots(var, config, slots, header.mutable_apply()->mutable_slots());
    *header.mutable_apply()->mutable_optimizer() = spec;
    AssignResponse response;
    absl::Status sent = shard_->SendApplyStream(&header, gradient, &response);
    if (id != nullptr) *id = header.request_id();
    PSD_RETURN_IF_ERROR(sent);
    return response.version();
  }

  static void FillSlots(const std::string& var, const OptimizerConfig& config,
                        const std::vector<std::string>& slots,
                        google::protobuf::RepeatedPtrField<std::string>* out) {
    if (!slots.empty()) {
      for (const auto& s : slots) *out->Add() = s;
      return;
    }
    for (auto& s : OptimizerSlots(config, var)) *out->Add() = std::move(s.name);
  }

  const std::shared_ptr<ShardClient> shard_;
};

ShardApplier::ShardApplier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShardApplier::ShardApplier(std::shared_ptr<ShardClient> shard)
    : impl_(std::make_unique<Impl>(std::move(shard))) {}
ShardApplier::~ShardApplier() = default;

const std::string& ShardApplier::address() const { return impl_->shard_->address(); }
uint64_t ShardApplier::incarnation() const { return impl_->shard_->info().incarnation; }

absl::StatusOr<std::unique_ptr<ShardApplier>> ShardApplier::Connect(const std::string& address,
                                                                    const ClientOptions& options) {
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ShardClient> shard, ShardClient::Connect(address, options));
  return std::make_unique<ShardApplier>(std::shared_ptr<ShardClient>(std::move(shard)));
}

absl::StatusOr<uint64_t> ShardApplier::ApplyDense(const std::string& var,
                                                  const OptimizerConfig& optimizer,
                                                  const Tensor& gradient,
                                                  const std::vector<std::string>& slots) {
  if (impl_->Streams(gradient)) {
    return impl_->ApplyDenseStreamed(var, ToSpec(optimizer), optimizer, gradient, slots);
  }
  ApplyDenseRequest req;
  impl_->FillDense(var, ToSpec(optimizer), optimizer, gradient, slots, &req);
  ApplyDenseResponse resp;
  PSD_RETURN_IF_ERROR(impl_->shard_->SendApplyDense(&req, &resp));
  return resp.version();
}

absl::StatusOr<uint64_t> ShardApplier::ApplySparse(const std::string& var,
                                                   const OptimizerConfig& optimizer,
                                                   const SparseGradient& gradient,
                                                   const std::vector<std::string>& slots) {
  const OptimizerSpec spec = ToSpec(optimizer);
  std::optional<internal::MergedRows> merged = Impl::Merge(gradient);
  if (!merged.has_value()) {
    return impl_->SendSparse(var, spec, optimizer, gradient.indices, gradient.values, slots);
  }
  absl::StatusOr<uint64_t> version =
      impl_->SendSparse(var, spec, optimizer, *std::move(merged), slots);
  // The shard refuses a request before applying any of it, and refuses the
  // merged gradient exactly when it refuses the caller's (same distinct
  // indices, rows of the same shape): resend the caller's own so the error
  // speaks of its positions and shapes.
  if (absl::IsInvalidArgument(version.status())) {
    return impl_->SendSparse(var, spec, optimizer, gradient.indices, gradient.values, slots);
  }
  return version;
}

absl::Status ShardApplier::ApplyGradients(const OptimizerConfig& optimizer,
                                          const std::vector<GradientAndVariable>& grads_and_vars,
                                          std::vector<absl::Status>* statuses,
                                          std::vector<RequestId>* request_ids) {
  const OptimizerSpec spec = ToSpec(optimizer);
  if (request_ids != nullptr) request_ids->resize(grads_and_vars.size());
  // Op i's id as the caller gave it (to send again), or null.
  const auto preset_id = [&](size_t i) -> const RequestId* {
    if (request_ids == nullptr || (*request_ids)[i].client_id() == 0) return nullptr;
    return &(*request_ids)[i];
  };
  std::vector<absl::Status> results(grads_and_vars.size());
  // Ops in one Batch message, by index; sent when a streamed gradient comes
  // (so every op still runs in the caller's order) and at the end.
  BatchRequest batch;
  std::vector<size_t> batched;
  auto send_batch = [&]() -> absl::Status {
    if (batched.empty()) return absl::OkStatus();
    // One message out, one back (resent whole on a retryable failure).
    BatchResponse response;
    absl::Status sent = impl_->shard_->SendApplyBatch(&batch, &response);
    // The ids the ops went out with, whatever the answer: an op whose
    // answer was lost (its shard died) may have been applied and
    // replicated, and is resent with its id (see request_ids).
    if (request_ids != nullptr) {
      for (int k = 0; k < batch.ops_size(); ++k) {
        if (const RequestId* id = internal::BatchOpId(batch.mutable_ops(k))) {
          (*request_ids)[batched[k]] = *id;
        }
      }
    }
    PSD_RETURN_IF_ERROR(sent);
    if (response.results_size() != batch.ops_size()) {
      return absl::InternalError(absl::StrCat("shard ", impl_->shard_->address(), " answered ",
                                              response.results_size(), " results for ",
                                              batch.ops_size(), " apply ops"));
    }
    for (int k = 0; k < response.results_size(); ++k) {
      const BatchOpResult& r = response.results(k);
      results[batched[k]] = absl::Status(static_cast<absl::StatusCode>(r.code()), r.message());
    }
    batch.Clear();
    batched.clear();
    return absl::OkStatus();
  };
  if (statuses != nullptr) statuses->clear();
  // Ops sent with their duplicate indices merged (see ApplySparse).
  std::vector<bool> merged(grads_and_vars.size(), false);
  for (size_t i = 0; i < grads_and_vars.size(); ++i) {
    const auto& gv = grads_and_vars[i];
    if (const auto* dense = std::get_if<Tensor>(&gv.gradient)) {
      if (impl_->Streams(*dense)) {
        PSD_RETURN_IF_ERROR(send_batch());
        results[i] = impl_
                         ->ApplyDenseStreamed(gv.variable, spec, optimizer, *dense, gv.slots,
                                              request_ids != nullptr ? &(*request_ids)[i] : nullptr)
                         .status();
        continue;
      }
      impl_->FillDense(gv.variable, spec, optimizer, *dense, gv.slots,
                       batch.add_ops()->mutable_apply_dense());
    } else {
      const auto& sparse = std::get<SparseGradient>(gv.gradient);
      std::optional<internal::MergedRows> rows = Impl::Merge(sparse);
      merged[i] = rows.has_value();
      if (merged[i]) {
        impl_->FillSparse(gv.variable, spec, optimizer, *std::move(rows), gv.slots,
                          batch.add_ops()->mutable_apply_sparse());
      } else {
        impl_->FillSparse(gv.variable, spec, optimizer, sparse.indices, sparse.values, gv.slots,
                          batch.add_ops()->mutable_apply_sparse());
      }
    }
    if (const RequestId* id = preset_id(i)) {
      *internal::BatchOpId(batch.mutable_ops(batch.ops_size() - 1)) = *id;
    }
    batched.push_back(i);
  }
  PSD_RETURN_IF_ERROR(send_batch());
  // A merged op the shard refused is refused unmerged too, with nothing
  // applied: resend the caller's own gradient for the shard's exact error.
  for (size_t i = 0; i < grads_and_vars.size(); ++i) {
    if (!merged[i] || !absl::IsInvalidArgument(results[i])) continue;
    const auto& gv = grads_and_vars[i];
    const auto& sparse = std::get<SparseGradient>(gv.gradient);
    results[i] = impl_->SendSparse(gv.variable, spec, optimizer, sparse.indices, sparse.values,
                                   gv.slots)
                     .status();
  }
  absl::Status first;
  for (size_t i = 0; i < results.size(); ++i) {
    const absl::Status& s = results[i];
    if (first.ok() && !s.ok()) {
      first = absl::Status(s.code(), absl::StrCat("apply to '", grads_and_vars[i].variable,
                                                  "': ", s.message()));
    }
  }
  if (statuses != nullptr) *statuses = std::move(results);
  return first;
}

}  // namespace client
}  // namespace psd
