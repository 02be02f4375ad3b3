#include "psd/client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {
namespace client {

namespace {

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

}  // namespace

class ShardClient::Impl {
 public:
  Impl(std::string address, const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
      : address_(std::move(address)),
        options_(options),
        channel_(std::move(channel)),
        stub_(Shard::NewStub(channel_)) {}

  // One unary RPC with the client's deadline; the shard's status unchanged.
  template <typename Req, typename Resp>
  absl::Status Call(grpc::Status (Shard::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& request, Resp* response, bool wait_for_ready = false) {
    grpc::ClientContext context;
    if (options_.timeout != absl::InfiniteDuration()) {
      context.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
    }
    context.set_wait_for_ready(wait_for_ready);
    absl::Status status = FromGrpcStatus((stub_.get()->*method)(&context, request, response));
    if (status.code() == absl::StatusCode::kCancelled) {
      // This client never cancels a call, so CANCELLED comes from the
      // server's gRPC: a shard that is shutting down cancels the calls that
      // reach it after its drain began, without running them. For the
      // caller that is the shard going away: UNAVAILABLE, like any call
      // that finds the shard gone.
      return absl::UnavailableError(absl::StrCat(
          "shard ", address_, " cancelled the call (shutting down?): ", status.message()));
    }
    return status;
  }

  // Decodes a tensor the shard sent. A malformed one is the shard's fault,
  // so it is INTERNAL rather than the INVALID_ARGUMENT of TensorFromProto.
  absl::StatusOr<Tensor> DecodeResult(const TensorProto& proto, const std::string& name) {
    auto tensor = TensorFromProto(proto, absl::StrCat("value of variable '", name, "'"));
    if (!tensor.ok()) {
      return absl::InternalError(
          absl::StrCat("shard ", address_, " sent ", tensor.status().message()));
    }
    return tensor;
  }

  absl::Status AssignOp(UpdateOp op, const std::string& name, const Tensor& value,
                        const AssignOptions& options, Tensor* new_value) {
    AssignRequest request;
    request.set_name(name);
    request.set_op(op);
    TensorToProto(value, request.mutable_value());
    request.set_validate_shape(options.validate_shape);
    request.set_use_locking(options.use_locking);
    request.set_return_value(new_value != nullptr);
    AssignResponse response;
    PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Assign, request, &response));
    if (new_value != nullptr) {
      PSD_ASSIGN_OR_RETURN(*new_value, DecodeResult(response.value(), name));
    }
    return absl::OkStatus();
  }

  absl::Status ScatterOp(UpdateOp op, const std::string& name, const Tensor& indices,
                         const Tensor& updates, Tensor* new_value) {
    ScatterRequest request;
    request.set_name(name);
    request.set_op(op);
    TensorToProto(indices, request.mutable_indices());
    TensorToProto(updates, request.mutable_updates());
    request.set_return_value(new_value != nullptr);
    ScatterResponse response;
    PSD_RETURN_IF_ERROR(Call(&Shard::Stub::Scatter, request, &response));
    if (new_value != nullptr) {
      PSD_ASSIGN_OR_RETURN(*new_value, DecodeResult(response.value(), name));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<VariableInfo> CreateVariable(CreateVariableRequest* request,
                                              const CreateOptions& options) {
    request->set_initialize(options.initialize);
    if (!options.full_shape.empty() || !options.offset.empty()) {
      request->mutable_slice()->mutable_full_shape()->Assign(options.full_shape.begin(),
                                                             options.full_shape.end());
      request->mutable_slice()->mutable_offset()->Assign(options.offset.begin(),
                                                         options.offset.end());
    }
    CreateVariableResponse response;
    PSD_RETURN_IF_ERROR(Call(&Shard::Stub::CreateVariable, *request, &response));
    return VariableInfoFromProto(response.info());
  }

  const std::string address_;
  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<Shard::Stub> stub_;  // thread-safe
  ShardInfo info_;                           // set once in Connect
};

absl::StatusOr<std::unique_ptr<ShardClient>> ShardClient::Connect(const std::string& address,
                                                                  const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  // TLS arrives with the security issue; until then loopback or a trusted
  // network only.
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  auto impl = std::make_unique<Impl>(address, options, std::move(channel));

  GetShardInfoRequest request;
  request.set_protocol_version(SHARD_PROTOCOL_VERSION);
  GetShardInfoResponse response;
  // Waiting for the shard to come up lets a trainer start beside its shards.
  absl::Status status =
      impl->Call(&Shard::Stub::GetShardInfo, request, &response, /*wait_for_ready=*/true);
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

absl::StatusOr<Tensor> ShardClient::Read(const std::string& name) {
  ReadRequest request;
  request.set_name(name);
  ReadResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::Read, request, &response));
  return impl_->DecodeResult(response.value(), name);
}

absl::StatusOr<Tensor> ShardClient::Gather(const std::string& name, const Tensor& indices) {
  GatherRequest request;
  request.set_name(name);
  TensorToProto(indices, request.mutable_indices());
  GatherResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::Gather, request, &response));
  return impl_->DecodeResult(response.value(), name);
}

absl::Status ShardClient::Assign(const std::string& name, const Tensor& value,
                                 const AssignOptions& options, Tensor* new_value) {
  return impl_->AssignOp(UPDATE_ASSIGN, name, value, options, new_value);
}

absl::Status ShardClient::AssignAdd(const std::string& name, const Tensor& value,
                                    const AssignOptions& options, Tensor* new_value) {
  return impl_->AssignOp(UPDATE_ADD, name, value, options, new_value);
}

absl::Status ShardClient::AssignSub(const std::string& name, const Tensor& value,
                                    const AssignOptions& options, Tensor* new_value) {
  return impl_->AssignOp(UPDATE_SUB, name, value, options, new_value);
}

absl::Status ShardClient::ScatterUpdate(const std::string& name, const Tensor& indices,
                                        const Tensor& updates, Tensor* new_value) {
  return impl_->ScatterOp(UPDATE_ASSIGN, name, indices, updates, new_value);
}

absl::Status ShardClient::ScatterAdd(const std::string& name, const Tensor& indices,
                                     const Tensor& updates, Tensor* new_value) {
  return impl_->ScatterOp(UPDATE_ADD, name, indices, updates, new_value);
}

absl::Status ShardClient::ScatterSub(const std::string& name, const Tensor& indices,
                                     const Tensor& updates, Tensor* new_value) {
  return impl_->ScatterOp(UPDATE_SUB, name, indices, updates, new_value);
}

absl::StatusOr<int64_t> ShardClient::CountUpTo(const std::string& name, int64_t limit) {
  CountUpToRequest request;
  request.set_name(name);
  request.set_limit(limit);
  CountUpToResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::CountUpTo, request, &response));
  return response.old_value();
}

}  // namespace client
}  // namespace psd
