#include "psd/wire.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "psd/crc32c.h"
#include "psd/status.h"

namespace psd {

using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;

absl::StatusOr<TensorShape> ShapeFromProto(const TensorShapeProto& proto, absl::string_view what) {
  return TensorShape::Make(absl::MakeConstSpan(proto.dims().data(), proto.dims_size()), what);
}

void ShapeToProto(const TensorShape& shape, TensorShapeProto* proto) {
  proto->mutable_dims()->Assign(shape.dims().begin(), shape.dims().end());
}

namespace {

// Walks the length prefixes of a string tensor; returns the offset where the
// string bytes begin and checks that they add up to the content size.
absl::StatusOr<size_t> CheckStringEncoding(absl::string_view content, int64_t n,
                                           absl::string_view what, std::vector<uint64_t>* lengths) {
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": malformed string tensor: ", n, " elements"));
  }
  // Each length takes at least one byte, so n > size means malformed without
  // having to allocate n of anything.
  if (n > static_cast<int64_t>(content.size())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed string tensor: ", n,
                                                   " elements need at least ", n,
                                                   " length bytes, content has ", content.size()));
  }
  CodedInputStream in(reinterpret_cast<const uint8_t*>(content.data()),
                      static_cast<int>(std::min<size_t>(content.size(), INT32_MAX)));
  uint64_t total = 0;
  if (lengths != nullptr) lengths->reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t len;
    if (!in.ReadVarint64(&len)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": malformed string tensor: bad length prefix for element ", i));
    }
    if (len > content.size() || total + len > content.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": malformed string tensor: element ", i, " length ", len, " runs past the end"));
    }
    total += len;
    if (lengths != nullptr) lengths->push_back(len);
  }
  const size_t header = static_cast<size_t>(in.CurrentPosition());
  if (header + total != content.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": malformed string tensor: lengths add up to ", header + total,
        " bytes, content has ", content.size()));
  }
  return header;
}

}  // namespace

absl::StatusOr<TensorShape> ValidateTensorProto(const TensorProto& proto, absl::string_view what) {
  PSD_RETURN_IF_ERROR(ValidateDataType(proto.dtype(), std::string(what)));
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ShapeFromProto(proto.shape(), what));
  const int64_t n = shape.num_elements();
  if (proto.dtype() == DT_STRING) {
    PSD_RETURN_IF_ERROR(CheckStringEncoding(proto.content(), n, what, nullptr).status());
    return shape;
  }
  const size_t elem = DataTypeSize(proto.dtype());
  if (static_cast<uint64_t>(n) > proto.content().size() / elem ||
      proto.content().size() != static_cast<size_t>(n) * elem) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": content has ", proto.content().size(), " bytes, but ",
        DataTypeName(proto.dtype()), shape.ToString(), " needs ", n, " x ", elem));
  }
  return shape;
}

absl::StatusOr<TensorShape> ValidateTensorProto(const TensorProto& proto,
                                                absl::FunctionRef<std::string()> what) {
  // The checks are deterministic: run them without a description, and only
  // a failure again with one.
  absl::StatusOr<TensorShape> shape = ValidateTensorProto(proto, absl::string_view());
  if (shape.ok()) return shape;
  return ValidateTensorProto(proto, what());
}

absl::StatusOr<std::vector<std::string>> DecodeStrings(absl::string_view content,
                                                       int64_t num_elements,
                                                       absl::string_view what) {
  std::vector<uint64_t> lengths;
  PSD_ASSIGN_OR_RETURN(size_t pos, CheckStringEncoding(content, num_elements, what, &lengths));
  std::vector<std::string> out;
  out.reserve(num_elements);
  for (uint64_t len : lengths) {
    out.emplace_back(content.substr(pos, len));
    pos += len;
  }
  return out;
}

std::string EncodeStrings(const std::vector<std::string>& values) {
  size_t total = 0;
  for (const auto& s : values) total += CodedOutputStream::VarintSize64(s.size()) + s.size();
  std::string out(total, '\0');
  auto* p = reinterpret_cast<uint8_t*>(out.data());
  for (const auto& s : values) p = CodedOutputStream::WriteVarint64ToArray(s.size(), p);
  for (const auto& s : values) {
    std::memcpy(p, s.data(), s.size());
    p += s.size();
  }
  return out;
}

int64_t WireBytes(const Tensor& tensor) {
  if (tensor.dtype() != DT_STRING) return static_cast<int64_t>(tensor.bytes().size());
  int64_t n = 0;
  for (const auto& s : tensor.strings()) n += CodedOutputStream::VarintSize64(s.size()) + s.size();
  return n;
}

uint32_t WireCrc32c(const Tensor& tensor) {
  if (tensor.dtype() != DT_STRING) return crc32c::Value(tensor.bytes());
  // The encoding's order (every length, then every string's bytes), without
  // building it.
  uint32_t crc = 0;
  uint8_t varint[10];  // the longest varint64
  for (const auto& s : tensor.strings()) {
    const uint8_t* end = CodedOutputStream::WriteVarint64ToArray(s.size(), varint);
    crc = crc32c::Extend(crc, reinterpret_cast<const char*>(varint),
                         static_cast<size_t>(end - varint));
  }
  for (const auto& s : tensor.strings()) crc = crc32c::Extend(crc, s);
  return crc;
}

absl::StatusOr<Tensor> TensorFromProto(const TensorProto& proto, absl::string_view what) {
  PSD_ASSIGN_OR_RETURN(TensorShape shape, ValidateTensorProto(proto, what));
  if (proto.dtype() == DT_STRING) {
    PSD_ASSIGN_OR_RETURN(auto strings, DecodeStrings(proto.content(), shape.num_elements(), what));
    return Tensor::FromStrings(std::move(shape), std::move(strings));
  }
  Tensor t(proto.dtype(), std::move(shape));
  if (!proto.content().empty()) {
    std::memcpy(t.mutable_bytes()->data(), proto.content().data(), proto.content().size());
  }
  return t;
}

void TensorToProto(const Tensor& tensor, TensorProto* proto) {
  proto->set_dtype(tensor.dtype());
  ShapeToProto(tensor.shape(), proto->mutable_shape());
  if (tensor.dtype() == DT_STRING) {
    proto->set_content(EncodeStrings(tensor.strings()));
  } else {
    proto->set_content(tensor.bytes().data(), tensor.bytes().size());
  }
}

void TensorToProto(Tensor&& tensor, TensorProto* proto) {
  proto->set_dtype(tensor.dtype());
  ShapeToProto(tensor.shape(), proto->mutable_shape());
  if (tensor.dtype() == DT_STRING) {
    proto->set_content(EncodeStrings(tensor.strings()));
  } else {
    proto->mutable_content()->swap(*tensor.mutable_bytes());
  }
}

absl::StatusOr<std::vector<int64_t>> IndicesFromProto(const TensorProto& proto,
                                                      absl::string_view what, TensorShape* shape) {
  if (proto.dtype() != DT_INT32 && proto.dtype() != DT_INT64) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": indices must be int32 or int64, got ", DataTypeName(proto.dtype())));
  }
  PSD_ASSIGN_OR_RETURN(*shape, ValidateTensorProto(proto, what));
  const int64_t n = shape->num_elements();
  std::vector<int64_t> out(n);
  const char* src = proto.content().data();
  if (proto.dtype() == DT_INT64) {
    if (n > 0) std::memcpy(out.data(), src, n * sizeof(int64_t));
  } else {
    for (int64_t i = 0; i < n; ++i) {
      int32_t v;
      std::memcpy(&v, src + i * sizeof(v), sizeof(v));
      out[i] = v;
    }
  }
  return out;
}

}  // namespace psd
