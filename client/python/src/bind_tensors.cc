// psclient._psclient: numpy arrays <-> psd::Tensor (see "Copies" in
// psclient_module.cc), the dtypes' facts, and the initializer and
// partitioner specs.
#include "binding.h"

#include <string>
#include <utility>
#include <vector>

#include "psd/initializers.h"

namespace psd {
namespace python {
namespace {

// Copies smaller than this keep the GIL: releasing and retaking it costs
// more than copying a few KiB, and a scalar op would pay it twice.
constexpr size_t kReleaseGilForCopyBytes = 64 << 10;

std::vector<int64_t> ShapeOf(const py::array& a) {
  std::vector<int64_t> dims(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) dims[i] = a.shape(i);
  return dims;
}

}  // namespace

DataType CheckedDtype(int dtype) {
  Check(ValidateDataType(dtype, "dtype"));
  return static_cast<DataType>(dtype);
}

namespace {

py::array CheckedArray(const py::handle& obj) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error("psclient internal: expected a numpy array");
  }
  return py::reinterpret_borrow<py::array>(obj);
}

// The elements of a fixed-size `dtype` array, checked to be laid out as a
// Tensor's: C-contiguous, items of the dtype's size.
absl::string_view ElementBytes(const py::array& a, DataType dtype) {
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error("psclient internal: array is not C-contiguous");
  }
  if (static_cast<size_t>(a.itemsize()) != DataTypeSize(dtype)) {
    throw py::type_error("psclient internal: array item size " + std::to_string(a.itemsize()) +
                         " does not match " + DataTypeName(dtype));
  }
  return absl::string_view(static_cast<const char*>(a.data()), static_cast<size_t>(a.nbytes()));
}

}  // namespace

Tensor ViewOf(const py::handle& obj, int dtype_int) {
  const DataType dtype = CheckedDtype(dtype_int);
  if (dtype == DT_STRING) return ToTensor(obj, dtype_int);
  py::array a = CheckedArray(obj);
  TensorShape shape = Unwrap(TensorShape::Make(ShapeOf(a), "value"));
  return Unwrap(Tensor::Borrowing(dtype, std::move(shape), ElementBytes(a, dtype)));
}

Tensor ToTensor(const py::handle& obj, int dtype_int) {
  const DataType dtype = CheckedDtype(dtype_int);
  py::array a = CheckedArray(obj);
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
  const absl::string_view elements = ElementBytes(a, dtype);
  const char* src = elements.data();
  const size_t nbytes = elements.size();
  if (nbytes == 0) return Unwrap(Tensor::FromBytes(dtype, std::move(shape), std::string()));
  if (nbytes < kReleaseGilForCopyBytes) {
    return Unwrap(Tensor::FromBytes(dtype, std::move(shape), std::string(src, nbytes)));
  }
  absl::StatusOr<Tensor> t;
  {
    // The array stays alive (`a` holds a reference) and numpy does not move
    // its buffer; another thread writing into it meanwhile is the caller's
    // race, as with any buffer-protocol consumer. The bytes are copied
    // straight into the string the Tensor adopts: one pass over them, no
    // zero fill first (Tensor(dtype, shape) would write every byte twice).
    py::gil_scoped_release release;
    t = Tensor::FromBytes(dtype, std::move(shape), std::string(src, nbytes));
  }
  return Unwrap(std::move(t));
}

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

void BindTensors(py::module_& m) {
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
  // The same through a borrowing view and a copy of it (tests: the copy
  // owns its bytes, so the array it becomes does not alias the argument).
  m.def("_view_round_trip", [](const py::handle& a, int dtype) {
    const Tensor view = ViewOf(a, dtype);
    Tensor copy = view;
    return ToNumpy(std::move(copy));
  });

  // Initializers and partitioners are opaque specs built here.
  py::class_<InitializerSpec>(m, "InitializerSpec")
      .def("__repr__", [](const InitializerSpec& s) {
        return "<InitializerSpec " + s.ShortDebugString() + ">";
      })
      // The wire form, for files that describe variables (meta graphs).
      .def("serialize", [](const InitializerSpec& s) { return py::bytes(s.SerializeAsString()); });
  m.def("initializer_from_bytes", [](const py::bytes& bytes) {
    InitializerSpec spec;
    if (!spec.ParseFromString(std::string(bytes))) {
      throw py::value_error("not a serialized InitializerSpec");
    }
    return spec;
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
}

}  // namespace python
}  // namespace psd
