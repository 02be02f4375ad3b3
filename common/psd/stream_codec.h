// The wire codec of the streamed data path (Shard.ReadStream and
// Shard.AssignStream) without protobuf's copies of the content bytes.
//
// Both streams carry messages whose big field is a `bytes content` (a
// TensorChunk's field 6, an AssignStreamRequest's field 2). Parsed as
// protobuf, every chunk's content is copied out of gRPC's receive buffers
// into a std::string and then again into its destination; serialized, it is
// copied once more into gRPC's send buffers. Here a message is its small
// fields (serialized by protobuf as usual) followed by the content field,
// whose bytes stay in gRPC slices: a sender hands a slice it filled (or that
// references its memory), a receiver copies the content straight from the
// receive slices to where it belongs. The bytes on the wire are exactly
// protobuf's encoding, so every other client keeps working.
//
// The shard serves these two methods raw (grpc::ByteBuffer messages) and the
// C++ client calls them through a generic stub; the other methods use the
// generated protobuf code.
//
// Thread-safety: the functions are thread-safe; a ContentMessage is
// thread-compatible.
#ifndef PSD_COMMON_STREAM_CODEC_H_
#define PSD_COMMON_STREAM_CODEC_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "psd/shard.pb.h"

namespace psd {

// Full method names ("/package.Service/Method") of the raw streams.
inline constexpr char kReadStreamMethod[] = "/psd.Shard/ReadStream";
inline constexpr char kAssignStreamMethod[] = "/psd.Shard/AssignStream";
// The data stream's method, also served raw (BatchRequest and BatchResponse
// messages, big result contents sent from their own buffers).
inline constexpr char kBatchMethod[] = "/psd.Shard/Batch";
// A backup's stream of its primary's log (server/shard/logged_write.h),
// served raw by the primary, and the pulls of a move's or backup's
// snapshot (and of a move's log), served raw by the source.
inline constexpr char kFollowMoveMethod[] = "/psd.ShardMove/FollowMove";
inline constexpr char kPullMoveMethod[] = "/psd.ShardMove/PullMove";
// The content fields' numbers (see shard.proto).
inline constexpr int kTensorChunkContentField = 6;
inline constexpr int kAssignStreamContentField = 2;

// Whether `method` ("/psd.Shard/ReadStream" or "psd.Shard/ReadStream") is
// served with grpc::ByteBuffer messages, so an interceptor must not take its
// messages for protobuf objects: one of the methods above, the one list of
// them (a method served raw must be added there).
bool IsRawStreamMethod(absl::string_view method);

// Send buffers that a stream reuses: a slice from NewSlice hands its buffer
// back when gRPC lets go of it (after the bytes are written), so a stream of
// a thousand chunks cycles through two or three buffers instead of
// allocating, page-faulting and freeing one per chunk.
//
// Thread-safety: thread-safe (gRPC releases slices on its own threads). The
// pool lives until its owner and every slice it lent are gone.
class ChunkBufferPool {
 public:
  static std::shared_ptr<ChunkBufferPool> Create();
  ChunkBufferPool(const ChunkBufferPool&) = delete;
  ChunkBufferPool& operator=(const ChunkBufferPool&) = delete;

  // A writable slice of `bytes` bytes (uninitialized) and its first byte.
  grpc::Slice NewSlice(size_t bytes, char** data);
  // Frees the spare buffers and keeps none from now on (slices still lent
  // free theirs when gRPC lets go): for an owner that outlives its last
  // chunk (a follow's snapshot copy, done).
  void Retire();
  // Spare buffers kept now.
  size_t idle_buffers() const;

 private:
  struct Buffer {
    std::unique_ptr<char[]> data;
    size_t capacity = 0;
  };
  struct Lease;
  ChunkBufferPool() = default;
  static void Return(void* lease);

  std::weak_ptr<ChunkBufferPool> self_;
  mutable absl::Mutex mu_;
  std::vector<Buffer> free_ ABSL_GUARDED_BY(mu_);
  bool retired_ ABSL_GUARDED_BY(mu_) = false;
};

// `fields` (whose content field is unset) followed by field `content_field`
// holding `content`, which is referenced, not copied. An empty content is
// left out, as protobuf does.
grpc::ByteBuffer EncodeWithContent(const google::protobuf::MessageLite& fields, int content_field,
                                   grpc::Slice content);
// The same with the content in pieces (concatenated, in order), each
// referenced, not copied.
grpc::ByteBuffer EncodeWithContent(const google::protobuf::MessageLite& fields, int content_field,
                                   std::vector<grpc::Slice> pieces);

// A content referenced by a message field nested below the encoded
// message: `path` names the embedded message fields that lead to it (outer
// first) and ends with the bytes field itself.
struct NestedContent {
  std::vector<int> path;
  grpc::Slice bytes;
};

// Appends to `out` the slices of `fields` (whose content fields in
// `contents` are unset) followed by each content, wrapped as the
// length-delimited field `wrap_field` of an outer message when it is > 0
// (one entry of a repeated message field). Protobuf merges the repeated
// occurrences of an embedded message field that this writes, so the bytes
// parse as `fields` with every content set, and are protobuf's own
// encoding of that message up to field order. Contents are referenced, not
// copied. Returns the number of bytes appended.
size_t AppendWithNestedContents(const google::protobuf::MessageLite& fields,
                                const std::vector<NestedContent>& contents, int wrap_field,
                                std::vector<grpc::Slice>* out);

// Contents at least this big travel in a slice of their own (moved, not
// copied); smaller ones are copied with their message's fields.
inline constexpr size_t kMinSliceContentBytes = 16 << 10;

// A Batch reply's bytes: protobuf's encoding of *response (up to field
// order), with the content of every read, gather and scatter result value
// of at least kMinSliceContentBytes moved out of *response into a slice of
// its own instead of copied into the reply's buffer (those contents are left
// empty). A reply without such a value is one slice, serialized once.
grpc::ByteBuffer EncodeBatchResponse(BatchResponse* response);

// A whole message serialized into a ByteBuffer, and parsed from one (false
// for malformed bytes; parsed from the buffer's slices without first
// joining them).
grpc::ByteBuffer EncodeMessage(const google::protobuf::MessageLite& message);
bool DecodeMessage(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);

// A received message split into its small fields (parsed by protobuf) and
// its content bytes, left in the receive buffer's slices.
class ContentMessage {
 public:
  ContentMessage() = default;
  ContentMessage(const ContentMessage&) = delete;
  ContentMessage& operator=(const ContentMessage&) = delete;

  // Parses `buffer`: every field but `content_field` into `fields` (cleared
  // first), the content field's bytes (its last occurrence, as protobuf
  // reads a repeated scalar field) as views into `buffer`'s slices, which
  // this object keeps referenced. INVALID_ARGUMENT for malformed bytes,
  // naming `what`.
  absl::Status Parse(const grpc::ByteBuffer& buffer, int content_field,
                     google::protobuf::MessageLite* fields, absl::string_view what);

  // The content in pieces, in order; valid until the next Parse or Clear.
  const std::vector<absl::string_view>& content() const { return pieces_; }
  size_t content_size() const { return content_size_; }
  // Copies the content (content_size() bytes) to `dst`.
  void CopyContentTo(char* dst) const;
  // Drops the slices (keeps the vectors' capacity for the next message).
  void Clear();

 private:
  std::vector<grpc::Slice> slices_;
  std::vector<absl::string_view> pieces_;
  size_t content_size_ = 0;
  std::string fields_bytes_;  // scratch: the small fields, re-encoded
};

}  // namespace psd

#endif  // PSD_COMMON_STREAM_CODEC_H_
