// Internals shared by session.cc, session_init.cc, variable_scope.cc and
// variable.cc: the session's state (coordinator client, scope stack,
// shard-client pool) and a Variable's shared handle. Not part of the public API.
#ifndef PSD_CLIENT_SRC_SESSION_IMPL_H_
#define PSD_CLIENT_SRC_SESSION_IMPL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "psd/client.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/parallel.h"
#include "psd/internal/coordinator_client.h"
#include "psd/optimizer_ops.h"
#include "psd/shard.pb.h"
#include "psd/session.h"
#include "psd/variable.h"

namespace psd {
namespace client {

// True for the shard's ABORTED "stale handle" answer (or our own, when a
// part's shard incarnation is not the one the pool can reach).
bool IsStaleHandle(const absl::Status& status);

// True for a failure of an op on `part` that a failover may cure: the part
// is replicated (docs/replication.md) and its shard was unreachable, or
// answered UNAVAILABLE (its lease expired, or it is a backup now) or "stale
// handle" (it restarted). The caller asks the coordinator where the part
// is and tries again, until the failover is done.
bool MayBeFailingOver(const absl::Status& status, const PartHandle& part);


class Session::Impl {
 public:
  struct Frame {
    CapturedScope scope;
    uint64_t token = 0;  // CloseScope's token (captured scopes)
  };

  // `coordinator`'s default CallOptions are the session's: the options'
  // coordinator_timeout per attempt, waiting for the coordinator to come
  // back, retried within coordinator_retry_budget.
  Impl(std::string address, SessionOptions options,
       std::unique_ptr<internal::CoordinatorClient> coordinator)
      : address_(std::move(address)),
        options_(std::move(options)),
        coordinator_(std::move(coordinator)) {
    stack_.push_back(Frame{});
  }

  // One coordinator RPC under the session's CallOptions (see above). A
  // request that changes the session carries NextRequestSeq() so that a
  // retry of one the coordinator applied is answered, not applied again.
  template <typename Req, typename Resp>
  absl::Status Call(internal::CoordinatorClient::Method<Req, Resp> method, const Req& request,
                    Resp* response) {
    return coordinator_->Call(method, request, response);
  }

  // LookupVariable, waiting for the parts' shards to be registered.
  absl::StatusOr<VariableHandle> Lookup(const std::string& name);
  // Waits (re-looking up) while some part's shard has no address (the
  // coordinator restarted and the shard has not registered again yet).
  absl::StatusOr<VariableHandle> EnsureAddressed(VariableHandle handle);
  // `caching_device` non-empty: reads are cached (Variable::cached()).
  Variable MakeVariable(VariableHandle handle, std::string caching_device = "");

  // Initialization ordered by the coordinator (CoordinatorInitializeRequest),
  // for lists with a variable initialized from another. One attempt (with
  // wait-for-ready): its UNAVAILABLE names a lost part, which a retry
  // cannot cure.
  absl::Status InitializeOrdered(const std::vector<std::string>& names, bool force);

  // Values this session supplied as initial values (SuppliedValue). With
  // `value` set and `v`'s handle describing it (this declaration created
  // the variable, or another declared it with the same value), keeps it
  // for later initializations and, with `initialize` (the declaration
  // created the variable and asked to initialize it, as the coordinator
  // initializes other variables only at creation), writes it to the parts
  // not yet initialized.
  // `declared` is the declaration's initializer (the value's description).
  absl::Status Supply(const Variable& v, const InitializerSpec& declared,
                      std::shared_ptr<const Tensor> value, bool initialize);
  // The value kept for the variable of `handle`, if the handle describes it.
  std::shared_ptr<const Tensor> SuppliedFor(const VariableHandle& handle);
  void ForgetSupplied(const std::string& name);
  // For a spec initialized from another variable (init::FromVariable):
  // writes the first source along its chain whose value this session
  // supplied, if it is not initialized, so the coordinator's ordered
  // initialization finds it initialized (the coordinator cannot run it).
  absl::Status InitializeSuppliedSources(const InitializerSpec& spec);

  // The pooled client for the part's shard, connected to the part's
  // incarnation; ABORTED "stale handle" when the shard at that address is
  // another incarnation now.
  absl::StatusOr<std::shared_ptr<ShardClient>> ShardFor(const PartHandle& part);

  const std::string address_;
  const SessionOptions options_;
  const std::unique_ptr<internal::CoordinatorClient> coordinator_;
  uint64_t id_ = 0;

  // Pings the coordinator every `interval` until StopKeepAlive, so the
  // session does not expire while the trainer only talks to shards.
  void StartKeepAlive(absl::Duration interval);
  void StopKeepAlive();
  // Tags a coordinator request that changes the session (GetVariable,
  // scopes, unique names) so that Call's retries of it are applied once.
  uint64_t NextRequestSeq() { return next_request_seq_.fetch_add(1); }
  // The scope stack; [0] is the root scope. Thread-compatible.
  std::vector<Frame> stack_;

  // Session::SetRandomSeed. Applies the graph seed (when set) to a
  // declaration's random initializer and counts the declaration.
  void SetRandomSeed(std::optional<int64_t> seed);
  std::optional<int64_t> random_seed() const;
  void SeedDeclaration(VariableDeclaration* declaration);

  // Session::RegularizationLoss: the first regularizer named for each
  // variable, in the order first named.
  void RecordRegularizer(const Variable& v, Regularizer regularizer);
  std::vector<std::pair<Variable, Regularizer>> regularizers() const;

  // Session::trainable_variables_created.
  void CountTrainableCreated(int64_t n) { trainable_created_.fetch_add(n); }
  int64_t trainable_created() const { return trainable_created_.load(); }

 private:
  std::atomic<uint64_t> next_request_seq_{1};
  std::atomic<int64_t> trainable_created_{0};
  absl::Mutex keepalive_mu_;
  bool keepalive_stop_ ABSL_GUARDED_BY(keepalive_mu_) = false;
  std::thread keepalive_;
  absl::Mutex pool_mu_;
  std::map<std::string, std::shared_ptr<ShardClient>> pool_ ABSL_GUARDED_BY(pool_mu_);
  struct Supplied {
    InitializerSpec::SuppliedValue description;
    std::shared_ptr<const Tensor> value;
  };
  mutable absl::Mutex regularizers_mu_;
  std::vector<std::pair<Variable, Regularizer>> regularizers_ ABSL_GUARDED_BY(regularizers_mu_);
  mutable absl::Mutex seed_mu_;
  std::optional<int64_t> graph_seed_ ABSL_GUARDED_BY(seed_mu_);
  // Declarations so far: the op seed of an unseeded one under a graph seed.
  int64_t declarations_ ABSL_GUARDED_BY(seed_mu_) = 0;
  absl::Mutex supplied_mu_;
  // By variable name.
  std::map<std::string, Supplied> supplied_ ABSL_GUARDED_BY(supplied_mu_);
};

namespace internal {

// What every copy of one Variable shares.
struct VariableState {
  Session::Impl* session = nullptr;
  std::string name;
  mutable absl::Mutex mu;
  // Replaced whole by a refresh, never changed in place: an op holds the
  // one it started with (Current), without copying the message.
  std::shared_ptr<const VariableHandle> handle ABSL_GUARDED_BY(mu);
  // Set at creation: non-empty when reads are served from `cache`.
  std::string caching_device;
  // Taken before mu; held while the cache is filled, so concurrent first
  // reads fetch once.
  mutable absl::Mutex cache_mu;
  std::optional<Tensor> cache ABSL_GUARDED_BY(cache_mu);

  void InvalidateCache() {
    if (caching_device.empty()) return;
    absl::MutexLock lock(&cache_mu);
    cache.reset();
  }

  // The handle now; ops take it once per call (a copy of the message per
  // op cost small ops several allocations per part).
  std::shared_ptr<const VariableHandle> Current() const {
    absl::MutexLock lock(&mu);
    return handle;
  }
  // A copy of it, for callers that change or keep it.
  VariableHandle Snapshot() const { return *Current(); }
  absl::Status Refresh();

  static Variable Wrap(std::shared_ptr<VariableState> state) { return Variable(std::move(state)); }
  static VariableState* Of(const Variable& v) { return v.state_.get(); }

  // Runs fn on the parts `which` (all when empty) in parallel. A part lost
  // on its shard fails UNAVAILABLE naming it; parts answered with a stale
  // handle are retried once after a refresh (the refreshed handle must
  // keep the part's range). The first failure (in part order) is returned.
  absl::Status ForParts(
      const std::vector<int>& which,
      const std::function<absl::Status(int k, const PartHandle& part, ShardClient& shard)>& fn);
};

// The index splitter of variables partitioned along axis 0, shared by
// Variable's gather/scatter and Optimizer's sparse applies: for each part k
// of `h`, the positions in `indices` (each already checked to be in
// [0, rows)) of the indices that fall in part k's rows, in order.
std::vector<std::vector<int64_t>> PositionsByPart(const VariableHandle& h,
                                                  const std::vector<int64_t>& indices);

// The wire form of an optimizer's hyper-parameters (optimizer_ops.cc).
OptimizerSpec OptimizerSpecOf(const OptimizerConfig& config);

// Writes `value` (the variable's supplied initial value) to every part:
// only to parts not initialized unless `force`.
absl::Status WriteSuppliedValue(VariableState* state, const Tensor& value, bool force);

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_SESSION_IMPL_H_
