// psctl: administer a psd cluster and its checkpoints.
#include <cstdio>

#include "CLI/CLI.hpp"
#include "absl/strings/str_replace.h"
#include "commands.h"

namespace psctl {

void Fail(Context* ctx, const absl::Status& status) {
  // One line, so scripts can show it as is.
  std::string message = absl::StrReplaceAll(status.message(), {{"\n", " "}});
  std::fprintf(stderr, "psctl: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               message.c_str());
  ctx->exit_code = 1;
}

absl::StatusOr<std::unique_ptr<psd::client::internal::CoordinatorClient>> ConnectCoordinator(
    const Context& ctx, absl::Duration timeout) {
  psd::client::internal::CoordinatorClientOptions options;
  options.security = ctx.security;
  options.call.timeout = timeout;
  return psd::client::internal::CoordinatorClient::Create(ctx.coordinator, options);
}

}  // namespace psctl

int main(int argc, char** argv) {
  CLI::App app{"psctl: administer a psd parameter-server cluster and its checkpoints"};
  app.require_subcommand(1);
  psctl::Context ctx;
  app.add_flag("--json", ctx.json, "Print machine-readable JSON");
  app.add_option("--coordinator", ctx.coordinator, "Coordinator HOST:PORT")
      ->capture_default_str();
  app.add_option("--tls-ca", ctx.security.tls_ca, "PEM CA that signs the servers' certificates");
  app.add_option("--tls-cert", ctx.security.tls_cert, "PEM client certificate (mutual TLS)");
  app.add_option("--tls-key", ctx.security.tls_key, "PEM private key of --tls-cert");
  app.add_option("--token-file", ctx.security.token_file,
                 "File with the bearer token (the token alone, or \"<role> <token>\" lines)");
  psctl::AddCkptCommands(&app, &ctx);
  psctl::AddClusterCommands(&app, &ctx);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Usage errors too end in one line naming what is wrong.
    std::fprintf(stderr, "psctl: usage: %s (see psctl --help)\n",
                 absl::StrReplaceAll(e.what(), {{"\n", " "}}).c_str());
    return 2;
  }
  return ctx.exit_code;
}
