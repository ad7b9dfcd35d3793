// rnncore._core.ctc_loss: checks the arrays' dtypes and shapes, allocates the outputs, releases
// the GIL and calls rnncore::ctc_loss (cpp/include/rnncore/ctc.hpp), which checks the values.
// No arithmetic here; python/rnncore/ctc.py converts user input and applies the reduction.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "rnncore/ctc.hpp"

namespace rnncore::bindings {
namespace {

template <class T>
const T* input(const py::array& a, const char* name, std::vector<Index> shape) {
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + " must have dtype " +
                         std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(a.dtype())) + dtype_note(a));
  bool same = a.ndim() == py::ssize_t(shape.size());
  for (size_t i = 0; same && i < shape.size(); ++i) same = shape[i] < 0 || a.shape(i) == shape[i];
  if (!same)
    throw py::value_error(std::string(name) + " has the wrong shape " + shape_str(shape_of(a)) +
                          " (expected " + std::to_string(shape.size()) + " dimensions matching "
                          "log_probs (T, B, C))");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + " must be aligned to its element size (copy it first)");
  return static_cast<const T*>(a.data());
}

template <class T>
py::tuple ctc(const py::array& log_probs, const py::array& targets,
              const py::array& input_lengths, const py::array& target_lengths, Index blank,
              bool zero_infinity, bool want_grad, const py::object& grad_scale) {
  const T* lp = input<T>(log_probs, "log_probs", {-1, -1, -1});
  rnncore::CtcShape shape;
  shape.max_time = log_probs.shape(0);
  shape.batch = log_probs.shape(1);
  shape.classes = log_probs.shape(2);
  const int64_t* tg = input<int64_t>(targets, "targets", {shape.batch, -1});
  shape.max_target = targets.shape(1);
  const int64_t* il = input<int64_t>(input_lengths, "input_lengths", {shape.batch});
  const int64_t* tl = input<int64_t>(target_lengths, "target_lengths", {shape.batch});
  const T* scale = nullptr;
  if (!grad_scale.is_none())
    scale = input<T>(py::cast<py::array>(grad_scale), "grad_scale", {shape.batch});
  py::array_t<T> losses(shape.batch);
  py::object grad = py::none();
  T* g = nullptr;
  if (want_grad) {
    py::array_t<T> a({shape.max_time, shape.batch, shape.classes});
    g = a.mutable_data();
    grad = std::move(a);
  }
  T* out = losses.mutable_data();
  {
    py::gil_scoped_release nogil;
    rnncore::ctc_loss<T>(shape, lp, tg, il, tl, blank, zero_infinity, out, g, scale);
  }
  return py::make_tuple(std::move(losses), std::move(grad));
}

}  // namespace

void bind_ctc(py::module_& m) {
  m.def(
      "ctc_loss",
      [](const py::array& log_probs, const py::array& targets, const py::array& input_lengths,
         const py::array& target_lengths, Index blank, bool zero_infinity, bool want_grad,
         const py::object& grad_scale) {
        if (log_probs.dtype().kind() == 'f' && log_probs.itemsize() == 8)
          return ctc<double>(log_probs, targets, input_lengths, target_lengths, blank,
                             zero_infinity, want_grad, grad_scale);
        return ctc<float>(log_probs, targets, input_lengths, target_lengths, blank,
                          zero_infinity, want_grad, grad_scale);
      },
      py::arg("log_probs"), py::arg("targets"), py::arg("input_lengths"),
      py::arg("target_lengths"), py::arg("blank") = 0, py::arg("zero_infinity") = false,
      py::arg("want_grad") = true, py::arg("grad_scale") = py::none(),
      "CTC negative log-likelihood per sample and its gradient w.r.t. the logits of log_probs "
      "(T, B, C) float32/float64 = log_softmax(logits); targets (B, S) int64 padded; "
      "input_lengths, target_lengths (B,) int64. Returns (losses (B,), grad (T, B, C) scaled per "
      "sample by grad_scale (B,), or None when want_grad is false).");
}

}  // namespace rnncore::bindings
