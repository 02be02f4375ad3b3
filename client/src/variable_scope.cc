// VariableScope: the client side of the coordinator's variable scopes.
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "psd/session.h"
#include "psd/status.h"
#include "session_impl.h"

namespace psd {
namespace client {

// ---------------------------------------------------------------------------
// VariableScope

namespace {

// reuse is inherited and never undone: only TRUE / AUTO change it.
Reuse MergeReuse(Reuse inherited, const std::optional<Reuse>& requested) {
  if (requested.has_value() && *requested != REUSE_FALSE) return *requested;
  return inherited;
}

absl::StatusOr<VariableScope> OpenFrame(Session::Impl* impl, OpenScopeRequest req,
                                        CapturedScope scope,
                                        const std::function<VariableScope(CapturedScope, size_t)>&
                                            make) {
  req.set_session_id(impl->id_);
  req.set_request_seq(impl->NextRequestSeq());
  OpenScopeResponse resp;
  PSD_RETURN_IF_ERROR(impl->Call(&Coordinator::Stub::OpenScope, req, &resp));
  scope.name = resp.path();
  impl->stack_.push_back(Session::Impl::Frame{scope, resp.token()});
  return make(std::move(scope), impl->stack_.size() - 1);
}

void ApplyDefaults(const ScopeOptions& o, CapturedScope* s) {
  if (o.initializer.has_value()) s->initializer = o.initializer;
  if (o.partitioner.has_value()) s->partitioner = o.partitioner;
  if (o.dtype != DT_INVALID) s->dtype = o.dtype;
  if (o.caching_device.has_value()) s->caching_device = *o.caching_device;
  if (o.regularizer) s->regularizer = o.regularizer;
}

}  // namespace

absl::StatusOr<VariableScope> VariableScope::Enter(Session* session, const std::string& name,
                                                   const ScopeOptions& options) {
  Session::Impl* impl = session->impl_.get();
  const CapturedScope& parent = impl->stack_.back().scope;
  CapturedScope scope = parent;
  scope.reuse = MergeReuse(parent.reuse, options.reuse);
  ApplyDefaults(options, &scope);
  OpenScopeRequest req;
  req.set_parent_path(parent.name);
  req.set_name(name);
  req.set_reuse(scope.reuse == REUSE_TRUE);
  return OpenFrame(impl, req, scope, [session](CapturedScope s, size_t depth) {
    return VariableScope(session, std::move(s), depth);
  });
}

absl::StatusOr<VariableScope> VariableScope::EnterDefault(Session* session,
                                                          const std::string& default_name,
                                                          const ScopeOptions& options) {
  Session::Impl* impl = session->impl_.get();
  const CapturedScope& parent = impl->stack_.back().scope;
  CapturedScope scope = parent;
  scope.reuse = MergeReuse(parent.reuse, options.reuse);
  ApplyDefaults(options, &scope);
  OpenScopeRequest req;
  req.set_parent_path(parent.name);
  req.set_default_name(default_name);
  // Only an explicit reuse=True is refused for a default-named scope.
  req.set_reuse(options.reuse.has_value() && *options.reuse == REUSE_TRUE);
  return OpenFrame(impl, req, scope, [session](CapturedScope s, size_t depth) {
    return VariableScope(session, std::move(s), depth);
  });
}

absl::StatusOr<VariableScope> VariableScope::EnterOp(Session* session,
                                                     const std::string& name_or_scope,
                                                     const std::string& default_name,
                                                     const ScopeOptions& options) {
  if (!name_or_scope.empty()) return Enter(session, name_or_scope, options);
  if (default_name.empty()) {
    return absl::InvalidArgumentError(
        "variable_op_scope: name_or_scope and default_name cannot both be empty");
  }
  return EnterDefault(session, default_name, options);
}

absl::StatusOr<VariableScope> VariableScope::Reenter(Session* session,
                                                     const CapturedScope& captured,
                                                     const ScopeOptions& options) {
  Session::Impl* impl = session->impl_.get();
  CapturedScope scope = captured;
  scope.reuse = MergeReuse(captured.reuse, options.reuse);
  ApplyDefaults(options, &scope);
  OpenScopeRequest req;
  req.set_name(captured.name);
  req.set_captured(true);
  req.set_reuse(scope.reuse == REUSE_TRUE);
  return OpenFrame(impl, req, scope, [session](CapturedScope s, size_t depth) {
    return VariableScope(session, std::move(s), depth);
  });
}

VariableScope::VariableScope(VariableScope&& other) noexcept
    : session_(other.session_), scope_(std::move(other.scope_)), depth_(other.depth_) {
  other.session_ = nullptr;
}

VariableScope::~VariableScope() { (void)Exit(); }

absl::Status VariableScope::Exit() {
  if (session_ == nullptr) return absl::OkStatus();
  Session::Impl* impl = session_->impl_.get();
  session_ = nullptr;
  absl::Status order;
  if (impl->stack_.size() != depth_ + 1) {
    order = absl::FailedPreconditionError(absl::StrCat(
        "variable scope ", scope_.name, " exited while ", impl->stack_.size() - depth_ - 1,
        " scope(s) entered after it are still open; exit scopes in reverse order"));
  }
  absl::Status closed;
  // Close everything above this scope too, innermost first, so the
  // coordinator's counters unwind as a stack.
  while (impl->stack_.size() > depth_ && impl->stack_.size() > 1) {
    Session::Impl::Frame frame = impl->stack_.back();
    impl->stack_.pop_back();
    CloseScopeRequest req;
    req.set_session_id(impl->id_);
    req.set_request_seq(impl->NextRequestSeq());
    req.set_path(frame.scope.name);
    req.set_token(frame.token);
    CloseScopeResponse resp;
    absl::Status s = impl->Call(&Coordinator::Stub::CloseScope, req, &resp);
    if (closed.ok()) closed = s;
  }
  return order.ok() ? closed : order;
}

CapturedScope VariableScope::captured() const {
  if (session_ != nullptr && session_->impl_->stack_.size() > depth_) {
    return session_->impl_->stack_[depth_].scope;
  }
  return scope_;
}

void VariableScope::reuse_variables() {
  scope_.reuse = REUSE_TRUE;
  if (session_ != nullptr && session_->impl_->stack_.size() > depth_) {
    session_->impl_->stack_[depth_].scope.reuse = REUSE_TRUE;
  }
}

}  // namespace client
}  // namespace psd
