// The one conversion between UpdateKind (psd/update_kind.h) and the wire's
// UpdateOp (psd/shard.proto): the client converts on the way out, the shard
// on the way in.
//
// Thread-safety: pure functions; thread-safe.
#ifndef PSD_COMMON_UPDATE_KIND_WIRE_H_
#define PSD_COMMON_UPDATE_KIND_WIRE_H_

#include <string>

#include "absl/status/statusor.h"
#include "psd/shard.pb.h"
#include "psd/update_kind.h"

namespace psd {

// The wire's UpdateOp of `kind`.
UpdateOp UpdateKindToWire(UpdateKind kind);

// The UpdateKind of a wire UpdateOp (an int, as a received message holds
// it); INVALID_ARGUMENT naming `variable` for an unknown one.
absl::StatusOr<UpdateKind> UpdateKindFromWire(int op, const std::string& variable);

}  // namespace psd

#endif  // PSD_COMMON_UPDATE_KIND_WIRE_H_
