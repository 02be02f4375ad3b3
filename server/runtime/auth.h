// Server-side security: TLS credentials, the bind policy, and bearer-token
// authorization. Authorization has exactly one enforcement function,
// TokenAuthorizer::Authorize, which every call reaches through the
// AuthMetadataProcessor installed on the server credentials. The role an
// rpc needs comes from its `(psd.role)` option in the generated descriptor
// pool (proto/psd/options.proto), so an rpc without a role is refused for
// every token (fail closed). gRPC health checking and reflection need no
// token.
//
// Thread-safety: TokenAuthorizer is immutable after construction and safe to
// share between threads.
#ifndef PSD_SERVER_RUNTIME_AUTH_H_
#define PSD_SERVER_RUNTIME_AUTH_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/server_credentials.h"
#include "psd/channel_security.h"
#include "psd/tokens.h"

namespace psd {

// What a server process is given: its certificate (TLS on when set), the
// CA for peers (mutual TLS with tls_client_auth; also what it verifies the
// servers it dials with), and the token file it accepts (its first `node`
// entry is also what it sends to other psd servers).
struct ServerSecurity {
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string token_file;
  bool tls_client_auth = false;  // require a client certificate signed by tls_ca
  bool insecure = false;         // allow a non-loopback listen without TLS

  bool tls() const { return !tls_cert.empty(); }
};

// The role an rpc needs, from its (psd.role) option; ROLE_UNSPECIFIED when
// the method is unknown or has none. `method_path` is gRPC's ":path",
// "/psd.Shard/Read".
Role RequiredRole(absl::string_view method_path);

// Whether a token of role `held` may call `method_path`: RoleGrants for its
// (psd.role), or one of its (psd.also_role) options.
bool MayCall(Role held, absl::string_view method_path);

// Whether a token of role `held` may call an rpc that needs `required`:
// the same role, or admin for trainer rpcs.
bool RoleGrants(Role held, Role required);

// Whether `listen` (HOST:PORT) binds a loopback address only.
bool IsLoopbackListen(absl::string_view listen);

class TokenAuthorizer {
 public:
  explicit TokenAuthorizer(const std::vector<TokenEntry>& entries);
  TokenAuthorizer(const TokenAuthorizer&) = delete;
  TokenAuthorizer& operator=(const TokenAuthorizer&) = delete;

  // The one enforcement function. `authorization` is the request's
  // "authorization" header ("Bearer <token>"; empty when absent).
  // UNAUTHENTICATED: no or unknown token. PERMISSION_DENIED: the token's
  // role may not call the method (named with the role it needs). On
  // success `held_role` (when given) is the token's role (ROLE_UNSPECIFIED
  // for a public method, which needs no token) and `caller_key` (when
  // given) a nonzero key naming the token (the first 8 bytes of its SHA-256;
  // 0 for a public method), which says nothing of the token itself.
  absl::Status Authorize(absl::string_view method_path, absl::string_view authorization,
                         Role* held_role = nullptr, uint64_t* caller_key = nullptr) const;

  // The role of the token in `authorization` ("Bearer <token>"), for what
  // is not an rpc (the coordinator's console, which needs admin; check it
  // with RoleGrants). UNAUTHENTICATED: no or unknown token. The same
  // constant-time match as Authorize.
  absl::StatusOr<Role> RoleOf(absl::string_view authorization) const;

 private:
  struct Entry {
    std::array<unsigned char, 32> digest;  // SHA-256 of the token
    Role role;
  };
  std::vector<Entry> entries_;
};

// Server credentials for `security`, after checking the bind policy for
// `listen`: a non-loopback listen without TLS is refused unless
// security.insecure (then a loud warning is logged). With a token file,
// every call is authorized by a TokenAuthorizer; a token file without TLS
// is refused, since tokens would travel in clear text.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurity& security, const std::string& listen, const std::string& who);

// How a server dials other psd servers: TLS with its CA and (for mutual TLS)
// its own certificate, and the `node` token of its token file.
ChannelSecurity NodeChannelSecurity(const ServerSecurity& security);

}  // namespace psd

#endif  // PSD_SERVER_RUNTIME_AUTH_H_
