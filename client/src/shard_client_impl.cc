// ShardClient::Impl's RPC core and its one-message ops (see
// shard_client_impl.h for the other files).
#include "shard_client_impl.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "psd/grpc_status.h"
#include "psd/status.h"
#include "psd/update_kind_wire.h"
#include "psd/wire.h"
#include "raw_stream.h"

namespace psd {
namespace client {

namespace internal {

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

}  // namespace internal

absl::Status ShardClient::Impl::CallStatus(const grpc::Status& grpc_status) const {
  absl::Status status = FromGrpcStatus(grpc_status);
  if (status.code() == absl::StatusCode::kCancelled) {
    return absl::UnavailableError(absl::StrCat(
        "shard ", address_, " cancelled the call (shutting down?): ", status.message()));
  }
  return status;
}

absl::StatusOr<Tensor> ShardClient::Impl::DecodeResult(TensorProto* proto,
                                                       const std::string& name) const {
  Tensor out;
  PSD_RETURN_IF_ERROR(DecodeResultInto(proto, name, &out));
  return out;
}

absl::Status ShardClient::Impl::ShardFault(const std::string& what) const {
  return absl::InternalError(absl::StrCat("shard ", address_, " sent ", what));
}

// ---- One-message reads.

ReadRequest ShardClient::Impl::MakeReadRequest(const std::string& name) const {
  ReadRequest request;
  request.set_name(name);
  request.set_max_value_bytes(options_.stream_threshold_bytes);
  request.set_shard_incarnation(info_.incarnation);
  return request;
}

absl::Status ShardClient::Impl::DecodeResultInto(TensorProto* proto, const std::string& name,
                                                 Tensor* out) const {
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
    if (!content->empty())
      std::memcpy(out->mutable_bytes()->data(), content->data(), content->size());
    return absl::OkStatus();
  }
  auto adopted = Tensor::FromBytes(proto->dtype(), *std::move(shape), std::move(*content));
  if (!adopted.ok()) return ShardFault(std::string(adopted.status().message()));
  *out = *std::move(adopted);
  return absl::OkStatus();
}

absl::Status ShardClient::Impl::ReadInto(const std::string& name, Tensor* out) {
  // A destination above the stream threshold means the value most likely
  // still is: skip the one-message attempt, which would only answer
  // use_stream (a round trip). The stream serves values of any size.
  if (out->dtype() != DT_STRING && Streams(static_cast<int64_t>(out->bytes().size()))) {
    return ReadStream(name, out);
  }
  if (OnDataStream()) {
    auto op = NewStreamOp(name, /*async=*/false);
    *op->fields.mutable_read() = MakeReadRequest(name);
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(RunOnStream(std::move(op), &result));
    if (result.read().use_stream()) return ReadStream(name, out);
    return DecodeResultInto(result.mutable_read()->mutable_value(), name, out);
  }
  ReadRequest request = MakeReadRequest(name);
  ReadResponse response;
  PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Read, request, &response));
  if (response.use_stream()) return ReadStream(name, out);
  return DecodeResultInto(response.mutable_value(), name, out);
}

absl::StatusOr<Tensor> ShardClient::Impl::Read(const std::string& name) {
  Tensor out;
  PSD_RETURN_IF_ERROR(ReadInto(name, &out));
  return out;
}

// ---- Ops.

AssignRequest ShardClient::Impl::MakeAssignRequest(UpdateKind op, const std::string& name,
                                                   Tensor&& value, const AssignOptions& options,
                                                   bool return_value) const {
  AssignRequest request;
  request.set_name(name);
  request.set_op(UpdateKindToWire(op));
  TensorToProto(std::move(value), request.mutable_value());
  request.set_validate_shape(options.validate_shape);
  request.set_use_locking(options.use_locking);
  request.set_if_uninitialized(op == UpdateKind::kAssign && options.if_uninitialized);
  request.set_return_value(return_value);
  SetNewRequestId(request.mutable_request_id(), credentials_key_);
  request.set_shard_incarnation(info_.incarnation);
  return request;
}

ScatterRequest ShardClient::Impl::MakeScatterRequest(UpdateKind op, const std::string& name,
                                                     Tensor&& indices, Tensor&& updates,
                                                     bool return_value) const {
  ScatterRequest request;
  request.set_name(name);
  request.set_op(UpdateKindToWire(op));
  TensorToProto(std::move(indices), request.mutable_indices());
  TensorToProto(std::move(updates), request.mutable_updates());
  request.set_return_value(return_value);
  SetNewRequestId(request.mutable_request_id(), credentials_key_);
  request.set_shard_incarnation(info_.incarnation);
  return request;
}

CountUpToRequest ShardClient::Impl::MakeCountUpToRequest(const std::string& name,
                                                         int64_t limit) const {
  CountUpToRequest request;
  request.set_name(name);
  request.set_limit(limit);
  SetNewRequestId(request.mutable_request_id(), credentials_key_);
  request.set_shard_incarnation(info_.incarnation);
  return request;
}

GatherRequest ShardClient::Impl::MakeGatherRequest(const std::string& name,
                                                   Tensor&& indices) const {
  GatherRequest request;
  request.set_name(name);
  TensorToProto(std::move(indices), request.mutable_indices());
  request.set_shard_incarnation(info_.incarnation);
  return request;
}

absl::Status ShardClient::Impl::AssignOp(UpdateKind op, const std::string& name,
                                         const Tensor& value, const AssignOptions& options,
                                         Tensor* new_value) {
  const int64_t bytes = WireBytes(value);
  // A streamed assign returns no value, and reading it back afterwards is
  // not atomic with the update: keep an add/sub whose result is wanted in
  // one message while it fits.
  const bool result_in_reply = new_value != nullptr && op != UpdateKind::kAssign &&
                               bytes + (64 << 10) <= options_.max_message_bytes;
  if (Streams(bytes) && !result_in_reply) {
    const AssignStreamHeader header =
        MakeStreamHeader(op, name, value, op == UpdateKind::kAssign ? options.validate_shape : true,
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
  if (OnDataStream()) {
    // The value is lent to the stream until the op is done (no copy).
    internal::BorrowedSlices lent;
    auto stream_op = NewStreamOp(name, /*async=*/false);
    AssignRequest* request = stream_op->fields.mutable_assign();
    *request = MakeAssignRequest(op, name, Tensor(), options, new_value != nullptr);
    stream_op->SetTensor(value, AssignRequest::kValueFieldNumber, request->mutable_value(), &lent);
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(RunOnStream(std::move(stream_op), &result));
    if (new_value != nullptr) {
      PSD_ASSIGN_OR_RETURN(*new_value, DecodeResult(result.mutable_assign()->mutable_value(), name));
    }
    return absl::OkStatus();
  }
  AssignRequest request = MakeAssignRequest(op, name, Tensor(value), options, new_value != nullptr);
  AssignResponse response;
  PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Assign, request, &response));
  if (new_value != nullptr) {
    PSD_ASSIGN_OR_RETURN(*new_value, DecodeResult(response.mutable_value(), name));
  }
  return absl::OkStatus();
}

absl::Status ShardClient::Impl::ScatterOp(UpdateKind op, const std::string& name,
                                          const Tensor& indices, const Tensor& updates,
                                          Tensor* new_value) {
  if (OnDataStream()) {
    internal::BorrowedSlices lent;
    auto stream_op = NewStreamOp(name, /*async=*/false);
    // Its reply carries the whole variable, of a size unknown here.
    stream_op->alone = new_value != nullptr;
    ScatterRequest* request = stream_op->fields.mutable_scatter();
    *request = MakeScatterRequest(op, name, Tensor(), Tensor(), new_value != nullptr);
    stream_op->SetTensor(indices, ScatterRequest::kIndicesFieldNumber, request->mutable_indices(),
                         &lent);
    stream_op->SetTensor(updates, ScatterRequest::kUpdatesFieldNumber, request->mutable_updates(),
                         &lent);
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(RunOnStream(std::move(stream_op), &result));
    if (new_value != nullptr) {
      PSD_ASSIGN_OR_RETURN(*new_value,
                           DecodeResult(result.mutable_scatter()->mutable_value(), name));
    }
    return absl::OkStatus();
  }
  ScatterRequest request =
      MakeScatterRequest(op, name, Tensor(indices), Tensor(updates), new_value != nullptr);
  ScatterResponse response;
  PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Scatter, request, &response));
  if (new_value != nullptr) {
    PSD_ASSIGN_OR_RETURN(*new_value, DecodeResult(response.mutable_value(), name));
  }
  return absl::OkStatus();
}

absl::StatusOr<VariableInfo> ShardClient::Impl::CreateVariable(CreateVariableRequest* request,
                                                               const CreateOptions& options) {
  SetCreateOptions(request, options);
  SetNewRequestId(request->mutable_request_id(), credentials_key_);
  request->set_shard_incarnation(info_.incarnation);
  CreateVariableResponse response;
  PSD_RETURN_IF_ERROR(Call(&Shard::Stub::CreateVariable, *request, &response));
  return VariableInfoFromProto(response.info());
}

void ShardClient::Impl::SetCreateOptions(CreateVariableRequest* request,
                                         const CreateOptions& options) {
  request->set_initialize(options.initialize);
  if (!options.full_shape.empty() || !options.offset.empty()) {
    request->mutable_slice()->mutable_full_shape()->Assign(options.full_shape.begin(),
                                                           options.full_shape.end());
    request->mutable_slice()->mutable_offset()->Assign(options.offset.begin(),
                                                       options.offset.end());
  }
}

}  // namespace client
}  // namespace psd
