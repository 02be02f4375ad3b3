// MergeDuplicateRows: the client's merge of duplicate indices in a sparse
// update (scatter_update / scatter_add / scatter_sub and sparse optimizer
// applies) before it is sent, so a batch with repeated indices (embedding
// ids drawn from a skewed distribution) carries each row once.
//
// Semantics, matching what the shard does with the unmerged request:
//  * kSum (scatter_add, scatter_sub, apply_sparse): the rows of one index
//    are summed in arrival order, the first taken as is and each later one
//    added, in the compute type of the shard's sparse apply (float for
//    float16, bfloat16 and float32; double for float64; integers wrap in
//    two's complement). That is exactly the sum the shard forms for
//    duplicate indices of an apply_sparse, on the CPU and the GPU alike
//    (server/device/cpu_optimizer_kernels.cc, CpuApplyOptimizerSparse;
//    server/device/cuda/gpu_context.cc, SumDuplicateRows), so a merged
//    apply_sparse of float32/float64 is bit-identical to the unmerged one;
//    for float16/bfloat16 the sum is rounded to the 16-bit type once here
//    where the shard would have kept it in float (the gradient a step sees
//    moves by at most half a 16-bit ulp of the sum).
//    A scatter_add applies each row in turn (v + u1 + u2, rounded after
//    each add); merged it is v + (u1 + u2). Integer results are the same;
//    floating results may differ in the last bits, as any reordering of
//    float additions does (the shard's GPU kernels already add duplicates
//    in no fixed order).
//  * kLastWins (scatter_update): the shard writes rows in order, so the
//    last row of an index wins; merged, each index carries its last row.
// The merged indices are the distinct ones in order of first occurrence,
// so the request (and any split of it by part) is deterministic.
//
// Invalid input is never merged: when the input breaks the contract below
// (wrong dtypes, shapes that do not line up, an index outside [0, limit))
// the result is "nothing merged", and the caller sends the input as it is,
// so the error the caller sees is the one the unmerged request gets. What
// the merge cannot check (the variable's rows on the shard, when the
// caller's handle may be older than an assign with validate_shape=false, or
// no handle at all for ShardApplier) is the callers' part: a merged request
// the shard refuses with INVALID_ARGUMENT is refused before anything is
// applied, and exactly when the unmerged one would be (same distinct
// indices, rows of the same shape), so they resend the caller's own request
// to report the shard's error about it.
//
// Thread-safety: a pure function of its arguments.
#ifndef PSD_CLIENT_SRC_SPARSE_MERGE_H_
#define PSD_CLIENT_SRC_SPARSE_MERGE_H_

#include <cstdint>
#include <limits>
#include <optional>

#include "psd/tensor.h"
#include "psd/update_kind.h"

namespace psd {
namespace client {
namespace internal {

enum class MergeKind {
  kSum,       // scatter_add, scatter_sub, apply_sparse
  kLastWins,  // scatter_update
};

// kLastWins for UpdateKind::kAssign, kSum for kAdd and kSub.
MergeKind MergeKindOf(UpdateKind op);

struct MergedRows {
  Tensor indices;  // [m], the input's index dtype, distinct, in first-occurrence order
  Tensor rows;     // [m] + the input rows' row shape
};

// The merge of `rows` by `indices`, or nullopt when there is nothing to
// merge: no index repeats (checked in one pass over the indices; nothing is
// copied), or the input breaks the contract:
//  * indices: DT_INT32 or DT_INT64, any rank, each in [0, limit);
//  * rows: a fixed-size dtype (numeric for kSum), of shape indices.shape +
//    row shape (a scalar `rows`, one value for every index, is not merged).
// Indices of any rank come out flattened to a vector, which scatter and
// apply_sparse accept for the same rows.
std::optional<MergedRows> MergeDuplicateRows(
    const Tensor& indices, const Tensor& rows, MergeKind kind,
    int64_t limit = std::numeric_limits<int64_t>::max());

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_SPARSE_MERGE_H_
