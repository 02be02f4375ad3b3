#include "runtime/cluster_config.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "psd/status.h"
#include "yaml-cpp/yaml.h"

namespace psd {

const ShardConfig* ClusterConfig::FindShard(int id) const {
  for (const auto& s : shards) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

absl::StatusOr<int64_t> ParseByteSize(const std::string& text) {
  std::string s(absl::StripAsciiWhitespace(text));
  size_t split = 0;
  while (split < s.size() && (absl::ascii_isdigit(s[split]) || s[split] == '.')) ++split;
  const std::string number = s.substr(0, split);
  const std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s.substr(split)));
  double value;
  if (number.empty() || !absl::SimpleAtod(number, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid byte size '", text, "'"));
  }
  double scale;
  if (unit.empty() || unit == "b") scale = 1;
  else if (unit == "k" || unit == "kb") scale = 1e3;
  else if (unit == "m" || unit == "mb") scale = 1e6;
  else if (unit == "g" || unit == "gb") scale = 1e9;
  else if (unit == "t" || unit == "tb") scale = 1e12;
  else if (unit == "kib") scale = 1024.0;
  else if (unit == "mib") scale = 1024.0 * 1024;
  else if (unit == "gib") scale = 1024.0 * 1024 * 1024;
  else if (unit == "tib") scale = 1024.0 * 1024 * 1024 * 1024;
  else return absl::InvalidArgumentError(absl::StrCat("invalid byte size '", text, "': unknown unit '", unit, "'"));
  const double bytes = value * scale;
  if (!(bytes < 9.2e18)) {
    return absl::InvalidArgumentError(absl::StrCat("byte size '", text, "' is too large"));
  }
  return static_cast<int64_t>(std::llround(bytes));
}

absl::StatusOr<double> ParseDuration(const std::string& text) {
  std::string s(absl::StripAsciiWhitespace(text));
  double scale = 1;
  if (!s.empty() && !absl::ascii_isdigit(s.back())) {
    switch (s.back()) {
      case 's': scale = 1; break;
      case 'm': scale = 60; break;
      case 'h': scale = 3600; break;
      default: return absl::InvalidArgumentError(absl::StrCat("invalid duration '", text, "'"));
    }
    s.pop_back();
  }
  double value;
  if (!absl::SimpleAtod(s, &value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid duration '", text, "'"));
  }
  return value * scale;
}

absl::StatusOr<double> ParseCheckpointInterval(const std::string& text) {
  PSD_ASSIGN_OR_RETURN(const double seconds, ParseDuration(text));
  if (seconds != 0 && seconds < kMinCheckpointIntervalSeconds) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is under the shortest time between periodic checkpoints, ",
                     kMinCheckpointIntervalSeconds, "s (0 turns them off)"));
  }
  return seconds;
}

absl::Status CheckAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not HOST:PORT"));
  }
  int port;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "': the port must be a number in [0, 65535]"));
  }
  const std::string host = address.substr(0, colon);
  if (host.find(':') != std::string::npos && (host.front() != '[' || host.back() != ']')) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "': an IPv6 host goes in brackets, [::1]:PORT"));
  }
  return absl::OkStatus();
}

absl::Status CheckHostName(const std::string& host) {
  constexpr size_t kMaxHostBytes = 255;
  if (host.size() > kMaxHostBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a host name of ", host.size(), " bytes (at most ", kMaxHostBytes, ")"));
  }
  for (char c : host) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' &&
        c != ':' && c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(
          "host '", absl::CHexEscape(host), "' has '", absl::CHexEscape(std::string(1, c)),
          "' (a host name is letters, digits and . _ : -)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckDevice(const std::string& device) {
  if (device == "cpu" || device == "cpu:0" || device == "gpu") return absl::OkStatus();
  int ordinal;
  if (absl::StartsWith(device, "gpu:") && absl::SimpleAtoi(device.substr(4), &ordinal) &&
      ordinal >= 0) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", device, "' (expected cpu or gpu:N)"));
}

namespace {

// Applies `check` to `value` (set from key `key`), naming the key on error.
absl::Status CheckValue(const std::string& where, const std::string& key,
                        const std::string& value,
                        absl::Status (*check)(const std::string&)) {
  absl::Status s = check(value);
  if (s.ok()) return s;
  return absl::InvalidArgumentError(absl::StrCat(where, ".", key, ": ", s.message()));
}

absl::Status CheckKeys(const YAML::Node& node, const std::string& where,
                       const std::set<std::string>& known) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected a mapping"));
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (known.count(key) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown key '", key,
                                                     "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> SplitCheckpointRoots(const std::string& list) {
  std::vector<std::string> out;
  std::string one;
  std::stringstream in(list);
  while (std::getline(in, one, ',')) {
    one = std::string(absl::StripAsciiWhitespace(one));
    if (!one.empty()) out.push_back(one);
  }
  return out;
}

namespace {

// Reads `node[key]` into `out` if present, with a type error naming the key.
template <typename T>
absl::Status Get(const YAML::Node& node, const std::string& key, const std::string& where, T* out) {
  const YAML::Node value = node[key];
  if (!value) return absl::OkStatus();
  try {
    *out = value.as<T>();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, ": cannot read '",
                                                   value.Scalar(), "'"));
  }
  return absl::OkStatus();
}

absl::Status GetBytes(const YAML::Node& node, const std::string& key, const std::string& where,
                      int64_t* out) {
  std::string text;
  PSD_RETURN_IF_ERROR(Get(node, key, where, &text));
  if (text.empty()) return absl::OkStatus();
  auto bytes = ParseByteSize(text);
  if (!bytes.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".", key, ": ", bytes.status().message()));
  *out = *bytes;
  return absl::OkStatus();
}

absl::Status CheckHttpMaxConnections(const std::string& where, int value) {
  if (value >= 1) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(where, ".http_max_connections: must be >= 1, not ", value));
}

absl::StatusOr<ClusterConfig> ParseNode(const YAML::Node& root, const std::string& source) {
  ClusterConfig config;
  if (!root || root.IsNull()) return config;
  PSD_RETURN_IF_ERROR(CheckKeys(root, source, {"coordinator", "shards", "checkpoint", "security"}));

  if (const YAML::Node c = root["coordinator"]) {
    const std::string where = source + ": coordinator";
    PSD_RETURN_IF_ERROR(CheckKeys(
        c, where,
        {"listen", "advertise", "state_dir", "http_listen", "http_max_connections", "replication"}));
    CoordinatorConfig& coordinator = config.coordinator;
    PSD_RETURN_IF_ERROR(Get(c, "listen", where, &coordinator.listen));
    PSD_RETURN_IF_ERROR(Get(c, "advertise", where, &coordinator.advertise));
    PSD_RETURN_IF_ERROR(Get(c, "state_dir", where, &coordinator.state_dir));
    PSD_RETURN_IF_ERROR(Get(c, "http_listen", where, &coordinator.http_listen));
    PSD_RETURN_IF_ERROR(Get(c, "http_max_connections", where, &coordinator.http_max_connections));
    PSD_RETURN_IF_ERROR(CheckHttpMaxConnections(where, coordinator.http_max_connections));
    PSD_RETURN_IF_ERROR(Get(c, "replication", where, &coordinator.replication));
    if (coordinator.replication < 1 || coordinator.replication > 3) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".replication: must be 1, 2 or 3 (shards holding each part), not ",
          coordinator.replication));
    }
    PSD_RETURN_IF_ERROR(CheckValue(where, "listen", coordinator.listen, CheckAddress));
    if (!coordinator.advertise.empty()) {
      PSD_RETURN_IF_ERROR(CheckValue(where, "advertise", coordinator.advertise, CheckAddress));
    }
    if (!coordinator.http_listen.empty()) {
      PSD_RETURN_IF_ERROR(CheckValue(where, "http_listen", coordinator.http_listen, CheckAddress));
    }
  }
  if (const YAML::Node shards = root["shards"]) {
    if (!shards.IsSequence()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": shards: expected a list"));
    }
    std::set<int> ids;
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string where = absl::StrCat(source, ": shards[", i, "]");
      const YAML::Node s = shards[i];
      PSD_RETURN_IF_ERROR(CheckKeys(s, where,
                                    {"id", "listen", "advertise", "device", "host",
                                     "memory_limit", "staging_pool_bytes", "http_listen",
                                     "http_max_connections"}));
      ShardConfig shard;
      shard.id = static_cast<int>(i);
      PSD_RETURN_IF_ERROR(Get(s, "id", where, &shard.id));
      PSD_RETURN_IF_ERROR(Get(s, "listen", where, &shard.listen));
      PSD_RETURN_IF_ERROR(Get(s, "advertise", where, &shard.advertise));
      PSD_RETURN_IF_ERROR(Get(s, "device", where, &shard.device));
      PSD_RETURN_IF_ERROR(Get(s, "host", where, &shard.host));
      PSD_RETURN_IF_ERROR(CheckValue(where, "host", shard.host, CheckHostName));
      PSD_RETURN_IF_ERROR(GetBytes(s, "memory_limit", where, &shard.memory_limit));
      PSD_RETURN_IF_ERROR(GetBytes(s, "staging_pool_bytes", where, &shard.staging_pool_bytes));
      PSD_RETURN_IF_ERROR(Get(s, "http_listen", where, &shard.http_listen));
      PSD_RETURN_IF_ERROR(Get(s, "http_max_connections", where, &shard.http_max_connections));
      PSD_RETURN_IF_ERROR(CheckHttpMaxConnections(where, shard.http_max_connections));
      PSD_RETURN_IF_ERROR(CheckValue(where, "listen", shard.listen, CheckAddress));
      if (!shard.advertise.empty()) {
        PSD_RETURN_IF_ERROR(CheckValue(where, "advertise", shard.advertise, CheckAddress));
      }
      if (!shard.http_listen.empty()) {
        PSD_RETURN_IF_ERROR(CheckValue(where, "http_listen", shard.http_listen, CheckAddress));
      }
      PSD_RETURN_IF_ERROR(CheckValue(where, "device", shard.device, CheckDevice));
      if (shard.id < 0 || !ids.insert(shard.id).second) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": id ", shard.id,
                                                       " is negative or repeated"));
      }
      config.shards.push_back(shard);
    }
  }
  if (const YAML::Node c = root["checkpoint"]) {
    const std::string where = source + ": checkpoint";
    PSD_RETURN_IF_ERROR(
        CheckKeys(c, where,
                  {"dir", "max_to_keep", "keep_checkpoint_every_n_hours", "interval",
                   "every_n_steps", "global_step", "save_on_shutdown", "restore_lost", "roots"}));
    PSD_RETURN_IF_ERROR(Get(c, "dir", where, &config.checkpoint.dir));
    PSD_RETURN_IF_ERROR(Get(c, "max_to_keep", where, &config.checkpoint.max_to_keep));
    PSD_RETURN_IF_ERROR(Get(c, "keep_checkpoint_every_n_hours", where,
                            &config.checkpoint.keep_checkpoint_every_n_hours));
    std::string interval;
    PSD_RETURN_IF_ERROR(Get(c, "interval", where, &interval));
    if (!interval.empty()) {
      auto seconds = ParseCheckpointInterval(interval);
      if (!seconds.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".interval: ", seconds.status().message()));
      config.checkpoint.interval_seconds = *seconds;
    }
    PSD_RETURN_IF_ERROR(Get(c, "every_n_steps", where, &config.checkpoint.every_n_steps));
    PSD_RETURN_IF_ERROR(Get(c, "global_step", where, &config.checkpoint.global_step));
    PSD_RETURN_IF_ERROR(Get(c, "save_on_shutdown", where, &config.checkpoint.save_on_shutdown));
    PSD_RETURN_IF_ERROR(Get(c, "restore_lost", where, &config.checkpoint.restore_lost));
    // A list, or one comma-separated string as the flag takes.
    if (const YAML::Node roots = c["roots"]; roots && roots.IsSequence()) {
      std::vector<std::string> list;
      PSD_RETURN_IF_ERROR(Get(c, "roots", where, &list));
      for (const std::string& r : list) {
        for (std::string& one : SplitCheckpointRoots(r)) config.checkpoint.roots.push_back(one);
      }
    } else {
      std::string list;
      PSD_RETURN_IF_ERROR(Get(c, "roots", where, &list));
      config.checkpoint.roots = SplitCheckpointRoots(list);
    }
    if (config.checkpoint.max_to_keep < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".max_to_keep: must be >= 0 (0 keeps every checkpoint), not ",
                       config.checkpoint.max_to_keep));
    }
    if (!(config.checkpoint.keep_checkpoint_every_n_hours > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".keep_checkpoint_every_n_hours: must be > 0, not ",
                       config.checkpoint.keep_checkpoint_every_n_hours));
    }
    if (config.checkpoint.every_n_steps < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".every_n_steps: must be >= 0"));
    }
    if (config.checkpoint.every_n_steps > 0 && config.checkpoint.global_step.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".every_n_steps: needs checkpoint.global_step (a variable name)"));
    }
  }
  if (const YAML::Node c = root["security"]) {
    const std::string where = source + ": security";
    PSD_RETURN_IF_ERROR(CheckKeys(
        c, where, {"tls_ca", "tls_cert", "tls_key", "token_file", "tls_client_auth"}));
    PSD_RETURN_IF_ERROR(Get(c, "tls_ca", where, &config.security.tls_ca));
    PSD_RETURN_IF_ERROR(Get(c, "tls_cert", where, &config.security.tls_cert));
    PSD_RETURN_IF_ERROR(Get(c, "tls_key", where, &config.security.tls_key));
    PSD_RETURN_IF_ERROR(Get(c, "token_file", where, &config.security.token_file));
    PSD_RETURN_IF_ERROR(Get(c, "tls_client_auth", where, &config.security.tls_client_auth));
    if (config.security.tls_cert.empty() != config.security.tls_key.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".", config.security.tls_cert.empty() ? "tls_cert" : "tls_key",
                       ": missing; tls_cert and tls_key go together"));
    }
  }
  return config;
}

}  // namespace

absl::StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml, const std::string& source) {
  try {
    return ParseNode(YAML::Load(yaml), source);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open cluster file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return ParseClusterConfig(text.str(), path);
}

}  // namespace psd
