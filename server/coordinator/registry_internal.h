// Registry's private member templates, for the files that implement Registry:
// registry.cc (opening, the log and its group commit, compaction, applying
// records, lookups and deletion), registry_declare.cc (declaring variables)
// and registry_session.cc (sessions, scopes, unique names). Include it from
// those files only.
#ifndef PSD_SERVER_COORDINATOR_REGISTRY_INTERNAL_H_
#define PSD_SERVER_COORDINATOR_REGISTRY_INTERNAL_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/registry.h"
#include "psd/status.h"

namespace psd {

// The effect of a declaration batch before it is committed: later
// declarations of the batch see earlier ones through it.
struct Registry::Txn {
  std::vector<VariableDef> created;
  std::map<std::string, size_t> created_index;  // name -> index in `created`
  std::set<std::string> new_part_names;
  std::map<std::string, std::string> attached;  // name -> declared_at
  std::vector<std::string> attached_order;
  ShardLoad load;
  // Free memory of the live shards with a memory limit (NoteShardFreeBytes).
  std::map<int32_t, int64_t> free_bytes;
  uint64_t next_creation_seq = 0;
};

template <typename T>
T Registry::Acknowledged(T answer, uint64_t wait_for) const {
  PSD_RETURN_IF_ERROR(WaitDurable(wait_for));
  return answer;
}

template <typename T>
T Registry::Committed(T answer, uint64_t wait_for) {
  std::optional<RegistrySnapshot> due;
  {
    absl::MutexLock lock(&mu_);
    due.swap(compaction_due_);
  }
  // A failed compaction does not fail the mutation: the old log keeps
  // every record.
  if (due.has_value()) RunCompaction(*due).IgnoreError();
  return Acknowledged(std::move(answer), wait_for);
}

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_REGISTRY_INTERNAL_H_
