#include "sparse_merge.h"

#include <cstring>
#include <type_traits>
#include <vector>

#include "psd/dtype.h"
#include "psd/float16.h"

namespace psd {
namespace client {
namespace internal {

MergeKind MergeKindOf(UpdateKind op) {
  return op == UpdateKind::kAssign ? MergeKind::kLastWins : MergeKind::kSum;
}

namespace {

// The distinct indices of a request and where each position's index first
// and last occurs, found by open addressing with Fibonacci hashing (as the
// shard groups an apply_sparse's rows): one pass, no sort.
struct Groups {
  std::vector<int64_t> of;     // per position: its distinct index's number
  std::vector<int64_t> first;  // per distinct index: the position of its first occurrence
  std::vector<int64_t> last;   // per distinct index: the position of its last occurrence
  std::vector<int64_t> count;  // per distinct index: how many positions carry it
};

// An open-addressing table of at least 2n slots (at most half full).
struct TableSize {
  explicit TableSize(int64_t n) {
    while (capacity < 2 * static_cast<size_t>(n)) {
      capacity <<= 1;
      --shift;
    }
  }
  size_t Slot(int64_t index) const {
    return shift >= 64 ? 0
                       : static_cast<size_t>(
                             (static_cast<uint64_t>(index) * 0x9E3779B97F4A7C15ull) >> shift);
  }
  size_t capacity = 1;
  int shift = 64;
};

// Whether an index repeats, or lies outside [0, limit): the fast check a
// request with unique indices pays, one table of keys and nothing else.
template <typename I>
bool MayMerge(const I* indices, int64_t n, int64_t limit) {
  const TableSize size(n);
  std::vector<int64_t> table(size.capacity, -1);  // the index in each slot
  for (int64_t k = 0; k < n; ++k) {
    I raw;
    std::memcpy(&raw, indices + k, sizeof raw);
    const int64_t index = raw;
    if (index < 0 || index >= limit) return false;
    for (size_t slot = size.Slot(index);; slot = (slot + 1) & (size.capacity - 1)) {
      if (table[slot] == index) return true;  // Group checks the rest
      if (table[slot] < 0) {
        table[slot] = index;
        break;
      }
    }
  }
  return false;
}

// False when an index lies outside [0, limit).
template <typename I>
bool Group(const I* indices, int64_t n, int64_t limit, Groups* g) {
  const TableSize size(n);
  std::vector<int64_t> table(size.capacity, -1);  // distinct number per slot
  std::vector<int64_t> keys;                      // per distinct number: its index
  keys.reserve(static_cast<size_t>(n));
  g->first.reserve(static_cast<size_t>(n));
  g->last.reserve(static_cast<size_t>(n));
  g->count.reserve(static_cast<size_t>(n));
  g->of.resize(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    I raw;
    std::memcpy(&raw, indices + k, sizeof raw);
    const int64_t index = raw;
    if (index < 0 || index >= limit) return false;
    size_t slot = size.Slot(index);
    while (true) {
      const int64_t u = table[slot];
      if (u < 0) {
        table[slot] = static_cast<int64_t>(keys.size());
        g->of[k] = static_cast<int64_t>(keys.size());
        keys.push_back(index);
        g->first.push_back(k);
        g->last.push_back(k);
        g->count.push_back(1);
        break;
      }
      if (keys[u] == index) {
        g->of[k] = u;
        g->last[u] = k;
        ++g->count[u];
        break;
      }
      slot = (slot + 1) & (size.capacity - 1);
    }
  }
  return true;
}

template <typename T>
constexpr bool kIsFloat16 = std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// a + b as the shard adds gradients of one index (and as its kernels add
// integers: wrapping).
template <typename T>
T Add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
  } else {
    return a + b;
  }
}

// dst[i] = dst[i] + src[i]: typed, unaliased rows, so the loop vectorizes
// (tensor storage is aligned for its element type).
template <typename T>
void AddRow(T* __restrict dst, const T* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Add(dst[i], src[i]);
}

// out row u = the sum of the rows of positions with distinct number u, in
// position order.
template <typename T>
void SumRows(const Groups& g, const char* in, int64_t row_elements, char* out) {
  const size_t row_bytes = static_cast<size_t>(row_elements) * sizeof(T);
  const int64_t n = static_cast<int64_t>(g.of.size());
  if constexpr (kIsFloat16<T>) {
    // Summed in float, rounded once at the end; rows that occur once are
    // copied bit for bit.
    std::vector<int64_t> sum_of(g.first.size(), -1);
    int64_t summed = 0;
    for (size_t u = 0; u < g.first.size(); ++u) {
      if (g.count[u] > 1) sum_of[u] = summed++;
    }
    std::vector<float> sums(static_cast<size_t>(summed * row_elements));
    for (int64_t k = 0; k < n; ++k) {
      const int64_t u = g.of[k];
      const char* src = in + k * row_bytes;
      if (sum_of[u] < 0) {
        std::memcpy(out + u * row_bytes, src, row_bytes);
        continue;
      }
      float* sum = sums.data() + sum_of[u] * row_elements;
      if (g.first[u] == k) {
        for (int64_t i = 0; i < row_elements; ++i) {
          sum[i] = static_cast<float>(Load<T>(src + i * sizeof(T)));
        }
      } else {
        for (int64_t i = 0; i < row_elements; ++i) {
          sum[i] += static_cast<float>(Load<T>(src + i * sizeof(T)));
        }
      }
    }
    for (size_t u = 0; u < g.first.size(); ++u) {
      if (sum_of[u] < 0) continue;
      const float* sum = sums.data() + sum_of[u] * row_elements;
      char* dst = out + u * row_bytes;
      for (int64_t i = 0; i < row_elements; ++i) {
        const T v(sum[i]);
        std::memcpy(dst + i * sizeof(T), &v, sizeof v);
      }
    }
  } else {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t u = g.of[k];
      const char* src = in + k * row_bytes;
      char* dst = out + u * row_bytes;
      if (g.first[u] == k) {
        std::memcpy(dst, src, row_bytes);
        continue;
      }
      AddRow(reinterpret_cast<T*>(dst), reinterpret_cast<const T*>(src), row_elements);
    }
  }
}

}  // namespace

std::optional<MergedRows> MergeDuplicateRows(const Tensor& indices, const Tensor& rows,
                                             MergeKind kind, int64_t limit) {
  const DataType index_dtype = indices.dtype();
  if (index_dtype != DT_INT32 && index_dtype != DT_INT64) return std::nullopt;
  const int64_t n = indices.num_elements();
  if (n < 2) return std::nullopt;
  const size_t elem_size = DataTypeSize(rows.dtype());
  if (elem_size == 0) return std::nullopt;  // strings, unknown dtypes
  if (kind == MergeKind::kSum && !IsNumeric(rows.dtype())) return std::nullopt;
  // rows.shape == indices.shape + row shape.
  const std::vector<int64_t>& index_dims = indices.shape().dims();
  const std::vector<int64_t>& row_dims = rows.shape().dims();
  if (row_dims.size() < index_dims.size() ||
      !std::equal(index_dims.begin(), index_dims.end(), row_dims.begin())) {
    return std::nullopt;
  }
  int64_t row_elements = 1;
  for (size_t d = index_dims.size(); d < row_dims.size(); ++d) row_elements *= row_dims[d];
  const size_t row_bytes = static_cast<size_t>(row_elements) * elem_size;
  if (rows.bytes().size() != static_cast<size_t>(n) * row_bytes ||
      indices.bytes().size() != static_cast<size_t>(n) * DataTypeSize(index_dtype)) {
    return std::nullopt;
  }

  const char* index_data = indices.bytes().data();
  const bool may_merge =
      index_dtype == DT_INT32
          ? MayMerge(reinterpret_cast<const int32_t*>(index_data), n, limit)
          : MayMerge(reinterpret_cast<const int64_t*>(index_data), n, limit);
  if (!may_merge) return std::nullopt;
  Groups g;
  const bool in_range =
      index_dtype == DT_INT32
          ? Group(reinterpret_cast<const int32_t*>(index_data), n, limit, &g)
          : Group(reinterpret_cast<const int64_t*>(index_data), n, limit, &g);
  if (!in_range) return std::nullopt;
  const int64_t m = static_cast<int64_t>(g.first.size());
  if (m == n) return std::nullopt;  // no duplicate: the request goes as it is

  MergedRows out;
  out.indices = Tensor(index_dtype, TensorShape{m});
  const size_t index_size = DataTypeSize(index_dtype);
  for (int64_t u = 0; u < m; ++u) {
    std::memcpy(out.indices.mutable_bytes()->data() + u * index_size,
                indices.bytes().data() + g.first[u] * index_size, index_size);
  }
  std::vector<int64_t> out_dims = {m};
  out_dims.insert(out_dims.end(), row_dims.begin() + index_dims.size(), row_dims.end());
  out.rows = Tensor(rows.dtype(), TensorShape(std::move(out_dims)));
  const char* in = rows.bytes().data();
  char* dst = out.rows.mutable_bytes()->data();
  if (kind == MergeKind::kLastWins) {
    for (int64_t u = 0; u < m; ++u) {
      std::memcpy(dst + u * row_bytes, in + g.last[u] * row_bytes, row_bytes);
    }
    return out;
  }
  DispatchFixedSize(
      rows.dtype(),
      [&](auto t) {
        using T = decltype(t);
        if constexpr (!std::is_same_v<T, bool>) SumRows<T>(g, in, row_elements, dst);
      },
      [] {});
  return out;
}

}  // namespace internal
}  // namespace client
}  // namespace psd
