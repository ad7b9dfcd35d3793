// Buffer<T>: the storage of every rnncore workspace, a std::vector that leaves new elements
// uninitialised.
//
// Workspaces are written before they are read, and zero-filling hundreds of MB per call would
// cost a noticeable share of a step. Otherwise a Buffer is a std::vector: resize() keeps the
// capacity, so a buffer reused across calls faults in its pages once.
#pragma once

#include <memory>
#include <utility>
#include <vector>

namespace rnncore {

// An allocator whose construct() with no arguments default-initialises (leaves a float as it
// is) instead of value-initialising (zeroing) it.
template <class T>
struct DefaultInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  using std::allocator<T>::allocator;
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
