#include "device/device_checks.h"

#include "absl/strings/str_cat.h"
#include "psd/dtype.h"

namespace psd {
namespace internal {

absl::Status UnsupportedDtype(DataType dtype) {
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", DataTypeName(dtype), " is not stored on a device"));
}

absl::Status CheckCopyRange(const char* what, size_t offset, size_t bytes, size_t size) {
  if (offset > size || bytes > size - offset) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", bytes, " bytes at offset ", offset,
                                                   " exceeds a buffer of ", size, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status CheckDenseCount(int64_t n, size_t elem_size, size_t buffer_bytes) {
  if (n < 0 || static_cast<uint64_t>(n) > buffer_bytes / elem_size) {
    return absl::InternalError(
        absl::StrCat("dense update of ", n, " elements on a buffer of ", buffer_bytes / elem_size));
  }
  return absl::OkStatus();
}

absl::Status CheckArithmetic(DataType dtype, UpdateKind op) {
  if (op != UpdateKind::kAssign && dtype == DT_BOOL) {
    return absl::InvalidArgumentError(
        absl::StrCat(AssignOpName(op), " needs a numeric dtype, got bool"));
  }
  return absl::OkStatus();
}

absl::Status CheckRows(absl::Span<const int64_t> indices, int64_t row_elements, size_t elem_size,
                       size_t buffer_bytes) {
  if (row_elements < 0) {
    return absl::InternalError(absl::StrCat("negative row size ", row_elements));
  }
  if (row_elements == 0) return absl::OkStatus();  // rows of nothing touch nothing
  const uint64_t rows = buffer_bytes / elem_size / static_cast<uint64_t>(row_elements);
  for (int64_t index : indices) {
    if (index < 0 || static_cast<uint64_t>(index) >= rows) {
      return absl::InternalError(
          absl::StrCat("row index ", index, " outside a buffer of ", rows, " rows"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckOptimizerBuffers(const OptimizerParams& params, DataType dtype, size_t elem_size,
                                   const DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                   uint64_t elements) {
  if (!IsFloating(dtype)) {
    return absl::InternalError(
        absl::StrCat(OptimizerName(params.kind), " on non-floating dtype ", DataTypeName(dtype)));
  }
  const int want = NumOptimizerSlots(params.kind);
  if (static_cast<int>(slots.size()) != want) {
    return absl::InternalError(absl::StrCat(OptimizerName(params.kind), " needs ", want,
                                            " slot buffers, got ", slots.size()));
  }
  if (elements > var->size() / elem_size) {
    return absl::InternalError(absl::StrCat("optimizer update of ", elements,
                                            " elements on a buffer of ", var->size() / elem_size));
  }
  for (const DeviceBuffer* slot : slots) {
    if (slot == nullptr || slot == var || slot->size() != var->size()) {
      return absl::InternalError("optimizer slot buffer missing, aliased or of another size");
    }
  }
  return absl::OkStatus();
}

absl::Status OptimizerDtypeUnsupported(DataType dtype) {
  return absl::InternalError(
      absl::StrCat("optimizer kernels need a floating dtype, got ", DataTypeName(dtype)));
}

}  // namespace internal
}  // namespace psd
