// SharedClusterTest: a test suite sharing one local cluster (a coordinator
// and two shards on loopback), started before its first test and stopped
// after its last, with a fresh session per test. A suite derives as
// `class FooTest : public SharedClusterTest<FooTest>`, so each suite has a
// cluster of its own.
#ifndef PSD_TESTS_INTEGRATION_SHARED_CLUSTER_TEST_H_
#define PSD_TESTS_INTEGRATION_SHARED_CLUSTER_TEST_H_

#include <memory>

#include "cluster_process.h"
#include "gtest/gtest.h"
#include "psd/session.h"

namespace psd {
namespace integration {

template <typename Suite>
class SharedClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto started = TestCluster::Start();
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = started->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    session_ = NewSession();
    ASSERT_NE(session_, nullptr);
  }
  // Another session on the suite's cluster (another trainer); null, with a
  // test failure, if it cannot be opened.
  std::unique_ptr<client::Session> NewSession() {
    auto s = client::Session::Open(cluster_->coordinator_address());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  static inline TestCluster* cluster_ = nullptr;
  std::unique_ptr<client::Session> session_;
};

}  // namespace integration
}  // namespace psd

#endif  // PSD_TESTS_INTEGRATION_SHARED_CLUSTER_TEST_H_
