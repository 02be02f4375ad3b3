// What the bundle writer, the bundle reader and the coordinator share about
// TensorFlow's V2 checkpoint ("tensor bundle") layout: file names, format
// versions, the per-data-file index metadata a shard hands to the
// coordinator, and the merge of that metadata into one published .index.
// Format: specs/tf-checkpoint-format.md §1.
//
// A sharded save, as the coordinator will drive it:
//
//   // on shard k of n, in parallel:
//   BundleWriter::Options options;
//   options.shard_id = k;
//   options.num_shards = n;
//   PSD_ASSIGN_OR_RETURN(auto w, BundleWriter::Create(prefix, options));
//   ... w->Add / w->AddSlice / w->BeginTensor + AppendData + EndTensor ...
//   PSD_ASSIGN_OR_RETURN(BundleShardIndex part, w->FinishData());
//   // on the coordinator, once every shard's data file is published:
//   PSD_RETURN_IF_ERROR(WriteMergedIndex(fs, prefix, n, parts));
//
// Free functions; thread-safe.
#ifndef PSD_COMMON_CHECKPOINT_TENSOR_BUNDLE_H_
#define PSD_COMMON_CHECKPOINT_TENSOR_BUNDLE_H_

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "checkpoint/file_system.h"
#include "psd/tensor.h"
#include "psd/tensor_bundle.pb.h"

namespace psd::checkpoint {

// kTensorBundleVersion etc. of tensor_bundle.h in TensorFlow: what we write
// (producer 1, min_consumer 0) and what we accept.
constexpr int kTensorBundleVersion = 1;
constexpr int kTensorBundleMinProducer = 0;
constexpr int kTensorBundleMinConsumer = 0;

// "PREFIX.index".
std::string IndexFilename(absl::string_view prefix);
// "PREFIX.data-00003-of-00008".
std::string DataFilename(absl::string_view prefix, int shard_id, int num_shards);

// Index entries (tensor names and slice keys, no header), sorted bytewise.
using BundleEntries = std::map<std::string, tf::BundleEntryProto>;

// The index metadata of one data file, as a shard's BundleWriter returns it.
// Every plain and slice entry in it has shard_id == this shard_id.
struct BundleShardIndex {
  int shard_id = 0;
  BundleEntries entries;
};

// The header TensorFlow writes: num_shards, little-endian, version
// {producer: 1}.
tf::BundleHeaderProto MakeBundleHeader(int num_shards);
// INVALID_ARGUMENT if a reader at kTensorBundleVersion must reject
// `version` (TensorFlow's CheckVersions); `what` names the file.
absl::Status CheckBundleVersion(const tf::VersionDef& version, absl::string_view what);

// Merges per-data-file metadata as TensorFlow's MergeBundles does: the
// entry of a sliced tensor collects the slices of every part (dtype and
// shape must agree), anything else appearing twice is INVALID_ARGUMENT
// "Duplicate tensor keyed by ...", as are overlapping slices and shard ids
// outside [0, num_shards).
absl::StatusOr<BundleEntries> MergeBundleIndexes(int num_shards,
                                                 absl::Span<const BundleShardIndex> parts);

// Publishes PREFIX.index holding the header and `entries`: written to a temp
// file, fsynced, renamed into place, then the directory is fsynced. On
// failure the temp file is removed and no .index appears. `fs` null means
// FileSystem::Default().
absl::Status WriteBundleIndex(FileSystem* fs, absl::string_view prefix, int num_shards,
                              const BundleEntries& entries);

// MergeBundleIndexes, then WriteBundleIndex: the coordinator's last step of a
// sharded save, once every data file is published.
absl::Status WriteMergedIndex(FileSystem* fs, absl::string_view prefix, int num_shards,
                              absl::Span<const BundleShardIndex> parts);

// The in-memory shape of a stored TensorShapeProto; DATA_LOSS for unknown
// rank or negative dimensions (a checkpoint stores fully defined shapes).
absl::StatusOr<TensorShape> ShapeFromBundleProto(const tf::TensorShapeProto& proto,
                                                 absl::string_view what);
// Always sets every dim's size (never a name), as TensorFlow does.
void ShapeToBundleProto(const TensorShape& shape, tf::TensorShapeProto* proto);

// TensorFlow's dtype names ("float32", "complex64", ...), including dtypes
// psd does not store, for listings of foreign checkpoints.
std::string BundleDataTypeName(int dtype);

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_TENSOR_BUNDLE_H_
