// NcclComm over NCCL (built with the GPU backend when NCCL is found). Every
// communicator is non-blocking (ncclConfig_t.blocking = 0), so init and
// collectives return at once and this file polls them, which lets a missing
// rank end in DEADLINE_EXCEEDED or ABORTED instead of a hang.
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nccl/nccl_comm.h"

namespace psd {
namespace {

// How often a wait looks at NCCL and the stream again.
constexpr absl::Duration kPoll = absl::Microseconds(50);

absl::Status NcclError(const char* what, ncclResult_t result, ncclComm_t comm) {
  std::string detail = ncclGetErrorString(result);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') absl::StrAppend(&detail, ": ", last);
  }
  const absl::StatusCode code = result == ncclInvalidArgument || result == ncclInvalidUsage
                                    ? absl::StatusCode::kInvalidArgument
                                    : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat("NCCL ", what, " failed: ", detail));
}

absl::Status CudaError(const char* what, cudaError_t error) {
  return absl::InternalError(
      absl::StrCat("CUDA ", what, " failed: ", cudaGetErrorName(error), " (",
                   cudaGetErrorString(error), ")"));
}

bool ToNcclSumType(DataType dtype, ncclDataType_t* type) {
  switch (dtype) {
    case DT_FLOAT: *type = ncclFloat32; return true;
    case DT_DOUBLE: *type = ncclFloat64; return true;
    case DT_HALF: *type = ncclFloat16; return true;
    case DT_BFLOAT16: *type = ncclBfloat16; return true;
    case DT_INT8: *type = ncclInt8; return true;
    case DT_UINT8: *type = ncclUint8; return true;
    case DT_INT32: *type = ncclInt32; return true;
    case DT_INT64: *type = ncclInt64; return true;
    default: return false;
  }
}

// Waits until `comm` has no operation in progress. `what` names the call in
// errors; `abort` (may be null) is polled too.
absl::Status WaitForComm(ncclComm_t comm, const char* what, absl::Time deadline,
                         const std::atomic<bool>* abort) {
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t result = ncclCommGetAsyncError(comm, &state);
    if (result != ncclSuccess) return NcclError(what, result, comm);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclError(what, state, comm);
    if (abort != nullptr && abort->load()) {
      return absl::AbortedError(absl::StrCat("NCCL ", what, " aborted"));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("NCCL ", what, ": not every rank took part before the deadline"));
    }
    absl::SleepFor(kPoll);
  }
}

class NcclCommImpl final : public NcclComm {
 public:
  NcclCommImpl(int device, ncclComm_t comm, cudaStream_t stream)
      : device_(device), comm_(comm), stream_(stream) {}

  ~NcclCommImpl() override {
    cudaSetDevice(device_);
    // A broken or abandoned communicator (an error, a deadline, Abort())
    // may have work queued that will never complete: only abort frees it
    // without waiting for peers that may be gone.
    if (broken_ || abort_.load()) {
      ncclCommAbort(comm_);
    } else if (ncclCommFinalize(comm_) != ncclSuccess ||
               !WaitForComm(comm_, "finalize", absl::Now() + absl::Seconds(5), nullptr).ok()) {
      ncclCommAbort(comm_);
    } else {
      ncclCommDestroy(comm_);
    }
    cudaStreamDestroy(stream_);
  }

  absl::Status Broadcast(void* data, size_t bytes, absl::Time deadline) override {
    // A broadcast moves bytes, whatever the dtype.
    return Run("broadcast", deadline, [&] {
      return ncclBroadcast(data, data, bytes, ncclUint8, /*root=*/0, comm_, stream_);
    });
  }

  absl::Status ReduceSum(void* data, int64_t count, DataType dtype, absl::Time deadline) override {
    ncclDataType_t type;
    if (!ToNcclSumType(dtype, &type)) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL cannot sum elements of dtype ", static_cast<int>(dtype)));
    }
    return Run("reduce", deadline, [&] {
      return ncclReduce(data, data, static_cast<size_t>(count), type, ncclSum, /*root=*/0, comm_,
                        stream_);
    });
  }

  void Abort() override { abort_.store(true); }

 private:
  // Enqueues `launch` on the stream and waits for it to finish there.
  template <typename Launch>
  absl::Status Run(const char* what, absl::Time deadline, Launch&& launch) {
    if (broken_) {
      return absl::FailedPreconditionError(
          absl::StrCat("NCCL ", what, ": the communicator failed earlier and was abandoned"));
    }
    absl::Status status = RunOnce(what, deadline, launch);
    if (!status.ok()) broken_ = true;
    return status;
  }

  template <typename Launch>
  absl::Status RunOnce(const char* what, absl::Time deadline, Launch& launch) {
    cudaError_t error = cudaSetDevice(device_);
    if (error != cudaSuccess) return CudaError("cudaSetDevice", error);
    const ncclResult_t result = launch();
    if (result != ncclSuccess && result != ncclInProgress) return NcclError(what, result, comm_);
    // Enqueued (non-blocking communicators may finish enqueueing later);
    // then the stream runs it once every rank has launched its part.
    absl::Status status = WaitForComm(comm_, what, deadline, &abort_);
    if (!status.ok()) return status;
    while ((error = cudaStreamQuery(stream_)) == cudaErrorNotReady) {
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess ||
          (state != ncclSuccess && state != ncclInProgress)) {
        return NcclError(what, state, comm_);
      }
      if (abort_.load()) return absl::AbortedError(absl::StrCat("NCCL ", what, " aborted"));
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("NCCL ", what, ": not every rank took part before the deadline"));
      }
      absl::SleepFor(kPoll);
    }
    if (error != cudaSuccess) return CudaError(what, error);
    return absl::OkStatus();
  }

  const int device_;
  ncclComm_t const comm_;
  cudaStream_t const stream_;
  bool broken_ = false;  // touched by the driving thread only
  std::atomic<bool> abort_{false};
};

}  // namespace

absl::Status NcclSupport() { return absl::OkStatus(); }

std::string NcclVersion() {
  int version = 0;
  if (ncclGetVersion(&version) != ncclSuccess) return "unknown";
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return absl::StrCat(version / 10000, ".", version / 100 % 100, ".", version % 100);
}

absl::StatusOr<std::string> NewNcclUniqueId() {
  ncclUniqueId id;
  const ncclResult_t result = ncclGetUniqueId(&id);
  if (result != ncclSuccess) return NcclError("ncclGetUniqueId", result, nullptr);
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclComm>> NcclCommInit(int device, const std::string& unique_id,
                                                       int size, int rank, absl::Time deadline,
                                                       const std::atomic<bool>* abort) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("an NCCL unique id has ", sizeof(id.internal),
                                                   " bytes, not ", unique_id.size()));
  }
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL rank ", rank, " is not in [0, ", size, ")"));
  }
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  cudaError_t error = cudaSetDevice(device);
  if (error != cudaSuccess) return CudaError(absl::StrCat("cudaSetDevice(", device, ")").c_str(), error);
  cudaStream_t stream;
  error = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (error != cudaSuccess) return CudaError("cudaStreamCreate", error);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t result = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  absl::Status status;
  if (result != ncclSuccess && result != ncclInProgress) {
    status = NcclError("ncclCommInitRankConfig", result, comm);
  } else {
    status = WaitForComm(comm, "communicator init", deadline, abort);
  }
  if (!status.ok()) {
    if (comm != nullptr) ncclCommAbort(comm);
    cudaStreamDestroy(stream);
    return status;
  }
  return std::unique_ptr<NcclComm>(new NcclCommImpl(device, comm, stream));
}

}  // namespace psd
