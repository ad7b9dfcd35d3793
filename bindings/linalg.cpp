// rnncore._core.matmul and fma_peak: rnncore's GEMM on its own threads (linalg.hpp), for the
// Python layers that multiply outside the recurrent drivers, and the measured FMA throughput
// that the benchmarks divide by. It checks, allocates, releases the GIL and forwards.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "common.hpp"
#include "rnncore/linalg.hpp"

namespace rnncore::bindings {
namespace {

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

void bind_linalg(py::module_& m) {
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
}

}  // namespace rnncore::bindings
