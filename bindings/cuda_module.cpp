// rnncore._cuda: the pybind11 module of the CUDA stack driver (cpp/cuda/api.hpp). Built only
// when CMake finds a CUDA compiler; rnncore.cuda imports it and never lets its absence break
// `import rnncore`.
//
// It takes device arrays as descriptors that rnncore.cuda builds from __cuda_array_interface__ or
// DLPack: a tuple (pointer, shape, dtype, device) with dtype one of "float32", "float64",
// "int64". It checks every descriptor against the shape the cell and sizes imply (a ValueError or
// TypeError naming the argument, the expected and the actual value), and that all share one
// device, before any CUDA call; outputs are allocated by the caller (in the caller's array
// library, on its device). Work is queued on the given stream and not waited for.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "api.hpp"
#include "common.hpp"
#include "cublas.hpp"
#include "rnncore/cells.hpp"

namespace py = pybind11;
using rnncore::Index;
namespace rc = rnncore::cuda;

namespace {

using rnncore::bindings::def_stack_properties;
using rnncore::bindings::is_float64;
using rnncore::bindings::read_stack_arrays;
using rnncore::bindings::shape_str;
using rnncore::bindings::stack_shape;

struct Desc {
  std::uintptr_t ptr = 0;
  std::vector<Index> shape;
  std::string dtype;
  int device = -1;
};

Desc parse(const py::handle& obj, const std::string& name) {
  if (!py::isinstance<py::tuple>(obj) || py::len(obj) != 4)
    throw py::type_error(name + " must be a device array descriptor (pointer, shape, dtype, "
                                "device), got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto t = py::reinterpret_borrow<py::tuple>(obj);
  Desc d;
  d.ptr = t[0].cast<std::uintptr_t>();
  d.shape = t[1].cast<std::vector<Index>>();
  d.dtype = t[2].cast<std::string>();
  d.device = t[3].cast<int>();
  return d;
}

// The arrays of one call: all on one device, each checked by name.
class Checker {
 public:
  Checker(int device, std::string dtype) : device_(device), dtype_(std::move(dtype)) {}

  template <class T>
  T* get(const py::handle& obj, const std::string& name, const std::vector<Index>& shape,
         const char* dtype = nullptr) {
    const Desc d = parse(obj, name);
    const std::string want = dtype ? dtype : dtype_;
    if (d.dtype != want)
      throw py::type_error(name + " must have dtype " + want + ", got " + d.dtype);
    if (d.shape != shape)
      throw py::value_error(name + " must have shape " + shape_str(shape) + ", got " +
                            shape_str(d.shape));
    if (d.device != device_)
      throw py::value_error(name + " must be on cuda:" + std::to_string(device_) + " (where x is), got " +
                            (d.device < 0 ? std::string("host memory") : "cuda:" + std::to_string(d.device)));
    Index count = 1;
    for (Index n : shape) count *= n;
    if (d.ptr == 0 && count > 0) throw py::value_error(name + " has a null data pointer");
    return reinterpret_cast<T*>(d.ptr);
  }
  template <class T>
  T* optional(const py::object& obj, const std::string& name, const std::vector<Index>& shape) {
    return obj.is_none() ? nullptr : get<T>(obj, name, shape);
  }

 private:
  int device_;
  std::string dtype_;
};

class Stack {
 public:
  Stack(const std::string& cell, Index input_size, Index hidden_size, Index num_layers,
        bool bidirectional, const py::object& dtype)
      : info_(rnncore::find_cell(cell)),
        shape_(stack_shape(input_size, hidden_size, num_layers, bidirectional)),
        double_(is_float64(dtype)) {}

  // x: (T, B, I) descriptor; params: name -> descriptor; h0, c0: (L*D, B, H) or None; lengths:
  // a host int64 numpy array (B,) or None; y, h_n, c_n: output descriptors (c_n None for cells
  // without a cell state).
  void forward(const py::object& x, const py::dict& params, const py::object& h0,
               const py::object& c0, const py::object& lengths, const py::object& y,
               const py::object& h_n, const py::object& c_n, bool training, double dropout,
               uint64_t seed, std::uintptr_t stream) {
    const auto lock = lock_without_gil();
    if (double_) forward_t<double>(x, params, h0, c0, lengths, y, h_n, c_n, training, dropout, seed, stream);
    else forward_t<float>(x, params, h0, c0, lengths, y, h_n, c_n, training, dropout, seed, stream);
  }

  void backward(const py::dict& params, const py::dict& grads, const py::object& dy,
                const py::object& dh_n, const py::object& dc_n, const py::object& dx,
                const py::object& dh0, const py::object& dc0, std::uintptr_t stream) {
    const auto lock = lock_without_gil();
    if (double_) backward_t<double>(params, grads, dy, dh_n, dc_n, dx, dh0, dc0, stream);
    else backward_t<float>(params, grads, dy, dh_n, dc_n, dx, dh0, dc0, stream);
  }

  bool ready() const { return ctx_.ready(); }
  std::size_t nbytes() const { return ctx_.bytes(); }
  void release() {
    const auto lock = lock_without_gil();
    ctx_.release();
  }
  std::string cell() const { return info_.name; }
  py::dtype dtype() const { return double_ ? py::dtype::of<double>() : py::dtype::of<float>(); }
  // (T, B) of the pending training forward.
  py::object pending() const {
    if (!ctx_.ready()) return py::none();
    return py::make_tuple(last_.seq_len, last_.batch);
  }

 private:
  // One call at a time per stack (a call releases the GIL while it queues work).
  std::unique_lock<std::mutex> lock_without_gil() {
    return rnncore::bindings::lock_without_gil(mutex_);
  }

  Index directions() const { return shape_.directions(); }
  Index entries() const { return shape_.num_layers * directions(); }
  const char* dtype_name() const { return double_ ? "float64" : "float32"; }

  // The arrays of every layer-direction, found by name in `d` and checked as device arrays of
  // the call's device and dtype (read_stack_arrays, common.hpp).
  template <class Slots, class T>
  std::vector<Slots> read_layers(Checker& check, const py::dict& d, const char* what) const {
    const auto get = [&](const std::string& key, const std::vector<Index>& shape) -> T* {
      if (!d.contains(key)) return nullptr;
      return check.get<T>(d[py::str(key)], std::string(what) + "[" + key + "]", shape);
    };
    return read_stack_arrays<Slots, T>(info_, shape_, what, get);
  }

  template <class T>
  void forward_t(const py::object& x, const py::dict& params, const py::object& h0,
                 const py::object& c0, const py::object& lengths, const py::object& y,
                 const py::object& h_n, const py::object& c_n, bool training, double dropout,
                 uint64_t seed, std::uintptr_t stream) {
    const Desc xd = parse(x, "x");
    if (xd.shape.size() != 3)
      throw py::value_error("x must be 3-D (T, B, input_size), got shape " + shape_str(xd.shape));
    if (xd.device < 0) throw py::value_error("x must be a CUDA device array, got host memory");
    rc::Shape shape = shape_;
    shape.seq_len = xd.shape[0];
    shape.batch = xd.shape[1];
    const Index T_ = shape.seq_len, B = shape.batch, H = shape.hidden_size;
    const std::vector<Index> states{entries(), B, H};
    Checker check(xd.device, dtype_name());
    const T* xp = check.get<const T>(x, "x", {T_, B, shape.input_size});
    auto w = read_layers<rc::LayerWeights<T>, const T>(check, params, "params");
    const T* h0p = check.optional<const T>(h0, "h0", states);
    const bool cell_state = info_.states == 2;
    const T* c0p = cell_state ? check.optional<const T>(c0, "c0", states) : nullptr;
    T* yp = check.get<T>(y, "y", {T_, B, directions() * H});
    T* hnp = check.get<T>(h_n, "h_n", states);
    T* cnp = cell_state ? check.get<T>(c_n, "c_n", states) : nullptr;
    std::vector<int64_t> host_lengths;
    if (!lengths.is_none()) {
      auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(lengths);
      if (!a || a.ndim() != 1 || a.shape(0) != B)
        throw py::value_error("lengths must be a host int64 array of shape (" + std::to_string(B) +
                              ",)");
      host_lengths.assign(a.data(), a.data() + B);
      for (Index b = 0; b < B; ++b)
        if (host_lengths[std::size_t(b)] < 0 || host_lengths[std::size_t(b)] > T_)
          throw py::value_error("lengths[" + std::to_string(b) + "] must be in [0, " +
                                std::to_string(T_) + "], got " +
                                std::to_string(host_lengths[std::size_t(b)]));
    }
    const int64_t* lp = host_lengths.empty() ? nullptr : host_lengths.data();
    {
      py::gil_scoped_release nogil;
      rnncore::with_cell(info_.name, [&](auto tag) {
        using Cell = typename decltype(tag)::type;
        rc::forward<Cell, T>(ctx_, xd.device, shape, w, training, dropout, seed, xp, h0p, c0p,
                             lp, yp, hnp, cnp, reinterpret_cast<void*>(stream));
      });
    }
    if (training) last_ = shape, device_ = xd.device;
  }

  template <class T>
  void backward_t(const py::dict& params, const py::dict& grads, const py::object& dy,
                  const py::object& dh_n, const py::object& dc_n, const py::object& dx,
                  const py::object& dh0, const py::object& dc0, std::uintptr_t stream) {
    if (!ctx_.ready())
      throw std::logic_error(
          "backward() needs the workspace of a training-mode forward; it was never filled or was "
          "already consumed by an earlier backward()");
    const rc::Shape& shape = last_;
    const Index T_ = shape.seq_len, B = shape.batch, H = shape.hidden_size;
    const std::vector<Index> states{entries(), B, H};
    Checker check(device_, dtype_name());
    auto w = read_layers<rc::LayerWeights<T>, const T>(check, params, "params");
    auto g = read_layers<rc::LayerGradients<T>, T>(check, grads, "grads");
    const T* dyp = check.optional<const T>(dy, "dy", {T_, B, directions() * H});
    const T* dhnp = check.optional<const T>(dh_n, "dh_n", states);
    const bool cell_state = info_.states == 2;
    const T* dcnp = cell_state ? check.optional<const T>(dc_n, "dc_n", states) : nullptr;
    T* dxp = check.optional<T>(dx, "dx", {T_, B, shape.input_size});
    T* dh0p = check.optional<T>(dh0, "dh0", states);
    T* dc0p = cell_state ? check.optional<T>(dc0, "dc0", states) : nullptr;
    py::gil_scoped_release nogil;
    rnncore::with_cell(info_.name, [&](auto tag) {
      using Cell = typename decltype(tag)::type;
      rc::backward<Cell, T>(ctx_, w, dyp, dhnp, dcnp, dxp, dh0p, dc0p, g,
                            reinterpret_cast<void*>(stream));
    });
  }

  rnncore::CellInfo info_;
  rc::Shape shape_, last_;
  int device_ = -1;
  bool double_ = false;
  rc::Context ctx_;
  std::mutex mutex_;
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "rnncore's CUDA stack driver (device arrays as (pointer, shape, dtype, device))";
  py::class_<Stack> stack(m, "Stack");
  stack
      .def(py::init<const std::string&, Index, Index, Index, bool, const py::object&>(),
           py::arg("cell"), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("num_layers") = 1, py::arg("bidirectional") = false,
           py::arg("dtype") = py::dtype::of<float>())
      .def("forward", &Stack::forward, py::arg("x"), py::arg("params"), py::arg("h0"),
           py::arg("c0"), py::arg("lengths"), py::arg("y"), py::arg("h_n"), py::arg("c_n"),
           py::arg("training"), py::arg("dropout"), py::arg("seed"), py::arg("stream"),
           "Queues the forward pass on `stream`; writes y, h_n (and c_n).")
      .def("backward", &Stack::backward, py::arg("params"), py::arg("grads"), py::arg("dy"),
           py::arg("dh_n"), py::arg("dc_n"), py::arg("dx"), py::arg("dh0"), py::arg("dc0"),
           py::arg("stream"),
           "Queues BPTT through the last training forward (consumed); ADDS into grads.");
  def_stack_properties(stack)
      .def_property_readonly("pending", &Stack::pending)
      .def("release", &Stack::release, "Frees the device memory the stack holds.");
  m.def("device_count", &rc::device_count, "CUDA devices the runtime sees (0 without a driver).");
  m.def("device_error", &rc::device_error, "Why device_count() is 0, or ''.");
  m.def("runtime_version", &rc::runtime_version);
  m.def("device_of", [](std::uintptr_t p) { return rc::device_of(reinterpret_cast<const void*>(p)); },
        py::arg("pointer"), "The device a pointer belongs to, or -1 (host or unknown).");
  m.def("set_cublas_path", &rc::blas::set_library_path, py::arg("path"),
        "The cuBLAS library file to try first (before the sonames on the loader's path).");
  m.def("load_cublas", [] {
        rc::blas::api();
        return rc::blas::loaded_library();
      },
      "Loads cuBLAS now; returns the file loaded (RuntimeError listing what was tried).");
  m.def("cublas_library", &rc::blas::loaded_library, "The cuBLAS file loaded, or ''.");
  m.def("dropout_scale", &rc::dropout_scale, py::arg("p"), py::arg("seed"), py::arg("layer"),
        py::arg("index"),
        "The inter-layer dropout mask value the device kernel uses, evaluated on the host.");
}
