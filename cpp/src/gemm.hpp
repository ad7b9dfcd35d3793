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

// C (m x n) (+)= A^T * B, A stored (k x m), B (k x n).
template <class T>
void gemm_tn(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c,
             Index ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  auto C = view(c, m, n, ldc);
  if (k <= 0) {
    if (!accumulate) C.setZero();
    return;
  }
  assign_or_add(C, view(a, k, m, lda).transpose() * view(b, k, n, ldb), accumulate);
}

// The weight gradients dW = dG^T X (one-off products with a transposed operand, which Eigen
// packs well): C's rows or columns, whichever are more, split across threads; each part is
// computed by exactly one thread in a fixed order, so results do not depend on scheduling.
template <class T>
void parallel_gemm_tn(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb,
                      T* c, Index ldc, bool accumulate, int max_threads) {
  const int threads = gemm_threads(m, n, k, max_threads);
  const bool split_rows = m >= n;
  parallel_parts(threads, [&](int p) {
    const Index len = split_rows ? m : n;
    const Index lo = split_point(len, p, threads, kThreadSplitAlign);
    const Index hi = split_point(len, p + 1, threads, kThreadSplitAlign);
    if (hi <= lo) return;
    if (split_rows)
      gemm_tn(hi - lo, n, k, a + lo, lda, b, ldb, c + lo * ldc, ldc, accumulate);
    else
      gemm_tn(m, hi - lo, k, a, lda, b + lo, ldb, c + lo, ldc, accumulate);
  });
}

}  // namespace detail
}  // namespace rnncore
