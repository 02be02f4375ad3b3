// The client's side of the raw streams (psd/stream_codec.h): a blocking
// call of a raw streaming method through a generic stub, slices that lend a
// caller's memory to gRPC without copying it, and one attempt of a streamed
// assign built on them. Shared by ShardClient (assigns) and ShardApplier
// (streamed dense optimizer applies); internal to the client library.
#ifndef PSD_CLIENT_SRC_RAW_STREAM_H_
#define PSD_CLIENT_SRC_RAW_STREAM_H_

#include <algorithm>
#include <cstddef>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/slice.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "psd/shard.pb.h"
#include "psd/stream_codec.h"

namespace psd {
namespace client {
namespace internal {

// One call of a raw streaming method (psd/stream_codec.h) through a
// generic stub, driven to completion op by op on a queue of its own: the
// blocking shape of the generated ClientReader/ClientWriter, with
// grpc::ByteBuffer messages.
//
// Thread-compatible. Every call started must be finished (Finish) before
// the object and its context are destroyed.
class RawStreamCall {
 public:
  RawStreamCall(grpc::GenericStub* stub, grpc::ClientContext* context, const char* method)
      : call_(stub->PrepareCall(context, method, &cq_)) {
    call_->StartCall(this);
    started_ = Wait();
  }
  RawStreamCall(const RawStreamCall&) = delete;
  RawStreamCall& operator=(const RawStreamCall&) = delete;
  ~RawStreamCall() {
    call_.reset();
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  // False once the stream is broken; Finish then says why.
  bool Write(const grpc::ByteBuffer& message) {
    if (!started_) return false;
    call_->Write(message, this);
    return Wait();
  }
  bool WritesDone() {
    if (!started_) return false;
    call_->WritesDone(this);
    return Wait();
  }
  // False at the end of the server's stream.
  bool Read(grpc::ByteBuffer* message) {
    if (!started_) return false;
    call_->Read(message, this);
    return Wait();
  }
  grpc::Status Finish() {
    grpc::Status status;
    call_->Finish(&status, this);
    Wait();
    return status;
  }

 private:
  bool Wait() {
    void* tag;
    bool ok = false;
    cq_.Next(&tag, &ok);
    return ok;
  }

  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool started_ = false;
};

// Slices that reference memory their maker owns (a caller's tensor), so a
// streamed assign sends it without copying. gRPC holds a slice until its
// bytes are written, at most until the call is destroyed; WaitReleased()
// returns once it has let go of every slice, after which the memory may
// change or go.
//
// Thread-safety: thread-safe (gRPC releases slices on its own threads).
class BorrowedSlices {
 public:
  BorrowedSlices() = default;
  BorrowedSlices(const BorrowedSlices&) = delete;
  BorrowedSlices& operator=(const BorrowedSlices&) = delete;
  ~BorrowedSlices() { WaitReleased(); }

  grpc::Slice Borrow(const char* data, size_t bytes) {
    {
      absl::MutexLock lock(&mu_);
      ++outstanding_;
    }
    grpc_slice slice = grpc_slice_new_with_user_data(const_cast<char*>(data), bytes,
                                                     &BorrowedSlices::Release, this);
    return grpc::Slice(slice, grpc::Slice::STEAL_REF);
  }

  void WaitReleased() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &outstanding_));
  }

 private:
  static void Release(void* self) {
    auto* slices = static_cast<BorrowedSlices*>(self);
    absl::MutexLock lock(&slices->mu_);
    --slices->outstanding_;
  }

  absl::Mutex mu_;
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;
};

// One attempt of Shard.AssignStream within `timeout`: the header, then
// `content` in chunks of `chunk_bytes`, then the half-close that lets the
// shard apply it; the shard's reply (an encoded AssignResponse) goes to
// `reply`. The chunks reference `content` (no copy); gRPC has let go of
// them when this returns (the call, whose context holds them at most, is
// gone by then), so the caller may change or free it.
inline grpc::Status SendAssignStream(grpc::GenericStub* stub, absl::Duration timeout,
                                     const AssignStreamHeader& header, absl::string_view content,
                                     int chunk_bytes, grpc::ByteBuffer* reply) {
  BorrowedSlices borrowed;
  grpc::Status status;
  {
    grpc::ClientContext context;
    if (timeout != absl::InfiniteDuration()) {
      context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
    RawStreamCall call(stub, &context, kAssignStreamMethod);
    AssignStreamRequest first;
    *first.mutable_header() = header;
    bool ok = call.Write(EncodeMessage(first));
    const AssignStreamRequest no_fields;
    const size_t chunk = static_cast<size_t>(std::max(chunk_bytes, 1));
    for (size_t offset = 0; ok && offset < content.size(); offset += chunk) {
      const size_t n = std::min(chunk, content.size() - offset);
      ok = call.Write(EncodeWithContent(no_fields, kAssignStreamContentField,
                                        borrowed.Borrow(content.data() + offset, n)));
    }
    // A failed write means the stream is broken; Finish says why.
    if (ok && call.WritesDone()) call.Read(reply);
    status = call.Finish();
  }
  borrowed.WaitReleased();
  return status;
}

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_RAW_STREAM_H_
