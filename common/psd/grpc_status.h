// One-to-one conversion between absl::Status and grpc::Status at the RPC
// edge (their codes are the same numbers).
#ifndef PSD_COMMON_GRPC_STATUS_H_
#define PSD_COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace psd {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace psd

#endif  // PSD_COMMON_GRPC_STATUS_H_
