// One recurrent layer in one direction over a whole (batch of) sequence(s).
//
// The driver is shared by every cell (see cells.hpp): the input projection x W_ih^T + b_ih for
// all steps is one GEMM before the time loop; each step does the recurrent product and one fused
// pointwise sweep; after the backward loop, dW_ih, dW_hh, dx and the bias sums are each one large
// GEMM or reduction. Hidden units are split across OpenMP threads that stay alive for the whole
// loop (one barrier per step and phase), each with its slice of W_hh packed once per call.
//
// Shapes (see common.hpp): x (T, B, I); y (T, B, H); h0, c0, h_n, c_n, dh0, ... (B, H).
// Variable lengths: `lengths` (B) with 0 <= lengths[b] <= T, or nullptr for all T. Sequence b
// then only has steps t < lengths[b]; y past its length is zero; its final state is the state
// after its last step (reverse: after step 0); a length-0 sequence keeps its initial state.
// Sequences are sorted by length internally so no work is spent on padding.
// reverse: the sequence is processed from its last valid step to step 0; y stays in time order.
//
// Aliasing: outputs must not overlap inputs. Lifetime: nothing is retained after a call returns
// except what `forward_training` stores in its workspace (copies, not pointers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "rnncore/buffer.hpp"
#include "rnncore/common.hpp"
#include "rnncore/schedule.hpp"

namespace rnncore {

struct SequenceShape {
  Index seq_len = 0;      // T
  Index batch = 0;        // B
  Index input_size = 0;   // I
  Index hidden_size = 0;  // H
};

// Read-only parameters of one layer and direction, PyTorch layout. All pointers are required
// except w_peephole (peephole LSTM only). A layer without biases passes zero-filled biases.
template <class T>
struct LayerWeights {
  const T* w_ih = nullptr;        // (G*H, I)
  const T* w_hh = nullptr;        // (G*H, H)
  const T* b_ih = nullptr;        // (G*H)
  const T* b_hh = nullptr;        // (G*H)
  const T* w_peephole = nullptr;  // (3, H), rows [i, f, o]
};

// Parameter gradients; backward ADDS into them.
template <class T>
struct LayerGradients {
  T* dw_ih = nullptr;
  T* dw_hh = nullptr;
  T* db_ih = nullptr;
  T* db_hh = nullptr;
  T* dw_peephole = nullptr;
};

// Everything a backward pass needs from its training forward, owned by the workspace:
// with N = sum of lengths, S the cell's stash slots (RNN 1, LSTM 4, GRU 4) and I, H the sizes,
//   x      N * I          the input, packed in step order
//   stash  N * S * H      gate activations (the input projection before the step)
//   h      (B + N) * H    h_0 then every step's h_t
//   c      (B + N) * H    LSTM only
// i.e. N*(I + (S+1)*H) + B*H values, plus N*H more for an LSTM's cell states.
template <class T>
class TrainingWorkspace {
 public:
  SequenceShape shape;
  Schedule schedule;
  Buffer<T> x, stash, h, c;
  bool ready = false;  // set by forward_training, cleared by backward
  // Gradient-flow diagnostics: with record_grad_norms set, backward also writes
  // grad_norms[t] = ||dL/dh_t||, the Frobenius norm over the batch of the whole gradient reaching
  // h_t (from the output at t and from step t+1), t = 0 .. T-1 (zero where no sequence is
  // active). Taken from the gradients the BPTT loop computes anyway: no second pass.
  bool record_grad_norms = false;
  std::vector<double> grad_norms;
  // The buffers keep their capacity after backward, so the next training step reuses them;
  // release() returns the memory.

  std::size_t bytes() const { return sizeof(T) * (x.capacity() + stash.capacity() + h.capacity() + c.capacity()); }
  // Frees the buffers.
  void release() {
    Buffer<T>().swap(x);
    Buffer<T>().swap(stash);
    Buffer<T>().swap(h);
    Buffer<T>().swap(c);
    ready = false;
  }
};

// Inference: keeps no per-step state; memory O(B*(H + I)) whatever T is.
// h0/c0 may be nullptr (zeros); c0, c_n are ignored by cells without a cell state.
template <class Cell, class T>
void forward_inference(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                       const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                       T* c_n);

// Training forward: as forward_inference, and fills `ws` for backward.
template <class Cell, class T>
void forward_training(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                      const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                      T* c_n, TrainingWorkspace<T>& ws);

// BPTT through the forward recorded in `ws` (which it consumes). dy (T, B, H) may be nullptr
// (no gradient on the outputs), as may dh_n and dc_n (no gradient into the final states).
// Writes dx (T, B, I), dh0, dc0 (each may be nullptr if not wanted) and adds the parameter
// gradients into `grads`. Gradients at padded positions of dy are ignored; dx there is zero.
template <class Cell, class T>
void backward(const LayerWeights<T>& w, TrainingWorkspace<T>& ws, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const LayerGradients<T>& grads);

// Threads the time loop of a call with this batch and hidden size would use (1 for small
// problems, where a barrier per step costs more than a second thread saves).
template <class Cell, class T>
int loop_threads(Index batch, Index hidden);

}  // namespace rnncore
