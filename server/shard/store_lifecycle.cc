// VariableStore: creating, deleting, listing and initializing variables
// (initializers, initial values and values from another variable).
#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <type_traits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/store_internal.h"
#include "shard/variable_store.h"

namespace psd {

using store_internal::Allocate;
using store_internal::ContentsFromProto;
using store_internal::DecodeStringsCharged;
using store_internal::NoResult;
using store_internal::Quoted;

namespace {

// Calls fn(local, global) for every element of a slice at `offset` with
// `slice_shape` inside `full_shape`: local and global row-major indices.
template <typename Fn>
void ForEachSliceElement(const TensorShape& full_shape, const TensorShape& slice_shape,
                         const std::vector<int64_t>& offset, Fn fn) {
  const int rank = slice_shape.rank();
  const int64_t n = slice_shape.num_elements();
  std::vector<int64_t> coord(rank, 0);
  for (int64_t local = 0; local < n; ++local) {
    int64_t global = 0;
    for (int d = 0; d < rank; ++d) global = global * full_shape.dim(d) + offset[d] + coord[d];
    fn(local, global);
    for (int d = rank - 1; d >= 0; --d) {
      if (++coord[d] < slice_shape.dim(d)) break;
      coord[d] = 0;
    }
  }
}

// A string variable's initial contents: zeros/default give "", a constant
// gives its value (a scalar broadcast, or the full variable's tensor).
absl::StatusOr<Variable::Contents> InitialStrings(Device* device, MemoryAccountant* memory,
                                                  const Variable& var, const TensorShape& shape) {
  // Reserve the empty strings first so an absurd shape fails the budget
  // check instead of the allocation.
  PSD_ASSIGN_OR_RETURN(auto c, Allocate(device, memory, DT_STRING, shape, var.name));
  const InitializerSpec& spec = var.initializer;
  if (!spec.has_constant()) return c;
  const TensorProto& value = spec.constant().value();
  PSD_ASSIGN_OR_RETURN(TensorShape value_shape, ValidateTensorProto(value, "constant initializer"));
  MemoryReservation decoded;  // the constant's decoded strings, while they exist
  PSD_ASSIGN_OR_RETURN(auto all, DecodeStringsCharged(memory, value.content(),
                                                      value_shape.num_elements(),
                                                      "constant initializer", var.name, &decoded));
  std::vector<std::string>& values = c.strings;
  if (all.size() == 1) {
    std::fill(values.begin(), values.end(), all[0]);
  } else {
    ForEachSliceElement(var.full_shape, shape, var.slice_offset,
                        [&](int64_t local, int64_t global) { values[local] = all[global]; });
  }
  // The characters on top of the string objects already reserved.
  int64_t chars = 0;
  for (const auto& v : values) chars += static_cast<int64_t>(v.size());
  PSD_RETURN_IF_ERROR(memory->Reserve(chars, var.name));
  c.reservation.Merge(MemoryReservation(memory, chars));
  return c;
}

// The initial contents of `var` (shape `shape`): from its held initial value
// or by running its initializer.
absl::StatusOr<Variable::Contents> InitialContents(Device* device, MemoryAccountant* memory,
                                                   const Variable& var, const TensorShape& shape,
                                                   const TensorProto* initial_value) {
  if (initial_value != nullptr) {
    return ContentsFromProto(device, memory, *initial_value, shape, var.name);
  }
  if (var.dtype == DT_STRING) return InitialStrings(device, memory, var, shape);
  PSD_ASSIGN_OR_RETURN(auto c, Allocate(device, memory, var.dtype, shape, var.name));
  PSD_RETURN_IF_ERROR(device->Initialize(var.initializer, var.dtype, var.full_shape, shape,
                                         var.slice_offset, c.buffer.get()));
  return c;
}

}  // namespace

absl::Status VariableStore::Create(const CreateVariableRequest& request, VariableInfo* info,
                                   CallerKey caller) {
  absl::Status status =
      Mutate({caller, request.shard_incarnation(), request.request_id(), /*gated=*/false}, info,
             [&] { return CreateOnce(request, info); });
  if (status.ok() && info->name().empty()) {
    // A retried create: describe the variable as it is now.
    PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
    absl::ReaderMutexLock lock(&var->mu);
    var->FillInfo(*device_, info);
  }
  return status;
}

absl::Status VariableStore::CreateOnce(const CreateVariableRequest& request, VariableInfo* info) {
  const std::string& name = request.name();
  PSD_RETURN_IF_ERROR(ValidateVariableName(name));
  PSD_RETURN_IF_ERROR(ValidateDataType(request.dtype(), Quoted(name)));
  if (request.has_embedding()) return CreateEmbeddingOnce(request, info);
  const DataType dtype = request.dtype();
  PSD_ASSIGN_OR_RETURN(TensorShape shape,
                       ShapeFromProto(request.shape(), absl::StrCat("shape of ", Quoted(name))));
  {
    absl::ReaderMutexLock lock(&mu_);
    if (variables_.count(name) > 0 || tables_.count(name) > 0) {
      return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
    }
  }

  // Placement inside a partitioned variable.
  TensorShape full_shape = shape;
  std::vector<int64_t> offset(shape.rank(), 0);
  if (request.slice().full_shape_size() > 0 || request.slice().offset_size() > 0) {
    PSD_ASSIGN_OR_RETURN(full_shape, TensorShape::Make(request.slice().full_shape(),
                                                       absl::StrCat("full shape of ", Quoted(name))));
    if (full_shape.rank() != shape.rank() || request.slice().offset_size() != shape.rank()) {
      return absl::InvalidArgumentError(absl::StrCat(
          Quoted(name), ": slice of shape ", shape.ToString(), " at offset of rank ",
          request.slice().offset_size(), " does not fit full shape ", full_shape.ToString()));
    }
    for (int d = 0; d < shape.rank(); ++d) {
      const int64_t o = request.slice().offset(d);
      if (o < 0 || o > full_shape.dim(d) || shape.dim(d) > full_shape.dim(d) - o) {
        return absl::InvalidArgumentError(absl::StrCat(
            Quoted(name), ": slice of shape ", shape.ToString(), " at offset ", o,
            " in dimension ", d, " does not fit full shape ", full_shape.ToString()));
      }
      offset[d] = o;
    }
  }

  InitializerSpec initializer;
  std::unique_ptr<TensorProto> initial_value;
  if (request.has_initial_value()) {
    const TensorProto& value = request.initial_value();
    const std::string what = absl::StrCat("initial value of ", Quoted(name));
    if (value.dtype() != dtype) {
      return absl::InvalidArgumentError(absl::StrCat(what, " is ", DataTypeName(value.dtype()),
                                                     ", variable is ", DataTypeName(dtype)));
    }
    PSD_ASSIGN_OR_RETURN(TensorShape value_shape, ValidateTensorProto(value, what));
    if (value_shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has shape ", value_shape.ToString(),
                                                     ", variable has shape ", shape.ToString()));
    }
    initial_value = std::make_unique<TensorProto>(value);
  } else {
    if (request.has_initializer()) {
      initializer = request.initializer();
    } else {
      initializer.mutable_default_initializer();
    }
    if (initializer.has_supplied_value() && request.initialize()) {
      // The value never comes with the declaration: its client assigns it.
      return absl::InvalidArgumentError(absl::StrCat(
          Quoted(name),
          ": a variable with a supplied value is initialized by its client's assign "
          "(if_uninitialized), not at creation"));
    }
    if (initializer.has_from_variable() && request.initialize()) {
      // The coordinator checked the source against this variable; its value
      // arrives with InitializeVariables, never at creation.
      return absl::InvalidArgumentError(
          absl::StrCat(Quoted(name),
                       ": a variable initialized from another is initialized by "
                       "InitializeVariables, not at creation"));
    }
    // The same check the coordinator ran before registering the variable.
    PSD_RETURN_IF_ERROR(ValidateInitializerForCreate(initializer, dtype, full_shape, name));
  }

  auto var = std::make_shared<Variable>(name, dtype, shape, std::move(full_shape),
                                        std::move(offset), std::move(initializer),
                                        std::move(initial_value));
  var->replicated.store(request.replicated(), std::memory_order_release);
  {
    absl::MutexLock var_lock(&var->mu);
    if (request.initialize()) {
      PSD_ASSIGN_OR_RETURN(auto contents, InitialContents(device_, &memory_, *var, shape,
                                                          var->initial_value.get()));
      var->Swap(std::move(contents));
      var->DropInitialValue();
      var->initialized = true;
    } else if (var->initial_value != nullptr) {
      // Held until initialized: it takes memory like the variable will.
      const int64_t held = static_cast<int64_t>(var->initial_value->content().size());
      PSD_RETURN_IF_ERROR(memory_.Reserve(held, name));
      var->initial_value_reservation = MemoryReservation(&memory_, held);
    }
  }

  absl::MutexLock lock(&mu_);
  auto [it, inserted] = variables_.emplace(name, var);
  if (!inserted) {
    // Lost a race with another create of the same name.
    return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
  }
  moved_away_.erase(name);  // a part that moved away and came back
  absl::ReaderMutexLock var_lock(&var->mu);
  var->FillInfo(*device_, info);
  return absl::OkStatus();
}

absl::Status VariableStore::Delete(const DeleteVariableRequest& request, CallerKey caller) {
  NoResult none;
  WriteMeta meta{caller, request.shard_incarnation(), request.request_id(), /*gated=*/false};
  meta.variable = &request.name();
  return Mutate(meta, &none, [&]() -> absl::Status {
  const std::string& name = request.name();
  if (FindEmbedding(name) != nullptr) return DeleteEmbeddingOnce(name);
  std::shared_ptr<Variable> victim;
  {
    absl::MutexLock lock(&mu_);
    auto it = variables_.find(name);
    if (it == variables_.end()) return absl::NotFoundError(absl::StrCat(Quoted(name), " not found"));
    victim = std::move(it->second);
    variables_.erase(it);
  }
  // Memory is released when the last in-flight op on the variable drops it.
  return absl::OkStatus();
  });
}

std::vector<VariableInfo> VariableStore::List(const std::string& prefix,
                                              bool include_incoming) const {
  std::vector<std::shared_ptr<Variable>> vars;
  std::vector<std::shared_ptr<EmbeddingPart>> tables;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (auto it = variables_.lower_bound(prefix);
         it != variables_.end() && absl::StartsWith(it->first, prefix); ++it) {
      // Not ours yet; a backup's copy is listed (VariableInfo.follows_move).
      if (!include_incoming && it->second->incoming.load(std::memory_order_acquire) &&
          it->second->follows.load(std::memory_order_acquire) == 0) {
        continue;
      }
      vars.push_back(it->second);
    }
    for (auto it = tables_.lower_bound(prefix);
         it != tables_.end() && absl::StartsWith(it->first, prefix); ++it) {
      if (!include_incoming && it->second->incoming.load(std::memory_order_acquire) &&
          it->second->follows.load(std::memory_order_acquire) == 0) {
        continue;
      }
      tables.push_back(it->second);
    }
  }
  std::vector<VariableInfo> out(vars.size() + tables.size());
  for (size_t i = 0; i < vars.size(); ++i) {
    absl::ReaderMutexLock lock(&vars[i]->mu);
    vars[i]->FillInfo(*device_, &out[i]);
  }
  for (size_t i = 0; i < tables.size(); ++i) FillEmbeddingInfo(*tables[i], &out[vars.size() + i]);
  std::sort(out.begin(), out.end(), [](const VariableInfo& a, const VariableInfo& b) {
    return a.name() < b.name();
  });
  return out;
}

namespace {

// value * scale + offset, elementwise in `T`'s compute precision (float for
// float16 and bfloat16, wrapping integer arithmetic for integers).
template <typename T>
void ScaleAndOffset(double scale, double offset, std::string* content) {
  const size_t n = content->size() / sizeof(T);
  char* data = content->data();
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
      v = T(static_cast<float>(v) * static_cast<float>(scale) + static_cast<float>(offset));
    } else if constexpr (std::is_floating_point_v<T>) {
      v = v * static_cast<T>(scale) + static_cast<T>(offset);
    } else {
      const uint64_t wrapped = static_cast<uint64_t>(static_cast<int64_t>(v)) *
                                   static_cast<uint64_t>(static_cast<int64_t>(scale)) +
                               static_cast<uint64_t>(static_cast<int64_t>(offset));
      v = static_cast<T>(wrapped);
    }
    std::memcpy(data + i * sizeof(T), &v, sizeof(T));
  }
}

// The contents of `var`, initialized from another variable whose value
// (fetched by the caller) is `value`.
absl::StatusOr<Variable::Contents> ContentsFromSource(Device* device, MemoryAccountant* memory,
                                                      const Variable& var,
                                                      const TensorShape& shape,
                                                      TensorProto value) {
  const InitializerSpec::FromVariable& from = var.initializer.from_variable();
  const std::string what =
      absl::StrCat(Quoted(var.name), " initialized from ", Quoted(from.source()));
  if (value.dtype() != var.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": the source is ",
                                                   DataTypeName(value.dtype()), ", the target ",
                                                   DataTypeName(var.dtype)));
  }
  PSD_ASSIGN_OR_RETURN(TensorShape value_shape,
                       ValidateTensorProto(value, absl::StrCat("source value for ", what)));
  if (value_shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": the source part has shape ",
                                                   value_shape.ToString(), ", the target part ",
                                                   shape.ToString()));
  }
  const double scale = from.has_scale() ? from.scale() : 1.0;
  const double offset = from.offset();
  if (scale != 1.0 || offset != 0.0) {
    if (var.dtype == DT_STRING || var.dtype == DT_BOOL) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": a ", DataTypeName(var.dtype),
                                                     " variable copies its source only"));
    }
    DispatchFixedSize(
        var.dtype, [&](auto t) { ScaleAndOffset<decltype(t)>(scale, offset, value.mutable_content()); },
        [] {});
  }
  return ContentsFromProto(device, memory, value, shape, var.name);
}

}  // namespace

absl::StatusOr<bool> VariableStore::NeedsSourceValue(const std::string& name, bool force) const {
  PSD_ASSIGN_OR_RETURN(auto var, Find(name));
  if (!var->initializer.has_from_variable()) return false;
  absl::ReaderMutexLock lock(&var->mu);
  return force || !var->initialized;
}

absl::StatusOr<int64_t> VariableStore::SourceValueMaxBytes(const std::string& name) const {
  PSD_ASSIGN_OR_RETURN(auto var, Find(name));
  const size_t element = DataTypeSize(var->dtype);
  if (element > 0) return var->shape.num_elements() * static_cast<int64_t>(element);
  if (memory_.limit() > 0) return std::max<int64_t>(memory_.limit() - memory_.used(), 0);
  return std::numeric_limits<int64_t>::max();
}

absl::StatusOr<MemoryReservation> VariableStore::ReserveSourceValue(const std::string& name,
                                                                    int64_t bytes) {
  absl::Status reserved = memory_.Reserve(bytes, name);
  if (!reserved.ok()) {
    return absl::Status(reserved.code(), absl::StrCat("holding the source value (", bytes,
                                                      " bytes) to initialize ", Quoted(name),
                                                      ": ", reserved.message()));
  }
  return MemoryReservation(&memory_, bytes);
}

absl::StatusOr<TensorProto> VariableStore::ReadSnapshot(const std::string& name) const {
  ReadStreamRequest request;
  request.set_name(name);
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ReadStreamSource> source, BeginReadStream(request));
  TensorChunk header;
  source->FillHeader(&header);
  TensorProto value;
  value.set_dtype(header.dtype());
  *value.mutable_shape() = header.shape();
  std::string* content = value.mutable_content();
  content->resize(static_cast<size_t>(header.total_bytes()));
  for (int64_t size = source->NextSize(); size >= 0; size = source->NextSize()) {
    std::string chunk(static_cast<size_t>(size), '\0');
    PSD_ASSIGN_OR_RETURN(int64_t offset, source->ReadNext(chunk.data()));
    if (offset < 0 || offset + size > header.total_bytes()) {
      return absl::InternalError(absl::StrCat(Quoted(name), ": snapshot chunk at ", offset,
                                              " past its ", header.total_bytes(), " bytes"));
    }
    std::memcpy(content->data() + offset, chunk.data(), static_cast<size_t>(size));
  }
  return value;
}

absl::Status VariableStore::Initialize(const InitializeVariablesRequest& request,
                                       CallerKey caller) {
  SourceValues none;
  return Initialize(request, &none, caller);
}

absl::Status VariableStore::Initialize(const InitializeVariablesRequest& request,
                                       SourceValues* sources, CallerKey caller) {
  NoResult none;
  // Groups that move out or have backups get each initialized value logged
  // as an assign of it (MoveWrite.op), so a backup replays the value the
  // primary drew (a supplied value, a source's, or a random draw) instead
  // of being dropped and copied again. The answer waits for the in-sync
  // backups as any write's does (below, once the request window recorded
  // it, as Mutate's writes wait).
  std::vector<BackupWait> waits;
  std::string waited_for;  // a variable the waits are for (their messages)
  bool ran = false;
  // Before any variable is looked up (LeaseHeldToAnswer).
  const uint64_t lease_term = LeaseTerm();
  absl::Status status = Mutate({caller, request.shard_incarnation(), request.request_id()}, &none,
                               [&]() -> absl::Status {
  ran = true;
  // Resolve every name first so an unknown one fails the whole request.
  std::map<std::string, std::shared_ptr<Variable>> vars;
  for (const auto& name : request.names()) {
    // A table is initialized from creation: its rows are drawn per key on
    // first use, so there is nothing to run (and a forced initialization
    // does not wipe trained rows).
    if (FindEmbedding(name) != nullptr) continue;
    PSD_ASSIGN_OR_RETURN(vars[name], Find(name));
  }
  // Before any variable lock (a moving group's order lock comes first):
  // the groups of the variables about to change that move out or have
  // backups. A value a pull of the log cannot carry is not forwarded:
  // those moves and follows end first (NoteUnforwardedWrite). Strings are
  // sized only once made: one whose encoding is too big ends them after.
  std::map<std::string, std::vector<std::shared_ptr<MoveOut>>> moves_of;
  std::vector<std::shared_ptr<MoveOut>> moves;  // every one of them, by id
  if (moving_out_count_.load(std::memory_order_acquire) > 0) {
    for (auto& [name, var] : vars) {
      bool initialized;
      {
        absl::ReaderMutexLock lock(&var->mu);
        initialized = var->initialized;
      }
      if (initialized && !request.force()) continue;
      const bool forwardable =
          var->dtype == DT_STRING ||
          var->shape.num_elements() * static_cast<int64_t>(DataTypeSize(var->dtype)) <=
              options_.max_unary_value_bytes;
      if (!forwardable) {
        PSD_RETURN_IF_ERROR(NoteUnforwardedWrite(name, "an initialization"));
        continue;
      }
      std::vector<std::shared_ptr<MoveOut>> group = MovingOut(name);
      if (group.empty()) continue;
      moves.insert(moves.end(), group.begin(), group.end());
      moves_of[name] = std::move(group);
    }
    std::sort(moves.begin(), moves.end(),
              [](const auto& a, const auto& b) { return a->id < b->id; });
    moves.erase(std::unique(moves.begin(), moves.end()), moves.end());
  }
  // Held until the values are logged: no other write to these groups is
  // applied or logged in between.
  std::optional<store_internal::OrderLocks> order;
  if (!moves.empty()) order.emplace(moves);
  // Per variable, the moves and follows that log its value (the others
  // ended: a follow that ended while in sync is waited out of the in-sync
  // set before the answer, as for any write).
  std::map<std::string, std::vector<std::shared_ptr<MoveOut>>> logging_of;
  for (auto& [name, group] : moves_of) {
    for (const bool follows : {false, true}) {  // moves first, as Mutate admits them
      for (const std::shared_ptr<MoveOut>& move : group) {
        if (move->follow != follows) continue;
        PSD_ASSIGN_OR_RETURN(const bool log, AdmitMovingWrite(move.get(), name, ""));
        if (log) {
          logging_of[name].push_back(move);
        } else if (move->follow) {
          waits.push_back({move, ~uint64_t{0}});
          waited_for = name;
        }
      }
    }
  }
  // Lock in name order (the map's order) so concurrent calls cannot deadlock,
  // then prepare every variable's contents before committing any of them.
  std::vector<std::unique_ptr<absl::MutexLock>> locks;
  for (auto& [name, var] : vars) locks.push_back(std::make_unique<absl::MutexLock>(&var->mu));
  std::vector<std::pair<Variable*, Variable::Contents>> prepared;
  for (auto& [name, var] : vars) {
    var->mu.AssertHeld();
    if (var->initialized && !request.force()) continue;
    if (var->initializer.has_supplied_value()) {
      const InitializerSpec::SuppliedValue& supplied = var->initializer.supplied_value();
      return absl::FailedPreconditionError(absl::StrCat(
          Quoted(name), " is initialized from a value its declaring client supplied (",
          supplied.byte_size(), " bytes, crc32c ", absl::Hex(supplied.crc32c(), absl::kZeroPad8),
          "), which neither the coordinator nor the shards hold: initialize it from a client "
          "that holds the value, or assign it"));
    }
    if (var->initializer.has_from_variable()) {
      auto value = sources->find(name);
      if (value == sources->end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            Quoted(name), " is initialized from variable ",
            Quoted(var->initializer.from_variable().source()),
            ": initialize it through the coordinator, which orders it after its source and "
            "says where the source lives"));
      }
      PSD_ASSIGN_OR_RETURN(auto contents, ContentsFromSource(device_, &memory_, *var, var->shape,
                                                             std::move(value->second)));
      prepared.emplace_back(var.get(), std::move(contents));
      continue;
    }
    // Created from a value (no initializer) whose value was consumed by an
    // earlier initialization.
    if (var->initial_value == nullptr &&
        var->initializer.kind_case() == InitializerSpec::KIND_NOT_SET) {
      return absl::FailedPreconditionError(absl::StrCat(
          Quoted(name), " was created from a value that is no longer held; assign it instead"));
    }
    PSD_ASSIGN_OR_RETURN(auto contents, InitialContents(device_, &memory_, *var, var->shape,
                                                        var->initial_value.get()));
    prepared.emplace_back(var.get(), std::move(contents));
  }
  // The values as the moves' targets and backups replay them, copied
  // before anything changes (a copy that fails changes nothing).
  // Each is encoded once (logged_write.h), shared by the group's logs.
  std::vector<std::pair<const std::string*, grpc::Slice>> logged;
  // Strings whose encoding a pull cannot carry: their moves and follows
  // end once the values are in (a follow in sync is waited out of the
  // in-sync set before the answer, as NoteUnforwardedWrite would have).
  std::vector<std::pair<const std::string*, size_t>> too_big;
  for (auto& [var, contents] : prepared) {
    auto it = logging_of.find(var->name);
    if (it == logging_of.end() || it->second.empty()) continue;
    MoveWrite write;
    write.set_caller(caller);
    AssignRequest* assign = write.mutable_op()->mutable_assign();
    assign->set_name(var->name);
    assign->set_op(UPDATE_ASSIGN);
    assign->set_validate_shape(true);
    TensorProto* value = assign->mutable_value();
    value->set_dtype(var->dtype);
    ShapeToProto(var->shape, value->mutable_shape());
    char* content;
    if (var->dtype == DT_STRING) {
      const std::string encoded = EncodeStrings(contents.strings);
      if (static_cast<int64_t>(encoded.size()) > options_.max_unary_value_bytes) {
        too_big.emplace_back(&it->first, encoded.size());
        continue;
      }
      grpc::Slice body =
          EncodeLoggedWithContent(write, kLoggedAssignValue, encoded.size(), &content);
      if (!encoded.empty()) std::memcpy(content, encoded.data(), encoded.size());
      logged.emplace_back(&it->first, std::move(body));
      continue;
    }
    const size_t bytes = static_cast<size_t>(var->shape.num_elements()) * DataTypeSize(var->dtype);
    grpc::Slice body = EncodeLoggedWithContent(write, kLoggedAssignValue, bytes, &content);
    if (bytes > 0) PSD_RETURN_IF_ERROR(device_->CopyToHost(*contents.buffer, 0, bytes, content));
    logged.emplace_back(&it->first, std::move(body));
  }
  for (auto& [var, contents] : prepared) {
    var->mu.AssertHeld();
    var->Swap(std::move(contents));
    var->DropInitialValue();
    var->initialized = true;
    ++var->version;
  }
  for (const auto& [name, body] : logged) {
    for (const std::shared_ptr<MoveOut>& move : logging_of[*name]) {
      const uint64_t seq = LogMoveEntry(move.get(), body, /*abort=*/false, *name,
                                        /*fail_when_full=*/true);
      if (move->follow) {
        waits.push_back({move, seq == 0 ? ~uint64_t{0} : seq});
        waited_for = *name;
      }
    }
  }
  for (const auto& [name, bytes] : too_big) {
    for (const std::shared_ptr<MoveOut>& move : logging_of[*name]) {
      FailMoveOut(
          move.get(),
          absl::ResourceExhaustedError(absl::StrCat(
              "move ", absl::Hex(move->id), " was given up: an initialization of ", Quoted(*name),
              " to strings of ", bytes, " bytes is more than one pull of the log carries (",
              options_.max_unary_value_bytes, ")")));
      if (move->follow) {
        waits.push_back({move, ~uint64_t{0}});
        waited_for = *name;
      }
    }
  }
  return absl::OkStatus();
  });
  if (!ran && status.ok()) {
    // Answered from the request window: the backups must have everything
    // logged for these groups by now before it is answered (as in Mutate).
    for (const std::string& name : request.names()) {
      if (moving_out_count_.load(std::memory_order_acquire) == 0) break;
      for (const std::shared_ptr<MoveOut>& move : MovingOut(name)) {
        if (!move->follow) continue;
        waits.push_back({move, store_internal::LoggedSeq(move.get())});
        waited_for = name;
      }
    }
  }
  if (!waits.empty()) {
    // A follow's group is replicated: its lease check stands for them all.
    if (DeferAnswer(&waits, waited_for, status.ok(), lease_term)) return status;
    absl::Status waited = WaitForBackups(waits, waited_for);
    if (status.ok() && !waited.ok()) return waited;
  }
  // Deposed while it ran or waited? (docs/replication.md "Leases")
  if (status.ok()) {
    for (const std::string& name : request.names()) {
      PSD_RETURN_IF_ERROR(LeaseHeldToAnswer(name, lease_term));
    }
  }
  return status;
}

absl::Status VariableStore::ReportUninitialized(const ReportUninitializedRequest& request,
                                                ReportUninitializedResponse* response) const {
  std::vector<std::shared_ptr<Variable>> vars;
  if (request.names_size() == 0) {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, var] : variables_) vars.push_back(var);
  } else {
    for (const auto& name : request.names()) {
      if (FindEmbedding(name) != nullptr) continue;  // a table is initialized from creation
      PSD_ASSIGN_OR_RETURN(auto var, Find(name));
      vars.push_back(std::move(var));
    }
  }
  std::vector<std::string> names;
  for (const auto& var : vars) {
    absl::ReaderMutexLock lock(&var->mu);
    if (!var->initialized) names.push_back(var->name);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  for (auto& n : names) response->add_names(std::move(n));
  return absl::OkStatus();
}

}  // namespace psd
