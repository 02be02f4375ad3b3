#include "shard_process.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifndef PSD_BINARY
#error "PSD_BINARY must name the psd executable"
#endif

namespace psd {
namespace integration {

absl::StatusOr<std::unique_ptr<ShardProcess>> ShardProcess::Start(
    const ShardProcessOptions& options) {
  const char* tmp = std::getenv("TMPDIR");
  std::string dir =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/psd_shard_XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) return ErrnoError("mkdtemp " + dir, errno);
  std::unique_ptr<ShardProcess> process(new ShardProcess(dir, options));
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
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
      std::move(args), port_file, options.start_timeout, options.stop_timeout);
  if (!child.ok()) return child.status();
  process->child_ = *std::move(child);
  process->address_ = absl::StrCat("127.0.0.1:", process->child_->port());
  return process;
}

ShardProcess::~ShardProcess() {
  child_.reset();  // stops and reaps the shard (and its group)
  std::remove((dir_ + "/port").c_str());
  rmdir(dir_.c_str());
}

absl::StatusOr<std::unique_ptr<client::ShardClient>> ShardProcess::Connect(
    const client::ClientOptions& options) const {
  client::ClientOptions chosen = options;
  // The suites run once more over the unary calls (the protocol older
  // clients speak), with PSD_TEST_DATA_STREAM=0.
  const char* stream = std::getenv("PSD_TEST_DATA_STREAM");
  if (stream != nullptr && std::string(stream) == "0") chosen.data_stream = false;
  return client::ShardClient::Connect(address_, chosen);
}

absl::Status ShardProcess::Signal(int signal) {
  if (child_->Exited()) return absl::FailedPreconditionError("psd shard has already exited");
  if (kill(child_->pid(), signal) != 0) return ErrnoError("kill", errno);
  return absl::OkStatus();
}

absl::Status ShardProcess::Kill() {
  if (child_->Exited()) return absl::FailedPreconditionError("psd shard has already exited");
  return child_->Kill();
}

absl::StatusOr<int> ShardProcess::Wait(absl::Duration timeout) { return child_->Wait(timeout); }

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

absl::StatusOr<int64_t> ShardProcess::RssBytes() const { return ProcStatusBytes(pid(), "VmRSS"); }

absl::StatusOr<int64_t> ShardProcess::PeakRssBytes() const {
  return ProcStatusBytes(pid(), "VmHWM");
}

absl::Status ShardProcess::ResetPeakRss() {
  std::ofstream out(absl::StrCat("/proc/", pid(), "/clear_refs"));
  out << "5";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot reset VmHWM of ", pid()));
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

}  // namespace integration
}  // namespace psd
