// The CUDA driver's small kernels (internal): moving rows between time order and step order, bias
// rows, fills, copies and inter-layer dropout, each with the launcher the direction and stack
// drivers call (direction.cuh, stack_impl.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "context.cuh"
#include "rnncore/common.hpp"
#include "rnncore/detail/dropout_mask.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

inline constexpr int kThreadsPerBlock = 256;

inline unsigned blocks_for(Index n) {
  return unsigned((n + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// ---- kernels --------------------------------------------------------------------------------------

// The time step s of a sequence of length len reads (a padded position t = s once s >= len).
__device__ inline Index step_time(Index s, Index len, bool reverse) {
  return s >= len ? s : (reverse ? len - 1 - s : s);
}

// xs[(s - s0)*B + b, :] = in[(t*B + b), :] for the steps [s0, s1), zeros for inactive steps.
template <class T>
__global__ void gather_steps_kernel(const T* in, Index B, Index I, Index T_, Index s0, Index s1,
                                    const int64_t* lengths, bool reverse, T* xs) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= (s1 - s0) * B * I) return;
  const Index row = idx / I, k = idx - row * I;
  const Index s = s0 + row / B, b = row % B;
  const Index len = lengths ? lengths[b] : T_;
  xs[idx] = s < len ? in[(step_time(s, len, reverse) * B + b) * I + k] : T(0);
}

// out[(t*B + b), :] (= or +=) dxs[(s*B + b), :]: step order back to time order.
template <class T>
__global__ void scatter_steps_kernel(const T* dxs, Index B, Index I, Index T_,
                                     const int64_t* lengths, bool reverse, bool accumulate,
                                     T* out) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T_ * B * I) return;
  const Index row = idx / I, k = idx - row * I;
  const Index s = row / B, b = row % B;
  const Index len = lengths ? lengths[b] : T_;
  T* dst = out + (step_time(s, len, reverse) * B + b) * I + k;
  *dst = accumulate ? *dst + dxs[idx] : dxs[idx];
}

template <class T>
__global__ void add_bias_kernel(Index rows, Index cols, T* dst, Index ld, const T* bias) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  const Index r = idx / cols, c = idx - r * cols;
  dst[r * ld + c] += bias[c];
}

template <class T>
__global__ void fill_kernel(Index n, T value, T* dst) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < n) dst[idx] = value;
}

// The mask is rnncore::detail::dropout_mask, the very function the CPU path evaluates.
template <class T>
__global__ void dropout_kernel(Index n, double p, uint64_t seed, Index layer, T* data) {
  const Index idx = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < n) data[idx] *= T(::rnncore::detail::dropout_mask(p, seed, layer, idx));
}

template <class T>
void fill(Index n, T value, T* dst, cudaStream_t stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(n, value, dst);
  check_launch("fill kernel");
}

// dst (count) = src, or zeros when src is nullptr.
template <class T>
void copy_or_zero(Index count, const T* src, T* dst, cudaStream_t stream) {
  if (count <= 0) return;
  if (src)
    check(cudaMemcpyAsync(dst, src, sizeof(T) * count, cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync");
  else
    check(cudaMemsetAsync(dst, 0, sizeof(T) * count, stream), "cudaMemsetAsync");
}

// ---- launchers ------------------------------------------------------------------------------------

// The inputs of the steps [s0, s1) of in (T, B, I), in step order, into xs ((s1 - s0) * B, I).
template <class T>
void gather_steps(const T* in, Index B, Index I, Index T_, Index s0, Index s1,
                  const int64_t* lengths, bool reverse, T* xs, cudaStream_t stream) {
  const Index n = (s1 - s0) * B * I;
  if (n <= 0) return;
  gather_steps_kernel<<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(in, B, I, T_, s0, s1,
                                                                      lengths, reverse, xs);
  check_launch("gather kernel");
}

// dst (rows x cols, ld) += bias (cols) in every row; nothing when bias is nullptr.
template <class T>
void add_bias(Index rows, Index cols, T* dst, Index ld, const T* bias, cudaStream_t stream) {
  if (!bias || rows * cols <= 0) return;
  add_bias_kernel<<<blocks_for(rows * cols), kThreadsPerBlock, 0, stream>>>(rows, cols, dst, ld,
                                                                            bias);
  check_launch("bias kernel");
}

// data[e] *= the dropout mask of element e of layer `layer`'s output, e < n (nothing for p = 0).
template <class T>
void apply_dropout(double p, uint64_t seed, Index layer, Index n, T* data, cudaStream_t stream) {
  if (p <= 0 || n <= 0) return;
  dropout_kernel<<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(n, p, seed, layer, data);
  check_launch("dropout kernel");
}

}  // namespace detail
}  // namespace cuda
}  // namespace rnncore
