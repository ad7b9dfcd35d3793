// The inter-layer dropout mask as a pure function of (seed, layer, element), host+device: the one
// definition that the CPU stack driver (rnncore::dropout_scale, cpp/src/stack.cpp) and the CUDA
// kernels (cpp/cuda/kernels.cuh) both evaluate, so a training forward drops the same elements on
// either device for the same seed, and backward regenerates the mask instead of storing it.
// Internal: not part of the API (stack.hpp's dropout_scale is).
#pragma once

#include <cstdint>

#include "rnncore/common.hpp"

namespace rnncore {
namespace detail {

// SplitMix64's finaliser: a bijection of 64-bit words whose outputs pass BigCrush for
// consecutive inputs, so hashing (seed, layer, index) gives independent uniform bits.
RNNCORE_HD uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// 0 (dropped, probability p) or 1 / (1 - p) (kept) for element `index` of layer `layer`'s output.
RNNCORE_HD double dropout_mask(double p, uint64_t seed, Index layer, Index index) {
  const uint64_t stream = mix64(seed ^ mix64(uint64_t(layer)));
  const uint64_t bits = mix64(stream + uint64_t(index));
  const double u = double(bits >> 11) * 0x1.0p-53;  // uniform in [0, 1), 53 bits
  return u < p ? 0.0 : 1.0 / (1.0 - p);
}

}  // namespace detail
}  // namespace rnncore
