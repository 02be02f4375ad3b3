#include "shard/move_service.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/generic/generic_stub.h"
#include "psd/edge.h"
#include "psd/grpc_status.h"
#include "psd/status.h"
#include "psd/stream_codec.h"

namespace psd {

namespace {

// One pull's deadline, and how long a puller keeps retrying a source that
// does not answer before it fails the move (the coordinator then gives it
// up and the part stays where it was).
constexpr auto kPullDeadline = std::chrono::seconds(30);
constexpr absl::Duration kPullRetryBudget = absl::Seconds(30);
// How often a puller whose pull is not answered yet asks whether it is
// still wanted (see PullLoop).
constexpr absl::Duration kPullRecheck = absl::Milliseconds(200);
// Snapshot chunks a puller keeps on the wire at once: the source reads and
// sends the next while this shard installs one (each up to 4 MiB, so this
// bounds a move's answers in memory to 12 MiB a puller).
constexpr int kPullsInFlight = 3;
// The nice value of a move's snapshot copy (see Pull).
constexpr int kSnapshotCopyNice = 10;
// The longest a MoveStatus call waits for the move to become ready.
constexpr int kMaxStatusWaitMs = 5000;

// A transport failure or a refusal that passes (the source could not hold
// its writes for an instant because a checkpoint fence was up).
bool Retryable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) ||
         (absl::IsAborted(s) && absl::StrContains(s.message(), "; retry"));
}

// A primary's permanent answer to a follow's pull: the follow ended there
// (ABORTED "... was given up" / "... ended ...", FAILED_PRECONDITION "...
// has ended", NOT_FOUND: forgotten). Not a stale handle: a restarted
// primary lost its copy, and this backup may be the one to promote.
bool FollowEnded(const absl::Status& s) {
  if (absl::IsNotFound(s) || absl::IsFailedPrecondition(s)) return true;
  if (absl::StrContains(s.message(), "stale handle")) return false;
  if (absl::IsAborted(s)) return !absl::StrContains(s.message(), "; retry");
  return absl::StrContains(s.message(), "was given up");
}

template <typename Op>
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, absl::string_view who, Op&& op) {
  absl::Status status = RunAtEdge(who, op);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

ShardMoveService::ShardMoveService(int32_t shard_id, VariableStore* store, PeerReader* peers,
                                   int64_t rate_when_busy)
    : shard_id_(shard_id), store_(store), peers_(peers), rate_when_busy_(rate_when_busy) {
  store_->SetLogNewsHandler([this](uint64_t move_id, bool here) {
    bool push_here = false;
    {
      absl::MutexLock lock(&parked_mu_);
      // Bounded by the follows there were; forgetting the counts costs a
      // pull parked at that instant at most its wait.
      if (news_.size() > 65536) news_.clear();
      ++news_[move_id];
      if (follower_count_.load(std::memory_order_acquire) > 0) {
        // Outside the store's locks the writer pushes to the follow's
        // streams itself; under them the waker does.
        if (here) {
          push_here = true;
        } else {
          follow_news_.insert(move_id);
        }
      }
      if (!parked_.empty() || !follow_news_.empty()) {
        news_pending_ = true;
        parked_changed_.SignalAll();
      }
    }
    if (push_here) PushFollowers({move_id});
  });
  waker_ = std::thread(&ShardMoveService::Wake, this);
}

// The lock is let go around the store calls and the answers (manual
// Unlock/Lock inside the scoped lock), which the analysis cannot follow.
void ShardMoveService::Wake() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  absl::MutexLock lock(&parked_mu_);
  while (true) {
    absl::Time next = absl::InfiniteFuture();
    for (const ParkedPull& p : parked_) next = std::min(next, p.deadline);
    if (!news_pending_ && !waker_stopping_ &&
        (next == absl::InfiniteFuture() || absl::Now() < next)) {
      parked_changed_.WaitWithDeadline(&parked_mu_, next);
      continue;
    }
    const absl::Time now = absl::Now();
    std::vector<ParkedPull> ready;
    for (auto it = parked_.begin(); it != parked_.end();) {
      auto news = news_.find(it->request.move_id());
      if (waker_stopping_ || it->deadline <= now ||
          (news != news_.end() && news->second != it->news)) {
        ready.push_back(std::move(*it));
        it = parked_.erase(it);
      } else {
        ++it;
      }
    }
    news_pending_ = false;
    const bool stopping = waker_stopping_;
    std::set<uint64_t> pushes;
    pushes.swap(follow_news_);
    parked_mu_.Unlock();
    if (!pushes.empty()) PushFollowers(pushes);
    for (ParkedPull& p : ready) {
      // Asked again, without waiting: what was logged meanwhile, or none.
      p.request.set_wait_ms(0);
      absl::Status status = AnswerPull(p.request, p.response, nullptr);
      p.reactor->Finish(ToGrpcStatus(status));
    }
    parked_mu_.Lock();
    if (stopping && parked_.empty()) return;
  }
}

ShardMoveService::~ShardMoveService() {
  store_->SetLogNewsHandler(nullptr);
  {
    absl::MutexLock lock(&parked_mu_);
    waker_stopping_ = true;
    parked_changed_.SignalAll();
  }
  if (waker_.joinable()) waker_.join();
  stopping_.store(true);
  std::map<uint64_t, std::thread> pullers;
  {
    absl::MutexLock lock(&mu_);
    pullers.swap(pullers_);
  }
  for (auto& [id, thread] : pullers) {
    if (thread.joinable()) thread.join();
  }
}

absl::Status ShardMoveService::AnswerPull(const PullMoveRequest& request,
                                          grpc::ByteBuffer* response, bool* would_wait) {
  return RunAtEdge("shard move service", [&]() -> absl::Status {
    PullMoveResponse fields;
    VariableStore::RawPullAnswer raw;
    PSD_RETURN_IF_ERROR(store_->PullMoveRaw(request, &fields, &raw, would_wait));
    *response = EncodePullAnswer(fields, raw.writes, std::move(raw.content));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardMoveService::PullMove(grpc::CallbackServerContext* ctx,
                                                     const grpc::ByteBuffer* raw_request,
                                                     grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  PullMoveRequest request;
  if (!DecodeMessage(*raw_request, &request)) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError("malformed PullMoveRequest")));
    return reactor;
  }
  bool would_wait = false;
  uint64_t news = 0;
  if (request.follow()) {
    absl::MutexLock lock(&parked_mu_);
    auto it = news_.find(request.move_id());
    news = it == news_.end() ? 0 : it->second;
  }
  absl::Status status = AnswerPull(request, response, request.follow() ? &would_wait : nullptr);
  if (status.ok() && would_wait) {
    absl::MutexLock lock(&parked_mu_);
    if (!waker_stopping_) {
      ParkedPull parked;
      parked.request = request;
      parked.response = response;
      parked.reactor = reactor;
      parked.deadline = absl::Now() + absl::Milliseconds(std::clamp(request.wait_ms(), 0, 1000));
      // A write logged since the store was asked counts as news already.
      parked.news = news;
      parked_.push_back(std::move(parked));
      news_pending_ = true;
      parked_changed_.SignalAll();
      return reactor;
    }
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A backup's follow stream on the primary. The first request is the
// follow's log pull; each later one acknowledges (applied_seq). The stream
// pushes the writes logged after those it sent, one answer on the wire at
// a time: at once when there are some, else when the waker brings news of
// the log (PushFollowers), or when the answer before is written.
//
// Lifetime: every event decides under mu_ what to start (a write, a read,
// Finish) and starts it outside the lock. Finish is called once, when the
// stream ended (the backup's side closed, an error) and no write is on the
// wire; OnDone unregisters the stream and deletes it.
//
// Raw: requests are parsed here, and each answer is its small fields
// followed by the logged writes' bytes as the log holds them
// (EncodePullAnswer), so a value is not copied into the answer and again
// into gRPC's buffers; the backup parses the bytes as a PullMoveResponse.
class ShardMoveService::FollowReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit FollowReactor(ShardMoveService* service) : service_(service) {
    StartRead(&received_bytes_);
  }

  // The waker's news of the log: pushes what was logged if nothing is on
  // the wire, else once the answer on the wire is written.
  void Push() {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      news_ = true;
      if (started_ && !writing_ && !end_.has_value()) FetchLocked(&actions);
      DecideLocked(&actions);
    }
    Carry(actions);
  }

  void OnReadDone(bool read) override {
    Actions actions;
    absl::Status refused;
    // A request that does not parse ends the stream (as gRPC's own parse
    // would), changing nothing.
    const bool ok = read && DecodeMessage(received_bytes_, &received_);
    received_bytes_.Clear();
    if (read && !ok) {
      refused = absl::InvalidArgumentError(
          "a follow stream's request does not parse as a PullMoveRequest");
    }
    if (ok && !registered_ && !first_read_) {
      // Registered before the first fetch, so no news is missed between
      // the two (news that comes first is fetched with it).
      first_read_ = true;
      move_id_ = received_.move_id();
      refused = service_->AddFollower(move_id_, this);
      registered_ = refused.ok();
    }
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;
      if (!refused.ok()) {
        end_ = ToGrpcStatus(refused);
      } else if (!ok) {
        // The backup closed its side, or went away.
        if (!end_.has_value()) end_ = grpc::Status::OK;
      } else if (!started_) {
        started_ = true;
        pull_ = received_;
        pull_.set_wait_ms(0);
        sent_ = received_.applied_seq();
        FetchLocked(&actions);
      } else {
        // An acknowledgement: how far the backup applied.
        pull_.set_applied_seq(std::max(pull_.applied_seq(), received_.applied_seq()));
        if (writing_) {
          PullMoveResponse none;
          absl::Status acked = RunAtEdge("shard move service", [&] {
            return service_->store_->PullFollowLog(pull_, &none, /*ack_only=*/true,
                                                   &actions.acked);
          });
          if (!acked.ok()) end_ = ToGrpcStatus(acked);
        } else {
          FetchLocked(&actions);
        }
      }
      if (!end_.has_value()) {
        reading_ = true;
        actions.read = true;
      }
      DecideLocked(&actions);
    }
    Carry(actions);
  }

  void OnWriteDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        if (!end_.has_value()) end_ = grpc::Status(grpc::StatusCode::CANCELLED, "backup went away");
      } else if (news_ && !end_.has_value()) {
        FetchLocked(&actions);
      }
      DecideLocked(&actions);
    }
    Carry(actions);
  }

  void OnDone() override {
    if (registered_) service_->RemoveFollower(move_id_, this);
    delete this;
  }

 private:
  struct Actions {
    // Writers' answers the backup's acknowledgement completed: answered
    // from this thread (VariableStore::AnswerWhenReplicated).
    VariableStore::AckedAnswers acked;
    bool write = false;
    bool read = false;
    std::optional<grpc::Status> finish;
  };

  // The writes logged after those sent (and the acknowledgement in pull_),
  // into outgoing_ to be written when there are any.
  void FetchLocked(Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    news_ = false;
    PullMoveResponse fields;
    std::vector<LoggedWrite> writes;
    pull_.set_after_seq(sent_);
    absl::Status fetched = RunAtEdge("shard move service", [&] {
      return service_->store_->PullFollowLog(pull_, &fields, /*ack_only=*/false, &actions->acked,
                                             &writes);
    });
    if (!fetched.ok()) {
      end_ = ToGrpcStatus(fetched);
      return;
    }
    if (writes.empty() && !fields.end()) return;
    if (!writes.empty()) sent_ = writes.back().seq;
    outgoing_ = EncodePullAnswer(fields, writes);
    writing_ = true;
    actions->write = true;
  }

  void DecideLocked(Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (end_.has_value() && !writing_ && !finished_) {
      finished_ = true;
      actions->finish = *end_;
    }
  }

  void Carry(Actions& actions) {
    VariableStore::ResumeAcked(&actions.acked);
    if (actions.write) StartWrite(&outgoing_);
    if (actions.read) StartRead(&received_bytes_);
    if (actions.finish.has_value()) Finish(*actions.finish);
  }

  ShardMoveService* const service_;
  // Set by the first request's read (reads come one at a time; OnDone
  // comes after the last).
  bool first_read_ = false;  // the first request was read
  bool registered_ = false;        // and AddFollower took it
  uint64_t move_id_ = 0;
  absl::Mutex mu_;
  grpc::ByteBuffer received_bytes_;  // the read's buffer (one read at a time)
  PullMoveRequest received_;          // parsed from it
  PullMoveRequest pull_ ABSL_GUARDED_BY(mu_);  // the follow's pull, acknowledged so far
  grpc::ByteBuffer outgoing_;  // the answer on the wire (one at a time)
  uint64_t sent_ ABSL_GUARDED_BY(mu_) = 0;  // the last write sent
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = true;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool news_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ShardMoveService::FollowMove(
    grpc::CallbackServerContext* /*ctx*/) {
  return new FollowReactor(this);
}

absl::Status ShardMoveService::AddFollower(uint64_t move_id, FollowReactor* follower) {
  absl::MutexLock lock(&followers_mu_);
  // A follow has one stream; one more while a broken one is being noticed.
  // Past the cap (another caller's streams) each would be pushed every
  // write of the group.
  if (followers_.count(move_id) >= kMaxStreamsPerFollow) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "move ", absl::Hex(move_id), " already has ", kMaxStreamsPerFollow,
        " follow streams open here (the most a follow may have)"));
  }
  followers_.emplace(move_id, follower);
  follower_count_.fetch_add(1, std::memory_order_release);
  return absl::OkStatus();
}

void ShardMoveService::RemoveFollower(uint64_t move_id, FollowReactor* follower) {
  absl::MutexLock lock(&followers_mu_);
  auto [begin, end] = followers_.equal_range(move_id);
  for (auto it = begin; it != end; ++it) {
    if (it->second == follower) {
      followers_.erase(it);
      follower_count_.fetch_sub(1, std::memory_order_release);
      return;
    }
  }
}

void ShardMoveService::PushFollowers(const std::set<uint64_t>& move_ids) {
  // Under followers_mu_, so no stream is deleted meanwhile (OnDone waits).
  absl::MutexLock lock(&followers_mu_);
  for (uint64_t id : move_ids) {
    auto [begin, end] = followers_.equal_range(id);
    for (auto it = begin; it != end; ++it) it->second->Push();
  }
}

grpc::ServerUnaryReactor* ShardMoveService::StartMoveIn(grpc::CallbackServerContext* ctx,
                                                        const StartMoveInRequest* request,
                                                        StartMoveInResponse* /*response*/) {
  return Answer(ctx, "shard move service", [&]() -> absl::Status {
    PSD_RETURN_IF_ERROR(store_->BeginMoveIn(*request));
    absl::MutexLock lock(&mu_);
    if (stopping_.load()) return absl::UnavailableError("the shard is stopping");
    // Pullers of earlier moves that returned are joined here, at once. One
    // whose move ended but that has not returned yet is left for later: it
    // may still be waiting for a source that does not answer (an old
    // primary cut off by a partition), and joining it here would hold every
    // move into this shard, and this gRPC thread, until it does.
    for (auto it = pullers_.begin(); it != pullers_.end();) {
      if (it->first != request->move_id() && returned_.count(it->first) > 0) {
        if (it->second.joinable()) it->second.join();
        returned_.erase(it->first);
        it = pullers_.erase(it);
      } else {
        ++it;
      }
    }
    if (pullers_.count(request->move_id()) > 0) return absl::OkStatus();  // a repeated start
    pullers_.emplace(request->move_id(),
                     std::thread(&ShardMoveService::Pull, this, request->move_id(),
                                 request->source_address()));
    return absl::OkStatus();
  });
}

namespace {

// One pull on the wire: its call state lives until gRPC says it is done.
// Called raw: a snapshot chunk's bytes stay in the received slices
// (`content`) until they are copied into the incoming part.
struct PullCall {
  PullMoveRequest request;
  grpc::ByteBuffer request_bytes;
  grpc::ByteBuffer response_bytes;
  PullMoveResponse response;  // parsed once done (all but `content`'s bytes)
  ContentMessage content;
  grpc::ClientContext ctx;
  grpc::Status status;
  bool done = false;  // guarded by the puller's mutex
};

// The same data asked for: a pull ahead (after_seq) is the next one once
// the writes before it are applied.
bool SamePull(const PullMoveRequest& a, const PullMoveRequest& b) {
  return a.member() == b.member() && a.offset() == b.offset() &&
         std::max(a.applied_seq(), a.after_seq()) == std::max(b.applied_seq(), b.after_seq());
}

}  // namespace

void ShardMoveService::Pull(uint64_t move_id, std::string source_address) {
  std::unique_ptr<ShardMove::Stub> stub = ShardMove::NewStub(peers_->ChannelFor(source_address));
  // The snapshot is background work, copied at a lower CPU priority so that
  // trainers' ops go first on a busy machine. The logged writes are not: the
  // switch holds the group's writes until they are applied, and a thread
  // cannot take its priority back without privilege, so they are pulled
  // by this thread, at the shard's own priority.
  std::thread copier([&] {
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), kSnapshotCopyNice);
    PullLoop(move_id, source_address, /*snapshot_only=*/true);
  });
  copier.join();
  // A follow takes its log on a stream; a move (and a follow whose primary
  // has no stream) by pulls.
  if (!store_->IsFollow(move_id) || !FollowLoop(move_id, source_address, stub.get())) {
    PullLoop(move_id, source_address, /*snapshot_only=*/false);
  }
  absl::MutexLock lock(&mu_);
  returned_.insert(move_id);
}

void ShardMoveService::PullLoop(uint64_t move_id, const std::string& source_address,
                                bool snapshot_only) {
  // The pulls on the wire, oldest first; answers are applied in that order.
  absl::Mutex mu;
  absl::CondVar answered;
  std::deque<std::unique_ptr<PullCall>> in_flight;
  // A backup's follow never gives up: it retries a failing source for as
  // long as it follows, reporting why in MoveStatus.
  const bool follow = store_->IsFollow(move_id);
  bool follow_failing = false;
  grpc::GenericStub generic(peers_->ChannelFor(source_address));
  auto start = [&](const PullMoveRequest& request) {
    auto call = std::make_unique<PullCall>();
    call->request = request;
    call->request.set_target_shard_id(shard_id_);
    call->request_bytes = EncodeMessage(call->request);
    call->ctx.set_deadline(std::chrono::system_clock::now() + kPullDeadline);
    PullCall* raw = call.get();
    in_flight.push_back(std::move(call));
    generic.UnaryCall(&raw->ctx, kPullMoveMethod, grpc::StubOptions(), &raw->request_bytes,
                      &raw->response_bytes, [raw, &mu, &answered](grpc::Status status) {
                        absl::MutexLock lock(&mu);
                        raw->status = std::move(status);
                        raw->done = true;
                        answered.SignalAll();
                      });
  };
  // A done call's answer, parsed: a snapshot chunk's content left in the
  // received slices, anything else (logged writes) parsed whole.
  auto parse = [&](PullCall* call) -> absl::Status {
    PSD_RETURN_IF_ERROR(FromGrpcStatus(call->status));
    if (snapshot_only) {
      return call->content.Parse(call->response_bytes, PullMoveResponse::kContentFieldNumber,
                                 &call->response, "the source's PullMoveResponse");
    }
    if (!DecodeMessage(call->response_bytes, &call->response)) {
      return absl::InvalidArgumentError("the source's PullMoveResponse does not parse");
    }
    return absl::OkStatus();
  };
  // Cancels what is still on the wire and waits for gRPC to let go of it.
  auto drop_all = [&] {
    for (auto& call : in_flight) call->ctx.TryCancel();
    absl::MutexLock lock(&mu);
    for (auto& call : in_flight) {
      while (!call->done) answered.Wait(&mu);
    }
    in_flight.clear();
  };
  absl::Time failing_since = absl::InfiniteFuture();
  absl::Duration backoff = absl::Milliseconds(20);
  // Pacing while busy: the time the bytes applied so far may take at
  // rate_when_busy_, from when the pacing started; no new chunk is asked
  // for before `paced_due` (the last chunk is not waited after).
  absl::Time paced_since = absl::InfinitePast();
  absl::Time paced_due = absl::InfinitePast();
  int64_t paced_bytes = 0;
  while (!stopping_.load()) {
    bool copying = false;
    const std::vector<PullMoveRequest> plan =
        store_->PlanMovePulls(move_id, kPullsInFlight, &copying);
    if (plan.empty() || (snapshot_only && !copying)) break;
    if (const absl::Time now = absl::Now(); snapshot_only && paced_due > now) {
      absl::SleepFor(std::min(paced_due - now, absl::Milliseconds(100)));
      continue;  // planned again: the move may have ended meanwhile
    }
    // The pulls on the wire must be the plan's first ones, in order; any
    // other answer is not wanted (the plan changed under them).
    bool wanted = in_flight.size() <= plan.size();
    for (size_t i = 0; wanted && i < in_flight.size(); ++i) {
      wanted = SamePull(in_flight[i]->request, plan[i]);
    }
    if (!wanted) drop_all();
    for (size_t i = in_flight.size(); i < plan.size(); ++i) start(plan[i]);
    // The oldest pull's answer; while it is late, whether it is still
    // wanted: a follow promoted here or ended, or a stopping shard, need not
    // wait out kPullDeadline for a source that may never answer (the old
    // primary of a failover, cut off by a partition).
    std::unique_ptr<PullCall> call;
    while (call == nullptr) {
      {
        absl::MutexLock lock(&mu);
        if (!in_flight.front()->done) answered.WaitWithTimeout(&mu, kPullRecheck);
        if (in_flight.front()->done) {
          call = std::move(in_flight.front());
          in_flight.pop_front();
          break;
        }
      }
      PullMoveRequest next;
      if (stopping_.load() || !store_->NextMovePull(move_id, &next)) break;
    }
    if (call == nullptr) break;  // the pulls on the wire are cancelled below
    absl::Status status = parse(call.get());
    if (!status.ok()) {
      drop_all();  // they follow a chunk that did not come
      const absl::Time now = absl::Now();
      if (failing_since == absl::InfiniteFuture()) failing_since = now;
      if (follow && FollowEnded(status)) {
        // The primary ended this follow (given up, ended, or forgotten):
        // failed here too, so the coordinator's keeper sees MOVE_FAILED in
        // MoveStatus and replaces this backup instead of counting it.
        store_->FailMoveIn(move_id, absl::Status(status.code(),
                                                 absl::StrCat("the primary's shard at ",
                                                              source_address,
                                                              " ended this follow: ",
                                                              status.message())));
        break;
      }
      if (follow) {
        store_->NoteFollowPullFailure(
            move_id, absl::Status(status.code(),
                                  absl::StrCat("pulling from the primary's shard at ",
                                               source_address, " (retrying): ", status.message())));
        follow_failing = true;
        absl::SleepFor(backoff);
        backoff = std::min(backoff * 2, absl::Seconds(1));
        continue;
      }
      if (Retryable(status) && now - failing_since < kPullRetryBudget) {
        absl::SleepFor(backoff);
        backoff = std::min(backoff * 2, absl::Seconds(1));
        continue;
      }
      store_->FailMoveIn(move_id, absl::Status(status.code(),
                                               absl::StrCat("pulling from the source shard at ",
                                                            source_address, ": ",
                                                            status.message())));
      break;
    }
    failing_since = absl::InfiniteFuture();
    backoff = absl::Milliseconds(20);
    if (follow_failing) {
      store_->NoteFollowPullFailure(move_id, absl::OkStatus());
      follow_failing = false;
    }
    // A backup asks for the writes after these while it applies them (a
    // chunked value's chunks follow each other), but only when more are
    // logged already: a pull ahead that found none would be parked, and
    // the pull acknowledging the last write (which its writer waits for)
    // would wait behind it.
    if (follow && !snapshot_only && in_flight.empty() && call->response.writes_size() > 0) {
      const uint64_t last = call->response.writes(call->response.writes_size() - 1).seq();
      PullMoveRequest ahead;
      if (call->response.final_seq() > last && store_->NextMovePull(move_id, &ahead)) {
        ahead.set_after_seq(last);
        start(ahead);
      }
    }
    // A failure is recorded by the store (MoveStatus reports it).
    if (!store_->ApplyMovePull(move_id, call->response, snapshot_only ? &call->content : nullptr)
             .ok()) {
      break;
    }
    if (snapshot_only && rate_when_busy_ > 0 &&
        (call->response.source_busy() || store_->BusyWithWrites())) {
      const absl::Time now = absl::Now();
      if (paced_since == absl::InfinitePast()) paced_since = now;
      paced_bytes += static_cast<int64_t>(call->content.content_size() +
                                          call->response.table().ByteSizeLong());
      paced_due =
          paced_since + absl::Seconds(static_cast<double>(paced_bytes) / rate_when_busy_);
    } else {
      paced_since = absl::InfinitePast();  // idle again: full speed
      paced_due = absl::InfinitePast();
      paced_bytes = 0;
    }
  }
  drop_all();
}

namespace {

// A backup's FollowMove stream, on the backup: applies each answer as it
// comes (on gRPC's thread: applying is CPU work and takes only the
// follow's and its parts' locks, which nothing holds for long on a
// backup), and acknowledges how far it applied, one acknowledgement on
// the wire at a time (a later one carries the latest).
class FollowStream final : public grpc::ClientBidiReactor<PullMoveRequest, PullMoveResponse> {
 public:
  // `clear_failure`: the follow's pulls failed before; its first answer
  // clears that from MoveStatus.
  FollowStream(VariableStore* store, uint64_t move_id, PullMoveRequest first, bool clear_failure)
      : store_(store), move_id_(move_id), clear_failure_(clear_failure),
        outgoing_(std::move(first)) {}

  grpc::ClientContext* context() { return &ctx_; }

  void Start() {
    {
      absl::MutexLock lock(&mu_);
      writing_ = true;
    }
    StartWrite(&outgoing_);
    StartRead(&incoming_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ends; OnDone has its status
    absl::Status applied = RunAtEdge("shard move service",
                                     [&] { return store_->ApplyMovePull(move_id_, incoming_); });
    PullMoveRequest next;
    // Applied (or failed, recorded by the store): how far it is now.
    const bool more = applied.ok() && store_->NextMovePull(move_id_, &next);
    bool write = false;
    {
      absl::MutexLock lock(&mu_);
      if (!applied.ok()) apply_failed_ = true;
      if (!more) {
        ctx_.TryCancel();
        return;
      }
      if (!applied_any_ && clear_failure_) store_->NoteFollowPullFailure(move_id_, absl::OkStatus());
      applied_any_ = true;
      acked_ = next.applied_seq();
      if (!writing_) {
        writing_ = true;
        write = true;
        outgoing_.set_applied_seq(acked_);
      } else {
        ack_pending_ = true;
      }
    }
    if (write) StartWrite(&outgoing_);
    StartRead(&incoming_);
  }

  void OnWriteDone(bool ok) override {
    bool write = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (ok && ack_pending_) {
        ack_pending_ = false;
        writing_ = true;
        write = true;
        outgoing_.set_applied_seq(acked_);
      }
    }
    if (write) StartWrite(&outgoing_);
  }

  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = FromGrpcStatus(status);
    done_ = true;
    changed_.SignalAll();
  }

  // Waits for the stream's end, asking `wanted` every `recheck` meanwhile
  // and cancelling the stream once it says no. Returns its status.
  template <typename Wanted>
  absl::Status Await(absl::Duration recheck, Wanted wanted) {
    bool cancelled = false;
    absl::MutexLock lock(&mu_);
    while (!done_) {
      changed_.WaitWithTimeout(&mu_, recheck);
      if (done_ || cancelled) continue;
      mu_.Unlock();
      const bool still = wanted();
      mu_.Lock();
      if (!still) {
        cancelled = true;
        ctx_.TryCancel();
      }
    }
    return status_;
  }

  bool apply_failed() const {
    absl::MutexLock lock(&mu_);
    return apply_failed_;
  }
  bool applied_any() const {
    absl::MutexLock lock(&mu_);
    return applied_any_;
  }

 private:
  VariableStore* const store_;
  const uint64_t move_id_;
  const bool clear_failure_;
  grpc::ClientContext ctx_;
  PullMoveResponse incoming_;  // the read's buffer (one read at a time)
  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  PullMoveRequest outgoing_ ABSL_GUARDED_BY(mu_);  // the write on the wire
  uint64_t acked_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ack_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool applied_any_ ABSL_GUARDED_BY(mu_) = false;
  bool apply_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

bool ShardMoveService::FollowLoop(uint64_t move_id, const std::string& source_address,
                                  ShardMove::Stub* stub) {
  absl::Duration backoff = absl::Milliseconds(20);
  bool failing = false;
  while (!stopping_.load()) {
    bool copying = false;
    std::vector<PullMoveRequest> plan = store_->PlanMovePulls(move_id, 1, &copying);
    if (plan.empty()) return true;  // promoted, ended or failed
    if (copying) return false;      // not at the log yet: pulled
    PullMoveRequest first = std::move(plan.front());
    first.set_target_shard_id(shard_id_);
    first.set_wait_ms(0);
    FollowStream stream(store_, move_id, std::move(first), /*clear_failure=*/failing);
    stub->async()->FollowMove(stream.context(), &stream);
    stream.Start();
    // While it runs, whether it is still wanted: a follow promoted here or
    // ended, or a stopping shard, need not wait for a primary that may
    // never answer (the old primary of a failover, cut off by a partition).
    absl::Status status = stream.Await(kPullRecheck, [&] {
      PullMoveRequest next;
      return !stopping_.load() && store_->NextMovePull(move_id, &next);
    });
    if (stream.apply_failed()) return true;  // the store failed the follow
    PullMoveRequest next;
    if (stopping_.load() || !store_->NextMovePull(move_id, &next)) return true;
    if (absl::IsUnimplemented(status) && !stream.applied_any()) return false;
    if (stream.applied_any()) {
      backoff = absl::Milliseconds(20);
      failing = false;  // the stream's first answer cleared it
    }
    if (!status.ok() && FollowEnded(status)) {
      // The primary ended this follow: failed here too (see PullLoop).
      store_->FailMoveIn(move_id, absl::Status(status.code(),
                                               absl::StrCat("the primary's shard at ",
                                                            source_address,
                                                            " ended this follow: ",
                                                            status.message())));
      return true;
    }
    if (!status.ok()) {
      store_->NoteFollowPullFailure(
          move_id, absl::Status(status.code(), absl::StrCat("pulling from the primary's shard at ",
                                                            source_address,
                                                            " (retrying): ", status.message())));
      failing = true;
    }
    // Opened again (an OK end: the primary's side closed, as when it
    // drains).
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
  return true;
}

template <typename Op>
grpc::ServerUnaryReactor* ShardMoveService::AnswerSlow(grpc::CallbackServerContext* ctx, Op op) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  slow_calls_.Post([reactor, op = std::move(op)]() mutable {
    reactor->Finish(ToGrpcStatus(RunAtEdge("shard move service", op)));
  });
  return reactor;
}

grpc::ServerUnaryReactor* ShardMoveService::MoveStatus(grpc::CallbackServerContext* ctx,
                                                       const MoveStatusRequest* request,
                                                       MoveStatusResponse* response) {
  // Waits up to kMaxStatusWaitMs for the move to settle.
  return AnswerSlow(ctx, [this, request, response] {
    *response = store_->MoveInStatus(
        request->move_id(), absl::Milliseconds(std::clamp(request->wait_ms(), 0, kMaxStatusWaitMs)));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardMoveService::FreezeMove(grpc::CallbackServerContext* ctx,
                                                       const FreezeMoveRequest* request,
                                                       FreezeMoveResponse* response) {
  // Fences the group's gate: waits for the writes in flight.
  return AnswerSlow(ctx, [this, request, response]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(uint64_t final_seq,
                         store_->FreezeMove(request->move_id(), request->shard_incarnation()));
    response->set_final_seq(final_seq);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardMoveService::SyncReplica(grpc::CallbackServerContext* ctx,
                                                        const SyncReplicaRequest* request,
                                                        SyncReplicaResponse* response) {
  return Answer(ctx, "shard move service", [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(uint64_t logged_seq,
                         store_->SyncReplica(request->move_id(), request->in_sync(),
                                             request->shard_incarnation()));
    response->set_logged_seq(logged_seq);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardMoveService::PromoteReplica(grpc::CallbackServerContext* ctx,
                                                           const PromoteReplicaRequest* request,
                                                           PromoteReplicaResponse* response) {
  return Answer(ctx, "shard move service", [&]() -> absl::Status {
    // The puller sees the follow gone at its next answer, or once that is
    // late, and stops; it is joined with the others (StartMoveIn once it
    // returned, or the destructor).
    PSD_ASSIGN_OR_RETURN(uint64_t applied_seq,
                         store_->PromoteReplica(request->move_id(), request->epoch(),
                                                request->shard_incarnation()));
    response->set_applied_seq(applied_seq);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardMoveService::EndMove(grpc::CallbackServerContext* ctx,
                                                    const EndMoveRequest* request,
                                                    EndMoveResponse* /*response*/) {
  return Answer(ctx, "shard move service", [&]() -> absl::Status {
    // A shard is one side of a move, but answering for both is harmless:
    // the other side does not know the id.
    PSD_RETURN_IF_ERROR(
        store_->EndMoveOut(request->move_id(), request->committed(), request->new_shard_id()));
    return store_->EndMoveIn(request->move_id(), request->committed());
  });
}

}  // namespace psd
