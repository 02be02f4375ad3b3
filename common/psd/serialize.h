// Checked protobuf serialization for state that is written to disk (the
// coordinator's registry snapshot and log, a checkpoint's .psd-meta):
// protobuf cannot serialize a message of 2 GiB or more, and
// SerializeAsString() then quietly returns an empty or partial string. A
// caller that published that would lose the state; this returns an error
// instead, so the write fails loudly and the old state stays.
//
// Thread-safety: pure functions; thread-safe for a message no one mutates.
#ifndef PSD_COMMON_SERIALIZE_H_
#define PSD_COMMON_SERIALIZE_H_

#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"

namespace psd {

// The largest message protobuf serializes (2 GiB - 1 bytes).
inline constexpr int64_t kMaxSerializedBytes = std::numeric_limits<int32_t>::max();

// `message`'s bytes; RESOURCE_EXHAUSTED naming `what`, the size and the
// limit when it is larger than `max_bytes` (at most kMaxSerializedBytes),
// INTERNAL when protobuf fails to serialize it (a required field unset).
absl::StatusOr<std::string> SerializeChecked(const google::protobuf::MessageLite& message,
                                             absl::string_view what,
                                             int64_t max_bytes = kMaxSerializedBytes);

}  // namespace psd

#endif  // PSD_COMMON_SERIALIZE_H_
