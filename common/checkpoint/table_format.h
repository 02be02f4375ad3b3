// The on-disk pieces of a LevelDB-format table as TensorFlow writes a bundle's
// .index (TensorFlow's copy of leveldb/table/format.h): little-endian fixed
// and varint integers, block handles, block trailers and the 48-byte footer.
// Layout and rules: specs/tf-checkpoint-format.md §1.2. Stateless helpers;
// thread-safe.
#ifndef PSD_COMMON_CHECKPOINT_TABLE_FORMAT_H_
#define PSD_COMMON_CHECKPOINT_TABLE_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace psd::checkpoint::table {

void PutFixed32(std::string* dst, uint32_t v);
void PutFixed64(std::string* dst, uint64_t v);
void PutVarint32(std::string* dst, uint32_t v);
void PutVarint64(std::string* dst, uint64_t v);
uint32_t DecodeFixed32(const char* p);
uint64_t DecodeFixed64(const char* p);
// Consume a varint from the front of `*input`; false if malformed or cut off.
bool GetVarint32(absl::string_view* input, uint32_t* v);
bool GetVarint64(absl::string_view* input, uint64_t* v);
int VarintLength(uint64_t v);

// Where a block sits in the file; `size` excludes the 5-byte trailer.
struct BlockHandle {
  uint64_t offset = 0;
  uint64_t size = 0;
  static constexpr size_t kMaxEncodedLength = 10 + 10;
  void EncodeTo(std::string* dst) const;
  bool DecodeFrom(absl::string_view* input);
};

// The fixed-size tail of every table.
struct Footer {
  BlockHandle metaindex;
  BlockHandle index;
  static constexpr size_t kEncodedLength = 2 * BlockHandle::kMaxEncodedLength + 8;
  void EncodeTo(std::string* dst) const;
  // False if the magic number is wrong or a handle is malformed.
  bool DecodeFrom(absl::string_view input);
};

constexpr uint64_t kTableMagicNumber = 0xdb4775248b80fb57ull;
// 1-byte compression type + 4-byte masked CRC32C of block + type byte.
constexpr size_t kBlockTrailerSize = 5;
enum CompressionType : char { kNoCompression = 0, kSnappyCompression = 1 };

}  // namespace psd::checkpoint::table

#endif  // PSD_COMMON_CHECKPOINT_TABLE_FORMAT_H_
