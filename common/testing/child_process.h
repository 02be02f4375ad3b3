// ChildProcess: a program the tests and psd_bench start, in its own process
// group (SIGKILLed if the starting process dies), with the port it writes to
// --port-file; its destructor stops (SIGTERM, then SIGKILL) and reaps it, so
// a failing test leaks no process. ShardProcess and TestCluster are built on
// it.
//
// Thread-safety: thread-compatible. Start processes from a thread that
// outlives them (the child's death signal follows the starting thread).
#ifndef PSD_COMMON_TESTING_CHILD_PROCESS_H_
#define PSD_COMMON_TESTING_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace psd {
namespace integration {

class ChildProcess {
 public:
  // Runs argv; when `port_file` is not empty, returns once a port is in it.
  // The destructor waits `stop_timeout` after SIGTERM before SIGKILL.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      std::vector<std::string> argv, const std::string& port_file = "",
      absl::Duration start_timeout = absl::Seconds(30),
      absl::Duration stop_timeout = absl::Seconds(15));
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();  // SIGTERM the group, SIGKILL after stop_timeout, reap

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  // SIGKILL to the group and reap: a crash.
  absl::Status Kill();
  // Waits for exit; returns the waitpid status (DEADLINE_EXCEEDED if alive).
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Non-blocking: whether the process has exited (and is reaped).
  bool Exited() { return Reap(); }

 private:
  ChildProcess(pid_t pid, absl::Duration stop_timeout) : pid_(pid), stop_timeout_(stop_timeout) {}
  bool Reap();

  const pid_t pid_;
  const absl::Duration stop_timeout_;
  int port_ = 0;
  bool exited_ = false;
  int wait_status_ = 0;
};

// Starts `args` (args[0] is the binary) as a child in its own process group
// that gets SIGKILL if this thread's process dies, and returns its pid once
// the exec has succeeded. Call it from a thread that outlives the child.
absl::StatusOr<pid_t> SpawnChild(std::vector<std::string> args);

// The port a psd process wrote to `path` (--port-file), once two reads agree
// on a whole number; `last` carries the previous read between polls.
bool ReadPortFile(const std::string& path, std::string* last, int* port);

// INTERNAL "what: strerror(err)".
absl::Status ErrnoError(const std::string& what, int err);

// "exit status 0", "signal 9": a waitpid status for messages.
std::string DescribeWaitStatus(int wait_status);

}  // namespace integration
}  // namespace psd

#endif  // PSD_COMMON_TESTING_CHILD_PROCESS_H_
