// The C++ Saver's own options against a real coordinator and two shards:
// var_list (list and dict form) limits what a save writes and what a restore
// reads, and max_to_keep is the Saver's, not the coordinator's (here 3).
#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/file_system.h"
#include "checkpoint/tensor_bundle.h"
#include "cluster_process.h"
#include "gtest/gtest.h"
#include "psd/meta_graph.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using checkpoint::BundleReader;
using client::GetVariableOptions;
using client::RestoreOptions;
using client::Saver;
using client::SaverOptions;
using client::Session;
using client::Variable;

class SaverOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/psd_saver_options_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    TestClusterOptions options;
    options.coordinator_args = {"--checkpoint-dir", dir_, "--max-to-keep", "3"};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    PSD_ASSERT_OK_AND_ASSIGN(session_, Session::Open(cluster_->coordinator_address()));
  }
  void TearDown() override {
    session_.reset();
    cluster_.reset();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  Variable Make(const std::string& name, const Tensor& value, bool partitioned = false) {
    GetVariableOptions o;
    o.initial_value = value;
    o.initialize = true;
    if (partitioned) o.partitioner = client::partitioners::FixedSize(2);
    auto v = session_->GetVariable(name, o);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : Variable();
  }
  std::unique_ptr<Saver> MakeSaver(const SaverOptions& options) {
    auto s = Saver::Create(cluster_->coordinator_address(), options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  bool Exists(const std::string& prefix) {
    return checkpoint::FileSystem::Default()->FileExists(checkpoint::IndexFilename(prefix)).ok();
  }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
};

Tensor Floats(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return *Tensor::FromVector<float>(TensorShape{n}, v);
}

TEST_F(SaverOptionsTest, VarListSavesOnlyItsVariablesUnderTheirCheckpointNames) {
  Variable w = Make("w", Floats({1, 2, 3, 4}), /*partitioned=*/true);
  Variable b = Make("b", Floats({5, 6}));
  // Declared and never initialized: a save of everything would fail on it.
  GetVariableOptions u;
  u.shape = TensorShape{2};
  ASSERT_TRUE(session_->GetVariable("u", u).ok());

  SaverOptions options;
  options.variables = {"b"};
  options.name_map = {{"renamed/w", "w"}};
  auto saver = MakeSaver(options);
  ASSERT_NE(saver, nullptr);
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver->Save(dir_ + "/part", 7));
  EXPECT_EQ(prefix, dir_ + "/part-7");
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(prefix));
  EXPECT_TRUE(reader->GetTensorInfo("b").ok());
  EXPECT_TRUE(reader->GetTensorInfo("renamed/w").ok());
  EXPECT_FALSE(reader->GetTensorInfo("w").ok());
  EXPECT_FALSE(reader->GetTensorInfo("u").ok());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor saved_w, reader->ReadTensor("renamed/w"));
  EXPECT_EQ(saved_w.data<float>()[3], 4.0f);

  // Restore reads the Saver's var_list back; RestoreOptions overrides it.
  ASSERT_TRUE(w.Assign(Floats({0, 0, 0, 0})).ok());
  ASSERT_TRUE(b.Assign(Floats({0, 0})).ok());
  ASSERT_TRUE(saver->Restore(prefix).ok());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got_w, w.Read());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got_b, b.Read());
  EXPECT_EQ(got_w.data<float>()[0], 1.0f);
  EXPECT_EQ(got_b.data<float>()[1], 6.0f);
  RestoreOptions only_w;
  only_w.variables = {"w"};
  EXPECT_EQ(saver->Restore(prefix, only_w).code(), absl::StatusCode::kNotFound);

  // A var_list naming no variable saves nothing.
  SaverOptions missing;
  missing.variables = {"b", "nope"};
  auto bad = MakeSaver(missing);
  ASSERT_NE(bad, nullptr);
  auto failed = bad->Save(dir_ + "/missing");
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kNotFound) << failed.status();
  EXPECT_NE(failed.status().message().find("nope"), std::string::npos) << failed.status();
  EXPECT_FALSE(Exists(dir_ + "/missing"));
}

TEST_F(SaverOptionsTest, SaverMaxToKeepOverridesTheCoordinatorPolicy) {
  Make("v", Floats({1}));
  SaverOptions one;
  one.variables = {"v"};
  one.max_to_keep = 1;
  auto saver = MakeSaver(one);
  ASSERT_NE(saver, nullptr);
  std::vector<std::string> prefixes;
  for (int step = 0; step < 3; ++step) {
    PSD_ASSERT_OK_AND_ASSIGN(std::string p, saver->Save(dir_ + "/one", step));
    prefixes.push_back(p);
  }
  PSD_ASSERT_OK_AND_ASSIGN(std::vector<std::string> last, saver->LastCheckpoints());
  EXPECT_EQ(last, std::vector<std::string>{prefixes[2]});
  EXPECT_FALSE(Exists(prefixes[0]));
  EXPECT_FALSE(Exists(prefixes[1]));
  EXPECT_TRUE(Exists(prefixes[2]));

  SaverOptions negative;
  negative.max_to_keep = -1;
  auto bad = MakeSaver(negative);
  ASSERT_NE(bad, nullptr);
  EXPECT_EQ(bad->Save(dir_ + "/bad").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Exists(dir_ + "/bad"));
}

// TensorFlow's Saver.set_last_checkpoints(_with_time): the list given is
// the one later saves pop from and delete; +inf times (set_last_checkpoints)
// are never deleted. Bad input is refused by name and changes nothing.
TEST_F(SaverOptionsTest, SetLastCheckpointsIsTheListRetentionDeletesFrom) {
  Make("v", Floats({1}));
  SaverOptions keep_all;
  keep_all.variables = {"v"};
  keep_all.max_to_keep = 0;  // records nothing, deletes nothing
  auto writer = MakeSaver(keep_all);
  ASSERT_NE(writer, nullptr);
  std::vector<std::string> c;
  for (int step = 0; step < 3; ++step) {
    PSD_ASSERT_OK_AND_ASSIGN(std::string p, writer->Save(dir_ + "/m", step));
    c.push_back(p);
  }
  SaverOptions two;
  two.variables = {"v"};
  two.max_to_keep = 2;
  auto saver = MakeSaver(two);
  ASSERT_NE(saver, nullptr);
  ASSERT_TRUE(saver->SetLastCheckpointsWithTime({{c[0], 1.0}, {c[1], 2.0}}).ok());
  PSD_ASSERT_OK_AND_ASSIGN(std::vector<std::string> last, saver->LastCheckpoints());
  EXPECT_EQ(last, (std::vector<std::string>{c[0], c[1]}));

  // Refused by name, and the list stays as it was.
  absl::Status missing = saver->SetLastCheckpointsWithTime({{c[2], 1.0}, {dir_ + "/m-99", 1.0}});
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_NE(missing.message().find(dir_ + "/m-99"), std::string::npos) << missing;
  absl::Status outside = saver->SetLastCheckpoints({"/etc/passwd"});
  EXPECT_EQ(outside.code(), absl::StatusCode::kPermissionDenied) << outside;
  EXPECT_NE(outside.message().find("/etc/passwd"), std::string::npos) << outside;
  absl::Status relative = saver->SetLastCheckpoints({c[2], "m-2"});
  EXPECT_EQ(relative.code(), absl::StatusCode::kInvalidArgument) << relative;
  EXPECT_NE(relative.message().find("'m-2'"), std::string::npos) << relative;
  absl::Status nan =
      saver->SetLastCheckpointsWithTime({{c[2], std::numeric_limits<double>::quiet_NaN()}});
  EXPECT_EQ(nan.code(), absl::StatusCode::kInvalidArgument) << nan;
  EXPECT_NE(nan.message().find(c[2]), std::string::npos) << nan;
  PSD_ASSERT_OK_AND_ASSIGN(last, saver->LastCheckpoints());
  EXPECT_EQ(last, (std::vector<std::string>{c[0], c[1]}));

  // max_to_keep 2 pops the oldest of the list set, one per save, and
  // deletes it (its time is before the keep_checkpoint_every_n_hours mark).
  client::SaveDetails details;
  ASSERT_TRUE(saver->Save(dir_ + "/m", 3, &details).ok());
  EXPECT_EQ(details.deleted, std::vector<std::string>{c[0]});
  ASSERT_TRUE(saver->Save(dir_ + "/m", 4, &details).ok());
  EXPECT_EQ(details.deleted, std::vector<std::string>{c[1]});
  EXPECT_FALSE(Exists(c[0]));
  EXPECT_FALSE(Exists(c[1]));
  EXPECT_TRUE(Exists(c[2]));  // never in the list

  // set_last_checkpoints: time +inf, so when it leaves the list it is kept
  // for good; m-3 and m-4 left the list and are not deleted either.
  ASSERT_TRUE(saver->SetLastCheckpoints({c[2]}).ok());
  PSD_ASSERT_OK_AND_ASSIGN(last, saver->LastCheckpoints());
  EXPECT_EQ(last, std::vector<std::string>{c[2]});
  for (int step = 5; step < 8; ++step) {
    ASSERT_TRUE(saver->Save(dir_ + "/m", step, &details).ok());
    if (step == 7) EXPECT_EQ(details.deleted, std::vector<std::string>{dir_ + "/m-5"});
    if (step < 7) EXPECT_TRUE(details.deleted.empty()) << step;
  }
  EXPECT_TRUE(Exists(c[2]));
  EXPECT_TRUE(Exists(dir_ + "/m-3"));
  EXPECT_TRUE(Exists(dir_ + "/m-4"));
  PSD_ASSERT_OK_AND_ASSIGN(std::vector<CheckpointInfo> listed, saver->ListCheckpoints(dir_));
  bool kept = false;
  for (const CheckpointInfo& info : listed) {
    if (info.prefix() == c[2]) kept = info.kept_forever() && !info.managed();
  }
  EXPECT_TRUE(kept) << c[2] << " is not listed as kept for good";

  // An empty list empties the list of the directory the Saver fed, here
  // by a list set (a restarted trainer's Saver that has not saved yet).
  auto restarted = MakeSaver(two);
  ASSERT_NE(restarted, nullptr);
  ASSERT_TRUE(restarted->SetLastCheckpoints({dir_ + "/m-7"}).ok());
  PSD_ASSERT_OK_AND_ASSIGN(last, restarted->LastCheckpoints());
  EXPECT_EQ(last, std::vector<std::string>{dir_ + "/m-7"});
  ASSERT_TRUE(restarted->SetLastCheckpoints({}).ok());
  PSD_ASSERT_OK_AND_ASSIGN(last, restarted->LastCheckpoints());
  EXPECT_TRUE(last.empty()) << last.size();
}

// Meta graph files are shared with psclient (tests/data/meta_graph):
// python_v1.meta is what psclient writes (client/python/tests/
// test_meta_graph.py checks it), cpp_v1.meta what this client writes for
// the same declarations (checked here; psclient imports it).
// PSD_REGENERATE_FIXTURES=1 rewrites cpp_v1.meta.
std::string Fixture(const std::string& name) {
  return absl::StrCat(PSD_META_GRAPH_FIXTURES, "/", name);
}

TEST_F(SaverOptionsTest, MetaGraphWrittenByPsclientImportsAndRestores) {
  PSD_ASSERT_OK_AND_ASSIGN(client::ImportedMetaGraph imported,
                           client::ImportMetaGraph(session_.get(), Fixture("python_v1.meta")));
  ASSERT_EQ(imported.variables.size(), 3u);
  ASSERT_NE(imported.saver, nullptr);
  ASSERT_TRUE(imported.saver_def.has_value());
  EXPECT_EQ(imported.saver_def->max_to_keep, std::optional<int>(3));
  EXPECT_EQ(imported.saver_def->name_map,
            (std::map<std::string, std::string>{{"weights", "model/w"}, {"bias", "model/b"}}));
  EXPECT_EQ(imported.saver->options().max_to_keep, std::optional<int>(3));
  PSD_ASSERT_OK_AND_ASSIGN(Variable w, session_->LookupVariable("model/w"));
  PSD_ASSERT_OK_AND_ASSIGN(Variable b, session_->LookupVariable("model/b"));
  PSD_ASSERT_OK_AND_ASSIGN(Variable steps, session_->LookupVariable("model/steps"));
  EXPECT_EQ(w.shape(), (TensorShape{6, 2}));
  EXPECT_EQ(w.partitions(), (std::vector<int64_t>{2, 1}));
  EXPECT_TRUE(w.trainable());
  EXPECT_EQ(b.dtype(), DT_FLOAT);
  EXPECT_EQ(steps.dtype(), DT_INT64);
  EXPECT_FALSE(steps.trainable());
  EXPECT_EQ(steps.collections(), std::vector<std::string>{client::kLocalVariables});
  // The seeded initializer came through: the values of random_normal(seed 7).
  ASSERT_TRUE(session_->InitializeAllVariables().ok());
  GetVariableOptions same;
  same.shape = TensorShape{6, 2};
  same.initializer = client::init::RandomNormal(0.0, 1.0, 7);
  same.partitioner = client::partitioners::FixedSize(2);
  same.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable again, session_->GetVariable("again/w", same));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, w.Read());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor want, again.Read());
  EXPECT_EQ(got.bytes(), want.bytes());
  // The Saver it describes saves and restores under the checkpoint names.
  ASSERT_TRUE(b.Assign(Floats({1.5, -2})).ok());
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, imported.saver->Save(dir_ + "/meta", 1));
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, BundleReader::Open(prefix));
  EXPECT_TRUE(reader->GetTensorInfo("weights").ok());
  EXPECT_TRUE(reader->GetTensorInfo("bias").ok());
  ASSERT_TRUE(b.Assign(Floats({0, 0})).ok());
  ASSERT_TRUE(imported.saver->Restore(prefix).ok());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor restored, b.Read());
  EXPECT_EQ(restored.data<float>()[0], 1.5f);
  EXPECT_EQ(restored.data<float>()[1], -2.0f);
}

TEST_F(SaverOptionsTest, MetaGraphExportIsPsclientsFormat) {
  // psclient's declarations of test_meta_graph.py's fixture model.
  {
    PSD_ASSERT_OK_AND_ASSIGN(auto scope, client::VariableScope::Enter(session_.get(), "model"));
    GetVariableOptions w;
    w.shape = TensorShape{6, 2};
    w.initializer = client::init::RandomNormal(0.0, 1.0, 7);
    w.partitioner = client::partitioners::FixedSize(2);
    ASSERT_TRUE(session_->GetVariable("w", w).ok());
    GetVariableOptions b;
    b.shape = TensorShape{2};
    b.initializer = client::init::Zeros();
    ASSERT_TRUE(session_->GetVariable("b", b).ok());
    GetVariableOptions steps;
    steps.shape = TensorShape{};
    steps.dtype = DT_INT64;
    steps.initializer = client::init::Zeros();
    steps.trainable = false;
    steps.collections = {client::kLocalVariables};
    ASSERT_TRUE(session_->GetVariable("steps", steps).ok());
  }
  SaverOptions options;
  options.name_map = {{"weights", "model/w"}, {"bias", "model/b"}};
  options.max_to_keep = 3;
  auto saver = MakeSaver(options);
  ASSERT_NE(saver, nullptr);
  const std::string written = dir_ + "/cpp_v1.meta";
  client::ExportMetaGraphOptions exported;
  exported.saver = saver.get();
  ASSERT_TRUE(client::ExportMetaGraph(session_.get(), written, exported).ok());
  if (std::getenv("PSD_REGENERATE_FIXTURES") != nullptr) {
    ASSERT_EQ(
        std::system(absl::StrCat("cp '", written, "' '", Fixture("cpp_v1.meta"), "'").c_str()), 0);
  }
  // Read back, the file is the committed one and the one psclient writes.
  PSD_ASSERT_OK_AND_ASSIGN(client::MetaGraph mine, client::ReadMetaGraph(written));
  PSD_ASSERT_OK_AND_ASSIGN(client::MetaGraph committed,
                           client::ReadMetaGraph(Fixture("cpp_v1.meta")));
  PSD_ASSERT_OK_AND_ASSIGN(client::MetaGraph python,
                           client::ReadMetaGraph(Fixture("python_v1.meta")));
  EXPECT_EQ(client::MetaGraphToJson(mine), client::MetaGraphToJson(committed));
  EXPECT_EQ(client::MetaGraphToJson(mine), client::MetaGraphToJson(python));
}

TEST_F(SaverOptionsTest, MetaGraphCarriesEmbeddingTablesAndTheirSlots) {
  client::EmbeddingVariableOptions o;
  o.embedding_dim = 4;
  o.initializer = client::init::Ones();
  o.partitioner = client::partitioners::FixedSize(2);
  o.ev_option.set_steps_to_live(7);
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingVariable table,
                           session_->GetEmbeddingVariable("m/emb", o));
  o.slot_of = "m/emb";
  o.trainable = false;
  ASSERT_TRUE(session_->GetEmbeddingVariable("m/emb/Adagrad", o).ok());
  const std::string written = dir_ + "/tables.meta";
  client::ExportMetaGraphOptions exported;
  exported.export_scope = "m";
  ASSERT_TRUE(client::ExportMetaGraph(session_.get(), written, exported).ok());
  PSD_ASSERT_OK_AND_ASSIGN(client::MetaGraph meta, client::ReadMetaGraph(written));
  ASSERT_EQ(meta.variables.size(), 2u);
  ASSERT_TRUE(meta.variables[1].embedding.has_value());
  EXPECT_EQ(meta.variables[1].embedding->slot_of(), "emb") << "relative to the export scope";

  PSD_ASSERT_OK_AND_ASSIGN(auto other, Session::Open(cluster_->coordinator_address()));
  client::ImportMetaGraphOptions imported;
  imported.import_scope = "copy";
  PSD_ASSERT_OK_AND_ASSIGN(client::ImportedMetaGraph result,
                           client::ImportMetaGraph(other.get(), written, imported));
  ASSERT_EQ(result.variables.size(), 2u);
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingVariable copy,
                           client::EmbeddingVariable::Of(result.variables[0]));
  EXPECT_EQ(copy.name(), "copy/emb");
  EXPECT_EQ(copy.num_parts(), 2);
  EXPECT_EQ(copy.spec().steps_to_live(), 7);
  PSD_ASSERT_OK_AND_ASSIGN(client::EmbeddingVariable slot,
                           client::EmbeddingVariable::Of(result.variables[1]));
  EXPECT_EQ(slot.spec().slot_of(), "copy/emb");
  PSD_ASSERT_OK_AND_ASSIGN(Tensor rows, copy.Gather(*Tensor::FromVector(TensorShape({1}),
                                                                         std::vector<int64_t>{5})));
  EXPECT_EQ(rows.data<float>()[0], 1.0f);
}

TEST_F(SaverOptionsTest, MalformedMetaGraphNamesTheEntryAndDeclaresNothing) {
  const std::string good =
      R"({"name": "good", "dtype": "float32", "shape": [1], "trainable": true,
          "collections": ["variables"], "partitions": null, "partition_axis": null,
          "initializer": "CgA="})";
  const std::vector<std::string> bad_entries = {
      R"({"name": "bad"})",
      R"({"name": "b", "dtype": "float32", "shape": "x", "trainable": true, "initializer": "CgA="})",
      R"({"name": "c", "dtype": "float32", "shape": [1], "trainable": true,
          "initializer": "not base64!"})",
      R"({"name": "d", "dtype": "complex7", "shape": [1], "trainable": true, "initializer": "CgA="})",
      R"({"name": "e", "dtype": "float32", "shape": [4], "trainable": true, "initializer": "CgA=",
          "partitions": [2], "partition_axis": 3})",
      "7",
  };
  for (const std::string& bad : bad_entries) {
    const std::string path = dir_ + "/bad.meta";
    std::ofstream(path) << R"({"format": "psd.MetaGraph", "version": 1, "variables": [)" << good
                        << ", " << bad << "]}";
    auto imported = client::ImportMetaGraph(session_.get(), path);
    EXPECT_EQ(imported.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(imported.status().message().find("variable entry 1"), std::string::npos)
        << imported.status();
    EXPECT_NE(imported.status().message().find(path), std::string::npos) << imported.status();
  }
  EXPECT_EQ(session_->LookupVariable("good").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client::MetaGraphFromJson(R"({"format": "other"})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      client::MetaGraphFromJson(R"({"format": "psd.MetaGraph", "version": 2})").status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client::MetaGraphFromJson("{not json").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client::ReadMetaGraph(dir_ + "/missing.meta").status().code(),
            absl::StatusCode::kNotFound);
  PSD_ASSERT_OK_AND_ASSIGN(auto scope, client::VariableScope::Enter(session_.get(), "inside"));
  EXPECT_EQ(client::ImportMetaGraph(session_.get(), Fixture("python_v1.meta")).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace integration
}  // namespace psd
