// NcclComm in a build without NCCL (no GPU backend, or NCCL not found when
// it was configured): every entry point answers UNIMPLEMENTED with the reason.
#include <atomic>
#include <memory>
#include <string>

#include "nccl/nccl_comm.h"

namespace psd {

absl::Status NcclSupport() {
#if defined(PSD_WITH_GPU)
  return absl::UnimplementedError(
      "this build has no NCCL data plane: NCCL (nccl.h, libnccl) was not found when psd was "
      "configured");
#else
  return absl::UnimplementedError(
      "this build has no NCCL data plane: psd was built without the GPU backend (PSD_GPU)");
#endif
}

std::string NcclVersion() { return "none"; }

absl::StatusOr<std::string> NewNcclUniqueId() { return NcclSupport(); }

absl::StatusOr<std::unique_ptr<NcclComm>> NcclCommInit(int device, const std::string& unique_id,
                                                       int size, int rank, absl::Time deadline,
                                                       const std::atomic<bool>* abort) {
  return NcclSupport();
}

}  // namespace psd
