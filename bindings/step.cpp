// rnncore._core.Step and StepRecord: one registry cell, one time step per call, with its weights
// packed once (cpp/include/rnncore/step.hpp) for the cells and decoders that step by hand. A
// training-mode step returns a StepRecord (opaque to Python) that its backward consumes. It
// checks, allocates and forwards; small steps keep the GIL (run_step says why); no arithmetic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "common.hpp"
#include "rnncore/cells.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/step.hpp"

namespace rnncore::bindings {
namespace {

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
        engine_(make_engine(cell, input_size, hidden_size, dtype)),
        precision_(parse_precision(
            precision, std::holds_alternative<rnncore::StepEngine<double>>(engine_))) {}

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
  std::unique_lock<std::mutex> lock_without_gil() { return bindings::lock_without_gil(mutex_); }

  static Engine make_engine(const std::string& cell, Index input_size, Index hidden_size,
                            const py::object& dtype) {
    if (input_size <= 0 || hidden_size <= 0)
      throw py::value_error("input_size and hidden_size must be positive, got " +
                            std::to_string(input_size) + " and " + std::to_string(hidden_size));
    if (is_float64(dtype))
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
  rnncore::Precision precision_;
  std::vector<py::object> held_;        // the arrays the weights were last read from
  std::vector<const void*> weights_;    // their data: w_ih, w_hh, b_ih, b_hh, w_peephole
  std::vector<Index> sizes_;
  std::vector<unsigned char> probe_, probe_scratch_;
  std::vector<unsigned char> zeros_;    // zero states of an inference step without them
  std::size_t packs_ = 0;
};

}  // namespace

void bind_step(py::module_& m) {
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
}

}  // namespace rnncore::bindings
