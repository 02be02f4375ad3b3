#include "coordinator/partitioners.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "psd/dtype.h"

namespace psd {
namespace {

absl::Status CheckAxis(const TensorShape& shape, int axis) {
  if (axis < 0 || axis >= shape.rank()) {
    return absl::InvalidArgumentError(absl::StrCat("Cannot partition variable along axis ", axis,
                                                   " when shape is only ", PyList(shape.dims())));
  }
  return absl::OkStatus();
}

int64_t ElementBytes(DataType dtype, int64_t bytes_per_string_element) {
  return dtype == DT_STRING ? bytes_per_string_element : static_cast<int64_t>(DataTypeSize(dtype));
}

int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

}  // namespace

std::string PyList(absl::Span<const int64_t> values) {
  return absl::StrCat("[", absl::StrJoin(values, ", "), "]");
}

absl::StatusOr<std::vector<int64_t>> FixedSizePartitions(const TensorShape& shape,
                                                         int64_t num_shards, int axis) {
  if (num_shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("fixed_size_partitioner: num_shards must be positive, got ", num_shards));
  }
  if (absl::Status s = CheckAxis(shape, axis); !s.ok()) return s;
  std::vector<int64_t> partitions(shape.rank(), 1);
  partitions[axis] = std::max<int64_t>(1, std::min(num_shards, shape.dim(axis)));
  return partitions;
}

absl::StatusOr<std::vector<int64_t>> VariableAxisSizePartitions(
    const TensorShape& shape, DataType dtype, const VariableAxisSizeOptions& options) {
  if (options.max_shard_bytes < 1 || options.bytes_per_string_element < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Both max_shard_bytes and bytes_per_string_element must be positive. Currently, "
        "max_shard_bytes is ",
        options.max_shard_bytes, " and bytes_per_string_element is ",
        options.bytes_per_string_element));
  }
  if (options.max_shards.has_value() && *options.max_shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_shards must be positive, got ", *options.max_shards));
  }
  if (absl::Status s = CheckAxis(shape, options.axis); !s.ok()) return s;
  std::vector<int64_t> partitions(shape.rank(), 1);
  const int64_t dim = shape.dim(options.axis);
  if (dim == 0) return partitions;
  int64_t slice_elements = 1;
  for (int i = 0; i < shape.rank(); ++i) {
    if (i != options.axis) slice_elements *= shape.dim(i);
  }
  const int64_t bytes_per_slice =
      slice_elements * ElementBytes(dtype, options.bytes_per_string_element);
  // TensorFlow divides by bytes_per_slice in floating point; a zero-size
  // slice (another dimension is 0) fits any number of times.
  const int64_t slices_per_shard =
      bytes_per_slice == 0 ? dim : std::max<int64_t>(1, options.max_shard_bytes / bytes_per_slice);
  int64_t shards = CeilDiv(dim, slices_per_shard);
  if (options.max_shards.has_value()) shards = std::min(shards, *options.max_shards);
  partitions[options.axis] = shards;
  return partitions;
}

absl::StatusOr<std::vector<int64_t>> MinMaxVariablePartitions(const TensorShape& shape,
                                                              DataType dtype,
                                                              const MinMaxOptions& options) {
  if (options.max_partitions < 1 || options.min_slice_size < 1 ||
      options.bytes_per_string_element < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_max_variable_partitioner: max_partitions, min_slice_size and "
                     "bytes_per_string_element must be positive, got ",
                     options.max_partitions, ", ", options.min_slice_size, " and ",
                     options.bytes_per_string_element));
  }
  if (absl::Status s = CheckAxis(shape, options.axis); !s.ok()) return s;
  const int64_t total_bytes =
      shape.num_elements() * ElementBytes(dtype, options.bytes_per_string_element);
  const int64_t wanted = CeilDiv(total_bytes, options.min_slice_size);
  std::vector<int64_t> partitions(shape.rank(), 1);
  partitions[options.axis] =
      std::max<int64_t>(1, std::min({shape.dim(options.axis), options.max_partitions, wanted}));
  return partitions;
}

absl::StatusOr<std::vector<int64_t>> ComputePartitions(const PartitionerSpec& spec,
                                                       const TensorShape& shape, DataType dtype) {
  switch (spec.kind_case()) {
    case PartitionerSpec::kFixedSize:
      return FixedSizePartitions(shape, spec.fixed_size().num_shards(), spec.fixed_size().axis());
    case PartitionerSpec::kVariableAxisSize: {
      const auto& p = spec.variable_axis_size();
      VariableAxisSizeOptions o;
      o.max_shard_bytes = p.max_shard_bytes();
      o.axis = p.axis();
      if (p.has_bytes_per_string_element())
        o.bytes_per_string_element = p.bytes_per_string_element();
      if (p.has_max_shards()) o.max_shards = p.max_shards();
      return VariableAxisSizePartitions(shape, dtype, o);
    }
    case PartitionerSpec::kMinMax: {
      const auto& p = spec.min_max();
      MinMaxOptions o;
      if (p.has_max_partitions()) o.max_partitions = p.max_partitions();
      o.axis = p.axis();
      if (p.has_min_slice_size()) o.min_slice_size = p.min_slice_size();
      if (p.has_bytes_per_string_element())
        o.bytes_per_string_element = p.bytes_per_string_element();
      return MinMaxVariablePartitions(shape, dtype, o);
    }
    case PartitionerSpec::kExplicitPartitions:
      return std::vector<int64_t>(spec.explicit_partitions().partitions().begin(),
                                  spec.explicit_partitions().partitions().end());
    case PartitionerSpec::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("partitioner spec has no kind set");
}

absl::StatusOr<Slicing> ValidatePartitions(const TensorShape& shape,
                                           absl::Span<const int64_t> partitions) {
  if (shape.rank() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "A partitioned Variable must have rank at least 1: shape: ", PyList(shape.dims())));
  }
  if (static_cast<int>(partitions.size()) != shape.rank()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Partitioner returned a partition list that does not match the Variable's rank: ",
        PyList(partitions), " vs. ", PyList(shape.dims())));
  }
  Slicing slicing;
  bool sliced = false;
  for (int i = 0; i < shape.rank(); ++i) {
    const int64_t n = partitions[i];
    if (n < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("Partitioner returned zero partitions for some axes: ", PyList(partitions)));
    }
    if (n == 1) continue;
    if (shape.dim(i) < n) {
      return absl::InvalidArgumentError(
          absl::StrCat("Cannot create ", n, " slices for size ", shape.dim(i),
                       ". shape: ", PyList(shape.dims()), ", slicing: ", PyList(partitions)));
    }
    if (sliced) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Can only slice a variable along one dimension: slicing: ", PyList(partitions),
          ", full shape: ", PyList(shape.dims())));
    }
    sliced = true;
    slicing.axis = i;
    slicing.num_parts = n;
  }
  return slicing;
}

std::vector<PartSlice> SplitParts(const TensorShape& full_shape, const Slicing& slicing) {
  std::vector<PartSlice> parts;
  if (full_shape.rank() == 0) {
    parts.push_back(PartSlice{{}, full_shape});
    return parts;
  }
  const int64_t dim = full_shape.dim(slicing.axis);
  const int64_t base = dim / slicing.num_parts;
  const int64_t with_extra = dim % slicing.num_parts;
  std::vector<int64_t> offset(full_shape.rank(), 0);
  for (int64_t k = 0; k < slicing.num_parts; ++k) {
    std::vector<int64_t> dims = full_shape.dims();
    dims[slicing.axis] = base + (k < with_extra ? 1 : 0);
    parts.push_back(PartSlice{offset, TensorShape(dims)});
    offset[slicing.axis] += dims[slicing.axis];
  }
  return parts;
}

std::string PartName(const std::string& variable_name, int64_t index) {
  return absl::StrCat(variable_name, "/part_", index);
}

std::string SaveSliceSpec(const TensorShape& full_shape, absl::Span<const int64_t> offset,
                          const TensorShape& part_shape) {
  std::vector<std::string> ranges;
  for (int i = 0; i < full_shape.rank(); ++i) {
    ranges.push_back(absl::StrCat(offset[i], ",", part_shape.dim(i)));
  }
  return absl::StrCat(absl::StrJoin(full_shape.dims(), " "), " ", absl::StrJoin(ranges, ":"));
}

}  // namespace psd
