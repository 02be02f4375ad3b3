// TensorFlow's OrderedCode subset used by checkpoint slice keys: encodings of
// strings and integers whose bytewise order is the order of the values.
// Rules and test vectors: specs/tf-checkpoint-format.md §1.6. Stateless;
// thread-safe.
#ifndef PSD_COMMON_CHECKPOINT_ORDERED_CODE_H_
#define PSD_COMMON_CHECKPOINT_ORDERED_CODE_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace psd::checkpoint::ordered_code {

// 0x00 -> 00 ff, 0xff -> ff 00, other bytes as they are; then 00 01.
void WriteString(std::string* dest, absl::string_view s);
// One length byte (0-8), then the value big-endian without leading zeros.
void WriteNumIncreasing(std::string* dest, uint64_t v);
// 1-10 bytes: a unary length header in the leading bits, then the two's
// complement value big-endian.
void WriteSignedNumIncreasing(std::string* dest, int64_t v);

// Each consumes its encoding from the front of `*src`; false (and `*src`
// unchanged) if it is malformed or cut off.
bool ReadString(absl::string_view* src, std::string* result);
bool ReadNumIncreasing(absl::string_view* src, uint64_t* result);
bool ReadSignedNumIncreasing(absl::string_view* src, int64_t* result);

}  // namespace psd::checkpoint::ordered_code

#endif  // PSD_COMMON_CHECKPOINT_ORDERED_CODE_H_
