// Request ids of mutating shard requests (RequestId{client_id, seq}): what
// the shard's exactly-once window keys on (docs/design.md, "Guarantees").
//
// A shard remembers windows for a bounded number of client ids (1024), each
// kept until it has been idle for 10 minutes, so this library uses as few
// ids as it can: one per process for every unary and streamed request
// (ShardClient's ops and ShardApplier's applies, whatever client or
// applier sends them), and, for requests that must be numbered in the
// order they are sent (batches), ids leased from a process-wide pool and
// returned when the batch is done, so batches opened one after another
// reuse the same few ids.
//
// A shard binds a client id to the token that first used it (a request
// under it with another token is PERMISSION_DENIED), so ids are drawn per
// credentials: a process whose clients hold several tokens uses one process
// id and one batch pool per token (CredentialsKey; 0 without a token).
//
// Thread-safety: the functions and the pool are thread-safe; one
// BatchIdLease is thread-compatible (its owner serializes Next).
#ifndef PSD_CLIENT_SRC_REQUEST_IDS_H_
#define PSD_CLIENT_SRC_REQUEST_IDS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "psd/channel_security.h"
#include "psd/types.pb.h"

namespace psd {
namespace client {
namespace internal {

// Which credentials a client's requests carry, for the choice of client
// ids: 0 without a token, else a key of the token file and role.
uint64_t CredentialsKey(const ChannelSecurity& security);

// The random client id of this process for requests sent with the
// credentials of `credentials_key`.
uint64_t ProcessClientId(uint64_t credentials_key = 0);

// Gives *id the process's client id for `credentials_key` and the next
// process-wide sequence number.
void SetNewRequestId(RequestId* id, uint64_t credentials_key = 0);

// Gives *id the next sequence number, keeping its client id (a retry whose
// id the shard refused as too old). Under a RequestIdCarry the carry keeps
// the new number for later attempts.
void RenumberRequestId(RequestId* id);

// Whether the id this thread's last SetNewRequestId handed out was resent
// by its RequestIdCarry (a later attempt at an op resending the id of an
// earlier one). Such an id must never be renumbered when a shard calls it
// too old: an earlier attempt may have been applied under it, and a new
// number would apply it again. Read where the op's RetryState is made, on
// the thread that drew the id (its retries may run on another).
bool LastRequestIdWasResent();

// Keeps the request ids of one logical operation on one part across the
// attempts a caller makes at it on possibly different shards (a refreshed
// handle after a failover or a move): while a scope is open on a thread,
// the k-th SetNewRequestId of the current attempt hands out the id the k-th
// call of the first attempt drew. So a write the old primary applied, whose
// answer was lost with it, reaches the new primary with the same id and is
// answered from the request window that came with the replicated writes,
// not applied again.
//
// Thread-compatible: one scope per thread at a time (scopes do not nest);
// the ids it holds belong to its owner.
class RequestIdCarry {
 public:
  RequestIdCarry() = default;
  RequestIdCarry(const RequestIdCarry&) = delete;
  RequestIdCarry& operator=(const RequestIdCarry&) = delete;

  // Opens the carry on this thread for one attempt; the attempt's calls
  // take its ids in order.
  class Attempt {
   public:
    explicit Attempt(RequestIdCarry* carry);
    Attempt(const Attempt&) = delete;
    Attempt& operator=(const Attempt&) = delete;
    ~Attempt();

   private:
    RequestIdCarry* const previous_;
  };

 private:
  friend void SetNewRequestId(RequestId* id, uint64_t credentials_key);
  friend void RenumberRequestId(RequestId* id);
  friend bool LastRequestIdWasResent();
  // Inline for the one or two ids an op draws: a carry is made for every
  // op, and most are never retried.
  absl::InlinedVector<RequestId, 2> ids_;
  size_t next_ = 0;  // of the current attempt
  // Ids at and past this index were drawn by the current attempt.
  size_t drawn_from_ = 0;
};

// A client id with a sequence space of its own, for one batch at a time
// (a BatchStream, or one ShardApplier::ApplyGradients call). A batch
// numbers its ops in the order they join it, so the shard sees them in
// increasing order and never refuses one as too old, however busy the
// process's other threads are: that cannot be had from the shared process
// id, whose numbers are drawn by many threads and reach the shard out of
// order. The lease returns the id, with its next number, to the pool when
// destroyed; the next batch continues the numbering.
class BatchIdLease {
 public:
  explicit BatchIdLease(uint64_t credentials_key = 0);
  BatchIdLease(const BatchIdLease&) = delete;
  BatchIdLease& operator=(const BatchIdLease&) = delete;
  ~BatchIdLease();

  // Gives *id this lease's client id and its next sequence number.
  void Next(RequestId* id);

 private:
  const uint64_t credentials_key_;
  uint64_t client_id_;
  uint64_t next_seq_;
};

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_REQUEST_IDS_H_
