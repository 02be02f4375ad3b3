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
//
// The plane's own logic (rendezvous, agreement and variable checks, staging
// from the store, the atomic apply, the ways a group ends) runs everywhere
// against a stand-in for the other ranks: a communicator factory whose
// "collectives" record what the shard sent and hand back the trainers' sum,
// over a CPU store whose device calls itself gpu:7.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "device/device.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nccl/nccl_comm.h"
#include "psd/wire.h"
#include "shard/nccl_plane.h"
#include "shard/shard_service.h"
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
  CreateVariable(&store, "s", DT_STRING, TensorShape{});
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

// ---------------------------------------------------------------------------
// The plane against stand-in trainers.

// The CPU device under a GPU's name: the plane serves only gpu:N devices,
// and its staging buffers are then host memory the stand-in can read.
class GpuNamedCpuDevice final : public Device {
 public:
  GpuNamedCpuDevice() : cpu_(NewCpuDevice()) {}
  std::string name() const override { return "gpu:7"; }
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override {
    return cpu_->Allocate(bytes);
  }
  absl::Status CopyFromHost(const void* src, size_t bytes, DeviceBuffer* dst,
                            size_t offset) override {
    return cpu_->CopyFromHost(src, bytes, dst, offset);
  }
  absl::Status CopyToHost(const DeviceBuffer& src, size_t offset, size_t bytes,
                          void* dst) override {
    return cpu_->CopyToHost(src, offset, bytes, dst);
  }
  absl::Status Copy(const DeviceBuffer& src, DeviceBuffer* dst) override {
    return cpu_->Copy(src, dst);
  }
  absl::Status CopyRange(const DeviceBuffer& src, size_t src_offset, DeviceBuffer* dst,
                         size_t dst_offset, size_t bytes) override {
    return cpu_->CopyRange(src, src_offset, dst, dst_offset, bytes);
  }
  absl::Status ApplyDense(DataType dtype, UpdateKind op, DeviceBuffer* dst, const void* src,
                          int64_t n, bool src_is_scalar) override {
    return cpu_->ApplyDense(dtype, op, dst, src, n, src_is_scalar);
  }
  absl::Status ApplyDenseFromBuffer(DataType dtype, UpdateKind op, DeviceBuffer* dst,
                                    const DeviceBuffer& src, int64_t n) override {
    return cpu_->ApplyDenseFromBuffer(dtype, op, dst, src, n);
  }
  absl::Status ApplyScatter(DataType dtype, UpdateKind op, DeviceBuffer* dst,
                            int64_t row_elements, absl::Span<const int64_t> indices,
                            const void* updates, bool updates_is_scalar) override {
    return cpu_->ApplyScatter(dtype, op, dst, row_elements, indices, updates, updates_is_scalar);
  }
  absl::Status Gather(DataType dtype, const DeviceBuffer& src, int64_t row_elements,
                      absl::Span<const int64_t> indices, void* out) override {
    return cpu_->Gather(dtype, src, row_elements, indices, out);
  }
  absl::Status ApplyOptimizerDense(const OptimizerParams& params, DataType dtype,
                                   DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                   const void* grad, int64_t n) override {
    return cpu_->ApplyOptimizerDense(params, dtype, var, slots, grad, n);
  }
  absl::Status ApplyOptimizerSparse(const OptimizerParams& params, DataType dtype,
                                    DeviceBuffer* var, absl::Span<DeviceBuffer* const> slots,
                                    int64_t row_elements, absl::Span<const int64_t> indices,
                                    const void* values) override {
    return cpu_->ApplyOptimizerSparse(params, dtype, var, slots, row_elements, indices, values);
  }
  absl::Status Initialize(const InitializerSpec& spec, DataType dtype,
                          const TensorShape& full_shape, const TensorShape& slice_shape,
                          absl::Span<const int64_t> slice_offset, DeviceBuffer* dst) override {
    return cpu_->Initialize(spec, dtype, full_shape, slice_shape, slice_offset, dst);
  }

 private:
  std::unique_ptr<Device> cpu_;
};

// Plays every trainer: the shard's broadcasts are recorded, a reduce hands
// back `sum` (after checking the shard contributed zeros), and failures can
// be injected.
class StandInTrainers final : public NcclCommFactory {
 public:
  absl::Status Support() const override { return absl::OkStatus(); }
  absl::StatusOr<std::string> NewUniqueId() override { return std::string(128, 'u'); }
  absl::StatusOr<std::unique_ptr<NcclComm>> Init(int device, const std::string& unique_id,
                                                 int size, int rank, absl::Time deadline,
                                                 const std::atomic<bool>* abort) override {
    absl::MutexLock lock(&mu_);
    inits_.push_back(absl::StrCat("gpu ", device, ", rank ", rank, " of ", size));
    if (!init_status_.ok()) return init_status_;
    return std::unique_ptr<NcclComm>(new Comm(this));
  }

  void set_init_status(absl::Status s) {
    absl::MutexLock lock(&mu_);
    init_status_ = std::move(s);
  }
  void set_sum(std::string bytes) {
    absl::MutexLock lock(&mu_);
    sum_ = std::move(bytes);
  }
  void set_failure(absl::Status s) {
    absl::MutexLock lock(&mu_);
    failure_ = std::move(s);
  }
  std::vector<std::string> inits() {
    absl::MutexLock lock(&mu_);
    return inits_;
  }
  std::vector<std::string> broadcasts() {
    absl::MutexLock lock(&mu_);
    return broadcasts_;
  }
  int reduces() {
    absl::MutexLock lock(&mu_);
    return reduces_;
  }
  int aborts() {
    absl::MutexLock lock(&mu_);
    return aborts_;
  }

 private:
  class Comm final : public NcclComm {
   public:
    explicit Comm(StandInTrainers* t) : t_(t) {}
    absl::Status Broadcast(void* data, size_t bytes, absl::Time deadline) override {
      absl::MutexLock lock(&t_->mu_);
      if (!t_->failure_.ok()) return t_->failure_;
      t_->broadcasts_.emplace_back(static_cast<const char*>(data), bytes);
      return absl::OkStatus();
    }
    absl::Status ReduceSum(void* data, int64_t count, DataType dtype,
                           absl::Time deadline) override {
      absl::MutexLock lock(&t_->mu_);
      if (!t_->failure_.ok()) return t_->failure_;
      const size_t bytes = static_cast<size_t>(count) * DataTypeSize(dtype);
      EXPECT_EQ(std::string(static_cast<const char*>(data), bytes), std::string(bytes, '\0'))
          << "the shard must contribute zeros";
      EXPECT_EQ(t_->sum_.size(), bytes);
      std::memcpy(data, t_->sum_.data(), std::min(bytes, t_->sum_.size()));
      ++t_->reduces_;
      return absl::OkStatus();
    }
    void Abort() override {
      absl::MutexLock lock(&t_->mu_);
      ++t_->aborts_;
    }

   private:
    StandInTrainers* const t_;
  };

  absl::Mutex mu_;
  absl::Status init_status_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  std::string sum_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> inits_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> broadcasts_ ABSL_GUARDED_BY(mu_);
  int reduces_ ABSL_GUARDED_BY(mu_) = 0;
  int aborts_ ABSL_GUARDED_BY(mu_) = 0;
};

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

NcclCollective MakeCollective(NcclOp op, const std::string& variable, DataType dtype,
                              const TensorShape& shape) {
  NcclCollective c;
  c.set_op(op);
  c.set_variable(variable);
  c.set_dtype(dtype);
  ShapeToProto(shape, c.mutable_shape());
  return c;
}

class NcclPlaneRendezvousTest : public ::testing::Test {
 protected:
  NcclPlaneRendezvousTest() : store_(&device_, VariableStoreOptions()) {
    CreateVariable(&store_, "w", DT_FLOAT, TensorShape{3});
    CreateVariable(&store_, "n", DT_INT16, TensorShape{2});
    AssignRequest assign;
    assign.set_name("w");
    assign.mutable_value()->set_dtype(DT_FLOAT);
    ShapeToProto(TensorShape{3}, assign.mutable_value()->mutable_shape());
    assign.mutable_value()->set_content(Bytes(std::vector<float>{1, 2, 3}));
    AssignResponse response;
    EXPECT_TRUE(store_.Assign(assign, &response).ok());
    NcclPlaneOptions options;
    options.enabled = true;
    options.comms = &trainers_;
    plane_ = std::make_unique<NcclPlane>(&store_, options);
  }

  // Joins `n` trainers to group "g" over "w" and "n".
  void JoinAll(int n) {
    for (int i = 0; i < n; ++i) {
      peers_.push_back(std::make_shared<Peer>());
      NcclJoined joined;
      auto member = plane_->Join(MakeJoin("g", {"w", "n"}, n), peers_.back(), &joined);
      ASSERT_TRUE(member.ok()) << member.status();
      EXPECT_EQ(joined.rank(), i + 1);
      EXPECT_EQ(joined.size(), n + 1);
      EXPECT_EQ(joined.device(), "gpu:7");
      EXPECT_EQ(joined.unique_id(), std::string(128, 'u'));
      members_.push_back(*member);
    }
  }

  // Every trainer asks for `request`; returns trainer 1's replies to it
  // (after checking all trainers got the same), `expected` of them.
  std::vector<NcclCollectiveStatus> RunAll(const NcclCollective& request, size_t expected) {
    std::vector<size_t> before;
    for (auto& peer : peers_) before.push_back(peer->count());
    for (auto& member : members_) {
      EXPECT_TRUE(plane_->Collective(member.get(), request).ok());
    }
    std::vector<NcclCollectiveStatus> first;
    for (size_t i = 0; i < peers_.size(); ++i) {
      std::vector<NcclReply> replies = peers_[i]->WaitFor(before[i] + expected);
      std::vector<NcclCollectiveStatus> mine;
      for (size_t k = before[i]; k < replies.size(); ++k) {
        mine.push_back(replies[k].has_ready() ? replies[k].ready() : replies[k].done());
      }
      if (i == 0) {
        first = mine;
      } else {
        EXPECT_EQ(mine.size(), first.size());
        for (size_t k = 0; k < std::min(mine.size(), first.size()); ++k) {
          EXPECT_EQ(mine[k].code(), first[k].code());
          EXPECT_EQ(mine[k].seq(), first[k].seq());
        }
      }
    }
    return first;
  }

  std::vector<float> ReadW() {
    ReadRequest read;
    read.set_name("w");
    ReadResponse response;
    EXPECT_TRUE(store_.Read(read, &response).ok());
    std::vector<float> out(3);
    std::memcpy(out.data(), response.value().content().data(),
                std::min<size_t>(12, response.value().content().size()));
    return out;
  }

  // Records replies, and lets the test wait for them.
  class Peer final : public NcclPeer {
   public:
    void Send(NcclReply reply) override {
      absl::MutexLock lock(&mu_);
      if (!closed_) replies_.push_back(std::move(reply));
    }
    void Close(absl::Status status) override {
      absl::MutexLock lock(&mu_);
      if (closed_) return;
      closed_ = true;
      status_ = std::move(status);
    }
    size_t count() {
      absl::MutexLock lock(&mu_);
      return replies_.size();
    }
    std::vector<NcclReply> WaitFor(size_t n, absl::Duration timeout = absl::Seconds(60)) {
      absl::MutexLock lock(&mu_);
      auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return replies_.size() >= n || closed_;
      };
      mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
      return replies_;
    }
    absl::Status WaitClosed() {
      absl::MutexLock lock(&mu_);
      auto closed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_; };
      if (!mu_.AwaitWithTimeout(absl::Condition(&closed), absl::Seconds(60))) {
        return absl::DeadlineExceededError("never closed");
      }
      return status_;
    }

   private:
    absl::Mutex mu_;
    std::vector<NcclReply> replies_ ABSL_GUARDED_BY(mu_);
    bool closed_ ABSL_GUARDED_BY(mu_) = false;
    absl::Status status_ ABSL_GUARDED_BY(mu_);
  };

  GpuNamedCpuDevice device_;
  VariableStore store_;
  StandInTrainers trainers_;
  std::unique_ptr<NcclPlane> plane_;
  std::vector<std::shared_ptr<Peer>> peers_;
  std::vector<std::shared_ptr<NcclPlane::Member>> members_;
};

TEST_F(NcclPlaneRendezvousTest, BroadcastThenReduceAdd) {
  JoinAll(2);
  // Broadcast: ready, then done with the version sent; the shard sent w.
  auto replies = RunAll(MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3}), 2);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].code(), 0) << replies[0].message();
  EXPECT_EQ(replies[1].code(), 0) << replies[1].message();
  EXPECT_EQ(replies[0].seq(), 0u);
  const uint64_t version = replies[1].version();
  ASSERT_EQ(trainers_.broadcasts().size(), 1u);
  EXPECT_EQ(trainers_.broadcasts()[0], Bytes(std::vector<float>{1, 2, 3}));
  EXPECT_EQ(trainers_.inits(), std::vector<std::string>{"gpu 7, rank 0 of 3"});

  // Reduce: the trainers' sum is added to w, one version later.
  trainers_.set_sum(Bytes(std::vector<float>{10, 20, 30.5f}));
  replies = RunAll(MakeCollective(NCCL_REDUCE_ADD, "w", DT_FLOAT, TensorShape{3}), 2);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].code(), 0) << replies[0].message();
  EXPECT_EQ(replies[1].code(), 0) << replies[1].message();
  EXPECT_EQ(replies[1].seq(), 1u);
  EXPECT_EQ(replies[1].version(), version + 1);
  EXPECT_EQ(ReadW(), (std::vector<float>{11, 22, 33.5f}));
  EXPECT_EQ(trainers_.reduces(), 1);
}

TEST_F(NcclPlaneRendezvousTest, BadCollectivesFailForEveryoneAndTheGroupGoesOn) {
  JoinAll(2);
  // The trainers disagree: nothing runs, both hear why.
  EXPECT_TRUE(plane_->Collective(members_[0].get(),
                                 MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3}))
                  .ok());
  EXPECT_TRUE(plane_->Collective(members_[1].get(),
                                 MakeCollective(NCCL_REDUCE_ADD, "w", DT_FLOAT, TensorShape{3}))
                  .ok());
  for (auto& peer : peers_) {
    std::vector<NcclReply> replies = peer->WaitFor(1);
    ASSERT_EQ(replies.size(), 1u);
    ASSERT_TRUE(replies[0].has_ready());
    EXPECT_EQ(replies[0].ready().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(replies[0].ready().message(),
                HasSubstr("trainer rank 1 asked for broadcast of variable 'w' as float32[3], "
                          "trainer rank 2 for reduce_add of variable 'w' as float32[3]"));
  }

  struct Case {
    NcclCollective request;
    absl::StatusCode code;
    std::string message;
  };
  const Case cases[] = {
      {MakeCollective(NCCL_REDUCE_ADD, "w", DT_HALF, TensorShape{3}),
       absl::StatusCode::kInvalidArgument,
       "reduce_add: variable 'w' is float32[3], the trainers' gradients are float16[3]"},
      {MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{4}),
       absl::StatusCode::kInvalidArgument,
       "broadcast: variable 'w' is float32[3], the trainers' buffers are float32[4]"},
      {MakeCollective(NCCL_REDUCE_ADD, "n", DT_INT16, TensorShape{2}),
       absl::StatusCode::kInvalidArgument, "variable 'n' has dtype int16, which NCCL cannot sum"},
      {MakeCollective(NCCL_BROADCAST, "other", DT_FLOAT, TensorShape{3}),
       absl::StatusCode::kInvalidArgument, "variable 'other' is not one of its variables [w, n]"},
      {MakeCollective(NCCL_OP_UNSPECIFIED, "w", DT_FLOAT, TensorShape{3}),
       absl::StatusCode::kInvalidArgument, "unknown op 0"},
  };
  for (const Case& c : cases) {
    auto replies = RunAll(c.request, 1);
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].code(), static_cast<int>(c.code)) << replies[0].message();
    EXPECT_THAT(replies[0].message(), HasSubstr(c.message));
  }
  EXPECT_TRUE(trainers_.broadcasts().empty());
  EXPECT_EQ(trainers_.reduces(), 0);
  EXPECT_EQ(ReadW(), (std::vector<float>{1, 2, 3}));

  // A deleted variable: NOT_FOUND, for both.
  DeleteVariableRequest del;
  del.set_name("n");
  ASSERT_TRUE(store_.Delete(del).ok());
  auto replies = RunAll(MakeCollective(NCCL_BROADCAST, "n", DT_INT16, TensorShape{2}), 1);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].code(), static_cast<int>(absl::StatusCode::kNotFound));

  // And the group still works.
  replies = RunAll(MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3}), 2);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[1].code(), 0) << replies[1].message();
  EXPECT_EQ(replies[1].seq(), 7u);
  EXPECT_EQ(trainers_.broadcasts().size(), 1u);
}

TEST_F(NcclPlaneRendezvousTest, ALeavingTrainerEndsTheGroup) {
  JoinAll(2);
  plane_->Leave(members_[1].get(), absl::UnavailableError("trainer rank 2 closed its stream"));
  absl::Status closed = peers_[0]->WaitClosed();
  EXPECT_EQ(closed.code(), absl::StatusCode::kUnavailable) << closed;
  EXPECT_THAT(closed.message(), HasSubstr("trainer rank 2 closed its stream"));
  // Later requests of the old members fail; the name is free for a new group.
  EXPECT_EQ(plane_->Collective(members_[0].get(),
                               MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3}))
                .code(),
            absl::StatusCode::kUnavailable);
  peers_.clear();
  members_.clear();
  JoinAll(1);
  auto replies = RunAll(MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3}), 2);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[1].code(), 0) << replies[1].message();
}

// An ended group lets go of its members, and so of their peers (the
// trainers' streams): a member holds its group, so a group that kept its
// members would keep all of them alive for ever, one leak per group.
TEST_F(NcclPlaneRendezvousTest, AnEndedGroupReleasesItsMembersAndPeers) {
  JoinAll(2);
  std::vector<std::weak_ptr<NcclPlane::Member>> members(members_.begin(), members_.end());
  std::vector<std::weak_ptr<Peer>> peers(peers_.begin(), peers_.end());
  plane_->Leave(members_[0].get(), absl::UnavailableError("trainer rank 1 closed its stream"));
  for (auto& peer : peers_) EXPECT_EQ(peer->WaitClosed().code(), absl::StatusCode::kUnavailable);
  // What a trainer's stream drops when it finishes.
  members_.clear();
  peers_.clear();
  for (size_t i = 0; i < members.size(); ++i) {
    EXPECT_TRUE(members[i].expired()) << "member " << i + 1 << " outlives its ended group";
    EXPECT_TRUE(peers[i].expired()) << "peer " << i + 1 << " outlives its ended group";
  }
}

TEST_F(NcclPlaneRendezvousTest, ACollectiveFailureEndsTheGroup) {
  JoinAll(2);
  trainers_.set_failure(absl::InternalError("NCCL broadcast failed: remote process exited"));
  for (auto& member : members_) {
    ASSERT_TRUE(plane_->Collective(member.get(),
                                   MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3}))
                    .ok());
  }
  for (auto& peer : peers_) {
    absl::Status closed = peer->WaitClosed();
    EXPECT_EQ(closed.code(), absl::StatusCode::kInternal) << closed;
    EXPECT_THAT(closed.message(),
                HasSubstr("NCCL group 'g': broadcast of variable 'w' as float32[3]: NCCL "
                          "broadcast failed: remote process exited"));
  }
  EXPECT_EQ(ReadW(), (std::vector<float>{1, 2, 3}));
}

TEST_F(NcclPlaneRendezvousTest, InitFailureEndsTheGroup) {
  trainers_.set_init_status(absl::DeadlineExceededError("not every rank took part"));
  JoinAll(1);
  absl::Status closed = peers_[0]->WaitClosed();
  EXPECT_EQ(closed.code(), absl::StatusCode::kDeadlineExceeded) << closed;
  EXPECT_THAT(closed.message(),
              HasSubstr("NCCL group 'g': 1 of 1 trainer(s) joined; not every rank took part"));
}

TEST_F(NcclPlaneRendezvousTest, ShutdownEndsGroupsAndRefusesJoins) {
  JoinAll(2);
  plane_->Shutdown();
  for (auto& peer : peers_) {
    absl::Status closed = peer->WaitClosed();
    EXPECT_EQ(closed.code(), absl::StatusCode::kUnavailable) << closed;
    EXPECT_THAT(closed.message(), HasSubstr("shutting down"));
  }
  EXPECT_GE(trainers_.aborts(), 1);
  NcclJoined joined;
  auto member = plane_->Join(MakeJoin("h", {"w"}, 1), std::make_shared<Peer>(), &joined);
  EXPECT_EQ(member.status().code(), absl::StatusCode::kUnavailable) << member.status();
}

TEST_F(NcclPlaneRendezvousTest, ApplyWaitsForACheckpointFence) {
  JoinAll(1);
  trainers_.set_sum(Bytes(std::vector<float>{5, 5, 5}));
  std::vector<VariableStore::PinnedValue> snapshot;
  ASSERT_TRUE(store_.Fence(1, absl::Seconds(60), &snapshot).ok());
  ASSERT_TRUE(plane_->Collective(members_[0].get(),
                                 MakeCollective(NCCL_REDUCE_ADD, "w", DT_FLOAT, TensorShape{3}))
                  .ok());
  // The collective runs (staging passes no gate); its apply is a write and
  // waits for the fence, however long this takes to look.
  std::vector<NcclReply> replies = peers_[0]->WaitFor(1);
  ASSERT_GE(replies.size(), 1u);
  EXPECT_EQ(replies[0].ready().code(), 0) << replies[0].ready().message();
  replies = peers_[0]->WaitFor(2, absl::Milliseconds(300));
  EXPECT_EQ(replies.size(), 1u) << "the sum was applied during a checkpoint fence";
  EXPECT_EQ(ReadW(), (std::vector<float>{1, 2, 3}));

  WriteGate::FenceStats stats;
  ASSERT_TRUE(store_.Unfence(1, &stats).ok());
  replies = peers_[0]->WaitFor(2);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[1].done().code(), 0) << replies[1].done().message();
  EXPECT_EQ(ReadW(), (std::vector<float>{6, 7, 8}));
}

// The same through the Shard.Nccl stream of an in-process server: two
// trainers' streams, a broadcast and a reduce_add, then one trainer leaves.
TEST_F(NcclPlaneRendezvousTest, OverTheStream) {
  ShardService service(0, store_.incarnation(), &store_);
  service.set_nccl_plane(plane_.get());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto stub = Shard::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));

  // A stream must start with a join.
  {
    grpc::ClientContext context;
    auto stream = stub->Nccl(&context);
    NcclRequest request;
    *request.mutable_collective() = MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3});
    stream->Write(request);
    NcclReply reply;
    EXPECT_FALSE(stream->Read(&reply));
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(status.error_message(), HasSubstr("must join a group"));
  }

  grpc::ClientContext contexts[2];
  std::unique_ptr<grpc::ClientReaderWriter<NcclRequest, NcclReply>> streams[2];
  for (int i = 0; i < 2; ++i) {
    streams[i] = stub->Nccl(&contexts[i]);
    NcclRequest request;
    *request.mutable_join() = MakeJoin("g", {"w"}, 2);
    ASSERT_TRUE(streams[i]->Write(request));
    NcclReply reply;
    ASSERT_TRUE(streams[i]->Read(&reply));
    ASSERT_TRUE(reply.has_joined());
    EXPECT_EQ(reply.joined().rank(), i + 1);
    EXPECT_EQ(reply.joined().size(), 3);
  }
  auto run = [&](const NcclCollective& collective) {
    NcclRequest request;
    *request.mutable_collective() = collective;
    for (auto& stream : streams) EXPECT_TRUE(stream->Write(request));
    std::vector<NcclCollectiveStatus> done;
    for (auto& stream : streams) {
      NcclReply ready, finished;
      EXPECT_TRUE(stream->Read(&ready));
      EXPECT_TRUE(ready.has_ready());
      EXPECT_EQ(ready.ready().code(), 0) << ready.ready().message();
      EXPECT_TRUE(stream->Read(&finished));
      EXPECT_TRUE(finished.has_done());
      done.push_back(finished.done());
    }
    return done;
  };
  auto done = run(MakeCollective(NCCL_BROADCAST, "w", DT_FLOAT, TensorShape{3}));
  EXPECT_EQ(done[0].code(), 0) << done[0].message();
  EXPECT_EQ(trainers_.broadcasts(), std::vector<std::string>{Bytes(std::vector<float>{1, 2, 3})});
  trainers_.set_sum(Bytes(std::vector<float>{-1, -2, -3}));
  done = run(MakeCollective(NCCL_REDUCE_ADD, "w", DT_FLOAT, TensorShape{3}));
  EXPECT_EQ(done[1].code(), 0) << done[1].message();
  EXPECT_EQ(done[1].seq(), 1u);
  EXPECT_EQ(ReadW(), (std::vector<float>{0, 0, 0}));

  // Trainer 2 closes its stream: the group ends, and trainer 1 hears why.
  streams[1]->WritesDone();
  EXPECT_TRUE(streams[1]->Finish().ok());
  NcclReply reply;
  EXPECT_FALSE(streams[0]->Read(&reply));
  grpc::Status status = streams[0]->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(),
              HasSubstr("NCCL group 'g' ended: trainer rank 2 closed its stream"));

  plane_->Shutdown();
  server->Shutdown();
}

}  // namespace
}  // namespace psd
