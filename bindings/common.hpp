// What the binding files share (rnncore._core: stack.cpp, step.cpp, linalg.cpp, ctc.cpp;
// rnncore._cuda: cuda_module.cpp), so that each check and each message is written once:
//   - constructor arguments: the sizes of a stack, the dtype (float32 | float64), the precision;
//   - numpy arguments: dtype, shape, layout and writeability, with messages that name the
//     argument, the expected and the actual value; output allocation;
//   - the parameter (or gradient) arrays of every layer-direction, read by PyTorch's names, and
//     the properties both Stack classes show;
//   - the per-object lock taken without holding the GIL, and C++ calls run without the GIL with
//     Ctrl-C turned into KeyboardInterrupt.
// No arithmetic here or anywhere in bindings/.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/common.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/stack.hpp"

namespace rnncore::bindings {

namespace py = pybind11;

inline std::string shape_str(const std::vector<Index>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

// ---- constructor arguments ----------------------------------------------------------------------

// The shape of a stack (seq_len and batch come with each call); ValueError unless the sizes are
// positive.
inline StackShape stack_shape(Index input_size, Index hidden_size, Index num_layers,
                              bool bidirectional) {
  if (input_size <= 0 || hidden_size <= 0 || num_layers <= 0)
    throw py::value_error("input_size, hidden_size and num_layers must be positive, got " +
                          std::to_string(input_size) + ", " + std::to_string(hidden_size) + ", " +
                          std::to_string(num_layers));
  StackShape shape;
  shape.input_size = input_size;
  shape.hidden_size = hidden_size;
  shape.num_layers = num_layers;
  shape.bidirectional = bidirectional;
  return shape;
}

// true for float64, false for float32; ValueError for any other dtype.
inline bool is_float64(const py::object& dtype) {
  const py::dtype dt = py::dtype::from_args(dtype);
  if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
    throw py::value_error("dtype must be float32 or float64, got " + std::string(py::str(dt)));
  return dt.itemsize() == 8;
}

// "float32" or "bf16" (float32 objects only), as the packed GEMMs' precision.
inline Precision parse_precision(const std::string& precision, bool float64) {
  Precision parsed = Precision::kFloat32;
  if (precision == "bf16") parsed = Precision::kBf16;
  else if (precision != "float32")
    throw py::value_error("precision must be 'float32' or 'bf16', got '" + precision + "'");
  if (parsed == Precision::kBf16 && float64)
    throw py::value_error("precision='bf16' needs dtype float32, got float64");
  return parsed;
}

inline std::string precision_name(Precision precision) {
  return precision == Precision::kBf16 ? "bf16" : "float32";
}

// ---- numpy arguments ------------------------------------------------------------------------------

inline std::vector<Index> shape_of(const py::array& a) {
  return std::vector<Index>(a.shape(), a.shape() + a.ndim());
}

// dtype equality by value (a dtype that went through pickle is equal but not the same object),
// byte order included: a big-endian '>f4' array has float32's kind and size, but its bytes read
// as native floats are garbage (numpy's PyArray_EquivTypes compares the byte order too).
template <class T>
bool has_dtype(const py::array& a) {
  return a.dtype().equal(py::dtype::of<std::remove_const_t<T>>());
}

// What a dtype's name hides: a byte order other than the machine's ('>f4' prints as float32).
inline std::string dtype_note(const py::array& a) {
  const char order = py::cast<char>(a.dtype().attr("byteorder"));
  return order == '<' || order == '>' ? " in " + std::string(order == '>' ? "big" : "little") +
                                            "-endian byte order ('" +
                                            std::string(py::str(a.dtype().attr("str"))) +
                                            "'; convert it with .astype(its dtype.newbyteorder('='))"
                                      : "";
}

// A C-contiguous array of element type T and exactly this shape, or a ValueError/TypeError
// naming it.
template <class T>
T* checked(const py::handle& obj, const std::string& name, const std::vector<Index>& shape,
           bool writeable = false) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(name + " must be a numpy array, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<T>(a))
    throw py::type_error(name + " must have dtype " +
                         std::string(py::str(py::dtype::of<std::remove_const_t<T>>())) + ", got " +
                         std::string(py::str(a.dtype())) + dtype_note(a));
  if (shape_of(a) != shape)
    throw py::value_error(name + " must have shape " + shape_str(shape) + ", got " +
                          shape_str(shape_of(a)));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + " must be C-contiguous");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))  // e.g. np.frombuffer at an odd offset
    throw py::value_error(name + " must be aligned to its element size (copy it first)");
  if (writeable && !a.writeable()) throw py::value_error(name + " must be writeable");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

template <class T>
const T* optional_checked(const py::object& obj, const std::string& name,
                          const std::vector<Index>& shape) {
  return obj.is_none() ? nullptr : checked<T>(obj, name, shape);
}

template <class T>
py::array_t<T> empty(const std::vector<Index>& shape) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// An output that only cells with a cell state have: (array, its data) or (None, nullptr).
template <class T>
std::pair<py::object, T*> optional_output(bool wanted, const std::vector<Index>& shape) {
  if (!wanted) return {py::none(), nullptr};
  auto a = empty<T>(shape);
  T* data = a.mutable_data();
  return {std::move(a), data};
}

// ---- parameter arrays by name -----------------------------------------------------------------

// The arrays of one layer-direction, in the order LayerWeights / LayerGradients list them
// (w_ih, w_hh, b_ih, b_hh, w_peephole): get(key, shape) returns the checked array called
// key = stem + suffix, or nullptr when the dict has none. weight_ih, weight_hh and (for peephole
// cells) weight_peephole are required; the biases may be absent (a module without biases), but
// then both. Errors are KeyErrors naming `what` (the dict) and the key.
template <class Slots, class T, class Get>
Slots read_layer_arrays(const CellInfo& info, Index input_size, Index hidden_size,
                        const std::string& suffix, const char* what, Get&& get) {
  const Index G = info.gates, H = hidden_size;
  const auto require = [&](const char* stem, T* p) {
    if (!p) throw py::key_error(std::string(what) + " has no '" + stem + suffix + "'");
    return p;
  };
  const auto array = [&](const char* stem, const std::vector<Index>& shape) -> T* {
    return get(std::string(stem) + suffix, shape);
  };
  T* w_ih = require("weight_ih", array("weight_ih", {G * H, input_size}));
  T* w_hh = require("weight_hh", array("weight_hh", {G * H, H}));
  T* b_ih = array("bias_ih", {G * H});
  T* b_hh = array("bias_hh", {G * H});
  if (bool(b_ih) != bool(b_hh))
    throw py::key_error(std::string(what) + " has only one of bias_ih" + suffix + " and bias_hh" +
                        suffix);
  T* peephole = info.peephole_rows
                    ? require("weight_peephole", array("weight_peephole", {info.peephole_rows, H}))
                    : nullptr;
  return {w_ih, w_hh, b_ih, b_hh, peephole};
}

// The arrays of every layer-direction of a stack (index l*D + d), with PyTorch's suffixes
// (_l{l}, and _reverse for d = 1); `shape` is a StackShape or anything with its sizes.
template <class Slots, class T, class Shape, class Get>
std::vector<Slots> read_stack_arrays(const CellInfo& info, const Shape& shape, const char* what,
                                     Get&& get) {
  std::vector<Slots> out;
  for (Index l = 0; l < shape.num_layers; ++l)
    for (Index dir = 0; dir < shape.directions(); ++dir)
      out.push_back(read_layer_arrays<Slots, T>(
          info, shape.layer_input_size(l), shape.hidden_size,
          "_l" + std::to_string(l) + (dir == 1 ? "_reverse" : ""), what, get));
  return out;
}

inline py::object lookup(const py::dict& d, const std::string& key) {
  return d.contains(key) ? py::reinterpret_borrow<py::object>(d[py::str(key)]) : py::none();
}

// The getter read_layer_arrays takes, over a dict of numpy arrays: the array called key, checked
// as `what[key]` (writeable for gradients), or nullptr when absent. Each array read is appended
// to `keep`, which holds it alive for the call (another thread could replace the dict's entry
// while this one runs without the GIL).
template <class T>
auto dict_arrays(const py::dict& d, const char* what, bool writeable,
                 std::vector<py::object>& keep) {
  return [&d, what, writeable, &keep](const std::string& key,
                                      const std::vector<Index>& shape) -> T* {
    py::object a = lookup(d, key);
    if (a.is_none()) return nullptr;
    T* data = checked<T>(a, std::string(what) + "[" + key + "]", shape, writeable);
    keep.push_back(std::move(a));
    return data;
  };
}

// ---- what both Stack classes show Python --------------------------------------------------------

// The read-only properties _core.Stack and _cuda.Stack share, by the same names.
template <class Stack, class... Options>
py::class_<Stack, Options...>& def_stack_properties(py::class_<Stack, Options...>& cls) {
  return cls.def_property_readonly("ready", &Stack::ready)
      .def_property_readonly("nbytes", &Stack::nbytes)
      .def_property_readonly("cell", &Stack::cell)
      .def_property_readonly("dtype", &Stack::dtype);
}

// ---- the GIL ------------------------------------------------------------------------------------

// One call at a time per object (a stack, a step engine): its buffers are resized and filled while
// the GIL is released, so a second Python thread waits here, and waits with the GIL released
// (holding it, it would keep the first thread from taking it back when it returns).
inline std::unique_lock<std::mutex> lock_without_gil(std::mutex& mutex) {
  std::unique_lock<std::mutex> lock(mutex, std::defer_lock);
  if (!lock.try_lock()) {
    py::gil_scoped_release nogil;
    lock.lock();
  }
  return lock;
}

// Runs f without the GIL. An exception set meanwhile by a signal handler wins over f's outcome
// (a finished call's results are dropped, as Python drops a statement's when Ctrl-C arrives); an
// interrupted call without one (stopped on another thread's request) raises KeyboardInterrupt.
// (The time loops ask the check module.cpp installs, runtime.hpp's "interruption".)
template <class F>
void run_without_gil(F&& f) {
  std::exception_ptr error;
  bool interrupted = false;
  {
    py::gil_scoped_release nogil;
    try {
      f();
    } catch (const Interrupted&) {
      interrupted = true;
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (PyErr_Occurred()) throw py::error_already_set();
  if (interrupted) {
    PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace rnncore::bindings
