// ShardClient: the ops by key on one embedding table's part. Gathers,
// scatters and applies go on the data stream like their dense
// counterparts (GatherRequest / ScatterRequest / ApplySparseRequest with
// keys for indices); export, import, delete and evict are unary calls (and
// a server stream for export) with the client's retries.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "psd/status.h"
#include "psd/wire.h"
#include "shard_client_impl.h"

namespace psd {
namespace client {

absl::StatusOr<Tensor> ShardClient::GatherByKey(const std::string& name, const Tensor& keys,
                                                const KeyedOpOptions& options) {
  if (impl_->OnDataStream()) {
    internal::BorrowedSlices lent;
    auto op = impl_->NewStreamOp(name, /*async=*/false);
    GatherRequest* request = op->fields.mutable_gather();
    *request = impl_->MakeGatherRequest(name, Tensor());
    request->set_inference(options.inference);
    request->set_global_step(options.global_step);
    op->SetTensor(keys, GatherRequest::kIndicesFieldNumber, request->mutable_indices(), &lent);
    BatchOpResult result;
    PSD_RETURN_IF_ERROR(impl_->RunOnStream(std::move(op), &result));
    return impl_->DecodeResult(result.mutable_gather()->mutable_value(), name);
  }
  GatherRequest request = impl_->MakeGatherRequest(name, Tensor(keys));
  request.set_inference(options.inference);
  request.set_global_step(options.global_step);
  GatherResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::Gather, request, &response));
  return impl_->DecodeResult(response.mutable_value(), name);
}

absl::Status ShardClient::ScatterByKey(UpdateKind op, const std::string& name, const Tensor& keys,
                                       const Tensor& rows, const KeyedOpOptions& options) {
  if (impl_->OnDataStream()) {
    internal::BorrowedSlices lent;
    auto stream_op = impl_->NewStreamOp(name, /*async=*/false);
    ScatterRequest* request = stream_op->fields.mutable_scatter();
    *request = impl_->MakeScatterRequest(op, name, Tensor(), Tensor(), false);
    request->set_global_step(options.global_step);
    stream_op->SetTensor(keys, ScatterRequest::kIndicesFieldNumber, request->mutable_indices(),
                         &lent);
    stream_op->SetTensor(rows, ScatterRequest::kUpdatesFieldNumber, request->mutable_updates(),
                         &lent);
    BatchOpResult result;
    return impl_->RunOnStream(std::move(stream_op), &result);
  }
  ScatterRequest request = impl_->MakeScatterRequest(op, name, Tensor(keys), Tensor(rows), false);
  request.set_global_step(options.global_step);
  ScatterResponse response;
  return impl_->Call(&Shard::Stub::Scatter, request, &response);
}

absl::Status ShardClient::ApplySparseByKey(const std::string& name,
                                           const std::vector<std::string>& slots,
                                           const OptimizerSpec& optimizer, const Tensor& keys,
                                           const Tensor& grads, const KeyedOpOptions& options) {
  ApplySparseRequest request;
  request.set_name(name);
  for (const std::string& slot : slots) request.add_slots(slot);
  *request.mutable_optimizer() = optimizer;
  TensorToProto(Tensor(keys), request.mutable_indices());
  TensorToProto(Tensor(grads), request.mutable_values());
  request.set_global_step(options.global_step);
  ApplySparseResponse response;
  return SendApplySparse(&request, &response);
}

absl::StatusOr<EmbeddingRowSet> ShardClient::ExportEmbedding(const std::string& name,
                                                             const std::vector<std::string>& slots,
                                                             int64_t max_rows) {
  ExportEmbeddingRequest request;
  request.set_name(name);
  for (const std::string& slot : slots) request.add_slots(slot);
  request.set_max_rows(max_rows);
  request.set_shard_incarnation(impl_->info_.incarnation);
  EmbeddingRowSet out;
  absl::Status status = impl_->WithRetries([&]() -> absl::Status {
    grpc::ClientContext context;
    impl_->SetDeadline(&context, impl_->options_.timeout);
    std::unique_ptr<grpc::ClientReader<EmbeddingRows>> reader =
        impl_->stub_->ExportEmbedding(&context, request);
    std::vector<std::string> keys, values, freqs, versions;
    std::vector<std::vector<std::string>> slot_values(slots.size());
    DataType key_dtype = DT_INT64, dtype = DT_INVALID;
    int64_t dim = 0, n = 0;
    EmbeddingRows rows;
    while (reader->Read(&rows)) {
      key_dtype = rows.keys().dtype();
      dtype = rows.values().dtype();
      if (rows.values().shape().dims_size() == 2) dim = rows.values().shape().dims(1);
      n += rows.keys().shape().dims_size() > 0 ? rows.keys().shape().dims(0) : 0;
      keys.push_back(std::move(*rows.mutable_keys()->mutable_content()));
      values.push_back(std::move(*rows.mutable_values()->mutable_content()));
      freqs.push_back(std::move(*rows.mutable_freqs()->mutable_content()));
      versions.push_back(std::move(*rows.mutable_versions()->mutable_content()));
      if (static_cast<size_t>(rows.slot_values_size()) != slots.size()) {
        return absl::InternalError(absl::StrCat("shard ", impl_->address_, " exported ",
                                                rows.slot_values_size(), " slots of ", name,
                                                " for ", slots.size(), " asked"));
      }
      for (size_t s = 0; s < slots.size(); ++s) {
        slot_values[s].push_back(std::move(*rows.mutable_slot_values(s)->mutable_content()));
      }
    }
    PSD_RETURN_IF_ERROR(impl_->CallStatus(reader->Finish()));
    auto join = [](std::vector<std::string>& pieces, DataType dt,
                   std::vector<int64_t> dims) -> absl::StatusOr<Tensor> {
      std::string all;
      for (std::string& p : pieces) all += p;
      TensorProto proto;
      proto.set_dtype(dt);
      for (int64_t d : dims) proto.mutable_shape()->add_dims(d);
      proto.set_content(std::move(all));
      return TensorFromProto(proto, "exported rows");
    };
    if (dtype == DT_INVALID) return absl::InternalError("export answered no message");
    PSD_ASSIGN_OR_RETURN(out.keys, join(keys, key_dtype, {n}));
    PSD_ASSIGN_OR_RETURN(out.values, join(values, dtype, {n, dim}));
    PSD_ASSIGN_OR_RETURN(out.freqs, join(freqs, DT_INT64, {n}));
    PSD_ASSIGN_OR_RETURN(out.versions, join(versions, DT_INT64, {n}));
    out.slot_values.clear();
    for (auto& pieces : slot_values) {
      PSD_ASSIGN_OR_RETURN(Tensor t, join(pieces, dtype, {n, dim}));
      out.slot_values.push_back(std::move(t));
    }
    return absl::OkStatus();
  });
  PSD_RETURN_IF_ERROR(status);
  return out;
}

absl::StatusOr<int64_t> ShardClient::ImportEmbedding(const std::string& name,
                                                     const std::vector<std::string>& slots,
                                                     const EmbeddingRowSet& rows) {
  ImportEmbeddingRequest request;
  request.set_name(name);
  for (const std::string& slot : slots) request.add_slots(slot);
  EmbeddingRows* r = request.mutable_rows();
  TensorToProto(Tensor(rows.keys), r->mutable_keys());
  TensorToProto(Tensor(rows.values), r->mutable_values());
  if (rows.freqs.num_elements() > 0) TensorToProto(Tensor(rows.freqs), r->mutable_freqs());
  if (rows.versions.num_elements() > 0) {
    TensorToProto(Tensor(rows.versions), r->mutable_versions());
  }
  for (const Tensor& t : rows.slot_values) TensorToProto(Tensor(t), r->add_slot_values());
  SetNewRequestId(request.mutable_request_id(), impl_->credentials_key_);
  request.set_shard_incarnation(impl_->info_.incarnation);
  ImportEmbeddingResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::ImportEmbedding, request, &response));
  return response.rows();
}

absl::StatusOr<int64_t> ShardClient::DeleteEmbeddingKeys(const std::string& name,
                                                         const Tensor& keys) {
  DeleteEmbeddingKeysRequest request;
  request.set_name(name);
  TensorToProto(Tensor(keys), request.mutable_keys());
  SetNewRequestId(request.mutable_request_id(), impl_->credentials_key_);
  request.set_shard_incarnation(impl_->info_.incarnation);
  DeleteEmbeddingKeysResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::DeleteEmbeddingKeys, request, &response));
  return response.deleted();
}

absl::StatusOr<int64_t> ShardClient::EvictEmbedding(const std::string& name,
                                                    int64_t global_step) {
  EvictEmbeddingRequest request;
  request.set_name(name);
  request.set_global_step(global_step);
  SetNewRequestId(request.mutable_request_id(), impl_->credentials_key_);
  request.set_shard_incarnation(impl_->info_.incarnation);
  EvictEmbeddingResponse response;
  PSD_RETURN_IF_ERROR(impl_->Call(&Shard::Stub::EvictEmbedding, request, &response));
  return response.evicted();
}

}  // namespace client
}  // namespace psd
