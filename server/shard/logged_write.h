// LoggedWrite: one write in a move's or backup's log (part_move.h), kept as
// the bytes a pull's answer carries.
//
// A write is encoded once, as it is logged, into a buffer of its own:
// MoveWrite's encoding without the seq, which each log gives it. The same
// buffer goes into every log of the group (a backup's, another backup's, a
// move's), and a follow stream's answer (move_service.cc) sends it from
// there, the seq in a few bytes before it; a unary pull parses it back.
// Before, each log held a MoveWrite copy of the request, each answer
// copied it again and gRPC serialized it once more: three copies of every
// forwarded value on the primary besides the kernel's, per backup.
//
// Thread-safety: a LoggedWrite is immutable once made. Its slice is
// reference-counted: copies share the bytes, and the last one released
// (on any thread, gRPC's included) frees them.
#ifndef PSD_SERVER_SHARD_LOGGED_WRITE_H_
#define PSD_SERVER_SHARD_LOGGED_WRITE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "google/protobuf/message.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "psd/shard.pb.h"

namespace psd {

struct LoggedWrite {
  uint64_t seq = 0;
  grpc::Slice body;     // a MoveWrite without its seq, encoded
  int64_t charged = 0;  // the memory it is charged while logged
};

// What a logged write of `body` is charged: its bytes and bookkeeping.
int64_t LoggedCharge(const grpc::Slice& body);

// `write` (its seq unset) encoded.
grpc::Slice EncodeLoggedWrite(const MoveWrite& write);

// A MoveWrite from `caller` whose field `path` (outer first: MoveWrite's
// field, then the field of the message it holds) is `request`, encoded
// straight from the request (it is not copied into a MoveWrite first).
grpc::Slice EncodeLoggedRequest(uint64_t caller, absl::Span<const int> path,
                                const google::protobuf::MessageLite& request);

// Where a logged write's value bytes sit (outer field first), for
// EncodeLoggedWithContent: an assign's value, an apply's gradient, a
// streamed value's chunk.
inline constexpr std::array<int, 4> kLoggedAssignValue = {
    MoveWrite::kOpFieldNumber, BatchOp::kAssignFieldNumber, AssignRequest::kValueFieldNumber,
    TensorProto::kContentFieldNumber};
inline constexpr std::array<int, 4> kLoggedApplyGradient = {
    MoveWrite::kOpFieldNumber, BatchOp::kApplyDenseFieldNumber,
    ApplyDenseRequest::kGradientFieldNumber, TensorProto::kContentFieldNumber};
inline constexpr std::array<int, 2> kLoggedChunkContent = {MoveWrite::kChunkFieldNumber,
                                                           StagedChunk::kContentFieldNumber};

// `request` copied into `write` as its field `path` (as EncodeLoggedRequest
// lays it out), for an entry amended before it is encoded.
void SetLoggedRequest(absl::Span<const int> path, const google::protobuf::Message& request,
                      MoveWrite* write);

// `fields` with a bytes field of `content_bytes` bytes at `path` (outer
// first, the bytes field last; unset in `fields`), which the caller writes
// at *content before the slice is logged: a value goes from its staging
// buffer into the entry once, not zero-filled, copied into a MoveWrite and
// encoded.
grpc::Slice EncodeLoggedWithContent(const MoveWrite& fields, absl::Span<const int> path,
                                    size_t content_bytes, char** content);

// `logged` as the MoveWrite it encodes, its seq set. DATA_LOSS for bytes
// that do not parse (never for a body this process encoded).
absl::Status DecodeLoggedWrite(const LoggedWrite& logged, MoveWrite* write);

// A PullMoveResponse's bytes: `fields` (its `writes` and `content` empty)
// followed by `writes` as its `writes` entries and `content`'s pieces,
// concatenated, as its `content`, the writes' bodies and the pieces
// referenced, not copied. Parses as `fields` with those writes and that
// content (protobuf's encoding up to field order).
grpc::ByteBuffer EncodePullAnswer(const PullMoveResponse& fields,
                                  const std::vector<LoggedWrite>& writes,
                                  std::vector<grpc::Slice> content = {});

}  // namespace psd

#endif  // PSD_SERVER_SHARD_LOGGED_WRITE_H_
