#include "shard_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifndef PSD_BINARY
#error "PSD_BINARY must name the psd executable"
#endif

namespace psd {
namespace integration {

namespace {

absl::Status ErrnoError(const std::string& what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

}  // namespace

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

absl::StatusOr<std::unique_ptr<ShardProcess>> ShardProcess::Start(
    const ShardProcessOptions& options) {
  const char* tmp = std::getenv("TMPDIR");
  std::string dir =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/psd_shard_XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) return ErrnoError("mkdtemp " + dir, errno);
  const std::string port_file = dir + "/port";

  std::vector<std::string> args = {PSD_BINARY,    "--log-level",
                                   "warn",        "shard",
                                   "--id",        std::to_string(options.id),
                                   "--listen",    absl::StrCat("127.0.0.1:", options.port),
                                   "--port-file", port_file};
  if (options.memory_limit_bytes > 0) {
    args.push_back("--memory-limit");
    args.push_back(std::to_string(options.memory_limit_bytes));
  }
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  absl::StatusOr<pid_t> pid = SpawnChild(std::move(args));
  if (!pid.ok()) return pid.status();
  std::unique_ptr<ShardProcess> process(new ShardProcess(*pid, dir, options));

  const absl::Time deadline = absl::Now() + options.start_timeout;
  std::string last;
  int port = 0;
  while (!ReadPortFile(port_file, &last, &port)) {
    if (process->Reap()) {
      return absl::InternalError(absl::StrCat("psd shard exited (",
                                              DescribeWaitStatus(process->wait_status_),
                                              ") before writing its port file"));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("psd shard wrote no port to ", port_file,
                                                      " within ",
                                                      absl::FormatDuration(options.start_timeout)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  process->address_ = absl::StrCat("127.0.0.1:", port);
  process->port_ = port;
  return process;
}

ShardProcess::~ShardProcess() {
  if (!exited_) {
    // The group: anything the shard might have started goes too. The
    // unreaped leader keeps the group id ours until waitpid.
    kill(-pid_, SIGTERM);
    if (!Wait(options_.stop_timeout).ok()) {
      std::fprintf(stderr, "psd shard %d ignored SIGTERM for %s; sending SIGKILL\n", pid_,
                   absl::FormatDuration(options_.stop_timeout).c_str());
      kill(-pid_, SIGKILL);
      while (waitpid(pid_, &wait_status_, 0) < 0 && errno == EINTR) {
      }
      exited_ = true;
    }
  }
  std::remove((dir_ + "/port").c_str());
  rmdir(dir_.c_str());
}

absl::StatusOr<std::unique_ptr<client::ShardClient>> ShardProcess::Connect(
    const client::ClientOptions& options) const {
  return client::ShardClient::Connect(address_, options);
}

absl::Status ShardProcess::Signal(int signal) {
  if (exited_) return absl::FailedPreconditionError("psd shard has already exited");
  if (kill(pid_, signal) != 0) return ErrnoError("kill", errno);
  return absl::OkStatus();
}

absl::Status ShardProcess::Kill() {
  if (exited_) return absl::FailedPreconditionError("psd shard has already exited");
  if (kill(-pid_, SIGKILL) != 0) return ErrnoError("kill", errno);
  while (waitpid(pid_, &wait_status_, 0) < 0) {
    if (errno != EINTR) return ErrnoError("waitpid", errno);
  }
  exited_ = true;
  return absl::OkStatus();
}

namespace {

// A "Key:   123 kB" line of /proc/PID/status, in bytes.
absl::StatusOr<int64_t> ProcStatusBytes(pid_t pid, absl::string_view key) {
  const std::string path = absl::StrCat("/proc/", pid, "/status");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, key) || !absl::ConsumePrefix(&rest, ":")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, "kB");
    int64_t kb;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kb)) break;
    return kb * 1024;
  }
  return absl::NotFoundError(absl::StrCat("no ", key, " in ", path));
}

}  // namespace

absl::StatusOr<int64_t> ShardProcess::RssBytes() const { return ProcStatusBytes(pid_, "VmRSS"); }

absl::StatusOr<int64_t> ShardProcess::PeakRssBytes() const {
  return ProcStatusBytes(pid_, "VmHWM");
}

absl::Status ShardProcess::ResetPeakRss() {
  std::ofstream out(absl::StrCat("/proc/", pid_, "/clear_refs"));
  out << "5";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot reset VmHWM of ", pid_));
  return absl::OkStatus();
}

absl::Status RestartShard(std::unique_ptr<ShardProcess>* process) {
  ShardProcessOptions options = (*process)->options();
  options.port = (*process)->port();
  absl::Status killed = (*process)->Kill();
  if (!killed.ok()) return killed;
  process->reset();
  // The kernel frees the port at once (the listener had SO_REUSEADDR), but
  // retry briefly in case the new bind races the old socket's teardown.
  absl::Status last;
  for (int attempt = 0; attempt < 50; ++attempt) {
    auto started = ShardProcess::Start(options);
    if (started.ok()) {
      *process = *std::move(started);
      return absl::OkStatus();
    }
    last = started.status();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return last;
}

bool ShardProcess::Reap() {
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

absl::StatusOr<int> ShardProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!Reap()) {
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("psd shard still running after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return wait_status_;
}

}  // namespace integration
}  // namespace psd
