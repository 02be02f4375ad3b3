#include "coordinator/placement.h"

#include <algorithm>
#include <limits>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
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

absl::StatusOr<std::vector<int32_t>> PlacePartsByRoom(absl::Span<const int64_t> part_bytes,
                                                      const std::map<int32_t, int64_t>& free_bytes,
                                                      ShardLoad* load) {
  if (load->empty()) {
    return absl::UnavailableError("no live shard to place variables on");
  }
  int64_t roomiest = 0;
  for (const auto& [id, bytes] : *load) {
    if (auto it = free_bytes.find(id); it != free_bytes.end()) {
      roomiest = std::max(roomiest, it->second);
    }
  }
  std::map<int32_t, double> room;
  for (const auto& [id, bytes] : *load) {
    auto it = free_bytes.find(id);
    // A full shard still takes parts when every shard is full, last.
    const int64_t r = it == free_bytes.end() ? std::max<int64_t>(roomiest, 1) : it->second;
    room[id] = static_cast<double>(std::max<int64_t>(r, 1));
  }
  std::vector<int32_t> shards;
  shards.reserve(part_bytes.size());
  for (int64_t bytes : part_bytes) {
    auto best = load->end();
    double best_share = 0;
    for (auto it = load->begin(); it != load->end(); ++it) {
      const double share = static_cast<double>(it->second + bytes) / room[it->first];
      if (best == load->end() || share < best_share) {
        best = it;
        best_share = share;
      }
    }
    best->second += bytes;
    shards.push_back(best->first);
  }
  return shards;
}

absl::StatusOr<std::vector<int32_t>> PlaceBackups(int32_t primary, int64_t part_bytes,
                                                  int backups,
                                                  const std::map<int32_t, std::string>& hosts,
                                                  ShardLoad* load) {
  const int others = static_cast<int>(load->size()) - (load->count(primary) > 0 ? 1 : 0);
  if (backups > others) {
    return absl::UnavailableError(absl::StrCat(
        backups + 1, " replicas need ", backups + 1, " live shards; ", others + 1,
        others + 1 == 1 ? " is" : " are", " available"));
  }
  // A shard without a host is a host of its own: named by its id, which no
  // host name can be (host names have no '#').
  const auto host_of = [&](int32_t id) {
    auto it = hosts.find(id);
    return it == hosts.end() || it->second.empty() ? absl::StrCat("#", id) : it->second;
  };
  std::set<std::string> used_hosts = {host_of(primary)};
  std::set<int32_t> used_shards = {primary};
  std::vector<int32_t> chosen;
  for (int b = 0; b < backups; ++b) {
    auto best = load->end();
    bool best_new_host = false;
    for (auto it = load->begin(); it != load->end(); ++it) {
      if (used_shards.count(it->first) > 0) continue;
      const bool new_host = used_hosts.count(host_of(it->first)) == 0;
      // A new host first; then the least loaded (std::map order: the
      // lowest id on a tie).
      if (best == load->end() || (new_host && !best_new_host) ||
          (new_host == best_new_host && it->second < best->second)) {
        best = it;
        best_new_host = new_host;
      }
    }
    best->second += part_bytes;
    used_shards.insert(best->first);
    used_hosts.insert(host_of(best->first));
    chosen.push_back(best->first);
  }
  return chosen;
}

int64_t EstimatedBytes(DataType dtype, int64_t num_elements, int64_t bytes_per_string_element) {
  const int64_t element =
      dtype == DT_STRING ? bytes_per_string_element : static_cast<int64_t>(DataTypeSize(dtype));
  int64_t bytes = 0;
  // Saturates: a size past any cap is refused by whoever asked, never
  // wrapped into a small or negative one.
  if (num_elements < 0 || element < 0 || __builtin_mul_overflow(num_elements, element, &bytes)) {
    return std::numeric_limits<int64_t>::max();
  }
  return bytes;
}

int64_t NominalTablePartBytes(DataType dtype, int64_t embedding_dim) {
  const int64_t row = EstimatedBytes(dtype, embedding_dim);
  int64_t bytes = 0;
  if (row > std::numeric_limits<int64_t>::max() - 8 ||
      __builtin_mul_overflow(kNominalTableRowsPerPart, row + 8, &bytes)) {
    return std::numeric_limits<int64_t>::max();
  }
  return bytes;
}

}  // namespace psd
