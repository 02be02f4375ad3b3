#include "checkpoint/ordered_code.h"

namespace psd::checkpoint::ordered_code {
namespace {

// Header bits of the first two bytes of a signed encoding of length n.
constexpr uint8_t kLengthToHeaderBits[11][2] = {{0, 0},    {0x80, 0},    {0xc0, 0},   {0xe0, 0},
                                                {0xf0, 0}, {0xf8, 0},    {0xfc, 0},   {0xfe, 0},
                                                {0xff, 0}, {0xff, 0x80}, {0xff, 0xc0}};

// Header bits as they land in the low 64 bits of the decoded big-endian value.
constexpr uint64_t kLengthToMask[11] = {0,
                                        0x80ull,
                                        0xc000ull,
                                        0xe00000ull,
                                        0xf0000000ull,
                                        0xf800000000ull,
                                        0xfc0000000000ull,
                                        0xfe000000000000ull,
                                        0xff00000000000000ull,
                                        0x8000000000000000ull,
                                        0ull};

int Log2Floor64(uint64_t x) { return x == 0 ? -1 : 63 - __builtin_clzll(x); }

// The smallest n with v in [-2^(7n-1), 2^(7n-1)), given x = v < 0 ? ~v : v.
int SignedEncodingLength(uint64_t x) {
  const int bits = Log2Floor64(x) + 1;  // significant bits of the magnitude
  return bits / 7 + 1;                  // == ceil((bits + 1) / 7)
}

}  // namespace

void WriteString(std::string* dest, absl::string_view s) {
  for (char c : s) {
    if (c == '\x00') {
      dest->append("\x00\xff", 2);
    } else if (c == '\xff') {
      dest->append("\xff\x00", 2);
    } else {
      dest->push_back(c);
    }
  }
  dest->append("\x00\x01", 2);
}

void WriteNumIncreasing(std::string* dest, uint64_t v) {
  char buf[9];
  int len = 0;
  while (v > 0) {
    buf[8 - len] = static_cast<char>(v & 0xff);
    v >>= 8;
    ++len;
  }
  buf[8 - len] = static_cast<char>(len);
  dest->append(buf + 8 - len, static_cast<size_t>(len) + 1);
}

void WriteSignedNumIncreasing(std::string* dest, int64_t v) {
  const uint64_t x = v < 0 ? ~static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  if (x < 64) {
    dest->push_back(static_cast<char>(kLengthToHeaderBits[1][0] ^ static_cast<uint8_t>(v)));
    return;
  }
  // v big-endian, sign-extended to 10 bytes.
  const char sign = v < 0 ? '\xff' : '\x00';
  char buf[10] = {sign, sign};
  const uint64_t u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) buf[2 + i] = static_cast<char>((u >> (8 * (7 - i))) & 0xff);
  const int len = SignedEncodingLength(x);
  char* begin = buf + sizeof(buf) - len;
  begin[0] = static_cast<char>(begin[0] ^ kLengthToHeaderBits[len][0]);
  begin[1] = static_cast<char>(begin[1] ^ kLengthToHeaderBits[len][1]);
  dest->append(begin, static_cast<size_t>(len));
}

bool ReadString(absl::string_view* src, std::string* result) {
  std::string out;
  for (size_t i = 0; i < src->size(); ++i) {
    const char c = (*src)[i];
    if (c != '\x00' && c != '\xff') {
      out.push_back(c);
      continue;
    }
    if (i + 1 >= src->size()) return false;
    const char next = (*src)[i + 1];
    if (c == '\x00' && next == '\x01') {  // terminator
      src->remove_prefix(i + 2);
      *result = std::move(out);
      return true;
    }
    if (c == '\x00' && next == '\xff') {
      out.push_back('\x00');
    } else if (c == '\xff' && next == '\x00') {
      out.push_back('\xff');
    } else {
      return false;
    }
    ++i;
  }
  return false;
}

bool ReadNumIncreasing(absl::string_view* src, uint64_t* result) {
  if (src->empty()) return false;
  const size_t len = static_cast<uint8_t>((*src)[0]);
  if (len > 8 || src->size() < len + 1) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < len; ++i) v = (v << 8) | static_cast<uint8_t>((*src)[1 + i]);
  src->remove_prefix(len + 1);
  *result = v;
  return true;
}

bool ReadSignedNumIncreasing(absl::string_view* src, int64_t* result) {
  if (src->empty()) return false;
  auto byte = [&](size_t i) { return static_cast<uint8_t>((*src)[i]); };
  // Negative values have their header bits inverted; undo that to read the
  // length.
  const uint64_t xor_mask = (byte(0) & 0x80) ? 0 : ~0ull;
  const uint8_t first = byte(0) ^ static_cast<uint8_t>(xor_mask);
  size_t len;
  uint64_t x;
  if (first != 0xff) {
    len = static_cast<size_t>(7 - Log2Floor64(first ^ 0xffu));
    if (src->size() < len) return false;
    x = xor_mask;  // sign extension
    for (size_t i = 0; i < len; ++i) x = (x << 8) | byte(i);
  } else {
    len = 8;
    if (src->size() < 2) return false;
    const uint8_t second = byte(1) ^ static_cast<uint8_t>(xor_mask);
    if (second >= 0x80) {
      if (second < 0xc0) {
        len = 9;
      } else {
        if (src->size() < 3) return false;
        const uint8_t third = byte(2) ^ static_cast<uint8_t>(xor_mask);
        if (second == 0xc0 && third < 0x80) {
          len = 10;
        } else {
          return false;
        }
      }
    }
    if (src->size() < len) return false;
    x = 0;
    for (size_t i = len - 8; i < len; ++i) x = (x << 8) | byte(i);
  }
  x ^= kLengthToMask[len];
  src->remove_prefix(len);
  *result = static_cast<int64_t>(x);
  return true;
}

}  // namespace psd::checkpoint::ordered_code
