// A real shard service (CPU store, ShardService) on an in-process gRPC
// server at 127.0.0.1:0, for coordinator tests that need shards without
// processes, and the RegisterShard call that introduces it to a coordinator;
// ServeInProcess serves the coordinator itself the same way.
//
// Thread-safety: thread-compatible; the server serves from gRPC's threads.
#ifndef PSD_TESTS_UNIT_IN_PROCESS_SHARD_H_
#define PSD_TESTS_UNIT_IN_PROCESS_SHARD_H_

#include <memory>
#include <string>
#include <vector>

#include "device/device.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "psd/coordinator.grpc.pb.h"
#include "shard/shard_service.h"
#include "shard/variable_store.h"

namespace psd {

// Serves `coordinator` on an in-process server at 127.0.0.1:0 and points
// `*stub` at it.
inline std::unique_ptr<grpc::Server> ServeInProcess(grpc::Service* coordinator,
                                                    std::unique_ptr<Coordinator::Stub>* stub) {
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(coordinator);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  *stub = Coordinator::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  return server;
}

struct InProcessShard {
  InProcessShard(int id, uint64_t incarnation, int64_t memory_limit_bytes = 0)
      : id(id),
        incarnation(incarnation),
        device(NewCpuDevice()),
        store(device.get(), WithLimit(memory_limit_bytes)),
        service(id, incarnation, &store) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
    address = "127.0.0.1:" + std::to_string(port);
    stub = Shard::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  ~InProcessShard() { server->Shutdown(); }

  // Registers this shard with the coordinator behind `coordinator`.
  grpc::Status Register(Coordinator::Stub* coordinator) const {
    grpc::ClientContext ctx;
    RegisterShardRequest req;
    req.set_protocol_version(COORDINATOR_PROTOCOL_VERSION);
    req.set_shard_id(id);
    req.set_address(address);
    req.set_incarnation(incarnation);
    req.set_device("cpu");
    RegisterShardResponse resp;
    return coordinator->RegisterShard(&ctx, req, &resp);
  }

  std::vector<VariableInfo> Infos() {
    grpc::ClientContext ctx;
    ListVariablesRequest req;
    ListVariablesResponse resp;
    EXPECT_TRUE(stub->ListVariables(&ctx, req, &resp).ok());
    return std::vector<VariableInfo>(resp.variables().begin(), resp.variables().end());
  }
  std::vector<std::string> Names() {
    std::vector<std::string> out;
    for (const auto& v : Infos()) out.push_back(v.name());
    return out;
  }

  static VariableStoreOptions WithLimit(int64_t memory_limit_bytes) {
    VariableStoreOptions o;
    o.memory_limit_bytes = memory_limit_bytes;
    return o;
  }

  const int id;
  const uint64_t incarnation;
  std::unique_ptr<Device> device;
  VariableStore store;
  ShardService service;
  int port = 0;
  std::string address;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<Shard::Stub> stub;
};

}  // namespace psd

#endif  // PSD_TESTS_UNIT_IN_PROCESS_SHARD_H_
