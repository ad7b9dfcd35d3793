#include "rnncore/linalg.hpp"

#include <algorithm>
#include <chrono>

#include <omp.h>

#include "gemm.hpp"
#include "rnncore/runtime.hpp"

namespace rnncore {

template <class T>
void matmul(Index m, Index n, Index k, const T* a, Index lda, bool trans_a, const T* b, Index ldb,
            bool trans_b, T* c, Index ldc, bool accumulate) {
  detail::parallel_gemm(m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate,
                        get_num_threads());
}

namespace {
#if defined(__AVX512F__)
constexpr int kPeakVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kPeakVectorBytes = 32;
#else
constexpr int kPeakVectorBytes = 16;
#endif
typedef float PeakVec __attribute__((vector_size(kPeakVectorBytes)));

// `iters` rounds of kChains independent FMAs per thread (enough chains to cover the FMA latency
// on two pipes); returns a value that depends on all of them so nothing is optimised away.
float fma_chains(long iters, int threads) {
  constexpr int kChains = 12;
  float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
    PeakVec acc[kChains];
    const PeakVec mul = PeakVec{} + 0.999999f, add = PeakVec{} + 1e-7f;
    for (int i = 0; i < kChains; ++i) acc[i] = PeakVec{} + float(i + omp_get_thread_num());
    for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
      for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * mul + add;
    for (int i = 0; i < kChains; ++i) sink += acc[i][0];
  }
  return sink;
}
}  // namespace

double fma_peak_gflops(int threads, double seconds) {
  if (threads <= 0) threads = get_num_threads();
  constexpr int kChains = 12, kLanes = kPeakVectorBytes / int(sizeof(float));
  using clock = std::chrono::steady_clock;
  volatile float sink = fma_chains(1 << 16, threads);  // wake the threads
  long iters = 1 << 18;
  double best = 0.0, spent = 0.0;
  while (spent < seconds) {
    const auto t0 = clock::now();
    sink = sink + fma_chains(iters, threads);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    spent += dt;
    best = std::max(best, 2.0 * kLanes * kChains * double(iters) * threads / dt * 1e-9);
    if (dt < 0.02) iters *= 2;
  }
  return best;
}

template void matmul<float>(Index, Index, Index, const float*, Index, bool, const float*, Index,
                            bool, float*, Index, bool);
template void matmul<double>(Index, Index, Index, const double*, Index, bool, const double*,
                             Index, bool, double*, Index, bool);

}  // namespace rnncore
