// Google Benchmark suite of the CUDA stack driver (cpp/cuda/api.hpp): every registry cell,
// float32, inference forward, training forward, and training forward + backward, over a grid of
// (T, B, H) with I = H, one layer, one direction. Times are CUDA events around each iteration
// (UseManualTime), so they measure the device, not the launch queue. Built with the rest of
// bench/ when CMake found a CUDA compiler (target rnncore_bench_cuda):
//
//   cmake -S . -B build-bench -DRNNCORE_BUILD_BENCH=ON && cmake --build build-bench -j2
//   ./build-bench/bench/rnncore_bench_cuda --benchmark_filter='lstm/.*'
//
// Before a problem is timed, the device's inference output is checked once against the CPU
// library on the same weights and input; a mismatch fails that benchmark instead of timing a
// wrong result. Without a device every benchmark reports the CUDA runtime's error and skips.
// cuBLAS is loaded at run time (cpp/cuda/cublas.hpp): put libcublas.so.<major> on
// LD_LIBRARY_PATH or set RNNCORE_CUBLAS to its path.
//
// FLOP counts as in bench_rnn.cpp: forward GEMM flops 2*T*B*G*H*(I+H), backward twice that.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "api.hpp"
#include "cublas.hpp"
#include "rnncore/cells.hpp"
#include "rnncore/stack.hpp"

namespace {

using rnncore::Index;
namespace rc = rnncore::cuda;

enum Mode { kInference = 0, kTrainingForward = 1, kForwardBackward = 2 };
const char* const kModeNames[] = {"inference", "training_forward", "forward_backward"};

struct DeviceArray {
  float* p = nullptr;
  explicit DeviceArray(const std::vector<float>& host) {
    if (cudaMalloc(&p, sizeof(float) * (host.size() + 1)) != cudaSuccess) p = nullptr;
    if (p && !host.empty())
      cudaMemcpy(p, host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(p); }
};

std::vector<float> random_vector(std::mt19937& gen, Index n) {
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = u(gen);
  return v;
}

template <class Cell>
void run(benchmark::State& state, Mode mode) {
  if (rc::device_count() == 0) {
    state.SkipWithError(("no CUDA device: " + rc::device_error()).c_str());
    return;
  }
  if (const char* path = std::getenv("RNNCORE_CUBLAS")) rc::blas::set_library_path(path);
  const Index T = state.range(0), B = state.range(1), H = state.range(2), I = H;
  const Index G = Cell::kGates;
  std::mt19937 gen(1);
  const auto w_ih = random_vector(gen, G * H * I), w_hh = random_vector(gen, G * H * H);
  const auto b_ih = random_vector(gen, G * H), b_hh = random_vector(gen, G * H);
  const auto peephole = random_vector(gen, 3 * H), x = random_vector(gen, T * B * I);
  const auto dy = random_vector(gen, T * B * H);
  DeviceArray d_w_ih(w_ih), d_w_hh(w_hh), d_b_ih(b_ih), d_b_hh(b_hh), d_peephole(peephole);
  DeviceArray d_x(x), d_dy(dy);
  const std::vector<float> zeros_y(static_cast<std::size_t>(T * B * H)), zeros_s(static_cast<std::size_t>(B * H));
  const std::vector<float> zeros_x(static_cast<std::size_t>(T * B * I));
  DeviceArray d_y(zeros_y), d_h(zeros_s), d_c(zeros_s), d_dx(zeros_x), d_dh0(zeros_s),
      d_dc0(zeros_s);
  DeviceArray g_w_ih(std::vector<float>(w_ih.size())), g_w_hh(std::vector<float>(w_hh.size())),
      g_b_ih(std::vector<float>(b_ih.size())), g_b_hh(std::vector<float>(b_hh.size())),
      g_peephole(std::vector<float>(peephole.size()));
  rc::Shape shape;
  shape.seq_len = T, shape.batch = B, shape.input_size = I, shape.hidden_size = H;
  const std::vector<rc::LayerWeights<float>> w{
      {d_w_ih.p, d_w_hh.p, d_b_ih.p, d_b_hh.p, Cell::kHasPeephole ? d_peephole.p : nullptr}};
  const std::vector<rc::LayerGradients<float>> g{
      {g_w_ih.p, g_w_hh.p, g_b_ih.p, g_b_hh.p, Cell::kHasPeephole ? g_peephole.p : nullptr}};
  rc::Context ctx;
  float* c_n = Cell::kHasCellState ? d_c.p : nullptr;
  auto step = [&] {
    rc::forward<Cell, float>(ctx, 0, shape, w, mode != kInference, 0.0, 0, d_x.p, nullptr,
                             nullptr, nullptr, d_y.p, d_h.p, c_n, nullptr);
    if (mode == kForwardBackward)
      rc::backward<Cell, float>(ctx, w, d_dy.p, nullptr, nullptr, d_dx.p, d_dh0.p,
                                Cell::kHasCellState ? d_dc0.p : nullptr, g, nullptr);
  };
  try {
    // Check before timing: the device's inference output against the CPU library's.
    rc::forward<Cell, float>(ctx, 0, shape, w, false, 0.0, 0, d_x.p, nullptr, nullptr, nullptr,
                             d_y.p, d_h.p, c_n, nullptr);
    std::vector<float> y_device(zeros_y.size()), y_host(zeros_y.size()), h_host(zeros_s.size()),
        c_host(zeros_s.size());
    cudaMemcpy(y_device.data(), d_y.p, sizeof(float) * y_device.size(), cudaMemcpyDeviceToHost);
    rnncore::StackShape cpu_shape;
    cpu_shape.seq_len = T, cpu_shape.batch = B, cpu_shape.input_size = I,
    cpu_shape.hidden_size = H;
    rnncore::StackWeights<float> cpu_w;
    cpu_w.layers.push_back({w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data(),
                            Cell::kHasPeephole ? peephole.data() : nullptr});
    rnncore::forward_inference<Cell, float>(cpu_shape, cpu_w, x.data(), nullptr, nullptr, nullptr,
                                            y_host.data(), h_host.data(), c_host.data());
    double worst = 0;
    for (std::size_t k = 0; k < y_host.size(); ++k)
      worst = std::max(worst, double(std::fabs(y_host[k] - y_device[k])));
    if (!(worst < 1e-4)) {
      state.SkipWithError(("device output differs from the CPU library's by " +
                           std::to_string(worst)).c_str());
      return;
    }
    step();  // warm-up: buffers allocated, cuBLAS heuristics chosen
    cudaDeviceSynchronize();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (auto _ : state) {
    cudaEventRecord(start);
    step();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double forward_flops = 2.0 * T * B * G * H * (I + H);
  const double flops = mode == kForwardBackward ? 3 * forward_flops : forward_flops;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["us/step"] =
      benchmark::Counter(double(T) * 1e-6, benchmark::Counter::kIsIterationInvariantRate |
                                              benchmark::Counter::kInvert);
}

template <class Cell>
void register_cell() {
  const std::vector<std::vector<int64_t>> grid = {
      {100, 1, 256}, {100, 16, 128}, {100, 64, 256}, {50, 128, 1024}, {200, 256, 512}};
  for (int mode = 0; mode < 3; ++mode) {
    auto* b = benchmark::RegisterBenchmark(
        (std::string(Cell::name) + "/" + kModeNames[mode]).c_str(),
        [mode](benchmark::State& s) { run<Cell>(s, Mode(mode)); });
    b->ArgNames({"T", "B", "H"})->UseManualTime()->Unit(benchmark::kMicrosecond);
    for (const auto& args : grid) b->Args(args);
  }
}

template <class... Cells>
void register_all(std::tuple<Cells...>*) {
  (register_cell<Cells>(), ...);
}

}  // namespace

int main(int argc, char** argv) {
  register_all(static_cast<rnncore::CellTypes*>(nullptr));
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
