#include "checkpoint/table_format.h"

namespace psd::checkpoint::table {

void PutFixed32(std::string* dst, uint32_t v) {
  char buf[4];
  for (int i = 0; i < 4; ++i) buf[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  dst->append(buf, 4);
}

void PutFixed64(std::string* dst, uint64_t v) {
  char buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  dst->append(buf, 8);
}

void PutVarint64(std::string* dst, uint64_t v) {
  while (v >= 0x80) {
    dst->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  dst->push_back(static_cast<char>(v));
}

void PutVarint32(std::string* dst, uint32_t v) { PutVarint64(dst, v); }

uint32_t DecodeFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

uint64_t DecodeFixed64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

bool GetVarint64(absl::string_view* input, uint64_t* v) {
  uint64_t result = 0;
  for (size_t i = 0; i < input->size() && i < 10; ++i) {
    const uint64_t byte = static_cast<uint8_t>((*input)[i]);
    if (i == 9 && byte > 1) return false;  // past 64 bits
    result |= (byte & 0x7f) << (7 * i);
    if ((byte & 0x80) == 0) {
      *v = result;
      input->remove_prefix(i + 1);
      return true;
    }
  }
  return false;
}

bool GetVarint32(absl::string_view* input, uint32_t* v) {
  absl::string_view copy = *input;
  uint64_t v64;
  if (!GetVarint64(&copy, &v64) || v64 > 0xffffffffu || input->size() - copy.size() > 5) {
    return false;
  }
  *v = static_cast<uint32_t>(v64);
  *input = copy;
  return true;
}

int VarintLength(uint64_t v) {
  int len = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++len;
  }
  return len;
}

void BlockHandle::EncodeTo(std::string* dst) const {
  PutVarint64(dst, offset);
  PutVarint64(dst, size);
}

bool BlockHandle::DecodeFrom(absl::string_view* input) {
  return GetVarint64(input, &offset) && GetVarint64(input, &size);
}

void Footer::EncodeTo(std::string* dst) const {
  const size_t start = dst->size();
  metaindex.EncodeTo(dst);
  index.EncodeTo(dst);
  dst->resize(start + 2 * BlockHandle::kMaxEncodedLength);  // zero padding
  PutFixed32(dst, static_cast<uint32_t>(kTableMagicNumber & 0xffffffffu));
  PutFixed32(dst, static_cast<uint32_t>(kTableMagicNumber >> 32));
}

bool Footer::DecodeFrom(absl::string_view input) {
  if (input.size() != kEncodedLength) return false;
  const char* magic = input.data() + kEncodedLength - 8;
  const uint64_t m = (static_cast<uint64_t>(DecodeFixed32(magic + 4)) << 32) | DecodeFixed32(magic);
  if (m != kTableMagicNumber) return false;
  absl::string_view handles = input.substr(0, 2 * BlockHandle::kMaxEncodedLength);
  return metaindex.DecodeFrom(&handles) && index.DecodeFrom(&handles);
}

}  // namespace psd::checkpoint::table
