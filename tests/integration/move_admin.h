// What the part-move integration tests ask of the coordinator — psctl's
// `vars move`, `shard drain`, `rebalance`, and where a part is placed — as
// its admin RPCs; and the saves that the checkpoint-during-moves tests take
// back to back while parts move.
//
// Thread-safety: MoveAdmin is thread-safe (each call opens its own
// channel); BackToBackSaves is driven by the thread that made it;
// MovesWithCheckpointsTest is a gtest fixture.
#ifndef PSD_TESTS_INTEGRATION_MOVE_ADMIN_H_
#define PSD_TESTS_INTEGRATION_MOVE_ADMIN_H_

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "cluster_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/grpc_status.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "test_util.h"

namespace psd {
namespace integration {

class MoveAdmin {
 public:
  explicit MoveAdmin(std::string coordinator) : coordinator_(std::move(coordinator)) {}

  // psctl vars move PART --to SHARD.
  absl::StatusOr<MovePartResponse> Move(const std::string& part, int32_t to) const {
    MovePartRequest req;
    req.set_part(part);
    req.set_target_shard(to);
    MovePartResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
    absl::Status s = FromGrpcStatus(Stub()->MovePart(&ctx, req, &resp));
    if (!s.ok()) return s;
    return resp;
  }
  // psctl shard drain SHARD [--undrain].
  absl::Status Drain(int32_t shard, bool undrain) const {
    DrainShardRequest req;
    req.set_shard_id(shard);
    req.set_undrain(undrain);
    DrainShardResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
    return FromGrpcStatus(Stub()->DrainShard(&ctx, req, &resp));
  }
  // psctl rebalance: the number of moves it made.
  absl::StatusOr<int> Rebalance() const {
    RebalanceRequest req;
    RebalanceResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
    absl::Status s = FromGrpcStatus(Stub()->Rebalance(&ctx, req, &resp));
    if (!s.ok()) return s;
    return resp.moves_size();
  }
  // Part `index` of `name` as the coordinator places it: its name and
  // shard ({"", -1}, and a test failure, if it cannot say).
  std::pair<std::string, int32_t> PartOf(const std::string& name, int index) const {
    LookupVariableRequest req;
    req.set_name(name);
    LookupVariableResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
    absl::Status s = FromGrpcStatus(Stub()->LookupVariable(&ctx, req, &resp));
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok() || index >= resp.handle().parts_size()) return {"", -1};
    return {resp.handle().parts(index).name(), resp.handle().parts(index).shard_id()};
  }

 private:
  static constexpr std::chrono::minutes kDeadline{2};
  std::unique_ptr<Coordinator::Stub> Stub() const {
    return Coordinator::NewStub(grpc::CreateChannel(coordinator_, grpc::InsecureChannelCredentials()));
  }
  const std::string coordinator_;
};

// Saves taken back to back on a thread of their own (at most `max_saves`)
// until Finish, each recording, per trainer, the ops acknowledged before it
// began (`acked`) and those begun by the time it returned (`begun`): what a
// save holds of a trainer must lie between the two.
class BackToBackSaves {
 public:
  struct Cut {
    std::string prefix;
    std::vector<int64_t> acked_before, begun_after;
  };
  BackToBackSaves(const std::string& coordinator, const std::string& path, int max_saves,
                  const std::vector<std::atomic<int64_t>>* acked,
                  const std::vector<std::atomic<int64_t>>* begun,
                  std::function<void(std::string)> fail)
      : thread_([this, coordinator, path, max_saves, acked, begun, fail] {
          auto saver = client::Saver::Create(coordinator);
          if (!saver.ok()) return fail(saver.status().ToString());
          for (int k = 0; k < max_saves && !done_.load(); ++k) {
            Cut cut;
            for (const auto& a : *acked) cut.acked_before.push_back(a.load());
            auto prefix = (*saver)->Save(path, k);
            if (!prefix.ok()) return fail(absl::StrCat("save ", k, ": ", prefix.status().ToString()));
            for (const auto& b : *begun) cut.begun_after.push_back(b.load());
            cut.prefix = *prefix;
            cuts_.push_back(std::move(cut));
          }
        }) {}
  BackToBackSaves(const BackToBackSaves&) = delete;
  BackToBackSaves& operator=(const BackToBackSaves&) = delete;
  ~BackToBackSaves() { Finish(); }

  // Stops after the save running now; the cuts taken, in order.
  std::vector<Cut> Finish() {
    done_.store(true);
    if (thread_.joinable()) thread_.join();
    return cuts_;
  }

 private:
  std::atomic<bool> done_{false};
  std::vector<Cut> cuts_;  // written by thread_ until it is joined
  std::thread thread_;     // last: starts once the members above exist
};

// A two-shard cluster of its own whose coordinator saves into a fresh
// directory (every checkpoint kept), with a client session: for the tests
// that take checkpoints while parts move.
class MovesWithCheckpointsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_move_ckpt_");
    ASSERT_FALSE(dir_.empty());
    TestClusterOptions options;
    options.coordinator_args = {"--heartbeat-interval", "0.2", "--checkpoint-dir", dir_,
                                "--max-to-keep", "0"};
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    PSD_ASSERT_OK_AND_ASSIGN(session_, client::Session::Open(cluster_->coordinator_address()));
  }
  void TearDown() override {
    session_.reset();
    cluster_.reset();
    if (!dir_.empty()) std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }
  MoveAdmin Admin() const { return MoveAdmin(cluster_->coordinator_address()); }

  std::string dir_;
  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<client::Session> session_;
};

}  // namespace integration
}  // namespace psd

#endif  // PSD_TESTS_INTEGRATION_MOVE_ADMIN_H_
