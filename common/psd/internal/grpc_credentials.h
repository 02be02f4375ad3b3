// Builds gRPC channel credentials from a ChannelSecurity: the one place
// every psd client channel (library, psctl, shard -> coordinator,
// coordinator -> shard) gets its TLS and bearer token. Internal: keeps
// gRPC out of the public headers.
#ifndef PSD_COMMON_INTERNAL_GRPC_CREDENTIALS_H_
#define PSD_COMMON_INTERNAL_GRPC_CREDENTIALS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "psd/channel_security.h"

namespace psd {
namespace internal {

// Insecure credentials when `security` is empty; SSL credentials (with the
// client certificate for mutual TLS) plus an "authorization: Bearer" call
// credential otherwise. A token without TLS is refused: it would travel in
// clear text.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ChannelSecurity& security);

}  // namespace internal
}  // namespace psd

#endif  // PSD_COMMON_INTERNAL_GRPC_CREDENTIALS_H_
