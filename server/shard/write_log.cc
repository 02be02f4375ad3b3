#include "shard/write_log.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace psd {

WriteLog::WriteLog(std::string name, int64_t max_bytes, MemoryAccountant* memory)
    : name_(std::move(name)), max_bytes_(max_bytes), memory_(memory) {}

int64_t WriteLog::ChargedBytes(const MoveWrite& write) {
  // The op's encoded size stands for its parsed size; 64 for the entry.
  return static_cast<int64_t>(write.op().ByteSizeLong()) + 64;
}

absl::StatusOr<uint64_t> WriteLog::Append(MoveWrite write, const std::string& variable) {
  const int64_t bytes = ChargedBytes(write);
  absl::MutexLock lock(&mu_);
  if (!closed_.ok()) return closed_;
  if (bytes_ + bytes > max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        name_, ": writes waiting for its readers would pass ", max_bytes_, " bytes (",
        bytes_, " held, ", bytes, " more for a write to ", variable,
        "); a reader does not keep up"));
  }
  if (memory_ != nullptr) {
    if (absl::Status room = memory_->Reserve(bytes, variable); !room.ok()) {
      return absl::ResourceExhaustedError(
          absl::StrCat(name_, ": no memory to keep a write for its readers: ", room.message()));
    }
    reservation_.Merge(MemoryReservation(memory_, bytes));
  }
  const uint64_t seq = next_seq_++;
  write.set_seq(seq);
  writes_.push_back(std::move(write));
  bytes_ += bytes;
  // Nobody to keep it for: it goes at once (a reader added later starts
  // from a snapshot that has it).
  TrimLocked();
  appended_.SignalAll();
  return seq;
}

void WriteLog::AddReader(uint64_t reader, uint64_t applied, bool in_sync) {
  absl::MutexLock lock(&mu_);
  readers_[reader] = Reader{std::min(applied, next_seq_ - 1), in_sync};
  acked_.SignalAll();
}

absl::Status WriteLog::SetInSync(uint64_t reader, bool in_sync) {
  absl::MutexLock lock(&mu_);
  auto it = readers_.find(reader);
  if (it == readers_.end()) {
    return absl::NotFoundError(absl::StrCat(name_, " has no reader ", reader));
  }
  it->second.in_sync = in_sync;
  acked_.SignalAll();
  return absl::OkStatus();
}

void WriteLog::RemoveReader(uint64_t reader) {
  absl::MutexLock lock(&mu_);
  readers_.erase(reader);
  TrimLocked();
  acked_.SignalAll();
}

absl::StatusOr<WriteLog::Pulled> WriteLog::Pull(uint64_t reader, uint64_t applied,
                                                int64_t max_bytes, absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  if (!closed_.ok()) return closed_;
  auto it = readers_.find(reader);
  if (it == readers_.end()) {
    return absl::NotFoundError(absl::StrCat(name_, " has no reader ", reader));
  }
  if (applied >= next_seq_) {
    return absl::InvalidArgumentError(absl::StrCat(
        name_, ": reader ", reader, " says it applied write ", applied, ", but the last is ",
        next_seq_ - 1));
  }
  const uint64_t first_held = next_seq_ - writes_.size();
  if (applied + 1 < first_held) {
    return absl::OutOfRangeError(absl::StrCat(
        name_, ": reader ", reader, " asks for the writes after ", applied, ", but those up to ",
        first_held - 1, " are gone (acknowledged before)"));
  }
  if (applied > it->second.acked) {
    it->second.acked = applied;
    TrimLocked();
    acked_.SignalAll();
  }
  const absl::Time deadline = absl::Now() + wait;
  while (closed_.ok() && next_seq_ - 1 <= applied && readers_.count(reader) > 0 &&
         !appended_.WaitWithDeadline(&mu_, deadline)) {
  }
  if (!closed_.ok()) return closed_;
  if (readers_.count(reader) == 0) {
    return absl::NotFoundError(absl::StrCat(name_, " no longer has reader ", reader));
  }
  Pulled pulled;
  int64_t bytes = 0;
  // Trimming keeps every write after this reader's acknowledged seq, and
  // it acknowledged `applied` at most (see above): the first one wanted is
  // held.
  const uint64_t first = next_seq_ - writes_.size();
  for (uint64_t seq = std::max(applied + 1, first); seq < next_seq_; ++seq) {
    const MoveWrite& w = writes_[seq - first];
    const int64_t b = static_cast<int64_t>(w.ByteSizeLong());
    if (!pulled.writes.empty() && bytes + b > max_bytes) break;
    pulled.writes.push_back(w);
    bytes += b;
  }
  pulled.last_seq = next_seq_ - 1;
  return pulled;
}

absl::Status WriteLog::WaitReplicated(uint64_t seq, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto behind = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<uint64_t> ids;
    for (const auto& [id, r] : readers_) {
      if (r.in_sync && r.acked < seq) ids.push_back(id);
    }
    return ids;
  };
  while (closed_.ok() && !behind().empty()) {
    if (acked_.WaitWithDeadline(&mu_, deadline)) {
      if (!closed_.ok()) break;
      const std::vector<uint64_t> late = behind();
      if (late.empty()) break;
      return absl::DeadlineExceededError(absl::StrCat(
          name_, ": write ", seq, " not acknowledged in time by reader(s) ",
          absl::StrJoin(late, ", ")));
    }
  }
  return closed_;
}

void WriteLog::Close(const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  if (!closed_.ok()) return;
  closed_ = why.ok() ? absl::CancelledError(absl::StrCat(name_, " was closed")) : why;
  writes_.clear();
  bytes_ = 0;
  reservation_.Reset();
  appended_.SignalAll();
  acked_.SignalAll();
}

uint64_t WriteLog::AckedByAllLocked() const {
  uint64_t acked = next_seq_ - 1;
  for (const auto& [id, r] : readers_) acked = std::min(acked, r.acked);
  return acked;
}

void WriteLog::TrimLocked() {
  const uint64_t acked = AckedByAllLocked();
  while (!writes_.empty() && writes_.front().seq() <= acked) {
    const int64_t b = ChargedBytes(writes_.front());
    bytes_ -= b;
    if (reservation_.bytes() > 0) reservation_.Shrink(std::min(b, reservation_.bytes()));
    writes_.pop_front();
  }
}

uint64_t WriteLog::last_seq() const {
  absl::MutexLock lock(&mu_);
  return next_seq_ - 1;
}

int64_t WriteLog::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

uint64_t WriteLog::acked_by_all() const {
  absl::MutexLock lock(&mu_);
  return AckedByAllLocked();
}

absl::StatusOr<uint64_t> WriteLog::acked(uint64_t reader) const {
  absl::MutexLock lock(&mu_);
  auto it = readers_.find(reader);
  if (it == readers_.end()) {
    return absl::NotFoundError(absl::StrCat(name_, " has no reader ", reader));
  }
  return it->second.acked;
}

}  // namespace psd
