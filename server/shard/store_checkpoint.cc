// VariableStore's part in checkpoints: fences that pin every value, and
// restores staged in two phases.
#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/embedding_table.h"
#include "shard/store_internal.h"
#include "shard/variable_store.h"

namespace psd {

using store_internal::AllocateStaging;
using store_internal::RecycleContents;
using store_internal::Quoted;

absl::Status VariableStore::Fence(uint64_t fence_id, absl::Duration lease,
                                  std::vector<PinnedValue>* snapshot) {
  PSD_RETURN_IF_ERROR(gate_.Fence(fence_id, lease));
  std::vector<std::shared_ptr<Variable>> vars;
  {
    absl::ReaderMutexLock lock(&mu_);
    vars.reserve(variables_.size());
    // A part moving in is not this shard's yet: its source saves it.
    for (const auto& [name, var] : variables_) {
      if (!var->incoming.load(std::memory_order_acquire)) vars.push_back(var);
    }
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
  // Tables pin their rows in O(1) each (EmbeddingTable::Pin): the fence
  // pause does not grow with their size.
  std::vector<std::shared_ptr<EmbeddingPart>> tables;
  {
    absl::ReaderMutexLock lock(&mu_);
    // A table's part moving in is not this shard's yet: its source saves it.
    for (const auto& [name, part] : tables_) {
      if (!part->incoming.load(std::memory_order_acquire)) tables.push_back(part);
    }
  }
  for (const auto& part : tables) {
    PinnedValue v;
    v.name = part->name;
    v.dtype = part->dtype;
    v.initialized = true;
    v.table_rows = part->table->Pin();
    v.table_column = part->column;
    v.key_dtype = part->key_dtype;
    v.shape = TensorShape({v.table_rows->rows(), part->dim});
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
    if (v.pin == nullptr) continue;  // a table's rows: their copies are the table's
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
                         AllocateStaging(&pool_, device_, value.dtype(), shape, name));
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
  PSD_ASSIGN_OR_RETURN(staged.contents,
                       AllocateStaging(&pool_, device_, part.dtype(), shape, name));
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
  for (const auto& part : r->parts) {
    PSD_RETURN_IF_ERROR(NoteUnforwardedWrite(part.spec.name(), "a restore"));
  }
  for (const auto& part : r->tables) {
    PSD_RETURN_IF_ERROR(NoteUnforwardedWrite(part.spec.name(), "a restore"));
  }
  // Tables' new contents are built first (a failure changes nothing), and
  // installed with the dense parts.
  PSD_ASSIGN_OR_RETURN(TableInstall install_tables, PrepareTableRestore(r.get(), applied));
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
    RecycleContents(&pool_, device_, var.Swap(std::move(t.second->contents)));
    var.DropInitialValue();
    var.initialized = true;
    ++var.version;
    ++*applied;
  }
  install_tables();
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
