// Activation functions: the only place in rnncore that evaluates exp or tanh.
//
// Every function is branch-free element-wise arithmetic so that a loop over hidden units
// vectorises (the CPU kernels wrap it in `#pragma omp simd`), and is marked host+device so the
// CUDA kernels evaluate the very same math. Derivatives are expressed through the stored output
// (s*(1-s), 1-t^2), which is what BPTT keeps.
//
// Stability: no input, finite or infinite, produces NaN; a NaN input gives a NaN output (so a bad
// sample stays visible instead of being silently clamped).
//
// float uses a polynomial exp with range reduction (max. relative error ~2e-7 in [-87, 88]);
// double uses the C library, which is what the float64 gradient checks want. The std:: calls
// (exp, tanh, fabs, copysign) are fine in device code: CUDA's math headers declare these
// float/double overloads __host__ __device__ (cpp/cuda/compile_check.cu keeps that checked).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "rnncore/common.hpp"

namespace rnncore {
namespace act {

// The comparisons keep a NaN: `x < lo` and `x > hi` are both false for NaN.
template <class T>
RNNCORE_HD T clamp_keep_nan(T x, T lo, T hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

RNNCORE_HD float exp_impl(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2/2; degree-6 Taylor for exp(r).
  x = clamp_keep_nan(x, -87.0f, 88.0f);
  // Round to nearest by adding and subtracting 1.5 * 2^23 (exact for |v| < 2^22): plain
  // arithmetic, so the loop vectorises; std::floor would be a libm call per element here
  // because GCC only inlines it under -fno-trapping-math.
  const float v = x * 1.44269504088896341f;
  const float n = (v + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split hi/lo
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // n is in [-126, 127] after the clamp (or NaN, in which case p is NaN already).
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  // __CUDA_ARCH__, not __CUDACC__: nvcc defines __CUDACC__ in its host pass too, where the
  // device intrinsic does not exist.
#if defined(__CUDA_ARCH__)
  scale = __int_as_float(e);
#else
  std::memcpy(&scale, &e, sizeof scale);
#endif
  return p * scale;
}

RNNCORE_HD double exp_impl(double x) { return std::exp(x); }

template <class T>
RNNCORE_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_impl(-x));
}

RNNCORE_HD float tanh(float x) {
  // Small |x|: odd Taylor series (the exp form below cancels there). Otherwise
  // tanh|x| = 1 - 2 / (exp(2|x|) + 1), which saturates to exactly 1 without overflow.
  const float a = std::fabs(x);
  const float x2 = x * x;
  float small = 2.1869488e-2f;  // 62/2835
  small = small * x2 - 5.3968254e-2f;  // 17/315
  small = small * x2 + 1.3333334e-1f;  // 2/15
  small = small * x2 - 3.3333334e-1f;
  small = (small * x2) * x + x;
  const float big = std::copysign(1.0f - 2.0f / (exp_impl(2.0f * a) + 1.0f), x);
  return a < 0.3f ? small : big;
}

RNNCORE_HD double tanh(double x) { return std::tanh(x); }

// `x < 0 ? 0 : x` keeps a NaN (unlike max(x, 0) written the other way round).
template <class T>
RNNCORE_HD T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// Derivatives from the activation's output y.
template <class T>
RNNCORE_HD T dsigmoid_from_output(T s) {
  return s * (T(1) - s);
}
template <class T>
RNNCORE_HD T dtanh_from_output(T t) {
  return T(1) - t * t;
}
template <class T>
RNNCORE_HD T drelu_from_output(T y) {
  return y > T(0) ? T(1) : T(0);
}

}  // namespace act
}  // namespace rnncore
