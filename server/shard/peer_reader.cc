#include "shard/peer_reader.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "psd/grpc_status.h"
#include "runtime/peer_channel.h"

namespace psd {

PeerReader::PeerReader(std::shared_ptr<grpc::ChannelCredentials> credentials,
                       int max_message_bytes)
    : credentials_(credentials != nullptr ? std::move(credentials)
                                          : grpc::InsecureChannelCredentials()),
      max_message_bytes_(max_message_bytes) {}

std::shared_ptr<grpc::Channel> PeerReader::ChannelFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& channel = channels_[address];
  if (channel == nullptr) {
    channel = grpc::CreateCustomChannel(address, credentials_,
                                        PeerChannelArguments(max_message_bytes_));
  }
  return channel;
}

std::shared_ptr<Shard::Stub> PeerReader::StubFor(const std::string& address) {
  std::shared_ptr<grpc::Channel> channel = ChannelFor(address);
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[address];
  if (stub == nullptr) stub = Shard::NewStub(channel);
  return stub;
}

absl::StatusOr<TensorProto> PeerReader::Read(const std::string& address, const std::string& name,
                                             uint64_t incarnation,
                                             std::chrono::system_clock::time_point deadline,
                                             int64_t max_bytes) {
  ReadStreamRequest request;
  request.set_name(name);
  request.set_shard_incarnation(incarnation);
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  std::unique_ptr<grpc::ClientReader<TensorChunk>> reader = StubFor(address)->ReadStream(&ctx, request);
  TensorProto value;
  TensorChunk chunk;
  bool first = true;
  int64_t total = 0;
  int64_t received = 0;
  absl::Status bad;
  while (reader->Read(&chunk)) {
    if (first) {
      first = false;
      total = chunk.total_bytes();
      value.set_dtype(chunk.dtype());
      *value.mutable_shape() = chunk.shape();
      if (total < 0) {
        bad = absl::DataLossError(absl::StrCat("read of ", name, " from ", address,
                                               ": negative total_bytes ", total));
        break;
      }
      // The size is the peer's word: check it before allocating for it (an
      // absurd one would otherwise throw on a thread with no one to catch).
      const uint64_t most =
          std::min<uint64_t>(static_cast<uint64_t>(std::max<int64_t>(max_bytes, 0)),
                             value.content().max_size());
      if (static_cast<uint64_t>(total) > most) {
        bad = absl::DataLossError(absl::StrCat("read of ", name, " from ", address,
                                               ": the peer announced ", total,
                                               " bytes, more than the ", most,
                                               " the part can hold"));
        break;
      }
      value.mutable_content()->resize(static_cast<size_t>(total));
    }
    const int64_t size = static_cast<int64_t>(chunk.content().size());
    if (chunk.offset() < 0 || chunk.offset() > total - size) {
      bad = absl::DataLossError(absl::StrCat("read of ", name, " from ", address, ": chunk of ",
                                             size, " bytes at ", chunk.offset(), " is past its ",
                                             total, " bytes"));
      break;
    }
    std::memcpy(value.mutable_content()->data() + chunk.offset(), chunk.content().data(),
                static_cast<size_t>(size));
    received += size;
  }
  if (!bad.ok()) {
    ctx.TryCancel();
    (void)reader->Finish();
    return bad;
  }
  absl::Status status = FromGrpcStatus(reader->Finish());
  if (!status.ok()) return status;
  if (first || received != total) {
    return absl::DataLossError(absl::StrCat("read of ", name, " from ", address, ": ", received,
                                            " of ", total, " bytes arrived"));
  }
  return value;
}

}  // namespace psd
