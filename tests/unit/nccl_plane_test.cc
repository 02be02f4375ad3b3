// The NCCL data plane in-process: the shard's NcclPlane over a real store,
// and NcclComm with one rank.
//
// Without a GPU (or in a build without CUDA or NCCL) only the refusals run:
// a CPU shard's plane, on or off, answers FAILED_PRECONDITION naming its
// device. The GPU cases skip with the reason (PSD_REQUIRE_GPU=1 makes them
// fail instead). NCCL refuses two ranks on one GPU, so on a single-GPU
// machine the shard's group (the shard plus at least one trainer) can be
// tested only up to the join: these cases check the join's answers and that
// a group whose trainer never builds its communicator ends with
// DEADLINE_EXCEEDED; the collectives run on a one-rank communicator.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "device/device.h"
#include "device/nccl_comm.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "psd/wire.h"
#include "shard/nccl_plane.h"
#include "shard/variable_store.h"

namespace psd {
namespace {

using ::testing::HasSubstr;

// gpu:0, or null with the reason to skip (a failure with PSD_REQUIRE_GPU=1).
std::unique_ptr<Device> OpenGpu(std::string* skip) {
  auto device = NewDevice("gpu:0");
  if (device.ok()) return std::move(device).value();
  const char* require = std::getenv("PSD_REQUIRE_GPU");
  if (require != nullptr && std::string(require) == "1") {
    ADD_FAILURE() << "gpu:0: " << device.status();
  }
  *skip = std::string(device.status().message());
  return nullptr;
}

// Records what the plane sends to one trainer.
class RecordingPeer final : public NcclPeer {
 public:
  void Send(NcclReply reply) override {
    absl::MutexLock lock(&mu_);
    replies_.push_back(std::move(reply));
  }
  void Close(absl::Status status) override {
    absl::MutexLock lock(&mu_);
    if (closed_.HasBeenNotified()) return;
    status_ = std::move(status);
    closed_.Notify();
  }
  absl::Status WaitClosed(absl::Duration timeout) {
    if (!closed_.WaitForNotificationWithTimeout(timeout)) {
      return absl::DeadlineExceededError("the peer was never closed");
    }
    absl::MutexLock lock(&mu_);
    return status_;
  }
  bool closed() const { return closed_.HasBeenNotified(); }

 private:
  absl::Mutex mu_;
  std::vector<NcclReply> replies_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  absl::Notification closed_;
};

void CreateVariable(VariableStore* store, const std::string& name, DataType dtype,
                    const TensorShape& shape) {
  CreateVariableRequest request;
  request.set_name(name);
  request.set_dtype(dtype);
  ShapeToProto(shape, request.mutable_shape());
  request.mutable_initializer()->mutable_zeros();
  request.set_initialize(true);
  VariableInfo info;
  ASSERT_TRUE(store->Create(request, &info).ok()) << name;
}

NcclJoin MakeJoin(const std::string& group, std::vector<std::string> variables, int trainers) {
  NcclJoin join;
  join.set_group(group);
  for (auto& v : variables) join.add_variables(v);
  join.set_num_trainers(trainers);
  return join;
}

TEST(NcclPlaneTest, CpuShardRefusesNamingItsDevice) {
  std::unique_ptr<Device> device = NewCpuDevice();
  VariableStore store(device.get(), VariableStoreOptions());
  CreateVariable(&store, "w", DT_FLOAT, TensorShape{4});
  for (bool enabled : {false, true}) {
    NcclPlaneOptions options;
    options.enabled = enabled;
    options.shard_id = 3;
    NcclPlane plane(&store, options);
    absl::Status available = plane.Available();
    EXPECT_EQ(available.code(), absl::StatusCode::kFailedPrecondition) << available;
    EXPECT_THAT(available.message(), HasSubstr("shard 3 keeps its variables on cpu:0"));
    EXPECT_THAT(available.message(), HasSubstr("--nccl-plane"));

    auto peer = std::make_shared<RecordingPeer>();
    NcclJoined joined;
    auto member = plane.Join(MakeJoin("g", {"w"}, 2), peer, &joined);
    ASSERT_FALSE(member.ok());
    EXPECT_EQ(member.status(), available);
    EXPECT_FALSE(peer->closed());
    EXPECT_TRUE(joined.unique_id().empty());
  }
}

TEST(NcclCommTest, SummableDtypes) {
  for (DataType dtype : {DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16, DT_INT8, DT_UINT8, DT_INT32,
                         DT_INT64}) {
    EXPECT_TRUE(NcclCanSum(dtype)) << DataTypeName(dtype);
  }
  for (DataType dtype : {DT_INT16, DT_BOOL, DT_STRING}) {
    EXPECT_FALSE(NcclCanSum(dtype)) << DataTypeName(dtype);
  }
}

TEST(NcclCommTest, SupportMatchesTheBuild) {
  absl::Status support = NcclSupport();
#if defined(PSD_WITH_NCCL)
  EXPECT_TRUE(support.ok()) << support;
  EXPECT_NE(NcclVersion(), "none");
#else
  EXPECT_EQ(support.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(support.message(), HasSubstr("no NCCL data plane"));
  EXPECT_EQ(NcclVersion(), "none");
#endif
}

class NcclGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string skip;
    device_ = OpenGpu(&skip);
    if (device_ == nullptr) GTEST_SKIP() << skip;
    absl::Status support = NcclSupport();
    if (!support.ok()) GTEST_SKIP() << support.message();
  }
  std::unique_ptr<Device> device_;
};

TEST_F(NcclGpuTest, PlaneOffOnAGpuShard) {
  VariableStore store(device_.get(), VariableStoreOptions());
  NcclPlane plane(&store, NcclPlaneOptions());
  absl::Status available = plane.Available();
  EXPECT_EQ(available.code(), absl::StatusCode::kFailedPrecondition) << available;
  EXPECT_THAT(available.message(), HasSubstr("the NCCL data plane is off on shard 0 (gpu:0)"));
}

TEST_F(NcclGpuTest, JoinChecksAndAnswers) {
  VariableStore store(device_.get(), VariableStoreOptions());
  CreateVariable(&store, "w", DT_FLOAT, TensorShape{2, 3});
  CreateVariable(&store, "b", DT_HALF, TensorShape{3});
  {
    CreateVariableRequest request;
    request.set_name("s");
    request.set_dtype(DT_STRING);
    request.mutable_initial_value()->set_dtype(DT_STRING);
    request.mutable_initial_value()->set_content(std::string("\x01a", 2));  // one string, "a"
    request.set_initialize(true);
    VariableInfo info;
    ASSERT_TRUE(store.Create(request, &info).ok());
  }
  NcclPlaneOptions options;
  options.enabled = true;
  options.join_timeout = absl::Seconds(2);
  NcclPlane plane(&store, options);
  ASSERT_TRUE(plane.Available().ok()) << plane.Available();

  auto join_status = [&](const NcclJoin& join) {
    NcclJoined joined;
    return plane.Join(join, std::make_shared<RecordingPeer>(), &joined).status();
  };
  absl::Status s = join_status(MakeJoin("g", {"w", "nope"}, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("variable 'nope'"));
  s = join_status(MakeJoin("g", {"w", "w"}, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("names variable 'w' twice"));
  s = join_status(MakeJoin("g", {"w"}, 0));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("num_trainers is 0"));
  s = join_status(MakeJoin("", {"w"}, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = join_status(MakeJoin("g", {"s"}, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("variable 's' is a string variable"));

  // One trainer joins: it gets the id, rank 1 of 2 and the variables.
  auto peer = std::make_shared<RecordingPeer>();
  NcclJoined joined;
  auto member = plane.Join(MakeJoin("g", {"w", "b"}, 1), peer, &joined);
  ASSERT_TRUE(member.ok()) << member.status();
  EXPECT_EQ(joined.rank(), 1);
  EXPECT_EQ(joined.size(), 2);
  EXPECT_EQ(joined.device(), "gpu:0");
  EXPECT_EQ(joined.unique_id().size(), 128u);
  ASSERT_EQ(joined.variables_size(), 2);
  EXPECT_EQ(joined.variables(0).name(), "w");
  EXPECT_EQ(joined.variables(0).dtype(), DT_FLOAT);
  EXPECT_THAT(joined.variables(0).shape().dims(), ::testing::ElementsAre(2, 3));
  EXPECT_EQ(joined.variables(1).dtype(), DT_HALF);

  // The group is full, and a join naming other variables is refused.
  s = join_status(MakeJoin("g", {"w", "b"}, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("already has all its 1 trainer(s)"));
  s = join_status(MakeJoin("g", {"w"}, 2));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("has 1 trainer(s) and variables [w, b]; this join asks "
                                     "for 2 and [w]"));

  // This trainer never builds its communicator (it could not: NCCL refuses
  // a second rank on the shard's GPU), so the group ends at join_timeout.
  absl::Status closed = peer->WaitClosed(absl::Seconds(60));
  EXPECT_EQ(closed.code(), absl::StatusCode::kDeadlineExceeded) << closed;
  EXPECT_THAT(closed.message(), HasSubstr("NCCL group 'g': 1 of 1 trainer(s) joined"));

  // The name is free again.
  auto again = plane.Join(MakeJoin("g", {"w"}, 1), std::make_shared<RecordingPeer>(), &joined);
  EXPECT_TRUE(again.ok()) << again.status();
  plane.Shutdown();
}

TEST_F(NcclGpuTest, OneRankCommunicator) {
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto comm = NcclCommInit(0, *id, /*size=*/1, /*rank=*/0, absl::Now() + absl::Seconds(60),
                           nullptr);
  ASSERT_TRUE(comm.ok()) << comm.status();

  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f, 1e30f};
  const size_t bytes = values.size() * sizeof(float);
  auto buffer = device_->Allocate(bytes);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  ASSERT_TRUE(device_->CopyFromHost(values.data(), bytes, buffer->get(), 0).ok());

  // With one rank a broadcast leaves the root's bytes as they are, and the
  // sum of one buffer is that buffer.
  ASSERT_TRUE((*comm)->Broadcast((*buffer)->data(), bytes, absl::Now() + absl::Seconds(60)).ok());
  ASSERT_TRUE((*comm)
                  ->ReduceSum((*buffer)->data(), static_cast<int64_t>(values.size()), DT_FLOAT,
                              absl::Now() + absl::Seconds(60))
                  .ok());
  std::vector<float> back(values.size());
  ASSERT_TRUE(device_->CopyToHost(**buffer, 0, bytes, back.data()).ok());
  EXPECT_EQ(back, values);

  absl::Status bad = (*comm)->ReduceSum((*buffer)->data(), 2, DT_INT16,
                                        absl::Now() + absl::Seconds(60));
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
}

TEST_F(NcclGpuTest, MissingRankEndsInit) {
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  // Rank 1 never comes.
  auto comm = NcclCommInit(0, *id, /*size=*/2, /*rank=*/0, absl::Now() + absl::Seconds(2),
                           nullptr);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();

  // Abort ends the wait too.
  id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  std::atomic<bool> abort{true};
  comm = NcclCommInit(0, *id, 2, 0, absl::Now() + absl::Seconds(60), &abort);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kAborted) << comm.status();
}

}  // namespace
}  // namespace psd
