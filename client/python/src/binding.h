// What the files of psclient._psclient share (see psclient_module.cc):
// errors as exceptions, numpy <-> Tensor conversion, the session holder and
// the objects that keep it alive, and the function each file defines to
// bind its area. Include it from client/python/src only.
#ifndef PSD_CLIENT_PYTHON_SRC_BINDING_H_
#define PSD_CLIENT_PYTHON_SRC_BINDING_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
// Every file binding std containers needs the same casters (an ODR matter).
#include <pybind11/stl.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "psd/dtype.h"
#include "psd/optimizer.h"
#include "psd/session.h"
#include "psd/tensor.h"
#include "psd/variable.h"

namespace py = pybind11;

namespace psd {
namespace python {

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

[[noreturn]] inline void Throw(const absl::Status& s, bool naming = false) {
  throw StatusError{static_cast<int>(s.code()), std::string(s.message()), naming};
}

inline void Check(const absl::Status& s, bool naming = false) {
  if (!s.ok()) Throw(s, naming);
}

template <typename T>
T Unwrap(absl::StatusOr<T> s, bool naming = false) {
  if (!s.ok()) Throw(s.status(), naming);
  return *std::move(s);
}

// ---------------------------------------------------------------------------
// numpy <-> Tensor

// CheckedDtype(dtype): `dtype` as a DataType; INVALID_ARGUMENT (thrown)
// unless it is one psd supports.
DataType CheckedDtype(int dtype);

// `obj` must be a C-contiguous numpy array whose items are `dtype`'s (the
// Python layer converts values to the variable's numpy dtype first; for
// strings an object array of bytes/str). One copy straight into the bytes
// the Tensor adopts (no zero fill), GIL released for big arrays.
Tensor ToTensor(const py::handle& obj, int dtype_int);

// The same array as a Tensor that borrows its elements (Tensor::Borrowing),
// not copied: only for an argument of a synchronous op that the binding's
// caller holds for the whole call (a bound function's own argument; an
// array reached through a container is held by a reference the binding
// keeps). Another Python thread writing into the array meanwhile races
// with the op's read of it, as with any buffer-protocol consumer. Strings
// are converted as by ToTensor.
Tensor ViewOf(const py::handle& obj, int dtype_int);

// The numpy dtype of a psd dtype; bfloat16 has none in numpy, its raw bits
// travel as uint16.
py::dtype NumpyDtype(DataType dtype);

// Moves `t` into an array that owns it: no copy of fixed-size elements.
py::array ToNumpy(Tensor&& t);

// ---------------------------------------------------------------------------
// Session and its objects

// Runs `fn` without the GIL when this thread holds it: for destructors that
// close connections (a Session closes itself on the coordinator, a
// ShardClient ends its streams), which run wherever Python drops the last
// reference. During interpreter shutdown the GIL stays held.
template <typename Fn>
void WithoutGil(Fn&& fn) {
#if PY_VERSION_HEX >= 0x030D0000
  const bool finalizing = Py_IsFinalizing();
#else
  const bool finalizing = _Py_IsFinalizing();
#endif
  if (Py_IsInitialized() && !finalizing && PyGILState_Check()) {
    py::gil_scoped_release release;
    fn();
  } else {
    fn();
  }
}

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

  ~SessionHolder() {
    if (session != nullptr || !scopes.empty()) WithoutGil([this] { CloseLocked(); });
  }

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
struct PyVariable {
  HolderPtr holder;
  Variable var;
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

// Runs `fn` (which must not touch Python objects) under the session's
// shared lock, or under it and the scope-stack lock, taken without the GIL:
// RunGraph holds graph_mu across coordinator calls and close() holds mu
// while ops finish, so waiting for either with the GIL held would stop
// every Python thread for as long as the network takes.
template <typename Fn>
auto Locked(const HolderPtr& h, Fn&& fn) {
  py::gil_scoped_release release;
  std::shared_lock<std::shared_mutex> lock(h->mu);
  return fn();
}
template <typename Fn>
auto LockedGraph(const HolderPtr& h, Fn&& fn) {
  py::gil_scoped_release release;
  std::shared_lock<std::shared_mutex> lock(h->mu);
  std::lock_guard<std::mutex> graph(h->graph_mu);
  return fn();
}

// The variables of `vars`; `vars` as PyVariables of session `h`.
std::vector<Variable> Unpack(const std::vector<PyVariable>& vars);
std::vector<PyVariable> Pack(const HolderPtr& h, std::vector<Variable> vars);

// An optimizer config as an opaque Python object (stl.h would turn the bare
// std::variant into its alternatives).
struct PyOptimizerConfig {
  client::OptimizerConfig config;
};

// Each adds its area's classes and functions to the module, in this order
// (a type must be bound before a later signature or default argument uses
// it); psclient_module.cc binds the errors and ChannelSecurity first.
void BindTensors(py::module_& m);     // bind_tensors.cc: dtypes, conversion, initializers
void BindSession(py::module_& m);     // bind_session.cc: Session, Variable, scopes
void BindOptimizers(py::module_& m);  // bind_optimizers.cc: optimizers, sparse_mask
void BindSaver(py::module_& m);       // bind_saver.cc: the coordinator-side Saver
void BindShard(py::module_& m);       // bind_shard.cc: ShardClient, ShardApplier
void BindEmbedding(py::module_& m);   // bind_embedding.cc: embedding tables

}  // namespace python
}  // namespace psd

#endif  // PSD_CLIENT_PYTHON_SRC_BINDING_H_
