// Meta graphs: the C++ client's tf.train.export_meta_graph and
// import_meta_graph, in the same file format as psclient's (JSON, format
// "psd.MetaGraph", version 1; client/python/psclient/meta_graph.py), so a
// file written by one is read by the other.
//
// psd has no graph: what a TensorFlow meta graph carried that a trainer
// needs in a fresh process is the variables' declarations (names, dtypes,
// shapes, partitioning, initializers, trainability, collections) and the
// Saver's definition. Export writes them from a Session and a Saver; import
// declares them in a Session (attaching to variables that exist, creating
// the others) and returns the Saver, so that Restore brings the values back:
//
//   PSD_ASSIGN_OR_RETURN(auto saver, psd::client::Saver::Create(address, options));
//   PSD_ASSIGN_OR_RETURN(std::string prefix, saver->Save("/ckpt/m", 100));
//   PSD_RETURN_IF_ERROR(psd::client::ExportMetaGraph(session.get(), prefix + ".meta",
//                                                    {.saver = saver.get()}).status());
//   ... in a fresh process:
//   PSD_ASSIGN_OR_RETURN(auto imported, psd::client::ImportMetaGraph(session.get(),
//                                                                    "/ckpt/m-100.meta"));
//   PSD_RETURN_IF_ERROR(imported.saver->Restore("/ckpt/m-100"));
//
// Files are on the trainer's machine (unlike checkpoints, which are on the
// coordinator's). A malformed file is INVALID_ARGUMENT naming the entry at
// fault, and nothing is declared: every entry is checked before any is.
//
// Thread-safety: the functions are as thread-safe as the Session they use.
#ifndef PSD_CLIENT_INCLUDE_PSD_META_GRAPH_H_
#define PSD_CLIENT_INCLUDE_PSD_META_GRAPH_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "psd/coordinator.pb.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/variable.h"

namespace psd {
namespace client {

inline constexpr char kMetaGraphFormat[] = "psd.MetaGraph";
inline constexpr int kMetaGraphVersion = 1;

// tf.train.SaverDef's analogue: what rebuilds the Saver. psclient's
// Saver.as_saver_def() holds the same fields.
struct SaverDef {
  std::vector<std::string> variables;           // var_list by full name
  std::map<std::string, std::string> name_map;  // checkpoint name -> variable
  std::optional<int> max_to_keep;               // unset: the coordinator's policy
  std::optional<double> keep_checkpoint_every_n_hours;
  std::string name;      // psclient's Saver(name=); "" when none
  bool sharded = false;  // psclient's Saver(sharded=); every save is sharded
  bool reshape = false;  // Saver(reshape=True): pass RestoreOptions::reshape

  // The definition of a Saver made with `options`.
  static SaverDef FromOptions(const SaverOptions& options);
  // SaverOptions that rebuild it (the rest from `base`: address-independent
  // settings such as security, latest_filename, timeouts).
  SaverOptions ToOptions(SaverOptions base = {}) const;
  bool operator==(const SaverDef& other) const;
};

// One variable's declaration in a meta graph.
struct MetaGraphVariable {
  std::string name;  // relative to the export scope
  DataType dtype = DT_INVALID;
  std::vector<int64_t> shape;
  bool trainable = true;
  std::vector<std::string> collections;
  // TensorFlow's partitions list (one count per dimension); empty when not
  // partitioned.
  std::vector<int64_t> partitions;
  int partition_axis = 0;
  InitializerSpec initializer;
  // Set for an embedding table (JSON "embedding": the base64 serialized
  // EmbeddingSpec; absent for dense variables). A slot's slot_of is the
  // full name of its table, relative to the export scope like `name`.
  std::optional<EmbeddingSpec> embedding;
};

struct MetaGraph {
  std::vector<MetaGraphVariable> variables;
  std::optional<SaverDef> saver_def;
};

struct ExportMetaGraphOptions {
  // The Saver whose definition is recorded; null: none.
  const Saver* saver = nullptr;
  // Or a definition given directly (wins over `saver`).
  std::optional<SaverDef> saver_def;
  // Only the variables under this scope, named relative to it ("": all).
  std::string export_scope;
  // The collections recorded per variable; unset: all of them.
  std::optional<std::vector<std::string>> collection_list;
};

// tf.train.export_meta_graph: the session's variables (every variable of
// the cluster, or those under export_scope) and the Saver's definition;
// also written to `filename` (atomically) when it is not empty.
absl::StatusOr<MetaGraph> ExportMetaGraph(Session* session, const std::string& filename,
                                          const ExportMetaGraphOptions& options = {});

// The file format: JSON text as psclient writes it (keys sorted, one-space
// indent), and its reader. `what` names the source in errors (a path).
std::string MetaGraphToJson(const MetaGraph& meta_graph);
absl::StatusOr<MetaGraph> MetaGraphFromJson(const std::string& text,
                                            const std::string& what = "meta graph");
// Reads and checks a file: NOT_FOUND / the read error naming it when it
// cannot be read, INVALID_ARGUMENT for a malformed one.
absl::StatusOr<MetaGraph> ReadMetaGraph(const std::string& filename);

struct ImportMetaGraphOptions {
  // Declared under this scope ("": as exported).
  std::string import_scope;
  // Settings of the Saver returned besides its definition (security,
  // latest_filename, timeouts); its variables and retention come from the
  // file.
  SaverOptions saver_options;
};

struct ImportedMetaGraph {
  std::vector<Variable> variables;  // in the file's order
  // The file's Saver definition (under import_scope), if it has one.
  std::optional<SaverDef> saver_def;
  // The Saver it describes, or a Saver of the imported variables when the
  // file has none; null when the file has neither.
  std::unique_ptr<Saver> saver;
};

// tf.train.import_meta_graph: declares the file's variables in `session`
// (reuse AUTO: attaching to those that exist), then builds the Saver. Must
// be called outside any variable scope (FAILED_PRECONDITION): names are
// imported as exported.
absl::StatusOr<ImportedMetaGraph> ImportMetaGraph(Session* session, const std::string& filename,
                                                  const ImportMetaGraphOptions& options = {});
// The same from a meta graph in memory.
absl::StatusOr<ImportedMetaGraph> ImportMetaGraph(Session* session, const MetaGraph& meta_graph,
                                                  const ImportMetaGraphOptions& options = {});

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_INCLUDE_PSD_META_GRAPH_H_
