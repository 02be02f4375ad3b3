// The console's HTML, SVG and JSON (console_page.h). The page's style and
// script are raw strings below: no build step, nothing loaded from elsewhere.
#include "coordinator/console_page.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"

namespace psd {

namespace {

constexpr char kStyle[] = R"css(
:root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e3e6eb;
  --accent:#2f6fde; --ok:#1f9d55; --warn:#d98e04; --bad:#d92d20; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  background:var(--bg); color:var(--ink); }
header { background:#161b26; color:#fff; padding:14px 28px; display:flex; align-items:center;
  gap:24px; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.2px; }
header h1 span { color:#8ea4c8; font-weight:400; }
header .where { color:#b8c2d6; font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:13px; }
header .refresh { margin-left:auto; font-size:12px; color:#b8c2d6; }
header .refresh.bad { color:#ff8a80; }
main { padding:20px 28px 40px; max-width:1500px; margin:0 auto; }
.tiles { display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px; margin-bottom:18px; }
.tile { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.tile .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.4px; }
.tile .value { font-size:22px; font-weight:600; margin-top:2px; }
.tile .sub { color:var(--muted); font-size:12px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:14px 18px 16px; margin-bottom:18px; }
section h2 { font-size:15px; margin:0 0 10px; font-weight:600; }
section h2 small { color:var(--muted); font-weight:400; margin-left:8px; }
table { border-collapse:collapse; width:100%; }
th { text-align:left; font-weight:600; color:var(--muted); font-size:12px; text-transform:uppercase;
  letter-spacing:.3px; border-bottom:1px solid var(--line); padding:6px 10px; white-space:nowrap; }
td { border-bottom:1px solid var(--line); padding:7px 10px; vertical-align:middle; }
tr:last-child td { border-bottom:none; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.mono { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12.5px; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.badge.ok { background:#e3f4ea; color:var(--ok); }
.badge.bad { background:#fde7e5; color:var(--bad); }
.badge.warn { background:#fdf1dc; color:#9a6400; }
.badge.info { background:#e6eefc; color:var(--accent); }
.bar { position:relative; width:180px; height:10px; background:#edf0f4; border-radius:5px; overflow:hidden;
  display:inline-block; vertical-align:middle; margin-right:8px; }
.bar > i { position:absolute; left:0; top:0; bottom:0; border-radius:5px; background:var(--ok); }
.bar.warn > i { background:var(--warn); } .bar.bad > i { background:var(--bad); }
.bar.progress > i { background:var(--accent); }
.chip { display:inline-block; background:#f0f3f8; border:1px solid var(--line); border-radius:4px;
  padding:0 6px; margin:1px 2px; font-size:12px; white-space:nowrap; }
.charts { display:grid; grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); gap:14px; }
.chart { border:1px solid var(--line); border-radius:6px; padding:8px 10px 6px; }
.chart h3 { margin:0 0 4px; font-size:13px; font-weight:600; }
.chart svg { width:100%; height:auto; display:block; }
.chart svg text { font-size:11px; fill:#667085; font-family:system-ui,sans-serif; }
.legend { font-size:12px; color:var(--muted); }
.legend span { margin-right:12px; white-space:nowrap; }
.legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:4px;
  vertical-align:-1px; }
.more { color:var(--muted); font-style:italic; padding-top:8px; }
.note { color:var(--muted); font-size:12px; margin-top:6px; }
.error { color:var(--bad); }
)css";

// Swaps in a fresh <main> every few seconds. The token of `?token=` (the
// page's own address) goes out as an Authorization header.
constexpr char kScript[] = R"js(
(function () {
  var params = new URLSearchParams(window.location.search);
  var token = params.get('token');
  var headers = token ? { 'Authorization': 'Bearer ' + token } : {};
  var status = document.getElementById('refresh-status');
  var refreshes = 0;
  function tick() {
    fetch('/console/main', { headers: headers, cache: 'no-store' })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.text();
      })
      .then(function (html) {
        document.getElementById('main').innerHTML = html;
        refreshes += 1;
        document.body.setAttribute('data-refreshes', String(refreshes));
        status.textContent = 'updated ' + new Date().toLocaleTimeString();
        status.className = 'refresh';
      })
      .catch(function (e) {
        status.textContent = 'refresh failed (' + e.message + '); retrying';
        status.className = 'refresh bad';
      })
      .finally(function () { setTimeout(tick, REFRESH_MS); });
  }
  setTimeout(tick, REFRESH_MS);
})();
)js";

constexpr double kChartWindowSeconds = kConsoleSampleIntervalSeconds * kConsoleSampleCapacity;

const char* const kPalette[] = {"#2f6fde", "#e8590c", "#1f9d55", "#9c36b5",
                                "#d92d20", "#0c8599", "#c2255c", "#5c940d"};

std::string Ago(double seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 1) return "just now";
  if (seconds < 90) return absl::StrCat(static_cast<int64_t>(seconds), " s ago");
  if (seconds < 90 * 60) return absl::StrCat(static_cast<int64_t>(seconds / 60), " min ago");
  if (seconds < 48 * 3600) return absl::StrFormat("%.1f h ago", seconds / 3600);
  return absl::StrFormat("%.1f days ago", seconds / 86400);
}

std::string UtcTime(double unix_seconds) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC",
                          absl::FromUnixMicros(static_cast<int64_t>(unix_seconds * 1e6)),
                          absl::UTCTimeZone());
}

std::string FormatSeconds(double seconds) {
  if (seconds <= 0) return "0";
  if (seconds < 1e-3) return absl::StrFormat("%.0f µs", seconds * 1e6);
  if (seconds < 1) return absl::StrFormat("%.3g ms", seconds * 1e3);
  return absl::StrFormat("%.3g s", seconds);
}

std::string FormatNumber(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e9) return absl::StrFormat("%.3gG", v / 1e9);
  if (a >= 1e6) return absl::StrFormat("%.3gM", v / 1e6);
  if (a >= 1e4) return absl::StrFormat("%.3gk", v / 1e3);
  if (a >= 100) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.3g", v);
}

std::string FormatValue(double v, const std::string& unit) {
  if (unit == "bytes") return FormatBytes(v);
  if (unit == "bytes/s") return FormatBytes(v) + "/s";
  if (unit == "seconds") return FormatSeconds(v);
  if (unit == "/s") return FormatNumber(v) + "/s";
  return FormatNumber(v);
}

// A tick step of 1, 2 or 5 times a power of ten (bytes: of KiB, MiB, ...),
// so that about four steps cover `max`.
double NiceStep(double max, bool bytes) {
  if (!(max > 0)) return 0.25;
  double raw = max / 4;
  double scale = 1;
  while (bytes && raw / scale >= 1024) scale *= 1024;
  raw /= scale;
  const double p = std::pow(10, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (m * p >= raw * (1 - 1e-9)) return m * p * scale;
  }
  return 10 * p * scale;
}

std::string Badge(const std::string& cls, const std::string& text) {
  return absl::StrCat("<span class=\"badge ", cls, "\">", HtmlEscape(text), "</span>");
}

// A bar `fraction` full (0..1), coloured by how full for memory.
std::string Bar(double fraction, bool progress) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  const char* cls = progress          ? "bar progress"
                    : fraction >= 0.9 ? "bar bad"
                    : fraction >= 0.7 ? "bar warn"
                                      : "bar";
  return absl::StrFormat("<span class=\"%s\"><i style=\"width:%.1f%%\"></i></span>", cls,
                         fraction * 100);
}

std::string Tiles(const ConsoleView& v) {
  int64_t live = 0;
  int64_t used = 0, limit = 0, placed = 0;
  for (const ConsoleShard& s : v.shards) {
    live += s.live ? 1 : 0;
    used += s.memory_used;
    limit += s.memory_limit;
    placed += s.placed_bytes;
  }
  const int64_t shards = static_cast<int64_t>(v.shards.size()) + v.shards_omitted;
  std::string out = "<div class=\"tiles\">";
  const auto tile = [&out](const std::string& label, const std::string& value,
                           const std::string& sub, const std::string& id) {
    absl::StrAppend(&out, "<div class=\"tile\" id=\"", id, "\"><div class=\"label\">", label,
                    "</div><div class=\"value\">", value, "</div><div class=\"sub\">", sub,
                    "</div></div>");
  };
  tile("Shards", absl::StrCat(live, " / ", shards, " live"),
       live == shards ? "all heartbeating" : absl::StrCat(shards - live, " down"), "tile-shards");
  tile("Variables", absl::StrCat(v.num_variables), absl::StrCat(v.num_sessions, " open sessions"),
       "tile-variables");
  tile("Memory", FormatBytes(static_cast<double>(used)),
       limit > 0 ? absl::StrCat("of ", FormatBytes(static_cast<double>(limit)), " limit")
                 : "no limits set",
       "tile-memory");
  tile("Placed", FormatBytes(static_cast<double>(placed)), "bytes of variables on shards",
       "tile-placed");
  if (!v.checkpoints.empty()) {
    const ConsoleCheckpoint& c = v.checkpoints.front();
    tile("Last checkpoint",
         c.step.has_value() ? absl::StrCat("step ", *c.step) : std::string("unnumbered"),
         HtmlEscape(Ago(v.now_unix_seconds - static_cast<double>(c.saved_unix_micros) / 1e6)),
         "tile-checkpoint");
  } else {
    tile("Last checkpoint", "none",
         v.checkpoint_dir.empty() ? "no checkpoint directory" : "none saved yet",
         "tile-checkpoint");
  }
  out += "</div>";
  return out;
}

std::string ShardsSection(const ConsoleView& v) {
  std::string out =
      absl::StrCat("<section id=\"shards\"><h2>Shards<small>", v.shards.size() + v.shards_omitted,
                   " registered; parts and bytes from the registry, memory as each shard last "
                   "reported it</small></h2>");
  if (v.shards.empty()) {
    out += "<p class=\"muted\">No shard has registered yet.</p></section>";
    return out;
  }
  out +=
      "<table><thead><tr><th>Shard</th><th>Address</th><th>State</th><th>Device</th>"
      "<th>Memory used / limit</th><th class=\"num\">Parts</th><th class=\"num\">Bytes</th>"
      "<th class=\"num\">Lost</th><th>Incarnation</th><th>Heartbeat</th></tr></thead><tbody>";
  for (const ConsoleShard& s : v.shards) {
    std::string memory;
    if (s.memory_limit > 0) {
      memory = absl::StrCat(
          Bar(static_cast<double>(s.memory_used) / static_cast<double>(s.memory_limit), false),
          HtmlEscape(FormatBytes(static_cast<double>(s.memory_used))), " / ",
          HtmlEscape(FormatBytes(static_cast<double>(s.memory_limit))));
    } else {
      memory = absl::StrCat(HtmlEscape(FormatBytes(static_cast<double>(s.memory_used))),
                            " <span class=\"muted\">(no limit)</span>");
    }
    absl::StrAppend(
        &out, "<tr class=\"shard\" data-shard=\"", s.id, "\"><td><b>", s.id,
        "</b></td><td class=\"mono\">", HtmlEscape(s.address), "</td><td>",
        s.live ? Badge("ok", "live") : Badge("bad", "down"),
        s.drained ? absl::StrCat(" ", Badge("info", "drained")) : std::string(), "</td><td>",
        HtmlEscape(s.device.empty() ? "-" : s.device), "</td><td>", memory,
        "</td><td class=\"num\">", s.placed_parts, "</td><td class=\"num\">",
        HtmlEscape(FormatBytes(static_cast<double>(s.placed_bytes))), "</td><td class=\"num\">",
        s.lost_parts > 0 ? Badge("bad", absl::StrCat(s.lost_parts)) : std::string("0"),
        "</td><td class=\"mono\">", absl::StrFormat("%016x", s.incarnation), "</td><td>",
        HtmlEscape(Ago(static_cast<double>(s.millis_since_heartbeat) / 1e3)), "</td></tr>");
  }
  out += "</tbody></table>";
  if (v.shards_omitted > 0) {
    absl::StrAppend(&out, "<div class=\"more\">and ", v.shards_omitted, " more shards</div>");
  }
  for (const ConsoleMove& m : v.moves) {
    absl::StrAppend(&out, "<p class=\"running move\">", Badge("info", "move running"), " ",
                    HtmlEscape(m.parts), " shard ", m.from_shard, " → ", m.to_shard, " ",
                    m.committed ? Badge("ok", "switched") : Badge("info", "copying"),
                    " <span class=\"muted\">", absl::StrFormat("%.1f s", m.seconds), ", move ",
                    HtmlEscape(m.id), "</span></p>");
  }
  out += "</section>";
  return out;
}

std::string InitializedBadge(const std::string& state) {
  if (state == "yes") return Badge("ok", "initialized");
  if (state == "no") return Badge("warn", "uninitialized");
  if (state == "partly") return Badge("warn", "partly");
  if (state == "lost") return Badge("bad", "lost parts");
  return Badge("info", "unknown");
}

std::string VariablesSection(const ConsoleView& v) {
  std::string out = absl::StrCat("<section id=\"variables\"><h2>Variables<small>", v.num_variables,
                                 " in the registry");
  if (v.part_states_age_seconds >= 0) {
    absl::StrAppend(&out, "; initialized states as the shards told ",
                    HtmlEscape(Ago(v.part_states_age_seconds)));
  }
  out += "</small></h2>";
  if (v.variables.empty()) {
    out += "<p class=\"muted\">No variable is declared yet.</p></section>";
    return out;
  }
  out +=
      "<table><thead><tr><th>Name</th><th>Kind</th><th>Dtype</th><th>Shape</th>"
      "<th class=\"num\">Parts</th><th>Placement</th><th>State</th></tr></thead><tbody>";
  for (const ConsoleVariable& var : v.variables) {
    std::string placement;
    for (const ConsolePart& p : var.parts) {
      const std::string suffix =
          p.name.size() > var.name.size() && p.name.compare(0, var.name.size(), var.name) == 0
              ? p.name.substr(var.name.size() + 1)
              : std::string();
      absl::StrAppend(&placement, "<span class=\"chip\" title=\"", HtmlEscape(p.name), ": ",
                      HtmlEscape(p.state), "\">", suffix.empty() ? "" : HtmlEscape(suffix) + " → ",
                      "shard ", p.shard_id, p.state == "lost" ? " (lost)" : "", "</span>");
    }
    if (var.parts_omitted > 0) {
      absl::StrAppend(&placement, "<span class=\"muted\">and ", var.parts_omitted, " more</span>");
    }
    absl::StrAppend(&out, "<tr class=\"variable\"><td class=\"mono\">", HtmlEscape(var.name),
                    "</td><td>", HtmlEscape(var.kind),
                    var.trainable ? "" : " <span class=\"muted\">(not trainable)</span>",
                    "</td><td>", HtmlEscape(var.dtype), "</td><td class=\"mono\">",
                    HtmlEscape(var.shape), "</td><td class=\"num\">", var.partitions, "</td><td>",
                    placement, "</td><td>", InitializedBadge(var.initialized), "</td></tr>");
  }
  out += "</tbody></table>";
  if (v.variables_omitted > 0) {
    absl::StrAppend(&out, "<div class=\"more\">and ", v.variables_omitted,
                    " more variables (psctl vars list shows every one)</div>");
  }
  out += "</section>";
  return out;
}

std::string CheckpointsSection(const ConsoleView& v) {
  std::string out = "<section id=\"checkpoints\"><h2>Checkpoints<small>";
  out += v.checkpoint_dir.empty()
             ? std::string("no checkpoint directory configured")
             : absl::StrCat("in <span class=\"mono\">", HtmlEscape(v.checkpoint_dir), "</span>");
  out += "</small></h2>";
  for (const ConsoleOperation& op : v.running) {
    const double fraction = op.total_bytes > 0 ? static_cast<double>(op.done_bytes) /
                                                     static_cast<double>(op.total_bytes)
                                               : 0;
    absl::StrAppend(
        &out, "<p class=\"running\">", Badge("info", op.operation + " running"), " ",
        HtmlEscape(op.phase), " ", Bar(fraction, true),
        HtmlEscape(FormatBytes(static_cast<double>(op.done_bytes))),
        op.total_bytes > 0
            ? absl::StrCat(" of ", HtmlEscape(FormatBytes(static_cast<double>(op.total_bytes))))
            : std::string(),
        " <span class=\"muted\">", absl::StrFormat("%.1f s", op.seconds), " ",
        op.prefix.empty() ? std::string() : absl::StrCat("→ ", HtmlEscape(op.prefix)),
        "</span></p>");
  }
  if (!v.checkpoint_error.empty()) {
    absl::StrAppend(&out, "<p class=\"error\">", HtmlEscape(v.checkpoint_error), "</p>");
  }
  if (v.checkpoints.empty()) {
    if (v.checkpoint_error.empty()) out += "<p class=\"muted\">No checkpoint saved yet.</p>";
    out += "</section>";
    return out;
  }
  out +=
      "<table><thead><tr><th>Checkpoint</th><th class=\"num\">Step</th><th>Saved</th>"
      "<th class=\"num\">Size</th><th>Retention</th></tr></thead><tbody>";
  for (const ConsoleCheckpoint& c : v.checkpoints) {
    const double saved = static_cast<double>(c.saved_unix_micros) / 1e6;
    const bool latest = c.retention.find("latest") != std::string::npos;
    absl::StrAppend(&out, "<tr class=\"checkpoint\"><td class=\"mono\">", HtmlEscape(c.prefix),
                    "</td><td class=\"num\">",
                    c.step.has_value() ? absl::StrCat(*c.step) : std::string("-"), "</td><td>",
                    HtmlEscape(UtcTime(saved)), " <span class=\"muted\">",
                    HtmlEscape(Ago(v.now_unix_seconds - saved)), "</span></td><td class=\"num\">",
                    HtmlEscape(FormatBytes(static_cast<double>(c.bytes))), "</td><td>",
                    latest ? Badge("ok", c.retention) : HtmlEscape(c.retention), "</td></tr>");
  }
  out += "</tbody></table>";
  if (v.checkpoints_omitted > 0) {
    absl::StrAppend(&out, "<div class=\"more\">and ", v.checkpoints_omitted,
                    " older checkpoints</div>");
  }
  out += "</section>";
  return out;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string ChartsSection(const ConsoleView& v) {
  const double now = v.now_unix_seconds;
  const auto opt = [](double x) { return x >= 0 ? x : kNaN; };
  // The data plane, from the shards' own counters.
  ChartLine reads{"reads", {}}, writes{"writes", {}}, failed{"failed", {}};
  ChartLine shard_in{"received", {}}, shard_out{"sent", {}};
  ChartLine read_p50{"read p50", {}}, read_p99{"read p99", {}};
  ChartLine write_p50{"write p50", {}}, write_p99{"write p99", {}};
  std::map<int32_t, ChartLine> per_shard;
  std::map<int32_t, double> shard_age;  // at the newest sample
  // The coordinator's own RPCs.
  ChartLine calls{"calls", {}}, errors{"errors", {}};
  ChartLine in{"received", {}}, out_bytes{"sent", {}};
  ChartLine p50{"p50", {}}, p90{"p90", {}}, p99{"p99", {}};
  ChartLine fence{"coordinator: mean pause per save", {}};
  ChartLine shard_fence{"shards: mean hold per fence", {}};
  std::map<int32_t, ChartLine> memory;
  for (const ConsoleSample& s : v.samples) {
    const double t = s.unix_seconds;
    // Before any shard reported, its charts say "no data yet", not 0.
    if (s.shards_reporting > 0) {
      reads.points.emplace_back(t, s.shard_reads_per_second);
      writes.points.emplace_back(t, s.shard_writes_per_second);
      failed.points.emplace_back(t, s.shard_failed_per_second);
      shard_in.points.emplace_back(t, s.shard_received_bytes_per_second);
      shard_out.points.emplace_back(t, s.shard_sent_bytes_per_second);
    }
    read_p50.points.emplace_back(t, opt(s.read_p50));
    read_p99.points.emplace_back(t, opt(s.read_p99));
    write_p50.points.emplace_back(t, opt(s.write_p50));
    write_p99.points.emplace_back(t, opt(s.write_p99));
    for (const ConsoleSample::ShardOps& ops : s.shard_ops) {
      per_shard[ops.id].points.emplace_back(t, ops.reads_per_second + ops.writes_per_second);
      shard_age[ops.id] = ops.age_seconds;
    }
    calls.points.emplace_back(t, s.calls_per_second);
    errors.points.emplace_back(t, s.errors_per_second);
    in.points.emplace_back(t, s.received_bytes_per_second);
    out_bytes.points.emplace_back(t, s.sent_bytes_per_second);
    p50.points.emplace_back(t, opt(s.p50));
    p90.points.emplace_back(t, opt(s.p90));
    p99.points.emplace_back(t, opt(s.p99));
    fence.points.emplace_back(t, opt(s.fence_pause));
    shard_fence.points.emplace_back(t, opt(s.shard_fence_pause));
    for (const auto& [id, used] : s.shard_memory_used) {
      ChartLine& line = memory[id];
      line.label = absl::StrCat("shard ", id);
      line.points.emplace_back(t, used);
    }
  }
  std::vector<ChartLine> per_shard_lines;
  for (auto& [id, line] : per_shard) {
    line.label = absl::StrCat("shard ", id);
    // Counters that lag (a heartbeat late by more than a sample) say how
    // old they are: the dip is the lag, not idleness.
    const double age = shard_age[id];
    if (age > kConsoleSampleIntervalSeconds) {
      absl::StrAppend(&line.label, " (counters ", static_cast<int64_t>(age), " s old)");
    }
    per_shard_lines.push_back(std::move(line));
  }
  std::vector<ChartLine> memory_lines;
  for (auto& [id, line] : memory) memory_lines.push_back(std::move(line));
  std::string out = absl::StrCat(
      "<section id=\"charts\"><h2>Last 15 minutes<small>one sample every ",
      static_cast<int>(kConsoleSampleIntervalSeconds),
      " s; the shards' ops from their own counters (sent with their heartbeats, the series "
      "their /metrics export), the coordinator's from its own metrics (its RPCs, heartbeats "
      "left out)</small></h2><div class=\"charts\">");
  out += RenderChart("Shard ops (all shards)", "/s", {reads, writes, failed}, now,
                     kChartWindowSeconds);
  out += RenderChart("Shard op latency percentiles", "seconds",
                     {read_p50, read_p99, write_p50, write_p99}, now, kChartWindowSeconds);
  out += RenderChart("Shard bytes in / out", "bytes/s", {shard_in, shard_out}, now,
                     kChartWindowSeconds);
  out += RenderChart("Ops per shard (reads + writes)", "/s", per_shard_lines, now,
                     kChartWindowSeconds);
  out += RenderChart("Checkpoint fence pauses", "seconds", {fence, shard_fence}, now,
                     kChartWindowSeconds);
  out += RenderChart("Shard memory used", "bytes", memory_lines, now, kChartWindowSeconds);
  out += RenderChart("Coordinator calls", "/s", {calls, errors}, now, kChartWindowSeconds);
  out += RenderChart("Coordinator bytes in / out", "bytes/s", {in, out_bytes}, now,
                     kChartWindowSeconds);
  out += RenderChart("Coordinator call latency percentiles", "seconds", {p50, p90, p99}, now,
                     kChartWindowSeconds);
  out += "</div></section>";
  return out;
}

}  // namespace

std::string HtmlEscape(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string JsonString(absl::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
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
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '<':
        out += "\\u003c";
        break;
      case '>':
        out += "\\u003e";
        break;
      case '&':
        out += "\\u0026";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out += "\"";
  return out;
}

std::string FormatBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  double v = bytes;
  while (std::fabs(v) >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return absl::StrFormat("%.0f B", v);
  // Constant formats (clang checks them at compile time): 3 significant digits.
  const int decimals = std::fabs(v) < 10 ? 2 : std::fabs(v) < 100 ? 1 : 0;
  return absl::StrFormat("%.*f %s", decimals, v, units[u]);
}

std::string RenderChart(const std::string& title, const std::string& unit,
                        const std::vector<ChartLine>& lines, double now_unix_seconds,
                        double window_seconds) {
  constexpr double kWidth = 560, kHeight = 190;
  constexpr double kLeft = 64, kRight = 12, kTop = 10, kBottom = 24;
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  const double t0 = now_unix_seconds - window_seconds;
  double max = 0;
  bool any = false;
  for (const ChartLine& line : lines) {
    for (const auto& [t, value] : line.points) {
      if (std::isnan(value) || t < t0) continue;
      any = true;
      max = std::max(max, value);
    }
  }
  const double step = NiceStep(max, unit == "bytes" || unit == "bytes/s");
  const int steps = std::max(1, static_cast<int>(std::ceil(max / step - 1e-9)));
  const double top = step * steps;
  const auto x_of = [&](double t) {
    return kLeft + plot_w * std::clamp((t - t0) / window_seconds, 0.0, 1.0);
  };
  const auto y_of = [&](double v) { return kTop + plot_h * (1 - std::clamp(v / top, 0.0, 1.0)); };
  // data-max: the highest value drawn (none: no data), for scripts and tests.
  std::string svg = absl::StrFormat(
      "<svg viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"%s\"%s>", kWidth, kHeight,
      HtmlEscape(title), any ? absl::StrFormat(" data-max=\"%.6g\"", max) : std::string());
  // Horizontal grid and the value axis.
  for (int i = 0; i <= steps; ++i) {
    const double v = step * i;
    const double y = y_of(v);
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                          "stroke-width=\"1\"/>",
                          kLeft, y, kWidth - kRight, y, i == 0 ? "#b8c0cc" : "#edf0f4");
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>",
                          kLeft - 6, y + 4, HtmlEscape(FormatValue(v, unit)));
  }
  // The time axis: a tick every 5 minutes back from now.
  for (double back = 0; back <= window_seconds + 1e-9; back += 300) {
    const double x = x_of(now_unix_seconds - back);
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                          "stroke=\"#edf0f4\" stroke-width=\"1\"/>",
                          x, kTop, x, kTop + plot_h);
    absl::StrAppendFormat(
        &svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\">%s</text>", x, kHeight - 6,
        back == 0                ? "end"
        : back >= window_seconds ? "start"
                                 : "middle",
        back == 0 ? std::string("now") : absl::StrCat("-", static_cast<int>(back / 60), " min"));
  }
  absl::StrAppendFormat(&svg,
                        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#b8c0cc\" "
                        "stroke-width=\"1\"/>",
                        kLeft, kTop, kLeft, kTop + plot_h);
  if (!any) {
    absl::StrAppendFormat(&svg,
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no data yet</text>",
                          kLeft + plot_w / 2, kTop + plot_h / 2);
  }
  // The lines: a polyline per run of points without gaps, a dot for a
  // point alone.
  for (size_t i = 0; i < lines.size(); ++i) {
    const char* color = kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))];
    std::vector<std::pair<double, double>> run;
    const auto flush = [&] {
      if (run.size() == 1) {
        absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>",
                              run[0].first, run[0].second, color);
      } else if (run.size() > 1) {
        svg += "<polyline fill=\"none\" stroke-width=\"1.8\" stroke-linejoin=\"round\" stroke=\"";
        svg += color;
        svg += "\" points=\"";
        for (const auto& [x, y] : run) absl::StrAppendFormat(&svg, "%.1f,%.1f ", x, y);
        svg += "\"/>";
      }
      run.clear();
    };
    double last_t = -1;
    for (const auto& [t, value] : lines[i].points) {
      if (t < t0) continue;
      // A missing value, or samples missed (more than two intervals apart).
      if (std::isnan(value) || (last_t >= 0 && t - last_t > 2.5 * kConsoleSampleIntervalSeconds)) {
        flush();
      }
      last_t = t;
      if (!std::isnan(value)) run.emplace_back(x_of(t), y_of(value));
    }
    flush();
  }
  svg += "</svg>";
  std::string legend = "<div class=\"legend\">";
  for (size_t i = 0; i < lines.size(); ++i) {
    double last = kNaN;
    for (const auto& [t, value] : lines[i].points) {
      if (!std::isnan(value)) last = value;
    }
    absl::StrAppend(
        &legend,
        "<span><i style=\"background:", kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))],
        "\"></i>", HtmlEscape(lines[i].label),
        std::isnan(last) ? std::string()
                         : absl::StrCat(" <b>", HtmlEscape(FormatValue(last, unit)), "</b>"),
        "</span>");
  }
  legend += "</div>";
  return absl::StrCat("<div class=\"chart\"><h3>", HtmlEscape(title), "</h3>", svg, legend,
                      "</div>");
}

std::string RenderConsoleMain(const ConsoleView& view) {
  return absl::StrCat(Tiles(view), ShardsSection(view), ChartsSection(view), VariablesSection(view),
                      CheckpointsSection(view));
}

std::string RenderConsolePage(const ConsoleView& view, const std::string& nonce) {
  std::string script = kScript;
  const std::string refresh_ms =
      absl::StrCat(static_cast<int>(kConsoleSampleIntervalSeconds * 1000));
  for (size_t at; (at = script.find("REFRESH_MS")) != std::string::npos;) {
    script.replace(at, 10, refresh_ms);
  }
  return absl::StrCat(
      "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
      "<title>psd console</title><style nonce=\"",
      nonce, "\">", kStyle,
      "</style></head><body data-refreshes=\"0\"><header><h1>psd <span>console</span></h1>",
      "<div class=\"where\">coordinator ", HtmlEscape(view.coordinator), "</div>",
      "<div class=\"refresh\" id=\"refresh-status\">rendered ",
      HtmlEscape(UtcTime(view.now_unix_seconds)), "</div></header><main id=\"main\">",
      RenderConsoleMain(view), "</main><script nonce=\"", nonce, "\">", script,
      "</script></body></html>");
}

std::string RenderConsoleDenied(int status, absl::string_view why) {
  return absl::StrCat(
      "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>psd console: ",
      status == 401 ? "sign-in needed" : "not allowed",
      "</title></head><body style=\"font-family:system-ui,sans-serif;margin:40px\"><h1>",
      status == 401 ? "401: this console needs the admin token" : "403: not an admin token",
      "</h1><p>", HtmlEscape(why),
      "</p><p>Open <code>/?token=ADMIN_TOKEN</code>, or send <code>Authorization: Bearer "
      "ADMIN_TOKEN</code> (the <code>admin</code> entry of the coordinator's token file).</p>"
      "</body></html>");
}

std::string RenderConsoleJson(const ConsoleView& v) {
  std::string out = absl::StrCat("{\"time\":", absl::StrFormat("%.3f", v.now_unix_seconds),
                                 ",\"coordinator\":", JsonString(v.coordinator),
                                 ",\"variables_total\":", v.num_variables,
                                 ",\"sessions\":", v.num_sessions, ",\"shards\":[");
  for (size_t i = 0; i < v.shards.size(); ++i) {
    const ConsoleShard& s = v.shards[i];
    absl::StrAppend(
        &out, i > 0 ? "," : "", "{\"id\":", s.id, ",\"address\":", JsonString(s.address),
        ",\"live\":", s.live ? "true" : "false", ",\"device\":", JsonString(s.device),
        ",\"incarnation\":", JsonString(absl::StrFormat("%016x", s.incarnation)),
        ",\"memory_used_bytes\":", s.memory_used, ",\"memory_limit_bytes\":", s.memory_limit,
        ",\"reported_variables\":", s.reported_variables, ",\"placed_parts\":", s.placed_parts,
        ",\"placed_bytes\":", s.placed_bytes, ",\"lost_parts\":", s.lost_parts,
        ",\"millis_since_heartbeat\":", s.millis_since_heartbeat,
        ",\"drained\":", s.drained ? "true" : "false");
    // The shard's own counters (null before its first report).
    const auto count = [](int64_t v) { return v >= 0 ? absl::StrCat(v) : std::string("null"); };
    absl::StrAppend(&out, ",\"read_ops\":", count(s.read_ops),
                    ",\"write_ops\":", count(s.write_ops), ",\"failed_ops\":", count(s.failed_ops),
                    ",\"millis_since_traffic\":", count(s.millis_since_traffic), "}");
  }
  absl::StrAppend(&out, "],\"shards_omitted\":", v.shards_omitted, ",\"moves\":[");
  for (size_t i = 0; i < v.moves.size(); ++i) {
    const ConsoleMove& m = v.moves[i];
    absl::StrAppend(&out, i > 0 ? "," : "", "{\"id\":", JsonString(m.id),
                    ",\"parts\":", JsonString(m.parts), ",\"from\":", m.from_shard,
                    ",\"to\":", m.to_shard, ",\"committed\":", m.committed ? "true" : "false",
                    ",\"seconds\":", absl::StrFormat("%.3f", m.seconds), "}");
  }
  absl::StrAppend(&out, "],\"variables\":[");
  for (size_t i = 0; i < v.variables.size(); ++i) {
    const ConsoleVariable& var = v.variables[i];
    absl::StrAppend(&out, i > 0 ? "," : "", "{\"name\":", JsonString(var.name),
                    ",\"kind\":", JsonString(var.kind), ",\"dtype\":", JsonString(var.dtype),
                    ",\"shape\":", JsonString(var.shape),
                    ",\"trainable\":", var.trainable ? "true" : "false",
                    ",\"partitions\":", var.partitions,
                    ",\"initialized\":", JsonString(var.initialized), ",\"parts\":[");
    for (size_t j = 0; j < var.parts.size(); ++j) {
      absl::StrAppend(&out, j > 0 ? "," : "", "{\"name\":", JsonString(var.parts[j].name),
                      ",\"shard\":", var.parts[j].shard_id,
                      ",\"state\":", JsonString(var.parts[j].state), "}");
    }
    absl::StrAppend(&out, "],\"parts_omitted\":", var.parts_omitted, "}");
  }
  absl::StrAppend(
      &out, "],\"variables_omitted\":", v.variables_omitted,
      ",\"part_states_age_seconds\":", absl::StrFormat("%.1f", v.part_states_age_seconds),
      ",\"checkpoints\":{\"dir\":", JsonString(v.checkpoint_dir),
      ",\"error\":", JsonString(v.checkpoint_error), ",\"list\":[");
  for (size_t i = 0; i < v.checkpoints.size(); ++i) {
    const ConsoleCheckpoint& c = v.checkpoints[i];
    absl::StrAppend(&out, i > 0 ? "," : "", "{\"prefix\":", JsonString(c.prefix),
                    ",\"step\":", c.step.has_value() ? absl::StrCat(*c.step) : std::string("null"),
                    ",\"saved_unix_micros\":", c.saved_unix_micros, ",\"bytes\":", c.bytes,
                    ",\"retention\":", JsonString(c.retention), "}");
  }
  absl::StrAppend(&out, "],\"omitted\":", v.checkpoints_omitted, ",\"running\":[");
  for (size_t i = 0; i < v.running.size(); ++i) {
    const ConsoleOperation& op = v.running[i];
    absl::StrAppend(&out, i > 0 ? "," : "", "{\"operation\":", JsonString(op.operation),
                    ",\"phase\":", JsonString(op.phase), ",\"prefix\":", JsonString(op.prefix),
                    ",\"done_bytes\":", op.done_bytes, ",\"total_bytes\":", op.total_bytes,
                    ",\"seconds\":", absl::StrFormat("%.3f", op.seconds), "}");
  }
  absl::StrAppend(&out, "]},\"sample_interval_seconds\":", kConsoleSampleIntervalSeconds,
                  ",\"samples\":[");
  // JSON has no NaN: a missing percentile or pause is null.
  const auto opt = [](double x) {
    return x >= 0 ? absl::StrFormat("%.6g", x) : std::string("null");
  };
  for (size_t i = 0; i < v.samples.size(); ++i) {
    const ConsoleSample& s = v.samples[i];
    absl::StrAppend(
        &out, i > 0 ? "," : "", "{\"time\":", absl::StrFormat("%.3f", s.unix_seconds),
        ",\"calls_per_second\":", absl::StrFormat("%.6g", s.calls_per_second),
        ",\"errors_per_second\":", absl::StrFormat("%.6g", s.errors_per_second),
        ",\"received_bytes_per_second\":", absl::StrFormat("%.6g", s.received_bytes_per_second),
        ",\"sent_bytes_per_second\":", absl::StrFormat("%.6g", s.sent_bytes_per_second),
        ",\"latency_p50_seconds\":", opt(s.p50), ",\"latency_p90_seconds\":", opt(s.p90),
        ",\"latency_p99_seconds\":", opt(s.p99), ",\"fence_pause_seconds\":", opt(s.fence_pause),
        ",\"shard_memory_used\":{");
    for (size_t j = 0; j < s.shard_memory_used.size(); ++j) {
      absl::StrAppend(&out, j > 0 ? "," : "", "\"", s.shard_memory_used[j].first,
                      "\":", absl::StrFormat("%.0f", s.shard_memory_used[j].second));
    }
    // The shards' own counters: ops in the interval (they add up over the
    // window) and as rates.
    absl::StrAppend(
        &out, "},\"shards_reporting\":", s.shards_reporting,
        ",\"shard_reads\":", absl::StrFormat("%.0f", s.shard_reads),
        ",\"shard_writes\":", absl::StrFormat("%.0f", s.shard_writes),
        ",\"shard_failed_ops\":", absl::StrFormat("%.0f", s.shard_failed),
        ",\"shard_reads_per_second\":", absl::StrFormat("%.6g", s.shard_reads_per_second),
        ",\"shard_writes_per_second\":", absl::StrFormat("%.6g", s.shard_writes_per_second),
        ",\"shard_failed_ops_per_second\":", absl::StrFormat("%.6g", s.shard_failed_per_second),
        ",\"shard_received_bytes_per_second\":",
        absl::StrFormat("%.6g", s.shard_received_bytes_per_second),
        ",\"shard_sent_bytes_per_second\":", absl::StrFormat("%.6g", s.shard_sent_bytes_per_second),
        ",\"shard_read_p50_seconds\":", opt(s.read_p50),
        ",\"shard_read_p99_seconds\":", opt(s.read_p99),
        ",\"shard_write_p50_seconds\":", opt(s.write_p50),
        ",\"shard_write_p99_seconds\":", opt(s.write_p99),
        ",\"shard_fence_pause_seconds\":", opt(s.shard_fence_pause), ",\"shard_ops\":{");
    for (size_t j = 0; j < s.shard_ops.size(); ++j) {
      const ConsoleSample::ShardOps& ops = s.shard_ops[j];
      absl::StrAppend(&out, j > 0 ? "," : "", "\"", ops.id,
                      "\":{\"reads\":", absl::StrFormat("%.0f", ops.reads),
                      ",\"writes\":", absl::StrFormat("%.0f", ops.writes),
                      ",\"reads_per_second\":", absl::StrFormat("%.6g", ops.reads_per_second),
                      ",\"writes_per_second\":", absl::StrFormat("%.6g", ops.writes_per_second),
                      ",\"age_seconds\":", absl::StrFormat("%.3f", ops.age_seconds), "}");
    }
    out += "}}";
  }
  out += "]}\n";
  return out;
}

}  // namespace psd
