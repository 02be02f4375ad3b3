// ShardClient: the synchronous C++ client of one psd shard (service
// psd::Shard). It turns each variable op into one unary RPC with a deadline
// and returns the shard's status unchanged, so errors carry DESIGN.md's codes
// and messages (NOT_FOUND for an unknown variable, INVALID_ARGUMENT for a bad
// shape, dtype or index, ...).
//
// One exception: a call the shard's gRPC cancels (it does so to calls that
// arrive while the shard drains for shutdown, before they run) is reported as
// UNAVAILABLE, the code of "shard down"; this client never cancels calls
// itself.
//
// Thread-safety: a ShardClient is thread-safe. It owns one gRPC channel and
// any number of threads may call any method concurrently; every op is atomic
// on its variable on the shard.
//
// Usage:
//
//   PSD_ASSIGN_OR_RETURN(auto shard, psd::client::ShardClient::Connect("127.0.0.1:7000"));
//   PSD_RETURN_IF_ERROR(shard->Create("w", psd::DT_FLOAT, psd::TensorShape{784, 10},
//                                     psd::client::init::TruncatedNormal(0, 0.1, /*seed=*/1))
//                           .status());
//   PSD_RETURN_IF_ERROR(shard->AssignAdd("w", delta));
//   PSD_ASSIGN_OR_RETURN(psd::Tensor w, shard->Read("w"));
//
// gRPC stays out of this header (the implementation holds the channel), so
// including it is cheap.
#ifndef PSD_CLIENT_CLIENT_H_
#define PSD_CLIENT_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "psd/initializers.h"
#include "psd/tensor.h"
#include "psd/types.pb.h"

namespace psd {
namespace client {

struct ClientOptions {
  // Deadline of every RPC, the handshake in Connect included.
  absl::Duration timeout = absl::Seconds(30);
  // Largest message sent or received; a tensor bigger than this fails with
  // RESOURCE_EXHAUSTED until chunked streams exist.
  int max_message_bytes = 512 << 20;
};

// What the shard said about itself in the handshake (or in GetInfo).
struct ShardInfo {
  int32_t shard_id = 0;
  // Random per process start; a changed incarnation means the shard lost
  // its memory.
  uint64_t incarnation = 0;
  std::string device;  // "cpu:0"
  int64_t memory_limit_bytes = 0;
  int64_t memory_used_bytes = 0;
  int64_t num_variables = 0;
};

// One variable as the shard holds it.
struct VariableInfo {
  std::string name;
  DataType dtype = DT_INVALID;
  TensorShape shape;  // current shape (validate_shape=false may change it)
  bool initialized = false;
  uint64_t version = 0;  // bumped by every successful mutation
  std::string device;
  int64_t bytes = 0;  // accounted against the shard's memory limit
};

struct CreateOptions {
  // Give the variable its value now. Without it the variable is created
  // uninitialized (TensorFlow's Variable before `v.initializer` runs): reads
  // fail with FAILED_PRECONDITION until Initialize or Assign.
  bool initialize = true;
  // For one part of a partitioned variable: the whole variable's shape and
  // this part's offset in it, so initializers give the part exactly its slice
  // of the whole variable's values. Both empty for an unpartitioned variable.
  std::vector<int64_t> full_shape;
  std::vector<int64_t> offset;
};

struct AssignOptions {
  // Only for Assign: false lets the value replace the variable's shape
  // (tf.assign(validate_shape=False)).
  bool validate_shape = true;
  // Accepted for TensorFlow compatibility; every op is atomic regardless.
  bool use_locking = false;
};

class ShardClient {
 public:
  // Opens a channel to `address` ("host:port") and checks the shard speaks
  // this client's protocol version (FAILED_PRECONDITION otherwise). Waits up
  // to options.timeout for the shard to come up (DEADLINE_EXCEEDED after).
  static absl::StatusOr<std::unique_ptr<ShardClient>> Connect(const std::string& address,
                                                              const ClientOptions& options = {});

  ShardClient(const ShardClient&) = delete;
  ShardClient& operator=(const ShardClient&) = delete;
  ~ShardClient();

  const std::string& address() const;
  // The handshake's answer (memory use and variable count as of Connect).
  const ShardInfo& info() const;
  // Asks the shard again, for current memory use and variable count.
  absl::StatusOr<ShardInfo> GetInfo();

  // Creates `name` holding `initial_value` (its dtype and shape become the
  // variable's). ALREADY_EXISTS if the name is taken.
  absl::StatusOr<VariableInfo> Create(const std::string& name, const Tensor& initial_value,
                                      const CreateOptions& options = {});
  // Creates `name` whose value the shard computes from `initializer` (see
  // initializers.h), now or, with options.initialize = false, at Initialize.
  absl::StatusOr<VariableInfo> Create(const std::string& name, DataType dtype,
                                      const TensorShape& shape, const InitializerSpec& initializer,
                                      const CreateOptions& options = {});
  absl::Status Delete(const std::string& name);
  // Variables whose names start with `prefix`, sorted by name.
  absl::StatusOr<std::vector<VariableInfo>> List(const std::string& prefix = "");
  // One variable's info; NOT_FOUND "variable 'NAME' not found" if absent.
  absl::StatusOr<VariableInfo> Lookup(const std::string& name);

  // Runs the stored initializers of `names` (all checked before any runs).
  // Initialized variables are left alone unless `force`.
  absl::Status Initialize(const std::vector<std::string>& names, bool force = false);
  // The uninitialized variables among `names` (all variables when empty),
  // sorted (TensorFlow's report_uninitialized_variables).
  absl::StatusOr<std::vector<std::string>> ReportUninitialized(
      const std::vector<std::string>& names = {});
  absl::StatusOr<bool> IsInitialized(const std::string& name);

  absl::StatusOr<Tensor> Read(const std::string& name);
  // Rows of `name` along axis 0; `indices` is int32 or int64 of any rank and
  // the result has shape indices.shape + var.shape[1:].
  absl::StatusOr<Tensor> Gather(const std::string& name, const Tensor& indices);

  // assign / assign_add / assign_sub. When `new_value` is not null the shard
  // returns the variable's value after the update into it (it is not sent
  // otherwise, so a large variable is not echoed back by default).
  absl::Status Assign(const std::string& name, const Tensor& value,
                      const AssignOptions& options = {}, Tensor* new_value = nullptr);
  absl::Status AssignAdd(const std::string& name, const Tensor& value,
                         const AssignOptions& options = {}, Tensor* new_value = nullptr);
  absl::Status AssignSub(const std::string& name, const Tensor& value,
                         const AssignOptions& options = {}, Tensor* new_value = nullptr);

  // scatter_update / scatter_add / scatter_sub along axis 0: updates.shape ==
  // indices.shape + var.shape[1:], or updates is a scalar that is broadcast.
  // Duplicate indices accumulate for add/sub; for update the last one wins.
  // Every index is checked before anything is applied.
  absl::Status ScatterUpdate(const std::string& name, const Tensor& indices, const Tensor& updates,
                             Tensor* new_value = nullptr);
  absl::Status ScatterAdd(const std::string& name, const Tensor& indices, const Tensor& updates,
                          Tensor* new_value = nullptr);
  absl::Status ScatterSub(const std::string& name, const Tensor& indices, const Tensor& updates,
                          Tensor* new_value = nullptr);

  // Increments an int32/int64 scalar and returns its value before the
  // increment; at `limit` fails with OUT_OF_RANGE "Reached limit of N" and
  // leaves the value alone.
  absl::StatusOr<int64_t> CountUpTo(const std::string& name, int64_t limit);

 private:
  class Impl;
  explicit ShardClient(std::unique_ptr<Impl> impl);

  const std::unique_ptr<Impl> impl_;
};

}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_CLIENT_H_
