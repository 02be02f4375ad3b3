#include "shard/nccl_plane.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "nccl/nccl_comm.h"
#include "psd/dtype.h"
#include "psd/status.h"
#include "psd/tensor.h"
#include "spdlog/spdlog.h"

namespace psd {

namespace {

constexpr int kMaxTrainers = 4096;
constexpr size_t kMaxGroupName = 256;

std::string Quoted(const std::string& name) { return absl::StrCat("variable '", name, "'"); }

// "float32[10,4]".
std::string Describe(DataType dtype, const TensorShapeProto& shape) {
  return absl::StrCat(DataTypeName(dtype), "[", absl::StrJoin(shape.dims(), ","), "]");
}

const char* OpName(NcclOp op) {
  switch (op) {
    case NCCL_BROADCAST: return "broadcast";
    case NCCL_REDUCE_ADD: return "reduce_add";
    default: return "no op";
  }
}

bool SameRequest(const NcclCollective& a, const NcclCollective& b) {
  return a.op() == b.op() && a.variable() == b.variable() && a.dtype() == b.dtype() &&
         std::equal(a.shape().dims().begin(), a.shape().dims().end(), b.shape().dims().begin(),
                    b.shape().dims().end());
}

std::string DescribeRequest(const NcclCollective& r) {
  return absl::StrCat(OpName(r.op()), " of ", Quoted(r.variable()), " as ",
                      Describe(r.dtype(), r.shape()));
}

// The variable as the store holds it now (NOT_FOUND if it does not).
absl::StatusOr<VariableInfo> FindVariable(const VariableStore& store, const std::string& name) {
  for (VariableInfo& info : store.List(name)) {
    if (info.name() == name) return std::move(info);
  }
  return absl::NotFoundError(absl::StrCat(Quoted(name), " does not exist on this shard"));
}

// CUDA ordinal of a "gpu:N" device name, or -1.
int GpuOrdinal(const std::string& device) {
  absl::string_view rest = device;
  int ordinal = -1;
  if (!absl::ConsumePrefix(&rest, "gpu:") || !absl::SimpleAtoi(rest, &ordinal)) return -1;
  return ordinal;
}

NcclCollectiveStatus MakeStatus(uint64_t seq, const absl::Status& status, uint64_t version) {
  NcclCollectiveStatus out;
  out.set_seq(seq);
  out.set_code(static_cast<int32_t>(status.code()));
  out.set_message(std::string(status.message()));
  out.set_version(version);
  return out;
}

}  // namespace

class NcclPlane::Group {
 public:
  Group(std::string name, int num_trainers, std::vector<NcclVariable> variables,
        std::string unique_id)
      : name(std::move(name)),
        num_trainers(num_trainers),
        variables(std::move(variables)),
        unique_id(std::move(unique_id)) {}

  const std::string name;
  const int num_trainers;
  const std::vector<NcclVariable> variables;  // as at the first join
  const std::string unique_id;
  // Set when the group ends, so a blocked NCCL wait gives up.
  std::atomic<bool> abort{false};
  // True once the thread has returned (it may then be joined at once).
  std::atomic<bool> finished{false};
  std::thread thread;  // started by the creating Join, joined by Reap/Shutdown

  absl::Mutex mu;
  // Members by rank - 1, in order of joining; empty once the group ended.
  std::vector<std::shared_ptr<Member>> members ABSL_GUARDED_BY(mu);
  // Requests of collectives not yet run: seq -> one per rank - 1 (op
  // NCCL_OP_UNSPECIFIED where that trainer has not asked yet), and how many
  // have asked.
  struct Pending {
    std::vector<NcclCollective> requests;
    int arrived = 0;
  };
  std::map<uint64_t, Pending> pending ABSL_GUARDED_BY(mu);
  // Why the group ended; OK while it runs.
  absl::Status ended ABSL_GUARDED_BY(mu);
  // The shard's communicator while the group's thread runs collectives, so
  // that ending the group can abort a collective in progress.
  NcclComm* comm ABSL_GUARDED_BY(mu) = nullptr;

  bool HasVariable(const std::string& variable) const {
    for (const NcclVariable& v : variables) {
      if (v.name() == variable) return true;
    }
    return false;
  }
  std::vector<std::shared_ptr<NcclPeer>> Peers() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
};

class NcclPlane::Member {
 public:
  Member(std::shared_ptr<Group> group, int rank, std::shared_ptr<NcclPeer> peer)
      : group(std::move(group)), rank(rank), peer(std::move(peer)) {}
  const std::shared_ptr<Group> group;
  const int rank;  // 1..num_trainers
  const std::shared_ptr<NcclPeer> peer;
  uint64_t next_seq ABSL_GUARDED_BY(group->mu) = 0;
};

std::vector<std::shared_ptr<NcclPeer>> NcclPlane::Group::Peers() {
  std::vector<std::shared_ptr<NcclPeer>> peers;
  for (const auto& member : members) peers.push_back(member->peer);
  return peers;
}

NcclPlane::NcclPlane(VariableStore* store, const NcclPlaneOptions& options)
    : store_(store),
      options_(options),
      comms_(options.comms != nullptr ? options.comms : DefaultNcclCommFactory()) {}

NcclPlane::~NcclPlane() { Shutdown(); }

absl::Status NcclPlane::Available() const {
  const std::string device = store_->device().name();
  if (GpuOrdinal(device) < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard ", options_.shard_id, " keeps its variables on ", device,
        ": the NCCL data plane needs a GPU shard (--device gpu:N) started with --nccl-plane"));
  }
  if (!options_.enabled) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the NCCL data plane is off on shard ", options_.shard_id, " (", device,
        "): start the shard with --nccl-plane to enable it (trusted networks only)"));
  }
  PSD_RETURN_IF_ERROR(comms_->Support());
  if (!store_->device().healthy()) {
    return absl::UnavailableError(absl::StrCat("shard ", options_.shard_id, ": ", device,
                                               " failed: ", store_->device().health_detail()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<NcclPlane::Member>> NcclPlane::Join(const NcclJoin& join,
                                                                   std::shared_ptr<NcclPeer> peer,
                                                                   NcclJoined* joined) {
  PSD_RETURN_IF_ERROR(Available());
  if (join.shard_incarnation() != 0 && join.shard_incarnation() != store_->incarnation()) {
    return absl::AbortedError(absl::StrFormat(
        "stale handle: the request was made for shard incarnation %016x, this shard is "
        "incarnation %016x (it restarted and lost its memory)",
        join.shard_incarnation(), store_->incarnation()));
  }
  const std::string& name = join.group();
  if (name.empty() || name.size() > kMaxGroupName) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NCCL group name must have 1 to ", kMaxGroupName, " bytes, not ", name.size()));
  }
  if (join.num_trainers() < 1 || join.num_trainers() > kMaxTrainers) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL group '", name, "': num_trainers is ",
                                                   join.num_trainers(), ", not in [1, ",
                                                   kMaxTrainers, "]"));
  }
  if (join.variables().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL group '", name, "' names no variables"));
  }
  std::vector<NcclVariable> variables;
  std::set<std::string> seen;
  for (const std::string& variable : join.variables()) {
    if (!seen.insert(variable).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL group '", name, "' names ", Quoted(variable), " twice"));
    }
    PSD_ASSIGN_OR_RETURN(VariableInfo info, FindVariable(*store_, variable));
    if (info.dtype() == DT_STRING) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NCCL group '", name, "': ", Quoted(variable),
          " is a string variable; NCCL moves only fixed-size dtypes"));
    }
    NcclVariable& out = variables.emplace_back();
    out.set_name(variable);
    out.set_dtype(info.dtype());
    *out.mutable_shape() = info.shape();
  }

  std::shared_ptr<Member> member;
  absl::MutexLock lock(&mu_);
  if (shut_down_) {
    return absl::UnavailableError(absl::StrCat("shard ", options_.shard_id, " is shutting down"));
  }
  ReapLocked();
  auto it = groups_.find(name);
  const bool created = it == groups_.end();
  if (created) {
    PSD_ASSIGN_OR_RETURN(std::string unique_id, comms_->NewUniqueId());
    auto group = std::make_shared<Group>(name, join.num_trainers(), variables,
                                         std::move(unique_id));
    it = groups_.emplace(name, group).first;
    spdlog::info("shard {}: NCCL group '{}' created for {} trainer(s) and {} variable(s)",
                 options_.shard_id, name, join.num_trainers(), variables.size());
  }
  Group& group = *it->second;
  std::vector<std::string> names;
  for (const NcclVariable& v : group.variables) names.push_back(v.name());
  if (group.num_trainers != join.num_trainers() ||
      !std::equal(names.begin(), names.end(), join.variables().begin(),
                  join.variables().end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NCCL group '", name, "' has ", group.num_trainers, " trainer(s) and variables [",
        absl::StrJoin(names, ", "), "]; this join asks for ", join.num_trainers(),
        " and [", absl::StrJoin(join.variables(), ", "), "]"));
  }
  {
    absl::MutexLock group_lock(&group.mu);
    if (static_cast<int>(group.members.size()) >= group.num_trainers) {
      return absl::FailedPreconditionError(absl::StrCat(
          "NCCL group '", name, "' already has all its ", group.num_trainers, " trainer(s)"));
    }
    const int rank = static_cast<int>(group.members.size()) + 1;
    member = std::make_shared<Member>(it->second, rank, std::move(peer));
    group.members.push_back(member);
  }
  // Started once its first member is in, so an early failure reaches it.
  if (created) {
    std::shared_ptr<Group> shared = it->second;
    group.thread = std::thread([this, shared] { RunGroup(shared); });
  }
  joined->set_unique_id(group.unique_id);
  joined->set_rank(member->rank);
  joined->set_size(group.num_trainers + 1);
  joined->set_device(store_->device().name());
  for (const NcclVariable& v : variables) *joined->add_variables() = v;
  return member;
}

absl::Status NcclPlane::Collective(Member* member, const NcclCollective& request) {
  Group& group = *member->group;
  absl::MutexLock lock(&group.mu);
  if (!group.ended.ok()) return group.ended;
  const uint64_t seq = member->next_seq++;
  Group::Pending& pending = group.pending[seq];
  if (pending.requests.empty()) pending.requests.resize(group.num_trainers);
  pending.requests[member->rank - 1] = request;
  ++pending.arrived;
  return absl::OkStatus();
}

void NcclPlane::Leave(Member* member, absl::Status why) {
  Fail(member->group, std::move(why));
}

void NcclPlane::Fail(const std::shared_ptr<Group>& group, absl::Status status) {
  std::vector<std::shared_ptr<NcclPeer>> peers;
  // An ended group lets go of its members: each member holds its group, so
  // a group that kept them would keep itself, its members and their peers
  // alive for ever (one leak per group). Released after the locks, last.
  std::vector<std::shared_ptr<Member>> members;
  {
    absl::MutexLock lock(&mu_);
    auto it = groups_.find(group->name);
    if (it != groups_.end() && it->second == group) {
      groups_.erase(it);
      ended_.push_back(group);
    }
    absl::MutexLock group_lock(&group->mu);
    if (!group->ended.ok()) return;
    group->ended = status;
    group->abort.store(true);
    if (group->comm != nullptr) group->comm->Abort();
    peers = group->Peers();
    members.swap(group->members);
  }
  spdlog::warn("shard {}: NCCL group '{}' ended: {}", options_.shard_id, group->name,
               status.ToString());
  for (const auto& peer : peers) peer->Close(status);
}

void NcclPlane::ReapLocked() {
  auto done = std::partition(ended_.begin(), ended_.end(),
                             [](const std::shared_ptr<Group>& g) { return !g->finished.load(); });
  for (auto it = done; it != ended_.end(); ++it) {
    if ((*it)->thread.joinable()) (*it)->thread.join();
  }
  ended_.erase(done, ended_.end());
}

void NcclPlane::Shutdown() {
  std::vector<std::shared_ptr<Group>> groups;
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    for (const auto& [name, group] : groups_) groups.push_back(group);
  }
  for (const auto& group : groups) {
    Fail(group, absl::UnavailableError(
                    absl::StrCat("shard ", options_.shard_id, " is shutting down")));
  }
  std::vector<std::shared_ptr<Group>> ended;
  {
    absl::MutexLock lock(&mu_);
    ended.swap(ended_);
  }
  for (const auto& group : ended) {
    if (group->thread.joinable()) group->thread.join();
  }
}

void NcclPlane::RunGroup(const std::shared_ptr<Group>& group) {
  const int ordinal = GpuOrdinal(store_->device().name());
  auto comm = comms_->Init(ordinal, group->unique_id, group->num_trainers + 1, /*rank=*/0,
                           absl::Now() + options_.join_timeout, &group->abort);
  if (!comm.ok()) {
    int joined = 0;
    {
      absl::MutexLock lock(&group->mu);
      joined = static_cast<int>(group->members.size());
    }
    Fail(group, absl::Status(comm.status().code(),
                             absl::StrCat("NCCL group '", group->name, "': ", joined, " of ",
                                          group->num_trainers, " trainer(s) joined; ",
                                          comm.status().message())));
    group->finished.store(true);
    return;
  }
  spdlog::info("shard {}: NCCL group '{}' is up ({} ranks)", options_.shard_id, group->name,
               group->num_trainers + 1);
  {
    absl::MutexLock lock(&group->mu);
    group->comm = comm->get();
    if (!group->ended.ok()) group->comm->Abort();  // ended while the communicator was built
  }
  for (uint64_t seq = 0;; ++seq) {
    std::vector<NcclCollective> requests;
    {
      absl::MutexLock lock(&group->mu);
      auto runnable = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(group->mu) {
        if (!group->ended.ok()) return true;
        auto it = group->pending.find(seq);
        return it != group->pending.end() && it->second.arrived == group->num_trainers;
      };
      group->mu.Await(absl::Condition(&runnable));
      if (!group->ended.ok()) break;
      requests = std::move(group->pending[seq].requests);
      group->pending.erase(seq);
    }
    if (!RunCollective(group, comm->get(), seq, requests)) break;
  }
  {
    absl::MutexLock lock(&group->mu);
    group->comm = nullptr;
  }
  comm->reset();
  group->finished.store(true);
}

bool NcclPlane::RunCollective(const std::shared_ptr<Group>& group, NcclComm* comm, uint64_t seq,
                              const std::vector<NcclCollective>& requests) {
  const NcclCollective& request = requests[0];
  absl::Status status;
  for (size_t r = 1; r < requests.size() && status.ok(); ++r) {
    if (!SameRequest(request, requests[r])) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "NCCL group '", group->name, "', collective ", seq, ": trainer rank 1 asked for ",
          DescribeRequest(request), ", trainer rank ", r + 1, " for ",
          DescribeRequest(requests[r])));
    }
  }
  if (status.ok() && request.op() != NCCL_BROADCAST && request.op() != NCCL_REDUCE_ADD) {
    status = absl::InvalidArgumentError(absl::StrCat("NCCL group '", group->name,
                                                     "', collective ", seq, ": unknown op ",
                                                     static_cast<int>(request.op())));
  }
  if (status.ok() && !group->HasVariable(request.variable())) {
    std::vector<std::string> names;
    for (const NcclVariable& v : group->variables) names.push_back(v.name());
    status = absl::InvalidArgumentError(
        absl::StrCat("NCCL group '", group->name, "': ", Quoted(request.variable()),
                     " is not one of its variables [", absl::StrJoin(names, ", "), "]"));
  }
  std::unique_ptr<DeviceBuffer> staged;
  uint64_t version = 0;
  if (status.ok()) {
    status = request.op() == NCCL_BROADCAST ? StageBroadcast(request, &staged, &version)
                                            : StageReduce(request, &staged);
  }
  auto send_all = [&](NcclReply reply) {
    std::vector<std::shared_ptr<NcclPeer>> peers;
    {
      absl::MutexLock lock(&group->mu);
      peers = group->Peers();
    }
    for (const auto& peer : peers) peer->Send(reply);
  };
  NcclReply ready;
  *ready.mutable_ready() = MakeStatus(seq, status, version);
  send_all(std::move(ready));
  if (!status.ok()) return true;  // nobody launches; the group goes on

  const absl::Time deadline = absl::Now() + options_.collective_timeout;
  const int64_t elements = staged->size() / std::max<size_t>(1, DataTypeSize(request.dtype()));
  status = request.op() == NCCL_BROADCAST
               ? comm->Broadcast(staged->data(), staged->size(), deadline)
               : comm->ReduceSum(staged->data(), elements, request.dtype(), deadline);
  if (!status.ok()) {
    Fail(group, absl::Status(status.code(), absl::StrCat("NCCL group '", group->name, "': ",
                                                         DescribeRequest(request), ": ",
                                                         status.message())));
    return false;
  }
  if (request.op() == NCCL_REDUCE_ADD) status = ApplySum(request, *staged, &version);
  NcclReply done;
  *done.mutable_done() = MakeStatus(seq, status, version);
  send_all(std::move(done));
  return true;
}

absl::Status NcclPlane::StageBroadcast(const NcclCollective& request,
                                       std::unique_ptr<DeviceBuffer>* staged,
                                       uint64_t* version) {
  // A streamed read's source is a consistent snapshot of the value, taken
  // without holding the variable's lock while it is copied.
  ReadStreamRequest read;
  read.set_name(request.variable());
  PSD_ASSIGN_OR_RETURN(auto source, store_->BeginReadStream(read));
  TensorChunk chunk;
  source->FillHeader(&chunk);
  if (chunk.dtype() != request.dtype() ||
      !std::equal(chunk.shape().dims().begin(), chunk.shape().dims().end(),
                  request.shape().dims().begin(), request.shape().dims().end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "broadcast: ", Quoted(request.variable()), " is ", Describe(chunk.dtype(), chunk.shape()),
        ", the trainers' buffers are ", Describe(request.dtype(), request.shape())));
  }
  *version = chunk.version();
  Device* device = store_->mutable_device();
  PSD_ASSIGN_OR_RETURN(*staged, device->Allocate(static_cast<size_t>(chunk.total_bytes())));
  while (true) {
    chunk.Clear();
    PSD_ASSIGN_OR_RETURN(bool more, source->Next(&chunk));
    if (!more) break;
    PSD_RETURN_IF_ERROR(device->CopyFromHost(chunk.content().data(), chunk.content().size(),
                                             staged->get(), static_cast<size_t>(chunk.offset())));
  }
  return absl::OkStatus();
}

absl::Status NcclPlane::StageReduce(const NcclCollective& request,
                                    std::unique_ptr<DeviceBuffer>* staged) {
  PSD_ASSIGN_OR_RETURN(VariableInfo info, FindVariable(*store_, request.variable()));
  if (!std::equal(info.shape().dims().begin(), info.shape().dims().end(),
                  request.shape().dims().begin(), request.shape().dims().end()) ||
      info.dtype() != request.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reduce_add: ", Quoted(request.variable()), " is ", Describe(info.dtype(), info.shape()),
        ", the trainers' gradients are ", Describe(request.dtype(), request.shape())));
  }
  if (!NcclCanSum(info.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat("reduce_add: ", Quoted(request.variable()),
                                                   " has dtype ", DataTypeName(info.dtype()),
                                                   ", which NCCL cannot sum"));
  }
  if (!info.initialized()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "reduce_add: ", Quoted(request.variable()), " is not initialized"));
  }
  const TensorShape shape(std::vector<int64_t>(info.shape().dims().begin(),
                                               info.shape().dims().end()));
  const int64_t n = shape.num_elements();
  Device* device = store_->mutable_device();
  PSD_ASSIGN_OR_RETURN(*staged, device->Allocate(static_cast<size_t>(n) *
                                                 DataTypeSize(info.dtype())));
  // The shard contributes zeros: the sum is the trainers' gradients alone,
  // added to the variable afterwards under its lock.
  const uint64_t zero = 0;
  return device->ApplyDense(info.dtype(), UpdateKind::kAssign, staged->get(), &zero, n,
                            /*src_is_scalar=*/true);
}

absl::Status NcclPlane::ApplySum(const NcclCollective& request, const DeviceBuffer& sum,
                                 uint64_t* version) {
  AssignRequest add;
  add.set_name(request.variable());
  add.set_op(UPDATE_ADD);
  TensorProto* value = add.mutable_value();
  value->set_dtype(request.dtype());
  *value->mutable_shape() = request.shape();
  std::string* content = value->mutable_content();
  content->resize(sum.size());
  PSD_RETURN_IF_ERROR(store_->mutable_device()->CopyToHost(sum, 0, sum.size(), content->data()));
  AssignResponse response;
  {
    // This thread is the plane's own, so it may wait for a checkpoint fence.
    WriteGate::Pass pass(store_->mutable_gate());
    PSD_RETURN_IF_ERROR(store_->Assign(add, &response));
  }
  *version = response.version();
  return absl::OkStatus();
}

}  // namespace psd
