#include "checkpoint/tensor_bundle.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/table_builder.h"
#include "checkpoint/tensor_slice.h"
#include "psd/status.h"

namespace psd::checkpoint {
namespace {

// Printable form of a key for messages (slice keys hold binary bytes).
std::string KeyForMessage(absl::string_view key) {
  if (IsSliceKey(key)) {
    std::string name;
    TensorSlice slice;
    if (DecodeTensorNameSlice(key, &name, &slice).ok()) {
      return absl::StrCat(name, " (slice ", slice.ToString(), ")");
    }
  }
  return absl::CEscape(key);
}

absl::Status CheckNoOverlap(absl::string_view name, const TensorShape& shape,
                            const tf::BundleEntryProto& entry) {
  std::vector<TensorSlice> slices;
  for (const auto& sp : entry.slices()) {
    auto s = TensorSlice::FromProto(sp);
    if (!s.ok()) return s.status();
    PSD_RETURN_IF_ERROR(s->CheckFits(shape));
    slices.push_back(s->Resolved(shape));
  }
  for (size_t i = 0; i < slices.size(); ++i) {
    for (size_t j = i + 1; j < slices.size(); ++j) {
      TensorSlice overlap;
      if (TensorSlice::Intersect(slices[i], slices[j], &overlap)) {
        return absl::InvalidArgumentError(absl::StrCat("slices ", slices[i].ToString(), " and ",
                                                       slices[j].ToString(), " of tensor ", name,
                                                       " overlap"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string IndexFilename(absl::string_view prefix) { return absl::StrCat(prefix, ".index"); }

std::string DataFilename(absl::string_view prefix, int shard_id, int num_shards) {
  return absl::StrFormat("%s.data-%05d-of-%05d", prefix, shard_id, num_shards);
}

tf::BundleHeaderProto MakeBundleHeader(int num_shards) {
  tf::BundleHeaderProto header;
  header.set_num_shards(num_shards);
  header.set_endianness(tf::BundleHeaderProto::LITTLE);
  header.mutable_version()->set_producer(kTensorBundleVersion);
  header.mutable_version()->set_min_consumer(kTensorBundleMinConsumer);
  return header;
}

absl::Status CheckBundleVersion(const tf::VersionDef& version, absl::string_view what) {
  if (version.producer() < kTensorBundleMinProducer) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": checkpoint producer version ", version.producer(),
        " is below the minimum producer ", kTensorBundleMinProducer, " this program supports"));
  }
  if (version.min_consumer() > kTensorBundleVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": checkpoint needs a reader of version ", version.min_consumer(),
                     " or later; this program reads version ", kTensorBundleVersion));
  }
  for (int bad : version.bad_consumers()) {
    if (bad == kTensorBundleVersion) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": checkpoint disallows reader version ", kTensorBundleVersion));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<BundleEntries> MergeBundleIndexes(int num_shards,
                                                 absl::Span<const BundleShardIndex> parts) {
  if (num_shards < 1) return absl::InvalidArgumentError("num_shards must be at least 1");
  BundleEntries merged;
  for (const BundleShardIndex& part : parts) {
    if (part.shard_id < 0 || part.shard_id >= num_shards) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard id ", part.shard_id, " outside [0, ", num_shards, ")"));
    }
    for (const auto& [key, entry] : part.entries) {
      if (key.empty())
        return absl::InvalidArgumentError("an index entry has the header's key \"\"");
      if (entry.slices_size() == 0 && entry.shard_id() != part.shard_id) {
        return absl::InvalidArgumentError(absl::StrCat("entry ", KeyForMessage(key), " of shard ",
                                                       part.shard_id, " points at data file ",
                                                       entry.shard_id()));
      }
      auto it = merged.find(key);
      if (it == merged.end()) {
        merged.emplace(key, entry);
        continue;
      }
      tf::BundleEntryProto& existing = it->second;
      if (existing.slices_size() == 0 || entry.slices_size() == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("Duplicate tensor keyed by ", KeyForMessage(key), " encountered"));
      }
      if (existing.dtype() != entry.dtype() ||
          existing.shape().SerializeAsString() != entry.shape().SerializeAsString()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the parts of sliced tensor ", key, " disagree on dtype or shape"));
      }
      for (const auto& s : entry.slices()) *existing.add_slices() = s;
    }
  }
  // Overlapping parts would make a restore ambiguous; TensorFlow crashes on them.
  for (const auto& [key, entry] : merged) {
    if (entry.slices_size() < 2) continue;
    PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromBundleProto(entry.shape(), key));
    PSD_RETURN_IF_ERROR(CheckNoOverlap(key, shape, entry));
  }
  return merged;
}

absl::Status WriteBundleIndex(FileSystem* fs, absl::string_view prefix, int num_shards,
                              const BundleEntries& entries) {
  if (fs == nullptr) fs = FileSystem::Default();
  if (num_shards < 1) return absl::InvalidArgumentError("num_shards must be at least 1");
  if (entries.count("") > 0) {
    return absl::InvalidArgumentError("an index entry has the header's key \"\"");
  }
  const std::string path = IndexFilename(prefix);
  const std::string temp = TempFileName(path);
  absl::Status s = [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs->NewWritableFile(temp));
    table::TableBuilder builder(table::TableOptions(), file.get());
    // The empty key sorts first: the header leads the table.
    PSD_RETURN_IF_ERROR(builder.Add("", MakeBundleHeader(num_shards).SerializeAsString()));
    std::string value;
    for (const auto& [key, entry] : entries) {
      value.clear();
      if (!entry.SerializeToString(&value)) {
        return absl::InternalError("cannot serialize the entry of " + KeyForMessage(key));
      }
      PSD_RETURN_IF_ERROR(builder.Add(key, value));
    }
    PSD_RETURN_IF_ERROR(builder.Finish());
    PSD_RETURN_IF_ERROR(file->Sync());
    PSD_RETURN_IF_ERROR(file->Close());
    return fs->RenameFile(temp, path);
  }();
  if (!s.ok()) {
    fs->DeleteFile(temp).IgnoreError();
    return s;
  }
  s = fs->SyncDir(DirName(path));
  if (!s.ok()) {
    // The caller will report the save as failed, so the checkpoint must not
    // stay visible.
    fs->DeleteFile(path).IgnoreError();
  }
  return s;
}

absl::Status WriteMergedIndex(FileSystem* fs, absl::string_view prefix, int num_shards,
                              absl::Span<const BundleShardIndex> parts) {
  PSD_ASSIGN_OR_RETURN(BundleEntries entries, MergeBundleIndexes(num_shards, parts));
  return WriteBundleIndex(fs, prefix, num_shards, entries);
}

absl::StatusOr<TensorShape> ShapeFromBundleProto(const tf::TensorShapeProto& proto,
                                                 absl::string_view what) {
  if (proto.unknown_rank()) {
    return absl::DataLossError(absl::StrCat(what, ": stored shape has unknown rank"));
  }
  std::vector<int64_t> dims;
  dims.reserve(proto.dim_size());
  for (const auto& d : proto.dim()) dims.push_back(d.size());
  auto shape = TensorShape::Make(dims, what);
  if (!shape.ok()) return absl::DataLossError(shape.status().message());
  return shape;
}

void ShapeToBundleProto(const TensorShape& shape, tf::TensorShapeProto* proto) {
  proto->Clear();
  for (int64_t d : shape.dims()) proto->add_dim()->set_size(d);
}

std::string BundleDataTypeName(int dtype) {
  switch (dtype) {
    case 8:
      return "complex64";
    case 11:
      return "qint8";
    case 12:
      return "quint8";
    case 13:
      return "qint32";
    case 15:
      return "qint16";
    case 16:
      return "quint16";
    case 17:
      return "uint16";
    case 18:
      return "complex128";
    case 20:
      return "resource";
    case 21:
      return "variant";
    case 22:
      return "uint32";
    case 23:
      return "uint64";
    default:
      return DataTypeName(dtype);
  }
}

}  // namespace psd::checkpoint
