// Fuzzes what trainers send the coordinator's registry: declaration batches
// (every field of VariableDeclaration: shapes, dtypes, partitioners,
// initializers, tables, colocated slots, reuse), scopes, unique names and
// deletions, in any order, over a few sessions. The input is a
// RegistryCalls (fuzz_inputs.proto). Every call returns a status, and the
// registry stays consistent: every variable it lists has between 1 and
// kMaxPartsPerVariable parts, each placed on a live shard, and the bytes it
// counts per shard are never negative.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "coordinator/registry.h"
#include "fuzz_check.h"
#include "fuzz_inputs.pb.h"
#include "psd/names.h"

namespace {

constexpr int kMaxCalls = 64;
constexpr int kMaxSessions = 4;

void Check(bool ok, const char* what) { psd::fuzz::Check(ok, "registry_declare_fuzz", what); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::RegistryCalls input;
  if (!input.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::vector<int32_t> live;
  for (int32_t id : input.live_shards()) {
    if (id >= 0 && id < 64 && live.size() < 16) live.push_back(id);
  }
  if (live.empty()) live = {0, 1};

  psd::RegistryOptions options;  // in memory
  auto opened = psd::Registry::Open(options);
  Check(opened.ok(), "an in-memory registry does not open");
  psd::Registry& registry = **opened;
  std::vector<uint64_t> sessions;
  auto session = [&](uint32_t k) -> uint64_t {
    if (sessions.empty() || (k % 8 == 7 && sessions.size() < kMaxSessions)) {
      auto s = registry.OpenSession("fuzz");
      Check(s.ok(), "a session does not open");
      sessions.push_back(*s);
    }
    return sessions[k % sessions.size()];
  };
  std::vector<uint64_t> tokens;

  int n = 0;
  for (const psd::fuzz::RegistryCall& call : input.calls()) {
    if (++n > kMaxCalls) break;
    const uint64_t s = session(static_cast<uint32_t>(call.request_seq()));
    switch (call.call_case()) {
      case psd::fuzz::RegistryCall::kDeclare: {
        const auto& decls = call.declare().declarations();
        if (decls.size() > 16) break;
        auto declared = registry.Declare(
            s, std::vector<psd::VariableDeclaration>(decls.begin(), decls.end()), live,
            call.request_seq());
        // REGISTRY_FUZZ_VERBOSE=1: what each batch got (to check seeds).
        if (std::getenv("REGISTRY_FUZZ_VERBOSE") != nullptr) {
          __builtin_printf("declare: %s\n", declared.status().ToString().c_str());
        }
        break;
      }
      case psd::fuzz::RegistryCall::kScope: {
        const auto& scope = call.scope();
        if (scope.close()) {
          const uint64_t token =
              tokens.empty() || scope.token() == 0 ? scope.token() : tokens[scope.token() % tokens.size()];
          (void)registry.CloseScope(s, scope.parent_path(), token, call.request_seq());
        } else {
          auto entry = registry.OpenScope(s, scope.parent_path(), scope.name(), scope.default_name(),
                                          scope.reuse(), scope.captured(), call.request_seq());
          if (entry.ok() && entry->token != 0) tokens.push_back(entry->token);
        }
        break;
      }
      case psd::fuzz::RegistryCall::kUniqueName:
        (void)registry.UniqueName(s, call.unique_name(), true, call.request_seq());
        break;
      case psd::fuzz::RegistryCall::kDeleteVariable:
        (void)registry.DeleteWithSlots(call.delete_variable());
        break;
      case psd::fuzz::RegistryCall::kNewSession:
        if (sessions.size() < kMaxSessions) (void)session(7);
        break;
      case psd::fuzz::RegistryCall::CALL_NOT_SET:
        break;
    }
  }

  // What the registry holds is what its rules allow.
  for (const psd::VariableDef& def : registry.List("")) {
    Check(def.parts_size() >= 1 && def.parts_size() <= psd::kMaxPartsPerVariable,
          "a variable with no parts or too many");
    for (const psd::VariablePart& part : def.parts()) {
      bool on_live = false;
      for (int32_t id : live) on_live |= part.shard_id() == id;
      Check(on_live, "a part placed on a shard that is not live");
      Check(registry.VariableOfPart(part.name()).ok(), "a listed part without its variable");
    }
  }
  for (const auto& [shard, placed] : registry.Placement()) {
    Check(placed.parts >= 0 && placed.bytes >= 0, "negative placement counts");
  }
  return 0;
}
