#include "data_stream.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/slice.h"
#include "psd/wire.h"

namespace psd {
namespace client {
namespace internal {

namespace {

// Field numbers of the tensors' content and of BatchRequest's ops.
constexpr int kContentField = TensorProto::kContentFieldNumber;
constexpr int kOpsField = BatchRequest::kOpsFieldNumber;

// The BatchOp field that holds the op's request.
int RequestField(const BatchOp& op) { return static_cast<int>(op.op_case()); }

// A slice that owns `bytes`.
grpc::Slice OwningSlice(std::string&& bytes) {
  auto* owned = new std::string(std::move(bytes));
  grpc_slice slice = grpc_slice_new_with_user_data(
      owned->data(), owned->size(), [](void* p) { delete static_cast<std::string*>(p); }, owned);
  return grpc::Slice(slice, grpc::Slice::STEAL_REF);
}

}  // namespace

void StreamOp::SetTensor(const Tensor& tensor, int tensor_field, TensorProto* proto,
                         BorrowedSlices* lender) {
  proto->Clear();
  if (tensor.dtype() == DT_STRING || tensor.bytes().size() < kMinLentContentBytes) {
    TensorToProto(tensor, proto);
    return;
  }
  proto->set_dtype(tensor.dtype());
  ShapeToProto(tensor.shape(), proto->mutable_shape());
  contents.push_back(NestedContent{{RequestField(fields), tensor_field, kContentField},
                                   lender->Borrow(tensor.bytes().data(), tensor.bytes().size())});
}

void StreamOp::SetTensor(Tensor&& tensor, int tensor_field, TensorProto* proto) {
  proto->Clear();
  TensorToProto(std::move(tensor), proto);
  LiftContent(tensor_field, proto);
}

void StreamOp::LiftContent(int tensor_field, TensorProto* proto) {
  if (proto->content().size() < kMinLentContentBytes) return;
  contents.push_back(NestedContent{{RequestField(fields), tensor_field, kContentField},
                                   OwningSlice(std::move(*proto->mutable_content()))});
  proto->clear_content();
}

// One stream of the Batch method, its messages raw (grpc::ByteBuffer). It
// forwards every reaction to its DataStream, which decides everything under
// its lock; the call only starts operations the DataStream decided on.
// Deleted at the end of OnDone.
class DataStream::Call final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit Call(DataStream* stream) : alive_(stream), stream_(stream) {}

  void Start(grpc::GenericStub* stub) {
    stub->PrepareBidiStreamingCall(&context_, kBatchMethod, grpc::StubOptions(), this);
    // Released by the DataStream once it will start nothing more here.
    AddHold();
    StartRead(&reply_);
    StartCall();
  }

  void Write(grpc::ByteBuffer frame) {
    frame_ = std::move(frame);
    StartWrite(&frame_);
  }

  // The reply just read; the next read is started by ReadNext.
  grpc::ByteBuffer TakeReply() {
    grpc::ByteBuffer reply;
    reply.Swap(&reply_);
    return reply;
  }
  void ReadNext() { StartRead(&reply_); }

  void Cancel() { context_.TryCancel(); }

  void OnWriteDone(bool ok) override {
    // Lets go of the message's slices: a sync caller lending its tensor
    // waits until every reference to it is gone.
    frame_.Clear();
    stream_->OnWriteDone(this, ok);
  }
  void OnReadDone(bool ok) override { stream_->OnReadDone(this, ok); }
  void OnDone(const grpc::Status& status) override {
    stream_->OnDone(this, status);
    delete this;
  }

 private:
  // Counts the call alive in its stream until everything else here is
  // destroyed (it is the first member): the stream, and its client's
  // channel, outlive the call's context, so the channel is never released
  // on a gRPC callback thread (gRPC cannot shut down its callback threads
  // from one of them).
  class Alive {
   public:
    // Counted by its maker, under the stream's lock.
    explicit Alive(DataStream* stream) : stream_(stream) {}
    ~Alive() {
      absl::MutexLock lock(&stream_->mu_);
      --stream_->live_calls_;
    }

   private:
    DataStream* const stream_;
  };

  Alive alive_;
  DataStream* const stream_;
  grpc::ClientContext context_;
  grpc::ByteBuffer frame_;  // the write in progress
  grpc::ByteBuffer reply_;  // the read in progress
};

DataStream::DataStream(grpc::GenericStub* stub, const RetryPolicy* policy, RetryTimer* timer,
                       std::string address, Options options,
                       absl::AnyInvocable<absl::Status(const grpc::Status&) const> call_status)
    : stub_(stub),
      policy_(policy),
      timer_(timer),
      address_(std::move(address)),
      options_(options),
      call_status_(std::move(call_status)),
      anchor_(std::make_shared<Anchor>()) {
  absl::MutexLock lock(&anchor_->mu);
  anchor_->stream = this;
}

DataStream::~DataStream() {
  Close();
  // A timer callback still queued (an overdue check) finds no stream; one
  // running holds the anchor's lock until it returns.
  absl::MutexLock lock(&anchor_->mu);
  anchor_->stream = nullptr;
}

void DataStream::Schedule(absl::Time when, std::function<void(DataStream*)> fn) {
  timer_->Schedule(when, [anchor = anchor_, fn = std::move(fn)] {
    absl::MutexLock lock(&anchor->mu);
    if (anchor->stream != nullptr) fn(anchor->stream);
  });
}

void DataStream::Submit(std::unique_ptr<StreamOp> op) {
  // On the thread that drew the op's id (the op is made before its request
  // is filled in): whether the id is resent (request_ids.h) decides if a
  // "too old" answer may renumber it on a retry, on the stream's thread.
  op->retry.id_resent = LastRequestIdWasResent();
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    if (closing_) {
      actions.failed.emplace_back(
          std::move(op), absl::FailedPreconditionError(absl::StrCat(
                             "the client of shard ", address_, " is closing")));
    } else {
      SubmitLocked(std::move(op), &actions);
    }
  }
  Run(std::move(actions));
}

void DataStream::SubmitLocked(std::unique_ptr<StreamOp> op, Actions* actions) {
  queue_.push_back(std::move(op));
  ProgressLocked(actions);
}

void DataStream::ProgressLocked(Actions* actions) {
  if (backing_off_) return;
  if (call_ == nullptr) {
    if (queue_.empty()) return;
    // Open a stream for the waiting ops.
    call_ = new Call(this);
    ++live_calls_;
    ++streams_opened_;
    broken_ = false;
    overdue_ = false;
    half_closed_ = false;
    writing_ = false;
    held_ = true;
    starting_ = true;
    actions->start = call_;
    return;  // the rest once it has started
  }
  if (starting_ || cancelling_ || writing_ || ending_writes_) return;
  if (broken_) {
    // Nothing more will be started on this call: let it end.
    if (held_) {
      held_ = false;
      actions->remove_hold = call_;
    }
    return;
  }
  if (!queue_.empty() && static_cast<int>(awaiting_.size()) < options_.frames_in_flight) {
    Frame frame;
    std::vector<grpc::Slice> slices;
    int64_t bytes = 0;
    while (!queue_.empty() && static_cast<int>(frame.ops.size()) < options_.ops_per_frame) {
      StreamOp* op = queue_.front().get();
      if (op->alone && !frame.ops.empty()) break;  // it starts the next message
      const size_t before = slices.size();
      const size_t size = AppendWithNestedContents(op->fields, op->contents, kOpsField, &slices);
      if (!frame.ops.empty() && bytes + static_cast<int64_t>(size) > options_.frame_bytes) {
        slices.resize(before);  // it starts the next message
        break;
      }
      if (static_cast<int64_t>(size) > options_.max_message_bytes) {
        slices.resize(before);
        std::unique_ptr<StreamOp> too_big = std::move(queue_.front());
        queue_.pop_front();
        actions->failed.emplace_back(
            std::move(too_big),
            absl::ResourceExhaustedError(absl::StrCat(
                "an op on variable '", op->name, "' is ", size,
                " bytes on the wire; the limit is ", options_.max_message_bytes,
                " (ClientOptions::max_message_bytes)")));
        continue;
      }
      bytes += static_cast<int64_t>(size);
      ++op->retry.attempts;
      frame.ops.push_back(std::move(queue_.front()));
      queue_.pop_front();
      if (op->alone) break;
    }
    if (frame.ops.empty()) return;
    for (auto& op : frame.ops) op->shared = frame.ops.size() > 1;
    ++frames_sent_;
    ops_sent_ += static_cast<int64_t>(frame.ops.size());
    actions->frame = grpc::ByteBuffer(slices.data(), slices.size());
    actions->write = call_;
    writing_ = true;
    frame.sent = absl::Now();
    awaiting_.push_back(std::move(frame));
    if (options_.timeout != absl::InfiniteDuration() && !overdue_check_scheduled_) {
      overdue_check_scheduled_ = true;
      Schedule(awaiting_.back().sent + options_.timeout,
               [](DataStream* stream) { stream->CheckOverdue(0); });
    }
    return;
  }
  if (closing_ && !half_closed_ && queue_.empty() && awaiting_.empty() && retrying_ == 0) {
    // The shard ends the stream when it sees the half-close; the hold stays
    // until then (a failed read), so an overdue end can still be cancelled.
    half_closed_ = true;
    ending_writes_ = true;
    actions->writes_done = call_;
    if (options_.timeout != absl::InfiniteDuration()) {
      const int64_t stream_number = streams_opened_;
      Schedule(absl::Now() + options_.timeout, [stream_number](DataStream* stream) {
        stream->CheckOverdue(stream_number);
      });
    }
  }
}

void DataStream::Run(Actions actions) {
  // Starting and cancelling a call may allow more (a started call can send
  // at once): each round is decided under the lock and run outside it.
  for (;;) {
    for (auto& [op, status] : actions.failed) op->done(std::move(status), nullptr);
    actions.failed.clear();
    Actions next;
    bool more = false;
    if (actions.start != nullptr) {
      actions.start->Start(stub_);
      absl::MutexLock lock(&mu_);
      starting_ = false;
      ProgressLocked(&next);
      more = true;
    }
    if (actions.write != nullptr) actions.write->Write(std::move(actions.frame));
    if (actions.cancel != nullptr) {
      actions.cancel->Cancel();
      absl::MutexLock lock(&mu_);
      cancelling_ = false;
      ProgressLocked(&next);
      more = true;
    }
    if (actions.writes_done != nullptr) {
      actions.writes_done->StartWritesDone();
      absl::MutexLock lock(&mu_);
      ending_writes_ = false;
      ProgressLocked(&next);
      more = true;
    }
    if (actions.remove_hold != nullptr) actions.remove_hold->RemoveHold();
    if (!more) return;
    actions = std::move(next);
  }
}

void DataStream::OnWriteDone(Call* call, bool ok) {
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    // A failed write means the stream broke; the read side sees it too, and
    // OnDone takes the ops that were not answered.
    if (!ok) broken_ = true;
    ProgressLocked(&actions);
  }
  Run(std::move(actions));
}

void DataStream::OnReadDone(Call* call, bool ok) {
  Actions actions;
  Frame frame;
  grpc::ByteBuffer reply;
  absl::Status bad_reply;
  {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      broken_ = true;
      ProgressLocked(&actions);
    } else if (awaiting_.empty()) {
      // More replies than messages: the stream cannot be trusted.
      broken_ = true;
      cancelling_ = true;
      actions.cancel = call;
    } else {
      reply = call->TakeReply();
      frame = std::move(awaiting_.front());
      awaiting_.pop_front();
      ProgressLocked(&actions);
    }
  }
  if (frame.ops.empty()) {
    Run(std::move(actions));
    return;
  }
  call->ReadNext();
  Run(std::move(actions));
  BatchResponse response;
  if (!DecodeMessage(reply, &response)) {
    bad_reply = absl::InternalError(
        absl::StrCat("shard ", address_, " sent a malformed reply to a batch of ops"));
  }
  for (size_t i = 0; i < frame.ops.size(); ++i) {
    std::unique_ptr<StreamOp>& op = frame.ops[i];
    if (!bad_reply.ok()) {
      Finish(std::move(op), bad_reply, nullptr);
    } else if (static_cast<int>(i) >= response.results_size()) {
      Finish(std::move(op),
             absl::InternalError(absl::StrCat("shard ", address_, " answered ",
                                              response.results_size(), " of ", frame.ops.size(),
                                              " ops of a message")),
             nullptr);
    } else {
      BatchOpResult* result = response.mutable_results(static_cast<int>(i));
      absl::Status status(static_cast<absl::StatusCode>(result->code()), result->message());
      Finish(std::move(op), std::move(status), result);
    }
  }
}

void DataStream::OnDone(Call* call, const grpc::Status& grpc_status) {
  Actions actions;
  std::vector<std::unique_ptr<StreamOp>> unanswered;
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (overdue_) {
      status = absl::DeadlineExceededError(
          absl::StrCat("shard ", address_, " did not answer a batch of ops within ",
                       absl::FormatDuration(options_.timeout), " (ClientOptions::timeout)"));
    } else {
      status = call_status_(grpc_status);
      if (status.ok()) {
        status = absl::UnavailableError(
            absl::StrCat("shard ", address_, " ended the data stream with ops unanswered"));
      }
    }
    for (Frame& frame : awaiting_) {
      for (auto& op : frame.ops) unanswered.push_back(std::move(op));
    }
    awaiting_.clear();
    call_ = nullptr;
    writing_ = false;
    // Retried ops go back to the head of the queue, in their order; the
    // stream reopens after the backoff of the first of them.
    std::vector<std::unique_ptr<StreamOp>> requeue;
    absl::Duration delay = absl::ZeroDuration();
    for (auto& op : unanswered) {
      RetryPolicy::Next next = policy_->OnFailure(status, op->id(), &op->retry);
      if (next.retry) {
        if (requeue.empty()) delay = next.delay;
        requeue.push_back(std::move(op));
      } else {
        actions.failed.emplace_back(std::move(op), std::move(next.status));
      }
    }
    for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) {
      queue_.push_front(std::move(*it));
    }
    if (!requeue.empty() && delay > absl::ZeroDuration()) {
      backing_off_ = true;
      Schedule(absl::Now() + delay, [](DataStream* stream) {
        Actions actions;
        {
          absl::MutexLock lock(&stream->mu_);
          stream->backing_off_ = false;
          stream->ProgressLocked(&actions);
        }
        stream->Run(std::move(actions));
      });
    } else {
      ProgressLocked(&actions);
    }
  }
  Run(std::move(actions));
}

void DataStream::CheckOverdue(int64_t half_closed_stream) {
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (half_closed_stream == 0) {
      overdue_check_scheduled_ = false;
      if (call_ == nullptr || broken_ || awaiting_.empty()) return;  // answered, or ending
      const absl::Time due = awaiting_.front().sent + options_.timeout;
      if (now < due || cancelling_ || starting_ || ending_writes_) {
        // Not yet (or busy outside the lock): check again for the oldest.
        overdue_check_scheduled_ = true;
        Schedule(std::max(due, now + absl::Milliseconds(10)),
                 [](DataStream* stream) { stream->CheckOverdue(0); });
        return;
      }
    } else {
      if (call_ == nullptr || broken_ || cancelling_ || starting_ || ending_writes_) return;
      if (!half_closed_ || streams_opened_ != half_closed_stream) return;
    }
    overdue_ = true;
    broken_ = true;
    cancelling_ = true;
    actions.cancel = call_;
  }
  Run(std::move(actions));
}

void DataStream::Finish(std::unique_ptr<StreamOp> op, absl::Status status,
                        BatchOpResult* result) {
  if (op->shared && status.code() == absl::StatusCode::kResourceExhausted &&
      status.message().find("(max_batch_result_bytes)") != absl::string_view::npos) {
    // Other results of its message took the room its result needed; alone
    // it gets the whole reply, as a call of its own would. (Reads and
    // gathers only: nothing was applied.)
    op->alone = true;
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      SubmitLocked(std::move(op), &actions);
    }
    Run(std::move(actions));
    return;
  }
  if (!status.ok()) {
    RetryPolicy::Next next = policy_->OnFailure(status, op->id(), &op->retry);
    if (next.retry) {
      std::shared_ptr<StreamOp> retried(op.release());
      absl::MutexLock lock(&mu_);
      ++retrying_;
      Schedule(absl::Now() + next.delay, [retried](DataStream* stream) mutable {
        Actions actions;
        {
          absl::MutexLock lock(&stream->mu_);
          --stream->retrying_;
          // The op leaves the shared_ptr: the timer holds the only reference.
          auto owned = std::make_unique<StreamOp>(std::move(*retried));
          stream->SubmitLocked(std::move(owned), &actions);
        }
        stream->Run(std::move(actions));
      });
      return;
    }
    status = std::move(next.status);
    result = nullptr;
  }
  op->done(std::move(status), result);
}

void DataStream::Close() {
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
    ProgressLocked(&actions);
  }
  Run(std::move(actions));
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](DataStream* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
        return s->call_ == nullptr && s->live_calls_ == 0 && s->queue_.empty() &&
               s->retrying_ == 0 && !s->backing_off_;
      },
      this));
}

int64_t DataStream::streams_opened() const {
  absl::MutexLock lock(&mu_);
  return streams_opened_;
}
int64_t DataStream::frames_sent() const {
  absl::MutexLock lock(&mu_);
  return frames_sent_;
}
int64_t DataStream::ops_waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}
int64_t DataStream::ops_sent() const {
  absl::MutexLock lock(&mu_);
  return ops_sent_;
}

}  // namespace internal
}  // namespace client
}  // namespace psd
