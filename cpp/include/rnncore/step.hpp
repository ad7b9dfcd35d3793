// Single time steps of one cell, for loops written by hand: decoders, beam search, generation.
//
// A StepEngine keeps its own copy of one layer's weights, packed for the step's products, so a
// step costs its arithmetic plus a few hundred nanoseconds, not a repack of W_hh per call (what
// a one-step call of the sequence driver pays). The weights are read once, by set_weights(): call
// it again whenever they change (the Python cells do so when their parameters' version moves,
// see docs/api.md, "Single steps").
//
// A step with batch B (shapes as in common.hpp):
//   x (B, I), h_prev (B, H), c_prev (B, H; LSTM only) -> h (B, H), c (B, H; LSTM only)
// Training: forward with a `stash` of B * stash_slots * H values (CellInfo::stash_slots), which
// it fills with the step's record; backward of that step reads the same x, h_prev, c_prev, h, c
// and the stash (which it overwrites with the gate gradients), takes dh = dL/dh and dc = dL/dc
// (either may be nullptr: zero), writes dx, dh_prev, dc_prev (each may be nullptr: not wanted)
// and ADDS the parameter gradients into `grads` (bias gradients may be nullptr: dropped).
// Nothing of a step is kept by the engine between calls: any number of steps may be recorded
// (in the caller's stashes) and back-propagated in any order.
//
// Threads: a step whose work is large enough (the same rule as the sequence driver's time loop)
// splits the hidden units across rnncore's threads, each with its own packed slice of the
// weights; small steps run on the calling thread alone. Aliasing: outputs must not overlap
// inputs. An engine is not safe to use from several threads at once.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>

#include "rnncore/cells.hpp"
#include "rnncore/common.hpp"
#include "rnncore/sequence.hpp"

namespace rnncore {

namespace detail {
template <class T>
struct StepImplBase;
}

template <class T>
class StepEngine {
 public:
  // std::invalid_argument for an unknown cell or non-positive sizes.
  StepEngine(std::string_view cell, Index input_size, Index hidden_size);
  ~StepEngine();
  StepEngine(StepEngine&&) noexcept;
  StepEngine& operator=(StepEngine&&) noexcept;

  const CellInfo& info() const { return *info_; }
  Index input_size() const { return input_size_; }
  Index hidden_size() const { return hidden_size_; }

  // Copies the weights (PyTorch layout, as LayerWeights; biases may be nullptr: zero) and drops
  // every packed form of the previous ones. The engine reads nothing of `w` after it returns.
  void set_weights(const LayerWeights<T>& w);
  bool has_weights() const;

  // std::logic_error without weights; batch 0 does nothing.
  void forward(Index batch, const T* x, const T* h_prev, const T* c_prev, T* h, T* c,
               T* stash);
  void backward(Index batch, const T* x, const T* h_prev, const T* c_prev, const T* h,
                const T* c, T* stash,
                const T* dh, const T* dc, T* dx, T* dh_prev, T* dc_prev,
                const LayerGradients<T>& grads);

  // Bytes held: the weights' copy and their packed forms (built on first use).
  std::size_t bytes() const;

 private:
  const CellInfo* info_;
  Index input_size_, hidden_size_;
  std::unique_ptr<detail::StepImplBase<T>> impl_;
};

}  // namespace rnncore
