// The CUDA stack driver (internal): forward (inference and training) and BPTT for any cell of
// cells.hpp, on one CUDA stream. Included by the generated per-cell units
// (cpp/cuda/instantiate_cell.cu.in), which instantiate it. See api.hpp for the contract.
//
// Layout. All B rows of a batch step together. Step s of sequence b (length len_b) is active
// when s < len_b and then reads time t = s (forward) or t = len_b - 1 - s (reverse); an inactive
// step carries the state unchanged and is given time t = s, a padded position, so every (t, b)
// belongs to exactly one (s, b). Training keeps its record in step order (context.cuh,
// LayerWorkspace), so each step's rows are one contiguous (B, .) block for the per-step GEMMs
// and all steps together one (T*B, .) matrix for the weight-gradient GEMMs.
//
// Per step and phase (a cell's step has Cell::kPhases, cells/pointwise.hpp): one cuBLAS GEMM for
// the recurrent product of the phase's gates, then one pointwise kernel over the (B, H) tile whose
// thread (b, j) calls Cell::forward<Phase>(row, j), the very function the CPU path calls.
// Backward mirrors it: per phase, last first, Cell::backward<Phase> then the GEMM that sends the
// gradient back to h_{t-1} (phase 0) or to the phase operand.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "api.hpp"
#include "context.cuh"
#include "rnncore/cells.hpp"
#include "rnncore/detail/dropout_mask.hpp"
#include "rnncore/detail/gate_blocks.hpp"
#include "rnncore/detail/stack_checks.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

// Rows of the input projection computed at once in inference: bounds its memory at about
// kInferenceChunkRows * G * H values whatever T is, while the projection stays one large GEMM.
// A choice, not measured (no GPU was available when this was written).
inline constexpr Index kInferenceChunkRows = 16384;
inline constexpr int kThreadsPerBlock = 256;

inline unsigned blocks_for(Index n) {
  return unsigned((n + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// ---- cuBLAS on row-major arrays -----------------------------------------------------------------
// C (M x N) = alpha * op(A) op(B) + beta * C, all row-major with leading dimensions lda, ldb, ldc.
// cuBLAS is column-major: a row-major X is the column-major X^T, so this computes
// C^T = op(B)^T op(A)^T.
inline int gemm_call(blas::Handle h, int ta, int tb, int m, int n, int k, const float* alpha,
                     const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
                     int ldc) {
  return blas::api().sgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline int gemm_call(blas::Handle h, int ta, int tb, int m, int n, int k, const double* alpha,
                     const double* a, int lda, const double* b, int ldb, const double* beta,
                     double* c, int ldc) {
  return blas::api().dgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <class T>
void gemm(blas::Handle h, bool trans_a, bool trans_b, Index M, Index N, Index K, T alpha,
          const T* A, Index lda, const T* B, Index ldb, T beta, T* C, Index ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C; cuBLAS does this too, but not all versions accept k = 0
    if (beta == T(1)) return;
  }
  check_blas(gemm_call(h, trans_b ? blas::kOpT : blas::kOpN, trans_a ? blas::kOpT : blas::kOpN,
                       int(N), int(M), int(std::max<Index>(K, 0)), &alpha, B, int(ldb), A,
                       int(lda), &beta, C, int(ldc)),
             "cublas gemm");
}

// ---- small kernels ------------------------------------------------------------------------------

__device__ inline Index step_time(Index s, Index len, bool reverse) {
  return s >= len ? s : (reverse ? len - 1 - s : s);
}

// xs[(s - s0)*B + b, :] = in[(t*B + b), :] for the steps [s0, s1), zeros for inactive steps.
template <class T>
__global__ void gather_steps_kernel(const T* in, Index B, Index I, Index T_, Index s0, Index s1,
                                    const int64_t* lengths, bool reverse, T* xs) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= (s1 - s0) * B * I) return;
  const Index row = idx / I, k = idx - row * I;
  const Index s = s0 + row / B, b = row % B;
  const Index len = lengths ? lengths[b] : T_;
  xs[idx] = s < len ? in[(step_time(s, len, reverse) * B + b) * I + k] : T(0);
}

// out[(t*B + b), :] (= or +=) dxs[(s*B + b), :]: step order back to time order.
template <class T>
__global__ void scatter_steps_kernel(const T* dxs, Index B, Index I, Index T_,
                                     const int64_t* lengths, bool reverse, bool accumulate,
                                     T* out) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T_ * B * I) return;
  const Index row = idx / I, k = idx - row * I;
  const Index s = row / B, b = row % B;
  const Index len = lengths ? lengths[b] : T_;
  T* dst = out + (step_time(s, len, reverse) * B + b) * I + k;
  *dst = accumulate ? *dst + dxs[idx] : dxs[idx];
}

template <class T>
__global__ void add_bias_kernel(Index rows, Index cols, T* dst, Index ld, const T* bias) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  const Index r = idx / cols, c = idx - r * cols;
  dst[r * ld + c] += bias[c];
}

template <class T>
__global__ void fill_kernel(Index n, T value, T* dst) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < n) dst[idx] = value;
}

template <class T>
__global__ void dropout_kernel(Index n, double p, uint64_t seed, Index layer, T* data) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < n) data[idx] *= T(::rnncore::detail::dropout_mask(p, seed, layer, idx));
}

template <class T>
void fill(Index n, T value, T* dst, cudaStream_t stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(n, value, dst);
  check_launch("fill kernel");
}

// dst (count) = src, or zeros when src is nullptr.
template <class T>
void copy_or_zero(Index count, const T* src, T* dst, cudaStream_t stream) {
  if (count <= 0) return;
  if (src)
    check(cudaMemcpyAsync(dst, src, sizeof(T) * count, cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync");
  else
    check(cudaMemsetAsync(dst, 0, sizeof(T) * count, stream), "cudaMemsetAsync");
}

// ---- the pointwise kernels ----------------------------------------------------------------------

template <class T>
struct ForwardStep {
  Index B = 0, H = 0, T_ = 0, s = 0;
  const int64_t* lengths = nullptr;  // nullptr: every sequence has T steps
  bool reverse = false;
  const T* gx = nullptr;  // input projection of step s: row b at gx + b * gx_ld, gate g at g*H
  Index gx_ld = 0;
  T* gh = nullptr;  // the phase's recurrent product (B, gates * H)
  Index gh_ld = 0;
  const T* b_hh = nullptr;
  const T* peephole = nullptr;
  const T* h_prev = nullptr;
  T* h_next = nullptr;
  const T* c_prev = nullptr;
  T* c_next = nullptr;
  T* stash = nullptr;  // row b at stash + b * stash_ld: training record, or inference scratch
  Index stash_ld = 0;
  T* operand = nullptr;  // (B, H): operand of the next phase's product
  T* y = nullptr;        // (T, B, y_ld): this direction's columns
  Index y_ld = 0;
};

template <class Cell, int Phase, class T, bool kTrain>
__global__ void forward_kernel(ForwardStep<T> a) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.H) return;
  const Index H = a.H, b = idx / H, j = idx - b * H;
  const Index len = a.lengths ? a.lengths[b] : a.T_;
  constexpr bool kLast = Phase == Cell::kPhases - 1;
  if (a.s >= len) {  // past the sequence's end: carry the state
    if constexpr (kLast) {
      a.h_next[idx] = a.h_prev[idx];
      if constexpr (Cell::kHasCellState) a.c_next[idx] = a.c_prev[idx];
    }
    return;
  }
  ForwardRow<T> row;
  row.gx = a.gx + b * a.gx_ld;
  row.gx_gate_stride = H, row.gx_first = 0;
  row.gh = a.gh + b * a.gh_ld;
  row.gh_gate_stride = H, row.gh_first = 0;
  row.b_hh = a.b_hh, row.peephole = a.peephole, row.H = H;
  row.h_prev = a.h_prev + b * H;
  row.h = a.h_next + b * H;
  if constexpr (Cell::kHasCellState) row.c_prev = a.c_prev + b * H, row.c = a.c_next + b * H;
  row.stash = a.stash + b * a.stash_ld;
  row.operand = a.operand + b * H;
  Cell::template forward<Phase, T, kTrain>(row, j);
  if constexpr (kTrain && Cell::kOperandSlot >= 0 && Phase + 1 < Cell::kPhases)
    row.stash[Cell::kOperandSlot * H + j] = row.operand[j];  // backward's dW_hh operand
  if constexpr (kLast)
    a.y[(step_time(a.s, len, a.reverse) * a.B + b) * a.y_ld + j] = row.h[j];
}

template <class T>
struct BackwardStep {
  Index B = 0, H = 0, T_ = 0, s = 0;
  const int64_t* lengths = nullptr;
  bool reverse = false;
  T* stash = nullptr;  // rows of step s, stash_ld apart
  Index stash_ld = 0;
  const T* dy = nullptr;  // (T, B, dy_ld) this direction's columns, or nullptr
  Index dy_ld = 0;
  const T* zeros = nullptr;  // H zeros (dy of a row without one)
  const T* dh_in = nullptr;  // dL/dh_t carried from step s+1 (B, H)
  T* dh_out = nullptr;       // dL/dh_{t-1}: its direct part here, the GEMM adds the rest
  T* dc = nullptr;           // (B, H) in: dL/dc_t, out: dL/dc_{t-1}
  const T* h_prev = nullptr;
  const T* h = nullptr;
  const T* c_prev = nullptr;
  const T* c = nullptr;
  const T* peephole = nullptr;
  T* dpeephole = nullptr;  // (B, 3, H): one partial sum per row, so no two threads add into one
  const T* doperand = nullptr;  // (B, H)
};

template <class Cell, int Phase, class T>
__global__ void backward_kernel(BackwardStep<T> a) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.H) return;
  const Index H = a.H, b = idx / H, j = idx - b * H;
  const Index len = a.lengths ? a.lengths[b] : a.T_;
  constexpr bool kFirst = Phase == Cell::kPhases - 1;  // the first phase backward runs
  T* stash = a.stash + b * a.stash_ld;
  if (a.s >= len) {  // a carry: the gradient passes unchanged, no gate gradients
    if constexpr (kFirst) {
      for (int k = 0; k < Cell::kStashSlots; ++k) stash[k * H + j] = T(0);
      a.dh_out[idx] = a.dh_in[idx];
    }
    return;
  }
  if constexpr (kFirst) a.dh_out[idx] = a.dh_in[idx];
  BackwardRow<T> row;
  row.stash = stash;
  row.dy = a.dy ? a.dy + (step_time(a.s, len, a.reverse) * a.B + b) * a.dy_ld : a.zeros;
  row.dh = a.dh_out + b * H;
  row.h_prev = a.h_prev + b * H;
  row.h = a.h + b * H;
  if constexpr (Cell::kHasCellState) {
    row.dc = a.dc + b * H;
    row.c_prev = a.c_prev + b * H;
    row.c = a.c + b * H;
  }
  row.peephole = a.peephole;
  row.dpeephole = a.dpeephole ? a.dpeephole + b * 3 * H : nullptr;
  row.doperand = a.doperand ? a.doperand + b * H : nullptr;
  row.H = H;
  Cell::template backward<Phase, T>(row, j);
  // Cells without a direct part leave dh alone; their dL/dh_{t-1} is the GEMM's alone.
  if constexpr (Phase == 0 && !Cell::kDirectHiddenGrad) a.dh_out[idx] = T(0);
}

// ---- gate blocks (rnncore/detail/gate_blocks.hpp, the CPU driver's too) ------------------------

using ::rnncore::detail::for_each_gate_block;
using ::rnncore::detail::gradient_slot;
using ::rnncore::detail::WeightSide;

// ---- one layer, one direction -------------------------------------------------------------------

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

template <class Cell, class T, bool kTrain>
void direction_forward(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace* ws) {
  const Index T_ = call.T_, B = call.B, I = call.I, H = call.H, G = Cell::kGates;
  const Index S = Cell::kStashSlots, BH = B * H, N = T_ * B;
  cudaStream_t stream = ctx.stream;
  ForwardStep<T> step;
  step.B = B, step.H = H, step.T_ = T_, step.lengths = call.lengths, step.reverse = call.reverse;
  step.b_hh = call.b_hh, step.peephole = call.w->w_peephole;
  step.y = call.y, step.y_ld = call.y_ld;
  step.gh = ctx.gh.get<T>(std::max<Index>(1, B * G * H));
  step.operand = ctx.operand.get<T>(std::max<Index>(1, BH));
  const T* h_final = nullptr;
  const T* c_final = nullptr;
  if constexpr (kTrain) {
    T* xs = ws->xs.get<T>(std::max<Index>(1, N * I));
    T* stash = ws->stash.get<T>(std::max<Index>(1, N * S * H));
    T* hist = ws->hist.get<T>((T_ + 1) * BH + 1);
    T* chist = Cell::kHasCellState ? ws->chist.get<T>((T_ + 1) * BH + 1) : nullptr;
    if (N > 0) {
      gather_steps_kernel<<<blocks_for(N * I), kThreadsPerBlock, 0, stream>>>(
          call.in, B, I, T_, 0, T_, call.lengths, call.reverse, xs);
      check_launch("gather kernel");
    }
    gemm<T>(ctx.handle, false, true, N, G * H, I, T(1), xs, I, call.w->w_ih, I, T(0), stash,
            S * H);
    if (call.w->b_ih && N > 0) {
      add_bias_kernel<<<blocks_for(N * G * H), kThreadsPerBlock, 0, stream>>>(N, G * H, stash,
                                                                              S * H, call.w->b_ih);
      check_launch("bias kernel");
    }
    copy_or_zero(BH, call.h0, hist, stream);
    if (Cell::kHasCellState) copy_or_zero(BH, call.c0, chist, stream);
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
  } else {
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
      if (s == chunk_end) {
        chunk_begin = s;
        chunk_end = std::min(T_, s + chunk_steps);
        const Index rows = (chunk_end - chunk_begin) * B;
        gather_steps_kernel<<<blocks_for(rows * I), kThreadsPerBlock, 0, stream>>>(
            call.in, B, I, T_, chunk_begin, chunk_end, call.lengths, call.reverse, x_chunk);
        check_launch("gather kernel");
        gemm<T>(ctx.handle, false, true, rows, G * H, I, T(1), x_chunk, I, call.w->w_ih, I, T(0),
                gx, G * H);
        if (call.w->b_ih) {
          add_bias_kernel<<<blocks_for(rows * G * H), kThreadsPerBlock, 0, stream>>>(
              rows, G * H, gx, G * H, call.w->b_ih);
          check_launch("bias kernel");
        }
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
  if (call.h_n) copy_or_zero(BH, h_final, call.h_n, stream);
  if (Cell::kHasCellState && call.c_n) copy_or_zero(BH, c_final, call.c_n, stream);
}

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

// dst (cols) += column sums of src (rows x cols, ld), as a GEMM with a vector of ones.
template <class T>
void add_column_sums(Context::Impl& ctx, Index rows, Index cols, const T* src, Index ld, T* dst) {
  if (!dst || rows <= 0 || cols <= 0) return;
  T* ones = ctx.ones.get<T>(rows);
  fill(rows, T(1), ones, ctx.stream);
  gemm<T>(ctx.handle, true, false, cols, 1, rows, T(1), src, ld, ones, 1, T(1), dst, 1);
}

template <class Cell, class T>
void direction_backward(Context::Impl& ctx, const DirectionCall<T>& call, LayerWorkspace& ws,
                        const DirectionGrad<T>& g) {
  const Index T_ = call.T_, B = call.B, I = call.I, H = call.H;
  const Index S = Cell::kStashSlots, BH = B * H, N = T_ * B;
  cudaStream_t stream = ctx.stream;
  T* stash = ws.stash.data<T>();
  const T* xs = ws.xs.data<T>();
  const T* hist = ws.hist.data<T>();
  const T* chist = Cell::kHasCellState ? ws.chist.data<T>() : nullptr;
  T* dh[2] = {ctx.dh[0].get<T>(BH + 1), ctx.dh[1].get<T>(BH + 1)};
  T* dc = Cell::kHasCellState ? ctx.dc.get<T>(BH + 1) : nullptr;
  copy_or_zero(BH, g.dh_n, dh[0], stream);
  if (Cell::kHasCellState) copy_or_zero(BH, g.dc_n, dc, stream);
  T* dpeephole = nullptr;
  if (Cell::kHasPeephole) {
    dpeephole = ctx.dpeephole.get<T>(3 * BH + 1);
    copy_or_zero<T>(3 * BH, nullptr, dpeephole, stream);
  }
  // (kGates * H: the same buffer serves as the zero b_hh of a layer without biases)
  T* zeros = ctx.zeros.get<T>(Cell::kGates * H);
  copy_or_zero<T>(Cell::kGates * H, nullptr, zeros, stream);
  T* doperand = Cell::kPhases > 1 ? ctx.doperand.get<T>(BH + 1) : nullptr;

  BackwardStep<T> step;
  step.B = B, step.H = H, step.T_ = T_, step.lengths = call.lengths, step.reverse = call.reverse;
  step.stash_ld = S * H, step.dy = g.dy, step.dy_ld = g.dy_ld, step.zeros = zeros;
  step.dc = dc, step.peephole = call.w->w_peephole, step.dpeephole = dpeephole;
  step.doperand = doperand;
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
  if (Cell::kHasCellState && g.dc0) copy_or_zero(BH, dc, g.dc0, stream);

  const LayerGradients<T>& grads = *g.grads;
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
  if (g.din && N > 0) {
    T* dxs = ctx.dxs.get<T>(std::max<Index>(1, N * I));
    bool first_block = true;
    for_each_gate_block<Cell>(WeightSide::kInput, [&](int first, int end) {
      const T* dg = stash + gradient_slot<Cell>(first, WeightSide::kInput) * H;
      gemm<T>(ctx.handle, false, false, N, I, (end - first) * H, T(1), dg, S * H,
              call.w->w_ih + first * H * I, I, first_block ? T(0) : T(1), dxs, I);
      first_block = false;
    });
    scatter_steps_kernel<<<blocks_for(N * I), kThreadsPerBlock, 0, stream>>>(
        dxs, B, I, T_, call.lengths, call.reverse, g.accumulate_din, g.din);
    check_launch("scatter kernel");
  }
}

// ---- the stack ----------------------------------------------------------------------------------

using ::rnncore::detail::check_dropout;
using ::rnncore::detail::check_weight_count;

template <class T>
void apply_dropout(Context::Impl& ctx, double p, uint64_t seed, Index layer, Index n, T* data) {
  if (p <= 0 || n <= 0) return;
  dropout_kernel<<<blocks_for(n), kThreadsPerBlock, 0, ctx.stream>>>(n, p, seed, layer, data);
  check_launch("dropout kernel");
}

template <class Cell, class T>
DirectionCall<T> direction_call(Context::Impl& ctx, const Shape& shape, Index layer, Index d,
                                const LayerWeights<T>& w, const int64_t* lengths) {
  DirectionCall<T> call{};
  call.T_ = shape.seq_len, call.B = shape.batch, call.I = shape.layer_input_size(layer);
  call.H = shape.hidden_size, call.reverse = d == 1, call.lengths = lengths, call.w = &w;
  call.b_hh = w.b_hh;
  if (!call.b_hh) {
    T* zeros = ctx.zeros.get<T>(Cell::kGates * shape.hidden_size);
    copy_or_zero<T>(Cell::kGates * shape.hidden_size, nullptr, zeros, ctx.stream);
    call.b_hh = zeros;
  }
  return call;
}

template <class Cell, class T>
void stack_forward(Context::Impl& ctx, const Shape& shape, const std::vector<LayerWeights<T>>& w,
                   bool training, double dropout, uint64_t seed, const T* x, const T* h0,
                   const T* c0, const int64_t* host_lengths, T* y, T* h_n, T* c_n) {
  check_weight_count(shape, w.size(), "weights");
  check_dropout(dropout);
  const Index L = shape.num_layers, D = shape.directions(), B = shape.batch, H = shape.hidden_size;
  const Index T_ = shape.seq_len, state = B * H, outputs = T_ * B * D * H;
  cudaStream_t stream = ctx.stream;
  if (training) {
    ctx.ready = false;
    ctx.shape = shape, ctx.dropout = dropout, ctx.seed = seed;
    ctx.layers.resize(std::size_t(L * D));
  }
  detail::DeviceBuffer& length_buffer = training ? ctx.lengths : ctx.call_lengths;
  const int64_t* lengths = nullptr;
  if (host_lengths) {
    int64_t* dev = length_buffer.get<int64_t>(std::max<Index>(1, B));
    check(cudaMemcpyAsync(dev, host_lengths, sizeof(int64_t) * B, cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (lengths)");
    lengths = dev;
  }
  if (training) ctx.has_lengths = lengths != nullptr;
  if (B == 0) {  // empty outputs; a training forward still leaves a (trivial) backward to run
    if (training) ctx.ready = true;
    return;
  }
  const T* in = x;
  for (Index layer = 0; layer < L; ++layer) {
    T* out = layer + 1 < L ? ctx.between[layer % 2].get<T>(std::max<Index>(1, outputs)) : y;
    if (lengths) copy_or_zero<T>(outputs, nullptr, out, stream);  // zeros past each length
    for (Index d = 0; d < D; ++d) {
      const Index i = layer * D + d;
      DirectionCall<T> call = direction_call<Cell, T>(ctx, shape, layer, d, w[std::size_t(i)], lengths);
      call.in = in;
      call.h0 = h0 ? h0 + i * state : nullptr;
      call.c0 = c0 ? c0 + i * state : nullptr;
      call.y = out + d * H, call.y_ld = D * H;
      call.h_n = h_n ? h_n + i * state : nullptr;
      call.c_n = c_n ? c_n + i * state : nullptr;
      if (training)
        direction_forward<Cell, T, true>(ctx, call, &ctx.layers[std::size_t(i)]);
      else
        direction_forward<Cell, T, false>(ctx, call, nullptr);
    }
    if (training && layer + 1 < L) apply_dropout(ctx, dropout, seed, layer, outputs, out);
    in = out;
  }
  if (training) ctx.ready = true;
}

template <class Cell, class T>
void stack_backward(Context::Impl& ctx, const std::vector<LayerWeights<T>>& w, const T* dy,
                    const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                    const std::vector<LayerGradients<T>>& grads) {
  if (!ctx.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  const Shape& shape = ctx.shape;
  check_weight_count(shape, w.size(), "weights");
  check_weight_count(shape, grads.size(), "gradients");
  ctx.ready = false;
  const Index L = shape.num_layers, D = shape.directions(), B = shape.batch, H = shape.hidden_size;
  const Index T_ = shape.seq_len, state = B * H;
  if (B == 0) return;  // empty gradients, nothing added
  const int64_t* lengths = ctx.has_lengths ? ctx.lengths.data<int64_t>() : nullptr;
  const T* dout = dy;
  for (Index layer = L - 1; layer >= 0; --layer) {
    const Index in_size = shape.layer_input_size(layer);
    T* din = layer == 0 ? dx : ctx.between[layer % 2].get<T>(std::max<Index>(1, T_ * B * in_size));
    for (Index d = 0; d < D; ++d) {
      const Index i = layer * D + d;
      DirectionCall<T> call = direction_call<Cell, T>(ctx, shape, layer, d, w[std::size_t(i)], lengths);
      DirectionGrad<T> g{};
      g.dy = dout ? dout + d * H : nullptr, g.dy_ld = D * H;
      g.dh_n = dh_n ? dh_n + i * state : nullptr;
      g.dc_n = Cell::kHasCellState && dc_n ? dc_n + i * state : nullptr;
      g.din = din, g.accumulate_din = d > 0;
      g.dh0 = dh0 ? dh0 + i * state : nullptr;
      g.dc0 = Cell::kHasCellState && dc0 ? dc0 + i * state : nullptr;
      g.grads = &grads[std::size_t(i)];
      direction_backward<Cell, T>(ctx, call, ctx.layers[std::size_t(i)], g);
    }
    if (layer > 0) apply_dropout(ctx, ctx.dropout, ctx.seed, layer - 1, T_ * B * in_size, din);
    dout = din;
  }
}

}  // namespace detail

template <class Cell, class T>
void forward(Context& ctx, int device, const Shape& shape, const std::vector<LayerWeights<T>>& w,
             bool training, double dropout, uint64_t seed, const T* x, const T* h0, const T* c0,
             const int64_t* host_lengths, T* y, T* h_n, T* c_n, void* stream) {
  Context::Impl& impl = ctx.impl();
  impl.begin(device, stream);
  detail::stack_forward<Cell, T>(impl, shape, w, training, dropout, seed, x, h0, c0, host_lengths,
                                 y, h_n, c_n);
}

template <class Cell, class T>
void backward(Context& ctx, const std::vector<LayerWeights<T>>& w, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const std::vector<LayerGradients<T>>& grads,
              void* stream) {
  Context::Impl& impl = ctx.impl();
  if (!impl.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  impl.begin(impl.device, stream);
  detail::stack_backward<Cell, T>(impl, w, dy, dh_n, dc_n, dx, dh0, dc0, grads);
}

#define RNNCORE_CUDA_INSTANTIATE(CELL, T)                                                     \
  template void forward<CELL, T>(Context&, int, const Shape&,                                 \
                                 const std::vector<LayerWeights<T>>&, bool, double,           \
                                  uint64_t, const T*, const T*, const T*,        \
                                 const int64_t*, T*, T*, T*, void*);                          \
  template void backward<CELL, T>(Context&, const std::vector<LayerWeights<T>>&, const T*,    \
                                  const T*, const T*, T*, T*, T*,                             \
                                  const std::vector<LayerGradients<T>>&, void*);

}  // namespace cuda
}  // namespace rnncore
