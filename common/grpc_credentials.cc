#include "psd/internal/grpc_credentials.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/tokens.h"

namespace psd {
namespace internal {
namespace {

// INVALID_ARGUMENT unless `contents` (of `path`, given by `flag`) holds a
// PEM block whose label ends with `label_end` ("CERTIFICATE", "PRIVATE KEY").
absl::Status CheckPem(const std::string& contents, const std::string& path, const char* flag,
                      const char* label_end) {
  const std::string marker = absl::StrCat(label_end, "-----");
  size_t at = 0;
  while ((at = contents.find("-----BEGIN ", at)) != std::string::npos) {
    const size_t end = contents.find('\n', at);
    const std::string line = contents.substr(at, end == std::string::npos ? end : end - at);
    if (absl::StrContains(line, marker)) return absl::OkStatus();
    at += 11;
  }
  return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": not a PEM file with a ",
                                                 label_end, " (no '-----BEGIN ...", marker,
                                                 "' line)"));
}

}  // namespace

absl::Status CheckDialTarget(const std::string& target, const std::string& what) {
  if (target.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " address is empty; want HOST:PORT"));
  }
  for (const char* scheme : {"dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:"}) {
    if (absl::StartsWith(target, scheme)) return absl::OkStatus();
  }
  if (absl::StrContains(target, "://")) return absl::OkStatus();
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " address '", target, "' is not HOST:PORT"));
  }
  int port = 0;
  if (!absl::SimpleAtoi(target.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " address '", target, "': the port must be a number in [1, 65535]"));
  }
  const std::string host = target.substr(0, colon);
  if (host.find(':') != std::string::npos && (host.front() != '[' || host.back() != ']')) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " address '", target, "': an IPv6 host goes in brackets, [::1]:PORT"));
  }
  return absl::OkStatus();
}

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
  PSD_RETURN_IF_ERROR(CheckPem(*ca, security.tls_ca, "--tls-ca", "CERTIFICATE"));
  ssl.pem_root_certs = *std::move(ca);
  if (security.tls_cert.empty() != security.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!security.tls_cert.empty()) {
    auto cert = ReadSecretFile(security.tls_cert);
    if (!cert.ok()) return cert.status();
    PSD_RETURN_IF_ERROR(CheckPem(*cert, security.tls_cert, "--tls-cert", "CERTIFICATE"));
    auto key = ReadSecretFile(security.tls_key);
    if (!key.ok()) return key.status();
    PSD_RETURN_IF_ERROR(CheckPem(*key, security.tls_key, "--tls-key", "PRIVATE KEY"));
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
