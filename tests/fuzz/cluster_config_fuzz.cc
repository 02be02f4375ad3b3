// Fuzzes the cluster file loader (server/runtime/cluster_config.h): any
// YAML text (and each line of it as a byte size, duration, address and
// device) is a status, never a crash, an exception or UB.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_split.h"
#include "runtime/cluster_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = psd::ParseClusterConfig(text, "fuzz.yaml");
  if (config.ok()) {
    for (const auto& shard : config->shards) (void)config->FindShard(shard.id);
  }
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (++lines > 16) break;
    const std::string s(line);
    (void)psd::ParseByteSize(s);
    (void)psd::ParseDuration(s);
    (void)psd::CheckAddress(s);
    (void)psd::CheckDevice(s);
  }
  return 0;
}
