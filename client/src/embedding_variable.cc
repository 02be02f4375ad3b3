// EmbeddingVariable (psd/embedding_variable.h): keys deduplicated, split by
// PartOfKey across the table's parts, sent in parallel, results put back in
// the caller's order.
#include "psd/embedding_variable.h"

#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "psd/dtype.h"
#include "psd/embedding_keys.h"
#include "psd/shard.pb.h"
#include "psd/status.h"
#include "session_impl.h"
#include "sparse_merge.h"

namespace psd {
namespace client {

using internal::VariableState;

namespace {

std::string Quoted(const std::string& name) { return absl::StrCat("embedding table '", name, "'"); }

// A request's keys: distinct ones in first-occurrence order, where each
// input position's key went, and which part each distinct key belongs to.
struct KeySplit {
  std::vector<int64_t> distinct;
  std::vector<int64_t> inverse;  // input position -> index into distinct
  // For each part with keys: the part, and the indices into `distinct`.
  std::vector<int> parts;
  std::vector<std::vector<int64_t>> members;
};

absl::StatusOr<KeySplit> SplitKeys(const VariableHandle& h, const Tensor& keys,
                                   absl::string_view op) {
  const DataType key_dtype = h.embedding().key_dtype();
  if (keys.dtype() != key_dtype) {
    return absl::InvalidArgumentError(absl::StrCat(op, " on ", Quoted(h.name()), ": keys are ",
                                                   DataTypeName(keys.dtype()),
                                                   ", the table's keys are ",
                                                   DataTypeName(key_dtype)));
  }
  const int64_t n = keys.num_elements();
  KeySplit split;
  split.inverse.resize(n);
  absl::flat_hash_map<int64_t, int64_t> seen;
  seen.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k =
        key_dtype == DT_INT32 ? int64_t{keys.data<int32_t>()[i]} : keys.data<int64_t>()[i];
    auto [it, fresh] = seen.emplace(k, static_cast<int64_t>(split.distinct.size()));
    if (fresh) split.distinct.push_back(k);
    split.inverse[i] = it->second;
  }
  const int num_parts = h.parts_size();
  std::vector<std::vector<int64_t>> by_part(num_parts);
  for (size_t j = 0; j < split.distinct.size(); ++j) {
    by_part[PartOfKey(split.distinct[j], num_parts)].push_back(static_cast<int64_t>(j));
  }
  for (int p = 0; p < num_parts; ++p) {
    if (by_part[p].empty()) continue;
    split.parts.push_back(p);
    split.members.push_back(std::move(by_part[p]));
  }
  return split;
}

// The keys of `split.distinct` at `members`, as a tensor of `key_dtype`.
Tensor KeysTensor(const std::vector<int64_t>& distinct, const std::vector<int64_t>& members,
                  DataType key_dtype) {
  Tensor t(key_dtype, TensorShape({static_cast<int64_t>(members.size())}));
  for (size_t i = 0; i < members.size(); ++i) {
    const int64_t k = distinct[members[i]];
    if (key_dtype == DT_INT32) {
      t.data<int32_t>()[i] = static_cast<int32_t>(k);
    } else {
      t.data<int64_t>()[i] = k;
    }
  }
  return t;
}

// Runs fn(i, k, part, shard) for each part k holding keys of `split` (i
// its position in split.parts), the parts in parallel (VariableState's
// stale-handle and lost-part rules apply).
absl::Status ForSplitParts(
    VariableState* state, const KeySplit& split,
    const std::function<absl::Status(size_t i, int k, const PartHandle&, ShardClient&)>& fn) {
  if (split.parts.empty()) return absl::OkStatus();
  std::map<int, size_t> position;
  for (size_t i = 0; i < split.parts.size(); ++i) position[split.parts[i]] = i;
  return state->ForParts(split.parts, [&](int k, const PartHandle& p, ShardClient& shard) {
    return fn(position.at(k), k, p, shard);
  });
}

// Rows `members` of a [m, dim] tensor, as a [members, dim] tensor.
Tensor RowsOf(const Tensor& rows, const std::vector<int64_t>& members, int64_t row_bytes) {
  Tensor t;  // every byte is written below
  t.ResetForOverwrite(rows.dtype(), TensorShape({static_cast<int64_t>(members.size()),
                                                 rows.shape().dims().back()}));
  char* out = t.mutable_bytes()->data();
  const char* in = rows.bytes().data();
  for (size_t i = 0; i < members.size(); ++i) {
    std::memcpy(out + i * row_bytes, in + members[i] * row_bytes, row_bytes);
  }
  return t;
}

// Index of each part in the handle by name order: parts are "name/part_K"
// in K order as the coordinator lists them.
absl::Status CheckTable(const VariableHandle& h) {
  if (!h.has_embedding()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", h.name(), "' is a dense variable, not an embedding table"));
  }
  if (h.parts_size() == 0) {
    return absl::InternalError(absl::StrCat(Quoted(h.name()), " has no parts in its handle"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EmbeddingVariable> EmbeddingVariable::Of(Variable v) {
  if (!v.valid()) return absl::InvalidArgumentError("not a variable");
  PSD_RETURN_IF_ERROR(CheckTable(v.handle()));
  return EmbeddingVariable(std::move(v));
}

DataType EmbeddingVariable::key_dtype() const { return spec().key_dtype(); }
int64_t EmbeddingVariable::embedding_dim() const { return spec().embedding_dim(); }
EmbeddingSpec EmbeddingVariable::spec() const { return variable_.handle().embedding(); }
int EmbeddingVariable::num_parts() const { return variable_.handle().parts_size(); }
std::vector<PartInfo> EmbeddingVariable::parts() const { return variable_.parts(); }

absl::StatusOr<Tensor> EmbeddingVariable::Gather(const Tensor& keys,
                                                 const KeyedOpOptions& options) const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  PSD_ASSIGN_OR_RETURN(KeySplit split, SplitKeys(h, keys, "gather"));
  const int64_t dim = h.embedding().embedding_dim();
  if (split.parts.empty()) {
    std::vector<int64_t> dims = keys.shape().dims();
    dims.push_back(dim);
    return Tensor(h.dtype(), TensorShape(dims));
  }
  const int64_t row_bytes = dim * static_cast<int64_t>(DataTypeSize(h.dtype()));
  std::vector<Tensor> results(split.parts.size());
  PSD_RETURN_IF_ERROR(ForSplitParts(
      state, split, [&](size_t i, int k, const PartHandle& p, ShardClient& shard) -> absl::Status {
        PSD_ASSIGN_OR_RETURN(results[i],
                             shard.GatherByKey(p.name(),
                                               KeysTensor(split.distinct, split.members[i],
                                                          h.embedding().key_dtype()),
                                               options));
        if (results[i].dtype() != h.dtype() ||
            results[i].num_elements() !=
                static_cast<int64_t>(split.members[i].size()) * dim) {
          return absl::InternalError(absl::StrCat("shard ", p.shard_address(), " answered ",
                                                  results[i].shape().ToString(), " rows of ",
                                                  p.name(), " for ", split.members[i].size(),
                                                  " keys"));
        }
        return absl::OkStatus();
      }));
  // Where each distinct key's row arrived, then each input position's row
  // copied once from there.
  std::vector<const char*> row_of(split.distinct.size());
  for (size_t i = 0; i < results.size(); ++i) {
    const char* in = results[i].bytes().data();
    for (size_t j = 0; j < split.members[i].size(); ++j) {
      row_of[split.members[i][j]] = in + j * row_bytes;
    }
  }
  std::vector<int64_t> dims = keys.shape().dims();
  dims.push_back(dim);
  Tensor out;
  out.ResetForOverwrite(h.dtype(), TensorShape(dims));
  char* dst = out.mutable_bytes()->data();
  for (size_t i = 0; i < split.inverse.size(); ++i) {
    std::memcpy(dst + i * row_bytes, row_of[split.inverse[i]], row_bytes);
  }
  return out;
}

absl::Status EmbeddingVariable::Scatter(UpdateKind op, const Tensor& keys, const Tensor& rows,
                                        const KeyedOpOptions& options) const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  const char* op_name = op == UpdateKind::kAdd   ? "scatter_add"
                        : op == UpdateKind::kSub ? "scatter_sub"
                                                 : "scatter_update";
  PSD_ASSIGN_OR_RETURN(KeySplit split, SplitKeys(h, keys, op_name));
  const int64_t dim = h.embedding().embedding_dim();
  if (rows.dtype() != h.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat(op_name, " on ", Quoted(h.name()),
                                                   ": rows are ", DataTypeName(rows.dtype()),
                                                   ", the table holds ", DataTypeName(h.dtype())));
  }
  const bool scalar = rows.shape().rank() == 0;
  std::vector<int64_t> want = keys.shape().dims();
  want.push_back(dim);
  if (!scalar && rows.shape().dims() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        op_name, " on ", Quoted(h.name()), ": rows must have shape keys.shape + [dim] = ",
        TensorShape(want).ToString(), " (or be a scalar), got ", rows.shape().ToString()));
  }
  // Rows by distinct key: repeated keys merged as the shard would apply
  // them (internal::MergeDuplicateRows, over each key's first position).
  // Without repeats the caller's rows are in distinct-key order already.
  const Tensor* distinct_rows = &rows;
  std::optional<internal::MergedRows> merged;
  const int64_t row_bytes = dim * static_cast<int64_t>(DataTypeSize(h.dtype()));
  if (!scalar && split.distinct.size() != split.inverse.size()) {
    // Each position's distinct-key number, shaped as the keys, so the rows
    // line up with it as they are.
    PSD_ASSIGN_OR_RETURN(Tensor ids, Tensor::FromVector(keys.shape(), split.inverse));
    merged = internal::MergeDuplicateRows(ids, rows, internal::MergeKindOf(op),
                                          static_cast<int64_t>(split.distinct.size()));
    if (!merged.has_value()) {
      return absl::InternalError(absl::StrCat(op_name, " on ", Quoted(h.name()),
                                              ": repeated keys could not be merged"));
    }
    distinct_rows = &merged->rows;
  }
  return ForSplitParts(state, split, [&](size_t i, int k, const PartHandle& p, ShardClient& shard) {
    return shard.ScatterByKey(
        op, p.name(), KeysTensor(split.distinct, split.members[i], h.embedding().key_dtype()),
        scalar ? rows : RowsOf(*distinct_rows, split.members[i], row_bytes), options);
  });
}

absl::Status EmbeddingVariable::ScatterUpdate(const Tensor& keys, const Tensor& rows,
                                              const KeyedOpOptions& options) const {
  return Scatter(UpdateKind::kAssign, keys, rows, options);
}
absl::Status EmbeddingVariable::ScatterAdd(const Tensor& keys, const Tensor& rows,
                                           const KeyedOpOptions& options) const {
  return Scatter(UpdateKind::kAdd, keys, rows, options);
}
absl::Status EmbeddingVariable::ScatterSub(const Tensor& keys, const Tensor& rows,
                                           const KeyedOpOptions& options) const {
  return Scatter(UpdateKind::kSub, keys, rows, options);
}

absl::Status EmbeddingVariable::ApplySparse(const OptimizerSpec& optimizer,
                                            const std::vector<EmbeddingVariable>& slots,
                                            const Tensor& keys, const Tensor& grads,
                                            const KeyedOpOptions& options) const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  PSD_ASSIGN_OR_RETURN(KeySplit split, SplitKeys(h, keys, "sparse apply"));
  const int64_t dim = h.embedding().embedding_dim();
  if (keys.shape().rank() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("sparse apply on ", Quoted(h.name()),
                                                   ": keys must be a vector, have shape ",
                                                   keys.shape().ToString()));
  }
  const int64_t n = keys.num_elements();
  if (grads.dtype() != h.dtype() || grads.shape() != TensorShape({n, dim})) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sparse apply on ", Quoted(h.name()), ": gradient rows must be ",
        DataTypeName(h.dtype()), " of shape [", n, ", ", dim, "], got ",
        DataTypeName(grads.dtype()), " of shape ", grads.shape().ToString()));
  }
  std::vector<VariableHandle> slot_handles;
  for (const EmbeddingVariable& s : slots) {
    if (!s.valid()) return absl::InvalidArgumentError("sparse apply: an invalid slot table");
    slot_handles.push_back(s.variable_.handle());
    if (slot_handles.back().parts_size() != h.parts_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sparse apply on ", Quoted(h.name()), ": slot ", Quoted(s.name()), " has ",
          slot_handles.back().parts_size(), " parts, the table ", h.parts_size()));
    }
  }
  // Gradients of repeated keys are summed in arrival order, as the shard's
  // SparseApply sums them.
  const Tensor* distinct_grads = &grads;
  std::optional<internal::MergedRows> merged;
  if (split.distinct.size() != split.inverse.size()) {
    PSD_ASSIGN_OR_RETURN(Tensor ids, Tensor::FromVector(TensorShape({n}), split.inverse));
    merged = internal::MergeDuplicateRows(ids, grads, internal::MergeKind::kSum,
                                          static_cast<int64_t>(split.distinct.size()));
    if (!merged.has_value()) {
      return absl::InternalError(absl::StrCat("sparse apply on ", Quoted(h.name()),
                                              ": repeated keys could not be merged"));
    }
    distinct_grads = &merged->rows;
  }
  const int64_t row_bytes = dim * static_cast<int64_t>(DataTypeSize(h.dtype()));
  return ForSplitParts(state, split, [&](size_t i, int k, const PartHandle& p, ShardClient& shard) {
    std::vector<std::string> slot_names;
    for (const VariableHandle& s : slot_handles) slot_names.push_back(s.parts(k).name());
    return shard.ApplySparseByKey(
        p.name(), slot_names, optimizer,
        KeysTensor(split.distinct, split.members[i], h.embedding().key_dtype()),
        RowsOf(*distinct_grads, split.members[i], row_bytes), options);
  });
}

absl::StatusOr<int64_t> EmbeddingVariable::Size() const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  std::vector<int64_t> rows(h.parts_size(), 0);
  PSD_RETURN_IF_ERROR(state->ForParts({}, [&](int k, const PartHandle& p, ShardClient& shard) {
    PSD_ASSIGN_OR_RETURN(VariableInfo info, shard.Lookup(p.name()));
    rows[k] = info.shape.rank() > 0 ? info.shape.dim(0) : 0;
    return absl::OkStatus();
  }));
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  return total;
}

absl::StatusOr<EmbeddingRowSet> EmbeddingVariable::Export(
    const std::vector<EmbeddingVariable>& slots) const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  std::vector<VariableHandle> slot_handles;
  for (const EmbeddingVariable& s : slots) slot_handles.push_back(s.variable_.handle());
  std::vector<EmbeddingRowSet> parts(h.parts_size());
  PSD_RETURN_IF_ERROR(state->ForParts({}, [&](int k, const PartHandle& p, ShardClient& shard) {
    std::vector<std::string> slot_names;
    for (const VariableHandle& s : slot_handles) {
      if (s.parts_size() != h.parts_size()) {
        return absl::InvalidArgumentError(absl::StrCat("export of ", Quoted(h.name()), ": slot '",
                                                       s.name(), "' has another part count"));
      }
      slot_names.push_back(s.parts(k).name());
    }
    PSD_ASSIGN_OR_RETURN(parts[k], shard.ExportEmbedding(p.name(), slot_names));
    return absl::OkStatus();
  }));
  // Concatenated part after part.
  auto concat = [](std::vector<const Tensor*> pieces, DataType dtype,
                   int64_t row) -> Tensor {
    int64_t n = 0;
    for (const Tensor* t : pieces) n += row > 0 ? t->num_elements() / row : 0;
    std::vector<int64_t> dims = {n};
    if (row > 1) dims.push_back(row);
    Tensor out;
    out.ResetForOverwrite(dtype, TensorShape(dims));
    size_t at = 0;
    for (const Tensor* t : pieces) {
      std::memcpy(out.mutable_bytes()->data() + at, t->bytes().data(), t->bytes().size());
      at += t->bytes().size();
    }
    return out;
  };
  const int64_t dim = h.embedding().embedding_dim();
  std::vector<const Tensor*> keys, values, freqs, versions;
  for (const EmbeddingRowSet& p : parts) {
    keys.push_back(&p.keys);
    values.push_back(&p.values);
    freqs.push_back(&p.freqs);
    versions.push_back(&p.versions);
  }
  EmbeddingRowSet out;
  out.keys = concat(keys, h.embedding().key_dtype(), 1);
  out.values = concat(values, h.dtype(), dim);
  out.freqs = concat(freqs, DT_INT64, 1);
  out.versions = concat(versions, DT_INT64, 1);
  for (size_t s = 0; s < slots.size(); ++s) {
    std::vector<const Tensor*> pieces;
    for (const EmbeddingRowSet& p : parts) pieces.push_back(&p.slot_values[s]);
    out.slot_values.push_back(concat(pieces, h.dtype(), dim));
  }
  return out;
}

absl::Status EmbeddingVariable::Import(const EmbeddingRowSet& rows,
                                       const std::vector<EmbeddingVariable>& slots) const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  PSD_ASSIGN_OR_RETURN(KeySplit split, SplitKeys(h, rows.keys, "import"));
  const int64_t n = rows.keys.num_elements();
  const int64_t dim = h.embedding().embedding_dim();
  if (static_cast<int64_t>(split.distinct.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("import into ", Quoted(h.name()), ": keys repeat; give each key once"));
  }
  auto check_rows = [&](const Tensor& t, const std::string& what) -> absl::Status {
    if (t.dtype() != h.dtype() || t.shape() != TensorShape({n, dim})) {
      return absl::InvalidArgumentError(absl::StrCat(
          "import into ", Quoted(h.name()), ": ", what, " must be ", DataTypeName(h.dtype()),
          " of shape [", n, ", ", dim, "], got ", DataTypeName(t.dtype()), " ",
          t.shape().ToString()));
    }
    return absl::OkStatus();
  };
  PSD_RETURN_IF_ERROR(check_rows(rows.values, "values"));
  if (rows.slot_values.size() != slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat("import into ", Quoted(h.name()), ": ",
                                                   slots.size(), " slots, ",
                                                   rows.slot_values.size(), " slot values"));
  }
  for (size_t s = 0; s < slots.size(); ++s) {
    PSD_RETURN_IF_ERROR(check_rows(rows.slot_values[s], absl::StrCat("slot ", s, " values")));
  }
  auto check_counts = [&](const Tensor& t, const char* what) -> absl::Status {
    if (t.num_elements() == 0) return absl::OkStatus();
    if (t.dtype() != DT_INT64 || t.shape() != TensorShape({n})) {
      return absl::InvalidArgumentError(absl::StrCat("import into ", Quoted(h.name()), ": ", what,
                                                     " must be int64 of shape [", n, "] or empty"));
    }
    return absl::OkStatus();
  };
  PSD_RETURN_IF_ERROR(check_counts(rows.freqs, "freqs"));
  PSD_RETURN_IF_ERROR(check_counts(rows.versions, "versions"));
  std::vector<VariableHandle> slot_handles;
  for (const EmbeddingVariable& s : slots) slot_handles.push_back(s.variable_.handle());
  const int64_t row_bytes = dim * static_cast<int64_t>(DataTypeSize(h.dtype()));
  return ForSplitParts(state, split, [&](size_t i, int k, const PartHandle& p, ShardClient& shard) {
    const std::vector<int64_t>& m = split.members[i];
    EmbeddingRowSet piece;
    piece.keys = KeysTensor(split.distinct, m, h.embedding().key_dtype());
    piece.values = RowsOf(rows.values, m, row_bytes);
    auto counts = [&](const Tensor& t) {
      if (t.num_elements() == 0) return Tensor();
      Tensor out(DT_INT64, TensorShape({static_cast<int64_t>(m.size())}));
      for (size_t j = 0; j < m.size(); ++j) out.data<int64_t>()[j] = t.data<int64_t>()[m[j]];
      return out;
    };
    piece.freqs = counts(rows.freqs);
    piece.versions = counts(rows.versions);
    std::vector<std::string> slot_names;
    for (size_t s = 0; s < slot_handles.size(); ++s) {
      if (slot_handles[s].parts_size() != h.parts_size()) {
        return absl::InvalidArgumentError(absl::StrCat("import into ", Quoted(h.name()),
                                                       ": slot '", slot_handles[s].name(),
                                                       "' has another part count"));
      }
      slot_names.push_back(slot_handles[s].parts(k).name());
      piece.slot_values.push_back(RowsOf(rows.slot_values[s], m, row_bytes));
    }
    return shard.ImportEmbedding(p.name(), slot_names, piece).status();
  });
}

absl::StatusOr<int64_t> EmbeddingVariable::DeleteKeys(const Tensor& keys) const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  PSD_ASSIGN_OR_RETURN(KeySplit split, SplitKeys(h, keys, "delete_keys"));
  if (split.parts.empty()) return 0;
  std::vector<int64_t> deleted(split.parts.size(), 0);
  PSD_RETURN_IF_ERROR(
      ForSplitParts(state, split, [&](size_t i, int k, const PartHandle& p, ShardClient& shard) {
        PSD_ASSIGN_OR_RETURN(
            deleted[i],
            shard.DeleteEmbeddingKeys(
                p.name(), KeysTensor(split.distinct, split.members[i], h.embedding().key_dtype())));
        return absl::OkStatus();
      }));
  int64_t total = 0;
  for (int64_t d : deleted) total += d;
  return total;
}

absl::StatusOr<int64_t> EmbeddingVariable::Evict(int64_t global_step) const {
  VariableState* state = VariableState::Of(variable_);
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  std::vector<int64_t> evicted(h.parts_size(), 0);
  PSD_RETURN_IF_ERROR(state->ForParts({}, [&](int k, const PartHandle& p, ShardClient& shard) {
    PSD_ASSIGN_OR_RETURN(evicted[k], shard.EvictEmbedding(p.name(), global_step));
    return absl::OkStatus();
  }));
  int64_t total = 0;
  for (int64_t e : evicted) total += e;
  return total;
}

}  // namespace client
}  // namespace psd
