#include "shard/store_variable.h"

#include <algorithm>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/wire.h"

namespace psd {

std::shared_ptr<Variable::Contents> Variable::Swap(Contents&& next) {
  shape = next.shape;
  std::shared_ptr<Contents> old =
      std::exchange(contents, std::make_shared<Contents>(std::move(next)));
  absl::MutexLock lock(&pins_mu);
  pins.clear();
  fresh_pin.reset();
  return old;
}

std::shared_ptr<ValuePin> Variable::Pin(Device* device, int64_t chunk_bytes) const {
  absl::MutexLock lock(&pins_mu);
  if (auto fresh = fresh_pin.lock()) return fresh;
  const int64_t elements =
      dtype == DT_STRING ? static_cast<int64_t>(contents->strings.size())
      : contents->buffer == nullptr
          ? 0
          : static_cast<int64_t>(contents->buffer->size() / DataTypeSize(dtype));
  auto pin = std::make_shared<ValuePin>(device, dtype, elements, chunk_bytes, contents,
                                        contents->buffer.get(), &contents->strings);
  PrunePins();
  pins.push_back(pin);
  fresh_pin = pin;
  return pin;
}

absl::Status Variable::CopyOnWrite(MemoryAccountant* memory, const WriteExtent& extent) {
  std::vector<std::shared_ptr<ValuePin>> live;
  {
    absl::MutexLock lock(&pins_mu);
    fresh_pin.reset();
    PrunePins();
    for (const auto& weak : pins) {
      if (auto pin = weak.lock()) live.push_back(std::move(pin));
    }
  }
  if (live.empty()) return absl::OkStatus();
  // Every pin here is of `contents`: same elements and chunking.
  const std::vector<int64_t> chunks =
      TouchedChunks(extent, live[0]->elements(), live[0]->chunk_elements());
  bool lent = false;
  for (const auto& pin : live) {
    PSD_ASSIGN_OR_RETURN(const bool copied, pin->CopyChunks(chunks, memory, name));
    if (!copied) {
      lent = true;
      break;
    }
  }
  if (!lent) return absl::OkStatus();
  // A streamed read is sending some of these chunks straight from the live
  // value (ValuePin::Lend), and gRPC may hold them as long as the reader
  // is slow: rather than wait, the value moves to new storage, and the old
  // one, which every pin keeps, is never written again (as a replaced
  // value). A pin reads the old storage as it is from then on.
  Device* const device = live[0]->device();
  PSD_ASSIGN_OR_RETURN(Contents moved,
                       store_internal::Allocate(device, memory, dtype, contents->shape, name));
  PSD_RETURN_IF_ERROR(device->Copy(*contents->buffer, moved.buffer.get()));
  Swap(std::move(moved));
  return absl::OkStatus();
}

void Variable::FillInfo(const Device& device, VariableInfo* info) const {
  info->set_name(name);
  info->set_dtype(dtype);
  ShapeToProto(shape, info->mutable_shape());
  info->set_initialized(initialized);
  info->set_version(version);
  info->set_device(device.name());
  info->set_bytes(contents->reservation.bytes());
  info->set_replicated(replicated.load(std::memory_order_acquire));
  info->set_follows_move(follows.load(std::memory_order_acquire));
}

void Variable::PrunePins() const {
  pins.erase(std::remove_if(pins.begin(), pins.end(),
                            [](const std::weak_ptr<ValuePin>& p) { return p.expired(); }),
             pins.end());
}

namespace store_internal {

std::string Quoted(const std::string& name) { return absl::StrCat("variable '", name, "'"); }

// Bytes of `elements` elements of `element_size` each, or RESOURCE_EXHAUSTED
// when that does not even fit an int64.
absl::StatusOr<int64_t> ByteSize(int64_t elements, size_t element_size, const std::string& name) {
  if (element_size != 0 && elements > INT64_MAX / static_cast<int64_t>(element_size)) {
    return absl::ResourceExhaustedError(absl::StrCat(Quoted(name), ": ", elements,
                                                     " elements of ", element_size,
                                                     " bytes exceed any memory limit"));
  }
  return elements * static_cast<int64_t>(element_size);
}

// Decodes a DT_STRING tensor's content with its memory charged first: n
// decoded strings take n string objects (and n lengths while decoding)
// beside their bytes, many times the wire size of short strings, so that
// bound is reserved before anything is allocated, then trimmed to what the
// strings hold. The reservation is handed to `charged`.
absl::StatusOr<std::vector<std::string>> DecodeStringsCharged(
    MemoryAccountant* memory, absl::string_view content, int64_t n, absl::string_view what,
    const std::string& name, MemoryReservation* charged) {
  if (n < 0 || n > static_cast<int64_t>(content.size())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", content.size(),
                                                   " bytes cannot encode ", n, " strings"));
  }
  // n <= content.size() < 2^40 here: no overflow.
  const int64_t bound = n * static_cast<int64_t>(sizeof(std::string) + sizeof(uint64_t)) +
                        static_cast<int64_t>(content.size());
  PSD_RETURN_IF_ERROR(memory->Reserve(bound, name));
  MemoryReservation held(memory, bound);
  PSD_ASSIGN_OR_RETURN(auto strings, DecodeStrings(content, n, what));
  held.Shrink(bound - StringBytes(strings));
  *charged = std::move(held);
  return strings;
}

absl::StatusOr<Variable::Contents> Allocate(Device* device, MemoryAccountant* memory,
                                            DataType dtype, const TensorShape& shape,
                                            const std::string& name) {
  Variable::Contents c;
  c.shape = shape;
  const size_t element_size = dtype == DT_STRING ? sizeof(std::string) : DataTypeSize(dtype);
  PSD_ASSIGN_OR_RETURN(const int64_t bytes, ByteSize(shape.num_elements(), element_size, name));
  PSD_RETURN_IF_ERROR(memory->Reserve(bytes, name));
  c.reservation = MemoryReservation(memory, bytes);
  if (dtype == DT_STRING) {
    try {
      c.strings.resize(shape.num_elements());
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(absl::StrCat(
          Quoted(name), ": cannot allocate ", bytes, " bytes of host memory for its strings"));
    }
    return c;
  }
  auto buffer = device->Allocate(static_cast<size_t>(bytes));
  if (!buffer.ok()) {
    return absl::Status(buffer.status().code(),
                        absl::StrCat(Quoted(name), ": ", buffer.status().message()));
  }
  c.buffer = std::move(buffer).value();
  return c;
}

absl::StatusOr<Variable::Contents> AllocateStaging(StagingPool* pool, Device* device,
                                                   DataType dtype, const TensorShape& shape,
                                                   const std::string& name) {
  if (dtype == DT_STRING) {
    return absl::InternalError(absl::StrCat(Quoted(name), ": strings are not staged in a buffer"));
  }
  Variable::Contents c;
  c.shape = shape;
  PSD_ASSIGN_OR_RETURN(const int64_t bytes,
                       ByteSize(shape.num_elements(), DataTypeSize(dtype), name));
  PSD_ASSIGN_OR_RETURN(c.buffer, pool->Acquire(device, bytes, name, &c.reservation));
  return c;
}

void RecycleContents(StagingPool* pool, Device* device, std::shared_ptr<Variable::Contents> old) {
  // Only the last owner may take the buffer: a pin shares `old` and reads it.
  if (old == nullptr || old.use_count() != 1 || old->buffer == nullptr || !old->strings.empty()) {
    return;
  }
  pool->Recycle(device, std::move(old->buffer), std::move(old->reservation));
}

// Contents holding `value` (already validated to have the variable's dtype).
absl::StatusOr<Variable::Contents> ContentsFromProto(Device* device, MemoryAccountant* memory,
                                                     const TensorProto& value,
                                                     const TensorShape& shape,
                                                     const std::string& name) {
  if (value.dtype() == DT_STRING) {
    Variable::Contents c;
    c.shape = shape;
    PSD_ASSIGN_OR_RETURN(c.strings,
                         DecodeStringsCharged(memory, value.content(), shape.num_elements(),
                                              absl::StrCat("value for ", Quoted(name)), name,
                                              &c.reservation));
    return c;
  }
  PSD_ASSIGN_OR_RETURN(auto c, Allocate(device, memory, value.dtype(), shape, name));
  PSD_RETURN_IF_ERROR(
      device->CopyFromHost(value.content().data(), value.content().size(), c.buffer.get(), 0));
  return c;
}

absl::Status CheckInitialized(const Variable& var) ABSL_SHARED_LOCKS_REQUIRED(var.mu) {
  if (!var.initialized) {
    return absl::FailedPreconditionError(
        absl::StrCat("Attempting to use uninitialized value ", var.name));
  }
  return absl::OkStatus();
}

}  // namespace store_internal
}  // namespace psd
