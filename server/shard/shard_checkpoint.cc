#include "shard/shard_checkpoint.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/bundle_writer.h"
#include "checkpoint/tensor_slice.h"
#include "psd/dtype.h"
#include "psd/embedding_keys.h"
#include "psd/status.h"
#include "shard/embedding_table.h"

namespace psd {

using checkpoint::BundleReader;
using checkpoint::BundleShardIndex;
using checkpoint::BundleWriter;
using checkpoint::TensorSlice;

namespace {

absl::StatusOr<TensorSlice> PartSlice(const TensorShape& full_shape,
                                      const google::protobuf::RepeatedField<int64_t>& offset,
                                      const TensorShape& part_shape, const std::string& name) {
  if (offset.size() != full_shape.rank() || part_shape.rank() != full_shape.rank()) {
    return absl::InvalidArgumentError(absl::StrCat("part ", name, ": offset of rank ",
                                                   offset.size(), " and shape ",
                                                   part_shape.ToString(), " do not fit ",
                                                   full_shape.ToString()));
  }
  PSD_ASSIGN_OR_RETURN(TensorSlice slice,
                       TensorSlice::Make(std::vector<int64_t>(offset.begin(), offset.end()),
                                         part_shape.dims()));
  PSD_RETURN_IF_ERROR(slice.CheckFits(full_shape));
  return slice;
}

}  // namespace

ShardCheckpointer::ShardCheckpointer(VariableStore* store, const Options& options)
    : store_(store),
      options_(options),
      fs_(options.fs != nullptr ? options.fs : checkpoint::FileSystem::Default()) {}

absl::Status ShardCheckpointer::Fence(const FenceRequest& request, FenceResponse* response) {
  {
    absl::MutexLock lock(&mu_);
    const absl::Time cutoff = absl::Now() - options_.snapshot_ttl;
    for (auto it = snapshots_.begin(); it != snapshots_.end();) {
      it = it->second.touched_at < cutoff ? snapshots_.erase(it) : std::next(it);
    }
  }
  store_->DropStaleRestores(options_.snapshot_ttl);
  const absl::Duration lease =
      request.lease_ms() > 0 ? absl::Milliseconds(request.lease_ms()) : options_.default_lease;
  Snapshot snap;
  snap.touched_at = absl::Now();
  PSD_RETURN_IF_ERROR(store_->Fence(request.fence_id(), lease, &snap.values));
  int64_t bytes = 0;
  for (const auto& v : snap.values) {
    bytes += v.pin != nullptr ? v.pin->byte_size()
                              : v.shape.num_elements() * static_cast<int64_t>(DataTypeSize(v.dtype));
  }
  response->set_snapshot_variables(static_cast<int64_t>(snap.values.size()));
  response->set_snapshot_bytes(bytes);
  absl::MutexLock lock(&mu_);
  snapshots_[request.fence_id()] = std::move(snap);
  return absl::OkStatus();
}

absl::Status ShardCheckpointer::Unfence(const UnfenceRequest& request, UnfenceResponse* response) {
  WriteGate::FenceStats stats;
  absl::Status s = store_->Unfence(request.fence_id(), &stats);
  response->set_held_writes(stats.held_writes);
  response->set_fenced_micros(absl::ToInt64Microseconds(stats.fenced_for));
  if (request.discard()) {
    absl::MutexLock lock(&mu_);
    snapshots_.erase(request.fence_id());
  }
  // A fence its lease already lifted is not an error for the coordinator's
  // unfence: writes flow either way. The snapshot is still the one taken
  // while every shard held writes only if the lease did not run out before
  // the last shard was fenced, which the coordinator checks with its own
  // clock (lease vs. elapsed).
  if (absl::IsNotFound(s)) return absl::OkStatus();
  return s;
}

namespace {

std::map<std::string, const VariableStore::PinnedValue*> ByName(
    const std::vector<VariableStore::PinnedValue>& values) {
  std::map<std::string, const VariableStore::PinnedValue*> out;
  for (const auto& v : values) out[v.name] = &v;
  return out;
}

// Bytes a pinned value adds to the save: its elements, strings as their
// characters.
int64_t SaveBytes(const VariableStore::PinnedValue& v) {
  if (v.table_rows != nullptr) {
    // Values, then keys, frequencies and versions (8 bytes each a row).
    return v.shape.num_elements() * static_cast<int64_t>(DataTypeSize(v.dtype)) +
           v.shape.dim(0) * 3 * static_cast<int64_t>(sizeof(int64_t));
  }
  return v.dtype == DT_STRING ? v.pin->string_chars() : v.pin->byte_size();
}

}  // namespace

absl::Status ShardCheckpointer::SaveTablePart(const std::string& name,
                                             const VariableStore::PinnedValue& v,
                                             BundleWriter* writer) {
  // The values stream through in batches; keys, frequencies and versions
  // (8 bytes a row each) are gathered beside them and written after.
  constexpr int64_t kBatchBytes = 4 << 20;
  const int64_t rows = v.shape.dim(0);
  const int64_t dim = v.shape.dim(1);
  const int64_t row_bytes = std::max<int64_t>(1, dim * static_cast<int64_t>(DataTypeSize(v.dtype)));
  const int64_t batch_rows = std::max<int64_t>(1, kBatchBytes / row_bytes);
  PSD_RETURN_IF_ERROR(writer->BeginTensor(absl::StrCat(name, "-values"), v.dtype, v.shape));
  std::vector<int64_t> keys, freqs, versions;
  keys.reserve(rows);
  freqs.reserve(rows);
  versions.reserve(rows);
  const int columns[1] = {v.table_column};
  EmbeddingSnapshot::Batch batch;
  while (true) {
    PSD_RETURN_IF_ERROR(v.table_rows->Next(batch_rows, columns, &batch));
    if (batch.keys.empty()) break;
    if (static_cast<int64_t>(keys.size() + batch.keys.size()) > rows) {
      return absl::InternalError(absl::StrCat("save of ", name, ": the snapshot of ", rows,
                                              " rows gave more"));
    }
    PSD_RETURN_IF_ERROR(writer->AppendData(batch.columns[0]));
    keys.insert(keys.end(), batch.keys.begin(), batch.keys.end());
    freqs.insert(freqs.end(), batch.freqs.begin(), batch.freqs.end());
    versions.insert(versions.end(), batch.versions.begin(), batch.versions.end());
  }
  PSD_RETURN_IF_ERROR(writer->EndTensor());
  const TensorShape n({static_cast<int64_t>(keys.size())});
  Tensor key_tensor;
  if (v.key_dtype == DT_INT32) {
    std::vector<int32_t> narrow(keys.begin(), keys.end());
    PSD_ASSIGN_OR_RETURN(key_tensor, Tensor::FromVector(n, narrow));
  } else {
    PSD_ASSIGN_OR_RETURN(key_tensor, Tensor::FromVector(n, keys));
  }
  PSD_RETURN_IF_ERROR(writer->Add(absl::StrCat(name, "-keys"), key_tensor));
  PSD_ASSIGN_OR_RETURN(Tensor freq_tensor, Tensor::FromVector(n, freqs));
  PSD_RETURN_IF_ERROR(writer->Add(absl::StrCat(name, "-freqs"), freq_tensor));
  PSD_ASSIGN_OR_RETURN(Tensor version_tensor, Tensor::FromVector(n, versions));
  return writer->Add(absl::StrCat(name, "-versions"), version_tensor);
}

absl::Status ShardCheckpointer::BeginSave(const SaveShardRequest& request, Snapshot* snap) {
  auto cursor = std::make_unique<SaveCursor>();
  cursor->prefix = request.prefix();
  cursor->parts = request.parts_size();
  const auto by_name = ByName(snap->values);
  for (const SavePart& part : request.parts()) {
    auto it = by_name.find(part.name());
    const VariableStore::PinnedValue* v = it == by_name.end() ? nullptr : it->second;
    if (v == nullptr) {
      return absl::NotFoundError(absl::StrCat("save of ", request.prefix(), ": part ", part.name(),
                                              " of ", part.full_name(),
                                              " is not on this shard (lost?)"));
    }
    if (!v->initialized) {
      return absl::FailedPreconditionError(absl::StrCat(
          "save of ", request.prefix(), ": attempting to use uninitialized value ", v->name));
    }
    cursor->total_bytes += SaveBytes(*v);
  }
  BundleWriter::Options wopts;
  wopts.fs = fs_;
  wopts.shard_id = request.shard_index();
  wopts.num_shards = request.num_shards();
  PSD_ASSIGN_OR_RETURN(cursor->writer, BundleWriter::Create(request.prefix(), wopts));
  snap->save = std::move(cursor);
  return absl::OkStatus();
}

absl::Status ShardCheckpointer::SaveShard(const SaveShardRequest& request,
                                          SaveShardResponse* response) {
  // Claimed for the length of this call: a failure drops the snapshot and
  // its writer (which removes its temp file).
  Snapshot snap;
  {
    absl::MutexLock lock(&mu_);
    auto it = snapshots_.find(request.fence_id());
    if (it == snapshots_.end()) {
      return absl::AbortedError(absl::StrCat("save of ", request.prefix(), ": no snapshot for fence ",
                                             request.fence_id(), " on this shard (expired?)"));
    }
    snap = std::move(it->second);
    snapshots_.erase(it);
  }
  if (snap.save == nullptr) {
    PSD_RETURN_IF_ERROR(BeginSave(request, &snap));
  } else if (snap.save->prefix != request.prefix() || snap.save->parts != request.parts_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "save of ", request.prefix(), ": fence ", request.fence_id(), " is saving ",
        snap.save->prefix, " (", snap.save->parts, " parts); this call names ",
        request.parts_size(), " parts"));
  }
  SaveCursor& cur = *snap.save;
  BundleWriter& writer = *cur.writer;
  const int64_t chunk = request.chunk_bytes() > 0 ? request.chunk_bytes()
                                                  : options_.default_chunk_bytes;
  const int64_t budget = request.max_bytes() > 0 ? request.max_bytes() : INT64_MAX;
  const int64_t start_bytes = writer.data_bytes();
  std::string buf;
  const auto by_name = ByName(snap.values);  // BeginSave found every part
  while (cur.next_part < cur.parts && writer.data_bytes() - start_bytes < budget) {
    const SavePart& part = request.parts(cur.next_part);
    const VariableStore::PinnedValue& v = *by_name.at(part.name());
    if (v.table_rows != nullptr) {
      // A table's part, whole, in DeepRec's layout.
      PSD_RETURN_IF_ERROR(SaveTablePart(part.full_name(), v, &writer));
      ++cur.next_part;
      continue;
    }
    TensorShape full_shape = v.shape;
    std::optional<TensorSlice> slice;
    if (part.sliced()) {
      full_shape = TensorShape(std::vector<int64_t>(part.full_shape().begin(),
                                                    part.full_shape().end()));
      PSD_ASSIGN_OR_RETURN(slice, PartSlice(full_shape, part.offset(), v.shape, v.name));
    }
    if (v.dtype == DT_STRING) {
      PSD_ASSIGN_OR_RETURN(Tensor t, Tensor::FromStrings(v.shape, v.pin->Strings()));
      PSD_RETURN_IF_ERROR(slice.has_value()
                              ? writer.AddSlice(part.full_name(), full_shape, *slice, t)
                              : writer.Add(part.full_name(), t));
      ++cur.next_part;
      continue;
    }
    if (cur.offset == 0) {
      PSD_RETURN_IF_ERROR(slice.has_value()
                              ? writer.BeginSlice(part.full_name(), v.dtype, full_shape, *slice)
                              : writer.BeginTensor(part.full_name(), v.dtype, v.shape));
    }
    const int64_t total = v.pin->byte_size();
    while (cur.offset < total && writer.data_bytes() - start_bytes < budget) {
      const int64_t n = std::min(chunk, total - cur.offset);
      buf.resize(n);
      PSD_RETURN_IF_ERROR(v.pin->Read(cur.offset, n, buf.data()));
      PSD_RETURN_IF_ERROR(writer.AppendData(buf));
      cur.offset += n;
    }
    if (cur.offset < total) break;  // the budget ran out mid-tensor
    PSD_RETURN_IF_ERROR(writer.EndTensor());
    ++cur.next_part;
    cur.offset = 0;
  }
  response->set_total_bytes(cur.total_bytes);
  if (cur.next_part < cur.parts) {
    response->set_more(true);
    response->set_data_bytes(writer.data_bytes());
    snap.touched_at = absl::Now();
    absl::MutexLock lock(&mu_);
    snapshots_[request.fence_id()] = std::move(snap);
    return absl::OkStatus();
  }
  PSD_ASSIGN_OR_RETURN(BundleShardIndex index, writer.FinishData());
  for (auto& [key, entry] : index.entries) {
    BundleIndexEntry* e = response->add_entries();
    e->set_key(key);
    *e->mutable_entry() = std::move(entry);
  }
  response->set_data_file(writer.data_path());
  response->set_data_bytes(writer.data_bytes());
  response->set_copied_bytes(store_->DivergedBytes(snap.values));
  return absl::OkStatus();
}

absl::Status ShardCheckpointer::PrepareRestore(const PrepareRestoreRequest& request,
                                               PrepareRestoreResponse* response) {
  absl::Status status = [&]() -> absl::Status {
    PSD_ASSIGN_OR_RETURN(auto reader, BundleReader::Open(request.prefix(), fs_));
    int64_t staged = 0;
    for (const RestorePart& part : request.parts()) {
      if (part.has_embedding()) {
        // A table's part: the rows of every saved part whose keys are its.
        for (const std::string& source : part.embedding_sources()) {
          PSD_ASSIGN_OR_RETURN(int64_t bytes, StageTableSource(*reader, request.restore_id(),
                                                               part, source));
          staged += bytes;
        }
        continue;
      }
      const std::string& key = part.checkpoint_name();
      PSD_ASSIGN_OR_RETURN(BundleReader::TensorInfo info, reader->GetTensorInfo(key));
      if (info.dtype != part.dtype()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "restore of ", part.name(), ": tensor ", key, " in checkpoint ", request.prefix(),
            " is ", checkpoint::BundleDataTypeName(info.dtype), ", the variable is ",
            checkpoint::BundleDataTypeName(part.dtype())));
      }
      PSD_ASSIGN_OR_RETURN(TensorShape shape,
                           TensorShape::Make(part.shape(), absl::StrCat("shape of ", part.name())));
      // Where the part's bytes are stored as one entry (the same
      // partitioning, or an unpartitioned tensor into an unpartitioned
      // variable), they stream from the file into staging in chunks;
      // otherwise the part is assembled from the overlapping slices first.
      std::optional<std::string> stored_key;
      std::optional<TensorSlice> slice;
      if (!part.sliced()) {
        if (info.shape.num_elements() != shape.num_elements()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "restore of ", part.name(), ": tensor ", key, " in checkpoint ", request.prefix(),
              " has shape ", info.shape.ToString(), ", the variable has ", shape.ToString()));
        }
        if (info.slices.empty()) stored_key = key;
      } else {
        const TensorShape full(
            std::vector<int64_t>(part.full_shape().begin(), part.full_shape().end()));
        if (info.shape != full) {
          return absl::InvalidArgumentError(absl::StrCat(
              "restore of ", part.name(), ": tensor ", key, " in checkpoint ", request.prefix(),
              " has shape ", info.shape.ToString(), ", the partitioned variable has ",
              full.ToString()));
        }
        PSD_ASSIGN_OR_RETURN(slice, PartSlice(full, part.offset(), shape, part.name()));
        for (const TensorSlice& stored : info.slices) {
          if (stored.Resolved(full) == slice->Resolved(full)) {
            stored_key = checkpoint::EncodeTensorNameSlice(key, stored);
          }
        }
      }
      if (stored_key.has_value() && part.dtype() != DT_STRING) {
        PSD_RETURN_IF_ERROR(store_->StageRestoreStreamed(
            request.restore_id(), part, [&](const VariableStore::RestoreSink& sink) {
              return reader->ReadEntryChunked(*stored_key, options_.default_chunk_bytes, sink);
            }));
        staged += shape.num_elements() * static_cast<int64_t>(DataTypeSize(part.dtype()));
        continue;
      }
      Tensor value;
      if (slice.has_value()) {
        PSD_ASSIGN_OR_RETURN(value, reader->ReadSlice(key, *slice));
      } else {
        PSD_ASSIGN_OR_RETURN(value, reader->ReadTensor(key));
        if (value.shape() != shape) PSD_RETURN_IF_ERROR(value.Reshape(shape));
      }
      staged += static_cast<int64_t>(value.bytes().size());
      PSD_RETURN_IF_ERROR(store_->StageRestore(request.restore_id(), part, std::move(value)));
    }
    response->set_staged_bytes(staged);
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    int64_t ignored;
    (void)store_->FinishRestore(request.restore_id(), /*commit=*/false, &ignored);
  }
  return status;
}

absl::StatusOr<int64_t> ShardCheckpointer::StageTableSource(
    const checkpoint::BundleReader& reader, uint64_t restore_id, const RestorePart& part,
    const std::string& source) {
  // Keys, frequencies and versions (8 bytes a row each) are read whole;
  // the values stream through in chunks and only this part's rows are
  // kept, so a big saved part never sits in memory whole.
  PSD_ASSIGN_OR_RETURN(Tensor keys, reader.ReadTensor(absl::StrCat(source, "-keys")));
  PSD_ASSIGN_OR_RETURN(Tensor freqs, reader.ReadTensor(absl::StrCat(source, "-freqs")));
  PSD_ASSIGN_OR_RETURN(Tensor versions, reader.ReadTensor(absl::StrCat(source, "-versions")));
  const std::string values_key = absl::StrCat(source, "-values");
  PSD_ASSIGN_OR_RETURN(BundleReader::TensorInfo info, reader.GetTensorInfo(values_key));
  const int64_t n = keys.num_elements();
  const int64_t dim = part.embedding().embedding_dim();
  const bool fixed = part.dtype() != DT_STRING && part.dtype() != DT_INVALID;
  if (!fixed || keys.shape().rank() != 1 || (keys.dtype() != DT_INT64 && keys.dtype() != DT_INT32) ||
      info.shape != TensorShape({n, dim}) || info.dtype != part.dtype() || !info.slices.empty()) {
    // Let the store name what is wrong (or read a sliced tensor whole).
    PSD_ASSIGN_OR_RETURN(Tensor values, reader.ReadTensor(values_key));
    PSD_RETURN_IF_ERROR(
        store_->StageEmbeddingRestore(restore_id, part, keys, values, freqs, versions));
    return static_cast<int64_t>(values.bytes().size());
  }
  const int num_parts = std::max(1, part.embedding_num_parts());
  std::vector<int64_t> mine;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = keys.dtype() == DT_INT32 ? int64_t{keys.data<int32_t>()[i]}
                                               : keys.data<int64_t>()[i];
    if (PartOfKey(k, num_parts) == part.embedding_part_index()) mine.push_back(i);
  }
  const int64_t row_bytes = dim * static_cast<int64_t>(DataTypeSize(part.dtype()));
  std::string rows;
  rows.reserve(mine.size() * row_bytes);
  int64_t offset = 0;  // bytes of the values seen so far
  size_t next = 0;     // the next of `mine` to take
  PSD_RETURN_IF_ERROR(reader.ReadEntryChunked(
      values_key, static_cast<size_t>(options_.default_chunk_bytes),
      [&](absl::string_view chunk) -> absl::Status {
        const int64_t end = offset + static_cast<int64_t>(chunk.size());
        // Rows may straddle chunks: copy the overlap of each wanted row.
        while (next < mine.size()) {
          const int64_t row_start = mine[next] * row_bytes;
          const int64_t row_end = row_start + row_bytes;
          if (row_start >= end) break;
          const int64_t from = std::max(row_start, offset);
          const int64_t to = std::min(row_end, end);
          if (to > from) rows.append(chunk.data() + (from - offset), to - from);
          if (row_end > end) break;  // the rest of this row is in the next chunk
          ++next;
        }
        offset = end;
        return absl::OkStatus();
      }));
  if (static_cast<int64_t>(rows.size()) != static_cast<int64_t>(mine.size()) * row_bytes) {
    return absl::DataLossError(absl::StrCat("restore of ", part.name(), ": ", values_key,
                                            " ended before its rows"));
  }
  auto pick = [&](const Tensor& t, DataType dtype) -> absl::StatusOr<Tensor> {
    const size_t size = DataTypeSize(dtype);
    if (t.dtype() != dtype || t.num_elements() != n) return t;  // the store names it
    std::string bytes;
    bytes.reserve(mine.size() * size);
    for (int64_t i : mine) bytes.append(t.bytes().data() + i * size, size);
    return Tensor::FromBytes(dtype, TensorShape({static_cast<int64_t>(mine.size())}),
                             std::move(bytes));
  };
  PSD_ASSIGN_OR_RETURN(Tensor my_keys, pick(keys, keys.dtype()));
  PSD_ASSIGN_OR_RETURN(Tensor my_freqs, pick(freqs, DT_INT64));
  PSD_ASSIGN_OR_RETURN(Tensor my_versions, pick(versions, DT_INT64));
  PSD_ASSIGN_OR_RETURN(
      Tensor my_values,
      Tensor::FromBytes(part.dtype(), TensorShape({static_cast<int64_t>(mine.size()), dim}),
                        std::move(rows)));
  PSD_RETURN_IF_ERROR(store_->StageEmbeddingRestore(restore_id, part, my_keys, my_values, my_freqs,
                                                    my_versions));
  return n * row_bytes;
}

absl::Status ShardCheckpointer::FinishRestore(const FinishRestoreRequest& request,
                                              FinishRestoreResponse* response) {
  int64_t applied = 0;
  absl::Status s = store_->FinishRestore(request.restore_id(), request.commit(), &applied);
  response->set_restored_parts(applied);
  return s;
}

}  // namespace psd
