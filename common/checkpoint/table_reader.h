// Reads a LevelDB-format table such as a bundle's .index: checks the footer
// magic and the CRC of every block it reads, decompresses Snappy blocks (some
// TensorFlow-written checkpoints have them), and parses entries with bounds
// checks, so a damaged file is a DATA_LOSS error naming the file, never a
// crash. Keys must come out strictly increasing.
//
//   PSD_ASSIGN_OR_RETURN(auto table, Table::Open(file.get(), size));
//   PSD_RETURN_IF_ERROR(table->ForEach([&](absl::string_view k, absl::string_view v) {
//     ...; return absl::OkStatus();
//   }));
//
// Thread-safe once opened (reads are positional).
#ifndef PSD_COMMON_CHECKPOINT_TABLE_READER_H_
#define PSD_COMMON_CHECKPOINT_TABLE_READER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "checkpoint/file_system.h"
#include "checkpoint/table_format.h"

namespace psd::checkpoint::table {

class Table {
 public:
  // `file` must outlive the table; `file_size` is its size in bytes.
  static absl::StatusOr<std::unique_ptr<Table>> Open(const RandomAccessFile* file,
                                                     uint64_t file_size);
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  using Visitor = std::function<absl::Status(absl::string_view key, absl::string_view value)>;
  // Calls `fn` for every entry in key order. Stops at the first error (from
  // the file or from `fn`) and returns it.
  absl::Status ForEach(const Visitor& fn) const;

  // Reads, verifies and (if needed) decompresses one block. Public for tests.
  absl::StatusOr<std::string> ReadBlock(const BlockHandle& handle) const;
  // Calls `fn` for each entry of a block's contents.
  absl::Status ForEachInBlock(absl::string_view contents, const Visitor& fn) const;

 private:
  Table(const RandomAccessFile* file, uint64_t file_size, const Footer& footer,
        std::string index_block);
  absl::Status Corruption(absl::string_view what) const;

  const RandomAccessFile* const file_;
  const uint64_t file_size_;
  const Footer footer_;
  const std::string index_block_;
};

}  // namespace psd::checkpoint::table

#endif  // PSD_COMMON_CHECKPOINT_TABLE_READER_H_
