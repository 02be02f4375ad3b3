// Session: opening and closing a session, Session::Impl's handles and
// shard pool, declaring variables, seeds and regularizers. Initialization
// and supplied values are in session_init.cc, VariableScope in
// variable_scope.cc.
#include "psd/session.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <future>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "psd/float16.h"
#include "psd/seeds.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "session_impl.h"

namespace psd {
namespace client {

// ---------------------------------------------------------------------------
// Helpers

bool IsStaleHandle(const absl::Status& status) {
  return status.code() == absl::StatusCode::kAborted &&
         absl::StrContains(status.message(), "stale handle");
}

bool MayBeFailingOver(const absl::Status& status, const PartHandle& part) {
  // A part the coordinator marks lost has no copy left to promote: no
  // failover will come (the answer is "restore it", at once).
  if (part.lost()) return false;
  const bool replicated = part.replicated() || part.backup_shards_size() > 0;
  // A stale handle too: the coordinator may still list the lost primary
  // (its failover waits for the lease) after the handle is refreshed.
  return replicated &&
         (status.code() == absl::StatusCode::kUnavailable || IsStaleHandle(status));
}

namespace regularizers {
namespace {

// Sums f(element) over a numeric value, in double.
template <typename F>
std::optional<double> SumElements(const Tensor& value, F f) {
  const int64_t n = value.num_elements();
  double sum = 0;
  auto add = [&](auto typed) {
    using T = decltype(typed);
    const T* data = value.data<T>();
    for (int64_t i = 0; i < n; ++i) sum += f(static_cast<double>(data[i]));
  };
  switch (value.dtype()) {
    case DT_FLOAT: add(float{}); break;
    case DT_DOUBLE: add(double{}); break;
    case DT_INT8: add(int8_t{}); break;
    case DT_UINT8: add(uint8_t{}); break;
    case DT_INT16: add(int16_t{}); break;
    case DT_INT32: add(int32_t{}); break;
    case DT_INT64: add(int64_t{}); break;
    case DT_HALF:
      for (int64_t i = 0; i < n; ++i) {
        sum += f(static_cast<double>(static_cast<float>(value.data<half>()[i])));
      }
      break;
    case DT_BFLOAT16:
      for (int64_t i = 0; i < n; ++i) {
        sum += f(static_cast<double>(static_cast<float>(value.data<bfloat16>()[i])));
      }
      break;
    default: return std::nullopt;  // bool, string: no loss
  }
  return sum;
}

}  // namespace

Regularizer L1(double scale) {
  if (scale == 0) return [](const Tensor&) { return std::optional<double>(); };
  return [scale](const Tensor& value) -> std::optional<double> {
    std::optional<double> sum = SumElements(value, [](double w) { return std::abs(w); });
    if (!sum.has_value()) return std::nullopt;
    return scale * *sum;
  };
}

Regularizer L2(double scale) {
  if (scale == 0) return [](const Tensor&) { return std::optional<double>(); };
  return [scale](const Tensor& value) -> std::optional<double> {
    std::optional<double> sum = SumElements(value, [](double w) { return w * w; });
    if (!sum.has_value()) return std::nullopt;
    return scale * *sum / 2;
  };
}

}  // namespace regularizers

namespace partitioners {

PartitionerSpec FixedSize(int64_t num_shards, int axis) {
  PartitionerSpec spec;
  spec.mutable_fixed_size()->set_num_shards(num_shards);
  spec.mutable_fixed_size()->set_axis(axis);
  return spec;
}

PartitionerSpec VariableAxisSize(int64_t max_shard_bytes, int axis, int64_t max_shards,
                                 int64_t bytes_per_string_element) {
  PartitionerSpec spec;
  auto* p = spec.mutable_variable_axis_size();
  p->set_max_shard_bytes(max_shard_bytes);
  p->set_axis(axis);
  p->set_bytes_per_string_element(bytes_per_string_element);
  if (max_shards > 0) p->set_max_shards(max_shards);
  return spec;
}

PartitionerSpec MinMax(int64_t max_partitions, int axis, int64_t min_slice_size,
                       int64_t bytes_per_string_element) {
  PartitionerSpec spec;
  auto* p = spec.mutable_min_max();
  p->set_max_partitions(max_partitions);
  p->set_axis(axis);
  p->set_min_slice_size(min_slice_size);
  p->set_bytes_per_string_element(bytes_per_string_element);
  return spec;
}

}  // namespace partitioners

// ---------------------------------------------------------------------------
// Session::Impl

void Session::Impl::StartKeepAlive(absl::Duration interval) {
  keepalive_ = std::thread([this, interval] {
    absl::MutexLock lock(&keepalive_mu_);
    while (!keepalive_mu_.AwaitWithTimeout(absl::Condition(&keepalive_stop_), interval)) {
      keepalive_mu_.Unlock();
      KeepSessionAliveRequest req;
      req.set_session_id(id_);
      KeepSessionAliveResponse resp;
      // One attempt: a failed ping is retried at the next interval; the
      // TTL allows several to be missed.
      internal::CallOptions once;
      once.timeout = interval;
      (void)coordinator_->Call(&Coordinator::Stub::KeepSessionAlive, req, &resp, once);
      keepalive_mu_.Lock();
    }
  });
}

void Session::Impl::StopKeepAlive() {
  {
    absl::MutexLock lock(&keepalive_mu_);
    keepalive_stop_ = true;
  }
  if (keepalive_.joinable()) keepalive_.join();
}

absl::StatusOr<VariableHandle> Session::Impl::EnsureAddressed(VariableHandle handle) {
  const absl::Time give_up = absl::Now() + options_.coordinator_retry_budget;
  while (true) {
    bool ready = true;
    for (const PartHandle& p : handle.parts()) ready = ready && !p.shard_address().empty();
    if (ready) return handle;
    if (absl::Now() > give_up) {
      for (const PartHandle& p : handle.parts()) {
        if (p.shard_address().empty()) {
          return absl::UnavailableError(
              absl::StrCat("variable ", handle.name(), ": part ", p.name(), " is on shard ",
                           p.shard_id(), ", which is not registered with the coordinator"));
        }
      }
    }
    absl::SleepFor(absl::Milliseconds(200));
    LookupVariableRequest req;
    req.set_name(handle.name());
    LookupVariableResponse resp;
    PSD_RETURN_IF_ERROR(Call(&Coordinator::Stub::LookupVariable, req, &resp));
    handle = resp.handle();
  }
}

absl::StatusOr<VariableHandle> Session::Impl::Lookup(const std::string& name) {
  LookupVariableRequest req;
  req.set_name(name);
  LookupVariableResponse resp;
  PSD_RETURN_IF_ERROR(Call(&Coordinator::Stub::LookupVariable, req, &resp));
  return EnsureAddressed(resp.handle());
}

Variable Session::Impl::MakeVariable(VariableHandle handle, std::string caching_device) {
  auto state = std::make_shared<internal::VariableState>();
  state->session = this;
  state->name = handle.name();
  state->caching_device = std::move(caching_device);
  state->handle = std::make_shared<const VariableHandle>(std::move(handle));
  return internal::VariableState::Wrap(std::move(state));
}

absl::StatusOr<std::shared_ptr<ShardClient>> Session::Impl::ShardFor(const PartHandle& part) {
  const std::string& address = part.shard_address();
  {
    absl::MutexLock lock(&pool_mu_);
    auto it = pool_.find(address);
    if (it != pool_.end() && it->second->info().incarnation == part.shard_incarnation()) {
      return it->second;
    }
  }
  // Connect outside the lock (it may wait for the shard to come up).
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<ShardClient> fresh,
                       ShardClient::Connect(address, options_.shard));
  std::shared_ptr<ShardClient> client(std::move(fresh));
  absl::MutexLock lock(&pool_mu_);
  auto& slot = pool_[address];
  if (slot == nullptr || slot->info().incarnation != client->info().incarnation) slot = client;
  if (slot->info().incarnation != part.shard_incarnation()) {
    return absl::AbortedError(absl::StrCat(
        "stale handle: part ", part.name(), " was placed on shard ", part.shard_id(), " (",
        address, ") incarnation ", part.shard_incarnation(), ", but that shard is incarnation ",
        slot->info().incarnation, " now"));
  }
  return slot;
}

// ---------------------------------------------------------------------------
// Session

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Session::~Session() {
  impl_->StopKeepAlive();
  CloseSessionRequest req;
  req.set_session_id(impl_->id_);
  CloseSessionResponse resp;
  // One attempt: a session not closed expires after the coordinator's TTL.
  internal::CallOptions once;
  once.timeout = absl::Seconds(5);
  (void)impl_->coordinator_->Call(&Coordinator::Stub::CloseSession, req, &resp, once);
}

absl::StatusOr<std::unique_ptr<Session>> Session::Open(const std::string& address,
                                                       const SessionOptions& options) {
  internal::CoordinatorClientOptions coordinator;
  coordinator.security = options.shard.security;
  coordinator.max_message_bytes = options.shard.max_message_bytes;
  coordinator.call.timeout = options.coordinator_timeout;
  coordinator.call.retry_budget = options.coordinator_retry_budget;
  // A coordinator being restarted refuses connections for a while: wait
  // for it instead of failing at once.
  coordinator.call.wait_for_ready = true;
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<internal::CoordinatorClient> client,
                       internal::CoordinatorClient::Create(address, coordinator));
  SessionOptions opts = options;
  if (opts.client.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    opts.client = absl::StrCat(host, " pid ", getpid());
  }
  auto impl = std::make_unique<Impl>(address, opts, std::move(client));
  OpenSessionRequest req;
  req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
  req.set_client(opts.client);
  OpenSessionResponse resp;
  PSD_RETURN_IF_ERROR(impl->Call(&Coordinator::Stub::OpenSession, req, &resp));
  impl->id_ = resp.session_id();
  if (opts.keep_alive && resp.session_ttl_ms() > 0) {
    impl->StartKeepAlive(
        std::clamp(absl::Milliseconds(resp.session_ttl_ms()) / 4, absl::Milliseconds(50),
                   absl::Minutes(1)));
  }
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

uint64_t Session::id() const { return impl_->id_; }
const std::string& Session::coordinator_address() const { return impl_->address_; }

namespace {

std::string JoinPath(const std::string& scope, const std::string& name) {
  return scope.empty() ? name : absl::StrCat(scope, "/", name);
}

// The caching device a get_variable asked for, else its scope's.
std::string CachingDevice(const CapturedScope& scope, const GetVariableOptions& o) {
  return o.caching_device.has_value() ? *o.caching_device : scope.caching_device;
}

// A declaration as sent, and the value it supplies (InitializerSpec's
// SuppliedValue), which stays in this client.
struct Declaration {
  VariableDeclaration proto;
  std::shared_ptr<const Tensor> supplied;
};

InitializerSpec DescribeSupplied(const Tensor& value) {
  InitializerSpec spec;
  InitializerSpec::SuppliedValue* d = spec.mutable_supplied_value();
  d->set_dtype(value.dtype());
  ShapeToProto(value.shape(), d->mutable_shape());
  d->set_byte_size(WireBytes(value));
  d->set_crc32c(WireCrc32c(value));
  return spec;
}

// `o.initial_value` is moved out (a large value is not copied).
absl::StatusOr<Declaration> MakeDeclaration(const CapturedScope& scope, const std::string& name,
                                            GetVariableOptions& o, const char* file, int line) {
  Declaration out;
  VariableDeclaration& d = out.proto;
  d.set_name(JoinPath(scope.name, name));
  d.set_dtype(o.dtype != DT_INVALID ? o.dtype : scope.dtype);
  if (o.shape.has_value()) ShapeToProto(*o.shape, d.mutable_shape());
  if (o.initial_value.has_value()) {
    // TensorFlow's checks of a tensor passed as the initializer.
    if (o.initializer.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "variable ", d.name(), ": give an initializer or an initial value, not both"));
    }
    if (o.shape.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "variable ", d.name(), ": If initializer is a constant, do not specify shape."));
    }
    out.supplied = std::make_shared<const Tensor>(std::move(*o.initial_value));
    o.initial_value.reset();
  } else if (const InitializerSpec* chosen = o.initializer.has_value()       ? &*o.initializer
                                             : scope.initializer.has_value() ? &*scope.initializer
                                                                             : nullptr) {
    const TensorProto& constant = chosen->constant().value();
    if (chosen->has_constant() &&
        static_cast<int64_t>(constant.content().size()) > kMaxInlineConstantBytes &&
        constant.shape().dims_size() > 0) {
      // A constant too large to travel with the declaration: this client
      // supplies it like an initial value (the shards check it fits).
      PSD_ASSIGN_OR_RETURN(Tensor value,
                           TensorFromProto(constant, absl::StrCat("constant initializer of ",
                                                                  d.name())));
      out.supplied = std::make_shared<const Tensor>(std::move(value));
    } else {
      *d.mutable_initializer() = *chosen;
    }
  }
  if (out.supplied != nullptr) *d.mutable_initializer() = DescribeSupplied(*out.supplied);
  if (o.partitioner.has_value()) {
    *d.mutable_partitioner() = *o.partitioner;
  } else if (scope.partitioner.has_value() &&
             (!o.embedding.has_value() || scope.partitioner->has_fixed_size())) {
    // A table takes a scope's partitioner only when it counts parts: a
    // size-based one has no meaning for a table without a size.
    *d.mutable_partitioner() = *scope.partitioner;
  }
  if (o.embedding.has_value()) *d.mutable_embedding() = *o.embedding;
  d.set_reuse(o.reuse.has_value() ? *o.reuse : scope.reuse);
  if (o.trainable.has_value()) d.set_trainable(*o.trainable);
  for (const std::string& c : o.collections) d.add_collections(c);
  d.set_initialize(o.initialize);
  if (o.replication.has_value()) d.set_replication(*o.replication);
  d.set_declared_at(!o.declared_at.empty() ? o.declared_at : absl::StrCat(file, ":", line));
  return out;
}

}  // namespace

namespace {

// One get_variable: `name` under `scope`, with the scope's defaults.
absl::StatusOr<Variable> DeclareVariable(Session::Impl* impl, const CapturedScope& scope,
                                         const std::string& name, GetVariableOptions options,
                                         const char* file, int line) {
  GetVariableRequest req;
  req.set_session_id(impl->id_);
  req.set_request_seq(impl->NextRequestSeq());
  PSD_ASSIGN_OR_RETURN(Declaration decl, MakeDeclaration(scope, name, options, file, line));
  impl->SeedDeclaration(&decl.proto);
  if (decl.proto.initialize()) {
    PSD_RETURN_IF_ERROR(impl->InitializeSuppliedSources(decl.proto.initializer()));
  }
  const InitializerSpec declared = decl.proto.initializer();
  *req.mutable_declaration() = std::move(decl.proto);
  GetVariableResponse resp;
  PSD_RETURN_IF_ERROR(impl->Call(&Coordinator::Stub::GetVariable, req, &resp));
  PSD_ASSIGN_OR_RETURN(VariableHandle handle, impl->EnsureAddressed(resp.handle()));
  Variable v = impl->MakeVariable(std::move(handle), CachingDevice(scope, options));
  if (resp.created() && v.trainable()) impl->CountTrainableCreated(1);
  if (const Regularizer& r = options.regularizer ? options.regularizer : scope.regularizer) {
    impl->RecordRegularizer(v, r);
  }
  PSD_RETURN_IF_ERROR(
      impl->Supply(v, declared, std::move(decl.supplied), options.initialize && resp.created()));
  return v;
}

}  // namespace

void Session::Impl::SetRandomSeed(std::optional<int64_t> seed) {
  absl::MutexLock lock(&seed_mu_);
  graph_seed_ = seed;
}

std::optional<int64_t> Session::Impl::random_seed() const {
  absl::MutexLock lock(&seed_mu_);
  return graph_seed_;
}

void Session::Impl::SeedDeclaration(VariableDeclaration* declaration) {
  absl::MutexLock lock(&seed_mu_);
  const int64_t op_id = ++declarations_;
  if (!graph_seed_.has_value()) return;
  // No initializer: the coordinator's default, which draws random values
  // for floating dtypes; named here so that it carries the seed.
  if (!declaration->has_initializer()) declaration->mutable_initializer()->mutable_default_initializer();
  InitializerSpec* spec = declaration->mutable_initializer();
  if (!DrawsRandomValues(*spec)) return;
  spec->set_seed(MixSeeds(*graph_seed_, spec->seed() != 0 ? spec->seed() : op_id));
}

void Session::Impl::RecordRegularizer(const Variable& v, Regularizer regularizer) {
  absl::MutexLock lock(&regularizers_mu_);
  for (const auto& [known, r] : regularizers_) {
    if (known.name() == v.name()) return;
  }
  regularizers_.emplace_back(v, std::move(regularizer));
}

std::vector<std::pair<Variable, Regularizer>> Session::Impl::regularizers() const {
  absl::MutexLock lock(&regularizers_mu_);
  return regularizers_;
}

absl::StatusOr<double> Session::RegularizationLoss() {
  double total = 0;
  for (auto& [v, regularizer] : impl_->regularizers()) {
    PSD_ASSIGN_OR_RETURN(Tensor value, v.Read());
    if (std::optional<double> loss = regularizer(value)) total += *loss;
  }
  return total;
}

std::vector<Variable> Session::RegularizedVariables() const {
  std::vector<Variable> out;
  for (auto& [v, regularizer] : impl_->regularizers()) out.push_back(v);
  return out;
}

void Session::SetRandomSeed(std::optional<int64_t> seed) { impl_->SetRandomSeed(seed); }

int64_t Session::trainable_variables_created() const { return impl_->trainable_created(); }

std::optional<int64_t> Session::random_seed() const { return impl_->random_seed(); }

absl::StatusOr<Variable> Session::GetVariable(const std::string& name,
                                              const GetVariableOptions& options, const char* file,
                                              int line) {
  return DeclareVariable(impl_.get(), impl_->stack_.back().scope, name, options, file, line);
}

absl::StatusOr<EmbeddingVariable> Session::GetEmbeddingVariable(
    const std::string& name, const EmbeddingVariableOptions& options, const char* file,
    int line) {
  GetVariableOptions o;
  o.dtype = options.dtype;
  o.initializer = options.initializer;
  o.partitioner = options.partitioner;
  o.reuse = options.reuse;
  o.trainable = options.trainable;
  o.collections = options.collections;
  o.replication = options.replication;
  o.declared_at = options.declared_at;
  EmbeddingSpec spec = options.ev_option;
  spec.set_embedding_dim(options.embedding_dim);
  spec.set_key_dtype(options.key_dtype);
  spec.set_slot_of(options.slot_of);
  o.embedding = std::move(spec);
  PSD_ASSIGN_OR_RETURN(Variable v, DeclareVariable(impl_.get(), impl_->stack_.back().scope, name,
                                                   std::move(o), file, line));
  return EmbeddingVariable::Of(std::move(v));
}

absl::StatusOr<std::vector<Variable>> Session::GetVariables(
    const std::vector<std::pair<std::string, GetVariableOptions>>& declarations, const char* file,
    int line) {
  DeclareVariablesRequest req;
  req.set_session_id(impl_->id_);
  req.set_request_seq(impl_->NextRequestSeq());
  std::vector<std::shared_ptr<const Tensor>> supplied;
  for (const auto& [name, options] : declarations) {
    GetVariableOptions o = options;
    PSD_ASSIGN_OR_RETURN(Declaration decl,
                         MakeDeclaration(impl_->stack_.back().scope, name, o, file, line));
    impl_->SeedDeclaration(&decl.proto);
    if (decl.proto.initialize()) {
      PSD_RETURN_IF_ERROR(impl_->InitializeSuppliedSources(decl.proto.initializer()));
    }
    *req.add_declarations() = std::move(decl.proto);
    supplied.push_back(std::move(decl.supplied));
  }
  DeclareVariablesResponse resp;
  PSD_RETURN_IF_ERROR(impl_->Call(&Coordinator::Stub::DeclareVariables, req, &resp));
  if (resp.handles_size() != static_cast<int>(declarations.size())) {
    return absl::InternalError(absl::StrCat("coordinator ", impl_->address_, " answered ",
                                            declarations.size(), " declarations with ",
                                            resp.handles_size(), " handles"));
  }
  std::vector<Variable> out;
  for (int i = 0; i < resp.handles_size(); ++i) {
    PSD_ASSIGN_OR_RETURN(VariableHandle handle, impl_->EnsureAddressed(resp.handles(i)));
    out.push_back(impl_->MakeVariable(
        std::move(handle), CachingDevice(impl_->stack_.back().scope, declarations[i].second)));
    if (i < resp.created_size() && resp.created(i) && out.back().trainable()) {
      impl_->CountTrainableCreated(1);
    }
    const Regularizer& r = declarations[i].second.regularizer
                               ? declarations[i].second.regularizer
                               : impl_->stack_.back().scope.regularizer;
    if (r) impl_->RecordRegularizer(out.back(), r);
  }
  // The supplied values go straight to their shards, variables in parallel.
  std::vector<absl::Status> written = RunParallel(out.size(), [&](size_t i) {
    const bool created = i < static_cast<size_t>(resp.created_size()) && resp.created(i);
    return impl_->Supply(out[i], req.declarations(static_cast<int>(i)).initializer(),
                         std::move(supplied[i]),
                         declarations[i].second.initialize && created);
  });
  for (const absl::Status& s : written) PSD_RETURN_IF_ERROR(s);
  return out;
}

absl::StatusOr<Variable> Session::CreatePartitionedVariables(
    const TensorShape& shape, const std::vector<int64_t>& slicing,
    const InitializerSpec& initializer, const PartitionedVariablesOptions& options,
    const char* file, int line) {
  const std::string what =
      options.name.empty() ? std::string("create_partitioned_variables")
                           : absl::StrCat("create_partitioned_variables '", options.name, "'");
  if (static_cast<int>(slicing.size()) != shape.rank()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": slicing has ", slicing.size(),
                                                   " entries, the shape ", shape.ToString(),
                                                   " has rank ", shape.rank()));
  }
  int axis = 0;
  int split_axes = 0;
  for (size_t d = 0; d < slicing.size(); ++d) {
    if (slicing[d] < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": slicing[", d, "] = ", slicing[d], " is not a positive count"));
    }
    if (slicing[d] > 1) {
      axis = static_cast<int>(d);
      ++split_axes;
    }
  }
  if (split_axes > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": can partition along one axis only, slicing is [",
        absl::StrJoin(slicing, ", "), "]"));
  }
  ScopeOptions scope_options;
  scope_options.reuse = options.reuse;
  PSD_ASSIGN_OR_RETURN(VariableScope scope,
                       options.name.empty()
                           ? VariableScope::EnterDefault(this, "PartitionedVariable", scope_options)
                           : VariableScope::Enter(this, options.name, scope_options));
  GetVariableOptions o;
  o.shape = shape;
  o.dtype = options.dtype;
  o.initializer = initializer;
  if (shape.rank() > 0) o.partitioner = partitioners::FixedSize(slicing[axis], axis);
  o.trainable = options.trainable;
  o.collections = options.collections;
  o.initialize = options.initialize;
  // The variable takes the scope's own name, as in TensorFlow: declared by
  // its full name from the root, with the scope's reuse and defaults.
  CapturedScope from_root = scope.captured();
  from_root.name.clear();
  absl::StatusOr<Variable> v = DeclareVariable(impl_.get(), from_root, scope.name(), o, file, line);
  absl::Status exited = scope.Exit();
  if (!v.ok()) return v.status();
  if (!exited.ok()) return exited;
  return v;
}

namespace {

// tf.Variable's declaration: a default-unique name ("Variable", "Variable_1")
// declared from the root with `o` and without the scope's defaults.
absl::StatusOr<Variable> CreateUnique(Session::Impl* impl, GetVariableOptions o,
                                      const VariableOptions& options, const char* file, int line) {
  UniqueVariableNameRequest ureq;
  ureq.set_session_id(impl->id_);
  ureq.set_request_seq(impl->NextRequestSeq());
  ureq.set_name(JoinPath(impl->stack_.back().scope.name,
                         options.name.empty() ? std::string("Variable") : options.name));
  ureq.set_mark_as_used(true);
  UniqueVariableNameResponse uresp;
  PSD_RETURN_IF_ERROR(impl->Call(&Coordinator::Stub::UniqueVariableName, ureq, &uresp));

  o.reuse = REUSE_FALSE;
  o.trainable = options.trainable;
  o.collections = options.collections;
  o.initialize = options.initialize;
  // The unique name is already a full name: declare it from the root, and
  // without the scope's defaults (tf.Variable ignores them).
  return DeclareVariable(impl, CapturedScope{}, uresp.name(), std::move(o), file, line);
}

}  // namespace

absl::StatusOr<Variable> Session::CreateVariable(Tensor initial_value,
                                                 const VariableOptions& options, const char* file,
                                                 int line) {
  GetVariableOptions o;
  o.initial_value = std::move(initial_value);
  return CreateUnique(impl_.get(), std::move(o), options, file, line);
}

absl::StatusOr<Variable> Session::CreateVariableFrom(const Variable& source, double scale,
                                                     double offset, const VariableOptions& options,
                                                     const char* file, int line) {
  GetVariableOptions o;
  o.shape = source.shape();
  o.dtype = source.dtype();
  o.initializer = source.InitializedValue(scale, offset);
  if (source.partitioned()) {
    PartitionerSpec same;
    for (int64_t p : source.partitions()) same.mutable_explicit_partitions()->add_partitions(p);
    o.partitioner = std::move(same);
  }
  return CreateUnique(impl_.get(), std::move(o), options, file, line);
}

absl::StatusOr<Variable> Session::LookupVariable(const std::string& full_name) {
  PSD_ASSIGN_OR_RETURN(VariableHandle handle, impl_->Lookup(full_name));
  return impl_->MakeVariable(std::move(handle));
}

absl::StatusOr<std::vector<Variable>> Session::ListVariables(const std::string& collection) {
  CoordinatorListVariablesRequest req;
  req.set_collection(collection);
  CoordinatorListVariablesResponse resp;
  PSD_RETURN_IF_ERROR(impl_->Call(&Coordinator::Stub::ListVariables, req, &resp));
  std::vector<Variable> out;
  for (const VariableHandle& h : resp.variables()) out.push_back(impl_->MakeVariable(h));
  return out;
}

CapturedScope Session::current_scope() const { return impl_->stack_.back().scope; }

void Session::ReuseVariables() { impl_->stack_.back().scope.reuse = REUSE_TRUE; }

absl::StatusOr<ListShardsResponse> Session::ListShards() {
  ListShardsResponse resp;
  PSD_RETURN_IF_ERROR(impl_->Call(&Coordinator::Stub::ListShards, ListShardsRequest(), &resp));
  return resp;
}

absl::Status Session::DeleteVariable(const std::string& full_name) {
  CoordinatorDeleteVariableRequest req;
  req.set_name(full_name);
  CoordinatorDeleteVariableResponse resp;
  PSD_RETURN_IF_ERROR(impl_->Call(&Coordinator::Stub::DeleteVariable, req, &resp));
  impl_->ForgetSupplied(full_name);
  return absl::OkStatus();
}

}  // namespace client
}  // namespace psd
