// VariableStore: the variables one shard owns, keyed by full name, and every
// operation on them. It is the one place that validates a data-plane request:
// the gRPC service only converts statuses at the edge.
//
// Guarantees: every operation is atomic on its variable, and one that fails
// changes nothing (all validation, allocation and memory accounting happens
// before the variable is touched). An acknowledged update is in memory and
// visible to every later read.
//
// Thread-safety: thread-safe. The name map is guarded by `mu_`; each
// variable's state by its own reader/writer lock (reads and gathers share it,
// mutations exclude). No lock is held while another variable's lock is taken,
// except in InitializeVariables, which takes variable locks in name order.
#ifndef PSD_SERVER_SHARD_VARIABLE_STORE_H_
#define PSD_SERVER_SHARD_VARIABLE_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "device/device.h"
#include "psd/shard.pb.h"
#include "shard/memory_accountant.h"

namespace psd {

class Variable;

class VariableStore {
 public:
  // `device` must outlive the store. `memory_limit_bytes` <= 0: unlimited.
  VariableStore(Device* device, int64_t memory_limit_bytes);
  ~VariableStore();
  VariableStore(const VariableStore&) = delete;
  VariableStore& operator=(const VariableStore&) = delete;

  absl::Status Create(const CreateVariableRequest& request, VariableInfo* info);
  absl::Status Delete(const std::string& name);
  std::vector<VariableInfo> List(const std::string& prefix) const;
  absl::Status Initialize(const InitializeVariablesRequest& request);
  absl::Status ReportUninitialized(const ReportUninitializedRequest& request,
                                   ReportUninitializedResponse* response) const;

  absl::Status Read(const ReadRequest& request, ReadResponse* response) const;
  absl::Status Gather(const GatherRequest& request, GatherResponse* response) const;
  absl::Status Assign(const AssignRequest& request, AssignResponse* response);
  absl::Status Scatter(const ScatterRequest& request, ScatterResponse* response);
  absl::Status CountUpTo(const CountUpToRequest& request, CountUpToResponse* response);

  const MemoryAccountant& memory() const { return memory_; }
  size_t num_variables() const;
  const Device& device() const { return *device_; }

 private:
  absl::StatusOr<std::shared_ptr<Variable>> Find(const std::string& name) const;

  Device* const device_;
  MemoryAccountant memory_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Variable>> variables_ ABSL_GUARDED_BY(mu_);
};

// INVALID_ARGUMENT unless `name` is a valid full variable name: TensorFlow's
// op-name rule "[A-Za-z0-9.][A-Za-z0-9_.\-/]*", at most 1024 bytes.
absl::Status ValidateVariableName(const std::string& name);

}  // namespace psd

#endif  // PSD_SERVER_SHARD_VARIABLE_STORE_H_
