// How the one-off parallel loops of the drivers (internal) split their work across threads: the
// hoisted GEMMs of gemm.hpp and packed_gemm.hpp and the row copies and sums of the sequence
// driver. Each part is computed by exactly one thread in a fixed order, so results depend on the
// thread count only, never on scheduling.
#pragma once

#include <algorithm>

#include "rnncore/common.hpp"

namespace rnncore {
namespace detail {

// Fewest flops a thread of a one-off GEMM is given: 2 MFLOP take one core about 8 us at its
// measured FMA peak (246 GFLOP/s, bench/PROFILE.md), several times what waking a thread costs
// (about a microsecond). A round number, not tuned.
inline constexpr double kMinFlopsPerThread = 2e6;

// Fewest values a thread is given when copying or summing rows (the training input gather, the
// bias-gradient sums): 64 Ki values (256 KiB of floats) take a core tens of microseconds to
// stream, well above the cost of waking it. A round number, not tuned.
inline constexpr Index kMinValuesPerThread = 65536;

// Thread boundaries of the one-off products and sums fall on multiples of 16: splitting columns,
// one 64-byte cache line of floats, so no two threads write the same line; splitting rows, two
// full 8-row tiles of the AVX-512 packed kernel. A choice, not measured against other values.
inline constexpr Index kThreadSplitAlign = 16;

// Splits [0, n) into `parts` contiguous ranges whose inner bounds are multiples of `align`;
// part p is [split_point(n, p, ...), split_point(n, p + 1, ...)).
inline Index split_point(Index n, int part, int parts, Index align) {
  if (part >= parts) return n;
  const Index p = (n * part / parts) / align * align;
  return std::min(p, n);
}

// Threads worth using for a GEMM of 2*m*n*k flops.
inline int gemm_threads(Index m, Index n, Index k, int max_threads) {
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int t = int(std::min<double>(max_threads, flops / kMinFlopsPerThread));
  return std::max(1, t);
}

}  // namespace detail
}  // namespace rnncore
