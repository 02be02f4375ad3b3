// psclient._psclient, low level: one shard by address, names as the
// shard knows them: ShardClient (list, create, delete, read, assign_add,
// its data stream's stats) and ShardApplier (an optimizer's apply on one
// variable); and, for tests, a checkpoint fence that holds a shard's writes.
#include "binding.h"

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "psd/client.h"
#include "psd/grpc_status.h"
#include "psd/optimizer_ops.h"
#include "psd/shard.grpc.pb.h"

namespace psd {
namespace python {
namespace {

// ---------------------------------------------------------------------------
// ShardClient / ShardApplier (low level: one shard, names as the shard
// knows them).

struct PyShard {
  PyShard() = default;
  explicit PyShard(std::unique_ptr<client::ShardClient> c) : client(std::move(c)) {}
  PyShard(PyShard&&) = default;
  PyShard& operator=(PyShard&&) = default;
  ~PyShard() {
    if (client != nullptr) WithoutGil([this] { client.reset(); });
  }
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

// Tests only: holds (Fence) or releases (Unfence, discarding the snapshot)
// the writes of the plaintext shard at `address`, as a checkpoint does, so
// that a test can keep ops in flight for as long as it needs.
absl::Status FenceShard(const std::string& address, uint64_t fence_id, int64_t lease_ms,
                        bool fence) {
  auto stub = Shard::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (fence) {
    FenceRequest request;
    request.set_fence_id(fence_id);
    request.set_lease_ms(lease_ms);
    FenceResponse response;
    return FromGrpcStatus(stub->Fence(&context, request, &response));
  }
  UnfenceRequest request;
  request.set_fence_id(fence_id);
  request.set_discard(true);
  UnfenceResponse response;
  return FromGrpcStatus(stub->Unfence(&context, request, &response));
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
      })
      // `value` must already be a C-contiguous array of the variable's
      // dtype (`dtype`): the low level converts nothing.
      .def("assign_add", [](const PyShard& s, const std::string& name, const py::handle& value,
                            int dtype) {
        Tensor t = ViewOf(value, dtype);
        py::gil_scoped_release release;
        Check(s.client->AssignAdd(name, t));
      })
      // What the client's data streams have done (a debugging aid: ops_sent
      // over messages_sent is how much concurrent calls coalesced).
      .def("data_stream_stats", [](const PyShard& s) {
        const client::DataStreamStats stats = s.client->data_stream_stats();
        py::dict d;
        d["streams_opened"] = stats.streams_opened;
        d["messages_sent"] = stats.messages_sent;
        d["ops_sent"] = stats.ops_sent;
        d["ops_waiting"] = stats.ops_waiting;
        return d;
      });

  m.def("_fence_shard", [](const std::string& address, uint64_t fence_id, int64_t lease_ms) {
    absl::Status st;
    {
      py::gil_scoped_release release;
      st = FenceShard(address, fence_id, lease_ms, /*fence=*/true);
    }
    Check(st);
  });
  m.def("_unfence_shard", [](const std::string& address, uint64_t fence_id) {
    absl::Status st;
    {
      py::gil_scoped_release release;
      st = FenceShard(address, fence_id, 0, /*fence=*/false);
    }
    Check(st);
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
        Tensor g = ViewOf(grad, dtype);
        py::gil_scoped_release release;
        return Unwrap(a.ApplyDense(var, c.config, g));
      })
      .def("apply_sparse", [](client::ShardApplier& a, const std::string& var,
                              const PyOptimizerConfig& c, const py::handle& indices,
                              int indices_dtype, const py::handle& values, int dtype) {
        client::SparseGradient g{ViewOf(indices, indices_dtype), ViewOf(values, dtype)};
        py::gil_scoped_release release;
        return Unwrap(a.ApplySparse(var, c.config, g));
      });
}

}  // namespace python
}  // namespace psd
