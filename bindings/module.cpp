// rnncore._core: the pybind11 module. It checks arguments, allocates outputs, releases the GIL
// and forwards to the C++ library; it does no arithmetic. The Python layer (python/rnncore)
// validates user input with user-facing names first; the checks here guard the C++ code against
// anything that still slips through (a crash is never an acceptable answer).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/sequence.hpp"

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

// A C-contiguous array of dtype T and exactly this shape, or a ValueError/TypeError naming it.
template <class T>
const T* checked(const py::handle& obj, const char* name, const std::vector<Index>& shape) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  if (shape_of(a) != shape)
    throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " +
                          shape_str(shape_of(a)));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  return static_cast<const T*>(a.data());
}

template <class T>
T* checked_mut(const py::handle& obj, const char* name, const std::vector<Index>& shape) {
  const T* p = checked<T>(obj, name, shape);
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
  return const_cast<T*>(p);
}

template <class T>
const T* optional_checked(const py::object& obj, const char* name, const std::vector<Index>& shape) {
  return obj.is_none() ? nullptr : checked<T>(obj, name, shape);
}

struct CellInfo {
  int gates;
  bool cell_state;
  bool peephole;
};

template <class Cell>
CellInfo info_of() {
  return {Cell::kGates, Cell::kHasCellState, Cell::kHasPeephole};
}

CellInfo cell_info(const std::string& cell) {
#define RNNCORE_INFO(NAME, TYPE) \
  if (cell == #NAME) return info_of<TYPE>();
  RNNCORE_FOR_EACH_CELL(RNNCORE_INFO)
#undef RNNCORE_INFO
  throw py::value_error("unknown cell '" + cell + "'");
}

template <class T>
struct Weights {
  rnncore::LayerWeights<T> w;
  Index G, H, I;
};

template <class T>
Weights<T> check_weights(const CellInfo& ci, const py::object& w_ih, const py::object& w_hh,
                         const py::object& b_ih, const py::object& b_hh,
                         const py::object& w_peephole) {
  if (!py::isinstance<py::array>(w_ih) || py::reinterpret_borrow<py::array>(w_ih).ndim() != 2)
    throw py::value_error("w_ih must be a 2-D array");
  auto a = py::reinterpret_borrow<py::array>(w_ih);
  const Index GH = a.shape(0), I = a.shape(1);
  if (GH % ci.gates != 0)
    throw py::value_error("w_ih has " + std::to_string(GH) + " rows, not a multiple of the " +
                          std::to_string(ci.gates) + " gates");
  const Index H = GH / ci.gates;
  Weights<T> out{{}, ci.gates, H, I};
  out.w.w_ih = checked<T>(w_ih, "w_ih", {GH, I});
  out.w.w_hh = checked<T>(w_hh, "w_hh", {GH, H});
  out.w.b_ih = checked<T>(b_ih, "b_ih", {GH});
  out.w.b_hh = checked<T>(b_hh, "b_hh", {GH});
  if (ci.peephole) out.w.w_peephole = checked<T>(w_peephole, "w_peephole", {3, H});
  return out;
}

template <class T>
py::array_t<T> empty(const std::vector<Index>& shape) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// A checked call: outputs allocated, arguments validated (with the GIL); run() needs no GIL.
struct Prepared {
  py::tuple outputs;
  std::function<void()> run;
  bool single_threaded = true;  // its time loop would use one thread
};

template <class T>
Prepared prepare_forward(const std::string& cell, const py::object& x, const py::object& h0,
                         const py::object& c0, const py::object& w_ih, const py::object& w_hh,
                         const py::object& b_ih, const py::object& b_hh,
                         const py::object& w_peephole, const py::object& lengths, bool reverse,
                         rnncore::TrainingWorkspace<T>* workspace) {
  const CellInfo ci = cell_info(cell);
  const auto W = check_weights<T>(ci, w_ih, w_hh, b_ih, b_hh, w_peephole);
  if (!py::isinstance<py::array>(x) || py::reinterpret_borrow<py::array>(x).ndim() != 3)
    throw py::value_error("x must be a 3-D array (T, B, I)");
  auto xa = py::reinterpret_borrow<py::array>(x);
  const Index T_ = xa.shape(0), B = xa.shape(1);
  const rnncore::SequenceShape shape{T_, B, W.I, W.H};
  const T* xp = checked<T>(x, "x", {T_, B, W.I});
  const T* h0p = optional_checked<T>(h0, "h0", {B, W.H});
  const T* c0p = ci.cell_state ? optional_checked<T>(c0, "c0", {B, W.H}) : nullptr;
  const int64_t* lp = lengths.is_none() ? nullptr : checked<int64_t>(lengths, "lengths", {B});
  if (lp)
    for (Index b = 0; b < B; ++b)
      if (lp[b] < 0 || lp[b] > T_)
        throw py::value_error("lengths[" + std::to_string(b) + "] = " + std::to_string(lp[b]) +
                              " is outside [0, " + std::to_string(T_) + "]");
  auto y = empty<T>({T_, B, W.H});
  auto h_n = empty<T>({B, W.H});
  py::object c_n = py::none();
  T* cnp = nullptr;
  if (ci.cell_state) {
    auto c = empty<T>({B, W.H});
    cnp = c.mutable_data();
    c_n = c;
  }
  T* yp = y.mutable_data();
  T* hnp = h_n.mutable_data();
  Prepared out;
  out.outputs = py::make_tuple(y, h_n, c_n);
#define RNNCORE_FORWARD(NAME, TYPE)                                                             \
  if (cell == #NAME) {                                                                          \
    out.single_threaded = rnncore::loop_threads<TYPE, T>(B, W.H) == 1;                          \
    out.run = [=, w = W.w]() {                                                                  \
      if (workspace)                                                                            \
        rnncore::forward_training<TYPE, T>(shape, w, xp, h0p, c0p, lp, reverse, yp, hnp, cnp,   \
                                           *workspace);                                         \
      else                                                                                      \
        rnncore::forward_inference<TYPE, T>(shape, w, xp, h0p, c0p, lp, reverse, yp, hnp, cnp); \
    };                                                                                          \
  }
  RNNCORE_FOR_EACH_CELL(RNNCORE_FORWARD)
#undef RNNCORE_FORWARD
  return out;
}

template <class T>
py::tuple forward(const std::string& cell, const py::object& x, const py::object& h0,
                  const py::object& c0, const py::object& w_ih, const py::object& w_hh,
                  const py::object& b_ih, const py::object& b_hh, const py::object& w_peephole,
                  const py::object& lengths, bool reverse,
                  rnncore::TrainingWorkspace<T>* workspace) {
  Prepared p = prepare_forward<T>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peephole, lengths,
                                  reverse, workspace);
  {
    py::gil_scoped_release release;
    p.run();
  }
  return p.outputs;
}

// Both directions of a bidirectional layer in one call: side by side when each is small.
// fwd_args / bwd_args: (h0, c0, w_ih, w_hh, b_ih, b_hh, w_peephole, workspace or None).
template <class T>
py::tuple forward_bidirectional(const std::string& cell, const py::object& x,
                                const py::object& lengths, const py::tuple& fa,
                                const py::tuple& ba) {
  auto ws = [](const py::handle& h) {
    return h.is_none() ? nullptr : h.cast<rnncore::TrainingWorkspace<T>*>();
  };
  if (fa.size() != 8 || ba.size() != 8) throw py::value_error("expected 8 arguments per direction");
  Prepared f = prepare_forward<T>(cell, x, fa[0], fa[1], fa[2], fa[3], fa[4], fa[5], fa[6],
                                  lengths, false, ws(fa[7]));
  Prepared b = prepare_forward<T>(cell, x, ba[0], ba[1], ba[2], ba[3], ba[4], ba[5], ba[6],
                                  lengths, true, ws(ba[7]));
  {
    py::gil_scoped_release release;
    rnncore::run_independent({f.run, b.run}, f.single_threaded && b.single_threaded);
  }
  return py::make_tuple(f.outputs, b.outputs);
}

template <class T>
Prepared prepare_backward(const std::string& cell, rnncore::TrainingWorkspace<T>& ws,
                   const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                   const py::object& b_hh, const py::object& w_peephole, const py::object& dy,
                   const py::object& dh_n, const py::object& dc_n, const py::object& dw_ih,
                   const py::object& dw_hh, const py::object& db_ih, const py::object& db_hh,
                   const py::object& dw_peephole) {
  const CellInfo ci = cell_info(cell);
  if (!ws.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  const auto W = check_weights<T>(ci, w_ih, w_hh, b_ih, b_hh, w_peephole);
  const Index T_ = ws.shape.seq_len, B = ws.shape.batch, I = ws.shape.input_size,
              H = ws.shape.hidden_size;
  if (W.I != I || W.H != H)
    throw py::value_error("weights of shape (" + std::to_string(W.G * W.H) + ", " +
                          std::to_string(W.I) + ") do not match the forward pass (I=" +
                          std::to_string(I) + ", H=" + std::to_string(H) + ")");
  const T* dyp = optional_checked<T>(dy, "dy", {T_, B, H});
  const T* dhnp = optional_checked<T>(dh_n, "dh_n", {B, H});
  const T* dcnp = ci.cell_state ? optional_checked<T>(dc_n, "dc_n", {B, H}) : nullptr;
  rnncore::LayerGradients<T> g;
  const Index GH = W.G * H;
  g.dw_ih = checked_mut<T>(dw_ih, "dw_ih", {GH, I});
  g.dw_hh = checked_mut<T>(dw_hh, "dw_hh", {GH, H});
  g.db_ih = checked_mut<T>(db_ih, "db_ih", {GH});
  g.db_hh = checked_mut<T>(db_hh, "db_hh", {GH});
  if (ci.peephole) g.dw_peephole = checked_mut<T>(dw_peephole, "dw_peephole", {3, H});
  auto dx = empty<T>({T_, B, I});
  auto dh0 = empty<T>({B, H});
  py::object dc0 = py::none();
  T* dc0p = nullptr;
  if (ci.cell_state) {
    auto a = empty<T>({B, H});
    dc0p = a.mutable_data();
    dc0 = a;
  }
  T* dxp = dx.mutable_data();
  T* dh0p = dh0.mutable_data();
  Prepared out;
  out.outputs = py::make_tuple(dx, dh0, dc0);
  rnncore::TrainingWorkspace<T>* wsp = &ws;
#define RNNCORE_BACKWARD(NAME, TYPE)                                                          \
  if (cell == #NAME) {                                                                        \
    out.single_threaded = rnncore::loop_threads<TYPE, T>(B, H) == 1;                          \
    out.run = [=, w = W.w]() {                                                                \
      rnncore::backward<TYPE, T>(w, *wsp, dyp, dhnp, dcnp, dxp, dh0p, dc0p, g);               \
    };                                                                                        \
  }
  RNNCORE_FOR_EACH_CELL(RNNCORE_BACKWARD)
#undef RNNCORE_BACKWARD
  return out;
}

template <class T>
py::tuple backward(const std::string& cell, rnncore::TrainingWorkspace<T>& ws,
                   const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                   const py::object& b_hh, const py::object& w_peephole, const py::object& dy,
                   const py::object& dh_n, const py::object& dc_n, const py::object& dw_ih,
                   const py::object& dw_hh, const py::object& db_ih, const py::object& db_hh,
                   const py::object& dw_peephole) {
  Prepared p = prepare_backward<T>(cell, ws, w_ih, w_hh, b_ih, b_hh, w_peephole, dy, dh_n, dc_n,
                                   dw_ih, dw_hh, db_ih, db_hh, dw_peephole);
  {
    py::gil_scoped_release release;
    p.run();
  }
  return p.outputs;
}

// Both directions: args per direction (workspace, w_ih, w_hh, b_ih, b_hh, w_peephole, dy,
// dh_n, dc_n, dw_ih, dw_hh, db_ih, db_hh, dw_peephole).
template <class T>
py::tuple backward_bidirectional(const std::string& cell, const py::tuple& fa,
                                 const py::tuple& ba) {
  if (fa.size() != 14 || ba.size() != 14) throw py::value_error("expected 14 arguments per direction");
  auto prep = [&](const py::tuple& a) {
    return prepare_backward<T>(cell, *a[0].cast<rnncore::TrainingWorkspace<T>*>(), a[1], a[2],
                               a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12],
                               a[13]);
  };
  Prepared f = prep(fa);
  Prepared b = prep(ba);
  {
    py::gil_scoped_release release;
    rnncore::run_independent({f.run, b.run}, f.single_threaded && b.single_threaded);
  }
  return py::make_tuple(f.outputs, b.outputs);
}

template <class T>
void bind_dtype(py::module_& m, const char* suffix) {
  using WS = rnncore::TrainingWorkspace<T>;
  py::class_<WS>(m, (std::string("TrainingWorkspace") + suffix).c_str(),
                 "What BPTT needs from a training-mode forward (owned by C++; consumed by "
                 "backward).")
      .def(py::init<>())
      .def_property_readonly("ready", [](const WS& w) { return w.ready; })
      .def_property_readonly("nbytes", [](const WS& w) { return w.bytes(); })
      .def("release", &WS::release);
  m.def((std::string("forward") + suffix).c_str(), &forward<T>, py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("w_peephole"), py::arg("lengths"), py::arg("reverse"),
        py::arg("workspace").none(true),
        "One layer, one direction. Returns (y, h_n, c_n or None). With a workspace, records what "
        "backward needs.");
  m.def((std::string("backward") + suffix).c_str(), &backward<T>, py::arg("cell"), py::arg("workspace"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("w_peephole"), py::arg("dy"),
        py::arg("dh_n"), py::arg("dc_n"), py::arg("dw_ih"), py::arg("dw_hh"), py::arg("db_ih"),
        py::arg("db_hh"), py::arg("dw_peephole"),
        "BPTT through the workspace's forward. Returns (dx, dh0, dc0 or None); adds parameter "
        "gradients into dw_*/db_*.");
  m.def((std::string("forward_bidirectional") + suffix).c_str(), &forward_bidirectional<T>,
        py::arg("cell"), py::arg("x"), py::arg("lengths"), py::arg("forward_args"),
        py::arg("reverse_args"),
        "Both directions of a layer; each args tuple is (h0, c0, w_ih, w_hh, b_ih, b_hh, "
        "w_peephole, workspace). Returns ((y, h_n, c_n), (y, h_n, c_n)).");
  m.def((std::string("backward_bidirectional") + suffix).c_str(), &backward_bidirectional<T>,
        py::arg("cell"), py::arg("forward_args"), py::arg("reverse_args"),
        "Both directions; each args tuple is (workspace, w_ih, w_hh, b_ih, b_hh, w_peephole, dy, "
        "dh_n, dc_n, dw_ih, dw_hh, db_ih, db_hh, dw_peephole). Returns two (dx, dh0, dc0).");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnncore C++ core (internal; use the rnncore package)";
  bind_dtype<float>(m, "32");
  bind_dtype<double>(m, "64");
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
