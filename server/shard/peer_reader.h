// PeerReader: how a shard reads a variable part held by another shard, for
// work the coordinator orders between variables (initializing one from
// another's value). It calls the other shard's ReadStream, so the value
// travels shard to shard in chunks and is a consistent snapshot, with this
// shard's node credentials (TLS client certificate and node token).
//
// Thread-safety: thread-safe; stubs are cached per address under mu_, never
// held across an RPC.
#ifndef PSD_SERVER_SHARD_PEER_READER_H_
#define PSD_SERVER_SHARD_PEER_READER_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/security/credentials.h"
#include "psd/shard.grpc.pb.h"

namespace psd {

class PeerReader {
 public:
  // `credentials` secure the channels to other shards (null: plaintext).
  PeerReader(std::shared_ptr<grpc::ChannelCredentials> credentials, int max_message_bytes);
  PeerReader(const PeerReader&) = delete;
  PeerReader& operator=(const PeerReader&) = delete;

  // The value of part `name` on the shard at `address`, which must still be
  // incarnation `incarnation` (ABORTED "stale handle" otherwise). The
  // status is the other shard's (or the transport's), unchanged, except
  // that a value announcing more than `max_bytes` of content (what the part
  // can hold, as declared) is DATA_LOSS naming the peer before anything is
  // allocated for it.
  absl::StatusOr<TensorProto> Read(const std::string& address, const std::string& name,
                                   uint64_t incarnation,
                                   std::chrono::system_clock::time_point deadline,
                                   int64_t max_bytes);

  // A channel to the psd server at `address` with this shard's node
  // credentials (cached per address), for other services than Shard.
  std::shared_ptr<grpc::Channel> ChannelFor(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::shared_ptr<Shard::Stub> StubFor(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);

  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const int max_message_bytes_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Shard::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_PEER_READER_H_
