// FaultProxy: a TCP proxy on loopback that injects network faults between
// two processes, for tests of what psd does when the network (not a
// process) fails: a trainer's connection to a shard cut in the middle of a
// message, a shard partitioned from the coordinator while both stay up, a
// slow link. It listens on 127.0.0.1 (a free port unless one is asked for)
// and forwards every connection it accepts to one target on loopback; the
// process under test is pointed at the proxy instead of the target (a
// client's address, a shard's --coordinator or --advertise).
//
// Faults, each per direction (kUp: from the connecting side to the target;
// kDown: back), changeable at any moment while connections are open:
//  - SetDelay: every chunk read is held `delay` before it is forwarded;
//    order is kept (a chunk never overtakes one read before it).
//  - SetBlackhole: nothing is forwarded; what is read is held (up to the
//    connection's buffer cap, then reading stops and the sender's TCP
//    window closes). Connections stay open: a partition during which TCP
//    stays up, so only deadlines and keepalives notice. Lifting it delivers
//    everything held, in order, as TCP would after a partition heals.
//  - SetDropAfterBytes: every connection is cut after forwarding n more
//    bytes (counted from the call, or from its accept) in that direction.
//  - CutAfterBytes: one shot: the connection that forwards the n-th byte
//    from now in that direction (all connections together) is cut there.
// And for all connections: SetRefuse (new connections are reset at once),
// CutAll (every open connection is reset now), Heal (every fault off).
// A cut resets both sides (SO_LINGER 0: the peers see ECONNRESET or EOF,
// never a clean end of the bytes that were cut off).
//
// Bounded: each connection holds at most `max_buffered_bytes` per direction
// (FaultProxyOptions; default 1 MiB), reads chunks of at most 64 KiB, and
// the proxy keeps at most `max_connections` open (more are reset at accept).
//
// Threads: one io_context thread of its own runs every socket and timer;
// connections' state is touched only there. The controls may be called from
// any thread: they set the fault settings (guarded by mu_) that the io
// thread reads at each chunk, and post a wake-up so held chunks move at
// once. CutAll, Heal and the destructor wait for the io thread to have
// acted. Counters are atomics. The destructor closes every socket and joins
// the thread.
//
// Thread-safety: thread-safe.
#ifndef PSD_TESTS_COMMON_FAULT_PROXY_H_
#define PSD_TESTS_COMMON_FAULT_PROXY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace psd {
namespace testing {

struct FaultProxyOptions {
  // HOST:PORT to forward to; HOST must be loopback (127.0.0.0/8, ::1 or a
  // name that resolves only to loopback). Anything else is refused.
  std::string target;
  // Loopback port to listen on (0: a free one; see FaultProxy::port()).
  int listen_port = 0;
  // Bytes one connection holds per direction (read, not yet forwarded).
  int64_t max_buffered_bytes = int64_t{1} << 20;
  // Connections open at once; more are reset as they are accepted.
  int max_connections = 1024;
};

// What the proxy has done since it started.
struct FaultProxyStats {
  int64_t accepted = 0;     // connections accepted and forwarded
  int64_t refused = 0;      // reset at accept (SetRefuse, max_connections, target down)
  int64_t open = 0;         // open now
  int64_t cuts = 0;         // connections reset by a fault (CutAll, the byte limits)
  int64_t bytes_up = 0;     // forwarded to the target
  int64_t bytes_down = 0;   // forwarded back
};

class FaultProxy {
 public:
  enum class Direction { kUp, kDown };

  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(const FaultProxyOptions& options);
  // Forwards to 127.0.0.1:target_port.
  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(int target_port);

  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;
  ~FaultProxy();

  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:PORT"

  // Both directions, or one.
  void SetDelay(absl::Duration delay);
  void SetDelay(Direction direction, absl::Duration delay);
  void SetBlackhole(bool on);
  void SetBlackhole(Direction direction, bool on);
  // 0: off.
  void SetDropAfterBytes(Direction direction, int64_t bytes);
  // 0: disarms.
  void CutAfterBytes(Direction direction, int64_t bytes);
  void SetRefuse(bool on);
  // Resets every open connection; returns once they are closed.
  void CutAll();
  // Every fault off (delays, blackholes, byte limits, refusal); held bytes
  // are delivered. Open connections stay open.
  void Heal();

  // The former proxy's names (tests/integration/data_stream_test.cc).
  void CutUpstreamAfter(int64_t bytes) { SetDropAfterBytes(Direction::kUp, bytes); }

  FaultProxyStats stats() const;
  int64_t connections() const { return accepted_.load(); }
  int64_t cuts() const { return cuts_.load(); }

  // One control line, as the psd_fault_proxy binary reads them (words
  // separated by spaces; DIR is `up` or `down`, both when left out):
  //   delay [DIR] DURATION      e.g. `delay 50ms`, `delay up 1s`, `delay 0`
  //   blackhole [DIR] on|off
  //   drop-after [DIR] BYTES    0: off
  //   cut-after [DIR] BYTES     one shot
  //   refuse on|off
  //   cut
  //   heal
  //   stats
  // Returns the reply ("ok", or the stats as `key=value` words) or
  // INVALID_ARGUMENT naming what is wrong.
  absl::StatusOr<std::string> Command(absl::string_view line);

 private:
  class Impl;
  struct Settings {
    absl::Duration delay[2];
    bool blackhole[2] = {false, false};
    int64_t drop_after[2] = {0, 0};
    // Bumped at each SetDropAfterBytes: open connections count from there.
    int64_t drop_generation[2] = {0, 0};
    int64_t cut_after[2] = {0, 0};  // one shot; bytes left before the cut
    bool refuse = false;
  };

  FaultProxy() = default;
  void Wake();

  int port_ = 0;
  mutable absl::Mutex mu_;
  Settings settings_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> accepted_{0};
  std::atomic<int64_t> refused_{0};
  std::atomic<int64_t> open_{0};
  std::atomic<int64_t> cuts_{0};
  std::atomic<int64_t> bytes_[2] = {0, 0};
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace testing
}  // namespace psd

#endif  // PSD_TESTS_COMMON_FAULT_PROXY_H_
