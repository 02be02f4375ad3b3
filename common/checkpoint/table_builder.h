// Writes a LevelDB-format table (sorted string keys to string values) the way
// TensorFlow writes a bundle's .index: prefix-compressed data blocks with a
// restart point every 16 entries, an empty metaindex block, an index block
// with a restart at every entry, a masked CRC32C trailer after each block and
// the 48-byte footer. With the default options the output is byte-identical
// to TensorFlow's (specs/tf-checkpoint-format.md §1.2).
//
//   TableBuilder builder(TableOptions(), file);
//   for (const auto& [k, v] : sorted) PSD_RETURN_IF_ERROR(builder.Add(k, v));
//   PSD_RETURN_IF_ERROR(builder.Finish());
//
// Thread-compatible.
#ifndef PSD_COMMON_CHECKPOINT_TABLE_BUILDER_H_
#define PSD_COMMON_CHECKPOINT_TABLE_BUILDER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "checkpoint/file_system.h"
#include "checkpoint/table_format.h"

namespace psd::checkpoint::table {

struct TableOptions {
  size_t block_size = 256 * 1024;   // TensorFlow's default (table_options.h)
  int block_restart_interval = 16;  // data blocks; the index block uses 1
  // TensorFlow writes bundles uncompressed; Snappy is here so tests can make
  // compressed tables for the reader.
  CompressionType compression = kNoCompression;
};

namespace internal {

// Builds one block: prefix-compressed entries, then the restart array.
class BlockBuilder {
 public:
  explicit BlockBuilder(int restart_interval);
  void Reset();
  // REQUIRES: key > every key added since Reset().
  void Add(absl::string_view key, absl::string_view value);
  // Appends the restart array; the returned bytes live until Reset().
  absl::string_view Finish();
  // Bytes Finish() would return.
  size_t CurrentSizeEstimate() const;
  bool empty() const { return buffer_.empty(); }

 private:
  const int restart_interval_;
  std::string buffer_;
  std::vector<uint32_t> restarts_;
  int counter_ = 0;
  bool finished_ = false;
  std::string last_key_;
};

// LevelDB's BytewiseComparator shortening rules for index keys.
void FindShortestSeparator(std::string* start, absl::string_view limit);
void FindShortSuccessor(std::string* key);

}  // namespace internal

class TableBuilder {
 public:
  // Writes to `file`, which must outlive the builder; the builder neither
  // syncs nor closes it.
  TableBuilder(const TableOptions& options, WritableFile* file);
  TableBuilder(const TableBuilder&) = delete;
  TableBuilder& operator=(const TableBuilder&) = delete;

  // INVALID_ARGUMENT unless `key` sorts (bytewise) after the previous key.
  absl::Status Add(absl::string_view key, absl::string_view value);
  // Writes the remaining blocks and the footer. No Add() afterwards.
  absl::Status Finish();

  uint64_t num_entries() const { return num_entries_; }
  // Bytes written so far (the file size after Finish()).
  uint64_t file_size() const { return offset_; }

 private:
  absl::Status Flush();
  absl::Status WriteBlock(internal::BlockBuilder* block, BlockHandle* handle);
  absl::Status WriteRawBlock(absl::string_view contents, CompressionType type, BlockHandle* handle);

  const TableOptions options_;
  WritableFile* const file_;
  absl::Status status_;  // sticky: the first write error
  uint64_t offset_ = 0;
  uint64_t num_entries_ = 0;
  internal::BlockBuilder data_block_;
  internal::BlockBuilder index_block_;
  std::string last_key_;
  bool closed_ = false;
  // After a data block is flushed its index entry waits for the next key, so
  // the separator can be shortened against it.
  bool pending_index_entry_ = false;
  BlockHandle pending_handle_;
  std::string compressed_;  // scratch
};

}  // namespace psd::checkpoint::table

#endif  // PSD_COMMON_CHECKPOINT_TABLE_BUILDER_H_
