// PeerReader against a stand-in shard whose ReadStream announces whatever
// size it is told to: a size beyond what the part can hold is refused as
// DATA_LOSS naming the peer, before anything is allocated for it (an absurd
// size used to throw on the reading thread and end the process).
#include "shard/peer_reader.h"

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace psd {
namespace {

// Streams one chunk of 8 bytes, announcing `total` bytes in all.
class AnnouncingShard final : public Shard::Service {
 public:
  explicit AnnouncingShard(int64_t total) : total_(total) {}

  grpc::Status ReadStream(grpc::ServerContext*, const ReadStreamRequest*,
                          grpc::ServerWriter<TensorChunk>* writer) override {
    TensorChunk chunk;
    chunk.set_dtype(DT_FLOAT);
    chunk.mutable_shape()->add_dims(2);
    chunk.set_total_bytes(total_);
    chunk.set_offset(0);
    chunk.set_content(std::string(8, '\x01'));
    writer->Write(chunk);
    return grpc::Status::OK;
  }

 private:
  const int64_t total_;
};

struct Peer {
  explicit Peer(int64_t total) : service(total) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~Peer() { server->Shutdown(); }

  AnnouncingShard service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

std::chrono::system_clock::time_point Soon() {
  return std::chrono::system_clock::now() + std::chrono::seconds(30);
}

TEST(PeerReaderTest, ValueWithinTheBoundIsRead) {
  Peer peer(8);
  ASSERT_NE(peer.server, nullptr);
  PeerReader reader(nullptr, 1 << 20);
  absl::StatusOr<TensorProto> value = reader.Read(peer.address, "v", 1, Soon(), 8);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->content(), std::string(8, '\x01'));
}

TEST(PeerReaderTest, AnnouncedSizeBeyondThePartIsDataLossNamingThePeer) {
  for (int64_t total : {int64_t{9}, int64_t{1} << 40, std::numeric_limits<int64_t>::max()}) {
    Peer peer(total);
    ASSERT_NE(peer.server, nullptr);
    PeerReader reader(nullptr, 1 << 20);
    absl::StatusOr<TensorProto> value = reader.Read(peer.address, "v", 1, Soon(), 8);
    ASSERT_FALSE(value.ok()) << total;
    EXPECT_TRUE(absl::IsDataLoss(value.status())) << value.status();
    EXPECT_TRUE(absl::StrContains(value.status().message(), peer.address)) << value.status();
    EXPECT_TRUE(absl::StrContains(value.status().message(), absl::StrCat(total)))
        << value.status();
  }
  // No bound from the part (a string variable on a shard without a memory
  // limit): the largest size a buffer can take still bounds it.
  Peer peer(std::numeric_limits<int64_t>::max());
  PeerReader reader(nullptr, 1 << 20);
  absl::StatusOr<TensorProto> value =
      reader.Read(peer.address, "v", 1, Soon(), std::numeric_limits<int64_t>::max());
  EXPECT_TRUE(absl::IsDataLoss(value.status())) << value.status();
}

}  // namespace
}  // namespace psd
