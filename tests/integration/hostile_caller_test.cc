// What the world sends, tried against real processes (a coordinator and two
// shards on loopback) over raw gRPC, with no psd client in between: gRPC's
// own health and reflection services, every psd method with hostile
// payloads (garbage bytes, and messages whose every field holds an extreme
// value) and with every role's token, idle and half-open connections, and
// streams cut off half-way. After each sweep every process must still
// answer: a status for every call, nothing crashed, nothing hung, nothing
// leaked (descriptors, in-flight calls, accounted memory).
//
// Bounded: a fixed set of payloads per method, a fixed number of
// connections and streams, each call with a deadline.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../common/raw_connection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "cluster_process.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/client.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/options.pb.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "psd/tokens.h"
#include "psd/wire.h"
#include "shard_process.h"
#include "test_util.h"

namespace psd {
namespace integration {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

struct RawResult {
  grpc::Status status;
  std::string response;
};

// One message to `method` ("/pkg.Service/Method") and a half-close; for a
// streaming method that is a one-message stream. Waits for the status.
// `authorization`, when set, is sent as the call's "authorization" header.
RawResult RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                  const std::string& request, absl::Duration timeout = absl::Seconds(60),
                  const std::string& authorization = "") {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  grpc::Slice slice(request);
  grpc::ByteBuffer send(&slice, 1);
  grpc::ByteBuffer receive;
  RawResult result;
  absl::Notification done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &send, &receive,
                 [&](grpc::Status status) {
                   result.status = std::move(status);
                   done.Notify();
                 });
  done.WaitForNotification();
  std::vector<grpc::Slice> slices;
  if (result.status.ok() && receive.Dump(&slices).ok()) {
    for (const auto& s : slices) result.response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return result;
}

// grpc.health.v1.HealthCheckRequest{service: ""} is the empty message.
RawResult HealthCheck(const std::shared_ptr<grpc::Channel>& channel) {
  return RawCall(channel, "/grpc.health.v1.Health/Check", "", absl::Seconds(30));
}

// Sets every field of `message` to an extreme of its type, nested messages
// to `depth`. `variant` picks the extreme: 0 largest, 1 smallest or
// negative, 2 odd (NaN, long and non-UTF-8 strings, many repeats).
void FillHostile(Message* message, int variant, int depth) {
  const Descriptor* d = message->GetDescriptor();
  const Reflection* r = message->GetReflection();
  const std::string long_string(variant == 2 ? 70000 : 300, variant == 2 ? '\xff' : 'a');
  const std::string path_string = variant == 1 ? std::string("../../..\0x", 10) : long_string;
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const int repeats = f->is_repeated() ? (variant == 2 ? 64 : 3) : 1;
    for (int k = 0; k < repeats; ++k) {
      const bool rep = f->is_repeated();
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32: {
          int32_t v = variant == 0 ? std::numeric_limits<int32_t>::max()
                      : variant == 1 ? std::numeric_limits<int32_t>::min()
                                     : -1;
          rep ? r->AddInt32(message, f, v) : r->SetInt32(message, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_INT64: {
          int64_t v = variant == 0 ? std::numeric_limits<int64_t>::max()
                      : variant == 1 ? std::numeric_limits<int64_t>::min()
                                     : (int64_t{1} << 40) + k;
          rep ? r->AddInt64(message, f, v) : r->SetInt64(message, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_UINT32: {
          uint32_t v = variant == 1 ? 0 : std::numeric_limits<uint32_t>::max();
          rep ? r->AddUInt32(message, f, v) : r->SetUInt32(message, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_UINT64: {
          uint64_t v = variant == 1 ? 1 : std::numeric_limits<uint64_t>::max() - k;
          rep ? r->AddUInt64(message, f, v) : r->SetUInt64(message, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_DOUBLE: {
          double v = variant == 0 ? std::numeric_limits<double>::max()
                     : variant == 1 ? -std::numeric_limits<double>::infinity()
                                    : std::nan("");
          rep ? r->AddDouble(message, f, v) : r->SetDouble(message, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_FLOAT: {
          float v = variant == 0 ? std::numeric_limits<float>::max()
                    : variant == 1 ? -std::numeric_limits<float>::infinity()
                                   : std::nanf("");
          rep ? r->AddFloat(message, f, v) : r->SetFloat(message, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_BOOL:
          rep ? r->AddBool(message, f, variant != 1) : r->SetBool(message, f, variant != 1);
          break;
        case FieldDescriptor::CPPTYPE_ENUM: {
          // Values the enum does not define as well as its last one.
          const int v = variant == 0 ? f->enum_type()->value(f->enum_type()->value_count() - 1)->number()
                        : variant == 1 ? -7
                                       : 1000;
          if (f->file()->syntax() != google::protobuf::FileDescriptor::SYNTAX_PROTO3) {
            const auto* value = f->enum_type()->FindValueByNumber(v);
            if (value == nullptr) value = f->enum_type()->value(0);
            rep ? r->AddEnum(message, f, value) : r->SetEnum(message, f, value);
          } else {
            rep ? r->AddEnumValue(message, f, v) : r->SetEnumValue(message, f, v);
          }
          break;
        }
        case FieldDescriptor::CPPTYPE_STRING: {
          const std::string& v = (f->name().find("name") != std::string::npos ||
                                  f->name().find("prefix") != std::string::npos)
                                     ? path_string
                                     : long_string;
          rep ? r->AddString(message, f, v) : r->SetString(message, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_MESSAGE:
          if (depth > 0) {
            Message* sub = rep ? r->AddMessage(message, f) : r->MutableMessage(message, f);
            FillHostile(sub, variant, depth - 1);
          }
          break;
      }
    }
  }
}

// What the sweeps send to `method`: nothing, random bytes, a length past
// the end, and each hostile fill of its request type.
std::vector<std::string> HostilePayloads(const google::protobuf::MethodDescriptor* method,
                                         google::protobuf::DynamicMessageFactory* factory,
                                         std::mt19937* random) {
  std::vector<std::string> payloads;
  payloads.push_back("");
  std::string garbage(257, '\0');
  for (char& c : garbage) c = static_cast<char>((*random)());
  payloads.push_back(garbage);
  payloads.push_back(std::string("\x0a\xff\xff\xff\xff\x0f", 6));  // length past the end
  for (int variant = 0; variant < 3; ++variant) {
    std::unique_ptr<Message> request(factory->GetPrototype(method->input_type())->New());
    FillHostile(request.get(), variant, /*depth=*/4);
    payloads.push_back(request->SerializeAsString());
  }
  return payloads;
}

class HostileCallerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TestClusterOptions options;
    options.num_shards = 2;
    auto started = TestCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = started->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  static std::shared_ptr<grpc::Channel> Dial(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  }
  std::vector<std::pair<std::string, std::shared_ptr<grpc::Channel>>> Processes() {
    return {{"coordinator", Dial(cluster_->coordinator_address())},
            {"shard 0", Dial(cluster_->shard_address(0))},
            {"shard 1", Dial(cluster_->shard_address(1))}};
  }
  // Every process answers a health check with SERVING.
  void ExpectAllServing(const std::string& after) {
    for (auto& [who, channel] : Processes()) {
      RawResult health = HealthCheck(channel);
      EXPECT_TRUE(health.status.ok()) << who << " after " << after << ": "
                                      << health.status.error_message();
      // HealthCheckResponse{status: SERVING (1)}: field 1, varint 1.
      EXPECT_EQ(health.response, std::string("\x08\x01", 2)) << who << " after " << after;
    }
  }

  static TestCluster* cluster_;
};

TestCluster* HostileCallerTest::cluster_ = nullptr;

TEST_F(HostileCallerTest, StandardHealthCheckAnswersEveryProcess) {
  for (int round = 0; round < 3; ++round) ExpectAllServing("a health check");
  // A named service the server does not know: NOT_FOUND, not a crash.
  for (auto& [who, channel] : Processes()) {
    // HealthCheckRequest{service: "no.such.Service"}
    const std::string request = std::string("\x0a\x0f", 2) + "no.such.Service";
    RawResult r = RawCall(channel, "/grpc.health.v1.Health/Check", request);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::NOT_FOUND) << who;
  }
  ExpectAllServing("health checks of unknown services");
}

TEST_F(HostileCallerTest, ReflectionListsServicesAndSurvivesGarbage) {
  for (auto& [who, channel] : Processes()) {
    // ServerReflectionRequest{list_services: ""}: field 7, length 0.
    RawResult r = RawCall(channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                          std::string("\x3a\x00", 2));
    ASSERT_TRUE(r.status.ok()) << who << ": " << r.status.error_message();
    EXPECT_NE(r.response.find("psd."), std::string::npos) << who << " lists no psd service";
    // A truncated message, and a symbol that does not exist.
    RawCall(channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            std::string("\x22\xff\xff\xff\x0f", 5));
    RawCall(channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            std::string("\x22\x03", 2) + "x.y");
  }
  ExpectAllServing("reflection calls");
}

TEST_F(HostileCallerTest, UnknownMethodsAreUnimplemented) {
  for (auto& [who, channel] : Processes()) {
    for (int i = 0; i < 300; ++i) {  // more than the metrics keep series for
      RawResult r = RawCall(channel, absl::StrCat("/made.up.Service", i, "/Method"), "\x01\x02");
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << who;
    }
  }
  ExpectAllServing("unknown methods");
}

// Every psd method but the ones that stop a process on purpose, with
// garbage and with each hostile fill of its request type. Every call gets a
// status within its deadline, and every process still serves.
TEST_F(HostileCallerTest, EveryMethodSurvivesHostilePayloads) {
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  google::protobuf::DynamicMessageFactory factory(pool);
  std::mt19937 random(20261206);
  struct Target {
    std::string who;
    std::string address;
    const google::protobuf::ServiceDescriptor* service;
  };
  const std::vector<Target> targets = {
      {"coordinator", cluster_->coordinator_address(), pool->FindServiceByName("psd.Coordinator")},
      {"shard 0", cluster_->shard_address(0), pool->FindServiceByName("psd.Shard")},
      // The shards' own service (moves and backups; FollowMove is served raw).
      {"shard 0", cluster_->shard_address(0), pool->FindServiceByName("psd.ShardMove")},
  };
  int calls = 0;
  for (const Target& target : targets) {
    ASSERT_NE(target.service, nullptr);
    auto channel = Dial(target.address);
    for (int m = 0; m < target.service->method_count(); ++m) {
      const google::protobuf::MethodDescriptor* method = target.service->method(m);
      if (method->name() == "Shutdown") continue;  // stops the process, as asked
      const std::string path = absl::StrCat("/", target.service->full_name(), "/", method->name());
      for (const std::string& payload : HostilePayloads(method, &factory, &random)) {
        RawResult r = RawCall(channel, path, payload);
        ++calls;
        EXPECT_NE(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
            << target.who << " " << path << " hung on a payload of " << payload.size() << " bytes";
        EXPECT_NE(r.status.error_code(), grpc::StatusCode::UNAVAILABLE)
            << target.who << " " << path << ": " << r.status.error_message();
      }
      RawResult health = HealthCheck(channel);
      ASSERT_TRUE(health.status.ok()) << target.who << " stopped answering after " << path << ": "
                                      << health.status.error_message();
    }
  }
  EXPECT_GT(calls, 100);
  ExpectAllServing("the hostile sweep");
}

// ---------------------------------------------------------------------------
// Helpers for the connection and stream tests.

// Open descriptors of process `pid` (-1 if /proc cannot say).
int CountFds(pid_t pid) {
  std::error_code error;
  std::filesystem::directory_iterator it(absl::StrCat("/proc/", pid, "/fd"), error);
  if (error) return -1;
  int n = 0;
  for (; it != std::filesystem::directory_iterator(); it.increment(error)) {
    if (error) return -1;
    ++n;
  }
  return n;
}

// Polls `condition` every 100 ms until it holds or `limit` has passed; its
// last value. Bounds the wait for asynchronous cleanup (a closed connection,
// a reactor finishing) without asserting how long it takes.
template <typename Condition>
bool Eventually(Condition condition, absl::Duration limit = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + limit;
  while (!condition()) {
    if (absl::Now() > deadline) return condition();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return true;
}

// HTTP/2 by hand (RFC 7540, with HPACK literals of RFC 7541): just enough
// to open gRPC calls on a raw connection and leave them half done.
namespace h2 {

constexpr uint8_t kData = 0;
constexpr uint8_t kHeaders = 1;
constexpr uint8_t kSettings = 4;
constexpr uint8_t kEndStream = 1;
constexpr uint8_t kAck = 1;
constexpr uint8_t kEndHeaders = 4;
const std::string kMagic = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
  const uint32_t n = static_cast<uint32_t>(payload.size());  // < 16 KiB: the default frame limit
  std::string frame;
  frame.push_back(static_cast<char>((n >> 16) & 0xff));
  frame.push_back(static_cast<char>((n >> 8) & 0xff));
  frame.push_back(static_cast<char>(n & 0xff));
  frame.push_back(static_cast<char>(type));
  frame.push_back(static_cast<char>(flags));
  for (int shift = 24; shift >= 0; shift -= 8) {
    frame.push_back(static_cast<char>((stream >> shift) & (shift == 24 ? 0x7f : 0xff)));
  }
  return frame + payload;
}

// The client's side of the connection preface (the magic and empty
// SETTINGS) and the acknowledgement of the server's SETTINGS.
std::string Preface() {
  return kMagic + Frame(kSettings, 0, 0, "") + Frame(kSettings, kAck, 0, "");
}

// A literal header field without indexing, new name; both under 127 bytes.
std::string Literal(const std::string& name, const std::string& value) {
  std::string field(1, '\0');
  field.push_back(static_cast<char>(name.size()));
  field += name;
  field.push_back(static_cast<char>(value.size()));
  field += value;
  return field;
}

// The HEADERS frame that opens a gRPC call of `path` on `stream`.
std::string Headers(uint32_t stream, const std::string& path) {
  const std::string block = Literal(":method", "POST") + Literal(":scheme", "http") +
                            Literal(":path", path) + Literal(":authority", "127.0.0.1") +
                            Literal("content-type", "application/grpc") + Literal("te", "trailers");
  return Frame(kHeaders, kEndHeaders, stream, block);
}

// A DATA frame holding gRPC's 5-byte message prefix, announcing `announced`
// bytes, and then `bytes` (all of the message, or only its start).
std::string Message(uint32_t stream, const std::string& bytes, uint32_t announced,
                    bool end_stream) {
  std::string payload(1, '\0');  // not compressed
  for (int shift = 24; shift >= 0; shift -= 8) {
    payload.push_back(static_cast<char>((announced >> shift) & 0xff));
  }
  payload += bytes;
  return Frame(kData, end_stream ? kEndStream : 0, stream, payload);
}

}  // namespace h2

// A normal trainer's work through a session: declare `name` ([8] floats
// over two parts), initialize it, add ones, read them back.
absl::Status TrainerOp(const std::string& coordinator, const std::string& name,
                       const ChannelSecurity& security = {}) {
  client::SessionOptions options;
  options.coordinator_retry_budget = absl::Seconds(60);
  options.shard.security = security;
  auto session = client::Session::Open(coordinator, options);
  if (!session.ok()) return session.status();
  client::GetVariableOptions declaration;
  declaration.shape = TensorShape({8});
  declaration.partitioner = client::partitioners::FixedSize(2);
  declaration.initializer = client::init::Zeros();
  declaration.initialize = true;
  auto variable = (*session)->GetVariable(name, declaration);
  if (!variable.ok()) return variable.status();
  auto ones = Tensor::FromVector<float>(TensorShape({8}), std::vector<float>(8, 1.0f));
  if (!ones.ok()) return ones.status();
  if (absl::Status s = variable->AssignAdd(*ones); !s.ok()) return s;
  auto value = variable->Read();
  if (!value.ok()) return value.status();
  for (int64_t i = 0; i < 8; ++i) {
    if (value->data<float>()[i] != 1.0f) {
      return absl::InternalError(absl::StrCat(name, "[", i, "] is ", value->data<float>()[i]));
    }
  }
  return absl::OkStatus();
}

// The shard sweep from several callers at once, each with its own random
// bytes and its own order of methods, so that hostile fences, restores,
// saves and writes meet in every order. Every call ends, and every process
// still serves and still does a trainer's work.
TEST_F(HostileCallerTest, ConcurrentSweepsOfTheShard) {
  constexpr int kCallers = 6;
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName("psd.Shard");
  ASSERT_NE(service, nullptr);
  std::vector<std::string> failures[kCallers];
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      google::protobuf::DynamicMessageFactory factory(pool);
      std::mt19937 random(1000 + c);
      auto channel = Dial(cluster_->shard_address(0));
      std::vector<int> order(service->method_count());
      for (int m = 0; m < service->method_count(); ++m) order[m] = m;
      std::shuffle(order.begin(), order.end(), random);
      for (int m : order) {
        const google::protobuf::MethodDescriptor* method = service->method(m);
        const std::string path = absl::StrCat("/psd.Shard/", method->name());
        for (const std::string& payload : HostilePayloads(method, &factory, &random)) {
          // The sequential sweep sends the few huge fills (a Batch's
          // nested repeats come to hundreds of MB); six at once would only
          // measure this machine's memory.
          if (payload.size() > (16u << 20)) continue;
          RawResult r = RawCall(channel, path, payload);
          if (r.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
              r.status.error_code() == grpc::StatusCode::UNAVAILABLE) {
            failures[c].push_back(absl::StrCat(path, " (", payload.size(), " bytes): code ",
                                               r.status.error_code(), " ",
                                               r.status.error_message()));
          }
        }
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) {
    for (const std::string& failure : failures[c]) {
      ADD_FAILURE() << "caller " << c << ": " << failure;
    }
  }
  ExpectAllServing("concurrent sweeps");
  absl::Status work = TrainerOp(cluster_->coordinator_address(), "concurrent/after");
  EXPECT_TRUE(work.ok()) << work;
}

// Many connections to the gRPC ports of the coordinator and of a shard that
// send nothing, part of the HTTP/2 preface, or a preface and a call's
// headers (and perhaps the start of its first message) and then stall.
// While they are open a trainer's work still succeeds; once they close, it
// does again, and both processes are back to about the descriptors they had.
TEST_F(HostileCallerTest, IdleAndStalledConnectionsStarveNoOne) {
  constexpr int kConnections = 200;  // per process
  struct Target {
    std::string who;
    ChildProcess* process;
    std::string stream_path;  // a call left open
    std::string message_path;  // a call left in the middle of its first message
  };
  const std::vector<Target> targets = {
      {"coordinator", cluster_->coordinator(), "/psd.Coordinator/DeclareVariables",
       "/psd.Coordinator/LookupVariable"},
      {"shard 0", cluster_->shard(0), "/psd.Shard/AssignStream", "/psd.Shard/Batch"},
  };
  std::vector<int> before;
  for (const Target& target : targets) {
    before.push_back(CountFds(target.process->pid()));
    ASSERT_GT(before.back(), 0) << target.who;
  }
  std::vector<std::unique_ptr<testing_net::RawConnection>> connections;
  for (const Target& target : targets) {
    for (int i = 0; i < kConnections; ++i) {
      auto connection = std::make_unique<testing_net::RawConnection>(target.process->port());
      ASSERT_TRUE(connection->connected()) << target.who << " connection " << i;
      switch (i % 4) {
        case 0:  // nothing at all
          break;
        case 1:  // part of the preface
          connection->Send(h2::kMagic.substr(0, 1 + i % (h2::kMagic.size() - 1)));
          break;
        case 2:  // a streaming call's headers; no message, no end
          connection->Send(h2::Preface() + h2::Headers(1, target.stream_path));
          break;
        case 3:  // a message announced as 1 MiB, 100 bytes of it sent
          connection->Send(h2::Preface() + h2::Headers(1, target.message_path) +
                           h2::Message(1, std::string(100, '\x0a'), 1 << 20, false));
          break;
      }
      connections.push_back(std::move(connection));
    }
  }
  // Every connection reached its server (which holds a descriptor for it).
  for (size_t t = 0; t < targets.size(); ++t) {
    EXPECT_TRUE(Eventually([&] {
      return CountFds(targets[t].process->pid()) >= before[t] + kConnections * 9 / 10;
    })) << targets[t].who << " holds " << CountFds(targets[t].process->pid())
        << " descriptors, " << before[t] << " before " << kConnections << " connections";
  }
  absl::Status during = TrainerOp(cluster_->coordinator_address(), "stalled/during");
  EXPECT_TRUE(during.ok()) << during;
  ExpectAllServing("idle and stalled connections");

  connections.clear();
  for (size_t t = 0; t < targets.size(); ++t) {
    EXPECT_TRUE(Eventually([&] { return CountFds(targets[t].process->pid()) <= before[t] + 16; }))
        << targets[t].who << " holds " << CountFds(targets[t].process->pid())
        << " descriptors after the connections closed, " << before[t] << " before";
  }
  absl::Status after = TrainerOp(cluster_->coordinator_address(), "stalled/after");
  EXPECT_TRUE(after.ok()) << after;
  ExpectAllServing("idle and stalled connections closed");
}

// ---------------------------------------------------------------------------
// Every rpc with every role: a TLS cluster whose token file holds one token
// per role (scripts/make-test-certs.sh).

// Whether a token of role `held` may call `method`, as proto/psd/options.proto
// defines it: the rpc's (psd.role), admin for a trainer rpc, or one of its
// (psd.also_role). Written out here rather than taken from the server, so
// that the sweep checks the server's enforcement against the definition.
bool RoleMayCall(Role held, const google::protobuf::MethodDescriptor* method) {
  const google::protobuf::MethodOptions& options = method->options();
  const Role required = options.GetExtension(psd::role);
  if (held == ROLE_UNSPECIFIED || required == ROLE_UNSPECIFIED) return false;
  if (held == required || (held == ROLE_ADMIN && required == ROLE_TRAINER)) return true;
  for (int i = 0; i < options.ExtensionSize(psd::also_role); ++i) {
    if (options.GetExtension(psd::also_role, i) == held) return true;
  }
  return false;
}

// The services a process serves, as its (public) reflection lists them.
std::vector<std::string> ListServices(const std::shared_ptr<grpc::Channel>& channel) {
  // ServerReflectionRequest{list_services: ""}.
  RawResult r = RawCall(channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                        std::string("\x3a\x00", 2));
  std::vector<std::string> services;
  google::protobuf::UnknownFieldSet response;
  if (!r.status.ok() || !response.ParseFromString(r.response)) return services;
  // ServerReflectionResponse.list_services_response (6): ListServiceResponse
  // { repeated ServiceResponse service = 1 { string name = 1 } }.
  for (int i = 0; i < response.field_count(); ++i) {
    if (response.field(i).number() != 6 ||
        response.field(i).type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      continue;
    }
    google::protobuf::UnknownFieldSet list;
    if (!list.ParseFromString(response.field(i).length_delimited())) continue;
    for (int j = 0; j < list.field_count(); ++j) {
      if (list.field(j).number() != 1 ||
          list.field(j).type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
        continue;
      }
      google::protobuf::UnknownFieldSet service;
      if (!service.ParseFromString(list.field(j).length_delimited())) continue;
      for (int k = 0; k < service.field_count(); ++k) {
        if (service.field(k).number() == 1 &&
            service.field(k).type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
          services.push_back(service.field(k).length_delimited());
        }
      }
    }
  }
  return services;
}

// The rpcs that stop a process when their role calls them. The sweep checks
// that every other role is refused; HostileRoleTest.StopRpcsStopOnlyForTheirRoles
// runs them, last, on purpose.
bool StopsAProcess(const std::string& path) {
  return path == "/psd.Coordinator/Shutdown" || path == "/psd.ShardControl/Stop";
}

// Who calls: no token, tokens the server does not hold (well-formed or not),
// and one token per role.
struct Caller {
  std::string name;
  Role role = ROLE_UNSPECIFIED;  // the token's, when the server holds it
  std::string authorization;     // the "authorization" header; empty: none
};

// A coordinator and two shards serving TLS with the token file `tokens`
// (trainer, admin and node), each per test.
class HostileRoleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("psd_hostile_role.");
    ASSERT_FALSE(dir_.empty());
    const std::string command = absl::StrCat(PSD_MAKE_TEST_CERTS, " ", dir_, " >/dev/null");
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
    std::filesystem::create_directories(dir_ + "/ckpt");
    auto coordinator = ChildProcess::Start(
        Flags({PSD_BINARY, "--log-level", "warn", "coordinator", "--listen", "127.0.0.1:0",
               "--heartbeat-interval", "0.2", "--state-dir", dir_ + "/state", "--checkpoint-dir",
               dir_ + "/ckpt", "--port-file", dir_ + "/coordinator.port"}),
        dir_ + "/coordinator.port");
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    for (int k = 0; k < 2; ++k) {
      const std::string port_file = absl::StrCat(dir_, "/shard-", k, ".port");
      auto shard = ChildProcess::Start(
          Flags({PSD_BINARY, "--log-level", "warn", "shard", "--id", std::to_string(k), "--listen",
                 "127.0.0.1:0", "--port-file", port_file, "--coordinator", Address(coordinator_)}),
          port_file);
      ASSERT_TRUE(shard.ok()) << shard.status();
      shards_.push_back(*std::move(shard));
    }
    callers_ = {{"no token", ROLE_UNSPECIFIED, ""},
                {"an unknown token", ROLE_UNSPECIFIED, "Bearer not-a-token-the-server-holds"},
                {"a malformed header", ROLE_UNSPECIFIED, "Basic dHJhaW5lcjp4"}};
    for (const auto& [name, role] : std::vector<std::pair<std::string, Role>>{
             {"trainer", ROLE_TRAINER}, {"admin", ROLE_ADMIN}, {"node", ROLE_NODE}}) {
      auto token = LoadClientToken(dir_ + "/" + name + ".token", "");
      ASSERT_TRUE(token.ok()) << token.status();
      callers_.push_back({name, role, "Bearer " + *token});
    }
    ASSERT_NO_FATAL_FAILURE(WaitForLiveShards());
  }

  void TearDown() override {
    shards_.clear();
    coordinator_.reset();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  std::vector<std::string> Flags(std::vector<std::string> args) const {
    for (const std::string& flag :
         {"--tls-ca=" + dir_ + "/ca.pem", "--tls-cert=" + dir_ + "/server.pem",
          "--tls-key=" + dir_ + "/server.key", "--token-file=" + dir_ + "/tokens"}) {
      args.push_back(flag);
    }
    return args;
  }
  static std::string Address(const std::unique_ptr<ChildProcess>& process) {
    return absl::StrCat("127.0.0.1:", process->port());
  }

  // A TLS channel that sends no token (each call adds its own header).
  std::shared_ptr<grpc::Channel> Dial(const std::string& address) const {
    ChannelSecurity security;
    security.tls_ca = dir_ + "/ca.pem";
    auto credentials = internal::MakeChannelCredentials(security);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    return grpc::CreateCustomChannel(address, *credentials, args);
  }
  ChannelSecurity TrainerSecurity() const {
    ChannelSecurity security;
    security.tls_ca = dir_ + "/ca.pem";
    security.token_file = dir_ + "/trainer.token";
    return security;
  }
  const Caller& CallerNamed(const std::string& name) const {
    for (const Caller& caller : callers_) {
      if (caller.name == name) return caller;
    }
    return callers_.front();
  }

  void WaitForLiveShards() {
    auto channel = Dial(Address(coordinator_));
    std::string last;
    const bool live = Eventually([&] {
      RawResult r = RawCall(channel, "/psd.Coordinator/ListShards", "", absl::Seconds(10),
                            CallerNamed("admin").authorization);
      ListShardsResponse response;
      if (!r.status.ok() || !response.ParseFromString(r.response)) {
        last = r.status.error_message();
        return false;
      }
      last = response.DebugString();
      int n = 0;
      for (const ShardStatus& s : response.shards()) n += s.live() ? 1 : 0;
      return n == 2;
    });
    ASSERT_TRUE(live) << "shards not live: " << last;
  }

  // Health checks (public) of every process still running: SERVING.
  void ExpectServing(const std::string& after) {
    std::vector<std::pair<std::string, std::string>> processes = {
        {"coordinator", Address(coordinator_)}};
    for (size_t k = 0; k < shards_.size(); ++k) {
      processes.push_back({absl::StrCat("shard ", k), Address(shards_[k])});
    }
    for (const auto& [who, address] : processes) {
      RawResult health = HealthCheck(Dial(address));
      EXPECT_TRUE(health.status.ok()) << who << " after " << after << ": "
                                      << health.status.error_message();
      EXPECT_EQ(health.response, std::string("\x08\x01", 2)) << who << " after " << after;
    }
  }

  std::string dir_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> shards_;
  std::vector<Caller> callers_;
};

// Every method of every psd service each process serves (as its reflection
// lists them, so a new rpc is swept without touching this test), called by
// every caller with an empty and with hostile requests. A caller without a
// valid token is UNAUTHENTICATED, a role the method does not admit is
// PERMISSION_DENIED, and an admitted role gets past authorization; every
// call ends within its deadline, and every process still serves and still
// does a trainer's work at the end.
TEST_F(HostileRoleTest, EveryRpcWithEveryRole) {
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  google::protobuf::DynamicMessageFactory factory(pool);
  std::mt19937 random(20261206);
  // The coordinator first: its checkpoint rpcs fence the shards, and a
  // hostile Fence sent straight to shard 0 (it lapses by its lease) could
  // hold its writes up.
  const std::vector<std::pair<std::string, std::string>> targets = {
      {"coordinator", Address(coordinator_)}, {"shard 0", Address(shards_[0])}};
  int calls = 0;
  int methods = 0;
  for (const auto& [who, address] : targets) {
    auto channel = Dial(address);
    int psd_services = 0;
    for (const std::string& service_name : ListServices(channel)) {
      if (!absl::StartsWith(service_name, "psd.")) continue;
      ++psd_services;
      const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(service_name);
      ASSERT_NE(service, nullptr) << who << " serves " << service_name
                                  << ", which this test's descriptors do not know";
      for (int m = 0; m < service->method_count(); ++m) {
        const google::protobuf::MethodDescriptor* method = service->method(m);
        const std::string path = absl::StrCat("/", service->full_name(), "/", method->name());
        EXPECT_NE(method->options().GetExtension(psd::role), ROLE_UNSPECIFIED)
            << path << " has no (psd.role)";
        ++methods;
        const std::vector<std::string> payloads = HostilePayloads(method, &factory, &random);
        // Which payloads are well-formed requests. gRPC 1.51 answers one
        // that does not parse with UNIMPLEMENTED and no message (its
        // callback handler's reply to a failed deserialization), as it does
        // a handler that throws; a request that parses must get psd's own
        // answer, which always says why.
        std::vector<bool> parses;
        for (const std::string& payload : payloads) {
          std::unique_ptr<Message> request(factory.GetPrototype(method->input_type())->New());
          parses.push_back(request->ParseFromString(payload));
        }
        for (const Caller& caller : callers_) {
          const bool authenticated = caller.role != ROLE_UNSPECIFIED;
          const bool admitted = RoleMayCall(caller.role, method);
          if (admitted && StopsAProcess(path)) continue;  // StopRpcsStopOnlyForTheirRoles
          // A refused caller is refused before its request is read: the
          // empty request, garbage and one hostile fill show it.
          const size_t count = admitted ? payloads.size() : 4;
          for (size_t p = 0; p < count; ++p) {
            RawResult r =
                RawCall(channel, path, payloads[p], absl::Seconds(30), caller.authorization);
            ++calls;
            const std::string what =
                absl::StrCat(who, " ", path, " by ", caller.name, ", payload ", p, " (",
                             payloads[p].size(), " bytes): code ", r.status.error_code(), " ",
                             r.status.error_message().substr(0, 300));
            if (!authenticated) {
              EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << what;
            } else if (!admitted) {
              EXPECT_EQ(r.status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << what;
            } else {
              EXPECT_NE(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << what;
              // Not authorization's refusal (TokenAuthorizer's words): a
              // handler may still refuse what a role asks (a path outside
              // the checkpoint roots, a trainer naming sources).
              EXPECT_FALSE(r.status.error_code() == grpc::StatusCode::PERMISSION_DENIED &&
                           absl::StrContains(r.status.error_message(), " role; the token has "))
                  << what;
              EXPECT_NE(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
                  << "hung: " << what;
              EXPECT_NE(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << what;
              EXPECT_FALSE(parses[p] && r.status.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
                           r.status.error_message().empty())
                  << "a well-formed request failed inside its handler: " << what;
            }
          }
        }
        RawResult health = HealthCheck(channel);
        ASSERT_TRUE(health.status.ok()) << who << " stopped answering after " << path << ": "
                                        << health.status.error_message();
      }
    }
    EXPECT_GT(psd_services, 0) << who << " lists no psd service";
  }
  EXPECT_GT(methods, 40);
  EXPECT_GT(calls, 1000);
  ExpectServing("every rpc with every role");
  absl::Status work = TrainerOp(Address(coordinator_), "roles/after", TrainerSecurity());
  EXPECT_TRUE(work.ok()) << work;
}

// Idle and half-open connections to TLS ports: nothing sent, the start of a
// TLS ClientHello, or plaintext HTTP/2 where TLS is expected. A trainer's
// work still succeeds while they are open and after they close, and the
// processes are back to about the descriptors they had.
TEST_F(HostileRoleTest, IdleTlsConnectionsStarveNoOne) {
  constexpr int kConnections = 150;  // per process
  const std::vector<std::pair<std::string, ChildProcess*>> targets = {
      {"coordinator", coordinator_.get()}, {"shard 0", shards_[0].get()}};
  // A TLS 1.2 record header announcing a 512-byte ClientHello, and its
  // first bytes.
  const std::string hello_start("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  std::vector<int> before;
  for (const auto& [who, process] : targets) {
    before.push_back(CountFds(process->pid()));
    ASSERT_GT(before.back(), 0) << who;
  }
  std::vector<std::unique_ptr<testing_net::RawConnection>> connections;
  for (const auto& [who, process] : targets) {
    for (int i = 0; i < kConnections; ++i) {
      auto connection = std::make_unique<testing_net::RawConnection>(process->port());
      ASSERT_TRUE(connection->connected()) << who << " connection " << i;
      if (i % 3 == 1) connection->Send(hello_start.substr(0, 1 + i % hello_start.size()));
      if (i % 3 == 2) connection->Send(h2::Preface() + h2::Headers(1, "/psd.Shard/Read"));
      connections.push_back(std::move(connection));
    }
  }
  absl::Status during = TrainerOp(Address(coordinator_), "idle_tls/during", TrainerSecurity());
  EXPECT_TRUE(during.ok()) << during;
  ExpectServing("idle TLS connections");
  connections.clear();
  for (size_t t = 0; t < targets.size(); ++t) {
    EXPECT_TRUE(Eventually([&] { return CountFds(targets[t].second->pid()) <= before[t] + 16; }))
        << targets[t].first << " holds " << CountFds(targets[t].second->pid())
        << " descriptors after the connections closed, " << before[t] << " before";
  }
  absl::Status after = TrainerOp(Address(coordinator_), "idle_tls/after", TrainerSecurity());
  EXPECT_TRUE(after.ok()) << after;
  ExpectServing("idle TLS connections closed");
}

// The rpcs that stop processes: refused to every other role, then run by
// their own (ShardControl.Stop by a node with a hostile reason, Shutdown by
// an admin), after which the processes exit cleanly.
TEST_F(HostileRoleTest, StopRpcsStopOnlyForTheirRoles) {
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  google::protobuf::DynamicMessageFactory factory(pool);
  std::mt19937 random(7);
  const auto* stop = pool->FindMethodByName("psd.ShardControl.Stop");
  const auto* shutdown = pool->FindMethodByName("psd.Coordinator.Shutdown");
  ASSERT_NE(stop, nullptr);
  ASSERT_NE(shutdown, nullptr);
  auto shard_channel = Dial(Address(shards_[1]));
  auto coordinator_channel = Dial(Address(coordinator_));
  for (const Caller& caller : callers_) {
    for (const auto& [method, channel] :
         {std::make_pair(stop, shard_channel), std::make_pair(shutdown, coordinator_channel)}) {
      if (RoleMayCall(caller.role, method)) continue;
      const std::string path =
          absl::StrCat("/", method->service()->full_name(), "/", method->name());
      for (const std::string& payload : HostilePayloads(method, &factory, &random)) {
        RawResult r = RawCall(channel, path, payload, absl::Seconds(30), caller.authorization);
        EXPECT_EQ(r.status.error_code(), caller.role == ROLE_UNSPECIFIED
                                             ? grpc::StatusCode::UNAUTHENTICATED
                                             : grpc::StatusCode::PERMISSION_DENIED)
            << path << " by " << caller.name << ": " << r.status.error_message();
      }
    }
  }
  ExpectServing("refused stops");
  absl::Status work = TrainerOp(Address(coordinator_), "stops/refused", TrainerSecurity());
  EXPECT_TRUE(work.ok()) << work;

  // A node stops shard 1, giving a long reason (the shard logs it).
  std::unique_ptr<Message> request(factory.GetPrototype(stop->input_type())->New());
  FillHostile(request.get(), /*variant=*/0, /*depth=*/4);
  RawResult stopped = RawCall(shard_channel, "/psd.ShardControl/Stop", request->SerializeAsString(),
                              absl::Seconds(60), CallerNamed("node").authorization);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_code() << " "
                                   << stopped.status.error_message();
  auto shard_exit = shards_[1]->Wait(absl::Seconds(120));
  ASSERT_TRUE(shard_exit.ok()) << "shard 1 still runs after Stop";
  EXPECT_TRUE(WIFEXITED(*shard_exit) && WEXITSTATUS(*shard_exit) == 0)
      << "shard 1: " << DescribeWaitStatus(*shard_exit);
  shards_.pop_back();
  ExpectServing("shard 1 stopped");

  // An admin shuts the cluster down: the coordinator and shard 0 exit.
  RawResult shut = RawCall(coordinator_channel, "/psd.Coordinator/Shutdown", "", absl::Seconds(60),
                           CallerNamed("admin").authorization);
  ASSERT_TRUE(shut.status.ok()) << shut.status.error_code() << " " << shut.status.error_message();
  for (const auto& [who, process] : {std::make_pair("coordinator", coordinator_.get()),
                                     std::make_pair("shard 0", shards_[0].get())}) {
    auto exit = process->Wait(absl::Seconds(120));
    ASSERT_TRUE(exit.ok()) << who << " still runs after Shutdown";
    EXPECT_TRUE(WIFEXITED(*exit) && WEXITSTATUS(*exit) == 0)
        << who << ": " << DescribeWaitStatus(*exit);
  }
}

// ---------------------------------------------------------------------------
// Streams cut off half-way, against one shard whose drain would wait ten
// minutes for calls still counted in flight.

class CutStreamTest : public ShardTest {
 protected:
  static constexpr int64_t kN = 256 * 1024;  // 1 MiB of float32

  ShardProcessOptions options() const override {
    ShardProcessOptions options;
    options.extra_args = {"--drain-timeout", "600"};
    return options;
  }

  void SetUp() override {
    ShardTest::SetUp();
    if (HasFatalFailure()) return;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    raw_ = Shard::NewStub(
        grpc::CreateCustomChannel(process_->address(), grpc::InsecureChannelCredentials(), args));
  }

  static Tensor Wave(double phase) {
    Tensor t(DT_FLOAT, TensorShape{kN});
    for (int64_t i = 0; i < kN; ++i) {
      t.data<float>()[i] = static_cast<float>(std::sin(0.001 * i + phase));
    }
    return t;
  }

  // The first message of a streamed assign of `value` to `name`, or of a
  // streamed gradient-descent apply of it as a gradient.
  static AssignStreamRequest Header(const std::string& name, const Tensor& value, bool apply) {
    AssignStreamRequest message;
    AssignStreamHeader* header = message.mutable_header();
    header->set_name(name);
    header->set_op(UPDATE_ASSIGN);
    header->set_dtype(value.dtype());
    ShapeToProto(value.shape(), header->mutable_shape());
    header->set_total_bytes(static_cast<int64_t>(value.bytes().size()));
    header->set_validate_shape(true);
    if (apply) {
      header->mutable_apply()->mutable_optimizer()->mutable_gradient_descent()->set_learning_rate(
          1.0);
    }
    return message;
  }

  // A streamed assign (or apply) that sends the header and the first `send`
  // bytes of `value`, then cancels without a half-close.
  grpc::Status CutAssign(const std::string& name, const Tensor& value, size_t send, bool apply) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    AssignResponse response;
    auto writer = raw_->AssignStream(&context, &response);
    AssignStreamRequest message = Header(name, value, apply);
    writer->Write(message);
    message.clear_header();
    for (size_t off = 0; off < send; off += 64 << 10) {
      message.set_content(std::string(value.bytes().substr(off, std::min<size_t>(64 << 10, send - off))));
      if (!writer->Write(message)) break;
    }
    context.TryCancel();
    return writer->Finish();
  }

  // A streamed read in small chunks, cancelled after `chunks` of them.
  grpc::Status CutRead(const std::string& name, int chunks) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    ReadStreamRequest request;
    request.set_name(name);
    request.set_chunk_bytes(16 << 10);
    auto reader = raw_->ReadStream(&context, request);
    TensorChunk chunk;
    for (int i = 0; i < chunks && reader->Read(&chunk); ++i) {
    }
    context.TryCancel();
    return reader->Finish();
  }

  // The same over a raw connection that is closed (reset) without a word:
  // a streamed assign with its header and the start of its bytes, and a
  // streamed read of which a little is received.
  void DroppedAssign(const std::string& name, const Tensor& value) {
    testing_net::RawConnection connection(process_->port());
    ASSERT_TRUE(connection.connected());
    AssignStreamRequest message = Header(name, value, false);
    message.set_content(std::string(value.bytes().substr(0, 8000)));
    const std::string bytes = message.SerializeAsString();
    // The message announces twice its length: the connection drops inside it.
    connection.Send(h2::Preface() + h2::Headers(1, "/psd.Shard/AssignStream") +
                    h2::Message(1, bytes, static_cast<uint32_t>(2 * bytes.size()), false));
    const linger reset{1, 0};
    ::setsockopt(connection.fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  }
  // A call of `path` opened (headers only) and dropped with its connection.
  void DroppedCall(const std::string& path) {
    testing_net::RawConnection connection(process_->port());
    ASSERT_TRUE(connection.connected());
    connection.Send(h2::Preface() + h2::Headers(1, path));
    const linger reset{1, 0};
    ::setsockopt(connection.fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  }
  void DroppedRead(const std::string& name) {
    testing_net::RawConnection connection(process_->port());
    ASSERT_TRUE(connection.connected());
    ReadStreamRequest request;
    request.set_name(name);
    request.set_chunk_bytes(16 << 10);
    const std::string bytes = request.SerializeAsString();
    connection.Send(h2::Preface() + h2::Headers(1, "/psd.Shard/ReadStream") +
                    h2::Message(1, bytes, static_cast<uint32_t>(bytes.size()), true));
    char buffer[4096];
    connection.Readable(30000);
    ::recv(connection.fd(), buffer, sizeof(buffer), 0);
    const linger reset{1, 0};
    ::setsockopt(connection.fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  }

  std::unique_ptr<Shard::Stub> raw_;
};

// Streamed reads, assigns and applies cancelled or dropped half-way, again
// and again: the variable keeps its value (a streamed assign applies only
// at its end), the shard's accounted memory returns to where it was, and no
// call stays in flight, so SIGTERM stops the shard (its drain would wait ten
// minutes for one) and it exits cleanly.
TEST_F(CutStreamTest, CutStreamsChangeNothingAndLeaveNothingRunning) {
  const Tensor start = Wave(0.5);
  const Tensor other = Wave(2.0);
  ASSERT_TRUE(IsOk(shard_->Create("v", start)));
  PSD_ASSERT_OK_AND_ASSIGN(client::ShardInfo before, shard_->GetInfo());
  const size_t size = start.bytes().size();
  for (int round = 0; round < 8; ++round) {
    EXPECT_FALSE(CutRead("v", 1 + round % 3).ok());
    EXPECT_FALSE(CutAssign("v", other, size / 2, /*apply=*/false).ok());
    EXPECT_FALSE(CutAssign("v", other, 0, /*apply=*/false).ok());
    // Every byte sent, but no half-close: still a broken stream.
    EXPECT_FALSE(CutAssign("v", other, size, /*apply=*/false).ok());
    EXPECT_FALSE(CutAssign("v", other, size, /*apply=*/true).ok());
    EXPECT_FALSE(CutAssign("v", other, size / 3, /*apply=*/true).ok());
    ASSERT_NO_FATAL_FAILURE(DroppedAssign("v", other));
    ASSERT_NO_FATAL_FAILURE(DroppedRead("v"));
    for (const char* path : {"/psd.Shard/AssignStream", "/psd.Shard/Batch", "/psd.Shard/ReadStream",
                             "/psd.Shard/Assign"}) {
      ASSERT_NO_FATAL_FAILURE(DroppedCall(path));
    }
  }
  EXPECT_TRUE(Read("v").bytes() == start.bytes()) << "a cut stream changed the variable";
  int64_t used = -1;
  EXPECT_TRUE(Eventually([&] {
    auto info = shard_->GetInfo();
    used = info.ok() ? info->memory_used_bytes : -1;
    return used == before.memory_used_bytes;
  })) << "memory used " << used << ", before the cut streams " << before.memory_used_bytes;
  // The shard still works, and a whole streamed assign still applies.
  EXPECT_TRUE(IsOk(shard_->AssignAdd("v", start)));

  skip_alive_check_ = true;
  ASSERT_TRUE(IsOk(process_->Signal(SIGTERM)));
  auto exit = process_->Wait(absl::Minutes(3));
  ASSERT_TRUE(exit.ok()) << "the shard still drains after SIGTERM: a cut stream is still in flight";
  EXPECT_TRUE(WIFEXITED(*exit) && WEXITSTATUS(*exit) == 0) << DescribeWaitStatus(*exit);
}

// Coordinator calls cut off half-way, again and again: declarations (which
// create parts on the shards) and saves whose callers give up after a
// millisecond, and calls dropped with their connections in the middle of
// their request. The coordinator still does a trainer's work, and no call
// stays in flight: SIGTERM stops it (its drain would wait ten minutes for
// one) and it exits cleanly.
TEST(CutCoordinatorCallTest, CutCallsLeaveNothingRunning) {
  const std::string checkpoints = MakeTempDir("psd_hostile_ckpt.");
  ASSERT_FALSE(checkpoints.empty());
  TestClusterOptions options;
  options.coordinator_args = {"--heartbeat-interval", "0.2", "--drain-timeout", "600",
                              "--checkpoint-dir", checkpoints};
  auto started = TestCluster::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<TestCluster> cluster = *std::move(started);
  auto channel = grpc::CreateChannel(cluster->coordinator_address(),
                                     grpc::InsecureChannelCredentials());
  OpenSessionRequest open;
  open.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
  RawResult opened = RawCall(channel, "/psd.Coordinator/OpenSession", open.SerializeAsString());
  OpenSessionResponse session;
  ASSERT_TRUE(opened.status.ok() && session.ParseFromString(opened.response))
      << opened.status.error_message();
  for (int round = 0; round < 10; ++round) {
    DeclareVariablesRequest declare;
    declare.set_session_id(session.session_id());
    declare.set_request_seq(round + 1);
    for (int k = 0; k < 4; ++k) {
      VariableDeclaration* d = declare.add_declarations();
      d->set_name(absl::StrCat("cut/v", round, "_", k));
      d->set_dtype(DT_FLOAT);
      d->mutable_shape()->add_dims(1 << 16);
      d->mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
    }
    RawCall(channel, "/psd.Coordinator/DeclareVariables", declare.SerializeAsString(),
            absl::Milliseconds(1 + round % 3));
    SaveCheckpointRequest save;
    save.set_prefix(absl::StrCat(checkpoints, "/cut.ckpt"));
    save.set_global_step(round);
    RawCall(channel, "/psd.Coordinator/Save", save.SerializeAsString(),
            absl::Milliseconds(1 + round % 3));
    // The same requests, their connection dropped halfway through them.
    const std::vector<std::pair<std::string, std::string>> requests = {
        {"/psd.Coordinator/DeclareVariables", declare.SerializeAsString()},
        {"/psd.Coordinator/Save", save.SerializeAsString()}};
    for (const auto& [path, bytes] : requests) {
      testing_net::RawConnection connection(cluster->coordinator()->port());
      ASSERT_TRUE(connection.connected());
      connection.Send(h2::Preface() + h2::Headers(1, path) +
                      h2::Message(1, bytes.substr(0, bytes.size() / 2),
                                  static_cast<uint32_t>(bytes.size()), false));
      const linger reset{1, 0};
      ::setsockopt(connection.fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    }
  }
  absl::Status work = TrainerOp(cluster->coordinator_address(), "cut/after");
  EXPECT_TRUE(work.ok()) << work;
  ASSERT_EQ(::kill(cluster->coordinator()->pid(), SIGTERM), 0);
  auto exit = cluster->coordinator()->Wait(absl::Minutes(3));
  ASSERT_TRUE(exit.ok())
      << "the coordinator still drains after SIGTERM: a cut call is still in flight";
  EXPECT_TRUE(WIFEXITED(*exit) && WEXITSTATUS(*exit) == 0) << DescribeWaitStatus(*exit);
  cluster.reset();
  std::error_code ignored;
  std::filesystem::remove_all(checkpoints, ignored);
}

}  // namespace
}  // namespace integration
}  // namespace psd
