// EmbeddingTable: see embedding_table.h for the contract and the choices.
//
// Layout. `index_` maps a key to an entry id. Entry ids number the rows of
// `entries_`, a slab of fixed-size rows (the entry's metadata, then its
// value row) in chunks of about 1 MiB that never move, so a row's address is
// stable while the entry lives and a removed row's id goes to a free list for
// the next new key. Each slot column has its own slab of rows and a map from
// entry id to its slot row (kNoRow until an apply or import makes it), so a
// table pays for slot rows only on keys an optimizer touched.
//
// Every write follows one shape: plan (each distinct key's fate: existing,
// made now, or filtered; the bytes it needs; nothing changed yet), reserve
// the bytes (or evict LRU rows to make room), then commit. A failed plan or
// reservation leaves the table as it was.
//
// Snapshots. Pin() records the next epoch and the slab's high-water mark.
// Every entry carries the epoch after which it was made (`birth`, 0 for a
// free row) and the newest epoch whose snapshots already hold its pre-image
// (`saved`). Before a writer changes, removes or counts an entry, every live
// snapshot pinned after `saved` gets a copy of the entry as it is (charged to
// memory). A snapshot reads entry ids [0, high-water): an id with a
// pre-image gives the pre-image; else a live entry born by its epoch gives
// its current (unchanged since the pin) contents; else nothing.
#include "shard/embedding_table.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "device/cpu_optimizer_kernels.h"
#include "device/initializers.h"
#include "device/prefetch.h"
#include "psd/dtype.h"
#include "psd/embedding_keys.h"
#include "psd/float16.h"
#include "psd/status.h"

namespace psd {
namespace {

constexpr uint32_t kNoRow = 0xffffffffu;
// Bytes charged per key in the index: flat_hash_map's slot (key and entry id,
// 16 bytes) and control byte at its 7/8 maximum load, rounded up.
constexpr int64_t kIndexBytesPerRow = 24;
// Bytes charged per key a counter filter counts (its map's slot and control
// byte at 7/8 load).
constexpr int64_t kPendingBytesPerKey = 24;
// Bytes charged per slot row beyond its elements: its entry in the column's
// entry-to-row map.
constexpr int64_t kSlotMapBytesPerRow = 4;
// Sampled LRU: candidates drawn per evicted row; the oldest is evicted.
constexpr int kLruSamples = 64;
// Most slot columns a part may have (an optimizer has at most 3).
constexpr int kMaxSlotColumns = 16;

// Fixed-size rows in chunks that never move; removed rows are reused first.
// Not thread-safe: the table's lock guards it.
class Slab {
 public:
  explicit Slab(size_t row_bytes)
      : row_bytes_((row_bytes + 15) & ~size_t{15}),
        rows_per_chunk_(std::max<size_t>(16, (size_t{1} << 20) / row_bytes_)) {}
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;

  uint32_t Allocate() {
    if (!free_.empty()) {
      const uint32_t id = free_.back();
      free_.pop_back();
      return id;
    }
    if (high_water_ == chunks_.size() * rows_per_chunk_) {
      chunks_.emplace_back(
          static_cast<char*>(::operator new (rows_per_chunk_* row_bytes_, std::align_val_t{64})));
    }
    return high_water_++;
  }
  void Free(uint32_t id) { free_.push_back(id); }
  char* Row(uint32_t id) const {
    return chunks_[id / rows_per_chunk_].get() + (id % rows_per_chunk_) * row_bytes_;
  }
  uint32_t high_water() const { return high_water_; }
  size_t row_bytes() const { return row_bytes_; }

 private:
  struct ChunkFree {
    void operator()(char* p) const { ::operator delete (p, std::align_val_t{64}); }
  };
  const size_t row_bytes_;
  const size_t rows_per_chunk_;
  std::vector<std::unique_ptr<char, ChunkFree>> chunks_;
  std::vector<uint32_t> free_;
  uint32_t high_water_ = 0;
};

// The head of an entry's slab row; the value row follows at kMetaBytes.
// freq and tick are atomics so lookups holding the lock shared can count.
struct EntryMeta {
  int64_t key;
  std::atomic<int64_t> freq;
  int64_t version;
  std::atomic<uint64_t> tick;  // the last op that touched the row (LRU)
  uint32_t birth;              // epoch + 1 when made; 0: a free row
  uint32_t saved;              // newest pin epoch holding this row's pre-image
};
constexpr size_t kMetaBytes = (sizeof(EntryMeta) + 15) & ~size_t{15};

// A counting Bloom filter: k counters per key of `bits` bits, saturating.
// A key's count is the least of its counters (never below its true count).
class CountingBloom {
 public:
  static absl::StatusOr<std::unique_ptr<CountingBloom>> Create(
      const EmbeddingSpec::BloomFilter& spec, const std::string& table) {
    const double n = static_cast<double>(spec.max_element_size());
    const double ln2 = std::log(2.0);
    const double m = std::ceil(-n * std::log(spec.false_positive_probability()) / (ln2 * ln2));
    const int bits = spec.counter_bits() == 0 ? 8 : spec.counter_bits();
    if (!(m >= 1) || m * bits / 8 > static_cast<double>(int64_t{1} << 40)) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table '", table, "': bloom_filter of ", spec.max_element_size(),
                       " keys at false_positive_probability ", spec.false_positive_probability(),
                       " needs more than 2^40 bytes"));
    }
    auto bloom = std::make_unique<CountingBloom>();
    bloom->bits_ = bits;
    bloom->m_ = static_cast<uint64_t>(m);
    bloom->k_ = std::clamp(static_cast<int>(std::lround(m / n * ln2)), 1, 30);
    bloom->max_ = bits == 32 ? 0xffffffffull : (uint64_t{1} << bits) - 1;
    bloom->data_.assign(static_cast<size_t>((bloom->m_ * bits + 7) / 8), 0);
    return bloom;
  }
  int64_t bytes() const { return static_cast<int64_t>(data_.size()); }
  int k() const { return k_; }
  // The counter indexes of `key` (k() of them) into `out`.
  void Positions(int64_t key, uint64_t* out) const {
    const uint64_t h1 = SplitMix64(static_cast<uint64_t>(key));
    const uint64_t h2 = SplitMix64(h1 ^ 0x5851f42d4c957f2dull) | 1;
    for (int i = 0; i < k_; ++i) out[i] = (h1 + static_cast<uint64_t>(i) * h2) % m_;
  }
  uint64_t Get(uint64_t i) const {
    switch (bits_) {
      case 8:
        return data_[i];
      case 16: {
        uint16_t v;
        std::memcpy(&v, &data_[i * 2], 2);
        return v;
      }
      default: {
        uint32_t v;
        std::memcpy(&v, &data_[i * 4], 4);
        return v;
      }
    }
  }
  uint64_t Saturate(uint64_t v) const { return std::min(v, max_); }
  void Set(uint64_t i, uint64_t v) {
    v = Saturate(v);
    switch (bits_) {
      case 8:
        data_[i] = static_cast<uint8_t>(v);
        return;
      case 16: {
        const uint16_t w = static_cast<uint16_t>(v);
        std::memcpy(&data_[i * 2], &w, 2);
        return;
      }
      default: {
        const uint32_t w = static_cast<uint32_t>(v);
        std::memcpy(&data_[i * 4], &w, 4);
        return;
      }
    }
  }

 private:
  int bits_ = 8;
  int k_ = 1;
  uint64_t m_ = 1;
  uint64_t max_ = 255;
  std::vector<uint8_t> data_;

 public:
  // The counters as stored, for a move's copy.
  std::vector<uint8_t>& raw() { return data_; }
};

template <typename T>
constexpr bool kIsHalf = std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

template <typename T>
double ToDouble(T v) {
  if constexpr (kIsHalf<T>) {
    return static_cast<double>(static_cast<float>(v));
  } else {
    return static_cast<double>(v);
  }
}
template <typename T>
T FromDouble(double v) {
  if constexpr (kIsHalf<T>) {
    return T(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// Calls fn(T{}) for the table's floating dtypes (validated at creation).
template <typename Fn>
void WithFloating(DataType dtype, Fn&& fn) {
  switch (dtype) {
    case DT_FLOAT:
      fn(float{});
      return;
    case DT_DOUBLE:
      fn(double{});
      return;
    case DT_HALF:
      fn(half{});
      return;
    case DT_BFLOAT16:
      fn(bfloat16{});
      return;
    default:
      return;
  }
}

// scatter's element-wise update, as the CPU device computes it (float16 and
// bfloat16 in float, rounded). The op is chosen outside the loops so they
// vectorize.
template <typename T>
void ScatterRow(UpdateKind op, T* dst, const unsigned char* src, int64_t n, bool scalar) {
  // Two loops, so that neither selects per element and both vectorize.
  auto run = [&](auto combine) {
    if (scalar) {
      T u;
      std::memcpy(static_cast<void*>(&u), src, sizeof(T));
      for (int64_t i = 0; i < n; ++i) dst[i] = combine(dst[i], u);
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      T u;
      std::memcpy(static_cast<void*>(&u), src + i * sizeof(T), sizeof(T));
      dst[i] = combine(dst[i], u);
    }
  };
  switch (op) {
    case UpdateKind::kAssign:
      run([](T, T u) { return u; });
      return;
    case UpdateKind::kAdd:
      if constexpr (kIsHalf<T>) {
        run([](T a, T u) { return T(static_cast<float>(a) + static_cast<float>(u)); });
      } else {
        run([](T a, T u) { return a + u; });
      }
      return;
    case UpdateKind::kSub:
      if constexpr (kIsHalf<T>) {
        run([](T a, T u) { return T(static_cast<float>(a) - static_cast<float>(u)); });
      } else {
        run([](T a, T u) { return a - u; });
      }
      return;
  }
}

// What an op does to each distinct key it names, decided before anything
// changes.
enum class Fate : uint8_t { kExisting, kCreate, kFiltered };

struct KeyPlan {
  std::vector<int64_t> keys;         // distinct, in order of first arrival
  std::vector<int64_t> occurrences;  // per distinct key
  std::vector<uint32_t> id;          // per distinct key: entry id (kNoRow until made)
  std::vector<Fate> fate;
  std::vector<int64_t> count_after;  // per key made or filtered: its count after this op
  std::vector<uint32_t> of;          // per position: its distinct key
  absl::flat_hash_map<int64_t, uint32_t> distinct;
  absl::flat_hash_map<uint64_t, uint64_t> bloom_delta;  // counter index -> increments
  int64_t created = 0, filtered = 0, existing = 0;
  int64_t new_pending = 0;       // counter-filter keys counted for the first time
  int64_t admitted_pending = 0;  // counter-filter keys leaving the pending map
  int64_t new_slot_rows = 0;
  int64_t preimage_bytes = 0;
};

}  // namespace

// A snapshot's state, guarded by its table's lock.
struct SnapshotState {
  uint32_t epoch = 0;
  uint32_t high_water = 0;
  int64_t rows = 0;
  int64_t charged = 0;  // bytes its pre-images hold
  struct PreImage {
    int64_t key, freq, version;
    std::string value;
    std::vector<std::pair<int, std::string>> slots;  // column, row
  };
  absl::flat_hash_map<uint32_t, PreImage> pre;
};

class EmbeddingTable::Impl {
 public:
  class Snapshot;

  Impl(EmbeddingTableOptions options, MemoryAccountant* memory, InitializerPlan plan,
       std::unique_ptr<CountingBloom> bloom)
      : options_(std::move(options)),
        memory_(memory),
        elem_size_(DataTypeSize(options_.dtype)),
        value_bytes_(static_cast<size_t>(options_.dim) * elem_size_),
        value_plan_(plan),
        entries_(kMetaBytes + value_bytes_),
        row_charge_(static_cast<int64_t>(entries_.row_bytes()) + kIndexBytesPerRow),
        slot_row_charge_(static_cast<int64_t>((value_bytes_ + 15) & ~size_t{15}) +
                         kSlotMapBytesPerRow),
        bloom_(std::move(bloom)) {
    default_row_.resize(value_bytes_);
    const double d = options_.spec.default_value_no_permission();
    WithFloating(options_.dtype, [&](auto t) {
      using T = decltype(t);
      const T v = FromDouble<T>(d);
      for (int64_t i = 0; i < options_.dim; ++i) {
        std::memcpy(&default_row_[i * sizeof(T)], static_cast<const void*>(&v), sizeof(T));
      }
    });
  }

  ~Impl() {
    const int64_t held = bytes_.load();
    if (memory_ != nullptr && held != 0) memory_->Release(held);
  }

  // The Bloom filter's counters, charged once at creation.
  absl::Status ChargeCreation() {
    absl::MutexLock l(&mu_);
    if (bloom_ == nullptr) return absl::OkStatus();
    return TryReserve(bloom_->bytes());
  }

  const EmbeddingTableOptions& options() const { return options_; }

  absl::StatusOr<int> AddSlot(const std::string& name, const InitializerSpec& initializer) {
    PSD_ASSIGN_OR_RETURN(InitializerPlan plan, PlanKeyedInitializer(initializer, options_.dtype,
                                                                    options_.dim, options_.name));
    absl::MutexLock l(&mu_);
    if (FindSlotLocked(name) >= 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("embedding table '", options_.name, "': slot '", name, "' exists"));
    }
    int live = 0;
    for (const auto& s : slots_) live += s != nullptr;
    if (live >= kMaxSlotColumns) {
      return absl::ResourceExhaustedError(absl::StrCat("embedding table '", options_.name,
                                                       "': at most ", kMaxSlotColumns, " slots"));
    }
    auto slot = std::make_unique<SlotColumn>(value_bytes_);
    slot->name = name;
    slot->plan = plan;
    slots_.push_back(std::move(slot));
    return static_cast<int>(slots_.size());
  }

  int FindSlot(absl::string_view name) const {
    absl::ReaderMutexLock l(&mu_);
    return FindSlotLocked(name);
  }

  absl::Status RemoveSlot(absl::string_view name) {
    absl::MutexLock l(&mu_);
    const int c = FindSlotLocked(name);
    if (c < 0) {
      return absl::NotFoundError(
          absl::StrCat("embedding table '", options_.name, "': no slot '", name, "'"));
    }
    SlotColumn& slot = *slots_[c - 1];
    int64_t rows = 0;
    for (uint32_t r : slot.row_of) rows += r != kNoRow;
    Release(rows * slot_row_charge_);
    slots_[c - 1].reset();
    return absl::OkStatus();
  }

  std::vector<std::string> slot_names() const {
    absl::ReaderMutexLock l(&mu_);
    std::vector<std::string> names;
    for (const auto& s : slots_) {
      if (s != nullptr) names.push_back(s->name);
    }
    return names;
  }

  absl::Status Lookup(absl::Span<const int64_t> keys, int column,
                      const EmbeddingLookupOptions& lookup, void* out,
                      EmbeddingUpdateResult* result) {
    PSD_RETURN_IF_ERROR(CheckKeys(keys));
    char* dst = static_cast<char*>(out);
    const bool counts = column == 0 && !lookup.inference;
    {
      // Rows that exist (and slot columns, and inference) need no writer:
      // counting is atomic, and nothing is made.
      absl::ReaderMutexLock l(&mu_);
      PSD_RETURN_IF_ERROR(CheckColumn(column));
      if (counts) PSD_RETURN_IF_ERROR(CheckMoveEpoch(lookup, result));
      if (!counts || snapshots_.empty()) {
        const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
        thread_local std::vector<uint32_t> ids;
        ids.resize(keys.size());
        // Find every row first, asking for each as it is found, so the
        // copies below mostly hit the cache.
        for (size_t k = 0; k < keys.size(); ++k) {
          auto it = index_.find(keys[k]);
          ids[k] = it == index_.end() ? kNoRow : it->second;
          if (ids[k] != kNoRow && column == 0) {
            const char* p = entries_.Row(ids[k]);
            device_internal::PrefetchRow(p, entries_.row_bytes());
          }
        }
        bool all = true;
        for (size_t k = 0; k < keys.size() && all; ++k) {
          char* row = dst + k * value_bytes_;
          if (ids[k] != kNoRow) {
            std::memcpy(row, ColumnRow(ids[k], column, keys[k]), value_bytes_);
            continue;
          }
          if (column != 0) {
            FillKeyedRow(slots_[column - 1]->plan, options_.dtype, keys[k], options_.dim, row);
          } else if (!lookup.inference) {
            all = false;  // the writer path counts and maybe makes it
          } else if (WouldAdmitUncounted(keys[k])) {
            FillKeyedRow(value_plan_, options_.dtype, keys[k], options_.dim, row);
          } else {
            std::memcpy(row, default_row_.data(), value_bytes_);
          }
        }
        if (all) {
          for (size_t k = 0; k < keys.size(); ++k) {
            if (ids[k] == kNoRow) continue;
            EntryMeta* m = Meta(ids[k]);
            if (counts) m->freq.fetch_add(1, std::memory_order_relaxed);
            m->tick.store(tick, std::memory_order_relaxed);
          }
          if (result != nullptr) *result = EmbeddingUpdateResult{};
          return absl::OkStatus();
        }
      }
    }
    absl::MutexLock l(&mu_);
    PSD_RETURN_IF_ERROR(CheckColumn(column));
    PSD_RETURN_IF_ERROR(CheckMoveEpoch(lookup, result));
    const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
    KeyPlan plan;
    PlanKeys(keys, tick, &plan);
    EmbeddingUpdateResult r;
    PSD_RETURN_IF_ERROR(ReserveFor(&plan, tick, &r.evicted));
    Commit(&plan, lookup.global_step, tick, /*set_version=*/false);
    for (size_t k = 0; k < keys.size(); ++k) {
      const uint32_t u = plan.of[k];
      char* row = dst + k * value_bytes_;
      if (plan.fate[u] == Fate::kFiltered) {
        std::memcpy(row, default_row_.data(), value_bytes_);
      } else {
        std::memcpy(row, Value(plan.id[u]), value_bytes_);
      }
    }
    filtered_lookups_.fetch_add(plan.filtered, std::memory_order_relaxed);
    r.created = plan.created;
    r.filtered = plan.filtered;
    if (result != nullptr) *result = r;
    return absl::OkStatus();
  }

  absl::Status Scatter(UpdateKind op, absl::Span<const int64_t> keys, const void* rows,
                       bool rows_is_scalar, int64_t global_step, EmbeddingUpdateResult* result) {
    PSD_RETURN_IF_ERROR(CheckKeys(keys));
    if (op != UpdateKind::kAssign && op != UpdateKind::kAdd && op != UpdateKind::kSub) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table '", options_.name, "': unknown scatter op"));
    }
    absl::MutexLock l(&mu_);
    const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
    const auto* in = static_cast<const unsigned char*>(rows);
    if (std::vector<uint32_t>* ids = ExistingRows(keys); ids != nullptr) {
      // Every key has a row: no plan, no reservation.
      int64_t applied = 0;
      WithFloating(options_.dtype, [&](auto t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        using T = decltype(t);
        for (size_t k = 0; k < keys.size(); ++k) {
          ScatterRow<T>(op, reinterpret_cast<T*>(Value((*ids)[k])),
                        rows_is_scalar ? in : in + k * value_bytes_, options_.dim, rows_is_scalar);
        }
      });
      for (uint32_t id : *ids) applied += TouchUpdated(id, tick, global_step);
      if (result != nullptr) *result = EmbeddingUpdateResult{applied, 0, 0, 0};
      return absl::OkStatus();
    }
    KeyPlan plan;
    PlanKeys(keys, tick, &plan);
    EmbeddingUpdateResult r;
    PSD_RETURN_IF_ERROR(ReserveFor(&plan, tick, &r.evicted));
    Commit(&plan, global_step, tick, /*set_version=*/true);
    WithFloating(options_.dtype, [&](auto t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      using T = decltype(t);
      for (size_t k = 0; k < keys.size(); ++k) {
        const uint32_t u = plan.of[k];
        if (plan.fate[u] == Fate::kFiltered) continue;
        ScatterRow<T>(op, reinterpret_cast<T*>(Value(plan.id[u])),
                      rows_is_scalar ? in : in + k * value_bytes_, options_.dim, rows_is_scalar);
      }
    });
    Finish(plan, &r, result);
    return absl::OkStatus();
  }

  absl::Status ApplyOptimizer(const OptimizerParams& params, absl::Span<const int> slot_columns,
                              absl::Span<const int64_t> keys, const void* grads,
                              int64_t global_step, EmbeddingUpdateResult* result) {
    PSD_RETURN_IF_ERROR(CheckParams(params));
    const int want = NumOptimizerSlots(params.kind);
    if (static_cast<int>(slot_columns.size()) != want) {
      return absl::InvalidArgumentError(absl::StrCat("embedding table '", options_.name,
                                                     "': ", OptimizerName(params.kind), " takes ",
                                                     want, " slots, got ", slot_columns.size()));
    }
    PSD_RETURN_IF_ERROR(CheckKeys(keys));
    absl::MutexLock l(&mu_);
    for (size_t i = 0; i < slot_columns.size(); ++i) {
      if (slot_columns[i] <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "embedding table '", options_.name, "': column ", slot_columns[i], " is not a slot"));
      }
      PSD_RETURN_IF_ERROR(CheckColumn(slot_columns[i]));
      for (size_t j = 0; j < i; ++j) {
        if (slot_columns[j] == slot_columns[i]) {
          return absl::InvalidArgumentError(absl::StrCat(
              "embedding table '", options_.name, "': slot column ", slot_columns[i], " twice"));
        }
      }
    }
    const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
    const int num_slots = static_cast<int>(slot_columns.size());
    if (std::vector<uint32_t>* ids = ExistingRows(keys); ids != nullptr) {
      bool slot_rows = true;
      for (size_t k = 0; k < keys.size() && slot_rows; ++k) {
        for (int c : slot_columns) slot_rows = slot_rows && SlotRow(c, (*ids)[k]) != kNoRow;
      }
      if (slot_rows) {
        // Every key has its rows: no plan, no reservation.
        PSD_RETURN_IF_ERROR(internal::CpuApplyOptimizerRows(
            params, options_.dtype, num_slots, options_.dim, keys, grads,
            [&](int64_t key, void** var, void** slot_out) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              const uint32_t id = index_.find(key)->second;
              *var = Value(id);
              for (int k = 0; k < num_slots; ++k) {
                const SlotColumn& slot = *slots_[slot_columns[k] - 1];
                slot_out[k] = slot.rows.Row(slot.row_of[id]);
              }
              return true;
            }));
        int64_t applied = 0;
        for (uint32_t id : *ids) applied += TouchUpdated(id, tick, global_step);
        if (result != nullptr) *result = EmbeddingUpdateResult{applied, 0, 0, 0};
        return absl::OkStatus();
      }
    }
    KeyPlan plan;
    PlanKeys(keys, tick, &plan);
    for (size_t u = 0; u < plan.keys.size(); ++u) {
      if (plan.fate[u] == Fate::kFiltered) continue;
      for (int c : slot_columns) {
        if (plan.fate[u] == Fate::kCreate || SlotRow(c, plan.id[u]) == kNoRow) ++plan.new_slot_rows;
      }
    }
    EmbeddingUpdateResult r;
    PSD_RETURN_IF_ERROR(ReserveFor(&plan, tick, &r.evicted));
    Commit(&plan, global_step, tick, /*set_version=*/true);
    for (size_t u = 0; u < plan.keys.size(); ++u) {
      if (plan.fate[u] == Fate::kFiltered) continue;
      for (int c : slot_columns) EnsureSlotRow(c, plan.id[u], plan.keys[u]);
    }
    absl::Status s = internal::CpuApplyOptimizerRows(
        params, options_.dtype, num_slots, options_.dim, keys, grads,
        [&](int64_t key, void** var, void** slot_rows) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          const uint32_t u = plan.distinct.find(key)->second;
          if (plan.fate[u] == Fate::kFiltered) return false;
          const uint32_t id = plan.id[u];
          *var = Value(id);
          for (int k = 0; k < num_slots; ++k) {
            SlotColumn& slot = *slots_[slot_columns[k] - 1];
            slot_rows[k] = slot.rows.Row(slot.row_of[id]);
          }
          return true;
        });
    if (!s.ok()) return s;  // only for a caller's bug (checked above): rows made stay
    Finish(plan, &r, result);
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> DeleteKeys(absl::Span<const int64_t> keys) {
    PSD_RETURN_IF_ERROR(CheckKeys(keys));
    absl::MutexLock l(&mu_);
    if (!snapshots_.empty()) {
      absl::flat_hash_set<int64_t> seen;
      int64_t extra = 0;
      for (int64_t key : keys) {
        auto it = index_.find(key);
        if (it != index_.end() && seen.insert(key).second) extra += RemovalCharge(it->second);
      }
      PSD_RETURN_IF_ERROR(TryReserve(extra));
    }
    int64_t removed = 0;
    for (int64_t key : keys) {
      auto pending = pending_.find(key);
      if (pending != pending_.end()) {
        pending_.erase(pending);
        Release(kPendingBytesPerKey);
      }
      auto it = index_.find(key);
      if (it == index_.end()) continue;
      RemoveEntry(it->second);
      ++removed;
    }
    deleted_.fetch_add(removed, std::memory_order_relaxed);
    return removed;
  }

  absl::StatusOr<int64_t> Evict(int64_t global_step) {
    absl::MutexLock l(&mu_);
    const int64_t ttl = options_.spec.steps_to_live();
    const double threshold = options_.spec.l2_weight_threshold();
    const bool by_ttl = ttl > 0 && global_step > 0;
    const bool by_l2 = threshold > 0;
    if (!by_ttl && !by_l2) return int64_t{0};
    std::vector<uint32_t> doomed;
    for (uint32_t id = 0; id < entries_.high_water(); ++id) {
      const EntryMeta* m = Meta(id);
      if (m->birth == 0) continue;
      if (by_ttl && m->version < global_step - ttl) {
        doomed.push_back(id);
        continue;
      }
      if (by_l2 && L2Norm(id) < threshold) doomed.push_back(id);
    }
    int64_t extra = 0;
    for (uint32_t id : doomed) extra += RemovalCharge(id);
    PSD_RETURN_IF_ERROR(TryReserve(extra));
    for (uint32_t id : doomed) RemoveEntry(id);
    evicted_.fetch_add(static_cast<int64_t>(doomed.size()), std::memory_order_relaxed);
    return static_cast<int64_t>(doomed.size());
  }

  absl::Status Import(absl::Span<const int64_t> keys, const void* values,
                      absl::Span<const int> slot_columns, absl::Span<const void* const> slot_values,
                      absl::Span<const int64_t> freqs, absl::Span<const int64_t> versions) {
    PSD_RETURN_IF_ERROR(CheckKeys(keys));
    auto bad = [&](auto&&... what) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table '", options_.name, "': import: ", what...));
    };
    if (slot_values.size() != slot_columns.size()) {
      return bad(slot_columns.size(), " slot columns but ", slot_values.size(), " slot values");
    }
    if (!freqs.empty() && freqs.size() != keys.size()) {
      return bad(freqs.size(), " freqs for ", keys.size(), " keys");
    }
    if (!versions.empty() && versions.size() != keys.size()) {
      return bad(versions.size(), " versions for ", keys.size(), " keys");
    }
    absl::MutexLock l(&mu_);
    for (size_t i = 0; i < slot_columns.size(); ++i) {
      if (slot_columns[i] <= 0) return bad("column ", slot_columns[i], " is not a slot");
      PSD_RETURN_IF_ERROR(CheckColumn(slot_columns[i]));
      for (size_t j = 0; j < i; ++j) {
        if (slot_columns[j] == slot_columns[i])
          return bad("slot column ", slot_columns[i], " twice");
      }
    }
    KeyPlan plan;
    plan.distinct.reserve(keys.size());
    for (int64_t key : keys) {
      if (!plan.distinct.emplace(key, 0).second) return bad("key ", key, " appears twice");
    }
    int64_t new_rows = 0, new_slot_rows = 0, preimage = 0;
    std::vector<uint32_t> ids(keys.size(), kNoRow);
    for (size_t k = 0; k < keys.size(); ++k) {
      auto it = index_.find(keys[k]);
      if (it == index_.end()) {
        ++new_rows;
        new_slot_rows += static_cast<int64_t>(slot_columns.size());
        continue;
      }
      ids[k] = it->second;
      preimage += PreImageCharge(it->second);
      for (int c : slot_columns) new_slot_rows += SlotRow(c, it->second) == kNoRow;
    }
    const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
    for (uint32_t id : ids) {
      if (id != kNoRow) Meta(id)->tick.store(tick, std::memory_order_relaxed);
    }
    const int64_t need = new_rows * row_charge_ + new_slot_rows * slot_row_charge_ + preimage;
    PSD_RETURN_IF_ERROR(
        ReserveBytes(need, tick, static_cast<int64_t>(keys.size()) - new_rows, nullptr));
    const auto* in = static_cast<const char*>(values);
    for (size_t k = 0; k < keys.size(); ++k) {
      uint32_t id = ids[k];
      if (id == kNoRow) {
        if (pending_.erase(keys[k]) > 0) Release(kPendingBytesPerKey);
        id = NewEntry(keys[k], 0, 0, tick, /*fill=*/false);
        admitted_.fetch_add(1, std::memory_order_relaxed);
      } else {
        SavePreImages(id);
      }
      EntryMeta* m = Meta(id);
      m->freq.store(freqs.empty() ? 0 : freqs[k], std::memory_order_relaxed);
      m->version = versions.empty() ? 0 : versions[k];
      std::memcpy(Value(id), in + k * value_bytes_, value_bytes_);
      for (size_t i = 0; i < slot_columns.size(); ++i) {
        const int c = slot_columns[i];
        SlotColumn& slot = *slots_[c - 1];
        GrowSlotMap(&slot);
        if (slot.row_of[id] == kNoRow) slot.row_of[id] = slot.rows.Allocate();
        std::memcpy(slot.rows.Row(slot.row_of[id]),
                    static_cast<const char*>(slot_values[i]) + k * value_bytes_, value_bytes_);
      }
    }
    return absl::OkStatus();
  }

  absl::Status ImportSlot(int column, absl::Span<const int64_t> keys, const void* values) {
    PSD_RETURN_IF_ERROR(CheckKeys(keys));
    if (column <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "embedding table '", options_.name, "': import: column ", column, " is not a slot"));
    }
    absl::MutexLock l(&mu_);
    PSD_RETURN_IF_ERROR(CheckColumn(column));
    // Keys without a row are skipped: a slot row lives beside its row.
    std::vector<uint32_t> ids(keys.size(), kNoRow);
    int64_t new_slot_rows = 0, preimage = 0;
    for (size_t k = 0; k < keys.size(); ++k) {
      auto it = index_.find(keys[k]);
      if (it == index_.end()) continue;
      ids[k] = it->second;
      preimage += PreImageCharge(it->second);
      new_slot_rows += SlotRow(column, it->second) == kNoRow;
    }
    const uint64_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
    for (uint32_t id : ids) {  // so an LRU eviction to make room spares them
      if (id != kNoRow) Meta(id)->tick.store(tick, std::memory_order_relaxed);
    }
    PSD_RETURN_IF_ERROR(ReserveBytes(new_slot_rows * slot_row_charge_ + preimage, tick,
                                     static_cast<int64_t>(keys.size()), nullptr));
    SlotColumn& slot = *slots_[column - 1];
    GrowSlotMap(&slot);
    const auto* in = static_cast<const char*>(values);
    for (size_t k = 0; k < keys.size(); ++k) {
      const uint32_t id = ids[k];
      if (id == kNoRow) continue;
      SavePreImages(id);
      if (slot.row_of[id] == kNoRow) slot.row_of[id] = slot.rows.Allocate();
      std::memcpy(slot.rows.Row(slot.row_of[id]), in + k * value_bytes_, value_bytes_);
    }
    return absl::OkStatus();
  }

  EmbeddingStats Stats() const {
    absl::ReaderMutexLock l(&mu_);
    EmbeddingStats s;
    s.set_rows(static_cast<int64_t>(index_.size()));
    s.set_pending_keys(static_cast<int64_t>(pending_.size()));
    s.set_admitted(admitted_.load(std::memory_order_relaxed));
    s.set_filtered_lookups(filtered_lookups_.load(std::memory_order_relaxed));
    s.set_filtered_updates(filtered_updates_.load(std::memory_order_relaxed));
    s.set_evicted(evicted_.load(std::memory_order_relaxed));
    s.set_deleted(deleted_.load(std::memory_order_relaxed));
    return s;
  }
  int64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  int64_t rows() const {
    absl::ReaderMutexLock l(&mu_);
    return static_cast<int64_t>(index_.size());
  }

  // Snapshots (see the file comment).
  std::unique_ptr<SnapshotState> Pin() {
    auto state = std::make_unique<SnapshotState>();
    absl::MutexLock l(&mu_);
    state->epoch = ++epoch_;
    state->high_water = entries_.high_water();
    state->rows = static_cast<int64_t>(index_.size());
    snapshots_.push_back(state.get());
    return state;
  }
  // A move's pin: the rows' cut, and at the same instant the counter
  // filter's pending counts and the Bloom counters (copied: they are small
  // next to the rows and change in place). Bumps move_epoch_.
  std::unique_ptr<SnapshotState> PinForMove(EmbeddingMoveCut* cut) {
    auto state = std::make_unique<SnapshotState>();
    absl::MutexLock l(&mu_);
    state->epoch = ++epoch_;
    state->high_water = entries_.high_water();
    state->rows = static_cast<int64_t>(index_.size());
    snapshots_.push_back(state.get());
    move_epoch_.fetch_add(1);
    cut->ids = state->high_water;
    cut->pending.assign(pending_.begin(), pending_.end());
    std::sort(cut->pending.begin(), cut->pending.end());
    cut->bloom.clear();
    if (bloom_ != nullptr) cut->bloom.assign(bloom_->raw().begin(), bloom_->raw().end());
    return state;
  }

  absl::Status CheckMoveEpoch(const EmbeddingLookupOptions& lookup,
                              EmbeddingUpdateResult* result) const {
    if (lookup.expect_move_epoch < 0 ||
        (!retired_.load() && move_epoch_.load() == static_cast<uint64_t>(lookup.expect_move_epoch))) {
      return absl::OkStatus();
    }
    if (result != nullptr) result->move_epoch_changed = true;
    return absl::AbortedError(absl::StrCat("embedding table '", options_.name,
                                           "' was pinned for a move meanwhile; retry"));
  }
  uint64_t move_epoch() const { return move_epoch_.load(); }
  void Retire() {
    absl::MutexLock l(&mu_);  // a lookup checking the epoch under the lock sees it
    retired_.store(true);
  }
  bool retired() const { return retired_.load(); }

  void SetEvictionAllowed(bool allowed) { eviction_allowed_.store(allowed); }

  absl::Status ImportPending(absl::Span<const int64_t> keys, absl::Span<const int64_t> counts) {
    PSD_RETURN_IF_ERROR(CheckKeys(keys));
    const EmbeddingSpec& spec = options_.spec;
    auto bad = [&](auto&&... what) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table '", options_.name, "': pending counts: ", what...));
    };
    if (keys.size() != counts.size()) return bad(counts.size(), " counts for ", keys.size(), " keys");
    if (keys.empty()) return absl::OkStatus();
    if (!spec.has_counter_filter()) return bad("the table has no counter filter");
    for (int64_t c : counts) {
      if (c <= 0 || c >= spec.counter_filter().filter_freq()) {
        return bad("count ", c, " is not in [1, filter_freq = ",
                   spec.counter_filter().filter_freq(), ")");
      }
    }
    absl::MutexLock l(&mu_);
    // Keys counted for the first time, each once.
    absl::flat_hash_set<int64_t> fresh;
    for (int64_t key : keys) {
      if (index_.count(key) == 0 && pending_.count(key) == 0) fresh.insert(key);
    }
    PSD_RETURN_IF_ERROR(TryReserve(static_cast<int64_t>(fresh.size()) * kPendingBytesPerKey));
    for (size_t k = 0; k < keys.size(); ++k) {
      if (index_.count(keys[k]) > 0) continue;  // admitted: its row holds its count
      pending_[keys[k]] = counts[k];
    }
    return absl::OkStatus();
  }

  absl::Status ImportBloom(int64_t offset, absl::string_view bytes) {
    absl::MutexLock l(&mu_);
    const int64_t have = bloom_ == nullptr ? 0 : bloom_->bytes();
    if (offset < 0 || offset > have || static_cast<int64_t>(bytes.size()) > have - offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "embedding table '", options_.name, "': Bloom counters at ", offset, " (",
          bytes.size(), " bytes) do not fit its ", have));
    }
    if (!bytes.empty()) std::memcpy(bloom_->raw().data() + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }

  void Unpin(SnapshotState* state) {
    absl::MutexLock l(&mu_);
    snapshots_.erase(std::find(snapshots_.begin(), snapshots_.end(), state));
    Release(state->charged);
    state->pre.clear();
  }
  absl::Status ReadSnapshot(SnapshotState* state, uint32_t* cursor, int64_t max_rows,
                            absl::Span<const int> columns, EmbeddingSnapshot::Batch* batch,
                            uint32_t end = std::numeric_limits<uint32_t>::max()) {
    batch->keys.clear();
    batch->freqs.clear();
    batch->versions.clear();
    batch->columns.assign(columns.size(), std::string());
    if (max_rows <= 0) max_rows = 1;
    absl::ReaderMutexLock l(&mu_);
    for (int c : columns) {
      if (c != 0) PSD_RETURN_IF_ERROR(CheckColumn(c));
    }
    std::string initial(value_bytes_, '\0');
    auto append_slot = [&](size_t i, int c, int64_t key,
                           const char* row) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      if (row != nullptr) {
        batch->columns[i].append(row, value_bytes_);
      } else {
        FillKeyedRow(slots_[c - 1]->plan, options_.dtype, key, options_.dim, initial.data());
        batch->columns[i].append(initial);
      }
    };
    end = std::min(end, state->high_water);
    while (*cursor < end && static_cast<int64_t>(batch->keys.size()) < max_rows) {
      const uint32_t id = (*cursor)++;
      if (auto it = state->pre.find(id); it != state->pre.end()) {
        const SnapshotState::PreImage& p = it->second;
        batch->keys.push_back(p.key);
        batch->freqs.push_back(p.freq);
        batch->versions.push_back(p.version);
        for (size_t i = 0; i < columns.size(); ++i) {
          const int c = columns[i];
          if (c == 0) {
            batch->columns[i].append(p.value);
            continue;
          }
          const char* row = nullptr;
          for (const auto& [col, bytes] : p.slots) {
            if (col == c) row = bytes.data();
          }
          append_slot(i, c, p.key, row);
        }
        continue;
      }
      const EntryMeta* m = Meta(id);
      if (m->birth == 0 || m->birth > state->epoch) continue;
      batch->keys.push_back(m->key);
      batch->freqs.push_back(m->freq.load(std::memory_order_relaxed));
      batch->versions.push_back(m->version);
      for (size_t i = 0; i < columns.size(); ++i) {
        const int c = columns[i];
        if (c == 0) {
          batch->columns[i].append(Value(id), value_bytes_);
          continue;
        }
        const uint32_t r = SlotRow(c, id);
        append_slot(i, c, m->key, r == kNoRow ? nullptr : slots_[c - 1]->rows.Row(r));
      }
    }
    return absl::OkStatus();
  }

 private:
  struct SlotColumn {
    explicit SlotColumn(size_t row_bytes) : rows(row_bytes) {}
    std::string name;
    InitializerPlan plan;
    Slab rows;
    std::vector<uint32_t> row_of;  // entry id -> slot row, kNoRow
  };

  // Checks needing no lock.
  absl::Status CheckKeys(absl::Span<const int64_t> keys) const {
    const bool int32_keys = options_.key_dtype == DT_INT32;
    for (int64_t key : keys) {
      if (int32_keys && (key < std::numeric_limits<int32_t>::min() ||
                         key > std::numeric_limits<int32_t>::max())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "embedding table '", options_.name, "': key ", key, " does not fit its int32 keys"));
      }
      if (options_.num_parts > 1) {
        const int part = PartOfKey(key, options_.num_parts);
        if (part != options_.part_index) {
          return absl::InvalidArgumentError(absl::StrCat(
              "embedding table '", options_.name, "': key ", key, " belongs to part ", part, " of ",
              options_.num_parts, ", not to this part ", options_.part_index));
        }
      }
    }
    return absl::OkStatus();
  }

  // The ranges of OptimizerSpec's fields, as the dense apply checks them.
  absl::Status CheckParams(const OptimizerParams& p) const {
    auto check = [&](const char* field, double v, bool ok, const char* range) {
      if (std::isfinite(v) && ok) return absl::OkStatus();
      return absl::InvalidArgumentError(absl::StrCat("embedding table '", options_.name,
                                                     "': ", OptimizerName(p.kind), ": ", field,
                                                     " = ", v, " is not ", range));
    };
    auto finite = [&](const char* f, double v) { return check(f, v, true, "finite"); };
    auto non_negative = [&](const char* f, double v) {
      return check(f, v, v >= 0, "finite and >= 0");
    };
    auto fraction = [&](const char* f, double v) {
      return check(f, v, v >= 0 && v < 1, "in [0, 1)");
    };
    switch (p.kind) {
      case OptimizerKind::kGradientDescent:
      case OptimizerKind::kAdagrad:
        return finite("learning_rate", p.learning_rate);
      case OptimizerKind::kMomentum:
        PSD_RETURN_IF_ERROR(finite("learning_rate", p.learning_rate));
        return non_negative("momentum", p.momentum);
      case OptimizerKind::kAdam:
        PSD_RETURN_IF_ERROR(finite("learning_rate", p.learning_rate));
        PSD_RETURN_IF_ERROR(fraction("beta1", p.beta1));
        PSD_RETURN_IF_ERROR(fraction("beta2", p.beta2));
        PSD_RETURN_IF_ERROR(non_negative("epsilon", p.epsilon));
        PSD_RETURN_IF_ERROR(fraction("beta1_power", p.beta1_power));
        return fraction("beta2_power", p.beta2_power);
      case OptimizerKind::kRMSProp:
      case OptimizerKind::kCenteredRMSProp:
        PSD_RETURN_IF_ERROR(finite("learning_rate", p.learning_rate));
        PSD_RETURN_IF_ERROR(check("decay", p.decay, p.decay >= 0 && p.decay <= 1, "in [0, 1]"));
        PSD_RETURN_IF_ERROR(non_negative("momentum", p.momentum));
        return non_negative("epsilon", p.epsilon);
      case OptimizerKind::kFtrl:
        PSD_RETURN_IF_ERROR(
            check("learning_rate", p.learning_rate, p.learning_rate > 0, "finite and > 0"));
        PSD_RETURN_IF_ERROR(
            check("learning_rate_power", p.lr_power, p.lr_power <= 0, "finite and <= 0"));
        PSD_RETURN_IF_ERROR(non_negative("l1", p.l1));
        PSD_RETURN_IF_ERROR(non_negative("l2", p.l2));
        return non_negative("l2_shrinkage", p.l2_shrinkage);
    }
    return absl::InvalidArgumentError(
        absl::StrCat("embedding table '", options_.name, "': unknown optimizer"));
  }

  int FindSlotLocked(absl::string_view name) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i] != nullptr && slots_[i]->name == name) return static_cast<int>(i) + 1;
    }
    return -1;
  }

  absl::Status CheckColumn(int column) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (column == 0) return absl::OkStatus();
    if (column < 0 || column > static_cast<int>(slots_.size()) || slots_[column - 1] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding table '", options_.name, "': no column ", column));
    }
    return absl::OkStatus();
  }

  EntryMeta* Meta(uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return reinterpret_cast<EntryMeta*>(entries_.Row(id));
  }
  char* Value(uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return entries_.Row(id) + kMetaBytes;
  }
  uint32_t SlotRow(int column, uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const SlotColumn& slot = *slots_[column - 1];
    return id < slot.row_of.size() ? slot.row_of[id] : kNoRow;
  }
  // Column `column` of entry `id`: a slot row it lacks is drawn into a
  // thread-local row.
  const char* ColumnRow(uint32_t id, int column, int64_t key) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (column == 0) return Value(id);
    const uint32_t r = SlotRow(column, id);
    if (r != kNoRow) return slots_[column - 1]->rows.Row(r);
    thread_local std::string initial;
    initial.resize(value_bytes_);
    FillKeyedRow(slots_[column - 1]->plan, options_.dtype, key, options_.dim, initial.data());
    return initial.data();
  }

  double L2Norm(uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    double sum = 0;
    WithFloating(options_.dtype, [&](auto t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      using T = decltype(t);
      const T* v = reinterpret_cast<const T*>(Value(id));
      for (int64_t i = 0; i < options_.dim; ++i) {
        const double x = ToDouble(v[i]);
        sum += x * x;
      }
    });
    return std::sqrt(sum);
  }

  // Whether a missing key would be admitted by a lookup that does not count
  // (inference): always without a filter, when its Bloom count already
  // reaches filter_freq, never for a counter filter (its admitted keys have
  // rows).
  bool WouldAdmitUncounted(int64_t key) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const EmbeddingSpec& spec = options_.spec;
    if (spec.has_counter_filter()) return false;
    if (!spec.has_bloom_filter()) return true;
    uint64_t pos[32];
    bloom_->Positions(key, pos);
    uint64_t least = std::numeric_limits<uint64_t>::max();
    for (int i = 0; i < bloom_->k(); ++i) least = std::min(least, bloom_->Get(pos[i]));
    return static_cast<int64_t>(least) >= spec.bloom_filter().filter_freq();
  }

  // The entry ids of `keys` (a thread's scratch) when every key has a row
  // and no snapshot is live (so no pre-image is owed), else null: the op
  // then needs no plan and no memory.
  std::vector<uint32_t>* ExistingRows(absl::Span<const int64_t> keys) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (!snapshots_.empty()) return nullptr;
    thread_local std::vector<uint32_t> ids;
    ids.resize(keys.size());
    for (size_t k = 0; k < keys.size(); ++k) {
      auto it = index_.find(keys[k]);
      if (it == index_.end()) return nullptr;
      ids[k] = it->second;
      // The op reads the row next: ask for it while the index is searched.
      const char* row = entries_.Row(it->second);
      device_internal::PrefetchRow(row, entries_.row_bytes());
    }
    return &ids;
  }

  // Counts one update of an existing row at one position of the op; returns
  // 1 the first time the op touches the row (its tick marks it).
  int TouchUpdated(uint32_t id, uint64_t tick, int64_t global_step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    EntryMeta* m = Meta(id);
    m->freq.fetch_add(1, std::memory_order_relaxed);
    if (global_step > 0) m->version = global_step;
    if (m->tick.load(std::memory_order_relaxed) == tick) return 0;
    m->tick.store(tick, std::memory_order_relaxed);
    return 1;
  }

  // Decides each distinct key's fate and the bytes the op needs; stamps the
  // existing rows with `tick` so LRU eviction leaves them alone. Counts
  // nothing yet.
  void PlanKeys(absl::Span<const int64_t> keys, uint64_t tick, KeyPlan* plan)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    plan->distinct.reserve(keys.size());
    plan->of.resize(keys.size());
    for (size_t k = 0; k < keys.size(); ++k) {
      auto [it, inserted] =
          plan->distinct.emplace(keys[k], static_cast<uint32_t>(plan->keys.size()));
      if (inserted) {
        plan->keys.push_back(keys[k]);
        plan->occurrences.push_back(0);
      }
      ++plan->occurrences[it->second];
      plan->of[k] = it->second;
    }
    const size_t n = plan->keys.size();
    plan->id.assign(n, kNoRow);
    plan->fate.assign(n, Fate::kExisting);
    plan->count_after.assign(n, 0);
    const EmbeddingSpec& spec = options_.spec;
    for (size_t u = 0; u < n; ++u) {
      const int64_t key = plan->keys[u];
      const int64_t occ = plan->occurrences[u];
      if (auto it = index_.find(key); it != index_.end()) {
        plan->id[u] = it->second;
        ++plan->existing;
        plan->preimage_bytes += PreImageCharge(it->second);
        Meta(it->second)->tick.store(tick, std::memory_order_relaxed);
        continue;
      }
      int64_t after = occ;
      int64_t freq = 1;
      if (spec.has_counter_filter()) {
        freq = spec.counter_filter().filter_freq();
        auto p = pending_.find(key);
        if (p != pending_.end()) after += p->second;
        if (after >= freq) {
          plan->admitted_pending += p != pending_.end();
        } else {
          plan->new_pending += p == pending_.end();
        }
      } else if (spec.has_bloom_filter()) {
        freq = spec.bloom_filter().filter_freq();
        uint64_t pos[32];
        bloom_->Positions(key, pos);
        uint64_t least = std::numeric_limits<uint64_t>::max();
        for (int i = 0; i < bloom_->k(); ++i) {
          uint64_t& delta = plan->bloom_delta[pos[i]];
          delta += static_cast<uint64_t>(occ);
          least = std::min(least, bloom_->Saturate(bloom_->Get(pos[i]) + delta));
        }
        after = static_cast<int64_t>(least);
      }
      plan->count_after[u] = after;
      if (after >= freq) {
        plan->fate[u] = Fate::kCreate;
        ++plan->created;
      } else {
        plan->fate[u] = Fate::kFiltered;
        ++plan->filtered;
      }
    }
  }

  absl::Status ReserveFor(KeyPlan* plan, uint64_t tick, int64_t* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t need = plan->created * row_charge_ + plan->new_slot_rows * slot_row_charge_ +
                         plan->new_pending * kPendingBytesPerKey + plan->preimage_bytes;
    return ReserveBytes(need, tick, plan->existing, evicted);
  }

  // The part's cap, then the shard's accountant; RESOURCE_EXHAUSTED naming
  // the table and the bytes. Changes nothing on failure.
  absl::Status TryReserve(int64_t need) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (need <= 0) return absl::OkStatus();
    const int64_t cap = options_.spec.part_memory_limit_bytes();
    const int64_t held = bytes_.load(std::memory_order_relaxed);
    if (cap > 0 && held + need > cap) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "embedding table '", options_.name, "': ", need, " more bytes would pass the part's ",
          "memory limit of ", cap, " bytes (", held, " held)"));
    }
    if (memory_ != nullptr) {
      absl::Status s = memory_->Reserve(need, options_.name);
      if (!s.ok()) {
        return absl::Status(s.code(), absl::StrCat("embedding table '", options_.name, "': ", need,
                                                   " more bytes: ", s.message()));
      }
    }
    bytes_.fetch_add(need, std::memory_order_relaxed);
    return absl::OkStatus();
  }

  void Release(int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (bytes == 0) return;
    bytes_.fetch_sub(bytes, std::memory_order_relaxed);
    if (memory_ != nullptr) memory_->Release(bytes);
  }

  // TryReserve; with evict_lru_on_memory_limit, evicts least recently used
  // rows the op does not touch (`touched` rows hold `tick`) to make room,
  // only when enough such rows exist (else nothing is evicted).
  absl::Status ReserveBytes(int64_t need, uint64_t tick, int64_t touched, int64_t* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::Status s = TryReserve(need);
    if (s.ok() || !options_.spec.evict_lru_on_memory_limit() || !snapshots_.empty() ||
        !eviction_allowed_.load(std::memory_order_relaxed)) {
      return s;
    }
    for (int round = 0; round < 4 && !s.ok(); ++round) {
      int64_t deficit = row_charge_;
      const int64_t held = bytes_.load(std::memory_order_relaxed);
      const int64_t cap = options_.spec.part_memory_limit_bytes();
      if (cap > 0) deficit = std::max(deficit, held + need - cap);
      if (memory_ != nullptr && memory_->limit() > 0) {
        deficit = std::max(deficit, memory_->held() + need - memory_->limit());
      }
      const int64_t want = (deficit + row_charge_ - 1) / row_charge_;
      const int64_t evictable = static_cast<int64_t>(index_.size()) - touched;
      if (want > evictable) return s;
      const int64_t done = EvictLru(want, tick);
      if (evicted != nullptr) *evicted += done;
      if (done == 0) return s;
      s = TryReserve(need);
    }
    return s;
  }

  // Sampled LRU: for each row to evict, kLruSamples live rows drawn at
  // random (a fixed-seed generator), the one touched longest ago not by
  // this op is removed. Returns the rows evicted.
  int64_t EvictLru(int64_t count, uint64_t tick) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t done = 0;
    const uint32_t hw = entries_.high_water();
    if (hw == 0) return 0;
    for (; done < count; ++done) {
      uint32_t best = kNoRow;
      uint64_t best_tick = std::numeric_limits<uint64_t>::max();
      int found = 0;
      for (int tries = 0; tries < kLruSamples * 8 && found < kLruSamples; ++tries) {
        lru_rng_ = SplitMix64(lru_rng_);
        const uint32_t id = static_cast<uint32_t>(lru_rng_ % hw);
        const EntryMeta* m = Meta(id);
        if (m->birth == 0) continue;
        const uint64_t t = m->tick.load(std::memory_order_relaxed);
        if (t == tick) continue;
        ++found;
        if (t < best_tick) {
          best_tick = t;
          best = id;
        }
      }
      if (best == kNoRow) break;
      RemoveEntry(best);
    }
    evicted_.fetch_add(done, std::memory_order_relaxed);
    return done;
  }

  // The bytes an entry holds: its row and index share, and its slot rows.
  int64_t EntryCharge(uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    int64_t slot_rows = 0;
    for (size_t c = 1; c <= slots_.size(); ++c) {
      if (slots_[c - 1] != nullptr) slot_rows += SlotRow(static_cast<int>(c), id) != kNoRow;
    }
    return row_charge_ + slot_rows * slot_row_charge_;
  }
  // Live snapshots still owed a pre-image of the entry.
  int64_t Owed(uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (snapshots_.empty() || epoch_ <= Meta(id)->saved) return 0;
    int64_t owed = 0;
    for (const SnapshotState* s : snapshots_) owed += s->epoch > Meta(id)->saved;
    return owed;
  }
  // The bytes changing the entry costs: one pre-image per owed snapshot,
  // each charged as much as the entry itself holds.
  int64_t PreImageCharge(uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const int64_t owed = Owed(id);
    return owed == 0 ? 0 : owed * EntryCharge(id);
  }
  // The bytes removing the entry costs: its own bytes go to the first
  // pre-image, any further one is charged on top (two snapshots at once).
  int64_t RemovalCharge(uint32_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const int64_t owed = Owed(id);
    return owed <= 1 ? 0 : (owed - 1) * EntryCharge(id);
  }

  // Gives each live snapshot pinned after the entry's last save a copy of
  // it as it is now. The bytes (PreImageCharge) are already reserved.
  void SavePreImages(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    EntryMeta* m = Meta(id);
    if (snapshots_.empty() || epoch_ <= m->saved) return;
    const int64_t charge_each = EntryCharge(id);
    for (SnapshotState* s : snapshots_) {
      if (s->epoch <= m->saved) continue;
      SnapshotState::PreImage p;
      p.key = m->key;
      p.freq = m->freq.load(std::memory_order_relaxed);
      p.version = m->version;
      p.value.assign(Value(id), value_bytes_);
      for (size_t c = 1; c <= slots_.size(); ++c) {
        if (slots_[c - 1] == nullptr) continue;
        const uint32_t r = SlotRow(static_cast<int>(c), id);
        if (r != kNoRow) {
          p.slots.emplace_back(static_cast<int>(c),
                               std::string(slots_[c - 1]->rows.Row(r), value_bytes_));
        }
      }
      s->pre.emplace(id, std::move(p));
      s->charged += charge_each;
    }
    m->saved = epoch_;
  }

  // Removes an entry and its slot rows. Its bytes go to the snapshots that
  // still need it (as its pre-image; RemovalCharge reserved by the caller)
  // or back to the accountant.
  void RemoveEntry(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    EntryMeta* m = Meta(id);
    int64_t freed = EntryCharge(id);
    if (Owed(id) > 0) {
      SavePreImages(id);
      freed = 0;
    }
    for (size_t c = 1; c <= slots_.size(); ++c) {
      if (slots_[c - 1] == nullptr) continue;
      SlotColumn& slot = *slots_[c - 1];
      if (id < slot.row_of.size() && slot.row_of[id] != kNoRow) {
        slot.rows.Free(slot.row_of[id]);
        slot.row_of[id] = kNoRow;
      }
    }
    index_.erase(m->key);
    m->birth = 0;
    entries_.Free(id);
    Release(freed);
  }

  void GrowSlotMap(SlotColumn* slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (slot->row_of.size() < entries_.high_water()) {
      slot->row_of.resize(entries_.high_water(), kNoRow);
    }
  }

  void EnsureSlotRow(int column, uint32_t id, int64_t key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SlotColumn& slot = *slots_[column - 1];
    GrowSlotMap(&slot);
    if (slot.row_of[id] != kNoRow) return;
    const uint32_t r = slot.rows.Allocate();
    slot.row_of[id] = r;
    FillKeyedRow(slot.plan, options_.dtype, key, options_.dim, slot.rows.Row(r));
  }

  uint32_t NewEntry(int64_t key, int64_t freq, int64_t version, uint64_t tick, bool fill)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint32_t id = entries_.Allocate();
    auto* m = new (entries_.Row(id)) EntryMeta;
    m->key = key;
    m->freq.store(freq, std::memory_order_relaxed);
    m->version = version;
    m->tick.store(tick, std::memory_order_relaxed);
    m->birth = epoch_ + 1;
    m->saved = epoch_;
    for (auto& slot : slots_) {
      if (slot != nullptr && id < slot->row_of.size()) slot->row_of[id] = kNoRow;
    }
    if (fill) FillKeyedRow(value_plan_, options_.dtype, key, options_.dim, Value(id));
    index_.emplace(key, id);
    return id;
  }

  // Applies a plan whose bytes are reserved: pre-images, counts, new rows.
  void Commit(KeyPlan* plan, int64_t global_step, uint64_t tick, bool set_version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const EmbeddingSpec& spec = options_.spec;
    for (const auto& [pos, delta] : plan->bloom_delta) {
      bloom_->Set(pos, bloom_->Saturate(bloom_->Get(pos) + delta));
    }
    int64_t pending_released = 0;
    for (size_t u = 0; u < plan->keys.size(); ++u) {
      const int64_t key = plan->keys[u];
      const int64_t occ = plan->occurrences[u];
      switch (plan->fate[u]) {
        case Fate::kExisting: {
          const uint32_t id = plan->id[u];
          SavePreImages(id);
          EntryMeta* m = Meta(id);
          m->freq.fetch_add(occ, std::memory_order_relaxed);
          if (set_version && global_step > 0) m->version = global_step;
          break;
        }
        case Fate::kCreate:
          if (spec.has_counter_filter() && pending_.erase(key) > 0) ++pending_released;
          plan->id[u] = NewEntry(key, plan->count_after[u], global_step > 0 ? global_step : 0, tick,
                                 /*fill=*/true);
          break;
        case Fate::kFiltered:
          if (spec.has_counter_filter()) pending_[key] = plan->count_after[u];
          break;
      }
    }
    Release(pending_released * kPendingBytesPerKey);
    admitted_.fetch_add(plan->created, std::memory_order_relaxed);
  }

  void Finish(const KeyPlan& plan, EmbeddingUpdateResult* r, EmbeddingUpdateResult* result) {
    filtered_updates_.fetch_add(plan.filtered, std::memory_order_relaxed);
    r->applied = plan.existing + plan.created;
    r->created = plan.created;
    r->filtered = plan.filtered;
    if (result != nullptr) *result = *r;
  }

  const EmbeddingTableOptions options_;
  MemoryAccountant* const memory_;
  const size_t elem_size_;
  const size_t value_bytes_;
  const InitializerPlan value_plan_;
  std::string default_row_;  // default_value_no_permission in every element

  mutable absl::Mutex mu_;
  absl::flat_hash_map<int64_t, uint32_t> index_ ABSL_GUARDED_BY(mu_);
  Slab entries_ ABSL_GUARDED_BY(mu_);
  const int64_t row_charge_;       // bytes charged per row: slab row and index
  const int64_t slot_row_charge_;  // bytes charged per slot row
  std::vector<std::unique_ptr<SlotColumn>> slots_ ABSL_GUARDED_BY(mu_);  // column c at c - 1
  absl::flat_hash_map<int64_t, int64_t> pending_ ABSL_GUARDED_BY(mu_);   // counter filter
  const std::unique_ptr<CountingBloom> bloom_ ABSL_PT_GUARDED_BY(mu_);
  uint32_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<SnapshotState*> snapshots_ ABSL_GUARDED_BY(mu_);
  uint64_t lru_rng_ ABSL_GUARDED_BY(mu_) = 0x853c49e6748fea9bull;

  std::atomic<int64_t> bytes_{0};  // changed under mu_ held exclusively
  std::atomic<uint64_t> tick_{0};
  // Bumped by every move's pin (PinForMove); lookups that count check it.
  std::atomic<uint64_t> move_epoch_{0};
  // Set once the part moved away (Retire): lookups that check the epoch stop.
  std::atomic<bool> retired_{false};
  // Off while the part is moving in: a replayed op must not evict rows the
  // source kept (it fails, and the move with it).
  std::atomic<bool> eviction_allowed_{true};
  std::atomic<int64_t> admitted_{0}, filtered_lookups_{0}, filtered_updates_{0}, evicted_{0},
      deleted_{0};
};

// A pinned cut: the table's state for it lives in SnapshotState, under the
// table's lock; the cursor is the reader's own.
class EmbeddingTable::Impl::Snapshot final : public EmbeddingSnapshot {
 public:
  Snapshot(std::shared_ptr<Impl> table, std::unique_ptr<SnapshotState> state)
      : table_(std::move(table)), state_(std::move(state)) {}
  ~Snapshot() override { table_->Unpin(state_.get()); }
  int64_t rows() const override { return state_->rows; }
  absl::Status Next(int64_t max_rows, absl::Span<const int> columns, Batch* batch) override {
    return table_->ReadSnapshot(state_.get(), &cursor_, max_rows, columns, batch);
  }
  int64_t ids() const override { return state_->high_water; }
  absl::Status ReadIds(int64_t begin, int64_t end, absl::Span<const int> columns,
                       Batch* batch) const override {
    if (begin < 0 || end < begin || end > state_->high_water) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot ids [", begin, ", ", end,
                                                     ") are not within [0, ",
                                                     state_->high_water, ")"));
    }
    uint32_t cursor = static_cast<uint32_t>(begin);
    return table_->ReadSnapshot(state_.get(), &cursor, std::numeric_limits<int64_t>::max(),
                                columns, batch, static_cast<uint32_t>(end));
  }

 private:
  const std::shared_ptr<Impl> table_;
  const std::unique_ptr<SnapshotState> state_;
  uint32_t cursor_ = 0;
};

absl::Status EmbeddingTable::Validate(const EmbeddingTableOptions& o) {
  auto bad = [&](auto&&... what) {
    return absl::InvalidArgumentError(absl::StrCat("embedding table '", o.name, "': ", what...));
  };
  if (o.dtype != DT_FLOAT && o.dtype != DT_DOUBLE && o.dtype != DT_HALF && o.dtype != DT_BFLOAT16) {
    return bad("dtype ", DataTypeName(o.dtype), " is not float32, float64, float16 or bfloat16");
  }
  if (o.dim <= 0 || o.dim > (int64_t{1} << 20)) return bad("dim ", o.dim, " is not in [1, 2^20]");
  if (o.key_dtype != DT_INT64 && o.key_dtype != DT_INT32 && o.key_dtype != DT_INVALID) {
    return bad("key_dtype ", DataTypeName(o.key_dtype), " is not int64 or int32");
  }
  if (o.num_parts < 1 || o.part_index < 0 || o.part_index >= o.num_parts) {
    return bad("part_index ", o.part_index, " is not in [0, ", o.num_parts, ")");
  }
  const EmbeddingSpec& s = o.spec;
  if (s.embedding_dim() != 0 && s.embedding_dim() != o.dim) {
    return bad("embedding_dim ", s.embedding_dim(), " differs from dim ", o.dim);
  }
  if (s.has_counter_filter() && s.counter_filter().filter_freq() < 1) {
    return bad("counter_filter.filter_freq ", s.counter_filter().filter_freq(), " is not >= 1");
  }
  if (s.has_bloom_filter()) {
    const auto& b = s.bloom_filter();
    if (b.filter_freq() < 1)
      return bad("bloom_filter.filter_freq ", b.filter_freq(), " is not >= 1");
    if (b.max_element_size() < 1) {
      return bad("bloom_filter.max_element_size ", b.max_element_size(), " is not >= 1");
    }
    if (!(b.false_positive_probability() > 0 && b.false_positive_probability() < 1)) {
      return bad("bloom_filter.false_positive_probability ", b.false_positive_probability(),
                 " is not in (0, 1)");
    }
    if (b.counter_bits() != 0 && b.counter_bits() != 8 && b.counter_bits() != 16 &&
        b.counter_bits() != 32) {
      return bad("bloom_filter.counter_bits ", b.counter_bits(), " is not 8, 16 or 32");
    }
    // Counters saturate: a count they cannot hold would never admit.
    const int bits = b.counter_bits() == 0 ? 8 : b.counter_bits();
    const int64_t most = bits == 32 ? int64_t{0xffffffff} : (int64_t{1} << bits) - 1;
    if (b.filter_freq() > most) {
      return bad("bloom_filter.filter_freq ", b.filter_freq(), " exceeds what ", bits,
                 "-bit counters hold (", most, ")");
    }
  }
  if (!std::isfinite(s.default_value_no_permission())) {
    return bad("default_value_no_permission is not finite");
  }
  if (s.steps_to_live() < 0) return bad("steps_to_live ", s.steps_to_live(), " is negative");
  if (!(std::isfinite(s.l2_weight_threshold()) && s.l2_weight_threshold() >= 0)) {
    return bad("l2_weight_threshold ", s.l2_weight_threshold(), " is not finite and >= 0");
  }
  if (s.part_memory_limit_bytes() < 0) {
    return bad("part_memory_limit_bytes ", s.part_memory_limit_bytes(), " is negative");
  }
  return PlanKeyedInitializer(o.initializer, o.dtype, o.dim, o.name).status();
}

absl::StatusOr<std::unique_ptr<EmbeddingTable>> EmbeddingTable::Create(
    EmbeddingTableOptions options, MemoryAccountant* memory) {
  PSD_RETURN_IF_ERROR(Validate(options));
  if (options.key_dtype == DT_INVALID) options.key_dtype = DT_INT64;
  options.spec.set_embedding_dim(options.dim);
  PSD_ASSIGN_OR_RETURN(
      InitializerPlan plan,
      PlanKeyedInitializer(options.initializer, options.dtype, options.dim, options.name));
  std::unique_ptr<CountingBloom> bloom;
  if (options.spec.has_bloom_filter()) {
    PSD_ASSIGN_OR_RETURN(bloom, CountingBloom::Create(options.spec.bloom_filter(), options.name));
  }
  auto impl = std::make_shared<Impl>(std::move(options), memory, plan, std::move(bloom));
  PSD_RETURN_IF_ERROR(impl->ChargeCreation());
  return std::unique_ptr<EmbeddingTable>(new EmbeddingTable(std::move(impl)));
}

EmbeddingTable::EmbeddingTable(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
EmbeddingTable::~EmbeddingTable() = default;

const EmbeddingTableOptions& EmbeddingTable::options() const { return impl_->options(); }
absl::StatusOr<int> EmbeddingTable::AddSlot(const std::string& slot_name,
                                            const InitializerSpec& initializer) {
  return impl_->AddSlot(slot_name, initializer);
}
int EmbeddingTable::FindSlot(absl::string_view slot_name) const {
  return impl_->FindSlot(slot_name);
}
absl::Status EmbeddingTable::RemoveSlot(absl::string_view slot_name) {
  return impl_->RemoveSlot(slot_name);
}
std::vector<std::string> EmbeddingTable::slot_names() const { return impl_->slot_names(); }

absl::Status EmbeddingTable::Lookup(absl::Span<const int64_t> keys, int column,
                                    const EmbeddingLookupOptions& options, void* out,
                                    EmbeddingUpdateResult* result) {
  return impl_->Lookup(keys, column, options, out, result);
}
absl::Status EmbeddingTable::Scatter(UpdateKind op, absl::Span<const int64_t> keys,
                                     const void* rows, bool rows_is_scalar, int64_t global_step,
                                     EmbeddingUpdateResult* result) {
  return impl_->Scatter(op, keys, rows, rows_is_scalar, global_step, result);
}
absl::Status EmbeddingTable::ApplyOptimizer(const OptimizerParams& params,
                                            absl::Span<const int> slot_columns,
                                            absl::Span<const int64_t> keys, const void* grads,
                                            int64_t global_step, EmbeddingUpdateResult* result) {
  return impl_->ApplyOptimizer(params, slot_columns, keys, grads, global_step, result);
}
absl::StatusOr<int64_t> EmbeddingTable::DeleteKeys(absl::Span<const int64_t> keys) {
  return impl_->DeleteKeys(keys);
}
absl::StatusOr<int64_t> EmbeddingTable::Evict(int64_t global_step) {
  return impl_->Evict(global_step);
}
absl::Status EmbeddingTable::Import(absl::Span<const int64_t> keys, const void* values,
                                    absl::Span<const int> slot_columns,
                                    absl::Span<const void* const> slot_values,
                                    absl::Span<const int64_t> freqs,
                                    absl::Span<const int64_t> versions) {
  return impl_->Import(keys, values, slot_columns, slot_values, freqs, versions);
}

absl::Status EmbeddingTable::ImportSlot(int column, absl::Span<const int64_t> keys,
                                        const void* values) {
  return impl_->ImportSlot(column, keys, values);
}
std::shared_ptr<EmbeddingSnapshot> EmbeddingTable::Pin() {
  return std::make_shared<Impl::Snapshot>(impl_, impl_->Pin());
}
EmbeddingMoveCut EmbeddingTable::PinForMove() {
  EmbeddingMoveCut cut;
  std::unique_ptr<SnapshotState> state = impl_->PinForMove(&cut);
  cut.rows = std::make_shared<Impl::Snapshot>(impl_, std::move(state));
  return cut;
}
uint64_t EmbeddingTable::move_epoch() const { return impl_->move_epoch(); }
void EmbeddingTable::Retire() { impl_->Retire(); }
bool EmbeddingTable::retired() const { return impl_->retired(); }
void EmbeddingTable::SetEvictionAllowed(bool allowed) { impl_->SetEvictionAllowed(allowed); }
absl::Status EmbeddingTable::ImportPending(absl::Span<const int64_t> keys,
                                           absl::Span<const int64_t> counts) {
  return impl_->ImportPending(keys, counts);
}
absl::Status EmbeddingTable::ImportBloom(int64_t offset, absl::string_view bytes) {
  return impl_->ImportBloom(offset, bytes);
}
EmbeddingStats EmbeddingTable::Stats() const { return impl_->Stats(); }
int64_t EmbeddingTable::bytes() const { return impl_->bytes(); }
int64_t EmbeddingTable::rows() const { return impl_->rows(); }

}  // namespace psd
