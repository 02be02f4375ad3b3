#include "psd/uninitialized.h"

#include <string>

namespace psd {

// C++17 has no way to grow a std::string without writing the new
// characters (C++23's resize_and_overwrite is that way; libc++ has
// __resize_default_init). With libstdc++, the string's own private
// _M_set_length sets the length (and the terminating NUL) after a reserve:
// it is reached through an explicit instantiation, where access checking
// does not apply to the names used (C++17 [temp.explicit]/14; folly's
// UninitializedMemoryHacks.h uses the same route).
#if defined(__cpp_lib_string_resize_and_overwrite)

void ResizeUninitialized(std::string* s, size_t size) {
  s->resize_and_overwrite(size, [](char*, size_t n) { return n; });
}
bool ResizeUninitializedSkipsFill() { return true; }

#elif defined(_LIBCPP_VERSION)

void ResizeUninitialized(std::string* s, size_t size) { s->__resize_default_init(size); }
bool ResizeUninitializedSkipsFill() { return true; }

#elif defined(__GLIBCXX__) && _GLIBCXX_USE_CXX11_ABI

namespace {

void SetLength(std::string& s, size_t n);

template <void (std::string::*kSetLength)(std::string::size_type)>
struct SetLengthAccess {
  friend void SetLength(std::string& s, size_t n) { (s.*kSetLength)(n); }
};
template struct SetLengthAccess<&std::string::_M_set_length>;

}  // namespace

void ResizeUninitialized(std::string* s, size_t size) {
  if (size <= s->size()) {
    s->resize(size);
    return;
  }
  s->reserve(size);  // keeps the bytes up to size(); no fill
  SetLength(*s, size);
}
bool ResizeUninitializedSkipsFill() { return true; }

#else

void ResizeUninitialized(std::string* s, size_t size) { s->resize(size); }
bool ResizeUninitializedSkipsFill() { return false; }

#endif

}  // namespace psd
