#include "psd/stream_codec.h"

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "psd/shard.pb.h"

namespace psd {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// `bytes` cut into slices at `cuts` (offsets), as gRPC may deliver them.
grpc::ByteBuffer Sliced(const std::string& bytes, std::vector<size_t> cuts) {
  std::vector<grpc::Slice> slices;
  size_t start = 0;
  cuts.push_back(bytes.size());
  for (size_t cut : cuts) {
    slices.emplace_back(bytes.data() + start, cut - start);
    start = cut;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Content(const ContentMessage& m) {
  std::string out(m.content_size(), '\0');
  m.CopyContentTo(out.data());
  return out;
}

TensorChunk FirstChunk() {
  TensorChunk chunk;
  chunk.set_dtype(DT_FLOAT);
  chunk.mutable_shape()->add_dims(1 << 20);
  chunk.set_version(7);
  chunk.set_total_bytes(4 << 20);
  chunk.set_offset(1 << 20);
  return chunk;
}

TEST(StreamCodecTest, EncodingIsProtobufsByteForByte) {
  TensorChunk fields = FirstChunk();
  const std::string content(300000, 'x');
  grpc::ByteBuffer encoded =
      EncodeWithContent(fields, kTensorChunkContentField, grpc::Slice(content));
  TensorChunk whole = fields;
  whole.set_content(content);
  EXPECT_EQ(Flatten(encoded), whole.SerializeAsString());

  AssignStreamRequest none;
  grpc::ByteBuffer data = EncodeWithContent(none, kAssignStreamContentField, grpc::Slice("abc", 3));
  AssignStreamRequest with;
  with.set_content("abc");
  EXPECT_EQ(Flatten(data), with.SerializeAsString());
}

TEST(StreamCodecTest, ContentInPiecesEncodesAsTheirConcatenation) {
  TensorChunk fields = FirstChunk();
  const std::string a(70000, 'a'), b(5, 'b'), c(200001, 'c');
  std::vector<grpc::Slice> pieces;
  pieces.emplace_back(a);
  pieces.emplace_back();  // empty pieces are skipped
  pieces.emplace_back(b);
  pieces.emplace_back(c);
  grpc::ByteBuffer encoded = EncodeWithContent(fields, kTensorChunkContentField, std::move(pieces));
  TensorChunk whole = fields;
  whole.set_content(a + b + c);
  EXPECT_EQ(Flatten(encoded), whole.SerializeAsString());
  // No pieces (an empty chunk): the content is left out.
  EXPECT_EQ(
      Flatten(EncodeWithContent(fields, kTensorChunkContentField, std::vector<grpc::Slice>())),
      fields.SerializeAsString());
}

TEST(StreamCodecTest, EmptyContentIsLeftOutAsProtobufDoes) {
  TensorChunk fields = FirstChunk();
  grpc::ByteBuffer encoded = EncodeWithContent(fields, kTensorChunkContentField, grpc::Slice());
  EXPECT_EQ(Flatten(encoded), fields.SerializeAsString());
}

TEST(StreamCodecTest, ParsesFieldsAndContentSplitAnywhereAcrossSlices) {
  TensorChunk whole = FirstChunk();
  std::string content(5000, '\0');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 31);
  whole.set_content(content);
  const std::string bytes = whole.SerializeAsString();
  // Every cut point, including inside tags, varints and the length prefix.
  for (size_t cut = 1; cut < 40; ++cut) {
    SCOPED_TRACE(cut);
    ContentMessage message;
    TensorChunk fields;
    ASSERT_TRUE(message
                    .Parse(Sliced(bytes, {cut, cut + 1, bytes.size() - 7}),
                           kTensorChunkContentField, &fields, "chunk")
                    .ok());
    EXPECT_EQ(fields.dtype(), DT_FLOAT);
    EXPECT_EQ(fields.shape().dims(0), 1 << 20);
    EXPECT_EQ(fields.version(), 7u);
    EXPECT_EQ(fields.total_bytes(), 4 << 20);
    EXPECT_EQ(fields.offset(), 1 << 20);
    EXPECT_TRUE(fields.content().empty());
    EXPECT_EQ(Content(message), content);
  }
}

TEST(StreamCodecTest, ParsesAHeaderOnlyAssignMessage) {
  AssignStreamRequest first;
  first.mutable_header()->set_name("emb");
  first.mutable_header()->set_total_bytes(123);
  first.mutable_header()->mutable_request_id()->set_client_id(99);
  ContentMessage message;
  AssignStreamRequest fields;
  ASSERT_TRUE(
      message.Parse(EncodeMessage(first), kAssignStreamContentField, &fields, "assign").ok());
  EXPECT_EQ(fields.header().name(), "emb");
  EXPECT_EQ(fields.header().total_bytes(), 123);
  EXPECT_EQ(fields.header().request_id().client_id(), 99u);
  EXPECT_EQ(message.content_size(), 0u);
}

TEST(StreamCodecTest, TheLastContentFieldWinsAsInProtobuf) {
  AssignStreamRequest a, b;
  a.set_content("first");
  b.set_content("second");
  const std::string bytes = a.SerializeAsString() + b.SerializeAsString();
  AssignStreamRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ContentMessage message;
  AssignStreamRequest fields;
  ASSERT_TRUE(message.Parse(Sliced(bytes, {3}), kAssignStreamContentField, &fields, "x").ok());
  EXPECT_EQ(Content(message), parsed.content());
}

TEST(StreamCodecTest, MalformedBytesAreInvalidArgumentNamingTheStream) {
  TensorChunk whole = FirstChunk();
  whole.set_content(std::string(100, 'y'));
  const std::string bytes = whole.SerializeAsString();
  const std::vector<std::string> bad = {
      bytes.substr(0, bytes.size() - 1),  // content cut short
      std::string("\x08", 1),             // varint field without its value
      std::string("\x00\x01", 2),         // field number 0
      std::string("\x0b\x01", 2),         // a group (wire type 3)
      std::string("\x32\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11),  // 11-byte varint
  };
  for (const std::string& b : bad) {
    ContentMessage message;
    TensorChunk fields;
    absl::Status s = message.Parse(Sliced(b, {}), kTensorChunkContentField, &fields,
                                   "a chunk of variable 'v'");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("a chunk of variable 'v'"), std::string::npos) << s;
  }
}

// A tag is a varint32 of at most 5 bytes, as protobuf reads it. A wider one
// was accepted and re-encoded as a different tag, so the small fields parsed
// differently from what any protobuf reader sees (found by
// stream_codec_fuzz's comparison with protobuf).
TEST(StreamCodecTest, TagsWiderThan32BitsOrLongerThan5BytesAreMalformed) {
  const std::vector<std::string> bad = {
      std::string("\x90\xff\xff\xff\x98\x00\x98\x0a", 8),  // 33-bit tag, then a varint
      std::string("\x88\x80\x80\x80\x80\x00\x01", 7),      // field 1 in a 6-byte tag
  };
  for (const std::string& b : bad) {
    TensorChunk reference;
    ASSERT_FALSE(reference.ParseFromString(b));
    ContentMessage message;
    TensorChunk fields;
    absl::Status s = message.Parse(Sliced(b, {}), kTensorChunkContentField, &fields, "chunk");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  }
}

TEST(StreamCodecTest, DecodeMessageJoinsSlices) {
  ReadStreamRequest request;
  request.set_name("scope/emb/part_3");
  request.set_chunk_bytes(1 << 20);
  request.set_shard_incarnation(0x1234567890abcdefULL);
  const std::string bytes = request.SerializeAsString();
  ReadStreamRequest parsed;
  ASSERT_TRUE(DecodeMessage(Sliced(bytes, {2, 9}), &parsed));
  EXPECT_EQ(parsed.name(), request.name());
  EXPECT_EQ(parsed.chunk_bytes(), 1 << 20);
  EXPECT_EQ(parsed.shard_incarnation(), request.shard_incarnation());
  EXPECT_FALSE(DecodeMessage(Sliced("\x0a\x05" "ab", {}), &parsed));
}

// Two ops of a Batch message as the client's data stream sends them: each
// op's small fields, then its tensors' contents as nested fields of their
// own, referenced. Parsed by protobuf, the message is the ops with every
// content in place.
TEST(StreamCodecTest, NestedContentsParseAsTheWholeMessage) {
  BatchOp scatter;
  ScatterRequest* request = scatter.mutable_scatter();
  request->set_name("emb/part_0");
  request->mutable_indices()->set_dtype(DT_INT64);
  request->mutable_indices()->mutable_shape()->add_dims(3);
  request->mutable_updates()->set_dtype(DT_FLOAT);
  request->mutable_updates()->mutable_shape()->add_dims(3);
  request->mutable_request_id()->set_client_id(7);
  request->mutable_request_id()->set_seq(9);
  const std::string indices(24, '\x01');
  // Long enough for a multi-byte length at every level.
  std::string updates(70000, '\0');
  for (size_t i = 0; i < updates.size(); ++i) updates[i] = static_cast<char>(i * 7);
  std::vector<NestedContent> contents = {
      {{BatchOp::kScatterFieldNumber, ScatterRequest::kIndicesFieldNumber,
        TensorProto::kContentFieldNumber},
       grpc::Slice(indices)},
      {{BatchOp::kScatterFieldNumber, ScatterRequest::kUpdatesFieldNumber,
        TensorProto::kContentFieldNumber},
       grpc::Slice(updates)}};
  BatchOp count;
  count.mutable_count_up_to()->set_name("step");
  count.mutable_count_up_to()->set_limit(5);

  std::vector<grpc::Slice> slices;
  size_t total = AppendWithNestedContents(scatter, contents, BatchRequest::kOpsFieldNumber, &slices);
  total += AppendWithNestedContents(count, {}, BatchRequest::kOpsFieldNumber, &slices);
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  EXPECT_EQ(buffer.Length(), total);

  BatchRequest parsed;
  ASSERT_TRUE(DecodeMessage(buffer, &parsed));
  BatchRequest expected;
  *expected.add_ops() = scatter;
  expected.mutable_ops(0)->mutable_scatter()->mutable_indices()->set_content(indices);
  expected.mutable_ops(0)->mutable_scatter()->mutable_updates()->set_content(updates);
  *expected.add_ops() = count;
  EXPECT_EQ(parsed.SerializeAsString(), expected.SerializeAsString());
  // The big content is referenced, not copied.
  bool referenced = false;
  for (const grpc::Slice& slice : slices) {
    referenced |= slice.size() == updates.size();
  }
  EXPECT_TRUE(referenced);
}

// A follow outlives its snapshot copy: once retired, its pool keeps no
// spare buffers, not even those of slices gRPC lets go of later.
TEST(StreamCodecTest, ARetiredPoolKeepsNoSpares) {
  auto pool = ChunkBufferPool::Create();
  char* data = nullptr;
  { grpc::Slice a = pool->NewSlice(1000, &data), b = pool->NewSlice(1000, &data); }
  EXPECT_EQ(pool->idle_buffers(), 2u);
  grpc::Slice lent = pool->NewSlice(1000, &data);
  pool->Retire();
  EXPECT_EQ(pool->idle_buffers(), 0u);
  lent = grpc::Slice();
  EXPECT_EQ(pool->idle_buffers(), 0u);
  // It still hands out slices.
  grpc::Slice after = pool->NewSlice(10, &data);
  EXPECT_EQ(after.size(), 10u);
}

TEST(StreamCodecTest, PoolReusesABufferOnceGrpcLetsGoOfItsSlice) {
  auto pool = ChunkBufferPool::Create();
  char* first = nullptr;
  {
    grpc::Slice slice = pool->NewSlice(1000, &first);
    std::memset(first, 'a', 1000);
    ASSERT_EQ(slice.size(), 1000u);
    EXPECT_EQ(slice.begin()[999], 'a');
    // While the slice is held, the next one gets a buffer of its own.
    char* second = nullptr;
    grpc::Slice other = pool->NewSlice(1000, &second);
    EXPECT_NE(first, second);
  }
  // Both came back; the last one returned (the first slice's) is reused.
  char* again = nullptr;
  grpc::Slice slice = pool->NewSlice(800, &again);
  EXPECT_EQ(again, first);
  EXPECT_EQ(slice.size(), 800u);
  // A request bigger than every spare gets a new buffer.
  char* big = nullptr;
  grpc::Slice large = pool->NewSlice(5000, &big);
  EXPECT_EQ(large.size(), 5000u);
  EXPECT_NE(big, again);
}

TEST(StreamCodecTest, PoolOutlivesItsOwnerWhileSlicesAreLent) {
  char* data = nullptr;
  grpc::Slice slice;
  {
    auto pool = ChunkBufferPool::Create();
    slice = pool->NewSlice(64, &data);
    std::memset(data, 'z', 64);
  }
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(slice.begin()), slice.size()),
            std::string(64, 'z'));
}

// A Batch reply sends a big gather or read result from the result's own
// buffer (no copy into the reply), and the bytes still parse as the reply.
TEST(StreamCodecTest, BatchResponseSendsBigResultsFromTheirOwnBuffers) {
  BatchResponse response;
  BatchOpResult* assign = response.add_results();
  assign->mutable_assign()->set_version(7);
  BatchOpResult* gather = response.add_results();
  gather->mutable_gather()->mutable_value()->set_dtype(DT_FLOAT);
  gather->mutable_gather()->mutable_value()->mutable_shape()->add_dims(64 << 10);
  std::string rows(256 << 10, '\0');
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<char>(i * 7);
  gather->mutable_gather()->mutable_value()->set_content(rows);
  BatchOpResult* read = response.add_results();
  read->mutable_read()->mutable_value()->set_content("small");
  read->mutable_read()->set_version(3);
  BatchOpResult* failed = response.add_results();
  failed->set_code(5);
  failed->set_message("no such variable");
  BatchOpResult* big_read = response.add_results();
  big_read->mutable_read()->mutable_value()->set_content(std::string(kMinSliceContentBytes, 'r'));
  const BatchResponse expected = response;
  const char* gather_bytes = gather->gather().value().content().data();

  grpc::ByteBuffer buffer = EncodeBatchResponse(&response);
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(buffer.Dump(&slices).ok());
  bool referenced = false;
  for (const grpc::Slice& slice : slices) {
    if (reinterpret_cast<const char*>(slice.begin()) == gather_bytes) {
      referenced = slice.size() == rows.size();
    }
  }
  EXPECT_TRUE(referenced) << "the gathered rows were copied into the reply";
  BatchResponse parsed;
  ASSERT_TRUE(DecodeMessage(buffer, &parsed));
  EXPECT_EQ(parsed.SerializeAsString(), expected.SerializeAsString());
}

TEST(StreamCodecTest, BatchResponseOfSmallResultsIsOneSlice) {
  BatchResponse response;
  response.add_results()->mutable_assign()->set_version(1);
  response.add_results()->mutable_gather()->mutable_value()->set_content(std::string(100, 'g'));
  const BatchResponse expected = response;
  grpc::ByteBuffer buffer = EncodeBatchResponse(&response);
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(buffer.Dump(&slices).ok());
  EXPECT_EQ(slices.size(), 1u);
  BatchResponse parsed;
  ASSERT_TRUE(DecodeMessage(buffer, &parsed));
  EXPECT_EQ(parsed.SerializeAsString(), expected.SerializeAsString());
}

TEST(StreamCodecTest, RawMethodsAreKnownWithOrWithoutTheLeadingSlash) {
  EXPECT_TRUE(IsRawStreamMethod("/psd.Shard/ReadStream"));
  EXPECT_TRUE(IsRawStreamMethod("psd.Shard/AssignStream"));
  EXPECT_FALSE(IsRawStreamMethod("/psd.Shard/Read"));
  EXPECT_TRUE(IsRawStreamMethod("psd.Shard/Batch"));
  EXPECT_TRUE(IsRawStreamMethod("/psd.ShardMove/FollowMove"));
  EXPECT_TRUE(IsRawStreamMethod("/psd.ShardMove/PullMove"));
  EXPECT_FALSE(IsRawStreamMethod("/psd.ShardMove/StartMoveIn"));
  EXPECT_FALSE(IsRawStreamMethod("/psd.ShardMove/PullMoveX"));
}

}  // namespace
}  // namespace psd
