// Registry's private member templates, for the files that implement Registry:
// registry.cc (opening, the log and its group commit, compaction, applying
// records, lookups and deletion), registry_declare.cc (declaring variables)
// and registry_session.cc (sessions, scopes, unique names). Include it from
// those files only.
#ifndef PSD_SERVER_COORDINATOR_REGISTRY_INTERNAL_H_
#define PSD_SERVER_COORDINATOR_REGISTRY_INTERNAL_H_

#include <optional>
#include <utility>

#include "coordinator/registry.h"
#include "psd/status.h"

namespace psd {

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
