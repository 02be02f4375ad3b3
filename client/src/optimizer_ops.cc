#include "psd/optimizer_ops.h"

#include <algorithm>
#include <atomic>
#include <random>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "psd/grpc_status.h"
#include "psd/internal/grpc_credentials.h"
#include "psd/shard.grpc.pb.h"
#include "psd/status.h"
#include "psd/random_id.h"
#include "psd/stream_codec.h"
#include "psd/wire.h"
#include "raw_stream.h"

namespace psd {
namespace client {

namespace {

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

OptimizerSpec ToSpec(const OptimizerConfig& config) {
  OptimizerSpec spec;
  std::visit(Overloaded{
                 [&](const opt::GradientDescent& o) {
                   spec.mutable_gradient_descent()->set_learning_rate(o.learning_rate);
                 },
                 [&](const opt::Momentum& o) {
                   auto* m = spec.mutable_momentum();
                   m->set_learning_rate(o.learning_rate);
                   m->set_momentum(o.momentum);
                   m->set_use_nesterov(o.use_nesterov);
                 },
                 [&](const opt::Adagrad& o) {
                   spec.mutable_adagrad()->set_learning_rate(o.learning_rate);
                 },
                 [&](const opt::Adam& o) {
                   auto* a = spec.mutable_adam();
                   a->set_learning_rate(o.learning_rate);
                   a->set_beta1(o.beta1);
                   a->set_beta2(o.beta2);
                   a->set_epsilon(o.epsilon);
                   if (o.beta1_power.has_value()) {
                     a->set_beta1_power_value(*o.beta1_power);
                   } else {
                     a->set_beta1_power_variable(o.beta1_power_variable);
                   }
                   if (o.beta2_power.has_value()) {
                     a->set_beta2_power_value(*o.beta2_power);
                   } else {
                     a->set_beta2_power_variable(o.beta2_power_variable);
                   }
                 },
                 [&](const opt::RMSProp& o) {
                   auto* r = spec.mutable_rmsprop();
                   r->set_learning_rate(o.learning_rate);
                   r->set_decay(o.decay);
                   r->set_momentum(o.momentum);
                   r->set_epsilon(o.epsilon);
                   r->set_centered(o.centered);
                 },
                 [&](const opt::Ftrl& o) {
                   auto* f = spec.mutable_ftrl();
                   f->set_learning_rate(o.learning_rate);
                   f->set_learning_rate_power(o.learning_rate_power);
                   f->set_l1(o.l1_regularization_strength);
                   f->set_l2(o.l2_regularization_strength);
                   f->set_l2_shrinkage(o.l2_shrinkage_regularization_strength);
                 },
             },
             config);
  return spec;
}

bool IsRetryable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

std::vector<SlotVariable> OptimizerSlots(const OptimizerConfig& optimizer,
                                         const std::string& var) {
  return std::visit(
      Overloaded{
          [&](const opt::GradientDescent&) { return std::vector<SlotVariable>{}; },
          [&](const opt::Momentum&) {
            return std::vector<SlotVariable>{{var + "/Momentum", 0.0}};
          },
          [&](const opt::Adagrad& o) {
            return std::vector<SlotVariable>{{var + "/Adagrad", o.initial_accumulator_value}};
          },
          [&](const opt::Adam&) {
            return std::vector<SlotVariable>{{var + "/Adam", 0.0}, {var + "/Adam_1", 0.0}};
          },
          [&](const opt::RMSProp& o) {
            // TensorFlow creates rms ("RMSProp"), then mg when centered, then
            // momentum, numbering names in creation order; the ops take
            // (mg,) ms, mom.
            if (o.centered) {
              return std::vector<SlotVariable>{
                  {var + "/RMSProp_1", 0.0}, {var + "/RMSProp", 1.0}, {var + "/RMSProp_2", 0.0}};
            }
            return std::vector<SlotVariable>{{var + "/RMSProp", 1.0}, {var + "/RMSProp_1", 0.0}};
          },
          [&](const opt::Ftrl& o) {
            return std::vector<SlotVariable>{{var + "/Ftrl", o.initial_accumulator_value},
                                             {var + "/Ftrl_1", 0.0}};
          },
      },
      optimizer);
}

class ShardApplier::Impl {
 public:
  Impl(std::string address, const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
      : address_(std::move(address)),
        options_(options),
        stub_(Shard::NewStub(channel)),
        raw_stub_(std::move(channel)) {}

  // Runs `call(context)` until it succeeds, fails for good, or the retry
  // budget is spent; the caller's request keeps its id across attempts.
  template <typename Call>
  absl::Status WithRetries(Call&& call) {
    const absl::Time start = absl::Now();
    absl::Duration backoff = options_.initial_backoff;
    absl::Status status;
    for (int attempt = 1;; ++attempt) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
      status = FromGrpcStatus(call(&ctx));
      if (status.code() == absl::StatusCode::kCancelled) {
        status = absl::UnavailableError(absl::StrCat("shard ", address_,
                                                     " cancelled the call (shutting down?): ",
                                                     status.message()));
      }
      if (!IsRetryable(status) || attempt >= options_.max_attempts) return status;
      const absl::Duration delay = backoff * (0.5 + 0.5 * Random01());
      if (absl::Now() + delay - start > options_.retry_budget) return status;
      absl::SleepFor(delay);
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
  }

  void SetRequestId(RequestId* id) {
    id->set_client_id(client_id_);
    id->set_seq(next_seq_.fetch_add(1, std::memory_order_relaxed));
  }

  absl::Status FillDense(const std::string& var, const OptimizerSpec& spec,
                         const OptimizerConfig& config, const Tensor& gradient,
                         const std::vector<std::string>& slots, ApplyDenseRequest* req) {
    req->set_name(var);
    FillSlots(var, config, slots, req->mutable_slots());
    *req->mutable_optimizer() = spec;
    TensorToProto(gradient, req->mutable_gradient());
    SetRequestId(req->mutable_request_id());
    req->set_shard_incarnation(incarnation_);
    return absl::OkStatus();
  }

  void FillSparse(const std::string& var, const OptimizerSpec& spec,
                  const OptimizerConfig& config, const SparseGradient& gradient,
                  const std::vector<std::string>& slots, ApplySparseRequest* req) {
    req->set_name(var);
    FillSlots(var, config, slots, req->mutable_slots());
    *req->mutable_optimizer() = spec;
    TensorToProto(gradient.indices, req->mutable_indices());
    TensorToProto(gradient.values, req->mutable_values());
    SetRequestId(req->mutable_request_id());
    req->set_shard_incarnation(incarnation_);
  }

  // Whether a dense gradient travels as a stream (AssignStreamHeader.apply):
  // in chunks, without copies, not bounded by the message limit.
  bool Streams(const Tensor& gradient) const {
    return gradient.dtype() != DT_STRING && options_.stream_threshold_bytes > 0 &&
           static_cast<int64_t>(gradient.bytes().size()) > options_.stream_threshold_bytes;
  }

  // A dense apply whose gradient is streamed; the same request id on every
  // attempt, as for the unary ApplyDense.
  absl::StatusOr<uint64_t> ApplyDenseStreamed(const std::string& var, const OptimizerSpec& spec,
                                              const OptimizerConfig& config,
                                              const Tensor& gradient,
                                              const std::vector<std::string>& slots) {
    AssignStreamHeader header;
    header.set_name(var);
    header.set_op(UPDATE_ASSIGN);
    header.set_dtype(gradient.dtype());
    ShapeToProto(gradient.shape(), header.mutable_shape());
    header.set_total_bytes(static_cast<int64_t>(gradient.bytes().size()));
    FillSlots(var, config, slots, header.mutable_apply()->mutable_slots());
    *header.mutable_apply()->mutable_optimizer() = spec;
    SetRequestId(header.mutable_request_id());
    header.set_shard_incarnation(incarnation_);
    grpc::ByteBuffer reply;
    // The stream makes its own context with the stream timeout; the one
    // WithRetries offers (unary timeout) goes unused.
    PSD_RETURN_IF_ERROR(WithRetries([&](grpc::ClientContext*) {
      reply.Clear();
      return internal::SendAssignStream(&raw_stub_, options_.stream_timeout, header,
                                        gradient.bytes(), options_.chunk_bytes, &reply);
    }));
    AssignResponse response;
    if (!DecodeMessage(reply, &response)) {
      return absl::InternalError(
          absl::StrCat("shard ", address_, " sent a malformed reply to a streamed apply"));
    }
    return response.version();
  }

  static void FillSlots(const std::string& var, const OptimizerConfig& config,
                        const std::vector<std::string>& slots,
                        google::protobuf::RepeatedPtrField<std::string>* out) {
    if (!slots.empty()) {
      for (const auto& s : slots) *out->Add() = s;
      return;
    }
    for (auto& s : OptimizerSlots(config, var)) *out->Add() = std::move(s.name);
  }

  double Random01() {
    absl::MutexLock lock(&rng_mu_);
    return std::uniform_real_distribution<double>(0, 1)(rng_);
  }

  const std::string address_;
  const ClientOptions options_;
  const std::unique_ptr<Shard::Stub> stub_;
  grpc::GenericStub raw_stub_;  // the raw AssignStream; thread-safe
  const uint64_t client_id_ = RandomNonzeroId();
  std::atomic<uint64_t> next_seq_{1};
  uint64_t incarnation_ = 0;  // set by Connect, then constant
  absl::Mutex rng_mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(rng_mu_){std::random_device{}()};
};

ShardApplier::ShardApplier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShardApplier::~ShardApplier() = default;

const std::string& ShardApplier::address() const { return impl_->address_; }
uint64_t ShardApplier::incarnation() const { return impl_->incarnation_; }

absl::StatusOr<std::unique_ptr<ShardApplier>> ShardApplier::Connect(const std::string& address,
                                                                    const ClientOptions& options) {
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("ClientOptions: max_attempts must be >= 1");
  }
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetInt("grpc.initial_reconnect_backoff_ms", 100);
  args.SetInt("grpc.min_reconnect_backoff_ms", 100);
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  auto credentials = psd::internal::MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  auto impl = std::make_unique<Impl>(address, options,
                                     grpc::CreateCustomChannel(address, *credentials, args));
  GetShardInfoRequest request;
  request.set_protocol_version(SHARD_PROTOCOL_VERSION);
  GetShardInfoResponse response;
  absl::Status status = impl->WithRetries([&](grpc::ClientContext* ctx) {
    ctx->set_wait_for_ready(true);
    return impl->stub_->GetShardInfo(ctx, request, &response);
  });
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("connecting to shard ", address, ": ", status.message()));
  }
  if (response.protocol_version() != SHARD_PROTOCOL_VERSION) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", address, " speaks protocol version ", response.protocol_version(),
                     ", this client speaks ", SHARD_PROTOCOL_VERSION));
  }
  impl->incarnation_ = response.incarnation();
  return std::unique_ptr<ShardApplier>(new ShardApplier(std::move(impl)));
}

absl::StatusOr<uint64_t> ShardApplier::ApplyDense(const std::string& var,
                                                  const OptimizerConfig& optimizer,
                                                  const Tensor& gradient,
                                                  const std::vector<std::string>& slots) {
  if (impl_->Streams(gradient)) {
    return impl_->ApplyDenseStreamed(var, ToSpec(optimizer), optimizer, gradient, slots);
  }
  ApplyDenseRequest req;
  PSD_RETURN_IF_ERROR(impl_->FillDense(var, ToSpec(optimizer), optimizer, gradient, slots, &req));
  ApplyDenseResponse resp;
  PSD_RETURN_IF_ERROR(impl_->WithRetries(
      [&](grpc::ClientContext* ctx) { return impl_->stub_->ApplyDense(ctx, req, &resp); }));
  return resp.version();
}

absl::StatusOr<uint64_t> ShardApplier::ApplySparse(const std::string& var,
                                                   const OptimizerConfig& optimizer,
                                                   const SparseGradient& gradient,
                                                   const std::vector<std::string>& slots) {
  ApplySparseRequest req;
  impl_->FillSparse(var, ToSpec(optimizer), optimizer, gradient, slots, &req);
  ApplySparseResponse resp;
  PSD_RETURN_IF_ERROR(impl_->WithRetries(
      [&](grpc::ClientContext* ctx) { return impl_->stub_->ApplySparse(ctx, req, &resp); }));
  return resp.version();
}

absl::Status ShardApplier::ApplyGradients(const OptimizerConfig& optimizer,
                                          const std::vector<GradientAndVariable>& grads_and_vars,
                                          std::vector<absl::Status>* statuses) {
  const OptimizerSpec spec = ToSpec(optimizer);
  std::vector<absl::Status> results(grads_and_vars.size());
  // Ops in one Batch message, by index; sent when a streamed gradient comes
  // (so every op still runs in the caller's order) and at the end.
  BatchRequest batch;
  std::vector<size_t> batched;
  auto send_batch = [&]() -> absl::Status {
    if (batched.empty()) return absl::OkStatus();
    // One message out, one back. A broken stream is resent whole: the ops
    // keep their request ids, so those that already ran are not run again.
    BatchResponse response;
    PSD_RETURN_IF_ERROR(impl_->WithRetries([&](grpc::ClientContext* ctx) {
      response.Clear();
      auto stream = impl_->stub_->Batch(ctx);
      if (stream->Write(batch)) {
        stream->WritesDone();
        stream->Read(&response);
      }
      return stream->Finish();
    }));
    if (response.results_size() != batch.ops_size()) {
      return absl::InternalError(absl::StrCat("shard ", impl_->address_, " answered ",
                                              response.results_size(), " results for ",
                                              batch.ops_size(), " apply ops"));
    }
    for (int k = 0; k < response.results_size(); ++k) {
      const BatchOpResult& r = response.results(k);
      results[batched[k]] = absl::Status(static_cast<absl::StatusCode>(r.code()), r.message());
    }
    batch.Clear();
    batched.clear();
    return absl::OkStatus();
  };
  if (statuses != nullptr) statuses->clear();
  for (size_t i = 0; i < grads_and_vars.size(); ++i) {
    const auto& gv = grads_and_vars[i];
    if (const auto* dense = std::get_if<Tensor>(&gv.gradient)) {
      if (impl_->Streams(*dense)) {
        PSD_RETURN_IF_ERROR(send_batch());
        results[i] =
            impl_->ApplyDenseStreamed(gv.variable, spec, optimizer, *dense, gv.slots).status();
        continue;
      }
      PSD_RETURN_IF_ERROR(impl_->FillDense(gv.variable, spec, optimizer, *dense, gv.slots,
                                           batch.add_ops()->mutable_apply_dense()));
    } else {
      impl_->FillSparse(gv.variable, spec, optimizer, std::get<SparseGradient>(gv.gradient),
                        gv.slots, batch.add_ops()->mutable_apply_sparse());
    }
    batched.push_back(i);
  }
  PSD_RETURN_IF_ERROR(send_batch());
  absl::Status first;
  for (size_t i = 0; i < results.size(); ++i) {
    const absl::Status& s = results[i];
    if (first.ok() && !s.ok()) {
      first = absl::Status(s.code(), absl::StrCat("apply to '", grads_and_vars[i].variable,
                                                  "': ", s.message()));
    }
  }
  if (statuses != nullptr) *statuses = std::move(results);
  return first;
}

}  // namespace client
}  // namespace psd
