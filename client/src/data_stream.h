// DataStream: the persistent, self-batching data path from one ShardClient
// to its shard. Internal to client/src.
//
// Every data op of the ordinary API (assign and its add/sub forms, scatter,
// read, gather, count_up_to, dense and sparse optimizer applies, sync and
// async) travels as one op of a Batch message on a long-lived stream,
// instead of as a gRPC call of its own. A client has two: one for writes and
// one for reads and gathers (ShardClient::Impl::StreamFor). A stream is
// opened by its first op and reopened after it breaks.
//
// Coalescing: an op goes out at once while fewer than
// ClientOptions::data_stream_frames_in_flight messages await their replies;
// otherwise it waits, and every op that arrives while the window is full
// joins one message, sent as soon as a reply frees the window. So an idle
// client pays one round trip per op, as a unary call does, and a busy one
// (several threads, or async calls) sends many ops per message without any
// timer. A message holds at most data_stream_ops_per_frame ops and, unless
// one op alone is bigger, data_stream_frame_bytes bytes.
//
// Order: ops are sent in the order Submit took them and the shard runs a
// stream's messages, and each message's ops, in order. An op that must be
// retried goes back into that order (see below), so ops on one variable
// from one thread apply in program order.
//
// No copies of big contents: a tensor's content of at least
// kMinLentContentBytes is sent from the caller's memory (a sync call lends
// it until the op is done and gRPC has let go of it; an async op owns it),
// as the trailing content field of its tensor (stream_codec.h), so the bytes
// on the wire are protobuf's encoding of the Batch message.
//
// Failures, under the client's RetryPolicy, per op:
//   - the stream broke (shard restarted, connection lost, a reply overdue by
//     ClientOptions::timeout): every op not answered goes back to the head of
//     the queue in its order, with one attempt counted, and the stream is
//     reopened after the policy's backoff; an op the policy gives up on
//     fails with the stream's status. Writes keep their request ids, so an
//     op the shard applied before the break is answered from its
//     exactly-once window, not applied again.
//   - an op's own retryable status (e.g. request id too old) retries that op
//     alone, like a unary call would.
// A shard that refuses the stream outright (bad token, wrong protocol)
// fails the ops with its status.
//
// Thread-safety: thread-safe. An op's `done` runs exactly once, on a gRPC
// or timer thread or the submitting thread, with no lock held.
#ifndef PSD_CLIENT_SRC_DATA_STREAM_H_
#define PSD_CLIENT_SRC_DATA_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <functional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "psd/shard.pb.h"
#include "psd/stream_codec.h"
#include "psd/tensor.h"
#include "raw_stream.h"
#include "retry_policy.h"
#include "retry_timer.h"

namespace psd {
namespace client {
namespace internal {

// Contents smaller than this are copied into the message: a lent slice
// costs more than copying a few kilobytes.
inline constexpr size_t kMinLentContentBytes = 16 << 10;

// The request id of a mutating batched op; null for reads and gathers
// (defined in batch_stream.cc).
RequestId* BatchOpId(BatchOp* op);

// One op of the data stream.
struct StreamOp {
  // The op, with the contents listed in `contents` left out of it.
  BatchOp fields;
  std::vector<NestedContent> contents;
  // The variable it names, for error messages.
  std::string name;
  RetryState retry;
  // The op's result: its status and, when OK, its BatchOpResult (owned by
  // the caller of done only for the duration of the call).
  absl::AnyInvocable<void(absl::Status, BatchOpResult*)> done;
  // Released when the op is destroyed (an async op's hold on its client).
  std::shared_ptr<void> keepalive;
  // Goes in a message of its own: its reply may be big (a scatter that
  // returns the whole variable), or it was refused for want of room in a
  // shared reply (max_batch_result_bytes) and is tried again alone.
  bool alone = false;
  // It shared its last message with other ops.
  bool shared = false;

  // The request id of a write; null for reads and gathers.
  RequestId* id() { return BatchOpId(&fields); }

  // Puts `tensor` into the op's tensor field `tensor_field` (a field number
  // of the request set in `fields`): its dtype and shape into *proto, its
  // content into the message when small or a string tensor, else lent from
  // the tensor's memory (`lender` must outlive the op's slices) or, for the
  // rvalue form, moved into a slice the op owns.
  void SetTensor(const Tensor& tensor, int tensor_field, TensorProto* proto,
                 BorrowedSlices* lender);
  void SetTensor(Tensor&& tensor, int tensor_field, TensorProto* proto);
  // Moves the content of *proto, the request's tensor field `tensor_field`,
  // into a slice the op owns when it is big enough to be worth it (the
  // serialization copy is saved).
  void LiftContent(int tensor_field, TensorProto* proto);
};

class DataStream {
 public:
  struct Options {
    int frames_in_flight = 1;
    int ops_per_frame = 256;
    int64_t frame_bytes = 4 << 20;
    int64_t max_message_bytes = 512 << 20;
    absl::Duration timeout = absl::Seconds(30);
  };
  // `stub`, `policy` and `timer` must outlive the stream; `call_status`
  // turns a finished call's gRPC status into the client's.
  DataStream(grpc::GenericStub* stub, const RetryPolicy* policy, RetryTimer* timer,
             std::string address, Options options,
             absl::AnyInvocable<absl::Status(const grpc::Status&) const> call_status);
  DataStream(const DataStream&) = delete;
  DataStream& operator=(const DataStream&) = delete;
  // Close(), then waits until no timer callback can reach the stream.
  ~DataStream();

  // Takes the op; its `done` runs exactly once. Called on the thread that
  // filled in the op's request (see RetryState::id_resent).
  void Submit(std::unique_ptr<StreamOp> op);

  // Sends what is queued, waits until every op is answered, then ends the
  // stream (cancelled if the shard does not end it within the timeout). Ops
  // submitted afterwards fail with FAILED_PRECONDITION.
  void Close();

  // Streams opened so far (for tests: reconnections).
  int64_t streams_opened() const;
  // Messages sent so far, and ops in them (for tests: coalescing).
  int64_t frames_sent() const;
  int64_t ops_sent() const;
  // Ops queued for the next message now.
  int64_t ops_waiting() const;

 private:
  class Call;
  struct Frame {
    std::vector<std::unique_ptr<StreamOp>> ops;
    absl::Time sent;
  };
  // Reactor calls decided under the lock, made after it is released.
  struct Actions {
    Call* start = nullptr;
    Call* write = nullptr;
    grpc::ByteBuffer frame;  // what `write` sends
    Call* writes_done = nullptr;
    Call* remove_hold = nullptr;
    Call* cancel = nullptr;
    // Ops to complete (failed), with their statuses.
    std::vector<std::pair<std::unique_ptr<StreamOp>, absl::Status>> failed;
  };

  void SubmitLocked(std::unique_ptr<StreamOp> op, Actions* actions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Opens a stream when ops wait and none is open, sends a message when the
  // window has room, half-closes when closing and everything is answered.
  void ProgressLocked(Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(Actions actions);

  // Call's callbacks.
  void OnWriteDone(Call* call, bool ok);
  void OnReadDone(Call* call, bool ok);
  void OnDone(Call* call, const grpc::Status& status);
  // Cancels the stream when its oldest unanswered message was sent more
  // than the timeout ago (one check is scheduled at a time, for the oldest
  // message), or when stream number `half_closed_stream` (0: none) is still
  // not ended after its half-close.
  void CheckOverdue(int64_t half_closed_stream);

  // Delivers an op's result, or retries it under the policy.
  void Finish(std::unique_ptr<StreamOp> op, absl::Status status, BatchOpResult* result);
  // Runs fn(this) on the timer at `when`, unless the stream is gone by then.
  void Schedule(absl::Time when, std::function<void(DataStream*)> fn);

  grpc::GenericStub* const stub_;
  const RetryPolicy* const policy_;
  RetryTimer* const timer_;
  const std::string address_;
  const Options options_;
  const absl::AnyInvocable<absl::Status(const grpc::Status&) const> call_status_;
  // What timer callbacks reach the stream through; ~DataStream detaches it.
  struct Anchor {
    absl::Mutex mu;
    DataStream* stream ABSL_GUARDED_BY(mu);
  };
  const std::shared_ptr<Anchor> anchor_;

  mutable absl::Mutex mu_;
  // Ops not yet in a message, in order.
  std::deque<std::unique_ptr<StreamOp>> queue_ ABSL_GUARDED_BY(mu_);
  // The open stream, or null; it is deleted in its OnDone.
  Call* call_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Calls not yet destroyed (call_, and one that ended but is still being
  // deleted).
  int live_calls_ ABSL_GUARDED_BY(mu_) = 0;
  // Messages sent or being sent on call_, in order, until their replies.
  std::deque<Frame> awaiting_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  // Start, TryCancel or StartWritesDone runs on call_ outside the lock: it
  // must stay alive (its hold kept) and nothing else may be started on it
  // meanwhile.
  bool starting_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelling_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_writes_ ABSL_GUARDED_BY(mu_) = false;
  // call_ holds its hold: OnDone cannot run yet.
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  // The stream broke (a failed read or write): nothing more is sent on it.
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  // A reply was overdue and the stream was cancelled for it.
  bool overdue_ ABSL_GUARDED_BY(mu_) = false;
  // Waiting out a backoff before reopening the stream.
  bool backing_off_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;
  // Ops waiting on the timer to be retried.
  int retrying_ ABSL_GUARDED_BY(mu_) = 0;
  // A check for an overdue reply is scheduled on the timer.
  bool overdue_check_scheduled_ ABSL_GUARDED_BY(mu_) = false;
  int64_t streams_opened_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t frames_sent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ops_sent_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_DATA_STREAM_H_
