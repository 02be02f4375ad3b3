// EmbeddingTable: one part of an embedding table (EmbeddingSpec in
// proto/psd/types.proto) in a shard's host memory: a hash table from int64
// key to a row of `dim` elements, plus the rows of its optimizer slots
// (columns), each key's lookup/update frequency and version (the global step
// of its last update).
//
// What it guarantees, for the store to build on:
// - Every op is atomic on the part: all of its checks (keys of this part,
//   shapes, dtypes, finite hyper-parameters, memory for every new row) run
//   before anything changes; a failed op changes nothing (counters of
//   filtered keys included).
// - A key's initial row (value and each slot) is a pure function of the
//   column's initializer, its seed and the key: Philox4x32-10 keyed by the
//   seed with counter (key low, key high, attempt, element + 1), so rows are
//   the same on every shard, after restarts and restores, and never collide
//   with a dense variable's draws of the same seed (whose last counter word
//   is 0).
// - Admission (EmbeddingSpec filters) counts every lookup and update of a
//   key not admitted yet; the update is dropped and the lookup answers the
//   default value until the count reaches filter_freq.
// - Eviction and deletion remove a key's row together with its slot rows.
// - Memory: every byte a row, slot row, pending counter or the index holds
//   is reserved from the shard's MemoryAccountant (RESOURCE_EXHAUSTED
//   naming the part) and from the part's own cap when set; with
//   evict_lru_on_memory_limit the least recently used rows are evicted to
//   make room instead (never rows the op itself touches).
// - Pin() takes a consistent cut of the part in O(1) (no per-row work while
//   the caller holds a checkpoint fence); writers that change, evict or
//   delete a row the cut still needs first keep its old contents for the
//   snapshot (charged to memory). Rows made after the cut are not in it.
//
// Storage (embedding_table.cc has the details): an absl::flat_hash_map from
// key to a 32-bit entry id, and rows in slab arenas: chunks of ~1 MiB that
// never move, a free list of removed rows. Chosen over std::unordered_map
// because that allocates a node per key (~40 bytes of overhead and a pointer
// chase per lookup) where flat_hash_map keeps 16-byte slots in one open
// array probed with SIMD, so the index costs ~20 bytes per key and one cache
// miss; and over a concurrent map (e.g. a lock-striped or lock-free table)
// because every op here must be atomic over all of its keys and the
// snapshot's copy-on-write needs a stable view, which a single reader/writer
// lock gives for free while lookups of existing rows still run in parallel
// under the shared lock (their frequency and LRU tick are atomics). Keeping
// rows out of the map lets it rehash without moving them (stable row
// addresses for the optimizer kernels and snapshots) and lets slot rows exist
// only for keys an optimizer touched.
//
// Counting: every occurrence of a key in a lookup (not inference) or update
// counts one use, both toward admission and in the row's frequency.
// EmbeddingUpdateResult counts distinct keys.
//
// LRU eviction is sampled (as Redis does): per row to evict, 64 live rows are
// drawn at random and the one touched longest ago (an op counter, not a
// clock) goes, never one the current op touches. It is not done while a
// snapshot is live (the rows would only move into the snapshot): the op is
// then RESOURCE_EXHAUSTED. An op needing more rows than can be evicted
// evicts nothing and fails.
//
// Thread-safety: every method may be called from any thread at once; the
// table guards its state with one absl::Mutex: writers hold it exclusively;
// lookups that make no row (existing keys, slot columns, inference) share
// it, unless a snapshot is live (a counted lookup then changes what the
// snapshot must keep, so it writes).
#ifndef PSD_SERVER_SHARD_EMBEDDING_TABLE_H_
#define PSD_SERVER_SHARD_EMBEDDING_TABLE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "device/device.h"
#include "psd/shard.pb.h"
#include "psd/types.pb.h"
#include "psd/update_kind.h"
#include "shard/memory_accountant.h"

namespace psd {

class EmbeddingSnapshot;

struct EmbeddingTableOptions {
  std::string name;             // the part's name on the shard, for messages
  DataType dtype;               // DT_FLOAT, DT_DOUBLE, DT_HALF or DT_BFLOAT16
  int64_t dim = 0;              // > 0
  DataType key_dtype;           // DT_INT64 or DT_INT32 (keys arrive widened)
  int part_index = 0;           // this part, in [0, num_parts)
  int num_parts = 1;            // keys with PartOfKey(key, num_parts) != part_index are refused
  InitializerSpec initializer;  // the value column's
  EmbeddingSpec spec;           // filters, eviction, caps (slot_of ignored here)
};

// What an update did, for replies and metrics.
struct EmbeddingUpdateResult {
  int64_t applied = 0;   // keys whose rows changed
  int64_t created = 0;   // rows made by this op
  int64_t filtered = 0;  // keys not admitted: dropped
  int64_t evicted = 0;   // rows evicted to make room (LRU)
  bool move_epoch_changed = false;  // see EmbeddingLookupOptions.expect_move_epoch
};

// A part's cut for a live move (EmbeddingTable::PinForMove).
struct EmbeddingMoveCut {
  std::shared_ptr<EmbeddingSnapshot> rows;
  int64_t ids = 0;  // entry ids the cut's rows lie in: [0, ids)
  std::vector<std::pair<int64_t, int64_t>> pending;  // counter filter: key, count (by key)
  std::string bloom;                                 // the Bloom counters' bytes
};

struct EmbeddingLookupOptions {
  // No row made, no frequency counted (DeepRec's is_inference): a missing
  // admitted-by-policy key answers its initial row without storing it; a
  // key the filter has not admitted answers the default value.
  bool inference = false;
  // Version recorded on rows this lookup makes (0: not given).
  int64_t global_step = 0;
  // >= 0: a counting lookup runs only if the table's move_epoch() still is
  // this (checked under the table's lock); else ABORTED with
  // move_epoch_changed set and nothing done (the part was pinned for a
  // move since the caller last looked: it must log the lookup).
  int64_t expect_move_epoch = -1;
};

class EmbeddingTable {
 public:
  // INVALID_ARGUMENT naming `options.name` and the offending field for a
  // bad dtype, dim, key dtype, part index, initializer (only Zeros, Ones, a
  // scalar Constant, RandomUniform, RandomNormal, TruncatedNormal; the
  // Default initializer is resolved by the coordinator) or policy value.
  static absl::Status Validate(const EmbeddingTableOptions& options);
  static absl::StatusOr<std::unique_ptr<EmbeddingTable>> Create(EmbeddingTableOptions options,
                                                                MemoryAccountant* memory);
  ~EmbeddingTable();  // releases every reservation

  EmbeddingTable(const EmbeddingTable&) = delete;
  EmbeddingTable& operator=(const EmbeddingTable&) = delete;

  const EmbeddingTableOptions& options() const;

  // Slot columns (an optimizer's slot tables sharing this part's keys).
  // AddSlot: ALREADY_EXISTS for a name in use; INVALID_ARGUMENT for an
  // initializer it cannot draw. Existing rows get no slot row until an
  // apply touches them. Column 0 is the table's values; slots are 1, 2, ...
  absl::StatusOr<int> AddSlot(const std::string& slot_name, const InitializerSpec& initializer);
  // The slot's column, or -1.
  int FindSlot(absl::string_view slot_name) const;
  // Drops a slot column and its rows (the slot table was deleted).
  absl::Status RemoveSlot(absl::string_view slot_name);
  std::vector<std::string> slot_names() const;

  // Rows of `keys` from column `column` (0: values; a slot column never
  // makes rows or counts: a missing slot row answers its initial row) into
  // `out`: keys.size() * dim elements of the table's dtype, in keys' order
  // (duplicates allowed). With column 0 and !inference: counts each key,
  // makes rows for keys admitted now (recorded with global_step).
  absl::Status Lookup(absl::Span<const int64_t> keys, int column,
                      const EmbeddingLookupOptions& options, void* out,
                      EmbeddingUpdateResult* result);

  // scatter_update / scatter_add / scatter_sub by key: `rows` holds
  // keys.size() * dim elements of the table's dtype, or one element
  // broadcast when `rows_is_scalar`. Duplicate keys: add/sub accumulate,
  // update keeps the last. Missing admitted keys get their initial row
  // first. Updated rows take version `global_step` when it is > 0.
  absl::Status Scatter(UpdateKind op, absl::Span<const int64_t> keys, const void* rows,
                       bool rows_is_scalar, int64_t global_step, EmbeddingUpdateResult* result);

  // One optimizer step on the rows of `keys` (TensorFlow's SparseApply*
  // semantics: duplicate keys' gradients are summed first, then each row
  // and its slot rows are updated once). `slot_columns` are the optimizer's
  // slots in OptimizerSpec's order (NumOptimizerSlots(params.kind) of
  // them); `grads` holds keys.size() * dim elements of the table's dtype.
  // float16 and bfloat16 compute in float32, as the dense kernels do.
  absl::Status ApplyOptimizer(const OptimizerParams& params, absl::Span<const int> slot_columns,
                              absl::Span<const int64_t> keys, const void* grads,
                              int64_t global_step, EmbeddingUpdateResult* result);

  // Removes the rows (and slot rows, and pending counts) of `keys`; keys
  // without a row are ignored (keys of another part are INVALID_ARGUMENT).
  // Returns how many rows were removed.
  absl::StatusOr<int64_t> DeleteKeys(absl::Span<const int64_t> keys);

  // Runs the spec's eviction policies: rows whose version is more than
  // steps_to_live below `global_step` (when both are > 0), and rows whose
  // value's L2 norm is below l2_weight_threshold (when > 0). Returns the
  // number of rows evicted.
  absl::StatusOr<int64_t> Evict(int64_t global_step);

  // Puts rows in, replacing the rows of keys present; keys are admitted
  // whatever the filter. `values` and each of `slot_values` (one per
  // `slot_columns` entry) hold keys.size() * dim elements; `freqs` and
  // `versions` are empty or keys.size() long. Duplicate keys are
  // INVALID_ARGUMENT. All or nothing. Slot columns not named keep the rows
  // they hold for a replaced key.
  absl::Status Import(absl::Span<const int64_t> keys, const void* values,
                      absl::Span<const int> slot_columns, absl::Span<const void* const> slot_values,
                      absl::Span<const int64_t> freqs, absl::Span<const int64_t> versions);

  // Sets the rows of slot `column` (> 0) for those of `keys` that have a
  // row; other keys are ignored. `values` holds keys.size() * dim elements.
  // For restores, which bring a table's slots apart from its rows. All or
  // nothing.
  absl::Status ImportSlot(int column, absl::Span<const int64_t> keys, const void* values);

  // A consistent cut of the part (see the file comment), for checkpoints
  // and exports. Cheap while the caller holds a fence.
  std::shared_ptr<EmbeddingSnapshot> Pin();
  // Pin() plus, at the same instant, the admission state (pending counts,
  // Bloom counters; copied, O(pending keys)) and a bump of move_epoch().
  // For a live move of the part (store_move.cc).
  EmbeddingMoveCut PinForMove();
  uint64_t move_epoch() const;
  // The part moved to another shard: from now on a lookup that checks the
  // move epoch (expect_move_epoch >= 0) is refused as if the epoch changed.
  void Retire();
  bool retired() const;
  // Off: an op short of memory fails instead of evicting rows (LRU), for a
  // part moving in, whose replayed ops must change it as they did the
  // source's.
  void SetEvictionAllowed(bool allowed);
  // A moved part's admission state: pending counts of keys without a row
  // (keys with one are skipped; counts in [1, filter_freq)), and the Bloom
  // counters' bytes at `offset`. All or nothing.
  absl::Status ImportPending(absl::Span<const int64_t> keys, absl::Span<const int64_t> counts);
  absl::Status ImportBloom(int64_t offset, absl::string_view bytes);

  // Counters and sizes (EmbeddingStats' fields, without spec and slots).
  EmbeddingStats Stats() const;
  // Bytes reserved for this part (rows, slots, index, pending counters,
  // Bloom counters, pre-images held for live snapshots). Per row: the slab
  // row (metadata and value, 16-byte aligned) + 24 bytes of index; per slot
  // row: its elements + 4; per pending key: 24.
  int64_t bytes() const;
  int64_t rows() const;

 private:
  class Impl;
  explicit EmbeddingTable(std::shared_ptr<Impl> impl);
  // Shared with the snapshots pinned from it, which keep the rows (and
  // their reservations) alive until the last of them is destroyed.
  std::shared_ptr<Impl> impl_;
};

// The rows of a part as they were at Pin(), read in batches while the table
// keeps changing. Keeps the part's memory for the old contents it holds
// until destroyed (and the table's own rows, if the table is destroyed
// first). A slot column removed after the pin fails Next with
// INVALID_ARGUMENT. Thread-compatible (one reader).
class EmbeddingSnapshot {
 public:
  virtual ~EmbeddingSnapshot() = default;
  // Rows in the cut.
  virtual int64_t rows() const = 0;
  // The next up to `max_rows` rows of the cut (none left: an empty batch),
  // in no particular order but each once: keys, then for each row `dim`
  // elements of each requested column (0: values, then slots) into
  // `columns[i]` (resized), its frequency and version. A slot row the key
  // lacks is the slot's initial row.
  struct Batch {
    std::vector<int64_t> keys;
    std::vector<std::string> columns;  // raw element bytes, one per requested column
    std::vector<int64_t> freqs;
    std::vector<int64_t> versions;
  };
  virtual absl::Status Next(int64_t max_rows, absl::Span<const int> columns, Batch* batch) = 0;
  // Entry ids the cut's rows lie in: [0, ids()).
  virtual int64_t ids() const { return 0; }
  // The cut's rows whose entry ids are in [begin, end), as Next gives them
  // (independent of Next's cursor; may be called from several threads).
  virtual absl::Status ReadIds(int64_t begin, int64_t end, absl::Span<const int> columns,
                               Batch* batch) const {
    return absl::UnimplementedError("ReadIds");
  }
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_EMBEDDING_TABLE_H_
