#include "psd/parallel.h"

#include <system_error>
#include <thread>

namespace psd {

std::vector<absl::Status> RunParallel(size_t n, const std::function<absl::Status(size_t)>& fn) {
  std::vector<absl::Status> out(n);
  if (n == 0) return out;
  std::vector<std::thread> threads;
  std::vector<size_t> inline_calls;  // threads the system would not start
  threads.reserve(n - 1);
  for (size_t i = 1; i < n; ++i) {
    try {
      threads.emplace_back([&out, &fn, i] { out[i] = fn(i); });
    } catch (const std::system_error&) {
      inline_calls.push_back(i);
    }
  }
  out[0] = fn(0);
  for (size_t i : inline_calls) out[i] = fn(i);
  for (std::thread& t : threads) t.join();
  return out;
}

}  // namespace psd
