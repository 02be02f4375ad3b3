#include "psd/variable.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/container/fixed_array.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "psd/dtype.h"
#include "psd/status.h"
#include "psd/update_kind.h"
#include "psd/wire.h"
#include "request_ids.h"
#include "session_impl.h"
#include "sparse_merge.h"

namespace psd {
namespace client {
namespace internal {

absl::Status VariableState::Refresh() {
  PSD_ASSIGN_OR_RETURN(VariableHandle fresh, session->Lookup(name));
  auto shared = std::make_shared<const VariableHandle>(std::move(fresh));
  absl::MutexLock lock(&mu);
  handle = std::move(shared);
  return absl::OkStatus();
}

namespace {

absl::Status LostPart(const VariableHandle& h, const PartHandle& p) {
  return absl::UnavailableError(absl::StrCat("part ", p.name(), " of variable ", h.name(),
                                             " is lost: shard ", p.shard_id(), " (",
                                             p.shard_address(),
                                             ") restarted without it; restore it from a "
                                             "checkpoint"));
}

bool SameRange(const PartHandle& a, const PartHandle& b) {
  return a.name() == b.name() &&
         std::equal(a.offset().begin(), a.offset().end(), b.offset().begin(), b.offset().end()) &&
         std::equal(a.shape().dims().begin(), a.shape().dims().end(), b.shape().dims().begin(),
                    b.shape().dims().end());
}

}  // namespace

absl::Status VariableState::ForParts(
    const std::vector<int>& which,
    const std::function<absl::Status(int k, const PartHandle& part, ShardClient& shard)>& fn) {
  std::shared_ptr<const VariableHandle> current = Current();
  const VariableHandle* h = current.get();
  std::vector<int> todo = which;
  if (todo.empty()) {
    for (int k = 0; k < h->parts_size(); ++k) todo.push_back(k);
  }
  // Per part: the request ids of its first attempt, sent again by later
  // ones, so a write the lost primary applied is recognised where the
  // part lives now (request_ids.h).
  absl::FixedArray<RequestIdCarry, 4> carries(static_cast<size_t>(h->parts_size()));
  const absl::Time start = absl::Now();
  absl::Duration pause = absl::Milliseconds(100);
  bool stale_refreshed = false;
  for (;;) {
    std::vector<absl::Status> statuses = RunParallel(todo.size(), [&](size_t i) -> absl::Status {
      const PartHandle& part = h->parts(todo[i]);
      if (part.lost()) return LostPart(*h, part);
      RequestIdCarry::Attempt carried(&carries[todo[i]]);
      PSD_ASSIGN_OR_RETURN(auto shard, session->ShardFor(part));
      absl::Status s = fn(todo[i], part, *shard);
      if (!s.ok() && !IsStaleHandle(s)) {
        return absl::Status(s.code(), absl::StrCat(s.message(), h->parts_size() > 1
                                                                    ? absl::StrCat(" (part ", part.name(), " on shard ",
                                                                                   part.shard_id(), ")")
                                                                    : std::string()));
      }
      return s;
    });
    // Parts to try again once the handle is refreshed: those answered
    // "stale handle" (moved; the shard restarted), and replicated parts
    // whose shard is unreachable or has no lease (a failover may be under
    // way).
    std::vector<int> again;
    bool failing_over = false;
    absl::Status first;
    for (size_t i = 0; i < todo.size(); ++i) {
      const absl::Status& s = statuses[i];
      if (MayBeFailingOver(s, h->parts(todo[i]))) {
        again.push_back(todo[i]);
        failing_over = true;
      } else if (IsStaleHandle(s)) {
        again.push_back(todo[i]);
      } else if (!s.ok()) {
        return s;  // final: other failures are not cured by a new handle
      }
      if (first.ok() && !s.ok()) first = s;
    }
    if (again.empty()) return first;
    if (failing_over) {
      if (absl::Now() - start >= session->options_.failover_wait) return first;
    } else if (stale_refreshed) {
      return first;  // one refresh cures a stale handle
    }
    stale_refreshed = true;
    if (absl::Status refreshed = Refresh(); !refreshed.ok()) {
      // The shard's answer says what happened to the variable; the
      // coordinator's, why no new placement could be had (e.g. the whole
      // cluster is down).
      return absl::Status(first.code(), absl::StrCat(first.message(),
                                                     "; and its placement could not be "
                                                     "refreshed: ",
                                                     refreshed.ToString()));
    }
    std::shared_ptr<const VariableHandle> fresh = Current();
    bool placement_changed = false;
    for (int k : again) {
      if (k >= fresh->parts_size() || !SameRange(h->parts(k), fresh->parts(k))) {
        return absl::AbortedError(absl::StrCat("stale handle: variable ", name,
                                               " was re-declared with other parts; get it again"));
      }
      placement_changed = placement_changed ||
                          fresh->parts(k).shard_id() != h->parts(k).shard_id() ||
                          fresh->parts(k).shard_incarnation() != h->parts(k).shard_incarnation();
    }
    if (failing_over && !placement_changed) {
      // The coordinator has not promoted a backup yet: wait a little.
      absl::SleepFor(pause);
      pause = std::min(pause * 2, absl::Seconds(1));
    }
    current = std::move(fresh);
    h = current.get();
    todo = std::move(again);
  }
}

std::vector<std::vector<int64_t>> PositionsByPart(const VariableHandle& h,
                                                  const std::vector<int64_t>& indices) {
  // Parts along axis 0 come in row order: part k holds rows from its
  // offset up to the next part's.
  std::vector<int64_t> starts;
  starts.reserve(h.parts_size());
  for (const PartHandle& p : h.parts()) starts.push_back(p.offset_size() > 0 ? p.offset(0) : 0);
  std::vector<std::vector<int64_t>> positions(h.parts_size());
  if (starts.empty()) return positions;
  for (size_t j = 0; j < indices.size(); ++j) {
    const auto after = std::upper_bound(starts.begin(), starts.end(), indices[j]);
    // Part 0 starts at row 0; the guard only keeps a malformed handle in bounds.
    const size_t k = after == starts.begin() ? 0 : static_cast<size_t>(after - starts.begin() - 1);
    positions[k].push_back(static_cast<int64_t>(j));
  }
  return positions;
}

}  // namespace internal

namespace {

using internal::VariableState;

std::vector<int64_t> Dims(const TensorShapeProto& p) {
  return std::vector<int64_t>(p.dims().begin(), p.dims().end());
}

// Copies n elements src[src_at..] -> dst[dst_at..] (same dtype).
void CopyElements(const Tensor& src, int64_t src_at, Tensor* dst, int64_t dst_at, int64_t n) {
  if (n <= 0) return;
  if (src.dtype() == DT_STRING) {
    std::copy_n(src.strings().begin() + src_at, n, dst->mutable_strings()->begin() + dst_at);
    return;
  }
  const size_t es = DataTypeSize(src.dtype());
  std::copy_n(src.bytes().data() + src_at * es, n * es, dst->mutable_bytes()->data() + dst_at * es);
}

int64_t Product(const std::vector<int64_t>& dims, size_t from, size_t to) {
  int64_t p = 1;
  for (size_t i = from; i < to && i < dims.size(); ++i) p *= dims[i];
  return p;
}

// Cuts `full` (the variable's full shape) into its parts along `axis`.
std::vector<Tensor> SplitByParts(const Tensor& full, const VariableHandle& h) {
  const std::vector<int64_t> dims = full.shape().dims();
  const int axis = h.partition_axis();
  const int64_t outer = Product(dims, 0, axis);
  const int64_t inner = Product(dims, axis + 1, dims.size());
  std::vector<Tensor> out;
  for (const PartHandle& p : h.parts()) {
    const int64_t len = p.shape().dims(axis);
    const int64_t off = p.offset(axis);
    Tensor t(full.dtype(), TensorShape(Dims(p.shape())));
    for (int64_t o = 0; o < outer; ++o) {
      CopyElements(full, (o * dims[axis] + off) * inner, &t, o * len * inner, len * inner);
    }
    out.push_back(std::move(t));
  }
  return out;
}

// The inverse of SplitByParts.
// The parts cover the variable, so every element of *full is written: its
// buffer is reused when it fits.
void ConcatPartsInto(const std::vector<Tensor>& parts, const VariableHandle& h, Tensor* full) {
  const std::vector<int64_t> dims = Dims(h.shape());
  const int axis = h.partition_axis();
  const int64_t outer = Product(dims, 0, axis);
  const int64_t inner = Product(dims, axis + 1, dims.size());
  full->ResetForOverwrite(h.dtype(), TensorShape(dims));
  for (int k = 0; k < h.parts_size(); ++k) {
    const int64_t len = h.parts(k).shape().dims(axis);
    const int64_t off = h.parts(k).offset(axis);
    for (int64_t o = 0; o < outer; ++o) {
      CopyElements(parts[k], o * len * inner, full, (o * dims[axis] + off) * inner, len * inner);
    }
  }
}

Tensor ConcatParts(const std::vector<Tensor>& parts, const VariableHandle& h) {
  Tensor full;
  ConcatPartsInto(parts, h, &full);
  return full;
}

absl::StatusOr<std::vector<int64_t>> IndexValues(const Tensor& indices, const std::string& name) {
  if (indices.dtype() == DT_INT32) {
    std::vector<int32_t> v = indices.ToVector<int32_t>();
    return std::vector<int64_t>(v.begin(), v.end());
  }
  if (indices.dtype() == DT_INT64) return indices.ToVector<int64_t>();
  return absl::InvalidArgumentError(absl::StrCat("'", name, "': indices must be int32 or int64, got ",
                                                 DataTypeName(indices.dtype())));
}

// An index op on a partitioned variable, split by part range ("div").
struct Split {
  std::vector<int> parts;                       // parts that get indices
  std::vector<std::vector<int64_t>> positions;  // per entry of `parts`: flat index positions
  std::vector<Tensor> local_indices;            // per entry of `parts`: int64 [m]
};

// The indices as int64, each checked against the full variable's axis 0:
// a bad index fails the whole op in the full variable's terms.
absl::StatusOr<std::vector<int64_t>> CheckedIndices(const VariableHandle& h,
                                                    const Tensor& indices) {
  if (h.shape().dims_size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", h.name(), "' is a scalar"));
  }
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> idx, IndexValues(indices, h.name()));
  const int64_t limit = h.shape().dims(0);
  for (size_t i = 0; i < idx.size(); ++i) {
    if (idx[i] < 0 || idx[i] >= limit) {
      return absl::InvalidArgumentError(absl::StrCat("'", h.name(), "': indices[", i, "] = ",
                                                     idx[i], " is not in [0, ", limit, ")"));
    }
  }
  return idx;
}

absl::StatusOr<Split> SplitIndices(const VariableHandle& h, const Tensor& indices) {
  if (h.partition_axis() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", h.name(), "' is partitioned along axis ", h.partition_axis(),
                     "; gather and scatter split indices along axis 0 only"));
  }
  // Everything is checked before anything is sent.
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> idx, CheckedIndices(h, indices));
  std::vector<std::vector<int64_t>> by_part = internal::PositionsByPart(h, idx);
  Split split;
  for (int k = 0; k < h.parts_size(); ++k) {
    std::vector<int64_t>& pos = by_part[k];
    if (pos.empty()) continue;
    const int64_t lo = h.parts(k).offset(0);
    std::vector<int64_t> local;
    local.reserve(pos.size());
    for (int64_t i : pos) local.push_back(idx[i] - lo);
    const int64_t m = static_cast<int64_t>(local.size());
    split.parts.push_back(k);
    split.positions.push_back(std::move(pos));
    split.local_indices.push_back(*Tensor::FromVector<int64_t>(TensorShape{m}, local));
  }
  return split;
}

}  // namespace

const std::string& Variable::name() const { return state_->name; }
DataType Variable::dtype() const { return state_->Current()->dtype(); }
TensorShape Variable::shape() const { return TensorShape(Dims(state_->Current()->shape())); }
bool Variable::partitioned() const { return state_->Current()->partitioned(); }
int Variable::partition_axis() const { return state_->Current()->partition_axis(); }
std::vector<int64_t> Variable::partitions() const {
  VariableHandle h = state_->Snapshot();
  return std::vector<int64_t>(h.partitions().begin(), h.partitions().end());
}
std::vector<PartInfo> Variable::parts() const {
  std::vector<PartInfo> out;
  const VariableHandle h = state_->Snapshot();
  for (const PartHandle& p : h.parts()) {
    PartInfo info;
    info.name = p.name();
    info.shape = TensorShape(Dims(p.shape()));
    info.offset.assign(p.offset().begin(), p.offset().end());
    info.shard_id = p.shard_id();
    info.shard_address = p.shard_address();
    info.shard_incarnation = p.shard_incarnation();
    info.lost = p.lost();
    out.push_back(std::move(info));
  }
  return out;
}
bool Variable::trainable() const { return state_->Current()->trainable(); }
std::vector<std::string> Variable::collections() const {
  VariableHandle h = state_->Snapshot();
  return std::vector<std::string>(h.collections().begin(), h.collections().end());
}
VariableHandle Variable::handle() const { return state_->Snapshot(); }
absl::Status Variable::Refresh() { return state_->Refresh(); }

namespace {

// The value into *out, reusing out's buffer when it fits: an unpartitioned
// variable's straight from its shard's stream (ShardClient::ReadInto), a
// partitioned one's parts read into temporaries and concatenated into it.
absl::Status ReadFromShardsInto(VariableState* state, Tensor* out) {
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  if (!h.partitioned()) {
    return state->ForParts({}, [&](int, const PartHandle& p, ShardClient& shard) {
      return shard.ReadInto(p.name(), out);
    });
  }
  std::vector<Tensor> parts(h.parts_size());
  PSD_RETURN_IF_ERROR(
      state->ForParts({}, [&](int k, const PartHandle& p, ShardClient& shard) -> absl::Status {
        PSD_ASSIGN_OR_RETURN(parts[k], shard.Read(p.name()));
        return absl::OkStatus();
      }));
  ConcatPartsInto(parts, h, out);
  return absl::OkStatus();
}

absl::StatusOr<Tensor> ReadFromShards(VariableState* state) {
  Tensor out;
  PSD_RETURN_IF_ERROR(ReadFromShardsInto(state, &out));
  return out;
}

// *out becomes a copy of `value`, in out's buffer when it fits.
void CopyInto(const Tensor& value, Tensor* out) {
  if (value.dtype() == DT_STRING) {
    *out = value;
    return;
  }
  out->ResetForOverwrite(value.dtype(), value.shape());
  if (!value.bytes().empty()) {
    std::memcpy(out->mutable_bytes()->data(), value.bytes().data(), value.bytes().size());
  }
}

// gather's result: indices.shape + the variable's shape[1:], and the
// elements per gathered row.
Tensor GatherResult(DataType dtype, const Tensor& indices, const std::vector<int64_t>& dims,
                    int64_t* row) {
  std::vector<int64_t> out_dims = indices.shape().dims();
  out_dims.insert(out_dims.end(), dims.begin() + (dims.empty() ? 0 : 1), dims.end());
  *row = Product(dims, 1, dims.size());
  return Tensor(dtype, TensorShape(out_dims));
}

// The cached value, fetched first if there is none. Valid while cache_mu
// is held.
absl::StatusOr<const Tensor*> CachedValue(VariableState* state)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->cache_mu) {
  if (!state->cache.has_value()) {
    PSD_ASSIGN_OR_RETURN(Tensor value, ReadFromShards(state));
    state->cache = std::move(value);
  }
  return &*state->cache;
}

}  // namespace

bool Variable::cached() const { return !state_->caching_device.empty(); }

absl::Status Variable::RefreshCache() const {
  if (!cached()) return absl::OkStatus();
  absl::MutexLock lock(&state_->cache_mu);
  if (!state_->cache.has_value()) return CachedValue(state_.get()).status();
  // Refreshed in place: the copy's buffer is reused while the value fits it.
  absl::Status s = ReadFromShardsInto(state_.get(), &*state_->cache);
  if (!s.ok()) state_->cache.reset();  // never serve a half-written copy
  return s;
}

absl::StatusOr<Tensor> Variable::Read() const {
  if (cached()) {
    absl::MutexLock lock(&state_->cache_mu);
    PSD_ASSIGN_OR_RETURN(const Tensor* value, CachedValue(state_.get()));
    return *value;
  }
  return ReadFromShards(state_.get());
}

absl::Status Variable::ReadInto(Tensor* out) const {
  if (cached()) {
    absl::MutexLock lock(&state_->cache_mu);
    PSD_ASSIGN_OR_RETURN(const Tensor* value, CachedValue(state_.get()));
    CopyInto(*value, out);
    return absl::OkStatus();
  }
  return ReadFromShardsInto(state_.get(), out);
}

absl::StatusOr<Tensor> Variable::Gather(const Tensor& indices) const {
  const std::shared_ptr<const VariableHandle> current = state_->Current();
  const VariableHandle& h = *current;
  if (cached()) {
    // Rows of the cached value, checked as the shards would check them.
    PSD_ASSIGN_OR_RETURN(std::vector<int64_t> idx, CheckedIndices(h, indices));
    absl::MutexLock lock(&state_->cache_mu);
    PSD_ASSIGN_OR_RETURN(const Tensor* value, CachedValue(state_.get()));
    int64_t row = 0;
    Tensor out = GatherResult(value->dtype(), indices, value->shape().dims(), &row);
    for (size_t j = 0; j < idx.size(); ++j) {
      CopyElements(*value, idx[j] * row, &out, static_cast<int64_t>(j) * row, row);
    }
    return out;
  }
  if (!h.partitioned()) {
    Tensor out;
    PSD_RETURN_IF_ERROR(
        state_->ForParts({}, [&](int, const PartHandle& p, ShardClient& shard) -> absl::Status {
          PSD_ASSIGN_OR_RETURN(out, shard.Gather(p.name(), indices));
          return absl::OkStatus();
        }));
    return out;
  }
  PSD_ASSIGN_OR_RETURN(Split split, SplitIndices(h, indices));
  int64_t row = 0;
  Tensor out = GatherResult(h.dtype(), indices, Dims(h.shape()), &row);
  std::vector<Tensor> results(split.parts.size());
  std::map<int, size_t> slot;
  for (size_t i = 0; i < split.parts.size(); ++i) slot[split.parts[i]] = i;
  PSD_RETURN_IF_ERROR(state_->ForParts(
      split.parts, [&](int k, const PartHandle& p, ShardClient& shard) -> absl::Status {
        const size_t i = slot.at(k);
        PSD_ASSIGN_OR_RETURN(results[i], shard.Gather(p.name(), split.local_indices[i]));
        return absl::OkStatus();
      }));
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& pos = split.positions[i];
    for (size_t j = 0; j < pos.size(); ++j) {
      CopyElements(results[i], static_cast<int64_t>(j) * row, &out, pos[j] * row, row);
    }
  }
  return out;
}

namespace {

absl::Status AssignOp(VariableState* state, UpdateKind op, const Tensor& value, Tensor* new_value,
                      const AssignOptions& options = {}) {
  auto run = [op, &options](ShardClient& shard, const std::string& name, const Tensor& v,
                            Tensor* nv) {
    switch (op) {
      case UpdateKind::kAssign: return shard.Assign(name, v, options, nv);
      case UpdateKind::kAdd: return shard.AssignAdd(name, v, {}, nv);
      case UpdateKind::kSub: return shard.AssignSub(name, v, {}, nv);
    }
    return absl::InternalError("unknown op");
  };
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  if (!h.partitioned()) {
    return state->ForParts({}, [&](int, const PartHandle& p, ShardClient& shard) {
      return run(shard, p.name(), value, new_value);
    });
  }
  if (!options.validate_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", h.name(), "' is partitioned: assign with validate_shape=False needs an "
                     "unpartitioned variable (the new shape would not fit the parts)"));
  }
  const TensorShape full(Dims(h.shape()));
  if (value.dtype() != h.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("'", h.name(), "': value has dtype ",
                                                   DataTypeName(value.dtype()),
                                                   ", the variable has dtype ",
                                                   DataTypeName(h.dtype())));
  }
  const bool scalar = value.shape().rank() == 0 && op != UpdateKind::kAssign;
  if (!scalar && value.shape() != full) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", h.name(), "': value shape ", value.shape().ToString(),
                     " does not match the partitioned variable's shape ", full.ToString()));
  }
  std::vector<Tensor> pieces;
  if (!scalar) pieces = SplitByParts(value, h);
  std::vector<Tensor> results(h.parts_size());
  PSD_RETURN_IF_ERROR(state->ForParts({}, [&](int k, const PartHandle& p, ShardClient& shard) {
    return run(shard, p.name(), scalar ? value : pieces[k],
               new_value != nullptr ? &results[k] : nullptr);
  }));
  if (new_value != nullptr) *new_value = ConcatParts(results, h);
  return absl::OkStatus();
}

absl::Status ScatterOp(VariableState* state, UpdateKind op, const Tensor& indices,
                       const Tensor& updates) {
  auto run = [op](ShardClient& shard, const std::string& name, const Tensor& i, const Tensor& u) {
    switch (op) {
      case UpdateKind::kAssign: return shard.ScatterUpdate(name, i, u);
      case UpdateKind::kAdd: return shard.ScatterAdd(name, i, u);
      case UpdateKind::kSub: return shard.ScatterSub(name, i, u);
    }
    return absl::InternalError("unknown op");
  };
  const std::shared_ptr<const VariableHandle> current = state->Current();
  const VariableHandle& h = *current;
  if (!h.partitioned()) {
    auto send = [&](const Tensor& i, const Tensor& u) {
      return state->ForParts({}, [&](int, const PartHandle& p, ShardClient& shard) {
        return run(shard, p.name(), i, u);
      });
    };
    // The shard checks an unpartitioned variable's requests; only input that
    // looks valid against the handle is merged.
    std::optional<internal::MergedRows> merged;
    if (h.shape().dims_size() > 0 && updates.dtype() == h.dtype() &&
        updates.shape().rank() > 0) {
      std::vector<int64_t> want = indices.shape().dims();
      want.insert(want.end(), h.shape().dims().begin() + 1, h.shape().dims().end());
      if (updates.shape().dims() == want) {
        merged = internal::MergeDuplicateRows(indices, updates, internal::MergeKindOf(op),
                                              h.shape().dims(0));
      }
    }
    if (!merged.has_value()) return send(indices, updates);
    absl::Status s = send(merged->indices, merged->rows);
    // The handle's shape can be older than the shard's (an assign with
    // validate_shape=false). The shard refuses a request before applying
    // any of it, and refuses the merged request exactly when it refuses the
    // caller's (same distinct indices, rows of the same shape): resend the
    // caller's own so the error speaks of its positions and shapes.
    if (absl::IsInvalidArgument(s)) return send(indices, updates);
    return s;
  }
  PSD_ASSIGN_OR_RETURN(Split split, SplitIndices(h, indices));
  if (updates.dtype() != h.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("'", h.name(), "': updates have dtype ",
                                                   DataTypeName(updates.dtype()),
                                                   ", the variable has dtype ",
                                                   DataTypeName(h.dtype())));
  }
  std::vector<int64_t> row_dims(h.shape().dims().begin() + 1, h.shape().dims().end());
  const int64_t row = Product(row_dims, 0, row_dims.size());
  const bool scalar = updates.shape().rank() == 0;
  std::vector<int64_t> want = indices.shape().dims();
  want.insert(want.end(), row_dims.begin(), row_dims.end());
  if (!scalar && updates.shape().dims() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", h.name(), "': updates must have shape indices.shape + variable.shape[1:] = ",
        TensorShape(want).ToString(), " (or be a scalar), got ", updates.shape().ToString()));
  }
  // Everything is checked: rows of repeated indices are merged before the
  // split, so each part gets each of its rows once.
  std::optional<internal::MergedRows> merged;
  if (!scalar) {
    merged = internal::MergeDuplicateRows(indices, updates, internal::MergeKindOf(op),
                                          h.shape().dims(0));
    if (merged.has_value()) {
      PSD_ASSIGN_OR_RETURN(split, SplitIndices(h, merged->indices));
    }
  }
  const Tensor& rows = merged.has_value() ? merged->rows : updates;
  std::vector<Tensor> local_updates;
  for (size_t i = 0; i < split.parts.size(); ++i) {
    if (scalar) {
      local_updates.push_back(updates);
      continue;
    }
    const auto& pos = split.positions[i];
    std::vector<int64_t> dims = {static_cast<int64_t>(pos.size())};
    dims.insert(dims.end(), row_dims.begin(), row_dims.end());
    Tensor u(h.dtype(), TensorShape(dims));
    for (size_t j = 0; j < pos.size(); ++j) {
      CopyElements(rows, pos[j] * row, &u, static_cast<int64_t>(j) * row, row);
    }
    local_updates.push_back(std::move(u));
  }
  std::map<int, size_t> slot;
  for (size_t i = 0; i < split.parts.size(); ++i) slot[split.parts[i]] = i;
  return state->ForParts(split.parts, [&](int k, const PartHandle& p, ShardClient& shard) {
    const size_t i = slot.at(k);
    return run(shard, p.name(), split.local_indices[i], local_updates[i]);
  });
}

}  // namespace

// Writes through a Variable drop its cached value (even a failed write may
// have changed some parts of a partitioned variable).
absl::Status Variable::Assign(const Tensor& value, Tensor* new_value) const {
  state_->InvalidateCache();
  return AssignOp(state_.get(), UpdateKind::kAssign, value, new_value);
}
absl::Status Variable::Assign(const Tensor& value, const AssignOptions& options,
                              Tensor* new_value) const {
  state_->InvalidateCache();
  return AssignOp(state_.get(), UpdateKind::kAssign, value, new_value, options);
}
absl::Status Variable::AssignAdd(const Tensor& value, Tensor* new_value) const {
  state_->InvalidateCache();
  return AssignOp(state_.get(), UpdateKind::kAdd, value, new_value);
}
absl::Status Variable::AssignSub(const Tensor& value, Tensor* new_value) const {
  state_->InvalidateCache();
  return AssignOp(state_.get(), UpdateKind::kSub, value, new_value);
}
absl::Status Variable::ScatterUpdate(const Tensor& indices, const Tensor& updates) const {
  state_->InvalidateCache();
  return ScatterOp(state_.get(), UpdateKind::kAssign, indices, updates);
}
absl::Status Variable::ScatterAdd(const Tensor& indices, const Tensor& updates) const {
  state_->InvalidateCache();
  return ScatterOp(state_.get(), UpdateKind::kAdd, indices, updates);
}
absl::Status Variable::ScatterSub(const Tensor& indices, const Tensor& updates) const {
  state_->InvalidateCache();
  return ScatterOp(state_.get(), UpdateKind::kSub, indices, updates);
}

absl::StatusOr<int64_t> Variable::CountUpTo(int64_t limit) const {
  if (partitioned()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name(), "': count_up_to needs an unpartitioned scalar variable"));
  }
  state_->InvalidateCache();
  int64_t old = 0;
  PSD_RETURN_IF_ERROR(
      state_->ForParts({}, [&](int, const PartHandle& p, ShardClient& shard) -> absl::Status {
        PSD_ASSIGN_OR_RETURN(old, shard.CountUpTo(p.name(), limit));
        return absl::OkStatus();
      }));
  return old;
}

absl::Status internal::WriteSuppliedValue(VariableState* state, const Tensor& value, bool force) {
  state->InvalidateCache();
  AssignOptions options;
  options.if_uninitialized = !force;
  return AssignOp(state, UpdateKind::kAssign, value, nullptr, options);
}

absl::Status Variable::Initialize(bool force) const {
  const VariableHandle h = state_->Snapshot();
  if (h.initializer().has_from_variable()) {
    return state_->session->InitializeOrdered({name()}, force);
  }
  // A value this session supplied; without it, the shards answer (an
  // initialized part is left alone, any other is FAILED_PRECONDITION).
  if (std::shared_ptr<const Tensor> value = state_->session->SuppliedFor(h)) {
    return internal::WriteSuppliedValue(state_.get(), *value, force);
  }
  return state_->ForParts({}, [&](int, const PartHandle& p, ShardClient& shard) {
    return shard.Initialize({p.name()}, force);
  });
}

InitializerSpec Variable::InitializedValue(double scale, double offset) const {
  return init::FromVariable(name(), scale, offset);
}

absl::StatusOr<bool> Variable::IsInitialized() const {
  std::vector<int> flags(state_->Snapshot().parts_size(), 0);
  PSD_RETURN_IF_ERROR(
      state_->ForParts({}, [&](int k, const PartHandle& p, ShardClient& shard) -> absl::Status {
        PSD_ASSIGN_OR_RETURN(bool init, shard.IsInitialized(p.name()));
        flags[k] = init ? 1 : 0;
        return absl::OkStatus();
      }));
  return std::all_of(flags.begin(), flags.end(), [](int f) { return f == 1; });
}

}  // namespace client
}  // namespace psd
