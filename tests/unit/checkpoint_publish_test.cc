// Checkpoints that a failure cannot damage (checkpoint/publish.h and the
// coordinator's save): a save to an existing prefix that fails at any file
// operation of its publication leaves the previous checkpoint readable (or,
// once its journal committed, the new one after recovery), never a mix;
// recovery deletes only staging files; saves stay under the checkpoint
// roots; a trainer Saver's retention never deletes the cluster's
// checkpoints; listing never waits behind a running save.
#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/bundle_writer.h"
#include "checkpoint/checkpoint_state.h"
#include "checkpoint/fault_injection_file_system.h"
#include "checkpoint/publish.h"
#include "coordinator/coordinator_service.h"
#include "device/device.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "../common/temp_dir.h"
#include "gtest/gtest.h"
#include "psd/wire.h"
#include "shard/shard_service.h"
#include "shard/variable_store.h"
#include "store_test_util.h"
#include "in_process_shard.h"

namespace psd {
namespace {

using checkpoint::BundleReader;
using checkpoint::BundleShardIndex;
using checkpoint::BundleWriter;
using checkpoint::FaultInjectionFileSystem;
using checkpoint::FileSystem;
using ::testing::HasSubstr;

using testing_files::MakeTempDir;
const auto& Files = testing_files::ListDir;

// No staging file, journal or temp file is left in `dir`.
void ExpectNoLeftovers(const std::string& dir) {
  for (const std::string& f : Files(dir)) {
    EXPECT_FALSE(checkpoint::IsStagingFileName(f)) << f;
    EXPECT_FALSE(checkpoint::IsJournalFileName(f)) << f;
    EXPECT_FALSE(checkpoint::IsTempFileName(f)) << f;
  }
}

// ---------------------------------------------------------------------------
// The publication protocol on its own, through the fault-injecting file
// system.

class PublishTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("psd_publish"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes a checkpoint of `num_shards` data files under `prefix` (each
  // shard k holding "t<k>" = value + k), plus a .psd-meta holding `meta`;
  // the files of a staged save when `prefix` is a staging prefix.
  void Write(const std::string& prefix, int num_shards, float value, const std::string& meta) {
    std::vector<BundleShardIndex> parts;
    for (int k = 0; k < num_shards; ++k) {
      BundleWriter::Options o;
      o.shard_id = k;
      o.num_shards = num_shards;
      auto w = BundleWriter::Create(prefix, o);
      ASSERT_TRUE(w.ok()) << w.status();
      ASSERT_TRUE((*w)->Add(absl::StrCat("t", k), Tensor::Scalar<float>(value + k)).ok());
      // Big enough for several appends.
      ASSERT_TRUE((*w)->Add(absl::StrCat("big", k), Tensor(DT_FLOAT, {300 * 1024})).ok());
      auto part = (*w)->FinishData();
      ASSERT_TRUE(part.ok()) << part.status();
      parts.push_back(*std::move(part));
    }
    ASSERT_TRUE(checkpoint::WriteFileAtomically(FileSystem::Default(),
                                                checkpoint::MetaFilename(prefix), meta)
                    .ok());
    ASSERT_TRUE(
        checkpoint::WriteMergedIndex(FileSystem::Default(), prefix, num_shards, parts).ok());
  }

  // The checkpoint at `prefix` reads whole and holds `value` (and its meta).
  void ExpectCheckpoint(const std::string& prefix, int num_shards, float value,
                        const std::string& meta) {
    auto reader = BundleReader::Open(prefix);
    ASSERT_TRUE(reader.ok()) << reader.status();
    for (int k = 0; k < num_shards; ++k) {
      auto t = (*reader)->ReadTensor(absl::StrCat("t", k));
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_EQ(t->data<float>()[0], value + k) << prefix;
      EXPECT_TRUE((*reader)->ReadTensor(absl::StrCat("big", k)).ok());
    }
    std::ifstream in(checkpoint::MetaFilename(prefix));
    std::stringstream ss;
    ss << in.rdbuf();
    EXPECT_EQ(ss.str(), meta);
    EXPECT_EQ(checkpoint::ListDataFiles(FileSystem::Default(), prefix).size(),
              static_cast<size_t>(num_shards));
  }

  // Old checkpoint (old_n files) at P, a new one (new_n) staged; publication
  // fails at its nth mutating file operation, then the directory is
  // recovered as at a restart. Returns false once no fault fired (n is past
  // the last operation).
  bool RunOnce(int n, int old_n, int new_n, int* commits) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    const std::string p = dir_ + "/model.ckpt";
    Write(p, old_n, 1.0f, "old");
    const std::string staging = checkpoint::StagingPrefix(p, 0xabcdef0123456789ull);
    Write(staging, new_n, 10.0f, "new");
    FaultInjectionFileSystem fs(FileSystem::Default());
    fs.FailNthMutation(n);
    bool committed = false;
    absl::Status s = checkpoint::PublishStaged(&fs, p, staging, new_n, &committed);
    const bool fired = fs.faults_fired() > 0;
    if (!fired) {
      EXPECT_TRUE(s.ok()) << s;
      EXPECT_TRUE(committed);
    } else {
      EXPECT_FALSE(s.ok()) << "fault " << n << " fired but the publication succeeded";
    }
    if (!committed) {
      // Nothing of P was touched: the old checkpoint reads whole, even
      // before the staging files are cleaned up.
      ExpectCheckpoint(p, old_n, 1.0f, "old");
      checkpoint::DeleteStagedFiles(FileSystem::Default(), staging);
    } else {
      ++*commits;
    }
    const auto stats = checkpoint::RecoverCheckpointDir(FileSystem::Default(), dir_);
    EXPECT_TRUE(stats.errors.empty()) << stats.errors.front();
    if (committed) {
      ExpectCheckpoint(p, new_n, 10.0f, "new");
    } else {
      ExpectCheckpoint(p, old_n, 1.0f, "old");
    }
    ExpectNoLeftovers(dir_);
    return fired;
  }

  std::string dir_;
};

TEST_F(PublishTest, ResaveFailingAtEveryFileOperationLeavesOldOrNewCheckpointNeverAMix) {
  int points = 0;
  int commits = 0;
  for (int n = 1; n < 200 && RunOnce(n, 2, 2, &commits); ++n) ++points;
  // Journal (create, append, sync, close, rename, dir sync), 4 renames, dir
  // sync, journal deletion, dir sync.
  EXPECT_GE(points, 12);
  EXPECT_GE(commits, 6);  // failures after the journal's rename commit
  std::cout << "publish fault points covered (same shard count): " << points << "\n";
}

TEST_F(PublishTest, ResaveWithAnotherShardCountDeletesOnlyTheOldDataFiles) {
  int points = 0;
  int commits = 0;
  for (int n = 1; n < 200 && RunOnce(n, 3, 1, &commits); ++n) ++points;
  EXPECT_GE(points, 12);
  // After the last (fault-free) run: the old 3 data files are gone.
  EXPECT_THAT(Files(dir_), ::testing::ElementsAre("model.ckpt.data-00000-of-00001",
                                                  "model.ckpt.index", "model.ckpt.psd-meta"));
  std::cout << "publish fault points covered (3 -> 1 data files): " << points << "\n";
}

TEST_F(PublishTest, RecoveryDeletesOnlyFilesNamedAsStaging) {
  const std::string p = dir_ + "/m";
  Write(p, 1, 1.0f, "old");
  Write(checkpoint::StagingPrefix(p, 7), 2, 5.0f, "orphan");
  for (const char* name :
       {"m.psd-staging-0000000000000007.data-00000-of-00002.tempstate0123456789abcdef",
        "user.psd-staging-notours", "m.psd-staging-00000000000000zz.index",
        "other.index.psd-publish.tempstate0123456789abcdef"}) {
    std::ofstream(dir_ + "/" + name) << "x";
  }
  const auto stats = checkpoint::RecoverCheckpointDir(FileSystem::Default(), dir_);
  EXPECT_EQ(stats.journals_applied, 0);
  EXPECT_THAT(Files(dir_), ::testing::ElementsAre("m.data-00000-of-00001", "m.index", "m.psd-meta",
                                                  "m.psd-staging-00000000000000zz.index",
                                                  "user.psd-staging-notours"));
  ExpectCheckpoint(p, 1, 1.0f, "old");
}

TEST(PublishNamesTest, StagingAndJournalNames) {
  EXPECT_EQ(checkpoint::StagingPrefix("/d/m", 0x1f), "/d/m.psd-staging-000000000000001f");
  EXPECT_TRUE(checkpoint::IsStagingFileName("m.psd-staging-000000000000001f.index"));
  EXPECT_TRUE(checkpoint::IsStagingFileName("m.psd-staging-000000000000001f"));
  EXPECT_FALSE(checkpoint::IsStagingFileName("m.psd-staging-000000000000001f0.index"));
  EXPECT_FALSE(checkpoint::IsStagingFileName("m.index"));
  EXPECT_FALSE(checkpoint::IsStagingFileName("m.data-00000-of-00001"));
  checkpoint::PublishPlan plan;
  plan.dir = "/d";
  plan.renames = {{"a \"b\"\n", "c"}, {"x", "y"}};
  plan.deletes = {"z"};
  auto parsed = checkpoint::ParseJournal(checkpoint::EncodeJournal(plan), "/d");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->renames, plan.renames);
  EXPECT_EQ(parsed->deletes, plan.deletes);
  // Truncated, or naming a path outside its directory: refused.
  const std::string text = checkpoint::EncodeJournal(plan);
  EXPECT_FALSE(checkpoint::ParseJournal(text.substr(0, text.size() - 4), "/d").ok());
  plan.deletes = {"../etc"};
  EXPECT_FALSE(checkpoint::ParseJournal(checkpoint::EncodeJournal(plan), "/d").ok());
  plan.deletes = {"a/b"};
  EXPECT_FALSE(checkpoint::ParseJournal(checkpoint::EncodeJournal(plan), "/d").ok());
}

// ---------------------------------------------------------------------------
// The coordinator's save through in-process shards.


// Blocks the first .psd-meta write until released: a save that stays in
// its publication phase while the test looks around.
class BlockingFileSystem final : public FileSystem {
 public:
  explicit BlockingFileSystem(FileSystem* base) : base_(base) {}
  absl::Notification reached;
  absl::Notification release;
  std::atomic<bool> armed{false};

  absl::StatusOr<std::unique_ptr<checkpoint::WritableFile>> NewWritableFile(
      const std::string& path) override {
    if (armed.load() && absl::StrContains(path, ".psd-meta") && !reached.HasBeenNotified()) {
      reached.Notify();
      release.WaitForNotification();
    }
    return base_->NewWritableFile(path);
  }
  absl::StatusOr<std::unique_ptr<checkpoint::RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override {
    return base_->NewRandomAccessFile(path);
  }
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    return base_->RenameFile(from, to);
  }
  absl::Status DeleteFile(const std::string& path) override { return base_->DeleteFile(path); }
  absl::Status SyncDir(const std::string& dir) override { return base_->SyncDir(dir); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return base_->ListDir(dir);
  }
  absl::Status FileExists(const std::string& path) override { return base_->FileExists(path); }
  absl::StatusOr<uint64_t> GetFileSize(const std::string& path) override {
    return base_->GetFileSize(path);
  }

 private:
  FileSystem* const base_;
};

class ManagerTest : public ::testing::Test {
 protected:
  ManagerTest()
      : dir_(MakeTempDir("psd_publish_mgr")),
        fault_fs_(FileSystem::Default()),
        blocking_fs_(&fault_fs_) {}
  ~ManagerTest() override { std::filesystem::remove_all(dir_); }

  void SetUp() override {
    ckpt_ = dir_ + "/ckpt";
    other_root_ = dir_ + "/other_root";
    std::filesystem::create_directories(ckpt_);
    std::filesystem::create_directories(other_root_);
    std::filesystem::create_directories(dir_ + "/outside");
    registry_ = std::move(Registry::Open({})).value();
    CoordinatorServiceOptions options;
    options.checkpoint.dir = ckpt_;
    options.checkpoint.roots = {other_root_};
    options.checkpoint.policy.max_to_keep = 2;
    options.checkpoint.fs = &blocking_fs_;
    service_ = std::make_unique<CoordinatorService>(registry_.get(), options);
    server_ = ServeInProcess(service_.get(), &stub_);
    for (int i = 0; i < 2; ++i) {
      shards_.push_back(std::make_unique<InProcessShard>(i, 100 * (i + 1)));
      ASSERT_TRUE(shards_[i]->Register(stub_.get()).ok());
    }
    grpc::ClientContext ctx;
    OpenSessionRequest open;
    open.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    ASSERT_TRUE(stub_->OpenSession(&ctx, open, &session_).ok());
    // A partitioned variable over both shards and a scalar.
    Declare("w", {64}, 2);
    Declare("s", {}, 0);
  }

  void TearDown() override {
    if (!blocking_fs_.release.HasBeenNotified()) blocking_fs_.release.Notify();
    server_->Shutdown();
  }

  void Declare(const std::string& name, std::vector<int64_t> dims, int parts,
               bool initialize = true) {
    VariableDeclaration d;
    d.set_name(name);
    d.set_dtype(DT_FLOAT);
    d.mutable_shape();  // a scalar's shape is set, with no dims
    for (int64_t x : dims) d.mutable_shape()->add_dims(x);
    if (parts > 0) d.mutable_partitioner()->mutable_fixed_size()->set_num_shards(parts);
    d.mutable_initializer()->mutable_random_uniform()->set_maxval(1);
    d.set_initialize(initialize);
    d.set_declared_at("test");
    grpc::ClientContext ctx;
    GetVariableRequest get;
    get.set_session_id(session_.session_id());
    *get.mutable_declaration() = d;
    GetVariableResponse got;
    grpc::Status s = stub_->GetVariable(&ctx, get, &got);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // Every element of every registered variable := value.
  void SetAll(float value) {
    for (const VariableDef& def : registry_->List("")) {
      for (const VariablePart& part : def.parts()) {
        int64_t n = 1;
        std::vector<int64_t> dims(part.shape().dims().begin(), part.shape().dims().end());
        for (int64_t d : dims) n *= d;
        ASSERT_TRUE(
            store_test::AssignValue(&shards_[part.shard_id()]->store, part.name(), UPDATE_ASSIGN,
                                    store_test::Vec<float>(dims, std::vector<float>(n, value)))
                .ok());
      }
    }
  }

  // The one value every element of every variable holds; NaN if they differ.
  float ValueOfAll() {
    std::set<float> seen;
    for (const VariableDef& def : registry_->List("")) {
      for (const VariablePart& part : def.parts()) {
        ReadRequest req;
        req.set_name(part.name());
        ReadResponse resp;
        EXPECT_TRUE(shards_[part.shard_id()]->store.Read(req, &resp).ok());
        auto t = TensorFromProto(resp.value(), "test");
        EXPECT_TRUE(t.ok());
        for (int64_t i = 0; i < t->num_elements(); ++i) seen.insert(t->data<float>()[i]);
      }
    }
    return seen.size() == 1 ? *seen.begin() : std::nanf("");
  }

  grpc::Status Save(const std::string& prefix, SaveCheckpointResponse* resp = nullptr,
                    std::optional<int> max_to_keep = std::nullopt, int64_t step = -1,
                    const std::string& latest_filename = "") {
    grpc::ClientContext ctx;
    SaveCheckpointRequest req;
    req.set_prefix(prefix);
    if (max_to_keep.has_value()) req.set_max_to_keep(*max_to_keep);
    if (step >= 0) req.set_global_step(step);
    req.set_latest_filename(latest_filename);
    SaveCheckpointResponse ignored;
    return stub_->Save(&ctx, req, resp != nullptr ? resp : &ignored);
  }
  grpc::Status Restore(const std::string& prefix) {
    grpc::ClientContext ctx;
    RestoreCheckpointRequest req;
    req.set_prefix(prefix);
    RestoreCheckpointResponse resp;
    return stub_->Restore(&ctx, req, &resp);
  }
  grpc::Status List(const std::string& dir, ListCheckpointsResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    ListCheckpointsRequest req;
    req.set_dir(dir);
    return stub_->ListCheckpoints(&ctx, req, resp);
  }
  GetCheckpointStateResponse State() {
    grpc::ClientContext ctx;
    GetCheckpointStateRequest req;
    GetCheckpointStateResponse resp;
    EXPECT_TRUE(stub_->GetCheckpointState(&ctx, req, &resp).ok());
    return resp;
  }

  std::string dir_;
  std::string ckpt_;
  std::string other_root_;
  FaultInjectionFileSystem fault_fs_;
  BlockingFileSystem blocking_fs_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Coordinator::Stub> stub_;
  OpenSessionResponse session_;
  std::vector<std::unique_ptr<InProcessShard>> shards_;
};

TEST_F(ManagerTest, ResaveFailingAtEveryCoordinatorFileOperationKeepsACheckpointThatRestores) {
  const std::string p = ckpt_ + "/model.ckpt";
  SetAll(1.0f);
  ASSERT_TRUE(Save(p).ok());
  float at_p = 1.0f;  // what P holds
  int points = 0;
  for (int n = 1; n < 300; ++n) {
    const float next = 100.0f + n;
    SetAll(next);
    fault_fs_.Reset();
    fault_fs_.FailNthMutation(n);
    grpc::Status s = Save(p);
    const bool fired = fault_fs_.faults_fired() > 0;
    fault_fs_.Reset();
    if (!fired) {
      ASSERT_TRUE(s.ok()) << s.error_message();
      break;
    }
    ++points;
    // A failure once the journal committed (its renames, the retention
    // state, the state file) says that the new checkpoint stands.
    if (s.ok() || absl::StrContains(s.error_message(), "after its commit") ||
        absl::StrContains(s.error_message(), "was published")) {
      at_p = next;
    }
    // P restores whole, with the values of exactly one save.
    SetAll(-1.0f);
    grpc::Status r = Restore(p);
    ASSERT_TRUE(r.ok()) << "after fault " << n << " (" << s.error_message()
                        << "): " << r.error_message();
    EXPECT_EQ(ValueOfAll(), at_p) << "after fault " << n << ": " << s.error_message();
    // And so does latest.
    SetAll(-1.0f);
    ASSERT_TRUE(Restore("latest").ok()) << "after fault " << n;
    EXPECT_EQ(ValueOfAll(), at_p);
    // Whatever failed, no staging file is left once the next save or
    // restore ran (the restores above recovered the directory).
    ExpectNoLeftovers(ckpt_);
  }
  EXPECT_GE(points, 20);
  std::cout << "coordinator file-operation fault points covered: " << points << "\n";
}

TEST_F(ManagerTest, FailedResaveWithAnUninitializedVariableKeepsTheFirstSave) {
  const std::string p = ckpt_ + "/model.ckpt";
  SetAll(3.0f);
  ASSERT_TRUE(Save(p).ok());
  SetAll(4.0f);
  Declare("late", {8}, 0, /*initialize=*/false);  // on one shard: the other writes
  grpc::Status s = Save(p);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  ExpectNoLeftovers(ckpt_);
  // "late" is not in the first save: restore the two that are.
  grpc::ClientContext ctx;
  RestoreCheckpointRequest req;
  req.set_prefix(p);
  req.add_variables("w");
  req.add_variables("s");
  RestoreCheckpointResponse resp;
  grpc::Status r = stub_->Restore(&ctx, req, &resp);
  ASSERT_TRUE(r.ok()) << r.error_message();
  for (const char* name : {"w", "s"}) {
    auto def = registry_->Lookup(name);
    ASSERT_TRUE(def.ok());
    for (const VariablePart& part : def->parts()) {
      ReadRequest rr;
      rr.set_name(part.name());
      ReadResponse got;
      ASSERT_TRUE(shards_[part.shard_id()]->store.Read(rr, &got).ok());
      auto t = TensorFromProto(got.value(), "test");
      ASSERT_TRUE(t.ok());
      for (int64_t i = 0; i < t->num_elements(); ++i) EXPECT_EQ(t->data<float>()[i], 3.0f);
    }
  }
  EXPECT_EQ(State().model_checkpoint_path(), p);
}

TEST_F(ManagerTest, PathsOutsideTheCheckpointRootsArePermissionDenied) {
  SetAll(1.0f);
  ASSERT_TRUE(Save(ckpt_ + "/in").ok());
  ASSERT_TRUE(Save(other_root_ + "/in").ok());
  std::filesystem::create_symlink(dir_ + "/outside", ckpt_ + "/link");
  for (const std::string& bad : {dir_ + "/outside/x", ckpt_ + "/../outside/x", ckpt_ + "/link/x",
                                 std::string("/x"), std::string("relative/x")}) {
    grpc::Status s = Save(bad);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << bad << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(std::filesystem::weakly_canonical(ckpt_).string()))
        << bad;
    EXPECT_THAT(s.error_message(),
                HasSubstr(std::filesystem::weakly_canonical(other_root_).string()))
        << bad;
  }
  EXPECT_TRUE(Files(dir_ + "/outside").empty());
  for (const std::string& name :
       {std::string("../escape"), std::string("a/b"), std::string("..")}) {
    grpc::Status s = Save(ckpt_ + "/m", nullptr, std::nullopt, 1, name);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << name;
  }
  ListCheckpointsResponse listed;
  EXPECT_EQ(List(dir_ + "/outside", &listed).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(List(other_root_, &listed).ok());
  EXPECT_EQ(Restore(dir_ + "/outside/x").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Restore(other_root_ + "/in").ok());
}

TEST_F(ManagerTest, SaverRetentionNeverDeletesTheClusterCheckpoints) {
  SetAll(1.0f);
  // The cluster's (policy max_to_keep 2): two periodic checkpoints.
  ASSERT_TRUE(Save(ckpt_ + "/model.ckpt", nullptr, std::nullopt, 1).ok());
  ASSERT_TRUE(Save(ckpt_ + "/model.ckpt", nullptr, std::nullopt, 2).ok());
  // A trainer's Saver with max_to_keep 1 into the same directory and state
  // file.
  for (int step = 1; step <= 3; ++step) {
    ASSERT_TRUE(Save(ckpt_ + "/trainer", nullptr, 1, step).ok());
  }
  for (const std::string& kept :
       {ckpt_ + "/model.ckpt-1", ckpt_ + "/model.ckpt-2", ckpt_ + "/trainer-3"}) {
    EXPECT_TRUE(std::filesystem::exists(kept + ".index")) << kept;
  }
  EXPECT_FALSE(std::filesystem::exists(ckpt_ + "/trainer-1.index"));
  EXPECT_FALSE(std::filesystem::exists(ckpt_ + "/trainer-2.index"));
  GetCheckpointStateResponse state = State();
  EXPECT_EQ(state.model_checkpoint_path(), ckpt_ + "/trainer-3");
  EXPECT_THAT(state.all_model_checkpoint_paths(),
              ::testing::ElementsAre(ckpt_ + "/model.ckpt-1", ckpt_ + "/model.ckpt-2",
                                     ckpt_ + "/trainer-3"));
  // The cluster's policy still applies to the cluster's saves.
  ASSERT_TRUE(Save(ckpt_ + "/model.ckpt", nullptr, std::nullopt, 3).ok());
  EXPECT_FALSE(std::filesystem::exists(ckpt_ + "/model.ckpt-1.index"));
  EXPECT_TRUE(std::filesystem::exists(ckpt_ + "/trainer-3.index"));
}

TEST_F(ManagerTest, ListingAndLatestDoNotWaitBehindARunningSave) {
  SetAll(1.0f);
  ASSERT_TRUE(Save(ckpt_ + "/first").ok());
  blocking_fs_.armed = true;
  auto save = std::async(std::launch::async, [&] { return Save(ckpt_ + "/second"); });
  blocking_fs_.reached.WaitForNotification();
  // The save is inside its publication now, holding the save lock.
  ListCheckpointsResponse listed;
  grpc::Status s = List("", &listed);
  const bool listed_ok = s.ok();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  LatestCheckpointRequest latest_req;
  LatestCheckpointResponse latest;
  grpc::Status l = stub_->LatestCheckpoint(&ctx, latest_req, &latest);
  if (!blocking_fs_.release.HasBeenNotified()) blocking_fs_.release.Notify();
  EXPECT_TRUE(listed_ok) << s.error_message();
  ASSERT_EQ(listed.checkpoints_size(), 1);  // no staging file listed
  EXPECT_EQ(listed.checkpoints(0).prefix(), ckpt_ + "/first");
  EXPECT_TRUE(l.ok()) << l.error_message();
  EXPECT_TRUE(save.get().ok());
}

}  // namespace
}  // namespace psd
