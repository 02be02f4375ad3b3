// Fuzzes the checkpoint reader from the bytes of a file up: the LevelDB
// table of PREFIX.index (footer, block handles, restart arrays, Snappy
// blocks), the bundle header and entries parsed from it, and the reads of
// every tensor it lists (BundleReader).
//
// Input: 1 flags byte, a 4-byte little-endian length L, L bytes of .index,
// then the bytes of the data file(s). With flag bit 0 set the harness first
// rewrites the CRC of every block the footer and the index block point at,
// so mutations get past the checksums and reach the parsers behind them;
// without it the raw bytes are read as they are.
#include <cstddef>
#include <cstdint>
#include <string>

#include "checkpoint/bundle_reader.h"
#include "checkpoint/table_format.h"
#include "checkpoint/table_reader.h"
#include "checkpoint/tensor_slice.h"
#include "memory_file_system.h"
#include "psd/crc32c.h"

namespace {

using psd::checkpoint::table::BlockHandle;
using psd::checkpoint::table::Footer;

// Rewrites the trailer CRC of the block at `handle` if it lies in `file`.
// Returns its contents (uncompressed blocks only; empty otherwise).
std::string FixBlock(std::string* file, const BlockHandle& handle) {
  const uint64_t limit = file->size() < Footer::kEncodedLength
                             ? 0
                             : file->size() - Footer::kEncodedLength;
  if (handle.offset > limit || handle.size > limit - handle.offset ||
      psd::checkpoint::table::kBlockTrailerSize > limit - handle.offset - handle.size) {
    return "";
  }
  char* block = file->data() + handle.offset;
  const uint32_t crc = psd::crc32c::Mask(psd::crc32c::Value(block, handle.size + 1));
  for (int i = 0; i < 4; ++i) block[handle.size + 1 + i] = static_cast<char>(crc >> (8 * i));
  if (block[handle.size] != psd::checkpoint::table::kNoCompression) return "";
  return std::string(block, handle.size);
}

void FixChecksums(std::string* file) {
  if (file->size() < Footer::kEncodedLength) return;
  Footer footer;
  if (!footer.DecodeFrom(absl::string_view(*file).substr(file->size() - Footer::kEncodedLength))) {
    return;
  }
  FixBlock(file, footer.metaindex);
  const std::string index = FixBlock(file, footer.index);
  // The index block's values are the data blocks' handles (a lenient walk:
  // the reader proper checks everything).
  if (index.size() < 4) return;
  const uint32_t restarts = psd::checkpoint::table::DecodeFixed32(index.data() + index.size() - 4);
  const uint64_t restart_bytes = (static_cast<uint64_t>(restarts) + 1) * 4;
  if (restart_bytes > index.size()) return;
  absl::string_view entries(index.data(), index.size() - restart_bytes);
  for (int n = 0; n < 1000 && !entries.empty(); ++n) {
    uint32_t shared, non_shared, value_len;
    if (!psd::checkpoint::table::GetVarint32(&entries, &shared) ||
        !psd::checkpoint::table::GetVarint32(&entries, &non_shared) ||
        !psd::checkpoint::table::GetVarint32(&entries, &value_len) ||
        static_cast<uint64_t>(non_shared) + value_len > entries.size()) {
      return;
    }
    absl::string_view value = entries.substr(non_shared, value_len);
    BlockHandle handle;
    if (handle.DecodeFrom(&value)) FixBlock(file, handle);
    entries.remove_prefix(static_cast<size_t>(non_shared) + value_len);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  const uint8_t flags = data[0];
  uint64_t index_size = 0;
  for (int i = 0; i < 4; ++i) index_size |= static_cast<uint64_t>(data[1 + i]) << (8 * i);
  const absl::string_view rest(reinterpret_cast<const char*>(data) + 5, size - 5);
  index_size = std::min<uint64_t>(index_size, rest.size());

  psd::fuzz::MemoryFileSystem fs;
  std::string index(rest.substr(0, index_size));
  if (flags & 1) FixChecksums(&index);
  fs.File("ckpt.index") = std::move(index);
  const std::string data_bytes(rest.substr(index_size));

  // The table alone, as psctl ckpt inspect and the leveldb cross-check use it.
  {
    auto file = fs.NewRandomAccessFile("ckpt.index");
    auto table = psd::checkpoint::table::Table::Open(file->get(), fs.File("ckpt.index").size());
    if (table.ok()) {
      (void)(*table)->ForEach([](absl::string_view key, absl::string_view value) {
        return absl::OkStatus();
      });
    }
  }

  auto reader = psd::checkpoint::BundleReader::Open("ckpt", &fs);
  if (!reader.ok()) return 0;
  const int num_shards = (*reader)->header().num_shards();
  if (num_shards <= 64) {
    for (int k = 0; k < num_shards; ++k) {
      fs.File(psd::checkpoint::DataFilename("ckpt", k, num_shards)) = data_bytes;
    }
  }
  (void)(*reader)->CheckDataFiles();  // psctl ckpt inspect's check
  for (const auto& info : (*reader)->ListTensors()) {
    (void)(*reader)->GetTensorInfo(info.name);
    (void)(*reader)->ReadTensor(info.name);
    if (info.shape.rank() > 0 && info.shape.dim(0) > 1) {
      std::vector<int64_t> starts(info.shape.rank(), 0);
      std::vector<int64_t> lengths(info.shape.rank(), psd::checkpoint::TensorSlice::kFullExtent);
      starts[0] = 1;
      lengths[0] = info.shape.dim(0) - 1;
      auto slice = psd::checkpoint::TensorSlice::Make(starts, lengths);
      if (slice.ok()) (void)(*reader)->ReadSlice(info.name, *slice);
    }
  }
  for (const auto& [key, entry] : (*reader)->entries()) {
    (void)(*reader)->ReadEntryChunked(key, 7, [](absl::string_view) { return absl::OkStatus(); });
  }
  return 0;
}
