// Cell-independent parts of the stack driver (stack_helpers.hpp).
#include <cstring>

#include "rnncore/detail/dropout_mask.hpp"
#include "rnncore/runtime.hpp"
#include "stack_helpers.hpp"

namespace rnncore {

namespace {

// Element-wise passes over a layer's output are memory-bound; a second thread only pays once
// the data outgrows what one core streams in a few microseconds (the fork/join cost).
constexpr Index kParallelElements = Index(1) << 16;

int threads_for(Index n) { return n >= kParallelElements ? get_num_threads() : 1; }

}  // namespace

double dropout_scale(const Dropout& dropout, Index layer, Index index) {
  return detail::dropout_mask(dropout.p, dropout.seed, layer, index);
}

namespace detail {

template <class T>
void interleave_directions(Index rows, Index hidden, const T* forward, const T* reverse, T* out) {
  const int threads = threads_for(2 * rows * hidden);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (Index r = 0; r < rows; ++r) {
    std::memcpy(out + 2 * r * hidden, forward + r * hidden, sizeof(T) * hidden);
    std::memcpy(out + (2 * r + 1) * hidden, reverse + r * hidden, sizeof(T) * hidden);
  }
}

template <class T>
void deinterleave_directions(Index rows, Index hidden, const T* in, T* forward, T* reverse) {
  const int threads = threads_for(2 * rows * hidden);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (Index r = 0; r < rows; ++r) {
    std::memcpy(forward + r * hidden, in + 2 * r * hidden, sizeof(T) * hidden);
    std::memcpy(reverse + r * hidden, in + (2 * r + 1) * hidden, sizeof(T) * hidden);
  }
}

template <class T>
void add_into(Index n, const T* src, T* dst) {
  const int threads = threads_for(n);
#pragma omp parallel for simd num_threads(threads) schedule(static) if (threads > 1)
  for (Index k = 0; k < n; ++k) dst[k] += src[k];
}

template <class T>
void apply_dropout(const Dropout& dropout, Index layer, Index n, T* data) {
  const int threads = threads_for(n);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (Index e = 0; e < n; ++e) data[e] *= T(dropout_scale(dropout, layer, e));
}

#define RNNCORE_INSTANTIATE_STACK_HELPERS(T)                                            \
  template void interleave_directions<T>(Index, Index, const T*, const T*, T*);         \
  template void deinterleave_directions<T>(Index, Index, const T*, T*, T*);             \
  template void add_into<T>(Index, const T*, T*);                                       \
  template void apply_dropout<T>(const Dropout&, Index, Index, T*);
RNNCORE_INSTANTIATE_STACK_HELPERS(float)
RNNCORE_INSTANTIATE_STACK_HELPERS(double)

}  // namespace detail
}  // namespace rnncore
