// UpdateKind: the element-wise update of assign/assign_add/assign_sub and
// scatter_update/scatter_add/scatter_sub, as one enum from the client's
// Variable down to the CPU and CUDA kernels. The wire carries it as the
// proto enum UpdateOp (psd/update_kind_wire.h converts, in one place).
//
// Plain C++ with no dependency: the CUDA kernel library, which builds on a
// machine with nothing but CUDA (server/device/cuda/standalone), includes it.
//
// Thread-safety: a value type and pure functions; thread-safe.
#ifndef PSD_COMMON_UPDATE_KIND_H_
#define PSD_COMMON_UPDATE_KIND_H_

namespace psd {

// dst = src, dst + src, dst - src. Integers wrap (two's complement);
// float16/bfloat16 compute in float and round to nearest even. The values
// are the CUDA kernels' template arguments.
enum class UpdateKind : int { kAssign = 0, kAdd = 1, kSub = 2 };

// TensorFlow's name of the assign op, for messages: "assign", "assign_add",
// "assign_sub".
inline const char* AssignOpName(UpdateKind kind) {
  switch (kind) {
    case UpdateKind::kAssign: return "assign";
    case UpdateKind::kAdd: return "assign_add";
    case UpdateKind::kSub: return "assign_sub";
  }
  return "assign";
}

// TensorFlow's name of the scatter op, for messages: "scatter_update",
// "scatter_add", "scatter_sub".
inline const char* ScatterOpName(UpdateKind kind) {
  switch (kind) {
    case UpdateKind::kAssign: return "scatter_update";
    case UpdateKind::kAdd: return "scatter_add";
    case UpdateKind::kSub: return "scatter_sub";
  }
  return "scatter_update";
}

}  // namespace psd

#endif  // PSD_COMMON_UPDATE_KIND_H_
