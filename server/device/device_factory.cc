#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "device/device.h"

namespace psd {

#ifndef PSD_WITH_GPU
absl::StatusOr<std::unique_ptr<Device>> NewGpuDevice(int ordinal) {
  return absl::UnimplementedError(
      absl::StrCat("device 'gpu:", ordinal, "': this build has no GPU support"));
}
#endif

absl::StatusOr<std::unique_ptr<Device>> NewDevice(const std::string& spec) {
  if (spec == "cpu" || spec == "cpu:0") return NewCpuDevice();
  if (spec == "gpu") return NewGpuDevice(0);
  if (spec.rfind("gpu:", 0) == 0) {
    int ordinal = -1;
    const std::string number = spec.substr(4);
    if (!number.empty() && number.find_first_not_of("0123456789") == std::string::npos &&
        absl::SimpleAtoi(number, &ordinal)) {
      return NewGpuDevice(ordinal);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", spec, "' (expected cpu or gpu:N)"));
}

}  // namespace psd
