// Registry (registry.h): declaring embedding tables (DeepRec's
// get_embedding_variable). A table is a variable keyed by feature id: no
// fixed first dimension, `shape` is [embedding_dim], and its parts split
// the key space by hash (EmbeddingSpec), so a table's declaration is
// resolved differently from a dense one (no slicing, an initializer drawn
// per key, filter and eviction policies), while naming, reuse, attach,
// collections and trainable follow the dense rules exactly.
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/partitioners.h"
#include "coordinator/registry.h"
#include "coordinator/registry_internal.h"
#include "device/initializer_spec.h"
#include "google/protobuf/util/message_differencer.h"
#include "psd/dtype.h"
#include "psd/names.h"
#include "psd/random_id.h"
#include "psd/seeds.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {
using registry_messages::OrUnknown;

namespace {

// DeepRec's GraphKeys.EMBEDDING_VARIABLES: every EmbeddingVariable (slots
// included) joins it on creation, after "trainable_variables"
// (tensorflow/python/ops/kv_variable_ops.py, _init_from_args;
// tensorflow/python/framework/ops.py).
constexpr char kEmbeddingVariables[] = "embedding_variables";


// A table declaration resolved as far as it can be without creating it:
// what a reuse or an attach compares with the table found.
struct TableShape {
  DataType dtype = DT_INVALID;  // DT_INVALID: not declared (any dtype matches on reuse)
  EmbeddingSpec spec;           // resolved: key dtype and counter bits filled in
  // Parts: -1 when not declared (an unpartitioned table, or a reuse
  // without a partitioner, takes what it finds); else the count, with
  // `partitioned` telling fixed_size(N) ("name/part_K") from none ("name").
  int64_t parts = -1;
  bool partitioned = false;
};

std::string PartsString(int64_t parts, bool partitioned) {
  if (parts < 0) return "<any> parts";
  if (!partitioned) return "1 part (unpartitioned)";
  return absl::StrCat(parts, " parts");
}

std::string DescribeTable(DataType dtype, const EmbeddingSpec& spec, int64_t parts,
                          bool partitioned) {
  std::string s = absl::StrCat(
      "an embedding table ", dtype == DT_INVALID ? std::string("<any dtype>") : DataTypeName(dtype),
      " dim ", spec.embedding_dim(), " key ", DataTypeName(spec.key_dtype()), " ",
      PartsString(parts, partitioned));
  // The policies, as the wire spells them (filter, eviction, memory, slot_of).
  EmbeddingSpec policies = spec;
  policies.clear_embedding_dim();
  policies.clear_key_dtype();
  const std::string text = policies.ShortDebugString();
  if (!text.empty()) absl::StrAppend(&s, " {", text, "}");
  return s;
}

std::string DescribeDef(const VariableDef& def) {
  if (!def.has_embedding()) {
    std::string s = absl::StrCat(
        "a dense variable ", DataTypeName(def.dtype()), " shape ",
        PyList(std::vector<int64_t>(def.shape().dims().begin(), def.shape().dims().end())));
    return s;
  }
  return DescribeTable(def.dtype(), def.embedding(), def.parts_size(), def.partitioned());
}

// Fills in what an unset field of a table's spec means, so specs compare
// as resolved values: key dtype DT_INVALID is int64, counter_bits 0 is 8.
void ResolveSpecDefaults(EmbeddingSpec* spec) {
  if (spec->key_dtype() == DT_INVALID) spec->set_key_dtype(DT_INT64);
  if (spec->has_bloom_filter() && spec->bloom_filter().counter_bits() == 0) {
    spec->mutable_bloom_filter()->set_counter_bits(8);
  }
}

// INVALID_ARGUMENT naming the table and the value unless the spec's
// own values are in range (EmbeddingSpec's contract).
absl::Status ValidateSpec(const std::string& name, const EmbeddingSpec& spec) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("embedding table ", name, ": ", what));
  };
  if (spec.embedding_dim() <= 0 || spec.embedding_dim() > kMaxEmbeddingDim) {
    return bad(absl::StrCat("embedding_dim must be in [1, ", kMaxEmbeddingDim, "], got ",
                            spec.embedding_dim()));
  }
  if (spec.key_dtype() != DT_INT64 && spec.key_dtype() != DT_INT32) {
    return bad(
        absl::StrCat("key_dtype must be int64 or int32, got ", DataTypeName(spec.key_dtype())));
  }
  if (spec.has_counter_filter() && spec.counter_filter().filter_freq() < 1) {
    return bad(absl::StrCat("counter_filter.filter_freq must be >= 1, got ",
                            spec.counter_filter().filter_freq()));
  }
  if (spec.has_bloom_filter()) {
    const EmbeddingSpec::BloomFilter& b = spec.bloom_filter();
    if (b.filter_freq() < 1) {
      return bad(absl::StrCat("bloom_filter.filter_freq must be >= 1, got ", b.filter_freq()));
    }
    if (b.max_element_size() < 1) {
      return bad(
          absl::StrCat("bloom_filter.max_element_size must be >= 1, got ", b.max_element_size()));
    }
    const double fpp = b.false_positive_probability();
    if (!(fpp > 0.0 && fpp < 1.0)) {
      return bad(
          absl::StrCat("bloom_filter.false_positive_probability must be in (0, 1), got ", fpp));
    }
    if (b.counter_bits() != 8 && b.counter_bits() != 16 && b.counter_bits() != 32) {
      return bad(absl::StrCat("bloom_filter.counter_bits must be 8, 16 or 32 (0: 8), got ",
                              b.counter_bits()));
    }
  }
  if (spec.steps_to_live() < 0) {
    return bad(absl::StrCat("steps_to_live must be >= 0, got ", spec.steps_to_live()));
  }
  if (!(spec.l2_weight_threshold() >= 0.0) || !std::isfinite(spec.l2_weight_threshold())) {
    return bad(absl::StrCat("l2_weight_threshold must be >= 0 and finite, got ",
                            spec.l2_weight_threshold()));
  }
  if (spec.part_memory_limit_bytes() < 0) {
    return bad(
        absl::StrCat("part_memory_limit_bytes must be >= 0, got ", spec.part_memory_limit_bytes()));
  }
  return absl::OkStatus();
}

const char* PartitionerKindName(const PartitionerSpec& p) {
  switch (p.kind_case()) {
    case PartitionerSpec::kFixedSize:
      return "fixed_size_partitioner";
    case PartitionerSpec::kVariableAxisSize:
      return "variable_axis_size_partitioner";
    case PartitionerSpec::kMinMax:
      return "min_max_variable_partitioner";
    case PartitionerSpec::kExplicitPartitions:
      return "explicit partitions";
    default:
      return "an unset partitioner kind";
  }
}

// The part count a table's partitioner gives: fixed_size(N) on axis 0 (the
// key axis) only, as DeepRec's EmbeddingVariables are partitioned.
absl::StatusOr<int64_t> TablePartCount(const std::string& name, const PartitionerSpec& p,
                                       int64_t max_parts) {
  if (!p.has_fixed_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "embedding table ", name, ": partitioner ", PartitionerKindName(p),
        " is not supported for an embedding table (only fixed_size_partitioner(N) on axis 0: "
        "keys are spread over N parts by hash)"));
  }
  if (p.fixed_size().axis() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedding table ", name, ": fixed_size_partitioner axis ",
                     p.fixed_size().axis(), " is not supported (only axis 0, the key axis)"));
  }
  const int64_t n = p.fixed_size().num_shards();
  if (n < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "embedding table ", name, ": fixed_size_partitioner num_shards must be >= 1, got ", n));
  }
  PSD_RETURN_IF_ERROR(ValidatePartCount(name, n, max_parts));
  return n;
}

const char* InitializerKindName(const InitializerSpec& init) {
  switch (init.kind_case()) {
    case InitializerSpec::kUniformUnitScaling:
      return "UniformUnitScaling";
    case InitializerSpec::kFromVariable:
      return "FromVariable";
    case InitializerSpec::kSuppliedValue:
      return "SuppliedValue (an initial value)";
    case InitializerSpec::kConstant:
      return "a non-scalar Constant";
    default:
      return "this initializer";
  }
}

// The table's initializer as its shards draw it per key.
absl::StatusOr<InitializerSpec> ResolveTableInitializer(const std::string& name,
                                                        const VariableDeclaration& decl,
                                                        DataType dtype, int64_t dim) {
  InitializerSpec init = decl.initializer();
  if (!decl.has_initializer() || init.has_default_initializer() ||
      init.kind_case() == InitializerSpec::KIND_NOT_SET) {
    // DeepRec's default for get_embedding_variable is
    // init_ops.truncated_normal_initializer() with its defaults, mean 0.0
    // and stddev 1.0 (tensorflow/python/ops/variable_scope.py,
    // get_embedding_variable: "if initializer is None: initializer =
    // init_ops.truncated_normal_initializer()"), not get_variable's
    // glorot_uniform. A declared seed is kept.
    const int64_t seed = init.seed();
    init.Clear();
    init.set_seed(seed);
    init.mutable_truncated_normal()->set_mean(0.0);
    init.mutable_truncated_normal()->set_stddev(1.0);
  }
  const bool scalar_constant =
      init.has_constant() && init.constant().value().shape().dims_size() == 0;
  const bool supported = init.has_zeros() || init.has_ones() || scalar_constant ||
                         init.has_random_uniform() || init.has_random_normal() ||
                         init.has_truncated_normal();
  if (!supported) {
    return absl::InvalidArgumentError(absl::StrCat(
        "embedding table ", name, ": initializer ", InitializerKindName(init),
        " is not supported for an embedding table (rows are drawn per key: Zeros, Ones, a "
        "scalar Constant, RandomUniform, RandomNormal, TruncatedNormal or the default)"));
  }
  // Drawn once here and recorded, as for dense variables: every shard draws
  // the row of key k from (seed, k), before and after restarts.
  if (init.seed() == 0 && DrawsRandomValues(init)) {
    init.set_seed(static_cast<int64_t>(RandomNonzeroId() >> 1));
  }
  // The checks a shard runs on a row's initializer (e.g. maxval > minval,
  // the constant's dtype), run on one row here.
  PSD_RETURN_IF_ERROR(ValidateInitializerForCreate(init, dtype, TensorShape({dim}), name));
  return init;
}

}  // namespace

absl::StatusOr<DeclareResult> Registry::DeclareTable(const SessionState& session,
                                                     const VariableDeclaration& decl,
                                                     const VariableDef* existing, bool in_session,
                                                     Txn* txn) {
  const std::string& name = decl.name();
  const bool table = decl.has_embedding();
  if (existing == nullptr) {
    if (decl.reuse() == REUSE_TRUE) {
      return absl::NotFoundError(absl::StrCat(
          decl.has_partitioner() ? "PartitionedVariable " : "Variable ", name,
          " does not exist, or was not created with tf.get_variable(). Did you mean to set "
          "reuse=None in VarScope?"));
    }
    if (auto owner = part_owner_.find(name); owner != part_owner_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Variable name ", name, " is taken by a part of partitioned variable ", owner->second));
    }
    PSD_ASSIGN_OR_RETURN(VariableDef def, ResolveNewTable(session.id(), decl, txn));
    txn->created_index[name] = txn->created.size();
    txn->created.push_back(def);
    txn->attached[name] = decl.declared_at();
    txn->attached_order.push_back(name);
    return DeclareResult{std::move(def), true};
  }

  // TensorFlow's order of checks: a create of a name the session holds, then
  // a reuse of a name it does not, then what was declared.
  if (in_session && decl.reuse() == REUSE_FALSE) {
    auto pending = txn->attached.find(name);
    return registry_messages::AlreadyInSession(
        *existing, name,
        pending != txn->attached.end() ? pending->second : session.declared().at(name));
  }
  if (!in_session && decl.reuse() == REUSE_TRUE) {
    return registry_messages::NotInSession(*existing, name);
  }
  if (table != existing->has_embedding()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Conflicting declarations of variable ", name, ": session ", session.id(), " declares ",
        table ? "an embedding table" : "a dense variable", " at ", OrUnknown(decl.declared_at()),
        ", but session ", existing->declared_by_session(), " declared it as ",
        DescribeDef(*existing), " at ", OrUnknown(existing->declared_at())));
  }

  // What this declaration says, resolved as a create would resolve it.
  TableShape mine;
  mine.dtype = decl.dtype();
  mine.spec = decl.embedding();
  const std::string& primary_name = decl.embedding().slot_of();
  if (!primary_name.empty()) {
    const VariableDef* primary = FindDeclared(primary_name, *txn);
    if (primary == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Conflicting declarations of embedding table ", name, ": declared as a slot of ",
          primary_name, ", which does not exist, but found ", DescribeDef(*existing)));
    }
    if (!primary->has_embedding()) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table ", name, " is declared as a slot of ", primary_name,
                       ", which is ", DescribeDef(*primary), ", not an embedding table"));
    }
    // Unset values are the primary's (ResolveNewTable checks declared ones).
    if (mine.spec.embedding_dim() == 0)
      mine.spec.set_embedding_dim(primary->embedding().embedding_dim());
    if (mine.spec.key_dtype() == DT_INVALID)
      mine.spec.set_key_dtype(primary->embedding().key_dtype());
    EmbeddingSpec policies = mine.spec;
    policies.clear_embedding_dim();
    policies.clear_key_dtype();
    policies.clear_slot_of();
    if (policies.ByteSizeLong() == 0) {
      const std::string slot_of = mine.spec.slot_of();
      const int64_t dim = mine.spec.embedding_dim();
      const DataType key = mine.spec.key_dtype();
      mine.spec = primary->embedding();
      mine.spec.set_embedding_dim(dim);
      mine.spec.set_key_dtype(key);
      mine.spec.set_slot_of(slot_of);
    }
    if (!decl.has_partitioner()) {
      mine.parts = primary->parts_size();
      mine.partitioned = primary->partitioned();
    }
  }
  ResolveSpecDefaults(&mine.spec);
  if (decl.has_shape()) {
    const auto& dims = decl.shape().dims();
    if (dims.size() != 1 || dims[0] != mine.spec.embedding_dim()) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table ", name, ": shape ",
                       PyList(std::vector<int64_t>(dims.begin(), dims.end())),
                       " must be unset or [embedding_dim] = [", mine.spec.embedding_dim(), "]"));
    }
  }
  if (decl.has_partitioner()) {
    PSD_ASSIGN_OR_RETURN(mine.parts,
                         TablePartCount(name, decl.partitioner(), options_.max_parts_per_variable));
    mine.partitioned = true;
  } else if (!in_session && primary_name.empty()) {
    // As for dense variables: an attach without a partitioner declares an
    // unpartitioned variable.
    mine.parts = 1;
    mine.partitioned = false;
  }

  const bool dtype_differs = mine.dtype != DT_INVALID && mine.dtype != existing->dtype();
  const bool parts_differ = mine.parts >= 0 && (mine.parts != existing->parts_size() ||
                                                mine.partitioned != existing->partitioned());
  const bool spec_differs =
      !google::protobuf::util::MessageDifferencer::Equals(mine.spec, existing->embedding());
  if (!dtype_differs && !parts_differ && !spec_differs) {
    PSD_RETURN_IF_ERROR(
        registry_messages::ReplicationConflict(decl, *existing, session.id(), in_session));
    if (!in_session) {
      txn->attached[name] = decl.declared_at();
      txn->attached_order.push_back(name);
    }
    return DeclareResult{*existing, false};
  }
  const std::string declared = DescribeTable(mine.dtype, mine.spec, mine.parts, mine.partitioned);
  if (in_session) {
    return absl::InvalidArgumentError(absl::StrCat("Trying to reuse embedding table ", name,
                                                   ", but specified ", declared, " and found ",
                                                   DescribeDef(*existing), "."));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("Conflicting declarations of embedding table ", name, ": session ", session.id(),
                   " declares ", declared, " at ", OrUnknown(decl.declared_at()), ", but session ",
                   existing->declared_by_session(), " declared it as ", DescribeDef(*existing),
                   " at ", OrUnknown(existing->declared_at())));
}

absl::StatusOr<VariableDef> Registry::ResolveNewTable(uint64_t session,
                                                      const VariableDeclaration& decl, Txn* txn) {
  const std::string& name = decl.name();
  VariableDef def;
  def.set_name(name);
  EmbeddingSpec spec = decl.embedding();
  const std::string primary_name = spec.slot_of();
  const VariableDef* primary = nullptr;
  DataType dtype = decl.dtype();
  int64_t parts = 1;
  bool partitioned = false;

  if (!primary_name.empty()) {
    // A slot table: the primary's dim, dtype, key dtype, policies and
    // parts; a declared value must agree.
    primary = FindDeclared(primary_name, *txn);
    if (primary == nullptr) {
      return absl::NotFoundError(absl::StrCat("cannot declare slot table ", name, " of ",
                                              primary_name, ": ", primary_name, " does not exist"));
    }
    if (!primary->has_embedding()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot declare slot table ", name, " of ", primary_name, ": ", primary_name,
                       " is ", DescribeDef(*primary), ", not an embedding table"));
    }
    if (!primary->embedding().slot_of().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot declare slot table ", name, " of ", primary_name, ": ", primary_name,
                       " is itself a slot table (of ", primary->embedding().slot_of(), ")"));
    }
    const EmbeddingSpec& p = primary->embedding();
    auto conflict = [&](const std::string& what, const std::string& declared,
                        const std::string& found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slot table ", name, " of ", primary_name, ": declared ", what, " ", declared,
          " differs from the primary's ", found, " (a slot has its primary's)"));
    };
    if (spec.embedding_dim() != 0 && spec.embedding_dim() != p.embedding_dim()) {
      return conflict("embedding_dim", absl::StrCat(spec.embedding_dim()),
                      absl::StrCat(p.embedding_dim()));
    }
    if (spec.key_dtype() != DT_INVALID && spec.key_dtype() != p.key_dtype()) {
      return conflict("key_dtype", DataTypeName(spec.key_dtype()), DataTypeName(p.key_dtype()));
    }
    if (dtype != DT_INVALID && dtype != primary->dtype()) {
      return conflict("dtype", DataTypeName(dtype), DataTypeName(primary->dtype()));
    }
    EmbeddingSpec declared_policies = spec;
    declared_policies.clear_embedding_dim();
    declared_policies.clear_key_dtype();
    declared_policies.clear_slot_of();
    ResolveSpecDefaults(&declared_policies);
    declared_policies.clear_key_dtype();
    EmbeddingSpec primary_policies = p;
    primary_policies.clear_embedding_dim();
    primary_policies.clear_key_dtype();
    primary_policies.clear_slot_of();
    if (declared_policies.ByteSizeLong() != 0 &&
        !google::protobuf::util::MessageDifferencer::Equals(declared_policies, primary_policies)) {
      return conflict("filter/eviction/memory policies",
                      absl::StrCat("{", declared_policies.ShortDebugString(), "}"),
                      absl::StrCat("{", primary_policies.ShortDebugString(), "}"));
    }
    if (decl.has_partitioner()) {
      PSD_ASSIGN_OR_RETURN(const int64_t n, TablePartCount(name, decl.partitioner(),
                                                           options_.max_parts_per_variable));
      if (n != primary->parts_size() || !primary->partitioned()) {
        return conflict("partitioning", PartsString(n, true),
                        PartsString(primary->parts_size(), primary->partitioned()));
      }
    }
    spec = p;
    spec.set_slot_of(primary_name);
    dtype = primary->dtype();
    parts = primary->parts_size();
    partitioned = primary->partitioned();
  } else {
    ResolveSpecDefaults(&spec);
    PSD_RETURN_IF_ERROR(ValidateSpec(name, spec));
    if (dtype == DT_INVALID) dtype = DT_FLOAT;
    if (!IsFloating(dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table ", name, ": dtype ", DataTypeName(dtype),
                       " is not a floating dtype (float32, float64, float16 or bfloat16)"));
    }
    if (decl.has_partitioner()) {
      PSD_ASSIGN_OR_RETURN(
          parts, TablePartCount(name, decl.partitioner(), options_.max_parts_per_variable));
      partitioned = true;
    }
  }
  const int64_t dim = spec.embedding_dim();
  if (decl.has_shape()) {
    const auto& dims = decl.shape().dims();
    if (dims.size() != 1 || dims[0] != dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table ", name, ": shape ",
                       PyList(std::vector<int64_t>(dims.begin(), dims.end())),
                       " must be unset or [embedding_dim] = [", dim, "]"));
    }
  }
  PSD_ASSIGN_OR_RETURN(*def.mutable_initializer(), ResolveTableInitializer(name, decl, dtype, dim));

  def.set_dtype(dtype);
  def.mutable_shape()->add_dims(dim);
  *def.mutable_embedding() = spec;
  if (partitioned) {
    // The key axis is the one partitioned: `partitions` counts its parts.
    def.set_partitioned(true);
    def.set_partition_axis(0);
    def.add_partitions(parts);
  }
  const int64_t part_bytes = NominalTablePartBytes(dtype, dim);
  for (int64_t k = 0; k < parts; ++k) {
    VariablePart* part = def.add_parts();
    part->set_name(partitioned ? PartName(name, k) : name);
    if (partitioned) {
      if (absl::Status s = ValidateVariableName(part->name()); !s.ok()) {
        const std::string& part_name = part->name();
        return absl::InvalidArgumentError(absl::StrCat(
            "cannot create ", NameForMessage(name), ": its part name '...",
            part_name.substr(part_name.size() > 24 ? part_name.size() - 24 : 0), "' is ",
            part_name.size(), " bytes, over the limit of ", kMaxNameBytes, " bytes"));
      }
    }
    part->mutable_shape()->add_dims(dim);
    if (part_owner_.count(part->name()) > 0 || variables_.count(part->name()) > 0 ||
        txn->new_part_names.count(part->name()) > 0 || txn->created_index.count(part->name()) > 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot create ", name, ": its part name ",
                                                     part->name(), " is already in use"));
    }
  }
  const std::vector<int64_t> bytes(static_cast<size_t>(parts), part_bytes);
  std::vector<int32_t> shards;
  if (primary != nullptr) {
    // Part K beside the primary's part K (its rows live in that part).
    PSD_ASSIGN_OR_RETURN(shards, ColocatedShards(name, primary_name, bytes, txn));
    def.set_colocate_with(primary_name);
    TakeGroupEpochs(&def, primary_name, *txn);
  } else if (!decl.colocate_with().empty()) {
    PSD_ASSIGN_OR_RETURN(shards, ColocatedShards(name, decl.colocate_with(), bytes, txn));
    def.set_colocate_with(decl.colocate_with());
    TakeGroupEpochs(&def, decl.colocate_with(), *txn);
  } else {
    PSD_ASSIGN_OR_RETURN(shards, PlacePartsByRoom(bytes, txn->free_bytes, &txn->load));
  }
  for (size_t k = 0; k < shards.size(); ++k) {
    def.mutable_parts(static_cast<int>(k))->set_shard_id(shards[k]);
    txn->new_part_names.insert(def.parts(static_cast<int>(k)).name());
  }
  PSD_ASSIGN_OR_RETURN(
      const int32_t replication,
      ResolveReplication(decl, primary != nullptr ? primary_name : decl.colocate_with(), *txn));
  def.set_replication(replication);

  def.set_trainable(!decl.has_trainable() || decl.trainable());
  std::vector<std::string> collections(decl.collections().begin(), decl.collections().end());
  if (collections.empty()) collections.push_back(kGlobalVariables);
  if (def.trainable()) collections.push_back(kTrainableVariables);
  collections.push_back(kEmbeddingVariables);
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

}  // namespace psd
