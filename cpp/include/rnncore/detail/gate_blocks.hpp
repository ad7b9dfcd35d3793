// Gate blocks of the weight gradients, shared by the CPU drivers (cpp/src/sequence_backward.hpp,
// the step engine) and the CUDA direction driver (cpp/cuda/direction.cuh): which gates'
// gradients sit side by side in the stash, so that one GEMM serves all of them. It reads only a
// cell's GateSlots (cells/pointwise.hpp). Internal: not part of the API.
#pragma once

#include "rnncore/common.hpp"

namespace rnncore {
namespace detail {

// Which side of a gate's pre-activation a gradient belongs to (GateSlots, cells/pointwise.hpp).
enum class WeightSide {
  kInput,      // x W_ih^T + b_ih: dW_ih, db_ih, dx
  kRecurrent,  // (operand) W_hh^T + b_hh: dW_hh, db_hh
};

// The stash slot that holds gate `gate`'s gradient on `side`.
template <class Cell>
constexpr int gradient_slot(int gate, WeightSide side) {
  return side == WeightSide::kInput ? Cell::kGateSlots[gate].input_grad
                                    : Cell::kGateSlots[gate].recurrent_grad;
}

// Calls f(first_gate, end_gate) for each maximal run of gates whose `side` gradients sit in
// consecutive stash slots, so the run is one (N, (end_gate - first_gate) * H) block of the stash
// and one GEMM serves it; on the recurrent side the run's gates must also share the product's
// operand (h_{t-1}, or a stash slot for GRU reset-before's n-gate).
template <class Cell, class F>
void for_each_gate_block(WeightSide side, F&& f) {
  const auto continues_block = [side](int gate, int first_gate) {
    return gradient_slot<Cell>(gate, side) == gradient_slot<Cell>(gate - 1, side) + 1 &&
           (side == WeightSide::kInput || Cell::kGateSlots[gate].recurrent_operand ==
                                              Cell::kGateSlots[first_gate].recurrent_operand);
  };
  for (int first_gate = 0; first_gate < Cell::kGates;) {
    int end_gate = first_gate + 1;
    while (end_gate < Cell::kGates && continues_block(end_gate, first_gate)) ++end_gate;
    f(first_gate, end_gate);
    first_gate = end_gate;
  }
}

}  // namespace detail
}  // namespace rnncore
