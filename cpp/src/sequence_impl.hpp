// The sequence driver (internal): forward (inference and training) and BPTT for any cell of
// cells.hpp. Included by one .cpp per cell family, which instantiates it.
//
// Threading: one OpenMP team lives for the whole time loop. Thread p owns hidden units
// [j0, j1): it packs the rows of W_hh that produce those units (all gates, so the pointwise step
// of its units needs nothing from other threads), computes that slice of every step's recurrent
// product and runs the pointwise sweep on it. The only synchronisation is one barrier per step
// and phase, because the next recurrent product needs the whole h_{t-1}. Backward splits the same
// way: thread p owns the columns [j0, j1) of dL/dh_{t-1} = dG W_hh.
#pragma once

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include <omp.h>

#include "gemm.hpp"
#include "packed_gemm.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/sequence.hpp"

namespace rnncore {
namespace detail {

template <int N, class F>
void for_each_phase(F&& f) {
  [&]<int... P>(std::integer_sequence<int, P...>) {
    (f(std::integral_constant<int, P>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}
template <int N, class F>
void for_each_phase_reversed(F&& f) {
  [&]<int... P>(std::integer_sequence<int, P...>) {
    (f(std::integral_constant<int, N - 1 - P>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// Contiguous slices of the hidden units, one per thread, inner bounds multiples of 8.
struct UnitSplit {
  std::vector<Index> bounds;
  Index widest = 0;
  UnitSplit(Index hidden, int threads) : bounds(threads + 1) {
    for (int p = 0; p <= threads; ++p) bounds[p] = split_point(hidden, p, threads, 8);
    for (int p = 0; p < threads; ++p) widest = std::max(widest, bounds[p + 1] - bounds[p]);
  }
};

// Threads for the time loop. A step streams the recurrent weights (G*H*H values) and does
// 2*B*G*H*H flops; a second thread pays off once either is large enough to outweigh a barrier
// per step (about a microsecond). Batch-1 steps are bound by the weight stream, which two cores
// read twice as fast; a small batch with small weights is not worth the barrier.
// (Measured: RNN 100/16/128 gains nothing from 2 threads, LSTM 200/1/256 gains 1.5x.)
template <class Cell, class T>
int step_threads(Index rows, Index hidden) {
  const int max_threads = get_num_threads();
  const double weights = double(Cell::kGates) * double(hidden) * double(hidden);
  const double cost = std::max(2.0 * double(rows) * weights, weights * double(sizeof(T)));
  if (max_threads <= 1 || cost < 6e5) return 1;
  return int(std::max<Index>(1, std::min<Index>(max_threads, hidden / 16)));
}

// dst rows in step order from x (T, B, width) in time order.
template <class T>
void gather_steps(const Schedule& sc, Index first_step, Index last_step, const T* x, Index width,
                  T* dst, int part, int parts) {
  const Index base = sc.offsets[first_step];
  const Index n = sc.offsets[last_step] - base;
  const Index lo = split_point(n, part, parts, 1), hi = split_point(n, part + 1, parts, 1);
  Index s = first_step;
  for (Index row = lo; row < hi; ++row) {
    while (sc.offsets[s + 1] <= base + row) ++s;
    const Index r = base + row - sc.offsets[s];
    std::memcpy(dst + row * width, x + (sc.time_of(s, r) * sc.batch + sc.order[r]) * width,
                sizeof(T) * width);
  }
}

template <class T>
void add_bias_rows(Index rows, Index cols, T* dst, Index ld, const T* bias) {
  for (Index r = 0; r < rows; ++r) {
    T* d = dst + r * ld;
#pragma omp simd
    for (Index k = 0; k < cols; ++k) d[k] += bias[k];
  }
}

// dst[k] += sum over rows of src[row, k]; columns split over threads, rows summed in order.
template <class T>
void add_column_sums(Index rows, Index cols, const T* src, Index ld, T* dst, int max_threads) {
  const int threads = int(std::max<Index>(1, std::min<Index>(max_threads, rows * cols / 65536)));
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
  for (int p = 0; p < threads; ++p) {
    const Index lo = split_point(cols, p, threads, 16), hi = split_point(cols, p + 1, threads, 16);
    for (Index r = 0; r < rows; ++r) {
      const T* s = src + r * ld;
#pragma omp simd
      for (Index k = lo; k < hi; ++k) dst[k] += s[k];
    }
  }
}

// Initial state in sorted row order (zeros when src is null).
template <class T>
void gather_state(const Schedule& sc, Index hidden, const T* src, T* dst) {
  for (Index r = 0; r < sc.batch; ++r) {
    if (src) std::memcpy(dst + r * hidden, src + sc.order[r] * hidden, sizeof(T) * hidden);
    else std::fill(dst + r * hidden, dst + (r + 1) * hidden, T(0));
  }
}

// out (rows x n) = x (rows x I) * w^T for w (n x I): the weights packed once, rows split across
// threads (each row block computed by one thread, so results do not depend on the split).
template <class T>
void input_projection(Index rows, const T* x, Index I, const T* w, Index n, T* out, Index ldo,
                      int max_threads) {
  if (rows <= 0 || n <= 0) return;
  PackedWeights<T> packed;
  packed.pack(n, I, [&](Index c) { return w + c * I; }, 1);
  parallel_packed_gemm(rows, x, I, packed, out, ldo, false, max_threads);
}

template <class Cell, class T, bool kTrain>
void forward_impl(const SequenceShape& shape, const LayerWeights<T>& w, const T* x, const T* h0,
                  const T* c0, const Schedule& sc, T* y, T* h_n, T* c_n,
                  TrainingWorkspace<T>* ws) {
  constexpr int G = Cell::kGates, NP = Cell::kPhases;
  constexpr bool kCell = Cell::kHasCellState;
  const Index B = shape.batch, I = shape.input_size, H = shape.hidden_size;
  const Index SH = Cell::kStashSlots * H, N = sc.rows, steps = sc.steps;
  const int max_threads = get_num_threads();

  if (steps < shape.seq_len || sc.ragged) std::fill(y, y + shape.seq_len * B * H, T(0));
  if (B == 0) return;

  // Sorted initial states: the first B rows of the training history, or the inference buffers.
  Buffer<T> init_h, init_c;
  const T* hs0;
  const T* cs0 = nullptr;
  if constexpr (kTrain) {
    ws->x.resize(N * I);
    ws->stash.resize(N * SH);
    ws->h.resize((B + N) * H);
    if (kCell) ws->c.resize((B + N) * H);
#pragma omp parallel num_threads(max_threads) if (max_threads > 1 && N * I > 65536)
    gather_steps(sc, 0, steps, x, I, ws->x.data(), omp_get_thread_num(), omp_get_num_threads());
    // The input projection of every step in one GEMM, straight into the gate slots.
    input_projection(N, ws->x.data(), I, w.w_ih, G * H, ws->stash.data(), SH, max_threads);
    add_bias_rows(N, G * H, ws->stash.data(), SH, w.b_ih);
    gather_state(sc, H, h0, ws->h.data());
    if (kCell) gather_state(sc, H, c0, ws->c.data());
    hs0 = ws->h.data();
    if (kCell) cs0 = ws->c.data();
  } else {
    init_h.resize(B * H);
    gather_state(sc, H, h0, init_h.data());
    hs0 = init_h.data();
    if (kCell) {
      init_c.resize(B * H);
      gather_state(sc, H, c0, init_c.data());
      cs0 = init_c.data();
    }
  }

  const Index b_max = steps > 0 ? sc.batch_sizes[0] : 0;
  const int P = step_threads<Cell, T>(b_max, H);
  const UnitSplit split(H, P);
  const Index Hw = split.widest;
  // Inference computes the input projection in chunks of steps so memory stays independent of T.
  const Index chunk_steps = std::max<Index>(1, std::min<Index>(steps, 1024 / std::max<Index>(b_max, 1)));
  const Index chunk_rows = kTrain ? 0 : chunk_steps * b_max;

  Buffer<T> gh(P * b_max * G * Hw);
  Buffer<T> bih_pack(!kTrain && P > 1 ? P * G * Hw : 0);
  Buffer<T> gx(kTrain ? 0 : P * chunk_rows * G * Hw), xc(kTrain ? 0 : chunk_rows * I);
  Buffer<T> hbuf(kTrain ? 0 : 2 * B * H), cbuf(!kTrain && kCell ? B * H : 0);
  Buffer<T> stash_scratch(!kTrain && NP > 1 ? B * SH : 0), operand_scratch(!kTrain && NP > 1 ? B * H : 0);

#pragma omp parallel num_threads(P) if (P > 1)
  {
    const int p = omp_get_thread_num();
    const Index j0 = split.bounds[p], j1 = split.bounds[p + 1], Hs = j1 - j0;

    // Rows of W_hh producing units [j0, j1), gate by gate, packed for the step kernel (one
    // packing per phase); for inference also the rows of W_ih and b_ih (used in place when one
    // thread owns every unit).
    PackedWeights<T> whh[NP];
    for_each_phase<NP>([&](auto phase) {
      constexpr int g0 = Cell::kPhaseFirstGate[decltype(phase)::value];
      constexpr int g1 = Cell::kPhaseFirstGate[decltype(phase)::value + 1];
      whh[phase].pack((g1 - g0) * Hs, H,
                      [&](Index c) { return w.w_hh + ((g0 + c / Hs) * H + j0 + c % Hs) * H; }, 1);
    });
    PackedWeights<T> wih;
    const T* bih = w.b_ih;
    if constexpr (!kTrain) {
      wih.pack(G * Hs, I, [&](Index c) { return w.w_ih + ((c / Hs) * H + j0 + c % Hs) * I; }, 1);
      if (P > 1) {
        T* dbi = bih_pack.data() + p * G * Hw;
        for (int g = 0; g < G; ++g) std::memcpy(dbi + g * Hs, w.b_ih + g * H + j0, sizeof(T) * Hs);
        bih = dbi;
      }
    }
    T* ghp = gh.data() + p * b_max * G * Hw;
    T* gxp = kTrain ? nullptr : gx.data() + p * chunk_rows * G * Hw;

    // Sequences of length 0 keep their initial state.
    for (Index r = b_max; r < B; ++r) {
      std::memcpy(h_n + sc.order[r] * H + j0, hs0 + r * H + j0, sizeof(T) * Hs);
      if (kCell) std::memcpy(c_n + sc.order[r] * H + j0, cs0 + r * H + j0, sizeof(T) * Hs);
    }
    T* hcur = kTrain ? nullptr : hbuf.data();
    T* hnxt = kTrain ? nullptr : hbuf.data() + B * H;
    if constexpr (!kTrain) {
      for (Index r = 0; r < B; ++r) {
        std::memcpy(hcur + r * H + j0, hs0 + r * H + j0, sizeof(T) * Hs);
        if (kCell) std::memcpy(cbuf.data() + r * H + j0, cs0 + r * H + j0, sizeof(T) * Hs);
      }
    }

    Index chunk_begin = 0, chunk_end = 0;
    for (Index s = 0; s < steps; ++s) {
      const Index b = sc.batch_sizes[s], off = sc.offsets[s];
      const T* gx_rows;
      Index gx_ld, gx_gate_stride, gx_first;
      const T* h_prev;
      const T* c_prev = nullptr;
      T *h_out, *c_out = nullptr, *stash, *operand;
      Index stash_ld, operand_ld;
      if constexpr (kTrain) {
        gx_rows = ws->stash.data() + off * SH;
        gx_ld = SH, gx_gate_stride = H, gx_first = 0;
        const Index prev = s == 0 ? 0 : B + sc.offsets[s - 1];
        h_prev = ws->h.data() + prev * H;
        h_out = ws->h.data() + (B + off) * H;
        if (kCell) c_prev = ws->c.data() + prev * H, c_out = ws->c.data() + (B + off) * H;
        stash = ws->stash.data() + off * SH, stash_ld = SH;
        operand = Cell::kOperandSlot >= 0 ? stash + Cell::kOperandSlot * H : nullptr;
        operand_ld = SH;
      } else {
        if (s == chunk_end) {
          chunk_begin = s;
          chunk_end = std::min(steps, s + chunk_steps);
          gather_steps(sc, chunk_begin, chunk_end, x, I, xc.data(), p, P);
          if (P > 1) {
#pragma omp barrier
          }
          const Index rows = sc.offsets[chunk_end] - sc.offsets[chunk_begin];
          packed_gemm(rows, xc.data(), I, wih, gxp, G * Hs, false);
          add_bias_rows(rows, G * Hs, gxp, G * Hs, bih);
        }
        gx_rows = gxp + (off - sc.offsets[chunk_begin]) * G * Hs;
        gx_ld = G * Hs, gx_gate_stride = Hs, gx_first = j0;
        h_prev = hcur, h_out = hnxt;
        if (kCell) c_prev = c_out = cbuf.data();
        stash = stash_scratch.data(), stash_ld = SH;
        operand = operand_scratch.data(), operand_ld = H;
      }

      for_each_phase<NP>([&](auto phase) {
        constexpr int ph = decltype(phase)::value;
        constexpr int g0 = Cell::kPhaseFirstGate[ph], g1 = Cell::kPhaseFirstGate[ph + 1];
        if (P > 1) {
#pragma omp barrier
        }
        const T* a = ph == 0 ? h_prev : operand;
        packed_gemm(b, a, ph == 0 ? H : operand_ld, whh[ph], ghp, (g1 - g0) * Hs, false);
        ForwardRow<T> row;
        row.gx_gate_stride = gx_gate_stride, row.gx_first = gx_first;
        row.gh_gate_stride = Hs, row.gh_first = j0;
        row.b_hh = w.b_hh, row.peephole = w.w_peephole, row.H = H;
        for (Index r = 0; r < b; ++r) {
          row.gx = gx_rows + r * gx_ld;
          row.gh = ghp + r * (g1 - g0) * Hs;
          row.h_prev = h_prev + r * H;
          row.h = h_out + r * H;
          if (kCell) row.c_prev = c_prev + r * H, row.c = c_out + r * H;
          row.stash = stash ? stash + r * stash_ld : nullptr;
          row.operand = operand ? operand + r * operand_ld : nullptr;
#pragma omp simd
          for (Index j = j0; j < j1; ++j) Cell::template forward<ph, T, kTrain>(row, j);
        }
      });

      // Outputs, and final states of the sequences whose last step this was.
      for (Index r = 0; r < b; ++r)
        std::memcpy(y + (sc.time_of(s, r) * B + sc.order[r]) * H + j0, h_out + r * H + j0,
                    sizeof(T) * Hs);
      for (Index r = sc.batch_sizes[s + 1]; r < b; ++r) {
        std::memcpy(h_n + sc.order[r] * H + j0, h_out + r * H + j0, sizeof(T) * Hs);
        if (kCell) std::memcpy(c_n + sc.order[r] * H + j0, c_out + r * H + j0, sizeof(T) * Hs);
      }
      if constexpr (!kTrain) std::swap(hcur, hnxt);
    }
  }
}

template <class Cell, class T>
void backward_impl(const LayerWeights<T>& w, TrainingWorkspace<T>& ws, const T* dy,
                   const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                   const LayerGradients<T>& grads) {
  constexpr int G = Cell::kGates, NP = Cell::kPhases;
  constexpr bool kCell = Cell::kHasCellState;
  const Schedule& sc = ws.schedule;
  const Index B = ws.shape.batch, I = ws.shape.input_size, H = ws.shape.hidden_size;
  const Index SH = Cell::kStashSlots * H, N = sc.rows, steps = sc.steps;
  const int max_threads = get_num_threads();

  // Carried gradients in sorted row order; rows not yet reached keep dL/d(final state).
  Buffer<T> dh(B * H), dc(kCell ? B * H : 0);
  gather_state(sc, H, dh_n, dh.data());
  if (kCell) gather_state(sc, H, dc_n, dc.data());
  const std::vector<T> zeros(H, T(0));

  const Index b_max = steps > 0 ? sc.batch_sizes[0] : 0;
  const int P = step_threads<Cell, T>(b_max, H);
  const UnitSplit split(H, P);
  Buffer<T> doperand(NP > 1 ? B * H : 0);

  if (steps > 0) {
#pragma omp parallel num_threads(P) if (P > 1)
    {
      const int p = omp_get_thread_num();
      const Index j0 = split.bounds[p], j1 = split.bounds[p + 1], Hs = j1 - j0;
      // Columns [j0, j1) of each phase's rows of W_hh: this thread computes those columns of
      // dL/dh_{t-1} (or of the phase operand's gradient).
      PackedWeights<T> wb[NP];
      for_each_phase<NP>([&](auto phase) {
        constexpr int g0 = Cell::kPhaseFirstGate[decltype(phase)::value];
        constexpr int g1 = Cell::kPhaseFirstGate[decltype(phase)::value + 1];
        wb[phase].pack(Hs, (g1 - g0) * H, [&](Index c) { return w.w_hh + g0 * H * H + j0 + c; }, H);
      });
      for (Index s = steps - 1; s >= 0; --s) {
        const Index b = sc.batch_sizes[s], off = sc.offsets[s];
        const Index prev = s == 0 ? 0 : B + sc.offsets[s - 1];
        T* stash = ws.stash.data() + off * SH;
        for_each_phase_reversed<NP>([&](auto phase) {
          constexpr int ph = decltype(phase)::value;
          constexpr int g0 = Cell::kPhaseFirstGate[ph];
          BackwardRow<T> row;
          row.peephole = w.w_peephole, row.dpeephole = grads.dw_peephole, row.H = H;
          for (Index r = 0; r < b; ++r) {
            row.stash = stash + r * SH;
            row.dy = dy ? dy + (sc.time_of(s, r) * B + sc.order[r]) * H : zeros.data();
            row.dh = dh.data() + r * H;
            row.h_prev = ws.h.data() + (prev + r) * H;
            row.h = ws.h.data() + (B + off + r) * H;
            if (kCell) {
              row.dc = dc.data() + r * H;
              row.c_prev = ws.c.data() + (prev + r) * H;
              row.c = ws.c.data() + (B + off + r) * H;
            }
            if (NP > 1) row.doperand = doperand.data() + r * H;
#pragma omp simd
            for (Index j = j0; j < j1; ++j) Cell::template backward<ph, T>(row, j);
          }
          if (P > 1) {
#pragma omp barrier
          }
          T* target = ph == 0 ? dh.data() : doperand.data();
          const bool accumulate = ph == 0 ? Cell::kDirectHiddenGrad : false;
          packed_gemm(b, stash + g0 * H, SH, wb[ph], target + j0, H, accumulate);
        });
      }
    }
  }

  for (Index r = 0; r < B; ++r) {
    if (dh0) std::memcpy(dh0 + sc.order[r] * H, dh.data() + r * H, sizeof(T) * H);
    if (kCell && dc0) std::memcpy(dc0 + sc.order[r] * H, dc.data() + r * H, sizeof(T) * H);
  }

  // Hoisted parameter gradients over all N rows. Gates whose gradient slots are consecutive
  // (and share an operand) go through one GEMM.
  const T* X = ws.x.data();
  Buffer<T> hprev_packed;
  const T* Hprev = ws.h.data();  // without lengths, step s's h_{t-1} rows are h rows [sB, sB+B)
  if (sc.ragged && N > 0) {
    hprev_packed.resize(N * H);
    for (Index s = 0; s < steps; ++s) {
      const Index prev = s == 0 ? 0 : B + sc.offsets[s - 1];
      std::memcpy(hprev_packed.data() + sc.offsets[s] * H, ws.h.data() + prev * H,
                  sizeof(T) * sc.batch_sizes[s] * H);
    }
    Hprev = hprev_packed.data();
  }
  // dW = dG^T X and dG^T h_{t-1}: one-off products with a transposed operand, which Eigen packs
  // and does well (the packed step kernel would read dG^T one page per k step).
  for (int ga = 0; ga < G;) {
    int gb = ga + 1;
    while (gb < G && Cell::kGateSlots[gb].input_grad == Cell::kGateSlots[gb - 1].input_grad + 1) ++gb;
    const T* dg = ws.stash.data() + Cell::kGateSlots[ga].input_grad * H;
    parallel_gemm_tn((gb - ga) * H, I, N, dg, SH, X, I, grads.dw_ih + ga * H * I, I, true,
                  max_threads);
    add_column_sums(N, (gb - ga) * H, dg, SH, grads.db_ih + ga * H, max_threads);
    ga = gb;
  }
  for (int ga = 0; ga < G;) {
    int gb = ga + 1;
    while (gb < G && Cell::kGateSlots[gb].recurrent_grad == Cell::kGateSlots[gb - 1].recurrent_grad + 1 &&
           Cell::kGateSlots[gb].recurrent_operand == Cell::kGateSlots[ga].recurrent_operand)
      ++gb;
    const T* dg = ws.stash.data() + Cell::kGateSlots[ga].recurrent_grad * H;
    const int op = Cell::kGateSlots[ga].recurrent_operand;
    // op >= 0: GRU reset-before, whose n-gate multiplies r * h_{t-1}, kept in a stash slot.
    const T* a = op < 0 ? Hprev : ws.stash.data() + op * H;
    parallel_gemm_tn((gb - ga) * H, H, N, dg, SH, a, op < 0 ? H : SH,
                  grads.dw_hh + ga * H * H, H, true, max_threads);
    add_column_sums(N, (gb - ga) * H, dg, SH, grads.db_hh + ga * H, max_threads);
    ga = gb;
  }
  if (dx) {
    // dx = dG_x W_ih, into the packed input buffer (no longer needed), then back to time order.
    T* dxp = ws.x.data();
    bool first = true;
    for (int ga = 0; ga < G;) {
      int gb = ga + 1;
      while (gb < G && Cell::kGateSlots[gb].input_grad == Cell::kGateSlots[gb - 1].input_grad + 1) ++gb;
      PackedWeights<T> wt;  // W_ih rows [ga*H, gb*H) transposed: row c = column c
      const T* wblock = w.w_ih + ga * H * I;
      wt.pack(I, (gb - ga) * H, [&](Index c) { return wblock + c; }, I);
      parallel_packed_gemm(N, ws.stash.data() + Cell::kGateSlots[ga].input_grad * H, SH,
                           wt, dxp, I, !first, max_threads);
      first = false;
      ga = gb;
    }
    if (sc.ragged || steps < ws.shape.seq_len) std::fill(dx, dx + ws.shape.seq_len * B * I, T(0));
    for (Index s = 0; s < steps; ++s)
      for (Index r = 0; r < sc.batch_sizes[s]; ++r)
        std::memcpy(dx + (sc.time_of(s, r) * B + sc.order[r]) * I, dxp + (sc.offsets[s] + r) * I,
                    sizeof(T) * I);
  }
}

}  // namespace detail

template <class Cell, class T>
int loop_threads(Index batch, Index hidden) {
  return detail::step_threads<Cell, T>(batch, hidden);
}

template <class Cell, class T>
void forward_inference(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                       const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                       T* c_n) {
  const Schedule sc(shape.seq_len, shape.batch, lengths, reverse);
  detail::forward_impl<Cell, T, false>(shape, w, x, h0, c0, sc, y, h_n, c_n, nullptr);
}

template <class Cell, class T>
void forward_training(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                      const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                      T* c_n, TrainingWorkspace<T>& ws) {
  // Buffers keep their capacity from earlier calls: a training loop then reuses the same pages
  // instead of faulting in fresh ones every step (release() frees them).
  ws.ready = false;
  ws.shape = shape;
  ws.schedule = Schedule(shape.seq_len, shape.batch, lengths, reverse);
  detail::forward_impl<Cell, T, true>(shape, w, x, h0, c0, ws.schedule, y, h_n, c_n, &ws);
  ws.ready = true;
}

template <class Cell, class T>
void backward(const LayerWeights<T>& w, TrainingWorkspace<T>& ws, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const LayerGradients<T>& grads) {
  if (!ws.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  ws.ready = false;
  detail::backward_impl<Cell, T>(w, ws, dy, dh_n, dc_n, dx, dh0, dc0, grads);
}

#define RNNCORE_INSTANTIATE_SEQUENCE(CELL, T)                                                   \
  template int loop_threads<CELL, T>(Index, Index);                                            \
  template void forward_inference<CELL, T>(const SequenceShape&, const LayerWeights<T>&,      \
                                           const T*, const T*, const T*, const int64_t*, bool, \
                                           T*, T*, T*);                                        \
  template void forward_training<CELL, T>(const SequenceShape&, const LayerWeights<T>&,       \
                                          const T*, const T*, const T*, const int64_t*, bool,  \
                                          T*, T*, T*, TrainingWorkspace<T>&);                  \
  template void backward<CELL, T>(const LayerWeights<T>&, TrainingWorkspace<T>&, const T*,    \
                                  const T*, const T*, T*, T*, T*, const LayerGradients<T>&);

}  // namespace rnncore
