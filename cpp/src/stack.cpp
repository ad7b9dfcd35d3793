// Cell-independent parts of the stack driver (stack_helpers.hpp).
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "rnncore/runtime.hpp"
#include "stack_helpers.hpp"

namespace rnncore {

namespace {

// SplitMix64's finaliser: a bijection of 64-bit words whose outputs pass BigCrush for
// consecutive inputs, so hashing (seed, layer, index) gives independent uniform bits.
uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Element-wise passes over a layer's output are memory-bound; a second thread only pays once
// the data outgrows what one core streams in a few microseconds (the fork/join cost).
constexpr Index kParallelElements = Index(1) << 16;

int threads_for(Index n) { return n >= kParallelElements ? get_num_threads() : 1; }

}  // namespace

double dropout_scale(const Dropout& dropout, Index layer, Index index) {
  const uint64_t stream = mix64(dropout.seed ^ mix64(uint64_t(layer)));
  const uint64_t bits = mix64(stream + uint64_t(index));
  const double u = double(bits >> 11) * 0x1.0p-53;  // uniform in [0, 1), 53 bits
  return u < dropout.p ? 0.0 : 1.0 / (1.0 - dropout.p);
}

namespace detail {

void check_dropout(const Dropout& dropout) {
  if (!(dropout.p >= 0.0 && dropout.p < 1.0))
    throw std::invalid_argument("dropout must be a probability in [0, 1), got " +
                                std::to_string(dropout.p));
}

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
