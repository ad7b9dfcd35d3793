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
#include <benchmark/benchmark.h>
#include <omp.h>

#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "rnncore/cells.hpp"
#include "rnncore/runtime.hpp"
#include "rnncore/sequence.hpp"

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

enum class Pass { Inference, TrainingForward, Backward, ForwardBackward };

template <class Cell, Pass kPass>
void BM_Sequence(benchmark::State& state) {
  const Index T = state.range(0), B = state.range(1), H = state.range(2);
  rnncore::set_num_threads(int(state.range(3)));
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
// units, pre-activations spread over the sigmoid/tanh range. Read against a step's time above:
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
