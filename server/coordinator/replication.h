// Replicated parts (docs/replication.md): the cluster-wide factor's bounds
// and the one switch that says whether a cluster may use a factor above 1.
//
// Thread-safety: constants only.
#ifndef PSD_SERVER_COORDINATOR_REPLICATION_H_
#define PSD_SERVER_COORDINATOR_REPLICATION_H_

#include <cstdint>

namespace psd {

// Shards holding each part: 1 (no backups) to kMaxReplication.
inline constexpr int32_t kMaxReplication = 3;

// Whether a coordinator accepts a replication factor above 1. False until
// the whole protocol exists (docs/replication.md "Built so far"): the
// shards' side (follow moves, acknowledgement waits, leases on replicated
// parts, PromoteReplica) is not merged yet, so a backup would never be
// made and a write would not wait for one. While it is false,
// `psd coordinator --replication` above 1 fails at startup and a
// declaration that resolves to more than 1 is refused UNIMPLEMENTED, both
// saying so. Tests of the coordinator's side turn it on through
// RegistryOptions::replication_offered. Remove this switch once both sides
// are merged.
inline constexpr bool kReplicationOffered = false;

// The message of a refused factor above 1 (see kReplicationOffered).
inline constexpr char kReplicationNotOffered[] =
    "replication above 1 is not offered yet: replicated parts are being built "
    "(docs/replication.md), and until every piece exists a cluster refuses them";

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_REPLICATION_H_
