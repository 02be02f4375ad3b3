// ShardProcess: a real `psd shard` child process on a free loopback port, for
// the integration tests and psd_bench. Start() launches it with --listen 127.0.0.1:0 and
// --port-file and returns once the shard has written its port; the
// destructor stops it (SIGTERM, then SIGKILL after a grace period) and reaps
// it, so a failing test leaks no process.
//
// The child runs in its own process group (signals go to the whole group)
// and gets SIGKILL if the thread that started it dies, so even a crashed test
// binary leaves nothing behind. Start a ShardProcess from a thread that
// outlives it (the test's main thread).
//
// Thread-safety: thread-compatible; Signal() may be called while other
// threads use clients connected to the shard.
#ifndef PSD_COMMON_TESTING_SHARD_PROCESS_H_
#define PSD_COMMON_TESTING_SHARD_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "child_process.h"
#include "psd/client.h"

namespace psd {
namespace integration {

struct ShardProcessOptions {
  // --memory-limit; 0 leaves the shard's default.
  int64_t memory_limit_bytes = 0;
  // The loopback port to listen on; 0 picks a free one. A restarted shard
  // takes its predecessor's port (see RestartShard).
  int port = 0;
  // --id (every shard needs one).
  int id = 0;
  std::vector<std::string> extra_args;
  // How long the shard may take to write its port file.
  absl::Duration start_timeout = absl::Seconds(20);
  // Grace period between SIGTERM and SIGKILL in the destructor.
  absl::Duration stop_timeout = absl::Seconds(15);
};

class ShardProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ShardProcess>> Start(
      const ShardProcessOptions& options = {});

  ShardProcess(const ShardProcess&) = delete;
  ShardProcess& operator=(const ShardProcess&) = delete;
  ~ShardProcess();

  const std::string& address() const { return address_; }  // "127.0.0.1:PORT"
  int port() const { return child_->port(); }
  const ShardProcessOptions& options() const { return options_; }
  pid_t pid() const { return child_->pid(); }

  absl::StatusOr<std::unique_ptr<client::ShardClient>> Connect(
      const client::ClientOptions& options = {}) const;

  // Sends `signal` to the shard process (not its group).
  absl::Status Signal(int signal);

  // SIGKILL to the shard's group, then reaps it: a crash.
  absl::Status Kill();

  // The shard's memory as /proc/PID/status reports it: resident now (VmRSS)
  // and the peak since start or the last ResetPeakRss (VmHWM).
  absl::StatusOr<int64_t> RssBytes() const;
  absl::StatusOr<int64_t> PeakRssBytes() const;
  // Resets VmHWM to the current VmRSS (writes 5 to /proc/PID/clear_refs), so
  // the next PeakRssBytes measures one phase only.
  absl::Status ResetPeakRss();

  // Waits up to `timeout` for the shard to exit and returns its wait status
  // (as waitpid reports it: test with WIFEXITED / WEXITSTATUS).
  // DEADLINE_EXCEEDED if it is still running.
  absl::StatusOr<int> Wait(absl::Duration timeout);

 private:
  ShardProcess(std::string dir, const ShardProcessOptions& options)
      : dir_(std::move(dir)), options_(options) {}

  const std::string dir_;  // temporary directory holding the port file
  const ShardProcessOptions options_;
  std::unique_ptr<ChildProcess> child_;  // set once started
  std::string address_;
};

// Kills `*process` (SIGKILL) and starts a new shard on the same port with
// the same options: a shard crash and restart. The old address stays valid.
absl::Status RestartShard(std::unique_ptr<ShardProcess>* process);

}  // namespace integration
}  // namespace psd

#endif  // PSD_COMMON_TESTING_SHARD_PROCESS_H_
