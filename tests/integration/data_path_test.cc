// The data path at scale against real shards: streamed reads and assigns
// (with a low stream threshold, so small values take the streaming path), a
// stream cut mid-assign, exactly-once request ids, stale handles across a
// shard restart, async ops with many in flight, and the batched stream. No
// timing is asserted; loops are bounded by op counts.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <future>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../common/fault_proxy.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/grpc_status.h"
#include "psd/shard.grpc.pb.h"
#include "psd/wire.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using ::psd::client::ClientOptions;
using ::psd::client::ShardClient;

// A stub without the client library, to send requests exactly as a test
// wants them (duplicate ids, old incarnations, broken streams).
std::unique_ptr<Shard::Stub> RawStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return Shard::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
}

uint64_t RandomClientId() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ 1;
}

RequestId Id(uint64_t client_id, uint64_t seq) {
  RequestId id;
  id.set_client_id(client_id);
  id.set_seq(seq);
  return id;
}

absl::Status RawAssign(Shard::Stub* stub, const AssignRequest& request,
                       AssignResponse* response = nullptr) {
  AssignResponse ignored;
  grpc::ClientContext context;
  SetDeadline(&context);
  return FromGrpcStatus(stub->Assign(&context, request, response != nullptr ? response : &ignored));
}

AssignRequest AddRequest(const std::string& name, const Tensor& value, const RequestId& id) {
  AssignRequest request;
  request.set_name(name);
  request.set_op(UPDATE_ADD);
  TensorToProto(value, request.mutable_value());
  *request.mutable_request_id() = id;
  return request;
}

Tensor Filled(int64_t n, float value) {
  Tensor t(DT_FLOAT, TensorShape{n});
  std::fill(t.data<float>(), t.data<float>() + n, value);
  return t;
}

Tensor Iota(int64_t n, float start) {
  Tensor t(DT_FLOAT, TensorShape{n});
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = start + static_cast<float>(i);
  return t;
}

// ---- Streams.

// Values above 64 KiB stream in 16 KiB chunks, so modest tensors exercise
// every streamed path.
class StreamTest : public ShardTest {
 protected:
  void SetUp() override {
    ShardTest::SetUp();
    if (HasFatalFailure()) return;
    ClientOptions options;
    options.stream_threshold_bytes = 64 << 10;
    options.chunk_bytes = 16 << 10;
    auto c = process_->Connect(options);
    ASSERT_TRUE(c.ok()) << c.status();
    streaming_ = *std::move(c);
  }

  std::unique_ptr<ShardClient> streaming_;
};

TEST_F(StreamTest, StreamedCreateAssignAndReadRoundTrip) {
  constexpr int64_t kN = 100003;  // 400 KB: 25 chunks, the last one short
  const Tensor first = Iota(kN, 1.0f);
  PSD_ASSERT_OK_AND_ASSIGN(auto info, streaming_->Create("v", first));
  EXPECT_EQ(info.dtype, DT_FLOAT);
  EXPECT_EQ(info.shape, TensorShape{kN});
  EXPECT_TRUE(info.initialized);

  // The shard says a plain read of it is too big and names its size.
  auto stub = RawStub(process_->address());
  ReadRequest request;
  request.set_name("v");
  request.set_max_value_bytes(64 << 10);
  ReadResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  ASSERT_TRUE(IsOk(FromGrpcStatus(stub->Read(&context, request, &response))));
  EXPECT_TRUE(response.use_stream());
  EXPECT_EQ(response.value_bytes(), kN * 4);
  EXPECT_EQ(response.value().content().size(), 0u);

  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, streaming_->Read("v"));
  EXPECT_EQ(got, first);
  // The plain client (1 MiB threshold) reads it in one message: same value.
  EXPECT_EQ(Read("v"), first);

  ASSERT_TRUE(IsOk(streaming_->AssignAdd("v", Filled(kN, 2.0f))));
  PSD_ASSERT_OK_AND_ASSIGN(got, streaming_->Read("v"));
  EXPECT_EQ(got, Iota(kN, 3.0f));

  Tensor after_sub;
  ASSERT_TRUE(IsOk(streaming_->AssignSub("v", Filled(kN, 3.0f), {}, &after_sub)));
  EXPECT_EQ(after_sub, Iota(kN, 0.0f));

  // validate_shape=false lets a streamed assign change the shape.
  client::AssignOptions reshape;
  reshape.validate_shape = false;
  Tensor wide(DT_FLOAT, TensorShape{2, kN});
  std::fill(wide.data<float>(), wide.data<float>() + 2 * kN, 7.0f);
  ASSERT_TRUE(IsOk(streaming_->Assign("v", wide, reshape)));
  EXPECT_EQ(Read("v"), wide);
  // With validation, a streamed assign of another shape is refused and
  // changes nothing.
  EXPECT_TRUE(IsError(streaming_->Assign("v", first), absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Read("v"), wide);
}

TEST_F(StreamTest, StreamedStringsRoundTrip) {
  std::vector<std::string> values;
  for (int i = 0; i < 5000; ++i) values.push_back(std::string(i % 97, 'a' + i % 26));
  values[17] = std::string(200000, 'z');  // one element spans many chunks
  const Tensor strings = Strings({50, 100}, values);
  ASSERT_TRUE(IsOk(streaming_->Create("s", strings)));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor got, streaming_->Read("s"));
  EXPECT_EQ(got, strings);
  std::reverse(values.begin(), values.end());
  const Tensor reversed = Strings({50, 100}, values);
  ASSERT_TRUE(IsOk(streaming_->Assign("s", reversed)));
  EXPECT_EQ(Read("s"), reversed);
}

// ReadInto reuses the destination's buffer whenever the value still fits it
// (the same dtype and byte size), streamed or not, and otherwise replaces it
// with the value as a fresh read would.
TEST_F(StreamTest, ReadIntoReusesTheDestinationWhileTheValueFitsIt) {
  constexpr int64_t kBig = 50000;  // 200 KB: streamed
  ASSERT_TRUE(IsOk(streaming_->Create("big", Iota(kBig, 1.0f))));
  ASSERT_TRUE(IsOk(streaming_->Create("small", Iota(8, 1.0f))));

  Tensor into;
  ASSERT_TRUE(IsOk(streaming_->ReadInto("big", &into)));
  EXPECT_EQ(into, Iota(kBig, 1.0f));
  const char* buffer = into.bytes().data();
  ASSERT_TRUE(IsOk(streaming_->AssignAdd("big", Filled(kBig, 1.0f))));
  ASSERT_TRUE(IsOk(streaming_->ReadInto("big", &into)));
  EXPECT_EQ(into, Iota(kBig, 2.0f));
  EXPECT_EQ(into.bytes().data(), buffer) << "a streamed read into a fitting tensor reallocated";

  Tensor small;
  ASSERT_TRUE(IsOk(streaming_->ReadInto("small", &small)));
  EXPECT_EQ(small, Iota(8, 1.0f));
  const char* small_buffer = small.bytes().data();
  ASSERT_TRUE(IsOk(streaming_->AssignAdd("small", Filled(8, 1.0f))));
  ASSERT_TRUE(IsOk(streaming_->ReadInto("small", &small)));
  EXPECT_EQ(small, Iota(8, 2.0f));
  EXPECT_EQ(small.bytes().data(), small_buffer) << "a one-message read into a fitting tensor "
                                                   "reallocated";

  // The value changed shape (same element count): reused, reshaped.
  client::AssignOptions reshape;
  reshape.validate_shape = false;
  Tensor square(DT_FLOAT, TensorShape{200, 250});
  std::fill(square.data<float>(), square.data<float>() + kBig, 5.0f);
  ASSERT_TRUE(IsOk(streaming_->Assign("big", square, reshape)));
  ASSERT_TRUE(IsOk(streaming_->ReadInto("big", &into)));
  EXPECT_EQ(into, square);
  // It shrank below the stream threshold: a destination that is still big
  // goes straight to the stream, which serves any size.
  ASSERT_TRUE(IsOk(streaming_->Assign("big", Iota(3, 9.0f), reshape)));
  ASSERT_TRUE(IsOk(streaming_->ReadInto("big", &into)));
  EXPECT_EQ(into, Iota(3, 9.0f));
  // A destination of another dtype with the right byte size is replaced,
  // not reinterpreted.
  Tensor ints(DT_INT32, TensorShape{8});
  ASSERT_TRUE(IsOk(streaming_->ReadInto("small", &ints)));
  EXPECT_EQ(ints, Iota(8, 2.0f));
  // Strings, streamed and not.
  const Tensor strings = Strings({2}, {"a", std::string(100000, 'b')});
  ASSERT_TRUE(IsOk(streaming_->Create("s", strings)));
  ASSERT_TRUE(IsOk(streaming_->ReadInto("s", &into)));
  EXPECT_EQ(into, strings);
  ASSERT_TRUE(IsOk(streaming_->Assign("s", Strings({2}, {"c", "d"}))));
  ASSERT_TRUE(IsOk(streaming_->ReadInto("s", &into)));
  EXPECT_EQ(into, Strings({2}, {"c", "d"}));

  EXPECT_TRUE(IsError(streaming_->ReadInto("nope", &into), absl::StatusCode::kNotFound));
}

// Streamed reads land in destinations allocated without a zero fill (and
// are sent from the variable's own memory): every byte must come back exact
// for every element width, with chunks that split elements, into a new
// tensor (Read), a destination that does not fit (ReadInto) and one that
// does.
TEST_F(ShardTest, StreamedReadsOfEveryWidthComeBackExact) {
  ClientOptions options;
  options.stream_threshold_bytes = 64;
  options.chunk_bytes = 1000;  // splits 8-byte elements across chunks
  PSD_ASSERT_OK_AND_ASSIGN(auto client, process_->Connect(options));
  for (DataType dtype : {DT_BOOL, DT_INT8, DT_UINT8, DT_INT16, DT_HALF, DT_BFLOAT16, DT_INT32,
                         DT_FLOAT, DT_INT64, DT_DOUBLE}) {
    SCOPED_TRACE(DataTypeName(dtype));
    const std::string name = absl::StrCat("w_", DataTypeName(dtype));
    Tensor value(dtype, TensorShape{3, 7, 11});
    std::string* bytes = value.mutable_bytes();
    for (size_t i = 0; i < bytes->size(); ++i) {
      (*bytes)[i] =
          dtype == DT_BOOL ? static_cast<char>(i % 3 == 1) : static_cast<char>(0x3d + 29 * i);
    }
    ASSERT_TRUE(IsOk(client->Create(name, value)));
    PSD_ASSERT_OK_AND_ASSIGN(Tensor read, client->Read(name));
    EXPECT_EQ(read, value);
    Tensor other(DT_INT32, TensorShape{5});  // does not fit: replaced
    ASSERT_TRUE(IsOk(client->ReadInto(name, &other)));
    EXPECT_EQ(other, value);
    Tensor fitting(dtype, TensorShape{231});  // same bytes: reused, reshaped
    ASSERT_TRUE(IsOk(client->ReadInto(name, &fitting)));
    EXPECT_EQ(fitting, value);
  }
}

// Streamed reads are sent from the variable's own memory while writers
// change it: every read must still be the value at one moment. Writers
// only add 1 to every element (dense and scatter adds), so a read is
// consistent exactly when all its elements are equal.
TEST_F(ShardTest, StreamedReadsSentFromTheVariableStayConsistentUnderWrites) {
  constexpr int64_t kRows = 4096, kCols = 256;  // 4 MiB of int32: 4 copy-on-write chunks
  ASSERT_TRUE(IsOk(shard_->Create("m", Tensor(DT_INT32, TensorShape{kRows, kCols}))));
  ClientOptions options;
  options.stream_threshold_bytes = 1 << 10;
  options.chunk_bytes = 64 << 10;
  PSD_ASSERT_OK_AND_ASSIGN(auto reader, process_->Connect(options));
  PSD_ASSERT_OK_AND_ASSIGN(auto writer, process_->Connect(options));
  Tensor ones(DT_INT32, TensorShape{kRows, kCols});
  std::fill(ones.data<int32_t>(), ones.data<int32_t>() + kRows * kCols, 1);
  Tensor all_rows(DT_INT64, TensorShape{kRows});
  for (int64_t r = 0; r < kRows; ++r) all_rows.data<int64_t>()[r] = r;

  std::atomic<bool> done{false};
  std::atomic<int> writes{0};
  std::thread writes_thread([&] {
    for (int i = 0; i < 400 && !done.load(); ++i) {
      absl::Status s =
          i % 2 == 0 ? writer->AssignAdd("m", ones) : writer->ScatterAdd("m", all_rows, ones);
      if (!s.ok()) {
        ADD_FAILURE() << s;
        return;
      }
      writes.fetch_add(1);
    }
  });
  Tensor got;
  int torn = 0;
  for (int i = 0; i < 30; ++i) {
    absl::Status s = reader->ReadInto("m", &got);
    if (!s.ok()) {
      ADD_FAILURE() << s;
      break;
    }
    const int32_t* p = got.data<int32_t>();
    if (std::count(p, p + kRows * kCols, p[0]) != kRows * kCols) ++torn;
  }
  done.store(true);
  writes_thread.join();
  EXPECT_EQ(torn, 0) << "reads mixed values from before and after a write";
  EXPECT_GT(writes.load(), 0);
  PSD_ASSERT_OK_AND_ASSIGN(Tensor last, reader->Read("m"));
  EXPECT_EQ(last.data<int32_t>()[0], writes.load());
  EXPECT_EQ(last.data<int32_t>()[kRows * kCols - 1], writes.load());
}

// A streamed read that fails midway never hands out the uninitialized
// buffer it was filling: a destination that did not fit the value is left
// exactly as it was.
TEST_F(ShardTest, AFailedStreamedReadLeavesADestinationThatDidNotFitUnchanged) {
  constexpr int64_t kElements = 100000;  // 400 KB
  ASSERT_TRUE(IsOk(shard_->Create("big", Iota(kElements, 1.0f))));
  PSD_ASSERT_OK_AND_ASSIGN(auto proxy, testing::FaultProxy::Start(process_->port()));
  ClientOptions options;
  options.stream_threshold_bytes = 64 << 10;
  options.chunk_bytes = 16 << 10;
  options.max_attempts = 1;  // the cut read fails instead of being retried
  PSD_ASSERT_OK_AND_ASSIGN(auto client, ShardClient::Connect(proxy->address(), options));
  ASSERT_TRUE(IsOk(client->AssignAdd("big", Filled(kElements, 0.0f))));  // connected

  Tensor dest = Filled(5, 7.0f);
  proxy->CutAfterBytes(testing::FaultProxy::Direction::kDown, 200 << 10);
  const absl::Status status = client->ReadInto("big", &dest);
  ASSERT_FALSE(status.ok()) << "the proxy did not cut the read";
  EXPECT_GT(proxy->cuts(), 0);
  EXPECT_EQ(dest, Filled(5, 7.0f)) << "a failed read changed a destination it did not fit";
  // The next read (a new connection) fills it. A few tries: the channel
  // may still be reconnecting.
  absl::Status again;
  for (int attempt = 0; attempt < 50; ++attempt) {
    again = client->ReadInto("big", &dest);
    if (again.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(IsOk(again));
  EXPECT_EQ(dest, Iota(kElements, 1.0f));
}

TEST_F(StreamTest, StreamedCreateOfATakenNameFails) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Tensor::Scalar<float>(1))));
  EXPECT_TRUE(IsError(streaming_->Create("v", Iota(50000, 0)), absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(Read("v"), Tensor::Scalar<float>(1));
}

// A stream that breaks before the client half-closes changes nothing: the
// old value stays and the staging memory is given back.
TEST_F(ShardTest, AssignStreamCutMidwayLeavesOldValueAndMemory) {
  constexpr int64_t kN = 1 << 20;  // 4 MiB
  const Tensor old_value = Filled(kN, 1.0f);
  ASSERT_TRUE(IsOk(shard_->Create("v", old_value)));
  PSD_ASSERT_OK_AND_ASSIGN(auto before, shard_->GetInfo());
  PSD_ASSERT_OK_AND_ASSIGN(auto created, shard_->Lookup("v"));
  auto stub = RawStub(process_->address());
  const std::string content(kN * 4, '\x40');  // 3.0078125f in every element

  for (const bool send_everything : {false, true}) {
    SCOPED_TRACE(send_everything ? "all bytes, no half-close" : "part of the bytes");
    grpc::ClientContext context;
    SetDeadline(&context);
    AssignResponse response;
    auto writer = stub->AssignStream(&context, &response);
    AssignStreamRequest message;
    AssignStreamHeader* header = message.mutable_header();
    header->set_name("v");
    header->set_op(UPDATE_ASSIGN);
    header->set_dtype(DT_FLOAT);
    header->mutable_shape()->add_dims(kN);
    header->set_total_bytes(kN * 4);
    header->set_validate_shape(true);
    *header->mutable_request_id() = Id(RandomClientId(), 1);
    ASSERT_TRUE(writer->Write(message));
    message.clear_header();
    const size_t sent = send_everything ? content.size() : content.size() / 3;
    for (size_t off = 0; off < sent; off += 256 << 10) {
      message.set_content(content.substr(off, std::min<size_t>(256 << 10, sent - off)));
      ASSERT_TRUE(writer->Write(message));
    }
    context.TryCancel();
    EXPECT_FALSE(writer->Finish().ok());

    EXPECT_EQ(Read("v"), old_value);
    // The shard notices the cancel on its own schedule: wait (bounded) for
    // the staging buffer to be released.
    int64_t used = -1;
    for (int i = 0; i < 200; ++i) {
      PSD_ASSERT_OK_AND_ASSIGN(auto now, shard_->GetInfo());
      used = now.memory_used_bytes;
      if (used == before.memory_used_bytes) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_EQ(used, before.memory_used_bytes);
    PSD_ASSERT_OK_AND_ASSIGN(auto var, shard_->Lookup("v"));
    EXPECT_EQ(var.version, created.version) << "nothing applied";
  }
}

// ---- Request ids.

TEST_F(ShardTest, DuplicateAssignRequestIdIsAppliedOnce) {
  ASSERT_TRUE(IsOk(shard_->Create("n", Tensor::Scalar<int64_t>(0))));
  auto stub = RawStub(process_->address());
  const AssignRequest request =
      AddRequest("n", Tensor::Scalar<int64_t>(1), Id(RandomClientId(), 7));
  AssignResponse first, second;
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), request, &first)));
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), request, &second)));
  EXPECT_EQ(first.version(), second.version()) << "the cached result";
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(1));

  // A request without an id is never deduplicated.
  AssignRequest plain = request;
  plain.clear_request_id();
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), plain)));
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), plain)));
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(3));
}

TEST_F(ShardTest, DuplicateCountUpToReturnsTheSameOldValue) {
  ASSERT_TRUE(IsOk(shard_->Create("counter", Tensor::Scalar<int32_t>(5))));
  auto stub = RawStub(process_->address());
  const uint64_t client_id = RandomClientId();
  CountUpToRequest request;
  request.set_name("counter");
  request.set_limit(100);
  *request.mutable_request_id() = Id(client_id, 1);
  for (int attempt = 0; attempt < 3; ++attempt) {
    CountUpToResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    ASSERT_TRUE(IsOk(FromGrpcStatus(stub->CountUpTo(&context, request, &response))));
    EXPECT_EQ(response.old_value(), 5) << "attempt " << attempt;
  }
  EXPECT_EQ(Read("counter"), Tensor::Scalar<int32_t>(6));
  *request.mutable_request_id() = Id(client_id, 2);  // a new request
  CountUpToResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  ASSERT_TRUE(IsOk(FromGrpcStatus(stub->CountUpTo(&context, request, &response))));
  EXPECT_EQ(response.old_value(), 6);
  EXPECT_EQ(Read("counter"), Tensor::Scalar<int32_t>(7));
}

TEST_F(ShardTest, DuplicateFailedRequestReturnsTheSameError) {
  ASSERT_TRUE(IsOk(shard_->Create("counter", Tensor::Scalar<int64_t>(3))));
  auto stub = RawStub(process_->address());
  CountUpToRequest request;
  request.set_name("counter");
  request.set_limit(3);
  *request.mutable_request_id() = Id(RandomClientId(), 1);
  for (int attempt = 0; attempt < 2; ++attempt) {
    CountUpToResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    EXPECT_TRUE(IsError(FromGrpcStatus(stub->CountUpTo(&context, request, &response)),
                        absl::StatusCode::kOutOfRange, {"Reached limit of 3"}));
  }
}

// An id a window behind the client's newest is refused once the window
// forgot a request of its variable at or after it: it may have run.
TEST_F(ShardTest, RequestIdOlderThanTheWindowIsAborted) {
  ASSERT_TRUE(IsOk(shard_->Create("n", Tensor::Scalar<int64_t>(0))));
  auto stub = RawStub(process_->address());
  const uint64_t client_id = RandomClientId();
  const Tensor one = Tensor::Scalar<int64_t>(1);
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("n", one, Id(client_id, 5000 - 1024)))));
  // A window later, in the same ring slot: the first is forgotten. Its own
  // retry is answered from the result kept of the newest forgotten request
  // of its variable (applied once); an older id of it may have run: too old.
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("n", one, Id(client_id, 5000)))));
  EXPECT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("n", one, Id(client_id, 5000 - 1024)))));
  EXPECT_TRUE(IsError(RawAssign(stub.get(), AddRequest("n", one, Id(client_id, 3000))),
                      absl::StatusCode::kAborted, {"request id too old"}));
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(2));
  // Inside the window, an id not seen before is a new request.
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("n", one, Id(client_id, 5000 - 1023)))));
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(3));
  // Another client's window is its own.
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("n", one, Id(client_id + 2, 1)))));
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(4));
}

// A client's ids are process-wide: an old id of one variable that the
// shard never saw, far behind the client's requests to another variable
// (a write retried after a failover while the trainer's other threads went
// on), is run once, not refused.
TEST_F(ShardTest, AnOldIdOfAVariableTheWindowForgotNothingOfRunsOnce) {
  ASSERT_TRUE(IsOk(shard_->Create("n", Tensor::Scalar<int64_t>(0))));
  ASSERT_TRUE(IsOk(shard_->Create("other", Tensor::Scalar<int64_t>(0))));
  auto stub = RawStub(process_->address());
  const uint64_t client_id = RandomClientId();
  const Tensor one = Tensor::Scalar<int64_t>(1);
  for (uint64_t seq = 3000; seq < 3008; ++seq) {
    ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("other", one, Id(client_id, seq)))));
  }
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("other", one, Id(client_id, 5000)))));
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("n", one, Id(client_id, 10)))));
  ASSERT_TRUE(IsOk(RawAssign(stub.get(), AddRequest("n", one, Id(client_id, 10)))));
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(1));
}

TEST_F(ShardTest, DuplicateStreamedAssignIsAppliedOnce) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Filled(4096, 0.0f))));
  auto stub = RawStub(process_->address());
  const RequestId id = Id(RandomClientId(), 3);
  const Tensor ones = Filled(4096, 1.0f);
  for (int attempt = 0; attempt < 2; ++attempt) {
    grpc::ClientContext context;
    SetDeadline(&context);
    AssignResponse response;
    auto writer = stub->AssignStream(&context, &response);
    AssignStreamRequest message;
    AssignStreamHeader* header = message.mutable_header();
    header->set_name("v");
    header->set_op(UPDATE_ADD);
    header->set_dtype(DT_FLOAT);
    header->mutable_shape()->add_dims(4096);
    header->set_total_bytes(4096 * 4);
    *header->mutable_request_id() = id;
    ASSERT_TRUE(writer->Write(message));
    message.clear_header();
    message.set_content(std::string(ones.bytes()));
    ASSERT_TRUE(writer->Write(message));
    ASSERT_TRUE(writer->WritesDone());
    ASSERT_TRUE(IsOk(FromGrpcStatus(writer->Finish()))) << "attempt " << attempt;
  }
  EXPECT_EQ(Read("v"), ones);
}

// ---- Shard restarts.

TEST_F(ShardTest, OldIncarnationIsAbortedAsStaleHandleAfterRestart) {
  ASSERT_TRUE(IsOk(shard_->Create("x", Tensor::Scalar<int64_t>(0))));
  const uint64_t old_incarnation = shard_->info().incarnation;
  ASSERT_NE(old_incarnation, 0u);
  ASSERT_TRUE(IsOk(RestartShard(&process_)));
  PSD_ASSERT_OK_AND_ASSIGN(auto fresh, process_->Connect());
  ASSERT_NE(fresh->info().incarnation, old_incarnation);
  ASSERT_TRUE(IsOk(fresh->Create("x", Tensor::Scalar<int64_t>(0))));

  auto stub = RawStub(process_->address());
  AssignRequest request = AddRequest("x", Tensor::Scalar<int64_t>(1), Id(RandomClientId(), 1));
  request.set_shard_incarnation(old_incarnation);
  EXPECT_TRUE(
      IsError(RawAssign(stub.get(), request), absl::StatusCode::kAborted, {"stale handle"}));
  // Reads carry the incarnation too.
  ReadRequest read;
  read.set_name("x");
  read.set_shard_incarnation(old_incarnation);
  ReadResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  EXPECT_TRUE(IsError(FromGrpcStatus(stub->Read(&context, read, &response)),
                      absl::StatusCode::kAborted, {"stale handle"}));

  // The client connected before the restart gets the same answer for
  // every data op, sync and async, and applies nothing.
  EXPECT_TRUE(IsError(shard_->AssignAdd("x", Tensor::Scalar<int64_t>(1)),
                      absl::StatusCode::kAborted, {"stale handle"}));
  EXPECT_TRUE(IsError(shard_->CountUpTo("x", 10), absl::StatusCode::kAborted, {"stale handle"}));
  EXPECT_TRUE(IsError(shard_->Read("x"), absl::StatusCode::kAborted, {"stale handle"}));
  EXPECT_TRUE(IsError(shard_->AssignAddAsync("x", Tensor::Scalar<int64_t>(1)).get(),
                      absl::StatusCode::kAborted, {"stale handle"}));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor x, fresh->Read("x"));
  EXPECT_EQ(x, Tensor::Scalar<int64_t>(0));
}

// An op whose retries span a crash and restart ends in ABORTED "stale
// handle" (it reached the new shard) or UNAVAILABLE (it gave up first), and
// is never applied to the new shard.
TEST_F(ShardTest, RetriesAcrossARestartNeverApplyTwice) {
  ClientOptions patient;
  patient.max_attempts = 1000;
  patient.initial_backoff = absl::Milliseconds(10);
  patient.max_backoff = absl::Milliseconds(200);
  patient.retry_budget = absl::Seconds(60);
  PSD_ASSERT_OK_AND_ASSIGN(auto trainer, process_->Connect(patient));
  ASSERT_TRUE(IsOk(trainer->Create("x", Tensor::Scalar<int64_t>(0))));
  ASSERT_TRUE(IsOk(trainer->AssignAdd("x", Tensor::Scalar<int64_t>(1))));

  ShardProcessOptions options = process_->options();
  options.port = process_->port();
  ASSERT_TRUE(IsOk(process_->Kill()));
  // Started while the shard is down: it retries on UNAVAILABLE.
  auto sync_add = std::async(std::launch::async,
                             [&] { return trainer->AssignAdd("x", Tensor::Scalar<int64_t>(1)); });
  auto async_add = trainer->AssignAddAsync("x", Tensor::Scalar<int64_t>(1));
  auto async_count = trainer->CountUpToAsync("x", 100);
  absl::SleepFor(absl::Milliseconds(300));  // let some attempts fail; not asserted
  process_.reset();
  auto restarted = ShardProcess::Start(options);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  process_ = *std::move(restarted);
  PSD_ASSERT_OK_AND_ASSIGN(auto fresh, process_->Connect());
  ASSERT_TRUE(IsOk(fresh->Create("x", Tensor::Scalar<int64_t>(0))));

  auto stale_or_down = [](const absl::Status& s) {
    return s.code() == absl::StatusCode::kUnavailable ||
           (s.code() == absl::StatusCode::kAborted &&
            s.message().find("stale handle") != absl::string_view::npos);
  };
  const absl::Status sync_status = sync_add.get();
  EXPECT_TRUE(stale_or_down(sync_status)) << sync_status;
  const absl::Status async_status = async_add.get();
  EXPECT_TRUE(stale_or_down(async_status)) << async_status;
  const absl::Status count_status = async_count.get().status();
  EXPECT_TRUE(stale_or_down(count_status)) << count_status;
  PSD_ASSERT_OK_AND_ASSIGN(Tensor x, fresh->Read("x"));
  EXPECT_EQ(x, Tensor::Scalar<int64_t>(0)) << "nothing from the old handle applied";
}

// ---- Async ops.

constexpr int kInFlight = 64;

TEST_F(ShardTest, AsyncAssignAddWith64InFlightSumsExactly) {
  constexpr int kRounds = 100;
  ASSERT_TRUE(IsOk(shard_->Create("sum", Tensor::Scalar<int64_t>(0))));
  int failures = 0;
  absl::Status first_error;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::future<absl::Status>> pending;
    for (int i = 0; i < kInFlight; ++i) {
      pending.push_back(shard_->AssignAddAsync("sum", Tensor::Scalar<int64_t>(1)));
    }
    for (auto& f : pending) {
      absl::Status s = f.get();
      if (!s.ok() && failures++ == 0) first_error = s;
    }
  }
  EXPECT_EQ(failures, 0) << first_error;
  EXPECT_EQ(Read("sum"), Tensor::Scalar<int64_t>(kRounds * kInFlight));
}

TEST_F(ShardTest, AsyncGathersReadsAndScattersReturnTheRightValues) {
  constexpr int kRows = 100, kCols = 4;
  Tensor table(DT_FLOAT, TensorShape{kRows, kCols});
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) table.data<float>()[r * kCols + c] = r * 10.0f + c;
  }
  ASSERT_TRUE(IsOk(shard_->Create("table", table)));
  std::vector<std::future<absl::StatusOr<Tensor>>> gathers;
  for (int i = 0; i < kInFlight; ++i) {
    gathers.push_back(shard_->GatherAsync("table", Vec<int64_t>({2}, {i, kRows - 1 - i})));
  }
  auto read = shard_->ReadAsync("table");
  for (int i = 0; i < kInFlight; ++i) {
    auto rows = gathers[i].get();
    ASSERT_TRUE(IsOk(rows));
    std::vector<float> want;
    for (int r : {i, kRows - 1 - i}) {
      for (int c = 0; c < kCols; ++c) want.push_back(r * 10.0f + c);
    }
    EXPECT_EQ(*rows, Vec<float>({2, kCols}, want)) << "gather " << i;
  }
  auto whole = read.get();
  ASSERT_TRUE(IsOk(whole));
  EXPECT_EQ(*whole, table);

  // 64 scatter_adds in flight on overlapping rows.
  std::vector<std::future<absl::Status>> scatters;
  for (int i = 0; i < kInFlight; ++i) {
    scatters.push_back(shard_->ScatterAddAsync("table", Vec<int32_t>({2}, {0, i % 2}),
                                               Tensor::Scalar<float>(1.0f)));
  }
  for (auto& f : scatters) ASSERT_TRUE(IsOk(f.get()));
  PSD_ASSERT_OK_AND_ASSIGN(Tensor row0, shard_->Gather("table", Vec<int64_t>({1}, {0})));
  EXPECT_EQ(row0, Vec<float>({1, kCols}, {96, 97, 98, 99}));  // 64 + 32 adds to row 0
  PSD_ASSERT_OK_AND_ASSIGN(Tensor row1, shard_->Gather("table", Vec<int64_t>({1}, {1})));
  EXPECT_EQ(row1, Vec<float>({1, kCols}, {42, 43, 44, 45}));  // 32 adds to row 1

  EXPECT_TRUE(IsError(shard_->GatherAsync("table", Vec<int64_t>({1}, {kRows})).get(),
                      absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsError(shard_->ReadAsync("nope").get(), absl::StatusCode::kNotFound));
}

TEST_F(ShardTest, AsyncCountUpToHandsOutEachValueOnce) {
  ASSERT_TRUE(IsOk(shard_->Create("step", Tensor::Scalar<int64_t>(0))));
  std::vector<std::future<absl::StatusOr<int64_t>>> pending;
  for (int i = 0; i < kInFlight + 10; ++i)
    pending.push_back(shard_->CountUpToAsync("step", kInFlight));
  std::vector<int64_t> got;
  int out_of_range = 0;
  for (auto& f : pending) {
    auto old = f.get();
    if (old.ok()) {
      got.push_back(*old);
    } else {
      EXPECT_TRUE(IsError(old, absl::StatusCode::kOutOfRange));
      ++out_of_range;
    }
  }
  std::sort(got.begin(), got.end());
  ASSERT_EQ(got.size(), static_cast<size_t>(kInFlight));
  for (int i = 0; i < kInFlight; ++i) EXPECT_EQ(got[i], i);
  EXPECT_EQ(out_of_range, 10);
}

TEST_F(StreamTest, AsyncOpsOnBigValuesTakeTheStreamingPath) {
  constexpr int64_t kN = 60000;  // 240 KB, over the 64 KiB threshold
  ASSERT_TRUE(IsOk(streaming_->Create("big", Filled(kN, 0.0f))));
  std::vector<std::future<absl::Status>> adds;
  for (int i = 0; i < 8; ++i) adds.push_back(streaming_->AssignAddAsync("big", Filled(kN, 1.0f)));
  for (auto& f : adds) ASSERT_TRUE(IsOk(f.get()));
  auto value = streaming_->ReadAsync("big").get();
  ASSERT_TRUE(IsOk(value));
  EXPECT_EQ(*value, Filled(kN, 8.0f));
  ASSERT_TRUE(IsOk(streaming_->AssignAsync("big", Iota(kN, 5.0f)).get()));
  EXPECT_EQ(Read("big"), Iota(kN, 5.0f));
}

TEST_F(ShardTest, DestroyingAClientWaitsForItsAsyncOps) {
  ASSERT_TRUE(IsOk(shard_->Create("sum", Tensor::Scalar<int64_t>(0))));
  std::vector<std::future<absl::Status>> pending;
  {
    PSD_ASSERT_OK_AND_ASSIGN(auto c, process_->Connect());
    for (int i = 0; i < kInFlight; ++i) {
      pending.push_back(c->AssignAddAsync("sum", Tensor::Scalar<int64_t>(1)));
    }
  }
  for (auto& f : pending) EXPECT_TRUE(IsOk(f.get()));
  EXPECT_EQ(Read("sum"), Tensor::Scalar<int64_t>(kInFlight));
}

// Calls that wait (here fences waiting for another fence to lift) run on
// threads of the shard's own: however many of them wait, gRPC's threads
// stay free, and a read sent after them is answered before any of them.
TEST_F(ShardTest, CallsThatWaitDoNotHoldUpOtherCalls) {
  ASSERT_TRUE(IsOk(shard_->Create("n", Tensor::Scalar<int64_t>(7))));
  auto stub = RawStub(process_->address());
  auto fence = [&](uint64_t id, int64_t lease_ms) {
    FenceRequest request;
    request.set_fence_id(id);
    request.set_lease_ms(lease_ms);
    FenceResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    return FromGrpcStatus(stub->Fence(&context, request, &response));
  };
  ASSERT_TRUE(IsOk(fence(1, 60000)));
  constexpr int kWaiting = 6;  // more than gRPC has threads on a small machine
  std::atomic<int> started{0};
  std::atomic<int64_t> first_fence_answer_us{std::numeric_limits<int64_t>::max()};
  std::vector<std::thread> waiting;
  for (int i = 0; i < kWaiting; ++i) {
    waiting.emplace_back([&, i] {
      started.fetch_add(1);
      // Waits for fence 1 within its own lease (3 s), then is refused.
      (void)fence(100 + i, 3000);
      const int64_t now = absl::ToUnixMicros(absl::Now());
      int64_t first = first_fence_answer_us.load();
      while (now < first && !first_fence_answer_us.compare_exchange_weak(first, now)) {
      }
    });
  }
  while (started.load() < kWaiting) absl::SleepFor(absl::Milliseconds(5));
  absl::SleepFor(absl::Milliseconds(300));  // the fences are in the shard, waiting
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(7));
  const int64_t read_answer_us = absl::ToUnixMicros(absl::Now());
  for (auto& t : waiting) t.join();
  EXPECT_LT(read_answer_us, first_fence_answer_us.load())
      << "the read waited for a fence's call to end";
  UnfenceRequest lift;
  lift.set_fence_id(1);
  lift.set_discard(true);
  UnfenceResponse lifted;
  grpc::ClientContext context;
  EXPECT_TRUE(IsOk(FromGrpcStatus(stub->Unfence(&context, lift, &lifted))));
}

// ---- Batched stream.

// A client that writes messages without waiting for their replies: the
// shard reads the next message while the previous reply is on the wire,
// and every reply comes back in order: each message's read sees more adds
// than the one before it. (Two threads once shared the receive buffer
// here and corrupted the heap.)
TEST_F(ShardTest, ManyMessagesInFlightOnOneStreamAreAnsweredInOrder) {
  ASSERT_TRUE(IsOk(shard_->Create("n", Tensor::Scalar<int64_t>(0))));
  auto stub = RawStub(process_->address());
  constexpr int kMessages = 3000;
  constexpr int kStreams = 3;
  std::vector<std::thread> streams;
  std::atomic<int> bad{0};
  for (int s = 0; s < kStreams; ++s) {
    streams.emplace_back([&, s] {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
      auto stream = stub->Batch(&context);
      std::thread writer([&] {
        BatchRequest message;
        message.add_ops()->mutable_read()->set_name("n");
        AssignRequest* add = message.add_ops()->mutable_assign();
        add->set_name("n");
        add->set_op(UPDATE_ADD);
        TensorToProto(Tensor::Scalar<int64_t>(1), add->mutable_value());
        for (int i = 0; i < kMessages && stream->Write(message); ++i) {
        }
        stream->WritesDone();
      });
      int64_t last = -1;
      BatchResponse reply;
      int replies = 0;
      while (stream->Read(&reply)) {
        ++replies;
        if (reply.results_size() != 2 || reply.results(0).code() != 0 ||
            reply.results(1).code() != 0) {
          bad.fetch_add(1);
          continue;
        }
        // Other streams add too: only increasing is known here.
        auto value = TensorFromProto(reply.results(0).read().value(), "n");
        if (!value.ok() || value->data<int64_t>()[0] <= last) bad.fetch_add(1);
        if (value.ok()) last = value->data<int64_t>()[0];
      }
      writer.join();
      if (!stream->Finish().ok() || replies != kMessages) bad.fetch_add(1);
      (void)s;
    });
  }
  for (auto& t : streams) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(kStreams * kMessages));
}

TEST_F(ShardTest, BatchedAssignAddsSumExactly) {
  constexpr int kThreads = 4, kOpsPerThread = 2500;
  ASSERT_TRUE(IsOk(shard_->Create("sum", Tensor::Scalar<int64_t>(0))));
  ASSERT_TRUE(IsOk(shard_->Create("table", Tensor(DT_INT32, TensorShape{8, 2}))));
  PSD_ASSERT_OK_AND_ASSIGN(auto batch, shard_->OpenBatch());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::future<absl::Status>> pending;
      for (int i = 0; i < kOpsPerThread; ++i) {
        pending.push_back(batch->AssignAdd("sum", Tensor::Scalar<int64_t>(1)));
        if (i % 10 == 0) {
          pending.push_back(
              batch->ScatterAdd("table", Vec<int32_t>({2}, {t, t}), Tensor::Scalar<int32_t>(1)));
        }
      }
      for (auto& f : pending) {
        if (!f.get().ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  auto sum = batch->Read("sum");
  auto old = batch->CountUpTo("sum", int64_t{1} << 40);
  ASSERT_TRUE(IsOk(batch->Close()));
  EXPECT_EQ(failures.load(), 0);
  ASSERT_TRUE(IsOk(sum.get()));
  auto got = old.get();
  ASSERT_TRUE(IsOk(got));
  EXPECT_EQ(*got, kThreads * kOpsPerThread);
  EXPECT_EQ(Read("sum"), Tensor::Scalar<int64_t>(kThreads * kOpsPerThread + 1));
  const int32_t per_row = 2 * (kOpsPerThread / 10);
  EXPECT_EQ(Read("table"),
            Vec<int32_t>({8, 2}, {per_row, per_row, per_row, per_row, per_row, per_row, per_row,
                                  per_row, 0, 0, 0, 0, 0, 0, 0, 0}));
}

TEST_F(ShardTest, BatchedBadOpFailsAloneAndOpsApplyInOrder) {
  ASSERT_TRUE(IsOk(shard_->Create("x", Tensor::Scalar<int64_t>(0))));
  ASSERT_TRUE(IsOk(shard_->Create("emb", Vec<float>({3, 2}, {0, 1, 2, 3, 4, 5}))));
  ASSERT_TRUE(IsOk(shard_->Create("step", Tensor::Scalar<int32_t>(9))));
  PSD_ASSERT_OK_AND_ASSIGN(auto batch, shard_->OpenBatch());
  auto add1 = batch->AssignAdd("x", Tensor::Scalar<int64_t>(1));
  auto bad_index = batch->ScatterAdd("emb", Vec<int64_t>({2}, {0, 7}), Tensor::Scalar<float>(1));
  auto unknown = batch->AssignAdd("nope", Tensor::Scalar<int64_t>(1));
  auto bad_dtype = batch->AssignAdd("x", Tensor::Scalar<float>(1));
  auto read1 = batch->Read("x");
  auto gather_bad = batch->Gather("emb", Vec<int32_t>({1}, {-1}));
  auto gather = batch->Gather("emb", Vec<int32_t>({2}, {2, 0}));
  auto count = batch->CountUpTo("step", 10);
  auto count_limit = batch->CountUpTo("step", 10);
  auto assign = batch->Assign("x", Tensor::Scalar<int64_t>(40));
  auto add2 = batch->AssignAdd("x", Tensor::Scalar<int64_t>(2));
  auto read2 = batch->Read("x");
  auto scatter = batch->ScatterUpdate("emb", Vec<int64_t>({1}, {1}), Vec<float>({1, 2}, {8, 9}));
  auto read_emb = batch->Read("emb");
  batch->Flush();

  EXPECT_TRUE(IsOk(add1.get()));
  EXPECT_TRUE(IsError(bad_index.get(), absl::StatusCode::kInvalidArgument, {"7"}));
  EXPECT_TRUE(IsError(unknown.get(), absl::StatusCode::kNotFound, {"nope"}));
  EXPECT_TRUE(IsError(bad_dtype.get(), absl::StatusCode::kInvalidArgument));
  auto x1 = read1.get();
  ASSERT_TRUE(IsOk(x1));
  EXPECT_EQ(*x1, Tensor::Scalar<int64_t>(1));
  EXPECT_TRUE(IsError(gather_bad.get(), absl::StatusCode::kInvalidArgument));
  auto rows = gather.get();
  ASSERT_TRUE(IsOk(rows));
  EXPECT_EQ(*rows, Vec<float>({2, 2}, {4, 5, 0, 1}));
  auto c = count.get();
  ASSERT_TRUE(IsOk(c));
  EXPECT_EQ(*c, 9);
  EXPECT_TRUE(IsError(count_limit.get(), absl::StatusCode::kOutOfRange, {"Reached limit of 10"}));
  EXPECT_TRUE(IsOk(assign.get()));
  EXPECT_TRUE(IsOk(add2.get()));
  auto x2 = read2.get();
  ASSERT_TRUE(IsOk(x2));
  EXPECT_EQ(*x2, Tensor::Scalar<int64_t>(42));
  EXPECT_TRUE(IsOk(scatter.get()));
  auto emb = read_emb.get();
  ASSERT_TRUE(IsOk(emb));
  EXPECT_EQ(*emb, Vec<float>({3, 2}, {0, 1, 8, 9, 4, 5})) << "the failed scatter changed nothing";
  ASSERT_TRUE(IsOk(batch->Close()));
  EXPECT_TRUE(IsError(batch->AssignAdd("x", Tensor::Scalar<int64_t>(1)).get(),
                      absl::StatusCode::kFailedPrecondition));
}

TEST_F(ShardTest, BatchedReadsSeeEarlierWritesOfTheSameStream) {
  ASSERT_TRUE(IsOk(shard_->Create("v", Tensor::Scalar<int64_t>(-1))));
  client::BatchOptions options;
  options.ops_per_message = 7;  // messages break between a write and its read
  options.max_messages_in_flight = 3;
  PSD_ASSERT_OK_AND_ASSIGN(auto batch, shard_->OpenBatch(options));
  std::vector<std::future<absl::StatusOr<Tensor>>> reads;
  std::vector<std::future<absl::Status>> writes;
  for (int64_t k = 0; k < 500; ++k) {
    writes.push_back(batch->Assign("v", Tensor::Scalar<int64_t>(k)));
    reads.push_back(batch->Read("v"));
  }
  for (int64_t k = 0; k < 500; ++k) {
    ASSERT_TRUE(IsOk(writes[k].get()));
    auto value = reads[k].get();
    ASSERT_TRUE(IsOk(value));
    ASSERT_EQ(*value, Tensor::Scalar<int64_t>(k));
  }
  EXPECT_TRUE(IsOk(batch->Close()));
}

// Each open BatchStream numbers its ops under a client id of its own, but
// streams opened one after another (one per training step) reuse ids, so
// they never fill the shard's table of 1024 exactly-once clients.
TEST_F(ShardTest, SequentialBatchStreamsDoNotExhaustTheShardsClientTable) {
  constexpr int kStreams = 1200;  // more than the shard's 1024 client slots
  ASSERT_TRUE(IsOk(shard_->Create("n", Tensor::Scalar<int64_t>(0))));
  for (int i = 0; i < kStreams; ++i) {
    PSD_ASSERT_OK_AND_ASSIGN(auto batch, shard_->OpenBatch());
    ASSERT_TRUE(IsOk(batch->AssignAdd("n", Tensor::Scalar<int64_t>(1)).get())) << "stream " << i;
    ASSERT_TRUE(IsOk(batch->Close()));
  }
  EXPECT_EQ(Read("n"), Tensor::Scalar<int64_t>(kStreams));
}

TEST_F(ShardTest, BatchedOpsOnADeadShardFailUnavailable) {
  ASSERT_TRUE(IsOk(shard_->Create("x", Tensor::Scalar<int64_t>(0))));
  PSD_ASSERT_OK_AND_ASSIGN(auto batch, shard_->OpenBatch());
  ASSERT_TRUE(IsOk(batch->AssignAdd("x", Tensor::Scalar<int64_t>(1)).get()));
  ASSERT_TRUE(IsOk(process_->Kill()));
  skip_alive_check_ = true;
  // However far the stream got, every op completes, with an error.
  auto add = batch->AssignAdd("x", Tensor::Scalar<int64_t>(1));
  EXPECT_TRUE(IsError(add.get(), absl::StatusCode::kUnavailable));
  EXPECT_TRUE(IsError(batch->Read("x").get(), absl::StatusCode::kUnavailable));
  EXPECT_TRUE(IsError(batch->Close(), absl::StatusCode::kUnavailable));
  // A stream opened while the shard is down fails its ops the same way.
  PSD_ASSERT_OK_AND_ASSIGN(auto later, shard_->OpenBatch());
  EXPECT_TRUE(IsError(later->Read("x").get(), absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace integration
}  // namespace psd
