// Names of variables, parts and scopes: the one check the coordinator runs
// before it registers a declaration and the shard runs before it creates a
// variable, so the coordinator never registers a name a shard refuses.
//
// The character rule is TensorFlow's op-name rule,
// [A-Za-z0-9.][A-Za-z0-9_.\-/]* (a nested scope name may also start with
// one of _-/). Every name a shard holds (an unpartitioned variable's name,
// a part's "v/part_K") and every scope path is at most kMaxNameBytes bytes.
//
// Thread-safety: pure functions; thread-safe.
#ifndef PSD_COMMON_NAMES_H_
#define PSD_COMMON_NAMES_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace psd {

// The longest variable, part or scope name, in bytes.
inline constexpr size_t kMaxNameBytes = 1024;
// The most parts one variable may be cut into (each is a variable on a
// shard, an RPC at creation and an entry of every handle).
inline constexpr int64_t kMaxPartsPerVariable = 1024;
// The largest variable one may declare, as the coordinator estimates it
// (elements times the dtype's size, 16 bytes a string element; a table's
// nominal size): 1 PiB, past any cluster, so that sizes summed over the
// variables of a cluster never overflow.
inline constexpr int64_t kMaxVariableBytes = int64_t{1} << 50;
// The widest embedding table row (elements).
inline constexpr int64_t kMaxEmbeddingDim = int64_t{1} << 20;

// INVALID_ARGUMENT ("invalid variable name '...': why") unless `name` is a
// name a shard may hold: 1 to kMaxNameBytes bytes of TensorFlow's op-name
// characters.
absl::Status ValidateVariableName(absl::string_view name);

// ValidateVariableName, and no empty component ("a//b", "a/"): a variable's
// full name as the coordinator registers it.
absl::Status ValidateFullVariableName(absl::string_view name);

// A variable_scope name under `at_root` (the root) or nested: TensorFlow's
// "'NAME' is not a valid scope name" unless every character is one of
// [A-Za-z0-9_.\-/] and, at the root, it is non-empty and starts with
// [A-Za-z0-9.]; at most kMaxNameBytes bytes.
absl::Status ValidateScopeName(absl::string_view name, bool at_root);

// A scope's full path (what its variables' names start with): at most
// kMaxNameBytes bytes.
absl::Status ValidateScopePath(absl::string_view path);

// INVALID_ARGUMENT naming `variable` and the limit when `parts` exceeds
// `limit` (kMaxPartsPerVariable unless a caller configures another).
absl::Status ValidatePartCount(absl::string_view variable, int64_t parts,
                               int64_t limit = kMaxPartsPerVariable);

// `name` for an error message: itself, or its first bytes and its length
// when it is long (a hostile name must not make a message megabytes long).
std::string NameForMessage(absl::string_view name);

}  // namespace psd

#endif  // PSD_COMMON_NAMES_H_
