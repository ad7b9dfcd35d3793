// The sequence driver's common pieces (internal): how the hidden units are split over the
// threads of a time loop, the packing of one thread's slice of the weights, and the small copies
// between batch order and the schedule's sorted step order. Read by the forward
// (sequence_forward.hpp) and backward (sequence_backward.hpp) halves of the driver and by the
// step engine (step_impl.hpp).
//
// Threading: one OpenMP team lives for the whole time loop. Each thread owns a slice of the
// hidden units [slice.begin, slice.end): it packs the rows of W_hh that produce those units (all
// gates, so the pointwise step of its units needs nothing from other threads), computes that
// slice of every step's recurrent product and runs the pointwise sweep on it. The only
// synchronisation is one barrier per step and phase, because the next recurrent product needs the
// whole h_{t-1}. Backward splits the same way: a thread owns the columns [slice.begin, slice.end)
// of dL/dh_{t-1} = dG W_hh.
//
// Words used by the driver beyond the shape letters of common.hpp (T, B, I, H, G, N):
//   slice        the hidden units one thread owns; slice.width units wide
//   phase        one recurrent product and the pointwise work it feeds; a step has Cell::kPhases
//                of them (2 for GRU reset-before, whose n-gate product needs r first), see
//                cells/pointwise.hpp
//   stash        the training record of one (step, sequence) row: Cell::kStashSlots H-wide slots,
//                stash_width values; backward overwrites it with the gate gradients
//   packed rows  the N valid (step, sequence) pairs in step order (schedule.hpp)
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm.hpp"
#include "packed_gemm.hpp"
#include "rnncore/detail/gate_blocks.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/sequence.hpp"
#include "thread_split.hpp"

namespace rnncore {
namespace detail {

// ---- tuning constants -------------------------------------------------------------------------

// A second thread for the time loop pays off once a step's cost, its flops 2*B*G*H*H or the bytes
// of W_hh it streams (G*H*H values), whichever is larger, outweighs a barrier per step (about a
// microsecond). Set between two measured configurations (bench/PROFILE.md, "Threads"): RNN
// 100/16/128 (5.2e5 flops per step) gains nothing from a second thread; batch-1 LSTM H=256
// (1.05e6 bytes of W_hh per step) runs 1.95x faster on two.
inline constexpr double kMinStepCostForThreads = 6e5;

// Fewest hidden units per thread of the time loop: one AVX-512 vector of floats, so no thread's
// pointwise sweep is mostly vector tail. A choice, not measured against other values.
inline constexpr Index kMinUnitsPerThread = 16;

// Slices of the hidden units start at multiples of 8 units (a 256-bit vector of floats, a 512-bit
// one of doubles), so a thread's pointwise sweep starts on a vector boundary of the row. A
// choice, not measured against other values.
inline constexpr Index kSliceAlign = 8;

// Packed rows per inference input-projection chunk (fewer when one step has more rows): bounds
// inference memory at about kInferenceChunkRows * G * H values whatever T is, while the
// projection still runs as a large GEMM: the 1024-row chunk product measured 90-100% of FMA
// peak (bench/PROFILE.md, item 8). Not tuned against other values.
inline constexpr Index kInferenceChunkRows = 1024;

// ---- small helpers ----------------------------------------------------------------------------

// The hidden units [begin, end) one thread of the time loop owns.
struct UnitSlice {
  Index begin = 0, end = 0, width = 0;
};

// Contiguous slices of the hidden units, one per thread, inner bounds multiples of kSliceAlign.
struct UnitSlices {
  std::vector<Index> bounds;
  Index widest = 0;
  UnitSlices(Index hidden, int threads) : bounds(threads + 1) {
    for (int p = 0; p <= threads; ++p) bounds[p] = split_point(hidden, p, threads, kSliceAlign);
    for (int p = 0; p < threads; ++p) widest = std::max(widest, bounds[p + 1] - bounds[p]);
  }
  UnitSlice operator[](int thread) const {
    return {bounds[thread], bounds[thread + 1], bounds[thread + 1] - bounds[thread]};
  }
};

// Threads for the time loop of a step with `rows` active rows (see kMinStepCostForThreads).
template <class Cell, class T>
int time_loop_threads(Index rows, Index hidden) {
  const int max_threads = get_num_threads();
  const double weights = double(Cell::kGates) * double(hidden) * double(hidden);
  const double cost = std::max(2.0 * double(rows) * weights, weights * double(sizeof(T)));
  if (max_threads <= 1 || cost < kMinStepCostForThreads) return 1;
  return int(std::max<Index>(1, std::min<Index>(max_threads, hidden / kMinUnitsPerThread)));
}

// The thread split of one call's time loop, forward and backward alike.
struct TimeLoopSplit {
  Index max_batch;  // active rows of the first step: the most any step has
  int threads;
  UnitSlices slices;
};
template <class Cell, class T>
TimeLoopSplit time_loop_split(const Schedule& sc, Index hidden) {
  const Index max_batch = sc.steps > 0 ? sc.batch_sizes[0] : 0;
  const int threads = time_loop_threads<Cell, T>(max_batch, hidden);
  return {max_batch, threads, UnitSlices(hidden, threads)};
}

// Packed rows [offsets[first_step], offsets[last_step]) of x (T, B, width) in time order, into
// dst in step order; this call copies part `part` of `parts`.
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
  const int threads =
      int(std::max<Index>(1, std::min<Index>(max_threads, rows * cols / kMinValuesPerThread)));
  parallel_parts(threads, [&](int p) {
    const Index lo = split_point(cols, p, threads, kThreadSplitAlign);
    const Index hi = split_point(cols, p + 1, threads, kThreadSplitAlign);
    for (Index r = 0; r < rows; ++r) {
      const T* s = src + r * ld;
#pragma omp simd
      for (Index k = lo; k < hi; ++k) dst[k] += s[k];
    }
  });
}

// A state (B, H) in batch order into sorted row order (zeros when src is null).
template <class T>
void gather_state(const Schedule& sc, Index hidden, const T* src, T* dst) {
  for (Index r = 0; r < sc.batch; ++r) {
    if (src) std::memcpy(dst + r * hidden, src + sc.order[r] * hidden, sizeof(T) * hidden);
    else std::fill(dst + r * hidden, dst + (r + 1) * hidden, T(0));
  }
}

// A state in sorted row order back into batch order (nothing when dst is null).
template <class T>
void scatter_state(const Schedule& sc, Index hidden, const T* src, T* dst) {
  if (!dst) return;
  for (Index r = 0; r < sc.batch; ++r)
    std::memcpy(dst + sc.order[r] * hidden, src + r * hidden, sizeof(T) * hidden);
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

// Which product a thread's packed part of W_hh serves.
enum class RecurrentProduct {
  kForward,   // the slice's gate pre-activations, h_{t-1} W_hh^T: rows of W_hh
  kBackward,  // the slice's columns of dL/dh_{t-1} = dG W_hh: columns of W_hh
};

// Packs, for each phase, the part of W_hh (G*H, H) that a thread's products need. Forward: the
// rows of the phase's gates that produce the slice's units, gate by gate (the product's column
// (g - first_gate) * slice.width + j - slice.begin is gate g of unit j). Backward: the slice's
// columns of the phase's gate rows.
template <class Cell, class T>
void pack_recurrent_slice(const T* w_hh, Index H, const UnitSlice& slice, RecurrentProduct product,
                          PackedWeights<T> (&packed)[Cell::kPhases]) {
  const Index width = slice.width;
  for (int phase = 0; phase < Cell::kPhases; ++phase) {
    const int first_gate = Cell::kPhaseFirstGate[phase];
    const int gates = Cell::kPhaseFirstGate[phase + 1] - first_gate;
    const T* phase_rows = w_hh + first_gate * H * H;
    if (product == RecurrentProduct::kForward) {
      const auto unit_row = [&](Index c) {
        return phase_rows + ((c / width) * H + slice.begin + c % width) * H;
      };
      packed[phase].pack(gates * width, H, unit_row, 1);
    } else {
      const auto unit_column = [&](Index c) { return phase_rows + slice.begin + c; };
      packed[phase].pack(width, gates * H, unit_column, H);
    }
  }
}

// Packs the rows of W_ih (G*H, I) that produce the slice's units, gate by gate (the product's
// column g * slice.width + j - slice.begin is gate g of unit j), for projecting inputs onto one
// thread's units: the inference chunks and the step engine.
template <class Cell, class T>
void pack_input_slice(const T* w_ih, Index I, Index H, const UnitSlice& slice,
                      PackedWeights<T>& packed) {
  const Index width = slice.width;
  const auto unit_row = [&](Index c) {
    return w_ih + ((c / width) * H + slice.begin + c % width) * I;
  };
  packed.pack(Cell::kGates * width, I, unit_row, 1);
}

// The slice's units of b_ih (G*H) into dst (G * slice.width), in pack_input_slice's column order.
template <class Cell, class T>
void copy_bias_slice(const T* b_ih, Index H, const UnitSlice& slice, T* dst) {
  for (Index g = 0; g < Cell::kGates; ++g)
    std::memcpy(dst + g * slice.width, b_ih + g * H + slice.begin, sizeof(T) * slice.width);
}

}  // namespace detail
}  // namespace rnncore
