// Buffer<T>: the storage of every rnncore workspace, a std::vector that leaves new elements
// uninitialised and starts on a 64-byte boundary; and OutOfMemory, what a Buffer that does not
// fit throws: a std::bad_alloc (so every handler of those still applies) whose message says what
// did not fit, which Python shows as the MemoryError's text.
//
// Workspaces are written before they are read, and zero-filling hundreds of MB per call would
// cost a noticeable share of a step. Otherwise a Buffer is a std::vector: resize() keeps the
// capacity, so a buffer reused across calls faults in its pages once.
#pragma once

#include <cstddef>
#include <cstdio>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace rnncore {

// ---- what did not fit ---------------------------------------------------------------------------
namespace detail {
// Per thread: the buffer being resized (named_resize) and the call it serves (AllocationCall);
// the drivers' worker threads take the calling thread's call (detail::ErrorSlot).
struct AllocationContext {
  const char* buffer = nullptr;
  const std::string* call = nullptr;
};
inline thread_local AllocationContext t_allocation;
}  // namespace detail

class OutOfMemory : public std::bad_alloc {
 public:
  OutOfMemory(std::size_t bytes, std::size_t count) {
    const detail::AllocationContext& c = detail::t_allocation;
    char size[64];
    std::snprintf(size, sizeof size, "%.2f GiB", double(bytes) / double(1ull << 30));
    message_ = "rnncore could not allocate " + std::string(size) + " (" + std::to_string(bytes) +
               " bytes, " + std::to_string(count) + " values)";
    if (c.buffer) message_ += " for " + std::string(c.buffer);
    if (c.call) message_ += ", in " + *c.call;
  }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// While alive, names the call the allocations of this thread serve, e.g.
// "Stack.forward(lstm, T=100, B=64, I=256, H=256, 2 layers, training)".
class AllocationCall {
 public:
  explicit AllocationCall(std::string description)
      : description_(std::move(description)), saved_(detail::t_allocation.call) {
    detail::t_allocation.call = &description_;
  }
  ~AllocationCall() { detail::t_allocation.call = saved_; }
  AllocationCall(const AllocationCall&) = delete;
  AllocationCall& operator=(const AllocationCall&) = delete;

 private:
  std::string description_;
  const std::string* saved_;
};

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
    if (n > std::size_t(-1) / sizeof(T)) throw OutOfMemory(std::size_t(-1), n);
    try {
      return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kBufferAlignment)));
    } catch (const std::bad_alloc&) {
      throw OutOfMemory(n * sizeof(T), n);
    }
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

// buffer.resize(n), with `name` in the OutOfMemory message should it not fit (e.g. "the training
// workspace's gate stash (T*B rows x 4H)").
template <class T>
void named_resize(Buffer<T>& buffer, std::size_t n, const char* name) {
  const char* saved = detail::t_allocation.buffer;
  detail::t_allocation.buffer = name;
  try {
    buffer.resize(n);
  } catch (...) {
    detail::t_allocation.buffer = saved;
    throw;
  }
  detail::t_allocation.buffer = saved;
}

}  // namespace rnncore
