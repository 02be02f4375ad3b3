// The NCCL check of a GPU machine, with only CUDA and NCCL underneath (the
// standalone project; scripts/gpu-check.sh runs it). The shard's NCCL data
// plane needs at least two ranks (the shard and a trainer) and NCCL refuses
// two ranks on one GPU, so a single-GPU machine checks what it can:
//
//  1. a one-rank communicator, built non-blocking as the shard builds its
//     own: an in-place broadcast and sum-reduce of float32 leave the bytes
//     as they were (one rank's sum is its own buffer);
//  2. a two-rank communicator whose second rank never comes: init must stay
//     in progress (not hang the caller) until abandoned with ncclCommAbort,
//     which is how the shard ends a group whose trainer never joins.
//
// Exit status: 0 passed, 1 failed, 2 no CUDA device.
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

namespace {

int failures = 0;

void Check(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "[ ok ]" : "[FAIL]", what);
  if (!ok) ++failures;
}

// Polls `comm` until nothing is in progress or `seconds` pass; returns the
// last state (ncclInProgress on time-out).
ncclResult_t Wait(ncclComm_t comm, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  ncclResult_t state = ncclInProgress;
  while (std::chrono::steady_clock::now() < end) {
    if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) return ncclInternalError;
    if (state != ncclInProgress) return state;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return state;
}

ncclComm_t InitNonBlocking(int size, ncclResult_t* launched) {
  ncclUniqueId id;
  if (ncclGetUniqueId(&id) != ncclSuccess) {
    *launched = ncclInternalError;
    return nullptr;
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  *launched = ncclCommInitRankConfig(&comm, size, id, 0, &config);
  return comm;
}

}  // namespace

int main() {
  int devices = 0;
  const cudaError_t count = cudaGetDeviceCount(&devices);
  if (count != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: cudaGetDeviceCount returned %s (%d devices)\n",
                cudaGetErrorName(count), devices);
    return 2;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  int version = 0;
  ncclGetVersion(&version);
  std::printf("device 0: %s; NCCL %d.%d.%d; %d device(s)\n", prop.name, version / 10000,
              version / 100 % 100, version % 100, devices);
  cudaSetDevice(0);

  // 1. One rank.
  ncclResult_t launched;
  ncclComm_t comm = InitNonBlocking(1, &launched);
  Check(launched == ncclSuccess || launched == ncclInProgress, "one-rank init launched");
  Check(comm != nullptr && Wait(comm, 60) == ncclSuccess, "one-rank communicator built");
  if (comm != nullptr && failures == 0) {
    const size_t n = size_t{1} << 20;
    std::vector<float> host(n);
    for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i % 1000) * 0.25f - 100.0f;
    float* data = nullptr;
    cudaStream_t stream;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    Check(cudaMalloc(&data, n * sizeof(float)) == cudaSuccess, "cudaMalloc 4 MiB");
    cudaMemcpy(data, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    ncclResult_t r = ncclBroadcast(data, data, n * sizeof(float), ncclUint8, 0, comm, stream);
    Check((r == ncclSuccess || r == ncclInProgress) && Wait(comm, 60) == ncclSuccess &&
              cudaStreamSynchronize(stream) == cudaSuccess,
          "broadcast (in place, root 0)");
    r = ncclReduce(data, data, n, ncclFloat32, ncclSum, 0, comm, stream);
    Check((r == ncclSuccess || r == ncclInProgress) && Wait(comm, 60) == ncclSuccess &&
              cudaStreamSynchronize(stream) == cudaSuccess,
          "reduce sum (in place, root 0)");
    std::vector<float> back(n);
    cudaMemcpy(back.data(), data, n * sizeof(float), cudaMemcpyDeviceToHost);
    Check(std::memcmp(back.data(), host.data(), n * sizeof(float)) == 0,
          "bytes unchanged after broadcast and reduce of one rank");
    cudaFree(data);
    cudaStreamDestroy(stream);
  }
  if (comm != nullptr) {
    ncclCommFinalize(comm);
    Wait(comm, 10);
    ncclCommDestroy(comm);
  }

  // 2. A rank that never comes.
  comm = InitNonBlocking(2, &launched);
  Check(launched == ncclSuccess || launched == ncclInProgress, "two-rank init launched");
  if (comm != nullptr) {
    Check(Wait(comm, 2) == ncclInProgress, "init stays in progress without the second rank");
    Check(ncclCommAbort(comm) == ncclSuccess, "ncclCommAbort ends it");
  }
  std::printf("%s: %d failure(s)\n", failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
