// The dtypes psd stores, their element sizes and names, and the one dtype
// dispatch every kernel uses. DataType is the wire enum (TensorFlow's
// numbering) from proto/psd/types.proto.
#ifndef PSD_COMMON_DTYPE_H_
#define PSD_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "psd/float16.h"
#include "psd/types.pb.h"

namespace psd {

// True for the dtypes listed in types.proto (DT_INVALID excluded).
bool IsSupportedDataType(int dtype);
// Bytes per element; 0 for DT_STRING (variable length) and unknown dtypes.
size_t DataTypeSize(DataType dtype);
// TensorFlow's short names: "float32", "float64", "float16", "bfloat16",
// "int8", ..., "bool", "string". Unknown values print as "dtype(N)".
std::string DataTypeName(int dtype);
// Dtypes with arithmetic (assign_add/sub, scatter_add/sub): all but bool and
// string.
bool IsNumeric(DataType dtype);
bool IsFloating(DataType dtype);
bool IsInteger(DataType dtype);

// INVALID_ARGUMENT unless `dtype` is one psd stores.
absl::Status ValidateDataType(int dtype, const std::string& what);

// Maps a C++ element type to its DataType.
template <typename T> struct DataTypeOf;
#define PSD_DECLARE_DTYPE_(T, DT) \
  template <> struct DataTypeOf<T> { static constexpr DataType value = DT; }
PSD_DECLARE_DTYPE_(float, DT_FLOAT);
PSD_DECLARE_DTYPE_(double, DT_DOUBLE);
PSD_DECLARE_DTYPE_(half, DT_HALF);
PSD_DECLARE_DTYPE_(bfloat16, DT_BFLOAT16);
PSD_DECLARE_DTYPE_(int8_t, DT_INT8);
PSD_DECLARE_DTYPE_(int16_t, DT_INT16);
PSD_DECLARE_DTYPE_(int32_t, DT_INT32);
PSD_DECLARE_DTYPE_(int64_t, DT_INT64);
PSD_DECLARE_DTYPE_(uint8_t, DT_UINT8);
PSD_DECLARE_DTYPE_(bool, DT_BOOL);
#undef PSD_DECLARE_DTYPE_

// Calls `fn(T{})` with the C++ type of a fixed-size `dtype` and returns its
// result; returns `fallback()` for DT_STRING and unknown dtypes.
//
//   size_t n = DispatchFixedSize(dtype, [](auto t) { return sizeof(t); },
//                                [] { return size_t{0}; });
template <typename Fn, typename Fallback>
auto DispatchFixedSize(DataType dtype, Fn&& fn, Fallback&& fallback) -> decltype(fallback()) {
  switch (dtype) {
    case DT_FLOAT: return fn(float{});
    case DT_DOUBLE: return fn(double{});
    case DT_HALF: return fn(half{});
    case DT_BFLOAT16: return fn(bfloat16{});
    case DT_INT8: return fn(int8_t{});
    case DT_INT16: return fn(int16_t{});
    case DT_INT32: return fn(int32_t{});
    case DT_INT64: return fn(int64_t{});
    case DT_UINT8: return fn(uint8_t{});
    case DT_BOOL: return fn(bool{});
    default: return fallback();
  }
}

}  // namespace psd

#endif  // PSD_COMMON_DTYPE_H_
