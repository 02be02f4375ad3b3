// ShardClient::Impl's streamed reads and assigns: values above the stream
// threshold travel in chunks over ReadStream and AssignStream, called raw
// (psd/stream_codec.h).
#include <string>

#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/stream_codec.h"
#include "psd/update_kind_wire.h"
#include "psd/wire.h"
#include "raw_stream.h"
#include "shard_client_impl.h"

namespace psd {
namespace client {

// ---- Streamed reads.

absl::Status ShardClient::Impl::ReadStreamOnce(const std::string& name, Tensor* out) {
  ReadStreamRequest request;
  request.set_name(name);
  request.set_chunk_bytes(options_.chunk_bytes);
  request.set_shard_incarnation(info_.incarnation);
  grpc::ClientContext context;
  SetDeadline(&context, options_.stream_timeout);
  internal::RawStreamCall call(&raw_stub_, &context, kReadStreamMethod);
  if (call.Write(EncodeMessage(request))) call.WritesDone();

  grpc::ByteBuffer buffer;
  ContentMessage message;
  TensorChunk chunk;
  std::string encoding;  // DT_STRING only
  // The destination when *out's buffer does not fit the value: allocated
  // without a zero fill (Tensor::ForOverwrite) and moved into *out only
  // once every byte has arrived, so a failed read never hands out its
  // uninitialized bytes (*out is then left as it was).
  Tensor fresh;
  bool into_fresh = false;
  char* dst = nullptr;
  int64_t total = -1, received = 0;
  absl::Status fault;
  while (call.Read(&buffer)) {
    absl::Status parsed = message.Parse(buffer, kTensorChunkContentField, &chunk,
                                        absl::StrCat("a chunk of variable '", name, "'"));
    if (!parsed.ok()) {
      fault = ShardFault(std::string(parsed.message()));
      break;
    }
    if (total < 0) {
      const std::string what = absl::StrCat("streamed value of variable '", name, "'");
      absl::Status valid = ValidateDataType(chunk.dtype(), what);
      auto shape = ShapeFromProto(chunk.shape(), what);
      if (valid.ok() && !shape.ok()) valid = shape.status();
      total = chunk.total_bytes();
      if (valid.ok() && chunk.dtype() != DT_STRING &&
          total != shape->num_elements() * static_cast<int64_t>(DataTypeSize(chunk.dtype()))) {
        valid = absl::InvalidArgumentError(
            absl::StrCat(what, ": total_bytes ", total, " does not fit ",
                         DataTypeName(chunk.dtype()), shape->ToString()));
      }
      if (valid.ok() && total < 0) valid = absl::InvalidArgumentError("negative total_bytes");
      if (!valid.ok()) {
        fault = ShardFault(std::string(valid.message()));
        break;
      }
      if (chunk.dtype() == DT_STRING) {
        *out = Tensor(DT_STRING, *shape);
        encoding.resize(total);
        dst = encoding.data();
      } else if (out->dtype() == chunk.dtype() &&
                 static_cast<int64_t>(out->bytes().size()) == total) {
        out->ResetForOverwrite(chunk.dtype(), *std::move(shape));  // keeps its buffer
        dst = out->mutable_bytes()->data();
      } else {
        fresh = Tensor::ForOverwrite(chunk.dtype(), *std::move(shape));
        into_fresh = true;
        dst = fresh.mutable_bytes()->data();
      }
    }
    const int64_t n = static_cast<int64_t>(message.content_size());
    if (chunk.offset() != received || n > total - received) {
      fault = ShardFault(absl::StrCat("a chunk of ", n, " bytes at offset ", chunk.offset(),
                                      " of variable '", name, "' after ", received, " of ", total,
                                      " bytes"));
      break;
    }
    message.CopyContentTo(dst + received);
    received += n;
    message.Clear();
    buffer.Clear();
  }
  if (!fault.ok()) {
    context.TryCancel();
    call.Finish();
    return fault;
  }
  PSD_RETURN_IF_ERROR(CallStatus(call.Finish()));
  if (total < 0) return ShardFault(absl::StrCat("an empty stream for variable '", name, "'"));
  if (received != total) {
    return ShardFault(absl::StrCat(received, " of ", total, " bytes of variable '", name, "'"));
  }
  // Every byte of [0, total) is written: each chunk is copied at its
  // offset, which must equal the bytes received before it (no gap, no
  // overlap), and no chunk reaches past total; received == total here.
  if (into_fresh) *out = std::move(fresh);
  if (out->dtype() == DT_STRING) {
    auto strings = DecodeStrings(encoding, out->num_elements(),
                                 absl::StrCat("streamed value of variable '", name, "'"));
    if (!strings.ok()) return ShardFault(std::string(strings.status().message()));
    *out->mutable_strings() = *std::move(strings);
  }
  return absl::OkStatus();
}

absl::Status ShardClient::Impl::ReadStream(const std::string& name, Tensor* out) {
  return WithRetries([&] { return ReadStreamOnce(name, out); });
}

absl::StatusOr<Tensor> ShardClient::Impl::ReadStream(const std::string& name) {
  Tensor out;
  PSD_RETURN_IF_ERROR(ReadStream(name, &out));
  return out;
}

// ---- Streamed assigns.

absl::Status ShardClient::Impl::AssignStreamOnce(const AssignStreamHeader& header,
                                                 absl::string_view content,
                                                 AssignResponse* response) {
  response->Clear();
  grpc::ByteBuffer reply;
  PSD_RETURN_IF_ERROR(CallStatus(internal::SendAssignStream(
      &raw_stub_, options_.stream_timeout, header, content, options_.chunk_bytes, &reply)));
  if (!DecodeMessage(reply, response)) return ShardFault("a malformed AssignResponse");
  return absl::OkStatus();
}

absl::Status ShardClient::Impl::AssignStream(AssignStreamHeader header, const Tensor& value,
                                             AssignResponse* response) {
  std::string encoding;
  absl::string_view content;
  if (value.dtype() == DT_STRING) {
    encoding = EncodeStrings(value.strings());  // once, for every attempt
    content = encoding;
  } else {
    content = value.bytes();
  }
  return WithRetries([&] { return AssignStreamOnce(header, content, response); },
                     header.mutable_request_id());
}

AssignStreamHeader ShardClient::Impl::MakeStreamHeader(UpdateKind op, const std::string& name,
                                                       const Tensor& value, bool validate_shape,
                                                       bool if_uninitialized) const {
  AssignStreamHeader header;
  header.set_name(name);
  header.set_op(UpdateKindToWire(op));
  header.set_dtype(value.dtype());
  ShapeToProto(value.shape(), header.mutable_shape());
  header.set_total_bytes(WireBytes(value));
  header.set_validate_shape(validate_shape);
  header.set_if_uninitialized(if_uninitialized);
  SetNewRequestId(header.mutable_request_id(), credentials_key_);
  header.set_shard_incarnation(info_.incarnation);
  return header;
}

absl::StatusOr<VariableInfo> ShardClient::Impl::CreateStreamed(const std::string& name,
                                                               const Tensor& value,
                                                               const CreateOptions& options) {
  AssignStreamHeader header = MakeStreamHeader(UpdateKind::kAssign, name, value, true);
  CreateVariableRequest* decl = header.mutable_create();
  decl->set_name(name);
  decl->set_dtype(value.dtype());
  ShapeToProto(value.shape(), decl->mutable_shape());
  SetCreateOptions(decl, options);
  AssignResponse response;
  PSD_RETURN_IF_ERROR(AssignStream(header, value, &response));
  VariableInfo info;
  info.name = name;
  info.dtype = value.dtype();
  info.shape = value.shape();
  info.initialized = true;
  info.version = response.version();
  info.device = info_.device;
  info.bytes = header.total_bytes();
  return info;
}

}  // namespace client
}  // namespace psd
