// Output helpers shared by psctl commands: JSON string/number encoding and
// human-readable element formatting. Stateless; thread-safe.
#ifndef PSD_CLIENT_PSCTL_OUTPUT_H_
#define PSD_CLIENT_PSCTL_OUTPUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "psd/tensor.h"

namespace psctl {

// A JSON string literal with quotes. Bytes that are not printable ASCII are
// written as \u00XX (so binary strings survive, read as Latin-1).
std::string JsonString(absl::string_view s);
// A JSON number; NaN and infinities become the strings "NaN", "Infinity",
// "-Infinity" (JSON has no such numbers).
std::string JsonNumber(double v);

// The first `max_elements` elements of `t` (all if negative), each as a
// string: shortest round-tripping decimals for floating types, true/false for
// bool, C-escaped quoted text (cut at `max_string_bytes` if non-negative)
// for strings, or JSON values when `json`.
std::vector<std::string> FormatElements(const psd::Tensor& t, int64_t max_elements, bool json,
                                        int64_t max_string_bytes);

// Left-aligned columns separated by two spaces.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);

// "512 B", "1.5 MiB", "2.0 GiB".
std::string FormatBytes(int64_t n);

// One progress-bar line for a terminal, at most `width` columns:
//   saving [#########.........]  45%  1.2 GiB / 2.6 GiB  310.4 MiB/s  ETA 4 s
// Rate and ETA are left out until some bytes are done; with `total` unknown
// (0) only the bytes done, rate and elapsed time are shown.
std::string FormatProgress(absl::string_view verb, int64_t done, int64_t total, double seconds,
                           int width);

}  // namespace psctl

#endif  // PSD_CLIENT_PSCTL_OUTPUT_H_
