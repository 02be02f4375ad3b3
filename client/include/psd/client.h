// ShardClient: the C++ client of one psd shard (service psd::Shard). Each
// variable op is one RPC (or, for values bigger than
// ClientOptions::stream_threshold_bytes, one chunked stream) and returns the
// shard's status, so errors carry the codes of docs/design.md, "Errors" (NOT_FOUND
// for an unknown variable, INVALID_ARGUMENT for a bad shape, dtype or index,
// ...).
//
// Retries. Every mutating request (Create, Delete, Initialize, Assign*,
// Scatter*, CountUpTo, streamed assigns, and ShardApplier's applies) carries
// a fresh RequestId: a random 64-bit id of this client process (one for all
// of the process's clients, so they take one of a shard's exactly-once
// client slots) and a process-wide sequence number. Calls
// that fail with UNAVAILABLE or DEADLINE_EXCEEDED are retried with
// exponential backoff and jitter (ClientOptions::max_attempts,
// retry_budget) with the SAME id, so the shard applies each mutation at most
// once and a retried count_up_to returns the same old value. Reads and
// gathers are retried too (they are idempotent). A retry that falls out of
// the shard's window of recent ids fails with ABORTED "request id too old":
// the op's outcome is then unknown. (A first attempt refused that way was
// never applied and is resent under a fresh id: that happens when other
// threads sent over a window's worth of requests meanwhile.)
//
// Stale handles. Connect records the shard's incarnation (random per shard
// process start) and every data request carries it. A shard that restarted
// (and so lost its memory) answers ABORTED "stale handle" without applying
// anything; this client returns that to the caller and never re-handshakes
// on its own. The coordinator-level client refreshes its handle and makes a
// new ShardClient; a caller talking to shards directly does the same
// (Connect again).
//
// A call the shard's gRPC cancels (it does so to calls that arrive while the
// shard drains for shutdown, before they run) is reported as UNAVAILABLE,
// the code of "shard down", and retried like one.
//
// Async ops (ReadAsync, AssignAddAsync, ...) return std::future and run on
// gRPC's callback API, retries included (a per-client timer thread starts
// the retries, so no gRPC thread sleeps). Async ops on values above the
// stream threshold run the streaming path on a thread of their own.
// OpenBatch opens a BatchStream (below) for many small ops per message.
//
// Thread-safety: a ShardClient is thread-safe. It owns one gRPC channel and
// any number of threads may call any method concurrently; every op is atomic
// on its variable on the shard. The destructor waits for outstanding async
// ops to finish and for the client's BatchStreams to be destroyed: destroy
// those first.
//
// Usage:
//
//   PSD_ASSIGN_OR_RETURN(auto shard, psd::client::ShardClient::Connect("127.0.0.1:7000"));
//   PSD_RETURN_IF_ERROR(shard->Create("w", psd::DT_FLOAT, psd::TensorShape{784, 10},
//                                     psd::client::init::TruncatedNormal(0, 0.1, /*seed=*/1))
//                           .status());
//   PSD_RETURN_IF_ERROR(shard->AssignAdd("w", delta));
//   PSD_ASSIGN_OR_RETURN(psd::Tensor w, shard->Read("w"));
//
//   std::vector<std::future<absl::Status>> pending;
//   for (auto& g : grads) pending.push_back(shard->AssignSubAsync("w", std::move(g)));
//   for (auto& f : pending) PSD_RETURN_IF_ERROR(f.get());
//
// gRPC stays out of this header (the implementation holds the channel), so
// including it is cheap.
#ifndef PSD_CLIENT_CLIENT_H_
#define PSD_CLIENT_CLIENT_H_

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "psd/channel_security.h"
#include "psd/initializers.h"
#include "psd/tensor.h"
#include "psd/types.pb.h"
#include "psd/update_kind.h"

namespace psd {

// Shard messages (psd/shard.pb.h) that ShardApplier sends through a
// ShardClient.
class ApplyDenseRequest;
class ApplyDenseResponse;
class ApplySparseRequest;
class ApplySparseResponse;
class AssignStreamHeader;
class AssignResponse;
class BatchRequest;
class BatchResponse;
class OptimizerSpec;

namespace client {

struct ClientOptions {
  // Deadline of every unary RPC attempt, the handshake in Connect included.
  absl::Duration timeout = absl::Seconds(30);
  // While calls are open on a shard's connection (the data streams are),
  // the client pings it this often and waits as long for the answer: a
  // shard whose host vanished without closing its connections (power
  // loss, a partition) is noticed in about twice this, not when an op is
  // `timeout` overdue, and the ops on it are retried (on a replicated part,
  // at its new primary). Zero: no pings. Else at least 5 s (shards refuse
  // pings more often than every 4 s on a connection they send nothing on).
  absl::Duration keepalive = absl::Seconds(5);
  // Deadline of one attempt of a streamed read or assign (big values).
  absl::Duration stream_timeout = absl::Minutes(10);
  // Largest message sent or received. Values above stream_threshold_bytes
  // travel as streams of chunk_bytes chunks, so only a batch message or a
  // gather result can come near it.
  int max_message_bytes = 512 << 20;

  // Retries of UNAVAILABLE and DEADLINE_EXCEEDED: at most `max_attempts`
  // attempts in all (1 = no retry); the n-th retry waits a random time in
  // [b/2, b] with b = min(initial_backoff * 2^(n-1), max_backoff); no retry
  // starts later than `retry_budget` after the first attempt began.
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  absl::Duration retry_budget = absl::Seconds(20);

  // Values (element bytes, or the wire encoding for strings) bigger than
  // this are read and written as chunked streams; 0 never streams. Streams
  // move content without protobuf's copies (one copy on the shard, none on
  // the sending side), so from about a megabyte up they beat one big
  // message. An assign_add/sub that asks for the new value stays one message
  // while it fits max_message_bytes, so the value returned is the update's.
  int64_t stream_threshold_bytes = int64_t{1} << 20;
  // Content bytes per streamed message (both directions).
  int chunk_bytes = 1 << 20;

  // The data streams: every data op (assign and its add/sub forms, scatter,
  // count_up_to, optimizer applies, read, gather; sync and async) travels
  // on one of two long-lived streams per client, one for writes (applied in
  // the order they are issued) and one for reads (so writes held by a
  // checkpoint fence never hold a read). Ops issued while
  // `data_stream_frames_in_flight` messages await replies are sent together
  // in the next message (no timer: an idle client sends each op at once).
  // Big contents are sent from the caller's memory. Off: each op is a unary
  // call of its own (the protocol of older clients). Values above
  // stream_threshold_bytes are streamed either way.
  bool data_stream = true;
  int data_stream_frames_in_flight = 1;
  // Most ops, and bytes unless one op alone is bigger, in one message.
  int data_stream_ops_per_frame = 256;
  int64_t data_stream_frame_bytes = int64_t{4} << 20;

  // TLS and bearer token (psd/channel_security.h); default: plaintext, no
  // token. A Session uses it for its coordinator channel too.
  ChannelSecurity security;
};

// How a BatchStream packs ops into messages.
struct BatchOptions {
  // Most ops per BatchRequest message.
  int ops_per_message = 64;
  // Messages sent whose responses have not yet arrived. While fewer are
  // outstanding, a partly filled message goes out at once; when the window
  // is full, ops accumulate until a message fills or a response returns.
  int max_messages_in_flight = 8;
};

// What a client's data streams (ClientOptions::data_stream) have done so far:
// streams opened (more than one: it was reopened after a failure), messages
// sent and ops in them (ops / messages: how much concurrent ops coalesced).
struct DataStreamStats {
  int64_t streams_opened = 0;
  int64_t messages_sent = 0;
  int64_t ops_sent = 0;
  // Ops issued and not yet sent, now (waiting for the next message).
  int64_t ops_waiting = 0;
};

// What the shard said about itself in the handshake (or in GetInfo).
struct ShardInfo {
  int32_t shard_id = 0;
  // Random per process start; a changed incarnation means the shard lost
  // its memory.
  uint64_t incarnation = 0;
  std::string device;  // "cpu:0"
  int64_t memory_limit_bytes = 0;
  int64_t memory_used_bytes = 0;
  int64_t num_variables = 0;
};

// One variable as the shard holds it.
struct VariableInfo {
  std::string name;
  DataType dtype = DT_INVALID;
  TensorShape shape;  // current shape (validate_shape=false may change it)
  bool initialized = false;
  uint64_t version = 0;  // bumped by every successful mutation
  std::string device;
  int64_t bytes = 0;  // accounted against the shard's memory limit
};

struct CreateOptions {
  // Give the variable its value now. Without it the variable is created
  // uninitialized (TensorFlow's Variable before `v.initializer` runs): reads
  // fail with FAILED_PRECONDITION until Initialize or Assign.
  bool initialize = true;
  // For one part of a partitioned variable: the whole variable's shape and
  // this part's offset in it, so initializers give the part exactly its slice
  // of the whole variable's values. Both empty for an unpartitioned variable.
  std::vector<int64_t> full_shape;
  std::vector<int64_t> offset;
};

struct AssignOptions {
  // Only for Assign: false lets the value replace the variable's shape
  // (tf.assign(validate_shape=False)).
  bool validate_shape = true;
  // Accepted for TensorFlow compatibility; every op is atomic regardless.
  bool use_locking = false;
  // Only for Assign: an initialization with a value the client supplies.
  // The shard writes it only when the variable is not initialized, checked
  // atomically with the write; an initialized variable keeps its value and
  // the call succeeds.
  bool if_uninitialized = false;
};

// Options of the ops by key on an embedding table's part.
struct KeyedOpOptions {
  // The trainer's global step: recorded as the version of the rows an op
  // makes or updates (steps_to_live eviction reads it). 0: not given.
  int64_t global_step = 0;
  // Gather only: look up without making rows or counting frequencies
  // (DeepRec's is_inference).
  bool inference = false;
};

// Rows of an embedding table's part, as ExportEmbedding gives them and
// ImportEmbedding takes them.
struct EmbeddingRowSet {
  Tensor keys;      // [n], the table's key dtype
  Tensor values;    // [n, dim]
  Tensor freqs;     // [n] int64 (import: may be empty)
  Tensor versions;  // [n] int64 (import: may be empty)
  std::vector<Tensor> slot_values;  // [n, dim] each, one per slot named
};

class BatchStream;
class ShardApplier;
namespace internal {
class BatchReactor;
}  // namespace internal

class ShardClient {
 public:
  // Opens a channel to `address` ("host:port") and checks the shard speaks
  // this client's protocol version (FAILED_PRECONDITION otherwise). Waits up
  // to options.timeout for the shard to come up (DEADLINE_EXCEEDED after).
  static absl::StatusOr<std::unique_ptr<ShardClient>> Connect(const std::string& address,
                                                              const ClientOptions& options = {});

  ShardClient(const ShardClient&) = delete;
  ShardClient& operator=(const ShardClient&) = delete;
  ~ShardClient();

  const std::string& address() const;
  // The options it was connected with.
  const ClientOptions& options() const;
  // The handshake's answer (memory use and variable count as of Connect).
  const ShardInfo& info() const;
  // Asks the shard again, for current memory use and variable count.
  absl::StatusOr<ShardInfo> GetInfo();
  // All zero when the data stream is off.
  DataStreamStats data_stream_stats() const;

  // Creates `name` holding `initial_value` (its dtype and shape become the
  // variable's). ALREADY_EXISTS if the name is taken.
  absl::StatusOr<VariableInfo> Create(const std::string& name, const Tensor& initial_value,
                                      const CreateOptions& options = {});
  // Creates `name` whose value the shard computes from `initializer` (see
  // initializers.h), now or, with options.initialize = false, at Initialize.
  absl::StatusOr<VariableInfo> Create(const std::string& name, DataType dtype,
                                      const TensorShape& shape, const InitializerSpec& initializer,
                                      const CreateOptions& options = {});
  absl::Status Delete(const std::string& name);
  // Variables whose names start with `prefix`, sorted by name.
  absl::StatusOr<std::vector<VariableInfo>> List(const std::string& prefix = "");
  // One variable's info; NOT_FOUND "variable 'NAME' not found" if absent.
  absl::StatusOr<VariableInfo> Lookup(const std::string& name);

  // Runs the stored initializers of `names` (all checked before any runs).
  // Initialized variables are left alone unless `force`.
  absl::Status Initialize(const std::vector<std::string>& names, bool force = false);
  // The uninitialized variables among `names` (all variables when empty),
  // sorted (TensorFlow's report_uninitialized_variables).
  absl::StatusOr<std::vector<std::string>> ReportUninitialized(
      const std::vector<std::string>& names = {});
  absl::StatusOr<bool> IsInitialized(const std::string& name);

  absl::StatusOr<Tensor> Read(const std::string& name);
  // Read into *out, reusing its buffer when it already has the value's dtype
  // and byte size: a trainer that reads the same variable every step
  // allocates nothing and skips zero-filling and faulting in fresh pages.
  // On error *out holds a valid tensor with unspecified contents.
  absl::Status ReadInto(const std::string& name, Tensor* out);
  // Rows of `name` along axis 0; `indices` is int32 or int64 of any rank and
  // the result has shape indices.shape + var.shape[1:].
  absl::StatusOr<Tensor> Gather(const std::string& name, const Tensor& indices);

  // assign / assign_add / assign_sub. When `new_value` is not null the shard
  // returns the variable's value after the update into it (it is not sent
  // otherwise, so a large variable is not echoed back by default).
  absl::Status Assign(const std::string& name, const Tensor& value,
                      const AssignOptions& options = {}, Tensor* new_value = nullptr);
  absl::Status AssignAdd(const std::string& name, const Tensor& value,
                         const AssignOptions& options = {}, Tensor* new_value = nullptr);
  absl::Status AssignSub(const std::string& name, const Tensor& value,
                         const AssignOptions& options = {}, Tensor* new_value = nullptr);

  // scatter_update / scatter_add / scatter_sub along axis 0: updates.shape ==
  // indices.shape + var.shape[1:], or updates is a scalar that is broadcast.
  // Duplicate indices accumulate for add/sub; for update the last one wins.
  // Every index is checked before anything is applied.
  absl::Status ScatterUpdate(const std::string& name, const Tensor& indices, const Tensor& updates,
                             Tensor* new_value = nullptr);
  absl::Status ScatterAdd(const std::string& name, const Tensor& indices, const Tensor& updates,
                          Tensor* new_value = nullptr);
  absl::Status ScatterSub(const std::string& name, const Tensor& indices, const Tensor& updates,
                          Tensor* new_value = nullptr);

  // Increments an int32/int64 scalar and returns its value before the
  // increment; at `limit` fails with OUT_OF_RANGE "Reached limit of N" and
  // leaves the value alone.
  absl::StatusOr<int64_t> CountUpTo(const std::string& name, int64_t limit);

  // Async variants of the data ops: the same semantics and errors as the
  // synchronous ops (retries included), the result arriving in a future.
  // Tensors are taken by value: std::move them in to hand the bytes to the
  // request without a copy. Values above stream_threshold_bytes (and reads
  // that turn out to be that big) run the streaming path on a thread of
  // their own. Completion order between different ops is not defined; ops
  // on one variable are applied in the order the shard receives them.
  std::future<absl::StatusOr<Tensor>> ReadAsync(const std::string& name);
  std::future<absl::StatusOr<Tensor>> GatherAsync(const std::string& name, Tensor indices);
  std::future<absl::Status> AssignAsync(const std::string& name, Tensor value,
                                        const AssignOptions& options = {});
  std::future<absl::Status> AssignAddAsync(const std::string& name, Tensor value,
                                           const AssignOptions& options = {});
  std::future<absl::Status> AssignSubAsync(const std::string& name, Tensor value,
                                           const AssignOptions& options = {});
  std::future<absl::Status> ScatterUpdateAsync(const std::string& name, Tensor indices,
                                               Tensor updates);
  std::future<absl::Status> ScatterAddAsync(const std::string& name, Tensor indices,
                                            Tensor updates);
  std::future<absl::Status> ScatterSubAsync(const std::string& name, Tensor indices,
                                            Tensor updates);
  std::future<absl::StatusOr<int64_t>> CountUpToAsync(const std::string& name, int64_t limit);

  // --- Embedding tables' parts (EmbeddingSpec in types.proto; the ops by
  // key in shard.proto). Higher up, EmbeddingVariable splits keys across a
  // table's parts; these address one part.

  // Rows of `keys` (the table's key dtype, any shape): shape keys.shape +
  // [dim]. Admitted keys without a row get one from the initializer.
  absl::StatusOr<Tensor> GatherByKey(const std::string& name, const Tensor& keys,
                                     const KeyedOpOptions& options = {});
  // scatter_update / scatter_add / scatter_sub by key: rows.shape ==
  // keys.shape + [dim], or a scalar broadcast.
  absl::Status ScatterByKey(UpdateKind op, const std::string& name, const Tensor& keys,
                            const Tensor& rows, const KeyedOpOptions& options = {});
  // One optimizer step on the rows of `keys` ([n]) with gradient rows
  // `grads` ([n, dim]); `slots` are the part's slot tables in the
  // optimizer's order.
  absl::Status ApplySparseByKey(const std::string& name, const std::vector<std::string>& slots,
                                const OptimizerSpec& optimizer, const Tensor& keys,
                                const Tensor& grads, const KeyedOpOptions& options = {});
  // Every row of the part (and of `slots`) as of the call: one consistent
  // cut, read in messages of at most `max_rows` rows (0: about 4 MiB).
  absl::StatusOr<EmbeddingRowSet> ExportEmbedding(const std::string& name,
                                                  const std::vector<std::string>& slots = {},
                                                  int64_t max_rows = 0);
  // Puts rows in (all or none); returns the part's row count after.
  absl::StatusOr<int64_t> ImportEmbedding(const std::string& name,
                                          const std::vector<std::string>& slots,
                                          const EmbeddingRowSet& rows);
  // Removes the rows of `keys`; returns how many there were.
  absl::StatusOr<int64_t> DeleteEmbeddingKeys(const std::string& name, const Tensor& keys);
  // Runs the part's eviction policies against `global_step`; returns the
  // rows evicted.
  absl::StatusOr<int64_t> EvictEmbedding(const std::string& name, int64_t global_step);

  // Opens a batched stream on this shard (see BatchStream). Fails only for
  // bad options; a shard that is down shows in the ops' results.
  absl::StatusOr<std::unique_ptr<BatchStream>> OpenBatch(const BatchOptions& options = {});

 private:
  friend class BatchStream;
  friend class ShardApplier;
  friend class internal::BatchReactor;
  class Impl;
  explicit ShardClient(std::unique_ptr<Impl> impl);

  // For ShardApplier (psd/optimizer_ops.h): applies go out like this
  // client's own mutations, with a fresh request id of the process, this
  // client's shard incarnation, and the retry policy (retry_policy.h).
  absl::Status SendApplyDense(ApplyDenseRequest* request, ApplyDenseResponse* response);
  absl::Status SendApplySparse(ApplySparseRequest* request, ApplySparseResponse* response);
  // A dense apply whose gradient (not DT_STRING) is streamed in chunks;
  // `header` describes it (header->apply set).
  absl::Status SendApplyStream(AssignStreamHeader* header, const Tensor& gradient,
                               AssignResponse* response);
  // Applies in one Batch message: the ops are numbered under a batch id of
  // their own (request_ids.h) and the message is resent whole on a
  // retryable failure; the ops keep their ids, so those that already ran
  // are not run again.
  absl::Status SendApplyBatch(BatchRequest* request, BatchResponse* response);

  const std::unique_ptr<Impl> impl_;
};

// BatchStream: many small ops to one shard over one bidirectional stream
// (the Batch RPC), packed up to BatchOptions::ops_per_message per message
// with several messages in flight, for trainers that issue thousands of
// small updates per step. Each op gets its own result: a bad op (unknown
// variable, bad index) fails alone and its neighbours still apply. Ops run
// on the shard in the order they were added, so ops on one variable apply
// in order. Mutating ops carry request ids; an open stream has a client id
// of its own (leased from a process-wide pool, so streams opened one after
// another reuse ids rather than fill the shard's table of clients) and
// numbers its ops in stream order, so no op of a busy process is ever
// refused as "request id too old".
//
// A partly filled message is sent as soon as fewer than
// max_messages_in_flight messages await responses, so a future never waits
// for more ops to arrive; Flush() is not needed for progress.
//
// A stream that breaks (shard down, deadline) fails every unanswered op with
// the stream's status (UNAVAILABLE for a shard that went away) and every
// later op at once; ops are not retried here (unlike ShardClient's): open a
// new stream. Values are sent inline, so keep ops small (a read whose value
// is bigger than stream_threshold_bytes is fetched with a streamed read on
// a thread of its own).
//
// Thread-safety: thread-safe; ops added from several threads are ordered as
// their calls are. Close() (or the destructor) half-closes the stream and
// waits for every result.
//
//   PSD_ASSIGN_OR_RETURN(auto batch, shard->OpenBatch());
//   std::vector<std::future<absl::Status>> done;
//   for (int i = 0; i < 1000; ++i) done.push_back(batch->AssignAdd("n",
//   Tensor::Scalar<int64_t>(1))); auto old = batch->CountUpTo("step", 1 << 30);
//   PSD_RETURN_IF_ERROR(batch->Close());
class BatchStream {
 public:
  BatchStream(const BatchStream&) = delete;
  BatchStream& operator=(const BatchStream&) = delete;
  ~BatchStream();  // Close()

  std::future<absl::Status> Assign(const std::string& name, Tensor value,
                                   const AssignOptions& options = {});
  std::future<absl::Status> AssignAdd(const std::string& name, Tensor value);
  std::future<absl::Status> AssignSub(const std::string& name, Tensor value);
  std::future<absl::Status> ScatterUpdate(const std::string& name, Tensor indices, Tensor updates);
  std::future<absl::Status> ScatterAdd(const std::string& name, Tensor indices, Tensor updates);
  std::future<absl::Status> ScatterSub(const std::string& name, Tensor indices, Tensor updates);
  std::future<absl::StatusOr<int64_t>> CountUpTo(const std::string& name, int64_t limit);
  std::future<absl::StatusOr<Tensor>> Read(const std::string& name);
  std::future<absl::StatusOr<Tensor>> Gather(const std::string& name, Tensor indices);

  // Sends the partly filled message now.
  void Flush();
  // Sends what is pending, half-closes the stream and waits for every
  // result. Returns the stream's own status (OK when it ended normally; the
  // ops' statuses are in their futures). Later ops fail with
  // FAILED_PRECONDITION. Idempotent.
  absl::Status Close();

 private:
  friend class ShardClient;
  class Impl;
  explicit BatchStream(std::unique_ptr<Impl> impl);

  const std::unique_ptr<Impl> impl_;
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_CLIENT_H_
