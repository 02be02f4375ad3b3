// VariableStore's core: construction, the name map and the incarnation
// check. The operations are in store_*.cc by kind: store_lifecycle.cc
// (create, delete, list, initialize), store_data_ops.cc (read, gather,
// assign, scatter, count_up_to), store_optimizer.cc (optimizer applies),
// store_streams.cc, store_batch.cc and store_checkpoint.cc (fences and
// restore).
#include "shard/variable_store.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "shard/store_internal.h"

namespace psd {

using store_internal::Quoted;

namespace {

bool IsCpu(const Device& device) { return device.name().rfind("cpu", 0) == 0; }

}  // namespace

VariableStore::VariableStore(Device* device, const VariableStoreOptions& options)
    : device_(device),
      own_host_device_(IsCpu(*device) ? nullptr : NewCpuDevice()),
      host_device_(own_host_device_ != nullptr ? own_host_device_.get() : device),
      options_(options),
      memory_(options.memory_limit_bytes),
      pool_(&memory_, options.staging_pool_bytes),
      requests_(options.request_window) {}

absl::Status VariableStore::CheckIncarnation(uint64_t requested) const {
  // A replayed write (a move's or backup's copy of its source's log) was
  // checked against its source's incarnation when the source ran it.
  if (store_internal::ReplayingMove()) return absl::OkStatus();
  if (requested != 0 && requested != options_.incarnation) {
    return absl::AbortedError(absl::StrFormat(
        "stale handle: the request was made for shard incarnation %016x, this shard is "
        "incarnation %016x (it restarted and lost its memory)",
        requested, options_.incarnation));
  }
  return absl::OkStatus();
}

VariableStore::~VariableStore() {
  std::thread watcher;
  {
    absl::MutexLock lock(&ack_watch_mu_);
    ack_watch_stopping_ = true;
    ack_watch_changed_.SignalAll();
    watcher.swap(ack_watcher_);
  }
  if (watcher.joinable()) watcher.join();
}

size_t VariableStore::num_variables() const {
  absl::ReaderMutexLock lock(&mu_);
  return variables_.size() + tables_.size();
}

absl::Status VariableStore::NotServed(const std::string& name, uint64_t follows) const {
  if (follows != 0) {
    return absl::UnavailableError(absl::StrCat(
        Quoted(name), " is a backup on this shard (it follows its primary by move ",
        absl::Hex(follows), ") and serves only once promoted; retry"));
  }
  return absl::UnavailableError(absl::StrCat(
      Quoted(name), " is moving to this shard and serves once the move completes; retry"));
}

bool VariableStore::LeaseLapsed(bool replicated) const {
  if (!replicated || store_internal::ReplayingMove()) return false;
  const ShardLease* lease = lease_.load(std::memory_order_acquire);
  return lease != nullptr && !lease->Held();
}

absl::Status VariableStore::LeaseExpired(const std::string& name) const {
  return absl::UnavailableError(absl::StrCat(
      Quoted(name), " is a replicated part and this shard's coordinator lease expired (lease "
      "expired): it serves again once the coordinator renews the lease; retry"));
}

uint64_t VariableStore::LeaseTerm() const {
  const ShardLease* lease = lease_.load(std::memory_order_acquire);
  return lease == nullptr ? 0 : lease->term();
}

absl::Status VariableStore::LeaseHeldToAnswer(const std::string& name, uint64_t term) const {
  const ShardLease* lease = lease_.load(std::memory_order_acquire);
  if (lease == nullptr || store_internal::ReplayingMove()) return absl::OkStatus();
  const ShardLease::Clock::time_point now = ShardLease::Clock::now();
  if (lease->HeldInTerm(term, now)) {
    last_leased_answer_ns_.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count(),
        std::memory_order_relaxed);
    return absl::OkStatus();
  }
  bool found = false;
  bool replicated = false;
  {
    absl::ReaderMutexLock lock(&mu_);
    if (auto it = variables_.find(name); it != variables_.end()) {
      found = true;
      replicated = it->second->replicated.load(std::memory_order_acquire);
    } else if (auto table = tables_.find(name); table != tables_.end()) {
      found = true;
      replicated = table->second->replicated.load(std::memory_order_acquire);
    }
  }
  // A part gone from this shard since the write may have been failed over
  // (DropParts) with the write on no other replica: never answered OK then.
  if (found && !replicated) return absl::OkStatus();
  const bool held = lease->Held(now);
  return absl::UnavailableError(absl::StrCat(
      "write to ", Quoted(name), " not answered: ",
      held ? "this shard's coordinator lease expired (lease expired) after the write applied and "
             "was granted anew, so the part may have been failed over meanwhile"
           : "this shard's coordinator lease expired (lease expired) before the answer",
      found ? "" : ", and the part is no longer on this shard",
      " (the write may have been applied; its retry with the same request id is answered, not "
      "applied again, where it was applied); retry"));
}

absl::StatusOr<std::shared_ptr<Variable>> VariableStore::Find(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = variables_.find(name);
  if (it != variables_.end() && it->second->incoming.load(std::memory_order_acquire) &&
      !store_internal::ReplayingMove()) {
    return NotServed(name, it->second->follows.load(std::memory_order_acquire));
  }
  if (it == variables_.end()) {
    if (auto table = tables_.find(name); table != tables_.end()) {
      const EmbeddingPart& part = *table->second;
      // A table's part moving (back) in answers as incoming, not by where
      // it went last.
      if (part.incoming.load(std::memory_order_acquire) && !store_internal::ReplayingMove()) {
        return NotServed(name, part.follows.load(std::memory_order_acquire));
      }
      if (LeaseLapsed(part.replicated.load(std::memory_order_acquire))) {
        return LeaseExpired(name);
      }
    }
    if (auto moved = moved_away_.find(name); moved != moved_away_.end()) {
      if (moved->second == store_internal::kNoShard) {
        return absl::AbortedError(absl::StrCat(
            "stale handle: part ", name, " was failed over to another shard while this shard ",
            "was cut off from the coordinator; refresh the variable from the coordinator"));
      }
      return absl::AbortedError(absl::StrCat("stale handle: part ", name, " moved to shard ",
                                             moved->second,
                                             "; refresh the variable from the coordinator"));
    }
    if (auto table = tables_.find(name); table != tables_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          Quoted(name), " is an embedding table: only gather, scatter_update/add/sub and "
          "sparse optimizer applies by key (and its own export, import, delete_keys and evict) "
          "apply to it"));
    }
    return absl::NotFoundError(absl::StrCat(Quoted(name), " not found"));
  }
  if (LeaseLapsed(it->second->replicated.load(std::memory_order_acquire))) {
    return LeaseExpired(name);
  }
  return it->second;
}

}  // namespace psd
