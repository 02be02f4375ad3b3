#include "psd/saver.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/internal/grpc_credentials.h"

namespace psd {
namespace client {

class Saver::Impl {
 public:
  Impl(std::string address, SaverOptions options,
       std::shared_ptr<grpc::ChannelCredentials> credentials)
      : address_(std::move(address)), options_(std::move(options)), created_(absl::Now()) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    stub_ = Coordinator::NewStub(grpc::CreateCustomChannel(address_, credentials, args));
  }

  template <typename Req, typename Resp>
  absl::Status Call(grpc::Status (Coordinator::Stub::*method)(grpc::ClientContext*, const Req&,
                                                              Resp*),
                    const Req& req, Resp* resp, absl::Duration timeout) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    return FromGrpcStatus(((*stub_).*method)(&ctx, req, resp));
  }

  const std::string address_;
  const SaverOptions options_;
  // When the Saver was built: keep_checkpoint_every_n_hours counts from here.
  const absl::Time created_;
  std::unique_ptr<Coordinator::Stub> stub_;
  absl::Mutex mu_;
  std::string last_dir_ ABSL_GUARDED_BY(mu_);
};

Saver::Saver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Saver::~Saver() = default;

absl::StatusOr<std::unique_ptr<Saver>> Saver::Create(const std::string& coordinator_address,
                                                     const SaverOptions& options) {
  if (coordinator_address.empty()) {
    return absl::InvalidArgumentError("Saver: no coordinator address");
  }
  auto credentials = psd::internal::MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  return std::unique_ptr<Saver>(
      new Saver(std::make_unique<Impl>(coordinator_address, options, *credentials)));
}

absl::StatusOr<std::string> Saver::Save(const std::string& prefix,
                                        std::optional<int64_t> global_step,
                                        SaveDetails* details) {
  SaveCheckpointRequest req;
  req.set_prefix(prefix);
  if (global_step.has_value()) req.set_global_step(*global_step);
  const SaverOptions& o = impl_->options_;
  req.set_latest_filename(o.latest_filename);
  if (o.max_to_keep.has_value()) req.set_max_to_keep(*o.max_to_keep);
  if (o.keep_checkpoint_every_n_hours.has_value()) {
    req.set_keep_checkpoint_every_n_hours(*o.keep_checkpoint_every_n_hours);
  }
  req.set_saver_age_seconds(
      std::max(0.0, absl::ToDoubleSeconds(absl::Now() - impl_->created_)));
  for (const auto& v : o.variables) req.add_variables(v);
  for (const auto& [ckpt_name, var_name] : o.name_map) (*req.mutable_name_map())[ckpt_name] = var_name;
  SaveCheckpointResponse resp;
  absl::Status s = impl_->Call(&Coordinator::Stub::Save, req, &resp, impl_->options_.timeout);
  if (!s.ok()) return s;
  {
    absl::MutexLock lock(&impl_->mu_);
    const size_t slash = resp.prefix().rfind('/');
    impl_->last_dir_ = slash == std::string::npos ? "." : resp.prefix().substr(0, slash);
  }
  if (details != nullptr) {
    details->prefix = resp.prefix();
    details->bytes = resp.bytes();
    details->fence_pause = absl::Microseconds(resp.fence_micros());
    details->copied_bytes = resp.copied_bytes();
    details->seconds = resp.seconds();
    details->deleted.assign(resp.deleted().begin(), resp.deleted().end());
  }
  return resp.prefix();
}

absl::Status Saver::Restore(const std::string& prefix, const RestoreOptions& options) {
  RestoreCheckpointRequest req;
  req.set_prefix(prefix);
  const bool own = !options.variables.empty() || !options.name_map.empty();
  const auto& variables = own ? options.variables : impl_->options_.variables;
  const auto& name_map = own ? options.name_map : impl_->options_.name_map;
  for (const auto& v : variables) req.add_variables(v);
  for (const auto& [from, to] : name_map) (*req.mutable_name_map())[from] = to;
  req.set_latest_filename(impl_->options_.latest_filename);
  RestoreCheckpointResponse resp;
  return impl_->Call(&Coordinator::Stub::Restore, req, &resp, impl_->options_.timeout);
}

absl::StatusOr<std::vector<std::string>> Saver::LastCheckpoints() {
  ListCheckpointsRequest req;
  {
    absl::MutexLock lock(&impl_->mu_);
    req.set_dir(impl_->last_dir_);
  }
  req.set_latest_filename(impl_->options_.latest_filename);
  ListCheckpointsResponse resp;
  absl::Status s =
      impl_->Call(&Coordinator::Stub::ListCheckpoints, req, &resp, absl::Seconds(30));
  if (!s.ok()) return s;
  std::vector<std::string> out;
  for (const auto& c : resp.checkpoints()) {
    if (c.managed()) out.push_back(c.prefix());
  }
  return out;
}

absl::StatusOr<std::optional<std::string>> Saver::LatestCheckpoint(const std::string& dir) {
  LatestCheckpointRequest req;
  req.set_dir(dir);
  req.set_latest_filename(impl_->options_.latest_filename);
  LatestCheckpointResponse resp;
  absl::Status s =
      impl_->Call(&Coordinator::Stub::LatestCheckpoint, req, &resp, absl::Seconds(30));
  if (!s.ok()) return s;
  if (resp.prefix().empty()) return std::optional<std::string>();
  return std::optional<std::string>(resp.prefix());
}

absl::StatusOr<std::optional<CheckpointStateInfo>> Saver::GetCheckpointState(
    const std::string& dir) {
  GetCheckpointStateRequest req;
  req.set_dir(dir);
  req.set_latest_filename(impl_->options_.latest_filename);
  GetCheckpointStateResponse resp;
  absl::Status s =
      impl_->Call(&Coordinator::Stub::GetCheckpointState, req, &resp, absl::Seconds(30));
  if (!s.ok()) return s;
  if (!resp.found()) return std::optional<CheckpointStateInfo>();
  CheckpointStateInfo info;
  info.model_checkpoint_path = resp.model_checkpoint_path();
  info.all_model_checkpoint_paths.assign(resp.all_model_checkpoint_paths().begin(),
                                         resp.all_model_checkpoint_paths().end());
  return std::optional<CheckpointStateInfo>(std::move(info));
}

}  // namespace client
}  // namespace psd
