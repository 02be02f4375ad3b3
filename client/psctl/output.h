// Output helpers shared by psctl commands: JSON string/number encoding and
// human-readable element formatting. Stateless; thread-safe.
#ifndef PSD_CLIENT_PSCTL_OUTPUT_H_
#define PSD_CLIENT_PSCTL_OUTPUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "psd/coordinator.pb.h"
#include "psd/shard.pb.h"
#include "psd/tensor.h"

namespace psctl {

// A JSON string literal with quotes. Bytes that are not printable ASCII are
// written as \u00XX (so binary strings survive, read as Latin-1).
std::string JsonString(absl::string_view s);
// A JSON number; NaN and infinities become the strings "NaN", "Infinity",
// "-Infinity" (JSON has no such numbers).
std::string JsonNumber(double v);

// The first `max_elements` elements of `t` (all if negative), each as a
// string: shortest round-tripping decimals for floating types, true/false for
// bool, C-escaped quoted text (cut at `max_string_bytes` if non-negative)
// for strings, or JSON values when `json`.
std::vector<std::string> FormatElements(const psd::Tensor& t, int64_t max_elements, bool json,
                                        int64_t max_string_bytes);

// Left-aligned columns separated by two spaces.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);

// A variable's kind for `vars list` / `vars show`: "dense", or for an
// embedding table "table (dim 16, key int64)", or for a slot table
// "slot of v (dim 16, key int64)".
std::string VariableKindText(const psd::VariableHandle& h);
// The same as JSON members, each with a leading comma, to append to an
// object: ,"kind":"dense" or ,"kind":"table","embedding_dim":16,
// "key_dtype":"int64","slot_of":"" (slot_of: the primary, or "").
std::string VariableKindJson(const psd::VariableHandle& h);
// The partitioning column of `vars list`: "-" for one part, "N parts" for
// a dense variable cut along an axis, "N parts by key hash" for a table.
std::string PartitioningColumn(const psd::VariableHandle& h);

// The per-part columns `vars show` adds for an embedding table's parts,
// under EmbeddingStatsHeader(): rows, memory (the bytes the shard
// accounts: a slot's rows count with its table's part), admitted, filtered
// lookups/updates, evicted; "-" each when the shard did not report them
// (null, or no VariableInfo.embedding).
std::vector<std::string> EmbeddingStatsHeader();
std::vector<std::string> EmbeddingStatsColumns(const psd::VariableInfo* info);
// The part's counts as a JSON object: every EmbeddingStats count and the
// bytes.
std::string EmbeddingStatsJson(const psd::VariableInfo& info);

// "512 B", "1.5 MiB", "2.0 GiB".
std::string FormatBytes(int64_t n);

// One progress-bar line for a terminal, at most `width` columns:
//   saving [#########.........]  45%  1.2 GiB / 2.6 GiB  310.4 MiB/s  ETA 4 s
// Rate and ETA are left out until some bytes are done; with `total` unknown
// (0) only the bytes done, rate and elapsed time are shown.
std::string FormatProgress(absl::string_view verb, int64_t done, int64_t total, double seconds,
                           int width);

// The progress of a move, a drain or a rebalance (MoveProgress) on a
// terminal: one bar line, at most `width` columns, of the running move's
// snapshot bytes, after its part, shards, place in the plan, phase and
// forwarded writes:
//   moving w/part_3 0->1 (2/5) copying, 12 writes [####....]  40%  1.6 MiB / 4.0 MiB ...
std::string FormatMoveProgress(const psd::MoveProgressResponse& p, int width);
// The same as a plain line (no bar, for a pipe or a file):
//   moving w/part_3 from shard 0 to shard 1 (move 2 of 5): copying, 1.6 MiB of 4.0 MiB,
//   12 writes forwarded
std::string MoveProgressLine(const psd::MoveProgressResponse& p);

}  // namespace psctl

#endif  // PSD_CLIENT_PSCTL_OUTPUT_H_
