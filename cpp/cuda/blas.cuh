// cuBLAS GEMMs on row-major arrays (internal), as the CUDA direction driver calls them: the
// row-major wrapper of sgemm/dgemm and the bias sums as a GEMM with a vector of ones. cuBLAS is
// loaded at run time (cublas.hpp).
#pragma once

#include <algorithm>

#include "context.cuh"
#include "kernels.cuh"

namespace rnncore {
namespace cuda {
namespace detail {

// C (M x N) = alpha * op(A) op(B) + beta * C, all row-major with leading dimensions lda, ldb, ldc.
// cuBLAS is column-major: a row-major X is the column-major X^T, so this computes
// C^T = op(B)^T op(A)^T.
inline int gemm_call(blas::Handle h, int ta, int tb, int m, int n, int k, const float* alpha,
                     const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
                     int ldc) {
  return blas::api().sgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline int gemm_call(blas::Handle h, int ta, int tb, int m, int n, int k, const double* alpha,
                     const double* a, int lda, const double* b, int ldb, const double* beta,
                     double* c, int ldc) {
  return blas::api().dgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <class T>
void gemm(blas::Handle h, bool trans_a, bool trans_b, Index M, Index N, Index K, T alpha,
          const T* A, Index lda, const T* B, Index ldb, T beta, T* C, Index ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C; cuBLAS does this too, but not all versions accept k = 0
    if (beta == T(1)) return;
  }
  check_blas(gemm_call(h, trans_b ? blas::kOpT : blas::kOpN, trans_a ? blas::kOpT : blas::kOpN,
                       int(N), int(M), int(std::max<Index>(K, 0)), &alpha, B, int(ldb), A,
                       int(lda), &beta, C, int(ldc)),
             "cublas gemm");
}

// dst (cols) += column sums of src (rows x cols, ld), as a GEMM with a vector of ones.
template <class T>
void add_column_sums(Context::Impl& ctx, Index rows, Index cols, const T* src, Index ld, T* dst) {
  if (!dst || rows <= 0 || cols <= 0) return;
  T* ones = ctx.ones.get<T>(rows);
  fill(rows, T(1), ones, ctx.stream);
  gemm<T>(ctx.handle, true, false, cols, 1, rows, T(1), src, ld, ones, 1, T(1), dst, 1);
}

}  // namespace detail
}  // namespace cuda
}  // namespace rnncore
