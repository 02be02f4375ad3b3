// RecyclingMessageAllocator: a gRPC MessageAllocator for one unary callback
// method that recycles its request/response pairs instead of allocating and
// freeing them per call.
//
// Why: a small op (assign_add of a scalar, count_up_to, a gather of a few
// rows) otherwise takes a request, a response, their sub-messages and their
// byte strings from the heap on every call (a plain message's Clear() frees
// its sub-messages). Here each pair lives on a protobuf arena whose first
// block is part of the pair itself: a call's messages are built in that
// block, and recycling resets the arena, so once the pool is warm a small op
// allocates nothing in psd's code. gRPC itself still takes one arena per call.
// A message too big for the block spills to the heap, and the reset frees
// the spill, so a large value is never retained.
//
// Bounds: at most `max_idle` pairs wait in the pool, each holding
// kBlockBytes.
//
// Thread-safety: AllocateMessages() and the holders' Release() may run on
// any gRPC thread at once; the idle list is guarded by mu_. The allocator
// must outlive every call of the methods it serves (the server is shut down
// and its calls finished before the service that owns it is destroyed).
#ifndef PSD_SERVER_SHARD_MESSAGE_POOL_H_
#define PSD_SERVER_SHARD_MESSAGE_POOL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/arena.h"
#include "grpcpp/support/message_allocator.h"

namespace psd {

template <typename Request, typename Response>
class RecyclingMessageAllocator final : public grpc::MessageAllocator<Request, Response> {
 public:
  // Room for a small op's request and response with their sub-messages and
  // a value of a few hundred bytes.
  static constexpr size_t kBlockBytes = 4096;

  explicit RecyclingMessageAllocator(size_t max_idle = 256) : max_idle_(max_idle) {
    absl::MutexLock lock(&mu_);
    idle_.reserve(max_idle_);  // recycling never grows the list
  }

  ~RecyclingMessageAllocator() override {
    absl::MutexLock lock(&mu_);
    for (Holder* holder : idle_) delete holder;
  }

  RecyclingMessageAllocator(const RecyclingMessageAllocator&) = delete;
  RecyclingMessageAllocator& operator=(const RecyclingMessageAllocator&) = delete;

  grpc::MessageHolder<Request, Response>* AllocateMessages() override {
    {
      absl::MutexLock lock(&mu_);
      if (!idle_.empty()) {
        Holder* holder = idle_.back();
        idle_.pop_back();
        return holder;
      }
    }
    return new Holder(this);
  }

  // Pairs waiting for reuse (for tests and metrics).
  size_t idle() const {
    absl::MutexLock lock(&mu_);
    return idle_.size();
  }

 private:
  class Holder final : public grpc::MessageHolder<Request, Response> {
   public:
    explicit Holder(RecyclingMessageAllocator* owner)
        : owner_(owner), arena_(block_, sizeof(block_)) {
      Build();
    }
    void Release() override { owner_->Recycle(this); }

    // Drops the call's messages (and any heap the arena spilled to) and
    // builds fresh ones in the block.
    void Reset() {
      arena_.Reset();
      Build();
    }

   private:
    void Build() {
      this->set_request(google::protobuf::Arena::CreateMessage<Request>(&arena_));
      this->set_response(google::protobuf::Arena::CreateMessage<Response>(&arena_));
    }

    RecyclingMessageAllocator* const owner_;
    alignas(16) char block_[kBlockBytes];
    google::protobuf::Arena arena_;  // after block_, which it uses
  };

  void Recycle(Holder* holder) {
    holder->Reset();
    {
      absl::MutexLock lock(&mu_);
      if (idle_.size() < max_idle_) {
        idle_.push_back(holder);
        return;
      }
    }
    delete holder;
  }

  const size_t max_idle_;
  mutable absl::Mutex mu_;
  std::vector<Holder*> idle_ ABSL_GUARDED_BY(mu_);  // owned
};

}  // namespace psd

#endif  // PSD_SERVER_SHARD_MESSAGE_POOL_H_
