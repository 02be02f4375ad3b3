#include "psd/optimizer.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "psd/dtype.h"
#include "psd/embedding_variable.h"
#include "psd/initializers.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "overloaded.h"
#include "session_impl.h"
#include "sparse_merge.h"

namespace psd {
namespace client {

namespace {

using internal::Overloaded;

// A scalar of `dtype` holding `value` (floating dtypes; others get a
// truncated value).
Tensor ScalarOf(DataType dtype, double value) {
  return DispatchFixedSize(
      dtype,
      [&](auto zero) {
        using T = decltype(zero);
        if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
          return Tensor::Scalar<T>(T(static_cast<float>(value)));
        } else {
          return Tensor::Scalar<T>(static_cast<T>(value));
        }
      },
      [] { return Tensor(); });
}

// The first element of a floating tensor as a double.
double FirstAsDouble(const Tensor& t) {
  return DispatchFixedSize(
      t.dtype(),
      [&](auto zero) -> double {
        using T = decltype(zero);
        if (t.num_elements() < 1) return 0;
        if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
          return static_cast<float>(t.data<T>()[0]);
        } else {
          return static_cast<double>(t.data<T>()[0]);
        }
      },
      [] { return 0.0; });
}

// value * factor computed in the tensor's dtype, as TensorFlow's
// `beta1_power * beta1` is (16-bit types through float).
Tensor ScaledScalar(const Tensor& value, double factor) {
  return DispatchFixedSize(
      value.dtype(),
      [&](auto zero) {
        using T = decltype(zero);
        const T v = value.data<T>()[0];
        if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
          return Tensor::Scalar<T>(T(static_cast<float>(v) * static_cast<float>(factor)));
        } else {
          return Tensor::Scalar<T>(static_cast<T>(v * static_cast<T>(factor)));
        }
      },
      [] { return Tensor(); });
}

int64_t IndexAt(const Tensor& indices, int64_t i) {
  return indices.dtype() == DT_INT32 ? indices.data<int32_t>()[i] : indices.data<int64_t>()[i];
}

absl::Status CheckIndices(const Tensor& indices, const std::string& what) {
  if (indices.dtype() != DT_INT32 && indices.dtype() != DT_INT64) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be int32 or int64, not ", DataTypeName(indices.dtype())));
  }
  if (indices.shape().rank() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be one-dimensional, got shape ", indices.shape().ToString()));
  }
  return absl::OkStatus();
}

TensorShape ShapeOf(const TensorShapeProto& proto) {
  return TensorShape(std::vector<int64_t>(proto.dims().begin(), proto.dims().end()));
}

// Rows [begin, begin + length) of `t` along `axis`.
Tensor SliceAlong(const Tensor& t, int axis, int64_t begin, int64_t length) {
  std::vector<int64_t> dims = t.shape().dims();
  int64_t outer = 1;
  for (int i = 0; i < axis; ++i) outer *= dims[i];
  int64_t inner = static_cast<int64_t>(DataTypeSize(t.dtype()));
  for (int i = axis + 1; i < static_cast<int>(dims.size()); ++i) inner *= dims[i];
  const int64_t rows = dims[axis];
  dims[axis] = length;
  Tensor out(t.dtype(), TensorShape(dims));
  const char* src = t.bytes().data();
  char* dst = out.mutable_bytes()->data();
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(dst + o * length * inner, src + (o * rows + begin) * inner,
                static_cast<size_t>(length * inner));
  }
  return out;
}

// The rows of `values` at `positions`, and `indices` there minus `base`.
SparseGradient TakeRows(const IndexedSlices& g, const std::vector<int64_t>& positions,
                        int64_t base) {
  std::vector<int64_t> dims = g.values.shape().dims();
  const int64_t n = dims.empty() ? 0 : dims[0];
  const size_t row_bytes = n == 0 ? 0 : g.values.bytes().size() / static_cast<size_t>(n);
  dims[0] = static_cast<int64_t>(positions.size());
  SparseGradient out;
  out.values = Tensor(g.values.dtype(), TensorShape(dims));
  out.indices = Tensor(g.indices.dtype(), TensorShape{static_cast<int64_t>(positions.size())});
  for (size_t j = 0; j < positions.size(); ++j) {
    const int64_t p = positions[j];
    std::memcpy(out.values.mutable_bytes()->data() + j * row_bytes,
                g.values.bytes().data() + static_cast<size_t>(p) * row_bytes, row_bytes);
    const int64_t index = IndexAt(g.indices, p) - base;
    if (out.indices.dtype() == DT_INT32) {
      out.indices.data<int32_t>()[j] = static_cast<int32_t>(index);
    } else {
      out.indices.data<int64_t>()[j] = index;
    }
  }
  return out;
}

// TensorFlow's checks of apply_gradients' inputs against the variable, with
// the kernels' wording.
// An embedding table's gradient: IndexedSlices whose indices are keys of
// the table's key dtype ([n]) and whose values are [n, dim] rows.
absl::Status ValidateTableGradient(const VariableHandle& h, const Gradient& gradient) {
  const auto* g = std::get_if<IndexedSlices>(&gradient);
  if (g == nullptr) {
    return absl::InvalidArgumentError(
        "an embedding table takes a sparse gradient (IndexedSlices: keys and rows)");
  }
  const int64_t n = g->indices.num_elements();
  if (g->indices.dtype() != h.embedding().key_dtype() || g->indices.shape().rank() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient keys are ", DataTypeName(g->indices.dtype()), " of shape ",
        g->indices.shape().ToString(), "; the table's keys are a vector of ",
        DataTypeName(h.embedding().key_dtype())));
  }
  if (g->values.dtype() != h.dtype() ||
      g->values.shape() != TensorShape({n, h.embedding().embedding_dim()})) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient rows are ", DataTypeName(g->values.dtype()), " of shape ",
        g->values.shape().ToString(), "; the table needs ", DataTypeName(h.dtype()), " [", n,
        ", ", h.embedding().embedding_dim(), "]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateGradient(const VariableHandle& h, const Gradient& gradient) {
  if (!IsFloating(h.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizers update floating variables only; this one is ", DataTypeName(h.dtype())));
  }
  const TensorShape var_shape = ShapeOf(h.shape());
  if (const Tensor* dense = std::get_if<Tensor>(&gradient)) {
    if (dense->dtype() != h.dtype()) {
      return absl::InvalidArgumentError(
          absl::StrCat("gradient dtype ", DataTypeName(dense->dtype()),
                       " does not match the variable's dtype ", DataTypeName(h.dtype())));
    }
    if (dense->shape() != var_shape) {
      return absl::InvalidArgumentError(absl::StrCat("var and grad do not have the same shape",
                                                     var_shape.ToString(), " ",
                                                     dense->shape().ToString()));
    }
    return absl::OkStatus();
  }
  const IndexedSlices& g = std::get<IndexedSlices>(gradient);
  if (g.values.dtype() != h.dtype()) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient dtype ", DataTypeName(g.values.dtype()),
                     " does not match the variable's dtype ", DataTypeName(h.dtype())));
  }
  PSD_RETURN_IF_ERROR(CheckIndices(g.indices, "indices"));
  if (var_shape.rank() < 1) {
    return absl::InvalidArgumentError("var must be at least 1 dimensional");
  }
  if (h.partitioned() && h.partition_axis() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sparse gradients need a variable partitioned along axis 0, not axis ",
                     h.partition_axis()));
  }
  if (g.dense_shape.has_value() && *g.dense_shape != var_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("IndexedSlices dense_shape ", g.dense_shape->ToString(),
                     " does not match the variable's shape ", var_shape.ToString()));
  }
  const TensorShape& vs = g.values.shape();
  if (vs.rank() != var_shape.rank()) {
    return absl::InvalidArgumentError(absl::StrCat("var and grad must have the same rank: var ",
                                                   var_shape.ToString(), ", grad ", vs.ToString()));
  }
  if (vs.dim(0) != g.indices.shape().dim(0)) {
    return absl::InvalidArgumentError(
        "grad must be the same size as indices in the first dimension.");
  }
  for (int d = 1; d < var_shape.rank(); ++d) {
    if (vs.dim(d) != var_shape.dim(d)) {
      return absl::InvalidArgumentError(absl::StrCat("var and grad must match in dimension ", d));
    }
  }
  const int64_t rows = var_shape.dim(0);
  for (int64_t i = 0; i < g.indices.num_elements(); ++i) {
    const int64_t index = IndexAt(g.indices, i);
    if (index < 0 || index >= rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("Index ", index, " at offset ", i, " in indices is out of range"));
    }
  }
  return absl::OkStatus();
}

std::string PairName(const VariableHandle& h) { return absl::StrCat("variable '", h.name(), "'"); }

}  // namespace

// ---------------------------------------------------------------------------

absl::StatusOr<IndexedSlices> SparseMask(const IndexedSlices& a, const Tensor& mask_indices) {
  PSD_RETURN_IF_ERROR(CheckIndices(a.indices, "sparse_mask: a.indices"));
  PSD_RETURN_IF_ERROR(CheckIndices(mask_indices, "sparse_mask: mask_indices"));
  if (a.values.shape().rank() < 1 || a.values.shape().dim(0) != a.indices.num_elements()) {
    return absl::InvalidArgumentError(absl::StrCat("sparse_mask: values of shape ",
                                                   a.values.shape().ToString(), " do not match ",
                                                   a.indices.num_elements(), " indices"));
  }
  std::set<int64_t> masked;
  for (int64_t i = 0; i < mask_indices.num_elements(); ++i) masked.insert(IndexAt(mask_indices, i));
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < a.indices.num_elements(); ++i) {
    if (masked.count(IndexAt(a.indices, i)) == 0) keep.push_back(i);
  }
  SparseGradient taken = TakeRows(a, keep, 0);
  return IndexedSlices{std::move(taken.values), std::move(taken.indices), a.dense_shape};
}

std::vector<std::string> SlotNames(const OptimizerConfig& config) {
  return std::visit(Overloaded{
                        [](const opt::GradientDescent&) { return std::vector<std::string>{}; },
                        [](const opt::Momentum&) { return std::vector<std::string>{"momentum"}; },
                        [](const opt::Adagrad&) { return std::vector<std::string>{"accumulator"}; },
                        [](const opt::Adam&) {
                          return std::vector<std::string>{"m", "v"};
                        },
                        [](const opt::RMSProp& o) {
                          return o.centered ? std::vector<std::string>{"mg", "rms", "momentum"}
                                            : std::vector<std::string>{"rms", "momentum"};
                        },
                        [](const opt::Ftrl&) {
                          return std::vector<std::string>{"accum", "linear"};
                        },
                    },
                    config);
}

Optimizer::Optimizer(Session& session, OptimizerConfig config)
    : session_(session), config_(std::move(config)) {}

Optimizer::~Optimizer() = default;

absl::Status Optimizer::CreateSlots(const std::vector<Variable>& variables) {
  return EnsureSlots(variables);
}

absl::Status Optimizer::EnsureSlots(const std::vector<Variable>& variables) {
  std::vector<const Variable*> missing;
  bool need_powers = false;
  const opt::Adam* adam = std::get_if<opt::Adam>(&config_);
  {
    absl::MutexLock lock(&mu_);
    std::set<std::string> seen;
    for (const Variable& v : variables) {
      if (slots_.count(v.name()) == 0 && seen.insert(v.name()).second) missing.push_back(&v);
    }
    need_powers = adam != nullptr && beta_powers_.empty() &&
                  !(adam->beta1_power.has_value() && adam->beta2_power.has_value()) &&
                  !variables.empty();
  }
  if (missing.empty() && !need_powers) return absl::OkStatus();

  Session::Impl* impl = session_.impl_.get();
  DeclareVariablesRequest req;
  req.set_session_id(impl->id_);
  std::vector<size_t> slot_counts;  // per missing variable
  auto declare = [&](const std::string& name, const VariableHandle& like, bool same_shape,
                     double initial_value, const std::string& primary) {
    VariableDeclaration* d = req.add_declarations();
    d->set_name(name);
    d->set_dtype(like.dtype());
    if (same_shape) {
      *d->mutable_shape() = like.shape();
      if (like.partitioned()) {
        auto* e = d->mutable_partitioner()->mutable_explicit_partitions();
        for (int64_t p : like.partitions()) e->add_partitions(p);
      }
    } else {
      d->mutable_shape();  // a scalar
    }
    *d->mutable_initializer() = init::Constant(ScalarOf(like.dtype(), initial_value));
    // AUTO_REUSE: a second optimizer or trainer attaches to the slots.
    d->set_reuse(REUSE_AUTO);
    d->set_trainable(false);
    d->add_collections(kGlobalVariables);
    d->set_initialize(true);
    d->set_colocate_with(primary);
    d->set_declared_at(absl::StrCat("optimizer slot of ", primary));
  };
  for (const Variable* v : missing) {
    const VariableHandle h = v->handle();
    const std::vector<SlotVariable> slots = OptimizerSlots(config_, h.name());
    for (const SlotVariable& s : slots) {
      declare(s.name, h, true, s.initial_value, h.name());
      if (h.has_embedding()) {
        // A table's slot is a slot table: its rows live beside the table's
        // (DeepRec's slot EmbeddingVariables), one part per table part.
        VariableDeclaration* d = req.mutable_declarations(req.declarations_size() - 1);
        d->clear_partitioner();
        d->clear_colocate_with();
        d->set_initialize(false);
        *d->mutable_embedding() = h.embedding();
        d->mutable_embedding()->set_slot_of(h.name());
        if (h.parts_size() > 1) {
          d->mutable_partitioner()->mutable_fixed_size()->set_num_shards(h.parts_size());
        }
      }
    }
    slot_counts.push_back(slots.size());
  }
  if (need_powers) {
    // TensorFlow: colocated with min(var_list, key=name), of its dtype.
    const Variable* first = &*std::min_element(
        variables.begin(), variables.end(),
        [](const Variable& a, const Variable& b) { return a.name() < b.name(); });
    const VariableHandle h = first->handle();
    declare(adam->beta1_power_variable, h, false, adam->beta1, h.name());
    declare(adam->beta2_power_variable, h, false, adam->beta2, h.name());
  }
  if (req.declarations_size() == 0) {
    absl::MutexLock lock(&mu_);
    for (const Variable* v : missing) slots_.emplace(v->name(), std::vector<Variable>{});
    return absl::OkStatus();
  }
  DeclareVariablesResponse resp;
  PSD_RETURN_IF_ERROR(impl->Call(&Coordinator::Stub::DeclareVariables, req, &resp));
  std::vector<Variable> made;
  for (const VariableHandle& handle : resp.handles()) {
    PSD_ASSIGN_OR_RETURN(VariableHandle addressed, impl->EnsureAddressed(handle));
    made.push_back(impl->MakeVariable(std::move(addressed)));
  }
  absl::MutexLock lock(&mu_);
  size_t next = 0;
  for (size_t i = 0; i < missing.size(); ++i) {
    std::vector<Variable> slots(made.begin() + next, made.begin() + next + slot_counts[i]);
    next += slot_counts[i];
    slots_.emplace(missing[i]->name(), std::move(slots));
  }
  if (need_powers && beta_powers_.empty()) {
    beta_powers_ = {made[next], made[next + 1]};
  }
  return absl::OkStatus();
}

absl::StatusOr<Variable> Optimizer::GetSlot(const Variable& var, const std::string& name) const {
  const std::vector<std::string> names = SlotNames(config_);
  auto pos = std::find(names.begin(), names.end(), name);
  if (pos == names.end()) {
    return absl::NotFoundError(absl::StrCat("this optimizer has no slot named '", name, "'"));
  }
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(var.name());
  if (it == slots_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no slots for variable '", var.name(), "' yet: apply a gradient first"));
  }
  return it->second[static_cast<size_t>(pos - names.begin())];
}

std::vector<Variable> Optimizer::NonSlotVariables() const {
  absl::MutexLock lock(&mu_);
  return beta_powers_;
}

absl::StatusOr<OptimizerConfig> Optimizer::StepConfig() {
  const opt::Adam* adam = std::get_if<opt::Adam>(&config_);
  if (adam == nullptr) return config_;
  std::vector<Variable> powers = NonSlotVariables();
  opt::Adam step = *adam;
  if (powers.size() == 2) {
    std::vector<Tensor> values(2);
    std::vector<absl::Status> read = RunParallel(2, [&](size_t i) -> absl::Status {
      PSD_ASSIGN_OR_RETURN(values[i], powers[i].Read());
      return absl::OkStatus();
    });
    for (const absl::Status& s : read) PSD_RETURN_IF_ERROR(s);
    if (!step.beta1_power.has_value()) step.beta1_power = FirstAsDouble(values[0]);
    if (!step.beta2_power.has_value()) step.beta2_power = FirstAsDouble(values[1]);
  }
  return OptimizerConfig(step);
}

absl::Status Optimizer::FinishAdam() {
  const opt::Adam* adam = std::get_if<opt::Adam>(&config_);
  if (adam == nullptr) return absl::OkStatus();
  std::vector<Variable> powers = NonSlotVariables();
  if (powers.size() != 2) return absl::OkStatus();
  const double beta[2] = {adam->beta1, adam->beta2};
  std::vector<absl::Status> done = RunParallel(2, [&](size_t i) -> absl::Status {
    PSD_ASSIGN_OR_RETURN(Tensor value, powers[i].Read());
    return powers[i].Assign(ScaledScalar(value, beta[i]));
  });
  for (size_t i = 0; i < done.size(); ++i) {
    if (!done[i].ok()) {
      return absl::Status(done[i].code(),
                          absl::StrCat("advancing ", powers[i].name(), ": ", done[i].message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Optimizer::ApplyGradients(
    const std::vector<std::pair<Gradient, Variable>>& grads_and_vars,
    std::vector<absl::Status>* statuses) {
  return ApplyGradients(grads_and_vars, statuses, ApplyOptions());
}

absl::Status Optimizer::ApplyGradients(
    const std::vector<std::pair<Gradient, Variable>>& grads_and_vars,
    std::vector<absl::Status>* statuses, const ApplyOptions& options) {
  const size_t n = grads_and_vars.size();
  std::vector<absl::Status> result(n);
  std::vector<VariableHandle> handles(n);
  std::vector<Variable> variables;
  for (size_t i = 0; i < n; ++i) {
    const Variable& var = grads_and_vars[i].second;
    if (!var.valid()) {
      result[i] =
          absl::InvalidArgumentError(absl::StrCat("grads_and_vars[", i, "]: invalid Variable"));
      continue;
    }
    handles[i] = var.handle();
    absl::Status s = handles[i].has_embedding()
                         ? ValidateTableGradient(handles[i], grads_and_vars[i].first)
                         : ValidateGradient(handles[i], grads_and_vars[i].first);
    if (!s.ok()) {
      result[i] = absl::Status(s.code(), absl::StrCat(PairName(handles[i]), ": ", s.message()));
      continue;
    }
    variables.push_back(var);
  }

  PSD_RETURN_IF_ERROR(EnsureSlots(variables));
  PSD_ASSIGN_OR_RETURN(const OptimizerConfig step_config, StepConfig());

  // One op per (pair, part); parts answered "stale handle" are rebuilt from
  // a refreshed handle and sent once more.
  struct PartOp {
    size_t pair;
    int part;
  };
  std::vector<PartOp> pending;
  std::map<std::string, std::vector<Variable>> slots;
  {
    absl::MutexLock lock(&mu_);
    slots = slots_;
  }
  std::vector<size_t> tables;  // pairs of embedding tables, applied by key
  for (size_t i = 0; i < n; ++i) {
    if (!result[i].ok()) continue;
    if (handles[i].has_embedding()) {
      tables.push_back(i);
      continue;
    }
    for (int k = 0; k < handles[i].parts_size(); ++k) pending.push_back({i, k});
  }
  // Sparse gradients split by part once (part ranges never change).
  std::map<size_t, std::vector<SparseGradient>> sparse_parts;
  for (size_t i = 0; i < n; ++i) {
    if (!result[i].ok() || handles[i].has_embedding()) continue;
    const auto* g = std::get_if<IndexedSlices>(&grads_and_vars[i].first);
    if (g == nullptr) continue;
    const VariableHandle& h = handles[i];
    // A partitioned variable's rows of repeated indices are summed before
    // the split (the indices are checked, and its shape cannot change), so
    // each part copies each row once. An unpartitioned variable's shape on
    // its shard may differ from the handle's (assign with
    // validate_shape=false): ShardApplier merges its gradient, and resends
    // it as given if the shard refuses it.
    IndexedSlices merged_slices;
    std::optional<internal::MergedRows> merged;
    if (h.partitioned()) {
      merged = internal::MergeDuplicateRows(g->indices, g->values, internal::MergeKind::kSum,
                                            h.shape().dims(0));
    }
    if (merged.has_value()) {
      merged_slices = {std::move(merged->rows), std::move(merged->indices), g->dense_shape};
      g = &merged_slices;
    }
    std::vector<int64_t> indices(static_cast<size_t>(g->indices.num_elements()));
    for (size_t j = 0; j < indices.size(); ++j) {
      indices[j] = IndexAt(g->indices, static_cast<int64_t>(j));
    }
    const std::vector<std::vector<int64_t>> positions = internal::PositionsByPart(h, indices);
    auto& parts = sparse_parts[i];
    for (int k = 0; k < h.parts_size(); ++k) {
      const PartHandle& p = h.parts(k);
      parts.push_back(TakeRows(*g, positions[k], p.offset_size() > 0 ? p.offset(0) : 0));
    }
  }

  std::vector<std::vector<absl::Status>> part_status(n);
  for (size_t i = 0; i < n; ++i) part_status[i].resize(handles[i].parts_size());

  // Tables: keys split by hash, each part with its slot tables' parts
  // (EmbeddingVariable::ApplySparse), tables in parallel.
  const OptimizerSpec step_spec = internal::OptimizerSpecOf(step_config);
  std::vector<absl::Status> table_status = RunParallel(tables.size(), [&](size_t t) {
    const size_t i = tables[t];
    PSD_ASSIGN_OR_RETURN(EmbeddingVariable table, EmbeddingVariable::Of(grads_and_vars[i].second));
    std::vector<EmbeddingVariable> slot_tables;
    for (const Variable& slot : slots[handles[i].name()]) {
      PSD_ASSIGN_OR_RETURN(EmbeddingVariable s, EmbeddingVariable::Of(slot));
      slot_tables.push_back(std::move(s));
    }
    const auto& g = std::get<IndexedSlices>(grads_and_vars[i].first);
    KeyedOpOptions keyed;
    keyed.global_step = options.global_step;
    return table.ApplySparse(step_spec, slot_tables, g.indices, g.values, keyed);
  });
  for (size_t t = 0; t < tables.size(); ++t) {
    for (auto& ps : part_status[tables[t]]) ps = table_status[t];
  }

  // Each op's request ids, drawn by its first attempt and sent again by
  // the later ones: after a failover the new primary's replicated request
  // window answers an apply the lost primary made, instead of applying it
  // twice.
  std::map<std::pair<size_t, int>, RequestId> op_ids;
  const absl::Time first_attempt = absl::Now();
  absl::Duration pause = absl::Milliseconds(100);
  for (int attempt = 0; !pending.empty(); ++attempt) {
    // Group the ops by (shard address, incarnation).
    struct Group {
      PartHandle part;  // any part on the shard (for ShardFor)
      std::vector<PartOp> ops;
      std::vector<GradientAndVariable> grads;
      std::vector<RequestId> ids;  // by op: as op_ids (unset: drawn when sent)
    };
    std::map<std::pair<std::string, uint64_t>, Group> groups;
    for (const PartOp& op : pending) {
      const VariableHandle& h = handles[op.pair];
      const PartHandle& part = h.parts(op.part);
      absl::Status& status = part_status[op.pair][op.part];
      if (part.lost()) {
        status = absl::UnavailableError(absl::StrCat("part ", part.name(), " is lost: shard ",
                                                     part.shard_id(), " restarted without it"));
        continue;
      }
      std::vector<std::string> slot_names;
      bool misplaced = false;
      for (const Variable& slot : slots[h.name()]) {
        const std::vector<PartInfo> sp = slot.parts();
        if (static_cast<int>(sp.size()) != h.parts_size() ||
            sp[op.part].shard_address != part.shard_address()) {
          // A part that moved to another shard (with its slots) leaves
          // cached handles of both behind: refreshed once, like a stale
          // handle, before the placement counts as wrong.
          status = attempt == 0
                       ? absl::AbortedError(absl::StrCat("stale handle: slot ", slot.name(),
                                                         " is cached apart from ", h.name()))
                       : absl::FailedPreconditionError(
                             absl::StrCat("slot ", slot.name(), " is not placed like ", h.name(),
                                          " (was it declared without colocate_with?)"));
          misplaced = true;
          break;
        }
        slot_names.push_back(sp[op.part].name);
      }
      if (misplaced) continue;
      const Gradient& gradient = grads_and_vars[op.pair].first;
      Group& g = groups[{part.shard_address(), part.shard_incarnation()}];
      if (g.ops.empty()) g.part = part;
      g.ops.push_back(op);
      if (const Tensor* dense = std::get_if<Tensor>(&gradient)) {
        Tensor piece = h.partitioned()
                           ? SliceAlong(*dense, h.partition_axis(), part.offset(h.partition_axis()),
                                        part.shape().dims(h.partition_axis()))
                           : *dense;
        g.grads.emplace_back(part.name(), std::move(piece));
      } else {
        g.grads.emplace_back(part.name(), sparse_parts[op.pair][op.part]);
      }
      g.grads.back().slots = std::move(slot_names);
      g.ids.push_back(op_ids[{op.pair, op.part}]);
    }

    std::vector<Group*> list;
    for (auto& [key, g] : groups) list.push_back(&g);
    const size_t budget =
        static_cast<size_t>(session_.impl_->options_.shard.max_message_bytes) / 2;
    RunParallel(list.size(), [&](size_t gi) -> absl::Status {
      Group& g = *list[gi];
      std::vector<absl::Status> out(g.ops.size());
      // The session's pooled client of the shard (the one its variables
      // use), checked against the part's incarnation.
      absl::StatusOr<std::shared_ptr<ShardClient>> shard = session_.impl_->ShardFor(g.part);
      if (!shard.ok()) {
        for (auto& s : out) s = shard.status();
      } else {
        ShardApplier applier(*std::move(shard));
        // One Batch message per shard, split only past the message limit.
        size_t begin = 0;
        while (begin < g.grads.size()) {
          size_t end = begin, bytes = 0;
          while (end < g.grads.size() && (end == begin || bytes < budget)) {
            const auto& gr = g.grads[end].gradient;
            bytes += std::holds_alternative<Tensor>(gr)
                         ? std::get<Tensor>(gr).bytes().size()
                         : std::get<SparseGradient>(gr).values.bytes().size() +
                               std::get<SparseGradient>(gr).indices.bytes().size();
            ++end;
          }
          std::vector<GradientAndVariable> chunk(g.grads.begin() + begin, g.grads.begin() + end);
          std::vector<absl::Status> chunk_status;
          std::vector<RequestId> chunk_ids(chunk.size());
          for (size_t j = begin; j < end; ++j) chunk_ids[j - begin] = g.ids[j];
          absl::Status s = applier.ApplyGradients(step_config, chunk, &chunk_status, &chunk_ids);
          for (size_t j = begin; j < end && chunk_ids.size() == chunk.size(); ++j) {
            g.ids[j] = chunk_ids[j - begin];
          }
          for (size_t j = begin; j < end; ++j) {
            out[j] = chunk_status.size() == chunk.size() ? chunk_status[j - begin] : s;
          }
          begin = end;
        }
      }
      for (size_t j = 0; j < g.ops.size(); ++j) {
        part_status[g.ops[j].pair][g.ops[j].part] = out[j];
      }
      return absl::OkStatus();
    });

    for (Group* g : list) {
      for (size_t j = 0; j < g->ops.size(); ++j) op_ids[{g->ops[j].pair, g->ops[j].part}] = g->ids[j];
    }

    // Stale parts (moved; the shard restarted) are refreshed and sent once
    // more; parts of replicated variables whose shard is unreachable or
    // without its lease, until the session's failover_wait has passed (a
    // backup is being promoted), with the same request ids.
    std::vector<PartOp> stale;
    std::set<size_t> refresh;
    bool failing_over = false;
    for (const PartOp& op : pending) {
      const absl::Status& ps = part_status[op.pair][op.part];
      if (MayBeFailingOver(ps, handles[op.pair].parts(op.part))) {
        failing_over = true;
      } else if (!IsStaleHandle(ps)) {
        continue;
      }
      stale.push_back(op);
      refresh.insert(op.pair);
    }
    if (stale.empty()) break;
    if (failing_over) {
      if (absl::Now() - first_attempt >= session_.impl_->options_.failover_wait) break;
    } else if (attempt >= 1) {
      break;
    }
    std::map<std::pair<size_t, int>, std::pair<int32_t, uint64_t>> placed_before;
    for (const PartOp& op : stale) {
      const PartHandle& p = handles[op.pair].parts(op.part);
      placed_before[{op.pair, op.part}] = {p.shard_id(), p.shard_incarnation()};
    }
    // A pair whose refresh fails, or which was re-partitioned, keeps that
    // error on its retried parts; the others go again.
    std::map<size_t, absl::Status> refresh_failed;
    for (size_t i : refresh) {
      Variable var = grads_and_vars[i].second;
      absl::Status s = var.Refresh();
      for (Variable slot : slots[handles[i].name()]) {
        if (s.ok()) s = slot.Refresh();
      }
      if (!s.ok()) {
        refresh_failed[i] = s;
        continue;
      }
      const VariableHandle fresh = var.handle();
      if (fresh.parts_size() != handles[i].parts_size()) {
        refresh_failed[i] = absl::AbortedError(
            absl::StrCat("stale handle: ", handles[i].name(), " was re-partitioned"));
        continue;
      }
      handles[i] = fresh;
    }
    pending.clear();
    bool placement_changed = false;
    for (const PartOp& op : stale) {
      if (auto failed = refresh_failed.find(op.pair); failed != refresh_failed.end()) {
        part_status[op.pair][op.part] = failed->second;
        continue;
      }
      const PartHandle& p = handles[op.pair].parts(op.part);
      placement_changed = placement_changed ||
                          placed_before[{op.pair, op.part}] !=
                              std::make_pair(p.shard_id(), p.shard_incarnation());
      pending.push_back(op);
    }
    if (failing_over && !placement_changed && !pending.empty()) {
      // No backup promoted yet: wait a little before the next attempt.
      absl::SleepFor(pause);
      pause = std::min(pause * 2, absl::Seconds(1));
    }
  }

  bool any_applied = false;
  for (size_t i = 0; i < n; ++i) {
    if (!result[i].ok()) continue;
    for (int k = 0; k < handles[i].parts_size(); ++k) {
      const absl::Status& s = part_status[i][k];
      if (s.ok()) {
        any_applied = true;
        continue;
      }
      if (result[i].ok()) {
        result[i] =
            absl::Status(s.code(), handles[i].partitioned()
                                       ? absl::StrCat(PairName(handles[i]), ", part ",
                                                      handles[i].parts(k).name(), ": ", s.message())
                                       : absl::StrCat(PairName(handles[i]), ": ", s.message()));
      }
    }
  }
  absl::Status first;
  for (const absl::Status& s : result) {
    if (first.ok() && !s.ok()) first = s;
  }
  if (any_applied) {
    absl::Status finished = FinishAdam();
    if (first.ok()) first = finished;
  }
  if (statuses != nullptr) *statuses = std::move(result);
  return first;
}

}  // namespace client
}  // namespace psd
