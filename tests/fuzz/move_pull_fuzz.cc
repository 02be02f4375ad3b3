// Fuzzes what a move's target decodes from its source (docs/moves.md): the
// group's description, the snapshot's chunks, the logged writes it replays
// through the ops' own code, and the request window it imports at the end
// (PullMoveResponse, MoveWrite, RequestWindowState). The input is a
// MoveInSession (fuzz_inputs.proto): the parts StartMoveIn creates and the
// source's answers, run against a VariableStore on the CPU device with a
// 1 MiB memory limit the way the target's puller runs them (a pull only
// while NextMovePull asks for one, every other answer taken as received,
// its content left in the receive slices; the move then ends, committed
// when the input says so).
//
// What must hold, whatever the bytes: every call returns a status (no
// crash, UB, leak, hang, or allocation the limit does not cover); a move
// that failed cannot commit, its parts were never served and are gone
// once it ends, with every byte it charged given back; a committed part
// holds its declared dtype and shape, and exactly the declared parts are
// installed (an embedding table's part holding only keys of its part); and
// the store's other variables are never changed by anything the source
// sends. Tables' parts (and their slots) are fuzzed as dense parts are:
// the seeds hold a table move (proto MovedTable, MovedTableChunk).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "device/device.h"
#include "fuzz_inputs.pb.h"
#include "psd/embedding_keys.h"
#include "psd/stream_codec.h"
#include "psd/wire.h"
#include "shard/variable_store.h"

namespace {

constexpr int64_t kMemoryLimit = 1 << 20;
constexpr int kMaxPulls = 256;
constexpr uint64_t kMoveId = 0x5eed;
constexpr uint64_t kIncarnation = 77;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "move_pull_fuzz: %s\n", what.c_str());
    std::abort();
  }
}

void Create(psd::VariableStore* store, const std::string& name, const std::vector<float>& values) {
  psd::CreateVariableRequest req;
  req.set_name(name);
  req.set_dtype(psd::DT_FLOAT);
  req.mutable_shape()->add_dims(static_cast<int64_t>(values.size()));
  psd::TensorToProto(*psd::Tensor::FromVector<float>(
                         psd::TensorShape({static_cast<int64_t>(values.size())}), values),
                     req.mutable_initial_value());
  req.set_initialize(true);
  psd::VariableInfo info;
  Check(store->Create(req, &info).ok(), "setup create of " + name + " failed");
}

// The group the harness moves when the input names none: the names the
// seeds use.
std::vector<psd::CreateVariableRequest> DefaultParts() {
  std::vector<psd::CreateVariableRequest> out;
  for (const char* name : {"m/part_1", "m/Momentum/part_1"}) {
    psd::CreateVariableRequest part;
    part.set_name(name);
    part.set_dtype(psd::DT_FLOAT);
    part.mutable_shape()->add_dims(4);
    part.mutable_shape()->add_dims(3);
    out.push_back(part);
  }
  return out;
}

// Every variable's value as read (or why not), by name.
std::map<std::string, std::string> Values(const psd::VariableStore& store) {
  std::map<std::string, std::string> out;
  for (const auto& info : store.List("")) {
    psd::ReadRequest req;
    req.set_name(info.name());
    psd::ReadResponse resp;
    absl::Status s = store.Read(req, &resp);
    out[info.name()] = s.ok() ? resp.value().SerializeAsString() : s.ToString();
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::MoveInSession session;
  if (!session.ParseFromArray(data, static_cast<int>(size))) return 0;

  static psd::Device* const device = psd::NewCpuDevice().release();
  psd::VariableStoreOptions options;
  options.memory_limit_bytes = kMemoryLimit;
  options.incarnation = kIncarnation;
  options.max_unary_value_bytes = 64 << 10;
  options.max_batch_ops = 64;
  options.max_batch_result_bytes = 256 << 10;
  options.request_window = 8;
  options.cow_chunk_bytes = 64;
  options.staging_pool_bytes = 0;  // so every byte a move charged comes back
  psd::VariableStore store(device, options);
  // Variables the move does not carry: nothing the source sends may touch
  // them.
  Create(&store, "v", {1, 2, 3});
  Create(&store, "m/part_0", {4, 5, 6});
  const std::map<std::string, std::string> before = Values(store);
  const int64_t held_before = store.memory().held();

  psd::StartMoveInRequest start;
  start.set_move_id(kMoveId);
  start.set_source_address("127.0.0.1:1");
  start.set_source_incarnation(88);
  if (session.parts().empty()) {
    for (const auto& p : DefaultParts()) *start.add_parts() = p;
  } else {
    *start.mutable_parts() = session.parts();
  }
  std::set<std::string> group;
  for (const auto& p : start.parts()) group.insert(p.name());
  if (!store.BeginMoveIn(start).ok()) {
    // Nothing was created.
    Check(store.List("", /*include_incoming=*/true).size() == before.size(),
          "a refused move left parts behind");
    Check(Values(store) == before, "a refused move changed a variable");
    return 0;
  }

  absl::Status failed;
  psd::PullMoveRequest pull;
  int n = 0;
  while (failed.ok() && n < session.pulls_size() && n < kMaxPulls &&
         store.NextMovePull(kMoveId, &pull)) {
    const psd::PullMoveResponse& answer = session.pulls(n++);
    if (n % 2 == 1) {
      // As the target's puller takes a snapshot chunk: the answer's bytes
      // as received (here cut into three slices), its content left in them.
      const std::string bytes = answer.SerializeAsString();
      const size_t third = std::max<size_t>(1, bytes.size() / 3);
      std::vector<grpc::Slice> slices;
      for (size_t at = 0; at < bytes.size(); at += third) {
        slices.emplace_back(bytes.data() + at, std::min(third, bytes.size() - at));
      }
      const grpc::ByteBuffer received(slices.data(), slices.size());
      psd::PullMoveResponse fields;
      psd::ContentMessage content;
      Check(content.Parse(received, psd::PullMoveResponse::kContentFieldNumber, &fields, "answer")
                .ok(),
            "a serialized answer did not parse as received");
      failed = store.ApplyMovePull(kMoveId, fields, &content);
    } else {
      failed = store.ApplyMovePull(kMoveId, answer);
    }
    Check(store.memory().held() <= kMemoryLimit, "accounted memory past the limit");
  }
  const psd::MoveStatusResponse status = store.MoveInStatus(kMoveId, absl::ZeroDuration());
  if (!failed.ok()) Check(status.phase() == psd::MOVE_FAILED, "a failed pull left the move going");
  // Incoming parts are not served, whatever they hold.
  for (const auto& info : store.List("")) {
    Check(group.count(info.name()) == 0 || before.count(info.name()) > 0,
          "an incoming part is listed before its move committed: " + info.name());
  }
  for (const std::string& name : group) {
    if (before.count(name) > 0) continue;
    psd::ReadRequest req;
    req.set_name(name);
    psd::ReadResponse resp;
    Check(!store.Read(req, &resp).ok(), "an incoming part served a read: " + name);
  }

  const bool ready = status.phase() == psd::MOVE_READY;
  if (session.commit()) {
    const absl::Status committed = store.EndMoveIn(kMoveId, /*committed=*/true);
    Check(committed.ok() == ready,
          "a move committed without being ready, or a ready one did "
          "not: " +
              committed.ToString());
  }
  if (!session.commit() || !ready) {
    // Given up, as the coordinator does after any failure.
    Check(store.EndMoveIn(kMoveId, /*committed=*/false).ok(), "a move could not be given up");
  }
  if (std::getenv("MOVE_PULL_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "move_pull_fuzz: %d pulls, phase %d, %s\n", n,
                 static_cast<int>(status.phase()), failed.ToString().c_str());
  }
  if (session.commit() && ready) {
    // Installed: exactly the declared parts, beside the variables there were.
    std::set<std::string> listed;
    for (const auto& info : store.List("")) listed.insert(info.name());
    for (const auto& [name, value] : before) listed.erase(name);
    Check(listed == group, "a committed move installed other parts than it declared");
    for (const auto& part : start.parts()) {
      if (!part.has_embedding() || !part.embedding().slot_of().empty()) continue;
      // A table's part holds keys of its own part only.
      psd::ExportEmbeddingRequest req;
      req.set_name(part.name());
      auto rows = store.BeginEmbeddingExport(req);
      Check(rows.ok(), "a moved table part cannot be exported: " + part.name());
      psd::EmbeddingRows batch;
      for (int i = 0; i < 1000; ++i) {
        batch.Clear();
        auto more = (*rows)->Next(&batch);
        Check(more.ok(), "a moved table part cannot be read: " + part.name());
        if (!*more) break;
        auto keys = psd::TensorFromProto(batch.keys(), "keys");
        Check(keys.ok(), "a moved table part's keys do not decode: " + part.name());
        const int num_parts = std::max(1, part.embedding_num_parts());
        for (int64_t j = 0; j < keys->num_elements(); ++j) {
          const int64_t key = keys->dtype() == psd::DT_INT32
                                  ? int64_t{keys->data<int32_t>()[j]}
                                  : keys->data<int64_t>()[j];
          Check(num_parts == 1 || psd::PartOfKey(key, num_parts) == part.embedding_part_index(),
                "a moved table part holds a key of another part: " + part.name());
        }
      }
    }
    // Dense parts: each as declared.
    for (const auto& part : start.parts()) {
      if (part.has_embedding()) continue;
      psd::ReadRequest req;
      req.set_name(part.name());
      psd::ReadResponse resp;
      absl::Status s = store.Read(req, &resp);
      if (!s.ok()) continue;  // e.g. not initialized on the source
      Check(resp.value().dtype() == part.dtype(), "a moved part changed dtype: " + part.name());
      Check(resp.value().shape().dims_size() == part.shape().dims_size(),
            "a moved part changed rank: " + part.name());
      for (int d = 0; d < part.shape().dims_size(); ++d) {
        Check(resp.value().shape().dims(d) == part.shape().dims(d),
              "a moved part changed shape: " + part.name());
      }
    }
  } else {
    // Given up: the store is as it was, every byte given back.
    Check(store.List("", /*include_incoming=*/true).size() == before.size(),
          "an ended move left parts behind");
    Check(store.memory().held() == held_before, "an ended move kept memory charged");
  }
  // The variables the move did not carry read as before.
  const std::map<std::string, std::string> after = Values(store);
  for (const auto& [name, value] : before) {
    auto it = after.find(name);
    Check(it != after.end() && it->second == value,
          "the source's answers changed " + name + ", which the move does not carry");
  }
  return 0;
}
