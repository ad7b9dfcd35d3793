// A stack of recurrent layers, each in one or two directions: what rnncore.LSTM/GRU/RNN run.
//
// The stack driver walks layers x directions over the sequence driver (sequence.hpp); like it, it
// is templated on the cell and never names one. Layer 0 reads x; layer l > 0 reads layer l-1's
// output, the two directions side by side (forward first), after inter-layer dropout in training.
// The two directions of a layer are independent and run concurrently, one thread each, when
// neither would use more than one thread on its own (loop_threads) or when there are only two
// threads; else one after the other with all threads (run_independent, internal).
//
// Shapes (see common.hpp; L = num_layers, D = 2 if bidirectional else 1):
//   x (T, B, I)             input
//   y (T, B, D*H)           the last layer's output; direction d in columns [d*H, (d+1)*H)
//   h0, c0, h_n, c_n        (L*D, B, H): entry l*D + d is layer l, direction d (PyTorch's order);
//   dh_n, dc_n, dh0, dc0    the same shape as the states they belong to
//   dy (T, B, D*H), dx (T, B, I)
// Weights: StackWeights::layers[l*D + d] holds layer l, direction d, in PyTorch's layout with
// input size I for layer 0 and D*H above it. Biases may be nullptr (a layer without biases).
// c0, c_n, dc_n, dc0 are ignored by cells without a cell state; h0/c0/dh_n/dc_n/dy may be nullptr
// (zeros); h_n, c_n, dx, dh0, dc0 may be nullptr (not wanted). y is always written.
// Lengths as in sequence.hpp (validated there, by Schedule): the same lengths apply to every
// layer; outputs past a sequence's length are zero in every layer.
//
// Aliasing: outputs must not overlap inputs. Lifetime: nothing is retained after a call except
// what the training forward keeps in its StackWorkspace (copies, not pointers); the weights must
// not change between a training forward and its backward.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "rnncore/common.hpp"
#include "rnncore/sequence.hpp"

namespace rnncore {

struct StackShape {
  Index seq_len = 0;      // T
  Index batch = 0;        // B
  Index input_size = 0;   // I, of layer 0
  Index hidden_size = 0;  // H
  Index num_layers = 1;   // L
  bool bidirectional = false;

  Index directions() const { return bidirectional ? 2 : 1; }
  // Input features of layer l: I for the first layer, D*H above it.
  Index layer_input_size(Index layer) const {
    return layer == 0 ? input_size : directions() * hidden_size;
  }
  SequenceShape layer_shape(Index layer) const {
    return {seq_len, batch, layer_input_size(layer), hidden_size};
  }
};

// One LayerWeights per (layer, direction), index l*D + d.
template <class T>
struct StackWeights {
  std::vector<LayerWeights<T>> layers;
};

// One LayerGradients per (layer, direction); backward ADDS into them. Bias gradients may be
// nullptr (a layer without biases: they are computed and dropped).
template <class T>
struct StackGradients {
  std::vector<LayerGradients<T>> layers;
};

// Inverted dropout between layers (on the output of every layer but the last), training only:
// an element is kept with probability 1 - p and then scaled by 1 / (1 - p). The mask of element e
// of layer l's output is a pure function of (seed, l, e): the same for any thread count, and
// regenerated rather than stored for backward.
struct Dropout {
  double p = 0.0;  // in [0, 1)
  uint64_t seed = 0;
};

// What a stack's backward needs from its training forward: one sequence workspace per (layer,
// direction), plus buffers for the activations and gradients passed between layers, all kept
// for reuse by the next training step (release() frees them).
template <class T>
class StackWorkspace {
 public:
  StackShape shape;
  Dropout dropout;
  std::vector<TrainingWorkspace<T>> layers;  // index l*D + d
  Buffer<T> between[2];                      // layer outputs (forward), then gradients (backward)
  Buffer<T> direction_buffers[2];            // one direction's y or dy, and its dx
  bool ready = false;  // set by the training forward, cleared by backward
  // Set before backward to have every layer-direction's workspace record ||dL/dh_t|| (see
  // TrainingWorkspace::grad_norms; layers[l*D + d].grad_norms after backward).
  bool record_grad_norms = false;

  // std::logic_error unless a training forward filled the workspace and no backward consumed it.
  void require_ready() const {
    if (!ready)
      throw std::logic_error(
          "backward() needs the workspace of a training-mode forward; it was never filled or was "
          "already consumed by an earlier backward()");
  }

  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& w : layers) n += w.bytes();
    for (const auto& b : between) n += sizeof(T) * b.capacity();
    for (const auto& b : direction_buffers) n += sizeof(T) * b.capacity();
    return n;
  }
  void release() {
    for (auto& w : layers) w.release();
    std::vector<TrainingWorkspace<T>>().swap(layers);
    for (auto& b : between) Buffer<T>().swap(b);
    for (auto& b : direction_buffers) Buffer<T>().swap(b);
    ready = false;
  }
};

// Inference through all layers; keeps nothing per step (memory O(T*B*D*H) for the layer
// outputs, which the next layer reads as a whole).
template <class Cell, class T>
void forward_inference(const StackShape& shape, const StackWeights<T>& w, const T* x, const T* h0,
                       const T* c0, const int64_t* lengths, T* y, T* h_n, T* c_n);

// Training forward: as forward_inference, with dropout between layers, and fills `ws`.
template <class Cell, class T>
void forward_training(const StackShape& shape, const StackWeights<T>& w, const Dropout& dropout,
                      const T* x, const T* h0, const T* c0, const int64_t* lengths, T* y, T* h_n,
                      T* c_n, StackWorkspace<T>& ws);

// BPTT through every layer and direction of the forward recorded in `ws` (which it consumes;
// std::logic_error if there is none). Adds parameter gradients into `grads`.
template <class Cell, class T>
void backward(const StackWeights<T>& w, StackWorkspace<T>& ws, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const StackGradients<T>& grads);

// The dropout mask value (0 or 1 / (1 - p)) of element `index` of layer `layer`'s output.
double dropout_scale(const Dropout& dropout, Index layer, Index index);

}  // namespace rnncore
