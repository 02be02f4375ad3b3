#include "absl/strings/str_cat.h"
#include "device/device.h"

namespace psd {

absl::StatusOr<std::unique_ptr<Device>> NewDevice(const std::string& spec) {
  if (spec == "cpu" || spec == "cpu:0") return NewCpuDevice();
  if (spec.rfind("gpu", 0) == 0) {
    return absl::UnimplementedError(
        absl::StrCat("device '", spec, "': this build has no GPU support"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", spec, "' (expected cpu or gpu:N)"));
}

}  // namespace psd
