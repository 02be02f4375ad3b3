// psclient._psclient: the coordinator-side Saver (save, restore, the
// checkpoint state).
#include "binding.h"

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "psd/saver.h"

namespace psd {
namespace python {

void BindSaver(py::module_& m) {
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
                         std::map<std::string, std::string> name_map, bool reshape) {
        client::RestoreOptions o;
        o.variables = std::move(variables);
        o.name_map = std::move(name_map);
        o.reshape = reshape;
        py::gil_scoped_release release;
        Check(s.Restore(prefix, o));
      })
      .def("last_checkpoints", [](client::Saver& s) {
        py::gil_scoped_release release;
        return Unwrap(s.LastCheckpoints());
      })
      .def("update_checkpoint_state",
           [](client::Saver& s, const std::string& dir, const std::string& model_path,
              const std::vector<std::string>& all_paths) {
             py::gil_scoped_release release;
             Check(s.UpdateCheckpointState(dir, model_path, all_paths));
           })
      .def("set_last_checkpoints_with_time",
           [](client::Saver& s, const std::vector<std::pair<std::string, double>>& checkpoints,
              const std::vector<std::string>& also_dirs) {
             py::gil_scoped_release release;
             Check(s.SetLastCheckpointsWithTime(checkpoints, also_dirs));
           })
      .def("list_checkpoints", [](client::Saver& s, const std::string& dir) {
        std::vector<CheckpointInfo> listed;
        {
          py::gil_scoped_release release;
          listed = Unwrap(s.ListCheckpoints(dir));
        }
        py::list out;
        for (const CheckpointInfo& c : listed) {
          py::dict d;
          d["prefix"] = c.prefix();
          d["kept_forever"] = c.kept_forever();
          d["managed"] = c.managed();
          out.append(d);
        }
        return out;
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
}

}  // namespace python
}  // namespace psd
