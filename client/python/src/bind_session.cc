// psclient._psclient: Session (variables by name, scopes, shards listed),
// Variable (its data ops) and the variable scopes entered from Python.
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "binding.h"
#include "psd/client.h"

namespace psd {
namespace python {
namespace {

// tf.Variable's options as the Python layer passes them.
client::VariableOptions TfVariableOptions(const std::string& name, std::optional<bool> trainable,
                                          std::vector<std::string> collections, bool initialize) {
  client::VariableOptions o;
  o.name = name;
  o.trainable = trainable;
  o.collections = std::move(collections);
  o.initialize = initialize;
  return o;
}

// The Python caller's "FILE:LINE" as (file, line); line 0 when absent.
std::pair<std::string, int> SplitDeclaredAt(const std::string& declared_at) {
  const auto colon = declared_at.rfind(':');
  if (colon == std::string::npos) return {declared_at, 0};
  return {declared_at.substr(0, colon), std::atoi(declared_at.c_str() + colon + 1)};
}

// A variable scope entered from Python; exit() leaves it.
struct PyScope {
  HolderPtr holder;
  int64_t id = -1;
  CapturedScope entered;  // as of entry (its name is the full path)
};

// `name`: the variable the shape is for, named in the error.
std::optional<TensorShape> OptionalShape(const std::optional<std::vector<int64_t>>& dims,
                                         const std::string& name) {
  if (!dims.has_value()) return std::nullopt;
  return Unwrap(TensorShape::Make(*dims, absl::StrCat("shape of variable '", name, "'")),
                /*naming=*/true);
}

std::optional<Reuse> OptionalReuse(const std::optional<int>& reuse) {
  if (!reuse.has_value()) return std::nullopt;
  if (*reuse < 0 || *reuse > 2) throw py::value_error("reuse must be False, True or AUTO_REUSE");
  return static_cast<Reuse>(*reuse);
}

client::ScopeOptions MakeScopeOptions(const std::optional<int>& reuse,
                                      const std::optional<PartitionerSpec>& partitioner,
                                      int dtype, std::optional<std::string> caching_device) {
  client::ScopeOptions o;
  o.reuse = OptionalReuse(reuse);
  o.partitioner = partitioner;
  if (dtype != DT_INVALID) o.dtype = CheckedDtype(dtype);
  o.caching_device = std::move(caching_device);
  return o;
}

PyScope Remember(const HolderPtr& h, absl::StatusOr<VariableScope> scope) {
  // Called under graph_mu (inside RunGraph).
  VariableScope entered = Unwrap(std::move(scope), /*naming=*/true);
  PyScope out;
  out.holder = h;
  out.id = h->next_scope++;
  out.entered = entered.captured();
  h->scopes.emplace(out.id, std::move(entered));
  return out;
}

py::dict PartToDict(const client::PartInfo& p) {
  py::dict d;
  d["name"] = p.name;
  d["shape"] = p.shape.dims();
  d["offset"] = p.offset;
  d["shard_id"] = p.shard_id;
  d["shard_address"] = p.shard_address;
  d["shard_incarnation"] = p.shard_incarnation;
  d["lost"] = p.lost;
  return d;
}

// Data ops returning the value after the update when asked.
using UpdateFn = absl::Status (Variable::*)(const Tensor&, Tensor*) const;
py::object Update(const PyVariable& v, UpdateFn fn, const py::handle& value, bool read_value) {
  Tensor t = ViewOf(value, v.var.dtype());
  std::optional<Tensor> after;
  if (read_value) after.emplace();
  Check(Run(v.holder, [&] { return (v.var.*fn)(t, after.has_value() ? &*after : nullptr); }));
  if (!after.has_value()) return py::none();
  return ToNumpy(std::move(*after));
}

using ScatterFn = absl::Status (Variable::*)(const Tensor&, const Tensor&) const;
void Scatter(const PyVariable& v, ScatterFn fn, const py::handle& indices, int indices_dtype,
             const py::handle& updates) {
  Tensor i = ViewOf(indices, indices_dtype);
  Tensor u = ViewOf(updates, v.var.dtype());
  Check(Run(v.holder, [&] { return (v.var.*fn)(i, u); }));
}

}  // namespace

std::vector<Variable> Unpack(const std::vector<PyVariable>& vars) {
  std::vector<Variable> out;
  out.reserve(vars.size());
  for (const PyVariable& v : vars) out.push_back(v.var);
  return out;
}

std::vector<PyVariable> Pack(const HolderPtr& h, std::vector<Variable> vars) {
  std::vector<PyVariable> out;
  out.reserve(vars.size());
  for (Variable& v : vars) out.push_back(PyVariable{h, std::move(v)});
  return out;
}

void BindSession(py::module_& m) {
  m.attr("REUSE_FALSE") = static_cast<int>(REUSE_FALSE);
  m.attr("REUSE_TRUE") = static_cast<int>(REUSE_TRUE);
  m.attr("REUSE_AUTO") = static_cast<int>(REUSE_AUTO);

  py::class_<CapturedScope>(m, "CapturedScope")
      // A scope described rather than entered (VariableScope's own
      // constructor): re-entering it names variables under `name`.
      .def(py::init([](std::string name, int reuse, std::optional<PartitionerSpec> partitioner,
                       int dtype, std::string caching_device) {
             CapturedScope s;
             s.name = std::move(name);
             s.reuse = *OptionalReuse(reuse);
             s.partitioner = std::move(partitioner);
             s.dtype = CheckedDtype(dtype);
             s.caching_device = std::move(caching_device);
             return s;
           }),
           py::arg("name"), py::arg("reuse"), py::arg("partitioner"), py::arg("dtype"),
           py::arg("caching_device"))
      .def_readonly("name", &CapturedScope::name)
      .def_property_readonly("reuse", [](const CapturedScope& s) { return static_cast<int>(s.reuse); })
      .def_property_readonly("dtype", [](const CapturedScope& s) { return static_cast<int>(s.dtype); })
      .def_property_readonly("partitioner", [](const CapturedScope& s) { return s.partitioner; })
      .def_readonly("caching_device", &CapturedScope::caching_device)
      .def("with_reuse", [](CapturedScope s) {
        s.reuse = REUSE_TRUE;
        return s;
      });

  py::class_<PyScope>(m, "Scope")
      .def_property_readonly("captured", [](const PyScope& s) {
        // The scope's state now (reuse_variables included) while it is open.
        // `entered` is read with the GIL (it is the Python object's state).
        CapturedScope entered = s.entered;
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> graph(s.holder->graph_mu);
        auto it = s.holder->scopes.find(s.id);
        return it == s.holder->scopes.end() ? entered : it->second.captured();
      })
      .def("reuse_variables", [](PyScope& s) {
        {
          py::gil_scoped_release release;
          std::lock_guard<std::mutex> graph(s.holder->graph_mu);
          auto it = s.holder->scopes.find(s.id);
          if (it != s.holder->scopes.end()) it->second.reuse_variables();
        }
        s.entered.reuse = REUSE_TRUE;
      })
      .def("exit", [](PyScope& s) {
        absl::Status st;
        {
          py::gil_scoped_release release;
          std::shared_lock<std::shared_mutex> lock(s.holder->mu);
          std::lock_guard<std::mutex> graph(s.holder->graph_mu);
          // Gone when exited already or when the session closed (close()
          // exits every open scope).
          auto it = s.holder->scopes.find(s.id);
          if (it != s.holder->scopes.end()) {
            st = it->second.Exit();
            // Exit pops every scope entered after this one too.
            s.holder->scopes.erase(it, s.holder->scopes.end());
          }
        }
        Check(st);
      });

  py::class_<PyVariable>(m, "Variable")
      .def_property_readonly("name", [](const PyVariable& v) { return v.var.name(); })
      .def_property_readonly("dtype", [](const PyVariable& v) { return static_cast<int>(v.var.dtype()); })
      .def_property_readonly("shape", [](const PyVariable& v) { return v.var.shape().dims(); })
      .def_property_readonly("partitioned", [](const PyVariable& v) { return v.var.partitioned(); })
      .def_property_readonly("partition_axis", [](const PyVariable& v) { return v.var.partition_axis(); })
      .def_property_readonly("partitions", [](const PyVariable& v) { return v.var.partitions(); })
      .def_property_readonly("trainable", [](const PyVariable& v) { return v.var.trainable(); })
      .def_property_readonly("is_embedding",
                             [](const PyVariable& v) { return v.var.handle().has_embedding(); })
      .def_property_readonly("collections", [](const PyVariable& v) { return v.var.collections(); })
      .def_property_readonly("initializer",
                             [](const PyVariable& v) { return v.var.handle().initializer(); })
      .def("parts", [](const PyVariable& v) {
        py::list out;
        for (const client::PartInfo& p : v.var.parts()) out.append(PartToDict(p));
        return out;
      })
      .def("same_as", [](const PyVariable& a, const PyVariable& b) {
        return a.holder == b.holder && a.var.name() == b.var.name();
      })
      .def("refresh", [](PyVariable& v) { Check(Run(v.holder, [&] { return v.var.Refresh(); })); })
      .def_property_readonly("cached", [](const PyVariable& v) { return v.var.cached(); })
      .def("refresh_cache",
           [](const PyVariable& v) { Check(Run(v.holder, [&] { return v.var.RefreshCache(); })); })
      .def("read", [](const PyVariable& v) {
        return ToNumpy(Unwrap(Run(v.holder, [&] { return v.var.Read(); })));
      })
      .def("gather", [](const PyVariable& v, const py::handle& indices, int indices_dtype) {
        Tensor i = ViewOf(indices, indices_dtype);
        return ToNumpy(Unwrap(Run(v.holder, [&] { return v.var.Gather(i); })));
      })
      .def("assign", [](const PyVariable& v, const py::handle& x, bool read_value,
                        bool validate_shape) {
        if (validate_shape) {
          return Update(v, static_cast<UpdateFn>(&Variable::Assign), x, read_value);
        }
        // A new shape: the value is converted as given, not to the old shape.
        Tensor t = ViewOf(x, v.var.dtype());
        client::AssignOptions options;
        options.validate_shape = false;
        std::optional<Tensor> after;
        if (read_value) after.emplace();
        Check(Run(v.holder, [&] {
          return v.var.Assign(t, options, after.has_value() ? &*after : nullptr);
        }));
        if (!after.has_value()) return py::object(py::none());
        return py::object(ToNumpy(std::move(*after)));
      })
      .def("assign_add", [](const PyVariable& v, const py::handle& x, bool read_value) {
        return Update(v, &Variable::AssignAdd, x, read_value);
      })
      .def("assign_sub", [](const PyVariable& v, const py::handle& x, bool read_value) {
        return Update(v, &Variable::AssignSub, x, read_value);
      })
      .def("scatter_update", [](const PyVariable& v, const py::handle& i, int idt, const py::handle& u) {
        Scatter(v, &Variable::ScatterUpdate, i, idt, u);
      })
      .def("scatter_add", [](const PyVariable& v, const py::handle& i, int idt, const py::handle& u) {
        Scatter(v, &Variable::ScatterAdd, i, idt, u);
      })
      .def("scatter_sub", [](const PyVariable& v, const py::handle& i, int idt, const py::handle& u) {
        Scatter(v, &Variable::ScatterSub, i, idt, u);
      })
      .def("count_up_to", [](const PyVariable& v, int64_t limit) {
        return Unwrap(Run(v.holder, [&] { return v.var.CountUpTo(limit); }));
      })
      .def("initialize", [](const PyVariable& v, bool force) {
        Check(Run(v.holder, [&] { return v.var.Initialize(force); }));
      })
      .def("is_initialized", [](const PyVariable& v) {
        return Unwrap(Run(v.holder, [&] { return v.var.IsInitialized(); }));
      });

  py::class_<SessionHolder, HolderPtr>(m, "Session")
      .def_static("open", [](const std::string& address, const std::string& client_name,
                             double timeout_s, double retry_budget_s,
                             const ChannelSecurity& security) {
        client::SessionOptions o;
        o.client = client_name;
        // The coordinator channel and every shard channel.
        o.shard.security = security;
        if (timeout_s > 0) o.coordinator_timeout = absl::Seconds(timeout_s);
        if (retry_budget_s >= 0) o.coordinator_retry_budget = absl::Seconds(retry_budget_s);
        std::unique_ptr<Session> s;
        {
          py::gil_scoped_release release;
          absl::StatusOr<std::unique_ptr<Session>> opened = Session::Open(address, o);
          if (!opened.ok()) Throw(opened.status());
          s = *std::move(opened);
        }
        auto h = std::make_shared<SessionHolder>();
        h->session = std::move(s);
        return h;
      })
      .def("close", [](const HolderPtr& h) {
        py::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> lock(h->mu);
        std::lock_guard<std::mutex> graph(h->graph_mu);
        h->CloseLocked();
      })
      .def_property_readonly("closed", [](const HolderPtr& h) {
        return Locked(h, [&] { return h->session == nullptr; });
      })
      .def_property_readonly("id", [](const HolderPtr& h) {
        return Locked(h, [&] { return h->Get()->id(); });
      })
      .def_property_readonly("coordinator_address", [](const HolderPtr& h) {
        return Locked(h, [&] { return h->Get()->coordinator_address(); });
      })
      .def("get_variable",
           [](const HolderPtr& h, const std::string& name, std::optional<std::vector<int64_t>> shape,
              int dtype, std::optional<InitializerSpec> initializer,
              const py::object& initial_value, int initial_dtype,
              std::optional<PartitionerSpec> partitioner, std::optional<int> reuse,
              std::optional<bool> trainable, std::vector<std::string> collections,
              bool initialize, std::string declared_at,
              std::optional<std::string> caching_device, std::optional<int> replication) {
             client::GetVariableOptions o;
             o.caching_device = std::move(caching_device);
             o.replication = replication;
             o.shape = OptionalShape(shape, name);
             if (dtype != DT_INVALID) o.dtype = CheckedDtype(dtype);
             o.initializer = std::move(initializer);
             if (!initial_value.is_none()) o.initial_value = ToTensor(initial_value, initial_dtype);
             o.partitioner = std::move(partitioner);
             o.reuse = OptionalReuse(reuse);
             o.trainable = trainable;
             o.collections = std::move(collections);
             o.initialize = initialize;
             o.declared_at = std::move(declared_at);
             Variable v = Unwrap(RunGraph(h, [&](Session* s) { return s->GetVariable(name, o); }),
                                 /*naming=*/true);
             return PyVariable{h, std::move(v)};
           })
      .def("create_variable",
           [](const HolderPtr& h, const py::handle& value, int dtype, const std::string& name,
              std::optional<bool> trainable, std::vector<std::string> collections, bool initialize,
              const std::string& declared_at) {
             Tensor t = ToTensor(value, dtype);
             client::VariableOptions o =
                 TfVariableOptions(name, trainable, std::move(collections), initialize);
             const auto [file, line] = SplitDeclaredAt(declared_at);
             Variable v = Unwrap(RunGraph(h, [&](Session* s) {
                                   return s->CreateVariable(std::move(t), o, file.c_str(), line);
                                 }),
                                 /*naming=*/true);
             return PyVariable{h, std::move(v)};
           })
      .def("create_variable_from",
           [](const HolderPtr& h, const PyVariable& source, double scale, double offset,
              const std::string& name, std::optional<bool> trainable,
              std::vector<std::string> collections, bool initialize,
              const std::string& declared_at) {
             client::VariableOptions o =
                 TfVariableOptions(name, trainable, std::move(collections), initialize);
             const auto [file, line] = SplitDeclaredAt(declared_at);
             Variable v = Unwrap(RunGraph(h, [&](Session* s) {
                                   return s->CreateVariableFrom(source.var, scale, offset, o,
                                                                file.c_str(), line);
                                 }),
                                 /*naming=*/true);
             return PyVariable{h, std::move(v)};
           })
      .def("lookup_variable", [](const HolderPtr& h, const std::string& full_name) {
        Variable v = Unwrap(Run(h, [&] { return h->session->LookupVariable(full_name); }));
        return PyVariable{h, std::move(v)};
      })
      .def("list_variables", [](const HolderPtr& h, const std::string& collection) {
        return Pack(h, Unwrap(Run(h, [&] { return h->session->ListVariables(collection); })));
      })
      .def("initialize_variables", [](const HolderPtr& h, const std::vector<PyVariable>& vars, bool force) {
        std::vector<Variable> list = Unpack(vars);
        Check(Run(h, [&] { return h->session->InitializeVariables(list, force); }));
      })
      .def("initialize_all_variables", [](const HolderPtr& h) {
        Check(Run(h, [&] { return h->session->InitializeAllVariables(); }));
      })
      .def("initialize_collections", [](const HolderPtr& h, const std::vector<std::string>& collections) {
        Check(Run(h, [&] { return h->session->InitializeCollections(collections); }));
      })
      .def("report_uninitialized_variables", [](const HolderPtr& h, const std::vector<PyVariable>& vars) {
        std::vector<Variable> list = Unpack(vars);
        return Unwrap(Run(h, [&] { return h->session->ReportUninitializedVariables(list); }));
      })
      .def("wait_for_initialized", [](const HolderPtr& h, const std::vector<PyVariable>& vars, double timeout_s) {
        std::vector<Variable> list = Unpack(vars);
        Check(Run(h, [&] { return h->session->WaitForInitialized(list, absl::Seconds(timeout_s)); }));
      })
      .def("delete_variable", [](const HolderPtr& h, const std::string& full_name) {
        Check(Run(h, [&] { return h->session->DeleteVariable(full_name); }));
      })
      .def("list_shards", [](const HolderPtr& h) {
        ListShardsResponse resp = Unwrap(Run(h, [&] { return h->session->ListShards(); }));
        py::list out;
        for (const ShardStatus& s : resp.shards()) {
          py::dict d;
          d["shard_id"] = s.shard_id();
          d["address"] = s.address();
          d["incarnation"] = s.incarnation();
          d["device"] = s.device();
          d["live"] = s.live();
          d["memory_used_bytes"] = s.memory_used_bytes();
          d["num_variables"] = s.num_variables();
          d["lost_parts"] = s.lost_parts();
          out.append(d);
        }
        return out;
      })
      .def("current_scope", [](const HolderPtr& h) {
        return LockedGraph(h, [&] { return h->Get()->current_scope(); });
      })
      .def("set_random_seed", [](const HolderPtr& h, std::optional<int64_t> seed) {
        Locked(h, [&] { h->Get()->SetRandomSeed(seed); });
      })
      .def_property_readonly("trainable_variables_created", [](const HolderPtr& h) {
        return Locked(h, [&] { return h->Get()->trainable_variables_created(); });
      })
      .def_property_readonly("random_seed", [](const HolderPtr& h) {
        return Locked(h, [&] { return h->Get()->random_seed(); });
      })
      .def("reuse_variables", [](const HolderPtr& h) {
        LockedGraph(h, [&] {
          h->Get()->ReuseVariables();
          // Keep the Python-entered scope objects in step with the stack.
          if (!h->scopes.empty()) h->scopes.rbegin()->second.reuse_variables();
        });
      })
      .def("enter_scope", [](const HolderPtr& h, const std::string& name, std::optional<int> reuse,
                             std::optional<PartitionerSpec> partitioner, int dtype,
                             std::optional<std::string> caching_device) {
        client::ScopeOptions o =
            MakeScopeOptions(reuse, partitioner, dtype, std::move(caching_device));
        return RunGraph(h, [&](Session* s) { return Remember(h, VariableScope::Enter(s, name, o)); });
      })
      .def("enter_default_scope", [](const HolderPtr& h, const std::string& default_name,
                                     std::optional<int> reuse,
                                     std::optional<PartitionerSpec> partitioner, int dtype,
                                     std::optional<std::string> caching_device) {
        client::ScopeOptions o =
            MakeScopeOptions(reuse, partitioner, dtype, std::move(caching_device));
        return RunGraph(h, [&](Session* s) {
          return Remember(h, VariableScope::EnterDefault(s, default_name, o));
        });
      })
      .def("reenter_scope", [](const HolderPtr& h, const CapturedScope& captured, std::optional<int> reuse,
                               std::optional<PartitionerSpec> partitioner, int dtype,
                               std::optional<std::string> caching_device) {
        client::ScopeOptions o =
            MakeScopeOptions(reuse, partitioner, dtype, std::move(caching_device));
        return RunGraph(h, [&](Session* s) {
          return Remember(h, VariableScope::Reenter(s, captured, o));
        });
      });
}

}  // namespace python
}  // namespace psd
