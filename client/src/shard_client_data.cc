// ShardClient::Impl's side of the data stream (data_stream.h): how an op
// goes onto the stream and how a caller waits for it.
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <utility>

#include "absl/synchronization/notification.h"
#include "shard_client_impl.h"

namespace psd {
namespace client {

std::unique_ptr<DataStream> ShardClient::Impl::MakeDataStream() {
  DataStream::Options stream_options;
  stream_options.frames_in_flight = options_.data_stream_frames_in_flight;
  stream_options.ops_per_frame = options_.data_stream_ops_per_frame;
  stream_options.frame_bytes = options_.data_stream_frame_bytes;
  stream_options.max_message_bytes = options_.max_message_bytes;
  stream_options.timeout = options_.timeout;
  return std::make_unique<DataStream>(
      &raw_stub_, &retry_, &timer_, address_, stream_options,
      [this](const grpc::Status& status) { return CallStatus(status); });
}

std::unique_ptr<StreamOp> ShardClient::Impl::NewStreamOp(const std::string& name, bool async) {
  auto op = std::make_unique<StreamOp>();
  op->name = name;
  // An async op keeps the client open until it completes (see ~Impl).
  if (async) op->keepalive = std::make_shared<OpToken>(this);
  return op;
}

absl::Status ShardClient::Impl::RunOnStream(std::unique_ptr<StreamOp> op,
                                            BatchOpResult* result) {
  absl::Notification done;
  absl::Status status;
  op->done = [&](absl::Status s, BatchOpResult* r) {
    status = std::move(s);
    if (r != nullptr) result->Swap(r);
    done.Notify();  // last: the caller's frame may go right after
  };
  DataStream* stream = StreamFor(*op);
  stream->Submit(std::move(op));
  done.WaitForNotification();
  return status;
}

template <typename R>
std::future<R> ShardClient::Impl::SubmitOnStream(
    std::unique_ptr<StreamOp> op, std::function<R(BatchOpResult*, const std::string&)> on_ok) {
  auto promise = std::make_shared<std::promise<R>>();
  std::future<R> future = promise->get_future();
  op->done = [promise, on_ok = std::move(on_ok), name = op->name](absl::Status s,
                                                                  BatchOpResult* r) {
    if (!s.ok()) {
      promise->set_value(std::move(s));
    } else {
      promise->set_value(on_ok(r, name));
    }
  };
  DataStream* stream = StreamFor(*op);
  stream->Submit(std::move(op));
  return future;
}

template std::future<absl::Status> ShardClient::Impl::SubmitOnStream(
    std::unique_ptr<StreamOp>, std::function<absl::Status(BatchOpResult*, const std::string&)>);
template std::future<absl::StatusOr<Tensor>> ShardClient::Impl::SubmitOnStream(
    std::unique_ptr<StreamOp>,
    std::function<absl::StatusOr<Tensor>(BatchOpResult*, const std::string&)>);
template std::future<absl::StatusOr<int64_t>> ShardClient::Impl::SubmitOnStream(
    std::unique_ptr<StreamOp>,
    std::function<absl::StatusOr<int64_t>(BatchOpResult*, const std::string&)>);

}  // namespace client
}  // namespace psd
