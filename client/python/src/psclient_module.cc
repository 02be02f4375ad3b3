// psclient._psclient: the pybind11 binding of the C++ client (session.h,
// variable.h, client.h, initializers.h, optimizer.h, optimizer_ops.h,
// saver.h). It adds no client
// logic: it converts numpy arrays to psd::Tensor and back, releases the GIL
// around every RPC, and turns a non-OK absl::Status into the exception class
// psclient.errors picks for its code. The Python idiom (context managers,
// dtypes, TensorFlow names) lives in the psclient package around it.
//
// Copies. An array going into a data op (assign and assign_add/sub,
// scatter_*, gather's indices, an optimizer's gradients, an embedding
// table's keys and rows; a C-contiguous array of the variable's dtype is
// taken as it is, no Python-level copy) is not copied at all: the op's
// Tensor borrows the array's memory (ViewOf, Tensor::Borrowing) for the
// synchronous call, and the call lends it on to gRPC, so the kernel's copy
// into the socket is the only one. Where a value is kept past the call (an
// initial value, an initializer's constant, an import's rows) it is copied
// once, in one pass and with the GIL released when it is big, into the
// bytes a Tensor owns (ToTensor). A Tensor coming out (read, gather,
// read_value) is moved to the heap and handed to numpy with a capsule that
// deletes it: the array owns the received bytes, no copy. Strings are the
// exception both ways: one Python bytes object per element.
//
// The GIL. Every call that can wait on the network (a data op, a session,
// saver or optimizer call, the locks those calls hold while they wait) runs
// with the GIL released; it is retaken only to build the result. Python
// threads calling at once are inside the C++ client together, where their
// ops share the client's self-batching data stream (client.h). psclient has
// no async API of its own.
//
// Thread-safety: every object here may be used from several Python threads.
// A session's scope stack is thread-compatible in C++; SessionHolder
// serializes the calls that touch it (graph_mu). close() waits for ops in
// flight (mu exclusive) and later ops fail with FAILED_PRECONDITION.
//
// The module is defined here (errors, ChannelSecurity); each area is bound
// by a file of its own (binding.h): bind_tensors.cc, bind_session.cc,
// bind_optimizers.cc, bind_saver.cc, bind_shard.cc.
#include <pybind11/pybind11.h>

#include <exception>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "binding.h"
#include "psd/channel_security.h"

namespace psd {
namespace python {

PYBIND11_MODULE(_psclient, m) {
  m.doc() = "psd C++ client binding; use the psclient package, not this module";
  // abseil's mutex deadlock detection is a debugging aid that Debian's
  // abseil leaves on: every lock of the client's data path then also
  // updates a process-wide lock-order graph under one global lock, which
  // Python threads calling at once contend for. The shards turn it off
  // for the same reason (server/shard/process_tuning.h). It only reports:
  // no lock behaves otherwise without it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

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

  BindTensors(m);
  BindSession(m);
  BindOptimizers(m);
  BindSaver(m);
  BindShard(m);
  BindEmbedding(m);
}

}  // namespace python
}  // namespace psd
