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
  int port() const { return port_; }
  const ShardProcessOptions& options() const { return options_; }
  pid_t pid() const { return pid_; }

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
  ShardProcess(pid_t pid, std::string dir, const ShardProcessOptions& options)
      : pid_(pid), dir_(std::move(dir)), options_(options) {}

  // Non-blocking reap; true once the process has exited.
  bool Reap();

  const pid_t pid_;
  const std::string dir_;  // temporary directory holding the port file
  const ShardProcessOptions options_;
  int port_ = 0;
  std::string address_;
  bool exited_ = false;
  int wait_status_ = 0;
};

// Kills `*process` (SIGKILL) and starts a new shard on the same port with
// the same options: a shard crash and restart. The old address stays valid.
absl::Status RestartShard(std::unique_ptr<ShardProcess>* process);

// Starts `args` (args[0] is the binary) as a child in its own process group
// that gets SIGKILL if this thread's process dies, and returns its pid once
// the exec has succeeded. Call it from a thread that outlives the child.
absl::StatusOr<pid_t> SpawnChild(std::vector<std::string> args);

// The port a psd process wrote to `path` (--port-file), once two reads agree
// on a whole number; `last` carries the previous read between polls.
bool ReadPortFile(const std::string& path, std::string* last, int* port);

// "exit status 0", "signal 9": a waitpid status for messages.
std::string DescribeWaitStatus(int wait_status);

}  // namespace integration
}  // namespace psd

#endif  // PSD_COMMON_TESTING_SHARD_PROCESS_H_
