// `psctl ckpt inspect`: a checkpoint's contents listed offline from its
// files, like TensorFlow's inspect_checkpoint. Embedding tables, which a
// checkpoint holds in DeepRec's layout (per part NAME-keys, NAME-values,
// NAME-freqs, NAME-versions, where NAME is the table's name for one part
// and TABLE/part_K for several), are shown as one entry each: name, parts,
// rows, dim, dtypes, and on request a few sample rows.
//
// Stateless functions; thread-safe.
#ifndef PSD_CLIENT_PSCTL_CKPT_INSPECT_H_
#define PSD_CLIENT_PSCTL_CKPT_INSPECT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/bundle_reader.h"

namespace psctl {

struct InspectOptions {
  std::string prefix;
  bool values = false;
  bool verify = false;
  // Only this tensor, or this embedding table.
  std::string tensor;
  int64_t max_values = 10;
  // Sample rows shown per embedding table (key, freq, version, the first
  // max_values values); 0: none.
  int64_t rows = 0;
};

// One embedding table found in a checkpoint.
struct CheckpointTable {
  std::string name;
  // TensorFlow DataType numbers, as BundleReader::TensorInfo gives them.
  decltype(psd::checkpoint::BundleReader::TensorInfo::dtype) dtype{};  // the values'
  decltype(psd::checkpoint::BundleReader::TensorInfo::dtype) key_dtype{};
  int64_t dim = 0;
  int64_t rows = 0;  // over all parts
  // Each part's tensor prefix ("v", or "v/part_K" in K's order) and rows.
  std::vector<std::string> parts;
  std::vector<int64_t> part_rows;
};

// Splits a checkpoint's tensors into embedding tables (a prefix with all
// four of -keys [n], -values [n, dim], -freqs [n], -versions [n]) and the
// other tensors, each in name order.
void GroupTables(const std::vector<psd::checkpoint::BundleReader::TensorInfo>& tensors,
                 std::vector<CheckpointTable>* tables,
                 std::vector<psd::checkpoint::BundleReader::TensorInfo>* others);

// The listing `psctl ckpt inspect` prints (JSON when `json`); an error
// (opening, a bad CRC with --values or --verify, an unknown --tensor) is
// returned before anything is formatted.
absl::StatusOr<std::string> InspectCheckpoint(const InspectOptions& options, bool json);

}  // namespace psctl

#endif  // PSD_CLIENT_PSCTL_CKPT_INSPECT_H_
