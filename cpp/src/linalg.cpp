#include "rnncore/linalg.hpp"

#include "gemm.hpp"
#include "rnncore/runtime.hpp"
#include "team.hpp"
#include "thread_split.hpp"

namespace rnncore {
namespace detail {
namespace {

// One part of C: rows [r0, r1) and columns [c0, c1).
template <class T>
void matmul_part(Index r0, Index r1, Index c0, Index c1, Index k, const T* a, Index lda,
                 bool trans_a, const T* b, Index ldb, bool trans_b, T* c, Index ldc,
                 bool accumulate) {
  const Index m = r1 - r0, n = c1 - c0;
  auto C = view(c + r0 * ldc + c0, m, n, ldc);
  if (k <= 0) {
    if (!accumulate) C.setZero();
    return;
  }
  // op(A) rows r0..r1: A is m x k (rows r0..) or, transposed, k x m (columns r0..).
  const T* ap = trans_a ? a + r0 : a + r0 * lda;
  const T* bp = trans_b ? b + c0 * ldb : b + c0;
  if (!trans_a && !trans_b)
    assign_or_add(C, view(ap, m, k, lda) * view(bp, k, n, ldb), accumulate);
  else if (!trans_a && trans_b)
    assign_or_add(C, view(ap, m, k, lda) * view(bp, n, k, ldb).transpose(), accumulate);
  else if (trans_a && !trans_b)
    assign_or_add(C, view(ap, k, m, lda).transpose() * view(bp, k, n, ldb), accumulate);
  else
    assign_or_add(C, view(ap, k, m, lda).transpose() * view(bp, n, k, ldb).transpose(),
                  accumulate);
}

}  // namespace
}  // namespace detail

template <class T>
void matmul(Index m, Index n, Index k, const T* a, Index lda, bool trans_a, const T* b, Index ldb,
            bool trans_b, T* c, Index ldc, bool accumulate) {
  using namespace detail;
  if (m <= 0 || n <= 0) return;
  const int threads = gemm_threads(m, n, k, get_num_threads());
  const bool split_rows = m >= n;
  parallel_parts(threads, [&](int p) {
    const Index len = split_rows ? m : n;
    const Index lo = split_point(len, p, threads, kThreadSplitAlign);
    const Index hi = split_point(len, p + 1, threads, kThreadSplitAlign);
    if (hi <= lo) return;
    if (split_rows)
      matmul_part(lo, hi, 0, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate);
    else
      matmul_part(0, m, lo, hi, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate);
  });
}

template void matmul<float>(Index, Index, Index, const float*, Index, bool, const float*, Index,
                            bool, float*, Index, bool);
template void matmul<double>(Index, Index, Index, const double*, Index, bool, const double*,
                             Index, bool, double*, Index, bool);

}  // namespace rnncore
