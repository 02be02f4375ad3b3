// EmbeddingVariable: a trainer's handle on an embedding table (DeepRec's
// EmbeddingVariable): a variable keyed by feature id, rows made on first
// admitted use, with admission and eviction policies (EmbeddingSpec in
// psd/types.proto). Declared with Session::GetEmbeddingVariable under the
// same naming, reuse and collection rules as GetVariable.
//
// Keys and parts: key k lives in part PartOfKey(k, num_parts)
// (psd/embedding_keys.h). Every op deduplicates its keys here first (each
// distinct key crosses the network once; rows of repeated keys are summed
// for scatter_add/sub and optimizer applies, the last kept for
// scatter_update, as the shard would), sends each part its keys in
// parallel, and puts results back in the caller's order. As for
// partitioned variables there is no atomicity across parts: each part's
// piece is atomic and retried with its own request id, and everything the
// client can check (dtypes, shapes) is checked before anything is sent.
//
// Thread-safety: a cheap, copyable reference, like Variable; any number of
// threads may use it at once. The Session must outlive it.
//
//   PSD_ASSIGN_OR_RETURN(EmbeddingVariable user,
//                        session->GetEmbeddingVariable("user_emb", {.embedding_dim = 16}));
//   PSD_ASSIGN_OR_RETURN(Tensor rows, user.Gather(ids));   // [n, 16]
//   PSD_RETURN_IF_ERROR(user.ScatterAdd(ids, deltas));
#ifndef PSD_CLIENT_EMBEDDING_VARIABLE_H_
#define PSD_CLIENT_EMBEDDING_VARIABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "psd/client.h"
#include "psd/tensor.h"
#include "psd/types.pb.h"
#include "psd/variable.h"

namespace psd {
namespace client {

class EmbeddingVariable {
 public:
  EmbeddingVariable() = default;  // invalid until assigned
  // The table behind `v`; INVALID_ARGUMENT when `v` is a dense variable.
  static absl::StatusOr<EmbeddingVariable> Of(Variable v);

  bool valid() const { return variable_.valid(); }
  const std::string& name() const { return variable_.name(); }
  DataType dtype() const { return variable_.dtype(); }  // the values'
  DataType key_dtype() const;
  int64_t embedding_dim() const;
  // The spec as the coordinator resolved it (filters, eviction, caps).
  EmbeddingSpec spec() const;
  int num_parts() const;
  std::vector<PartInfo> parts() const;
  // The handle as a Variable (name, collections, trainable, Refresh).
  const Variable& variable() const { return variable_; }

  // Embedding lookup: keys of the table's key dtype, any shape; the result
  // has shape keys.shape + [dim]. An admitted key without a row gets one
  // from the initializer (the same on every shard and restart); a key the
  // admission filter has not admitted yet reads as the default value.
  absl::StatusOr<Tensor> Gather(const Tensor& keys, const KeyedOpOptions& options = {}) const;

  // rows.shape == keys.shape + [dim], or a scalar broadcast.
  absl::Status ScatterUpdate(const Tensor& keys, const Tensor& rows,
                             const KeyedOpOptions& options = {}) const;
  absl::Status ScatterAdd(const Tensor& keys, const Tensor& rows,
                          const KeyedOpOptions& options = {}) const;
  absl::Status ScatterSub(const Tensor& keys, const Tensor& rows,
                          const KeyedOpOptions& options = {}) const;

  // One optimizer step (TensorFlow's SparseApply* semantics) on the rows of
  // `keys` ([n]) with gradient rows `grads` ([n, dim]); `slots` are the
  // table's slot tables in OptimizerSpec's order (Optimizer creates and
  // passes them; see psd/optimizer.h).
  absl::Status ApplySparse(const OptimizerSpec& optimizer,
                           const std::vector<EmbeddingVariable>& slots, const Tensor& keys,
                           const Tensor& grads, const KeyedOpOptions& options = {}) const;

  // Rows held, over all parts.
  absl::StatusOr<int64_t> Size() const;
  // Every row (each part a consistent cut; parts are read one after the
  // other): keys, values, frequencies and versions, and the rows of
  // `slots` beside them. Keys come in no particular order.
  absl::StatusOr<EmbeddingRowSet> Export(const std::vector<EmbeddingVariable>& slots = {}) const;
  // Puts rows in, replacing those of keys present; distinct keys only.
  // Each part's rows are all or nothing.
  absl::Status Import(const EmbeddingRowSet& rows,
                      const std::vector<EmbeddingVariable>& slots = {}) const;
  // Removes the rows of `keys`; returns how many there were.
  absl::StatusOr<int64_t> DeleteKeys(const Tensor& keys) const;
  // Runs the eviction policies (steps_to_live against `global_step`, the
  // L2 threshold) on every part now; returns the rows evicted.
  absl::StatusOr<int64_t> Evict(int64_t global_step) const;

 private:
  explicit EmbeddingVariable(Variable v) : variable_(std::move(v)) {}
  absl::Status Scatter(UpdateKind op, const Tensor& keys, const Tensor& rows,
                       const KeyedOpOptions& options) const;

  Variable variable_;
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_EMBEDDING_VARIABLE_H_
