#include "shard/variable_store.h"

#include <algorithm>
#include <limits>
#include <cmath>
#include <cstring>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "psd/huge_pages.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {

namespace {

std::string Quoted(const std::string& name) { return absl::StrCat("variable '", name, "'"); }

// TensorFlow's names for the ops, used in messages.
const char* AssignOpName(UpdateOp op) {
  switch (op) {
    case UPDATE_ADD: return "assign_add";
    case UPDATE_SUB: return "assign_sub";
    default: return "assign";
  }
}
const char* ScatterOpName(UpdateOp op) {
  switch (op) {
    case UPDATE_ADD: return "scatter_add";
    case UPDATE_SUB: return "scatter_sub";
    default: return "scatter_update";
  }
}

absl::StatusOr<UpdateKind> ToUpdateKind(int op, const std::string& variable) {
  switch (op) {
    case UPDATE_ASSIGN: return UpdateKind::kAssign;
    case UPDATE_ADD: return UpdateKind::kAdd;
    case UPDATE_SUB: return UpdateKind::kSub;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(Quoted(variable), ": unknown update op ", op));
  }
}

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

}  // namespace

// One variable's declaration (immutable) and state (guarded by `mu`).
class Variable {
 public:
  // The bytes and shape of a variable's value, prepared outside the lock and
  // swapped in under it.
  struct Contents {
    TensorShape shape;
    std::unique_ptr<DeviceBuffer> buffer;  // fixed-size dtypes
    std::vector<std::string> strings;      // DT_STRING
    MemoryReservation reservation;
  };

  Variable(std::string name, DataType dtype, TensorShape declared_shape, TensorShape full_shape,
           std::vector<int64_t> slice_offset, InitializerSpec initializer,
           std::unique_ptr<TensorProto> initial_value)
      : name(std::move(name)),
        dtype(dtype),
        full_shape(std::move(full_shape)),
        slice_offset(std::move(slice_offset)),
        initializer(std::move(initializer)),
        shape(std::move(declared_shape)),
        initial_value(std::move(initial_value)) {}

  const std::string name;
  const DataType dtype;
  // Placement inside a partitioned variable (full_shape == shape and zero
  // offset when unpartitioned); random initializers index by full position.
  const TensorShape full_shape;
  const std::vector<int64_t> slice_offset;
  // Used when created without an initial value.
  const InitializerSpec initializer;

  mutable absl::Mutex mu;
  TensorShape shape ABSL_GUARDED_BY(mu);
  // Never null. Pins (checkpoint snapshots, streamed reads) share it: they
  // keep a replaced value alive, and writers copy into them the chunks they
  // change in place (CopyOnWrite).
  std::shared_ptr<Contents> contents ABSL_GUARDED_BY(mu) = std::make_shared<Contents>();
  // The pins of `contents`. Pinners hold `mu` only shared, hence their own
  // mutex. Swap drops them: a replaced value is never written again.
  mutable absl::Mutex pins_mu ABSL_ACQUIRED_AFTER(mu);
  mutable std::vector<std::weak_ptr<ValuePin>> pins ABSL_GUARDED_BY(pins_mu);
  // The newest pin while no write has happened since it was taken: later
  // pinners share it instead of making writers copy for each of them.
  mutable std::weak_ptr<ValuePin> fresh_pin ABSL_GUARDED_BY(pins_mu);
  bool initialized ABSL_GUARDED_BY(mu) = false;
  uint64_t version ABSL_GUARDED_BY(mu) = 0;
  // The value given at creation, held until the variable is first
  // initialized; dropped then so a big initial value is not kept twice.
  // Charged to the shard's memory while held.
  std::unique_ptr<TensorProto> initial_value ABSL_GUARDED_BY(mu);
  MemoryReservation initial_value_reservation ABSL_GUARDED_BY(mu);

  void DropInitialValue() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    initial_value.reset();
    initial_value_reservation.Reset();
  }

  // Replaces the value. The old buffer and its reservation are released
  // when the last streamed read of it finishes.
  void Swap(Contents&& next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    shape = next.shape;
    contents = std::make_shared<Contents>(std::move(next));
    absl::MutexLock lock(&pins_mu);
    pins.clear();
    fresh_pin.reset();
  }

  // Pins the current value (see ValuePin).
  std::shared_ptr<ValuePin> Pin(Device* device, int64_t chunk_bytes) const
      ABSL_SHARED_LOCKS_REQUIRED(mu) {
    absl::MutexLock lock(&pins_mu);
    if (auto fresh = fresh_pin.lock()) return fresh;
    const int64_t elements =
        dtype == DT_STRING ? static_cast<int64_t>(contents->strings.size())
        : contents->buffer == nullptr
            ? 0
            : static_cast<int64_t>(contents->buffer->size() / DataTypeSize(dtype));
    auto pin = std::make_shared<ValuePin>(device, dtype, elements, chunk_bytes, contents,
                                          contents->buffer.get(), &contents->strings);
    PrunePins();
    pins.push_back(pin);
    fresh_pin = pin;
    return pin;
  }

  // The one place a write protects the pins of the value it is about to
  // change in place: copies the chunks `extent` touches into every pin that
  // lacks them. Every in-place write calls it first; on failure nothing of
  // the value has changed.
  absl::Status CopyOnWrite(MemoryAccountant* memory, const WriteExtent& extent)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::vector<std::shared_ptr<ValuePin>> live;
    {
      absl::MutexLock lock(&pins_mu);
      fresh_pin.reset();
      PrunePins();
      for (const auto& weak : pins) {
        if (auto pin = weak.lock()) live.push_back(std::move(pin));
      }
    }
    if (live.empty()) return absl::OkStatus();
    // Every pin here is of `contents`: same elements and chunking.
    const std::vector<int64_t> chunks =
        TouchedChunks(extent, live[0]->elements(), live[0]->chunk_elements());
    for (const auto& pin : live) PSD_RETURN_IF_ERROR(pin->CopyChunks(chunks, memory, name));
    return absl::OkStatus();
  }

  void FillInfo(const Device& device, VariableInfo* info) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    info->set_name(name);
    info->set_dtype(dtype);
    ShapeToProto(shape, info->mutable_shape());
    info->set_initialized(initialized);
    info->set_version(version);
    info->set_device(device.name());
    info->set_bytes(contents->reservation.bytes());
  }

 private:
  void PrunePins() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(pins_mu) {
    pins.erase(std::remove_if(pins.begin(), pins.end(),
                              [](const std::weak_ptr<ValuePin>& p) { return p.expired(); }),
               pins.end());
  }
};

// The parts of one restore, checked and copied, waiting for FinishRestore.
struct VariableStore::StagedRestore {
  struct Part {
    RestorePart spec;
    TensorShape shape;
    Variable::Contents contents;
  };
  absl::Time staged_at;
  std::vector<Part> parts;
};

namespace {

// Bytes of `elements` elements of `element_size` each, or RESOURCE_EXHAUSTED
// when that does not even fit an int64.
absl::StatusOr<int64_t> ByteSize(int64_t elements, size_t element_size, const std::string& name) {
  if (element_size != 0 && elements > INT64_MAX / static_cast<int64_t>(element_size)) {
    return absl::ResourceExhaustedError(absl::StrCat(Quoted(name), ": ", elements,
                                                     " elements of ", element_size,
                                                     " bytes exceed any memory limit"));
  }
  return elements * static_cast<int64_t>(element_size);
}

// Decodes a DT_STRING tensor's content with its memory charged first: n
// decoded strings take n string objects (and n lengths while decoding)
// beside their bytes, many times the wire size of short strings, so that
// bound is reserved before anything is allocated, then trimmed to what the
// strings hold. The reservation is handed to `charged`.
absl::StatusOr<std::vector<std::string>> DecodeStringsCharged(
    MemoryAccountant* memory, absl::string_view content, int64_t n, absl::string_view what,
    const std::string& name, MemoryReservation* charged) {
  if (n < 0 || n > static_cast<int64_t>(content.size())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", content.size(),
                                                   " bytes cannot encode ", n, " strings"));
  }
  // n <= content.size() < 2^40 here: no overflow.
  const int64_t bound = n * static_cast<int64_t>(sizeof(std::string) + sizeof(uint64_t)) +
                        static_cast<int64_t>(content.size());
  PSD_RETURN_IF_ERROR(memory->Reserve(bound, name));
  MemoryReservation held(memory, bound);
  PSD_ASSIGN_OR_RETURN(auto strings, DecodeStrings(content, n, what));
  held.Shrink(bound - StringBytes(strings));
  *charged = std::move(held);
  return strings;
}

absl::StatusOr<Variable::Contents> Allocate(Device* device, MemoryAccountant* memory,
                                            DataType dtype, const TensorShape& shape,
                                            const std::string& name) {
  Variable::Contents c;
  c.shape = shape;
  const size_t element_size = dtype == DT_STRING ? sizeof(std::string) : DataTypeSize(dtype);
  PSD_ASSIGN_OR_RETURN(const int64_t bytes, ByteSize(shape.num_elements(), element_size, name));
  PSD_RETURN_IF_ERROR(memory->Reserve(bytes, name));
  c.reservation = MemoryReservation(memory, bytes);
  if (dtype == DT_STRING) {
    try {
      c.strings.resize(shape.num_elements());
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(absl::StrCat(
          Quoted(name), ": cannot allocate ", bytes, " bytes of host memory for its strings"));
    }
    return c;
  }
  auto buffer = device->Allocate(static_cast<size_t>(bytes));
  if (!buffer.ok()) {
    return absl::Status(buffer.status().code(),
                        absl::StrCat(Quoted(name), ": ", buffer.status().message()));
  }
  c.buffer = std::move(buffer).value();
  return c;
}

// Contents holding `value` (already validated to have the variable's dtype).
absl::StatusOr<Variable::Contents> ContentsFromProto(Device* device, MemoryAccountant* memory,
                                                     const TensorProto& value,
                                                     const TensorShape& shape,
                                                     const std::string& name) {
  if (value.dtype() == DT_STRING) {
    Variable::Contents c;
    c.shape = shape;
    PSD_ASSIGN_OR_RETURN(c.strings,
                         DecodeStringsCharged(memory, value.content(), shape.num_elements(),
                                              absl::StrCat("value for ", Quoted(name)), name,
                                              &c.reservation));
    return c;
  }
  PSD_ASSIGN_OR_RETURN(auto c, Allocate(device, memory, value.dtype(), shape, name));
  PSD_RETURN_IF_ERROR(
      device->CopyFromHost(value.content().data(), value.content().size(), c.buffer.get(), 0));
  return c;
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

}  // namespace

VariableStore::VariableStore(Device* device, const VariableStoreOptions& options)
    : device_(device),
      options_(options),
      memory_(options.memory_limit_bytes),
      requests_(options.request_window) {}

absl::Status VariableStore::CheckIncarnation(uint64_t requested) const {
  if (requested != 0 && requested != options_.incarnation) {
    return absl::AbortedError(absl::StrFormat(
        "stale handle: the request was made for shard incarnation %016x, this shard is "
        "incarnation %016x (it restarted and lost its memory)",
        requested, options_.incarnation));
  }
  return absl::OkStatus();
}

namespace {

// The small result a retried request gets back, per response type.
struct NoResult {};
void SaveResult(const NoResult&, RequestWindow::Result*) {}
void RestoreResult(const RequestWindow::Result&, NoResult*) {}
void SaveResult(const VariableInfo&, RequestWindow::Result*) {}
void RestoreResult(const RequestWindow::Result&, VariableInfo*) {}
void SaveResult(const AssignResponse& r, RequestWindow::Result* out) { out->version = r.version(); }
void RestoreResult(const RequestWindow::Result& in, AssignResponse* r) { r->set_version(in.version); }
void SaveResult(const ScatterResponse& r, RequestWindow::Result* out) { out->version = r.version(); }
void RestoreResult(const RequestWindow::Result& in, ScatterResponse* r) {
  r->set_version(in.version);
}
void SaveResult(const ApplyDenseResponse& r, RequestWindow::Result* out) {
  out->version = r.version();
}
void RestoreResult(const RequestWindow::Result& in, ApplyDenseResponse* r) {
  r->set_version(in.version);
}
void SaveResult(const ApplySparseResponse& r, RequestWindow::Result* out) {
  out->version = r.version();
}
void RestoreResult(const RequestWindow::Result& in, ApplySparseResponse* r) {
  r->set_version(in.version);
}
void SaveResult(const CountUpToResponse& r, RequestWindow::Result* out) {
  out->old_value = r.old_value();
}
void RestoreResult(const RequestWindow::Result& in, CountUpToResponse* r) {
  r->set_old_value(in.old_value);
}

}  // namespace

template <typename Response, typename Op>
absl::Status VariableStore::RunOnce(const RequestId& id, Response* response, Op&& op) {
  if (id.client_id() == 0) return op();
  PSD_ASSIGN_OR_RETURN(std::optional<RequestWindow::Result> cached, requests_.Begin(id));
  if (cached.has_value()) {
    RestoreResult(*cached, response);
    return cached->status;
  }
  RequestWindow::Result result;
  result.status = op();
  SaveResult(*response, &result);
  absl::Status status = result.status;
  requests_.Finish(id, std::move(result));
  return status;
}

VariableStore::~VariableStore() = default;

size_t VariableStore::num_variables() const {
  absl::ReaderMutexLock lock(&mu_);
  return variables_.size();
}

absl::StatusOr<std::shared_ptr<Variable>> VariableStore::Find(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = variables_.find(name);
  if (it == variables_.end()) {
    return absl::NotFoundError(absl::StrCat(Quoted(name), " not found"));
  }
  return it->second;
}

namespace {

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

absl::Status VariableStore::Create(const CreateVariableRequest& request, VariableInfo* info) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  absl::Status status = RunOnce(request.request_id(), info, [&] { return CreateOnce(request, info); });
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
  const DataType dtype = request.dtype();
  PSD_ASSIGN_OR_RETURN(TensorShape shape,
                       ShapeFromProto(request.shape(), absl::StrCat("shape of ", Quoted(name))));
  {
    absl::ReaderMutexLock lock(&mu_);
    if (variables_.count(name) > 0) {
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
  if (request.initialize()) {
    absl::MutexLock var_lock(&var->mu);
    PSD_ASSIGN_OR_RETURN(auto contents, InitialContents(device_, &memory_, *var, shape,
                                                        var->initial_value.get()));
    var->Swap(std::move(contents));
    var->DropInitialValue();
    var->initialized = true;
  } else if (var->initial_value != nullptr) {
    // Held until initialized: it takes memory like the variable will.
    absl::MutexLock var_lock(&var->mu);
    const int64_t held = static_cast<int64_t>(var->initial_value->content().size());
    PSD_RETURN_IF_ERROR(memory_.Reserve(held, name));
    var->initial_value_reservation = MemoryReservation(&memory_, held);
  }

  absl::MutexLock lock(&mu_);
  auto [it, inserted] = variables_.emplace(name, var);
  if (!inserted) {
    // Lost a race with another create of the same name.
    return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
  }
  absl::ReaderMutexLock var_lock(&var->mu);
  var->FillInfo(*device_, info);
  return absl::OkStatus();
}

absl::Status VariableStore::Delete(const DeleteVariableRequest& request) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  NoResult none;
  return RunOnce(request.request_id(), &none, [&]() -> absl::Status {
  const std::string& name = request.name();
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

std::vector<VariableInfo> VariableStore::List(const std::string& prefix) const {
  std::vector<std::shared_ptr<Variable>> vars;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (auto it = variables_.lower_bound(prefix);
         it != variables_.end() && absl::StartsWith(it->first, prefix); ++it) {
      vars.push_back(it->second);
    }
  }
  std::vector<VariableInfo> out(vars.size());
  for (size_t i = 0; i < vars.size(); ++i) {
    absl::ReaderMutexLock lock(&vars[i]->mu);
    vars[i]->FillInfo(*device_, &out[i]);
  }
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

absl::Status VariableStore::Initialize(const InitializeVariablesRequest& request) {
  SourceValues none;
  return Initialize(request, &none);
}

absl::Status VariableStore::Initialize(const InitializeVariablesRequest& request,
                                       SourceValues* sources) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  WriteGate::Pass pass(&gate_);
  NoResult none;
  return RunOnce(request.request_id(), &none, [&]() -> absl::Status {
  // Resolve every name first so an unknown one fails the whole request.
  std::map<std::string, std::shared_ptr<Variable>> vars;
  for (const auto& name : request.names()) {
    PSD_ASSIGN_OR_RETURN(vars[name], Find(name));
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
  for (auto& [var, contents] : prepared) {
    var->mu.AssertHeld();
    var->Swap(std::move(contents));
    var->DropInitialValue();
    var->initialized = true;
    ++var->version;
  }
  return absl::OkStatus();
  });
}

absl::Status VariableStore::ReportUninitialized(const ReportUninitializedRequest& request,
                                                ReportUninitializedResponse* response) const {
  std::vector<std::shared_ptr<Variable>> vars;
  if (request.names_size() == 0) {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, var] : variables_) vars.push_back(var);
  } else {
    for (const auto& name : request.names()) {
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

namespace {

absl::Status CheckInitialized(const Variable& var) ABSL_SHARED_LOCKS_REQUIRED(var.mu) {
  if (!var.initialized) {
    return absl::FailedPreconditionError(
        absl::StrCat("Attempting to use uninitialized value ", var.name));
  }
  return absl::OkStatus();
}

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
  content->resize(bytes);
  return device->CopyToHost(*var.contents->buffer, 0, bytes, content->data());
}

// The value a retried assign/scatter asked for with return_value: the first
// run's value is not kept, so a duplicate returns the value as it is now.
absl::Status CurrentValue(Device* device, const Variable& var, TensorProto* out) {
  absl::ReaderMutexLock lock(&var.mu);
  return CopyOut(device, var, out);
}

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

absl::Status VariableStore::Gather(const GatherRequest& request, GatherResponse* response) const {
  return GatherUpTo(request, options_.max_unary_value_bytes,
                    "the largest unary reply (max_unary_value_bytes)", response);
}

absl::Status VariableStore::GatherUpTo(const GatherRequest& request, int64_t max_result_bytes,
                                       absl::string_view limit_name,
                                       GatherResponse* response) const {
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
  std::string* content = out->mutable_content();
  content->resize(indices.size() * row_bytes);
  return device_->Gather(var->dtype, *var->contents->buffer, row, indices, content->data());
}

absl::Status VariableStore::AssignOnce(const AssignRequest& request, AssignResponse* response) {
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  const std::string& name = var->name;
  PSD_ASSIGN_OR_RETURN(UpdateKind kind, ToUpdateKind(request.op(), name));
  const char* op_name = AssignOpName(request.op());
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
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  const std::string& name = var->name;
  PSD_ASSIGN_OR_RETURN(UpdateKind kind, ToUpdateKind(request.op(), name));
  const char* op_name = ScatterOpName(request.op());
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


absl::Status VariableStore::Assign(const AssignRequest& request, AssignResponse* response) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  WriteGate::Pass pass(&gate_);
  bool ran = false;
  absl::Status status = RunOnce(request.request_id(), response, [&] {
    ran = true;
    return AssignOnce(request, response);
  });
  if (status.ok() && !ran && request.return_value()) {
    PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
    return CurrentValue(device_, *var, response->mutable_value());
  }
  return status;
}

absl::Status VariableStore::Scatter(const ScatterRequest& request, ScatterResponse* response) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  WriteGate::Pass pass(&gate_);
  bool ran = false;
  absl::Status status = RunOnce(request.request_id(), response, [&] {
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
                                      CountUpToResponse* response) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  WriteGate::Pass pass(&gate_);
  return RunOnce(request.request_id(), response,
                 [&] { return CountUpToOnce(request, response); });
}

// ---- Optimizer applies ----

namespace {

// TensorFlow's training-op name, for messages: "ApplyAdam", "SparseApplyFtrl".
std::string ApplyOpName(OptimizerKind kind, bool sparse) {
  return absl::StrCat(sparse ? "SparseApply" : "Apply", OptimizerName(kind));
}

// Turns the wire spec into kernel parameters, checking every
// hyper-parameter; Adam's beta powers given by name are returned in
// `beta_power_variables` (empty strings when given as values).
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

// A floating scalar's value as a double.
absl::StatusOr<double> ReadScalar(Device* device, const Variable& var)
    ABSL_SHARED_LOCKS_REQUIRED(var.mu) {
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

}  // namespace

struct VariableStore::SparseGradient {
  std::vector<int64_t> indices;
  TensorShape values_shape;
  const TensorProto* values = nullptr;
};

// A dense gradient: a unary request's TensorProto (checked in ApplyOnce),
// or a streamed one staged in host memory, whose dtype, shape and size the
// stream's header gave and BeginAssignStream checked.
struct VariableStore::DenseGradient {
  const TensorProto* proto = nullptr;  // when unary
  DataType dtype = DT_INVALID;         // when streamed
  TensorShape shape;
  const void* data = nullptr;  // null in a check-only run
};

absl::Status VariableStore::ApplyOnce(const std::string& name,
                                      const google::protobuf::RepeatedPtrField<std::string>& slots,
                                      const OptimizerSpec& spec, const DenseGradient* dense,
                                      const SparseGradient* sparse, uint64_t* version,
                                      bool check_only) {
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
                                       ApplyDenseResponse* response) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  WriteGate::Pass pass(&gate_);
  return RunOnce(request.request_id(), response, [&]() -> absl::Status {
    DenseGradient gradient;
    gradient.proto = &request.gradient();
    uint64_t version = 0;
    PSD_RETURN_IF_ERROR(ApplyOnce(request.name(), request.slots(), request.optimizer(), &gradient,
                                  nullptr, &version));
    response->set_version(version);
    return absl::OkStatus();
  });
}

absl::Status VariableStore::ApplySparse(const ApplySparseRequest& request,
                                        ApplySparseResponse* response) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  WriteGate::Pass pass(&gate_);
  return RunOnce(request.request_id(), response, [&]() -> absl::Status {
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
                                  &sparse, &version));
    response->set_version(version);
    return absl::OkStatus();
  });
}

// ---- Streams ----

namespace {

// Streams a value as it was when the stream began: a fixed-size value
// through a pin (writers copy the chunks they change into it), a string
// value encoded at the start.
class SnapshotReadSource final : public ReadStreamSource {
 public:
  SnapshotReadSource(DataType dtype, TensorShape shape, uint64_t version,
                     std::shared_ptr<const ValuePin> pin, std::string encoded,
                     int64_t chunk_bytes)
      : dtype_(dtype),
        shape_(std::move(shape)),
        version_(version),
        pin_(std::move(pin)),
        encoded_(std::move(encoded)),
        chunk_bytes_(chunk_bytes),
        total_(dtype == DT_STRING ? static_cast<int64_t>(encoded_.size()) : pin_->byte_size()) {}

  void FillHeader(TensorChunk* chunk) const override {
    chunk->set_dtype(dtype_);
    ShapeToProto(shape_, chunk->mutable_shape());
    chunk->set_version(version_);
    chunk->set_total_bytes(total_);
  }

  int64_t NextSize() const override {
    // An empty value still sends one (header) chunk.
    if (offset_ >= total_ && sent_any_) return -1;
    return std::min(chunk_bytes_, total_ - offset_);
  }

  absl::StatusOr<int64_t> ReadNext(char* dst) override {
    const int64_t n = NextSize();
    if (n < 0) return absl::OutOfRangeError("the streamed read has sent every chunk");
    if (dtype_ == DT_STRING) {
      if (n > 0) std::memcpy(dst, encoded_.data() + offset_, n);
    } else {
      PSD_RETURN_IF_ERROR(pin_->Read(offset_, n, dst));
    }
    const int64_t offset = offset_;
    offset_ += n;
    sent_any_ = true;
    return offset;
  }

 private:
  const DataType dtype_;
  const TensorShape shape_;
  const uint64_t version_;
  const std::shared_ptr<const ValuePin> pin_;  // fixed-size dtypes only
  const std::string encoded_;                 // DT_STRING only
  const int64_t chunk_bytes_;
  const int64_t total_;
  int64_t offset_ = 0;
  bool sent_any_ = false;
};

}  // namespace

absl::StatusOr<bool> ReadStreamSource::Next(TensorChunk* chunk) {
  const int64_t n = NextSize();
  if (n < 0) return false;
  std::string* content = chunk->mutable_content();
  content->resize(n);
  PSD_ASSIGN_OR_RETURN(const int64_t offset, ReadNext(content->data()));
  chunk->set_offset(offset);
  return true;
}

absl::StatusOr<std::unique_ptr<ReadStreamSource>> VariableStore::BeginReadStream(
    const ReadStreamRequest& request) const {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  int64_t chunk = request.chunk_bytes() > 0 ? request.chunk_bytes() : options_.default_chunk_bytes;
  chunk = std::max<int64_t>(1, std::min<int64_t>(chunk, options_.max_unary_value_bytes));
  absl::ReaderMutexLock lock(&var->mu);
  PSD_RETURN_IF_ERROR(CheckInitialized(*var));
  std::string encoded;
  std::shared_ptr<const ValuePin> pin;
  if (var->dtype == DT_STRING) {
    encoded = EncodeStrings(var->contents->strings);
  } else {
    pin = var->Pin(device_, options_.cow_chunk_bytes);
  }
  return std::unique_ptr<ReadStreamSource>(new SnapshotReadSource(
      var->dtype, var->shape, var->version, std::move(pin), std::move(encoded), chunk));
}

// Stages a streamed value in its own buffer (accounted against the memory
// limit) and applies it under the variable's lock at Commit. A streamed
// apply's gradient is staged in host memory, where the optimizer kernels
// read their gradient on every device (as they read a unary request's).
class StagedAssignSink final : public AssignStreamSink {
 public:
  StagedAssignSink(VariableStore* store, AssignStreamHeader header, TensorShape shape,
                   UpdateKind kind)
      : store_(store), header_(std::move(header)), shape_(std::move(shape)), kind_(kind) {}

  ~StagedAssignSink() override {
    if (registered_ && !finished_) store_->requests_.Abandon(header_.request_id());
  }

  // Registers the request id; a duplicate makes the sink answer from the
  // cache and ignore the bytes.
  absl::Status Register() {
    if (header_.request_id().client_id() == 0) return absl::OkStatus();
    PSD_ASSIGN_OR_RETURN(cached_, store_->requests_.Begin(header_.request_id()));
    registered_ = !cached_.has_value();
    return absl::OkStatus();
  }

  absl::Status Stage() {
    if (cached_.has_value()) return absl::OkStatus();
    const std::string& name = header_.name();
    if (StagesOnHost()) {
      PSD_RETURN_IF_ERROR(store_->memory_.Reserve(header_.total_bytes(), name));
      host_reservation_ = MemoryReservation(&store_->memory_, header_.total_bytes());
      host_.reserve(header_.total_bytes());
      AdviseHugePages(host_.data(), header_.total_bytes());  // before the appends touch it
      return absl::OkStatus();
    }
    PSD_ASSIGN_OR_RETURN(staged_, Allocate(store_->device_, &store_->memory_, header_.dtype(),
                                           shape_, name));
    return absl::OkStatus();
  }

  absl::Status Append(absl::string_view bytes) override {
    if (cached_.has_value()) return absl::OkStatus();
    if (static_cast<int64_t>(bytes.size()) > header_.total_bytes() - received_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "streamed value for ", Quoted(header_.name()), ": more than the announced ",
          header_.total_bytes(), " bytes"));
    }
    if (StagesOnHost()) {
      host_.append(bytes.data(), bytes.size());
    } else {
      PSD_RETURN_IF_ERROR(store_->device_->CopyFromHost(bytes.data(), bytes.size(),
                                                        staged_.buffer.get(), received_));
    }
    received_ += static_cast<int64_t>(bytes.size());
    return absl::OkStatus();
  }

  absl::Status Commit(AssignResponse* response) override {
    // A fence holds the commit, not the staging before it.
    WriteGate::Pass pass(&store_->gate_);
    if (cached_.has_value()) {
      RestoreResult(*cached_, response);
      return cached_->status;
    }
    if (received_ != header_.total_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "streamed value for ", Quoted(header_.name()), " ended after ", received_, " of ",
          header_.total_bytes(), " bytes; nothing was changed"));
    }
    RequestWindow::Result result;
    result.status = Apply(response);
    if (registered_) {
      SaveResult(*response, &result);
      store_->requests_.Finish(header_.request_id(), result);
      finished_ = true;
    }
    return result.status;
  }

 private:
  bool StagesOnHost() const { return header_.dtype() == DT_STRING || header_.has_apply(); }

  absl::Status Apply(AssignResponse* response) {
    const std::string& name = header_.name();
    if (header_.has_apply()) {
      // The unary ApplyDense's update, with the staged gradient.
      VariableStore::DenseGradient gradient;
      gradient.dtype = header_.dtype();
      gradient.shape = shape_;
      gradient.data = host_.data();
      uint64_t version = 0;
      PSD_RETURN_IF_ERROR(store_->ApplyOnce(name, header_.apply().slots(),
                                            header_.apply().optimizer(), &gradient, nullptr,
                                            &version));
      response->set_version(version);
      return absl::OkStatus();
    }
    if (header_.dtype() == DT_STRING) {
      staged_.shape = shape_;
      PSD_ASSIGN_OR_RETURN(staged_.strings,
                           DecodeStringsCharged(&store_->memory_, host_, shape_.num_elements(),
                                                absl::StrCat("streamed value for ", Quoted(name)),
                                                name, &staged_.reservation));
      std::string().swap(host_);
      host_reservation_.Reset();
    }
    if (header_.has_create()) return Create(response);

    PSD_ASSIGN_OR_RETURN(auto var, store_->Find(name));
    absl::MutexLock lock(&var->mu);
    if (kind_ == UpdateKind::kAssign) {
      if (header_.validate_shape() && shape_ != var->shape) {
        return absl::InvalidArgumentError(absl::StrCat("assign: ", Quoted(name), " has shape ",
                                                       var->shape.ToString(), ", value has shape ",
                                                       shape_.ToString()));
      }
      if (header_.if_uninitialized() && var->initialized) {
        response->set_version(var->version);
        response->set_skipped(true);
        return absl::OkStatus();
      }
      var->Swap(std::move(staged_));
      var->DropInitialValue();
    } else {
      PSD_RETURN_IF_ERROR(CheckInitialized(*var));
      if (shape_ != var->shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            AssignOpName(header_.op()), ": ", Quoted(name), " has shape ", var->shape.ToString(),
            ", value has shape ", shape_.ToString()));
      }
      PSD_RETURN_IF_ERROR(var->CopyOnWrite(&store_->memory_, WriteExtent::All()));
      // The staging buffer lives on the device (GPU memory on a GPU shard).
      PSD_RETURN_IF_ERROR(store_->device_->ApplyDenseFromBuffer(
          var->dtype, kind_, var->contents->buffer.get(), *staged_.buffer,
          shape_.num_elements()));
    }
    var->initialized = true;
    ++var->version;
    response->set_version(var->version);
    return absl::OkStatus();
  }

  // A streamed create: the declaration, validated at Begin, with the staged
  // value; inserted only now so a broken stream leaves no variable behind.
  absl::Status Create(AssignResponse* response) {
    const CreateVariableRequest& decl = header_.create();
    auto var = std::make_shared<Variable>(decl.name(), decl.dtype(), shape_, shape_,
                                          std::vector<int64_t>(shape_.rank(), 0),
                                          InitializerSpec(), nullptr);
    {
      absl::MutexLock lock(&var->mu);
      var->Swap(std::move(staged_));
      var->initialized = true;
    }
    absl::MutexLock lock(&store_->mu_);
    if (!store_->variables_.emplace(decl.name(), var).second) {
      return absl::AlreadyExistsError(absl::StrCat(Quoted(decl.name()), " already exists"));
    }
    response->set_version(0);
    return absl::OkStatus();
  }

  VariableStore* const store_;
  const AssignStreamHeader header_;
  const TensorShape shape_;
  const UpdateKind kind_;
  std::optional<RequestWindow::Result> cached_;  // set for a duplicate
  bool registered_ = false;
  bool finished_ = false;
  int64_t received_ = 0;
  Variable::Contents staged_;
  // Staged on the host: DT_STRING's encoding, or an apply's gradient.
  std::string host_;
  MemoryReservation host_reservation_;
};

absl::StatusOr<std::unique_ptr<AssignStreamSink>> VariableStore::BeginAssignStream(
    const AssignStreamHeader& header) {
  PSD_RETURN_IF_ERROR(CheckIncarnation(header.shard_incarnation()));
  const std::string& name = header.name();
  const std::string what = absl::StrCat("streamed value for ", Quoted(name));
  PSD_ASSIGN_OR_RETURN(UpdateKind kind, ToUpdateKind(header.op(), name));
  PSD_RETURN_IF_ERROR(ValidateDataType(header.dtype(), what));
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromProto(header.shape(), what));
  const int64_t n = shape.num_elements();
  if (header.dtype() == DT_STRING) {
    if (header.total_bytes() < n) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", header.total_bytes(),
                                                     " bytes cannot encode ", n, " strings"));
    }
  } else {
    PSD_ASSIGN_OR_RETURN(int64_t bytes, ByteSize(n, DataTypeSize(header.dtype()), name));
    if (header.total_bytes() != bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": total_bytes is ", header.total_bytes(), ", but ",
          DataTypeName(header.dtype()), shape.ToString(), " needs ", bytes));
    }
  }
  if (header.if_uninitialized() && (kind != UpdateKind::kAssign || !header.validate_shape() ||
                                    header.has_create() || header.has_apply())) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": if_uninitialized is an initialization of an existing variable, an assign "
              "that keeps the shape"));
  }
  if (header.has_apply()) {
    const ApplyDenseRequest& apply = header.apply();
    if (header.has_create() || kind != UpdateKind::kAssign ||
        (!apply.name().empty() && apply.name() != name) || apply.has_gradient() ||
        apply.has_request_id() || apply.shard_incarnation() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a streamed apply's gradient is the streamed value and its name, request id "
                "and incarnation are the header's; `apply` gives only the slots and optimizer"));
    }
    // Every check of the apply, now, so a bad one fails before its bytes
    // travel; Commit runs them again with the variables locked.
    DenseGradient gradient;
    gradient.dtype = header.dtype();
    gradient.shape = shape;
    uint64_t version = 0;
    PSD_RETURN_IF_ERROR(ApplyOnce(name, apply.slots(), apply.optimizer(), &gradient, nullptr,
                                  &version, /*check_only=*/true));
  } else if (header.has_create()) {
    const CreateVariableRequest& decl = header.create();
    PSD_RETURN_IF_ERROR(ValidateVariableName(decl.name()));
    if (decl.name() != name || decl.dtype() != header.dtype() || kind != UpdateKind::kAssign ||
        decl.has_initial_value() || decl.has_initializer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a streamed create must assign the declared variable's dtype with no other "
                "initial value or initializer"));
    }
    PSD_ASSIGN_OR_RETURN(TensorShape declared, ShapeFromProto(decl.shape(), what));
    if (declared != shape) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has shape ", shape.ToString(),
                                                     ", declaration has ", declared.ToString()));
    }
    absl::ReaderMutexLock lock(&mu_);
    if (variables_.count(name) > 0 && header.request_id().client_id() == 0) {
      return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
    }
  } else {
    PSD_ASSIGN_OR_RETURN(auto var, Find(name));
    if (kind != UpdateKind::kAssign && !IsNumeric(var->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(AssignOpName(header.op()),
                                                     " is not supported for ", Quoted(name),
                                                     " of dtype ", DataTypeName(var->dtype)));
    }
    if (header.dtype() != var->dtype) {
      return absl::InvalidArgumentError(absl::StrCat(AssignOpName(header.op()), ": ",
                                                     Quoted(name), " is ",
                                                     DataTypeName(var->dtype), ", value is ",
                                                     DataTypeName(header.dtype())));
    }
  }
  auto sink = std::make_unique<StagedAssignSink>(this, header, std::move(shape), kind);
  PSD_RETURN_IF_ERROR(sink->Register());
  PSD_RETURN_IF_ERROR(sink->Stage());
  return std::unique_ptr<AssignStreamSink>(std::move(sink));
}

absl::Status VariableStore::RunBatchOp(const BatchOp& op, int64_t max_result_bytes,
                                       BatchOpResult* result) {
  switch (op.op_case()) {
    case BatchOp::kAssign: return Assign(op.assign(), result->mutable_assign());
    case BatchOp::kScatter: return Scatter(op.scatter(), result->mutable_scatter());
    case BatchOp::kCountUpTo: return CountUpTo(op.count_up_to(), result->mutable_count_up_to());
    case BatchOp::kRead:
      return ReadUpTo(op.read(), std::max<int64_t>(max_result_bytes, 0), result->mutable_read());
    case BatchOp::kGather:
      return GatherUpTo(op.gather(), std::max<int64_t>(max_result_bytes, 0),
                        "what is left of the batch reply (max_batch_result_bytes)",
                        result->mutable_gather());
    case BatchOp::kApplyDense: return ApplyDense(op.apply_dense(), result->mutable_apply_dense());
    case BatchOp::kApplySparse:
      return ApplySparse(op.apply_sparse(), result->mutable_apply_sparse());
    default: return absl::InvalidArgumentError("batch op has no operation set");
  }
}

void VariableStore::SetBatchOpStatus(const absl::Status& status, BatchOpResult* result) {
  result->set_code(static_cast<int>(status.code()));
  if (!status.ok()) {
    result->set_message(std::string(status.message()));
    result->clear_result();
  }
}

// --- Checkpoints ---

absl::Status VariableStore::Fence(uint64_t fence_id, absl::Duration lease,
                                  std::vector<PinnedValue>* snapshot) {
  PSD_RETURN_IF_ERROR(gate_.Fence(fence_id, lease));
  std::vector<std::shared_ptr<Variable>> vars;
  {
    absl::ReaderMutexLock lock(&mu_);
    vars.reserve(variables_.size());
    for (const auto& [name, var] : variables_) vars.push_back(var);
  }
  snapshot->clear();
  snapshot->reserve(vars.size());
  for (const auto& var : vars) {
    absl::ReaderMutexLock lock(&var->mu);
    PinnedValue v;
    v.name = var->name;
    v.dtype = var->dtype;
    v.shape = var->shape;
    v.initialized = var->initialized;
    v.pin = var->Pin(device_, options_.cow_chunk_bytes);
    snapshot->push_back(std::move(v));
  }
  return absl::OkStatus();
}

absl::Status VariableStore::Unfence(uint64_t fence_id, WriteGate::FenceStats* stats) {
  return gate_.Unfence(fence_id, stats);
}

int64_t VariableStore::DivergedBytes(const std::vector<PinnedValue>& snapshot) const {
  int64_t bytes = 0;
  for (const PinnedValue& v : snapshot) {
    bytes += v.pin->copied_bytes();
    bool replaced = true;
    if (auto var = Find(v.name); var.ok()) {
      absl::ReaderMutexLock lock(&(*var)->mu);
      replaced = (*var)->contents.get() != v.pin->owner();
    }
    // A replaced value is no longer written, so its reservation is stable.
    if (replaced) {
      bytes += static_cast<const Variable::Contents*>(v.pin->owner())->reservation.bytes();
    }
  }
  return bytes;
}

namespace {

// The shape of a part to restore, its name checked.
absl::StatusOr<TensorShape> RestoreShape(const RestorePart& part) {
  PSD_RETURN_IF_ERROR(ValidateVariableName(part.name()));
  return TensorShape::Make(part.shape(), absl::StrCat("shape of ", Quoted(part.name())));
}

}  // namespace

VariableStore::StagedRestore* VariableStore::StagedFor(uint64_t restore_id) {
  auto& r = restores_[restore_id];
  if (r == nullptr) {
    r = std::make_unique<StagedRestore>();
    r->staged_at = absl::Now();
  }
  return r.get();
}

absl::Status VariableStore::StageRestore(uint64_t restore_id, const RestorePart& part,
                                         Tensor value) {
  const std::string& name = part.name();
  PSD_ASSIGN_OR_RETURN(TensorShape shape, RestoreShape(part));
  if (value.dtype() != part.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("restore of ", Quoted(name), ": checkpoint has ",
                                                   DataTypeName(value.dtype()), ", variable is ",
                                                   DataTypeName(part.dtype())));
  }
  if (value.shape() != shape) {
    return absl::InvalidArgumentError(absl::StrCat("restore of ", Quoted(name), ": value has shape ",
                                                   value.shape().ToString(), ", part has ",
                                                   shape.ToString()));
  }
  StagedRestore::Part staged;
  staged.spec = part;
  staged.shape = shape;
  if (value.dtype() == DT_STRING) {
    const int64_t bytes = StringBytes(value.strings());
    PSD_RETURN_IF_ERROR(memory_.Reserve(bytes, name));
    staged.contents.shape = shape;
    staged.contents.reservation = MemoryReservation(&memory_, bytes);
    staged.contents.strings = std::move(*value.mutable_strings());
  } else {
    PSD_ASSIGN_OR_RETURN(staged.contents,
                         Allocate(device_, &memory_, value.dtype(), shape, name));
    PSD_RETURN_IF_ERROR(device_->CopyFromHost(value.bytes().data(), value.bytes().size(),
                                              staged.contents.buffer.get(), 0));
  }
  absl::MutexLock lock(&restore_mu_);
  StagedFor(restore_id)->parts.push_back(std::move(staged));
  return absl::OkStatus();
}

absl::Status VariableStore::StageRestoreStreamed(
    uint64_t restore_id, const RestorePart& part,
    const std::function<absl::Status(const RestoreSink&)>& fill) {
  const std::string& name = part.name();
  PSD_ASSIGN_OR_RETURN(TensorShape shape, RestoreShape(part));
  PSD_RETURN_IF_ERROR(ValidateDataType(part.dtype(), Quoted(name)));
  if (part.dtype() == DT_STRING) {
    return absl::InvalidArgumentError(
        absl::StrCat("restore of ", Quoted(name), ": strings cannot be staged in pieces"));
  }
  StagedRestore::Part staged;
  staged.spec = part;
  staged.shape = shape;
  PSD_ASSIGN_OR_RETURN(staged.contents, Allocate(device_, &memory_, part.dtype(), shape, name));
  DeviceBuffer* buffer = staged.contents.buffer.get();
  const int64_t total = static_cast<int64_t>(buffer->size());
  int64_t received = 0;
  PSD_RETURN_IF_ERROR(fill([&](absl::string_view bytes) -> absl::Status {
    const int64_t n = static_cast<int64_t>(bytes.size());
    if (n > total - received) {
      return absl::InvalidArgumentError(absl::StrCat("restore of ", Quoted(name), ": more than its ",
                                                     total, " bytes"));
    }
    PSD_RETURN_IF_ERROR(device_->CopyFromHost(bytes.data(), bytes.size(), buffer, received));
    received += n;
    return absl::OkStatus();
  }));
  if (received != total) {
    return absl::InvalidArgumentError(absl::StrCat("restore of ", Quoted(name), ": got ", received,
                                                   " of its ", total, " bytes"));
  }
  absl::MutexLock lock(&restore_mu_);
  StagedFor(restore_id)->parts.push_back(std::move(staged));
  return absl::OkStatus();
}

absl::Status VariableStore::FinishRestore(uint64_t restore_id, bool commit, int64_t* applied) {
  std::unique_ptr<StagedRestore> r;
  {
    absl::MutexLock lock(&restore_mu_);
    auto it = restores_.find(restore_id);
    if (it != restores_.end()) {
      r = std::move(it->second);
      restores_.erase(it);
    }
  }
  *applied = 0;
  if (!commit) return absl::OkStatus();
  if (r == nullptr) {
    return absl::NotFoundError(absl::StrCat("restore ", restore_id,
                                            " has nothing staged on this shard (expired?)"));
  }
  WriteGate::Pass pass(&gate_);
  // Resolve (or create) every variable first, check each is compatible,
  // then lock them in name order and apply all: a restore is all or nothing
  // on this shard.
  std::map<std::string, std::pair<std::shared_ptr<Variable>, StagedRestore::Part*>> targets;
  for (auto& part : r->parts) {
    const RestorePart& spec = part.spec;
    std::shared_ptr<Variable> var;
    {
      absl::MutexLock lock(&mu_);
      auto it = variables_.find(spec.name());
      if (it != variables_.end()) {
        var = it->second;
      } else {
        std::vector<int64_t> offset(part.shape.rank(), 0);
        TensorShape full_shape = part.shape;
        if (spec.sliced()) {
          offset.assign(spec.offset().begin(), spec.offset().end());
          full_shape = TensorShape(std::vector<int64_t>(spec.full_shape().begin(),
                                                        spec.full_shape().end()));
        }
        InitializerSpec init = spec.initializer();
        if (init.kind_case() == InitializerSpec::KIND_NOT_SET) init.mutable_default_initializer();
        var = std::make_shared<Variable>(spec.name(), spec.dtype(), part.shape,
                                         std::move(full_shape), std::move(offset),
                                         std::move(init), nullptr);
        variables_.emplace(spec.name(), var);
      }
    }
    if (var->dtype != spec.dtype()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "restore of ", Quoted(spec.name()), ": the shard's variable is ",
          DataTypeName(var->dtype), ", the restored value ", DataTypeName(spec.dtype())));
    }
    targets[spec.name()] = {var, &part};
  }
  std::vector<std::unique_ptr<absl::MutexLock>> locks;
  for (auto& [name, t] : targets) locks.push_back(std::make_unique<absl::MutexLock>(&t.first->mu));
  for (auto& [name, t] : targets) {
    Variable& var = *t.first;
    var.mu.AssertHeld();
    var.Swap(std::move(t.second->contents));
    var.DropInitialValue();
    var.initialized = true;
    ++var.version;
    ++*applied;
  }
  return absl::OkStatus();
}

void VariableStore::DropStaleRestores(absl::Duration age) {
  absl::MutexLock lock(&restore_mu_);
  const absl::Time cutoff = absl::Now() - age;
  for (auto it = restores_.begin(); it != restores_.end();) {
    if (it->second->staged_at < cutoff) {
      it = restores_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace psd
