#include "checkpoint/bundle_writer.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "psd/crc32c.h"
#include "checkpoint/table_format.h"
#include "psd/status.h"

namespace psd::checkpoint {
namespace {

// Small tensors are gathered into one write; big chunks go straight through.
constexpr size_t kBufferSize = 1 << 20;

absl::Status CheckName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("tensor name must not be empty");
  if (name[0] == '\0') {
    return absl::InvalidArgumentError("tensor name must not start with byte 0x00");
  }
  return absl::OkStatus();
}

absl::Status CheckDataType(DataType dtype, absl::string_view name) {
  if (!IsSupportedDataType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": unsupported dtype ", DataTypeName(dtype)));
  }
  return absl::OkStatus();
}

}  // namespace

BundleWriter::BundleWriter(FileSystem* fs, std::string prefix, const Options& options)
    : fs_(fs),
      prefix_(std::move(prefix)),
      options_(options),
      data_path_(DataFilename(prefix_, options.shard_id, options.num_shards)),
      temp_data_path_(TempFileName(data_path_)) {}

absl::StatusOr<std::unique_ptr<BundleWriter>> BundleWriter::Create(absl::string_view prefix,
                                                                   const Options& options) {
  if (prefix.empty()) return absl::InvalidArgumentError("checkpoint prefix must not be empty");
  if (options.num_shards < 1 || options.shard_id < 0 || options.shard_id >= options.num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad shard ", options.shard_id, " of ", options.num_shards));
  }
  FileSystem* fs = options.fs != nullptr ? options.fs : FileSystem::Default();
  std::unique_ptr<BundleWriter> writer(new BundleWriter(fs, std::string(prefix), options));
  auto file = fs->NewWritableFile(writer->temp_data_path_);
  if (!file.ok()) {
    writer->finished_ = true;  // nothing to clean up
    return file.status();
  }
  writer->data_file_ = *std::move(file);
  return writer;
}

BundleWriter::~BundleWriter() {
  if (!finished_) Abort();
}

absl::Status BundleWriter::Fail(absl::Status s) {
  if (status_.ok()) status_ = std::move(s);
  return status_;
}

absl::Status BundleWriter::Write(absl::string_view bytes) {
  if (bytes.size() >= kBufferSize) {
    PSD_RETURN_IF_ERROR(FlushBuffer());
    absl::Status s = data_file_->Append(bytes);
    if (!s.ok()) return Fail(std::move(s));
  } else {
    if (buffer_.size() + bytes.size() > kBufferSize) PSD_RETURN_IF_ERROR(FlushBuffer());
    buffer_.append(bytes.data(), bytes.size());
  }
  offset_ += static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::Status BundleWriter::FlushBuffer() {
  if (buffer_.empty()) return absl::OkStatus();
  absl::Status s = data_file_->Append(buffer_);
  buffer_.clear();
  if (!s.ok()) return Fail(std::move(s));
  return absl::OkStatus();
}

absl::Status BundleWriter::StartEntry(std::string key, DataType dtype, const TensorShape& shape) {
  if (entries_.count(key) > 0) {
    return absl::InvalidArgumentError(absl::StrCat("Adding duplicate key: ", absl::CEscape(key)));
  }
  tf::BundleEntryProto& entry = entries_[key];
  entry.set_dtype(dtype);
  ShapeToBundleProto(shape, entry.mutable_shape());  // present even for scalars
  entry.set_shard_id(options_.shard_id);
  entry.set_offset(offset_);
  return absl::OkStatus();
}

absl::Status BundleWriter::Add(absl::string_view name, const Tensor& tensor) {
  PSD_RETURN_IF_ERROR(status_);
  PSD_RETURN_IF_ERROR(CheckName(name));
  if (tensor.dtype() != DT_STRING) {
    PSD_RETURN_IF_ERROR(BeginTensor(name, tensor.dtype(), tensor.shape()));
    PSD_RETURN_IF_ERROR(AppendData(tensor.bytes()));
    return EndTensor();
  }
  if (streaming_) return absl::FailedPreconditionError("Add while a tensor is being streamed");
  PSD_RETURN_IF_ERROR(StartEntry(std::string(name), DT_STRING, tensor.shape()));
  return WriteStrings(tensor, &entries_[std::string(name)]);
}

absl::Status BundleWriter::WriteStrings(const Tensor& tensor, tf::BundleEntryProto* entry) {
  // On disk: varint64 lengths, masked CRC of the lengths, the bytes. The
  // length CRC covers each length as a fixed uint32 (uint64 if it does not
  // fit), not the varints (specs/tf-checkpoint-format.md §1.5).
  const std::vector<std::string>& strings = tensor.strings();
  std::string lengths;
  uint32_t crc = 0;
  uint64_t total = 0;
  for (const std::string& s : strings) {
    const uint64_t len = s.size();
    table::PutVarint64(&lengths, len);
    std::string fixed;
    if (len <= 0xffffffffu) {
      table::PutFixed32(&fixed, static_cast<uint32_t>(len));
    } else {
      table::PutFixed64(&fixed, len);
    }
    crc = crc32c::Extend(crc, fixed);
    total += len;
  }
  PSD_RETURN_IF_ERROR(Write(lengths));
  std::string masked;
  table::PutFixed32(&masked, crc32c::Mask(crc));
  PSD_RETURN_IF_ERROR(Write(masked));
  crc = crc32c::Extend(crc, masked);
  for (const std::string& s : strings) {
    PSD_RETURN_IF_ERROR(Write(s));
    crc = crc32c::Extend(crc, s);
  }
  entry->set_size(static_cast<int64_t>(lengths.size() + masked.size() + total));
  entry->set_crc32c(crc32c::Mask(crc));
  return absl::OkStatus();
}

absl::Status BundleWriter::BeginTensor(absl::string_view name, DataType dtype,
                                       const TensorShape& shape) {
  PSD_RETURN_IF_ERROR(status_);
  if (streaming_) return absl::FailedPreconditionError("a tensor is already being streamed");
  PSD_RETURN_IF_ERROR(CheckName(name));
  PSD_RETURN_IF_ERROR(CheckDataType(dtype, name));
  if (dtype == DT_STRING) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": string tensors are written with Add, not streamed"));
  }
  PSD_RETURN_IF_ERROR(StartEntry(std::string(name), dtype, shape));
  streaming_ = true;
  stream_key_ = std::string(name);
  stream_expected_ = shape.num_elements() * static_cast<int64_t>(DataTypeSize(dtype));
  stream_written_ = 0;
  stream_crc_ = 0;
  return absl::OkStatus();
}

absl::Status BundleWriter::AppendData(absl::string_view bytes) {
  PSD_RETURN_IF_ERROR(status_);
  if (!streaming_) return absl::FailedPreconditionError("AppendData without BeginTensor");
  if (static_cast<int64_t>(bytes.size()) > stream_expected_ - stream_written_) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("tensor ", absl::CEscape(stream_key_), ": ",
                     stream_written_ + static_cast<int64_t>(bytes.size()),
                     " bytes appended, its shape and dtype need ", stream_expected_)));
  }
  PSD_RETURN_IF_ERROR(Write(bytes));
  stream_crc_ = crc32c::Extend(stream_crc_, bytes);
  stream_written_ += static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::Status BundleWriter::EndTensor() {
  PSD_RETURN_IF_ERROR(status_);
  if (!streaming_) return absl::FailedPreconditionError("EndTensor without BeginTensor");
  streaming_ = false;
  if (stream_written_ != stream_expected_) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("tensor ", absl::CEscape(stream_key_), ": ", stream_written_,
                     " bytes appended, its shape and dtype need ", stream_expected_)));
  }
  tf::BundleEntryProto& entry = entries_[stream_key_];
  entry.set_size(stream_written_);
  entry.set_crc32c(crc32c::Mask(stream_crc_));
  return absl::OkStatus();
}

absl::Status BundleWriter::CheckSlice(absl::string_view full_name, DataType dtype,
                                      const TensorShape& full_shape,
                                      const TensorSlice& slice) const {
  PSD_RETURN_IF_ERROR(CheckName(full_name));
  PSD_RETURN_IF_ERROR(CheckDataType(dtype, full_name));
  PSD_RETURN_IF_ERROR(slice.CheckFits(full_shape));
  auto it = entries_.find(std::string(full_name));
  if (it == entries_.end()) return absl::OkStatus();
  const tf::BundleEntryProto& full = it->second;
  if (full.slices_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Adding duplicate key: ", full_name, " (stored whole, now a slice)"));
  }
  auto stored_shape = ShapeFromBundleProto(full.shape(), full_name);
  if (full.dtype() != dtype || !stored_shape.ok() || *stored_shape != full_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("slice ", slice.ToString(), " of ", full_name, " is ", DataTypeName(dtype),
                     full_shape.ToString(), " but earlier slices are ", DataTypeName(full.dtype()),
                     stored_shape.ok() ? stored_shape->ToString() : "?"));
  }
  const TensorSlice mine = slice.Resolved(full_shape);
  for (const auto& sp : full.slices()) {
    auto other = TensorSlice::FromProto(sp);
    if (!other.ok()) return other.status();
    TensorSlice overlap;
    if (TensorSlice::Intersect(mine, other->Resolved(full_shape), &overlap)) {
      return absl::InvalidArgumentError(absl::StrCat("slice ", slice.ToString(), " of ", full_name,
                                                     " overlaps slice ", other->ToString(),
                                                     " stored before"));
    }
  }
  return absl::OkStatus();
}

absl::Status BundleWriter::RecordSlice(absl::string_view full_name, DataType dtype,
                                       const TensorShape& full_shape, const TensorSlice& slice) {
  tf::BundleEntryProto& full = entries_[std::string(full_name)];
  if (full.slices_size() == 0) {
    // Only dtype, shape and slices: TensorFlow leaves the rest unset here.
    full.set_dtype(dtype);
    ShapeToBundleProto(full_shape, full.mutable_shape());
  }
  slice.ToProto(full.add_slices());
  return absl::OkStatus();
}

absl::Status BundleWriter::AddSlice(absl::string_view full_name, const TensorShape& full_shape,
                                    const TensorSlice& slice, const Tensor& slice_tensor) {
  PSD_RETURN_IF_ERROR(status_);
  PSD_RETURN_IF_ERROR(slice.CheckFits(full_shape));
  if (slice_tensor.shape() != slice.SliceShape(full_shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slice ", slice.ToString(), " of ", full_name, full_shape.ToString(), " needs shape ",
        slice.SliceShape(full_shape).ToString(), ", got ", slice_tensor.shape().ToString()));
  }
  if (slice.CoversAll(full_shape)) return Add(full_name, slice_tensor);
  if (streaming_) return absl::FailedPreconditionError("AddSlice while a tensor is being streamed");
  PSD_RETURN_IF_ERROR(CheckSlice(full_name, slice_tensor.dtype(), full_shape, slice));
  const std::string key = EncodeTensorNameSlice(full_name, slice);
  if (slice_tensor.dtype() == DT_STRING) {
    PSD_RETURN_IF_ERROR(StartEntry(key, DT_STRING, slice_tensor.shape()));
    PSD_RETURN_IF_ERROR(WriteStrings(slice_tensor, &entries_[key]));
  } else {
    PSD_RETURN_IF_ERROR(StartEntry(key, slice_tensor.dtype(), slice_tensor.shape()));
    streaming_ = true;
    stream_key_ = key;
    stream_expected_ =
        static_cast<int64_t>(slice_tensor.num_elements() * DataTypeSize(slice_tensor.dtype()));
    stream_written_ = 0;
    stream_crc_ = 0;
    PSD_RETURN_IF_ERROR(AppendData(slice_tensor.bytes()));
    PSD_RETURN_IF_ERROR(EndTensor());
  }
  return RecordSlice(full_name, slice_tensor.dtype(), full_shape, slice);
}

absl::Status BundleWriter::BeginSlice(absl::string_view full_name, DataType dtype,
                                      const TensorShape& full_shape, const TensorSlice& slice) {
  PSD_RETURN_IF_ERROR(status_);
  PSD_RETURN_IF_ERROR(slice.CheckFits(full_shape));
  if (slice.CoversAll(full_shape)) return BeginTensor(full_name, dtype, full_shape);
  if (streaming_) return absl::FailedPreconditionError("a tensor is already being streamed");
  PSD_RETURN_IF_ERROR(CheckSlice(full_name, dtype, full_shape, slice));
  if (dtype == DT_STRING) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", full_name, ": string tensors are written with AddSlice, not streamed"));
  }
  const TensorShape shape = slice.SliceShape(full_shape);
  const std::string key = EncodeTensorNameSlice(full_name, slice);
  PSD_RETURN_IF_ERROR(StartEntry(key, dtype, shape));
  // Recorded now: if the stream is not completed the writer fails as a whole.
  PSD_RETURN_IF_ERROR(RecordSlice(full_name, dtype, full_shape, slice));
  streaming_ = true;
  stream_key_ = key;
  stream_expected_ = shape.num_elements() * static_cast<int64_t>(DataTypeSize(dtype));
  stream_written_ = 0;
  stream_crc_ = 0;
  return absl::OkStatus();
}

absl::Status BundleWriter::PublishData() {
  PSD_RETURN_IF_ERROR(status_);
  if (finished_) return absl::FailedPreconditionError("bundle writer already finished");
  if (streaming_) {
    return Fail(absl::FailedPreconditionError(
        absl::StrCat("tensor ", absl::CEscape(stream_key_), " was begun but not ended")));
  }
  PSD_RETURN_IF_ERROR(FlushBuffer());
  absl::Status s = data_file_->Sync();
  if (s.ok()) s = data_file_->Close();
  if (s.ok()) s = fs_->RenameFile(temp_data_path_, data_path_);
  if (!s.ok()) return Fail(std::move(s));
  data_published_ = true;
  s = fs_->SyncDir(DirName(data_path_));
  if (!s.ok()) return Fail(std::move(s));
  return absl::OkStatus();
}

absl::Status BundleWriter::Finish() {
  if (options_.num_shards != 1) {
    return absl::FailedPreconditionError(
        "Finish() writes a single-shard bundle; use FinishData() and WriteMergedIndex()");
  }
  absl::Status s = PublishData();
  if (s.ok()) s = WriteBundleIndex(fs_, prefix_, 1, entries_);
  if (!s.ok()) {
    Fail(s).IgnoreError();
    Abort();
    return s;
  }
  finished_ = true;
  return absl::OkStatus();
}

absl::StatusOr<BundleShardIndex> BundleWriter::FinishData() {
  absl::Status s = PublishData();
  if (!s.ok()) {
    Abort();
    return s;
  }
  finished_ = true;
  BundleShardIndex index;
  index.shard_id = options_.shard_id;
  index.entries = std::move(entries_);
  entries_.clear();
  return index;
}

void BundleWriter::Abort() {
  if (finished_) return;
  finished_ = true;
  Fail(absl::AbortedError("bundle writer aborted")).IgnoreError();
  if (data_file_ != nullptr) {
    data_file_->Close().IgnoreError();
    data_file_.reset();
  }
  if (data_published_) {
    // A data file without its index is garbage: no checkpoint refers to it.
    fs_->DeleteFile(data_path_).IgnoreError();
  } else {
    fs_->DeleteFile(temp_data_path_).IgnoreError();
  }
}

}  // namespace psd::checkpoint
