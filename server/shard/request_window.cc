#include "shard/request_window.h"

#include "absl/strings/str_cat.h"

namespace psd {

RequestWindow::RequestWindow(int window, int max_clients)
    : window_(window), max_clients_(max_clients) {}

RequestWindow::Client& RequestWindow::ClientFor(uint64_t client_id) {
  auto it = clients_.find(client_id);
  if (it != clients_.end()) return it->second;
  if (static_cast<int>(clients_.size()) >= max_clients_) {
    // Forget the least recently seen client; its late retries will be
    // treated as new requests, the documented cost of a bounded table.
    auto oldest = clients_.begin();
    for (auto c = clients_.begin(); c != clients_.end(); ++c) {
      if (c->second.last_used < oldest->second.last_used) oldest = c;
    }
    clients_.erase(oldest);
  }
  Client& client = clients_[client_id];
  client.ring.resize(window_);
  return client;
}

RequestWindow::Entry* RequestWindow::EntryFor(const RequestId& id) {
  auto it = clients_.find(id.client_id());
  if (it == clients_.end()) return nullptr;
  Entry& entry = it->second.ring[id.seq() % window_];
  return entry.seq == id.seq() && entry.state != State::kEmpty ? &entry : nullptr;
}

absl::StatusOr<std::optional<RequestWindow::Result>> RequestWindow::Begin(const RequestId& id) {
  absl::MutexLock lock(&mu_);
  Client& client = ClientFor(id.client_id());
  client.last_used = ++tick_;
  if (client.max_seq >= static_cast<uint64_t>(window_) &&
      id.seq() <= client.max_seq - window_) {
    return absl::AbortedError(absl::StrCat("request id too old: seq ", id.seq(), " of client ",
                                           absl::Hex(id.client_id()), " is more than ", window_,
                                           " behind its latest request ", client.max_seq));
  }
  for (;;) {
    Entry* entry = EntryFor(id);
    if (entry == nullptr) break;
    if (entry->state == State::kDone) return std::optional<Result>(entry->result);
    done_.Wait(&mu_);  // a duplicate of a running request: wait for it
  }
  // Looked up again: waiting released the lock, and the client may have
  // been forgotten and re-created meanwhile.
  Client& owner = ClientFor(id.client_id());
  Entry& slot = owner.ring[id.seq() % window_];
  slot.seq = id.seq();
  slot.state = State::kRunning;
  slot.result = Result{};
  if (id.seq() > owner.max_seq) owner.max_seq = id.seq();
  return std::optional<Result>();
}

void RequestWindow::Finish(const RequestId& id, Result result) {
  absl::MutexLock lock(&mu_);
  if (Entry* entry = EntryFor(id)) {
    entry->state = State::kDone;
    entry->result = std::move(result);
  }
  done_.SignalAll();
}

void RequestWindow::Abandon(const RequestId& id) {
  absl::MutexLock lock(&mu_);
  if (Entry* entry = EntryFor(id)) entry->state = State::kEmpty;
  done_.SignalAll();
}

}  // namespace psd
