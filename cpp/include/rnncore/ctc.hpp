// Connectionist temporal classification (Graves et al. 2006): the loss and its gradient.
//
// Inputs follow torch.nn.functional.ctc_loss. Shape letters (see common.hpp) plus
//   C  classes      output classes per frame, the blank included
//   S  max_target   columns of the padded target array
//   L  = 2 S_b + 1  the target of sample b with blanks around and between its labels
//
// For one sample with frames t < T_b = input_lengths[b] and labels l_1..l_{S_b}, the extended
// sequence is l' = (blank, l_1, blank, l_2, ..., l_{S_b}, blank). In log space, with
// y_t(k) = log_probs[t, b, k] (log-softmax outputs) and lse = log-sum-exp:
//   alpha_0(0) = y_0(blank), alpha_0(1) = y_0(l_1), alpha_0(s >= 2) = -inf
//   alpha_t(s) = y_t(l'_s) + lse(alpha_{t-1}(s), alpha_{t-1}(s-1), alpha_{t-1}(s-2))
//                (the s-2 term only when l'_s is a label different from l'_{s-2})
//   beta_{T_b-1}(L-1) = y(blank), beta_{T_b-1}(L-2) = y(l_{S_b}), others -inf
//   beta_t(s)  = y_t(l'_s) + lse(beta_{t+1}(s), beta_{t+1}(s+1), beta_{t+1}(s+2)) (same rule)
//   loss_b = -lse(alpha_{T_b-1}(L-1), alpha_{T_b-1}(L-2))
// beta includes the frame's own emission, so alpha_t(s) + beta_t(s) - y_t(l'_s) is the log of
// the probability of all alignments through (t, s). The gradient with respect to the logits z
// of log_probs = log_softmax(z), for t < T_b, is
//   dloss_b/dz_t(k) = exp(y_t(k)) - exp(lse_{s: l'_s = k}(alpha_t(s) + beta_t(s)) + loss_b - y_t(k))
// and zero for t >= T_b. It is also what torch's autograd reports as the gradient w.r.t.
// log_probs (its backward assumes log-softmax inputs), so both can be compared directly.
//
// Impossible alignments (a target that needs more frames than T_b because a repeated label
// needs a blank between its copies) give loss_b = +inf; with zero_infinity the loss and the
// gradient of such a sample are zero, without it the gradient is NaN on its frames (as torch).
//
// Aliasing: grad must not overlap the inputs. Lifetime: nothing is retained after a call.
#pragma once

#include <cstdint>

#include "rnncore/common.hpp"

namespace rnncore {

struct CtcShape {
  Index max_time = 0;    // T: frames of log_probs
  Index batch = 0;       // B
  Index classes = 0;     // C
  Index max_target = 0;  // S: columns of targets
};

// Checks the integer inputs and throws std::invalid_argument naming the argument, the expected
// and the actual value: 1 <= input_lengths[b] <= T, 0 <= target_lengths[b] <= min(S, input
// length), 0 <= blank < C, labels in [0, C) and != blank within each target's length.
void ctc_check(const CtcShape& shape, const int64_t* targets, const int64_t* input_lengths,
               const int64_t* target_lengths, Index blank);

// log_probs (T, B, C); targets (B, S) padded (entries past target_lengths[b] are ignored);
// input_lengths, target_lengths (B). Writes losses (B), the negative log-likelihood of each
// sample (0 for an impossible one under zero_infinity). When grad (T, B, C) is not null, writes
// grad_scale[b] * dloss_b/dz for every sample (grad_scale null: scale 1); the caller folds the
// reduction into grad_scale. Runs ctc_check first. OpenMP over the batch.
template <class T>
void ctc_loss(const CtcShape& shape, const T* log_probs, const int64_t* targets,
              const int64_t* input_lengths, const int64_t* target_lengths, Index blank,
              bool zero_infinity, T* losses, T* grad, const T* grad_scale);

}  // namespace rnncore
