// The C++ Saver's own options against a real coordinator and two shards:
// var_list (list and dict form) limits what a save writes and what a restore
// reads, and max_to_keep is the Saver's, not the coordinator's (here 3).
#include <stdlib.h>

#include <cstdlib>
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

}  // namespace
}  // namespace integration
}  // namespace psd
