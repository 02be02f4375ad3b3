// RequestWindow: exactly-once execution of retried requests.
//
// Clients tag every mutating request with RequestId{client_id, seq}; a retry
// reuses the id. For each client the window remembers the results of the
// last `window` sequence numbers, so a duplicate is answered from the cache
// instead of being applied again. A duplicate that arrives while the
// original is still running waits for it.
//
// Too old: a client's ids are process-wide, so its requests to every
// variable of a shard share one ring, and the ring forgets the oldest.
// A request that names what it writes (Begin's `scope`) is refused with
// ABORTED "request id too old" only if this window forgot a request of that
// scope at or after its seq (Client::dropped), or forgot any request at or
// after it whose scope it does not know (Client::dropped_any: entries that
// came with an imported window, and everything below an imported window's
// bottom); otherwise an id the ring no longer reaches is new and is recorded
// beside the ring. So a write retried after a failover is run on the new
// primary if it never reached it, however many of the client's requests to
// other variables the new primary served meanwhile; and if it did reach it
// (its backup had it) and finished OK, the retry is answered from the
// newest forgotten request of its scope, which it is unless another thread
// wrote the same variable after it. A request without a
// scope keeps the plain rule: a seq at or below (highest seq seen - window)
// is too old.
//
// Memory: one ring of entries (about 40 bytes each) per client, sized by
// use: a new client starts with 4 and its ring doubles, up to `window`,
// when two of its requests inside the window would share a slot. So a
// short-lived client (a trainer process that ran a few steps) costs little,
// and a busy one `window` entries. All rings together hold at most
// `max_entries` (40 MiB with the defaults), for at most `max_clients`
// clients; what they forgot, one seq (and an OK result) per scope, at most
// 12 MiB of all. Nothing is allocated per request otherwise. When either bound is
// reached, the least recently seen client is forgotten to make room only if
// it has been idle for `min_idle` (longer than any client keeps retrying);
// otherwise a new client is refused (and a ring that cannot grow fails its
// request) with RESOURCE_EXHAUSTED, nothing recorded. So a caller inventing
// client ids cannot silently evict a live client's window (which would turn
// that client's retries into second applications); at worst new clients
// wait.
//
// Ownership: a client id belongs to the caller that first used it (the key
// of its token, see CallerKey), so a caller holding another token cannot
// read another client's cached results or poison its window by sending
// requests under its id: such a request is PERMISSION_DENIED and recorded
// nowhere. On a server that checks no tokens every caller is
// kAnonymousCaller, and ids are not bound (any caller may use any id).
//
// Thread-safety: thread-safe (one mutex).
#ifndef PSD_SERVER_SHARD_REQUEST_WINDOW_H_
#define PSD_SERVER_SHARD_REQUEST_WINDOW_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "psd/shard.pb.h"

namespace psd {

// Who sent a request, as its credentials say: a key derived from the token
// the call was authorized with (runtime/caller_role.h), or
// kAnonymousCaller on a server that checks no tokens.
using CallerKey = uint64_t;
inline constexpr CallerKey kAnonymousCaller = 0;

class RequestWindow {
 public:
  // What a request's retry gets back: its status and small result.
  struct Result {
    absl::Status status;
    uint64_t version = 0;
    int64_t old_value = 0;  // count_up_to
    // What the request wrote (ScopeOf the variable, or of the group it was
    // imported with; 0: none known): a move or backup takes only its
    // group's entries (Export's `scopes`). The ids are shard-wide, but the
    // copy holds one group: an entry of another group's write, imported
    // with it, would answer that write's retry on a shard whose copy of the
    // other group does not have it.
    uint64_t scope = 0;
  };

  // The scope of requests that write variable (or part) `name`.
  static uint64_t ScopeOf(absl::string_view name);

  explicit RequestWindow(int window = 1024, int max_clients = 65536,
                         absl::Duration min_idle = absl::Minutes(10),
                         int64_t max_entries = int64_t{1} << 20);
  RequestWindow(const RequestWindow&) = delete;
  RequestWindow& operator=(const RequestWindow&) = delete;

  // Registers `id`, sent by `caller`, as running. Returns nullopt for a new
  // request (the caller must then call Finish or Abandon exactly once), the
  // cached result for a duplicate, ABORTED for an id older than the window,
  // PERMISSION_DENIED when the id's client belongs to another caller, or
  // RESOURCE_EXHAUSTED for a new client while the table is full of live ones.
  // A duplicate of a request still running waits for it, unless
  // `wait_for_running` is false: then UNAVAILABLE (the caller retries later).
  // `replay`: a backup or a move's target replaying a write its source
  // applied (and so must apply too): never refused as too old. The window
  // here may be ahead of the source's (this shard's own clients share the
  // client id, or another group's imported window raised it): an id the
  // ring can still hold is recorded there, an older one beside it (Client's
  // `late`), so a retry of it is answered, not refused nor run again.
  // `scope`: ScopeOf what the request writes (0: unknown), see Too old.
  absl::StatusOr<std::optional<Result>> Begin(const RequestId& id,
                                              CallerKey caller = kAnonymousCaller,
                                              bool wait_for_running = true, bool replay = false,
                                              uint64_t scope = 0);
  // Records the result of a request that Begin reported as new.
  void Finish(const RequestId& id, Result result);
  // Forgets a request that Begin reported as new but that did not complete
  // (a broken stream): a retry will run it.
  void Abandon(const RequestId& id);

  // The completed requests of every client, for a part that moves to
  // another shard (its writes' ids must be known where it goes next).
  // `scopes` non-null: only entries whose Result::scope is in it (a
  // group's parts, see Result::scope); every client's max_seq either way.
  void Export(RequestWindowState* state,
              const absl::flat_hash_set<uint64_t>* scopes = nullptr) const;
  // Merges `state` (another shard's Export) into this window: per ring
  // slot the newer request wins, so an imported id is answered from its
  // cached result and one that falls behind the merged window is refused
  // as too old, never run again. A client bound to another caller here
  // keeps its own window (that caller could not send its ids anyway).
  // Clients over max_clients are not imported.
  // `scope`: recorded as the imported entries' Result::scope (the group
  // they came with), so they go on with that group when it moves again.
  void Import(const RequestWindowState& state, uint64_t scope = 0);

 private:
  enum class State : uint8_t { kEmpty, kRunning, kDone };
  struct Entry {
    uint64_t seq = 0;
    State state = State::kEmpty;
    Result result;  // its scope from Begin on
    // Came with an imported window: result.scope is the group's, not what
    // the request wrote, so forgetting it raises Client::dropped_any.
    bool imported = false;
  };
  // The newest forgotten request of a scope. When it had finished OK, its
  // result too: the retry of that very request (a thread's write retried on
  // a promoted backup after the process's other threads sent it more than
  // a window of requests) is answered from it instead of refused as too
  // old. Failed results are not kept (their messages would cost memory).
  struct Forgotten {
    uint64_t seq = 0;
    bool done_ok = false;  // `seq` finished OK, with these:
    uint64_t version = 0;
    int64_t old_value = 0;
  };
  struct Client {
    CallerKey owner = kAnonymousCaller;  // who first used the id
    uint64_t max_seq = 0;
    uint64_t last_used = 0;  // tick of the latest Begin
    std::chrono::steady_clock::time_point last_seen;  // for the idle rule
    std::vector<Entry> ring;
    // Replayed requests (Begin's `replay`) too old for the ring: a backup
    // whose window is ahead of its primary's for this client still answers
    // their retries from here once promoted. At most `window` of them (the
    // oldest go first), and 65536 of all clients together (past that an
    // old replayed id runs unrecorded).
    std::map<uint64_t, Entry> late;
    // The highest seq of a request of each scope that this window forgot
    // (lost its ring slot or its place in `late`, or ran unrecorded): a
    // request of that scope at or below it may have been applied. At most
    // kMaxDroppedScopes a client and kMaxDroppedScopesTotal of all clients;
    // past that a client's map is folded into dropped_any.
    absl::flat_hash_map<uint64_t, Forgotten> dropped;
    // The same for every scope (forgotten requests of no known scope, and
    // the bottom of imported windows).
    uint64_t dropped_any = 0;
  };

  // The window of `client_id`, created (owned by `caller`) when new.
  absl::StatusOr<Client*> ClientFor(uint64_t client_id, CallerKey caller)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets least recently seen clients idle for min_idle (never `keep`)
  // until `entries` more fit under max_entries; false if they cannot.
  bool MakeRoom(int64_t entries, const Client* keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The slot of `seq` in `client`'s ring, the ring grown first if another
  // request inside the window holds it (`force`: grown to the whole window
  // even past max_entries). RESOURCE_EXHAUSTED if it cannot grow.
  absl::StatusOr<Entry*> SlotFor(Client* client, uint64_t seq, bool force)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Resize(Client* client, size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(std::unordered_map<uint64_t, Client>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Entry* EntryFor(const RequestId& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ABORTED "request id too old" for an id at or below max_seq - window.
  absl::Status CheckNotTooOld(const RequestId& id, uint64_t max_seq) const;
  // ABORTED "request id too old" for an id of `scope` this window may have
  // forgotten (see Too old; scope 0: CheckNotTooOld).
  absl::Status CheckScopeNotTooOld(const RequestId& id, const Client& client,
                                   uint64_t scope) const;
  // Notes that `entry` (of `client`) is forgotten: a request that may have
  // run (kRunning or kDone) is counted in the client's dropped seqs.
  void Drop(Client* client, const Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `done`: the forgotten request's result when it finished (null: it may
  // not have, or its scope is unknown).
  void DropSeq(Client* client, uint64_t scope, uint64_t seq, const Result* done = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What this window knows of `id` (of `scope`) beyond its ring: its
  // result if it is the newest forgotten request of `scope` and finished
  // OK; else ABORTED "request id too old" if it may have been forgotten
  // (CheckScopeNotTooOld); else nullopt (it is new).
  absl::StatusOr<std::optional<Result>> ForgottenAnswer(const RequestId& id, const Client& client,
                                                        uint64_t scope) const;

  const int window_;
  const int max_clients_;
  const absl::Duration min_idle_;
  const int64_t max_entries_;
  mutable absl::Mutex mu_;
  absl::CondVar done_;  // signalled when any running request finishes
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  std::unordered_map<uint64_t, Client> clients_ ABSL_GUARDED_BY(mu_);
  int64_t entries_ ABSL_GUARDED_BY(mu_) = 0;  // all rings' sizes
  int64_t late_entries_ ABSL_GUARDED_BY(mu_) = 0;  // all clients' `late`
  int64_t dropped_scopes_ ABSL_GUARDED_BY(mu_) = 0;  // all clients' `dropped`
  // Records `seq` of `client` in its `late` map (bounded, see Client).
  Entry* AddLate(Client* client, uint64_t seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_REQUEST_WINDOW_H_
