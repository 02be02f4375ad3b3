#include "psd/internal/grpc_credentials.h"

#include "psd/tokens.h"

namespace psd {
namespace internal {

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ChannelSecurity& security) {
  if (!security.tls()) {
    if (!security.token_file.empty()) {
      return absl::InvalidArgumentError(
          "a token file needs TLS (--tls-ca): tokens are never sent in clear text");
    }
    if (!security.tls_cert.empty() || !security.tls_key.empty()) {
      return absl::InvalidArgumentError("--tls-cert/--tls-key need --tls-ca");
    }
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  auto ca = ReadSecretFile(security.tls_ca);
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *std::move(ca);
  if (security.tls_cert.empty() != security.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!security.tls_cert.empty()) {
    auto cert = ReadSecretFile(security.tls_cert);
    if (!cert.ok()) return cert.status();
    auto key = ReadSecretFile(security.tls_key);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  std::shared_ptr<grpc::ChannelCredentials> channel = grpc::SslCredentials(ssl);
  if (security.token_file.empty()) return channel;
  auto token = LoadClientToken(security.token_file, security.token_role);
  if (!token.ok()) return token.status();
  // AccessTokenCredentials sends "authorization: Bearer <token>" and only
  // over a secure channel.
  return grpc::CompositeChannelCredentials(channel, grpc::AccessTokenCredentials(*token));
}

}  // namespace internal
}  // namespace psd
