// rnncore::cuda::Context and the device queries (cpp/cuda/api.hpp).
#include <cstdio>
#include <string>

#include "context.cuh"
#include "rnncore/detail/dropout_mask.hpp"

namespace rnncore {
namespace cuda {
namespace detail {

void throw_cuda(cudaError_t e, const char* what) {
  cudaGetLastError();  // clears a sticky-free error so the next call starts clean
  throw std::runtime_error(std::string("rnncore CUDA: ") + what + " failed: " +
                           cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void throw_cublas(int status, const char* what) {
  throw std::runtime_error(std::string("rnncore CUDA: ") + what + " failed: cuBLAS status " +
                           std::to_string(status));
}

}  // namespace detail

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_error() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  }
  return n == 0 ? "no CUDA device" : "";
}

std::string runtime_version() {
  const int v = CUDART_VERSION;
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

int device_of(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  return -1;
}

double dropout_scale(double p, uint64_t seed, Index layer, Index index) {
  return ::rnncore::detail::dropout_mask(p, seed, layer, index);
}

void Context::Impl::begin(int dev, void* s) {
  const blas::Api& cublas = blas::api();
  if (handle && dev != device) {
    // Another device than the last call's: its buffers and handle belong to that one.
    cudaSetDevice(device);
    release();
    cublas.destroy(handle);
    handle = nullptr;
  }
  detail::check(cudaSetDevice(dev), "cudaSetDevice");
  if (!handle) {
    detail::check_blas(cublas.create(&handle), "cublasCreate");
    // Deterministic results run to run: no atomics in the GEMMs.
    cublas.set_atomics_mode(handle, blas::kAtomicsNotAllowed);
  }
  device = dev;
  stream = static_cast<cudaStream_t>(s);
  detail::check_blas(cublas.set_stream(handle, stream), "cublasSetStream");
}

std::size_t Context::Impl::bytes() const {
  std::size_t n = lengths.bytes() + call_lengths.bytes();
  for (const auto& l : layers) n += l.xs.bytes() + l.stash.bytes() + l.hist.bytes() + l.chist.bytes();
  const detail::DeviceBuffer* scratch[] = {&between[0], &between[1], &gh, &operand, &doperand,
                                           &dh[0], &dh[1], &dc, &dpeephole, &zeros, &ones, &dxs,
                                           &state_h[0], &state_h[1], &state_c[0], &state_c[1],
                                           &stash, &x_chunk, &gx};
  for (const auto* b : scratch) n += b->bytes();
  return n;
}

void Context::Impl::release() {
  ready = false;
  layers.clear();
  lengths.free();
  call_lengths.free();
  detail::DeviceBuffer* scratch[] = {&between[0], &between[1], &gh, &operand, &doperand,
                                     &dh[0], &dh[1], &dc, &dpeephole, &zeros, &ones, &dxs,
                                     &state_h[0], &state_h[1], &state_c[0], &state_c[1],
                                     &stash, &x_chunk, &gx};
  for (auto* b : scratch) b->free();
}

Context::Context() : impl_(std::make_unique<Impl>()) {}

Context::~Context() {
  if (impl_->handle) {
    if (impl_->device >= 0) cudaSetDevice(impl_->device);
    impl_->release();
    blas::api().destroy(impl_->handle);
  }
}

void Context::release() {
  if (impl_->device >= 0) cudaSetDevice(impl_->device);
  impl_->release();
}

std::size_t Context::bytes() const { return impl_->bytes(); }
bool Context::ready() const { return impl_->ready; }

}  // namespace cuda
}  // namespace rnncore
