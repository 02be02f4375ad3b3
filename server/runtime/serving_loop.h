// ServingLoop: the main loop of a psd server process (`psd shard`, `psd
// coordinator`) around its ServingEndpoint, in one place: SIGINT and SIGTERM
// are caught from the loop's construction on, one thread runs the process's
// timers and its stop, and a stop drains in psd's order:
//
//   1. the "draining" log line, then the process's own first steps
//      (DrainSteps::on_stop: stop background work, a final save),
//   2. the gRPC health service answers NOT_SERVING,
//   3. new calls are refused with UNAVAILABLE (DrainSteps::start_drain),
//   4. running calls get the drain timeout to finish
//      (DrainSteps::wait_for_idle), with a warning if some do not,
//   5. the gRPC server shuts down: its listener and connections close, and
//      whatever still runs a second later is cancelled.
//
// A stop happens at most once, whatever asks for it: the first signal, a
// RequestStop (an rpc such as ShardControl.Stop or psctl shutdown) or a
// Fail (the process cannot go on; Run then returns that error).
//
// Thread-safety: Post and RequestStop may be called from any thread. Stop,
// Fail and stopping() run on the loop's thread only: in a posted job, a
// timer on io(), or a DrainSteps step. Run is called once, by the thread
// that started the process; nothing runs on the loop's thread before it.
#ifndef PSD_SERVER_RUNTIME_SERVING_LOOP_H_
#define PSD_SERVER_RUNTIME_SERVING_LOOP_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/signal_set.hpp"
#include "runtime/serving.h"

namespace psd {

// What started a stop.
enum class StopCause {
  kSignal,   // SIGINT or SIGTERM
  kRequest,  // RequestStop, Stop or Fail: an rpc, a refused registration
};

// A process's own steps of the drain, in the order ServingLoop runs them
// (see the file comment); any may be empty.
struct DrainSteps {
  // First, right after the "draining" log line: stop background work that
  // must not outlive serving (the shard's coordinator link; the
  // coordinator's checkpoint scheduler, and its final save on a signal).
  std::function<void(StopCause)> on_stop;
  // Refuse new calls from here on, and end those that would otherwise
  // never finish (the shard's NCCL streams).
  std::function<void()> start_drain;
  // Wait until no call runs or `deadline` passes; false if calls still run.
  std::function<bool(absl::Time deadline)> wait_for_idle;
  // After the gRPC server has shut down, while the loop's thread still
  // exists: drop what refers to the loop or its thread.
  std::function<void()> after_shutdown;
};

class ServingLoop {
 public:
  // Catches SIGINT and SIGTERM from here on, so a stop asked for while the
  // server starts still drains it instead of killing the process. `who`
  // names the process in log lines ("shard 3", "coordinator");
  // `drain_timeout_seconds` bounds step 4.
  ServingLoop(std::string who, double drain_timeout_seconds);
  ServingLoop(const ServingLoop&) = delete;
  ServingLoop& operator=(const ServingLoop&) = delete;

  // The loop's context, for the process's timers (they run on its thread).
  boost::asio::io_context* io() { return &io_; }

  // Runs `job` on the loop's thread (once Run has started it).
  void Post(std::function<void()> job);
  // Stops on the loop's thread, after the jobs already posted.
  void RequestStop(std::string why);

  // Loop thread only. Stops now (nothing if a stop has begun); `why` goes
  // to the log line.
  void Stop(const std::string& why, StopCause cause = StopCause::kRequest);
  // Loop thread only. Stops as Stop does, and Run returns `status` (even if
  // a stop had begun already).
  void Fail(absl::Status status, const std::string& why);
  // Loop thread only: whether a stop has begun.
  bool stopping() const { return stopping_; }

  // Serves until a stop has drained `endpoint` (which must outlive the
  // call): starts the loop's thread, waits for the gRPC server to shut
  // down, runs `steps.after_shutdown`, and ends the thread. Returns the
  // status given to Fail, or OK ("drained, exiting" is logged).
  absl::Status Run(ServingEndpoint* endpoint, DrainSteps steps);

 private:
  const std::string who_;
  const double drain_timeout_seconds_;
  boost::asio::io_context io_;
  boost::asio::signal_set signals_;
  // Set by Run before the loop's thread starts; read on that thread.
  grpc::Server* server_ = nullptr;
  DrainSteps steps_;
  // The loop's thread only (Run reads failure_ after joining it).
  bool stopping_ = false;
  absl::Status failure_;
};

}  // namespace psd

#endif  // PSD_SERVER_RUNTIME_SERVING_LOOP_H_
