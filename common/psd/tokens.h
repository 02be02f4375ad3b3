// Token files: the bearer tokens a server accepts, each with the role it
// grants. Format, one entry per line:
//
//   # comment
//   trainer 3f9c...e1
//   admin   a71b...07
//   node    55d0...9c
//
// Roles are trainer, admin and node; a token is any run of non-blank
// characters. Errors name the file and line, never the token. Thread-safe:
// plain functions without state.
#ifndef PSD_COMMON_TOKENS_H_
#define PSD_COMMON_TOKENS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "psd/options.pb.h"

namespace psd {

struct TokenEntry {
  Role role = ROLE_UNSPECIFIED;
  std::string token;
};

// "trainer" -> ROLE_TRAINER, ...; ROLE_UNSPECIFIED for anything else.
Role ParseRoleName(absl::string_view name);
// ROLE_TRAINER -> "trainer", ...
std::string RoleName(Role role);

// Parses a token file's text; `source` names it in errors. At least one
// entry is required.
absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view text,
                                                       const std::string& source);
absl::StatusOr<std::vector<TokenEntry>> LoadTokenFile(const std::string& path);

// The token a client sends, from a file with the token alone on a line or
// in the "<role> <token>" format (the first entry of `role`, or the first
// entry when `role` is empty).
absl::StatusOr<std::string> ParseClientToken(absl::string_view text, const std::string& source,
                                             const std::string& role);
absl::StatusOr<std::string> LoadClientToken(const std::string& path, const std::string& role);

// The whole file, or an error naming it.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path);

}  // namespace psd

#endif  // PSD_COMMON_TOKENS_H_
