#include "checkpoint/table_builder.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "psd/crc32c.h"
#include "psd/status.h"
#include "snappy.h"

namespace psd::checkpoint::table {
namespace internal {

BlockBuilder::BlockBuilder(int restart_interval) : restart_interval_(restart_interval) {
  restarts_.push_back(0);
}

void BlockBuilder::Reset() {
  buffer_.clear();
  restarts_.clear();
  restarts_.push_back(0);  // the first entry is always a restart point
  counter_ = 0;
  finished_ = false;
  last_key_.clear();
}

size_t BlockBuilder::CurrentSizeEstimate() const {
  return buffer_.size() + restarts_.size() * sizeof(uint32_t) + sizeof(uint32_t);
}

absl::string_view BlockBuilder::Finish() {
  for (uint32_t r : restarts_) PutFixed32(&buffer_, r);
  PutFixed32(&buffer_, static_cast<uint32_t>(restarts_.size()));
  finished_ = true;
  return buffer_;
}

void BlockBuilder::Add(absl::string_view key, absl::string_view value) {
  size_t shared = 0;
  if (counter_ < restart_interval_) {
    const size_t min_length = std::min(last_key_.size(), key.size());
    while (shared < min_length && last_key_[shared] == key[shared]) ++shared;
  } else {
    restarts_.push_back(static_cast<uint32_t>(buffer_.size()));
    counter_ = 0;
  }
  const size_t non_shared = key.size() - shared;
  PutVarint32(&buffer_, static_cast<uint32_t>(shared));
  PutVarint32(&buffer_, static_cast<uint32_t>(non_shared));
  PutVarint32(&buffer_, static_cast<uint32_t>(value.size()));
  buffer_.append(key.data() + shared, non_shared);
  buffer_.append(value.data(), value.size());
  last_key_.resize(shared);
  last_key_.append(key.data() + shared, non_shared);
  ++counter_;
}

void FindShortestSeparator(std::string* start, absl::string_view limit) {
  const size_t min_length = std::min(start->size(), limit.size());
  size_t diff = 0;
  while (diff < min_length && (*start)[diff] == limit[diff]) ++diff;
  if (diff >= min_length) return;  // one is a prefix of the other
  const uint8_t byte = static_cast<uint8_t>((*start)[diff]);
  if (byte < 0xff && byte + 1 < static_cast<uint8_t>(limit[diff])) {
    (*start)[diff] = static_cast<char>(byte + 1);
    start->resize(diff + 1);
  }
}

void FindShortSuccessor(std::string* key) {
  for (size_t i = 0; i < key->size(); ++i) {
    const uint8_t byte = static_cast<uint8_t>((*key)[i]);
    if (byte != 0xff) {
      (*key)[i] = static_cast<char>(byte + 1);
      key->resize(i + 1);
      return;
    }
  }
  // All 0xff: leave it as is.
}

}  // namespace internal

TableBuilder::TableBuilder(const TableOptions& options, WritableFile* file)
    : options_(options),
      file_(file),
      data_block_(options.block_restart_interval),
      index_block_(1) {}

absl::Status TableBuilder::Add(absl::string_view key, absl::string_view value) {
  if (closed_) return absl::FailedPreconditionError("TableBuilder::Add after Finish");
  PSD_RETURN_IF_ERROR(status_);
  if (num_entries_ > 0 && !(key > absl::string_view(last_key_))) {
    return absl::InvalidArgumentError(absl::StrCat("table keys out of order or duplicate: \"",
                                                   absl::CEscape(key), "\" after \"",
                                                   absl::CEscape(last_key_), "\""));
  }
  if (num_entries_ > 0 && key.size() + value.size() >= 2 * options_.block_size) {
    PSD_RETURN_IF_ERROR(Flush());
  }
  if (pending_index_entry_) {
    internal::FindShortestSeparator(&last_key_, key);
    std::string handle;
    pending_handle_.EncodeTo(&handle);
    index_block_.Add(last_key_, handle);
    pending_index_entry_ = false;
  }
  last_key_.assign(key.data(), key.size());
  ++num_entries_;
  data_block_.Add(key, value);
  if (data_block_.CurrentSizeEstimate() >= options_.block_size) PSD_RETURN_IF_ERROR(Flush());
  return absl::OkStatus();
}

absl::Status TableBuilder::Flush() {
  if (data_block_.empty()) return absl::OkStatus();
  PSD_RETURN_IF_ERROR(WriteBlock(&data_block_, &pending_handle_));
  pending_index_entry_ = true;
  return absl::OkStatus();
}

absl::Status TableBuilder::WriteBlock(internal::BlockBuilder* block, BlockHandle* handle) {
  const absl::string_view raw = block->Finish();
  absl::string_view contents = raw;
  CompressionType type = kNoCompression;
  if (options_.compression == kSnappyCompression) {
    snappy::Compress(raw.data(), raw.size(), &compressed_);
    // Compression must save at least 12.5% to be worth a decompression.
    if (compressed_.size() < raw.size() - raw.size() / 8) {
      contents = compressed_;
      type = kSnappyCompression;
    }
  }
  absl::Status s = WriteRawBlock(contents, type, handle);
  compressed_.clear();
  block->Reset();
  return s;
}

absl::Status TableBuilder::WriteRawBlock(absl::string_view contents, CompressionType type,
                                         BlockHandle* handle) {
  handle->offset = offset_;
  handle->size = contents.size();
  std::string trailer(1, static_cast<char>(type));
  uint32_t crc = crc32c::Value(contents);
  crc = crc32c::Extend(crc, trailer.data(), 1);  // the type byte is covered too
  PutFixed32(&trailer, crc32c::Mask(crc));
  status_ = file_->Append(contents);
  if (status_.ok()) status_ = file_->Append(trailer);
  if (status_.ok()) offset_ += contents.size() + kBlockTrailerSize;
  return status_;
}

absl::Status TableBuilder::Finish() {
  if (closed_) return absl::FailedPreconditionError("TableBuilder::Finish called twice");
  PSD_RETURN_IF_ERROR(status_);
  PSD_RETURN_IF_ERROR(Flush());
  closed_ = true;

  // No filter or stats blocks: the metaindex block is empty.
  internal::BlockBuilder metaindex(options_.block_restart_interval);
  Footer footer;
  PSD_RETURN_IF_ERROR(WriteBlock(&metaindex, &footer.metaindex));

  if (pending_index_entry_) {
    internal::FindShortSuccessor(&last_key_);
    std::string handle;
    pending_handle_.EncodeTo(&handle);
    index_block_.Add(last_key_, handle);
    pending_index_entry_ = false;
  }
  PSD_RETURN_IF_ERROR(WriteBlock(&index_block_, &footer.index));

  std::string encoded;
  footer.EncodeTo(&encoded);
  status_ = file_->Append(encoded);
  if (status_.ok()) offset_ += encoded.size();
  return status_;
}

}  // namespace psd::checkpoint::table
