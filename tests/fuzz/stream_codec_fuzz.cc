// Fuzzes the raw stream codec (psd/stream_codec.h), which parses the
// messages of Shard.ReadStream and Shard.AssignStream by hand. The input's
// first byte picks the message type and how the rest is cut into slices (as
// gRPC may deliver one message in many); the rest is the message.
//
// Differential check against protobuf: ContentMessage::Parse must accept
// exactly what protobuf accepts, and then yield the same small fields and
// the same content bytes.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "google/protobuf/util/message_differencer.h"
#include "psd/shard.pb.h"
#include "psd/stream_codec.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "stream_codec_fuzz: %s\n", what);
    std::abort();
  }
}

template <typename Message>
void RunOne(const std::string& bytes, uint8_t cut_seed, int content_field,
            std::string* (Message::*mutable_content)()) {
  // Cut into up to 8 slices at pseudo-random offsets (empty slices too).
  std::vector<grpc::Slice> slices;
  size_t start = 0;
  uint32_t x = cut_seed * 2654435761u + 1;
  const int pieces = 1 + (cut_seed & 7);
  for (int i = 1; i < pieces && !bytes.empty(); ++i) {
    x = x * 1103515245u + 12345u;
    size_t cut = start + (x >> 8) % (bytes.size() - start + 1);
    slices.emplace_back(bytes.data() + start, cut - start);
    start = cut;
  }
  slices.emplace_back(bytes.data() + start, bytes.size() - start);
  grpc::ByteBuffer buffer(slices.data(), slices.size());

  Message fields;
  psd::ContentMessage parsed;
  const absl::Status s = parsed.Parse(buffer, content_field, &fields, "fuzz");
  Message reference;
  const bool reference_ok = reference.ParseFromString(bytes);

  Message decoded;
  Check(psd::DecodeMessage(buffer, &decoded) == reference_ok,
        "DecodeMessage disagrees with protobuf");

  // The hand parser may refuse more than protobuf (unknown fields of the
  // group wire types, which no proto3 sender writes).
  if (!s.ok()) return;
  std::string content(parsed.content_size(), '\0');
  parsed.CopyContentTo(content.data());
  size_t total = 0;
  for (absl::string_view piece : parsed.content()) total += piece.size();
  Check(total == parsed.content_size(), "content pieces do not add up");
  Check(reference_ok, "the hand parser accepts a message protobuf refuses");
  Check(content == *(reference.*mutable_content)(), "content differs from protobuf's");
  (reference.*mutable_content)()->clear();
  Check(google::protobuf::util::MessageDifferencer::Equals(fields, reference),
        "small fields differ from protobuf's");

  // Encoding the parsed message again gives protobuf's bytes for it.
  grpc::ByteBuffer again = psd::EncodeWithContent(fields, content_field, grpc::Slice(content));
  Message round;
  Check(psd::DecodeMessage(again, &round), "re-encoded message does not parse");
  Check(*(round.*mutable_content)() == content, "re-encoded content differs");
  parsed.Clear();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t selector = data[0];
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (selector & 0x80) {
    RunOne<psd::AssignStreamRequest>(bytes, selector, psd::kAssignStreamContentField,
                                     &psd::AssignStreamRequest::mutable_content);
  } else {
    RunOne<psd::TensorChunk>(bytes, selector, psd::kTensorChunkContentField,
                             &psd::TensorChunk::mutable_content);
  }
  (void)psd::IsRawStreamMethod(bytes);
  return 0;
}
