// psclient._psclient: the pybind11 binding of the C++ client (session.h,
// variable.h, client.h, initializers.h, optimizer.h, optimizer_ops.h,
// saver.h). It adds no client
// logic: it converts numpy arrays to psd::Tensor and back, releases the GIL
// around every RPC, and turns a non-OK absl::Status into the exception class
// psclient.errors picks for its code. The Python idiom (context managers,
// dtypes, TensorFlow names) lives in the psclient package around it.
//
// Copies. An array going in is copied once, with the GIL released, into the
// std::string a Tensor owns (Tensor has no constructor that adopts a buffer).
// A Tensor coming out is moved to the heap and handed to numpy with a capsule
// that deletes it: the array views the Tensor's bytes, no copy. Strings are
// the exception both ways: one Python bytes object per element.
//
// Thread-safety: every object here may be used from several Python threads.
// A session's scope stack is thread-compatible in C++; SessionHolder
// serializes the calls that touch it (graph_mu). close() waits for ops in
// flight (mu exclusive) and later ops fail with FAILED_PRECONDITION.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "psd/client.h"
#include "psd/dtype.h"
#include "psd/initializers.h"
#include "psd/optimizer.h"
#include "psd/optimizer_ops.h"
#include "psd/saver.h"
#include "psd/session.h"
#include "psd/tensor.h"
#include "psd/variable.h"

namespace py = pybind11;

namespace psd {
namespace python {
namespace {

using client::CapturedScope;
using client::Session;
using client::Variable;
using client::VariableScope;

// ---------------------------------------------------------------------------
// Errors

// Thrown with or without the GIL; translated to a psclient.errors class
// (with the GIL) by the translator registered in the module init.
struct StatusError {
  int code;
  std::string message;
  bool naming;  // a get_variable / scope naming error: also a ValueError
};

[[noreturn]] void Throw(const absl::Status& s, bool naming = false) {
  throw StatusError{static_cast<int>(s.code()), std::string(s.message()), naming};
}
void Check(const absl::Status& s, bool naming = false) {
  if (!s.ok()) Throw(s, naming);
}
template <typename T>
T Unwrap(absl::StatusOr<T> s, bool naming = false) {
  if (!s.ok()) Throw(s.status(), naming);
  return *std::move(s);
}

// ---------------------------------------------------------------------------
// numpy <-> Tensor

DataType CheckedDtype(int dtype) {
  Check(ValidateDataType(dtype, "dtype"));
  return static_cast<DataType>(dtype);
}

std::vector<int64_t> ShapeOf(const py::array& a) {
  std::vector<int64_t> dims(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) dims[i] = a.shape(i);
  return dims;
}

// `obj` must be a C-contiguous numpy array whose items are `dtype`'s (the
// Python layer converts values to the variable's numpy dtype first; for
// strings an object array of bytes/str). One copy, GIL released.
Tensor ToTensor(const py::handle& obj, int dtype_int) {
  const DataType dtype = CheckedDtype(dtype_int);
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error("psclient internal: expected a numpy array");
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  TensorShape shape = Unwrap(TensorShape::Make(ShapeOf(a), "value"));
  if (dtype == DT_STRING) {
    if (a.dtype().kind() != 'O') throw py::type_error("string tensors need an object array");
    std::vector<std::string> values;
    values.reserve(a.size());
    // Object arrays converted by the Python layer are C-contiguous.
    PyObject* const* items = static_cast<PyObject* const*>(a.data());
    for (py::ssize_t i = 0; i < a.size(); ++i) {
      PyObject* item = items[i];
      char* data = nullptr;
      Py_ssize_t size = 0;
      if (PyBytes_Check(item)) {
        PyBytes_AsStringAndSize(item, &data, &size);
        values.emplace_back(data, size);
      } else if (PyUnicode_Check(item)) {
        const char* utf8 = PyUnicode_AsUTF8AndSize(item, &size);
        if (utf8 == nullptr) throw py::error_already_set();
        values.emplace_back(utf8, size);
      } else {
        throw py::type_error("string tensor elements must be bytes or str");
      }
    }
    return Unwrap(Tensor::FromStrings(std::move(shape), std::move(values)));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error("psclient internal: array is not C-contiguous");
  }
  if (static_cast<size_t>(a.itemsize()) != DataTypeSize(dtype)) {
    throw py::type_error("psclient internal: array item size " + std::to_string(a.itemsize()) +
                         " does not match " + DataTypeName(dtype));
  }
  const void* src = a.data();
  const size_t nbytes = static_cast<size_t>(a.nbytes());
  Tensor t;
  {
    // The array stays alive (`a` holds a reference) and numpy does not move
    // its buffer; another thread writing into it meanwhile is the caller's
    // race, as with any buffer-protocol consumer.
    py::gil_scoped_release release;
    t = Tensor(dtype, std::move(shape));
    if (nbytes > 0) std::memcpy(t.mutable_bytes()->data(), src, nbytes);
  }
  return t;
}

// The numpy dtype of a psd dtype; bfloat16 has none in numpy, its raw bits
// travel as uint16.
py::dtype NumpyDtype(DataType dtype) {
  switch (dtype) {
    case DT_FLOAT: return py::dtype("float32");
    case DT_DOUBLE: return py::dtype("float64");
    case DT_HALF: return py::dtype("float16");
    case DT_BFLOAT16: return py::dtype("uint16");
    case DT_INT8: return py::dtype("int8");
    case DT_INT16: return py::dtype("int16");
    case DT_INT32: return py::dtype("int32");
    case DT_INT64: return py::dtype("int64");
    case DT_UINT8: return py::dtype("uint8");
    case DT_BOOL: return py::dtype("bool");
    case DT_STRING: return py::dtype("object");
    default: throw py::type_error("no numpy dtype for " + DataTypeName(dtype));
  }
}

// Moves `t` into an array that owns it: no copy of fixed-size elements.
py::array ToNumpy(Tensor&& t) {
  const std::vector<int64_t>& dims = t.shape().dims();
  std::vector<py::ssize_t> shape(dims.begin(), dims.end());
  if (t.dtype() == DT_STRING) {
    py::array out(py::dtype("object"), shape);
    PyObject** items = static_cast<PyObject**>(out.mutable_data());
    const std::vector<std::string>& values = t.strings();
    for (size_t i = 0; i < values.size(); ++i) {
      PyObject* b = PyBytes_FromStringAndSize(values[i].data(), values[i].size());
      if (b == nullptr) throw py::error_already_set();
      Py_XDECREF(items[i]);  // numpy filled the array with None
      items[i] = b;
    }
    return out;
  }
  py::dtype dt = NumpyDtype(t.dtype());
  auto* owned = new Tensor(std::move(t));
  py::capsule base(owned, [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(dt, shape, owned->mutable_bytes()->data(), base);
}

// ---------------------------------------------------------------------------
// Session and its objects

struct SessionHolder {
  // Shared by every op, exclusive by close(): ops never see a destroyed
  // Session.
  std::shared_mutex mu;
  std::unique_ptr<Session> session;  // null once closed
  // Serializes the scope stack (thread-compatible in C++). Taken after mu.
  std::mutex graph_mu;
  // Scopes entered from Python and not exited yet, by entry order: close()
  // exits them before the session goes.
  std::map<int64_t, VariableScope> scopes;
  int64_t next_scope = 0;

  ~SessionHolder() { CloseLocked(); }

  void CloseLocked() {
    for (auto it = scopes.rbegin(); it != scopes.rend(); ++it) (void)it->second.Exit();
    scopes.clear();
    session.reset();
  }
  Session* Get() {
    if (session == nullptr) Throw(absl::FailedPreconditionError("the psclient session is closed"));
    return session.get();
  }
};
using HolderPtr = std::shared_ptr<SessionHolder>;

// A Variable and the session it needs alive.
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

struct PyVariable {
  HolderPtr holder;
  Variable var;
};

// A variable scope entered from Python; exit() leaves it.
struct PyScope {
  HolderPtr holder;
  int64_t id = -1;
  CapturedScope entered;  // as of entry (its name is the full path)
};

// Runs `fn` on the live session without the GIL.
template <typename Fn>
auto Run(const HolderPtr& h, Fn&& fn) {
  py::gil_scoped_release release;
  std::shared_lock<std::shared_mutex> lock(h->mu);
  h->Get();
  return fn();
}
// The same, also holding the scope-stack lock.
template <typename Fn>
auto RunGraph(const HolderPtr& h, Fn&& fn) {
  py::gil_scoped_release release;
  std::shared_lock<std::shared_mutex> lock(h->mu);
  std::lock_guard<std::mutex> graph(h->graph_mu);
  Session* s = h->Get();
  return fn(s);
}

std::optional<TensorShape> OptionalShape(const std::optional<std::vector<int64_t>>& dims) {
  if (!dims.has_value()) return std::nullopt;
  return Unwrap(TensorShape::Make(*dims, "shape"), /*naming=*/true);
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

// Data ops returning the value after the update when asked.
using UpdateFn = absl::Status (Variable::*)(const Tensor&, Tensor*) const;
py::object Update(const PyVariable& v, UpdateFn fn, const py::handle& value, bool read_value) {
  Tensor t = ToTensor(value, v.var.dtype());
  std::optional<Tensor> after;
  if (read_value) after.emplace();
  Check(Run(v.holder, [&] { return (v.var.*fn)(t, after.has_value() ? &*after : nullptr); }));
  if (!after.has_value()) return py::none();
  return ToNumpy(std::move(*after));
}

using ScatterFn = absl::Status (Variable::*)(const Tensor&, const Tensor&) const;
void Scatter(const PyVariable& v, ScatterFn fn, const py::handle& indices, int indices_dtype,
             const py::handle& updates) {
  Tensor i = ToTensor(indices, indices_dtype);
  Tensor u = ToTensor(updates, v.var.dtype());
  Check(Run(v.holder, [&] { return (v.var.*fn)(i, u); }));
}

// ---------------------------------------------------------------------------
// ShardClient / ShardApplier (low level: one shard, names as the shard
// knows them).

struct PyShard {
  std::unique_ptr<client::ShardClient> client;
};

py::dict VariableInfoToDict(const client::VariableInfo& info) {
  py::dict d;
  d["name"] = info.name;
  d["dtype"] = static_cast<int>(info.dtype);
  d["shape"] = info.shape.dims();
  d["initialized"] = info.initialized;
  d["version"] = info.version;
  d["device"] = info.device;
  d["bytes"] = info.bytes;
  return d;
}

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

// An optimizer config as an opaque Python object (stl.h would turn the bare
// std::variant into its alternatives).
struct PyOptimizerConfig {
  client::OptimizerConfig config;
};

// A Session-level optimizer and the session it needs alive.
struct PyOptimizer {
  HolderPtr holder;
  std::unique_ptr<client::Optimizer> opt;
};

client::ClientOptions MakeClientOptions(double timeout_s, const ChannelSecurity& security) {
  client::ClientOptions o;
  if (timeout_s > 0) o.timeout = absl::Seconds(timeout_s);
  o.security = security;
  return o;
}

}  // namespace

PYBIND11_MODULE(_psclient, m) {
  m.doc() = "psd C++ client binding; use the psclient package, not this module";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      py::object errors = py::module_::import("psclient.errors");
      py::object exc = errors.attr("_from_status")(e.code, e.message, e.naming);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });

  // TLS files and the bearer-token file of every channel a session, saver or
  // shard client opens (psd/channel_security.h); all empty: plaintext.
  py::class_<ChannelSecurity>(m, "ChannelSecurity")
      .def(py::init([](std::string tls_ca, std::string tls_cert, std::string tls_key,
                       std::string token_file) {
             ChannelSecurity s;
             s.tls_ca = std::move(tls_ca);
             s.tls_cert = std::move(tls_cert);
             s.tls_key = std::move(tls_key);
             s.token_file = std::move(token_file);
             return s;
           }),
           py::arg("tls_ca") = "", py::arg("tls_cert") = "", py::arg("tls_key") = "",
           py::arg("token_file") = "")
      .def_readonly("tls_ca", &ChannelSecurity::tls_ca)
      .def_readonly("tls_cert", &ChannelSecurity::tls_cert)
      .def_readonly("tls_key", &ChannelSecurity::tls_key)
      .def_readonly("token_file", &ChannelSecurity::token_file);

  // dtypes: the wire enum (TensorFlow's numbering) and its facts.
  py::dict dtypes;
  for (int d = 1; d < 64; ++d) {
    if (IsSupportedDataType(d)) dtypes[py::str(DataTypeName(d))] = d;
  }
  m.attr("DTYPES") = dtypes;
  m.def("dtype_size", [](int d) { return DataTypeSize(CheckedDtype(d)); });
  m.def("dtype_is_numeric", [](int d) { return IsNumeric(CheckedDtype(d)); });
  m.def("dtype_is_floating", [](int d) { return IsFloating(CheckedDtype(d)); });
  m.def("dtype_is_integer", [](int d) { return IsInteger(CheckedDtype(d)); });
  m.def("numpy_dtype", [](int d) { return NumpyDtype(CheckedDtype(d)); });
  // A Tensor round trip with no server: numpy -> Tensor -> numpy (tests).
  m.def("_round_trip", [](const py::handle& a, int dtype) { return ToNumpy(ToTensor(a, dtype)); });

  // Initializers and partitioners are opaque specs built here.
  py::class_<InitializerSpec>(m, "InitializerSpec")
      .def("__repr__", [](const InitializerSpec& s) {
        return "<InitializerSpec " + s.ShortDebugString() + ">";
      });
  m.def("init_zeros", &client::init::Zeros);
  m.def("init_ones", &client::init::Ones);
  m.def("init_constant", [](const py::handle& value, int dtype) {
    return client::init::Constant(ToTensor(value, dtype));
  });
  m.def("init_random_uniform", &client::init::RandomUniform);
  m.def("init_random_normal", &client::init::RandomNormal);
  m.def("init_truncated_normal", &client::init::TruncatedNormal);
  m.def("init_uniform_unit_scaling", &client::init::UniformUnitScaling, py::arg("factor"),
        py::arg("seed"), py::arg("full_shape") = std::vector<int64_t>{});
  m.def("init_default", &client::init::Default);
  m.def("init_from_variable", &client::init::FromVariable, py::arg("source"), py::arg("scale"),
        py::arg("offset"));

  py::class_<PartitionerSpec>(m, "PartitionerSpec")
      .def("__repr__", [](const PartitionerSpec& s) {
        return "<PartitionerSpec " + s.ShortDebugString() + ">";
      });
  m.def("partitioner_fixed_size", &client::partitioners::FixedSize);
  m.def("partitioner_variable_axis_size", &client::partitioners::VariableAxisSize);
  m.def("partitioner_min_max", &client::partitioners::MinMax);

  m.attr("REUSE_FALSE") = static_cast<int>(REUSE_FALSE);
  m.attr("REUSE_TRUE") = static_cast<int>(REUSE_TRUE);
  m.attr("REUSE_AUTO") = static_cast<int>(REUSE_AUTO);

  py::class_<CapturedScope>(m, "CapturedScope")
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
        std::lock_guard<std::mutex> graph(s.holder->graph_mu);
        auto it = s.holder->scopes.find(s.id);
        return it == s.holder->scopes.end() ? s.entered : it->second.captured();
      })
      .def("reuse_variables", [](PyScope& s) {
        std::lock_guard<std::mutex> graph(s.holder->graph_mu);
        auto it = s.holder->scopes.find(s.id);
        if (it != s.holder->scopes.end()) it->second.reuse_variables();
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
      .def_property_readonly("collections", [](const PyVariable& v) { return v.var.collections(); })
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
        Tensor i = ToTensor(indices, indices_dtype);
        return ToNumpy(Unwrap(Run(v.holder, [&] { return v.var.Gather(i); })));
      })
      .def("assign", [](const PyVariable& v, const py::handle& x, bool read_value,
                        bool validate_shape) {
        if (validate_shape) {
          return Update(v, static_cast<UpdateFn>(&Variable::Assign), x, read_value);
        }
        // A new shape: the value is converted as given, not to the old shape.
        Tensor t = ToTensor(x, v.var.dtype());
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
        std::shared_lock<std::shared_mutex> lock(h->mu);
        return h->session == nullptr;
      })
      .def_property_readonly("id", [](const HolderPtr& h) {
        std::shared_lock<std::shared_mutex> lock(h->mu);
        return h->Get()->id();
      })
      .def_property_readonly("coordinator_address", [](const HolderPtr& h) {
        std::shared_lock<std::shared_mutex> lock(h->mu);
        return h->Get()->coordinator_address();
      })
      .def("get_variable",
           [](const HolderPtr& h, const std::string& name, std::optional<std::vector<int64_t>> shape,
              int dtype, std::optional<InitializerSpec> initializer,
              const py::object& initial_value, int initial_dtype,
              std::optional<PartitionerSpec> partitioner, std::optional<int> reuse,
              std::optional<bool> trainable, std::vector<std::string> collections,
              bool initialize, std::string declared_at,
              std::optional<std::string> caching_device) {
             client::GetVariableOptions o;
             o.caching_device = std::move(caching_device);
             o.shape = OptionalShape(shape);
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
        std::shared_lock<std::shared_mutex> lock(h->mu);
        std::lock_guard<std::mutex> graph(h->graph_mu);
        return h->Get()->current_scope();
      })
      .def("reuse_variables", [](const HolderPtr& h) {
        std::shared_lock<std::shared_mutex> lock(h->mu);
        std::lock_guard<std::mutex> graph(h->graph_mu);
        h->Get()->ReuseVariables();
        // Keep the Python-entered scope objects in step with the stack.
        if (!h->scopes.empty()) h->scopes.rbegin()->second.reuse_variables();
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

  // Low level: one shard, by address.
  py::class_<PyShard>(m, "ShardClient")
      .def_static("connect", [](const std::string& address, double timeout_s,
                                const ChannelSecurity& security) {
        std::unique_ptr<client::ShardClient> c;
        {
          py::gil_scoped_release release;
          c = Unwrap(client::ShardClient::Connect(address, MakeClientOptions(timeout_s, security)));
        }
        return PyShard{std::move(c)};
      }, py::arg("address"), py::arg("timeout_s") = 0.0, py::arg("security") = ChannelSecurity())
      .def_property_readonly("address", [](const PyShard& s) { return s.client->address(); })
      .def("list", [](const PyShard& s, const std::string& prefix) {
        std::vector<client::VariableInfo> infos;
        {
          py::gil_scoped_release release;
          infos = Unwrap(s.client->List(prefix));
        }
        py::list out;
        for (const auto& i : infos) out.append(VariableInfoToDict(i));
        return out;
      })
      .def("create", [](const PyShard& s, const std::string& name, int dtype,
                        std::vector<int64_t> shape, const InitializerSpec& init) {
        TensorShape ts = Unwrap(TensorShape::Make(shape, "shape"));
        const DataType dt = CheckedDtype(dtype);
        client::VariableInfo info;
        {
          py::gil_scoped_release release;
          info = Unwrap(s.client->Create(name, dt, ts, init));
        }
        return VariableInfoToDict(info);
      })
      .def("delete", [](const PyShard& s, const std::string& name) {
        py::gil_scoped_release release;
        Check(s.client->Delete(name));
      })
      .def("read", [](const PyShard& s, const std::string& name) {
        absl::StatusOr<Tensor> t;
        {
          py::gil_scoped_release release;
          t = s.client->Read(name);
        }
        return ToNumpy(Unwrap(std::move(t)));
      });

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
        std::shared_lock<std::shared_mutex> lock(h->mu);
        return PyOptimizer{h, std::make_unique<client::Optimizer>(*h->Get(), c.config)};
      }))
      .def("apply_gradients", [](PyOptimizer& o, const py::list& grads) {
        std::vector<std::pair<client::Gradient, Variable>> pairs;
        pairs.reserve(grads.size());
        for (const py::handle& item : grads) {
          py::tuple t = item.cast<py::tuple>();
          const PyVariable& v = t[0].cast<const PyVariable&>();
          if (t.size() == 2) {
            pairs.emplace_back(ToTensor(t[1], v.var.dtype()), v.var);
          } else {
            client::IndexedSlices slices;
            slices.indices = ToTensor(t[1], t[2].cast<int>());
            slices.values = ToTensor(t[3], v.var.dtype());
            if (t.size() > 4 && !t[4].is_none()) {
              slices.dense_shape =
                  Unwrap(TensorShape::Make(t[4].cast<std::vector<int64_t>>(), "dense_shape"));
            }
            pairs.emplace_back(std::move(slices), v.var);
          }
        }
        Check(Run(o.holder, [&] { return o.opt->ApplyGradients(pairs); }));
      })
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

  // The coordinator-side Saver (saver.h). Every call is an RPC: GIL released.
  py::class_<client::Saver>(m, "Saver")
      .def(py::init([](const std::string& coordinator, const std::string& latest_filename,
                       double timeout_s, const ChannelSecurity& security,
                       std::optional<int> max_to_keep,
                       std::optional<double> keep_checkpoint_every_n_hours,
                       std::vector<std::string> variables,
                       std::map<std::string, std::string> name_map) {
             client::SaverOptions o;
             o.latest_filename = latest_filename;
             if (timeout_s > 0) o.timeout = absl::Seconds(timeout_s);
             o.security = security;
             o.max_to_keep = max_to_keep;
             o.keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours;
             o.variables = std::move(variables);
             o.name_map = std::move(name_map);
             return Unwrap(client::Saver::Create(coordinator, o));
           }),
           py::arg("coordinator"), py::arg("latest_filename") = "", py::arg("timeout_s") = 0.0,
           py::arg("security") = ChannelSecurity(), py::arg("max_to_keep") = py::none(),
           py::arg("keep_checkpoint_every_n_hours") = py::none(),
           py::arg("variables") = std::vector<std::string>(),
           py::arg("name_map") = std::map<std::string, std::string>())
      .def("save", [](client::Saver& s, const std::string& prefix,
                      std::optional<int64_t> global_step) {
        client::SaveDetails d;
        {
          py::gil_scoped_release release;
          Unwrap(s.Save(prefix, global_step, &d));
        }
        py::dict out;
        out["prefix"] = d.prefix;
        out["bytes"] = d.bytes;
        out["fence_pause_s"] = absl::ToDoubleSeconds(d.fence_pause);
        out["copied_bytes"] = d.copied_bytes;
        out["seconds"] = d.seconds;
        out["deleted"] = d.deleted;
        return out;
      })
      .def("restore", [](client::Saver& s, const std::string& prefix,
                         std::vector<std::string> variables,
                         std::map<std::string, std::string> name_map) {
        client::RestoreOptions o;
        o.variables = std::move(variables);
        o.name_map = std::move(name_map);
        py::gil_scoped_release release;
        Check(s.Restore(prefix, o));
      })
      .def("last_checkpoints", [](client::Saver& s) {
        py::gil_scoped_release release;
        return Unwrap(s.LastCheckpoints());
      })
      .def("latest_checkpoint", [](client::Saver& s, const std::string& dir) {
        py::gil_scoped_release release;
        return Unwrap(s.LatestCheckpoint(dir));
      })
      .def("get_checkpoint_state", [](client::Saver& s, const std::string& dir) {
        std::optional<client::CheckpointStateInfo> info;
        {
          py::gil_scoped_release release;
          info = Unwrap(s.GetCheckpointState(dir));
        }
        if (!info.has_value()) return py::object(py::none());
        return py::object(py::make_tuple(info->model_checkpoint_path,
                                         info->all_model_checkpoint_paths));
      });

  py::class_<client::ShardApplier>(m, "ShardApplier")
      .def_static("connect", [](const std::string& address, double timeout_s,
                                const ChannelSecurity& security) {
        py::gil_scoped_release release;
        return Unwrap(
            client::ShardApplier::Connect(address, MakeClientOptions(timeout_s, security)));
      }, py::arg("address"), py::arg("timeout_s") = 0.0, py::arg("security") = ChannelSecurity())
      .def_property_readonly("address", &client::ShardApplier::address)
      .def("apply_dense", [](client::ShardApplier& a, const std::string& var,
                             const PyOptimizerConfig& c, const py::handle& grad, int dtype) {
        Tensor g = ToTensor(grad, dtype);
        py::gil_scoped_release release;
        return Unwrap(a.ApplyDense(var, c.config, g));
      })
      .def("apply_sparse", [](client::ShardApplier& a, const std::string& var,
                              const PyOptimizerConfig& c, const py::handle& indices,
                              int indices_dtype, const py::handle& values, int dtype) {
        client::SparseGradient g{ToTensor(indices, indices_dtype), ToTensor(values, dtype)};
        py::gil_scoped_release release;
        return Unwrap(a.ApplySparse(var, c.config, g));
      });
}

}  // namespace python
}  // namespace psd
