// Variable: one variable a VariableStore holds (its declaration and its
// value), and the helpers that build a value's Contents with its memory
// charged to the shard's MemoryAccountant.
//
// Internal to the store: only VariableStore's own source files
// (variable_store.cc and store_*.cc) include it.
//
// Thread-safety: a Variable's declaration is immutable; its state is guarded
// by its own reader/writer lock `mu`, its pins by `pins_mu` (see the members).
#ifndef PSD_SERVER_SHARD_STORE_VARIABLE_H_
#define PSD_SERVER_SHARD_STORE_VARIABLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "device/device.h"
#include "psd/shard.pb.h"
#include "psd/tensor.h"
#include "shard/memory_accountant.h"
#include "shard/staging_pool.h"
#include "shard/value_pin.h"

namespace psd {

// One variable's declaration (immutable) and state (guarded by `mu`).
class Variable {
 public:
  // The bytes and shape of a variable's value, prepared outside the lock and
  // swapped in under it.
  struct Contents {
    TensorShape shape;
    std::unique_ptr<DeviceBuffer> buffer;  // fixed-size dtypes
    std::vector<std::string> strings;      // DT_STRING
    MemoryReservation reservation;
  };

  Variable(std::string name, DataType dtype, TensorShape declared_shape, TensorShape full_shape,
           std::vector<int64_t> slice_offset, InitializerSpec initializer,
           std::unique_ptr<TensorProto> initial_value)
      : name(std::move(name)),
        dtype(dtype),
        full_shape(std::move(full_shape)),
        slice_offset(std::move(slice_offset)),
        initializer(std::move(initializer)),
        shape(std::move(declared_shape)),
        initial_value(std::move(initial_value)) {}

  const std::string name;
  const DataType dtype;
  // Placement inside a partitioned variable (full_shape == shape and zero
  // offset when unpartitioned); random initializers index by full position.
  const TensorShape full_shape;
  const std::vector<int64_t> slice_offset;
  // Used when created without an initial value.
  const InitializerSpec initializer;
  // A part moving in from another shard (MoveIn): client ops on it are
  // UNAVAILABLE until the move commits; only the move writes it.
  std::atomic<bool> incoming{false};
  // A backup's copy (docs/replication.md): the follow move id it is kept
  // by, 0 otherwise. Set with `incoming` (not served, not saved) and
  // cleared when PromoteReplica makes it the primary's.
  std::atomic<uint64_t> follows{0};
  // A part of a replicated variable (CreateVariableRequest.replicated):
  // served only while the shard holds its coordinator lease.
  std::atomic<bool> replicated{false};

  mutable absl::Mutex mu;
  TensorShape shape ABSL_GUARDED_BY(mu);
  // Never null. Pins (checkpoint snapshots, streamed reads) share it: they
  // keep a replaced value alive, and writers copy into them the chunks they
  // change in place (CopyOnWrite).
  std::shared_ptr<Contents> contents ABSL_GUARDED_BY(mu) = std::make_shared<Contents>();
  // The pins of `contents`. Pinners hold `mu` only shared, hence their own
  // mutex. Swap drops them: a replaced value is never written again.
  mutable absl::Mutex pins_mu ABSL_ACQUIRED_AFTER(mu);
  mutable std::vector<std::weak_ptr<ValuePin>> pins ABSL_GUARDED_BY(pins_mu);
  // The newest pin while no write has happened since it was taken: later
  // pinners share it instead of making writers copy for each of them.
  mutable std::weak_ptr<ValuePin> fresh_pin ABSL_GUARDED_BY(pins_mu);
  bool initialized ABSL_GUARDED_BY(mu) = false;
  uint64_t version ABSL_GUARDED_BY(mu) = 0;
  // The value given at creation, held until the variable is first
  // initialized; dropped then so a big initial value is not kept twice.
  // Charged to the shard's memory while held.
  std::unique_ptr<TensorProto> initial_value ABSL_GUARDED_BY(mu);
  MemoryReservation initial_value_reservation ABSL_GUARDED_BY(mu);

  void DropInitialValue() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    initial_value.reset();
    initial_value_reservation.Reset();
  }

  // Replaces the value and returns the old one. The old buffer and its
  // reservation are released when the last streamed read of it finishes
  // (or given to the staging pool by the caller: RecycleContents).
  std::shared_ptr<Contents> Swap(Contents&& next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Pins the current value (see ValuePin).
  std::shared_ptr<ValuePin> Pin(Device* device, int64_t chunk_bytes) const
      ABSL_SHARED_LOCKS_REQUIRED(mu);

  // The one place a write protects the pins of the value it is about to
  // change in place: copies the chunks `extent` touches into every pin that
  // lacks them, or, when a pin has lent one of them to a streamed read
  // (ValuePin::Lend), moves the value to new storage (charged to `memory`)
  // so the lent bytes never change. Every in-place write calls it first and
  // then writes `contents` as it is after the call; on failure nothing of
  // the value has changed.
  absl::Status CopyOnWrite(MemoryAccountant* memory, const WriteExtent& extent)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  void FillInfo(const Device& device, VariableInfo* info) const ABSL_SHARED_LOCKS_REQUIRED(mu);

 private:
  void PrunePins() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(pins_mu);
};

namespace store_internal {

// How messages name a variable: "variable 'name'".
std::string Quoted(const std::string& name);

// Bytes of `elements` elements of `element_size` each, or RESOURCE_EXHAUSTED
// when that does not even fit an int64.
absl::StatusOr<int64_t> ByteSize(int64_t elements, size_t element_size, const std::string& name);

// Decodes a DT_STRING tensor's content with its memory charged first: n
// decoded strings take n string objects (and n lengths while decoding)
// beside their bytes, many times the wire size of short strings, so that
// bound is reserved before anything is allocated, then trimmed to what the
// strings hold. The reservation is handed to `charged`.
absl::StatusOr<std::vector<std::string>> DecodeStringsCharged(
    MemoryAccountant* memory, absl::string_view content, int64_t n, absl::string_view what,
    const std::string& name, MemoryReservation* charged);

// Empty contents of `shape` (strings on the host, fixed-size dtypes in a
// device buffer), charged to `memory` first.
absl::StatusOr<Variable::Contents> Allocate(Device* device, MemoryAccountant* memory,
                                            DataType dtype, const TensorShape& shape,
                                            const std::string& name);

// Allocate for a fixed-size dtype, from `pool`: the buffer's contents are
// unspecified (not zeroed), so the caller writes every byte before the
// value is read.
absl::StatusOr<Variable::Contents> AllocateStaging(StagingPool* pool, Device* device,
                                                   DataType dtype, const TensorShape& shape,
                                                   const std::string& name);

// Gives a replaced value's buffer (of `device`) and its reservation to
// `pool`, unless something else still holds the value (a pin: it is freed
// when the pin ends, as before) or it is not a plain fixed-size buffer.
void RecycleContents(StagingPool* pool, Device* device, std::shared_ptr<Variable::Contents> old);

// Contents holding `value` (already validated to have the variable's dtype).
absl::StatusOr<Variable::Contents> ContentsFromProto(Device* device, MemoryAccountant* memory,
                                                     const TensorProto& value,
                                                     const TensorShape& shape,
                                                     const std::string& name);

// FAILED_PRECONDITION, in TensorFlow's words, unless `var` is initialized.
absl::Status CheckInitialized(const Variable& var) ABSL_SHARED_LOCKS_REQUIRED(var.mu);

}  // namespace store_internal
}  // namespace psd

#endif  // PSD_SERVER_SHARD_STORE_VARIABLE_H_
