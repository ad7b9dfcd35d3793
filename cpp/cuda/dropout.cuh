// The inter-layer dropout mask, host+device: the same function of (seed, layer, index) as the
// CPU path's rnncore::dropout_scale (cpp/src/stack.cpp), so a training forward on the device
// drops the same elements as on the CPU for the same seed (tests/test_cuda.py checks the host
// instantiation against the CPU path's masks).
#pragma once

#include <cstdint>

#include "rnncore/common.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

RNNCORE_HD uint64_t mix64(uint64_t z) {  // SplitMix64's finaliser
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

RNNCORE_HD double dropout_scale(double p, uint64_t seed, Index layer, Index index) {
  const uint64_t stream = mix64(seed ^ mix64(uint64_t(layer)));
  const uint64_t bits = mix64(stream + uint64_t(index));
  const double u = double(bits >> 11) * 0x1.0p-53;
  return u < p ? 0.0 : 1.0 / (1.0 - p);
}

}  // namespace detail
}  // namespace cuda
}  // namespace rnncore
