// Edge guards: where psd's code is entered from a thread psd does not own
// (a gRPC handler or reactor callback, an Asio handler, a detached worker),
// nothing may escape. Validation turns bad input into a status long before
// this; RunAtEdge is the backstop that keeps one missed case from ending the
// call without a status (a reactor that never finishes holds its in-flight
// count, and the process then cannot drain) or from aborting the process.
//
// Thread-safety: stateless.
#ifndef PSD_COMMON_EDGE_H_
#define PSD_COMMON_EDGE_H_

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace psd {

// Runs `fn` and returns its status, or the status of the exception it threw:
// RESOURCE_EXHAUSTED for a failed allocation (std::bad_alloc, or
// std::length_error from a container asked for more than it can hold),
// INTERNAL naming the exception otherwise. `who` starts the message
// ("shard 3", "coordinator").
absl::Status RunAtEdge(absl::string_view who, absl::FunctionRef<absl::Status()> fn) noexcept;

}  // namespace psd

#endif  // PSD_COMMON_EDGE_H_
