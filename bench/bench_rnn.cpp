// Google Benchmark suite of the C++ core: every cell, inference forward, training forward and
// backward, over grids of (T, B, H) with I = H, at 1 and 2 threads; each cell's pointwise sweep
// alone; plus the machine's FMA peak, against which the GFLOP/s counters are read (bench/PROFILE.md).
//
//   cmake -S . -B build-bench -DRNNCORE_BUILD_BENCH=ON && cmake --build build-bench -j2
//   ./build-bench/bench/rnncore_bench --benchmark_out=bench.json --benchmark_out_format=json
//   ./build-bench/bench/rnncore_bench --benchmark_filter='lstm/.*/100/64/256'
//
// FLOP counts: forward GEMM flops 2*T*B*G*H*(I+H); backward twice that (dh_{t-1} and dx, plus
// dW_ih and dW_hh). The counters exclude the pointwise work, so they are comparable with
// PyTorch's and oneDNN's conventions.
//
// The cells are the registry's (RNNCORE_FOR_EACH_CELL in cells.hpp): a new cell is benchmarked
// without an edit here. Before a sequence problem is timed, the fast driver's results on it are
// checked once against a plain loop in double (see "Check before timing" below); a mismatch
// fails that benchmark instead of timing a wrong result.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/sequence.hpp"
#include "rnncore/step.hpp"

namespace {

using rnncore::Index;

template <class Cell>
struct Problem {
  rnncore::SequenceShape shape;
  std::vector<float> w_ih, w_hh, b_ih, b_hh, peephole, x, y, h_n, c_n, dy, dx, dh0, dc0;
  std::vector<float> dw_ih, dw_hh, db_ih, db_hh, dpeephole;
  rnncore::TrainingWorkspace<float> ws;

  Problem(Index T, Index B, Index H) : shape{T, B, H, H} {
    const Index G = Cell::kGates, I = H;
    std::mt19937 gen(1);
    std::uniform_real_distribution<float> u(-0.1f, 0.1f);
    auto fill = [&](std::vector<float>& v, Index n) {
      v.resize(n);
      for (auto& e : v) e = u(gen);
    };
    fill(w_ih, G * H * I);
    fill(w_hh, G * H * H);
    fill(b_ih, G * H);
    fill(b_hh, G * H);
    fill(peephole, 3 * H);
    fill(x, T * B * I);
    fill(dy, T * B * H);
    y.resize(T * B * H);
    h_n.resize(B * H);
    c_n.resize(B * H);
    dx.resize(T * B * I);
    dh0.resize(B * H);
    dc0.resize(B * H);
    dw_ih.assign(G * H * I, 0);
    dw_hh.assign(G * H * H, 0);
    db_ih.assign(G * H, 0);
    db_hh.assign(G * H, 0);
    dpeephole.assign(3 * H, 0);
  }
  rnncore::LayerWeights<float> weights() const {
    return {w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data(), peephole.data()};
  }
  rnncore::LayerGradients<float> grads() {
    return {dw_ih.data(), dw_hh.data(), db_ih.data(), db_hh.data(), dpeephole.data()};
  }
  void inference() {
    rnncore::forward_inference<Cell, float>(shape, weights(), x.data(), nullptr, nullptr,
                                            nullptr, false, y.data(), h_n.data(), c_n.data());
  }
  void training() {
    rnncore::forward_training<Cell, float>(shape, weights(), x.data(), nullptr, nullptr, nullptr,
                                           false, y.data(), h_n.data(), c_n.data(), ws);
  }
  void backward() {
    rnncore::backward<Cell, float>(weights(), ws, dy.data(), nullptr, nullptr, dx.data(),
                                   dh0.data(), dc0.data(), grads());
  }
  double forward_flops() const {
    const double T = double(shape.seq_len), B = double(shape.batch), H = double(shape.hidden_size);
    return 2.0 * T * B * Cell::kGates * H * (double(shape.input_size) + H);
  }
};

// ---- Check before timing ---------------------------------------------------------------------
// A plain, obviously-correct generic loop in double: naive GEMMs (one dot product or one axpy
// per output row), no packing, no threads, no length sorting, one batch row at a time. It calls
// the cell's own pointwise functions (cells/*.hpp) in the order its traits say: the phases of a
// step (kPhases, kPhaseFirstGate; the operand of a later phase in kOperandSlot), whether the
// pointwise backward leaves a direct part of dL/dh_{t-1} (kDirectHiddenGrad), and which stash
// slots hold each gate's gradients (kGateSlots). The pointwise math itself is checked against
// python/rnncore/reference.py by the pytest suite (tests/test_vs_reference.py,
// tests/test_kernel_paths.py); this check covers what the fast driver adds around it: packing,
// row tiles and lane tails, the thread split, the hoisted GEMMs and reductions.

// out[r] = sum_k w[r * K + k] * a[k], for r < rows
void naive_matvec(const double* w, Index rows, Index K, const double* a, double* out) {
  for (Index r = 0; r < rows; ++r) {
    double sum = 0;
    for (Index k = 0; k < K; ++k) sum += w[r * K + k] * a[k];
    out[r] = sum;
  }
}

struct NaiveSequence {
  Index T = 0, B = 0, I = 0, H = 0;
  // inputs: weights (PyTorch layout), x (T, B, I), initial states and upstream gradients
  std::vector<double> w_ih, w_hh, b_ih, b_hh, peephole, x, h0, c0, dy, dh_n, dc_n;
  // results
  std::vector<double> y, h_n, c_n, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dpeephole;

  template <class Cell>
  void run() {
    constexpr int G = Cell::kGates, S = Cell::kStashSlots, NP = Cell::kPhases;
    const Index BH = B * H;
    // h[t] / c[t]: the states before step t (t = 0: the initial state), kept for backward.
    std::vector<double> h((T + 1) * BH), c((T + 1) * BH), stash(T * B * S * H);
    std::vector<double> gx(G * H), gh(G * H), operand(H), doperand(H), dh(dh_n), dc(dc_n);
    std::copy(h0.begin(), h0.end(), h.begin());
    std::copy(c0.begin(), c0.end(), c.begin());
    y.assign(T * BH, 0);
    for (Index t = 0; t < T; ++t) {
      for (Index b = 0; b < B; ++b) {
        const Index row_now = t * BH + b * H, row_next = (t + 1) * BH + b * H;
        double* st = stash.data() + (t * B + b) * S * H;
        double* op = Cell::kOperandSlot >= 0 ? st + Cell::kOperandSlot * H : operand.data();
        naive_matvec(w_ih.data(), G * H, I, x.data() + (t * B + b) * I, gx.data());
        for (Index k = 0; k < G * H; ++k) gx[k] += b_ih[k];
        rnncore::for_each_phase<NP>([&](auto phase) {
          constexpr int ph = decltype(phase)::value;
          constexpr int g0 = Cell::kPhaseFirstGate[ph], g1 = Cell::kPhaseFirstGate[ph + 1];
          naive_matvec(w_hh.data() + g0 * H * H, (g1 - g0) * H, H,
                       ph == 0 ? h.data() + row_now : op, gh.data());
          rnncore::ForwardRow<double> r;
          r.gx = gx.data(), r.gx_gate_stride = H, r.gx_first = 0;
          r.gh = gh.data(), r.gh_gate_stride = H, r.gh_first = 0;
          r.b_hh = b_hh.data(), r.peephole = peephole.data(), r.H = H;
          r.h_prev = h.data() + row_now, r.h = h.data() + row_next;
          r.c_prev = c.data() + row_now, r.c = c.data() + row_next;
          r.stash = st, r.operand = op;
          for (Index j = 0; j < H; ++j) Cell::template forward<ph, double, true>(r, j);
        });
        std::copy_n(h.data() + row_next, H, y.data() + row_now);
      }
    }
    h_n.assign(h.begin() + T * BH, h.end());
    c_n.assign(c.begin() + T * BH, c.end());

    dx.assign(T * B * I, 0);
    dw_ih.assign(w_ih.size(), 0), dw_hh.assign(w_hh.size(), 0);
    db_ih.assign(b_ih.size(), 0), db_hh.assign(b_hh.size(), 0), dpeephole.assign(peephole.size(), 0);
    for (Index t = T - 1; t >= 0; --t) {
      for (Index b = 0; b < B; ++b) {
        const Index row_now = t * BH + b * H, row_next = (t + 1) * BH + b * H;
        double* st = stash.data() + (t * B + b) * S * H;
        const double* x_t = x.data() + (t * B + b) * I;
        rnncore::BackwardRow<double> r;
        r.stash = st, r.dy = dy.data() + row_now, r.dh = dh.data() + b * H, r.dc = dc.data() + b * H;
        r.h_prev = h.data() + row_now, r.h = h.data() + row_next;
        r.c_prev = c.data() + row_now, r.c = c.data() + row_next;
        r.peephole = peephole.data(), r.dpeephole = dpeephole.data(), r.doperand = doperand.data();
        r.H = H;
        rnncore::for_each_phase_reversed<NP>([&](auto phase) {
          constexpr int ph = decltype(phase)::value;
          constexpr int g0 = Cell::kPhaseFirstGate[ph], g1 = Cell::kPhaseFirstGate[ph + 1];
          for (Index j = 0; j < H; ++j) Cell::template backward<ph, double>(r, j);
          // the gradient of this phase's recurrent operand: the gate gradients of the phase
          // (slots g0..g1 now) times their rows of W_hh
          double* target = ph == 0 ? r.dh : doperand.data();
          if (!(ph == 0 && Cell::kDirectHiddenGrad)) std::fill_n(target, H, 0.0);
          for (Index k = g0 * H; k < g1 * H; ++k)
            for (Index j = 0; j < H; ++j) target[j] += st[k] * w_hh[k * H + j];
        });
        for (int g = 0; g < G; ++g) {
          const rnncore::GateSlots slots = Cell::kGateSlots[g];
          const double* da_in = st + slots.input_grad * H;
          const double* da_rec = st + slots.recurrent_grad * H;
          const double* rec_operand =
              slots.recurrent_operand < 0 ? h.data() + row_now : st + slots.recurrent_operand * H;
          for (Index j = 0; j < H; ++j) {
            const Index row = g * H + j;
            db_ih[row] += da_in[j];
            db_hh[row] += da_rec[j];
            for (Index i = 0; i < I; ++i) {
              dw_ih[row * I + i] += da_in[j] * x_t[i];
              dx[(t * B + b) * I + i] += da_in[j] * w_ih[row * I + i];
            }
            for (Index k = 0; k < H; ++k) dw_hh[row * H + k] += da_rec[j] * rec_operand[k];
          }
        }
      }
    }
    dh0 = dh;
    dc0 = dc;
  }
};

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// "" if every value of `fast` is within float32 tolerance of `exact` (relative to the largest
// |exact| of the array), else what differs and by how much.
std::string compare_arrays(const char* what, const std::vector<float>& fast,
                           const std::vector<double>& exact) {
  double scale = 0, worst = 0;
  Index at = 0;
  for (std::size_t k = 0; k < exact.size(); ++k) scale = std::max(scale, std::abs(exact[k]));
  for (std::size_t k = 0; k < exact.size(); ++k) {
    const double err = std::abs(double(fast[k]) - exact[k]);
    if (!(err <= worst)) worst = err, at = Index(k);  // also catches NaN
  }
  const double bound = 1e-5 + 1e-4 * scale;
  if (fast.size() == exact.size() && worst <= bound) return "";
  char msg[256];
  std::snprintf(msg, sizeof msg, "%s differs from the double loop by %.3g at [%td] (allowed %.3g); ",
                what, worst, at, bound);
  return msg;
}

// Steps of the check: the problem's own T, cut so the double loop does at most ~2 GFLOP of
// forward work (about a second; the backward adds vectorised axpys). The driver's code paths
// depend on B, H and the thread count, which the check keeps, not on T (at least 2 steps).
template <class Cell>
Index check_steps(Index T, Index B, Index H) {
  const double step_flops = 2.0 * double(B) * Cell::kGates * double(H) * double(2 * H);
  return std::min<Index>(T, std::max<Index>(2, Index(2e9 / step_flops)));
}

template <class Cell>
std::string check_against_naive(Index T, Index B, Index H) {
  const Index Tc = check_steps<Cell>(T, B, H);
  Problem<Cell> p(Tc, B, H);
  std::mt19937 gen(2);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> h0(B * H), c0(B * H), dh_n(B * H), dc_n(B * H);
  for (auto* v : {&h0, &c0, &dh_n, &dc_n})
    for (auto& e : *v) e = u(gen);
  // nonzero initial states and final-state gradients, so every term of a step is exercised
  // even when the check runs only a few steps
  const auto w = p.weights();
  std::vector<float> y_inf(p.y.size()), h_inf(B * H), c_inf(B * H);
  rnncore::forward_inference<Cell, float>(p.shape, w, p.x.data(), h0.data(), c0.data(), nullptr,
                                          false, y_inf.data(), h_inf.data(), c_inf.data());
  rnncore::forward_training<Cell, float>(p.shape, w, p.x.data(), h0.data(), c0.data(), nullptr,
                                         false, p.y.data(), p.h_n.data(), p.c_n.data(), p.ws);
  rnncore::backward<Cell, float>(w, p.ws, p.dy.data(), dh_n.data(), dc_n.data(), p.dx.data(),
                                 p.dh0.data(), p.dc0.data(), p.grads());

  NaiveSequence n;
  n.T = Tc, n.B = B, n.I = H, n.H = H;
  n.w_ih = widen(p.w_ih), n.w_hh = widen(p.w_hh), n.b_ih = widen(p.b_ih), n.b_hh = widen(p.b_hh);
  n.peephole = widen(p.peephole), n.x = widen(p.x), n.dy = widen(p.dy);
  n.h0 = widen(h0), n.c0 = widen(c0), n.dh_n = widen(dh_n), n.dc_n = widen(dc_n);
  n.run<Cell>();

  std::string err = compare_arrays("inference y", y_inf, n.y) +
                    compare_arrays("inference h_n", h_inf, n.h_n) +
                    compare_arrays("training y", p.y, n.y) +
                    compare_arrays("training h_n", p.h_n, n.h_n) +
                    compare_arrays("dx", p.dx, n.dx) + compare_arrays("dh0", p.dh0, n.dh0) +
                    compare_arrays("dw_ih", p.dw_ih, n.dw_ih) +
                    compare_arrays("dw_hh", p.dw_hh, n.dw_hh) +
                    compare_arrays("db_ih", p.db_ih, n.db_ih) +
                    compare_arrays("db_hh", p.db_hh, n.db_hh);
  if constexpr (Cell::kHasCellState)
    err += compare_arrays("inference c_n", c_inf, n.c_n) +
           compare_arrays("training c_n", p.c_n, n.c_n) + compare_arrays("dc0", p.dc0, n.dc0);
  if constexpr (Cell::kHasPeephole) err += compare_arrays("dpeephole", p.dpeephole, n.dpeephole);
  if (!err.empty())
    err = std::string(Cell::name) + " T=" + std::to_string(Tc) + " B=" + std::to_string(B) +
          " H=" + std::to_string(H) + ": " + err;
  return err;
}

// The check's verdict for a (T, B, H, threads) problem of Cell, computed on first use: every
// pass and repetition of that problem reports the same verdict.
template <class Cell>
const std::string& checked(Index T, Index B, Index H, int threads) {
  static std::map<std::array<Index, 4>, std::string> verdicts;
  const std::array<Index, 4> key{T, B, H, threads};
  auto it = verdicts.find(key);
  if (it == verdicts.end()) it = verdicts.emplace(key, check_against_naive<Cell>(T, B, H)).first;
  return it->second;
}

enum class Pass { Inference, TrainingForward, Backward, ForwardBackward };

template <class Cell, Pass kPass>
void BM_Sequence(benchmark::State& state) {
  const Index T = state.range(0), B = state.range(1), H = state.range(2);
  rnncore::set_num_threads(int(state.range(3)));
  if (const std::string& error = checked<Cell>(T, B, H, int(state.range(3))); !error.empty()) {
    state.SkipWithError(error.c_str());
    rnncore::set_num_threads(0);
    return;
  }
  Problem<Cell> p(T, B, H);
  double flops = 0;
  for (auto _ : state) {
    switch (kPass) {
      case Pass::Inference:
        p.inference();
        flops = p.forward_flops();
        break;
      case Pass::TrainingForward:
        p.training();
        flops = p.forward_flops();
        break;
      case Pass::Backward:
        // backward consumes the workspace: the training forward before it is not timed
        state.PauseTiming();
        p.training();
        state.ResumeTiming();
        p.backward();
        flops = 2 * p.forward_flops();
        break;
      case Pass::ForwardBackward:
        p.training();
        p.backward();
        flops = 3 * p.forward_flops();
        break;
    }
    benchmark::DoNotOptimize(p.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["steps/s"] =
      benchmark::Counter(double(T * B), benchmark::Counter::kIsIterationInvariantRate);
  rnncore::set_num_threads(0);
}

// (T, B, H, threads): the configurations of the performance targets, at 1 and 2 threads.
void Grid(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    b->Args({100, 64, 256, threads});
    b->Args({100, 16, 128, threads});
    b->Args({200, 1, 256, threads});
    b->Args({100, 1, 32, threads});
  }
  b->ArgNames({"T", "B", "H", "threads"})->UseRealTime()->Unit(benchmark::kMillisecond);
}
void LargeGrid(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) b->Args({50, 128, 1024, threads});
  b->ArgNames({"T", "B", "H", "threads"})->UseRealTime()->Unit(benchmark::kMillisecond);
}
// A denser sweep for scaling plots: T x B x H.
void Sweep(benchmark::internal::Benchmark* b) {
  b->ArgsProduct({{50}, {1, 8, 32, 128}, {64, 256, 512}, {2}})
      ->ArgNames({"T", "B", "H", "threads"})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

#define RNNCORE_BENCH_CELL(NAME, TYPE)                                                          \
  BENCHMARK(BM_Sequence<TYPE, Pass::Inference>)->Name(#NAME "/inference")->Apply(Grid);         \
  BENCHMARK(BM_Sequence<TYPE, Pass::TrainingForward>)->Name(#NAME "/train_forward")->Apply(Grid); \
  BENCHMARK(BM_Sequence<TYPE, Pass::Backward>)->Name(#NAME "/backward")->Apply(Grid);           \
  BENCHMARK(BM_Sequence<TYPE, Pass::ForwardBackward>)->Name(#NAME "/forward_backward")->Apply(Grid);
RNNCORE_FOR_EACH_CELL(RNNCORE_BENCH_CELL)
#undef RNNCORE_BENCH_CELL

// The pointwise sweep of one time step alone (one thread, inference, every phase): B rows of H
// units, pre-activations spread over the sigmoid/tanh range. (No check here: these are the
// cell's own functions, which the pytest suite checks against reference.py.) Read against a step's time above:
// e.g. gru/pointwise/B:64/H:128 is one thread's share of a GRU step at B = 64, H = 256.
template <class Cell>
void BM_Pointwise(benchmark::State& state) {
  const Index B = state.range(0), H = state.range(1);
  constexpr int G = Cell::kGates;
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> pre(-4.0f, 4.0f);
  std::vector<float> gx(B * G * H), gh(B * G * H), b_hh(G * H, 0.01f), peephole(3 * H, 0.1f),
      h_prev(B * H, 0.3f), c_prev(B * H, 0.2f), h(B * H), c(B * H),
      stash(B * Cell::kStashSlots * H), operand(B * H);
  for (auto& v : gx) v = pre(gen);
  for (auto& v : gh) v = pre(gen);
  auto sweep = [&](auto phase) {
    constexpr int ph = decltype(phase)::value;
    rnncore::ForwardRow<float> row;
    row.gx_gate_stride = H, row.gh_gate_stride = H;
    row.b_hh = b_hh.data(), row.peephole = peephole.data(), row.H = H;
    for (Index r = 0; r < B; ++r) {
      row.gx = gx.data() + r * G * H, row.gh = gh.data() + r * G * H;
      row.h_prev = h_prev.data() + r * H, row.h = h.data() + r * H;
      row.c_prev = c_prev.data() + r * H, row.c = c.data() + r * H;
      row.stash = stash.data() + r * Cell::kStashSlots * H, row.operand = operand.data() + r * H;
#pragma omp simd
      for (Index j = 0; j < H; ++j) Cell::template forward<ph, float, false>(row, j);
    }
  };
  for (auto _ : state) {
    sweep(std::integral_constant<int, 0>{});
    if constexpr (Cell::kPhases > 1) sweep(std::integral_constant<int, 1>{});
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * B * H);
}

#define RNNCORE_BENCH_POINTWISE(NAME, TYPE)                                                   \
  BENCHMARK(BM_Pointwise<TYPE>)->Name(#NAME "/pointwise")->Args({64, 128})->Args({16, 64})  \
      ->Args({1, 32})->ArgNames({"B", "H"})->Unit(benchmark::kMicrosecond);
RNNCORE_FOR_EACH_CELL(RNNCORE_BENCH_POINTWISE)
#undef RNNCORE_BENCH_POINTWISE

using Lstm = rnncore::LstmCell<false>;
BENCHMARK(BM_Sequence<Lstm, Pass::Inference>)->Name("lstm/inference")->Apply(LargeGrid);
BENCHMARK(BM_Sequence<Lstm, Pass::ForwardBackward>)->Name("lstm/forward_backward")->Apply(LargeGrid);
BENCHMARK(BM_Sequence<Lstm, Pass::Inference>)->Name("sweep/lstm/inference")->Apply(Sweep);

// FMA throughput: 12 independent accumulator chains of the widest vector the build targets
// (covers the 4-cycle FMA latency on 2 ports), one chain set per thread.
typedef float Vec __attribute__((vector_size(
#if defined(__AVX512F__)
    64
#elif defined(__AVX__)
    32
#else
    16
#endif
    )));

// Single cell steps through rnncore::StepEngine (what the Python cells and decoders run), with
// the weights packed once: inference forward, and a training forward plus its backward. Args:
// batch, hidden size (I = H), threads. Before timing, the step's h is checked against a one-step
// run of the sequence driver.
template <class Cell>
void BM_Step(benchmark::State& state) {
  const Index B = state.range(0), H = state.range(1), G = Cell::kGates;
  rnncore::ThreadLimit threads(int(state.range(2)));
  const bool train = state.range(3) != 0;
  Problem<Cell> p(1, B, H);
  rnncore::StepEngine<float> engine(Cell::name, H, H);
  rnncore::LayerWeights<float> w{p.w_ih.data(), p.w_hh.data(), p.b_ih.data(), p.b_hh.data(),
                                 p.peephole.data()};
  engine.set_weights(w);
  std::vector<float> h0(B * H, 0.1f), c0(B * H, 0.1f), h(B * H), c(B * H), dh(B * H, 1.0f),
      dx(B * H), dh_prev(B * H), dc_prev(B * H), stash(B * Cell::kStashSlots * H);
  engine.forward(B, p.x.data(), h0.data(), c0.data(), h.data(), c.data(), nullptr);
  rnncore::forward_inference<Cell, float>(p.shape, w, p.x.data(), h0.data(), c0.data(), nullptr, false,
                                          p.y.data(), p.h_n.data(), p.c_n.data());
  for (Index i = 0; i < B * H; ++i)
    if (std::abs(h[i] - p.h_n[i]) > 1e-5f * (1 + std::abs(p.h_n[i]))) {
      state.SkipWithError("the step engine disagrees with the sequence driver");
      return;
    }
  rnncore::LayerGradients<float> g{p.dw_ih.data(), p.dw_hh.data(), p.db_ih.data(),
                                   p.db_hh.data(), p.dpeephole.data()};
  for (auto _ : state) {
    if (!train) {
      engine.forward(B, p.x.data(), h0.data(), c0.data(), h.data(), c.data(), nullptr);
    } else {
      engine.forward(B, p.x.data(), h0.data(), c0.data(), h.data(), c.data(), stash.data());
      engine.backward(B, p.x.data(), h0.data(), c0.data(), h.data(), c.data(), stash.data(),
                      dh.data(), dh.data(), dx.data(), dh_prev.data(), dc_prev.data(), g);
    }
    benchmark::DoNotOptimize(h.data());
  }
  const double flops = 2.0 * B * G * H * (H + H) * (train ? 3 : 1);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
void StepGrid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "H", "threads", "train"});
  for (auto [B, H] : {std::pair<int, int>{1, 32}, {64, 256}})
    for (int t : {1, 2})
      for (int train : {0, 1}) b->Args({B, H, t, train});
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}
BENCHMARK(BM_Step<rnncore::LstmCell<false>>)->Name("lstm/step")->Apply(StepGrid);
BENCHMARK(BM_Step<rnncore::GruCell<true>>)->Name("gru/step")->Apply(StepGrid);

void BM_FmaPeak(benchmark::State& state) {
  const int threads = int(state.range(0));
  constexpr int kChains = 12;
  constexpr int kLanes = int(sizeof(Vec) / sizeof(float));
  const long iters = 1 << 22;
  for (auto _ : state) {
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      Vec acc[kChains];
      const Vec mul = Vec{} + 0.999999f, add = Vec{} + 1e-7f;
      for (int i = 0; i < kChains; ++i) acc[i] = Vec{} + float(i);
      for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
        for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * mul + add;
      for (int i = 0; i < kChains; ++i) sink += acc[i][0];
    }
    benchmark::DoNotOptimize(sink);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * kLanes * kChains * double(iters) * threads * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_FmaPeak)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
