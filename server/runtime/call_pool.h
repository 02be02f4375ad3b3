// CallPool: a few threads of a service's own for the calls that may wait
// (a write's backups, a fence, a checkpoint's files, a long poll).
//
// gRPC runs every callback handler on threads of its own, as few as the
// machine has cores. A handler that waits there holds a thread that the
// calls it waits for may need (a backup's pull that acknowledges the write,
// the coordinator's next call): on a 2-core machine two such waits stall
// every call of the server until they time out. Such handlers post their
// work here and finish their call from this pool instead.
//
// The threads are made on first use: a server that never waits keeps no
// idle threads. Destroying the pool runs what was posted, then joins.
//
// Thread-safety: thread-safe.
#ifndef PSD_SERVER_RUNTIME_CALL_POOL_H_
#define PSD_SERVER_RUNTIME_CALL_POOL_H_

#include <functional>
#include <memory>
#include <utility>

#include "absl/base/call_once.h"
#include "boost/asio/post.hpp"
#include "boost/asio/thread_pool.hpp"

namespace psd {

class CallPool {
 public:
  explicit CallPool(int threads) : threads_(threads) {}
  ~CallPool() {
    if (pool_ != nullptr) pool_->join();
  }
  CallPool(const CallPool&) = delete;
  CallPool& operator=(const CallPool&) = delete;

  void Post(std::function<void()> task) {
    absl::call_once(once_, [this] { pool_ = std::make_unique<boost::asio::thread_pool>(threads_); });
    boost::asio::post(*pool_, std::move(task));
  }

 private:
  const int threads_;
  absl::once_flag once_;
  std::unique_ptr<boost::asio::thread_pool> pool_;  // set once, by once_
};

}  // namespace psd

#endif  // PSD_SERVER_RUNTIME_CALL_POOL_H_
