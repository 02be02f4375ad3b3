// Fuzzes the validation every received tensor goes through (psd/wire.h):
// the input is a serialized TensorProto, as any request carries one. What
// must hold: no crash, leak or UB, and whatever passes ValidateTensorProto
// decodes (TensorFromProto, IndicesFromProto, DecodeStrings) and encodes
// back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "psd/tensor.h"
#include "psd/types.pb.h"
#include "psd/wire.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "tensor_wire_fuzz: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::TensorProto proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) return 0;

  auto shape = psd::ValidateTensorProto(proto, "fuzz");
  // The lazily-described overload must agree with the eager one.
  auto lazy = psd::ValidateTensorProto(proto, [] { return std::string("fuzz"); });
  Check(shape.ok() == lazy.ok(), "the two ValidateTensorProto overloads disagree");

  // Whatever the first byte of the content says, the string decoder must
  // stay in bounds for any claimed element count.
  const int64_t claimed = proto.shape().dims_size() > 0 ? proto.shape().dims(0) : 1;
  (void)psd::DecodeStrings(proto.content(), claimed, "fuzz");

  psd::TensorShape index_shape;
  auto indices = psd::IndicesFromProto(proto, "fuzz", &index_shape);
  if (indices.ok()) {
    Check(static_cast<int64_t>(indices->size()) == index_shape.num_elements(),
          "IndicesFromProto returned the wrong count");
  }

  auto tensor = psd::TensorFromProto(proto, "fuzz");
  Check(tensor.ok() == shape.ok(), "TensorFromProto disagrees with ValidateTensorProto");
  if (!tensor.ok()) return 0;
  Check(tensor->shape() == *shape, "TensorFromProto changed the shape");
  (void)tensor->shape().row_elements();
  (void)tensor->DebugString();

  // Round trip: the canonical encoding validates and decodes to the same
  // tensor.
  psd::TensorProto again;
  psd::TensorToProto(*tensor, &again);
  auto back = psd::TensorFromProto(again, "fuzz round trip");
  Check(back.ok(), "a decoded tensor's encoding does not validate");
  Check(*back == *tensor, "round trip changed the tensor");
  if (proto.dtype() != psd::DT_STRING) {
    Check(again.content() == proto.content(), "round trip changed the bytes");
  }
  psd::TensorProto moved;
  psd::TensorToProto(std::move(*tensor), &moved);
  Check(moved.content() == again.content(), "the moving encoder differs");
  return 0;
}
