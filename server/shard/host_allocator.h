// How a shard process sets up glibc's allocator for its data path.
//
// Streamed and multi-megabyte transfers allocate and free buffers of 1-4 MiB
// many times a second (gRPC's receive buffers, unary values). With glibc's
// defaults each free hands those pages back to the kernel (the heap is
// trimmed past 2x a dynamic mmap threshold), so the next buffer page-faults
// them in again, one fault per 4 KiB: measured on a 2-core machine that
// cost more CPU than moving the bytes. A fixed mmap threshold keeps buffers
// up to 32 MiB in the heap, and a trim threshold of 64 MiB keeps that much
// free heap mapped for reuse. Anything bigger (variables, staging buffers)
// still gets mappings of its own, returned to the kernel when freed.
//
// Thread-safety: call once at process start, before other threads run.
#ifndef PSD_SERVER_SHARD_HOST_ALLOCATOR_H_
#define PSD_SERVER_SHARD_HOST_ALLOCATOR_H_

namespace psd {

void TuneHostAllocatorForDataPath();

}  // namespace psd

#endif  // PSD_SERVER_SHARD_HOST_ALLOCATOR_H_
