// Declarations that cannot be created, and shards that cannot join, against
// a real coordinator and real shard processes:
//  * a declaration the shards would refuse (random_uniform with
//    minval > maxval, a name over the shards' limit) is refused before it
//    is registered, so the checkpoints after it still save everything;
//  * shard processes started with an id a live shard holds are refused by
//    the coordinator and exit with an error naming the holder, and the
//    holder keeps its parts; a shard without --id does not start at all.
// No timed assertions: every wait is for an exit or an acknowledgement,
// bounded generously.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster_process.h"
#include "gtest/gtest.h"
#include "psd/initializers.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::GetVariableOptions;
using client::Saver;
using client::Session;
using client::Variable;
namespace init = client::init;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

GetVariableOptions Floats(TensorShape shape, InitializerSpec init) {
  GetVariableOptions o;
  o.dtype = DT_FLOAT;
  o.shape = std::move(shape);
  o.initializer = std::move(init);
  o.initialize = true;
  return o;
}

class DeclarationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_decl_test_");
    ASSERT_FALSE(dir_.empty());
    TestClusterOptions options;
    options.num_shards = 1;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir_};
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

  // `psd shard` with `args` after the subcommand, its stderr to `log`; waits
  // for it to exit (up to a minute) and returns the wait status, or -1 if
  // it is still running then (it is killed).
  int RunShard(const std::vector<std::string>& args, const std::string& log) {
    std::string command = absl::StrCat("exec '", PSD_BINARY, "' --log-level warn shard");
    for (const std::string& a : args) absl::StrAppend(&command, " '", a, "'");
    absl::StrAppend(&command, " 2> '", log, "'");
    auto process = ChildProcess::Start({"/bin/sh", "-c", command});
    if (!process.ok()) return -1;
    auto status = (*process)->Wait(absl::Seconds(60));
    return status.ok() ? *status : -1;
  }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<Session> session_;
};

// psctl status (ListShards) right after a declaration shows what the shards
// hold now, not a heartbeat's figures from before it (heartbeats every 30 s
// here, so only a fresh report can show the new part).
TEST(ShardFiguresTest, ListingTheShardsRightAfterADeclarationShowsItsParts) {
  TestClusterOptions options;
  options.num_shards = 1;
  options.coordinator_args = {"--heartbeat-interval", "30", "--liveness-timeout", "120",
                              "--lease-period", "60"};
  PSD_ASSERT_OK_AND_ASSIGN(auto cluster, TestCluster::Start(options));
  PSD_ASSERT_OK_AND_ASSIGN(auto session, Session::Open(cluster->coordinator_address()));
  client::GetVariableOptions o;
  o.shape = TensorShape({1024});
  o.initialize = true;
  ASSERT_TRUE(session->GetVariable("figures/v", o).ok());
  PSD_ASSERT_OK_AND_ASSIGN(ListShardsResponse shards, session->ListShards());
  ASSERT_EQ(shards.shards_size(), 1);
  EXPECT_EQ(shards.shards(0).num_variables(), 1);
  EXPECT_EQ(shards.shards(0).placed_parts(), 1);
  EXPECT_GE(shards.shards(0).memory_used_bytes(), 4096);
}

// get_variable(initializer=random_uniform_initializer(1, 0)) and a name the
// shards cannot hold are refused with INVALID_ARGUMENT and leave nothing
// behind: the next save holds every variable, and the name is free for a
// valid declaration.
TEST_F(DeclarationTest, RefusedDeclarationsLeaveCheckpointsWorking) {
  PSD_ASSERT_OK_AND_ASSIGN(Variable good, session_->GetVariable("good", Floats({2}, init::Ones())));
  EXPECT_TRUE(IsError(session_->GetVariable("bad", Floats({4}, init::RandomUniform(1, 0))),
                      absl::StatusCode::kInvalidArgument, {"bad", "minval < maxval"}));
  const std::string long_name(1100, 'n');
  EXPECT_TRUE(IsError(session_->GetVariable(long_name, Floats({4}, init::Zeros())),
                      absl::StatusCode::kInvalidArgument, {"1100 bytes", "limit of 1024"}));
  EXPECT_TRUE(IsError(session_->LookupVariable("bad"), absl::StatusCode::kNotFound, {"bad"}));

  PSD_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Saver> saver,
                           Saver::Create(cluster_->coordinator_address()));
  PSD_ASSERT_OK_AND_ASSIGN(std::string prefix, saver->Save(absl::StrCat(dir_, "/model.ckpt"), 1));
  EXPECT_FALSE(prefix.empty());

  // Nothing of them reached the registry's log either: a restarted
  // coordinator (same state directory) does not know them.
  saver.reset();
  ASSERT_TRUE(IsOk(cluster_->RestartCoordinator()));
  ASSERT_TRUE(IsOk(cluster_->WaitForShards(absl::Seconds(60))));
  PSD_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Session> fresh,
                           Session::Open(cluster_->coordinator_address()));
  EXPECT_TRUE(IsError(fresh->LookupVariable("bad"), absl::StatusCode::kNotFound, {"bad"}));
  PSD_ASSERT_OK_AND_ASSIGN(saver, Saver::Create(cluster_->coordinator_address()));

  // The refused name can be declared properly, and saved with the rest.
  PSD_ASSERT_OK_AND_ASSIGN(Variable bad,
                           fresh->GetVariable("bad", Floats({4}, init::RandomUniform(0, 1))));
  PSD_ASSERT_OK_AND_ASSIGN(prefix, saver->Save(absl::StrCat(dir_, "/model.ckpt"), 2));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor g, good.Read());
  EXPECT_EQ(g.ToVector<float>(), (std::vector<float>{1, 1}));
}

// Shards started with an id a live shard holds (the slip of starting
// several without distinct ids) are refused and exit with an error naming
// the holder; the holder keeps its id, its incarnation and its parts. A
// shard without any id does not start.
TEST_F(DeclarationTest, SecondShardWithAHeldIdIsRefusedAndExits) {
  PSD_ASSERT_OK_AND_ASSIGN(
      Variable v,
      session_->GetVariable("kept", Floats({3}, init::Constant(Tensor::Scalar<float>(2.5f)))));
  PSD_ASSERT_OK_AND_ASSIGN(uint64_t incarnation, cluster_->ShardIncarnation(0));
  ASSERT_NE(incarnation, 0u);

  for (int k = 0; k < 2; ++k) {
    const std::string log = absl::StrCat(dir_, "/impostor-", k, ".log");
    const int status = RunShard(
        {"--id", "0", "--listen", "127.0.0.1:0", "--coordinator", cluster_->coordinator_address()},
        log);
    ASSERT_NE(status, -1) << "a second shard with id 0 is still running: " << ReadFile(log);
    ASSERT_TRUE(WIFEXITED(status)) << ReadFile(log);
    EXPECT_NE(WEXITSTATUS(status), 0) << ReadFile(log);
    const std::string text = ReadFile(log);
    EXPECT_NE(text.find("is held by a live shard at " + cluster_->shard_address(0)),
              std::string::npos)
        << text;
  }

  // Without --id (and no cluster file to name it) a shard does not start.
  const std::string log = absl::StrCat(dir_, "/no-id.log");
  const int status =
      RunShard({"--listen", "127.0.0.1:0", "--coordinator", cluster_->coordinator_address()}, log);
  ASSERT_TRUE(status != -1 && WIFEXITED(status)) << ReadFile(log);
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(ReadFile(log).find("--id"), std::string::npos) << ReadFile(log);

  // The holder was never displaced: same incarnation, its part not lost.
  PSD_ASSERT_OK_AND_ASSIGN(uint64_t after, cluster_->ShardIncarnation(0));
  EXPECT_EQ(after, incarnation);
  PSD_ASSERT_OK_AND_ASSIGN(Variable looked, session_->LookupVariable("kept"));
  ASSERT_EQ(looked.parts().size(), 1u);
  EXPECT_FALSE(looked.parts()[0].lost);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor value, looked.Read());
  EXPECT_EQ(value.ToVector<float>(), (std::vector<float>{2.5, 2.5, 2.5}));
}

}  // namespace
}  // namespace integration
}  // namespace psd
