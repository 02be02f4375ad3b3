// Builds gRPC channel credentials from a ChannelSecurity: the one place
// every psd client channel (library, psctl, shard -> coordinator,
// coordinator -> shard) gets its TLS and bearer token. Internal: keeps
// gRPC out of the public headers.
#ifndef PSD_COMMON_INTERNAL_GRPC_CREDENTIALS_H_
#define PSD_COMMON_INTERNAL_GRPC_CREDENTIALS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "psd/channel_security.h"

namespace psd {
namespace internal {

// Insecure credentials when `security` is empty; SSL credentials (with the
// client certificate for mutual TLS) plus an "authorization: Bearer" call
// credential otherwise. A token without TLS is refused: it would travel in
// clear text.
// The files named must be PEM: a CA or certificate file without a
// certificate, or a key file without a private key, is INVALID_ARGUMENT
// naming the flag and the file (gRPC would only fail every call, later,
// with an unrelated message).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ChannelSecurity& security);

// A client's dial target, checked before a channel is made: HOST:PORT with
// a port in [1, 65535] (an IPv6 host in brackets), or a gRPC URI with a
// scheme (dns:, ipv4:, ipv6:, unix:, unix-abstract:, or SCHEME://...).
// INVALID_ARGUMENT "`what` '...': ..." otherwise (gRPC would take an empty
// target or a port over 65535 without complaint, and dial something else
// or fail every call with an unrelated message).
absl::Status CheckDialTarget(const std::string& target, const std::string& what);

}  // namespace internal
}  // namespace psd

#endif  // PSD_COMMON_INTERNAL_GRPC_CREDENTIALS_H_
