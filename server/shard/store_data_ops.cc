// VariableStore's data ops on one variable: read, gather, assign, scatter
// and count_up_to.
#include <algorithm>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/uninitialized.h"
#include "psd/wire.h"
#include "shard/store_internal.h"
#include "shard/variable_store.h"

namespace psd {

using store_internal::CheckIndices;
using store_internal::CheckInitialized;
using store_internal::ContentsFromProto;
using store_internal::DecodeStringsCharged;
using store_internal::Quoted;

namespace store_internal {

// Checks every index against [0, dim0) with TensorFlow's wording.
absl::Status CheckIndices(const std::vector<int64_t>& indices, int64_t limit,
                          const std::string& variable) {
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= limit) {
      return absl::InvalidArgumentError(absl::StrCat(Quoted(variable), ": indices[", i, "] = ",
                                                     indices[i], " is not in [0, ", limit, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace store_internal

namespace {

// Copies the variable's current value into `out`.
absl::Status CopyOut(Device* device, const Variable& var, TensorProto* out)
    ABSL_SHARED_LOCKS_REQUIRED(var.mu) {
  out->set_dtype(var.dtype);
  ShapeToProto(var.shape, out->mutable_shape());
  if (var.dtype == DT_STRING) {
    out->set_content(EncodeStrings(var.contents->strings));
    return absl::OkStatus();
  }
  const size_t bytes = var.contents->buffer->size();
  std::string* content = out->mutable_content();
  // Not zero-filled: CopyToHost writes all `bytes` bytes; on its failure
  // the content is dropped, never sent.
  ResizeUninitialized(content, bytes);
  absl::Status copied = device->CopyToHost(*var.contents->buffer, 0, bytes, content->data());
  if (!copied.ok()) out->clear_content();
  return copied;
}

// The value a retried assign/scatter asked for with return_value: the first
// run's value is not kept, so a duplicate returns the value as it is now.
absl::Status CurrentValue(Device* device, const Variable& var, TensorProto* out) {
  absl::ReaderMutexLock lock(&var.mu);
  return CopyOut(device, var, out);
}

}  // namespace

absl::Status VariableStore::Read(const ReadRequest& request, ReadResponse* response) const {
  return ReadUpTo(request, options_.max_unary_value_bytes, response);
}

absl::Status VariableStore::ReadUpTo(const ReadRequest& request, int64_t max_value_bytes,
                                     ReadResponse* response) const {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  absl::ReaderMutexLock lock(&var->mu);
  PSD_RETURN_IF_ERROR(CheckInitialized(*var));
  response->set_version(var->version);
  // For strings the accounted size (characters + string objects) bounds
  // the size of their encoding.
  const int64_t bytes = var->contents->reservation.bytes();
  int64_t limit = max_value_bytes;
  if (request.max_value_bytes() > 0) limit = std::min(limit, request.max_value_bytes());
  if (bytes > limit) {
    response->set_use_stream(true);
    response->set_value_bytes(bytes);
    return absl::OkStatus();
  }
  return CopyOut(device_, *var, response->mutable_value());
}

absl::Status VariableStore::Gather(const GatherRequest& request, GatherResponse* response) {
  return GatherUpTo(request, options_.max_unary_value_bytes,
                    "the largest unary reply (max_unary_value_bytes)", response);
}

absl::Status VariableStore::GatherUpTo(const GatherRequest& request, int64_t max_result_bytes,
                                       absl::string_view limit_name,
                                       GatherResponse* response) {
  if (std::shared_ptr<EmbeddingPart> part = FindEmbedding(request.name())) {
    return GatherEmbedding(*part, request, max_result_bytes, limit_name, response);
  }
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  TensorShape indices_shape;
  PSD_ASSIGN_OR_RETURN(auto indices,
                       IndicesFromProto(request.indices(),
                                        absl::StrCat("indices for ", Quoted(request.name())),
                                        &indices_shape));
  absl::ReaderMutexLock lock(&var->mu);
  PSD_RETURN_IF_ERROR(CheckInitialized(*var));
  if (var->shape.rank() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quoted(var->name), ": gather needs rank >= 1, variable is a scalar"));
  }
  PSD_RETURN_IF_ERROR(CheckIndices(indices, var->shape.dim(0), var->name));
  std::vector<int64_t> out_dims = indices_shape.dims();
  out_dims.insert(out_dims.end(), var->shape.dims().begin() + 1, var->shape.dims().end());
  TensorProto* out = response->mutable_value();
  out->set_dtype(var->dtype);
  out->mutable_shape()->mutable_dims()->Assign(out_dims.begin(), out_dims.end());
  const int64_t row = var->shape.row_elements();
  // The result's size, checked against the limit before anything is
  // allocated (indices may repeat, so it is not bounded by the variable).
  auto too_big = [&](int64_t bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "gather from ", Quoted(var->name), " of ", indices.size(), " rows needs ",
        bytes < 0 ? std::string("more than 2^63") : absl::StrCat(bytes), " bytes, over ",
        limit_name, " of ", max_result_bytes, " bytes; gather fewer rows per call"));
  };
  if (var->dtype == DT_STRING) {
    int64_t bytes = 0;
    for (int64_t idx : indices) {
      for (int64_t j = 0; j < row; ++j) {
        bytes += 10 + static_cast<int64_t>(var->contents->strings[idx * row + j].size());
      }
      if (bytes > max_result_bytes) return too_big(bytes);
    }
    std::vector<std::string> rows;
    rows.reserve(indices.size() * row);
    for (int64_t idx : indices) {
      for (int64_t j = 0; j < row; ++j) rows.push_back(var->contents->strings[idx * row + j]);
    }
    out->set_content(EncodeStrings(rows));
    return absl::OkStatus();
  }
  const int64_t row_bytes = row * DataTypeSize(var->dtype);
  const int64_t rows = static_cast<int64_t>(indices.size());
  if (row_bytes > 0 && rows > max_result_bytes / row_bytes) {
    return too_big(rows > std::numeric_limits<int64_t>::max() / row_bytes ? -1 : rows * row_bytes);
  }
  // Not zero-filled: Gather writes row k (row_bytes bytes) at k * row_bytes
  // for every k < indices.size(), which is every byte of the content
  // (row_bytes = row * element size, exactly the row Gather copies). On
  // its failure the content is dropped, never sent.
  std::string* content = out->mutable_content();
  ResizeUninitialized(content, indices.size() * row_bytes);
  absl::Status gathered =
      device_->Gather(var->dtype, *var->contents->buffer, row, indices, content->data());
  if (!gathered.ok()) response->clear_value();
  return gathered;
}

absl::Status VariableStore::AssignOnce(const AssignRequest& request, AssignResponse* response) {
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  const std::string& name = var->name;
  PSD_ASSIGN_OR_RETURN(UpdateKind kind, UpdateKindFromWire(request.op(), name));
  const char* op_name = AssignOpName(kind);
  const TensorProto& value = request.value();
  if (kind != UpdateKind::kAssign && !IsNumeric(var->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(op_name, " is not supported for ", Quoted(name),
                                                   " of dtype ", DataTypeName(var->dtype)));
  }
  if (value.dtype() != var->dtype) {
    return absl::InvalidArgumentError(absl::StrCat(op_name, ": ", Quoted(name), " is ",
                                                   DataTypeName(var->dtype), ", value is ",
                                                   DataTypeName(value.dtype())));
  }
  PSD_ASSIGN_OR_RETURN(
      TensorShape value_shape,
      ValidateTensorProto(value, [&] { return absl::StrCat("value for ", Quoted(name)); }));

  if (request.if_uninitialized() && (kind != UpdateKind::kAssign || !request.validate_shape())) {
    return absl::InvalidArgumentError(absl::StrCat(
        op_name, " of ", Quoted(name),
        ": if_uninitialized is an initialization, an assign that keeps the shape"));
  }

  absl::MutexLock lock(&var->mu);
  if (kind != UpdateKind::kAssign) PSD_RETURN_IF_ERROR(CheckInitialized(*var));
  const bool reshape = kind == UpdateKind::kAssign && !request.validate_shape();
  if (!reshape && value_shape != var->shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        op_name, ": ", Quoted(name), " has shape ", var->shape.ToString(), ", value has shape ",
        value_shape.ToString()));
  }
  if (request.if_uninitialized() && var->initialized) {
    response->set_version(var->version);
    response->set_skipped(true);
    return absl::OkStatus();
  }
  const bool same_layout = var->initialized && value_shape.num_elements() ==
                                                   var->shape.num_elements();
  if (kind == UpdateKind::kAssign && (var->dtype == DT_STRING || !same_layout)) {
    // New storage: strings always (their sizes change), numbers when the
    // variable has none yet or changes its element count.
    PSD_ASSIGN_OR_RETURN(auto contents,
                         ContentsFromProto(device_, &memory_, value, value_shape, name));
    var->Swap(std::move(contents));
    var->DropInitialValue();
  } else {
    PSD_RETURN_IF_ERROR(var->CopyOnWrite(&memory_, WriteExtent::All()));
    PSD_RETURN_IF_ERROR(device_->ApplyDense(var->dtype, kind, var->contents->buffer.get(),
                                            value.content().data(), value_shape.num_elements(),
                                            /*src_is_scalar=*/false));
    var->shape = value_shape;
  }
  var->initialized = true;
  ++var->version;
  response->set_version(var->version);
  if (request.return_value()) return CopyOut(device_, *var, response->mutable_value());
  return absl::OkStatus();
}

absl::Status VariableStore::ScatterOnce(const ScatterRequest& request, ScatterResponse* response) {
  if (std::shared_ptr<EmbeddingPart> part = FindEmbedding(request.name())) {
    return ScatterEmbedding(*part, request, response);
  }
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  const std::string& name = var->name;
  PSD_ASSIGN_OR_RETURN(UpdateKind kind, UpdateKindFromWire(request.op(), name));
  const char* op_name = ScatterOpName(kind);
  if (kind != UpdateKind::kAssign && !IsNumeric(var->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(op_name, " is not supported for ", Quoted(name),
                                                   " of dtype ", DataTypeName(var->dtype)));
  }
  TensorShape indices_shape;
  PSD_ASSIGN_OR_RETURN(auto indices,
                       IndicesFromProto(request.indices(),
                                        absl::StrCat(op_name, ": indices for ", Quoted(name)),
                                        &indices_shape));
  const TensorProto& updates = request.updates();
  if (updates.dtype() != var->dtype) {
    return absl::InvalidArgumentError(absl::StrCat(op_name, ": ", Quoted(name), " is ",
                                                   DataTypeName(var->dtype), ", updates are ",
                                                   DataTypeName(updates.dtype())));
  }
  PSD_ASSIGN_OR_RETURN(TensorShape updates_shape,
                       ValidateTensorProto(updates, absl::StrCat(op_name, ": updates for ",
                                                                 Quoted(name))));
  std::vector<std::string> string_updates;
  MemoryReservation string_updates_charge;  // while the decoded updates exist
  if (var->dtype == DT_STRING) {
    PSD_ASSIGN_OR_RETURN(string_updates,
                         DecodeStringsCharged(&memory_, updates.content(),
                                              updates_shape.num_elements(), name, name,
                                              &string_updates_charge));
  }

  absl::MutexLock lock(&var->mu);
  PSD_RETURN_IF_ERROR(CheckInitialized(*var));
  if (var->shape.rank() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op_name, ": ", Quoted(name), " is a scalar; scatter needs rank >= 1"));
  }
  const bool scalar = updates_shape.rank() == 0;
  if (!scalar) {
    std::vector<int64_t> want = indices_shape.dims();
    want.insert(want.end(), var->shape.dims().begin() + 1, var->shape.dims().end());
    if (updates_shape.dims() != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          op_name, ": updates for ", Quoted(name), " have shape ", updates_shape.ToString(),
          ", need indices.shape + var.shape[1:] = ", TensorShape(want).ToString(),
          " or a scalar"));
    }
  }
  PSD_RETURN_IF_ERROR(CheckIndices(indices, var->shape.dim(0), name));

  const int64_t row = var->shape.row_elements();
  PSD_RETURN_IF_ERROR(var->CopyOnWrite(&memory_, WriteExtent::Rows(indices, row)));
  if (var->dtype == DT_STRING) {
    // Strings change size. Reserve the most the writes can add (every
    // update's characters) before touching anything, write in place, then
    // give back what the replaced strings freed.
    int64_t most = 0;
    for (size_t k = 0; k < indices.size(); ++k) {
      for (int64_t j = 0; j < row; ++j) {
        most += static_cast<int64_t>(string_updates[scalar ? 0 : k * row + j].size());
      }
    }
    PSD_RETURN_IF_ERROR(memory_.Reserve(most, name));
    MemoryReservation growth(&memory_, most);
    int64_t delta = 0;
    for (size_t k = 0; k < indices.size(); ++k) {
      for (int64_t j = 0; j < row; ++j) {
        std::string& slot = var->contents->strings[indices[k] * row + j];
        const std::string& update = string_updates[scalar ? 0 : k * row + j];
        delta += static_cast<int64_t>(update.size()) - static_cast<int64_t>(slot.size());
        slot = update;
      }
    }
    var->contents->reservation.Merge(std::move(growth));
    var->contents->reservation.Shrink(most - delta);
  } else {
    PSD_RETURN_IF_ERROR(device_->ApplyScatter(var->dtype, kind, var->contents->buffer.get(), row,
                                              indices, updates.content().data(), scalar));
  }
  ++var->version;
  response->set_version(var->version);
  if (request.return_value()) return CopyOut(device_, *var, response->mutable_value());
  return absl::OkStatus();
}

absl::Status VariableStore::CountUpToOnce(const CountUpToRequest& request,
                                      CountUpToResponse* response) {
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  const std::string& name = var->name;
  if (var->dtype != DT_INT32 && var->dtype != DT_INT64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "count_up_to needs an int32 or int64 variable; ", Quoted(name), " is ",
        DataTypeName(var->dtype)));
  }
  if (var->dtype == DT_INT32 &&
      (request.limit() > INT32_MAX || request.limit() < INT32_MIN)) {
    return absl::InvalidArgumentError(absl::StrCat("count_up_to: limit ", request.limit(),
                                                   " does not fit int32 ", Quoted(name)));
  }
  absl::MutexLock lock(&var->mu);
  PSD_RETURN_IF_ERROR(CheckInitialized(*var));
  if (var->shape.rank() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("count_up_to: ", Quoted(name),
                                                   " must be a scalar, has shape ",
                                                   var->shape.ToString()));
  }
  const size_t size = DataTypeSize(var->dtype);
  int64_t value = 0;
  if (var->dtype == DT_INT64) {
    PSD_RETURN_IF_ERROR(device_->CopyToHost(*var->contents->buffer, 0, size, &value));
  } else {
    int32_t v32 = 0;
    PSD_RETURN_IF_ERROR(device_->CopyToHost(*var->contents->buffer, 0, size, &v32));
    value = v32;
  }
  if (value >= request.limit()) {
    return absl::OutOfRangeError(
        absl::StrCat(Quoted(name), ": Reached limit of ", request.limit()));
  }
  const int64_t next = value + 1;
  PSD_RETURN_IF_ERROR(var->CopyOnWrite(&memory_, WriteExtent::All()));
  if (var->dtype == DT_INT64) {
    PSD_RETURN_IF_ERROR(device_->CopyFromHost(&next, size, var->contents->buffer.get(), 0));
  } else {
    const int32_t n32 = static_cast<int32_t>(next);
    PSD_RETURN_IF_ERROR(device_->CopyFromHost(&n32, size, var->contents->buffer.get(), 0));
  }
  ++var->version;
  response->set_old_value(value);
  return absl::OkStatus();
}


absl::Status VariableStore::Assign(const AssignRequest& request, AssignResponse* response,
                                   CallerKey caller) {
  bool ran = false;
  absl::Status status = Mutate(Forwarded(caller, request), response, [&] {
    ran = true;
    return AssignOnce(request, response);
  });
  if (status.ok() && !ran && request.return_value()) {
    PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
    return CurrentValue(device_, *var, response->mutable_value());
  }
  return status;
}

absl::Status VariableStore::Scatter(const ScatterRequest& request, ScatterResponse* response,
                                    CallerKey caller) {
  bool ran = false;
  absl::Status status = Mutate(Forwarded(caller, request), response, [&] {
    ran = true;
    return ScatterOnce(request, response);
  });
  if (status.ok() && !ran && request.return_value()) {
    PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
    return CurrentValue(device_, *var, response->mutable_value());
  }
  return status;
}

absl::Status VariableStore::CountUpTo(const CountUpToRequest& request,
                                      CountUpToResponse* response, CallerKey caller) {
  return Mutate(Forwarded(caller, request), response,
                [&] { return CountUpToOnce(request, response); });
}

}  // namespace psd
