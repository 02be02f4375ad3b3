// Reads a TensorFlow V2 checkpoint ("tensor bundle"), whoever wrote it: psd
// or TensorFlow. Open() parses and checks PREFIX.index (footer, every block
// CRC, header, version); reads check each tensor's size and CRC and assemble
// partitioned (sliced) tensors, or any slice of them, from whatever slices
// were stored, so a checkpoint restores into a different partitioning.
//
//   PSD_ASSIGN_OR_RETURN(auto reader, BundleReader::Open("/ckpt/model-100"));
//   for (const auto& info : reader->ListTensors()) ...;  // slice keys hidden
//   PSD_ASSIGN_OR_RETURN(Tensor emb, reader->ReadTensor("emb"));
//   PSD_ASSIGN_OR_RETURN(Tensor rows, reader->ReadSlice("emb", *TensorSlice::Parse("2,2:-")));
//
// Damage is DATA_LOSS naming the file and the tensor. A V1 checkpoint (a
// single file named PREFIX) is refused with FAILED_PRECONDITION "V1
// checkpoint format is not supported".
//
// Thread-safe: all reads are const and may run concurrently.
#ifndef PSD_COMMON_CHECKPOINT_BUNDLE_READER_H_
#define PSD_COMMON_CHECKPOINT_BUNDLE_READER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/file_system.h"
#include "checkpoint/tensor_bundle.h"
#include "checkpoint/tensor_slice.h"
#include "psd/tensor.h"

namespace psd::checkpoint {

class BundleReader {
 public:
  // What a listing shows of one tensor.
  struct TensorInfo {
    std::string name;
    // TensorFlow's numbering; may be a dtype psd does not store (complex64,
    // ...), which lists but does not read.
    int dtype = 0;
    TensorShape shape;
    // Empty unless the tensor was saved in slices (a partitioned variable).
    std::vector<TensorSlice> slices;
  };

  // `fs` null means FileSystem::Default(); it must outlive the reader.
  static absl::StatusOr<std::unique_ptr<BundleReader>> Open(absl::string_view prefix,
                                                            FileSystem* fs = nullptr);
  BundleReader(const BundleReader&) = delete;
  BundleReader& operator=(const BundleReader&) = delete;

  const std::string& prefix() const { return prefix_; }
  const tf::BundleHeaderProto& header() const { return header_; }
  // Every entry by key, slice keys included (what a merge or a copy needs).
  const BundleEntries& entries() const { return entries_; }

  // Every tensor by name, sorted, slice keys hidden (like TensorFlow's
  // CheckpointReader and tf.train.list_variables).
  std::vector<TensorInfo> ListTensors() const;
  // DATA_LOSS (or NOT_FOUND for a missing file) naming the data file and a
  // tensor when a data file the index refers to is missing or shorter than
  // its entries need: what reading would find, without reading the data.
  absl::Status CheckDataFiles() const;
  bool Contains(absl::string_view name) const;
  // NOT_FOUND "... not found in checkpoint" for unknown names.
  absl::StatusOr<TensorInfo> GetTensorInfo(absl::string_view name) const;

  // The whole tensor; a sliced one is assembled from its slices (NOT_FOUND if
  // they do not cover it).
  absl::StatusOr<Tensor> ReadTensor(absl::string_view name) const;
  // Part `slice` of tensor `name`, from the whole stored tensor or from every
  // stored slice that overlaps it.
  absl::StatusOr<Tensor> ReadSlice(absl::string_view name, const TensorSlice& slice) const;

  // Streams the stored bytes of the entry under `key` (a tensor name or a
  // slice key; fixed-size dtypes only) to `sink` in chunks of at most
  // `chunk_bytes`, without holding the tensor in memory. The CRC is known
  // only at the end: if this returns DATA_LOSS after the sink saw every
  // chunk, the caller must discard what it received.
  absl::Status ReadEntryChunked(absl::string_view key, size_t chunk_bytes,
                                const std::function<absl::Status(absl::string_view)>& sink) const;

 private:
  BundleReader(FileSystem* fs, std::string prefix);
  absl::Status LoadIndex();
  absl::StatusOr<const tf::BundleEntryProto*> FindEntry(absl::string_view key) const;
  absl::StatusOr<const RandomAccessFile*> DataFile(int shard_id) const;
  // Reads one stored (unsliced) entry: `what` names the tensor in errors.
  // Checks a stored entry read as a tensor of `shape` before anything of
  // its size is allocated: offset and size not negative, the size the shape
  // needs (at least one byte per string), and bytes inside its data file,
  // so a damaged index cannot make a read allocate more than the files
  // hold. DATA_LOSS naming `what` otherwise.
  absl::Status CheckEntry(const tf::BundleEntryProto& entry, const TensorShape& shape,
                          absl::string_view what) const;
  absl::Status CheckInDataFile(const tf::BundleEntryProto& entry, absl::string_view what) const;
  absl::StatusOr<Tensor> ReadEntry(const tf::BundleEntryProto& entry, absl::string_view what) const;
  absl::StatusOr<Tensor> ReadStrings(const tf::BundleEntryProto& entry, const TensorShape& shape,
                                     absl::string_view what) const;
  absl::Status ReadBytes(const tf::BundleEntryProto& entry, uint64_t offset, size_t n, char* dst,
                         absl::string_view what) const;
  absl::Status ChecksumError(const tf::BundleEntryProto& entry, uint32_t actual,
                             absl::string_view what) const;

  FileSystem* const fs_;
  const std::string prefix_;
  tf::BundleHeaderProto header_;
  BundleEntries entries_;

  mutable absl::Mutex mu_;
  // Data files by shard id, opened on first use. Not a vector sized by the
  // header's num_shards: a damaged header may claim billions.
  mutable std::map<int, std::unique_ptr<RandomAccessFile>> data_files_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_BUNDLE_READER_H_
