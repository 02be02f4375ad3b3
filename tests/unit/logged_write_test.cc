// LoggedWrite (server/shard/logged_write.h): a logged write is kept as the
// bytes a pull's answer carries, encoded straight from the request or the
// staged value. What a backup relies on: whatever way a write was encoded,
// it parses as exactly the MoveWrite protobuf would have sent, with its
// seq; a follow stream's answer parses as the PullMoveResponse with those
// writes in order; and a big value is sent from the log's own buffer.
#include "shard/logged_write.h"

#include <cstring>
#include <string>
#include <vector>

#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "psd/stream_codec.h"

namespace psd {
namespace {

using google::protobuf::util::MessageDifferencer;

ScatterRequest Scatter(size_t value_bytes) {
  ScatterRequest r;
  r.set_name("emb/part_1");
  r.set_op(UPDATE_ADD);
  r.mutable_request_id()->set_client_id(77);
  r.mutable_request_id()->set_seq(12);
  r.mutable_indices()->set_dtype(DT_INT64);
  r.mutable_indices()->mutable_shape()->add_dims(2);
  r.mutable_indices()->set_content(std::string(16, '\x03'));
  r.mutable_updates()->set_dtype(DT_FLOAT);
  std::string values(value_bytes, '\0');
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<char>(i * 7);
  r.mutable_updates()->set_content(values);
  return r;
}

MoveWrite Decoded(uint64_t seq, const grpc::Slice& body) {
  MoveWrite w;
  absl::Status s = DecodeLoggedWrite(LoggedWrite{seq, body, LoggedCharge(body)}, &w);
  EXPECT_TRUE(s.ok()) << s;
  return w;
}

TEST(LoggedWriteTest, ARequestEncodedStraightParsesAsTheMoveWriteProtobufWouldMake) {
  for (uint64_t caller : {uint64_t{0}, uint64_t{0xfeedface12345678}}) {
    for (size_t bytes : {size_t{0}, size_t{12}, size_t{1} << 20}) {
      const ScatterRequest request = Scatter(bytes);
      MoveWrite expected;
      *expected.mutable_op()->mutable_scatter() = request;
      expected.set_caller(caller);
      expected.set_seq(41);
      const grpc::Slice body = EncodeLoggedRequest(
          caller, {MoveWrite::kOpFieldNumber, BatchOp::kScatterFieldNumber}, request);
      EXPECT_TRUE(MessageDifferencer::Equals(Decoded(41, body), expected))
          << "caller " << caller << ", " << bytes << " value bytes";
      // Protobuf's own encoding, byte for byte (fields in number order).
      MoveWrite unsequenced = expected;
      unsequenced.clear_seq();
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(body.begin()), body.size()),
                unsequenced.SerializeAsString());
      // The same entry as a message (to amend before it is encoded).
      MoveWrite set;
      SetLoggedRequest({MoveWrite::kOpFieldNumber, BatchOp::kScatterFieldNumber}, request, &set);
      set.set_caller(caller);
      EXPECT_TRUE(MessageDifferencer::Equals(set, unsequenced));
    }
  }
  // A table's write goes in its own field.
  EvictEmbeddingRequest evict;
  evict.set_name("emb/part_0");
  evict.set_global_step(40);
  MoveWrite expected;
  *expected.mutable_table()->mutable_evict() = evict;
  expected.set_seq(3);
  EXPECT_TRUE(MessageDifferencer::Equals(
      Decoded(3, EncodeLoggedRequest(0, {MoveWrite::kTableFieldNumber,
                                         TableWrite::kEvictFieldNumber},
                                     evict)),
      expected));
}

TEST(LoggedWriteTest, AContentWrittenIntoTheEntryParsesInItsPlaceBesideTheOtherFields) {
  for (size_t bytes : {size_t{0}, size_t{5}, size_t{300}, size_t{3} << 20}) {
    std::string value(bytes, '\0');
    for (size_t i = 0; i < bytes; ++i) value[i] = static_cast<char>(i % 251);
    // An assign's value: name, dtype and shape beside the content.
    MoveWrite fields;
    fields.set_caller(9);
    AssignRequest* assign = fields.mutable_op()->mutable_assign();
    assign->set_name("w");
    assign->mutable_request_id()->set_client_id(5);
    assign->mutable_value()->set_dtype(DT_UINT8);
    assign->mutable_value()->mutable_shape()->add_dims(static_cast<int64_t>(bytes));
    char* content = nullptr;
    const grpc::Slice body = EncodeLoggedWithContent(fields, kLoggedAssignValue, bytes, &content);
    ASSERT_NE(content, nullptr);
    // The content is the entry's last bytes.
    EXPECT_EQ(content + bytes, reinterpret_cast<const char*>(body.begin()) + body.size());
    if (bytes > 0) std::memcpy(content, value.data(), bytes);
    MoveWrite expected = fields;
    expected.mutable_op()->mutable_assign()->mutable_value()->set_content(value);
    expected.set_seq(7);
    EXPECT_TRUE(MessageDifferencer::Equals(Decoded(7, body), expected)) << bytes << " bytes";

    // A staged chunk, with the stream's header.
    MoveWrite chunk;
    chunk.set_caller(9);
    chunk.mutable_chunk()->set_staged_id(4);
    chunk.mutable_chunk()->set_offset(1 << 22);
    chunk.mutable_chunk()->mutable_header()->set_name("w");
    const grpc::Slice chunk_body =
        EncodeLoggedWithContent(chunk, kLoggedChunkContent, bytes, &content);
    if (bytes > 0) std::memcpy(content, value.data(), bytes);
    MoveWrite expected_chunk = chunk;
    expected_chunk.mutable_chunk()->set_content(value);
    expected_chunk.set_seq(8);
    EXPECT_TRUE(MessageDifferencer::Equals(Decoded(8, chunk_body), expected_chunk));
  }
}

TEST(LoggedWriteTest, AFollowAnswerParsesAsItsFieldsWithTheWritesInOrderAndSendsBigOnesInPlace) {
  PullMoveResponse fields;
  fields.set_member(3);
  fields.set_final_seq(1000);
  fields.set_end(true);
  fields.mutable_window()->add_clients()->set_max_seq(17);
  std::vector<LoggedWrite> writes;
  PullMoveResponse expected = fields;
  // Small writes (copied into the answer) around a big one (referenced).
  for (int i = 0; i < 5; ++i) {
    MoveWrite w;
    *w.mutable_op()->mutable_scatter() = Scatter(i == 2 ? (1 << 20) : 8 * i);
    w.set_caller(100 + i);
    const grpc::Slice body = EncodeLoggedWrite(w);
    const uint64_t seq = 1ull << (7 * i);  // seqs of 1 to 5 varint bytes
    writes.push_back(LoggedWrite{seq, body, LoggedCharge(body)});
    w.set_seq(seq);
    *expected.add_writes() = w;
  }
  const grpc::ByteBuffer answer = EncodePullAnswer(fields, writes);
  PullMoveResponse parsed;
  ASSERT_TRUE(DecodeMessage(answer, &parsed));
  EXPECT_TRUE(MessageDifferencer::Equals(parsed, expected));

  // The big write's bytes are the log's buffer itself, not a copy.
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(answer.Dump(&slices).ok());
  bool referenced = false;
  for (const grpc::Slice& slice : slices) {
    referenced = referenced || slice.begin() == writes[2].body.begin();
  }
  EXPECT_TRUE(referenced);

  // No writes: the fields alone; and an empty answer is still a message.
  PullMoveResponse alone;
  ASSERT_TRUE(DecodeMessage(EncodePullAnswer(fields, {}), &alone));
  EXPECT_TRUE(MessageDifferencer::Equals(alone, fields));
  ASSERT_TRUE(DecodeMessage(EncodePullAnswer(PullMoveResponse(), {}), &alone));
  EXPECT_TRUE(MessageDifferencer::Equals(alone, PullMoveResponse()));
}

TEST(LoggedWriteTest, BytesThatDoNotParseAreDataLossNamingTheWrite) {
  const std::string garbage = "\x0a\xff\xff\xff\xff\x0f";  // a length past the end
  const grpc::Slice body(garbage);
  MoveWrite w;
  absl::Status s = DecodeLoggedWrite(LoggedWrite{12, body, LoggedCharge(body)}, &w);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("logged write 12"), std::string::npos) << s;
}

}  // namespace
}  // namespace psd
