#include "request_ids.h"

#include <atomic>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "psd/random_id.h"

namespace psd {
namespace client {
namespace internal {

namespace {

std::atomic<uint64_t> next_seq{1};

// Batch ids not leased now, with their next sequence numbers. It holds at
// most as many ids as batches were ever open at once in this process.
struct BatchIdPool {
  absl::Mutex mu;
  std::vector<std::pair<uint64_t, uint64_t>> free ABSL_GUARDED_BY(mu);
};

BatchIdPool& Pool() {
  static auto* pool = new BatchIdPool;  // never destroyed: leases may outlive main
  return *pool;
}

}  // namespace

uint64_t ProcessClientId() {
  static const uint64_t id = RandomNonzeroId();
  return id;
}

void SetNewRequestId(RequestId* id) {
  id->set_client_id(ProcessClientId());
  id->set_seq(next_seq.fetch_add(1, std::memory_order_relaxed));
}

BatchIdLease::BatchIdLease() {
  BatchIdPool& pool = Pool();
  absl::MutexLock lock(&pool.mu);
  if (pool.free.empty()) {
    client_id_ = RandomNonzeroId();
    next_seq_ = 1;
  } else {
    std::tie(client_id_, next_seq_) = pool.free.back();
    pool.free.pop_back();
  }
}

BatchIdLease::~BatchIdLease() {
  BatchIdPool& pool = Pool();
  absl::MutexLock lock(&pool.mu);
  pool.free.emplace_back(client_id_, next_seq_);
}

void BatchIdLease::Next(RequestId* id) {
  id->set_client_id(client_id_);
  id->set_seq(next_seq_++);
}

}  // namespace internal
}  // namespace client
}  // namespace psd
