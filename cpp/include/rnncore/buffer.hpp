// Buffer<T>: the storage of every rnncore workspace, a std::vector that leaves new elements
// uninitialised and starts on a 64-byte boundary.
//
// Workspaces are written before they are read, and zero-filling hundreds of MB per call would
// cost a noticeable share of a step. Otherwise a Buffer is a std::vector: resize() keeps the
// capacity, so a buffer reused across calls faults in its pages once.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace rnncore {

// Alignment of every Buffer: a cache line, which is also one AVX-512 vector, so the SIMD loads
// and stores of the kernels' rows never straddle two lines because of where the allocator
// happened to put a buffer. Measured on 2-thread inference (GRU, LSTM, RNN; T = 100, B = 16-64,
// H = 128-256), side by side in one session: 1-4% faster than with operator new's 16-byte
// alignment, under which timings also moved by a few percent with the driver's allocation order.
inline constexpr std::size_t kBufferAlignment = 64;

// An allocator whose construct() with no arguments default-initialises (leaves a float as it
// is) instead of value-initialising (zeroing) it, and whose memory is kBufferAlignment-aligned.
template <class T>
struct DefaultInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  using std::allocator<T>::allocator;
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kBufferAlignment)));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    ::operator delete(p, n * sizeof(T), std::align_val_t(kBufferAlignment));
  }
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <class T>
using Buffer = std::vector<T, DefaultInitAllocator<T>>;

}  // namespace rnncore
