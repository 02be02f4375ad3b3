#include "runtime/serving_loop.h"

#include <chrono>
#include <csignal>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "boost/asio/post.hpp"
#include "spdlog/spdlog.h"

namespace psd {

ServingLoop::ServingLoop(std::string who, double drain_timeout_seconds)
    : who_(std::move(who)),
      drain_timeout_seconds_(drain_timeout_seconds),
      signals_(io_, SIGINT, SIGTERM) {}

void ServingLoop::Post(std::function<void()> job) { boost::asio::post(io_, std::move(job)); }

void ServingLoop::RequestStop(std::string why) {
  boost::asio::post(io_, [this, why = std::move(why)] { Stop(why); });
}

void ServingLoop::Fail(absl::Status status, const std::string& why) {
  failure_ = std::move(status);
  Stop(why);
}

void ServingLoop::Stop(const std::string& why, StopCause cause) {
  if (stopping_) return;
  stopping_ = true;
  spdlog::info("{}: {}, draining (up to {} s)", who_, why, drain_timeout_seconds_);
  if (steps_.on_stop) steps_.on_stop(cause);
  server_->GetHealthCheckService()->SetServingStatus(false);
  // New calls are refused with UNAVAILABLE from here on; the ones already
  // running get the drain timeout to finish. Shutdown then closes the
  // listener and connections, cancelling whatever still runs.
  if (steps_.start_drain) steps_.start_drain();
  const absl::Time deadline = absl::Now() + absl::Seconds(drain_timeout_seconds_);
  if (steps_.wait_for_idle && !steps_.wait_for_idle(deadline)) {
    spdlog::warn("{}: calls still running after {} s; cancelling them", who_,
                 drain_timeout_seconds_);
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

absl::Status ServingLoop::Run(ServingEndpoint* endpoint, DrainSteps steps) {
  server_ = endpoint->server();
  steps_ = std::move(steps);
  // One wait: a second signal during the drain is caught and ignored
  // rather than killing the process half-way.
  signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
    if (!ec) Stop(absl::StrCat("signal ", signo, " received"), StopCause::kSignal);
  });
  std::thread io_thread([this] { io_.run(); });
  server_->Wait();
  if (steps_.after_shutdown) steps_.after_shutdown();
  io_.stop();
  io_thread.join();
  if (!failure_.ok()) return failure_;
  spdlog::info("{}: drained, exiting", who_);
  return absl::OkStatus();
}

}  // namespace psd
