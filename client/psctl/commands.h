// How psctl's commands plug in: each command group (ckpt, later status,
// vars, ...) lives in its own file and adds its CLI11 subcommands to the
// root app. A subcommand's callback does the work and stores the process
// exit status in the Context.
#ifndef PSD_CLIENT_PSCTL_COMMANDS_H_
#define PSD_CLIENT_PSCTL_COMMANDS_H_

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "psd/channel_security.h"
#include "psd/internal/coordinator_client.h"

namespace psctl {

struct Context {
  // What main() returns once parsing (and so the command) is done.
  int exit_code = 0;
  // Machine-readable output (global --json).
  bool json = false;
  // The coordinator the cluster commands talk to (global --coordinator).
  std::string coordinator = "127.0.0.1:7070";
  // TLS and bearer token of every channel psctl opens (global --tls-ca,
  // --tls-cert, --tls-key, --token-file).
  psd::ChannelSecurity security;
};

// Prints "psctl: <message>" on one line to stderr and sets a non-zero exit
// code.
void Fail(Context* ctx, const absl::Status& status);

// A client of the coordinator at --coordinator, secured by the TLS and
// token flags, whose calls have `timeout` and one attempt: psctl answers at
// once when the coordinator is down (psd-local polls `psctl status`).
absl::StatusOr<std::unique_ptr<psd::client::internal::CoordinatorClient>> ConnectCoordinator(
    const Context& ctx, absl::Duration timeout);

// `psctl ckpt ...`: checkpoint commands.
void AddCkptCommands(CLI::App* app, Context* ctx);
// `psctl ckpt save|list|latest|restore|policy` under the `ckpt` command.
void AddCkptClusterCommands(CLI::App* ckpt, Context* ctx);

// `psctl status` and `psctl vars list|show|get`.
void AddClusterCommands(CLI::App* app, Context* ctx);

}  // namespace psctl

#endif  // PSD_CLIENT_PSCTL_COMMANDS_H_
