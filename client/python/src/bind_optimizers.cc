// psclient._psclient: optimizer configs and slots, the Session-level
// Optimizer (apply_gradients over dense and sparse gradients), and
// tf.sparse_mask.
#include "binding.h"

#include <string>
#include <utility>
#include <vector>

#include "psd/optimizer_ops.h"

namespace psd {
namespace python {
namespace {

client::OptimizerConfig MakeOptimizer(const std::string& kind, const py::dict& p) {
  auto get = [&](const char* key, double def) {
    return p.contains(key) ? p[key].cast<double>() : def;
  };
  auto get_bool = [&](const char* key, bool def) {
    return p.contains(key) ? p[key].cast<bool>() : def;
  };
  if (kind == "GradientDescent") {
    client::opt::GradientDescent o;
    o.learning_rate = get("learning_rate", o.learning_rate);
    return o;
  }
  if (kind == "Momentum") {
    client::opt::Momentum o;
    o.learning_rate = get("learning_rate", o.learning_rate);
    o.momentum = get("momentum", o.momentum);
    o.use_nesterov = get_bool("use_nesterov", o.use_nesterov);
    return o;
  }
  if (kind == "Adagrad") {
    client::opt::Adagrad o;
    o.learning_rate = get("learning_rate", o.learning_rate);
    o.initial_accumulator_value = get("initial_accumulator_value", o.initial_accumulator_value);
    return o;
  }
  if (kind == "Adam") {
    client::opt::Adam o;
    o.learning_rate = get("learning_rate", o.learning_rate);
    o.beta1 = get("beta1", o.beta1);
    o.beta2 = get("beta2", o.beta2);
    o.epsilon = get("epsilon", o.epsilon);
    if (p.contains("beta1_power_variable")) o.beta1_power_variable = p["beta1_power_variable"].cast<std::string>();
    if (p.contains("beta2_power_variable")) o.beta2_power_variable = p["beta2_power_variable"].cast<std::string>();
    if (p.contains("beta1_power")) o.beta1_power = p["beta1_power"].cast<double>();
    if (p.contains("beta2_power")) o.beta2_power = p["beta2_power"].cast<double>();
    return o;
  }
  if (kind == "RMSProp") {
    client::opt::RMSProp o;
    o.learning_rate = get("learning_rate", o.learning_rate);
    o.decay = get("decay", o.decay);
    o.momentum = get("momentum", o.momentum);
    o.epsilon = get("epsilon", o.epsilon);
    o.centered = get_bool("centered", o.centered);
    return o;
  }
  if (kind == "Ftrl") {
    client::opt::Ftrl o;
    o.learning_rate = get("learning_rate", o.learning_rate);
    o.learning_rate_power = get("learning_rate_power", o.learning_rate_power);
    o.initial_accumulator_value = get("initial_accumulator_value", o.initial_accumulator_value);
    o.l1_regularization_strength = get("l1_regularization_strength", o.l1_regularization_strength);
    o.l2_regularization_strength = get("l2_regularization_strength", o.l2_regularization_strength);
    o.l2_shrinkage_regularization_strength =
        get("l2_shrinkage_regularization_strength", o.l2_shrinkage_regularization_strength);
    return o;
  }
  throw py::value_error("unknown optimizer kind '" + kind + "'");
}

// A Session-level optimizer and the session it needs alive.
struct PyOptimizer {
  HolderPtr holder;
  std::unique_ptr<client::Optimizer> opt;
};

}  // namespace

void BindOptimizers(py::module_& m) {
  py::class_<PyOptimizerConfig>(m, "OptimizerConfig");
  m.def("optimizer_config", [](const std::string& kind, const py::dict& params) {
    return PyOptimizerConfig{MakeOptimizer(kind, params)};
  });
  m.def("optimizer_slots", [](const PyOptimizerConfig& c, const std::string& var) {
    std::vector<std::pair<std::string, double>> out;
    for (const auto& s : client::OptimizerSlots(c.config, var)) out.emplace_back(s.name, s.initial_value);
    return out;
  });

  // grads: a list of (variable, dense_array) or
  // (variable, indices, indices_dtype, values[, dense_shape or None]).
  py::class_<PyOptimizer>(m, "Optimizer")
      .def(py::init([](const HolderPtr& h, const PyOptimizerConfig& c) {
        return PyOptimizer{h, Locked(h, [&] {
                             return std::make_unique<client::Optimizer>(*h->Get(), c.config);
                           })};
      }))
      .def("apply_gradients", [](PyOptimizer& o, const py::list& grads, int64_t global_step) {
        std::vector<std::pair<client::Gradient, Variable>> pairs;
        pairs.reserve(grads.size());
        // The gradients are views of the arrays (ViewOf), held here for the
        // call: the list is the caller's, and another thread may change it
        // while the GIL is released.
        std::vector<py::tuple> held;
        held.reserve(grads.size());
        for (const py::handle& item : grads) {
          held.push_back(item.cast<py::tuple>());
          const py::tuple& t = held.back();
          const PyVariable& v = t[0].cast<const PyVariable&>();
          if (t.size() == 2) {
            pairs.emplace_back(ViewOf(t[1], v.var.dtype()), v.var);
          } else {
            client::IndexedSlices slices;
            slices.indices = ViewOf(t[1], t[2].cast<int>());
            slices.values = ViewOf(t[3], v.var.dtype());
            if (t.size() > 4 && !t[4].is_none()) {
              slices.dense_shape =
                  Unwrap(TensorShape::Make(t[4].cast<std::vector<int64_t>>(), "dense_shape"));
            }
            pairs.emplace_back(std::move(slices), v.var);
          }
        }
        client::Optimizer::ApplyOptions options;
        options.global_step = global_step;
        Check(Run(o.holder, [&] { return o.opt->ApplyGradients(pairs, nullptr, options); }));
      }, py::arg("grads"), py::arg("global_step") = 0)
      .def("create_slots", [](PyOptimizer& o, const std::vector<PyVariable>& vars) {
        std::vector<Variable> list = Unpack(vars);
        Check(Run(o.holder, [&] { return o.opt->CreateSlots(list); }));
      })
      .def("get_slot", [](PyOptimizer& o, const PyVariable& v, const std::string& name) {
        return PyVariable{o.holder, Unwrap(o.opt->GetSlot(v.var, name))};
      })
      .def("get_slot_names", [](PyOptimizer& o) { return o.opt->GetSlotNames(); })
      .def("non_slot_variables", [](PyOptimizer& o) { return Pack(o.holder, o.opt->NonSlotVariables()); });

  // tf.sparse_mask over client::SparseMask: returns (values, indices).
  m.def("sparse_mask", [](const py::handle& values, int values_dtype, const py::handle& indices,
                          int indices_dtype, const py::handle& mask, int mask_dtype) {
    client::IndexedSlices a;
    a.values = ToTensor(values, values_dtype);
    a.indices = ToTensor(indices, indices_dtype);
    const Tensor mask_indices = ToTensor(mask, mask_dtype);
    client::IndexedSlices out = Unwrap(client::SparseMask(a, mask_indices));
    return py::make_tuple(ToNumpy(std::move(out.values)), ToNumpy(std::move(out.indices)));
  });
}

}  // namespace python
}  // namespace psd
