// Conversion between Tensor and the wire's TensorProto, with the validation
// every received tensor goes through: known dtype, valid shape, content
// length equal to shape x element size, well-formed string encoding.
#ifndef PSD_COMMON_WIRE_H_
#define PSD_COMMON_WIRE_H_

#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "psd/tensor.h"
#include "psd/types.pb.h"

namespace psd {

// Errors name `what` (for example "value for variable 'v'").
absl::StatusOr<TensorShape> ShapeFromProto(const TensorShapeProto& proto, absl::string_view what);
void ShapeToProto(const TensorShape& shape, TensorShapeProto* proto);

// Checks a received tensor without copying its content and returns its
// shape. For DT_STRING it also checks the length prefix encoding.
absl::StatusOr<TensorShape> ValidateTensorProto(const TensorProto& proto, absl::string_view what);
// The same with `what` built only if the check fails, so the hot path of a
// small op formats no message.
absl::StatusOr<TensorShape> ValidateTensorProto(const TensorProto& proto,
                                                absl::FunctionRef<std::string()> what);

// Decodes (copying the bytes) after the checks of ValidateTensorProto.
absl::StatusOr<Tensor> TensorFromProto(const TensorProto& proto, absl::string_view what);
// Moves the element bytes into the proto when `tensor` is an rvalue.
void TensorToProto(const Tensor& tensor, TensorProto* proto);
void TensorToProto(Tensor&& tensor, TensorProto* proto);

// The largest constant initializer value (its TensorProto content) a
// variable declaration carries: the coordinator's registry, every handle
// and every part's shard hold it. Larger values are supplied by the client
// (InitializerSpec.SuppliedValue), which writes them to the shards.
inline constexpr int64_t kMaxInlineConstantBytes = 64 << 10;

// Bytes a tensor takes on the wire (TensorProto.content, TensorChunk): its
// element bytes, or the length of its string encoding (computed without
// encoding).
int64_t WireBytes(const Tensor& tensor);
// CRC-32C (unmasked) of those bytes, computed without encoding strings.
uint32_t WireCrc32c(const Tensor& tensor);

// DT_STRING content: N varint64 lengths, then the concatenated bytes.
std::string EncodeStrings(const std::vector<std::string>& values);
absl::StatusOr<std::vector<std::string>> DecodeStrings(absl::string_view content,
                                                       int64_t num_elements,
                                                       absl::string_view what);

// Index tensors (DT_INT32 or DT_INT64) widened to int64.
absl::StatusOr<std::vector<int64_t>> IndicesFromProto(const TensorProto& proto,
                                                      absl::string_view what,
                                                      TensorShape* shape);

}  // namespace psd

#endif  // PSD_COMMON_WIRE_H_
