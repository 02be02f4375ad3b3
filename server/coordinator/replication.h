// Replicated parts (docs/replication.md): the cluster-wide factor's bounds.
//
// Thread-safety: constants only.
#ifndef PSD_SERVER_COORDINATOR_REPLICATION_H_
#define PSD_SERVER_COORDINATOR_REPLICATION_H_

#include <cstdint>

namespace psd {

// Shards holding each part: 1 (no backups) to kMaxReplication.
inline constexpr int32_t kMaxReplication = 3;

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_REPLICATION_H_
