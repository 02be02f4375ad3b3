// VariableStore's optimizer applies (TensorFlow's Apply* and SparseApply*):
// the optimizer spec's checks, then one locked update of the variable and
// its slots.
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/store_internal.h"
#include "shard/variable_store.h"

namespace psd {

using store_internal::CheckIndices;
using store_internal::CheckInitialized;
using store_internal::Quoted;

namespace store_internal {

std::string ApplyOpName(OptimizerKind kind, bool sparse) {
  return absl::StrCat(sparse ? "SparseApply" : "Apply", OptimizerName(kind));
}

absl::Status ParseOptimizer(const OptimizerSpec& spec, bool sparse, const std::string& variable,
                            OptimizerParams* params, std::string beta_power_variables[2]) {
  std::string op;
  auto check = [&](const char* field, double value, bool ok,
                   const char* range) -> absl::Status {
    if (std::isfinite(value) && ok) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(op, " for ", Quoted(variable), ": ", field,
                                                   " = ", value, " is not ", range));
  };
  auto finite = [&](const char* field, double value) {
    return check(field, value, true, "finite");
  };
  auto non_negative = [&](const char* field, double value) {
    return check(field, value, value >= 0, "finite and >= 0");
  };
  auto fraction = [&](const char* field, double value) {
    return check(field, value, value >= 0 && value < 1, "in [0, 1)");
  };
  switch (spec.kind_case()) {
    case OptimizerSpec::kGradientDescent: {
      params->kind = OptimizerKind::kGradientDescent;
      op = ApplyOpName(params->kind, sparse);
      params->learning_rate = spec.gradient_descent().learning_rate();
      PSD_RETURN_IF_ERROR(finite("learning_rate", params->learning_rate));
      return absl::OkStatus();
    }
    case OptimizerSpec::kMomentum: {
      const auto& m = spec.momentum();
      params->kind = OptimizerKind::kMomentum;
      op = ApplyOpName(params->kind, sparse);
      params->learning_rate = m.learning_rate();
      params->momentum = m.momentum();
      params->use_nesterov = m.use_nesterov();
      PSD_RETURN_IF_ERROR(finite("learning_rate", params->learning_rate));
      PSD_RETURN_IF_ERROR(non_negative("momentum", params->momentum));
      return absl::OkStatus();
    }
    case OptimizerSpec::kAdagrad: {
      params->kind = OptimizerKind::kAdagrad;
      op = ApplyOpName(params->kind, sparse);
      params->learning_rate = spec.adagrad().learning_rate();
      PSD_RETURN_IF_ERROR(finite("learning_rate", params->learning_rate));
      return absl::OkStatus();
    }
    case OptimizerSpec::kAdam: {
      const auto& a = spec.adam();
      params->kind = OptimizerKind::kAdam;
      op = ApplyOpName(params->kind, sparse);
      params->learning_rate = a.learning_rate();
      params->beta1 = a.beta1();
      params->beta2 = a.beta2();
      params->epsilon = a.epsilon();
      PSD_RETURN_IF_ERROR(finite("learning_rate", params->learning_rate));
      PSD_RETURN_IF_ERROR(fraction("beta1", params->beta1));
      PSD_RETURN_IF_ERROR(fraction("beta2", params->beta2));
      PSD_RETURN_IF_ERROR(non_negative("epsilon", params->epsilon));
      switch (a.beta1_power_case()) {
        case OptimizerSpec::Adam::kBeta1PowerValue:
          params->beta1_power = a.beta1_power_value();
          PSD_RETURN_IF_ERROR(fraction("beta1_power", params->beta1_power));
          break;
        case OptimizerSpec::Adam::kBeta1PowerVariable:
          beta_power_variables[0] = a.beta1_power_variable();
          break;
        default:
          return absl::InvalidArgumentError(
              absl::StrCat(op, " for ", Quoted(variable), ": beta1_power is not set"));
      }
      switch (a.beta2_power_case()) {
        case OptimizerSpec::Adam::kBeta2PowerValue:
          params->beta2_power = a.beta2_power_value();
          PSD_RETURN_IF_ERROR(fraction("beta2_power", params->beta2_power));
          break;
        case OptimizerSpec::Adam::kBeta2PowerVariable:
          beta_power_variables[1] = a.beta2_power_variable();
          break;
        default:
          return absl::InvalidArgumentError(
              absl::StrCat(op, " for ", Quoted(variable), ": beta2_power is not set"));
      }
      return absl::OkStatus();
    }
    case OptimizerSpec::kRmsprop: {
      const auto& r = spec.rmsprop();
      params->kind = r.centered() ? OptimizerKind::kCenteredRMSProp : OptimizerKind::kRMSProp;
      op = ApplyOpName(params->kind, sparse);
      params->learning_rate = r.learning_rate();
      params->decay = r.decay();
      params->momentum = r.momentum();
      params->epsilon = r.epsilon();
      PSD_RETURN_IF_ERROR(finite("learning_rate", params->learning_rate));
      PSD_RETURN_IF_ERROR(check("decay", params->decay, params->decay >= 0 && params->decay <= 1,
                                "in [0, 1]"));
      PSD_RETURN_IF_ERROR(non_negative("momentum", params->momentum));
      PSD_RETURN_IF_ERROR(non_negative("epsilon", params->epsilon));
      return absl::OkStatus();
    }
    case OptimizerSpec::kFtrl: {
      const auto& f = spec.ftrl();
      params->kind = OptimizerKind::kFtrl;
      op = ApplyOpName(params->kind, sparse);
      params->learning_rate = f.learning_rate();
      params->lr_power = f.learning_rate_power();
      params->l1 = f.l1();
      params->l2 = f.l2();
      params->l2_shrinkage = f.l2_shrinkage();
      // TensorFlow's own checks in ApplyFtrl.
      PSD_RETURN_IF_ERROR(check("learning_rate", params->learning_rate,
                                params->learning_rate > 0, "finite and > 0"));
      PSD_RETURN_IF_ERROR(check("learning_rate_power", params->lr_power, params->lr_power <= 0,
                                "finite and <= 0"));
      PSD_RETURN_IF_ERROR(non_negative("l1", params->l1));
      PSD_RETURN_IF_ERROR(non_negative("l2", params->l2));
      PSD_RETURN_IF_ERROR(non_negative("l2_shrinkage", params->l2_shrinkage));
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "apply for ", Quoted(variable), ": no optimizer set (gradient_descent, momentum, "
                                          "adagrad, adam, rmsprop or ftrl)"));
  }
}

absl::StatusOr<double> ReadScalar(Device* device, const Variable& var) {
  return DispatchFixedSize(
      var.dtype,
      [&](auto t) -> absl::StatusOr<double> {
        using T = decltype(t);
        T value;
        PSD_RETURN_IF_ERROR(device->CopyToHost(*var.contents->buffer, 0, sizeof(T), &value));
        if constexpr (std::is_floating_point_v<T>) {
          return static_cast<double>(value);
        } else if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
          return static_cast<double>(static_cast<float>(value));
        } else {
          return absl::InternalError(absl::StrCat(Quoted(var.name), " is not floating"));
        }
      },
      [&] { return absl::StatusOr<double>(absl::InternalError(
                absl::StrCat(Quoted(var.name), " is not floating"))); });
}

}  // namespace store_internal

using store_internal::ApplyOpName;
using store_internal::ParseOptimizer;
using store_internal::ReadScalar;

void VariableStore::PowersRead::ReplaceNames(OptimizerSpec* spec) const {
  if (!spec->has_adam()) return;
  OptimizerSpec::Adam* adam = spec->mutable_adam();
  if (value[0].has_value()) adam->set_beta1_power_value(*value[0]);
  if (value[1].has_value()) adam->set_beta2_power_value(*value[1]);
}

absl::Status VariableStore::ApplyOnce(const std::string& name,
                                      const google::protobuf::RepeatedPtrField<std::string>& slots,
                                      const OptimizerSpec& spec, const DenseGradient* dense,
                                      const SparseGradient* sparse, uint64_t* version,
                                      bool check_only, PowersRead* powers_read) {
  OptimizerParams params;
  std::string power_names[2];
  PSD_RETURN_IF_ERROR(ParseOptimizer(spec, sparse != nullptr, name, &params, power_names));
  const std::string op = absl::StrCat(ApplyOpName(params.kind, sparse != nullptr), ": ");
  const int want_slots = NumOptimizerSlots(params.kind);
  if (slots.size() != want_slots) {
    return absl::InvalidArgumentError(absl::StrCat(op, Quoted(name), ": ", OptimizerName(params.kind),
                                                   " takes ", want_slots, " slot variables, got ",
                                                   slots.size()));
  }

  // Resolve every variable; each name may appear once.
  PSD_ASSIGN_OR_RETURN(auto var, Find(name));
  std::vector<std::shared_ptr<Variable>> slot_vars;
  std::shared_ptr<Variable> power_vars[2];
  std::map<std::string, Variable*> by_name;  // the lock order
  by_name.emplace(name, var.get());
  for (const std::string& slot : slots) {
    PSD_ASSIGN_OR_RETURN(auto slot_var, Find(slot));
    if (!by_name.emplace(slot, slot_var.get()).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, Quoted(name), ": slot ", Quoted(slot), " is named twice (as ",
          slot == name ? "the variable trained and a slot" : "two slots",
          "); each variable of an apply must be a different one"));
    }
    slot_vars.push_back(std::move(slot_var));
  }
  // Every name once: the variable, each slot and each beta power are locked
  // (writers or readers) exactly once, and an update never reads a power it
  // is writing.
  const char* const power_fields[2] = {"beta1_power", "beta2_power"};
  for (int k = 0; k < 2; ++k) {
    if (power_names[k].empty()) continue;
    PSD_ASSIGN_OR_RETURN(power_vars[k], Find(power_names[k]));
    if (!by_name.emplace(power_names[k], power_vars[k].get()).second) {
      const std::string& alias = power_names[k];
      const char* other = alias == name                      ? "which is the variable trained"
                          : k == 1 && alias == power_names[0] ? "which beta1_power names too"
                                                              : "which is one of its slots";
      return absl::InvalidArgumentError(
          absl::StrCat(op, Quoted(name), ": ", power_fields[k], " names ", Quoted(alias), ", ",
                       other, "; each variable of an apply must be a different one"));
    }
  }

  // Dtypes are fixed at creation: check them before locking.
  const DataType dtype = var->dtype;
  if (!IsFloating(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(op, Quoted(name), " is ", DataTypeName(dtype),
                                                   "; optimizers need a floating dtype"));
  }
  for (const auto& slot : slot_vars) {
    if (slot->dtype != dtype) {
      return absl::InvalidArgumentError(absl::StrCat(op, "slot ", Quoted(slot->name), " is ",
                                                     DataTypeName(slot->dtype), ", ",
                                                     Quoted(name), " is ", DataTypeName(dtype)));
    }
  }
  for (const auto& power : power_vars) {
    if (power != nullptr && !IsFloating(power->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(op, "beta power ", Quoted(power->name),
                                                      " is ", DataTypeName(power->dtype),
                                                      "; it must be a floating scalar"));
    }
  }
  const DataType grad_dtype = dense == nullptr          ? sparse->values->dtype()
                              : dense->proto != nullptr ? dense->proto->dtype()
                                                        : dense->dtype;
  if (grad_dtype != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(op, Quoted(name), " is ", DataTypeName(dtype),
                                                   ", gradient is ", DataTypeName(grad_dtype)));
  }
  TensorShape grad_shape;
  const void* grad_data = nullptr;  // dense only
  if (dense != nullptr && dense->proto != nullptr) {
    PSD_ASSIGN_OR_RETURN(grad_shape,
                         ValidateTensorProto(*dense->proto,
                                             absl::StrCat(op, "gradient for ", Quoted(name))));
    grad_data = dense->proto->content().data();
  } else if (dense != nullptr) {
    grad_shape = dense->shape;
    grad_data = dense->data;
  } else {
    grad_shape = sparse->values_shape;
  }

  // Lock everything in name order: concurrent applies that share variables
  // cannot deadlock. Beta powers are only read.
  std::vector<std::unique_ptr<absl::MutexLock>> writer_locks;
  std::vector<std::unique_ptr<absl::ReaderMutexLock>> reader_locks;
  for (auto& [n, v] : by_name) {
    const bool read_only = n == power_names[0] || n == power_names[1];
    if (read_only) {
      reader_locks.push_back(std::make_unique<absl::ReaderMutexLock>(&v->mu));
    } else {
      writer_locks.push_back(std::make_unique<absl::MutexLock>(&v->mu));
    }
  }
  for (auto& [n, v] : by_name) {
    v->mu.AssertReaderHeld();
    PSD_RETURN_IF_ERROR(CheckInitialized(*v));
  }
  var->mu.AssertHeld();
  for (const auto& slot : slot_vars) {
    slot->mu.AssertHeld();
    if (slot->shape != var->shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, "slot ", Quoted(slot->name), " has shape ", slot->shape.ToString(), ", ",
          Quoted(name), " has shape ", var->shape.ToString()));
    }
  }
  double* const powers[2] = {&params.beta1_power, &params.beta2_power};
  for (int k = 0; k < 2; ++k) {
    const auto& power = power_vars[k];
    if (power == nullptr) continue;
    power->mu.AssertReaderHeld();
    if (power->shape.rank() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(op, "beta power ", Quoted(power->name),
                                                     " must be a scalar, has shape ",
                                                     power->shape.ToString()));
    }
    PSD_ASSIGN_OR_RETURN(*powers[k], ReadScalar(device_, *power));
    if (!(*powers[k] >= 0 && *powers[k] < 1)) {
      return absl::InvalidArgumentError(absl::StrCat(op, Quoted(name), ": ", power_fields[k],
                                                     " = ", *powers[k], " (from ",
                                                     Quoted(power->name), ") is not in [0, 1)"));
    }
    if (powers_read != nullptr) powers_read->value[k] = *powers[k];
  }
  if (dense != nullptr) {
    if (grad_shape != var->shape) {
      return absl::InvalidArgumentError(absl::StrCat(op, Quoted(name), " has shape ",
                                                     var->shape.ToString(),
                                                     ", gradient has shape ",
                                                     grad_shape.ToString()));
    }
  } else {
    if (var->shape.rank() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, Quoted(name), " is a scalar; a sparse update needs rank >= 1"));
    }
    std::vector<int64_t> want = {static_cast<int64_t>(sparse->indices.size())};
    want.insert(want.end(), var->shape.dims().begin() + 1, var->shape.dims().end());
    if (grad_shape.dims() != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, "values for ", Quoted(name), " have shape ", grad_shape.ToString(),
          ", need indices.shape + var.shape[1:] = ", TensorShape(want).ToString()));
    }
    PSD_RETURN_IF_ERROR(CheckIndices(sparse->indices, var->shape.dim(0), name));
  }
  if (check_only) return absl::OkStatus();

  // Everything checked: copy what pins need of the rows about to change
  // (the same rows of the variable and of every slot), then update.
  const WriteExtent extent = dense != nullptr
                                 ? WriteExtent::All()
                                 : WriteExtent::Rows(sparse->indices, var->shape.row_elements());
  PSD_RETURN_IF_ERROR(var->CopyOnWrite(&memory_, extent));
  std::vector<DeviceBuffer*> slot_buffers;
  for (const auto& slot : slot_vars) {
    slot->mu.AssertHeld();
    PSD_RETURN_IF_ERROR(slot->CopyOnWrite(&memory_, extent));
    slot_buffers.push_back(slot->contents->buffer.get());
  }
  if (dense != nullptr) {
    PSD_RETURN_IF_ERROR(device_->ApplyOptimizerDense(params, dtype, var->contents->buffer.get(),
                                                     slot_buffers, grad_data,
                                                     grad_shape.num_elements()));
  } else {
    PSD_RETURN_IF_ERROR(device_->ApplyOptimizerSparse(
        params, dtype, var->contents->buffer.get(), slot_buffers, var->shape.row_elements(),
        sparse->indices, sparse->values->content().data()));
  }
  ++var->version;
  for (const auto& slot : slot_vars) {
    slot->mu.AssertHeld();
    ++slot->version;
  }
  *version = var->version;
  return absl::OkStatus();
}

absl::Status VariableStore::ApplyDense(const ApplyDenseRequest& request,
                                       ApplyDenseResponse* response, CallerKey caller) {
  PowersRead powers;
  WriteMeta meta = Forwarded(caller, request);
  meta.amend_logged = [&powers](BatchOp* op) {
    powers.ReplaceNames(op->mutable_apply_dense()->mutable_optimizer());
  };
  return Mutate(meta, response, [&]() -> absl::Status {
    DenseGradient gradient;
    gradient.proto = &request.gradient();
    uint64_t version = 0;
    PSD_RETURN_IF_ERROR(ApplyOnce(request.name(), request.slots(), request.optimizer(), &gradient,
                                  nullptr, &version, /*check_only=*/false, &powers));
    response->set_version(version);
    return absl::OkStatus();
  });
}

absl::Status VariableStore::ApplySparse(const ApplySparseRequest& request,
                                        ApplySparseResponse* response, CallerKey caller) {
  PowersRead powers;
  WriteMeta meta = Forwarded(caller, request);
  meta.amend_logged = [&powers](BatchOp* op) {
    powers.ReplaceNames(op->mutable_apply_sparse()->mutable_optimizer());
  };
  return Mutate(meta, response, [&]() -> absl::Status {
    if (std::shared_ptr<EmbeddingPart> part = FindEmbedding(request.name())) {
      return ApplyEmbedding(*part, request, response, &powers);
    }
    const std::string what = absl::StrCat("sparse apply: indices for ", Quoted(request.name()));
    SparseGradient sparse;
    TensorShape indices_shape;
    PSD_ASSIGN_OR_RETURN(sparse.indices,
                         IndicesFromProto(request.indices(), what, &indices_shape));
    if (indices_shape.rank() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " must be a vector, have shape ", indices_shape.ToString()));
    }
    PSD_ASSIGN_OR_RETURN(sparse.values_shape,
                         ValidateTensorProto(request.values(),
                                             absl::StrCat("sparse apply: values for ",
                                                          Quoted(request.name()))));
    sparse.values = &request.values();
    uint64_t version = 0;
    PSD_RETURN_IF_ERROR(ApplyOnce(request.name(), request.slots(), request.optimizer(), nullptr,
                                  &sparse, &version, /*check_only=*/false, &powers));
    response->set_version(version);
    return absl::OkStatus();
  });
}

}  // namespace psd
