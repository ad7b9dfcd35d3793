// The bf16 path of packed_gemm (internal): C (m x n) (=|+=) A (m x k) * W^T with W packed as
// bfloat16 and A rounded to bfloat16 a k-block at a time, products summed in float32.
//
// Layout (Bf16Panels): the weights in panels of kBf16Lanes = 16 output columns, as the float32
// PackedWeights, but with the values of each column paired along k: for pair p of panel q, one
// 64-byte row holds, for each of the 16 columns c, the 32-bit word (W[qL+c][2p] in the low half,
// W[qL+c][2p+1] in the high half), zero past n and past k. That is the operand VDPBF16PS wants
// (lane c: acc += a_lo * w_lo + a_hi * w_hi, the A pair broadcast to all lanes), and also the
// VNNI layout of an AMX B tile (16 pairs of k by 16 columns is one 64-byte-row tile), so an AMX
// kernel could read the same packs; none is written here (no machine to run it on yet).
//
// A is rounded to bf16 (round to nearest even, VCVTNE2PS2BF16) into a per-thread scratch of
// 32-bit pairs, one row chunk of one k-block at a time, so every element of A is converted once
// per call whatever n is; the micro-kernel then broadcasts one pair per row per k-pair.
//
// The kernels are compiled for AVX512F+BW+BF16 through target attributes, whatever the build's
// SIMD level, and packed_gemm only calls them when bf16_kernel() (runtime.hpp) found the CPU able
// to run them; elsewhere pack() keeps float32 and this file's code never runs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "rnncore/buffer.hpp"
#include "rnncore/common.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define RNNCORE_HAVE_BF16_KERNEL 1
#define RNNCORE_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
#else
#define RNNCORE_HAVE_BF16_KERNEL 0
#endif

namespace rnncore {
namespace detail {

inline constexpr int kBf16Lanes = 16;  // float32 accumulators per 512-bit vector

// float -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN). Scalar: the weights
// are rounded once per pack.
inline std::uint16_t to_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

// The bf16 pack of W (n x k): panels of kBf16Lanes columns, k_pairs = ceil(k / 2) words each.
struct Bf16Panels {
  Index k_pairs = 0;
  Buffer<std::uint32_t> words;  // panel q at words + q * k_pairs * kBf16Lanes

  // row(c), k_stride: as PackedWeights::pack.
  template <class RowFn>
  void pack(Index n, Index k, RowFn row, Index k_stride, Index panels) {
    constexpr int L = kBf16Lanes;
    k_pairs = (k + 1) / 2;
    words.resize(panels * k_pairs * L);
    const auto value = [&](const float* src, Index kk, Index c) -> std::uint32_t {
      return kk < k ? to_bf16(src[kk * k_stride + c]) : 0u;
    };
    for (Index q = 0; q < panels; ++q) {
      std::uint32_t* dst = words.data() + q * k_pairs * L;
      const Index cols = std::min<Index>(L, n - q * L);
      if (k_stride == 1) {
        for (Index c = 0; c < cols; ++c) {
          const float* src = row(q * L + c);
          for (Index p = 0; p < k_pairs; ++p)
            dst[p * L + c] = value(src, 2 * p, 0) | value(src, 2 * p + 1, 0) << 16;
        }
      } else {
        const float* src = row(q * L);
        for (Index p = 0; p < k_pairs; ++p)
          for (Index c = 0; c < cols; ++c)
            dst[p * L + c] = value(src, 2 * p, c) | value(src, 2 * p + 1, c) << 16;
      }
      for (Index c = cols; c < L; ++c)
        for (Index p = 0; p < k_pairs; ++p) dst[p * L + c] = 0u;
    }
  }
};

#if RNNCORE_HAVE_BF16_KERNEL

// Register budget as the float32 kernel's (packed_gemm.hpp): MR rows x Panels accumulators plus
// one weight vector per panel; the A pair is a broadcast memory operand of VDPBF16PS.
inline constexpr int kBf16MaxRows = 8;
constexpr int bf16_panels_for_rows(int mr) {
  const int panels = 31 / (mr + 1);
  return panels < 1 ? 1 : (panels > 8 ? 8 : panels);
}

RNNCORE_BF16_TARGET inline __m512bh bf16_words(__m512i v) { return (__m512bh)v; }

inline constexpr Index kBf16KBlock = 512;  // k values per block of bf16_packed_gemm (even)

// The calling thread's buffer of rounded A rows: grown to the most any product can use (a row
// chunk of about row_chunk_bytes, or one block of rows when a k-block's rows are wider) and kept
// for the thread's later calls (the recurrent product calls the kernel once per time step).
// PackedWeights::pack reserves it, so the threads of a time loop allocate while they pack, where
// the drivers catch bad_alloc, never inside the loop.
inline Buffer<std::uint32_t>& bf16_scratch(Index row_chunk_bytes) {
  thread_local Buffer<std::uint32_t> scratch;
  const std::size_t words = std::size_t(row_chunk_bytes) / sizeof(std::uint32_t) +
                            std::size_t(kBf16MaxRows * kBf16KBlock / 2);
  if (scratch.size() < words) scratch.resize(words);
  return scratch;
}

// Rounds rows x kc of A (lda) to bf16 pairs, ld_pairs words per row (zero-padded odd kc).
RNNCORE_BF16_TARGET inline void bf16_round_rows(Index rows, Index kc, const float* a, Index lda,
                                                std::uint32_t* dst, Index ld_pairs) {
  for (Index r = 0; r < rows; ++r) {
    const float* src = a + r * lda;
    std::uint32_t* out = dst + r * ld_pairs;
    for (Index kk = 0; kk < kc; kk += 2 * kBf16Lanes) {
      const Index left = kc - kk;
      const Index lo_n = std::min<Index>(kBf16Lanes, left);
      const Index hi_n = std::max<Index>(0, std::min<Index>(kBf16Lanes, left - kBf16Lanes));
      const __mmask16 lo_mask = __mmask16((1u << lo_n) - 1u);
      const __mmask16 hi_mask = __mmask16((1u << hi_n) - 1u);
      const __m512 lo = _mm512_maskz_loadu_ps(lo_mask, src + kk);
      const __m512 hi = _mm512_maskz_loadu_ps(hi_mask, src + kk + kBf16Lanes);
      const __m512i pairs = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      const Index words = std::min<Index>(kBf16Lanes, (left + 1) / 2);
      _mm512_mask_storeu_epi32(out + kk / 2, __mmask16((1u << words) - 1u), pairs);
    }
  }
}

// MR rows x Panels panels of C from kp k-pairs: a (MR rows of pairs, lda words apart), wp (panel
// p at wp + p * panel_stride words).
template <int MR, int Panels>
RNNCORE_BF16_TARGET inline void bf16_micro_kernel(Index kp, const std::uint32_t* a, Index lda,
                                                  const std::uint32_t* wp, Index panel_stride,
                                                  Index col0, Index n, float* c, Index ldc,
                                                  bool accumulate) {
  constexpr int L = kBf16Lanes;
  __m512 acc[MR][Panels];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) acc[r][p] = _mm512_setzero_ps();
  Index kk = 0;
  if constexpr (MR == 1) {
    // One row: a second accumulator set for odd pairs halves each dependency chain (as the
    // float32 kernel does).
    __m512 odd[Panels];
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) odd[p] = _mm512_setzero_ps();
    for (; kk + 1 < kp; kk += 2) {
      const __m512bh a0 = bf16_words(_mm512_set1_epi32(int(a[kk])));
      const __m512bh a1 = bf16_words(_mm512_set1_epi32(int(a[kk + 1])));
#pragma GCC unroll 8
      for (int p = 0; p < Panels; ++p) {
        const __m512bh w0 = bf16_words(_mm512_loadu_si512(wp + p * panel_stride + kk * L));
        const __m512bh w1 = bf16_words(_mm512_loadu_si512(wp + p * panel_stride + (kk + 1) * L));
        acc[0][p] = _mm512_dpbf16_ps(acc[0][p], a0, w0);
        odd[p] = _mm512_dpbf16_ps(odd[p], a1, w1);
      }
    }
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) acc[0][p] = _mm512_add_ps(acc[0][p], odd[p]);
  }
  for (; kk < kp; ++kk) {
    __m512bh w[Panels];
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p)
      w[p] = bf16_words(_mm512_loadu_si512(wp + p * panel_stride + kk * L));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512bh ar = bf16_words(_mm512_set1_epi32(int(a[r * lda + kk])));
#pragma GCC unroll 8
      for (int p = 0; p < Panels; ++p) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], ar, w[p]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int p = 0; p < Panels; ++p) {
      const Index col = col0 + p * L;
      float* dst = c + r * ldc + col;
      const __mmask16 mask =
          col + L <= n ? __mmask16(0xffff) : __mmask16((1u << (n - col)) - 1u);
      __m512 out = acc[r][p];
      if (accumulate) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, dst));
      _mm512_mask_storeu_ps(dst, mask, out);
    }
  }
}

// MR rows (fewer than a full block) across every panel, as wide as their register budget allows.
template <int MR>
RNNCORE_BF16_TARGET inline void bf16_row_block(Index kp, const std::uint32_t* a, Index lda,
                                               const std::uint32_t* wp, Index panels,
                                               Index panel_stride, Index n, float* c, Index ldc,
                                               bool accumulate) {
  constexpr int Panels = bf16_panels_for_rows(MR);
  Index q = 0;
  for (; q + Panels <= panels; q += Panels)
    bf16_micro_kernel<MR, Panels>(kp, a, lda, wp + q * panel_stride, panel_stride,
                                  q * kBf16Lanes, n, c, ldc, accumulate);
  if constexpr (Panels > 2) {
    for (; q + 2 <= panels; q += 2)
      bf16_micro_kernel<MR, 2>(kp, a, lda, wp + q * panel_stride, panel_stride, q * kBf16Lanes,
                               n, c, ldc, accumulate);
  }
  for (; q < panels; ++q)
    bf16_micro_kernel<MR, 1>(kp, a, lda, wp + q * panel_stride, panel_stride, q * kBf16Lanes, n,
                             c, ldc, accumulate);
}

template <int MR = kBf16MaxRows - 1>
RNNCORE_BF16_TARGET inline void bf16_row_tail(Index rows, Index kp, const std::uint32_t* a,
                                              Index lda, const std::uint32_t* wp, Index panels,
                                              Index panel_stride, Index n, float* c, Index ldc,
                                              bool accumulate) {
  if constexpr (MR >= 1) {
    if (rows == MR)
      return bf16_row_block<MR>(kp, a, lda, wp, panels, panel_stride, n, c, ldc, accumulate);
    return bf16_row_tail<MR - 1>(rows, kp, a, lda, wp, panels, panel_stride, n, c, ldc,
                                 accumulate);
  }
}

// C (m x n) (=|+=) A (m x k) * W^T, W in `w` (panels panels of n columns, k values each).
// Blocking as the float32 packed_gemm: k-blocks of kKBlock values (twice its block: the same bytes
// of weights per block; even, so pairs never straddle two blocks), row chunks of about row_chunk_bytes of rounded A, panel group by panel group over
// a chunk's full row blocks, the leftover rows row block by row block.
RNNCORE_BF16_TARGET inline void bf16_packed_gemm(Index m, const float* a, Index lda,
                                                 const Bf16Panels& w, Index n, Index k,
                                                 Index panels, float* c, Index ldc,
                                                 bool accumulate, Index row_chunk_bytes) {
  constexpr int MR = kBf16MaxRows, Panels = bf16_panels_for_rows(MR), L = kBf16Lanes;
  constexpr Index kKBlock = kBf16KBlock;
  Buffer<std::uint32_t>& scratch = bf16_scratch(row_chunk_bytes);
  const Index stride = w.k_pairs * L;
  for (Index k0 = 0; k0 < k; k0 += kKBlock) {
    const Index kc = std::min(kKBlock, k - k0), kp = (kc + 1) / 2;
    const bool acc = accumulate || k0 > 0;
    const std::uint32_t* wp = w.words.data() + (k0 / 2) * L;
    const Index chunk =
        std::max<Index>(MR, row_chunk_bytes / Index(sizeof(std::uint32_t) * kp) / MR * MR);
    for (Index c0 = 0; c0 < m; c0 += chunk) {
      const Index rows = std::min(chunk, m - c0), full = rows / MR * MR;
      bf16_round_rows(rows, kc, a + c0 * lda + k0, lda, scratch.data(), kp);
      const std::uint32_t* ar = scratch.data();
      float* cr = c + c0 * ldc;
      Index q = 0;
      for (; q + Panels <= panels; q += Panels)
        for (Index r0 = 0; r0 < full; r0 += MR)
          bf16_micro_kernel<MR, Panels>(kp, ar + r0 * kp, kp, wp + q * stride, stride, q * L, n,
                                        cr + r0 * ldc, ldc, acc);
      // The panels left over from the groups of Panels: two at a time, then one (a single
      // panel pays MR broadcasts per MR products).
      for (; q + 2 <= panels; q += 2)
        for (Index r0 = 0; r0 < full; r0 += MR)
          bf16_micro_kernel<MR, 2>(kp, ar + r0 * kp, kp, wp + q * stride, stride, q * L, n,
                                   cr + r0 * ldc, ldc, acc);
      for (; q < panels; ++q)
        for (Index r0 = 0; r0 < full; r0 += MR)
          bf16_micro_kernel<MR, 1>(kp, ar + r0 * kp, kp, wp + q * stride, stride, q * L, n,
                                   cr + r0 * ldc, ldc, acc);
      if (full < rows)
        bf16_row_tail(rows - full, kp, ar + full * kp, kp, wp, panels, stride, n,
                      cr + full * ldc, ldc, acc);
    }
  }
}

#endif  // RNNCORE_HAVE_BF16_KERNEL

}  // namespace detail
}  // namespace rnncore
