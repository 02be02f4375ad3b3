// Writes a TensorFlow V2 checkpoint ("tensor bundle"): tensor bytes appended
// to PREFIX.data-<shard>-of-<num_shards> in call order, each with its masked
// CRC32C, and the sorted PREFIX.index table, all byte-identical to what
// TensorFlow's BundleWriter produces for the same calls.
//
// Single writer (a whole checkpoint from one process):
//
//   PSD_ASSIGN_OR_RETURN(auto writer, BundleWriter::Create("/ckpt/model-100"));
//   PSD_RETURN_IF_ERROR(writer->Add("global_step", Tensor::Scalar<int64_t>(100)));
//   PSD_RETURN_IF_ERROR(writer->AddSlice("emb", {10, 3}, *TensorSlice::Parse("0,5:0,3"), part0));
//   PSD_RETURN_IF_ERROR(writer->Finish());  // data file, then index
//
// A big tensor can be streamed in chunks without a second copy; the CRC is
// computed as the bytes go by:
//
//   PSD_RETURN_IF_ERROR(writer->BeginTensor("w", DT_FLOAT, {1 << 28}));
//   for (chunk : chunks) PSD_RETURN_IF_ERROR(writer->AppendData(chunk));
//   PSD_RETURN_IF_ERROR(writer->EndTensor());
//
// One data file of a sharded save: FinishData() publishes only the data file
// and returns its index metadata for the coordinator (see tensor_bundle.h).
//
// Publication is crash-safe: files are written under temp names, fsynced and
// renamed into place, data before index, then the directory is fsynced, so a
// visible .index always means a complete checkpoint. If anything fails, or
// the writer is destroyed unfinished, its temp files are removed.
//
// Thread-compatible: one thread drives a writer.
#ifndef PSD_COMMON_CHECKPOINT_BUNDLE_WRITER_H_
#define PSD_COMMON_CHECKPOINT_BUNDLE_WRITER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "checkpoint/file_system.h"
#include "checkpoint/tensor_bundle.h"
#include "checkpoint/tensor_slice.h"
#include "psd/tensor.h"

namespace psd::checkpoint {

class BundleWriter {
 public:
  struct Options {
    // Null means FileSystem::Default(). Must outlive the writer.
    FileSystem* fs = nullptr;
    // This writer's data file among the checkpoint's `num_shards`.
    int shard_id = 0;
    int num_shards = 1;
  };

  // Opens the temp data file. The directory of `prefix` must exist.
  static absl::StatusOr<std::unique_ptr<BundleWriter>> Create(absl::string_view prefix,
                                                              const Options& options);
  static absl::StatusOr<std::unique_ptr<BundleWriter>> Create(absl::string_view prefix) {
    return Create(prefix, Options());
  }
  BundleWriter(const BundleWriter&) = delete;
  BundleWriter& operator=(const BundleWriter&) = delete;
  // Abort()s unless finished.
  ~BundleWriter();

  // Stores `tensor` under `name`. INVALID_ARGUMENT "Adding duplicate key" if
  // the name was added before; names may not be empty or start with 0x00
  // (that is where slice keys live).
  absl::Status Add(absl::string_view name, const Tensor& tensor);

  // Stores `slice_tensor` as slice `slice` of tensor `full_name`, whose shape
  // is `full_shape`, as TensorFlow stores one part of a partitioned variable:
  // the part's bytes under the slice key, and the slice recorded in the entry
  // of `full_name`. A slice covering the whole tensor is stored as a plain
  // entry. INVALID_ARGUMENT if the slice does not fit, its tensor has the
  // wrong shape, or it overlaps a slice stored before.
  absl::Status AddSlice(absl::string_view full_name, const TensorShape& full_shape,
                        const TensorSlice& slice, const Tensor& slice_tensor);

  // Streaming form of Add / AddSlice for fixed-size dtypes (not DT_STRING):
  // Begin, then AppendData with the row-major little-endian element bytes in
  // as many chunks as wanted, then EndTensor, which fails unless exactly
  // shape x element size bytes were appended. One tensor at a time.
  absl::Status BeginTensor(absl::string_view name, DataType dtype, const TensorShape& shape);
  absl::Status BeginSlice(absl::string_view full_name, DataType dtype,
                          const TensorShape& full_shape, const TensorSlice& slice);
  absl::Status AppendData(absl::string_view bytes);
  absl::Status EndTensor();

  // Publishes the data file, then PREFIX.index. Requires num_shards == 1.
  absl::Status Finish();
  // Publishes only the data file and returns its index metadata, for the
  // coordinator's WriteMergedIndex.
  absl::StatusOr<BundleShardIndex> FinishData();
  // Removes the temp file (and a data file this writer already published
  // but whose checkpoint will not be completed). Idempotent.
  void Abort();

  // The first error; once not OK, every call returns it.
  const absl::Status& status() const { return status_; }
  // Bytes appended to the data file so far.
  int64_t data_bytes() const { return offset_; }
  const std::string& data_path() const { return data_path_; }

 private:
  BundleWriter(FileSystem* fs, std::string prefix, const Options& options);

  // Checks the key and reserves it; the entry's dtype and shape are filled.
  absl::Status StartEntry(std::string key, DataType dtype, const TensorShape& shape);
  // Records a slice in the entry of its full tensor.
  absl::Status RecordSlice(absl::string_view full_name, DataType dtype,
                           const TensorShape& full_shape, const TensorSlice& slice);
  absl::Status CheckSlice(absl::string_view full_name, DataType dtype,
                          const TensorShape& full_shape, const TensorSlice& slice) const;
  absl::Status WriteStrings(const Tensor& tensor, tf::BundleEntryProto* entry);
  // Buffered append to the data file; every byte goes through here.
  absl::Status Write(absl::string_view bytes);
  absl::Status FlushBuffer();
  absl::Status PublishData();
  absl::Status Fail(absl::Status s);

  FileSystem* const fs_;
  const std::string prefix_;
  const Options options_;
  const std::string data_path_;
  const std::string temp_data_path_;
  std::unique_ptr<WritableFile> data_file_;
  absl::Status status_;
  BundleEntries entries_;
  int64_t offset_ = 0;
  std::string buffer_;

  // The tensor being streamed, if any.
  bool streaming_ = false;
  std::string stream_key_;
  int64_t stream_expected_ = 0;
  int64_t stream_written_ = 0;
  uint32_t stream_crc_ = 0;

  bool data_published_ = false;
  bool finished_ = false;
};

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_BUNDLE_WRITER_H_
