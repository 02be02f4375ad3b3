#include "shard/request_window.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "psd/status.h"

namespace psd {

namespace {

// A new client's ring (doubled as it needs, up to the window).
constexpr size_t kInitialRing = 4;
// Bounds of Client::dropped (about 40 bytes a scope).
constexpr size_t kMaxDroppedScopes = 4096;
constexpr int64_t kMaxDroppedScopesTotal = int64_t{1} << 18;

RequestId RequestIdOf(uint64_t client_id, uint64_t seq) {
  RequestId id;
  id.set_client_id(client_id);
  id.set_seq(seq);
  return id;
}

}  // namespace

RequestWindow::RequestWindow(int window, int max_clients, absl::Duration min_idle,
                             int64_t max_entries)
    : window_(window), max_clients_(max_clients), min_idle_(min_idle), max_entries_(max_entries) {}

void RequestWindow::Forget(std::unordered_map<uint64_t, Client>::iterator it) {
  entries_ -= static_cast<int64_t>(it->second.ring.size());
  late_entries_ -= static_cast<int64_t>(it->second.late.size());
  dropped_scopes_ -= static_cast<int64_t>(it->second.dropped.size());
  clients_.erase(it);
}

void RequestWindow::Drop(Client* client, const Entry& entry) {
  if (entry.state == State::kEmpty) return;
  DropSeq(client, entry.imported ? 0 : entry.result.scope, entry.seq,
          entry.state == State::kDone ? &entry.result : nullptr);
}

void RequestWindow::DropSeq(Client* client, uint64_t scope, uint64_t seq, const Result* done) {
  if (scope == 0) {
    client->dropped_any = std::max(client->dropped_any, seq);
    return;
  }
  Forgotten forgotten;
  forgotten.seq = seq;
  if (done != nullptr && done->status.ok()) {
    forgotten.done_ok = true;
    forgotten.version = done->version;
    forgotten.old_value = done->old_value;
  }
  auto [it, added] = client->dropped.try_emplace(scope, forgotten);
  if (!added) {
    if (seq > it->second.seq) it->second = forgotten;
    return;
  }
  ++dropped_scopes_;
  if (client->dropped.size() > kMaxDroppedScopes || dropped_scopes_ > kMaxDroppedScopesTotal) {
    // Out of room: every scope of this client is taken as forgotten up to
    // the highest (safe: at worst a retry is refused as too old).
    for (const auto& [ignored, dropped] : client->dropped) {
      client->dropped_any = std::max(client->dropped_any, dropped.seq);
    }
    dropped_scopes_ -= static_cast<int64_t>(client->dropped.size());
    client->dropped.clear();
  }
}

bool RequestWindow::MakeRoom(int64_t entries, const Client* keep) {
  while (entries_ + entries > max_entries_) {
    auto oldest = clients_.end();
    for (auto c = clients_.begin(); c != clients_.end(); ++c) {
      if (&c->second == keep) continue;
      if (oldest == clients_.end() || c->second.last_used < oldest->second.last_used) oldest = c;
    }
    if (oldest == clients_.end()) return false;
    const absl::Duration idle =
        absl::FromChrono(std::chrono::steady_clock::now() - oldest->second.last_seen);
    if (idle < min_idle_) return false;
    Forget(oldest);
  }
  return true;
}

void RequestWindow::Resize(Client* client, size_t size) {
  std::vector<Entry> ring(size);
  for (Entry& e : client->ring) {
    if (e.state == State::kEmpty) continue;
    // Two entries meet in the larger ring only if one is out of the window
    // already: the newer keeps the slot.
    Entry& slot = ring[e.seq % size];
    if (slot.state == State::kEmpty || slot.seq < e.seq) {
      Drop(client, slot);
      slot = std::move(e);
    } else {
      Drop(client, e);
    }
  }
  entries_ += static_cast<int64_t>(size) - static_cast<int64_t>(client->ring.size());
  client->ring = std::move(ring);
}

absl::StatusOr<RequestWindow::Entry*> RequestWindow::SlotFor(Client* client, uint64_t seq,
                                                             bool force) {
  for (;;) {
    const size_t size = client->ring.size();
    Entry& slot = client->ring[seq % size];
    const uint64_t newest = std::max(client->max_seq, seq);
    const bool taken = slot.state != State::kEmpty && slot.seq != seq &&
                       slot.seq + static_cast<uint64_t>(window_) > newest;
    if (!taken || size >= static_cast<size_t>(window_)) return &slot;
    const size_t grown = force ? static_cast<size_t>(window_)
                               : std::min(size * 2, static_cast<size_t>(window_));
    if (!MakeRoom(static_cast<int64_t>(grown - size), client) && !force) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the shard's exactly-once windows hold ", max_entries_,
          " requests (max_entries) and every client was active in the last ",
          absl::FormatDuration(min_idle_), "; request ", seq,
          " is refused until one goes idle; retry later"));
    }
    Resize(client, grown);
  }
}

RequestWindow::Entry* RequestWindow::AddLate(Client* client, uint64_t seq) {
  constexpr int64_t kMaxLateEntries = 65536;
  auto found = client->late.find(seq);
  if (found != client->late.end()) return &found->second;
  if (client->late.size() >= static_cast<size_t>(window_)) {
    Drop(client, client->late.begin()->second);
    client->late.erase(client->late.begin());
    --late_entries_;
  }
  if (late_entries_ >= kMaxLateEntries) return nullptr;
  ++late_entries_;
  Entry& late = client->late[seq];
  late.seq = seq;
  return &late;
}

absl::Status RequestWindow::CheckNotTooOld(const RequestId& id, uint64_t max_seq) const {
  if (max_seq >= static_cast<uint64_t>(window_) && id.seq() <= max_seq - window_) {
    return absl::AbortedError(absl::StrCat("request id too old: seq ", id.seq(), " of client ",
                                           absl::Hex(id.client_id()), " is more than ", window_,
                                           " behind its latest request ", max_seq));
  }
  return absl::OkStatus();
}

absl::Status RequestWindow::CheckScopeNotTooOld(const RequestId& id, const Client& client,
                                                 uint64_t scope) const {
  if (scope == 0) return CheckNotTooOld(id, client.max_seq);
  uint64_t forgotten = client.dropped_any;
  if (auto it = client.dropped.find(scope); it != client.dropped.end()) {
    forgotten = std::max(forgotten, it->second.seq);
  }
  if (id.seq() <= forgotten) {
    return absl::AbortedError(absl::StrCat(
        "request id too old: seq ", id.seq(), " of client ", absl::Hex(id.client_id()),
        " is at or before ", forgotten, ", the newest request of its variable that this shard's ",
        "exactly-once window no longer holds (its latest request is ", client.max_seq, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<RequestWindow::Result>> RequestWindow::ForgottenAnswer(
    const RequestId& id, const Client& client, uint64_t scope) const {
  if (scope != 0) {
    auto it = client.dropped.find(scope);
    if (it != client.dropped.end() && it->second.seq == id.seq() && it->second.done_ok) {
      Result result;
      result.version = it->second.version;
      result.old_value = it->second.old_value;
      result.scope = scope;
      return std::optional<Result>(result);
    }
  }
  PSD_RETURN_IF_ERROR(CheckScopeNotTooOld(id, client, scope));
  return std::optional<Result>();
}

absl::StatusOr<RequestWindow::Client*> RequestWindow::ClientFor(uint64_t client_id,
                                                                 CallerKey caller) {
  auto it = clients_.find(client_id);
  if (it != clients_.end()) {
    if (it->second.owner != caller) {
      // Said without the owner's key: a caller learns nothing about
      // another token from it.
      return absl::PermissionDeniedError(absl::StrCat(
          "request id client ", absl::Hex(client_id),
          " belongs to another caller (it was first used with another token); a client's "
          "request ids are bound to the token it first used them with. Use a client id of "
          "your own (a new session draws one)"));
    }
    return &it->second;
  }
  const size_t ring = std::min(kInitialRing, static_cast<size_t>(window_));
  if (static_cast<int>(clients_.size()) >= max_clients_) {
    auto oldest = clients_.begin();
    for (auto c = clients_.begin(); c != clients_.end(); ++c) {
      if (c->second.last_used < oldest->second.last_used) oldest = c;
    }
    // Only a client that stopped long ago is forgotten: its late retries
    // would be treated as new requests.
    const absl::Duration idle =
        absl::FromChrono(std::chrono::steady_clock::now() - oldest->second.last_seen);
    if (idle < min_idle_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the shard remembers exactly-once windows for ", max_clients_,
          " clients (max_clients) and all were active in the last ",
          absl::FormatDuration(min_idle_), "; client ", absl::Hex(client_id),
          " is refused until one goes idle"));
    }
    Forget(oldest);
  }
  if (!MakeRoom(static_cast<int64_t>(ring), nullptr)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the shard's exactly-once windows hold ", max_entries_,
        " requests (max_entries) and every client was active in the last ",
        absl::FormatDuration(min_idle_), "; client ", absl::Hex(client_id),
        " is refused until one goes idle"));
  }
  Client& client = clients_[client_id];
  client.owner = caller;
  client.ring.resize(ring);
  entries_ += static_cast<int64_t>(ring);
  return &client;
}

RequestWindow::Entry* RequestWindow::EntryFor(const RequestId& id) {
  auto it = clients_.find(id.client_id());
  if (it == clients_.end()) return nullptr;
  Entry& entry = it->second.ring[id.seq() % it->second.ring.size()];
  if (entry.seq == id.seq() && entry.state != State::kEmpty) return &entry;
  auto late = it->second.late.find(id.seq());
  return late != it->second.late.end() ? &late->second : nullptr;
}

absl::StatusOr<std::optional<RequestWindow::Result>> RequestWindow::Begin(const RequestId& id,
                                                                    CallerKey caller,
                                                                    bool wait_for_running,
                                                                    bool replay, uint64_t scope) {
  absl::MutexLock lock(&mu_);
  PSD_ASSIGN_OR_RETURN(Client * found, ClientFor(id.client_id(), caller));
  Client& client = *found;
  client.last_used = ++tick_;
  client.last_seen = std::chrono::steady_clock::now();
  // A request this window still holds is answered from it, however far the
  // client's newer requests went meanwhile (a retry after a failover, while
  // the process's other threads kept the new primary busy).
  if (Entry* known = EntryFor(id); known != nullptr && known->state == State::kDone) {
    return std::optional<Result>(known->result);
  }
  if (!replay && client.late.count(id.seq()) == 0) {
    PSD_ASSIGN_OR_RETURN(std::optional<Result> forgotten, ForgottenAnswer(id, client, scope));
    if (forgotten.has_value()) return forgotten;
  }
  for (;;) {
    Entry* entry = EntryFor(id);
    if (entry == nullptr) break;
    if (entry->state == State::kDone) return std::optional<Result>(entry->result);
    if (!wait_for_running) {
      return absl::UnavailableError(absl::StrCat(
          "request ", id.seq(), " of client ", absl::Hex(id.client_id()),
          " is still running (an earlier attempt); retry"));
    }
    done_.Wait(&mu_);  // a duplicate of a running request: wait for it
  }
  // Looked up again: waiting released the lock, and the client may have
  // been forgotten and re-created meanwhile, or its window moved past this
  // id (an imported window, see Import).
  PSD_ASSIGN_OR_RETURN(Client * owner_found, ClientFor(id.client_id(), caller));
  Client& owner = *owner_found;
  if (!CheckNotTooOld(id, owner.max_seq).ok()) {
    // Older than the ring reaches: a replay (its source applied it), or a
    // request of its scope this window never forgot (see Too old). Run,
    // recorded beside the ring.
    if (!replay) {
      // Forgotten while this waited for its running duplicate?
      PSD_ASSIGN_OR_RETURN(std::optional<Result> forgotten, ForgottenAnswer(id, owner, scope));
      if (forgotten.has_value()) return forgotten;
    }
    Entry* late = AddLate(&owner, id.seq());
    if (late == nullptr) {
      // No room beside the ring either.
      if (!replay) return CheckNotTooOld(id, owner.max_seq);
      DropSeq(&owner, scope, id.seq());  // runs unrecorded: its retry is too old
      return std::optional<Result>();
    }
    late->state = State::kRunning;
    late->result = Result{};
    late->result.scope = scope;
    late->imported = false;
    return std::optional<Result>();
  }
  owner.last_seen = std::chrono::steady_clock::now();
  PSD_ASSIGN_OR_RETURN(Entry * found_slot, SlotFor(&owner, id.seq(), /*force=*/false));
  Entry& slot = *found_slot;
  if (slot.seq != id.seq()) Drop(&owner, slot);
  slot.seq = id.seq();
  slot.state = State::kRunning;
  slot.result = Result{};
  slot.result.scope = scope;
  slot.imported = false;
  if (id.seq() > owner.max_seq) owner.max_seq = id.seq();
  return std::optional<Result>();
}

void RequestWindow::Finish(const RequestId& id, Result result) {
  absl::MutexLock lock(&mu_);
  if (Entry* entry = EntryFor(id)) {
    entry->state = State::kDone;
    const uint64_t scope = entry->result.scope;
    entry->result = std::move(result);
    if (entry->result.scope == 0) entry->result.scope = scope;  // Begin's
  }
  done_.SignalAll();
}

void RequestWindow::Abandon(const RequestId& id) {
  absl::MutexLock lock(&mu_);
  if (Entry* entry = EntryFor(id)) entry->state = State::kEmpty;
  if (auto it = clients_.find(id.client_id()); it != clients_.end()) {
    late_entries_ -= static_cast<int64_t>(it->second.late.erase(id.seq()));
  }
  done_.SignalAll();
}

uint64_t RequestWindow::ScopeOf(absl::string_view name) {
  const uint64_t scope = absl::Hash<absl::string_view>{}(name);
  return scope != 0 ? scope : 1;
}

void RequestWindow::Export(RequestWindowState* state,
                           const absl::flat_hash_set<uint64_t>* scopes) const {
  absl::MutexLock lock(&mu_);
  state->Clear();
  for (const auto& [client_id, client] : clients_) {
    RequestWindowState::Client* out = state->add_clients();
    out->set_client_id(client_id);
    out->set_owner(client.owner);
    out->set_max_seq(client.max_seq);
    std::vector<const Entry*> entries;
    for (const Entry& entry : client.ring) entries.push_back(&entry);
    for (const auto& [seq, entry] : client.late) entries.push_back(&entry);
    for (const Entry* e_ptr : entries) {
      const Entry& entry = *e_ptr;
      if (entry.state != State::kDone) continue;
      if (scopes != nullptr && scopes->count(entry.result.scope) == 0) continue;
      RequestWindowState::Entry* e = out->add_entries();
      e->set_seq(entry.seq);
      e->set_code(static_cast<int>(entry.result.status.code()));
      if (!entry.result.status.ok()) e->set_message(std::string(entry.result.status.message()));
      e->set_version(entry.result.version);
      e->set_old_value(entry.result.old_value);
    }
  }
}

void RequestWindow::Import(const RequestWindowState& state, uint64_t scope) {
  absl::MutexLock lock(&mu_);
  for (const RequestWindowState::Client& in : state.clients()) {
    auto it = clients_.find(in.client_id());
    if (it == clients_.end()) {
      if (static_cast<int>(clients_.size()) >= max_clients_) continue;
      Client& fresh = clients_[in.client_id()];
      fresh.owner = in.owner();
      fresh.ring.resize(std::min(kInitialRing, static_cast<size_t>(window_)));
      entries_ += static_cast<int64_t>(fresh.ring.size());
      fresh.last_used = ++tick_;
      fresh.last_seen = std::chrono::steady_clock::now();
      it = clients_.find(in.client_id());
    } else if (it->second.owner != in.owner()) {
      continue;
    }
    Client& client = it->second;
    if (in.max_seq() > client.max_seq) client.max_seq = in.max_seq();
    // What the other window forgot is not known by scope: everything below
    // its ring's reach may have run there.
    if (in.max_seq() > static_cast<uint64_t>(window_)) {
      client.dropped_any = std::max(client.dropped_any, in.max_seq() - window_);
    }
    for (const RequestWindowState::Entry& e : in.entries()) {
      if (!CheckNotTooOld(RequestIdOf(in.client_id(), e.seq()), client.max_seq).ok()) {
        // Older than the ring (another shard's late entry): kept beside it.
        if (Entry* late = AddLate(&client, e.seq())) {
          late->state = State::kDone;
          late->result.status =
              absl::Status(static_cast<absl::StatusCode>(e.code()), e.message());
          late->result.version = e.version();
          late->result.old_value = e.old_value();
          late->result.scope = scope;
          late->imported = true;
        } else {
          DropSeq(&client, 0, e.seq());
        }
        continue;
      }
      // Imported ids must stay known (a retry of one is never run again):
      // the ring grows for them whatever max_entries says.
      Entry& slot = **SlotFor(&client, e.seq(), /*force=*/true);
      // The newer request keeps the slot (a running one too: its Finish
      // then records nothing, and a duplicate waiting for it finds it too
      // old, as Begin checks again after waiting).
      if (slot.state != State::kEmpty && slot.seq >= e.seq()) {
        if (slot.seq != e.seq()) DropSeq(&client, 0, e.seq());
        continue;
      }
      Drop(&client, slot);
      slot.seq = e.seq();
      slot.state = State::kDone;
      slot.result.status =
          absl::Status(static_cast<absl::StatusCode>(e.code()), e.message());
      slot.result.version = e.version();
      slot.result.old_value = e.old_value();
      slot.result.scope = scope;
      slot.imported = true;
    }
  }
  done_.SignalAll();
}

}  // namespace psd
