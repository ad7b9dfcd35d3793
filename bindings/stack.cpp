// rnncore._core.Stack: a recurrent network of num_layers x directions of one registry cell over
// whole sequences (cpp/include/rnncore/stack.hpp), which owns the workspace that a training
// forward fills and its backward consumes. Parameters are passed as a dict with PyTorch's names
// (weight_ih_l0, bias_hh_l1_reverse, ...), so the Python layer hands over its live arrays and this
// file reads each by name. The Python layer checks user input first and words the user-facing
// messages; the checks here guard the C++ code against anything that still slips through (a
// crash is never an acceptable answer). It checks, allocates, releases the GIL and forwards; no
// arithmetic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "common.hpp"
#include "rnncore/cells.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/stack.hpp"

namespace rnncore::bindings {
namespace {

class Stack {
 public:
  Stack(const std::string& cell, Index input_size, Index hidden_size, Index num_layers,
        bool bidirectional, const py::object& dtype, const std::string& precision)
      : info_(rnncore::find_cell(cell)),
        shape_(stack_shape(input_size, hidden_size, num_layers, bidirectional)) {
    const bool float64 = is_float64(dtype);
    if (float64) workspace_.emplace<rnncore::StackWorkspace<double>>();
    precision_ = parse_precision(precision, float64);
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
  std::string precision() const { return precision_name(precision_); }
  py::dtype dtype() const {
    return std::holds_alternative<rnncore::StackWorkspace<double>>(workspace_)
               ? py::dtype::of<double>()
               : py::dtype::of<float>();
  }

 private:
  // One call at a time per stack (calls on stacks of different modules run concurrently).
  std::unique_lock<std::mutex> lock_without_gil() { return bindings::lock_without_gil(mutex_); }

  Index directions() const { return shape_.directions(); }
  // "Stack.forward (training) of lstm: T=100, B=64, I=256, H=256, 2 layers, bidirectional", the
  // call a MemoryError names.
  std::string describe(const char* what, const rnncore::StackShape& s) const {
    return "Stack." + std::string(what) + " of " + info_.name + ": T=" +
           std::to_string(s.seq_len) + ", B=" + std::to_string(s.batch) + ", I=" +
           std::to_string(s.input_size) + ", H=" + std::to_string(s.hidden_size) + ", " +
           std::to_string(s.num_layers) + (s.num_layers == 1 ? " layer" : " layers") +
           (s.bidirectional ? ", bidirectional" : "");
  }
  Index entries() const { return shape_.num_layers * directions(); }

  // The parameters (or, with `gradient`, the gradient arrays) of every layer-direction, found
  // by name in `d` and checked against the shapes the cell and sizes imply (read_stack_arrays);
  // the arrays read are appended to `keep` (dict_arrays).
  template <class Slots, class T>
  std::vector<Slots> read_layers(const py::dict& d, const char* what, bool gradient,
                                 std::vector<py::object>& keep) const {
    return read_stack_arrays<Slots, T>(info_, shape_, what,
                                       dict_arrays<T>(d, what, gradient, keep));
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
      const rnncore::PrecisionScope precision(precision_);
      const rnncore::AllocationCall call(describe(training ? "forward (training)" : "forward", shape));
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
      const rnncore::PrecisionScope precision(precision_);
      const rnncore::AllocationCall call(describe("backward", shape));
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
  rnncore::Precision precision_ = rnncore::Precision::kFloat32;  // of the packed GEMMs
  std::mutex mutex_;
  py::object grad_norms_ = py::none();
  std::variant<rnncore::StackWorkspace<float>, rnncore::StackWorkspace<double>> workspace_;
};

}  // namespace

void bind_stack(py::module_& m) {
  py::class_<Stack> stack(m, "Stack",
                          "num_layers x directions of one registry cell over whole sequences; "
                          "owns the workspace a training forward fills and backward consumes.");
  stack
      .def(py::init<const std::string&, Index, Index, Index, bool, const py::object&,
                    const std::string&>(),
           py::arg("cell"), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("num_layers") = 1, py::arg("bidirectional") = false,
           py::arg("dtype") = py::dtype::of<float>(), py::arg("precision") = "float32",
           "precision='bf16' (float32 stacks only): the packed GEMMs (input projection, "
           "recurrent products, dL/dh and dx) take bf16 operands and accumulate in float32 "
           "where the CPU has a bf16 kernel (bf16_kernel()), float32 elsewhere; dW, states "
           "and pointwise math stay float32.")
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
                             "(L*D, T) float64 ||dL/dh_t|| from the last backward(grad_norms=True), or None");
  def_stack_properties(stack)
      .def_property_readonly("precision", &Stack::precision)
      .def("release", &Stack::release, "Frees the workspace.");
}

}  // namespace rnncore::bindings
