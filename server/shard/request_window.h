// RequestWindow: exactly-once execution of retried requests.
//
// Clients tag every mutating request with RequestId{client_id, seq}; a retry
// reuses the id. For each client the window remembers the results of the
// last `window` sequence numbers, so a duplicate is answered from the cache
// instead of being applied again. A duplicate that arrives while the
// original is still running waits for it. A seq at or below
// (highest seq seen - window) can no longer be told apart from a new request
// and is refused with ABORTED "request id too old".
//
// Memory: one ring of `window` entries (about 40 bytes each) per client,
// allocated when the client is first seen; at most `max_clients` clients are
// remembered (the least recently seen is forgotten first), so the window
// costs at most about 40 MiB with the defaults. Nothing is allocated per
// request.
//
// Thread-safety: thread-safe (one mutex).
#ifndef PSD_SERVER_SHARD_REQUEST_WINDOW_H_
#define PSD_SERVER_SHARD_REQUEST_WINDOW_H_

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "psd/types.pb.h"

namespace psd {

class RequestWindow {
 public:
  // What a request's retry gets back: its status and small result.
  struct Result {
    absl::Status status;
    uint64_t version = 0;
    int64_t old_value = 0;  // count_up_to
  };

  explicit RequestWindow(int window = 1024, int max_clients = 1024);
  RequestWindow(const RequestWindow&) = delete;
  RequestWindow& operator=(const RequestWindow&) = delete;

  // Registers `id` as running. Returns nullopt for a new request (the caller
  // must then call Finish or Abandon exactly once), the cached result for a
  // duplicate, or ABORTED for an id older than the window.
  absl::StatusOr<std::optional<Result>> Begin(const RequestId& id);
  // Records the result of a request that Begin reported as new.
  void Finish(const RequestId& id, Result result);
  // Forgets a request that Begin reported as new but that did not complete
  // (a broken stream): a retry will run it.
  void Abandon(const RequestId& id);

 private:
  enum class State : uint8_t { kEmpty, kRunning, kDone };
  struct Entry {
    uint64_t seq = 0;
    State state = State::kEmpty;
    Result result;
  };
  struct Client {
    uint64_t max_seq = 0;
    uint64_t last_used = 0;  // tick of the latest Begin
    std::vector<Entry> ring;
  };

  Client& ClientFor(uint64_t client_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Entry* EntryFor(const RequestId& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int window_;
  const int max_clients_;
  absl::Mutex mu_;
  absl::CondVar done_;  // signalled when any running request finishes
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  std::unordered_map<uint64_t, Client> clients_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_REQUEST_WINDOW_H_
