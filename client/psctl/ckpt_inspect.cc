#include "ckpt_inspect.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/checkpoint_state.h"
#include "checkpoint/file_system.h"
#include "checkpoint/tensor_bundle.h"
#include "checkpoint/tensor_slice.h"
#include "output.h"
#include "psd/status.h"

namespace psctl {
namespace {

using psd::checkpoint::BundleDataTypeName;
using psd::checkpoint::BundleReader;
using psd::checkpoint::TensorSlice;
using TensorInfo = BundleReader::TensorInfo;

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

std::string SlicesString(const TensorInfo& info) {
  std::vector<std::string> parts;
  for (const auto& s : info.slices) parts.push_back(s.ToString());
  return absl::StrJoin(parts, " ");
}

std::string ShapeJson(const psd::TensorShape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape.dims(), ","), "]");
}

constexpr const char* kTableSuffixes[4] = {"-keys", "-values", "-freqs", "-versions"};

// "v/part_3" -> ("v", 3); "v" -> ("v", nullopt).
std::pair<std::string, std::optional<int64_t>> SplitPart(const std::string& source) {
  const size_t slash = source.rfind("/part_");
  if (slash != std::string::npos) {
    const std::string k = source.substr(slash + 6);
    int64_t index = 0;
    if (!k.empty() && std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
        absl::SimpleAtoi(k, &index)) {
      return {source.substr(0, slash), index};
    }
  }
  return {source, std::nullopt};
}

// One table's sample rows: the first `n` rows in part order.
struct Samples {
  std::vector<std::string> keys, freqs, versions;
  std::vector<std::vector<std::string>> values;  // the first max_values of each row
  std::vector<bool> truncated;
};

absl::StatusOr<Samples> ReadSamples(const BundleReader& reader, const CheckpointTable& table,
                                    int64_t n, int64_t max_values, bool json) {
  Samples out;
  for (size_t p = 0; p < table.parts.size() && n > 0; ++p) {
    const int64_t m = std::min(n, table.part_rows[p]);
    if (m == 0) continue;
    n -= m;
    const std::string& source = table.parts[p];
    PSD_ASSIGN_OR_RETURN(TensorSlice rows1, TensorSlice::Make({0}, {m}));
    PSD_ASSIGN_OR_RETURN(TensorSlice rows2, TensorSlice::Make({0, 0}, {m, table.dim}));
    std::vector<std::string>* const columns[3] = {&out.keys, &out.freqs, &out.versions};
    const char* const suffixes[3] = {"-keys", "-freqs", "-versions"};
    for (int c = 0; c < 3; ++c) {
      PSD_ASSIGN_OR_RETURN(psd::Tensor t,
                           reader.ReadSlice(absl::StrCat(source, suffixes[c]), rows1));
      for (std::string& e : FormatElements(t, -1, json, -1)) columns[c]->push_back(std::move(e));
    }
    PSD_ASSIGN_OR_RETURN(psd::Tensor values,
                         reader.ReadSlice(absl::StrCat(source, "-values"), rows2));
    const std::vector<std::string> all = FormatElements(values, -1, json, -1);
    const int64_t shown = max_values < 0 ? table.dim : std::min(max_values, table.dim);
    for (int64_t i = 0; i < m; ++i) {
      out.values.emplace_back(all.begin() + i * table.dim, all.begin() + i * table.dim + shown);
      out.truncated.push_back(shown < table.dim);
    }
  }
  return out;
}

}  // namespace

void GroupTables(const std::vector<TensorInfo>& tensors, std::vector<CheckpointTable>* tables,
                 std::vector<TensorInfo>* others) {
  std::map<std::string, const TensorInfo*> by_name;
  for (const TensorInfo& info : tensors) by_name[info.name] = &info;
  // Table name -> (part index or -1, source).
  std::map<std::string, std::vector<std::pair<int64_t, std::string>>> sources;
  std::map<std::string, bool> in_table;
  for (const TensorInfo& info : tensors) {
    if (!absl::EndsWith(info.name, "-keys")) continue;
    const std::string source = info.name.substr(0, info.name.size() - 5);
    const TensorInfo* parts[4] = {&info, nullptr, nullptr, nullptr};
    bool complete = true;
    for (int i = 1; i < 4; ++i) {
      auto it = by_name.find(absl::StrCat(source, kTableSuffixes[i]));
      complete = complete && it != by_name.end();
      if (complete) parts[i] = it->second;
    }
    if (!complete) continue;
    // The shapes DeepRec's layout gives: [n] keys, freqs and versions beside
    // [n, dim] values, unsliced.
    const int64_t n = info.shape.rank() == 1 ? info.shape.dim(0) : -1;
    bool fits = n >= 0 && parts[1]->shape.rank() == 2 && parts[1]->shape.dim(0) == n;
    for (int i : {0, 2, 3}) {
      fits = fits && parts[i]->shape.rank() == 1 && parts[i]->shape.dim(0) == n &&
             parts[i]->slices.empty();
    }
    fits = fits && parts[1]->slices.empty();
    if (!fits) continue;
    const auto [table, index] = SplitPart(source);
    sources[table].push_back({index.value_or(-1), source});
    for (int i = 0; i < 4; ++i) in_table[parts[i]->name] = true;
  }
  for (auto& [name, list] : sources) {
    std::sort(list.begin(), list.end());
    CheckpointTable t;
    t.name = name;
    for (const auto& [index, source] : list) {
      const TensorInfo& keys = *by_name.at(absl::StrCat(source, "-keys"));
      const TensorInfo& values = *by_name.at(absl::StrCat(source, "-values"));
      if (t.parts.empty()) {
        t.dtype = values.dtype;
        t.key_dtype = keys.dtype;
        t.dim = values.shape.dim(1);
      }
      t.parts.push_back(source);
      t.part_rows.push_back(keys.shape.dim(0));
      t.rows += keys.shape.dim(0);
    }
    tables->push_back(std::move(t));
  }
  for (const TensorInfo& info : tensors) {
    if (!in_table.count(info.name)) others->push_back(info);
  }
}

absl::StatusOr<std::string> InspectCheckpoint(const InspectOptions& opts, bool json) {
  std::string prefix = NormalizePrefix(opts.prefix);
  std::error_code ec;
  if (std::filesystem::is_directory(prefix, ec)) {
    // A directory: its latest checkpoint, as restore takes one.
    absl::StatusOr<std::string> latest =
        psd::checkpoint::LatestCheckpoint(psd::checkpoint::FileSystem::Default(), prefix, "");
    if (!latest.ok()) {
      return absl::NotFoundError(absl::StrCat(prefix, " is a directory with no latest checkpoint (",
                                              latest.status().message(),
                                              "); give a checkpoint's PREFIX"));
    }
    prefix = *std::move(latest);
  }
  PSD_ASSIGN_OR_RETURN(auto opened, BundleReader::Open(prefix));
  const BundleReader& reader = *opened;
  // Data files missing or cut short fail here, as a restore would, though
  // only the index is listed.
  PSD_RETURN_IF_ERROR(reader.CheckDataFiles());

  const std::vector<TensorInfo> all = reader.ListTensors();
  std::vector<CheckpointTable> tables;
  std::vector<TensorInfo> tensors;
  GroupTables(all, &tables, &tensors);
  if (!opts.tensor.empty()) {
    auto table = std::find_if(tables.begin(), tables.end(),
                              [&](const CheckpointTable& t) { return t.name == opts.tensor; });
    if (table != tables.end()) {
      tables = {*table};
      tensors.clear();
    } else {
      PSD_ASSIGN_OR_RETURN(TensorInfo info, reader.GetTensorInfo(opts.tensor));
      tables.clear();
      tensors = {std::move(info)};
    }
  }
  int64_t table_tensors = 0;
  for (const CheckpointTable& t : tables) table_tensors += 4 * static_cast<int64_t>(t.parts.size());

  // Values are read (and so every CRC checked) before anything is
  // formatted, so a damaged checkpoint gives one error line, not half a
  // listing. --verify reads the tables' tensors too.
  std::vector<std::unique_ptr<psd::Tensor>> values(tensors.size());
  if (opts.values || opts.verify) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!psd::IsSupportedDataType(tensors[i].dtype)) continue;  // listed, not readable
      PSD_ASSIGN_OR_RETURN(psd::Tensor t, reader.ReadTensor(tensors[i].name));
      values[i] = std::make_unique<psd::Tensor>(std::move(t));
    }
  }
  if (opts.verify) {
    for (const CheckpointTable& t : tables) {
      for (const std::string& source : t.parts) {
        for (const char* suffix : kTableSuffixes) {
          PSD_RETURN_IF_ERROR(reader.ReadTensor(absl::StrCat(source, suffix)).status());
        }
      }
    }
  }
  std::vector<Samples> samples(tables.size());
  if (opts.rows > 0) {
    for (size_t i = 0; i < tables.size(); ++i) {
      PSD_ASSIGN_OR_RETURN(samples[i],
                           ReadSamples(reader, tables[i], opts.rows, opts.max_values, json));
    }
  }
  const int64_t limit = opts.max_values;

  if (json) {
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
    out += "],\"tables\":[";
    for (size_t i = 0; i < tables.size(); ++i) {
      const CheckpointTable& t = tables[i];
      std::vector<std::string> parts;
      for (size_t p = 0; p < t.parts.size(); ++p) {
        parts.push_back(absl::StrCat("{\"name\":", JsonString(t.parts[p]),
                                     ",\"rows\":", t.part_rows[p], "}"));
      }
      absl::StrAppend(&out, i > 0 ? "," : "", "{\"name\":", JsonString(t.name),
                      ",\"dtype\":", JsonString(BundleDataTypeName(t.dtype)),
                      ",\"key_dtype\":", JsonString(BundleDataTypeName(t.key_dtype)),
                      ",\"embedding_dim\":", t.dim, ",\"rows\":", t.rows, ",\"parts\":[",
                      absl::StrJoin(parts, ","), "]");
      if (opts.rows > 0) {
        const Samples& s = samples[i];
        std::vector<std::string> rows;
        for (size_t r = 0; r < s.keys.size(); ++r) {
          rows.push_back(absl::StrCat("{\"key\":", s.keys[r], ",\"freq\":", s.freqs[r],
                                      ",\"version\":", s.versions[r], ",\"values\":[",
                                      absl::StrJoin(s.values[r], ","), "],\"values_truncated\":",
                                      s.truncated[r] ? "true" : "false", "}"));
        }
        absl::StrAppend(&out, ",\"samples\":[", absl::StrJoin(rows, ","), "]");
      }
      out += "}";
    }
    out += "]}\n";
    return out;
  }

  const int64_t shards = reader.header().num_shards();
  std::string out = absl::StrCat("checkpoint ", reader.prefix(), ": ", tensors.size(),
                                 tensors.size() == 1 ? " tensor" : " tensors");
  if (!tables.empty()) {
    absl::StrAppend(&out, ", ", tables.size(),
                    tables.size() == 1 ? " embedding table (" : " embedding tables (",
                    table_tensors, " tensors)");
  }
  absl::StrAppend(&out, ", ", shards, " data file", shards == 1 ? "" : "s", "\n");
  if (!tensors.empty() || tables.empty()) {
    std::vector<std::vector<std::string>> rows = {{"NAME", "DTYPE", "SHAPE", "SLICES"}};
    for (const auto& info : tensors) {
      rows.push_back(
          {info.name, BundleDataTypeName(info.dtype), info.shape.ToString(), SlicesString(info)});
    }
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
  }
  if (!tables.empty()) {
    if (!tensors.empty()) out += "\n";
    std::vector<std::vector<std::string>> rows = {
        {"TABLE", "DTYPE", "KEY DTYPE", "DIM", "PARTS", "ROWS"}};
    for (const CheckpointTable& t : tables) {
      rows.push_back({t.name, BundleDataTypeName(t.dtype), BundleDataTypeName(t.key_dtype),
                      absl::StrCat(t.dim), absl::StrCat(t.parts.size()), absl::StrCat(t.rows)});
    }
    const std::string table = FormatTable(rows);
    std::vector<absl::string_view> lines = absl::StrSplit(table, '\n');
    out += std::string(lines[0]) + "\n";
    for (size_t i = 0; i < tables.size(); ++i) {
      out += std::string(lines[i + 1]) + "\n";
      if (opts.rows <= 0) continue;
      // Its sample rows, indented under it.
      const Samples& s = samples[i];
      std::vector<std::vector<std::string>> sample_rows = {{"KEY", "FREQ", "VERSION", "VALUES"}};
      for (size_t r = 0; r < s.keys.size(); ++r) {
        std::string shown = absl::StrJoin(s.values[r], ", ");
        if (s.truncated[r]) {
          absl::StrAppend(&shown, ", ... (",
                          tables[i].dim - static_cast<int64_t>(s.values[r].size()), " more)");
        }
        sample_rows.push_back({s.keys[r], s.freqs[r], s.versions[r], absl::StrCat("{", shown, "}")});
      }
      for (absl::string_view line : absl::StrSplit(FormatTable(sample_rows), '\n', absl::SkipEmpty())) {
        absl::StrAppend(&out, "    ", line, "\n");
      }
    }
  }
  if (opts.verify) absl::StrAppend(&out, "verified: every tensor's size and checksum are good\n");
  return out;
}

}  // namespace psctl
