// psd_cluster_demo: a toy trainer against a local psd cluster (coordinator +
// shards). Run it as the chief and as workers at the same time: every
// process opens its own session and declares the same model — an embedding
// partitioned across the shards, a dense layer built by a template, a global
// step — so they share one set of variables (the sessions attach). The chief
// initializes; workers wait for it. Each step gathers embedding rows across
// parts and trains with server-side optimizers: Adagrad on the embedding
// (a sparse IndexedSlices gradient, split by part; its accumulator slot
// `model/embedding/Adagrad` lives beside each part), gradient descent on the
// dense layer; it also bumps a per-row counter with scatter_add and the
// global step with count_up_to. The check role verifies the step count, the
// row counts, and that exactly the counted rows moved their Adagrad
// accumulators. The model also has an embedding table keyed by user id (an
// open id space: rows are made as ids are admitted, after their second use)
// trained with Adagrad whose accumulator is a slot table beside it; the
// check role counts its rows.
//
//   psd_cluster_demo --coordinator 127.0.0.1:7070 --role chief --steps 50 &
//   psd_cluster_demo --coordinator 127.0.0.1:7070 --role worker --task 1 --steps 50
//   psd_cluster_demo --coordinator 127.0.0.1:7070 --role check --expect-steps 100
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "psd/optimizer.h"
#include "psd/session.h"
#include "psd/status.h"

namespace {

using namespace psd::client;  // NOLINT: example code
using psd::Tensor;
using psd::TensorShape;

constexpr int64_t kVocab = 1000;
constexpr int64_t kDim = 16;

struct Model {
  Variable embedding;
  Variable counts;
  Variable dense_w;
  Variable global_step;
  EmbeddingVariable users;  // keyed by user id
  std::vector<Variable> all() const {
    return {embedding, counts, dense_w, global_step, users.variable()};
  }
};

// User ids: large, sparse, some much more frequent than others.
int64_t UserId(std::mt19937_64& rng) {
  std::geometric_distribution<int64_t> rank(0.05);
  return 1'000'000'007LL * (1 + rank(rng));
}

absl::StatusOr<Model> BuildModel(Session* session) {
  Model m;
  ScopeOptions scope_options;
  scope_options.partitioner = partitioners::FixedSize(2);
  PSD_ASSIGN_OR_RETURN(VariableScope model, VariableScope::Enter(session, "model", scope_options));
  GetVariableOptions emb;
  emb.shape = TensorShape{kVocab, kDim};
  emb.initializer = init::RandomUniform(-0.05, 0.05, /*seed=*/42);
  PSD_ASSIGN_OR_RETURN(m.embedding, session->GetVariable("embedding", emb));
  GetVariableOptions counts;
  counts.shape = TensorShape{kVocab};
  counts.dtype = psd::DT_INT64;
  counts.initializer = init::Zeros();
  counts.trainable = false;
  PSD_ASSIGN_OR_RETURN(m.counts, session->GetVariable("row_counts", counts));
  // The scope's fixed_size partitioner gives the table two parts (keys by
  // hash); an id becomes a row at its second use.
  EmbeddingVariableOptions users;
  users.embedding_dim = 8;
  users.initializer = init::RandomNormal(0, 0.01, /*seed=*/11);
  users.ev_option.mutable_counter_filter()->set_filter_freq(2);
  PSD_ASSIGN_OR_RETURN(m.users, session->GetEmbeddingVariable("user_embedding", users));

  // A dense layer as a template: variables made on the first call only.
  auto dense = MakeTemplate(session, "dense", [&]() -> absl::StatusOr<Variable> {
    GetVariableOptions w;
    w.shape = TensorShape{kDim, 4};
    w.initializer = init::TruncatedNormal(0, 0.1, /*seed=*/7);
    return session->GetVariable("w", w);
  });
  PSD_ASSIGN_OR_RETURN(m.dense_w, dense());
  PSD_ASSIGN_OR_RETURN(Variable again, dense());  // reused, not created
  if (again.name() != m.dense_w.name()) return absl::InternalError("template did not reuse");
  PSD_RETURN_IF_ERROR(model.Exit());

  GetVariableOptions step;
  step.shape = TensorShape{};
  step.dtype = psd::DT_INT64;
  step.initializer = init::Zeros();
  step.trainable = false;
  PSD_ASSIGN_OR_RETURN(m.global_step, session->GetVariable("global_step", step));
  return m;
}

std::string Describe(const Variable& v) {
  std::vector<std::string> parts;
  for (const PartInfo& p : v.parts()) {
    parts.push_back(absl::StrCat(p.name, " rows ", p.offset.empty() ? 0 : p.offset[0], "+",
                                 p.shape.rank() > 0 ? p.shape.dim(0) : 1, " on shard ", p.shard_id));
  }
  return absl::StrCat(v.tensor_name(), " ", psd::DataTypeName(v.dtype()), v.shape().ToString(),
                      v.partitioned() ? ": " : "", v.partitioned() ? absl::StrJoin(parts, ", ") : "");
}

absl::Status Train(Session* session, const Model& m, int task, int steps) {
  opt::Adagrad adagrad_config;
  adagrad_config.learning_rate = 0.1;
  Optimizer adagrad(*session, adagrad_config);
  opt::GradientDescent sgd_config;
  sgd_config.learning_rate = 0.01;
  Optimizer sgd(*session, sgd_config);
  std::mt19937_64 rng(1234 + task);
  std::uniform_int_distribution<int64_t> row(0, kVocab - 1);
  for (int s = 0; s < steps; ++s) {
    // A batch whose ids land in both parts (and repeat).
    std::vector<int64_t> ids;
    for (int i = 0; i < 8; ++i) ids.push_back(row(rng));
    ids.push_back(ids[0]);
    const int64_t n = static_cast<int64_t>(ids.size());
    PSD_ASSIGN_OR_RETURN(Tensor id_tensor, Tensor::FromVector<int64_t>(TensorShape{n}, ids));
    PSD_ASSIGN_OR_RETURN(Tensor rows, m.embedding.Gather(id_tensor));
    // "Gradient": a tenth of the rows themselves (weight decay).
    Tensor grad(psd::DT_FLOAT, rows.shape());
    for (int64_t i = 0; i < rows.num_elements(); ++i) grad.data<float>()[i] = 0.1f * rows.data<float>()[i];
    PSD_RETURN_IF_ERROR(adagrad.ApplyGradients(
        {{IndexedSlices{std::move(grad), id_tensor, m.embedding.shape()}, m.embedding}}));
    // The dense layer's "gradient": its own value (weight decay).
    PSD_ASSIGN_OR_RETURN(Tensor w, m.dense_w.Read());
    PSD_RETURN_IF_ERROR(sgd.ApplyGradients({{std::move(w), m.dense_w}}));
    PSD_RETURN_IF_ERROR(m.counts.ScatterAdd(id_tensor, Tensor::Scalar<int64_t>(1)));
    // The user table: look up, then an Adagrad step on the rows seen.
    std::vector<int64_t> users;
    for (int i = 0; i < 4; ++i) users.push_back(UserId(rng));
    PSD_ASSIGN_OR_RETURN(Tensor user_keys, Tensor::FromVector<int64_t>(TensorShape{4}, users));
    PSD_ASSIGN_OR_RETURN(Tensor user_rows, m.users.Gather(user_keys, {.global_step = s}));
    Tensor user_grad(psd::DT_FLOAT, user_rows.shape());
    for (int64_t i = 0; i < user_rows.num_elements(); ++i) {
      user_grad.data<float>()[i] = 0.1f * user_rows.data<float>()[i];
    }
    PSD_RETURN_IF_ERROR(adagrad.ApplyGradients(
        {{IndexedSlices{std::move(user_grad), user_keys, std::nullopt}, m.users.variable()}},
        nullptr, {.global_step = s}));
    PSD_RETURN_IF_ERROR(m.global_step.CountUpTo(int64_t{1} << 40).status());
  }
  return absl::OkStatus();
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "psd_cluster_demo: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"psd cluster demo trainer"};
  std::string coordinator = "127.0.0.1:7070";
  std::string role = "chief";
  int task = 0;
  int steps = 50;
  int64_t expect_steps = -1;
  app.add_option("--coordinator", coordinator, "Coordinator HOST:PORT");
  app.add_option("--role", role, "chief, worker or check")
      ->check(CLI::IsMember({"chief", "worker", "check"}));
  app.add_option("--task", task, "Task index (seeds the batches)");
  app.add_option("--steps", steps, "Training steps of this process");
  app.add_option("--expect-steps", expect_steps, "check: the total steps of all trainers");
  CLI11_PARSE(app, argc, argv);

  SessionOptions options;
  options.client = absl::StrCat("psd_cluster_demo ", role, " ", task);
  auto session = Session::Open(coordinator, options);
  if (!session.ok()) return Fail(session.status());
  Session* s = session->get();
  std::printf("[%s %d] session %llu on coordinator %s\n", role.c_str(), task,
              static_cast<unsigned long long>(s->id()), coordinator.c_str());

  auto model = BuildModel(s);
  if (!model.ok()) return Fail(model.status());
  const std::string tag = absl::StrCat("[", role, " ", task, "] ");

  if (role == "check") {
    auto step = model->global_step.Read();
    if (!step.ok()) return Fail(step.status());
    auto counts = model->counts.Read();
    if (!counts.ok()) return Fail(counts.status());
    int64_t lookups = 0;
    for (int64_t i = 0; i < counts->num_elements(); ++i) lookups += counts->data<int64_t>()[i];
    const int64_t global_step = *step->data<int64_t>();
    std::printf("%sglobal_step = %lld, embedding rows updated %lld times in all\n", tag.c_str(),
                static_cast<long long>(global_step), static_cast<long long>(lookups));
    if (expect_steps >= 0 && (global_step != expect_steps || lookups != 9 * expect_steps)) {
      return Fail(absl::InternalError(absl::StrCat("expected global_step ", expect_steps, " and ",
                                                   9 * expect_steps, " row updates")));
    }
    // Adagrad's accumulator: beside each embedding part, moved (from its
    // initial 0.1) exactly in the rows that were looked up.
    auto accum = s->LookupVariable("model/embedding/Adagrad");
    if (!accum.ok()) return Fail(accum.status());
    const std::vector<PartInfo> emb_parts = model->embedding.parts(), acc_parts = accum->parts();
    for (size_t k = 0; k < emb_parts.size(); ++k) {
      if (k >= acc_parts.size() || acc_parts[k].shard_id != emb_parts[k].shard_id) {
        return Fail(absl::InternalError(absl::StrCat(accum->name(), " is not placed like ",
                                                     model->embedding.name())));
      }
    }
    auto acc = accum->Read();
    if (!acc.ok()) return Fail(acc.status());
    for (int64_t r = 0; r < kVocab; ++r) {
      const bool looked_up = counts->data<int64_t>()[r] > 0;
      bool moved = false;
      for (int64_t c = 0; c < kDim; ++c) moved = moved || acc->data<float>()[r * kDim + c] != 0.1f;
      if (looked_up != moved) {
        return Fail(absl::InternalError(absl::StrCat("row ", r, " was looked up ",
                                                     counts->data<int64_t>()[r],
                                                     " times, but its Adagrad accumulator ",
                                                     moved ? "moved" : "did not move")));
      }
    }
    std::printf("%sAdagrad slot %s beside every part, updated in the looked-up rows: OK\n",
                tag.c_str(), accum->name().c_str());
    auto users = model->users.Size();
    if (!users.ok()) return Fail(users.status());
    auto user_slot = s->LookupVariable("model/user_embedding/Adagrad");
    if (!user_slot.ok()) return Fail(user_slot.status());
    if (*users <= 0 || (expect_steps >= 0 && *users > 4 * expect_steps)) {
      return Fail(absl::InternalError(absl::StrCat(model->users.name(), " holds ", *users,
                                                   " rows after ", expect_steps, " steps")));
    }
    std::printf("%sembedding table %s: %lld user rows in %d parts, Adagrad slot table %s: OK\n",
                tag.c_str(), model->users.name().c_str(), static_cast<long long>(*users),
                model->users.num_parts(), user_slot->name().c_str());
    std::printf("%sthe trainers shared one set of variables: OK\n", tag.c_str());
    return 0;
  }

  for (const Variable& v : model->all()) std::printf("%s%s\n", tag.c_str(), Describe(v).c_str());
  if (role == "chief") {
    absl::Status init = s->InitializeVariables(model->all());
    if (!init.ok()) return Fail(init);
    std::printf("%sinitialized %zu variables on the shards\n", tag.c_str(), model->all().size());
  } else {
    std::printf("%swaiting for the chief to initialize\n", tag.c_str());
    absl::Status ready = s->WaitForInitialized(model->all(), absl::Seconds(120));
    if (!ready.ok()) return Fail(ready);
  }
  absl::Status trained = Train(s, *model, task, steps);
  if (!trained.ok()) return Fail(trained);
  auto step = model->global_step.Read();
  if (!step.ok()) return Fail(step.status());
  std::printf("%sdone %d steps; global_step now %lld\n", tag.c_str(), steps,
              static_cast<long long>(*step->data<int64_t>()));
  return 0;
}
