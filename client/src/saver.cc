#include "psd/saver.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/internal/coordinator_client.h"
#include "psd/status.h"

namespace psd {
namespace client {

class Saver::Impl {
 public:
  Impl(SaverOptions options, std::unique_ptr<internal::CoordinatorClient> coordinator)
      : options_(std::move(options)), created_(absl::Now()), coordinator_(std::move(coordinator)) {}

  // A save or restore: the options' timeout instead of the default's.
  template <typename Req, typename Resp>
  absl::Status LongCall(internal::CoordinatorClient::Method<Req, Resp> method, const Req& req,
                        Resp* resp) {
    internal::CallOptions call = coordinator_->options().call;
    call.timeout = options_.timeout;
    return coordinator_->Call(method, req, resp, call);
  }

  const SaverOptions options_;
  // When the Saver was built: keep_checkpoint_every_n_hours counts from here.
  const absl::Time created_;
  const std::unique_ptr<internal::CoordinatorClient> coordinator_;
  absl::Mutex mu_;
  std::string last_dir_ ABSL_GUARDED_BY(mu_);
  // A save or a SetLastCheckpoints* put checkpoints in last_dir_'s
  // retention list: a later SetLastCheckpoints* replaces that list too.
  bool fed_dir_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

// The directory of a checkpoint prefix, as the coordinator keys retention.
std::string DirOf(const std::string& prefix) {
  const size_t slash = prefix.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : prefix.substr(0, slash);
}

}  // namespace

Saver::Saver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Saver::~Saver() = default;

absl::StatusOr<std::unique_ptr<Saver>> Saver::Create(const std::string& coordinator_address,
                                                     const SaverOptions& options) {
  if (coordinator_address.empty()) {
    return absl::InvalidArgumentError("Saver: no coordinator address");
  }
  internal::CoordinatorClientOptions coordinator;
  coordinator.security = options.security;
  coordinator.call.timeout = absl::Seconds(30);  // the small calls; saves take options.timeout
  coordinator.call.retry_budget = options.retry_budget;
  PSD_ASSIGN_OR_RETURN(std::unique_ptr<internal::CoordinatorClient> client,
                       internal::CoordinatorClient::Create(coordinator_address, coordinator));
  return std::unique_ptr<Saver>(new Saver(std::make_unique<Impl>(options, std::move(client))));
}

const SaverOptions& Saver::options() const { return impl_->options_; }

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
  req.set_progress_id(o.progress_id);
  SaveCheckpointResponse resp;
  PSD_RETURN_IF_ERROR(impl_->LongCall(&Coordinator::Stub::Save, req, &resp));
  {
    absl::MutexLock lock(&impl_->mu_);
    impl_->last_dir_ = DirOf(resp.prefix());
    impl_->fed_dir_ = true;
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

absl::Status Saver::Restore(const std::string& prefix, const RestoreOptions& options,
                            RestoreDetails* details) {
  RestoreCheckpointRequest req;
  req.set_prefix(prefix);
  const bool own = !options.variables.empty() || !options.name_map.empty();
  const auto& variables = own ? options.variables : impl_->options_.variables;
  const auto& name_map = own ? options.name_map : impl_->options_.name_map;
  for (const auto& v : variables) req.add_variables(v);
  for (const auto& [from, to] : name_map) (*req.mutable_name_map())[from] = to;
  req.set_latest_filename(impl_->options_.latest_filename);
  req.set_progress_id(impl_->options_.progress_id);
  req.set_reshape(options.reshape);
  RestoreCheckpointResponse resp;
  PSD_RETURN_IF_ERROR(impl_->LongCall(&Coordinator::Stub::Restore, req, &resp));
  if (details != nullptr) {
    details->prefix = resp.prefix();
    details->restored.assign(resp.restored().begin(), resp.restored().end());
    details->bytes = resp.bytes();
    details->seconds = resp.seconds();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Saver::LastCheckpoints() {
  ListCheckpointsRequest req;
  {
    absl::MutexLock lock(&impl_->mu_);
    req.set_dir(impl_->last_dir_);
  }
  req.set_latest_filename(impl_->options_.latest_filename);
  ListCheckpointsResponse resp;
  PSD_RETURN_IF_ERROR(impl_->coordinator_->Call(&Coordinator::Stub::ListCheckpoints, req, &resp));
  std::vector<std::string> out;
  for (const auto& c : resp.checkpoints()) {
    if (c.managed()) out.push_back(c.prefix());
  }
  return out;
}

absl::Status Saver::UpdateCheckpointState(
    const std::string& dir, const std::string& model_checkpoint_path,
    const std::vector<std::string>& all_model_checkpoint_paths) {
  UpdateCheckpointStateRequest req;
  req.set_dir(dir);
  req.set_model_checkpoint_path(model_checkpoint_path);
  for (const std::string& p : all_model_checkpoint_paths) req.add_all_model_checkpoint_paths(p);
  req.set_latest_filename(impl_->options_.latest_filename);
  UpdateCheckpointStateResponse resp;
  return impl_->coordinator_->Call(&Coordinator::Stub::UpdateCheckpointState, req, &resp);
}

absl::Status Saver::SetLastCheckpointsWithTime(
    const std::vector<std::pair<std::string, double>>& checkpoints,
    const std::vector<std::string>& also_dirs) {
  SetLastCheckpointsRequest req;
  for (const auto& [path, time] : checkpoints) {
    CheckpointWithTime* c = req.add_checkpoints();
    c->set_path(path);
    c->set_time(time);
  }
  {
    absl::MutexLock lock(&impl_->mu_);
    if (impl_->fed_dir_) req.add_dirs(impl_->last_dir_);
  }
  for (const std::string& d : also_dirs) req.add_dirs(d);
  if (req.checkpoints().empty() && req.dirs().empty()) {
    // Nothing saved, nothing given: this Saver has no list to replace.
    return absl::OkStatus();
  }
  const SaverOptions& o = impl_->options_;
  req.set_latest_filename(o.latest_filename);
  req.set_own_policy(o.max_to_keep.has_value() || o.keep_checkpoint_every_n_hours.has_value());
  SetLastCheckpointsResponse resp;
  PSD_RETURN_IF_ERROR(
      impl_->coordinator_->Call(&Coordinator::Stub::SetLastCheckpoints, req, &resp));
  if (!checkpoints.empty()) {
    absl::MutexLock lock(&impl_->mu_);
    impl_->last_dir_ = DirOf(checkpoints.back().first);
    impl_->fed_dir_ = true;
  }
  return absl::OkStatus();
}

absl::Status Saver::SetLastCheckpoints(const std::vector<std::string>& paths,
                                       const std::vector<std::string>& also_dirs) {
  std::vector<std::pair<std::string, double>> checkpoints;
  for (const std::string& p : paths) {
    checkpoints.emplace_back(p, std::numeric_limits<double>::infinity());
  }
  return SetLastCheckpointsWithTime(checkpoints, also_dirs);
}

absl::StatusOr<std::vector<CheckpointInfo>> Saver::ListCheckpoints(const std::string& dir) {
  ListCheckpointsRequest req;
  req.set_dir(dir);
  req.set_latest_filename(impl_->options_.latest_filename);
  ListCheckpointsResponse resp;
  PSD_RETURN_IF_ERROR(impl_->coordinator_->Call(&Coordinator::Stub::ListCheckpoints, req, &resp));
  return std::vector<CheckpointInfo>(resp.checkpoints().begin(), resp.checkpoints().end());
}

absl::StatusOr<std::optional<std::string>> Saver::LatestCheckpoint(const std::string& dir) {
  LatestCheckpointRequest req;
  req.set_dir(dir);
  req.set_latest_filename(impl_->options_.latest_filename);
  LatestCheckpointResponse resp;
  PSD_RETURN_IF_ERROR(impl_->coordinator_->Call(&Coordinator::Stub::LatestCheckpoint, req, &resp));
  if (resp.prefix().empty()) return std::optional<std::string>();
  return std::optional<std::string>(resp.prefix());
}

absl::StatusOr<std::optional<CheckpointStateInfo>> Saver::GetCheckpointState(
    const std::string& dir) {
  GetCheckpointStateRequest req;
  req.set_dir(dir);
  req.set_latest_filename(impl_->options_.latest_filename);
  GetCheckpointStateResponse resp;
  PSD_RETURN_IF_ERROR(
      impl_->coordinator_->Call(&Coordinator::Stub::GetCheckpointState, req, &resp));
  if (!resp.found()) return std::optional<CheckpointStateInfo>();
  CheckpointStateInfo info;
  info.model_checkpoint_path = resp.model_checkpoint_path();
  info.all_model_checkpoint_paths.assign(resp.all_model_checkpoint_paths().begin(),
                                         resp.all_model_checkpoint_paths().end());
  return std::optional<CheckpointStateInfo>(std::move(info));
}

}  // namespace client
}  // namespace psd
