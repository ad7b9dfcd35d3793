// Dense matrix products on rnncore's own threads, for the layers around the recurrent core (the
// Python Linear layer, read-outs, attention): using the same OpenMP threads as the recurrent
// kernels keeps a training step on one thread pool, instead of numpy's BLAS threads and rnncore's
// competing for the same cores (measured: a 2-layer LSTM language-model step took 2x as long).
#pragma once

#include "rnncore/common.hpp"

namespace rnncore {

// C (m x n) = op(A) op(B), or C += op(A) op(B) with `accumulate`. Row-major with leading
// dimensions (elements); op(X) = X^T when trans_x: op(A) is m x k, op(B) is k x n. Rows or
// columns of C (whichever are more) are split across get_num_threads() threads in a fixed way,
// so results depend on the thread count only.
template <class T>
void matmul(Index m, Index n, Index k, const T* a, Index lda, bool trans_a, const T* b, Index ldb,
            bool trans_b, T* c, Index ldc, bool accumulate);

// The machine's fused multiply-add throughput in GFLOP/s (2 flops per FMA lane) on `threads`
// threads (0: get_num_threads()), measured now: independent FMA chains in vector registers, at
// the widest vector width the library was built for, for about `seconds`. The benchmarks state
// each result as a share of it, measured in the same run (the machine's speed drifts).
double fma_peak_gflops(int threads = 0, double seconds = 0.2);

}  // namespace rnncore
