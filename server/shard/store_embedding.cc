// VariableStore: embedding tables' parts (EmbeddingSpec). The table itself
// (rows, admission, eviction, snapshots) is EmbeddingTable; this file checks
// requests against the part and routes them to it, with the same
// incarnation, write-gate and exactly-once handling as every other
// mutation (Mutate).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "psd/dtype.h"
#include "psd/embedding_keys.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/store_internal.h"
#include "shard/variable_store.h"

namespace psd {

using store_internal::ApplyOpName;
using store_internal::CheckInitialized;
using store_internal::ParseOptimizer;
using store_internal::Quoted;
using store_internal::ReadScalar;

namespace {

// Rows in one export message when the caller asks for none: about 4 MiB.
constexpr int64_t kExportMessageBytes = int64_t{4} << 20;

// The keys of a request, checked to be of the table's key dtype.
absl::StatusOr<std::vector<int64_t>> KeysOf(const EmbeddingPart& part,
                                            const TensorProto& keys, absl::string_view op,
                                            TensorShape* shape) {
  const std::string what = absl::StrCat(op, ": keys for ", Quoted(part.name));
  if (keys.dtype() != part.key_dtype) {
    return absl::InvalidArgumentError(absl::StrCat(what, " are ", DataTypeName(keys.dtype()),
                                                   "; the table's keys are ",
                                                   DataTypeName(part.key_dtype)));
  }
  return IndicesFromProto(keys, what, shape);
}

// Checks that `rows` is a [n..., dim] tensor of the part's dtype matching
// `keys_shape` (or, with `allow_scalar`, a scalar).
absl::Status CheckRows(const EmbeddingPart& part, const TensorProto& rows,
                       const TensorShape& keys_shape, bool allow_scalar, absl::string_view what,
                       bool* is_scalar) {
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ValidateTensorProto(rows, what));
  if (rows.dtype() != part.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(what, " are ", DataTypeName(rows.dtype()),
                                                   "; ", Quoted(part.name), " is ",
                                                   DataTypeName(part.dtype)));
  }
  if (allow_scalar && shape.rank() == 0) {
    *is_scalar = true;
    return absl::OkStatus();
  }
  std::vector<int64_t> want = keys_shape.dims();
  want.push_back(part.dim);
  if (shape.dims() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " have shape ", shape.ToString(), "; keys of shape ",
                     keys_shape.ToString(), " in ", Quoted(part.name), " (dim ", part.dim,
                     ") need ", TensorShape(want).ToString(),
                     allow_scalar ? " or a scalar" : ""));
  }
  *is_scalar = false;
  return absl::OkStatus();
}

// int64 [n] tensor contents, or empty.
absl::StatusOr<std::vector<int64_t>> Int64sOf(const TensorProto& proto, int64_t n,
                                              absl::string_view what) {
  if (proto.dtype() == DT_INVALID && proto.content().empty()) return std::vector<int64_t>();
  if (proto.dtype() != DT_INT64) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " are ", DataTypeName(proto.dtype()), "; they must be int64"));
  }
  TensorShape shape;
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> values, IndicesFromProto(proto, what, &shape));
  if (!values.empty() && static_cast<int64_t>(values.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " hold ", values.size(), " values for ", n, " keys"));
  }
  return values;
}

void Int64sTo(const std::vector<int64_t>& values, TensorProto* out) {
  out->set_dtype(DT_INT64);
  out->mutable_shape()->add_dims(static_cast<int64_t>(values.size()));
  out->set_content(values.data(), values.size() * sizeof(int64_t));
}

void KeysTo(const std::vector<int64_t>& keys, DataType key_dtype, TensorProto* out) {
  if (key_dtype == DT_INT64) {
    Int64sTo(keys, out);
    return;
  }
  out->set_dtype(DT_INT32);
  out->mutable_shape()->add_dims(static_cast<int64_t>(keys.size()));
  std::string* content = out->mutable_content();
  content->resize(keys.size() * sizeof(int32_t));
  for (size_t i = 0; i < keys.size(); ++i) {
    const int32_t k = static_cast<int32_t>(keys[i]);
    std::memcpy(content->data() + i * sizeof(int32_t), &k, sizeof(k));
  }
}

class ExportSource final : public EmbeddingExportSource {
 public:
  ExportSource(std::shared_ptr<const EmbeddingPart> part,
               std::shared_ptr<EmbeddingSnapshot> snapshot, std::vector<int> columns,
               int64_t max_rows)
      : part_(std::move(part)),
        snapshot_(std::move(snapshot)),
        columns_(std::move(columns)),
        max_rows_(max_rows) {}

  absl::StatusOr<bool> Next(EmbeddingRows* rows) override {
    if (done_) return false;
    EmbeddingSnapshot::Batch batch;
    PSD_RETURN_IF_ERROR(snapshot_->Next(max_rows_, columns_, &batch));
    const int64_t n = static_cast<int64_t>(batch.keys.size());
    if (n == 0 && !first_) return false;
    if (first_) rows->set_total_rows(snapshot_->rows());
    first_ = false;
    if (n == 0) done_ = true;
    KeysTo(batch.keys, part_->key_dtype, rows->mutable_keys());
    for (size_t c = 0; c < columns_.size(); ++c) {
      TensorProto* out = c == 0 ? rows->mutable_values() : rows->add_slot_values();
      out->set_dtype(part_->dtype);
      out->mutable_shape()->add_dims(n);
      out->mutable_shape()->add_dims(part_->dim);
      *out->mutable_content() = std::move(batch.columns[c]);
    }
    Int64sTo(batch.freqs, rows->mutable_freqs());
    Int64sTo(batch.versions, rows->mutable_versions());
    return true;
  }

 private:
  const std::shared_ptr<const EmbeddingPart> part_;
  const std::shared_ptr<EmbeddingSnapshot> snapshot_;
  const std::vector<int> columns_;
  const int64_t max_rows_;
  bool first_ = true;
  bool done_ = false;
};

}  // namespace

absl::StatusOr<std::shared_ptr<EmbeddingPart>> VariableStore::TableFor(
    const std::string& name, absl::string_view op) const {
  std::shared_ptr<EmbeddingPart> part = FindEmbedding(name);
  if (part == nullptr) {
    bool dense = false;
    {
      absl::ReaderMutexLock lock(&mu_);
      dense = variables_.count(name) > 0;
    }
    // NOT_FOUND, stale once moved away, or why a table here is not served
    // now (moving in, a backup, the lease lapsed).
    if (!dense) return Find(name).status();
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", Quoted(name), " is not an embedding table"));
  }
  if (part->column != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", Quoted(name),
                                                   " is a slot of table ", Quoted(part->primary),
                                                   "; name the table"));
  }
  return part;
}

std::shared_ptr<EmbeddingPart> VariableStore::FindEmbedding(
    const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = tables_.find(name);
  if (it == tables_.end()) return nullptr;
  // A part moving in is not this shard's yet; only its move's replay (and
  // creation) sees it.
  if (it->second->incoming.load(std::memory_order_acquire) && !store_internal::ReplayingMove()) {
    return nullptr;
  }
  // Nor is a replicated part while the shard's lease is lapsed (Find says
  // so to the ops that find none).
  if (LeaseLapsed(it->second->replicated.load(std::memory_order_acquire))) return nullptr;
  return it->second;
}

absl::Status VariableStore::CreateEmbeddingOnce(const CreateVariableRequest& request,
                                                VariableInfo* info, bool incoming) {
  const std::string& name = request.name();
  const EmbeddingSpec& spec = request.embedding();
  const std::string what = absl::StrCat("embedding table ", Quoted(name));
  if (!absl::StartsWith(device_->name(), "cpu")) {
    return absl::UnimplementedError(absl::StrCat(
        what, ": embedding tables are served by CPU shards only; this shard's device is ",
        device_->name(), " (place tables on a cluster with CPU shards)"));
  }
  if (request.init_case() == CreateVariableRequest::kInitialValue) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a table takes an initializer, not an initial value"));
  }
  if (request.slice().full_shape_size() > 0 || request.slice().offset_size() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": a table's parts are by key hash (embedding_part_index), not slices"));
  }
  PSD_ASSIGN_OR_RETURN(TensorShape shape,
                       ShapeFromProto(request.shape(), absl::StrCat("shape of ", what)));
  if (shape.rank() != 1 || shape.dim(0) != spec.embedding_dim()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", shape.ToString(),
                                                   " must be [embedding_dim] = [",
                                                   spec.embedding_dim(), "]"));
  }
  auto part = std::make_shared<EmbeddingPart>();
  part->name = name;
  part->dtype = request.dtype();
  part->key_dtype = spec.key_dtype() == DT_INVALID ? DT_INT64 : spec.key_dtype();
  part->dim = spec.embedding_dim();
  part->spec = spec;
  part->spec.set_key_dtype(part->key_dtype);
  part->initializer = request.initializer();
  part->incoming.store(incoming, std::memory_order_relaxed);
  part->replicated.store(request.replicated(), std::memory_order_relaxed);

  std::shared_ptr<EmbeddingPart> primary;
  if (!spec.slot_of().empty()) {
    primary = FindEmbedding(spec.slot_of());
    if (primary == nullptr) {
      return absl::NotFoundError(absl::StrCat(what, ": the table it is a slot of, ",
                                              Quoted(spec.slot_of()), ", is not on this shard"));
    }
    if (primary->column != 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", Quoted(spec.slot_of()),
                                                     " is itself a slot; a slot belongs to a table"));
    }
    if (primary->dtype != part->dtype || primary->dim != part->dim ||
        primary->key_dtype != part->key_dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " (", DataTypeName(part->dtype), ", dim ", part->dim, ", keys ",
          DataTypeName(part->key_dtype), ") must match its table ", Quoted(primary->name), " (",
          DataTypeName(primary->dtype), ", dim ", primary->dim, ", keys ",
          DataTypeName(primary->key_dtype), ")"));
    }
    {
      absl::ReaderMutexLock lock(&mu_);
      if (variables_.count(name) > 0 || tables_.count(name) > 0) {
        return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
      }
    }
    part->table = primary->table;
    part->primary = primary->name;
    PSD_ASSIGN_OR_RETURN(part->column, part->table->AddSlot(name, part->initializer));
  } else {
    EmbeddingTableOptions options;
    options.name = name;
    options.dtype = part->dtype;
    options.dim = part->dim;
    options.key_dtype = part->key_dtype;
    options.num_parts = std::max(1, request.embedding_num_parts());
    options.part_index = request.embedding_part_index();
    options.initializer = part->initializer;
    options.spec = part->spec;
    PSD_RETURN_IF_ERROR(EmbeddingTable::Validate(options));
    {
      absl::ReaderMutexLock lock(&mu_);
      if (variables_.count(name) > 0 || tables_.count(name) > 0) {
        return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
      }
    }
    PSD_ASSIGN_OR_RETURN(std::unique_ptr<EmbeddingTable> table,
                         EmbeddingTable::Create(std::move(options), &memory_));
    part->table = std::move(table);
  }
  bool inserted = false;
  {
    absl::MutexLock lock(&mu_);
    if (variables_.count(name) == 0 && tables_.count(name) == 0) {
      tables_.emplace(name, part);
      inserted = true;
    }
  }
  if (!inserted) {
    // A concurrent create of the same name won.
    if (part->column > 0) part->table->RemoveSlot(name).IgnoreError();
    return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
  }
  FillEmbeddingInfo(*part, info);
  return absl::OkStatus();
}

absl::Status VariableStore::DeleteEmbeddingOnce(const std::string& name) {
  std::vector<std::shared_ptr<EmbeddingPart>> removed;
  {
    absl::MutexLock lock(&mu_);
    auto it = tables_.find(name);
    if (it == tables_.end()) return absl::NotFoundError(absl::StrCat(Quoted(name), " not found"));
    removed.push_back(it->second);
    tables_.erase(it);
    // A table's slots are columns of its rows: they go with it.
    if (removed[0]->column == 0) {
      for (auto s = tables_.begin(); s != tables_.end();) {
        if (s->second->primary == name) {
          removed.push_back(s->second);
          s = tables_.erase(s);
        } else {
          ++s;
        }
      }
    }
  }
  if (removed[0]->column > 0) {
    PSD_RETURN_IF_ERROR(removed[0]->table->RemoveSlot(name));
  }
  // The table's memory is released when the last op holding it ends.
  return absl::OkStatus();
}

std::vector<VariableInfo> VariableStore::ListEmbeddingParts() const {
  std::vector<std::shared_ptr<EmbeddingPart>> parts;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, part] : tables_) {
      if (part->column == 0 && !part->incoming.load(std::memory_order_acquire)) {
        parts.push_back(part);
      }
    }
  }
  std::vector<VariableInfo> out(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) FillEmbeddingInfo(*parts[i], &out[i]);
  return out;
}

void VariableStore::FillEmbeddingInfo(const EmbeddingPart& part, VariableInfo* info) const {
  info->set_name(part.name);
  info->set_dtype(part.dtype);
  info->mutable_shape()->clear_dims();
  info->mutable_shape()->add_dims(part.table->rows());
  info->mutable_shape()->add_dims(part.dim);
  info->set_initialized(true);
  info->set_version(part.version.load(std::memory_order_relaxed));
  info->set_device(device_->name());
  // A slot's rows are counted with its table's, whose part holds them.
  info->set_bytes(part.column == 0 ? part.table->bytes() : 0);
  info->set_replicated(part.replicated.load(std::memory_order_acquire));
  info->set_follows_move(part.follows.load(std::memory_order_acquire));
  EmbeddingStats* stats = info->mutable_embedding();
  *stats = part.table->Stats();
  *stats->mutable_spec() = part.spec;
  stats->clear_slots();
  if (part.column == 0) {
    for (const std::string& slot : part.table->slot_names()) stats->add_slots(slot);
  }
}

absl::Status VariableStore::GatherEmbedding(const EmbeddingPart& part,
                                            const GatherRequest& request,
                                            int64_t max_result_bytes, absl::string_view limit_name,
                                            GatherResponse* response) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  TensorShape keys_shape;
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> keys,
                       KeysOf(part, request.indices(), "gather", &keys_shape));
  const int64_t row_bytes = part.dim * static_cast<int64_t>(DataTypeSize(part.dtype));
  const int64_t n = static_cast<int64_t>(keys.size());
  if (row_bytes > 0 && n > max_result_bytes / row_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "gather from ", Quoted(part.name), " of ", n, " keys needs more than ", max_result_bytes,
        " bytes, over ", limit_name, "; gather fewer keys per call"));
  }
  TensorProto* out = response->mutable_value();
  out->set_dtype(part.dtype);
  ShapeToProto(keys_shape, out->mutable_shape());
  out->mutable_shape()->add_dims(part.dim);
  std::string* content = out->mutable_content();
  content->resize(static_cast<size_t>(n * row_bytes));
  EmbeddingLookupOptions options;
  // A slot's rows are read as they are: looking them up makes nothing.
  options.inference = request.inference() || part.column != 0;
  options.global_step = request.global_step();
  EmbeddingUpdateResult result;
  absl::Status status;
  if (options.inference) {
    // Changes nothing: never logged.
    status = part.table->Lookup(keys, part.column, options, content->data(), &result);
  } else {
    // A counting lookup changes the part (counts, admissions, rows): while
    // the part moves out it is logged with the group's writes, in order.
    // Lookups do not pass the write gate, so the move registers its group
    // before pinning the table (bumping its move epoch): a lookup that saw
    // no move runs only if the epoch it read first is still the table's
    // (then it is in the pin), else it looks again (seq_cst throughout:
    // reading no move means the epoch read came before the pin's bump).
    for (int attempt = 0;; ++attempt) {
      if (part.table->retired()) {
        // Moved away since this lookup found it: answered as its name is.
        absl::Status moved = Find(part.name).status();
        status = moved.ok() || !absl::IsAborted(moved)
                     ? absl::AbortedError(absl::StrCat("stale handle: part ", part.name,
                                                       " moved; refresh the variable from the "
                                                       "coordinator"))
                     : moved;
        break;
      }
      options.expect_move_epoch = static_cast<int64_t>(part.table->move_epoch());
      std::vector<std::shared_ptr<MoveOut>> moves;
      if (moving_out_count_.load() > 0) moves = MovingOut(part.name);
      if (moves.empty()) {
        result = EmbeddingUpdateResult();
        status = part.table->Lookup(keys, part.column, options, content->data(), &result);
        if (result.move_epoch_changed && attempt < 16) continue;
        break;
      }
      // Logged into each of the group's logs (a move's, the backups'), in
      // one order. The epoch is still checked: a follow begun since the
      // group's logs were looked up pins the table, and the lookup must
      // then be either in its pin or logged for it.
      std::vector<std::shared_ptr<MoveOut>> logging;
      {
        store_internal::OrderLocks order(moves);
        status = absl::OkStatus();
        for (const std::shared_ptr<MoveOut>& move : moves) {
          absl::StatusOr<bool> log = AdmitMovingWrite(move.get(), part.name, "");
          if (!log.ok()) {
            status = log.status();
            break;
          }
          if (*log) logging.push_back(move);
        }
        if (status.ok()) {
          result = EmbeddingUpdateResult();
          status = part.table->Lookup(keys, part.column, options, content->data(), &result);
          if (result.move_epoch_changed && attempt < 16) continue;
        }
        if (status.ok()) {
          const RequestId no_id;
          WriteMeta meta{kAnonymousCaller, 0, no_id};
          meta.variable = &part.name;
          meta.LogAs(request);
          std::optional<grpc::Slice> logged;
          for (const std::shared_ptr<MoveOut>& move : logging) {
            LogMoveWrite(move.get(), meta, &logged);
          }
        }
      }
      break;
    }
  }
  if (!status.ok()) {
    response->clear_value();
    return status;
  }
  if (result.created > 0) part.version.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

bool VariableStore::CountingTableLookup(const GatherRequest& request) const {
  if (request.inference()) return false;
  std::shared_ptr<EmbeddingPart> part = FindEmbedding(request.name());
  return part != nullptr && part->column == 0;
}

absl::Status VariableStore::RunTableWrite(const TableWrite& write, CallerKey caller) {
  switch (write.op_case()) {
    case TableWrite::kEvict: {
      EvictEmbeddingResponse response;
      return EvictEmbedding(write.evict(), &response, caller);
    }
    case TableWrite::kDeleteKeys: {
      DeleteEmbeddingKeysResponse response;
      return DeleteEmbeddingKeys(write.delete_keys(), &response, caller);
    }
    case TableWrite::kImportRows: {
      ImportEmbeddingResponse response;
      return ImportEmbedding(write.import_rows(), &response, caller);
    }
    default: return absl::InvalidArgumentError("a table write has no operation set");
  }
}

absl::Status VariableStore::ReplayEmbeddingLookup(const GatherRequest& request) {
  PSD_ASSIGN_OR_RETURN(std::shared_ptr<EmbeddingPart> part, TableFor(request.name(), "gather"));
  if (request.inference()) {
    return absl::InvalidArgumentError("a logged lookup must count (inference changes nothing)");
  }
  TensorShape keys_shape;
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> keys,
                       KeysOf(*part, request.indices(), "gather", &keys_shape));
  // The rows read are dropped: looked up a slice of keys at a time (the
  // same counts, admissions and rows as at once), so a logged lookup never
  // needs its result's memory here.
  const int64_t row_bytes = part->dim * static_cast<int64_t>(DataTypeSize(part->dtype));
  const size_t slice = static_cast<size_t>(std::max<int64_t>(1, (int64_t{1} << 20) / row_bytes));
  std::string scratch(std::min(slice, keys.size()) * static_cast<size_t>(row_bytes), '\0');
  EmbeddingLookupOptions options;
  options.global_step = request.global_step();
  int64_t created = 0;
  for (size_t at = 0; at < keys.size(); at += slice) {
    const size_t n = std::min(slice, keys.size() - at);
    EmbeddingUpdateResult result;
    PSD_RETURN_IF_ERROR(part->table->Lookup(absl::MakeConstSpan(keys).subspan(at, n), 0, options,
                                            scratch.data(), &result));
    created += result.created;
  }
  if (created > 0) part->version.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status VariableStore::ScatterEmbedding(const EmbeddingPart& part,
                                             const ScatterRequest& request,
                                             ScatterResponse* response) {
  const std::string op = absl::StrCat(request.op() == UPDATE_ADD   ? "scatter_add"
                                      : request.op() == UPDATE_SUB ? "scatter_sub"
                                                                   : "scatter_update");
  if (part.column != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", Quoted(part.name), " is a slot of table ", Quoted(part.primary),
        "; its rows change only with the table's optimizer applies"));
  }
  if (request.return_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", Quoted(part.name), " is an embedding table; return_value is not "
        "available (gather the keys instead)"));
  }
  PSD_ASSIGN_OR_RETURN(UpdateKind kind, UpdateKindFromWire(request.op(), op));
  TensorShape keys_shape;
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> keys, KeysOf(part, request.indices(), op, &keys_shape));
  bool scalar = false;
  PSD_RETURN_IF_ERROR(CheckRows(part, request.updates(), keys_shape, /*allow_scalar=*/true,
                                absl::StrCat(op, ": updates for ", Quoted(part.name)), &scalar));
  EmbeddingUpdateResult result;
  PSD_RETURN_IF_ERROR(part.table->Scatter(kind, keys, request.updates().content().data(), scalar,
                                          request.global_step(), &result));
  response->set_version(part.version.fetch_add(1, std::memory_order_relaxed) + 1);
  return absl::OkStatus();
}

absl::Status VariableStore::ApplyEmbedding(const EmbeddingPart& part,
                                           const ApplySparseRequest& request,
                                           ApplySparseResponse* response,
                                           PowersRead* powers_read) {
  OptimizerParams params;
  std::string power_names[2];
  PSD_RETURN_IF_ERROR(
      ParseOptimizer(request.optimizer(), /*sparse=*/true, part.name, &params, power_names));
  const std::string op = absl::StrCat(ApplyOpName(params.kind, true), ": ");
  if (part.column != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, Quoted(part.name), " is a slot of table ",
                                                   Quoted(part.primary), "; apply to the table"));
  }
  const int want_slots = NumOptimizerSlots(params.kind);
  if (request.slots_size() != want_slots) {
    return absl::InvalidArgumentError(absl::StrCat(op, Quoted(part.name), ": ",
                                                   OptimizerName(params.kind), " takes ",
                                                   want_slots, " slot tables, got ",
                                                   request.slots_size()));
  }
  std::vector<int> columns;
  for (const std::string& slot : request.slots()) {
    std::shared_ptr<EmbeddingPart> slot_part = FindEmbedding(slot);
    if (slot_part == nullptr || slot_part->primary != part.name) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, Quoted(part.name), ": slot ", Quoted(slot), " is not a slot table of it",
          slot_part == nullptr ? " (no such table on this shard)" : ""));
    }
    if (std::find(columns.begin(), columns.end(), slot_part->column) != columns.end()) {
      return absl::InvalidArgumentError(absl::StrCat(op, Quoted(part.name), ": slot ",
                                                     Quoted(slot), " is named twice"));
    }
    columns.push_back(slot_part->column);
  }
  const char* const power_fields[2] = {"beta1_power", "beta2_power"};
  double* const powers[2] = {&params.beta1_power, &params.beta2_power};
  for (int k = 0; k < 2; ++k) {
    if (power_names[k].empty()) continue;
    PSD_ASSIGN_OR_RETURN(auto power, Find(power_names[k]));
    absl::ReaderMutexLock lock(&power->mu);
    PSD_RETURN_IF_ERROR(CheckInitialized(*power));
    if (!IsFloating(power->dtype) || power->shape.rank() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(op, "beta power ", Quoted(power->name),
                                                     " must be a floating scalar"));
    }
    PSD_ASSIGN_OR_RETURN(*powers[k], ReadScalar(device_, *power));
    if (!(*powers[k] >= 0 && *powers[k] < 1)) {
      return absl::InvalidArgumentError(absl::StrCat(op, Quoted(part.name), ": ", power_fields[k],
                                                     " = ", *powers[k], " (from ",
                                                     Quoted(power->name), ") is not in [0, 1)"));
    }
    if (powers_read != nullptr) powers_read->value[k] = *powers[k];
  }
  TensorShape keys_shape;
  PSD_ASSIGN_OR_RETURN(std::vector<int64_t> keys,
                       KeysOf(part, request.indices(), op + "sparse apply", &keys_shape));
  if (keys_shape.rank() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, "keys for ", Quoted(part.name),
                                                   " must be a vector, have shape ",
                                                   keys_shape.ToString()));
  }
  bool scalar = false;
  PSD_RETURN_IF_ERROR(CheckRows(part, request.values(), keys_shape, /*allow_scalar=*/false,
                                absl::StrCat(op, "gradient rows for ", Quoted(part.name)),
                                &scalar));
  EmbeddingUpdateResult result;
  PSD_RETURN_IF_ERROR(part.table->ApplyOptimizer(params, columns, keys,
                                                 request.values().content().data(),
                                                 request.global_step(), &result));
  response->set_version(part.version.fetch_add(1, std::memory_order_relaxed) + 1);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<EmbeddingExportSource>> VariableStore::BeginEmbeddingExport(
    const ExportEmbeddingRequest& request) const {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  std::shared_ptr<EmbeddingPart> part = FindEmbedding(request.name());
  if (part == nullptr) {
    PSD_RETURN_IF_ERROR(TableFor(request.name(), "export").status());
  }
  std::vector<int> columns = {part->column};
  for (const std::string& slot : request.slots()) {
    std::shared_ptr<EmbeddingPart> slot_part = FindEmbedding(slot);
    if (part->column != 0 || slot_part == nullptr || slot_part->primary != part->name) {
      return absl::InvalidArgumentError(absl::StrCat("export: ", Quoted(slot),
                                                     " is not a slot table of ",
                                                     Quoted(part->name)));
    }
    columns.push_back(slot_part->column);
  }
  if (request.max_rows() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("export of ", Quoted(part->name),
                                                   ": max_rows = ", request.max_rows(),
                                                   " is negative"));
  }
  const int64_t row_bytes =
      part->dim * static_cast<int64_t>(DataTypeSize(part->dtype)) *
          static_cast<int64_t>(columns.size()) +
      3 * static_cast<int64_t>(sizeof(int64_t));
  int64_t max_rows = std::max<int64_t>(1, kExportMessageBytes / row_bytes);
  if (request.max_rows() > 0) max_rows = std::min(max_rows, request.max_rows());
  return std::unique_ptr<EmbeddingExportSource>(
      new ExportSource(part, part->table->Pin(), std::move(columns), max_rows));
}

absl::Status VariableStore::ImportEmbedding(const ImportEmbeddingRequest& request,
                                            ImportEmbeddingResponse* response, CallerKey caller) {
  return Mutate(Forwarded(caller, request), response,
                [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(std::shared_ptr<EmbeddingPart> part, TableFor(request.name(), "import"));
    const EmbeddingRows& rows = request.rows();
    TensorShape keys_shape;
    PSD_ASSIGN_OR_RETURN(std::vector<int64_t> keys, KeysOf(*part, rows.keys(), "import", &keys_shape));
    if (keys_shape.rank() != 1) {
      return absl::InvalidArgumentError(absl::StrCat("import: keys for ", Quoted(part->name),
                                                     " must be a vector, have shape ",
                                                     keys_shape.ToString()));
    }
    const int64_t n = static_cast<int64_t>(keys.size());
    bool scalar = false;
    PSD_RETURN_IF_ERROR(CheckRows(*part, rows.values(), keys_shape, false,
                                  absl::StrCat("import: values for ", Quoted(part->name)),
                                  &scalar));
    if (rows.slot_values_size() != request.slots_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "import into ", Quoted(part->name), ": ", request.slots_size(), " slots named, ",
          rows.slot_values_size(), " slot value tensors given"));
    }
    std::vector<int> columns;
    std::vector<const void*> slot_values;
    for (int i = 0; i < request.slots_size(); ++i) {
      std::shared_ptr<EmbeddingPart> slot_part = FindEmbedding(request.slots(i));
      if (slot_part == nullptr || slot_part->primary != part->name) {
        return absl::InvalidArgumentError(absl::StrCat("import: ", Quoted(request.slots(i)),
                                                       " is not a slot table of ",
                                                       Quoted(part->name)));
      }
      PSD_RETURN_IF_ERROR(CheckRows(*part, rows.slot_values(i), keys_shape, false,
                                    absl::StrCat("import: values of slot ",
                                                 Quoted(request.slots(i))),
                                    &scalar));
      columns.push_back(slot_part->column);
      slot_values.push_back(rows.slot_values(i).content().data());
    }
    PSD_ASSIGN_OR_RETURN(std::vector<int64_t> freqs,
                         Int64sOf(rows.freqs(), n, absl::StrCat("import: freqs for ",
                                                                Quoted(part->name))));
    PSD_ASSIGN_OR_RETURN(std::vector<int64_t> versions,
                         Int64sOf(rows.versions(), n, absl::StrCat("import: versions for ",
                                                                   Quoted(part->name))));
    PSD_RETURN_IF_ERROR(part->table->Import(keys, rows.values().content().data(), columns,
                                            slot_values, freqs, versions));
    part->version.fetch_add(1, std::memory_order_relaxed);
    response->set_rows(part->table->rows());
    return absl::OkStatus();
  });
}

absl::Status VariableStore::DeleteEmbeddingKeys(const DeleteEmbeddingKeysRequest& request,
                                                DeleteEmbeddingKeysResponse* response,
                                                CallerKey caller) {
  return Mutate(Forwarded(caller, request), response,
                [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(std::shared_ptr<EmbeddingPart> part,
                         TableFor(request.name(), "delete_keys"));
    TensorShape keys_shape;
    PSD_ASSIGN_OR_RETURN(std::vector<int64_t> keys,
                         KeysOf(*part, request.keys(), "delete_keys", &keys_shape));
    PSD_ASSIGN_OR_RETURN(int64_t deleted, part->table->DeleteKeys(keys));
    if (deleted > 0) part->version.fetch_add(1, std::memory_order_relaxed);
    response->set_deleted(deleted);
    response->set_rows(part->table->rows());
    return absl::OkStatus();
  });
}

absl::Status VariableStore::EvictEmbedding(const EvictEmbeddingRequest& request,
                                           EvictEmbeddingResponse* response, CallerKey caller) {
  return Mutate(Forwarded(caller, request), response,
                [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(std::shared_ptr<EmbeddingPart> part, TableFor(request.name(), "evict"));
    if (request.global_step() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("evict ", Quoted(part->name),
                                                     ": global_step = ", request.global_step(),
                                                     " is negative"));
    }
    PSD_ASSIGN_OR_RETURN(int64_t evicted, part->table->Evict(request.global_step()));
    if (evicted > 0) part->version.fetch_add(1, std::memory_order_relaxed);
    response->set_evicted(evicted);
    response->set_rows(part->table->rows());
    return absl::OkStatus();
  });
}

}  // namespace psd

namespace psd {

absl::Status VariableStore::StageEmbeddingRestore(uint64_t restore_id, const RestorePart& part,
                                                  const Tensor& keys, const Tensor& values,
                                                  const Tensor& freqs, const Tensor& versions) {
  const std::string what = absl::StrCat("restore of ", Quoted(part.name()));
  PSD_RETURN_IF_ERROR(ValidateVariableName(part.name()));
  const EmbeddingSpec& spec = part.embedding();
  const int64_t dim = spec.embedding_dim();
  const int num_parts = std::max(1, part.embedding_num_parts());
  if (dim <= 0 || part.embedding_part_index() < 0 || part.embedding_part_index() >= num_parts) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": embedding_dim ", dim, ", part ",
                                                   part.embedding_part_index(), " of ", num_parts,
                                                   " is not a table part"));
  }
  if (keys.shape().rank() != 1 || (keys.dtype() != DT_INT64 && keys.dtype() != DT_INT32)) {
    return absl::DataLossError(absl::StrCat(what, ": saved keys are ", DataTypeName(keys.dtype()),
                                            " of shape ", keys.shape().ToString(),
                                            "; keys are an int32 or int64 vector"));
  }
  const int64_t n = keys.num_elements();
  if (values.dtype() != part.dtype() || values.shape() != TensorShape({n, dim})) {
    return absl::DataLossError(absl::StrCat(
        what, ": saved values are ", DataTypeName(values.dtype()), " of shape ",
        values.shape().ToString(), " for ", n, " keys; the table holds ",
        DataTypeName(part.dtype()), " rows of ", dim));
  }
  auto counts = [&](const Tensor& t, const char* field) -> absl::Status {
    if (t.dtype() != DT_INT64 || t.shape() != TensorShape({n})) {
      return absl::DataLossError(absl::StrCat(what, ": saved ", field, " are ",
                                              DataTypeName(t.dtype()), " of shape ",
                                              t.shape().ToString(), " for ", n, " keys"));
    }
    return absl::OkStatus();
  };
  PSD_RETURN_IF_ERROR(counts(freqs, "freqs"));
  PSD_RETURN_IF_ERROR(counts(versions, "versions"));
  const int64_t row_bytes = dim * static_cast<int64_t>(DataTypeSize(part.dtype()));
  // This part's keys only (keys rehash into the parts of now).
  std::vector<int64_t> mine;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = keys.dtype() == DT_INT32 ? int64_t{keys.data<int32_t>()[i]}
                                               : keys.data<int64_t>()[i];
    if (PartOfKey(k, num_parts) == part.embedding_part_index()) mine.push_back(i);
  }
  const int64_t bytes =
      static_cast<int64_t>(mine.size()) * (row_bytes + 3 * static_cast<int64_t>(sizeof(int64_t)));
  PSD_RETURN_IF_ERROR(memory_.Reserve(bytes, part.name()));
  MemoryReservation reservation(&memory_, bytes);
  absl::MutexLock lock(&restore_mu_);
  StagedRestore* r = StagedFor(restore_id);
  StagedRestore::TablePart* staged = nullptr;
  for (auto& t : r->tables) {
    if (t.spec.name() == part.name()) staged = &t;
  }
  if (staged == nullptr) {
    r->tables.emplace_back();
    staged = &r->tables.back();
    staged->spec = part;
  }
  for (int64_t i : mine) {
    staged->keys.push_back(keys.dtype() == DT_INT32 ? int64_t{keys.data<int32_t>()[i]}
                                                    : keys.data<int64_t>()[i]);
    staged->values.append(values.bytes().data() + i * row_bytes, row_bytes);
    staged->freqs.push_back(freqs.data<int64_t>()[i]);
    staged->versions.push_back(versions.data<int64_t>()[i]);
  }
  staged->reservation.Merge(std::move(reservation));
  return absl::OkStatus();
}

absl::StatusOr<VariableStore::TableInstall> VariableStore::PrepareTableRestore(
    StagedRestore* restore, int64_t* applied) {
  if (restore->tables.empty()) return TableInstall([] {});
  // New tables for the restored tables' parts, built beside the live ones.
  struct Built {
    std::shared_ptr<EmbeddingTable> table;
    std::vector<std::shared_ptr<EmbeddingPart>> entries;  // the part, then its slots
  };
  std::map<std::string, Built> built;
  std::map<std::string, const StagedRestore::TablePart*> staged_slots;
  for (const auto& t : restore->tables) {
    if (!t.spec.embedding().slot_of().empty()) staged_slots[t.spec.name()] = &t;
  }
  auto entry_for = [](const RestorePart& spec, std::shared_ptr<EmbeddingTable> table,
                      int column, const std::string& primary) {
    auto e = std::make_shared<EmbeddingPart>();
    e->name = spec.name();
    e->dtype = spec.dtype();
    e->spec = spec.embedding();
    e->key_dtype = e->spec.key_dtype() == DT_INVALID ? DT_INT64 : e->spec.key_dtype();
    e->spec.set_key_dtype(e->key_dtype);
    e->dim = e->spec.embedding_dim();
    e->initializer = spec.initializer();
    e->table = std::move(table);
    e->column = column;
    e->primary = primary;
    return e;
  };
  for (const auto& t : restore->tables) {
    const RestorePart& spec = t.spec;
    if (!spec.embedding().slot_of().empty()) continue;
    EmbeddingTableOptions options;
    options.name = spec.name();
    options.dtype = spec.dtype();
    options.dim = spec.embedding().embedding_dim();
    options.key_dtype =
        spec.embedding().key_dtype() == DT_INVALID ? DT_INT64 : spec.embedding().key_dtype();
    options.part_index = spec.embedding_part_index();
    options.num_parts = std::max(1, spec.embedding_num_parts());
    options.initializer = spec.initializer();
    options.spec = spec.embedding();
    PSD_RETURN_IF_ERROR(EmbeddingTable::Validate(options));
    PSD_ASSIGN_OR_RETURN(std::unique_ptr<EmbeddingTable> table,
                         EmbeddingTable::Create(std::move(options), &memory_));
    Built b;
    b.table = std::move(table);
    b.entries.push_back(entry_for(spec, b.table, 0, ""));
    // Slot columns: the live table's slots and the slots restored with it.
    std::map<std::string, std::pair<RestorePart, int>> slots;
    {
      absl::ReaderMutexLock lock(&mu_);
      for (const auto& [name, e] : tables_) {
        if (e->primary != spec.name()) continue;
        RestorePart as_restore;
        as_restore.set_name(e->name);
        as_restore.set_dtype(e->dtype);
        *as_restore.mutable_embedding() = e->spec;
        *as_restore.mutable_initializer() = e->initializer;
        slots[name] = {as_restore, 0};
      }
    }
    for (const auto& [name, s] : staged_slots) {
      if (s->spec.embedding().slot_of() == spec.name()) slots[name] = {s->spec, 0};
    }
    for (auto& [name, s] : slots) {
      PSD_ASSIGN_OR_RETURN(int column, b.table->AddSlot(name, s.first.initializer()));
      b.entries.push_back(entry_for(s.first, b.table, column, spec.name()));
    }
    PSD_RETURN_IF_ERROR(b.table->Import(t.keys, t.values.data(), {}, {}, t.freqs, t.versions));
    for (size_t i = 1; i < b.entries.size(); ++i) {
      auto it = staged_slots.find(b.entries[i]->name);
      if (it == staged_slots.end()) continue;
      PSD_RETURN_IF_ERROR(b.table->ImportSlot(b.entries[i]->column, it->second->keys,
                                              it->second->values.data()));
    }
    built[spec.name()] = std::move(b);
  }
  // Slots restored without their table: into the live table's column.
  std::vector<std::pair<std::shared_ptr<EmbeddingPart>, const StagedRestore::TablePart*>> live_slots;
  for (const auto& [name, s] : staged_slots) {
    const std::string& primary = s->spec.embedding().slot_of();
    if (built.count(primary) > 0) continue;
    std::shared_ptr<EmbeddingPart> slot = FindEmbedding(name);
    if (slot == nullptr || slot->primary != primary) {
      return absl::FailedPreconditionError(absl::StrCat(
          "restore of ", Quoted(name), ": it is a slot of ", Quoted(primary),
          ", which this shard does not hold and this restore does not bring"));
    }
    live_slots.emplace_back(slot, s);
  }
  for (const auto& [slot, s] : live_slots) {
    PSD_RETURN_IF_ERROR(slot->table->ImportSlot(slot->column, s->keys, s->values.data()));
  }
  *applied += static_cast<int64_t>(restore->tables.size());
  return TableInstall([this, built = std::move(built)]() mutable {
    absl::MutexLock lock(&mu_);
    for (auto& [name, b] : built) {
      // The old part and its slots leave together; ops still holding them
      // finish on the old table, as if just before the restore.
      for (auto it = tables_.begin(); it != tables_.end();) {
        if (it->first == name || it->second->primary == name) {
          it = tables_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto& e : b.entries) tables_[e->name] = e;
    }
  });
}

}  // namespace psd
