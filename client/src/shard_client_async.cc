// ShardClient::Impl's async ops: unary calls on gRPC's callback API, each
// retried on the RetryTimer; values above the stream threshold on a thread
// of their own.
#include <string>
#include <utility>

#include "psd/wire.h"
#include "shard_client_impl.h"

namespace psd {
namespace client {

namespace {

// The result of an async write on the data stream: its status says it all.
const std::function<absl::Status(BatchOpResult*, const std::string&)> Ok =
    [](BatchOpResult*, const std::string&) { return absl::OkStatus(); };

}  // namespace

template <typename Resp, typename R, typename Req>
std::future<R> ShardClient::Impl::StartAsync(typename AsyncOp<Req, Resp, R>::Method method,
                                             Req request,
                                             typename AsyncOp<Req, Resp, R>::OnOk on_ok) {
  auto op = std::make_shared<AsyncOp<Req, Resp, R>>(this);
  op->method = method;
  op->request = std::move(request);
  op->on_ok = std::move(on_ok);
  op->retry.first_start = absl::Now();
  std::future<R> future = op->promise.get_future();
  StartAttempt(op);
  return future;
}

template <typename Op>
void ShardClient::Impl::StartAttempt(const std::shared_ptr<Op>& op) {
  ++op->retry.attempts;
  op->contexts.push_back(std::make_unique<grpc::ClientContext>());
  grpc::ClientContext* context = op->contexts.back().get();
  SetDeadline(context, options_.timeout);
  op->response.Clear();
  (stub_->async()->*(op->method))(context, &op->request, &op->response, [op](grpc::Status status) {
    op->impl->OnAttemptDone(op, status);
  });
}

template <typename Op>
void ShardClient::Impl::OnAttemptDone(const std::shared_ptr<Op>& op,
                                      const grpc::Status& grpc_status) {
  absl::Status status = CallStatus(grpc_status);
  if (status.ok()) {
    op->on_ok(op);
    return;
  }
  RetryPolicy::Next next = retry_.OnFailure(status, IdOf(op->request), &op->retry);
  if (next.retry) {
    timer_.Schedule(absl::Now() + next.delay, [op] { op->impl->StartAttempt(op); });
    return;
  }
  op->Complete(std::move(next.status));
}

template <typename R, typename Fn>
std::future<R> ShardClient::Impl::OnThread(Fn&& fn) {
  auto promise = std::make_shared<std::promise<R>>();
  std::future<R> future = promise->get_future();
  OpStarted();
  RunDetached([this, promise, fn = std::forward<Fn>(fn)]() mutable {
    promise->set_value(fn());
    OpDone();
  });
  return future;
}

std::future<absl::Status> ShardClient::Impl::AssignAsync(UpdateKind op, const std::string& name,
                                                         Tensor value,
                                                         const AssignOptions& options) {
  if (Streams(WireBytes(value))) {
    return OnThread<absl::Status>([this, op, name, value = std::move(value), options] {
      return AssignOp(op, name, value, options, nullptr);
    });
  }
  if (OnDataStream()) {
    auto stream_op = NewStreamOp(name, /*async=*/true);
    AssignRequest* request = stream_op->fields.mutable_assign();
    *request = MakeAssignRequest(op, name, Tensor(), options, false);
    stream_op->SetTensor(std::move(value), AssignRequest::kValueFieldNumber,
                         request->mutable_value());
    return SubmitOnStream<absl::Status>(std::move(stream_op), Ok);
  }
  using Op = AsyncOp<AssignRequest, AssignResponse, absl::Status>;
  return StartAsync<AssignResponse, absl::Status>(
      &AsyncStub::Assign, MakeAssignRequest(op, name, std::move(value), options, false),
      [](const std::shared_ptr<Op>& op) { op->Complete(absl::OkStatus()); });
}

std::future<absl::Status> ShardClient::Impl::ScatterAsync(UpdateKind op, const std::string& name,
                                                          Tensor indices, Tensor updates) {
  if (OnDataStream()) {
    auto stream_op = NewStreamOp(name, /*async=*/true);
    ScatterRequest* request = stream_op->fields.mutable_scatter();
    *request = MakeScatterRequest(op, name, Tensor(), Tensor(), false);
    stream_op->SetTensor(std::move(indices), ScatterRequest::kIndicesFieldNumber,
                         request->mutable_indices());
    stream_op->SetTensor(std::move(updates), ScatterRequest::kUpdatesFieldNumber,
                         request->mutable_updates());
    return SubmitOnStream<absl::Status>(std::move(stream_op), Ok);
  }
  using Op = AsyncOp<ScatterRequest, ScatterResponse, absl::Status>;
  return StartAsync<ScatterResponse, absl::Status>(
      &AsyncStub::Scatter,
      MakeScatterRequest(op, name, std::move(indices), std::move(updates), false),
      [](const std::shared_ptr<Op>& op) { op->Complete(absl::OkStatus()); });
}

std::future<absl::StatusOr<Tensor>> ShardClient::Impl::ReadAsync(const std::string& name) {
  using R = absl::StatusOr<Tensor>;
  if (OnDataStream()) {
    auto op = NewStreamOp(name, /*async=*/true);
    *op->fields.mutable_read() = MakeReadRequest(name);
    auto promise = std::make_shared<std::promise<R>>();
    std::future<R> future = promise->get_future();
    op->done = [this, promise, name](absl::Status status, BatchOpResult* result) {
      if (!status.ok()) {
        promise->set_value(std::move(status));
      } else if (result->read().use_stream()) {
        // Too big for a reply: a streamed read, on a thread of its own (this
        // may be a gRPC callback thread).
        OpStarted();
        RunDetached([this, promise, name] {
          promise->set_value(ReadStream(name));
          OpDone();
        });
      } else {
        promise->set_value(DecodeResult(result->mutable_read()->mutable_value(), name));
      }
    };
    read_stream_->Submit(std::move(op));
    return future;
  }
  using Op = AsyncOp<ReadRequest, ReadResponse, R>;
  return StartAsync<ReadResponse, R>(
      &AsyncStub::Read, MakeReadRequest(name), [](const std::shared_ptr<Op>& op) {
        const std::string& name = op->request.name();
        if (op->response.use_stream()) {
          // The op stays open until the thread completes it.
          op->impl->RunDetached([op] { op->Complete(op->impl->ReadStream(op->request.name())); });
          return;
        }
        op->Complete(op->impl->DecodeResult(op->response.mutable_value(), name));
      });
}

std::future<absl::StatusOr<Tensor>> ShardClient::Impl::GatherAsync(const std::string& name,
                                                                   Tensor indices) {
  using R = absl::StatusOr<Tensor>;
  if (OnDataStream()) {
    auto op = NewStreamOp(name, /*async=*/true);
    GatherRequest* request = op->fields.mutable_gather();
    *request = MakeGatherRequest(name, Tensor());
    op->SetTensor(std::move(indices), GatherRequest::kIndicesFieldNumber,
                  request->mutable_indices());
    std::function<R(BatchOpResult*, const std::string&)> on_ok =
        [this](BatchOpResult* result, const std::string& name) -> R {
      return DecodeResult(result->mutable_gather()->mutable_value(), name);
    };
    return SubmitOnStream<R>(std::move(op), std::move(on_ok));
  }
  using Op = AsyncOp<GatherRequest, GatherResponse, R>;
  return StartAsync<GatherResponse, R>(
      &AsyncStub::Gather, MakeGatherRequest(name, std::move(indices)),
      [](const std::shared_ptr<Op>& op) {
        op->Complete(op->impl->DecodeResult(op->response.mutable_value(), op->request.name()));
      });
}

std::future<absl::StatusOr<int64_t>> ShardClient::Impl::CountUpToAsync(const std::string& name,
                                                                       int64_t limit) {
  using R = absl::StatusOr<int64_t>;
  if (OnDataStream()) {
    auto op = NewStreamOp(name, /*async=*/true);
    *op->fields.mutable_count_up_to() = MakeCountUpToRequest(name, limit);
    std::function<R(BatchOpResult*, const std::string&)> on_ok =
        [](BatchOpResult* result, const std::string&) -> R {
      return result->count_up_to().old_value();
    };
    return SubmitOnStream<R>(std::move(op), std::move(on_ok));
  }
  using Op = AsyncOp<CountUpToRequest, CountUpToResponse, R>;
  return StartAsync<CountUpToResponse, R>(
      &AsyncStub::CountUpTo, MakeCountUpToRequest(name, limit),
      [](const std::shared_ptr<Op>& op) { op->Complete(op->response.old_value()); });
}

}  // namespace client
}  // namespace psd
