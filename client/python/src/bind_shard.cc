// psclient._psclient, low level: one shard by address, names as the
// shard knows them: ShardClient (list, create, delete, read) and
// ShardApplier (an optimizer's apply on one variable).
#include "binding.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "psd/client.h"
#include "psd/optimizer_ops.h"

namespace psd {
namespace python {
namespace {

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

client::ClientOptions MakeClientOptions(double timeout_s, const ChannelSecurity& security) {
  client::ClientOptions o;
  if (timeout_s > 0) o.timeout = absl::Seconds(timeout_s);
  o.security = security;
  return o;
}

}  // namespace

void BindShard(py::module_& m) {
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
