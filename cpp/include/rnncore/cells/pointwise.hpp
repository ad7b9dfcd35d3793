// What a cell's pointwise functions see of one batch row during one time step.
//
// The sequence driver fills these views; a cell's `forward<Phase>` / `backward<Phase>` read and
// write unit j of them. Slot k of the per-row training record ("stash", width kStashSlots*H)
// lives at stash[k*H + j]; gate g of unit j in the input projection at gx[g*gx_gate_stride + j -
// gx_first], and in the recurrent product of the current phase at gh[g*gh_gate_stride + j -
// gh_first] (g counted from the phase's first gate). The two strides differ because the driver
// gives every thread its own slice [j_begin, j_end) of hidden units with its own packed buffers.
#pragma once

#include <type_traits>
#include <utility>

#include "rnncore/common.hpp"

namespace rnncore {

// Calls f(std::integral_constant<int, p>{}) for each phase p < Phases of a cell's step (its
// kPhases), in order or reversed: the phase is a compile-time constant for forward<p>/backward<p>.
template <int Phases, class F>
void for_each_phase(F&& f) {
  [&]<int... P>(std::integer_sequence<int, P...>) {
    (f(std::integral_constant<int, P>{}), ...);
  }(std::make_integer_sequence<int, Phases>{});
}
template <int Phases, class F>
void for_each_phase_reversed(F&& f) {
  [&]<int... P>(std::integer_sequence<int, P...>) {
    (f(std::integral_constant<int, Phases - 1 - P>{}), ...);
  }(std::make_integer_sequence<int, Phases>{});
}

template <class T>
struct ForwardRow {
  const T* gx = nullptr;  // input projection x W_ih^T + b_ih of this row
  Index gx_gate_stride = 0, gx_first = 0;
  const T* gh = nullptr;  // recurrent product operand W_hh^T of this phase (no bias)
  Index gh_gate_stride = 0, gh_first = 0;
  const T* b_hh = nullptr;      // (G*H)
  const T* peephole = nullptr;  // (3, H) rows [i, f, o], peephole LSTM only
  const T* h_prev = nullptr;    // (H)
  const T* c_prev = nullptr;    // (H), LSTM only
  T* h = nullptr;               // (H) new hidden state
  T* c = nullptr;               // (H) new cell state, LSTM only
  T* stash = nullptr;           // training record (slots*H); scratch in multi-phase inference
  T* operand = nullptr;         // (H) operand of the next phase's recurrent product
  Index H = 0;

  RNNCORE_HD T in(int gate, Index j) const { return gx[gate * gx_gate_stride + j - gx_first]; }
  RNNCORE_HD T rec(int phase_gate, Index j) const {
    return gh[phase_gate * gh_gate_stride + j - gh_first];
  }
  RNNCORE_HD T bias(int gate, Index j) const { return b_hh[gate * H + j]; }
  RNNCORE_HD T& slot(int k, Index j) const { return stash[k * H + j]; }
};

template <class T>
struct BackwardRow {
  T* stash = nullptr;          // in: the forward record; out: gate gradients
  const T* dy = nullptr;       // (H) gradient of this step's output
  T* dh = nullptr;             // in: dL/dh_t from later steps; out: direct part of dL/dh_{t-1}
  T* dc = nullptr;             // in: dL/dc_t; out: dL/dc_{t-1} (LSTM only)
  const T* h_prev = nullptr;   // (H)
  const T* c_prev = nullptr;   // (H)
  const T* h = nullptr;        // (H) this step's hidden state
  const T* c = nullptr;        // (H) this step's cell state
  const T* peephole = nullptr;  // (3, H)
  T* dpeephole = nullptr;      // (3, H), accumulated
  const T* doperand = nullptr;  // (H) gradient of the phase operand (GRU reset-before: r*h_prev)
  Index H = 0;

  RNNCORE_HD T& slot(int k, Index j) const { return stash[k * H + j]; }
};

// A cell declares, per gate, which stash slot holds the gradient of the gate's input-side
// pre-activation (for dW_ih, db_ih, dx) and which holds the recurrent-side one (for dW_hh, db_hh,
// dh_{t-1}), and whether the recurrent weight multiplies h_{t-1} (operand slot -1) or a value
// kept in a stash slot (GRU reset-before: r*h_{t-1}).
struct GateSlots {
  int input_grad;
  int recurrent_grad;
  int recurrent_operand;
};

}  // namespace rnncore
