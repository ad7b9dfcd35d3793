// The stack driver (internal): layers x directions over the sequence driver, for any cell of
// cells.hpp. Included by the generated per-cell instantiation units (instantiate_cell.cpp.in).
#pragma once

#include "rnncore/detail/stack_checks.hpp"
#include "rnncore/stack.hpp"
#include "runtime_detail.hpp"
#include "stack_helpers.hpp"

namespace rnncore {
namespace detail {

// One layer, both directions (or the one), training or inference: reads `in` (T, B, I_l),
// writes `out` (T, B, D*H) and the layer's entries of h_n / c_n.
template <class Cell, class T, bool kTrain>
void layer_forward(const StackShape& shape, Index layer, const StackWeights<T>& w,
                   const BiasFallback<T>& biases, const T* in, const T* h0, const T* c0,
                   const int64_t* lengths, T* out, T* h_n, T* c_n, Buffer<T>& direction_outputs,
                   StackWorkspace<T>* ws) {
  const Index D = shape.directions(), state = shape.batch * shape.hidden_size;
  const Index outputs = shape.seq_len * state;
  const SequenceShape layer_shape = shape.layer_shape(layer);
  auto run_direction = [&, layer](Index d, T* y) {
    const Index i = layer * D + d;
    const LayerWeights<T> lw = biases.complete(w.layers[std::size_t(i)]);
    const T* h0_i = h0 ? h0 + i * state : nullptr;
    const T* c0_i = c0 ? c0 + i * state : nullptr;
    T* c_n_i = c_n ? c_n + i * state : nullptr;
    if constexpr (kTrain)
      forward_training<Cell, T>(layer_shape, lw, in, h0_i, c0_i, lengths, d == 1, y,
                                h_n + i * state, c_n_i, ws->layers[std::size_t(i)]);
    else
      forward_inference<Cell, T>(layer_shape, lw, in, h0_i, c0_i, lengths, d == 1, y,
                                 h_n + i * state, c_n_i);
  };
  if (D == 1) {
    run_direction(0, out);
    return;
  }
  named_resize(direction_outputs, 2 * outputs, "the two directions' outputs (2 x T*B x H)");
  T* y_forward = direction_outputs.data();
  T* y_reverse = y_forward + outputs;
  run_independent({[&] { run_direction(0, y_forward); }, [&] { run_direction(1, y_reverse); }},
                  loop_threads<Cell, T>(shape.batch, shape.hidden_size) == 1);
  interleave_directions(shape.seq_len * shape.batch, shape.hidden_size, y_forward, y_reverse, out);
}

template <class Cell, class T, bool kTrain>
void stack_forward(const StackShape& shape, const StackWeights<T>& w, const Dropout& dropout,
                   const T* x, const T* h0, const T* c0, const int64_t* lengths, T* y, T* h_n,
                   T* c_n, StackWorkspace<T>* ws) {
  InterruptScope interruptible;  // one for all layers and directions of the call
  check_weight_count(shape, w.layers.size(), "weights");
  check_dropout(dropout.p);
  const Index L = shape.num_layers, D = shape.directions();
  const Index layer_outputs = shape.seq_len * shape.batch * D * shape.hidden_size;
  const BiasFallback<T> biases(Cell::kGates * shape.hidden_size);
  // Final states the caller does not want still have to go somewhere: the sequence driver
  // writes them as it goes.
  const Index states = L * D * shape.batch * shape.hidden_size;
  Buffer<T> unwanted_h(h_n ? 0 : states), unwanted_c(Cell::kHasCellState && !c_n ? states : 0);
  if (!h_n) h_n = unwanted_h.data();
  if (!Cell::kHasCellState) c_n = nullptr;
  else if (!c_n) c_n = unwanted_c.data();
  // Inference keeps its buffers for this call only; training keeps them in the workspace.
  Buffer<T> local_between[2], local_directions;
  Buffer<T>* between = local_between;
  Buffer<T>* directions = &local_directions;
  if constexpr (kTrain) {
    ws->ready = false;
    ws->shape = shape;
    ws->dropout = dropout;
    ws->layers.resize(std::size_t(L * D));
    between = ws->between;
    directions = &ws->direction_buffers[0];
  }
  const T* in = x;
  for (Index layer = 0; layer < L; ++layer) {
    T* out = y;
    if (layer + 1 < L) {
      named_resize(between[layer % 2], layer_outputs, "a layer's output (T*B rows x D*H)");
      out = between[layer % 2].data();
    }
    layer_forward<Cell, T, kTrain>(shape, layer, w, biases, in, h0, c0, lengths, out, h_n, c_n,
                                   *directions, ws);
    if (kTrain && layer + 1 < L && dropout.p > 0) apply_dropout(dropout, layer, layer_outputs, out);
    in = out;
  }
  if constexpr (kTrain) ws->ready = true;
}

// One layer's BPTT, both directions: dout (T, B, D*H) or nullptr, din (T, B, I_l) or nullptr.
template <class Cell, class T>
void layer_backward(const StackWeights<T>& w, StackWorkspace<T>& ws, Index layer,
                    const BiasFallback<T>& biases, const T* dout,
                    const T* dh_n, const T* dc_n, T* din, T* dh0, T* dc0,
                    const StackGradients<T>& grads) {
  const StackShape& shape = ws.shape;
  const Index D = shape.directions(), state = shape.batch * shape.hidden_size;
  const Index outputs = shape.seq_len * state;
  auto run_direction = [&, layer](Index d, const T* dy, T* dx) {
    const std::size_t i = std::size_t(layer * D + d);
    const Index s = Index(i) * state;
    backward<Cell, T>(biases.complete(w.layers[i]), ws.layers[i], dy, dh_n ? dh_n + s : nullptr,
                      dc_n ? dc_n + s : nullptr, dx, dh0 ? dh0 + s : nullptr,
                      dc0 ? dc0 + s : nullptr, grads.layers[i]);
  };
  if (D == 1) {
    run_direction(0, dout, din);
    return;
  }
  const T* dy_forward = nullptr;
  const T* dy_reverse = nullptr;
  if (dout) {
    Buffer<T>& split = ws.direction_buffers[0];
    named_resize(split, 2 * outputs, "the output gradient split by direction (2 x T*B x H)");
    deinterleave_directions(shape.seq_len * shape.batch, shape.hidden_size, dout, split.data(),
                            split.data() + outputs);
    dy_forward = split.data();
    dy_reverse = split.data() + outputs;
  }
  T* dx_reverse = nullptr;
  if (din) {
    named_resize(ws.direction_buffers[1], shape.seq_len * shape.batch * shape.layer_input_size(layer),
                 "the reverse direction's input gradient (T*B rows x the layer's input)");
    dx_reverse = ws.direction_buffers[1].data();
  }
  run_independent({[&] { run_direction(0, dy_forward, din); },
                   [&] { run_direction(1, dy_reverse, dx_reverse); }},
                  loop_threads<Cell, T>(shape.batch, shape.hidden_size) == 1);
  if (din) add_into(shape.seq_len * shape.batch * shape.layer_input_size(layer), dx_reverse, din);
}

template <class Cell, class T>
void stack_backward(const StackWeights<T>& w, StackWorkspace<T>& ws, const T* dy, const T* dh_n,
                    const T* dc_n, T* dx, T* dh0, T* dc0, const StackGradients<T>& grads) {
  InterruptScope interruptible;  // one for all layers and directions of the call
  ws.require_ready();
  const StackShape& shape = ws.shape;
  check_weight_count(shape, w.layers.size(), "weights");
  check_weight_count(shape, grads.layers.size(), "gradients");
  ws.ready = false;
  for (auto& layer : ws.layers) layer.record_grad_norms = ws.record_grad_norms;
  if (!Cell::kHasCellState) dc_n = nullptr, dc0 = nullptr;
  const Index L = shape.num_layers, D = shape.directions();
  const BiasFallback<T> biases(Cell::kGates * shape.hidden_size);
  const T* dout = dy;
  for (Index layer = L - 1; layer >= 0; --layer) {
    // Layer l's input gradient goes to dx for the first layer, else to a buffer that the next
    // iteration (layer l-1) reads as its output gradient.
    T* din = dx;
    if (layer > 0) {
      Buffer<T>& b = ws.between[layer % 2];
      named_resize(b, shape.seq_len * shape.batch * shape.layer_input_size(layer),
                   "a layer's input gradient (T*B rows x its input)");
      din = b.data();
    }
    layer_backward<Cell, T>(w, ws, layer, biases, dout, dh_n, dc_n, din, dh0, dc0, grads);
    if (layer > 0 && ws.dropout.p > 0)
      apply_dropout(ws.dropout, layer - 1, shape.seq_len * shape.batch * D * shape.hidden_size, din);
    dout = din;
  }
}

}  // namespace detail

template <class Cell, class T>
void forward_inference(const StackShape& shape, const StackWeights<T>& w, const T* x, const T* h0,
                       const T* c0, const int64_t* lengths, T* y, T* h_n, T* c_n) {
  detail::stack_forward<Cell, T, false>(shape, w, Dropout{}, x, h0, c0, lengths, y, h_n, c_n,
                                        nullptr);
}

template <class Cell, class T>
void forward_training(const StackShape& shape, const StackWeights<T>& w, const Dropout& dropout,
                      const T* x, const T* h0, const T* c0, const int64_t* lengths, T* y, T* h_n,
                      T* c_n, StackWorkspace<T>& ws) {
  detail::stack_forward<Cell, T, true>(shape, w, dropout, x, h0, c0, lengths, y, h_n, c_n, &ws);
}

template <class Cell, class T>
void backward(const StackWeights<T>& w, StackWorkspace<T>& ws, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const StackGradients<T>& grads) {
  detail::stack_backward<Cell, T>(w, ws, dy, dh_n, dc_n, dx, dh0, dc0, grads);
}

#define RNNCORE_INSTANTIATE_STACK(CELL, T)                                                     \
  template void forward_inference<CELL, T>(const StackShape&, const StackWeights<T>&, const T*, \
                                           const T*, const T*, const int64_t*, T*, T*, T*);     \
  template void forward_training<CELL, T>(const StackShape&, const StackWeights<T>&,           \
                                          const Dropout&, const T*, const T*, const T*,         \
                                          const int64_t*, T*, T*, T*, StackWorkspace<T>&);      \
  template void backward<CELL, T>(const StackWeights<T>&, StackWorkspace<T>&, const T*,        \
                                  const T*, const T*, T*, T*, T*, const StackGradients<T>&);

}  // namespace rnncore
