// ShardTraffic (proto/psd/coordinator.proto) from the shard's own counters:
// the RPC series its /metrics exports, summed by kind of op (reads, writes,
// the rest), and its write gate's fence totals. The coordinator link sends
// one with every heartbeat; the coordinator's console turns them into the
// cluster's op rates and latency percentiles.
//
// Thread-safety: functions without state; the counters they read are
// thread-safe.
#ifndef PSD_SERVER_SHARD_SHARD_TRAFFIC_H_
#define PSD_SERVER_SHARD_SHARD_TRAFFIC_H_

#include "absl/strings/string_view.h"
#include "observability/rpc_metrics.h"
#include "psd/coordinator.pb.h"
#include "shard/write_gate.h"

namespace psd {

enum class ShardOpKind { kRead = 0, kWrite = 1, kOther = 2 };

// What a served method ("psd.Shard/Gather") counts as. The ops inside a
// Batch stream are counted one by one as the unary calls they stand for
// (RpcMetrics::RecordOp); the stream itself, when it ends, is another call.
ShardOpKind KindOfShardMethod(absl::string_view method);

// The traffic `rpc` (null: none counted yet) and `fences` add up to now.
ShardTraffic ReadShardTraffic(const RpcMetrics* rpc, const WriteGate::FenceTotals& fences);

}  // namespace psd

#endif  // PSD_SERVER_SHARD_SHARD_TRAFFIC_H_
