// The sequence driver (internal): the entry points of sequence.hpp (forward_inference,
// forward_training, backward, loop_threads) for any cell of cells.hpp, and the macro that
// instantiates them. Included by the generated per-cell units (instantiate_cell.cpp.in).
//
// The driver by file:
//   sequence_common.hpp    thread split of the hidden units, slice packing, order copies
//   sequence_forward.hpp   the forward time loop (training and inference)
//   sequence_backward.hpp  the backward time loop, the weight gradients and dx
#pragma once

#include <cstdint>
#include <stdexcept>

#include "rnncore/sequence.hpp"
#include "runtime_detail.hpp"
#include "sequence_backward.hpp"
#include "sequence_forward.hpp"

namespace rnncore {

template <class Cell, class T>
int loop_threads(Index batch, Index hidden) {
  return detail::time_loop_threads<Cell, T>(batch, hidden);
}

template <class Cell, class T>
void forward_inference(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                       const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                       T* c_n) {
  detail::InterruptScope interruptible;
  const Schedule sc(shape.seq_len, shape.batch, lengths, reverse);
  detail::forward_impl<Cell, T, false>({shape, sc, w, x, h0, c0, y, h_n, c_n}, nullptr);
}

template <class Cell, class T>
void forward_training(const SequenceShape& shape, const LayerWeights<T>& w, const T* x,
                      const T* h0, const T* c0, const int64_t* lengths, bool reverse, T* y, T* h_n,
                      T* c_n, TrainingWorkspace<T>& ws) {
  // Buffers keep their capacity from earlier calls: a training loop then reuses the same pages
  // instead of faulting in fresh ones every step (release() frees them).
  detail::InterruptScope interruptible;
  ws.ready = false;
  ws.shape = shape;
  ws.schedule = Schedule(shape.seq_len, shape.batch, lengths, reverse);
  detail::forward_impl<Cell, T, true>({shape, ws.schedule, w, x, h0, c0, y, h_n, c_n}, &ws);
  ws.ready = true;
}

template <class Cell, class T>
void backward(const LayerWeights<T>& w, TrainingWorkspace<T>& ws, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const LayerGradients<T>& grads) {
  if (!ws.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  detail::InterruptScope interruptible;
  ws.ready = false;
  detail::backward_impl<Cell, T>(w, ws, dy, dh_n, dc_n, dx, dh0, dc0, grads);
}

#define RNNCORE_INSTANTIATE_SEQUENCE(CELL, T)                                                   \
  template int loop_threads<CELL, T>(Index, Index);                                            \
  template void forward_inference<CELL, T>(const SequenceShape&, const LayerWeights<T>&,      \
                                           const T*, const T*, const T*, const int64_t*, bool, \
                                           T*, T*, T*);                                        \
  template void forward_training<CELL, T>(const SequenceShape&, const LayerWeights<T>&,       \
                                          const T*, const T*, const T*, const int64_t*, bool,  \
                                          T*, T*, T*, TrainingWorkspace<T>&);                  \
  template void backward<CELL, T>(const LayerWeights<T>&, TrainingWorkspace<T>&, const T*,    \
                                  const T*, const T*, T*, T*, T*, const LayerGradients<T>&);

}  // namespace rnncore