#include "psd/nccl_group.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/grpcpp.h"
#include "nccl/nccl_comm.h"
#include "psd/dtype.h"
#include "psd/grpc_status.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/shard.grpc.pb.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {
namespace client {

class NcclGroup::Impl {
 public:
  Impl(NcclGroupOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)), stub_(Shard::NewStub(channel)) {}

  ~Impl() {
    // Closing our side ends the group on the shard for every member; the
    // communicator goes after, so no peer waits on this rank meanwhile.
    CloseStream();
    comm_.reset();
  }

  absl::Status Join(const std::string& address) {
    stream_ = stub_->Nccl(&context_);
    NcclRequest request;
    NcclJoin* join = request.mutable_join();
    join->set_group(options_.group);
    for (const std::string& v : options_.variables) join->add_variables(v);
    join->set_num_trainers(options_.num_trainers);
    join->set_shard_incarnation(options_.shard_incarnation);
    NcclReply reply;
    PSD_RETURN_IF_ERROR(Exchange(&request, &reply));
    if (!reply.has_joined()) return Broken("the shard did not answer the join");
    const NcclJoined& joined = reply.joined();
    rank_ = joined.rank();
    size_ = joined.size();
    device_ = joined.device();
    for (const NcclVariable& v : joined.variables()) {
      NcclVariableInfo info;
      info.name = v.name();
      info.dtype = v.dtype();
      PSD_ASSIGN_OR_RETURN(info.shape, ShapeFromProto(v.shape(), v.name()));
      info.bytes = static_cast<size_t>(info.shape.num_elements()) * DataTypeSize(info.dtype);
      variables_.push_back(std::move(info));
    }
    auto comm = NcclCommInit(options_.device, joined.unique_id(), size_, rank_,
                             absl::Now() + options_.join_timeout, nullptr);
    if (!comm.ok()) {
      return Broken(absl::StrCat("joining NCCL group '", options_.group, "' on ", address,
                                 " as rank ", rank_, " of ", size_, ": ",
                                 comm.status().message()),
                    comm.status().code());
    }
    comm_ = std::move(comm).value();
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Run(NcclOp op, const std::string& variable, void* buffer,
                               size_t bytes) {
    if (!broken_.ok()) return broken_;
    const char* what = op == NCCL_BROADCAST ? "broadcast" : "reduce_add";
    const NcclVariableInfo* info = Find(variable);
    if (info == nullptr) {
      std::vector<std::string> names;
      for (const auto& v : variables_) names.push_back(v.name);
      return absl::InvalidArgumentError(absl::StrCat(what, ": variable '", variable,
                                                     "' is not one of NCCL group '",
                                                     options_.group, "''s variables [",
                                                     absl::StrJoin(names, ", "), "]"));
    }
    if (bytes != info->bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": variable '", variable, "' is ", DataTypeName(info->dtype),
          info->shape.ToString(), " (", info->bytes, " bytes); the buffer has ", bytes));
    }
    if (op == NCCL_REDUCE_ADD && !NcclCanSum(info->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": variable '", variable,
                                                     "' has dtype ", DataTypeName(info->dtype),
                                                     ", which NCCL cannot sum"));
    }
    NcclRequest request;
    NcclCollective* collective = request.mutable_collective();
    collective->set_op(op);
    collective->set_variable(variable);
    collective->set_dtype(info->dtype);
    ShapeToProto(info->shape, collective->mutable_shape());
    NcclReply reply;
    PSD_RETURN_IF_ERROR(Exchange(&request, &reply));
    if (!reply.has_ready()) return Broken("the shard skipped a collective's ready");
    if (reply.ready().code() != 0) {
      // Nothing runs: the group goes on.
      return absl::Status(static_cast<absl::StatusCode>(reply.ready().code()),
                          reply.ready().message());
    }
    const absl::Time deadline = absl::Now() + options_.collective_timeout;
    const absl::Status status =
        op == NCCL_BROADCAST
            ? comm_->Broadcast(buffer, bytes, deadline)
            : comm_->ReduceSum(buffer, info->shape.num_elements(), info->dtype, deadline);
    if (!status.ok()) return Broken(absl::StrCat(what, " of '", variable, "': ",
                                                 status.message()), status.code());
    if (!stream_->Read(&reply)) return Ended();
    if (!reply.has_done()) return Broken("the shard skipped a collective's done");
    if (reply.done().code() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(reply.done().code()),
                          reply.done().message());
    }
    return reply.done().version();
  }

  const NcclGroupOptions options_;
  int rank_ = 0;
  int size_ = 0;
  std::string device_;
  std::vector<NcclVariableInfo> variables_;

 private:
  const NcclVariableInfo* Find(const std::string& name) const {
    for (const auto& v : variables_) {
      if (v.name == name) return &v;
    }
    return nullptr;
  }

  // Writes `request` and reads the next reply.
  absl::Status Exchange(NcclRequest* request, NcclReply* reply) {
    if (!stream_->Write(*request) || !stream_->Read(reply)) return Ended();
    return absl::OkStatus();
  }

  // The stream ended: the shard's status says why (its group ended).
  absl::Status Ended() {
    absl::Status status = FromGrpcStatus(stream_->Finish());
    stream_.reset();
    if (status.ok()) status = absl::UnavailableError("the shard closed the NCCL stream");
    broken_ = status;
    return status;
  }

  // This member can no longer take part: it leaves (ending the group for
  // everyone, who would otherwise wait for it) and later calls fail with
  // `message`.
  absl::Status Broken(const std::string& message,
                      absl::StatusCode code = absl::StatusCode::kInternal) {
    CloseStream();
    broken_ = absl::Status(code, absl::StrCat("NCCL group '", options_.group, "': ", message));
    return broken_;
  }

  void CloseStream() {
    if (stream_ == nullptr) return;
    stream_->WritesDone();
    context_.TryCancel();
    stream_->Finish();
    stream_.reset();
  }

  std::unique_ptr<Shard::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<NcclRequest, NcclReply>> stream_;
  std::unique_ptr<NcclComm> comm_;
  absl::Status broken_;
};

absl::StatusOr<std::unique_ptr<NcclGroup>> NcclGroup::Join(const std::string& address,
                                                           const NcclGroupOptions& options) {
  // Without NCCL here this trainer could join but never take part.
  PSD_RETURN_IF_ERROR(NcclSupport());
  if (options.num_trainers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("NcclGroupOptions: num_trainers is ", options.num_trainers, ", not >= 1"));
  }
  auto credentials = psd::internal::MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  auto impl = std::make_unique<Impl>(options, grpc::CreateChannel(address, *credentials));
  PSD_RETURN_IF_ERROR(impl->Join(address));
  return std::unique_ptr<NcclGroup>(new NcclGroup(std::move(impl)));
}

NcclGroup::NcclGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclGroup::~NcclGroup() = default;

int NcclGroup::rank() const { return impl_->rank_; }
int NcclGroup::size() const { return impl_->size_; }
const std::string& NcclGroup::shard_device() const { return impl_->device_; }
const std::vector<NcclVariableInfo>& NcclGroup::variables() const { return impl_->variables_; }

absl::StatusOr<uint64_t> NcclGroup::Broadcast(const std::string& variable, void* device_buffer,
                                              size_t bytes) {
  return impl_->Run(NCCL_BROADCAST, variable, device_buffer, bytes);
}

absl::StatusOr<uint64_t> NcclGroup::ReduceAdd(const std::string& variable,
                                              const void* device_buffer, size_t bytes) {
  // A non-root rank's buffer is only read by the reduce.
  return impl_->Run(NCCL_REDUCE_ADD, variable, const_cast<void*>(device_buffer), bytes);
}

}  // namespace client
}  // namespace psd
