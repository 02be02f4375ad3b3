// A trainer process for the concurrency test: opens its own session,
// declares one partitioned variable (creating it or attaching to it), adds
// 1 to its first and last rows, and prints the session that declared it.
// With --table-dim D it declares an embedding table of dim D instead and
// adds 1 to the rows of keys 0..rows-1 times 1000003 at global step 3.
// Exit status 0 on success; the error on stderr otherwise.
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "psd/embedding_variable.h"
#include "psd/session.h"

int main(int argc, char** argv) {
  CLI::App app{"declare a shared variable and bump it"};
  std::string coordinator, name;
  int64_t rows = 8;
  int parts = 2;
  int64_t table_dim = 0;
  app.add_option("--coordinator", coordinator)->required();
  app.add_option("--table-dim", table_dim, "Declare an embedding table of this dim instead");
  app.add_option("--name", name)->required();
  app.add_option("--rows", rows);
  app.add_option("--parts", parts);
  CLI11_PARSE(app, argc, argv);

  using namespace psd::client;
  auto session = Session::Open(coordinator);
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  if (table_dim > 0) {
    EmbeddingVariableOptions o;
    o.embedding_dim = table_dim;
    o.initializer = init::Zeros();
    o.partitioner = partitioners::FixedSize(parts);
    auto t = (*session)->GetEmbeddingVariable(name, o);
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      return 1;
    }
    std::vector<int64_t> keys;
    for (int64_t i = 0; i < rows; ++i) keys.push_back(i * 1000003);
    auto key_tensor = *psd::Tensor::FromVector<int64_t>(psd::TensorShape{rows}, keys);
    absl::Status s = t->ScatterAdd(key_tensor, psd::Tensor::Scalar<float>(1.0f), {.global_step = 3});
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("table parts=%d\n", t->num_parts());
    return 0;
  }
  GetVariableOptions o;
  o.shape = psd::TensorShape{rows, 4};
  o.initializer = init::Zeros();
  o.partitioner = partitioners::FixedSize(parts);
  o.initialize = true;
  auto v = (*session)->GetVariable(name, o);
  if (!v.ok()) {
    std::fprintf(stderr, "%s\n", v.status().ToString().c_str());
    return 1;
  }
  auto indices = *psd::Tensor::FromVector<int64_t>(psd::TensorShape{2}, {0, rows - 1});
  absl::Status s = v->ScatterAdd(indices, psd::Tensor::Scalar<float>(1.0f));
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("declared_by_session=%llu parts=%zu\n",
              static_cast<unsigned long long>(v->handle().declared_by_session()), v->parts().size());
  return 0;
}
