// The recurrent product of every time step, with the weights packed once per call (internal).
//
//   C (m x n) (=|+=) A (m x k) * W^T,   W given row by row: W row c is output column c.
//
// Why not Eigen's GEMM here: it repacks both operands on every call, and the weights are the
// same for all T steps; at small batch the repacking is most of the work. PackedWeights stores W
// once in panels of one SIMD vector's width L: panel q holds, for each kk, the L values
// W[qL .. qL+L-1][kk] (zero past n). The micro-kernel keeps an MR x Panels block of C in vector
// registers (MR rows, Panels panels), reading one vector per panel and broadcasting one A value
// per row at each kk. Panels is chosen per MR so that the accumulators, one load per panel and
// the broadcast fit in the register file:
// with MR = 1 (batch 1) it still has 8 independent FMA chains, which a plain GEMV would not.
// The vector type comes from GCC's vector extensions, so the same source compiles to AVX-512,
// AVX2 or SSE2 code according to RNNCORE_SIMD.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "bf16_gemm.hpp"
#include "rnncore/buffer.hpp"
#include "rnncore/common.hpp"
#include "rnncore/runtime.hpp"
#include "team.hpp"
#include "thread_split.hpp"

namespace rnncore {
namespace detail {

#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;
inline constexpr int kVectorRegisters = 32;
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
inline constexpr int kVectorRegisters = 16;
#else
inline constexpr int kVectorBytes = 16;
inline constexpr int kVectorRegisters = 16;
#endif

template <class T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
};

template <class T>
inline constexpr int kLanes = kVectorBytes / int(sizeof(T));

// {x, x, ..., x}: compiles to a broadcast load. (`V{} + x` would not: -0.0 + 0.0 is not -0.0,
// so the compiler keeps a scalar add and a register broadcast, which competes with the FMAs
// for the same execution port.)
template <class V, class T, std::size_t... I>
inline V splat_impl(const T* x, std::index_sequence<I...>) {
  return V{((void)I, *x)...};
}
template <class T>
inline typename Vec<T>::type splat(const T* x) {
  return splat_impl<typename Vec<T>::type>(x, std::make_index_sequence<kLanes<T>>{});
}

// Panels per micro-kernel call for MR rows: MR*panels accumulators + one load per panel + 1
// broadcast.
constexpr int panels_for_rows(int mr) {
  const int panels = (kVectorRegisters - 1) / (mr + 1);
  return panels < 1 ? 1 : (panels > 8 ? 8 : panels);
}
inline constexpr int kMaxRows = kVectorRegisters >= 32 ? 8 : 6;

// Bytes of A (a row chunk times one k-block) the packed kernel works on at a time, so that block
// stays in L2 while every panel group of the weights passes over it: 256 KiB, an eighth of the
// 2 MB L2 per core of the machine in bench/PROFILE.md. Chosen with that margin, not tuned.
inline constexpr Index kRowChunkBytes = Index(1) << 18;

template <class T>
class PackedWeights {
 public:
  Index n = 0, k = 0, panels = 0;
  Buffer<T> data;
  // With the calling thread's precision (runtime.hpp) kBf16 and a bf16 kernel on this CPU, a
  // float pack is bf16 (bf16_gemm.hpp): `bf16` holds it, `data` is empty and panels counts
  // kBf16Lanes-wide panels. The pack, not the thread that multiplies, decides the arithmetic.
  bool is_bf16 = false;
  Bf16Panels bf16;

  // row(c) points at W row c (output column c); its kk-th value is row(c)[kk * k_stride].
  // With k_stride != 1, W is the transpose of a row-major matrix: row(c) must be row(0) + c.
  template <class RowFn>
  void pack(Index n_, Index k_, RowFn row, Index k_stride) {
    constexpr int L = kLanes<T>;
    n = n_, k = k_;
    is_bf16 = std::is_same_v<T, float> && current_precision() == Precision::kBf16 &&
              bf16_kernel() != Bf16Kernel::kNone;
    if constexpr (std::is_same_v<T, float>) {
      if (is_bf16) {
        panels = (n + kBf16Lanes - 1) / kBf16Lanes;
        data.clear();
        bf16.pack(n, k, row, k_stride, panels);
#if RNNCORE_HAVE_BF16_KERNEL
        bf16_scratch(kRowChunkBytes);
#endif
        return;
      }
      bf16.words.clear();
    }
    panels = (n + L - 1) / L;
    data.resize(panels * k * L);
    for (Index q = 0; q < panels; ++q) {
      T* dst = data.data() + q * k * L;
      const Index cols = std::min<Index>(L, n - q * L);
      if (k_stride == 1) {  // W rows contiguous: read each row once
        for (Index c = 0; c < cols; ++c) {
          const T* src = row(q * L + c);
          for (Index kk = 0; kk < k; ++kk) dst[kk * L + c] = src[kk];
        }
      } else {  // W is a transpose: its L columns of one panel are contiguous in each source row
        const T* src = row(q * L);
        for (Index kk = 0; kk < k; ++kk)
          for (Index c = 0; c < cols; ++c) dst[kk * L + c] = src[kk * k_stride + c];
      }
      for (Index c = cols; c < L; ++c)
        for (Index kk = 0; kk < k; ++kk) dst[kk * L + c] = T(0);
    }
  }
};

template <class T, int MR, int Panels>
inline void micro_kernel(Index k, const T* a, Index lda, const T* wp,
                         Index panel_stride, Index col0, Index n, T* c, Index ldc,
                         bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int L = kLanes<T>;
  V acc[MR][Panels];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) acc[r][p] = V{};
  Index kk = 0;
  if constexpr (MR == 1) {
    // One row: every accumulator is a chain of k dependent FMAs. A second set for odd kk
    // halves the chain length so the FMA latency is hidden.
    V odd[Panels];
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) odd[p] = V{};
    for (; kk + 1 < k; kk += 2) {
      const V a0 = splat(a + kk), a1 = splat(a + kk + 1);
#pragma GCC unroll 8
      for (int p = 0; p < Panels; ++p) {
        V w0, w1;
        std::memcpy(&w0, wp + p * panel_stride + kk * L, sizeof(V));
        std::memcpy(&w1, wp + p * panel_stride + (kk + 1) * L, sizeof(V));
        acc[0][p] += a0 * w0;
        odd[p] += a1 * w1;
      }
    }
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) acc[0][p] += odd[p];
  }
  for (; kk < k; ++kk) {
    V w[Panels];
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) std::memcpy(&w[p], wp + p * panel_stride + kk * L, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V ar = splat(a + r * lda + kk);
#pragma GCC unroll 8
      for (int p = 0; p < Panels; ++p) acc[r][p] += ar * w[p];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) {
      const Index col = col0 + p * L;
      T* dst = c + r * ldc + col;
      if (col + L <= n) {
        V out = acc[r][p];
        if (accumulate) {
          V old;
          std::memcpy(&old, dst, sizeof(V));
          out += old;
        }
        std::memcpy(dst, &out, sizeof(V));
      } else {
        T lanes[L];
        std::memcpy(lanes, &acc[r][p], sizeof(V));
        for (Index l = 0; l < n - col; ++l) dst[l] = accumulate ? dst[l] + lanes[l] : lanes[l];
      }
    }
  }
}

// wp: the packed weights advanced to the k-block (panel q of it at wp + q * w.k * L).
template <class T, int MR>
void row_block(Index k, const T* a, Index lda, const PackedWeights<T>& w,
               const T* wp, T* c, Index ldc, bool accumulate) {
  constexpr int Panels = panels_for_rows(MR);
  constexpr int L = kLanes<T>;
  const Index stride = w.k * L;
  Index q = 0;
  for (; q + Panels <= w.panels; q += Panels)
    micro_kernel<T, MR, Panels>(k, a, lda, wp + q * stride, stride, q * L, w.n, c, ldc,
                            accumulate);
  for (; q < w.panels; ++q)
    micro_kernel<T, MR, 1>(k, a, lda, wp + q * stride, stride, q * L, w.n, c, ldc,
                           accumulate);
}

template <class T, int MR = kMaxRows>
void row_tail(Index rows, Index k, const T* a, Index lda, const PackedWeights<T>& w,
              const T* wp, T* c, Index ldc, bool accumulate) {
  if constexpr (MR >= 1) {
    if (rows == MR) return row_block<T, MR>(k, a, lda, w, wp, c, ldc, accumulate);
    return row_tail<T, MR - 1>(rows, k, a, lda, w, wp, c, ldc, accumulate);
  }
}


// C (m x n) (=|+=) A (m x k) * W^T with W packed (n = w.n, k = w.k), A row-major (lda).
// Blocking: k in blocks of kKBlock (a k-block of a panel group then fits in L1); rows in chunks
// of kRowChunkBytes of A, which stays in L2; within a chunk, full blocks of kMaxRows rows go
// panel group by panel group, so each group of weights is loaded once per chunk and reused by
// every row block (at H = 1024 a thread's weights are 8 MB: streaming them once per row block
// would be 16 passes over L3). The remaining rows (all of them at small batch) go row block by
// row block with the widest panel count their register budget allows.
template <class T>
void packed_gemm(Index m, const T* a, Index lda, const PackedWeights<T>& w, T* c,
                 Index ldc, bool accumulate) {
  if (m <= 0 || w.n <= 0) return;
  if (w.k <= 0) {
    if (!accumulate)
      for (Index r = 0; r < m; ++r) std::fill(c + r * ldc, c + r * ldc + w.n, T(0));
    return;
  }
#if RNNCORE_HAVE_BF16_KERNEL
  if constexpr (std::is_same_v<T, float>) {
    if (w.is_bf16)
      return bf16_packed_gemm(m, a, lda, w.bf16, w.n, w.k, w.panels, c, ldc, accumulate,
                              kRowChunkBytes);
  }
#endif
  constexpr int MR = kMaxRows, Panels = panels_for_rows(MR), L = kLanes<T>;
  constexpr Index kKBlock = 256;
  const Index full = m / MR * MR, stride = w.k * L;
  for (Index k0 = 0; k0 < w.k; k0 += kKBlock) {
    const Index kc = std::min(kKBlock, w.k - k0);
    const bool acc = accumulate || k0 > 0;
    const T* ak0 = a + k0;
    const T* wp = w.data.data() + k0 * L;
    const Index chunk = std::max<Index>(MR, kRowChunkBytes / Index(sizeof(T) * kc) / MR * MR);
    for (Index c0 = 0; c0 < full; c0 += chunk) {
      const Index c1 = std::min(full, c0 + chunk);
      Index q = 0;
      for (; q + Panels <= w.panels; q += Panels)
        for (Index r0 = c0; r0 < c1; r0 += MR)
          micro_kernel<T, MR, Panels>(kc, ak0 + r0 * lda, lda, wp + q * stride, stride, q * L,
                                  w.n, c + r0 * ldc, ldc, acc);
      for (; q < w.panels; ++q)
        for (Index r0 = c0; r0 < c1; r0 += MR)
          micro_kernel<T, MR, 1>(kc, ak0 + r0 * lda, lda, wp + q * stride, stride, q * L,
                                 w.n, c + r0 * ldc, ldc, acc);
    }
    if (full < m)
      row_tail<T>(m - full, kc, ak0 + full * lda, lda, w, wp, c + full * ldc, ldc, acc);
  }
}

// Large one-off products (the hoisted ones): W packed once, C's rows split across threads,
// each block of rows computed by one thread, so results do not depend on the thread count's
// timing (only on the count itself).
template <class T>
void parallel_packed_gemm(Index m, const T* a, Index lda, const PackedWeights<T>& w,
                          T* c, Index ldc, bool accumulate, int max_threads) {
  if (m <= 0 || w.n <= 0) return;
  const int threads = gemm_threads(m, w.n, w.k, max_threads);
  parallel_parts(threads, [&](int p) {
    const Index lo = split_point(m, p, threads, kThreadSplitAlign);
    const Index hi = split_point(m, p + 1, threads, kThreadSplitAlign);
    if (hi > lo) packed_gemm(hi - lo, a + lo * lda, lda, w, c + lo * ldc, ldc, accumulate);
  });
}

}  // namespace detail
}  // namespace rnncore

namespace rnncore {
namespace detail {

// Rows of the N dimension per chunk of a weight-gradient product (below): the transposed chunk
// of dG is cols x kWeightGradChunk values (8 MB at cols = 1024 for floats), and C is read and
// written once per chunk.
inline constexpr Index kWeightGradChunk = 2048;

// C (cols x K) += dG^T X for dG (N x cols, leading dimension ldg) and X (N x K, ldx): the
// weight gradients dW = sum over rows of dG_row^T x_row, through the packed kernel. Eigen's GEMM
// ran these at about half the FMA peak (bench/PROFILE.md, issue 11); the packed kernel needs
// both operands with k = N contiguous, so per chunk of N rows X is packed as the kernel's weights
// (its transpose is a strided read the packing supports) and dG's chunk is transposed into a
// buffer, then C's rows are split across threads as in parallel_packed_gemm. Always float32 (or
// float64) arithmetic: gradients are never computed in bf16, whatever the calling precision.
template <class T>
void weight_gradient_gemm(Index cols, Index K, Index N, const T* dg, Index ldg, const T* x,
                          Index ldx, T* c, Index ldc, int max_threads) {
  if (cols <= 0 || K <= 0 || N <= 0) return;
  const PrecisionScope full_precision(Precision::kFloat32);
  const Index chunk_rows = std::min(N, kWeightGradChunk);
  // Rows of the transposed chunk padded by a cache line: rows a multiple of 4 KB apart would
  // share L1 sets in the kernel's row tiles.
  const Index ld_t = chunk_rows + 64 / Index(sizeof(T));
  Buffer<T> dg_t(cols * ld_t);
  PackedWeights<T> xw;
  const int threads = gemm_threads(cols, K, N, max_threads);
  for (Index n0 = 0; n0 < N; n0 += chunk_rows) {
    const Index nc = std::min(chunk_rows, N - n0);
    // X rows [n0, n0 + nc) as W (K x nc): W[col][kk] = X[n0 + kk][col].
    xw.pack(K, nc, [&](Index col) { return x + n0 * ldx + col; }, ldx);
    // dG rows [n0, n0 + nc) transposed: dg_t[r][kk] = dG[n0 + kk][r], in 16 x 16 tiles; the
    // columns are split across the threads.
    parallel_parts(threads, [&](int p) {
      const Index lo = split_point(cols, p, threads, kThreadSplitAlign);
      const Index hi = split_point(cols, p + 1, threads, kThreadSplitAlign);
      constexpr Index kTile = 16;
      for (Index k0 = 0; k0 < nc; k0 += kTile)
        for (Index r0 = lo; r0 < hi; r0 += kTile) {
          const Index k1 = std::min(nc, k0 + kTile), r1 = std::min(hi, r0 + kTile);
          for (Index kk = k0; kk < k1; ++kk) {
            const T* src = dg + (n0 + kk) * ldg;
            for (Index r = r0; r < r1; ++r) dg_t[r * ld_t + kk] = src[r];
          }
        }
      // then this thread's rows of C
      if (hi > lo) packed_gemm(hi - lo, dg_t.data() + lo * ld_t, ld_t, xw, c + lo * ldc, ldc, true);
    });
  }
}

}  // namespace detail
}  // namespace rnncore
