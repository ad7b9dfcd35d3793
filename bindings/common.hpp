// What the binding modules share (rnncore._core, rnncore._cuda): shape text for messages, the
// per-object lock taken without holding the GIL, and the reading of one layer-direction's
// parameter (or gradient) arrays by PyTorch's names.
#pragma once

#include <pybind11/pybind11.h>

#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/common.hpp"

namespace rnncore::bindings {

namespace py = pybind11;

inline std::string shape_str(const std::vector<Index>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

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

}  // namespace rnncore::bindings
