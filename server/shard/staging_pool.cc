#include "shard/staging_pool.h"

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "psd/status.h"

namespace psd {

StagingPool::StagingPool(MemoryAccountant* memory, int64_t max_idle_bytes)
    : memory_(memory), max_idle_bytes_(max_idle_bytes) {
  memory_->set_reclaimer(this);
}

StagingPool::~StagingPool() {
  memory_->set_reclaimer(nullptr);
  Clear();
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> StagingPool::Acquire(Device* device, int64_t bytes,
                                                                   const std::string& name,
                                                                   MemoryReservation* reservation) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("variable '", name, "': negative allocation of ", bytes, " bytes"));
  }
  if (max_idle_bytes_ > 0 && bytes >= kMinPooledBytes) {
    absl::MutexLock lock(&mu_);
    // Newest first: its pages are the likeliest to be in cache.
    for (size_t i = idle_.size(); i-- > 0;) {
      Entry& e = idle_[i];
      if (e.device != device || static_cast<int64_t>(e.buffer->size()) != bytes) continue;
      std::unique_ptr<DeviceBuffer> buffer = std::move(e.buffer);
      *reservation = std::move(e.reservation);
      idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
      idle_bytes_ -= bytes;
      memory_->AddIdle(-bytes);
      ++hits_;
      return buffer;
    }
    ++misses_;
  }
  // Reserve reclaims idle buffers itself when the bytes do not fit.
  PSD_RETURN_IF_ERROR(memory_->Reserve(bytes, name));
  MemoryReservation held(memory_, bytes);
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> buffer =
      device->Allocate(static_cast<size_t>(bytes));
  if (!buffer.ok() && absl::IsResourceExhausted(buffer.status())) {
    // The device itself is full (GPU memory): of our idle buffers, maybe.
    std::vector<Entry> freed;
    {
      absl::MutexLock lock(&mu_);
      freed = TakeOldest(device, std::numeric_limits<int64_t>::max());
      for (const Entry& e : freed) reclaimed_bytes_ += e.reservation.bytes();
    }
    if (!freed.empty()) {
      Free(std::move(freed));
      buffer = device->Allocate(static_cast<size_t>(bytes));
    }
  }
  if (!buffer.ok()) {
    return absl::Status(buffer.status().code(),
                        absl::StrCat("variable '", name, "': ", buffer.status().message()));
  }
  *reservation = std::move(held);
  return std::move(buffer).value();
}

void StagingPool::Recycle(Device* device, std::unique_ptr<DeviceBuffer> buffer,
                          MemoryReservation reservation) {
  if (buffer == nullptr) return;
  const int64_t bytes = static_cast<int64_t>(buffer->size());
  if (max_idle_bytes_ <= 0 || bytes < kMinPooledBytes || bytes > max_idle_bytes_ ||
      reservation.bytes() != bytes || reservation.accountant() != memory_) {
    return;  // freed here, with its reservation
  }
  std::vector<Entry> evicted;
  {
    absl::MutexLock lock(&mu_);
    idle_.push_back(Entry{device, std::move(reservation), std::move(buffer)});
    idle_bytes_ += bytes;
    memory_->AddIdle(bytes);
    size_t drop = 0;
    int64_t dropped_bytes = 0;
    while (idle_bytes_ - dropped_bytes > max_idle_bytes_ || idle_.size() - drop > kMaxIdleBuffers) {
      dropped_bytes += static_cast<int64_t>(idle_[drop].buffer->size());
      ++drop;
    }
    if (drop > 0) evicted = TakeOldest(nullptr, dropped_bytes);
  }
  Free(std::move(evicted));
}

int64_t StagingPool::ReclaimIdle(int64_t bytes) {
  std::vector<Entry> freed;
  int64_t total = 0;
  {
    absl::MutexLock lock(&mu_);
    freed = TakeOldest(nullptr, bytes);
    for (const Entry& e : freed) total += e.reservation.bytes();
    reclaimed_bytes_ += total;
  }
  Free(std::move(freed));
  return total;
}

void StagingPool::Clear() {
  std::vector<Entry> freed;
  {
    absl::MutexLock lock(&mu_);
    freed = TakeOldest(nullptr, std::numeric_limits<int64_t>::max());
  }
  Free(std::move(freed));
}

StagingPool::Stats StagingPool::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.hits = hits_;
  s.misses = misses_;
  s.idle_bytes = idle_bytes_;
  s.idle_buffers = static_cast<int64_t>(idle_.size());
  s.reclaimed_bytes = reclaimed_bytes_;
  return s;
}

std::vector<StagingPool::Entry> StagingPool::TakeOldest(Device* device, int64_t bytes) {
  std::vector<Entry> taken;
  std::vector<Entry> kept;
  int64_t gathered = 0;
  for (Entry& e : idle_) {
    if (gathered < bytes && (device == nullptr || e.device == device)) {
      const int64_t n = static_cast<int64_t>(e.buffer->size());
      gathered += n;
      idle_bytes_ -= n;
      memory_->AddIdle(-n);
      taken.push_back(std::move(e));
    } else {
      kept.push_back(std::move(e));
    }
  }
  idle_ = std::move(kept);
  return taken;
}

void StagingPool::Free(std::vector<Entry> entries) {
  // Each entry's buffer is freed and its reservation released as it goes.
  entries.clear();
}

}  // namespace psd
