#include "runtime/shard_server.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/signal_set.hpp"
#include "device/device.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "psd/status.h"
#include "runtime/coordinator_link.h"
#include "shard/shard_service.h"
#include "shard/variable_store.h"
#include "spdlog/spdlog.h"

namespace psd {

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat("cannot write port file ", tmp, ": ", std::strerror(errno)));
  }
  std::fprintf(f, "%d\n", port);
  if (std::fclose(f) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot write port file ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

namespace {

uint64_t NewIncarnation() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace

absl::Status RunShardServer(const ShardServerOptions& options) {
  const ShardConfig& config = options.shard;
  PSD_ASSIGN_OR_RETURN(auto device, NewDevice(config.device));
  const uint64_t incarnation = NewIncarnation();
  VariableStoreOptions store_options;
  store_options.memory_limit_bytes = config.memory_limit;
  store_options.incarnation = incarnation;
  // Leave room for the response's other fields under the message limit.
  store_options.max_unary_value_bytes = options.max_message_bytes - (64 << 10);
  store_options.default_chunk_bytes = options.stream_chunk_bytes;
  VariableStore store(device.get(), store_options);
  ShardService service(config.id, incarnation, &store);

  // Signals are caught from here on, so a stop request that arrives while
  // the server starts still drains it instead of killing the process.
  boost::asio::io_context io;
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &port);
  // gRPC enables SO_REUSEPORT by default: a stale server on the same port
  // would then silently take part of the traffic. Fail the bind instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("shard ", config.id, ": cannot listen on ",
                                               config.listen, " (address in use or invalid?)"));
  }
  if (!options.port_file.empty()) {
    absl::Status s = WritePortFile(options.port_file, port);
    if (!s.ok()) {
      server->Shutdown();
      return s;
    }
  }
  spdlog::info("shard {} listening on {} (port {}), device {}, memory limit {}, incarnation {:016x}",
               config.id, config.listen, port, device->name(),
               config.memory_limit > 0 ? std::to_string(config.memory_limit) + " bytes" : "none",
               incarnation);

  // The address others dial: the advertised one, with the real port when
  // the shard bound port 0.
  ShardConfig advertised = config;
  if (advertised.advertise.empty() || advertised.advertise == config.listen) {
    advertised.advertise = config.listen.substr(0, config.listen.rfind(':')) + ":" +
                           std::to_string(port);
  }
  std::unique_ptr<CoordinatorLink> link;
  if (!options.coordinator.empty()) {
    link = std::make_unique<CoordinatorLink>(&io, options.coordinator, advertised, &store);
    link->Start();
  }

  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    if (link != nullptr) link->Stop();
    spdlog::info("shard {}: signal {} received, draining (up to {} s)", config.id, signo,
                 options.drain_timeout_seconds);
    server->GetHealthCheckService()->SetServingStatus(false);
    // New calls are refused with UNAVAILABLE from here on; the ones already
    // running get the drain timeout to finish. Shutdown then closes the
    // listener and connections, cancelling whatever still runs.
    service.StartDrain();
    const absl::Time deadline =
        absl::Now() + absl::Seconds(options.drain_timeout_seconds);
    if (!service.WaitForIdle(deadline)) {
      spdlog::warn("shard {}: calls still running after {} s; cancelling them", config.id,
                   options.drain_timeout_seconds);
    }
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  });
  std::thread io_thread([&io] { io.run(); });
  server->Wait();
  io.stop();
  io_thread.join();
  spdlog::info("shard {}: drained, exiting", config.id);
  return absl::OkStatus();
}

}  // namespace psd
