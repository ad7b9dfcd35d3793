// The sequence driver (internal): forward (inference and training) and BPTT for any cell of
// cells.hpp. Included by one .cpp per cell family, which instantiates it.
//
// Threading: one OpenMP team lives for the whole time loop. Each thread owns a slice of the
// hidden units [slice.begin, slice.end): it packs the rows of W_hh that produce those units (all
// gates, so the pointwise step of its units needs nothing from other threads), computes that
// slice of every step's recurrent product and runs the pointwise sweep on it. The only
// synchronisation is one barrier per step and phase, because the next recurrent product needs the
// whole h_{t-1}. Backward splits the same way: a thread owns the columns [slice.begin, slice.end)
// of dL/dh_{t-1} = dG W_hh.
//
// Words used below beyond the shape letters of common.hpp (T, B, I, H, G, N):
//   slice        the hidden units one thread owns; slice.width units wide
//   phase        one recurrent product and the pointwise work it feeds; a step has Cell::kPhases
//                of them (2 for GRU reset-before, whose n-gate product needs r first), see
//                cells/pointwise.hpp
//   stash        the training record of one (step, sequence) row: Cell::kStashSlots H-wide slots,
//                stash_width values; backward overwrites it with the gate gradients
//   packed rows  the N valid (step, sequence) pairs in step order (schedule.hpp)
//
// Forward:  record_training_inputs (training) | InferenceBuffers (inference)
//           -> forward_time_loop: per thread pack_recurrent_slice, then per step
//              rows_of_step -> forward_step -> write_step_outputs
// Backward: BackwardTimeLoop (per step: pointwise_backward, then the recurrent GEMM per phase)
//           -> add_weight_gradients, input_gradient
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include <omp.h>

#include "gemm.hpp"
#include "packed_gemm.hpp"
#include "rnncore/detail/gate_blocks.hpp"
#include "runtime_detail.hpp"
#include "rnncore/sequence.hpp"
#include "team.hpp"
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

// ---- forward ----------------------------------------------------------------------------------

// The arguments of one forward call, as its parts see them.
template <class T>
struct ForwardCall {
  const SequenceShape& shape;
  const Schedule& sc;
  const LayerWeights<T>& w;
  const T* x;
  const T* h0;  // may be nullptr (zeros)
  const T* c0;
  T* y;
  T* h_n;
  T* c_n;
};

// Where one step reads and writes; row r of each at base + r * ld (the states at r * H).
template <class T>
struct StepRows {
  const T* gx = nullptr;  // input projection: gate g of unit j at g * gx_gate_stride + j - gx_first
  Index gx_ld = 0, gx_gate_stride = 0, gx_first = 0;
  const T* h_prev = nullptr;
  const T* c_prev = nullptr;
  T* h = nullptr;
  T* c = nullptr;
  T* stash = nullptr;  // training record; scratch for multi-phase inference
  Index stash_ld = 0;
  T* operand = nullptr;  // operand of the second phase's recurrent product
  Index operand_ld = 0;
};

// Training: the inputs in step order, their projection (with b_ih) straight into the gate slots
// of the stash, and the initial states in sorted order as the first B rows of the h and c
// histories, all in the workspace that backward reads.
template <class Cell, class T>
void record_training_inputs(const ForwardCall<T>& call, TrainingWorkspace<T>& ws) {
  const Schedule& sc = call.sc;
  const Index B = sc.batch, I = call.shape.input_size, H = call.shape.hidden_size, N = sc.rows;
  const Index stash_width = Cell::kStashSlots * H;
  const int max_threads = get_num_threads();
  ws.x.resize(N * I);
  ws.stash.resize(N * stash_width);
  ws.h.resize((B + N) * H);
  if (Cell::kHasCellState) ws.c.resize((B + N) * H);
#pragma omp parallel num_threads(max_threads) if (max_threads > 1 && N * I > kMinValuesPerThread)
  gather_steps(sc, 0, sc.steps, call.x, I, ws.x.data(), omp_get_thread_num(),
               omp_get_num_threads());
  input_projection(N, ws.x.data(), I, call.w.w_ih, Cell::kGates * H, ws.stash.data(),
                   stash_width, max_threads);
  add_bias_rows(N, Cell::kGates * H, ws.stash.data(), stash_width, call.w.b_ih);
  gather_state(sc, H, call.h0, ws.h.data());
  if (Cell::kHasCellState) gather_state(sc, H, call.c0, ws.c.data());
}

// Training steps read the projection from the stash and append h_t (c_t) to the histories.
template <class Cell, class T>
class TrainingSteps {
 public:
  TrainingSteps(TrainingWorkspace<T>& ws, const Schedule& sc, Index H) : ws_(ws), sc_(sc), H_(H) {}

  StepRows<T> rows_of_step(Index s) const {
    const Index B = sc_.batch, H = H_, stash_width = Cell::kStashSlots * H;
    const Index first_row = sc_.offsets[s];
    const Index prev = s == 0 ? 0 : B + sc_.offsets[s - 1];  // history row of h_{t-1}
    StepRows<T> rows;
    rows.stash = ws_.stash.data() + first_row * stash_width;
    rows.stash_ld = stash_width;
    rows.gx = rows.stash, rows.gx_ld = stash_width, rows.gx_gate_stride = H, rows.gx_first = 0;
    rows.h_prev = ws_.h.data() + prev * H;
    rows.h = ws_.h.data() + (B + first_row) * H;
    if (Cell::kHasCellState) {
      rows.c_prev = ws_.c.data() + prev * H;
      rows.c = ws_.c.data() + (B + first_row) * H;
    }
    rows.operand = Cell::kOperandSlot >= 0 ? rows.stash + Cell::kOperandSlot * H : nullptr;
    rows.operand_ld = stash_width;
    return rows;
  }
  void end_step() {}

 private:
  TrainingWorkspace<T>& ws_;
  const Schedule& sc_;
  Index H_;
};

// Inference keeps no record: h alternates between two (B, H) buffers, c is updated in place, and
// each thread projects the inputs of its own units one chunk of steps at a time, so memory does
// not grow with T. Built before the parallel region; InferenceSteps is one thread's view.
template <class Cell, class T>
struct InferenceBuffers {
  Index chunk_steps = 0, chunk_rows = 0;
  Buffer<T> h;              // 2 * B * H: h_{t-1} and h_t, swapped every step; h_0 first
  Buffer<T> c;              // B * H, LSTM only; c_0 at first
  Buffer<T> x_chunk;        // chunk_rows * I, shared by the threads
  Buffer<T> gx;             // per thread chunk_rows * G * widest slice: its units' projection
  Buffer<T> b_ih;           // per thread G * widest slice: its units' b_ih (several threads only)
  Buffer<T> stash, operand;  // multi-phase cells: the first phase's results for the second

  InferenceBuffers(const ForwardCall<T>& call, const TimeLoopSplit& split) {
    const Schedule& sc = call.sc;
    const Index B = sc.batch, I = call.shape.input_size, H = call.shape.hidden_size;
    const Index G = Cell::kGates, widest = split.slices.widest;
    const bool multi_phase = Cell::kPhases > 1;
    chunk_steps = std::max<Index>(
        1, std::min<Index>(sc.steps, kInferenceChunkRows / std::max<Index>(split.max_batch, 1)));
    chunk_rows = chunk_steps * split.max_batch;
    h.resize(2 * B * H);
    gather_state(sc, H, call.h0, h.data());
    if (Cell::kHasCellState) {
      c.resize(B * H);
      gather_state(sc, H, call.c0, c.data());
    }
    x_chunk.resize(chunk_rows * I);
    gx.resize(split.threads * chunk_rows * G * widest);
    b_ih.resize(split.threads > 1 ? split.threads * G * widest : 0);
    stash.resize(multi_phase ? B * Cell::kStashSlots * H : 0);
    operand.resize(multi_phase ? B * H : 0);
  }
};

template <class Cell, class T>
class InferenceSteps {
 public:
  // Packs the slice's rows of W_ih (and copies its b_ih) for the chunked input projection.
  InferenceSteps(InferenceBuffers<Cell, T>& buffers, const ForwardCall<T>& call,
                 const TimeLoopSplit& split, int thread, const UnitSlice& slice)
      : buf_(buffers), call_(call), slice_(slice), thread_(thread), threads_(split.threads) {
    const Index G = Cell::kGates, H = call.shape.hidden_size, I = call.shape.input_size;
    const Index width = slice.width, widest = split.slices.widest;
    const auto unit_row = [&](Index c) {
      return call.w.w_ih + ((c / width) * H + slice.begin + c % width) * I;
    };
    w_ih_.pack(G * width, I, unit_row, 1);
    b_ih_ = call.w.b_ih;  // one thread: its slice is every unit, in the layout of b_ih
    if (threads_ > 1) {
      T* slice_bias = buffers.b_ih.data() + thread * G * widest;
      for (Index g = 0; g < G; ++g)
        std::memcpy(slice_bias + g * width, call.w.b_ih + g * H + slice.begin, sizeof(T) * width);
      b_ih_ = slice_bias;
    }
    gx_ = buffers.gx.data() + thread * buffers.chunk_rows * G * widest;
    h_prev_ = buffers.h.data();
    h_next_ = buffers.h.data() + call.sc.batch * H;
  }

  StepRows<T> rows_of_step(Index s) {
    if (s == chunk_end_) project_chunk(s);
    const Index H = call_.shape.hidden_size, gx_width = Cell::kGates * slice_.width;
    StepRows<T> rows;
    rows.gx = gx_ + (call_.sc.offsets[s] - call_.sc.offsets[chunk_begin_]) * gx_width;
    rows.gx_ld = gx_width, rows.gx_gate_stride = slice_.width, rows.gx_first = slice_.begin;
    rows.h_prev = h_prev_, rows.h = h_next_;
    if (Cell::kHasCellState) rows.c_prev = rows.c = buf_.c.data();
    rows.stash = buf_.stash.data(), rows.stash_ld = Cell::kStashSlots * H;
    rows.operand = buf_.operand.data(), rows.operand_ld = H;
    return rows;
  }
  void end_step() { std::swap(h_prev_, h_next_); }

 private:
  // Projects the inputs of the steps [first_step, first_step + chunk_steps) onto the slice.
  void project_chunk(Index first_step) {
    const Schedule& sc = call_.sc;
    const Index I = call_.shape.input_size, gx_width = Cell::kGates * slice_.width;
    chunk_begin_ = first_step;
    chunk_end_ = std::min(sc.steps, first_step + buf_.chunk_steps);
    gather_steps(sc, chunk_begin_, chunk_end_, call_.x, I, buf_.x_chunk.data(), thread_, threads_);
    // Every thread projects every row of the chunk, which all of them gathered.
    if (threads_ > 1) {
#pragma omp barrier
    }
    const Index rows = sc.offsets[chunk_end_] - sc.offsets[chunk_begin_];
    packed_gemm(rows, buf_.x_chunk.data(), I, w_ih_, gx_, gx_width, false);
    add_bias_rows(rows, gx_width, gx_, gx_width, b_ih_);
  }

  InferenceBuffers<Cell, T>& buf_;
  const ForwardCall<T>& call_;
  UnitSlice slice_;
  int thread_, threads_;
  PackedWeights<T> w_ih_;
  const T* b_ih_;
  T* gx_;
  T* h_prev_;
  T* h_next_;
  Index chunk_begin_ = 0, chunk_end_ = 0;
};

// One step for `batch` rows on the slice's units: per phase, the recurrent product (after a
// barrier when several threads run: it reads every unit of h_{t-1} or of the phase operand) into
// gh, then the cell's pointwise sweep.
template <class Cell, class T, bool kTrain>
void forward_step(const StepRows<T>& rows, Index batch, const UnitSlice& slice,
                  const PackedWeights<T> (&w_hh)[Cell::kPhases], T* gh, const LayerWeights<T>& w,
                  Index H, bool several_threads) {
  for_each_phase<Cell::kPhases>([&](auto phase_constant) {
    constexpr int phase = decltype(phase_constant)::value;
    const Index gh_width =
        (Cell::kPhaseFirstGate[phase + 1] - Cell::kPhaseFirstGate[phase]) * slice.width;
    if (several_threads) {
#pragma omp barrier
    }
    const T* operand = phase == 0 ? rows.h_prev : rows.operand;
    packed_gemm(batch, operand, phase == 0 ? H : rows.operand_ld, w_hh[phase], gh, gh_width, false);
    ForwardRow<T> row;
    row.gx_gate_stride = rows.gx_gate_stride, row.gx_first = rows.gx_first;
    row.gh_gate_stride = slice.width, row.gh_first = slice.begin;
    row.b_hh = w.b_hh, row.peephole = w.w_peephole, row.H = H;
    for (Index r = 0; r < batch; ++r) {
      row.gx = rows.gx + r * rows.gx_ld;
      row.gh = gh + r * gh_width;
      row.h_prev = rows.h_prev + r * H;
      row.h = rows.h + r * H;
      if (Cell::kHasCellState) row.c_prev = rows.c_prev + r * H, row.c = rows.c + r * H;
      row.stash = rows.stash ? rows.stash + r * rows.stash_ld : nullptr;
      row.operand = rows.operand ? rows.operand + r * rows.operand_ld : nullptr;
#pragma omp simd
      for (Index j = slice.begin; j < slice.end; ++j)
        Cell::template forward<phase, T, kTrain>(row, j);
    }
  });
}

// The slice of step s's h_t into y (time order), and of the final states of the sequences whose
// last step it was into h_n, c_n.
template <class Cell, class T>
void write_step_outputs(const ForwardCall<T>& call, Index s, const StepRows<T>& rows,
                        const UnitSlice& slice) {
  const Schedule& sc = call.sc;
  const Index B = sc.batch, H = call.shape.hidden_size, bytes = sizeof(T) * slice.width;
  const Index batch = sc.batch_sizes[s];
  for (Index r = 0; r < batch; ++r)
    std::memcpy(call.y + (sc.time_of(s, r) * B + sc.order[r]) * H + slice.begin,
                rows.h + r * H + slice.begin, bytes);
  for (Index r = sc.batch_sizes[s + 1]; r < batch; ++r) {
    const Index out = sc.order[r] * H + slice.begin, in = r * H + slice.begin;
    std::memcpy(call.h_n + out, rows.h + in, bytes);
    if (Cell::kHasCellState) std::memcpy(call.c_n + out, rows.c + in, bytes);
  }
}

// The slice of the final states of length-0 sequences (sorted rows >= max_batch): their initial
// states, given in sorted order.
template <class Cell, class T>
void keep_initial_states(const ForwardCall<T>& call, Index max_batch, const UnitSlice& slice,
                         const T* initial_h, const T* initial_c) {
  const Index H = call.shape.hidden_size, bytes = sizeof(T) * slice.width;
  for (Index r = max_batch; r < call.sc.batch; ++r) {
    const Index out = call.sc.order[r] * H + slice.begin, in = r * H + slice.begin;
    std::memcpy(call.h_n + out, initial_h + in, bytes);
    if (Cell::kHasCellState) std::memcpy(call.c_n + out, initial_c + in, bytes);
  }
}

// The time loop, shared by training and inference: steps_for(thread, slice) gives a thread's
// TrainingSteps or InferenceSteps, which say where each step reads and writes.
template <class Cell, class T, bool kTrain, class StepsFor>
void forward_time_loop(const ForwardCall<T>& call, const TimeLoopSplit& split,
                       const T* initial_h, const T* initial_c, StepsFor&& steps_for) {
  const Schedule& sc = call.sc;
  const Index H = call.shape.hidden_size;
  const Index gh_per_thread = split.max_batch * Cell::kGates * split.slices.widest;
  Buffer<T> gh(split.threads * gh_per_thread);  // each thread's recurrent product of a phase
  Team team;
#pragma omp parallel num_threads(split.threads) if (split.threads > 1)
  {
    const int thread = omp_get_thread_num();
    const UnitSlice slice = split.slices[thread];
    PackedWeights<T> w_hh[Cell::kPhases];
    std::optional<decltype(steps_for(thread, slice))> steps;
    team.guard([&] {  // allocates: a failure must not leave the region
      pack_recurrent_slice<Cell>(call.w.w_hh, H, slice, RecurrentProduct::kForward, w_hh);
      steps.emplace(steps_for(thread, slice));
    });
    if (split.threads > 1) {
#pragma omp barrier
    }
    if (!team.failed()) {
      keep_initial_states<Cell>(call, split.max_batch, slice, initial_h, initial_c);
      T* thread_gh = gh.data() + thread * gh_per_thread;
      for (Index s = 0; s < sc.steps; ++s) {
        if (team.stop_at(s, thread)) break;
        const StepRows<T> rows = steps->rows_of_step(s);
        forward_step<Cell, T, kTrain>(rows, sc.batch_sizes[s], slice, w_hh, thread_gh, call.w, H,
                                      split.threads > 1);
        write_step_outputs<Cell>(call, s, rows, slice);
        steps->end_step();
      }
    }
  }
  team.finish();
}

template <class Cell, class T, bool kTrain>
void forward_impl(const ForwardCall<T>& call, TrainingWorkspace<T>* ws) {
  const Index seq_len = call.shape.seq_len, B = call.shape.batch, H = call.shape.hidden_size;
  if (call.sc.steps < seq_len || call.sc.ragged) std::fill(call.y, call.y + seq_len * B * H, T(0));
  if (B == 0) return;
  const TimeLoopSplit split = time_loop_split<Cell, T>(call.sc, H);
  if constexpr (kTrain) {
    record_training_inputs<Cell>(call, *ws);
    forward_time_loop<Cell, T, true>(
        call, split, ws->h.data(), ws->c.data(),
        [&](int, const UnitSlice&) { return TrainingSteps<Cell, T>(*ws, call.sc, H); });
  } else {
    InferenceBuffers<Cell, T> buffers(call, split);
    forward_time_loop<Cell, T, false>(
        call, split, buffers.h.data(), buffers.c.data(), [&](int thread, const UnitSlice& slice) {
          return InferenceSteps<Cell, T>(buffers, call, split, thread, slice);
        });
  }
}

// ---- backward ---------------------------------------------------------------------------------

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
    Team team;
#pragma omp parallel num_threads(split.threads) if (split.threads > 1)
    {
      const int thread = omp_get_thread_num();
      const UnitSlice slice = split.slices[thread];
      PackedWeights<T> w_hh[Cell::kPhases];
      team.guard([&] {  // allocates: a failure must not leave the region
        pack_recurrent_slice<Cell>(w_.w_hh, H_, slice, RecurrentProduct::kBackward, w_hh);
      });
      if (split.threads > 1) {
#pragma omp barrier
      }
      if (!team.failed()) {
        for (Index n = 0; n < sc_.steps; ++n) {
          if (team.stop_at(n, thread)) break;
          step(sc_.steps - 1 - n, slice, thread, w_hh, split.threads > 1);
        }
      }
    }
    team.finish();
  }

  void step(Index s, const UnitSlice& slice, int thread,
            const PackedWeights<T> (&w_hh)[Cell::kPhases], bool several_threads) {
    const Index stash_width = Cell::kStashSlots * H_, batch = sc_.batch_sizes[s];
    T* stash = ws_.stash.data() + sc_.offsets[s] * stash_width;
    for_each_phase_reversed<Cell::kPhases>([&](auto phase_constant) {
      constexpr int phase = decltype(phase_constant)::value;
      pointwise_backward<phase>(s, slice, thread);
      if (several_threads) {
#pragma omp barrier
      }
      T* target = phase == 0 ? dh_ : doperand_.data();
      const bool accumulate = phase == 0 ? Cell::kDirectHiddenGrad : false;
      packed_gemm(batch, stash + Cell::kPhaseFirstGate[phase] * H_, stash_width, w_hh[phase],
                  target + slice.begin, H_, accumulate);
    });
  }

  template <int Phase>
  void pointwise_backward(Index s, const UnitSlice& slice, int thread) {
    const Index B = sc_.batch, H = H_, stash_width = Cell::kStashSlots * H;
    const Index first_row = sc_.offsets[s];
    const Index prev = s == 0 ? 0 : B + sc_.offsets[s - 1];  // history row of h_{t-1}
    BackwardRow<T> row;
    row.peephole = w_.w_peephole, row.dpeephole = dw_peephole_, row.H = H;
    for (Index r = 0; r < sc_.batch_sizes[s]; ++r) {
      row.stash = ws_.stash.data() + (first_row + r) * stash_width;
      row.dy = dy_ ? dy_ + (sc_.time_of(s, r) * B + sc_.order[r]) * H : no_dy_.data();
      row.dh = dh_ + r * H;
      row.h_prev = ws_.h.data() + (prev + r) * H;
      row.h = ws_.h.data() + (B + first_row + r) * H;
      if (Cell::kHasCellState) {
        row.dc = dc_ + r * H;
        row.c_prev = ws_.c.data() + (prev + r) * H;
        row.c = ws_.c.data() + (B + first_row + r) * H;
      }
      if (Cell::kPhases > 1) row.doperand = doperand_.data() + r * H;
      if constexpr (Phase == Cell::kPhases - 1) {  // the step's first phase: dh, dy untouched
        if (!norm_parts_.empty()) {
          // Gradient-flow diagnostics, fused into the sweep that reads dh and dy anyway: the
          // slice's part of ||dL/dh_t||^2 (the whole gradient reaching h_t) for this row. The
          // slice of dh was written by this thread (the previous step's product).
          double sum = 0.0;
#pragma omp simd reduction(+ : sum)
          for (Index j = slice.begin; j < slice.end; ++j) {
            const double g = double(row.dh[j]) + double(row.dy[j]);
            sum += g * g;
            Cell::template backward<Phase, T>(row, j);
          }
          norm_parts_[std::size_t(thread * ws_.shape.seq_len + sc_.time_of(s, r))] += sum;
          continue;
        }
      }
#pragma omp simd
      for (Index j = slice.begin; j < slice.end; ++j) Cell::template backward<Phase, T>(row, j);
    }
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
  storage.resize(sc.rows * H);
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
  const Index stash_width = Cell::kStashSlots * H;
  T* dx_packed = ws.x.data();
  for_each_gate_block<Cell>(WeightSide::kInput, [&](int first_gate, int end_gate) {
    PackedWeights<T> w_t;  // W_ih rows [first_gate*H, end_gate*H) transposed: row c = column c
    const T* block = w_ih + first_gate * H * I;
    w_t.pack(I, (end_gate - first_gate) * H, [&](Index c) { return block + c; }, I);
    const T* dg = ws.stash.data() + gradient_slot<Cell>(first_gate, WeightSide::kInput) * H;
    parallel_packed_gemm(sc.rows, dg, stash_width, w_t, dx_packed, I, first_gate > 0, max_threads);
  });
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

template <class Cell, class T>
int loop_threads(Index batch, Index hidden) {
  return detail::time_loop_threads<Cell, T>(batch, hidden);
}

template <class Cell, class T>
void forward_inference(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                       const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                       T* c_n) {
  detail::InterruptScope interruptible;
  const Schedule sc(shape.seq_len, shape.batch, lengths, reverse);
  detail::forward_impl<Cell, T, false>({shape, sc, w, x, h0, c0, y, h_n, c_n}, nullptr);
}

template <class Cell, class T>
void forward_training(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                      const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                      T* c_n, TrainingWorkspace<T>& ws) {
  // Buffers keep their capacity from earlier calls: a training loop then reuses the same pages
  // instead of faulting in fresh ones every step (release() frees them).
  detail::InterruptScope interruptible;
  ws.ready = false;
  ws.shape = shape;
  ws.schedule = Schedule(shape.seq_len, shape.batch, lengths, reverse);
  detail::forward_impl<Cell, T, true>({shape, ws.schedule, w, x, h0, c0, y, h_n, c_n}, &ws);
  ws.ready = true;
}

template <class Cell, class T>
void backward(const LayerWeights<T>& w, TrainingWorkspace<T>& ws, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const LayerGradients<T>& grads) {
  if (!ws.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  detail::InterruptScope interruptible;
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
