// Registry (registry.h): client sessions (open, close, the ids open), their
// variable scopes (entry, exit, default-named scope counters) and unique
// default variable names (Graph.unique_name).
#include "coordinator/registry.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/registry_internal.h"
#include "psd/names.h"
#include "psd/status.h"

namespace psd {

absl::StatusOr<uint64_t> Registry::OpenSession(const std::string& client) {
  uint64_t wait_for = 0;
  absl::StatusOr<uint64_t> opened = [&]() -> absl::StatusOr<uint64_t> {
  absl::MutexLock lock(&mu_);
  wait_for = ack_seq_;
  if (static_cast<int64_t>(sessions_.size()) >= options_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the coordinator has ", sessions_.size(), " sessions open, its limit (max_sessions); "
        "close sessions that are done (idle ones expire after the session TTL)"));
  }
  const uint64_t id = next_session_id_;
  RegistryRecord record;
  auto* op = record.mutable_session_opened();
  op->set_session_id(id);
  op->set_client(client);
  op->set_opened_unix_micros(absl::ToUnixMicros(absl::Now()));
  PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
  return id;
  }();
  return Committed(std::move(opened), wait_for);
}

absl::Status Registry::CloseSession(uint64_t session) {
  uint64_t wait_for = 0;
  absl::Status closed = [&]() -> absl::Status {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    PSD_RETURN_IF_ERROR(FindSession(session).status());
    RegistryRecord record;
    record.set_session_closed(session);
    PSD_ASSIGN_OR_RETURN(wait_for, Commit(&record, /*sync=*/true));
    return absl::OkStatus();
  }();
  return Committed(std::move(closed), wait_for);
}

bool Registry::HasSession(uint64_t session) const {
  uint64_t wait_for = 0;
  bool open = false;
  {
    absl::MutexLock lock(&mu_);
    wait_for = ack_seq_;
    open = sessions_.count(session) > 0;
  }
  // A session whose opening or closing is not durable yet is not answered
  // for; if the log failed, it is reported as not open.
  return WaitDurable(wait_for).ok() && open;
}

absl::StatusOr<ScopeEntry> Registry::OpenScope(uint64_t session, const std::string& parent_path,
                                               const std::string& name,
                                               const std::string& default_name, bool reuse,
                                               bool captured, uint64_t request_seq) {
  absl::MutexLock lock(&mu_);
  PSD_ASSIGN_OR_RETURN(SessionState * s, FindSession(session));
  PSD_ASSIGN_OR_RETURN(const SessionReply* reply, FindReply(*s, request_seq));
  if (reply != nullptr && reply->names_size() == 1) {
    return ScopeEntry{reply->names(0), reply->token()};
  }
  if (name.empty() == default_name.empty() && !captured) {
    return absl::InvalidArgumentError(
        "variable_scope needs exactly one of name_or_scope and default_name");
  }
  ScopeEntry entry;
  if (captured) {
    // The captured scope's own full path; "" is the root scope.
    if (!name.empty()) PSD_RETURN_IF_ERROR(ValidateFullVariableName(name));
    entry.path = name;
    entry.token = s->next_token();
  } else if (!name.empty()) {
    PSD_RETURN_IF_ERROR(ValidateScopeName(name, parent_path.empty()));
    entry.path = parent_path.empty() ? name : absl::StrCat(parent_path, "/", name);
  } else {
    if (reuse) {
      return absl::InvalidArgumentError("reuse=True cannot be used without a name_or_scope");
    }
    PSD_RETURN_IF_ERROR(ValidateScopeName(default_name, parent_path.empty()));
    // TensorFlow's _get_unique_variable_scope.
    const std::string base =
        parent_path.empty() ? default_name : absl::StrCat(parent_path, "/", default_name);
    auto count = [&](const std::string& key) {
      auto it = s->scope_counts().find(key);
      return it == s->scope_counts().end() ? int64_t{0} : it->second;
    };
    std::string unique = default_name;
    if (count(base) > 0) {
      int64_t idx = 1;
      while (count(absl::StrCat(base, "_", idx)) > 0) ++idx;
      unique = absl::StrCat(default_name, "_", idx);
    }
    entry.path = parent_path.empty() ? unique : absl::StrCat(parent_path, "/", unique);
  }
  // The scope's variables' names start with its path; a path the shards
  // could not hold is refused at the scope.
  PSD_RETURN_IF_ERROR(ValidateScopePath(entry.path));
  RegistryRecord record;
  auto* op = record.mutable_scope_opened();
  op->set_session_id(session);
  op->set_path(entry.path);
  op->set_captured(captured);
  if (request_seq != 0) {
    op->mutable_reply()->set_request_seq(request_seq);
    op->mutable_reply()->add_names(entry.path);
    op->mutable_reply()->set_token(entry.token);
  }
  PSD_RETURN_IF_ERROR(Commit(&record, /*sync=*/false).status());
  return entry;
}

absl::Status Registry::CloseScope(uint64_t session, const std::string& path, uint64_t token,
                                  uint64_t request_seq) {
  absl::MutexLock lock(&mu_);
  PSD_ASSIGN_OR_RETURN(SessionState * s, FindSession(session));
  PSD_ASSIGN_OR_RETURN(const SessionReply* reply, FindReply(*s, request_seq));
  if (reply != nullptr) return absl::OkStatus();  // closed by the first attempt
  if (token != 0) {
    bool found = false;
    for (const auto& c : s->captured()) found = found || c.token() == token;
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat("session ", session, ": scope ", path,
                                                     " with token ", token, " is not open"));
    }
  }
  RegistryRecord record;
  auto* op = record.mutable_scope_closed();
  op->set_session_id(session);
  op->set_path(path);
  op->set_token(token);
  if (request_seq != 0) op->mutable_reply()->set_request_seq(request_seq);
  return Commit(&record, /*sync=*/false).status();
}

absl::StatusOr<std::string> Registry::UniqueName(uint64_t session, const std::string& name,
                                                 bool mark_as_used, uint64_t request_seq) {
  absl::MutexLock lock(&mu_);
  PSD_ASSIGN_OR_RETURN(SessionState * s, FindSession(session));
  if (mark_as_used) {
    PSD_ASSIGN_OR_RETURN(const SessionReply* reply, FindReply(*s, request_seq));
    if (reply != nullptr && reply->names_size() == 1) return reply->names(0);
  }
  if (name.empty()) return absl::InvalidArgumentError("unique name: empty name");
  // Graph.unique_name; the result keeps the caller's capitalization.
  const auto& in_use = s->names_in_use();
  const std::string base = absl::AsciiStrToLower(name);
  std::string result = name;
  auto it = in_use.find(base);
  int64_t i = it == in_use.end() ? 0 : it->second;
  if (i > 0) {
    std::string key = base;
    while (in_use.count(key) > 0) key = absl::StrCat(base, "_", i++);
    result = absl::StrCat(name, "_", i - 1);
  }
  if (mark_as_used) {
    RegistryRecord record;
    record.mutable_name_used()->set_session_id(session);
    record.mutable_name_used()->set_name(name);
    if (request_seq != 0) {
      record.mutable_name_used()->mutable_reply()->set_request_seq(request_seq);
      record.mutable_name_used()->mutable_reply()->add_names(result);
    }
    PSD_RETURN_IF_ERROR(Commit(&record, /*sync=*/false).status());
  }
  return result;
}

std::vector<uint64_t> Registry::SessionIds() const {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> ids;
  ids.reserve(sessions_.size());
  for (const auto& [id, s] : sessions_) ids.push_back(id);
  return ids;
}

size_t Registry::num_sessions() const {
  absl::MutexLock lock(&mu_);
  return sessions_.size();
}

}  // namespace psd
