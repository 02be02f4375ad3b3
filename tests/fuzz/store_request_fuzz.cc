// Fuzzes the shard's request validation end to end: every request type of
// shard.proto (creates, initializations, reads, gathers, assigns, scatters,
// count_up_to, optimizer applies, batches, streamed reads and assigns,
// restores, and embedding tables' ops by key, exports, imports, deletes,
// evictions, fenced snapshots and table restores) runs against a VariableStore on the CPU device with a 1 MiB
// memory limit. So do the source's calls of live moves and backups'
// follows (pulls of snapshot and log, a follow's streamed log and
// acknowledgements, in-sync, freeze, end), so the writes above are also
// logged for a move or a backup (every kind a group forwards). The input is a StoreSession (fuzz_inputs.proto): requests
// parsed from the fuzzer's bytes, run in order against a store that starts
// with the variables below, so mutations of a seed hit real variables.
//
// What must hold: every request returns a status (no crash, abort, UB,
// leak, hang, or allocation the limit does not cover: run with
// -malloc_limit_mb=64, as the ctest smoke run does), and the memory the
// store accounts never exceeds its limit.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "device/device.h"
#include "fuzz_inputs.pb.h"
#include "psd/wire.h"
#include "shard/embedding_table.h"
#include "shard/variable_store.h"

namespace {

constexpr int64_t kMemoryLimit = 1 << 20;
constexpr int kMaxOps = 64;
constexpr int kMaxStreamChunks = 256;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "store_request_fuzz: %s\n", what);
    std::abort();
  }
}

template <typename T>
psd::TensorProto Value(std::vector<int64_t> dims, const std::vector<T>& values) {
  psd::TensorProto p;
  psd::TensorToProto(*psd::Tensor::FromVector<T>(psd::TensorShape(std::move(dims)), values), &p);
  return p;
}

void Create(psd::VariableStore* store, const std::string& name, const psd::TensorProto& value,
            bool initialize = true) {
  psd::CreateVariableRequest req;
  req.set_name(name);
  req.set_dtype(value.dtype());
  *req.mutable_shape() = value.shape();
  *req.mutable_initial_value() = value;
  req.set_initialize(initialize);
  psd::VariableInfo info;
  Check(store->Create(req, &info).ok(), "setup create failed");
}

// The variables every session starts with (names the seeds use).
void Populate(psd::VariableStore* store) {
  std::vector<float> twelve(12);
  for (int i = 0; i < 12; ++i) twelve[i] = 0.5f * i;
  Create(store, "v", Value<float>({4, 3}, twelve));
  Create(store, "v/Adam", Value<float>({4, 3}, std::vector<float>(12, 0.f)));
  Create(store, "v/Adam_1", Value<float>({4, 3}, std::vector<float>(12, 0.f)));
  Create(store, "beta1_power", Value<float>({}, {0.9f}));
  Create(store, "beta2_power", Value<float>({}, {0.999f}));
  Create(store, "d", Value<double>({2, 2}, {1, 2, 3, 4}));
  Create(store, "step", Value<int64_t>({}, {0}));
  Create(store, "i", Value<int32_t>({6}, {1, 2, 3, 4, 5, 6}));
  Create(store, "u", Value<float>({3}, {1, 2, 3}), /*initialize=*/false);
  psd::TensorProto s;
  psd::TensorToProto(*psd::Tensor::FromStrings(psd::TensorShape({2}), {"a", "bc"}), &s);
  Create(store, "s", s);
  // Wide rows: a gather or a batch of them can ask for far more than the
  // store holds.
  psd::CreateVariableRequest wide;
  wide.set_name("wide");
  wide.set_dtype(psd::DT_FLOAT);
  wide.mutable_shape()->add_dims(4);
  wide.mutable_shape()->add_dims(32768);
  wide.mutable_initializer()->mutable_zeros();
  wide.set_initialize(true);
  psd::VariableInfo info;
  Check(store->Create(wide, &info).ok(), "setup create of wide failed");
  psd::TensorProto h;
  h.set_dtype(psd::DT_HALF);
  h.mutable_shape()->add_dims(5);
  h.set_content(std::string(10, '\0'));
  Create(store, "h", h);
  // An embedding table's part (part 0 of 2) and an Adagrad slot of it.
  for (const char* name : {"emb", "emb/Adagrad"}) {
    psd::CreateVariableRequest table;
    table.set_name(name);
    table.set_dtype(psd::DT_FLOAT);
    table.mutable_shape()->add_dims(4);
    table.mutable_initializer()->mutable_random_normal()->set_stddev(1);
    table.mutable_embedding()->set_embedding_dim(4);
    table.mutable_embedding()->mutable_counter_filter()->set_filter_freq(2);
    if (std::string(name) != "emb") table.mutable_embedding()->set_slot_of("emb");
    table.set_embedding_num_parts(2);
    Check(store->Create(table, &info).ok(), "setup create of a table failed");
  }
}

void RunOp(psd::VariableStore* store, const psd::fuzz::StoreOp& op) {
  using psd::fuzz::StoreOp;
  switch (op.op_case()) {
    case StoreOp::kCreate: {
      psd::VariableInfo info;
      (void)store->Create(op.create(), &info);
      break;
    }
    case StoreOp::kDelete:
      (void)store->Delete(op.delete_());
      break;
    case StoreOp::kListPrefix:
      (void)store->List(op.list_prefix());
      break;
    case StoreOp::kInitialize:
      (void)store->Initialize(op.initialize());
      break;
    case StoreOp::kInitializeFrom: {
      psd::VariableStore::SourceValues sources(op.initialize_from().sources().begin(),
                                               op.initialize_from().sources().end());
      for (const auto& name : op.initialize_from().request().names()) {
        (void)store->NeedsSourceValue(name, op.initialize_from().request().force());
        (void)store->SourceValueMaxBytes(name);
      }
      (void)store->Initialize(op.initialize_from().request(), &sources);
      break;
    }
    case StoreOp::kReportUninitialized: {
      psd::ReportUninitializedResponse resp;
      (void)store->ReportUninitialized(op.report_uninitialized(), &resp);
      break;
    }
    case StoreOp::kRead: {
      psd::ReadResponse resp;
      (void)store->Read(op.read(), &resp);
      break;
    }
    case StoreOp::kGather: {
      psd::GatherResponse resp;
      (void)store->Gather(op.gather(), &resp);
      break;
    }
    case StoreOp::kAssign: {
      psd::AssignResponse resp;
      (void)store->Assign(op.assign(), &resp);
      break;
    }
    case StoreOp::kScatter: {
      psd::ScatterResponse resp;
      (void)store->Scatter(op.scatter(), &resp);
      break;
    }
    case StoreOp::kCountUpTo: {
      psd::CountUpToResponse resp;
      (void)store->CountUpTo(op.count_up_to(), &resp);
      break;
    }
    case StoreOp::kApplyDense: {
      psd::ApplyDenseResponse resp;
      (void)store->ApplyDense(op.apply_dense(), &resp);
      break;
    }
    case StoreOp::kApplySparse: {
      psd::ApplySparseResponse resp;
      (void)store->ApplySparse(op.apply_sparse(), &resp);
      break;
    }
    case StoreOp::kBatch: {
      // As ShardService runs a Batch message (without its exception guard:
      // an exception out of the store is a bug the fuzzer should see).
      if (op.batch().ops_size() > store->options().max_batch_ops) break;
      int64_t budget = store->options().max_batch_result_bytes;
      for (const auto& batch_op : op.batch().ops()) {
        psd::BatchOpResult result;
        absl::Status status = store->RunBatchOp(batch_op, budget, &result);
        if (!status.ok()) psd::VariableStore::SetBatchOpStatus(status, &result);
        budget -= static_cast<int64_t>(result.ByteSizeLong());
      }
      break;
    }
    case StoreOp::kReadStream: {
      auto source = store->BeginReadStream(op.read_stream().request());
      if (!source.ok()) break;
      psd::TensorChunk chunk;
      (*source)->FillHeader(&chunk);
      const int max_chunks = std::clamp(op.read_stream().max_chunks(), 0, kMaxStreamChunks);
      for (int i = 0; i < max_chunks; ++i) {
        auto more = (*source)->Next(&chunk);
        if (!more.ok() || !*more) break;
      }
      break;
    }
    case StoreOp::kAssignStream: {
      auto sink = store->BeginAssignStream(op.assign_stream().header());
      if (!sink.ok()) break;
      bool ok = true;
      int n = 0;
      for (const auto& chunk : op.assign_stream().chunks()) {
        if (++n > kMaxStreamChunks || !(ok = (*sink)->Append(chunk).ok())) break;
      }
      if (ok && op.assign_stream().commit()) {
        psd::AssignResponse resp;
        (void)(*sink)->Commit(&resp);
      }
      break;
    }
    case StoreOp::kRestore: {
      const auto& r = op.restore();
      if (r.has_value()) {
        auto value = psd::TensorFromProto(r.value(), "fuzz restore value");
        if (value.ok()) (void)store->StageRestore(r.restore_id(), r.part(), *std::move(value));
      }
      if (r.finish()) {
        int64_t applied = 0;
        (void)store->FinishRestore(r.restore_id(), r.commit(), &applied);
      }
      break;
    }
    case StoreOp::kReadSnapshot:
      (void)store->ReadSnapshot(op.read_snapshot());
      break;
    case StoreOp::kExportEmbedding: {
      auto source = store->BeginEmbeddingExport(op.export_embedding().request());
      if (!source.ok()) break;
      const int max = std::clamp(op.export_embedding().max_messages(), 1, kMaxStreamChunks);
      for (int i = 0; i < max; ++i) {
        psd::EmbeddingRows rows;
        auto more = (*source)->Next(&rows);
        if (!more.ok() || !*more) break;
      }
      break;
    }
    case StoreOp::kImportEmbedding: {
      psd::ImportEmbeddingResponse resp;
      (void)store->ImportEmbedding(op.import_embedding(), &resp);
      break;
    }
    case StoreOp::kDeleteEmbeddingKeys: {
      psd::DeleteEmbeddingKeysResponse resp;
      (void)store->DeleteEmbeddingKeys(op.delete_embedding_keys(), &resp);
      break;
    }
    case StoreOp::kEvictEmbedding: {
      psd::EvictEmbeddingResponse resp;
      (void)store->EvictEmbedding(op.evict_embedding(), &resp);
      break;
    }
    case StoreOp::kTableRestore: {
      const auto& r = op.table_restore();
      auto keys = psd::TensorFromProto(r.keys(), "fuzz keys");
      auto values = psd::TensorFromProto(r.values(), "fuzz values");
      auto freqs = psd::TensorFromProto(r.freqs(), "fuzz freqs");
      auto versions = psd::TensorFromProto(r.versions(), "fuzz versions");
      if (keys.ok() && values.ok() && freqs.ok() && versions.ok()) {
        (void)store->StageEmbeddingRestore(r.restore_id(), r.part(), *keys, *values, *freqs,
                                           *versions);
      }
      if (r.finish()) {
        int64_t applied = 0;
        (void)store->FinishRestore(r.restore_id(), r.commit(), &applied);
      }
      break;
    }
    case StoreOp::kFenceId: {
      std::vector<psd::VariableStore::PinnedValue> snapshot;
      if (store->Fence(op.fence_id(), absl::Seconds(1), &snapshot).ok()) {
        psd::WriteGate::FenceStats stats;
        (void)store->Unfence(op.fence_id(), &stats);
        // Read every pinned table while the store goes on.
        for (auto& v : snapshot) {
          if (v.table_rows == nullptr) continue;
          psd::EmbeddingSnapshot::Batch batch;
          const int column[1] = {v.table_column};
          for (int i = 0; i < kMaxStreamChunks; ++i) {
            if (!v.table_rows->Next(3, column, &batch).ok() || batch.keys.empty()) break;
          }
        }
      }
      break;
    }
    case StoreOp::kMoveSource: {
      using MoveSource = StoreOp::MoveSource;
      const MoveSource& call = op.move_source();
      switch (call.call_case()) {
        case MoveSource::kPull: {
          psd::PullMoveRequest req = call.pull();
          req.set_wait_ms(0);  // a long poll would only wait here
          psd::PullMoveResponse resp;
          (void)store->PullMove(req, &resp);
          break;
        }
        case MoveSource::kFollowLog:
        case MoveSource::kFollowAck: {
          const bool ack_only = call.call_case() == MoveSource::kFollowAck;
          psd::PullMoveResponse resp;
          psd::VariableStore::AckedAnswers acked;
          (void)store->PullFollowLog(ack_only ? call.follow_ack() : call.follow_log(), &resp,
                                     ack_only, &acked);
          psd::VariableStore::ResumeAcked(&acked);
          break;
        }
        case MoveSource::kSync:
          (void)store->SyncReplica(call.sync().move_id(), call.sync().in_sync(),
                                   call.sync().incarnation());
          break;
        case MoveSource::kFreeze:
          (void)store->FreezeMove(call.freeze().move_id(), call.freeze().incarnation());
          break;
        case MoveSource::kEnd:
          (void)store->EndMoveOut(call.end().move_id(), call.end().committed(),
                                  call.end().new_shard());
          break;
        case MoveSource::CALL_NOT_SET:
          break;
      }
      break;
    }
    case StoreOp::OP_NOT_SET:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::StoreSession session;
  if (!session.ParseFromArray(data, static_cast<int>(size))) return 0;

  static psd::Device* const device = psd::NewCpuDevice().release();
  psd::VariableStoreOptions options;
  options.memory_limit_bytes = kMemoryLimit;
  options.incarnation = 77;
  options.max_unary_value_bytes = 64 << 10;
  options.max_batch_ops = kMaxOps;
  options.max_batch_result_bytes = 256 << 10;
  options.default_chunk_bytes = 100;
  options.request_window = 8;
  options.cow_chunk_bytes = 64;
  // Writes to a group with an in-sync follow wait for its backup, which
  // never acknowledges here: they wait this long, then the backup leaves
  // the in-sync set (the coordinator, below, always hears it).
  options.backup_timeout = absl::Milliseconds(1);
  {
    psd::VariableStore store(device, options);
    store.SetReplicaBehindHandler(
        [](uint64_t, const std::string&) { return absl::OkStatus(); });
    Populate(&store);
    int n = 0;
    for (const auto& op : session.ops()) {
      if (++n > kMaxOps) break;
      RunOp(&store, op);
      Check(store.memory().held() <= kMemoryLimit, "accounted memory past the limit");
    }
    // Everything still lists and reads.
    for (const auto& info : store.List("")) {
      psd::ReadRequest req;
      req.set_name(info.name());
      psd::ReadResponse resp;
      (void)store.Read(req, &resp);
    }
    store.DropStaleRestores(absl::ZeroDuration());
  }
  return 0;
}
