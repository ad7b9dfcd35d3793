// Vanilla (Elman) RNN cell.
//
//   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   act = tanh or relu
//
// Backward: da = (dL/dh_t) * act'(h_t), computed from the stored output h_t;
// dL/dh_{t-1} = da W_hh (the driver's GEMM); dW_ih += da^T x, dW_hh += da^T h_{t-1}.
// Training record: one slot, holding the input projection and then da (h_t itself is kept in the
// driver's state history, so nothing else is stored).
#pragma once

#include "rnncore/activations.hpp"
#include "rnncore/cells/pointwise.hpp"

namespace rnncore {

enum class Nonlinearity { Tanh, Relu };

template <Nonlinearity Act>
struct RnnCell {
  static constexpr const char* name = Act == Nonlinearity::Tanh ? "rnn_tanh" : "rnn_relu";
  static constexpr int kGates = 1;
  static constexpr int kStashSlots = 1;
  static constexpr bool kHasCellState = false;
  static constexpr bool kHasPeephole = false;
  static constexpr int kPhases = 1;
  static constexpr int kPhaseFirstGate[kPhases + 1] = {0, 1};
  static constexpr bool kDirectHiddenGrad = false;
  static constexpr int kOperandSlot = -1;
  static constexpr GateSlots kGateSlots[kGates] = {{0, 0, -1}};

  template <class T>
  RNNCORE_HD static T activate(T a) {
    if constexpr (Act == Nonlinearity::Tanh) return act::tanh(a);
    else return act::relu(a);
  }
  template <class T>
  RNNCORE_HD static T dactivate_from_output(T h) {
    if constexpr (Act == Nonlinearity::Tanh) return act::dtanh_from_output(h);
    else return act::drelu_from_output(h);
  }

  template <int Phase, class T, bool kTrain>
  RNNCORE_HD static void forward(const ForwardRow<T>& r, Index j) {
    r.h[j] = activate(r.in(0, j) + r.rec(0, j) + r.bias(0, j));
  }

  template <int Phase, class T>
  RNNCORE_HD static void backward(const BackwardRow<T>& r, Index j) {
    r.slot(0, j) = (r.dh[j] + r.dy[j]) * dactivate_from_output(r.h[j]);
  }
};

}  // namespace rnncore
