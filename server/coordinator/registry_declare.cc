// Registry (registry.h): declaring variables. A batch is checked against
// the registry and itself (TensorFlow's reuse rules, agreement across
// sessions), new variables are resolved (shape, dtype, initializer,
// partitioning, part names) and placed, and the batch is committed as one
// record, at once (Declare) or once the caller created the new parts
// (PrepareDeclare, then CommitDeclare).
#include "coordinator/registry.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "coordinator/partitioners.h"
#include "coordinator/registry_internal.h"
#include "device/initializer_spec.h"
#include "psd/dtype.h"
#include "psd/names.h"
#include "psd/random_id.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {
namespace {

std::string ShapeString(const TensorShapeProto& shape) {
  return PyList(std::vector<int64_t>(shape.dims().begin(), shape.dims().end()));
}

std::vector<int64_t> Partitions(const VariableDef& def) {
  return std::vector<int64_t>(def.partitions().begin(), def.partitions().end());
}

std::string Describe(const VariableDef& def) {
  std::string s = absl::StrCat(DataTypeName(def.dtype()), " shape ", ShapeString(def.shape()));
  if (def.partitioned()) absl::StrAppend(&s, " partitions ", PyList(Partitions(def)));
  return s;
}

}  // namespace

using registry_messages::OrUnknown;

absl::StatusOr<DeclareResult> Registry::GetVariable(uint64_t session,
                                                    const VariableDeclaration& decl,
                                                    absl::Span<const int32_t> live_shards,
                                                    uint64_t request_seq) {
  PSD_ASSIGN_OR_RETURN(auto results, Declare(session, absl::MakeConstSpan(&decl, 1), live_shards,
                                             request_seq));
  return std::move(results[0]);
}

absl::StatusOr<std::vector<DeclareResult>> Registry::Declare(
    uint64_t session, absl::Span<const VariableDeclaration> decls,
    absl::Span<const int32_t> live_shards, uint64_t request_seq) {
  uint64_t wait_for = 0;
  absl::StatusOr<std::vector<DeclareResult>> declared =
      [&]() -> absl::StatusOr<std::vector<DeclareResult>> {
    // Both steps under one hold of the lock: concurrent declarations of one
    // name yield one variable, none of them ABORTED.
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    PSD_ASSIGN_OR_RETURN(PreparedDeclaration prepared,
                         PrepareDeclareLocked(session, decls, live_shards, request_seq));
    PSD_ASSIGN_OR_RETURN(const uint64_t seq, CommitDeclareLocked(prepared));
    wait_for = std::max(wait_for, seq);
    return std::move(prepared.results);
  }();
  return Committed(std::move(declared), wait_for);
}

absl::StatusOr<PreparedDeclaration> Registry::PrepareDeclare(
    uint64_t session, absl::Span<const VariableDeclaration> decls,
    absl::Span<const int32_t> live_shards, uint64_t request_seq) {
  uint64_t wait_for = 0;
  absl::StatusOr<PreparedDeclaration> prepared;
  {
    absl::MutexLock lock(&mu_);
    prepared = PrepareDeclareLocked(session, decls, live_shards, request_seq);
    if (prepared.ok()) NoteObserved(&*prepared);
    // A batch CommitDeclare will log waits there for its own record, which
    // covers everything before it; an answer with nothing to commit (an
    // error, a replay, a reuse) is given once what it reflects is durable.
    if (!prepared.ok() || prepared->replayed || !prepared->record.has_value()) {
      wait_for = ack_seq_;
    }
  }
  return Acknowledged(std::move(prepared), wait_for);
}

absl::StatusOr<PreparedDeclaration> Registry::PrepareDeclareLocked(
    uint64_t session, absl::Span<const VariableDeclaration> decls,
    absl::Span<const int32_t> live_shards, uint64_t request_seq) {
  PSD_ASSIGN_OR_RETURN(SessionState * state, FindSession(session));
  PSD_ASSIGN_OR_RETURN(const SessionReply* reply, FindReply(*state, request_seq));
  PreparedDeclaration prepared;
  prepared.session = session;
  prepared.request_seq = request_seq;
  std::vector<DeclareResult>& results = prepared.results;
  if (reply != nullptr) {
    // A retry whose first attempt was applied (its answer was lost): the
    // same variables. Their parts were created before it was registered.
    prepared.replayed = true;
    for (int i = 0; i < reply->names_size(); ++i) {
      auto it = variables_.find(reply->names(i));
      if (it == variables_.end()) {
        return absl::NotFoundError(absl::StrCat("variable ", reply->names(i),
                                                " was deleted since it was declared (retry of "
                                                "request ", request_seq, ")"));
      }
      results.push_back({it->second, i < reply->created_size() && reply->created(i)});
    }
    return prepared;
  }
  Txn txn;
  txn.next_creation_seq = next_creation_seq_;
  for (int32_t id : live_shards) {
    auto it = placement_.find(id);
    txn.load[id] = it == placement_.end() ? 0 : it->second.bytes;
    if (auto f = shard_free_bytes_.find(id); f != shard_free_bytes_.end()) {
      txn.free_bytes[id] = f->second;
    }
  }
  results.reserve(decls.size());
  for (const VariableDeclaration& decl : decls) {
    PSD_ASSIGN_OR_RETURN(DeclareResult r, DeclareOne(*state, decl, &txn));
    results.push_back(std::move(r));
  }
  // Creation numbers are taken when prepared, so batches prepared at once
  // and committed in any order never share one.
  next_creation_seq_ = std::max(next_creation_seq_, txn.next_creation_seq);
  if (!txn.attached.empty()) {
    RegistryRecord& record = prepared.record.emplace();
    auto* op = record.mutable_declared();
    op->set_session_id(session);
    for (VariableDef& def : txn.created) *op->add_created() = std::move(def);
    for (const std::string& name : txn.attached_order) {
      auto* a = op->add_attached();
      a->set_name(name);
      a->set_declared_at(txn.attached[name]);
    }
    if (request_seq != 0) {
      SessionReply* r = op->mutable_reply();
      r->set_request_seq(request_seq);
      for (const DeclareResult& result : results) {
        r->add_names(result.def.name());
        r->add_created(result.created);
      }
    }
  }
  return prepared;
}

absl::Status Registry::CommitDeclare(const PreparedDeclaration& prepared) {
  uint64_t wait_for = 0;
  absl::Status committed = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    PSD_ASSIGN_OR_RETURN(const uint64_t seq, CommitDeclareLocked(prepared));
    wait_for = std::max(wait_for, seq);
    return absl::OkStatus();
  }();
  return Committed(std::move(committed), wait_for);
}

absl::StatusOr<uint64_t> Registry::CommitDeclareLocked(const PreparedDeclaration& prepared) {
  if (prepared.replayed || !prepared.record.has_value()) return uint64_t{0};
  PSD_ASSIGN_OR_RETURN(SessionState * state, FindSession(prepared.session));
  PSD_ASSIGN_OR_RETURN(const SessionReply* reply, FindReply(*state, prepared.request_seq));
  if (reply != nullptr) {
    return absl::AbortedError(absl::StrCat(
        "session ", prepared.session, ": request ", prepared.request_seq,
        " was registered by another attempt while this one's parts were created; nothing was "
        "registered, retry it"));
  }
  PSD_RETURN_IF_ERROR(CheckStillHolds(prepared));
  RegistryRecord record = *prepared.record;
  return Commit(&record, /*sync=*/true);
}

void Registry::NoteObserved(PreparedDeclaration* prepared) const {
  std::set<std::string> created;
  for (const DeclareResult& r : prepared->results) {
    if (r.created) created.insert(r.def.name());
  }
  auto note = [&](const std::string& name) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (name.empty() || created.count(name) > 0) return;
    auto it = variables_.find(name);
    prepared->observed[name] = it == variables_.end() ? 0 : it->second.creation_seq();
  };
  for (const DeclareResult& r : prepared->results) {
    if (!r.created) {
      note(r.def.name());
      continue;
    }
    if (r.def.initializer().has_from_variable()) note(r.def.initializer().from_variable().source());
    note(r.def.colocate_with());
  }
}

absl::Status Registry::CheckStillHolds(const PreparedDeclaration& prepared) const {
  auto changed = [&](const std::string& what) {
    return absl::AbortedError(absl::StrCat(
        "session ", prepared.session, ": ", what,
        " while this declaration's parts were created; nothing was registered, retry it"));
  };
  auto taken = [&](const std::string& name) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return variables_.count(name) > 0 || part_owner_.count(name) > 0;
  };
  for (const VariableDef& def : prepared.record->declared().created()) {
    if (taken(def.name())) return changed(absl::StrCat("variable ", def.name(), " was declared"));
    for (const VariablePart& part : def.parts()) {
      if (taken(part.name())) {
        return changed(absl::StrCat("the name ", part.name(), " of a part of ", def.name(),
                                    " was taken"));
      }
    }
  }
  for (const auto& [name, creation_seq] : prepared.observed) {
    auto it = variables_.find(name);
    const uint64_t now = it == variables_.end() ? 0 : it->second.creation_seq();
    if (now != creation_seq) {
      return changed(absl::StrCat("variable ", name, " was declared or deleted"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DeclareResult> Registry::DeclareOne(const SessionState& session,
                                                   const VariableDeclaration& decl, Txn* txn) {
  const std::string& name = decl.name();
  PSD_RETURN_IF_ERROR(ValidateFullVariableName(name));
  if (decl.dtype() != DT_INVALID) {
    PSD_RETURN_IF_ERROR(ValidateDataType(decl.dtype(), absl::StrCat("variable ", name)));
  }

  const VariableDef* existing = nullptr;
  if (auto it = txn->created_index.find(name); it != txn->created_index.end()) {
    existing = &txn->created[it->second];
  } else if (auto v = variables_.find(name); v != variables_.end()) {
    existing = &v->second;
  }
  if (decl.replication() < 0 || decl.replication() > kMaxReplication) {
    return absl::InvalidArgumentError(absl::StrCat(
        "variable ", name, ": replication ", decl.replication(), " is outside 1..",
        kMaxReplication, " (0: the cluster's, ", options_.replication, ")"));
  }
  const bool in_session = txn->attached.count(name) > 0 || session.declared().count(name) > 0;
  const bool wants_partitions = decl.has_partitioner();
  if (decl.has_embedding() || (existing != nullptr && existing->has_embedding())) {
    return DeclareTable(session, decl, existing, in_session, txn);
  }

  if (existing == nullptr) {
    if (decl.reuse() == REUSE_TRUE) {
      return absl::NotFoundError(absl::StrCat(
          wants_partitions ? "PartitionedVariable " : "Variable ", name,
          " does not exist, or was not created with tf.get_variable(). Did you mean to set "
          "reuse=None in VarScope?"));
    }
    if (auto owner = part_owner_.find(name); owner != part_owner_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Variable name ", name, " is taken by a part of partitioned variable ", owner->second));
    }
    PSD_ASSIGN_OR_RETURN(VariableDef def, ResolveNew(session.id(), decl, txn));
    txn->created_index[name] = txn->created.size();
    txn->created.push_back(def);
    txn->attached[name] = decl.declared_at();
    txn->attached_order.push_back(name);
    return DeclareResult{std::move(def), true};
  }

  // The declared shape and dtype, where given (a supplied value gives both).
  bool has_shape = decl.has_shape();
  TensorShapeProto shape = decl.shape();
  DataType dtype = decl.dtype();
  if (decl.initializer().has_supplied_value()) {
    has_shape = true;
    shape = decl.initializer().supplied_value().shape();
    if (dtype == DT_INVALID) dtype = decl.initializer().supplied_value().dtype();
  }
  const bool shape_differs =
      has_shape && !std::equal(shape.dims().begin(), shape.dims().end(),
                               existing->shape().dims().begin(), existing->shape().dims().end());
  const bool dtype_differs = dtype != DT_INVALID && dtype != existing->dtype();
  // A scalar ignores the partitioner (TensorFlow's is_scalar case).
  const bool declares_partitioned = wants_partitions && existing->shape().dims_size() > 0;
  std::vector<int64_t> partitions;
  if (declares_partitioned) {
    TensorShape full(
        std::vector<int64_t>(existing->shape().dims().begin(), existing->shape().dims().end()));
    if (has_shape)
      full = TensorShape(std::vector<int64_t>(shape.dims().begin(), shape.dims().end()));
    PSD_ASSIGN_OR_RETURN(partitions,
                         ComputePartitions(decl.partitioner(), full,
                                           dtype != DT_INVALID ? dtype : existing->dtype()));
    PSD_RETURN_IF_ERROR(ValidatePartitions(full, partitions).status());
  }

  if (in_session) {
    if (decl.reuse() == REUSE_FALSE) {
      auto pending = txn->attached.find(name);
      return registry_messages::AlreadyInSession(
          *existing, name,
          pending != txn->attached.end() ? pending->second : session.declared().at(name));
    }
    const char* what = existing->partitioned() ? "reuse partitioned variable" : "share variable";
    if (shape_differs) {
      return absl::InvalidArgumentError(
          absl::StrCat("Trying to ", what, " ", name, ", but specified shape ", ShapeString(shape),
                       " and found shape ", ShapeString(existing->shape()), "."));
    }
    if (dtype_differs) {
      return absl::InvalidArgumentError(
          absl::StrCat("Trying to ", what, " ", name, ", but specified dtype ", DataTypeName(dtype),
                       " and found dtype ", DataTypeName(existing->dtype()), "."));
    }
    if (declares_partitioned && !existing->partitioned()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "A partitioner was provided, but an unpartitioned version of the variable was found: ",
          name,
          ".  Perhaps a variable of the same name was already created without "
          "partitioning?"));
    }
    if (declares_partitioned && partitions != Partitions(*existing)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Trying to reuse partitioned variable ", name, ", but specified partitions ",
          PyList(partitions), " and found partitions ", PyList(Partitions(*existing)), "."));
    }
    PSD_RETURN_IF_ERROR(
        registry_messages::ReplicationConflict(decl, *existing, session.id(), true));
    // Reuse without a partitioner returns the partitioned variable as is.
    return DeclareResult{*existing, false};
  }

  // Another session's variable: attach if the declarations agree. TensorFlow's
  // per-graph rule makes reuse=True of a name this session never declared a
  // miss, even when another session created it.
  if (decl.reuse() == REUSE_TRUE) return registry_messages::NotInSession(*existing, name);
  const bool partitioning_differs = declares_partitioned != existing->partitioned() ||
                                    (declares_partitioned && partitions != Partitions(*existing));
  if (shape_differs || dtype_differs || partitioning_differs) {
    std::string mine = absl::StrCat(dtype != DT_INVALID ? DataTypeName(dtype) : "<any dtype>",
                                    " shape ", has_shape ? ShapeString(shape) : "<any>");
    if (declares_partitioned) absl::StrAppend(&mine, " partitions ", PyList(partitions));
    return absl::InvalidArgumentError(
        absl::StrCat("Conflicting declarations of variable ", name, ": session ", session.id(),
                     " declares ", mine, " at ", OrUnknown(decl.declared_at()), ", but session ",
                     existing->declared_by_session(), " declared it as ", Describe(*existing),
                     " at ", OrUnknown(existing->declared_at())));
  }
  PSD_RETURN_IF_ERROR(
      registry_messages::ReplicationConflict(decl, *existing, session.id(), false));
  txn->attached[name] = decl.declared_at();
  txn->attached_order.push_back(name);
  return DeclareResult{*existing, false};
}

absl::StatusOr<VariableDef> Registry::ResolveNew(uint64_t session, const VariableDeclaration& decl,
                                                 Txn* txn) {
  const std::string& name = decl.name();
  VariableDef def;
  def.set_name(name);
  DataType dtype = decl.dtype() == DT_INVALID ? DT_FLOAT : decl.dtype();
  TensorShape shape;
  if (decl.initializer().has_supplied_value()) {
    // The value stays with the client: only its description is recorded.
    const InitializerSpec::SuppliedValue& supplied = decl.initializer().supplied_value();
    PSD_ASSIGN_OR_RETURN(shape, ShapeFromProto(supplied.shape(),
                                               absl::StrCat("supplied value of ", name)));
    if (decl.has_shape()) {
      PSD_ASSIGN_OR_RETURN(TensorShape declared,
                           ShapeFromProto(decl.shape(), absl::StrCat("variable ", name)));
      if (declared != shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            "variable ", name, ": declared shape ", declared.ToString(),
            " does not match the initial value's shape ", shape.ToString()));
      }
    }
    if (decl.dtype() != DT_INVALID && decl.dtype() != supplied.dtype()) {
      return absl::InvalidArgumentError(
          absl::StrCat("variable ", name, ": Initializer type '", DataTypeName(supplied.dtype()),
                       "' and explicit dtype '", DataTypeName(decl.dtype()), "' don't match."));
    }
    dtype = supplied.dtype();
    *def.mutable_initializer() = decl.initializer();
  } else {
    if (!decl.has_shape()) {
      return absl::InvalidArgumentError(absl::StrCat("Shape of a new variable (", name,
                                                     ") must be fully defined, but instead was "
                                                     "<unknown>."));
    }
    PSD_ASSIGN_OR_RETURN(shape, ShapeFromProto(decl.shape(), absl::StrCat("variable ", name)));
    if (decl.has_initializer()) {
      *def.mutable_initializer() = decl.initializer();
    } else {
      def.mutable_initializer()->mutable_default_initializer();
    }
  }
  // TensorFlow gives an initializer without a seed an op seed of its own,
  // so two unseeded variables never start equal. Drawn here, once, and
  // recorded with the variable: re-initializing it (and every part of it)
  // reproduces the same values.
  if (def.initializer().seed() == 0 && DrawsRandomValues(def.initializer())) {
    def.mutable_initializer()->set_seed(static_cast<int64_t>(RandomNonzeroId() >> 1));
  }
  def.set_dtype(dtype);
  ShapeToProto(shape, def.mutable_shape());
  // A named cap, so that sizes summed over a cluster's variables (placement)
  // never overflow.
  if (const int64_t bytes = EstimatedBytes(dtype, shape.num_elements());
      bytes > kMaxVariableBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot create ", NameForMessage(name), ": shape ", ShapeString(def.shape()), " of ",
        DataTypeName(dtype), " would hold ", bytes == std::numeric_limits<int64_t>::max()
                                                 ? std::string("over 2^63")
                                                 : std::to_string(bytes),
        " bytes; the most one variable may hold is ", kMaxVariableBytes, " bytes (1 PiB)"));
  }
  // The check each part's shard runs at creation, run here first so a spec
  // the shards would refuse is never registered.
  PSD_RETURN_IF_ERROR(ValidateInitializerForCreate(def.initializer(), dtype, shape, name));

  Slicing slicing;
  if (decl.has_partitioner() && shape.rank() > 0) {
    PSD_ASSIGN_OR_RETURN(auto partitions, ComputePartitions(decl.partitioner(), shape, dtype));
    PSD_ASSIGN_OR_RETURN(slicing, ValidatePartitions(shape, partitions));
    PSD_RETURN_IF_ERROR(
        ValidatePartCount(name, slicing.num_parts, options_.max_parts_per_variable));
    def.set_partitioned(true);
    def.set_partition_axis(slicing.axis);
    for (int64_t p : partitions) def.add_partitions(p);
  }
  std::vector<PartSlice> slices = SplitParts(shape, slicing);
  std::vector<int64_t> part_bytes;
  for (size_t k = 0; k < slices.size(); ++k) {
    VariablePart* part = def.add_parts();
    part->set_name(def.partitioned() ? PartName(name, static_cast<int64_t>(k)) : name);
    if (def.partitioned()) {
      // The name its shard holds: within the shard's limits too.
      if (absl::Status s = ValidateVariableName(part->name()); !s.ok()) {
        const std::string& part_name = part->name();
        return absl::InvalidArgumentError(absl::StrCat(
            "cannot create ", NameForMessage(name), ": its part name '...",
            part_name.substr(part_name.size() > 24 ? part_name.size() - 24 : 0), "' is ",
            part_name.size(), " bytes, over the limit of ", kMaxNameBytes, " bytes"));
      }
    }
    ShapeToProto(slices[k].shape, part->mutable_shape());
    for (int64_t o : slices[k].offset) part->add_offset(o);
    if (part_owner_.count(part->name()) > 0 || variables_.count(part->name()) > 0 ||
        txn->new_part_names.count(part->name()) > 0 || txn->created_index.count(part->name()) > 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot create ", name, ": its part name ",
                                                     part->name(), " is already in use"));
    }
    part_bytes.push_back(EstimatedBytes(dtype, slices[k].shape.num_elements()));
  }
  if (def.initializer().has_from_variable()) {
    PSD_RETURN_IF_ERROR(ValidateFromVariable(def, *txn));
  }
  std::vector<int32_t> shards;
  if (!decl.colocate_with().empty()) {
    PSD_ASSIGN_OR_RETURN(shards, ColocatedShards(name, decl.colocate_with(), part_bytes, txn));
    def.set_colocate_with(decl.colocate_with());
    TakeGroupEpochs(&def, decl.colocate_with(), *txn);
  } else {
    PSD_ASSIGN_OR_RETURN(shards, PlaceParts(part_bytes, &txn->load));
  }
  for (size_t k = 0; k < shards.size(); ++k) {
    def.mutable_parts(static_cast<int>(k))->set_shard_id(shards[k]);
    txn->new_part_names.insert(def.parts(static_cast<int>(k)).name());
  }
  PSD_ASSIGN_OR_RETURN(const int32_t replication,
                       ResolveReplication(decl, decl.colocate_with(), *txn));
  def.set_replication(replication);

  def.set_trainable(!decl.has_trainable() || decl.trainable());
  std::vector<std::string> collections(decl.collections().begin(), decl.collections().end());
  if (collections.empty()) collections.push_back(kGlobalVariables);
  if (def.trainable()) collections.push_back(kTrainableVariables);
  std::set<std::string> seen;
  for (const std::string& c : collections) {
    if (c.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("variable ", name, ": empty collection name"));
    }
    if (seen.insert(c).second) def.add_collections(c);
  }
  def.set_declared_by_session(session);
  def.set_declared_at(decl.declared_at());
  def.set_created_unix_micros(absl::ToUnixMicros(absl::Now()));
  def.set_creation_seq(txn->next_creation_seq++);
  return def;
}

const VariableDef* Registry::FindDeclared(const std::string& name, const Txn& txn) const {
  if (auto it = txn.created_index.find(name); it != txn.created_index.end()) {
    return &txn.created[it->second];
  }
  if (auto v = variables_.find(name); v != variables_.end()) return &v->second;
  return nullptr;
}

absl::Status Registry::ValidateFromVariable(const VariableDef& def, const Txn& txn) const {
  const std::string& name = def.name();
  const std::string& source_name = def.initializer().from_variable().source();
  if (source_name == name) {
    return absl::InvalidArgumentError(
        absl::StrCat("variable ", name, " cannot be initialized from itself"));
  }
  const VariableDef* source = FindDeclared(source_name, txn);
  if (source == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("variable ", name, " is initialized from ",
                                                   source_name,
                                                   ", which is not a declared variable"));
  }
  if (source->has_embedding()) {
    return absl::InvalidArgumentError(
        absl::StrCat("variable ", name, " cannot be initialized from ", source_name,
                     ": it is an embedding table, which has no dense value"));
  }
  // The source exists and the target is new, so only a chain that comes
  // back to this name (a variable initialized from an earlier, deleted
  // `name`) can close a cycle.
  std::vector<std::string> chain = {name, source_name};
  std::set<std::string> seen = {source_name};
  for (const VariableDef* v = source; v->initializer().has_from_variable();) {
    const std::string& next = v->initializer().from_variable().source();
    chain.push_back(next);
    if (next == name) {
      return absl::InvalidArgumentError(
          absl::StrCat("variable ", name, " cannot be initialized from ", source_name,
                       ": the initializations would form a cycle (",
                       absl::StrJoin(chain, " <- "), ")"));
    }
    if (!seen.insert(next).second) break;
    v = FindDeclared(next, txn);
    if (v == nullptr) break;
  }
  return CheckFromVariableFits(def, *source);
}

absl::Status Registry::CheckFromVariableFits(const VariableDef& def, const VariableDef& source_def) {
  const InitializerSpec::FromVariable& from = def.initializer().from_variable();
  const std::string& name = def.name();
  const std::string& source_name = from.source();
  const double scale = from.has_scale() ? from.scale() : 1.0;
  const double offset = from.offset();
  const VariableDef* source = &source_def;
  const std::string both = absl::StrCat("variable ", name, " (", Describe(def),
                                        ") cannot be initialized from ", source_name, " (",
                                        Describe(*source), "): ");
  if (source->dtype() != def.dtype()) return absl::InvalidArgumentError(both + "the dtypes differ");
  if (!std::equal(def.shape().dims().begin(), def.shape().dims().end(),
                  source->shape().dims().begin(), source->shape().dims().end())) {
    return absl::InvalidArgumentError(both + "the shapes differ");
  }
  if (def.partitioned() != source->partitioned() || def.parts_size() != source->parts_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(both, "the partitionings differ (", def.parts_size(), " part(s) against ",
                     source->parts_size(), ")"));
  }
  for (int k = 0; k < def.parts_size(); ++k) {
    const TensorShapeProto& mine = def.parts(k).shape();
    const TensorShapeProto& theirs = source->parts(k).shape();
    if (!std::equal(mine.dims().begin(), mine.dims().end(), theirs.dims().begin(),
                    theirs.dims().end())) {
      return absl::InvalidArgumentError(absl::StrCat(
          both, "part ", k, " has shape ", ShapeString(mine), " against ", ShapeString(theirs)));
    }
  }
  const std::string transform = absl::StrCat("scale ", scale, " and offset ", offset);
  if (!std::isfinite(scale) || !std::isfinite(offset)) {
    return absl::InvalidArgumentError(absl::StrCat("variable ", name, ": initialized from ",
                                                   source_name, " with ", transform,
                                                   ": both must be finite"));
  }
  const DataType dtype = def.dtype();
  if ((dtype == DT_STRING || dtype == DT_BOOL) && (scale != 1.0 || offset != 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("variable ", name, " (", DataTypeName(dtype), ") initialized from ",
                     source_name, " with ", transform, ": a ", DataTypeName(dtype),
                     " variable copies its source only (scale 1, offset 0)"));
  }
  const bool integer = dtype == DT_INT8 || dtype == DT_INT16 || dtype == DT_INT32 ||
                       dtype == DT_INT64 || dtype == DT_UINT8;
  if (integer && (scale != std::trunc(scale) || offset != std::trunc(offset) ||
                  std::fabs(scale) > 9.2e18 || std::fabs(offset) > 9.2e18)) {
    return absl::InvalidArgumentError(
        absl::StrCat("variable ", name, " (", DataTypeName(dtype), ") initialized from ",
                     source_name, " with ", transform,
                     ": an integer variable needs a whole scale and offset"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> Registry::ResolveReplication(const VariableDeclaration& decl,
                                                     const std::string& primary_name,
                                                     const Txn& txn) const {
  const std::string& name = decl.name();
  int32_t replication = decl.replication() != 0 ? decl.replication() : options_.replication;
  if (!primary_name.empty()) {
    // A slot moves, and so fails over, with its primary's part: it has the
    // primary's backups, so it has its factor.
    const VariableDef* primary = FindDeclared(primary_name, txn);
    if (primary != nullptr) {
      if (decl.replication() != 0 && decl.replication() != ReplicationOf(*primary)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "variable ", name, " declares replication ", decl.replication(), ", but it sits beside ",
            primary_name, ", whose replication is ", ReplicationOf(*primary),
            ": a variable beside another takes its replication (leave it 0)"));
      }
      replication = ReplicationOf(*primary);
    }
  }
  if (replication == 1) return replication;
  // txn.load holds the live, undrained shards (where parts may be placed).
  const int64_t shards = static_cast<int64_t>(txn.load.size());
  if (replication > shards) {
    return absl::FailedPreconditionError(absl::StrCat(
        "variable ", name, " asks for replication ", replication, " (a primary and ",
        replication - 1, " backups on distinct shards), but only ", shards,
        " live, undrained shards are registered"));
  }
  return replication;
}

void Registry::TakeGroupEpochs(VariableDef* def, const std::string& primary_name,
                               const Txn& txn) const {
  // Without it a slot declared after its variable failed over (epoch 1 or
  // more) had epoch 0, and every backup of the group was refused ("not one
  // group"): the group stayed without backups.
  const VariableDef* primary = FindDeclared(primary_name, txn);
  if (primary == nullptr) return;
  for (int k = 0; k < def->parts_size(); ++k) {
    const int beside = def->parts_size() == 1 ? 0 : k;
    if (beside < primary->parts_size()) {
      def->mutable_parts(k)->set_epoch(primary->parts(beside).epoch());
    }
  }
}

absl::StatusOr<std::vector<int32_t>> Registry::ColocatedShards(
    const std::string& name, const std::string& primary_name,
    const std::vector<int64_t>& part_bytes, Txn* txn) {
  const VariableDef* primary = FindDeclared(primary_name, *txn);
  if (primary == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot colocate ", name, " with ",
                                                   primary_name, ": no such variable"));
  }
  const size_t n = part_bytes.size();
  if (n != 1 && n != static_cast<size_t>(primary->parts_size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot colocate ", name, " (", n, " parts) with ", primary_name, " (",
                     primary->parts_size(), " parts): the part counts must match, or be 1"));
  }
  std::vector<int32_t> shards;
  for (size_t k = 0; k < n; ++k) {
    const int32_t shard = primary->parts(n == 1 ? 0 : static_cast<int>(k)).shard_id();
    // A shard that is not live keeps the part anyway: creating it fails
    // UNAVAILABLE and is retried on the next declaration, as for any part.
    if (auto it = txn->load.find(shard); it != txn->load.end()) it->second += part_bytes[k];
    shards.push_back(shard);
  }
  return shards;
}

}  // namespace psd
