// BatchStream: many small ops pipelined over one Batch stream to a shard
// (BatchReactor drives the stream on gRPC's callback API).
#include <deque>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "request_ids.h"
#include "shard_client_impl.h"

namespace psd {
namespace client {

namespace internal {

// The request id of a mutating batched op; null for reads and gathers.
RequestId* BatchOpId(BatchOp* op) {
  switch (op->op_case()) {
    case BatchOp::kAssign:
      return op->mutable_assign()->mutable_request_id();
    case BatchOp::kScatter:
      return op->mutable_scatter()->mutable_request_id();
    case BatchOp::kCountUpTo:
      return op->mutable_count_up_to()->mutable_request_id();
    case BatchOp::kApplyDense:
      return op->mutable_apply_dense()->mutable_request_id();
    case BatchOp::kApplySparse:
      return op->mutable_apply_sparse()->mutable_request_id();
    default:
      return nullptr;
  }
}

// The promise of one batched op, by result type.
using BatchPromise = std::variant<std::promise<absl::Status>, std::promise<absl::StatusOr<int64_t>>,
                                  std::promise<absl::StatusOr<Tensor>>>;

// The client side of one Batch stream. Ops are appended to `pending_`; a
// message goes to `outgoing_` when full or when the in-flight window has
// room; one write at a time is in progress; responses match `awaiting_` in
// order. A hold keeps the stream open while user threads may still start
// writes; it is released at the half-close or once the stream broke.
//
// Request ids: a stream leases a client id of its own (request_ids.h,
// BatchIdLease) and numbers its ops as they join the stream, so the shard
// sees each stream's ids in increasing order and never refuses one as too
// old, however busy the process's other streams and threads are. (The
// ops wait in the stream's window of messages in flight, so ids from the
// shared process sequence could fall out of the shard's window before
// they arrive; the stream does not retry, so such an op would just fail.)
//
// Thread-safety: thread-safe; no lock is held across a reactor call.
// Owned through shared_ptr: the reactor keeps itself alive until OnDone
// returns.
class BatchReactor final : public grpc::ClientBidiReactor<BatchRequest, BatchResponse> {
 public:
  struct Op {
    BatchPromise promise;
    std::string name;  // reads: for decoding and a streamed fallback
  };

  BatchReactor(ShardClient::Impl* impl, const BatchOptions& options)
      : token_(impl), impl_(impl), options_(options), ids_(impl->credentials_key_) {}

  void Start(Shard::Stub* stub, std::shared_ptr<BatchReactor> self) {
    self_ = std::move(self);
    stub->async()->Batch(&context_, this);
    AddHold();
    StartRead(&response_);
    StartCall();
  }

  void Add(BatchOp&& op, Op&& pending) {
    Actions actions;
    absl::Status fail_now;
    {
      absl::MutexLock lock(&mu_);
      if (closing_) {
        fail_now = absl::FailedPreconditionError("batch stream is closed");
      } else if (ended_) {
        fail_now = op_status_;
      } else if (broken_) {
        // OnDone has not come yet; it fails these with the stream's status.
        pending_ops_.push_back(std::move(pending));
        return;
      }
    }
    if (!fail_now.ok()) {
      Fail(&pending, fail_now);
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (ended_ || broken_ || closing_) {
        // Lost a race with the end of the stream: go round again.
        Add(std::move(op), std::move(pending));
        return;
      }
      if (RequestId* id = BatchOpId(&op)) ids_.Next(id);
      *pending_.add_ops() = std::move(op);
      pending_ops_.push_back(std::move(pending));
      if (pending_.ops_size() >= options_.ops_per_message ||
          static_cast<int>(awaiting_.size()) < options_.max_messages_in_flight) {
        SendPendingLocked();
      }
      ProgressLocked(&actions);
    }
    Run(actions);
  }

  void Flush() {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || broken_) return;
      SendPendingLocked();
      ProgressLocked(&actions);
    }
    Run(actions);
  }

  absl::Status Close() {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      if (!closing_) {
        closing_ = true;
        if (!broken_) SendPendingLocked();
        ProgressLocked(&actions);
      }
    }
    Run(actions);
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    return final_status_;
  }

  void OnWriteDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      // A failed write means the stream is broken; the read side sees it
      // too and OnDone reports the status.
      if (!ok) broken_ = true;
      ProgressLocked(&actions);
    }
    Run(actions);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Actions actions;
      {
        absl::MutexLock lock(&mu_);
        broken_ = true;
        ProgressLocked(&actions);
      }
      Run(actions);
      return;
    }
    BatchResponse response;
    response.Swap(&response_);
    std::vector<Op> ops;
    bool unexpected = false;
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      if (awaiting_.empty()) {
        unexpected = true;
        broken_ = true;
        ProgressLocked(&actions);
      } else {
        ops = std::move(awaiting_.front());
        awaiting_.pop_front();
        if (pending_.ops_size() > 0 && !closing_ &&
            static_cast<int>(awaiting_.size()) < options_.max_messages_in_flight) {
          SendPendingLocked();
        }
        ProgressLocked(&actions);
      }
    }
    Run(actions);
    if (unexpected) {
      // The shard answered more messages than were sent: end the stream.
      context_.TryCancel();
      return;
    }
    StartRead(&response_);
    Deliver(&response, &ops);
  }

  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<BatchReactor> self = std::move(self_);  // dies last
    absl::Status s = impl_->CallStatus(status);
    absl::Status op_status;
    std::vector<Op> failed;
    {
      absl::MutexLock lock(&mu_);
      for (auto& message : awaiting_) {
        for (auto& op : message) failed.push_back(std::move(op));
      }
      awaiting_.clear();
      for (auto& op : pending_ops_) failed.push_back(std::move(op));
      pending_ops_.clear();
      pending_.Clear();
      outgoing_.clear();
      if (s.ok() && !failed.empty()) {
        s = absl::InternalError(absl::StrCat("batch stream to shard ", impl_->address_,
                                             " ended with ", failed.size(), " ops unanswered"));
      }
      final_status_ = s;
      op_status_ = s.ok() ? absl::FailedPreconditionError("batch stream has ended")
                          : absl::Status(s.code(), absl::StrCat("batch stream: ", s.message()));
      op_status = op_status_;
      ended_ = true;
    }
    for (auto& op : failed) Fail(&op, op_status);
    absl::MutexLock lock(&mu_);
    done_ = true;
  }

 private:
  // Reactor calls decided under the lock, made after it is released.
  struct Actions {
    bool write = false;
    bool writes_done = false;
    bool remove_hold = false;
  };

  void SendPendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (pending_.ops_size() == 0) return;
    outgoing_.push_back(std::move(pending_));
    pending_.Clear();
    awaiting_.push_back(std::move(pending_ops_));
    pending_ops_.clear();
    pending_ops_.reserve(options_.ops_per_message);
  }

  void ProgressLocked(Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_) return;
    if (broken_) {
      if (hold_) {
        hold_ = false;
        actions->remove_hold = true;
      }
      return;
    }
    if (!outgoing_.empty()) {
      write_message_ = std::move(outgoing_.front());
      outgoing_.pop_front();
      writing_ = true;
      actions->write = true;
    } else if (closing_ && pending_.ops_size() == 0 && hold_) {
      hold_ = false;
      actions->writes_done = true;
      actions->remove_hold = true;
    }
  }

  void Run(const Actions& actions) {
    // write_message_ is only touched by the one writer (writing_ is set).
    if (actions.write) StartWrite(&write_message_);
    if (actions.writes_done) StartWritesDone();
    if (actions.remove_hold) RemoveHold();
  }

  static void Fail(Op* op, const absl::Status& s) {
    std::visit([&](auto& p) { p.set_value(s); }, op->promise);
  }

  void Deliver(BatchResponse* response, std::vector<Op>* ops) {
    for (size_t i = 0; i < ops->size(); ++i) {
      Op& op = (*ops)[i];
      if (static_cast<int>(i) >= response->results_size()) {
        Fail(&op, absl::InternalError(absl::StrCat("shard ", impl_->address_, " answered ",
                                                   response->results_size(), " of ", ops->size(),
                                                   " batched ops")));
        continue;
      }
      BatchOpResult* result = response->mutable_results(static_cast<int>(i));
      absl::Status s(static_cast<absl::StatusCode>(result->code()), result->message());
      if (auto* p = std::get_if<std::promise<absl::Status>>(&op.promise)) {
        p->set_value(s);
      } else if (auto* p = std::get_if<std::promise<absl::StatusOr<int64_t>>>(&op.promise)) {
        if (!s.ok()) {
          p->set_value(s);
        } else {
          p->set_value(result->count_up_to().old_value());
        }
      } else {
        auto& tp = std::get<std::promise<absl::StatusOr<Tensor>>>(op.promise);
        if (!s.ok()) {
          tp.set_value(s);
        } else if (result->has_read() && result->read().use_stream()) {
          // Too big for a batch message: a streamed read on its own thread.
          impl_->OpStarted();
          auto promise = std::make_shared<std::promise<absl::StatusOr<Tensor>>>(std::move(tp));
          ShardClient::Impl* impl = impl_;
          impl_->RunDetached([impl, promise, name = op.name] {
            promise->set_value(impl->ReadStream(name));
            impl->OpDone();
          });
        } else {
          TensorProto* value = result->has_read() ? result->mutable_read()->mutable_value()
                                                  : result->mutable_gather()->mutable_value();
          tp.set_value(impl_->DecodeResult(value, op.name));
        }
      }
    }
  }

  // First, so it is destroyed last: the client outlives context_.
  ShardClient::Impl::OpToken token_;
  ShardClient::Impl* const impl_;
  const BatchOptions options_;
  grpc::ClientContext context_;
  std::shared_ptr<BatchReactor> self_;  // set in Start, dropped in OnDone
  BatchResponse response_;              // the read in progress
  BatchRequest write_message_;          // the write in progress

  absl::Mutex mu_;
  BatchIdLease ids_ ABSL_GUARDED_BY(mu_);
  BatchRequest pending_ ABSL_GUARDED_BY(mu_);
  std::vector<Op> pending_ops_ ABSL_GUARDED_BY(mu_);
  std::deque<BatchRequest> outgoing_ ABSL_GUARDED_BY(mu_);
  // One entry per message sent or queued, in order, until its response.
  std::deque<std::vector<Op>> awaiting_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_ ABSL_GUARDED_BY(mu_) = true;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;  // OnDone took the unanswered ops
  bool done_ ABSL_GUARDED_BY(mu_) = false;   // OnDone failed them too
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  absl::Status op_status_ ABSL_GUARDED_BY(mu_);  // for ops after the end
};

}  // namespace internal

using internal::BatchPromise;
using internal::BatchReactor;

class BatchStream::Impl {
 public:
  Impl(ShardClient::Impl* client, const BatchOptions& options)
      : client_(client), reactor_(std::make_shared<BatchReactor>(client, options)) {
    reactor_->Start(client->stub_.get(), reactor_);
  }

  template <typename R>
  std::future<R> Add(BatchOp&& op, std::string name = "") {
    std::promise<R> promise;
    std::future<R> future = promise.get_future();
    reactor_->Add(std::move(op),
                  BatchReactor::Op{BatchPromise(std::move(promise)), std::move(name)});
    return future;
  }

  std::future<absl::Status> Assign(UpdateKind kind, const std::string& name, Tensor&& value,
                                   const AssignOptions& options) {
    BatchOp op;
    *op.mutable_assign() = client_->MakeAssignRequest(kind, name, std::move(value), options, false);
    return Add<absl::Status>(std::move(op));
  }

  std::future<absl::Status> Scatter(UpdateKind kind, const std::string& name, Tensor&& indices,
                                    Tensor&& updates) {
    BatchOp op;
    *op.mutable_scatter() =
        client_->MakeScatterRequest(kind, name, std::move(indices), std::move(updates), false);
    return Add<absl::Status>(std::move(op));
  }

  ShardClient::Impl* const client_;
  const std::shared_ptr<BatchReactor> reactor_;
};

BatchStream::BatchStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BatchStream::~BatchStream() { Close().IgnoreError(); }

std::future<absl::Status> BatchStream::Assign(const std::string& name, Tensor value,
                                              const AssignOptions& options) {
  return impl_->Assign(UpdateKind::kAssign, name, std::move(value), options);
}
std::future<absl::Status> BatchStream::AssignAdd(const std::string& name, Tensor value) {
  return impl_->Assign(UpdateKind::kAdd, name, std::move(value), {});
}
std::future<absl::Status> BatchStream::AssignSub(const std::string& name, Tensor value) {
  return impl_->Assign(UpdateKind::kSub, name, std::move(value), {});
}
std::future<absl::Status> BatchStream::ScatterUpdate(const std::string& name, Tensor indices,
                                                     Tensor updates) {
  return impl_->Scatter(UpdateKind::kAssign, name, std::move(indices), std::move(updates));
}
std::future<absl::Status> BatchStream::ScatterAdd(const std::string& name, Tensor indices,
                                                  Tensor updates) {
  return impl_->Scatter(UpdateKind::kAdd, name, std::move(indices), std::move(updates));
}
std::future<absl::Status> BatchStream::ScatterSub(const std::string& name, Tensor indices,
                                                  Tensor updates) {
  return impl_->Scatter(UpdateKind::kSub, name, std::move(indices), std::move(updates));
}
std::future<absl::StatusOr<int64_t>> BatchStream::CountUpTo(const std::string& name,
                                                            int64_t limit) {
  BatchOp op;
  *op.mutable_count_up_to() = impl_->client_->MakeCountUpToRequest(name, limit);
  return impl_->Add<absl::StatusOr<int64_t>>(std::move(op));
}
std::future<absl::StatusOr<Tensor>> BatchStream::Read(const std::string& name) {
  BatchOp op;
  *op.mutable_read() = impl_->client_->MakeReadRequest(name);
  return impl_->Add<absl::StatusOr<Tensor>>(std::move(op), name);
}
std::future<absl::StatusOr<Tensor>> BatchStream::Gather(const std::string& name, Tensor indices) {
  BatchOp op;
  *op.mutable_gather() = impl_->client_->MakeGatherRequest(name, std::move(indices));
  return impl_->Add<absl::StatusOr<Tensor>>(std::move(op), name);
}
void BatchStream::Flush() { impl_->reactor_->Flush(); }
absl::Status BatchStream::Close() { return impl_->reactor_->Close(); }

// ---- ShardClient::OpenBatch.

absl::StatusOr<std::unique_ptr<BatchStream>> ShardClient::OpenBatch(const BatchOptions& options) {
  if (options.ops_per_message < 1 || options.max_messages_in_flight < 1) {
    return absl::InvalidArgumentError(
        "BatchOptions: ops_per_message and max_messages_in_flight must be >= 1");
  }
  return std::unique_ptr<BatchStream>(
      new BatchStream(std::make_unique<BatchStream::Impl>(impl_.get(), options)));
}

}  // namespace client
}  // namespace psd
