#include "coordinator/checkpoint_scheduler.h"

#include <chrono>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "boost/asio/post.hpp"
#include "psd/random_id.h"
#include "spdlog/spdlog.h"

namespace psd {

namespace {

std::chrono::steady_clock::duration Seconds(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(s));
}

// "DIR/model.ckpt-123" -> 123.
std::optional<int64_t> StepOfPrefix(const std::string& prefix) {
  const size_t dash = prefix.rfind('-');
  if (dash == std::string::npos || prefix.find('/', dash) != std::string::npos) return std::nullopt;
  int64_t step;
  if (!absl::SimpleAtoi(prefix.substr(dash + 1), &step)) return std::nullopt;
  return step;
}

}  // namespace

CheckpointScheduler::CheckpointScheduler(CoordinatorService* service,
                                         CheckpointSchedulerOptions options)
    : service_(service),
      manager_(service->checkpoints()),
      options_(std::move(options)),
      work_(boost::asio::make_work_guard(io_)),
      interval_timer_(io_),
      poll_timer_(io_) {}

CheckpointScheduler::~CheckpointScheduler() { Stop(); }

void CheckpointScheduler::Start() {
  if (!manager_->dir().empty()) {
    auto latest = manager_->Latest("", "");
    if (latest.ok()) {
      save_counter_ = StepOfPrefix(*latest).value_or(0);
      if (StepOfPrefix(*latest).has_value()) last_saved_step_ = save_counter_;
    }
  }
  if (!options_.restore_from.empty()) boost::asio::post(io_, [this] { RestoreFrom(); });
  if (options_.interval_seconds > 0) {
    spdlog::info("checkpoints: saving every {} s", options_.interval_seconds);
    ArmInterval();
  }
  if (options_.every_n_steps > 0) {
    spdlog::info("checkpoints: saving every {} steps of {}", options_.every_n_steps,
                 options_.global_step);
    ArmPoll();
  }
  thread_ = std::thread([this] { io_.run(); });
}

void CheckpointScheduler::Stop() {
  stopping_.store(true);
  work_.reset();
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

void CheckpointScheduler::ArmInterval() {
  interval_timer_.expires_after(Seconds(options_.interval_seconds));
  interval_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_.load()) return;
    std::optional<int64_t> step;
    bool skip = false;
    if (!options_.global_step.empty()) {
      auto value = manager_->ReadIntScalar(options_.global_step);
      if (!value.ok()) {
        spdlog::warn("checkpoints: periodic save skipped: global step {}: {}",
                     options_.global_step, value.status().ToString());
        skip = true;
      } else if (last_saved_step_ == *value) {
        spdlog::debug("checkpoints: periodic save skipped: still at step {}", *value);
        skip = true;
      } else {
        step = *value;
      }
    }
    if (!skip) (void)SaveAt(step, /*try_only=*/true, "periodic (interval)");
    ArmInterval();
  });
}

void CheckpointScheduler::ArmPoll() {
  poll_timer_.expires_after(Seconds(options_.poll_seconds));
  poll_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_.load()) return;
    auto value = manager_->ReadIntScalar(options_.global_step);
    if (!value.ok()) {
      spdlog::debug("checkpoints: global step {}: {}", options_.global_step,
                    value.status().ToString());
    } else {
      const int64_t n = options_.every_n_steps;
      if (last_saved_step_.has_value() && *value < *last_saved_step_) {
        // The step went back (a restore): count from there.
        last_saved_step_ = *value;
      }
      // Since the last save (or the latest checkpoint at start, else 0).
      const int64_t ref = last_saved_step_.value_or(0);
      if (*value / n > ref / n) (void)SaveAt(*value, /*try_only=*/true, "periodic (steps)");
    }
    ArmPoll();
  });
}

absl::Status CheckpointScheduler::SaveAt(std::optional<int64_t> step, bool try_only,
                                         const char* why) {
  SaveCheckpointRequest request;
  const int64_t s = step.has_value() ? *step : save_counter_ + 1;
  request.set_global_step(s);
  // Tracked, so the console shows its progress.
  request.set_progress_id(RandomNonzeroId());
  auto saved = try_only ? manager_->TrySave(request) : manager_->Save(request);
  if (!saved.ok()) {
    if (absl::IsAborted(saved.status()) && try_only) {
      spdlog::info("checkpoints: {} save at step {} skipped: {}", why, s,
                   std::string(saved.status().message()));
    } else {
      spdlog::error("checkpoints: {} save at step {} failed (tried again at the next tick): {}",
                    why, s, saved.status().ToString());
    }
    return saved.status();
  }
  if (!step.has_value()) save_counter_ = s;
  last_saved_step_ = s;
  spdlog::info("checkpoints: {} save {}: {} bytes in {:.3f} s, fence {:.3f} ms{}{}", why,
               saved->prefix(), saved->bytes(), saved->seconds(),
               saved->fence_micros() / 1000.0, saved->deleted().empty() ? "" : ", deleted ",
               absl::StrJoin(saved->deleted(), ", "));
  return absl::OkStatus();
}

absl::Status CheckpointScheduler::FinalSave() {
  std::optional<int64_t> step;
  if (!options_.global_step.empty()) {
    auto value = manager_->ReadIntScalar(options_.global_step);
    if (value.ok()) step = *value;
  }
  return SaveAt(step, /*try_only=*/false, "final (shutdown)");
}

void CheckpointScheduler::OnLostParts(int32_t shard_id, std::vector<std::string> parts) {
  const std::string names = absl::StrJoin(parts, ", ");
  if (!options_.restore_lost) {
    spdlog::warn("shard {} came back without parts {}: they stay lost (checkpoint.restore_lost "
                 "is off; restore them with psctl ckpt restore)",
                 shard_id, names);
    return;
  }
  boost::asio::post(io_, [this, shard_id, parts = std::move(parts), names] {
    if (stopping_.load()) return;
    spdlog::info("checkpoints: restoring lost parts {} of shard {} from the latest checkpoint",
                 names, shard_id);
    auto restored = manager_->RestoreParts(shard_id, parts);
    if (!restored.ok()) {
      spdlog::error("checkpoints: lost parts {} of shard {} stay lost: {}", names, shard_id,
                    restored.status().ToString());
      return;
    }
    spdlog::info("checkpoints: restored lost parts of shard {} ({} bytes) from {}", shard_id,
                 restored->bytes(), restored->prefix());
  });
}

void CheckpointScheduler::RestoreFrom() {
  const int expected = std::max(1, options_.expected_shards);
  const absl::Time deadline = absl::Now() + absl::Seconds(options_.restore_wait_seconds);
  absl::Time next_log = absl::Now();
  int live = service_->NumLiveShards();
  while (!stopping_.load() && live < expected && absl::Now() < deadline) {
    if (absl::Now() >= next_log) {
      spdlog::info("--restore-from {}: waiting for shards ({} of {} live)", options_.restore_from,
                   live, expected);
      next_log = absl::Now() + absl::Seconds(5);
    }
    absl::SleepFor(absl::Milliseconds(100));
    live = service_->NumLiveShards();
  }
  if (stopping_.load()) return;
  if (live == 0) {
    spdlog::error("--restore-from {}: no shard registered within {} s; nothing restored",
                  options_.restore_from, options_.restore_wait_seconds);
    return;
  }
  if (live < expected) {
    spdlog::warn("--restore-from {}: only {} of {} shards live after {} s; placing on those",
                 options_.restore_from, live, expected, options_.restore_wait_seconds);
  }
  auto fail = [this](const absl::Status& s) {
    spdlog::error("--restore-from {}: {}", options_.restore_from, s.ToString());
  };
  auto prefix = manager_->ResolvePrefix(options_.restore_from);
  if (!prefix.ok()) return fail(prefix.status());
  auto meta = manager_->ReadMeta(*prefix);
  if (!meta.ok()) return fail(meta.status());
  absl::Status declared = service_->DeclareFromMeta(*meta);
  if (!declared.ok()) return fail(declared);
  RestoreCheckpointRequest request;
  request.set_prefix(*prefix);
  for (const VariableDef& def : meta->variables()) request.add_variables(def.name());
  // Through the service, as the Restore RPC: a backup the keeper made of a
  // part created above (a table's part is initialized, so copied, at once)
  // is dropped first, not left holding the value the restore replaces.
  auto restored = service_->RestoreCheckpoint(request);
  if (!restored.ok()) return fail(restored.status());
  spdlog::info("--restore-from: {} variables ({} bytes) restored from {} in {:.3f} s",
               restored->restored_size(), restored->bytes(), restored->prefix(),
               restored->seconds());
}

}  // namespace psd
