#include "psd/serialize.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace psd {

absl::StatusOr<std::string> SerializeChecked(const google::protobuf::MessageLite& message,
                                             absl::string_view what, int64_t max_bytes) {
  const int64_t limit = std::clamp<int64_t>(max_bytes, 0, kMaxSerializedBytes);
  const size_t size = message.ByteSizeLong();
  if (size > static_cast<size_t>(limit)) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " would be ", size,
                                                     " bytes serialized, over the limit of ", limit,
                                                     " bytes; nothing was written"));
  }
  std::string out;
  if (!message.SerializeToString(&out) || out.size() != size) {
    return absl::InternalError(
        absl::StrCat(what, ": protobuf could not serialize it (", size, " bytes)"));
  }
  return out;
}

}  // namespace psd
