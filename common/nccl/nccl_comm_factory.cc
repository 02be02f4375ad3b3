// The default NcclCommFactory: the free functions of nccl_comm.h, in every
// build (they answer UNIMPLEMENTED where NCCL is missing).
#include "nccl/nccl_comm.h"

namespace psd {
namespace {

class NcclLibraryFactory final : public NcclCommFactory {
 public:
  absl::Status Support() const override { return NcclSupport(); }
  absl::StatusOr<std::string> NewUniqueId() override { return NewNcclUniqueId(); }
  absl::StatusOr<std::unique_ptr<NcclComm>> Init(int device, const std::string& unique_id,
                                                 int size, int rank, absl::Time deadline,
                                                 const std::atomic<bool>* abort) override {
    return NcclCommInit(device, unique_id, size, rank, deadline, abort);
  }
};

}  // namespace

NcclCommFactory* DefaultNcclCommFactory() {
  static NcclLibraryFactory* const factory = new NcclLibraryFactory();
  return factory;
}

}  // namespace psd
