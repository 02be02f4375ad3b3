// FUZZ_CHECK-style assertion for the fuzz targets' own properties (what a
// run must keep, beyond not crashing): a violated one prints what and
// aborts, which libFuzzer reports as a crash with the input that caused it.
#ifndef PSD_TESTS_FUZZ_FUZZ_CHECK_H_
#define PSD_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

namespace psd::fuzz {

inline void Check(bool ok, const char* target, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "%s: %s\n", target, what);
    std::abort();
  }
}

}  // namespace psd::fuzz

#endif  // PSD_TESTS_FUZZ_FUZZ_CHECK_H_
