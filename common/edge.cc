#include "psd/edge.h"

#include <exception>
#include <new>
#include <stdexcept>

#include "absl/strings/str_cat.h"

namespace psd {

absl::Status RunAtEdge(absl::string_view who, absl::FunctionRef<absl::Status()> fn) noexcept {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(who, ": out of host memory serving the request"));
  } catch (const std::length_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(who, ": the request needs more memory than one buffer can hold (", e.what(), ")"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(who, ": unexpected error serving the request: ",
                                            e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(who, ": unexpected error serving the request"));
  }
}

}  // namespace psd
