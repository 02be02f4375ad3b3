// The coordinator console's rendering: a ConsoleView (plain data the
// console gathers from the registry, the shards' figures and the checkpoint
// manager) becomes the HTML page (`/`), its refreshed body (`/console/main`)
// and JSON (`/console.json`). Everything is rendered here, on the server:
// the page's script only swaps in a fresh body every few seconds, so there
// is one renderer and one place that escapes. Every text taken from the
// cluster (variable, part, shard, checkpoint names, addresses, errors) goes
// through HtmlEscape or JsonString; nothing of the page is loaded from
// elsewhere (styles, script and charts are inline).
//
// Thread-safety: functions without state.
#ifndef PSD_SERVER_COORDINATOR_CONSOLE_PAGE_H_
#define PSD_SERVER_COORDINATOR_CONSOLE_PAGE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "coordinator/console_samples.h"

namespace psd {

// The console's named limits (configs/README.md, "Limits"): what a page or
// a JSON answer lists at most; past them it says "and N more".
inline constexpr int kConsoleMaxShards = 256;
inline constexpr int kConsoleMaxVariables = 200;
inline constexpr int kConsoleMaxPartsPerVariable = 16;
inline constexpr int kConsoleMaxCheckpoints = 50;  // the newest ones
// Chart samples: one every kConsoleSampleIntervalSeconds, the last
// kConsoleSampleCapacity of them (15 minutes).
inline constexpr double kConsoleSampleIntervalSeconds = 5;
inline constexpr int kConsoleSampleCapacity = 180;

struct ConsoleShard {
  int32_t id = 0;
  std::string address;
  bool live = false;
  std::string device;
  uint64_t incarnation = 0;
  // As the shard last reported them (heartbeat or a refresh).
  int64_t memory_used = 0;
  int64_t memory_limit = 0;  // 0: none
  int64_t reported_variables = 0;
  // What the registry placed on it: exact, never a heartbeat behind.
  int64_t placed_parts = 0;
  int64_t placed_bytes = 0;
  int64_t lost_parts = 0;
  int64_t millis_since_heartbeat = 0;
  bool drained = false;  // psctl shard drain: nothing new is placed here
  // The shard's own op counters since it started, as its last heartbeat
  // carried them (what psctl status lists), and their age; -1: none yet.
  int64_t read_ops = -1, write_ops = -1, failed_ops = -1;
  int64_t millis_since_traffic = -1;
};

// A live part move the registry holds unfinished (docs/moves.md).
struct ConsoleMove {
  std::string id;     // hex
  std::string parts;  // the group's part names, comma-separated
  int32_t from_shard = 0;
  int32_t to_shard = 0;
  bool committed = false;  // switched to the target; the shards are being told
  double seconds = 0;      // since it began
};
inline constexpr int kConsoleMaxMoves = 50;

struct ConsolePart {
  std::string name;
  int32_t shard_id = 0;
  // "initialized", "uninitialized", "lost", or "unknown" (its shard did not
  // answer the last look).
  std::string state;
};

struct ConsoleVariable {
  std::string name;
  std::string dtype;
  std::string shape;  // "[10,4]"
  std::string kind;   // "dense", "embedding table", "embedding slot"
  bool trainable = false;
  int64_t partitions = 1;
  std::vector<ConsolePart> parts;  // at most kConsoleMaxPartsPerVariable
  int64_t parts_omitted = 0;
  // "yes", "no", "partly", "lost" or "unknown", over every part.
  std::string initialized;
};

struct ConsoleCheckpoint {
  std::string prefix;
  std::optional<int64_t> step;
  int64_t saved_unix_micros = 0;
  int64_t bytes = 0;
  // "latest", "kept forever", "retained" (in the retention list) or
  // "unmanaged" (written outside the retention policy); latest may
  // combine with the others ("latest, retained").
  std::string retention;
};

struct ConsoleOperation {
  std::string operation;  // "save" or "restore"
  std::string phase;
  std::string prefix;
  int64_t done_bytes = 0;
  int64_t total_bytes = 0;  // 0: not known yet
  double seconds = 0;
};

struct ConsoleView {
  double now_unix_seconds = 0;
  std::string coordinator;  // the coordinator's gRPC address, as configured
  int64_t num_variables = 0;
  int64_t num_sessions = 0;
  std::vector<ConsoleShard> shards;
  int64_t shards_omitted = 0;
  std::vector<ConsoleVariable> variables;
  int64_t variables_omitted = 0;
  // How old the parts' initialized states are (the last look at the
  // shards); negative: none yet.
  double part_states_age_seconds = -1;
  std::string checkpoint_dir;                  // empty: none configured
  std::vector<ConsoleCheckpoint> checkpoints;  // newest first
  int64_t checkpoints_omitted = 0;
  std::string checkpoint_error;  // why the listing failed; empty: it did not
  std::vector<ConsoleOperation> running;
  std::vector<ConsoleMove> moves;  // at most kConsoleMaxMoves
  std::vector<ConsoleSample> samples;  // oldest first
};

// `text` with & < > " ' as entities.
std::string HtmlEscape(absl::string_view text);
// `text` as a JSON string literal (quotes included); < > & are escaped
// too, so the literal is inert also inside HTML.
std::string JsonString(absl::string_view text);
// "1.5 MiB".
std::string FormatBytes(double bytes);

// The whole page; `nonce` is its script's CSP nonce (the script sends the
// page's own `?token=` as an Authorization header on refresh).
std::string RenderConsolePage(const ConsoleView& view, const std::string& nonce);
// The page's <main> content, which the script swaps in on refresh.
std::string RenderConsoleMain(const ConsoleView& view);
std::string RenderConsoleJson(const ConsoleView& view);
// The short page of a 401 / 403 answer: what is needed, no data.
std::string RenderConsoleDenied(int status, absl::string_view why);

// One chart: lines over time as inline SVG with axes, grid and a legend.
struct ChartLine {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (unix seconds, value); gaps skipped
};
// `unit`: "bytes", "bytes/s", "seconds", "/s" or "" (a plain number).
std::string RenderChart(const std::string& title, const std::string& unit,
                        const std::vector<ChartLine>& lines, double now_unix_seconds,
                        double window_seconds);

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CONSOLE_PAGE_H_
