#include "psd/update_kind_wire.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace psd {

UpdateOp UpdateKindToWire(UpdateKind kind) {
  switch (kind) {
    case UpdateKind::kAssign: return UPDATE_ASSIGN;
    case UpdateKind::kAdd: return UPDATE_ADD;
    case UpdateKind::kSub: return UPDATE_SUB;
  }
  return UPDATE_ASSIGN;
}

absl::StatusOr<UpdateKind> UpdateKindFromWire(int op, const std::string& variable) {
  switch (op) {
    case UPDATE_ASSIGN: return UpdateKind::kAssign;
    case UPDATE_ADD: return UpdateKind::kAdd;
    case UPDATE_SUB: return UpdateKind::kSub;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("variable '", variable, "': unknown update op ", op));
  }
}

}  // namespace psd
