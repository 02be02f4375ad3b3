// Channel arguments for the calls psd servers make to one another (the
// coordinator to shards, shards to the coordinator and to other shards).
//
// gRPC waits longer and longer between reconnection attempts to an address
// that refused it, up to two minutes. A peer that restarts on the same
// address (a shard after a crash, the coordinator after an upgrade) is back
// in seconds, and the calls to it that follow (a move to the restarted
// shard, its heartbeats after a coordinator restart) must not fail for
// minutes because the channel is still backing off: between servers the
// backoff stays between 100 ms and 1 s.
//
// Thread-safety: a function of its arguments.
#ifndef PSD_SERVER_RUNTIME_PEER_CHANNEL_H_
#define PSD_SERVER_RUNTIME_PEER_CHANNEL_H_

#include "grpcpp/grpcpp.h"

namespace psd {

inline grpc::ChannelArguments PeerChannelArguments(int max_message_bytes) {
  grpc::ChannelArguments args;
  if (max_message_bytes > 0) {
    args.SetMaxReceiveMessageSize(max_message_bytes);
    args.SetMaxSendMessageSize(max_message_bytes);
  }
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return args;
}

}  // namespace psd

#endif  // PSD_SERVER_RUNTIME_PEER_CHANNEL_H_
