// The CUDA driver's pointwise kernels (internal): one thread per (row b, unit j) of a step's
// (B, H) tile calls the cell's own forward<Phase> / backward<Phase> (cells/*.hpp, host+device),
// the very functions the CPU driver calls. A row past its sequence's length carries its state
// (forward) or its gradient (backward) unchanged instead.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.cuh"
#include "rnncore/cells/pointwise.hpp"
#include "rnncore/common.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

// Where forward step s of one phase reads and writes.
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

// Where backward step s of one phase reads and writes.
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

}  // namespace detail
}  // namespace cuda
}  // namespace rnncore
