#include "runtime/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/descriptor.h"
#include "psd/coordinator.pb.h"
#include "psd/shard.pb.h"
#include "runtime/caller_role.h"
#include "spdlog/spdlog.h"

namespace psd {

namespace {

constexpr absl::string_view kBearer = "Bearer ";

std::array<unsigned char, 32> Sha256(absl::string_view text) {
  std::array<unsigned char, 32> digest;
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

// Services any caller may use: probes and tooling, nothing that touches data.
bool IsPublicMethod(absl::string_view method_path) {
  return absl::StartsWith(method_path, "/grpc.health.v1.Health/") ||
         absl::StartsWith(method_path, "/grpc.reflection.");
}

class TokenAuthProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenAuthProcessor(std::shared_ptr<const TokenAuthorizer> authorizer)
      : authorizer_(std::move(authorizer)) {}

  // The check is a few hashes: no need for gRPC's extra thread.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* /*response_metadata*/) override {
    absl::string_view path;
    absl::string_view authorization;
    for (const auto& [key, value] : auth_metadata) {
      if (key == ":path") path = absl::string_view(value.data(), value.size());
      if (key == "authorization") authorization = absl::string_view(value.data(), value.size());
    }
    Role held = ROLE_UNSPECIFIED;
    uint64_t caller_key = 0;
    absl::Status status = authorizer_->Authorize(path, authorization, &held, &caller_key);
    if (!status.ok()) {
      return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                          std::string(status.message()));
    }
    // Handlers that limit what a role may ask of an rpc read it here.
    SetCallerRole(context, held);
    // Exactly-once request ids are bound to the token (RequestWindow).
    if (caller_key != 0) SetCallerKey(context, caller_key);
    // The token stays out of handlers (and anything that logs metadata).
    if (!authorization.empty()) {
      consumed_auth_metadata->insert(
          std::make_pair(std::string("authorization"), std::string(authorization)));
    }
    return grpc::Status::OK;
  }

 private:
  std::shared_ptr<const TokenAuthorizer> authorizer_;
};

}  // namespace

namespace {

const google::protobuf::MethodDescriptor* FindMethod(absl::string_view method_path) {
  // "/psd.Shard/Read" -> "psd.Shard.Read"
  if (!absl::StartsWith(method_path, "/")) return nullptr;
  const std::string full_name = absl::StrReplaceAll(method_path.substr(1), {{"/", "."}});
  // Links and registers the service files in the generated pool, also in
  // binaries that use no message of theirs.
  static const bool loaded =
      ReadRequest::descriptor() != nullptr && OpenSessionRequest::descriptor() != nullptr;
  (void)loaded;
  return google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(full_name);
}

}  // namespace

Role RequiredRole(absl::string_view method_path) {
  const google::protobuf::MethodDescriptor* method = FindMethod(method_path);
  if (method == nullptr) return ROLE_UNSPECIFIED;
  return method->options().GetExtension(psd::role);
}

bool MayCall(Role held, absl::string_view method_path) {
  const google::protobuf::MethodDescriptor* method = FindMethod(method_path);
  if (method == nullptr) return false;
  const google::protobuf::MethodOptions& options = method->options();
  if (RoleGrants(held, options.GetExtension(psd::role))) return true;
  for (int i = 0; i < options.ExtensionSize(psd::also_role); ++i) {
    if (held != ROLE_UNSPECIFIED && options.GetExtension(psd::also_role, i) == held) return true;
  }
  return false;
}

bool RoleGrants(Role held, Role required) {
  if (required == ROLE_UNSPECIFIED || held == ROLE_UNSPECIFIED) return false;
  return held == required || (held == ROLE_ADMIN && required == ROLE_TRAINER);
}

bool IsLoopbackListen(absl::string_view listen) {
  const size_t colon = listen.rfind(':');
  absl::string_view host = colon == absl::string_view::npos ? listen : listen.substr(0, colon);
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

TokenAuthorizer::TokenAuthorizer(const std::vector<TokenEntry>& entries) {
  for (const TokenEntry& entry : entries) entries_.push_back({Sha256(entry.token), entry.role});
}

absl::Status TokenAuthorizer::Authorize(absl::string_view method_path,
                                        absl::string_view authorization, Role* held_role,
                                        uint64_t* caller_key) const {
  if (held_role != nullptr) *held_role = ROLE_UNSPECIFIED;
  if (caller_key != nullptr) *caller_key = 0;
  if (IsPublicMethod(method_path)) return absl::OkStatus();
  absl::StatusOr<Role> role = RoleOf(authorization);
  if (!role.ok()) return role.status();
  const Role held = *role;
  const Role required = RequiredRole(method_path);
  if (required == ROLE_UNSPECIFIED) {
    return absl::PermissionDeniedError(
        absl::StrCat(method_path.empty() ? "(unknown method)" : method_path,
                     " has no (psd.role): denied to every caller"));
  }
  if (!MayCall(held, method_path)) {
    return absl::PermissionDeniedError(absl::StrCat(method_path, " needs the ", RoleName(required),
                                                    " role; the token has ", RoleName(held)));
  }
  if (held_role != nullptr) *held_role = held;
  if (caller_key != nullptr) {
    const std::array<unsigned char, 32> digest = Sha256(authorization.substr(kBearer.size()));
    uint64_t key = 0;
    for (int i = 0; i < 8; ++i) key = (key << 8) | digest[i];
    *caller_key = key != 0 ? key : 1;  // 0 is the anonymous caller
  }
  return absl::OkStatus();
}

absl::StatusOr<Role> TokenAuthorizer::RoleOf(absl::string_view authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing bearer token (authorization header)");
  }
  if (!absl::StartsWith(authorization, kBearer)) {
    return absl::UnauthenticatedError("authorization header is not \"Bearer <token>\"");
  }
  // Compare digests of equal length in constant time, and look at every
  // entry, so timing says nothing about how much of a token matched.
  const std::array<unsigned char, 32> digest = Sha256(authorization.substr(kBearer.size()));
  Role held = ROLE_UNSPECIFIED;
  for (const Entry& entry : entries_) {
    const bool match = CRYPTO_memcmp(entry.digest.data(), digest.data(), digest.size()) == 0;
    if (match && held == ROLE_UNSPECIFIED) held = entry.role;
  }
  if (held == ROLE_UNSPECIFIED) return absl::UnauthenticatedError("unknown bearer token");
  return held;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurity& security, const std::string& listen, const std::string& who) {
  if (!security.tls()) {
    if (!security.tls_key.empty() || security.tls_client_auth) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": --tls-key/--tls-client-auth need --tls-cert"));
    }
    if (!security.token_file.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          who,
          ": a token file needs TLS (--tls-cert/--tls-key): tokens would travel in clear text"));
    }
    if (!IsLoopbackListen(listen)) {
      if (!security.insecure) {
        return absl::FailedPreconditionError(absl::StrCat(
            who, ": refusing to listen on non-loopback ", listen,
            " without TLS; give --tls-cert/--tls-key, or --insecure on a trusted network"));
      }
      spdlog::warn(
          "!!! {}: serving PLAINTEXT without authentication on non-loopback {} "
          "(--insecure): anyone who can reach it can read and change every "
          "parameter !!!",
          who, listen);
    }
    return grpc::InsecureServerCredentials();
  }
  if (security.tls_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": --tls-cert needs --tls-key"));
  }
  grpc::SslServerCredentialsOptions ssl(
      security.tls_client_auth ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                               : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadSecretFile(security.tls_cert);
  if (!cert.ok()) return cert.status();
  auto key = ReadSecretFile(security.tls_key);
  if (!key.ok()) return key.status();
  pair.cert_chain = *std::move(cert);
  pair.private_key = *std::move(key);
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (security.tls_client_auth) {
    if (security.tls_ca.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": --tls-client-auth needs --tls-ca"));
    }
    auto ca = ReadSecretFile(security.tls_ca);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::SslServerCredentials(ssl);
  if (!security.token_file.empty()) {
    auto entries = LoadTokenFile(security.token_file);
    if (!entries.ok()) return entries.status();
    credentials->SetAuthMetadataProcessor(
        std::make_shared<TokenAuthProcessor>(std::make_shared<const TokenAuthorizer>(*entries)));
  } else {
    spdlog::warn(
        "{}: TLS without a token file: every client that trusts the CA may call "
        "every rpc",
        who);
  }
  return credentials;
}

ChannelSecurity NodeChannelSecurity(const ServerSecurity& security) {
  ChannelSecurity channel;
  if (!security.tls()) return channel;
  channel.tls_ca = security.tls_ca;
  channel.tls_cert = security.tls_cert;
  channel.tls_key = security.tls_key;
  channel.token_file = security.token_file;
  if (!channel.token_file.empty()) channel.token_role = "node";
  return channel;
}

}  // namespace psd
