// Device-side state of one rnncore::cuda::Context (internal; included by the .cu files only).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "api.hpp"
#include "cublas.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

[[noreturn]] void throw_cuda(cudaError_t e, const char* what);
[[noreturn]] void throw_cublas(int status, const char* what);

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_cuda(e, what);
}
inline void check_blas(int status, const char* what) {
  if (status != blas::kSuccess) throw_cublas(status, what);
}

// Grow-only device memory (cudaMalloc waits for the device, so buffers are kept and reused).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  ~DeviceBuffer() { free(); }
  template <class T>
  T* get(std::size_t count) {
    ensure(count * sizeof(T));
    return static_cast<T*>(ptr_);
  }
  template <class T>
  T* data() const {
    return static_cast<T*>(ptr_);
  }
  void ensure(std::size_t bytes) {
    if (bytes <= bytes_) return;
    free();
    check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
    bytes_ = bytes;
  }
  void free() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// What one (layer, direction) keeps from a training forward for its backward, in loop-step
// order (row s*B + b is step s of sequence b; a step past a sequence's length is a carry):
//   xs     (T*B, I_l)      the input of each step (zeros past a sequence's length)
//   stash  (T*B, S*H)      the cell's training record, then its gate gradients
//   hist   ((T+1)*B, H)    h_0, then the state after each step
//   chist  ((T+1)*B, H)    the same for c (LSTM only)
struct LayerWorkspace {
  DeviceBuffer xs, stash, hist, chist;
};

}  // namespace detail

struct Context::Impl {
  int device = -1;
  blas::Handle handle = nullptr;
  cudaStream_t stream = nullptr;

  // The training forward's record.
  bool ready = false;
  Shape shape;
  double dropout = 0.0;
  uint64_t seed = 0;
  bool has_lengths = false;
  detail::DeviceBuffer lengths;  // int64 (B)
  std::vector<detail::LayerWorkspace> layers;

  // Scratch, reused by every call.
  detail::DeviceBuffer between[2];   // layer outputs (forward) / gradients (backward)
  detail::DeviceBuffer gh, operand, doperand, dh[2], dc, dpeephole, zeros, ones, dxs;
  detail::DeviceBuffer state_h[2], state_c[2], stash, x_chunk, gx;
  detail::DeviceBuffer call_lengths;  // inference lengths

  // Makes `device` current and the handle's stream `s` (creating the handle on first use).
  void begin(int dev, void* s);
  std::size_t bytes() const;
  void release();
};

}  // namespace cuda
}  // namespace rnncore
