#include "checkpoint/table_reader.h"

#include "absl/strings/str_cat.h"
#include "psd/crc32c.h"
#include "psd/status.h"
#include "snappy.h"

namespace psd::checkpoint::table {

Table::Table(const RandomAccessFile* file, uint64_t file_size, const Footer& footer,
             std::string index_block)
    : file_(file), file_size_(file_size), footer_(footer), index_block_(std::move(index_block)) {}

absl::Status Table::Corruption(absl::string_view what) const {
  return absl::DataLossError(absl::StrCat("corrupted table ", file_->path(), ": ", what));
}

absl::StatusOr<std::unique_ptr<Table>> Table::Open(const RandomAccessFile* file,
                                                   uint64_t file_size) {
  if (file_size < Footer::kEncodedLength) {
    return absl::DataLossError(absl::StrCat("corrupted table ", file->path(), ": file of ",
                                            file_size, " bytes is too short for a footer"));
  }
  char scratch[Footer::kEncodedLength];
  absl::string_view footer_bytes;
  PSD_RETURN_IF_ERROR(file->Read(file_size - Footer::kEncodedLength, Footer::kEncodedLength,
                                 scratch, &footer_bytes));
  Footer footer;
  if (footer_bytes.size() != Footer::kEncodedLength || !footer.DecodeFrom(footer_bytes)) {
    return absl::DataLossError(absl::StrCat("corrupted table ", file->path(),
                                            ": bad footer (not an SSTable, or truncated)"));
  }
  std::unique_ptr<Table> table(new Table(file, file_size, footer, ""));
  // Bundles have no meta blocks, so the metaindex is only checked, so that
  // every byte of the file is covered by some check.
  PSD_ASSIGN_OR_RETURN(std::string metaindex, table->ReadBlock(footer.metaindex));
  PSD_RETURN_IF_ERROR(table->ForEachInBlock(
      metaindex, [](absl::string_view, absl::string_view) { return absl::OkStatus(); }));
  PSD_ASSIGN_OR_RETURN(std::string index, table->ReadBlock(footer.index));
  return std::unique_ptr<Table>(new Table(file, file_size, footer, std::move(index)));
}

absl::StatusOr<std::string> Table::ReadBlock(const BlockHandle& handle) const {
  const uint64_t limit = file_size_ - Footer::kEncodedLength;
  if (handle.offset > limit || handle.size > limit - handle.offset ||
      kBlockTrailerSize > limit - handle.offset - handle.size) {
    return Corruption(absl::StrCat("block handle (offset ", handle.offset, ", size ", handle.size,
                                   ") points past the end of the file"));
  }
  const size_t n = static_cast<size_t>(handle.size) + kBlockTrailerSize;
  std::string buf(n, '\0');
  absl::string_view got;
  PSD_RETURN_IF_ERROR(file_->Read(handle.offset, n, buf.data(), &got));
  if (got.size() != n) return Corruption("truncated block read");
  if (got.data() != buf.data()) buf.assign(got.data(), got.size());

  const char* trailer = buf.data() + handle.size;
  const uint32_t expected = crc32c::Unmask(DecodeFixed32(trailer + 1));
  const uint32_t actual = crc32c::Value(buf.data(), static_cast<size_t>(handle.size) + 1);
  if (actual != expected) {
    return Corruption(absl::StrCat("block checksum mismatch at offset ", handle.offset));
  }
  switch (trailer[0]) {
    case kNoCompression:
      buf.resize(handle.size);
      return buf;
    case kSnappyCompression: {
      size_t ulength = 0;
      if (!snappy::GetUncompressedLength(buf.data(), handle.size, &ulength)) {
        return Corruption("bad Snappy block length");
      }
      // The length header alone may claim up to 4 GiB: walk the whole block
      // first (no allocation), so only a block that really expands to
      // `ulength` bytes (at most a few dozen times its own size) gets them.
      if (!snappy::IsValidCompressedBuffer(buf.data(), handle.size)) {
        return Corruption("bad Snappy block contents");
      }
      std::string out(ulength, '\0');
      if (!snappy::RawUncompress(buf.data(), handle.size, out.data())) {
        return Corruption("bad Snappy block contents");
      }
      return out;
    }
    default:
      return Corruption(absl::StrCat("unknown block compression type ",
                                     static_cast<int>(static_cast<uint8_t>(trailer[0]))));
  }
}

absl::Status Table::ForEachInBlock(absl::string_view contents, const Visitor& fn) const {
  if (contents.size() < sizeof(uint32_t)) return Corruption("block too short");
  const uint32_t num_restarts = DecodeFixed32(contents.data() + contents.size() - 4);
  const uint64_t restart_bytes = (static_cast<uint64_t>(num_restarts) + 1) * sizeof(uint32_t);
  if (num_restarts == 0 || restart_bytes > contents.size()) {
    return Corruption("bad restart array in block");
  }
  absl::string_view entries = contents.substr(0, contents.size() - restart_bytes);
  std::string key;
  while (!entries.empty()) {
    uint32_t shared, non_shared, value_len;
    if (!GetVarint32(&entries, &shared) || !GetVarint32(&entries, &non_shared) ||
        !GetVarint32(&entries, &value_len)) {
      return Corruption("bad entry header in block");
    }
    if (shared > key.size() || static_cast<uint64_t>(non_shared) + value_len > entries.size()) {
      return Corruption("entry overruns its block");
    }
    key.resize(shared);
    key.append(entries.data(), non_shared);
    const absl::string_view value = entries.substr(non_shared, value_len);
    entries.remove_prefix(static_cast<size_t>(non_shared) + value_len);
    PSD_RETURN_IF_ERROR(fn(key, value));
  }
  return absl::OkStatus();
}

absl::Status Table::ForEach(const Visitor& fn) const {
  std::string last_key;
  bool first = true;
  return ForEachInBlock(index_block_, [&](absl::string_view, absl::string_view handle_bytes) {
    BlockHandle handle;
    absl::string_view in = handle_bytes;
    if (!handle.DecodeFrom(&in)) return Corruption("bad block handle in index block");
    PSD_ASSIGN_OR_RETURN(std::string block, ReadBlock(handle));
    return ForEachInBlock(block, [&](absl::string_view key, absl::string_view value) {
      if (!first && !(key > absl::string_view(last_key))) {
        return Corruption("keys out of order");
      }
      first = false;
      last_key.assign(key.data(), key.size());
      return fn(key, value);
    });
  });
}

}  // namespace psd::checkpoint::table
