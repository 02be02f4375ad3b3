// Initial values supplied by a trainer (tf.Variable(array),
// get_variable(initializer=array), a large constant_initializer) against a
// real coordinator and two real shards:
//  * the value goes from the client straight to each part's shard (streamed
//    when large); the coordinator records only its description, so its
//    registry log and every handle stay small, and a value larger than a
//    gRPC message works;
//  * initializing never overwrites an initialized value unless forced, and
//    a session that does not hold the value cannot initialize the variable
//    (FAILED_PRECONDITION naming it) but leaves an initialized one alone;
//  * the shards keep no copy beyond the variable itself.
#include <sys/stat.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster_process.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/initializers.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Session;
using client::ShardClient;
using client::Variable;
namespace init = client::init;
namespace partitioners = client::partitioners;

int64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

// n floats 0, 1, 2, ... (exact in float below 2^24).
Tensor Counting(int64_t n, float offset = 0) {
  Tensor t(DT_FLOAT, TensorShape({n}));
  float* p = t.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(i % (1 << 20)) + offset;
  return t;
}

class SuppliedValueTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto started = TestCluster::Start();
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = std::move(started).value().release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    PSD_ASSERT_OK_AND_ASSIGN(session_, Session::Open(cluster_->coordinator_address()));
  }

  int64_t RegistryLogBytes() const {
    return FileSize(cluster_->state_dir() + "/state/registry.log");
  }
  int64_t ShardMemoryUsed() const {
    int64_t total = 0;
    for (int k = 0; k < 2; ++k) {
      auto shard = ShardClient::Connect(cluster_->shard_address(k));
      if (!shard.ok()) return -1;
      auto info = (*shard)->GetInfo();
      if (!info.ok()) return -1;
      total += info->memory_used_bytes;
    }
    return total;
  }

  static TestCluster* cluster_;
  std::unique_ptr<Session> session_;
};

TestCluster* SuppliedValueTest::cluster_ = nullptr;

// 96 MiB: more than a gRPC message (64 MiB), which failed outright when the
// value travelled inside the declaration.
TEST_F(SuppliedValueTest, ValueLargerThanAMessageGoesStraightToTheShards) {
  const int64_t n = (96 << 20) / 4;
  const int64_t log_before = RegistryLogBytes();
  const int64_t memory_before = ShardMemoryUsed();
  ASSERT_GE(log_before, 0);
  ASSERT_GE(memory_before, 0);

  GetVariableOptions o;
  o.initial_value = Counting(n);
  o.partitioner = partitioners::FixedSize(2);
  o.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("big_initial", o));
  ASSERT_EQ(v.parts().size(), 2u);

  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, v.Read());
  const Tensor want = Counting(n);
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_TRUE(got.bytes() == want.bytes());

  // The coordinator holds a description: the log grew by a record, not by
  // the value, and the handle every trainer fetches is small.
  EXPECT_LT(RegistryLogBytes() - log_before, 64 << 10);
  const VariableHandle handle = v.handle();
  ASSERT_TRUE(handle.initializer().has_supplied_value());
  EXPECT_EQ(handle.initializer().supplied_value().byte_size(), n * 4);
  EXPECT_LT(handle.ByteSizeLong(), 4096u);
  PSD_ASSERT_OK_AND_ASSIGN(Variable looked_up, session_->LookupVariable("big_initial"));
  EXPECT_LT(looked_up.handle().ByteSizeLong(), 4096u);

  // The shards hold the variable once: no second copy of the initial value
  // stays behind once it is written.
  const int64_t memory_after = ShardMemoryUsed();
  EXPECT_LE(memory_after - memory_before, n * 4 + (n * 4) / 8);
  ASSERT_TRUE(session_->DeleteVariable("big_initial").ok());
}

TEST_F(SuppliedValueTest, InitializationNeverOverwritesUnlessForcedAndNeedsTheValue) {
  // Large enough to be streamed (the streamed initialization checks
  // "not initialized" when it commits).
  const int64_t n = (24 << 20) / 4;
  client::VariableOptions named;
  named.name = "supplied_init";
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->CreateVariable(Counting(n), named));
  PSD_ASSERT_OK_AND_ASSIGN(bool initialized, v.IsInitialized());
  EXPECT_FALSE(initialized);

  // Another trainer does not hold the value: it cannot initialize the
  // variable, and says which variable and why.
  PSD_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> other,
                           Session::Open(cluster_->coordinator_address()));
  PSD_ASSERT_OK_AND_ASSIGN(Variable seen, other->LookupVariable(v.name()));
  const absl::Status refused = other->InitializeVariables({seen});
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find(v.name()), absl::string_view::npos) << refused;
  EXPECT_NE(refused.message().find("supplied"), absl::string_view::npos) << refused;
  PSD_ASSERT_OK_AND_ASSIGN(initialized, v.IsInitialized());
  EXPECT_FALSE(initialized);

  ASSERT_TRUE(session_->InitializeVariables({v}).ok());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, v.Read());
  EXPECT_TRUE(got.bytes() == Counting(n).bytes());

  // Training moves it; initializing again (either trainer) leaves it.
  Tensor one(DT_FLOAT, TensorShape({n}));
  for (int64_t i = 0; i < n; ++i) one.data<float>()[i] = 1.0f;
  ASSERT_TRUE(v.AssignAdd(one).ok());
  ASSERT_TRUE(session_->InitializeVariables({v}).ok());
  ASSERT_TRUE(v.Initialize().ok());
  ASSERT_TRUE(other->InitializeVariables({seen}).ok());
  PSD_ASSERT_OK_AND_ASSIGN(got, v.Read());
  EXPECT_TRUE(got.bytes() == Counting(n, 1.0f).bytes());

  // Forced, the holder restores the initial value (TensorFlow's re-run of
  // v.initializer); the other trainer cannot.
  EXPECT_EQ(seen.Initialize(/*force=*/true).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(v.Initialize(/*force=*/true).ok());
  PSD_ASSERT_OK_AND_ASSIGN(got, v.Read());
  EXPECT_TRUE(got.bytes() == Counting(n).bytes());
  ASSERT_TRUE(session_->DeleteVariable(v.name()).ok());
}

TEST_F(SuppliedValueTest, GlobalInitializationCoversTheValuesThisTrainerHolds) {
  client::VariableOptions named;
  named.name = "pending_elsewhere";
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->CreateVariable(Counting(10), named));
  PSD_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> other,
                           Session::Open(cluster_->coordinator_address()));
  // Another trainer's global initialization leaves it to its owner, and
  // still initializes what it can.
  GetVariableOptions zeros;
  zeros.shape = TensorShape({3});
  zeros.initializer = init::Zeros();
  PSD_ASSERT_OK_AND_ASSIGN(Variable z, other->GetVariable("zeros_elsewhere", zeros));
  ASSERT_TRUE(other->InitializeAllVariables().ok());
  PSD_ASSERT_OK_AND_ASSIGN(bool initialized, v.IsInitialized());
  EXPECT_FALSE(initialized);
  PSD_ASSERT_OK_AND_ASSIGN(initialized, z.IsInitialized());
  EXPECT_TRUE(initialized);
  // Its owner's covers it; a variable initialized from it follows.
  PSD_ASSERT_OK_AND_ASSIGN(Variable twice, session_->CreateVariableFrom(v, 2.0, 0.0));
  ASSERT_TRUE(session_->InitializeVariables({twice}).ok());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, twice.Read());
  Tensor want = Counting(10);
  for (int i = 0; i < 10; ++i) want.data<float>()[i] *= 2;
  EXPECT_TRUE(got.bytes() == want.bytes());
  ASSERT_TRUE(session_->InitializeAllVariables().ok());
  PSD_ASSERT_OK_AND_ASSIGN(initialized, v.IsInitialized());
  EXPECT_TRUE(initialized);
  for (const std::string& name : {twice.name(), v.name(), z.name()}) {
    ASSERT_TRUE(session_->DeleteVariable(name).ok()) << name;
  }
}

TEST_F(SuppliedValueTest, LargeConstantInitializerTravelsLikeAValue) {
  // 400 KB, over what a declaration carries inline.
  const int64_t n = 100000;
  GetVariableOptions o;
  o.shape = TensorShape({n});
  o.initializer = init::Constant(Counting(n, 0.5f));
  o.partitioner = partitioners::FixedSize(2);
  o.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->GetVariable("big_constant", o));
  EXPECT_TRUE(v.handle().initializer().has_supplied_value());
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, v.Read());
  EXPECT_TRUE(got.bytes() == Counting(n, 0.5f).bytes());

  // Declared again with the same value (AUTO_REUSE): the same variable,
  // and this session can initialize it too.
  o.reuse = REUSE_AUTO;
  PSD_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> other,
                           Session::Open(cluster_->coordinator_address()));
  PSD_ASSERT_OK_AND_ASSIGN(Variable again, other->GetVariable("big_constant", o));
  ASSERT_TRUE(v.Assign(Counting(n, 2.0f)).ok());
  ASSERT_TRUE(again.Initialize(/*force=*/true).ok());
  PSD_ASSERT_OK_AND_ASSIGN(got, v.Read());
  EXPECT_TRUE(got.bytes() == Counting(n, 0.5f).bytes());

  // A shape that is not the constant's is refused, and nothing registered.
  GetVariableOptions bad = o;
  bad.reuse = REUSE_FALSE;
  bad.shape = TensorShape({n + 1});
  const absl::Status s = session_->GetVariable("big_constant_bad", bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(session_->LookupVariable("big_constant_bad").status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(session_->DeleteVariable("big_constant").ok());
}

TEST_F(SuppliedValueTest, StringValuesRoundTrip) {
  PSD_ASSERT_OK_AND_ASSIGN(Tensor words,
                           Tensor::FromStrings(TensorShape({3}), {"", "tf", std::string(300, 'x')}));
  client::VariableOptions named;
  named.name = "supplied_strings";
  named.initialize = true;
  PSD_ASSERT_OK_AND_ASSIGN(Variable v, session_->CreateVariable(words, named));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, v.Read());
  EXPECT_EQ(got.strings(), words.strings());
  EXPECT_EQ(v.handle().initializer().supplied_value().byte_size(), 1 + 1 + 2 + 2 + 300);
  ASSERT_TRUE(session_->DeleteVariable(v.name()).ok());
}

}  // namespace
}  // namespace integration
}  // namespace psd
