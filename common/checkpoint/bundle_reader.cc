#include "checkpoint/bundle_reader.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/table_format.h"
#include "checkpoint/table_reader.h"
#include "psd/crc32c.h"
#include "psd/status.h"

namespace psd::checkpoint {
namespace {

// Reads go to the tensor's own buffer in pieces of this size, so the CRC is
// computed while the bytes are still in cache.
constexpr size_t kReadPiece = 8 << 20;

std::string SliceWhat(absl::string_view name, const TensorSlice& slice) {
  return absl::StrCat(name, " (slice ", slice.ToString(), ")");
}

// An index key as messages name it: a slice key as its tensor and slice,
// anything else escaped.
std::string KeyWhat(absl::string_view key) {
  std::string name;
  TensorSlice slice;
  if (IsSliceKey(key) && DecodeTensorNameSlice(key, &name, &slice).ok()) {
    return SliceWhat(name, slice);
  }
  return absl::CEscape(key);
}

}  // namespace

BundleReader::BundleReader(FileSystem* fs, std::string prefix)
    : fs_(fs), prefix_(std::move(prefix)) {}

absl::StatusOr<std::unique_ptr<BundleReader>> BundleReader::Open(absl::string_view prefix,
                                                                 FileSystem* fs) {
  if (fs == nullptr) fs = FileSystem::Default();
  std::unique_ptr<BundleReader> reader(new BundleReader(fs, std::string(prefix)));
  PSD_RETURN_IF_ERROR(reader->LoadIndex());
  return reader;
}

absl::Status BundleReader::LoadIndex() {
  const std::string index_path = IndexFilename(prefix_);
  absl::Status exists = fs_->FileExists(index_path);
  if (absl::IsNotFound(exists)) {
    // V1 checkpoints are one file named exactly PREFIX (TensorFlow's
    // checkpoint_exists falls back to that name too).
    if (fs_->FileExists(prefix_).ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("V1 checkpoint format is not supported: ", prefix_,
                       " is a V1 (TensorSliceWriter) checkpoint; re-save it in the V2 format"));
    }
    return absl::NotFoundError(
        absl::StrCat("no checkpoint at ", prefix_, ": ", index_path, " not found"));
  }
  PSD_RETURN_IF_ERROR(exists);
  PSD_ASSIGN_OR_RETURN(uint64_t size, fs_->GetFileSize(index_path));
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file,
                       fs_->NewRandomAccessFile(index_path));
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<table::Table> table, table::Table::Open(file.get(), size));

  auto corrupt = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("corrupted checkpoint index ", index_path, ": ", why));
  };
  bool have_header = false;
  PSD_RETURN_IF_ERROR(table->ForEach([&](absl::string_view key, absl::string_view value) {
    if (!have_header) {
      if (!key.empty()) return corrupt("the first entry is not the header");
      if (!header_.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
        return corrupt("unparsable header");
      }
      have_header = true;
      return absl::OkStatus();
    }
    tf::BundleEntryProto entry;
    if (!entry.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      return corrupt(absl::StrCat("unparsable entry for key \"", absl::CEscape(key), "\""));
    }
    entries_.emplace(std::string(key), std::move(entry));
    return absl::OkStatus();
  }));
  if (!have_header) return corrupt("no header");
  if (header_.num_shards() < 1) {
    return corrupt(absl::StrCat("header has num_shards ", header_.num_shards()));
  }
  if (header_.endianness() != tf::BundleHeaderProto::LITTLE) {
    return absl::UnimplementedError(
        absl::StrCat(index_path, ": big-endian checkpoints are not supported"));
  }
  PSD_RETURN_IF_ERROR(CheckBundleVersion(header_.version(), index_path));

  // Check every entry once here so that listings cannot fail later.
  for (const auto& [key, entry] : entries_) {
    if (IsSliceKey(key)) continue;
    PSD_ASSIGN_OR_RETURN(TensorShape shape,
                         ShapeFromBundleProto(entry.shape(), absl::StrCat(index_path, ": ", key)));
    for (const auto& sp : entry.slices()) {
      auto slice = TensorSlice::FromProto(sp);
      if (!slice.ok() || !slice->CheckFits(shape).ok()) {
        return corrupt(absl::StrCat("bad slice in the entry of ", key));
      }
      if (entries_.count(EncodeTensorNameSlice(key, *slice)) == 0) {
        return corrupt(absl::StrCat("tensor ", key, " lists slice ", slice->ToString(),
                                    " but its data entry is missing"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<BundleReader::TensorInfo> BundleReader::ListTensors() const {
  std::vector<TensorInfo> out;
  for (const auto& [key, entry] : entries_) {
    if (IsSliceKey(key)) continue;
    TensorInfo info;
    info.name = key;
    info.dtype = entry.dtype();
    info.shape = *ShapeFromBundleProto(entry.shape(), key);  // checked by LoadIndex
    for (const auto& sp : entry.slices()) info.slices.push_back(*TensorSlice::FromProto(sp));
    out.push_back(std::move(info));
  }
  return out;
}

bool BundleReader::Contains(absl::string_view name) const {
  return !IsSliceKey(name) && entries_.count(std::string(name)) > 0;
}

absl::StatusOr<BundleReader::TensorInfo> BundleReader::GetTensorInfo(absl::string_view name) const {
  // Only tensor names were checked by LoadIndex; a slice key's entry may
  // hold anything.
  if (IsSliceKey(name)) {
    return absl::NotFoundError(
        absl::StrCat("Key ", absl::CEscape(name), " not found in checkpoint ", prefix_));
  }
  PSD_ASSIGN_OR_RETURN(const tf::BundleEntryProto* entry, FindEntry(name));
  TensorInfo info;
  info.name = std::string(name);
  info.dtype = entry->dtype();
  info.shape = *ShapeFromBundleProto(entry->shape(), name);
  for (const auto& sp : entry->slices()) info.slices.push_back(*TensorSlice::FromProto(sp));
  return info;
}

absl::StatusOr<const tf::BundleEntryProto*> BundleReader::FindEntry(absl::string_view key) const {
  auto it = entries_.find(std::string(key));
  if (it == entries_.end()) {
    return absl::NotFoundError(
        absl::StrCat("Key ", KeyWhat(key), " not found in checkpoint ", prefix_));
  }
  return &it->second;
}

absl::Status BundleReader::CheckDataFiles() const {
  // Per data file, the entry that reaches furthest into it.
  std::map<int32_t, std::pair<uint64_t, const std::string*>> furthest;
  for (const auto& [key, entry] : entries_) {
    if (entry.slices_size() > 0) continue;  // its slices' entries hold the bytes
    if (entry.offset() < 0 || entry.size() < 0) {
      return absl::DataLossError(
          absl::StrCat("Invalid offset or size in bundle entry: key ", KeyWhat(key)));
    }
    const uint64_t end =
        static_cast<uint64_t>(entry.offset()) + static_cast<uint64_t>(entry.size());
    auto [it, added] = furthest.try_emplace(entry.shard_id(), end, &key);
    if (!added && end > it->second.first) it->second = {end, &key};
  }
  for (const auto& [shard, reach] : furthest) {
    const std::string& key = *reach.second;
    PSD_RETURN_IF_ERROR(CheckInDataFile(entries_.at(key), KeyWhat(key)));
  }
  return absl::OkStatus();
}

absl::StatusOr<const RandomAccessFile*> BundleReader::DataFile(int shard_id) const {
  if (shard_id < 0 || shard_id >= header_.num_shards()) {
    return absl::DataLossError(absl::StrCat("corrupted checkpoint index ", IndexFilename(prefix_),
                                            ": entry points at data file ", shard_id, " of ",
                                            header_.num_shards()));
  }
  absl::MutexLock lock(&mu_);
  std::unique_ptr<RandomAccessFile>& file = data_files_[shard_id];
  if (file == nullptr) {
    const std::string path = DataFilename(prefix_, shard_id, header_.num_shards());
    auto opened = fs_->NewRandomAccessFile(path);
    if (absl::IsNotFound(opened.status())) {
      return absl::DataLossError(absl::StrCat("checkpoint data file ", path, " is missing"));
    }
    if (!opened.ok()) return opened.status();
    file = *std::move(opened);
  }
  return file.get();
}

absl::Status BundleReader::ReadBytes(const tf::BundleEntryProto& entry, uint64_t offset, size_t n,
                                     char* dst, absl::string_view what) const {
  PSD_ASSIGN_OR_RETURN(const RandomAccessFile* file, DataFile(entry.shard_id()));
  absl::string_view got;
  PSD_RETURN_IF_ERROR(file->Read(offset, n, dst, &got));
  if (got.size() != n) {
    return absl::DataLossError(absl::StrCat(
        "truncated checkpoint data file ", file->path(), ": tensor ", what, " needs bytes [",
        offset, ", ", offset + n, "), the file ends at ", offset + got.size()));
  }
  // A zero-byte read may come back without a buffer (memcpy from null is
  // undefined even for 0 bytes).
  if (n > 0 && got.data() != dst) std::memcpy(dst, got.data(), n);
  return absl::OkStatus();
}

absl::Status BundleReader::ChecksumError(const tf::BundleEntryProto& entry, uint32_t actual,
                                         absl::string_view what) const {
  return absl::DataLossError(absl::StrFormat(
      "Checksum does not match: stored %08x vs. calculated on the restored bytes %08x; "
      "tensor %s in checkpoint data file %s",
      crc32c::Unmask(entry.crc32c()), actual, what,
      DataFilename(prefix_, entry.shard_id(), header_.num_shards())));
}

absl::Status BundleReader::CheckEntry(const tf::BundleEntryProto& entry, const TensorShape& shape,
                                      absl::string_view what) const {
  if (entry.offset() < 0 || entry.size() < 0) {
    return absl::DataLossError(absl::StrCat("Invalid offset or size in bundle entry: key ", what));
  }
  const int64_t n = shape.num_elements();
  if (entry.dtype() == DT_STRING) {
    // Every element needs at least a 1-byte length, plus the 4-byte length CRC.
    if (entry.size() < n + (n > 0 ? 4 : 0)) {
      return absl::DataLossError(absl::StrCat("Invalid size in bundle entry: key ", what,
                                              "; stored size ", entry.size(),
                                              " (too small for the element count) in checkpoint ",
                                              prefix_));
    }
  } else {
    // A shape may hold up to 2^62 elements: the byte count can overflow.
    const int64_t elem = static_cast<int64_t>(DataTypeSize(entry.dtype()));
    if (n > std::numeric_limits<int64_t>::max() / elem || entry.size() != n * elem) {
      return absl::DataLossError(absl::StrCat(
          "Invalid size in bundle entry: key ", what, "; stored size ", entry.size(),
          "; expected size ", n, " x ", elem, " in checkpoint ", prefix_));
    }
  }
  return CheckInDataFile(entry, what);
}

absl::Status BundleReader::CheckInDataFile(const tf::BundleEntryProto& entry,
                                           absl::string_view what) const {
  PSD_ASSIGN_OR_RETURN(const RandomAccessFile* file, DataFile(entry.shard_id()));
  PSD_ASSIGN_OR_RETURN(const uint64_t file_size, fs_->GetFileSize(file->path()));
  const uint64_t offset = static_cast<uint64_t>(entry.offset());
  const uint64_t size = static_cast<uint64_t>(entry.size());
  if (offset > file_size || size > file_size - offset) {
    return absl::DataLossError(absl::StrCat("truncated checkpoint data file ", file->path(),
                                            ": tensor ", what, " needs bytes [", offset, ", ",
                                            offset + size, "), the file ends at ", file_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> BundleReader::ReadEntry(const tf::BundleEntryProto& entry,
                                               absl::string_view what) const {
  if (!IsSupportedDataType(entry.dtype())) {
    return absl::UnimplementedError(absl::StrCat("tensor ", what, " has dtype ",
                                                 BundleDataTypeName(entry.dtype()),
                                                 ", which psd does not support"));
  }
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromBundleProto(entry.shape(), what));
  PSD_RETURN_IF_ERROR(CheckEntry(entry, shape, what));
  if (entry.dtype() == DT_STRING) return ReadStrings(entry, shape, what);

  const int64_t expected = entry.size();  // the shape's bytes (CheckEntry)
  Tensor tensor(entry.dtype(), shape);
  char* dst = tensor.mutable_bytes()->data();
  uint32_t crc = 0;
  for (int64_t pos = 0; pos < expected;) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(kReadPiece, expected - pos));
    PSD_RETURN_IF_ERROR(ReadBytes(entry, entry.offset() + pos, n, dst + pos, what));
    crc = crc32c::Extend(crc, dst + pos, n);
    pos += static_cast<int64_t>(n);
  }
  if (crc != crc32c::Unmask(entry.crc32c())) return ChecksumError(entry, crc, what);
  return tensor;
}

absl::StatusOr<Tensor> BundleReader::ReadStrings(const tf::BundleEntryProto& entry,
                                                 const TensorShape& shape,
                                                 absl::string_view what) const {
  const int64_t n = shape.num_elements();
  auto bad_size = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("Invalid size in bundle entry: key ", what,
                                            "; stored size ", entry.size(), " (", why,
                                            ") in checkpoint ", prefix_));
  };
  // CheckEntry made sure the entry's bytes are in its data file.
  std::string buf(static_cast<size_t>(entry.size()), '\0');
  PSD_RETURN_IF_ERROR(ReadBytes(entry, entry.offset(), buf.size(), buf.data(), what));
  Tensor tensor(DT_STRING, shape);
  if (entry.size() == 0) {  // an empty tensor stored with no bytes at all
    if (crc32c::Unmask(entry.crc32c()) != 0) return ChecksumError(entry, 0, what);
    return tensor;
  }
  absl::string_view in = buf;
  std::vector<uint64_t> lengths(static_cast<size_t>(n));
  uint32_t crc = 0;
  uint64_t total = 0;
  for (auto& len : lengths) {
    if (!table::GetVarint64(&in, &len)) return bad_size("bad string length");
    // Bounded by the entry's bytes, so the sum cannot wrap around.
    if (len > buf.size() - total) return bad_size("string lengths exceed the size");
    std::string fixed;
    if (len <= 0xffffffffu) {
      table::PutFixed32(&fixed, static_cast<uint32_t>(len));
    } else {
      table::PutFixed64(&fixed, len);
    }
    crc = crc32c::Extend(crc, fixed);
    total += len;
  }
  if (in.size() < 4) return bad_size("no length checksum");
  const uint32_t stored_length_crc = table::DecodeFixed32(in.data());
  if (crc32c::Unmask(stored_length_crc) != crc) return ChecksumError(entry, crc, what);
  crc = crc32c::Extend(crc, in.data(), 4);
  in.remove_prefix(4);
  if (in.size() != total) return bad_size("string lengths disagree with the size");
  crc = crc32c::Extend(crc, in);
  if (crc != crc32c::Unmask(entry.crc32c())) return ChecksumError(entry, crc, what);
  auto& strings = *tensor.mutable_strings();
  for (size_t i = 0; i < lengths.size(); ++i) {
    strings[i].assign(in.data(), lengths[i]);
    in.remove_prefix(lengths[i]);
  }
  return tensor;
}

absl::StatusOr<Tensor> BundleReader::ReadTensor(absl::string_view name) const {
  PSD_ASSIGN_OR_RETURN(const tf::BundleEntryProto* entry, FindEntry(name));
  if (entry->slices_size() == 0) return ReadEntry(*entry, name);
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromBundleProto(entry->shape(), name));
  return ReadSlice(name, TensorSlice::Full(shape.rank()));
}

absl::StatusOr<Tensor> BundleReader::ReadSlice(absl::string_view name,
                                               const TensorSlice& slice) const {
  if (IsSliceKey(name)) return absl::InvalidArgumentError("ReadSlice takes a tensor name");
  PSD_ASSIGN_OR_RETURN(const tf::BundleEntryProto* entry, FindEntry(name));
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromBundleProto(entry->shape(), name));
  PSD_RETURN_IF_ERROR(slice.CheckFits(shape));
  const TensorSlice want = slice.Resolved(shape);
  const TensorShape want_shape = want.SliceShape(shape);

  if (entry->slices_size() == 0) {
    PSD_ASSIGN_OR_RETURN(Tensor whole, ReadEntry(*entry, name));
    if (slice.CoversAll(shape)) return whole;
    Tensor out(whole.dtype(), want_shape);
    if (out.num_elements() > 0) {
      CopySliceRegion(whole, TensorSlice::Full(shape.rank()).Resolved(shape), want, want, &out);
    }
    return out;
  }

  if (!IsSupportedDataType(entry->dtype())) {
    return absl::UnimplementedError(absl::StrCat("tensor ", name, " has dtype ",
                                                 BundleDataTypeName(entry->dtype()),
                                                 ", which psd does not support"));
  }
  // Every part that overlaps is found and checked (entry, size, bytes in
  // its data file) and the parts must cover the slice exactly before the
  // result is allocated: its size comes from the index, which only the
  // parts' data backs.
  struct Part {
    const tf::BundleEntryProto* entry;
    TensorSlice have, overlap;
    std::string what;
  };
  std::vector<Part> parts;
  int64_t covered = 0;
  for (const auto& sp : entry->slices()) {
    const TensorSlice stored = *TensorSlice::FromProto(sp);  // checked by LoadIndex
    const TensorSlice have = stored.Resolved(shape);
    TensorSlice overlap;
    if (!TensorSlice::Intersect(have, want, &overlap)) continue;
    std::string what = SliceWhat(name, stored);
    PSD_ASSIGN_OR_RETURN(const tf::BundleEntryProto* part_entry,
                         FindEntry(EncodeTensorNameSlice(name, stored)));
    auto part_shape = ShapeFromBundleProto(part_entry->shape(), what);
    if (part_entry->dtype() != entry->dtype() || !part_shape.ok() ||
        *part_shape != have.SliceShape(shape)) {
      return absl::DataLossError(absl::StrCat("corrupted checkpoint index ", IndexFilename(prefix_),
                                              ": the entry of ", what,
                                              " disagrees with the dtype or shape of ", name));
    }
    PSD_RETURN_IF_ERROR(CheckEntry(*part_entry, *part_shape, what));
    covered += overlap.SliceShape(shape).num_elements();
    parts.push_back({part_entry, have, overlap, std::move(what)});
  }
  if (covered < want_shape.num_elements()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", prefix_, " holds only part of slice ",
                                            want.ToString(), " of tensor ", name));
  }
  if (covered > want_shape.num_elements()) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", prefix_, " stores overlapping slices of ", name));
  }
  Tensor out(entry->dtype(), want_shape);
  for (const Part& part : parts) {
    PSD_ASSIGN_OR_RETURN(Tensor value, ReadEntry(*part.entry, part.what));
    CopySliceRegion(value, part.have, part.overlap, want, &out);
  }
  return out;
}

absl::Status BundleReader::ReadEntryChunked(
    absl::string_view key, size_t chunk_bytes,
    const std::function<absl::Status(absl::string_view)>& sink) const {
  PSD_ASSIGN_OR_RETURN(const tf::BundleEntryProto* entry, FindEntry(key));
  const std::string what = KeyWhat(key);
  if (entry->slices_size() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", what, " is stored in slices; stream each slice key instead"));
  }
  if (!IsSupportedDataType(entry->dtype()) || entry->dtype() == DT_STRING) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", what, " of dtype ",
                                                   BundleDataTypeName(entry->dtype()),
                                                   " cannot be streamed; use ReadTensor"));
  }
  if (chunk_bytes == 0) return absl::InvalidArgumentError("chunk_bytes must be positive");
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromBundleProto(entry->shape(), what));
  // Before the sink sees anything: the size, and the bytes in the data file.
  PSD_RETURN_IF_ERROR(CheckEntry(*entry, shape, what));
  const int64_t expected = entry->size();
  std::string buf(static_cast<size_t>(std::min<int64_t>(chunk_bytes, expected)), '\0');
  uint32_t crc = 0;
  for (int64_t pos = 0; pos < expected;) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(buf.size(), expected - pos));
    PSD_RETURN_IF_ERROR(ReadBytes(*entry, entry->offset() + pos, n, buf.data(), what));
    crc = crc32c::Extend(crc, buf.data(), n);
    PSD_RETURN_IF_ERROR(sink(absl::string_view(buf.data(), n)));
    pos += static_cast<int64_t>(n);
  }
  if (crc != crc32c::Unmask(entry->crc32c())) return ChecksumError(*entry, crc, what);
  return absl::OkStatus();
}

}  // namespace psd::checkpoint
