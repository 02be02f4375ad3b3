// ShardClient, the public face of the shard client (psd/client.h): Connect
// and the synchronous, async and apply entry points over
// ShardClient::Impl (shard_client_impl.h).
#include "psd/client.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "raw_stream.h"
#include "shard_client_impl.h"

namespace psd {
namespace client {

namespace {

// A shard runs at most this many ops of one Batch message (max_batch_ops).
constexpr int kMaxOpsPerFrame = 65536;

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

}  // namespace

// ---- ShardClient.

absl::StatusOr<std::unique_ptr<ShardClient>> ShardClient::Connect(const std::string& address,
                                                                  const ClientOptions& options) {
  if (options.max_attempts < 1 || options.chunk_bytes < 1 || options.stream_threshold_bytes < 0) {
    return absl::InvalidArgumentError(
        "ClientOptions: max_attempts and chunk_bytes must be >= 1, stream_threshold_bytes >= 0");
  }
  if (options.data_stream_frames_in_flight < 1 || options.data_stream_ops_per_frame < 1 ||
      options.data_stream_ops_per_frame > kMaxOpsPerFrame || options.data_stream_frame_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClientOptions: data_stream_frames_in_flight and data_stream_frame_bytes must be >= 1, "
        "data_stream_ops_per_frame in [1, ",
        kMaxOpsPerFrame, "] (a shard refuses bigger batch messages); got ",
        options.data_stream_frames_in_flight, ", ", options.data_stream_frame_bytes, ", ",
        options.data_stream_ops_per_frame));
  }
  if (options.keepalive != absl::ZeroDuration() && options.keepalive < absl::Seconds(5)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClientOptions: keepalive must be 0 (no pings) or at least 5s (shards refuse pings more "
        "often); got ",
        absl::FormatDuration(options.keepalive)));
  }
  PSD_RETURN_IF_ERROR(psd::internal::CheckDialTarget(address, "shard"));
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  if (options.keepalive > absl::ZeroDuration()) {
    // Only while calls are open: an idle client costs its shards nothing.
    const int ms = static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(options.keepalive), int64_t{1} << 30));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    // A data stream waiting for a long op sends nothing meanwhile: keep
    // pinging all the same.
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
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

absl::Status ShardClient::SendApplyDense(ApplyDenseRequest* request, ApplyDenseResponse* response) {
  SetNewRequestId(request->mutable_request_id(), impl_->credentials_key_);
  request->set_shard_incarnation(impl_->info_.incarnation);
  if (impl_->OnDataStream()) {
    auto op = impl_->NewStreamOp(request->name(), /*async=*/false);
    ApplyDenseRequest* moved = op->fields.mutable_apply_dense();
    *moved = std::move(*request);
    op->LiftContent(ApplyDenseRequest::kGradientFieldNumber, moved->mutable_gradient());
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(impl_->RunOnStream(std::move(op), &result));
    response->Swap(result.mutable_apply_dense());
    return absl::OkStatus();
  }
  return impl_->Call(&Shard::Stub::ApplyDense, *request, response);
}

absl::Status ShardClient::SendApplySparse(ApplySparseRequest* request,
                                          ApplySparseResponse* response) {
  SetNewRequestId(request->mutable_request_id(), impl_->credentials_key_);
  request->set_shard_incarnation(impl_->info_.incarnation);
  if (impl_->OnDataStream()) {
    auto op = impl_->NewStreamOp(request->name(), /*async=*/false);
    ApplySparseRequest* moved = op->fields.mutable_apply_sparse();
    *moved = std::move(*request);
    op->LiftContent(ApplySparseRequest::kIndicesFieldNumber, moved->mutable_indices());
    op->LiftContent(ApplySparseRequest::kValuesFieldNumber, moved->mutable_values());
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(impl_->RunOnStream(std::move(op), &result));
    response->Swap(result.mutable_apply_sparse());
    return absl::OkStatus();
  }
  return impl_->Call(&Shard::Stub::ApplySparse, *request, response);
}

absl::Status ShardClient::SendApplyStream(AssignStreamHeader* header, const Tensor& gradient,
                                          AssignResponse* response) {
  // A header that carries an id resends an op sent before (see
  // ShardApplier::ApplyGradients' request_ids).
  if (header->request_id().client_id() == 0) {
    SetNewRequestId(header->mutable_request_id(), impl_->credentials_key_);
  }
  header->set_shard_incarnation(impl_->info_.incarnation);
  return impl_->AssignStream(*header, gradient, response);
}

absl::Status ShardClient::SendApplyBatch(BatchRequest* request, BatchResponse* response) {
  // Held across the retries: every attempt resends the same ids.
  internal::BatchIdLease ids(impl_->credentials_key_);
  for (BatchOp& op : *request->mutable_ops()) {
    // An op that carries an id resends one sent before (see
    // ShardApplier::ApplyGradients' request_ids).
    if (RequestId* id = internal::BatchOpId(&op); id != nullptr && id->client_id() == 0) {
      ids.Next(id);
    }
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

DataStreamStats ShardClient::data_stream_stats() const {
  DataStreamStats stats;
  if (impl_->OnDataStream()) {
    for (const auto* stream : {impl_->data_stream_.get(), impl_->read_stream_.get()}) {
      stats.streams_opened += stream->streams_opened();
      stats.messages_sent += stream->frames_sent();
      stats.ops_sent += stream->ops_sent();
      stats.ops_waiting += stream->ops_waiting();
    }
  }
  return stats;
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
  SetNewRequestId(request.mutable_request_id(), impl_->credentials_key_);
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
  SetNewRequestId(request.mutable_request_id(), impl_->credentials_key_);
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
  if (impl_->OnDataStream()) {
    internal::BorrowedSlices lent;
    auto op = impl_->NewStreamOp(name, /*async=*/false);
    GatherRequest* request = op->fields.mutable_gather();
    *request = impl_->MakeGatherRequest(name, Tensor());
    op->SetTensor(indices, GatherRequest::kIndicesFieldNumber, request->mutable_indices(), &lent);
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(impl_->RunOnStream(std::move(op), &result));
    return impl_->DecodeResult(result.mutable_gather()->mutable_value(), name);
  }
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
  if (impl_->OnDataStream()) {
    auto op = impl_->NewStreamOp(name, /*async=*/false);
    *op->fields.mutable_count_up_to() = impl_->MakeCountUpToRequest(name, limit);
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(impl_->RunOnStream(std::move(op), &result));
    return result.count_up_to().old_value();
  }
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

}  // namespace client
}  // namespace psd
