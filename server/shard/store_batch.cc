// VariableStore: one op of a Batch message.
#include <algorithm>
#include <string>

#include "shard/variable_store.h"

namespace psd {

absl::Status VariableStore::RunBatchOp(const BatchOp& op, int64_t max_result_bytes,
                                       BatchOpResult* result, CallerKey caller) {
  switch (op.op_case()) {
    case BatchOp::kAssign: return Assign(op.assign(), result->mutable_assign(), caller);
    case BatchOp::kScatter: return Scatter(op.scatter(), result->mutable_scatter(), caller);
    case BatchOp::kCountUpTo:
      return CountUpTo(op.count_up_to(), result->mutable_count_up_to(), caller);
    case BatchOp::kRead:
      return ReadUpTo(op.read(), std::max<int64_t>(max_result_bytes, 0), result->mutable_read());
    case BatchOp::kGather:
      return GatherUpTo(op.gather(), std::max<int64_t>(max_result_bytes, 0),
                        "what is left of the batch reply (max_batch_result_bytes)",
                        result->mutable_gather());
    case BatchOp::kApplyDense:
      return ApplyDense(op.apply_dense(), result->mutable_apply_dense(), caller);
    case BatchOp::kApplySparse:
      return ApplySparse(op.apply_sparse(), result->mutable_apply_sparse(), caller);
    default: return absl::InvalidArgumentError("batch op has no operation set");
  }
}

void VariableStore::SetBatchOpStatus(const absl::Status& status, BatchOpResult* result) {
  result->set_code(static_cast<int>(status.code()));
  if (!status.ok()) {
    result->set_message(std::string(status.message()));
    result->clear_result();
  }
}

}  // namespace psd
