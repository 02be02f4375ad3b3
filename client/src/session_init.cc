// Session's initialization: the values this session supplied
// (Session::Impl's supplied_) and the initialization and checks of
// variables, on their shards or ordered by the coordinator.
#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "psd/session.h"
#include "psd/status.h"
#include "session_impl.h"

namespace psd {
namespace client {

// ---------------------------------------------------------------------------
// Supplied values

namespace {

bool SameDescription(const InitializerSpec::SuppliedValue& a,
                     const InitializerSpec::SuppliedValue& b) {
  return a.dtype() == b.dtype() && a.byte_size() == b.byte_size() && a.crc32c() == b.crc32c() &&
         std::equal(a.shape().dims().begin(), a.shape().dims().end(), b.shape().dims().begin(),
                    b.shape().dims().end());
}

}  // namespace

absl::Status Session::Impl::Supply(const Variable& v, const InitializerSpec& declared,
                                   std::shared_ptr<const Tensor> value, bool initialize) {
  if (value == nullptr) return absl::OkStatus();
  const VariableHandle handle = v.handle();
  if (!handle.initializer().has_supplied_value() ||
      !SameDescription(handle.initializer().supplied_value(), declared.supplied_value())) {
    // Attached to a variable declared with another value: TensorFlow
    // ignores the initializer of a reused variable.
    return absl::OkStatus();
  }
  const InitializerSpec::SuppliedValue& description = handle.initializer().supplied_value();
  {
    absl::MutexLock lock(&supplied_mu_);
    supplied_[handle.name()] = Supplied{description, value};
  }
  if (!initialize) return absl::OkStatus();
  return internal::WriteSuppliedValue(internal::VariableState::Of(v), *value, /*force=*/false);
}

std::shared_ptr<const Tensor> Session::Impl::SuppliedFor(const VariableHandle& handle) {
  if (!handle.initializer().has_supplied_value()) return nullptr;
  absl::MutexLock lock(&supplied_mu_);
  auto it = supplied_.find(handle.name());
  if (it == supplied_.end() ||
      !SameDescription(it->second.description, handle.initializer().supplied_value())) {
    return nullptr;
  }
  return it->second.value;
}

absl::Status Session::Impl::InitializeSuppliedSources(const InitializerSpec& spec) {
  // A chain of sources is bounded by the variables that exist; `seen` stops
  // a cycle a racing redeclaration could make.
  std::set<std::string> seen;
  const InitializerSpec* next = &spec;
  VariableHandle handle;
  while (next->has_from_variable() && seen.insert(next->from_variable().source()).second) {
    absl::StatusOr<VariableHandle> source = Lookup(next->from_variable().source());
    // A missing source is the coordinator's to report, naming the target.
    if (!source.ok()) return absl::OkStatus();
    handle = *std::move(source);
    if (std::shared_ptr<const Tensor> value = SuppliedFor(handle)) {
      Variable v = MakeVariable(handle);
      return internal::WriteSuppliedValue(internal::VariableState::Of(v), *value,
                                          /*force=*/false);
    }
    next = &handle.initializer();
  }
  return absl::OkStatus();
}

void Session::Impl::ForgetSupplied(const std::string& name) {
  absl::MutexLock lock(&supplied_mu_);
  supplied_.erase(name);
}

// ---------------------------------------------------------------------------
// Initialization

namespace {

// Part names of `variables`, grouped by the shard (address) holding them.
struct ShardGroup {
  PartHandle first;  // any part on the shard (for ShardFor)
  std::vector<std::string> names;
};

absl::StatusOr<std::map<std::string, ShardGroup>> GroupPartsByShard(
    Session::Impl* impl, const std::vector<Variable>& variables) {
  std::map<std::string, ShardGroup> groups;
  for (const Variable& v : variables) {
    PSD_ASSIGN_OR_RETURN(VariableHandle h, impl->EnsureAddressed(v.handle()));
    for (const PartHandle& p : h.parts()) {
      if (p.lost()) {
        return absl::UnavailableError(absl::StrCat("part ", p.name(), " of variable ", h.name(),
                                                   " is lost: shard ", p.shard_id(), " (",
                                                   p.shard_address(),
                                                   ") restarted without it; restore it"));
      }
      ShardGroup& g = groups[p.shard_address()];
      if (g.names.empty()) g.first = p;
      g.names.push_back(p.name());
    }
  }
  return groups;
}

// Runs fn once per shard of `variables`' parts in parallel; after a stale
// handle, refreshes every variable and runs once more.
absl::Status ForShards(Session::Impl* impl, const std::vector<Variable>& variables,
                       const std::function<absl::Status(ShardClient&, const ShardGroup&)>& fn) {
  for (int attempt = 0;; ++attempt) {
    PSD_ASSIGN_OR_RETURN(auto groups, GroupPartsByShard(impl, variables));
    std::vector<const ShardGroup*> list;
    for (const auto& [address, g] : groups) list.push_back(&g);
    std::vector<absl::Status> statuses = RunParallel(list.size(), [&](size_t i) -> absl::Status {
      PSD_ASSIGN_OR_RETURN(auto shard, impl->ShardFor(list[i]->first));
      return fn(*shard, *list[i]);
    });
    absl::Status first;
    bool stale = false;
    for (const absl::Status& s : statuses) {
      stale = stale || IsStaleHandle(s);
      if (first.ok()) first = s;
    }
    if (!stale || attempt > 0) return first;
    for (Variable v : variables) PSD_RETURN_IF_ERROR(v.Refresh());
  }
}

}  // namespace

absl::Status Session::Impl::InitializeOrdered(const std::vector<std::string>& names, bool force) {
  CoordinatorInitializeRequest req;
  req.set_session_id(id_);
  for (const std::string& name : names) req.add_names(name);
  req.set_force(force);
  CoordinatorInitializeResponse resp;
  // The attempt's deadline bounds the whole ordered initialization, every
  // step of it: the coordinator gives it to each step's shard calls
  // (together with its own per-step timeout) and starts no step past it,
  // and a shard applies nothing once it passed. So a DEADLINE_EXCEEDED here
  // is not followed by an initialization that completes after all; a chain
  // too slow for coordinator_timeout needs a larger one. One attempt (see
  // the header).
  internal::CallOptions once = coordinator_->options().call;
  once.retry_budget = absl::ZeroDuration();
  return coordinator_->Call(&Coordinator::Stub::InitializeVariables, req, &resp, once);
}

absl::Status Session::InitializeVariables(const std::vector<Variable>& all, bool force) {
  // Values this session supplied go from here straight to their shards,
  // first, as sources of the rest may be among them. A supplied variable
  // whose value this session does not hold goes the shards' way: an
  // initialized one is left alone, any other is FAILED_PRECONDITION.
  std::vector<Variable> variables;
  std::vector<std::pair<Variable, std::shared_ptr<const Tensor>>> supplied;
  for (const Variable& v : all) {
    std::shared_ptr<const Tensor> value = impl_->SuppliedFor(v.handle());
    if (value != nullptr) {
      supplied.emplace_back(v, std::move(value));
    } else {
      variables.push_back(v);
    }
  }
  std::vector<absl::Status> written = RunParallel(supplied.size(), [&](size_t i) {
    return internal::WriteSuppliedValue(internal::VariableState::Of(supplied[i].first),
                                        *supplied[i].second, force);
  });
  for (const absl::Status& s : written) PSD_RETURN_IF_ERROR(s);
  if (variables.empty()) return absl::OkStatus();

  // A variable initialized from another needs its source first, and its
  // shard needs to know where the source lives: the coordinator orders the
  // whole list. Without one, the shards are called directly.
  const bool ordered = std::any_of(variables.begin(), variables.end(), [](const Variable& v) {
    return v.handle().initializer().has_from_variable();
  });
  if (ordered) {
    // The coordinator initializes sources it can run; one whose value this
    // session supplied is written from here first.
    for (const Variable& v : variables) {
      PSD_RETURN_IF_ERROR(impl_->InitializeSuppliedSources(v.handle().initializer()));
    }
    std::vector<std::string> names;
    names.reserve(variables.size());
    for (const Variable& v : variables) names.push_back(v.name());
    return impl_->InitializeOrdered(names, force);
  }
  return ForShards(impl_.get(), variables, [&](ShardClient& shard, const ShardGroup& g) {
    return shard.Initialize(g.names, force);
  });
}

absl::Status Session::InitializeCollections(const std::vector<std::string>& collections) {
  PSD_ASSIGN_OR_RETURN(std::vector<Variable> all, ListVariables(""));
  std::vector<Variable> wanted;
  for (const Variable& v : all) {
    // A value another client supplied is that client's to write, as a
    // TensorFlow graph's initializer covers its own variables only.
    if (v.handle().initializer().has_supplied_value() &&
        impl_->SuppliedFor(v.handle()) == nullptr) {
      continue;
    }
    const auto c = v.collections();
    if (std::any_of(collections.begin(), collections.end(), [&](const std::string& wanted) {
          return std::find(c.begin(), c.end(), wanted) != c.end();
        })) {
      wanted.push_back(v);
    }
  }
  return InitializeVariables(wanted);
}

absl::Status Session::InitializeAllVariables() {
  return InitializeCollections({kGlobalVariables, kLocalVariables});
}

absl::StatusOr<std::vector<std::string>> Session::ReportUninitializedVariables(
    const std::vector<Variable>& variables) {
  std::vector<Variable> list = variables;
  if (list.empty()) {
    PSD_ASSIGN_OR_RETURN(list, GlobalVariables());
  }
  absl::Mutex mu;
  std::set<std::string> uninitialized;  // part names
  PSD_RETURN_IF_ERROR(
      ForShards(impl_.get(), list, [&](ShardClient& shard, const ShardGroup& g) -> absl::Status {
        PSD_ASSIGN_OR_RETURN(std::vector<std::string> names, shard.ReportUninitialized(g.names));
        absl::MutexLock lock(&mu);
        uninitialized.insert(names.begin(), names.end());
        return absl::OkStatus();
      }));
  std::vector<std::string> out;
  for (const Variable& v : list) {
    for (const PartInfo& p : v.parts()) {
      if (uninitialized.count(p.name) > 0) {
        out.push_back(v.name());
        break;
      }
    }
  }
  return out;
}

absl::Status Session::WaitForInitialized(const std::vector<Variable>& variables,
                                         absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration pause = absl::Milliseconds(20);
  std::vector<Variable> pending = variables;
  while (true) {
    PSD_ASSIGN_OR_RETURN(std::vector<std::string> missing, ReportUninitializedVariables(pending));
    if (missing.empty()) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("variables not initialized after ", absl::FormatDuration(timeout), ": ",
                       absl::StrJoin(missing, ", ")));
    }
    std::vector<Variable> still;
    for (const Variable& v : pending) {
      if (std::find(missing.begin(), missing.end(), v.name()) != missing.end()) still.push_back(v);
    }
    pending = std::move(still);
    absl::SleepFor(std::min(pause, deadline - absl::Now()));
    pause = std::min(pause * 2, absl::Milliseconds(500));
  }
}

}  // namespace client
}  // namespace psd
