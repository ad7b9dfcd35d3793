// The single-step engine (internal; the API is rnncore/step.hpp). Included by the per-cell
// instantiation units next to the sequence driver, whose parts it reuses rather than repeats: the
// unit slices and the per-slice packing of W_ih, b_ih and W_hh (sequence_common.hpp), the forward
// step (sequence_forward.hpp), the backward step, the weight gradients and dx
// (sequence_backward.hpp). What is its own: the packs kept across steps until set_weights.
//
// Forward of one step on P threads (P from the time loop's rule, time_loop_threads): thread p
// owns the hidden units of slice p; it projects x onto its units' rows of W_ih (packed once per
// weights), then per phase multiplies the operand by its packed rows of W_hh and runs the
// pointwise sweep on its units (forward_step of the sequence driver, barrier included).
// Backward: per phase (last first) the pointwise backward on the slice, a barrier, then the
// slice's columns of dL/dh_prev (or of the phase operand) = dG W_hh with W_hh's columns packed
// once; after the region dW_ih, dW_hh, the bias sums and dx = dG W_ih (W_ih^T packed once).
// Packed forms are built on first use after set_weights and kept until the next set_weights.
#pragma once

#include <cstring>
#include <memory>
#include <vector>

#include "rnncore/step.hpp"
#include "sequence_backward.hpp"
#include "sequence_forward.hpp"

namespace rnncore {
namespace detail {

template <class T>
struct StepImplBase {
  virtual ~StepImplBase() = default;
  virtual void set_weights(const LayerWeights<T>& w) = 0;
  virtual bool has_weights() const = 0;
  virtual void forward(Index batch, const T* x, const T* h_prev, const T* c_prev, T* h, T* c,
                       T* stash) = 0;
  virtual void backward(Index batch, const T* x, const T* h_prev, const T* c_prev, const T* h,
                        const T* c, T* stash, const T* dh, const T* dc, T* dx, T* dh_prev,
                        T* dc_prev, const LayerGradients<T>& grads) = 0;
  virtual std::size_t bytes() const = 0;
};

// Defined below; instantiated per cell in the cell's instantiation unit.
template <class Cell, class T>
std::unique_ptr<StepImplBase<T>> make_step_impl(Index input_size, Index hidden_size);

template <class Cell, class T>
class StepImpl final : public StepImplBase<T> {
  static constexpr int G = Cell::kGates, S = Cell::kStashSlots, Phases = Cell::kPhases;

  struct PhasePacks {
    PackedWeights<T> phase[Phases];
  };
  // The forward products of one thread count: per thread its units' rows of W_ih and W_hh.
  struct ForwardPacks {
    UnitSlices slices;
    std::vector<PackedWeights<T>> w_ih;
    std::vector<PhasePacks> w_hh;
    std::vector<Buffer<T>> b_ih;  // per thread its units' b_ih, gate by gate
    explicit ForwardPacks(Index H, int threads) : slices(H, threads) {}
  };
  // The backward products of one thread count: per thread its columns of W_hh (per phase).
  struct BackwardPacks {
    UnitSlices slices;
    std::vector<PhasePacks> w_hh;
    explicit BackwardPacks(Index H, int threads) : slices(H, threads) {}
  };

 public:
  StepImpl(Index input_size, Index hidden_size) : I_(input_size), H_(hidden_size) {}

  void set_weights(const LayerWeights<T>& w) override {
    const Index GH = G * H_;
    copy(w_ih_, w.w_ih, GH * I_);
    copy(w_hh_, w.w_hh, GH * H_);
    copy(b_ih_, w.b_ih, GH);
    copy(b_hh_, w.b_hh, GH);
    copy(peephole_, w.w_peephole, Cell::kHasPeephole ? 3 * H_ : 0);
    forward_packs_.clear();
    backward_packs_.clear();
    input_t_.clear();
    have_weights_ = true;
  }
  bool has_weights() const override { return have_weights_; }

  void forward(Index B, const T* x, const T* h_prev, const T* c_prev, T* h, T* c,
               T* stash) override {
    require_weights();
    if (B <= 0) return;
    const int threads = time_loop_threads<Cell, T>(B, H_);
    const ForwardPacks& packs = forward_packs(threads);
    const Index widest = packs.slices.widest, stash_width = S * H_;
    const bool training = stash != nullptr;
    gx_.resize(threads * B * G * widest);
    gh_.resize(threads * B * G * widest);
    if (!training && Phases > 1) {  // multi-phase inference: the first phase's results
      scratch_stash_.resize(B * stash_width);
      scratch_operand_.resize(B * H_);
    }
    const auto run = [&](int t) {
      const UnitSlice slice = packs.slices[t];
      const Index gx_width = G * slice.width;
      T* gx = gx_.data() + t * B * G * widest;
      packed_gemm(B, x, I_, packs.w_ih[t], gx, gx_width, false);
      add_bias_rows(B, gx_width, gx, gx_width, packs.b_ih[t].data());
      StepRows<T> rows;
      rows.gx = gx, rows.gx_ld = gx_width, rows.gx_gate_stride = slice.width;
      rows.gx_first = slice.begin;
      rows.h_prev = h_prev, rows.h = h;
      if (Cell::kHasCellState) rows.c_prev = c_prev, rows.c = c;
      if (training) {
        rows.stash = stash, rows.stash_ld = stash_width;
        rows.operand = Cell::kOperandSlot >= 0 ? stash + Cell::kOperandSlot * H_ : nullptr;
        rows.operand_ld = stash_width;
      } else {
        rows.stash = scratch_stash_.data(), rows.stash_ld = stash_width;
        rows.operand = scratch_operand_.data(), rows.operand_ld = H_;
      }
      const LayerWeights<T> w{nullptr, nullptr, b_ih_.data(), b_hh_.data(), peephole_.data()};
      T* gh = gh_.data() + t * B * G * widest;
      if (training)
        forward_step<Cell, T, true>(rows, B, slice, packs.w_hh[t].phase, gh, w, H_,
                                    threads > 1);
      else
        forward_step<Cell, T, false>(rows, B, slice, packs.w_hh[t].phase, gh, w, H_,
                                     threads > 1);
    };
    if (threads == 1) {
      run(0);
      return;
    }
#pragma omp parallel num_threads(threads)
    run(omp_get_thread_num());
  }

  void backward(Index B, const T* x, const T* h_prev, const T* c_prev, const T* h, const T* c,
                T* stash, const T* dh, const T* dc, T* dx, T* dh_prev, T* dc_prev,
                const LayerGradients<T>& grads) override {
    require_weights();
    if (B <= 0) return;
    const int threads = time_loop_threads<Cell, T>(B, H_);
    const BackwardPacks& packs = backward_packs(threads);
    const Index stash_width = S * H_;
    // The carried gradients: dh, dc in, then dL/dh_prev, dL/dc_prev out.
    dh_.resize(B * H_);
    if (dh) std::memcpy(dh_.data(), dh, sizeof(T) * B * H_);
    else std::fill(dh_.begin(), dh_.end(), T(0));
    if (Cell::kHasCellState) {
      dc_.resize(B * H_);
      if (dc) std::memcpy(dc_.data(), dc, sizeof(T) * B * H_);
      else std::fill(dc_.begin(), dc_.end(), T(0));
    }
    if (Phases > 1) doperand_.resize(B * H_);
    zeros_.resize(H_);
    std::fill(zeros_.begin(), zeros_.end(), T(0));
    BackwardStepRows<T> rows;
    rows.stash = stash, rows.stash_ld = stash_width;
    rows.h_prev = h_prev, rows.h = h;
    if (Cell::kHasCellState) rows.c_prev = c_prev, rows.c = c, rows.dc = dc_.data();
    rows.dh = dh_.data(), rows.doperand = doperand_.data();
    rows.peephole = peephole_.data(), rows.dpeephole = grads.dw_peephole;
    const auto no_dy = [&](Index) -> const T* { return zeros_.data(); };  // a step has no output
    const auto no_norm = [](Index) -> double* { return nullptr; };
    const auto run = [&](int t) {
      backward_step<Cell>(rows, B, H_, packs.slices[t], packs.w_hh[t].phase, threads > 1, no_dy,
                          no_norm);
    };
    if (threads == 1) {
      run(0);
    } else {
#pragma omp parallel num_threads(threads)
      run(omp_get_thread_num());
    }
    if (dh_prev) std::memcpy(dh_prev, dh_.data(), sizeof(T) * B * H_);
    if (Cell::kHasCellState && dc_prev) std::memcpy(dc_prev, dc_.data(), sizeof(T) * B * H_);
    add_weight_gradients<Cell>(B, I_, H_, stash, x, h_prev, grads, get_num_threads());
    if (dx) input_gradient(B, stash, dx);
  }

  std::size_t bytes() const override {
    std::size_t n = w_ih_.capacity() + w_hh_.capacity() + b_ih_.capacity() + b_hh_.capacity() +
                    peephole_.capacity();
    for (const auto& p : forward_packs_) {
      if (!p) continue;
      for (const auto& w : p->w_ih) n += w.data.capacity();
      for (const auto& phases : p->w_hh)
        for (const auto& w : phases.phase) n += w.data.capacity();
    }
    for (const auto& p : backward_packs_) {
      if (!p) continue;
      for (const auto& phases : p->w_hh)
        for (const auto& w : phases.phase) n += w.data.capacity();
    }
    for (const auto& w : input_t_) n += w.data.capacity();
    return sizeof(T) * n;
  }

 private:
  static void copy(Buffer<T>& dst, const T* src, Index n) {
    dst.resize(n);
    if (src) std::memcpy(dst.data(), src, sizeof(T) * n);
    else std::fill(dst.begin(), dst.end(), T(0));
  }

  void require_weights() const {
    if (!have_weights_)
      throw std::logic_error("StepEngine: set_weights() must be called before the first step");
  }

  const ForwardPacks& forward_packs(int threads) {
    if (forward_packs_.size() <= std::size_t(threads)) forward_packs_.resize(threads + 1);
    auto& slot = forward_packs_[std::size_t(threads)];
    if (slot) return *slot;
    auto packs = std::make_unique<ForwardPacks>(H_, threads);
    packs->w_ih.resize(threads);
    packs->w_hh.resize(threads);
    packs->b_ih.resize(threads);
    for (int t = 0; t < threads; ++t) {
      const UnitSlice slice = packs->slices[t];
      pack_input_slice<Cell>(w_ih_.data(), I_, H_, slice, packs->w_ih[t]);
      pack_recurrent_slice<Cell>(w_hh_.data(), H_, slice, RecurrentProduct::kForward,
                                 packs->w_hh[t].phase);
      packs->b_ih[t].resize(G * slice.width);
      copy_bias_slice<Cell>(b_ih_.data(), H_, slice, packs->b_ih[t].data());
    }
    slot = std::move(packs);
    return *slot;
  }

  const BackwardPacks& backward_packs(int threads) {
    if (backward_packs_.size() <= std::size_t(threads)) backward_packs_.resize(threads + 1);
    auto& slot = backward_packs_[std::size_t(threads)];
    if (slot) return *slot;
    auto packs = std::make_unique<BackwardPacks>(H_, threads);
    packs->w_hh.resize(threads);
    for (int t = 0; t < threads; ++t) {
      pack_recurrent_slice<Cell>(w_hh_.data(), H_, packs->slices[t], RecurrentProduct::kBackward,
                                 packs->w_hh[t].phase);
    }
    slot = std::move(packs);
    return *slot;
  }

  // dx = dG_x W_ih, gate block by gate block, with W_ih^T packed on first use after set_weights.
  void input_gradient(Index B, const T* stash, T* dx) {
    std::size_t block = 0;
    const auto transposed = [&](int first_gate, int end_gate) -> const PackedWeights<T>& {
      if (block == input_t_.size()) {
        input_t_.emplace_back();
        pack_input_transposed(w_ih_.data(), I_, H_, first_gate, end_gate, input_t_.back());
      }
      return input_t_[block++];
    };
    add_input_gradient_rows<Cell>(B, stash, H_, I_, transposed, dx, get_num_threads());
  }

  Index I_, H_;
  bool have_weights_ = false;
  Buffer<T> w_ih_, w_hh_, b_ih_, b_hh_, peephole_;
  std::vector<std::unique_ptr<ForwardPacks>> forward_packs_;    // by thread count
  std::vector<std::unique_ptr<BackwardPacks>> backward_packs_;  // by thread count
  std::vector<PackedWeights<T>> input_t_;                       // W_ih^T per input gate block
  // Per-call scratch, kept for the next step.
  Buffer<T> gx_, gh_, scratch_stash_, scratch_operand_, dh_, dc_, doperand_, zeros_;
};

template <class Cell, class T>
std::unique_ptr<StepImplBase<T>> make_step_impl(Index input_size, Index hidden_size) {
  return std::make_unique<StepImpl<Cell, T>>(input_size, hidden_size);
}

}  // namespace detail
}  // namespace rnncore

#define RNNCORE_INSTANTIATE_STEP(CELL, T)                                        \
  template std::unique_ptr<detail::StepImplBase<T>> detail::make_step_impl<CELL, T>( \
      Index, Index);
