#include "shard/shard_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <new>
#include <thread>
#include <optional>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "grpc/slice.h"
#include "psd/edge.h"
#include "psd/grpc_status.h"
#include "psd/status.h"
#include "psd/stream_codec.h"
#include "psd/tokens.h"
#include "observability/rpc_metrics.h"
#include "runtime/caller_role.h"
#include "shard/nccl_session.h"

namespace psd {

absl::Status ShardService::Admit() {
  in_flight_.fetch_add(1);
  if (draining_.load()) {
    return absl::UnavailableError(absl::StrCat("shard ", shard_id_, " is shutting down"));
  }
  return absl::OkStatus();
}

template <typename Op>
absl::Status ShardService::RunGuarded(Op&& op) {
  return RunAtEdge(who_, op);
}

template <typename Op>
grpc::ServerUnaryReactor* ShardService::Serve(grpc::CallbackServerContext* ctx, Op&& op) {
  absl::Status status = Admit();
  if (status.ok()) status = RunGuarded(op);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  Release();
  return reactor;
}

template <typename Op>
grpc::ServerUnaryReactor* ShardService::ServeSlow(grpc::CallbackServerContext* ctx, Op op) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (!AdmitOrFinish(reactor)) return reactor;
  slow_calls_.Post([this, reactor, op = std::move(op)]() mutable {
    absl::Status status = RunGuarded(op);
    // Released first: once the call is finished the server may be torn
    // down (see RunWrite).
    Release();
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

template <typename Op>
grpc::ServerUnaryReactor* ShardService::ServeWrite(grpc::CallbackServerContext* ctx, Op op,
                                                   const std::string* variable) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (AdmitOrFinish(reactor)) RunWrite(reactor, std::move(op), variable);
  return reactor;
}

bool ShardService::AdmitOrFinish(grpc::ServerUnaryReactor* reactor) {
  absl::Status status = Admit();
  if (status.ok()) return true;
  reactor->Finish(ToGrpcStatus(status));
  Release();
  return false;
}


ShardService::~ShardService() = default;

void ShardService::AnswerLater(std::function<void()> answer) {
  answer_pool_.Post(std::move(answer));
}

void ShardService::AnswerWhenReplicated(const VariableStore::PendingAnswers& pending,
                                        std::function<void()> answer) {
  store_->AnswerWhenReplicated(pending, [this, answer = std::move(answer)](bool replicated) {
    if (replicated) {
      answer();
    } else {
      AnswerLater(answer);
    }
  });
}

template <typename Op>
void ShardService::RunWrite(grpc::ServerUnaryReactor* reactor, Op op,
                            const std::string* variable) {
  absl::Status status;
  std::shared_ptr<VariableStore::PendingAnswers> pending;
  {
    auto resume = [this, reactor, op, variable] { RunWrite(reactor, op, variable); };
    // A part moving to another shard has a gate of its own, closed while
    // its owner switches; admitted there first, so the shard's gate's
    // admission is the thread's innermost (the store's Pass finds it).
    std::shared_ptr<WriteGate> part_gate =
        variable != nullptr ? store_->MoveGateFor(*variable) : nullptr;
    std::optional<WriteGate::Admission> part_admission;
    if (part_gate != nullptr) {
      part_admission.emplace(part_gate->TryAdmit(resume));
      if (!*part_admission) return;  // held until the move switches or is given up
    }
    WriteGate::Admission admission = store_->mutable_gate()->TryAdmit(resume);
    if (!admission) return;  // held by a fence; the gate runs it again once it lifts
    VariableStore::DeferredAnswers deferred(store_);
    status = RunGuarded(op);
    if (!deferred.empty()) {
      pending = std::make_shared<VariableStore::PendingAnswers>(deferred.Detach());
    }
  }
  if (pending != nullptr) {
    // Answered once its backups have it, by the thread that hears so.
    AnswerWhenReplicated(*pending, [this, reactor, status, pending] {
      absl::Status answer = status;
      absl::Status waited = RunGuarded([&] {
        for (auto& [index, changed] : pending->Finish()) answer = std::move(changed);
        return absl::OkStatus();
      });
      if (!waited.ok()) answer = waited;
      Release();
      reactor->Finish(ToGrpcStatus(answer));
    });
    return;
  }
  // Released before finishing: this may run on a thread that is not gRPC's
  // (the gate's, or a source read's), and once the call is finished the
  // server may shut down and this service be destroyed. The server's
  // shutdown still waits for the unfinished call.
  Release();
  reactor->Finish(ToGrpcStatus(status));
}

ShardService::ShardService(int32_t shard_id, uint64_t incarnation, VariableStore* store)
    : shard_id_(shard_id),
      who_(absl::StrCat("shard ", shard_id)),
      incarnation_(incarnation),
      store_(store),
      checkpointer_(store) {
  SetMessageAllocatorFor_Read(&read_messages_);
  SetMessageAllocatorFor_Gather(&gather_messages_);
  SetMessageAllocatorFor_Assign(&assign_messages_);
  SetMessageAllocatorFor_Scatter(&scatter_messages_);
  SetMessageAllocatorFor_CountUpTo(&count_up_to_messages_);
  SetMessageAllocatorFor_ApplyDense(&apply_dense_messages_);
  SetMessageAllocatorFor_ApplySparse(&apply_sparse_messages_);
}

bool ShardService::WaitForIdle(absl::Time deadline) const {
  while (in_flight_.load() > 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

grpc::ServerUnaryReactor* ShardService::GetShardInfo(grpc::CallbackServerContext* ctx,
                                                     const GetShardInfoRequest* request,
                                                     GetShardInfoResponse* response) {
  return Serve(ctx, [&] {
    if (request->protocol_version() != SHARD_PROTOCOL_VERSION) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard protocol version mismatch: client speaks ", request->protocol_version(),
          ", shard speaks ", static_cast<int>(SHARD_PROTOCOL_VERSION)));
    }
    response->set_protocol_version(SHARD_PROTOCOL_VERSION);
    response->set_shard_id(shard_id_);
    response->set_incarnation(incarnation_);
    response->set_device(store_->device().name());
    response->set_memory_limit_bytes(store_->memory().limit());
    response->set_memory_used_bytes(store_->memory().used());
    response->set_num_variables(static_cast<int64_t>(store_->num_variables()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardService::CreateVariable(grpc::CallbackServerContext* ctx,
                                                       const CreateVariableRequest* request,
                                                       CreateVariableResponse* response) {
  return Serve(ctx, [&] {
    return store_->Create(*request, response->mutable_info(), CallerKeyOf(*ctx));
  });
}

grpc::ServerUnaryReactor* ShardService::DeleteVariable(grpc::CallbackServerContext* ctx,
                                                       const DeleteVariableRequest* request,
                                                       DeleteVariableResponse* response) {
  return Serve(ctx, [&] { return store_->Delete(*request, CallerKeyOf(*ctx)); });
}

grpc::ServerUnaryReactor* ShardService::ListVariables(grpc::CallbackServerContext* ctx,
                                                      const ListVariablesRequest* request,
                                                      ListVariablesResponse* response) {
  return Serve(ctx, [&] {
    for (auto& info : store_->List(request->prefix())) *response->add_variables() = std::move(info);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ShardService::InitializeVariables(
    grpc::CallbackServerContext* ctx, const InitializeVariablesRequest* request,
    InitializeVariablesResponse* response) {
  if (request->sources_size() == 0) {
    return ServeWrite(ctx, [this, request, caller = CallerKeyOf(*ctx)] {
      return store_->Initialize(*request, caller);
    });
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // The sources name addresses this shard dials with its node credentials
  // (certificate and node token): only the coordinator, a node, may give
  // them, or any trainer could have the node token sent where it likes, or
  // probe hosts the shard can reach. A server that checks no tokens treats
  // every caller alike (CallerRole is empty there).
  if (std::optional<Role> caller = CallerRole(*ctx); caller.has_value() && *caller != ROLE_NODE) {
    reactor->Finish(ToGrpcStatus(absl::PermissionDeniedError(absl::StrCat(
        "InitializeVariables with sources (where to read other variables' parts) is for the "
        "coordinator only (node role); the caller's token has role ", RoleName(*caller),
        ". Initialize variables initialized from another through the coordinator"))));
    return reactor;
  }
  // Reading the sources may wait on other shards: do it on a thread of its
  // own, not the handler's, then run the write as any other.
  if (!AdmitOrFinish(reactor)) return reactor;
  // The caller's deadline, capped: a call without one must not hold the
  // thread (and so the shard's shutdown) for as long as a peer stalls.
  const std::chrono::system_clock::time_point deadline =
      std::min(ctx->deadline(), std::chrono::system_clock::now() +
                                    absl::ToChronoSeconds(kMaxSourceReadTime));
  std::thread([this, ctx, reactor, request, deadline] {
    auto values = std::make_shared<VariableStore::SourceValues>();
    // The fetched values' bytes stay reserved until the write is done.
    auto held = std::make_shared<std::vector<MemoryReservation>>();
    auto fetch = [&] { return FetchSources(*request, deadline, values.get(), held.get()); };
    absl::Status fetched = RunGuarded(fetch);
    if (!fetched.ok()) {
      held->clear();  // the store's accountant is not touched past Release
      Release();      // before finishing, as in RunWrite
      reactor->Finish(ToGrpcStatus(fetched));
      return;
    }
    RunWrite(reactor, [this, ctx, request, values, held, deadline] {
      // Installed or dropped: the fetched copies are no longer held (also
      // when the store throws, before the call is released).
      absl::Cleanup drop = [&] {
        values->clear();
        held->clear();
      };
      absl::Status status;
      // A caller that gave up (the coordinator's step timed out, or it was
      // cancelled) reports a failure: applying now would initialize
      // behind its back.
      if (ctx->IsCancelled()) {
        status = absl::CancelledError(
            "initialization from other variables cancelled by the caller; nothing was changed");
      } else if (std::chrono::system_clock::now() >= deadline) {
        status = absl::DeadlineExceededError(
            "initialization from other variables: the deadline passed while the sources were "
            "read; nothing was changed");
      } else {
        status = store_->Initialize(*request, values.get(), CallerKeyOf(*ctx));
      }
      return status;
    });
  }).detach();
  return reactor;
}

absl::Status ShardService::FetchSources(const InitializeVariablesRequest& request,
                                        std::chrono::system_clock::time_point deadline,
                                        VariableStore::SourceValues* values,
                                        std::vector<MemoryReservation>* held) {
  PeerReader* peers = peers_;
  if (peers == nullptr) {
    absl::call_once(default_peers_once_, [this] {
      default_peers_ = std::make_unique<PeerReader>(nullptr, 64 << 20);
    });
    peers = default_peers_.get();
  }
  for (const InitializeSource& source : request.sources()) {
    const std::string& target = source.target();
    if (std::find(request.names().begin(), request.names().end(), target) ==
        request.names().end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "source given for '", target, "', which is not among the variables to initialize"));
    }
    PSD_ASSIGN_OR_RETURN(bool needed, store_->NeedsSourceValue(target, request.force()));
    if (!needed) continue;
    PSD_ASSIGN_OR_RETURN(int64_t max_bytes, store_->SourceValueMaxBytes(target));
    const bool here = source.incarnation() == incarnation_;
    absl::StatusOr<TensorProto> value =
        here ? store_->ReadSnapshot(source.part())
             : peers->Read(source.address(), source.part(), source.incarnation(), deadline,
                           max_bytes);
    if (value.ok()) {
      PSD_ASSIGN_OR_RETURN(
          MemoryReservation reservation,
          store_->ReserveSourceValue(target, static_cast<int64_t>(value->content().size())));
      held->push_back(std::move(reservation));
      (*values)[target] = *std::move(value);
      continue;
    }
    const std::string what =
        absl::StrCat("cannot initialize '", target, "' from source part '", source.part(),
                     "' on shard ", source.shard_id(), " (", here ? "this shard" : source.address(),
                     ")");
    const absl::Status& s = value.status();
    switch (s.code()) {
      case absl::StatusCode::kAborted:  // stale incarnation
        return absl::UnavailableError(absl::StrCat(
            what, ": that shard restarted and lost the part; restore it (", s.message(), ")"));
      case absl::StatusCode::kNotFound:
        return absl::UnavailableError(
            absl::StrCat(what, ": the part is not there (", s.message(), ")"));
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kDeadlineExceeded:
        return absl::UnavailableError(
            absl::StrCat(what, ": the shard cannot be reached (", s.message(), ")"));
      default:
        return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* ShardService::ReportUninitialized(
    grpc::CallbackServerContext* ctx, const ReportUninitializedRequest* request,
    ReportUninitializedResponse* response) {
  return Serve(ctx, [&] { return store_->ReportUninitialized(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::Read(grpc::CallbackServerContext* ctx,
                                             const ReadRequest* request, ReadResponse* response) {
  return Serve(ctx, [&] { return store_->Read(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::Gather(grpc::CallbackServerContext* ctx,
                                               const GatherRequest* request,
                                               GatherResponse* response) {
  if (store_->MoveGateFor(request->name()) != nullptr && store_->CountingTableLookup(*request)) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    if (AdmitOrFinish(reactor)) RunMovingLookup(reactor, request, response);
    return reactor;
  }
  return Serve(ctx, [&] { return store_->Gather(*request, response); });
}

void ShardService::RunMovingLookup(grpc::ServerUnaryReactor* reactor,
                                   const GatherRequest* request, GatherResponse* response) {
  absl::Status status;
  {
    auto resume = [this, reactor, request, response] {
      RunMovingLookup(reactor, request, response);
    };
    std::shared_ptr<WriteGate> part_gate = store_->MoveGateFor(request->name());
    std::optional<WriteGate::Admission> part_admission;
    if (part_gate != nullptr) {
      part_admission.emplace(part_gate->TryAdmit(resume));
      if (!*part_admission) return;  // held until the move switches or is given up
    }
    status = RunGuarded([&] { return store_->Gather(*request, response); });
  }
  // As RunWrite: released before finishing.
  Release();
  reactor->Finish(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* ShardService::Assign(grpc::CallbackServerContext* ctx,
                                               const AssignRequest* request,
                                               AssignResponse* response) {
  return ServeWrite(
      ctx,
      [this, request, response, caller = CallerKeyOf(*ctx)] {
        return store_->Assign(*request, response, caller);
      },
      &request->name());
}

grpc::ServerUnaryReactor* ShardService::Scatter(grpc::CallbackServerContext* ctx,
                                                const ScatterRequest* request,
                                                ScatterResponse* response) {
  return ServeWrite(
      ctx,
      [this, request, response, caller = CallerKeyOf(*ctx)] {
        return store_->Scatter(*request, response, caller);
      },
      &request->name());
}

grpc::ServerUnaryReactor* ShardService::CountUpTo(grpc::CallbackServerContext* ctx,
                                                  const CountUpToRequest* request,
                                                  CountUpToResponse* response) {
  return ServeWrite(
      ctx,
      [this, request, response, caller = CallerKeyOf(*ctx)] {
        return store_->CountUpTo(*request, response, caller);
      },
      &request->name());
}

grpc::ServerUnaryReactor* ShardService::ApplyDense(grpc::CallbackServerContext* ctx,
                                                   const ApplyDenseRequest* request,
                                                   ApplyDenseResponse* response) {
  return ServeWrite(
      ctx,
      [this, request, response, caller = CallerKeyOf(*ctx)] {
        return store_->ApplyDense(*request, response, caller);
      },
      &request->name());
}

grpc::ServerUnaryReactor* ShardService::ApplySparse(grpc::CallbackServerContext* ctx,
                                                    const ApplySparseRequest* request,
                                                    ApplySparseResponse* response) {
  return ServeWrite(
      ctx,
      [this, request, response, caller = CallerKeyOf(*ctx)] {
        return store_->ApplySparse(*request, response, caller);
      },
      &request->name());
}

// A server stream whose messages a source makes one at a time: each is made
// (under RunGuarded) on the reactor's thread once the previous one is
// written, so one is in flight; the stream ends OK when the source has none
// left, or with the status of the source's failure. The call counts as
// running (Admit) from construction to OnDone. A derived class's
// constructor ends with Start.
template <typename Message>
class SourceStreamReactor : public grpc::ServerWriteReactor<Message> {
 public:
  void OnWriteDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    WriteNext();
  }

  void OnDone() override {
    service_->Release();
    delete this;
  }

 protected:
  explicit SourceStreamReactor(ShardService* service)
      : service_(service), admitted_(service->Admit()) {}
  ~SourceStreamReactor() override = default;

  // Opens the source with `begin` (an absl::Status()), then writes the
  // first message.
  template <typename Begin>
  void Start(Begin&& begin) {
    absl::Status status = admitted_;
    if (status.ok()) status = service_->RunGuarded(std::forward<Begin>(begin));
    if (!status.ok()) {
      this->Finish(ToGrpcStatus(status));
      return;
    }
    WriteNext();
  }

  // Makes the next message into *message (empty when called); false when
  // every message was sent.
  virtual absl::StatusOr<bool> Next(Message* message) = 0;

  ShardService* const service_;

 private:
  void WriteNext() {
    message_ = Message();
    bool more = false;
    absl::Status status = service_->RunGuarded([&] {
      PSD_ASSIGN_OR_RETURN(more, Next(&message_));
      return absl::OkStatus();
    });
    if (!status.ok()) {
      this->Finish(ToGrpcStatus(status));
      return;
    }
    if (!more) {
      this->Finish(grpc::Status::OK);
      return;
    }
    this->StartWrite(&message_);
  }

  const absl::Status admitted_;
  Message message_;  // the write in progress
};

// Streams a variable's value in chunks, one in flight at a time. A value
// in host memory is sent from its pinned bytes themselves (slices that hold
// the pin until gRPC lets go of them; ValuePin::Lend); otherwise each
// chunk's content is copied once, from the store straight into the slice
// gRPC sends (psd/stream_codec.h), never through a protobuf string, the
// slices' buffers reused from chunk to chunk.
class ReadStreamReactor final : public SourceStreamReactor<grpc::ByteBuffer> {
 public:
  ReadStreamReactor(ShardService* service, const grpc::ByteBuffer& raw_request)
      : SourceStreamReactor(service) {
    Start([&] {
      ReadStreamRequest request;
      if (!DecodeMessage(raw_request, &request)) {
        return absl::InvalidArgumentError("malformed ReadStreamRequest");
      }
      PSD_ASSIGN_OR_RETURN(source_, service_->store_->BeginReadStream(request));
      source_->FillHeader(&fields_);
      return absl::OkStatus();
    });
  }

 private:
  absl::StatusOr<bool> Next(grpc::ByteBuffer* message) override {
    const int64_t n = source_->NextSize();
    if (n < 0) return false;
    lent_.clear();
    int64_t lent_offset = 0;
    PSD_ASSIGN_OR_RETURN(const bool lent, source_->LendNext(&lent_, &lent_offset));
    if (lent) {
      std::vector<grpc::Slice> pieces;
      pieces.reserve(lent_.size());
      for (LentBytes& piece : lent_) pieces.push_back(LentSlice(std::move(piece)));
      lent_.clear();
      fields_.set_offset(lent_offset);
      *message = EncodeWithContent(fields_, kTensorChunkContentField, std::move(pieces));
      fields_.Clear();  // the header goes in the first chunk only
      return true;
    }
    char* data = nullptr;
    grpc::Slice content = buffers_->NewSlice(static_cast<size_t>(n), &data);
    PSD_ASSIGN_OR_RETURN(int64_t offset, source_->ReadNext(data));
    fields_.set_offset(offset);
    *message = EncodeWithContent(fields_, kTensorChunkContentField, std::move(content));
    fields_.Clear();  // the header goes in the first chunk only
    return true;
  }

  std::unique_ptr<ReadStreamSource> source_;
  TensorChunk fields_;  // the chunk's fields but its content
  std::vector<LentBytes> lent_;  // scratch: the next chunk's lent pieces
  const std::shared_ptr<ChunkBufferPool> buffers_ = ChunkBufferPool::Create();
};

// Receives a streamed assign: header, then content bytes, copied by the
// store's sink straight from gRPC's receive slices into its staging buffer;
// commits when the client half-closes with every byte sent.
class AssignStreamReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  AssignStreamReactor(ShardService* service, grpc::CallbackServerContext* ctx,
                      grpc::ByteBuffer* response)
      : service_(service), ctx_(ctx), response_(response) {
    absl::Status status = service_->Admit();
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // End of the client's stream: a half-close, or a broken call. What
      // follows waits on the shard (fences), not on the caller.
      service_->idle_streams_->Forget(idle_token_);
      absl::Status status;
      if (cancelled_.load() || ctx_->IsCancelled()) {
        status = absl::CancelledError("streamed assign or apply cancelled; nothing was changed");
      } else if (sink_ == nullptr) {
        status = absl::InvalidArgumentError("streamed assign or apply without a header");
      } else {
        Commit();
        return;
      }
      sink_.reset();
      Finish(ToGrpcStatus(status));
      return;
    }
    absl::Status status = service_->RunGuarded([this] { return Stage(); });
    message_.Clear();  // gives gRPC its slices back before the next read
    buffer_.Clear();
    if (!status.ok()) {
      service_->idle_streams_->Forget(idle_token_);
      sink_.reset();  // abandons the staged bytes
      Finish(ToGrpcStatus(status));
      return;
    }
    ReadNext();
  }

  void OnCancel() override { cancelled_.store(true); }

  void OnDone() override {
    service_->idle_streams_->Forget(idle_token_);
    service_->Release();
    delete this;
  }

 private:
  // Waits for the caller's next message, on the idle watchdog's clock.
  void ReadNext() {
    idle_token_ = service_->idle_streams_->Waiting(ctx_, idle_token_);
    StartRead(&buffer_);
  }

  // Parses the message in buffer_ and hands its content to the sink,
  // starting it at the header.
  absl::Status Stage() {
    PSD_RETURN_IF_ERROR(
        message_.Parse(buffer_, kAssignStreamContentField, &fields_, "streamed assign"));
    if (sink_ == nullptr) {
      if (!fields_.has_header()) {
        return absl::InvalidArgumentError(
            "the first message of a streamed assign must carry its header");
      }
      PSD_ASSIGN_OR_RETURN(sink_, service_->store_->BeginAssignStream(fields_.header(), CallerKeyOf(*ctx_)));
      name_ = fields_.header().name();
    } else if (fields_.has_header()) {
      return absl::InvalidArgumentError(
          "a streamed assign carries one header, in its first message");
    }
    for (absl::string_view piece : message_.content()) PSD_RETURN_IF_ERROR(sink_->Append(piece));
    return absl::OkStatus();
  }

  // The commit is a write: a fence holds it (without holding this thread),
  // not the staging before it. A commit to a replicated part is answered
  // once its backups have it, from the answer pool (as RunWrite's writes):
  // the gRPC thread goes back to serving, the backups' pulls among others.
  void Commit() {
    absl::Status status;
    std::shared_ptr<VariableStore::PendingAnswers> pending;
    {
      // A part moving to another shard: its move's gate first (RunWrite).
      std::shared_ptr<WriteGate> part_gate = service_->store_->MoveGateFor(name_);
      std::optional<WriteGate::Admission> part_admission;
      if (part_gate != nullptr) {
        part_admission.emplace(part_gate->TryAdmit([this] { Commit(); }));
        if (!*part_admission) return;
      }
      WriteGate::Admission admission =
          service_->store_->mutable_gate()->TryAdmit([this] { Commit(); });
      if (!admission) return;
      VariableStore::DeferredAnswers deferred(service_->store_);
      status = service_->RunGuarded([this] {
        AssignResponse response;
        absl::Status committed = sink_->Commit(&response);
        if (committed.ok()) *response_ = EncodeMessage(response);
        return committed;
      });
      sink_.reset();
      if (!deferred.empty()) {
        pending = std::make_shared<VariableStore::PendingAnswers>(deferred.Detach());
      }
    }
    if (pending != nullptr) {
      service_->AnswerWhenReplicated(*pending, [this, status, pending] {
        absl::Status answer = status;
        absl::Status waited = service_->RunGuarded([&] {
          for (auto& [index, changed] : pending->Finish()) answer = std::move(changed);
          return absl::OkStatus();
        });
        if (!waited.ok()) answer = waited;
        Finish(ToGrpcStatus(answer));
      });
      return;
    }
    Finish(ToGrpcStatus(status));
  }

  ShardService* const service_;
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer* const response_;
  std::unique_ptr<AssignStreamSink> sink_;
  std::string name_;  // the variable, from the header
  grpc::ByteBuffer buffer_;    // the message as received
  AssignStreamRequest fields_;  // its fields but the content
  ContentMessage message_;      // its content, in buffer_'s slices
  std::atomic<bool> cancelled_{false};
  uint64_t idle_token_ = 0;  // IdleStreamWatchdog's, while reading
};

// Runs batches of small ops: read a message, run its ops in order, write
// their results. Each message is admitted separately, so a long-lived
// stream does not hold up a drain.
//
// Pipelining: a message whose writes wait for their backups
// (docs/replication.md) is answered later, off gRPC's threads, and
// meanwhile the stream reads and runs its next messages (at most
// kMaxMessagesAwaiting awaiting their answers, holding at most
// max_batch_result_bytes of results). A client with several messages in
// flight (ClientOptions::data_stream_frames_in_flight) so overlaps their
// backup round trips instead of paying them one after another. Replies go
// out in the order the messages came, and a message runs only once the one
// before it ran all its ops, so a stream's ops apply in order. A message
// may read what an earlier one wrote before that write was answered, as a
// read from another client may (reads are served by the primary).
//
// Lifetime: every event (a read or write done, a message run or answered)
// changes the state and decides what to start next in one critical section
// (DecideLocked), then starts it outside the lock (Carry). Finish is
// decided only when no message is in progress, no write is on the wire and
// no read is being started, so no other thread touches the reactor once
// Finish is called (OnDone deletes it).
class BatchReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  BatchReactor(ShardService* service, CallerKey caller) : service_(service), caller_(caller) {
    {
      absl::MutexLock lock(&mu_);
      reading_ = true;
    }
    StartRead(&received_bytes_);
    service_->AddBatchStream(this);
  }

  void OnReadDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;  // ended by a drain while it waited: the message is not run
      if (!ok || end_.has_value()) {
        // The client half-closed (or went away), or the stream is ending:
        // the messages already read are still answered, then it ends.
        if (!end_.has_value()) end_ = grpc::Status::OK;
        received_bytes_.Clear();
        DecideLocked(&actions);
      } else {
        // No other read starts (into received_bytes_) before this message
        // is parsed and has run.
        running_ = true;
      }
    }
    if (!ok || actions.decided) {
      Carry(std::move(actions));
      return;
    }
    auto message = std::make_unique<Message>();
    message->received = std::chrono::steady_clock::now();
    const bool parsed = DecodeMessage(received_bytes_, &message->request);
    received_bytes_.Clear();
    if (!parsed) {
      EndAfterReplies(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "malformed batch message; nothing was run"));
      return;
    }
    if (message->request.ops_size() > service_->store_->options().max_batch_ops) {
      EndAfterReplies(ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
          "a batch message holds ", message->request.ops_size(), " ops; the limit is ",
          service_->store_->options().max_batch_ops, " (max_batch_ops); nothing was run"))));
      return;
    }
    absl::Status status = service_->Admit();
    if (!status.ok()) {
      service_->Release();
      EndAfterReplies(ToGrpcStatus(status));
      return;
    }
    Message* const running = message.get();
    {
      absl::MutexLock lock(&mu_);
      messages_.push_back(std::move(message));
    }
    RunMessage(running);
  }

  void OnWriteDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      messages_.pop_front();  // the one whose reply was written
      if (!ok) {
        write_failed_ = true;
        if (!end_.has_value()) {
          end_ = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
        }
      }
      DecideLocked(&actions);
    }
    Carry(std::move(actions));
  }

  void OnDone() override {
    service_->RemoveBatchStream(this);
    delete this;
  }

  // A client's data stream stays open between its ops: a draining shard
  // ends the ones waiting for their next message (UNAVAILABLE, so the
  // client retries elsewhere in time or fails as for a shard that went
  // away) instead of holding its shutdown until the server cancels them.
  // Returns true when this stream was ended; the caller then calls Finish
  // outside its locks (EndNow). A stream with messages in progress ends
  // once their replies are written (DecideLocked sees the drain).
  bool EndIfWaiting() {
    absl::MutexLock lock(&mu_);
    if (!reading_ || issuing_read_ || running_ || writing_ || !messages_.empty() || finished_) {
      return false;
    }
    finished_ = true;
    return true;
  }
  void EndNow(const std::string& who) {
    Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, who + " is shutting down"));
  }

 private:
  // Messages awaiting their answers at once on one stream: bounds what a
  // stream holds while its backups are slow.
  static constexpr size_t kMaxMessagesAwaiting = 4;

  // One message, from its arrival until its reply is written. Its request
  // and response are used by the one thread running or answering it.
  struct Message {
    std::chrono::steady_clock::time_point received;
    BatchRequest request;  // emptied once its ops ran
    // The method each op stands for (metrics), kept once the request is
    // emptied.
    std::vector<absl::string_view> methods;
    BatchResponse response;
    grpc::ByteBuffer reply;    // the encoded response, once answered
    int64_t result_bytes = 0;  // response's, as its budget counted them; guarded by mu_
    bool answered = false;     // `reply` is ready; guarded by mu_
  };

  // What to start once the lock is let go (see Lifetime).
  struct Actions {
    bool decided = false;  // DecideLocked ran
    grpc::ByteBuffer* write = nullptr;
    bool read = false;
    std::optional<grpc::Status> finish;
  };

  // Runs the message's ops in order. A message with a write is admitted by
  // the write gate as a whole, so a fence holds it without holding this
  // thread and its ops keep their order (no later message runs meanwhile:
  // running_ stays set).
  void RunMessage(Message* message) {
    const BatchRequest& request = message->request;
    // Parts moving to another shard are admitted by their move's gate
    // first (see RunWrite): a message held there keeps its ops' order.
    std::vector<std::shared_ptr<WriteGate>> part_gates = MoveGatesOf(request);
    std::vector<WriteGate::Admission> part_admissions;
    part_admissions.reserve(part_gates.size());
    for (const auto& gate : part_gates) {
      part_admissions.push_back(gate->TryAdmit([this, message] { RunMessage(message); }));
      if (!part_admissions.back()) return;
    }
    std::optional<WriteGate::Admission> admission;
    if (HasWrite(request)) {
      admission.emplace(
          service_->store_->mutable_gate()->TryAdmit([this, message] { RunMessage(message); }));
      if (!*admission) return;
    }
    // Results share one reply: reads and gathers get what is left of its
    // budget, checked before they allocate.
    const int64_t max_result_bytes = service_->store_->options().max_batch_result_bytes;
    int64_t budget = max_result_bytes;
    // Writes to replicated parts wait for their backups once for the whole
    // message, after every op ran and with the write gate let go (a fence
    // need not wait for backups), before any result is sent.
    std::shared_ptr<VariableStore::PendingAnswers> pending;
    {
      // Only the message's own ops: nothing else run on this thread later
      // (a call gRPC may start inline in StartWrite) may hand its waits here.
      VariableStore::DeferredAnswers deferred(service_->store_);
      for (int i = 0; i < request.ops_size(); ++i) {
        BatchOpResult* result = message->response.add_results();
        deferred.set_op(i);
        absl::Status status = service_->RunGuarded(
            [&] { return service_->store_->RunBatchOp(request.ops(i), budget, result, caller_); });
        if (!status.ok()) VariableStore::SetBatchOpStatus(status, result);
        budget -= static_cast<int64_t>(result->ByteSizeLong());
      }
      if (!deferred.empty()) {
        pending = std::make_shared<VariableStore::PendingAnswers>(deferred.Detach());
      }
    }
    admission.reset();
    // Innermost first (WriteGate's admissions nest).
    while (!part_admissions.empty()) part_admissions.pop_back();
    message->methods.reserve(request.ops_size());
    for (const BatchOp& op : request.ops()) message->methods.push_back(MethodOf(op));
    message->request = BatchRequest();  // applied: its values are not held while it waits
    if (pending == nullptr) Prepare(message, {});
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      message->result_bytes = max_result_bytes - budget;
      message->answered = pending == nullptr;
      running_ = false;  // the next message may run
      DecideLocked(&actions);
    }
    if (pending != nullptr) {
      // Answered once the backups have its writes, off this thread
      // (ShardService::AnswerLater), while the stream reads on.
      service_->AnswerWhenReplicated(*pending, [this, message, pending] {
        std::vector<std::pair<int, absl::Status>> changed;
        absl::Status waited = service_->RunGuarded([&] {
          changed = pending->Finish();
          return absl::OkStatus();
        });
        if (!waited.ok()) {
          // Every write of the message gets the failure: none may be
          // answered OK without its backups.
          changed.clear();
          for (int i = 0; i < static_cast<int>(message->methods.size()); ++i) {
            changed.emplace_back(i, waited);
          }
        }
        Prepare(message, changed);
        Actions answered;
        {
          absl::MutexLock lock(&mu_);
          message->answered = true;
          DecideLocked(&answered);
        }
        Carry(std::move(answered));
      });
    }
    Carry(std::move(actions));
  }

  // Completes the message's results, each write's status replaced by
  // `changed`'s (its backups' or its lease's) where it has one, and
  // encodes its reply.
  void Prepare(Message* message, const std::vector<std::pair<int, absl::Status>>& changed) {
    for (const auto& [i, status] : changed) {
      VariableStore::SetBatchOpStatus(status, message->response.mutable_results(i));
    }
    if (RpcMetrics* const metrics = service_->op_metrics_; metrics != nullptr) {
      // Each op as the call it replaces, timed from the message's arrival
      // to its answer (the whole message's).
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                           message->received)
                                 .count();
      for (size_t i = 0; i < message->methods.size(); ++i) {
        metrics->RecordOp(message->methods[i], message->response.results(i).code(), seconds);
      }
    }
    service_->Release();
    // Big read and gather results go out from their own buffers.
    message->reply = EncodeBatchResponse(&message->response);
  }

  // Ends the stream with `status` once every message read is answered and
  // its reply written; none is read after this. For the message just read,
  // which does not run.
  void EndAfterReplies(const grpc::Status& status) {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      running_ = false;
      if (!end_.has_value()) end_ = status;
      DecideLocked(&actions);
    }
    Carry(std::move(actions));
  }

  // What the stream can start now: write the oldest reply if it is ready,
  // read the next message, or finish.
  void DecideLocked(Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    actions->decided = true;
    if (finished_) return;
    if (!end_.has_value() && service_->draining()) {
      // The drain's sweep passed this stream while it had messages in
      // progress: it ends as the sweep would have, after their replies
      // (the client goes on elsewhere in time).
      end_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, service_->who_ + " is shutting down");
    }
    if (write_failed_) {
      // Nobody reads the replies: answered messages just go.
      while (!messages_.empty() && messages_.front()->answered) messages_.pop_front();
    } else if (!writing_ && !messages_.empty() && messages_.front()->answered) {
      writing_ = true;
      actions->write = &messages_.front()->reply;
    }
    if (end_.has_value()) {
      // A message in progress (or just read) still uses the reactor, and
      // no read may be started after Finish.
      if (messages_.empty() && !running_ && !writing_ && !issuing_read_) {
        finished_ = true;
        actions->finish = *end_;
      }
      return;
    }
    if (reading_ || running_ || messages_.size() >= kMaxMessagesAwaiting) return;
    int64_t held = 0;
    for (const auto& message : messages_) held += message->result_bytes;
    if (held >= service_->store_->options().max_batch_result_bytes) return;
    reading_ = true;
    issuing_read_ = true;
    actions->read = true;
  }

  // Starts what DecideLocked chose, outside the lock.
  void Carry(Actions actions) {
    for (;;) {
      if (actions.finish.has_value()) {
        Finish(*actions.finish);
        return;  // OnDone may delete this at any time now
      }
      if (actions.write != nullptr) StartWrite(actions.write);
      if (!actions.read) return;
      StartRead(&received_bytes_);
      actions = Actions();
      {
        absl::MutexLock lock(&mu_);
        issuing_read_ = false;
        // An end decided while the read was being started waited for this.
        DecideLocked(&actions);
      }
    }
  }


  // The gates of the moving parts the message's writes change (none
  // unless a part of this shard is moving out).
  std::vector<std::shared_ptr<WriteGate>> MoveGatesOf(const BatchRequest& request) const {
    std::vector<std::shared_ptr<WriteGate>> gates;
    for (const BatchOp& op : request.ops()) {
      const std::string* name = nullptr;
      switch (op.op_case()) {
        case BatchOp::kAssign: name = &op.assign().name(); break;
        case BatchOp::kScatter: name = &op.scatter().name(); break;
        case BatchOp::kCountUpTo: name = &op.count_up_to().name(); break;
        case BatchOp::kApplyDense: name = &op.apply_dense().name(); break;
        case BatchOp::kApplySparse: name = &op.apply_sparse().name(); break;
        default: break;
      }
      if (name == nullptr) continue;
      std::shared_ptr<WriteGate> gate = service_->store_->MoveGateFor(*name);
      if (gate != nullptr && std::find(gates.begin(), gates.end(), gate) == gates.end()) {
        gates.push_back(std::move(gate));
      }
    }
    return gates;
  }

  static bool HasWrite(const BatchRequest& request) {
    for (const BatchOp& op : request.ops()) {
      if (op.op_case() != BatchOp::kRead && op.op_case() != BatchOp::kGather) return true;
    }
    return false;
  }

  // The unary method an op of a batch stands for, as metrics name it.
  static absl::string_view MethodOf(const BatchOp& op) {
    switch (op.op_case()) {
      case BatchOp::kAssign: return "psd.Shard/Assign";
      case BatchOp::kScatter: return "psd.Shard/Scatter";
      case BatchOp::kCountUpTo: return "psd.Shard/CountUpTo";
      case BatchOp::kRead: return "psd.Shard/Read";
      case BatchOp::kGather: return "psd.Shard/Gather";
      case BatchOp::kApplyDense: return "psd.Shard/ApplyDense";
      case BatchOp::kApplySparse: return "psd.Shard/ApplySparse";
      default: return "psd.Shard/Batch";
    }
  }

  ShardService* const service_;
  const CallerKey caller_;  // the batch's request ids are bound to it
  absl::Mutex mu_;
  // Read and not yet replied to, oldest first (the next reply to write).
  std::deque<std::unique_ptr<Message>> messages_ ABSL_GUARDED_BY(mu_);
  bool reading_ ABSL_GUARDED_BY(mu_) = false;       // a read is pending
  bool issuing_read_ ABSL_GUARDED_BY(mu_) = false;  // decided, StartRead not yet called
  // The message just read is being parsed, or is running its ops (or is
  // held by a write gate): no other read starts meanwhile.
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // a reply is on the wire
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  // How the stream ends once its messages are replied to; none: it goes on.
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish was (or is being) called
  grpc::ByteBuffer received_bytes_;  // the read in progress (the read path's alone)
};

// Streams an embedding table part's snapshot, a batch of rows a message.
class ExportEmbeddingReactor final : public SourceStreamReactor<EmbeddingRows> {
 public:
  ExportEmbeddingReactor(ShardService* service, const ExportEmbeddingRequest& request)
      : SourceStreamReactor(service) {
    Start([&] {
      PSD_ASSIGN_OR_RETURN(source_, service_->store_->BeginEmbeddingExport(request));
      return absl::OkStatus();
    });
  }

 private:
  absl::StatusOr<bool> Next(EmbeddingRows* rows) override { return source_->Next(rows); }

  std::unique_ptr<EmbeddingExportSource> source_;
};

grpc::ServerWriteReactor<EmbeddingRows>* ShardService::ExportEmbedding(
    grpc::CallbackServerContext* ctx, const ExportEmbeddingRequest* request) {
  return new ExportEmbeddingReactor(this, *request);
}

grpc::ServerUnaryReactor* ShardService::ImportEmbedding(grpc::CallbackServerContext* ctx,
                                                        const ImportEmbeddingRequest* request,
                                                        ImportEmbeddingResponse* response) {
  return ServeWrite(ctx, [this, request, response, caller = CallerKeyOf(*ctx)] {
    return store_->ImportEmbedding(*request, response, caller);
  });
}

grpc::ServerUnaryReactor* ShardService::DeleteEmbeddingKeys(
    grpc::CallbackServerContext* ctx, const DeleteEmbeddingKeysRequest* request,
    DeleteEmbeddingKeysResponse* response) {
  return ServeWrite(ctx, [this, request, response, caller = CallerKeyOf(*ctx)] {
    return store_->DeleteEmbeddingKeys(*request, response, caller);
  });
}

grpc::ServerUnaryReactor* ShardService::EvictEmbedding(grpc::CallbackServerContext* ctx,
                                                       const EvictEmbeddingRequest* request,
                                                       EvictEmbeddingResponse* response) {
  return ServeWrite(ctx, [this, request, response, caller = CallerKeyOf(*ctx)] {
    return store_->EvictEmbedding(*request, response, caller);
  });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ShardService::ReadStream(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request) {
  return new ReadStreamReactor(this, *request);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* ShardService::AssignStream(
    grpc::CallbackServerContext* ctx, grpc::ByteBuffer* response) {
  return new AssignStreamReactor(this, ctx, response);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ShardService::Batch(
    grpc::CallbackServerContext* ctx) {
  return new BatchReactor(this, CallerKeyOf(*ctx));
}

void ShardService::AddBatchStream(BatchReactor* stream) {
  {
    absl::MutexLock lock(&batch_streams_mu_);
    batch_streams_.insert(stream);
  }
  // A stream that came after the drain's sweep ends itself.
  if (draining() && stream->EndIfWaiting()) stream->EndNow(who_);
}

void ShardService::RemoveBatchStream(BatchReactor* stream) {
  absl::MutexLock lock(&batch_streams_mu_);
  batch_streams_.erase(stream);
}

void ShardService::StartDrain() {
  draining_.store(true);
  // Streams chosen under the lock stay alive until this Finish (their
  // OnDone needs it), so they are finished outside it.
  std::vector<BatchReactor*> ended;
  {
    absl::MutexLock lock(&batch_streams_mu_);
    for (BatchReactor* stream : batch_streams_) {
      if (stream->EndIfWaiting()) ended.push_back(stream);
    }
  }
  for (BatchReactor* stream : ended) stream->EndNow(who_);
}

grpc::ServerBidiReactor<NcclRequest, NcclReply>* ShardService::Nccl(
    grpc::CallbackServerContext* ctx) {
  absl::Status refuse;
  if (draining()) {
    refuse = absl::UnavailableError(absl::StrCat("shard ", shard_id_, " is shutting down"));
  } else if (nccl_plane_ == nullptr) {
    refuse = absl::UnimplementedError(
        absl::StrCat("shard ", shard_id_, " serves no NCCL data plane"));
  }
  return NewNcclSession(nccl_plane_, std::move(refuse));
}

grpc::ServerUnaryReactor* ShardService::Fence(grpc::CallbackServerContext* ctx,
                                              const FenceRequest* request,
                                              FenceResponse* response) {
  return ServeSlow(ctx, [this, request, response] {
    // A fence holds every write until its lease ends: a lease past the cap
    // would let one (mistaken or hostile) call stall training for as long.
    if (request->lease_ms() > absl::ToInt64Milliseconds(kMaxFenceLease) ||
        request->lease_ms() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("fence ", request->fence_id(), ": lease of ", request->lease_ms(),
                       " ms is not in [0, ", absl::ToInt64Milliseconds(kMaxFenceLease),
                       "] (0: the shard's default)"));
    }
    return checkpointer_.Fence(*request, response);
  });
}

grpc::ServerUnaryReactor* ShardService::Unfence(grpc::CallbackServerContext* ctx,
                                                const UnfenceRequest* request,
                                                UnfenceResponse* response) {
  return Serve(ctx, [&] { return checkpointer_.Unfence(*request, response); });
}

grpc::ServerUnaryReactor* ShardService::SaveShard(grpc::CallbackServerContext* ctx,
                                                  const SaveShardRequest* request,
                                                  SaveShardResponse* response) {
  return ServeSlow(ctx, [this, request, response] {
    return checkpointer_.SaveShard(*request, response);
  });
}

grpc::ServerUnaryReactor* ShardService::PrepareRestore(grpc::CallbackServerContext* ctx,
                                                       const PrepareRestoreRequest* request,
                                                       PrepareRestoreResponse* response) {
  return ServeSlow(ctx, [this, request, response] {
    return checkpointer_.PrepareRestore(*request, response);
  });
}

grpc::ServerUnaryReactor* ShardService::FinishRestore(grpc::CallbackServerContext* ctx,
                                                      const FinishRestoreRequest* request,
                                                      FinishRestoreResponse* response) {
  return ServeWrite(ctx, [this, request, response] { return checkpointer_.FinishRestore(*request, response); });
}

}  // namespace psd
