// `psctl status`, `psctl vars list|show|get|evict|move`, `psctl shard drain`,
// `psctl rebalance` and `psctl shutdown`: the coordinator's view of the
// cluster and its variables, moving parts, and stopping it. While a move,
// drain or rebalance runs, its progress is shown (MoveProgress): a bar on
// a terminal, plain lines on stderr elsewhere, nothing with --json.
// status, list and show ask the coordinator (and, for show, each part's
// shard) without opening a session; get reads the value through a
// short-lived client session, which concatenates a partitioned variable's
// parts; evict asks each part's shard of an embedding table to run the
// table's eviction policies; shutdown asks the coordinator to stop the
// cluster.
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "commands.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/grpcpp.h"
#include "output.h"
#include "psd/client.h"
#include "psd/coordinator.grpc.pb.h"
#include "psd/dtype.h"
#include "psd/grpc_status.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/random_id.h"
#include "psd/seeds.h"
#include "psd/session.h"
#include "psd/shard.grpc.pb.h"
#include "psd/status.h"

namespace psctl {
namespace {

template <typename Req, typename Resp>
absl::Status Call(const Context& ctx,
                  psd::client::internal::CoordinatorClient::Method<Req, Resp> method,
                  const Req& req, Resp* resp, absl::Duration timeout = absl::Seconds(10)) {
  PSD_ASSIGN_OR_RETURN(auto coordinator, ConnectCoordinator(ctx, timeout));
  return coordinator->Call(method, req, resp);
}

int TerminalWidth() {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

std::string ShapeText(const psd::TensorShapeProto& s) {
  return absl::StrCat("[", absl::StrJoin(s.dims(), ","), "]");
}
std::string ShapeJson(const psd::TensorShapeProto& s) { return ShapeText(s); }

void RunStatus(Context* ctx) {
  psd::ListShardsResponse resp;
  absl::Status s = Call(*ctx, &psd::Coordinator::Stub::ListShards, psd::ListShardsRequest(), &resp);
  if (!s.ok()) return Fail(ctx, s);
  if (ctx->json) {
    std::string out = absl::StrCat("{\"coordinator\":", JsonString(ctx->coordinator),
                                   ",\"variables\":", resp.num_variables(),
                                   ",\"sessions\":", resp.num_sessions(), ",\"shards\":[");
    for (int i = 0; i < resp.shards_size(); ++i) {
      const psd::ShardStatus& sh = resp.shards(i);
      absl::StrAppend(&out, i > 0 ? "," : "", "{\"id\":", sh.shard_id(),
                      ",\"address\":", JsonString(sh.address()), ",\"live\":",
                      sh.live() ? "true" : "false", ",\"incarnation\":",
                      JsonString(absl::StrFormat("%016x", sh.incarnation())),
                      ",\"device\":", JsonString(sh.device()),
                      ",\"host\":", JsonString(sh.host()),
                      ",\"lease_remaining_millis\":", sh.lease_remaining_millis(),
                      ",\"variables\":", sh.num_variables(), ",\"placed_parts\":", sh.placed_parts(),
                      ",\"placed_bytes\":", sh.placed_bytes(),
                      ",\"memory_used_bytes\":", sh.memory_used_bytes(),
                      ",\"memory_limit_bytes\":", sh.memory_limit_bytes(),
                      ",\"lost_parts\":", sh.lost_parts(),
                      ",\"primary_groups\":", sh.primary_groups(),
                      ",\"backup_groups\":", sh.backup_groups(),
                      ",\"drained\":", sh.drained() ? "true" : "false",
                      ",\"millis_since_heartbeat\":", sh.millis_since_heartbeat());
      // The shard's own op counters since it started, as its last heartbeat
      // carried them (the console's charts come from the same), with their
      // age; null before its first report.
      if (sh.has_traffic()) {
        absl::StrAppend(&out, ",\"read_ops\":", sh.traffic().read_ops(),
                        ",\"write_ops\":", sh.traffic().write_ops(),
                        ",\"failed_ops\":", sh.traffic().failed_ops(),
                        ",\"millis_since_traffic\":", sh.millis_since_traffic(), "}");
      } else {
        out += ",\"read_ops\":null,\"write_ops\":null,\"failed_ops\":null,"
               "\"millis_since_traffic\":null}";
      }
    }
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
    return;
  }
  std::string out = absl::StrCat("coordinator ", ctx->coordinator, ": ", resp.num_variables(),
                                 " variables, ", resp.num_sessions(), " open sessions, ",
                                 resp.shards_size(), " shards\n");
  std::vector<std::vector<std::string>> rows = {{"SHARD", "ADDRESS", "LIVE", "INCARNATION",
                                                 "DEVICE", "VARIABLES", "PARTS", "BYTES", "MEMORY",
                                                 "LOST", "OPS READ/WRITE", "HEARTBEAT"}};
  // HOST only when the cluster says where its shards run.
  bool hosts = false;
  for (const psd::ShardStatus& sh : resp.shards()) hosts |= !sh.host().empty();
  if (hosts) rows[0].insert(rows[0].begin() + 5, "HOST");
  // REPLICAS (replicated groups it is the primary of / holds a backup of)
  // only when the cluster has replicated variables.
  bool replicas = false;
  for (const psd::ShardStatus& sh : resp.shards()) {
    replicas |= sh.primary_groups() > 0 || sh.backup_groups() > 0;
  }
  if (replicas) rows[0].insert(rows[0].end() - 2, "PRIMARY/BACKUP");
  for (const psd::ShardStatus& sh : resp.shards()) {
    rows.push_back({std::to_string(sh.shard_id()), sh.address(),
                    absl::StrCat(sh.live() ? "yes" : "NO", sh.drained() ? " (drained)" : ""),
                    absl::StrFormat("%016x", sh.incarnation()), sh.device(),
                    std::to_string(sh.num_variables()), std::to_string(sh.placed_parts()),
                    FormatBytes(sh.placed_bytes()),
                    sh.memory_limit_bytes() > 0
                        ? absl::StrCat(FormatBytes(sh.memory_used_bytes()), " / ",
                                       FormatBytes(sh.memory_limit_bytes()))
                        : FormatBytes(sh.memory_used_bytes()),
                    std::to_string(sh.lost_parts()),
                    sh.has_traffic() ? absl::StrCat(sh.traffic().read_ops(), " / ",
                                                    sh.traffic().write_ops())
                                     : std::string("-"),
                    absl::StrCat(sh.millis_since_heartbeat(), " ms ago")});
    if (replicas) {
      rows.back().insert(rows.back().end() - 2,
                         absl::StrCat(sh.primary_groups(), " / ", sh.backup_groups()));
    }
    if (hosts) rows.back().insert(rows.back().begin() + 5, sh.host().empty() ? "-" : sh.host());
  }
  out += FormatTable(rows);
  std::fputs(out.c_str(), stdout);
}

void RunList(const std::string& collection, Context* ctx) {
  psd::CoordinatorListVariablesRequest req;
  req.set_collection(collection);
  psd::CoordinatorListVariablesResponse resp;
  absl::Status s = Call(*ctx, &psd::Coordinator::Stub::ListVariables, req, &resp);
  if (!s.ok()) return Fail(ctx, s);
  if (ctx->json) {
    std::string out = "{\"variables\":[";
    for (int i = 0; i < resp.variables_size(); ++i) {
      const auto& h = resp.variables(i);
      std::vector<std::string> colls;
      for (const auto& c : h.collections()) colls.push_back(JsonString(c));
      int lost = 0;
      for (const auto& p : h.parts()) lost += p.lost() ? 1 : 0;
      absl::StrAppend(&out, i > 0 ? "," : "", "{\"name\":", JsonString(h.name()),
                      ",\"dtype\":", JsonString(psd::DataTypeName(h.dtype())),
                      ",\"shape\":", ShapeJson(h.shape()), ",\"parts\":", h.parts_size(),
                      VariableKindJson(h), ",\"lost_parts\":", lost,
                      ",\"trainable\":", h.trainable() ? "true" : "false", ",\"collections\":[",
                      absl::StrJoin(colls, ","), "]}");
    }
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
    return;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "DTYPE", "SHAPE", "PARTITIONING", "KIND", "TRAINABLE", "COLLECTIONS"}};
  for (const auto& h : resp.variables()) {
    rows.push_back({h.name(), psd::DataTypeName(h.dtype()), ShapeText(h.shape()),
                    PartitioningColumn(h), VariableKindText(h), h.trainable() ? "yes" : "no",
                    absl::StrJoin(h.collections(), ",")});
  }
  std::string out = absl::StrCat(resp.variables_size(), " variables",
                                 collection.empty() ? "" : absl::StrCat(" in ", collection), "\n");
  out += FormatTable(rows);
  std::fputs(out.c_str(), stdout);
}

std::string PartitioningText(const psd::VariableHandle& h) {
  if (h.has_embedding()) return absl::StrCat(h.parts_size(), " parts, keys by hash");
  return absl::StrCat(h.parts_size(), " parts along axis ", h.partition_axis(), " (partitions [",
                      absl::StrJoin(h.partitions(), ", "), "])");
}

// The initializer's kind ("random_normal", "none" when unset) and, for one
// drawing random values, the seed the values are keyed by.
std::string InitializerKind(const psd::InitializerSpec& spec) {
  const google::protobuf::OneofDescriptor* kind = spec.GetDescriptor()->FindOneofByName("kind");
  const google::protobuf::FieldDescriptor* set =
      kind == nullptr ? nullptr : spec.GetReflection()->GetOneofFieldDescriptor(spec, kind);
  return set == nullptr ? "none" : set->name();
}

std::string InitializerText(const psd::InitializerSpec& spec) {
  std::string text = InitializerKind(spec);
  if (psd::DrawsRandomValues(spec)) absl::StrAppend(&text, " (seed ", spec.seed(), ")");
  return text;
}

// The part `name` as its shard at `address` holds it, with the table's
// counts (VariableInfo.embedding) where the shard reports them: asked
// directly, as the client library's VariableInfo does not carry them.
absl::StatusOr<psd::VariableInfo> ShardVariableInfo(const Context& ctx, const std::string& address,
                                                    const std::string& name) {
  PSD_ASSIGN_OR_RETURN(auto credentials, psd::internal::MakeChannelCredentials(ctx.security));
  auto stub = psd::Shard::NewStub(grpc::CreateChannel(address, credentials));
  psd::ListVariablesRequest req;
  req.set_prefix(name);
  psd::ListVariablesResponse resp;
  grpc::ClientContext cctx;
  cctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  PSD_RETURN_IF_ERROR(psd::FromGrpcStatus(stub->ListVariables(&cctx, req, &resp)));
  for (const psd::VariableInfo& info : resp.variables()) {
    if (info.name() == name) return info;
  }
  return absl::NotFoundError(absl::StrCat("shard ", address, " holds no ", name));
}

void RunShow(const std::string& name, Context* ctx) {
  psd::LookupVariableRequest req;
  req.set_name(name);
  psd::LookupVariableResponse resp;
  absl::Status s = Call(*ctx, &psd::Coordinator::Stub::LookupVariable, req, &resp);
  if (!s.ok()) return Fail(ctx, s);
  const psd::VariableHandle& h = resp.handle();
  // Each part's state as its shard reports it.
  std::vector<std::string> state(h.parts_size());
  // An embedding table's parts: their counts, where the shards report them.
  std::vector<std::optional<psd::VariableInfo>> stats(h.parts_size());
  std::map<std::string, std::unique_ptr<psd::client::ShardClient>> shards;
  for (int i = 0; i < h.parts_size(); ++i) {
    const auto& p = h.parts(i);
    if (p.lost()) {
      state[i] = "lost";
      continue;
    }
    if (p.shard_address().empty()) {
      state[i] = "shard not registered";
      continue;
    }
    auto& client = shards[p.shard_address()];
    if (client == nullptr) {
      psd::client::ClientOptions o;
      o.security = ctx->security;
      o.timeout = absl::Seconds(5);
      o.max_attempts = 1;
      auto c = psd::client::ShardClient::Connect(p.shard_address(), o);
      if (!c.ok()) {
        state[i] = absl::StrCat("unreachable (", absl::StatusCodeToString(c.status().code()), ")");
        continue;
      }
      client = *std::move(c);
    }
    auto info = client->Lookup(p.name());
    state[i] = !info.ok() ? absl::StatusCodeToString(info.status().code())
                          : (info->initialized ? "initialized" : "uninitialized");
    if (h.has_embedding() && info.ok()) {
      auto table = ShardVariableInfo(*ctx, p.shard_address(), p.name());
      if (table.ok() && table->has_embedding()) stats[i] = *std::move(table);
    }
  }
  if (ctx->json) {
    std::vector<std::string> colls;
    for (const auto& c : h.collections()) colls.push_back(JsonString(c));
    std::string out = absl::StrCat(
        "{\"name\":", JsonString(h.name()), ",\"dtype\":", JsonString(psd::DataTypeName(h.dtype())),
        ",\"shape\":", ShapeJson(h.shape()), VariableKindJson(h),
        ",\"partitioned\":", h.partitioned() ? "true" : "false",
        ",\"partition_axis\":", h.partition_axis(),
        ",\"trainable\":", h.trainable() ? "true" : "false", ",\"collections\":[",
        absl::StrJoin(colls, ","), "],\"declared_at\":", JsonString(h.declared_at()),
        ",\"initializer\":", JsonString(InitializerKind(h.initializer())),
        ",\"seed\":", h.initializer().seed(), ",\"parts\":[");
    for (int i = 0; i < h.parts_size(); ++i) {
      const auto& p = h.parts(i);
      absl::StrAppend(
          &out, i > 0 ? "," : "", "{\"name\":", JsonString(p.name()),
          ",\"shape\":", ShapeJson(p.shape()), ",\"offset\":[", absl::StrJoin(p.offset(), ","),
          "],\"shard\":", p.shard_id(), ",\"address\":", JsonString(p.shard_address()),
          ",\"lost\":", p.lost() ? "true" : "false", ",\"state\":", JsonString(state[i]),
          ",\"epoch\":", p.epoch(), ",\"backup_shards\":[", absl::StrJoin(p.backup_shards(), ","),
          "],\"in_sync_shards\":[", absl::StrJoin(p.in_sync_shards(), ","), "]",
          stats[i].has_value() ? absl::StrCat(",\"embedding\":", EmbeddingStatsJson(*stats[i]))
                               : std::string(),
          "}");
    }
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
    return;
  }
  std::string out = absl::StrCat(
      h.name(), "\n  kind:         ", VariableKindText(h),
      "\n  dtype:        ", psd::DataTypeName(h.dtype()),
      "\n  shape:        ", ShapeText(h.shape()),
      "\n  partitioning: ", h.partitioned() ? PartitioningText(h) : std::string("none"),
      "\n  trainable:    ", h.trainable() ? "yes" : "no",
      "\n  collections:  ", absl::StrJoin(h.collections(), ", "),
      "\n  initializer:  ", InitializerText(h.initializer()),
      "\n  declared at:  ", h.declared_at().empty() ? "-" : h.declared_at(), "\n");
  std::vector<std::vector<std::string>> rows = {{"PART", "SHAPE", "OFFSET", "SHARD", "ADDRESS", "STATE"}};
  // A replicated variable's parts: epoch, backups, and those in sync.
  bool replicated = false;
  for (const auto& p : h.parts()) replicated |= p.epoch() > 0 || p.backup_shards_size() > 0;
  if (replicated) {
    for (const char* column : {"EPOCH", "BACKUPS", "IN SYNC"}) rows[0].push_back(column);
  }
  if (h.has_embedding()) {
    for (std::string& column : EmbeddingStatsHeader()) rows[0].push_back(std::move(column));
  }
  for (int i = 0; i < h.parts_size(); ++i) {
    const auto& p = h.parts(i);
    rows.push_back({p.name(), ShapeText(p.shape()), absl::StrCat("[", absl::StrJoin(p.offset(), ","), "]"),
                    std::to_string(p.shard_id()), p.shard_address(), state[i]});
    if (replicated) {
      rows.back().push_back(std::to_string(p.epoch()));
      rows.back().push_back(p.backup_shards_size() > 0 ? absl::StrJoin(p.backup_shards(), ",")
                                                       : "-");
      rows.back().push_back(p.in_sync_shards_size() > 0 ? absl::StrJoin(p.in_sync_shards(), ",")
                                                        : "-");
    }
    if (h.has_embedding()) {
      for (std::string& column :
           EmbeddingStatsColumns(stats[i].has_value() ? &*stats[i] : nullptr)) {
        rows.back().push_back(std::move(column));
      }
    }
  }
  out += FormatTable(rows);
  std::fputs(out.c_str(), stdout);
}

// Runs an embedding table's eviction policies on every part now (the
// shards also run them at each checkpoint save), and prints what went.
void RunEvict(const std::string& name, int64_t global_step, Context* ctx) {
  psd::LookupVariableRequest req;
  req.set_name(name);
  psd::LookupVariableResponse resp;
  absl::Status s = Call(*ctx, &psd::Coordinator::Stub::LookupVariable, req, &resp);
  if (!s.ok()) return Fail(ctx, s);
  const psd::VariableHandle& h = resp.handle();
  if (!h.has_embedding()) {
    return Fail(ctx, absl::InvalidArgumentError(absl::StrCat(
                         name, " is a dense variable, not an embedding table: nothing to evict")));
  }
  auto credentials = psd::internal::MakeChannelCredentials(ctx->security);
  if (!credentials.ok()) return Fail(ctx, credentials.status());
  std::vector<psd::EvictEmbeddingResponse> evicted(h.parts_size());
  for (int i = 0; i < h.parts_size(); ++i) {
    const psd::PartHandle& p = h.parts(i);
    if (p.lost() || p.shard_address().empty()) {
      return Fail(
          ctx, absl::UnavailableError(absl::StrCat("part ", p.name(), " of ", name, " is ",
                                                   p.lost() ? "lost" : "on an unregistered shard",
                                                   "; evicted from the parts before it: ", i)));
    }
    auto stub = psd::Shard::NewStub(grpc::CreateChannel(p.shard_address(), *credentials));
    psd::EvictEmbeddingRequest evict;
    evict.set_name(p.name());
    evict.set_global_step(global_step);
    evict.set_shard_incarnation(p.shard_incarnation());
    grpc::ClientContext cctx;
    cctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    s = psd::FromGrpcStatus(stub->EvictEmbedding(&cctx, evict, &evicted[i]));
    if (!s.ok()) {
      return Fail(ctx, absl::Status(s.code(),
                                    absl::StrCat("evicting ", p.name(), " on shard ", p.shard_id(),
                                                 " (", p.shard_address(), "): ", s.message())));
    }
  }
  int64_t total_evicted = 0, total_rows = 0;
  for (const auto& e : evicted) {
    total_evicted += e.evicted();
    total_rows += e.rows();
  }
  if (ctx->json) {
    std::string out = absl::StrCat("{\"name\":", JsonString(name), ",\"evicted\":", total_evicted,
                                   ",\"rows\":", total_rows, ",\"parts\":[");
    for (int i = 0; i < h.parts_size(); ++i) {
      absl::StrAppend(&out, i > 0 ? "," : "", "{\"name\":", JsonString(h.parts(i).name()),
                      ",\"shard\":", h.parts(i).shard_id(), ",\"evicted\":", evicted[i].evicted(),
                      ",\"rows\":", evicted[i].rows(), "}");
    }
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
    return;
  }
  std::string out =
      absl::StrCat(name, ": evicted ", total_evicted, " rows, ", total_rows, " rows left\n");
  std::vector<std::vector<std::string>> rows = {{"PART", "SHARD", "EVICTED", "ROWS"}};
  for (int i = 0; i < h.parts_size(); ++i) {
    rows.push_back({h.parts(i).name(), std::to_string(h.parts(i).shard_id()),
                    std::to_string(evicted[i].evicted()), std::to_string(evicted[i].rows())});
  }
  out += FormatTable(rows);
  std::fputs(out.c_str(), stdout);
}

void RunGet(const std::string& name, int64_t max_values, Context* ctx) {
  psd::client::SessionOptions o;
  o.client = "psctl vars get";
  o.coordinator_retry_budget = absl::Seconds(5);
  o.shard.max_attempts = 2;
  o.shard.security = ctx->security;
  auto session = psd::client::Session::Open(ctx->coordinator, o);
  if (!session.ok()) return Fail(ctx, session.status());
  auto v = (*session)->LookupVariable(name);
  if (!v.ok()) return Fail(ctx, v.status());
  auto value = v->Read();
  if (!value.ok()) return Fail(ctx, value.status());
  const int64_t n = value->num_elements();
  const auto elems = FormatElements(*value, max_values, ctx->json, ctx->json ? -1 : 64);
  if (ctx->json) {
    std::printf("{\"name\":%s,\"dtype\":%s,\"shape\":[%s],\"values\":[%s],\"values_truncated\":%s}\n",
                JsonString(name).c_str(), JsonString(psd::DataTypeName(value->dtype())).c_str(),
                absl::StrJoin(value->shape().dims(), ",").c_str(),
                absl::StrJoin(elems, ",").c_str(),
                static_cast<int64_t>(elems.size()) < n ? "true" : "false");
    return;
  }
  std::string shown = absl::StrJoin(elems, ", ");
  if (static_cast<int64_t>(elems.size()) < n) {
    absl::StrAppend(&shown, ", ... (", n - static_cast<int64_t>(elems.size()), " more)");
  }
  std::printf("%s %s%s = {%s}\n", name.c_str(), psd::DataTypeName(value->dtype()).c_str(),
              value->shape().ToString().c_str(), shown.c_str());
}

// One line per move (or its JSON object), as `vars move` prints it.
std::string MoveLine(const psd::MovePartResponse& m, bool json) {
  if (json) {
    std::vector<std::string> parts;
    for (const auto& p : m.parts()) parts.push_back(JsonString(p));
    return absl::StrFormat(
        "{\"parts\":[%s],\"from\":%d,\"to\":%d,\"bytes\":%d,\"forwarded_writes\":%d,"
        "\"seconds\":%.6f,\"writes_held_seconds\":%.6f}",
        absl::StrJoin(parts, ","), m.source_shard(), m.target_shard(), m.bytes(),
        m.forwarded_writes(), m.seconds(), m.fence_seconds());
  }
  return absl::StrFormat(
      "moved %s from shard %d to shard %d: %s in %.2f s, %d writes forwarded, writes held "
      "%.1f ms\n",
      absl::StrJoin(m.parts(), ", "), m.source_shard(), m.target_shard(), FormatBytes(m.bytes()),
      m.seconds(), m.forwarded_writes(), m.fence_seconds() * 1e3);
}

// The progress id a move, drain or rebalance carries: none with --json
// (nothing is shown), else a random one.
uint64_t MoveProgressId(const Context& ctx) { return ctx.json ? 0 : psd::RandomNonzeroId(); }

// Shows the progress of operation `progress_id` (MoveProgress) until
// `done`. On a terminal: a bar redrawn in place (as `ckpt save` draws its
// own), cleared at the end. Elsewhere: a plain line on stderr whenever a
// move starts or changes phase, so stdout keeps only the result lines that
// scripts read. An older coordinator without the rpc: the elapsed time on
// a terminal, nothing elsewhere.
void ShowMoveProgress(const psd::client::internal::CoordinatorClient* coordinator,
                      uint64_t progress_id, const std::atomic<bool>* done) {
  const bool terminal = isatty(STDOUT_FILENO);
  const absl::Time start = absl::Now();
  bool polling = true;
  std::string last;  // the last plain line's move and phase
  while (!done->load()) {
    psd::MoveProgressResponse p;
    bool found = false;
    if (polling) {
      psd::MoveProgressRequest req;
      req.set_progress_id(progress_id);
      absl::Status s = coordinator->Call(&psd::Coordinator::Stub::MoveProgress, req, &p);
      if (s.code() == absl::StatusCode::kUnimplemented) polling = false;
      found = s.ok() && p.found() && !p.part().empty();
    }
    if (terminal) {
      const std::string line =
          found ? FormatMoveProgress(p, TerminalWidth() - 1)
                : absl::StrFormat("moving... %.1f s", absl::ToDoubleSeconds(absl::Now() - start));
      std::fprintf(stdout, "\r\033[K%s", line.c_str());
      std::fflush(stdout);
    } else if (found) {
      const std::string key = absl::StrCat(p.moves_done(), " ", p.part(), " ", p.phase());
      if (key != last) {
        last = key;
        std::fprintf(stderr, "%s\n", MoveProgressLine(p).c_str());
      }
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
  if (terminal) {
    std::fprintf(stdout, "\r\033[K");
    std::fflush(stdout);
  }
}

// Runs `op` (a call carrying `progress_id`), showing its progress
// meanwhile unless the id is 0.
absl::Status WithMoveProgress(const Context& ctx, uint64_t progress_id,
                              const std::function<absl::Status()>& op) {
  if (progress_id == 0) return op();
  PSD_ASSIGN_OR_RETURN(auto coordinator, ConnectCoordinator(ctx, absl::Seconds(2)));
  if (isatty(STDOUT_FILENO)) {
    // At once, however short the operation: the terminal shows it started.
    std::fputs("\r\033[Kmoving...", stdout);
    std::fflush(stdout);
  }
  std::atomic<bool> done{false};
  std::thread progress(ShowMoveProgress, coordinator.get(), progress_id, &done);
  absl::Status s = op();
  done.store(true);
  progress.join();
  return s;
}

void RunMove(const std::string& part, int32_t target_shard, double timeout_seconds,
             Context* ctx) {
  psd::MovePartRequest req;
  req.set_part(part);
  req.set_target_shard(target_shard);
  req.set_progress_id(MoveProgressId(*ctx));
  psd::MovePartResponse resp;
  absl::Status s = WithMoveProgress(*ctx, req.progress_id(), [&] {
    return Call(*ctx, &psd::Coordinator::Stub::MovePart, req, &resp,
                absl::Seconds(timeout_seconds));
  });
  if (!s.ok()) return Fail(ctx, s);
  std::string line = MoveLine(resp, ctx->json);
  if (ctx->json) line += "\n";
  std::fputs(line.c_str(), stdout);
}

void RunDrain(int32_t shard, bool stop, bool undrain, double timeout_seconds, Context* ctx) {
  psd::DrainShardRequest req;
  req.set_shard_id(shard);
  req.set_stop(stop);
  req.set_undrain(undrain);
  if (!undrain) req.set_progress_id(MoveProgressId(*ctx));
  psd::DrainShardResponse resp;
  absl::Status s = WithMoveProgress(*ctx, req.progress_id(), [&] {
    return Call(*ctx, &psd::Coordinator::Stub::DrainShard, req, &resp,
                absl::Seconds(timeout_seconds));
  });
  if (!s.ok()) return Fail(ctx, s);
  if (ctx->json) {
    std::vector<std::string> moves;
    for (const auto& m : resp.moves()) moves.push_back(MoveLine(m, true));
    std::printf("{\"shard\":%d,\"drained\":%s,\"moves\":[%s],\"stopped\":%s}\n", shard,
                undrain ? "false" : "true", absl::StrJoin(moves, ",").c_str(),
                resp.stopped() ? "true" : "false");
    return;
  }
  std::string out;
  for (const auto& m : resp.moves()) out += MoveLine(m, false);
  absl::StrAppend(&out, "shard ", shard,
                  undrain ? " takes new parts again\n"
                          : absl::StrCat(" is drained (", resp.moves_size(), " moves)",
                                         resp.stopped() ? " and stopping" : "", "\n"));
  std::fputs(out.c_str(), stdout);
}

void RunRebalance(bool dry_run, double timeout_seconds, Context* ctx) {
  psd::RebalanceRequest req;
  req.set_dry_run(dry_run);
  if (!dry_run) req.set_progress_id(MoveProgressId(*ctx));
  psd::RebalanceResponse resp;
  absl::Status s = WithMoveProgress(*ctx, req.progress_id(), [&] {
    return Call(*ctx, &psd::Coordinator::Stub::Rebalance, req, &resp,
                absl::Seconds(timeout_seconds));
  });
  if (!s.ok()) return Fail(ctx, s);
  if (ctx->json) {
    std::vector<std::string> plan, moves;
    for (const auto& p : resp.plan()) {
      plan.push_back(absl::StrFormat("{\"part\":%s,\"from\":%d,\"to\":%d,\"bytes\":%d}",
                                     JsonString(p.part()), p.from_shard(), p.to_shard(),
                                     p.bytes()));
    }
    for (const auto& m : resp.moves()) moves.push_back(MoveLine(m, true));
    std::printf("{\"dry_run\":%s,\"plan\":[%s],\"moves\":[%s]}\n", dry_run ? "true" : "false",
                absl::StrJoin(plan, ",").c_str(), absl::StrJoin(moves, ",").c_str());
    return;
  }
  std::string out;
  if (resp.plan_size() == 0) out = "balanced: nothing to move\n";
  if (dry_run) {
    std::vector<std::vector<std::string>> rows = {{"PART", "FROM", "TO", "BYTES"}};
    for (const auto& p : resp.plan()) {
      rows.push_back({p.part(), std::to_string(p.from_shard()), std::to_string(p.to_shard()),
                      FormatBytes(p.bytes())});
    }
    if (resp.plan_size() > 0) out = FormatTable(rows);
  } else {
    for (const auto& m : resp.moves()) out += MoveLine(m, false);
  }
  std::fputs(out.c_str(), stdout);
}

void RunShutdown(bool final_checkpoint, double timeout_seconds, Context* ctx) {
  psd::ShutdownRequest req;
  req.set_final_checkpoint(final_checkpoint);
  psd::ShutdownResponse resp;
  absl::Status s = Call(*ctx, &psd::Coordinator::Stub::Shutdown, req, &resp,
                        absl::Seconds(timeout_seconds));
  if (!s.ok()) return Fail(ctx, s);
  if (ctx->json) {
    std::vector<std::string> unreached;
    for (const auto& u : resp.unreached_shards()) unreached.push_back(JsonString(u));
    std::printf("{\"checkpoint\":%s,\"stopped_shards\":[%s],\"unreached_shards\":[%s]}\n",
                JsonString(resp.checkpoint()).c_str(),
                absl::StrJoin(resp.stopped_shards(), ",").c_str(),
                absl::StrJoin(unreached, ",").c_str());
    return;
  }
  std::string out;
  if (!resp.checkpoint().empty()) absl::StrAppend(&out, "final checkpoint ", resp.checkpoint(), "\n");
  absl::StrAppend(&out, "shards stopping: ",
                  resp.stopped_shards().empty() ? "none" : absl::StrJoin(resp.stopped_shards(), ", "),
                  "\n");
  for (const auto& u : resp.unreached_shards()) absl::StrAppend(&out, "not reached: ", u, "\n");
  absl::StrAppend(&out, "coordinator ", ctx->coordinator, " is draining and will exit\n");
  std::fputs(out.c_str(), stdout);
}

}  // namespace

void AddClusterCommands(CLI::App* app, Context* ctx) {
  CLI::App* status = app->add_subcommand("status", "The coordinator and its shards");
  status->fallthrough();
  status->callback([ctx] { RunStatus(ctx); });

  CLI::App* vars = app->add_subcommand("vars", "Variables in the registry");
  vars->require_subcommand(1);
  vars->fallthrough();
  auto collection = std::make_shared<std::string>();
  CLI::App* list = vars->add_subcommand("list", "List variables (in creation order)");
  list->fallthrough();
  list->add_option("--collection", *collection,
                   "Only this collection (variables, trainable_variables, local_variables, ...)");
  list->callback([ctx, collection] { RunList(*collection, ctx); });

  auto name = std::make_shared<std::string>();
  CLI::App* show = vars->add_subcommand(
      "show", "A variable's dtype, shape, partitioning, and parts with their shards and state");
  show->fallthrough();
  show->add_option("name", *name, "Full variable name (scope/v)")->required();
  show->callback([ctx, name] { RunShow(*name, ctx); });

  auto get_name = std::make_shared<std::string>();
  auto max_values = std::make_shared<int64_t>(20);
  CLI::App* get = vars->add_subcommand("get", "A variable's values (abbreviated)");
  get->fallthrough();
  get->add_option("name", *get_name, "Full variable name")->required();
  get->add_option("--max-values", *max_values, "Values shown; -1 for all")->capture_default_str();
  get->callback([ctx, get_name, max_values] { RunGet(*get_name, *max_values, ctx); });

  auto evict_name = std::make_shared<std::string>();
  auto global_step = std::make_shared<int64_t>(0);
  CLI::App* evict = vars->add_subcommand(
      "evict", "Run an embedding table's eviction policies (steps_to_live, L2 threshold) now");
  evict->fallthrough();
  evict->add_option("name", *evict_name, "Full name of the embedding table")->required();
  evict
      ->add_option("--global-step", *global_step,
                   "The training's global step, which steps_to_live counts back from (0: no "
                   "row is stale by age; the L2 threshold still applies)")
      ->capture_default_str();
  evict->callback([ctx, evict_name, global_step] { RunEvict(*evict_name, *global_step, ctx); });

  auto move_part = std::make_shared<std::string>();
  auto move_to = std::make_shared<int32_t>(-1);
  auto move_timeout = std::make_shared<double>(3600);
  CLI::App* move = vars->add_subcommand(
      "move",
      "Move a part (with the parts beside it, such as its optimizer slots) to another shard "
      "while training goes on (admin)");
  move->fallthrough();
  move->add_option("part", *move_part,
                   "The part's full name (scope/v/part_1), or an unpartitioned variable's")
      ->required();
  move->add_option("--to", *move_to, "The shard id to move it to")->required();
  move->add_option("--timeout", *move_timeout, "Seconds to wait for the move")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  move->callback([ctx, move_part, move_to, move_timeout] {
    RunMove(*move_part, *move_to, *move_timeout, ctx);
  });

  CLI::App* shard = app->add_subcommand("shard", "Shards: drain one (admin)");
  shard->require_subcommand(1);
  shard->fallthrough();
  auto drain_id = std::make_shared<int32_t>(-1);
  auto drain_stop = std::make_shared<bool>(false);
  auto drain_undo = std::make_shared<bool>(false);
  auto drain_timeout = std::make_shared<double>(3600);
  CLI::App* drain = shard->add_subcommand(
      "drain", "Move every part off a shard while training goes on, and place nothing new there");
  drain->fallthrough();
  drain->add_option("id", *drain_id, "The shard's id")->required();
  drain->add_flag("--stop", *drain_stop, "Stop the shard once it is empty");
  drain->add_flag("--undrain", *drain_undo, "Take a drained shard back into use instead");
  drain->add_option("--timeout", *drain_timeout, "Seconds to wait for every move")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  drain->callback([ctx, drain_id, drain_stop, drain_undo, drain_timeout] {
    RunDrain(*drain_id, *drain_stop, *drain_undo, *drain_timeout, ctx);
  });

  auto dry_run = std::make_shared<bool>(false);
  auto rebalance_timeout = std::make_shared<double>(3600);
  CLI::App* rebalance = app->add_subcommand(
      "rebalance", "Even out the bytes on the live shards by moving parts live (admin)");
  rebalance->fallthrough();
  rebalance->add_flag("--dry-run", *dry_run, "Print the plan; move nothing");
  rebalance->add_option("--timeout", *rebalance_timeout, "Seconds to wait for every move")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  rebalance->callback([ctx, dry_run, rebalance_timeout] {
    RunRebalance(*dry_run, *rebalance_timeout, ctx);
  });

  auto final_checkpoint = std::make_shared<bool>(false);
  auto shutdown_timeout = std::make_shared<double>(600);
  CLI::App* shutdown = app->add_subcommand(
      "shutdown", "Drain and stop the cluster: every shard, then the coordinator (admin)");
  shutdown->fallthrough();
  shutdown->add_flag("--final-checkpoint", *final_checkpoint,
                     "Save a checkpoint first (the coordinator's checkpoint directory); if it "
                     "fails, nothing is stopped");
  shutdown->add_option("--timeout", *shutdown_timeout,
                       "Seconds to wait for the coordinator's answer (the final save included)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  shutdown->callback([ctx, final_checkpoint, shutdown_timeout] {
    RunShutdown(*final_checkpoint, *shutdown_timeout, ctx);
  });
}

}  // namespace psctl
