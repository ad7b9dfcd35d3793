// The CUDA stack driver (internal): layers x directions over the direction driver
// (direction.cuh), inter-layer dropout, and the entry points of api.hpp, for any cell of
// cells.hpp on one CUDA stream. Included by the generated per-cell units
// (cpp/cuda/instantiate_cell.cu.in), which instantiate it. See api.hpp for the contract.
//
// The driver by file:
//   kernels.cuh    small kernels: step order <-> time order, bias rows, fills, dropout
//   pointwise.cuh  the per-step kernels that call the cell's forward<Phase> / backward<Phase>
//   blas.cuh       cuBLAS GEMMs on row-major arrays, column sums
//   direction.cuh  one layer, one direction: the time loops, weight gradients and dx
//   stack_impl.cuh this file
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "api.hpp"
#include "context.cuh"
#include "direction.cuh"
#include "kernels.cuh"
#include "rnncore/cells.hpp"
#include "rnncore/detail/stack_checks.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

template <class Cell, class T>
DirectionCall<T> direction_call(Context::Impl& ctx, const Shape& shape, Index layer, Index d,
                                const LayerWeights<T>& w, const int64_t* lengths) {
  DirectionCall<T> call{};
  call.T_ = shape.seq_len, call.B = shape.batch, call.I = shape.layer_input_size(layer);
  call.H = shape.hidden_size, call.reverse = d == 1, call.lengths = lengths, call.w = &w;
  call.b_hh = w.b_hh;
  if (!call.b_hh) {
    T* zeros = ctx.zeros.get<T>(Cell::kGates * shape.hidden_size);
    copy_or_zero<T>(Cell::kGates * shape.hidden_size, nullptr, zeros, ctx.stream);
    call.b_hh = zeros;
  }
  return call;
}

template <class Cell, class T>
void stack_forward(Context::Impl& ctx, const Shape& shape, const std::vector<LayerWeights<T>>& w,
                   bool training, double dropout, uint64_t seed, const T* x, const T* h0,
                   const T* c0, const int64_t* host_lengths, T* y, T* h_n, T* c_n) {
  ::rnncore::detail::check_weight_count(shape, w.size(), "weights");
  ::rnncore::detail::check_dropout(dropout);
  const Index L = shape.num_layers, D = shape.directions(), B = shape.batch, H = shape.hidden_size;
  const Index T_ = shape.seq_len, state = B * H, outputs = T_ * B * D * H;
  cudaStream_t stream = ctx.stream;
  if (training) {
    ctx.ready = false;
    ctx.shape = shape, ctx.dropout = dropout, ctx.seed = seed;
    ctx.layers.resize(std::size_t(L * D));
  }
  detail::DeviceBuffer& length_buffer = training ? ctx.lengths : ctx.call_lengths;
  const int64_t* lengths = nullptr;
  if (host_lengths) {
    int64_t* dev = length_buffer.get<int64_t>(std::max<Index>(1, B));
    check(cudaMemcpyAsync(dev, host_lengths, sizeof(int64_t) * B, cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (lengths)");
    lengths = dev;
  }
  if (training) ctx.has_lengths = lengths != nullptr;
  if (B == 0) {  // empty outputs; a training forward still leaves a (trivial) backward to run
    if (training) ctx.ready = true;
    return;
  }
  const T* in = x;
  for (Index layer = 0; layer < L; ++layer) {
    T* out = layer + 1 < L ? ctx.between[layer % 2].get<T>(std::max<Index>(1, outputs)) : y;
    if (lengths) copy_or_zero<T>(outputs, nullptr, out, stream);  // zeros past each length
    for (Index d = 0; d < D; ++d) {
      const Index i = layer * D + d;
      DirectionCall<T> call = direction_call<Cell, T>(ctx, shape, layer, d, w[std::size_t(i)], lengths);
      call.in = in;
      call.h0 = h0 ? h0 + i * state : nullptr;
      call.c0 = c0 ? c0 + i * state : nullptr;
      call.y = out + d * H, call.y_ld = D * H;
      call.h_n = h_n ? h_n + i * state : nullptr;
      call.c_n = c_n ? c_n + i * state : nullptr;
      if (training)
        direction_forward<Cell, T, true>(ctx, call, &ctx.layers[std::size_t(i)]);
      else
        direction_forward<Cell, T, false>(ctx, call, nullptr);
    }
    if (training && layer + 1 < L) apply_dropout(dropout, seed, layer, outputs, out, stream);
    in = out;
  }
  if (training) ctx.ready = true;
}

template <class Cell, class T>
void stack_backward(Context::Impl& ctx, const std::vector<LayerWeights<T>>& w, const T* dy,
                    const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                    const std::vector<LayerGradients<T>>& grads) {
  if (!ctx.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  const Shape& shape = ctx.shape;
  ::rnncore::detail::check_weight_count(shape, w.size(), "weights");
  ::rnncore::detail::check_weight_count(shape, grads.size(), "gradients");
  ctx.ready = false;
  const Index L = shape.num_layers, D = shape.directions(), B = shape.batch, H = shape.hidden_size;
  const Index T_ = shape.seq_len, state = B * H;
  if (B == 0) return;  // empty gradients, nothing added
  const int64_t* lengths = ctx.has_lengths ? ctx.lengths.data<int64_t>() : nullptr;
  const T* dout = dy;
  for (Index layer = L - 1; layer >= 0; --layer) {
    const Index in_size = shape.layer_input_size(layer);
    T* din = layer == 0 ? dx : ctx.between[layer % 2].get<T>(std::max<Index>(1, T_ * B * in_size));
    for (Index d = 0; d < D; ++d) {
      const Index i = layer * D + d;
      DirectionCall<T> call = direction_call<Cell, T>(ctx, shape, layer, d, w[std::size_t(i)], lengths);
      DirectionGrad<T> g{};
      g.dy = dout ? dout + d * H : nullptr, g.dy_ld = D * H;
      g.dh_n = dh_n ? dh_n + i * state : nullptr;
      g.dc_n = Cell::kHasCellState && dc_n ? dc_n + i * state : nullptr;
      g.din = din, g.accumulate_din = d > 0;
      g.dh0 = dh0 ? dh0 + i * state : nullptr;
      g.dc0 = Cell::kHasCellState && dc0 ? dc0 + i * state : nullptr;
      g.grads = &grads[std::size_t(i)];
      direction_backward<Cell, T>(ctx, call, ctx.layers[std::size_t(i)], g);
    }
    if (layer > 0)
      apply_dropout(ctx.dropout, ctx.seed, layer - 1, T_ * B * in_size, din, ctx.stream);
    dout = din;
  }
}

}  // namespace detail

template <class Cell, class T>
void forward(Context& ctx, int device, const Shape& shape, const std::vector<LayerWeights<T>>& w,
             bool training, double dropout, uint64_t seed, const T* x, const T* h0, const T* c0,
             const int64_t* host_lengths, T* y, T* h_n, T* c_n, void* stream) {
  Context::Impl& impl = ctx.impl();
  impl.begin(device, stream);
  detail::stack_forward<Cell, T>(impl, shape, w, training, dropout, seed, x, h0, c0, host_lengths,
                                 y, h_n, c_n);
}

template <class Cell, class T>
void backward(Context& ctx, const std::vector<LayerWeights<T>>& w, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const std::vector<LayerGradients<T>>& grads,
              void* stream) {
  Context::Impl& impl = ctx.impl();
  if (!impl.ready)
    throw std::logic_error(
        "backward() needs the workspace of a training-mode forward; it was never filled or was "
        "already consumed by an earlier backward()");
  impl.begin(impl.device, stream);
  detail::stack_backward<Cell, T>(impl, w, dy, dh_n, dc_n, dx, dh0, dc0, grads);
}

#define RNNCORE_CUDA_INSTANTIATE(CELL, T)                                                     \
  template void forward<CELL, T>(Context&, int, const Shape&,                                 \
                                 const std::vector<LayerWeights<T>>&, bool, double,           \
                                  uint64_t, const T*, const T*, const T*,        \
                                 const int64_t*, T*, T*, T*, void*);                          \
  template void backward<CELL, T>(Context&, const std::vector<LayerWeights<T>>&, const T*,    \
                                  const T*, const T*, T*, T*, T*,                             \
                                  const std::vector<LayerGradients<T>>&, void*);

}  // namespace cuda
}  // namespace rnncore
