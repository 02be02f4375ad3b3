// ValuePin: a variable's value frozen at one moment (a checkpoint fence, the
// start of a streamed read) without copying it up front.
//
// Copy-on-write in chunks. The pinned value is cut into chunks of
// chunk_elements() elements (about 1 MiB). A writer about to change a value
// in place first hands every pin of that value the chunks its write touches
// (TouchedChunks of its WriteExtent); each pin copies the ones it does not
// hold yet, accounted against the shard's memory limit. A pin reads a chunk
// from its copy when it has one, otherwise from the live value: a chunk no
// pin has copied has not been changed since the pins were taken, because
// nothing changes a chunk before every pin has copied it. So a 3-row scatter
// into a pinned 1 GiB embedding copies one to three chunks, not 1 GiB.
//
// A value replaced rather than changed in place (assign with new storage,
// restore, delete) is never written again: the pin keeps it alive through
// `owner` and reads it as it is.
//
//   // the variable's lock held, shared or exclusive:
//   auto pin = std::make_shared<ValuePin>(device, DT_FLOAT, n, 1 << 20, contents,
//                                         contents->buffer.get(), nullptr);
//   // a writer, holding the lock exclusively, before changing rows `rows`:
//   PSD_RETURN_IF_ERROR(pin->CopyChunks(
//       TouchedChunks(WriteExtent::Rows(rows, row_elements), pin->elements(),
//                     pin->chunk_elements()), memory, "emb"));
//   // a checkpoint, holding no lock:
//   PSD_RETURN_IF_ERROR(pin->Read(offset, n, host_buffer));
//
// Lending. A streamed read sends pinned bytes without copying them (Lend):
// a piece of a chunk copy (never written after it is made), or of the live
// value while no writer has copied that chunk. A lent live chunk is marked
// until its hold is released (when gRPC lets go of the slice that sends
// it); a writer that must change a lent chunk cannot wait for that (a slow
// reader would hold the variable's writes), so CopyChunks reports it and
// the writer moves the value to new storage instead (Variable::CopyOnWrite):
// the pinned value is then never written again, as a replaced one.
//
// Thread-safety: thread-safe. Reads of the live value and CopyChunks
// exclude each other per pin (`mu_`), so a reader never sees a chunk that a
// writer has started to change: by then the chunk is copied and read from
// the copy. Callers serialize CopyChunks with the writes to the live value
// (the variable's lock).
#ifndef PSD_SERVER_SHARD_VALUE_PIN_H_
#define PSD_SERVER_SHARD_VALUE_PIN_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "device/device.h"
#include "grpcpp/support/slice.h"
#include "shard/memory_accountant.h"

namespace psd {

// The elements of a value a write changes: all of them (dense updates,
// count_up_to), or whole rows of `row_elements` elements (scatters, sparse
// optimizer updates). Holds `rows` by reference: use it at once.
class WriteExtent {
 public:
  static WriteExtent All() { return WriteExtent(true, {}, 0); }
  static WriteExtent Rows(absl::Span<const int64_t> rows, int64_t row_elements) {
    return WriteExtent(false, rows, row_elements);
  }

  bool all() const { return all_; }
  absl::Span<const int64_t> rows() const { return rows_; }
  int64_t row_elements() const { return row_elements_; }

 private:
  WriteExtent(bool all, absl::Span<const int64_t> rows, int64_t row_elements)
      : all_(all), rows_(rows), row_elements_(row_elements) {}

  bool all_;
  absl::Span<const int64_t> rows_;
  int64_t row_elements_;
};

// The chunks (of `chunk_elements` elements each, the last one possibly
// shorter) of a value of `elements` elements that `extent` touches:
// ascending, each once. Rows must be in range (the store checked them).
std::vector<int64_t> TouchedChunks(const WriteExtent& extent, int64_t elements,
                                   int64_t chunk_elements);

// Elements per copy-on-write chunk of `dtype` for chunks of about
// `chunk_bytes` bytes (at least one element; a string counts as its
// std::string object).
int64_t ChunkElements(DataType dtype, int64_t chunk_bytes);

// Bytes string elements are accounted for: their characters plus the
// std::string objects.
int64_t StringBytes(absl::Span<const std::string> values);

// Pinned bytes lent without a copy: `bytes` stay valid and unchanged while
// `hold` lives (it keeps the pin, and so the value, alive).
struct LentBytes {
  absl::string_view bytes;
  std::shared_ptr<const void> hold;
};

// A slice of `piece`'s bytes that keeps its hold until gRPC lets go of it
// (a lent value sent without a copy).
grpc::Slice LentSlice(LentBytes piece);

// Owned by a shared_ptr where it lends (Lend needs one to hand out holds).
class ValuePin : public std::enable_shared_from_this<ValuePin> {
 public:
  // Pins `elements` elements of `dtype` held by `live` (fixed-size dtypes)
  // or `live_strings` (DT_STRING). `owner` keeps them alive as long as the
  // pin. `device` must outlive the pin.
  ValuePin(Device* device, DataType dtype, int64_t elements, int64_t chunk_bytes,
           std::shared_ptr<const void> owner, const DeviceBuffer* live,
           const std::vector<std::string>* live_strings);
  ValuePin(const ValuePin&) = delete;
  ValuePin& operator=(const ValuePin&) = delete;

  DataType dtype() const { return dtype_; }
  int64_t elements() const { return elements_; }
  int64_t chunk_elements() const { return chunk_elements_; }
  // Bytes of a fixed-size value (0 for strings).
  int64_t byte_size() const;
  // What keeps the pinned value alive: the store compares it with a
  // variable's current value to see whether it was replaced.
  const void* owner() const { return owner_.get(); }

  // Copies each of `chunks` (ascending, < the number of chunks) not copied
  // yet. Call it before changing them in the live value. Returns false,
  // copying nothing, when one of them is lent from the live value (Lend):
  // then it must not be changed in place at all. On RESOURCE_EXHAUSTED
  // (naming `variable`) the chunks copied before the failure stay copied:
  // they hold the pinned bytes either way.
  absl::StatusOr<bool> CopyChunks(absl::Span<const int64_t> chunks, MemoryAccountant* memory,
                                  const std::string& variable);

  // Copies `bytes` bytes of a fixed-size value at `offset` into host `dst`.
  absl::Status Read(int64_t offset, int64_t bytes, void* dst) const;
  // The same bytes without a copy, one piece per chunk they span, for as
  // long as each piece's hold lives. Empty (nothing lent: Read them) where
  // the device's memory is not host memory or no shared_ptr owns the pin.
  absl::StatusOr<std::vector<LentBytes>> Lend(int64_t offset, int64_t bytes) const;
  // Chunks of the live value lent now (for tests).
  int64_t lent_chunks() const;
  Device* device() const { return device_; }
  // A string value's elements.
  std::vector<std::string> Strings() const;
  // The characters of a string value's elements, without copying them.
  int64_t string_chars() const;

  // Bytes of chunk copies held (their memory reservation).
  int64_t copied_bytes() const;
  int64_t copied_chunks() const;

 private:
  struct Chunk {
    std::unique_ptr<DeviceBuffer> buffer;  // fixed-size dtypes
    std::vector<std::string> strings;      // DT_STRING
    MemoryReservation reservation;
  };

  Device* const device_;
  const DataType dtype_;
  const int64_t elements_;
  const int64_t chunk_elements_;
  const std::shared_ptr<const void> owner_;
  const DeviceBuffer* const live_;
  const std::vector<std::string>* const live_strings_;

  mutable absl::Mutex mu_;
  std::map<int64_t, Chunk> copies_ ABSL_GUARDED_BY(mu_);  // by chunk index
  int64_t copied_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Holds out on chunks of the live value, by chunk index (only chunks not
  // in copies_: a copied chunk is lent from its copy).
  mutable std::map<int64_t, int64_t> lent_ ABSL_GUARDED_BY(mu_);

  struct LiveLease;
  void Unlend(int64_t chunk) const;
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_VALUE_PIN_H_
