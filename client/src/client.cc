#include "psd/client.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <variant>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/io/coded_stream.h"
#include "grpc/slice.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "psd/grpc_status.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/shard.grpc.pb.h"
#include "psd/status.h"
#include "psd/stream_codec.h"
#include "psd/update_kind_wire.h"
#include "psd/wire.h"
#include "raw_stream.h"
#include "request_ids.h"
#include "retry_policy.h"

namespace psd {
namespace client {

namespace {

using AsyncStub = Shard::Stub::async_interface;
using internal::RetryPolicy;
using internal::RetryState;
using internal::SetNewRequestId;

ShardInfo ShardInfoFromProto(const GetShardInfoResponse& r) {
  ShardInfo info;
  info.shard_id = r.shard_id();
  info.incarnation = r.incarnation();
  info.device = r.device();
  info.memory_limit_bytes = r.memory_limit_bytes();
  info.memory_used_bytes = r.memory_used_bytes();
  info.num_variables = r.num_variables();
  return info;
}

absl::StatusOr<VariableInfo> VariableInfoFromProto(const psd::VariableInfo& p) {
  VariableInfo info;
  info.name = p.name();
  info.dtype = p.dtype();
  auto shape = ShapeFromProto(p.shape(), absl::StrCat("shape of variable '", p.name(), "'"));
  // A shape the shard itself reports cannot be the caller's fault.
  if (!shape.ok())
    return absl::InternalError(absl::StrCat("shard sent ", shape.status().message()));
  info.shape = *std::move(shape);
  info.initialized = p.initialized();
  info.version = p.version();
  info.device = p.device();
  info.bytes = p.bytes();
  return info;
}

// The request id of a mutating request; null for reads.
RequestId* IdOf(CreateVariableRequest& r) { return r.mutable_request_id(); }
RequestId* IdOf(DeleteVariableRequest& r) { return r.mutable_request_id(); }
RequestId* IdOf(InitializeVariablesRequest& r) { return r.mutable_request_id(); }
RequestId* IdOf(AssignRequest& r) { return r.mutable_request_id(); }
RequestId* IdOf(ScatterRequest& r) { return r.mutable_request_id(); }
RequestId* IdOf(CountUpToRequest& r) { return r.mutable_request_id(); }
template <typename T>
RequestId* IdOf(T&) {
  return nullptr;
}

// Runs callbacks at given times on one thread of its own: the retries of
// async ops wait here rather than on a gRPC callback thread.
//
// Thread-safety: thread-safe.
class RetryTimer {
 public:
  RetryTimer() : thread_([this] { Loop(); }) {}
  RetryTimer(const RetryTimer&) = delete;
  RetryTimer& operator=(const RetryTimer&) = delete;
  // Runs what is still queued at once, then stops.
  ~RetryTimer() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      cv_.Signal();
    }
    thread_.join();
  }

  void Schedule(absl::Time when, std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    queue_.emplace(when, std::move(fn));
    cv_.Signal();
  }

 private:
  void Loop() {
    absl::MutexLock lock(&mu_);
    for (;;) {
      if (queue_.empty()) {
        if (stop_) return;
        cv_.Wait(&mu_);
        continue;
      }
      auto first = queue_.begin();
      if (!stop_ && absl::Now() < first->first) {
        cv_.WaitWithDeadline(&mu_, first->first);
        continue;
      }
      std::function<void()> fn = std::move(first->second);
      queue_.erase(first);
      mu_.Unlock();
      fn();
      mu_.Lock();
    }
  }

  absl::Mutex mu_;
  absl::CondVar cv_;
  std::multimap<absl::Time, std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace

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
        channel_(std::move(channel)),
        stub_(Shard::NewStub(channel_)),
        raw_stub_(channel_),
        retry_(options) {}

  ~Impl() {
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
  absl::Status CallStatus(const grpc::Status& grpc_status) const {
    absl::Status status = FromGrpcStatus(grpc_status);
    if (status.code() == absl::StatusCode::kCancelled) {
      return absl::UnavailableError(absl::StrCat(
          "shard ", address_, " cancelled the call (shutting down?): ", status.message()));
    }
    return status;
  }

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
  void StartAttempt(const std::shared_ptr<Op>& op) {
    ++op->retry.attempts;
    op->contexts.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* context = op->contexts.back().get();
    SetDeadline(context, options_.timeout);
    op->response.Clear();
    (stub_->async()->*(op->method))(
        context, &op->request, &op->response,
        [op](grpc::Status status) { op->impl->OnAttemptDone(op, status); });
  }

  template <typename Op>
  void OnAttemptDone(const std::shared_ptr<Op>& op, const grpc::Status& grpc_status) {
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

  // Runs `fn` on a thread of its own (the streaming fallback of async ops).
  // The op that spawned it is still open, so the destructor waits for it.
  void RunDetached(std::function<void()> fn) { std::thread(std::move(fn)).detach(); }

  bool Streams(int64_t bytes) const {
    return options_.stream_threshold_bytes > 0 && bytes > options_.stream_threshold_bytes;
  }

  // Decodes a tensor the shard sent in a reply that is not used again: the
  // tensor takes over the reply's bytes (see DecodeResultInto).
  absl::StatusOr<Tensor> DecodeResult(TensorProto* proto, const std::string& name) const {
    Tensor out;
    PSD_RETURN_IF_ERROR(DecodeResultInto(proto, name, &out));
    return out;
  }

  absl::Status ShardFault(const std::string& what) const {
    return absl::InternalError(absl::StrCat("shard ", address_, " sent ", what));
  }

  // ---- Streamed reads.

  // One attempt of ReadStream: each chunk's content goes from gRPC's receive
  // slices straight into *out's buffer, which is reused when it already has
  // the value's dtype and size (for strings, into the encoding, decoded at
  // the end).
  absl::Status ReadStreamOnce(const std::string& name, Tensor* out) {
    ReadStreamRequest request;
    request.set_name(name);
    request.set_chunk_bytes(options_.chunk_bytes);
    request.set_shard_incarnation(info_.incarnation);
    grpc::ClientContext context;
    SetDeadline(&context, options_.stream_timeout);
    internal::RawStreamCall call(&raw_stub_, &context, kReadStreamMethod);
    if (call.Write(EncodeMessage(request))) call.WritesDone();

    grpc::ByteBuffer buffer;
    ContentMessage message;
    TensorChunk chunk;
    std::string encoding;  // DT_STRING only
    char* dst = nullptr;
    int64_t total = -1, received = 0;
    absl::Status fault;
    while (call.Read(&buffer)) {
      absl::Status parsed = message.Parse(buffer, kTensorChunkContentField, &chunk,
                                          absl::StrCat("a chunk of variable '", name, "'"));
      if (!parsed.ok()) {
        fault = ShardFault(std::string(parsed.message()));
        break;
      }
      if (total < 0) {
        const std::string what = absl::StrCat("streamed value of variable '", name, "'");
        absl::Status valid = ValidateDataType(chunk.dtype(), what);
        auto shape = ShapeFromProto(chunk.shape(), what);
        if (valid.ok() && !shape.ok()) valid = shape.status();
        total = chunk.total_bytes();
        if (valid.ok() && chunk.dtype() != DT_STRING &&
            total != shape->num_elements() * static_cast<int64_t>(DataTypeSize(chunk.dtype()))) {
          valid = absl::InvalidArgumentError(
              absl::StrCat(what, ": total_bytes ", total, " does not fit ",
                           DataTypeName(chunk.dtype()), shape->ToString()));
        }
        if (valid.ok() && total < 0) valid = absl::InvalidArgumentError("negative total_bytes");
        if (!valid.ok()) {
          fault = ShardFault(std::string(valid.message()));
          break;
        }
        if (chunk.dtype() == DT_STRING) {
          *out = Tensor(DT_STRING, *shape);
          encoding.resize(total);
          dst = encoding.data();
        } else {
          out->ResetForOverwrite(chunk.dtype(), *std::move(shape));
          dst = out->mutable_bytes()->data();
        }
      }
      const int64_t n = static_cast<int64_t>(message.content_size());
      if (chunk.offset() != received || n > total - received) {
        fault = ShardFault(absl::StrCat("a chunk of ", n, " bytes at offset ", chunk.offset(),
                                        " of variable '", name, "' after ", received, " of ", total,
                                        " bytes"));
        break;
      }
      message.CopyContentTo(dst + received);
      received += n;
      message.Clear();
      buffer.Clear();
    }
    if (!fault.ok()) {
      context.TryCancel();
      call.Finish();
      return fault;
    }
    PSD_RETURN_IF_ERROR(CallStatus(call.Finish()));
    if (total < 0) return ShardFault(absl::StrCat("an empty stream for variable '", name, "'"));
    if (received != total) {
      return ShardFault(absl::StrCat(received, " of ", total, " bytes of variable '", name, "'"));
    }
    if (out->dtype() == DT_STRING) {
      auto strings = DecodeStrings(encoding, out->num_elements(),
                                   absl::StrCat("streamed value of variable '", name, "'"));
      if (!strings.ok()) return ShardFault(std::string(strings.status().message()));
      *out->mutable_strings() = *std::move(strings);
    }
    return absl::OkStatus();
  }

  absl::Status ReadStream(const std::string& name, Tensor* out) {
    return WithRetries([&] { return ReadStreamOnce(name, out); });
  }

  absl::StatusOr<Tensor> ReadStream(const std::string& name) {
    Tensor out;
    PSD_RETURN_IF_ERROR(ReadStream(name, &out));
    return out;
  }

  ReadRequest MakeReadRequest(const std::string& name) const {
    ReadRequest request;
    request.set_name(name);
    request.set_max_value_bytes(options_.stream_threshold_bytes);
    request.set_shard_incarnation(info_.incarnation);
    return request;
  }

  // A value that came in one message, into *out: copied into out's buffer
  // when it already has the value's dtype and size, else out takes over the
  // message's bytes (no copy either way for a fresh tensor). A malformed
  // value is the shard's fault, so it is INTERNAL rather than the
  // INVALID_ARGUMENT of ValidateTensorProto.
  absl::Status DecodeResultInto(TensorProto* proto, const std::string& name, Tensor* out) const {
    const std::string what = absl::StrCat("value of variable '", name, "'");
    auto shape = ValidateTensorProto(*proto, what);
    if (!shape.ok()) return ShardFault(std::string(shape.status().message()));
    if (proto->dtype() == DT_STRING) {
      auto strings = TensorFromProto(*proto, what);
      if (!strings.ok()) return ShardFault(std::string(strings.status().message()));
      *out = *std::move(strings);
      return absl::OkStatus();
    }
    std::string* content = proto->mutable_content();
    if (out->dtype() == proto->dtype() && out->bytes().size() == content->size()) {
      out->ResetForOverwrite(proto->dtype(), *std::move(shape));
      if (!content->empty()) std::memcpy(out->mutable_bytes()->data(), content->data(), content->size());
      return absl::OkStatus();
    }
    auto adopted = Tensor::FromBytes(proto->dtype(), *std::move(shape), std::move(*content));
    if (!adopted.ok()) return ShardFault(std::string(adopted.status().message()));
    *out = *std::move(adopted);
    return absl::OkStatus();
  }

  absl::Status ReadInto(const std::string& name, Tensor* out) {
    // A destination above the stream threshold means the value most likely
    // still is: skip the one-message attempt, which would only answer
    // use_stream (a round trip). The stream serves values of any size.
    if (out->dtype() != DT_STRING && Streams(static_cast<int64_t>(out->bytes().size()))) {
      return ReadStream(name, out);
    }
    ReadRequest request = MakeReadRequest(name);
    ReadResponse response;
    PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Read, request, &response));
    if (response.use_stream()) return ReadStream(name, out);
    return DecodeResultInto(response.mutable_value(), name, out);
  }

  absl::StatusOr<Tensor> Read(const std::string& name) {
    Tensor out;
    PSD_RETURN_IF_ERROR(ReadInto(name, &out));
    return out;
  }

  // ---- Streamed assigns.

  // One attempt of AssignStream (see internal::SendAssignStream).
  absl::Status AssignStreamOnce(const AssignStreamHeader& header, absl::string_view content,
                                AssignResponse* response) {
    response->Clear();
    grpc::ByteBuffer reply;
    PSD_RETURN_IF_ERROR(CallStatus(internal::SendAssignStream(
        &raw_stub_, options_.stream_timeout, header, content, options_.chunk_bytes, &reply)));
    if (!DecodeMessage(reply, response)) return ShardFault("a malformed AssignResponse");
    return absl::OkStatus();
  }

  absl::Status AssignStream(AssignStreamHeader header, const Tensor& value,
                            AssignResponse* response) {
    std::string encoding;
    absl::string_view content;
    if (value.dtype() == DT_STRING) {
      encoding = EncodeStrings(value.strings());  // once, for every attempt
      content = encoding;
    } else {
      content = value.bytes();
    }
    return WithRetries([&] { return AssignStreamOnce(header, content, response); },
                       header.mutable_request_id());
  }

  AssignStreamHeader MakeStreamHeader(UpdateKind op, const std::string& name, const Tensor& value,
                                      bool validate_shape, bool if_uninitialized = false) const {
    AssignStreamHeader header;
    header.set_name(name);
    header.set_op(UpdateKindToWire(op));
    header.set_dtype(value.dtype());
    ShapeToProto(value.shape(), header.mutable_shape());
    header.set_total_bytes(WireBytes(value));
    header.set_validate_shape(validate_shape);
    header.set_if_uninitialized(if_uninitialized);
    SetNewRequestId(header.mutable_request_id());
    header.set_shard_incarnation(info_.incarnation);
    return header;
  }

  // ---- Ops.

  AssignRequest MakeAssignRequest(UpdateKind op, const std::string& name, Tensor&& value,
                                  const AssignOptions& options, bool return_value) const {
    AssignRequest request;
    request.set_name(name);
    request.set_op(UpdateKindToWire(op));
    TensorToProto(std::move(value), request.mutable_value());
    request.set_validate_shape(options.validate_shape);
    request.set_use_locking(options.use_locking);
    request.set_if_uninitialized(op == UpdateKind::kAssign && options.if_uninitialized);
    request.set_return_value(return_value);
    SetNewRequestId(request.mutable_request_id());
    request.set_shard_incarnation(info_.incarnation);
    return request;
  }

  ScatterRequest MakeScatterRequest(UpdateKind op, const std::string& name, Tensor&& indices,
                                    Tensor&& updates, bool return_value) const {
    ScatterRequest request;
    request.set_name(name);
    request.set_op(UpdateKindToWire(op));
    TensorToProto(std::move(indices), request.mutable_indices());
    TensorToProto(std::move(updates), request.mutable_updates());
    request.set_return_value(return_value);
    SetNewRequestId(request.mutable_request_id());
    request.set_shard_incarnation(info_.incarnation);
    return request;
  }

  CountUpToRequest MakeCountUpToRequest(const std::string& name, int64_t limit) const {
    CountUpToRequest request;
    request.set_name(name);
    request.set_limit(limit);
    SetNewRequestId(request.mutable_request_id());
    request.set_shard_incarnation(info_.incarnation);
    return request;
  }

  GatherRequest MakeGatherRequest(const std::string& name, Tensor&& indices) const {
    GatherRequest request;
    request.set_name(name);
    TensorToProto(std::move(indices), request.mutable_indices());
    request.set_shard_incarnation(info_.incarnation);
    return request;
  }

  absl::Status AssignOp(UpdateKind op, const std::string& name, const Tensor& value,
                        const AssignOptions& options, Tensor* new_value) {
    const int64_t bytes = WireBytes(value);
    // A streamed assign returns no value, and reading it back afterwards is
    // not atomic with the update: keep an add/sub whose result is wanted in
    // one message while it fits.
    const bool result_in_reply = new_value != nullptr && op != UpdateKind::kAssign &&
                                 bytes + (64 << 10) <= options_.max_message_bytes;
    if (Streams(bytes) && !result_in_reply) {
      const AssignStreamHeader header = MakeStreamHeader(
          op, name, value, op == UpdateKind::kAssign ? options.validate_shape : true,
          op == UpdateKind::kAssign && options.if_uninitialized);
      AssignResponse response;
      PSD_RETURN_IF_ERROR(AssignStream(header, value, &response));
      if (new_value != nullptr) {
        // A streamed assign returns no value: an assign's new value is the
        // value sent; for add/sub, or an initialization that found the
        // variable initialized, it is read back (not atomically with the
        // update).
        if (op == UpdateKind::kAssign && !response.skipped()) {
          *new_value = value;
        } else {
          PSD_ASSIGN_OR_RETURN(*new_value, Read(name));
        }
      }
      return absl::OkStatus();
    }
    AssignRequest request =
        MakeAssignRequest(op, name, Tensor(value), options, new_value != nullptr);
    AssignResponse response;
    PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Assign, request, &response));
    if (new_value != nullptr) {
      PSD_ASSIGN_OR_RETURN(*new_value, DecodeResult(response.mutable_value(), name));
    }
    return absl::OkStatus();
  }

  absl::Status ScatterOp(UpdateKind op, const std::string& name, const Tensor& indices,
                         const Tensor& updates, Tensor* new_value) {
    ScatterRequest request =
        MakeScatterRequest(op, name, Tensor(indices), Tensor(updates), new_value != nullptr);
    ScatterResponse response;
    PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Scatter, request, &response));
    if (new_value != nullptr) {
      PSD_ASSIGN_OR_RETURN(*new_value, DecodeResult(response.mutable_value(), name));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<VariableInfo> CreateVariable(CreateVariableRequest* request,
                                              const CreateOptions& options) {
    SetCreateOptions(request, options);
    SetNewRequestId(request->mutable_request_id());
    request->set_shard_incarnation(info_.incarnation);
    CreateVariableResponse response;
    PSD_RETURN_IF_ERROR(Call(&Shard::Stub::CreateVariable, *request, &response));
    return VariableInfoFromProto(response.info());
  }

  static void SetCreateOptions(CreateVariableRequest* request, const CreateOptions& options) {
    request->set_initialize(options.initialize);
    if (!options.full_shape.empty() || !options.offset.empty()) {
      request->mutable_slice()->mutable_full_shape()->Assign(options.full_shape.begin(),
                                                             options.full_shape.end());
      request->mutable_slice()->mutable_offset()->Assign(options.offset.begin(),
                                                         options.offset.end());
    }
  }

  // Create with a value too big for one message: a streamed assign whose
  // header declares the variable.
  absl::StatusOr<VariableInfo> CreateStreamed(const std::string& name, const Tensor& value,
                                              const CreateOptions& options) {
    AssignStreamHeader header = MakeStreamHeader(UpdateKind::kAssign, name, value, true);
    CreateVariableRequest* decl = header.mutable_create();
    decl->set_name(name);
    decl->set_dtype(value.dtype());
    ShapeToProto(value.shape(), decl->mutable_shape());
    SetCreateOptions(decl, options);
    AssignResponse response;
    PSD_RETURN_IF_ERROR(AssignStream(header, value, &response));
    VariableInfo info;
    info.name = name;
    info.dtype = value.dtype();
    info.shape = value.shape();
    info.initialized = true;
    info.version = response.version();
    info.device = info_.device;
    info.bytes = header.total_bytes();
    return info;
  }

  // ---- Async ops.

  // Runs `fn` (returning R) on a thread of its own: async ops on big values.
  template <typename R, typename Fn>
  std::future<R> OnThread(Fn&& fn) {
    auto promise = std::make_shared<std::promise<R>>();
    std::future<R> future = promise->get_future();
    OpStarted();
    RunDetached([this, promise, fn = std::forward<Fn>(fn)]() mutable {
      promise->set_value(fn());
      OpDone();
    });
    return future;
  }

  std::future<absl::Status> AssignAsync(UpdateKind op, const std::string& name, Tensor value,
                                        const AssignOptions& options) {
    if (Streams(WireBytes(value))) {
      return OnThread<absl::Status>([this, op, name, value = std::move(value), options] {
        return AssignOp(op, name, value, options, nullptr);
      });
    }
    using Op = AsyncOp<AssignRequest, AssignResponse, absl::Status>;
    return StartAsync<AssignResponse, absl::Status>(
        &AsyncStub::Assign, MakeAssignRequest(op, name, std::move(value), options, false),
        [](const std::shared_ptr<Op>& op) { op->Complete(absl::OkStatus()); });
  }

  std::future<absl::Status> ScatterAsync(UpdateKind op, const std::string& name, Tensor indices,
                                         Tensor updates) {
    using Op = AsyncOp<ScatterRequest, ScatterResponse, absl::Status>;
    return StartAsync<ScatterResponse, absl::Status>(
        &AsyncStub::Scatter,
        MakeScatterRequest(op, name, std::move(indices), std::move(updates), false),
        [](const std::shared_ptr<Op>& op) { op->Complete(absl::OkStatus()); });
  }

  std::future<absl::StatusOr<Tensor>> ReadAsync(const std::string& name) {
    using R = absl::StatusOr<Tensor>;
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

  std::future<absl::StatusOr<Tensor>> GatherAsync(const std::string& name, Tensor indices) {
    using R = absl::StatusOr<Tensor>;
    using Op = AsyncOp<GatherRequest, GatherResponse, R>;
    return StartAsync<GatherResponse, R>(
        &AsyncStub::Gather, MakeGatherRequest(name, std::move(indices)),
        [](const std::shared_ptr<Op>& op) {
          op->Complete(op->impl->DecodeResult(op->response.mutable_value(), op->request.name()));
        });
  }

  std::future<absl::StatusOr<int64_t>> CountUpToAsync(const std::string& name, int64_t limit) {
    using R = absl::StatusOr<int64_t>;
    using Op = AsyncOp<CountUpToRequest, CountUpToResponse, R>;
    return StartAsync<CountUpToResponse, R>(
        &AsyncStub::CountUpTo, MakeCountUpToRequest(name, limit),
        [](const std::shared_ptr<Op>& op) { op->Complete(op->response.old_value()); });
  }

  const std::string address_;
  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<Shard::Stub> stub_;  // thread-safe
  // ReadStream and AssignStream, called raw (psd/stream_codec.h).
  grpc::GenericStub raw_stub_;  // thread-safe
  ShardInfo info_;                           // set once in Connect
  const RetryPolicy retry_;

 private:
  absl::Mutex ops_mu_;
  int open_ops_ ABSL_GUARDED_BY(ops_mu_) = 0;  // async ops not yet completed
  RetryTimer timer_;
};

// ---- BatchStream.

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
      : token_(impl), impl_(impl), options_(options) {}

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

// ---- ShardClient.

absl::StatusOr<std::unique_ptr<ShardClient>> ShardClient::Connect(const std::string& address,
                                                                  const ClientOptions& options) {
  if (options.max_attempts < 1 || options.chunk_bytes < 1 || options.stream_threshold_bytes < 0) {
    return absl::InvalidArgumentError(
        "ClientOptions: max_attempts and chunk_bytes must be >= 1, stream_threshold_bytes >= 0");
  }
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  // Reconnect soon after a shard comes back (gRPC's default backoff grows
  // to two minutes), so retries can reach a restarted shard.
  const int max_backoff_ms =
      static_cast<int>(std::max<int64_t>(100, absl::ToInt64Milliseconds(options.max_backoff)));
  args.SetInt("grpc.initial_reconnect_backoff_ms", 100);
  args.SetInt("grpc.min_reconnect_backoff_ms", 100);
  args.SetInt("grpc.max_reconnect_backoff_ms", max_backoff_ms);
  // A connection of its own: clients in one process do not share (and so
  // do not inherit one another's broken) connections.
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  auto credentials = psd::internal::MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  auto channel = grpc::CreateCustomChannel(address, *credentials, args);
  auto impl = std::make_unique<Impl>(address, options, std::move(channel));

  GetShardInfoRequest request;
  request.set_protocol_version(SHARD_PROTOCOL_VERSION);
  GetShardInfoResponse response;
  // Waiting for the shard to come up lets a trainer start beside its shards.
  // With wait_for_ready, UNAVAILABLE means a connection broke under the call
  // (a shard that just restarted): try again under the retry policy. Its
  // DEADLINE_EXCEEDED means the shard did not come up in time: final.
  absl::Status status;
  RetryState retry;
  for (;;) {
    ++retry.attempts;
    status = impl->CallOnce(&Shard::Stub::GetShardInfo, request, &response,
                            /*wait_for_ready=*/true);
    if (status.code() != absl::StatusCode::kUnavailable) break;
    RetryPolicy::Next next = impl->retry_.OnFailure(status, nullptr, &retry);
    if (!next.retry) {
      status = std::move(next.status);
      break;
    }
    absl::SleepFor(next.delay);
  }
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("connecting to shard ", address, ": ", status.message()));
  }
  if (response.protocol_version() != SHARD_PROTOCOL_VERSION) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", address, " speaks protocol version ", response.protocol_version(),
                     ", this client speaks ", SHARD_PROTOCOL_VERSION));
  }
  impl->info_ = ShardInfoFromProto(response);
  return std::unique_ptr<ShardClient>(new ShardClient(std::move(impl)));
}

ShardClient::ShardClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShardClient::~ShardClient() = default;

const std::string& ShardClient::address() const { return impl_->address_; }
const ShardInfo& ShardClient::info() const { return impl_->info_; }
const ClientOptions& ShardClient::options() const { return impl_->options_; }

absl::Status ShardClient::SendApplyDense(ApplyDenseRequest* request,
                                         ApplyDenseResponse* response) {
  SetNewRequestId(request->mutable_request_id());
  request->set_shard_incarnation(impl_->info_.incarnation);
  return impl_->Call(&Shard::Stub::ApplyDense, *request, response);
}

absl::Status ShardClient::SendApplySparse(ApplySparseRequest* request,
                                          ApplySparseResponse* response) {
  SetNewRequestId(request->mutable_request_id());
  request->set_shard_incarnation(impl_->info_.incarnation);
  return impl_->Call(&Shard::Stub::ApplySparse, *request, response);
}

absl::Status ShardClient::SendApplyStream(AssignStreamHeader* header, const Tensor& gradient,
                                          AssignResponse* response) {
  SetNewRequestId(header->mutable_request_id());
  header->set_shard_incarnation(impl_->info_.incarnation);
  return impl_->AssignStream(*header, gradient, response);
}

absl::Status ShardClient::SendApplyBatch(BatchRequest* request, BatchResponse* response) {
  // Held across the retries: every attempt resends the same ids.
  internal::BatchIdLease ids;
  for (BatchOp& op : *request->mutable_ops()) {
    if (RequestId* id = internal::BatchOpId(&op)) ids.Next(id);
    if (op.has_apply_dense()) {
      op.mutable_apply_dense()->set_shard_incarnation(impl_->info_.incarnation);
    } else if (op.has_apply_sparse()) {
      op.mutable_apply_sparse()->set_shard_incarnation(impl_->info_.incarnation);
    }
  }
  return impl_->WithRetries([&] {
    response->Clear();
    grpc::ClientContext context;
    impl_->SetDeadline(&context, impl_->options_.timeout);
    auto stream = impl_->stub_->Batch(&context);
    if (stream->Write(*request)) {
      stream->WritesDone();
      stream->Read(response);
    }
    return impl_->CallStatus(stream->Finish());
  });
}

absl::StatusOr<ShardInfo> ShardClient::GetInfo() {
  GetShardInfoRequest request;
  request.set_protocol_version(SHARD_PROTOCOL_VERSION);
  GetShardInfoResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::GetShardInfo, request, &response));
  return ShardInfoFromProto(response);
}

absl::StatusOr<VariableInfo> ShardClient::Create(const std::string& name,
                                                 const Tensor& initial_value,
                                                 const CreateOptions& options) {
  if (impl_->Streams(WireBytes(initial_value))) {
    return impl_->CreateStreamed(name, initial_value, options);
  }
  CreateVariableRequest request;
  request.set_name(name);
  request.set_dtype(initial_value.dtype());
  ShapeToProto(initial_value.shape(), request.mutable_shape());
  TensorToProto(initial_value, request.mutable_initial_value());
  return impl_->CreateVariable(&request, options);
}

absl::StatusOr<VariableInfo> ShardClient::Create(const std::string& name, DataType dtype,
                                                 const TensorShape& shape,
                                                 const InitializerSpec& initializer,
                                                 const CreateOptions& options) {
  CreateVariableRequest request;
  request.set_name(name);
  request.set_dtype(dtype);
  ShapeToProto(shape, request.mutable_shape());
  *request.mutable_initializer() = initializer;
  return impl_->CreateVariable(&request, options);
}

absl::Status ShardClient::Delete(const std::string& name) {
  DeleteVariableRequest request;
  request.set_name(name);
  SetNewRequestId(request.mutable_request_id());
  request.set_shard_incarnation(impl_->info_.incarnation);
  DeleteVariableResponse response;
  return impl_->Call(&Shard::Stub::DeleteVariable, request, &response);
}

absl::StatusOr<std::vector<VariableInfo>> ShardClient::List(const std::string& prefix) {
  ListVariablesRequest request;
  request.set_prefix(prefix);
  ListVariablesResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::ListVariables, request, &response));
  std::vector<VariableInfo> out;
  out.reserve(response.variables_size());
  for (const auto& v : response.variables()) {
    PSD_ASSIGN_OR_RETURN(VariableInfo info, VariableInfoFromProto(v));
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<VariableInfo> ShardClient::Lookup(const std::string& name) {
  // The shard has no single-variable lookup; a prefix listing is one RPC too.
  PSD_ASSIGN_OR_RETURN(std::vector<VariableInfo> vars, List(name));
  for (auto& v : vars) {
    if (v.name == name) return std::move(v);
  }
  return absl::NotFoundError(absl::StrCat("variable '", name, "' not found"));
}

absl::Status ShardClient::Initialize(const std::vector<std::string>& names, bool force) {
  InitializeVariablesRequest request;
  request.mutable_names()->Assign(names.begin(), names.end());
  request.set_force(force);
  SetNewRequestId(request.mutable_request_id());
  request.set_shard_incarnation(impl_->info_.incarnation);
  InitializeVariablesResponse response;
  return impl_->Call(&Shard::Stub::InitializeVariables, request, &response);
}

absl::StatusOr<std::vector<std::string>> ShardClient::ReportUninitialized(
    const std::vector<std::string>& names) {
  ReportUninitializedRequest request;
  request.mutable_names()->Assign(names.begin(), names.end());
  ReportUninitializedResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::ReportUninitialized, request, &response));
  return std::vector<std::string>(response.names().begin(), response.names().end());
}

absl::StatusOr<bool> ShardClient::IsInitialized(const std::string& name) {
  PSD_ASSIGN_OR_RETURN(VariableInfo info, Lookup(name));
  return info.initialized;
}

absl::StatusOr<Tensor> ShardClient::Read(const std::string& name) { return impl_->Read(name); }
absl::Status ShardClient::ReadInto(const std::string& name, Tensor* out) {
  return impl_->ReadInto(name, out);
}

absl::StatusOr<Tensor> ShardClient::Gather(const std::string& name, const Tensor& indices) {
  GatherRequest request = impl_->MakeGatherRequest(name, Tensor(indices));
  GatherResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::Gather, request, &response));
  return impl_->DecodeResult(response.mutable_value(), name);
}

absl::Status ShardClient::Assign(const std::string& name, const Tensor& value,
                                 const AssignOptions& options, Tensor* new_value) {
  return impl_->AssignOp(UpdateKind::kAssign, name, value, options, new_value);
}

absl::Status ShardClient::AssignAdd(const std::string& name, const Tensor& value,
                                    const AssignOptions& options, Tensor* new_value) {
  return impl_->AssignOp(UpdateKind::kAdd, name, value, options, new_value);
}

absl::Status ShardClient::AssignSub(const std::string& name, const Tensor& value,
                                    const AssignOptions& options, Tensor* new_value) {
  return impl_->AssignOp(UpdateKind::kSub, name, value, options, new_value);
}

absl::Status ShardClient::ScatterUpdate(const std::string& name, const Tensor& indices,
                                        const Tensor& updates, Tensor* new_value) {
  return impl_->ScatterOp(UpdateKind::kAssign, name, indices, updates, new_value);
}

absl::Status ShardClient::ScatterAdd(const std::string& name, const Tensor& indices,
                                     const Tensor& updates, Tensor* new_value) {
  return impl_->ScatterOp(UpdateKind::kAdd, name, indices, updates, new_value);
}

absl::Status ShardClient::ScatterSub(const std::string& name, const Tensor& indices,
                                     const Tensor& updates, Tensor* new_value) {
  return impl_->ScatterOp(UpdateKind::kSub, name, indices, updates, new_value);
}

absl::StatusOr<int64_t> ShardClient::CountUpTo(const std::string& name, int64_t limit) {
  CountUpToRequest request = impl_->MakeCountUpToRequest(name, limit);
  CountUpToResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::CountUpTo, request, &response));
  return response.old_value();
}

std::future<absl::StatusOr<Tensor>> ShardClient::ReadAsync(const std::string& name) {
  return impl_->ReadAsync(name);
}
std::future<absl::StatusOr<Tensor>> ShardClient::GatherAsync(const std::string& name,
                                                             Tensor indices) {
  return impl_->GatherAsync(name, std::move(indices));
}
std::future<absl::Status> ShardClient::AssignAsync(const std::string& name, Tensor value,
                                                   const AssignOptions& options) {
  return impl_->AssignAsync(UpdateKind::kAssign, name, std::move(value), options);
}
std::future<absl::Status> ShardClient::AssignAddAsync(const std::string& name, Tensor value,
                                                      const AssignOptions& options) {
  return impl_->AssignAsync(UpdateKind::kAdd, name, std::move(value), options);
}
std::future<absl::Status> ShardClient::AssignSubAsync(const std::string& name, Tensor value,
                                                      const AssignOptions& options) {
  return impl_->AssignAsync(UpdateKind::kSub, name, std::move(value), options);
}
std::future<absl::Status> ShardClient::ScatterUpdateAsync(const std::string& name, Tensor indices,
                                                          Tensor updates) {
  return impl_->ScatterAsync(UpdateKind::kAssign, name, std::move(indices), std::move(updates));
}
std::future<absl::Status> ShardClient::ScatterAddAsync(const std::string& name, Tensor indices,
                                                       Tensor updates) {
  return impl_->ScatterAsync(UpdateKind::kAdd, name, std::move(indices), std::move(updates));
}
std::future<absl::Status> ShardClient::ScatterSubAsync(const std::string& name, Tensor indices,
                                                       Tensor updates) {
  return impl_->ScatterAsync(UpdateKind::kSub, name, std::move(indices), std::move(updates));
}
std::future<absl::StatusOr<int64_t>> ShardClient::CountUpToAsync(const std::string& name,
                                                                 int64_t limit) {
  return impl_->CountUpToAsync(name, limit);
}

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
