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
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "common.hpp"
#include "rnncore/cells.hpp"
#include "rnncore/linalg.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/stack.hpp"
#include "rnncore/step.hpp"

namespace py = pybind11;
using rnncore::Index;

namespace {

using rnncore::bindings::lock_without_gil;
using rnncore::bindings::read_layer_arrays;
using rnncore::bindings::shape_str;

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

// The getter read_layer_arrays (common.hpp) takes, over a dict of numpy arrays: the array called
// key, checked as `what[key]` (writeable for gradients), or nullptr when absent. Each array read
// is appended to `keep`, which holds it alive for the call (another thread could replace the
// dict's entry while this one runs without the GIL).
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
        bool bidirectional, const py::object& dtype, const std::string& precision)
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
    if (precision == "bf16") precision_ = rnncore::Precision::kBf16;
    else if (precision != "float32")
      throw py::value_error("precision must be 'float32' or 'bf16', got '" + precision + "'");
    if (precision_ == rnncore::Precision::kBf16 && dt.itemsize() != 4)
      throw py::value_error("precision='bf16' needs dtype float32, got " + std::string(py::str(dt)));
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
  std::string precision() const {
    return precision_ == rnncore::Precision::kBf16 ? "bf16" : "float32";
  }
  py::dtype dtype() const {
    return std::holds_alternative<rnncore::StackWorkspace<double>>(workspace_)
               ? py::dtype::of<double>()
               : py::dtype::of<float>();
  }

 private:
  // One call at a time per stack (calls on stacks of different modules run concurrently).
  std::unique_lock<std::mutex> lock_without_gil() { return ::lock_without_gil(mutex_); }

  Index directions() const { return shape_.directions(); }
  Index entries() const { return shape_.num_layers * directions(); }

  static std::string suffix(Index layer, Index direction) {
    return "_l" + std::to_string(layer) + (direction == 1 ? "_reverse" : "");
  }

  // The parameters (or, with `gradient`, the gradient arrays) of every layer-direction, found
  // by name in `d` and checked against the shapes the cell and sizes imply (read_layer_arrays);
  // the arrays read are appended to `keep` (dict_arrays).
  template <class Slots, class T>
  std::vector<Slots> read_layers(const py::dict& d, const char* what, bool gradient,
                                 std::vector<py::object>& keep) const {
    std::vector<Slots> out;
    const auto get = dict_arrays<T>(d, what, gradient, keep);
    for (Index l = 0; l < shape_.num_layers; ++l)
      for (Index dir = 0; dir < directions(); ++dir)
        out.push_back(read_layer_arrays<Slots, T>(info_, shape_.layer_input_size(l),
                                                  shape_.hidden_size, suffix(l, dir), what, get));
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
      const rnncore::PrecisionScope precision(precision_);
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

// What a training-mode step keeps for its backward: copies of its inputs and states and the
// cell's record (the stash), in one allocation. Opaque to Python.
template <class T>
struct StepRecord {
  Index batch = 0;
  rnncore::Buffer<T> data;  // x (B*I) | h_prev (B*H) | c_prev | h | c (B*H each, LSTM: c parts) | stash
  T* x = nullptr;
  T* h_prev = nullptr;
  T* c_prev = nullptr;
  T* h = nullptr;
  T* c = nullptr;
  T* stash = nullptr;
};

class StepRecordHandle {
 public:
  std::variant<StepRecord<float>, StepRecord<double>> record;
  bool consumed = false;
  std::size_t nbytes() const {
    return std::visit([](const auto& r) { return sizeof(r.data[0]) * r.data.capacity(); }, record);
  }
};

// A C-contiguous 2-D array of element type T and shape (rows, cols): its data, with no
// allocation on the way (a step's checks are a share of its time); else checked<T>'s errors.
template <class T>
T* checked_2d(const py::handle& obj, const char* name, Index rows, Index cols,
              bool writeable = false) {
  using U = std::remove_const_t<T>;
  if (py::array_t<U, py::array::c_style>::check_(obj)) {
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols && (!writeable || a.writeable()))
      return static_cast<T*>(const_cast<void*>(a.data()));
  }
  return checked<T>(obj, name, {rows, cols}, writeable);
}

// One cell, one time step per call, with its weights packed once (rnncore/step.hpp). The weights
// are read from the params dict by set_weights(), which also keeps the arrays and a probe: a few
// sampled values of each, compared before every step, so an array written in place by hand is
// noticed and repacked (the Python cells also call set_weights whenever rnncore's parameter
// version moves: optimisers, load_state_dict, replaced arrays, parameters_changed()).
class Step {
  using Engine = std::variant<rnncore::StepEngine<float>, rnncore::StepEngine<double>>;

 public:
  Step(const std::string& cell, Index input_size, Index hidden_size, const py::object& dtype,
       const std::string& precision)
      : info_(rnncore::find_cell(cell)), I_(input_size), H_(hidden_size),
        engine_(make_engine(cell, input_size, hidden_size, dtype)) {
    if (precision == "bf16") precision_ = rnncore::Precision::kBf16;
    else if (precision != "float32")
      throw py::value_error("precision must be 'float32' or 'bf16', got '" + precision + "'");
    if (precision_ == rnncore::Precision::kBf16 &&
        std::holds_alternative<rnncore::StepEngine<double>>(engine_))
      throw py::value_error("precision='bf16' needs dtype float32, got float64");
  }

  void set_weights(const py::dict& params) {
    const auto lock = lock_without_gil();
    std::visit([&](auto& e) { set_weights_t(e, params); }, engine_);
  }

  py::tuple forward(const py::object& x, const py::object& h, const py::object& c,
                    bool training) {
    const auto lock = lock_without_gil();
    return std::visit([&](auto& e) { return forward_t(e, x, h, c, training); }, engine_);
  }

  py::tuple backward(StepRecordHandle& record, const py::object& dh, const py::object& dc,
                     const py::dict& grads) {
    const auto lock = lock_without_gil();
    return std::visit([&](auto& e) { return backward_t(e, record, dh, dc, grads); }, engine_);
  }

  std::size_t nbytes() {
    const auto lock = lock_without_gil();
    return std::visit([](const auto& e) { return e.bytes(); }, engine_);
  }
  // Times the weights were packed (set_weights and repacks after a probe mismatch).
  std::size_t packs() const { return packs_; }

 private:
  std::unique_lock<std::mutex> lock_without_gil() { return ::lock_without_gil(mutex_); }

  static Engine make_engine(const std::string& cell, Index input_size, Index hidden_size,
                            const py::object& dtype) {
    if (input_size <= 0 || hidden_size <= 0)
      throw py::value_error("input_size and hidden_size must be positive, got " +
                            std::to_string(input_size) + " and " + std::to_string(hidden_size));
    const py::dtype dt = py::dtype::from_args(dtype);
    if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
      throw py::value_error("dtype must be float32 or float64, got " + std::string(py::str(dt)));
    if (dt.itemsize() == 8)
      return Engine(std::in_place_index<1>, cell, input_size, hidden_size);
    return Engine(std::in_place_index<0>, cell, input_size, hidden_size);
  }

  static constexpr Index kProbes = 8;  // sampled values per parameter array

  template <class T>
  void set_weights_t(rnncore::StepEngine<T>& e, const py::dict& params) {
    const Index G = info_.gates;
    std::vector<py::object> keep;
    const auto w = read_layer_arrays<rnncore::LayerWeights<T>, const T>(
        info_, I_, H_, "", "params", dict_arrays<const T>(params, "params", false, keep));
    run_without_gil([&] { e.set_weights(w); });
    weights_ = {w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_peephole};
    sizes_ = {G * H_ * I_, G * H_ * H_, G * H_, G * H_, info_.peephole_rows * H_};
    held_ = std::move(keep);
    std::vector<unsigned char> probe;
    take_probe<T>(probe);
    probe_ = std::move(probe);
    ++packs_;
  }

  // kProbes values of each array, evenly spaced from first to last, as bytes (NaN-safe).
  template <class T>
  void take_probe(std::vector<unsigned char>& out) const {
    out.clear();
    for (std::size_t a = 0; a < weights_.size(); ++a) {
      const T* p = static_cast<const T*>(weights_[a]);
      const Index n = sizes_[a];
      if (!p || n == 0) continue;
      for (Index i = 0; i < kProbes; ++i) {
        const Index at = kProbes == 1 ? 0 : i * (n - 1) / (kProbes - 1);
        const auto* b = reinterpret_cast<const unsigned char*>(p + at);
        out.insert(out.end(), b, b + sizeof(T));
      }
    }
  }

  // Repacks from the held arrays when their sampled values moved since the last packing.
  template <class T>
  void refresh(rnncore::StepEngine<T>& e) {
    if (held_.empty())
      throw std::logic_error("Step: set_weights() must be called before the first step");
    std::vector<unsigned char>& now = probe_scratch_;
    take_probe<T>(now);
    if (now == probe_) return;
    rnncore::LayerWeights<T> w{static_cast<const T*>(weights_[0]), static_cast<const T*>(weights_[1]),
                               static_cast<const T*>(weights_[2]), static_cast<const T*>(weights_[3]),
                               static_cast<const T*>(weights_[4])};
    run_without_gil([&] { e.set_weights(w); });
    probe_.swap(now);
    ++packs_;
  }

  // Steps of little arithmetic (a few microseconds at most) keep the GIL: releasing and taking
  // it back would cost a sizeable share of them. `rows` weighs the step's batch (backward does
  // about three times a forward's products).
  template <class F>
  void run_step(F&& f, Index rows) {
    // The packs the engine builds on first use take the step's precision (bf16: the forward
    // products, dL/dh_prev and dx in bf16 operands; dW stays float32), as the Stack's do.
    const rnncore::PrecisionScope precision(precision_);
    const double flops = 2.0 * double(rows) * double(info_.gates * H_) * double(I_ + H_);
    if (flops > kGilFreeFlops) {
      run_without_gil(std::forward<F>(f));
      return;
    }
    f();
  }
  static constexpr double kGilFreeFlops = 2e5;

  // x (B, I) and a state (B, H) or None; returns B.
  template <class T>
  Index batch_of(const py::object& x) const {
    if (!py::isinstance<py::array>(x) || py::reinterpret_borrow<py::array>(x).ndim() != 2)
      throw py::value_error("x must be a 2-D array (B, " + std::to_string(I_) + ")");
    return py::reinterpret_borrow<py::array>(x).shape(0);
  }

  template <class T>
  py::tuple forward_t(rnncore::StepEngine<T>& e, const py::object& x, const py::object& h,
                      const py::object& c, bool training) {
    refresh(e);
    const Index B = batch_of<T>(x);
    const bool cell_state = info_.states == 2;
    const T* xp = checked_2d<const T>(x, "x", B, I_);
    const T* hp = h.is_none() ? nullptr : checked_2d<const T>(h, "h", B, H_);
    const T* cp = cell_state && !c.is_none() ? checked_2d<const T>(c, "c", B, H_) : nullptr;
    auto h_new = empty<T>({B, H_});
    auto [c_new, cnp] = optional_output<T>(cell_state, {B, H_});
    T* hnp = h_new.mutable_data();
    if (!training) {
      const T* h_in = hp;
      const T* c_in = cp;
      if (!h_in || (cell_state && !c_in)) {
        zeros_.resize(std::size_t(sizeof(T) * B * H_));
        std::fill(zeros_.begin(), zeros_.end(), 0);
        if (!h_in) h_in = reinterpret_cast<const T*>(zeros_.data());
        if (cell_state && !c_in) c_in = reinterpret_cast<const T*>(zeros_.data());
      }
      run_step([&] { e.forward(B, xp, h_in, c_in, hnp, cnp, nullptr); }, B);
      return py::make_tuple(h_new, c_new, py::none());
    }
    StepRecordHandle handle;
    handle.record = StepRecord<T>{};
    auto& r = std::get<StepRecord<T>>(handle.record);
    const Index states = cell_state ? 2 : 1, S = info_.stash_slots;
    r.batch = B;
    r.data.resize(std::size_t(B * (I_ + 2 * states * H_ + S * H_)));
    T* p = r.data.data();
    r.x = p, p += B * I_;
    r.h_prev = p, p += B * H_;
    r.h = p, p += B * H_;
    if (cell_state) r.c_prev = p, p += B * H_, r.c = p, p += B * H_;
    r.stash = p;
    std::memcpy(r.x, xp, sizeof(T) * B * I_);
    if (hp) std::memcpy(r.h_prev, hp, sizeof(T) * B * H_);
    else std::fill(r.h_prev, r.h_prev + B * H_, T(0));
    if (cell_state) {
      if (cp) std::memcpy(r.c_prev, cp, sizeof(T) * B * H_);
      else std::fill(r.c_prev, r.c_prev + B * H_, T(0));
    }
    run_step([&] {
      e.forward(B, r.x, r.h_prev, r.c_prev, r.h, r.c, r.stash);
      std::memcpy(hnp, r.h, sizeof(T) * B * H_);
      if (cell_state) std::memcpy(cnp, r.c, sizeof(T) * B * H_);
    }, B);
    return py::make_tuple(h_new, c_new, py::cast(std::move(handle)));
  }

  template <class T>
  py::tuple backward_t(rnncore::StepEngine<T>& e, StepRecordHandle& handle, const py::object& dh,
                       const py::object& dc, const py::dict& grads) {
    auto* r = std::get_if<StepRecord<T>>(&handle.record);
    if (!r) throw py::type_error("record belongs to a step of another dtype");
    if (handle.consumed)
      throw std::logic_error("this step's record was already consumed by an earlier backward()");
    refresh(e);
    const Index B = r->batch;
    const bool cell_state = info_.states == 2;
    const T* dhp = dh.is_none() ? nullptr : checked_2d<const T>(dh, "dh", B, H_);
    const T* dcp = cell_state && !dc.is_none() ? checked_2d<const T>(dc, "dc", B, H_) : nullptr;
    std::vector<py::object> keep;
    const auto g = read_layer_arrays<rnncore::LayerGradients<T>, T>(
        info_, I_, H_, "", "grads", dict_arrays<T>(grads, "grads", true, keep));
    auto dx = empty<T>({B, I_});
    auto dh_prev = empty<T>({B, H_});
    auto [dc_prev, dcpp] = optional_output<T>(cell_state, {B, H_});
    T* dxp = dx.mutable_data();
    T* dhpp = dh_prev.mutable_data();
    handle.consumed = true;
    run_step([&] {
      e.backward(B, r->x, r->h_prev, r->c_prev, r->h, r->c, r->stash, dhp, dcp, dxp, dhpp, dcpp, g);
    }, 3 * B);
    rnncore::Buffer<T>().swap(r->data);  // the record is spent: free it now
    return py::make_tuple(dx, dh_prev, dc_prev);
  }

  const rnncore::CellInfo& info_;
  Index I_, H_;
  std::mutex mutex_;
  Engine engine_;
  rnncore::Precision precision_ = rnncore::Precision::kFloat32;
  std::vector<py::object> held_;        // the arrays the weights were last read from
  std::vector<const void*> weights_;    // their data: w_ih, w_hh, b_ih, b_hh, w_peephole
  std::vector<Index> sizes_;
  std::vector<unsigned char> probe_, probe_scratch_;
  std::vector<unsigned char> zeros_;    // zero states of an inference step without them
  std::size_t packs_ = 0;
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

void bind_ctc(py::module_& m);  // bindings/ctc.cpp

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnncore C++ core (internal; use the rnncore package)";
  py::class_<Stack>(m, "Stack",
                    "num_layers x directions of one registry cell over whole sequences; owns the "
                    "workspace a training forward fills and backward consumes.")
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
                             "(L*D, T) float64 ||dL/dh_t|| from the last backward(grad_norms=True), or None")
      .def_property_readonly("ready", &Stack::ready)
      .def_property_readonly("nbytes", &Stack::nbytes)
      .def_property_readonly("cell", &Stack::cell)
      .def_property_readonly("dtype", &Stack::dtype)
      .def_property_readonly("precision", &Stack::precision)
      .def("release", &Stack::release, "Frees the workspace.");
  m.def("bf16_kernel", [] { return std::string(rnncore::bf16_kernel_name(rnncore::bf16_kernel())); },
        "The kernel precision='bf16' runs on this CPU: 'avx512_bf16', or 'none' (float32).");
  py::class_<StepRecordHandle>(m, "StepRecord",
                                "What a training-mode Step.forward keeps for its backward (opaque).")
      .def_property_readonly("nbytes", &StepRecordHandle::nbytes)
      .def_property_readonly("consumed", [](const StepRecordHandle& r) { return r.consumed; });
  py::class_<Step>(m, "Step",
                   "One registry cell, one time step per call, weights packed once "
                   "(set_weights; repacked when a probe of sampled values sees them change).")
      .def(py::init<const std::string&, Index, Index, const py::object&, const std::string&>(),
           py::arg("cell"), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("dtype") = py::dtype::of<float>(), py::arg("precision") = "float32")
      .def("set_weights", &Step::set_weights, py::arg("params"),
           "Copies and packs weight_ih, weight_hh, bias_ih, bias_hh (both or neither), "
           "weight_peephole from the dict, and keeps the arrays for the probe.")
      .def("forward", &Step::forward, py::arg("x"), py::arg("h") = py::none(),
           py::arg("c") = py::none(), py::arg("training") = false,
           "x (B, I), h and c (B, H) or None (zeros). Returns (h, c or None, record or None): "
           "training=True returns the StepRecord that backward needs.")
      .def("backward", &Step::backward, py::arg("record"), py::arg("dh") = py::none(),
           py::arg("dc") = py::none(), py::arg("grads") = py::dict(),
           "Back-propagates one recorded step (the record is consumed). dh, dc (B, H) or None; "
           "adds the parameter gradients into the arrays of `grads` (cell names). Returns "
           "(dx (B, I), dh_prev, dc_prev or None).")
      .def_property_readonly("nbytes", &Step::nbytes)
      .def_property_readonly("packs", &Step::packs);
  g_main_thread_ident =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  rnncore::set_interrupt_check(&python_signal_pending);
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out") = py::none(),
        py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("accumulate") = false,
        "out (=|+=) op(a) op(b) on rnncore's threads; 2-D C-contiguous float32 or float64 arrays "
        "of one dtype (op = transpose when trans_*). Returns out (allocated when None).");
  m.def("fma_peak", [](int threads, double seconds) {
          if (!(seconds > 0 && seconds <= 60))
            throw py::value_error("seconds must be in (0, 60], got " + std::to_string(seconds));
          if (threads < 0)
            throw py::value_error("threads must be >= 0 (0: rnncore's count), got " +
                                  std::to_string(threads));
          py::gil_scoped_release nogil;
          return rnncore::fma_peak_gflops(threads, seconds);
        }, py::arg("threads") = 0, py::arg("seconds") = 0.2,
        "Measured FMA throughput of the machine now, GFLOP/s, on `threads` threads (0: rnncore's "
        "count); the benchmarks' yardstick.");
  bind_ctc(m);
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
