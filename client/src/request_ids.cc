#include "request_ids.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "psd/random_id.h"

namespace psd {
namespace client {
namespace internal {

namespace {

std::atomic<uint64_t> next_seq{1};

thread_local RequestIdCarry* t_carry = nullptr;

// Batch ids not leased now, by credentials key, with their next sequence
// numbers. It holds at most as many ids as batches were ever open at once in
// this process.
struct BatchIdPool {
  absl::Mutex mu;
  std::map<uint64_t, std::vector<std::pair<uint64_t, uint64_t>>> free ABSL_GUARDED_BY(mu);
};

BatchIdPool& Pool() {
  static auto* pool = new BatchIdPool;  // never destroyed: leases may outlive main
  return *pool;
}

struct ProcessIds {
  absl::Mutex mu;
  std::map<uint64_t, uint64_t> by_key ABSL_GUARDED_BY(mu);
};

}  // namespace

uint64_t CredentialsKey(const ChannelSecurity& security) {
  if (security.token_file.empty()) return 0;
  const uint64_t key =
      std::hash<std::string>{}(absl::StrCat(security.token_file, "\n", security.token_role));
  return key != 0 ? key : 1;
}

uint64_t ProcessClientId(uint64_t credentials_key) {
  static const uint64_t id = RandomNonzeroId();
  if (credentials_key == 0) return id;
  static auto* ids = new ProcessIds;  // never destroyed, as the pool
  absl::MutexLock lock(&ids->mu);
  uint64_t& keyed = ids->by_key[credentials_key];
  if (keyed == 0) keyed = RandomNonzeroId();
  return keyed;
}

void SetNewRequestId(RequestId* id, uint64_t credentials_key) {
  RequestIdCarry* carry = t_carry;
  const uint64_t client_id = ProcessClientId(credentials_key);
  if (carry != nullptr && carry->next_ < carry->ids_.size() &&
      carry->ids_[carry->next_].client_id() == client_id) {
    *id = carry->ids_[carry->next_++];
    return;
  }
  id->set_client_id(client_id);
  id->set_seq(next_seq.fetch_add(1, std::memory_order_relaxed));
  if (carry != nullptr) {
    // A call the first attempt did not make (or made under other
    // credentials): from here on this attempt draws its own ids.
    carry->ids_.resize(carry->next_);
    carry->drawn_from_ = std::min(carry->drawn_from_, carry->next_);
    carry->ids_.push_back(*id);
    ++carry->next_;
  }
}

bool LastRequestIdWasResent() {
  const RequestIdCarry* carry = t_carry;
  return carry != nullptr && carry->next_ > 0 && carry->next_ - 1 < carry->drawn_from_;
}

RequestIdCarry::Attempt::Attempt(RequestIdCarry* carry) : previous_(t_carry) {
  carry->next_ = 0;
  carry->drawn_from_ = carry->ids_.size();
  t_carry = carry;
}

RequestIdCarry::Attempt::~Attempt() { t_carry = previous_; }

void RenumberRequestId(RequestId* id) {
  const RequestId old = *id;
  id->set_seq(next_seq.fetch_add(1, std::memory_order_relaxed));
  if (RequestIdCarry* carry = t_carry) {
    for (RequestId& kept : carry->ids_) {
      if (kept.client_id() == old.client_id() && kept.seq() == old.seq()) kept = *id;
    }
  }
}

BatchIdLease::BatchIdLease(uint64_t credentials_key) : credentials_key_(credentials_key) {
  BatchIdPool& pool = Pool();
  absl::MutexLock lock(&pool.mu);
  auto& free = pool.free[credentials_key_];
  if (free.empty()) {
    client_id_ = RandomNonzeroId();
    next_seq_ = 1;
  } else {
    std::tie(client_id_, next_seq_) = free.back();
    free.pop_back();
  }
}

BatchIdLease::~BatchIdLease() {
  BatchIdPool& pool = Pool();
  absl::MutexLock lock(&pool.mu);
  pool.free[credentials_key_].emplace_back(client_id_, next_seq_);
}

void BatchIdLease::Next(RequestId* id) {
  id->set_client_id(client_id_);
  id->set_seq(next_seq_++);
}

}  // namespace internal
}  // namespace client
}  // namespace psd
