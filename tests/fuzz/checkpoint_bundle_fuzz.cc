// Fuzzes the bundle reader's handling of index entries: dtypes, shapes,
// offsets and sizes against the data files, string tensors, slices of
// partitioned tensors and their keys, reads of any slice. The input is a
// BundleInput (fuzz_inputs.proto); the harness writes its entries as a
// well-formed .index (header first, keys sorted) with the table builder, so
// the table's checksums never stop a mutation, then reads what the input
// asks for and every tensor listed.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "checkpoint/bundle_reader.h"
#include "checkpoint/table_builder.h"
#include "checkpoint/tensor_bundle.h"
#include "checkpoint/tensor_slice.h"
#include "fuzz_inputs.pb.h"
#include "memory_file_system.h"
#include "psd/crc32c.h"

namespace {

constexpr int kMaxDataFiles = 8;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::BundleInput input;
  if (!input.ParseFromArray(data, static_cast<int>(size))) return 0;

  psd::fuzz::MemoryFileSystem fs;
  const int num_shards = input.header().num_shards();
  if (num_shards >= 1 && num_shards <= kMaxDataFiles) {
    for (int k = 0; k < num_shards && k < input.data_files_size(); ++k) {
      fs.File(psd::checkpoint::DataFilename("ckpt", k, num_shards)) = input.data_files(k);
    }
  }

  // Entries by key (the last of a duplicated key wins), checksums fixed
  // where asked.
  std::map<std::string, std::string> entries;
  for (const auto& e : input.entries()) {
    if (e.key().empty()) continue;  // the header's key
    psd::tf::BundleEntryProto entry = e.entry();
    if (e.fix_crc() && num_shards >= 1 && num_shards <= kMaxDataFiles) {
      const std::string* file =
          fs.Find(psd::checkpoint::DataFilename("ckpt", entry.shard_id(), num_shards));
      if (file != nullptr && entry.offset() >= 0 && entry.size() >= 0 &&
          static_cast<uint64_t>(entry.offset()) <= file->size() &&
          static_cast<uint64_t>(entry.size()) <= file->size() - entry.offset()) {
        entry.set_crc32c(psd::crc32c::Mask(
            psd::crc32c::Value(file->data() + entry.offset(), entry.size())));
      }
    }
    entries[e.key()] = entry.SerializeAsString();
  }
  {
    auto file = fs.NewWritableFile("ckpt.index");
    psd::checkpoint::table::TableOptions options;
    options.block_size = 256;  // several data blocks from a few entries
    psd::checkpoint::table::TableBuilder builder(options, file->get());
    if (!builder.Add("", input.header().SerializeAsString()).ok()) return 0;
    for (const auto& [key, value] : entries) {
      if (!builder.Add(key, value).ok()) return 0;
    }
    if (!builder.Finish().ok()) return 0;
  }

  auto reader = psd::checkpoint::BundleReader::Open("ckpt", &fs);
  if (!reader.ok()) return 0;
  (void)(*reader)->CheckDataFiles();  // psctl ckpt inspect's check
  for (const auto& read : input.reads()) {
    if (read.chunk_bytes() > 0) {
      (void)(*reader)->ReadEntryChunked(read.name(), read.chunk_bytes(),
                                        [](absl::string_view) { return absl::OkStatus(); });
    } else if (read.has_slice()) {
      auto slice = psd::checkpoint::TensorSlice::Parse(read.slice());
      if (slice.ok()) (void)(*reader)->ReadSlice(read.name(), *slice);
    } else {
      (void)(*reader)->ReadTensor(read.name());
    }
    (void)(*reader)->Contains(read.name());
  }
  for (const auto& info : (*reader)->ListTensors()) {
    (void)(*reader)->GetTensorInfo(info.name);
    (void)(*reader)->ReadTensor(info.name);
    for (const auto& slice : info.slices) (void)(*reader)->ReadSlice(info.name, slice);
  }
  // What a restore into a different partitioning and a merge do with the
  // entries: re-merge them as one shard's index.
  psd::checkpoint::BundleShardIndex part;
  part.shard_id = 0;
  part.entries = (*reader)->entries();
  for (auto& [key, entry] : part.entries) entry.set_shard_id(0);
  (void)psd::checkpoint::MergeBundleIndexes(1, {part});
  return 0;
}
