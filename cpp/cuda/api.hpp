// rnncore's CUDA stack driver: the host-side API (plain C++, no CUDA syntax), which the
// extension module rnncore._cuda (bindings/cuda_module.cpp) calls.
//
// The same stack as the CPU's (cpp/include/rnncore/stack.hpp: shapes, weights in PyTorch's
// layout, lengths, reverse, inter-layer dropout, training workspace), run on a CUDA device:
//   - the input projection x W_ih^T + b_ih of all T steps is one cuBLAS GEMM before the time loop;
//   - each step is one cuBLAS GEMM per phase (the recurrent product) and one pointwise kernel
//     per phase over the (B, H) tile that calls the cell's own forward<Phase> / backward<Phase>
//     (cells/*.hpp, marked host+device): the same gate math as the CPU path;
//   - after the backward loop, dW_ih, dW_hh, the bias sums and dx are each one GEMM per gate block.
// Variable lengths: all B rows step together; a row past its length carries its state unchanged
// (no output, zero gate gradients), so h_n is the state after its last valid step.
//
// Pointers: every array argument is device memory on the Context's current device (checked by
// the bindings), C-contiguous, of element type T; weights, states and lengths as in stack.hpp.
// `lengths` is a HOST array (B values), copied to the device by the call. Work is queued on
// `stream` (a cudaStream_t; nullptr: the legacy default stream) and not waited for: results are
// ready in stream order, like any CUDA library call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rnncore/common.hpp"
#include "rnncore/sequence.hpp"
#include "rnncore/stack.hpp"

namespace rnncore {
namespace cuda {

// The CPU stack's shape (stack.hpp): one type for both drivers.
using Shape = ::rnncore::StackShape;

// One per (layer, direction), index l*D + d: the CPU driver's structs (sequence.hpp). Here the
// biases and the peephole may be nullptr (zeros), and backward ADDS into the gradients, any of
// which may be nullptr (that gradient is not wanted).
template <class T>
using LayerWeights = ::rnncore::LayerWeights<T>;
template <class T>
using LayerGradients = ::rnncore::LayerGradients<T>;

// Devices the CUDA runtime sees (0 without a driver or a device; never throws).
int device_count();
// Why device_count() is 0, or "" (e.g. "CUDA driver version is insufficient...").
std::string device_error();
// The CUDA runtime version the module was built with, as "major.minor".
std::string runtime_version();
// The device a pointer belongs to, or -1 for host memory or an unknown pointer.
int device_of(const void* p);

// One stack's device state: its cuBLAS handle, scratch buffers, and the training workspace that a
// training forward fills and its backward consumes. Not thread-safe (the bindings serialise calls).
class Context {
 public:
  Context();
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  struct Impl;
  Impl& impl() { return *impl_; }
  // Frees every device buffer (and forgets a pending training forward).
  void release();
  // Device memory held, in bytes.
  std::size_t bytes() const;
  bool ready() const;  // a training forward waits for its backward

 private:
  std::unique_ptr<Impl> impl_;
};

// Runs on `device` (the device of the arrays; the bindings check they share one).
template <class Cell, class T>
void forward(Context& ctx, int device, const Shape& shape, const std::vector<LayerWeights<T>>& w,
             bool training, double dropout, uint64_t seed, const T* x, const T* h0, const T* c0,
             const int64_t* host_lengths, T* y, T* h_n, T* c_n, void* stream);

// std::logic_error unless a training forward filled ctx and no backward consumed it.
template <class Cell, class T>
void backward(Context& ctx, const std::vector<LayerWeights<T>>& w, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const std::vector<LayerGradients<T>>& grads,
              void* stream);

// The dropout mask value (0 or 1/(1-p)) of element `index` of layer `layer`'s output: the
// function the device kernel evaluates (rnncore/detail/dropout_mask.hpp, the CPU path's too),
// here on the host, for tests.
double dropout_scale(double p, uint64_t seed, Index layer, Index index);

#define RNNCORE_CUDA_DECLARE(CELL, T)                                                          \
  extern template void forward<CELL, T>(Context&, int, const Shape&,                          \
                                        const std::vector<LayerWeights<T>>&, bool, double,    \
                                        uint64_t, const T*, const T*, const T*,               \
                                        const int64_t*, T*, T*, T*, void*);                   \
  extern template void backward<CELL, T>(Context&, const std::vector<LayerWeights<T>>&,       \
                                         const T*, const T*, const T*, T*, T*, T*,            \
                                         const std::vector<LayerGradients<T>>&, void*);

}  // namespace cuda
}  // namespace rnncore
