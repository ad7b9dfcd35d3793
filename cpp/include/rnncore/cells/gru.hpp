// GRU cell, both placements of the reset gate.
//
//   r = sigma(W_ir x + b_ir + W_hr h_{t-1} + b_hr)          gates in PyTorch order [r, z, n]
//   z = sigma(W_iz x + b_iz + W_hz h_{t-1} + b_hz)
//   reset_after  (PyTorch, cuDNN):   n = tanh(W_in x + b_in + r * (W_hn h_{t-1} + b_hn))
//   reset_before (Cho et al. 2014):  n = tanh(W_in x + b_in + W_hn (r * h_{t-1}) + b_hn)
//   h_t = (1 - z) * n + z * h_{t-1}
//
// The lecture form h_t = (1 - z) h_{t-1} + z n is this cell with z -> 1 - z (negate the z rows of
// both weights and both biases); docs/cells.md shows the mapping.
//
// Backward, with dh = dL/dh_t:
//   da_n = dh (1-z) (1-n^2);  da_z = dh (h_{t-1} - n) z(1-z);  dL/dh_{t-1} = dh z + (GEMM terms)
//   reset_after:  da_r = da_n (W_hn h + b_hn) r(1-r); the recurrent n-gradient is da_n * r
//   reset_before: d(r h) = da_n W_hn;  da_r = d(r h) h_{t-1} r(1-r);  dL/dh_{t-1} += d(r h) r
//
// reset_before needs r before it can form the recurrent product of n, so its step runs in two
// phases (r and z, then n); reset_after runs in one.
// Training record: reset_after  slots [r, z, n, W_hn h + b_hn] -> [da_r, da_z, da_n*r, da_n];
//                  reset_before slots [r, z, n, r*h_{t-1}]    -> [da_r, da_z, da_n, r*h_{t-1}].
#pragma once

#include "rnncore/activations.hpp"
#include "rnncore/cells/pointwise.hpp"

namespace rnncore {

template <bool ResetAfter>
struct GruCell {
  enum Gate { R = 0, Z = 1, N = 2 };
  static constexpr const char* name = ResetAfter ? "gru" : "gru_reset_before";
  static constexpr int kGates = 3;
  static constexpr int kStashSlots = 4;
  static constexpr bool kHasCellState = false;
  static constexpr bool kHasPeephole = false;
  static constexpr int kPhases = ResetAfter ? 1 : 2;
  static constexpr int kPhaseFirstGate[3] = {0, ResetAfter ? 3 : 2, 3};
  static constexpr bool kDirectHiddenGrad = true;
  static constexpr int kOperandSlot = ResetAfter ? -1 : 3;
  static constexpr GateSlots kGateSlots[kGates] = {
      {0, 0, -1},
      {1, 1, -1},
      ResetAfter ? GateSlots{3, 2, -1} : GateSlots{2, 2, 3}};

  template <int Phase, class T, bool kTrain>
  RNNCORE_HD static void forward(const ForwardRow<T>& r, Index j) {
    const T h_prev = r.h_prev[j];
    if constexpr (ResetAfter) {
      const T rg = act::sigmoid(r.in(R, j) + r.rec(R, j) + r.bias(R, j));
      const T z = act::sigmoid(r.in(Z, j) + r.rec(Z, j) + r.bias(Z, j));
      const T hn = r.rec(N, j) + r.bias(N, j);
      const T n = act::tanh(r.in(N, j) + rg * hn);
      r.h[j] = (T(1) - z) * n + z * h_prev;
      if constexpr (kTrain) {
        r.slot(0, j) = rg;
        r.slot(1, j) = z;
        r.slot(2, j) = n;
        r.slot(3, j) = hn;
      }
    } else if constexpr (Phase == 0) {
      // r and z; r * h_{t-1} becomes the operand of the n-gate's recurrent product.
      const T rg = act::sigmoid(r.in(R, j) + r.rec(R, j) + r.bias(R, j));
      const T z = act::sigmoid(r.in(Z, j) + r.rec(Z, j) + r.bias(Z, j));
      r.slot(0, j) = rg;
      r.slot(1, j) = z;
      r.operand[j] = rg * h_prev;
    } else {
      const T z = r.slot(1, j);
      const T n = act::tanh(r.in(N, j) + r.rec(0, j) + r.bias(N, j));
      r.h[j] = (T(1) - z) * n + z * h_prev;
      if constexpr (kTrain) r.slot(2, j) = n;
    }
  }

  template <int Phase, class T>
  RNNCORE_HD static void backward(const BackwardRow<T>& r, Index j) {
    if constexpr (ResetAfter) {
      const T rg = r.slot(0, j), z = r.slot(1, j), n = r.slot(2, j), hn = r.slot(3, j);
      const T dh = r.dh[j] + r.dy[j];
      const T da_n = dh * (T(1) - z) * act::dtanh_from_output(n);
      const T da_z = dh * (r.h_prev[j] - n) * act::dsigmoid_from_output(z);
      const T da_r = da_n * hn * act::dsigmoid_from_output(rg);
      r.dh[j] = dh * z;
      r.slot(0, j) = da_r;
      r.slot(1, j) = da_z;
      r.slot(2, j) = da_n * rg;
      r.slot(3, j) = da_n;
    } else if constexpr (Phase == 1) {
      const T z = r.slot(1, j), n = r.slot(2, j);
      const T dh = r.dh[j] + r.dy[j];
      r.slot(2, j) = dh * (T(1) - z) * act::dtanh_from_output(n);
      r.slot(1, j) = dh * (r.h_prev[j] - n) * act::dsigmoid_from_output(z);
      r.dh[j] = dh * z;
    } else {
      const T rg = r.slot(0, j);
      const T drh = r.doperand[j];
      r.slot(0, j) = drh * r.h_prev[j] * act::dsigmoid_from_output(rg);
      r.dh[j] += drh * rg;
    }
  }
};

}  // namespace rnncore
