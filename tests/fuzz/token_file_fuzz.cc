// Fuzzes the token-file parsers (psd/tokens.h): a server's token file and a
// client's token file, with every role name. No crash; an accepted file
// yields tokens that are non-empty and hold no blanks.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "psd/tokens.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto entries = psd::ParseTokenFile(text, "fuzz.tokens");
  if (entries.ok()) {
    for (const auto& e : *entries) {
      if (e.token.empty() || e.token.find_first_of(" \t\r\n") != std::string::npos ||
          e.role == psd::ROLE_UNSPECIFIED) {
        std::fprintf(stderr, "token_file_fuzz: bad entry accepted\n");
        std::abort();
      }
      (void)psd::RoleName(e.role);
    }
  }
  for (const char* role : {"", "trainer", "admin", "node", "bogus"}) {
    auto token = psd::ParseClientToken(text, "fuzz.token", role);
    if (token.ok() && token->empty()) {
      std::fprintf(stderr, "token_file_fuzz: empty client token accepted\n");
      std::abort();
    }
  }
  return 0;
}
