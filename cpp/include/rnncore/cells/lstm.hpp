// LSTM cell, with optional diagonal peepholes (Gers & Schmidhuber; as ONNX and oneDNN).
//
//   a_k = W_ih[k] x_t + b_ih[k] + W_hh[k] h_{t-1} + b_hh[k]      gates k in PyTorch order [i, f, g, o]
//   i = sigma(a_i + p_i * c_{t-1})        (p_* only with peepholes; rows [i, f, o] of weight_peephole)
//   f = sigma(a_f + p_f * c_{t-1})
//   g = tanh(a_g)
//   c_t = f * c_{t-1} + i * g
//   o = sigma(a_o + p_o * c_t)            (the output gate looks at the new cell state)
//   h_t = o * tanh(c_t)
//
// Backward, with dh = dL/dh_t (from y_t and from step t+1) and dc = dL/dc_t from step t+1:
//   da_o = dh * tanh(c_t) * o(1-o)
//   dc  += dh * o * (1 - tanh(c_t)^2) + p_o * da_o
//   da_i = dc * g * i(1-i);  da_f = dc * c_{t-1} * f(1-f);  da_g = dc * i * (1-g^2)
//   dL/dc_{t-1} = dc * f + p_i * da_i + p_f * da_f;   dL/dh_{t-1} = da W_hh (the driver's GEMM)
//   dp_i += da_i c_{t-1};  dp_f += da_f c_{t-1};  dp_o += da_o c_t
// Training record: slots [i, f, g, o] (then the gate gradients). c_t is kept in the driver's state
// history; tanh(c_t) is recomputed in backward rather than stored: one tanh per unit is cheap
// next to the GEMMs, while storing it would grow the workspace by a quarter.
#pragma once

#include "rnncore/activations.hpp"
#include "rnncore/cells/pointwise.hpp"

namespace rnncore {

template <bool Peephole>
struct LstmCell {
  enum Gate { I = 0, F = 1, G = 2, O = 3 };
  enum PeepholeRow { PI = 0, PF = 1, PO = 2 };
  static constexpr const char* name = Peephole ? "peephole_lstm" : "lstm";
  static constexpr int kGates = 4;
  static constexpr int kStashSlots = 4;
  static constexpr bool kHasCellState = true;
  static constexpr bool kHasPeephole = Peephole;
  static constexpr int kPhases = 1;
  static constexpr int kPhaseFirstGate[kPhases + 1] = {0, 4};
  static constexpr bool kDirectHiddenGrad = false;
  static constexpr int kOperandSlot = -1;
  static constexpr GateSlots kGateSlots[kGates] = {{0, 0, -1}, {1, 1, -1}, {2, 2, -1}, {3, 3, -1}};

  template <int Phase, class T, bool kTrain>
  RNNCORE_HD static void forward(const ForwardRow<T>& r, Index j) {
    const T c_prev = r.c_prev[j];
    T a_i = r.in(I, j) + r.rec(I, j) + r.bias(I, j);
    T a_f = r.in(F, j) + r.rec(F, j) + r.bias(F, j);
    T a_o = r.in(O, j) + r.rec(O, j) + r.bias(O, j);
    if constexpr (Peephole) {
      a_i += r.peephole[PI * r.H + j] * c_prev;
      a_f += r.peephole[PF * r.H + j] * c_prev;
    }
    const T i = act::sigmoid(a_i);
    const T f = act::sigmoid(a_f);
    const T g = act::tanh(r.in(G, j) + r.rec(G, j) + r.bias(G, j));
    const T c = f * c_prev + i * g;
    if constexpr (Peephole) a_o += r.peephole[PO * r.H + j] * c;
    const T o = act::sigmoid(a_o);
    r.c[j] = c;
    r.h[j] = o * act::tanh(c);
    if constexpr (kTrain) {
      r.slot(I, j) = i;
      r.slot(F, j) = f;
      r.slot(G, j) = g;
      r.slot(O, j) = o;
    }
  }

  template <int Phase, class T>
  RNNCORE_HD static void backward(const BackwardRow<T>& r, Index j) {
    const T i = r.slot(I, j), f = r.slot(F, j), g = r.slot(G, j), o = r.slot(O, j);
    const T c = r.c[j], c_prev = r.c_prev[j];
    const T tc = act::tanh(c);
    const T dh = r.dh[j] + r.dy[j];
    const T da_o = dh * tc * act::dsigmoid_from_output(o);
    T dc = r.dc[j] + dh * o * act::dtanh_from_output(tc);
    if constexpr (Peephole) dc += r.peephole[PO * r.H + j] * da_o;
    const T da_i = dc * g * act::dsigmoid_from_output(i);
    const T da_f = dc * c_prev * act::dsigmoid_from_output(f);
    const T da_g = dc * i * act::dtanh_from_output(g);
    T dc_prev = dc * f;
    if constexpr (Peephole) {
      dc_prev += r.peephole[PI * r.H + j] * da_i + r.peephole[PF * r.H + j] * da_f;
      r.dpeephole[PI * r.H + j] += da_i * c_prev;
      r.dpeephole[PF * r.H + j] += da_f * c_prev;
      r.dpeephole[PO * r.H + j] += da_o * c;
    }
    r.dc[j] = dc_prev;
    r.slot(I, j) = da_i;
    r.slot(F, j) = da_f;
    r.slot(G, j) = da_g;
    r.slot(O, j) = da_o;
  }
};

}  // namespace rnncore
