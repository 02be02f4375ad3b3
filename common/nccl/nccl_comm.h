// NcclComm: one rank's NCCL communicator, as the shard's NCCL data plane and
// the client's NcclGroup use it: broadcast and sum-reduce with rank 0 as the
// root, each call waiting for its collective to finish.
//
// This header is free of CUDA and NCCL, so code that only routes requests
// (the shard's plane, the client) compiles in every build. nccl_comm.cc
// implements it over NCCL where the GPU backend is built and NCCL is found;
// nccl_comm_unavailable.cc answers UNIMPLEMENTED everywhere else.
//
// Waiting: NCCL collectives block until every rank has joined them, so a
// rank that never comes would hang the others. Init and every collective
// poll instead (communicators are non-blocking), and give up when their
// deadline passes or when Abort() is called from another thread; the
// communicator is then unusable (every later call fails).
//
// Thread-safety: one thread drives a communicator; Abort() may be called
// from any thread at any time.
#ifndef PSD_COMMON_NCCL_NCCL_COMM_H_
#define PSD_COMMON_NCCL_NCCL_COMM_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "psd/types.pb.h"

namespace psd {

// OK if this build can run NCCL collectives; otherwise UNIMPLEMENTED saying
// why (no GPU backend, or NCCL was not found when it was built).
absl::Status NcclSupport();

// NCCL's version as "2.28.9" (what this build runs), or "none".
std::string NcclVersion();

// A fresh ncclUniqueId (its bytes), made by the group's creator (rank 0).
absl::StatusOr<std::string> NewNcclUniqueId();

// Whether a reduce can sum elements of `dtype`: NCCL has no 16-bit integers
// and no booleans, so those cannot be reduced (they can be broadcast: a
// broadcast moves bytes). The same answer in every build, so requests fail
// alike with or without NCCL.
inline bool NcclCanSum(DataType dtype) {
  switch (dtype) {
    case DT_FLOAT: case DT_DOUBLE: case DT_HALF: case DT_BFLOAT16:
    case DT_INT8: case DT_UINT8: case DT_INT32: case DT_INT64:
      return true;
    default:
      return false;
  }
}

class NcclComm {
 public:
  virtual ~NcclComm() = default;  // destroys the communicator (aborting a broken one)

  // Sends `bytes` bytes at `data` (device memory of this rank's GPU) from
  // rank 0 to every rank: rank 0's buffer is read, the others' written.
  virtual absl::Status Broadcast(void* data, size_t bytes, absl::Time deadline) = 0;

  // Sums the `count` elements of `dtype` (NcclCanSum) at `data` of every
  // rank into rank 0's buffer, in place; other ranks' buffers are only read.
  virtual absl::Status ReduceSum(void* data, int64_t count, DataType dtype,
                                 absl::Time deadline) = 0;

  // Makes a running or later call fail with ABORTED.
  virtual void Abort() = 0;
};

// Joins the communicator of `size` ranks identified by `unique_id` as rank
// `rank`, on CUDA device `device`. Returns once all ranks have joined:
// DEADLINE_EXCEEDED if they have not by `deadline`, ABORTED if `*abort`
// (may be null) turns true first.
absl::StatusOr<std::unique_ptr<NcclComm>> NcclCommInit(int device, const std::string& unique_id,
                                                       int size, int rank, absl::Time deadline,
                                                       const std::atomic<bool>* abort);

// Where communicators come from: NCCL (DefaultNcclCommFactory, the free
// functions above), or a stand-in that plays the other ranks (tests of the
// shard's plane on machines without GPUs).
class NcclCommFactory {
 public:
  virtual ~NcclCommFactory() = default;
  virtual absl::Status Support() const = 0;
  virtual absl::StatusOr<std::string> NewUniqueId() = 0;
  virtual absl::StatusOr<std::unique_ptr<NcclComm>> Init(int device, const std::string& unique_id,
                                                         int size, int rank, absl::Time deadline,
                                                         const std::atomic<bool>* abort) = 0;
};

// NCCL's: NcclSupport, NewNcclUniqueId, NcclCommInit. Never null.
NcclCommFactory* DefaultNcclCommFactory();

}  // namespace psd

#endif  // PSD_COMMON_NCCL_NCCL_COMM_H_
