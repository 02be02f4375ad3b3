#include "child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace psd {
namespace integration {

absl::Status ErrnoError(const std::string& what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// The port in `path`, once the file holds a whole number. psd publishes the
// file by rename, but a number counts only if two reads agree, so a launcher
// that writes in place cannot hand us half a port.
bool ReadPortFile(const std::string& path, std::string* last, int* port) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string content = buffer.str();
  const bool stable = !content.empty() && content == *last;
  *last = content;
  int value;
  if (!stable || !absl::SimpleAtoi(absl::StripAsciiWhitespace(content), &value)) return false;
  if (value <= 0 || value > 65535) return false;
  *port = value;
  return true;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

absl::StatusOr<pid_t> SpawnChild(std::vector<std::string> args) {
  // Everything the child needs is built before fork: after it, only
  // async-signal-safe calls are allowed (gRPC threads may exist).
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  // The child reports a failed exec through this pipe; a successful exec
  // closes it (O_CLOEXEC) and the parent reads EOF.
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return ErrnoError("pipe2", errno);
  const pid_t parent = getpid();
  const long max_fd = sysconf(_SC_OPEN_MAX);
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return ErrnoError("fork", err);
  }
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    // The child keeps none of the test's descriptors: a socket a test opens
    // without O_CLOEXEC (Boost.Asio's, the fault proxy's) would otherwise
    // stay open in every child started after it, and a connection the
    // proxy closes or resets would not end for its peer while the child
    // lives. The exec error pipe is O_CLOEXEC already.
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
      for (long fd = 3; fd < max_fd; ++fd) fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
    }
    execv(argv[0], argv.data());
    const int err = errno;
    ssize_t ignored = write(pipe_fds[1], &err, sizeof err);
    (void)ignored;
    _exit(127);
  }
  // Also set here so the group exists before we might signal it.
  setpgid(pid, pid);
  close(pipe_fds[1]);
  int exec_errno = 0;
  ssize_t n;
  do {
    n = read(pipe_fds[0], &exec_errno, sizeof exec_errno);
  } while (n < 0 && errno == EINTR);
  close(pipe_fds[0]);
  if (n == sizeof exec_errno) {
    waitpid(pid, nullptr, 0);  // it exited with 127 right after the failed exec
    return ErrnoError(absl::StrCat("exec ", args[0]), exec_errno);
  }
  return pid;
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(std::vector<std::string> args,
                                                                  const std::string& port_file,
                                                                  absl::Duration start_timeout,
                                                                  absl::Duration stop_timeout) {
  // Named in messages: the binary and its subcommand ("psd shard").
  const std::string what = absl::StrCat(args[0], " ", args.size() > 3 ? args[3] : "");
  absl::StatusOr<pid_t> pid = SpawnChild(std::move(args));
  if (!pid.ok()) return pid.status();
  std::unique_ptr<ChildProcess> process(new ChildProcess(*pid, stop_timeout));
  if (port_file.empty()) return process;

  const absl::Time deadline = absl::Now() + start_timeout;
  std::string last;
  int port = 0;
  while (!ReadPortFile(port_file, &last, &port)) {
    if (process->Reap()) {
      return absl::InternalError(absl::StrCat(what, " exited (", DescribeWaitStatus(process->wait_status_),
                                              ") before writing its port file"));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("no port in ", port_file, " within ",
                                                      absl::FormatDuration(start_timeout)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  process->port_ = port;
  return process;
}

ChildProcess::~ChildProcess() {
  if (exited_) return;
  // The group: anything the child started goes too. The unreaped leader
  // keeps the group id ours until waitpid.
  kill(-pid_, SIGTERM);
  if (!Wait(stop_timeout_).ok()) {
    std::fprintf(stderr, "process %d ignored SIGTERM for %s; sending SIGKILL\n", pid_,
                 absl::FormatDuration(stop_timeout_).c_str());
    kill(-pid_, SIGKILL);
    while (waitpid(pid_, &wait_status_, 0) < 0 && errno == EINTR) {
    }
    exited_ = true;
  }
}

absl::Status ChildProcess::Kill() {
  if (exited_) return absl::OkStatus();
  kill(-pid_, SIGKILL);
  while (waitpid(pid_, &wait_status_, 0) < 0) {
    if (errno != EINTR) return ErrnoError("waitpid", errno);
  }
  exited_ = true;
  return absl::OkStatus();
}

bool ChildProcess::Reap() {
  if (exited_) return true;
  int status;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    exited_ = true;
    wait_status_ = status;
  }
  return exited_;
}

absl::StatusOr<int> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!Reap()) {
    if (absl::Now() > deadline) return absl::DeadlineExceededError("still running");
    absl::SleepFor(absl::Milliseconds(10));
  }
  return wait_status_;
}

}  // namespace integration
}  // namespace psd
