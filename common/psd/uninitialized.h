// Growing a std::string without writing its new bytes, for buffers that a
// copy is about to overwrite in full (a gather's rows, a streamed read's
// chunks): std::string::resize zero-fills what it adds, which on a large
// buffer costs as much as the copy that then overwrites it.
//
// Only for callers that write every byte they add before anything reads
// it (or that shrink or clear the string again on failure): the added
// bytes are indeterminate, whatever the heap held before.
//
// Thread-safety: thread-compatible (it changes the string given).
#ifndef PSD_COMMON_PSD_UNINITIALIZED_H_
#define PSD_COMMON_PSD_UNINITIALIZED_H_

#include <cstddef>
#include <string>

namespace psd {

// Sets s->size() to `size`. Bytes up to the old size keep their values;
// bytes after it are uninitialized (see above). Allocates (with capacity
// exactly `size` for an empty string) only when `size` exceeds the
// capacity.
void ResizeUninitialized(std::string* s, size_t size);

// Whether ResizeUninitialized skips the fill with this standard library
// (false where it has to fall back to resize()); tests check it is true
// where it should be.
bool ResizeUninitializedSkipsFill();

}  // namespace psd

#endif  // PSD_COMMON_PSD_UNINITIALIZED_H_
