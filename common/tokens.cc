#include "psd/tokens.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace psd {

namespace {

// The non-blank fields of a line without its comment.
std::vector<absl::string_view> Fields(absl::string_view line) {
  const size_t hash = line.find('#');
  if (hash != absl::string_view::npos) line = line.substr(0, hash);
  return absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
}

}  // namespace

Role ParseRoleName(absl::string_view name) {
  if (name == "trainer") return ROLE_TRAINER;
  if (name == "admin") return ROLE_ADMIN;
  if (name == "node") return ROLE_NODE;
  return ROLE_UNSPECIFIED;
}

std::string RoleName(Role role) {
  switch (role) {
    case ROLE_TRAINER:
      return "trainer";
    case ROLE_ADMIN:
      return "admin";
    case ROLE_NODE:
      return "node";
    default:
      return "unspecified";
  }
}

absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view text,
                                                       const std::string& source) {
  std::vector<TokenEntry> entries;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    std::vector<absl::string_view> fields = Fields(line);
    if (fields.empty()) continue;
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", line_number, ": expected \"<role> <token>\" (", fields.size(), " fields)"));
    }
    const Role role = ParseRoleName(fields[0]);
    if (role == ROLE_UNSPECIFIED) {
      // The first field may be a token someone forgot the role of: not echoed.
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", line_number, ": unknown role (expected trainer, admin or node)"));
    }
    entries.push_back({role, std::string(fields[1])});
  }
  if (entries.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no tokens"));
  return entries;
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<std::vector<TokenEntry>> LoadTokenFile(const std::string& path) {
  auto text = ReadSecretFile(path);
  if (!text.ok()) return text.status();
  return ParseTokenFile(*text, path);
}

absl::StatusOr<std::string> ParseClientToken(absl::string_view text, const std::string& source,
                                             const std::string& role) {
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    std::vector<absl::string_view> fields = Fields(line);
    if (fields.empty()) continue;
    if (fields.size() == 1 && role.empty()) return std::string(fields[0]);
    if (fields.size() == 1) continue;  // a bare token has no role to match
    if (fields.size() != 2 || ParseRoleName(fields[0]) == ROLE_UNSPECIFIED) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_number, ": expected a token or \"<role> <token>\""));
    }
    if (role.empty() || fields[0] == role) return std::string(fields[1]);
  }
  if (!role.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no ", role, " token"));
  }
  return absl::InvalidArgumentError(absl::StrCat(source, ": no token"));
}

absl::StatusOr<std::string> LoadClientToken(const std::string& path, const std::string& role) {
  auto text = ReadSecretFile(path);
  if (!text.ok()) return text.status();
  return ParseClientToken(*text, path, role);
}

}  // namespace psd
