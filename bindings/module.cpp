// rnncore._core: the pybind11 module. It checks arguments, allocates outputs, releases the GIL
// and forwards to the C++ stack driver (cpp/include/rnncore/stack.hpp); it does no arithmetic.
//
// One class, Stack: a recurrent network of num_layers x directions of one registry cell, which
// owns the workspace that a training forward fills and its backward consumes. Parameters are
// passed as a dict with PyTorch's names (weight_ih_l0, bias_hh_l1_reverse, ...), so the Python
// layer hands over its live arrays and this module reads each by name. The Python layer checks
// user input first and words the user-facing messages; the checks here guard the C++ code
// against anything that still slips through (a crash is never an acceptable answer).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/linalg.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/stack.hpp"

namespace py = pybind11;
using rnncore::Index;

namespace {

std::string shape_str(const std::vector<Index>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

std::vector<Index> shape_of(const py::array& a) {
  return std::vector<Index>(a.shape(), a.shape() + a.ndim());
}

// dtype equality by value (a dtype that went through pickle is equal but not the same object).
template <class T>
bool has_dtype(const py::array& a) {
  return a.dtype().kind() == py::dtype::of<std::remove_const_t<T>>().kind() &&
         a.itemsize() == Index(sizeof(T));
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
                         std::string(py::str(py::dtype::of<std::remove_const_t<T>>())) +
                         ", got " + std::string(py::str(a.dtype())));
  if (shape_of(a) != shape)
    throw py::value_error(name + " must have shape " + shape_str(shape) + ", got " +
                          shape_str(shape_of(a)));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + " must be C-contiguous");
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

py::object lookup(const py::dict& d, const std::string& key) {
  return d.contains(key) ? py::reinterpret_borrow<py::object>(d[py::str(key)]) : py::none();
}

// Ctrl-C during a long call (runtime.hpp, "interruption"): the time loops ask this every few tens
// of milliseconds. Python runs signal handlers in its main thread only, so only that thread looks;
// a handler's exception (KeyboardInterrupt) stays set for the call to raise when it returns.
unsigned long g_main_thread_ident = 0;

bool python_signal_pending() {
  if (PyThread_get_thread_ident() != g_main_thread_ident) return false;
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

// Runs f without the GIL. An exception set meanwhile by a signal handler wins over f's outcome
// (a finished call's results are dropped, as Python drops a statement's when Ctrl-C arrives); an
// interrupted call without one (stopped on another thread's request) raises KeyboardInterrupt.
template <class F>
void run_without_gil(F&& f) {
  std::exception_ptr error;
  bool interrupted = false;
  {
    py::gil_scoped_release nogil;
    try {
      f();
    } catch (const rnncore::Interrupted&) {
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

class Stack {
 public:
  Stack(const std::string& cell, Index input_size, Index hidden_size, Index num_layers,
        bool bidirectional, const py::object& dtype)
      : info_(rnncore::find_cell(cell)) {
    if (input_size <= 0 || hidden_size <= 0 || num_layers <= 0)
      throw py::value_error("input_size, hidden_size and num_layers must be positive, got " +
                            std::to_string(input_size) + ", " + std::to_string(hidden_size) +
                            ", " + std::to_string(num_layers));
    shape_.input_size = input_size;
    shape_.hidden_size = hidden_size;
    shape_.num_layers = num_layers;
    shape_.bidirectional = bidirectional;
    const py::dtype dt = py::dtype::from_args(dtype);
    if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
      throw py::value_error("dtype must be float32 or float64, got " + std::string(py::str(dt)));
    if (dt.itemsize() == 8) workspace_.emplace<rnncore::StackWorkspace<double>>();
  }

  py::tuple forward(const py::object& x, const py::dict& params, const py::object& h0,
                    const py::object& c0, const py::object& lengths, bool training,
                    double dropout, uint64_t seed) {
    const auto lock = lock_without_gil();
    return std::visit([&](auto& ws) { return forward_t(ws, x, params, h0, c0, lengths, training,
                                                       dropout, seed); },
                      workspace_);
  }

  py::tuple backward(const py::object& dy, const py::dict& params, const py::dict& grads,
                     const py::object& dh_n, const py::object& dc_n, bool grad_norms) {
    const auto lock = lock_without_gil();
    return std::visit([&](auto& ws) {
      return backward_t(ws, dy, params, grads, dh_n, dc_n, grad_norms);
    }, workspace_);
  }

  // (L*D, T) float64: ||dL/dh_t|| of every layer-direction from the last backward that recorded
  // them, or None.
  py::object grad_norms() {
    const auto lock = lock_without_gil();
    return grad_norms_;
  }

  bool ready() {
    const auto lock = lock_without_gil();
    return std::visit([](const auto& ws) { return ws.ready; }, workspace_);
  }
  std::size_t nbytes() {
    const auto lock = lock_without_gil();
    return std::visit([](const auto& ws) { return ws.bytes(); }, workspace_);
  }
  void release() {
    const auto lock = lock_without_gil();
    std::visit([](auto& ws) { ws.release(); }, workspace_);
  }
  std::string cell() const { return info_.name; }
  py::dtype dtype() const {
    return std::holds_alternative<rnncore::StackWorkspace<double>>(workspace_)
               ? py::dtype::of<double>()
               : py::dtype::of<float>();
  }

 private:
  // One call at a time per stack: the workspace is resized, filled and freed while the GIL is
  // released, so calls from several Python threads on one stack wait for each other here (stacks
  // of different modules run concurrently). The GIL is released while waiting, so the holder can
  // finish.
  std::unique_lock<std::mutex> lock_without_gil() {
    std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
    if (!lock.try_lock()) {
      py::gil_scoped_release nogil;
      lock.lock();
    }
    return lock;
  }

  Index directions() const { return shape_.directions(); }
  Index entries() const { return shape_.num_layers * directions(); }

  static std::string suffix(Index layer, Index direction) {
    return "_l" + std::to_string(layer) + (direction == 1 ? "_reverse" : "");
  }

  // The parameters (or, with `gradient`, the gradient arrays) of every layer-direction, found
  // by name in `d` and checked against the shapes the cell and sizes imply. Biases may be
  // absent (a module built with bias=False), but then both of a layer-direction's are.
  // The arrays read are appended to `keep`, which holds them alive for the call (another thread
  // could replace an entry of the dict while this one runs without the GIL).
  template <class Slots, class T>
  std::vector<Slots> read_layers(const py::dict& d, const char* what, bool gradient,
                                 std::vector<py::object>& keep) const {
    const Index G = info_.gates, H = shape_.hidden_size;
    std::vector<Slots> out(static_cast<std::size_t>(entries()));
    for (Index l = 0; l < shape_.num_layers; ++l) {
      for (Index dir = 0; dir < directions(); ++dir) {
        const std::string s = suffix(l, dir);
        auto name = [&](const char* stem) { return std::string(what) + "[" + stem + s + "]"; };
        auto get = [&](const char* stem, const std::vector<Index>& shape) -> T* {
          py::object a = lookup(d, stem + s);
          if (a.is_none()) return nullptr;
          T* data = checked<T>(a, name(stem), shape, gradient);
          keep.push_back(std::move(a));
          return data;
        };
        auto require = [&](const char* stem, T* p) {
          if (!p) throw py::key_error(std::string(what) + " has no '" + stem + s + "'");
          return p;
        };
        Slots& slot = out[std::size_t(l * directions() + dir)];
        T* w_ih = require("weight_ih", get("weight_ih", {G * H, shape_.layer_input_size(l)}));
        T* w_hh = require("weight_hh", get("weight_hh", {G * H, H}));
        T* b_ih = get("bias_ih", {G * H});
        T* b_hh = get("bias_hh", {G * H});
        if (bool(b_ih) != bool(b_hh))
          throw py::key_error(std::string(what) + " has only one of bias_ih" + s + " and bias_hh" + s);
        T* peephole = info_.peephole_rows
                          ? require("weight_peephole",
                                    get("weight_peephole", {info_.peephole_rows, H}))
                          : nullptr;
        slot = {w_ih, w_hh, b_ih, b_hh, peephole};  // both structs list the arrays in this order
      }
    }
    return out;
  }

  template <class T>
  py::tuple forward_t(rnncore::StackWorkspace<T>& ws, const py::object& x, const py::dict& params,
                      const py::object& h0, const py::object& c0, const py::object& lengths,
                      bool training, double dropout, uint64_t seed) {
    std::vector<py::object> keep;
    rnncore::StackWeights<T> w;
    w.layers = read_layers<rnncore::LayerWeights<T>, const T>(params, "params", false, keep);
    if (!py::isinstance<py::array>(x) || py::reinterpret_borrow<py::array>(x).ndim() != 3)
      throw py::value_error("x must be a 3-D array (T, B, I)");
    auto xa = py::reinterpret_borrow<py::array>(x);
    rnncore::StackShape shape = shape_;
    shape.seq_len = xa.shape(0);
    shape.batch = xa.shape(1);
    const Index B = shape.batch, H = shape.hidden_size;
    const std::vector<Index> states{entries(), B, H};
    const T* xp = checked<const T>(x, "x", {shape.seq_len, B, shape.input_size});
    const T* h0p = optional_checked<const T>(h0, "h0", states);
    const bool cell_state = info_.states == 2;
    const T* c0p = cell_state ? optional_checked<const T>(c0, "c0", states) : nullptr;
    const int64_t* lp = lengths.is_none() ? nullptr : checked<const int64_t>(lengths, "lengths", {B});
    auto y = empty<T>({shape.seq_len, B, directions() * H});
    auto h_n = empty<T>(states);
    auto [c_n, cnp] = optional_output<T>(cell_state, states);
    T* yp = y.mutable_data();
    T* hnp = h_n.mutable_data();
    const rnncore::Dropout drop{dropout, seed};
    run_without_gil([&] {
      rnncore::with_cell(info_.name, [&](auto tag) {
        using Cell = typename decltype(tag)::type;
        if (training)
          rnncore::forward_training<Cell, T>(shape, w, drop, xp, h0p, c0p, lp, yp, hnp, cnp, ws);
        else
          rnncore::forward_inference<Cell, T>(shape, w, xp, h0p, c0p, lp, yp, hnp, cnp);
      });
    });
    return py::make_tuple(y, h_n, c_n);
  }

  template <class T>
  py::tuple backward_t(rnncore::StackWorkspace<T>& ws, const py::object& dy,
                       const py::dict& params, const py::dict& grads, const py::object& dh_n,
                       const py::object& dc_n, bool record_grad_norms) {
    ws.require_ready();  // before its shape is used to check dy and the states
    grad_norms_ = py::none();
    std::vector<py::object> keep;
    rnncore::StackWeights<T> w;
    w.layers = read_layers<rnncore::LayerWeights<T>, const T>(params, "params", false, keep);
    rnncore::StackGradients<T> g;
    g.layers = read_layers<rnncore::LayerGradients<T>, T>(grads, "grads", true, keep);
    const rnncore::StackShape& shape = ws.shape;
    const Index T_ = shape.seq_len, B = shape.batch, H = shape.hidden_size;
    const std::vector<Index> states{entries(), B, H};
    const T* dyp = optional_checked<const T>(dy, "dy", {T_, B, directions() * H});
    const T* dhnp = optional_checked<const T>(dh_n, "dh_n", states);
    const bool cell_state = info_.states == 2;
    const T* dcnp = cell_state ? optional_checked<const T>(dc_n, "dc_n", states) : nullptr;
    auto dx = empty<T>({T_, B, shape.input_size});
    auto dh0 = empty<T>(states);
    auto [dc0, dc0p] = optional_output<T>(cell_state, states);
    T* dxp = dx.mutable_data();
    T* dh0p = dh0.mutable_data();
    ws.record_grad_norms = record_grad_norms;
    run_without_gil([&] {
      rnncore::with_cell(info_.name, [&](auto tag) {
        using Cell = typename decltype(tag)::type;
        rnncore::backward<Cell, T>(w, ws, dyp, dhnp, dcnp, dxp, dh0p, dc0p, g);
      });
    });
    if (record_grad_norms) {
      auto norms = empty<double>({entries(), T_});
      double* out = norms.mutable_data();
      for (Index i = 0; i < entries(); ++i)
        std::copy(ws.layers[std::size_t(i)].grad_norms.begin(),
                  ws.layers[std::size_t(i)].grad_norms.end(), out + i * T_);
      grad_norms_ = std::move(norms);
    }
    return py::make_tuple(dx, dh0, dc0);
  }

  const rnncore::CellInfo& info_;
  rnncore::StackShape shape_;
  std::mutex mutex_;
  py::object grad_norms_ = py::none();
  std::variant<rnncore::StackWorkspace<float>, rnncore::StackWorkspace<double>> workspace_;
};

// out = op(a) op(b) (+= with accumulate), on rnncore's threads (linalg.hpp). 2-D C-contiguous
// arrays of one float dtype; out is allocated when None.
template <class T>
py::object matmul_t(const py::array& a, const py::array& b, const py::object& out, bool trans_a,
                    bool trans_b, bool accumulate) {
  const Index m = trans_a ? a.shape(1) : a.shape(0), k = trans_a ? a.shape(0) : a.shape(1);
  const Index kb = trans_b ? b.shape(1) : b.shape(0), n = trans_b ? b.shape(0) : b.shape(1);
  if (kb != k)
    throw py::value_error("matmul: op(a) is " + shape_str({m, k}) + " and op(b) is " +
                          shape_str({kb, n}) + ": inner sizes differ");
  const T* ap = checked<const T>(a, "a", shape_of(a));
  const T* bp = checked<const T>(b, "b", shape_of(b));
  py::object result = out;
  if (out.is_none()) {
    if (accumulate) throw py::value_error("matmul: accumulate=True needs out");
    result = empty<T>({m, n});
  }
  T* cp = checked<T>(result, "out", {m, n}, true);
  run_without_gil([&] {
    rnncore::matmul<T>(m, n, k, ap, a.shape(1), trans_a, bp, b.shape(1), trans_b, cp, n,
                       accumulate);
  });
  return result;
}

py::object matmul(const py::object& a_obj, const py::object& b_obj, const py::object& out,
                  bool trans_a, bool trans_b, bool accumulate) {
  for (const auto& [name, obj] : {std::pair{"a", &a_obj}, std::pair{"b", &b_obj}})
    if (!py::isinstance<py::array>(*obj) || py::reinterpret_borrow<py::array>(*obj).ndim() != 2)
      throw py::type_error(std::string("matmul: ") + name + " must be a 2-D numpy array");
  auto a = py::reinterpret_borrow<py::array>(a_obj);
  auto b = py::reinterpret_borrow<py::array>(b_obj);
  if (has_dtype<double>(a)) return matmul_t<double>(a, b, out, trans_a, trans_b, accumulate);
  return matmul_t<float>(a, b, out, trans_a, trans_b, accumulate);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnncore C++ core (internal; use the rnncore package)";
  py::class_<Stack>(m, "Stack",
                    "num_layers x directions of one registry cell over whole sequences; owns the "
                    "workspace a training forward fills and backward consumes.")
      .def(py::init<const std::string&, Index, Index, Index, bool, const py::object&>(),
           py::arg("cell"), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("num_layers") = 1, py::arg("bidirectional") = false,
           py::arg("dtype") = py::dtype::of<float>())
      .def("forward", &Stack::forward, py::arg("x"), py::arg("params"),
           py::arg("h0") = py::none(), py::arg("c0") = py::none(),
           py::arg("lengths") = py::none(), py::arg("training") = false,
           py::arg("dropout") = 0.0, py::arg("seed") = 0,
           "x (T, B, I); params: dict with PyTorch's names; h0, c0 (L*D, B, H) or None; "
           "lengths int64 (B,) or None. Returns (y (T, B, D*H), h_n, c_n or None). training=True "
           "fills the workspace for backward and applies dropout between layers (seeded).")
      .def("backward", &Stack::backward, py::arg("dy"), py::arg("params"), py::arg("grads"),
           py::arg("dh_n") = py::none(), py::arg("dc_n") = py::none(),
           py::arg("grad_norms") = false,
           "BPTT through the last training forward (consumed). dy (T, B, D*H) or None; adds "
           "parameter gradients into the arrays of `grads` (same names as params). Returns "
           "(dx (T, B, I), dh0, dc0 or None). grad_norms=True also records ||dL/dh_t|| of every "
           "layer-direction (the grad_norms property).")
      .def_property_readonly("grad_norms", &Stack::grad_norms,
                             "(L*D, T) float64 ||dL/dh_t|| from the last backward(grad_norms=True), or None")
      .def_property_readonly("ready", &Stack::ready)
      .def_property_readonly("nbytes", &Stack::nbytes)
      .def_property_readonly("cell", &Stack::cell)
      .def_property_readonly("dtype", &Stack::dtype)
      .def("release", &Stack::release, "Frees the workspace.");
  g_main_thread_ident =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  rnncore::set_interrupt_check(&python_signal_pending);
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out") = py::none(),
        py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("accumulate") = false,
        "out (=|+=) op(a) op(b) on rnncore's threads; 2-D C-contiguous float32 or float64 arrays "
        "of one dtype (op = transpose when trans_*). Returns out (allocated when None).");
  m.def("set_num_threads", &rnncore::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &rnncore::get_num_threads);
  // The registry (cells.hpp), which the Python layer reads instead of keeping a list of its own.
  py::list cells;
  for (const rnncore::CellInfo& c : rnncore::kCells)
    cells.append(py::dict(py::arg("name") = c.name, py::arg("gates") = c.gates,
                          py::arg("states") = c.states, py::arg("peephole_rows") = c.peephole_rows,
                          py::arg("stash_slots") = c.stash_slots));
  m.attr("CELLS") = py::tuple(cells);
#ifdef RNNCORE_VERSION
  m.attr("__version__") = RNNCORE_VERSION;
#endif
}
