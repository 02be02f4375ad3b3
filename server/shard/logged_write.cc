#include "shard/logged_write.h"

#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpc/slice.h"
#include "psd/stream_codec.h"

namespace psd {

namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

uint32_t LengthDelimitedTag(int field) {
  return WireFormatLite::MakeTag(field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
}

size_t HeaderSize(int field, uint64_t length) {
  return CodedOutputStream::VarintSize32(LengthDelimitedTag(field)) +
         CodedOutputStream::VarintSize64(length);
}

uint8_t* WriteHeader(int field, uint64_t length, uint8_t* p) {
  p = CodedOutputStream::WriteVarint32ToArray(LengthDelimitedTag(field), p);
  return CodedOutputStream::WriteVarint64ToArray(length, p);
}

// A buffer of exactly `bytes` bytes, uninitialized, always on the heap
// (never inlined in the slice itself), so the pointer to its bytes stays
// valid however the slice is moved or copied.
grpc::Slice NewBuffer(size_t bytes, uint8_t** data) {
  grpc::Slice slice(grpc_slice_malloc_large(bytes), grpc::Slice::STEAL_REF);
  *data = const_cast<uint8_t*>(slice.begin());
  return slice;
}

// Writes the headers of `path` (outer first) around `inner` bytes; returns
// where the inner bytes go. `lengths` are the fields' lengths (from
// NestedLengths).
// A path's field lengths: no allocation for the paths used (at most 4).
using PathLengths = absl::InlinedVector<uint64_t, 4>;

uint8_t* WriteHeaders(absl::Span<const int> path, const PathLengths& lengths, uint8_t* p) {
  size_t i = 0;
  for (int field : path) p = WriteHeader(field, lengths[i++], p);
  return p;
}

// The length of each field of `path` (outer first) holding `inner` bytes;
// *total is the bytes of the outermost field with its header.
PathLengths NestedLengths(absl::Span<const int> path, uint64_t inner, uint64_t* total) {
  PathLengths lengths(path.size());
  uint64_t length = inner;
  for (size_t i = path.size(); i-- > 0;) {
    lengths[i] = length;
    length += HeaderSize(path[i], length);
  }
  *total = length;
  return lengths;
}

}  // namespace

int64_t LoggedCharge(const grpc::Slice& body) {
  return static_cast<int64_t>(body.size()) + 64;
}

grpc::Slice EncodeLoggedWrite(const MoveWrite& write) {
  uint8_t* p;
  grpc::Slice slice = NewBuffer(write.ByteSizeLong(), &p);
  write.SerializeWithCachedSizesToArray(p);
  return slice;
}

grpc::Slice EncodeLoggedRequest(uint64_t caller, absl::Span<const int> path,
                                const google::protobuf::MessageLite& request) {
  uint64_t nested;
  const PathLengths lengths = NestedLengths(path, request.ByteSizeLong(), &nested);
  // proto3 leaves a zero caller out, as protobuf does.
  const uint32_t caller_tag =
      WireFormatLite::MakeTag(MoveWrite::kCallerFieldNumber, WireFormatLite::WIRETYPE_FIXED64);
  const size_t head = caller != 0 ? CodedOutputStream::VarintSize32(caller_tag) + 8 : 0;
  uint8_t* p;
  grpc::Slice slice = NewBuffer(head + nested, &p);
  if (caller != 0) {
    p = CodedOutputStream::WriteVarint32ToArray(caller_tag, p);
    p = CodedOutputStream::WriteLittleEndian64ToArray(caller, p);
  }
  p = WriteHeaders(path, lengths, p);
  request.SerializeWithCachedSizesToArray(p);
  return slice;
}

void SetLoggedRequest(absl::Span<const int> path, const google::protobuf::Message& request,
                      MoveWrite* write) {
  google::protobuf::Message* at = write;
  for (int field : path) {
    at = at->GetReflection()->MutableMessage(at, at->GetDescriptor()->FindFieldByNumber(field));
  }
  at->CopyFrom(request);
}

grpc::Slice EncodeLoggedWithContent(const MoveWrite& fields, absl::Span<const int> path,
                                    size_t content_bytes, char** content) {
  uint64_t nested;
  const PathLengths lengths = NestedLengths(path, content_bytes, &nested);
  const size_t head = fields.ByteSizeLong();
  uint8_t* p;
  grpc::Slice slice = NewBuffer(head + nested, &p);
  p = fields.SerializeWithCachedSizesToArray(p);
  // The content's messages again, after the other fields: protobuf merges
  // the occurrences of an embedded message and reads fields in any order.
  p = WriteHeaders(path, lengths, p);
  *content = reinterpret_cast<char*>(p);
  return slice;
}

absl::Status DecodeLoggedWrite(const LoggedWrite& logged, MoveWrite* write) {
  if (!write->ParseFromArray(logged.body.begin(), static_cast<int>(logged.body.size()))) {
    return absl::DataLossError(absl::StrCat("logged write ", logged.seq, " (",
                                            logged.body.size(), " bytes) does not parse"));
  }
  write->set_seq(logged.seq);
  return absl::OkStatus();
}

grpc::ByteBuffer EncodePullAnswer(const PullMoveResponse& fields,
                                  const std::vector<LoggedWrite>& writes,
                                  std::vector<grpc::Slice> content) {
  std::vector<grpc::Slice> slices;
  // Small bodies are copied into one buffer with the headers; big ones go
  // in a slice of their own, referenced.
  std::string copied;
  fields.AppendToString(&copied);
  const uint32_t seq_tag =
      WireFormatLite::MakeTag(MoveWrite::kSeqFieldNumber, WireFormatLite::WIRETYPE_VARINT);
  for (const LoggedWrite& w : writes) {
    const size_t seq_bytes =
        CodedOutputStream::VarintSize32(seq_tag) + CodedOutputStream::VarintSize64(w.seq);
    uint8_t head[32];
    uint8_t* p = WriteHeader(PullMoveResponse::kWritesFieldNumber, seq_bytes + w.body.size(), head);
    p = CodedOutputStream::WriteVarint32ToArray(seq_tag, p);
    p = CodedOutputStream::WriteVarint64ToArray(w.seq, p);
    copied.append(reinterpret_cast<const char*>(head), p - head);
    if (w.body.size() < kMinSliceContentBytes) {
      copied.append(reinterpret_cast<const char*>(w.body.begin()), w.body.size());
      continue;
    }
    slices.emplace_back(copied);
    copied.clear();
    slices.push_back(w.body);
  }
  if (!content.empty()) {
    size_t bytes = 0;
    for (const grpc::Slice& piece : content) bytes += piece.size();
    uint8_t head[16];
    const uint8_t* end = WriteHeader(PullMoveResponse::kContentFieldNumber, bytes, head);
    copied.append(reinterpret_cast<const char*>(head), end - head);
    slices.emplace_back(copied);
    copied.clear();
    for (grpc::Slice& piece : content) slices.push_back(std::move(piece));
  }
  if (!copied.empty() || slices.empty()) slices.emplace_back(copied);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

}  // namespace psd
