// The sequence driver's backward (internal): BPTT of one layer in one direction through the
// record of a training forward, for any cell of cells.hpp (the threading and the words used are
// explained in sequence_common.hpp).
//
// backward_impl: BackwardTimeLoop (per step backward_step: per phase pointwise_backward, then the
//                recurrent GEMM)
//   -> add_weight_gradients (dW_ih, dW_hh, the bias sums, per gate block), input_gradient (dx)
// backward_step, add_weight_gradients and add_input_gradient_rows are also the step engine's
// (step_impl.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <omp.h>

#include "sequence_common.hpp"
#include "team.hpp"

namespace rnncore {
namespace detail {

// Where one backward step reads and writes: row r of a state or carried gradient at
// base + r * H, of the stash at stash + r * stash_ld. dh, dc come in as dL/dh_t, dL/dc_t and
// leave as dL/dh_{t-1}, dL/dc_{t-1}; doperand is the phase operand's gradient (multi-phase cells).
template <class T>
struct BackwardStepRows {
  T* stash = nullptr;
  Index stash_ld = 0;
  const T* h_prev = nullptr;
  const T* h = nullptr;
  const T* c_prev = nullptr;
  const T* c = nullptr;
  T* dh = nullptr;
  T* dc = nullptr;
  T* doperand = nullptr;
  const T* peephole = nullptr;
  T* dpeephole = nullptr;
};

// The cell's pointwise backward of one phase for `batch` rows on the slice's units, turning the
// stash rows into gate gradients. dy_of_row(r): row r's output gradient (H values).
// norm_of_row(r): where to add the slice's part of ||dL/dh_t||^2 of row r (the whole gradient
// reaching h_t), or nullptr; the gradient-flow diagnostics are fused into the step's first phase,
// the sweep that reads dh and dy anyway (the slice of dh was written by this thread, in the
// previous step's product).
template <class Cell, int Phase, class T, class DyOfRow, class NormOfRow>
void pointwise_backward(const BackwardStepRows<T>& rows, Index batch, Index H,
                        const UnitSlice& slice, DyOfRow& dy_of_row, NormOfRow& norm_of_row) {
  BackwardRow<T> row;
  row.peephole = rows.peephole, row.dpeephole = rows.dpeephole, row.H = H;
  for (Index r = 0; r < batch; ++r) {
    row.stash = rows.stash + r * rows.stash_ld;
    row.dy = dy_of_row(r);
    row.dh = rows.dh + r * H;
    row.h_prev = rows.h_prev + r * H;
    row.h = rows.h + r * H;
    if (Cell::kHasCellState) {
      row.dc = rows.dc + r * H;
      row.c_prev = rows.c_prev + r * H;
      row.c = rows.c + r * H;
    }
    if (Cell::kPhases > 1) row.doperand = rows.doperand + r * H;
    if constexpr (Phase == Cell::kPhases - 1) {  // the step's first phase: dh, dy untouched
      if (double* norm = norm_of_row(r)) {
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (Index j = slice.begin; j < slice.end; ++j) {
          const double g = double(row.dh[j]) + double(row.dy[j]);
          sum += g * g;
          Cell::template backward<Phase, T>(row, j);
        }
        *norm += sum;
        continue;
      }
    }
#pragma omp simd
    for (Index j = slice.begin; j < slice.end; ++j) Cell::template backward<Phase, T>(row, j);
  }
}

// One backward step for `batch` rows on the slice, shared by the time loop and the step engine:
// per phase, last first, the pointwise backward, then (after a barrier when several threads run:
// the product reads every unit's gate gradients) the slice's columns of the gradient the phase's
// product sends back: dL/dh_{t-1} (phase 0; added to the direct part for cells that have one) or
// the phase operand's. w_hh: the thread's packed columns (RecurrentProduct::kBackward).
template <class Cell, class T, class DyOfRow, class NormOfRow>
void backward_step(const BackwardStepRows<T>& rows, Index batch, Index H, const UnitSlice& slice,
                   const PackedWeights<T> (&w_hh)[Cell::kPhases], SpinThenSleepBarrier* barrier,
                   DyOfRow&& dy_of_row, NormOfRow&& norm_of_row) {
  for_each_phase_reversed<Cell::kPhases>([&](auto phase_constant) {
    constexpr int phase = decltype(phase_constant)::value;
    pointwise_backward<Cell, phase, T>(rows, batch, H, slice, dy_of_row, norm_of_row);
    meet(barrier);
    T* target = phase == 0 ? rows.dh : rows.doperand;
    const bool accumulate = phase == 0 ? Cell::kDirectHiddenGrad : false;
    packed_gemm(batch, rows.stash + Cell::kPhaseFirstGate[phase] * H, rows.stash_ld, w_hh[phase],
                target + slice.begin, H, accumulate);
  });
}

// W_ih's rows [first_gate*H, end_gate*H) transposed (row c of the pack is column c of the
// block): the right operand of dx = dG_x W_ih for one input gate block.
template <class T>
void pack_input_transposed(const T* w_ih, Index I, Index H, int first_gate, int end_gate,
                           PackedWeights<T>& packed) {
  const T* block = w_ih + first_gate * H * I;
  packed.pack(I, (end_gate - first_gate) * H, [&](Index c) { return block + c; }, I);
}

// dx (N, I) = dG_x W_ih over N rows of the stash, one packed GEMM per input gate block (the first
// writes, the others add); transposed(first_gate, end_gate) gives the block's
// pack_input_transposed.
template <class Cell, class T, class Transposed>
void add_input_gradient_rows(Index N, const T* stash, Index H, Index I, Transposed&& transposed,
                             T* dx, int max_threads) {
  const Index stash_width = Cell::kStashSlots * H;
  for_each_gate_block<Cell>(WeightSide::kInput, [&](int first_gate, int end_gate) {
    const PackedWeights<T>& w_t = transposed(first_gate, end_gate);
    const T* dg = stash + gradient_slot<Cell>(first_gate, WeightSide::kInput) * H;
    parallel_packed_gemm(N, dg, stash_width, w_t, dx, I, first_gate > 0, max_threads);
  });
}

// BPTT through the recorded steps, last to first. The carried gradients dh, dc (B, H) are in
// sorted row order and start as dL/d(final state); at the end they hold dL/dh0, dL/dc0. Each
// phase (last first) runs the cell's pointwise backward, turning the stash rows into gate
// gradients, then, after a barrier, the slice's columns of the gradient the phase's product sends
// back: dh (phase 0) or the phase operand's gradient.
template <class Cell, class T>
class BackwardTimeLoop {
 public:
  BackwardTimeLoop(const LayerWeights<T>& w, TrainingWorkspace<T>& ws, const T* dy, T* dh, T* dc,
                   T* dw_peephole)
      : w_(w), ws_(ws), sc_(ws.schedule), H_(ws.shape.hidden_size), dy_(dy), dh_(dh), dc_(dc),
        dw_peephole_(dw_peephole), no_dy_(H_, T(0)),
        doperand_(Cell::kPhases > 1 ? sc_.batch * H_ : 0) {}

  void run() {
    const TimeLoopSplit split = time_loop_split<Cell, T>(sc_, H_);
    const Index seq_len = ws_.shape.seq_len;
    if (ws_.record_grad_norms) norm_parts_.assign(std::size_t(split.threads * seq_len), 0.0);
    run_loop(split);
    if (ws_.record_grad_norms) {
      // Each thread summed its slice of the units; the parts are added in thread order.
      ws_.grad_norms.assign(std::size_t(seq_len), 0.0);
      for (Index t = 0; t < seq_len; ++t) {
        double sum = 0.0;
        for (int p = 0; p < split.threads; ++p) sum += norm_parts_[std::size_t(p * seq_len + t)];
        ws_.grad_norms[std::size_t(t)] = std::sqrt(sum);
      }
    }
  }

 private:
  void run_loop(const TimeLoopSplit& split) {
    Team team(split.threads);
#pragma omp parallel num_threads(split.threads) if (split.threads > 1)
    {
      const int thread = omp_get_thread_num();
      const UnitSlice slice = split.slices[thread];
      PackedWeights<T> w_hh[Cell::kPhases];
      team.guard([&] {  // allocates: a failure must not leave the region
        pack_recurrent_slice<Cell>(w_.w_hh, H_, slice, RecurrentProduct::kBackward, w_hh);
      });
      meet(team.barrier());
      if (!team.failed()) {
        for (Index n = 0; n < sc_.steps; ++n) {
          if (team.stop_at(n, thread)) break;
          step(sc_.steps - 1 - n, slice, thread, w_hh, team.barrier());
        }
      }
    }
    team.finish();
  }

  // Step s on the slice: where its rows are in the workspace, where row r's dy is (time order,
  // batch order), and where the slice's part of ||dL/dh_t||^2 goes when it is recorded.
  void step(Index s, const UnitSlice& slice, int thread,
            const PackedWeights<T> (&w_hh)[Cell::kPhases], SpinThenSleepBarrier* barrier) {
    const Index B = sc_.batch, H = H_, stash_width = Cell::kStashSlots * H;
    const Index first_row = sc_.offsets[s];
    const Index prev = s == 0 ? 0 : B + sc_.offsets[s - 1];  // history row of h_{t-1}
    BackwardStepRows<T> rows;
    rows.stash = ws_.stash.data() + first_row * stash_width, rows.stash_ld = stash_width;
    rows.h_prev = ws_.h.data() + prev * H;
    rows.h = ws_.h.data() + (B + first_row) * H;
    if (Cell::kHasCellState) {
      rows.c_prev = ws_.c.data() + prev * H;
      rows.c = ws_.c.data() + (B + first_row) * H;
    }
    rows.dh = dh_, rows.dc = dc_, rows.doperand = doperand_.data();
    rows.peephole = w_.w_peephole, rows.dpeephole = dw_peephole_;
    const auto dy_of_row = [&](Index r) {
      return dy_ ? dy_ + (sc_.time_of(s, r) * B + sc_.order[r]) * H : no_dy_.data();
    };
    const auto norm_of_row = [&](Index r) -> double* {
      if (norm_parts_.empty()) return nullptr;
      return &norm_parts_[std::size_t(thread * ws_.shape.seq_len + sc_.time_of(s, r))];
    };
    backward_step<Cell>(rows, sc_.batch_sizes[s], H, slice, w_hh, barrier, dy_of_row,
                        norm_of_row);
  }

  const LayerWeights<T>& w_;
  TrainingWorkspace<T>& ws_;
  const Schedule& sc_;
  Index H_;
  const T* dy_;
  T* dh_;
  T* dc_;
  T* dw_peephole_;
  const std::vector<T> no_dy_;  // dy of a row when the outputs carry no gradient
  Buffer<T> doperand_;          // (B, H) gradient of the phase operand (multi-phase cells)
  std::vector<double> norm_parts_;  // per thread, per time step: a part of ||dL/dh_t||^2
};

// h_{t-1} of every packed row as one (N, H) matrix. Without ragged lengths the h history already
// is one: step s's rows of h_{t-1} are history rows [s*B, s*B + B). Otherwise they are copied
// into `storage`.
template <class T>
const T* previous_hidden_rows(const TrainingWorkspace<T>& ws, Buffer<T>& storage) {
  const Schedule& sc = ws.schedule;
  const Index B = sc.batch, H = ws.shape.hidden_size;
  if (!sc.ragged || sc.rows == 0) return ws.h.data();
  named_resize(storage, sc.rows * H, "backward's previous hidden states (T*B rows x H)");
  for (Index s = 0; s < sc.steps; ++s) {
    const Index prev = s == 0 ? 0 : B + sc.offsets[s - 1];
    std::memcpy(storage.data() + sc.offsets[s] * H, ws.h.data() + prev * H,
                sizeof(T) * sc.batch_sizes[s] * H);
  }
  return storage.data();
}

// Rows up to which a weight gradient is k rank-1 updates (add_rank_updates): a single step's
// small batch, where a GEMM's set-up costs more than the updates. A round number: at 8 rows the
// updates still stream the gradient once per row.
inline constexpr Index kRankUpdateRows = 8;
// Rows from which it goes through the packed kernel (weight_gradient_gemm, packed_gemm.hpp)
// rather than Eigen: below it the transposed copy and the packing of X are a visible share of a
// small product. A round number, not tuned.
inline constexpr Index kPackedWeightGradRows = 256;

// c (m x n, ldc) += a^T b for a (k x m, lda), b (k x n, ldb) with few rows k.
template <class T>
void add_rank_updates(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb,
                      T* c, Index ldc) {
  for (Index i = 0; i < m; ++i) {
    T* ci = c + i * ldc;
    for (Index r = 0; r < k; ++r) {
      const T ai = a[r * lda + i];
      const T* br = b + r * ldb;
#pragma omp simd
      for (Index j = 0; j < n; ++j) ci[j] += ai * br[j];
    }
  }
}

// dW (cols x K) += dG^T X over N rows (dG with leading dimension ldg, X with ldx).
template <class T>
void add_weight_gradient(Index cols, Index K, Index N, const T* dg, Index ldg, const T* x,
                         Index ldx, T* dw, int max_threads) {
  if (N <= kRankUpdateRows)
    add_rank_updates(cols, K, N, dg, ldg, x, ldx, dw, K);
  else if (N >= kPackedWeightGradRows)
    weight_gradient_gemm(cols, K, N, dg, ldg, x, ldx, dw, K, max_threads);
  else
    parallel_gemm(cols, K, N, dg, ldg, true, x, ldx, false, dw, K, true, max_threads);
}

template <class Cell, class T>
void add_weight_gradients(Index N, Index I, Index H, const T* stash, const T* x,
                          const T* h_prev, const LayerGradients<T>& grads, int max_threads) {
  const Index stash_width = Cell::kStashSlots * H;
  for_each_gate_block<Cell>(WeightSide::kInput, [&](int first_gate, int end_gate) {
    const Index cols = (end_gate - first_gate) * H;
    const T* dg = stash + gradient_slot<Cell>(first_gate, WeightSide::kInput) * H;
    add_weight_gradient(cols, I, N, dg, stash_width, x, I, grads.dw_ih + first_gate * H * I,
                        max_threads);
    if (grads.db_ih)
      add_column_sums(N, cols, dg, stash_width, grads.db_ih + first_gate * H, max_threads);
  });
  for_each_gate_block<Cell>(WeightSide::kRecurrent, [&](int first_gate, int end_gate) {
    const Index cols = (end_gate - first_gate) * H;
    const T* dg = stash + gradient_slot<Cell>(first_gate, WeightSide::kRecurrent) * H;
    const int operand_slot = Cell::kGateSlots[first_gate].recurrent_operand;
    const T* operand = operand_slot < 0 ? h_prev : stash + operand_slot * H;
    add_weight_gradient(cols, H, N, dg, stash_width, operand, operand_slot < 0 ? H : stash_width,
                        grads.dw_hh + first_gate * H * H, max_threads);
    if (grads.db_hh)
      add_column_sums(N, cols, dg, stash_width, grads.db_hh + first_gate * H, max_threads);
  });
}

// dx = dG_x W_ih over the packed rows, into the workspace's packed input (no longer needed), then
// to dx (T, B, I) in time order, zero at padded positions.
template <class Cell, class T>
void input_gradient(TrainingWorkspace<T>& ws, const T* w_ih, T* dx, int max_threads) {
  const Schedule& sc = ws.schedule;
  const Index B = sc.batch, I = ws.shape.input_size, H = ws.shape.hidden_size;
  T* dx_packed = ws.x.data();
  PackedWeights<T> w_t;  // one input gate block's W_ih^T at a time
  const auto transposed = [&](int first_gate, int end_gate) -> const PackedWeights<T>& {
    pack_input_transposed(w_ih, I, H, first_gate, end_gate, w_t);
    return w_t;
  };
  add_input_gradient_rows<Cell>(sc.rows, ws.stash.data(), H, I, transposed, dx_packed,
                                max_threads);
  if (sc.ragged || sc.steps < ws.shape.seq_len)
    std::fill(dx, dx + ws.shape.seq_len * B * I, T(0));
  for (Index s = 0; s < sc.steps; ++s)
    for (Index r = 0; r < sc.batch_sizes[s]; ++r)
      std::memcpy(dx + (sc.time_of(s, r) * B + sc.order[r]) * I,
                  dx_packed + (sc.offsets[s] + r) * I, sizeof(T) * I);
}

template <class Cell, class T>
void backward_impl(const LayerWeights<T>& w, TrainingWorkspace<T>& ws, const T* dy,
                   const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                   const LayerGradients<T>& grads) {
  const Schedule& sc = ws.schedule;
  const Index B = sc.batch, H = ws.shape.hidden_size;
  const int max_threads = get_num_threads();
  Buffer<T> dh(B * H), dc(Cell::kHasCellState ? B * H : 0);
  gather_state(sc, H, dh_n, dh.data());
  if (Cell::kHasCellState) gather_state(sc, H, dc_n, dc.data());
  if (sc.steps > 0)
    BackwardTimeLoop<Cell, T>(w, ws, dy, dh.data(), dc.data(), grads.dw_peephole).run();
  else if (ws.record_grad_norms)
    ws.grad_norms.assign(std::size_t(ws.shape.seq_len), 0.0);
  scatter_state(sc, H, dh.data(), dh0);
  if (Cell::kHasCellState) scatter_state(sc, H, dc.data(), dc0);
  Buffer<T> h_prev_storage;
  add_weight_gradients<Cell>(sc.rows, ws.shape.input_size, H, ws.stash.data(), ws.x.data(),
                             previous_hidden_rows(ws, h_prev_storage), grads, max_threads);
  if (dx) input_gradient<Cell>(ws, w.w_ih, dx, max_threads);
}

}  // namespace detail
}  // namespace rnncore
