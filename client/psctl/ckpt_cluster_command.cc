// `psctl ckpt save|list|latest|restore|policy`: checkpoints of a running
// cluster, through the coordinator (paths are on the server side). save,
// latest and restore are the C++ Saver's (psd/saver.h); list and policy,
// which the Saver has no call for, ask the coordinator directly. On a
// terminal, save and restore draw a progress bar (bytes, rate, ETA) from
// the coordinator's CheckpointProgress while it works; elsewhere (a pipe, a
// file, --json) they print only the final line: bytes, rate, fence pause.
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "commands.h"
#include "output.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/random_id.h"
#include "psd/saver.h"
#include "psd/status.h"

namespace psctl {
namespace {

int TerminalWidth() {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

// Whether save and restore draw a progress bar: on a terminal, not --json.
bool ShowProgress(const Context& ctx) { return !ctx.json && isatty(STDOUT_FILENO); }

// Draws the progress of operation `progress_id` (CheckpointProgress) on the
// terminal until `done`; an older coordinator without that rpc gets the
// elapsed time only. Clears its line when it ends.
void DrawProgress(const psd::client::internal::CoordinatorClient* coordinator, uint64_t progress_id,
                  const char* verb, const std::atomic<bool>* done) {
  const absl::Time start = absl::Now();
  bool polling = true;
  while (!done->load()) {
    std::string line;
    if (polling) {
      psd::CheckpointProgressRequest req;
      req.set_progress_id(progress_id);
      psd::CheckpointProgressResponse resp;
      absl::Status s = coordinator->Call(&psd::Coordinator::Stub::CheckpointProgress, req, &resp);
      if (s.code() == absl::StatusCode::kUnimplemented) polling = false;
      if (s.ok() && resp.found()) {
        line = FormatProgress(absl::StrCat(verb, " ", resp.phase()), resp.done_bytes(),
                              resp.total_bytes(), resp.seconds(), TerminalWidth() - 1);
      }
    }
    if (line.empty()) {
      line = absl::StrFormat("%s... %.1f s", verb, absl::ToDoubleSeconds(absl::Now() - start));
    }
    std::fprintf(stdout, "\r\033[K%s", line.c_str());
    std::fflush(stdout);
    absl::SleepFor(absl::Milliseconds(250));
  }
  std::fprintf(stdout, "\r\033[K");
  std::fflush(stdout);
}

// The Saver of one save or restore: `latest_filename`, one attempt (as
// every psctl call) and `progress_id` (0: none).
absl::StatusOr<std::unique_ptr<psd::client::Saver>> MakeSaver(const Context& ctx,
                                                              const std::string& latest_filename,
                                                              uint64_t progress_id) {
  psd::client::SaverOptions options;
  options.latest_filename = latest_filename;
  options.timeout = absl::Hours(2);
  options.retry_budget = absl::ZeroDuration();
  options.security = ctx.security;
  options.progress_id = progress_id;
  return psd::client::Saver::Create(ctx.coordinator, options);
}

// Runs `op`, a save or restore carrying `progress_id`; with a nonzero one
// draws its progress meanwhile.
absl::Status WithProgress(const Context& ctx, uint64_t progress_id, const char* verb,
                          const std::function<absl::Status()>& op) {
  if (progress_id == 0) return op();
  PSD_ASSIGN_OR_RETURN(auto coordinator, ConnectCoordinator(ctx, absl::Seconds(2)));
  std::atomic<bool> done{false};
  std::thread progress(DrawProgress, coordinator.get(), progress_id, verb, &done);
  absl::Status s = op();
  done.store(true);
  progress.join();
  return s;
}

// Calls the coordinator (a call the Saver does not make).
template <typename Req, typename Resp>
absl::Status CallCoordinator(const Context& ctx,
                             psd::client::internal::CoordinatorClient::Method<Req, Resp> method,
                             const Req& req, Resp* resp) {
  PSD_ASSIGN_OR_RETURN(auto coordinator, ConnectCoordinator(ctx, absl::Seconds(30)));
  return coordinator->Call(method, req, resp);
}

std::string TimeText(int64_t unix_micros) {
  if (unix_micros <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_micros / 1000000);
  std::tm tm;
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

struct CkptOptions {
  std::string prefix;
  int64_t step = -1;
  std::string dir;
  std::string latest_filename;
  std::vector<std::string> vars;
  std::vector<std::string> map;  // OLD=NEW
  bool reshape = false;
  int max_to_keep = -1;
  double keep_hours = -1;
};

void RunSave(const CkptOptions& o, Context* ctx) {
  const uint64_t progress_id = ShowProgress(*ctx) ? psd::RandomNonzeroId() : 0;
  auto saver = MakeSaver(*ctx, o.latest_filename, progress_id);
  if (!saver.ok()) return Fail(ctx, saver.status());
  std::optional<int64_t> step;
  if (o.step >= 0) step = o.step;
  psd::client::SaveDetails saved;
  absl::Status s = WithProgress(*ctx, progress_id, "saving",
                                [&] { return (*saver)->Save(o.prefix, step, &saved).status(); });
  if (!s.ok()) return Fail(ctx, s);
  const long long fence_micros = absl::ToInt64Microseconds(saved.fence_pause);
  if (ctx->json) {
    std::string deleted;
    for (size_t i = 0; i < saved.deleted.size(); ++i) {
      absl::StrAppend(&deleted, i ? "," : "", JsonString(saved.deleted[i]));
    }
    std::printf(
        "{\"prefix\":%s,\"bytes\":%lld,\"seconds\":%s,\"fence_micros\":%lld,"
        "\"copied_bytes\":%lld,\"deleted\":[%s]}\n",
        JsonString(saved.prefix).c_str(), static_cast<long long>(saved.bytes),
        JsonNumber(saved.seconds).c_str(), fence_micros, static_cast<long long>(saved.copied_bytes),
        deleted.c_str());
    return;
  }
  const double rate = saved.seconds > 0 ? saved.bytes / saved.seconds : 0;
  std::printf("saved %s (%s in %.2f s, %s/s; writes held %.3f ms; copied on write %s)\n",
              saved.prefix.c_str(), FormatBytes(saved.bytes).c_str(), saved.seconds,
              FormatBytes(static_cast<int64_t>(rate)).c_str(), fence_micros / 1000.0,
              FormatBytes(saved.copied_bytes).c_str());
  for (const auto& d : saved.deleted) std::printf("deleted %s\n", d.c_str());
}

void RunList(const CkptOptions& o, Context* ctx) {
  psd::ListCheckpointsRequest req;
  req.set_dir(o.dir);
  req.set_latest_filename(o.latest_filename);
  psd::ListCheckpointsResponse resp;
  absl::Status s = CallCoordinator(*ctx, &psd::Coordinator::Stub::ListCheckpoints, req, &resp);
  if (!s.ok()) return Fail(ctx, s);
  if (ctx->json) {
    std::string out = absl::StrCat("{\"dir\":", JsonString(resp.dir()), ",\"checkpoints\":[");
    for (int i = 0; i < resp.checkpoints_size(); ++i) {
      const auto& c = resp.checkpoints(i);
      absl::StrAppend(&out, i ? "," : "", "{\"prefix\":", JsonString(c.prefix()),
                      ",\"step\":", c.has_global_step() ? absl::StrCat(c.global_step()) : "null",
                      ",\"saved_unix_micros\":", c.saved_unix_micros(), ",\"bytes\":", c.bytes(),
                      ",\"kept_forever\":", c.kept_forever() ? "true" : "false",
                      ",\"managed\":", c.managed() ? "true" : "false",
                      ",\"latest\":", c.latest() ? "true" : "false", "}");
    }
    absl::StrAppend(&out, "]}");
    std::printf("%s\n", out.c_str());
    return;
  }
  std::vector<std::vector<std::string>> rows = {{"PREFIX", "STEP", "SAVED", "SIZE", "KEPT"}};
  for (const auto& c : resp.checkpoints()) {
    std::string mark = c.kept_forever() ? "forever" : (c.managed() ? "" : "unmanaged");
    if (c.latest()) mark = mark.empty() ? "latest" : absl::StrCat(mark, ",latest");
    rows.push_back({c.prefix(), c.has_global_step() ? absl::StrCat(c.global_step()) : "-",
                    TimeText(c.saved_unix_micros()), FormatBytes(c.bytes()), mark});
  }
  std::printf("%s", FormatTable(rows).c_str());
}

void RunLatest(const CkptOptions& o, Context* ctx) {
  auto saver = MakeSaver(*ctx, o.latest_filename, 0);
  if (!saver.ok()) return Fail(ctx, saver.status());
  absl::StatusOr<std::optional<std::string>> latest = (*saver)->LatestCheckpoint(o.dir);
  if (!latest.ok()) return Fail(ctx, latest.status());
  if (ctx->json) {
    std::printf("{\"latest\":%s}\n", latest->has_value() ? JsonString(**latest).c_str() : "null");
    return;
  }
  if (!latest->has_value()) {
    return Fail(ctx, absl::NotFoundError("no checkpoint"));
  }
  std::printf("%s\n", (*latest)->c_str());
}

void RunRestore(const CkptOptions& o, Context* ctx) {
  psd::client::RestoreOptions only;
  only.reshape = o.reshape;
  for (const auto& v : o.vars) {
    for (absl::string_view name : absl::StrSplit(v, ',', absl::SkipEmpty())) {
      only.variables.push_back(std::string(name));  // one named twice is restored once
    }
  }
  for (const auto& m : o.map) {
    std::vector<std::string> kv = absl::StrSplit(m, absl::MaxSplits('=', 1));
    if (kv.size() != 2 || kv[0].empty() || kv[1].empty()) {
      return Fail(ctx, absl::InvalidArgumentError(
                           absl::StrCat("--map wants CHECKPOINT_NAME=VARIABLE, got '", m, "'")));
    }
    only.name_map[kv[0]] = kv[1];
  }
  const uint64_t progress_id = ShowProgress(*ctx) ? psd::RandomNonzeroId() : 0;
  auto saver = MakeSaver(*ctx, o.latest_filename, progress_id);
  if (!saver.ok()) return Fail(ctx, saver.status());
  psd::client::RestoreDetails restored;
  absl::Status s = WithProgress(*ctx, progress_id, "restoring",
                                [&] { return (*saver)->Restore(o.prefix, only, &restored); });
  if (!s.ok()) return Fail(ctx, s);
  if (ctx->json) {
    std::string names;
    for (size_t i = 0; i < restored.restored.size(); ++i) {
      absl::StrAppend(&names, i ? "," : "", JsonString(restored.restored[i]));
    }
    std::printf("{\"prefix\":%s,\"restored\":[%s],\"bytes\":%lld,\"seconds\":%s}\n",
                JsonString(restored.prefix).c_str(), names.c_str(),
                static_cast<long long>(restored.bytes), JsonNumber(restored.seconds).c_str());
    return;
  }
  std::printf("restored %d variables (%s in %.2f s) from %s\n",
              static_cast<int>(restored.restored.size()), FormatBytes(restored.bytes).c_str(),
              restored.seconds, restored.prefix.c_str());
}

void RunPolicy(const CkptOptions& o, Context* ctx) {
  psd::CheckpointPolicyRequest req;
  if (o.max_to_keep >= 0) req.mutable_set()->set_max_to_keep(o.max_to_keep);
  if (o.keep_hours > 0) req.mutable_set()->set_keep_checkpoint_every_n_hours(o.keep_hours);
  psd::CheckpointPolicyResponse resp;
  absl::Status s = CallCoordinator(*ctx, &psd::Coordinator::Stub::Policy, req, &resp);
  if (!s.ok()) return Fail(ctx, s);
  const auto& p = resp.policy();
  if (ctx->json) {
    std::printf("{\"dir\":%s,\"max_to_keep\":%d,\"keep_checkpoint_every_n_hours\":%s}\n",
                JsonString(p.dir()).c_str(), p.max_to_keep(),
                JsonNumber(p.keep_checkpoint_every_n_hours()).c_str());
    return;
  }
  std::printf("dir: %s\nmax_to_keep: %d%s\nkeep_checkpoint_every_n_hours: %g\n",
              p.dir().empty() ? "(none)" : p.dir().c_str(), p.max_to_keep(),
              p.max_to_keep() == 0 ? " (keep all)" : "", p.keep_checkpoint_every_n_hours());
}

// An option's value must be an integer >= 0 (CLI11's own check names the
// range up to the largest double).
CLI::Validator NonNegativeInteger() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        int64_t value = 0;
        if (!absl::SimpleAtoi(text, &value) || value < 0) {
          return "must be an integer >= 0, got " + text;
        }
        return "";
      },
      "INT>=0");
}

}  // namespace

void AddCkptClusterCommands(CLI::App* ckpt, Context* ctx) {
  auto o = std::make_shared<CkptOptions>();
  auto latest_file = [o](CLI::App* c) {
    c->add_option("--latest-filename", o->latest_filename, "State file name (default checkpoint)");
  };

  CLI::App* save = ckpt->add_subcommand("save", "Save a consistent checkpoint of every variable");
  save->fallthrough();
  save->add_option("prefix", o->prefix,
                   "Checkpoint prefix on the servers (default: <checkpoint dir>/model.ckpt)");
  save->add_option("--step", o->step, "Global step: the checkpoint is PREFIX-STEP")
      ->check(NonNegativeInteger());
  latest_file(save);
  save->callback([o, ctx] { RunSave(*o, ctx); });

  CLI::App* list = ckpt->add_subcommand("list", "List checkpoints: step, time, size, kept mark");
  list->fallthrough();
  list->add_option("dir", o->dir, "Directory (default: the coordinator's checkpoint dir)");
  latest_file(list);
  list->callback([o, ctx] { RunList(*o, ctx); });

  CLI::App* latest = ckpt->add_subcommand("latest", "Print the latest checkpoint's prefix");
  latest->fallthrough();
  latest->add_option("dir", o->dir, "Directory (default: the coordinator's checkpoint dir)");
  latest_file(latest);
  latest->callback([o, ctx] { RunLatest(*o, ctx); });

  CLI::App* restore = ckpt->add_subcommand(
      "restore", "Restore a checkpoint into the running cluster (lost parts included)");
  restore->fallthrough();
  restore->add_option("prefix", o->prefix, "PREFIX, a directory, or latest (default)");
  // One value per occurrence (repeat the option for more), so a PREFIX
  // after them is not taken for another.
  restore->add_option("--vars", o->vars, "Variables to restore (default all); comma-separated")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  restore->add_option("--map", o->map, "CHECKPOINT_NAME=VARIABLE, restore under another name")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  restore->add_flag("--reshape", o->reshape,
                    "Restore a tensor of another shape but as many elements into an "
                    "unpartitioned variable (TensorFlow's Saver(reshape=True))");
  latest_file(restore);
  restore->callback([o, ctx] { RunRestore(*o, ctx); });

  CLI::App* policy = ckpt->add_subcommand("policy", "Show (or set) the retention policy");
  policy->fallthrough();
  policy->add_option("--max-to-keep", o->max_to_keep, "Set max_to_keep (0 keeps all)")
      ->check(NonNegativeInteger());
  policy->add_option("--keep-every-n-hours", o->keep_hours, "Set keep_checkpoint_every_n_hours")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double hours = 0;
            if (!absl::SimpleAtod(text, &hours) || !(hours > 0) || !std::isfinite(hours)) {
              return "must be a positive number of hours, got " + text;
            }
            return "";
          },
          "HOURS>0"));
  policy->callback([o, ctx] { RunPolicy(*o, ctx); });
}

}  // namespace psctl
