// The role of the token an admitted call was authorized with, as handlers
// see it. Authorization (runtime/auth.h) decides which rpcs a role may
// call; a few rpcs open to several roles also limit what a role may ask of
// them (a shard's InitializeVariables takes other shards' addresses only
// from a node, the coordinator), and need the caller's role to do so. The
// token processor records it on the call's auth context, where no client
// can set it.
//
// The processor also records which token it was (a key derived from its
// digest, never the token): the shard binds exactly-once request ids to it,
// so one token's holder cannot act under ids another's holder drew.
//
// Thread-safety: stateless functions.
#ifndef PSD_SERVER_RUNTIME_CALLER_ROLE_H_
#define PSD_SERVER_RUNTIME_CALLER_ROLE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/server_context.h"
#include "psd/options.pb.h"

namespace psd {

// The auth-context property holding the caller's role (the Role number).
inline constexpr char kCallerRoleProperty[] = "psd.caller_role";

// Records `role` as the caller's on `context` (the token processor does).
inline void SetCallerRole(grpc::AuthContext* context, Role role) {
  context->AddProperty(kCallerRoleProperty, std::to_string(static_cast<int>(role)));
}

// The auth-context property holding the caller's token key (decimal).
inline constexpr char kCallerKeyProperty[] = "psd.caller_key";

// Records `key` (nonzero) as the key of the caller's token on `context`.
inline void SetCallerKey(grpc::AuthContext* context, uint64_t key) {
  context->AddProperty(kCallerKeyProperty, std::to_string(key));
}

// The key of the token `ctx`'s call was authorized with; 0 when the server
// checks no tokens (every caller is the same anonymous one) or the method
// is public.
inline uint64_t CallerKeyOf(const grpc::ServerContextBase& ctx) {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth == nullptr) return 0;
  const std::vector<grpc::string_ref> values = auth->FindPropertyValues(kCallerKeyProperty);
  uint64_t key = 0;
  if (values.empty() ||
      !absl::SimpleAtoi(absl::string_view(values.back().data(), values.back().size()), &key)) {
    return 0;
  }
  return key;
}

// The role of the caller of `ctx`'s call; nullopt when the server checks no
// tokens, where every caller is equal.
inline std::optional<Role> CallerRole(const grpc::ServerContextBase& ctx) {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth == nullptr) return std::nullopt;
  const std::vector<grpc::string_ref> values = auth->FindPropertyValues(kCallerRoleProperty);
  if (values.empty()) return std::nullopt;
  int role = 0;
  // A value only the processor writes; unreadable means no role at all.
  if (!absl::SimpleAtoi(absl::string_view(values.back().data(), values.back().size()), &role) ||
      !Role_IsValid(role)) {
    return ROLE_UNSPECIFIED;
  }
  return static_cast<Role>(role);
}

}  // namespace psd

#endif  // PSD_SERVER_RUNTIME_CALLER_ROLE_H_
