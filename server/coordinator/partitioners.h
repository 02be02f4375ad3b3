// Partitioners: how a variable of a given shape and dtype is cut into parts
// along one axis, with TensorFlow's exact part counts
// (fixed_size_partitioner, variable_axis_size_partitioner,
// min_max_variable_partitioner), its validation of a partitions list, and
// its remainder-first split of the partitioned axis.
//
//   PSD_ASSIGN_OR_RETURN(auto partitions, ComputePartitions(spec, shape, dtype));
//   PSD_ASSIGN_OR_RETURN(Slicing slicing, ValidatePartitions(shape, partitions));
//   for (const PartSlice& p : SplitParts(shape, slicing)) ...
//
// Pure functions; thread-safe.
#ifndef PSD_SERVER_COORDINATOR_PARTITIONERS_H_
#define PSD_SERVER_COORDINATOR_PARTITIONERS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "psd/coordinator.pb.h"
#include "psd/tensor.h"

namespace psd {

// TensorFlow's defaults.
inline constexpr int64_t kDefaultBytesPerStringElement = 16;
inline constexpr int64_t kDefaultMinSliceSize = 256 << 10;

// fixed_size_partitioner(num_shards, axis): min(num_shards, shape[axis])
// parts along `axis`.
absl::StatusOr<std::vector<int64_t>> FixedSizePartitions(const TensorShape& shape,
                                                         int64_t num_shards, int axis);

struct VariableAxisSizeOptions {
  int64_t max_shard_bytes = 0;
  int axis = 0;
  int64_t bytes_per_string_element = kDefaultBytesPerStringElement;
  std::optional<int64_t> max_shards;  // unset: no limit
};
// variable_axis_size_partitioner: as many parts as keep each below
// max_shard_bytes, at least one slice of `axis` per part, at most max_shards.
absl::StatusOr<std::vector<int64_t>> VariableAxisSizePartitions(
    const TensorShape& shape, DataType dtype, const VariableAxisSizeOptions& options);

struct MinMaxOptions {
  int64_t max_partitions = 1;
  int axis = 0;
  int64_t min_slice_size = kDefaultMinSliceSize;
  int64_t bytes_per_string_element = kDefaultBytesPerStringElement;
};
// min_max_variable_partitioner: ceil(total bytes / min_slice_size) parts,
// capped by max_partitions and by shape[axis], at least 1.
absl::StatusOr<std::vector<int64_t>> MinMaxVariablePartitions(const TensorShape& shape,
                                                              DataType dtype,
                                                              const MinMaxOptions& options);

// Evaluates any PartitionerSpec (defaults filled in as TensorFlow's).
absl::StatusOr<std::vector<int64_t>> ComputePartitions(const PartitionerSpec& spec,
                                                       const TensorShape& shape, DataType dtype);

// The validated form of a partitions list.
struct Slicing {
  int axis = 0;  // 0 when nothing is sliced (TensorFlow's degenerate case)
  int64_t num_parts = 1;
};

// INVALID_ARGUMENT (TensorFlow's ValueError) for a rank mismatch, a count
// < 1, more parts than the dimension has entries, or more than one sliced
// axis. Scalars cannot be partitioned.
absl::StatusOr<Slicing> ValidatePartitions(const TensorShape& shape,
                                           absl::Span<const int64_t> partitions);

struct PartSlice {
  std::vector<int64_t> offset;
  TensorShape shape;
};

// Contiguous ranges of the sliced axis; the first (dim % num_parts) parts
// get one extra entry: 43 into 3 gives 15, 14, 14.
std::vector<PartSlice> SplitParts(const TensorShape& full_shape, const Slicing& slicing);

// "v/part_3".
std::string PartName(const std::string& variable_name, int64_t index);

// TensorFlow's SaveSliceInfo.spec: the full shape, then "start,length" per
// dimension joined by ':' ("2 4 0,2:2,2").
std::string SaveSliceSpec(const TensorShape& full_shape, absl::Span<const int64_t> offset,
                          const TensorShape& part_shape);

// Python's list formatting, as TensorFlow's messages print partitions and
// shapes: "[2, 1]".
std::string PyList(absl::Span<const int64_t> values);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_PARTITIONERS_H_
