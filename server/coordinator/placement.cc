#include "coordinator/placement.h"

#include "psd/dtype.h"

namespace psd {

absl::StatusOr<std::vector<int32_t>> PlaceParts(absl::Span<const int64_t> part_bytes,
                                                ShardLoad* load) {
  if (load->empty()) {
    return absl::UnavailableError("no live shard to place variables on");
  }
  std::vector<int32_t> shards;
  shards.reserve(part_bytes.size());
  for (int64_t bytes : part_bytes) {
    // std::map iterates in id order, so the first minimum is the lowest id.
    auto best = load->begin();
    for (auto it = load->begin(); it != load->end(); ++it) {
      if (it->second < best->second) best = it;
    }
    best->second += bytes;
    shards.push_back(best->first);
  }
  return shards;
}

int64_t EstimatedBytes(DataType dtype, int64_t num_elements, int64_t bytes_per_string_element) {
  const int64_t element =
      dtype == DT_STRING ? bytes_per_string_element : static_cast<int64_t>(DataTypeSize(dtype));
  return num_elements * element;
}

int64_t NominalTablePartBytes(DataType dtype, int64_t embedding_dim) {
  return kNominalTableRowsPerPart * (8 + embedding_dim * static_cast<int64_t>(DataTypeSize(dtype)));
}

}  // namespace psd
