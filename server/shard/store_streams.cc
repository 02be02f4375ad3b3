// VariableStore's streams: a streamed read's source (a pinned snapshot) and
// a streamed assign's sink (staged, then committed under the lock).
#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard/store_internal.h"
#include "shard/variable_store.h"

namespace psd {

using store_internal::AllocateStaging;
using store_internal::ByteSize;
using store_internal::CheckInitialized;
using store_internal::DecodeStringsCharged;
using store_internal::Quoted;
using store_internal::RecycleContents;
using store_internal::RestoreResult;
using store_internal::SaveResult;

namespace {

// Streams a value as it was when the stream began: a fixed-size value
// through a pin (writers copy the chunks they change into it), a string
// value encoded at the start.
class SnapshotReadSource final : public ReadStreamSource {
 public:
  SnapshotReadSource(DataType dtype, TensorShape shape, uint64_t version,
                     std::shared_ptr<const ValuePin> pin, std::string encoded, int64_t chunk_bytes,
                     bool lend)
      : lend_(lend),
        dtype_(dtype),
        shape_(std::move(shape)),
        version_(version),
        pin_(std::move(pin)),
        encoded_(std::move(encoded)),
        chunk_bytes_(chunk_bytes),
        total_(dtype == DT_STRING ? static_cast<int64_t>(encoded_.size()) : pin_->byte_size()) {}

  void FillHeader(TensorChunk* chunk) const override {
    chunk->set_dtype(dtype_);
    ShapeToProto(shape_, chunk->mutable_shape());
    chunk->set_version(version_);
    chunk->set_total_bytes(total_);
  }

  int64_t NextSize() const override {
    // An empty value still sends one (header) chunk.
    if (offset_ >= total_ && sent_any_) return -1;
    return std::min(chunk_bytes_, total_ - offset_);
  }

  absl::StatusOr<int64_t> ReadNext(char* dst) override {
    const int64_t n = NextSize();
    if (n < 0) return absl::OutOfRangeError("the streamed read has sent every chunk");
    if (dtype_ == DT_STRING) {
      if (n > 0) std::memcpy(dst, encoded_.data() + offset_, n);
    } else {
      PSD_RETURN_IF_ERROR(pin_->Read(offset_, n, dst));
    }
    const int64_t offset = offset_;
    offset_ += n;
    sent_any_ = true;
    return offset;
  }

  absl::StatusOr<bool> LendNext(std::vector<LentBytes>* pieces, int64_t* offset) override {
    const int64_t n = NextSize();
    if (n < 0) return absl::OutOfRangeError("the streamed read has sent every chunk");
    if (dtype_ == DT_STRING || !lend_) return false;
    PSD_ASSIGN_OR_RETURN(*pieces, pin_->Lend(offset_, n));
    if (n > 0 && pieces->empty()) return false;  // not host memory: ReadNext
    *offset = offset_;
    offset_ += n;
    sent_any_ = true;
    return true;
  }

 private:
  const bool lend_;  // LendNext may lend the pinned bytes
  const DataType dtype_;
  const TensorShape shape_;
  const uint64_t version_;
  const std::shared_ptr<const ValuePin> pin_;  // fixed-size dtypes only
  const std::string encoded_;                 // DT_STRING only
  const int64_t chunk_bytes_;
  const int64_t total_;
  int64_t offset_ = 0;
  bool sent_any_ = false;
};

}  // namespace

absl::StatusOr<bool> ReadStreamSource::Next(TensorChunk* chunk) {
  const int64_t n = NextSize();
  if (n < 0) return false;
  std::string* content = chunk->mutable_content();
  content->resize(n);
  PSD_ASSIGN_OR_RETURN(const int64_t offset, ReadNext(content->data()));
  chunk->set_offset(offset);
  return true;
}

absl::StatusOr<std::unique_ptr<ReadStreamSource>> VariableStore::BeginReadStream(
    const ReadStreamRequest& request) const {
  PSD_RETURN_IF_ERROR(CheckIncarnation(request.shard_incarnation()));
  PSD_ASSIGN_OR_RETURN(auto var, Find(request.name()));
  int64_t chunk = request.chunk_bytes() > 0 ? request.chunk_bytes() : options_.default_chunk_bytes;
  chunk = std::max<int64_t>(1, std::min<int64_t>(chunk, options_.max_unary_value_bytes));
  absl::ReaderMutexLock lock(&var->mu);
  PSD_RETURN_IF_ERROR(CheckInitialized(*var));
  std::string encoded;
  std::shared_ptr<const ValuePin> pin;
  bool lend = false;
  if (var->dtype == DT_STRING) {
    encoded = EncodeStrings(var->contents->strings);
  } else {
    pin = var->Pin(device_, options_.cow_chunk_bytes);
    // A write to a lent chunk moves the variable to new storage (see
    // Variable::CopyOnWrite): lend only while the memory limit leaves room
    // for that copy, so lending never makes a write fail for memory where
    // copying chunks to the send slices (as otherwise) would not.
    lend = memory_.limit() <= 0 || memory_.limit() - memory_.used() >= pin->byte_size();
  }
  return std::unique_ptr<ReadStreamSource>(new SnapshotReadSource(
      var->dtype, var->shape, var->version, std::move(pin), std::move(encoded), chunk, lend));
}

// Stages a streamed value in its own buffer (accounted against the memory
// limit) and applies it under the variable's lock at Commit. A streamed
// apply's gradient is staged in host memory, where the optimizer kernels
// read their gradient on every device (as they read a unary request's).
// Staging buffers come from the store's StagingPool and go back to it when
// the sink ends (committed or not); an assign's staged buffer becomes the
// value, and the value it replaces goes to the pool instead. A pooled
// buffer is not zeroed: Commit applies only when every byte was written.
//
// A value bigger than logged_chunk_bytes, to a group with moves or
// follows, is logged in chunks (proto StagedChunk): a follow's as the bytes
// arrive (its backup pulls and stages them while the client still sends),
// the rest at the commit, then one small commit entry. That holds for
// every streamed write but a create: assigns of any dtype (strings as
// their wire encoding) and applies (the gradient), whatever their size,
// since no pull carries more than a chunk of them. A stream that does not
// commit logs an abort for the chunks logged. On a move's target the same
// sink stages the chunks (`replay`) and commits at the commit entry, with
// its request id (and for an apply, its optimizer with the beta powers the
// source read), through the same Apply. A smaller value is logged at the
// commit, whole: an assign as the AssignRequest, an apply as the
// ApplyDenseRequest with its gradient, replayed as the unary ops are.
class StagedAssignSink final : public AssignStreamSink {
 public:
  StagedAssignSink(VariableStore* store, AssignStreamHeader header, TensorShape shape,
                   UpdateKind kind, CallerKey caller, bool replay)
      : store_(store),
        header_(std::move(header)),
        shape_(std::move(shape)),
        kind_(kind),
        replay_(replay),
        caller_(caller),
        request_id_(header_.request_id()) {}

  ~StagedAssignSink() override {
    if (registered_ && !finished_) store_->requests_.Abandon(request_id_);
    AbortLoggedChunks();
    ReturnHost();
    store_->pool_.Recycle(store_->device_, std::move(staged_.buffer),
                          std::move(staged_.reservation));
  }

  // Checks `header` and makes its sink (BeginAssignStream's body); a
  // replayed one registers its request id only at CommitReplayed.
  static absl::StatusOr<std::unique_ptr<StagedAssignSink>> Begin(VariableStore* store,
                                                                 const AssignStreamHeader& header,
                                                                 CallerKey caller, bool replay);

  // A target's commit of a chunked logged value: the commit entry's
  // request id and caller (and an apply's optimizer, with the beta powers
  // its source read as values), then Commit as on the source.
  absl::Status CommitReplayed(const RequestId& id, CallerKey caller, const ApplyDenseRequest* apply,
                              AssignResponse* response) {
    request_id_ = id;
    caller_ = caller;
    if (apply != nullptr) replayed_apply_ = *apply;
    PSD_RETURN_IF_ERROR(Register());
    return Commit(response);
  }

  // Registers the request id; a duplicate makes the sink answer from the
  // cache and ignore the bytes. A duplicate of an attempt still running is
  // UNAVAILABLE (the client retries), not waited for: this runs on a gRPC
  // callback thread, and a cut attempt can stay running until its deadline
  // (gRPC may not end it when its connection is reset mid-message); waiting
  // retries held every callback thread and stalled the whole shard.
  // A replayed write is never refused as too old (RequestWindow::Begin);
  // nothing else runs it on a target, so nothing is waited for.
  absl::Status Register() {
    if (request_id_.client_id() == 0) return absl::OkStatus();
    PSD_ASSIGN_OR_RETURN(cached_, store_->requests_.Begin(
                                      request_id_, caller_, /*wait_for_running=*/replay_,
                                      /*replay=*/replay_, RequestWindow::ScopeOf(header_.name())));
    registered_ = !cached_.has_value();
    return absl::OkStatus();
  }

  absl::Status Stage() {
    if (cached_.has_value()) return absl::OkStatus();
    const std::string& name = header_.name();
    if (StagesOnHost()) {
      PSD_ASSIGN_OR_RETURN(host_, store_->pool_.Acquire(store_->host_device_,
                                                        header_.total_bytes(), name,
                                                        &host_reservation_));
      return absl::OkStatus();
    }
    PSD_ASSIGN_OR_RETURN(staged_, AllocateStaging(&store_->pool_, store_->device_,
                                                  header_.dtype(), shape_, name));
    return absl::OkStatus();
  }

  absl::Status Append(absl::string_view bytes) override {
    if (cached_.has_value()) return absl::OkStatus();
    if (static_cast<int64_t>(bytes.size()) > header_.total_bytes() - received_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "streamed value for ", Quoted(header_.name()), ": more than the announced ",
          header_.total_bytes(), " bytes"));
    }
    if (StagesOnHost()) {
      // Host memory (a CPU device's buffer): written in place.
      if (!bytes.empty()) {
        std::memcpy(static_cast<char*>(host_->data()) + received_, bytes.data(), bytes.size());
      }
    } else {
      PSD_RETURN_IF_ERROR(store_->device_->CopyFromHost(bytes.data(), bytes.size(),
                                                        staged_.buffer.get(), received_));
    }
    received_ += static_cast<int64_t>(bytes.size());
    return LogChunksAhead();
  }

  absl::Status Commit(AssignResponse* response) override {
    // A fence holds the commit, not the staging before it (nor the wait
    // for the backups: CommitLogged lets the pass go first).
    std::optional<WriteGate::Pass> pass(&store_->gate_);
    // Before the apply looks its variable up (LeaseHeldToAnswer).
    lease_term_ = store_->LeaseTerm();
    // A group that moves out or has backups gets the assign logged with its
    // value, and an apply with its gradient, whole or in chunks (see the
    // class comment); what cannot be (see Forwardable) ends the move or
    // follow first, see Apply.
    if (!replay_ && Forwardable() &&
        store_->moving_out_count_.load(std::memory_order_acquire) > 0) {
      std::vector<std::shared_ptr<MoveOut>> moves = store_->MovingOut(header_.name());
      if (!moves.empty()) return CommitLogged(moves, response, &pass);
    }
    if (cached_.has_value()) {
      RestoreResult(*cached_, response);
      // A retry answered from the window is answered under the lease, as
      // the write itself was.
      if (cached_->status.ok()) {
        PSD_RETURN_IF_ERROR(store_->LeaseHeldToAnswer(header_.name(), lease_term_));
      }
      return cached_->status;
    }
    if (received_ != header_.total_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "streamed value for ", Quoted(header_.name()), " ended after ", received_, " of ",
          header_.total_bytes(), " bytes; nothing was changed"));
    }
    RequestWindow::Result result;
    result.scope = RequestWindow::ScopeOf(header_.name());
    result.status = Apply(response);
    if (registered_ && (absl::IsUnavailable(result.status) ||
                        (absl::IsAborted(result.status) &&
                         absl::StrContains(result.status.message(), "stale handle")))) {
      // "Not now" or "not here" answers ran nothing (e.g. its backups could
      // not be ended because the coordinator was unreachable, or the part
      // is switching shards): the id is not recorded, so the retry runs it
      // (as RunOnce does), instead of getting this answer forever.
      store_->requests_.Abandon(request_id_);
      finished_ = true;
      return result.status;
    }
    if (registered_) {
      SaveResult(*response, &result);
      store_->requests_.Finish(request_id_, result);
      finished_ = true;
    }
    if (result.status.ok()) {
      PSD_RETURN_IF_ERROR(store_->LeaseHeldToAnswer(header_.name(), lease_term_));
    }
    return result.status;
  }

 private:
  bool StagesOnHost() const { return header_.dtype() == DT_STRING || header_.has_apply(); }

  // Whether a move's or backup's log can take this write. A pull's answer
  // carries a logged write, or a chunk of one, whole, within the shards'
  // message limit: a value over logged_chunk_bytes goes in chunks, so only
  // a chunk size set above that limit leaves a value too big to log. A
  // create is no write to an existing part (a restore's or an import's).
  bool Forwardable() const {
    if (header_.has_create()) return false;
    const int64_t limit = store_->options().max_unary_value_bytes;
    return header_.total_bytes() <= limit || (Chunkable() && ChunkBytes() <= limit);
  }

  // Big enough to go in chunks.
  bool Chunkable() const { return header_.total_bytes() > ChunkBytes(); }

  // Logged in chunks rather than whole (see the class comment).
  bool LogsChunks() const {
    return !replay_ && !cached_.has_value() && Forwardable() && Chunkable();
  }
  int64_t ChunkBytes() const { return std::max<int64_t>(1, store_->options().logged_chunk_bytes); }

  // The bytes received from `offset` on, copied to `out` (`n` of them):
  // from the host staging, or from the device's.
  absl::Status CopyReceived(int64_t offset, int64_t n, char* out) const {
    if (n == 0) return absl::OkStatus();
    if (StagesOnHost()) {
      std::memcpy(out, static_cast<const char*>(host_->data()) + offset, static_cast<size_t>(n));
      return absl::OkStatus();
    }
    return store_->device_->CopyToHost(*staged_.buffer, static_cast<size_t>(offset),
                                       static_cast<size_t>(n), out);
  }

  // Where the chunks logged for one move stand.
  struct ChunkLog {
    std::shared_ptr<MoveOut> move;
    int64_t logged = 0;    // bytes logged, from 0
    bool closed = false;   // committed (or the move ended): nothing to abort
  };

  ChunkLog* ChunkLogFor(const std::shared_ptr<MoveOut>& move) {
    for (ChunkLog& c : chunk_logs_) {
      if (c.move == move) return &c;
    }
    chunk_logs_.push_back(ChunkLog{move});
    return &chunk_logs_.back();
  }

  // Logs the chunks of `log`'s move from where it stands up to `end` (whole
  // chunks only, unless `end` is the value's end). False when one was not
  // logged: the move ended (`fail_when_full`: it failed for want of room)
  // or its log had no room.
  absl::StatusOr<bool> LogChunks(ChunkLog* log, int64_t end, bool fail_when_full) {
    const int64_t chunk = ChunkBytes();
    while (log->logged < end &&
           (end - log->logged >= chunk || end == header_.total_bytes())) {
      const int64_t n = std::min(chunk, end - log->logged);
      // Every log takes a chunk at the same offsets: encoded for the first
      // log that takes it, shared by the others.
      if (last_chunk_.offset != log->logged || last_chunk_.bytes != n) {
        // Two logs stalled at different offsets would each re-encode (copy)
        // a chunk per message received until one drained: a log that has
        // no room for the chunk is not given one to refuse.
        if (!fail_when_full && !store_->MoveLogMayTake(log->move.get(), n)) return false;
        MoveWrite write;
        write.set_caller(caller_);
        StagedChunk* c = write.mutable_chunk();
        c->set_staged_id(staged_id_);
        c->set_offset(log->logged);
        if (log->logged == 0) {
          AssignStreamHeader* h = c->mutable_header();
          *h = header_;
          h->clear_request_id();  // the commit entry's
          h->clear_shard_incarnation();
        }
        char* content;
        grpc::Slice body =
            EncodeLoggedWithContent(write, kLoggedChunkContent, static_cast<size_t>(n), &content);
        PSD_RETURN_IF_ERROR(CopyReceived(log->logged, n, content));
        last_chunk_ = {log->logged, n, std::move(body)};
      }
      if (store_->LogMoveEntry(log->move.get(), last_chunk_.body, /*abort=*/false, header_.name(),
                               fail_when_full) == 0) {
        return false;
      }
      log->logged += n;
    }
    return true;
  }

  // A follow's chunks as the bytes arrive, so its backup stages them while
  // the client still sends (a move's target gets them at the commit).
  absl::Status LogChunksAhead() {
    if (!LogsChunks() || store_->moving_out_count_.load(std::memory_order_acquire) == 0) {
      return absl::OkStatus();
    }
    if (staged_id_ == 0) staged_id_ = store_->next_staged_id_.fetch_add(1);
    for (const std::shared_ptr<MoveOut>& move : store_->MovingOut(header_.name())) {
      if (!move->follow) continue;
      ChunkLog* log = ChunkLogFor(move);
      if (log->closed) continue;
      // A log with no room now (its backup lags by its cap) takes the
      // chunks later, as its backup drains it: at a later Append, or the
      // rest at the commit. A value over the cap thus reaches a backup
      // that keeps up.
      PSD_RETURN_IF_ERROR(LogChunks(log, received_, /*fail_when_full=*/false).status());
    }
    return absl::OkStatus();
  }

  // Chunks logged for a write that did not commit: each target drops them.
  void AbortLoggedChunks() {
    for (ChunkLog& log : chunk_logs_) {
      if (log.closed || log.logged == 0) continue;
      MoveWrite write;
      write.mutable_chunk()->set_staged_id(staged_id_);
      write.mutable_chunk()->set_abort(true);
      store_->LogMoveEntry(log.move.get(), std::move(write), header_.name(),
                           /*fail_when_full=*/false);
      log.closed = true;
    }
  }

  // The host staging buffer, back to the pool.
  void ReturnHost() {
    store_->pool_.Recycle(store_->host_device_, std::move(host_), std::move(host_reservation_));
  }

  absl::string_view HostBytes() const {
    return absl::string_view(static_cast<const char*>(host_->data()), received_);
  }

  // Commit for a group with moves or follows: applied and logged, as an
  // AssignRequest with the staged value (or an ApplyDenseRequest with the
  // staged gradient and the beta powers it read, as the unary ApplyDense
  // is logged), under their order locks, then
  // answered once the in-sync backups have it (VariableStore::Mutate's
  // way, for a value that came in a stream).
  // `pass` (the write gate's) is let go before the wait for the backups,
  // as Mutate does: a backup's replay takes its own shard's gate, and a
  // save fencing both must not stall on this wait.
  absl::Status CommitLogged(const std::vector<std::shared_ptr<MoveOut>>& moves,
                            AssignResponse* response, std::optional<WriteGate::Pass>* pass) {
    const std::string& name = header_.name();
    std::vector<VariableStore::BackupWait> waits;
    std::vector<std::shared_ptr<MoveOut>> unlogged;  // chunks not all logged: the move ends
    absl::Status status = [&]() -> absl::Status {
      store_internal::OrderLocks order(moves);
      std::vector<std::shared_ptr<MoveOut>> logging;
      for (const std::shared_ptr<MoveOut>& move : moves) {
        PSD_ASSIGN_OR_RETURN(const bool log, store_->AdmitMovingWrite(move.get(), name, ""));
        if (log) {
          logging.push_back(move);
        } else if (move->follow) {
          // Ended while in sync: nothing is answered before it is out of
          // the in-sync set (as in Mutate).
          waits.push_back({move, ~uint64_t{0}});
        }
      }
      if (cached_.has_value()) {
        RestoreResult(*cached_, response);
        for (const std::shared_ptr<MoveOut>& move : logging) {
          if (move->follow) waits.push_back({move, store_internal::LoggedSeq(move.get())});
        }
        return cached_->status;
      }
        if (received_ != header_.total_bytes()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "streamed value for ", Quoted(name), " ended after ", received_, " of ",
              header_.total_bytes(), " bytes; nothing was changed"));
        }
        // The write as the backups replay it (the value copied before
        // Apply takes the staged buffer).
        BatchOp logged;
        TensorProto* value;
        if (header_.has_apply()) {
          ApplyDenseRequest* apply = logged.mutable_apply_dense();
          *apply = header_.apply();  // its slots and optimizer
          apply->set_name(name);
          *apply->mutable_request_id() = request_id_;
          value = apply->mutable_gradient();
        } else {
          AssignRequest* assign = logged.mutable_assign();
          assign->set_name(name);
          assign->set_op(header_.op());
          assign->set_validate_shape(header_.validate_shape());
          assign->set_if_uninitialized(header_.if_uninitialized());
          *assign->mutable_request_id() = request_id_;
          value = assign->mutable_value();
        }
        value->set_dtype(header_.dtype());
        *value->mutable_shape() = header_.shape();
        // The entry every log takes, encoded once: an assign's value is
        // copied into it before Apply takes the staged buffer; an apply's
        // gradient (staged on the host, kept until the sink goes) after,
        // with the beta powers Apply read.
        std::optional<grpc::Slice> body;
        const bool chunked = LogsChunks();
        if (chunked) {
          // Each log gets the chunks it lacks (all of them for a move, or
          // a follow that began during the stream), then the commit entry.
          // A log with no room for them ends its move, but only once the
          // write went ahead (a write that fails ends nothing).
          if (staged_id_ == 0) staged_id_ = store_->next_staged_id_.fetch_add(1);
          for (const std::shared_ptr<MoveOut>& move : logging) {
            ChunkLog* log = ChunkLogFor(move);
            PSD_ASSIGN_OR_RETURN(const bool logged_all,
                                 LogChunks(log, received_, /*fail_when_full=*/false));
            if (!logged_all) unlogged.push_back(move);
          }
        } else if (!logging.empty() && !header_.has_apply()) {
          MoveWrite write;
          write.set_caller(caller_);
          *write.mutable_op() = logged;
          char* content;
          body = EncodeLoggedWithContent(write, kLoggedAssignValue,
                                         static_cast<size_t>(received_), &content);
          PSD_RETURN_IF_ERROR(CopyReceived(0, received_, content));
        }
        RequestWindow::Result result;
        result.scope = RequestWindow::ScopeOf(header_.name());
        forwarded_ = true;
        VariableStore::PowersRead powers;
        result.status = Apply(response, &powers);
        if (header_.has_apply()) {
          powers.ReplaceNames(logged.mutable_apply_dense()->mutable_optimizer());
        }
        if (registered_) {
          SaveResult(*response, &result);
          store_->requests_.Finish(request_id_, result);
          finished_ = true;
        }
        if (!result.status.ok()) return result.status;  // changed nothing
        for (const std::shared_ptr<MoveOut>& move : unlogged) {
          store_->FailMoveOut(move.get(), absl::ResourceExhaustedError(absl::StrCat(
                                              "move ", absl::Hex(move->id),
                                              " was given up: no room in its log for a value of ",
                                              received_, " bytes")));
          ChunkLogFor(move)->closed = true;  // no log left to abort in
          if (move->follow) waits.push_back({move, ~uint64_t{0}});
          logging.erase(std::find(logging.begin(), logging.end(), move));
        }
        if (!body.has_value() && !logging.empty()) {
          MoveWrite write;
          write.set_caller(caller_);
          *write.mutable_op() = std::move(logged);
          if (chunked) {
            // The commit entry: the value is the chunks logged before it.
            write.set_staged_id(staged_id_);
            body = EncodeLoggedWrite(write);
          } else {
            char* content;
            body = EncodeLoggedWithContent(write, kLoggedApplyGradient, HostBytes().size(),
                                           &content);
            std::memcpy(content, HostBytes().data(), HostBytes().size());
          }
        }
        last_chunk_ = EncodedChunk();  // every log has its chunks
        for (const std::shared_ptr<MoveOut>& move : logging) {
          if (chunked) ChunkLogFor(move)->closed = true;  // committed, or the move failed
          const uint64_t seq = store_->LogMoveEntry(move.get(), *body, /*abort=*/false, name,
                                                    /*fail_when_full=*/true);
          if (move->follow) waits.push_back({move, seq == 0 ? ~uint64_t{0} : seq});
        }
        return result.status;
    }();
    pass->reset();
    // On every path (a failed commit too): an ended follow is out of the
    // in-sync set before anything is answered; the answer stays the
    // commit's own. Waited for later, off the stream's thread, when the
    // caller keeps the answers (DeferredAnswers), as Mutate's writes are.
    return store_->AnswerLogged(&waits, name, lease_term_, std::move(status));
  }

  // `powers` (an apply's): the beta powers it read, for its logged copy.
  absl::Status Apply(AssignResponse* response, VariableStore::PowersRead* powers = nullptr) {
    const std::string& name = header_.name();
    if (!forwarded_) {
      const std::string what =
          header_.has_create()
              ? std::string("a streamed create")
              : absl::StrCat("a streamed ", header_.has_apply() ? "apply" : "assign", " of ",
                             header_.total_bytes(), " bytes (logged_chunk_bytes ", ChunkBytes(),
                             " is more than one pull of the log carries, ",
                             store_->options().max_unary_value_bytes, ")");
      PSD_RETURN_IF_ERROR(store_->NoteUnforwardedWrite(name, what));
    }
    if (header_.has_apply()) {
      // The unary ApplyDense's update, with the staged gradient.
      const ApplyDenseRequest& apply =
          replayed_apply_.has_value() ? *replayed_apply_ : header_.apply();
      VariableStore::DenseGradient gradient;
      gradient.dtype = header_.dtype();
      gradient.shape = shape_;
      gradient.data = host_->data();
      uint64_t version = 0;
      PSD_RETURN_IF_ERROR(store_->ApplyOnce(name, apply.slots(), apply.optimizer(), &gradient,
                                            nullptr, &version, /*check_only=*/false, powers));
      response->set_version(version);
      return absl::OkStatus();
    }
    if (header_.dtype() == DT_STRING) {
      staged_.shape = shape_;
      PSD_ASSIGN_OR_RETURN(staged_.strings,
                           DecodeStringsCharged(&store_->memory_, HostBytes(),
                                                shape_.num_elements(),
                                                absl::StrCat("streamed value for ", Quoted(name)),
                                                name, &staged_.reservation));
      ReturnHost();
    }
    if (header_.has_create()) return Create(response);

    PSD_ASSIGN_OR_RETURN(auto var, store_->Find(name));
    absl::MutexLock lock(&var->mu);
    if (kind_ == UpdateKind::kAssign) {
      if (header_.validate_shape() && shape_ != var->shape) {
        return absl::InvalidArgumentError(absl::StrCat("assign: ", Quoted(name), " has shape ",
                                                       var->shape.ToString(), ", value has shape ",
                                                       shape_.ToString()));
      }
      if (header_.if_uninitialized() && var->initialized) {
        response->set_version(var->version);
        response->set_skipped(true);
        return absl::OkStatus();
      }
      RecycleContents(&store_->pool_, store_->device_, var->Swap(std::move(staged_)));
      var->DropInitialValue();
    } else {
      PSD_RETURN_IF_ERROR(CheckInitialized(*var));
      if (shape_ != var->shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            AssignOpName(kind_), ": ", Quoted(name), " has shape ", var->shape.ToString(),
            ", value has shape ", shape_.ToString()));
      }
      PSD_RETURN_IF_ERROR(var->CopyOnWrite(&store_->memory_, WriteExtent::All()));
      // The staging buffer lives on the device (GPU memory on a GPU shard).
      PSD_RETURN_IF_ERROR(store_->device_->ApplyDenseFromBuffer(
          var->dtype, kind_, var->contents->buffer.get(), *staged_.buffer,
          shape_.num_elements()));
    }
    var->initialized = true;
    ++var->version;
    response->set_version(var->version);
    return absl::OkStatus();
  }

  // A streamed create: the declaration, validated at Begin, with the staged
  // value; inserted only now so a broken stream leaves no variable behind.
  absl::Status Create(AssignResponse* response) {
    const CreateVariableRequest& decl = header_.create();
    auto var = std::make_shared<Variable>(decl.name(), decl.dtype(), shape_, shape_,
                                          std::vector<int64_t>(shape_.rank(), 0),
                                          InitializerSpec(), nullptr);
    var->replicated.store(decl.replicated(), std::memory_order_release);
    {
      absl::MutexLock lock(&var->mu);
      var->Swap(std::move(staged_));
      var->initialized = true;
    }
    absl::MutexLock lock(&store_->mu_);
    if (!store_->variables_.emplace(decl.name(), var).second) {
      return absl::AlreadyExistsError(absl::StrCat(Quoted(decl.name()), " already exists"));
    }
    store_->moved_away_.erase(decl.name());
    response->set_version(0);
    return absl::OkStatus();
  }

  VariableStore* const store_;
  const AssignStreamHeader header_;
  const TensorShape shape_;
  const UpdateKind kind_;
  const bool replay_;      // a target's copy of a chunked logged value
  // A target's apply: the commit entry's slots and optimizer (its beta
  // powers as values), which replace the header's.
  std::optional<ApplyDenseRequest> replayed_apply_;
  CallerKey caller_;       // the request id is bound to it
  RequestId request_id_;   // the header's; on a target, the commit entry's
  uint64_t staged_id_ = 0;  // StagedChunk.staged_id once chunks are logged
  std::vector<ChunkLog> chunk_logs_;
  // The chunk encoded last (LogChunks), for the next log that takes it.
  struct EncodedChunk {
    int64_t offset = -1;
    int64_t bytes = 0;
    grpc::Slice body;
  };
  EncodedChunk last_chunk_;
  std::optional<RequestWindow::Result> cached_;  // set for a duplicate
  bool registered_ = false;
  bool finished_ = false;
  bool forwarded_ = false;  // logged by CommitLogged: not an unforwarded write
  uint64_t lease_term_ = 0;  // the lease's term when Commit began
  int64_t received_ = 0;
  Variable::Contents staged_;
  // Staged on the host: DT_STRING's encoding, or an apply's gradient (a
  // buffer of host_device_, total_bytes long).
  std::unique_ptr<DeviceBuffer> host_;
  MemoryReservation host_reservation_;
};

absl::StatusOr<std::unique_ptr<AssignStreamSink>> VariableStore::BeginAssignStream(
    const AssignStreamHeader& header, CallerKey caller) {
  PSD_ASSIGN_OR_RETURN(auto sink, StagedAssignSink::Begin(this, header, caller, /*replay=*/false));
  return std::unique_ptr<AssignStreamSink>(std::move(sink));
}

absl::StatusOr<std::unique_ptr<AssignStreamSink>> VariableStore::BeginReplayedAssign(
    const AssignStreamHeader& header) {
  if (header.has_create()) {
    return absl::DataLossError(absl::StrCat("a chunked logged write to ", Quoted(header.name()),
                                            " is a create, which is never logged"));
  }
  PSD_ASSIGN_OR_RETURN(auto sink, StagedAssignSink::Begin(this, header, kAnonymousCaller,
                                                          /*replay=*/true));
  return std::unique_ptr<AssignStreamSink>(std::move(sink));
}

absl::Status VariableStore::CommitReplayedAssign(AssignStreamSink* sink, const MoveWrite& commit) {
  const RequestId& id = commit.op().has_apply_dense() ? commit.op().apply_dense().request_id()
                                                      : commit.op().assign().request_id();
  AssignResponse response;
  return static_cast<StagedAssignSink*>(sink)->CommitReplayed(
      id, commit.caller(), commit.op().has_apply_dense() ? &commit.op().apply_dense() : nullptr,
      &response);
}

absl::StatusOr<std::unique_ptr<StagedAssignSink>> StagedAssignSink::Begin(
    VariableStore* store, const AssignStreamHeader& header, CallerKey caller, bool replay) {
  PSD_RETURN_IF_ERROR(store->CheckIncarnation(header.shard_incarnation()));
  const std::string& name = header.name();
  const std::string what = absl::StrCat("streamed value for ", Quoted(name));
  PSD_ASSIGN_OR_RETURN(UpdateKind kind, UpdateKindFromWire(header.op(), name));
  PSD_RETURN_IF_ERROR(ValidateDataType(header.dtype(), what));
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromProto(header.shape(), what));
  const int64_t n = shape.num_elements();
  if (header.dtype() == DT_STRING) {
    if (header.total_bytes() < n) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", header.total_bytes(),
                                                     " bytes cannot encode ", n, " strings"));
    }
  } else {
    PSD_ASSIGN_OR_RETURN(int64_t bytes, ByteSize(n, DataTypeSize(header.dtype()), name));
    if (header.total_bytes() != bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": total_bytes is ", header.total_bytes(), ", but ",
          DataTypeName(header.dtype()), shape.ToString(), " needs ", bytes));
    }
  }
  if (header.if_uninitialized() && (kind != UpdateKind::kAssign || !header.validate_shape() ||
                                    header.has_create() || header.has_apply())) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": if_uninitialized is an initialization of an existing variable, an assign "
              "that keeps the shape"));
  }
  if (header.has_apply()) {
    const ApplyDenseRequest& apply = header.apply();
    if (header.has_create() || kind != UpdateKind::kAssign ||
        (!apply.name().empty() && apply.name() != name) || apply.has_gradient() ||
        apply.has_request_id() || apply.shard_incarnation() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a streamed apply's gradient is the streamed value and its name, request id "
                "and incarnation are the header's; `apply` gives only the slots and optimizer"));
    }
    // Every check of the apply, now, so a bad one fails before its bytes
    // travel; Commit runs them again with the variables locked. Not on a
    // target: its source checked the apply, and the beta powers it names
    // may live on no shard but the source's (the commit entry carries the
    // values read).
    if (!replay) {
      VariableStore::DenseGradient gradient;
      gradient.dtype = header.dtype();
      gradient.shape = shape;
      uint64_t version = 0;
      PSD_RETURN_IF_ERROR(store->ApplyOnce(name, apply.slots(), apply.optimizer(), &gradient,
                                           nullptr, &version, /*check_only=*/true));
    }
  } else if (header.has_create()) {
    const CreateVariableRequest& decl = header.create();
    PSD_RETURN_IF_ERROR(ValidateVariableName(decl.name()));
    if (decl.name() != name || decl.dtype() != header.dtype() || kind != UpdateKind::kAssign ||
        decl.has_initial_value() || decl.has_initializer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a streamed create must assign the declared variable's dtype with no other "
                "initial value or initializer"));
    }
    PSD_ASSIGN_OR_RETURN(TensorShape declared, ShapeFromProto(decl.shape(), what));
    if (declared != shape) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has shape ", shape.ToString(),
                                                     ", declaration has ", declared.ToString()));
    }
    absl::ReaderMutexLock lock(&store->mu_);
    if (store->variables_.count(name) > 0 && header.request_id().client_id() == 0) {
      return absl::AlreadyExistsError(absl::StrCat(Quoted(name), " already exists"));
    }
  } else {
    PSD_ASSIGN_OR_RETURN(auto var, store->Find(name));
    if (kind != UpdateKind::kAssign && !IsNumeric(var->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(AssignOpName(kind),
                                                     " is not supported for ", Quoted(name),
                                                     " of dtype ", DataTypeName(var->dtype)));
    }
    if (header.dtype() != var->dtype) {
      return absl::InvalidArgumentError(absl::StrCat(AssignOpName(kind), ": ",
                                                     Quoted(name), " is ",
                                                     DataTypeName(var->dtype), ", value is ",
                                                     DataTypeName(header.dtype())));
    }
  }
  auto sink =
      std::make_unique<StagedAssignSink>(store, header, std::move(shape), kind, caller, replay);
  if (!replay) PSD_RETURN_IF_ERROR(sink->Register());
  PSD_RETURN_IF_ERROR(sink->Stage());
  return sink;
}


}  // namespace psd
