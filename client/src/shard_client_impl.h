// ShardClient::Impl: the shard client's core, shared by the files that
// implement it:
//   shard_client_impl.cc     the RPC core (call status, decoding) and the
//                            one-message ops
//   shard_client_streams.cc  streamed reads and assigns (values above the
//                            stream threshold)
//   shard_client_async.cc    the async ops (gRPC callbacks, retries on the
//                            RetryTimer)
//   batch_stream.cc          BatchStream over one Batch stream
//   shard_client_data.cc     the ops on the data stream (data_stream.h)
//   client.cc                the public ShardClient
// Internal to client/src.
//
// Thread-safety: thread-safe; info_ is set once, in Connect, before the
// client is shared.
#ifndef PSD_CLIENT_SRC_SHARD_CLIENT_IMPL_H_
#define PSD_CLIENT_SRC_SHARD_CLIENT_IMPL_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "psd/client.h"
#include "psd/shard.grpc.pb.h"
#include "psd/tensor.h"
#include "psd/update_kind.h"
#include "data_stream.h"
#include "request_ids.h"
#include "retry_policy.h"
#include "retry_timer.h"

namespace psd {
namespace client {

namespace internal {

// The request id of a mutating request; null for reads.
inline RequestId* IdOf(CreateVariableRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(DeleteVariableRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(InitializeVariablesRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(AssignRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(ScatterRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(CountUpToRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(ImportEmbeddingRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(DeleteEmbeddingKeysRequest& r) { return r.mutable_request_id(); }
inline RequestId* IdOf(EvictEmbeddingRequest& r) { return r.mutable_request_id(); }
template <typename T>
inline RequestId* IdOf(T&) {
  return nullptr;
}

// The client's VariableInfo of the shard's; INTERNAL for a shape the shard
// should not have sent.
absl::StatusOr<VariableInfo> VariableInfoFromProto(const psd::VariableInfo& p);

}  // namespace internal

using AsyncStub = Shard::Stub::async_interface;
using internal::IdOf;
using internal::RetryPolicy;
using internal::RetryState;
using internal::DataStream;
using internal::StreamOp;
using internal::SetNewRequestId;
using internal::VariableInfoFromProto;

class ShardClient::Impl {
 public:
  // Counts one open op (an async op or a batch stream) for the life of the
  // object holding it. ~Impl waits until every token is gone, so the
  // channel is never destroyed by the last reference dropping on a gRPC
  // callback thread (gRPC cannot shut its callback threads down from one of
  // them).
  class OpToken {
   public:
    explicit OpToken(Impl* impl) : impl_(impl) { impl_->OpStarted(); }
    OpToken(const OpToken&) = delete;
    OpToken& operator=(const OpToken&) = delete;
    ~OpToken() { impl_->OpDone(); }

   private:
    Impl* const impl_;
  };

  // One async unary op: its request, the current attempt's context and
  // response, and the promise its caller holds. Shared by the gRPC callback
  // and the retry timer; `R` is absl::Status or absl::StatusOr<T>.
  template <typename Req, typename Resp, typename R>
  struct AsyncOp {
    using Method = void (AsyncStub::*)(grpc::ClientContext*, const Req*, Resp*,
                                       std::function<void(grpc::Status)>);
    using OnOk = std::function<void(const std::shared_ptr<AsyncOp>&)>;
    explicit AsyncOp(Impl* impl) : token(impl), impl(impl) {}

    void Complete(R result) { promise.set_value(std::move(result)); }

    // First, so it is destroyed last: the client stays alive until the
    // contexts below are gone.
    OpToken token;
    Impl* const impl;
    Method method = nullptr;
    Req request;
    Resp response;
    // One per attempt; earlier ones are kept until the op is destroyed so no
    // context dies while gRPC may still be finishing its callback.
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    RetryState retry;
    std::promise<R> promise;
    // Turns a successful response into the result; it calls Complete, now
    // or later from another thread.
    OnOk on_ok;
  };

  Impl(std::string address, const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
      : address_(std::move(address)),
        options_(options),
        credentials_key_(internal::CredentialsKey(options.security)),
        channel_(std::move(channel)),
        stub_(Shard::NewStub(channel_)),
        raw_stub_(channel_),
        retry_(options),
        data_stream_(options.data_stream ? MakeDataStream() : nullptr),
        read_stream_(options.data_stream ? MakeDataStream() : nullptr) {}

  ~Impl() {
    // Lets the ops still on the data streams finish first.
    data_stream_.reset();
    read_stream_.reset();
    absl::MutexLock lock(&ops_mu_);
    ops_mu_.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &open_ops_));
  }

  void OpStarted() {
    absl::MutexLock lock(&ops_mu_);
    ++open_ops_;
  }
  void OpDone() {
    absl::MutexLock lock(&ops_mu_);
    --open_ops_;
  }

  // The status of a finished call. This client never cancels a call, so
  // CANCELLED comes from the server's gRPC: a shard that is shutting down
  // cancels the calls that reach it after its drain began, without running
  // them. For the caller that is the shard going away: UNAVAILABLE, like any
  // call that finds the shard gone (and retried like one).
  absl::Status CallStatus(const grpc::Status& grpc_status) const;

  // Runs `attempt` (absl::Status()) under the retry policy; sleeps on the
  // calling thread between tries. `id` (the request's id, or null) is
  // renewed when its first attempt was refused as too old.
  template <typename Fn>
  absl::Status WithRetries(Fn&& attempt, RequestId* id = nullptr) {
    return retry_.Run(std::forward<Fn>(attempt), id);
  }

  void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) const {
    if (timeout != absl::InfiniteDuration()) {
      context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
  }

  // One attempt of a unary RPC with the client's deadline.
  template <typename Req, typename Resp>
  absl::Status CallOnce(grpc::Status (Shard::Stub::*method)(grpc::ClientContext*, const Req&,
                                                            Resp*),
                        const Req& request, Resp* response, bool wait_for_ready = false) {
    grpc::ClientContext context;
    SetDeadline(&context, options_.timeout);
    context.set_wait_for_ready(wait_for_ready);
    return CallStatus((stub_.get()->*method)(&context, request, response));
  }

  // A unary RPC with retries (the request, its id included, is re-sent
  // unchanged).
  template <typename Req, typename Resp>
  absl::Status Call(grpc::Status (Shard::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    Req& request, Resp* response) {
    return WithRetries(
        [&] {
          response->Clear();
          return CallOnce(method, request, response);
        },
        IdOf(request));
  }

  // Starts an async op; `on_ok` turns the response into the result.
  template <typename Resp, typename R, typename Req>
  std::future<R> StartAsync(typename AsyncOp<Req, Resp, R>::Method method, Req request,
                            typename AsyncOp<Req, Resp, R>::OnOk on_ok);

  template <typename Op>
  void StartAttempt(const std::shared_ptr<Op>& op);

  template <typename Op>
  void OnAttemptDone(const std::shared_ptr<Op>& op, const grpc::Status& grpc_status);

  // Runs `fn` on a thread of its own (the streaming fallback of async ops).
  // The op that spawned it is still open, so the destructor waits for it.
  void RunDetached(std::function<void()> fn) { std::thread(std::move(fn)).detach(); }

  bool Streams(int64_t bytes) const {
    return options_.stream_threshold_bytes > 0 && bytes > options_.stream_threshold_bytes;
  }

  // Decodes a tensor the shard sent in a reply that is not used again: the
  // tensor takes over the reply's bytes (see DecodeResultInto).
  absl::StatusOr<Tensor> DecodeResult(TensorProto* proto, const std::string& name) const;

  absl::Status ShardFault(const std::string& what) const;

  // ---- Streamed reads (shard_client_streams.cc).

  // One attempt of ReadStream: each chunk's content goes from gRPC's receive
  // slices straight into *out's buffer, which is reused when it already has
  // the value's dtype and size (for strings, into the encoding, decoded at
  // the end).
  absl::Status ReadStreamOnce(const std::string& name, Tensor* out);

  absl::Status ReadStream(const std::string& name, Tensor* out);

  absl::StatusOr<Tensor> ReadStream(const std::string& name);

  // ---- One-message reads (shard_client_impl.cc).

  ReadRequest MakeReadRequest(const std::string& name) const;

  // A value that came in one message, into *out: copied into out's buffer
  // when it already has the value's dtype and size, else out takes over the
  // message's bytes (no copy either way for a fresh tensor). A malformed
  // value is the shard's fault, so it is INTERNAL rather than the
  // INVALID_ARGUMENT of ValidateTensorProto.
  absl::Status DecodeResultInto(TensorProto* proto, const std::string& name, Tensor* out) const;

  absl::Status ReadInto(const std::string& name, Tensor* out);

  absl::StatusOr<Tensor> Read(const std::string& name);

  // ---- Streamed assigns (shard_client_streams.cc).

  // One attempt of AssignStream (see internal::SendAssignStream).
  absl::Status AssignStreamOnce(const AssignStreamHeader& header, absl::string_view content,
                                AssignResponse* response);

  absl::Status AssignStream(AssignStreamHeader header, const Tensor& value,
                            AssignResponse* response);

  AssignStreamHeader MakeStreamHeader(UpdateKind op, const std::string& name, const Tensor& value,
                                      bool validate_shape, bool if_uninitialized = false) const;

  // Create with a value too big for one message: a streamed assign whose
  // header declares the variable.
  absl::StatusOr<VariableInfo> CreateStreamed(const std::string& name, const Tensor& value,
                                              const CreateOptions& options);

  // ---- Ops (shard_client_impl.cc).

  AssignRequest MakeAssignRequest(UpdateKind op, const std::string& name, Tensor&& value,
                                  const AssignOptions& options, bool return_value) const;

  ScatterRequest MakeScatterRequest(UpdateKind op, const std::string& name, Tensor&& indices,
                                    Tensor&& updates, bool return_value) const;

  CountUpToRequest MakeCountUpToRequest(const std::string& name, int64_t limit) const;

  GatherRequest MakeGatherRequest(const std::string& name, Tensor&& indices) const;

  absl::Status AssignOp(UpdateKind op, const std::string& name, const Tensor& value,
                        const AssignOptions& options, Tensor* new_value);

  absl::Status ScatterOp(UpdateKind op, const std::string& name, const Tensor& indices,
                         const Tensor& updates, Tensor* new_value);

  absl::StatusOr<VariableInfo> CreateVariable(CreateVariableRequest* request,
                                              const CreateOptions& options);

  static void SetCreateOptions(CreateVariableRequest* request, const CreateOptions& options);

  // ---- Ops on the data stream (shard_client_data.cc).

  bool OnDataStream() const { return data_stream_ != nullptr; }

  // Runs `op` on the data stream and waits for its result (into *result).
  absl::Status RunOnStream(std::unique_ptr<StreamOp> op, BatchOpResult* result);

  // Submits `op` to the data stream; `on_ok` turns its result into R.
  template <typename R>
  std::future<R> SubmitOnStream(std::unique_ptr<StreamOp> op,
                                std::function<R(BatchOpResult*, const std::string&)> on_ok);

  // A new op on the data stream (the client's own hold on it, for async ops).
  std::unique_ptr<StreamOp> NewStreamOp(const std::string& name, bool async);

  // ---- Async ops (shard_client_async.cc).

  // Runs `fn` (returning R) on a thread of its own: async ops on big values.
  template <typename R, typename Fn>
  std::future<R> OnThread(Fn&& fn);

  std::future<absl::Status> AssignAsync(UpdateKind op, const std::string& name, Tensor value,
                                        const AssignOptions& options);

  std::future<absl::Status> ScatterAsync(UpdateKind op, const std::string& name, Tensor indices,
                                         Tensor updates);

  std::future<absl::StatusOr<Tensor>> ReadAsync(const std::string& name);

  std::future<absl::StatusOr<Tensor>> GatherAsync(const std::string& name, Tensor indices);

  std::future<absl::StatusOr<int64_t>> CountUpToAsync(const std::string& name, int64_t limit);

  const std::string address_;
  const ClientOptions options_;
  // Which process client ids this client's requests carry (request_ids.h).
  const uint64_t credentials_key_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<Shard::Stub> stub_;  // thread-safe
  // ReadStream and AssignStream, called raw (psd/stream_codec.h).
  grpc::GenericStub raw_stub_;  // thread-safe
  ShardInfo info_;              // set once in Connect
  const RetryPolicy retry_;

 private:
  std::unique_ptr<DataStream> MakeDataStream();

  absl::Mutex ops_mu_;
  int open_ops_ ABSL_GUARDED_BY(ops_mu_) = 0;  // async ops not yet completed
  internal::RetryTimer timer_;

 public:
  // The data streams (null when ClientOptions::data_stream is off), after
  // timer_, which they schedule on, so they are destroyed first. Writes go
  // on data_stream_, in the order they are issued; reads and gathers on
  // read_stream_, so writes that a checkpoint fence holds never hold a read
  // (a read sees every write whose call returned before it was issued).
  std::unique_ptr<DataStream> data_stream_;
  std::unique_ptr<DataStream> read_stream_;

  DataStream* StreamFor(const StreamOp& op) const {
    const bool read = op.fields.op_case() == BatchOp::kRead ||
                      op.fields.op_case() == BatchOp::kGather;
    return read ? read_stream_.get() : data_stream_.get();
  }
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_SHARD_CLIENT_IMPL_H_
