// Cell-independent pieces of the stack driver (internal; defined in stack.cpp for float and
// double): moving the two directions' columns in and out of a layer's output, dropout, and the
// zero biases the forward of a layer built without them reads. (Its backward needs no stand-in:
// the sequence driver skips the bias gradients a layer does not have.)
#pragma once

#include <vector>

#include "rnncore/stack.hpp"

namespace rnncore {
namespace detail {

// out (rows, 2H) = [forward (rows, H) | reverse (rows, H)], and back.
template <class T>
void interleave_directions(Index rows, Index hidden, const T* forward, const T* reverse, T* out);
template <class T>
void deinterleave_directions(Index rows, Index hidden, const T* in, T* forward, T* reverse);

// dst[k] += src[k], k < n.
template <class T>
void add_into(Index n, const T* src, T* dst);

// data[e] *= dropout_scale(dropout, layer, e) for e < n.
template <class T>
void apply_dropout(const Dropout& dropout, Index layer, Index n, T* data);

// Zero biases for a layer that has none (the sequence driver always reads biases).
template <class T>
class BiasFallback {
 public:
  explicit BiasFallback(Index size) : zeros_(std::size_t(size), T(0)) {}
  LayerWeights<T> complete(LayerWeights<T> w) const {
    if (!w.b_ih) w.b_ih = zeros_.data();
    if (!w.b_hh) w.b_hh = zeros_.data();
    return w;
  }

 private:
  std::vector<T> zeros_;
};

}  // namespace detail
}  // namespace rnncore
