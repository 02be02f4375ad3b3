// Fuzzes what the coordinator recovers from its state directory
// (registry.snapshot and registry.log): the frame reader, and the registry's
// handling of whatever the snapshot and records hold. The input is a
// RegistryStateInput (fuzz_inputs.proto): raw files, or a snapshot and
// records the harness frames with good checksums so mutations reach their
// contents. Whatever the files hold, Open returns an error or a registry;
// a registry it returns answers every read, takes the calls a restarted
// coordinator makes (finishing pending moves, its replica keeper's drops,
// failovers and adds, a declaration, a deletion),
// compacts, and reopens to the same variables.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/registry.h"
#include "fuzz_check.h"
#include "fuzz_inputs.pb.h"
#include "memory_file_system.h"
#include "psd/crc32c.h"

namespace {

constexpr char kStateDir[] = "state";

void PutFixed32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// The registry log's frame: length, masked CRC-32C, payload.
void PutFrame(std::string* out, const std::string& payload) {
  PutFixed32(out, static_cast<uint32_t>(payload.size()));
  PutFixed32(out, psd::crc32c::Mask(psd::crc32c::Value(payload)));
  out->append(payload);
}

std::set<std::string> Names(const psd::Registry& registry) {
  std::set<std::string> names;
  for (const psd::VariableDef& def : registry.List("")) names.insert(def.name());
  return names;
}

void Check(bool ok, const char* what) { psd::fuzz::Check(ok, "registry_state_fuzz", what); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  psd::fuzz::RegistryStateInput input;
  if (!input.ParseFromArray(data, static_cast<int>(size))) return 0;

  psd::fuzz::MemoryFileSystem fs;
  const std::string dir = kStateDir;
  if (input.raw()) {
    if (!input.raw_snapshot().empty()) fs.File(dir + "/registry.snapshot") = input.raw_snapshot();
    if (!input.raw_log().empty()) fs.File(dir + "/registry.log") = input.raw_log();
  } else {
    if (input.write_snapshot()) {
      std::string snap = "PSDRSNP1";
      PutFrame(&snap, input.snapshot().SerializeAsString());
      fs.File(dir + "/registry.snapshot") = snap;
    }
    std::string log = "PSDRLOG1";
    for (const psd::RegistryRecord& r : input.records()) PutFrame(&log, r.SerializeAsString());
    log.append(input.log_tail());
    fs.File(dir + "/registry.log") = log;
  }

  psd::RegistryOptions options;
  options.state_dir = dir;
  options.file_system = &fs;
  options.max_state_bytes = 1 << 20;
  options.on_log_failure = [](const absl::Status&) {};
  auto opened = psd::Registry::Open(options);
  if (!opened.ok()) return 0;
  psd::Registry& registry = **opened;

  // Every read a coordinator makes.
  for (const auto& [shard, placed] : registry.Placement()) {
    (void)placed;
    (void)registry.PartsOnShard(shard);
  }
  std::set<std::string> collections;
  for (const psd::VariableDef& def : registry.List("")) {
    (void)registry.Lookup(def.name());
    for (const psd::VariablePart& part : def.parts()) (void)registry.VariableOfPart(part.name());
    for (const std::string& c : def.collections()) collections.insert(c);
  }
  for (const std::string& c : collections) (void)registry.List(c);
  for (uint64_t id : registry.SessionIds()) (void)registry.HasSession(id);
  (void)registry.DrainedShards();
  const std::vector<psd::ReplicaGroup> groups = registry.ReplicaGroups();
  for (const psd::ReplicaGroup& g : groups) {
    for (const psd::ReplicaRecord& b : g.backups) (void)registry.BackupPartsOnShard(b.shard_id());
  }
  (void)registry.num_variables();
  (void)registry.num_sessions();

  // What a restarted coordinator does: ends the moves it finds, then takes
  // declarations and deletions.
  for (const psd::PartMoveRecord& move : registry.PendingMoves()) {
    if (move.committed()) {
      (void)registry.FinishMove(move.move_id());
    } else {
      (void)registry.CommitMove(move.move_id());
      (void)registry.FinishMove(move.move_id());
    }
  }
  // And what its replica keeper does: drops backups not in sync, fails a
  // group over to an in-sync one, adds a backup.
  for (const psd::ReplicaGroup& g : groups) {
    for (const psd::ReplicaRecord& b : g.backups) {
      if (!b.in_sync()) {
        (void)registry.DropReplica(b.move_id());
      } else {
        (void)registry.FailOver(g.parts, b.shard_id(), b.move_id(), g.epoch + 1);
        break;
      }
    }
    psd::ReplicaRecord added;
    added.set_shard_id(g.primary + 1);
    added.set_move_id(0x5eed);
    (void)registry.AddReplica(g.parts, added);
    (void)registry.SetReplicaInSync(0x5eed, true);
  }
  auto session = registry.OpenSession("fuzz");
  if (session.ok()) {
    psd::VariableDeclaration decl;
    decl.set_name("fuzz_probe");
    decl.set_dtype(psd::DT_FLOAT);
    decl.mutable_shape()->add_dims(8);
    decl.mutable_shape()->add_dims(4);
    decl.mutable_initializer()->mutable_zeros();
    const std::vector<int32_t> live = {0, 1, 2};
    (void)registry.GetVariable(*session, decl, live);
    const std::vector<psd::VariableDef> all = registry.List("");
    if (!all.empty()) (void)registry.DeleteWithSlots(all.front().name());
  }

  // What it writes, it reads back.
  if (!registry.Compact().ok()) return 0;
  const std::set<std::string> before = Names(registry);
  const size_t sessions = registry.num_sessions();
  opened->reset();
  auto reopened = psd::Registry::Open(options);
  Check(reopened.ok(), "a compacted registry does not reopen");
  Check(Names(**reopened) == before, "a compacted registry reopens with other variables");
  Check((*reopened)->num_sessions() == sessions, "a compacted registry reopens with other sessions");
  return 0;
}
