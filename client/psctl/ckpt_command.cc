// `psctl ckpt ...`: checkpoint commands. `inspect` works offline on the
// files, like TensorFlow's inspect_checkpoint; the cluster commands (save,
// list, latest, restore, policy) come with the coordinator.
#include <cstdio>
#include <memory>
#include <string>

#include "ckpt_inspect.h"
#include "commands.h"

namespace psctl {
namespace {

void RunInspect(const InspectOptions& opts, Context* ctx) {
  auto out = InspectCheckpoint(opts, ctx->json);
  if (!out.ok()) return Fail(ctx, out.status());
  std::fputs(out->c_str(), stdout);
}

}  // namespace

void AddCkptCommands(CLI::App* app, Context* ctx) {
  CLI::App* ckpt = app->add_subcommand("ckpt", "Checkpoints");
  ckpt->require_subcommand(1);
  ckpt->fallthrough();

  auto opts = std::make_shared<InspectOptions>();
  CLI::App* inspect = ckpt->add_subcommand(
      "inspect",
      "List a checkpoint's tensors (name, dtype, shape, slices) and embedding tables (parts, "
      "rows, dim) offline from its files, like TensorFlow's inspect_checkpoint");
  inspect->fallthrough();
  inspect->add_option("prefix", opts->prefix, "Checkpoint prefix (PREFIX or PREFIX.index)")
      ->required();
  inspect->add_flag("--values", opts->values, "Also print values (abbreviated, see --max-values)");
  inspect->add_flag("--verify", opts->verify, "Read every tensor and check its size and checksum");
  inspect->add_option("--tensor", opts->tensor, "Only this tensor or embedding table");
  inspect
      ->add_option("--max-values", opts->max_values,
                   "Values shown per tensor with --values; -1 for all")
      ->capture_default_str();
  inspect
      ->add_option("--rows", opts->rows,
                   "Sample rows shown per embedding table: key, freq, version and the first "
                   "--max-values values")
      ->check(CLI::NonNegativeNumber);
  inspect->callback([opts, ctx] { RunInspect(*opts, ctx); });
  AddCkptClusterCommands(ckpt, ctx);
}

}  // namespace psctl
