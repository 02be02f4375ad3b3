// Dense optimizer applies whose gradient is streamed (AssignStreamHeader
// .apply): the same result, bit for bit, as the unary ApplyDense on a twin
// variable; a cut stream, a bad request and a repeated request id change
// nothing more than the unary apply would. The streaming applier's stream
// threshold is low and its message limit below the gradient's size, so its
// dense applies can only have gone as streams.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/grpc_status.h"
#include "psd/optimizer_ops.h"
#include "psd/shard.grpc.pb.h"
#include "psd/wire.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using client::ShardApplier;

constexpr int64_t kN = 50003;  // 200 KB of float32: 13 chunks, the last one short

Tensor Wave(int64_t n, double phase) {
  Tensor t(DT_FLOAT, TensorShape{n});
  for (int64_t i = 0; i < n; ++i)
    t.data<float>()[i] = static_cast<float>(std::sin(0.01 * i + phase));
  return t;
}

RequestId Id(uint64_t client_id, uint64_t seq) {
  RequestId id;
  id.set_client_id(client_id);
  id.set_seq(seq);
  return id;
}

class StreamedApplyTest : public ShardTest {
 protected:
  void SetUp() override {
    ShardTest::SetUp();
    if (HasFatalFailure()) return;
    PSD_ASSERT_OK_AND_ASSIGN(unary_, ShardApplier::Connect(process_->address()));
    client::ClientOptions options;
    options.stream_threshold_bytes = 64 << 10;
    options.chunk_bytes = 16 << 10;
    options.max_message_bytes = 128 << 10;  // a unary apply of kN floats cannot pass
    PSD_ASSERT_OK_AND_ASSIGN(streaming_, ShardApplier::Connect(process_->address(), options));
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    raw_ = Shard::NewStub(
        grpc::CreateCustomChannel(process_->address(), grpc::InsecureChannelCredentials(), args));
  }

  // `var` with value `value` and the slots of `optimizer`, each filled with
  // its initial value.
  void CreateWithSlots(const client::OptimizerConfig& optimizer, const std::string& var,
                       const Tensor& value) {
    ASSERT_TRUE(IsOk(shard_->Create(var, value)));
    for (const auto& slot : client::OptimizerSlots(optimizer, var)) {
      ASSERT_TRUE(IsOk(shard_->Create(
          slot.name, DT_FLOAT, value.shape(),
          client::init::Constant(Tensor::Scalar<float>(static_cast<float>(slot.initial_value))))))
          << slot.name;
    }
  }

  // The values of `var` and of its slots.
  std::vector<Tensor> State(const client::OptimizerConfig& optimizer, const std::string& var) {
    std::vector<Tensor> state = {Read(var)};
    for (const auto& slot : client::OptimizerSlots(optimizer, var))
      state.push_back(Read(slot.name));
    return state;
  }

  // A streamed Adagrad apply of `gradient` to `var` sent by hand: the whole
  // gradient (then a half-close) or only its first third (then a cancel).
  absl::Status RawStreamedApply(const std::string& var, const Tensor& gradient, const RequestId& id,
                                bool cut) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    AssignResponse response;
    auto writer = raw_->AssignStream(&context, &response);
    AssignStreamRequest message;
    AssignStreamHeader* header = message.mutable_header();
    header->set_name(var);
    header->set_dtype(gradient.dtype());
    ShapeToProto(gradient.shape(), header->mutable_shape());
    header->set_total_bytes(static_cast<int64_t>(gradient.bytes().size()));
    *header->mutable_request_id() = id;
    header->mutable_apply()->add_slots(var + "/Adagrad");
    header->mutable_apply()->mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.5);
    writer->Write(message);
    message.clear_header();
    absl::string_view bytes = gradient.bytes();
    const size_t send = cut ? bytes.size() / 3 : bytes.size();
    for (size_t off = 0; off < send; off += 32 << 10) {
      message.set_content(std::string(bytes.substr(off, std::min<size_t>(32 << 10, send - off))));
      if (!writer->Write(message)) break;
    }
    if (cut) {
      context.TryCancel();
    } else {
      writer->WritesDone();
    }
    return FromGrpcStatus(writer->Finish());
  }

  std::unique_ptr<ShardApplier> unary_;
  std::unique_ptr<ShardApplier> streaming_;
  std::unique_ptr<Shard::Stub> raw_;
};

TEST_F(StreamedApplyTest, StreamedDenseAppliesMatchUnaryBitForBit) {
  client::opt::Adam adam;
  adam.learning_rate = 0.01;
  client::opt::Adagrad adagrad;
  adagrad.learning_rate = 0.3;
  const Tensor start = Wave(kN, 1.0);
  for (const char* suffix : {"_unary", "_streamed"}) {
    CreateWithSlots(adam, absl::StrCat("adam", suffix), start);
    CreateWithSlots(adagrad, absl::StrCat("adagrad", suffix), start);
  }
  ASSERT_TRUE(IsOk(shard_->Create("beta1_power", Tensor::Scalar<float>(0.9f))));
  ASSERT_TRUE(IsOk(shard_->Create("beta2_power", Tensor::Scalar<float>(0.999f))));

  for (int step = 0; step < 3; ++step) {
    const Tensor g = Wave(kN, 0.7 * step);
    PSD_ASSERT_OK_AND_ASSIGN(uint64_t unary_version, unary_->ApplyDense("adam_unary", adam, g));
    PSD_ASSERT_OK_AND_ASSIGN(uint64_t streamed_version,
                             streaming_->ApplyDense("adam_streamed", adam, g));
    EXPECT_EQ(streamed_version, unary_version);
    // The trainer's path: apply_gradients, a streamed gradient beside a
    // small one that still goes in the Batch message.
    const Tensor small = Vec<float>({4}, {1, 2, 3, static_cast<float>(step)});
    if (step == 0) {
      for (const char* suffix : {"_unary", "_streamed"}) {
        CreateWithSlots(adagrad, absl::StrCat("small", suffix), Vec<float>({4}, {0, 0, 0, 0}));
      }
    }
    std::vector<absl::Status> statuses;
    ASSERT_TRUE(IsOk(unary_->ApplyGradients(adagrad, {{"adagrad_unary", g}, {"small_unary", small}},
                                            &statuses)));
    ASSERT_TRUE(IsOk(streaming_->ApplyGradients(
        adagrad, {{"adagrad_streamed", g}, {"small_streamed", small}}, &statuses)));
    ASSERT_EQ(statuses.size(), 2u);
  }
  EXPECT_EQ(State(adam, "adam_streamed"), State(adam, "adam_unary"));
  EXPECT_EQ(State(adagrad, "adagrad_streamed"), State(adagrad, "adagrad_unary"));
  EXPECT_EQ(State(adagrad, "small_streamed"), State(adagrad, "small_unary"));
  EXPECT_NE(Read("adam_streamed"), start);
}

TEST_F(StreamedApplyTest, CutStreamChangesNothing) {
  client::opt::Adagrad adagrad;
  CreateWithSlots(adagrad, "v", Wave(kN, 0));
  const std::vector<Tensor> before = State(adagrad, "v");
  PSD_ASSERT_OK_AND_ASSIGN(auto info_before, shard_->GetInfo());
  EXPECT_FALSE(RawStreamedApply("v", Wave(kN, 2), Id(77, 1), /*cut=*/true).ok());
  EXPECT_EQ(State(adagrad, "v"), before);
  PSD_ASSERT_OK_AND_ASSIGN(auto var, shard_->Lookup("v"));
  EXPECT_EQ(var.version, 0u);
  // The shard notices the cancel on its own schedule: wait (bounded) for
  // the staged gradient to be released.
  int64_t used = -1;
  for (int i = 0; i < 200; ++i) {
    PSD_ASSERT_OK_AND_ASSIGN(auto now, shard_->GetInfo());
    used = now.memory_used_bytes;
    if (used == info_before.memory_used_bytes) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(used, info_before.memory_used_bytes);
  // The id was not spent: the whole stream with it applies.
  ASSERT_TRUE(IsOk(RawStreamedApply("v", Wave(kN, 2), Id(77, 1), /*cut=*/false)));
  PSD_ASSERT_OK_AND_ASSIGN(var, shard_->Lookup("v"));
  EXPECT_EQ(var.version, 1u);
}

TEST_F(StreamedApplyTest, BadStreamedApplyFailsLikeUnaryAndChangesNothing) {
  client::opt::Adagrad adagrad;
  CreateWithSlots(adagrad, "e", Wave(2 * kN, 0));
  const std::vector<Tensor> before = State(adagrad, "e");
  PSD_ASSERT_OK_AND_ASSIGN(auto info_before, shard_->GetInfo());

  struct Case {
    const char* what;
    client::OptimizerConfig optimizer;
    std::string var;
    Tensor gradient;
    absl::StatusCode code;
  };
  Tensor wrong_shape(DT_FLOAT, TensorShape{kN, 2});  // the right byte count
  std::fill(wrong_shape.data<float>(), wrong_shape.data<float>() + 2 * kN, 1.0f);
  Tensor wrong_dtype(DT_DOUBLE, TensorShape{2 * kN});
  std::fill(wrong_dtype.data<double>(), wrong_dtype.data<double>() + 2 * kN, 1.0);
  const std::vector<Case> cases = {
      {"wrong shape", adagrad, "e", wrong_shape, absl::StatusCode::kInvalidArgument},
      {"fewer elements", adagrad, "e", Wave(kN, 1), absl::StatusCode::kInvalidArgument},
      {"wrong dtype", adagrad, "e", wrong_dtype, absl::StatusCode::kInvalidArgument},
      {"missing slot", client::opt::Adam{}, "e", Wave(2 * kN, 1), absl::StatusCode::kNotFound},
      {"missing variable", adagrad, "nope", Wave(2 * kN, 1), absl::StatusCode::kNotFound},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const absl::Status unary = unary_->ApplyDense(c.var, c.optimizer, c.gradient).status();
    const absl::Status streamed = streaming_->ApplyDense(c.var, c.optimizer, c.gradient).status();
    EXPECT_EQ(unary.code(), c.code) << unary;
    EXPECT_EQ(streamed, unary);
  }
  EXPECT_EQ(State(adagrad, "e"), before);
  PSD_ASSERT_OK_AND_ASSIGN(auto var, shard_->Lookup("e"));
  EXPECT_EQ(var.version, 0u);
  PSD_ASSERT_OK_AND_ASSIGN(auto info_after, shard_->GetInfo());
  EXPECT_EQ(info_after.memory_used_bytes, info_before.memory_used_bytes);
}

TEST_F(StreamedApplyTest, DuplicateStreamedApplyRequestIdIsAppliedOnce) {
  client::opt::Adagrad adagrad;
  CreateWithSlots(adagrad, "d", Wave(kN, 0));
  ASSERT_TRUE(IsOk(RawStreamedApply("d", Wave(kN, 3), Id(4242, 9), /*cut=*/false)));
  const std::vector<Tensor> once = State(adagrad, "d");
  ASSERT_TRUE(IsOk(RawStreamedApply("d", Wave(kN, 3), Id(4242, 9), /*cut=*/false)));
  EXPECT_EQ(State(adagrad, "d"), once);
  PSD_ASSERT_OK_AND_ASSIGN(auto var, shard_->Lookup("d"));
  EXPECT_EQ(var.version, 1u);
  // A new id applies again.
  ASSERT_TRUE(IsOk(RawStreamedApply("d", Wave(kN, 3), Id(4242, 10), /*cut=*/false)));
  EXPECT_NE(State(adagrad, "d"), once);
}

}  // namespace
}  // namespace integration
}  // namespace psd
