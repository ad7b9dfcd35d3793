// The checks of a stack call that the CPU driver (cpp/src/stack_impl.hpp) and the CUDA driver
// (cpp/cuda/stack_impl.cuh) make alike, with one wording: the number of layer-directions given
// and the dropout probability. Internal: not part of the API.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

#include "rnncore/stack.hpp"

namespace rnncore {
namespace detail {

// std::invalid_argument unless `what` (weights, gradients) holds num_layers * directions entries.
inline void check_weight_count(const StackShape& shape, std::size_t count, const char* what) {
  const std::size_t expected = std::size_t(shape.num_layers * shape.directions());
  if (count != expected)
    throw std::invalid_argument(std::string(what) + " holds " + std::to_string(count) +
                                " layer-directions, expected num_layers * directions = " +
                                std::to_string(expected));
}

// std::invalid_argument unless 0 <= p < 1.
inline void check_dropout(double p) {
  if (!(p >= 0.0 && p < 1.0))
    throw std::invalid_argument("dropout must be a probability in [0, 1), got " +
                                std::to_string(p));
}

}  // namespace detail
}  // namespace rnncore
