// A rectangular part of a tensor, one [start, start + length) extent per
// dimension, as TensorFlow's Saver stores partitioned variables: the slice
// spec strings ("0,5:0,3", "-" for a whole dimension), the TensorSliceProto
// form, and the slice keys under which a slice's data is stored
// (specs/tf-checkpoint-format.md §1.6). Also the copy of the overlap of two
// slices, which restoring into a different partitioning is made of.
//
// A value type; thread-compatible.
#ifndef PSD_COMMON_CHECKPOINT_TENSOR_SLICE_H_
#define PSD_COMMON_CHECKPOINT_TENSOR_SLICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "psd/tensor.h"
#include "psd/tensor_bundle.pb.h"

namespace psd::checkpoint {

class TensorSlice {
 public:
  // Length of an extent that covers its whole dimension.
  static constexpr int64_t kFullExtent = -1;

  TensorSlice() = default;  // rank 0
  // Every dimension full.
  static TensorSlice Full(int rank);
  // Explicit extents (start, length); length kFullExtent means the whole
  // dimension. INVALID_ARGUMENT for negative starts or lengths below -1.
  static absl::StatusOr<TensorSlice> Make(std::vector<int64_t> starts,
                                          std::vector<int64_t> lengths);
  // "0,5:0,3" or "-:100,28"; "" is rank 0.
  static absl::StatusOr<TensorSlice> Parse(absl::string_view spec);
  static absl::StatusOr<TensorSlice> FromProto(const tf::TensorSliceProto& proto);
  // Byte-exact with TensorFlow: a full dimension is an empty extent, a partial
  // one writes start only when non-zero and always writes length.
  void ToProto(tf::TensorSliceProto* proto) const;

  int rank() const { return static_cast<int>(starts_.size()); }
  int64_t start(int d) const { return starts_[d]; }
  int64_t length(int d) const { return lengths_[d]; }
  bool IsFullAt(int d) const { return lengths_[d] == kFullExtent; }
  // The spec string, "-" for full dimensions.
  std::string ToString() const;

  // INVALID_ARGUMENT unless the ranks agree and every extent lies inside
  // `full_shape`.
  absl::Status CheckFits(const TensorShape& full_shape) const;
  // Every extent explicit. REQUIRES: CheckFits(full_shape).ok().
  TensorSlice Resolved(const TensorShape& full_shape) const;
  // The shape of the part. REQUIRES: CheckFits(full_shape).ok().
  TensorShape SliceShape(const TensorShape& full_shape) const;
  // True if the slice covers all of `full_shape`.
  bool CoversAll(const TensorShape& full_shape) const;
  // The overlap of two resolved slices of the same rank; false if empty.
  static bool Intersect(const TensorSlice& a, const TensorSlice& b, TensorSlice* result);

  bool operator==(const TensorSlice& o) const {
    return starts_ == o.starts_ && lengths_ == o.lengths_;
  }
  bool operator!=(const TensorSlice& o) const { return !(*this == o); }

 private:
  TensorSlice(std::vector<int64_t> starts, std::vector<int64_t> lengths)
      : starts_(std::move(starts)), lengths_(std::move(lengths)) {}

  std::vector<int64_t> starts_;
  std::vector<int64_t> lengths_;
};

// The key under which a slice's data is stored: 0x00, the name, the rank,
// then (start, length) per dimension, length -1 for a full dimension; all in
// OrderedCode, so slice keys sort before every tensor name.
std::string EncodeTensorNameSlice(absl::string_view name, const TensorSlice& slice);
// INVALID_ARGUMENT if `key` is not a slice key.
absl::Status DecodeTensorNameSlice(absl::string_view key, std::string* name, TensorSlice* slice);
// True for keys that start like a slice key (byte 0x00).
inline bool IsSliceKey(absl::string_view key) { return !key.empty() && key[0] == '\0'; }

// Copies the elements of `region` from `src` (holding slice `src_slice` of
// the full tensor) into `dst` (holding `dst_slice`). All slices resolved;
// `region` inside both; dtypes equal.
void CopySliceRegion(const Tensor& src, const TensorSlice& src_slice, const TensorSlice& region,
                     const TensorSlice& dst_slice, Tensor* dst);

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_TENSOR_SLICE_H_
