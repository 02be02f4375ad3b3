#include "psd/meta_graph.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "psd/dtype.h"
#include "psd/status.h"

namespace psd {
namespace client {

using Json = nlohmann::json;

SaverDef SaverDef::FromOptions(const SaverOptions& options) {
  SaverDef def;
  def.variables = options.variables;
  def.name_map = options.name_map;
  def.max_to_keep = options.max_to_keep;
  def.keep_checkpoint_every_n_hours = options.keep_checkpoint_every_n_hours;
  return def;
}

SaverOptions SaverDef::ToOptions(SaverOptions base) const {
  base.variables = variables;
  base.name_map = name_map;
  base.max_to_keep = max_to_keep;
  base.keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours;
  return base;
}

bool SaverDef::operator==(const SaverDef& other) const {
  return variables == other.variables && name_map == other.name_map &&
         max_to_keep == other.max_to_keep &&
         keep_checkpoint_every_n_hours == other.keep_checkpoint_every_n_hours &&
         name == other.name && sharded == other.sharded && reshape == other.reshape;
}

namespace {

// A malformed part of a file: thrown inside this file only, turned into
// INVALID_ARGUMENT naming the entry by MetaGraphFromJson.
struct Malformed {
  std::string why;
};

// The dtype named as psclient names it ("float32", "int64", ...).
std::optional<DataType> DataTypeNamed(const std::string& name) {
  for (int d = 1; d < 64; ++d) {
    if (IsSupportedDataType(d) && DataTypeName(d) == name) return static_cast<DataType>(d);
  }
  return std::nullopt;
}

const Json& Field(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) throw Malformed{absl::StrCat("'", key, "' is missing")};
  return *it;
}

std::string String(const Json& value, const char* what) {
  if (!value.is_string()) throw Malformed{absl::StrCat(what, " must be a string")};
  return value.get<std::string>();
}

int64_t Integer(const Json& value, const char* what) {
  if (!value.is_number_integer()) throw Malformed{absl::StrCat(what, " must be an integer")};
  if (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t{INT64_MAX}) {
    throw Malformed{absl::StrCat(what, " is out of range")};
  }
  return value.get<int64_t>();
}

bool Bool(const Json& value, const char* what) {
  if (!value.is_boolean()) throw Malformed{absl::StrCat(what, " must be true or false")};
  return value.get<bool>();
}

std::vector<int64_t> Integers(const Json& value, const char* what) {
  if (!value.is_array()) throw Malformed{absl::StrCat(what, " must be a list of integers")};
  std::vector<int64_t> out;
  for (const Json& v : value) out.push_back(Integer(v, what));
  return out;
}

std::vector<std::string> Strings(const Json& value, const char* what) {
  if (!value.is_array()) throw Malformed{absl::StrCat(what, " must be a list of strings")};
  std::vector<std::string> out;
  for (const Json& v : value) out.push_back(String(v, what));
  return out;
}

MetaGraphVariable VariableEntry(const Json& entry) {
  if (!entry.is_object()) throw Malformed{"an entry must be an object"};
  MetaGraphVariable v;
  v.name = String(Field(entry, "name"), "name");
  if (v.name.empty()) throw Malformed{"name must be a non-empty string"};
  for (int64_t d : Integers(Field(entry, "shape"), "shape")) {
    if (d < 0) throw Malformed{absl::StrCat("shape has a negative dimension ", d)};
    v.shape.push_back(d);
  }
  const std::string dtype = String(Field(entry, "dtype"), "dtype");
  std::optional<DataType> dt = DataTypeNamed(dtype);
  if (!dt.has_value()) throw Malformed{absl::StrCat("unknown dtype '", dtype, "'")};
  v.dtype = *dt;
  std::string bytes;
  if (!absl::Base64Unescape(String(Field(entry, "initializer"), "initializer"), &bytes) ||
      !v.initializer.ParseFromString(bytes)) {
    throw Malformed{"initializer is not a base64 serialized InitializerSpec"};
  }
  auto embedding = entry.find("embedding");
  if (embedding != entry.end() && !embedding->is_null()) {
    EmbeddingSpec spec;
    if (!absl::Base64Unescape(String(*embedding, "embedding"), &bytes) ||
        !spec.ParseFromString(bytes) || spec.embedding_dim() <= 0) {
      throw Malformed{"embedding is not a base64 serialized EmbeddingSpec"};
    }
    v.embedding = std::move(spec);
  }
  v.trainable = Bool(Field(entry, "trainable"), "trainable");
  auto collections = entry.find("collections");
  if (collections != entry.end() && !collections->is_null()) {
    v.collections = Strings(*collections, "collections");
  }
  if (v.collections.empty()) v.collections = {kGlobalVariables};
  auto partitions = entry.find("partitions");
  if (partitions != entry.end() && !partitions->is_null()) {
    v.partitions = Integers(*partitions, "partitions");
  }
  auto axis = entry.find("partition_axis");
  if (axis != entry.end() && !axis->is_null()) {
    const int64_t a = Integer(*axis, "partition_axis");
    if (a < 0 || a > 64) throw Malformed{absl::StrCat("partition_axis ", a, " is out of range")};
    v.partition_axis = static_cast<int>(a);
  }
  if (!v.partitions.empty()) {
    if (v.partition_axis >= static_cast<int>(v.partitions.size())) {
      throw Malformed{absl::StrCat("partition_axis ", v.partition_axis, " is not an axis of ",
                                   v.partitions.size(), " partitions")};
    }
    if (v.partitions[v.partition_axis] < 1) {
      throw Malformed{"partitions must count at least one part along partition_axis"};
    }
  }
  return v;
}

SaverDef SaverEntry(const Json& saver) {
  if (!saver.is_object()) throw Malformed{"saver_def must be an object or null"};
  SaverDef def;
  auto variables = saver.find("variables");
  if (variables != saver.end() && !variables->is_null()) {
    def.variables = Strings(*variables, "variables");
  }
  auto name_map = saver.find("name_map");
  if (name_map != saver.end() && !name_map->is_null()) {
    if (!name_map->is_object()) throw Malformed{"name_map must be an object of strings"};
    for (const auto& [k, v] : name_map->items()) def.name_map[k] = String(v, "name_map values");
  }
  auto max_to_keep = saver.find("max_to_keep");
  if (max_to_keep != saver.end() && !max_to_keep->is_null()) {
    const int64_t m = Integer(*max_to_keep, "max_to_keep");
    if (m < 0 || m > INT32_MAX) throw Malformed{"max_to_keep must be >= 0"};
    def.max_to_keep = static_cast<int>(m);
  }
  auto hours = saver.find("keep_checkpoint_every_n_hours");
  if (hours != saver.end() && !hours->is_null()) {
    if (!hours->is_number()) throw Malformed{"keep_checkpoint_every_n_hours must be a number"};
    def.keep_checkpoint_every_n_hours = hours->get<double>();
  }
  auto name = saver.find("name");
  if (name != saver.end() && !name->is_null()) def.name = String(*name, "name");
  for (const char* key : {"sharded", "reshape"}) {
    auto it = saver.find(key);
    if (it == saver.end() || it->is_null()) continue;
    (std::string(key) == "sharded" ? def.sharded : def.reshape) = Bool(*it, key);
  }
  return def;
}

absl::Status WriteAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("export_meta_graph: cannot write ", tmp, ": ", std::strerror(errno)));
  }
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return absl::InternalError(
          absl::StrCat("export_meta_graph: cannot write ", tmp, ": ", std::strerror(e)));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const int e = errno;
  ::close(fd);
  if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = synced ? errno : e;
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("export_meta_graph: cannot write ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace

std::string MetaGraphToJson(const MetaGraph& meta_graph) {
  // nlohmann's objects keep their keys sorted, as psclient's sort_keys.
  Json variables = Json::array();
  for (const MetaGraphVariable& v : meta_graph.variables) {
    const bool partitioned = !v.partitions.empty();
    Json entry{
        {"name", v.name},
        {"dtype", DataTypeName(v.dtype)},
        {"shape", v.shape},
        {"trainable", v.trainable},
        {"collections", v.collections},
        {"partitions", partitioned ? Json(v.partitions) : Json(nullptr)},
        {"partition_axis", partitioned ? Json(v.partition_axis) : Json(nullptr)},
        {"initializer", absl::Base64Escape(v.initializer.SerializeAsString())},
    };
    // Only tables have it, so dense entries read the same as before.
    if (v.embedding.has_value()) {
      entry["embedding"] = absl::Base64Escape(v.embedding->SerializeAsString());
    }
    variables.push_back(std::move(entry));
  }
  Json saver = nullptr;
  if (meta_graph.saver_def.has_value()) {
    const SaverDef& d = *meta_graph.saver_def;
    saver = Json{
        {"variables", d.variables},
        {"name_map", Json(d.name_map)},
        {"max_to_keep", d.max_to_keep.has_value() ? Json(*d.max_to_keep) : Json(nullptr)},
        {"keep_checkpoint_every_n_hours", d.keep_checkpoint_every_n_hours.has_value()
                                              ? Json(*d.keep_checkpoint_every_n_hours)
                                              : Json(nullptr)},
        {"name", d.name.empty() ? Json(nullptr) : Json(d.name)},
        {"sharded", d.sharded},
        {"reshape", d.reshape},
    };
  }
  Json meta = {{"format", kMetaGraphFormat},
               {"version", kMetaGraphVersion},
               {"variables", std::move(variables)},
               {"saver_def", std::move(saver)}};
  // psclient writes ASCII with a one-space indent.
  return meta.dump(1, ' ', /*ensure_ascii=*/true);
}

absl::StatusOr<MetaGraph> MetaGraphFromJson(const std::string& text, const std::string& what) {
  Json meta;
  try {
    meta = Json::parse(text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, ": ", e.what()));
  }
  const Json* format = meta.is_object() && meta.contains("format") ? &meta["format"] : nullptr;
  if (format == nullptr || !format->is_string() || *format != kMetaGraphFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not a psd meta graph (format ",
                     format == nullptr ? std::string("missing") : format->dump(), ")"));
  }
  const Json* version = meta.contains("version") ? &meta["version"] : nullptr;
  if (version == nullptr || !version->is_number_integer() ||
      version->get<int64_t>() != kMetaGraphVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": psd meta graph version ",
                     version == nullptr ? std::string("missing") : version->dump(),
                     "; this client reads version ", kMetaGraphVersion));
  }
  MetaGraph out;
  auto variables = meta.find("variables");
  if (variables != meta.end() && !variables->is_null()) {
    if (!variables->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": variables must be a list"));
    }
    for (size_t i = 0; i < variables->size(); ++i) {
      const Json& entry = (*variables)[i];
      try {
        out.variables.push_back(VariableEntry(entry));
      } catch (const Malformed& m) {
        std::string name = "?";
        if (entry.is_object() && entry.contains("name")) name = entry["name"].dump();
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": variable entry ", i, " (", name, ") is malformed: ", m.why));
      }
    }
  }
  auto saver = meta.find("saver_def");
  if (saver != meta.end() && !saver->is_null()) {
    try {
      out.saver_def = SaverEntry(*saver);
    } catch (const Malformed& m) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": saver_def is malformed: ", m.why));
    }
  }
  return out;
}

absl::StatusOr<MetaGraph> ReadMetaGraph(const std::string& filename) {
  std::ifstream in(filename, std::ios::binary);
  if (!in) {
    const int e = errno;
    return absl::Status(e == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kInternal,
                        absl::StrCat("cannot read meta graph ", filename, ": ", std::strerror(e)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::InternalError(absl::StrCat("cannot read meta graph ", filename));
  }
  return MetaGraphFromJson(text.str(), absl::StrCat("meta graph ", filename));
}

absl::StatusOr<MetaGraph> ExportMetaGraph(Session* session, const std::string& filename,
                                          const ExportMetaGraphOptions& options) {
  MetaGraph meta;
  PSD_ASSIGN_OR_RETURN(std::vector<Variable> all, session->ListVariables(""));
  const std::string scope_prefix =
      options.export_scope.empty() ? "" : absl::StrCat(options.export_scope, "/");
  for (const Variable& v : all) {
    MetaGraphVariable entry;
    entry.name = v.name();
    if (!scope_prefix.empty()) {
      if (!absl::StartsWith(entry.name, scope_prefix)) continue;
      entry.name = entry.name.substr(scope_prefix.size());
    }
    entry.dtype = v.dtype();
    entry.shape = v.shape().dims();
    entry.trainable = v.trainable();
    for (const std::string& c : v.collections()) {
      if (!options.collection_list.has_value() ||
          std::find(options.collection_list->begin(), options.collection_list->end(), c) !=
              options.collection_list->end()) {
        entry.collections.push_back(c);
      }
    }
    if (v.partitioned()) {
      entry.partitions = v.partitions();
      entry.partition_axis = v.partition_axis();
    }
    entry.initializer = v.handle().initializer();
    if (v.handle().has_embedding()) {
      EmbeddingSpec spec = v.handle().embedding();
      if (!spec.slot_of().empty() && !scope_prefix.empty()) {
        if (!absl::StartsWith(spec.slot_of(), scope_prefix)) continue;  // its table is not exported
        spec.set_slot_of(spec.slot_of().substr(scope_prefix.size()));
      }
      entry.embedding = std::move(spec);
    }
    meta.variables.push_back(std::move(entry));
  }
  if (options.saver_def.has_value()) {
    meta.saver_def = options.saver_def;
  } else if (options.saver != nullptr) {
    meta.saver_def = SaverDef::FromOptions(options.saver->options());
  }
  if (!filename.empty()) PSD_RETURN_IF_ERROR(WriteAtomically(filename, MetaGraphToJson(meta)));
  return meta;
}

absl::StatusOr<ImportedMetaGraph> ImportMetaGraph(Session* session, const std::string& filename,
                                                  const ImportMetaGraphOptions& options) {
  PSD_ASSIGN_OR_RETURN(MetaGraph meta, ReadMetaGraph(filename));
  return ImportMetaGraph(session, meta, options);
}

absl::StatusOr<ImportedMetaGraph> ImportMetaGraph(Session* session, const MetaGraph& meta_graph,
                                                  const ImportMetaGraphOptions& options) {
  const std::string current = session->current_scope().name;
  if (!current.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("import_meta_graph: call it outside any variable scope (now in '", current,
                     "'): names are imported as exported, under import_scope when given"));
  }
  const std::string prefix =
      options.import_scope.empty() ? "" : absl::StrCat(options.import_scope, "/");
  // A meta graph in memory was not necessarily read by MetaGraphFromJson:
  // the same checks, all before the first declaration.
  for (size_t i = 0; i < meta_graph.variables.size(); ++i) {
    const MetaGraphVariable& v = meta_graph.variables[i];
    std::string why;
    if (v.name.empty()) why = "name must be a non-empty string";
    if (!IsSupportedDataType(v.dtype)) why = absl::StrCat("unknown dtype ", v.dtype);
    if (!v.partitions.empty() &&
        (v.partition_axis < 0 || v.partition_axis >= static_cast<int>(v.partitions.size()) ||
         v.partitions[v.partition_axis] < 1)) {
      why = "partitions do not fit partition_axis";
    }
    if (!TensorShape::Make(v.shape, "shape").ok()) why = "bad shape";
    if (!why.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("meta graph variable entry ", i, " ('", v.name, "') is malformed: ", why));
    }
  }
  ImportedMetaGraph out;
  for (const MetaGraphVariable& v : meta_graph.variables) {
    GetVariableOptions o;
    o.shape = TensorShape(v.shape);
    o.dtype = v.dtype;
    o.initializer = v.initializer;
    if (!v.partitions.empty()) {
      // Equal splits along one axis: TensorFlow's fixed_size rule gives the
      // same part shapes for the same count (as psclient imports them).
      o.partitioner = partitioners::FixedSize(v.partitions[v.partition_axis], v.partition_axis);
    }
    o.reuse = REUSE_AUTO;
    o.trainable = v.trainable;
    o.collections = v.collections;
    o.declared_at = "import_meta_graph";
    if (v.embedding.has_value()) {
      o.embedding = *v.embedding;
      if (!o.embedding->slot_of().empty()) o.embedding->set_slot_of(prefix + o.embedding->slot_of());
    }
    PSD_ASSIGN_OR_RETURN(Variable declared, session->GetVariable(prefix + v.name, o));
    out.variables.push_back(std::move(declared));
  }
  if (meta_graph.saver_def.has_value()) {
    SaverDef def = *meta_graph.saver_def;
    for (std::string& n : def.variables) n = prefix + n;
    for (auto& [ckpt_name, var_name] : def.name_map) var_name = prefix + var_name;
    PSD_ASSIGN_OR_RETURN(out.saver, Saver::Create(session->coordinator_address(),
                                                  def.ToOptions(options.saver_options)));
    out.saver_def = std::move(def);
  } else if (!out.variables.empty()) {
    SaverOptions o = options.saver_options;
    o.variables.clear();
    o.name_map.clear();
    for (const Variable& v : out.variables) o.variables.push_back(v.name());
    PSD_ASSIGN_OR_RETURN(out.saver, Saver::Create(session->coordinator_address(), o));
  }
  return out;
}

}  // namespace client
}  // namespace psd
