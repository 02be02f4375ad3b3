// Console: the coordinator's web console, served by its HTTP endpoint (the
// one serving /metrics, with the same TLS):
//
//   /               the page: shards, charts of the last 15 minutes,
//                   variables and their placement, checkpoints; its script
//                   swaps in a fresh body every kConsoleSampleIntervalSeconds
//   /console/main   that body alone (HTML)
//   /console.json   the same figures as JSON, for scripts
//
// Read-only: GET and HEAD only (the endpoint answers anything else 405).
// With a token file, every route needs the admin token, as
// `Authorization: Bearer TOKEN` or `?token=TOKEN` (which the page keeps for
// its refresh calls): none or an unknown one is 401, another role's 403,
// each with a short page and no data. Answers are never cached and the HTML
// runs no script but its own (a CSP nonce).
//
// Where the figures come from. Shards: CoordinatorService::ShardStatuses,
// what `psctl status` and /metrics show (parts and bytes from the registry,
// exact; memory as each shard last reported it, with its age). Variables:
// the registry (the first kConsoleMaxVariables in creation order), each
// part's initialized state as its shard told the sampler at its last look
// (Shard.ListVariables every sample; the age is shown). Checkpoints: the
// checkpoint manager's listing of the configured directory and its running
// saves and restores. Charts: a SampleRing of kConsoleSampleCapacity
// samples that a thread takes every kConsoleSampleIntervalSeconds from the
// coordinator's own /metrics text and from the shards' traffic counters as
// their last heartbeats carried them (ShardStatus.traffic, what ListShards
// gives too; console_samples.h).
//
// Thread-safety: thread-safe. Handle runs on the HTTP server's thread; the
// sampler on its own; the part states are guarded by mu_, never held across
// an RPC.
#ifndef PSD_SERVER_COORDINATOR_CONSOLE_H_
#define PSD_SERVER_COORDINATOR_CONSOLE_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "coordinator/console_page.h"
#include "coordinator/console_samples.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/registry.h"
#include "coordinator/sample_ring.h"
#include "grpcpp/security/credentials.h"
#include "observability/http_server.h"
#include "observability/metrics.h"
#include "runtime/auth.h"

namespace psd {

struct ConsoleOptions {
  // The coordinator's address, shown in the page's header.
  std::string coordinator;
  // The coordinator's token file; empty: no token is asked for.
  std::string token_file;
  // How the sampler reaches the shards (node credentials); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> shard_credentials;
  int max_message_bytes = 64 << 20;
  // The configured checkpoint directory (listed); empty: none.
  std::string checkpoint_dir;
  double sample_interval_seconds = kConsoleSampleIntervalSeconds;
  int sample_capacity = kConsoleSampleCapacity;
  // Deadline of the sampler's ListVariables call to each shard.
  absl::Duration shard_timeout = absl::Seconds(2);
};

// The shards' traffic counters in `statuses` (CoordinatorService::
// ShardStatuses, what ListShards gives), by id; shards that have not
// reported any are left out. `now_unix_seconds` dates them (less each
// one's age).
std::vector<std::pair<int32_t, ShardCounters>> ShardCountersOf(const ListShardsResponse& statuses,
                                                               double now_unix_seconds);

class Console {
 public:
  // `registry`, `service` and `metrics` must outlive the console. Fails if
  // the token file cannot be read.
  static absl::StatusOr<std::unique_ptr<Console>> Create(Registry* registry,
                                                         CoordinatorService* service,
                                                         const MetricsRegistry* metrics,
                                                         ConsoleOptions options);
  // Stops the sampler.
  ~Console();
  Console(const Console&) = delete;
  Console& operator=(const Console&) = delete;

  // Starts the sampler thread (a sample every sample_interval_seconds).
  void Start();

  // For HttpServerOptions::handler: the console's routes; nullopt for any
  // other target.
  std::optional<HttpResponse> Handle(const HttpRequest& request) const;

  // What the routes render, now.
  ConsoleView View() const;
  // One sampler tick (the thread calls it; tests call it directly).
  void SampleNow();
  // The address shown, once the gRPC port is known (listen port 0).
  void SetCoordinatorAddress(std::string address) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Console(Registry* registry, CoordinatorService* service, const MetricsRegistry* metrics,
          ConsoleOptions options);
  // Asks every live shard which parts it holds and whether each is
  // initialized.
  void RefreshPartStates() ABSL_LOCKS_EXCLUDED(mu_);
  // Empty when allowed; else the denial (401 or 403).
  std::optional<HttpResponse> Deny(const HttpRequest& request, absl::string_view query) const;

  Registry* const registry_;
  CoordinatorService* const service_;
  const MetricsRegistry* const metrics_;
  const ConsoleOptions options_;
  std::unique_ptr<TokenAuthorizer> authorizer_;  // null: no tokens

  SampleRing<ConsoleSample> samples_;
  // The sampler's last digest; only its thread (or a test's SampleNow)
  // touches it, one at a time.
  absl::Mutex sample_mu_;
  std::optional<std::pair<double, MetricsDigest>> last_digest_ ABSL_GUARDED_BY(sample_mu_);
  ShardTrafficSampler shard_traffic_ ABSL_GUARDED_BY(sample_mu_);

  struct PartStates {
    uint64_t incarnation = 0;
    std::map<std::string, bool> initialized;  // part name -> initialized
    absl::Time at;                            // when the shard answered
  };
  mutable absl::Mutex mu_;
  std::string coordinator_ ABSL_GUARDED_BY(mu_);
  std::map<int32_t, PartStates> part_states_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Shard::Stub>> stubs_ ABSL_GUARDED_BY(mu_);

  absl::Notification stop_;
  std::thread sampler_;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_CONSOLE_H_
