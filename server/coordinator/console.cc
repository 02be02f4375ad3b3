#include "coordinator/console.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "psd/dtype.h"
#include "psd/grpc_status.h"
#include "psd/parallel.h"
#include "psd/random_id.h"
#include "psd/tokens.h"
#include "spdlog/spdlog.h"
#include "runtime/peer_channel.h"

namespace psd {

namespace {

double UnixNow() { return absl::ToUnixMicros(absl::Now()) / 1e6; }

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded decoding ("%2F" and "+").
std::string UrlDecode(absl::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out.push_back(' ');
    } else if (text[i] == '%' && i + 2 < text.size() && HexDigit(text[i + 1]) >= 0 &&
               HexDigit(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexDigit(text[i + 1]) * 16 + HexDigit(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// The value of `key` in a query string ("a=1&token=x"); empty if absent.
std::string QueryValue(absl::string_view query, absl::string_view key) {
  for (absl::string_view pair : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    const size_t eq = pair.find('=');
    if (eq != absl::string_view::npos && pair.substr(0, eq) == key) {
      return UrlDecode(pair.substr(eq + 1));
    }
  }
  return "";
}

std::string ShapeText(const TensorShapeProto& shape) {
  return absl::StrCat("[", absl::StrJoin(shape.dims(), ","), "]");
}

HttpResponse Answer(int status, std::string content_type, std::string body) {
  HttpResponse response;
  response.status = status;
  response.content_type = std::move(content_type);
  response.body = std::move(body);
  // Figures of a live cluster (and an admin-only page): never from a cache,
  // never sniffed as something else, never framed, and the address (which
  // may carry ?token=) never sent on as a referrer.
  response.headers = {{"Cache-Control", "no-store"},
                      {"X-Content-Type-Options", "nosniff"},
                      {"X-Frame-Options", "DENY"},
                      {"Referrer-Policy", "no-referrer"}};
  return response;
}

}  // namespace

std::vector<std::pair<int32_t, ShardCounters>> ShardCountersOf(const ListShardsResponse& statuses,
                                                               double now_unix_seconds) {
  std::vector<std::pair<int32_t, ShardCounters>> out;
  for (const ShardStatus& s : statuses.shards()) {
    if (!s.has_traffic()) continue;
    const ShardTraffic& t = s.traffic();
    ShardCounters c;
    c.incarnation = s.incarnation();
    c.heard_unix_seconds = now_unix_seconds - static_cast<double>(s.millis_since_traffic()) / 1e3;
    c.started_unix_seconds = c.heard_unix_seconds - t.uptime_seconds();
    c.read_ops = static_cast<double>(t.read_ops());
    c.write_ops = static_cast<double>(t.write_ops());
    c.failed_ops = static_cast<double>(t.failed_ops());
    c.received_bytes = static_cast<double>(t.received_bytes());
    c.sent_bytes = static_cast<double>(t.sent_bytes());
    c.fences = static_cast<double>(t.fences());
    c.fenced_seconds = t.fenced_seconds();
    c.read_latency.assign(t.read_latency_buckets().begin(), t.read_latency_buckets().end());
    c.write_latency.assign(t.write_latency_buckets().begin(), t.write_latency_buckets().end());
    out.emplace_back(s.shard_id(), std::move(c));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Console>> Console::Create(Registry* registry,
                                                         CoordinatorService* service,
                                                         const MetricsRegistry* metrics,
                                                         ConsoleOptions options) {
  std::unique_ptr<TokenAuthorizer> authorizer;
  if (!options.token_file.empty()) {
    auto entries = LoadTokenFile(options.token_file);
    if (!entries.ok()) return entries.status();
    authorizer = std::make_unique<TokenAuthorizer>(*entries);
  }
  std::unique_ptr<Console> console(new Console(registry, service, metrics, std::move(options)));
  console->authorizer_ = std::move(authorizer);
  return console;
}

Console::Console(Registry* registry, CoordinatorService* service, const MetricsRegistry* metrics,
                 ConsoleOptions options)
    : registry_(registry),
      service_(service),
      metrics_(metrics),
      options_(std::move(options)),
      samples_(static_cast<size_t>(std::max(1, options_.sample_capacity))),
      shard_traffic_(UnixNow()),
      coordinator_(options_.coordinator) {}

void Console::SetCoordinatorAddress(std::string address) {
  absl::MutexLock lock(&mu_);
  coordinator_ = std::move(address);
}

Console::~Console() {
  stop_.Notify();
  if (sampler_.joinable()) sampler_.join();
}

void Console::Start() {
  if (sampler_.joinable()) return;
  sampler_ = std::thread([this] {
    const absl::Duration interval = absl::Seconds(std::max(0.01, options_.sample_interval_seconds));
    SampleNow();  // the first digest, so the first sample comes one interval later
    while (!stop_.WaitForNotificationWithTimeout(interval)) SampleNow();
  });
}

void Console::SampleNow() {
  if (metrics_ != nullptr) {
    const std::vector<std::pair<int32_t, ShardCounters>> shards =
        ShardCountersOf(service_->ShardStatuses(), UnixNow());
    const double now = UnixNow();
    MetricsDigest digest = DigestMetrics(ParseMetricsText(metrics_->Render()));
    absl::MutexLock lock(&sample_mu_);
    if (last_digest_.has_value()) {
      ConsoleSample sample = SampleBetween(last_digest_->second, last_digest_->first, digest, now);
      shard_traffic_.Add(shards, now - last_digest_->first, &sample);
      samples_.Push(std::move(sample));
    } else {
      // The first look: the shards' counters as they are now are the
      // baseline of the first sample.
      ConsoleSample first;
      first.unix_seconds = now;
      shard_traffic_.Add(shards, 0, &first);
    }
    last_digest_ = std::make_pair(now, std::move(digest));
  }
  RefreshPartStates();
}

void Console::RefreshPartStates() {
  struct Ask {
    int32_t id;
    uint64_t incarnation;
    std::shared_ptr<Shard::Stub> stub;
  };
  std::vector<Ask> asks;
  const ListShardsResponse statuses = service_->ShardStatuses();
  {
    absl::MutexLock lock(&mu_);
    std::set<std::string> addresses;
    std::set<int32_t> ids;
    for (const ShardStatus& s : statuses.shards()) {
      addresses.insert(s.address());
      ids.insert(s.shard_id());
      if (!s.live()) continue;
      auto& stub = stubs_[s.address()];
      if (stub == nullptr) {
        stub = Shard::NewStub(grpc::CreateCustomChannel(
            s.address(),
            options_.shard_credentials != nullptr ? options_.shard_credentials
                                                  : grpc::InsecureChannelCredentials(),
            PeerChannelArguments(options_.max_message_bytes)));
      }
      asks.push_back({s.shard_id(), s.incarnation(), stub});
    }
    // Only the shards registered now: the maps stay as small as the cluster.
    for (auto it = stubs_.begin(); it != stubs_.end();) {
      it = addresses.count(it->first) ? std::next(it) : stubs_.erase(it);
    }
    for (auto it = part_states_.begin(); it != part_states_.end();) {
      it = ids.count(it->first) ? std::next(it) : part_states_.erase(it);
    }
  }
  std::vector<ListVariablesResponse> answers(asks.size());
  std::vector<absl::Status> got = RunParallel(asks.size(), [&](size_t i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.shard_timeout));
    return FromGrpcStatus(asks[i].stub->ListVariables(&ctx, ListVariablesRequest(), &answers[i]));
  });
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (size_t i = 0; i < asks.size(); ++i) {
    if (!got[i].ok()) {
      // Its last answer stays, with its age; another incarnation's is
      // worthless.
      auto it = part_states_.find(asks[i].id);
      if (it != part_states_.end() && it->second.incarnation != asks[i].incarnation) {
        part_states_.erase(it);
      }
      continue;
    }
    PartStates& states = part_states_[asks[i].id];
    states.incarnation = asks[i].incarnation;
    states.at = now;
    states.initialized.clear();
    for (const VariableInfo& info : answers[i].variables()) {
      states.initialized[info.name()] = info.initialized();
    }
  }
}

ConsoleView Console::View() const {
  ConsoleView view;
  view.now_unix_seconds = UnixNow();
  const ListShardsResponse statuses = service_->ShardStatuses();
  view.num_variables = statuses.num_variables();
  view.num_sessions = statuses.num_sessions();
  std::map<int32_t, std::pair<bool, uint64_t>> shard_live;  // id -> (live, incarnation)
  for (const ShardStatus& s : statuses.shards()) {
    shard_live[s.shard_id()] = {s.live(), s.incarnation()};
    if (static_cast<int>(view.shards.size()) >= kConsoleMaxShards) {
      ++view.shards_omitted;
      continue;
    }
    ConsoleShard& c = view.shards.emplace_back();
    c.id = s.shard_id();
    c.address = s.address();
    c.live = s.live();
    c.drained = s.drained();
    c.device = s.device();
    c.incarnation = s.incarnation();
    c.memory_used = s.memory_used_bytes();
    c.memory_limit = s.memory_limit_bytes();
    c.reported_variables = s.num_variables();
    c.placed_parts = s.placed_parts();
    c.placed_bytes = s.placed_bytes();
    c.lost_parts = s.lost_parts();
    c.millis_since_heartbeat = s.millis_since_heartbeat();
    if (s.has_traffic()) {
      c.read_ops = static_cast<int64_t>(s.traffic().read_ops());
      c.write_ops = static_cast<int64_t>(s.traffic().write_ops());
      c.failed_ops = static_cast<int64_t>(s.traffic().failed_ops());
      c.millis_since_traffic = s.millis_since_traffic();
    }
  }

  const std::vector<VariableDef> defs = registry_->List("");
  view.num_variables = std::max<int64_t>(view.num_variables, static_cast<int64_t>(defs.size()));
  {
    absl::MutexLock lock(&mu_);
    view.coordinator = coordinator_;
    absl::Time oldest = absl::InfiniteFuture();
    for (const auto& [id, states] : part_states_) oldest = std::min(oldest, states.at);
    if (oldest != absl::InfiniteFuture()) {
      view.part_states_age_seconds = absl::ToDoubleSeconds(absl::Now() - oldest);
    }
    for (const VariableDef& def : defs) {
      if (static_cast<int>(view.variables.size()) >= kConsoleMaxVariables) {
        ++view.variables_omitted;
        continue;
      }
      ConsoleVariable& v = view.variables.emplace_back();
      v.name = def.name();
      v.dtype = DataTypeName(def.dtype());
      if (def.has_embedding()) {
        v.kind = def.embedding().slot_of().empty() ? "embedding table" : "embedding slot";
        v.shape = absl::StrCat("[keys,", def.embedding().embedding_dim(), "]");
      } else {
        v.kind = "dense";
        v.shape = ShapeText(def.shape());
      }
      v.trainable = def.trainable();
      v.partitions = def.parts_size();
      const absl::Time created = absl::FromUnixMicros(def.created_unix_micros());
      int initialized = 0, uninitialized = 0, unknown = 0, missing = 0;
      for (const VariablePart& p : def.parts()) {
        std::string state = "unknown";
        auto shard = part_states_.find(p.shard_id());
        auto live = shard_live.find(p.shard_id());
        if (shard != part_states_.end() && live != shard_live.end() &&
            shard->second.incarnation == live->second.second) {
          auto it = shard->second.initialized.find(p.name());
          if (it != shard->second.initialized.end()) {
            state = it->second ? "initialized" : "uninitialized";
          } else if (shard->second.at > created) {
            // The shard answered after the part was created, without it.
            state = "missing";
          }
        }
        if (state == "initialized")
          ++initialized;
        else if (state == "uninitialized")
          ++uninitialized;
        else if (state == "missing")
          ++missing;
        else
          ++unknown;
        if (static_cast<int>(v.parts.size()) < kConsoleMaxPartsPerVariable) {
          v.parts.push_back({p.name(), p.shard_id(), state});
        } else {
          ++v.parts_omitted;
        }
      }
      if (missing > 0) {
        v.initialized = "lost";
      } else if (unknown > 0) {
        v.initialized = "unknown";
      } else if (uninitialized == 0) {
        v.initialized = "yes";
      } else {
        v.initialized = initialized == 0 ? "no" : "partly";
      }
    }
  }

  view.checkpoint_dir = options_.checkpoint_dir;
  if (!options_.checkpoint_dir.empty()) {
    auto listed = service_->checkpoints()->List("", "");
    if (listed.ok()) {
      // Oldest first in the listing; the newest ones here, newest first.
      const auto& all = listed->checkpoints();
      for (int i = all.size() - 1; i >= 0; --i) {
        if (static_cast<int>(view.checkpoints.size()) >= kConsoleMaxCheckpoints) {
          view.checkpoints_omitted = i + 1;
          break;
        }
        const CheckpointInfo& info = all[i];
        ConsoleCheckpoint& c = view.checkpoints.emplace_back();
        c.prefix = info.prefix();
        if (info.has_global_step()) c.step = info.global_step();
        c.saved_unix_micros = info.saved_unix_micros();
        c.bytes = info.bytes();
        std::vector<std::string> retention;
        if (info.latest()) retention.push_back("latest");
        if (info.kept_forever()) {
          retention.push_back("kept forever");
        } else if (info.managed()) {
          retention.push_back("retained");
        } else {
          retention.push_back("unmanaged");
        }
        c.retention = absl::StrJoin(retention, ", ");
      }
    } else if (!absl::IsNotFound(listed.status())) {
      view.checkpoint_error = absl::StrCat("cannot list checkpoints: ", listed.status().ToString());
    }
  }
  for (const CheckpointProgressResponse& op : service_->checkpoints()->Running()) {
    view.running.push_back(
        {op.operation(), op.phase(), op.prefix(), op.done_bytes(), op.total_bytes(), op.seconds()});
  }
  for (const PartMoveRecord& m : registry_->PendingMoves()) {
    if (static_cast<int>(view.moves.size()) >= kConsoleMaxMoves) break;
    view.moves.push_back({absl::StrCat(absl::Hex(m.move_id())), absl::StrJoin(m.parts(), ", "),
                          m.source_shard(), m.target_shard(), m.committed(),
                          std::max(0.0, view.now_unix_seconds -
                                            static_cast<double>(m.started_unix_micros()) * 1e-6)});
  }
  view.samples = samples_.Snapshot();
  return view;
}

std::optional<HttpResponse> Console::Deny(const HttpRequest& request,
                                          absl::string_view query) const {
  if (authorizer_ == nullptr) return std::nullopt;
  std::string authorization = request.authorization;
  if (authorization.empty()) {
    const std::string token = QueryValue(query, "token");
    if (!token.empty()) authorization = "Bearer " + token;
  }
  absl::StatusOr<Role> role = authorizer_->RoleOf(authorization);
  if (!role.ok()) {
    HttpResponse denied =
        Answer(401, "text/html; charset=utf-8", RenderConsoleDenied(401, role.status().message()));
    denied.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"psd console\"");
    return denied;
  }
  if (!RoleGrants(*role, ROLE_ADMIN)) {
    return Answer(403, "text/html; charset=utf-8",
                  RenderConsoleDenied(403, absl::StrCat("The console needs the admin role; the "
                                                        "token has ",
                                                        RoleName(*role), ".")));
  }
  return std::nullopt;
}

std::optional<HttpResponse> Console::Handle(const HttpRequest& request) const {
  const size_t question = request.target.find('?');
  const absl::string_view path = absl::string_view(request.target).substr(0, question);
  const absl::string_view query = question == std::string::npos
                                      ? absl::string_view()
                                      : absl::string_view(request.target).substr(question + 1);
  enum class Route { kPage, kMain, kJson } route;
  if (path == "/" || path == "/index.html") {
    route = Route::kPage;
  } else if (path == "/console/main") {
    route = Route::kMain;
  } else if (path == "/console.json") {
    route = Route::kJson;
  } else {
    return std::nullopt;
  }
  if (std::optional<HttpResponse> denied = Deny(request, query)) return denied;
  const ConsoleView view = View();
  switch (route) {
    case Route::kPage: {
      const std::string nonce = absl::StrFormat("%016x%016x", RandomNonzeroId(), RandomNonzeroId());
      HttpResponse page = Answer(200, "text/html; charset=utf-8", RenderConsolePage(view, nonce));
      // Only the page's own script runs; its only connection is back here.
      page.headers.emplace_back(
          "Content-Security-Policy",
          absl::StrCat("default-src 'none'; script-src 'nonce-", nonce,
                       "'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
                       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"));
      return page;
    }
    case Route::kMain:
      return Answer(200, "text/html; charset=utf-8", RenderConsoleMain(view));
    case Route::kJson:
      return Answer(200, "application/json", RenderConsoleJson(view));
  }
  return std::nullopt;
}

}  // namespace psd
