// CheckpointScheduler: the coordinator's background checkpoint work, on its
// own Asio io_context and thread so that a long save never delays signal
// handling. It drives
//   - periodic saves every `interval_seconds` and/or whenever the global
//     step (an integer scalar variable, polled every `poll_seconds`)
//     crosses a multiple of `every_n_steps`, as DIR/model.ckpt-STEP;
//   - `--restore-from`: once the expected shards are live (bounded wait),
//     declare every variable of the checkpoint's psd-meta and restore it;
//   - restore of the parts a shard lost (it came back empty), from the
//     latest checkpoint, when enabled.
// All of it runs on the one thread, so two scheduled saves never overlap; a
// save started by an RPC meanwhile makes the tick skip (logged). A failed
// save is logged and tried again at the next tick.
//
// Thread-safety: Start, Stop and FinalSave from one thread (the server's);
// OnLostParts from any thread.
#ifndef PSD_SERVER_COORDINATOR_CHECKPOINT_SCHEDULER_H_
#define PSD_SERVER_COORDINATOR_CHECKPOINT_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/steady_timer.hpp"
#include "coordinator/coordinator_service.h"

namespace psd {

struct CheckpointSchedulerOptions {
  double interval_seconds = 0;  // 0: no time-based saves
  int64_t every_n_steps = 0;    // 0: no step-based saves
  std::string global_step;      // variable name; the step of saved prefixes
  double poll_seconds = 1;      // how often the global step is read
  bool restore_lost = false;
  // DIR or PREFIX; empty: none.
  std::string restore_from;
  // Shards to wait for before --restore-from declares (at least 1).
  int expected_shards = 1;
  double restore_wait_seconds = 60;
};

class CheckpointScheduler {
 public:
  CheckpointScheduler(CoordinatorService* service, CheckpointSchedulerOptions options);
  CheckpointScheduler(const CheckpointScheduler&) = delete;
  CheckpointScheduler& operator=(const CheckpointScheduler&) = delete;
  ~CheckpointScheduler();  // Stop()

  // Starts the thread: the --restore-from job first, then the timers.
  void Start();
  // Cancels the timers and waits for the running job.
  void Stop();
  // A save now, on the calling thread (the final save on shutdown); waits
  // for a running save instead of skipping.
  absl::Status FinalSave();
  // Queues the restore of `parts` of `shard_id` (see above).
  void OnLostParts(int32_t shard_id, std::vector<std::string> parts);

 private:
  void ArmInterval();
  void ArmPoll();
  // One periodic save; `step` from the global step when known.
  absl::Status SaveAt(std::optional<int64_t> step, bool try_only, const char* why);
  void RestoreFrom();

  CoordinatorService* const service_;
  CheckpointManager* const manager_;
  const CheckpointSchedulerOptions options_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  boost::asio::steady_timer interval_timer_;
  boost::asio::steady_timer poll_timer_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  // Touched only on the scheduler's thread (and by FinalSave after Stop).
  std::optional<int64_t> last_saved_step_;  // step of the last scheduled save
  int64_t save_counter_ = 0;                // prefix step without a global step
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CHECKPOINT_SCHEDULER_H_
