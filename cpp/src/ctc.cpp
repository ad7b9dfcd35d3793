// CTC loss and gradient (see ctc.hpp for the recursions). One sample per OpenMP task: the
// recursions of a sample are sequential in t, and samples are independent.
#include "rnncore/ctc.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "rnncore/activations.hpp"
#include "rnncore/runtime.hpp"

namespace rnncore {

namespace {

std::string at(const char* name, Index b) {
  return std::string(name) + "[" + std::to_string(b) + "]";
}

// Natural log of a positive normal float, branch-free so that loops over states vectorise (the
// C library's logf is a call per element). x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
// log(1 + f) with f = m - 1 by Cephes' minimax polynomial; max. relative error ~1e-7. Its
// arguments are sums of exponentials shifted by their max, so they lie in [1, L]; a 0 (a class
// absent from the target) gives a finite value that is added to -inf. It lives here rather
// than in activations.hpp because nothing else needs a log.
RNNCORE_HD float log_impl(float x) {
  int32_t bits = std::bit_cast<int32_t>(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const bool low = m < 0.707106781f;
  e = low ? e - 1 : e;
  float f = low ? m + m - 1.0f : m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = float(e);
  float y = p * f * z + fe * -2.12194440e-4f - 0.5f * z;
  return (f + y) + fe * 0.693359375f;
}
RNNCORE_HD double log_impl(double x) { return std::log(x); }

// log(exp(a) + exp(b) + exp(c)) for a, b, c <= 0 or -inf: no overflow, and -inf (not NaN) when
// all three are -inf. Written without selects on the result so that a loop of it vectorises
// (GCC would not if-convert them here): the shift is the max, or the lowest finite number when
// the max is -inf, and the last term, m - shift, is exactly 0 or -inf. (float's exp_impl
// returns e^-87, not 0, for -inf: next to the max term's 1 that is below rounding.)
template <class T>
RNNCORE_HD T log_add3(T a, T b, T c) {
  const T m = std::max(a, std::max(b, c));
  const T shift = std::max(m, std::numeric_limits<T>::lowest());
  const T sum = act::exp_impl(a - shift) + act::exp_impl(b - shift) + act::exp_impl(c - shift);
  return (shift + log_impl(sum)) + (m - shift);
}

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// The buffers of one sample; reused across the samples a thread handles. alpha and beta rows
// carry two -inf pads (alpha before s = 0, beta after s = L - 1) so the recursions read their
// neighbours without branches; skip[s] is 0 where alpha may come from s - 2 and -inf where not.
template <class T>
struct Scratch {
  std::vector<Index> label;   // (L) l'_s
  std::vector<T> skip;        // (L + 2), pads -inf
  std::vector<T> emit;        // (T_b, L) y_t(l'_s)
  std::vector<T> alpha, beta; // (T_b, L + 2)
  std::vector<T> occ;         // (L) alpha + beta, then exp of it minus its class's max
  std::vector<T> class_max, class_sum;  // (C)
};

// The extended target l' (blanks around and between the labels), where alpha may skip a state
// (skip[s] = 0 where l'_s may follow l'_{s-2} directly, a label unlike the one before it, else
// -inf), and y_t(l'_s) for every frame.
template <class T>
void extended_target(const CtcShape& shape, const T* log_probs, const int64_t* target,
                     Index time, Index target_len, Index b, Index blank, Scratch<T>& w) {
  const Index B = shape.batch, C = shape.classes, L = 2 * target_len + 1, W = L + 2;
  w.label.assign(L, blank);
  w.skip.assign(W, kNegInf<T>);
  for (Index s = 1; s < L; s += 2) {
    w.label[s] = Index(target[s / 2]);
    if (s >= 2 && w.label[s] != w.label[s - 2]) w.skip[s] = 0;
  }
  const Index* lab = w.label.data();
  w.emit.resize(time * L);
  for (Index t = 0; t < time; ++t)
    for (Index s = 0; s < L; ++s) w.emit[t * L + s] = log_probs[(t * B + b) * C + lab[s]];
}

// A (time, L + 2) table of log-probabilities (alpha or beta), all -inf to begin with.
template <class T>
T* fresh_trellis(std::vector<T>& table, Index time, Index L) {
  table.assign(time * (L + 2), kNegInf<T>);
  return table.data();
}

// The forward variables (alpha: row t at alpha + t * W, state s at [s + 2]); returns the
// negative log-likelihood, +inf when no alignment exists.
template <class T>
T forward_variables(Index time, Index L, Scratch<T>& w) {
  const Index W = L + 2;
  const T* skip = w.skip.data();
  T* alpha = fresh_trellis(w.alpha, time, L);
  alpha[2] = w.emit[0];
  if (L > 1) alpha[3] = w.emit[1];
  for (Index t = 1; t < time; ++t) {
    const T* prev = alpha + (t - 1) * W;
    T* cur = alpha + t * W + 2;
    const T* e = w.emit.data() + t * L;
#pragma omp simd
    for (Index s = 0; s < L; ++s)
      cur[s] = e[s] + log_add3(prev[s + 2], prev[s + 1], prev[s] + skip[s]);
  }
  const T* last = alpha + (time - 1) * W + 2;
  return -(L > 1 ? log_add3(last[L - 1], last[L - 2], kNegInf<T>) : last[0]);
}

// The backward variables (beta: row t at beta + t * W, state s at [s], pads at L, L + 1).
template <class T>
void backward_variables(Index time, Index L, Scratch<T>& w) {
  const Index W = L + 2;
  const T* skip = w.skip.data();
  T* beta = fresh_trellis(w.beta, time, L);
  T* end = beta + (time - 1) * W;
  end[L - 1] = w.emit[(time - 1) * L + L - 1];
  if (L > 1) end[L - 2] = w.emit[(time - 1) * L + L - 2];
  for (Index t = time - 2; t >= 0; --t) {
    const T* next = beta + (t + 1) * W;
    T* cur = beta + t * W;
    const T* e = w.emit.data() + t * L;
#pragma omp simd
    for (Index s = 0; s < L; ++s)
      cur[s] = e[s] + log_add3(next[s], next[s + 1], next[s + 2] + skip[s + 2]);
  }
}

// The gradient w.r.t. the logits of frame t (C values at g): scale * (softmax - posterior), the
// posterior of a class from the summed alpha*beta over the states of that class, as a two-pass
// log-sum-exp (max, then sum) so that no class loses precision to another.
template <class T>
void frame_gradient(Index t, Index L, Index C, const T* y, T nll, T scale, Scratch<T>& w, T* g) {
  const Index W = L + 2;
  const Index* lab = w.label.data();
  T* occ = w.occ.data();
  T* cmax = w.class_max.data();
  T* csum = w.class_sum.data();
  const T* a = w.alpha.data() + t * W + 2;
  const T* bt = w.beta.data() + t * W;
  std::fill_n(cmax, C, kNegInf<T>);
  std::fill_n(csum, C, T(0));
#pragma omp simd
  for (Index s = 0; s < L; ++s) occ[s] = a[s] + bt[s];
  for (Index s = 0; s < L; ++s) cmax[lab[s]] = std::max(cmax[lab[s]], occ[s]);
#pragma omp simd
  for (Index s = 0; s < L; ++s) {
    const T m = cmax[lab[s]];
    occ[s] = act::exp_impl(occ[s] - (m == kNegInf<T> ? T(0) : m));
  }
  for (Index s = 0; s < L; ++s) csum[lab[s]] += occ[s];
#pragma omp simd
  for (Index k = 0; k < C; ++k) {
    // posterior of class k at frame t: exp(-inf), i.e. 0 (float: e^-87), for a class that
    // no state of this target has (no select, so that the loop vectorises)
    const T posterior = act::exp_impl(cmax[k] + log_impl(csum[k]) + nll - y[k]);
    g[k] = scale * (act::exp_impl(y[k]) - posterior);
  }
}

// One sample: its loss, and (grad not null) its gradient, zero past its input length and NaN
// for an impossible alignment unless zero_infinity.
template <class T>
void one_sample(const CtcShape& shape, const T* log_probs, const int64_t* target, Index time,
                Index target_len, Index b, Index blank, bool zero_infinity, T* loss, T* grad,
                T scale, Scratch<T>& w) {
  const Index B = shape.batch, C = shape.classes, L = 2 * target_len + 1;
  extended_target(shape, log_probs, target, time, target_len, b, blank, w);
  const T nll_raw = forward_variables(time, L, w);
  const bool impossible = nll_raw == std::numeric_limits<T>::infinity();
  const T nll = impossible && zero_infinity ? T(0) : nll_raw;
  *loss = nll;
  if (grad == nullptr) return;

  for (Index t = 0; t < shape.max_time; ++t)  // frames past the input length get no gradient
    std::fill_n(grad + (t * B + b) * C, C, T(0));
  if (impossible) {
    if (!zero_infinity)
      for (Index t = 0; t < time; ++t)
        std::fill_n(grad + (t * B + b) * C, C, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  backward_variables(time, L, w);
  w.occ.resize(L);
  w.class_max.resize(C);
  w.class_sum.resize(C);
  for (Index t = 0; t < time; ++t)
    frame_gradient(t, L, C, log_probs + (t * B + b) * C, nll, scale, w, grad + (t * B + b) * C);
}

}  // namespace

void ctc_check(const CtcShape& shape, const int64_t* targets, const int64_t* input_lengths,
               const int64_t* target_lengths, Index blank) {
  const Index T = shape.max_time, C = shape.classes, S = shape.max_target;
  if (C <= 0) throw std::invalid_argument("log_probs must have at least one class, got C = 0");
  if (blank < 0 || blank >= C)
    throw std::invalid_argument("blank must lie in [0, " + std::to_string(C) +
                                ") (the number of classes), got " + std::to_string(blank));
  for (Index b = 0; b < shape.batch; ++b) {
    const int64_t in = input_lengths[b], tl = target_lengths[b];
    if (in < 1 || in > T)
      throw std::invalid_argument(at("input_lengths", b) + " must lie in [1, " + std::to_string(T) +
                                  "] (log_probs has " + std::to_string(T) +
                                  " frames; an empty input cannot be aligned), got " +
                                  std::to_string(in));
    if (tl < 0 || tl > S)
      throw std::invalid_argument(at("target_lengths", b) + " must lie in [0, " +
                                  std::to_string(S) + "] (targets has " + std::to_string(S) +
                                  " columns), got " + std::to_string(tl));
    if (tl > in)
      throw std::invalid_argument(at("target_lengths", b) + " = " + std::to_string(tl) +
                                  " is longer than " + at("input_lengths", b) + " = " +
                                  std::to_string(in) +
                                  ": CTC emits at most one label per frame");
    for (Index s = 0; s < tl; ++s) {
      const int64_t label = targets[b * S + s];
      if (label < 0 || label >= C || label == blank)
        throw std::invalid_argument("targets[" + std::to_string(b) + ", " + std::to_string(s) +
                                    "] must be a class in [0, " + std::to_string(C) +
                                    ") other than blank = " + std::to_string(blank) + ", got " +
                                    std::to_string(label));
    }
  }
}

template <class T>
void ctc_loss(const CtcShape& shape, const T* log_probs, const int64_t* targets,
              const int64_t* input_lengths, const int64_t* target_lengths, Index blank,
              bool zero_infinity, T* losses, T* grad, const T* grad_scale) {
  ctc_check(shape, targets, input_lengths, target_lengths, blank);
  const Index B = shape.batch;
  const int threads = int(std::max<Index>(1, std::min<Index>(get_num_threads(), B)));
#pragma omp parallel num_threads(threads)
  {
    Scratch<T> scratch;
#pragma omp for schedule(dynamic, 1)
    for (Index b = 0; b < B; ++b)
      one_sample(shape, log_probs, targets + b * shape.max_target, Index(input_lengths[b]),
                 Index(target_lengths[b]), b, blank, zero_infinity, losses + b, grad,
                 grad_scale ? grad_scale[b] : T(1), scratch);
  }
}

template void ctc_loss<float>(const CtcShape&, const float*, const int64_t*, const int64_t*,
                              const int64_t*, Index, bool, float*, float*, const float*);
template void ctc_loss<double>(const CtcShape&, const double*, const int64_t*, const int64_t*,
                               const int64_t*, Index, bool, double*, double*, const double*);

}  // namespace rnncore
