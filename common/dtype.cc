#include "psd/dtype.h"

#include "absl/strings/str_cat.h"

namespace psd {

bool IsSupportedDataType(int dtype) {
  return dtype != DT_INVALID && DataType_IsValid(dtype);
}

size_t DataTypeSize(DataType dtype) {
  return DispatchFixedSize(dtype, [](auto t) { return sizeof(t); }, [] { return size_t{0}; });
}

std::string DataTypeName(int dtype) {
  switch (dtype) {
    case DT_FLOAT: return "float32";
    case DT_DOUBLE: return "float64";
    case DT_HALF: return "float16";
    case DT_BFLOAT16: return "bfloat16";
    case DT_INT8: return "int8";
    case DT_INT16: return "int16";
    case DT_INT32: return "int32";
    case DT_INT64: return "int64";
    case DT_UINT8: return "uint8";
    case DT_BOOL: return "bool";
    case DT_STRING: return "string";
    default: return absl::StrCat("dtype(", dtype, ")");
  }
}

bool IsFloating(DataType dtype) {
  return dtype == DT_FLOAT || dtype == DT_DOUBLE || dtype == DT_HALF || dtype == DT_BFLOAT16;
}

bool IsInteger(DataType dtype) {
  return dtype == DT_INT8 || dtype == DT_INT16 || dtype == DT_INT32 || dtype == DT_INT64 ||
         dtype == DT_UINT8;
}

bool IsNumeric(DataType dtype) { return IsFloating(dtype) || IsInteger(dtype); }

absl::Status ValidateDataType(int dtype, const std::string& what) {
  if (IsSupportedDataType(dtype)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": unsupported dtype ", DataTypeName(dtype)));
}

}  // namespace psd
