#include "psd/stream_codec.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "grpc/slice.h"
#include "grpcpp/support/proto_buffer_reader.h"

namespace psd {

using google::protobuf::io::CodedOutputStream;

namespace {

constexpr int kWireVarint = 0;
constexpr int kWireFixed64 = 1;
constexpr int kWireLengthDelimited = 2;
constexpr int kWireFixed32 = 5;

void AppendVarint(uint64_t value, std::string* out) {
  uint8_t buf[10];
  const uint8_t* end = CodedOutputStream::WriteVarint64ToArray(value, buf);
  out->append(reinterpret_cast<const char*>(buf), end - buf);
}

// Reads a message's bytes across the slices of a ByteBuffer.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>& slices) : slices_(slices) { SkipEmpty(); }

  bool done() const { return slice_ == slices_.size(); }
  size_t remaining() const { return remaining_; }

  // At most `max_bytes` bytes (10 for a 64-bit value, 5 for a tag).
  bool ReadVarint(uint64_t* value, int max_bytes = 10) {
    uint64_t result = 0;
    for (int shift = 0; shift < 7 * max_bytes; shift += 7) {
      if (done()) return false;
      const uint8_t byte = Current()[offset_];
      Advance(1);
      result |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) {
        *value = result;
        return true;
      }
    }
    return false;  // longer than max_bytes
  }

  // Calls fn(piece) for the next `n` bytes, one piece per slice they span.
  template <typename Fn>
  bool Take(uint64_t n, Fn&& fn) {
    if (n > remaining_) return false;
    while (n > 0) {
      const size_t here = std::min<uint64_t>(n, slices_[slice_].size() - offset_);
      fn(absl::string_view(reinterpret_cast<const char*>(Current()) + offset_, here));
      Advance(here);
      n -= here;
    }
    return true;
  }

  void set_remaining(size_t total) { remaining_ = total; }

 private:
  const uint8_t* Current() const { return slices_[slice_].begin(); }

  void Advance(size_t n) {
    offset_ += n;
    remaining_ -= n;
    if (offset_ == slices_[slice_].size()) {
      ++slice_;
      offset_ = 0;
      SkipEmpty();
    }
  }

  void SkipEmpty() {
    while (slice_ < slices_.size() && slices_[slice_].size() == 0) ++slice_;
  }

  const std::vector<grpc::Slice>& slices_;
  size_t slice_ = 0;
  size_t offset_ = 0;
  size_t remaining_ = 0;
};

}  // namespace

bool IsRawStreamMethod(absl::string_view method) {
  static constexpr const char* kRaw[] = {kReadStreamMethod, kAssignStreamMethod, kBatchMethod,
                                         kFollowMoveMethod, kPullMoveMethod};
  const bool slashed = absl::StartsWith(method, "/");
  for (const char* raw : kRaw) {
    if (method == (slashed ? raw : raw + 1)) return true;
  }
  return false;
}

// What a lent slice carries back to its pool.
struct ChunkBufferPool::Lease {
  std::shared_ptr<ChunkBufferPool> pool;
  Buffer buffer;
};

std::shared_ptr<ChunkBufferPool> ChunkBufferPool::Create() {
  std::shared_ptr<ChunkBufferPool> pool(new ChunkBufferPool());
  pool->self_ = pool;
  return pool;
}

grpc::Slice ChunkBufferPool::NewSlice(size_t bytes, char** data) {
  auto lease = std::make_unique<Lease>();
  lease->pool = self_.lock();
  {
    absl::MutexLock lock(&mu_);
    // Most recently returned first: its pages are the likeliest resident.
    while (!free_.empty() && lease->buffer.data == nullptr) {
      Buffer candidate = std::move(free_.back());
      free_.pop_back();
      if (candidate.capacity >= bytes) lease->buffer = std::move(candidate);
    }
  }
  if (lease->buffer.data == nullptr) {
    // Not value-initialized: every byte is written before it is sent.
    lease->buffer.data.reset(new char[std::max<size_t>(bytes, 1)]);
    lease->buffer.capacity = bytes;
  }
  *data = lease->buffer.data.get();
  grpc_slice slice =
      grpc_slice_new_with_user_data(*data, bytes, &ChunkBufferPool::Return, lease.release());
  return grpc::Slice(slice, grpc::Slice::STEAL_REF);
}

void ChunkBufferPool::Return(void* raw) {
  std::unique_ptr<Lease> lease(static_cast<Lease*>(raw));
  // Two spares cover one chunk in flight while the next is filled.
  constexpr size_t kMaxFree = 2;
  absl::MutexLock lock(&lease->pool->mu_);
  if (!lease->pool->retired_ && lease->pool->free_.size() < kMaxFree) {
    lease->pool->free_.push_back(std::move(lease->buffer));
  }
}

size_t ChunkBufferPool::idle_buffers() const {
  absl::MutexLock lock(&mu_);
  return free_.size();
}

void ChunkBufferPool::Retire() {
  std::vector<Buffer> spares;
  absl::MutexLock lock(&mu_);
  retired_ = true;
  spares.swap(free_);
}

grpc::ByteBuffer EncodeWithContent(const google::protobuf::MessageLite& fields, int content_field,
                                   grpc::Slice content) {
  std::string head;
  fields.AppendToString(&head);
  if (content.size() == 0) {
    grpc::Slice slice(head);
    return grpc::ByteBuffer(&slice, 1);
  }
  // Protobuf writes fields in number order; the content fields are the
  // last ones of their messages, so this is its encoding byte for byte.
  AppendVarint((static_cast<uint64_t>(content_field) << 3) | kWireLengthDelimited, &head);
  AppendVarint(content.size(), &head);
  grpc::Slice slices[2] = {grpc::Slice(head), std::move(content)};
  return grpc::ByteBuffer(slices, 2);
}

grpc::ByteBuffer EncodeWithContent(const google::protobuf::MessageLite& fields, int content_field,
                                   std::vector<grpc::Slice> pieces) {
  size_t size = 0;
  for (const grpc::Slice& piece : pieces) size += piece.size();
  std::string head;
  fields.AppendToString(&head);
  std::vector<grpc::Slice> slices;
  slices.reserve(pieces.size() + 1);
  if (size > 0) {
    AppendVarint((static_cast<uint64_t>(content_field) << 3) | kWireLengthDelimited, &head);
    AppendVarint(size, &head);
  }
  slices.emplace_back(head);
  for (grpc::Slice& piece : pieces) {
    if (piece.size() > 0) slices.push_back(std::move(piece));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

size_t AppendWithNestedContents(const google::protobuf::MessageLite& fields,
                                const std::vector<NestedContent>& contents, int wrap_field,
                                std::vector<grpc::Slice>* out) {
  auto header_size = [](int field, uint64_t length) {
    const uint64_t tag = (static_cast<uint64_t>(field) << 3) | kWireLengthDelimited;
    return static_cast<uint64_t>(CodedOutputStream::VarintSize64(tag) +
                                 CodedOutputStream::VarintSize64(length));
  };
  auto append_header = [](int field, uint64_t length, std::string* head) {
    AppendVarint((static_cast<uint64_t>(field) << 3) | kWireLengthDelimited, head);
    AppendVarint(length, head);
  };
  // Each content is a chain of headers, innermost last, then its bytes. A
  // header's length covers every header inside it and the bytes.
  std::vector<std::vector<uint64_t>> lengths(contents.size());
  uint64_t total = fields.ByteSizeLong();
  for (size_t i = 0; i < contents.size(); ++i) {
    const std::vector<int>& path = contents[i].path;
    lengths[i].resize(path.size());
    uint64_t inner = contents[i].bytes.size();
    for (size_t level = path.size(); level-- > 0;) {
      lengths[i][level] = inner;
      inner += header_size(path[level], inner);
    }
    total += inner;
  }
  std::string head;
  if (wrap_field > 0) append_header(wrap_field, total, &head);
  fields.AppendToString(&head);
  const size_t start = out->size();
  for (size_t i = 0; i < contents.size(); ++i) {
    const std::vector<int>& path = contents[i].path;
    for (size_t level = 0; level < path.size(); ++level) {
      append_header(path[level], lengths[i][level], &head);
    }
    out->emplace_back(head);
    head.clear();
    if (contents[i].bytes.size() > 0) out->push_back(contents[i].bytes);
  }
  if (!head.empty()) out->emplace_back(head);
  size_t appended = 0;
  for (size_t i = start; i < out->size(); ++i) appended += (*out)[i].size();
  return appended;
}

namespace {

// A slice that owns `bytes`.
grpc::Slice OwningSlice(std::string&& bytes) {
  auto* owned = new std::string(std::move(bytes));
  grpc_slice slice = grpc_slice_new_with_user_data(
      owned->data(), owned->size(), [](void* p) { delete static_cast<std::string*>(p); }, owned);
  return grpc::Slice(slice, grpc::Slice::STEAL_REF);
}

// The value of a read, gather or scatter result when its content is worth
// a slice of its own; else null.
TensorProto* BigValue(BatchOpResult* result) {
  TensorProto* value = nullptr;
  switch (result->result_case()) {
    case BatchOpResult::kRead:
      if (result->read().has_value()) value = result->mutable_read()->mutable_value();
      break;
    case BatchOpResult::kGather:
      if (result->gather().has_value()) value = result->mutable_gather()->mutable_value();
      break;
    case BatchOpResult::kScatter:
      if (result->scatter().has_value()) value = result->mutable_scatter()->mutable_value();
      break;
    default: break;
  }
  if (value == nullptr || value->content().size() < kMinSliceContentBytes) return nullptr;
  return value;
}

}  // namespace

grpc::ByteBuffer EncodeBatchResponse(BatchResponse* response) {
  static_assert(ReadResponse::kValueFieldNumber == GatherResponse::kValueFieldNumber &&
                ScatterResponse::kValueFieldNumber == GatherResponse::kValueFieldNumber);
  bool lifted = false;
  for (BatchOpResult& result : *response->mutable_results()) {
    if (BigValue(&result) != nullptr) lifted = true;
  }
  if (!lifted) {
    // As gRPC serializes a protobuf message: once, into the slice sent.
    grpc::Slice slice(response->ByteSizeLong());
    response->SerializeWithCachedSizesToArray(const_cast<uint8_t*>(slice.begin()));
    return grpc::ByteBuffer(&slice, 1);
  }
  std::vector<grpc::Slice> slices;
  std::vector<NestedContent> contents;
  for (BatchOpResult& result : *response->mutable_results()) {
    contents.clear();
    if (TensorProto* value = BigValue(&result)) {
      contents.push_back(NestedContent{{static_cast<int>(result.result_case()),
                                        GatherResponse::kValueFieldNumber,
                                        TensorProto::kContentFieldNumber},
                                       OwningSlice(std::move(*value->mutable_content()))});
      value->clear_content();
    }
    AppendWithNestedContents(result, contents, BatchResponse::kResultsFieldNumber, &slices);
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

grpc::ByteBuffer EncodeMessage(const google::protobuf::MessageLite& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

bool DecodeMessage(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  // A copy of a ByteBuffer shares its slices; the reader needs a mutable one.
  grpc::ByteBuffer shared(buffer);
  grpc::ProtoBufferReader reader(&shared);
  return reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
}

absl::Status ContentMessage::Parse(const grpc::ByteBuffer& buffer, int content_field,
                                   google::protobuf::MessageLite* fields, absl::string_view what) {
  Clear();
  auto malformed = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed message: ", why));
  };
  if (!buffer.Dump(&slices_).ok()) return malformed("unreadable buffer");
  SliceReader reader(slices_);
  reader.set_remaining(buffer.Length());
  auto append = [this](absl::string_view piece) {
    fields_bytes_.append(piece.data(), piece.size());
  };
  while (!reader.done()) {
    // A tag is a varint32 of at most 5 bytes, as protobuf reads it: a longer
    // or wider one would be re-encoded below as a different, valid tag.
    uint64_t tag;
    if (!reader.ReadVarint(&tag, 5) || tag > UINT32_MAX || (tag >> 3) == 0) {
      return malformed("bad field tag");
    }
    const int field = static_cast<int>(tag >> 3);
    const int wire_type = static_cast<int>(tag & 7);
    if (field == content_field && wire_type == kWireLengthDelimited) {
      uint64_t n;
      if (!reader.ReadVarint(&n) || n > reader.remaining()) return malformed("bad content length");
      pieces_.clear();
      content_size_ = n;
      reader.Take(n, [this](absl::string_view piece) { pieces_.push_back(piece); });
      continue;
    }
    AppendVarint(tag, &fields_bytes_);
    bool ok = false;
    switch (wire_type) {
      case kWireVarint: {
        uint64_t v;
        ok = reader.ReadVarint(&v);
        if (ok) AppendVarint(v, &fields_bytes_);
        break;
      }
      case kWireFixed64:
        ok = reader.Take(8, append);
        break;
      case kWireFixed32:
        ok = reader.Take(4, append);
        break;
      case kWireLengthDelimited: {
        uint64_t n;
        ok = reader.ReadVarint(&n) && n <= reader.remaining();
        if (ok) {
          AppendVarint(n, &fields_bytes_);
          ok = reader.Take(n, append);
        }
        break;
      }
      default:
        break;  // groups (not in proto3) and invalid wire types
    }
    if (!ok) return malformed(absl::StrCat("field ", field, " is truncated or of a bad type"));
  }
  if (!fields->ParseFromString(fields_bytes_)) return malformed("bad fields");
  return absl::OkStatus();
}

void ContentMessage::CopyContentTo(char* dst) const {
  for (absl::string_view piece : pieces_) {
    if (piece.empty()) continue;  // may have no buffer: memcpy from null is undefined
    std::memcpy(dst, piece.data(), piece.size());
    dst += piece.size();
  }
}

void ContentMessage::Clear() {
  slices_.clear();
  pieces_.clear();
  content_size_ = 0;
  fields_bytes_.clear();
}

}  // namespace psd
