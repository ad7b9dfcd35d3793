// CTC loss and gradient (see ctc.hpp for the recursions). One sample per OpenMP task: the
// recursions of a sample are sequential in t, and samples are independent.
#include "rnncore/ctc.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "rnncore/runtime.hpp"

namespace rnncore {

namespace {

std::string at(const char* name, Index b) { return std::string(name) + "[" + std::to_string(b) + "]"; }

// log(exp(a) + exp(b) + exp(c)) for a, b, c <= 0 or -inf, without overflow and without NaN
// when all three are -inf.
template <class T>
T log_add3(T a, T b, T c) {
  const T m = std::max(a, std::max(b, c));
  if (m == -std::numeric_limits<T>::infinity()) return m;
  return m + std::log(std::exp(a - m) + std::exp(b - m) + std::exp(c - m));
}

template <class T>
T log_add2(T a, T b) {
  const T m = std::max(a, b);
  if (m == -std::numeric_limits<T>::infinity()) return m;
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

// The buffers of one sample; reused across the samples a thread handles.
template <class T>
struct Scratch {
  std::vector<Index> label;     // (L) l'_s
  std::vector<char> can_skip;   // (L) whether alpha_t(s) may come from s-2
  std::vector<T> alpha, beta;   // (T_b, L)
  std::vector<T> class_max, class_sum;  // (C)
};

template <class T>
void one_sample(const CtcShape& shape, const T* log_probs, const int64_t* target, Index time,
                Index target_len, Index b, Index blank, bool zero_infinity, T* loss, T* grad,
                T scale, Scratch<T>& w) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const Index B = shape.batch, C = shape.classes, L = 2 * target_len + 1;
  auto y = [&](Index t, Index k) { return log_probs[(t * B + b) * C + k]; };

  w.label.assign(L, blank);
  w.can_skip.assign(L, 0);
  for (Index s = 1; s < L; s += 2) {
    w.label[s] = Index(target[s / 2]);
    w.can_skip[s] = s >= 2 && w.label[s] != w.label[s - 2];
  }
  const Index* lab = w.label.data();
  const char* skip = w.can_skip.data();

  w.alpha.assign(time * L, kNegInf);
  T* alpha = w.alpha.data();
  alpha[0] = y(0, blank);
  if (L > 1) alpha[1] = y(0, lab[1]);
  for (Index t = 1; t < time; ++t) {
    const T* prev = alpha + (t - 1) * L;
    T* cur = alpha + t * L;
    // Only states from which the end is still reachable and which the start can reach matter;
    // the others stay -inf by the recursion itself, so no window is needed for correctness.
    for (Index s = 0; s < L; ++s) {
      const T a1 = s >= 1 ? prev[s - 1] : kNegInf;
      const T a2 = skip[s] ? prev[s - 2] : kNegInf;
      cur[s] = y(t, lab[s]) + log_add3(prev[s], a1, a2);
    }
  }
  const T* last = alpha + (time - 1) * L;
  const T log_likelihood = L > 1 ? log_add2(last[L - 1], last[L - 2]) : last[0];
  T nll = -log_likelihood;
  const bool impossible = std::isinf(nll) && nll > 0;
  if (impossible && zero_infinity) nll = 0;
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

  w.beta.assign(time * L, kNegInf);
  T* beta = w.beta.data();
  T* end = beta + (time - 1) * L;
  end[L - 1] = y(time - 1, blank);
  if (L > 1) end[L - 2] = y(time - 1, lab[L - 2]);
  for (Index t = time - 2; t >= 0; --t) {
    const T* next = beta + (t + 1) * L;
    T* cur = beta + t * L;
    for (Index s = 0; s < L; ++s) {
      const T b1 = s + 1 < L ? next[s + 1] : kNegInf;
      const T b2 = s + 2 < L && skip[s + 2] ? next[s + 2] : kNegInf;
      cur[s] = y(t, lab[s]) + log_add3(next[s], b1, b2);
    }
  }

  // Per frame and class: log of the summed alpha*beta over the states of that class, as a
  // two-pass log-sum-exp (max, then sum) so that no class loses precision to another.
  w.class_max.resize(C);
  w.class_sum.resize(C);
  for (Index t = 0; t < time; ++t) {
    const T* a = alpha + t * L;
    const T* bt = beta + t * L;
    std::fill(w.class_max.begin(), w.class_max.end(), kNegInf);
    std::fill(w.class_sum.begin(), w.class_sum.end(), T(0));
    for (Index s = 0; s < L; ++s) w.class_max[lab[s]] = std::max(w.class_max[lab[s]], a[s] + bt[s]);
    for (Index s = 0; s < L; ++s) {
      const T m = w.class_max[lab[s]];
      if (m != kNegInf) w.class_sum[lab[s]] += std::exp(a[s] + bt[s] - m);
    }
    T* g = grad + (t * B + b) * C;
    for (Index k = 0; k < C; ++k) {
      const T yk = y(t, k);
      T occupancy = 0;  // posterior of class k at frame t
      if (w.class_max[k] != kNegInf)
        occupancy = std::exp(w.class_max[k] + std::log(w.class_sum[k]) + nll - yk);
      g[k] = scale * (std::exp(yk) - occupancy);
    }
  }
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
