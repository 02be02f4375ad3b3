// `psctl ckpt ...`: checkpoint commands. `inspect` works offline on the
// files, like TensorFlow's inspect_checkpoint; the cluster commands (save,
// list, latest, restore, policy) come with the coordinator.
#include <cctype>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/bundle_reader.h"
#include "checkpoint/tensor_bundle.h"
#include "commands.h"
#include "output.h"

namespace psctl {
namespace {

using psd::checkpoint::BundleDataTypeName;
using psd::checkpoint::BundleReader;

struct InspectOptions {
  std::string prefix;
  bool values = false;
  bool verify = false;
  std::string tensor;
  int64_t max_values = 10;
};

// Accepts PREFIX, PREFIX.index or one of PREFIX's data files
// (PREFIX.data-00000-of-00001).
std::string NormalizePrefix(const std::string& path) {
  if (absl::EndsWith(path, ".index")) return path.substr(0, path.size() - 6);
  const size_t pos = path.rfind(".data-");
  if (pos != std::string::npos) {
    const std::string tail = path.substr(pos + 6);  // "00000-of-00001"
    bool digits = tail.size() == 14 && tail.substr(5, 4) == "-of-";
    for (size_t i : {0, 1, 2, 3, 4, 9, 10, 11, 12, 13}) {
      digits = digits && std::isdigit(static_cast<unsigned char>(tail[i]));
    }
    if (digits) return path.substr(0, pos);
  }
  return path;
}

std::string SlicesString(const BundleReader::TensorInfo& info) {
  std::vector<std::string> parts;
  for (const auto& s : info.slices) parts.push_back(s.ToString());
  return absl::StrJoin(parts, " ");
}

std::string ShapeJson(const psd::TensorShape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape.dims(), ","), "]");
}

void RunInspect(const InspectOptions& opts, Context* ctx) {
  auto opened = BundleReader::Open(NormalizePrefix(opts.prefix));
  if (!opened.ok()) return Fail(ctx, opened.status());
  const BundleReader& reader = **opened;

  std::vector<BundleReader::TensorInfo> tensors;
  if (opts.tensor.empty()) {
    tensors = reader.ListTensors();
  } else {
    auto info = reader.GetTensorInfo(opts.tensor);
    if (!info.ok()) return Fail(ctx, info.status());
    tensors.push_back(*std::move(info));
  }

  // Values are read (and so every CRC checked) before anything is printed,
  // so a damaged checkpoint gives one error line, not half a listing.
  const bool read = opts.values || opts.verify;
  std::vector<std::unique_ptr<psd::Tensor>> values(tensors.size());
  if (read) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!psd::IsSupportedDataType(tensors[i].dtype)) continue;  // listed, not readable
      auto t = reader.ReadTensor(tensors[i].name);
      if (!t.ok()) return Fail(ctx, t.status());
      values[i] = std::make_unique<psd::Tensor>(*std::move(t));
    }
  }
  const int64_t limit = opts.max_values;

  if (ctx->json) {
    std::string out = absl::StrCat(
        "{\"prefix\":", JsonString(reader.prefix()),
        ",\"num_shards\":", reader.header().num_shards(),
        ",\"version\":{\"producer\":", reader.header().version().producer(),
        ",\"min_consumer\":", reader.header().version().min_consumer(), "},\"tensors\":[");
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& info = tensors[i];
      std::vector<std::string> slices;
      for (const auto& s : info.slices) slices.push_back(JsonString(s.ToString()));
      absl::StrAppend(&out, i > 0 ? "," : "", "{\"name\":", JsonString(info.name),
                      ",\"dtype\":", JsonString(BundleDataTypeName(info.dtype)),
                      ",\"shape\":", ShapeJson(info.shape),
                      ",\"num_elements\":", info.shape.num_elements(), ",\"slices\":[",
                      absl::StrJoin(slices, ","), "]");
      if (opts.values && values[i] != nullptr) {
        const auto elems = FormatElements(*values[i], limit, /*json=*/true, -1);
        absl::StrAppend(
            &out, ",\"values\":[", absl::StrJoin(elems, ","), "],\"values_truncated\":",
            static_cast<int64_t>(elems.size()) < info.shape.num_elements() ? "true" : "false");
      }
      out += "}";
    }
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
    return;
  }

  std::vector<std::vector<std::string>> rows = {{"NAME", "DTYPE", "SHAPE", "SLICES"}};
  for (const auto& info : tensors) {
    rows.push_back(
        {info.name, BundleDataTypeName(info.dtype), info.shape.ToString(), SlicesString(info)});
  }
  std::string out =
      absl::StrCat("checkpoint ", reader.prefix(), ": ", tensors.size(),
                   tensors.size() == 1 ? " tensor" : " tensors", ", ", reader.header().num_shards(),
                   " data file", reader.header().num_shards() == 1 ? "" : "s", "\n");
  if (!opts.values) {
    out += FormatTable(rows);
  } else {
    // One block per tensor: the row, then its values.
    const std::string table = FormatTable(rows);
    std::vector<absl::string_view> lines = absl::StrSplit(table, '\n');
    out += std::string(lines[0]) + "\n";
    for (size_t i = 0; i < tensors.size(); ++i) {
      out += std::string(lines[i + 1]) + "\n";
      if (values[i] == nullptr) {
        out += "    (values of this dtype cannot be read by psd)\n";
        continue;
      }
      const auto elems = FormatElements(*values[i], limit, /*json=*/false, 64);
      const int64_t n = tensors[i].shape.num_elements();
      std::string shown = absl::StrJoin(elems, ", ");
      if (static_cast<int64_t>(elems.size()) < n) {
        absl::StrAppend(&shown, ", ... (", n - static_cast<int64_t>(elems.size()), " more)");
      }
      absl::StrAppend(&out, "    = {", shown, "}\n");
    }
  }
  if (opts.verify) absl::StrAppend(&out, "verified: every tensor's size and checksum are good\n");
  std::fputs(out.c_str(), stdout);
}

}  // namespace

void AddCkptCommands(CLI::App* app, Context* ctx) {
  CLI::App* ckpt = app->add_subcommand("ckpt", "Checkpoints");
  ckpt->require_subcommand(1);
  ckpt->fallthrough();

  auto opts = std::make_shared<InspectOptions>();
  CLI::App* inspect = ckpt->add_subcommand(
      "inspect",
      "List a checkpoint's tensors (name, dtype, shape, slices) offline from its files, like "
      "TensorFlow's inspect_checkpoint");
  inspect->fallthrough();
  inspect->add_option("prefix", opts->prefix, "Checkpoint prefix (PREFIX or PREFIX.index)")
      ->required();
  inspect->add_flag("--values", opts->values, "Also print values (abbreviated, see --max-values)");
  inspect->add_flag("--verify", opts->verify, "Read every tensor and check its size and checksum");
  inspect->add_option("--tensor", opts->tensor, "Only this tensor");
  inspect
      ->add_option("--max-values", opts->max_values,
                   "Values shown per tensor with --values; -1 for all")
      ->capture_default_str();
  inspect->callback([opts, ctx] { RunInspect(*opts, ctx); });
  AddCkptClusterCommands(ckpt, ctx);
}

}  // namespace psctl
