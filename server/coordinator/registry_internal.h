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

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/registry.h"
#include "psd/status.h"

namespace psd {

// The bytes placement counts for `part` of `def`.
int64_t PartBytes(const VariableDef& def, const VariablePart& part);

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

// TensorFlow's words for what declarations of dense variables and embedding
// tables share.
namespace registry_messages {

inline std::string OrUnknown(const std::string& where) {
  return where.empty() ? std::string("<unknown>") : where;
}

// A create (reuse=False) of a name the session already declared at `where`.
inline absl::Status AlreadyInSession(const VariableDef& existing, const std::string& name,
                                     const std::string& where) {
  if (existing.partitioned()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "Partitioned variable with name ", name,
        " already exists. Did you mean to set reuse=True in VarScope? Originally defined "
        "at:\n\n",
        OrUnknown(where)));
  }
  return absl::AlreadyExistsError(absl::StrCat(
      "Variable ", name,
      " already exists, disallowed. Did you mean to set reuse=True in VarScope? Originally "
      "defined at:\n\n",
      OrUnknown(where)));
}

// A reuse (reuse=True) of a name another session declared, not this one.
inline absl::Status NotInSession(const VariableDef& existing, const std::string& name) {
  return absl::NotFoundError(absl::StrCat(
      existing.partitioned() ? "PartitionedVariable " : "Variable ", name,
      " does not exist, or was not created with tf.get_variable(). Did you mean to set "
      "reuse=None in VarScope? (Another session, ",
      existing.declared_by_session(), ", declared it; declare it in this session first.)"));
}

// A declaration of an existing variable that names another replication
// factor than the variable's (0 names none): like any spec mismatch.
inline absl::Status ReplicationConflict(const VariableDeclaration& decl,
                                        const VariableDef& existing, uint64_t session,
                                        bool in_session) {
  if (decl.replication() == 0 || decl.replication() == ReplicationOf(existing)) {
    return absl::OkStatus();
  }
  if (in_session) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Trying to reuse variable ", decl.name(), ", but specified replication ",
        decl.replication(), " and found replication ", ReplicationOf(existing), "."));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "Conflicting declarations of variable ", decl.name(), ": session ", session,
      " declares replication ", decl.replication(), " at ", OrUnknown(decl.declared_at()),
      ", but session ", existing.declared_by_session(), " declared it with replication ",
      ReplicationOf(existing), " at ", OrUnknown(existing.declared_at())));
}

}  // namespace registry_messages

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
