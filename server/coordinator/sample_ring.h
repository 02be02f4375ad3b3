// SampleRing: the last `capacity` samples of a time series, oldest dropped
// first. The coordinator's console keeps its chart data in one (a sample
// every kConsoleSampleIntervalSeconds, kConsoleSampleCapacity of them: the
// last 15 minutes), so its memory is fixed however long the process runs.
//
//   SampleRing<ConsoleSample> ring(180);
//   ring.Push(sample);                                // from the sampler
//   std::vector<ConsoleSample> last = ring.Snapshot();  // oldest first
//
// Thread-safety: thread-safe; Push and Snapshot may run concurrently.
#ifndef PSD_SERVER_COORDINATOR_SAMPLE_RING_H_
#define PSD_SERVER_COORDINATOR_SAMPLE_RING_H_

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace psd {

template <typename T>
class SampleRing {
 public:
  // `capacity` >= 1 (a smaller one is taken as 1).
  explicit SampleRing(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {
    slots_.reserve(capacity_);
  }
  SampleRing(const SampleRing&) = delete;
  SampleRing& operator=(const SampleRing&) = delete;

  // Appends `sample`, dropping the oldest when full.
  void Push(T sample) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (slots_.size() < capacity_) {
      slots_.push_back(std::move(sample));
    } else {
      slots_[next_] = std::move(sample);
    }
    next_ = (next_ + 1) % capacity_;
    ++pushed_;
  }

  // The samples held, oldest first.
  std::vector<T> Snapshot() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::vector<T> out;
    out.reserve(slots_.size());
    // Until the ring is full the oldest is slot 0; afterwards it is the
    // slot written next.
    const size_t first = slots_.size() < capacity_ ? 0 : next_;
    for (size_t i = 0; i < slots_.size(); ++i) out.push_back(slots_[(first + i) % slots_.size()]);
    return out;
  }

  size_t capacity() const { return capacity_; }
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return slots_.size();
  }
  // Samples pushed since construction (also those dropped since).
  size_t pushed() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return pushed_;
  }

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::vector<T> slots_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;  // the slot the next Push writes
  size_t pushed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_SAMPLE_RING_H_
