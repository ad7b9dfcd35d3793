// Eigen GEMMs of the drivers (internal): the hoisted weight-gradient products. Row-major,
// leading dimensions in elements. Eigen does the arithmetic; rnncore does the threading (Eigen's
// own OpenMP is disabled with EIGEN_DONT_PARALLELIZE) so that the thread count and the split,
// hence the result bits, are under our control. The per-step and input products use the packed
// kernel of packed_gemm.hpp instead.
#pragma once

#include <algorithm>

#include <Eigen/Core>
#include <omp.h>

#include "rnncore/common.hpp"
#include "team.hpp"
#include "thread_split.hpp"

namespace rnncore {
namespace detail {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstView = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using View = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
ConstView<T> view(const T* p, Index rows, Index cols, Index ld) {
  return ConstView<T>(p, rows, cols, Eigen::OuterStride<>(ld));
}
template <class T>
View<T> view(T* p, Index rows, Index cols, Index ld) {
  return View<T>(p, rows, cols, Eigen::OuterStride<>(ld));
}

template <class Dst, class Expr>
void assign_or_add(Dst&& c, const Expr& e, bool accumulate) {
  if (accumulate) c.noalias() += e;
  else c.noalias() = e;
}

// Rows [r0, r1) and columns [c0, c1) of C (+)= op(A) op(B), with op(X) = X^T when trans_x:
// op(A) is m x k (A stored m x k, or k x m when transposed), op(B) k x n.
template <class T>
void gemm_part(Index r0, Index r1, Index c0, Index c1, Index k, const T* a, Index lda,
               bool trans_a, const T* b, Index ldb, bool trans_b, T* c, Index ldc,
               bool accumulate) {
  const Index m = r1 - r0, n = c1 - c0;
  auto C = view(c + r0 * ldc + c0, m, n, ldc);
  if (k <= 0) {
    if (!accumulate) C.setZero();
    return;
  }
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

// C (m x n) (+)= op(A) op(B), one-off products (the weight gradients dW = dG^T X, which Eigen
// packs well with the transposed operand, and rnncore::matmul): C's rows or columns, whichever
// are more, split across threads; each part is computed by exactly one thread in a fixed order,
// so results do not depend on scheduling.
template <class T>
void parallel_gemm(Index m, Index n, Index k, const T* a, Index lda, bool trans_a, const T* b,
                   Index ldb, bool trans_b, T* c, Index ldc, bool accumulate, int max_threads) {
  if (m <= 0 || n <= 0) return;
  const int threads = gemm_threads(m, n, k, max_threads);
  const bool split_rows = m >= n;
  parallel_parts(threads, [&](int p) {
    const Index len = split_rows ? m : n;
    const Index lo = split_point(len, p, threads, kThreadSplitAlign);
    const Index hi = split_point(len, p + 1, threads, kThreadSplitAlign);
    if (hi <= lo) return;
    if (split_rows)
      gemm_part(lo, hi, 0, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate);
    else
      gemm_part(0, m, lo, hi, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate);
  });
}

}  // namespace detail
}  // namespace rnncore
