#include "shard/nccl_session.h"

#include <deque>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "psd/grpc_status.h"

namespace psd {
namespace {

class NcclSession;

// The plane's handle on the stream. It outlives the reactor (the plane may
// hold it after the stream ended); once detached it ignores everything.
class SessionPeer final : public NcclPeer {
 public:
  explicit SessionPeer(NcclSession* session) : session_(session) {}

  void Send(NcclReply reply) override;
  void Close(absl::Status status) override;

  // The reactor's side.
  void StartRead(NcclRequest* request);
  void WriteDone(bool ok);
  void Detach() {
    absl::MutexLock lock(&mu_);
    session_ = nullptr;
  }

 private:
  void StartNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  NcclSession* session_ ABSL_GUARDED_BY(mu_);  // null once the reactor is done
  std::deque<NcclReply> queue_ ABSL_GUARDED_BY(mu_);
  NcclReply current_ ABSL_GUARDED_BY(mu_);  // the reply being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;  // Close() was called
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() was called
  absl::Status close_status_ ABSL_GUARDED_BY(mu_);
};

class NcclSession final : public grpc::ServerBidiReactor<NcclRequest, NcclReply> {
 public:
  NcclSession(NcclPlane* plane, absl::Status refuse)
      : plane_(plane), peer_(std::make_shared<SessionPeer>(this)) {
    if (refuse.ok() && plane_ == nullptr) {
      refuse = absl::UnimplementedError("this shard serves no NCCL data plane");
    }
    if (refuse.ok()) refuse = plane_->Available();
    if (!refuse.ok()) {
      peer_->Close(refuse);
      return;
    }
    peer_->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The trainer closed its side (or went away): it leaves its group.
      peer_->Close(absl::OkStatus());
      LeaveGroup("closed its stream");
      return;
    }
    absl::Status status = Handle();
    if (!status.ok()) {
      peer_->Close(status);
      LeaveGroup(absl::StrCat("sent a bad request: ", status.message()));
      return;
    }
    peer_->StartRead(&request_);
  }

  void OnWriteDone(bool ok) override { peer_->WriteDone(ok); }

  void OnDone() override {
    peer_->Detach();
    LeaveGroup("went away");
    delete this;
  }

 private:
  absl::Status Handle() {
    if (member_ == nullptr) {
      if (!request_.has_join()) {
        return absl::FailedPreconditionError(
            "the first message of an NCCL stream must join a group");
      }
      NcclReply reply;
      auto member = plane_->Join(request_.join(), peer_, reply.mutable_joined());
      if (!member.ok()) return member.status();
      member_ = std::move(member).value();
      rank_ = reply.joined().rank();
      group_ = request_.join().group();
      peer_->Send(std::move(reply));
      return absl::OkStatus();
    }
    if (!request_.has_collective()) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL group '", group_, "': trainer rank ", rank_,
                       " joined already; later messages must be collectives"));
    }
    return plane_->Collective(member_.get(), request_.collective());
  }

  // Ends the member's group for everyone (once): a communicator cannot
  // lose a rank.
  void LeaveGroup(const std::string& what) {
    if (member_ == nullptr || left_) return;
    left_ = true;
    plane_->Leave(member_.get(), absl::UnavailableError(absl::StrCat(
                                     "NCCL group '", group_, "' ended: trainer rank ", rank_,
                                     " ", what)));
  }

  NcclPlane* const plane_;
  const std::shared_ptr<SessionPeer> peer_;
  // Touched by gRPC's reactions only, which never run concurrently for one
  // stream's reads, and by OnDone after them.
  NcclRequest request_;
  std::shared_ptr<NcclPlane::Member> member_;
  int rank_ = 0;
  std::string group_;
  bool left_ = false;
};

void SessionPeer::Send(NcclReply reply) {
  absl::MutexLock lock(&mu_);
  if (session_ == nullptr || closing_) return;
  queue_.push_back(std::move(reply));
  if (!writing_) StartNextLocked();
}

void SessionPeer::Close(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (session_ == nullptr || closing_) return;
  closing_ = true;
  close_status_ = std::move(status);
  if (!writing_) FinishLocked();
}

void SessionPeer::StartRead(NcclRequest* request) {
  absl::MutexLock lock(&mu_);
  if (session_ == nullptr || closing_) return;
  request->Clear();
  session_->StartRead(request);
}

void SessionPeer::WriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  writing_ = false;
  if (session_ == nullptr) return;
  if (!ok) {
    // The trainer went away; the read side sees it too and leaves the group.
    queue_.clear();
    if (!closing_) {
      closing_ = true;
      close_status_ = absl::CancelledError("the trainer went away");
    }
    FinishLocked();
    return;
  }
  if (!queue_.empty()) {
    StartNextLocked();
  } else if (closing_) {
    FinishLocked();
  }
}

void SessionPeer::StartNextLocked() {
  current_ = std::move(queue_.front());
  queue_.pop_front();
  writing_ = true;
  session_->StartWrite(&current_);
}

void SessionPeer::FinishLocked() {
  if (finished_) return;
  finished_ = true;
  session_->Finish(ToGrpcStatus(close_status_));
}

}  // namespace

grpc::ServerBidiReactor<NcclRequest, NcclReply>* NewNcclSession(NcclPlane* plane,
                                                                absl::Status refuse) {
  return new NcclSession(plane, std::move(refuse));
}

}  // namespace psd
