// What the world sends, tried against real processes (a coordinator and two
// shards on loopback) over raw gRPC, with no psd client in between: gRPC's
// own health and reflection services, every psd method with hostile
// payloads (garbage bytes, and messages whose every field holds an extreme
// value), and requests that used to abort or wedge a shard. After each
// sweep every process must still answer: a status for every call, nothing
// crashed, nothing hung.
//
// Bounded: a fixed set of payloads per method, each call with a deadline.
#include <sys/wait.h>

#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "cluster_process.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/shard.grpc.pb.h"

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
RawResult RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                  const std::string& request, absl::Duration timeout = absl::Seconds(60)) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
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
  };
  int calls = 0;
  for (const Target& target : targets) {
    ASSERT_NE(target.service, nullptr);
    auto channel = Dial(target.address);
    for (int m = 0; m < target.service->method_count(); ++m) {
      const google::protobuf::MethodDescriptor* method = target.service->method(m);
      if (method->name() == "Shutdown") continue;  // stops the process, as asked
      const std::string path = absl::StrCat("/", target.service->full_name(), "/", method->name());
      std::vector<std::string> payloads;
      payloads.push_back("");
      std::string garbage(257, '\0');
      for (char& c : garbage) c = static_cast<char>(random());
      payloads.push_back(garbage);
      payloads.push_back(std::string("\x0a\xff\xff\xff\xff\x0f", 6));  // length past the end
      for (int variant = 0; variant < 3; ++variant) {
        std::unique_ptr<Message> request(factory.GetPrototype(method->input_type())->New());
        FillHostile(request.get(), variant, /*depth=*/4);
        payloads.push_back(request->SerializeAsString());
      }
      for (const std::string& payload : payloads) {
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

}  // namespace
}  // namespace integration
}  // namespace psd
