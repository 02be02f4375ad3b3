#include "psd/names.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace psd {
namespace {

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
bool IsNameChar(char c) { return IsAlnum(c) || c == '_' || c == '.' || c == '-' || c == '/'; }
bool IsFirstChar(char c) { return IsAlnum(c) || c == '.'; }

std::string CharForMessage(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string(1, c);
  return absl::StrCat("\\x", absl::Hex(u, absl::kZeroPad2));
}

absl::Status TooLong(absl::string_view what, absl::string_view name) {
  return absl::InvalidArgumentError(absl::StrCat(what, " '", NameForMessage(name), "' is ",
                                                 name.size(), " bytes, over the limit of ",
                                                 kMaxNameBytes, " bytes"));
}

}  // namespace

std::string NameForMessage(absl::string_view name) {
  constexpr size_t kShown = 80;
  if (name.size() <= kShown) return std::string(name);
  return absl::StrCat(name.substr(0, kShown), "...");
}

absl::Status ValidateVariableName(absl::string_view name) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid variable name '", NameForMessage(name), "': ", why));
  };
  if (name.empty()) return invalid("empty");
  if (name.size() > kMaxNameBytes) return TooLong("variable name", name);
  if (!IsFirstChar(name[0])) return invalid("must start with [A-Za-z0-9.]");
  for (char c : name) {
    if (!IsNameChar(c)) {
      return invalid(absl::StrCat("character '", CharForMessage(c), "' is not in [A-Za-z0-9_./-]"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateFullVariableName(absl::string_view name) {
  if (absl::Status s = ValidateVariableName(name); !s.ok()) return s;
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid variable name '", NameForMessage(name), "': a '/' component is empty"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateScopeName(absl::string_view name, bool at_root) {
  if (name.size() > kMaxNameBytes) return TooLong("scope name", name);
  bool ok = !name.empty() || !at_root;
  if (ok && !name.empty() && at_root && !IsFirstChar(name[0])) ok = false;
  for (char c : name) ok = ok && IsNameChar(c);
  if (!ok) {
    // TensorFlow's ValueError text.
    return absl::InvalidArgumentError(
        absl::StrCat("'", NameForMessage(name), "' is not a valid scope name"));
  }
  return absl::OkStatus();
}

absl::Status ValidateScopePath(absl::string_view path) {
  if (path.size() > kMaxNameBytes) return TooLong("scope path", path);
  return absl::OkStatus();
}

absl::Status ValidatePartCount(absl::string_view variable, int64_t parts, int64_t limit) {
  if (parts <= limit) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("variable '", NameForMessage(variable), "' would have ", parts,
                   " parts, over the limit of ", limit, " parts per variable"));
}

}  // namespace psd
