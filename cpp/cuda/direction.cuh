// The CUDA direction driver (internal): one layer in one direction over the whole sequence, for
// any cell of cells.hpp, on the Context's stream; stack_impl.cuh walks layers x directions over it.
//
// Layout. All B rows of a batch step together. Step s of sequence b (length len_b) is active
// when s < len_b and then reads time t = s (forward) or t = len_b - 1 - s (reverse); an inactive
// step carries the state unchanged and is given time t = s, a padded position, so every (t, b)
// belongs to exactly one (s, b). Training keeps its record in step order (context.cuh,
// LayerWorkspace), so each step's rows are one contiguous (B, .) block for the per-step GEMMs
// and all steps together one (T*B, .) matrix for the weight-gradient GEMMs.
//
// Forward:  training: record_training_inputs -> training_time_loop
//           inference: inference_time_loop (the input projection one chunk of steps at a time)
//           each step: launch_forward_phases (per phase the recurrent GEMM, then forward_kernel)
// Backward: backward_time_loop (per step and phase, last first: backward_kernel, then the GEMM
//           that sends the gradient back to h_{t-1} or the phase operand)
//           -> add_weight_gradients (per gate block, rnncore/detail/gate_blocks.hpp) -> input_gradient
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "blas.cuh"
#include "context.cuh"
#include "kernels.cuh"
#include "pointwise.cuh"
#include "rnncore/detail/gate_blocks.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

using ::rnncore::detail::for_each_gate_block;
using ::rnncore::detail::gradient_slot;
using ::rnncore::detail::WeightSide;

// Rows of the input projection computed at once in inference: bounds its memory at about
// kInferenceChunkRows * G * H values whatever T is, while the projection stays one large GEMM.
// A choice, not measured (no GPU was available when this was written).
inline constexpr Index kInferenceChunkRows = 16384;

template <class T>
struct DirectionCall {
  Index T_, B, I, H;
  bool reverse;
  const int64_t* lengths;  // device, or nullptr
  const LayerWeights<T>* w;
  const T* b_hh;  // w->b_hh or zeros
  const T* in;    // (T, B, I)
  const T* h0;    // (B, H) or nullptr
  const T* c0;
  T* y;  // (T, B, y_ld), this direction's first column
  Index y_ld;
  T* h_n;  // (B, H) or nullptr
  T* c_n;
};

// ---- forward ----------------------------------------------------------------------------------

// One step: per phase, the recurrent GEMM of the phase's gates into step.gh, then the pointwise
// kernel.
template <class Cell, class T, bool kTrain>
void launch_forward_phases(Context::Impl& ctx, const DirectionCall<T>& call, ForwardStep<T> step,
                           const T* h_prev) {
  const Index B = call.B, H = call.H;
  for_each_phase<Cell::kPhases>([&](auto phase_constant) {
    constexpr int phase = decltype(phase_constant)::value;
    const int first_gate = Cell::kPhaseFirstGate[phase];
    const Index width = (Cell::kPhaseFirstGate[phase + 1] - first_gate) * H;
    const T* operand = phase == 0 ? h_prev : step.operand;
    gemm<T>(ctx.handle, false, true, B, width, H, T(1), operand, H,
            call.w->w_hh + first_gate * H * H, H, T(0), step.gh, width);
    step.gh_ld = width;
    forward_kernel<Cell, phase, T, kTrain>
        <<<blocks_for(B * H), kThreadsPerBlock, 0, ctx.stream>>>(step);
    check_launch("forward kernel");
  });
}

// The arguments every step of a call shares.
template <class Cell, class T>
ForwardStep<T> forward_step_of(Context::Impl& ctx, const DirectionCall<T>& call) {
  const Index B = call.B, H = call.H;
  ForwardStep<T> step;
  step.B = B, step.H = H, step.T_ = call.T_, step.lengths = call.lengths;
  step.reverse = call.reverse;
  step.b_hh = call.b_hh, step.peephole = call.w->w_peephole;
  step.y = call.y, step.y_ld = call.y_ld;
  step.gh = ctx.gh.get<T>(std::max<Index>(1, B * Cell::kGates * H));
  step.operand = ctx.operand.get<T>(std::max<Index>(1, B * H));
  return step;
}

// Training: the inputs in step order, their projection (with b_ih) straight into the gate slots
// of the stash, and the initial states as the first rows of the h and c histories, all in the
// workspace that backward reads.
template <class Cell, class T>
void record_training_inputs(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace& ws) {
  const Index T_ = call.T_, B = call.B, I = call.I, H = call.H, G = Cell::kGates;
  const Index S = Cell::kStashSlots, BH = B * H, N = T_ * B;
  T* xs = ws.xs.get<T>(std::max<Index>(1, N * I));
  T* stash = ws.stash.get<T>(std::max<Index>(1, N * S * H));
  T* hist = ws.hist.get<T>((T_ + 1) * BH + 1);
  T* chist = Cell::kHasCellState ? ws.chist.get<T>((T_ + 1) * BH + 1) : nullptr;
  gather_steps(call.in, B, I, T_, 0, T_, call.lengths, call.reverse, xs, ctx.stream);
  gemm<T>(ctx.handle, false, true, N, G * H, I, T(1), xs, I, call.w->w_ih, I, T(0), stash, S * H);
  add_bias(N, G * H, stash, S * H, call.w->b_ih, ctx.stream);
  copy_or_zero(BH, call.h0, hist, ctx.stream);
  if (Cell::kHasCellState) copy_or_zero(BH, call.c0, chist, ctx.stream);
}

// Training steps read the projection from the stash and append h_t (c_t) to the histories.
// Sets the final states' rows (the histories' last).
template <class Cell, class T>
void training_time_loop(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace& ws,
                        ForwardStep<T> step, const T*& h_final, const T*& c_final) {
  const Index T_ = call.T_, B = call.B, H = call.H, S = Cell::kStashSlots, BH = B * H;
  T* stash = ws.stash.data<T>();
  T* hist = ws.hist.data<T>();
  T* chist = Cell::kHasCellState ? ws.chist.data<T>() : nullptr;
  step.stash_ld = S * H, step.gx_ld = S * H;
  for (Index s = 0; s < T_; ++s) {
    step.s = s;
    step.gx = stash + s * B * S * H;
    step.stash = stash + s * B * S * H;
    step.h_prev = hist + s * BH, step.h_next = hist + (s + 1) * BH;
    if (Cell::kHasCellState) step.c_prev = chist + s * BH, step.c_next = chist + (s + 1) * BH;
    launch_forward_phases<Cell, T, true>(ctx, call, step, step.h_prev);
  }
  h_final = hist + T_ * BH;
  c_final = Cell::kHasCellState ? chist + T_ * BH : nullptr;
}

// Inference keeps no record: h and c alternate between two (B, H) buffers, and the inputs are
// projected one chunk of steps at a time, so memory does not grow with T. Sets the final states'
// buffers.
template <class Cell, class T>
void inference_time_loop(Context::Impl& ctx, const DirectionCall<T>& call, ForwardStep<T> step,
                         const T*& h_final, const T*& c_final) {
  const Index T_ = call.T_, B = call.B, I = call.I, H = call.H, G = Cell::kGates;
  const Index S = Cell::kStashSlots, BH = B * H;
  cudaStream_t stream = ctx.stream;
  const Index chunk_steps =
      std::max<Index>(1, std::min<Index>(T_, kInferenceChunkRows / std::max<Index>(B, 1)));
  T* x_chunk = ctx.x_chunk.get<T>(std::max<Index>(1, chunk_steps * B * I));
  T* gx = ctx.gx.get<T>(std::max<Index>(1, chunk_steps * B * G * H));
  T* h[2] = {ctx.state_h[0].get<T>(BH + 1), ctx.state_h[1].get<T>(BH + 1)};
  T* c[2] = {nullptr, nullptr};
  if (Cell::kHasCellState) c[0] = ctx.state_c[0].get<T>(BH + 1), c[1] = ctx.state_c[1].get<T>(BH + 1);
  copy_or_zero(BH, call.h0, h[0], stream);
  if (Cell::kHasCellState) copy_or_zero(BH, call.c0, c[0], stream);
  step.stash = ctx.stash.get<T>(std::max<Index>(1, B * S * H));
  step.stash_ld = S * H, step.gx_ld = G * H;
  Index chunk_begin = 0, chunk_end = 0;
  int cur = 0;
  for (Index s = 0; s < T_; ++s) {
    if (s == chunk_end) {  // project the next chunk of steps
      chunk_begin = s;
      chunk_end = std::min(T_, s + chunk_steps);
      const Index rows = (chunk_end - chunk_begin) * B;
      gather_steps(call.in, B, I, T_, chunk_begin, chunk_end, call.lengths, call.reverse, x_chunk,
                   stream);
      gemm<T>(ctx.handle, false, true, rows, G * H, I, T(1), x_chunk, I, call.w->w_ih, I, T(0), gx,
              G * H);
      add_bias(rows, G * H, gx, G * H, call.w->b_ih, stream);
    }
    step.s = s;
    step.gx = gx + (s - chunk_begin) * B * G * H;
    step.h_prev = h[cur], step.h_next = h[1 - cur];
    if (Cell::kHasCellState) step.c_prev = c[cur], step.c_next = c[1 - cur];
    launch_forward_phases<Cell, T, false>(ctx, call, step, step.h_prev);
    cur = 1 - cur;
  }
  h_final = h[cur];
  c_final = c[cur];
}

template <class Cell, class T, bool kTrain>
void direction_forward(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace* ws) {
  const Index BH = call.B * call.H;
  const ForwardStep<T> step = forward_step_of<Cell>(ctx, call);
  const T* h_final = nullptr;
  const T* c_final = nullptr;
  if constexpr (kTrain) {
    record_training_inputs<Cell>(ctx, call, *ws);
    training_time_loop<Cell>(ctx, call, *ws, step, h_final, c_final);
  } else {
    inference_time_loop<Cell>(ctx, call, step, h_final, c_final);
  }
  if (call.h_n) copy_or_zero(BH, h_final, call.h_n, ctx.stream);
  if (Cell::kHasCellState && call.c_n) copy_or_zero(BH, c_final, call.c_n, ctx.stream);
}

// ---- backward ---------------------------------------------------------------------------------

template <class T>
struct DirectionGrad {
  const T* dy;  // (T, B, dy_ld) this direction's columns, or nullptr
  Index dy_ld;
  const T* dh_n;  // (B, H) or nullptr
  const T* dc_n;
  T* din;  // (T, B, I) or nullptr
  bool accumulate_din;
  T* dh0;
  T* dc0;
  const LayerGradients<T>* grads;
};

// The arguments every backward step of a call shares, with the carried gradients set to
// dL/d(final state) and the per-row peephole sums to zero.
template <class Cell, class T>
BackwardStep<T> backward_step_of(Context::Impl& ctx, const DirectionCall<T>& call,
                                 const DirectionGrad<T>& g) {
  const Index B = call.B, H = call.H, BH = B * H;
  cudaStream_t stream = ctx.stream;
  T* dc = Cell::kHasCellState ? ctx.dc.get<T>(BH + 1) : nullptr;
  if (Cell::kHasCellState) copy_or_zero(BH, g.dc_n, dc, stream);
  T* dpeephole = nullptr;
  if (Cell::kHasPeephole) {
    dpeephole = ctx.dpeephole.get<T>(3 * BH + 1);
    copy_or_zero<T>(3 * BH, nullptr, dpeephole, stream);
  }
  // (kGates * H: the same buffer serves as the zero b_hh of a layer without biases)
  T* zeros = ctx.zeros.get<T>(Cell::kGates * H);
  copy_or_zero<T>(Cell::kGates * H, nullptr, zeros, stream);
  BackwardStep<T> step;
  step.B = B, step.H = H, step.T_ = call.T_, step.lengths = call.lengths;
  step.reverse = call.reverse;
  step.stash_ld = Cell::kStashSlots * H, step.dy = g.dy, step.dy_ld = g.dy_ld, step.zeros = zeros;
  step.dc = dc, step.peephole = call.w->w_peephole, step.dpeephole = dpeephole;
  step.doperand = Cell::kPhases > 1 ? ctx.doperand.get<T>(BH + 1) : nullptr;
  return step;
}

// BPTT through the recorded steps, last to first; dh alternates between two buffers (the kernel
// reads dL/dh_t from one and writes the direct part of dL/dh_{t-1} into the other). Writes dh0,
// dc0.
template <class Cell, class T>
void backward_time_loop(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace& ws,
                        const DirectionGrad<T>& g, BackwardStep<T> step) {
  const Index T_ = call.T_, B = call.B, H = call.H, S = Cell::kStashSlots, BH = B * H;
  cudaStream_t stream = ctx.stream;
  T* stash = ws.stash.data<T>();
  const T* hist = ws.hist.data<T>();
  const T* chist = Cell::kHasCellState ? ws.chist.data<T>() : nullptr;
  T* dh[2] = {ctx.dh[0].get<T>(BH + 1), ctx.dh[1].get<T>(BH + 1)};
  T* doperand = Cell::kPhases > 1 ? ctx.doperand.data<T>() : nullptr;  // backward_step_of's
  copy_or_zero(BH, g.dh_n, dh[0], stream);
  int cur = 0;
  for (Index s = T_ - 1; s >= 0; --s) {
    step.s = s;
    step.stash = stash + s * B * S * H;
    step.dh_in = dh[cur], step.dh_out = dh[1 - cur];
    step.h_prev = hist + s * BH, step.h = hist + (s + 1) * BH;
    if (Cell::kHasCellState) step.c_prev = chist + s * BH, step.c = chist + (s + 1) * BH;
    for_each_phase_reversed<Cell::kPhases>([&](auto phase_constant) {
      constexpr int phase = decltype(phase_constant)::value;
      backward_kernel<Cell, phase, T><<<blocks_for(BH), kThreadsPerBlock, 0, stream>>>(step);
      check_launch("backward kernel");
      const int first_gate = Cell::kPhaseFirstGate[phase];
      const Index width = (Cell::kPhaseFirstGate[phase + 1] - first_gate) * H;
      // phase 0: dL/dh_{t-1} += dG W_hh (onto the direct part); later phases: the operand's.
      gemm<T>(ctx.handle, false, false, B, H, width, T(1), step.stash + first_gate * H, S * H,
              call.w->w_hh + first_gate * H * H, H, phase == 0 ? T(1) : T(0),
              phase == 0 ? step.dh_out : doperand, H);
    });
    cur = 1 - cur;
  }
  if (g.dh0) copy_or_zero(BH, dh[cur], g.dh0, stream);
  if (Cell::kHasCellState && g.dc0) copy_or_zero(BH, step.dc, g.dc0, stream);
}

// dW_ih, dW_hh and the bias sums over all T*B rows, one GEMM per gate block; the peephole
// gradient from the per-row sums the kernels kept.
template <class Cell, class T>
void add_weight_gradients(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace& ws,
                          const LayerGradients<T>& grads, const T* dpeephole) {
  const Index B = call.B, I = call.I, H = call.H, S = Cell::kStashSlots, N = call.T_ * B;
  const T* stash = ws.stash.data<T>();
  const T* xs = ws.xs.data<T>();
  const T* hist = ws.hist.data<T>();
  for_each_gate_block<Cell>(WeightSide::kInput, [&](int first, int end) {
    const Index cols = (end - first) * H;
    const T* dg = stash + gradient_slot<Cell>(first, WeightSide::kInput) * H;
    if (grads.dw_ih)
      gemm<T>(ctx.handle, true, false, cols, I, N, T(1), dg, S * H, xs, I, T(1),
              grads.dw_ih + first * H * I, I);
    add_column_sums(ctx, N, cols, dg, S * H, grads.db_ih ? grads.db_ih + first * H : nullptr);
  });
  for_each_gate_block<Cell>(WeightSide::kRecurrent, [&](int first, int end) {
    const Index cols = (end - first) * H;
    const T* dg = stash + gradient_slot<Cell>(first, WeightSide::kRecurrent) * H;
    const int operand_slot = Cell::kGateSlots[first].recurrent_operand;
    const T* operand = operand_slot < 0 ? hist : stash + operand_slot * H;
    if (grads.dw_hh)
      gemm<T>(ctx.handle, true, false, cols, H, N, T(1), dg, S * H, operand,
              operand_slot < 0 ? H : S * H, T(1), grads.dw_hh + first * H * H, H);
    add_column_sums(ctx, N, cols, dg, S * H, grads.db_hh ? grads.db_hh + first * H : nullptr);
  });
  if (Cell::kHasPeephole && grads.dw_peephole)
    add_column_sums(ctx, B, 3 * H, dpeephole, 3 * H, grads.dw_peephole);
}

// din (T, B, I) (= or +=) dG_x W_ih: one GEMM per input gate block into step order, then back to
// time order.
template <class Cell, class T>
void input_gradient(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace& ws,
                    const DirectionGrad<T>& g) {
  const Index T_ = call.T_, B = call.B, I = call.I, H = call.H, S = Cell::kStashSlots;
  const Index N = T_ * B;
  if (!g.din || N <= 0) return;
  const T* stash = ws.stash.data<T>();
  T* dxs = ctx.dxs.get<T>(std::max<Index>(1, N * I));
  bool first_block = true;
  for_each_gate_block<Cell>(WeightSide::kInput, [&](int first, int end) {
    const T* dg = stash + gradient_slot<Cell>(first, WeightSide::kInput) * H;
    gemm<T>(ctx.handle, false, false, N, I, (end - first) * H, T(1), dg, S * H,
            call.w->w_ih + first * H * I, I, first_block ? T(0) : T(1), dxs, I);
    first_block = false;
  });
  scatter_steps_kernel<<<blocks_for(N * I), kThreadsPerBlock, 0, ctx.stream>>>(
      dxs, B, I, T_, call.lengths, call.reverse, g.accumulate_din, g.din);
  check_launch("scatter kernel");
}

template <class Cell, class T>
void direction_backward(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace& ws,
                        const DirectionGrad<T>& g) {
  const BackwardStep<T> step = backward_step_of<Cell>(ctx, call, g);
  backward_time_loop<Cell>(ctx, call, ws, g, step);
  add_weight_gradients<Cell>(ctx, call, ws, *g.grads, step.dpeephole);
  input_gradient<Cell>(ctx, call, ws, g);
}

}  // namespace detail
}  // namespace cuda
}  // namespace rnncore
