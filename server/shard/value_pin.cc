#include "shard/value_pin.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "psd/dtype.h"
#include "psd/status.h"

namespace psd {

int64_t StringBytes(absl::Span<const std::string> values) {
  int64_t bytes = static_cast<int64_t>(values.size() * sizeof(std::string));
  for (const auto& v : values) bytes += static_cast<int64_t>(v.size());
  return bytes;
}

int64_t ChunkElements(DataType dtype, int64_t chunk_bytes) {
  const int64_t element = dtype == DT_STRING ? static_cast<int64_t>(sizeof(std::string))
                                             : static_cast<int64_t>(DataTypeSize(dtype));
  return std::max<int64_t>(1, chunk_bytes / std::max<int64_t>(1, element));
}

std::vector<int64_t> TouchedChunks(const WriteExtent& extent, int64_t elements,
                                   int64_t chunk_elements) {
  std::vector<int64_t> chunks;
  if (elements <= 0) return chunks;
  const int64_t num_chunks = (elements + chunk_elements - 1) / chunk_elements;
  if (extent.all()) {
    chunks.resize(num_chunks);
    for (int64_t c = 0; c < num_chunks; ++c) chunks[c] = c;
    return chunks;
  }
  const int64_t row = extent.row_elements();
  if (row <= 0) return chunks;
  // A row spans the chunks of its first and last element.
  for (int64_t r : extent.rows()) {
    const int64_t first = r * row / chunk_elements;
    const int64_t last = ((r + 1) * row - 1) / chunk_elements;
    for (int64_t c = first; c <= last; ++c) chunks.push_back(c);
  }
  std::sort(chunks.begin(), chunks.end());
  chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
  return chunks;
}

ValuePin::ValuePin(Device* device, DataType dtype, int64_t elements, int64_t chunk_bytes,
                   std::shared_ptr<const void> owner, const DeviceBuffer* live,
                   const std::vector<std::string>* live_strings)
    : device_(device),
      dtype_(dtype),
      elements_(elements),
      chunk_elements_(ChunkElements(dtype, chunk_bytes)),
      owner_(std::move(owner)),
      live_(live),
      live_strings_(live_strings) {}

int64_t ValuePin::byte_size() const {
  if (dtype_ == DT_STRING) return 0;
  return elements_ * static_cast<int64_t>(DataTypeSize(dtype_));
}

absl::StatusOr<bool> ValuePin::CopyChunks(absl::Span<const int64_t> chunks,
                                          MemoryAccountant* memory, const std::string& variable) {
  absl::MutexLock lock(&mu_);
  // Checked before copying any: under mu_, so no chunk is lent from the
  // live value between this check and the copies (Lend lends a copied
  // chunk from its copy).
  for (int64_t c : chunks) {
    if (lent_.count(c) > 0 && copies_.count(c) == 0) return false;
  }
  for (int64_t c : chunks) {
    if (copies_.count(c) > 0) continue;
    const int64_t begin = c * chunk_elements_;
    if (c < 0 || begin >= elements_) {
      return absl::InternalError(absl::StrCat("variable '", variable, "': chunk ", c,
                                              " is outside a pinned value of ", elements_,
                                              " elements"));
    }
    const int64_t end = std::min(elements_, begin + chunk_elements_);
    Chunk chunk;
    if (dtype_ == DT_STRING) {
      const auto first = live_strings_->begin() + begin;
      const int64_t bytes = StringBytes(absl::MakeConstSpan(&*first, end - begin));
      PSD_RETURN_IF_ERROR(memory->Reserve(bytes, variable));
      chunk.reservation = MemoryReservation(memory, bytes);
      chunk.strings.assign(first, live_strings_->begin() + end);
    } else {
      const size_t size = DataTypeSize(dtype_);
      const int64_t bytes = (end - begin) * static_cast<int64_t>(size);
      PSD_RETURN_IF_ERROR(memory->Reserve(bytes, variable));
      chunk.reservation = MemoryReservation(memory, bytes);
      auto buffer = device_->Allocate(static_cast<size_t>(bytes));
      if (!buffer.ok()) {
        return absl::Status(buffer.status().code(), absl::StrCat("variable '", variable, "': ",
                                                                 buffer.status().message()));
      }
      chunk.buffer = std::move(buffer).value();
      PSD_RETURN_IF_ERROR(device_->CopyRange(*live_, static_cast<size_t>(begin) * size,
                                             chunk.buffer.get(), 0, static_cast<size_t>(bytes)));
    }
    copied_bytes_ += chunk.reservation.bytes();
    copies_.emplace(c, std::move(chunk));
  }
  return true;
}

// A hold on one lent chunk of the live value: released (the chunk may be
// written again) when the last reference to it goes.
struct ValuePin::LiveLease {
  LiveLease(std::shared_ptr<const ValuePin> pin, int64_t chunk)
      : pin(std::move(pin)), chunk(chunk) {}
  LiveLease(const LiveLease&) = delete;
  LiveLease& operator=(const LiveLease&) = delete;
  ~LiveLease() { pin->Unlend(chunk); }

  const std::shared_ptr<const ValuePin> pin;
  const int64_t chunk;
};

void ValuePin::Unlend(int64_t chunk) const {
  absl::MutexLock lock(&mu_);
  auto it = lent_.find(chunk);
  if (it != lent_.end() && --it->second == 0) lent_.erase(it);
}

grpc::Slice LentSlice(LentBytes piece) {
  auto* hold = new std::shared_ptr<const void>(std::move(piece.hold));
  grpc_slice slice = grpc_slice_new_with_user_data(
      const_cast<char*>(piece.bytes.data()), piece.bytes.size(),
      [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); }, hold);
  return grpc::Slice(slice, grpc::Slice::STEAL_REF);
}

absl::StatusOr<std::vector<LentBytes>> ValuePin::Lend(int64_t offset, int64_t bytes) const {
  std::vector<LentBytes> pieces;
  const int64_t size = static_cast<int64_t>(DataTypeSize(dtype_));
  if (dtype_ == DT_STRING || offset < 0 || bytes < 0 || offset > byte_size() ||
      bytes > byte_size() - offset) {
    return absl::InternalError(absl::StrCat("lend of ", bytes, " bytes at ", offset,
                                            " from a pinned value of ", byte_size(), " bytes"));
  }
  std::shared_ptr<const ValuePin> self = weak_from_this().lock();
  if (!device_->host_memory() || self == nullptr) return pieces;
  const int64_t chunk_bytes = chunk_elements_ * size;
  absl::MutexLock lock(&mu_);
  while (bytes > 0) {
    const int64_t c = offset / chunk_bytes;
    const int64_t in_chunk = offset - c * chunk_bytes;
    const int64_t n = std::min(bytes, chunk_bytes - in_chunk);
    auto it = copies_.find(c);
    if (it != copies_.end()) {
      // A copy is never written: the pin (held) keeps it.
      pieces.push_back(LentBytes{
          absl::string_view(static_cast<const char*>(it->second.buffer->data()) + in_chunk,
                            static_cast<size_t>(n)),
          self});
    } else {
      ++lent_[c];
      pieces.push_back(LentBytes{absl::string_view(static_cast<const char*>(live_->data()) + offset,
                                                   static_cast<size_t>(n)),
                                 std::make_shared<const LiveLease>(self, c)});
    }
    offset += n;
    bytes -= n;
  }
  return pieces;
}

int64_t ValuePin::lent_chunks() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(lent_.size());
}

absl::Status ValuePin::Read(int64_t offset, int64_t bytes, void* dst) const {
  const int64_t size = static_cast<int64_t>(DataTypeSize(dtype_));
  if (dtype_ == DT_STRING || offset < 0 || bytes < 0 || offset > byte_size() ||
      bytes > byte_size() - offset) {
    return absl::InternalError(absl::StrCat("read of ", bytes, " bytes at ", offset,
                                            " from a pinned value of ", byte_size(), " bytes"));
  }
  const int64_t chunk_bytes = chunk_elements_ * size;
  char* out = static_cast<char*>(dst);
  while (bytes > 0) {
    const int64_t c = offset / chunk_bytes;
    const int64_t in_chunk = offset - c * chunk_bytes;
    const int64_t n = std::min(bytes, chunk_bytes - in_chunk);
    absl::MutexLock lock(&mu_);
    auto it = copies_.find(c);
    if (it != copies_.end()) {
      PSD_RETURN_IF_ERROR(device_->CopyToHost(*it->second.buffer, in_chunk, n, out));
    } else {
      PSD_RETURN_IF_ERROR(device_->CopyToHost(*live_, offset, n, out));
    }
    offset += n;
    bytes -= n;
    out += n;
  }
  return absl::OkStatus();
}

std::vector<std::string> ValuePin::Strings() const {
  std::vector<std::string> out;
  if (dtype_ != DT_STRING) return out;
  out.reserve(elements_);
  absl::MutexLock lock(&mu_);
  for (int64_t begin = 0, c = 0; begin < elements_; begin += chunk_elements_, ++c) {
    auto it = copies_.find(c);
    if (it != copies_.end()) {
      out.insert(out.end(), it->second.strings.begin(), it->second.strings.end());
    } else {
      const int64_t end = std::min(elements_, begin + chunk_elements_);
      out.insert(out.end(), live_strings_->begin() + begin, live_strings_->begin() + end);
    }
  }
  return out;
}

int64_t ValuePin::string_chars() const {
  int64_t chars = 0;
  if (dtype_ != DT_STRING) return chars;
  absl::MutexLock lock(&mu_);
  for (int64_t begin = 0, c = 0; begin < elements_; begin += chunk_elements_, ++c) {
    auto it = copies_.find(c);
    const int64_t end = std::min(elements_, begin + chunk_elements_);
    for (int64_t i = begin; i < end; ++i) {
      chars += static_cast<int64_t>(it != copies_.end() ? it->second.strings[i - begin].size()
                                                        : (*live_strings_)[i].size());
    }
  }
  return chars;
}

int64_t ValuePin::copied_bytes() const {
  absl::MutexLock lock(&mu_);
  return copied_bytes_;
}

int64_t ValuePin::copied_chunks() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(copies_.size());
}

}  // namespace psd
