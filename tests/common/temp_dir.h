// Directories of tests that write files: a fresh one under the test's
// temporary directory, its entries, and its removal.
#ifndef PSD_TESTS_COMMON_TEMP_DIR_H_
#define PSD_TESTS_COMMON_TEMP_DIR_H_

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace psd {
namespace testing_files {

// A new directory "<TempDir>/<name>_XXXXXX" (a failure is a test failure).
inline std::string MakeTempDir(const std::string& name) {
  std::string pattern = ::testing::TempDir() + "/" + name + "_XXXXXX";
  EXPECT_NE(mkdtemp(pattern.data()), nullptr) << pattern;
  return pattern;
}

// The names in `dir`, sorted, without "." and "..".
inline std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") out.push_back(name);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Removes `dir` and the files in it (not subdirectories).
inline void RemoveDir(const std::string& dir) {
  for (const std::string& name : ListDir(dir)) std::remove((dir + "/" + name).c_str());
  rmdir(dir.c_str());
}

}  // namespace testing_files
}  // namespace psd

#endif  // PSD_TESTS_COMMON_TEMP_DIR_H_
