// Session: a trainer's connection to the psd coordinator, playing the role of
// a TensorFlow graph (docs/design.md, "Naming model"). Within one session
// get_variable follows TensorFlow's per-graph rules (scope paths, reuse
// checks, default names `Variable`, `Variable_1` and `layer`, `layer_1`);
// across sessions a matching declaration attaches to the existing variable,
// which is how several trainer processes share parameters. The coordinator
// applies the rules, so every client behaves identically; this class keeps
// the scope stack, a pool of ShardClients (one per shard address) for the
// data ops of its Variables, and closes the session on destruction.
//
// Scopes are RAII objects (VariableScope below), TensorFlow's
// `with tf.variable_scope(...)`:
//
//   PSD_ASSIGN_OR_RETURN(auto session, Session::Open("127.0.0.1:7070"));
//   {
//     PSD_ASSIGN_OR_RETURN(VariableScope scope,
//                          VariableScope::Enter(session.get(), "model",
//                                               {.initializer = init::Zeros()}));
//     PSD_ASSIGN_OR_RETURN(Variable w, session->GetVariable("w", {.shape = TensorShape{10, 4}}));
//     captured = scope.captured();  // re-enter it anywhere later
//   }
//   PSD_RETURN_IF_ERROR(session->InitializeAllVariables());
//
// Thread-safety: the scope stack and default-name counters are per session
// and thread-compatible (one thread builds the model, as one Python thread
// builds a graph). GetVariable, the collection queries, initialization and
// every Variable op are thread-safe.
#ifndef PSD_CLIENT_SESSION_H_
#define PSD_CLIENT_SESSION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "psd/client.h"
#include "psd/coordinator.pb.h"
#include "psd/embedding_variable.h"
#include "psd/initializers.h"
#include "psd/status.h"
#include "psd/tensor.h"
#include "psd/variable.h"

namespace psd {
namespace client {

// TensorFlow's GraphKeys.
inline constexpr char kGlobalVariables[] = "variables";
inline constexpr char kTrainableVariables[] = "trainable_variables";
inline constexpr char kLocalVariables[] = "local_variables";
inline constexpr char kMovingAverageVariables[] = "moving_average_variables";

// Builders of PartitionerSpec: TensorFlow's partitioners, evaluated by the
// coordinator with TensorFlow's part counts.
namespace partitioners {
PartitionerSpec FixedSize(int64_t num_shards, int axis = 0);
// max_shards <= 0: no limit.
PartitionerSpec VariableAxisSize(int64_t max_shard_bytes, int axis = 0, int64_t max_shards = 0,
                                 int64_t bytes_per_string_element = 16);
PartitionerSpec MinMax(int64_t max_partitions = 1, int axis = 0,
                       int64_t min_slice_size = 256 << 10,
                       int64_t bytes_per_string_element = 16);
}  // namespace partitioners

struct SessionOptions {
  // Shown in coordinator logs and psctl; default "HOST pid N".
  std::string client;
  // Deadline of one coordinator call attempt.
  absl::Duration coordinator_timeout = absl::Seconds(30);
  // Coordinator calls that fail with UNAVAILABLE (it is restarting) are
  // retried for this long, as are handles whose parts' shards have not
  // registered yet.
  absl::Duration coordinator_retry_budget = absl::Seconds(30);
  // Ping the coordinator in the background so the session does not expire
  // (the coordinator closes sessions it has not heard from for its session
  // TTL; a trainer may talk only to shards for a long time).
  bool keep_alive = true;
  // An op on a part of a replicated variable (docs/replication.md) that
  // finds the part's shard unreachable, or without its lease, asks the
  // coordinator where the part is now and retries there with the same
  // request ids, for this long: a failover promotes a backup within about
  // two lease periods of the primary's loss.
  absl::Duration failover_wait = absl::Seconds(30);
  // Options of the ShardClients the session opens.
  ClientOptions shard;
};

// get_variable's arguments. Unset fields come from the current scope.
// tf's regularizer: a function of a variable's value to a loss, or nullopt
// for none (see Session::RegularizationLoss).
using Regularizer = std::function<std::optional<double>(const Tensor& value)>;

// tf.contrib.layers' regularizers: scale * sum(|w|) and scale * sum(w^2) / 2
// over a numeric value (a scale of 0 gives none, as TensorFlow's).
namespace regularizers {
Regularizer L1(double scale);
Regularizer L2(double scale);
}  // namespace regularizers

struct GetVariableOptions {
  std::optional<TensorShape> shape;
  DataType dtype = DT_INVALID;  // unset: the scope's, else float32 on create
  std::optional<InitializerSpec> initializer;
  // A constant initial value (shape and dtype come from it; do not also set
  // `shape`). It never passes through the coordinator: this client writes
  // each part's slice straight to its shard (at creation with `initialize`,
  // else at InitializeVariables) and keeps it, so this session can
  // initialize the variable again; another session's initialization of it
  // is FAILED_PRECONDITION until it is initialized. A constant
  // `initializer` over kMaxInlineConstantBytes travels the same way.
  std::optional<Tensor> initial_value;
  std::optional<PartitionerSpec> partitioner;
  // TensorFlow's caching_device: any non-empty value caches the variable's
  // value in this client for reads (Variable::cached()); "" turns off a
  // scope's. Unset: the scope's.
  std::optional<std::string> caching_device;
  // Unset: the scope's reuse. REUSE_FALSE here is an explicit reuse=False.
  std::optional<Reuse> reuse;
  std::optional<bool> trainable;  // default true
  // Empty: ["variables"] (plus "trainable_variables" when trainable).
  std::vector<std::string> collections;
  // Run the initializer on the shards right away (TensorFlow creates
  // variables uninitialized; see Session::InitializeVariables).
  bool initialize = false;
  // tf's regularizer (unset: the scope's): recorded in this session's
  // regularization losses for the variable (once per name, as TensorFlow
  // added the loss once).
  Regularizer regularizer;
  // Where it was declared, for "Originally defined at"; default FILE:LINE
  // of the call.
  std::string declared_at;
  // Declares an embedding table instead (GetEmbeddingVariable sets it).
  std::optional<EmbeddingSpec> embedding;
  // How many shards hold each part (docs/replication.md), 1 to 3; unset:
  // the cluster's `replication`. An optimizer's slots take their
  // variable's.
  std::optional<int> replication;
};

// get_embedding_variable's arguments (DeepRec's names): the table's row
// size and key dtype, its values' dtype and initializer, and its policies
// (`ev_option`: admission filters, eviction, memory caps; its
// embedding_dim, key_dtype and slot_of are taken from the fields here).
struct EmbeddingVariableOptions {
  int64_t embedding_dim = 0;
  DataType key_dtype = DT_INT64;
  DataType dtype = DT_INVALID;  // the values'; unset: the scope's, else float32
  // Unset: the scope's, else DeepRec's default (the coordinator's).
  std::optional<InitializerSpec> initializer;
  // Unset: one part, or the scope's partitioner when it is fixed_size (a
  // size-based partitioner has no meaning for a table without a size).
  // Only fixed_size_partitioner(N) on axis 0 is accepted.
  std::optional<PartitionerSpec> partitioner;
  std::optional<Reuse> reuse;  // unset: the scope's
  std::optional<bool> trainable;
  std::vector<std::string> collections;
  std::optional<int> replication;  // as GetVariableOptions::replication
  EmbeddingSpec ev_option;
  // For an optimizer's slot table: the table it belongs to (full name).
  std::string slot_of;
  std::string declared_at;
};

// tf.Variable(initial_value, name=...): a variable with a default-unique
// name (`Variable`, `Variable_1`, ... per session) and no reuse.
struct VariableOptions {
  std::string name = "Variable";
  std::optional<bool> trainable;
  std::vector<std::string> collections;
  bool initialize = false;
};

// A variable scope's state: TensorFlow's VariableScope object. Obtained from
// VariableScope::captured() or Session::current_scope(); re-entering it
// anywhere (VariableScope::Reenter) names variables under its own path.
struct CapturedScope {
  std::string name;  // full path; "" is the root scope
  Reuse reuse = REUSE_FALSE;
  std::optional<InitializerSpec> initializer;
  std::optional<PartitionerSpec> partitioner;
  DataType dtype = DT_INVALID;
  std::string caching_device;  // "" : reads are not cached
  Regularizer regularizer;     // empty: none
};

struct ScopeOptions {
  // REUSE_TRUE / REUSE_AUTO turn reuse on; reuse is inherited from the
  // enclosing scope and never undone (REUSE_FALSE or unset keep the
  // parent's).
  std::optional<Reuse> reuse;
  // Defaults for get_variable inside; unset: inherited.
  std::optional<InitializerSpec> initializer;
  std::optional<PartitionerSpec> partitioner;
  DataType dtype = DT_INVALID;
  std::optional<std::string> caching_device;
  Regularizer regularizer;  // empty: inherited
};

// tf.create_partitioned_variables' arguments besides shape, slicing and
// initializer.
struct PartitionedVariablesOptions {
  DataType dtype = DT_FLOAT;
  std::optional<bool> trainable;
  std::vector<std::string> collections;
  // The variable's name under the current scope; empty: a default name,
  // "PartitionedVariable", "PartitionedVariable_1", ... per session.
  std::string name;
  std::optional<Reuse> reuse;
  bool initialize = false;
};

class VariableScope;
class Optimizer;

class Session {
 public:
  // Connects to the coordinator at `address` and opens a session
  // (FAILED_PRECONDITION on a protocol version mismatch).
  static absl::StatusOr<std::unique_ptr<Session>> Open(const std::string& address,
                                                       const SessionOptions& options = {});
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  // Closes the session with the coordinator (variables stay).
  ~Session();

  uint64_t id() const;
  const std::string& coordinator_address() const;

  // tf.get_variable: `name` is prefixed with the current scope's path.
  absl::StatusOr<Variable> GetVariable(const std::string& name,
                                       const GetVariableOptions& options = {},
                                       const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE());
  // Many get_variable calls in one coordinator round trip (one fsync), all
  // or none: for models with thousands of variables.
  absl::StatusOr<std::vector<Variable>> GetVariables(
      const std::vector<std::pair<std::string, GetVariableOptions>>& declarations,
      const char* file = __builtin_FILE(), int line = __builtin_LINE());
  // tf.Variable(initial_value, name=...).
  absl::StatusOr<Variable> CreateVariable(Tensor initial_value,
                                          const VariableOptions& options = {},
                                          const char* file = __builtin_FILE(),
                                          int line = __builtin_LINE());
  // tf.Variable(source.initialized_value() * scale + offset, name=...): a
  // new variable with the source's dtype, shape and partitioning, whose
  // initializer is init::FromVariable (see Variable::InitializedValue).
  absl::StatusOr<Variable> CreateVariableFrom(const Variable& source, double scale = 1.0,
                                              double offset = 0.0,
                                              const VariableOptions& options = {},
                                              const char* file = __builtin_FILE(),
                                              int line = __builtin_LINE());
  // tf.create_partitioned_variables: a variable of `shape` split into
  // `slicing[d]` parts along the one axis d where it is above 1, named as a
  // variable_scope would be (options.name, or a unique default name). The
  // result presents the parts as one variable (Variable::parts() lists
  // them), where TensorFlow returned the list of parts.
  absl::StatusOr<Variable> CreatePartitionedVariables(
      const TensorShape& shape, const std::vector<int64_t>& slicing,
      const InitializerSpec& initializer, const PartitionedVariablesOptions& options = {},
      const char* file = __builtin_FILE(), int line = __builtin_LINE());
  // A variable by full name, without this session's naming rules (admin
  // tools, tests).
  absl::StatusOr<Variable> LookupVariable(const std::string& full_name);

  // DeepRec's get_embedding_variable: an embedding table named under the
  // current scope, with get_variable's reuse, attach and collection rules
  // (see psd/embedding_variable.h).
  absl::StatusOr<EmbeddingVariable> GetEmbeddingVariable(const std::string& name,
                                                         const EmbeddingVariableOptions& options,
                                                         const char* file = __builtin_FILE(),
                                                         int line = __builtin_LINE());

  // Variables in `collection` ("" = all) in creation order.
  absl::StatusOr<std::vector<Variable>> ListVariables(const std::string& collection = "");
  absl::StatusOr<std::vector<Variable>> GlobalVariables() { return ListVariables(kGlobalVariables); }
  absl::StatusOr<std::vector<Variable>> TrainableVariables() {
    return ListVariables(kTrainableVariables);
  }
  absl::StatusOr<std::vector<Variable>> LocalVariables() { return ListVariables(kLocalVariables); }

  // tf.variables_initializer(list): runs the initializers on the shards in
  // parallel (one InitializeVariables call per shard). A list with a
  // variable initialized from another (init::FromVariable) is initialized
  // by the coordinator instead, in dependency order: each source first,
  // also one not in the list when it is not initialized yet (an initialized
  // source gives its current value), independent variables in parallel;
  // the values move shard to shard. Initialized parts are
  // left alone unless `force`. A variable with a value supplied by this
  // session (GetVariableOptions::initial_value) is written from here; one
  // whose value another client supplied is FAILED_PRECONDITION unless it is
  // initialized already.
  absl::Status InitializeVariables(const std::vector<Variable>& variables, bool force = false);
  // tf.global_variables_initializer() and friends: the variables of any of
  // `collections`, but not those whose value another client supplied and
  // holds (theirs to initialize, as a TensorFlow graph's initializer covers
  // its own variables only).
  absl::Status InitializeCollections(const std::vector<std::string>& collections);
  // Global and local variables (InitializeCollections).
  absl::Status InitializeAllVariables();
  // tf.report_uninitialized_variables: the names among `variables` (all
  // when empty) with an uninitialized part, in list order.
  absl::StatusOr<std::vector<std::string>> ReportUninitializedVariables(
      const std::vector<Variable>& variables = {});
  // Waits until every one of `variables` is initialized (a non-chief
  // trainer waiting for the chief); DEADLINE_EXCEEDED naming the missing
  // ones after `timeout`.
  absl::Status WaitForInitialized(const std::vector<Variable>& variables, absl::Duration timeout);

  // tf.set_random_seed: the session's graph-level seed (nullopt: none).
  // With it, every random initializer declared afterwards gets the seed
  // MixSeeds(graph seed, op seed) (psd/seeds.h), an initializer without a
  // seed taking the session's count of declarations so far as its op
  // seed: a program that declares the same variables in the same order
  // gets the same values, on any cluster. Without it, an op seed alone
  // is used as given, and a variable with neither gets a seed the
  // coordinator draws. Thread-safe.
  void SetRandomSeed(std::optional<int64_t> seed);
  std::optional<int64_t> random_seed() const;

  // tf.losses.get_regularization_loss: the sum of the regularizers this
  // session's GetVariable calls named, each on its variable's value now
  // (read from the shards); 0 without any. Thread-safe.
  absl::StatusOr<double> RegularizationLoss();
  // The variables with a recorded regularizer, in the order first named.
  std::vector<Variable> RegularizedVariables() const;

  // Trainable variables this session's declarations created (not those
  // they reused or attached to): templates check that calls after the
  // first create none. Thread-safe.
  int64_t trainable_variables_created() const;

  // The current variable scope (the root scope outside any VariableScope).
  CapturedScope current_scope() const;
  // scope.reuse_variables() on the current scope (the root scope included).
  void ReuseVariables();

  // Admin: the coordinator's view of the shards.
  absl::StatusOr<ListShardsResponse> ListShards();
  // Admin: deletes a variable (and its parts on the shards).
  absl::Status DeleteVariable(const std::string& full_name);

  // The implementation (client/src/session_impl.h); opaque to users.
  class Impl;

 private:
  friend class VariableScope;
  friend class Optimizer;  // declares slot variables with colocation
  explicit Session(std::unique_ptr<Impl> impl);

  const std::unique_ptr<Impl> impl_;
};

// tf.variable_scope as an RAII object: entering pushes a scope on the
// session's stack, destruction (or Exit) pops it. Scopes must be exited in
// reverse order of entry. Invalid names ("_" at the root, ...) are refused
// by the coordinator with INVALID_ARGUMENT, as TensorFlow raises ValueError.
class VariableScope {
 public:
  // variable_scope("name"): the scope `parent/name`.
  static absl::StatusOr<VariableScope> Enter(Session* session, const std::string& name,
                                             const ScopeOptions& options = {});
  // variable_scope(None, default_name="layer"): `layer`, `layer_1`, ... per
  // session (REUSE_TRUE is refused, as in TensorFlow).
  static absl::StatusOr<VariableScope> EnterDefault(Session* session,
                                                    const std::string& default_name,
                                                    const ScopeOptions& options = {});
  // tf.variable_op_scope(values, name_or_scope, default_name): the scope
  // `name_or_scope` as given (not made unique) when it is non-empty, else a
  // default-named scope from `default_name`. Reuse is inherited (a generic
  // op's variables are shared when its caller's scope reuses). The values
  // TensorFlow checked for graph membership have no counterpart here.
  static absl::StatusOr<VariableScope> EnterOp(Session* session,
                                               const std::string& name_or_scope,
                                               const std::string& default_name,
                                               const ScopeOptions& options = {});
  // variable_scope(captured_scope): names under the captured scope's own
  // path wherever it is re-entered; its reuse and defaults apply unless
  // `options` overrides them.
  static absl::StatusOr<VariableScope> Reenter(Session* session, const CapturedScope& scope,
                                               const ScopeOptions& options = {});

  VariableScope(VariableScope&& other) noexcept;
  VariableScope& operator=(VariableScope&&) = delete;
  VariableScope(const VariableScope&) = delete;
  ~VariableScope();

  // Leaves the scope now (the destructor does nothing afterwards).
  absl::Status Exit();

  const std::string& name() const { return scope_.name; }
  // The scope's state as of now (reuse_variables included).
  CapturedScope captured() const;
  // scope.reuse_variables().
  void reuse_variables();

 private:
  VariableScope(Session* session, CapturedScope scope, size_t depth)
      : session_(session), scope_(std::move(scope)), depth_(depth) {}

  Session* session_ = nullptr;  // null once exited or moved from
  CapturedScope scope_;
  size_t depth_ = 0;  // position on the session's stack
};

// tf.make_template: a callable that creates its variables the first time
// it is called and reuses them after. Its scope is a new, uniquely named one
// (`name`, `name_1`, ... or exactly TemplateOptions::unique_name), entered
// at the first call or, with create_scope_now, when the template is made
// (the first call then re-enters it without reuse). Every call after a
// successful first one re-enters it with reuse, and fails
// INVALID_ARGUMENT if it created a trainable variable (CreateVariable
// where GetVariable was meant: a new variable at each call). A first call
// that fails leaves the template uncreated. `fn` returns absl::Status or
// absl::StatusOr<T>; so does the template.
//
//   auto dense = MakeTemplate(session, "dense", [&](const Tensor& x) -> absl::StatusOr<Tensor> {
//     PSD_ASSIGN_OR_RETURN(Variable w, session->GetVariable("w", {.shape = TensorShape{4, 4}}));
//     return w.Read();
//   });
//   dense(x);  // creates dense/w
//   dense(y);  // reuses dense/w
//
// Thread-compatible, like the session's scope stack.
struct TemplateOptions {
  bool create_scope_now = false;  // tf's create_scope_now_
  std::string unique_name;        // tf's unique_name_: the scope's exact name
};

namespace internal {
inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace internal

template <typename Fn>
class Template {
 public:
  Template(Session* session, std::string name, Fn fn, TemplateOptions options = {})
      : session_(session), name_(std::move(name)), fn_(std::move(fn)), options_(std::move(options)) {}

  template <typename... Args>
  auto operator()(Args&&... args) -> std::invoke_result_t<Fn&, Args...> {
    const bool after_first = created_;
    absl::StatusOr<VariableScope> scope = Enter();
    if (!scope.ok()) return scope.status();
    if (!scope_.has_value()) scope_ = scope->captured();
    const int64_t created_before = session_->trainable_variables_created();
    auto result = fn_(std::forward<Args>(args)...);
    absl::Status exited = scope->Exit();
    if (!internal::StatusOf(result).ok()) return result;
    if (!exited.ok()) return exited;
    if (after_first && session_->trainable_variables_created() != created_before) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Trainable variable created when calling a template after the first time, perhaps "
          "CreateVariable was used where GetVariable was meant (template ",
          name_, ", scope ", scope_->name, ")"));
    }
    created_ = true;
    return result;
  }

  // The captured scope; unset before the scope is created.
  const std::optional<CapturedScope>& variable_scope() const { return scope_; }
  const std::string& name() const { return name_; }

 private:
  template <typename F>
  friend absl::StatusOr<Template<F>> MakeTemplate(Session* session, std::string name, F fn,
                                                  TemplateOptions options);

  // The scope of this call: re-entered (with reuse once created), or new.
  absl::StatusOr<VariableScope> Enter() {
    if (scope_.has_value()) {
      ScopeOptions o;
      if (created_) o.reuse = REUSE_TRUE;
      return VariableScope::Reenter(session_, *scope_, o);
    }
    if (!options_.unique_name.empty()) return VariableScope::Enter(session_, options_.unique_name);
    return VariableScope::EnterDefault(session_, name_);
  }

  Session* const session_;
  const std::string name_;
  Fn fn_;
  const TemplateOptions options_;
  std::optional<CapturedScope> scope_;
  bool created_ = false;  // a call succeeded
};

// A template whose scope is created at its first call.
template <typename Fn>
Template<Fn> MakeTemplate(Session* session, std::string name, Fn fn) {
  return Template<Fn>(session, std::move(name), std::move(fn));
}

// With options: INVALID_ARGUMENT for an empty name (tf: "name cannot be
// None"); with create_scope_now, the scope is created here.
template <typename Fn>
absl::StatusOr<Template<Fn>> MakeTemplate(Session* session, std::string name, Fn fn,
                                          TemplateOptions options) {
  if (name.empty()) return absl::InvalidArgumentError("make_template: name cannot be None");
  Template<Fn> t(session, std::move(name), std::move(fn), std::move(options));
  if (t.options_.create_scope_now) {
    absl::StatusOr<VariableScope> scope = t.Enter();
    if (!scope.ok()) return scope.status();
    t.scope_ = scope->captured();
    PSD_RETURN_IF_ERROR(scope->Exit());
  }
  return t;
}

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SESSION_H_
