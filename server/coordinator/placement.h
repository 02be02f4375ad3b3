// Placement: which shard holds each part of a new variable. Greedy byte
// balancing: every part goes to the live shard with the fewest bytes placed
// so far (ties to the lowest shard id), counting the parts placed before it,
// so the parts of one big embedding spread over all shards instead of
// landing on one.
//
// Pure functions; thread-safe.
#ifndef PSD_SERVER_COORDINATOR_PLACEMENT_H_
#define PSD_SERVER_COORDINATOR_PLACEMENT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "psd/types.pb.h"

namespace psd {

// Bytes placed per live shard id. Only the shards in the map are candidates.
using ShardLoad = std::map<int32_t, int64_t>;

// Returns the shard of each part (same order as `part_bytes`) and adds the
// parts' bytes to `load`. UNAVAILABLE if `load` is empty (no live shard).
absl::StatusOr<std::vector<int32_t>> PlaceParts(absl::Span<const int64_t> part_bytes,
                                                ShardLoad* load);

// Where a replicated part's `backups` backups go (docs/replication.md,
// "Replica sets"): shards of `load` other than `primary`, never two on one
// shard; while a shard remains on a host holding no replica of the part
// yet, one of those (a shard's host from `hosts`; absent or empty: a host
// of its own); least loaded first, the lowest id on a tie. Adds
// `part_bytes` to each chosen shard's load. UNAVAILABLE naming the counts
// when `load` has fewer than `backups` shards besides the primary.
absl::StatusOr<std::vector<int32_t>> PlaceBackups(int32_t primary, int64_t part_bytes,
                                                  int backups,
                                                  const std::map<int32_t, std::string>& hosts,
                                                  ShardLoad* load);

// The bytes a part of `num_elements` elements is expected to take; strings
// are estimated at `bytes_per_string_element` (TensorFlow's partitioners'
// default, 16). Saturates at the largest int64 (past kMaxVariableBytes).
int64_t EstimatedBytes(DataType dtype, int64_t num_elements, int64_t bytes_per_string_element = 16);

// PlaceParts weighted by room: each part goes to the shard whose load,
// with the part, is the smallest share of its free memory
// ((load + bytes) / free), the lowest id on a tie. `free_bytes` holds the
// free memory (limit minus used, >= 0) of shards with a memory limit; a
// shard without one counts as having as much room as the roomiest limited
// shard (all equal when none has a limit: then this is PlaceParts). So a
// shard with half the room gets about half the parts. For embedding
// tables, whose parts grow after placement: a shard already short of
// memory should not be handed a table that will fill it.
absl::StatusOr<std::vector<int32_t>> PlacePartsByRoom(absl::Span<const int64_t> part_bytes,
                                                      const std::map<int32_t, int64_t>& free_bytes,
                                                      ShardLoad* load);

// An embedding table's part has no fixed size: it grows with the keys its
// trainers use. Placement counts each part as this many rows of
// (8-byte key + embedding_dim values): 64Ki rows, 17 MB for a float32
// table of dim 64. Equal for every part of a table, so N parts go to the N
// least loaded shards (one each when there are N), and large enough that a
// table weighs like a mid-size dense variable rather than like its
// [embedding_dim] shape (a few bytes), which would pile every table onto
// one shard; placement only has to spread load, not predict it.
inline constexpr int64_t kNominalTableRowsPerPart = int64_t{1} << 16;
int64_t NominalTablePartBytes(DataType dtype, int64_t embedding_dim);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_PLACEMENT_H_
