// psclient._psclient: embedding tables (Session.get_embedding_variable,
// EmbeddingVariable and its ops by key). The Python layer
// (psclient/embedding.py) adds DeepRec's option classes.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "binding.h"
#include "psd/embedding_variable.h"
#include "psd/shard.pb.h"

namespace psd {
namespace python {
namespace {

using client::EmbeddingRowSet;
using client::EmbeddingVariable;
using client::KeyedOpOptions;

// A table and the session it needs alive.
struct PyEmbedding {
  HolderPtr holder;
  EmbeddingVariable table;
};

std::vector<EmbeddingVariable> Tables(const std::vector<PyEmbedding>& slots) {
  std::vector<EmbeddingVariable> out;
  for (const PyEmbedding& s : slots) out.push_back(s.table);
  return out;
}

KeyedOpOptions Options(int64_t global_step, bool inference = false) {
  KeyedOpOptions o;
  o.global_step = global_step;
  o.inference = inference;
  return o;
}

py::dict RowsToDict(EmbeddingRowSet rows) {
  py::dict d;
  d["keys"] = ToNumpy(std::move(rows.keys));
  d["values"] = ToNumpy(std::move(rows.values));
  d["freqs"] = ToNumpy(std::move(rows.freqs));
  d["versions"] = ToNumpy(std::move(rows.versions));
  py::list slots;
  for (Tensor& t : rows.slot_values) slots.append(ToNumpy(std::move(t)));
  d["slot_values"] = slots;
  return d;
}

// The policies of `s` as get_embedding_variable's ev_option fields (the
// Python layer's names): only those set, so the dict round-trips.
py::dict OptionFields(const EmbeddingSpec& s) {
  py::dict d;
  if (s.has_counter_filter()) d["counter_filter_freq"] = s.counter_filter().filter_freq();
  if (s.has_bloom_filter()) {
    d["bloom_filter_freq"] = s.bloom_filter().filter_freq();
    d["bloom_max_element_size"] = s.bloom_filter().max_element_size();
    d["bloom_false_positive_probability"] = s.bloom_filter().false_positive_probability();
    d["bloom_counter_bits"] = s.bloom_filter().counter_bits();
  }
  if (s.default_value_no_permission() != 0) {
    d["default_value_no_permission"] = s.default_value_no_permission();
  }
  if (s.steps_to_live() != 0) d["steps_to_live"] = s.steps_to_live();
  if (s.l2_weight_threshold() != 0) d["l2_weight_threshold"] = s.l2_weight_threshold();
  if (s.part_memory_limit_bytes() != 0) d["part_memory_limit_bytes"] = s.part_memory_limit_bytes();
  if (s.evict_lru_on_memory_limit()) d["evict_lru_on_memory_limit"] = true;
  return d;
}

using ScatterFn = absl::Status (EmbeddingVariable::*)(const Tensor&, const Tensor&,
                                                      const KeyedOpOptions&) const;
void Scatter(const PyEmbedding& e, ScatterFn fn, const py::handle& keys, const py::handle& rows,
             int64_t global_step) {
  Tensor k = ViewOf(keys, e.table.key_dtype());
  Tensor r = ViewOf(rows, e.table.dtype());
  Check(Run(e.holder, [&] { return (e.table.*fn)(k, r, Options(global_step)); }));
}

}  // namespace

void BindEmbedding(py::module_& m) {
  py::class_<PyEmbedding>(m, "EmbeddingVariable")
      .def_property_readonly("name", [](const PyEmbedding& e) { return e.table.name(); })
      .def_property_readonly("dtype", [](const PyEmbedding& e) { return static_cast<int>(e.table.dtype()); })
      .def_property_readonly("key_dtype",
                             [](const PyEmbedding& e) { return static_cast<int>(e.table.key_dtype()); })
      .def_property_readonly("embedding_dim", [](const PyEmbedding& e) { return e.table.embedding_dim(); })
      .def_property_readonly("num_parts", [](const PyEmbedding& e) { return e.table.num_parts(); })
      .def_property_readonly("trainable", [](const PyEmbedding& e) { return e.table.variable().trainable(); })
      .def_property_readonly("collections",
                             [](const PyEmbedding& e) { return e.table.variable().collections(); })
      .def("part_names", [](const PyEmbedding& e) {
        std::vector<std::string> out;
        for (const client::PartInfo& p : e.table.parts()) out.push_back(p.name);
        return out;
      })
      .def("gather", [](const PyEmbedding& e, const py::handle& keys, int64_t global_step,
                        bool inference) {
        Tensor k = ViewOf(keys, e.table.key_dtype());
        return ToNumpy(Unwrap(
            Run(e.holder, [&] { return e.table.Gather(k, Options(global_step, inference)); })));
      })
      .def("scatter_update", [](const PyEmbedding& e, const py::handle& k, const py::handle& r,
                                int64_t step) { Scatter(e, &EmbeddingVariable::ScatterUpdate, k, r, step); })
      .def("scatter_add", [](const PyEmbedding& e, const py::handle& k, const py::handle& r,
                             int64_t step) { Scatter(e, &EmbeddingVariable::ScatterAdd, k, r, step); })
      .def("scatter_sub", [](const PyEmbedding& e, const py::handle& k, const py::handle& r,
                             int64_t step) { Scatter(e, &EmbeddingVariable::ScatterSub, k, r, step); })
      .def("size", [](const PyEmbedding& e) { return Unwrap(Run(e.holder, [&] { return e.table.Size(); })); })
      .def("export", [](const PyEmbedding& e, const std::vector<PyEmbedding>& slots) {
        std::vector<EmbeddingVariable> s = Tables(slots);
        EmbeddingRowSet rows = Unwrap(Run(e.holder, [&] { return e.table.Export(s); }));
        return RowsToDict(std::move(rows));
      })
      .def("import_", [](const PyEmbedding& e, const py::handle& keys, const py::handle& values,
                         const py::object& freqs, const py::object& versions,
                         const std::vector<PyEmbedding>& slots, const py::list& slot_values) {
        EmbeddingRowSet rows;
        rows.keys = ToTensor(keys, e.table.key_dtype());
        rows.values = ToTensor(values, e.table.dtype());
        if (!freqs.is_none()) rows.freqs = ToTensor(freqs, DT_INT64);
        if (!versions.is_none()) rows.versions = ToTensor(versions, DT_INT64);
        for (const py::handle& v : slot_values) rows.slot_values.push_back(ToTensor(v, e.table.dtype()));
        std::vector<EmbeddingVariable> s = Tables(slots);
        Check(Run(e.holder, [&] { return e.table.Import(rows, s); }));
      })
      .def("delete_keys", [](const PyEmbedding& e, const py::handle& keys) {
        Tensor k = ViewOf(keys, e.table.key_dtype());
        return Unwrap(Run(e.holder, [&] { return e.table.DeleteKeys(k); }));
      })
      .def("evict", [](const PyEmbedding& e, int64_t global_step) {
        return Unwrap(Run(e.holder, [&] { return e.table.Evict(global_step); }));
      })
      .def_property_readonly("spec", [](const PyEmbedding& e) {
        const EmbeddingSpec s = e.table.spec();
        py::dict d = OptionFields(s);
        d["embedding_dim"] = s.embedding_dim();
        d["key_dtype"] = static_cast<int>(s.key_dtype());
        d["slot_of"] = s.slot_of();
        return d;
      })
      .def_property_readonly("variable",
                             [](const PyEmbedding& e) { return PyVariable{e.holder, e.table.variable()}; })
      .def("refresh", [](PyEmbedding& e) {
        Variable v = e.table.variable();
        Check(Run(e.holder, [&] { return v.Refresh(); }));
      });

  // A table handle's EmbeddingSpec, serialized (meta graphs), with
  // `strip_prefix` taken off a slot's slot_of; None for a dense variable.
  m.def("embedding_spec_bytes", [](const PyVariable& v, const std::string& strip_prefix) -> py::object {
    if (!v.var.handle().has_embedding()) return py::none();
    EmbeddingSpec spec = v.var.handle().embedding();
    if (!strip_prefix.empty() && spec.slot_of().rfind(strip_prefix, 0) == 0) {
      spec.set_slot_of(spec.slot_of().substr(strip_prefix.size()));
    }
    return py::bytes(spec.SerializeAsString());
  });
  // A serialized EmbeddingSpec as get_embedding_variable's arguments:
  // (embedding_dim, key_dtype, ev_option fields, slot_of); ValueError if
  // the bytes are not one.
  m.def("embedding_spec_fields", [](const py::bytes& bytes) {
    EmbeddingSpec s;
    if (!s.ParseFromString(std::string(bytes)) || s.embedding_dim() <= 0) {
      throw py::value_error("not a serialized EmbeddingSpec");
    }
    py::dict d = OptionFields(s);
    return py::make_tuple(s.embedding_dim(), static_cast<int>(s.key_dtype()), d, s.slot_of());
  });

  // The table behind a variable handle (an optimizer's slot of a table).
  m.def("embedding_of", [](const PyVariable& v) {
    return PyEmbedding{v.holder, Unwrap(EmbeddingVariable::Of(v.var))};
  });

  m.def("get_embedding_variable",
        [](const HolderPtr& h, const std::string& name, int64_t embedding_dim, int key_dtype,
           int dtype, std::optional<InitializerSpec> initializer,
           std::optional<PartitionerSpec> partitioner, std::optional<int> reuse,
           std::optional<bool> trainable, std::vector<std::string> collections,
           const py::dict& ev_option, std::string slot_of, std::string declared_at) {
          client::EmbeddingVariableOptions o;
          o.embedding_dim = embedding_dim;
          o.key_dtype = static_cast<DataType>(key_dtype);
          if (dtype != DT_INVALID) o.dtype = CheckedDtype(dtype);
          o.initializer = std::move(initializer);
          o.partitioner = std::move(partitioner);
          if (reuse.has_value()) {
            if (*reuse < 0 || *reuse > 2) throw py::value_error("reuse must be False, True or AUTO_REUSE");
            o.reuse = static_cast<Reuse>(*reuse);
          }
          o.trainable = trainable;
          o.collections = std::move(collections);
          // ev_option: the fields of EmbeddingSpec the Python layer set.
          EmbeddingSpec& spec = o.ev_option;
          for (const auto& [key, value] : ev_option) {
            const std::string k = key.cast<std::string>();
            if (k == "counter_filter_freq") {
              spec.mutable_counter_filter()->set_filter_freq(value.cast<int64_t>());
            } else if (k == "bloom_filter_freq") {
              spec.mutable_bloom_filter()->set_filter_freq(value.cast<int64_t>());
            } else if (k == "bloom_max_element_size") {
              spec.mutable_bloom_filter()->set_max_element_size(value.cast<int64_t>());
            } else if (k == "bloom_false_positive_probability") {
              spec.mutable_bloom_filter()->set_false_positive_probability(value.cast<double>());
            } else if (k == "bloom_counter_bits") {
              spec.mutable_bloom_filter()->set_counter_bits(value.cast<int32_t>());
            } else if (k == "default_value_no_permission") {
              spec.set_default_value_no_permission(value.cast<double>());
            } else if (k == "steps_to_live") {
              spec.set_steps_to_live(value.cast<int64_t>());
            } else if (k == "l2_weight_threshold") {
              spec.set_l2_weight_threshold(value.cast<double>());
            } else if (k == "part_memory_limit_bytes") {
              spec.set_part_memory_limit_bytes(value.cast<int64_t>());
            } else if (k == "evict_lru_on_memory_limit") {
              spec.set_evict_lru_on_memory_limit(value.cast<bool>());
            } else {
              throw py::value_error("get_embedding_variable: unknown option " + k);
            }
          }
          o.slot_of = std::move(slot_of);
          o.declared_at = std::move(declared_at);
          EmbeddingVariable t = Unwrap(
              RunGraph(h, [&](Session* s) { return s->GetEmbeddingVariable(name, o); }),
              /*naming=*/true);
          return PyEmbedding{h, std::move(t)};
        });
}

}  // namespace python
}  // namespace psd
