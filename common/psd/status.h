// Status helpers shared by the server and the client. psd uses absl::Status
// everywhere inside C++; its codes are gRPC's codes, so converting at the RPC
// edge is one-to-one (see ToGrpcStatus / FromGrpcStatus in grpc_status.h).
#ifndef PSD_COMMON_STATUS_H_
#define PSD_COMMON_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function if `expr` is not OK.
#define PSD_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status psd_status_ = (expr);           \
    if (!psd_status_.ok()) return psd_status_;     \
  } while (0)

#define PSD_STATUS_CONCAT_INNER_(a, b) a##b
#define PSD_STATUS_CONCAT_(a, b) PSD_STATUS_CONCAT_INNER_(a, b)

// `PSD_ASSIGN_OR_RETURN(auto x, F());` assigns the value of an
// absl::StatusOr or returns its error.
#define PSD_ASSIGN_OR_RETURN(lhs, expr)                                  \
  PSD_ASSIGN_OR_RETURN_IMPL_(PSD_STATUS_CONCAT_(psd_statusor_, __LINE__), \
                             lhs, expr)
#define PSD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#endif  // PSD_COMMON_STATUS_H_
