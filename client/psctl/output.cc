#include "output.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "psd/dtype.h"

namespace psctl {
namespace {

// The shortest %g form that reads back as the same value.
template <typename T>
std::string ShortestDecimal(T v, int max_digits) {
  for (int digits = 6; digits < max_digits; ++digits) {
    std::string s = absl::StrFormat("%.*g", digits, static_cast<double>(v));
    if (static_cast<T>(std::strtod(s.c_str(), nullptr)) == v) return s;
  }
  return absl::StrFormat("%.*g", max_digits, static_cast<double>(v));
}

template <typename T>
std::string Floating(T v, int max_digits, bool json) {
  const double d = static_cast<double>(v);
  if (std::isnan(d)) return json ? "\"NaN\"" : "nan";
  if (std::isinf(d)) {
    if (json) return d > 0 ? "\"Infinity\"" : "\"-Infinity\"";
    return d > 0 ? "inf" : "-inf";
  }
  return ShortestDecimal(v, max_digits);
}

}  // namespace

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out.push_back(ch);
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double v) { return Floating(v, 17, /*json=*/true); }

std::vector<std::string> FormatElements(const psd::Tensor& t, int64_t max_elements, bool json,
                                        int64_t max_string_bytes) {
  const int64_t n = max_elements < 0 ? t.num_elements() : std::min(t.num_elements(), max_elements);
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    switch (t.dtype()) {
      case psd::DT_FLOAT:
        out.push_back(Floating(t.data<float>()[i], 9, json));
        break;
      case psd::DT_DOUBLE:
        out.push_back(Floating(t.data<double>()[i], 17, json));
        break;
      case psd::DT_HALF:
        out.push_back(Floating(static_cast<float>(t.data<psd::half>()[i]), 9, json));
        break;
      case psd::DT_BFLOAT16:
        out.push_back(Floating(static_cast<float>(t.data<psd::bfloat16>()[i]), 9, json));
        break;
      case psd::DT_BOOL:
        // The byte, not a bool load: a checkpoint file may hold any byte.
        out.push_back(t.bytes()[i] != 0 ? "true" : "false");
        break;
      case psd::DT_INT8:
        out.push_back(absl::StrCat(t.data<int8_t>()[i]));
        break;
      case psd::DT_INT16:
        out.push_back(absl::StrCat(t.data<int16_t>()[i]));
        break;
      case psd::DT_INT32:
        out.push_back(absl::StrCat(t.data<int32_t>()[i]));
        break;
      case psd::DT_INT64:
        out.push_back(absl::StrCat(t.data<int64_t>()[i]));
        break;
      case psd::DT_UINT8:
        out.push_back(absl::StrCat(t.data<uint8_t>()[i]));
        break;
      case psd::DT_STRING: {
        const std::string& s = t.strings()[i];
        if (json) {
          out.push_back(JsonString(s));
        } else if (max_string_bytes >= 0 && static_cast<int64_t>(s.size()) > max_string_bytes) {
          out.push_back(absl::StrCat("\"", absl::CHexEscape(s.substr(0, max_string_bytes)),
                                     "\"... (", s.size(), " bytes)"));
        } else {
          out.push_back(absl::StrCat("\"", absl::CHexEscape(s), "\""));
        }
        break;
      }
      default:
        out.push_back("?");
        break;
    }
  }
  return out;
}

std::string FormatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(widths[c] - row[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace psctl

namespace psctl {

std::string FormatBytes(int64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(n, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

namespace {

std::string Duration(double seconds) {
  if (seconds < 60) return absl::StrFormat("%.0f s", std::ceil(seconds));
  const int64_t s = static_cast<int64_t>(std::ceil(seconds));
  if (s < 3600) return absl::StrFormat("%d:%02d", s / 60, s % 60);
  return absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
}

}  // namespace

std::string FormatProgress(absl::string_view verb, int64_t done, int64_t total, double seconds,
                           int width) {
  done = std::max<int64_t>(done, 0);
  if (total > 0) done = std::min(done, total);
  const double rate = seconds > 0 && done > 0 ? done / seconds : 0;
  std::string tail;
  if (total > 0) {
    const int percent = static_cast<int>(100.0 * static_cast<double>(done) / total);
    tail = absl::StrFormat(" %3d%%  %s / %s", percent, FormatBytes(done), FormatBytes(total));
  } else {
    tail = absl::StrCat("  ", FormatBytes(done));
  }
  if (rate > 0) absl::StrAppend(&tail, "  ", FormatBytes(static_cast<int64_t>(rate)), "/s");
  if (total > 0 && rate > 0) {
    absl::StrAppend(&tail, "  ETA ", Duration((total - done) / rate));
  } else {
    absl::StrAppend(&tail, "  ", Duration(seconds));
  }
  std::string head(verb);
  // The bar takes what the text leaves, between 10 and 40 columns.
  const int bar = std::min<int>(40, width - static_cast<int>(head.size() + tail.size()) - 3);
  if (total > 0 && bar >= 10) {
    const int filled = static_cast<int>(static_cast<double>(bar) * done / total);
    absl::StrAppend(&head, " [", std::string(filled, '#'), std::string(bar - filled, '.'), "]");
  }
  std::string line = head + tail;
  if (width > 0 && static_cast<int>(line.size()) > width) line.resize(width);
  return line;
}

namespace {

// "(2/5)" / "move 2 of 5": the running move's place in the plan.
int MoveNumber(const psd::MoveProgressResponse& p) {
  return p.finished() ? p.moves_done() : p.moves_done() + 1;
}

std::string WritesText(uint64_t n) {
  return absl::StrCat(n, n == 1 ? " write" : " writes");
}

}  // namespace

std::string FormatMoveProgress(const psd::MoveProgressResponse& p, int width) {
  std::string verb =
      absl::StrCat("moving ", p.part(), " ", p.source_shard(), "->", p.target_shard());
  if (p.moves_planned() > 1) {
    absl::StrAppend(&verb, " (", MoveNumber(p), "/", p.moves_planned(), ")");
  }
  absl::StrAppend(&verb, " ", p.phase().empty() ? "starting" : p.phase());
  if (p.forwarded_writes() > 0) absl::StrAppend(&verb, ", ", WritesText(p.forwarded_writes()));
  return FormatProgress(verb, p.copied_bytes(), p.total_bytes(), p.seconds(), width);
}

std::string MoveProgressLine(const psd::MoveProgressResponse& p) {
  std::string line = absl::StrCat("moving ", p.part(), " from shard ", p.source_shard(),
                                  " to shard ", p.target_shard());
  if (p.moves_planned() > 1) {
    absl::StrAppend(&line, " (move ", MoveNumber(p), " of ", p.moves_planned(), ")");
  }
  absl::StrAppend(&line, ": ", p.phase().empty() ? "starting" : p.phase());
  if (p.total_bytes() > 0) {
    absl::StrAppend(&line, ", ", FormatBytes(std::min(p.copied_bytes(), p.total_bytes())), " of ",
                    FormatBytes(p.total_bytes()));
  }
  absl::StrAppend(&line, ", ", WritesText(p.forwarded_writes()), " forwarded");
  return line;
}

std::string VariableKindText(const psd::VariableHandle& h) {
  if (!h.has_embedding()) return "dense";
  const psd::EmbeddingSpec& e = h.embedding();
  return absl::StrCat(e.slot_of().empty() ? "table" : absl::StrCat("slot of ", e.slot_of()),
                      " (dim ", e.embedding_dim(), ", key ", psd::DataTypeName(e.key_dtype()), ")");
}

std::string VariableKindJson(const psd::VariableHandle& h) {
  if (!h.has_embedding()) return ",\"kind\":\"dense\"";
  const psd::EmbeddingSpec& e = h.embedding();
  return absl::StrCat(",\"kind\":\"table\",\"embedding_dim\":", e.embedding_dim(),
                      ",\"key_dtype\":", JsonString(psd::DataTypeName(e.key_dtype())),
                      ",\"slot_of\":", JsonString(e.slot_of()));
}

std::string PartitioningColumn(const psd::VariableHandle& h) {
  if (!h.partitioned()) return "-";
  if (h.has_embedding()) return absl::StrCat(h.parts_size(), " parts by key hash");
  return absl::StrCat(h.parts_size(), " parts on axis ", h.partition_axis());
}

std::vector<std::string> EmbeddingStatsHeader() {
  return {"ROWS", "MEMORY", "ADMITTED", "FILTERED(LOOKUPS/UPDATES)", "EVICTED"};
}

std::vector<std::string> EmbeddingStatsColumns(const psd::VariableInfo* info) {
  if (info == nullptr || !info->has_embedding()) return {"-", "-", "-", "-", "-"};
  const psd::EmbeddingStats& stats = info->embedding();
  return {absl::StrCat(stats.rows()), FormatBytes(info->bytes()), absl::StrCat(stats.admitted()),
          absl::StrCat(stats.filtered_lookups(), "/", stats.filtered_updates()),
          absl::StrCat(stats.evicted())};
}

std::string EmbeddingStatsJson(const psd::VariableInfo& info) {
  const psd::EmbeddingStats& stats = info.embedding();
  return absl::StrCat("{\"rows\":", stats.rows(), ",\"bytes\":", info.bytes(),
                      ",\"pending_keys\":", stats.pending_keys(),
                      ",\"admitted\":", stats.admitted(),
                      ",\"filtered_lookups\":", stats.filtered_lookups(),
                      ",\"filtered_updates\":", stats.filtered_updates(),
                      ",\"evicted\":", stats.evicted(), ",\"deleted\":", stats.deleted(), "}");
}

}  // namespace psctl
