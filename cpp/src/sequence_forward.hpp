// The sequence driver's forward (internal): inference and the training forward of one layer in
// one direction, for any cell of cells.hpp (the threading and the words used are explained in
// sequence_common.hpp).
//
// forward_impl: record_training_inputs (training) | InferenceBuffers (inference)
//   -> forward_time_loop: per thread pack_recurrent_slice, then per step
//      rows_of_step (TrainingSteps | InferenceSteps) -> forward_step -> write_step_outputs
// forward_step is also the step engine's forward (step_impl.hpp).
#pragma once

#include <algorithm>
#include <cstring>
#include <optional>

#include <omp.h>

#include "sequence_common.hpp"
#include "team.hpp"

namespace rnncore {
namespace detail {

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
  named_resize(ws.x, N * I, "the training workspace's inputs (T*B rows x I)");
  named_resize(ws.stash, N * stash_width,
               "the training workspace's gate stash (T*B rows x stash slots * H)");
  named_resize(ws.h, (B + N) * H, "the training workspace's hidden states ((T+1)*B rows x H)");
  if (Cell::kHasCellState)
    named_resize(ws.c, (B + N) * H, "the training workspace's cell states ((T+1)*B rows x H)");
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

  StepRows<T> rows_of_step(Index s, SpinThenSleepBarrier* /*no chunks to project*/) const {
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
    named_resize(x_chunk, chunk_rows * I, "inference's input chunk");
    named_resize(gx, split.threads * chunk_rows * G * widest, "inference's projected input chunk");
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
    const Index widest = split.slices.widest;
    pack_input_slice<Cell>(call.w.w_ih, I, H, slice, w_ih_);
    b_ih_ = call.w.b_ih;  // one thread: its slice is every unit, in the layout of b_ih
    if (threads_ > 1) {
      T* slice_bias = buffers.b_ih.data() + thread * G * widest;
      copy_bias_slice<Cell>(call.w.b_ih, H, slice, slice_bias);
      b_ih_ = slice_bias;
    }
    gx_ = buffers.gx.data() + thread * buffers.chunk_rows * G * widest;
    h_prev_ = buffers.h.data();
    h_next_ = buffers.h.data() + call.sc.batch * H;
  }

  StepRows<T> rows_of_step(Index s, SpinThenSleepBarrier* barrier) {
    if (s == chunk_end_) project_chunk(s, barrier);
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
  void project_chunk(Index first_step, SpinThenSleepBarrier* barrier) {
    const Schedule& sc = call_.sc;
    const Index I = call_.shape.input_size, gx_width = Cell::kGates * slice_.width;
    chunk_begin_ = first_step;
    chunk_end_ = std::min(sc.steps, first_step + buf_.chunk_steps);
    gather_steps(sc, chunk_begin_, chunk_end_, call_.x, I, buf_.x_chunk.data(), thread_, threads_);
    // Every thread projects every row of the chunk, which all of them gathered.
    meet(barrier);
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
                  Index H, SpinThenSleepBarrier* barrier) {
  for_each_phase<Cell::kPhases>([&](auto phase_constant) {
    constexpr int phase = decltype(phase_constant)::value;
    const Index gh_width =
        (Cell::kPhaseFirstGate[phase + 1] - Cell::kPhaseFirstGate[phase]) * slice.width;
    meet(barrier);
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
  Team team(split.threads);
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
    meet(team.barrier());
    if (!team.failed()) {
      keep_initial_states<Cell>(call, split.max_batch, slice, initial_h, initial_c);
      T* thread_gh = gh.data() + thread * gh_per_thread;
      for (Index s = 0; s < sc.steps; ++s) {
        if (team.stop_at(s, thread)) break;
        const StepRows<T> rows = steps->rows_of_step(s, team.barrier());
        forward_step<Cell, T, kTrain>(rows, sc.batch_sizes[s], slice, w_hh, thread_gh, call.w, H,
                                      team.barrier());
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

}  // namespace detail
}  // namespace rnncore
